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
 * Geometry follows the ffmpeg CLI: the stream's display matrix (rotation and
 * flips) and the sample aspect ratio are applied, so the thumbnail looks like
 * the video does in a player. We scale first, to the pre-rotation size, and
 * rotate the small RGB image afterwards.
 */
#include "engine.h"

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
#include <libswscale/swscale.h>
#include <png.h>
#include <turbojpeg.h>
#include <webp/encode.h>

#include "log.h"
#include "status.h"

#define IO_BUFFER_SIZE (64 * 1024)
#define CANCEL_POLL_EVERY 8 /* reads between two polls of the cancel fd */
#define DEFAULT_PROBESIZE (5 * 1000 * 1000)
#define DEFAULT_ANALYZEDURATION_US (5 * 1000 * 1000)
#define FORMAT_PROBESIZE (1 << 20) /* bytes looked at to recognise the container */
#define MAX_OUTPUT_SIDE 16384
#define MAX_DECODE_ERRORS 100   /* corrupt packets in a row before giving up */
#define MAX_SEEK_BACKOFFS 4     /* re-seeks when a seek lands after the target */
#define NONREF_MARGIN_FRAMES 16 /* H.264's deepest reordering: where pts may be a guess */
/* Decoder threads. Workers are the parallelism: 2 frame threads in ACCURATE
 * mode measured no faster on a busy 2-core host and cost ~10 % more CPU. */
#define DECODER_THREADS 1
#define PNG_LEVEL 1     /* default zlib level: see encode_png() */
#define JPEG_QUALITY 85 /* quality 0 in the request: these, as the proto documents */
#define WEBP_QUALITY 80

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

static void av_log_cb(void *avcl, int level, const char *fmt, va_list vl)
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
}

/* ---- input: pread on the fd, deadline and cancel checks --------------- */

struct io {
    int fd;
    int64_t size;
    int64_t pos;
    int64_t deadline_ms;
    int cancel_fd;
    unsigned calls;
    int stop; /* sticky: TN_DEADLINE_EXCEEDED or TN_CANCELLED once seen */
};

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

struct point {
    unsigned index; /* into req->times */
    double seconds; /* resolved, from the start of the video */
    int64_t target; /* in stream time base, start included */
};

struct membuf {
    uint8_t *data;
    size_t len, cap;
};

struct engine {
    const struct tn_engine_request *req;
    char *err;
    size_t errlen;

    struct io io;
    AVIOContext *avio;
    AVFormatContext *fmt;
    const AVInputFormat *ifmt;
    int probe_score;
    AVStream *st;
    int si;
    AVCodecContext *dec;
    AVPacket *pkt;
    AVFrame *frame; /* receive_frame scratch */
    AVFrame *prev;  /* latest frame before the target: used if the stream ends first */
    AVFrame *cur;   /* the frame chosen for the current point */
    struct SwsContext *sws;

    int64_t start_pts; /* stream time base */
    int64_t end_pts;   /* start + video duration; AV_NOPTS_VALUE if unknown */
    double duration;   /* seconds, for percent points; < 0 if unknown */
    int64_t frame_dur; /* one frame, stream time base (estimated) */
    int64_t nonref_margin;
    int can_skip_nonref;

    /* decoder position */
    int fresh;       /* nothing read since open: at the start of the stream */
    int positioned;  /* decoder holds state that decoding can continue from */
    int drained;     /* sent the NULL packet: needs a seek (flush) to go on */
    int64_t seek_ts; /* what the last seek asked for; INT64_MIN = the start */
    int64_t last_pkt_ts;
    int64_t last_out_pts;
    int64_t skip_until; /* non-reference frames with pkt pts below are not decoded */
    int64_t key_ts;     /* KEYFRAME: the packet's time, for a frame that has none */
    int64_t cur_key;    /* KEYFRAME: the packet time of e->cur */
    int64_t target;     /* of the point being served */
    int need_key;       /* after a seek: drop packets up to a keyframe */
    int have_prev, have_cur, cur_exact, cur_clamped;
    int64_t cur_pts;

    int64_t frames; /* decoded, for messages */
    int errors_in_row;
    int last_decode_error;
    size_t done; /* thumbnails emitted */

    uint8_t *rgb, *rot; /* scaled image, rotated image */
    size_t rgb_cap, rot_cap;
    struct membuf out; /* the encoded image (PNG and JPEG; WebP has its own writer) */
    tjhandle tj;       /* JPEG compressor, made on first use */
};

