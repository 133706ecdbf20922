/*
 * Unit tests for the framed IPC (src/common/ipc.c) over real
 * socketpair(AF_UNIX, SOCK_SEQPACKET) pairs: round trips of every message
 * type with file descriptors, EOF, too many fds, truncated and malformed
 * messages, non-blocking behaviour. Malformed input is sent with a raw
 * sendmsg() (tn_ipc_send refuses to build it), and every error path is checked
 * for leaked descriptors by counting /proc/self/fd.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ipc.h"
#include "status.h"

struct pair {
    int a, b;
};

static int setup_pair(void **state)
{
    struct pair *p = malloc(sizeof(*p));
    int sv[2];
    if (!p || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        free(p);
        return -1;
    }
    p->a = sv[0];
    p->b = sv[1];
    *state = p;
    return 0;
}

static int teardown_pair(void **state)
{
    struct pair *p = *state;
    if (p->a >= 0)
        close(p->a);
    if (p->b >= 0)
        close(p->b);
    free(p);
    return 0;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* Same file as `expected`? (device + inode, the way the kernel sees it) */
static void assert_same_file(int fd, int expected)
{
    struct stat s1, s2;
    assert_int_equal(fstat(fd, &s1), 0);
    assert_int_equal(fstat(expected, &s2), 0);
    assert_int_equal(s1.st_dev, s2.st_dev);
    assert_int_equal(s1.st_ino, s2.st_ino);
    /* Received descriptors must be close-on-exec (MSG_CMSG_CLOEXEC). */
    int fl = fcntl(fd, F_GETFD);
    assert_true(fl >= 0 && (fl & FD_CLOEXEC));
}

/* sendmsg() with any bytes and any number of fds: the malformed messages
 * tn_ipc_send cannot produce. */
