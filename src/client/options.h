/*
 * Command line and environment of thumbnail_client.
 *
 * Precedence: command line > environment (THUMBNAIL_SERVER, NUM_JOBS,
 * THUMBNAIL_TOKEN_FILE) > built-in defaults. Every value is validated here, so the rest of the
 * client never sees a malformed one: a bad value is a usage error (exit 2).
 */
#ifndef TN_CLIENT_OPTIONS_H
#define TN_CLIENT_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ipc.h"

#define TN_CLIENT_DEFAULT_SERVER "localhost:50051"
#define TN_CLIENT_DEFAULT_JOBS 2
/* The default box: the longer side at most this (a portrait video gives
 * 180xTN_JOB_DEFAULT_MAX_WIDTH). */
#define TN_CLIENT_DEFAULT_BOX TN_JOB_DEFAULT_MAX_WIDTH
#define TN_CLIENT_DEFAULT_CHUNK (1u << 20)
#define TN_CLIENT_DEFAULT_RETRIES 2
#define TN_CLIENT_DEFAULT_TIMEOUT 300.0
#define TN_CLIENT_DEFAULT_CONNECT_TIMEOUT 5.0
#define TN_CLIENT_DEFAULT_HEALTH_TIMEOUT 10.0
#define TN_CLIENT_MAX_JOBS 256
#define TN_CLIENT_MAX_CHUNK (256u << 20)
#define TN_CLIENT_MIN_CHUNK 1024u
#define TN_CLIENT_DEFAULT_PULL_THRESHOLD (64ull << 20)
#define TN_CLIENT_MAX_SERVERS 32
#define TN_CLIENT_MAX_GLOBS 64

struct tn_client_options {
    const char *server; /* the first of servers: for messages */
    /* --server, repeatable: gRPC targets ("host:port", "unix:/path", "dns:///h:p"...);
     * several are balanced round-robin over one channel (target.h). */
    const char *servers[TN_CLIENT_MAX_SERVERS];
    size_t n_servers; /* >= 1 */
    const char *input_dir;
    const char *output_dir;
    const char *input_file;    /* -i: one file instead of a directory */
    const char *output_file;   /* -o: its output ("-" = standard output); set iff input_file */
    const char *name_template; /* --name: output names ({path} {stem} {ext} {index} {time}) */
    const char *includes[TN_CLIENT_MAX_GLOBS]; /* --include: only files matching one */
    size_t n_includes;
    const char *excludes[TN_CLIENT_MAX_GLOBS]; /* --exclude: never files matching one */
    size_t n_excludes;
    bool json; /* --json: one JSON object per file and a summary on stdout */
    unsigned jobs;
    struct tn_time_point times[TN_JOB_MAX_TIMES];
    size_t n_times; /* 0 = send none: the server's default (10 %) */
    uint32_t max_width;
    uint32_t max_height;
    bool upscale;
    int mode;   /* enum tn_mode; 0 = none sent (no --mode and no time named): the server's choice */
    int format; /* enum tn_format: PNG (default), JPEG, WEBP */
    uint32_t quality;    /* JPEG/WebP 1..100; 0 = the server's default */
    bool lossless;       /* WebP only */
    uint32_t png_level;  /* zlib level 1..9; 0 = the server's default */
    uint64_t chunk_size; /* bytes of video per upload message */
    unsigned retries;    /* extra attempts after UNAVAILABLE */
    double timeout;      /* seconds, per-call deadline */
    bool timeout_set;    /* --timeout given (else --health uses a shorter default) */
    double connect_timeout;
    bool overwrite;
    bool quiet;
    bool verbose;
    bool health;
    /* engine options */
    int fit;            /* enum tn_fit; 0 = the server's default (FIT) */
    uint32_t pad_color; /* 0xRRGGBB for --fit pad */
    uint32_t count;     /* --count: N evenly spaced thumbnails (outputs -1..-N) */
    double every;       /* --every: one thumbnail every this many seconds */
    bool cover_art;
    bool storyboard;     /* --storyboard: <name>.sprite.<ext> and <name>.vtt */
    bool mode_set;       /* --mode given (a storyboard defaults to keyframe) */
    uint32_t tile_width; /* 0 = the server's default */
    uint32_t columns;    /* 0 = the server's default */
    bool probe;          /* --probe FILE...: print each file's JSON */
    char **probe_files;  /* the FILE arguments (argv) */
    size_t n_probe_files;
    /* pull and local mode */
    int pull;                /* 1 = --pull, 0 = --no-pull, -1 = by --pull-threshold */
    uint64_t pull_threshold; /* files of at least this many bytes are pulled, not uploaded */
    bool local;              /* --local: send paths relative to INPUT_DIR (server's --media-root) */
    bool per_file;           /* --per-file: local mode without Batch, one Generate per file */

    /* --animated START[-END]: one animated WebP <name>.webp; kind 0 = not given */
    bool animated;
    struct tn_time_point anim_start, anim_end;
    double fps; /* --fps; 0 = the server's default */

    /* Transport security and auth. The files are read by tn_options_parse(),
     * their contents malloc'd for the process's life. */
    bool tls;                    /* --tls, or implied by --ca / --cert */
    const char *ca_file;         /* --ca: PEM roots; NULL = the system's */
    const char *cert_file;       /* --cert: client certificate chain (mTLS) */
    const char *key_file;        /* --key: its private key */
    const char *tls_server_name; /* --tls-server-name: name to verify instead of the host */
    const char *auth_token_file; /* --auth-token-file / env THUMBNAIL_TOKEN_FILE */
    char *ca_pem, *cert_pem, *key_pem;
    char *authorization; /* "Bearer <token>", sent with every Generate; NULL = none */
};

/* How many outputs a file can have: 2 for --storyboard, N for --count, TN_JOB_MAX_TIMES for
 * --every (as many as the server sends), the --at points, or 1. */
size_t tn_options_outputs(const struct tn_client_options *o);

/* Pull mode for a file of this many bytes: --pull, or at least --pull-threshold
 * unless --no-pull. Never for an empty file (the server's "empty" error is clearer). */
bool tn_options_pulls(const struct tn_client_options *o, uint64_t size);

enum { TN_OPTIONS_RUN = 0, TN_OPTIONS_EXIT_OK = 1, TN_OPTIONS_USAGE = -1 };

/*
 * Fill *o from argv and the environment. Returns TN_OPTIONS_RUN, or
 * TN_OPTIONS_EXIT_OK after printing --help/--version to stdout, or
 * TN_OPTIONS_USAGE after printing a message to stderr (exit 2).
 */
int tn_options_parse(struct tn_client_options *o, int argc, char **argv);

/* Free what tn_options_parse() read from files (TLS material, token). NULL-safe;
 * after TN_OPTIONS_USAGE there is nothing left to free. */
void tn_options_free(struct tn_client_options *o);

/* The file extension of an output format, without the dot: "png", "jpg", "webp". */
const char *tn_options_extension(int format);

/* The --help text, with the limits and defaults above (options_usage.c). */
void tn_options_usage(FILE *f);

#endif
