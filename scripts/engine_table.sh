#!/usr/bin/env bash
# The engine's table: for each generated clip and mode, the
# thumbnail's size, the time asked for and used, the engine's reason, and the
# median in-process time. Needs a build (engine_table) and the test clips.
#
#   scripts/engine_table.sh [BUILD_DIR]        env: RUNS=5 AT=10%
set -euo pipefail
build=${1:-build}
videos=$build/test-videos
"$(dirname "$0")/../tests/gen_videos.sh" "$videos" >/dev/null
clips=(h264.mp4 hevc.mkv vp9.webm mpeg4.avi rotate90.mp4 anamorphic.mp4 blackintro.mp4
       hdr10.mkv interlaced.mp4 cover.mp4 h264_1080p.mp4)
exec "$build/tests/engine_table" -r "${RUNS:-5}" -t "${AT:-10%}" "${clips[@]/#/$videos/}"
