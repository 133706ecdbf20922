/*
 * Server configuration: defaults, then the environment (NUM_WORKERS, TMPDIR),
 * then the --config file, then command-line flags; the later wins.
 *
 * The config file holds "key = value" lines whose keys are the long flag
 * names. It is turned into "--key=value" arguments placed before the command
 * line's, and one getopt loop reads both: a file setting can never accept a
 * value its flag would refuse, and "later wins" gives flags precedence for
 * free. A repeatable key (listen) collects every line; any --listen on the
 * command line replaces the file's list. Parsing stays a pure function of
 * (argv, environment, file contents), so a reload can simply call it again.
 *
 * Every value is checked here, in the master, before anything is forked: a bad
 * flag must fail the start with a message that names the flag and the accepted
 * form, not surface later as a worker or front that exits 2.
 *
 * Relative paths (--spool-dir, --pidfile, --log-file, a relative unix: socket)
 * are made absolute against the working directory at start-up, because a
 * daemon chdir()s to "/" and the log file is reopened on SIGUSR1. The absolute
 * forms live in static storage here, so they stay valid for the process's
 * life; a later tn_config_parse() call reuses that storage.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errf.h"
#include "log.h"
#include "parse.h"
#include "tls.h"

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

/* Storage for the absolute forms of relative paths (see the top comment). */
static char abs_spool[PATH_MAX];
static char abs_pidfile[PATH_MAX];
static char abs_log[PATH_MAX];
static char abs_media_root[PATH_MAX];
static char abs_listen[TN_MAX_LISTEN][sizeof("unix:") + UNIX_PATH_MAX];
/* The TLS material and token digests that cfg->tls points at (tls): one per
 * parse that loaded any, never reused, so that a reload (another parse) can
 * neither change nor clear what the serving generation's cfg->tls holds, even
 * when it fails. Reachable from here until the process exits: a few KB per
 * reload. */
struct tls_node {
    struct tn_tls tls;
    struct tls_node *next;
};
static struct tls_node *tls_nodes;

/* Reload (tn_config_reload): the command line of the first parse, and the
 * directory relative paths were resolved against (a daemon has since moved to
 * "/"). */
static int saved_argc;
static char **saved_argv;
static char base_dir[PATH_MAX];

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
    /* reload: lifecycle and recycling */
    OPT_MAX_JOBS_PER_WORKER,
    OPT_MEDIA_ROOT, /* pull and local mode */
    /* metrics and logging */
    OPT_METRICS_LISTEN,
    OPT_LOG_FORMAT,
    /* tls */
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CLIENT_CA,
    OPT_TLS_UNIX,
    OPT_AUTH_TOKEN_FILE,
    /* ops: config file */
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
};

static const struct option long_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"spool-dir", required_argument, NULL, OPT_SPOOL_DIR},
    {"max-upload-bytes", required_argument, NULL, OPT_MAX_UPLOAD},
    {"max-message-bytes", required_argument, NULL, OPT_MAX_MESSAGE},
    {"chunk-size", required_argument, NULL, OPT_CHUNK},
    {"daemon", no_argument, NULL, OPT_DAEMON},
    {"pidfile", required_argument, NULL, OPT_PIDFILE},
    {"log-file", required_argument, NULL, OPT_LOG_FILE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"grace", required_argument, NULL, OPT_GRACE},
    {"job-timeout", required_argument, NULL, OPT_JOB_TIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"max-concurrent-calls", required_argument, NULL, OPT_MAX_CALLS},
    {"max-queued-jobs", required_argument, NULL, OPT_MAX_QUEUED},
    {"max-calls-per-peer", required_argument, NULL, OPT_MAX_CALLS_PER_PEER},
    {"min-upload-rate", required_argument, NULL, OPT_MIN_UPLOAD_RATE},
    {"max-result-bytes", required_argument, NULL, OPT_MAX_RESULT_BYTES},
    {"range-timeout", required_argument, NULL, OPT_RANGE_TIMEOUT},
    {"max-pixels", required_argument, NULL, OPT_MAX_PIXELS},
    {"worker-memory", required_argument, NULL, OPT_WORKER_MEMORY},
    /* reload: lifecycle and recycling */
    {"max-jobs-per-worker", required_argument, NULL, OPT_MAX_JOBS_PER_WORKER},
    {"media-root", required_argument, NULL, OPT_MEDIA_ROOT},
    /* metrics and logging */
    {"metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    /* tls */
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"tls-client-ca", required_argument, NULL, OPT_TLS_CLIENT_CA},
    {"tls-unix", no_argument, NULL, OPT_TLS_UNIX},
    {"auth-token-file", required_argument, NULL, OPT_AUTH_TOKEN_FILE},
    /* ops: config file */
    {"config", required_argument, NULL, OPT_CONFIG},
    /* sandbox */
    {"no-sandbox", no_argument, NULL, OPT_NO_SANDBOX},
    /* hostile clients and the front watchdog */
    {"max-streams-per-connection", required_argument, NULL, OPT_MAX_STREAMS_PER_CONN},
    {"max-header-bytes", required_argument, NULL, OPT_MAX_HEADER_BYTES},
    {"front-memory-quota", required_argument, NULL, OPT_FRONT_MEMORY_QUOTA},
    {"max-front-memory", required_argument, NULL, OPT_MAX_FRONT_MEMORY},
    {"front-check-interval", required_argument, NULL, OPT_FRONT_CHECK_INTERVAL},
    {"front-check-failures", required_argument, NULL, OPT_FRONT_CHECK_FAILURES},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

