/*
 * The gRPC front.
 *
 * DESIGN. Two threads of ours plus gRPC's own:
 *
 *  - the completion-queue thread (the process's main thread) owns everything
 *    gRPC reports: new calls, received messages, finished sends. It spools
 *    uploads to an O_TMPFILE file and, when an upload is complete, puts the
 *    call on the dispatch list and wakes the poller.
 *  - the poller thread owns the job queue and the reply sockets: it sends jobs
 *    (non-blocking, with a backlog: a full queue never blocks gRPC), reads ACK /
 *    RESULT / DONE from workers, enforces job deadlines (kill -9 of the worker
 *    named in the ACK), and starts the send batches that stream results out.
 *
 * Both threads start send batches on a call (legal in gRPC core: send and
 * receive sides are serialized separately); the call's mutex serializes them
 * and `sending` guarantees one SEND outstanding at a time. A call is
 * reference-counted: one reference per outstanding batch, one while it sits on
 * the dispatch list or has a reply socket in epoll. The last unref destroys it.
 *
 * Uploads waiting for a message sit on f->recving (CQ thread only); the main
 * loop scans it every POLL_TICK_MS and ends the ones silent for longer than
 * --idle-timeout with DEADLINE_EXCEEDED.
 *
 * Health/Watch and server reflection (v1, v1alpha) are streaming calls that
 * live on the CQ thread alone (struct stream_call): they sit on f->streams so
 * that the CQ thread can push NOT_SERVING to watchers when draining starts and
 * end every stream when the server shuts down.
 *
 * Lock order: front.mu before call.mu. A call is never destroyed while a lock
 * is held (unrefs that may be last are deferred until the lock is dropped).
 */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "ipc.h"
#include "log.h"
#include "pbbuf.h"
#include "reflection.h"
#include "status.h"
#include "thumbnail.pb-c.h"

/* Our codes are gRPC's by number: the one place that relies on it. */
_Static_assert(GRPC_STATUS_INVALID_ARGUMENT == (int)TN_INVALID_ARGUMENT, "status numbering");
_Static_assert(GRPC_STATUS_UNAVAILABLE == (int)TN_UNAVAILABLE, "status numbering");
_Static_assert(GRPC_STATUS_RESOURCE_EXHAUSTED == (int)TN_RESOURCE_EXHAUSTED, "status numbering");
_Static_assert(GRPC_STATUS_DEADLINE_EXCEEDED == (int)TN_DEADLINE_EXCEEDED, "status numbering");
_Static_assert(GRPC_STATUS_UNAUTHENTICATED == (int)TN_UNAUTHENTICATED, "status numbering");
_Static_assert((int)THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_PNG == (int)TN_FORMAT_PNG, "format");
_Static_assert((int)THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_KEYFRAME == (int)TN_MODE_KEYFRAME, "mode");

#define KILL_MARGIN_MS 1000 /* past the job deadline before the worker is killed */
#define POLL_TICK_MS 100
#define STATUS_MAX 600
#define DEFAULT_MAX_WIDTH 320
#define MAX_BOX 16384
#define SPOOL_MARGIN (64ull << 20) /* free space kept in the spool beyond declared uploads */

enum tag_kind {
    TAG_NEW_GENERATE,
    TAG_NEW_HEALTH,
    TAG_NEW_GENERIC,
    TAG_GEN_RECV,
    TAG_GEN_SEND,
    TAG_GEN_CLOSE,
    TAG_SIMPLE_DONE,
    TAG_NEW_WATCH,      /* grpc.health.v1.Health/Watch */
    TAG_NEW_REFL,       /* grpc.reflection.v1.ServerReflection/ServerReflectionInfo */
    TAG_NEW_REFL_ALPHA, /* the same in grpc.reflection.v1alpha */
    TAG_STREAM_RECV,
    TAG_STREAM_SEND,
    TAG_STREAM_CLOSE,
    TAG_SHUTDOWN,
};

struct tag {
    enum tag_kind kind;
    void *owner;
};

/* An intrusive doubly-linked list with a sentinel head (a head is a dlink
 * whose prev/next point to itself when empty; a node is unlinked when its
 * next is NULL). */
struct dlink {
    struct dlink *prev, *next;
};

#define DLINK_ENTRY(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

static void dlink_init(struct dlink *head)
{
    head->prev = head->next = head;
}

static void dlink_push(struct dlink *head, struct dlink *n)
{
    if (n->next)
        return; /* already linked */
    n->prev = head;
    n->next = head->next;
    head->next->prev = n;
    head->next = n;
}

