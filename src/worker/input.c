/*
 * The engine's input: the video fd read through a custom AVIOContext (pread,
 * or the pull reader), with the deadline and the cancel fd checked in every
 * read; the container recognised by content and held to a whitelist; the
 * demuxer opened with probing capped; the video stream chosen and its decoder
 * opened; the start, duration and frame rate; the points to serve. Also the
 * way back to the start when the file cannot seek (reopen()).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>

#include "engine_int.h"
#include "log.h"
#include "status.h"

#define IO_BUFFER_SIZE (64 * 1024)
#define CANCEL_POLL_EVERY 8 /* reads between two polls of the cancel fd */
#define DEFAULT_PROBESIZE (5 * 1000 * 1000)
#define DEFAULT_ANALYZEDURATION_US (5 * 1000 * 1000)
#define FORMAT_PROBESIZE (1 << 20) /* bytes looked at to recognise the container */
/* Decoder threads. Workers are the parallelism: 2 frame threads in ACCURATE
 * mode measured no faster on a busy 2-core host and cost ~10 % more CPU. */
#define DECODER_THREADS 1

/* Real video containers only. No playlists (hls, dash, concat), no image
 * sequences (image2): those name other files. Matched against the demuxer's
 * name list, so "mov" covers mp4/m4a/3gp/3g2/mj2 and "matroska" webm. */
static const char format_whitelist[] = "mov,matroska,avi,flv,mpegts,mpeg,mpegvideo,ogg,asf,mxf,"
                                       "nut,ivf,gif,h264,hevc,m4v,obu,dv,yuv4mpegpipe";
/* Demuxers whose packet pts is the frame's presentation time (not a guess). */
static const char real_pts_formats[] = "mov,matroska,mpegts,mpeg,flv,nut";
/* Recognised, but audio only: say so instead of "not accepted". */
static const char audio_formats[] = "mp3,wav,flac,aac,w64,aiff,ape,amr,ac3,eac3,dts,truehd,mlp,"
                                    "tta,wv,caf,au,mpc,tak,loas,latm,spdif";

/* ---- input: pread on the fd, deadline and cancel checks --------------- */

/* The front closes its end of the reply socket to abandon the job. */
static int peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0;
    if (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))
        return 1;
    if (p.revents & POLLIN) {
        char c;
        return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
    }
    return 0;
}

/* 0 = go on, else the stop code. The clock is read every time (vDSO); the
 * cancel fd is polled every CANCEL_POLL_EVERY calls, or now if force. */
int io_check(struct io *io, int force)
{
    if (io->stop)
        return io->stop;
    if (io->deadline_ms > 0 && tn_mono_ms() >= io->deadline_ms)
        io->stop = TN_DEADLINE_EXCEEDED;
    else if (io->cancel_fd >= 0 && (force || io->calls++ % CANCEL_POLL_EVERY == 0) &&
             peer_gone(io->cancel_fd))
        io->stop = TN_CANCELLED;
    return io->stop;
}

static int io_read(void *opaque, uint8_t *buf, int len)
{
    struct io *io = opaque;

    if (io_check(io, 0))
        return AVERROR_EXIT;
    if (io->pos >= io->size)
        return AVERROR_EOF;
    if (len > io->size - io->pos)
        len = (int)(io->size - io->pos);
    if (io->read) {
        int n = io->read(io->read_opaque, buf, len, io->pos);
        if (n > 0) {
            io->pos += n;
            return n > len ? AVERROR(EIO) : n;
        }
        if (n == 0)
            return AVERROR_EOF;
        io->stop = -n;
        return AVERROR_EXIT;
    }
    for (;;) {
        ssize_t n = pread(io->fd, buf, (size_t)len, io->pos);
        if (n > 0) {
            io->pos += n;
            return (int)n;
        }
        if (n == 0)
            return AVERROR_EOF;
        if (errno != EINTR)
            return AVERROR(errno);
    }
}

