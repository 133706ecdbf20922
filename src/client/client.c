/*
 * thumbnail_client: the batch client. Walks INPUT_DIR, sends every regular
 * file to a thumbnail_server over gRPC (C core API), and writes the
 * thumbnails under OUTPUT_DIR.
 *
 * DESIGN. The files are listed and sorted up front (deterministic order, a
 * known total for the progress bar, output-name collisions found before any
 * upload). Then --jobs threads share one channel; each pulls the next file
 * index from a counter and drives that file's call synchronously on its own
 * completion queue (see rpc.h). Before any work the channel must become READY
 * within --connect-timeout, so an unreachable server is one clear error
 * (exit 2) instead of a FAIL line per file. SIGINT/SIGTERM only set a flag:
 * calls in flight are cancelled, their temporary files removed, no new file
 * is started, and the summary is still printed (exit 130).
 *
 * Several --server values become one channel with the round_robin policy
 * (target.h): calls go to every server that is up in turn, a server that
 * goes down is skipped, and a call it dropped is retried (UNAVAILABLE) on the
 * others. --health, instead, checks each server on a channel of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

enum { EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    stop_flag = sig;
}

/* The shared state of a batch run. */
struct run {
    struct tn_job_env env;
    const struct tn_walk_list *files;
    const char **collides; /* per file: an earlier file with the same output, or NULL */
    pthread_mutex_t lock;  /* protects everything below */
    size_t next;
    size_t ok, failed, skipped, interrupted;
    bool unauthenticated; /* a call was refused UNAUTHENTICATED: start no more files */
    uint64_t thumbnails;
};

static void *worker_main(void *arg)
{
    struct run *run = arg;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    for (;;) {
        pthread_mutex_lock(&run->lock);
        size_t i = run->next < run->files->n && !stop_flag && !run->unauthenticated ? run->next++
                                                                                    : SIZE_MAX;
        pthread_mutex_unlock(&run->lock);
        if (i == SIZE_MAX)
            break;

        struct tn_job_report rep;
        tn_job_run(&run->env, cq, &run->files->v[i], run->collides[i], &rep);

        pthread_mutex_lock(&run->lock);
        switch (rep.outcome) {
        case TN_JOB_OK: run->ok++; break;
        case TN_JOB_SKIPPED: run->skipped++; break;
        case TN_JOB_FAILED: run->failed++; break;
        }
        run->interrupted += rep.interrupted;
        run->unauthenticated = run->unauthenticated || rep.unauthenticated;
        run->thumbnails += rep.thumbnails;
        pthread_mutex_unlock(&run->lock);

        const char *line = rep.line ? rep.line : "FAIL (out of memory)";
        bool show = !run->env.opt->quiet || rep.outcome == TN_JOB_FAILED;
        tn_progress_file_done(show ? line : NULL);
        free(rep.line);
    }
    tn_rpc_cq_destroy(&cq);
    return NULL;
}

struct stem {
    char *stem;
    size_t index;
};