static void dlink_remove(struct dlink *n)
{
    if (!n->next)
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

struct front;
struct stream_call;

/* One thumbnail received from a worker, waiting to be streamed. Owns fd and map. */
struct result {
    struct result *next;
    struct tn_ipc_result meta;
    int fd;
    unsigned char *map;
};

/* One Generate call. Owner: its references (see DESIGN). */
struct gen_call {
    struct front *f;
    struct tag t_new, t_recv, t_send, t_close;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *recv_buf; /* CQ thread only */
    grpc_byte_buffer *send_buf; /* the message of the outstanding send batch */
    grpc_slice status_slice;
    int cancelled; /* written by RECV_CLOSE_ON_SERVER */

    /* Upload: CQ thread only. */
    int spool_fd; /* owned until dispatched */
    uint64_t declared, received;
    bool have_options;
    struct tn_ipc_job job;
    struct timespec started;
    char peer[128];
    int64_t last_msg_ms;    /* when the last message arrived (--idle-timeout) */
    bool idle_ended;        /* ended by --idle-timeout */
    struct dlink recv_link; /* on f->recving while a RECV_MESSAGE is outstanding */

    /* Everything below is protected by mu. */
    pthread_mutex_t mu;
    int refs;
    bool dead;        /* cancelled by the client or a send failed: stop everything */
    bool dispatched;  /* the job left the dispatch list */
    int reply_fd;     /* front's end of the reply socketpair; owned; poller closes it */
    int worker_fd;    /* worker's end, until the job is sent */
    pid_t worker_pid; /* from the ACK */
    bool killed;
    int64_t job_deadline_ms;
    struct result *res_head, *res_tail;
    struct result *cur; /* being streamed */
    bool cur_header_sent;
    uint64_t cur_off;
    bool sending;
    bool md_sent;
    bool status_set, status_sent;
    int status_code;
    char status_msg[STATUS_MAX];
    uint64_t bytes_out;
    unsigned thumbs_out;

    /* Lists owned by front.mu. */
    struct gen_call *pend_next; /* dispatch list */
    struct dlink run_link;      /* on f->running while its reply socket is in epoll */
};

/* A unary Health/Check call or an unknown method: one batch answers it. */
struct simple_call {
    struct front *f;
    struct tag t_new, t_done;
    enum tag_kind kind;
    grpc_call *call;
    grpc_call_details details; /* generic calls */
    gpr_timespec deadline;     /* registered calls */
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_byte_buffer *resp;
    grpc_slice status_slice;
    int cancelled;
};

struct front {
    const struct tn_config *cfg;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *m_generate, *m_health, *m_watch, *m_refl, *m_refl_alpha;
    struct tn_reflection *refl; /* owned; read-only once serving */
    int queue_fd;               /* owned */
    int epfd;                   /* owned */
    int evfd;                   /* owned: wakes the poller */
    pthread_t poller;
    bool poller_started;
    struct tag t_shutdown;

    pthread_mutex_t mu;
    struct gen_call *pend_head, *pend_tail;
    struct dlink running; /* jobs with a reply socket in epoll (poller; under mu) */
    bool queue_blocked;
    bool stop_poller;
    int n_gen_calls; /* Generate calls alive */
    int n_live;      /* all call objects with an accepted call, alive */
    int n_waiting;   /* jobs not yet picked up by a worker (pending + unacked) */
    bool draining;
    bool stopping;               /* server shutdown started: streams are being ended */
    struct stream_call *streams; /* Watch and reflection calls alive (CQ thread) */
    struct dlink recving;        /* uploads with a RECV_MESSAGE outstanding (CQ thread) */
    int n_streams;
    uint64_t next_job_id;
};

static volatile sig_atomic_t sig_stop, sig_quit, sig_usr1;

static void on_signal(int sig)
{
    if (sig == SIGQUIT)
        sig_quit = 1;
    else if (sig == SIGUSR1)
        sig_usr1 = 1;
    else
        sig_stop = 1;
}

static double elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - since->tv_sec) * 1e3 +
           (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

/* A grpc_call_error other than OK is a bug in our code: abort loudly. */
static void must_succeed(grpc_call_error e, const char *what)
{
    if (e != GRPC_CALL_OK) {
        tn_log_error("%s() failed with %d: a bug in the front", what, (int)e);
        abort();
    }
}

/* A call object, zeroed. Out of memory while accepting calls, the front cannot
 * keep its promises (an outstanding request per method): abort, the master
 * respawns it. */
static void *call_alloc(size_t size)
{
    void *p = calloc(1, size);
    if (!p) {
        tn_log_error("out of memory for a new call");
        abort();
    }
    return p;
}

static void start_batch(grpc_call *call, const grpc_op *ops, size_t n, void *tag)
{
    must_succeed(grpc_call_start_batch(call, ops, n, tag, NULL), "grpc_call_start_batch");
}

/* Milliseconds on CLOCK_MONOTONIC at which a gRPC deadline expires; 0 = none. */
static int64_t deadline_to_mono_ms(gpr_timespec dl)
{
    gpr_timespec rt = gpr_convert_clock_type(dl, GPR_CLOCK_REALTIME);
    if (rt.tv_sec == INT64_MAX)
        return 0;
    gpr_timespec now = gpr_now(GPR_CLOCK_REALTIME);
    int64_t rem = (rt.tv_sec - now.tv_sec) * 1000 + (rt.tv_nsec - now.tv_nsec) / 1000000;
    return tn_mono_ms() + rem;
}

/* ------------------------------------------------------------------------ */
/* Generate: lifetime                                                       */

static void free_result(struct result *r)
{
    if (!r)
        return;
    if (r->map && r->map != MAP_FAILED && r->meta.size)
        munmap(r->map, r->meta.size);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

static void drop_results(struct gen_call *c)
{
    free_result(c->cur);
    c->cur = NULL;
    while (c->res_head) {
        struct result *r = c->res_head;
        c->res_head = r->next;
        free_result(r);
    }
    c->res_tail = NULL;
}

static struct gen_call *gen_new(struct front *f)
{
    struct gen_call *c = call_alloc(sizeof(*c));
    c->f = f;
    c->t_new = (struct tag){TAG_NEW_GENERATE, c};
    c->t_recv = (struct tag){TAG_GEN_RECV, c};
    c->t_send = (struct tag){TAG_GEN_SEND, c};
    c->t_close = (struct tag){TAG_GEN_CLOSE, c};
    c->spool_fd = c->reply_fd = c->worker_fd = -1;
    c->status_slice = grpc_empty_slice();
    grpc_metadata_array_init(&c->md);
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void gen_destroy(struct gen_call *c)
{
    struct front *f = c->f;
    bool accepted = c->call != NULL;
    if (accepted) {
        tn_log_info("Generate peer=%s file=\"%s\" in=%" PRIu64 " out=%" PRIu64
                    " thumbnails=%u ms=%.1f status=%s%s%s",
                    c->peer, c->job.file_name, c->received, c->bytes_out, c->thumbs_out,
                    elapsed_ms(&c->started),
                    c->status_sent ? tn_code_name(c->status_code) : "CANCELLED",
                    c->status_sent && c->status_code ? " message=" : "",
                    c->status_sent && c->status_code ? c->status_msg : "");
        grpc_call_unref(c->call);
    }
    grpc_metadata_array_destroy(&c->md);
    grpc_slice_unref(c->status_slice);
    if (c->recv_buf)
        grpc_byte_buffer_destroy(c->recv_buf);
    if (c->send_buf)
        grpc_byte_buffer_destroy(c->send_buf);
    if (c->spool_fd >= 0)
        close(c->spool_fd);
    if (c->reply_fd >= 0)
        close(c->reply_fd);
    if (c->worker_fd >= 0)
        close(c->worker_fd);
    drop_results(c);
    pthread_mutex_destroy(&c->mu);
    free(c);
    if (accepted) {
        pthread_mutex_lock(&f->mu);
        f->n_gen_calls--;
        f->n_live--;
        pthread_mutex_unlock(&f->mu);
    }
}

static void gen_ref_locked(struct gen_call *c)
{
    c->refs++;
}

static void gen_unref(struct gen_call *c)
{
    pthread_mutex_lock(&c->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&c->mu);
    if (left == 0)
        gen_destroy(c);
}

/* ------------------------------------------------------------------------ */
/* Generate: sending (either thread, c->mu held)                            */

static void put_varint(unsigned char **p, uint64_t v)
{
    while (v >= 0x80) {
        *(*p)++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *(*p)++ = (unsigned char)v;
}

/* GenerateResponse{data: bytes} encoded by hand: one copy out of the memfd. */
static grpc_byte_buffer *data_message(const unsigned char *p, size_t len)
{
    grpc_slice s = grpc_slice_malloc(len + 11);
    unsigned char *w = GRPC_SLICE_START_PTR(s);
    *w++ = 0x12; /* field 2, length-delimited */
    put_varint(&w, len);
    memcpy(w, p, len);
    w += len;
    grpc_slice used = grpc_slice_sub(s, 0, (size_t)(w - GRPC_SLICE_START_PTR(s)));
    grpc_slice_unref(s);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&used, 1);
    grpc_slice_unref(used);
    return bb;
}

static grpc_byte_buffer *header_message(const struct tn_ipc_result *m)
{
    Thumbnail__V1__Thumbnail th = THUMBNAIL__V1__THUMBNAIL__INIT;
    Thumbnail__V1__GenerateResponse resp = THUMBNAIL__V1__GENERATE_RESPONSE__INIT;
    th.index = m->index;
    th.requested_time = m->requested_time;
    th.actual_time = m->actual_time;
    th.width = m->width;
    th.height = m->height;
    th.format = (Thumbnail__V1__ImageFormat)m->format;
    th.size = m->size;
    resp.msg_case = THUMBNAIL__V1__GENERATE_RESPONSE__MSG_THUMBNAIL;
    resp.thumbnail = &th;
    return tn_pb_pack(&resp.base);
}

/* Start the next send batch if none is outstanding: results first, then the status. */
static void kick_send_locked(struct gen_call *c)
{
    if (c->sending || c->status_sent || !c->call)
        return;
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (!c->dead && !c->cur && c->res_head) {
        c->cur = c->res_head;
        c->res_head = c->cur->next;
        if (!c->res_head)
            c->res_tail = NULL;
        c->cur_header_sent = false;
        c->cur_off = 0;
    }
    if (!c->dead && c->cur) {
        if (!c->cur_header_sent) {
            c->send_buf = header_message(&c->cur->meta);
        } else {
            uint64_t left = c->cur->meta.size - c->cur_off;
            size_t len = (size_t)(left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size);
            c->send_buf = data_message(c->cur->map + c->cur_off, len);
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_buf;
        n++;
    } else if (c->status_set) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = (grpc_status_code)c->status_code;
        c->status_slice = grpc_slice_from_copied_string(c->status_msg);
        ops[n].data.send_status_from_server.status_details =
            c->status_code != TN_OK ? &c->status_slice : NULL;
        n++;
        c->status_sent = true;
    } else {
        return; /* nothing to send yet */
    }
    c->md_sent = true;
    c->sending = true;
    gen_ref_locked(c);
    start_batch(c->call, ops, n, &c->t_send);
}

/* Set the call's final status (first one wins) and send it when the results are out. */
static void finish_locked(struct gen_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish_locked(struct gen_call *c, int code, const char *fmt, ...)
{
    if (c->status_set)
        return;
    c->status_set = true;
    c->status_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->status_msg, sizeof(c->status_msg), fmt, ap);
    va_end(ap);
    if (code != TN_OK)
        drop_results(c); /* an error status ends the stream: nothing more after it */
    kick_send_locked(c);
}

/* Stop the worker side of a call: shutting the reply socket tells the worker
 * to abandon the job, and makes the poller see EOF and release it. */
static void abandon_job_locked(struct gen_call *c)
{
    if (c->reply_fd >= 0)
        shutdown(c->reply_fd, SHUT_RDWR);
}

static void on_send_done(struct gen_call *c, bool ok)
{
    pthread_mutex_lock(&c->mu);
    c->sending = false;
    if (c->send_buf) {
        grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
    }
    if (!ok) {
        c->dead = true;
        drop_results(c);
        abandon_job_locked(c);
    } else if (c->cur) {
        if (!c->cur_header_sent) {
            c->cur_header_sent = true;
        } else {
            uint64_t left = c->cur->meta.size - c->cur_off;
            uint64_t len = left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size;
            c->cur_off += len;
            c->bytes_out += len;
        }
        if (c->cur_header_sent && c->cur_off >= c->cur->meta.size) {
            c->thumbs_out++;
            free_result(c->cur);
            c->cur = NULL;
        }
    }
    if (!c->dead)
        kick_send_locked(c);
    pthread_mutex_unlock(&c->mu);
    gen_unref(c);
}

/* ------------------------------------------------------------------------ */
/* Generate: receiving the upload (CQ thread)                               */

static void gen_fail(struct gen_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void gen_fail(struct gen_call *c, int code, const char *fmt, ...)
{
    char msg[STATUS_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->spool_fd >= 0) {
        close(c->spool_fd);
        c->spool_fd = -1;
    }
    pthread_mutex_lock(&c->mu);
    finish_locked(c, code, "%s", msg);
    pthread_mutex_unlock(&c->mu);
}

/* f->recving: the uploads waiting for a message, scanned for --idle-timeout.
 * CQ thread only; a call on it cannot be destroyed: its RECV holds a reference. */
static void request_message(struct gen_call *c)
{
    dlink_push(&c->f->recving, &c->recv_link);
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_buf;
    pthread_mutex_lock(&c->mu);
    gen_ref_locked(c);
    pthread_mutex_unlock(&c->mu);
    start_batch(c->call, &op, 1, &c->t_recv);
}

static int open_spool(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd >= 0 ? fd : -errno;
    /* A file system without O_TMPFILE: create and unlink at once. */
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/.thumbnail-spool-XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unlink(path);
    return fd;
}

/* Refuse an upload whose declared size does not fit in the spool's free space
 * (minus SPOOL_MARGIN, or 1 % of the file system if that is more) now, rather
 * than with ENOSPC after the client sent most of it. Returns 0 or fails the
 * call and returns -1. A statvfs() error skips the check: writes still map
 * ENOSPC to RESOURCE_EXHAUSTED. */
static int check_spool_space(struct gen_call *c)
{
    const char *dir = c->f->cfg->spool_dir;
    struct statvfs sv;
    if (statvfs(dir, &sv) < 0) {
        tn_log_warn("statvfs(%s) failed: %s", dir, strerror(errno));
        return 0;
    }
    uint64_t bsize = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
    uint64_t avail = (uint64_t)sv.f_bavail * bsize;
    uint64_t margin = (uint64_t)sv.f_blocks * bsize / 100;
    if (margin < SPOOL_MARGIN)
        margin = SPOOL_MARGIN;
    uint64_t usable = avail > margin ? avail - margin : 0;
    if (c->declared <= usable)
        return 0;
    gen_fail(c, TN_RESOURCE_EXHAUSTED,
             "the server's spool (--spool-dir) has %" PRIu64 " MiB free, the upload needs %" PRIu64
             " MiB; retry later",
             usable >> 20, (c->declared + (1u << 20) - 1) >> 20);
    return -1;
}

/* Validate Options into c->job. Returns 0 or fails the call and returns -1. */
static int take_options(struct gen_call *c, const Thumbnail__V1__Options *o)
{
    const struct tn_config *cfg = c->f->cfg;
    struct tn_ipc_job *j = &c->job;

    snprintf(j->file_name, sizeof(j->file_name), "%s", o->file_name ? o->file_name : "");
    for (char *p = j->file_name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"')
            *p = '?'; /* keep log lines one line */
    if (o->size > cfg->max_upload_bytes) {
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "file is %" PRIu64 " bytes, over this server's --max-upload-bytes of %" PRIu64,
                 o->size, cfg->max_upload_bytes);
        return -1;
    }
    if (o->n_times > TN_IPC_MAX_TIMES) {
        gen_fail(c, TN_INVALID_ARGUMENT, "%zu time points requested; at most %d per call",
                 o->n_times, TN_IPC_MAX_TIMES);
        return -1;
    }
    for (size_t i = 0; i < o->n_times; i++) {
        const Thumbnail__V1__TimePoint *t = o->times[i];
        struct tn_time_point *tp = &j->times[i];
        if (t->point_case == THUMBNAIL__V1__TIME_POINT__POINT_SECONDS) {
            if (!isfinite(t->seconds) || t->seconds < 0) {
                gen_fail(c, TN_INVALID_ARGUMENT, "time point %zu: %g s is not a time >= 0", i,
                         t->seconds);
                return -1;
            }
            tp->kind = TN_TIME_SECONDS;
            tp->value = t->seconds;
        } else if (t->point_case == THUMBNAIL__V1__TIME_POINT__POINT_PERCENT) {
            if (!isfinite(t->percent) || t->percent < 0 || t->percent > 100) {
                gen_fail(c, TN_INVALID_ARGUMENT, "time point %zu: %g%% is not within 0..100 %%", i,
                         t->percent);
                return -1;
            }
            tp->kind = TN_TIME_PERCENT;
            tp->value = t->percent;
        } else {
            gen_fail(c, TN_INVALID_ARGUMENT, "time point %zu has neither seconds nor percent", i);
            return -1;
        }
    }
    j->n_times = (uint32_t)o->n_times;
    if (j->n_times == 0) {
        j->n_times = 1;
        j->times[0].kind = TN_TIME_PERCENT;
        j->times[0].value = 10;
    }
    if (o->max_width > MAX_BOX || o->max_height > MAX_BOX) {
        gen_fail(c, TN_INVALID_ARGUMENT, "box %ux%u is too large; at most %d on each side",
                 o->max_width, o->max_height, MAX_BOX);
        return -1;
    }
    j->max_width = o->max_width;
    j->max_height = o->max_height;
    if (!j->max_width && !j->max_height)
        j->max_width = DEFAULT_MAX_WIDTH;
    j->upscale = o->upscale ? 1 : 0;
    switch (o->format) {
    case THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED:
    case THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_PNG: j->format = TN_FORMAT_PNG; break;
    /* The engine decides which formats it can encode. */
    case THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_JPEG: j->format = TN_FORMAT_JPEG; break;
    case THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_WEBP: j->format = TN_FORMAT_WEBP; break;
    default:
        gen_fail(c, TN_INVALID_ARGUMENT, "unknown output format %d", (int)o->format);
        return -1;
    }
    switch (o->mode) {
    case THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_UNSPECIFIED:
    case THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_ACCURATE: j->mode = TN_MODE_ACCURATE; break;
    case THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_KEYFRAME: j->mode = TN_MODE_KEYFRAME; break;
    default: gen_fail(c, TN_INVALID_ARGUMENT, "unknown seek mode %d", (int)o->mode); return -1;
    }
    if (o->quality > 100) {
        gen_fail(c, TN_INVALID_ARGUMENT, "quality %u is out of range: use 1..100 (0 = default)",
                 o->quality);
        return -1;
    }
    if (o->png_level > 9) {
        gen_fail(c, TN_INVALID_ARGUMENT, "png_level %u is out of range: use 1..9 (0 = default)",
                 o->png_level);
        return -1;
    }
    j->quality = o->quality;
    j->lossless = o->lossless ? 1 : 0;
    j->png_level = o->png_level;
    c->declared = o->size;
    if (c->declared && check_spool_space(c) < 0)
        return -1;
    int fd = open_spool(cfg->spool_dir);
    if (fd < 0) {
        tn_log_error("cannot create a spool file in %s: %s", cfg->spool_dir, strerror(-fd));
        gen_fail(c, TN_UNAVAILABLE, "the server cannot store uploads right now (spool: %s)",
                 strerror(-fd));
        return -1;
    }
    c->spool_fd = fd;
    c->have_options = true;
    return 0;
}

static int spool_write(struct gen_call *c, const unsigned char *p, size_t len)
{
    const struct tn_config *cfg = c->f->cfg;
    if (c->received + len > cfg->max_upload_bytes) {
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "upload exceeds this server's --max-upload-bytes of %" PRIu64 " bytes",
                 cfg->max_upload_bytes);
        return -1;
    }
    if (c->declared && c->received + len > c->declared) {
        gen_fail(c, TN_INVALID_ARGUMENT,
                 "upload sent more than the %" PRIu64 " bytes declared in options.size",
                 c->declared);
        return -1;
    }
    while (len > 0) {
        ssize_t n = write(c->spool_fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            tn_log_error("write() to spool file failed: %s", strerror(e));
            gen_fail(c, e == ENOSPC || e == EDQUOT ? TN_RESOURCE_EXHAUSTED : TN_UNAVAILABLE,
                     "the server could not store the upload: %s", strerror(e));
            return -1;
        }
        p += n;
        len -= (size_t)n;
        c->received += (uint64_t)n;
    }
    return 0;
}

/* Zero-copy spooling of a data message (GenerateRequest field 2 alone): the
 * bytes go from the received slices to the spool file in one writev() per
 * message, without flattening the message into a new buffer first. With the
 * flatten copy, a perf profile of a 60 MB upload had 24 % of the front's
 * time in memmove and 18 % in page faults on the fresh 1 MiB buffers.
 * Returns 1 when the message was spooled (*complete set), 0 when it is not a
 * plain uncompressed data message (the caller decodes it), -1 after
 * gen_fail(). */
static int spool_data_slices(struct gen_call *c, grpc_byte_buffer *bb, bool *complete)
{
    if (bb->type != GRPC_BB_RAW || bb->data.raw.compression != GRPC_COMPRESS_NONE)
        return 0;
    const grpc_slice_buffer *sb = &bb->data.raw.slice_buffer;
    unsigned char hdr[11];
    size_t nh = 0;
    for (size_t k = 0; k < sb->count && nh < sizeof(hdr); k++) {
        size_t l = GRPC_SLICE_LENGTH(sb->slices[k]);
        size_t take = l < sizeof(hdr) - nh ? l : sizeof(hdr) - nh;
        memcpy(hdr + nh, GRPC_SLICE_START_PTR(sb->slices[k]), take);
        nh += take;
    }
    if (nh < 2 || hdr[0] != 0x12)
        return 0;
    uint64_t n = 0;
    size_t i = 1;
    for (int shift = 0;; shift += 7) {
        if (i >= nh || shift >= 64)
            return 0;
        n |= (uint64_t)(hdr[i] & 0x7f) << shift;
        if (!(hdr[i++] & 0x80))
            break;
    }
    if (n != sb->length - i)
        return 0;
    const struct tn_config *cfg = c->f->cfg;
    if (c->received + n > cfg->max_upload_bytes || (c->declared && c->received + n > c->declared))
        return 0; /* spool_write() says why */

    struct iovec iov[64];
    size_t skip = i, k = 0;
    while (k < sb->count) {
        int niov = 0;
        for (; k < sb->count && niov < 64; k++) {
            size_t l = GRPC_SLICE_LENGTH(sb->slices[k]);
            if (skip >= l) {
                skip -= l;
                continue;
            }
            iov[niov].iov_base = GRPC_SLICE_START_PTR(sb->slices[k]) + skip;
            iov[niov].iov_len = l - skip;
            skip = 0;
            niov++;
        }
        struct iovec *v = iov;
        while (niov > 0) {
            ssize_t w = writev(c->spool_fd, v, niov);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                int e = errno;
                tn_log_error("writev() to spool file failed: %s", strerror(e));
                gen_fail(c, e == ENOSPC || e == EDQUOT ? TN_RESOURCE_EXHAUSTED : TN_UNAVAILABLE,
                         "the server could not store the upload: %s", strerror(e));
                return -1;
            }
            c->received += (uint64_t)w;
            while (niov > 0 && (size_t)w >= v->iov_len) {
                w -= (ssize_t)v->iov_len;
                v++;
                niov--;
            }
            if (niov > 0) {
                v->iov_base = (char *)v->iov_base + w;
                v->iov_len -= (size_t)w;
            }
        }
    }
    *complete = c->declared && c->received == c->declared;
    return 1;
}

/* The upload is complete: hand the call to the poller for dispatch. */
static void upload_complete(struct gen_call *c)
{
    struct front *f = c->f;
    const struct tn_config *cfg = f->cfg;
    int sp[2];

    if (c->received == 0) {
        gen_fail(c, TN_INVALID_ARGUMENT, "the file is empty (0 bytes): not a video");
        return;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
        tn_log_error("socketpair() failed for a job: %s", strerror(errno));
        gen_fail(c, TN_UNAVAILABLE, "the server is out of resources (%s)", strerror(errno));
        return;
    }
    int64_t now = tn_mono_ms();
    int64_t dl = now + (int64_t)(cfg->job_timeout_s * 1000);
    int64_t call_dl = deadline_to_mono_ms(c->deadline);
    if (call_dl && call_dl < dl)
        dl = call_dl;

    pthread_mutex_lock(&f->mu);
    bool full = f->n_waiting >= cfg->max_queued_jobs;
    uint64_t id = ++f->next_job_id;
    if (!full)
        f->n_waiting++;
    pthread_mutex_unlock(&f->mu);
    if (full) {
        close(sp[0]);
        close(sp[1]);
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "server busy: %d jobs already wait for a worker (--max-queued-jobs); retry later",
                 cfg->max_queued_jobs);
        return;
    }

    tn_ipc_header_init(&c->job.h, TN_IPC_JOB, id);
    c->job.file_size = c->received;
    c->job.deadline_ms = dl;

    pthread_mutex_lock(&c->mu);
    c->reply_fd = sp[0];
    c->worker_fd = sp[1];
    c->job_deadline_ms = dl;
    gen_ref_locked(c); /* held by the dispatch list, then by the poller */
    pthread_mutex_unlock(&c->mu);

    pthread_mutex_lock(&f->mu);
    c->pend_next = NULL;
    if (f->pend_tail)
        f->pend_tail->pend_next = c;
    else
        f->pend_head = c;
    f->pend_tail = c;
    pthread_mutex_unlock(&f->mu);
    uint64_t one = 1;
    if (write(f->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        tn_log_error("write() to eventfd failed: %s", strerror(errno));
}

static void on_recv(struct gen_call *c, bool ok)
{
    grpc_byte_buffer *bb = c->recv_buf;
    c->recv_buf = NULL;
    dlink_remove(&c->recv_link); /* request_message() puts it back */
    c->last_msg_ms = tn_mono_ms();

    pthread_mutex_lock(&c->mu);
    bool stop = c->dead || c->status_set;
    pthread_mutex_unlock(&c->mu);
    if (stop)
        goto out;

    if (!ok || !bb) {
        /* The stream ended (half-close or cancel: gRPC core reports both alike)
         * before the upload was complete. Never process a truncated upload. */
        if (!c->have_options)
            gen_fail(c, TN_INVALID_ARGUMENT, "the request stream ended before the options");
        else
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "the upload ended after %" PRIu64 " bytes without an end message%s",
                     c->received, c->declared ? " or the declared size" : "");
        goto out;
    }

    bool complete = false;
    grpc_slice s = grpc_empty_slice();
    if (c->have_options) {
        int z = spool_data_slices(c, bb, &complete);
        if (z < 0)
            goto out_slice;
        if (z > 0)
            goto handled;
    }
    s = tn_pb_flatten(bb);
    const unsigned char *p = GRPC_SLICE_START_PTR(s);
    size_t len = GRPC_SLICE_LENGTH(s);

    /* Fast path for data messages (field 2, the only field set): write the
     * bytes straight from the received slice, without a protobuf-c copy. */
    if (c->have_options && len >= 2 && p[0] == 0x12) {
        uint64_t n = 0;
        size_t i = 1;
        for (int shift = 0; i < len && shift < 64; shift += 7) {
            n |= (uint64_t)(p[i] & 0x7f) << shift;
            if (!(p[i++] & 0x80))
                break;
        }
        if (n == len - i) {
            if (spool_write(c, p + i, (size_t)n) < 0)
                goto out_slice;
            complete = c->declared && c->received == c->declared;
            goto handled;
        }
    }

    Thumbnail__V1__GenerateRequest *req = thumbnail__v1__generate_request__unpack(NULL, len, p);
    if (!req) {
        gen_fail(c, TN_INVALID_ARGUMENT, "malformed GenerateRequest message");
        goto out_slice;
    }
    int rc = 0;
    switch (req->msg_case) {
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_OPTIONS:
        if (c->have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT, "options sent twice; send them once, first");
            rc = -1;
        } else {
            rc = take_options(c, req->options);
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_DATA:
        if (!c->have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "data before options; the first message must "
                     "carry the options");
            rc = -1;
        } else {
            rc = spool_write(c, req->data.data, req->data.len);
            complete = rc == 0 && c->declared && c->received == c->declared;
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_END:
        if (!c->have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT, "end before options");
            rc = -1;
        } else if (c->declared && c->received != c->declared) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "upload ended at %" PRIu64 " bytes but options.size declared %" PRIu64,
                     c->received, c->declared);
            rc = -1;
        } else {
            complete = true;
        }
        break;
    default: gen_fail(c, TN_INVALID_ARGUMENT, "empty GenerateRequest message"); rc = -1;
    }
    thumbnail__v1__generate_request__free_unpacked(req, NULL);
    if (rc < 0)
        goto out_slice;

