/*
 * thumbnail_client: the batch client. Walks INPUT_DIR, sends every regular
 * file to a thumbnail_server over gRPC (C core API), and writes the
 * thumbnails under OUTPUT_DIR.
 *
 * DESIGN. The files are listed, sorted and filtered up front (deterministic
 * order, a known total for the progress bar, output names settled before any
 * upload: two inputs that would share one keep their extensions). Then --jobs
 * threads share one channel; each pulls the next file index from a counter
 * and drives that file's call synchronously on its own completion queue (see
 * rpc.h). Before any work the channel must become READY within
 * --connect-timeout, so an unreachable server is one clear error (exit 2)
 * instead of a FAIL line per file; a refused connection or an unknown name is
 * reported at once, with the OS's reason. SIGINT/SIGTERM only set a flag:
 * calls in flight are cancelled, their temporary files removed, no new file
 * is started, and the summary is still printed (exit 128 + the signal: 130,
 * 143). Temporary files that a killed client left behind are removed by the
 * next run.
 *
 * Local mode over a folder (--local without --per-file) against one server
 * is one Batch call instead (run_local_batch()): every file is planned as
 * above, those that need all their outputs go as the call's paths, and each
 * file's events are written and reported as its own Generate call would
 * have been (the same lines, --json objects, records and retries: a file the
 * call could not finish, or that failed in a way Generate would retry, is
 * sent again on its own). A server without Batch (UNIMPLEMENTED) gets one
 * Generate per file.
 *
 * Several --server values become one channel with the round_robin policy
 * (target.h): calls go to every server that is up in turn, a server that
 * goes down is skipped, and a call it dropped is retried (UNAVAILABLE) on the
 * others. --health, instead, checks each server on a channel of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <grpc/grpc.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "filter.h"
#include "grpc/health/v1/health.pb-c.h"
#include "ipc.h" /* tn_mono_ms */
#include "job.h"
#include "log.h"
#include "options.h"
#include "output.h"
#include "progress.h"
#include "rpc.h"
#include "status.h"
#include "target.h"
#include "walk.h"

enum { EXIT_FAILED = 1, EXIT_USAGE = 2 };

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    stop_flag = sig;
}

/* The shared state of a batch run. */
struct run {
    struct tn_job_env env;
    const struct tn_walk_list *files;
    struct tn_job_plan *plans; /* per file */
    pthread_mutex_t lock;      /* protects everything below */
    size_t next;
    size_t ok, failed, skipped, interrupted;
    bool unauthenticated; /* a call was refused UNAUTHENTICATED: start no more files */
    uint64_t thumbnails;
    /* local batch (run_local_batch()): per file, a job still to send on its own
     * (worker_main() takes them), and the first attempt's result if the Batch
     * call made one; NULL otherwise */
    struct tn_job **jobs;
    struct tn_rpc_result *firsts;
    bool *has_first;
};

static void report(struct run *run, struct tn_job_report *rep);
static void *worker_main(void *arg);

/* The Batch call's view of the run: its k-th path is file idx[k]. */
struct local_batch {
    struct run *run;
    size_t *idx;
};

static const struct tn_rpc_sink *lb_sink(void *ctx, size_t k)
{
    struct local_batch *lb = ctx;
    return tn_job_sink(lb->run->jobs[lb->idx[k]]);
}

static void lb_queued(void *ctx, size_t k)
{
    struct local_batch *lb = ctx;
    tn_job_started(lb->run->jobs[lb->idx[k]]);
}

/* A file's DONE: finish it now, unless Generate would retry it (then it is
 * sent again on its own, its first attempt counted). */
static void lb_done(void *ctx, size_t k, const struct tn_rpc_result *r)
{
    struct local_batch *lb = ctx;
    struct run *run = lb->run;
    size_t i = lb->idx[k];
    struct tn_job *j = run->jobs[i];
    if (r->code != GRPC_STATUS_OK && tn_job_transient(j, r)) {
        run->firsts[i] = *r;
        run->has_first[i] = true;
        return;
    }
    run->jobs[i] = NULL;
    struct tn_job_report rep;
    tn_job_call(j, NULL, r); /* takes r as the result: no call */
    tn_job_finish(j, &rep);
    report(run, &rep);
}

