/*
 * tn_limit: the in-process limit. The minimal loop a program that makes one
 * thumbnail can run, written independently of the engine (src/worker/) so that
 * "warm worker / limit" means something: open the file, seek, decode one
 * frame, scale it to RGB in one swscale pass, encode a PNG (zlib level 1,
 * SUB filter: the engine's defaults). No IPC, no gRPC, no sandbox, no limits,
 * no error reporting beyond "failed".
 *
 * It must do no more work than the engine, or it is not a limit: one decoder
 * thread (the engine's), and in accurate mode the same shortcut the engine
 * takes, non-reference frames before the target not decoded
 * (AVDISCARD_NONREF) on the codecs where nothing refers to them (H.264,
 * MPEG-4 Part 2, single-layer HEVC), with the same safety margin of 16
 * frame durations where the container's pts may be a decode-order guess.
 *
 * Every iteration reopens the file (a thumbnail server sees a new file per
 * call) in the same warm process: libav's tables, the page cache and the
 * allocator are warm, as in a worker that has served one job before.
 *
 * Usage: tn_limit [options] FILE
 *   --at T         seconds, or N% of the duration (default 10%)
 *   --mode M       keyframe | accurate (default keyframe)
 *   --threads T    none | slice | frame (default none): the decoder's threading
 *   --n N          iterations (default 10); the first is reported as cold
 *   --width W      thumbnail width (default 320; height keeps the aspect ratio)
 *   --level L      PNG zlib level (default 1)
 *   --filter F     PNG row filter: none | sub | paeth | all (default sub)
 *   --probe        always call avformat_find_stream_info (default: as the
 *                  engine, only when the header lacks the size or the duration)
 *   --no-skip      accurate mode: decode every frame before the target
 *   --out FILE     write the last PNG there
 * Output: one line per iteration, then a median line, as space-separated
 * key=value pairs (all times in ms):
 *   iter=1 total=38.2 open=9.1 decode=22.0 scale=2.6 png=3.4 cpu=38.0 frames=1 bytes=51234
 *   pts=6.000 w=320 h=180
 *   median total=... open=... decode=... scale=... png=... cpu=...   (iterations 2..N)
 * cpu is the process's CPU time (all threads) for the iteration: what a
 * thumbnail costs a fully busy machine, whatever else is running on it.
 * Exit 0 when every iteration produced a PNG, 1 otherwise.
 */
#include <errno.h>
#include <getopt.h>
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct opts {
    const char *file;
    double at;
    int at_percent;
    int keyframe;
    int threads; /* 0 none, 1 slice, 2 frame */
    int n;
    int width;
    int level;
    int filter;
    int probe;
    int no_skip;
    const char *out;
};

struct stage_ms {
    double total, open, decode, scale, png, cpu;
    int frames;
    size_t bytes;
    double pts;
    int w, h;
};

struct membuf {
    unsigned char *p;
    size_t len, cap;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* CPU time of the whole process (all decoder threads), ms. */
static double cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void png_write(png_structp png, png_bytep data, size_t len)
{
    struct membuf *mb = png_get_io_ptr(png);
    if (mb->len + len > mb->cap) {
        size_t cap = mb->cap ? mb->cap * 2 : 65536;
        while (cap < mb->len + len)
            cap *= 2;
        unsigned char *p = realloc(mb->p, cap);
        if (!p)
            png_error(png, "out of memory");
        mb->p = p;
        mb->cap = cap;
    }
    memcpy(mb->p + mb->len, data, len);
    mb->len += len;
}

static void png_flush(png_structp png) {}

/* The PNG of w x h RGB24 rows into mb (reset first). 0 or -1. */
static int encode_png(const uint8_t *rgb, int stride, int w, int h, int level, int filter,
                      struct membuf *mb)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    int ret = -1;

    mb->len = 0;
    if (!info)
        goto out;
    if (setjmp(png_jmpbuf(png)))
        goto out;
    png_set_write_fn(png, mb, png_write, png_flush);
    png_set_compression_level(png, level);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, filter);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_BASE, PNG_FILTER_TYPE_BASE);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, rgb + (size_t)y * stride);
    png_write_end(png, NULL);
    ret = 0;
out:
    png_destroy_write_struct(&png, &info);
    return ret;
}

