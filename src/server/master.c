/*
 * The master process: creates the job queue, forks the decode workers and then
 * the front, respawns whichever dies, reloads on SIGHUP, and turns signals into
 * orderly stops.
 *
 * DESIGN. nginx's model (ngx_process.c, ngx_process_cycle.c): a process table
 * with one slot per child, signal handlers that only set flags, and one loop
 * that sleeps in ppoll() with every handled signal blocked outside it, so a
 * flag can never be set between the check and the sleep. Respawn backoff and
 * stop deadlines are ppoll timeouts against CLOCK_MONOTONIC.
 *
 * The table is split into generations (struct gen): a job queue, its workers
 * and its front, from one configuration. SIGHUP reads the configuration again
 * (tn_config_reload) and starts a new generation beside the serving one; the
 * new front listens on the same addresses (SO_REUSEPORT). Once the new front
 * says it is serving (its control socket, front.h) and one new worker has
 * initialized (a MAP_SHARED "ready" word per worker), the old front gets
 * SIGQUIT: it stops listening, sends GOAWAY and finishes its calls up to
 * --grace; when it is gone the master closes the old queue and the old workers
 * exit at EOF after their job. A bad configuration, or a new generation that
 * does not get ready within RELOAD_TIMEOUT_MS, is logged and the old one keeps
 * serving. State that must survive reloads is created before the first
 * generation, in tn_master_run().
 *
 * The master never calls grpc_init() and never starts a thread: that is what
 * makes fork() safe here at any time (gRPC core is not fork-safe), so a dead
 * front can be replaced as easily as a dead worker.
 *
 * Start-up failures: a worker that exits (status 2: could not initialize, or
 * anything else) or crashes before it set its ready word is respawned with
 * exponential backoff; more than CRASH_LOOP_STARTS such failures within
 * CRASH_LOOP_WINDOW_MS and the slot is given up. A worker that dies after it
 * was ready (a crafted video that crashes the decoder, kill -9) is always
 * respawned, with backoff if it keeps dying quickly: giving up on those would
 * let a client take the service down. If every worker slot is given up, the
 * front is told (TN_FRONT_CTL_WORKERS 0): health NOT_SERVING, calls UNAVAILABLE,
 * until a reload starts new workers; if no worker ever initialized since the
 * start, the server exits 1 instead. A front that exits 2 (cannot bind) stops
 * the server. A worker that exits TN_EXIT_RECYCLED (--max-jobs-per-worker) is
 * replaced at once.
 *
 * A front can also be sick while it runs: the watchdog (struct watchdog)
 * checks the serving front's health over its own connection and its memory,
 * and replaces a front that keeps failing with a new generation, as SIGHUP
 * does. Its checker is a short-lived child that speaks raw HTTP/2 (h2check.h),
 * so the master still never runs gRPC.
 *
 * The metrics process (--metrics-listen) belongs to no generation: it reads the
 * shared counters (metrics.h), which the master maps once before the first fork
 * and which every generation's children add to, so a reload loses no count. It
 * is respawned like a front and stopped last, with the workers.
 */
#include "master.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "front.h"
#include "h2check.h"
#include "ipc.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "proctitle.h"
#include "worker.h"

#define MAX_SLOTS (256 + 1)        /* --workers is at most 256, plus the front */
#define MAX_GENS 4                 /* the serving generation, one starting, old ones draining */
#define QUICK_DEATH_MS 1000        /* died sooner than this after fork: back off */
#define BACKOFF_MIN_MS 100         /* first delay after a quick death */
#define BACKOFF_MAX_MS 5000        /* cap of the exponential backoff */
#define CRASH_LOOP_STARTS 5        /* more start-up failures than this ... */
#define CRASH_LOOP_WINDOW_MS 60000 /* ... within this window: give the slot up */
#define RELOAD_TIMEOUT_MS 30000    /* a new generation must be ready within this */
#define STOP_TIMEOUT_MS 5000       /* SIGTERM -> SIGKILL */
#define KILL_TIMEOUT_MS 5000       /* SIGKILL -> give up waiting */
#define DRAIN_EXTRA_MS 5000        /* front drain deadline = grace + this */
#define QUEUE_SNDBUF (1 << 20)     /* wish; capped by net.core.wmem_max */
#define CHECK_TIMEOUT_MS 2000      /* the watchdog's health call must be answered within this */

enum role { ROLE_WORKER, ROLE_FRONT, ROLE_METRICS };

enum slot_state {
    SLOT_RUNNING, /* pid is alive (or not reaped yet) */
    SLOT_WAITING, /* dead, respawn due at respawn_at_ms */
    SLOT_FATAL,   /* could not start (exit 2, or a crash loop at start-up): given up */
    SLOT_DONE,    /* ended during a stop, or its generation is retiring */
};

struct slot {
    pid_t pid;
    enum role role;
    int index; /* worker number; 0 for the front */
    enum slot_state state;
    char name[24]; /* "worker#3", "front", "metrics": also the child's log role */
    int64_t started_ms;
    int64_t respawn_at_ms;
    int quick_fails;         /* consecutive quick deaths: the backoff exponent */
    int64_t window_start_ms; /* crash-loop guard: start-up failures in the window */
    int window_fails;
};

/*
 * A generation: one job queue, its workers and its front, all started from one
 * configuration. A reload (SIGHUP) starts a new generation beside the serving
 * one and retires the old one once the new one is ready.
 */
enum gen_state {
    GEN_FREE,
    GEN_STARTING, /* reload: children starting; the old generation still serves */
    GEN_ACTIVE,   /* the serving generation (exactly one, except before the first start) */
    GEN_RETIRING, /* its front drains (or was killed); its workers end with the queue */
};

struct gen {
    enum gen_state state;
    unsigned id;          /* 1, 2, ... in the master's log lines */
    struct tn_config cfg; /* owned copy: the strings are ours (own_config), freed with the gen */
    char *strings[TN_MAX_LISTEN + 12];
    /* The job queue. The master keeps BOTH ends open while the generation
     * serves: it hands q[0] to a respawned worker and q[1] to a respawned
     * front, and holding q[1] means workers never see EOF on the queue while
     * the front is being replaced. It never reads or writes them. Closing both
     * (retire) is what lets the workers see EOF and exit. */
    int q[2];
    int ctl;                  /* master's end of the front's control socket (front.h); -1 */
    bool front_ready;         /* the current front said TN_FRONT_CTL_READY */
    int pool_sent;            /* the worker count last reported to the front; -1 = none */
    volatile uint32_t *ready; /* MAP_SHARED, one word per worker: set once it initialized */
    int64_t deadline_ms;      /* STARTING: give up the reload; RETIRING: SIGKILL the front */
    bool front_killed;
    bool retire_now; /* the watchdog found its front unresponsive: no drain when replaced */
    int n_workers;
    struct slot slots[MAX_SLOTS]; /* workers 0..n_workers-1, then the front */
    struct slot *front;           /* == &slots[n_workers] */
};

