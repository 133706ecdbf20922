/*
 * Unit tests for pull mode's worker side (src/worker/pull.c): a thread plays
 * the front over a real SOCK_SEQPACKET socketpair, answering each TN_IPC_READ
 * by writing the asked bytes of a known buffer into a memfd (the "spool file")
 * and sending TN_IPC_READ_REPLY. Checked: the bytes read back, that no byte is
 * fetched twice however the reads jump around, the read-ahead growth, and the
 * failure paths (front gone, front silent past the deadline, a wrong reply).
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"
#include "pull.h"
#include "status.h"

#define SIZE (5u << 20) /* 5 MiB: several blocks, not a multiple of one */
#define SIZE_ODD (SIZE + 12345)

enum behaviour { HONEST, SILENT, CLOSE, WRONG_LENGTH };

struct front {
    int sock;
    int spool;
    const uint8_t *src;
    uint64_t size;
    enum behaviour how;
    uint8_t *asked; /* per byte: how many times it was asked for */
    unsigned requests;
    uint64_t max_len;
    pthread_t thread;
};

static void *front_main(void *arg)
{
    struct front *f = arg;
    for (;;) {
        union tn_ipc_any m;
        int fds[TN_IPC_MAX_FDS], nfds = 0;
        int n = tn_ipc_recv(f->sock, &m, sizeof(m), fds, &nfds, 0);
        if (n <= 0)
            break;
        if (m.h.type != TN_IPC_READ || m.read.offset + m.read.length > f->size)
            break;
        f->requests++;
        if (m.read.length > f->max_len)
            f->max_len = m.read.length;
        for (uint64_t i = 0; i < m.read.length; i++)
            f->asked[m.read.offset + i]++;
        if (f->how == SILENT)
            continue;
        if (f->how == CLOSE) {
            shutdown(f->sock, SHUT_RDWR);
            break;
        }
        if (pwrite(f->spool, f->src + m.read.offset, m.read.length, (off_t)m.read.offset) !=
            (ssize_t)m.read.length)
            break;
        m.h.type = TN_IPC_READ_REPLY;
        if (f->how == WRONG_LENGTH)
            m.read.length--;
        if (tn_ipc_send(f->sock, &m, sizeof(m.read), NULL, 0, 0) < 0)
            break;
    }
    return NULL;
}

struct fixture {
    struct front f;
    int worker_sock;
    uint8_t *src;
    struct tn_pull *pull;
};

static struct fixture *start(uint64_t size, enum behaviour how, int64_t deadline_ms)
{
    struct fixture *x = calloc(1, sizeof(*x));
    int sv[2];
    assert_non_null(x);
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    x->src = malloc(size);
    x->f.asked = calloc(size, 1);
    assert_non_null(x->src);
    assert_non_null(x->f.asked);
    for (uint64_t i = 0; i < size; i++)
        x->src[i] = (uint8_t)(i * 2654435761u >> 13);
    x->f.sock = sv[0];
    x->worker_sock = sv[1];
    x->f.spool = memfd_create("spool", MFD_CLOEXEC);
    assert_true(x->f.spool >= 0);
    x->f.src = x->src;
    x->f.size = size;
    x->f.how = how;
    assert_int_equal(pthread_create(&x->f.thread, NULL, front_main, &x->f), 0);
    assert_int_equal(tn_pull_new(&x->pull, x->f.spool, x->worker_sock, size, 42, deadline_ms), 0);
    return x;
}

static void stop(struct fixture *x)
{
    tn_pull_free(&x->pull);
    assert_null(x->pull);
    close(x->worker_sock); /* the front thread sees EOF */
    pthread_join(x->f.thread, NULL);
    close(x->f.sock);
    close(x->f.spool);
    free(x->f.asked);
    free(x->src);
    free(x);
}

/* Read [pos, pos + len) through the reader the way AVIO does: in a loop. */
static void read_check(struct fixture *x, uint64_t pos, size_t len)
{
    uint8_t *buf = malloc(len);
    size_t got = 0;
    assert_non_null(buf);
    while (got < len) {
        int n = tn_pull_read(x->pull, buf + got, (int)(len - got), (int64_t)(pos + got));
        assert_true(n > 0);
        got += (size_t)n;
    }
    assert_memory_equal(buf, x->src + pos, len);
    free(buf);
}

static void test_sequential(void **state)
{
    (void)state;
    struct fixture *x = start(SIZE_ODD, HONEST, 0);
    for (uint64_t pos = 0; pos < SIZE_ODD; pos += 65536)
        read_check(x, pos, pos + 65536 <= SIZE_ODD ? 65536 : SIZE_ODD - pos);
    uint8_t b;
    assert_int_equal(tn_pull_read(x->pull, &b, 1, SIZE_ODD), 0); /* end of file */
    uint64_t bytes, requests;
    tn_pull_stats(x->pull, &bytes, &requests);
    assert_int_equal(bytes, SIZE_ODD);
    assert_int_equal(requests, x->f.requests);
    /* read-ahead grew to the maximum: a 5 MiB scan takes few round trips */
    assert_int_equal(x->f.max_len, TN_PULL_BLOCK_MAX);
    assert_true(requests <= 2 + SIZE_ODD / TN_PULL_BLOCK_MAX);
    stop(x);
}

static void test_random_never_twice(void **state)
{
    (void)state;
    struct fixture *x = start(SIZE, HONEST, 0);
    unsigned seed = 7;
    /* seeks back and forth, overlapping earlier fetches on both sides */
    for (int i = 0; i < 300; i++) {
        uint64_t pos = (uint64_t)rand_r(&seed) % SIZE;
        size_t len = 1 + (size_t)rand_r(&seed) % 200000;
        if (pos + len > SIZE)
            len = SIZE - pos;
        read_check(x, pos, len);
    }
    for (uint64_t i = 0; i < SIZE; i++)
        if (x->f.asked[i] > 1)
            fail_msg("byte %llu was fetched %u times", (unsigned long long)i, x->f.asked[i]);
    read_check(x, 0, SIZE); /* everything, now partly cached */
    for (uint64_t i = 0; i < SIZE; i++)
        assert_int_equal(x->f.asked[i], 1);
    stop(x);
}

static void test_front_gone(void **state)
{
    (void)state;
    struct fixture *x = start(SIZE, CLOSE, 0);
    uint8_t buf[100];
    assert_int_equal(tn_pull_read(x->pull, buf, sizeof(buf), 0), -TN_CANCELLED);
    stop(x);
}

static void test_front_silent(void **state)
{
    (void)state;
    int64_t t0 = tn_mono_ms();
    struct fixture *x = start(SIZE, SILENT, t0 + 300);
    uint8_t buf[100];
    assert_int_equal(tn_pull_read(x->pull, buf, sizeof(buf), 1000), -TN_DEADLINE_EXCEEDED);
    int64_t took = tn_mono_ms() - t0;
    assert_true(took >= 290 && took < 2000);
    stop(x);
}

static void test_wrong_reply(void **state)
{
    (void)state;
    struct fixture *x = start(SIZE, WRONG_LENGTH, 0);
    uint8_t buf[100];
    assert_int_equal(tn_pull_read(x->pull, buf, sizeof(buf), 0), -TN_INTERNAL);
    stop(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequential),  cmocka_unit_test(test_random_never_twice),
        cmocka_unit_test(test_front_gone),  cmocka_unit_test(test_front_silent),
        cmocka_unit_test(test_wrong_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