/*
 * --local over a folder: plan every file, send those that need all their
 * outputs as one Batch call, then the rest (and what the call left) one by
 * one on `threads` threads as before. Returns false when out of memory.
 */
static bool run_local_batch(struct run *run, size_t threads)
{
    size_t n = run->files->n;
    struct local_batch lb = {.run = run};
    const char **paths = calloc(n, sizeof(*paths));
    lb.idx = calloc(n, sizeof(*lb.idx));
    run->jobs = calloc(n, sizeof(*run->jobs));
    run->firsts = calloc(n, sizeof(*run->firsts));
    run->has_first = calloc(n, sizeof(*run->has_first));
    if (!paths || !lb.idx || !run->jobs || !run->firsts || !run->has_first) {
        free(paths);
        free(lb.idx);
        return false;
    }
    size_t nb = 0;
    /* The call's options: a batchable file's request, copied (a file may be
     * finished and freed while the call goes on); its file fields unused. */
    struct tn_rpc_request req;
    struct tn_time_point times[TN_JOB_MAX_TIMES];
    memset(&req, 0, sizeof(req));
    for (size_t i = 0; i < n && !stop_flag; i++) {
        struct tn_job_report rep;
        struct tn_job *j = tn_job_prepare(&run->env, &run->files->v[i], &run->plans[i], &rep);
        run->next = i + 1;
        if (!j) {
            report(run, &rep);
            continue;
        }
        run->jobs[i] = j;
        if (tn_job_batchable(j)) {
            paths[nb] = run->files->v[i].rel;
            lb.idx[nb++] = i;
            req = *tn_job_request(j);
        }
    }
    if (nb && !stop_flag) {
        grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
        struct tn_rpc_batch_sink bs = {
            .ctx = &lb, .sink = lb_sink, .done = lb_done, .queued = lb_queued};
        struct tn_rpc_result res;
        memcpy(times, req.times, req.n_times * sizeof(*times));
        req.times = times;
        req.fd = -1;
        req.file_name = req.local_path = NULL;
        tn_rpc_batch(run->env.channel, cq, &req, paths, nb, &bs, &res);
        if (res.code == GRPC_STATUS_UNIMPLEMENTED)
            tn_log_debug("the server has no Batch method: one Generate call per file");
        else if (res.local || res.code != GRPC_STATUS_OK)
            tn_log_debug("the Batch call ended with %s%s%s: the files it left go one by one",
                         res.local ? "" : tn_code_name((int)res.code), res.local ? "" : ": ",
                         res.message);
        if (res.abandoned)
            cq = NULL; /* gRPC still holds a batch on it: leak it */
        tn_rpc_cq_destroy(&cq);
    }
    free(paths);
    free(lb.idx);
    /* What is left goes one by one, as without Batch; after ^C, nothing is started. */
    run->next = 0;
    size_t started = 0;
    pthread_t tids[TN_CLIENT_MAX_JOBS];
    for (; started < threads; started++)
        if (pthread_create(&tids[started], NULL, worker_main, run) != 0)
            break;
    if (started == 0)
        worker_main(run);
    for (size_t t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    size_t left = 0;
    for (size_t i = 0; i < n; i++)
        if (run->jobs[i]) {
            tn_job_drop(run->jobs[i]);
            run->jobs[i] = NULL;
            left++;
        }
    run->next = n - left; /* the files not started, for the summary */
    return true;
}

/* Count a file's outcome and print its line. */
static void report(struct run *run, struct tn_job_report *rep)
{
    pthread_mutex_lock(&run->lock);
    switch (rep->outcome) {
    case TN_JOB_OK: run->ok++; break;
    case TN_JOB_SKIPPED: run->skipped++; break;
    case TN_JOB_FAILED: run->failed++; break;
    }
    run->interrupted += rep->interrupted;
    run->unauthenticated = run->unauthenticated || rep->unauthenticated;
    run->thumbnails += rep->thumbnails;
    pthread_mutex_unlock(&run->lock);

    const char *line = rep->line ? rep->line : "FAIL (out of memory)";
    bool show = !run->env.opt->quiet || rep->outcome == TN_JOB_FAILED;
    tn_progress_file_done(show ? line : NULL, rep->json);
    free(rep->line);
    free(rep->json);
}

static void *worker_main(void *arg)
{
    struct run *run = arg;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    for (;;) {
        pthread_mutex_lock(&run->lock);
        size_t i = run->next < run->files->n && !stop_flag && !run->unauthenticated ? run->next++
                                                                                    : SIZE_MAX;
        struct tn_job *j = NULL;
        const struct tn_rpc_result *first = NULL;
        if (i != SIZE_MAX && run->jobs) { /* local batch: the files left to send one by one */
            j = run->jobs[i];
            first = run->firsts && run->has_first[i] ? &run->firsts[i] : NULL;
            run->jobs[i] = NULL;
        }
        pthread_mutex_unlock(&run->lock);
        if (i == SIZE_MAX)
            break;

        struct tn_job_report rep;
        if (run->jobs) {
            if (!j)
                continue;
            tn_job_call(j, cq, first);
            tn_job_finish(j, &rep);
        } else {
            tn_job_run(&run->env, cq, &run->files->v[i], &run->plans[i], &rep);
        }
        if (rep.abandoned) /* gRPC still holds a batch on it: leak it, take a new one */
            cq = grpc_completion_queue_create_for_next(NULL);
        report(run, &rep);
    }
    tn_rpc_cq_destroy(&cq);
    return NULL;
}

struct name {
    char *name;
    size_t index;
};

static int by_name(const void *a, const void *b)
{
    const struct name *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/*
 * Sort the output names of the files to send; call dup(i, first) for each
 * file i whose name an earlier file `first` (in sorted order) has too.
 * Returns 0 or -ENOMEM.
 */
static int name_groups(struct run *run, void (*dup)(struct run *, size_t, size_t))
{
    const struct tn_walk_list *files = run->files;
    struct name *s = calloc(files->n ? files->n : 1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    size_t n = 0;
    int ret = 0;
    for (size_t i = 0; i < files->n; i++) {
        if (files->v[i].err || run->plans[i].skip)
            continue;
        if (!(s[n].name =
                  tn_job_output_name(run->env.opt, files->v[i].rel, run->plans[i].keep_ext))) {
            ret = -ENOMEM; /* --name was checked: only memory can run out */
            goto out;
        }
        s[n++].index = i;
    }
    qsort(s, n, sizeof(*s), by_name);
    for (size_t k = 1, first = 0; k < n; k++) {
        if (strcmp(s[k].name, s[first].name) == 0)
            dup(run, s[k].index, s[first].index);
        else
            first = k;
    }
out:
    for (size_t k = 0; k < n; k++)
        free(s[k].name);
    free(s);
    return ret;
}

static void keep_ext(struct run *run, size_t i, size_t first)
{
    run->plans[i].keep_ext = run->plans[first].keep_ext = true;
}

static void collide(struct run *run, size_t i, size_t first)
{
    run->plans[i].collides_with = run->files->v[first].rel;
}

/*
 * "a.mp4" and "a.avi" would both write a.png: without --name, every file of
 * such a group is named after its whole name (a.mp4.png, a.avi.png), so that
 * no name depends on which other files happen to exist. What still collides
 * (an explicit --name, or "a.mp4" next to "a.mp4.avi") fails: the first in
 * sorted order wins. Returns 0 or -ENOMEM.
 */
static int settle_names(struct run *run)
{
    if (!run->env.opt->name_template && name_groups(run, keep_ext) < 0)
        return -ENOMEM;
    return name_groups(run, collide);
}

/* plans[i].skip for each file the filters leave out (filter.h); reasons malloc'd. */
static int filter_files(const struct tn_client_options *opt, const char *dir,
                        const struct tn_walk_list *files, struct tn_job_plan *plans)
{
    for (size_t i = 0; i < files->n; i++) {
        char why[300];
        bool included;
        const char *r = tn_filter_name(opt, files->v[i].rel, &included, why, sizeof(why));
        if (!r && !included && !files->v[i].err) {
            char *p = NULL;
            int fd = asprintf(&p, "%s/%s", dir, files->v[i].rel) < 0
                         ? -1
                         : open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
            free(p);
            if (fd >= 0) {
                r = tn_filter_content(files->v[i].rel, fd, why, sizeof(why));
                close(fd);
            }
        }
        if (r && !(plans[i].skip = strdup(r)))
            return -ENOMEM;
    }
    return 0;
}

/*
 * The channel to servers[0..n-1] (one target, see target.h), READY; or NULL
 * after printing why (exit 2). grpc_init() done by caller. With several
 * servers, READY means at least one of them answered.
 */
static grpc_channel *connect_servers(const struct tn_client_options *opt,
                                     const char *const *servers, size_t n)
{
    struct tn_target t;
    char err[512];
    if (tn_target_build(servers, n, opt->tls, opt->tls_server_name, &t, err, sizeof(err)) < 0) {
        fprintf(stderr, "thumbnail_client: %s\n", err);
        return NULL;
    }
    struct tn_rpc_channel_config cc = {
        .target = t.uri,
        .authority = t.authority,
        .chunk_size = opt->chunk_size,
        .tls = opt->tls,
        .ca_pem = opt->ca_pem,
        .cert_pem = opt->cert_pem,
        .key_pem = opt->key_pem,
        .tls_server_name = opt->tls_server_name,
    };
    if (n > 1)
        tn_log_debug("balancing over %zu addresses: %s", t.n_addrs, t.uri);
    grpc_channel *ch = tn_rpc_channel_create(&cc); /* copies the strings it keeps */
    tn_target_free(&t);
    const char *state;
    int64_t t0 = tn_mono_ms();
    int r = tn_rpc_wait_ready(ch, opt->connect_timeout, true, &state);
    char why[512] = "";
    if (r == -ECONNREFUSED) {
        /* Every address failed once: ask the OS why. Nobody there (refused, no such
         * name or socket) is final; otherwise (TLS, a slow network) keep trying. */
        bool final = true;
        size_t off = 0;
        for (size_t i = 0; i < n && off < sizeof(why); i++) {
            char w[300];
            final = tn_target_diagnose(servers[i], w, sizeof(w)) == 1 && final;
            if (w[0])
                off += (size_t)snprintf(why + off, sizeof(why) - off, "%s%s", off ? "; " : "", w);
        }
        if (!final) {
            double left = opt->connect_timeout - (double)(tn_mono_ms() - t0) / 1e3;
            r = tn_rpc_wait_ready(ch, left > 0 ? left : 0, false, &state);
        }
    }
    if (r < 0) {
        char what[600];
        if (n > 1)
            snprintf(what, sizeof(what), "any of the %zu servers (%s, ...)", n, servers[0]);
        else
            snprintf(what, sizeof(what), "server at %s", servers[0]);
        if (r == -ECONNREFUSED)
            fprintf(stderr, "thumbnail_client: cannot reach %s: %s\n", what, why);
        else
            fprintf(stderr, "thumbnail_client: cannot reach %s (%s after %.1f s%s%s)%s\n", what,
                    state, opt->connect_timeout, why[0] ? "; " : "", why,
                    opt->tls ? "; with TLS, also check --ca, --cert/--key and that the server's "
                               "certificate names the host (or use --tls-server-name)"
                             : "");
        grpc_channel_destroy(ch);
        return NULL;
    }
    return ch;
}

static grpc_channel *connect_server(const struct tn_client_options *opt)
{
    return connect_servers(opt, opt->servers, opt->n_servers);
}

/* A token sent in clear text can be read (and replayed) by anyone on the path. */
static void warn_plaintext_token(const struct tn_client_options *opt)
{
    if (!opt->authorization || opt->tls)
        return;
    for (size_t i = 0; i < opt->n_servers; i++)
        if (strncmp(opt->servers[i], "unix:", 5) != 0) {
            fprintf(stderr, "thumbnail_client: warning: sending the auth token without TLS "
                            "(use --tls or a unix: socket)\n");
            return;
        }
}

/* --health of one server: 0 SERVING, 1 not serving or error, 2 unreachable. */
static int health_one(const struct tn_client_options *opt, const char *server)
{
    int rc = EXIT_USAGE;
    grpc_channel *ch = connect_servers(opt, &server, 1);
    if (!ch)
        return rc;
    int serving;
    char msg[512];
    double timeout = opt->timeout_set ? opt->timeout : TN_CLIENT_DEFAULT_HEALTH_TIMEOUT;
    grpc_status_code code = tn_rpc_health(ch, "", timeout, &serving, msg, sizeof(msg));
    if (code == GRPC_STATUS_OK) {
        const char *name = "UNKNOWN";
        switch (serving) {
        case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING:
            name = "SERVING";
            break;
        case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING:
            name = "NOT_SERVING";
            break;
        case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
            name = "SERVICE_UNKNOWN";
            break;
        }
        printf("%s: %s\n", server, name);
        rc = serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                 ? 0
                 : EXIT_FAILED;
    } else {
        /* Connected a moment ago, yet UNAVAILABLE: the server went away; treat as unreachable. */
        fprintf(stderr, "thumbnail_client: health check of %s failed: %s%s%s\n", server,
                tn_code_name((int)code), msg[0] ? ": " : "", msg);
        rc = code == GRPC_STATUS_UNAVAILABLE ? EXIT_USAGE : EXIT_FAILED;
    }
    if (!tn_rpc_wedged())
        grpc_channel_destroy(ch);
    return rc;
}

/* Each server on its own channel; the worst status wins (2 > 1 > 0). */
static int run_health(const struct tn_client_options *opt)
{
    grpc_init();
    int rc = 0;
    for (size_t i = 0; i < opt->n_servers; i++) {
        int r = health_one(opt, opt->servers[i]);
        rc = r > rc ? r : rc;
    }
    if (!tn_rpc_wedged())
        grpc_shutdown();
    return rc;
}

/* --probe: the sink keeps the JSON in memory */
struct probe_buf {
    char *data;
    size_t len;
};

static int probe_begin(void *ctx, const struct tn_rpc_thumb *t)
{
    struct probe_buf *b = ctx;
    free(b->data);
    b->len = 0;
    b->data = malloc(t->size + 1);
    return b->data ? 0 : -ENOMEM;
}

static int probe_data(void *ctx, uint32_t index, const void *p, size_t n)
{
    struct probe_buf *b = ctx;
    (void)index;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

/* One Probe of path (a regular file): its JSON, with "file" first, on stdout.
 * 0, or EXIT_FAILED after a message on stderr. */
static int probe_one(const struct tn_client_options *opt, grpc_channel *ch,
                     grpc_completion_queue **cq, const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "thumbnail_client: %s: %s\n", path,
                fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return EXIT_FAILED;
    }
    const char *base = strrchr(path, '/');
    struct tn_rpc_request req = {.fd = fd,
                                 .size = (uint64_t)st.st_size,
                                 .file_name = base ? base + 1 : path,
                                 .chunk_size = opt->chunk_size,
                                 .timeout = opt->timeout,
                                 .authorization = opt->authorization,
                                 .stop = &stop_flag,
                                 .probe = true};
    /* a big file is probed by pull mode: the server reads only its headers */
    if (tn_options_pulls(opt, req.size))
        req.transfer = TN_RPC_PULL;
    struct probe_buf buf = {0};
    struct tn_rpc_sink sink = {.ctx = &buf, .begin = probe_begin, .data = probe_data};
    struct tn_rpc_result res;
    tn_rpc_generate(ch, *cq, &req, &sink, &res);
    if (res.abandoned) /* gRPC still holds a batch on it: leak it, take a new one */
        *cq = grpc_completion_queue_create_for_next(NULL);
    close(fd);
    int rc = 0;
    if (!res.local && res.code == GRPC_STATUS_OK && buf.data && buf.data[0] == '{') {
        /* The server's object with the file's name put first, textually: the rest is
         * passed on exactly as the server wrote it. */
        json_t *name = json_string(path);
        char *quoted = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
        const char *rest = buf.data + 1 + strspn(buf.data + 1, " \t\r\n");
        printf("{\"file\":%s%s%s", quoted ? quoted : "null", *rest == '}' ? "" : ",", rest);
        if (buf.len && buf.data[buf.len - 1] != '\n')
            putchar('\n');
        fflush(stdout);
        free(quoted);
        json_decref(name);
    } else {
        fprintf(stderr, "thumbnail_client: %s: %s%s%s\n", path,
                res.local ? "" : tn_code_name((int)res.code),
                res.local || !res.message[0] ? "" : ": ",
                res.local || res.message[0] ? res.message : "");
        rc = EXIT_FAILED;
    }
    free(buf.data);
    return rc;
}

/* --probe FILE|DIR...: one Probe call per file (a directory: each video in it,
 * as the batch would send them). 0, EXIT_FAILED if any file failed, EXIT_USAGE
 * if the server is unreachable. */
static int run_probe(const struct tn_client_options *opt)
{
    grpc_init();
    int rc = EXIT_USAGE;
    grpc_completion_queue *cq = NULL;
    grpc_channel *ch = connect_server(opt);
    if (!ch)
        goto out;
    cq = grpc_completion_queue_create_for_next(NULL);
    rc = 0;
    for (size_t i = 0; i < opt->n_probe_files && !stop_flag; i++) {
        const char *path = opt->probe_files[i];
        struct stat st;
        if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
            int r = probe_one(opt, ch, &cq, path);
            rc = r > rc ? r : rc;
            continue;
        }
        struct tn_walk_list files = {0};
        char err[4200];
        if (tn_walk(path, NULL, &files, err, sizeof(err)) < 0) {
            fprintf(stderr, "thumbnail_client: %s\n", err);
            rc = EXIT_FAILED;
        }
        for (size_t k = 0; k < files.n && !stop_flag; k++) {
            char *p = tn_output_join(path, files.v[k].rel, "");
            char why[300];
            bool included;
            int fd = -1;
            const char *skip = p ? tn_filter_name(opt, files.v[k].rel, &included, why, sizeof(why))
                                 : "out of memory";
            if (!skip && !included && (fd = open(p, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) >= 0)
                skip = tn_filter_content(files.v[k].rel, fd, why, sizeof(why));
            if (fd >= 0)
                close(fd);
            if (skip && opt->verbose)
                fprintf(stderr, "thumbnail_client: %s: skipped: %s\n", p ? p : "?", skip);
            if (!skip) {
                int r = probe_one(opt, ch, &cq, p);
                rc = r > rc ? r : rc;
            }
            free(p);
        }
        tn_walk_free(&files);
    }
    tn_rpc_cq_destroy(&cq);
    if (!tn_rpc_wedged())
        grpc_channel_destroy(ch);
out:
    if (!tn_rpc_wedged())
        grpc_shutdown();
    return stop_flag ? 128 + stop_flag : rc;
}

static void on_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second ^C kills at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* The final line (and --json's final object). */
static void summary(const struct tn_client_options *opt, struct run *run, size_t not_started,
                    double wall)
{
    uint64_t bytes = tn_progress_bytes();
    if (!opt->quiet) {
        char sent[32], rate[32], video[32];
        tn_progress_fmt_bytes(sent, sizeof(sent), (double)bytes);
        tn_progress_fmt_bytes(video, sizeof(video), (double)tn_progress_video_bytes());
        tn_progress_fmt_bytes(rate, sizeof(rate), wall > 0 ? (double)bytes / wall : 0);
        FILE *f = tn_progress_lines();
        fprintf(f, "%s: %zu ok, %zu failed, %zu skipped", stop_flag ? "interrupted" : "done",
                run->ok, run->failed, run->skipped);
        if (not_started)
            fprintf(f, ", %zu not started", not_started);
        fprintf(f, "; %s sent for %s of video in %.2f s (%s/s); %.1f thumbnails/s\n", sent, video,
                wall, rate, wall > 0 ? (double)run->thumbnails / wall : 0);
        fflush(f);
    }
    if (opt->json) {
        json_t *o = json_pack(
            "{s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:o}}", "summary", "ok", (json_int_t)run->ok,
            "failed", (json_int_t)run->failed, "skipped", (json_int_t)run->skipped, "not_started",
            (json_int_t)not_started, "thumbnails", (json_int_t)run->thumbnails, "bytes_sent",
            (json_int_t)bytes, "video_bytes", (json_int_t)tn_progress_video_bytes(), "seconds",
            wall, "interrupted", stop_flag ? json_true() : json_false());
        char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (t)
            printf("%s\n", t);
        fflush(stdout);
        free(t);
        json_decref(o);
    }
}

/* One Batch call is served by one server: over several (--server repeated, or
 * a dns: name, which may resolve to several), the files go as Generate calls,
 * which the round_robin channel spreads. */
static bool one_server(const struct tn_client_options *opt)
{
    return opt->n_servers == 1 && strncmp(opt->servers[0], "dns:", 4) != 0;
}

static int run_batch(const struct tn_client_options *opt)
{
    struct tn_walk_list files = {0};
    struct tn_job_plan *plans = NULL;
    struct tn_job **run_jobs = NULL; /* run_local_batch()'s, freed here */
    struct tn_rpc_result *run_firsts = NULL;
    bool *run_has_first = NULL;
    grpc_channel *ch = NULL;
    bool grpc_up = false;
    int rc = EXIT_USAGE;
    char err[4200];
    struct stat in_st, out_st;
    bool single = opt->input_file != NULL;
    /* stdout carries a thumbnail or JSON: the lines for people go to stderr */
    FILE *lines = opt->json || (single && !strcmp(opt->output_file, "-")) ? stderr : stdout;

    if (single) {
        const char *base = strrchr(opt->input_file, '/');
        files.v = calloc(1, sizeof(*files.v));
        if (!files.v || !(files.v[0].rel = strdup(base ? base + 1 : opt->input_file))) {
            free(files.v);
            files.v = NULL;
            fprintf(stderr, "thumbnail_client: out of memory\n");
            goto out;
        }
        files.n = files.cap = 1;
    } else {
        if (stat(opt->input_dir, &in_st) < 0) {
            fprintf(stderr, "thumbnail_client: input directory %s: %s\n", opt->input_dir,
                    strerror(errno));
            goto out;
        }
        if (!S_ISDIR(in_st.st_mode)) {
            fprintf(stderr, "thumbnail_client: input directory %s: not a directory\n",
                    opt->input_dir);
            goto out;
        }
        bool out_exists = stat(opt->output_dir, &out_st) == 0;
        if (out_exists && !S_ISDIR(out_st.st_mode)) {
            fprintf(stderr, "thumbnail_client: output directory %s: not a directory\n",
                    opt->output_dir);
            goto out;
        }
        /* An output directory inside the input one is not input. */
        if (tn_walk(opt->input_dir, out_exists ? &out_st : NULL, &files, err, sizeof(err)) < 0) {
            fprintf(stderr, "thumbnail_client: %s\n", err);
            goto out;
        }
        if (files.n == 0) {
            if (!opt->quiet)
                fprintf(lines, "no files in %s\n", opt->input_dir);
            rc = 0;
            goto out;
        }
    }
    struct run run = {
        .env = {.opt = opt, .stop = &stop_flag, .input_dir = opt->input_dir, .single = single},
        .files = &files,
    };
    if (!(plans = calloc(files.n, sizeof(*plans))) ||
        (!single && filter_files(opt, opt->input_dir, &files, plans) < 0) ||
        (run.plans = plans, !single && settle_names(&run) < 0)) {
        fprintf(stderr, "thumbnail_client: out of memory\n");
        goto out;
    }
    if (!single) {
        int r = tn_output_make_dir(opt->output_dir);
        if (r < 0) {
            fprintf(stderr, "thumbnail_client: cannot create output directory %s: %s\n",
                    opt->output_dir, strerror(-r));
            goto out;
        }
        size_t stale = tn_output_clean_stale(opt->output_dir);
        if (stale)
            tn_log_info("removed %zu temporary files left by an interrupted run", stale);
    }

    on_signals();
    grpc_init();
    grpc_up = true;
    warn_plaintext_token(opt);
    if (!(ch = connect_server(opt)))
        goto out;
    run.env.channel = ch;

    pthread_mutex_init(&run.lock, NULL);
    size_t n_threads = opt->jobs < files.n ? opt->jobs : files.n;
    pthread_t threads[TN_CLIENT_MAX_JOBS];
    size_t started = 0;
    double t0 = ((double)tn_mono_ms() / 1e3);
    tn_progress_init(!opt->quiet && isatty(STDERR_FILENO) && !single, files.n, lines);
    if (opt->local && !single && !opt->per_file && one_server(opt)) {
        bool ok = run_local_batch(&run, n_threads);
        run_jobs = run.jobs;
        run_firsts = run.firsts;
        run_has_first = run.has_first;
        if (!ok) {
            fprintf(stderr, "thumbnail_client: out of memory\n");
            goto out;
        }
    } else {
        for (; started < n_threads; started++) {
            int e = pthread_create(&threads[started], NULL, worker_main, &run);
            if (e) {
                tn_log_error("pthread_create() failed: %s", strerror(e));
                break;
            }
        }
        if (started == 0)
            worker_main(&run); /* no threads at all: still do the work, one at a time */
        for (size_t i = 0; i < started; i++)
            pthread_join(threads[i], NULL);
    }
    double wall = ((double)tn_mono_ms() / 1e3) - t0;
    tn_progress_finish();
    pthread_mutex_destroy(&run.lock);

    size_t not_started = files.n - run.next;
    summary(opt, &run, not_started, wall);
    if (run.unauthenticated && not_started)
        fprintf(stderr,
                "thumbnail_client: the server refused our credentials (UNAUTHENTICATED); "
                "%zu files not started: check --auth-token-file\n",
                not_started);
    rc = stop_flag ? 128 + stop_flag : run.failed ? EXIT_FAILED : 0;

out:
    /* After an abandoned call gRPC would wait for it forever: leave it to exit(). */
    if (ch && !tn_rpc_wedged())
        grpc_channel_destroy(ch);
    if (grpc_up && !tn_rpc_wedged())
        grpc_shutdown();
    free(run_jobs);
    free(run_firsts);
    free(run_has_first);
    for (size_t i = 0; plans && i < files.n; i++)
        free((char *)plans[i].skip);
    free(plans);
    tn_walk_free(&files);
    return rc;
}

int main(int argc, char **argv)
{
    struct tn_client_options opt;
    switch (tn_options_parse(&opt, argc, argv)) {
    case TN_OPTIONS_EXIT_OK: return 0;
    case TN_OPTIONS_USAGE: return EXIT_USAGE;
    default: break;
    }
    tn_log_init("client", opt.verbose ? TN_LOG_DEBUG : TN_LOG_WARN, NULL);
    /* Lines from several threads, each written whole and in order with the bar on stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (opt.probe)
        on_signals();
    int rc = opt.probe ? run_probe(&opt) : opt.health ? run_health(&opt) : run_batch(&opt);
    tn_options_free(&opt);
    return rc;
}
