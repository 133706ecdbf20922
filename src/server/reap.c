/*
 * The master's children's deaths (see master.c's DESIGN): reaping with
 * waitpid(WNOHANG), what each death means for a worker, a front and the
 * metrics process, respawn with exponential backoff, and the crash-loop guard
 * that gives up a slot which keeps failing at start-up.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ipc.h"
#include "log.h"
#include "master_int.h"
#include "metrics.h"
#include "worker.h"

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

/* The metrics process or the gateway died: respawn it (with backoff) unless the server stops. */
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

void reap(struct master *m)
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
        if (alive(&m->http) && m->http.pid == pid) {
            if (m->http_replacing && WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
                m->phase == PHASE_RUNNING) {
                tn_log_info("http %d exited for the reload; starting the new one", (int)pid);
                m->http.pid = 0;
                m->http.state = SLOT_WAITING;
                m->http.respawn_at_ms = 0;
            } else {
                metrics_ended(m, &m->http, st); /* the same: respawn with backoff */
            }
            m->http_replacing = false;
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
bool respawns(const struct master *m, const struct gen *g, const struct slot *s)
{
    if (m->phase == PHASE_STOPPING || m->phase == PHASE_KILLING)
        return false;
    if (s->role == ROLE_FRONT)
        return m->phase == PHASE_RUNNING && g->state != GEN_RETIRING;
    return g->state != GEN_RETIRING || g->q[1] >= 0;
}

void respawn_due(struct master *m, int64_t now)
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
    if (m->http.state == SLOT_WAITING && m->http.respawn_at_ms <= now &&
        (m->phase == PHASE_RUNNING || m->phase == PHASE_DRAINING) && active_gen(m))
        spawn(m, NULL, &m->http);
}