static int64_t io_seek(void *opaque, int64_t offset, int whence)
{
    struct io *io = opaque;
    int64_t pos;

    switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE: return io->size;
    case SEEK_SET: pos = offset; break;
    case SEEK_CUR: pos = io->pos + offset; break;
    case SEEK_END: pos = io->size + offset; break;
    default: return AVERROR(EINVAL);
    }
    if (pos < 0)
        return AVERROR(EINVAL);
    io->pos = pos;
    return pos;
}

/* Demuxers open other files through this (playlists, mov drefs): never. */
static int refuse_io_open(struct AVFormatContext *s, AVIOContext **pb, const char *url, int flags,
                          AVDictionary **options)
{
    (void)s, (void)pb, (void)flags, (void)options;
    tn_log_debug("refused to open \"%s\" named inside the upload", url);
    return AVERROR(EPERM);
}

/* ---- opening ---------------------------------------------------------- */

/* The video stream to use: not a cover picture, has a decoder; default
 * disposition first, then the largest. -1 if none; *undecodable is set to a
 * video stream we have no decoder for. */
int select_stream(AVFormatContext *fmt, int *undecodable)
{
    int best = -1;
    int64_t best_score = -1;

    *undecodable = -1;
    for (unsigned i = 0; i < fmt->nb_streams; i++) {
        const AVStream *st = fmt->streams[i];
        const AVCodecParameters *par = st->codecpar;
        if (par->codec_type != AVMEDIA_TYPE_VIDEO ||
            (st->disposition & AV_DISPOSITION_ATTACHED_PIC))
            continue;
        if (par->codec_id == AV_CODEC_ID_NONE || !avcodec_find_decoder(par->codec_id)) {
            *undecodable = (int)i;
            continue;
        }
        int64_t score = (int64_t)par->width * par->height;
        if (st->disposition & AV_DISPOSITION_DEFAULT)
            score += INT64_C(1) << 40;
        if (score > best_score) {
            best = (int)i;
            best_score = score;
        }
    }
    return best;
}

static int in_list(const char *name, const char *list)
{
    return av_match_list(name, list, ',') > 0;
}

static int open_demuxer(struct engine *e);

int open_input(struct engine *e)
{
    uint8_t *buf = NULL;
    int ret;

    e->fmt = avformat_alloc_context();
    buf = av_malloc(IO_BUFFER_SIZE);
    if (!e->fmt || !buf) {
        av_free(buf);
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "cannot set up the demuxer");
    }
    e->avio = avio_alloc_context(buf, IO_BUFFER_SIZE, 0, &e->io, io_read, NULL, io_seek);
    if (!e->avio) {
        av_free(buf);
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "cannot set up the demuxer");
    }
    e->fmt->pb = e->avio;
    e->fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    e->fmt->io_open = refuse_io_open;

    /* Recognise the container ourselves, to say what was found when it is
     * not one we accept. By content only: the client's file name would let
     * an extension ("x.bin") pick a demuxer for bytes that are no video. */
    ret = av_probe_input_buffer2(e->avio, &e->ifmt, "", e->fmt, 0, FORMAT_PROBESIZE);
    if (ret < 0) {
        if (e->io.stop)
            return fail_av(e, e->io.stop, ret, "");
        if (ret == AVERROR_INVALIDDATA || ret == AVERROR_EOF)
            return fail(e, TN_INVALID_ARGUMENT,
                        "not a video file: no known container format recognised");
        return fail_av(e, TN_INVALID_ARGUMENT, ret, "cannot read the file");
    }
    e->probe_score = ret;
    if (!in_list(e->ifmt->name, format_whitelist)) {
        if (e->probe_score <= AVPROBE_SCORE_RETRY)
            return fail(e, TN_INVALID_ARGUMENT,
                        "not a video file: no known container format recognised");
        if (in_list(e->ifmt->name, audio_formats))
            return fail(e, TN_INVALID_ARGUMENT,
                        "no video stream (audio-only or data file): this is %s audio",
                        e->ifmt->long_name ? e->ifmt->long_name : e->ifmt->name);
        return fail(e, TN_INVALID_ARGUMENT,
                    "format '%s' (%s) is not accepted: upload a video file (playlists, image "
                    "sequences and other formats that refer to other files are refused)",
                    e->ifmt->name, e->ifmt->long_name ? e->ifmt->long_name : "?");
    }

    return open_demuxer(e);
}

