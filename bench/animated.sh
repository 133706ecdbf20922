#!/usr/bin/env bash
# The animated preview against the ffmpeg CLI: a 3 s, 10 fps, 320-wide animated
# WebP from a 1080p H.264 clip (12 s, 25 fps, made here: testsrc2, x264
# veryfast, a keyframe every 2 s, B-frames), from 4 s on:
#   ours:   thumbnail_client --local -i clip.mp4 -o out.webp --animated 4-7 --fps 10 --width 320
#           (a warm server with --media-root on the clip's folder: no upload)
#   ffmpeg: ffmpeg -ss 4 -t 3 -i clip.mp4 -vf fps=10,scale=320:-1 -loop 0 out.webp
#           (as is: libwebp's animation encoder, its threads), and with -threads 1
# Wall time by hyperfine (the commands interleave only across runs of this
# script: compare within one run), then CPU time per preview: the workers'
# (from /proc) plus the client's, against ffmpeg's.
# Usage: bench/animated.sh [BUILD_DIR]   (env: RUNS=15)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
BUILD=$(readlink -f "${1:-build}")
RUNS=${RUNS:-15}
command -v hyperfine >/dev/null || { echo "bench: needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }

mkdir -p "$work/media"
echo "bench: making a 12 s 1080p H.264 clip..." >&2
ff -f lavfi -i "testsrc2=size=1920x1080:rate=25:duration=12" -c:v libx264 -preset veryfast \
    -g 50 -pix_fmt yuv420p -movflags +faststart "$work/media/clip.mp4"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BUILD/src/server/thumbnail_server" --listen "127.0.0.1:$port" --workers 2 --spool-dir "$work" \
    --media-root "$work/media" --log-file "$work/server.log" &
server_pid=$!
for _ in $(seq 50); do
    "$BUILD/src/client/thumbnail_client" -s "127.0.0.1:$port" --health >/dev/null 2>&1 && break
    sleep 0.1
done

cd "$work/media"
ours=("$BUILD/src/client/thumbnail_client" -q -s "127.0.0.1:$port" --local -i clip.mp4
    -o "$work/ours.webp" --animated 4-7 --fps 10 --width 320 --overwrite)
ffm=(ffmpeg -nostdin -loglevel error -y -ss 4 -t 3 -i clip.mp4 -vf fps=10,scale=320:-1 -loop 0
    "$work/ff.webp")
ff1=(ffmpeg -nostdin -loglevel error -y -threads 1 -ss 4 -t 3 -i clip.mp4
    -vf fps=10,scale=320:-1 -loop 0 "$work/ff1.webp")
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup 3 --runs "$RUNS" -n ours "${ours[*]}" -n ffmpeg "${ffm[*]}" \
    -n "ffmpeg -threads 1" "${ff1[*]}"
webpmux -info "$work/ours.webp" 2>/dev/null | sed -n '1,4p' || true

# CPU time: the workers' from /proc (what a server spends), the others' from rusage
python3 - "$RUNS" "$server_pid" "${ours[@]}" -- "${ffm[@]}" -- "${ff1[@]}" <<'EOF'
import os, resource, subprocess, sys
runs, master = int(sys.argv[1]), sys.argv[2]
rest = sys.argv[3:]
cmds = []
while rest:
    i = rest.index("--") if "--" in rest else len(rest)
    cmds.append(rest[:i])
    rest = rest[i + 1:]
tck = os.sysconf("SC_CLK_TCK")
workers = [p for p in os.listdir("/proc") if p.isdigit()
           and open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()[1] == master
           and "worker" in open("/proc/%s/cmdline" % p).read()]
def wcpu():
    t = 0
    for p in workers:
        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    return t / tck
def kids():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
cpu = []
for n, c in enumerate(cmds):
    w0, k0 = wcpu(), kids()
    for _ in range(runs):
        subprocess.run(c, check=True)
    cpu.append((kids() - k0 + (wcpu() - w0 if n == 0 else 0)) / runs)
print("CPU per preview: ours %.0f ms (workers + client), ffmpeg %.0f ms, ffmpeg -threads 1 %.0f ms"
      % tuple(x * 1000 for x in cpu))
print("ratio of CPU, ffmpeg / ours: %.2f (-threads 1: %.2f)" % (cpu[1] / cpu[0], cpu[2] / cpu[0]))
EOF
