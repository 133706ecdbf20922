/*
 * The engine's decoding: seeking, and the strategies that find the frame of
 * each point (ACCURATE, KEYFRAME, SMART, the default time, cover art), with
 * their fallbacks. Each leaves the chosen frame in e->cur.
 *
 * DESIGN. All requested times are served from one demuxer and one decoder, in
 * ascending time order. ACCURATE decodes from the keyframe at or before the
 * target to the first frame at or after it (non-reference frames before it
 * are not decoded on codecs where that is safe), and keeps decoding forward
 * instead of seeking when the next target lies in the same GOP. KEYFRAME
 * decodes exactly one packet, the keyframe at or before the target.
 *
 * If the ffmpeg CLI can decode a frame of a file, so must we: when a seek
 * fails, or lands on a "keyframe" that decodes to no keyframe (an AVI without
 * its index), the demuxer is reopened and the video decoded forward from the
 * start, and never sought in again; past the end the last frame is used, at
 * damaged data the last good one. Times are on the file's timeline (from its
 * earliest stream's start, as ffmpeg -ss counts). tests/integration/
 * test_oracle.py holds all this against ffmpeg, encoder by container.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>

#include "colour.h"
#include "engine_int.h"
#include "log.h"
#include "smart.h"
#include "status.h"

#define MAX_DECODE_ERRORS 100 /* corrupt packets in a row before giving up */
#define MAX_SEEK_BACKOFFS 4   /* re-seeks when a seek lands after the target */
#define SMART_NEAR 5          /* SMART: keyframes compared (frames kept) */
#define SMART_MAX 12          /* SMART: keyframes decoded at most, looking past black ones */
#define SMART_SIDE 64         /* SMART: the analysis image, SMART_SIDE x SMART_SIDE */

/* ---- decoding ----------------------------------------------------------- */

#define RETREAT 1 /* a seek landed after the target: seek further back */
/* The first frame after a seek is no keyframe although its packet was flagged
 * one: the container's key flags are wrong (an AVI without its index flags
 * every packet), so seeking gives broken pictures. Decode from the start. */
#define BAD_KEY 2

static int64_t frame_pts(struct engine *e, const AVFrame *f)
{
    int64_t t = f->best_effort_timestamp;
    if (t == AV_NOPTS_VALUE)
        t = f->pts;
    if (t == AV_NOPTS_VALUE)
        t = f->pkt_dts;
    if (t == AV_NOPTS_VALUE) /* e.g. AVI keyframes: the packet's time, if we know it */
        t = e->key_ts;
    if (t == AV_NOPTS_VALUE) /* no timestamps at all: count frames */
        t = e->last_out_pts == AV_NOPTS_VALUE ? e->start_pts : e->last_out_pts + e->frame_dur;
    return t;
}

int64_t packet_ts(const AVPacket *pkt)
{
    return pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
}

/* Nonzero if a decode error is fatal. Corrupt packets are skipped, like the
 * ffmpeg CLI does, unless they keep coming. */
static int decode_error(struct engine *e, int err)
{
    if (err == AVERROR(ENOMEM) || err == AVERROR_EXIT || e->io.stop)
        return 1;
    e->last_decode_error = err;
    if (++e->errors_in_row > MAX_DECODE_ERRORS)
        return 1;
    tn_log_debug("decode error, skipped: %s", av_err2str(err));
    return 0;
}

/* Next packet of the video stream into e->pkt: 0, AVERROR_EOF (end, or an
 * unreadable rest of file), AVERROR_EXIT (deadline, cancel) or ENOMEM. */
int read_video_packet(struct engine *e)
{
    for (;;) {
        if (io_check(&e->io, 0))
            return AVERROR_EXIT;
        int ret = av_read_frame(e->fmt, e->pkt);
        if (ret < 0) {
            if (e->io.stop)
                return AVERROR_EXIT;
            if (ret == AVERROR(ENOMEM))
                return ret;
            if (ret != AVERROR_EOF)
                tn_log_debug("read error, taken as the end of the stream: %s", av_err2str(ret));
            return AVERROR_EOF;
        }
        if (e->pkt->stream_index == e->si) {
            int64_t t = e->pkt->dts != AV_NOPTS_VALUE ? e->pkt->dts : e->pkt->pts;
            if (t != AV_NOPTS_VALUE)
                e->last_pkt_ts = t;
            e->fresh = 0;
            return 0;
        }
        av_packet_unref(e->pkt);
    }
}

