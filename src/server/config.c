/*
 * Server configuration: defaults, then the environment (NUM_WORKERS, TMPDIR),
 * then command-line flags; the later wins.
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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "parse.h"

#define MAX_WORKERS 256
#define MAX_DURATION_S 86400.0           /* 24 h: beyond that it is a typo */
#define MIN_WORKER_MEMORY (256ull << 20) /* an idle worker already maps ~320 MiB */
#define MIN_CHUNK (1ull << 10)           /* 1 KiB */
#define MESSAGE_OVERHEAD (1ull << 10)    /* chunk + protobuf framing must fit a message */
#define MAX_MESSAGE ((uint64_t)INT_MAX)  /* gRPC channel args are ints */
#define UNIX_PATH_MAX 107                /* sizeof(sun_path) - 1 */
#define DEFAULT_LISTEN "0.0.0.0:50051"

/* Storage for the absolute forms of relative paths (see the top comment). */
static char abs_spool[PATH_MAX];
static char abs_pidfile[PATH_MAX];
static char abs_log[PATH_MAX];
static char abs_listen[TN_MAX_LISTEN][sizeof("unix:") + UNIX_PATH_MAX];

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
    OPT_MAX_PIXELS,
    OPT_WORKER_MEMORY,
    /* sandbox */
    OPT_NO_SANDBOX,
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
    {"max-pixels", required_argument, NULL, OPT_MAX_PIXELS},
    {"worker-memory", required_argument, NULL, OPT_WORKER_MEMORY},
    /* sandbox */
    {"no-sandbox", no_argument, NULL, OPT_NO_SANDBOX},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

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
    char s1[32], s2[32], s3[32], s4[32];
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
            "  --idle-timeout DURATION   end an upload that sends nothing for this long with\n"
            "                            DEADLINE_EXCEEDED; 0 = never (default: %gs)\n"
            "  --spool-dir DIR           writable directory for uploads in progress (unnamed\n"
            "                            O_TMPFILE files) (default: $TMPDIR, else /tmp; here %s)\n"
            "\n"
            "Decode workers:\n"
            "  --workers N               worker processes, 1..%d (default: $NUM_WORKERS, else\n"
            "                            the number of online CPUs; here %d)\n"
            "  --job-timeout DURATION    time allowed for one job, counted from the end of its\n"
            "                            upload; more than 0 (default: %gs)\n"
            "  --max-pixels N            largest frame a worker will decode, in pixels\n"
            "                            (default: %" PRIu64 " = 8192*8192)\n"
            "  --worker-memory SIZE      address-space limit (RLIMIT_AS) per worker; 0 = none,\n"
            "                            else at least 256M (default: %s)\n"
            "  --no-sandbox              run workers without their seccomp filter (default:\n"
            "                            on: a worker that makes a system call outside its\n"
            "                            allowlist, e.g. open(), is killed and respawned)\n"
            "\n"
            "Process:\n"
            "  --daemon                  detach from the terminal and run in the background;\n"
            "                            requires --log-file (a daemon has no stderr)\n"
            "  --pidfile PATH            write the master's pid to PATH; refuse to start if it\n"
            "                            names a running server; removed on exit\n"
            "  --log-file PATH           append logs to PATH instead of stderr; reopened on\n"
            "                            SIGUSR1 (for logrotate)\n"
            "  --log-level LEVEL         error, warn, info or debug (default: %s)\n"
            "  --grace DURATION          on SIGQUIT, how long in-flight calls may finish\n"
            "                            (default: %gs)\n"
            "  -h, --help                print this help and exit\n"
            "  -V, --version             print the version and exit\n"
            "\n"
            "SIZE is a number of bytes, optionally with a binary suffix: 64K, 1M, 2G, 1T\n"
            "(also 1MiB, 1MB; 1K = 1024). DURATION is seconds, optionally with a unit:\n"
            "500ms, 2.5s, 2m, 1h. Later flags override earlier ones, and flags override the\n"
            "environment.\n"
            "\n"
            "Environment:\n"
            "  NUM_WORKERS   default for --workers\n"
            "  TMPDIR        default for --spool-dir\n"
            "\n"
            "Signals to the master (the pid in --pidfile): TERM or INT stop now; QUIT stops\n"
            "gracefully (in-flight calls get --grace to finish); USR1 reopens the log file;\n"
            "HUP (reload) is not implemented yet and is ignored.\n"
            "\n"
            "Exit status: 0 after a stop by signal; 1 if the server failed (e.g. the front\n"
            "could not bind its address); 2 if it could not start (a bad option, a log file\n"
            "or pidfile that cannot be written, or already running).\n",
            TN_MAX_LISTEN, DEFAULT_LISTEN, fmt_size(d->max_upload_bytes, s1, sizeof(s1)),
            fmt_size(d->max_message_bytes, s2, sizeof(s2)), fmt_size(d->chunk_size, s3, sizeof(s3)),
            d->max_concurrent_calls, d->max_queued_jobs, d->idle_timeout_s, d->spool_dir,
            MAX_WORKERS, d->workers, d->job_timeout_s, d->max_pixels,
            fmt_size(d->worker_memory, s4, sizeof(s4)), level_names[d->log_level], d->grace_s);
}