static const char *default_spool_dir(void)
{
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

/* "16G", "1M", "4160K" or plain bytes: the shortest exact binary form. */
static const char *fmt_size(uint64_t v, char *buf, size_t len)
{
    static const char units[] = "KMGT";
    int u = -1;
    while (v && u < 3 && (v & 1023) == 0) {
        v >>= 10;
        u++;
    }
    if (u < 0)
        snprintf(buf, len, "%" PRIu64, v);
    else
        snprintf(buf, len, "%" PRIu64 "%c", v, units[u]);
    return buf;
}

static void print_help(FILE *f, const struct tn_config *d)
{
    char s1[32], s2[32], s3[32], s4[32], s5[32], s6[32], s7[32], s8[32], s9[32];
    fprintf(f,
            "Usage: thumbnail_server [OPTION]...\n"
            "Serve thumbnail.v1.Thumbnailer over gRPC: clients stream a video in, thumbnails\n"
            "stream back. A master process supervises N decode workers and one gRPC front.\n"
            "\n"
            "Network and limits:\n"
            "  --listen ADDR             address to serve on; repeatable, up to %d: HOST:PORT,\n"
            "                            [IPV6]:PORT or unix:PATH (default: %s)\n"
            "  --max-upload-bytes SIZE   largest video accepted (default: %s)\n"
            "  --max-message-bytes SIZE  largest gRPC message, both directions (default: %s;\n"
            "                            4M + 64K)\n"
            "  --chunk-size SIZE         image bytes per response message; at least 1K and less\n"
            "                            than --max-message-bytes minus 1K (default: %s)\n"
            "  --max-concurrent-calls N  calls served at once; more get RESOURCE_EXHAUSTED\n"
            "                            (default: %d)\n"
            "  --max-queued-jobs N       uploaded jobs waiting for a free worker; more get\n"
            "                            RESOURCE_EXHAUSTED (default: %d)\n"
            "  --idle-timeout DURATION   end with DEADLINE_EXCEEDED an upload that sends\n"
            "                            nothing, or a client that reads none of its results,\n"
            "                            for this long; 0 = never (default: %gs)\n"
            "  --max-calls-per-peer N    calls at once from one client address (port ignored;\n"
            "                            unix: clients are not counted); more get\n"
            "                            RESOURCE_EXHAUSTED; 0 = no cap (default: half of\n"
            "                            --max-concurrent-calls; behind a proxy: 0)\n"
            "  --min-upload-rate SIZE/DURATION  end with DEADLINE_EXCEEDED an upload that sends\n"
            "                            less than SIZE in any DURATION window; 0 = off\n"
            "                            (default: %s/%gs)\n"
            "  --max-result-bytes SIZE   thumbnails held in the front for all clients; while\n"
            "                            over it, new jobs get RESOURCE_EXHAUSTED; 0 = no cap\n"
            "                            (default: %s)\n"
            "  --range-timeout DURATION  pull mode: end a call whose client has not sent a\n"
            "                            requested range within this long, or --idle-timeout\n"
            "                            if shorter; 0 = --idle-timeout alone (default: %gs)\n"
            "  --max-streams-per-connection N\n"
            "                            HTTP/2 streams (calls) one connection may have open\n"
            "                            at once, 1..65536 (default: %d)\n"
            "  --max-header-bytes SIZE   largest metadata (header block) of a call, 1K..1M;\n"
            "                            larger ones are refused (default: %s)\n"
            "  --front-memory-quota SIZE memory gRPC may use for the front's connections\n"
            "                            (resource quota), at least 16M; 0 = unbounded\n"
            "                            (default: %s)\n"
            "  --spool-dir DIR           writable directory for uploads in progress (unnamed\n"
            "                            O_TMPFILE files) (default: $TMPDIR, else /tmp; here %s)\n"
            "  --media-root DIR          local mode: clients that share DIR may name a file by\n"
            "                            its path relative to DIR instead of uploading it; paths\n"
            "                            leading outside DIR are refused (default: off)\n"
            "\n"
            "Decode workers:\n"
            "  --workers N               worker processes, 1..%d (default: $NUM_WORKERS, else\n"
            "                            the number of online CPUs; here %d)\n"
            "  --job-timeout DURATION    time allowed for one job, counted from the end of its\n"
            "                            upload (pull and local mode: from the options); more\n"
            "                            than 0 (default: %gs)\n"
            "  --max-pixels N            largest frame a worker will decode, in pixels\n"
            "                            (default: %" PRIu64 " = 8192*8192)\n"
            "  --worker-memory SIZE      address-space limit (RLIMIT_AS) per worker; 0 = none,\n"
            "                            else at least 256M (default: %s)\n"
            "  --no-sandbox              run workers without their seccomp filter (default:\n"
            "                            on: a worker that makes a system call outside its\n"
            "                            allowlist, e.g. open(), is killed and respawned)\n"
            "\n"
            "Security:\n"
            "  --tls-cert PATH           serve TLS with this PEM certificate chain (the\n"
            "                            server's own certificate first); needs --tls-key.\n"
            "                            Applies to every HOST:PORT listener\n"
            "  --tls-key PATH            the certificate's PEM private key (not encrypted)\n"
            "  --tls-client-ca PATH      mutual TLS: require a client certificate signed by a\n"
            "                            CA in this PEM file; other clients cannot connect\n"
            "  --tls-unix                use TLS on unix: listeners too (default: they stay\n"
            "                            plaintext, protected by the socket's permissions)\n"
            "  --auth-token-file PATH    require metadata 'authorization: Bearer TOKEN' on\n"
            "                            every call but health checks, TOKEN being the file's\n"
            "                            content; others get UNAUTHENTICATED\n"
            "\n"
            "Process:\n"
            "  --config FILE             read settings from FILE first: 'key = value' lines,\n"
            "                            keys are the long option names without '--'\n"
            "                            (listen may repeat; daemon = true|false); '#' starts\n"
            "                            a comment; options on the command line win\n"
            "  --daemon                  detach from the terminal and run in the background;\n"
            "                            without --log-file, logs go to syslog (LOG_DAEMON)\n"
            "  --pidfile PATH            write the master's pid to PATH; refuse to start if it\n"
            "                            names a running server; removed on exit\n"
            "  --log-file PATH           append logs to PATH instead of stderr; reopened on\n"
            "                            SIGUSR1 (for logrotate)\n"
            "  --log-level LEVEL         error, warn, info or debug (default: %s)\n"
            "  --log-format FORMAT       text, or json: one JSON object per line (default: text)\n"
            "  --metrics-listen ADDR     serve Prometheus metrics at http://ADDR/metrics;\n"
            "                            HOST:PORT, [IPV6]:PORT or :PORT (default: none)\n"
            "  --grace DURATION          on SIGTERM/SIGQUIT and on reload, how long in-flight\n"
            "                            calls may finish (default: %gs)\n"
            "  --max-front-memory SIZE   replace the front (new front and workers, the old\n"
            "                            ones drain) when its resident memory exceeds SIZE\n"
            "                            for --front-check-failures checks in a row; 0 = off,\n"
            "                            else at least 64M (default: %s)\n"
            "  --front-check-interval DURATION\n"
            "                            how often the master checks the front: a health call\n"
            "                            over its own connection (deadline 2s, plaintext\n"
            "                            listeners only) and its memory; 0 = off (default: %gs)\n"
            "  --front-check-failures N  failed checks in a row that replace the front, 1..100\n"
            "                            (default: %d)\n"
            "  --max-jobs-per-worker N   replace a worker after about N jobs (+-10 %%, so they\n"
            "                            do not all restart at once); 0 = never (default: %" PRIu64
            ")\n"
            "  -h, --help                print this help and exit\n"
            "  -V, --version             print the version and exit\n"
            "\n"
            "SIZE is a number of bytes, optionally with a binary suffix: 64K, 1M, 2G, 1T\n"
            "(also 1MiB, 1MB; 1K = 1024). DURATION is seconds, optionally with a unit:\n"
            "500ms, 2.5s, 2m, 1h. Later flags override earlier ones; flags override the\n"
            "--config file, which overrides the environment, which overrides the defaults.\n"
            "The TLS and token files are read once, at start-up.\n"
            "\n"
            "Environment:\n"
            "  NUM_WORKERS   default for --workers\n"
            "  TMPDIR        default for --spool-dir\n"
            "\n"
            "Signals to the master (the pid in --pidfile): TERM or QUIT stop gracefully (stop\n"
            "accepting, in-flight calls get --grace to finish; a second TERM stops now); INT\n"
            "stops now; HUP reloads (reads the configuration again, starts a new front and\n"
            "workers, then the old ones drain); USR1 reopens the log file.\n"
            "\n"
            "Exit status: 0 after a stop by signal; 1 if the server failed (e.g. the front\n"
            "could not bind its address); 2 if it could not start (a bad option, a log file\n"
            "or pidfile that cannot be written, a --metrics-listen address that cannot be\n"
            "bound, or already running).\n",
            TN_MAX_LISTEN, DEFAULT_LISTEN, fmt_size(d->max_upload_bytes, s1, sizeof(s1)),
            fmt_size(d->max_message_bytes, s2, sizeof(s2)), fmt_size(d->chunk_size, s3, sizeof(s3)),
            d->max_concurrent_calls, d->max_queued_jobs, d->idle_timeout_s,
            fmt_size(d->min_upload_bytes, s5, sizeof(s5)), d->min_upload_window_s,
            fmt_size(d->max_result_bytes, s6, sizeof(s6)), d->range_timeout_s,
            d->max_streams_per_connection, fmt_size(d->max_header_bytes, s7, sizeof(s7)),
            fmt_size(d->front_memory_quota, s8, sizeof(s8)), d->spool_dir, MAX_WORKERS, d->workers,
            d->job_timeout_s, d->max_pixels, fmt_size(d->worker_memory, s4, sizeof(s4)),
            level_names[d->log_level], d->grace_s, fmt_size(d->max_front_memory, s9, sizeof(s9)),
            d->front_check_interval_s, d->front_check_failures, d->max_jobs_per_worker);
}

/*
 * Make a relative path absolute against the working directory, into buf.
 * Returns path itself if it already is absolute, NULL if the result does not fit.
 */
static const char *absolutize(const char *path, char *buf, size_t len)
{
    const char *cwd = base_dir; /* the start-up directory, also on reload */
    if (path[0] == '/')
        return path;
    if (!cwd[0])
        return NULL;
    int n = snprintf(buf, len, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path);
    return n < 0 || (size_t)n >= len ? NULL : buf;
}

/*
 * Check one --listen address; a relative unix: path is made absolute into
 * abs_listen[slot]. Host names and IP literals are left to gRPC to resolve when
 * the front binds; only the shape "HOST:PORT" with a numeric port is checked.
 */
static int check_listen(const char *addr, size_t slot, const char **out, char *err, size_t errlen)
{
    static const char form[] = "expected HOST:PORT, [IPV6]:PORT or unix:PATH";
    if (strncmp(addr, "unix:", 5) == 0) {
        const char *p = addr + 5;
        if (strncmp(p, "//", 2) == 0) /* unix:///abs/path (URI form) */
            p += 2;
        if (!*p)
            return tn_errf(err, errlen, -1, "--listen '%s': empty socket path; %s", addr, form);
        if (p[0] == '/') {
            if (strlen(p) > UNIX_PATH_MAX)
                return tn_errf(err, errlen, -1, "--listen '%s': socket path longer than %d bytes",
                               addr, UNIX_PATH_MAX);
            *out = addr;
            return 0;
        }
        char buf[PATH_MAX];
        const char *abs = absolutize(p, buf, sizeof(buf));
        if (!abs || strlen(abs) > UNIX_PATH_MAX)
            return tn_errf(err, errlen, -1,
                           "--listen '%s': socket path longer than %d bytes once made absolute "
                           "(the server runs in /)",
                           addr, UNIX_PATH_MAX);
        snprintf(abs_listen[slot], sizeof(abs_listen[slot]), "unix:%s", abs);
        *out = abs_listen[slot];
        return 0;
    }
    const char *colon = strrchr(addr, ':');
    uint64_t port;
    if (!colon || colon == addr || tn_parse_uint(colon + 1, 0, 65535, &port) < 0)
        return tn_errf(err, errlen, -1, "--listen '%s': %s (port 0..65535)", addr, form);
    if (addr[0] == '[' && colon[-1] != ']')
        return tn_errf(err, errlen, -1, "--listen '%s': %s (an IPv6 address goes in brackets)",
                       addr, form);
    *out = addr;
    return 0;
}

static int parse_size_opt(const char *flag, const char *val, uint64_t min, uint64_t max,
                          uint64_t *out, char *err, size_t errlen)
{
    uint64_t v;
    char a[32], b[32];
    if (tn_parse_size(val, &v) < 0)
        return tn_errf(err, errlen, -1, "%s '%s': expected a size such as 1048576, 64K, 1M or 2G",
                       flag, val);
    if (v < min && max == UINT64_MAX)
        return tn_errf(err, errlen, -1, "%s '%s': must be at least %s", flag, val,
                       fmt_size(min, a, sizeof(a)));
    if (v < min || v > max)
        return tn_errf(err, errlen, -1, "%s '%s': must be between %s and %s bytes", flag, val,
                       fmt_size(min, a, sizeof(a)), fmt_size(max, b, sizeof(b)));
    *out = v;
    return 0;
}

static int parse_int_opt(const char *flag, const char *val, uint64_t min, uint64_t max,
                         uint64_t *out, char *err, size_t errlen)
{
    if (tn_parse_uint(val, min, max, out) < 0)
        return tn_errf(err, errlen, -1,
                       "%s '%s': expected a whole number from %" PRIu64 " to %" PRIu64, flag, val,
                       min, max);
    return 0;
}

static int parse_duration_opt(const char *flag, const char *val, bool zero_ok, double *out,
                              char *err, size_t errlen)
{
    double v;
    if (tn_parse_duration(val, &v) < 0)
        return tn_errf(err, errlen, -1,
                       "%s '%s': expected a duration such as 30, 2.5s, 500ms or 2m", flag, val);
    if ((!zero_ok && v <= 0) || v > MAX_DURATION_S)
        return tn_errf(err, errlen, -1, "%s '%s': must be %s 0 and at most 24h", flag, val,
                       zero_ok ? "at least" : "more than");
    *out = v;
    return 0;
}

/* "SIZE/DURATION" (16K/10s), or "0" for off. */
static int parse_rate_opt(const char *flag, const char *val, uint64_t *bytes, double *window,
                          char *err, size_t errlen)
{
    char size[64];
    const char *slash = strchr(val, '/');
    uint64_t b;
    double w;
    if (!slash && !strcmp(val, "0")) {
        *bytes = 0;
        return 0;
    }
    if (!slash || (size_t)(slash - val) >= sizeof(size))
        return tn_errf(err, errlen, -1, "%s '%s': expected SIZE/DURATION such as 16K/10s, or 0",
                       flag, val);
    snprintf(size, sizeof(size), "%.*s", (int)(slash - val), val);
    if (tn_parse_size(size, &b) < 0 || tn_parse_duration(slash + 1, &w) < 0)
        return tn_errf(err, errlen, -1, "%s '%s': expected SIZE/DURATION such as 16K/10s, or 0",
                       flag, val);
    if (b > 0 && (w < 1 || w > MAX_DURATION_S))
        return tn_errf(err, errlen, -1, "%s '%s': the window must be from 1s to 24h", flag, val);
    *bytes = b;
    *window = w;
    return 0;
}

/* The spool directory must exist and be writable now, not at the first upload. */
static int check_spool_dir(const char *dir, const char *flag, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) < 0)
        return tn_errf(err, errlen, -1, "%s '%s': %s", flag, dir,
                       errno == ENOENT ? "no such directory" : strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return tn_errf(err, errlen, -1, "%s '%s': not a directory", flag, dir);
    if (access(dir, W_OK | X_OK) < 0)
        return tn_errf(err, errlen, -1, "%s '%s': directory not writable: %s", flag, dir,
                       strerror(errno));
    return 0;
}

