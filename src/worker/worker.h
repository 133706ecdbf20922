/*
 * A decode worker process: forked by the master, never calls grpc_init().
 * Blocks in recvmsg() on the shared job queue, runs one job at a time through
 * the engine, and answers on the job's reply socket (ACK, RESULT..., DONE; see
 * ipc.h).
 */
#ifndef TN_WORKER_H
#define TN_WORKER_H

#include <stdint.h>

/* Exit status of a worker that retired after its job quota (--max-jobs-per-worker):
 * not a failure; the master respawns it at once and counts a "recycle" restart. */
#define TN_EXIT_RECYCLED 3

struct tn_worker_options {
    int index;             /* 0..N-1, for the log role "worker#i" */
    uint64_t max_pixels;   /* 0 = libav default */
    uint64_t memory_limit; /* RLIMIT_AS in bytes; 0 = unlimited */
    uint64_t max_jobs; /* exit TN_EXIT_RECYCLED after about this many jobs (+-10 %); 0 = never */
    /* Set to 1 once initialized, before the first job: the master (which owns
     * this MAP_SHARED word) tells a start-up failure from a later death. May be NULL. */
    volatile uint32_t *ready;
    int sandbox; /* 1: seccomp filter once set up (sandbox.h); --no-sandbox: 0 */
};

/*
 * Serve jobs from queue_fd until the queue reports EOF or an unrecoverable
 * error. Never returns: exits 0 on a clean stop, 1 on a runtime error, 2 if it
 * could not initialize (the master must not respawn it in a loop), and
 * TN_EXIT_RECYCLED after its share of jobs.
 * The caller (master, after fork) has already closed every fd the worker does
 * not own; queue_fd is owned by the worker from here on.
 */
__attribute__((noreturn)) void tn_worker_main(int queue_fd, const struct tn_worker_options *opt);

#endif