/* The first keyframe packet from here into e->pkt: what precedes it after a
 * seek cannot be decoded. RETREAT when a seek (not to the start) landed too
 * late: the keyframe is after e->target, or none follows. Seeks by time are
 * only approximate in some formats (MPEG-TS searches timestamps, not
 * keyframes). */
static int read_key_packet(struct engine *e)
{
    int ret;

    for (;;) {
        ret = read_video_packet(e);
        if (ret == AVERROR_EOF && e->seek_ts != INT64_MIN)
            return RETREAT;
        if (ret < 0)
            return ret;
        if (e->pkt->flags & AV_PKT_FLAG_KEY)
            break;
        av_packet_unref(e->pkt);
    }
    int64_t t = packet_ts(e->pkt);
    if (t != AV_NOPTS_VALUE && t > e->target && e->seek_ts != INT64_MIN) {
        av_packet_unref(e->pkt);
        return RETREAT;
    }
    return 0;
}

/* The animation: whether the frame at pts may be the one a tick shows (the
 * latest at or before it), i.e. a tick lies in [pts, next frame). The next
 * frame is taken 1.5 frames on, so that a frame rate a little off its
 * estimate still decodes every frame that may be shown; a wrong answer only
 * shows the frame before. */
static int shown_at_tick(const struct engine *e, int64_t pts)
{
    if (!(e->tick_step > 0) || pts < e->tick0)
        return 1;
    double k = ceil((double)(pts - e->tick0) / e->tick_step - 1e-9);
    return (double)e->tick0 + k * e->tick_step < (double)pts + 1.5 * (double)e->frame_dur;
}

/* The next decoded frame into e->frame: 0, AVERROR_EOF once the decoder is
 * drained, RETREAT, or a fatal AVERROR. */
static int next_frame(struct engine *e)
{
    for (;;) {
        int ret = avcodec_receive_frame(e->dec, e->frame);
        if (ret >= 0) {
            e->frames++;
            e->errors_in_row = 0;
            int64_t t = frame_pts(e, e->frame);
            e->last_out_pts = t;
            e->frame->pts = t; /* from here on, pts is the one we use */
            if (e->check_key) {
                e->check_key = 0;
                if (!e->frame->key_frame && e->frame->pict_type != AV_PICTURE_TYPE_I) {
                    tn_log_debug("the frame at a keyframe packet is no keyframe: decoding from "
                                 "the start");
                    av_frame_unref(e->frame);
                    return BAD_KEY;
                }
            }
            return 0;
        }
        if (ret == AVERROR_EOF)
            return AVERROR_EOF;
        if (ret != AVERROR(EAGAIN)) {
            if (decode_error(e, ret))
                return ret;
            continue;
        }
        if (e->drained) /* a draining decoder ends with EOF; be safe */
            return AVERROR_EOF;
        if (e->need_key) {
            ret = read_key_packet(e);
            if (ret == 0)
                e->need_key = 0;
        } else {
            ret = read_video_packet(e);
        }
        if (ret == AVERROR_EOF) {
            e->drained = 1;
            avcodec_send_packet(e->dec, NULL);
            continue;
        }
        if (ret != 0)
            return ret;
        e->dec->skip_frame = e->pkt->pts != AV_NOPTS_VALUE &&
                                     (e->pkt->pts < e->skip_until || !shown_at_tick(e, e->pkt->pts))
                                 ? AVDISCARD_NONREF
                                 : AVDISCARD_DEFAULT;
        ret = avcodec_send_packet(e->dec, e->pkt);
        av_packet_unref(e->pkt);
        if (ret < 0 && ret != AVERROR(EAGAIN) && decode_error(e, ret))
            return ret;
    }
}

