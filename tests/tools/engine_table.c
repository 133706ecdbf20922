/*
 * engine_table: run the thumbnail engine in process on video files and print
 * one Markdown table row per file and mode: the thumbnail's size, the time
 * asked for and the time used, the engine's reason, and the median wall
 * time of R runs. For the closing table and for before/after
 * measurements of the engine (no server, no IPC: only the engine).
 *
 *   engine_table [-r RUNS] [-t TIME] [-w WIDTH] [-m accurate,keyframe,smart] FILE...
 *
 * TIME is seconds, or percent with a trailing % (default 10%).
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
#include "ipc.h"
#include "log.h"
#include "status.h"

struct last {
    struct tn_engine_result r;
    char reason[256];
};

static int emit(void *opaque, const struct tn_engine_result *r)
{
    struct last *l = opaque;
    l->r = *r;
#ifndef TN_ENGINE_TABLE_OLD
    snprintf(l->reason, sizeof(l->reason), "%s", r->reason ? r->reason : "");
#endif
    close(r->fd);
    return TN_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int runs = 5, c;
    unsigned width = 320;
    const char *modes = "accurate,keyframe,smart";
    struct tn_time_point t = {.kind = TN_TIME_PERCENT, .value = 10};

    while ((c = getopt(argc, argv, "r:t:w:m:")) != -1) {
        switch (c) {
        case 'r': runs = atoi(optarg); break;
        case 'w': width = (unsigned)atoi(optarg); break;
        case 'm': modes = optarg; break;
        case 't':
            t.value = atof(optarg);
            t.kind = optarg[strlen(optarg) - 1] == '%' ? TN_TIME_PERCENT : TN_TIME_SECONDS;
            break;
        default:
            fprintf(stderr,
                    "usage: engine_table [-r RUNS] [-t TIME] [-w WIDTH] [-m MODES] FILE...\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 1000)
        runs = 5;
    tn_log_init("engine_table", TN_LOG_WARN, NULL);
    tn_engine_global_init();
    printf("| file | mode | thumbnail | asked | used | reason | median ms (%d runs) |\n", runs);
    printf("|---|---|---|---|---|---|---|\n");
    for (int i = optind; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            perror(argv[i]);
            return 1;
        }
        const char *base = strrchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i];
        char list[64];
        snprintf(list, sizeof(list), "%s", modes);
        for (char *save = NULL, *m = strtok_r(list, ",", &save); m;
             m = strtok_r(NULL, ",", &save)) {
            int mode = !strcmp(m, "keyframe") ? TN_MODE_KEYFRAME
                       : !strcmp(m, "smart")  ? 3 /* TN_MODE_SMART */
                                              : TN_MODE_ACCURATE;
            double ms[1000];
            struct last l = {0};
            char err[512] = "";
            int code = TN_OK;
            for (int k = 0; k < runs && code == TN_OK; k++) {
                struct tn_engine_request req = {.fd = fd,
                                                .size = (uint64_t)st.st_size,
                                                .file_name = base,
                                                .opts = {.times = {t},
                                                         .n_times = 1,
                                                         .max_width = width,
                                                         .format = TN_FORMAT_PNG,
                                                         .mode = mode},
                                                .cancel_fd = -1};
                int64_t t0 = tn_mono_ms();
                struct timespec a, b;
                clock_gettime(CLOCK_MONOTONIC, &a);
                code = tn_engine_run(&req, emit, &l, err, sizeof(err));
                clock_gettime(CLOCK_MONOTONIC, &b);
                (void)t0;
                ms[k] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
            }
            if (code != TN_OK) {
                printf("| %s | %s | %s: %s | | | | |\n", base, m, tn_code_name(code), err);
                continue;
            }
            qsort(ms, (size_t)runs, sizeof(ms[0]), cmp_double);
            printf("| %s | %s | %ux%u | %.2f s | %.2f s | %s | %.1f |\n", base, m, l.r.width,
                   l.r.height, l.r.requested_time, l.r.actual_time, l.reason, ms[runs / 2]);
            fflush(stdout);
        }
        close(fd);
    }
    return 0;
}
