/*
 * The thumbnail engine: video fd -> libavformat (custom pread AVIO) ->
 * libavcodec -> swscale (straight to RGB24, at the thumbnail size) -> rotate /
 * flip in memory -> libpng / libjpeg-turbo / libwebp -> sealed memfd.
 *
 * DESIGN. Untrusted input is decoded here, so every step is bounded: only the
 * fd is ever read (a custom AVIOContext, an io_open that refuses everything,
 * a container whitelist without playlists), probing is capped, max_pixels is
 * set on our decoder and on the ones avformat_find_stream_info opens, and the
 * deadline and the cancel fd are checked in every read and between frames.
 * The worker's RLIMIT_AS and the front's kill are the hard bounds behind that.
 *
 * The work is split the way FFmpeg splits its command-line tool (demux, decode,
 * encode); engine_int.h holds the state of one request that the files share:
 * input.c opens the file, decode.c finds each frame, render.c makes the
 * picture, encode.c the image, storyboard.c the sprite sheet, animation.c the
 * animated preview. This file runs
 * one request through them, in the order tn_engine_run() shows, and holds what
 * they all use: the error text and libav's log.
 */
#include "engine.h"

#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <turbojpeg.h>

#include "colour.h"
#include "engine_int.h"
#include "json.h"
#include "log.h"
#include "probe.h"
#include "status.h"

/* ---- libav log -------------------------------------------------------- */

/* The last error libav logged, to complete our messages ("moov atom not
 * found"). Decoder threads log too, hence the lock. */
static pthread_mutex_t av_last_lock = PTHREAD_MUTEX_INITIALIZER;
static char av_last_error[AV_LAST_ERROR_MAX];

/* libav's callback type has no format attribute; ours says what fmt is. */
__attribute__((format(printf, 3, 0))) static void av_log_cb(void *avcl, int level, const char *fmt,
                                                            va_list vl)
{
    if (level > AV_LOG_WARNING)
        return;
    va_list copy;
    va_copy(copy, vl);
    if (level <= AV_LOG_ERROR) {
        char msg[sizeof(av_last_error)];
        vsnprintf(msg, sizeof(msg), fmt, copy);
        msg[strcspn(msg, "\r\n")] = '\0';
        if (msg[0]) {
            pthread_mutex_lock(&av_last_lock);
            memcpy(av_last_error, msg, sizeof(msg));
            pthread_mutex_unlock(&av_last_lock);
        }
    }
    va_end(copy);
    if (tn_log_level() >= TN_LOG_DEBUG) {
        char line[512];
        int prefix = 1;
        av_log_format_line2(avcl, level, fmt, vl, line, sizeof(line), &prefix);
        line[strcspn(line, "\r\n")] = '\0';
        tn_log_debug("libav: %s", line);
    }
}

static void av_last_reset(void)
{
    pthread_mutex_lock(&av_last_lock);
    av_last_error[0] = '\0';
    pthread_mutex_unlock(&av_last_lock);
}

/* ", <last libav error>" or "" */
void av_last_suffix(char *buf, size_t len)
{
    pthread_mutex_lock(&av_last_lock);
    snprintf(buf, len, "%s%s", av_last_error[0] ? ": " : "", av_last_error);
    pthread_mutex_unlock(&av_last_lock);
}

void tn_engine_global_init(void)
{
    av_log_set_level(AV_LOG_WARNING);
    av_log_set_callback(av_log_cb);
    /* Frame buffers are megabytes each: by default glibc mmaps them and
     * unmaps them on free, so every job faults them in again (measured on a
     * 1080p keyframe thumbnail: 1,700 page faults and 3x the time). A worker
     * decodes the same sizes job after job: keep freed memory in the heap. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    /* jansson seeds its hash function from /dev/urandom on first use: now,
     * before the sandbox forbids opening files (the probe writes JSON) */
    json_object_seed(0);
}

/* ---- errors ------------------------------------------------------------ */

