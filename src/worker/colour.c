/*
 * Colour conversion of one frame to SDR BT.709 RGB24: see colour.h.
 *
 * The common case (8- to 16-bit YUV, SDR, BT.601/709) is one sws_scale call
 * straight to RGB24 at the thumbnail size, with the frame's matrix and
 * range. Wide-gamut and HDR sources go to RGB48 first (same scale, same
 * matrix), then per pixel: a 65536-entry table to linear light, a 3x3
 * BT.2020 -> BT.709 matrix, the tone curve, and a 4096-entry table back to
 * the BT.709 transfer. The tables are built once per process, on first use.
 */
#include "colour.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavutil/mem.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>

#define SDR_WHITE_NITS 203.0 /* HDR reference white, ITU-R BT.2408 */
#define KNEE 0.8f            /* the tone curve is the identity below this */
#define OUT_LUT 4096

struct tn_colour {
    struct SwsContext *sws;
    uint16_t *wide; /* RGB48 intermediate (HDR, wide gamut) */
    size_t wide_cap;
};

/* ---- transfer tables ------------------------------------------------------ */

enum curve { CURVE_BT709, CURVE_PQ, CURVE_HLG, N_CURVES };

static float *to_linear[N_CURVES]; /* 16-bit code -> linear light, 1.0 = SDR white */
/* linear 0..1 -> 8-bit code: display light (inverse of BT.1886's 2.4 gamma)
 * for PQ and SDR; scene light (the BT.709 OETF) for HLG */
static uint8_t to_display[OUT_LUT], to_scene[OUT_LUT];
static pthread_once_t once[N_CURVES] = {PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT};
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static double pq_eotf_nits(double v)
{
    const double m1 = 0.1593017578125, m2 = 78.84375, c1 = 0.8359375, c2 = 18.8515625, c3 = 18.6875;
    double p = pow(v, 1 / m2);
    return 10000.0 * pow(fmax(p - c1, 0) / (c2 - c3 * p), 1 / m1);
}

/* HLG signal -> scene light 0..1 */
static double hlg_inverse_oetf(double v)
{
    const double a = 0.17883277, b = 0.28466892, c = 0.55991073;
    return v <= 0.5 ? v * v / 3 : (exp((v - c) / a) + b) / 12;
}

static void build(enum curve k)
{
    float *t = malloc(65536 * sizeof(*t));
    if (!t)
        return; /* to_linear[k] stays NULL: the caller reports it */
    for (int i = 0; i < 65536; i++) {
        double v = i / 65535.0;
        switch (k) {
        case CURVE_PQ: t[i] = (float)(pq_eotf_nits(v) / SDR_WHITE_NITS); break;
        /* scene light, HLG reference white (75 %) = 1: HLG is meant to be
         * shown as SDR without an OOTF (its backward compatibility) */
        case CURVE_HLG: t[i] = (float)(hlg_inverse_oetf(v) / hlg_inverse_oetf(0.75)); break;
        default: t[i] = (float)pow(v, 2.4); break; /* BT.1886 */
        }
    }
    to_linear[k] = t;
}

static void build_bt709(void)
{
    build(CURVE_BT709);
}
static void build_pq(void)
{
    build(CURVE_PQ);
}
static void build_hlg(void)
{
    build(CURVE_HLG);
}

static void build_out(void)
{
    for (int i = 0; i < OUT_LUT; i++) {
        double l = i / (double)(OUT_LUT - 1);
        double v = l < 0.018 ? 4.5 * l : 1.099 * pow(l, 0.45) - 0.099;
        to_scene[i] = (uint8_t)lrint(fmin(fmax(v, 0), 1) * 255);
        to_display[i] = (uint8_t)lrint(fmin(pow(l, 1 / 2.4), 1) * 255);
    }
}

static const float *curve_table(enum curve k)
{
    static void (*const builders[N_CURVES])(void) = {build_bt709, build_pq, build_hlg};
    pthread_once(&once[k], builders[k]);
    pthread_once(&out_once, build_out);
    return to_linear[k];
}

/* ---- the pixel pipeline ------------------------------------------------- */