/*
 * tls: cross-check the security flags and load their files into a new tls_node.
 * TLS on a set of listeners that are all plaintext unix: sockets would protect
 * nothing; say so rather than start a server that looks secure.
 */
static int check_tls(struct tn_config *cfg, char *err, size_t errlen)
{
    static const char *const flags[] = {"--tls-cert", "--tls-key", "--tls-client-ca",
                                        "--auth-token-file"};
    const char *paths[] = {cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca, cfg->auth_token_file};
    cfg->tls = NULL;
    for (size_t i = 0; i < 4; i++)
        if (paths[i] && !*paths[i])
            return tn_errf(err, errlen, -1, "%s: expected a file path", flags[i]);
    if (cfg->tls_unix && !cfg->tls_cert)
        return tn_errf(err, errlen, -1, "--tls-unix needs --tls-cert and --tls-key");
    if (cfg->tls_cert && !cfg->tls_unix) {
        bool tcp = false;
        for (size_t i = 0; i < cfg->n_listen; i++)
            tcp = tcp || strncmp(cfg->listen[i], "unix:", 5) != 0;
        if (!tcp)
            return tn_errf(err, errlen, -1,
                           "--tls-cert: every --listen address is a unix: socket, and those stay "
                           "plaintext; add --tls-unix, or listen on a HOST:PORT");
    }
    if (!cfg->tls_cert && !cfg->tls_key && !cfg->tls_client_ca && !cfg->auth_token_file)
        return 0;
    struct tls_node *n = calloc(1, sizeof(*n));
    if (!n)
        return tn_errf(err, errlen, -1, "out of memory while loading the TLS files");
    if (tn_tls_load(&n->tls, cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca, cfg->auth_token_file,
                    err, errlen) < 0) {
        tn_tls_clear(&n->tls);
        free(n);
        return -1;
    }
    n->next = tls_nodes;
    tls_nodes = n;
    cfg->tls = &n->tls; /* with TLS or a token; the checks above leave nothing else */
    return 0;
}

