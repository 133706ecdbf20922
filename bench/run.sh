#!/usr/bin/env bash
# The benchmark, one command:
#   bench/run.sh [--quick] [--report NAME] [--build DIR] [--corpus DIR] [--out DIR] [--work DIR]
#
# Makes a corpus with the ffmpeg CLI (or takes --corpus DIR), starts a warm
# thumbnail_server, and measures it side by side, interleaved, against
# ffmpegthumbnailer, the ffmpeg CLI (at the same parallelism settings, one
# decoder thread each, the same PNG level and filter), the engine in-process,
# the in-process limit (bench/limit.c) and socat for raw loopback TCP.
# --report NAME: report.md and results.json (small text, with the date, load
# average, commit and this command) go to bench/reports/NAME/, to be committed
# and cited; without it they go to the results directory.
# --out DIR: plot.png and its data (default bench/results/<date>, gitignored).
# --quick: a small corpus and one round (the ctest bench_quick; ~1 min).
# Needs a build with the bench programs (cmake -DTN_BUILD_BENCH=ON, the default).
# Exit 1 if ours or any peer failed to produce a correctly sized thumbnail.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
command="bench/run.sh${*:+ $*}"
build=$root/build
out=
report=()
corpus=()
quick=()
work=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=(--quick) ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    --report)
        case $2 in */* | .* | "") echo "bench/run.sh: --report takes a name, e.g. $(date -u +%Y-%m-%d)-full" >&2; exit 2 ;; esac
        report=(--report-dir "$root/bench/reports/$2"); shift ;;
    --corpus) corpus=(--corpus "$(readlink -f "$2")"); shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
build=$(readlink -f "$build")
for b in src/server/thumbnail_server src/client/thumbnail_client bench/tn_limit bench/tn_engine_bench; do
    [ -x "$build/$b" ] || { echo "bench/run.sh: $build/$b missing: build first (cmake --build $build)" >&2; exit 2; }
done
# Not optional: a missing peer would make the comparison silently one-sided.
for t in ffmpeg:ffmpeg ffprobe:ffmpeg gnuplot:gnuplot-nox ffmpegthumbnailer:ffmpegthumbnailer socat:socat; do
    command -v "${t%%:*}" >/dev/null ||
        { echo "bench/run.sh: needs ${t%%:*} (apt-get install ${t#*:}; scripts/install-deps.sh)" >&2; exit 2; }
done
out=${out:-$root/bench/results/$(date -u +%Y%m%d-%H%M%S)}
# The corpus is kept between full runs (bench/results/work, gitignored): making it costs minutes.
work=${work:-$root/bench/results/work${quick:+-quick}}
mkdir -p "$out" "$work"

status=0
/usr/bin/python3 "$root/bench/bench.py" --build "$build" --out "$out" --work "$work" \
    --command "$command" "${report[@]}" "${quick[@]}" "${corpus[@]}" || status=$?

if [ -s "$out/latency.dat" ]; then
    gnuplot -e "datadir='$out'" "$root/bench/plot.gp" || { echo "bench/run.sh: gnuplot failed" >&2; status=1; }
fi
dir=${report[1]:-$out}
[ -s "$dir/report.md" ] && echo "bench: $dir/report.md, $dir/results.json; plot: $out/plot.png" >&2
exit $status
