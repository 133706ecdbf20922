/*
 * The decode worker's job loop.
 *
 * DESIGN. Forked by the master before the front exists, so it never shares
 * gRPC's threads. It blocks in recvmsg() on the shared job queue (the kernel
 * hands each job to one idle worker), answers on the job's own reply socket
 * (ACK with our pid, one RESULT per thumbnail carrying a sealed memfd, DONE),
 * and closes both fds before taking the next job. The reply socket doubles as
 * the cancel signal: the front closes it to abandon a job, which the engine
 * notices in its reads and we notice as EPIPE.
 *
 * Signals: TERM/INT kill (fast stop: the front sees EOF before DONE and
 * answers UNAVAILABLE); QUIT is a graceful stop that finishes the current job;
 * USR1 reopens the log file between jobs; HUP is the master's business.
 *
 * Sandbox (sandbox.h, on unless --no-sandbox): once set up, the worker runs
 * under a seccomp filter that allows no open(). So on USR1 a sandboxed worker
 * cannot reopen the log: it exits instead (at once when idle, else after its
 * job), and the master's respawn hands the new worker the reopened log fd. It
 * also leaves with _exit(): a library's atexit handler (LeakSanitizer's forks
 * a tracer) would be killed by the filter.
 */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "ipc.h"
#include "log.h"
#include "metrics.h"
#include "pull.h"
#include "sandbox.h"
#include "status.h"

#ifdef TN_TESTING
/* Test builds only (cmake -DTN_TESTING=ON): a job for a file of exactly this
 * name makes the worker create a network socket mid-job, as a compromised
 * decoder calling home would, so that tests can watch the sandbox stop it.
 * (socket, not open: an ASan build's filter lets the runtime open files
 * read-only for its reports; no build allows socket.) */
#define TEST_VIOLATION_NAME "tn-test-sandbox-violation"
#endif

static volatile sig_atomic_t quit_requested;
static volatile sig_atomic_t reopen_requested;
static volatile sig_atomic_t idle; /* blocked in recvmsg(), no job in hand */
static int sandboxed;              /* the seccomp filter is on: no open() */

/* Leave the process: _exit under the sandbox (see the top comment). */
__attribute__((noreturn)) static void leave(int status)
{
    if (sandboxed)
        _exit(status);
    exit(status);
}

static void on_quit(int sig)
{
    (void)sig;
    /* Idle, there is nothing to finish, and recvmsg() is restarted after a
     * handler (tn_ipc_recv retries EINTR), so waiting for a flag would wait
     * for the next job. _exit is async-signal-safe. */
    if (idle)
        _exit(0);
    quit_requested = 1;
}

static void on_usr1(int sig)
{
    (void)sig;
    /* Sandboxed and idle: nothing to finish, and no way to reopen the log;
     * the master respawns us with its new log fd. */
    if (sandboxed && idle)
        _exit(0);
    reopen_requested = 1;
}

static int set_signals(void)
{
    struct sigaction sa;
    sigset_t none;

    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_DFL;
    static const int dfl[] = {SIGTERM, SIGINT, SIGCHLD, SIGALRM};
    for (size_t i = 0; i < sizeof(dfl) / sizeof(dfl[0]); i++)
        if (sigaction(dfl[i], &sa, NULL) < 0)
            return -errno;
    sa.sa_handler = SIG_IGN; /* a closed reply socket is EPIPE, not death */
    if (sigaction(SIGPIPE, &sa, NULL) < 0 || sigaction(SIGHUP, &sa, NULL) < 0)
        return -errno;
    sa.sa_handler = on_quit;
    if (sigaction(SIGQUIT, &sa, NULL) < 0)
        return -errno;
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) < 0)
        return -errno;
    /* the master blocks signals around fork: don't inherit that */
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        return -errno;
    return 0;
}

