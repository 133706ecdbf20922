/*
 * The front watchdog (struct watchdog in master_int.h): the serving front's
 * health, checked by a short-lived child over raw HTTP/2 (h2check.h), and its
 * resident memory; a front that keeps failing is replaced by a new generation.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "front.h"
#include "h2check.h"
#include "ipc.h"
#include "log.h"
#include "master_int.h"
#include "metrics.h"
#include "proctitle.h"

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
    tn_proctitle_set("tn: check", "thumbnail_server: front check");
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
void watchdog_tick(struct master *m, int64_t now)
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
void watchdog_reaped(struct master *m, int st)
{
    m->wd.pid = 0;
    check_done(m, WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* When watchdog_tick() must run next, or -1. */
int64_t watchdog_wakeup(const struct master *m)
{
    if (m->wd.pid)
        return m->wd.started_ms + CHECK_TIMEOUT_MS + 1000 + 1;
    return m->phase == PHASE_RUNNING && m->wd.next_ms ? m->wd.next_ms : -1;
}
