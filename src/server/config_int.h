/*
 * The configuration's insides, shared by its files and by nothing else
 * (config.h is its one entry point):
 *
 *   config.c        defaults, the environment, the flags and their checks,
 *                   the absolute paths, reload
 *   config_usage.c  the --help text
 *   config_file.c   the --config file, turned into "--key=value" arguments
 *
 * The functions keep their short names, and are hidden: the program does not
 * export them.
 */
#ifndef TN_CONFIG_INT_H
#define TN_CONFIG_INT_H

#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

#define MAX_WORKERS 256
#define MAX_DURATION_S 86400.0           /* 24 h: beyond that it is a typo */
#define MIN_WORKER_MEMORY (256ull << 20) /* an idle worker already maps ~320 MiB */
#define MIN_CHUNK (1ull << 10)           /* 1 KiB */
#define MESSAGE_OVERHEAD (1ull << 10)    /* chunk + protobuf framing must fit a message */
#define MAX_MESSAGE ((uint64_t)INT_MAX)  /* gRPC channel args are ints */
#define UNIX_PATH_MAX 107                /* sizeof(sun_path) - 1 */
#define DEFAULT_LISTEN "0.0.0.0:50051"
#define MIN_FRONT_QUOTA (16ull << 20)  /* below this gRPC starves its own connections */
#define MIN_FRONT_MEMORY (64ull << 20) /* an idle front is ~20 MB resident */

/* getopt_long() codes of the long-only flags (long_options, config.c). */
enum {
    OPT_LISTEN = 256,
    OPT_WORKERS,
    OPT_SPOOL_DIR,
    OPT_MAX_UPLOAD,
    OPT_MAX_MESSAGE,
    OPT_CHUNK,
    OPT_DAEMON,
    OPT_PIDFILE,
    OPT_LOG_FILE,
    OPT_LOG_LEVEL,
    OPT_GRACE,
    OPT_JOB_TIMEOUT,
    OPT_IDLE_TIMEOUT,
    OPT_MAX_CALLS,
    OPT_MAX_QUEUED,
    OPT_MAX_CALLS_PER_PEER,
    OPT_MIN_UPLOAD_RATE,
    OPT_MAX_RESULT_BYTES,
    OPT_RANGE_TIMEOUT,
    OPT_MAX_PIXELS,
    OPT_WORKER_MEMORY,
    /* worker recycling */
    OPT_MAX_JOBS_PER_WORKER,
    OPT_MEDIA_ROOT, /* pull and local mode */
    /* metrics and logging */
    OPT_METRICS_LISTEN,
    OPT_HTTP_LISTEN, /* the HTTP gateway */
    OPT_URL_SIGNING_KEY,
    OPT_LOG_FORMAT,
    /* transport security and call authentication */
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CLIENT_CA,
    OPT_TLS_UNIX,
    OPT_AUTH_TOKEN_FILE,
    /* the config file */
    OPT_CONFIG,
    /* sandbox */
    OPT_NO_SANDBOX,
    /* hostile clients and the front watchdog */
    OPT_MAX_STREAMS_PER_CONN,
    OPT_MAX_HEADER_BYTES,
    OPT_FRONT_MEMORY_QUOTA,
    OPT_MAX_FRONT_MEMORY,
    OPT_FRONT_CHECK_INTERVAL,
    OPT_FRONT_CHECK_FAILURES,
    /* the result cache */
    OPT_CACHE_DIR,
    OPT_CACHE_SIZE,
};

#pragma GCC visibility push(hidden)

/* config.c */
extern const struct option long_options[];
const char *fmt_size(uint64_t v, char *buf, size_t len);
const char *absolutize(const char *path, char *buf, size_t len);

/* config_usage.c: --help, showing d's values as the defaults. */
void print_help(FILE *f, const struct tn_config *d);

/*
 * config_file.c. What one tn_config_parse() call built from a config file: the
 * file's text, the "--key=value" arguments made from it and the merged argv.
 * The config points into it, so it is never freed; blocks stay on config.c's
 * list (reachable) and a reload costs one more small block.
 */
struct store {
    struct store *prev;
    char path[PATH_MAX]; /* the config file, absolute */
    char **argv;         /* argv[0], the file's arguments, then the command line's */
    int *line;           /* line[i]: the file line argv[i] came from, 0 for the command line */
    char data[];         /* the "--key=value" strings */
};

/* Build a store from the config file at path and the command line: argv[0],
 * one "--key=value" (or "--flag") per setting, then argv[1..]. Returns NULL
 * with the error in err, prefixed with FILE:LINE where a line is at fault. */
struct store *load_config(const char *path, int argc, char **argv, char *err, size_t errlen);

#pragma GCC visibility pop

#endif
