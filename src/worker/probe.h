/*
 * Probe: what is in a video, as JSON, from the container and codec headers
 * (and the demuxer's index or packet flags for the keyframe interval),
 * without decoding frames. The engine opens the file (its AVIO, limits and
 * whitelists) and calls this on the open demuxer.
 *
 * The JSON object (keys always present; null when unknown):
 *   container, container_long_name, duration (s), bit_rate (bit/s), size (bytes),
 *   cover_art (bool), keyframe_interval (s, of the main video stream),
 *   video: [{index, codec, profile, pix_fmt, bit_depth, width, height,
 *            sar "n:d", dar "n:d", display_width, display_height, frame_rate,
 *            rotation (degrees, clockwise as shown), flipped (bool),
 *            color_primaries, color_transfer, color_matrix, color_range,
 *            hdr (null | "HDR10" | "HLG"), interlaced (bool|null), main (bool: the one thumbnails
 * use)}], audio: [{index, codec, profile, sample_rate, channels, bit_rate, language}],
 *   cover_art_streams: [{index, codec, width, height}]
 */
#ifndef TN_PROBE_H
#define TN_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include <libavformat/avformat.h>

/*
 * Describe fmt (an opened demuxer; `video` the main video stream's index or
 * -1) as JSON into a malloc'd, NUL-terminated *out (*len bytes without the
 * NUL). May read packets (never decodes) to estimate the keyframe interval
 * when the container has no index: at most max_packets of them, stopping
 * early when stop(opaque) returns nonzero. Returns 0, or -ENOMEM.
 */
int tn_probe_json(AVFormatContext *fmt, int video, uint64_t file_size, int max_packets,
                  int (*stop)(void *opaque), void *opaque, char **out, size_t *len);

#endif