static int sws_matrix(const AVFrame *f)
{
    switch (f->colorspace) {
    case AVCOL_SPC_BT709: return SWS_CS_ITU709;
    case AVCOL_SPC_FCC: return SWS_CS_FCC;
    case AVCOL_SPC_SMPTE240M: return SWS_CS_SMPTE240M;
    case AVCOL_SPC_BT2020_NCL:
    case AVCOL_SPC_BT2020_CL: return SWS_CS_BT2020;
    case AVCOL_SPC_BT470BG:
    case AVCOL_SPC_SMPTE170M: return SWS_CS_ITU601;
    default:
        /* untagged: what players assume; HDR transfers imply BT.2020 */
        if (f->color_trc == AVCOL_TRC_SMPTE2084 || f->color_trc == AVCOL_TRC_ARIB_STD_B67 ||
            f->color_primaries == AVCOL_PRI_BT2020)
            return SWS_CS_BT2020;
        return f->width >= 1280 || f->height > 576 ? SWS_CS_ITU709 : SWS_CS_ITU601;
    }
}

/* The yuvj formats are yuv with full range; swscale wants it said that way. */
static enum AVPixelFormat unjpeg(enum AVPixelFormat f, int *full)
{
    switch (f) {
    case AV_PIX_FMT_YUVJ420P: *full = 1; return AV_PIX_FMT_YUV420P;
    case AV_PIX_FMT_YUVJ422P: *full = 1; return AV_PIX_FMT_YUV422P;
    case AV_PIX_FMT_YUVJ444P: *full = 1; return AV_PIX_FMT_YUV444P;
    case AV_PIX_FMT_YUVJ440P: *full = 1; return AV_PIX_FMT_YUV440P;
    case AV_PIX_FMT_YUVJ411P: *full = 1; return AV_PIX_FMT_YUV411P;
    default: return f;
    }
}

/* Linear RGB (SDR white = 1) -> 8-bit BT.709, with the tone curve on the
 * largest channel (hue kept): identity to KNEE, then an exponential
 * shoulder with slope 1 at the knee that approaches 1 and never clips. */
static inline void put_sdr(float r, float g, float b, int tonemap, const uint8_t *lut, uint8_t *out)
{
    float m = fmaxf(r, fmaxf(g, b));
    if (tonemap && m > KNEE) {
        float t = KNEE + (1 - KNEE) * (1 - expf(-(m - KNEE) / (1 - KNEE)));
        float s = t / m;
        r *= s, g *= s, b *= s;
    }
    float v[3] = {r, g, b};
    for (int i = 0; i < 3; i++) {
        float x = v[i] < 0 ? 0 : v[i] > 1 ? 1 : v[i];
        out[i] = lut[(int)(x * (OUT_LUT - 1) + 0.5f)];
    }
}

static void wide_to_sdr(const uint16_t *in, int w, int h, uint8_t *dst, int stride, enum curve k,
                        int gamut, const float *lin)
{
    /* BT.2020 -> BT.709 primaries, linear light (ITU-R BT.2087) */
    static const float g2[3][3] = {{1.6605f, -0.5876f, -0.0728f},
                                   {-0.1246f, 1.1329f, -0.0083f},
                                   {-0.0182f, -0.1006f, 1.1187f}};
    const uint8_t *lut = k == CURVE_HLG ? to_scene : to_display;
    for (int y = 0; y < h; y++) {
        const uint16_t *p = in + (size_t)y * w * 3;
        uint8_t *o = dst + (size_t)y * stride;
        for (int x = 0; x < w; x++, p += 3, o += 3) {
            float r = lin[p[0]], g = lin[p[1]], b = lin[p[2]];
            if (gamut) {
                float r2 = g2[0][0] * r + g2[0][1] * g + g2[0][2] * b;
                float g3 = g2[1][0] * r + g2[1][1] * g + g2[1][2] * b;
                float b2 = g2[2][0] * r + g2[2][1] * g + g2[2][2] * b;
                r = r2, g = g3, b = b2;
            }
            put_sdr(r, g, b, k != CURVE_BT709, lut, o);
        }
    }
}

struct tn_colour *tn_colour_new(void)
{
    return calloc(1, sizeof(struct tn_colour));
}

void tn_colour_free(struct tn_colour **c)
{
    if (!*c)
        return;
    sws_freeContext((*c)->sws);
    av_freep(&(*c)->wide);
    free(*c);
    *c = NULL;
}

