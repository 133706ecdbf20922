/*
 * SMART frame selection: statistics of candidate frames and the choice.
 * See smart.h. Pure functions on small images: no libav here.
 */
#include "smart.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define BLACK_MEAN 20.0 /* of 255: ~8 % */
#define BLANK_STDDEV 8.0

void tn_smart_analyse(const uint8_t *rgb, int w, int h, int stride, struct tn_smart_stats *s)
{
    double sum = 0, sum2 = 0;
    size_t n = (size_t)w * h;

    memset(s, 0, sizeof(*s));
    for (int y = 0; y < h; y++) {
        const uint8_t *p = rgb + (size_t)y * stride;
        for (int x = 0; x < w; x++, p += 3) {
            double l = 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2];
            sum += l;
            sum2 += l * l;
            for (int c = 0; c < 3; c++)
                s->hist[c * TN_SMART_BINS + p[c] * TN_SMART_BINS / 256] += 1;
        }
    }
    if (!n)
        return;
    for (int i = 0; i < 3 * TN_SMART_BINS; i++)
        s->hist[i] /= (float)n;
    s->mean = sum / n;
    s->stddev = sqrt(fmax(0, sum2 / n - s->mean * s->mean));
    if (s->mean < BLACK_MEAN)
        s->verdict = TN_SMART_BLACK;
    else if (s->stddev < BLANK_STDDEV)
        s->verdict = TN_SMART_BLANK;
}

int tn_smart_pick(const struct tn_smart_stats *c, size_t n)
{
    float mean[3 * TN_SMART_BINS] = {0};
    size_t ok = 0;
    int best = -1;
    double best_d = INFINITY;

    for (size_t i = 0; i < n; i++) {
        if (c[i].verdict != TN_SMART_OK)
            continue;
        ok++;
        for (int b = 0; b < 3 * TN_SMART_BINS; b++)
            mean[b] += c[i].hist[b];
    }
    if (!ok)
        return -1;
    for (int b = 0; b < 3 * TN_SMART_BINS; b++)
        mean[b] /= (float)ok;
    for (size_t i = 0; i < n; i++) {
        if (c[i].verdict != TN_SMART_OK)
            continue;
        double d = 0;
        for (int b = 0; b < 3 * TN_SMART_BINS; b++)
            d += (c[i].hist[b] - mean[b]) * (c[i].hist[b] - mean[b]);
        if (d < best_d) { /* ties: the earliest, nearest the requested time */
            best_d = d;
            best = (int)i;
        }
    }
    return best;
}

void tn_smart_reason(const struct tn_smart_stats *c, size_t n, int picked, char *buf, size_t len)
{
    size_t black = 0, blank = 0, ok = 0;

    for (size_t i = 0; i < n; i++) {
        black += c[i].verdict == TN_SMART_BLACK;
        blank += c[i].verdict == TN_SMART_BLANK;
        ok += c[i].verdict == TN_SMART_OK;
    }
    if (picked < 0) {
        snprintf(buf, len, "all %zu keyframes looked at were black or blank", n);
        return;
    }
    int off = 0;
    buf[0] = '\0';
    if (black || blank) {
        off = snprintf(buf, len, "skipped");
        if (black && off >= 0 && (size_t)off < len)
            off += snprintf(buf + off, len - off, " %zu black", black);
        if (blank && off >= 0 && (size_t)off < len)
            off += snprintf(buf + off, len - off, "%s %zu blank", black ? " and" : "", blank);
        if (off >= 0 && (size_t)off < len)
            off += snprintf(buf + off, len - off, " %s", black + blank == 1 ? "frame" : "frames");
    }
    if (ok > 1 && off >= 0 && (size_t)off < len)
        snprintf(buf + off, len - off, "%smost representative of %zu keyframes", off ? "; " : "",
                 ok);
}
