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

/* One file between its plan and its report: what tn_job_run() keeps across the call. */
struct tn_job {
    const struct tn_job_env *env;
    const struct tn_walk_entry *e;
    size_t count;
    bool every; /* the server decides how many: 1..count */
    struct tn_output_file outs[TN_JOB_MAX_TIMES];
    struct tn_rpc_thumb info[TN_JOB_MAX_TIMES];
    struct tn_time_point times[TN_JOB_MAX_TIMES];
    size_t map[TN_JOB_MAX_TIMES];
    bool fresh[TN_JOB_MAX_TIMES];   /* exists and up to date: not asked for */
    bool replace[TN_JOB_MAX_TIMES]; /* exists, out of date (or --overwrite): replaced */
    size_t n_send, n_ready;
    char *in_path, *stamp, why[1024];
    const char *reason, *code, *transfer;
    int fd;
    double t0;
    struct stat st;
    struct tn_rpc_result res;
    unsigned attempt;
    bool json_outs, got_info, to_stdout;
    unsigned cues;
    struct tn_rpc_request req;
    struct sink_ctx sctx;
    struct tn_rpc_sink sink;
};

/* The report of j (rep->line set by the caller or here), and j freed. */
static void job_end(struct tn_job *j, struct tn_job_report *rep)
{
    const struct tn_client_options *opt = j->env->opt;
    if (opt->json)
        make_json(rep, j->in_path ? j->in_path : j->e->rel,
                  rep->outcome == TN_JOB_OK ? NULL : j->reason, j->code,
                  j->json_outs ? j->outs : NULL, j->got_info ? j->info : NULL, j->fresh, j->count,
                  j->got_info || j->code ? &j->res : NULL, j->fd >= 0 ? (uint64_t)j->st.st_size : 0,
                  j->transfer, (double)tn_mono_ms() - j->t0, j->attempt);
    for (size_t i = 0; i < j->n_ready; i++)
        tn_output_free(&j->outs[i]);
    if (j->fd >= 0)
        close(j->fd);
    free(j->in_path);
    free(j->stamp);
    free(j);
}