void tn_config_drop_secrets(void)
{
    for (struct tls_node *n = tls_nodes; n; n = n->next)
        tn_tls_clear(&n->tls);
}

/*
 * The body of tn_config_parse(). argv[1..first_cli-1] came from the config
 * file, argv[first_cli..] from the command line. On an error inside the option
 * loop, *fail_index is the argv index being parsed; -1 for the cross-checks.
 */
static int parse_args(struct tn_config *cfg, int argc, char **argv, int first_cli, int *fail_index,
                      char *err, size_t errlen)
{
    uint64_t u;
    const char *env_workers = getenv("NUM_WORKERS");
    bool workers_flag = false, spool_flag = false, cli_listen = false;

    memset(cfg, 0, sizeof(*cfg));
    cfg->workers = online_cpus();
    cfg->spool_dir = default_spool_dir();
    cfg->max_upload_bytes = 16ull << 30;
    cfg->max_message_bytes = (4ull << 20) + (64ull << 10);
    cfg->chunk_size = 1ull << 20;
    cfg->log_level = TN_LOG_INFO;
    cfg->grace_s = 30;
    cfg->job_timeout_s = 30;
    cfg->idle_timeout_s = 60;
    cfg->max_concurrent_calls = 256;
    cfg->max_calls_per_peer = -1; /* half of max_concurrent_calls, once known */
    cfg->min_upload_bytes = 16u << 10;
    cfg->min_upload_window_s = 10;
    cfg->max_result_bytes = 1ull << 30;
    cfg->range_timeout_s = 5;
    cfg->max_queued_jobs = 64;
    cfg->max_pixels = 8192ull * 8192ull;
    cfg->worker_memory = 1ull << 30;
    cfg->max_jobs_per_worker = 1000; /* reload: recycling */
    cfg->metrics_fd = -1;
    cfg->log_format = TN_LOG_TEXT;
    cfg->sandbox = true; /* sandbox */
    cfg->max_streams_per_connection = 100;
    cfg->max_header_bytes = 16ull << 10;
    cfg->front_memory_quota = 32ull << 20;
    cfg->max_front_memory = 512ull << 20;
    cfg->front_check_interval_s = 5;
    cfg->front_check_failures = 3;
    if (env_workers && *env_workers && tn_parse_uint(env_workers, 1, MAX_WORKERS, &u) == 0)
        cfg->workers = (int)u; /* a bad value is reported below, unless --workers overrides it */

    opterr = 0; /* we word the errors ourselves, into err */
    optind = 0; /* 0, not 1: fully reinitialize glibc's getopt (tests parse repeatedly) */
    for (;;) {
        int c = getopt_long(argc, argv, ":hV", long_options, NULL);
        if (c == -1)
            break;
        *fail_index = optind - 1;
        switch (c) {
        case 'h': print_help(stdout, cfg); return 1;
        case 'V': printf("thumbnail_server %s\n", TN_VERSION); return 1;
        case ':': return tn_errf(err, errlen, -1, "option '%s' requires a value", argv[optind - 1]);
        case '?':
            /* optopt is a long option's value when it was given one it takes none */
            if (optopt >= OPT_LISTEN)
                return tn_errf(err, errlen, -1, "option '%s' takes no value", argv[optind - 1]);
            if (optopt)
                return tn_errf(err, errlen, -1, "unknown option '-%c'", optopt);
            return tn_errf(err, errlen, -1, "unknown or ambiguous option '%s'", argv[optind - 1]);
        case OPT_LISTEN:
            if (*fail_index >= first_cli && !cli_listen) {
                cfg->n_listen = 0; /* the command line's list replaces the file's */
                cli_listen = true;
            }
            if (cfg->n_listen == TN_MAX_LISTEN)
                return tn_errf(err, errlen, -1, "--listen: at most %d addresses", TN_MAX_LISTEN);
            if (check_listen(optarg, cfg->n_listen, &cfg->listen[cfg->n_listen], err, errlen) < 0)
                return -1;
            cfg->n_listen++;
            break;
        case OPT_WORKERS:
            if (parse_int_opt("--workers", optarg, 1, MAX_WORKERS, &u, err, errlen) < 0)
                return -1;
            cfg->workers = (int)u;
            workers_flag = true;
            break;
        case OPT_SPOOL_DIR:
            cfg->spool_dir = optarg;
            spool_flag = true;
            break;
        case OPT_MAX_UPLOAD:
            if (parse_size_opt("--max-upload-bytes", optarg, 1, UINT64_MAX, &cfg->max_upload_bytes,
                               err, errlen) < 0)
                return -1;
            break;
        case OPT_MAX_MESSAGE:
            if (parse_size_opt("--max-message-bytes", optarg, MIN_CHUNK + MESSAGE_OVERHEAD + 1,
                               MAX_MESSAGE, &cfg->max_message_bytes, err, errlen) < 0)
                return -1;
            break;
        case OPT_CHUNK:
            if (parse_size_opt("--chunk-size", optarg, MIN_CHUNK, MAX_MESSAGE, &cfg->chunk_size,
                               err, errlen) < 0)
                return -1;
            break;
        case OPT_DAEMON: cfg->daemon = true; break;
        case OPT_PIDFILE:
            if (!*optarg)
                return tn_errf(err, errlen, -1, "--pidfile: expected a file path");
            cfg->pidfile = optarg;
            break;
        case OPT_LOG_FILE:
            if (!*optarg)
                return tn_errf(err, errlen, -1, "--log-file: expected a file path");
            cfg->log_file = optarg;
            break;
        case OPT_LOG_LEVEL: {
            int l = tn_log_level_parse(optarg);
            if (l < 0)
                return tn_errf(err, errlen, -1,
                               "--log-level '%s': expected error, warn, info or debug", optarg);
            cfg->log_level = l;
            break;
        }
        case OPT_GRACE:
            if (parse_duration_opt("--grace", optarg, true, &cfg->grace_s, err, errlen) < 0)
                return -1;
            break;
        case OPT_JOB_TIMEOUT:
            if (parse_duration_opt("--job-timeout", optarg, false, &cfg->job_timeout_s, err,
                                   errlen) < 0)
                return -1;
            break;
        case OPT_IDLE_TIMEOUT:
            if (parse_duration_opt("--idle-timeout", optarg, true, &cfg->idle_timeout_s, err,
                                   errlen) < 0)
                return -1;
            break;
        case OPT_MAX_CALLS:
            if (parse_int_opt("--max-concurrent-calls", optarg, 1, 1000000, &u, err, errlen) < 0)
                return -1;
            cfg->max_concurrent_calls = (int)u;
            break;
        case OPT_MAX_CALLS_PER_PEER:
            if (parse_int_opt("--max-calls-per-peer", optarg, 0, 1000000, &u, err, errlen) < 0)
                return -1;
            cfg->max_calls_per_peer = (int)u;
            break;
        case OPT_MIN_UPLOAD_RATE:
            if (parse_rate_opt("--min-upload-rate", optarg, &cfg->min_upload_bytes,
                               &cfg->min_upload_window_s, err, errlen) < 0)
                return -1;
            break;
        case OPT_MAX_RESULT_BYTES:
            if (parse_size_opt("--max-result-bytes", optarg, 0, UINT64_MAX, &cfg->max_result_bytes,
                               err, errlen) < 0)
                return -1;
            break;
        case OPT_RANGE_TIMEOUT:
            if (parse_duration_opt("--range-timeout", optarg, true, &cfg->range_timeout_s, err,
                                   errlen) < 0)
                return -1;
            break;
        case OPT_MAX_QUEUED:
            if (parse_int_opt("--max-queued-jobs", optarg, 1, 1000000, &u, err, errlen) < 0)
                return -1;
            cfg->max_queued_jobs = (int)u;
            break;
        case OPT_MAX_PIXELS:
            if (parse_int_opt("--max-pixels", optarg, 1, INT64_MAX, &cfg->max_pixels, err, errlen) <
                0)
                return -1;
            break;
        case OPT_METRICS_LISTEN: {
            const char *colon = strrchr(optarg, ':');
            uint64_t port;
            if (!colon || tn_parse_uint(colon + 1, 1, 65535, &port) < 0 ||
                (optarg[0] == '[' && (colon == optarg || colon[-1] != ']')))
                return tn_errf(err, errlen, -1,
                               "--metrics-listen '%s': expected HOST:PORT, [IPV6]:PORT or :PORT "
                               "(port 1..65535)",
                               optarg);
            cfg->metrics_listen = optarg;
            break;
        }
        case OPT_LOG_FORMAT:
            if (strcmp(optarg, "text") == 0)
                cfg->log_format = TN_LOG_TEXT;
            else if (strcmp(optarg, "json") == 0)
                cfg->log_format = TN_LOG_JSON;
            else
                return tn_errf(err, errlen, -1, "--log-format '%s': expected text or json", optarg);
            break;
        case OPT_WORKER_MEMORY:
            if (parse_size_opt("--worker-memory", optarg, 0, UINT64_MAX, &u, err, errlen) < 0)
                return -1;
            if (u != 0 && u < MIN_WORKER_MEMORY)
                return tn_errf(
                    err, errlen, -1,
                    "--worker-memory '%s': too small to load the decoders (an idle "
                    "worker already maps ~320 MiB); use at least 256M, or 0 for no limit",
                    optarg);
            cfg->worker_memory = u;
            break;
        /* reload: lifecycle and recycling */
        case OPT_MAX_JOBS_PER_WORKER:
            if (parse_int_opt("--max-jobs-per-worker", optarg, 0, 100000000, &u, err, errlen) < 0)
                return -1;
            cfg->max_jobs_per_worker = u;
            break;
        case OPT_MEDIA_ROOT:
            if (!*optarg)
                return tn_errf(err, errlen, -1, "--media-root: expected a directory");
            cfg->media_root = optarg;
            break;
        /* tls: paths are checked (and read) below, once every flag is known */
        case OPT_TLS_CERT: cfg->tls_cert = optarg; break;
        case OPT_TLS_KEY: cfg->tls_key = optarg; break;
        case OPT_TLS_CLIENT_CA: cfg->tls_client_ca = optarg; break;
        case OPT_AUTH_TOKEN_FILE: cfg->auth_token_file = optarg; break;
        case OPT_TLS_UNIX: cfg->tls_unix = true; break;
        case OPT_CONFIG:
            break; /* read by tn_config_parse() before this loop */
        /* sandbox */
        case OPT_NO_SANDBOX: cfg->sandbox = false; break;
        /* hostile clients and the front watchdog */
        case OPT_MAX_STREAMS_PER_CONN:
            if (parse_int_opt("--max-streams-per-connection", optarg, 1, 65536, &u, err, errlen) <
                0)
                return -1;
            cfg->max_streams_per_connection = (int)u;
            break;
        case OPT_MAX_HEADER_BYTES:
            if (parse_size_opt("--max-header-bytes", optarg, 1ull << 10, 1ull << 20,
                               &cfg->max_header_bytes, err, errlen) < 0)
                return -1;
            break;
        case OPT_FRONT_MEMORY_QUOTA:
            if (parse_size_opt("--front-memory-quota", optarg, 0, UINT64_MAX, &u, err, errlen) < 0)
                return -1;
            if (u != 0 && u < MIN_FRONT_QUOTA)
                return tn_errf(
                    err, errlen, -1,
                    "--front-memory-quota '%s': too small for gRPC's own buffers; use at "
                    "least 16M, or 0 for no quota",
                    optarg);
            cfg->front_memory_quota = u;
            break;
        case OPT_MAX_FRONT_MEMORY:
            if (parse_size_opt("--max-front-memory", optarg, 0, UINT64_MAX, &u, err, errlen) < 0)
                return -1;
            if (u != 0 && u < MIN_FRONT_MEMORY)
                return tn_errf(err, errlen, -1,
                               "--max-front-memory '%s': an idle front already uses ~20 MB; use at "
                               "least 64M, or 0 to turn the memory check off",
                               optarg);
            cfg->max_front_memory = u;
            break;
        case OPT_FRONT_CHECK_INTERVAL:
            if (parse_duration_opt("--front-check-interval", optarg, true,
                                   &cfg->front_check_interval_s, err, errlen) < 0)
                return -1;
            break;
        case OPT_FRONT_CHECK_FAILURES:
            if (parse_int_opt("--front-check-failures", optarg, 1, 100, &u, err, errlen) < 0)
                return -1;
            cfg->front_check_failures = (int)u;
            break;
        default:
            return tn_errf(err, errlen, -1, "internal error: unhandled option '%s'",
                           argv[optind - 1]);
        }
    }
    *fail_index = -1;
    if (optind < argc)
        return tn_errf(err, errlen, -1,
                       "unexpected argument '%s' (this program takes only options)", argv[optind]);

    /* Cross-checks and the environment, once every flag is known. */
    if (!workers_flag && env_workers && *env_workers &&
        tn_parse_uint(env_workers, 1, MAX_WORKERS, &u) < 0)
        return tn_errf(err, errlen, -1,
                       "environment NUM_WORKERS='%s': expected a whole number from 1 to %d "
                       "(or use --workers)",
                       env_workers, MAX_WORKERS);
    if (cfg->chunk_size + MESSAGE_OVERHEAD >= cfg->max_message_bytes) {
        char a[32], b[32];
        return tn_errf(err, errlen, -1,
                       "--chunk-size %s must be less than --max-message-bytes (%s) minus 1K, so a "
                       "chunk and its framing fit one message",
                       fmt_size(cfg->chunk_size, a, sizeof(a)),
                       fmt_size(cfg->max_message_bytes, b, sizeof(b)));
    }
    if (cfg->max_calls_per_peer < 0)
        cfg->max_calls_per_peer = cfg->max_concurrent_calls > 1 ? cfg->max_concurrent_calls / 2 : 1;
    cfg->log_syslog = cfg->daemon && !cfg->log_file; /* a daemon has no terminal */
    if (cfg->n_listen == 0)
        cfg->listen[cfg->n_listen++] = DEFAULT_LISTEN;
    if (check_tls(cfg, err, errlen) < 0)
        return -1;

    const char *flag = spool_flag ? "--spool-dir" : "spool directory ($TMPDIR or /tmp)";
    const char *p = absolutize(cfg->spool_dir, abs_spool, sizeof(abs_spool));
    if (!p)
        return tn_errf(err, errlen, -1, "%s '%s': path too long", flag, cfg->spool_dir);
    if (check_spool_dir(p, flag, err, errlen) < 0)
        return -1;
    cfg->spool_dir = p;
    if (cfg->pidfile) {
        p = absolutize(cfg->pidfile, abs_pidfile, sizeof(abs_pidfile));
        if (!p)
            return tn_errf(err, errlen, -1, "--pidfile '%s': path too long", cfg->pidfile);
        cfg->pidfile = p;
    }
    if (cfg->media_root) {
        struct stat st;
        p = absolutize(cfg->media_root, abs_media_root, sizeof(abs_media_root));
        if (!p)
            return tn_errf(err, errlen, -1, "--media-root '%s': path too long", cfg->media_root);
        if (stat(p, &st) < 0)
            return tn_errf(err, errlen, -1, "--media-root '%s': %s", cfg->media_root,
                           errno == ENOENT ? "no such directory" : strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return tn_errf(err, errlen, -1, "--media-root '%s': not a directory", cfg->media_root);
        cfg->media_root = p;
    }
    if (cfg->log_file) {
        p = absolutize(cfg->log_file, abs_log, sizeof(abs_log));
        if (!p)
            return tn_errf(err, errlen, -1, "--log-file '%s': path too long", cfg->log_file);
        cfg->log_file = p;
    }
    return 0;
}

/* ---- ops: the --config file ---------------------------------------------- */

#define MAX_CONFIG_BYTES (1 << 20) /* a config file is a few hundred bytes; more is a mistake */

/*
 * What one tn_config_parse() call built from a config file: the file's text,
 * the "--key=value" arguments made from it and the merged argv. The config
 * points into it, so it is never freed; blocks stay on this list (reachable)
 * and a reload costs one more small block.
 */
struct store {
    struct store *prev;
    char path[PATH_MAX]; /* the config file, absolute */
    char **argv;         /* argv[0], the file's arguments, then the command line's */
    int *line;           /* line[i]: the file line argv[i] came from, 0 for the command line */
    char data[];         /* the "--key=value" strings */
};
static struct store *stores;

/* Strip leading and trailing blanks in place. */
static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

static const struct option *find_key(const char *key)
{
    for (const struct option *o = long_options; o->name; o++)
        if (strcmp(o->name, key) == 0 && o->val != 'h' && o->val != 'V' && o->val != OPT_CONFIG)
            return o;
    return NULL;
}

/*
 * Split one line (NUL-terminated, no newline) into key and value. Returns 1
 * for a setting, 0 for a blank or comment line, -1 with a message in err.
 * A '#' at the start or after a blank starts a comment; a value in double
 * quotes keeps its '#' and its blanks.
 */
static int split_line(char *s, char **key, char **val, char *err, size_t errlen)
{
    s = trim(s);
    if (!*s || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (!eq)
        return tn_errf(err, errlen, -1, "expected 'key = value', got '%s'", s);
    *eq = 0;
    *key = trim(s);
    char *v = eq + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v == '"') {
        char *close = strchr(v + 1, '"');
        if (!close)
            return tn_errf(err, errlen, -1, "%s: unterminated \" in the value", *key);
        char *rest = trim(close + 1);
        if (*rest && *rest != '#')
            return tn_errf(err, errlen, -1, "%s: unexpected text after the quoted value: '%s'",
                           *key, rest);
        *close = 0;
        *val = v + 1;
    } else {
        for (char *p = v; *p; p++)
            if (*p == '#' && (p == v || p[-1] == ' ' || p[-1] == '\t')) {
                *p = 0;
                break;
            }
        *val = trim(v);
    }
    if (!**key)
        return tn_errf(err, errlen, -1, "missing key before '='");
    return 1;
}

static bool parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return *out = true, true;
        if (strcasecmp(v, no[i]) == 0)
            return *out = false, true;
    }
    return false;
}