/* The demuxer on e->avio, from its current position (the start): e->fmt
 * allocated with our AVIO, e->ifmt recognised. */
static int open_demuxer(struct engine *e)
{
    const struct tn_engine_limits *lim = e->req->limits;
    AVDictionary *opts = NULL;
    int ret;

    av_dict_set(&opts, "format_whitelist", format_whitelist, 0);
    av_dict_set(&opts, "protocol_whitelist", "none", 0);
    av_dict_set_int(&opts, "probesize",
                    lim && lim->probesize > 0 ? lim->probesize : DEFAULT_PROBESIZE, 0);
    av_dict_set_int(&opts, "analyzeduration",
                    lim && lim->analyzeduration_us > 0 ? lim->analyzeduration_us
                                                       : DEFAULT_ANALYZEDURATION_US,
                    0);
    /* An empty url: nothing for a demuxer to resolve other names against. */
    ret = avformat_open_input(&e->fmt, "", e->ifmt, &opts);
    av_dict_free(&opts);
    if (ret < 0) {
        /* avformat_open_input freed the context (not our AVIO) */
        if (e->io.stop)
            return fail_av(e, e->io.stop, ret, "");
        if (ret == AVERROR(ENOMEM))
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "opening the file");
        if (e->probe_score <= AVPROBE_SCORE_RETRY)
            return fail(e, TN_INVALID_ARGUMENT,
                        "not a video file: no known container format recognised");
        char last[AV_LAST_ERROR_MAX + 2];
        av_last_suffix(last, sizeof(last));
        if (!strcmp(e->ifmt->name, "mov,mp4,m4a,3gp,3g2,mj2"))
            return fail(e, TN_INVALID_ARGUMENT,
                        "the MP4/MOV file is truncated or damaged (%s%s); upload the complete file",
                        av_err2str(ret), last);
        return fail(e, TN_INVALID_ARGUMENT, "cannot read the %s file, it is damaged: %s%s",
                    e->ifmt->long_name ? e->ifmt->long_name : e->ifmt->name, av_err2str(ret), last);
    }
    return TN_OK;
}

/* avformat_find_stream_info costs 11-17 ms on MP4/WebM and decodes frames.
 * Geometry comes from the decoded frames anyway, so when the header already
 * names the video stream, its codec, size and duration, skip it. */
int header_is_enough(AVFormatContext *fmt)
{
    int undecodable;
    int si = select_stream(fmt, &undecodable);

    if ((fmt->ctx_flags & AVFMTCTX_NOHEADER) || si < 0)
        return 0;
    const AVStream *st = fmt->streams[si];
    if (st->codecpar->width <= 0 || st->codecpar->height <= 0)
        return 0;
    return fmt->duration > 0 || (st->duration > 0 && st->duration != AV_NOPTS_VALUE);
}

int find_stream_info(struct engine *e)
{
    const struct tn_engine_limits *lim = e->req->limits;
    unsigned n = e->fmt->nb_streams;
    AVDictionary **sopts = NULL;
    int ret;

    if (n > 0) {
        sopts = av_calloc(n, sizeof(*sopts));
        if (!sopts)
            return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "cannot probe the streams");
        for (unsigned i = 0; i < n; i++) {
            /* it opens decoders of its own: they need the pixel cap too */
            if (lim && lim->max_pixels)
                av_dict_set_int(&sopts[i], "max_pixels", (int64_t)lim->max_pixels, 0);
            av_dict_set(&sopts[i], "threads", "1", 0);
        }
    }
    ret = avformat_find_stream_info(e->fmt, sopts);
    for (unsigned i = 0; i < n; i++)
        av_dict_free(&sopts[i]);
    av_freep(&sopts);
    if (ret < 0) {
        if (e->io.stop || ret == AVERROR(ENOMEM))
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "cannot probe the streams");
        /* like the ffmpeg CLI: not fatal, the decoder may still manage */
        tn_log_debug("avformat_find_stream_info: %s", av_err2str(ret));
    }
    return TN_OK;
}