static int fail(struct engine *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct engine *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* A failed libav call: the stop code if a read stopped it, else code with
 * "<what>: <libav error>[: <what libav logged>]". */
static int fail_av(struct engine *e, int code, int averr, const char *what)
{
    char last[sizeof(av_last_error) + 2];

    if (e->io.stop)
        code = e->io.stop;
    if (code == TN_DEADLINE_EXCEEDED)
        return fail(e, code,
                    "deadline exceeded after decoding %" PRId64
                    " frames (%zu of %zu thumbnails done)",
                    e->frames, e->done, e->req->n_times);
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
    const char *name = format_name(req->format);

    if (!name)
        return fail(e, TN_INVALID_ARGUMENT, "unknown output format %d; use PNG, JPEG or WEBP",
                    req->format);
    if (req->quality > 100)
        return fail(e, TN_INVALID_ARGUMENT, "quality %u is out of range: use 1..100 (0 = default)",
                    req->quality);
    if (req->png_level > 9)
        return fail(e, TN_INVALID_ARGUMENT,
                    "PNG compression level %u is out of range: use 1..9 (0 = default)",
                    req->png_level);
    if (req->mode != TN_MODE_ACCURATE && req->mode != TN_MODE_KEYFRAME)
        return fail(e, TN_INVALID_ARGUMENT, "unknown seek mode %d; use ACCURATE or KEYFRAME",
                    req->mode);
    if (!req->times || req->n_times == 0)
        return fail(e, TN_INVALID_ARGUMENT, "no time points requested");
    if (req->max_width > MAX_OUTPUT_SIDE || req->max_height > MAX_OUTPUT_SIDE)
        return fail(e, TN_INVALID_ARGUMENT, "thumbnail size %ux%u is too large (at most %d a side)",
                    req->max_width, req->max_height, MAX_OUTPUT_SIDE);
    for (size_t i = 0; i < req->n_times; i++) {
        const struct tn_time_point *tp = &req->times[i];
        if (tp->kind == TN_TIME_SECONDS) {
            if (!isfinite(tp->value) || tp->value < 0)
                return fail(e, TN_INVALID_ARGUMENT,
                            "time point %zu (%g s) must be a number of seconds >= 0", i, tp->value);
        } else if (tp->kind == TN_TIME_PERCENT) {
            if (!isfinite(tp->value) || tp->value < 0 || tp->value > 100)
                return fail(e, TN_INVALID_ARGUMENT, "time point %zu (%g%%) must be within 0..100%%",
                            i, tp->value);
        } else {
            return fail(e, TN_INVALID_ARGUMENT, "time point %zu has an unknown kind %u", i,
                        tp->kind);
        }
    }
    if (req->size == 0)
        return fail(e, TN_INVALID_ARGUMENT, "the file is empty (0 bytes)");
    return TN_OK;
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

static int open_input(struct engine *e)
{
    const struct tn_engine_limits *lim = e->req->limits;
    AVDictionary *opts = NULL;
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

static void setup_timing(struct engine *e)
{
    const AVStream *st = e->st;
    AVRational tb = st->time_base;

    e->start_pts = st->start_time != AV_NOPTS_VALUE ? st->start_time : 0;
    if (st->start_time == AV_NOPTS_VALUE && e->fmt->start_time != AV_NOPTS_VALUE)
        e->start_pts = av_rescale_q(e->fmt->start_time, AV_TIME_BASE_Q, tb);

    e->duration = -1;
    if (e->fmt->duration > 0 && e->fmt->duration != AV_NOPTS_VALUE)
        e->duration = e->fmt->duration / (double)AV_TIME_BASE;
    else if (st->duration > 0 && st->duration != AV_NOPTS_VALUE)
        e->duration = st->duration * av_q2d(tb);

    /* the video's own end: the container's may include a longer audio track */
    e->end_pts = AV_NOPTS_VALUE;
    if (st->duration > 0 && st->duration != AV_NOPTS_VALUE)
        e->end_pts = e->start_pts + st->duration;
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

static void resolve_times(struct engine *e, struct point *pts)
{
    const struct tn_engine_request *req = e->req;

    for (size_t i = 0; i < req->n_times; i++) {
        const struct tn_time_point *tp = &req->times[i];
        double s = tp->value;
        if (tp->kind == TN_TIME_PERCENT) {
            if (e->duration < 0) {
                tn_log_info("duration unknown: %g%% taken as the start of the video", tp->value);
                s = 0;
            } else {
                s = e->duration * tp->value / 100.0;
            }
        }
        pts[i].index = (unsigned)i;
        pts[i].seconds = s;
        /* 1e9 s (31 years) keeps the arithmetic in range; it is past any end */
        int64_t us = llrint(fmin(s, 1e9) * AV_TIME_BASE);
        pts[i].target = e->start_pts + av_rescale_q(us, AV_TIME_BASE_Q, e->st->time_base);
    }
    qsort(pts, req->n_times, sizeof(*pts), cmp_point);
}

/* ---- decoding ----------------------------------------------------------- */

#define RETREAT 1 /* a seek landed after the target: seek further back */

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
 * cannot seek is decoded from the start (only if still there). */
static int seek_to(struct engine *e, int64_t ts)
{
    int from_start = ts <= e->start_pts;
    int ret;

    if (from_start) {
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
        if (!e->fresh)
            return fail_av(e, TN_INVALID_ARGUMENT, ret, "cannot seek in this file");
        tn_log_debug("seek failed (%s), decoding from the start", av_err2str(ret));
        from_start = 1;
    } else {
        e->fresh = 0;
    }
    avcodec_flush_buffers(e->dec);
    e->drained = 0;
    e->positioned = 1;
    e->seek_ts = from_start ? INT64_MIN : ts;
    e->need_key = !from_start;
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
    if (e->have_cur && e->cur_exact && (e->cur_pts >= target || e->cur_clamped))
        return TN_OK;

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
        if (ret == AVERROR_EOF) {
            e->positioned = 0;
            if (e->have_prev) {
                e->have_prev = 0;
                keep_as_cur(e, e->prev, 1, 1);
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
        ret = next_frame(e);
        e->key_ts = AV_NOPTS_VALUE;
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

/* ---- image: geometry, scale, rotate, PNG, memfd ------------------------- */

struct geom {
    int sw, sh;       /* scaled size, before rotation */
    int ow, oh;       /* output size */
    int transpose;    /* rotated by 90 or 270 degrees */
    int rev_a, rev_b; /* see orient() */
};

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

/* Fit the displayed picture (SAR applied, rotated) in the box. */
static int fit(struct engine *e, const AVFrame *f, struct geom *g)
{
    const struct tn_engine_request *req = e->req;
    AVRational sar = av_guess_sample_aspect_ratio(e->fmt, e->st, (AVFrame *)f);
    double dw = f->width, dh = f->height;

    if (sar.num > 0 && sar.den > 0)
        dw = dw * sar.num / sar.den;
    orient(e->st, g);
    double rw = g->transpose ? dh : dw, rh = g->transpose ? dw : dh;
    double s = INFINITY;
    if (req->max_width)
        s = req->max_width / rw;
    if (req->max_height)
        s = fmin(s, req->max_height / rh);
    if (!isfinite(s) || (!req->upscale && s > 1))
        s = 1;
    double ow = fmax(1, round(rw * s)), oh = fmax(1, round(rh * s));
    if (ow > MAX_OUTPUT_SIDE || oh > MAX_OUTPUT_SIDE)
        return fail(e, TN_INVALID_ARGUMENT,
                    "the thumbnail would be %.0fx%.0f, over %d a side: give a smaller box", ow, oh,
                    MAX_OUTPUT_SIDE);
    g->ow = (int)ow;
    g->oh = (int)oh;
    g->sw = g->transpose ? g->oh : g->ow;
    g->sh = g->transpose ? g->ow : g->oh;
    return TN_OK;
}

static int sws_colorspace(const AVFrame *f)
{
    switch (f->colorspace) {
    case AVCOL_SPC_BT709: return SWS_CS_ITU709;
    case AVCOL_SPC_FCC: return SWS_CS_FCC;
    case AVCOL_SPC_SMPTE240M: return SWS_CS_SMPTE240M;
    case AVCOL_SPC_BT2020_NCL:
    case AVCOL_SPC_BT2020_CL: return SWS_CS_BT2020;
    case AVCOL_SPC_BT470BG:
    case AVCOL_SPC_SMPTE170M: return SWS_CS_ITU601;
    default: /* unspecified: what players assume */
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

/* Scale f to g->sw x g->sh RGB24 into e->rgb (stride *stride). */
static int scale(struct engine *e, const AVFrame *f, const struct geom *g, int *stride)
{
    int full = f->color_range == AVCOL_RANGE_JPEG;
    enum AVPixelFormat src = unjpeg((enum AVPixelFormat)f->format, &full);
    int up = g->sw > f->width || g->sh > f->height;
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(src);

    if (!desc || !sws_isSupportedInput(src))
        return fail(e, TN_INVALID_ARGUMENT, "pixel format %s cannot be converted",
                    desc ? desc->name : "?");
    e->sws = sws_getCachedContext(e->sws, f->width, f->height, src, g->sw, g->sh, AV_PIX_FMT_RGB24,
                                  up ? SWS_BICUBIC : SWS_AREA, NULL, NULL, NULL);
    if (!e->sws)
        return fail(e, TN_INTERNAL, "cannot convert %dx%d %s to %dx%d RGB", f->width, f->height,
                    desc->name, g->sw, g->sh);
    if (!(desc->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL)))
        sws_setColorspaceDetails(e->sws, sws_getCoefficients(sws_colorspace(f)), full,
                                 sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
    *stride = FFALIGN(g->sw * 3, 64);
    if (grow(&e->rgb, &e->rgb_cap, (size_t)*stride * g->sh + 64) < 0)
        return fail_av(e, TN_INVALID_ARGUMENT, AVERROR(ENOMEM), "scaling");
    uint8_t *dst[4] = {e->rgb};
    int dst_stride[4] = {*stride};
    int ret = sws_scale(e->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst,
                        dst_stride);
    if (ret <= 0)
        return fail(e, TN_INTERNAL, "scaling %dx%d %s failed", f->width, f->height, desc->name);
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
    switch (req->format) {
    case TN_FORMAT_JPEG:
        rc = encode_jpeg(e, img, w, h, stride, req->quality ? (int)req->quality : JPEG_QUALITY,
                         perr);
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
        rc = encode_webp(img, w, h, stride, req->quality, req->lossless != 0, &webp, perr);
        data = webp.mem;
        len = webp.size;
        break;
    default:
        rc = encode_png(img, w, h, stride, req->png_level ? (int)req->png_level : PNG_LEVEL,
                        &e->out, perr);
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
                         format_name(req->format));
        return -fail(e, TN_INTERNAL, "%s encoding failed: %s", format_name(req->format), perr);
    }
    fd = sealed_memfd(data, len);
    WebPMemoryWriterClear(&webp);
    if (fd < 0)
        return -fail(e, fd == -ENOMEM || fd == -EMFILE ? TN_RESOURCE_EXHAUSTED : TN_INTERNAL,
                     "cannot store the thumbnail in a memfd: %s", strerror(-fd));
    *size = len;
    return fd;
}

static int emit_point(struct engine *e, const struct point *p, tn_engine_emit_fn emit, void *opaque)
{
    struct geom g = {0};
    uint64_t size = 0;
    int stride = 0, code;

    if ((code = fit(e, e->cur, &g)) != TN_OK || (code = scale(e, e->cur, &g, &stride)) != TN_OK)
        return code;
    const uint8_t *img = e->rgb;
    size_t img_stride = (size_t)stride;
    if (g.transpose || g.rev_a || g.rev_b) {
        if ((code = rotate(e, &g, stride)) != TN_OK)
            return code;
        img = e->rot;
        img_stride = (size_t)g.ow * 3;
    }
    int fd = encode(e, img, g.ow, g.oh, img_stride, &size);
    if (fd < 0)
        return -fd;

    struct tn_engine_result r = {
        .index = p->index,
        .requested_time = p->seconds,
        .actual_time = (e->cur_pts - e->start_pts) * av_q2d(e->st->time_base),
        .width = (unsigned)g.ow,
        .height = (unsigned)g.oh,
        .format = e->req->format,
        .fd = fd,
        .size = size,
    };
    code = emit(opaque, &r); /* owns fd now */
    if (code != TN_OK)
        return fail(e, code,
                    "stopped after %zu of %zu thumbnails: the result could not be delivered",
                    e->done, e->req->n_times);
    e->done++;
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
    points = calloc(req->n_times, sizeof(*points));
    if (!e.pkt || !e.frame || !e.prev || !e.cur || !points) {
        /* Nothing of the file is read yet: the worker itself is short. */
        code = fail(&e, TN_UNAVAILABLE, "the decode worker is out of memory; retrying is safe");
        goto out;
    }
    if ((code = open_input(&e)) != TN_OK)
        goto out;
    int probe_streams = !header_is_enough(e.fmt);
    if (probe_streams && (code = find_stream_info(&e)) != TN_OK)
        goto out;
    if ((code = open_stream(&e)) != TN_OK)
        goto out;
    setup_timing(&e);
    resolve_times(&e, points);
    tn_log_debug("%s: %s, %s %dx%d, %.3f s, stream info %s, nonref skip %s",
                 req->file_name ? req->file_name : "-", e.fmt->iformat->name,
                 avcodec_get_name(e.st->codecpar->codec_id), e.st->codecpar->width,
                 e.st->codecpar->height, e.duration, probe_streams ? "probed" : "from the header",
                 e.can_skip_nonref ? "on" : "off");

    for (size_t i = 0; i < req->n_times; i++) {
        code = req->mode == TN_MODE_KEYFRAME ? serve_keyframe(&e, points[i].target)
                                             : serve_accurate(&e, points[i].target);
        if (code != TN_OK || (code = check_stop(&e)) != TN_OK ||
            (code = emit_point(&e, &points[i], emit, opaque)) != TN_OK)
            goto out;
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
    sws_freeContext(e.sws);
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
