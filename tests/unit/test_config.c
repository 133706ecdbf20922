/*
 * Unit tests for the server configuration (src/server/config.c): defaults,
 * NUM_WORKERS and TMPDIR, every flag's accepted and rejected forms, the
 * cross-checks (--chunk-size vs --max-message-bytes, --daemon without
 * --log-file logs to syslog), and relative paths made absolute. Each bad value must return -1
 * with a message that names the flag. The --config file: every key, comments
 * and quoting, precedence (defaults < env < file < flags), and FILE:LINE in
 * every error about a line.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "tls.h"

#define MAX_ARGS 64

static struct tn_config cfg;
static char err[1024];

/* Parse a NULL-terminated list of arguments (argv[0] is added). */
static int parse_v(const char *first, va_list ap)
{
    static char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = (char *)"thumbnail_server";
    for (const char *a = first; a && argc <= MAX_ARGS; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    argv[argc] = NULL;
    err[0] = 0;
    return tn_config_parse(&cfg, argc, argv, err, sizeof(err));
}

static int parse(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    int rc = parse_v(first, ap);
    va_end(ap);
    return rc;
}

/* Expect a usage error whose message contains want. */
static void bad(const char *want, const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    int rc = parse_v(first, ap);
    va_end(ap);
    if (rc != -1 || !strstr(err, want))
        fail_msg("rc %d, err \"%s\"; wanted -1 and \"%s\"", rc, err, want);
}

static int setup(void **state)
{
    unsetenv("NUM_WORKERS");
    unsetenv("TMPDIR");
    return 0;
}

static void test_defaults(void **state)
{
    assert_int_equal(parse(NULL), 0);
    assert_int_equal(cfg.n_listen, 1);
    assert_string_equal(cfg.listen[0], "0.0.0.0:50051");
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(cfg.workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    assert_string_equal(cfg.spool_dir, "/tmp");
    assert_true(cfg.max_upload_bytes == 16ull << 30);
    assert_true(cfg.max_message_bytes == (4ull << 20) + (64ull << 10));
    assert_true(cfg.chunk_size == 1ull << 20);
    assert_false(cfg.daemon);
    assert_null(cfg.pidfile);
    assert_null(cfg.log_file);
    assert_int_equal(cfg.log_level, TN_LOG_INFO);
    assert_true(cfg.grace_s == 30 && cfg.job_timeout_s == 30);
    assert_true(cfg.idle_timeout_s == 60);
    assert_int_equal(cfg.max_concurrent_calls, 256);
    assert_int_equal(cfg.max_queued_jobs, 64);
    assert_true(cfg.max_pixels == 8192ull * 8192);
    assert_true(cfg.worker_memory == 1ull << 30);
}

static void test_flags(void **state)
{
    assert_int_equal(
        parse("--listen", "127.0.0.1:9000", "--listen=[::1]:9001", "--listen", "unix:/run/tn.sock",
              "--workers", "3", "--spool-dir", "/", "--max-upload-bytes", "1G",
              "--max-message-bytes", "8MiB", "--chunk-size", "64K", "--pidfile", "/run/tn.pid",
              "--log-file", "/tmp/tn.log", "--daemon", "--log-level", "DEBUG", "--grace", "2.5s",
              "--job-timeout", "500ms", "--max-concurrent-calls", "10", "--max-queued-jobs", "5",
              "--max-pixels", "1000000", "--worker-memory", "0", "--idle-timeout", "1.5s", NULL),
        0);
    assert_int_equal(cfg.n_listen, 3);
    assert_string_equal(cfg.listen[1], "[::1]:9001");
    assert_string_equal(cfg.listen[2], "unix:/run/tn.sock");
    assert_int_equal(cfg.workers, 3);
    assert_string_equal(cfg.spool_dir, "/");
    assert_true(cfg.max_upload_bytes == 1ull << 30);
    assert_true(cfg.max_message_bytes == 8ull << 20);
    assert_true(cfg.chunk_size == 64ull << 10);
    assert_string_equal(cfg.pidfile, "/run/tn.pid");
    assert_string_equal(cfg.log_file, "/tmp/tn.log");
    assert_true(cfg.daemon);
    assert_int_equal(cfg.log_level, TN_LOG_DEBUG);
    assert_true(cfg.grace_s == 2.5);
    assert_true(cfg.job_timeout_s == 0.5);
    assert_true(cfg.idle_timeout_s == 1.5);
    assert_int_equal(cfg.max_concurrent_calls, 10);
    assert_int_equal(cfg.max_queued_jobs, 5);
    assert_true(cfg.max_pixels == 1000000);
    assert_true(cfg.worker_memory == 0);
}

static void test_environment(void **state)
{
    setenv("NUM_WORKERS", "7", 1);
    assert_int_equal(parse(NULL), 0);
    assert_int_equal(cfg.workers, 7);
    assert_int_equal(parse("--workers", "2", NULL), 0); /* the flag wins */
    assert_int_equal(cfg.workers, 2);
    setenv("NUM_WORKERS", "lots", 1);
    bad("NUM_WORKERS", NULL);
    assert_int_equal(parse("--workers", "2", NULL), 0); /* overridden: not an error */
    setenv("NUM_WORKERS", "", 1);                       /* empty = unset */
    assert_int_equal(parse(NULL), 0);
    unsetenv("NUM_WORKERS");

    setenv("TMPDIR", "/", 1);
    assert_int_equal(parse(NULL), 0);
    assert_string_equal(cfg.spool_dir, "/");
    setenv("TMPDIR", "/nonexistent-tn-dir", 1);
    bad("no such directory", NULL);
    unsetenv("TMPDIR");
}

static void test_bad_values(void **state)
{
    bad("--workers '0'", "--workers", "0", NULL);
    bad("--workers '257'", "--workers", "257", NULL);
    bad("--workers 'x'", "--workers", "x", NULL);
    bad("option '--workers' requires a value", "--workers", NULL);
    bad("unknown or ambiguous option '--bogus'", "--bogus", NULL);
    bad("unknown option '-x'", "-x", NULL);
    bad("unexpected argument 'extra'", "extra", NULL);
    bad("--listen 'nohost'", "--listen", "nohost", NULL);
    bad("--listen 'h:99999'", "--listen", "h:99999", NULL);
    bad("--listen '[::1:5'", "--listen", "[::1:5", NULL);
    bad("--listen 'unix:'", "--listen", "unix:", NULL);
    bad("--max-upload-bytes '0'", "--max-upload-bytes", "0", NULL);
    bad("--max-upload-bytes '1X'", "--max-upload-bytes", "1X", NULL);
    bad("--max-message-bytes '1K'", "--max-message-bytes", "1K", NULL);
    bad("--max-message-bytes '4G'", "--max-message-bytes", "4G", NULL);
    bad("--chunk-size '100'", "--chunk-size", "100", NULL);
    bad("--chunk-size 4M must be less than --max-message-bytes", "--chunk-size", "4M",
        "--max-message-bytes", "4M", NULL);
    bad("--log-level 'loud'", "--log-level", "loud", NULL);
    bad("--grace 'soon'", "--grace", "soon", NULL);
    bad("--grace '25h'", "--grace", "25h", NULL);
    bad("--job-timeout '0'", "--job-timeout", "0", NULL);
    bad("--idle-timeout 'x'", "--idle-timeout", "x", NULL);
    bad("--idle-timeout '25h'", "--idle-timeout", "25h", NULL);
    bad("--max-concurrent-calls '0'", "--max-concurrent-calls", "0", NULL);
    bad("--max-queued-jobs '-1'", "--max-queued-jobs", "-1", NULL);
    bad("--max-pixels '0'", "--max-pixels", "0", NULL);
    bad("--worker-memory '1M'", "--worker-memory", "1M", NULL);
    bad("--spool-dir '/nonexistent-tn-dir'", "--spool-dir", "/nonexistent-tn-dir", NULL);
    bad("not a directory", "--spool-dir", "/dev/null", NULL);
    bad("--metrics-listen '9090'", "--metrics-listen", "9090", NULL);
    bad("--metrics-listen ':0'", "--metrics-listen", ":0", NULL);
    bad("--metrics-listen 'h:x'", "--metrics-listen", "h:x", NULL);
    bad("--metrics-listen '[::1:9090'", "--metrics-listen", "[::1:9090", NULL);
    bad("--log-format 'xml'", "--log-format", "xml", NULL);
    bad("--pidfile", "--pidfile", "", NULL);
    bad("--log-file", "--log-file=", NULL);
    bad("--max-jobs-per-worker '-1'", "--max-jobs-per-worker", "-1", NULL);
    bad("--max-jobs-per-worker 'x'", "--max-jobs-per-worker", "x", NULL);
}

static void test_metrics_and_logging(void **state)
{
    assert_int_equal(parse(NULL), 0);
    assert_null(cfg.metrics_listen);
    assert_int_equal(cfg.metrics_fd, -1);
    assert_int_equal(cfg.log_format, TN_LOG_TEXT);
    assert_false(cfg.log_syslog);
    assert_int_equal(parse("--metrics-listen", ":9090", "--log-format", "json", NULL), 0);
    assert_string_equal(cfg.metrics_listen, ":9090");
    assert_int_equal(cfg.log_format, TN_LOG_JSON);
    assert_int_equal(parse("--metrics-listen", "[::1]:9", "--log-format", "text", NULL), 0);
    assert_int_equal(cfg.log_format, TN_LOG_TEXT);
    /* A daemon without a log file logs to syslog; with one, to the file. */
    assert_int_equal(parse("--daemon", NULL), 0);
    assert_true(cfg.log_syslog);
    assert_int_equal(parse("--daemon", "--log-file", "/tmp/tn.log", NULL), 0);
    assert_false(cfg.log_syslog);
}

static void test_listen_limit(void **state)
{
    char *argv[2 + 2 * (TN_MAX_LISTEN + 1)];
    int argc = 0;
    argv[argc++] = (char *)"thumbnail_server";
    for (int i = 0; i <= TN_MAX_LISTEN; i++) {
        argv[argc++] = (char *)"--listen";
        argv[argc++] = (char *)"127.0.0.1:0";
    }
    argv[argc] = NULL;
    assert_int_equal(tn_config_parse(&cfg, argc, argv, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "at most 16"));
    assert_int_equal(tn_config_parse(&cfg, argc - 2, argv, err, sizeof(err)), 0);
    assert_int_equal(cfg.n_listen, TN_MAX_LISTEN);
}

static void test_relative_paths(void **state)
{
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(parse("--pidfile", "tn.pid", "--log-file", "logs/tn.log", "--spool-dir", ".",
                           "--listen", "unix:tn.sock", NULL),
                     0);
    snprintf(want, sizeof(want), "%s/tn.pid", strcmp(cwd, "/") ? cwd : "");
    assert_string_equal(cfg.pidfile, want);
    snprintf(want, sizeof(want), "%s/logs/tn.log", strcmp(cwd, "/") ? cwd : "");
    assert_string_equal(cfg.log_file, want);
    assert_int_equal(cfg.spool_dir[0], '/');
    if (strlen(cwd) < 90) {
        snprintf(want, sizeof(want), "unix:%s/tn.sock", strcmp(cwd, "/") ? cwd : "");
        assert_string_equal(cfg.listen[0], want);
    }
}

static void test_max_jobs_per_worker(void **state)
{
    assert_int_equal(parse(NULL), 0);
    assert_int_equal(cfg.max_jobs_per_worker, 1000);
    assert_int_equal(parse("--max-jobs-per-worker", "0", NULL), 0);
    assert_int_equal(cfg.max_jobs_per_worker, 0);
    assert_int_equal(parse("--max-jobs-per-worker", "7", NULL), 0);
    assert_int_equal(cfg.max_jobs_per_worker, 7);
}

/* Fairness between clients: defaults, the per-peer default following
 * --max-concurrent-calls, the rate's SIZE/DURATION form. */
static void test_fairness(void **state)
{
    (void)state;
    assert_int_equal(parse(NULL), 0);
    assert_int_equal(cfg.max_calls_per_peer, 128);
    assert_int_equal(cfg.min_upload_bytes, 16 << 10);
    assert_true(cfg.min_upload_window_s == 10);
    assert_int_equal(cfg.max_result_bytes, 1ull << 30);
    assert_true(cfg.range_timeout_s == 5);
    assert_int_equal(parse("--max-concurrent-calls", "40", NULL), 0);
    assert_int_equal(cfg.max_calls_per_peer, 20);
    assert_int_equal(parse("--max-concurrent-calls", "1", NULL), 0);
    assert_int_equal(cfg.max_calls_per_peer, 1);
    assert_int_equal(parse("--max-concurrent-calls", "40", "--max-calls-per-peer", "0", NULL), 0);
    assert_int_equal(cfg.max_calls_per_peer, 0);
    assert_int_equal(parse("--min-upload-rate", "64K/2s", "--max-result-bytes", "0",
                           "--range-timeout", "500ms", NULL),
                     0);
    assert_int_equal(cfg.min_upload_bytes, 64 << 10);
    assert_true(cfg.min_upload_window_s == 2);
    assert_int_equal(cfg.max_result_bytes, 0);
    assert_true(cfg.range_timeout_s == 0.5);
    assert_int_equal(parse("--min-upload-rate", "0", NULL), 0);
    assert_int_equal(cfg.min_upload_bytes, 0);
    bad("--min-upload-rate '16K': expected SIZE/DURATION", "--min-upload-rate", "16K", NULL);
    bad("--min-upload-rate '16K/100ms': the window must be", "--min-upload-rate", "16K/100ms",
        NULL);
    bad("--min-upload-rate 'x/10s'", "--min-upload-rate", "x/10s", NULL);
    bad("--max-calls-per-peer '-1'", "--max-calls-per-peer", "-1", NULL);
}

/* SIGHUP: the same argv again, relative paths against the directory of the
 * first parse even after a chdir (a daemon is in "/" by then). */
static void test_reload(void **state)
{
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    struct tn_config again;
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(
        parse("--workers", "3", "--pidfile", "tn.pid", "--max-jobs-per-worker", "9", NULL), 0);
    assert_int_equal(chdir("/"), 0);
    int rc = tn_config_reload(&again, err, sizeof(err));
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    assert_int_equal(again.workers, 3);
    assert_int_equal(again.max_jobs_per_worker, 9);
    snprintf(want, sizeof(want), "%s/tn.pid", strcmp(cwd, "/") ? cwd : "");
    assert_string_equal(again.pidfile, want);
    /* a configuration that became invalid is an error, not a crash */
    assert_int_equal(parse("--spool-dir", "tn-reload-spool", NULL), -1);
    assert_int_equal(mkdir("tn-reload-spool", 0700), 0);
    assert_int_equal(parse("--spool-dir", "tn-reload-spool", NULL), 0);
    assert_int_equal(rmdir("tn-reload-spool"), 0);
    assert_int_equal(tn_config_reload(&again, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--spool-dir"));
}

static void test_sandbox_flag(void **state)
{
    assert_int_equal(parse(NULL), 0);
    assert_true(cfg.sandbox);
    assert_int_equal(parse("--no-sandbox", NULL), 0);
    assert_false(cfg.sandbox);
    assert_int_equal(parse("--no-sandbox=yes", NULL), -1);
    assert_string_equal(err, "option '--no-sandbox=yes' takes no value");
}

static void test_cache_flags(void **state)
{
    (void)state;
    assert_int_equal(parse(NULL), 0);
    assert_null(cfg.cache_dir); /* off by default */
    assert_int_equal(cfg.cache_size, 1ull << 30);
    /* a missing last component is made by the front; a relative path made absolute */
    assert_int_equal(parse("--cache-dir", "tn-cache-not-yet", "--cache-size", "64M", NULL), 0);
    assert_int_equal(cfg.cache_dir[0], '/');
    assert_non_null(strstr(cfg.cache_dir, "/tn-cache-not-yet"));
    assert_int_equal(cfg.cache_size, 64ull << 20);
    bad("--cache-dir '/nonexistent-tn-dir/cache': cannot be created", "--cache-dir",
        "/nonexistent-tn-dir/cache", NULL);
    bad("--cache-dir '/dev/null': not a directory", "--cache-dir", "/dev/null", NULL);
    bad("--cache-dir: expected a directory", "--cache-dir", "", NULL);
    bad("--cache-size", "--cache-size", "1K", NULL); /* under 1M */
    bad("--cache-size", "--cache-size", "lots", NULL);
}

static void test_help_and_version(void **state)
{
    /* Both print to stdout and return 1; keep the test output clean. */
    fflush(stdout);
    int saved = dup(STDOUT_FILENO), null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(saved >= 0 && null >= 0);
    dup2(null, STDOUT_FILENO);
    int rc[4] = {
        parse("--help", NULL),
        parse("--workers", "2", "-h", NULL),
        parse("--version", NULL),
        parse("-V", NULL),
    };
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    close(null);
    for (int i = 0; i < 4; i++)
        assert_int_equal(rc[i], 1);
}

/* tls: the token is read at parse time and checked in constant time; the
 * security flags' cross-checks. (Certificates: tests/integration/test_tls.py,
 * which makes them with openssl.) */
static void test_security(void **state)
{
    char path[] = "/tmp/tn-test-token-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "  tok-3n\n", 9), 9);
    close(fd);

    assert_int_equal(parse(NULL), 0);
    assert_null(cfg.tls);
    assert_int_equal(parse("--auth-token-file", path, NULL), 0);
    assert_non_null(cfg.tls);
    assert_true(cfg.tls->have_token);
    assert_null(cfg.tls->cert_pem);
    static const struct {
        const char *v;
        bool ok;
    } cases[] = {{"Bearer tok-3n", true},   {"bearer tok-3n", true},
                 {"BEARER tok-3n", true},   {"Bearer tok-3", false},
                 {"Bearer tok-3n ", false}, {"Bearer  tok-3n", false},
                 {"Bearer TOK-3N", false},  {"tok-3n", false},
                 {"Bearer ", false},        {"", false},
                 {"Basic tok-3n", false}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (tn_tls_token_ok(cfg.tls, cases[i].v, strlen(cases[i].v)) != cases[i].ok)
            fail_msg("authorization \"%s\": expected %s", cases[i].v,
                     cases[i].ok ? "accepted" : "refused");
    assert_int_equal(parse(NULL), 0); /* a new parse forgets the token */
    assert_null(cfg.tls);
    assert_false(tn_tls_token_ok(NULL, "Bearer tok-3n", 13));

    bad("--auth-token-file: expected a file path", "--auth-token-file", "", NULL);
    bad("--tls-cert needs --tls-key", "--tls-cert", path, NULL);
    bad("--tls-key needs --tls-cert", "--tls-key", path, NULL);
    bad("--tls-client-ca needs --tls-cert", "--tls-client-ca", path, NULL);
    bad("--tls-unix needs --tls-cert", "--tls-unix", NULL);
    bad("no PEM certificate", "--tls-cert", path, "--tls-key", path, NULL);
    bad("add --tls-unix", "--listen", "unix:/tmp/x.sock", "--tls-cert", path, "--tls-key", path,
        NULL);
    assert_int_equal(truncate(path, 0), 0);
    bad("is empty", "--auth-token-file", path, NULL);
    unlink(path);
    bad("cannot open", "--auth-token-file", path, NULL);
}

/* ---- ops: the --config file ---------------------------------------------- */

static char conf_path[64];

/* Write text to a fresh temporary config file; its path goes to conf_path. */
static const char *write_conf_n(const char *text, size_t n)
{
    snprintf(conf_path, sizeof(conf_path), "/tmp/tn-test-config-XXXXXX");
    int fd = mkstemp(conf_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return conf_path;
}

static const char *write_conf(const char *text)
{
    return write_conf_n(text, strlen(text));
}

static int teardown_conf(void **state)
{
    if (conf_path[0])
        unlink(conf_path);
    conf_path[0] = 0;
    return 0;
}

static void test_config_file(void **state)
{
    const char *p = write_conf("# every key, as in deploy/thumbnail_server.conf\n"
                               "\n"
                               "listen = 127.0.0.1:9000\n"
                               "  listen=unix:/run/tn.sock   # a second address\n"
                               "workers = 3\r\n"
                               "spool-dir = /\n"
                               "max-upload-bytes = 1G\n"
                               "max-message-bytes = 8MiB\n"
                               "chunk-size = 64K\n"
                               "max-concurrent-calls = 10\n"
                               "max-queued-jobs = 5\n"
                               "idle-timeout = 1.5s\n"
                               "job-timeout = 500ms\n"
                               "max-pixels = 1000000\n"
                               "worker-memory = 0\n"
                               "daemon = yes\n"
                               "pidfile = /run/tn.pid\n"
                               "log-file = \"/tmp/tn #1.log\"   # quoted: keeps '#' and blanks\n"
                               "log-level = debug\n"
                               "grace = 2.5s");
    assert_int_equal(parse("--config", p, NULL), 0);
    assert_int_equal(cfg.n_listen, 2);
    assert_string_equal(cfg.listen[0], "127.0.0.1:9000");
    assert_string_equal(cfg.listen[1], "unix:/run/tn.sock");
    assert_int_equal(cfg.workers, 3);
    assert_string_equal(cfg.spool_dir, "/");
    assert_true(cfg.max_upload_bytes == 1ull << 30);
    assert_true(cfg.max_message_bytes == 8ull << 20);
    assert_true(cfg.chunk_size == 64ull << 10);
    assert_int_equal(cfg.max_concurrent_calls, 10);
    assert_int_equal(cfg.max_queued_jobs, 5);
    assert_true(cfg.idle_timeout_s == 1.5 && cfg.job_timeout_s == 0.5 && cfg.grace_s == 2.5);
    assert_true(cfg.max_pixels == 1000000);
    assert_true(cfg.worker_memory == 0);
    assert_true(cfg.daemon);
    assert_string_equal(cfg.pidfile, "/run/tn.pid");
    assert_string_equal(cfg.log_file, "/tmp/tn #1.log");
    assert_int_equal(cfg.log_level, TN_LOG_DEBUG);
    assert_string_equal(cfg.config_file, p);
}

static void test_config_precedence(void **state)
{
    /* defaults < environment < file < flags */
    setenv("NUM_WORKERS", "7", 1);
    const char *p = write_conf("workers = 3\nlisten = 127.0.0.1:9000\nlisten = 127.0.0.1:9001\n"
                               "log-level = warn\n");
    assert_int_equal(parse("--config", p, NULL), 0);
    assert_int_equal(cfg.workers, 3);
    assert_int_equal(cfg.n_listen, 2);
    assert_int_equal(cfg.log_level, TN_LOG_WARN);
    assert_int_equal(parse("--workers", "2", "--config", p, NULL), 0); /* order does not matter */
    assert_int_equal(cfg.workers, 2);
    /* A --listen on the command line replaces the file's list instead of adding to it. */
    assert_int_equal(
        parse("--listen", "127.0.0.1:1", "--config", p, "--listen", "127.0.0.1:2", NULL), 0);
    assert_int_equal(cfg.n_listen, 2);
    assert_string_equal(cfg.listen[0], "127.0.0.1:1");
    assert_string_equal(cfg.listen[1], "127.0.0.1:2");
    unsetenv("NUM_WORKERS");
    /* No workers key: the environment still beats the default. */
    p = write_conf("daemon = false\nlog-file = /tmp/x.log\n");
    setenv("NUM_WORKERS", "5", 1);
    assert_int_equal(parse("--config", p, NULL), 0);
    assert_int_equal(cfg.workers, 5);
    assert_false(cfg.daemon);
    assert_int_equal(parse("--config", p, "--daemon", NULL), 0); /* the flag turns it on */
    assert_true(cfg.daemon);
    unsetenv("NUM_WORKERS");
    /* An empty file (or only comments) is the defaults. */
    p = write_conf("# nothing\n\n   \n");
    assert_int_equal(parse("--config", p, NULL), 0);
    assert_int_equal(cfg.n_listen, 1);
    assert_string_equal(cfg.listen[0], "0.0.0.0:50051");
}

/* Expect a usage error for a config file holding text. */
static void bad_conf(const char *want, const char *text)
{
    const char *p = write_conf(text);
    err[0] = 0;
    int rc = parse("--config", p, NULL);
    char full[256];
    if (want[0] == ':')
        snprintf(full, sizeof(full), "%s%s", p, want); /* ":LINE: ..." */
    else
        snprintf(full, sizeof(full), "%s", want);
    if (rc != -1 || !strstr(err, full))
        fail_msg("config \"%s\": rc %d, err \"%s\"; wanted -1 and \"%s\"", text, rc, err, full);
    unlink(p);
}

static void test_config_errors(void **state)
{
    bad_conf(":2: unknown key 'wrokers'", "workers = 2\nwrokers = 3\n");
    bad_conf(":1: unknown key 'work'", "work = 2\n"); /* no abbreviations in a file */
    bad_conf(":1: unknown key 'help'", "help = true\n");
    bad_conf(":1: config: a config file cannot include another", "config = /etc/x\n");
    bad_conf(":3: --workers '0'", "# c\n\nworkers = 0\n");
    bad_conf(":1: --workers 'two'", "workers = two\n");
    bad_conf(":1: --workers '4  x'", "workers = 4  x\n");
    bad_conf(":2: expected 'key = value', got 'workers 2'", "listen = 127.0.0.1:1\nworkers 2\n");
    bad_conf(":1: missing key before '='", " = 2\n");
    bad_conf(":1: daemon 'maybe': expected true or false", "daemon = maybe\n");
    bad_conf(":1: log-file: unterminated", "log-file = \"/tmp/x\n");
    bad_conf(":1: log-file: unexpected text after the quoted value", "log-file = \"/a\" b\n");
    bad_conf(":1: --log-file: expected a file path", "log-file =\n");
    bad_conf(":2: --listen 'nohost'", "listen = 127.0.0.1:1\nlisten = nohost\n");
    bad_conf(":1: --max-upload-bytes '1X'", "max-upload-bytes = 1X\n");
    /* A cross-check failure names no line, but says where the settings came from. */
    bad_conf("--chunk-size 8M must be less than", "chunk-size = 8M\n");
    bad_conf("(settings from --config", "chunk-size = 8M\n");
    bad("contains NUL bytes", "--config", write_conf_n("workers = 2\n\0", 13), NULL);
    bad("--config '/nonexistent-tn.conf': No such file or directory", "--config",
        "/nonexistent-tn.conf", NULL);
    bad("--config '/tmp': not a regular file", "--config", "/tmp", NULL);
    bad("option '--config' requires a value", "--config", NULL);
    /* The command line's own errors are not blamed on the file. */
    const char *p = write_conf("workers = 2\n");
    bad("--workers 'x'", "--config", p, "--workers", "x", NULL);
    assert_null(strstr(err, p));
}

static void test_config_relative_path(void **state)
{
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    const char *p = write_conf("workers = 2\n");
    assert_int_equal(chdir("/tmp"), 0);
    int rc = parse("--config", p + strlen("/tmp/"), NULL);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    snprintf(want, sizeof(want), "%s", p);
    assert_string_equal(cfg.config_file, want);
    assert_int_equal(cfg.workers, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_flags, setup),
        cmocka_unit_test_setup(test_environment, setup),
        cmocka_unit_test_setup(test_bad_values, setup),
        cmocka_unit_test_setup(test_metrics_and_logging, setup),
        cmocka_unit_test_setup(test_listen_limit, setup),
        cmocka_unit_test_setup(test_relative_paths, setup),
        cmocka_unit_test_setup(test_max_jobs_per_worker, setup),
        cmocka_unit_test_setup(test_fairness, setup),
        cmocka_unit_test_setup(test_reload, setup),
        cmocka_unit_test_setup(test_help_and_version, setup),
        cmocka_unit_test_setup(test_security, setup),
        cmocka_unit_test_setup_teardown(test_config_file, setup, teardown_conf),
        cmocka_unit_test_setup_teardown(test_config_precedence, setup, teardown_conf),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown_conf),
        cmocka_unit_test_setup_teardown(test_config_relative_path, setup, teardown_conf),
        cmocka_unit_test_setup(test_sandbox_flag, setup),
        cmocka_unit_test_setup(test_cache_flags, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