int open_stream(struct engine *e)
{
    const struct tn_engine_limits *lim = e->req->limits;
    int undecodable, ret;

    e->si = select_stream(e->fmt, &undecodable);
    if (e->si < 0) {
        if (e->probe_score <= AVPROBE_SCORE_RETRY)
            return fail(e, TN_INVALID_ARGUMENT,
                        "not a video file: no known container format recognised");
        if (undecodable >= 0) {
            const AVCodecParameters *par = e->fmt->streams[undecodable]->codecpar;
            return fail(e, TN_INVALID_ARGUMENT, "the video codec (%s) is not supported",
                        par->codec_id == AV_CODEC_ID_NONE ? "unknown"
                                                          : avcodec_get_name(par->codec_id));
        }
        return fail(e, TN_INVALID_ARGUMENT, "no video stream (audio-only or data file)");
    }
    for (unsigned i = 0; i < e->fmt->nb_streams; i++)
        if ((int)i != e->si)
            e->fmt->streams[i]->discard = AVDISCARD_ALL;
    e->st = e->fmt->streams[e->si];
    if (e->req->codec_out && e->req->codec_out_len) /* for the worker's metrics */
        snprintf(e->req->codec_out, e->req->codec_out_len, "%s",
                 avcodec_get_name(e->st->codecpar->codec_id));

    const AVCodecParameters *par = e->st->codecpar;
    const AVCodec *codec = avcodec_find_decoder(par->codec_id);
    if (lim && lim->max_pixels && (uint64_t)par->width * (uint64_t)par->height > lim->max_pixels)
        return fail(e, TN_INVALID_ARGUMENT,
                    "the video is %dx%d, more than this server's limit of %" PRIu64 " pixels",
                    par->width, par->height, lim->max_pixels);
    e->dec = avcodec_alloc_context3(codec);
    if (!e->dec)
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "cannot set up the decoder");
    ret = avcodec_parameters_to_context(e->dec, par);
    if (ret < 0)
        return fail_av(e, TN_INTERNAL, ret, "cannot set up the decoder");
    e->dec->pkt_timebase = e->st->time_base;
    if (lim && lim->max_pixels)
        e->dec->max_pixels = (int64_t)lim->max_pixels;
    e->dec->thread_count = DECODER_THREADS;
    e->dec->thread_type = FF_THREAD_FRAME;
    ret = avcodec_open2(e->dec, codec, NULL);
    if (ret < 0) {
        char what[128];
        snprintf(what, sizeof(what), "cannot open the %s decoder", codec->name);
        return fail_av(e, TN_INVALID_ARGUMENT, ret, what);
    }
    return TN_OK;
}

/* ---- timing: start, duration, frame rate; the points ---------------- */

/* Whether skipping non-reference frames leaves every other frame intact. */
static int nonref_skip_is_safe(const AVCodecParameters *par)
{
    switch (par->codec_id) {
    case AV_CODEC_ID_H264: /* nal_ref_idc 0: never referenced */
    case AV_CODEC_ID_MPEG4: /* B-VOPs are never references */ return 1;
    case AV_CODEC_ID_HEVC:
        /* A sub-layer non-reference picture may be referenced by a higher
         * temporal layer: only safe with one layer, read from hvcC (byte
         * 21, bits 5..3). Annex B extradata: don't know, don't skip. */
        return par->extradata_size >= 23 && par->extradata[0] == 1 &&
               ((par->extradata[21] >> 3) & 7) <= 1;
    default: return 0;
    }
}

/* Matroska's per-track DURATION tag ("01:02:03.500000000", mkvmerge and
 * libavformat write it) when the segment has no duration; -1 if none. */
static double tag_duration(const AVStream *st)
{
    const AVDictionaryEntry *t = av_dict_get(st->metadata, "DURATION", NULL, 0);
    int h, m;
    double sec;

    if (!t || sscanf(t->value, "%d:%d:%lf", &h, &m, &sec) != 3 || h < 0 || m < 0 || sec < 0)
        return -1;
    sec += h * 3600.0 + m * 60.0;
    return sec > 0 && isfinite(sec) ? sec : -1;
}