struct tn_job *tn_job_prepare(const struct tn_job_env *env, const struct tn_walk_entry *e,
                              const struct tn_job_plan *plan, struct tn_job_report *rep)
{
    bool keep_ext = plan->keep_ext;
    const char *collides_with = plan->collides_with;
    const struct tn_client_options *opt = env->opt;
    int r;

    memset(rep, 0, sizeof(*rep));
    rep->outcome = TN_JOB_FAILED;
    struct tn_job *j = calloc(1, sizeof(*j));
    if (!j) {
        rep->line = format_line("FAIL %s: out of memory", e->rel);
        return NULL;
    }
    j->env = env;
    j->e = e;
    j->fd = -1;
    j->t0 = (double)tn_mono_ms();
    j->count = tn_options_outputs(opt);
    j->every = opt->every > 0 && !opt->storyboard;
    size_t count = j->count;
    j->in_path = env->single ? strdup(opt->input_file) : tn_output_join(env->input_dir, e->rel, "");
    if (!j->in_path) {
        rep->line = format_line("FAIL %s: out of memory", e->rel);
        goto done;
    }
    if (e->err) {
        j->reason = strerror(e->err);
        rep->line = format_line("FAIL %s: %s", e->rel, j->reason);
        goto done;
    }
    if ((j->reason = plan->skip)) {
        rep->outcome = TN_JOB_SKIPPED;
        rep->line = format_line("skip %s: %s", e->rel, j->reason);
        goto done;
    }
    /* O_NONBLOCK: if the file was replaced by a FIFO since the walk, don't hang in open(). */
    j->fd = open(j->in_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (j->fd < 0 || fstat(j->fd, &j->st) < 0) {
        snprintf(j->why, sizeof(j->why), "cannot open: %s", strerror(errno));
        j->reason = j->why;
        rep->line = format_line("FAIL %s: %s", e->rel, j->reason);
        goto done;
    }
    if (!S_ISREG(j->st.st_mode)) {
        j->reason = env->single ? "not a regular file" : "no longer a regular file";
        rep->line = format_line("FAIL %s: %s", e->rel, j->reason);
        goto done;
    }
    if (!(j->stamp = tn_stamp_make(opt, &j->st))) {
        j->reason = "out of memory";
        rep->line = format_line("FAIL %s: out of memory", e->rel);
        goto done;
    }
    j->to_stdout = env->single && !strcmp(opt->output_file, "-");
    for (size_t i = 0; i < count; i++) {
        char *p = output_path(env, e->rel, keep_ext, i, count);
        r = p ? tn_output_init(&j->outs[i], p) : -ENOMEM;
        free(p);
        if (r < 0) {
            j->reason = "out of memory";
            rep->line = format_line("FAIL %s: out of memory", e->rel);
            goto done;
        }
        j->n_ready++;
        struct stat ost;
        bool exists = !j->to_stdout && lstat(j->outs[i].final, &ost) == 0;
        /* A storyboard's WebVTT carries no record: it is as fresh as its sprite sheet. */
        bool vtt = opt->storyboard && i == 1;
        j->fresh[i] = exists && !opt->overwrite &&
                      (vtt ? j->fresh[0] : tn_stamp_matches(j->outs[i].final, j->stamp));
        j->replace[i] = exists && !j->fresh[i];
        if (!j->fresh[i])
            j->map[j->n_send++] = i;
    }
    j->json_outs = true;
    if (opt->count || j->every || opt->storyboard) {
        /* One call makes them all: all up to date (--every: the first) = skip, else all again. */
        if ((j->every && j->fresh[0]) || j->n_send == 0) {
            j->n_send = 0;
            if (j->every) /* report the outputs there are, not all the possible ones */
                for (j->count = 1; j->count < j->n_ready && j->fresh[j->count]; j->count++)
                    ;
        } else {
            for (size_t i = 0; i < count; i++) {
                j->map[i] = i;
                j->replace[i] = j->replace[i] || j->fresh[i];
                j->fresh[i] = false;
            }
            j->n_send = count;
        }
    }
    if (collides_with) {
        snprintf(j->why, sizeof(j->why), "output %s would also be the output of %s",
                 j->outs[0].final, collides_with);
        j->reason = j->why;
        rep->line = format_line("FAIL %s: %s", e->rel, j->reason);
        goto done;
    }
    if (j->n_send == 0) {
        rep->outcome = TN_JOB_SKIPPED;
        j->reason = "up to date";
        rep->line = format_line("skip %s: up to date (%s)", e->rel, j->outs[0].final);
        goto done;
    }
    /* Ask only for the missing thumbnails; map[] turns the server's index back into ours. */
    for (size_t k = 0; k < j->n_send && opt->n_times; k++)
        j->times[k] = opt->times[j->map[k]];

    if (!j->to_stdout && (r = tn_output_check_parent(j->outs[0].final)) < 0) {
        snprintf(j->why, sizeof(j->why), "cannot create %s: %s", j->outs[0].final, strerror(-r));
        j->reason = j->why;
        rep->line = format_line("FAIL %s: %s", e->rel, j->reason);
        goto done;
    }

    const char *slash = strrchr(j->in_path, '/');
    j->req = (struct tn_rpc_request){
        .fd = j->fd,
        .size = (uint64_t)j->st.st_size,
        .file_name = env->single ? (slash ? slash + 1 : j->in_path) : e->rel,
        .times = j->times,
        .n_times = opt->n_times ? j->n_send : 0,
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
        .local_path = env->single ? (slash ? slash + 1 : j->in_path) : e->rel,
    };
    /* pull and local mode */
    if (opt->local)
        j->req.transfer = TN_RPC_LOCAL;
    else if (tn_options_pulls(opt, j->req.size))
        j->req.transfer = TN_RPC_PULL;
    j->transfer = j->req.transfer == TN_RPC_PULL    ? "pull"
                  : j->req.transfer == TN_RPC_LOCAL ? "local"
                                                    : "upload";
    j->sctx = (struct sink_ctx){.outs = j->outs, .map = j->map, .info = j->info};
    j->sink = (struct tn_rpc_sink){
        .ctx = &j->sctx, .begin = sink_begin, .data = sink_data, .sent = sink_sent};
    return j;

done:
    job_end(j, rep);
    return NULL;
}

bool tn_job_batchable(const struct tn_job *j)
{
    /* every output asked for, with the run's options as they are */
    return !j->env->single && j->req.transfer == TN_RPC_LOCAL &&
           (!j->env->opt->n_times || j->n_send == j->count);
}

const struct tn_rpc_request *tn_job_request(const struct tn_job *j)
{
    return &j->req;
}

const struct tn_rpc_sink *tn_job_sink(const struct tn_job *j)
{
    return &j->sink;
}

void tn_job_started(struct tn_job *j)
{
    j->t0 = (double)tn_mono_ms();
}

/* After a failed attempt (j->res): discard what it wrote, and say whether to try
 * again (after the backoff, done here). */
static bool retry_after(struct tn_job *j)
{
    const struct tn_client_options *opt = j->env->opt;
    struct tn_rpc_result *res = &j->res;
    for (size_t i = 0; i < j->count; i++)
        tn_output_discard(&j->outs[i]);
    /* Retried: UNAVAILABLE, and CANCELLED that we did not ask for (local
     * is false) before any thumbnail: gRPC core cancels a call that reaches
     * a server in the moment its shutdown began, before the client got the
     * GOAWAY (a reload or a graceful stop). Generate has no side effects. */
    bool transient = res->code == GRPC_STATUS_UNAVAILABLE ||
                     (res->code == GRPC_STATUS_CANCELLED && res->thumbnails == 0);
    if (res->local || res->abandoned || !transient || j->attempt >= opt->retries || *j->env->stop)
        return false;
    tn_log_debug("%s: %s: %s (attempt %u of %u)", j->e->rel, tn_code_name((int)res->code),
                 res->message, j->attempt + 1, opt->retries + 1);
    backoff(j->attempt++, j->env->stop);
    return true;
}

bool tn_job_transient(const struct tn_job *j, const struct tn_rpc_result *r)
{
    bool transient = r->code == GRPC_STATUS_UNAVAILABLE ||
                     (r->code == GRPC_STATUS_CANCELLED && r->thumbnails == 0);
    return !r->local && !r->abandoned && transient && j->env->opt->retries > 0;
}

void tn_job_call(struct tn_job *j, grpc_completion_queue *cq, const struct tn_rpc_result *first)
{
    if (first) {
        j->res = *first;
        if ((j->res.local || j->res.code != GRPC_STATUS_OK) && !retry_after(j))
            return;
        if (!j->res.local && j->res.code == GRPC_STATUS_OK)
            return;
    }
    for (;;) {
        tn_rpc_generate(j->env->channel, cq, &j->req, &j->sink, &j->res);
        if (!j->res.local && j->res.code == GRPC_STATUS_OK)
            break;
        if (!retry_after(j))
            break;
    }
}

void tn_job_finish(struct tn_job *j, struct tn_job_report *rep)
{
    const struct tn_client_options *opt = j->env->opt;
    const struct tn_walk_entry *e = j->e;
    struct tn_rpc_result res = j->res;
    unsigned attempt = j->attempt;
    int r;

    memset(rep, 0, sizeof(*rep));
    rep->outcome = TN_JOB_FAILED;
    rep->interrupted = res.interrupted || *j->env->stop;
    rep->abandoned = res.abandoned;

    if (res.local || res.code != GRPC_STATUS_OK) {
        const char *sep = res.message[0] ? ": " : "";
        char after[48] = "";
        if (attempt)
            snprintf(after, sizeof(after), " (after %u attempts)", attempt + 1);
        rep->unauthenticated = !res.local && res.code == GRPC_STATUS_UNAUTHENTICATED;
        if (!res.local)
            j->code = tn_code_name((int)res.code);
        snprintf(j->why, sizeof(j->why), "%s%s", res.message, after);
        j->reason = j->why;
        if (res.local)
            rep->line = format_line("FAIL %s: %s%s", e->rel, res.message, after);
        else
            rep->line = format_line("FAIL %s: %s%s%s%s", e->rel, j->code, sep, res.message, after);
        goto out;
    }
    if (j->every) { /* only what arrived: indices 0..thumbnails-1 */
        j->n_send = res.thumbnails;
        j->count = res.thumbnails;
    }
    j->got_info = true;
    if (opt->storyboard && j->outs[1].fd >= 0)
        j->cues = count_cues(j->outs[1].fd);
    for (size_t k = 0; k < j->n_send; k++) {
        size_t i = j->map[k];
        /* The record: inside a PNG/JPEG before the rename, else a sidecar after it. */
        bool inl = !j->to_stdout && tn_stamp_inline(j->outs[i].final);
        bool record = !j->to_stdout && !(opt->storyboard && i == 1);
        if (record && inl && (r = tn_stamp_attach(j->outs[i].final, j->outs[i].fd, j->stamp)) < 0)
            tn_log_warn("%s: no record of how it was made (%s): a re-run will make it again",
                        j->outs[i].final, strerror(-r));
        if ((r = tn_output_commit(&j->outs[i], opt->overwrite || j->replace[i])) < 0) {
            snprintf(j->why, sizeof(j->why), "cannot write %s: %s", j->outs[i].final,
                     r == -EEXIST ? "appeared meanwhile, not replaced" : strerror(-r));
            j->reason = j->why;
            rep->line = format_line("FAIL %s: %s", e->rel, j->reason);
            goto out; /* the outputs already renamed stay: each one is complete */
        }
        if (record && !inl && (r = tn_stamp_attach(j->outs[i].final, -1, j->stamp)) < 0)
            tn_log_warn("%s: cannot write its record (%s): a re-run will make it again",
                        j->outs[i].final, strerror(-r));
        rep->thumbnails++;
    }
    char sent[32], total[32], how[96] = "";
    tn_progress_fmt_bytes(sent, sizeof(sent), (double)res.bytes_sent);
    tn_progress_fmt_bytes(total, sizeof(total), (double)j->req.size);
    tn_progress_add_video(j->req.size);
    if (j->req.transfer == TN_RPC_PULL)
        snprintf(how, sizeof(how), "pull: sent %s of %s in %u ranges", sent, total, res.ranges);
    else if (j->req.transfer == TN_RPC_LOCAL)
        snprintf(how, sizeof(how), "local: sent 0 B of %s", total);
    tn_log_debug("%s: sent %llu of %llu bytes (%s)", e->rel, (unsigned long long)res.bytes_sent,
                 (unsigned long long)j->req.size, j->transfer);
    rep->outcome = TN_JOB_OK;
    rep->line = ok_line(opt, e->rel, j->outs, j->info, j->fresh, j->count, j->cues,
                        (double)tn_mono_ms() - j->t0, attempt, how[0] ? how : NULL);

out:
    job_end(j, rep);
}

void tn_job_drop(struct tn_job *j)
{
    for (size_t i = 0; i < j->count; i++)
        tn_output_discard(&j->outs[i]);
    struct tn_job_report rep;
    memset(&rep, 0, sizeof(rep));
    job_end(j, &rep);
    free(rep.json);
}

void tn_job_run(const struct tn_job_env *env, grpc_completion_queue *cq,
                const struct tn_walk_entry *e, const struct tn_job_plan *plan,
                struct tn_job_report *rep)
{
    struct tn_job *j = tn_job_prepare(env, e, plan, rep);
    if (!j)
        return;
    tn_job_call(j, cq, NULL);
    tn_job_finish(j, rep);
}
