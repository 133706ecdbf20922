/*
 * Unit test of the thumbnail engine, in process, on clips generated at start
 * with the ffmpeg CLI into a temporary directory (skipped if ffmpeg is not
 * installed). Checks codes and messages, geometry (size, rotation, sample
 * aspect ratio), PNG, JPEG and WebP output in sealed memfds (decoded back
 * with libpng, TurboJPEG and libwebp), the times used, and, on clips
 * whose frames encode their own index in their brightness, that ACCURATE
 * returns exactly the first frame at or after the requested time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <webp/decode.h>

#include "engine.h"
#include "log.h"
#include "status.h"
#include "tn_skip.h"

#define MAX_RESULTS 64
#define EPS 1e-6

static char dir[256];
static int have_ffmpeg;
static int have_clips;

/* ---- fixtures ------------------------------------------------------------ */

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    if (st != 0)
        fprintf(stderr, "failed (%d): %s\n", st, cmd);
    return st == 0 ? 0 : -1;
}

static void path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

static int write_file(const char *name, const void *data, size_t len)
{
    char p[512];
    path(p, sizeof(p), name);
    FILE *f = fopen(p, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(data, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

#define FF "ffmpeg -nostdin -hide_banner -loglevel error -y "
#define X265 "-c:v libx265 -x265-params log-level=error:keyint=25 "
#define VP9 "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -g 25 "
/* frame N has luma 16 + 3 N: the picture says which frame it is */
#define INDEXED "-f lavfi -i \"color=c=black:s=64x64:r=10:d=6,format=gray,geq=lum='16+N*3'\" "

/* Copy an MP4 with its first track's tkhd matrix entry [i] (16.16) set to v:
 * the 5.1 CLI cannot write flips. */
static int patch_matrix(const char *from, const char *to, int i, int32_t v)
{
    static unsigned char buf[1 << 20];
    char p[512];
    path(p, sizeof(p), from);
    int fd = open(p, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf)) : -1;
    if (fd >= 0)
        close(fd);
    unsigned char *t = n > 0 ? memmem(buf, (size_t)n, "tkhd", 4) : NULL;
    /* version 0: the matrix is 44 bytes after the type */
    if (!t || t[4] != 0 || t + 44 + 36 > buf + n)
        return -1;
    unsigned char *m = t + 44 + 4 * i;
    m[0] = (unsigned char)((uint32_t)v >> 24);
    m[1] = (unsigned char)((uint32_t)v >> 16);
    m[2] = (unsigned char)((uint32_t)v >> 8);
    m[3] = (unsigned char)v;
    return write_file(to, buf, (size_t)n);
}

/* The colour bars: white, then 75 % yellow, cyan, green, magenta, red, blue,
 * then near-black; 40 x 64 each. */
static const unsigned char bars[8][3] = {{255, 255, 255}, {191, 191, 0}, {0, 191, 191},
                                         {0, 191, 0},     {191, 0, 191}, {191, 0, 0},
                                         {0, 0, 191},     {16, 16, 16}};

static int write_bars(void)
{
    static unsigned char img[64][320][3];
    for (int y = 0; y < 64; y++)
        for (int x = 0; x < 320; x++)
            memcpy(img[y][x], bars[x / 40], 3);
    return write_file("bars.rgb", img, sizeof(img));
}

static int make_clips(void)
{
    const char *d = dir;
    int r = 0;

    r |= run(FF "-f lavfi -i testsrc2=s=640x360:r=25:d=3 -c:v libx264 -preset veryfast -bf 3 -g 25 "
                "-pix_fmt yuv420p '%s/h264.mp4'",
             d);
    r |=
        run(FF "-f lavfi -i testsrc2=s=320x240:r=25:d=2 " X265 "-pix_fmt yuv420p '%s/hevc.mkv'", d);
    r |= run(FF "-f lavfi -i testsrc2=s=320x240:r=25:d=2 " VP9 "-pix_fmt yuv420p '%s/vp9.webm'", d);
    r |= run(FF "-f lavfi -i testsrc2=s=320x240:r=25:d=2 -c:v mpeg4 -bf 2 -g 12 -pix_fmt yuv420p "
                "'%s/mpeg4.avi'",
             d);
    r |= run(FF "-f lavfi -i testsrc2=s=320x240:r=25:d=2 -c:v libx264 -bf 3 -g 25 -pix_fmt yuv420p "
                "'%s/h264.ts'",
             d);
    /* blue with a red top-left corner, then tagged as rotated */
    r |= run(
        FF "-f lavfi -i \"color=c=blue:s=320x240:r=25:d=1,drawbox=x=0:y=0:w=80:h=60:c=red:t=fill\" "
           "-c:v libx264 -pix_fmt yuv420p '%s/box.mp4'",
        d);
    r |= run(FF "-i '%s/box.mp4' -c copy -metadata:s:v:0 rotate=90 '%s/rot90.mp4'", d, d);
    r |= run(FF "-i '%s/box.mp4' -c copy -metadata:s:v:0 rotate=180 '%s/rot180.mp4'", d, d);
    /* ffmpeg's own idea of the upright picture, to compare with */
    r |= patch_matrix("box.mp4", "hflip.mp4", 0, -0x10000);
    r |= patch_matrix("box.mp4", "vflip.mp4", 4, -0x10000);
    r |= run(FF "-i '%s/rot90.mp4' -frames:v 1 -f rawvideo -pix_fmt rgb24 '%s/rot90.rgb'", d, d);
    r |= run(FF "-i '%s/rot180.mp4' -frames:v 1 -f rawvideo -pix_fmt rgb24 '%s/rot180.rgb'", d, d);
    r |= run(FF "-f lavfi -i testsrc2=s=320x240:r=25:d=1 -vf setsar=4/3 -c:v libx264 "
                "-pix_fmt yuv420p '%s/anamorphic.mp4'",
             d);
    r |= run(FF "-f lavfi -i color=c=0x808080:s=128x72:r=25:d=1 -pix_fmt yuv420p10le " X265
                "'%s/gray10.mkv'",
             d);
    r |= run(FF "-f lavfi -i sine=d=1 '%s/audio.m4a'", d);
    r |=
        run(FF INDEXED "-pix_fmt yuv420p -c:v libx264 -bf 3 -g 25 -sc_threshold 0 '%s/idx.mp4'", d);
    r |= run(FF INDEXED "-pix_fmt yuv420p " X265 "'%s/idx.mkv'", d);
    r |= run(FF INDEXED "-pix_fmt yuv420p -c:v libx264 -bf 3 -g 25 -sc_threshold 0 '%s/idx.ts'", d);
    r |= run(FF INDEXED "-pix_fmt yuv420p " VP9 "'%s/idx.webm'", d);
    /* a circle of radius 100 (displayed), stored squeezed to 75x100 radii at SAR 4:3 */
    r |= run(FF "-f lavfi -i \"color=c=black:s=320x240:r=25:d=1,format=gray,"
                "geq=lum='if(lte(pow((X-160)/75,2)+pow((Y-120)/100,2),1),235,16)'\" "
                "-vf setsar=4/3 -c:v libx264 -pix_fmt yuv420p '%s/circle.mp4'",
             d);

    /* colour bars with known RGB (bars.rgb, written here), encoded with each
     * matrix, range, depth and transfer */
    r |= write_bars();
#define BARS FF "-f rawvideo -pix_fmt rgb24 -s 320x64 -r 25 -i '%s/bars.rgb' -frames:v 2 "
#define TAGS(p, t, m, rg)                                                                          \
    "-color_primaries " p " -color_trc " t " -colorspace " m " -color_range " rg " "
    r |= run(BARS "-vf scale=out_color_matrix=bt709:out_range=tv,format=yuv420p " TAGS(
                 "bt709", "bt709", "bt709", "tv") "-c:v libx264 -crf 8 '%s/bars709.mp4'",
             d, d);
    r |= run(BARS "-vf scale=out_color_matrix=bt709:out_range=pc,format=yuv420p " TAGS(
                 "bt709", "bt709", "bt709", "pc") "-c:v libx264 -crf 8 '%s/bars709full.mp4'",
             d, d);
    r |= run(BARS "-vf scale=out_color_matrix=bt709:out_range=tv,format=yuv420p10le " TAGS(
                 "bt709", "bt709", "bt709", "tv") "-c:v libx264 -crf 8 '%s/bars709_10.mp4'",
             d, d);
    r |= run(BARS "-vf scale=out_color_matrix=bt2020:out_range=tv,format=yuv420p10le " TAGS(
                 "bt709", "bt709", "bt2020nc", "tv") X265 "-crf 8 '%s/bars2020m_10.mkv'",
             d, d);
    /* untagged SD: BT.601 is what players assume */
    r |= run(BARS "-vf scale=out_color_matrix=bt601:out_range=tv,format=yuv420p "
                  "-c:v libx264 -crf 8 '%s/bars601.mp4'",
             d, d);
    /* untagged HD: BT.709 */
    r |= run(BARS "-vf scale=1280:256:flags=neighbor:out_color_matrix=bt709:out_range=tv,"
                  "format=yuv420p -c:v libx264 -crf 8 '%s/bars_hd.mp4'",
             d, d);
    /* HDR10 and HLG: SDR white at 203 cd/m2 (BT.2408), BT.2020 primaries */
#define HDR(t)                                                                                     \
    "-vf zscale=tin=bt709:pin=bt709:min=gbr:rin=full:t=" t ":p=bt2020:m=bt2020nc:r=limited:"       \
    "npl=203,format=yuv420p10le "
    r |= run(BARS HDR("smpte2084") TAGS("bt2020", "smpte2084", "bt2020nc", "tv") X265
             "'%s/bars_pq.mkv'",
             d, d);
    r |= run(BARS HDR("arib-std-b67") TAGS("bt2020", "arib-std-b67", "bt2020nc", "tv") X265
             "'%s/bars_hlg.mkv'",
             d, d);
    /* a white box moving 8 px a field over black, interlaced (TFF) */
    r |= run(FF "-f lavfi -i \"color=black:s=320x240:r=50:d=1[bg];color=white:s=60x120[b];"
                "[bg][b]overlay=x='20+t*400':y=60:shortest=1,tinterlace=mode=interleave_top,"
                "format=yuv420p\" -c:v libx264 -flags +ildct+ilme -x264-params tff=1 "
                "'%s/interlaced.mp4'",
             d);
    r |= run(FF "-i '%s/interlaced.mp4' -ss 0.4 -frames:v 1 -f rawvideo -pix_fmt rgb24 "
                "'%s/interlaced.rgb'",
             d, d);

    /* 5 s of black, then 5 s of picture: a scene-cut keyframe at 5 s */
    r |= run(FF "-f lavfi -i \"color=black:s=320x180:r=25:d=5[a];testsrc2=s=320x180:r=25:d=5[b];"
                "[a][b]concat=n=2:v=1:a=0\" -c:v libx264 -preset veryfast -pix_fmt yuv420p "
                "'%s/blackintro.mp4'",
             d);
    /* h264.mp4 with a red 200x200 PNG as cover art */
    r |= run(FF "-f lavfi -i color=c=red:s=200x200:d=1 -frames:v 1 '%s/cover.png'", d);
    r |= run(FF "-i '%s/h264.mp4' -i '%s/cover.png' -map 0 -map 1 -c copy -c:v:1 png "
                "-disposition:v:1 attached_pic '%s/cover.mp4'",
             d, d, d);

    /* not videos */
    unsigned char junk[64 * 1024];
    srand(42);
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)rand();
    r |= write_file("random.bin", junk, sizeof(junk));
    r |= write_file("empty.mp4", "", 0);
    /* an MP4 written without faststart has its moov at the end: cut it off */
    char p[512];
    path(p, sizeof(p), "h264.mp4");
    int fd = open(p, O_RDONLY);
    ssize_t n = fd >= 0 ? pread(fd, junk, 1000, 0) : -1;
    if (fd >= 0)
        close(fd);
    r |= n == 1000 ? write_file("truncated.mp4", junk, 1000) : -1;
    return r;
}

static int group_setup(void **state)
{
    (void)state;
    tn_log_init("test", getenv("TN_TEST_DEBUG") ? TN_LOG_DEBUG : TN_LOG_WARN, NULL);
    tn_engine_global_init();
    have_ffmpeg = system("ffmpeg -version >/dev/null 2>&1") == 0;
    if (!have_ffmpeg)
        return 0;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/tn_test_engine.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    have_clips = make_clips() == 0;
    return have_clips ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (dir[0] && !getenv("TN_TEST_KEEP"))
        run("rm -rf '%s'", dir);
    return 0;
}

/* ---- running the engine --------------------------------------------------- */

struct result {
    struct tn_engine_result r;
    char reason[256];
    int kind;
    unsigned char *data; /* the image, read back from the memfd */
    int sealed;
};

struct run {
    struct result res[MAX_RESULTS];
    size_t n;
    size_t stop_after; /* emit returns TN_CANCELLED after this many; 0 = never */
    int code;
    char err[512];
};

static int emit(void *opaque, const struct tn_engine_result *r)
{
    struct run *run = opaque;
    struct result *out = &run->res[run->n < MAX_RESULTS ? run->n : MAX_RESULTS - 1];
    struct stat sb;

    out->r = *r;
    out->kind = r->kind;
    snprintf(out->reason, sizeof(out->reason), "%s", r->reason ? r->reason : "");
    assert_int_equal(fstat(r->fd, &sb), 0);
    assert_int_equal((uint64_t)sb.st_size, r->size);
    int seals = fcntl(r->fd, F_GET_SEALS);
    out->sealed = seals >= 0 && (seals & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW)) ==
                                    (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW);
    out->data = malloc(r->size);
    assert_non_null(out->data);
    assert_int_equal(pread(r->fd, out->data, r->size, 0), (ssize_t)r->size);
    close(r->fd);
    run->n++;
    return run->stop_after && run->n >= run->stop_after ? TN_CANCELLED : TN_OK;
}