void setup_timing(struct engine *e)
{
    const AVStream *st = e->st;
    AVRational tb = st->time_base;

    /* The video's first frame: find_start()'s answer first (reading packets
     * makes libavformat set a start_time of its own, from the first packet
     * with a pts, not the smallest one when B-frames come first). */
    int64_t video_start = e->first_pts != AV_NOPTS_VALUE     ? e->first_pts
                          : st->start_time != AV_NOPTS_VALUE ? st->start_time
                                                             : 0;
    /* Times count from the file's start, the earliest stream's (ffmpeg -ss
     * and players do): video after an audio lead-in starts later than 0. */
    int64_t file_start = e->file_start;
    if (e->fmt->start_time != AV_NOPTS_VALUE)
        file_start = av_rescale_q(e->fmt->start_time, AV_TIME_BASE_Q, tb);
    if (e->first_pts == AV_NOPTS_VALUE && st->start_time == AV_NOPTS_VALUE &&
        file_start != AV_NOPTS_VALUE)
        video_start = file_start;
    e->start_pts =
        file_start != AV_NOPTS_VALUE && file_start < video_start ? file_start : video_start;

    e->duration = -1;
    if (e->fmt->duration > 0 && e->fmt->duration != AV_NOPTS_VALUE)
        e->duration = e->fmt->duration / (double)AV_TIME_BASE;
    else if (st->duration > 0 && st->duration != AV_NOPTS_VALUE)
        e->duration = st->duration * av_q2d(tb);
    else
        e->duration = tag_duration(st);

    /* the video's own end: the container's may include a longer audio track */
    e->end_pts = AV_NOPTS_VALUE;
    if (st->duration > 0 && st->duration != AV_NOPTS_VALUE)
        e->end_pts = video_start + st->duration;
    else if (e->fmt->duration > 0 && e->fmt->duration != AV_NOPTS_VALUE)
        e->end_pts = e->start_pts + av_rescale_q(e->fmt->duration, AV_TIME_BASE_Q, tb);

    AVRational fr = st->avg_frame_rate;
    if (fr.num <= 0 || fr.den <= 0)
        fr = st->r_frame_rate;
    if (fr.num <= 0 || fr.den <= 0)
        fr = (AVRational){25, 1};
    e->frame_dur = av_rescale_q(1, av_inv_q(fr), tb);
    if (e->frame_dur < 1)
        e->frame_dur = 1;

    e->can_skip_nonref = nonref_skip_is_safe(st->codecpar);
    /* Where pts is the decode-order guess (AVI), a frame's real time may be
     * a few frames off its packet's: keep a margin of decoded frames. */
    e->nonref_margin =
        in_list(e->fmt->iformat->name, real_pts_formats) ? 0 : NONREF_MARGIN_FRAMES * e->frame_dur;
}

static int cmp_point(const void *a, const void *b)
{
    const struct point *p = a, *q = b;
    if (p->seconds != q->seconds)
        return p->seconds < q->seconds ? -1 : 1;
    return p->index < q->index ? -1 : p->index > q->index;
}

static void set_point(struct engine *e, struct point *p, unsigned index, double s)
{
    p->index = index;
    p->seconds = s;
    /* 1e9 s (31 years) keeps the arithmetic in range; it is past any end */
    int64_t us = llrint(fmin(s, 1e9) * AV_TIME_BASE);
    p->target = e->start_pts + av_rescale_q(us, AV_TIME_BASE_Q, e->st->time_base);
}

#define START_PACKETS 32 /* enough for any B-frame reordering */

/* The header names no start time (avformat_find_stream_info was skipped, it
 * finds it): the first frame's time is the smallest pts of the first packets
 * (B-frames come before their references in decode order), e.g. 0.2 s in a
 * fragmented MP4 with B-frames and no edit list. Times count from there, as
 * in the ffmpeg CLI and in players. Demuxing only; then back to the start. */
