#!/usr/bin/env bash
# The whole product in one command: install the missing build dependencies,
# build, start thumbnail_server on localhost, put a few generated sample videos
# in input/ when it is empty (installing ffmpeg for that only), run the batch
# client (input/ -> output/), stop the server. The binaries stay in
# $BUILD_DIR/src/server/thumbnail_server and $BUILD_DIR/src/client/thumbnail_client.
# Environment: PORT (default 50051, or a free port if that one is taken),
# NUM_WORKERS, NUM_JOBS, BUILD_DIR (default build).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

BUILD_DIR=${BUILD_DIR:-build}
SERVER=$BUILD_DIR/src/server/thumbnail_server
CLIENT=$BUILD_DIR/src/client/thumbnail_client

mkdir -p input output
samples=0
if [[ -z $(find input -mindepth 1 ! -name .gitkeep -print -quit) ]]; then
    samples=1
    ./scripts/install-deps.sh --samples
else
    ./scripts/install-deps.sh
fi
# Neither the tests nor their test-only hooks: a build to use (test.sh turns them on).
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTN_BUILD_TESTS=OFF -DTN_TESTING=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc 2>/dev/null || echo 2)" --target thumbnail_server thumbnail_client

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${PORT:-50051}
for _ in $(seq 100); do
    port_free "$PORT" && break
    PORT=$((PORT + 1))
done
ADDR=127.0.0.1:$PORT

if [[ $samples -eq 1 ]]; then
    echo "demo: input/ is empty: generating sample videos"
    ./tests/gen_videos.sh "$BUILD_DIR/test-videos" >/dev/null
    for f in h264.mp4 hevc.mkv vp9.webm mpeg4.avi rotate90.mp4 anamorphic.mp4 h264_1080p.mp4; do
        cp "$BUILD_DIR/test-videos/$f" "input/sample_$f"
    done
fi

LOG=$BUILD_DIR/demo-server.log
echo "demo: starting thumbnail_server on $ADDR (log: $LOG)"
"$SERVER" --listen "$ADDR" --log-file "$LOG" &
server_pid=$!
# shellcheck disable=SC2317  # called from the EXIT trap
stop_server() {
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" || true
        echo "demo: server stopped"
    fi
}
trap stop_server EXIT

healthy=0
for _ in $(seq 150); do
    if "$CLIENT" --server "$ADDR" --health >/dev/null 2>&1; then healthy=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
done
if [[ $healthy -ne 1 ]]; then
    echo "demo: the server did not become healthy; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
fi

rc=0
"$CLIENT" --server "$ADDR" input output || rc=$?
echo "demo: thumbnails in output/:"
find output -name '*.png' | sort | sed 's/^/  /'
echo "demo: the binaries: $SERVER, $CLIENT (--help)"
exit "$rc"
