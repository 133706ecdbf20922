/*
 * The poller thread: sends jobs to the queue (non-blocking, with a backlog),
 * reads ACK / RESULT / READ / DONE from the reply sockets, enforces job
 * deadlines (kill -9 of the worker named in the ACK), and reads the master's
 * word on the control socket.
 */
#include "front_int.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "status.h"

#define KILL_MARGIN_MS 1000 /* past the job deadline before the worker is killed */

/* ------------------------------------------------------------------------ */
/* Deferred unrefs                                                          */

/* Unrefs collected under front.mu, released after it is dropped. */
struct unref_list {
    struct gen_call *v[64];
    int n;
};

static void unref_later(struct unref_list *l, struct gen_call *c)
{
    if (l->n == (int)(sizeof(l->v) / sizeof(l->v[0]))) {
        /* Full: impossible to flush under the lock, so keep the ref; the
         * list is sized far above what one pass collects. */
        tn_log_error("unref list overflow: a call leaks");
        return;
    }
    l->v[l->n++] = c;
}

static void unref_flush(struct unref_list *l)
{
    for (int i = 0; i < l->n; i++)
        gen_unref(l->v[i]);
    l->n = 0;
}

/* ------------------------------------------------------------------------ */
/* The job queue                                                            */

/* The job is over for the poller: stop watching the reply socket. Caller holds
 * f->mu and c->mu; the poller's reference goes to l. */
static void job_release_locked(struct front *f, struct gen_call *c, bool acked,
                               struct unref_list *l)
{
    if (c->shared.reply_fd >= 0) {
        epoll_ctl(f->epfd, EPOLL_CTL_DEL, c->shared.reply_fd, NULL);
        close(c->shared.reply_fd);
        c->shared.reply_fd = -1;
    }
    if (!acked)
        f->n_waiting--;
    if (c->lists.pull_running) {
        c->lists.pull_running = false;
        f->n_pull_running--;
    }
    tn_metrics_front_queue_depth(f->n_waiting);
    dlink_remove(&c->lists.run_link);
    unref_later(l, c);
}

static void set_queue_blocked_locked(struct front *f, bool blocked)
{
    if (f->queue_blocked == blocked)
        return;
    struct epoll_event ev = {.events = blocked ? EPOLLOUT : 0, .data.ptr = &f->queue_fd};
    epoll_ctl(f->epfd, EPOLL_CTL_MOD, f->queue_fd, &ev);
    f->queue_blocked = blocked;
}

/* Pull jobs a worker may hold at once: all workers but one, so that a silent
 * pull client (bounded per range by --range-timeout) can never hold every
 * worker; uploads and local jobs always find the last one. With a single
 * worker there is no other: pull jobs may use it. Caller holds f->mu. */
static int pull_cap_locked(const struct front *f)
{
    int n = f->workers_left > 0 ? f->workers_left : f->cfg->workers;
    return n > 1 ? n - 1 : 1;
}

/* Send the pending jobs to the queue in order; a pull job over the cap stays
 * where it is and the jobs behind it go first. */