static void run_free(struct run *run)
{
    for (size_t i = 0; i < run->n && i < MAX_RESULTS; i++)
        free(run->res[i].data);
}

struct opts {
    int storyboard;
    unsigned tile_width, columns;
    int fit;
    uint32_t pad_color;
    unsigned count;
    double every;
    int cover_art;
    unsigned max_width, max_height;
    int upscale, format, mode;
    unsigned quality, png_level;
    int lossless;
    int64_t deadline_ms;
    int cancel_fd;
    const struct tn_engine_limits *limits;
};

static const struct opts defaults = {
    .max_width = 320, .format = TN_FORMAT_PNG, .mode = TN_MODE_ACCURATE, .cancel_fd = -1};

static void engine(struct run *run, const char *name, const struct tn_time_point *times,
                   size_t n_times, const struct opts *o)
{
    char p[512];
    struct stat sb;

    memset(run, 0, sizeof(*run));
    path(p, sizeof(p), name);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &sb), 0);
    struct tn_engine_request req = {
        .fd = fd,
        .size = (uint64_t)sb.st_size,
        .file_name = name,
        .opts = {.n_times = (uint32_t)n_times,
                 .max_width = o->max_width,
                 .max_height = o->max_height,
                 .upscale = (uint8_t)o->upscale,
                 .format = (uint8_t)o->format,
                 .quality = o->quality,
                 .lossless = (uint8_t)o->lossless,
                 .png_level = o->png_level,
                 .mode = (uint8_t)o->mode,
                 .fit = (uint8_t)o->fit,
                 .pad_color = o->pad_color,
                 .count = o->count,
                 .every = o->every,
                 .cover_art = (uint8_t)o->cover_art,
                 .storyboard = (uint8_t)o->storyboard,
                 .tile_width = o->tile_width,
                 .columns = o->columns},
        .deadline_ms = o->deadline_ms,
        .cancel_fd = o->cancel_fd,
        .limits = o->limits,
    };
    for (size_t i = 0; i < n_times && i < TN_JOB_MAX_TIMES; i++)
        req.opts.times[i] = times[i];
    run->code = tn_engine_run(&req, emit, run, run->err, sizeof(run->err));
    close(fd);
    if (run->code != TN_OK)
        assert_true(strlen(run->err) > 0);
}

/* One time point, default options but the mode. */
static void engine1(struct run *run, const char *name, double seconds, int mode)
{
    struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = seconds};
    struct opts o = defaults;
    o.mode = mode;
    engine(run, name, &t, 1, &o);
}

#define SKIP_WITHOUT_CLIPS()                                                                       \
    do {                                                                                           \
        if (!have_ffmpeg || !have_clips)                                                           \
            TN_SKIP(have_ffmpeg ? "the ffmpeg CLI failed to make the clips"                        \
                                : "no ffmpeg CLI to make the clips");                              \
    } while (0)

