#!/usr/bin/env bash
# Per-thumbnail wall time, one 320-px PNG of a 1080p H.264 clip, side by side:
#   - thumbnail_client against a warm thumbnail_server (upload included),
#     accurate and keyframe mode;
#   - the ffmpeg CLI, `ffmpeg -ss T -i FILE -frames:v 1 -vf scale=320:-2`
#     (accurate by default) and with -skip_frame nokey (keyframe only);
#   - ffmpegthumbnailer -s 320 -t 10% (if installed).
# Every command is a fresh process per thumbnail, as a user would run it.
# Usage: bench/compare.sh [BUILD_DIR]   (env: DURATION=60 RUNS=10 BITRATE=8M)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
BUILD=$(readlink -f "${1:-build}")
DURATION=${DURATION:-60}
RUNS=${RUNS:-10}
BITRATE=${BITRATE:-8M}
command -v hyperfine >/dev/null || { echo "bench: needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }

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
t=$(awk -v d="$DURATION" 'BEGIN { printf "%.3f", d / 10 }') # 10 %

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BUILD/src/server/thumbnail_server" --listen "127.0.0.1:$port" --spool-dir "$work" \
    --log-file "$work/server.log" &
server_pid=$!
for _ in $(seq 50); do
    "$BUILD/src/client/thumbnail_client" --health --server "127.0.0.1:$port" >/dev/null 2>&1 && break
    sleep 0.1
done

client="$BUILD/src/client/thumbnail_client --quiet --overwrite --server 127.0.0.1:$port"
cmds=(
    -n "ours accurate 10%" "$client --at 10% $work/in $work/out"
    -n "ours keyframe 10%" "$client --mode keyframe --at 10% $work/in $work/out"
    -n "ffmpeg -ss T (accurate)" "ffmpeg -nostdin -loglevel error -y -ss $t -i $clip -frames:v 1 -vf scale=320:-2 $work/ff.png"
    -n "ffmpeg -ss T keyframe" "ffmpeg -nostdin -loglevel error -y -skip_frame nokey -ss $t -i $clip -frames:v 1 -vf scale=320:-2 $work/ffk.png"
)
if command -v ffmpegthumbnailer >/dev/null; then
    cmds+=(-n "ffmpegthumbnailer -t 10%" "ffmpegthumbnailer -i $clip -o $work/ft.png -s 320 -t 10%")
fi
echo "bench: clip $((size / 1000000)) MB; $(nproc) cores; server workers $(nproc)" >&2
hyperfine -N --warmup 2 --runs "$RUNS" --export-markdown "$work/table.md" "${cmds[@]}" >&2
cat "$work/table.md"