static void send_raw(int sock, const void *buf, size_t len, const int *fds, int nfds)
{
    char ctl[CMSG_SPACE(sizeof(int) * 16)] __attribute__((aligned(8)));
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    assert_true(nfds <= 16);
    if (nfds > 0) {
        memset(ctl, 0, sizeof(ctl));
        mh.msg_control = ctl;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    assert_int_equal(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

static int make_memfd(const char *content)
{
    int fd = memfd_create("test_ipc", MFD_CLOEXEC);
    assert_true(fd >= 0);
    if (content)
        assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    return fd;
}

/* ---------------------------------------------------------------------- */

static void test_sizes(void **state)
{
    (void)state;
    assert_int_equal(tn_ipc_size(TN_IPC_JOB), sizeof(struct tn_ipc_job));
    assert_int_equal(tn_ipc_size(TN_IPC_ACK), sizeof(struct tn_ipc_ack));
    assert_int_equal(tn_ipc_size(TN_IPC_RESULT), sizeof(struct tn_ipc_result));
    assert_int_equal(tn_ipc_size(TN_IPC_DONE), sizeof(struct tn_ipc_done));
    assert_int_equal(tn_ipc_size(TN_IPC_READ), sizeof(struct tn_ipc_read));
    assert_int_equal(tn_ipc_size(TN_IPC_READ_REPLY), sizeof(struct tn_ipc_read));
    assert_int_equal(tn_ipc_size(TN_IPC_CTL_READY), sizeof(struct tn_ipc_ctl));
    assert_int_equal(tn_ipc_size(TN_IPC_CTL_WORKERS), sizeof(struct tn_ipc_ctl));
    assert_int_equal(tn_ipc_size(0), 0);
    assert_int_equal(tn_ipc_size(99), 0);
    assert_int_equal(tn_ipc_size(10), 0); /* the old RESULT_INFO: its text is in RESULT now */
    /* Every message fits the receive buffer. */
    assert_true(sizeof(union tn_ipc_any) >= sizeof(struct tn_ipc_job));
    assert_true(sizeof(union tn_ipc_any) >= sizeof(struct tn_ipc_result));
    assert_true(sizeof(union tn_ipc_any) >= sizeof(struct tn_ipc_done));

    struct tn_ipc_header h;
    memset(&h, 0xa5, sizeof(h));
    tn_ipc_header_init(&h, TN_IPC_DONE, 0x0123456789abcdefull);
    assert_int_equal(h.magic, TN_IPC_MAGIC);
    assert_int_equal(h.version, TN_IPC_VERSION);
    assert_int_equal(h.type, TN_IPC_DONE);
    assert_int_equal(h.job_id, 0x0123456789abcdefull);
}

static void test_job_round_trip(void **state)
{
    struct pair *p = *state;
    char path[] = "/tmp/test_ipc_video.XXXXXX";
    int video = mkstemp(path);
    assert_true(video >= 0);
    unlink(path);
    int reply[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, reply), 0);

    struct tn_ipc_job job;
    memset(&job, 0, sizeof(job));
    tn_ipc_header_init(&job.h, TN_IPC_JOB, 42);
    job.file_size = 123456789012ull;
    job.deadline_ms = 987654321;
    job.opts.n_times = 2;
    job.opts.max_width = 320;
    job.opts.max_height = 240;
    job.opts.upscale = 1;
    job.opts.format = TN_FORMAT_PNG;
    job.opts.mode = TN_MODE_KEYFRAME;
    job.opts.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = 12.5};
    job.opts.times[1] = (struct tn_time_point){.kind = TN_TIME_PERCENT, .value = 50};
    snprintf(job.file_name, sizeof(job.file_name), "dir/clip.mp4");

    int sent_fds[2] = {video, reply[1]};
    assert_int_equal(tn_ipc_send(p->a, &job, sizeof(job), sent_fds, 2, 0), 0);

    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS] = {-1, -1};
    int nfds = -1;
    int n = tn_ipc_recv(p->b, &m, sizeof(m), fds, &nfds, 0);
    assert_int_equal(n, sizeof(struct tn_ipc_job));
    assert_int_equal(nfds, 2);
    assert_memory_equal(&m.job, &job, sizeof(job));
    assert_string_equal(m.job.file_name, "dir/clip.mp4");
    assert_same_file(fds[0], video);
    assert_same_file(fds[1], reply[1]);
    /* The received fd is a new descriptor, not the sender's number reused. */
    assert_int_not_equal(fds[0], video);

    /* The passed reply socket really is connected to reply[0]. */
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 42);
    ack.pid = getpid();
    assert_int_equal(tn_ipc_send(fds[1], &ack, sizeof(ack), NULL, 0, 0), 0);
    int nfds2 = -1;
    n = tn_ipc_recv(reply[0], &m, sizeof(m), fds + 0, &nfds2, 0); /* no fds expected */
    assert_int_equal(n, sizeof(struct tn_ipc_ack));
    assert_int_equal(nfds2, 0);
    assert_int_equal(m.h.type, TN_IPC_ACK);
    assert_int_equal(m.h.job_id, 42);
    assert_int_equal(m.ack.pid, getpid());
    /* fds[0] was not touched by a receive that carried none. */
    assert_same_file(fds[0], video);

    close(fds[0]);
    close(fds[1]);
    close(video);
    close(reply[0]);
    close(reply[1]);
}

static void test_result_round_trip(void **state)
{
    struct pair *p = *state;
    int mem = make_memfd("\x89PNG fake image");
    struct tn_ipc_result r;
    memset(&r, 0, sizeof(r));
    tn_ipc_header_init(&r.h, TN_IPC_RESULT, 7);
    r.index = 3;
    r.width = 320;
    r.height = 180;
    r.format = TN_FORMAT_PNG;
    r.requested_time = 1.5;
    r.actual_time = 1.52;
    r.size = 15;
    r.kind = 1;
    memset(r.reason, 'r', sizeof(r.reason) - 1); /* longest reason */
    assert_int_equal(tn_ipc_send(p->b, &r, sizeof(r), &mem, 1, 0), 0);
    close(mem); /* the receiver's copy must keep the memfd alive */

    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS] = {-1, -1};
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), sizeof(r));
    assert_int_equal(nfds, 1);
    assert_memory_equal(&m.result, &r, sizeof(r));
    assert_int_equal(m.result.kind, 1);
    assert_int_equal(strlen(m.result.reason), TN_IPC_REASON_MAX - 1);
    char buf[32] = {0};
    assert_int_equal(pread(fds[0], buf, sizeof(buf) - 1, 0), 15);
    assert_string_equal(buf, "\x89PNG fake image");
    close(fds[0]);
}