handled:
    if (complete)
        upload_complete(c);
    else
        request_message(c);
out_slice:
    grpc_slice_unref(s);
out:
    if (bb)
        grpc_byte_buffer_destroy(bb);
    gen_unref(c);
}

static void on_close(struct gen_call *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->cancelled) {
        c->dead = true;
        drop_results(c);
        abandon_job_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    gen_unref(c);
}

/* ------------------------------------------------------------------------ */
/* New calls (CQ thread)                                                     */

static void request_generate(struct front *f);
static void request_health(struct front *f);
static void request_generic(struct front *f);

static void simple_free(struct simple_call *s)
{
    struct front *f = s->f;
    bool accepted = s->call != NULL;
    if (s->call)
        grpc_call_unref(s->call);
    if (s->kind == TAG_NEW_GENERIC)
        grpc_call_details_destroy(&s->details);
    grpc_metadata_array_destroy(&s->md);
    if (s->payload)
        grpc_byte_buffer_destroy(s->payload);
    if (s->resp)
        grpc_byte_buffer_destroy(s->resp);
    grpc_slice_unref(s->status_slice);
    free(s);
    if (accepted) {
        pthread_mutex_lock(&f->mu);
        f->n_live--;
        pthread_mutex_unlock(&f->mu);
    }
}

