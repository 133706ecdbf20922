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
 * All requested times are served from one demuxer and one decoder, in
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
 *
 * Geometry follows the ffmpeg CLI: the stream's display matrix (rotation and
 * flips) and the sample aspect ratio are applied, so the thumbnail looks like
 * the video does in a player. We scale first, to the pre-rotation size, and
 * rotate the small RGB image afterwards.
 */
#include "engine_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>
#include <libavutil/display.h>
#include <libavutil/pixdesc.h>
#include <png.h>
#include <turbojpeg.h>
#include <webp/encode.h>

#include "colour.h"
#include "json.h"
#include "log.h"
#include "probe.h"
#include "smart.h"
#include "status.h"

#define IO_BUFFER_SIZE (64 * 1024)
#define CANCEL_POLL_EVERY 8 /* reads between two polls of the cancel fd */
#define DEFAULT_PROBESIZE (5 * 1000 * 1000)
#define DEFAULT_ANALYZEDURATION_US (5 * 1000 * 1000)
#define FORMAT_PROBESIZE (1 << 20) /* bytes looked at to recognise the container */
#define MAX_DECODE_ERRORS 100      /* corrupt packets in a row before giving up */
#define MAX_SEEK_BACKOFFS 4        /* re-seeks when a seek lands after the target */
/* Decoder threads. Workers are the parallelism: 2 frame threads in ACCURATE
 * mode measured no faster on a busy 2-core host and cost ~10 % more CPU. */
#define DECODER_THREADS 1
#define PNG_LEVEL 1     /* default zlib level: see encode_png() */
#define JPEG_QUALITY 85 /* quality 0 in the request: these, as the proto documents */
#define WEBP_QUALITY 80
#define SMART_NEAR 5  /* SMART: keyframes compared (frames kept) */
#define SMART_MAX 12  /* SMART: keyframes decoded at most, looking past black ones */
#define SMART_SIDE 64 /* SMART: the analysis image, SMART_SIDE x SMART_SIDE */

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

/* ---- libav log -------------------------------------------------------- */

/* The last error libav logged, to complete our messages ("moov atom not
 * found"). Decoder threads log too, hence the lock. */
static pthread_mutex_t av_last_lock = PTHREAD_MUTEX_INITIALIZER;
static char av_last_error[256];

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
static void av_last_suffix(char *buf, size_t len)
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
static int io_check(struct io *io, int force)
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

/* ---- the engine state of one request ---------------------------------- */

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
                    "deadline exceeded after decoding %" PRId64
                    " frames (%zu of %zu thumbnails done)",
                    e->frames, e->done, e->n_points);
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

static int check_stop(struct engine *e)
{
    if (io_check(&e->io, 1))
        return fail_av(e, e->io.stop, AVERROR_EXIT, "stopped");
    return 0;
}

/* ---- opening ---------------------------------------------------------- */