/* Read the whole file into a new NUL-terminated buffer (caller frees). */
static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    int rc = -1;
    if (!f)
        return tn_errf(err, errlen, -1, "--config '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        tn_errf(err, errlen, -1, "--config '%s': not a regular file", path);
        goto out;
    }
    if (st.st_size > MAX_CONFIG_BYTES) {
        tn_errf(err, errlen, -1, "--config '%s': larger than %d bytes; is this the right file?",
                path, MAX_CONFIG_BYTES);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        tn_errf(err, errlen, -1, "--config '%s': out of memory", path);
        goto out;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        tn_errf(err, errlen, -1, "--config '%s': read failed: %s", path, strerror(errno));
        goto out;
    }
    buf[n] = 0;
    if (memchr(buf, 0, n)) {
        tn_errf(err, errlen, -1, "--config '%s': contains NUL bytes; not a text file", path);
        goto out;
    }
    *out = buf;
    *len = n;
    buf = NULL; /* now the caller's */
    rc = 0;
out:
    free(buf);
    fclose(f);
    return rc;
}

/*
 * Build a store from the config file at path and the command line: argv[0],
 * one "--key=value" (or "--flag") per setting, then argv[1..]. Returns NULL
 * with the error in err, prefixed with FILE:LINE where a line is at fault.
 */
