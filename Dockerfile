# thumbnail_server and thumbnail_client, Debian 12 (bookworm).
# Build stage: compilers and -dev packages. Runtime stage: the shared libraries only.
FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config cmake \
      libgrpc-dev protobuf-c-compiler libprotobuf-c-dev grpc-proto protobuf-compiler \
      libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libpng-dev \
      libturbojpeg0-dev libwebp-dev libmicrohttpd-dev libseccomp-dev libjansson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto proto
COPY src src
COPY tests tests
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTN_BUILD_TESTS=OFF \
 && cmake --build /build -j"$(nproc)" --target thumbnail_server thumbnail_client \
 && install -m 755 -s /build/src/server/thumbnail_server /build/src/client/thumbnail_client /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libgrpc29 libprotobuf-c1 libavformat59 libavcodec59 libswscale6 libavutil57 libpng16-16 \
      libturbojpeg0 libwebp7 libmicrohttpd12 libseccomp2 libjansson4 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /input /output /var/spool/thumbnail
COPY --from=build /usr/local/bin/thumbnail_server /usr/local/bin/thumbnail_client /usr/local/bin/
ENV TMPDIR=/var/spool/thumbnail
EXPOSE 50051
WORKDIR /
CMD ["thumbnail_server", "--listen", "0.0.0.0:50051"]
