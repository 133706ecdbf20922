/*
 * The engine's storyboard: tiles at the count / every points, one decoder
 * pass in time order, into one sprite sheet (index 0, the requested format)
 * and a WebVTT file (index 1) whose cues point into it with #xywh= fragments.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libavutil/mem.h>

#include "engine_int.h"
#include "status.h"

/* "00:01:02.500" */
static void vtt_time(FILE *f, double s)
{
    long long ms = llround(fmax(0, s) * 1000);
    fprintf(f, "%02lld:%02lld:%02lld.%03lld", ms / 3600000, ms / 60000 % 60, ms / 1000 % 60,
            ms % 1000);
}

/* The sprite's name as the client writes it beside the VTT: the upload's
 * base name without its extension, ".sprite.", the format's extension. */
static void sprite_name(const struct engine *e, char *buf, size_t len)
{
    const char *name = e->req->file_name && e->req->file_name[0] ? e->req->file_name : "video";
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    const char *dot = strrchr(base, '.');
    int n = dot && dot != base ? (int)(dot - base) : (int)strlen(base);
    const char *ext = e->req->opts.format == TN_FORMAT_JPEG   ? "jpg"
                      : e->req->opts.format == TN_FORMAT_WEBP ? "webp"
                                                              : "png";
    snprintf(buf, len, "%.*s.sprite.%s", n, base, ext);
}

/* Every tile into one sheet (one decoder pass, in time order), then the
 * sheet (index 0) and the WebVTT (index 1). */
int run_storyboard(struct engine *e, const struct point *points, tn_engine_emit_fn emit,
                   void *opaque)
{
    const struct tn_engine_request *req = e->req;
    int tw = req->opts.tile_width ? (int)req->opts.tile_width : TN_STORYBOARD_DEFAULT_TILE_WIDTH;
    int cols = req->opts.columns ? (int)req->opts.columns : TN_STORYBOARD_DEFAULT_COLUMNS;
    size_t n = e->n_points;
    uint8_t *sheet = NULL;
    char *vtt = NULL, name[TN_IPC_NAME_MAX + 16], reason[REASON_MAX];
    size_t vtt_len = 0, sheet_stride = 0;
    int th = 0, sw = 0, shh = 0, code = TN_OK, fd = -1;
    uint64_t size = 0;

    if ((size_t)cols > n)
        cols = (int)n;
    int rows = (int)((n + (size_t)cols - 1) / (size_t)cols);
    e->box = (struct box){.max_width = (unsigned)tw, .upscale = 1, .fit = TN_FIT_FIT};
    for (size_t i = 0; i < n; i++) {
        struct geom g = {0};
        const uint8_t *img;
        size_t stride;
        e->pick[0] = '\0';
        if ((code = serve(e, points[i].target)) != TN_OK || (code = check_stop(e)) != TN_OK ||
            (code = render(e, &g, &img, &stride)) != TN_OK)
            goto out;
        if (!sheet) { /* the first tile sets the tile height; later ones are padded to it */
            th = g.bh;
            sw = tw * cols;
            shh = th * rows;
            if (sw > TN_JOB_MAX_SIDE || shh > TN_JOB_MAX_SIDE) {
                code = fail(e, TN_INVALID_ARGUMENT,
                            "the storyboard would be %dx%d (%zu tiles of %dx%d in %d columns), "
                            "over %d a side: use fewer tiles, more columns or smaller tiles",
                            sw, shh, n, tw, th, cols, TN_JOB_MAX_SIDE);
                goto out;
            }
            sheet_stride = (size_t)sw * 3;
            if (!(sheet = av_mallocz(sheet_stride * (size_t)shh))) {
                code = fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "storyboard");
                goto out;
            }
            e->box = (struct box){.max_width = (unsigned)tw,
                                  .max_height = (unsigned)th,
                                  .upscale = 1,
                                  .fit = TN_FIT_PAD};
        }
        int x0 = (int)(i % (size_t)cols) * tw, y0 = (int)(i / (size_t)cols) * th;
        for (int y = 0; y < g.bh && y < th; y++)
            memcpy(sheet + (size_t)(y0 + y) * sheet_stride + (size_t)x0 * 3,
                   img + (size_t)y * stride, (size_t)(g.bw < tw ? g.bw : tw) * 3);
    }
    if ((fd = encode(e, sheet, sw, shh, sheet_stride, &size)) < 0) {
        code = -fd;
        fd = -1;
        goto out;
    }
    snprintf(reason, sizeof(reason), "storyboard: %zu tiles of %dx%d, %d columns", n, tw, th, cols);
    struct tn_engine_result r = {.index = 0,
                                 .requested_time = points[0].seconds,
                                 .actual_time = points[0].seconds,
                                 .width = (unsigned)sw,
                                 .height = (unsigned)shh,
                                 .format = req->opts.format,
                                 .fd = fd,
                                 .size = size,
                                 .reason = reason,
                                 .kind = TN_KIND_SPRITE};
    fd = -1;
    if ((code = emit(opaque, &r)) != TN_OK) {
        code = fail(e, code, "the storyboard could not be delivered");
        goto out;
    }

    /* WebVTT: cue i spans from tile i's point to the next one's (the last to the end) */
    FILE *f = open_memstream(&vtt, &vtt_len);
    if (!f) {
        code = fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "storyboard");
        goto out;
    }
    double end = e->end_pts != AV_NOPTS_VALUE
                     ? (e->end_pts - e->start_pts) * av_q2d(e->st->time_base)
                     : e->duration;
    double step = n > 1 ? points[1].seconds - points[0].seconds : end;
    sprite_name(e, name, sizeof(name));
    fputs("WEBVTT\n", f);
    for (size_t i = 0; i < n; i++) {
        double a = req->opts.count ? step * (double)i : points[i].seconds;
        double b =
            i + 1 < n ? (req->opts.count ? step * (double)(i + 1) : points[i + 1].seconds) : end;
        fputc('\n', f);
        vtt_time(f, a);
        fputs(" --> ", f);
        vtt_time(f, fmax(a, b));
        fprintf(f, "\n%s#xywh=%d,%d,%d,%d\n", name, (int)(i % (size_t)cols) * tw,
                (int)(i / (size_t)cols) * th, tw, th);
    }
    if (fclose(f) != 0) {
        code = fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "storyboard");
        goto out;
    }
    if ((fd = sealed_memfd((const uint8_t *)vtt, vtt_len)) < 0) {
        code = fail(e, TN_INTERNAL, "cannot store the storyboard in a memfd: %s", strerror(-fd));
        fd = -1;
        goto out;
    }
    struct tn_engine_result v = {.index = 1,
                                 .requested_time = points[0].seconds,
                                 .width = (unsigned)sw,
                                 .height = (unsigned)shh,
                                 .fd = fd,
                                 .size = vtt_len,
                                 .reason = "",
                                 .kind = TN_KIND_VTT};
    fd = -1;
    if ((code = emit(opaque, &v)) != TN_OK)
        code = fail(e, code, "the storyboard could not be delivered");
out:
    if (fd >= 0)
        close(fd);
    free(vtt);
    av_free(sheet);
    return code;
}