static struct simple_call *simple_new(struct front *f, enum tag_kind kind)
{
    struct simple_call *s = call_alloc(sizeof(*s));
    s->f = f;
    s->kind = kind;
    s->t_new = (struct tag){kind, s};
    s->t_done = (struct tag){TAG_SIMPLE_DONE, s};
    s->status_slice = grpc_empty_slice();
    grpc_metadata_array_init(&s->md);
    if (kind == TAG_NEW_GENERIC)
        grpc_call_details_init(&s->details);
    return s;
}

/* Answer a simple call with one batch: optional message, status, close. */
static void simple_answer(struct simple_call *s, grpc_byte_buffer *msg, grpc_status_code code,
                          const char *details)
{
    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (msg) {
        s->resp = msg;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = msg;
    }
    s->status_slice = grpc_slice_from_copied_string(details ? details : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = details ? &s->status_slice : NULL;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &s->cancelled;
    start_batch(s->call, ops, n, &s->t_done);
}

static bool is_draining(struct front *f)
{
    pthread_mutex_lock(&f->mu);
    bool d = f->draining;
    pthread_mutex_unlock(&f->mu);
    return d;
}

/* The HealthCheckRequest of a Check or Watch call; NULL if absent or malformed. */
static Grpc__Health__V1__HealthCheckRequest *health_request(grpc_byte_buffer *payload)
{
    if (!payload)
        return NULL;
    grpc_slice sl = tn_pb_flatten(payload);
    Grpc__Health__V1__HealthCheckRequest *req = grpc__health__v1__health_check_request__unpack(
        NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
    grpc_slice_unref(sl);
    return req;
}

static void on_new_health(struct simple_call *s, bool ok)
{
    struct front *f = s->f;
    if (!ok) { /* server shutting down */
        simple_free(s);
        return;
    }
    pthread_mutex_lock(&f->mu);
    f->n_live++;
    pthread_mutex_unlock(&f->mu);
    request_health(f);

    Grpc__Health__V1__HealthCheckRequest *req = health_request(s->payload);
    if (!req) {
        simple_answer(s, NULL, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest");
        return;
    }
    const char *svc = req->service ? req->service : "";
    if (*svc && strcmp(svc, "thumbnail.v1.Thumbnailer") != 0) {
        char msg[300];
        snprintf(msg, sizeof(msg), "unknown service \"%.200s\"", svc);
        grpc__health__v1__health_check_request__free_unpacked(req, NULL);
        simple_answer(s, NULL, GRPC_STATUS_NOT_FOUND, msg);
        return;
    }
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = is_draining(f)
                      ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    simple_answer(s, tn_pb_pack(&resp.base), GRPC_STATUS_OK, NULL);
}

static void on_new_generic(struct simple_call *s, bool ok)
{
    struct front *f = s->f;
    if (!ok) {
        simple_free(s);
        return;
    }
    pthread_mutex_lock(&f->mu);
    f->n_live++;
    pthread_mutex_unlock(&f->mu);
    request_generic(f);
    char *method = grpc_slice_to_c_string(s->details.method);
    char msg[400];
    snprintf(msg, sizeof(msg), "method %.300s is not implemented by this server", method);
    tn_log_info("unknown method %s: UNIMPLEMENTED", method);
    gpr_free(method);
    simple_answer(s, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
}

static void on_new_generate(struct gen_call *c, bool ok)
{
    struct front *f = c->f;
    if (!ok) {
        gen_destroy(c); /* never accepted: refs are 0 */
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &c->started);
    char *peer = grpc_call_get_peer(c->call);
    snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "?");
    gpr_free(peer);

    pthread_mutex_lock(&f->mu);
    f->n_live++;
    f->n_gen_calls++;
    int n = f->n_gen_calls;
    bool draining = f->draining;
    pthread_mutex_unlock(&f->mu);
    request_generate(f);

    /* RECV_CLOSE_ON_SERVER first: it is how a client cancel is seen. */
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    pthread_mutex_lock(&c->mu);
    c->refs = 1;
    pthread_mutex_unlock(&c->mu);
    start_batch(c->call, &op, 1, &c->t_close);
    c->last_msg_ms = tn_mono_ms();

    if (draining) {
        gen_fail(c, TN_UNAVAILABLE, "the server is shutting down; retry on another instance");
        return;
    }
    if (n > f->cfg->max_concurrent_calls) {
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "server busy: %d calls in progress (--max-concurrent-calls %d); retry later",
                 n - 1, f->cfg->max_concurrent_calls);
        return;
    }
    request_message(c);
}

static void request_generate(struct front *f)
{
    struct gen_call *c = gen_new(f);
    grpc_call_error e = grpc_server_request_registered_call(
        f->server, f->m_generate, &c->call, &c->deadline, &c->md, NULL, f->cq, f->cq, &c->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

static void request_health(struct front *f)
{
    struct simple_call *s = simple_new(f, TAG_NEW_HEALTH);
    grpc_call_error e =
        grpc_server_request_registered_call(f->server, f->m_health, &s->call, &s->deadline, &s->md,
                                            &s->payload, f->cq, f->cq, &s->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

/* Unknown methods hang until the client's deadline unless a generic request is
 * outstanding: keep one, and answer UNIMPLEMENTED. */
static void request_generic(struct front *f)
{
    struct simple_call *s = simple_new(f, TAG_NEW_GENERIC);
    grpc_call_error e =
        grpc_server_request_call(f->server, &s->call, &s->details, &s->md, f->cq, f->cq, &s->t_new);
    must_succeed(e, "grpc_server_request_call");
}

/* ------------------------------------------------------------------------ */
/* Streaming calls of the standard services (CQ thread only)                */

/*
 * Health/Watch and both ServerReflectionInfo methods. They never involve a
 * worker or the poller, so every field is touched by the CQ thread alone and
 * needs no lock; only the list they sit on (f->streams) is under f->mu.
 * `refs` counts outstanding batches (RECV_CLOSE_ON_SERVER, at most one RECV,
 * at most one SEND); the last completion frees the call. Reflection reads the
 * next request only once the previous answer is sent, which keeps one SEND
 * outstanding without a queue.
 */
struct stream_call {
    struct front *f;
    struct tag t_new, t_recv, t_send, t_close;
    enum tag_kind kind; /* TAG_NEW_WATCH, TAG_NEW_REFL or TAG_NEW_REFL_ALPHA */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;  /* Watch: its one request */
    grpc_byte_buffer *recv_buf; /* reflection: the request being received */
    grpc_byte_buffer *send_buf; /* the message of the outstanding send */
    grpc_byte_buffer *answer;   /* reflection: the answer waiting to be sent */
    grpc_slice status_slice;
    int cancelled;
    int refs;
    bool dead; /* cancelled or a send failed: send nothing more */
    bool sending, md_sent;
    bool ending, status_sent; /* ending: send the status next */
    grpc_status_code end_code;
    const char *end_msg;             /* static */
    int watch_sent, watch_want;      /* serving status; -1 = none sent yet */
    struct stream_call *prev, *next; /* f->streams, under f->mu */
};

static void request_stream(struct front *f, enum tag_kind kind);

static void stream_free(struct stream_call *s)
{
    struct front *f = s->f;
    bool accepted = s->call != NULL;
    if (accepted) {
        pthread_mutex_lock(&f->mu);
        if (s->prev)
            s->prev->next = s->next;
        else if (f->streams == s)
            f->streams = s->next;
        if (s->next)
            s->next->prev = s->prev;
        f->n_live--;
        f->n_streams--;
        pthread_mutex_unlock(&f->mu);
        grpc_call_unref(s->call);
    }
    grpc_metadata_array_destroy(&s->md);
    if (s->payload)
        grpc_byte_buffer_destroy(s->payload);
    if (s->recv_buf)
        grpc_byte_buffer_destroy(s->recv_buf);
    if (s->send_buf)
        grpc_byte_buffer_destroy(s->send_buf);
    if (s->answer)
        grpc_byte_buffer_destroy(s->answer);
    grpc_slice_unref(s->status_slice);
    free(s);
}

static void stream_unref(struct stream_call *s)
{
    if (--s->refs == 0)
        stream_free(s);
}

static grpc_byte_buffer *watch_message(int status)
{
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    return tn_pb_pack(&resp.base);
}

/* Start the next send if none is outstanding: a status change or an answer,
 * else the final status once `ending` is set. */
static void stream_kick(struct stream_call *s)
{
    if (s->sending || s->status_sent || s->dead)
        return;
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!s->md_sent)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (s->ending) {
        s->status_slice = grpc_slice_from_static_string(s->end_msg ? s->end_msg : "");
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = s->end_code;
        ops[n++].data.send_status_from_server.status_details = s->end_msg ? &s->status_slice : NULL;
        s->status_sent = true;
    } else if (s->kind == TAG_NEW_WATCH && s->watch_want != s->watch_sent) {
        s->send_buf = watch_message(s->watch_want);
        s->watch_sent = s->watch_want;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = s->send_buf;
    } else if (s->answer) {
        s->send_buf = s->answer;
        s->answer = NULL;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = s->send_buf;
    } else {
        return;
    }
    s->md_sent = true;
    s->sending = true;
    s->refs++;
    start_batch(s->call, ops, n, &s->t_send);
}

static void stream_end(struct stream_call *s, grpc_status_code code, const char *msg)
{
    if (!s->ending) {
        s->ending = true;
        s->end_code = code;
        s->end_msg = msg;
    }
    stream_kick(s);
}

static void stream_request_recv(struct stream_call *s)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv_buf;
    s->refs++;
    start_batch(s->call, &op, 1, &s->t_recv);
}

/* Health serving status of the whole server / of `service` for a Watch. */
static int watch_status(struct front *f, bool known)
{
    if (!known)
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    return is_draining(f) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                          : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static void on_new_stream(struct stream_call *s, bool ok)
{
    struct front *f = s->f;
    if (!ok) { /* server shutting down: never accepted */
        stream_free(s);
        return;
    }
    pthread_mutex_lock(&f->mu);
    f->n_live++;
    s->next = f->streams;
    if (f->streams)
        f->streams->prev = s;
    f->streams = s;
    bool stopping = f->stopping;
    /* Idle watchers cost little, but not nothing: the same cap as Generate. */
    bool too_many = ++f->n_streams > f->cfg->max_concurrent_calls;
    pthread_mutex_unlock(&f->mu);
    request_stream(f, s->kind);

    /* RECV_CLOSE_ON_SERVER first: it is how a client cancel is seen. */
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &s->cancelled;
    s->refs = 1;
    start_batch(s->call, &op, 1, &s->t_close);

    if (stopping) {
        stream_end(s, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
        return;
    }
    if (too_many) {
        stream_end(s, GRPC_STATUS_RESOURCE_EXHAUSTED,
                   "too many health watch and reflection streams open "
                   "(--max-concurrent-calls); retry later");
        return;
    }
    if (s->kind != TAG_NEW_WATCH) {
        stream_request_recv(s);
        return;
    }
    Grpc__Health__V1__HealthCheckRequest *req = health_request(s->payload);
    if (!req) {
        stream_end(s, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest");
        return;
    }
    const char *svc = req->service ? req->service : "";
    /* health.proto: an unknown service is answered SERVICE_UNKNOWN, and the
     * stream stays open (the service might be registered later). */
    s->watch_want = watch_status(f, !*svc || strcmp(svc, "thumbnail.v1.Thumbnailer") == 0);
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    stream_kick(s);
}

static void on_stream_recv(struct stream_call *s, bool ok)
{
    grpc_byte_buffer *bb = s->recv_buf;
    s->recv_buf = NULL;
    if (s->dead || s->ending) {
        /* nothing more to answer */
    } else if (!ok || !bb) {
        stream_end(s, GRPC_STATUS_OK, NULL); /* half-close (or a cancel: dead soon) */
    } else {
        grpc_slice sl = tn_pb_flatten(bb);
        s->answer =
            tn_reflection_answer(s->f->refl, GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl));
        grpc_slice_unref(sl);
        stream_kick(s);
    }
    if (bb)
        grpc_byte_buffer_destroy(bb);
    stream_unref(s);
}

static void on_stream_send(struct stream_call *s, bool ok)
{
    s->sending = false;
    if (s->send_buf) {
        grpc_byte_buffer_destroy(s->send_buf);
        s->send_buf = NULL;
    }
    if (!ok)
        s->dead = true;
    else if (s->kind != TAG_NEW_WATCH && !s->dead && !s->ending && !s->status_sent)
        stream_request_recv(s); /* the answer is out: read the next request */
    stream_kick(s);
    stream_unref(s);
}

static void on_stream_close(struct stream_call *s)
{
    s->dead = true; /* cancelled, or our status went out: either way, done */
    stream_unref(s);
}

/* Drain started: tell every Watch. Shutdown started: end every stream, or the
 * server's shutdown would wait for clients that never hang up. */
static void streams_update(struct front *f, bool stopping)
{
    pthread_mutex_lock(&f->mu);
    if (stopping)
        f->stopping = true;
    for (struct stream_call *s = f->streams; s; s = s->next) {
        if (stopping)
            stream_end(s, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
        else if (s->kind == TAG_NEW_WATCH &&
                 s->watch_want == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
            s->watch_want = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
        stream_kick(s);
    }
    pthread_mutex_unlock(&f->mu);
}

static void request_stream(struct front *f, enum tag_kind kind)
{
    struct stream_call *s = call_alloc(sizeof(*s));
    s->f = f;
    s->kind = kind;
    s->t_new = (struct tag){kind, s};
    s->t_recv = (struct tag){TAG_STREAM_RECV, s};
    s->t_send = (struct tag){TAG_STREAM_SEND, s};
    s->t_close = (struct tag){TAG_STREAM_CLOSE, s};
    s->status_slice = grpc_empty_slice();
    s->watch_sent = s->watch_want = -1;
    grpc_metadata_array_init(&s->md);
    void *m = kind == TAG_NEW_WATCH  ? f->m_watch
              : kind == TAG_NEW_REFL ? f->m_refl
                                     : f->m_refl_alpha;
    grpc_call_error e = grpc_server_request_registered_call(
        f->server, m, &s->call, &s->deadline, &s->md, kind == TAG_NEW_WATCH ? &s->payload : NULL,
        f->cq, f->cq, &s->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

/* ------------------------------------------------------------------------ */
/* Poller thread: dispatch, replies, deadlines                               */

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

/* The job is over for the poller: stop watching the reply socket. Caller holds
 * f->mu and c->mu; the poller's reference goes to l. */
static void job_release_locked(struct front *f, struct gen_call *c, bool acked,
                               struct unref_list *l)
{
    if (c->reply_fd >= 0) {
        epoll_ctl(f->epfd, EPOLL_CTL_DEL, c->reply_fd, NULL);
        close(c->reply_fd);
        c->reply_fd = -1;
    }
    if (!acked)
        f->n_waiting--;
    dlink_remove(&c->run_link);
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

static void dispatch_pending(struct front *f)
{
    struct unref_list l = {.n = 0};
    pthread_mutex_lock(&f->mu);
    while (f->pend_head && l.n < 60) {
        struct gen_call *c = f->pend_head;
        pthread_mutex_lock(&c->mu);
        if (c->dead || c->status_set) {
            f->pend_head = c->pend_next;
            if (!f->pend_head)
                f->pend_tail = NULL;
            close(c->worker_fd);
            c->worker_fd = -1;
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        int fds[2] = {c->spool_fd, c->worker_fd};
        int rc = tn_ipc_send(f->queue_fd, &c->job, sizeof(c->job), fds, 2, MSG_DONTWAIT);
        if (rc == -EAGAIN) {
            pthread_mutex_unlock(&c->mu);
            set_queue_blocked_locked(f, true);
            break;
        }
        f->pend_head = c->pend_next;
        if (!f->pend_head)
            f->pend_tail = NULL;
        /* The message in flight holds its own references to both fds. */
        close(c->worker_fd);
        c->worker_fd = -1;
        close(c->spool_fd);
        c->spool_fd = -1;
        c->dispatched = true;
        if (rc < 0) {
            tn_log_error("sending job %" PRIu64 " to the queue failed: %s", c->job.h.job_id,
                         strerror(-rc));
            finish_locked(c, TN_UNAVAILABLE, "no decode worker could take the job (%s)",
                          strerror(-rc));
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, c->reply_fd, &ev) < 0) {
            tn_log_error("epoll_ctl(ADD) failed for a reply socket: %s", strerror(errno));
            finish_locked(c, TN_INTERNAL, "the server lost track of the job");
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        dlink_push(&f->running, &c->run_link);
        tn_log_debug("job %" PRIu64 " queued: \"%s\", %" PRIu64 " bytes", c->job.h.job_id,
                     c->job.file_name, c->job.file_size);
        pthread_mutex_unlock(&c->mu);
    }
    if (!f->pend_head)
        set_queue_blocked_locked(f, false);
    pthread_mutex_unlock(&f->mu);
    unref_flush(&l);
    if (f->pend_head) {
        /* Stopped early to flush unrefs: come back at once. */
        uint64_t one = 1;
        if (write(f->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            tn_log_error("write() to eventfd failed: %s", strerror(errno));
    }
}

/* Map a RESULT's memfd for streaming. Takes ownership of fd. */
static struct result *result_new(const struct tn_ipc_result *m, int fd)
{
    struct result *r = calloc(1, sizeof(*r));
    if (!r) {
        close(fd);
        return NULL;
    }
    r->meta = *m;
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
    return r;
}

static void handle_reply(struct front *f, struct gen_call *c)
{
    struct unref_list l = {.n = 0};
    pthread_mutex_lock(&f->mu);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->reply_fd < 0)
            break;
        union tn_ipc_any m;
        int fds[TN_IPC_MAX_FDS], nfds = 0;
        int n = tn_ipc_recv(c->reply_fd, &m, sizeof(m), fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            break;
        bool acked = c->worker_pid > 0;
        if (n <= 0) {
            if (c->dead) {
                /* Abandoned by us: nothing to report. */
            } else if (n == 0 && acked) {
                tn_log_warn("worker pid %d ended without finishing job %" PRIu64 " (\"%s\")",
                            (int)c->worker_pid, c->job.h.job_id, c->job.file_name);
                if (c->killed)
                    finish_locked(c, TN_DEADLINE_EXCEEDED,
                                  "processing the file took longer than its deadline; the "
                                  "decode worker was stopped");
                else
                    finish_locked(c, TN_UNAVAILABLE,
                                  "the decode worker (pid %d) died while processing this file "
                                  "and has been restarted; retrying is safe",
                                  (int)c->worker_pid);
            } else if (n == 0) {
                finish_locked(c, TN_UNAVAILABLE,
                              "the decode worker died before it could take the job; retrying "
                              "is safe");
            } else {
                tn_log_error("bad reply for job %" PRIu64 ": %s", c->job.h.job_id, strerror(-n));
                finish_locked(c, TN_INTERNAL, "the decode worker sent a malformed reply");
            }
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
                c->worker_pid = m.ack.pid;
                f->n_waiting--;
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
                break;
            }
            if (c->dead || c->status_set) {
                free_result(r);
                break;
            }
            if (c->res_tail)
                c->res_tail->next = r;
            else
                c->res_head = r;
            c->res_tail = r;
            kick_send_locked(c);
            break;
        }
        case TN_IPC_DONE:
            m.done.message[sizeof(m.done.message) - 1] = 0;
            if (m.done.code == TN_OK)
                finish_locked(c, TN_OK, "OK");
            else
                finish_locked(c, m.done.code, "%s", m.done.message);
            job_release_locked(f, c, acked, &l);
            break;
        default: break;
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&f->mu);
    unref_flush(&l);
}

static void check_deadlines(struct front *f)
{
    int64_t now = tn_mono_ms();
    pthread_mutex_lock(&f->mu);
    for (struct dlink *l = f->running.next; l != &f->running; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, run_link);
        pthread_mutex_lock(&c->mu);
        if (c->job_deadline_ms && now > c->job_deadline_ms + KILL_MARGIN_MS && !c->killed) {
            c->killed = true;
            if (c->worker_pid > 0) {
                tn_log_warn("job %" PRIu64 " (\"%s\") overran its deadline: killing worker pid %d",
                            c->job.h.job_id, c->job.file_name, (int)c->worker_pid);
                kill(c->worker_pid, SIGKILL);
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

static void *poller_main(void *arg)
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

/* ------------------------------------------------------------------------ */
/* --idle-timeout (CQ thread)                                                */

/* End uploads that have waited for a message longer than --idle-timeout. The
 * status ends the call; its outstanding RECV_MESSAGE then completes and
 * on_recv() sees status_set and releases its reference, so the call, its slot
 * and its spool file go away as for any other failed upload. */
static void check_idle(struct front *f, int64_t now)
{
    double t = f->cfg->idle_timeout_s;
    if (t <= 0)
        return;
    int64_t limit = (int64_t)(t * 1000);
    for (struct dlink *l = f->recving.next; l != &f->recving; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, recv_link);
        if (c->idle_ended || now - c->last_msg_ms < limit)
            continue;
        c->idle_ended = true;
        tn_log_info("Generate peer=%s: no upload data for %g s: ending it", c->peer, t);
        gen_fail(c, TN_DEADLINE_EXCEEDED,
                 "no upload data for %g s; the call was ended (--idle-timeout)", t);
    }
}

/* ------------------------------------------------------------------------ */
/* Set-up, main loop, shutdown                                               */

static void handle_event(struct front *f, grpc_event ev, bool *shutdown_done)
{
    struct tag *t = ev.tag;
    bool ok = ev.success != 0;
    switch (t->kind) {
    case TAG_NEW_GENERATE: on_new_generate(t->owner, ok); break;
    case TAG_NEW_HEALTH: on_new_health(t->owner, ok); break;
    case TAG_NEW_GENERIC: on_new_generic(t->owner, ok); break;
    case TAG_GEN_RECV: on_recv(t->owner, ok); break;
    case TAG_GEN_SEND: on_send_done(t->owner, ok); break;
    case TAG_GEN_CLOSE: on_close(t->owner); break;
    case TAG_SIMPLE_DONE: simple_free(t->owner); break;
    case TAG_NEW_WATCH:
    case TAG_NEW_REFL:
    case TAG_NEW_REFL_ALPHA: on_new_stream(t->owner, ok); break;
    case TAG_STREAM_RECV: on_stream_recv(t->owner, ok); break;
    case TAG_STREAM_SEND: on_stream_send(t->owner, ok); break;
    case TAG_STREAM_CLOSE: on_stream_close(t->owner); break;
    case TAG_SHUTDOWN: *shutdown_done = true; break;
    }
}

static int setup(struct front *f, const struct tn_config *cfg)
{
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    f->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (f->epfd < 0 || f->evfd < 0) {
        tn_log_error("epoll/eventfd set-up failed: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &f->evfd};
    struct epoll_event evq = {.events = 0, .data.ptr = &f->queue_fd};
    if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->evfd, &ev) < 0 ||
        epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->queue_fd, &evq) < 0) {
        tn_log_error("epoll_ctl() failed: %s", strerror(errno));
        return -1;
    }

    grpc_arg args[4];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)cfg->max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = (int)(cfg->chunk_size + 1024);
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_ALLOW_REUSEPORT;
    args[2].value.integer = 0; /* a second server on the same port is a mistake, say so */
    /* The BDP probe grows the HTTP/2 receive window without bound while the
     * spool write keeps up: one 1 GiB upload peaked the front at 117 MB RSS
     * with it, 19 MB without, at the same 0.3-0.5 GB/s (spool on /dev/shm,
     * 3 runs each). Memory must not scale with upload size: off. */
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_HTTP2_BDP_PROBE;
    args[3].value.integer = 0;
    grpc_channel_args ca = {.num_args = 4, .args = args};

    if (!(f->refl = tn_reflection_new()))
        return -1;
    f->cq = grpc_completion_queue_create_for_next(NULL);
    f->server = grpc_server_create(&ca, NULL);
    grpc_server_register_completion_queue(f->server, f->cq, NULL);
    f->m_generate = grpc_server_register_method(f->server, "/thumbnail.v1.Thumbnailer/Generate",
                                                NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    f->m_health = grpc_server_register_method(f->server, "/grpc.health.v1.Health/Check", NULL,
                                              GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    f->m_watch = grpc_server_register_method(f->server, "/grpc.health.v1.Health/Watch", NULL,
                                             GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    f->m_refl = grpc_server_register_method(
        f->server, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", NULL,
        GRPC_SRM_PAYLOAD_NONE, 0);
    f->m_refl_alpha = grpc_server_register_method(
        f->server, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", NULL,
        GRPC_SRM_PAYLOAD_NONE, 0);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    for (size_t i = 0; i < cfg->n_listen; i++) {
        int port = grpc_server_add_http2_port(f->server, cfg->listen[i], creds);
        if (port == 0) {
            tn_log_error("cannot listen on %s (address in use, bad address or no permission)",
                         cfg->listen[i]);
            grpc_server_credentials_release(creds);
            return -2;
        }
        tn_log_info("listening on %s", cfg->listen[i]);
    }
    grpc_server_credentials_release(creds);
    grpc_server_start(f->server);
    request_generate(f);
    request_health(f);
    request_generic(f);
    request_stream(f, TAG_NEW_WATCH);
    request_stream(f, TAG_NEW_REFL);
    request_stream(f, TAG_NEW_REFL_ALPHA);
    return 0;
}

int tn_front_main(const struct tn_config *cfg, int queue_fd)
{
    struct front fr;
    struct front *f = &fr;
    int status = 1;
    memset(f, 0, sizeof(*f));
    dlink_init(&f->running);
    dlink_init(&f->recving);
    f->cfg = cfg;
    f->queue_fd = queue_fd;
    f->epfd = f->evfd = -1;
    f->t_shutdown = (struct tag){TAG_SHUTDOWN, f};
    pthread_mutex_init(&f->mu, NULL);
    /* Upload messages are 1 MiB buffers, malloc'd and freed all the time. With
     * glibc's defaults each free trimmed the heap (brk) and the next malloc
     * faulted the pages back in: 18 % of the front's time went to brk and
     * page faults in a perf profile of a 60 MB upload; front CPU per MB fell
     * from 3.6-5.8 ms to 0.2-0.8 ms (bench/run.sh's upload figure) with
     * these. Kept free memory is bounded by the trim threshold. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);

    /* gRPC's threads and the poller inherit a mask with our signals blocked, so
     * only the main thread runs the handlers (and its cq_next wakes each tick). */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old);

    grpc_init();
    int rc = setup(f, cfg);
    if (rc == 0) {
        if (pthread_create(&f->poller, NULL, poller_main, f) != 0) {
            tn_log_error("cannot start the poller thread");
            rc = -1;
        } else {
            f->poller_started = true;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == -2 || (rc < 0 && !f->server)) {
        /* Never started: no call or request is outstanding. */
        status = rc == -2 ? 2 : 1;
        if (f->server)
            grpc_server_destroy(f->server);
        if (f->cq) {
            grpc_completion_queue_shutdown(f->cq);
            while (
                grpc_completion_queue_next(f->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
                GRPC_QUEUE_SHUTDOWN)
                ;
            grpc_completion_queue_destroy(f->cq);
        }
        goto out_grpc;
    } else if (rc < 0) {
        /* Started but the poller failed: an orderly shutdown of what was set up. */
        status = 1;
        sig_stop = 1;
    } else {
        tn_log_info("serving (max %d concurrent calls, chunk %" PRIu64 " bytes)",
                    cfg->max_concurrent_calls, cfg->chunk_size);
        status = 0;
    }

    bool shutting_down = false, shutdown_done = false, cancelled_all = false;
    int64_t drain_deadline = 0, last_idle_check = 0;
    for (;;) {
        if (sig_usr1) {
            sig_usr1 = 0;
            tn_log_reopen();
        }
        int64_t now = tn_mono_ms();
        pthread_mutex_lock(&f->mu);
        bool was_draining = f->draining;
        if (sig_quit && !f->draining) {
            f->draining = true;
            drain_deadline = now + (int64_t)(cfg->grace_s * 1000);
            tn_log_info("draining: %d calls in progress, up to %.0f s", f->n_gen_calls,
                        cfg->grace_s);
        }
        if (sig_stop && !f->draining) {
            f->draining = true;
            drain_deadline = now;
        }
        bool drained = f->draining && (f->n_gen_calls == 0 || now >= drain_deadline);
        int live = f->n_live;
        bool drain_started = f->draining && !was_draining;
        pthread_mutex_unlock(&f->mu);
        if (drain_started)
            streams_update(f, false); /* Watch: NOT_SERVING */
        if (drained && !shutting_down) {
            shutting_down = true;
            grpc_server_shutdown_and_notify(f->server, f->cq, &f->t_shutdown);
            streams_update(f, true);
        }
        if (shutting_down && !cancelled_all && now >= drain_deadline) {
            cancelled_all = true;
            grpc_server_cancel_all_calls(f->server);
        }
        if (shutdown_done && live == 0)
            break;
        grpc_event ev = grpc_completion_queue_next(
            f->cq,
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(200, GPR_TIMESPAN)),
            NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(f, ev, &shutdown_done);
        int64_t t_now = tn_mono_ms();
        if (t_now - last_idle_check >= POLL_TICK_MS) {
            last_idle_check = t_now;
            check_idle(f, t_now);
        }
    }

    if (f->poller_started) {
        pthread_mutex_lock(&f->mu);
        f->stop_poller = true;
        pthread_mutex_unlock(&f->mu);
        uint64_t one = 1;
        if (write(f->evfd, &one, sizeof(one)) < 0)
            tn_log_error("write() to eventfd failed: %s", strerror(errno));
        pthread_join(f->poller, NULL);
    }
    grpc_server_destroy(f->server);
    grpc_completion_queue_shutdown(f->cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(f->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(f, ev, &shutdown_done);
    }
    grpc_completion_queue_destroy(f->cq);
out_grpc:
    grpc_shutdown();
    if (f->epfd >= 0)
        close(f->epfd);
    if (f->evfd >= 0)
        close(f->evfd);
    close(f->queue_fd);
    tn_reflection_free(&f->refl);
    pthread_mutex_destroy(&f->mu);
    tn_log_info("stopped");
    return status;
}