static void test_done_round_trip(void **state)
{
    struct pair *p = *state;
    struct tn_ipc_done d;
    memset(&d, 0, sizeof(d));
    tn_ipc_header_init(&d.h, TN_IPC_DONE, UINT64_MAX);
    d.code = TN_INVALID_ARGUMENT;
    memset(d.message, 'x', sizeof(d.message) - 1); /* longest message */
    assert_int_equal(tn_ipc_send(p->b, &d, sizeof(d), NULL, 0, 0), 0);

    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS];
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), sizeof(d));
    assert_int_equal(nfds, 0);
    assert_memory_equal(&m.done, &d, sizeof(d));
    assert_int_equal(strlen(m.done.message), TN_IPC_MESSAGE_MAX - 1);
}

/* Several messages queued: boundaries and order are kept, fds stay with their message. */
static void test_message_boundaries(void **state)
{
    struct pair *p = *state;
    int mems[3];
    for (int i = 0; i < 3; i++) {
        struct tn_ipc_result r;
        memset(&r, 0, sizeof(r));
        tn_ipc_header_init(&r.h, TN_IPC_RESULT, 100 + (uint64_t)i);
        r.index = (uint32_t)i;
        mems[i] = make_memfd(NULL);
        assert_int_equal(tn_ipc_send(p->b, &r, sizeof(r), &mems[i], 1, 0), 0);
    }
    struct tn_ipc_done d;
    memset(&d, 0, sizeof(d));
    tn_ipc_header_init(&d.h, TN_IPC_DONE, 103);
    assert_int_equal(tn_ipc_send(p->b, &d, sizeof(d), NULL, 0, 0), 0);

    for (int i = 0; i < 3; i++) {
        union tn_ipc_any m;
        int fds[TN_IPC_MAX_FDS];
        int nfds = -1;
        assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0),
                         sizeof(struct tn_ipc_result));
        assert_int_equal(m.h.job_id, 100 + (uint64_t)i);
        assert_int_equal(m.result.index, i);
        assert_int_equal(nfds, 1);
        assert_same_file(fds[0], mems[i]);
        close(fds[0]);
        close(mems[i]);
    }
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS];
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), sizeof(d));
    assert_int_equal(m.h.type, TN_IPC_DONE);
}

static void test_eof(void **state)
{
    struct pair *p = *state;
    close(p->b);
    p->b = -1;
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS];
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), 0);
    assert_int_equal(nfds, 0);
    /* Still EOF when asked again, also non-blocking. */
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT), 0);
}

/* Messages already queued are delivered before EOF. */
static void test_eof_after_pending(void **state)
{
    struct pair *p = *state;
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 1);
    assert_int_equal(tn_ipc_send(p->b, &ack, sizeof(ack), NULL, 0, 0), 0);
    close(p->b);
    p->b = -1;
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS];
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), sizeof(ack));
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), 0);
}

static void test_dontwait_empty(void **state)
{
    struct pair *p = *state;
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS];
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT), -EAGAIN);
    assert_int_equal(nfds, 0);
}

/* The sender refuses what the protocol does not allow. */
static void test_send_errors(void **state)
{
    struct pair *p = *state;
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 1);
    int three[3] = {0, 1, 2};
    assert_int_equal(tn_ipc_send(p->a, &ack, sizeof(ack), three, 3, 0), -EINVAL);
    assert_int_equal(tn_ipc_send(p->a, &ack, sizeof(ack), three, -1, 0), -EINVAL);

    /* Full socket, non-blocking: -EAGAIN rather than blocking. */
    int sent = 0, rc;
    while ((rc = tn_ipc_send(p->a, &ack, sizeof(ack), NULL, 0, MSG_DONTWAIT)) == 0)
        assert_true(++sent < 1000000);
    assert_int_equal(rc, -EAGAIN);
    assert_true(sent > 0);

    /* Peer gone with our messages unread (a worker that died): the kernel
     * reports ECONNRESET once, then EPIPE; tn_ipc_send maps both to -EPIPE.
     * No SIGPIPE kills us (MSG_NOSIGNAL). */
    close(p->b);
    p->b = -1;
    rc = tn_ipc_send(p->a, &ack, sizeof(ack), NULL, 0, 0);
    assert_int_equal(rc, -EPIPE);
    assert_int_equal(tn_ipc_send(p->a, &ack, sizeof(ack), NULL, 0, 0), -EPIPE);
}