/*
 * The front watchdog: every --front-check-interval the master samples the
 * serving front's resident memory and forks a short-lived checker that makes
 * a health call to it over its own connection (h2check.h: raw HTTP/2, no
 * gRPC in the master). --front-check-failures failed checks in a row (no
 * answer within CHECK_TIMEOUT_MS, or memory above --max-front-memory) and the
 * master starts a new generation as a reload would; once that serves, an
 * unanswering front is stopped (SIGTERM) and a bloated one drains (SIGQUIT).
 * This covers what no exit status shows: gRPC 1.51 stops accepting for good
 * after one EMFILE, and keeps memory a hostile client made it allocate.
 */
struct watchdog {
    pid_t pid;          /* the checker process; 0 = none running */
    unsigned gen_id;    /* the generation whose front it checks */
    pid_t front_pid;    /* ... and that front */
    int64_t started_ms; /* when the checker was forked */
    int64_t next_ms;    /* when the next check is due */
    int fails;          /* consecutive failed checks of the serving front */
    uint64_t rss;       /* the front's resident bytes at the check in progress */
    unsigned noted_gen; /* the generation told it gets a memory-only check */
};

enum phase {
    PHASE_RUNNING,
    PHASE_DRAINING, /* SIGTERM/SIGQUIT: the fronts drain; workers still serve (and respawn) */
    PHASE_STOPPING, /* every child has had SIGTERM */
    PHASE_KILLING,  /* every child still alive has had SIGKILL */
};

struct master {
    pid_t pid;
    struct gen gens[MAX_GENS];
    unsigned next_gen_id;
    bool any_worker_ready; /* since start: tells "cannot start at all" from a later failure */
    bool reload_pending;   /* SIGHUP while a reload was still starting */
    struct slot metrics;   /* the metrics process: SLOT_DONE when --metrics-listen is off */
    int metrics_fd;        /* its listening socket (main.c bound it); -1 */
    enum phase phase;
    int64_t deadline_ms; /* of the current phase, when not RUNNING */
    bool fronts_killed;  /* DRAINING: the fronts overran their drain deadline */
    int exit_status;
    struct watchdog wd;
};

#define FOR_EACH_GEN(m, g)                                                                         \
    for (struct gen *g = (m)->gens; g < (m)->gens + MAX_GENS; g++)                                 \
        if (g->state != GEN_FREE)
#define FOR_EACH_SLOT(g, s) for (struct slot *s = (g)->slots; s <= (g)->front; s++)

static void watchdog_reaped(struct master *m, int st); /* reap() hands it its checker */

static volatile sig_atomic_t sig_child, sig_terminate, sig_quit, sig_hup, sig_usr1;
static volatile sig_atomic_t last_terminate_sig;

static const int handled_signals[] = {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1};
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
    default: break;
    }
}

static const char *sig_name(int sig)
{
    const char *abbr = sigabbrev_np(sig);
    return abbr ? abbr : "?";
}

/* Install the flag-setting handlers; every handled signal stays blocked except
 * inside the main loop's ppoll(). Returns 0 or -errno. */
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

/* Close every fd >= 3 except the ones in keep[] (negative entries ignored). */
static void close_other_fds(int *keep, int n)
{
    /* sort the few fds to keep (insertion sort) */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = t;
        }
    unsigned from = 3;
    for (int i = 0; i < n; i++) {
        if (keep[i] < 3 || (unsigned)keep[i] < from)
            continue;
        if ((unsigned)keep[i] > from)
            close_range(from, (unsigned)keep[i] - 1, 0);
        from = (unsigned)keep[i] + 1;
    }
    close_range(from, ~0u, 0);
}

/*
 * `ps` shows "thumbnail_server: worker 2 (gen 3)", top and pgrep "tn: worker 2".
 * The master keeps its comm (the program's name): main.c's pidfile check
 * compares it with the comm of the pid in the pidfile.
 */
static void set_title(const struct gen *g, const struct slot *s)
{
    char comm[16];
    const char *role = s->role == ROLE_WORKER  ? "worker"
                       : s->role == ROLE_FRONT ? "front"
                                               : "metrics";
    if (s->role == ROLE_WORKER)
        snprintf(comm, sizeof(comm), "tn: worker %d", s->index);
    else
        snprintf(comm, sizeof(comm), "tn: %s", role);
    if (!g)
        tn_proctitle_set(comm, "thumbnail_server: %s", role);
    else if (s->role == ROLE_WORKER)
        tn_proctitle_set(comm, "thumbnail_server: worker %d (gen %u)", s->index, g->id);
    else
        tn_proctitle_set(comm, "thumbnail_server: %s (gen %u)", role, g->id);
}

/*
 * In the child, right after fork(): undo what the master set up for itself,
 * keep only the fds this child owns, and become a worker, the front or the
 * metrics process (g NULL: it belongs to no generation).
 * ctl: the front's end of its control socket (-1 for the others).
 */
__attribute__((noreturn)) static void run_child(const struct master *m, const struct gen *g,
                                                const struct slot *s, int ctl)
{
    struct sigaction sa;
    sigset_t none;
    bool front = s->role == ROLE_FRONT;
    /* The fd this child owns: its end of the job queue, or the metrics socket. */
    int own_q = s->role == ROLE_METRICS ? m->metrics_fd : front ? g->q[1] : g->q[0];

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
    set_title(g, s);

    /* A child keeps stdin/stdout/stderr, the log fd, its end of its own
     * generation's queue and (the front) its control socket; anything else the
     * master holds (other generations' queues, other fronts' control sockets)
     * or inherited would leak. */
    int keep[3] = {tn_log_fd(), own_q, ctl};
    close_other_fds(keep, 3);

    /* If the master dies, the front stops its gRPC server (and frees its
     * port), the metrics process stops too, and the workers go at once:
     * nothing else would ever reap them.
     * The master may already be gone by the time this runs: check. */
    prctl(PR_SET_PDEATHSIG, s->role == ROLE_WORKER ? SIGKILL : SIGTERM);
    if (getppid() != m->pid)
        _exit(1);

    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (front)
        _exit(tn_front_main(&g->cfg, own_q, ctl));
    /* tls: a worker parses untrusted input, the metrics process answers anyone
     * who can reach its port: neither may hold the TLS key or token. */
    tn_config_drop_secrets();
    if (s->role == ROLE_METRICS)
        _exit(tn_metrics_http_main(own_q));
    struct tn_worker_options opt = {
        .index = s->index,
        .max_pixels = g->cfg.max_pixels,
        .memory_limit = g->cfg.worker_memory,
        .max_jobs = g->cfg.max_jobs_per_worker,
        .ready = g->ready ? &g->ready[s->index] : NULL,
        .sandbox = g->cfg.sandbox,
    };
    tn_worker_main(own_q, &opt);
}

