#!/usr/bin/env bash
# Seed corpus for fuzz_engine: every generated clip (tests/gen_videos.sh) cut to
# its first 256 KiB, so libFuzzer mutates headers and the first frames rather
# than spending its time on megabytes of one clip, plus the reproducers kept in
# tests/fuzz/corpus/ (small inputs that once crashed the engine).
# Usage: seed_corpus.sh VIDEOS_DIR KEPT_CORPUS_DIR OUT_DIR
set -euo pipefail
videos=$1 kept=$2 out=$3
rm -rf "$out"
mkdir -p "$out"
n=0
for f in "$videos"/*; do
    [[ -f "$f" && -s "$f" ]] || continue
    head -c $((256 * 1024)) "$f" >"$out/$(basename "$f")"
    n=$((n + 1))
done
if [[ -d "$kept" ]]; then
    for f in "$kept"/*; do
        [[ -f "$f" && $(basename "$f") != README ]] || continue
        cp "$f" "$out/kept-$(basename "$f")"
        n=$((n + 1))
    done
fi
[[ $n -gt 0 ]] || { echo "seed_corpus: no clips in $videos" >&2; exit 1; }
echo "seed_corpus: $n seeds in $out"
