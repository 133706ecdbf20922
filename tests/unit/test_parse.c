/*
 * Unit tests for src/common/parse.c: sizes, unsigned ranges, durations and
 * time points, good and bad. Every failure case also checks the contract that
 * *out is left untouched.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <string.h>

#include "parse.h"

#define SENTINEL_U64 0x5a5a5a5a5a5a5a5aull
#define SENTINEL_D -12345.678

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)
#define TiB (1024ull * 1024 * 1024 * 1024)

static void size_ok(const char *s, uint64_t expected)
{
    uint64_t v = SENTINEL_U64;
    int rc = tn_parse_size(s, &v);
    if (rc != 0 || v != expected)
        fail_msg("tn_parse_size(\"%s\"): rc %d value %llu, expected 0 and %llu", s, rc,
                 (unsigned long long)v, (unsigned long long)expected);
}

static void size_bad(const char *s, int expected_rc)
{
    uint64_t v = SENTINEL_U64;
    int rc = tn_parse_size(s, &v);
    if (rc != expected_rc || v != SENTINEL_U64)
        fail_msg("tn_parse_size(\"%s\"): rc %d value %llu, expected rc %d and *out untouched", s,
                 rc, (unsigned long long)v, expected_rc);
}

static void test_size(void **state)
{
    (void)state;
    size_ok("0", 0);
    size_ok("10", 10);
    size_ok("1048576", 1048576);
    size_ok("64k", 64 * KiB);
    size_ok("64K", 64 * KiB);
    size_ok("64KiB", 64 * KiB);
    size_ok("1M", MiB);
    size_ok("1m", MiB);
    size_ok("1MiB", MiB);
    size_ok("1mib", MiB);
    size_ok("1MB", MiB);
    size_ok("2G", 2 * GiB);
    size_ok("2GB", 2 * GiB);
    size_ok("16GiB", 16 * GiB);
    size_ok("1T", TiB);
    size_ok("100B", 100);
    size_ok("18446744073709551615", UINT64_MAX);
    size_ok("16777215T", 16777215ull * TiB); /* the largest T that fits */

    size_bad(NULL, -EINVAL);
    size_bad("", -EINVAL);
    size_bad("1X", -EINVAL);
    size_bad("M", -EINVAL);
    size_bad("-1", -EINVAL);
    size_bad("+1", -EINVAL);
    size_bad(" 1", -EINVAL);
    size_bad("1 M", -EINVAL);
    size_bad("1.5M", -EINVAL);
    size_bad("1Mx", -EINVAL);
    size_bad("1MiBs", -EINVAL);
    size_bad("1BB", -EINVAL);
    size_bad("0x10", -EINVAL);
    size_bad("18446744073709551616", -ERANGE); /* 2^64 */
    size_bad("99999999999999999999999", -ERANGE);
    size_bad("16777216T", -ERANGE);    /* 2^64 exactly */
    size_bad("17179869184G", -ERANGE); /* 2^64 exactly */
}

static void uint_ok(const char *s, uint64_t min, uint64_t max, uint64_t expected)
{
    uint64_t v = SENTINEL_U64;
    int rc = tn_parse_uint(s, min, max, &v);
    if (rc != 0 || v != expected)
        fail_msg("tn_parse_uint(\"%s\", %llu, %llu): rc %d value %llu", s, (unsigned long long)min,
                 (unsigned long long)max, rc, (unsigned long long)v);
}

static void uint_bad(const char *s, uint64_t min, uint64_t max, int expected_rc)
{
    uint64_t v = SENTINEL_U64;
    int rc = tn_parse_uint(s, min, max, &v);
    if (rc != expected_rc || v != SENTINEL_U64)
        fail_msg("tn_parse_uint(\"%s\", %llu, %llu): rc %d value %llu, expected rc %d", s,
                 (unsigned long long)min, (unsigned long long)max, rc, (unsigned long long)v,
                 expected_rc);
}

static void test_uint(void **state)
{
    (void)state;
    uint_ok("1", 1, 64, 1);
    uint_ok("64", 1, 64, 64);
    uint_ok("007", 0, 10, 7);
    uint_ok("0", 0, 0, 0);
    uint_ok("18446744073709551615", 0, UINT64_MAX, UINT64_MAX);

    uint_bad("0", 1, 64, -ERANGE);
    uint_bad("65", 1, 64, -ERANGE);
    uint_bad("18446744073709551616", 0, UINT64_MAX, -ERANGE);
    uint_bad(NULL, 0, 10, -EINVAL);
    uint_bad("", 0, 10, -EINVAL);
    uint_bad("-1", 0, 10, -EINVAL);
    uint_bad("+1", 0, 10, -EINVAL);
    uint_bad(" 1", 0, 10, -EINVAL);
    uint_bad("1 ", 0, 10, -EINVAL);
    uint_bad("1a", 0, 10, -EINVAL);
    uint_bad("1.0", 0, 10, -EINVAL);
    uint_bad("abc", 0, 10, -EINVAL);
}

static void dur_ok(const char *s, double expected)
{
    double v = SENTINEL_D;
    int rc = tn_parse_duration(s, &v);
    if (rc != 0 || fabs(v - expected) > 1e-9)
        fail_msg("tn_parse_duration(\"%s\"): rc %d value %g, expected %g", s, rc, v, expected);
}

static void dur_bad(const char *s, int expected_rc)
{
    double v = SENTINEL_D;
    int rc = tn_parse_duration(s, &v);
    if (rc != expected_rc || v != SENTINEL_D)
        fail_msg("tn_parse_duration(\"%s\"): rc %d value %g, expected rc %d and *out untouched", s,
                 rc, v, expected_rc);
}