static void spawn(struct master *m, struct gen *g, struct slot *s)
{
    int64_t now = tn_mono_ms();
    int ctl[2] = {-1, -1};
    if (s->role == ROLE_FRONT) {
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, ctl) < 0) {
            tn_log_error("socketpair() failed for the front's control socket: %s; retrying in "
                         "%d ms",
                         strerror(errno), BACKOFF_MAX_MS);
            s->state = SLOT_WAITING;
            s->respawn_at_ms = now + BACKOFF_MAX_MS;
            return;
        }
    } else if (g && g->ready) {
        g->ready[s->index] = 0;
    }
    pid_t pid = fork();
    if (pid < 0) {
        tn_log_error("fork() failed while spawning %s: %s; retrying in %d ms", s->name,
                     strerror(errno), BACKOFF_MAX_MS);
        if (ctl[0] >= 0) {
            close(ctl[0]);
            close(ctl[1]);
        }
        s->state = SLOT_WAITING;
        s->respawn_at_ms = now + BACKOFF_MAX_MS;
        return;
    }
    if (pid == 0)
        run_child(m, g, s, ctl[1]);
    if (s->role == ROLE_FRONT) {
        close(ctl[1]);
        if (g->ctl >= 0)
            close(g->ctl);
        g->ctl = ctl[0];
        g->front_ready = false;
        g->pool_sent = -1;
    }
    s->pid = pid;
    s->state = SLOT_RUNNING;
    s->started_ms = now;
    if (g)
        tn_log_info("spawned %s pid %d (generation %u)", s->name, (int)pid, g->id);
    else
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
    for (const struct gen *g = m->gens; g < m->gens + MAX_GENS; g++)
        if (g->state != GEN_FREE)
            for (const struct slot *s = g->slots; s <= g->front; s++)
                n += alive(s);
    return n + alive(&m->metrics);
}

static void signal_slot(const struct slot *s, int sig)
{
    /* pid > 0 always: kill(0 or -1, ...) would hit the wrong processes. */
    if (alive(s) && s->pid > 0 && kill(s->pid, sig) < 0 && errno != ESRCH)
        tn_log_error("kill(%s %d, SIG%s) failed: %s", s->name, (int)s->pid, sig_name(sig),
                     strerror(errno));
}

static void signal_all(struct master *m, int sig)
{
    FOR_EACH_GEN (m, g)
        FOR_EACH_SLOT (g, s)
            signal_slot(s, sig);
    signal_slot(&m->metrics, sig);
}

static struct gen *active_gen(struct master *m)
{
    FOR_EACH_GEN (m, g)
        if (g->state == GEN_ACTIVE)
            return g;
    return NULL;
}

static struct gen *starting_gen(struct master *m)
{
    FOR_EACH_GEN (m, g)
        if (g->state == GEN_STARTING)
            return g;
    return NULL;
}

/* Worker slots that still have, or will again have, a process. */
static int usable_workers(const struct gen *g)
{
    int n = 0;
    for (int i = 0; i < g->n_workers; i++)
        n += g->slots[i].state == SLOT_RUNNING || g->slots[i].state == SLOT_WAITING;
    return n;
}

static bool any_worker_ready(const struct gen *g)
{
    for (int i = 0; i < g->n_workers; i++)
        if (alive(&g->slots[i]) && g->ready[i])
            return true;
    return false;
}

/* ---- generations --------------------------------------------------------- */

static char *own_string(struct gen *g, int *n, const char *s)
{
    if (!s)
        return NULL;
    char *c = strdup(s);
    if (c)
        g->strings[(*n)++] = c;
    return c;
}

/* g->cfg = *cfg with its own copies of the strings (see tn_config_reload).
 * Every string field of struct tn_config must be copied here. */
static int own_config(struct gen *g, const struct tn_config *cfg)
{
    int n = 0;
    g->cfg = *cfg;
    for (size_t i = 0; i < cfg->n_listen; i++)
        if (!(g->cfg.listen[i] = own_string(g, &n, cfg->listen[i])))
            return -ENOMEM;
    if (!(g->cfg.spool_dir = own_string(g, &n, cfg->spool_dir)))
        return -ENOMEM;
    if (cfg->pidfile && !(g->cfg.pidfile = own_string(g, &n, cfg->pidfile)))
        return -ENOMEM;
    if (cfg->log_file && !(g->cfg.log_file = own_string(g, &n, cfg->log_file)))
        return -ENOMEM;
    const char **more[] = {&g->cfg.media_root, &g->cfg.metrics_listen, &g->cfg.tls_cert,
                           &g->cfg.tls_key,    &g->cfg.tls_client_ca,  &g->cfg.auth_token_file,
                           &g->cfg.config_file};
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
        if (*more[i] && !(*more[i] = own_string(g, &n, *more[i])))
            return -ENOMEM;
    return 0;
}

static void gen_free(struct gen *g)
{
    for (size_t i = 0; i < sizeof(g->strings) / sizeof(g->strings[0]); i++)
        free(g->strings[i]);
    if (g->q[0] >= 0)
        close(g->q[0]);
    if (g->q[1] >= 0)
        close(g->q[1]);
    if (g->ctl >= 0)
        close(g->ctl);
    if (g->ready)
        munmap((void *)g->ready, MAX_SLOTS * sizeof(uint32_t));
    memset(g, 0, sizeof(*g));
    g->state = GEN_FREE;
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

/*
 * A new generation from cfg, in state: its queue, its shared ready words and
 * its slots, all due for spawning at once (workers first, then the front:
 * respawn_due() walks the slots in order). Returns NULL with a log line on
 * failure; nothing is left behind.
 */
static struct gen *gen_new(struct master *m, const struct tn_config *cfg, enum gen_state state)
{
    struct gen *g = NULL;
    for (int i = 0; i < MAX_GENS && !g; i++)
        if (m->gens[i].state == GEN_FREE)
            g = &m->gens[i];
    if (!g) {
        tn_log_error("too many generations still draining (%d); try again later", MAX_GENS - 1);
        return NULL;
    }
    memset(g, 0, sizeof(*g));
    g->q[0] = g->q[1] = g->ctl = -1;
    g->pool_sent = -1;
    g->n_workers = cfg->workers;
    if (g->n_workers < 1 || g->n_workers > MAX_SLOTS - 1) {
        tn_log_error("invalid worker count %d", g->n_workers);
        goto err;
    }
    if (own_config(g, cfg) < 0) {
        tn_log_error("out of memory while copying the configuration");
        goto err;
    }
    void *p = mmap(NULL, MAX_SLOTS * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        tn_log_error("mmap() failed for the workers' ready flags: %s", strerror(errno));
        goto err;
    }
    g->ready = p;
    /* q[0]: the workers' receiving end; q[1]: the front's sending end. */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, g->q) < 0) {
        tn_log_error("socketpair() failed while creating the job queue: %s", strerror(errno));
        g->q[0] = g->q[1] = -1;
        goto err;
    }
    size_queue(g->q[1]);
    for (int i = 0; i <= g->n_workers; i++) {
        struct slot *s = &g->slots[i];
        s->role = i < g->n_workers ? ROLE_WORKER : ROLE_FRONT;
        s->index = i < g->n_workers ? i : 0;
        s->state = SLOT_WAITING; /* respawn_at 0: spawned by the next loop pass */
        if (s->role == ROLE_WORKER)
            snprintf(s->name, sizeof(s->name), "worker#%d", i);
        else
            snprintf(s->name, sizeof(s->name), "front");
    }
    g->front = &g->slots[g->n_workers];
    g->id = ++m->next_gen_id;
    g->state = state;
    return g;
err:
    gen_free(g);
    return NULL;
}

