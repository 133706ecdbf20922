#!/usr/bin/env bash
# Install what thumbnail_server needs to build, test and run its demo, from the
# distribution's archive only (Debian 12 / Ubuntu 22.04+). Does nothing when
# every package is already installed, so it is cheap to call from the other
# scripts. Run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
    # build
    build-essential pkg-config cmake
    libgrpc-dev protobuf-c-compiler libprotobuf-c-dev grpc-proto
    protobuf-compiler # the descriptor set embedded for server reflection
    libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libpng-dev
    libturbojpeg0-dev libwebp-dev libjansson-dev
    libssl-dev # libcrypto: the server checks its TLS files and the auth token
    # tests: unit (cmocka), test videos (ffmpeg), integration (Python grpcio + stubs)
    libcmocka-dev ffmpeg python3 python3-grpcio python3-protobuf python3-pil
    protobuf-compiler-grpc valgrind
    # the metrics endpoint (libmicrohttpd) and its test's independent parser
    libmicrohttpd-dev python3-prometheus-client
    openssl # test_tls makes its CA and certificates at test time
    libseccomp-dev # the workers' sandbox (src/worker/sandbox.c)
    # the libFuzzer run of the engine (tests/fuzz/): clang and its fuzzer runtime
    clang libclang-rt-14-dev
    # validating docker-compose.yml (no Docker engine needed)
    docker-compose
    # ops: sd_notify (Type=notify), man pages from --help, the DEB test (cpack,
    # dpkg-shlibdeps, systemd-analyze verify of the unit, man), nginx in front of
    # two servers, the k8s manifests (YAML), the Node.js example client
    libsystemd-dev help2man dpkg-dev systemd man-db nginx-light python3-yaml
    python3-jsonschema yamllint nodejs
    # hostile clients (test_attacks*): raw HTTP/2 frames and HPACK from Python;
    # prlimit (util-linux, essential) runs a server under a low fd limit
    python3-h2
)
# npm: Debian's package, unless a node.js that bundles its own npm is already
# installed (nodesource's nodejs conflicts with Debian's npm).
if ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(npm)
fi

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

# apt-get update once: when there are no package lists yet, or when the install
# fails because the lists are stale.
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    "${APT[@]}" update
    updated=1
else
    updated=0
fi
if ! "${APT[@]}" install -y --no-install-recommends "${missing[@]}"; then
    [[ $updated -eq 1 ]] && exit 1
    "${APT[@]}" update
    "${APT[@]}" install -y --no-install-recommends "${missing[@]}"
fi
