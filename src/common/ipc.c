#include "ipc.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t tn_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tn_ipc_header_init(struct tn_ipc_header *h, enum tn_ipc_type type, uint64_t job_id)
{
    memset(h, 0, sizeof(*h));
    h->magic = TN_IPC_MAGIC;
    h->version = TN_IPC_VERSION;
    h->type = (uint16_t)type;
    h->job_id = job_id;
}

size_t tn_ipc_size(unsigned type)
{
    switch (type) {
    case TN_IPC_JOB: return sizeof(struct tn_ipc_job);
    case TN_IPC_ACK: return sizeof(struct tn_ipc_ack);
    case TN_IPC_RESULT: return sizeof(struct tn_ipc_result);
    case TN_IPC_DONE: return sizeof(struct tn_ipc_done);
    case TN_IPC_READ:
    case TN_IPC_READ_REPLY: return sizeof(struct tn_ipc_read);
    case TN_IPC_CTL_READY:
    case TN_IPC_CTL_WORKERS: return sizeof(struct tn_ipc_ctl);
    default: return 0;
    }
}

int tn_ipc_send(int sock, const void *msg, size_t len, const int *fds, int nfds, int flags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * TN_IPC_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

    if (nfds < 0 || nfds > TN_IPC_MAX_FDS)
        return -EINVAL;
    if (nfds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &mh, flags | MSG_NOSIGNAL);
        if (n >= 0)
            return (size_t)n == len ? 0 : -EPROTO; /* SEQPACKET: all or nothing */
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK)
            return -EAGAIN;
        /* A peer that closed with our earlier messages unread gives
         * ECONNRESET once, then EPIPE: both mean "peer gone". */
        return errno == ECONNRESET ? -EPIPE : -errno;
    }
}

static void close_fds(int *fds, int *nfds)
{
    for (int i = 0; i < *nfds; i++)
        close(fds[i]);
    *nfds = 0;
}

int tn_ipc_recv(int sock, void *buf, size_t cap, int *fds, int *nfds, int flags)
{
    union {
        /* Room for one fd more than allowed, so an excess is seen as an error
         * rather than silently dropped by the kernel. */
        char buf[CMSG_SPACE(sizeof(int) * (TN_IPC_MAX_FDS + 1))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    *nfds = 0;
    for (;;) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        n = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
        if (n >= 0)
            break;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }

    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        /* CMSG_SPACE rounds up, so the kernel may deliver more fds than
         * TN_IPC_MAX_FDS + 1: size by the buffer so every one is closed. */
        int got[sizeof(ctl.buf) / sizeof(int)];
        if (count > (int)(sizeof(got) / sizeof(got[0])))
            count = (int)(sizeof(got) / sizeof(got[0]));
        memcpy(got, CMSG_DATA(c), sizeof(int) * (size_t)count);
        for (int i = 0; i < count; i++) {
            if (*nfds < TN_IPC_MAX_FDS)
                fds[(*nfds)++] = got[i];
            else {
                close(got[i]);
                mh.msg_flags |= MSG_CTRUNC; /* too many: treat as truncated */
            }
        }
    }

    if (n == 0 && *nfds == 0)
        return 0; /* EOF: SEQPACKET never delivers an empty message of ours */
    if (mh.msg_flags & MSG_TRUNC) {
        close_fds(fds, nfds);
        return -EMSGSIZE;
    }
    if (mh.msg_flags & MSG_CTRUNC) {
        close_fds(fds, nfds);
        return -EPROTO;
    }
    const struct tn_ipc_header *h = buf;
    if ((size_t)n < sizeof(*h) || h->magic != TN_IPC_MAGIC || h->version != TN_IPC_VERSION ||
        tn_ipc_size(h->type) != (size_t)n) {
        close_fds(fds, nfds);
        return -EPROTO;
    }
    return (int)n;
}
