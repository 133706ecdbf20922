/*
 * tn_engine_bench: the worker's engine in a warm in-process loop. It calls
 * tn_engine_run() exactly as a worker does (same fd, same request), without
 * the IPC to the front or gRPC, so that a warm-server figure splits into
 * engine (this) vs IPC + gRPC (the rest), and engine vs tn_limit is the cost
 * of what the engine does beyond the minimal loop.
 *
 * Usage: tn_engine_bench [--at T|P%] [--mode keyframe|accurate] [--n N] [--width W] FILE
 * Output: "iter=I total=MS bytes=B pts=S" per iteration, then
 * "median total=MS n=K" over iterations 2..N (the first is cold).
 * Exit 0 when every iteration produced a thumbnail, 1 otherwise.
 */
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

struct got {
    uint64_t bytes;
    double pts;
    int n;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Takes the memfd as a worker's emit does: closes it. */
static int emit(void *opaque, const struct tn_engine_result *r)
{
    struct got *g = opaque;
    g->bytes = r->size;
    g->pts = r->actual_time;
    g->n++;
    close(r->fd);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    fprintf(stderr, "usage: tn_engine_bench [--at T|P%%] [--mode keyframe|accurate] [--n N] "
                    "[--width W] FILE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"at", required_argument, NULL, 'a'},
        {"mode", required_argument, NULL, 'm'},
        {"n", required_argument, NULL, 'n'},
        {"width", required_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    struct tn_time_point tp = {.kind = TN_TIME_PERCENT, .value = 10};
    int mode = TN_MODE_KEYFRAME, n = 10, width = 320, c, failed = 0;
    char *end;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'a':
            tp.value = strtod(optarg, &end);
            tp.kind = *end == '%' ? TN_TIME_PERCENT : TN_TIME_SECONDS;
            if (end == optarg || (*end && strcmp(end, "%")) || tp.value < 0)
                usage();
            break;
        case 'm':
            if (strcmp(optarg, "keyframe") && strcmp(optarg, "accurate"))
                usage();
            mode = strcmp(optarg, "keyframe") ? TN_MODE_ACCURATE : TN_MODE_KEYFRAME;
            break;
        case 'n': n = atoi(optarg); break;
        case 'w': width = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind != argc - 1 || n < 1 || width < 1)
        usage();

    /* Owned by main: the video, closed at exit. */
    int fd = open(argv[optind], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(argv[optind]);
        return 1;
    }
    tn_engine_global_init();
    double *v = calloc((size_t)n, sizeof(double));
    int ok = 0;
    for (int i = 0; i < n; i++) {
        struct tn_engine_request req = {
            .fd = fd,
            .size = (uint64_t)st.st_size,
            .file_name = argv[optind],
            .opts = {.times = {tp},
                     .n_times = 1,
                     .max_width = (unsigned)width,
                     .format = TN_FORMAT_PNG,
                     .mode = (uint8_t)mode},
            .cancel_fd = -1,
        };
        struct got g = {0};
        char err[512] = "";
        double t0 = now_ms();
        int code = tn_engine_run(&req, emit, &g, err, sizeof(err));
        double ms = now_ms() - t0;
        if (code != 0 || g.n != 1) {
            printf("iter=%d failed code=%d %s\n", i + 1, code, err);
            failed++;
            continue;
        }
        printf("iter=%d total=%.2f bytes=%llu pts=%.3f\n", i + 1, ms, (unsigned long long)g.bytes,
               g.pts);
        if (i > 0 || n == 1)
            v[ok++] = ms;
    }
    qsort(v, (size_t)ok, sizeof(*v), cmp_double);
    printf("median total=%.2f n=%d\n",
           ok ? (ok % 2 ? v[ok / 2] : (v[ok / 2 - 1] + v[ok / 2]) / 2) : 0.0, ok);
    free(v);
    close(fd);
    return failed ? 1 : 0;
}