static int init(int queue_fd, const struct tn_worker_options *opt)
{
    pid_t parent = getppid();

    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
        tn_log_error("prctl(PR_SET_PDEATHSIG) failed: %s", strerror(errno));
        return -1;
    }
    /* The master may have died before prctl took effect. (A master that died
     * even earlier is noticed as EOF on the queue once the front is gone.) */
    if (getppid() != parent) {
        tn_log_error("the master exited while this worker was starting");
        return -1;
    }
    int err = set_signals();
    if (err < 0) {
        tn_log_error("cannot set up signal handling: %s", strerror(-err));
        return -1;
    }
    if (opt->memory_limit) {
        struct rlimit rl = {.rlim_cur = opt->memory_limit, .rlim_max = opt->memory_limit};
        if (setrlimit(RLIMIT_AS, &rl) < 0) {
            tn_log_error("setrlimit(RLIMIT_AS, %" PRIu64 ") failed: %s", opt->memory_limit,
                         strerror(errno));
            return -1;
        }
    }
    if (queue_fd < 0) {
        tn_log_error("no job queue fd");
        return -1;
    }
    tn_engine_global_init();
    tn_metrics_worker_attach();
    if (opt->sandbox) {
        char why[256];
        tn_log_connect(); /* syslog: the socket, while socket() is still allowed */
        if ((err = tn_sandbox_warm_up()) < 0) {
            tn_log_error("cannot prepare the sandbox: starting a thread failed: %s",
                         strerror(-err));
            return -1;
        }
        int n = tn_sandbox_install(why, sizeof(why));
        if (n < 0) {
            tn_log_error("%s (the kernel needs CONFIG_SECCOMP_FILTER; or run with --no-sandbox)",
                         why);
            return -1;
        }
        sandboxed = 1;
        tn_log_info("sandbox on: %d syscalls allowed", n);
    }
    return 0;
}

/* ---- one job ------------------------------------------------------------ */

struct job_ctx {
    const struct tn_ipc_job *job;
    int reply;
    unsigned results;
    int peer_gone;
};

/* The front closed the job's reply socket. It does so when the call ends; past the
 * job's deadline the call ended because of it, and the job's log line says so. */
static int reply_gone(struct job_ctx *ctx)
{
    ctx->peer_gone = 1;
    int64_t dl = ctx->job->deadline_ms;
    return dl > 0 && tn_mono_ms() >= dl ? TN_DEADLINE_EXCEEDED : TN_CANCELLED;
}

static int emit_result(void *opaque, const struct tn_engine_result *r)
{
    struct job_ctx *ctx = opaque;
    struct tn_ipc_result msg;

    memset(&msg, 0, sizeof(msg));
    tn_ipc_header_init(&msg.h, TN_IPC_RESULT, ctx->job->h.job_id);
    msg.index = r->index;
    msg.width = r->width;
    msg.height = r->height;
    msg.format = (uint32_t)r->format;
    msg.requested_time = r->requested_time;
    msg.actual_time = r->actual_time;
    msg.size = r->size;
    msg.kind = (uint32_t)r->kind;
    snprintf(msg.reason, sizeof(msg.reason), "%s", r->reason ? r->reason : "");
    int err = tn_ipc_send(ctx->reply, &msg, sizeof(msg), &r->fd, 1, 0);
    close(r->fd);
    if (err == -EPIPE)
        return reply_gone(ctx);
    if (err < 0) {
        tn_log_error("sendmsg() failed while sending a result of job %" PRIu64 ": %s",
                     ctx->job->h.job_id, strerror(-err));
        return TN_INTERNAL;
    }
    ctx->results++;
    return TN_OK;
}

/* "10%,1.5s,..." for the log line, cut short if long. */
static void format_times(const struct tn_job_opts *o, char *buf, size_t len)
{
    size_t off = 0;

    buf[0] = '\0';
    if (o->animation) {
        snprintf(buf, len, "animation %g%s..%g%s at %g fps", o->anim_start.value,
                 o->anim_start.kind == TN_TIME_PERCENT ? "%" : "s", o->anim_end.value,
                 o->anim_end.kind == TN_TIME_PERCENT ? "%"
                 : o->anim_end.kind                  ? "s"
                                                     : "+3s",
                 o->fps);
        return;
    }
    if (o->count || o->every > 0) {
        if (o->count)
            snprintf(buf, len, "count %u", o->count);
        else
            snprintf(buf, len, "every %gs", o->every);
        return;
    }
    for (uint32_t i = 0; i < o->n_times && i < TN_JOB_MAX_TIMES && off + 1 < len; i++) {
        const struct tn_time_point *t = &o->times[i];
        int n = snprintf(buf + off, len - off, "%s%g%s", i ? "," : "", t->value,
                         t->kind == TN_TIME_SECONDS ? "s" : "%");
        if (n < 0)
            break;
        off += (size_t)n;
    }
    if (off + 1 >= len && len > 4)
        memcpy(buf + len - 4, "...", 4);
}