/* Decode a PNG result to RGB24 (caller frees). */
static unsigned char *decode_png(const struct result *r, unsigned *w, unsigned *h)
{
    png_image img;
    memset(&img, 0, sizeof(img));
    img.version = PNG_IMAGE_VERSION;
    assert_true(png_image_begin_read_from_memory(&img, r->data, r->r.size));
    img.format = PNG_FORMAT_RGB;
    unsigned char *buf = malloc(PNG_IMAGE_SIZE(img));
    assert_non_null(buf);
    assert_true(png_image_finish_read(&img, NULL, buf, 0, NULL));
    *w = img.width;
    *h = img.height;
    return buf;
}

static void assert_png(const struct result *r, unsigned w, unsigned h)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned pw, ph;

    assert_true(r->r.size > sizeof(sig));
    assert_memory_equal(r->data, sig, sizeof(sig));
    assert_true(r->sealed);
    assert_int_equal(r->r.format, TN_FORMAT_PNG);
    assert_int_equal(r->r.width, w);
    assert_int_equal(r->r.height, h);
    free(decode_png(r, &pw, &ph));
    assert_int_equal(pw, w);
    assert_int_equal(ph, h);
}

/* ---- tests -------------------------------------------------------------- */

static void test_h264_mp4(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct run run;

    engine1(&run, "h264.mp4", 1.3, TN_MODE_ACCURATE);
    assert_int_equal(run.code, TN_OK);
    assert_int_equal(run.n, 1);
    assert_png(&run.res[0], 320, 180);
    assert_int_equal(run.res[0].r.index, 0);
    assert_true(fabs(run.res[0].r.requested_time - 1.3) < EPS);
    assert_true(run.res[0].r.actual_time >= 1.3 - EPS);
    assert_true(run.res[0].r.actual_time < 1.3 + 0.04 + EPS); /* the next frame at 25 fps */
    run_free(&run);

    engine1(&run, "h264.mp4", 1.3, TN_MODE_KEYFRAME);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 320, 180);
    assert_true(fabs(run.res[0].r.actual_time - 1.0) < EPS); /* GOP of 25 frames */
    run_free(&run);
}

static void test_other_formats(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const char *const names[] = {"hevc.mkv", "vp9.webm", "mpeg4.avi", "h264.ts"};
    static const double times[] = {0, 0.5, 1.3};
    struct run run;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        for (size_t j = 0; j < sizeof(times) / sizeof(times[0]); j++) {
            double t = times[j];
            engine1(&run, names[i], t, TN_MODE_ACCURATE);
            if (run.code != TN_OK)
                fail_msg("%s at %g: %s", names[i], t, run.err);
            assert_png(&run.res[0], 320, 240);
            /* AVI with B-frames: libav (and ffprobe) time frames one frame late */
            double slack = strstr(names[i], ".avi") ? 0.08 : 0.04;
            if (run.res[0].r.actual_time < t - EPS || run.res[0].r.actual_time > t + slack + EPS)
                fail_msg("%s accurate at %g gave %g", names[i], t, run.res[0].r.actual_time);
            run_free(&run);

            engine1(&run, names[i], t, TN_MODE_KEYFRAME);
            if (run.code != TN_OK)
                fail_msg("%s keyframe at %g: %s", names[i], t, run.err);
            assert_png(&run.res[0], 320, 240);
            if (run.res[0].r.actual_time > t + EPS || run.res[0].r.actual_time < t - 1.0 - EPS)
                fail_msg("%s keyframe at %g gave %g", names[i], t, run.res[0].r.actual_time);
            run_free(&run);
        }
    }
}

static void test_many_times_in_order(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    const struct tn_time_point times[] = {
        {.kind = TN_TIME_SECONDS, .value = 2.0}, {.kind = TN_TIME_SECONDS, .value = 0.5},
        {.kind = TN_TIME_PERCENT, .value = 50},  {.kind = TN_TIME_SECONDS, .value = 1.0},
        {.kind = TN_TIME_SECONDS, .value = 0.5}, {.kind = TN_TIME_SECONDS, .value = 0},
    };
    /* sorted by time, ties by index */
    static const unsigned order[] = {5, 1, 4, 3, 2, 0};
    static const double resolved[] = {2.0, 0.5, 1.5, 1.0, 0.5, 0};
    struct opts o = defaults;
    struct run run;

    for (int mode = TN_MODE_ACCURATE; mode <= TN_MODE_KEYFRAME; mode++) {
        o.mode = mode;
        engine(&run, "h264.mp4", times, 6, &o);
        assert_int_equal(run.code, TN_OK);
        assert_int_equal(run.n, 6);
        for (size_t i = 0; i < 6; i++) {
            const struct tn_engine_result *r = &run.res[i].r;
            assert_int_equal(r->index, order[i]);
            assert_true(fabs(r->requested_time - resolved[r->index]) < EPS);
            if (mode == TN_MODE_ACCURATE)
                assert_true(r->actual_time >= r->requested_time - EPS);
            else
                assert_true(r->actual_time <= r->requested_time + EPS);
            assert_png(&run.res[i], 320, 180);
        }
        run_free(&run);
    }
}

static void test_past_the_end(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct run run;

    for (int mode = TN_MODE_ACCURATE; mode <= TN_MODE_KEYFRAME; mode++) {
        engine1(&run, "h264.mp4", 100, mode);
        assert_int_equal(run.code, TN_OK);
        assert_true(fabs(run.res[0].r.requested_time - 100) < EPS);
        double want = mode == TN_MODE_ACCURATE ? 2.96 : 2.0; /* last frame; last keyframe */
        if (fabs(run.res[0].r.actual_time - want) > EPS)
            fail_msg("mode %d past the end gave %g, want %g", mode, run.res[0].r.actual_time, want);
        run_free(&run);
    }
    /* 100 % is the end too */
    const struct tn_time_point t = {.kind = TN_TIME_PERCENT, .value = 100};
    engine(&run, "h264.mp4", &t, 1, &defaults);
    assert_int_equal(run.code, TN_OK);
    assert_true(fabs(run.res[0].r.requested_time - 3.0) < EPS);
    assert_true(fabs(run.res[0].r.actual_time - 2.96) < EPS);
    run_free(&run);
}

/* The frame index the picture shows (luma 16 + 3 N, gray). */
static int shown_index(const struct result *r)
{
    unsigned w, h;
    unsigned char *rgb = decode_png(r, &w, &h);
    const unsigned char *px = rgb + ((size_t)(h / 2) * w + w / 2) * 3;
    int n = (int)lround((px[1] - 16) / 3.0);
    free(rgb);
    return n;
}

/* ACCURATE gives exactly the first frame at or after the time: with
 * non-reference frames skipped, B-frames reordered, the decoder continuing
 * across points or seeking, on H.264 in MP4 and TS, HEVC in MKV and VP9 in
 * WebM. */
static void test_accurate_is_exact(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const double secs[] = {0,   0.05, 0.35, 0.9,  1.0, 1.01, 2.45,
                                  2.5, 2.51, 3.33, 4.96, 5.9, 7};
    static const char *const names[] = {"idx.mp4", "idx.mkv", "idx.ts", "idx.webm"};
    enum { N = sizeof(secs) / sizeof(secs[0]) };
    struct tn_time_point times[N];
    struct opts o = defaults;
    struct run run;

    o.max_width = 0;
    o.max_height = 64;
    for (size_t i = 0; i < N; i++)
        times[i] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = secs[i]};
    for (size_t f = 0; f < sizeof(names) / sizeof(names[0]); f++) {
        for (int together = 0; together <= 1; together++) {
            for (size_t i = 0; i < N; i++) {
                if (together && i > 0)
                    break;
                engine(&run, names[f], together ? times : &times[i], together ? N : 1, &o);
                if (run.code != TN_OK)
                    fail_msg("%s: %s", names[f], run.err);
                for (size_t k = 0; k < run.n; k++) {
                    const struct tn_engine_result *r = &run.res[k].r;
                    double t = secs[together ? r->index : i];
                    int want = (int)ceil(t * 10 - EPS);
                    if (want > 59)
                        want = 59; /* clamped to the last frame */
                    int got = shown_index(&run.res[k]);
                    if (got != want || fabs(r->actual_time - want / 10.0) > EPS)
                        fail_msg("%s at %g s (%s): frame %d at %g s, want frame %d", names[f], t,
                                 together ? "together" : "alone", got, r->actual_time, want);
                }
                run_free(&run);
            }
        }
    }
}

/* The frame indices of name's keyframes, from ffprobe's decoding (not our demuxing):
 * pts relative to the first keyframe's, at 10 fps. Returns how many (<= max). */