static void test_duration(void **state)
{
    (void)state;
    dur_ok("0", 0);
    dur_ok("30", 30);
    dur_ok("2.5", 2.5);
    dur_ok("30s", 30);
    dur_ok("500ms", 0.5);
    dur_ok("2m", 120);
    dur_ok("1.5h", 5400);
    dur_ok("1h", 3600);

    dur_bad(NULL, -EINVAL);
    dur_bad("", -EINVAL);
    dur_bad("abc", -EINVAL);
    dur_bad("s", -EINVAL);
    dur_bad("10x", -EINVAL);
    dur_bad("10 s", -EINVAL);
    dur_bad(" 10", -EINVAL);
    dur_bad("inf", -EINVAL);
    dur_bad("nan", -EINVAL);
    dur_bad("0x10", -EINVAL);
    dur_bad("1e999", -EINVAL);
    dur_bad("-1", -ERANGE);
    dur_bad("-5s", -ERANGE);
}

static void tp_ok(const char *s, uint32_t kind, double expected)
{
    struct tn_time_point tp = {.kind = 0xdead, .pad = 0xbeef, .value = SENTINEL_D};
    int rc = tn_parse_time_point(s, &tp);
    if (rc != 0 || tp.kind != kind || fabs(tp.value - expected) > 1e-9)
        fail_msg("tn_parse_time_point(\"%s\"): rc %d kind %u value %g, expected kind %u %g", s, rc,
                 tp.kind, tp.value, kind, expected);
    assert_int_equal(tp.pad, 0); /* goes over IPC: no stray bytes */
}

static void tp_bad(const char *s, int expected_rc)
{
    struct tn_time_point tp = {.kind = 0xdead, .pad = 0xbeef, .value = SENTINEL_D};
    int rc = tn_parse_time_point(s, &tp);
    if (rc != expected_rc || tp.kind != 0xdead || tp.value != SENTINEL_D)
        fail_msg("tn_parse_time_point(\"%s\"): rc %d kind %u value %g, expected rc %d and *out "
                 "untouched",
                 s, rc, tp.kind, tp.value, expected_rc);
}

/* Any error code is fine, as long as it is an error and *out is untouched. */
static void tp_err(const char *s)
{
    struct tn_time_point tp = {.kind = 0xdead, .pad = 0xbeef, .value = SENTINEL_D};
    int rc = tn_parse_time_point(s, &tp);
    if ((rc != -EINVAL && rc != -ERANGE) || tp.kind != 0xdead || tp.value != SENTINEL_D)
        fail_msg("tn_parse_time_point(\"%s\"): rc %d, expected an error and *out untouched", s, rc);
}

static void test_time_point(void **state)
{
    (void)state;
    tp_ok("10%", TN_TIME_PERCENT, 10);
    tp_ok("0%", TN_TIME_PERCENT, 0);
    tp_ok("100%", TN_TIME_PERCENT, 100);
    tp_ok("50.5%", TN_TIME_PERCENT, 50.5);
    tp_ok("0", TN_TIME_SECONDS, 0);
    tp_ok("12.5", TN_TIME_SECONDS, 12.5);
    tp_ok("3600", TN_TIME_SECONDS, 3600);
    tp_ok("1:30", TN_TIME_SECONDS, 90);
    tp_ok("0:05.25", TN_TIME_SECONDS, 5.25);
    tp_ok("90:00", TN_TIME_SECONDS, 5400); /* the first field is not capped */
    tp_ok("1:02:03.5", TN_TIME_SECONDS, 3723.5);
    tp_ok("0:00:00", TN_TIME_SECONDS, 0);

    tp_bad("101%", -ERANGE);
    tp_bad("-1%", -ERANGE);
    tp_bad("-1", -ERANGE);
    tp_bad("1:60", -EINVAL);
    tp_bad("1:02:60", -EINVAL);
    tp_bad("1:60:00", -EINVAL);
    tp_bad("abc", -EINVAL);
    tp_bad("%", -EINVAL);
    tp_bad("", -EINVAL);
    tp_bad(NULL, -EINVAL);
    tp_bad("10%%", -EINVAL);
    tp_bad("x%", -EINVAL);
    tp_bad("1:", -EINVAL);
    tp_bad(":30", -EINVAL);
    tp_bad("1::30", -EINVAL);
    tp_bad("1:2:3:4", -EINVAL);
    tp_bad("1.5:30", -EINVAL);
    tp_bad("1:30.5:00", -EINVAL);
    tp_bad("12.5s", -EINVAL);
    tp_bad(" 12", -EINVAL);
    tp_bad("inf", -EINVAL);
    tp_bad("nan%", -EINVAL);
    tp_err("1:-5");
    tp_err("-1:30");
}

/* Run the failing time-point inputs many times with a dirty stack: a result
 * that depends on uninitialised memory shows up as a flaky error code. */
static void dirty_stack(void)
{
    volatile double junk[64];
    for (int i = 0; i < 64; i++)
        junk[i] = -1.0 - i;
    (void)junk[0];
}

static void test_time_point_deterministic(void **state)
{
    (void)state;
    for (int i = 0; i < 100; i++) {
        dirty_stack();
        tp_bad("abc", -EINVAL);
        dirty_stack();
        tp_bad("", -EINVAL);
        dirty_stack();
        tp_bad(":30", -EINVAL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_uint),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_time_point),
        cmocka_unit_test(test_time_point_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