/* Seek to the keyframe at or before ts and reset the decoder. A file that
 * cannot seek is decoded from the start: reopened if it is not still there,
 * and never asked to seek again (e->seek_broken). */
int seek_to(struct engine *e, int64_t ts)
{
    int from_start = ts <= e->start_pts;
    int code, ret;

    if (e->seek_broken) {
        ret = AVERROR(ENOSYS); /* it failed once: don't search the file again */
    } else if (from_start) {
        /* A second early first: some demuxers (MPEG-TS) seek by dts, and the
         * first keyframe's dts is before the start pts. Those that refuse a
         * time before the start get the start itself. */
        int64_t early = e->start_pts - av_rescale_q(1, (AVRational){1, 1}, e->st->time_base);
        ret = av_seek_frame(e->fmt, e->si, early, AVSEEK_FLAG_BACKWARD);
        if (ret < 0 && !e->io.stop)
            ret = av_seek_frame(e->fmt, e->si, e->start_pts, AVSEEK_FLAG_BACKWARD);
    } else {
        ret = av_seek_frame(e->fmt, e->si, ts, AVSEEK_FLAG_BACKWARD);
    }
    tn_log_debug("seek to %" PRId64 "%s: %s", ts, from_start ? " (the start)" : "",
                 ret < 0 ? av_err2str(ret) : "ok");
    if (ret < 0) {
        if (e->io.stop)
            return fail_av(e, e->io.stop, ret, "");
        tn_log_debug("seek failed (%s), decoding from the start", av_err2str(ret));
        /* even a failed seek may have read the file (generic seeking
         * searches it for keyframes): start over for certain */
        e->seek_broken = 1;
        if ((code = reopen(e)) != TN_OK)
            return code;
        from_start = 1;
    } else {
        e->fresh = 0;
    }
    avcodec_flush_buffers(e->dec);
    e->drained = 0;
    e->positioned = 1;
    e->seek_ts = from_start ? INT64_MIN : ts;
    e->need_key = !from_start;
    e->check_key = !from_start;
    e->last_pkt_ts = AV_NOPTS_VALUE;
    e->last_out_pts = AV_NOPTS_VALUE;
    av_frame_unref(e->prev);
    e->have_prev = 0;
    return TN_OK;
}

/* The seek landed after the target: 1, 2, 4, 8 s further back, then from
 * the start. */
static int retreat(struct engine *e, int *tries)
{
    int64_t ts = e->start_pts;

    if (*tries < MAX_SEEK_BACKOFFS) {
        int64_t back = av_rescale_q(INT64_C(1) << *tries, (AVRational){1, 1}, e->st->time_base);
        if (e->target - back > e->start_pts)
            ts = e->target - back;
    }
    (*tries)++;
    tn_log_debug("seek landed after %" PRId64 ", seeking to %" PRId64, e->target, ts);
    return seek_to(e, ts);
}

/* Can the decoder go on from where it is to target, rather than seek? Only
 * if no keyframe lies between (an index tells); otherwise a seek is cheaper.
 * A wrong answer only costs time. */
static int can_continue(struct engine *e, int64_t target)
{
    if (!e->positioned || e->drained)
        return 0;
    if (e->last_out_pts != AV_NOPTS_VALUE && e->last_out_pts >= target)
        return 0;
    if (e->seek_broken) /* a "seek" would decode from the start again */
        return 1;
    if (avformat_index_get_entries_count(e->st) <= 0)
        return e->fresh && target <= e->start_pts;
    int idx = av_index_search_timestamp(e->st, target, AVSEEK_FLAG_BACKWARD);
    if (idx < 0) /* before the first keyframe */
        return e->fresh;
    int64_t kf = avformat_index_get_entry(e->st, idx)->timestamp;
    if (e->fresh) /* at the start: fine if that keyframe is the first one */
        return av_index_search_timestamp(e->st, kf - 1, AVSEEK_FLAG_BACKWARD) < 0;
    return e->last_pkt_ts != AV_NOPTS_VALUE && kf <= e->last_pkt_ts;
}

