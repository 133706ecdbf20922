/*
 * Metrics shared by every process of the server, exposed in Prometheus' text
 * format by the metrics process (src/server/metrics_http.c).
 *
 * DESIGN. The master creates one MAP_SHARED|MAP_ANONYMOUS region with
 * tn_metrics_create() before it forks anything, and never unmaps it; every
 * child inherits the mapping through fork(), so a respawned (or reloaded)
 * front or worker adds to the same counters and nothing is lost when a process
 * dies. The region holds fixed arrays of 64-bit counters updated with atomic
 * builtins: no locks, so a process killed mid-update cannot leave one held.
 *
 * Gauges that a process owns (a front's queue depth and spool bytes, a
 * worker's busy flag) live in per-process records keyed by pid: a process
 * claims one when it starts, and the master clears it when it reaps that pid
 * (tn_metrics_reaped), so a crashed process never leaves a stale value behind.
 *
 * Every function is a no-op before tn_metrics_create() (unit tests, the
 * client): callers need not check.
 */
#ifndef TN_METRICS_H
#define TN_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The gRPC methods the front serves (go-grpc-prometheus labels). */
enum tn_metrics_method {
    TN_M_GENERATE = 0,     /* thumbnail.v1.Thumbnailer/Generate, bidi_stream */
    TN_M_HEALTH_CHECK,     /* grpc.health.v1.Health/Check, unary */
    TN_M_HEALTH_WATCH,     /* grpc.health.v1.Health/Watch, server_stream */
    TN_M_REFLECTION,       /* grpc.reflection.v1.ServerReflection/..., bidi_stream */
    TN_M_REFLECTION_ALPHA, /* the same in v1alpha */
    TN_M_PROBE,            /* thumbnail.v1.Thumbnailer/Probe, client_stream */
    TN_M_N_METHODS,
};

/* How a call reached the front: directly, or through the HTTP gateway (which
 * proves it with the per-run secret, see src/http/gateway.h). */
enum tn_metrics_protocol {
    TN_P_GRPC = 0,
    TN_P_HTTP,
    TN_P_N,
};

/* Why a worker was replaced. */
enum tn_restart_cause {
    TN_RESTART_CRASH = 0, /* any other signal or exit status */
    TN_RESTART_TIMEOUT,   /* SIGKILLed by the front for a job past its deadline */
    TN_RESTART_RECYCLE,   /* exited TN_EXIT_RECYCLED after --max-jobs-per-worker */
    TN_RESTART_SANDBOX,   /* killed by SIGSYS: a system call outside the seccomp filter */
    TN_RESTART_N_CAUSES,
};

/* Why the master's watchdog replaced a front that was still running. */
enum tn_front_cause {
    TN_FRONT_UNHEALTHY = 0, /* its health check went unanswered (accept stall, hang) */
    TN_FRONT_MEMORY,        /* its resident memory stayed above --max-front-memory */
    TN_FRONT_N_CAUSES,
};

/* Master, once, before any fork. Returns 0 or -errno. */
int tn_metrics_create(void);

/* ---- the front ---------------------------------------------------------- */

/* A call to method m was accepted. */
void tn_metrics_call_started(enum tn_metrics_method m);
/* It ended with gRPC status code (0..16) after seconds. */
void tn_metrics_call_handled(enum tn_metrics_method m, int code, double seconds);
/* The same, for a call of protocol p (the two above are TN_P_GRPC). */
void tn_metrics_call_started_p(enum tn_metrics_method m, enum tn_metrics_protocol p);
void tn_metrics_call_handled_p(enum tn_metrics_method m, enum tn_metrics_protocol p, int code,
                               double seconds);
void tn_metrics_msg_received(enum tn_metrics_method m);
void tn_metrics_msg_sent(enum tn_metrics_method m);
/* A call to a method this server does not serve (answered UNIMPLEMENTED). */
void tn_metrics_unknown_method(void);
/* Upload bytes written to the spool; image bytes streamed to clients. */
void tn_metrics_bytes_received(uint64_t n);
void tn_metrics_bytes_sent(uint64_t n);

/* Claim this front's record (call once, in the front, after fork). */
void tn_metrics_front_attach(void);
/* Jobs of this front waiting for a worker (set, not added). */
void tn_metrics_front_queue_depth(int n);
/* Bytes in spool files held by this front's calls: +n when written, -n when released. */
void tn_metrics_front_spool_add(int64_t n);
/* The result cache (cache.h): events since the last call, added to the totals. */
void tn_metrics_cache_add(uint64_t hits, uint64_t misses, uint64_t damaged, uint64_t stores,
                          uint64_t evictions, uint64_t evicted_bytes);
/* This front's view of its cache: entries and bytes (set, not added). */
void tn_metrics_front_cache_size(uint64_t entries, uint64_t bytes);
/* The front is about to SIGKILL worker pid for an overrun job: its death is a timeout. */
void tn_metrics_worker_mark_timeout(pid_t pid);

/* ---- a worker ----------------------------------------------------------- */

void tn_metrics_worker_attach(void);
void tn_metrics_worker_busy(int busy);
/* One job ran seconds in the engine; codec is libav's name of the video codec
 * ("h264", ...; NULL or "" when the file never got that far); mode an enum tn_mode. */
void tn_metrics_decode(const char *codec, int mode, double seconds);

/* ---- the master --------------------------------------------------------- */

/*
 * Child pid was reaped: free its record. Returns 1 if the front had marked it
 * (tn_metrics_worker_mark_timeout) as killed for an overrun job, else 0.
 */
int tn_metrics_reaped(pid_t pid);
/* Count a worker restart (the master, for a death it did not ask for). */
void tn_metrics_worker_restart(enum tn_restart_cause cause);
const char *tn_metrics_cause_name(enum tn_restart_cause cause);
/* Count a front the watchdog replaced (the master). */
void tn_metrics_front_replaced(enum tn_front_cause cause);

/* ---- exposition --------------------------------------------------------- */

/*
 * The whole exposition (Prometheus text format 0.0.4) in a malloc'd buffer
 * the caller frees; its length in *len. NULL if out of memory (or before
 * tn_metrics_create).
 */
char *tn_metrics_render(size_t *len);

#endif
