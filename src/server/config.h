/*
 * Server configuration: defaults, environment, then command-line flags (the
 * later wins). Parsed once in the master before any fork; the workers and the
 * front get a copy of the struct through fork.
 */
#ifndef TN_CONFIG_H
#define TN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TN_MAX_LISTEN 16

struct tn_config {
    const char *listen[TN_MAX_LISTEN]; /* "0.0.0.0:50051", "unix:/run/x.sock"; point into argv */
    size_t n_listen;                   /* >= 1 after parsing (default added if none) */
    int workers;                       /* --workers / env NUM_WORKERS; default online CPUs */
    const char *spool_dir;             /* --spool-dir; default $TMPDIR or /tmp */
    uint64_t max_upload_bytes;         /* --max-upload-bytes; default 16 GiB */
    uint64_t max_message_bytes;        /* --max-message-bytes; default 4 MiB + 64 KiB */
    uint64_t chunk_size;               /* --chunk-size; default 1 MiB; < max_message_bytes */
    bool daemon;                       /* --daemon */
    const char *pidfile;               /* --pidfile; NULL = none */
    const char *log_file;              /* --log-file; NULL = stderr */
    int log_level;                     /* --log-level; enum tn_log_level; default info */
    double grace_s;                    /* --grace; SIGQUIT drain time; default 30 */
    double job_timeout_s;              /* --job-timeout; default 30; per job, from upload end */
    double idle_timeout_s;             /* --idle-timeout; default 60; 0 = off; upload silence */
    int max_concurrent_calls;          /* --max-concurrent-calls; default 256 */
    int max_queued_jobs;               /* --max-queued-jobs; default 64 (not yet picked up) */
    uint64_t max_pixels;               /* --max-pixels; default 8192*8192 */
    uint64_t worker_memory;            /* --worker-memory (RLIMIT_AS); default 1 GiB; 0 = off */
    /* sandbox: worker seccomp filter */
    bool sandbox; /* default on; --no-sandbox turns it off */
};

/*
 * Fill cfg from defaults, environment and argv. Returns 0 to run, 1 if --help
 * or --version was printed (exit 0), -1 on a usage error (message in err,
 * exit 2).
 */
int tn_config_parse(struct tn_config *cfg, int argc, char **argv, char *err, size_t errlen);

#endif