static int by_stem(const void *a, const void *b)
{
    const struct stem *x = a, *y = b;
    int c = strcmp(x->stem, y->stem);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/*
 * "a.mp4" and "a.mkv" would both write a.png: the first (in sorted order)
 * wins, each later one gets collides[i] = the winner's name. Returns 0 or -ENOMEM.
 */
static int find_collisions(const struct tn_walk_list *files, const char **collides)
{
    struct stem *s = calloc(files->n ? files->n : 1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    size_t n = 0;
    int ret = 0;
    for (size_t i = 0; i < files->n; i++) {
        if (files->v[i].err)
            continue;
        if (!(s[n].stem = tn_output_stem(files->v[i].rel))) {
            ret = -ENOMEM;
            goto out;
        }
        s[n++].index = i;
    }
    qsort(s, n, sizeof(*s), by_stem);
    for (size_t k = 1, first = 0; k < n; k++) {
        if (strcmp(s[k].stem, s[first].stem) == 0)
            collides[s[k].index] = files->v[s[first].index].rel;
        else
            first = k;
    }
out:
    for (size_t k = 0; k < n; k++)
        free(s[k].stem);
    free(s);
    return ret;
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
    if (tn_rpc_wait_ready(ch, opt->connect_timeout, &state) < 0) {
        char what[600];
        if (n > 1)
            snprintf(what, sizeof(what), "any of the %zu servers (%s, ...)", n, servers[0]);
        else
            snprintf(what, sizeof(what), "server at %s", servers[0]);
        fprintf(stderr, "thumbnail_client: cannot reach %s (%s after %.1f s)%s\n", what, state,
                opt->connect_timeout,
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

/* One Probe call per file; its JSON on stdout. 0, EXIT_FAILED if any file
 * failed, EXIT_USAGE if the server is unreachable. */
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
    for (size_t i = 0; i < opt->n_probe_files; i++) {
        const char *path = opt->probe_files[i];
        struct stat st;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, "thumbnail_client: %s: %s\n", path,
                    fd < 0 ? strerror(errno) : "not a regular file");
            if (fd >= 0)
                close(fd);
            rc = EXIT_FAILED;
            continue;
        }
        const char *base = strrchr(path, '/');
        struct tn_rpc_request req = {.fd = fd,
                                     .size = (uint64_t)st.st_size,
                                     .file_name = base ? base + 1 : path,
                                     .chunk_size = opt->chunk_size,
                                     .timeout = opt->timeout,
                                     .authorization = opt->authorization,
                                     .probe = true};
        /* a big file is probed by pull mode: the server reads only its headers */
        if (tn_options_pulls(opt, req.size))
            req.transfer = TN_RPC_PULL;
        struct probe_buf buf = {0};
        struct tn_rpc_sink sink = {.ctx = &buf, .begin = probe_begin, .data = probe_data};
        struct tn_rpc_result res;
        tn_rpc_generate(ch, cq, &req, &sink, &res);
        close(fd);
        if (!res.local && res.code == GRPC_STATUS_OK && buf.data) {
            fputs(buf.data, stdout);
            fflush(stdout);
        } else {
            fprintf(stderr, "thumbnail_client: %s: %s%s%s\n", path,
                    res.local ? "" : tn_code_name((int)res.code),
                    res.local || !res.message[0] ? "" : ": ", res.message);
            rc = EXIT_FAILED;
        }
        free(buf.data);
    }
    tn_rpc_cq_destroy(&cq);
    grpc_channel_destroy(ch);
out:
    grpc_shutdown();
    return rc;
}

static int run_batch(const struct tn_client_options *opt)
{
    struct tn_walk_list files = {0};
    const char **collides = NULL;
    grpc_channel *ch = NULL;
    bool grpc_up = false;
    int rc = EXIT_USAGE;
    char err[4200];
    struct stat in_st, out_st;

    if (stat(opt->input_dir, &in_st) < 0) {
        fprintf(stderr, "thumbnail_client: input directory %s: %s\n", opt->input_dir,
                strerror(errno));
        goto out;
    }
    if (!S_ISDIR(in_st.st_mode)) {
        fprintf(stderr, "thumbnail_client: input directory %s: not a directory\n", opt->input_dir);
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
            printf("no files in %s\n", opt->input_dir);
        rc = 0;
        goto out;
    }
    collides = calloc(files.n, sizeof(*collides));
    if (!collides || find_collisions(&files, collides) < 0) {
        fprintf(stderr, "thumbnail_client: out of memory\n");
        goto out;
    }
    int r = tn_output_make_dir(opt->output_dir);
    if (r < 0) {
        fprintf(stderr, "thumbnail_client: cannot create output directory %s: %s\n",
                opt->output_dir, strerror(-r));
        goto out;
    }

    grpc_init();
    grpc_up = true;
    warn_plaintext_token(opt);
    if (!(ch = connect_server(opt)))
        goto out;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second ^C kills at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct run run = {
        .env = {.opt = opt, .channel = ch, .stop = &stop_flag},
        .files = &files,
        .collides = collides,
    };
    pthread_mutex_init(&run.lock, NULL);
    size_t n_threads = opt->jobs < files.n ? opt->jobs : files.n;
    pthread_t threads[TN_CLIENT_MAX_JOBS];
    size_t started = 0;
    double t0 = ((double)tn_mono_ms() / 1e3);
    tn_progress_init(!opt->quiet && isatty(STDERR_FILENO), files.n);
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
    double wall = ((double)tn_mono_ms() / 1e3) - t0;
    tn_progress_finish();
    pthread_mutex_destroy(&run.lock);

    size_t not_started = files.n - run.next;
    if (!opt->quiet) {
        char sent[32], rate[32], video[32];
        uint64_t bytes = tn_progress_bytes();
        tn_progress_fmt_bytes(sent, sizeof(sent), (double)bytes);
        tn_progress_fmt_bytes(video, sizeof(video), (double)tn_progress_video_bytes());
        tn_progress_fmt_bytes(rate, sizeof(rate), wall > 0 ? (double)bytes / wall : 0);
        printf("%s: %zu ok, %zu failed, %zu skipped", stop_flag ? "interrupted" : "done", run.ok,
               run.failed, run.skipped);
        if (not_started)
            printf(", %zu not started", not_started);
        printf("; %s sent for %s of video in %.2f s (%s/s); %.1f thumbnails/s\n", sent, video, wall,
               rate, wall > 0 ? (double)run.thumbnails / wall : 0);
    }
    if (run.unauthenticated && not_started)
        fprintf(stderr,
                "thumbnail_client: the server refused our credentials (UNAUTHENTICATED); "
                "%zu files not started: check --auth-token-file\n",
                not_started);
    rc = stop_flag ? EXIT_INTERRUPTED : run.failed ? EXIT_FAILED : 0;

out:
    if (ch)
        grpc_channel_destroy(ch);
    if (grpc_up)
        grpc_shutdown();
    free(collides);
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
    int rc = opt.probe ? run_probe(&opt) : opt.health ? run_health(&opt) : run_batch(&opt);
    tn_options_free(&opt);
    return rc;
}
