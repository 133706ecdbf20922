/*
 * The master process: creates the job queue, forks the decode workers and then
 * the front, respawns whichever dies, and turns signals into orderly stops.
 *
 * DESIGN. nginx's model (ngx_process.c, ngx_process_cycle.c): a fixed process
 * table with one slot per child (workers 0..N-1, then the front), signal
 * handlers that only set flags, and one loop that sleeps in sigsuspend() with
 * every handled signal blocked outside it, so a flag can never be set between
 * the check and the sleep. Respawn backoff and stop deadlines are wake-ups from
 * a one-shot ITIMER_REAL (SIGALRM), compared against CLOCK_MONOTONIC.
 *
 * The master never calls grpc_init() and never starts a thread: that is what
 * makes fork() safe here at any time (gRPC core is not fork-safe), so a dead
 * front can be replaced as easily as a dead worker.
 *
 * Exit status 2 from a child means "could not initialize" (front.h, worker.h):
 * that slot is not respawned. If the front cannot start, or no worker can,
 * the server is useless: stop everything and exit 1. A slot whose child keeps
 * dying within a second of starting is respawned with exponential backoff and,
 * past a threshold, rested for a minute; it is never abandoned for good, since
 * a worker can also die quickly for a reason that is not its own (a crafted
 * video that crashes the decoder, received right after a respawn), and giving
 * up for good would let a client take the whole service down.
 */
#include "master.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "front.h"
#include "ipc.h"
#include "log.h"
#include "worker.h"

#define MAX_SLOTS (256 + 1)        /* --workers is at most 256, plus the front */
#define QUICK_DEATH_MS 1000        /* died sooner than this after fork: back off */
#define BACKOFF_MIN_MS 100         /* first delay after a quick death */
#define BACKOFF_MAX_MS 5000        /* cap of the exponential backoff */
#define CRASH_LOOP_DEATHS 10       /* more quick deaths than this ... */
#define CRASH_LOOP_WINDOW_MS 60000 /* ... within this window: rest the slot */
#define CRASH_LOOP_REST_MS 60000   /* for this long */
#define STOP_TIMEOUT_MS 5000       /* SIGTERM -> SIGKILL */
#define KILL_TIMEOUT_MS 5000       /* SIGKILL -> give up waiting */
#define DRAIN_EXTRA_MS 5000        /* front drain deadline = grace + this */
#define QUEUE_SNDBUF (1 << 20)     /* wish; capped by net.core.wmem_max */

enum role { ROLE_WORKER, ROLE_FRONT };

enum slot_state {
    SLOT_RUNNING, /* pid is alive (or not reaped yet) */
    SLOT_WAITING, /* dead, respawn due at respawn_at_ms */
    SLOT_FATAL,   /* exited 2: could not initialize, never respawned */
    SLOT_DONE,    /* ended during a stop */
};

struct slot {
    pid_t pid;
    enum role role;
    int index; /* worker number; 0 for the front */
    enum slot_state state;
    char name[24]; /* "worker#3", "front": also the child's log role; fits any int */
    int64_t started_ms;
    int64_t respawn_at_ms;
    int quick_fails;         /* consecutive quick deaths: the backoff exponent */
    int64_t window_start_ms; /* crash-loop guard */
    int window_deaths;
};

enum phase {
    PHASE_RUNNING,
    PHASE_DRAINING, /* SIGQUIT: the front drains; workers still serve (and respawn) */
    PHASE_STOPPING, /* every child has had SIGTERM */
    PHASE_KILLING,  /* every child still alive has had SIGKILL */
};

struct master {
    const struct tn_config *cfg;
    pid_t pid;
    /* The job queue. The master keeps BOTH ends open for its whole life: it
     * must be able to hand q[0] to a respawned worker and q[1] to a respawned
     * front, and holding q[1] also means workers never see EOF on the queue
     * while the front is being replaced. It never reads or writes them. */
    int q[2];
    struct slot slots[MAX_SLOTS];
    int n_workers;
    struct slot *front; /* == &slots[n_workers] */
    enum phase phase;
    int64_t deadline_ms; /* of the current phase, when not RUNNING */
    bool front_killed;   /* DRAINING: the front overran its drain deadline */
    int exit_status;
};

