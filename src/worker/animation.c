/*
 * The engine's animated preview: the frames shown at start + i / fps up to
 * end, fitted into the box like a thumbnail, as one animated WebP (libwebp's
 * WebPAnimEncoder).
 *
 * DESIGN. One decoder pass, like the storyboard's: serve_accurate() finds the
 * first frame exactly as an ACCURATE thumbnail at `start` would (so the
 * preview opens on the picture the still shows), then the decoder only goes
 * forward. Each tick takes the latest frame at or before it, so a 25 fps video
 * at 10 fps drops frames and a 5 fps one repeats them, as a player would show
 * it. A frame is rendered and handed to the encoder as soon as its tick is
 * known: at most two decoded frames are held (the current one and the one
 * after it), whatever the span; non-reference frames that no tick shows are
 * not decoded at all. Past the end of the video the preview stops
 * at its last frame, with fewer frames, and the reason says so. (A preview of
 * one frame comes out as a still WebP: libwebp assembles it so.)
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include "colour.h"
#include "engine_int.h"
#include "log.h"
#include "status.h"

#define WEBP_QUALITY 80 /* quality 0 in the request, as for a still WebP */
#define WEBP_METHOD 4   /* libwebp's default effort, as encode.c uses */

/* A span's end in seconds of the video's timeline; percent needs the duration. */
static int anim_seconds(struct engine *e, const struct tn_time_point *t, const char *name,
                        double dur, double *s)
{
    if (t->kind != TN_TIME_PERCENT) {
        *s = t->value;
        return TN_OK;
    }
    if (dur <= 0)
        return fail(e, TN_INVALID_ARGUMENT,
                    "animation.%s: the video's duration is unknown, so %g%% cannot be placed: "
                    "give it in seconds",
                    name, t->value);
    *s = dur * t->value / 100.0;
    return TN_OK;
}

/* The encoder's state: made on the first frame, which sets the canvas. */
struct anim {
    WebPAnimEncoder *enc;
    WebPConfig config;
    WebPPicture pic; /* the latest frame, re-added while the video shows it */
    int w, h;
};

static int anim_error(struct engine *e, struct anim *a, const char *what)
{
    const char *msg = a->enc ? WebPAnimEncoderGetError(a->enc) : "";
    if (a->pic.error_code == VP8_ENC_ERROR_OUT_OF_MEMORY || strstr(msg, "memory"))
        return fail(e, TN_INVALID_ARGUMENT,
                    "animated WebP encoding failed: out of memory (the preview is too large for "
                    "a worker's memory; ask for a smaller size, span or fps)");
    return fail(e, TN_INTERNAL, "animated WebP encoding failed (%s): %s", what,
                msg && msg[0] ? msg : "encoder error");
}

static int anim_start(struct engine *e, struct anim *a, int w, int h)
{
    const struct tn_job_opts *o = &e->req->opts;
    WebPAnimEncoderOptions eo;

    if (w > WEBP_MAX_DIMENSION || h > WEBP_MAX_DIMENSION)
        return fail(e, TN_INVALID_ARGUMENT,
                    "the preview would be %dx%d, over WebP's %d a side: give a smaller box", w, h,
                    WEBP_MAX_DIMENSION);
    if (!WebPAnimEncoderOptionsInit(&eo) || !WebPConfigInit(&a->config))
        return fail(e, TN_INTERNAL, "libwebp version mismatch");
    eo.anim_params.loop_count = 0; /* forever, as a preview on hover plays */
    eo.allow_mixed = 0;
    if (o->lossless) {
        if (!WebPConfigLosslessPreset(&a->config, o->quality ? (int)(o->quality - 1) / 11 : 0))
            return fail(e, TN_INTERNAL, "libwebp: invalid lossless preset");
    } else {
        a->config.quality = (float)(o->quality ? o->quality : WEBP_QUALITY);
        a->config.method = WEBP_METHOD;
    }
    if (!WebPValidateConfig(&a->config))
        return fail(e, TN_INTERNAL, "libwebp: invalid configuration");
    if (!(a->enc = WebPAnimEncoderNew(w, h, &eo)))
        return anim_error(e, a, "set-up");
    a->w = w;
    a->h = h;
    return TN_OK;
}