/* Codecs whose non-reference frames nothing refers to: skipping them leaves
 * every other frame intact. HEVC only with one temporal layer (hvcC byte 21,
 * bits 5..3); Annex B extradata: unknown, so no. */
static int nonref_skip_is_safe(const AVCodecParameters *par)
{
    switch (par->codec_id) {
    case AV_CODEC_ID_H264:
    case AV_CODEC_ID_MPEG4: return 1;
    case AV_CODEC_ID_HEVC:
        return par->extradata_size >= 23 && par->extradata[0] == 1 &&
               ((par->extradata[21] >> 3) & 7) <= 1;
    default: return 0;
    }
}

/* Packets with pts below this may skip their non-reference frames: the target
 * minus a margin of 16 frames where pts may be a decode-order guess (AVI and
 * other containers without real pts), and never within that margin of the end,
 * where one of them may be the last frame. INT64_MIN: skip nothing. */
static int64_t nonref_skip_until(const AVFormatContext *fmt, const AVStream *st, int64_t start,
                                 int64_t ts)
{
    static const char *real_pts[] = {"mov", "matroska", "mpegts", "mpeg", "flv", "nut"};
    int real = 0;

    if (!nonref_skip_is_safe(st->codecpar))
        return INT64_MIN;
    for (size_t i = 0; i < sizeof(real_pts) / sizeof(*real_pts); i++) {
        size_t n = strlen(real_pts[i]);
        const char *name = fmt->iformat->name;
        /* the demuxer's name is a comma-separated list ("mov,mp4,m4a,...") */
        if (!strncmp(name, real_pts[i], n) && (name[n] == ',' || !name[n]))
            real = 1;
    }
    AVRational fr = st->avg_frame_rate;
    if (fr.num <= 0 || fr.den <= 0)
        fr = st->r_frame_rate;
    if (fr.num <= 0 || fr.den <= 0)
        fr = (AVRational){25, 1};
    int64_t frame_dur = av_rescale_q(1, av_inv_q(fr), st->time_base);
    if (frame_dur < 1)
        frame_dur = 1;
    int64_t margin = real ? 0 : 16 * frame_dur;
    int64_t until = ts - margin;
    int64_t end = AV_NOPTS_VALUE;
    if (st->duration > 0 && st->duration != AV_NOPTS_VALUE)
        end = start + st->duration;
    else if (fmt->duration > 0 && fmt->duration != AV_NOPTS_VALUE)
        end = start + av_rescale_q(fmt->duration, AV_TIME_BASE_Q, st->time_base);
    if (end != AV_NOPTS_VALUE && end - margin - 16 * frame_dur < until)
        until = end - margin - 16 * frame_dur;
    return until;
}

