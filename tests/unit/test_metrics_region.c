/*
 * Unit tests for the shared metrics region (src/common/metrics.c): no-ops
 * before tn_metrics_create(), histogram bucket edges (le is inclusive), codec
 * and mode labels, the pid-keyed gauges and their clearing on reap, the
 * timeout mark, and counts seen from a forked child (the region is shared).
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics.h"

#define GEN                                                                                        \
    "grpc_type=\"bidi_stream\",grpc_service=\"thumbnail.v1.Thumbnailer\",grpc_method=\"Generate\""

/* The value of the sample line that starts with `series ` in text, or -1. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static char *render(void)
{
    size_t len = 0;
    char *t = tn_metrics_render(&len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    assert_int_equal(t[len - 1], '\n');
    return t;
}

static void test_before_create(void **state)
{
    (void)state;
    size_t len = 0;
    tn_metrics_call_started(TN_M_GENERATE); /* must not crash */
    tn_metrics_decode("h264", 1, 0.1);
    assert_int_equal(tn_metrics_reaped(getpid()), 0);
    assert_null(tn_metrics_render(&len));
}

static void test_counts(void **state)
{
    (void)state;
    assert_int_equal(tn_metrics_create(), 0);
    char *t = render();
    assert_true(sample(t, "grpc_server_started_total{" GEN "}") == 0);
    assert_true(sample(t, "thumbnail_workers{state=\"idle\"}") == 0);
    assert_null(strstr(t, "thumbnail_decode_seconds_bucket")); /* no series before a job */
    free(t);

    tn_metrics_call_started(TN_M_GENERATE);
    tn_metrics_call_started(TN_M_GENERATE);
    tn_metrics_call_handled(TN_M_GENERATE, 0, 0.005); /* on the bound: in le="0.005" */
    tn_metrics_call_handled(TN_M_GENERATE, 3, 42);    /* above every bound: +Inf only */
    tn_metrics_call_handled(TN_M_GENERATE, 99, 0.2);  /* not a code: Unknown */
    tn_metrics_msg_received(TN_M_GENERATE);
    tn_metrics_msg_sent(TN_M_HEALTH_CHECK);
    tn_metrics_bytes_received(1000);
    tn_metrics_bytes_sent(7);
    tn_metrics_decode("h264", 1, 0.3);
    tn_metrics_decode("theora", 2, 0.01);
    tn_metrics_decode(NULL, 3, 100);
    tn_metrics_worker_restart(TN_RESTART_SANDBOX);

    t = render();
    assert_true(sample(t, "grpc_server_started_total{" GEN "}") == 2);
    assert_true(sample(t, "grpc_server_handled_total{" GEN ",grpc_code=\"OK\"}") == 1);
    assert_true(sample(t, "grpc_server_handled_total{" GEN ",grpc_code=\"InvalidArgument\"}") == 1);
    assert_true(sample(t, "grpc_server_handled_total{" GEN ",grpc_code=\"Unknown\"}") == 1);
    assert_true(sample(t, "grpc_server_handling_seconds_bucket{" GEN ",le=\"0.001\"}") == -1);
    assert_true(sample(t, "grpc_server_handling_seconds_bucket{" GEN ",le=\"0.005\"}") == 1);
    assert_true(sample(t, "grpc_server_handling_seconds_bucket{" GEN ",le=\"0.25\"}") == 2);
    assert_true(sample(t, "grpc_server_handling_seconds_bucket{" GEN ",le=\"10\"}") == 2);
    assert_true(sample(t, "grpc_server_handling_seconds_bucket{" GEN ",le=\"+Inf\"}") == 3);
    assert_true(sample(t, "grpc_server_handling_seconds_count{" GEN "}") == 3);
    assert_true(sample(t, "grpc_server_handling_seconds_sum{" GEN "}") == 42.205);
    assert_true(sample(t, "grpc_server_msg_received_total{" GEN "}") == 1);
    assert_true(sample(t, "thumbnail_received_bytes_total") == 1000);
    assert_true(sample(t, "thumbnail_sent_bytes_total") == 7);
    assert_true(sample(t, "thumbnail_decode_seconds_count{codec=\"h264\",mode=\"accurate\"}") == 1);
    assert_true(
        sample(t,
               "thumbnail_decode_seconds_bucket{codec=\"h264\",mode=\"accurate\",le=\"0.25\"}") ==
        0);
    assert_true(
        sample(t, "thumbnail_decode_seconds_bucket{codec=\"h264\",mode=\"accurate\",le=\"0.5\"}") ==
        1);
    assert_true(sample(t, "thumbnail_decode_seconds_count{codec=\"other\",mode=\"keyframe\"}") ==
                1);
    assert_true(sample(t, "thumbnail_decode_seconds_count{codec=\"none\",mode=\"smart\"}") == 1);
    assert_true(sample(t, "thumbnail_worker_restarts_total{cause=\"sandbox\"}") == 1);
    assert_true(sample(t, "thumbnail_worker_restarts_total{cause=\"crash\"}") == 0);
    assert_non_null(strstr(t, "# TYPE thumbnail_decode_seconds histogram\n"));
    free(t);
}

static void test_gauges_and_reap(void **state)
{
    (void)state;
    pid_t me = getpid();
    assert_int_equal(tn_metrics_create(), 0);
    tn_metrics_front_attach();
    tn_metrics_front_queue_depth(5);
    tn_metrics_front_spool_add(4096);
    tn_metrics_front_spool_add(-1024);
    tn_metrics_worker_attach();
    tn_metrics_worker_busy(1);
    char *t = render();
    assert_true(sample(t, "thumbnail_queue_depth") == 5);
    assert_true(sample(t, "thumbnail_spool_bytes") == 3072);
    assert_true(sample(t, "thumbnail_workers{state=\"busy\"}") == 1);
    assert_true(sample(t, "thumbnail_workers{state=\"idle\"}") == 0);
    free(t);

    /* Unmarked, a reap says "not a timeout"; the gauges of the pid go away. */
    assert_int_equal(tn_metrics_reaped(me + 100000), 0);
    tn_metrics_worker_mark_timeout(me);
    assert_int_equal(tn_metrics_reaped(me), 1);
    t = render();
    assert_true(sample(t, "thumbnail_queue_depth") == 0);
    assert_true(sample(t, "thumbnail_spool_bytes") == 0);
    assert_true(sample(t, "thumbnail_workers{state=\"busy\"}") == 0);
    assert_true(sample(t, "thumbnail_workers{state=\"idle\"}") == 0);
    free(t);
    assert_int_equal(tn_metrics_reaped(me), 0); /* the mark went with the record */
}

static void test_shared_with_children(void **state)
{
    (void)state;
    assert_int_equal(tn_metrics_create(), 0);
    char *t = render();
    double before = sample(t, "thumbnail_sent_bytes_total");
    free(t);
    for (int i = 0; i < 3; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            tn_metrics_bytes_sent(10);
            _exit(0);
        }
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
    }
    t = render();
    assert_true(sample(t, "thumbnail_sent_bytes_total") == before + 30);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_before_create),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_gauges_and_reap),
        cmocka_unit_test(test_shared_with_children),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