static void dispatch_pending(struct front *f)
{
    struct unref_list l = {.n = 0};
    pthread_mutex_lock(&f->mu);
    int pull_cap = pull_cap_locked(f);
    struct gen_call *prev = NULL;
    struct gen_call **pp = &f->pend_head;
    bool blocked = false;
    while (*pp && l.n < 60) {
        struct gen_call *c = *pp;
        pthread_mutex_lock(&c->mu);
        if (c->shared.dead || c->shared.status_set) {
            *pp = c->lists.pend_next;
            if (f->pend_tail == c)
                f->pend_tail = prev;
            close(c->shared.worker_fd);
            c->shared.worker_fd = -1;
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        if (c->job.pull && f->n_pull_running >= pull_cap) {
            pthread_mutex_unlock(&c->mu);
            prev = c;
            pp = &c->lists.pend_next;
            continue;
        }
        int fds[2] = {c->shared.spool_fd, c->shared.worker_fd};
        int rc = tn_ipc_send(f->queue_fd, &c->job, sizeof(c->job), fds, 2, MSG_DONTWAIT);
        if (rc == -EAGAIN) {
            pthread_mutex_unlock(&c->mu);
            set_queue_blocked_locked(f, true);
            blocked = true;
            break;
        }
        *pp = c->lists.pend_next;
        if (f->pend_tail == c)
            f->pend_tail = prev;
        /* The message in flight holds its own references to both fds. */
        close(c->shared.worker_fd);
        c->shared.worker_fd = -1;
        close(c->shared.spool_fd);
        c->shared.spool_fd = -1;
        if (rc < 0) {
            tn_log_error("sending job %" PRIu64 " to the queue failed: %s", c->job.h.job_id,
                         strerror(-rc));
            finish_locked(c, TN_UNAVAILABLE, "no decode worker could take the job (%s)",
                          strerror(-rc));
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        if (c->job.pull) {
            c->lists.pull_running = true;
            f->n_pull_running++;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, c->shared.reply_fd, &ev) < 0) {
            tn_log_error("epoll_ctl(ADD) failed for a reply socket: %s", strerror(errno));
            finish_locked(c, TN_INTERNAL, "the server lost track of the job");
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        dlink_push(&f->running, &c->lists.run_link);
        tn_log_debug("job %" PRIu64 " queued: \"%s\", %" PRIu64 " bytes", c->job.h.job_id,
                     c->job.file_name, c->job.file_size);
        pthread_mutex_unlock(&c->mu);
    }
    bool more = *pp != NULL && !blocked; /* stopped early to flush unrefs */
    if (!blocked)
        set_queue_blocked_locked(f, false);
    pthread_mutex_unlock(&f->mu);
    unref_flush(&l);
    if (more) {
        uint64_t one = 1;
        if (write(f->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            tn_log_error("write() to eventfd failed: %s", strerror(errno));
    }
}

/* ------------------------------------------------------------------------ */
/* Replies from the workers                                                 */

/* Map a RESULT's memfd for streaming. Takes ownership of fd. */
static struct result *result_new(const struct tn_ipc_result *m, int fd)
{
    struct result *r = calloc(1, sizeof(*r));
    if (!r) {
        close(fd);
        return NULL;
    }
    r->meta = *m;
    r->meta.reason[sizeof(r->meta.reason) - 1] = '\0';
    r->fd = fd;
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < m->size || m->size == 0) {
        free_result(r);
        return NULL;
    }
    r->map = mmap(NULL, m->size, PROT_READ, MAP_SHARED, fd, 0);
    if (r->map == MAP_FAILED) {
        r->map = NULL;
        free_result(r);
        return NULL;
    }
    __atomic_add_fetch(&held_result_bytes, m->size, __ATOMIC_RELAXED); /* free_result() */
    return r;
}

static void handle_reply(struct front *f, struct gen_call *c)
{
    struct unref_list l = {.n = 0};
    struct tn_cache_store *commit = NULL; /* a finished job's results, stored unlocked */
    pthread_mutex_lock(&f->mu);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->shared.reply_fd < 0)
            break;
        union tn_ipc_any m;
        int fds[TN_IPC_MAX_FDS], nfds = 0;
        int n = tn_ipc_recv(c->shared.reply_fd, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            break;
        bool acked = c->poll.worker_pid > 0;
        if (n <= 0) {
            if (c->shared.dead) {
                /* Abandoned by us: nothing to report. */
            } else if (n == 0 && acked) {
                tn_log_warn("worker pid %d ended without finishing job %" PRIu64 " (\"%s\")",
                            (int)c->poll.worker_pid, c->job.h.job_id, c->job.file_name);
                if (c->poll.killed)
                    finish_locked(c, TN_DEADLINE_EXCEEDED,
                                  "processing the file took longer than its deadline; the "
                                  "decode worker was stopped");
                else
                    finish_locked(c, TN_UNAVAILABLE,
                                  "the decode worker (pid %d) died while processing this file "
                                  "and has been restarted; retrying is safe",
                                  (int)c->poll.worker_pid);
            } else if (n == 0) {
                finish_locked(c, TN_UNAVAILABLE,
                              "the decode worker died before it could take the job; retrying "
                              "is safe");
            } else {
                tn_log_error("bad reply for job %" PRIu64 ": %s", c->job.h.job_id, strerror(-n));
                finish_locked(c, TN_INTERNAL, "the decode worker sent a malformed reply");
            }
            cache_store_drop(c);
            job_release_locked(f, c, acked, &l);
            break;
        }
        if (m.h.job_id != c->job.h.job_id) {
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            tn_log_error("reply for job %" PRIu64 " on the socket of job %" PRIu64, m.h.job_id,
                         c->job.h.job_id);
            continue;
        }
        switch (m.h.type) {
        case TN_IPC_ACK:
            if (!acked && m.ack.pid > 0) {
                c->poll.worker_pid = m.ack.pid;
                f->n_waiting--;
                tn_metrics_front_queue_depth(f->n_waiting);
            }
            break;
        case TN_IPC_RESULT: {
            struct result *r = nfds == 1 ? result_new(&m.result, fds[0]) : NULL;
            if (nfds != 1)
                for (int i = 0; i < nfds; i++)
                    close(fds[i]);
            nfds = 0;
            if (!r) {
                finish_locked(c, TN_INTERNAL, "a thumbnail from the decode worker was unreadable");
                abandon_job_locked(c);
                cache_store_drop(c);
                break;
            }
            if (c->shared.dead || c->shared.status_set) {
                free_result(r);
                cache_store_drop(c);
                break;
            }
            cache_store_result(c, r); /* written now: r may be streamed and freed before DONE */
            if (c->shared.res_tail)
                c->shared.res_tail->next = r;
            else
                c->shared.res_head = r;
            c->shared.res_tail = r;
            kick_send_locked(c);
            break;
        }
        case TN_IPC_READ: {
            const struct tn_config *cfg = f->cfg;
            uint64_t off = m.read.offset, len = m.read.length, size = c->job.file_size;
            if (!c->job.pull || c->shared.range_out || len == 0 || len > TN_IPC_READ_MAX ||
                off > size || len > size - off) {
                tn_log_error("job %" PRIu64 ": bad read request %" PRIu64 "+%" PRIu64
                             " (pull %d, size %" PRIu64 ", %s outstanding)",
                             c->job.h.job_id, off, len, c->job.pull, size,
                             c->shared.range_out ? "one" : "none");
                finish_locked(c, TN_INTERNAL, "the decode worker sent a malformed read request");
                abandon_job_locked(c);
            } else if (c->shared.dead || c->shared.status_set) {
                abandon_job_locked(c); /* ending: nobody will answer */
            } else if (c->shared.recv_closed) {
                finish_locked(c, TN_INVALID_ARGUMENT,
                              "the client closed its request stream, but the server needs more "
                              "of the file (%" PRIu64 " bytes at offset %" PRIu64
                              "); pull mode: keep it open until the status",
                              len, off);
                abandon_job_locked(c);
            } else if (c->poll.pulled + len > cfg->max_upload_bytes) {
                finish_locked(c, TN_RESOURCE_EXHAUSTED,
                              "pull mode: the file needs more than this server's "
                              "--max-upload-bytes of %" PRIu64 " bytes read",
                              cfg->max_upload_bytes);
                abandon_job_locked(c);
            } else {
                c->poll.pulled += len;
                c->shared.range_out = true;
                c->shared.range_to_send = true;
                c->shared.range_off = off;
                c->shared.range_len = len;
                c->shared.range_got = 0;
                c->shared.range_since_ms = tn_mono_ms();
                kick_send_locked(c);
            }
            break;
        }
        case TN_IPC_DONE:
            m.done.message[sizeof(m.done.message) - 1] = 0;
            /* Stored only when every result of a job that succeeded was taken. */
            if (m.done.code == TN_OK && !c->shared.dead && !c->shared.status_set &&
                !c->poll.store_dropped) {
                commit = c->poll.store;
                c->poll.store = NULL;
            } else {
                cache_store_drop(c);
            }
            if (m.done.code == TN_DEADLINE_EXCEEDED && c->shared.range_out)
                finish_locked(c, TN_DEADLINE_EXCEEDED,
                              "deadline exceeded while the server waited for the client to send "
                              "%" PRIu64 " bytes at offset %" PRIu64 " (pull mode)",
                              c->shared.range_len - c->shared.range_got,
                              c->shared.range_off + c->shared.range_got);
            else if (m.done.code != TN_OK)
                finish_locked(c, m.done.code, "%s", m.done.message);
            else if (!commit)
                finish_locked(c, TN_OK, "OK");
            /* else OK once the entry is in place, below */
            job_release_locked(f, c, acked, &l);
            break;
        default: break;
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&f->mu);
    if (commit) {
        /* Disk writes and eviction with no lock held; the status after them, so
         * that a client that saw OK finds the entry (the call is alive: our
         * reference is still in l). */
        cache_store_commit(f, &commit);
        pthread_mutex_lock(&c->mu);
        finish_locked(c, TN_OK, "OK");
        pthread_mutex_unlock(&c->mu);
    }
    unref_flush(&l);
}

/* ------------------------------------------------------------------------ */
/* Deadlines, the master's word, the poller loop                            */

static void check_deadlines(struct front *f)
{
    int64_t now = tn_mono_ms();
    pthread_mutex_lock(&f->mu);
    for (struct dlink *l = f->running.next; l != &f->running; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, lists.run_link);
        pthread_mutex_lock(&c->mu);
        if (c->shared.job_deadline_ms && now > c->shared.job_deadline_ms + KILL_MARGIN_MS &&
            !c->poll.killed) {
            c->poll.killed = true;
            if (c->poll.worker_pid > 0) {
                tn_log_warn("job %" PRIu64 " (\"%s\") overran its deadline: killing worker pid %d",
                            c->job.h.job_id, c->job.file_name, (int)c->poll.worker_pid);
                tn_metrics_worker_mark_timeout(c->poll.worker_pid); /* its restart: "timeout" */
                kill(c->poll.worker_pid, SIGKILL);
            } else {
                finish_locked(c, TN_DEADLINE_EXCEEDED,
                              "no decode worker became free before the deadline; all are busy");
                abandon_job_locked(c);
            }
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&f->mu);
}

/* The master's word on the control socket (front.h). When the worker pool is
 * gone for good, jobs that no worker took yet would only wait for their
 * deadline: end them now. */
static void read_ctl(struct front *f)
{
    for (;;) {
        union tn_ipc_any m;
        int fds[TN_IPC_MAX_FDS], nfds = 0;
        int n = tn_ipc_recv(f->ctl_fd, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            return;
        if (n == 0 || (n < 0 && n != -EPROTO && n != -EMSGSIZE)) {
            /* the master is gone: PDEATHSIG stops us */
            epoll_ctl(f->epfd, EPOLL_CTL_DEL, f->ctl_fd, NULL);
            return;
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (n < 0 || m.h.type != TN_IPC_CTL_WORKERS) {
            tn_log_warn("unexpected message on the control socket (%s, type %u)",
                        n < 0 ? strerror(-n) : "ok", n < 0 ? 0 : m.h.type);
            continue;
        }
        const struct tn_ipc_ctl msg = m.ctl;
        pthread_mutex_lock(&f->mu);
        bool lost = msg.value == 0 && f->workers_left != 0;
        f->workers_left = msg.value;
        if (lost) {
            f->health_changed = true;
            for (struct gen_call *c = f->pend_head; c; c = c->lists.pend_next) {
                pthread_mutex_lock(&c->mu);
                finish_locked(c, TN_UNAVAILABLE, NO_WORKERS_MSG);
                pthread_mutex_unlock(&c->mu);
            }
            for (struct dlink *l = f->running.next; l != &f->running; l = l->next) {
                struct gen_call *c = DLINK_ENTRY(l, struct gen_call, lists.run_link);
                pthread_mutex_lock(&c->mu);
                if (c->poll.worker_pid <= 0) {
                    finish_locked(c, TN_UNAVAILABLE, NO_WORKERS_MSG);
                    abandon_job_locked(c);
                }
                pthread_mutex_unlock(&c->mu);
            }
        }
        pthread_mutex_unlock(&f->mu);
        if (lost)
            tn_log_error("the master reports no decode worker left: NOT_SERVING");
        else
            tn_log_debug("the master reports %d worker slot(s)", (int)msg.value);
    }
}

void *poller_main(void *arg)
{
    struct front *f = arg;
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(f->epfd, evs, 64, POLL_TICK_MS);
        if (n < 0 && errno != EINTR) {
            tn_log_error("epoll_wait() failed: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &f->evfd) {
                uint64_t v;
                if (read(f->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                    tn_log_error("read() from eventfd failed: %s", strerror(errno));
            } else if (p == &f->queue_fd) {
                /* Writable again: dispatch_pending below. */
            } else if (p == &f->ctl_fd) {
                read_ctl(f);
            } else {
                handle_reply(f, p);
            }
        }
        dispatch_pending(f);
        check_deadlines(f);
        pthread_mutex_lock(&f->mu);
        bool stop = f->stop_poller;
        pthread_mutex_unlock(&f->mu);
        if (stop)
            break;
    }
    return NULL;
}