/* e->cur rendered into a->pic: on the canvas of the first frame (a frame of
 * another size, after a resolution change, is padded to it). */
static int anim_render(struct engine *e, struct anim *a)
{
    struct geom g = {0};
    const uint8_t *img;
    size_t stride;
    int code = render(e, &g, &img, &stride);

    if (code == TN_OK && a->enc && (g.bw != a->w || g.bh != a->h)) {
        struct box keep = e->box;
        e->box = (struct box){.max_width = (unsigned)a->w,
                              .max_height = (unsigned)a->h,
                              .upscale = 1,
                              .fit = TN_FIT_PAD};
        memset(&g, 0, sizeof(g));
        code = render(e, &g, &img, &stride);
        e->box = keep;
    }
    if (code != TN_OK)
        return code;
    if (!a->enc && (code = anim_start(e, a, g.bw, g.bh)) != TN_OK)
        return code;
    a->pic.use_argb = 1; /* what the animation encoder works on */
    a->pic.width = g.bw;
    a->pic.height = g.bh;
    if (!WebPPictureImportRGB(&a->pic, img, (int)stride))
        return anim_error(e, a, "import");
    return TN_OK;
}

/* The next frame of the stream into e->frame: 0; 1 at its end or at damaged
 * data (e->fallback says which); or a failure code, negative. */
static int forward(struct engine *e)
{
    int ret = decode_forward(e);
    if (ret == 0)
        return 0;
    if (ret == AVERROR_EOF) {
        e->fallback = FB_LAST;
        return 1;
    }
    if (e->io.stop || ret == AVERROR(ENOMEM))
        return -fail_av(e, TN_INVALID_ARGUMENT, ret, "decoding failed");
    tn_log_debug("animation: decoding stopped (%s): ending at the last good frame",
                 av_err2str(ret));
    e->fallback = FB_DAMAGED;
    return 1;
}

