/*
 * libFuzzer target for the thumbnail engine's entry point, tn_engine_run().
 *
 * DESIGN. The input is the uploaded file, byte for byte, so the seed corpus
 * is plain video clips (tests/fuzz/seed_corpus.sh cuts the generated ones to
 * 256 KiB). It is written into one memfd, which the engine reads the way a
 * worker reads a spooled upload (pread on an fd). The last byte of the input
 * also picks the request: bit 0 the seek mode (accurate / keyframe), bits 1-2
 * the output format, bit 3 a Probe instead (whose JSON must parse, as valid
 * UTF-8, whatever the file's tags hold), so both seek paths, every encoder
 * and the probe are fuzzed without a header that would stop seeds from being
 * real files.
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
                 .n_times = sizeof(times) / sizeof(times[0]),
                 .max_width = 64,
                 .max_height = 64,
                 .format = (uint8_t)formats[(last >> 1) & 3],
                 .mode = last & 1 ? TN_MODE_KEYFRAME : TN_MODE_ACCURATE,
                 .probe = (last >> 3) & 1},
        .deadline_ms = tn_mono_ms() + DEADLINE_MS,
        .cancel_fd = -1,
        .limits = &limits,
    };
    int code = tn_engine_run(&req, req.opts.probe ? check_json : discard, NULL, err, sizeof(err));
    /* INTERNAL means a broken invariant in our code, whatever the input. */
    if (code == TN_INTERNAL && strstr(err, "encoding failed") == NULL)
        abort();
    return 0;
}