static struct store *load_config(const char *path, int argc, char **argv, char *err, size_t errlen)
{
    char *text = NULL, abs[PATH_MAX];
    size_t len = 0, lines = 1;
    struct store *st = NULL;

    if (!*path) {
        tn_errf(err, errlen, -1, "--config: expected a file path");
        return NULL;
    }
    const char *p = absolutize(path, abs, sizeof(abs));
    if (!p || strlen(p) >= sizeof(st->path)) {
        tn_errf(err, errlen, -1, "--config '%s': path too long", path);
        return NULL;
    }
    if (read_file(p, &text, &len, err, errlen) < 0)
        return NULL;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    /* Each setting becomes "--" key "=" value NUL: at most its line plus 4 bytes. */
    size_t data_len = len + 4 * lines + 1;
    size_t nargs = lines + (size_t)argc + 1;
    st = calloc(1, sizeof(*st) + data_len);
    if (st) {
        st->argv = calloc(nargs, sizeof(*st->argv));
        st->line = calloc(nargs, sizeof(*st->line));
    }
    if (!st || !st->argv || !st->line) {
        tn_errf(err, errlen, -1, "--config '%s': out of memory", p);
        goto err;
    }
    strcpy(st->path, p);

    int n = 0;
    char *w = st->data;
    st->argv[n++] = argv[0];
    char *line = text;
    for (int lineno = 1; line; lineno++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        char *key = NULL, *val = NULL, msg[512];
        int rc = split_line(line, &key, &val, msg, sizeof(msg));
        line = nl ? nl + 1 : NULL;
        if (rc == 0)
            continue;
        const struct option *o = rc < 0 ? NULL : find_key(key);
        if (rc > 0 && !o) {
            if (strcmp(key, "config") == 0)
                snprintf(msg, sizeof(msg), "config: a config file cannot include another");
            else
                snprintf(msg, sizeof(msg),
                         "unknown key '%s' (keys are the long option names without '--', "
                         "e.g. listen, workers; see thumbnail_server --help)",
                         key);
            rc = -1;
        }
        bool on = true;
        if (rc > 0 && o->has_arg == no_argument && !parse_bool(val, &on)) {
            snprintf(msg, sizeof(msg), "%s '%s': expected true or false", key, val);
            rc = -1;
        }
        if (rc < 0) {
            tn_errf(err, errlen, -1, "%s:%d: %s", p, lineno, msg);
            goto err;
        }
        if (!on)
            continue; /* "daemon = false": the default; a flag can still turn it on */
        st->line[n] = lineno;
        st->argv[n++] = w;
        w += o->has_arg == no_argument ? sprintf(w, "--%s", key) + 1
                                       : sprintf(w, "--%s=%s", key, val) + 1;
    }
    for (int i = 1; i < argc; i++)
        st->argv[n++] = argv[i];
    st->argv[n] = NULL;
    free(text);
    return st;
err:
    if (st) {
        free(st->argv);
        free(st->line);
    }
    free(st);
    free(text);
    return NULL;
}