/*
 * Retire a generation: no more respawns; its front drains (SIGQUIT, up to
 * --grace) or, if `now_stop`, stops at once (SIGTERM). When the front is gone
 * the master closes its queue ends and the workers exit at EOF, after the job
 * in hand (gen_check_retired).
 */
static void gen_retire(struct master *m, struct gen *g, bool now_stop)
{
    (void)m;
    g->state = GEN_RETIRING;
    FOR_EACH_SLOT (g, s)
        if (s->state == SLOT_WAITING && s->role == ROLE_FRONT)
            s->state = SLOT_DONE;
    g->front_killed = false;
    g->deadline_ms = tn_mono_ms() + (now_stop ? STOP_TIMEOUT_MS
                                              : (int64_t)(g->cfg.grace_s * 1000) + DRAIN_EXTRA_MS);
    signal_slot(g->front, now_stop ? SIGTERM : SIGQUIT);
}

/* A retiring generation whose front is gone: let its workers see EOF; free it
 * once nobody of it is left. */
static void gen_check_retired(struct gen *g)
{
    if (g->state != GEN_RETIRING || alive(g->front))
        return;
    if (g->q[1] >= 0) {
        close(g->q[0]);
        close(g->q[1]);
        g->q[0] = g->q[1] = -1;
        for (int i = 0; i < g->n_workers; i++)
            if (g->slots[i].state == SLOT_WAITING)
                g->slots[i].state = SLOT_DONE;
        tn_log_info("generation %u: front gone; its workers exit once their job is done", g->id);
    }
    FOR_EACH_SLOT (g, s)
        if (alive(s))
            return;
    tn_log_info("generation %u has exited", g->id);
    gen_free(g);
}

/* ---- stops ----------------------------------------------------------------- */

/* Fast stop: SIGTERM to every child; SIGKILL after STOP_TIMEOUT_MS. Pending
 * respawns are cancelled. status: what the master will exit with (the worse
 * of this and any earlier one). */
static void begin_stop(struct master *m, int status)
{
    if (status > m->exit_status)
        m->exit_status = status;
    if (m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING)
        return;
    FOR_EACH_GEN (m, g)
        FOR_EACH_SLOT (g, s)
            if (s->state == SLOT_WAITING)
                s->state = SLOT_DONE;
    if (m->metrics.state == SLOT_WAITING)
        m->metrics.state = SLOT_DONE;
    m->phase = PHASE_STOPPING;
    m->deadline_ms = tn_mono_ms() + STOP_TIMEOUT_MS;
    signal_all(m, SIGTERM);
}

/* Graceful stop: every front drains first (SIGQUIT), the workers keep serving
 * them; they get SIGTERM once no front is left (advance()). A reload that
 * is still starting is abandoned. */
static void begin_drain(struct master *m)
{
    if (m->phase != PHASE_RUNNING)
        return;
    m->phase = PHASE_DRAINING;
    m->reload_pending = false;
    int64_t grace_ms = 0;
    FOR_EACH_GEN (m, g) {
        if (g->state == GEN_STARTING) {
            tn_log_info("graceful stop: abandoning the reload to generation %u", g->id);
            gen_retire(m, g, true);
            continue;
        }
        if (g->front->state == SLOT_WAITING)
            g->front->state = SLOT_DONE;
        if ((int64_t)(g->cfg.grace_s * 1000) > grace_ms)
            grace_ms = (int64_t)(g->cfg.grace_s * 1000);
        if (g->state == GEN_ACTIVE) {
            tn_log_info("graceful stop: front %d has %gs to finish in-flight calls",
                        (int)g->front->pid, g->cfg.grace_s);
            signal_slot(g->front, SIGQUIT);
        }
    }
    m->deadline_ms = tn_mono_ms() + grace_ms + DRAIN_EXTRA_MS;
}

/* ---- reload ---------------------------------------------------------------- */

/* SIGHUP: a new generation from the configuration read again. The serving
 * one keeps serving until the new one is ready (switch_if_ready), and keeps
 * serving for good if the new configuration is bad or the new children fail. */
static void begin_reload(struct master *m)
{
    struct tn_config cfg;
    char err[1024];
    struct gen *cur = active_gen(m);

    if (starting_gen(m)) {
        tn_log_info("SIGHUP during a reload: reloading again once this one is done");
        m->reload_pending = true;
        return;
    }
    if (tn_config_reload(&cfg, err, sizeof(err)) < 0) {
        tn_log_error("reload failed: %s; still serving with the old configuration", err);
        return;
    }
    if (cur) {
        /* What the master itself set up at start cannot change under it. */
        const struct tn_config *o = &cur->cfg;
        if (cfg.daemon != o->daemon || cfg.log_level != o->log_level ||
            (cfg.pidfile == NULL) != (o->pidfile == NULL) ||
            (cfg.pidfile && strcmp(cfg.pidfile, o->pidfile) != 0) ||
            (cfg.log_file == NULL) != (o->log_file == NULL) ||
            (cfg.log_file && strcmp(cfg.log_file, o->log_file) != 0) ||
            cfg.log_format != o->log_format ||
            (cfg.metrics_listen == NULL) != (o->metrics_listen == NULL) ||
            (cfg.metrics_listen && strcmp(cfg.metrics_listen, o->metrics_listen) != 0))
            tn_log_warn("reload: --daemon, --pidfile, --log-file, --log-level, --log-format and "
                        "--metrics-listen take effect only at a restart; keeping the old values");
        cfg.daemon = o->daemon;
        cfg.log_level = o->log_level;
        cfg.pidfile = o->pidfile;
        cfg.log_file = o->log_file;
        cfg.log_format = o->log_format;
        cfg.log_syslog = o->log_syslog;
        cfg.metrics_listen = o->metrics_listen;
    }
    cfg.metrics_fd = m->metrics_fd;
    struct gen *g = gen_new(m, &cfg, GEN_STARTING);
    if (!g) {
        tn_log_error("reload failed; still serving with the old generation");
        return;
    }
    g->deadline_ms = tn_mono_ms() + RELOAD_TIMEOUT_MS;
    tn_log_info("reload: starting generation %u (%d worker(s))", g->id, g->n_workers);
}

/* The reload failed: keep the serving generation, stop the new one. */
static void abort_reload(struct master *m, struct gen *g, const char *why)
{
    tn_log_error("reload failed: generation %u %s; still serving with generation %u", g->id, why,
                 active_gen(m) ? active_gen(m)->id : 0);
    gen_retire(m, g, true);
}

/* A starting generation whose front is serving and one of whose workers is
 * ready takes over; the old one drains. */
static void switch_if_ready(struct master *m)
{
    struct gen *g = starting_gen(m);
    if (!g || !g->front_ready || !alive(g->front) || !any_worker_ready(g))
        return;
    struct gen *old = active_gen(m);
    g->state = GEN_ACTIVE;
    tn_log_info("reload: generation %u is serving (front %d)%s", g->id, (int)g->front->pid,
                old ? "; the old one drains" : "");
    if (old)
        gen_retire(m, old, old->retire_now);
}

/* ---- deaths ---------------------------------------------------------------- */

