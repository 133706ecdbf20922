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
 * front is told (TN_IPC_CTL_WORKERS 0): health NOT_SERVING, calls UNAVAILABLE,
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
 * The HTTP gateway (--http-listen, src/http/gateway.h) belongs to no
 * generation either: it is a gRPC client of whichever front serves, over a
 * private unix socket in a 0700 directory the master makes at start
 * (make_gateway_dir); every front listens there too, with the reload-safe
 * unix: publication of listen.c, so the gateway's channel reconnects to the
 * new front by itself. The master also draws a per-run secret that both get
 * through fork: the gateway sends it with each call, and the front labels
 * such calls protocol="http" in its metrics and access log. The gateway
 * never calls grpc_init() before it is forked (gRPC is not fork-safe), and
 * a crash in it is one respawn, never the gRPC front's problem. It runs with
 * the serving generation's configuration: when a reload's generation takes
 * over, the gateway gets SIGQUIT, answers what is in flight, exits, and is
 * started again at once with the new one (switch_if_ready(), reap()).
 *
 * The metrics process (--metrics-listen) belongs to no generation: it reads the
 * shared counters (metrics.h), which the master maps once before the first fork
 * and which every generation's children add to, so a reload loses no count. It
 * is respawned like a front and stopped last, with the workers.
 *
 * Files: this one (signals, stops, the front's control socket, the loop,
 * start-up), gen.c (children, generations, reload), reap.c (deaths, respawn
 * backoff, crash loops), watchdog.c (the front checks); master_int.h holds the
 * process table they share.
 */
#include "master.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "front.h"
#include "ipc.h"
#include "log.h"
#include "master_int.h"
#include "metrics.h"
#include "proctitle.h"

static volatile sig_atomic_t sig_child, sig_terminate, sig_quit, sig_hup, sig_usr1;
static volatile sig_atomic_t last_terminate_sig;

const int handled_signals[N_HANDLED] = {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1};

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

const char *sig_name(int sig)
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

/* ---- stops ----------------------------------------------------------------- */

/* Fast stop: SIGTERM to every child; SIGKILL after STOP_TIMEOUT_MS. Pending
 * respawns are cancelled. status: what the master will exit with (the worse
 * of this and any earlier one). */
void begin_stop(struct master *m, int status)
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
    if (m->http.state == SLOT_WAITING)
        m->http.state = SLOT_DONE;
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

/* ---- the front's control socket --------------------------------------------- */

static void read_ctl(struct master *m, struct gen *g)
{
    for (;;) {
        union tn_ipc_any msg;
        int fds[TN_IPC_MAX_FDS], nfds = 0;
        int n = tn_ipc_recv(g->ctl, &msg, sizeof(msg), fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            return;
        if (n == 0 || (n < 0 && n != -EPROTO && n != -EMSGSIZE)) {
            /* The front is gone (or going): reap() will say how. */
            close(g->ctl);
            g->ctl = -1;
            return;
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (n < 0 || msg.h.type != TN_IPC_CTL_READY) {
            tn_log_warn("unexpected message on front %d's control socket (%s, type %u)",
                        (int)g->front->pid, n < 0 ? strerror(-n) : "ok", n < 0 ? 0 : msg.h.type);
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
        struct tn_ipc_ctl msg = {.value = n};
        tn_ipc_header_init(&msg.h, TN_IPC_CTL_WORKERS, 0);
        int err = tn_ipc_send(g->ctl, &msg, sizeof(msg), NULL, 0, MSG_DONTWAIT);
        if (err == 0)
            g->pool_sent = n;
        else if (err != -EAGAIN && err != -EPIPE)
            tn_log_error("send() on front %d's control socket failed: %s", (int)g->front->pid,
                         strerror(-err));
    }
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
    if (m->http.state == SLOT_WAITING && (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING))
        EARLIER(m->http.respawn_at_ms);
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

static void remove_gateway_dir(struct master *m);

/*
 * The gateway's private runtime dir (0700, under $RUNTIME_DIRECTORY or
 * $TMPDIR or /tmp), the front's socket name in it, and the per-run secret,
 * into cfg. Returns 0 or -1 with a log line.
 */
static int make_gateway_dir(struct master *m, struct tn_config *cfg)
{
    const char *base = getenv("RUNTIME_DIRECTORY");
    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    int n = snprintf(m->gw_dir, sizeof(m->gw_dir), "%s/thumbnail_server-http.XXXXXX", base);
    if (n < 0 || (size_t)n >= sizeof(m->gw_dir) ||
        strlen(m->gw_dir) + sizeof("/front.sock.4194304.tmp") > sizeof(cfg->gateway_socket)) {
        tn_log_error("--http-listen: the runtime directory %s is too long a path for a unix "
                     "socket; set RUNTIME_DIRECTORY or TMPDIR to a shorter one",
                     base);
        m->gw_dir[0] = 0;
        return -1;
    }
    if (!mkdtemp(m->gw_dir)) { /* mode 0700 */
        tn_log_error("--http-listen: cannot create a private directory in %s: %s", base,
                     strerror(errno));
        m->gw_dir[0] = 0;
        return -1;
    }
    snprintf(cfg->gateway_socket, sizeof(cfg->gateway_socket), "%s/front.sock", m->gw_dir);
    unsigned char rnd[32];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        tn_log_error("--http-listen: getrandom() failed: %s", strerror(errno));
        remove_gateway_dir(m);
        return -1;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(cfg->gateway_secret + 2 * i, 3, "%02x", rnd[i]);
    return 0;
}

/* Remove the runtime dir and what is left in it: a front that was killed
 * leaves its private socket name behind (listen.c). */
static void remove_gateway_dir(struct master *m)
{
    if (!m->gw_dir[0])
        return;
    DIR *d = opendir(m->gw_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    if (rmdir(m->gw_dir) < 0)
        tn_log_warn("cannot remove %s: %s", m->gw_dir, strerror(errno));
    m->gw_dir[0] = 0;
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
    struct tn_config first = *cfg;
    m.http_fd = cfg->http_fd;
    m.http.role = ROLE_HTTP;
    snprintf(m.http.name, sizeof(m.http.name), "http");
    m.http.state = SLOT_DONE;
    if (m.http_fd >= 0) {
        if (make_gateway_dir(&m, &first) < 0)
            return 1;
        m.http.state = SLOT_WAITING; /* spawned by the first loop pass, like metrics */
    }
    if (!gen_new(&m, &first, GEN_ACTIVE)) {
        remove_gateway_dir(&m);
        return 1;
    }

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
    remove_gateway_dir(&m);
    tn_log_info("master exiting with status %d", m.exit_status);
    return m.exit_status;
}