/* Monotonic microseconds: a keyframe job takes a few ms, so the job line's time
 * needs a finer grain than tn_mono_ms() to be worth comparing. */
static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void run_job(struct tn_ipc_job *job, int video, int reply,
                    const struct tn_worker_options *opt)
{
    int64_t t0 = mono_us();
    struct job_ctx ctx = {.job = job, .reply = reply};
    struct tn_engine_limits limits = {.max_pixels = opt->max_pixels};
    char err[TN_IPC_MESSAGE_MAX] = "";
    char times[128], name[TN_IPC_NAME_MAX], codec[32] = "";
    int code, ret;

    job->file_name[TN_IPC_NAME_MAX - 1] = '\0';
    format_times(&job->opts, times, sizeof(times));
    /* the client's name goes into our log lines: no control characters */
    snprintf(name, sizeof(name), "%s", job->file_name[0] ? job->file_name : "-");
    for (char *c = name; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    /* results are sent blocking: the front reads them as they come */
    int fl = fcntl(reply, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK))
        fcntl(reply, F_SETFL, fl & ~O_NONBLOCK);

    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, job->h.job_id);
    ack.pid = (int32_t)getpid();
    ret = tn_ipc_send(reply, &ack, sizeof(ack), NULL, 0, 0);
    if (ret < 0) {
        /* EPIPE: the front gave up on the job before we took it */
        tn_log_info("job %" PRIu64 " %s: dropped, the front is gone (%s)", job->h.job_id, name,
                    strerror(-ret));
        return;
    }
#ifdef TEST_VIOLATION_NAME
    if (!strcmp(job->file_name, TEST_VIOLATION_NAME)) {
        tn_log_warn("test hook: job %" PRIu64 " creates a socket (forbidden when sandboxed)",
                    job->h.job_id);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0)
            close(fd);
    }
#endif

    uint64_t size = job->file_size;
    struct tn_pull *pull = NULL;
    if (job->pull && (size == 0 || tn_pull_new(&pull, video, reply, size, job->h.job_id,
                                               job->deadline_ms) < 0)) {
        code = size ? TN_UNAVAILABLE : TN_INTERNAL;
        snprintf(err, sizeof(err), "%s",
                 size ? "the decode worker is out of memory; retrying is safe"
                      : "bad job: pull mode without a file size");
        goto done;
    }
    if (size == 0) {
        struct stat sb;
        if (fstat(video, &sb) == 0 && sb.st_size > 0)
            size = (uint64_t)sb.st_size;
    }
    struct tn_engine_request req = {
        .fd = video,
        .size = size,
        .file_name = job->file_name,
        .opts = job->opts,
        .deadline_ms = job->deadline_ms,
        .cancel_fd = reply,
        .limits = &limits,
        .read = pull ? tn_pull_read : NULL,
        .read_opaque = pull,
        .codec_out = codec,
        .codec_out_len = sizeof(codec),
    };
    int64_t t_engine = tn_mono_ms();
    code = tn_engine_run(&req, emit_result, &ctx, err, sizeof(err));
    if (pull) {
        uint64_t bytes, requests;
        tn_pull_stats(pull, &bytes, &requests);
        tn_log_info("job %" PRIu64 " %s: pulled %" PRIu64 " of %" PRIu64 " bytes in %" PRIu64
                    " requests",
                    job->h.job_id, name, bytes, size, requests);
        tn_pull_free(&pull);
    }
    tn_metrics_decode(codec, job->opts.mode, (double)(tn_mono_ms() - t_engine) / 1000);