/* After a child of a running server died: when to respawn it. */
static void schedule_respawn(struct slot *s, int64_t now, bool startup_failure)
{
    int64_t lived = now - s->started_ms;
    int64_t delay = 0;

    if (lived >= QUICK_DEATH_MS && !startup_failure) {
        s->quick_fails = 0;
    } else {
        s->quick_fails++;
        delay = BACKOFF_MIN_MS;
        for (int i = 1; i < s->quick_fails && delay < BACKOFF_MAX_MS; i++)
            delay *= 2;
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
    }
    s->state = SLOT_WAITING;
    s->respawn_at_ms = now + delay;
    if (delay)
        tn_log_info("respawning %s in %" PRId64 " ms", s->name, delay);
}

/* Count a start-up failure; true if the slot is in a crash loop and must be
 * given up. */
static bool crash_loop(struct slot *s, int64_t now)
{
    if (s->window_fails == 0 || now - s->window_start_ms >= CRASH_LOOP_WINDOW_MS) {
        s->window_start_ms = now;
        s->window_fails = 0;
    }
    return ++s->window_fails > CRASH_LOOP_STARTS;
}

/* Why a worker that the master did not stop went away (metrics.h). */
static enum tn_restart_cause restart_cause(int st, bool timeout_kill)
{
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS)
        return TN_RESTART_SANDBOX;
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && timeout_kill)
        return TN_RESTART_TIMEOUT;
    if (WIFEXITED(st) && WEXITSTATUS(st) == TN_EXIT_RECYCLED)
        return TN_RESTART_RECYCLE;
    return TN_RESTART_CRASH;
}

/* Every worker slot of g is given up: what that means depends on the generation. */
static void pool_lost(struct master *m, struct gen *g)
{
    if (g->state == GEN_STARTING) {
        abort_reload(m, g, "could not start any worker");
    } else if (g->state == GEN_ACTIVE && !m->any_worker_ready) {
        tn_log_error("no worker could initialize (see their errors above); stopping the server");
        begin_stop(m, 1);
    } else if (g->state == GEN_ACTIVE) {
        tn_log_error("NO DECODE WORKER LEFT: every worker slot failed to start repeatedly and "
                     "was given up (see the errors above); health is NOT_SERVING and calls get "
                     "UNAVAILABLE; fix the cause and send SIGHUP to start new workers");
    }
}

static void worker_ended(struct master *m, struct gen *g, struct slot *s, pid_t pid, int st,
                         const char *how, int64_t now, bool timeout_kill)
{
    bool was_ready = g->ready[s->index] != 0;
    int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;

    if (g->state == GEN_RETIRING && g->q[1] < 0) {
        tn_log_info("%s %d of generation %u %s", s->name, (int)pid, g->id, how);
        s->state = SLOT_DONE;
        return;
    }
    tn_metrics_worker_restart(restart_cause(st, timeout_kill));
    if (WIFEXITED(st) && WEXITSTATUS(st) == TN_EXIT_RECYCLED) {
        tn_log_info("%s %d recycled (--max-jobs-per-worker %" PRIu64 "); respawning it", s->name,
                    (int)pid, g->cfg.max_jobs_per_worker);
        s->quick_fails = 0;
        s->state = SLOT_WAITING;
        s->respawn_at_ms = now;
        return;
    }
    /* A start-up failure: it never got ready, and did not die of a signal
     * someone sent it (kill -9 by an operator, a test or the OOM killer says
     * nothing about whether it can start). */
    bool startup_failure =
        !was_ready && !(sig == SIGKILL || sig == SIGTERM || sig == SIGINT || sig == SIGQUIT);
    if (startup_failure) {
        if (crash_loop(s, now)) {
            tn_log_error("%s %d %s before it was ready: %d start-up failures within %d s; "
                         "giving this worker slot up (no more respawns)",
                         s->name, (int)pid, how, s->window_fails, CRASH_LOOP_WINDOW_MS / 1000);
            s->state = SLOT_FATAL;
            if (usable_workers(g) == 0)
                pool_lost(m, g);
            return;
        }
        tn_log_error("%s %d %s before it was ready (start-up failure %d of at most %d in %d s)",
                     s->name, (int)pid, how, s->window_fails, CRASH_LOOP_STARTS,
                     CRASH_LOOP_WINDOW_MS / 1000);
    } else {
        bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        tn_log(clean ? TN_LOG_WARN : TN_LOG_ERROR, "%s %d %s after %.3f s", s->name, (int)pid, how,
               (double)(now - s->started_ms) / 1000);
    }
    if (sig == SIGKILL && !startup_failure) {
        /* Killed from outside (the front on a deadline overrun, the OOM
         * killer, an operator): nothing says the next one will die too, and
         * each such death cost a job, so it cannot loop by itself: at once. */
        s->quick_fails = 0;
        s->state = SLOT_WAITING;
        s->respawn_at_ms = now;
        return;
    }
    schedule_respawn(s, now, startup_failure);
}

static void front_ended(struct master *m, struct gen *g, struct slot *s, pid_t pid, int st,
                        const char *how, int64_t now)
{
    if (g->ctl >= 0) {
        close(g->ctl);
        g->ctl = -1;
    }
    bool was_ready = g->front_ready;
    g->front_ready = false;
    if (g->state == GEN_RETIRING) {
        bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        tn_log(clean ? TN_LOG_INFO : TN_LOG_WARN, "front %d of generation %u %s", (int)pid, g->id,
               how);
        s->state = SLOT_DONE;
        return;
    }
    if (g->state == GEN_STARTING) {
        s->state = SLOT_DONE;
        char why[160];
        snprintf(why, sizeof(why), "front %d %s before it was serving", (int)pid, how);
        abort_reload(m, g, why);
        return;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
        s->state = SLOT_FATAL;
        tn_log_error("front %d exited with status 2: it could not start (see its error "
                     "above); stopping the server",
                     (int)pid);
        begin_stop(m, 1);
        return;
    }
    bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    tn_log(clean ? TN_LOG_WARN : TN_LOG_ERROR, "front %d %s after %.3f s%s", (int)pid, how,
           (double)(now - s->started_ms) / 1000, was_ready ? "" : " (before it was serving)");
    schedule_respawn(s, now, false);
}

/* The metrics process died: respawn it (with backoff) unless the server stops. */
static void metrics_ended(struct master *m, struct slot *s, int st)
{
    int64_t now = tn_mono_ms();
    pid_t pid = s->pid;
    char how[96];
    describe_status(st, how, sizeof(how));
    s->pid = 0;
    if (m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING) {
        tn_log_info("%s %d %s", s->name, (int)pid, how);
        s->state = SLOT_DONE;
        return;
    }
    tn_log_error("%s %d %s after %.3f s", s->name, (int)pid, how,
                 (double)(now - s->started_ms) / 1000);
    schedule_respawn(s, now, false);
}

