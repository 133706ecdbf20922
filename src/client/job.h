/*
 * One input file, start to finish: decide its outputs, skip it if they all
 * exist, upload it (retrying UNAVAILABLE with exponential backoff), write the
 * thumbnails atomically, and describe the outcome in one line.
 */
#ifndef TN_CLIENT_JOB_H
#define TN_CLIENT_JOB_H

#include <grpc/grpc.h>
#include <signal.h>
#include <stdint.h>

#include "options.h"
#include "walk.h"

struct tn_job_env {
    const struct tn_client_options *opt;
    grpc_channel *channel;
    volatile sig_atomic_t *stop; /* SIGINT/SIGTERM seen: cancel and stop retrying */
};

enum tn_job_outcome { TN_JOB_OK, TN_JOB_FAILED, TN_JOB_SKIPPED };

struct tn_job_report {
    enum tn_job_outcome outcome;
    uint32_t thumbnails; /* written */
    bool interrupted;
    bool unauthenticated; /* the server refused our credentials: every file would fail */
    char *line;           /* malloc'd: "ok   ...", "FAIL ...", "skip ..."; NULL if out of memory */
};

/*
 * Process entry e on this thread's completion queue. collides_with is the
 * rel path of an earlier input with the same output name, or NULL; such an
 * entry fails without a call. Free rep->line when done.
 */
void tn_job_run(const struct tn_job_env *env, grpc_completion_queue *cq,
                const struct tn_walk_entry *e, const char *collides_with,
                struct tn_job_report *rep);

#endif
