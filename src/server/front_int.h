/*
 * The gRPC front, private: the types its modules share and the functions
 * they call across files. Nothing outside src/server/{front,gen_call,upload,
 * dispatch,services,listen,library,batch}.c includes this.
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
 * Result cache (--cache-dir, result_cache.c): the CQ thread keys the job
 * (local: the file's fstat identity; upload: a SHA-256 taken while spooling)
 * and, in upload_complete(), answers a hit itself by putting copies of the
 * entry's results on the call's list: no job, no worker. On a miss the poller
 * writes each RESULT to the call's store as it arrives and commits it on DONE
 * OK, outside the locks, before it sends the status.
 * Transport security: every HOST:PORT listener gets the TLS server
 * credentials when --tls-cert is set (unix: ones too with --tls-unix), built
 * from PEM text the master already read and checked. --auth-token-file is
 * checked per call, on the CQ thread, from the call's initial metadata and
 * before its first RECV_MESSAGE: a refused upload is never spooled. Health
 * (Check, Watch) is exempt so that probes need no secret.
 *
 * Library mode: List is a unary call answered on the CQ thread (library.c).
 * A Batch call is a gen_call with a struct batch, whose files are child
 * gen_calls without a grpc_call (c->parent) that take the local-mode job
 * path unchanged; hooks in kick_send_locked() and the ACK forward a child's
 * results, status and start to the parent's event stream (batch.c's DESIGN).
 *
 * Where each concern lives: front.c the main loop, signals and drain;
 * gen_call.c a Generate/Probe call's lifetime and send side; upload.c its
 * receive side (spooling, pull ranges, local mode, idle and rate limits);
 * dispatch.c the poller (job queue, replies, deadlines, the master's word);
 * services.c health, reflection and unknown methods; listen.c listeners,
 * credentials and the server's set-up; media_root.c the jailed open;
 * library.c List and the listing; batch.c Batch; result_cache.c the
 * --cache-dir glue (keys, hits served without a worker, stores of finished jobs).
 *
 * Lock order: front.mu before call.mu. A call is never destroyed while a lock
 * is held (unrefs that may be last are deferred until the lock is dropped).
 */
#ifndef TN_FRONT_INT_H
#define TN_FRONT_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <grpc/grpc.h>

#include "cache.h"
#include "front.h"
#include "ipc.h"
#include "thumbnail.pb-c.h"

struct evp_md_ctx_st; /* libcrypto's EVP_MD_CTX */

#define POLL_TICK_MS 100
#define STATUS_MAX 600
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
    TAG_NEW_LIST, /* thumbnail.v1.Thumbnailer/List (library.c) */
    TAG_LIST_DONE,
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

static inline void dlink_init(struct dlink *head)
{
    head->prev = head->next = head;
}

static inline void dlink_push(struct dlink *head, struct dlink *n)
{
    if (n->next)
        return; /* already linked */
    n->prev = head;
    n->next = head->next;
    head->next->prev = n;
    head->next = n;
}

