/*
 * tn_engine_bench: the worker's engine in a warm in-process loop. It calls
 * tn_engine_run() exactly as a worker does (same fd, same request), without
 * the IPC to the front or gRPC, so that a warm-server figure splits into
 * engine (this) vs IPC + gRPC (the rest), and engine vs tn_limit is the cost
 * of what the engine does beyond the minimal loop.
 *
 * Usage: tn_engine_bench [--at T|P%] [--mode keyframe|accurate] [--n N] [--width W] FILE
 * Output: "iter=I total=MS cpu=MS bytes=B pts=S w=W h=H" per iteration, then
 * "median total=MS cpu=MS n=K" over iterations 2..N (the first is cold); times
 * in ms to the microsecond. cpu is the process's CPU time (all threads): unlike
 * the wall time, it does not grow when other programs share the cores.
 * Exit 0 when every iteration produced a thumbnail, 1 otherwise.
 */
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

struct got {
    uint64_t bytes;
    double pts;
    unsigned w, h;
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
    g->w = r->width;
    g->h = r->height;
    g->n++;
    close(r->fd);
    return 0;
}

static double cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
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
    double *v = calloc((size_t)n, sizeof(double)), *vc = calloc((size_t)n, sizeof(double));
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
        double c0 = cpu_ms(), t0 = now_ms();
        int code = tn_engine_run(&req, emit, &g, err, sizeof(err));
        double ms = now_ms() - t0, cpu = cpu_ms() - c0;
        if (code != 0 || g.n != 1) {
            printf("iter=%d failed code=%d %s\n", i + 1, code, err);
            failed++;
            continue;
        }
        printf("iter=%d total=%.3f cpu=%.3f bytes=%llu pts=%.3f w=%u h=%u\n", i + 1, ms, cpu,
               (unsigned long long)g.bytes, g.pts, g.w, g.h);
        if (i > 0 || n == 1) {
            v[ok] = ms;
            vc[ok++] = cpu;
        }
    }
    printf("median total=%.3f cpu=%.3f n=%d\n", median(v, ok), median(vc, ok), ok);
    free(v);
    free(vc);
    close(fd);
    return failed ? 1 : 0;
}