static volatile sig_atomic_t sig_child, sig_terminate, sig_quit, sig_hup, sig_usr1, sig_alarm;
static volatile sig_atomic_t last_terminate_sig;

static const int handled_signals[] = {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGALRM};
#define N_HANDLED (sizeof(handled_signals) / sizeof(handled_signals[0]))

static void on_signal(int sig)
{
    switch (sig) {
    case SIGCHLD: sig_child = 1; break;
    case SIGTERM:
    case SIGINT:
        sig_terminate = 1;
        last_terminate_sig = sig;
        break;
    case SIGQUIT: sig_quit = 1; break;
    case SIGHUP: sig_hup = 1; break;
    case SIGUSR1: sig_usr1 = 1; break;
    case SIGALRM: sig_alarm = 1; break;
    default: break;
    }
}

static const char *sig_name(int sig)
{
    const char *abbr = sigabbrev_np(sig);
    return abbr ? abbr : "?";
}

/* Install the flag-setting handlers; every handled signal stays blocked except
 * inside sigsuspend(). Returns 0 or -errno. */
static int setup_signals(void)
{
    struct sigaction sa;
    sigset_t set;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return -errno;

    sigemptyset(&set);
    for (size_t i = 0; i < N_HANDLED; i++)
        sigaddset(&set, handled_signals[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;

    sa.sa_handler = on_signal;
    sa.sa_mask = set;
    for (size_t i = 0; i < N_HANDLED; i++) {
        /* SA_NOCLDSTOP: a stopped child (SIGSTOP, a debugger) is not an event. */
        sa.sa_flags = handled_signals[i] == SIGCHLD ? SA_NOCLDSTOP : 0;
        if (sigaction(handled_signals[i], &sa, NULL) < 0)
            return -errno;
    }
    return 0;
}

/* Wake up in delay_ms (> 0), or never (<= 0). */
static void arm_timer(int64_t delay_ms)
{
    struct itimerval it;
    memset(&it, 0, sizeof(it));
    if (delay_ms > 0) {
        it.it_value.tv_sec = delay_ms / 1000;
        it.it_value.tv_usec = (suseconds_t)(delay_ms % 1000) * 1000;
    }
    setitimer(ITIMER_REAL, &it, NULL);
}

/* Close every fd >= 3 except the ones in keep[] (n <= 2). */
static void close_other_fds(int a, int b)
{
    int lo = a < b ? a : b, hi = a < b ? b : a;
    unsigned from = 3;
    int keep[2] = {lo, hi};
    for (int i = 0; i < 2; i++) {
        if (keep[i] < 3 || (unsigned)keep[i] < from)
            continue;
        if ((unsigned)keep[i] > from)
            close_range(from, (unsigned)keep[i] - 1, 0);
        from = (unsigned)keep[i] + 1;
    }
    close_range(from, ~0u, 0);
}

/*
 * In the child, right after fork(): undo what the master set up for itself,
 * keep only the fds this child owns, and become a worker or the front.
 */
__attribute__((noreturn)) static void run_child(const struct master *m, const struct slot *s)
{
    struct sigaction sa;
    sigset_t none;
    bool front = s->role == ROLE_FRONT;
    int own_q = front ? m->q[1] : m->q[0];

    /* The master's handlers would only set the master's flags here. Signals
     * are still blocked, so anything sent meanwhile waits for the new
     * disposition. SIGUSR1 (log reopen) is forwarded to every child but its
     * default action is to terminate: ignore it until the worker or front
     * installs its own handler. SIGPIPE stays ignored, as in the master. */
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_HANDLED; i++) {
        sa.sa_handler = handled_signals[i] == SIGUSR1 ? SIG_IGN : SIG_DFL;
        sigaction(handled_signals[i], &sa, NULL);
    }

    tn_log_set_role(s->name);

    /* A child keeps stdin/stdout/stderr, the log fd and its end of the queue;
     * anything else the master inherited (from whoever started it) would leak. */
    close_other_fds(tn_log_fd(), own_q);

    /* If the master dies, the front stops its gRPC server (and frees its
     * port) and the workers go at once: nothing else would ever reap them.
     * The master may already be gone by the time this runs: check. */
    prctl(PR_SET_PDEATHSIG, front ? SIGTERM : SIGKILL);
    if (getppid() != m->pid)
        _exit(1);

    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (front)
        _exit(tn_front_main(m->cfg, own_q));
    struct tn_worker_options opt = {
        .index = s->index,
        .max_pixels = m->cfg->max_pixels,
        .memory_limit = m->cfg->worker_memory,
        .sandbox = m->cfg->sandbox,
    };
    tn_worker_main(own_q, &opt);
}

static void spawn(struct master *m, struct slot *s)
{
    int64_t now = tn_mono_ms();
    pid_t pid = fork();
    if (pid < 0) {
        tn_log_error("fork() failed while spawning %s: %s; retrying in %d ms", s->name,
                     strerror(errno), BACKOFF_MAX_MS);
        s->state = SLOT_WAITING;
        s->respawn_at_ms = now + BACKOFF_MAX_MS;
        return;
    }
    if (pid == 0)
        run_child(m, s);
    s->pid = pid;
    s->state = SLOT_RUNNING;
    s->started_ms = now;
    tn_log_info("spawned %s pid %d", s->name, (int)pid);
}

static void describe_status(int st, char *buf, size_t len)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS)
        /* The worker's seccomp filter (sandbox.c) kills the whole process;
         * which syscall it was is only in the kernel's audit log. */
        snprintf(buf, len,
                 "killed by the sandbox (SIGSYS: a forbidden system call; the kernel "
                 "log names it)");
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "killed by signal %d (SIG%s)%s", WTERMSIG(st), sig_name(WTERMSIG(st)),
                 WCOREDUMP(st) ? ", core dumped" : "");
    else
        snprintf(buf, len, "ended with wait status 0x%x", (unsigned)st);
}

