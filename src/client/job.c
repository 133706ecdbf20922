#include "job.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
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
#include "stamp.h"
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

/* {time} of output i: the --at point ("90s", "10pct"), --every's i-th time, or "auto". */
static void time_label(const struct tn_client_options *opt, size_t i, char *buf, size_t len)
{
    if (opt->n_times && i < opt->n_times)
        snprintf(buf, len, "%g%s", opt->times[i].value,
                 opt->times[i].kind == TN_TIME_PERCENT ? "pct" : "s");
    else if (opt->every > 0)
        snprintf(buf, len, "%gs", opt->every * (double)i);
    else
        snprintf(buf, len, "auto");
}

/* The path of output i of count for rel: under OUTPUT_DIR, or beside -o's name. */
static char *output_path(const struct tn_job_env *env, const char *rel, bool keep_ext, size_t i,
                         size_t count)
{
    const struct tn_client_options *opt = env->opt;
    const char *ext = tn_options_extension(opt->format);
    char suffix[48], t[48];
    if (opt->storyboard)
        snprintf(suffix, sizeof(suffix), i ? ".vtt" : ".sprite.%s", ext);
    else if (count > 1 && !tn_output_template_numbers(opt->name_template))
        snprintf(suffix, sizeof(suffix), "-%zu.%s", i + 1, ext);
    else
        snprintf(suffix, sizeof(suffix), ".%s", ext);
    if (env->single) {
        const char *of = opt->output_file;
        if (count == 1 && !opt->storyboard)
            return strdup(of);
        const char *slash = strrchr(of, '/');
        const char *dot = strrchr(of, '.');
        size_t n = dot && dot > (slash ? slash + 1 : of) ? (size_t)(dot - of) : strlen(of);
        return format_line("%.*s%s", (int)n, of, suffix);
    }
    time_label(opt, i, t, sizeof(t));
    char *name = tn_output_name(opt->name_template, rel, keep_ext, count > 1 ? i + 1 : 0, t);
    char *p = name ? tn_output_join(opt->output_dir, name, suffix) : NULL;
    free(name);
    return p;
}

char *tn_job_output_name(const struct tn_client_options *opt, const char *rel, bool keep_ext)
{
    char t[48];
    time_label(opt, 0, t, sizeof(t));
    size_t count = tn_options_outputs(opt);
    return tn_output_name(opt->name_template, rel, keep_ext, count > 1 ? 1 : 0, t);
}

/* A JSON string of s; bytes that are not UTF-8 (file names may hold any) become U+FFFD. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    if (j || !s)
        return j ? j : json_null();
    char *buf = malloc(strlen(s) * 3 + 1), *o = buf;
    if (!buf)
        return json_null();
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
        bool ok = n > 0;
        for (int k = 1; ok && k < n; k++)
            ok = (p[k] & 0xc0) == 0x80;
        if (ok) {
            memcpy(o, p, (size_t)n);
            o += n;
            p += n;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            p++;
        }
    }
    *o = 0;
    j = json_string(buf); /* still NULL for overlong forms and surrogates: give up on those */
    free(buf);
    return j ? j : json_string("\xef\xbf\xbd");
}