int fail(struct engine *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* A failed libav call: the stop code if a read stopped it, else code with
 * "<what>: <libav error>[: <what libav logged>]". */
int fail_av(struct engine *e, int code, int averr, const char *what)
{
    char last[sizeof(av_last_error) + 2];

    if (e->io.stop)
        code = e->io.stop;
    if (code == TN_DEADLINE_EXCEEDED)
        return fail(e, code,
                    "deadline exceeded after decoding %" PRId64 " frames (%zu of %zu %s done)",
                    e->frames, e->done, e->n_points,
                    e->req->opts.animation ? "preview frames" : "thumbnails");
    if (code == TN_CANCELLED)
        return fail(e, code, "job cancelled (the client went away or the server gave up on it)");
    /* Under RLIMIT_AS, ENOMEM is the file's doing (e.g. an MP4 sample table that
     * claims 2^28 entries): undecodable here, and a retry cannot help. Server
     * limits, not files, are what RESOURCE_EXHAUSTED reports. */
    if (averr == AVERROR(ENOMEM))
        return fail(e, TN_INVALID_ARGUMENT,
                    "%s: the file needs more memory than a worker may use (--worker-memory): "
                    "it is damaged or too large to thumbnail",
                    what);
    av_last_suffix(last, sizeof(last));
    return fail(e, code, "%s: %s%s", what, av_err2str(averr), last);
}

int check_stop(struct engine *e)
{
    if (io_check(&e->io, 1))
        return fail_av(e, e->io.stop, AVERROR_EXIT, "stopped");
    return 0;
}

static int validate_request(struct engine *e)
{
    const struct tn_engine_request *req = e->req;

    if (req->size == 0)
        return fail(e, TN_INVALID_ARGUMENT, "the file is empty (0 bytes)");
    if (req->opts.probe)
        return TN_OK;
    int code = tn_job_opts_check(&req->opts, e->err, e->errlen);
    if (code != TN_OK)
        return code;
    return format_name(req->opts.format)
               ? TN_OK
               : fail(e, TN_INVALID_ARGUMENT, "format %u: this server cannot encode it",
                      req->opts.format);
}

/* ---- results ----------------------------------------------------------- */

/* "<how it was picked>; <fallbacks>; <what the colour step did>" */
static void make_reason(const struct engine *e, char *buf, size_t len)
{
    char colour[128];
    const char *fb = e->fallback == FB_LAST      ? "the video ends before that time: its last frame"
                     : e->fallback == FB_DAMAGED ? "the video is damaged before that time: the "
                                                   "last frame that decodes"
                                                 : "";
    const char *seek =
        e->seek_broken && !e->img_st ? "the file cannot seek: decoded from the start" : "";
    const char *parts[4] = {e->pick, seek, fb, colour};
    size_t off = 0;

    tn_colour_describe(e->colour_did, colour, sizeof(colour));
    buf[0] = '\0';
    for (size_t i = 0; i < 4 && off < len; i++) {
        if (!parts[i][0])
            continue;
        int n = snprintf(buf + off, len - off, "%s%s", off ? "; " : "", parts[i]);
        off += n > 0 ? (size_t)n : 0;
    }
}

static int emit_point(struct engine *e, const struct point *p, tn_engine_emit_fn emit, void *opaque)
{
    struct geom g = {0};
    uint64_t size = 0;
    int code;
    char reason[REASON_MAX];
    const uint8_t *img = NULL;
    size_t img_stride = 0;

    if ((code = render(e, &g, &img, &img_stride)) != TN_OK)
        return code;
    int fd = encode(e, img, g.bw, g.bh, img_stride, &size);
    if (fd < 0)
        return -fd;

    make_reason(e, reason, sizeof(reason));
    const AVStream *st = e->img_st ? e->img_st : e->st;
    struct tn_engine_result r = {
        .index = p->index,
        .requested_time = p->seconds,
        .actual_time = st == e->st ? (e->cur_pts - e->start_pts) * av_q2d(e->st->time_base) : 0,
        .width = (unsigned)g.bw,
        .height = (unsigned)g.bh,
        .format = e->req->opts.format,
        .fd = fd,
        .size = size,
        .reason = reason,
    };
    code = emit(opaque, &r); /* owns fd now */
    if (code != TN_OK)
        return fail(e, code,
                    "stopped after %zu of %zu thumbnails: the result could not be delivered",
                    e->done, e->n_points);
    e->done++;
    return TN_OK;
}

/* ---- probe ------------------------------------------------------------------ */

static int probe_stop(void *opaque)
{
    return io_check(opaque, 0);
}

/* The probe.h JSON of the open file as the one result. */
static int run_probe(struct engine *e, tn_engine_emit_fn emit, void *opaque)
{
    int undecodable, code;
    char *json = NULL;
    size_t len = 0;

    if ((code = find_stream_info(e)) != TN_OK)
        return code;
    int si = select_stream(e->fmt, &undecodable);
    if (si < 0 && undecodable >= 0)
        si = undecodable;
    if (tn_probe_json(e->fmt, si, e->req->size, 2000, probe_stop, &e->io, &json, &len) < 0)
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "probing");
    if (e->io.stop) {
        free(json);
        return check_stop(e);
    }
    int fd = sealed_memfd((const uint8_t *)json, len);
    free(json);
    if (fd < 0)
        return fail(e, fd == -ENOMEM || fd == -EMFILE ? TN_RESOURCE_EXHAUSTED : TN_INTERNAL,
                    "cannot store the probe result in a memfd: %s", strerror(-fd));
    struct tn_engine_result r = {.fd = fd, .size = len, .reason = ""};
    e->n_points = 1;
    if ((code = emit(opaque, &r)) != TN_OK)
        return fail(e, code, "the probe result could not be delivered");
    return TN_OK;
}

