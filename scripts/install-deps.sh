#!/usr/bin/env bash
# Install what thumbnail_server needs, from the distribution's archive only
# (Debian 12 / Ubuntu 22.04+). Run as root (or with sudo available).
#
#   install-deps.sh            build and run: the compiler, CMake and the -dev
#                              packages of the libraries (scripts/demo.sh)
#   install-deps.sh --samples  also ffmpeg and python3, which make the sample
#                              videos (tests/gen_videos.sh) when input/ is empty
#   install-deps.sh --tests    everything the test suite needs (scripts/test.sh)
#
# Only packages that are not installed yet are named to apt, with
# --no-install-recommends and --no-upgrade: nothing already installed is
# upgraded unless a new package depends on a newer version of it (apt lists
# those under "will be upgraded"). Does nothing when every package is
# installed, so it is cheap to call from the other scripts.
set -euo pipefail

BUILD=(
    build-essential pkg-config cmake
    libgrpc-dev protobuf-c-compiler libprotobuf-c-dev grpc-proto
    protobuf-compiler # the descriptor set embedded for server reflection
    libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libpng-dev
    libturbojpeg0-dev libwebp-dev
    libssl-dev         # libcrypto: the server checks its TLS files and the auth token
    libmicrohttpd-dev  # the metrics endpoint and the HTTP gateway
    libseccomp-dev     # the workers' sandbox (src/worker/sandbox.c)
    libjansson-dev     # JSON parsing
)
SAMPLES=(ffmpeg python3) # tests/gen_videos.sh
TESTS=(
    "${SAMPLES[@]}"
    # unit (cmocka), integration (Python grpcio + stubs), the server under valgrind
    libcmocka-dev python3-grpcio python3-protobuf python3-pil protobuf-compiler-grpc valgrind
    webp # webpmux -info: an independent reader of the animated previews (test_animation)
    python3-prometheus-client # test_metrics' independent parser
    openssl                   # test_tls makes its CA and certificates at test time
    python3-h2 nghttp2-client # hostile HTTP/2 clients (h2 frames by hand, h2load)
    # the libFuzzer run of the engine (tests/fuzz/): clang and its fuzzer runtime
    clang libclang-rt-14-dev
    # validating docker-compose.yml (no Docker engine needed)
    docker-compose
    # ops: sd_notify (Type=notify), man pages from --help, the DEB test (cpack,
    # dpkg-shlibdeps, `file`, systemd-analyze verify of the unit, man), nginx in
    # front of two servers, the k8s manifests (YAML), the Node.js example client
    libsystemd-dev help2man dpkg-dev file systemd man-db nginx-light python3-yaml
    python3-jsonschema yamllint nodejs
    gnuplot-nox ffmpegthumbnailer socat # bench_quick: bench/run.sh --quick
    lintian # test_deb: the package has no lintian errors or warnings
    curl wrk # test_http (curl as the HTTP client), bench/http_cache.sh (wrk)
    chromium python3-websocket # test_gallery: the gallery page in headless Chromium over CDP
)

PACKAGES=("${BUILD[@]}")
case "${1:-}" in
"") ;;
--samples) PACKAGES+=("${SAMPLES[@]}") ;;
--tests)
    PACKAGES+=("${TESTS[@]}")
    # npm: Debian's package, unless a node.js that bundles its own npm is
    # already installed (nodesource's nodejs conflicts with Debian's npm).
    if ! command -v npm >/dev/null 2>&1; then
        PACKAGES+=(npm)
    fi
    ;;
*)
    echo "usage: $0 [--samples | --tests]" >&2
    exit 2
    ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all ${#PACKAGES[@]} packages are installed"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-deps: run as root (or install sudo)" >&2; exit 1; }
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
APT=("${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600)
INSTALL=(install -y --no-install-recommends --no-upgrade)

# apt-get update once: when there are no package lists yet, or when the install
# fails because the lists are stale.
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    "${APT[@]}" update
    updated=1
else
    updated=0
fi
if ! "${APT[@]}" "${INSTALL[@]}" "${missing[@]}"; then
    [[ $updated -eq 1 ]] && exit 1
    "${APT[@]}" update
    "${APT[@]}" "${INSTALL[@]}" "${missing[@]}"
fi