/* The frame after the current one, for a caller that only decodes forward
 * from where serve_accurate() left the decoder (the animation): 0 with it in
 * e->frame, AVERROR_EOF at the end of the stream (or when the decoder is not
 * positioned), or the AVERROR that stopped decoding. */
int decode_forward(struct engine *e)
{
    if (!e->positioned)
        return AVERROR_EOF;
    int ret = next_frame(e);
    if (ret == RETREAT || ret == BAD_KEY) /* only after a seek, which this never does */
        ret = AVERROR_INVALIDDATA;
    if (ret < 0)
        e->positioned = 0;
    if (ret == 0 && io_check(&e->io, 0))
        ret = AVERROR_EXIT;
    return ret;
}

/* ---- the strategies ------------------------------------------------------ */

static void keep_as_cur(struct engine *e, AVFrame *f, int exact, int clamped)
{
    av_frame_unref(e->cur);
    av_frame_move_ref(e->cur, f);
    e->have_cur = 1;
    e->cur_pts = e->cur->pts;
    e->cur_exact = exact;
    e->cur_clamped = clamped;
}

/* ACCURATE: the first frame with pts >= target into e->cur; the last frame
 * if the stream ends first. */
int serve_accurate(struct engine *e, int64_t target)
{
    int tries = 0, from_start = 0, code = TN_OK, ret;

    /* Points are sorted: the previous answer still holds if it is at or
     * after this target, or if it was the last frame of the stream. */
    if (e->have_cur && e->cur_exact && (e->cur_pts >= target || e->cur_clamped)) {
        e->fallback = e->cur_clamped ? e->cur_fallback : FB_NONE;
        return TN_OK;
    }

    e->target = target;
    if (can_continue(e, target)) {
        if (e->have_cur && e->cur_exact) { /* the latest frame before target */
            av_frame_unref(e->prev);
            av_frame_move_ref(e->prev, e->cur);
            e->have_prev = 1;
        }
    } else if ((code = seek_to(e, target)) != TN_OK) {
        return code;
    }
    e->have_cur = 0;

    /* Non-reference frames before the target are not needed, except near
     * the end, where one of them may be the last frame. */
    e->skip_until = INT64_MIN;
    if (e->can_skip_nonref) {
        int64_t until = target - e->nonref_margin;
        if (e->end_pts != AV_NOPTS_VALUE)
            until =
                FFMIN(until, e->end_pts - e->nonref_margin - NONREF_MARGIN_FRAMES * e->frame_dur);
        e->skip_until = until;
    }

    for (;;) {
        ret = next_frame(e);
        if (ret == RETREAT) {
            if ((code = retreat(e, &tries)) != TN_OK)
                return code;
            continue;
        }
        if (ret == BAD_KEY) {
            e->seek_broken = 1;
            if ((code = seek_to(e, e->start_pts)) != TN_OK)
                return code;
            continue;
        }
        if (ret == AVERROR_EOF) {
            e->positioned = 0;
            if (e->have_prev) {
                e->have_prev = 0;
                keep_as_cur(e, e->prev, 1, 1);
                e->fallback = e->cur_fallback = FB_LAST;
                return TN_OK;
            }
            if (!from_start && e->seek_ts != INT64_MIN) {
                /* nothing decodable after the seek point: take the last frame
                 * of the whole stream */
                from_start = 1;
                if ((code = seek_to(e, e->start_pts)) != TN_OK)
                    return code;
                continue;
            }
            if (e->last_decode_error)
                return fail_av(e, TN_INVALID_ARGUMENT, e->last_decode_error,
                               "no frame of the video could be decoded");
            return fail(e, TN_INVALID_ARGUMENT, "the video stream has no decodable frame");
        }
        if (ret < 0 && e->have_prev && !e->io.stop && ret != AVERROR(ENOMEM)) {
            /* damaged from here on: what was decoded before is the picture */
            tn_log_debug("decoding stopped (%s): the last good frame", av_err2str(ret));
            e->positioned = 0;
            e->have_prev = 0;
            keep_as_cur(e, e->prev, 1, 1);
            e->fallback = e->cur_fallback = FB_DAMAGED;
            return TN_OK;
        }
        if (ret < 0)
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "decoding failed");
        if (io_check(&e->io, 0))
            return fail_av(e, e->io.stop, AVERROR_EXIT, "");
        if (e->frame->pts >= target) {
            keep_as_cur(e, e->frame, 1, 0);
            return TN_OK;
        }
        av_frame_unref(e->prev);
        av_frame_move_ref(e->prev, e->frame);
        e->have_prev = 1;
    }
}