/* rep->json: the file's JSON object (--json). outs/info may be NULL (no outputs known). */
static void make_json(struct tn_job_report *rep, const char *in_path, const char *reason,
                      const char *code, struct tn_output_file *outs,
                      const struct tn_rpc_thumb *info, const bool *fresh, size_t count,
                      const struct tn_rpc_result *res, uint64_t size, const char *transfer,
                      double ms, unsigned retries)
{
    static const char *status[] = {"ok", "failed", "skipped"};
    json_t *o = json_object(), *arr = json_array();
    json_object_set_new(o, "input", jstr(in_path));
    json_object_set_new(o, "status", json_string(status[rep->outcome]));
    json_object_set_new(o, "reason", reason ? jstr(reason) : json_null());
    if (code)
        json_object_set_new(o, "code", json_string(code));
    for (size_t i = 0; outs && i < count; i++) {
        json_t *x = json_object();
        json_object_set_new(x, "path", jstr(outs[i].final));
        if (fresh && fresh[i]) {
            json_object_set_new(x, "written", json_false());
        } else if (info) {
            static const char *kinds[] = {"image", "sprite", "vtt"};
            json_object_set_new(x, "written", json_true());
            json_object_set_new(x, "kind", json_string(kinds[info[i].kind % 3]));
            if (info[i].kind != 2) {
                json_object_set_new(x, "width", json_integer(info[i].width));
                json_object_set_new(x, "height", json_integer(info[i].height));
            }
            json_object_set_new(x, "time", json_real(info[i].actual_time));
            json_object_set_new(x, "requested_time", json_real(info[i].requested_time));
            json_object_set_new(x, "bytes", json_integer((json_int_t)info[i].size));
            json_object_set_new(x, "reason",
                                info[i].reason[0] ? jstr(info[i].reason) : json_null());
        }
        json_array_append_new(arr, x);
    }
    json_object_set_new(o, "outputs", arr);
    json_object_set_new(o, "size", json_integer((json_int_t)size));
    json_object_set_new(o, "bytes_sent", json_integer(res ? (json_int_t)res->bytes_sent : 0));
    json_object_set_new(o, "transfer", transfer ? json_string(transfer) : json_null());
    json_object_set_new(o, "retries", json_integer(retries));
    json_object_set_new(o, "ms", json_real(ms));
    rep->json = json_dumps(o, JSON_COMPACT);
    json_decref(o);
}

/* WebVTT cues in the storyboard's text: one "-->" each. */
static unsigned count_cues(int fd)
{
    char buf[65536];
    unsigned n = 0;
    off_t off = 0;
    ssize_t got;
    char prev[2] = {0, 0};
    while ((got = pread(fd, buf, sizeof(buf), off)) > 0) {
        for (ssize_t i = 0; i < got; i++) {
            if (buf[i] == '>' && prev[0] == '-' && prev[1] == '-')
                n++;
            prev[0] = prev[1];
            prev[1] = buf[i];
        }
        off += got;
    }
    return n;
}

/* "ok   a.mp4 -> out/a.png (320x180, t=6.00s, 12 ms)", one entry per output. */
static char *ok_line(const struct tn_client_options *opt, const char *rel,
                     struct tn_output_file *outs, const struct tn_rpc_thumb *info,
                     const bool *fresh, size_t count, unsigned cues, double ms, unsigned retries,
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
        if (fresh[i]) {
            fprintf(f, "(up to date");
        } else if (info[i].kind == 1 && cues) { /* a sprite sheet: what is in it */
            unsigned cols = opt->columns ? opt->columns : 10;
            cols = cues < cols ? cues : cols;
            unsigned rows = (cues + cols - 1) / cols;
            fprintf(f, "(%ux%u, %u tiles of %ux%u in %u x %u", info[i].width, info[i].height, cues,
                    info[i].width / cols, info[i].height / rows, cols, rows);
        } else if (info[i].kind == 2) {
            fprintf(f, "(WebVTT, %u cues", cues);
        } else {
            fprintf(f, "(%ux%u, t=%.2fs%s%s", info[i].width, info[i].height, info[i].actual_time,
                    info[i].reason[0] ? ", " : "", info[i].reason);
        }
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
                const struct tn_walk_entry *e, const struct tn_job_plan *plan,
                struct tn_job_report *rep)
{
    bool keep_ext = plan->keep_ext;
    const char *collides_with = plan->collides_with;
    const struct tn_client_options *opt = env->opt;
    size_t count = tn_options_outputs(opt);
    bool every = opt->every > 0 && !opt->storyboard; /* the server decides how many: 1..count */
    struct tn_output_file outs[TN_JOB_MAX_TIMES];
    struct tn_rpc_thumb info[TN_JOB_MAX_TIMES];
    struct tn_time_point times[TN_JOB_MAX_TIMES];
    size_t map[TN_JOB_MAX_TIMES];
    bool fresh[TN_JOB_MAX_TIMES];   /* exists and up to date: not asked for */
    bool replace[TN_JOB_MAX_TIMES]; /* exists, out of date (or --overwrite): replaced */
    size_t n_send = 0, n_ready = 0;
    char *in_path = NULL, *stamp = NULL, why[1024];
    const char *reason = NULL, *code = NULL, *transfer = NULL;
    int fd = -1, r;
    double t0 = (double)tn_mono_ms();
    struct stat st;
    struct tn_rpc_result res;
    unsigned attempt = 0;
    bool json_outs = false, got_info = false;
    unsigned cues = 0;

