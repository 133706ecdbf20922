#!/usr/bin/env bash
# Upload vs pull vs local mode: bytes moved and wall time per thumbnail.
#   - "corpus": the test videos of tests/gen_videos.sh (MP4, MKV, WebM, AVI; small);
#   - "big": a >= 1 GiB H.264 MP4 with the moov at the end (a 10 s 720p clip at
#     ~4.5 Mb/s looped by stream copy, so it is made in seconds), one thumbnail at 10 %.
# For each set a server is started with --media-root on the set's folder, and
# thumbnail_client runs once per mode (--no-pull, --pull, --local), timed by
# hyperfine; bytes sent come from the client's summary line.
# Usage: bench/pull.sh [BUILD_DIR]   (env: RUNS=5 BIG_GIB=1 SETS="corpus big")
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
BUILD=$(readlink -f "${1:-build}")
RUNS=${RUNS:-5}
BIG_GIB=${BIG_GIB:-1}
SETS=${SETS:-corpus big}
command -v hyperfine >/dev/null || { echo "bench: needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }

work=$(mktemp -d)
server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }

make_set() { # make_set NAME -> $work/NAME with the videos
    local d=$work/$1
    mkdir -p "$d"
    case $1 in
    corpus)
        tests/gen_videos.sh "$work/gen" >&2
        for f in h264.mp4 hevc.mkv vp9.webm mpeg4.avi rotate90.mp4 anamorphic.mp4 h264_1080p.mp4; do
            cp "$work/gen/$f" "$d/"
        done
        ;;
    big)
        echo "bench: making a ${BIG_GIB} GiB+ MP4 (moov at the end)..." >&2
        ff -f lavfi -i "testsrc2=s=1280x720:r=25:d=10" -vf noise=alls=6:allf=t -c:v libx264 \
            -crf 26 -preset ultrafast -g 50 -pix_fmt yuv420p "$work/clip.mp4"
        local loops=$(((BIG_GIB << 30) / $(stat -c %s "$work/clip.mp4") + 1))
        ff -stream_loop "$loops" -i "$work/clip.mp4" -c copy "$d/big.mp4"
        rm -f "$work/clip.mp4"
        ;;
    esac
}

start_server() { # start_server MEDIA_ROOT
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$BUILD/src/server/thumbnail_server" --listen "127.0.0.1:$port" --spool-dir "$work" \
        --media-root "$1" --log-file "$work/server.log" &
    server_pid=$!
    for _ in $(seq 50); do
        "$BUILD/src/client/thumbnail_client" --health --server "127.0.0.1:$port" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "bench: the server did not start" >&2
    exit 1
}

to_bytes() { # "12.3 MiB" -> bytes
    awk -v n="$1" -v u="$2" 'BEGIN { m = u == "KiB" ? 1024 : u == "MiB" ? 1048576 : u == "GiB" ? 1073741824 : 1; printf "%.0f", n * m }'
}

echo "| set | files | video bytes | mode | bytes sent | sent / video | ms per thumbnail (mean ± σ) |"
echo "|---|---|---|---|---|---|---|"
for set in $SETS; do
    make_set "$set"
    dir=$work/$set
    n=$(find "$dir" -type f | wc -l)
    start_server "$dir"
    client="$BUILD/src/client/thumbnail_client --overwrite --jobs 1 --server 127.0.0.1:$port"
    for mode in upload pull local; do
        case $mode in
        upload) flag=--no-pull ;;
        pull) flag=--pull ;;
        local) flag=--local ;;
        esac
        summary=$($client $flag "$dir" "$work/out" | tail -n 1)
        # "done: 7 ok, ...; 3.0 MiB sent for 17.8 MiB of video in ..."
        read -r sn su vn vu < <(sed -E 's/.*; ([0-9.]+) ([KMG]?i?B) sent for ([0-9.]+) ([KMG]?i?B) of video.*/\1 \2 \3 \4/' <<<"$summary")
        sent=$(to_bytes "$sn" "$su")
        video=$(to_bytes "$vn" "$vu")
        hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/h.json" \
            "$client --quiet $flag $dir $work/out" >&2
        per=$(python3 -c "import json,sys; r=json.load(open('$work/h.json'))['results'][0]; print('%.1f ± %.1f' % (r['mean']*1e3/$n, r['stddev']*1e3/$n))")
        pct=$(awk -v s="$sent" -v v="$video" 'BEGIN { printf "%.2f %%", v ? 100 * s / v : 0 }')
        echo "| $set | $n | $vn $vu | $mode | $sn $su | $pct | $per |"
    done
    stop_server
    rm -rf "$dir" "$work/out"
done