/* KEYFRAME: decode only the keyframe at or before target. The packet is
 * sent alone and the decoder drained: with skip_frame alone, H.264/HEVC hold
 * the frame until more packets come, and VP9/AV1 ignore skip_frame. */
int serve_keyframe(struct engine *e, int64_t target)
{
    int tries = 0, code, ret;

    e->target = target;
    e->skip_until = INT64_MIN;
    if (!(e->fresh && can_continue(e, target)) && (code = seek_to(e, target)) != TN_OK)
        return code;
    for (;;) {
        ret = read_key_packet(e);
        if (ret == RETREAT) {
            if ((code = retreat(e, &tries)) != TN_OK)
                return code;
            continue;
        }
        if (ret == AVERROR_EOF)
            break; /* no keyframe at all from the start: decode normally */
        if (ret < 0)
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "reading the video failed");
        int64_t t = packet_ts(e->pkt);
        e->positioned = 0; /* the next point seeks (and flushes) */
        if (e->have_cur && !e->cur_exact && t != AV_NOPTS_VALUE && t == e->cur_key) {
            av_packet_unref(e->pkt); /* same keyframe as the previous point */
            return TN_OK;
        }
        e->dec->skip_frame = AVDISCARD_DEFAULT;
        ret = avcodec_send_packet(e->dec, e->pkt);
        av_packet_unref(e->pkt);
        if (ret < 0 && decode_error(e, ret))
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "decoding the keyframe failed");
        e->drained = 1;
        avcodec_send_packet(e->dec, NULL);
        e->key_ts = t;
        e->check_key = 1;
        ret = next_frame(e);
        e->key_ts = AV_NOPTS_VALUE;
        e->check_key = 0;
        if (ret == BAD_KEY) {
            e->seek_broken = 1;
            break;
        }
        if (ret == 0) {
            keep_as_cur(e, e->frame, 0, 0);
            e->cur_key = t;
            return TN_OK;
        }
        if (ret != AVERROR_EOF)
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "decoding the keyframe failed");
        break; /* the keyframe alone gave nothing (e.g. a recovery point) */
    }
    tn_log_debug("no keyframe decoded alone at %" PRId64 ", decoding accurately", target);
    e->have_cur = 0;
    e->positioned = 0;
    code = serve_accurate(e, target);
    e->cur_exact = 0;
    e->cur_key = AV_NOPTS_VALUE;
    return code;
}

/* SMART: a small rendering of e->cur, judged (smart.h). */
static int judge(struct engine *e, struct tn_smart_stats *st)
{
    uint8_t small[SMART_SIDE * SMART_SIDE * 3 + 64];
    char cerr[128];
    unsigned did;

    if (!e->analyse && !(e->analyse = tn_colour_new()))
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "smart mode");
    if (tn_colour_to_rgb(e->analyse, e->cur, SMART_SIDE, SMART_SIDE, small, SMART_SIDE * 3, &did,
                         cerr, sizeof(cerr)) < 0)
        return fail(e, TN_INVALID_ARGUMENT, "smart mode: %s", cerr);
    tn_smart_analyse(small, SMART_SIDE, SMART_SIDE, SMART_SIDE * 3, st);
    return TN_OK;
}

/* The keyframe at or before ts per the index, AV_NOPTS_VALUE if unknown. */
static int64_t indexed_key(const struct engine *e, int64_t ts)
{
    if (avformat_index_get_entries_count(e->st) <= 0)
        return AV_NOPTS_VALUE;
    int idx = av_index_search_timestamp(e->st, ts, AVSEEK_FLAG_BACKWARD);
    return idx < 0 ? AV_NOPTS_VALUE : avformat_index_get_entry(e->st, idx)->timestamp;
}