static void child_ended(struct master *m, struct gen *g, struct slot *s, int st, bool timeout_kill)
{
    int64_t now = tn_mono_ms();
    pid_t pid = s->pid;
    char how[96];
    describe_status(st, how, sizeof(how));
    s->pid = 0;

    /* Expected: everyone during a stop, and a front while it drains. The
     * workers still serve a draining front, so they are respawned. */
    bool expected = m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING ||
                    (m->phase == PHASE_DRAINING && s->role == ROLE_FRONT);
    if (expected) {
        bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        /* Dying of the signal we sent (or of the same Ctrl-C) is a clean stop too. */
        bool asked = WIFSIGNALED(st) && (WTERMSIG(st) == SIGTERM || WTERMSIG(st) == SIGINT);
        tn_log(clean || asked ? TN_LOG_INFO : TN_LOG_WARN, "%s %d %s", s->name, (int)pid, how);
        s->state = SLOT_DONE;
        if (s->role == ROLE_FRONT && g->ctl >= 0) {
            close(g->ctl);
            g->ctl = -1;
        }
        return;
    }
    if (s->role == ROLE_FRONT)
        front_ended(m, g, s, pid, st, how, now);
    else
        worker_ended(m, g, s, pid, st, how, now, timeout_kill);
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
        /* Whatever it was, its metrics gauges go; a worker the front killed
         * for an overrun job was marked there first. */
        bool timeout_kill = tn_metrics_reaped(pid) != 0;
        if (m->wd.pid && pid == m->wd.pid) {
            watchdog_reaped(m, st);
            continue;
        }
        if (alive(&m->metrics) && m->metrics.pid == pid) {
            metrics_ended(m, &m->metrics, st);
            continue;
        }
        struct gen *found_g = NULL;
        struct slot *found = NULL;
        FOR_EACH_GEN (m, g)
            FOR_EACH_SLOT (g, s)
                if (alive(s) && s->pid == pid) {
                    found_g = g;
                    found = s;
                }
        if (!found) {
            char how[96];
            describe_status(st, how, sizeof(how));
            tn_log_warn("reaped unknown child %d: %s", (int)pid, how);
            continue;
        }
        child_ended(m, found_g, found, st, timeout_kill);
    }
}

/* Generations that respawn their dead children: not while stopping; a
 * retiring one only its workers, and only while its front still drains. */
static bool respawns(const struct master *m, const struct gen *g, const struct slot *s)
{
    if (m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING)
        return false;
    if (s->role == ROLE_FRONT)
        return m->phase == PHASE_RUNNING && g->state != GEN_RETIRING;
    return g->state != GEN_RETIRING || g->q[1] >= 0;
}

static void respawn_due(struct master *m, int64_t now)
{
    FOR_EACH_GEN (m, g)
        FOR_EACH_SLOT (g, s) {
            if (s->state != SLOT_WAITING || s->respawn_at_ms > now || !respawns(m, g, s))
                continue;
            spawn(m, g, s);
        }
    /* the metrics process: after the first generation's children, and as long
     * as the server serves (it stops last, with the workers) */
    if (m->metrics.state == SLOT_WAITING && m->metrics.respawn_at_ms <= now &&
        (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING))
        spawn(m, NULL, &m->metrics);
}

/* ---- the front's control socket --------------------------------------------- */

static void read_ctl(struct master *m, struct gen *g)
{
    for (;;) {
        struct tn_front_ctl msg;
        ssize_t n = recv(g->ctl, &msg, sizeof(msg), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            /* The front is gone (or going): reap() will say how. */
            close(g->ctl);
            g->ctl = -1;
            return;
        }
        if (n != (ssize_t)sizeof(msg) || msg.type != TN_FRONT_CTL_READY) {
            tn_log_warn("unexpected message on front %d's control socket (%zd bytes, type %u)",
                        (int)g->front->pid, n, n >= 4 ? msg.type : 0);
            continue;
        }
        g->front_ready = true;
        tn_log_info("front %d of generation %u is serving", (int)g->front->pid, g->id);
        (void)m;
    }
}

/* Tell each serving front how many worker slots its generation has left, when
 * that changed: 0 makes it NOT_SERVING. */
static void report_pools(struct master *m)
{
    FOR_EACH_GEN (m, g) {
        if (g->ctl < 0 || !g->front_ready)
            continue;
        int n = usable_workers(g);
        if (n == g->pool_sent)
            continue;
        struct tn_front_ctl msg = {.type = TN_FRONT_CTL_WORKERS, .value = n};
        ssize_t w;
        while ((w = send(g->ctl, &msg, sizeof(msg), MSG_DONTWAIT | MSG_NOSIGNAL)) < 0 &&
               errno == EINTR)
            ;
        if (w == (ssize_t)sizeof(msg))
            g->pool_sent = n;
        else if (w < 0 && errno != EAGAIN && errno != EPIPE && errno != ECONNRESET)
            tn_log_error("send() on front %d's control socket failed: %s", (int)g->front->pid,
                         strerror(errno));
    }
}

/* ---- the front watchdog (struct watchdog) ----------------------------------- */

/* The resident memory of pid in bytes, from /proc; 0 if it cannot be read. */
static uint64_t resident_bytes(pid_t pid)
{
    char path[64], line[128];
    unsigned long long kb = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb << 10;
}

/* The first listener the checker can reach without TLS, or NULL. */
static const char *checkable_listener(const struct tn_config *cfg)
{
    for (size_t i = 0; i < cfg->n_listen; i++) {
        bool is_unix = strncmp(cfg->listen[i], "unix:", 5) == 0;
        bool tls = cfg->tls && cfg->tls_cert && (!is_unix || cfg->tls_unix);
        if (!tls && tn_h2check_supported(cfg->listen[i]))
            return cfg->listen[i];
    }
    return NULL;
}

/* In the checker child: one health call, then exit 0 (answered) or 1. */
__attribute__((noreturn)) static void run_checker(const char *listen, pid_t front)
{
    char why[160];
    tn_log_set_role("watchdog");
    int keep[1] = {tn_log_fd()};
    close_other_fds(keep, 1);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* a hard bound whatever happens in the call (the master's signals stay
     * blocked in here; SIGALRM is not one of them) */
    alarm((CHECK_TIMEOUT_MS + 1999) / 1000 + 1);
    int rc = tn_h2check_health(listen, CHECK_TIMEOUT_MS, why, sizeof(why));
    if (rc < 0)
        tn_log_warn("health check of front %d on %s failed: %s", (int)front, listen, why);
    else
        tn_log_debug("health check of front %d on %s: %s", (int)front, listen, why);
    _exit(rc < 0 ? 1 : 0);
}

/* Replace g's front (and workers) with a new generation of the same
 * configuration; g drains once the new one serves (switch_if_ready). */
static void replace_front(struct master *m, struct gen *g, enum tn_front_cause cause,
                          const char *what)
{
    struct tn_config cfg = g->cfg; /* gen_new copies the strings */
    tn_metrics_front_replaced(cause);
    struct gen *n = gen_new(m, &cfg, GEN_STARTING);
    if (!n) {
        tn_log_error("FRONT %d IS SICK (%s) but no new generation could be started; it keeps "
                     "serving",
                     (int)g->front->pid, what);
        return;
    }
    n->deadline_ms = tn_mono_ms() + RELOAD_TIMEOUT_MS;
    /* A front that does not answer would not drain either, and while it
     * listens (SO_REUSEPORT) it takes a share of the new connections: stop it
     * at once. One that answers but grew finishes its calls (--grace). */
    g->retire_now = cause == TN_FRONT_UNHEALTHY;
    tn_log_error("REPLACING FRONT %d of generation %u: %s in %d checks in a row; starting "
                 "generation %u, the old one %s once it serves",
                 (int)g->front->pid, g->id, what, g->cfg.front_check_failures, n->id,
                 g->retire_now ? "stops" : "drains");
}

