/*
 * Pull mode in a worker: range requests to the front, the spool file as the
 * cache. See pull.h.
 */
#include "pull.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"
#include "log.h"
#include "status.h"

/* [start, end) of the file present in the spool file. */
struct span {
    uint64_t start, end;
};

struct tn_pull {
    int fd;   /* the spool file: not ours */
    int sock; /* the reply socket: not ours */
    uint64_t size;
    uint64_t job_id;
    int64_t deadline_ms;
    struct span *have; /* sorted, disjoint, never adjacent; owned */
    size_t n_have, cap_have;
    uint64_t last_end; /* end of the last fetch: a fetch from here is sequential */
    uint32_t block;    /* the current read-ahead */
    uint64_t fetched, requests;
};

int tn_pull_new(struct tn_pull **out, int fd, int sock, uint64_t size, uint64_t job_id,
                int64_t deadline_ms)
{
    struct tn_pull *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->fd = fd;
    p->sock = sock;
    p->size = size;
    p->job_id = job_id;
    p->deadline_ms = deadline_ms;
    p->block = TN_PULL_BLOCK_MIN;
    p->last_end = UINT64_MAX;
    *out = p;
    return 0;
}

void tn_pull_free(struct tn_pull **p)
{
    if (!*p)
        return;
    free((*p)->have);
    free(*p);
    *p = NULL;
}

void tn_pull_stats(const struct tn_pull *p, uint64_t *bytes, uint64_t *requests)
{
    *bytes = p->fetched;
    *requests = p->requests;
}

/* Index of the first span whose end is > pos (n_have if none). */
static size_t first_after(const struct tn_pull *p, uint64_t pos)
{
    size_t lo = 0, hi = p->n_have;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->have[mid].end <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Record [a, b) as present, merging with the spans it touches. */
static int add_span(struct tn_pull *p, uint64_t a, uint64_t b)
{
    /* spans i..j-1 overlap or touch [a, b) */
    size_t i = first_after(p, a == 0 ? 0 : a - 1);
    if (i < p->n_have && p->have[i].end < a)
        i++;
    size_t j = i;
    while (j < p->n_have && p->have[j].start <= b)
        j++;
    if (i < j) {
        if (p->have[i].start < a)
            a = p->have[i].start;
        if (p->have[j - 1].end > b)
            b = p->have[j - 1].end;
        p->have[i] = (struct span){a, b};
        memmove(&p->have[i + 1], &p->have[j], (p->n_have - j) * sizeof(*p->have));
        p->n_have -= j - i - 1;
        return 0;
    }
    if (p->n_have == p->cap_have) {
        size_t cap = p->cap_have ? p->cap_have * 2 : 16;
        struct span *n = realloc(p->have, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        p->have = n;
        p->cap_have = cap;
    }
    memmove(&p->have[i + 1], &p->have[i], (p->n_have - i) * sizeof(*p->have));
    p->have[i] = (struct span){a, b};
    p->n_have++;
    return 0;
}

/* Wait for the READ_REPLY to our READ {off, len}: 0 or a negative tn_code. */
static int wait_reply(struct tn_pull *p, uint64_t off, uint64_t len)
{
    for (;;) {
        int timeout = -1;
        if (p->deadline_ms > 0) {
            int64_t left = p->deadline_ms - tn_mono_ms();
            if (left <= 0)
                return -TN_DEADLINE_EXCEEDED;
            timeout = left > 1000 ? 1000 : (int)left;
        }
        struct pollfd pfd = {.fd = p->sock, .events = POLLIN};
        int n = poll(&pfd, 1, timeout);
        if (n < 0 && errno != EINTR) {
            tn_log_error("poll() failed while waiting for bytes of job %" PRIu64 ": %s", p->job_id,
                         strerror(errno));
            return -TN_INTERNAL;
        }
        if (n <= 0)
            continue;
        union tn_ipc_any m;
        int fds[TN_IPC_MAX_FDS], nfds = 0;
        n = tn_ipc_recv(p->sock, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            continue;
        if (n == 0 || n == -ECONNRESET)
            return -TN_CANCELLED; /* the front gave up on the job */
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (n < 0 || nfds) {
            tn_log_error("bad message while waiting for bytes of job %" PRIu64 ": %s", p->job_id,
                         n < 0 ? strerror(-n) : "unexpected fds");
            return -TN_INTERNAL;
        }
        if (m.h.type != TN_IPC_READ_REPLY || m.h.job_id != p->job_id || m.read.offset != off ||
            m.read.length != len) {
            tn_log_error("job %" PRIu64 ": asked for %" PRIu64 "+%" PRIu64
                         ", the front answered type %u job %" PRIu64 " %" PRIu64 "+%" PRIu64,
                         p->job_id, off, len, m.h.type, m.h.job_id, m.read.offset, m.read.length);
            return -TN_INTERNAL;
        }
        return 0;
    }
}

/* Fetch the missing bytes from pos on (pos is not present). 0 or a negative tn_code. */
static int fetch(struct tn_pull *p, uint64_t pos)
{
    if (pos == p->last_end) {
        if (p->block < TN_PULL_BLOCK_MAX)
            p->block *= 2;
    } else {
        p->block = TN_PULL_BLOCK_MIN;
    }
    uint64_t end = p->size - pos > p->block ? pos + p->block : p->size;
    size_t i = first_after(p, pos);
    if (i < p->n_have && p->have[i].start < end)
        end = p->have[i].start; /* never fetch a byte twice */

    struct tn_ipc_read rd;
    memset(&rd, 0, sizeof(rd));
    tn_ipc_header_init(&rd.h, TN_IPC_READ, p->job_id);
    rd.offset = pos;
    rd.length = end - pos;
    int err = tn_ipc_send(p->sock, &rd, sizeof(rd), NULL, 0, 0);
    if (err == -EPIPE)
        return -TN_CANCELLED;
    if (err < 0) {
        tn_log_error("sendmsg() failed while asking for bytes of job %" PRIu64 ": %s", p->job_id,
                     strerror(-err));
        return -TN_INTERNAL;
    }
    p->requests++;
    if ((err = wait_reply(p, rd.offset, rd.length)) < 0)
        return err;
    if (add_span(p, pos, end) < 0)
        return -TN_UNAVAILABLE;
    p->fetched += end - pos;
    p->last_end = end;
    return 0;
}

int tn_pull_read(void *opaque, uint8_t *buf, int len, int64_t pos_in)
{
    struct tn_pull *p = opaque;
    if (pos_in < 0 || len <= 0)
        return -TN_INTERNAL;
    uint64_t pos = (uint64_t)pos_in;
    if (pos >= p->size)
        return 0;
    size_t i = first_after(p, pos);
    if (i == p->n_have || p->have[i].start > pos) {
        int err = fetch(p, pos);
        if (err < 0)
            return err;
        i = first_after(p, pos);
    }
    /* Only bytes a READ_REPLY vouched for: the rest of the spool file is a hole. */
    uint64_t avail = p->have[i].end - pos;
    size_t want = (uint64_t)len < avail ? (size_t)len : (size_t)avail;
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(p->fd, buf + got, want - got, (off_t)(pos + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            tn_log_error("job %" PRIu64 ": pread() of fetched bytes at %" PRIu64 " failed: %s",
                         p->job_id, pos + got, n < 0 ? strerror(errno) : "end of file");
            return -TN_INTERNAL;
        }
        got += (size_t)n;
    }
    return (int)got;
}
