/*
 * SMART frame selection: judge small RGB renderings of a few candidate
 * frames (keyframes near the requested time) and pick one.
 *
 * A candidate is rejected as "black" (mean luma under 8 %) or "blank" (luma
 * standard deviation under 3 %: a flat frame, a fade, a title card's empty
 * background). Among the rest, the most representative is the one whose
 * colour histogram is closest (squared distance) to the mean of their
 * histograms: the idea of FFmpeg's `thumbnail` filter, on keyframes and
 * without keeping frames at full size beyond the few candidates.
 */
#ifndef TN_SMART_H
#define TN_SMART_H

#include <stddef.h>
#include <stdint.h>

#define TN_SMART_BINS 16 /* per channel */

enum tn_smart_verdict { TN_SMART_OK = 0, TN_SMART_BLACK = 1, TN_SMART_BLANK = 2 };

struct tn_smart_stats {
    double mean;   /* luma 0..255 */
    double stddev; /* of luma */
    float hist[3 * TN_SMART_BINS];
    int verdict; /* enum tn_smart_verdict */
};

/* Analyse a w x h RGB24 image (stride bytes a row). */
void tn_smart_analyse(const uint8_t *rgb, int w, int h, int stride, struct tn_smart_stats *s);

/* The accepted candidate closest to the mean histogram of the accepted
 * ones; -1 if every candidate was rejected. */
int tn_smart_pick(const struct tn_smart_stats *c, size_t n);

/* A short text for people: "skipped 2 black frames; most representative of
 * 3 keyframes", or "all 5 keyframes looked at were black or blank". */
void tn_smart_reason(const struct tn_smart_stats *c, size_t n, int picked, char *buf, size_t len);

#endif