static bool alive(const struct slot *s)
{
    return s->state == SLOT_RUNNING;
}

static int n_alive(const struct master *m)
{
    int n = 0;
    for (int i = 0; i <= m->n_workers; i++)
        n += alive(&m->slots[i]);
    return n;
}

static void signal_slot(const struct slot *s, int sig)
{
    /* pid > 0 always: kill(0 or -1, ...) would hit the wrong processes. */
    if (alive(s) && s->pid > 0 && kill(s->pid, sig) < 0 && errno != ESRCH)
        tn_log_error("kill(%s %d, SIG%s) failed: %s", s->name, (int)s->pid, sig_name(sig),
                     strerror(errno));
}

static void signal_all(const struct master *m, int sig)
{
    for (int i = 0; i <= m->n_workers; i++)
        signal_slot(&m->slots[i], sig);
}

/* Fast stop: SIGTERM to every child; SIGKILL after STOP_TIMEOUT_MS. Pending
 * respawns are cancelled. status: what the master will exit with (the worse
 * of this and any earlier one). */
static void begin_stop(struct master *m, int status)
{
    if (status > m->exit_status)
        m->exit_status = status;
    if (m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING)
        return;
    for (int i = 0; i <= m->n_workers; i++)
        if (!alive(&m->slots[i]) && m->slots[i].state == SLOT_WAITING)
            m->slots[i].state = SLOT_DONE;
    m->phase = PHASE_STOPPING;
    m->deadline_ms = tn_mono_ms() + STOP_TIMEOUT_MS;
    signal_all(m, SIGTERM);
}

/* Graceful stop: the front drains first (SIGQUIT), the workers keep serving it;
 * they get SIGTERM once the front is gone (see the main loop). */
static void begin_drain(struct master *m)
{
    if (m->phase != PHASE_RUNNING)
        return;
    if (!alive(m->front)) {
        if (m->front->state == SLOT_WAITING)
            m->front->state = SLOT_DONE;
        tn_log_info("graceful stop: no front is running; stopping the workers");
        begin_stop(m, 0);
        return;
    }
    m->phase = PHASE_DRAINING;
    m->deadline_ms = tn_mono_ms() + (int64_t)(m->cfg->grace_s * 1000) + DRAIN_EXTRA_MS;
    tn_log_info("graceful stop: front %d has %gs to finish in-flight calls", (int)m->front->pid,
                m->cfg->grace_s);
    signal_slot(m->front, SIGQUIT);
}