static const char *format_name(int format)
{
    switch (format) {
    case TN_FORMAT_PNG: return "PNG";
    case TN_FORMAT_JPEG: return "JPEG";
    case TN_FORMAT_WEBP: return "WEBP";
    default: return NULL;
    }
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

/* The video stream to use: not a cover picture, has a decoder; default
 * disposition first, then the largest. -1 if none; *undecodable is set to a
 * video stream we have no decoder for. */
static int select_stream(AVFormatContext *fmt, int *undecodable)
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

static int open_input(struct engine *e)
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
        char last[sizeof(av_last_error) + 2];
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
static int header_is_enough(AVFormatContext *fmt)
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

static int find_stream_info(struct engine *e)
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

static int open_stream(struct engine *e)
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

static void setup_timing(struct engine *e)
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

static int reopen(struct engine *e);
static int read_video_packet(struct engine *e);
static int64_t packet_ts(const AVPacket *pkt);

static int seek_to(struct engine *e, int64_t ts);

#define START_PACKETS 32 /* enough for any B-frame reordering */

/* The header names no start time (avformat_find_stream_info was skipped, it
 * finds it): the first frame's time is the smallest pts of the first packets
 * (B-frames come before their references in decode order), e.g. 0.2 s in a
 * fragmented MP4 with B-frames and no edit list. Times count from there, as
 * in the ffmpeg CLI and in players. Demuxing only; then back to the start. */
static int find_start(struct engine *e)
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
static int needs_duration(const struct tn_engine_request *req)
{
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
static int scan_duration(struct engine *e)
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
static int resolve_times(struct engine *e, struct point *pts)
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

/* ---- decoding ----------------------------------------------------------- */

#define RETREAT 1 /* a seek landed after the target: seek further back */
/* The first frame after a seek is no keyframe although its packet was flagged
 * one: the container's key flags are wrong (an AVI without its index flags
 * every packet), so seeking gives broken pictures. Decode from the start. */
#define BAD_KEY 2

/* Start over: a new demuxer from byte 0 on the same AVIO, the same stream,
 * the decoder flushed by the caller. For files the demuxer cannot seek in
 * at all (no index and no keyframe flags, a broken index...): decoding
 * forward from the start is what is left, and it is what the ffmpeg CLI
 * manages on such files too. */
static int reopen(struct engine *e)
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

static int64_t packet_ts(const AVPacket *pkt)
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
static int read_video_packet(struct engine *e)
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
        e->dec->skip_frame = e->pkt->pts != AV_NOPTS_VALUE && e->pkt->pts < e->skip_until
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
static int seek_to(struct engine *e, int64_t ts)
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
static int serve_accurate(struct engine *e, int64_t target)
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
static int serve_keyframe(struct engine *e, int64_t target)
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
static int serve_smart(struct engine *e, int64_t target)
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
static int serve_default(struct engine *e, const struct point *p)
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

/* The attached picture (cover art) decoded into e->cur; e->img_st is its
 * stream. 1 if there is one, 0 if not (or it cannot be decoded: then the
 * video is used, and the log says why), else a failure code (negative). */
static int cover_art(struct engine *e)
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

static void png_write_cb(png_structp png, png_bytep data, size_t len)
{
    struct membuf *mb = png_get_io_ptr(png);
    if (mb->len + len > mb->cap) {
        size_t cap = mb->cap ? mb->cap : 64 * 1024;
        while (cap < mb->len + len)
            cap *= 2;
        uint8_t *p = realloc(mb->data, cap);
        if (!p)
            png_error(png, "out of memory");
        mb->data = p;
        mb->cap = cap;
    }
    memcpy(mb->data + mb->len, data, len);
    mb->len += len;
}

static void png_flush_cb(png_structp png)
{
    (void)png;
}

static void png_error_cb(png_structp png, png_const_charp msg)
{
    snprintf(png_get_error_ptr(png), 128, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg)
{
    (void)png;
    tn_log_debug("libpng: %s", msg);
}

/* Encode w x h RGB24 into mb. No local changes after setjmp, so nothing
 * needs to be volatile. */
static int encode_png(const uint8_t *rgb, int w, int h, size_t stride, int level, struct membuf *mb,
                      char perr[128])
{
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, perr, png_error_cb, png_warning_cb);
    if (!png)
        return -1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    mb->len = 0;
    png_set_write_fn(png, mb, png_write_cb, png_flush_cb);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    /* level 1 (the default) is ~4x faster than 6 for ~20 % more bytes; SUB is
     * the cheap filter */
    png_set_compression_level(png, level);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, rgb + (size_t)y * stride);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

/* A sealed memfd holding buf: the receiver can map it without fearing that
 * it changes or shrinks under it. Returns the fd or -errno. */
static int sealed_memfd(const uint8_t *buf, size_t len)
{
    int fd = memfd_create("thumbnail", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? -errno : -EIO;
            close(fd);
            return err;
        }
        off += (size_t)n;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0 ||
        lseek(fd, 0, SEEK_SET) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Encode w x h RGB24 as baseline JPEG, 4:2:0 chroma (the common choice, as
 * cjpeg's default) into e->out, which is grown to the worst case first so
 * that libjpeg-turbo never reallocates it (NOREALLOC: the buffer is ours,
 * from malloc). ~0.1 ms at 320x180. */
static int encode_jpeg(struct engine *e, const uint8_t *rgb, int w, int h, size_t stride,
                       int quality, char perr[128])
{
    unsigned long bound = tjBufSize(w, h, TJSAMP_420);
    unsigned long len = bound;

    if (bound == (unsigned long)-1) {
        snprintf(perr, 128, "%s", tjGetErrorStr2(NULL));
        return -1;
    }
    if (!e->tj && !(e->tj = tjInitCompress())) {
        snprintf(perr, 128, "%s", tjGetErrorStr2(NULL));
        return -1;
    }
    if (e->out.cap < bound) {
        uint8_t *p = realloc(e->out.data, bound);
        if (!p) {
            snprintf(perr, 128, "out of memory");
            return -1;
        }
        e->out.data = p;
        e->out.cap = bound;
    }
    unsigned char *dst = e->out.data;
    if (tjCompress2(e->tj, rgb, w, (int)stride, h, TJPF_RGB, &dst, &len, TJSAMP_420, quality,
                    TJFLAG_NOREALLOC) < 0) {
        snprintf(perr, 128, "%s", tjGetErrorStr2(e->tj));
        return -1;
    }
    e->out.len = len;
    return 0;
}

static const char *webp_error(enum WebPEncodingError err)
{
    switch (err) {
    case VP8_ENC_ERROR_OUT_OF_MEMORY:
    case VP8_ENC_ERROR_BITSTREAM_OUT_OF_MEMORY: return "out of memory";
    case VP8_ENC_ERROR_BAD_DIMENSION: return "bad dimension";
    case VP8_ENC_ERROR_PARTITION0_OVERFLOW:
    case VP8_ENC_ERROR_PARTITION_OVERFLOW: return "partition overflow";
    default: return "encoder error";
    }
}

/* Encode w x h RGB24 as WebP into *out (WebPMemoryWriter, freed by the
 * caller with WebPMemoryWriterClear). Lossy: quality is the usual 1..100,
 * method 4 (libwebp's default, ~3 ms at 320x180). Lossless: the pixels are
 * exact and quality is the effort, 1..100 mapped to libwebp's presets 0..9,
 * 0 (the default) = preset 0. Effort buys little and costs a lot: at 320x180
 * preset 0 takes ~1 ms for 18.6 KB, preset 6 ~100 ms for 16 KB, preset 9
 * ~500 ms for 15.9 KB (PNG level 1: ~1 ms, 24.9 KB). */
static int encode_webp(const uint8_t *rgb, int w, int h, size_t stride, unsigned quality,
                       int lossless, WebPMemoryWriter *out, char perr[128])
{
    WebPConfig config;
    WebPPicture pic;
    int ok = 0;

    if (!WebPConfigInit(&config) || !WebPPictureInit(&pic)) {
        snprintf(perr, 128, "libwebp version mismatch");
        return -1;
    }
    if (lossless) {
        if (!WebPConfigLosslessPreset(&config, quality ? (int)(quality - 1) / 11 : 0)) {
            snprintf(perr, 128, "invalid lossless preset");
            return -1;
        }
    } else {
        config.quality = (float)(quality ? quality : WEBP_QUALITY);
        config.method = 4;
    }
    if (!WebPValidateConfig(&config)) {
        snprintf(perr, 128, "invalid configuration");
        return -1;
    }
    pic.use_argb = lossless; /* lossless works on ARGB, lossy on YUV: no extra conversion */
    pic.width = w;
    pic.height = h;
    pic.writer = WebPMemoryWrite;
    pic.custom_ptr = out;
    if (!WebPPictureImportRGB(&pic, rgb, (int)stride)) {
        snprintf(perr, 128, "out of memory");
        goto out;
    }
    if (!WebPEncode(&config, &pic)) {
        snprintf(perr, 128, "%s", webp_error(pic.error_code));
        goto out;
    }
    ok = 1;
out:
    WebPPictureFree(&pic);
    return ok ? 0 : -1;
}

/* Encode the image in the requested format and store it in a sealed memfd.
 * Returns the fd and sets *size, or a negative TN code (message in e->err). */
static int encode(struct engine *e, const uint8_t *img, int w, int h, size_t stride, uint64_t *size)
{
    const struct tn_engine_request *req = e->req;
    char perr[128] = "";
    const uint8_t *data = NULL;
    size_t len = 0;
    WebPMemoryWriter webp;
    int fd, rc;

    WebPMemoryWriterInit(&webp);
    switch (req->opts.format) {
    case TN_FORMAT_JPEG:
        rc = encode_jpeg(e, img, w, h, stride,
                         req->opts.quality ? (int)req->opts.quality : JPEG_QUALITY, perr);
        data = e->out.data;
        len = e->out.len;
        break;
    case TN_FORMAT_WEBP:
        if (w > WEBP_MAX_DIMENSION || h > WEBP_MAX_DIMENSION) {
            WebPMemoryWriterClear(&webp);
            return -fail(e, TN_INVALID_ARGUMENT,
                         "the thumbnail would be %dx%d, over WebP's %d a side: give a smaller box "
                         "or use PNG or JPEG",
                         w, h, WEBP_MAX_DIMENSION);
        }
        rc =
            encode_webp(img, w, h, stride, req->opts.quality, req->opts.lossless != 0, &webp, perr);
        data = webp.mem;
        len = webp.size;
        break;
    default:
        rc = encode_png(img, w, h, stride,
                        req->opts.png_level ? (int)req->opts.png_level : PNG_LEVEL, &e->out, perr);
        data = e->out.data;
        len = e->out.len;
        break;
    }
    if (rc < 0) {
        WebPMemoryWriterClear(&webp);
        if (!perr[0] || !strcmp(perr, "out of memory"))
            return -fail(e, TN_INVALID_ARGUMENT,
                         "%s encoding failed: out of memory (the thumbnail is too large for a "
                         "worker's memory; ask for a smaller size)",
                         format_name(req->opts.format));
        return -fail(e, TN_INTERNAL, "%s encoding failed: %s", format_name(req->opts.format), perr);
    }
    fd = sealed_memfd(data, len);
    WebPMemoryWriterClear(&webp);
    if (fd < 0)
        return -fail(e, fd == -ENOMEM || fd == -EMFILE ? TN_RESOURCE_EXHAUSTED : TN_INTERNAL,
                     "cannot store the thumbnail in a memfd: %s", strerror(-fd));
    *size = len;
    return fd;
}

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

/* ---- storyboard --------------------------------------------------------------- */

static int serve(struct engine *e, int64_t target)
{
    switch (e->req->opts.mode) {
    case TN_MODE_KEYFRAME: return serve_keyframe(e, target);
    case TN_MODE_SMART: return serve_smart(e, target);
    default: return serve_accurate(e, target);
    }
}

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
static int run_storyboard(struct engine *e, const struct point *points, tn_engine_emit_fn emit,
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
