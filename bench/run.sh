#!/usr/bin/env bash
# The benchmark, one command: bench/run.sh [--quick] [--build DIR] [--corpus DIR] [--out DIR]
#
# Makes a corpus with the ffmpeg CLI (or takes --corpus DIR), starts a warm
# thumbnail_server, and measures it side by side, interleaved, against
# ffmpegthumbnailer, the ffmpeg CLI (serial and xargs -P <cores>), the engine
# in-process and the in-process limit (bench/limit.c). Writes
# bench/results/<date>/report.md (Markdown tables, ratios, targets) and
# plot.png (gnuplot). --quick: a small corpus and one round (CI, ~1 min).
# Needs a build with the bench programs (cmake -DTN_BUILD_BENCH=ON, the default).
# Exit 1 if any peer or ours failed to produce a thumbnail.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
build=$root/build
out=
corpus=()
quick=()
work=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=(--quick) ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    --corpus) corpus=(--corpus "$(readlink -f "$2")"); shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
build=$(readlink -f "$build")
for b in src/server/thumbnail_server src/client/thumbnail_client bench/tn_limit bench/tn_engine_bench; do
    [ -x "$build/$b" ] || { echo "bench/run.sh: $build/$b missing: build first (cmake --build $build)" >&2; exit 2; }
done
for t in ffmpeg ffprobe gnuplot; do
    command -v $t >/dev/null || { echo "bench/run.sh: needs $t (scripts/install-deps.sh)" >&2; exit 2; }
done
out=${out:-$root/bench/results/$(date -u +%Y%m%d-%H%M%S)}
# The corpus is kept between full runs (bench/results/work, gitignored): making it costs minutes.
work=${work:-$root/bench/results/work${quick:+-quick}}
mkdir -p "$out" "$work"

status=0
/usr/bin/python3 "$root/bench/bench.py" --build "$build" --out "$out" --work "$work" \
    "${quick[@]}" "${corpus[@]}" || status=$?

if [ -s "$out/latency.dat" ]; then
    gnuplot -e "datadir='$out'" "$root/bench/plot.gp" || { echo "bench/run.sh: gnuplot failed" >&2; status=1; }
fi
[ -s "$out/report.md" ] && echo "bench: $out/report.md, $out/plot.png" >&2
exit $status
