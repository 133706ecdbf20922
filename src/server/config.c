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
 *
 * The --help text is in config_usage.c, the --config file reader in
 * config_file.c; config_int.h holds what they share with this file.
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

#include "config_int.h"
#include "errf.h"
#include "log.h"
#include "parse.h"
#include "tls.h"

/* Storage for the absolute forms of relative paths (see the top comment). */
static char abs_spool[PATH_MAX];
static char abs_pidfile[PATH_MAX];
static char abs_log[PATH_MAX];
static char abs_media_root[PATH_MAX];
static char abs_signing_key[PATH_MAX];
static char abs_cache_dir[PATH_MAX];
static char abs_listen[TN_MAX_LISTEN][sizeof("unix:") + UNIX_PATH_MAX];
/* The TLS material and token digests that cfg->tls points at: one per
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

const struct option long_options[] = {
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
    /* worker recycling */
    {"max-jobs-per-worker", required_argument, NULL, OPT_MAX_JOBS_PER_WORKER},
    {"media-root", required_argument, NULL, OPT_MEDIA_ROOT},
    /* metrics and logging */
    {"metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    /* the HTTP gateway */
    {"http-listen", required_argument, NULL, OPT_HTTP_LISTEN},
    {"url-signing-key", required_argument, NULL, OPT_URL_SIGNING_KEY},
    /* transport security and call authentication */
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"tls-client-ca", required_argument, NULL, OPT_TLS_CLIENT_CA},
    {"tls-unix", no_argument, NULL, OPT_TLS_UNIX},
    {"auth-token-file", required_argument, NULL, OPT_AUTH_TOKEN_FILE},
    /* the config file */
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
    /* the result cache */
    {"cache-dir", required_argument, NULL, OPT_CACHE_DIR},
    {"cache-size", required_argument, NULL, OPT_CACHE_SIZE},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

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
const char *fmt_size(uint64_t v, char *buf, size_t len)
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

/*
 * Make a relative path absolute against the working directory, into buf.
 * Returns path itself if it already is absolute, NULL if the result does not fit.
 */
const char *absolutize(const char *path, char *buf, size_t len)
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
 * Cross-check the security flags and load their files into a new tls_node.
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
    cfg->max_jobs_per_worker = 1000; /* worker recycling */
    cfg->metrics_fd = -1;
    cfg->http_fd = -1;
    cfg->log_format = TN_LOG_TEXT;
    cfg->sandbox = true; /* sandbox */
    cfg->max_streams_per_connection = 100;
    cfg->max_header_bytes = 16ull << 10;
    cfg->front_memory_quota = 32ull << 20;
    cfg->max_front_memory = 512ull << 20;
    cfg->front_check_interval_s = 5;
    cfg->front_check_failures = 3;
    cfg->cache_size = 1ull << 30;
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
        case OPT_HTTP_LISTEN: {
            const char *colon = strrchr(optarg, ':');
            uint64_t port;
            if (!colon || tn_parse_uint(colon + 1, 1, 65535, &port) < 0 ||
                (optarg[0] == '[' && (colon == optarg || colon[-1] != ']')))
                return tn_errf(err, errlen, -1,
                               "--http-listen '%s': expected HOST:PORT, [IPV6]:PORT or :PORT "
                               "(port 1..65535)",
                               optarg);
            cfg->http_listen = optarg;
            break;
        }
        case OPT_URL_SIGNING_KEY: cfg->url_signing_key = optarg; break;
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
        /* worker recycling */
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
        /* TLS: paths are checked (and read) below, once every flag is known */
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
        /* the result cache */
        case OPT_CACHE_DIR:
            if (!*optarg)
                return tn_errf(err, errlen, -1, "--cache-dir: expected a directory");
            cfg->cache_dir = optarg;
            break;
        case OPT_CACHE_SIZE:
            if (parse_size_opt("--cache-size", optarg, 1ull << 20, UINT64_MAX, &cfg->cache_size,
                               err, errlen) < 0)
                return -1;
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
    if (cfg->http_listen && !cfg->media_root)
        return tn_errf(err, errlen, -1,
                       "--http-listen serves the files under --media-root: set --media-root too");
    if (cfg->http_listen && cfg->tls_client_ca)
        return tn_errf(err, errlen, -1,
                       "--tls-client-ca: the HTTP gateway (--http-listen) does not ask for client "
                       "certificates; use --auth-token-file for HTTP, or no --http-listen");
    if (cfg->url_signing_key && !cfg->http_listen)
        return tn_errf(err, errlen, -1,
                       "--url-signing-key signs HTTP URLs: it needs --http-listen");
    if (cfg->url_signing_key) {
        p = absolutize(cfg->url_signing_key, abs_signing_key, sizeof(abs_signing_key));
        if (!p)
            return tn_errf(err, errlen, -1, "--url-signing-key '%s': path too long",
                           cfg->url_signing_key);
        if (access(p, R_OK) < 0)
            return tn_errf(err, errlen, -1, "--url-signing-key '%s': %s", cfg->url_signing_key,
                           strerror(errno));
        cfg->url_signing_key = p;
    }
    if (cfg->cache_dir) {
        /* made by the front if missing; its parent must exist */
        struct stat st;
        p = absolutize(cfg->cache_dir, abs_cache_dir, sizeof(abs_cache_dir));
        if (!p)
            return tn_errf(err, errlen, -1, "--cache-dir '%s': path too long", cfg->cache_dir);
        if (stat(p, &st) == 0 && !S_ISDIR(st.st_mode))
            return tn_errf(err, errlen, -1, "--cache-dir '%s': not a directory", cfg->cache_dir);
        cfg->cache_dir = p;
    }
    if (cfg->log_file) {
        p = absolutize(cfg->log_file, abs_log, sizeof(abs_log));
        if (!p)
            return tn_errf(err, errlen, -1, "--log-file '%s': path too long", cfg->log_file);
        cfg->log_file = p;
    }
    return 0;
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

/* The stores of the config files parsed so far (config_int.h): never freed. */
static struct store *stores;

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
