/*
 * Server configuration: defaults, environment, the --config file, then
 * command-line flags (the later wins). Parsed once in the master before any fork; the workers and
 * the front get a copy of the struct through fork.
 */
#ifndef TN_CONFIG_H
#define TN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TN_MAX_LISTEN 16

struct tn_tls;

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
    double idle_timeout_s; /* --idle-timeout; default 60; 0 = off; upload silence, unread results */
    int max_concurrent_calls; /* --max-concurrent-calls; default 256 */
    /* Fairness between clients */
    int max_calls_per_peer;    /* --max-calls-per-peer; default half the above; 0 = off */
    uint64_t min_upload_bytes; /* --min-upload-rate BYTES/WINDOW; default 16K/10s; 0 = off */
    double min_upload_window_s;
    uint64_t max_result_bytes; /* --max-result-bytes; default 1G; 0 = off */
    double range_timeout_s;    /* --range-timeout; default 5; pull mode, per range */
    int max_queued_jobs;       /* --max-queued-jobs; default 64 (not yet picked up) */
    uint64_t max_pixels;       /* --max-pixels; default 8192*8192 */
    uint64_t worker_memory;    /* --worker-memory (RLIMIT_AS); default 1 GiB; 0 = off */
    /* pull and local mode */
    const char
        *media_root; /* --media-root: local mode's folder (absolute); NULL = local mode off */

    /* metrics and logging */
    const char *metrics_listen; /* --metrics-listen HOST:PORT; NULL = no metrics endpoint */
    int metrics_fd;             /* its listening socket, bound by main.c before daemonizing; -1 */
    int log_format;             /* --log-format: enum tn_log_format; default text */
    bool log_syslog;            /* --daemon without --log-file: log to syslog */

    /* The HTTP gateway (src/http/gateway.h): a process of its own, a gRPC
     * client of the front over a private unix socket. */
    const char *http_listen;     /* --http-listen HOST:PORT; NULL = no HTTP */
    int http_fd;                 /* its listening socket, bound by main.c; -1 */
    const char *url_signing_key; /* --url-signing-key PATH: HTTP URLs need sig= */
    /* Set by the master at start (not flags): the private socket the front
     * also listens on for the gateway, and the per-run secret the gateway
     * sends in the "tn-gateway" metadata so the front labels its calls. */
    char gateway_socket[108]; /* "" = no gateway */
    char gateway_secret[65];  /* hex */

    /* Transport security and call authentication. The files are read and
     * checked by tn_config_parse(); tls points at the result. */
    const char *tls_cert;        /* --tls-cert PATH: PEM chain, server's own first; TLS on */
    const char *tls_key;         /* --tls-key PATH: its PEM private key (unencrypted) */
    const char *tls_client_ca;   /* --tls-client-ca PATH: require client certs it signed (mTLS) */
    bool tls_unix;               /* --tls-unix: unix: listeners use TLS too (default plaintext) */
    const char *auth_token_file; /* --auth-token-file PATH: calls need "Bearer <token>" */
    const struct tn_tls *tls;    /* the loaded material; NULL when none of the above is set */

    /* the config file */
    const char *config_file; /* --config, made absolute; NULL = none */
    /* worker recycling */
    uint64_t max_jobs_per_worker; /* --max-jobs-per-worker; default 1000 (+-10 %); 0 = never */
    /* the worker's seccomp filter */
    bool sandbox; /* default on; --no-sandbox turns it off */

    /* What one client may cost the front before the auth check, and the
     * master's watchdog that replaces a front that stopped answering anyway. */
    int max_streams_per_connection; /* --max-streams-per-connection; HTTP/2; default 100 */
    uint64_t max_header_bytes;      /* --max-header-bytes; a call's metadata; default 16 KiB */
    uint64_t front_memory_quota;    /* --front-memory-quota; gRPC resource quota; 32M; 0 = none */
    uint64_t max_front_memory;      /* --max-front-memory; front RSS to replace it at; 0 = off */
    double front_check_interval_s;  /* --front-check-interval; watchdog period; 0 = off */
    int front_check_failures;       /* --front-check-failures; consecutive, to replace; 3 */

    /* the result cache (cache.h) */
    const char *cache_dir; /* --cache-dir: absolute; NULL = no cache */
    uint64_t cache_size;   /* --cache-size; default 1G */
};

/*
 * Fill cfg from defaults, environment, the --config FILE named in argv (if
 * any) and argv. A pure function of those three: a reload may call it again.
 * Returns 0 to run, 1 if --help or --version was printed (exit 0), -1 on a
 * usage error (message in err, exit 2; "FILE:LINE: ..." for a bad line in the
 * config file).
 * The TLS and token files are read here (a file that cannot be read
 * or does not hold what its flag expects is a usage error); the material lives
 * in memory of this module that later parses leave alone (a reload cannot
 * disturb the serving configuration's).
 */
int tn_config_parse(struct tn_config *cfg, int argc, char **argv, char *err, size_t errlen);

/*
 * Wipe and free the TLS private key and the token digest loaded by
 * tn_config_parse() (cfg->tls then points at empty material). For a process
 * that must not hold them: a decode worker, which parses untrusted input.
 */
void tn_config_drop_secrets(void);

/*
 * SIGHUP: build the configuration again from the same sources as the first
 * tn_config_parse() (its argv, the environment, relative paths against the
 * directory it ran in), into cfg. Returns 0, or -1 with the reason in err.
 * String fields point into argv or into storage of this module that the next
 * parse or reload overwrites: a caller that keeps a configuration across a
 * reload copies the strings (the master does: own_config() in gen.c).
 */
int tn_config_reload(struct tn_config *cfg, char *err, size_t errlen);

#endif