static int probe_keyframes(const char *name, int *idx, int max)
{
    char p[512], cmd[1024];
    path(p, sizeof(p), name);
    snprintf(cmd, sizeof(cmd),
             "ffprobe -v error -select_streams v:0 -show_entries frame=key_frame,pts_time "
             "-of csv=p=0 '%s'",
             p);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[128];
    double first = 0;
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        int key;
        double t;
        if (sscanf(line, "%d,%lf", &key, &t) != 2 || !key || n >= max)
            continue; /* not a keyframe, or a blank line (side data) */
        if (n == 0)
            first = t;
        idx[n++] = (int)lround((t - first) * 10);
    }
    return pclose(f) == 0 ? n : -1;
}

/* KEYFRAME gives the keyframe at or before the time (the last one past the end),
 * checked against ffprobe's keyframe list and the picture's own frame index. */
static void test_keyframe_is_the_one_before(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const double secs[] = {0, 0.05, 1.0, 2.45, 2.5, 2.51, 3.33, 4.96, 5.0, 5.9, 7};
    static const char *const names[] = {"idx.mp4", "idx.mkv", "idx.ts", "idx.webm"};
    enum { N = sizeof(secs) / sizeof(secs[0]) };
    struct tn_time_point times[N];
    struct opts o = defaults;
    struct run run;

    o.max_width = 0;
    o.max_height = 64;
    o.mode = TN_MODE_KEYFRAME;
    for (size_t i = 0; i < N; i++)
        times[i] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = secs[i]};
    for (size_t f = 0; f < sizeof(names) / sizeof(names[0]); f++) {
        int key[64];
        int nk = probe_keyframes(names[f], key, 64);
        if (nk < 2)
            fail_msg("%s: ffprobe found %d keyframes: the clip cannot tell keyframe mode apart",
                     names[f], nk);
        engine(&run, names[f], times, N, &o);
        if (run.code != TN_OK)
            fail_msg("%s: %s", names[f], run.err);
        assert_int_equal(run.n, N);
        for (size_t k = 0; k < run.n; k++) {
            const struct tn_engine_result *r = &run.res[k].r;
            double t = secs[r->index];
            int want = key[0];
            for (int j = 0; j < nk; j++)
                if (key[j] <= t * 10 + EPS)
                    want = key[j];
            int got = shown_index(&run.res[k]);
            if (got != want || fabs(r->actual_time - want / 10.0) > 1e-3)
                fail_msg("%s at %g s: frame %d at %g s, want keyframe %d", names[f], t, got,
                         r->actual_time, want);
        }
        run_free(&run);
    }
}

/* Which corner of an RGB image is the red one: 0 tl, 1 tr, 2 bl, 3 br, -1 none. */
static int red_corner(const unsigned char *rgb, unsigned w, unsigned h)
{
    const unsigned xs[4] = {2, w - 3, 2, w - 3}, ys[4] = {2, 2, h - 3, h - 3};
    int found = -1;
    for (int i = 0; i < 4; i++) {
        const unsigned char *p = rgb + ((size_t)ys[i] * w + xs[i]) * 3;
        if (p[0] > 180 && p[2] < 80) {
            if (found >= 0)
                return -1;
            found = i;
        }
    }
    return found;
}

static void check_rotation(const char *name, const char *ref, unsigned rw, unsigned rh)
{
    char p[512];
    struct run run;
    unsigned w, h;
    size_t len = (size_t)rw * rh * 3;
    unsigned char *want = malloc(len);

    assert_non_null(want);
    path(p, sizeof(p), ref);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, want, len, 0), (ssize_t)len);
    close(fd);

    struct opts o = defaults;
    o.max_width = 0;
    o.max_height = 0; /* full size */
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0};
    engine(&run, name, &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], rw, rh);
    unsigned char *got = decode_png(&run.res[0], &w, &h);
    int corner = red_corner(want, rw, rh);
    assert_true(corner >= 0);
    assert_int_equal(red_corner(got, w, h), corner);
    free(got);
    free(want);
    run_free(&run);

    /* the box applies to the rotated picture */
    o.max_width = 120;
    o.max_height = 120;
    engine(&run, name, &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_int_equal(run.res[0].r.width, rw > rh ? 120 : 90);
    assert_int_equal(run.res[0].r.height, rw > rh ? 90 : 120);
    run_free(&run);
}

static void test_rotation(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    check_rotation("rot90.mp4", "rot90.rgb", 240, 320);
    check_rotation("rot180.mp4", "rot180.rgb", 320, 240);

    /* mirrored: the red top-left corner goes right, or down */
    static const char *const flips[] = {"hflip.mp4", "vflip.mp4"};
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0};
    struct opts o = defaults;
    o.max_width = 0;
    for (int i = 0; i < 2; i++) {
        struct run run;
        unsigned w, h;
        engine(&run, flips[i], &t, 1, &o);
        assert_int_equal(run.code, TN_OK);
        assert_png(&run.res[0], 320, 240);
        unsigned char *got = decode_png(&run.res[0], &w, &h);
        assert_int_equal(red_corner(got, w, h), i == 0 ? 1 : 2);
        free(got);
        run_free(&run);
    }
}

/* All 8 display matrices (the dihedral group: 4 rotations, each mirrored or
 * not) written into the tkhd of the red-corner clip. Where the red corner
 * must land follows from the matrix itself: libavutil/display.h maps a
 * source point (x, y) to (a x + c y, b x + d y), y down; the size tells a
 * transposed picture from a plain one. (rot90/rot180 above check the same
 * convention against the ffmpeg CLI.) */
static void test_eight_orientations(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const int m[8][4] = {{1, 0, 0, 1},  {-1, 0, 0, 1}, {1, 0, 0, -1}, {-1, 0, 0, -1},
                                {0, 1, -1, 0}, {0, -1, 1, 0}, {0, 1, 1, 0},  {0, -1, -1, 0}};
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0};
    struct opts o = defaults;
    o.max_width = 0;

    for (int i = 0; i < 8; i++) {
        char name[32];
        struct run run;
        unsigned w, h;
        snprintf(name, sizeof(name), "orient%d.mp4", i);
        /* tkhd matrix entries 0, 1, 3, 4 are a, b, c, d */
        assert_int_equal(patch_matrix("box.mp4", name, 0, m[i][0] * 0x10000), 0);
        assert_int_equal(patch_matrix(name, name, 1, m[i][1] * 0x10000), 0);
        assert_int_equal(patch_matrix(name, name, 3, m[i][2] * 0x10000), 0);
        assert_int_equal(patch_matrix(name, name, 4, m[i][3] * 0x10000), 0);
        /* the red corner is at (-1, -1) from the centre */
        int dx = -m[i][0] - m[i][2], dy = -m[i][1] - m[i][3];
        int want = (dx > 0) + 2 * (dy > 0);
        int transposed = m[i][0] == 0;

        engine(&run, name, &t, 1, &o);
        if (run.code != TN_OK)
            fail_msg("%s: %s", name, run.err);
        assert_png(&run.res[0], transposed ? 240 : 320, transposed ? 320 : 240);
        unsigned char *got = decode_png(&run.res[0], &w, &h);
        int corner = red_corner(got, w, h);
        if (corner != want)
            fail_msg("matrix [%d %d; %d %d]: red corner %d, want %d", m[i][0], m[i][1], m[i][2],
                     m[i][3], corner, want);
        free(got);
        run_free(&run);
    }
}

/* A circle in an anamorphic clip (SAR 4:3) stays a circle: its width and
 * height in the thumbnail agree within 2 %, in a box that shrinks it too. */
static void check_circle(unsigned max_w, unsigned max_h, unsigned want_w, unsigned want_h)
{
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0.5};
    struct opts o = defaults;
    struct run run;
    unsigned w, h;

    o.max_width = max_w;
    o.max_height = max_h;
    engine(&run, "circle.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], want_w, want_h);
    unsigned char *rgb = decode_png(&run.res[0], &w, &h);
    /* extent of the bright pixels (half-level: sub-pixel edges count half) */
    double cw = 0, ch = 0;
    for (unsigned y = 0; y < h; y++) {
        double row = 0;
        for (unsigned x = 0; x < w; x++)
            row += fmin(1, fmax(0, (rgb[((size_t)y * w + x) * 3 + 1] - 16) / 219.0));
        cw = fmax(cw, row);
    }
    for (unsigned x = 0; x < w; x++) {
        double col = 0;
        for (unsigned y = 0; y < h; y++)
            col += fmin(1, fmax(0, (rgb[((size_t)y * w + x) * 3 + 1] - 16) / 219.0));
        ch = fmax(ch, col);
    }
    free(rgb);
    run_free(&run);
    if (fabs(cw / ch - 1) > 0.02)
        fail_msg("circle in %ux%u is %.1f wide and %.1f high", want_w, want_h, cw, ch);
}