/* A check of the serving front ended: health answered or not. */
static void check_done(struct master *m, bool answered)
{
    struct watchdog *w = &m->wd;
    struct gen *g = active_gen(m);
    if (!g || g->id != w->gen_id || !alive(g->front) || g->front->pid != w->front_pid ||
        m->phase != PHASE_RUNNING || starting_gen(m))
        return; /* what it checked is no longer what serves */
    bool too_big = g->cfg.max_front_memory && w->rss > g->cfg.max_front_memory;
    if (answered && !too_big) {
        if (w->fails)
            tn_log_info("front %d passes its checks again", (int)g->front->pid);
        w->fails = 0;
        return;
    }
    char what[160];
    if (!answered)
        snprintf(what, sizeof(what), "no health answer within %d ms", CHECK_TIMEOUT_MS);
    else
        snprintf(what, sizeof(what),
                 "resident memory %" PRIu64 " MiB above --max-front-memory %" PRIu64 " MiB",
                 w->rss >> 20, g->cfg.max_front_memory >> 20);
    w->fails++;
    tn_log_warn("front %d failed check %d of %d: %s", (int)g->front->pid, w->fails,
                g->cfg.front_check_failures, what);
    if (w->fails < g->cfg.front_check_failures)
        return;
    w->fails = 0;
    replace_front(m, g, answered ? TN_FRONT_MEMORY : TN_FRONT_UNHEALTHY, what);
}

/* Start a check when one is due; kill a checker that overran. */
static void watchdog_tick(struct master *m, int64_t now)
{
    struct watchdog *w = &m->wd;
    if (w->pid) {
        if (now - w->started_ms > CHECK_TIMEOUT_MS + 1000 && kill(w->pid, SIGKILL) < 0 &&
            errno != ESRCH)
            tn_log_error("kill(watchdog %d) failed: %s", (int)w->pid, strerror(errno));
        return;
    }
    struct gen *g = active_gen(m);
    if (!g || g->cfg.front_check_interval_s <= 0 || m->phase != PHASE_RUNNING || starting_gen(m) ||
        !alive(g->front) || !g->front_ready) {
        w->fails = 0;
        w->next_ms = 0;
        return;
    }
    int64_t interval = (int64_t)(g->cfg.front_check_interval_s * 1000);
    if (w->next_ms == 0 || g->id != w->gen_id || g->front->pid != w->front_pid) {
        /* a new front: first check one interval after it said it serves */
        w->gen_id = g->id;
        w->front_pid = g->front->pid;
        w->fails = 0;
        w->next_ms = now + interval;
        return;
    }
    if (now < w->next_ms)
        return;
    w->next_ms = now + interval;
    w->rss = resident_bytes(g->front->pid);
    const char *listen = checkable_listener(&g->cfg);
    if (!listen) {
        if (w->noted_gen != g->id)
            tn_log_info("front watchdog: no listener to call health on (it needs plaintext and a "
                        "fixed port); checking the front's memory only");
        w->noted_gen = g->id;
        check_done(m, true);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        tn_log_error("fork() failed for the front health check: %s", strerror(errno));
        return;
    }
    if (pid == 0)
        run_checker(listen, g->front->pid);
    w->pid = pid;
    w->started_ms = now;
}