    memset(rep, 0, sizeof(*rep));
    memset(info, 0, sizeof(info));
    memset(&res, 0, sizeof(res));
    memset(fresh, 0, sizeof(fresh));
    rep->outcome = TN_JOB_FAILED;
    in_path = env->single ? strdup(opt->input_file) : tn_output_join(env->input_dir, e->rel, "");
    if (!in_path) {
        rep->line = format_line("FAIL %s: out of memory", e->rel);
        goto out;
    }
    if (e->err) {
        reason = strerror(e->err);
        rep->line = format_line("FAIL %s: %s", e->rel, reason);
        goto out;
    }
    if ((reason = plan->skip)) {
        rep->outcome = TN_JOB_SKIPPED;
        rep->line = format_line("skip %s: %s", e->rel, reason);
        goto out;
    }
    /* O_NONBLOCK: if the file was replaced by a FIFO since the walk, don't hang in open(). */
    fd = open(in_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(why, sizeof(why), "cannot open: %s", strerror(errno));
        reason = why;
        rep->line = format_line("FAIL %s: %s", e->rel, reason);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        reason = env->single ? "not a regular file" : "no longer a regular file";
        rep->line = format_line("FAIL %s: %s", e->rel, reason);
        goto out;
    }
    if (!(stamp = tn_stamp_make(opt, &st))) {
        reason = "out of memory";
        rep->line = format_line("FAIL %s: out of memory", e->rel);
        goto out;
    }
    bool to_stdout = env->single && !strcmp(opt->output_file, "-");
    for (size_t i = 0; i < count; i++) {
        char *p = output_path(env, e->rel, keep_ext, i, count);
        r = p ? tn_output_init(&outs[i], p) : -ENOMEM;
        free(p);
        if (r < 0) {
            reason = "out of memory";
            rep->line = format_line("FAIL %s: out of memory", e->rel);
            goto out;
        }
        n_ready++;
        struct stat ost;
        bool exists = !to_stdout && lstat(outs[i].final, &ost) == 0;
        /* A storyboard's WebVTT carries no record: it is as fresh as its sprite sheet. */
        bool vtt = opt->storyboard && i == 1;
        fresh[i] =
            exists && !opt->overwrite && (vtt ? fresh[0] : tn_stamp_matches(outs[i].final, stamp));
        replace[i] = exists && !fresh[i];
        if (!fresh[i])
            map[n_send++] = i;
    }
    json_outs = true;
    if (opt->count || every || opt->storyboard) {
        /* One call makes them all: all up to date (--every: the first) = skip, else all again. */
        if ((every && fresh[0]) || n_send == 0) {
            n_send = 0;
            if (every) /* report the outputs there are, not all the possible ones */
                for (count = 1; count < n_ready && fresh[count]; count++)
                    ;
        } else {
            for (size_t i = 0; i < count; i++) {
                map[i] = i;
                replace[i] = replace[i] || fresh[i];
                fresh[i] = false;
            }
            n_send = count;
        }
    }
    if (collides_with) {
        snprintf(why, sizeof(why), "output %s would also be the output of %s", outs[0].final,
                 collides_with);
        reason = why;
        rep->line = format_line("FAIL %s: %s", e->rel, reason);
        goto out;
    }
    if (n_send == 0) {
        rep->outcome = TN_JOB_SKIPPED;
        reason = "up to date";
        rep->line = format_line("skip %s: up to date (%s)", e->rel, outs[0].final);
        goto out;
    }
    /* Ask only for the missing thumbnails; map[] turns the server's index back into ours. */
    for (size_t k = 0; k < n_send && opt->n_times; k++)
        times[k] = opt->times[map[k]];

    if (!to_stdout && (r = tn_output_check_parent(outs[0].final)) < 0) {
        snprintf(why, sizeof(why), "cannot create %s: %s", outs[0].final, strerror(-r));
        reason = why;
        rep->line = format_line("FAIL %s: %s", e->rel, reason);
        goto out;
    }

