/*
 * The master's insides, shared by its files and by nothing else (master.h is
 * its one entry point): the process table (struct slot, struct gen), the
 * watchdog's state, struct master, and the functions one file calls in
 * another. The DESIGN paragraph is at the top of master.c.
 *
 *   master.c    signals, stops (fast and draining), the front's control
 *               socket, the main loop, start-up
 *   gen.c       forking a child, the slot helpers, generations, reload
 *   reap.c      deaths: reaping, respawn backoff, the crash-loop guard
 *   watchdog.c  the front checks: health (h2check.h) and memory
 *
 * The functions keep their short names, and are hidden: the program does not
 * export them, so a shared library with a function of the same name still
 * calls its own.
 */
#ifndef TN_MASTER_INT_H
#define TN_MASTER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

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

enum role { ROLE_WORKER, ROLE_FRONT, ROLE_METRICS, ROLE_HTTP };

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
    GEN_STARTING, /* a reload's children are starting; the old generation still serves */
    GEN_ACTIVE,   /* the serving generation (exactly one, except before the first start) */
    GEN_RETIRING, /* its front drains (or was killed); its workers end with the queue */
};

struct gen {
    enum gen_state state;
    unsigned id;          /* 1, 2, ... in the master's log lines */
    struct tn_config cfg; /* owned copy: the strings are ours (own_config), freed with the gen */
    char *strings[TN_MAX_LISTEN + 16];
    /* The job queue. The master keeps BOTH ends open while the generation
     * serves: it hands q[0] to a respawned worker and q[1] to a respawned
     * front, and holding q[1] means workers never see EOF on the queue while
     * the front is being replaced. It never reads or writes them. Closing both
     * (retire) is what lets the workers see EOF and exit. */
    int q[2];
    int ctl;                  /* master's end of the front's control socket (front.h); -1 */
    bool front_ready;         /* the current front said TN_IPC_CTL_READY */
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
    struct slot http;      /* the HTTP gateway: SLOT_DONE when --http-listen is off */
    int http_fd;           /* its listening socket (main.c bound it); -1 */
    bool http_replacing;   /* a reload sent it SIGQUIT: respawn at once, with the new config */
    char gw_dir[96];       /* the private runtime dir of the gateway's socket; "" = none */
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

#pragma GCC visibility push(hidden)

/* The signals the master handles (master.c); a new child resets them (gen.c).
 * N_HANDLED counts them: keep the two in step. */
#define N_HANDLED 6
extern const int handled_signals[N_HANDLED];

/* master.c: signals, stops */
const char *sig_name(int sig);
void begin_stop(struct master *m, int status);

/* gen.c: children, slots, generations, reload */
void close_other_fds(int *keep, int n);
void spawn(struct master *m, struct gen *g, struct slot *s);
void describe_status(int st, char *buf, size_t len);
bool alive(const struct slot *s);
int n_alive(const struct master *m);
void signal_slot(const struct slot *s, int sig);
void signal_all(struct master *m, int sig);
struct gen *active_gen(struct master *m);
struct gen *starting_gen(struct master *m);
int usable_workers(const struct gen *g);
bool any_worker_ready(const struct gen *g);
void gen_free(struct gen *g);
struct gen *gen_new(struct master *m, const struct tn_config *cfg, enum gen_state state);
void gen_retire(struct master *m, struct gen *g, bool now_stop);
void gen_check_retired(struct gen *g);
void begin_reload(struct master *m);
void abort_reload(struct master *m, struct gen *g, const char *why);
void switch_if_ready(struct master *m);

/* reap.c: deaths and respawns */
void reap(struct master *m);
bool respawns(const struct master *m, const struct gen *g, const struct slot *s);
void respawn_due(struct master *m, int64_t now);

/* watchdog.c: the front checks */
void watchdog_tick(struct master *m, int64_t now);
void watchdog_reaped(struct master *m, int st); /* reap() hands it its checker */
int64_t watchdog_wakeup(const struct master *m);

#pragma GCC visibility pop

#endif