/* The checker exited with status st. */
static void watchdog_reaped(struct master *m, int st)
{
    m->wd.pid = 0;
    check_done(m, WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* When watchdog_tick() must run next, or -1. */
static int64_t watchdog_wakeup(const struct master *m)
{
    if (m->wd.pid)
        return m->wd.started_ms + CHECK_TIMEOUT_MS + 1000 + 1;
    return m->phase == PHASE_RUNNING && m->wd.next_ms ? m->wd.next_ms : -1;
}

/* ---- the loop ---------------------------------------------------------------- */

/* Advance stops and reloads by their deadlines; returns true when the loop is over. */
static bool advance(struct master *m, int64_t now)
{
    FOR_EACH_GEN (m, g) {
        if (g->state == GEN_STARTING && now >= g->deadline_ms)
            abort_reload(m, g, "was not ready in time");
        if (g->state == GEN_RETIRING && alive(g->front) && now >= g->deadline_ms &&
            !g->front_killed) {
            tn_log_warn("front %d of generation %u still running past its drain deadline; "
                        "sending SIGKILL",
                        (int)g->front->pid, g->id);
            signal_slot(g->front, SIGKILL);
            g->front_killed = true;
        }
        gen_check_retired(g);
    }
    switch (m->phase) {
    case PHASE_RUNNING:
        if (m->reload_pending && !starting_gen(m)) {
            m->reload_pending = false;
            begin_reload(m);
        }
        return false;
    case PHASE_DRAINING: {
        bool fronts = false;
        FOR_EACH_GEN (m, g)
            fronts |= alive(g->front);
        if (!fronts) {
            tn_log_info("front has stopped; stopping the workers");
            begin_stop(m, 0);
        } else if (now >= m->deadline_ms && !m->fronts_killed) {
            tn_log_warn("front still draining past grace + %d s; sending SIGKILL",
                        DRAIN_EXTRA_MS / 1000);
            FOR_EACH_GEN (m, g)
                signal_slot(g->front, SIGKILL);
            m->fronts_killed = true;
        }
        return false;
    }
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
static int64_t next_wakeup(struct master *m)
{
    int64_t next = -1;
#define EARLIER(t)                                                                                 \
    do {                                                                                           \
        if (next < 0 || (t) < next)                                                                \
            next = (t);                                                                            \
    } while (0)
    if (m->phase != PHASE_RUNNING && !(m->phase == PHASE_DRAINING && m->fronts_killed))
        EARLIER(m->deadline_ms);
    FOR_EACH_GEN (m, g) {
        if (g->state == GEN_STARTING ||
            (g->state == GEN_RETIRING && !g->front_killed && alive(g->front)))
            EARLIER(g->deadline_ms);
        FOR_EACH_SLOT (g, s)
            if (s->state == SLOT_WAITING && respawns(m, g, s))
                EARLIER(s->respawn_at_ms);
    }
    if (m->metrics.state == SLOT_WAITING &&
        (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING))
        EARLIER(m->metrics.respawn_at_ms);
    if (watchdog_wakeup(m) >= 0)
        EARLIER(watchdog_wakeup(m));
#undef EARLIER
    return next;
}

static void handle_signals(struct master *m)
{
    /* Stops first: a child that dies of the same Ctrl-C (same process group)
     * must be reaped as part of the stop, not respawned. */
    if (sig_terminate) {
        sig_terminate = 0;
        int sig = last_terminate_sig;
        if (sig == SIGTERM && m->phase == PHASE_RUNNING) {
            /* systemd and docker stop with TERM: graceful, like QUIT. */
            tn_log_info("received SIGTERM: stopping gracefully (send it again to stop now)");
            begin_drain(m);
        } else if (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING) {
            tn_log_info("received SIG%s: stopping now", sig_name(sig));
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
        if (m->phase == PHASE_RUNNING) {
            tn_log_info("received SIGHUP: reloading");
            begin_reload(m);
        }
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
}

/*
 * The fronts listen with SO_REUSEPORT so that a reload's new front can bind
 * beside the old one; the price is that a second server of the same user on
 * the same port would be let in silently, and the kernel would split the
 * connections between the two. So, once at start-up, bind every HOST:PORT
 * without SO_REUSEPORT (as a listener would, with SO_REUSEADDR): EADDRINUSE
 * means someone listens there already. Port 0 and unix: paths are skipped;
 * any other error is left for the front to report when it binds.
 * Returns 0, or -1 after logging the address in use.
 */
static int check_ports_free(const struct tn_config *cfg)
{
    for (size_t i = 0; i < cfg->n_listen; i++) {
        const char *a = cfg->listen[i];
        if (strncmp(a, "unix:", 5) == 0 || strncmp(a, "unix-abstract:", 14) == 0)
            continue;
        const char *colon = strrchr(a, ':');
        if (!colon || strcmp(colon + 1, "0") == 0)
            continue;
        char host[256];
        size_t hl = (size_t)(colon - a);
        if (hl >= sizeof(host))
            continue;
        memcpy(host, a, hl);
        host[hl] = '\0';
        char *h = host;
        if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
            h[hl - 1] = '\0';
            h++;
        }
        struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                                 .ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        if (getaddrinfo(*h ? h : NULL, colon + 1, &hints, &res) != 0)
            continue;
        int busy = 0;
        for (struct addrinfo *ai = res; ai && !busy; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0)
                continue;
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            if (ai->ai_family == AF_INET6)
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno == EADDRINUSE)
                busy = 1;
            close(fd);
        }
        freeaddrinfo(res);
        if (busy) {
            tn_log_error("cannot listen on %s: address in use (another server, or another "
                         "thumbnail_server, listens there)",
                         a);
            return -1;
        }
    }
    return 0;
}

static void log_startup(const struct tn_config *cfg)
{
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
                 "pixels %" PRIu64 ", worker memory %" PRIu64 " B, max jobs per worker %" PRIu64,
                 cfg->max_upload_bytes, cfg->max_message_bytes, cfg->chunk_size,
                 cfg->max_concurrent_calls, cfg->max_queued_jobs, cfg->job_timeout_s, cfg->grace_s,
                 cfg->max_pixels, cfg->worker_memory, cfg->max_jobs_per_worker);
    tn_log_debug("front: %d streams per connection, metadata %" PRIu64 " B, gRPC quota %" PRIu64
                 " B; watchdog every %gs, %d failures, max memory %" PRIu64 " B",
                 cfg->max_streams_per_connection, cfg->max_header_bytes, cfg->front_memory_quota,
                 cfg->front_check_interval_s, cfg->front_check_failures, cfg->max_front_memory);
}

/*
 * Raise the soft RLIMIT_NOFILE to the hard limit, here so that every child
 * inherits it. The front holds one fd per connection, and gRPC 1.51 stops
 * accepting for good after a single EMFILE (the watchdog then replaces the
 * front): the soft default of 1024 is far too easy to reach.
 */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        tn_log_warn("raising the open-file limit from %llu to %llu failed: %s",
                    (unsigned long long)old, (unsigned long long)rl.rlim_max, strerror(errno));
    else
        tn_log_debug("open-file limit raised from %llu to %llu", (unsigned long long)old,
                     (unsigned long long)rl.rlim_max);
}

int tn_master_run(const struct tn_config *cfg)
{
    static struct master m; /* large (the process table): not on the stack; one per process */
    sigset_t none;
    int rc;

    memset(&m, 0, sizeof(m));
    m.pid = getpid();
    tn_proctitle_set(NULL, "thumbnail_server: master");

    if ((rc = setup_signals()) < 0) {
        tn_log_error("setting up signal handling failed: %s", strerror(-rc));
        return 1;
    }
    log_startup(cfg);
    raise_fd_limit();
    if (check_ports_free(cfg) < 0)
        return 1;
    /* Shared state that must outlive reloads is created here, before the first
     * generation forks anything. The metrics region is never unmapped: every
     * child, of every generation, adds to the same counters. */
    if ((rc = tn_metrics_create()) < 0) {
        tn_log_error("mmap() of the shared metrics region failed: %s", strerror(-rc));
        return 1;
    }
    m.metrics_fd = cfg->metrics_fd;
    m.metrics.role = ROLE_METRICS;
    snprintf(m.metrics.name, sizeof(m.metrics.name), "metrics");
    /* respawn_at 0: spawned by the first loop pass, after the first generation */
    m.metrics.state = m.metrics_fd >= 0 ? SLOT_WAITING : SLOT_DONE;
    if (!gen_new(&m, cfg, GEN_ACTIVE))
        return 1;

    sigemptyset(&none);
    for (;;) {
        handle_signals(&m);
        int64_t now = tn_mono_ms();
        respawn_due(&m, now);
        switch_if_ready(&m);
        if (advance(&m, now))
            break;
        FOR_EACH_GEN (&m, g)
            if (g->state == GEN_ACTIVE && !m.any_worker_ready && any_worker_ready(g))
                m.any_worker_ready = true;
        report_pools(&m);
        watchdog_tick(&m, now);

        struct pollfd pfd[MAX_GENS];
        struct gen *pg[MAX_GENS];
        nfds_t n = 0;
        FOR_EACH_GEN (&m, g)
            if (g->ctl >= 0) {
                pfd[n] = (struct pollfd){.fd = g->ctl, .events = POLLIN};
                pg[n++] = g;
            }
        /* Workers report "ready" in shared memory, not on a socket: while a
         * generation waits for that, look again every 50 ms. */
        int64_t next = next_wakeup(&m);
        FOR_EACH_GEN (&m, g)
            if ((g->state == GEN_STARTING || !m.any_worker_ready) && (next < 0 || next > now + 50))
                next = now + 50;
        struct timespec ts, *tsp = NULL;
        if (next >= 0) {
            int64_t delay = next - tn_mono_ms() + 1; /* +1: never wake a hair too early */
            if (delay < 1)
                delay = 1;
            ts.tv_sec = delay / 1000;
            ts.tv_nsec = (long)(delay % 1000) * 1000000;
            tsp = &ts;
        }
        /* Signals are blocked except inside ppoll, so a flag can never be set
         * between the checks above and the sleep. */
        int r = ppoll(pfd, n, tsp, &none);
        if (r > 0)
            for (nfds_t i = 0; i < n; i++)
                if (pfd[i].revents && pg[i]->ctl == pfd[i].fd)
                    read_ctl(&m, pg[i]);
    }

    FOR_EACH_GEN (&m, g)
        gen_free(g);
    tn_log_info("master exiting with status %d", m.exit_status);
    return m.exit_status;
}
