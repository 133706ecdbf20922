#!/usr/bin/env bash
# Generate the test videos with Debian's ffmpeg CLI into DIR (default: ./test-videos).
#
# Idempotent: DIR/.done holds the hash of this script; when it matches, nothing
# is regenerated. Clips are short and small so the whole run stays well under a
# minute on 2 cores. Never commit the output: tests make their own inputs.
set -euo pipefail

dir=${1:-test-videos}
self=$(readlink -f "${BASH_SOURCE[0]}")
hash=$(sha256sum "$self" | cut -d' ' -f1)

if [[ -f "$dir/.done" && "$(cat "$dir/.done")" == "$hash" ]]; then
    echo "gen_videos: $dir is up to date"
    exit 0
fi

command -v ffmpeg >/dev/null || { echo "gen_videos: ffmpeg not found (apt-get install ffmpeg)" >&2; exit 1; }
command -v ffprobe >/dev/null || { echo "gen_videos: ffprobe not found (apt-get install ffmpeg)" >&2; exit 1; }

mkdir -p "$dir"
rm -f "$dir/.done"
tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
# A moving test pattern with a frame counter, so different times give different frames.
src() { # src W H SECONDS
    echo "testsrc2=size=$1x$2:rate=25:duration=$3"
}
start=$SECONDS

# --- the codecs -------------------------------------------------------------
ff -f lavfi -i "$(src 640 360 4)" -f lavfi -i "sine=frequency=440:duration=4" \
    -c:v libx264 -preset veryfast -bf 3 -g 50 -pix_fmt yuv420p -c:a aac -b:a 64k \
    -movflags +faststart "$tmp/h264.mp4"
ff -f lavfi -i "$(src 640 360 3)" \
    -c:v libx265 -preset ultrafast -x265-params log-level=error -pix_fmt yuv420p "$tmp/hevc.mkv"
ff -f lavfi -i "$(src 640 360 3)" \
    -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 500k -pix_fmt yuv420p "$tmp/vp9.webm"
ff -f lavfi -i "$(src 640 360 3)" -c:v mpeg4 -q:v 5 "$tmp/mpeg4.avi"

# --- display matrix: 640x360 stored, shown rotated by 90° (portrait 360x640) ---
ff -i "$tmp/h264.mp4" -c copy -an -metadata:s:v:0 rotate=90 "$tmp/rotate90.mp4"
rot=$(ffprobe -v error -select_streams v:0 -show_entries stream_side_data=rotation \
      -of default=nw=1:nk=1 "$tmp/rotate90.mp4" | head -n1)
if [[ "$rot" != "-90" && "$rot" != "90" ]]; then
    echo "gen_videos: rotate90.mp4 has no 90° display matrix (rotation='$rot')" >&2
    exit 1
fi

# --- anamorphic: 480x360 stored, SAR 4:3 -> displayed 640x360 --------------------
ff -f lavfi -i "$(src 480 360 3)" -vf setsar=4/3 \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p "$tmp/anamorphic.mp4"
sar=$(ffprobe -v error -select_streams v:0 -show_entries stream=sample_aspect_ratio \
      -of default=nw=1:nk=1 "$tmp/anamorphic.mp4")
if [[ "$sar" != "4:3" ]]; then
    echo "gen_videos: anamorphic.mp4 has SAR '$sar', expected 4:3" >&2
    exit 1
fi

# --- engine: smart mode, cover art, HDR, interlaced, orientation -------------------
# 5 s of black, then picture (x264 puts a scene-cut keyframe at 5 s)
ff -f lavfi -i "color=black:s=320x180:r=25:d=5[a];testsrc2=s=320x180:r=25:d=5[b];[a][b]concat=n=2:v=1:a=0" \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p "$tmp/blackintro.mp4"
# h264.mp4 with a red 200x200 PNG as an attached picture
ff -f lavfi -i "color=c=red:s=200x200:d=1" -frames:v 1 "$tmp/.cover.png"
ff -i "$tmp/h264.mp4" -i "$tmp/.cover.png" -map 0 -map 1 -c copy -c:v:1 png \
    -disposition:v:1 attached_pic "$tmp/cover.mp4"
rm -f "$tmp/.cover.png"
# HDR10: 75 % colour bars in PQ / BT.2020, SDR white at 203 cd/m2 (BT.2408)
ff -f lavfi -i "smptebars=s=320x180:r=25:d=1" \
    -vf "zscale=tin=bt709:pin=bt709:min=bt709:rin=limited:t=smpte2084:p=bt2020:m=bt2020nc:r=limited:npl=203,format=yuv420p10le" \
    -c:v libx265 -x265-params log-level=error -color_primaries bt2020 -color_trc smpte2084 \
    -colorspace bt2020nc "$tmp/hdr10.mkv"
ff -f lavfi -i "smptebars=s=320x180:r=25:d=1" -c:v libx264 -preset veryfast -pix_fmt yuv420p \
    -color_primaries bt709 -color_trc bt709 -colorspace bt709 "$tmp/sdr_bars.mp4"
# interlaced (TFF): a white box moving 8 px a field
ff -f lavfi -i "color=black:s=320x240:r=50:d=1[bg];color=white:s=60x120[b];[bg][b]overlay=x='20+t*400':y=60:shortest=1,tinterlace=mode=interleave_top,format=yuv420p" \
    -c:v libx264 -flags +ildct+ilme -x264-params tff=1 "$tmp/interlaced.mp4"
# blue with a red top-left corner: the orientation tests patch its tkhd matrix
ff -f lavfi -i "color=c=blue:s=320x240:r=25:d=1,drawbox=x=0:y=0:w=80:h=60:c=red:t=fill" \
    -c:v libx264 -pix_fmt yuv420p "$tmp/box.mp4"

# --- not videos ---------------------------------------------------------------
ff -f lavfi -i "sine=frequency=440:duration=2" -c:a aac -b:a 64k "$tmp/audio_only.m4a"
# 1 MiB of reproducible random bytes (no openssl needed).
python3 -c '
import random, sys
r = random.Random(12345)
sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(1 << 20)))' >"$tmp/random.bin"
: >"$tmp/empty.mp4"
# moov at the end (no +faststart), then keep only the first half: no moov at all.
ff -f lavfi -i "$(src 640 360 2)" -c:v libx264 -preset veryfast -pix_fmt yuv420p \
    "$tmp/.full_for_truncated.mp4"
size=$(stat -c %s "$tmp/.full_for_truncated.mp4")
head -c $((size / 2)) "$tmp/.full_for_truncated.mp4" >"$tmp/truncated.mp4"
rm -f "$tmp/.full_for_truncated.mp4"

# --- benchmark clip: 1080p H.264, 10 s, one keyframe every 250 frames ------------
ff -f lavfi -i "testsrc2=size=1920x1080:rate=25:duration=10" \
    -c:v libx264 -preset ultrafast -g 250 -keyint_min 250 -pix_fmt yuv420p \
    -movflags +faststart "$tmp/h264_1080p.mp4"

# Publish atomically: everything or nothing.
for f in "$tmp"/*; do
    mv -f "$f" "$dir/"
done
echo "$hash" >"$dir/.done"
echo "gen_videos: wrote $(find "$dir" -maxdepth 1 -type f ! -name ".*" | wc -l) files to $dir in $((SECONDS - start)) s"
