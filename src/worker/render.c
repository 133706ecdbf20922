/*
 * The picture of a thumbnail: the decoded frame fitted into the box,
 * scaled and colour converted to RGB24, rotated, cropped and padded.
 *
 * DESIGN. Geometry follows the ffmpeg CLI: the stream's display matrix
 * (rotation and flips) and the sample aspect ratio are applied, so the
 * thumbnail looks like the video does in a player. We scale first, to the
 * pre-rotation size, and rotate the small RGB image afterwards. The box
 * arithmetic is tn_render_fit() (render.h), pure so that it can be tested on
 * plain numbers.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <libavformat/avformat.h>
#include <libavutil/display.h>

#include "colour.h"
#include "engine_int.h"
#include "render.h"
#include "status.h"

/* From the display matrix (row-major a b u / c d v / x y w, 16.16), to the
 * nearest right angle: the output pixel (X, Y) is the source pixel
 *   not transposed: x = rev_a ? W-1-X : X,  y = rev_b ? H-1-Y : Y
 *   transposed:     y = rev_a ? H-1-X : X,  x = rev_b ? W-1-Y : Y
 * which matches what the ffmpeg CLI's autorotate shows (checked by a test). */
static void orient(const AVStream *st, struct geom *g)
{
    size_t size = 0;
    const int32_t *m =
        (const int32_t *)av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, &size);

    g->transpose = g->rev_a = g->rev_b = 0;
    if (!m || size < 9 * sizeof(int32_t))
        return;
    double a = m[0] / 65536.0, b = m[1] / 65536.0, c = m[3] / 65536.0, d = m[4] / 65536.0;
    if (fabs(a) + fabs(d) >= fabs(b) + fabs(c)) {
        g->rev_a = a < 0;
        g->rev_b = d < 0;
    } else {
        g->transpose = 1;
        g->rev_a = c < 0;
        g->rev_b = b < 0;
    }
}

/* The arithmetic of the old fit(), on plain numbers (render.h). */
int tn_render_fit(const struct box *req, int width, int height, int sar_num, int sar_den,
                  struct geom *g, char *err, size_t errlen)
{
    double dw = width, dh = height;
    int mode = req->fit ? req->fit : TN_FIT_FIT;

    if (sar_num > 0 && sar_den > 0)
        dw = dw * sar_num / sar_den;
    double rw = g->transpose ? dh : dw, rh = g->transpose ? dw : dh;
    double s = INFINITY, bw = req->max_width, bh = req->max_height;
    if (mode == TN_FIT_FILL) {
        s = fmax(bw / rw, bh / rh);
        if (!req->upscale && s > 1) { /* the largest window of the box's aspect */
            bw /= s;
            bh /= s;
            s = 1;
        }
    } else {
        if (req->max_width)
            s = bw / rw;
        if (req->max_height)
            s = fmin(s, bh / rh);
        if (!isfinite(s) || (!req->upscale && s > 1))
            s = 1;
    }
    double ow = fmax(1, round(rw * s)), oh = fmax(1, round(rh * s));
    if (ow > TN_JOB_MAX_SIDE || oh > TN_JOB_MAX_SIDE) {
        snprintf(err, errlen,
                 "the thumbnail would be %.0fx%.0f, over %d a side: give a smaller box", ow, oh,
                 TN_JOB_MAX_SIDE);
        return TN_INVALID_ARGUMENT;
    }
    g->ow = (int)ow;
    g->oh = (int)oh;
    g->sw = g->transpose ? g->oh : g->ow;
    g->sh = g->transpose ? g->ow : g->oh;
    g->cw = g->ow;
    g->ch = g->oh;
    g->cx = g->cy = 0;
    if (mode == TN_FIT_FILL) {
        g->cw = (int)fmin(g->ow, fmax(1, round(bw)));
        g->ch = (int)fmin(g->oh, fmax(1, round(bh)));
        g->cx = (g->ow - g->cw) / 2;
        g->cy = (g->oh - g->ch) / 2;
    }
    g->bw = g->cw;
    g->bh = g->ch;
    g->px = g->py = 0;
    if (mode == TN_FIT_PAD) {
        g->bw = (int)fmax(g->cw, req->max_width);
        g->bh = (int)fmax(g->ch, req->max_height);
        g->px = (g->bw - g->cw) / 2;
        g->py = (g->bh - g->ch) / 2;
    }
    return TN_OK;
}

/* The frame's displayed picture (SAR applied, rotated) fitted in e->box:
 * tn_render_fit() on the frame's numbers. */
static int fit(struct engine *e, const AVFrame *f, struct geom *g)
{
    const AVStream *st = e->img_st ? e->img_st : e->st;
    AVRational sar = f->sample_aspect_ratio;

    if (st == e->st)
        sar = av_guess_sample_aspect_ratio(e->fmt, (AVStream *)st, (AVFrame *)f);
    if (st == e->st)
        orient(st, g);
    else
        g->transpose = g->rev_a = g->rev_b = 0; /* cover art: no display matrix */
    return tn_render_fit(&e->box, f->width, f->height, sar.num, sar.den, g, e->err, e->errlen);
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    av_freep(buf);
    *cap = 0;
    *buf = av_malloc(need);
    if (!*buf)
        return -1;
    *cap = need;
    return 0;
}