/* After a child of a running server died: when to respawn it. */
static void schedule_respawn(struct slot *s, int64_t now)
{
    int64_t lived = now - s->started_ms;
    int64_t delay = 0;

    if (lived >= QUICK_DEATH_MS) {
        s->quick_fails = 0;
    } else {
        s->quick_fails++;
        delay = BACKOFF_MIN_MS;
        for (int i = 1; i < s->quick_fails && delay < BACKOFF_MAX_MS; i++)
            delay *= 2;
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
        if (now - s->window_start_ms >= CRASH_LOOP_WINDOW_MS) {
            s->window_start_ms = now;
            s->window_deaths = 0;
        }
        if (++s->window_deaths > CRASH_LOOP_DEATHS) {
            tn_log_error("%s died within %d ms of starting %d times in %d s: crash loop; not "
                         "respawning it for %d s",
                         s->name, QUICK_DEATH_MS, s->window_deaths, CRASH_LOOP_WINDOW_MS / 1000,
                         CRASH_LOOP_REST_MS / 1000);
            delay = CRASH_LOOP_REST_MS;
            s->window_deaths = 0;
            s->window_start_ms = now + delay;
        }
    }
    s->state = SLOT_WAITING;
    s->respawn_at_ms = now + delay;
    if (delay)
        tn_log_info("respawning %s in %" PRId64 " ms", s->name, delay);
}

static bool all_workers_fatal(const struct master *m)
{
    for (int i = 0; i < m->n_workers; i++)
        if (m->slots[i].state != SLOT_FATAL)
            return false;
    return true;
}

static void child_ended(struct master *m, struct slot *s, int st)
{
    int64_t now = tn_mono_ms();
    pid_t pid = s->pid;
    char how[96];
    describe_status(st, how, sizeof(how));
    s->pid = 0;

    bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    /* Expected: everyone during a stop, and the front while it drains. The
     * workers still serve the draining front, so they are respawned. */
    bool expected = m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING ||
                    (m->phase == PHASE_DRAINING && s->role == ROLE_FRONT);
    if (expected) {
        /* Dying of the signal we sent (or of the same Ctrl-C) is a clean stop too. */
        bool asked = WIFSIGNALED(st) && (WTERMSIG(st) == SIGTERM || WTERMSIG(st) == SIGINT);
        tn_log(clean || asked ? TN_LOG_INFO : TN_LOG_WARN, "%s %d %s", s->name, (int)pid, how);
        s->state = SLOT_DONE;
        return;
    }

    if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
        s->state = SLOT_FATAL;
        if (s->role == ROLE_FRONT) {
            tn_log_error("front %d exited with status 2: it could not start (see its error "
                         "above); stopping the server",
                         (int)pid);
            begin_stop(m, 1);
        } else if (all_workers_fatal(m)) {
            tn_log_error("%s %d exited with status 2: no worker could initialize (see their "
                         "errors above); stopping the server",
                         s->name, (int)pid);
            begin_stop(m, 1);
        } else {
            tn_log_error("%s %d exited with status 2: it could not initialize; not respawning it",
                         s->name, (int)pid);
        }
        return;
    }

    tn_log(clean ? TN_LOG_WARN : TN_LOG_ERROR, "%s %d %s after %.3f s", s->name, (int)pid, how,
           (double)(now - s->started_ms) / 1000);
    schedule_respawn(s, now);
}

static void reap(struct master *m)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid == 0)
            return;
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            if (errno != ECHILD)
                tn_log_error("waitpid() failed: %s", strerror(errno));
            return;
        }
        struct slot *s = NULL;
        for (int i = 0; i <= m->n_workers; i++)
            if (alive(&m->slots[i]) && m->slots[i].pid == pid)
                s = &m->slots[i];
        if (!s) {
            char how[96];
            describe_status(st, how, sizeof(how));
            tn_log_warn("reaped unknown child %d: %s", (int)pid, how);
            continue;
        }
        child_ended(m, s, st);
    }
}