static void test_anamorphic_circle(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    check_circle(0, 240, 427, 240);
    check_circle(200, 0, 200, 113);
}

static void test_anamorphic_and_box(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    const struct tn_time_point t = {.kind = TN_TIME_PERCENT, .value = 10};
    struct opts o = defaults;
    struct run run;

    /* 320x240 stored, SAR 4:3: displayed 427x240 (16:9) */
    engine(&run, "anamorphic.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 320, 180);
    run_free(&run);
    o.max_width = 0;
    o.max_height = 240;
    engine(&run, "anamorphic.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 427, 240);
    run_free(&run);

    /* no upscaling unless asked */
    o.max_width = 1280;
    o.max_height = 0;
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_png(&run.res[0], 640, 360);
    run_free(&run);
    o.upscale = 1;
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_png(&run.res[0], 1280, 720);
    run_free(&run);
    /* height is the tighter side */
    o.upscale = 0;
    o.max_width = 320;
    o.max_height = 90;
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_png(&run.res[0], 160, 90);
    run_free(&run);
}

static void test_10bit_is_not_tinted(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct run run;
    unsigned w, h;

    engine1(&run, "gray10.mkv", 0.5, TN_MODE_ACCURATE);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 128, 72);
    unsigned char *rgb = decode_png(&run.res[0], &w, &h);
    const unsigned char *px = rgb + ((size_t)(h / 2) * w + w / 2) * 3;
    assert_true(abs(px[0] - 128) <= 4 && abs(px[1] - 128) <= 4 && abs(px[2] - 128) <= 4);
    free(rgb);
    run_free(&run);
}

/* ---- colour -------------------------------------------------------------- */

/* sRGB 8-bit -> CIE L*a*b* (D65) */
static void lab(const double rgb[3], double out[3])
{
    double l[3], xyz[3];
    for (int i = 0; i < 3; i++) {
        double v = rgb[i] / 255;
        l[i] = v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4);
    }
    xyz[0] = (0.4124 * l[0] + 0.3576 * l[1] + 0.1805 * l[2]) / 0.95047;
    xyz[1] = 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
    xyz[2] = (0.0193 * l[0] + 0.1192 * l[1] + 0.9505 * l[2]) / 1.08883;
    for (int i = 0; i < 3; i++)
        xyz[i] = xyz[i] > 0.008856 ? cbrt(xyz[i]) : 7.787 * xyz[i] + 16.0 / 116;
    out[0] = 116 * xyz[1] - 16;
    out[1] = 500 * (xyz[0] - xyz[1]);
    out[2] = 200 * (xyz[1] - xyz[2]);
}

/* CIE76 colour difference */
static double delta_e(const double a[3], const double b[3])
{
    double la[3], lb[3];
    lab(a, la);
    lab(b, lb);
    return sqrt(pow(la[0] - lb[0], 2) + pow(la[1] - lb[1], 2) + pow(la[2] - lb[2], 2));
}

/* The 8 bars of a full-size thumbnail of name: the mean of the middle of
 * each bar into got[8]. Returns the largest delta E against the reference,
 * and the mean luminance (Rec. 709 weights, 0..255) in *luma. */
static double bars_delta_e(const char *name, double got[8][3], double *luma, double *worst_bar)
{
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0};
    struct opts o = defaults;
    struct run run;
    unsigned w, h;
    double worst = 0, y = 0, ry = 0;

    o.max_width = 320;
    engine(&run, name, &t, 1, &o);
    if (run.code != TN_OK)
        fail_msg("%s: %s", name, run.err);
    assert_png(&run.res[0], 320, 64);
    unsigned char *rgb = decode_png(&run.res[0], &w, &h);
    for (int b = 0; b < 8; b++) {
        double sum[3] = {0, 0, 0}, want[3];
        int n = 0;
        for (unsigned py = 16; py < 48; py++)
            for (unsigned px = b * 40 + 10; px < (unsigned)b * 40 + 30; px++, n++)
                for (int c = 0; c < 3; c++)
                    sum[c] += rgb[((size_t)py * w + px) * 3 + c];
        for (int c = 0; c < 3; c++) {
            got[b][c] = sum[c] / n;
            want[c] = bars[b][c];
        }
        double de = delta_e(got[b], want);
        if (de > worst) {
            worst = de;
            *worst_bar = b;
        }
        y += 0.2126 * got[b][0] + 0.7152 * got[b][1] + 0.0722 * got[b][2];
        ry += 0.2126 * want[0] + 0.7152 * want[1] + 0.0722 * want[2];
    }
    *luma = y / 8;
    free(rgb);
    run_free(&run);
    (void)ry;
    return worst;
}

static double ref_luma(void)
{
    double y = 0;
    for (int b = 0; b < 8; b++)
        y += 0.2126 * bars[b][0] + 0.7152 * bars[b][1] + 0.0722 * bars[b][2];
    return y / 8;
}

/* Each matrix, range and depth: every bar within a small delta E of the RGB
 * it was made from. The limit, 3, is "just noticeable"; a wrong matrix
 * (601 for 709) is 5..10 on these bars, a wrong range ~10. */
static void test_colour_bars(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const char *const names[] = {"bars709.mp4",      "bars709full.mp4", "bars709_10.mp4",
                                        "bars2020m_10.mkv", "bars601.mp4",     "bars_hd.mp4"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        double got[8][3], luma, bar = -1;
        double de = bars_delta_e(names[i], got, &luma, &bar);
        int b = (int)bar;
        print_message("%-18s worst delta E %.2f (bar %d: %.0f %.0f %.0f)\n", names[i], de, b,
                      b >= 0 ? got[b][0] : 0, b >= 0 ? got[b][1] : 0, b >= 0 ? got[b][2] : 0);
        if (de > 3)
            fail_msg("%s: bar %d is %.0f %.0f %.0f, want %d %d %d (delta E %.1f)", names[i], b,
                     got[b][0], got[b][1], got[b][2], bars[b][0], bars[b][1], bars[b][2], de);
    }
}

/* HDR10 and HLG made from the bars by zscale (SDR white at 203 cd/m2, HLG
 * 75 %): tone-mapped back, the mean luminance is that of the SDR bars within
 * 10 % and every bar within delta E 10. The delta E is what catches a
 * washed-out picture: PQ code values shown as BT.709 turn the 75 % yellow
 * into 130 129 78. */
static void test_hdr_tonemap(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const char *const names[] = {"bars_pq.mkv", "bars_hlg.mkv"};
    double want = ref_luma();
    for (size_t i = 0; i < 2; i++) {
        double got[8][3], luma, bar = -1;
        double de = bars_delta_e(names[i], got, &luma, &bar);
        int b = (int)bar;
        print_message("%-14s mean luma %.1f (SDR %.1f), worst delta E %.2f (bar %d: %.0f %.0f "
                      "%.0f)\n",
                      names[i], luma, want, de, b, got[b][0], got[b][1], got[b][2]);
        if (fabs(luma / want - 1) > 0.10)
            fail_msg("%s: mean luminance %.1f, the SDR original's is %.1f", names[i], luma, want);
        if (de > 10)
            fail_msg("%s: bar %d is %.0f %.0f %.0f, want %d %d %d (delta E %.1f)", names[i], b,
                     got[b][0], got[b][1], got[b][2], bars[b][0], bars[b][1], bars[b][2], de);
    }
}

/* Pixels that differ from both vertical neighbours in the same direction by
 * more than 60 levels (green): the comb teeth of an interlaced picture. */
static size_t comb_pixels(const unsigned char *rgb, unsigned w, unsigned h)
{
    size_t n = 0;
    for (unsigned y = 1; y + 1 < h; y++)
        for (unsigned x = 0; x < w; x++) {
            int p = rgb[((size_t)y * w + x) * 3 + 1];
            int u = rgb[((size_t)(y - 1) * w + x) * 3 + 1];
            int d = rgb[((size_t)(y + 1) * w + x) * 3 + 1];
            if ((p - u > 60 && p - d > 60) || (u - p > 60 && d - p > 60))
                n++;
        }
    return n;
}

/* An interlaced clip of a moving box: the ffmpeg CLI's raw frame is
 * combed (the metric sees it), ours is not. */