int find_start(struct engine *e)
{
    int64_t vmin = AV_NOPTS_VALUE, fmin = AV_NOPTS_VALUE; /* video tb; AV_TIME_BASE */
    int vpackets = 0, ret = 0;

    /* the other audio/video streams count too: the file's timeline starts at
     * the earliest of them (video after an audio lead-in starts later) */
    for (unsigned i = 0; i < e->fmt->nb_streams; i++) {
        enum AVMediaType type = e->fmt->streams[i]->codecpar->codec_type;
        if (type == AVMEDIA_TYPE_AUDIO || type == AVMEDIA_TYPE_VIDEO)
            e->fmt->streams[i]->discard = AVDISCARD_DEFAULT;
    }
    for (int n = 0; vpackets < START_PACKETS && n < 8 * START_PACKETS; n++) {
        if (io_check(&e->io, 0))
            break;
        if ((ret = av_read_frame(e->fmt, e->pkt)) < 0)
            break;
        const AVStream *ps = e->fmt->streams[e->pkt->stream_index];
        int64_t t = e->pkt->pts;
        if (t != AV_NOPTS_VALUE && !(e->pkt->flags & AV_PKT_FLAG_DISCARD)) {
            int64_t us = av_rescale_q(t, ps->time_base, AV_TIME_BASE_Q);
            if (fmin == AV_NOPTS_VALUE || us < fmin)
                fmin = us;
            if (e->pkt->stream_index == e->si && (vmin == AV_NOPTS_VALUE || t < vmin))
                vmin = t;
        }
        vpackets += e->pkt->stream_index == e->si;
        av_packet_unref(e->pkt);
    }
    for (unsigned i = 0; i < e->fmt->nb_streams; i++)
        if ((int)i != e->si)
            e->fmt->streams[i]->discard = AVDISCARD_ALL;
    e->fresh = 0;
    if (e->io.stop)
        return check_stop(e);
    if (ret == AVERROR(ENOMEM))
        return fail_av(e, TN_INVALID_ARGUMENT, ret, "reading the video");
    e->first_pts = vmin;
    if (fmin != AV_NOPTS_VALUE)
        e->file_start = av_rescale_q(fmin, AV_TIME_BASE_Q, e->st->time_base);
    e->start_pts = vmin != AV_NOPTS_VALUE ? vmin : 0;
    if (e->file_start != AV_NOPTS_VALUE && e->file_start < e->start_pts)
        e->start_pts = e->file_start;
    return seek_to(e, e->start_pts);
}

/* Whether resolving the request needs the video's duration. */
int needs_duration(const struct tn_engine_request *req)
{
    if (req->opts.animation)
        return req->opts.anim_start.kind == TN_TIME_PERCENT ||
               req->opts.anim_end.kind == TN_TIME_PERCENT;
    if (req->opts.count || req->opts.every > 0 || req->opts.storyboard)
        return 1;
    for (size_t i = 0; i < req->opts.n_times; i++)
        if (req->opts.times[i].kind != TN_TIME_SECONDS)
            return 1;
    return 0;
}

/* No duration in the header (a Matroska or FLV file written to a pipe, a
 * cut MPEG stream...): read the video's packets to the end, the way players
 * find it, and take the end of the last one. Demuxing only, no decoding;
 * then start over from the beginning. */
int scan_duration(struct engine *e)
{
    int64_t end = AV_NOPTS_VALUE;
    int code, ret;

    while ((ret = read_video_packet(e)) == 0) {
        int64_t t = packet_ts(e->pkt);
        if (t != AV_NOPTS_VALUE) {
            t += e->pkt->duration > 0 ? e->pkt->duration : e->frame_dur;
            if (end == AV_NOPTS_VALUE || t > end)
                end = t;
        }
        av_packet_unref(e->pkt);
    }
    if (ret == AVERROR_EXIT)
        return check_stop(e);
    if ((code = reopen(e)) != TN_OK)
        return code;
    e->last_pkt_ts = AV_NOPTS_VALUE;
    if (end != AV_NOPTS_VALUE && end > e->start_pts) {
        e->end_pts = end;
        e->duration = (end - e->start_pts) * av_q2d(e->st->time_base);
        tn_log_info("duration not in the file's header: %.3f s, from the last packet", e->duration);
    }
    return TN_OK;
}

/* The points to serve, sorted by time, into pts (room for TN_STORYBOARD_MAX_TILES):
 * the request's times, or count / every resolved against the duration. */
