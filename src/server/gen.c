/*
 * The master's children and generations (see master.c's DESIGN): forking a
 * worker, front or metrics process into its slot, the helpers that read the
 * process table, creating and retiring a generation (its job queue, its ready
 * words, its owned copy of the configuration), and reload: a new generation
 * beside the serving one, switched to once it is ready.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "front.h"
#include "gateway.h"
#include "ipc.h"
#include "log.h"
#include "master_int.h"
#include "metrics_http.h"
#include "proctitle.h"
#include "worker.h"

void close_other_fds(int *keep, int n)
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
    const char *role = s->role == ROLE_WORKER    ? "worker"
                       : s->role == ROLE_FRONT   ? "front"
                       : s->role == ROLE_METRICS ? "metrics"
                                                 : "http";
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
    int own_q = s->role == ROLE_METRICS ? m->metrics_fd
                : s->role == ROLE_HTTP  ? m->http_fd
                : front                 ? g->q[1]
                                        : g->q[0];

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
    /* The gateway keeps the secrets: it serves TLS and checks the token. It
     * takes the serving generation's configuration (its own flags change only
     * at a restart, see begin_reload). */
    if (s->role == ROLE_HTTP) {
        const struct gen *serving = NULL;
        for (const struct gen *x = m->gens; x < m->gens + MAX_GENS; x++)
            if (x->state == GEN_ACTIVE)
                serving = x;
        _exit(serving ? tn_gateway_main(&serving->cfg, own_q) : 1);
    }
    /* Secrets: a worker parses untrusted input, the metrics process answers anyone
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

void spawn(struct master *m, struct gen *g, struct slot *s)
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

void describe_status(int st, char *buf, size_t len)
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

bool alive(const struct slot *s)
{
    return s->state == SLOT_RUNNING;
}

int n_alive(const struct master *m)
{
    int n = 0;
    for (const struct gen *g = m->gens; g < m->gens + MAX_GENS; g++)
        if (g->state != GEN_FREE)
            for (const struct slot *s = g->slots; s <= g->front; s++)
                n += alive(s);
    return n + alive(&m->metrics) + alive(&m->http);
}

void signal_slot(const struct slot *s, int sig)
{
    /* pid > 0 always: kill(0 or -1, ...) would hit the wrong processes. */
    if (alive(s) && s->pid > 0 && kill(s->pid, sig) < 0 && errno != ESRCH)
        tn_log_error("kill(%s %d, SIG%s) failed: %s", s->name, (int)s->pid, sig_name(sig),
                     strerror(errno));
}

void signal_all(struct master *m, int sig)
{
    FOR_EACH_GEN (m, g)
        FOR_EACH_SLOT (g, s)
            signal_slot(s, sig);
    signal_slot(&m->metrics, sig);
    signal_slot(&m->http, sig);
}

struct gen *active_gen(struct master *m)
{
    FOR_EACH_GEN (m, g)
        if (g->state == GEN_ACTIVE)
            return g;
    return NULL;
}

struct gen *starting_gen(struct master *m)
{
    FOR_EACH_GEN (m, g)
        if (g->state == GEN_STARTING)
            return g;
    return NULL;
}

/* Worker slots that still have, or will again have, a process. */
int usable_workers(const struct gen *g)
{
    int n = 0;
    for (int i = 0; i < g->n_workers; i++)
        n += g->slots[i].state == SLOT_RUNNING || g->slots[i].state == SLOT_WAITING;
    return n;
}

bool any_worker_ready(const struct gen *g)
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
    const char **more[] = {&g->cfg.media_root,  &g->cfg.metrics_listen, &g->cfg.tls_cert,
                           &g->cfg.tls_key,     &g->cfg.tls_client_ca,  &g->cfg.auth_token_file,
                           &g->cfg.config_file, &g->cfg.http_listen,    &g->cfg.url_signing_key,
                           &g->cfg.cache_dir};
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
        if (*more[i] && !(*more[i] = own_string(g, &n, *more[i])))
            return -ENOMEM;
    return 0;
}

void gen_free(struct gen *g)
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
struct gen *gen_new(struct master *m, const struct tn_config *cfg, enum gen_state state)
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
void gen_retire(struct master *m, struct gen *g, bool now_stop)
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
void gen_check_retired(struct gen *g)
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

/* ---- reload ---------------------------------------------------------------- */

/* SIGHUP: a new generation from the configuration read again. The serving
 * one keeps serving until the new one is ready (switch_if_ready), and keeps
 * serving for good if the new configuration is bad or the new children fail. */
void begin_reload(struct master *m)
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
        /* The gateway: one process for the server's life, like metrics. */
        if ((cfg.http_listen == NULL) != (o->http_listen == NULL) ||
            (cfg.http_listen && strcmp(cfg.http_listen, o->http_listen) != 0) ||
            (cfg.url_signing_key == NULL) != (o->url_signing_key == NULL) ||
            (cfg.url_signing_key && strcmp(cfg.url_signing_key, o->url_signing_key) != 0))
            tn_log_warn("reload: --http-listen and --url-signing-key take effect only at a "
                        "restart; keeping the old values");
        cfg.http_listen = o->http_listen;
        cfg.url_signing_key = o->url_signing_key;
        memcpy(cfg.gateway_socket, o->gateway_socket, sizeof(cfg.gateway_socket));
        memcpy(cfg.gateway_secret, o->gateway_secret, sizeof(cfg.gateway_secret));
    }
    cfg.metrics_fd = m->metrics_fd;
    cfg.http_fd = m->http_fd;
    struct gen *g = gen_new(m, &cfg, GEN_STARTING);
    if (!g) {
        tn_log_error("reload failed; still serving with the old generation");
        return;
    }
    g->deadline_ms = tn_mono_ms() + RELOAD_TIMEOUT_MS;
    tn_log_info("reload: starting generation %u (%d worker(s))", g->id, g->n_workers);
}

/* The reload failed: keep the serving generation, stop the new one. */
void abort_reload(struct master *m, struct gen *g, const char *why)
{
    tn_log_error("reload failed: generation %u %s; still serving with generation %u", g->id, why,
                 active_gen(m) ? active_gen(m)->id : 0);
    gen_retire(m, g, true);
}

/* A starting generation whose front is serving and one of whose workers is
 * ready takes over; the old one drains. */
void switch_if_ready(struct master *m)
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
    /* The gateway takes the serving generation's configuration (token, TLS
     * material, limits): a new one replaces it, as soon as it has finished
     * its requests in flight (SIGQUIT; reap() respawns it at once). */
    if (old && alive(&m->http)) {
        m->http_replacing = true;
        signal_slot(&m->http, SIGQUIT);
    }
}