/* SMART: keyframes at target + 0, 1, 2, 3, 4 steps (a step is 1/20 of the
 * video, at least 1 s), each decoded alone; if all of those are black or
 * blank, further ones at growing distances until one is not (at most
 * SMART_MAX decoded). The chosen frame ends in e->cur, the reason in
 * e->pick. Only the SMART_NEAR candidates' frames are kept. */
int serve_smart(struct engine *e, int64_t target)
{
    AVFrame *keep[SMART_NEAR] = {0};
    int64_t keep_pts[SMART_NEAR], keep_key[SMART_NEAR], seen[SMART_MAX];
    struct tn_smart_stats st[SMART_MAX];
    size_t n = 0, n_seen = 0;
    int code = TN_OK, picked = -1;
    double step_s = e->duration > 0 ? fmax(1.0, e->duration / 20) : 2.0;
    int64_t step = av_rescale_q(llrint(step_s * AV_TIME_BASE), AV_TIME_BASE_Q, e->st->time_base);
    double off = 0;

    for (int k = 0; k < 64 && n < SMART_MAX; k++) {
        if (k > 0) /* 1, 2, 3, 4, then x1.5 each */
            off = k < SMART_NEAR ? k : off * 1.5;
        int64_t t = target + (int64_t)(off * (double)step);
        if (k > 0 && e->end_pts != AV_NOPTS_VALUE && t >= e->end_pts)
            break;
        int64_t kf = indexed_key(e, t), dup = 0;
        for (size_t i = 0; i < n_seen && kf != AV_NOPTS_VALUE; i++)
            dup |= seen[i] == kf;
        if (dup)
            continue;
        e->have_cur = 0; /* the previous candidate was moved out */
        if ((code = serve_keyframe(e, t)) != TN_OK)
            goto out;
        int64_t key = e->cur_key != AV_NOPTS_VALUE ? e->cur_key : e->cur_pts;
        for (size_t i = 0; i < n_seen; i++)
            dup |= seen[i] == key;
        if (dup)
            continue;
        seen[n_seen++] = key;
        if ((code = judge(e, &st[n])) != TN_OK)
            goto out;
        tn_log_debug("smart: candidate at %" PRId64 ": mean %.1f, stddev %.1f -> %s", e->cur_pts,
                     st[n].mean, st[n].stddev,
                     st[n].verdict == TN_SMART_OK      ? "ok"
                     : st[n].verdict == TN_SMART_BLACK ? "black"
                                                       : "blank");
        if (n < SMART_NEAR) {
            if (!(keep[n] = av_frame_alloc())) {
                code = fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "smart mode");
                goto out;
            }
            av_frame_move_ref(keep[n], e->cur);
            keep_pts[n] = e->cur_pts;
            keep_key[n] = key;
            n++;
        } else {
            n++;
            if (st[n - 1].verdict == TN_SMART_OK) { /* the first good one out here */
                picked = (int)n - 1;
                e->have_cur = 1;
                break;
            }
        }
        /* enough when the near ones are done and one of them was good */
        if (n >= SMART_NEAR && tn_smart_pick(st, n) >= 0)
            break;
        if (k + 1 >= SMART_NEAR && n < SMART_NEAR && tn_smart_pick(st, n) >= 0)
            break;
    }
    if (picked < 0) {
        picked = tn_smart_pick(st, n < SMART_NEAR ? n : SMART_NEAR);
        int use = picked >= 0 ? picked : 0; /* none good: the requested time's */
        if (n == 0) {
            code = fail(e, TN_INVALID_ARGUMENT, "the video stream has no decodable frame");
            goto out;
        }
        av_frame_unref(e->cur);
        av_frame_move_ref(e->cur, keep[use]);
        e->cur_pts = keep_pts[use];
        e->cur_key = keep_key[use];
        e->have_cur = 1;
        e->cur_exact = 0;
    }
    tn_smart_reason(st, n, picked, e->pick, sizeof(e->pick));