int resolve_times(struct engine *e, struct point *pts)
{
    const struct tn_engine_request *req = e->req;

    if (req->opts.count || req->opts.every > 0 || req->opts.storyboard) {
        /* the video's own length: the container's may include a longer audio track */
        double dur = e->end_pts != AV_NOPTS_VALUE
                         ? (e->end_pts - e->start_pts) * av_q2d(e->st->time_base)
                         : e->duration;
        if (dur <= 0)
            return fail(e, TN_INVALID_ARGUMENT,
                        "the video's duration is unknown: count and every need it; give times");
        size_t max = req->opts.storyboard ? TN_STORYBOARD_MAX_TILES : TN_JOB_MAX_TIMES;
        double every = req->opts.every;
        if (req->opts.storyboard && !req->opts.count && every <= 0)
            every = fmax(1.0, dur / 100);
        if (req->opts.count) {
            e->n_points = req->opts.count;
            for (unsigned i = 0; i < req->opts.count; i++)
                set_point(e, &pts[i], i, dur * (i + 0.5) / req->opts.count);
        } else {
            /* i * every for every i that leaves at least half a frame of
             * video: a point at the very end would repeat the last frame
             * (a 20 s video every 1 s is 20 tiles, not 21) */
            double half_frame = e->frame_dur * av_q2d(e->st->time_base) / 2;
            double n = fmax(1, ceil((dur - half_frame) / every - 1e-9));
            if (n > (double)max)
                return fail(
                    e, TN_INVALID_ARGUMENT,
                    "every %g s makes %.0f thumbnails of this %.1f s video; at most %zu per "
                    "call: use a longer interval or count",
                    every, n, dur, max);
            e->n_points = (size_t)n;
            for (size_t i = 0; i < e->n_points; i++)
                set_point(e, &pts[i], (unsigned)i, every * (double)i);
        }
        return TN_OK;
    }
    e->n_points = req->opts.n_times;
    for (size_t i = 0; i < req->opts.n_times; i++) {
        const struct tn_time_point *tp = &req->opts.times[i];
        double s = tp->value;
        pts[i].is_default = tp->kind == TN_TIME_DEFAULT;
        if (tp->kind != TN_TIME_SECONDS) {
            if (e->duration < 0) {
                tn_log_info("duration unknown: %g%% taken as the start of the video", tp->value);
                s = 0;
            } else {
                s = e->duration * tp->value / 100.0;
            }
        }
        set_point(e, &pts[i], (unsigned)i, s);
    }
    qsort(pts, req->opts.n_times, sizeof(*pts), cmp_point);
    return TN_OK;
}

/* ---- starting over ---------------------------------------------------- */

/* Start over: a new demuxer from byte 0 on the same AVIO, the same stream,
 * the decoder flushed by the caller. For files the demuxer cannot seek in
 * at all (no index and no keyframe flags, a broken index...): decoding
 * forward from the start is what is left, and it is what the ffmpeg CLI
 * manages on such files too. */
int reopen(struct engine *e)
{
    int code, ret;

    avformat_close_input(&e->fmt);
    e->st = NULL;
    if (!(e->fmt = avformat_alloc_context()))
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "reopening the file");
    e->fmt->pb = e->avio;
    e->fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    e->fmt->io_open = refuse_io_open;
    if ((ret = (int)avio_seek(e->avio, 0, SEEK_SET)) < 0)
        return fail_av(e, TN_INVALID_ARGUMENT, ret, "cannot read the file from the start again");
    if ((code = open_demuxer(e)) != TN_OK ||
        (e->probed_streams && (code = find_stream_info(e)) != TN_OK))
        return code;
    if ((unsigned)e->si >= e->fmt->nb_streams ||
        e->fmt->streams[e->si]->codecpar->codec_id != e->dec->codec_id)
        return fail(e, TN_INVALID_ARGUMENT,
                    "the file cannot seek, and reopened it shows other streams: it is damaged");
    for (unsigned i = 0; i < e->fmt->nb_streams; i++)
        if ((int)i != e->si)
            e->fmt->streams[i]->discard = AVDISCARD_ALL;
    e->st = e->fmt->streams[e->si];
    e->fresh = 1;
    return TN_OK;
}