/* One thumbnail, start to finish. 0 or -1; *s gets the stage times. */
static int one(const struct opts *o, struct membuf *mb, struct stage_ms *s)
{
    AVFormatContext *fmt = NULL;
    AVCodecContext *dec = NULL;
    AVPacket *pkt = av_packet_alloc();
    AVFrame *frame = av_frame_alloc();
    struct SwsContext *sws = NULL;
    uint8_t *rgb = NULL;
    int ret = -1, si, got = 0;
    double t0 = now_ms(), t;

    memset(s, 0, sizeof(*s));
    if (!pkt || !frame || avformat_open_input(&fmt, o->file, NULL, NULL) < 0)
        goto out;
    si = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
    /* The decoded frame gives the pixel format: the header need only name the
     * stream, its size and a duration (for the percent), as in the engine. */
    if (si < 0 || o->probe || (fmt->ctx_flags & AVFMTCTX_NOHEADER) ||
        fmt->streams[si]->codecpar->width <= 0 || fmt->streams[si]->codecpar->height <= 0 ||
        (fmt->duration <= 0 && fmt->streams[si]->duration <= 0)) {
        if (avformat_find_stream_info(fmt, NULL) < 0)
            goto out;
        si = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
        if (si < 0)
            goto out;
    }
    AVStream *st = fmt->streams[si];
    const AVCodec *codec = avcodec_find_decoder(st->codecpar->codec_id);
    if (!codec || !(dec = avcodec_alloc_context3(codec)) ||
        avcodec_parameters_to_context(dec, st->codecpar) < 0)
        goto out;
    dec->pkt_timebase = st->time_base;
    dec->thread_count = o->threads ? 0 : 1; /* 0 = one per core */
    dec->thread_type = o->threads == 2 ? FF_THREAD_FRAME : FF_THREAD_SLICE;
    if (avcodec_open2(dec, codec, NULL) < 0)
        goto out;

    double target = o->at;
    if (o->at_percent) {
        double dur = fmt->duration > 0 ? fmt->duration / (double)AV_TIME_BASE : 0;
        target = dur * o->at / 100.0;
    }
    int64_t start = st->start_time != AV_NOPTS_VALUE ? st->start_time : 0;
    int64_t ts =
        start + av_rescale_q((int64_t)(target * AV_TIME_BASE), AV_TIME_BASE_Q, st->time_base);
    t = now_ms();
    s->open = t - t0;
    t0 = t;

    if (av_seek_frame(fmt, si, ts, AVSEEK_FLAG_BACKWARD) < 0)
        goto out;
    if (o->keyframe)
        dec->skip_frame = AVDISCARD_NONKEY;
    int64_t skip_until =
        o->keyframe || o->no_skip ? INT64_MIN : nonref_skip_until(fmt, st, start, ts);
    /* Accurate: decode until the first frame at or after ts, the non-reference
     * frames well before it skipped. Keyframe: the first keyframe after the
     * seek, sent alone and drained. */
    while (!got) {
        int r = av_read_frame(fmt, pkt);
        if (r < 0) {
            avcodec_send_packet(dec, NULL); /* EOF: the last frame will do */
        } else if (pkt->stream_index != si || (o->keyframe && !(pkt->flags & AV_PKT_FLAG_KEY))) {
            av_packet_unref(pkt);
            continue;
        } else {
            if (!o->keyframe)
                dec->skip_frame = pkt->pts != AV_NOPTS_VALUE && pkt->pts < skip_until
                                      ? AVDISCARD_NONREF
                                      : AVDISCARD_DEFAULT;
            r = avcodec_send_packet(dec, pkt);
            av_packet_unref(pkt);
            if (o->keyframe)
                avcodec_send_packet(dec, NULL);
        }
        for (;;) {
            int rr = avcodec_receive_frame(dec, frame);
            if (rr == AVERROR(EAGAIN))
                break;
            if (rr < 0) {
                if (rr == AVERROR_EOF && s->frames)
                    got = 1; /* keep the last one */
                else if (rr == AVERROR_EOF)
                    goto out;
                break;
            }
            s->frames++;
            if (o->keyframe || frame->best_effort_timestamp == AV_NOPTS_VALUE ||
                frame->best_effort_timestamp >= ts) {
                got = 1;
                break;
            }
            av_frame_unref(frame);
        }
    }
    s->pts = frame->best_effort_timestamp == AV_NOPTS_VALUE
                 ? -1
                 : (frame->best_effort_timestamp - start) * av_q2d(st->time_base);
    t = now_ms();
    s->decode = t - t0;
    t0 = t;

    int w = o->width;
    int h = (int)((double)frame->height * w / frame->width + 0.5) & ~1;
    if (h < 2)
        h = 2;
    int stride = FFALIGN(w * 3, 64);
    rgb = av_malloc((size_t)stride * h + 64);
    sws = sws_getContext(frame->width, frame->height, frame->format, w, h, AV_PIX_FMT_RGB24,
                         SWS_AREA, NULL, NULL, NULL);
    if (!rgb || !sws)
        goto out;
    uint8_t *dst[4] = {rgb};
    int dst_stride[4] = {stride};
    if (sws_scale(sws, (const uint8_t *const *)frame->data, frame->linesize, 0, frame->height, dst,
                  dst_stride) <= 0)
        goto out;
    t = now_ms();
    s->scale = t - t0;
    t0 = t;

    if (encode_png(rgb, stride, w, h, o->level, o->filter, mb) < 0)
        goto out;
    s->png = now_ms() - t0;
    s->bytes = mb->len;
    s->w = w;
    s->h = h;
    ret = 0;
out:
    sws_freeContext(sws);
    av_free(rgb);
    av_frame_free(&frame);
    av_packet_free(&pkt);
    avcodec_free_context(&dec);
    avformat_close_input(&fmt);
    s->total = s->open + s->decode + s->scale + s->png;
    return ret;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(void)
{
    fprintf(stderr, "usage: tn_limit [--at T|P%%] [--mode keyframe|accurate] "
                    "[--threads none|slice|frame] [--n N] [--width W] [--level L] "
                    "[--filter none|sub|paeth|all] [--probe] [--no-skip] [--out FILE] FILE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"at", required_argument, NULL, 'a'},
        {"mode", required_argument, NULL, 'm'},
        {"threads", required_argument, NULL, 't'},
        {"n", required_argument, NULL, 'n'},
        {"width", required_argument, NULL, 'w'},
        {"level", required_argument, NULL, 'l'},
        {"filter", required_argument, NULL, 'f'},
        {"probe", no_argument, NULL, 'p'},
        {"out", required_argument, NULL, 'o'},
        {"no-skip", no_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    struct opts o = {.at = 10,
                     .at_percent = 1,
                     .keyframe = 1,
                     .n = 10,
                     .width = 320,
                     .level = 1,
                     .filter = PNG_FILTER_SUB};
    int c;
    char *end;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'a':
            o.at = strtod(optarg, &end);
            o.at_percent = *end == '%';
            if (end == optarg || (*end && strcmp(end, "%")) || o.at < 0)
                usage();
            break;
        case 'm':
            if (strcmp(optarg, "keyframe") && strcmp(optarg, "accurate"))
                usage();
            o.keyframe = !strcmp(optarg, "keyframe");
            break;
        case 't':
            o.threads = !strcmp(optarg, "none")    ? 0
                        : !strcmp(optarg, "slice") ? 1
                        : !strcmp(optarg, "frame") ? 2
                                                   : -1;
            if (o.threads < 0)
                usage();
            break;
        case 'n': o.n = atoi(optarg); break;
        case 'w': o.width = atoi(optarg); break;
        case 'l': o.level = atoi(optarg); break;
        case 'f':
            o.filter = !strcmp(optarg, "none")    ? PNG_FILTER_NONE
                       : !strcmp(optarg, "sub")   ? PNG_FILTER_SUB
                       : !strcmp(optarg, "paeth") ? PNG_FILTER_PAETH
                       : !strcmp(optarg, "all")   ? PNG_ALL_FILTERS
                                                  : -1;
            if (o.filter < 0)
                usage();
            break;
        case 'p': o.probe = 1; break;
        case 'o': o.out = optarg; break;
        case 's': o.no_skip = 1; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || o.n < 1 || o.width < 2 || o.level < 0 || o.level > 9)
        usage();
    o.file = argv[optind];
    av_log_set_level(AV_LOG_ERROR);

    struct membuf mb = {0};
    struct stage_ms s;
    double *v[6];
    int ok = 0, failed = 0;
    for (int k = 0; k < 6; k++)
        v[k] = calloc((size_t)o.n, sizeof(double));
    for (int i = 0; i < o.n; i++) {
        double c0 = cpu_ms();
        int r = one(&o, &mb, &s);
        s.cpu = cpu_ms() - c0;
        if (r < 0) {
            printf("iter=%d failed\n", i + 1);
            failed++;
            continue;
        }
        printf("iter=%d total=%.3f open=%.3f decode=%.3f scale=%.3f png=%.3f cpu=%.3f frames=%d "
               "bytes=%zu pts=%.3f w=%d h=%d\n",
               i + 1, s.total, s.open, s.decode, s.scale, s.png, s.cpu, s.frames, s.bytes, s.pts,
               s.w, s.h);
        if (i > 0 || o.n == 1) {
            v[0][ok] = s.total, v[1][ok] = s.open, v[2][ok] = s.decode;
            v[3][ok] = s.scale, v[4][ok] = s.png, v[5][ok] = s.cpu;
            ok++;
        }
    }
    printf("median total=%.3f open=%.3f decode=%.3f scale=%.3f png=%.3f cpu=%.3f n=%d\n",
           median(v[0], ok), median(v[1], ok), median(v[2], ok), median(v[3], ok), median(v[4], ok),
           median(v[5], ok), ok);
    if (o.out && mb.len) {
        FILE *f = fopen(o.out, "wb");
        if (!f || fwrite(mb.p, 1, mb.len, f) != mb.len || fclose(f) != 0) {
            fprintf(stderr, "tn_limit: cannot write %s: %s\n", o.out, strerror(errno));
            failed++;
        }
    }
    for (int k = 0; k < 6; k++)
        free(v[k]);
    free(mb.p);
    return failed ? 1 : 0;
}
