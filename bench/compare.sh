#!/usr/bin/env bash
# Per-thumbnail wall time, one 320-px PNG at 10 % of a 1080p H.264 clip, side by
# side with hyperfine, every command a fresh process as a user would run it:
#   - thumbnail_client against a warm thumbnail_server (upload included),
#     accurate and keyframe mode;
#   - the ffmpeg CLI, accurate and keyframe-only;
#   - ffmpegthumbnailer (a keyframe thumbnailer).
# The command lines are bench/bench.py's own (`bench.py cmd ...`), so the flags
# are the benchmark's: one decoder thread, the same scaler, PNG level and filter
# (see README "Benchmark").
# Usage: bench/compare.sh [BUILD_DIR]   (env: DURATION=60 RUNS=10 BITRATE=8M)
# DURATION above 10 s: with one keyframe (GOP 250) the ffmpeg CLI in keyframe-only
# mode writes nothing, and the output check fails the run.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
BUILD=$(readlink -f "${1:-build}")
DURATION=${DURATION:-60}
RUNS=${RUNS:-10}
BITRATE=${BITRATE:-8M}
for t in hyperfine ffmpegthumbnailer; do
    command -v $t >/dev/null || { echo "bench: needs $t (apt-get install $t)" >&2; exit 2; }
done

work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

clip=$work/in/clip_1080p.mp4
mkdir -p "$work/in" "$work/out"
echo "bench: making a ${DURATION}s 1080p H.264 clip at ${BITRATE}b/s (GOP 250)..." >&2
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc2=s=1920x1080:r=25:d=$DURATION" \
    -c:v libx264 -preset veryfast -g 250 -b:v "$BITRATE" -minrate "$BITRATE" -maxrate "$BITRATE" \
    -bufsize 16M -pix_fmt yuv420p "$clip"
size=$(stat -c %s "$clip")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BUILD/src/server/thumbnail_server" --listen "127.0.0.1:$port" --spool-dir "$work" \
    --log-file "$work/server.log" &
server_pid=$!
for _ in $(seq 50); do
    "$BUILD/src/client/thumbnail_client" --health --server "127.0.0.1:$port" >/dev/null 2>&1 && break
    sleep 0.1
done

cmd() { /usr/bin/python3 bench/bench.py cmd "$@" --build "$BUILD" --server "127.0.0.1:$port"; }
cmds=(
    -n "ours accurate" "$(cmd client accurate "$work/in" "$work/out")"
    -n "ours keyframe" "$(cmd client keyframe "$work/in" "$work/out")"
    -n "ffmpeg accurate" "$(cmd ffmpeg accurate "$clip" "$work/ff.png")"
    -n "ffmpeg keyframe" "$(cmd ffmpeg keyframe "$clip" "$work/ffk.png")"
    -n "ffmpegthumbnailer" "$(cmd ffmpegthumbnailer keyframe "$clip" "$work/ft.png")"
)
echo "bench: clip $((size / 1000000)) MB; $(nproc) cores; server workers $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((i = 1; i < ${#cmds[@]}; i += 3)); do echo "  ${cmds[i]}: ${cmds[i + 1]}" >&2; done
hyperfine -N --warmup 2 --runs "$RUNS" --export-markdown "$work/table.md" "${cmds[@]}" >&2
# the same output check as bench.py: every tool made a 320 x 180 PNG of the 16:9 clip
/usr/bin/python3 - "$work"/ff.png "$work"/ffk.png "$work"/ft.png "$work"/out/*.png <<'PY' || exit 1
import struct, sys
bad = [p for p in sys.argv[1:] if open(p, "rb").read(24)[16:24] != struct.pack(">II", 320, 180)]
if bad or len(sys.argv) != 5:
    sys.exit("bench: wrong or missing output: %s" % (bad or sys.argv[1:]))
PY
cat "$work/table.md"