static inline void dlink_remove(struct dlink *n)
{
    if (!n->next)
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

struct front;
struct stream_call;
struct batch;

/* One thumbnail received from a worker, waiting to be streamed. Owns fd and
 * map; a cache hit's has no fd, and map is heap (a copy of the entry's bytes). */
struct result {
    struct result *next;
    struct tn_ipc_result meta; /* reason NUL-terminated by the poller */
    int fd;
    unsigned char *map;
    unsigned char *heap; /* a cache hit: freed instead of unmapped */
};

/*
 * One Generate or Probe call. Owner: its references (see DESIGN); the last
 * gen_unref() destroys it, on either thread, when no one else can touch it.
 * The sub-structs say which thread may touch a field, and under which lock.
 */
struct gen_call {
    /* Set before the call is accepted (or while only the CQ thread knows it),
     * read-only after: either thread, no lock. */
    struct front *f;
    struct tag t_new, t_recv, t_send, t_close;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    bool probe; /* a Probe call: one ProbeResponse from the one result, then status */
    /* A Batch call: its files and events (batch.c); owned. NULL otherwise. */
    struct batch *batch;
    /* A Batch call's job for one file (no grpc_call of its own): the call its
     * results and status go to, and the file's index there. It holds a
     * reference on the parent until it is destroyed. NULL otherwise. */
    struct gen_call *parent;
    uint32_t batch_file;
    /* Filled by the CQ thread until upload_complete() puts the call on the
     * dispatch list (under f->mu); read-only after, by both threads. */
    struct tn_ipc_job job;
    bool cacheable;                /* --cache-dir and a key for this job (result_cache.c) */
    struct tn_cache_key cache_key; /* options + file identity */

    /* The CQ thread only: the receive side. */
    struct {
        grpc_byte_buffer *recv_buf;
        int cancelled; /* written by RECV_CLOSE_ON_SERVER, read when it completes */
        uint64_t declared, received;
        bool have_options;
        struct timespec started;
        char peer[128];
        int64_t last_msg_ms;     /* when the last message arrived (--idle-timeout) */
        bool idle_ended;         /* ended by --idle-timeout or --min-upload-rate */
        int64_t window_start_ms; /* --min-upload-rate: the current window began */
        uint64_t window_bytes;   /* message bytes received in it */
        char peer_addr[128];     /* peer without the port (--max-calls-per-peer); "" = unix */
        bool refused_early;      /* refused at once as over a call limit */
        bool http;               /* from the HTTP gateway (gateway_peer()) */
        struct dlink recv_link;  /* on f->recving while a RECV_MESSAGE is outstanding */
        /* pull and local mode */
        int pull_fd;        /* pull: our own fd of the spool file, written with range data; owned */
        bool pull;          /* Options.pull: the worker asks for ranges */
        bool local;         /* Options.local_path: spool_fd is the file under --media-root */
        uint64_t file_size; /* pull: declared; local: fstat */
        struct evp_md_ctx_st *upload_md; /* SHA-256 of the upload so far (cache key); owned */
    } cq;

    /* The poller thread only (it holds mu too, for the shared fields beside). */
    struct {
        pid_t worker_pid;             /* from the ACK */
        bool killed;                  /* the deadline kill was sent */
        uint64_t pulled;              /* pull: bytes asked for so far (--max-upload-bytes) */
        struct tn_cache_store *store; /* the results written to the cache so far; owned */
        bool store_dropped;           /* a result was not stored: the job is not cached */
    } poll;

    pthread_mutex_t mu;
    /* Under mu, either thread. Exception: the CQ thread uses spool_fd without
     * the lock while the upload is received, before the job is queued. */
    struct {
        int refs;
        bool dead;     /* cancelled by the client or a send failed: stop everything */
        int spool_fd;  /* owned until dispatched */
        int reply_fd;  /* front's end of the reply socketpair; owned; poller closes it */
        int worker_fd; /* worker's end, until the job is sent */
        int64_t job_deadline_ms;
        /* the send side */
        grpc_byte_buffer *send_buf; /* the message of the outstanding send batch */
        grpc_slice status_slice;
        struct result *res_head, *res_tail;
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
        /* pull mode: the one range the worker waits for */
        uint64_t range_off, range_len, range_got;
        int64_t range_since_ms; /* when it was asked (--idle-timeout) */
        bool range_out;         /* asked, not all received */
        bool range_to_send;     /* the RangeRequest message is not sent yet */
        bool recv_closed;       /* the client half-closed: no more range data can come */
        bool cache_hit;         /* answered from the result cache, without a worker */
    } shared;

    /* Under f->mu: the front's lists. */
    struct {
        struct dlink all_link;      /* on f->calls from its acceptance to its destruction */
        bool pull_running;          /* counted in f->n_pull_running */
        struct gen_call *pend_next; /* dispatch list */
        struct dlink run_link;      /* on f->running while its reply socket is in epoll */
    } lists;
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
    void *m_probe;              /* Thumbnailer/Probe, served by the Generate code */
    void *m_list, *m_batch;     /* Thumbnailer/List (library.c), Batch (batch.c) */
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
    int workers_left;            /* the master's last TN_IPC_CTL_WORKERS; -1 = not told */
    bool health_changed;         /* workers_left fell to 0: the CQ thread tells watchers */
    bool stopping;               /* server shutdown started: streams are being ended */
    struct stream_call *streams; /* Watch and reflection calls alive (CQ thread) */
    struct dlink recving;        /* uploads with a RECV_MESSAGE outstanding (CQ thread) */
    int n_streams;
    uint64_t next_job_id;
    int media_root_fd;      /* --media-root opened O_PATH; -1 = local mode off; owned */
    struct tn_cache *cache; /* --cache-dir, the writer; NULL = off; owned */
    pthread_mutex_t cache_pub_mu;
    struct tn_cache_stats cache_pub; /* what cache_publish() added to the metrics (its mutex) */
    /* unix: listeners (see bind_name()): the public path, and the inode of our
     * socket linked there, so that we remove it at exit only if it is ours. */
    struct unix_link {
        char pub[PATH_MAX];
        dev_t dev;
        ino_t ino;
    } unix_links[TN_MAX_LISTEN + 1]; /* + the HTTP gateway's socket */
    size_t n_unix;
};

/* gen_call.c: call lifetime and send side (either thread, c->mu held where named _locked) */
double elapsed_ms(const struct timespec *since);
void must_succeed(grpc_call_error e, const char *what);
void *call_alloc(size_t size);
void start_batch(grpc_call *call, const grpc_op *ops, size_t n, void *tag);
/* A unary call's one answer batch: initial metadata, msg (NULL: none; the
 * caller keeps it until the batch completes), the status with details (NULL:
 * none) in *status_slice (the caller unrefs it), RECV_CLOSE_ON_SERVER. */
void answer_unary(grpc_call *call, grpc_byte_buffer *msg, grpc_status_code code,
                  const char *details, grpc_slice *status_slice, int *cancelled, void *tag);
extern uint64_t held_result_bytes;
void free_result(struct result *r);
void thumbnail_header(Thumbnail__V1__Thumbnail *th, const struct tn_ipc_result *m);
void gen_ref_locked(struct gen_call *c);
void gen_unref(struct gen_call *c);
void kick_send_locked(struct gen_call *c);
void status_op_locked(struct gen_call *c, grpc_op *op);
void start_send_locked(struct gen_call *c, const grpc_op *ops, size_t n);
void finish_locked(struct gen_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void abandon_job_locked(struct gen_call *c);
void on_send_done(struct gen_call *c, bool ok);
void on_close(struct gen_call *c);
void on_new_generate(struct gen_call *c, bool ok);
void request_generate(struct front *f);
void request_probe(struct front *f);
struct gen_call *gen_call_new(struct front *f);
void check_send_stall(struct front *f, int64_t now);
void log_quiet_resets(struct front *f, int64_t now);

/* upload.c: receive side (CQ thread) */
void gen_fail(struct gen_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void request_message(struct gen_call *c);
void on_recv(struct gen_call *c, bool ok);
void check_idle(struct front *f, int64_t now);
int take_job_opts(struct gen_call *c, const Thumbnail__V1__Options *o);
int open_local(struct gen_call *c, const char *path, uint64_t *size);
void upload_complete(struct gen_call *c);

/* batch.c: Batch calls (parents) and their per-file jobs (children) */
void request_batch(struct front *f);
void batch_start(struct gen_call *c);
void batch_free(struct batch *b);
void batch_kick_send_locked(struct gen_call *c);
void batch_on_send_done(struct gen_call *c, bool ok);
void batch_child_kick_locked(struct gen_call *k);
void batch_child_started_locked(struct gen_call *k);
void batch_pump(struct gen_call *c);
void batch_tick(struct front *f);

/* result_cache.c: the result cache (CQ thread, but cache_store_* on the poller) */
int cache_open(struct front *f);
void cache_publish(struct front *f);
void cache_key_local(struct gen_call *c, int fd);
void cache_hash_begin(struct gen_call *c);
void cache_hash_update(struct gen_call *c, const void *p, size_t len);
void cache_hash_free(struct gen_call *c);
bool cache_serve(struct gen_call *c);
void cache_store_result(struct gen_call *c, const struct result *r);
void cache_store_drop(struct gen_call *c);
void cache_store_commit(struct front *f, struct tn_cache_store **s);

/* dispatch.c: the poller thread */
void *poller_main(void *arg);

/* services.c: health, reflection, unknown methods (CQ thread) */
void simple_free(struct simple_call *s);
void on_new_health(struct simple_call *s, bool ok);
void on_new_generic(struct simple_call *s, bool ok);
void request_health(struct front *f);
void request_generic(struct front *f);
void on_new_stream(struct stream_call *s, bool ok);
void on_stream_recv(struct stream_call *s, bool ok);
void on_stream_send(struct stream_call *s, bool ok);
void on_stream_close(struct stream_call *s);
void streams_update(struct front *f, bool stopping);
void request_stream(struct front *f, enum tag_kind kind);

/* listen.c: listeners, credentials, set-up */
const char *auth_refusal(const struct front *f, const grpc_metadata_array *md);
/*
 * gen_call.c: does the call carry the per-run gateway secret ("tn-gateway"
 * metadata, see config.h)? Then it came from the HTTP gateway: peer (len
 * bytes) becomes "http:" and the HTTP client's address the gateway sent in
 * "tn-gateway-peer". Compared in constant time; a wrong secret is an
 * ordinary gRPC call. Any method's call may use it to label its metrics
 * (TN_P_HTTP) and its access line.
 */
bool gateway_peer(const struct front *f, const grpc_metadata_array *md, char *peer, size_t len);
void unpublish_unix(struct front *f);
int setup(struct front *f, const struct tn_config *cfg);

#endif