static void test_deinterlace(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0.4};
    struct opts o = defaults;
    struct run run;
    unsigned w, h;
    static unsigned char raw[240][320][3];
    char p[512];

    path(p, sizeof(p), "interlaced.rgb");
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, raw, sizeof(raw), 0), (ssize_t)sizeof(raw));
    close(fd);
    size_t combed = comb_pixels(&raw[0][0][0], 320, 240);
    assert_true(combed > 1000); /* 120 lines x 2 edges x 16 px, about */

    o.max_width = 0;
    o.max_height = 0;
    engine(&run, "interlaced.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 320, 240);
    unsigned char *rgb = decode_png(&run.res[0], &w, &h);
    size_t ours = comb_pixels(rgb, w, h);
    print_message("comb pixels: ffmpeg raw %zu, ours %zu\n", combed, ours);
    assert_true(ours < 20);
    free(rgb);
    run_free(&run);
}

/* ---- fit, count / every, smart, cover art ---------------------------------- */

static void expect_error(const char *name, int code, const char *text, const struct opts *o);

static const unsigned char *px(const unsigned char *rgb, unsigned w, unsigned x, unsigned y)
{
    return rgb + ((size_t)y * w + x) * 3;
}

static int is_rgb(const unsigned char *p, int r, int g, int b)
{
    return abs(p[0] - r) < 40 && abs(p[1] - g) < 40 && abs(p[2] - b) < 40;
}

/* One thumbnail of box.mp4 (320x240 blue, red 80x60 top-left) in o's box. */
static unsigned char *box_thumb(const struct opts *o, unsigned w, unsigned h)
{
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 0};
    struct run run;
    unsigned gw, gh;

    engine(&run, "box.mp4", &t, 1, o);
    if (run.code != TN_OK)
        fail_msg("box.mp4: %s", run.err);
    assert_png(&run.res[0], w, h);
    unsigned char *rgb = decode_png(&run.res[0], &gw, &gh);
    run_free(&run);
    return rgb;
}

static void test_fit_fill_pad(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct opts o = defaults;
    unsigned char *rgb;

    o.max_width = 100;
    o.max_height = 100;
    rgb = box_thumb(&o, 100, 75); /* FIT (default) */
    assert_true(is_rgb(px(rgb, 100, 2, 2), 255, 0, 0));
    free(rgb);

    /* FILL: scaled to 133x100, centre 100 kept: the red corner (33x25) loses 16 columns */
    o.fit = TN_FIT_FILL;
    rgb = box_thumb(&o, 100, 100);
    assert_true(is_rgb(px(rgb, 100, 2, 2), 255, 0, 0));
    assert_true(is_rgb(px(rgb, 100, 12, 12), 255, 0, 0));
    assert_true(is_rgb(px(rgb, 100, 22, 12), 0, 0, 255));
    assert_true(is_rgb(px(rgb, 100, 97, 97), 0, 0, 255));
    free(rgb);

    /* PAD: 100x75 centred on green: 12 rows above, 13 below */
    o.fit = TN_FIT_PAD;
    o.pad_color = 0x00ff00;
    rgb = box_thumb(&o, 100, 100);
    assert_true(is_rgb(px(rgb, 100, 50, 5), 0, 255, 0));
    assert_true(is_rgb(px(rgb, 100, 50, 80), 0, 0, 255));
    assert_true(is_rgb(px(rgb, 100, 50, 90), 0, 255, 0));
    assert_true(is_rgb(px(rgb, 100, 2, 14), 255, 0, 0));
    free(rgb);

    /* no upscaling: FILL crops to the box's aspect, PAD centres the video */
    o.max_width = 1000;
    o.max_height = 500;
    o.fit = TN_FIT_FILL;
    free(box_thumb(&o, 320, 160));
    o.fit = TN_FIT_PAD;
    rgb = box_thumb(&o, 1000, 500);
    assert_true(is_rgb(px(rgb, 1000, 339, 128), 0, 255, 0));
    assert_true(is_rgb(px(rgb, 1000, 342, 132), 255, 0, 0));
    free(rgb);
    o.upscale = 1;
    o.fit = TN_FIT_FILL;
    free(box_thumb(&o, 1000, 500));

    o = defaults;
    o.fit = TN_FIT_FILL;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "needs a box", &o);
    o.fit = 7;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "is unknown: use FIT", &o);
}

static void test_count_and_every(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct opts o = defaults;
    struct run run;

    /* h264.mp4 is 3 s: count 4 = 0.375, 1.125, 1.875, 2.625 s */
    o.count = 4;
    engine(&run, "h264.mp4", NULL, 0, &o);
    if (run.code != TN_OK)
        fail_msg("%s", run.err);
    assert_int_equal(run.n, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(run.res[i].r.index, i);
        assert_true(fabs(run.res[i].r.requested_time - (i + 0.5) * 0.75) < 1e-6);
        assert_true(run.res[i].r.actual_time >= run.res[i].r.requested_time - 1e-6);
        assert_true(run.res[i].r.actual_time < run.res[i].r.requested_time + 0.041);
    }
    run_free(&run);

    o.count = 0;
    o.every = 1;
    engine(&run, "h264.mp4", NULL, 0, &o);
    assert_int_equal(run.code, TN_OK);
    assert_int_equal(run.n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_true(fabs(run.res[i].r.actual_time - (double)i) < 1e-6);
    run_free(&run);

    o.every = 0.04; /* 75 thumbnails */
    engine(&run, "h264.mp4", NULL, 0, &o);
    assert_int_equal(run.code, TN_INVALID_ARGUMENT);
    assert_non_null(strstr(run.err, "at most 64"));
    o.every = 1;
    o.count = 2;
    engine(&run, "h264.mp4", NULL, 0, &o);
    assert_int_equal(run.code, TN_INVALID_ARGUMENT);
    assert_non_null(strstr(run.err, "not both"));
    o.count = 0; /* times and every */
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "not both", &o);

    /* An interval far longer than the video (it used to leave no point at all
     * past ~1e9 x the duration: OK with no thumbnail, and a storyboard of no
     * tile divided by zero, SIGFPE) is the one point at the start, like any
     * interval longer than the video. */
    const double huge[] = {1e6, 1e12, 1e18, DBL_MAX};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        for (int sb = 0; sb <= 1; sb++) {
            o = defaults;
            o.every = huge[i];
            o.storyboard = sb;
            engine(&run, "h264.mp4", NULL, 0, &o);
            assert_int_equal(run.code, TN_OK);
            assert_int_equal(run.n, sb ? 2 : 1); /* a storyboard: the sprite and its WebVTT */
            run_free(&run);
        }
    }
}

static double mean_luma(const struct result *r)
{
    unsigned w, h;
    unsigned char *rgb = decode_png(r, &w, &h);
    double sum = 0;
    for (size_t i = 0; i < (size_t)w * h; i++)
        sum += 0.2126 * rgb[i * 3] + 0.7152 * rgb[i * 3 + 1] + 0.0722 * rgb[i * 3 + 2];
    free(rgb);
    return sum / ((double)w * h);
}

/* 5 s of black then picture: at 10 % (1 s) ACCURATE gives the black frame
 * that was asked for, SMART a picture after the black, and says so. */
static void test_smart_black_intro(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    const struct tn_time_point t = {.kind = TN_TIME_PERCENT, .value = 10};
    struct opts o = defaults;
    struct run run;

    engine(&run, "blackintro.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_true(fabs(run.res[0].r.actual_time - 1.0) < 1e-6);
    assert_true(mean_luma(&run.res[0]) < 20);
    run_free(&run);

    o.mode = TN_MODE_SMART;
    engine(&run, "blackintro.mp4", &t, 1, &o);
    if (run.code != TN_OK)
        fail_msg("%s", run.err);
    double y = mean_luma(&run.res[0]);
    print_message("smart: t=%.2f s, mean luma %.1f, reason \"%s\"\n", run.res[0].r.actual_time, y,
                  run.res[0].reason);
    assert_true(run.res[0].r.actual_time >= 5.0 - 1e-6);
    assert_true(y > 40);
    assert_non_null(strstr(run.res[0].reason, "black"));
    run_free(&run);

    /* a picture from the start: nothing to skip, several keyframes compared */
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    assert_null(strstr(run.res[0].reason, "skipped"));
    run_free(&run);
}

static void test_cover_art(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    const struct tn_time_point t[2] = {{.kind = TN_TIME_SECONDS, .value = 1},
                                       {.kind = TN_TIME_SECONDS, .value = 2}};
    struct opts o = defaults;
    struct run run;
    unsigned w, h;

    engine(&run, "cover.mp4", t, 2, &o); /* not asked: the video */
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 320, 180);
    run_free(&run);

    o.cover_art = 1;
    engine(&run, "cover.mp4", t, 2, &o);
    if (run.code != TN_OK)
        fail_msg("%s", run.err);
    assert_int_equal(run.n, 2);
    assert_png(&run.res[0], 200, 200);
    assert_string_equal(run.res[0].reason, "cover art");
    unsigned char *rgb = decode_png(&run.res[0], &w, &h);
    assert_true(is_rgb(px(rgb, w, 100, 100), 255, 0, 0));
    free(rgb);
    assert_png(&run.res[1], 320, 180); /* the second point is the video's */
    assert_true(fabs(run.res[1].r.actual_time - 2) < 1e-6);
    run_free(&run);

    engine(&run, "h264.mp4", t, 1, &o); /* asked, but there is none */
    assert_int_equal(run.code, TN_OK);
    assert_png(&run.res[0], 320, 180);
    assert_string_equal(run.res[0].reason, "");
    run_free(&run);
}

