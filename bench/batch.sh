#!/usr/bin/env bash
# Local mode over a folder of FILES small clips: Batch calls (thumbnail_client
# --local: chunks of at most 256 files, at least 4 per --jobs, 2 calls at a time) against the best per-file Generate setting (thumbnail_client --local
# --per-file -j P, P = 1, 2, 4), the same server (--workers WORKERS, --media-root
# the folder), the same client, fresh output folders. Each setting runs RUNS times
# in turn (interleaved, so that a neighbour's load hits them alike); the best run
# of each counts. Prints a table and the ratio Batch / best Generate (target >= 0.9).
# Usage: bench/batch.sh [BUILD_DIR]   (env: FILES=1000 WORKERS=2 RUNS=3 CLIPS=10)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
BUILD=$(readlink -f "${1:-build}")
FILES=${FILES:-1000}
WORKERS=${WORKERS:-2}
RUNS=${RUNS:-3}
CLIPS=${CLIPS:-10}
SERVER=$BUILD/src/server/thumbnail_server
CLIENT=$BUILD/src/client/thumbnail_client

work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench: making $CLIPS distinct 2 s 640x360 H.264 clips, $FILES files in all..." >&2
mkdir -p "$work/clips" "$work/media"
for c in $(seq 1 "$CLIPS"); do
    ffmpeg -hide_banner -loglevel error -f lavfi \
        -i "testsrc2=s=640x360:r=25:d=2,hue=h=$((c * 36))" -c:v libx264 -preset veryfast \
        -g 25 -pix_fmt yuv420p "$work/clips/c$c.mp4"
done
for i in $(seq -w 1 "$FILES"); do
    c=$((10#$i % CLIPS + 1))
    cp "$work/clips/c$c.mp4" "$work/media/f$i.mp4" # copies: each file is its own inode
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SERVER" --listen "127.0.0.1:$port" --workers "$WORKERS" --media-root "$work/media" \
    --spool-dir "$work" --log-file "$work/server.log" --log-level warn &
server_pid=$!
for _ in $(seq 1 100); do
    "$CLIENT" --server "127.0.0.1:$port" --health >/dev/null 2>&1 && break
    sleep 0.1
done

# One run: seconds of wall time, every file a thumbnail (else the run fails).
one() {
    local out=$work/out.$RANDOM
    local t0 t1
    t0=$(date +%s.%N)
    "$CLIENT" --server "127.0.0.1:$port" -q "$@" "$work/media" "$out"
    t1=$(date +%s.%N)
    local n
    n=$(find "$out" -name '*.png' | wc -l)
    [ "$n" -eq "$FILES" ] || { echo "bench: $* wrote $n of $FILES thumbnails" >&2; exit 1; }
    rm -rf "$out"
    echo "$t1 - $t0" | bc -l
}

settings=("--local" "--local --per-file -j 1" "--local --per-file -j 2" "--local --per-file -j 4")
declare -A best
one --local >/dev/null # warm-up: page cache, workers
for r in $(seq 1 "$RUNS"); do
    for s in "${settings[@]}"; do
        # shellcheck disable=SC2086
        t=$(one $s)
        echo "bench: run $r: $s: $t s" >&2
        if [ -z "${best[$s]:-}" ] || [ "$(echo "$t < ${best[$s]}" | bc -l)" = 1 ]; then
            best[$s]=$t
        fi
    done
done

printf '\n%s files (%s distinct 2 s 640x360 H.264 clips), %s workers, best of %s runs\n\n' \
    "$FILES" "$CLIPS" "$WORKERS" "$RUNS"
printf '| client setting | calls | wall (s) | files/s |\n|---|---|---|---|\n'
gen_best=
for s in "${settings[@]}"; do
    rate=$(echo "$FILES / ${best[$s]}" | bc -l)
    # --local: the client's chunks (client.c, chunk_size()), its default --jobs 2
    chunk=$(((FILES + 7) / 8))
    chunk=$((chunk > 256 ? 256 : chunk))
    calls=$([ "$s" = "--local" ] && echo "$(((FILES + chunk - 1) / chunk)) Batch" || echo "$FILES")
    printf '| `%s` | %s | %.2f | %.0f |\n' "$s" "$calls" "${best[$s]}" "$rate"
    if [ "$s" != "--local" ]; then
        if [ -z "$gen_best" ] || [ "$(echo "$rate > $gen_best" | bc -l)" = 1 ]; then
            gen_best=$rate
        fi
    fi
done
batch_rate=$(echo "$FILES / ${best[--local]}" | bc -l)
printf '\nBatch / best Generate: %.2fx (target >= 0.9)\n' "$(echo "$batch_rate / $gen_best" | bc -l)"