/* Scale f to g->sw x g->sh RGB24 into e->rgb (stride *stride), colour
 * converted (colour.h); what that involved goes into e->colour_did. */
static int scale(struct engine *e, const AVFrame *f, const struct geom *g, int *stride)
{
    char cerr[128];

    if (!e->colour && !(e->colour = tn_colour_new()))
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "scaling");
    *stride = FFALIGN(g->sw * 3, 64);
    if (grow(&e->rgb, &e->rgb_cap, (size_t)*stride * g->sh + 64) < 0)
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "scaling");
    if (tn_colour_to_rgb(e->colour, f, g->sw, g->sh, e->rgb, *stride, &e->colour_did, cerr,
                         sizeof(cerr)) < 0) {
        if (!strcmp(cerr, "out of memory"))
            return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "scaling");
        return fail(e, strncmp(cerr, "pixel format", 12) ? TN_INTERNAL : TN_INVALID_ARGUMENT, "%s",
                    cerr);
    }
    return TN_OK;
}

/* Apply the rotation/flip of g to the scaled image: e->rot, tight rows. */
static int rotate(struct engine *e, const struct geom *g, int stride)
{
    if (grow(&e->rot, &e->rot_cap, (size_t)g->ow * g->oh * 3) < 0)
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "rotating");
    for (int y = 0; y < g->oh; y++) {
        uint8_t *out = e->rot + (size_t)y * g->ow * 3;
        for (int x = 0; x < g->ow; x++, out += 3) {
            int sx, sy;
            if (!g->transpose) {
                sx = g->rev_a ? g->sw - 1 - x : x;
                sy = g->rev_b ? g->sh - 1 - y : y;
            } else {
                sy = g->rev_a ? g->sh - 1 - x : x;
                sx = g->rev_b ? g->sw - 1 - y : y;
            }
            const uint8_t *in = e->rgb + (size_t)sy * stride + (size_t)sx * 3;
            out[0] = in[0];
            out[1] = in[1];
            out[2] = in[2];
        }
    }
    return TN_OK;
}

/* PAD: the picture (w x h at img, stride) centred on the box in the
 * border colour, into e->canvas. Returns the canvas or NULL (ENOMEM). */
static const uint8_t *pad(struct engine *e, const struct geom *g, const uint8_t *img, size_t stride)
{
    size_t row = (size_t)g->bw * 3;
    uint32_t c = e->box.fit == TN_FIT_PAD && e->req->opts.storyboard ? 0 : e->req->opts.pad_color;
    uint8_t rgb[3] = {(uint8_t)(c >> 16), (uint8_t)(c >> 8), (uint8_t)c};

    if (grow(&e->canvas, &e->canvas_cap, row * g->bh) < 0)
        return NULL;
    for (int y = 0; y < g->bh; y++) {
        uint8_t *o = e->canvas + (size_t)y * row;
        if (y >= g->py && y < g->py + g->ch) {
            memcpy(o + (size_t)g->px * 3, img + (size_t)(y - g->py) * stride, (size_t)g->cw * 3);
            for (int x = 0; x < g->px; x++)
                memcpy(o + (size_t)x * 3, rgb, 3);
            for (int x = g->px + g->cw; x < g->bw; x++)
                memcpy(o + (size_t)x * 3, rgb, 3);
        } else {
            for (int x = 0; x < g->bw; x++)
                memcpy(o + (size_t)x * 3, rgb, 3);
        }
    }
    return e->canvas;
}

/* e->cur fitted into e->box, scaled, rotated, cropped and padded: *img
 * (g->bw x g->bh, *stride bytes a row, in one of the engine's buffers). */
int render(struct engine *e, struct geom *g, const uint8_t **img, size_t *img_stride)
{
    int stride = 0, code;

    if ((code = fit(e, e->cur, g)) != TN_OK || (code = scale(e, e->cur, g, &stride)) != TN_OK)
        return code;
    *img = e->rgb;
    *img_stride = (size_t)stride;
    if (g->transpose || g->rev_a || g->rev_b) {
        if ((code = rotate(e, g, stride)) != TN_OK)
            return code;
        *img = e->rot;
        *img_stride = (size_t)g->ow * 3;
    }
    *img += (size_t)g->cy * *img_stride + (size_t)g->cx * 3; /* FILL's crop */
    if (g->bw != g->cw || g->bh != g->ch) {
        if (!(*img = pad(e, g, *img, *img_stride)))
            return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "padding");
        *img_stride = (size_t)g->bw * 3;
    }
    return TN_OK;
}