/*
 * Make a relative path absolute against the working directory, into buf.
 * Returns path itself if it already is absolute, NULL if the result does not fit.
 */
static const char *absolutize(const char *path, char *buf, size_t len)
{
    char cwd[PATH_MAX];
    if (path[0] == '/')
        return path;
    if (!getcwd(cwd, sizeof(cwd)))
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
            return fail(err, errlen, "--listen '%s': empty socket path; %s", addr, form);
        if (p[0] == '/') {
            if (strlen(p) > UNIX_PATH_MAX)
                return fail(err, errlen, "--listen '%s': socket path longer than %d bytes", addr,
                            UNIX_PATH_MAX);
            *out = addr;
            return 0;
        }
        char buf[PATH_MAX];
        const char *abs = absolutize(p, buf, sizeof(buf));
        if (!abs || strlen(abs) > UNIX_PATH_MAX)
            return fail(err, errlen,
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
        return fail(err, errlen, "--listen '%s': %s (port 0..65535)", addr, form);
    if (addr[0] == '[' && colon[-1] != ']')
        return fail(err, errlen, "--listen '%s': %s (an IPv6 address goes in brackets)", addr,
                    form);
    *out = addr;
    return 0;
}

static int parse_size_opt(const char *flag, const char *val, uint64_t min, uint64_t max,
                          uint64_t *out, char *err, size_t errlen)
{
    uint64_t v;
    char a[32], b[32];
    if (tn_parse_size(val, &v) < 0)
        return fail(err, errlen, "%s '%s': expected a size such as 1048576, 64K, 1M or 2G", flag,
                    val);
    if (v < min && max == UINT64_MAX)
        return fail(err, errlen, "%s '%s': must be at least %s", flag, val,
                    fmt_size(min, a, sizeof(a)));
    if (v < min || v > max)
        return fail(err, errlen, "%s '%s': must be between %s and %s bytes", flag, val,
                    fmt_size(min, a, sizeof(a)), fmt_size(max, b, sizeof(b)));
    *out = v;
    return 0;
}

static int parse_int_opt(const char *flag, const char *val, uint64_t min, uint64_t max,
                         uint64_t *out, char *err, size_t errlen)
{
    if (tn_parse_uint(val, min, max, out) < 0)
        return fail(err, errlen, "%s '%s': expected a whole number from %" PRIu64 " to %" PRIu64,
                    flag, val, min, max);
    return 0;
}

static int parse_duration_opt(const char *flag, const char *val, bool zero_ok, double *out,
                              char *err, size_t errlen)
{
    double v;
    if (tn_parse_duration(val, &v) < 0)
        return fail(err, errlen, "%s '%s': expected a duration such as 30, 2.5s, 500ms or 2m", flag,
                    val);
    if ((!zero_ok && v <= 0) || v > MAX_DURATION_S)
        return fail(err, errlen, "%s '%s': must be %s 0 and at most 24h", flag, val,
                    zero_ok ? "at least" : "more than");
    *out = v;
    return 0;
}

/* The spool directory must exist and be writable now, not at the first upload. */
static int check_spool_dir(const char *dir, const char *flag, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) < 0)
        return fail(err, errlen, "%s '%s': %s", flag, dir,
                    errno == ENOENT ? "no such directory" : strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fail(err, errlen, "%s '%s': not a directory", flag, dir);
    if (access(dir, W_OK | X_OK) < 0)
        return fail(err, errlen, "%s '%s': directory not writable: %s", flag, dir, strerror(errno));
    return 0;
}