/* Peer closed cleanly (nothing unread): -EPIPE at once. */
static void test_send_epipe(void **state)
{
    struct pair *p = *state;
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 1);
    close(p->b);
    p->b = -1;
    assert_int_equal(tn_ipc_send(p->a, &ack, sizeof(ack), NULL, 0, 0), -EPIPE);
    assert_int_equal(tn_ipc_send(p->a, &ack, sizeof(ack), NULL, 0, MSG_DONTWAIT), -EPIPE);
}

static void recv_expect(int sock, int expected)
{
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS] = {-1, -1};
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(sock, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT), expected);
    assert_int_equal(nfds, 0);
}

/* 3 fds on a valid message: -EPROTO and every received fd is closed. */
static void test_too_many_fds(void **state)
{
    struct pair *p = *state;
    struct tn_ipc_job job;
    memset(&job, 0, sizeof(job));
    tn_ipc_header_init(&job.h, TN_IPC_JOB, 5);
    job.opts.n_times = 1;
    int mems[8];
    for (int i = 0; i < 8; i++)
        mems[i] = make_memfd(NULL);

    int before = count_fds();
    send_raw(p->b, &job, sizeof(job), mems, 3);
    recv_expect(p->a, -EPROTO);
    assert_int_equal(count_fds(), before);

    /* More than the receive buffer has room for: the kernel truncates the
     * control data (MSG_CTRUNC); still -EPROTO, still nothing leaked. */
    send_raw(p->b, &job, sizeof(job), mems, 8);
    recv_expect(p->a, -EPROTO);
    assert_int_equal(count_fds(), before);

    /* The stream is still usable afterwards. */
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 6);
    assert_int_equal(tn_ipc_send(p->b, &ack, sizeof(ack), NULL, 0, 0), 0);
    recv_expect(p->a, sizeof(ack));

    for (int i = 0; i < 8; i++)
        close(mems[i]);
}

/* A message longer than the buffer: -EMSGSIZE, fds closed, next message fine. */
static void test_truncated(void **state)
{
    struct pair *p = *state;
    int mems[2] = {make_memfd(NULL), make_memfd(NULL)};

    /* A valid DONE received into a buffer sized for an ACK. */
    struct tn_ipc_done d;
    memset(&d, 0, sizeof(d));
    tn_ipc_header_init(&d.h, TN_IPC_DONE, 9);
    int before = count_fds();
    assert_int_equal(tn_ipc_send(p->b, &d, sizeof(d), mems, 2, 0), 0);
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS] = {-1, -1};
    int nfds = -1;
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(struct tn_ipc_ack), fds, &nfds, 0), -EMSGSIZE);
    assert_int_equal(nfds, 0);
    assert_int_equal(count_fds(), before);

    /* Bytes beyond the largest message, into the full buffer. */
    size_t big_len = sizeof(union tn_ipc_any) + 100;
    char *big = calloc(1, big_len);
    assert_non_null(big);
    tn_ipc_header_init((struct tn_ipc_header *)big, TN_IPC_JOB, 10);
    send_raw(p->b, big, big_len, mems, 1);
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), -EMSGSIZE);
    assert_int_equal(nfds, 0);
    assert_int_equal(count_fds(), before);
    free(big);

    /* The truncated message was consumed whole: the next one is intact. */
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 11);
    assert_int_equal(tn_ipc_send(p->b, &ack, sizeof(ack), NULL, 0, 0), 0);
    assert_int_equal(tn_ipc_recv(p->a, &m, sizeof(m), fds, &nfds, 0), sizeof(ack));
    assert_int_equal(m.h.job_id, 11);

    close(mems[0]);
    close(mems[1]);
}

