/*
 * libFuzzer target for the thumbnail engine's entry point, tn_engine_run().
 *
 * DESIGN. The input is the uploaded file, byte for byte, so the seed corpus
 * is plain video clips (tests/fuzz/seed_corpus.sh cuts the generated ones to
 * 256 KiB). It is written into one memfd, which the engine reads the way a
 * worker reads a spooled upload (pread on an fd). The last byte of the input
 * also picks the request: bits 0-1 the seek mode (accurate, keyframe, smart)
 * or, for 3, a Probe instead (whose JSON must parse, as valid UTF-8, whatever
 * the file's tags hold), bits 2-3 the output format (PNG, JPEG, WebP, or for
 * 3 an animated WebP preview instead of thumbnails), bits 4-5 the fit (fit,
 * fill, pad), bit 6 evenly spaced points (count) instead of times, bit 7 a
 * storyboard, so every seek path, encoder, engine option and the probe are
 * fuzzed without a header that would stop seeds from being real files.
 *
 * The worker's hard limits become the fuzzer's: av_max_alloc() stands in for
 * RLIMIT_AS (a file that asks libav for gigabytes must fail with ENOMEM, as
 * it does in a worker, not trip libFuzzer's malloc limit), max_pixels as in
 * the server, and a 2 s deadline per input as --job-timeout would.
 *
 * Built only with clang (-DTN_FUZZ=ON, see CMakeLists.txt): our code gets
 * coverage instrumentation and ASan; Debian's libav* does not, so a memory
 * error inside libav is caught only when it crashes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>
#include <libavutil/mem.h>

#include "engine.h"
#include "ipc.h"
#include "log.h"
#include "status.h"

#define MAX_ALLOC (256u << 20) /* per allocation: the worker's 1 GiB RLIMIT_AS, roughly */
#define MAX_PIXELS (8192u * 8192u)
#define DEADLINE_MS 2000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int video = -1; /* the input, rewritten for each run; lives as long as the process */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    tn_log_init("fuzz", TN_LOG_ERROR, NULL);
    tn_engine_global_init();
    av_max_alloc(MAX_ALLOC);
    video = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (video < 0)
        abort();
    return 0;
}

static int discard(void *opaque, const struct tn_engine_result *r)
{
    (void)opaque;
    /* A result must be a whole, sealed image: check what a front relies on. */
    if (r->size == 0 || r->width == 0 || r->height == 0 || r->fd < 0)
        abort();
    close(r->fd);
    return TN_OK;
}

/* A probe result must be one JSON object (jansson checks the UTF-8 too). */
static int check_json(void *opaque, const struct tn_engine_result *r)
{
    (void)opaque;
    char *buf = malloc(r->size ? r->size : 1);
    if (!buf || r->fd < 0 || pread(r->fd, buf, r->size, 0) != (ssize_t)r->size)
        abort();
    json_error_t jerr;
    json_t *j = json_loadb(buf, r->size, 0, &jerr);
    if (!json_is_object(j))
        abort();
    json_decref(j);
    free(buf);
    close(r->fd);
    return TN_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct tn_time_point times[] = {
        {.kind = TN_TIME_PERCENT, .value = 50},
        {.kind = TN_TIME_SECONDS, .value = 0.5},
    };
    static const int formats[] = {TN_FORMAT_PNG, TN_FORMAT_JPEG, TN_FORMAT_WEBP, TN_FORMAT_PNG};
    static const int modes[] = {TN_MODE_ACCURATE, TN_MODE_KEYFRAME, TN_MODE_SMART,
                                TN_MODE_ACCURATE};
    static const int fits[] = {TN_FIT_FIT, TN_FIT_FILL, TN_FIT_PAD, TN_FIT_FIT};
    struct tn_engine_limits limits = {.max_pixels = MAX_PIXELS};
    char err[TN_IPC_MESSAGE_MAX];
    uint8_t last = size ? data[size - 1] : 0;

    if (ftruncate(video, 0) < 0)
        abort();
    for (size_t off = 0; off < size;) {
        ssize_t n = pwrite(video, data + off, size - off, (off_t)off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    struct tn_engine_request req = {
        .fd = video,
        .size = size,
        .file_name = "fuzz",
        .opts = {.times = {times[0], times[1]},
                 .n_times = last & 0x40 ? 0 : sizeof(times) / sizeof(times[0]),
                 .max_width = 64,
                 .max_height = 64,
                 .format = (uint8_t)formats[(last >> 2) & 3],
                 .mode = (uint8_t)modes[last & 3],
                 .fit = (uint8_t)fits[(last >> 4) & 3],
                 .pad_color = 0x204060,
                 .count = last & 0x40 ? 3 : 0,
                 .storyboard = last >> 7,
                 .tile_width = 32,
                 .columns = 3,
                 .probe = (last & 3) == 3},
        .deadline_ms = tn_mono_ms() + DEADLINE_MS,
        .cancel_fd = -1,
        .limits = &limits,
    };
    if (((last >> 2) & 3) == 3 && !req.opts.probe) { /* the animation takes no points */
        req.opts.animation = 1;
        req.opts.format = TN_FORMAT_WEBP;
        req.opts.mode = TN_MODE_ACCURATE;
        req.opts.n_times = req.opts.count = req.opts.storyboard = 0;
        req.opts.anim_start = times[1];
        req.opts.anim_end = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = 1.5};
        req.opts.fps = 10;
    }
    int code = tn_engine_run(&req, req.opts.probe ? check_json : discard, NULL, err, sizeof(err));
    /* INTERNAL means a broken invariant in our code, whatever the input. */
    if (code == TN_INTERNAL && strstr(err, "encoding failed") == NULL)
        abort();
    return 0;
}
