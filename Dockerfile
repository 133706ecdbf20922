# thumbnail_server and thumbnail_client, Debian 12 (bookworm).
# Build stage: compilers and -dev packages (scripts/install-deps.sh, without
# tests or benchmark). Runtime stage: only the packages of the shared libraries
# the two binaries link, as dpkg-shlibdeps finds them in the build stage.
FROM debian:bookworm AS build
COPY scripts/install-deps.sh /usr/local/sbin/
RUN install-deps.sh && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto proto
COPY src src
COPY deploy deploy
COPY doc doc
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTN_BUILD_TESTS=OFF -DTN_BUILD_BENCH=OFF \
 && cmake --build /build -j"$(nproc)" --target thumbnail_server thumbnail_client \
 && install -m 755 -s /build/src/server/thumbnail_server /build/src/client/thumbnail_client /usr/local/bin/ \
 && mkdir -p /tmp/shlibs/debian && touch /tmp/shlibs/debian/control \
 && cd /tmp/shlibs \
 && dpkg-shlibdeps -O /usr/local/bin/thumbnail_server /usr/local/bin/thumbnail_client \
    | sed -e 's/^shlibs:Depends=//' -e 's/([^)]*)//g' -e 's/|[^,]*//g' -e 's/,/ /g' \
    > /usr/local/share/thumbnail-runtime-packages \
 && cat /usr/local/share/thumbnail-runtime-packages

FROM debian:bookworm-slim
COPY --from=build /usr/local/share/thumbnail-runtime-packages /usr/local/share/
RUN apt-get update \
 && xargs apt-get install -y --no-install-recommends </usr/local/share/thumbnail-runtime-packages \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /input /output /var/spool/thumbnail /var/cache/thumbnail \
 && chmod 1777 /var/spool/thumbnail
COPY --from=build /usr/local/bin/thumbnail_server /usr/local/bin/thumbnail_client /usr/local/bin/
ENV TMPDIR=/var/spool/thumbnail
EXPOSE 50051 8080
WORKDIR /
CMD ["thumbnail_server", "--listen", "0.0.0.0:50051"]