static void respawn_due(struct master *m, int64_t now)
{
    for (int i = 0; i <= m->n_workers; i++) {
        struct slot *s = &m->slots[i];
        if (s->state != SLOT_WAITING || s->respawn_at_ms > now)
            continue;
        if (m->phase == PHASE_DRAINING && s->role == ROLE_FRONT)
            continue;
        spawn(m, s);
    }
}

/* Advance a stop by its deadline; returns true when the loop is over. */
static bool advance_stop(struct master *m, int64_t now)
{
    switch (m->phase) {
    case PHASE_RUNNING: return false;
    case PHASE_DRAINING:
        if (!alive(m->front)) {
            tn_log_info("front has stopped; stopping the workers");
            begin_stop(m, 0);
        } else if (now >= m->deadline_ms && !m->front_killed) {
            tn_log_warn("front %d still draining %gs after SIGQUIT (grace + %d s); sending "
                        "SIGKILL",
                        (int)m->front->pid, m->cfg->grace_s + DRAIN_EXTRA_MS / 1000,
                        DRAIN_EXTRA_MS / 1000);
            signal_slot(m->front, SIGKILL);
            m->front_killed = true;
        }
        return false;
    case PHASE_STOPPING:
        if (n_alive(m) == 0)
            return true;
        if (now >= m->deadline_ms) {
            tn_log_warn("%d child process(es) still running %d s after SIGTERM; sending SIGKILL",
                        n_alive(m), STOP_TIMEOUT_MS / 1000);
            signal_all(m, SIGKILL);
            m->phase = PHASE_KILLING;
            m->deadline_ms = now + KILL_TIMEOUT_MS;
        }
        return false;
    case PHASE_KILLING:
        if (n_alive(m) == 0)
            return true;
        if (now >= m->deadline_ms) {
            tn_log_error("%d child process(es) survived SIGKILL for %d s; exiting without them",
                         n_alive(m), KILL_TIMEOUT_MS / 1000);
            if (m->exit_status == 0)
                m->exit_status = 1;
            return true;
        }
        return false;
    }
    return false;
}

/* The earliest time something must happen, or -1. */
static int64_t next_wakeup(const struct master *m)
{
    int64_t next = -1;
    if (m->phase != PHASE_RUNNING && !(m->phase == PHASE_DRAINING && m->front_killed))
        next = m->deadline_ms;
    if (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING)
        for (int i = 0; i <= m->n_workers; i++) {
            const struct slot *s = &m->slots[i];
            if (s->state != SLOT_WAITING || (m->phase == PHASE_DRAINING && s->role == ROLE_FRONT))
                continue;
            if (next < 0 || s->respawn_at_ms < next)
                next = s->respawn_at_ms;
        }
    return next;
}

static void handle_signals(struct master *m)
{
    /* Stops first: a child that dies of the same Ctrl-C (same process group)
     * must be reaped as part of the stop, not respawned. */
    if (sig_terminate) {
        sig_terminate = 0;
        if (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING) {
            tn_log_info("received SIG%s: stopping now", sig_name(last_terminate_sig));
            begin_stop(m, 0);
        }
    }
    if (sig_quit) {
        sig_quit = 0;
        if (m->phase == PHASE_RUNNING) {
            tn_log_info("received SIGQUIT: stopping gracefully");
            begin_drain(m);
        }
    }
    if (sig_child) {
        sig_child = 0;
        reap(m);
    }
    if (sig_hup) {
        sig_hup = 0;
        tn_log_warn("reload is not implemented yet; ignoring SIGHUP");
    }
    if (sig_usr1) {
        sig_usr1 = 0;
        int rc = tn_log_reopen();
        if (rc < 0)
            tn_log_error("reopening the log file failed: %s; still writing to the old one",
                         strerror(-rc));
        else
            tn_log_info("received SIGUSR1: log file reopened; forwarding to the children");
        signal_all(m, SIGUSR1);
    }
    sig_alarm = 0;
}

/* Make the queue's send buffer hold more queued jobs than the kernel default
 * does; the kernel caps the request at net.core.wmem_max (and doubles it). The
 * front bounds queued jobs by --max-queued-jobs and handles EAGAIN anyway. */
