#include "job.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ipc.h" /* tn_mono_ms */
#include "log.h"
#include "output.h"
#include "progress.h"
#include "rpc.h"
#include "status.h"

#define BACKOFF_BASE_MS 200
#define BACKOFF_MAX_MS 10000

/* Per-attempt receive state, shared with the rpc sink callbacks. */
struct sink_ctx {
    struct tn_output_file *outs; /* one per output */
    const size_t *map;           /* index in the request -> index in outs */
    struct tn_rpc_thumb *info;   /* per output: the header received */
};

static int sink_begin(void *p, const struct tn_rpc_thumb *t)
{
    struct sink_ctx *s = p;
    size_t i = s->map[t->index];
    s->info[i] = *t;
    /* Directories are made only now, so a failed file leaves no empty ones behind. */
    int r = tn_output_make_parent(s->outs[i].final);
    return r < 0 ? r : tn_output_open(&s->outs[i]);
}

static int sink_data(void *p, uint32_t index, const void *data, size_t n)
{
    struct sink_ctx *s = p;
    return tn_output_write(&s->outs[s->map[index]], data, n);
}

static void sink_sent(void *p, uint64_t n)
{
    tn_progress_add_bytes(n);
}

/* Sleep BACKOFF_BASE_MS * 2^attempt plus up to half that again of jitter; wake early on *stop. */
static void backoff(unsigned attempt, volatile sig_atomic_t *stop)
{
    static __thread unsigned seed;
    if (!seed)
        seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)pthread_self() ^ (unsigned)getpid();
    double base = BACKOFF_BASE_MS * (double)(1u << (attempt < 16 ? attempt : 16));
    if (base > BACKOFF_MAX_MS)
        base = BACKOFF_MAX_MS;
    double ms = base + base / 2 * ((double)rand_r(&seed) / RAND_MAX);
    double end = (double)tn_mono_ms() + ms;
    tn_log_debug("retrying in %.0f ms", ms);
    for (double left = ms; left > 0 && !*stop; left = end - (double)tn_mono_ms()) {
        double step = left < 50 ? left : 50;
        struct timespec ts = {0, (long)(step * 1e6)};
        nanosleep(&ts, NULL);
    }
}

static char *format_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *format_line(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    return r < 0 ? NULL : s;
}

static char *join_path(const char *dir, const char *rel)
{
    size_t dl = strlen(dir);
    return format_line("%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", rel);
}

