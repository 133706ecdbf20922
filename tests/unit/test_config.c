/*
 * Unit tests for the server configuration (src/server/config.c): defaults,
 * NUM_WORKERS and TMPDIR, every flag's accepted and rejected forms, the
 * cross-checks (--chunk-size vs --max-message-bytes, --daemon needs
 * --log-file), and relative paths made absolute. Each bad value must return -1
 * with a message that names the flag.
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
#include <unistd.h>

#include "config.h"
#include "log.h"

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
    bad("--daemon requires --log-file", "--daemon", NULL);
    bad("--pidfile", "--pidfile", "", NULL);
    bad("--log-file", "--log-file=", NULL);
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

static void test_sandbox_flag(void **state)
{
    assert_int_equal(parse(NULL), 0);
    assert_true(cfg.sandbox);
    assert_int_equal(parse("--no-sandbox", NULL), 0);
    assert_false(cfg.sandbox);
    assert_int_equal(parse("--no-sandbox=yes", NULL), -1);
    assert_string_equal(err, "option '--no-sandbox=yes' takes no value");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_flags, setup),
        cmocka_unit_test_setup(test_environment, setup),
        cmocka_unit_test_setup(test_bad_values, setup),
        cmocka_unit_test_setup(test_listen_limit, setup),
        cmocka_unit_test_setup(test_relative_paths, setup),
        cmocka_unit_test_setup(test_help_and_version, setup),
        cmocka_unit_test_setup(test_sandbox_flag, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
