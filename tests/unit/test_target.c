/*
 * Unit tests for src/client/target.c: how several --server values become one
 * balanced gRPC target (address family, duplicates, the authority used for
 * TLS) and every shape that is refused, with its message.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <netdb.h>
#include <string.h>
#include <sys/socket.h>

#include "target.h"
#include "tn_skip.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void build_ok(const char *const *servers, size_t n, bool tls, const char *name,
                     const char *uri, const char *authority, size_t n_addrs)
{
    struct tn_target t;
    char err[512] = "";
    int rc = tn_target_build(servers, n, tls, name, &t, err, sizeof(err));
    if (rc != 0)
        fail_msg("tn_target_build(%s, ...): rc %d: %s", servers[0], rc, err);
    assert_string_equal(t.uri, uri);
    if (authority)
        assert_string_equal(t.authority, authority);
    else
        assert_null(t.authority);
    assert_int_equal(t.n_addrs, n_addrs);
    tn_target_free(&t);
    assert_null(t.uri);
    tn_target_free(&t); /* idempotent */
}

static void build_bad(const char *const *servers, size_t n, bool tls, const char *name,
                      const char *msg)
{
    struct tn_target t;
    char err[512] = "";
    int rc = tn_target_build(servers, n, tls, name, &t, err, sizeof(err));
    if (rc != -1 || !strstr(err, msg))
        fail_msg("tn_target_build(%s, %s, ...): rc %d err \"%s\", expected -1 and \"%s\"",
                 servers[0], n > 1 ? servers[1] : "-", rc, err, msg);
    assert_null(t.uri);
    assert_null(t.authority);
}

static bool has_ipv6_loopback(void)
{
    struct addrinfo hints = {.ai_family = AF_INET6, .ai_flags = AI_NUMERICHOST}, *res = NULL;
    int rc = getaddrinfo("::1", "1", &hints, &res);
    if (res)
        freeaddrinfo(res);
    return rc == 0;
}

static void test_one_server_is_passed_through(void **state)
{
    (void)state;
    const char *const one[] = {"example.invalid:50051"}; /* not resolved here: gRPC does it */
    build_ok(one, 1, false, NULL, "example.invalid:50051", NULL, 0);
    const char *const sock[] = {"unix:/run/tn.sock"};
    build_ok(sock, 1, true, NULL, "unix:/run/tn.sock", NULL, 0);
    const char *const dns[] = {"dns:///localhost:1"};
    build_ok(dns, 1, false, NULL, "dns:///localhost:1", NULL, 0);
}

static void test_several_ipv4(void **state)
{
    (void)state;
    const char *const two[] = {"127.0.0.1:5001", "127.0.0.2:5002"};
    build_ok(two, N(two), false, NULL, "ipv4:127.0.0.1:5001,127.0.0.2:5002", "127.0.0.1:5001", 2);
    /* A name resolving to the same address as another entry counts once. */
    const char *const dup[] = {"127.0.0.1:5001", "localhost:5001", "127.0.0.1:5001",
                               "127.0.0.1:5003"};
    build_ok(dup, N(dup), false, NULL, "ipv4:127.0.0.1:5001,127.0.0.1:5003", "127.0.0.1:5001", 2);
    /* localhost has an IPv4 address, so IPv4 is used for every server. */
    const char *const names[] = {"localhost:1", "127.0.0.1:2"};
    build_ok(names, N(names), false, NULL, "ipv4:127.0.0.1:1,127.0.0.1:2", "localhost:1", 2);
}

static void test_several_ipv6(void **state)
{
    (void)state;
    if (!has_ipv6_loopback())
        TN_SKIP("no IPv6 loopback (::1) on this machine");
    const char *const two[] = {"[::1]:5001", "[::1]:5002"};
    build_ok(two, N(two), true, NULL, "ipv6:[::1]:5001,[::1]:5002", "[::1]:5001", 2);
    const char *const mixed[] = {"127.0.0.1:5001", "[::1]:5002"};
    build_bad(mixed, N(mixed), false, NULL, "one address family");
}

static void test_tls_name(void **state)
{
    (void)state;
    /* Same host, other ports: that host is the name every certificate is checked against. */
    const char *const same[] = {"127.0.0.1:1", "127.0.0.1:2"};
    build_ok(same, N(same), true, NULL, "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1", 2);
    const char *const same_name[] = {"LOCALHOST:1", "localhost:2"};
    build_ok(same_name, N(same_name), true, NULL, "ipv4:127.0.0.1:1,127.0.0.1:2", "LOCALHOST:1", 2);
    /* Different hosts: one name must be given, or the channel cannot verify them all. */
    const char *const diff[] = {"127.0.0.1:1", "localhost:2"};
    build_bad(diff, N(diff), true, NULL, "give --tls-server-name");
    build_ok(diff, N(diff), true, "localhost", "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1", 2);
    build_ok(diff, N(diff), false, NULL, "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1", 2);
}

static void test_refused_shapes(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "unix:/run/tn.sock",
        "dns:///localhost:1",
        "ipv4:127.0.0.1:1",
        "127.0.0.1",
        "127.0.0.1:",
        ":50051",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:12x",
        "::1:50051",
        "[::1]50051",
        "[::1",
        "[]:1",
    };
    for (size_t i = 0; i < N(bad); i++) {
        const char *const servers[] = {"127.0.0.1:1", bad[i]};
        build_bad(servers, 2, false, NULL, "must be HOST:PORT or [IPV6]:PORT");
    }
    const char *const unknown[] = {"127.0.0.1:1", "no-such-host.invalid:1"};
    build_bad(unknown, 2, false, NULL, "cannot resolve 'no-such-host.invalid'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_server_is_passed_through),
        cmocka_unit_test(test_several_ipv4),
        cmocka_unit_test(test_several_ipv6),
        cmocka_unit_test(test_tls_name),
        cmocka_unit_test(test_refused_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