/* "ok   a.mp4 -> out/a.png (320x180, t=6.00s, 12 ms)", one entry per output. */
static char *ok_line(const char *rel, struct tn_output_file *outs, const struct tn_rpc_thumb *info,
                     const bool *existed, size_t count, double ms, unsigned retries,
                     const char *how)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fprintf(f, "ok   %s -> ", rel);
    for (size_t i = 0; i < count; i++) {
        fprintf(f, "%s%s ", i ? ", " : "", outs[i].final);
        if (existed[i])
            fprintf(f, "(exists");
        else
            fprintf(f, "(%ux%u, t=%.2fs%s%s", info[i].width, info[i].height, info[i].actual_time,
                    info[i].reason[0] ? ", " : "", info[i].reason);
        if (count > 1)
            fputc(')', f);
    }
    fprintf(f, "%s%.0f ms", count > 1 ? " (" : ", ", ms);
    if (retries)
        fprintf(f, ", %u %s", retries, retries == 1 ? "retry" : "retries");
    if (how)
        fprintf(f, ", %s", how);
    fputc(')', f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

void tn_job_run(const struct tn_job_env *env, grpc_completion_queue *cq,
                const struct tn_walk_entry *e, const char *collides_with, struct tn_job_report *rep)
{
    const struct tn_client_options *opt = env->opt;
    size_t count = tn_options_outputs(opt);
    bool every = opt->every > 0 && !opt->storyboard; /* the server decides how many: 1..count */
    struct tn_output_file outs[TN_JOB_MAX_TIMES];
    struct tn_rpc_thumb info[TN_JOB_MAX_TIMES];
    struct tn_time_point times[TN_JOB_MAX_TIMES];
    size_t map[TN_JOB_MAX_TIMES];
    bool existed[TN_JOB_MAX_TIMES];
    size_t n_send = 0, n_ready = 0;
    char *in_path = NULL;
    int fd = -1, r;
    double t0 = (double)tn_mono_ms();

    memset(rep, 0, sizeof(*rep));
    memset(info, 0, sizeof(info));
    rep->outcome = TN_JOB_FAILED;
    if (e->err) {
        rep->line = format_line("FAIL %s: %s", e->rel, strerror(e->err));
        return;
    }
    for (size_t i = 0; i < count; i++) {
        char sprite[32];
        snprintf(sprite, sizeof(sprite), "sprite.%s", tn_options_extension(opt->format));
        char *p = opt->storyboard
                      ? tn_output_path(opt->output_dir, e->rel, i ? "vtt" : sprite, 0, 1)
                      : tn_output_path(opt->output_dir, e->rel, tn_options_extension(opt->format),
                                       i, count);
        r = p ? tn_output_init(&outs[i], p) : -ENOMEM;
        free(p);
        if (r < 0) {
            rep->line = format_line("FAIL %s: out of memory", e->rel);
            goto out;
        }
        n_ready++;
        struct stat st;
        existed[i] = !opt->overwrite && lstat(outs[i].final, &st) == 0;
        if (!existed[i])
            map[n_send++] = i;
    }
    if (opt->count || every || opt->storyboard) {
        /* One call makes them all: all exist (--every: the first) = skip,
         * some exist = ask for --overwrite rather than replace or mix. */
        size_t n_existed = count - n_send;
        if ((every && existed[0]) || n_existed == count) {
            n_send = 0;
        } else if (n_existed) {
            rep->line = format_line("FAIL %s: %zu of the %zu outputs exist (%s...): use "
                                    "--overwrite or remove them",
                                    e->rel, n_existed, count, outs[0].final);
            goto out;
        } else {
            for (size_t i = 0; i < count; i++)
                map[i] = i;
            n_send = count;
        }
    }
    if (collides_with) {
        rep->line = format_line("FAIL %s: output %s would also be the output of %s", e->rel,
                                outs[0].final, collides_with);
        goto out;
    }
    if (n_send == 0) {
        rep->outcome = TN_JOB_SKIPPED;
        rep->line = format_line("skip %s: skipped (exists)", e->rel);
        goto out;
    }
    /* Ask only for the missing thumbnails; map[] turns the server's index back into ours. */
    for (size_t k = 0; k < n_send && opt->n_times; k++)
        times[k] = opt->times[map[k]];

    if ((r = tn_output_check_parent(outs[0].final)) < 0) {
        rep->line =
            format_line("FAIL %s: cannot create %s: %s", e->rel, outs[0].final, strerror(-r));
        goto out;
    }
    in_path = join_path(opt->input_dir, e->rel);
    /* O_NONBLOCK: if the file was replaced by a FIFO since the walk, don't hang in open(). */
    fd = in_path ? open(in_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK) : -1;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        rep->line = format_line("FAIL %s: cannot open: %s", e->rel, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rep->line = format_line("FAIL %s: no longer a regular file", e->rel);
        goto out;
    }

    struct tn_rpc_request req = {
        .fd = fd,
        .size = (uint64_t)st.st_size,
        .file_name = e->rel,
        .times = times,
        .n_times = opt->n_times ? n_send : 0,
        .max_width = opt->max_width,
        .max_height = opt->max_height,
        .upscale = opt->upscale,
        .mode = opt->storyboard && !opt->mode_set ? TN_MODE_KEYFRAME : opt->mode,
        .format = opt->format,
        .quality = opt->quality,
        .lossless = opt->lossless,
        .png_level = opt->png_level,
        .chunk_size = opt->chunk_size,
        .timeout = opt->timeout,
        .authorization = opt->authorization,
        .stop = env->stop,
        .fit = opt->fit,
        .pad_color = opt->pad_color,
        .count = opt->count,
        .every = opt->every,
        .cover_art = opt->cover_art,
        .storyboard = opt->storyboard,
        .tile_width = opt->tile_width,
        .columns = opt->columns,
        .local_path = e->rel,
    };
    /* pull and local mode */
    if (opt->local)
        req.transfer = TN_RPC_LOCAL;
    else if (tn_options_pulls(opt, req.size))
        req.transfer = TN_RPC_PULL;
    struct sink_ctx sctx = {.outs = outs, .map = map, .info = info};
    struct tn_rpc_sink sink = {
        .ctx = &sctx, .begin = sink_begin, .data = sink_data, .sent = sink_sent};
    struct tn_rpc_result res;
    unsigned attempt = 0;
    for (;;) {
        tn_rpc_generate(env->channel, cq, &req, &sink, &res);
        if (!res.local && res.code == GRPC_STATUS_OK)
            break;
        for (size_t i = 0; i < count; i++)
            tn_output_discard(&outs[i]);
        /* Retried: UNAVAILABLE, and CANCELLED that we did not ask for (local
         * is false) before any thumbnail: gRPC core cancels a call that reaches
         * a server in the moment its shutdown began, before the client got the
         * GOAWAY (a reload or a graceful stop). Generate has no side effects. */
        bool transient = res.code == GRPC_STATUS_UNAVAILABLE ||
                         (res.code == GRPC_STATUS_CANCELLED && res.thumbnails == 0);
        if (res.local || !transient || attempt >= opt->retries || *env->stop)
            break;
        tn_log_debug("%s: %s: %s (attempt %u of %u)", e->rel, tn_code_name((int)res.code),
                     res.message, attempt + 1, opt->retries + 1);
        backoff(attempt++, env->stop);
    }
    rep->interrupted = res.interrupted || *env->stop;

    if (res.local || res.code != GRPC_STATUS_OK) {
        const char *sep = res.message[0] ? ": " : "";
        char after[48] = "";
        if (attempt)
            snprintf(after, sizeof(after), " (after %u attempts)", attempt + 1);
        rep->unauthenticated = !res.local && res.code == GRPC_STATUS_UNAUTHENTICATED;
        if (res.local)
            rep->line = format_line("FAIL %s: %s%s", e->rel, res.message, after);
        else
            rep->line = format_line("FAIL %s: %s%s%s%s", e->rel, tn_code_name((int)res.code), sep,
                                    res.message, after);
        goto out;
    }
    if (every) { /* only what arrived: indices 0..thumbnails-1 */
        n_send = res.thumbnails;
        count = res.thumbnails;
    }
    for (size_t k = 0; k < n_send; k++) {
        size_t i = map[k];
        if ((r = tn_output_commit(&outs[i], opt->overwrite)) < 0) {
            rep->line =
                format_line("FAIL %s: cannot write %s: %s", e->rel, outs[i].final,
                            r == -EEXIST ? "appeared meanwhile, not replaced" : strerror(-r));
            goto out; /* the outputs already renamed stay: each one is complete */
        }
        rep->thumbnails++;
    }
    char sent[32], total[32], how[96] = "";
    tn_progress_fmt_bytes(sent, sizeof(sent), (double)res.bytes_sent);
    tn_progress_fmt_bytes(total, sizeof(total), (double)req.size);
    tn_progress_add_video(req.size);
    if (req.transfer == TN_RPC_PULL)
        snprintf(how, sizeof(how), "pull: sent %s of %s in %u ranges", sent, total, res.ranges);
    else if (req.transfer == TN_RPC_LOCAL)
        snprintf(how, sizeof(how), "local: sent 0 B of %s", total);
    tn_log_debug("%s: sent %llu of %llu bytes (%s)", e->rel, (unsigned long long)res.bytes_sent,
                 (unsigned long long)req.size,
                 req.transfer == TN_RPC_PULL    ? "pull"
                 : req.transfer == TN_RPC_LOCAL ? "local"
                                                : "upload");
    rep->outcome = TN_JOB_OK;
    rep->line = ok_line(e->rel, outs, info, existed, count, (double)tn_mono_ms() - t0, attempt,
                        how[0] ? how : NULL);

out:
    for (size_t i = 0; i < n_ready; i++)
        tn_output_free(&outs[i]);
    if (fd >= 0)
        close(fd);
    free(in_path);
}