/* Short and malformed messages: -EPROTO, fds closed, the next message fine. */
static void test_garbage(void **state)
{
    struct pair *p = *state;
    int mem = make_memfd(NULL);
    int before = count_fds();

    /* Shorter than a header. */
    char tiny[4] = {1, 2, 3, 4};
    send_raw(p->b, tiny, sizeof(tiny), &mem, 1);
    recv_expect(p->a, -EPROTO);

    /* A header only, but a valid one: too short for any type. */
    struct tn_ipc_header h;
    tn_ipc_header_init(&h, TN_IPC_ACK, 1);
    send_raw(p->b, &h, sizeof(h), &mem, 1);
    recv_expect(p->a, -EPROTO);

    /* Bad magic. */
    struct tn_ipc_ack ack;
    memset(&ack, 0, sizeof(ack));
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 2);
    ack.h.magic = 0xdeadbeef;
    send_raw(p->b, &ack, sizeof(ack), &mem, 1);
    recv_expect(p->a, -EPROTO);

    /* Wrong version. */
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 3);
    ack.h.version = TN_IPC_VERSION + 1;
    send_raw(p->b, &ack, sizeof(ack), NULL, 0);
    recv_expect(p->a, -EPROTO);

    /* Unknown type. */
    tn_ipc_header_init(&ack.h, (enum tn_ipc_type)77, 4);
    send_raw(p->b, &ack, sizeof(ack), &mem, 1);
    recv_expect(p->a, -EPROTO);

    /* Length does not match the type: a DONE header on an ACK-sized body, and a
     * JOB one byte short. */
    tn_ipc_header_init(&ack.h, TN_IPC_DONE, 5);
    send_raw(p->b, &ack, sizeof(ack), &mem, 1);
    recv_expect(p->a, -EPROTO);
    struct tn_ipc_job job;
    memset(&job, 0, sizeof(job));
    tn_ipc_header_init(&job.h, TN_IPC_JOB, 6);
    send_raw(p->b, &job, sizeof(job) - 1, &mem, 1);
    recv_expect(p->a, -EPROTO);

    /* Random bytes of a plausible length. */
    unsigned char junk[sizeof(struct tn_ipc_result)];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)(i * 131 + 7);
    send_raw(p->b, junk, sizeof(junk), &mem, 1);
    recv_expect(p->a, -EPROTO);

    assert_int_equal(count_fds(), before);

    /* And a good one still goes through. */
    tn_ipc_header_init(&ack.h, TN_IPC_ACK, 8);
    ack.pid = 1234;
    assert_int_equal(tn_ipc_send(p->b, &ack, sizeof(ack), NULL, 0, 0), 0);
    recv_expect(p->a, sizeof(ack));
    close(mem);
}

/* The job queue shape: one sender, several receivers on the same end; each
 * message goes to exactly one receiver. (Single process: two dups of the
 * receiving end stand in for two workers.) */
static void test_shared_queue(void **state)
{
    struct pair *p = *state;
    int w2 = dup(p->a);
    assert_true(w2 >= 0);
    for (int i = 0; i < 4; i++) {
        struct tn_ipc_ack ack;
        memset(&ack, 0, sizeof(ack));
        tn_ipc_header_init(&ack.h, TN_IPC_ACK, (uint64_t)i);
        assert_int_equal(tn_ipc_send(p->b, &ack, sizeof(ack), NULL, 0, 0), 0);
    }
    union tn_ipc_any m;
    int fds[TN_IPC_MAX_FDS];
    int nfds;
    uint64_t seen = 0;
    for (int i = 0; i < 4; i++) {
        int s = (i % 2) ? w2 : p->a;
        assert_int_equal(tn_ipc_recv(s, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT),
                         sizeof(struct tn_ipc_ack));
        seen |= 1ull << m.h.job_id;
    }
    assert_int_equal(seen, 0xf);
    assert_int_equal(tn_ipc_recv(w2, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT), -EAGAIN);
    close(w2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),
        cmocka_unit_test_setup_teardown(test_job_round_trip, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_result_round_trip, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_done_round_trip, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_message_boundaries, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_eof, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_eof_after_pending, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_dontwait_empty, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_send_errors, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_send_epipe, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_too_many_fds, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_truncated, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_garbage, setup_pair, teardown_pair),
        cmocka_unit_test_setup_teardown(test_shared_queue, setup_pair, teardown_pair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