int run_animation(struct engine *e, tn_engine_emit_fn emit, void *opaque)
{
    const struct tn_job_opts *o = &e->req->opts;
    const AVRational tb = e->st->time_base;
    double dur =
        e->end_pts != AV_NOPTS_VALUE ? (e->end_pts - e->start_pts) * av_q2d(tb) : e->duration;
    double start = 0, end;
    unsigned n = 0, out = 0;
    struct anim a = {0};
    WebPData data;
    char reason[512], colour[128], tail[128] = ""; /* the worker cuts it to TN_IPC_REASON_MAX */
    int code, fd = -1, at_end = 0, fb_end = FB_NONE;

    WebPDataInit(&data);
    if (!WebPPictureInit(&a.pic))
        return fail(e, TN_INTERNAL, "libwebp version mismatch");
    if (e->st->nb_frames == 1)
        return fail(e, TN_INVALID_ARGUMENT,
                    "the video has a single frame (a still image): an animated preview needs "
                    "moving pictures; ask for a thumbnail instead");
    if ((code = anim_seconds(e, &o->anim_start, "start", dur, &start)) != TN_OK)
        return code;
    end = start + TN_ANIM_DEFAULT_SPAN;
    if (o->anim_end.kind && (code = anim_seconds(e, &o->anim_end, "end", dur, &end)) != TN_OK)
        return code;
    if ((code = tn_job_opts_anim_frames(start, end, o->fps, &n, e->err, e->errlen)) != TN_OK)
        return code;
    e->n_points = n;
    e->box = (struct box){.max_width = o->max_width,
                          .max_height = o->max_height,
                          .upscale = o->upscale,
                          .fit = o->fit};
    int64_t t0 =
        e->start_pts + av_rescale_q(llrint(fmin(start, 1e9) * AV_TIME_BASE), AV_TIME_BASE_Q, tb);

    tn_log_debug("animation: %.3f..%.3f s at %g fps, %u frames", start, end, o->fps, n);
    if ((code = serve_accurate(e, t0)) != TN_OK)
        goto out;
    double first = (e->cur_pts - e->start_pts) * av_q2d(tb);
    if (e->cur_clamped) { /* start is past the end (or the damage): the last frame alone */
        at_end = 1;
        fb_end = e->cur_fallback;
    }
    av_frame_unref(e->prev); /* from here on: the frame after e->cur */
    e->have_prev = 0;
    /* Frames between ticks are not shown: those no other frame refers to
     * need not be decoded (where pts is the packet's own and skipping is
     * safe, as for ACCURATE's frames before the target). */
    if (e->can_skip_nonref && e->nonref_margin == 0) {
        e->tick0 = t0;
        e->tick_step = av_q2d(av_inv_q(tb)) / o->fps;
    }
    int have_next = 0, fresh = 1;
    for (unsigned i = 0; i < n; i++) {
        int64_t tick = t0 + av_rescale_q(llrint(i / o->fps * AV_TIME_BASE), AV_TIME_BASE_Q, tb);
        /* the latest frame at or before the tick becomes e->cur */
        while (i > 0) {
            if (!have_next) {
                if (at_end)
                    break;
                int r = forward(e);
                if (r < 0) {
                    code = -r;
                    goto out;
                }
                if (r == 1) {
                    at_end = 1;
                    fb_end = e->fallback;
                    break;
                }
                av_frame_move_ref(e->prev, e->frame);
                have_next = 1;
            }
            if (e->prev->pts > tick)
                break;
            av_frame_unref(e->cur);
            av_frame_move_ref(e->cur, e->prev);
            e->cur_pts = e->cur->pts;
            have_next = 0;
            fresh = 1;
        }
        /* past the last frame's display time: the preview ends here */
        if (at_end && !have_next && i > 0 && tick >= e->cur_pts + e->frame_dur)
            break;
        if ((code = check_stop(e)) != TN_OK)
            goto out;
        if (fresh && (code = anim_render(e, &a)) != TN_OK)
            goto out;
        fresh = 0;
        if (!WebPAnimEncoderAdd(a.enc, &a.pic, (int)llround(i * 1000.0 / o->fps), &a.config)) {
            code = anim_error(e, &a, "frame");
            goto out;
        }
        e->done = ++out;
    }
    if ((code = check_stop(e)) != TN_OK)
        goto out;
    if (out == 1 && n > 1 && at_end && e->frames <= 1) {
        code = fail(e, TN_INVALID_ARGUMENT,
                    "the video has a single frame (a still image): an animated preview needs "
                    "moving pictures; ask for a thumbnail instead");
        goto out;
    }
    if (!WebPAnimEncoderAdd(a.enc, NULL, (int)llround(out * 1000.0 / o->fps), NULL) ||
        !WebPAnimEncoderAssemble(a.enc, &data)) {
        code = anim_error(e, &a, "assembling");
        goto out;
    }
    if ((fd = sealed_memfd(data.bytes, data.size)) < 0) {
        code = fail(e, fd == -ENOMEM || fd == -EMFILE ? TN_RESOURCE_EXHAUSTED : TN_INTERNAL,
                    "cannot store the preview in a memfd: %s", strerror(-fd));
        fd = -1;
        goto out;
    }

    if (out < n)
        snprintf(tail, sizeof(tail), " (%u asked): the video %s at %.3f s", n,
                 fb_end == FB_DAMAGED ? "is damaged after its frame" : "ends with its frame",
                 (e->cur_pts - e->start_pts) * av_q2d(tb));
    tn_colour_describe(e->colour_did, colour, sizeof(colour));
    snprintf(reason, sizeof(reason), "%u frame%s at %g fps%s%s%s%s", out, out == 1 ? "" : "s",
             o->fps, tail, e->seek_broken ? "; the file cannot seek: decoded from the start" : "",
             colour[0] ? "; " : "", colour);
    struct tn_engine_result r = {.index = 0,
                                 .requested_time = start,
                                 .actual_time = first,
                                 .width = (unsigned)a.w,
                                 .height = (unsigned)a.h,
                                 .format = TN_FORMAT_WEBP,
                                 .fd = fd,
                                 .size = data.size,
                                 .reason = reason,
                                 .kind = TN_KIND_ANIMATION};
    fd = -1;
    if ((code = emit(opaque, &r)) != TN_OK)
        code = fail(e, code, "the preview could not be delivered");
out:
    if (fd >= 0)
        close(fd);
    WebPDataClear(&data);
    WebPPictureFree(&a.pic);
    WebPAnimEncoderDelete(a.enc);
    return code;
}