int tn_colour_to_rgb(struct tn_colour *c, const AVFrame *f, int w, int h, uint8_t *dst, int stride,
                     unsigned *did, char *err, size_t errlen)
{
    int full = f->color_range == AVCOL_RANGE_JPEG;
    enum AVPixelFormat src = unjpeg((enum AVPixelFormat)f->format, &full);
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(src);
    enum curve k = CURVE_BT709;
    int gamut = 0, wide = 0;

    *did = 0;
    if (!desc || !sws_isSupportedInput(src)) {
        snprintf(err, errlen, "pixel format %s cannot be converted", desc ? desc->name : "?");
        return -1;
    }
    int is_rgb = (desc->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL)) != 0;
    if (f->color_trc == AVCOL_TRC_SMPTE2084)
        k = CURVE_PQ;
    else if (f->color_trc == AVCOL_TRC_ARIB_STD_B67)
        k = CURVE_HLG;
    gamut = f->color_primaries == AVCOL_PRI_BT2020 ||
            (f->color_primaries == AVCOL_PRI_UNSPECIFIED && k != CURVE_BT709);
    wide = k != CURVE_BT709 || gamut;

    /* One field of an interlaced frame: every other line, half the height. */
    const uint8_t *planes[4] = {f->data[0], f->data[1], f->data[2], f->data[3]};
    int lines[4] = {f->linesize[0], f->linesize[1], f->linesize[2], f->linesize[3]};
    int sh = f->height;
    if (f->interlaced_frame && !is_rgb && f->height >= 4 &&
        !(desc->flags & AV_PIX_FMT_FLAG_HWACCEL)) {
        for (int i = 0; i < 4; i++)
            lines[i] *= 2;
        sh = f->height / 2;
        *did |= TN_COLOUR_DEINTERLACED;
    }

    enum AVPixelFormat out = wide ? AV_PIX_FMT_RGB48 : AV_PIX_FMT_RGB24;
    int up = w > f->width || h > sh;
    c->sws = sws_getCachedContext(c->sws, f->width, sh, src, w, h, out, up ? SWS_BICUBIC : SWS_AREA,
                                  NULL, NULL, NULL);
    if (!c->sws) {
        snprintf(err, errlen, "cannot convert %dx%d %s to %dx%d RGB", f->width, sh, desc->name, w,
                 h);
        return -1;
    }
    if (!is_rgb)
        sws_setColorspaceDetails(c->sws, sws_getCoefficients(sws_matrix(f)), full,
                                 sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);

    uint8_t *d[4] = {dst};
    int ds[4] = {stride};
    const float *lin = NULL;
    if (wide) {
        size_t need = (size_t)w * h * 3 * sizeof(uint16_t) + 64;
        if (need > c->wide_cap) {
            av_freep(&c->wide);
            c->wide_cap = 0;
            if (!(c->wide = av_malloc(need))) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            c->wide_cap = need;
        }
        if (!(lin = curve_table(k))) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        d[0] = (uint8_t *)c->wide;
        ds[0] = w * 3 * (int)sizeof(uint16_t);
    }
    if (sws_scale(c->sws, planes, lines, 0, sh, d, ds) <= 0) {
        snprintf(err, errlen, "scaling %dx%d %s failed", f->width, f->height, desc->name);
        return -1;
    }
    if (wide) {
        wide_to_sdr(c->wide, w, h, dst, stride, k, gamut, lin);
        *did |= (k == CURVE_PQ ? TN_COLOUR_TONEMAP_PQ : 0) |
                (k == CURVE_HLG ? TN_COLOUR_TONEMAP_HLG : 0) | (gamut ? TN_COLOUR_GAMUT : 0);
    }
    return 0;
}

void tn_colour_describe(unsigned did, char *buf, size_t len)
{
    size_t off = 0;
    static const struct {
        unsigned flag;
        const char *text;
    } names[] = {{TN_COLOUR_DEINTERLACED, "deinterlaced"},
                 {TN_COLOUR_TONEMAP_PQ, "HDR10 (PQ) tone-mapped to SDR"},
                 {TN_COLOUR_TONEMAP_HLG, "HLG tone-mapped to SDR"},
                 {TN_COLOUR_GAMUT, "BT.2020 colours mapped to BT.709"}};

    if (len)
        buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && off < len; i++) {
        if (!(did & names[i].flag))
            continue;
        int n = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", names[i].text);
        if (n < 0)
            break;
        off += (size_t)n;
    }
}
