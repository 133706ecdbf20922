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
 * --idle-timeout, or slower than --min-upload-rate, with DEADLINE_EXCEEDED.
 * Every accepted Generate/Probe call is on f->calls (under front.mu): the
 * same tick ends a call whose send batch has been outstanding for
 * --idle-timeout (a client that does not read), and a new call counts its
 * peer's calls there (--max-calls-per-peer). Results mapped in the front are
 * summed in held_result_bytes (--max-result-bytes); pull jobs get at most
 * N-1 workers (dispatch_pending()).
 *
 * Health/Watch and server reflection (v1, v1alpha) are streaming calls that
 * live on the CQ thread alone (struct stream_call): they sit on f->streams so
 * that the CQ thread can push NOT_SERVING to watchers when draining starts and
 * end every stream when the server shuts down.
 *
 * Pull mode: the job is dispatched as soon as the options arrive, with an
 * empty spool file. The worker's TN_IPC_READ reaches the poller, which records
 * the range on the call and sends a RangeRequest; the CQ thread checks each
 * RangeData against it, pwrite()s it into the spool file and, once the range
 * is complete, answers TN_IPC_READ_REPLY. Local mode: the file opened under
 * --media-root takes the place of the spool file and the job leaves at once.
 * Transport security (tls): every HOST:PORT listener gets the TLS server
 * credentials when --tls-cert is set (unix: ones too with --tls-unix), built
 * from PEM text the master already read and checked. --auth-token-file is
 * checked per call, on the CQ thread, from the call's initial metadata and
 * before its first RECV_MESSAGE: a refused upload is never spooled. Health
 * (Check, Watch) is exempt so that probes need no secret.
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
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "ipc.h"
#include "log.h"
#include "media_root.h"
#include "metrics.h"
#include "notify.h"
#include "pbbuf.h"
#include "reflection.h"
#include "status.h"
#include "thumbnail.pb-c.h"
#include "tls.h"

/* Our codes are gRPC's by number: the one place that relies on it. */
_Static_assert(GRPC_STATUS_INVALID_ARGUMENT == (int)TN_INVALID_ARGUMENT, "status numbering");
_Static_assert(GRPC_STATUS_UNAVAILABLE == (int)TN_UNAVAILABLE, "status numbering");
_Static_assert(GRPC_STATUS_RESOURCE_EXHAUSTED == (int)TN_RESOURCE_EXHAUSTED, "status numbering");
_Static_assert(GRPC_STATUS_DEADLINE_EXCEEDED == (int)TN_DEADLINE_EXCEEDED, "status numbering");
_Static_assert(GRPC_STATUS_UNAUTHENTICATED == (int)TN_UNAUTHENTICATED, "status numbering");
_Static_assert((int)THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_PNG == (int)TN_FORMAT_PNG, "format");
_Static_assert((int)THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_KEYFRAME == (int)TN_MODE_KEYFRAME, "mode");
_Static_assert((int)THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_SMART == (int)TN_MODE_SMART, "mode");
_Static_assert((int)THUMBNAIL__V1__FIT_MODE__FIT_MODE_PAD == (int)TN_FIT_PAD, "fit");

#define KILL_MARGIN_MS 1000 /* past the job deadline before the worker is killed */
#define POLL_TICK_MS 100
#define STATUS_MAX 600
/* Free space kept in the spool beyond declared uploads: 1 % of the file
 * system, at least SPOOL_MARGIN, but never more than 1/SPOOL_MARGIN_SHARE of
 * it (a small spool, e.g. a 64 MiB tmpfs, must still take uploads). */
#define SPOOL_MARGIN (64ull << 20)
#define SPOOL_MARGIN_SHARE 8
#define PREREQUESTED_CALLS 32 /* Generate calls requested ahead (see setup()) */
#define PREREQUESTED_PROBES 4 /* Probe calls requested ahead (rarer; same reason) */
#define NO_WORKERS_MSG                                                                             \
    "no decode worker is running on this server (they failed to start; see the server log); "      \
    "retry later or on another instance"

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
    char reason[TN_IPC_REASON_MAX]; /* from the RESULT_INFO before it; "" if none */
    uint32_t kind;                  /* ditto: ThumbnailKind */
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
    int64_t last_msg_ms;     /* when the last message arrived (--idle-timeout) */
    bool idle_ended;         /* ended by --idle-timeout or --min-upload-rate */
    int64_t window_start_ms; /* --min-upload-rate: the current window began */
    uint64_t window_bytes;   /* message bytes received in it */
    char peer_addr[128];     /* peer without the port (--max-calls-per-peer); "" = unix */
    bool refused_early;      /* refused at once as over a call limit */
    struct dlink recv_link;  /* on f->recving while a RECV_MESSAGE is outstanding */
    /* pull and local mode (CQ thread) */
    int pull_fd;        /* pull: our own fd of the spool file, written with range data; owned */
    bool pull;          /* Options.pull: the worker asks for ranges */
    bool local;         /* Options.local_path: spool_fd is the file under --media-root */
    uint64_t file_size; /* pull: declared; local: fstat */

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
    struct tn_ipc_result_info next_info; /* engine: applies to the next RESULT of its index */
    bool probe; /* engine: a Probe call: one ProbeResponse from the one result, then status */
    struct result *cur; /* being streamed */
    bool cur_header_sent;
    uint64_t cur_off;
    bool sending;
    int64_t send_since_ms; /* the outstanding send batch started (--idle-timeout, send side) */
    bool md_sent;
    bool status_set, status_sent;
    int status_code;
    char status_msg[STATUS_MAX];
    uint64_t bytes_out;
    unsigned thumbs_out;
    /* pull mode, under mu: the one range the worker waits for */
    uint64_t range_off, range_len, range_got;
    int64_t range_since_ms; /* when it was asked (--idle-timeout) */
    uint64_t pulled;        /* bytes asked for so far (--max-upload-bytes) */
    bool range_out;         /* asked, not all received */
    bool range_to_send;     /* the RangeRequest message is not sent yet */
    bool recv_closed;       /* the client half-closed: no more range data can come */

    /* Lists owned by front.mu. */
    struct dlink all_link;      /* on f->calls from its acceptance to its destruction */
    bool pull_running;          /* counted in f->n_pull_running */
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
    struct timespec started; /* metrics: accepted at */
    int code;                /* the status answered */
};

struct front {
    const struct tn_config *cfg;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *m_generate, *m_health, *m_watch, *m_refl, *m_refl_alpha;
    void *m_probe;              /* engine: Thumbnailer/Probe, served by the Generate code */
    struct tn_reflection *refl; /* owned; read-only once serving */
    int queue_fd;               /* owned */
    int ctl_fd;                 /* owned: control socket to the master (front.h); -1 none */
    int epfd;                   /* owned */
    int evfd;                   /* owned: wakes the poller */
    pthread_t poller;
    bool poller_started;
    struct tag t_shutdown;