/* The last --config FILE on the command line, NULL if none. */
static const char *find_config_flag(int argc, char **argv)
{
    const char *path = NULL;
    opterr = 0;
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hV", long_options, NULL)) != -1)
        if (c == OPT_CONFIG)
            path = optarg;
    return path;
}

static int parse(struct tn_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    int fail_index = -1;
    const char *path = find_config_flag(argc, argv);
    if (!path)
        return parse_args(cfg, argc, argv, 1, &fail_index, err, errlen);

    struct store *st = load_config(path, argc, argv, err, errlen);
    if (!st)
        return -1;
    st->prev = stores;
    stores = st;
    int n = 0;
    while (st->argv[n])
        n++;
    int first_cli = n - (argc - 1);
    int rc = parse_args(cfg, n, st->argv, first_cli, &fail_index, err, errlen);
    if (rc < 0 && fail_index > 0 && fail_index < first_cli) {
        /* A file setting was refused: say where, and name the key as written there. */
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", err);
        snprintf(err, errlen, "%s:%d: %s", st->path, st->line[fail_index], msg);
    } else if (rc < 0 && fail_index < 0) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", err);
        snprintf(err, errlen, "%s (settings from --config %s and the command line)", msg, st->path);
    }
    if (rc == 0)
        cfg->config_file = st->path;
    return rc;
}

int tn_config_parse(struct tn_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    saved_argc = argc;
    saved_argv = argv;
    if (!getcwd(base_dir, sizeof(base_dir)))
        base_dir[0] = '\0'; /* relative paths then fail with "path too long" */
    return parse(cfg, argc, argv, err, errlen);
}

int tn_config_reload(struct tn_config *cfg, char *err, size_t errlen)
{
    if (!saved_argv)
        return tn_errf(err, errlen, -1, "internal error: no configuration was parsed before");
    int rc = parse(cfg, saved_argc, saved_argv, err, errlen);
    if (rc == 1) /* --help/--version: it would not have started */
        return tn_errf(err, errlen, -1, "internal error: --help or --version on reload");
    return rc;
}