    const char *slash = strrchr(in_path, '/');
    struct tn_rpc_request req = {
        .fd = fd,
        .size = (uint64_t)st.st_size,
        .file_name = env->single ? (slash ? slash + 1 : in_path) : e->rel,
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
        .animated = opt->animated,
        .anim_start = opt->anim_start,
        .anim_end = opt->anim_end,
        .fps = opt->fps,
        .local_path = env->single ? (slash ? slash + 1 : in_path) : e->rel,
    };
    /* pull and local mode */
    if (opt->local)
        req.transfer = TN_RPC_LOCAL;
    else if (tn_options_pulls(opt, req.size))
        req.transfer = TN_RPC_PULL;
    transfer = req.transfer == TN_RPC_PULL    ? "pull"
               : req.transfer == TN_RPC_LOCAL ? "local"
                                              : "upload";
    struct sink_ctx sctx = {.outs = outs, .map = map, .info = info};
    struct tn_rpc_sink sink = {
        .ctx = &sctx, .begin = sink_begin, .data = sink_data, .sent = sink_sent};
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
        if (res.local || res.abandoned || !transient || attempt >= opt->retries || *env->stop)
            break;
        tn_log_debug("%s: %s: %s (attempt %u of %u)", e->rel, tn_code_name((int)res.code),
                     res.message, attempt + 1, opt->retries + 1);
        backoff(attempt++, env->stop);
    }
    rep->interrupted = res.interrupted || *env->stop;
    rep->abandoned = res.abandoned;

    if (res.local || res.code != GRPC_STATUS_OK) {
        const char *sep = res.message[0] ? ": " : "";
        char after[48] = "";
        if (attempt)
            snprintf(after, sizeof(after), " (after %u attempts)", attempt + 1);
        rep->unauthenticated = !res.local && res.code == GRPC_STATUS_UNAUTHENTICATED;
        if (!res.local)
            code = tn_code_name((int)res.code);
        snprintf(why, sizeof(why), "%s%s", res.message, after);
        reason = why;
        if (res.local)
            rep->line = format_line("FAIL %s: %s%s", e->rel, res.message, after);
        else
            rep->line = format_line("FAIL %s: %s%s%s%s", e->rel, code, sep, res.message, after);
        goto out;
    }
    if (every) { /* only what arrived: indices 0..thumbnails-1 */
        n_send = res.thumbnails;
        count = res.thumbnails;
    }
    got_info = true;
    if (opt->storyboard && outs[1].fd >= 0)
        cues = count_cues(outs[1].fd);
    for (size_t k = 0; k < n_send; k++) {
        size_t i = map[k];
        /* The record: inside a PNG/JPEG before the rename, else a sidecar after it. */
        bool inl = !to_stdout && tn_stamp_inline(outs[i].final);
        bool record = !to_stdout && !(opt->storyboard && i == 1);
        if (record && inl && (r = tn_stamp_attach(outs[i].final, outs[i].fd, stamp)) < 0)
            tn_log_warn("%s: no record of how it was made (%s): a re-run will make it again",
                        outs[i].final, strerror(-r));
        if ((r = tn_output_commit(&outs[i], opt->overwrite || replace[i])) < 0) {
            snprintf(why, sizeof(why), "cannot write %s: %s", outs[i].final,
                     r == -EEXIST ? "appeared meanwhile, not replaced" : strerror(-r));
            reason = why;
            rep->line = format_line("FAIL %s: %s", e->rel, reason);
            goto out; /* the outputs already renamed stay: each one is complete */
        }
        if (record && !inl && (r = tn_stamp_attach(outs[i].final, -1, stamp)) < 0)
            tn_log_warn("%s: cannot write its record (%s): a re-run will make it again",
                        outs[i].final, strerror(-r));
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
                 (unsigned long long)req.size, transfer);
    rep->outcome = TN_JOB_OK;
    rep->line = ok_line(opt, e->rel, outs, info, fresh, count, cues, (double)tn_mono_ms() - t0,
                        attempt, how[0] ? how : NULL);

out:
    if (opt->json)
        make_json(rep, in_path ? in_path : e->rel, rep->outcome == TN_JOB_OK ? NULL : reason, code,
                  json_outs ? outs : NULL, got_info ? info : NULL, fresh, count,
                  got_info || code ? &res : NULL, fd >= 0 ? (uint64_t)st.st_size : 0, transfer,
                  (double)tn_mono_ms() - t0, attempt);
    for (size_t i = 0; i < n_ready; i++)
        tn_output_free(&outs[i]);
    if (fd >= 0)
        close(fd);
    free(in_path);
    free(stamp);
}