    pthread_mutex_t mu;
    struct gen_call *pend_head, *pend_tail;
    struct dlink running;   /* jobs with a reply socket in epoll (poller; under mu) */
    struct dlink calls;     /* every accepted Generate/Probe call alive (under mu) */
    int n_pull_running;     /* pull jobs given to a worker and not done (under mu) */
    uint64_t quiet_resets;  /* calls ended before sending a request, not logged yet (under mu) */
    int64_t quiet_since_ms; /* CQ thread: when they were last summed up in the log */
    bool queue_blocked;
    bool stop_poller;
    int n_gen_calls; /* Generate calls alive */
    int n_live;      /* all call objects with an accepted call, alive */
    int n_waiting;   /* jobs not yet picked up by a worker (pending + unacked) */
    bool draining;
    int workers_left;            /* the master's last TN_FRONT_CTL_WORKERS; -1 = not told */
    bool health_changed;         /* workers_left fell to 0: the CQ thread tells watchers */
    bool stopping;               /* server shutdown started: streams are being ended */
    struct stream_call *streams; /* Watch and reflection calls alive (CQ thread) */
    struct dlink recving;        /* uploads with a RECV_MESSAGE outstanding (CQ thread) */
    int n_streams;
    uint64_t next_job_id;
    int media_root_fd; /* --media-root opened O_PATH; -1 = local mode off; owned */
    /* unix: listeners (see bind_name()): the public path, and the inode of our
     * socket linked there, so that we remove it at exit only if it is ours. */
    struct unix_link {
        char pub[PATH_MAX];
        dev_t dev;
        ino_t ino;
    } unix_links[TN_MAX_LISTEN];
    size_t n_unix;
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

/*
 * The access line of a call other than Generate: an unknown method at INFO;
 * health checks and reflection at DEBUG only, or load-balancer probes would
 * drown the log (they are counted in the metrics either way).
 */
static void log_other_call(int level, grpc_call *call, const char *method, int code,
                           const struct timespec *started, const char *message)
{
    if (level > tn_log_level())
        return;
    char *peer = grpc_call_get_peer(call);
    struct tn_log_access a = {
        .method = method,
        .peer = peer,
        .ms = elapsed_ms(started),
        .status = tn_code_name(code),
        .message = message,
    };
    tn_log_access(level, &a);
    gpr_free(peer);
}

/* Bytes of results mapped in the front, all calls (--max-result-bytes). */
static uint64_t held_result_bytes;

static void free_result(struct result *r)
{
    if (!r)
        return;
    if (r->map && r->map != MAP_FAILED && r->meta.size) {
        munmap(r->map, r->meta.size);
        __atomic_sub_fetch(&held_result_bytes, r->meta.size, __ATOMIC_RELAXED);
    }
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
    c->spool_fd = c->reply_fd = c->worker_fd = c->pull_fd = -1;
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
        /* A call whose status never went out was cancelled (client gone). */
        int code = c->status_sent ? c->status_code : TN_CANCELLED;
        double ms = elapsed_ms(&c->started);
        /* Reset before it sent anything, or refused as over a limit before it
         * could (a rapid-reset flood is all these): counted in the metrics,
         * summed up in the log (log_quiet_resets()). */
        bool quiet =
            (code == TN_CANCELLED || c->refused_early) && !c->have_options && c->received == 0;
        pthread_mutex_lock(&f->mu);
        dlink_remove(&c->all_link);
        if (quiet)
            f->quiet_resets++;
        pthread_mutex_unlock(&f->mu);
        struct tn_log_access a = {
            .method =
                c->probe ? "thumbnail.v1.Thumbnailer/Probe" : "thumbnail.v1.Thumbnailer/Generate",
            .peer = c->peer,
            .file = c->job.file_name,
            .bytes_in = c->received,
            .bytes_out = c->bytes_out,
            .thumbnails = c->thumbs_out,
            .ms = ms,
            .status = tn_code_name(code),
            .message = c->status_sent ? c->status_msg : "",
            .mode = c->pull    ? "pull"
                    : c->local ? "local"
                               : NULL,
        };
        tn_log_access(quiet ? TN_LOG_DEBUG : TN_LOG_INFO, &a);
        tn_metrics_call_handled(c->probe ? TN_M_PROBE : TN_M_GENERATE, code, ms / 1000);
        tn_metrics_front_spool_add(-(int64_t)c->received);
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
    if (c->pull_fd >= 0)
        close(c->pull_fd);
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

static grpc_byte_buffer *header_message(const struct tn_ipc_result *m, const char *reason,
                                        uint32_t kind)
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
    th.reason = (char *)reason;
    th.kind = (Thumbnail__V1__ThumbnailKind)kind;
    resp.msg_case = THUMBNAIL__V1__GENERATE_RESPONSE__MSG_THUMBNAIL;
    resp.thumbnail = &th;
    return tn_pb_pack(&resp.base);
}

static grpc_byte_buffer *range_message(uint64_t offset, uint64_t length)
{
    Thumbnail__V1__RangeRequest rr = THUMBNAIL__V1__RANGE_REQUEST__INIT;
    Thumbnail__V1__GenerateResponse resp = THUMBNAIL__V1__GENERATE_RESPONSE__INIT;
    rr.offset = offset;
    rr.length = length;
    resp.msg_case = THUMBNAIL__V1__GENERATE_RESPONSE__MSG_RANGE_REQUEST;
    resp.range_request = &rr;
    return tn_pb_pack(&resp.base);
}

static void finish_locked(struct gen_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Start the next send batch if none is outstanding: a range request (between
 * thumbnails, never inside one), results, then the status. */
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
    bool range = !c->dead && !c->cur && c->range_to_send && !c->status_set;
    if (range) {
        c->range_to_send = false;
        c->send_buf = range_message(c->range_off, c->range_len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_buf;
        n++;
    } else if (!c->dead && !c->cur && c->res_head) {
        c->cur = c->res_head;
        c->res_head = c->cur->next;
        if (!c->res_head)
            c->res_tail = NULL;
        c->cur_header_sent = false;
        c->cur_off = 0;
    }
    if (range) {
        /* the range request is in ops */
    } else if (!c->dead && c->cur && c->probe) {
        /* ProbeResponse{json}: the whole result in one message, then done */
        Thumbnail__V1__ProbeResponse pr = THUMBNAIL__V1__PROBE_RESPONSE__INIT;
        char *json = strndup((const char *)c->cur->map, (size_t)c->cur->meta.size);
        pr.json = json ? json : "";
        c->send_buf = tn_pb_pack(&pr.base);
        free(json);
        size_t len = grpc_byte_buffer_length(c->send_buf);
        if (len > c->f->cfg->max_message_bytes) {
            /* gRPC would refuse the send and log nothing useful: say it ourselves */
            grpc_byte_buffer_destroy(c->send_buf);
            c->send_buf = NULL;
            free_result(c->cur);
            c->cur = NULL;
            finish_locked(c, TN_RESOURCE_EXHAUSTED,
                          "the probe result is %zu bytes, over this server's --max-message-bytes "
                          "of %" PRIu64,
                          len, c->f->cfg->max_message_bytes);
            return;
        }
        c->cur_off = c->cur->meta.size;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_buf;
        n++;
    } else if (!c->dead && c->cur) {
        if (!c->cur_header_sent) {
            c->send_buf = header_message(&c->cur->meta, c->cur->reason, c->cur->kind);
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
    c->send_since_ms = tn_mono_ms();
    gen_ref_locked(c);
    start_batch(c->call, ops, n, &c->t_send);
}

/* Set the call's final status (first one wins) and send it when the results are out. */
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
        tn_metrics_msg_sent(c->probe ? TN_M_PROBE : TN_M_GENERATE);
        if (!c->cur_header_sent) {
            c->cur_header_sent = true;
        } else {
            uint64_t left = c->cur->meta.size - c->cur_off;
            uint64_t len = left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size;
            c->cur_off += len;
            c->bytes_out += len;
            tn_metrics_bytes_sent(len);
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
    /* Under the lock: a pull or local job is queued as soon as its options
     * arrive, and the poller reads spool_fd under c->mu when it dispatches
     * (it skips a call whose status is set, and sets spool_fd to -1 once the
     * job has left). */
    pthread_mutex_lock(&c->mu);
    if (c->spool_fd >= 0) {
        close(c->spool_fd);
        c->spool_fd = -1;
    }
    finish_locked(c, code, "%s", msg);
    abandon_job_locked(c); /* pull mode: a job is running already */
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
 * (minus the margin, see SPOOL_MARGIN) now, rather
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
    uint64_t total = (uint64_t)sv.f_blocks * bsize;
    uint64_t margin = total / 100;
    uint64_t floor_margin =
        total / SPOOL_MARGIN_SHARE < SPOOL_MARGIN ? total / SPOOL_MARGIN_SHARE : SPOOL_MARGIN;
    if (margin < floor_margin)
        margin = floor_margin;
    uint64_t usable = avail > margin ? avail - margin : 0;
    if (c->declared <= usable)
        return 0;
    gen_fail(c, TN_RESOURCE_EXHAUSTED,
             "the server's spool (--spool-dir) has %" PRIu64 " MiB free, the upload needs %" PRIu64
             " MiB; retry later",
             usable >> 20, (c->declared + (1u << 20) - 1) >> 20);
    return -1;
}

/* ---- local mode ---- */

/*
 * Open local_path under --media-root for a local-mode job (media_root.h).
 * Returns the fd and its size, or fails the call (the status says why, in the
 * user's terms) and returns -1.
 */
static int open_local(struct gen_call *c, const char *path, uint64_t *size)
{
    struct front *f = c->f;
    if (f->media_root_fd < 0) {
        gen_fail(c, TN_FAILED_PRECONDITION,
                 "local mode is off on this server (no --media-root): upload the file instead");
        return -1;
    }
    /* CQ thread only. TN_NO_OPENAT2 in the environment forces the fallback, so
     * that the tests cover it on kernels that have openat2. */
    static int how = -1;
    if (how < 0)
        how = getenv("TN_NO_OPENAT2") ? TN_MEDIA_WALK : TN_MEDIA_OPENAT2;
    enum tn_media_resolve r = (enum tn_media_resolve)how;
    int code;
    char msg[STATUS_MAX];
    int fd = tn_media_root_open(f->media_root_fd, path, &r, size, &code, msg, sizeof(msg));
    how = (int)r;
    if (fd < 0) {
        gen_fail(c, code, "%s", msg);
        return -1;
    }
    return fd;
}

/* The proto's Options into c->job.opts, defaults filled in and checked.
 * Returns 0 or fails the call (INVALID_ARGUMENT) and returns -1. */
static int take_job_opts(struct gen_call *c, const Thumbnail__V1__Options *o)
{
    struct tn_job_opts *j = &c->job.opts;
    char err[TN_IPC_MESSAGE_MAX];

    memset(j, 0, sizeof(*j));
    /* the enums are the proto's numbers; the check refuses unknown ones */
    j->format = o->format >= 0 && o->format <= UINT8_MAX ? (uint8_t)o->format : UINT8_MAX;
    j->mode = o->mode >= 0 && o->mode <= UINT8_MAX ? (uint8_t)o->mode : UINT8_MAX;
    j->fit = o->fit >= 0 && o->fit <= UINT8_MAX ? (uint8_t)o->fit : UINT8_MAX;
    j->n_times = o->n_times > UINT32_MAX ? UINT32_MAX : (uint32_t)o->n_times;
    for (size_t i = 0; i < o->n_times && i < TN_JOB_MAX_TIMES; i++) {
        const Thumbnail__V1__TimePoint *t = o->times[i];
        struct tn_time_point *tp = &j->times[i];
        if (t->point_case == THUMBNAIL__V1__TIME_POINT__POINT_SECONDS) {
            tp->kind = TN_TIME_SECONDS;
            tp->value = t->seconds;
        } else if (t->point_case == THUMBNAIL__V1__TIME_POINT__POINT_PERCENT) {
            tp->kind = TN_TIME_PERCENT;
            tp->value = t->percent;
        }
    }
    j->max_width = o->max_width;
    j->max_height = o->max_height;
    j->upscale = o->upscale ? 1 : 0;
    j->quality = o->quality;
    j->lossless = o->lossless ? 1 : 0;
    j->png_level = o->png_level;
    j->pad_color = o->pad_color;
    j->count = o->count;
    j->every = o->every;
    j->cover_art = o->cover_art ? 1 : 0;
    j->storyboard = o->storyboard ? 1 : 0;
    j->tile_width = o->tile_width;
    j->columns = o->columns;
    j->probe = c->probe ? 1 : 0;
    tn_job_opts_defaults(j);
    if (tn_job_opts_check(j, err, sizeof(err)) != TN_OK) {
        gen_fail(c, TN_INVALID_ARGUMENT, "%s", err);
        return -1;
    }
    return 0;
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
    bool local = o->local_path && o->local_path[0];
    if (o->pull && local) {
        gen_fail(c, TN_INVALID_ARGUMENT, "pull and local_path cannot be used together");
        return -1;
    }
    if (o->pull && o->size == 0) {
        gen_fail(c, TN_INVALID_ARGUMENT, "pull mode needs the file's size in options.size");
        return -1;
    }
    /* Pull mode: --max-upload-bytes bounds the bytes pulled (see handle_reply). */
    if (!o->pull && !local && o->size > cfg->max_upload_bytes) {
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "file is %" PRIu64 " bytes, over this server's --max-upload-bytes of %" PRIu64,
                 o->size, cfg->max_upload_bytes);
        return -1;
    }
    if (take_job_opts(c, o) < 0)
        return -1;
    if (local) {
        int lfd = open_local(c, o->local_path, &c->file_size);
        if (lfd < 0)
            return -1;
        c->spool_fd = lfd;
        c->local = true;
        c->have_options = true;
        return 0;
    }
    c->pull = o->pull;
    c->declared = o->size;
    c->file_size = o->size;
    /* Pull mode: the spool file only holds the ranges pulled; ENOSPC while
     * writing them is RESOURCE_EXHAUSTED. */
    if (c->declared && !c->pull && check_spool_space(c) < 0)
        return -1;
    int fd = open_spool(cfg->spool_dir);
    if (fd < 0) {
        tn_log_error("cannot create a spool file in %s: %s", cfg->spool_dir, strerror(-fd));
        gen_fail(c, TN_UNAVAILABLE, "the server cannot store uploads right now (spool: %s)",
                 strerror(-fd));
        return -1;
    }
    c->spool_fd = fd;
    if (c->pull && (c->pull_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        tn_log_error("dup() of a spool file failed: %s", strerror(errno));
        gen_fail(c, TN_UNAVAILABLE, "the server is out of resources (%s)", strerror(errno));
        return -1;
    }
    c->have_options = true;
    return 0;
}

/* Pull mode: one RangeData message. Returns 0 or fails the call and returns -1. */
static int take_range(struct gen_call *c, uint64_t offset, const uint8_t *data, size_t len)
{
    pthread_mutex_lock(&c->mu);
    bool out = c->range_out;
    uint64_t want = c->range_off + c->range_got, left = c->range_len - c->range_got;
    pthread_mutex_unlock(&c->mu);
    if (!out) {
        gen_fail(c, TN_INVALID_ARGUMENT,
                 "range_data (%zu bytes at offset %" PRIu64 ") sent while no range was requested",
                 len, offset);
        return -1;
    }
    if (offset != want || len == 0 || len > left) {
        gen_fail(c, TN_INVALID_ARGUMENT,
                 "range_data of %zu bytes at offset %" PRIu64 " does not answer the request: "
                 "%" PRIu64 " more bytes were expected at offset %" PRIu64,
                 len, offset, left, want);
        return -1;
    }
    for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(c->pull_fd, data + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            tn_log_error("pwrite() to spool file failed: %s", strerror(e));
            gen_fail(c, e == ENOSPC || e == EDQUOT ? TN_RESOURCE_EXHAUSTED : TN_UNAVAILABLE,
                     "the server could not store the pulled bytes: %s", strerror(e));
            return -1;
        }
        done += (size_t)n;
    }
    c->received += len;
    tn_metrics_front_spool_add((int64_t)len); /* released in gen_destroy(), like uploads */

    pthread_mutex_lock(&c->mu);
    c->range_got += len;
    if (c->range_got == c->range_len) {
        c->range_out = false;
        struct tn_ipc_read rd;
        memset(&rd, 0, sizeof(rd));
        tn_ipc_header_init(&rd.h, TN_IPC_READ_REPLY, c->job.h.job_id);
        rd.offset = c->range_off;
        rd.length = c->range_len;
        /* The worker waits for this: its socket buffer is empty. -EPIPE: the
         * worker is gone, which the poller reports. */
        int rc =
            c->reply_fd >= 0 ? tn_ipc_send(c->reply_fd, &rd, sizeof(rd), NULL, 0, MSG_DONTWAIT) : 0;
        if (rc < 0 && rc != -EPIPE) {
            tn_log_error("sending READ_REPLY of job %" PRIu64 " failed: %s", c->job.h.job_id,
                         strerror(-rc));
            finish_locked(c, TN_INTERNAL, "the server lost track of the job");
            abandon_job_locked(c);
        }
    }
    pthread_mutex_unlock(&c->mu);
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
        tn_metrics_bytes_received((uint64_t)n);
        tn_metrics_front_spool_add(n); /* released in gen_destroy() */
    }
    return 0;
}

/*
 * A GenerateRequest made of the data field (2) alone: tag 0x12, a varint
 * length n, then n bytes. p[0..avail) is the start of the message, total its
 * whole length. Returns the header's length (the bytes start after it) with
 * *n set, or 0 when the message is anything else (then protobuf-c decodes it).
 */
static size_t data_field_header(const unsigned char *p, size_t avail, uint64_t total, uint64_t *n)
{
    if (avail < 2 || p[0] != 0x12)
        return 0;
    *n = 0;
    size_t i = 1;
    for (int shift = 0;; shift += 7) {
        if (i >= avail || shift >= 64)
            return 0;
        *n |= (uint64_t)(p[i] & 0x7f) << shift;
        if (!(p[i++] & 0x80))
            break;
    }
    return *n == total - i ? i : 0;
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
    /* pull mode writes ranges at their offsets (take_range), local mode has no upload */
    if (c->pull || c->local || bb->type != GRPC_BB_RAW ||
        bb->data.raw.compression != GRPC_COMPRESS_NONE)
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
    uint64_t n;
    size_t i = data_field_header(hdr, nh, sb->length, &n);
    if (!i)
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
            tn_metrics_bytes_received((uint64_t)w);
            tn_metrics_front_spool_add(w); /* released in gen_destroy() */
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

    uint64_t size = c->pull || c->local ? c->file_size : c->received;
    if (size == 0) {
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

    uint64_t held = __atomic_load_n(&held_result_bytes, __ATOMIC_RELAXED);
    if (cfg->max_result_bytes && held >= cfg->max_result_bytes) {
        /* Refused rather than queued: what holds the bytes may be clients that
         * read slowly or not at all (ended after --idle-timeout), and a queued
         * job would add its own results on top. */
        close(sp[0]);
        close(sp[1]);
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "server busy: %" PRIu64 " MiB of thumbnails wait for their clients to read them "
                 "(--max-result-bytes %" PRIu64 " MiB); retry later",
                 held >> 20, cfg->max_result_bytes >> 20);
        return;
    }
    pthread_mutex_lock(&f->mu);
    bool no_workers = f->workers_left == 0;
    bool full = !no_workers && f->n_waiting >= cfg->max_queued_jobs;
    uint64_t id = ++f->next_job_id;
    if (!full && !no_workers)
        f->n_waiting++;
    tn_metrics_front_queue_depth(f->n_waiting);
    pthread_mutex_unlock(&f->mu);
    if (no_workers) {
        close(sp[0]);
        close(sp[1]);
        gen_fail(c, TN_UNAVAILABLE, NO_WORKERS_MSG);
        return;
    }
    if (full) {
        close(sp[0]);
        close(sp[1]);
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "server busy: %d jobs already wait for a worker (--max-queued-jobs); retry later",
                 cfg->max_queued_jobs);
        return;
    }

    tn_ipc_header_init(&c->job.h, TN_IPC_JOB, id);
    c->job.file_size = size;
    c->job.deadline_ms = dl;
    c->job.pull = c->pull ? 1 : 0;

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
    if (bb)
        c->window_bytes += grpc_byte_buffer_length(bb);

    pthread_mutex_lock(&c->mu);
    bool stop = c->dead || c->status_set;
    pthread_mutex_unlock(&c->mu);
    if (stop)
        goto out;

    if ((!ok || !bb) && c->pull && c->have_options) {
        /* Pull mode: a half-close is fine unless the worker waits for bytes. */
        pthread_mutex_lock(&c->mu);
        c->recv_closed = true;
        bool out = c->range_out;
        uint64_t off = c->range_off + c->range_got, left = c->range_len - c->range_got;
        pthread_mutex_unlock(&c->mu);
        if (out)
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "the request stream ended while the server waited for %" PRIu64
                     " bytes at offset %" PRIu64 " (pull mode: keep it open until the status)",
                     left, off);
        goto out;
    }
    if (!ok || !bb) {
        /* The stream ended (half-close or cancel: gRPC core reports both alike)
         * before the upload was complete. Never process a truncated upload. */
        if (!c->have_options && grpc_call_failed_before_recv_message(c->call)) {
            pthread_mutex_lock(&c->mu); /* a reset, not a request: status CANCELLED */
            c->dead = true;
            pthread_mutex_unlock(&c->mu);
        } else if (!c->have_options)
            gen_fail(c, TN_INVALID_ARGUMENT, "the request stream ended before the options");
        else
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "the upload ended after %" PRIu64 " bytes without an end message%s",
                     c->received, c->declared ? " or the declared size" : "");
        goto out;
    }

    tn_metrics_msg_received(c->probe ? TN_M_PROBE : TN_M_GENERATE);
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
    uint64_t n;
    size_t i;
    if (c->have_options && !c->pull && (i = data_field_header(p, len, len, &n)) != 0) {
        if (spool_write(c, p + i, (size_t)n) < 0)
            goto out_slice;
        complete = c->declared && c->received == c->declared;
        goto handled;
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
            complete = rc == 0 && (c->pull || c->local); /* nothing to upload */
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_RANGE_DATA:
        if (!c->pull) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "range_data is only for pull mode (options.pull); upload with data");
            rc = -1;
        } else {
            rc = take_range(c, req->range_data->offset, req->range_data->data.data,
                            req->range_data->data.len);
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_DATA:
        if (!c->have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "data before options; the first message must "
                     "carry the options");
            rc = -1;
        } else if (c->pull || c->local) {
            gen_fail(c, TN_INVALID_ARGUMENT, "data sent in %s mode, where nothing is uploaded",
                     c->pull ? "pull" : "local");
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
        } else if (c->pull || c->local) {
            gen_fail(c, TN_INVALID_ARGUMENT, "end sent in %s mode, where nothing is uploaded",
                     c->pull ? "pull" : "local");
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
    if (!complete || c->pull) /* pull mode: range data comes after the job started */
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
static void request_probe(struct front *f);
static void request_health(struct front *f);
static void request_generic(struct front *f);

static void simple_free(struct simple_call *s)
{
    struct front *f = s->f;
    bool accepted = s->call != NULL;
    if (accepted && s->kind == TAG_NEW_HEALTH) {
        int code = s->cancelled ? TN_CANCELLED : s->code;
        tn_metrics_call_handled(TN_M_HEALTH_CHECK, code, elapsed_ms(&s->started) / 1000);
        log_other_call(TN_LOG_DEBUG, s->call, "grpc.health.v1.Health/Check", code, &s->started,
                       NULL);
    }
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
    s->code = (int)code;
    if (msg) {
        if (s->kind == TAG_NEW_HEALTH)
            tn_metrics_msg_sent(TN_M_HEALTH_CHECK);
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

/* NOT_SERVING while draining, and while the master reports that no decode
 * worker is left (they all failed to start). */
static bool not_serving(struct front *f)
{
    pthread_mutex_lock(&f->mu);
    bool d = f->draining || f->workers_left == 0;
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

/*
 * --auth-token-file: NULL if the call may proceed (no token configured, or its
 * metadata carries "authorization: Bearer <token>"), else why not, as a status
 * message (static storage). The first authorization entry decides. The token
 * is never logged.
 */
static const char *auth_refusal(const struct front *f, const grpc_metadata_array *md)
{
    const struct tn_tls *t = f->cfg->tls;
    if (!t || !t->have_token)
        return NULL;
    for (size_t i = 0; i < md->count; i++) {
        if (grpc_slice_str_cmp(md->metadata[i].key, "authorization") != 0)
            continue;
        grpc_slice v = md->metadata[i].value;
        if (tn_tls_token_ok(t, (const char *)GRPC_SLICE_START_PTR(v), GRPC_SLICE_LENGTH(v)))
            return NULL;
        return "the authorization token was not accepted (expected 'Bearer <token>' with the "
               "server's token)";
    }
    return "this server requires a token: send the metadata 'authorization: Bearer <token>' "
           "(thumbnail_client --auth-token-file)";
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
    clock_gettime(CLOCK_MONOTONIC, &s->started);
    tn_metrics_call_started(TN_M_HEALTH_CHECK);
    if (s->payload)
        tn_metrics_msg_received(TN_M_HEALTH_CHECK);

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
    resp.status = not_serving(f)
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
    clock_gettime(CLOCK_MONOTONIC, &s->started);
    tn_metrics_unknown_method();
    char *method = grpc_slice_to_c_string(s->details.method);
    const char *refusal = auth_refusal(f, &s->md);
    if (refusal) { /* not even UNIMPLEMENTED: the method set is not for strangers */
        tn_log_info("%s: UNAUTHENTICATED", method);
        gpr_free(method);
        simple_answer(s, NULL, GRPC_STATUS_UNAUTHENTICATED, refusal);
        return;
    }
    char msg[400];
    snprintf(msg, sizeof(msg), "method %.300s is not implemented by this server", method);
    for (char *p = method; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"')
            *p = '?'; /* the client's text in our log: one line */
    log_other_call(TN_LOG_INFO, s->call, *method == '/' ? method + 1 : method, TN_UNIMPLEMENTED,
                   &s->started, msg);
    gpr_free(method);
    simple_answer(s, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
}

/* The peer's address without the port, for --max-calls-per-peer:
 * "ipv4:10.0.0.7:5123" -> "ipv4:10.0.0.7", "ipv6:[::1]:5123" -> "ipv6:[::1]".
 * A unix: peer gives "": local clients admitted by the socket's file
 * permissions all look alike (no address), so a per-peer cap would be a
 * second global cap; --max-concurrent-calls bounds them. */
static void peer_address(const char *peer, char *out, size_t len)
{
    out[0] = '\0';
    if (!strncmp(peer, "unix:", 5) || !strncmp(peer, "unix-abstract:", 14))
        return;
    const char *end = strrchr(peer, ':');
    const char *colon = strchr(peer, ':');
    if (!end || end == colon) /* no port: keep it all */
        end = peer + strlen(peer);
    snprintf(out, len, "%.*s", (int)(end - peer), peer);
}

static void on_new_generate(struct gen_call *c, bool ok)
{
    struct front *f = c->f;
    if (!ok) {
        gen_destroy(c); /* never accepted: refs are 0 */
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &c->started);
    tn_metrics_call_started(c->probe ? TN_M_PROBE : TN_M_GENERATE);
    char *peer = grpc_call_get_peer(c->call);
    snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "?");
    gpr_free(peer);
    peer_address(c->peer, c->peer_addr, sizeof(c->peer_addr));

    pthread_mutex_lock(&f->mu);
    f->n_live++;
    f->n_gen_calls++;
    int n = f->n_gen_calls;
    bool no_workers = f->workers_left == 0;
    dlink_push(&f->calls, &c->all_link);
    int same_peer = 0;
    if (c->peer_addr[0] && f->cfg->max_calls_per_peer > 0)
        for (struct dlink *l = f->calls.next; l != &f->calls; l = l->next)
            same_peer +=
                !strcmp(DLINK_ENTRY(l, struct gen_call, all_link)->peer_addr, c->peer_addr);
    pthread_mutex_unlock(&f->mu);
    if (c->probe)
        request_probe(f);
    else
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

    const char *refusal = auth_refusal(f, &c->md);
    if (refusal) {
        gen_fail(c, TN_UNAUTHENTICATED, "%s", refusal);
        return;
    }
    /* A call that arrives while draining is served: the server stopped
     * listening and sent GOAWAY when the drain began, so only calls the
     * client had already started get here, and they are in flight. */
    if (no_workers) {
        gen_fail(c, TN_UNAVAILABLE, NO_WORKERS_MSG);
        return;
    }
    if (n > f->cfg->max_concurrent_calls) {
        c->refused_early = true;
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "server busy: %d calls in progress (--max-concurrent-calls %d); retry later",
                 n - 1, f->cfg->max_concurrent_calls);
        return;
    }
    if (f->cfg->max_calls_per_peer > 0 && same_peer > f->cfg->max_calls_per_peer) {
        c->refused_early = true;
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "too many calls from %s: %d in progress (--max-calls-per-peer %d); retry later",
                 c->peer_addr, same_peer - 1, f->cfg->max_calls_per_peer);
        return;
    }
    c->window_start_ms = c->last_msg_ms;
    request_message(c);
}

static void request_generate(struct front *f)
{
    struct gen_call *c = gen_new(f);
    grpc_call_error e = grpc_server_request_registered_call(
        f->server, f->m_generate, &c->call, &c->deadline, &c->md, NULL, f->cq, f->cq, &c->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

/* engine: Probe calls are Generate calls with c->probe set (same upload,
 * same job path; the worker answers with JSON, sent as one ProbeResponse). */
static void request_probe(struct front *f)
{
    struct gen_call *c = gen_new(f);
    c->probe = true;
    grpc_call_error e = grpc_server_request_registered_call(
        f->server, f->m_probe, &c->call, &c->deadline, &c->md, NULL, f->cq, f->cq, &c->t_new);
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
    struct timespec started;         /* metrics: accepted at */
};

static enum tn_metrics_method stream_method(const struct stream_call *s)
{
    return s->kind == TAG_NEW_WATCH  ? TN_M_HEALTH_WATCH
           : s->kind == TAG_NEW_REFL ? TN_M_REFLECTION
                                     : TN_M_REFLECTION_ALPHA;
}

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
        int code = s->status_sent ? (int)s->end_code : TN_CANCELLED;
        tn_metrics_call_handled(stream_method(s), code, elapsed_ms(&s->started) / 1000);
        log_other_call(TN_LOG_DEBUG, s->call,
                       s->kind == TAG_NEW_WATCH  ? "grpc.health.v1.Health/Watch"
                       : s->kind == TAG_NEW_REFL ? "grpc.reflection.v1.ServerReflection/"
                                                   "ServerReflectionInfo"
                                                 : "grpc.reflection.v1alpha.ServerReflection/"
                                                   "ServerReflectionInfo",
                       code, &s->started, s->status_sent ? s->end_msg : NULL);
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
    return not_serving(f) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
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
    clock_gettime(CLOCK_MONOTONIC, &s->started);
    tn_metrics_call_started(stream_method(s));
    if (s->payload)
        tn_metrics_msg_received(TN_M_HEALTH_WATCH);

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
    /* Reflection needs the token (grpcurl -H 'authorization: Bearer ...'); Watch does not. */
    const char *refusal = s->kind != TAG_NEW_WATCH ? auth_refusal(f, &s->md) : NULL;
    if (refusal) {
        tn_log_info("ServerReflectionInfo: UNAUTHENTICATED");
        stream_end(s, GRPC_STATUS_UNAUTHENTICATED, refusal);
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
        tn_metrics_msg_received(stream_method(s));
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
    if (s->send_buf && ok)
        tn_metrics_msg_sent(stream_method(s));
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
    if (c->pull_running) {
        c->pull_running = false;
        f->n_pull_running--;
    }
    tn_metrics_front_queue_depth(f->n_waiting);
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
        if (c->dead || c->status_set) {
            *pp = c->pend_next;
            if (f->pend_tail == c)
                f->pend_tail = prev;
            close(c->worker_fd);
            c->worker_fd = -1;
            job_release_locked(f, c, false, &l);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        if (c->job.pull && f->n_pull_running >= pull_cap) {
            pthread_mutex_unlock(&c->mu);
            prev = c;
            pp = &c->pend_next;
            continue;
        }
        int fds[2] = {c->spool_fd, c->worker_fd};
        int rc = tn_ipc_send(f->queue_fd, &c->job, sizeof(c->job), fds, 2, MSG_DONTWAIT);
        if (rc == -EAGAIN) {
            pthread_mutex_unlock(&c->mu);
            set_queue_blocked_locked(f, true);
            blocked = true;
            break;
        }
        *pp = c->pend_next;
        if (f->pend_tail == c)
            f->pend_tail = prev;
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
        if (c->job.pull) {
            c->pull_running = true;
            f->n_pull_running++;
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
    __atomic_add_fetch(&held_result_bytes, m->size, __ATOMIC_RELAXED); /* free_result() */
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
                break;
            }
            if (c->dead || c->status_set) {
                free_result(r);
                break;
            }
            if (c->next_info.h.type == TN_IPC_RESULT_INFO && c->next_info.index == r->meta.index) {
                memcpy(r->reason, c->next_info.reason, sizeof(r->reason));
                r->kind = c->next_info.kind;
            }
            c->next_info.h.type = 0;
            if (c->res_tail)
                c->res_tail->next = r;
            else
                c->res_head = r;
            c->res_tail = r;
            kick_send_locked(c);
            break;
        }
        case TN_IPC_RESULT_INFO:
            m.info.reason[sizeof(m.info.reason) - 1] = 0;
            c->next_info = m.info;
            break;
        case TN_IPC_READ: {
            const struct tn_config *cfg = f->cfg;
            uint64_t off = m.read.offset, len = m.read.length, size = c->job.file_size;
            if (!c->job.pull || c->range_out || len == 0 || len > TN_IPC_READ_MAX || off > size ||
                len > size - off) {
                tn_log_error("job %" PRIu64 ": bad read request %" PRIu64 "+%" PRIu64
                             " (pull %d, size %" PRIu64 ", %s outstanding)",
                             c->job.h.job_id, off, len, c->job.pull, size,
                             c->range_out ? "one" : "none");
                finish_locked(c, TN_INTERNAL, "the decode worker sent a malformed read request");
                abandon_job_locked(c);
            } else if (c->dead || c->status_set) {
                abandon_job_locked(c); /* ending: nobody will answer */
            } else if (c->recv_closed) {
                finish_locked(c, TN_INVALID_ARGUMENT,
                              "the client closed its request stream, but the server needs more "
                              "of the file (%" PRIu64 " bytes at offset %" PRIu64
                              "); pull mode: keep it open until the status",
                              len, off);
                abandon_job_locked(c);
            } else if (c->pulled + len > cfg->max_upload_bytes) {
                finish_locked(c, TN_RESOURCE_EXHAUSTED,
                              "pull mode: the file needs more than this server's "
                              "--max-upload-bytes of %" PRIu64 " bytes read",
                              cfg->max_upload_bytes);
                abandon_job_locked(c);
            } else {
                c->pulled += len;
                c->range_out = true;
                c->range_to_send = true;
                c->range_off = off;
                c->range_len = len;
                c->range_got = 0;
                c->range_since_ms = tn_mono_ms();
                kick_send_locked(c);
            }
            break;
        }
        case TN_IPC_DONE:
            m.done.message[sizeof(m.done.message) - 1] = 0;
            if (m.done.code == TN_DEADLINE_EXCEEDED && c->range_out)
                finish_locked(c, TN_DEADLINE_EXCEEDED,
                              "deadline exceeded while the server waited for the client to send "
                              "%" PRIu64 " bytes at offset %" PRIu64 " (pull mode)",
                              c->range_len - c->range_got, c->range_off + c->range_got);
            else if (m.done.code == TN_OK)
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
                tn_metrics_worker_mark_timeout(c->worker_pid); /* its restart: "timeout" */
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

/* The master's word on the control socket (front.h). When the worker pool is
 * gone for good, jobs that no worker took yet would only wait for their
 * deadline: end them now. */
static void read_ctl(struct front *f)
{
    for (;;) {
        struct tn_front_ctl msg;
        ssize_t n = recv(f->ctl_fd, &msg, sizeof(msg), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) { /* the master is gone: PDEATHSIG stops us */
            epoll_ctl(f->epfd, EPOLL_CTL_DEL, f->ctl_fd, NULL);
            return;
        }
        if (n != (ssize_t)sizeof(msg) || msg.type != TN_FRONT_CTL_WORKERS) {
            tn_log_warn("unexpected message on the control socket (%zd bytes)", n);
            continue;
        }
        pthread_mutex_lock(&f->mu);
        bool lost = msg.value == 0 && f->workers_left != 0;
        f->workers_left = msg.value;
        if (lost) {
            f->health_changed = true;
            for (struct gen_call *c = f->pend_head; c; c = c->pend_next) {
                pthread_mutex_lock(&c->mu);
                finish_locked(c, TN_UNAVAILABLE, NO_WORKERS_MSG);
                pthread_mutex_unlock(&c->mu);
            }
            for (struct dlink *l = f->running.next; l != &f->running; l = l->next) {
                struct gen_call *c = DLINK_ENTRY(l, struct gen_call, run_link);
                pthread_mutex_lock(&c->mu);
                if (c->worker_pid <= 0) {
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

/* ------------------------------------------------------------------------ */
/* --idle-timeout (CQ thread)                                                */

/* End uploads that have waited for a message longer than --idle-timeout, or
 * that sent less than --min-upload-rate's bytes in a window of it (a trickle
 * of tiny messages, one per stream, keeps a per-message timer from ever
 * firing: the rate does not care how many messages carry the bytes); in pull
 * mode, a range request unanswered for --range-timeout. The status ends the
 * call; its outstanding RECV_MESSAGE then completes and on_recv() sees
 * status_set and releases its reference, so the call, its slot and its spool
 * file go away as for any other failed upload. */
static void check_idle(struct front *f, int64_t now)
{
    const struct tn_config *cfg = f->cfg;
    int64_t idle = (int64_t)(cfg->idle_timeout_s * 1000);
    /* a range waits for the shorter of --range-timeout and --idle-timeout */
    int64_t range = (int64_t)(cfg->range_timeout_s * 1000);
    bool range_flag = range > 0 && (idle <= 0 || range < idle);
    if (!range_flag)
        range = idle;
    int64_t window = (int64_t)(cfg->min_upload_window_s * 1000);
    for (struct dlink *l = f->recving.next; l != &f->recving; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, recv_link);
        if (c->idle_ended)
            continue;
        int64_t since = c->last_msg_ms;
        if (c->pull && c->have_options) {
            /* Pull mode: silence is normal while the worker decodes; only an
             * unanswered range request counts. */
            pthread_mutex_lock(&c->mu);
            bool out = c->range_out;
            if (c->range_since_ms > since)
                since = c->range_since_ms;
            pthread_mutex_unlock(&c->mu);
            if (!out || range <= 0 || now - since < range)
                continue;
            c->idle_ended = true;
            tn_log_info("Generate peer=%s: a range request unanswered for %g s: ending it", c->peer,
                        (double)range / 1000);
            gen_fail(c, TN_DEADLINE_EXCEEDED,
                     "the client did not answer a range request for %g s; the call was ended "
                     "(%s)",
                     (double)range / 1000, range_flag ? "--range-timeout" : "--idle-timeout");
            continue;
        }
        if (idle > 0 && now - since >= idle) {
            c->idle_ended = true;
            tn_log_info("Generate peer=%s: no upload data for %g s: ending it", c->peer,
                        cfg->idle_timeout_s);
            gen_fail(c, TN_DEADLINE_EXCEEDED,
                     "no upload data for %g s; the call was ended (--idle-timeout)",
                     cfg->idle_timeout_s);
            continue;
        }
        if (!cfg->min_upload_bytes || now - c->window_start_ms < window)
            continue;
        if (c->window_bytes >= cfg->min_upload_bytes) {
            c->window_start_ms = now;
            c->window_bytes = 0;
            continue;
        }
        c->idle_ended = true;
        tn_log_info("Generate peer=%s: %" PRIu64
                    " bytes in %g s, under --min-upload-rate: ending it",
                    c->peer, c->window_bytes, cfg->min_upload_window_s);
        gen_fail(c, TN_DEADLINE_EXCEEDED,
                 "the upload sent %" PRIu64 " bytes in %g s, less than this server's "
                 "--min-upload-rate of %" PRIu64 " bytes per %g s; the call was ended",
                 c->window_bytes, cfg->min_upload_window_s, cfg->min_upload_bytes,
                 cfg->min_upload_window_s);
    }
}

/* The send side of --idle-timeout: a client that reads none of its responses
 * for that long (one send batch outstanding all the while: HTTP/2 flow
 * control holds it) is ended with DEADLINE_EXCEEDED, and its results, the
 * worker's memfds mapped here, are freed at once rather than when gRPC gives
 * up on the connection. CQ thread. */
static void check_send_stall(struct front *f, int64_t now)
{
    double t = f->cfg->idle_timeout_s;
    if (t <= 0)
        return;
    int64_t limit = (int64_t)(t * 1000);
    pthread_mutex_lock(&f->mu);
    for (struct dlink *l = f->calls.next; l != &f->calls; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, all_link);
        pthread_mutex_lock(&c->mu);
        if (c->sending && !c->dead && now - c->send_since_ms >= limit) {
            c->dead = true;
            drop_results(c);
            abandon_job_locked(c);
            c->status_set = c->status_sent = true; /* the cancel below sends it */
            c->status_code = TN_DEADLINE_EXCEEDED;
            snprintf(c->status_msg, sizeof(c->status_msg),
                     "the client read no response for %g s; the call was ended (--idle-timeout)",
                     t);
            tn_log_info("Generate peer=%s: reads nothing for %g s: ending it", c->peer, t);
            grpc_call_cancel_with_status(c->call, GRPC_STATUS_DEADLINE_EXCEEDED, c->status_msg,
                                         NULL);
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&f->mu);
}

/* Calls reset before they sent a request get no access line each (a flood of
 * them would write one per reset): one summary line a second at most. */
static void log_quiet_resets(struct front *f, int64_t now)
{
    if (now - f->quiet_since_ms < 1000)
        return;
    pthread_mutex_lock(&f->mu);
    uint64_t n = f->quiet_resets;
    f->quiet_resets = 0;
    pthread_mutex_unlock(&f->mu);
    if (n)
        tn_log_info("%" PRIu64 " call(s) ended before sending a request (reset by the client, or "
                    "refused as over a call limit) in the last %.1f s (not logged one by one)",
                    n, (double)(now - f->quiet_since_ms) / 1000);
    f->quiet_since_ms = now;
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

/*
 * gRPC's own diagnostics go to our log instead of a stderr that a daemon sends
 * to /dev/null: a refused TLS handshake (a client without a certificate, with
 * a rogue one, or speaking plaintext) is only ever reported there. They are
 * the peer's fault, not the server's, hence WARN for gRPC's ERROR.
 */
static void log_from_grpc(gpr_log_func_args *a)
{
    int level = a->severity == GPR_LOG_SEVERITY_ERROR  ? TN_LOG_WARN
                : a->severity == GPR_LOG_SEVERITY_INFO ? TN_LOG_INFO
                                                       : TN_LOG_DEBUG;
    const char *file = a->file ? strrchr(a->file, '/') : NULL;
    tn_log(level, "grpc: %s (%s:%d)", a->message,
           file      ? file + 1
           : a->file ? a->file
                     : "?",
           a->line);
}

/* TLS server credentials from the material the master loaded; NULL if TLS is off. */
static grpc_server_credentials *server_tls_credentials(const struct tn_tls *t)
{
    if (!t || !t->cert_pem)
        return NULL;
    grpc_ssl_pem_key_cert_pair pair = {.private_key = t->key_pem, .cert_chain = t->cert_pem};
    return grpc_ssl_server_credentials_create_ex(
        t->client_ca_pem, &pair, 1,
        t->client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                         : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
}

/*
 * unix:PATH listeners and reload. gRPC unlinks a unix socket's path when its
 * listener closes, by name: an old front draining after a reload would remove
 * the path the new front listens on. So each front binds a private name,
 * "PATH.<pid>" (which gRPC may unlink as it likes), and then links its socket
 * to PATH atomically (link to a temporary name, rename over PATH): clients
 * always find a listening socket at PATH, the newest front's. At exit a front
 * removes PATH only if it is still its own socket. Returns the address to give
 * gRPC (in buf), or addr itself when it is not a unix: path or the private name
 * would not fit in sun_path (then a reload removes PATH: logged).
 */
static const char *bind_name(struct front *f, const char *addr, char *buf, size_t len)
{
    if (strncmp(addr, "unix:", 5) != 0)
        return addr;
    const char *p = addr + 5;
    if (strncmp(p, "//", 2) == 0)
        p += 2;
    int n = snprintf(buf, len, "unix:%s.%d", p, (int)getpid());
    if (n < 0 || (size_t)n >= len || strlen(buf + 5) > 107) {
        tn_log_warn("%s: the path is too long to add .<pid>; a reload will remove it", addr);
        return addr;
    }
    struct unix_link *u = &f->unix_links[f->n_unix];
    snprintf(u->pub, sizeof(u->pub), "%s", p);
    u->ino = 0;
    f->n_unix++;
    return buf;
}

/* After the server started: link each private socket name to its public path. */
static int publish_unix(struct front *f)
{
    for (size_t i = 0; i < f->n_unix; i++) {
        struct unix_link *u = &f->unix_links[i];
        char priv[PATH_MAX + 16], tmp[PATH_MAX + 32];
        struct stat st;
        snprintf(priv, sizeof(priv), "%s.%d", u->pub, (int)getpid());
        snprintf(tmp, sizeof(tmp), "%s.%d.tmp", u->pub, (int)getpid());
        unlink(tmp);
        if (stat(priv, &st) < 0 || link(priv, tmp) < 0 || rename(tmp, u->pub) < 0) {
            tn_log_error("cannot make %s the socket %s: %s", u->pub, priv, strerror(errno));
            unlink(tmp);
            return -1;
        }
        u->dev = st.st_dev;
        u->ino = st.st_ino;
    }
    return 0;
}

static void unpublish_unix(struct front *f)
{
    for (size_t i = 0; i < f->n_unix; i++) {
        struct unix_link *u = &f->unix_links[i];
        struct stat st;
        if (u->ino && stat(u->pub, &st) == 0 && st.st_dev == u->dev && st.st_ino == u->ino)
            unlink(u->pub);
        /* gRPC removes the private name when its listener closes; a front that
         * never got that far leaves it: remove it too. */
        char priv[PATH_MAX + 16];
        snprintf(priv, sizeof(priv), "%s.%d", u->pub, (int)getpid());
        unlink(priv);
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
    struct epoll_event evc = {.events = EPOLLIN, .data.ptr = &f->ctl_fd};
    if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->evfd, &ev) < 0 ||
        epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->queue_fd, &evq) < 0 ||
        (f->ctl_fd >= 0 && epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->ctl_fd, &evc) < 0)) {
        tn_log_error("epoll_ctl() failed: %s", strerror(errno));
        return -1;
    }

    grpc_arg args[4];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)cfg->max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    /* --max-message-bytes both ways: a data message is --chunk-size plus a few
     * bytes, but a ProbeResponse is one message of any size up to this */
    args[1].value.integer = (int)cfg->max_message_bytes;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_ALLOW_REUSEPORT;
    /* A reload starts a new front beside the old one on the same addresses:
     * both must set SO_REUSEPORT, and the kernel then spreads new connections
     * over the listeners until the old front stops listening (its drain). */
    args[2].value.integer = 1;
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
    if (cfg->media_root) {
        f->media_root_fd = open(cfg->media_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (f->media_root_fd < 0) {
            tn_log_error("cannot open --media-root %s: %s", cfg->media_root, strerror(errno));
            return -1;
        }
        tn_log_info("local mode: paths are read under %s", cfg->media_root);
    }
    f->cq = grpc_completion_queue_create_for_next(NULL);
    f->server = grpc_server_create(&ca, NULL);
    grpc_server_register_completion_queue(f->server, f->cq, NULL);
    f->m_generate = grpc_server_register_method(f->server, "/thumbnail.v1.Thumbnailer/Generate",
                                                NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    f->m_probe = grpc_server_register_method(f->server, "/thumbnail.v1.Thumbnailer/Probe", NULL,
                                             GRPC_SRM_PAYLOAD_NONE, 0);
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
    grpc_server_credentials *plain = grpc_insecure_server_credentials_create();
    grpc_server_credentials *tls = server_tls_credentials(cfg->tls);
    int rc = 0;
    for (size_t i = 0; i < cfg->n_listen && rc == 0; i++) {
        bool is_unix = strncmp(cfg->listen[i], "unix:", 5) == 0;
        bool use_tls = tls && (!is_unix || cfg->tls_unix);
        char name[PATH_MAX + 32];
        int port = grpc_server_add_http2_port(
            f->server, bind_name(f, cfg->listen[i], name, sizeof(name)), use_tls ? tls : plain);
        if (port == 0) {
            tn_log_error("cannot listen on %s (address in use, bad address or no permission%s)",
                         cfg->listen[i], use_tls ? ", or the TLS set-up failed" : "");
            rc = -2;
            break;
        }
        tn_log_info("listening on %s (%s)", cfg->listen[i],
                    !use_tls                  ? "plaintext"
                    : cfg->tls->client_ca_pem ? "TLS, client certificate required"
                                              : "TLS");
    }
    grpc_server_credentials_release(plain);
    if (tls)
        grpc_server_credentials_release(tls);
    if (rc < 0)
        return rc;
    if (cfg->tls && cfg->tls->have_token)
        tn_log_info("calls need an authorization token (--auth-token-file); health checks do not");
    grpc_server_start(f->server);
    if (publish_unix(f) < 0)
        return -1;
    /* Several requests outstanding, not one: a call that arrives while none
     * is outstanding waits unmatched inside gRPC, and the shutdown that starts
     * a drain (reload, SIGTERM) cancels such calls (CANCELLED, not retried by
     * clients) instead of letting them finish. Each new call requests the next. */
    for (int i = 0; i < PREREQUESTED_CALLS; i++)
        request_generate(f);
    for (int i = 0; i < PREREQUESTED_PROBES; i++)
        request_probe(f);
    request_health(f);
    request_generic(f);
    request_stream(f, TAG_NEW_WATCH);
    request_stream(f, TAG_NEW_REFL);
    request_stream(f, TAG_NEW_REFL_ALPHA);
    return 0;
}

int tn_front_main(const struct tn_config *cfg, int queue_fd, int ctl_fd)
{
    struct front fr;
    struct front *f = &fr;
    int status = 1;
    memset(f, 0, sizeof(*f));
    dlink_init(&f->running);
    dlink_init(&f->recving);
    dlink_init(&f->calls);
    f->cfg = cfg;
    f->queue_fd = queue_fd;
    f->ctl_fd = ctl_fd;
    f->workers_left = -1;
    f->epfd = f->evfd = f->media_root_fd = -1;
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

    tn_metrics_front_attach();
    gpr_set_log_function(log_from_grpc);
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
        tn_notify_ready("serving on %s%s", cfg->listen[0], cfg->n_listen > 1 ? " and more" : "");
        status = 0;
        /* The master retires the previous generation (reload) on this word. */
        struct tn_front_ctl ready = {.type = TN_FRONT_CTL_READY, .value = 0};
        if (f->ctl_fd >= 0 && send(f->ctl_fd, &ready, sizeof(ready), MSG_NOSIGNAL) < 0)
            tn_log_error("telling the master that the front is serving failed: %s",
                         strerror(errno));
    }

    bool shutting_down = false, shutdown_done = false, cancelled_all = false, ended = false;
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
        if (sig_stop && (!f->draining || drain_deadline > now)) {
            f->draining = true; /* stop now, also in the middle of a drain */
            drain_deadline = now;
        }
        bool drained = f->draining && (f->n_gen_calls == 0 || now >= drain_deadline);
        int live = f->n_live;
        bool drain_started = f->draining && !was_draining;
        bool health_changed = f->health_changed;
        f->health_changed = false;
        pthread_mutex_unlock(&f->mu);
        if (drain_started || health_changed)
            streams_update(f, false); /* Watch: NOT_SERVING */
        if (f->draining && !shutting_down) {
            /* At once, not when drained: the listeners close and every client
             * gets GOAWAY, so new calls go elsewhere (after a reload, to the
             * new front) instead of failing here; calls in flight go on. */
            shutting_down = true;
            grpc_server_shutdown_and_notify(f->server, f->cq, &f->t_shutdown);
        }
        if (drained && !ended) {
            ended = true;
            streams_update(f, true); /* or the shutdown would wait for them */
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
            check_send_stall(f, t_now);
            log_quiet_resets(f, t_now);
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
    unpublish_unix(f);
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
    if (f->media_root_fd >= 0)
        close(f->media_root_fd);
    close(f->queue_fd);
    if (f->ctl_fd >= 0)
        close(f->ctl_fd);
    tn_reflection_free(&f->refl);
    pthread_mutex_destroy(&f->mu);
    tn_log_info("stopped");
    return status;
}