/* A storyboard of the self-numbering clip (10 fps, 6 s, frame N has luma
 * 16 + 3 N): 6 tiles at 0.5, 1.5 ... 5.5 s in 4 columns; every cue of the
 * WebVTT covers its second and points at the tile that is the thumbnail
 * of that time (a neighbouring frame would be 3 levels off). */
/* ffmpeg's own frame of name at t seconds, scaled to w x h, as RGB24 (caller frees). */
static unsigned char *ffmpeg_frame(const char *name, double t, unsigned w, unsigned h)
{
    char p[512], cmd[1024];
    size_t len = (size_t)w * h * 3;
    unsigned char *buf = malloc(len);
    path(p, sizeof(p), name);
    snprintf(cmd, sizeof(cmd),
             "ffmpeg -nostdin -hide_banner -loglevel error -ss %.3f -i '%s' -frames:v 1 "
             "-vf scale=%u:%u -f rawvideo -pix_fmt rgb24 -",
             t, p, w, h);
    FILE *f = popen(cmd, "r");
    size_t got = f && buf ? fread(buf, 1, len, f) : 0;
    if (f && pclose(f) != 0)
        got = 0;
    if (got != len) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void test_storyboard(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct opts o = defaults;
    struct run run;
    unsigned w, h;

    o.storyboard = 1;
    o.count = 6;
    o.tile_width = 48;
    o.columns = 4;
    o.mode = TN_MODE_ACCURATE;
    engine(&run, "idx.mp4", NULL, 0, &o);
    if (run.code != TN_OK)
        fail_msg("%s", run.err);
    assert_int_equal(run.n, 2);
    assert_int_equal(run.res[0].kind, TN_KIND_SPRITE);
    assert_int_equal(run.res[1].kind, TN_KIND_VTT);
    assert_png(&run.res[0], 4 * 48, 2 * 48);
    unsigned char *rgb = decode_png(&run.res[0], &w, &h);
    char *vtt = strndup((const char *)run.res[1].data, run.res[1].r.size);
    assert_non_null(vtt);
    assert_memory_equal(vtt, "WEBVTT\n", 7);
    int cues = 0;
    for (char *line = strstr(vtt, "\n\n"); line; line = strstr(line + 1, "\n\n")) {
        int h1, m1, s1, ms1, h2, m2, s2, ms2, x, y, cw, ch;
        char name[64];
        if (sscanf(line + 2, "%d:%d:%d.%d --> %d:%d:%d.%d\n%63[^#]#xywh=%d,%d,%d,%d", &h1, &m1, &s1,
                   &ms1, &h2, &m2, &s2, &ms2, name, &x, &y, &cw, &ch) != 13)
            fail_msg("bad cue: %.80s", line + 2);
        assert_string_equal(name, "idx.sprite.png");
        assert_int_equal(s1 * 1000 + ms1, cues * 1000);
        assert_int_equal(s2 * 1000 + ms2, (cues + 1) * 1000);
        assert_int_equal(x, (cues % 4) * 48);
        assert_int_equal(y, (cues / 4) * 48);
        assert_int_equal(cw, 48);
        assert_int_equal(ch, 48);
        /* the tile is ffmpeg's frame at its point (the middle of its cue, accurate
         * mode): its mean level within a level and a half (frames differ by 3) */
        unsigned char *ref = ffmpeg_frame("idx.mp4", cues + 0.5, (unsigned)cw, (unsigned)ch);
        if (!ref)
            fail_msg("ffmpeg could not give the frame at %g s", cues + 0.5);
        double tile_mean = 0, ref_mean = 0;
        for (int ty = 0; ty < ch; ty++)
            for (int tx = 0; tx < cw; tx++) {
                tile_mean += px(rgb, w, (unsigned)(x + tx), (unsigned)(y + ty))[1];
                ref_mean += px(ref, (unsigned)cw, (unsigned)tx, (unsigned)ty)[1];
            }
        tile_mean /= cw * ch;
        ref_mean /= cw * ch;
        free(ref);
        if (fabs(tile_mean - ref_mean) > 1.5)
            fail_msg("tile %d (level %.1f) is not ffmpeg's frame at %g s (level %.1f)", cues,
                     tile_mean, cues + 0.5, ref_mean);
        /* and, pixel by pixel, the thumbnail of its time (frames differ by 3
         * levels), within the coordinates the cue gives */
        struct run one;
        struct opts o1 = defaults;
        unsigned ow, oh;
        o1.max_width = 48;
        const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = cues + 0.5};
        engine(&one, "idx.mp4", &t, 1, &o1);
        assert_int_equal(one.code, TN_OK);
        unsigned char *want = decode_png(&one.res[0], &ow, &oh);
        assert_int_equal(ow, 48);
        assert_int_equal(oh, 48);
        double diff = 0;
        for (int ty = 0; ty < ch; ty++)
            for (int tx = 0; tx < cw; tx++)
                diff += abs(px(rgb, w, (unsigned)(x + tx), (unsigned)(y + ty))[1] -
                            px(want, ow, (unsigned)tx, (unsigned)ty)[1]);
        diff /= cw * ch;
        if (diff > 1)
            fail_msg("tile %d differs from the thumbnail at %g s by %.1f levels", cues, t.value,
                     diff);
        free(want);
        run_free(&one);
        cues++;
    }
    assert_int_equal(cues, 6);
    free(vtt);
    free(rgb);
    run_free(&run);
}

static void expect_error(const char *name, int code, const char *text, const struct opts *o)
{
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 1};
    struct run run;

    engine(&run, name, &t, 1, o ? o : &defaults);
    if (run.code != code || !strstr(run.err, text))
        fail_msg("%s: got %s \"%s\", want %s \"...%s...\"", name, tn_code_name(run.code), run.err,
                 tn_code_name(code), text);
    assert_int_equal(run.n, 0);
    run_free(&run);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct opts o = defaults;
    struct tn_engine_limits lim = {.max_pixels = 10000};

    expect_error("audio.m4a", TN_INVALID_ARGUMENT, "no video stream", NULL);
    expect_error("random.bin", TN_INVALID_ARGUMENT, "not a video file", NULL);
    expect_error("empty.mp4", TN_INVALID_ARGUMENT, "empty", NULL);
    expect_error("truncated.mp4", TN_INVALID_ARGUMENT, "truncated", NULL);
    o.format = 9;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "format 9 is unknown", &o);
    o = defaults;
    o.format = TN_FORMAT_JPEG;
    o.quality = 101;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "quality 101 is out of range", &o);
    o = defaults;
    o.png_level = 10;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "png_level 10 is out of range", &o);
    o = defaults;
    o.mode = 7;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "mode 7 is unknown", &o);
    o = defaults;
    o.limits = &lim;
    expect_error("h264.mp4", TN_INVALID_ARGUMENT, "limit", &o);

    const struct tn_time_point bad[] = {{.kind = TN_TIME_SECONDS, .value = -1},
                                        {.kind = TN_TIME_PERCENT, .value = 101},
                                        {.kind = 9, .value = 1}};
    for (size_t i = 0; i < 3; i++) {
        struct run run;
        engine(&run, "h264.mp4", &bad[i], 1, &defaults);
        assert_int_equal(run.code, TN_INVALID_ARGUMENT);
        assert_true(strstr(run.err, "times[0]") != NULL);
        run_free(&run);
    }
}

/* ---- JPEG and WebP ------------------------------------------------------- */

/* One thumbnail of h264.mp4 at 1.3 s in the format of o; checks the result
 * header and the seals. */