/* ---- the request ---------------------------------------------------------- */

int tn_engine_run(const struct tn_engine_request *req, tn_engine_emit_fn emit, void *opaque,
                  char *err, size_t errlen)
{
    struct engine e = {
        .req = req,
        .err = err,
        .errlen = errlen,
        .io = {.fd = req->fd,
               .read = req->read,
               .read_opaque = req->read_opaque,
               .size = (int64_t)req->size,
               .deadline_ms = req->deadline_ms,
               .cancel_fd = req->cancel_fd},
        .si = -1,
        .fresh = 1,
        .positioned = 1, /* a new decoder at the start of the stream */
        .seek_ts = INT64_MIN,
        .last_pkt_ts = AV_NOPTS_VALUE,
        .last_out_pts = AV_NOPTS_VALUE,
        .skip_until = INT64_MIN,
        .key_ts = AV_NOPTS_VALUE,
        .cur_key = AV_NOPTS_VALUE,
        .first_pts = AV_NOPTS_VALUE,
        .file_start = AV_NOPTS_VALUE,
    };
    struct point *points = NULL;
    int code;

    if (errlen)
        err[0] = '\0';
    av_last_reset();
    if ((code = validate_request(&e)) != TN_OK || (code = check_stop(&e)) != TN_OK)
        goto out;
    e.pkt = av_packet_alloc();
    e.frame = av_frame_alloc();
    e.prev = av_frame_alloc();
    e.cur = av_frame_alloc();
    points = calloc(TN_STORYBOARD_MAX_TILES, sizeof(*points));
    if (!e.pkt || !e.frame || !e.prev || !e.cur || !points) {
        /* Nothing of the file is read yet: the worker itself is short. */
        code = fail(&e, TN_UNAVAILABLE, "the decode worker is out of memory; retrying is safe");
        goto out;
    }
    if ((code = open_input(&e)) != TN_OK)
        goto out;
    if (req->opts.probe) {
        code = run_probe(&e, emit, opaque);
        goto out;
    }
    int probe_streams = !header_is_enough(e.fmt);
    e.probed_streams = probe_streams;
    if (probe_streams && (code = find_stream_info(&e)) != TN_OK)
        goto out;
    if ((code = open_stream(&e)) != TN_OK)
        goto out;
    if (e.st->start_time == AV_NOPTS_VALUE && e.fmt->start_time == AV_NOPTS_VALUE &&
        (code = find_start(&e)) != TN_OK)
        goto out;
    setup_timing(&e);
    /* An AVI without its index (idx1, e.g. written to a pipe) flags every
     * packet as a keyframe, and codecs such as MS Video 1 do not say in the
     * bitstream which frames are whole (BAD_KEY cannot tell): only decoding
     * forward from the start gives the right pictures. */
    const AVCodecDescriptor *desc = avcodec_descriptor_get(e.st->codecpar->codec_id);
    if (!strcmp(e.fmt->iformat->name, "avi") && avformat_index_get_entries_count(e.st) == 0 &&
        !(desc && (desc->props & AV_CODEC_PROP_INTRA_ONLY)))
        e.seek_broken = 1;
    if (e.duration < 0 && e.end_pts == AV_NOPTS_VALUE && needs_duration(req) &&
        (code = scan_duration(&e)) != TN_OK)
        goto out;
    if (req->opts.animation) {
        code = run_animation(&e, emit, opaque);
        goto out;
    }
    if ((code = resolve_times(&e, points)) != TN_OK)
        goto out;
    if (e.n_points == 0) { /* the storyboard's grid divides by it; a call must yield something */
        code =
            fail(&e, TN_INVALID_ARGUMENT, "the options ask for no thumbnail (times, count, every)");
        goto out;
    }
    e.box = (struct box){.max_width = req->opts.max_width,
                         .max_height = req->opts.max_height,
                         .upscale = req->opts.upscale,
                         .fit = req->opts.fit};
    if (req->opts.storyboard) {
        code = run_storyboard(&e, points, emit, opaque);
        goto out;
    }
    tn_log_debug("%s: %s, %s %dx%d, %.3f s, stream info %s, nonref skip %s",
                 req->file_name ? req->file_name : "-", e.fmt->iformat->name,
                 avcodec_get_name(e.st->codecpar->codec_id), e.st->codecpar->width,
                 e.st->codecpar->height, e.duration, probe_streams ? "probed" : "from the header",
                 e.can_skip_nonref ? "on" : "off");

    for (size_t i = 0; i < e.n_points; i++) {
        e.pick[0] = '\0';
        e.fallback = FB_NONE;
        e.img_st = NULL;
        if (req->opts.cover_art && points[i].index == 0 && (code = cover_art(&e)) != 0) {
            if (code < 0) {
                code = -code;
                goto out;
            }
            snprintf(e.pick, sizeof(e.pick), "cover art");
            code = TN_OK;
        } else if (req->opts.mode == TN_MODE_SMART) {
            code = serve_smart(&e, points[i].target);
        } else if (points[i].is_default) {
            code = serve_default(&e, &points[i]);
        } else {
            code = req->opts.mode == TN_MODE_KEYFRAME ? serve_keyframe(&e, points[i].target)
                                                      : serve_accurate(&e, points[i].target);
        }
        if (code != TN_OK || (code = check_stop(&e)) != TN_OK ||
            (code = emit_point(&e, &points[i], emit, opaque)) != TN_OK)
            goto out;
        if (e.img_st) { /* the cover took e->cur: the next point decodes afresh */
            av_frame_unref(e.cur);
            e.have_cur = 0;
            e.img_st = NULL;
        }
    }
    code = TN_OK;

out:
    if (code != TN_OK && errlen && !err[0])
        snprintf(err, errlen, "%s", tn_code_name(code));
    free(points);
    free(e.out.data);
    if (e.tj)
        tjDestroy(e.tj);
    av_freep(&e.rgb);
    av_freep(&e.rot);
    tn_colour_free(&e.colour);
    tn_colour_free(&e.analyse);
    av_freep(&e.canvas);
    av_frame_free(&e.cur);
    av_frame_free(&e.prev);
    av_frame_free(&e.frame);
    av_packet_free(&e.pkt);
    avcodec_free_context(&e.dec);
    avformat_close_input(&e.fmt);
    if (e.avio) /* ours (custom IO): libav may have replaced the buffer */
        av_freep(&e.avio->buffer);
    avio_context_free(&e.avio);
    return code;
}