int tn_config_parse(struct tn_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    uint64_t u;
    const char *env_workers = getenv("NUM_WORKERS");
    bool workers_flag = false, spool_flag = false;

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
    cfg->max_queued_jobs = 64;
    cfg->max_pixels = 8192ull * 8192ull;
    cfg->worker_memory = 1ull << 30;
    cfg->sandbox = true; /* sandbox */
    if (env_workers && *env_workers && tn_parse_uint(env_workers, 1, MAX_WORKERS, &u) == 0)
        cfg->workers = (int)u; /* a bad value is reported below, unless --workers overrides it */

    opterr = 0; /* we word the errors ourselves, into err */
    optind = 0; /* 0, not 1: fully reinitialize glibc's getopt (tests parse repeatedly) */
    for (;;) {
        int c = getopt_long(argc, argv, ":hV", long_options, NULL);
        if (c == -1)
            break;
        switch (c) {
        case 'h': print_help(stdout, cfg); return 1;
        case 'V': printf("thumbnail_server %s\n", TN_VERSION); return 1;
        case ':': return fail(err, errlen, "option '%s' requires a value", argv[optind - 1]);
        case '?':
            /* optopt is a long option's value when it was given one it takes none */
            if (optopt >= OPT_LISTEN)
                return fail(err, errlen, "option '%s' takes no value", argv[optind - 1]);
            if (optopt)
                return fail(err, errlen, "unknown option '-%c'", optopt);
            return fail(err, errlen, "unknown or ambiguous option '%s'", argv[optind - 1]);
        case OPT_LISTEN:
            if (cfg->n_listen == TN_MAX_LISTEN)
                return fail(err, errlen, "--listen: at most %d addresses", TN_MAX_LISTEN);
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
                return fail(err, errlen, "--pidfile: expected a file path");
            cfg->pidfile = optarg;
            break;
        case OPT_LOG_FILE:
            if (!*optarg)
                return fail(err, errlen, "--log-file: expected a file path");
            cfg->log_file = optarg;
            break;
        case OPT_LOG_LEVEL: {
            int l = tn_log_level_parse(optarg);
            if (l < 0)
                return fail(err, errlen, "--log-level '%s': expected error, warn, info or debug",
                            optarg);
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
        case OPT_WORKER_MEMORY:
            if (parse_size_opt("--worker-memory", optarg, 0, UINT64_MAX, &u, err, errlen) < 0)
                return -1;
            if (u != 0 && u < MIN_WORKER_MEMORY)
                return fail(err, errlen,
                            "--worker-memory '%s': too small to load the decoders (an idle "
                            "worker already maps ~320 MiB); use at least 256M, or 0 for no limit",
                            optarg);
            cfg->worker_memory = u;
            break;
        /* sandbox */
        case OPT_NO_SANDBOX: cfg->sandbox = false; break;
        default:
            return fail(err, errlen, "internal error: unhandled option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return fail(err, errlen, "unexpected argument '%s' (this program takes only options)",
                    argv[optind]);

    /* Cross-checks and the environment, once every flag is known. */
    if (!workers_flag && env_workers && *env_workers &&
        tn_parse_uint(env_workers, 1, MAX_WORKERS, &u) < 0)
        return fail(err, errlen,
                    "environment NUM_WORKERS='%s': expected a whole number from 1 to %d "
                    "(or use --workers)",
                    env_workers, MAX_WORKERS);
    if (cfg->chunk_size + MESSAGE_OVERHEAD >= cfg->max_message_bytes) {
        char a[32], b[32];
        return fail(err, errlen,
                    "--chunk-size %s must be less than --max-message-bytes (%s) minus 1K, so a "
                    "chunk and its framing fit one message",
                    fmt_size(cfg->chunk_size, a, sizeof(a)),
                    fmt_size(cfg->max_message_bytes, b, sizeof(b)));
    }
    if (cfg->daemon && !cfg->log_file)
        return fail(err, errlen,
                    "--daemon requires --log-file: a daemon has no terminal to log to "
                    "(use --log-file /dev/null to discard the logs)");
    if (cfg->n_listen == 0)
        cfg->listen[cfg->n_listen++] = DEFAULT_LISTEN;

    const char *flag = spool_flag ? "--spool-dir" : "spool directory ($TMPDIR or /tmp)";
    const char *p = absolutize(cfg->spool_dir, abs_spool, sizeof(abs_spool));
    if (!p)
        return fail(err, errlen, "%s '%s': path too long", flag, cfg->spool_dir);
    if (check_spool_dir(p, flag, err, errlen) < 0)
        return -1;
    cfg->spool_dir = p;
    if (cfg->pidfile) {
        p = absolutize(cfg->pidfile, abs_pidfile, sizeof(abs_pidfile));
        if (!p)
            return fail(err, errlen, "--pidfile '%s': path too long", cfg->pidfile);
        cfg->pidfile = p;
    }
    if (cfg->log_file) {
        p = absolutize(cfg->log_file, abs_log, sizeof(abs_log));
        if (!p)
            return fail(err, errlen, "--log-file '%s': path too long", cfg->log_file);
        cfg->log_file = p;
    }
    return 0;
}