out:
    for (size_t i = 0; i < SMART_NEAR; i++)
        av_frame_free(&keep[i]);
    return code;
}

/* No time named: the frame at the default time (exact, or its keyframe in
 * KEYFRAME mode) unless it is black or blank (a fade-in, a title card); then
 * SMART's choice among the keyframes from there on. */
int serve_default(struct engine *e, const struct point *p)
{
    struct tn_smart_stats st;
    char why[REASON_MAX];
    int code = e->req->opts.mode == TN_MODE_KEYFRAME ? serve_keyframe(e, p->target)
                                                     : serve_accurate(e, p->target);

    if (code != TN_OK || (code = judge(e, &st)) != TN_OK)
        return code;
    if (st.verdict == TN_SMART_OK) {
        snprintf(e->pick, sizeof(e->pick), "no time requested: %g %%",
                 e->req->opts.times[p->index].value);
        return TN_OK;
    }
    snprintf(why, sizeof(why), "no time requested: the frame at %g %% is %s",
             e->req->opts.times[p->index].value, st.verdict == TN_SMART_BLACK ? "black" : "blank");
    e->fallback = FB_NONE; /* a later frame is used */
    if ((code = serve_smart(e, p->target)) != TN_OK)
        return code;
    size_t n = strlen(why), m = strlen(e->pick);
    if (m && n + 2 < sizeof(why)) { /* "<why>; <smart's reason>", cut to fit */
        memcpy(why + n, "; ", 2);
        n += 2;
        m = m < sizeof(why) - 1 - n ? m : sizeof(why) - 1 - n;
        memcpy(why + n, e->pick, m);
        why[n + m] = '\0';
    }
    memcpy(e->pick, why, sizeof(why));
    return TN_OK;
}

/* The request's mode for one target, as a storyboard tile is served (no
 * default-time or cover-art choice). */
int serve(struct engine *e, int64_t target)
{
    switch (e->req->opts.mode) {
    case TN_MODE_KEYFRAME: return serve_keyframe(e, target);
    case TN_MODE_SMART: return serve_smart(e, target);
    default: return serve_accurate(e, target);
    }
}

/* ---- cover art ------------------------------------------------------------ */

/* The attached picture (cover art) decoded into e->cur; e->img_st is its
 * stream. 1 if there is one, 0 if not (or it cannot be decoded: then the
 * video is used, and the log says why), else a failure code (negative). */
int cover_art(struct engine *e)
{
    AVCodecContext *dec = NULL;
    int found = 0, ret;

    for (unsigned i = 0; i < e->fmt->nb_streams && !found; i++) {
        const AVStream *cs = e->fmt->streams[i];
        if (!(cs->disposition & AV_DISPOSITION_ATTACHED_PIC) || cs->attached_pic.size <= 0)
            continue;
        const AVCodec *codec = avcodec_find_decoder(cs->codecpar->codec_id);
        if (!codec || !(dec = avcodec_alloc_context3(codec)) ||
            avcodec_parameters_to_context(dec, cs->codecpar) < 0) {
            avcodec_free_context(&dec);
            continue;
        }
        if (e->req->limits && e->req->limits->max_pixels)
            dec->max_pixels = (int64_t)e->req->limits->max_pixels;
        dec->thread_count = 1;
        if ((ret = avcodec_open2(dec, codec, NULL)) >= 0 &&
            (ret = avcodec_send_packet(dec, &cs->attached_pic)) >= 0 &&
            (ret = avcodec_send_packet(dec, NULL)) >= 0 &&
            (ret = avcodec_receive_frame(dec, e->frame)) >= 0) {
            av_frame_unref(e->cur);
            av_frame_move_ref(e->cur, e->frame);
            e->img_st = cs;
            found = 1;
        } else {
            tn_log_info("cover art in stream %u cannot be decoded (%s): using the video", i,
                        av_err2str(ret));
        }
        avcodec_free_context(&dec);
    }
    return found;
}