static void engine_fmt(struct run *run, const struct opts *o)
{
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 1.3};

    engine(run, "h264.mp4", &t, 1, o);
    if (run->code != TN_OK)
        fail_msg("format %d: %s %s", o->format, tn_code_name(run->code), run->err);
    assert_int_equal(run->n, 1);
    assert_true(run->res[0].sealed);
    assert_int_equal(run->res[0].r.format, o->format);
    assert_int_equal(run->res[0].r.width, 320);
    assert_int_equal(run->res[0].r.height, 180);
}

static double mean_abs_diff(const unsigned char *a, const unsigned char *b, size_t n)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += abs((int)a[i] - (int)b[i]);
    return sum / (double)n;
}

static unsigned char *decode_jpeg(const struct result *r, int *w, int *h)
{
    static const unsigned char soi[3] = {0xff, 0xd8, 0xff};
    int sub, cs;

    assert_true(r->r.size > 4);
    assert_memory_equal(r->data, soi, sizeof(soi));
    tjhandle tj = tjInitDecompress();
    assert_non_null(tj);
    assert_int_equal(tjDecompressHeader3(tj, r->data, r->r.size, w, h, &sub, &cs), 0);
    assert_int_equal(sub, TJSAMP_420);
    unsigned char *rgb = malloc((size_t)*w * *h * 3);
    assert_non_null(rgb);
    assert_int_equal(tjDecompress2(tj, r->data, r->r.size, rgb, *w, 0, *h, TJPF_RGB, 0), 0);
    tjDestroy(tj);
    return rgb;
}

static unsigned char *decode_webp(const struct result *r, int *w, int *h, int *lossless)
{
    WebPBitstreamFeatures f;

    assert_true(r->r.size > 12);
    assert_memory_equal(r->data, "RIFF", 4);
    assert_memory_equal(r->data + 8, "WEBP", 4);
    assert_int_equal(WebPGetFeatures(r->data, r->r.size, &f), VP8_STATUS_OK);
    *lossless = f.format == 2;
    unsigned char *rgb = WebPDecodeRGB(r->data, r->r.size, w, h);
    assert_non_null(rgb);
    return rgb;
}

static void test_jpeg_and_webp(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    struct run png, run;
    struct opts o = defaults;
    unsigned pw, ph;
    int w, h, lossless;
    size_t n = 320 * 180 * 3;
    uint64_t lo, hi;

    engine_fmt(&png, &o);
    unsigned char *ref = decode_png(&png.res[0], &pw, &ph);

    o.format = TN_FORMAT_JPEG; /* default quality 85 */
    engine_fmt(&run, &o);
    unsigned char *rgb = decode_jpeg(&run.res[0], &w, &h);
    assert_int_equal(w, 320);
    assert_int_equal(h, 180);
    double d = mean_abs_diff(rgb, ref, n);
    if (d > 5)
        fail_msg("JPEG differs from the PNG by %.2f on average", d);
    free(rgb);
    run_free(&run);
    o.quality = 30;
    engine_fmt(&run, &o);
    lo = run.res[0].r.size;
    free(decode_jpeg(&run.res[0], &w, &h));
    run_free(&run);
    o.quality = 95;
    engine_fmt(&run, &o);
    hi = run.res[0].r.size;
    run_free(&run);
    assert_true(lo < hi);

    o = defaults;
    o.format = TN_FORMAT_WEBP; /* lossy, default quality 80 */
    engine_fmt(&run, &o);
    rgb = decode_webp(&run.res[0], &w, &h, &lossless);
    assert_int_equal(w, 320);
    assert_int_equal(h, 180);
    assert_false(lossless);
    d = mean_abs_diff(rgb, ref, n);
    if (d > 5)
        fail_msg("WebP differs from the PNG by %.2f on average", d);
    WebPFree(rgb);
    run_free(&run);
    o.quality = 30;
    engine_fmt(&run, &o);
    lo = run.res[0].r.size;
    run_free(&run);
    o.quality = 95;
    engine_fmt(&run, &o);
    hi = run.res[0].r.size;
    run_free(&run);
    assert_true(lo < hi);

    o.quality = 0;
    o.lossless = 1;
    engine_fmt(&run, &o);
    rgb = decode_webp(&run.res[0], &w, &h, &lossless);
    assert_true(lossless);
    assert_memory_equal(rgb, ref, n); /* lossless: exactly the PNG's pixels */
    WebPFree(rgb);
    run_free(&run);

    /* PNG level: same pixels, level 9 smaller than the default 1 */
    o = defaults;
    o.png_level = 9;
    engine_fmt(&run, &o);
    rgb = decode_png(&run.res[0], &pw, &ph);
    assert_memory_equal(rgb, ref, n);
    assert_true(run.res[0].r.size < png.res[0].r.size);
    free(rgb);
    run_free(&run);

    free(ref);
    run_free(&png);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_deadline_and_cancel(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    const struct tn_time_point t = {.kind = TN_TIME_SECONDS, .value = 1};
    struct opts o = defaults;
    struct run run;
    int sv[2];

    o.deadline_ms = now_ms() - 1;
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_DEADLINE_EXCEEDED);
    assert_true(strstr(run.err, "deadline") != NULL);
    assert_int_equal(run.n, 0);
    run_free(&run);

    /* a deadline in the future is no obstacle */
    o.deadline_ms = now_ms() + 60000;
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK);
    run_free(&run);

    /* the front closing the reply socket */
    o = defaults;
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    o.cancel_fd = sv[0];
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_OK); /* still open: fine */
    run_free(&run);
    close(sv[1]);
    engine(&run, "h264.mp4", &t, 1, &o);
    assert_int_equal(run.code, TN_CANCELLED);
    assert_int_equal(run.n, 0);
    run_free(&run);
    close(sv[0]);

    /* emit refusing a result stops the job with its code */
    const struct tn_time_point two[] = {{.kind = TN_TIME_SECONDS, .value = 0.5},
                                        {.kind = TN_TIME_SECONDS, .value = 1.5}};
    memset(&run, 0, sizeof(run));
    char p[512];
    struct stat sb;
    path(p, sizeof(p), "h264.mp4");
    int fd = open(p, O_RDONLY);
    assert_int_equal(fstat(fd, &sb), 0);
    struct tn_engine_request req = {.fd = fd,
                                    .size = (uint64_t)sb.st_size,
                                    .opts = {.n_times = 2,
                                             .max_width = 320,
                                             .format = TN_FORMAT_PNG,
                                             .mode = TN_MODE_ACCURATE,
                                             .times = {two[0], two[1]}},
                                    .cancel_fd = -1};
    run.stop_after = 1;
    run.code = tn_engine_run(&req, emit, &run, run.err, sizeof(run.err));
    close(fd);
    assert_int_equal(run.code, TN_CANCELLED);
    assert_int_equal(run.n, 1);
    assert_true(run.err[0] != '\0');
    run_free(&run);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* A worker serves thousands of jobs: no fd may stay behind, on success or on
 * failure. (Memory: run this test under valgrind.) */
static void test_no_fd_leak(void **state)
{
    (void)state;
    SKIP_WITHOUT_CLIPS();
    static const char *const names[] = {"h264.mp4", "vp9.webm", "random.bin", "truncated.mp4",
                                        "audio.m4a"};
    struct run run;
    int before = count_fds();

    for (int i = 0; i < 3; i++)
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
            engine1(&run, names[k], 0.5, i % 2 ? TN_MODE_KEYFRAME : TN_MODE_ACCURATE);
            run_free(&run);
        }
    assert_int_equal(count_fds(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h264_mp4),
        cmocka_unit_test(test_other_formats),
        cmocka_unit_test(test_many_times_in_order),
        cmocka_unit_test(test_past_the_end),
        cmocka_unit_test(test_accurate_is_exact),
        cmocka_unit_test(test_keyframe_is_the_one_before),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_eight_orientations),
        cmocka_unit_test(test_anamorphic_circle),
        cmocka_unit_test(test_anamorphic_and_box),
        cmocka_unit_test(test_10bit_is_not_tinted),
        cmocka_unit_test(test_colour_bars),
        cmocka_unit_test(test_hdr_tonemap),
        cmocka_unit_test(test_deinterlace),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_fit_fill_pad),
        cmocka_unit_test(test_count_and_every),
        cmocka_unit_test(test_smart_black_intro),
        cmocka_unit_test(test_cover_art),
        cmocka_unit_test(test_storyboard),
        cmocka_unit_test(test_jpeg_and_webp),
        cmocka_unit_test(test_deadline_and_cancel),
        cmocka_unit_test(test_no_fd_leak),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
