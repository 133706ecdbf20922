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
#include <stdbool.h>
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

/*
 * tn_job_run() in steps, for a caller that makes the call itself (a Batch
 * call over many files). tn_job_prepare() returns the file ready for its
 * call, or NULL when it needs none (skipped, failed: rep is complete).
 * tn_job_call() makes the call, retrying as tn_job_run() does; with `first`,
 * that is the result of a first attempt made elsewhere. tn_job_finish()
 * writes the outputs, fills rep and frees the job.
 */
struct tn_job;
struct tn_rpc_result;
struct tn_job *tn_job_prepare(const struct tn_job_env *env, const struct tn_walk_entry *e,
                              const struct tn_job_plan *plan, struct tn_job_report *rep);
void tn_job_call(struct tn_job *j, grpc_completion_queue *cq, const struct tn_rpc_result *first);
void tn_job_finish(struct tn_job *j, struct tn_job_report *rep);
/* Free a prepared job never sent (not started: no report). */
void tn_job_drop(struct tn_job *j);
/* Can j be one of a Batch call's files: local mode, every output asked for? */
bool tn_job_batchable(const struct tn_job *j);
/* Would tn_job_call() retry after r? (then the caller lets it) */
bool tn_job_transient(const struct tn_job *j, const struct tn_rpc_result *r);
const struct tn_rpc_request *tn_job_request(const struct tn_job *j);
const struct tn_rpc_sink *tn_job_sink(const struct tn_job *j);
/* The file's call starts now (its time in the result line counts from here). */
void tn_job_started(struct tn_job *j);

/* The output name of e's first output relative to the output directory (for
 * collision checks): malloc'd, NULL on error. */
char *tn_job_output_name(const struct tn_client_options *opt, const char *rel, bool keep_ext);

#endif
