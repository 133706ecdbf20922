/*
 * One input file, start to finish: decide its outputs, skip it if they are all up to date
 * (stamp.h), send it (retrying UNAVAILABLE with exponential backoff), write the thumbnails
 * atomically with their record, and describe the outcome in one line (and, with --json, one JSON
 * object).
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
    const char *input_dir;       /* e->rel is relative to it */
    bool single;                 /* -i/-o: the one file named by the user */
};

enum tn_job_outcome { TN_JOB_OK, TN_JOB_FAILED, TN_JOB_SKIPPED };

struct tn_job_report {
    enum tn_job_outcome outcome;
    uint32_t thumbnails; /* written */
    bool interrupted;
    bool unauthenticated; /* the server refused our credentials: every file would fail */
    bool abandoned;       /* gRPC never completed a cancelled call (rpc.h): leak the queue */
    char *line;           /* malloc'd: "ok   ...", "FAIL ...", "skip ..."; NULL if out of memory */
    char *json;           /* malloc'd, with --json: one JSON object, no newline */
};

/* What the batch decided about a file before any call. */
struct tn_job_plan {
    const char *skip;          /* why it is not sent (filter.h), or NULL */
    bool keep_ext;             /* name the outputs after the whole file name: another input would
                                  take the same name otherwise */
    const char *collides_with; /* an earlier input with the same output name even so: fail */
};

/* Process entry e on this thread's completion queue. Free rep->line and
 * rep->json when done. */
void tn_job_run(const struct tn_job_env *env, grpc_completion_queue *cq,
                const struct tn_walk_entry *e, const struct tn_job_plan *plan,
                struct tn_job_report *rep);

/* The output name of e's first output relative to the output directory (for
 * collision checks): malloc'd, NULL on error. */
char *tn_job_output_name(const struct tn_client_options *opt, const char *rel, bool keep_ext);

#endif