done:
    if (!ctx.peer_gone) {
        struct tn_ipc_done done;
        memset(&done, 0, sizeof(done));
        tn_ipc_header_init(&done.h, TN_IPC_DONE, job->h.job_id);
        done.code = code;
        if (code != TN_OK)
            snprintf(done.message, sizeof(done.message), "%s", err);
        ret = tn_ipc_send(reply, &done, sizeof(done), NULL, 0, 0);
        if (ret < 0 && ret != -EPIPE)
            tn_log_error("sendmsg() failed while sending the end of job %" PRIu64 ": %s",
                         job->h.job_id, strerror(-ret));
    }
    tn_log_info("job %" PRIu64 " %s [%s]: %s%s%s, %u thumbnails, %.3f ms", job->h.job_id, name,
                times, tn_code_name(code), code != TN_OK ? ": " : "", code != TN_OK ? err : "",
                ctx.results, (double)(mono_us() - t0) / 1000);
}

/* ---- the loop ----------------------------------------------------------- */

/* n +- 10 %, drawn once per worker, so that workers started together (at start-up
 * or a reload) do not all exit and reinitialize at the same moment. */
static uint64_t recycle_after(uint64_t n)
{
    if (n == 0)
        return 0;
    uint64_t span = n / 10;
    if (span == 0)
        return n;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_nsec;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    uint64_t v = n - span + x % (2 * span + 1);
    return v ? v : 1;
}

void tn_worker_main(int queue_fd, const struct tn_worker_options *opt)
{
    char role[32];
    union tn_ipc_any msg;
    int fds[TN_IPC_MAX_FDS];
    int nfds;

    snprintf(role, sizeof(role), "worker#%d", opt->index);
    tn_log_set_role(role);
    if (init(queue_fd, opt) < 0)
        exit(2);
    uint64_t max_jobs = recycle_after(opt->max_jobs), jobs = 0;
    if (opt->ready)
        *opt->ready = 1;
    tn_log_debug("ready");

    for (;;) {
        if (quit_requested) {
            tn_log_info("stopping (graceful)");
            leave(0);
        }
        if (reopen_requested) {
            reopen_requested = 0;
            if (sandboxed) {
                tn_log_info("log reopen: a sandboxed worker cannot open files; exiting to be "
                            "replaced");
                leave(0);
            }
            tn_log_reopen();
        }
        idle = 1;
        if (quit_requested || (sandboxed && reopen_requested)) /* a signal since the checks */
            leave(0);
        int n = tn_ipc_recv(queue_fd, &msg, sizeof(msg), fds, &nfds, 0);
        idle = 0;
        if (n == 0) {
            tn_log_info("job queue closed, exiting");
            leave(0);
        }
        if (n == -EPROTO || n == -EMSGSIZE) {
            tn_log_warn("bad message on the job queue, skipped: %s", strerror(-n));
            continue;
        }
        if (n < 0) {
            tn_log_error("recvmsg() failed while reading a job: %s", strerror(-n));
            leave(1);
        }
        /* The front checked the options: a job that fails the check is a bug
         * there (or another version): say so rather than look like a dead worker. */
        char why[TN_IPC_MESSAGE_MAX - 16] = "";
        int bad = msg.h.type != TN_IPC_JOB || nfds != 2 ||
                  tn_job_opts_check(&msg.job.opts, why, sizeof(why)) != TN_OK;
        if (bad && msg.h.type == TN_IPC_JOB && nfds == 2) {
            struct tn_ipc_done done;
            memset(&done, 0, sizeof(done));
            tn_ipc_header_init(&done.h, TN_IPC_DONE, msg.h.job_id);
            done.code = TN_INTERNAL;
            snprintf(done.message, sizeof(done.message), "bad job: %s", why);
            tn_ipc_send(fds[1], &done, sizeof(done), NULL, 0, 0);
        }
        if (bad) {
            tn_log_warn("malformed job %" PRIu64 " skipped (type %u, %d fds): %s", msg.h.job_id,
                        msg.h.type, nfds, why[0] ? why : "not a job with 2 fds");
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            continue;
        }
        tn_metrics_worker_busy(1);
        run_job(&msg.job, fds[0], fds[1], opt);
        close(fds[0]);
        close(fds[1]);
        tn_metrics_worker_busy(0);
        if (max_jobs && ++jobs >= max_jobs) {
            tn_log_info("recycling after %" PRIu64 " jobs (--max-jobs-per-worker)", jobs);
            leave(TN_EXIT_RECYCLED); /* _exit under the sandbox */
        }
    }
}