static void size_queue(int fd)
{
    int want = QUEUE_SNDBUF, got = 0;
    socklen_t len = sizeof(got);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof(want)) < 0)
        tn_log_warn("setsockopt(SO_SNDBUF) on the job queue failed: %s", strerror(errno));
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) == 0)
        tn_log_debug("job queue send buffer: %d bytes (a job message is %zu bytes)", got,
                     sizeof(struct tn_ipc_job));
}

static void log_startup(const struct master *m)
{
    const struct tn_config *cfg = m->cfg;
    char addrs[1024] = "";
    size_t off = 0;
    for (size_t i = 0; i < cfg->n_listen && off < sizeof(addrs); i++) {
        int n = snprintf(addrs + off, sizeof(addrs) - off, "%s%s", i ? ", " : "", cfg->listen[i]);
        if (n < 0)
            break;
        off += (size_t)n;
    }
    tn_log_info("thumbnail_server %s starting: listen %s; %d worker(s); spool %s", TN_VERSION,
                addrs, cfg->workers, cfg->spool_dir);
    tn_log_debug("limits: max upload %" PRIu64 " B, max message %" PRIu64 " B, chunk %" PRIu64
                 " B, %d concurrent calls, %d queued jobs, job timeout %gs, grace %gs, max "
                 "pixels %" PRIu64 ", worker memory %" PRIu64 " B",
                 cfg->max_upload_bytes, cfg->max_message_bytes, cfg->chunk_size,
                 cfg->max_concurrent_calls, cfg->max_queued_jobs, cfg->job_timeout_s, cfg->grace_s,
                 cfg->max_pixels, cfg->worker_memory);
}

int tn_master_run(const struct tn_config *cfg)
{
    static struct master m; /* ~16 KiB: not on the stack; one master per process */
    sigset_t none;
    int rc;

    memset(&m, 0, sizeof(m));
    m.cfg = cfg;
    m.pid = getpid();
    m.q[0] = m.q[1] = -1;
    m.n_workers = cfg->workers;
    if (m.n_workers < 1 || m.n_workers > MAX_SLOTS - 1) {
        tn_log_error("invalid worker count %d", m.n_workers);
        return 1;
    }
    for (int i = 0; i <= m.n_workers; i++) {
        struct slot *s = &m.slots[i];
        s->role = i < m.n_workers ? ROLE_WORKER : ROLE_FRONT;
        s->index = i < m.n_workers ? i : 0;
        s->state = SLOT_WAITING; /* respawn_at 0: spawned by the first loop pass */
        if (s->role == ROLE_WORKER)
            snprintf(s->name, sizeof(s->name), "worker#%d", i);
        else
            snprintf(s->name, sizeof(s->name), "front");
    }
    m.front = &m.slots[m.n_workers];

    if ((rc = setup_signals()) < 0) {
        tn_log_error("setting up signal handling failed: %s", strerror(-rc));
        return 1;
    }
    /* q[0]: the workers' receiving end; q[1]: the front's sending end. */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, m.q) < 0) {
        tn_log_error("socketpair() failed while creating the job queue: %s", strerror(errno));
        return 1;
    }
    size_queue(m.q[1]);
    log_startup(&m);

    /* The first pass spawns every slot: workers first, then the front, since
     * respawn_due() walks the slots in order. */
    sigemptyset(&none);
    for (;;) {
        handle_signals(&m);
        int64_t now = tn_mono_ms();
        if (m.phase == PHASE_RUNNING || m.phase == PHASE_DRAINING)
            respawn_due(&m, now);
        if (advance_stop(&m, now))
            break;
        int64_t next = next_wakeup(&m);
        if (next >= 0) {
            int64_t delay = next - tn_mono_ms() + 1; /* +1: never wake a hair too early */
            arm_timer(delay < 1 ? 1 : delay);
        } else {
            arm_timer(0);
        }
        sigsuspend(&none); /* returns after a handler ran; the mask is restored */
    }

    arm_timer(0);
    close(m.q[0]);
    close(m.q[1]);
    tn_log_info("master exiting with status %d", m.exit_status);
    return m.exit_status;
}
