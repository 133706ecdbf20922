/*
 * Colour: one decoded frame to RGB24 (BT.709 primaries, BT.709 transfer,
 * full range) at the thumbnail size, the way a player would show it.
 *
 * - YUV matrix and range from the frame's tags (BT.601, BT.709, BT.2020,
 *   FCC, SMPTE 240M; limited or full range). Untagged: BT.709 from 1280
 *   wide or over 576 lines, BT.601 below, limited range (what players do).
 * - Any bit depth swscale reads (8, 10, 12, 16): the matrix is applied at
 *   the source depth, so 10-bit is not tinted.
 * - Interlaced frames (the decoder's interlaced_frame flag): one field is
 *   scaled (a "bob" without the motion search of yadif): no combing, at
 *   half the vertical resolution, which a thumbnail does not miss.
 * - HDR: PQ (HDR10, SMPTE 2084) and HLG (ARIB STD-B67) are linearised,
 *   converted from BT.2020 to BT.709 primaries and tone-mapped so that HDR
 *   reference white (PQ: 203 cd/m2; HLG: 75 % signal; ITU-R BT.2408) is SDR
 *   white; highlights above 80 % roll off smoothly instead of clipping. PQ
 *   is display light (re-encoded for a BT.1886 display), HLG scene light
 *   (re-encoded with the BT.709 OETF, no OOTF: how HLG is meant to look on
 *   an SDR set). BT.2020 SDR gets the primaries conversion only. The extra work is a 16-bit
 * intermediate at the thumbnail size and per-pixel table look-ups: only for such sources.
 *
 * libavfilter's zscale/tonemap would do this too, but would put a filter
 * graph (and libzimg) into every worker for a few table look-ups.
 */
#ifndef TN_COLOUR_H
#define TN_COLOUR_H

#include <stddef.h>
#include <stdint.h>

#include <libavutil/frame.h>

/* What tn_colour_to_rgb did besides the matrix (bit flags). */
enum tn_colour_did {
    TN_COLOUR_DEINTERLACED = 1,
    TN_COLOUR_TONEMAP_PQ = 2,
    TN_COLOUR_TONEMAP_HLG = 4,
    TN_COLOUR_GAMUT = 8, /* BT.2020 primaries mapped to BT.709 */
};

/* Conversion state (swscale context, a 16-bit buffer), reused across
 * frames of one request. Opaque. */
struct tn_colour;

/* A new converter, or NULL when out of memory. */
struct tn_colour *tn_colour_new(void);

/* Free *c and set it to NULL. NULL-safe. */
void tn_colour_free(struct tn_colour **c);

/*
 * Convert f to w x h RGB24 into dst (stride bytes a row; room for h rows).
 * Returns 0, or -1 with a message in err (an unsupported pixel format, out
 * of memory). *did gets enum tn_colour_did flags.
 */
int tn_colour_to_rgb(struct tn_colour *c, const AVFrame *f, int w, int h, uint8_t *dst, int stride,
                     unsigned *did, char *err, size_t errlen);

/* "deinterlaced, PQ tone-mapped" for the flags in did, "" for none. */
void tn_colour_describe(unsigned did, char *buf, size_t len);

#endif
