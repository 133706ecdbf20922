/*
 * A Generate or Probe call: accepting it, its references and destruction, and
 * its send side (thumbnail headers, data chunks, range requests, the status),
 * started from either thread under c->mu. Also the send-side --idle-timeout
 * and the small helpers every call kind uses.
 */
#include "front_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>

#include "log.h"
#include "metrics.h"
#include "pbbuf.h"
#include "probe_msg.h"
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
_Static_assert((int)THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_SMART == (int)TN_MODE_SMART, "mode");
_Static_assert((int)THUMBNAIL__V1__FIT_MODE__FIT_MODE_PAD == (int)TN_FIT_PAD, "fit");

/* ------------------------------------------------------------------------ */
/* Helpers for every call kind                                              */

double elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - since->tv_sec) * 1e3 +
           (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

/* A grpc_call_error other than OK is a bug in our code: abort loudly. */
void must_succeed(grpc_call_error e, const char *what)
{
    if (e != GRPC_CALL_OK) {
        tn_log_error("%s() failed with %d: a bug in the front", what, (int)e);
        abort();
    }
}

/* A call object, zeroed. Out of memory while accepting calls, the front cannot
 * keep its promises (an outstanding request per method): abort, the master
 * respawns it. */
void *call_alloc(size_t size)
{
    void *p = calloc(1, size);
    if (!p) {
        tn_log_error("out of memory for a new call");
        abort();
    }
    return p;
}

void start_batch(grpc_call *call, const grpc_op *ops, size_t n, void *tag)
{
    must_succeed(grpc_call_start_batch(call, ops, n, tag, NULL), "grpc_call_start_batch");
}

void answer_unary(grpc_call *call, grpc_byte_buffer *msg, grpc_status_code code,
                  const char *details, grpc_slice *status_slice, int *cancelled, void *tag)
{
    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (msg) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = msg;
    }
    *status_slice = grpc_slice_from_copied_string(details ? details : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = details ? status_slice : NULL;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = cancelled;
    start_batch(call, ops, n, tag);
}

/* ------------------------------------------------------------------------ */
/* Lifetime: creation, references, destruction                              */

/* Bytes of results mapped in the front, all calls (--max-result-bytes). */
uint64_t held_result_bytes;

void free_result(struct result *r)
{
    if (!r)
        return;
    if (r->heap) {
        free(r->heap);
        __atomic_sub_fetch(&held_result_bytes, r->meta.size, __ATOMIC_RELAXED);
    } else if (r->map && r->map != MAP_FAILED && r->meta.size) {
        munmap(r->map, r->meta.size);
        __atomic_sub_fetch(&held_result_bytes, r->meta.size, __ATOMIC_RELAXED);
    }
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

/* The method a call is counted under in the metrics. */
static enum tn_metrics_method method_of(const struct gen_call *c)
{
    return c->batch ? TN_M_BATCH : c->probe ? TN_M_PROBE : TN_M_GENERATE;
}

static void drop_results(struct gen_call *c)
{
    free_result(c->shared.cur);
    c->shared.cur = NULL;
    while (c->shared.res_head) {
        struct result *r = c->shared.res_head;
        c->shared.res_head = r->next;
        free_result(r);
    }
    c->shared.res_tail = NULL;
}

struct gen_call *gen_call_new(struct front *f)
{
    struct gen_call *c = call_alloc(sizeof(*c));
    c->f = f;
    c->t_new = (struct tag){TAG_NEW_GENERATE, c};
    c->t_recv = (struct tag){TAG_GEN_RECV, c};
    c->t_send = (struct tag){TAG_GEN_SEND, c};
    c->t_close = (struct tag){TAG_GEN_CLOSE, c};
    c->shared.spool_fd = c->shared.reply_fd = c->shared.worker_fd = c->cq.pull_fd = -1;
    c->shared.status_slice = grpc_empty_slice();
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
        int code = c->shared.status_sent ? c->shared.status_code : TN_CANCELLED;
        double ms = elapsed_ms(&c->cq.started);
        /* Reset before it sent anything, or refused as over a limit before it
         * could (a rapid-reset flood is all these): counted in the metrics,
         * summed up in the log (log_quiet_resets()). */
        bool quiet = (code == TN_CANCELLED || c->cq.refused_early) && !c->cq.have_options &&
                     c->cq.received == 0;
        pthread_mutex_lock(&f->mu);
        dlink_remove(&c->lists.all_link);
        if (quiet)
            f->quiet_resets++;
        pthread_mutex_unlock(&f->mu);
        struct tn_log_access a = {
            .method = c->batch   ? "thumbnail.v1.Thumbnailer/Batch"
                      : c->probe ? "thumbnail.v1.Thumbnailer/Probe"
                                 : "thumbnail.v1.Thumbnailer/Generate",
            .peer = c->cq.peer,
            .file = c->job.file_name,
            .bytes_in = c->cq.received,
            .bytes_out = c->shared.bytes_out,
            .thumbnails = c->shared.thumbs_out,
            .ms = ms,
            .status = tn_code_name(code),
            .message = c->shared.status_sent ? c->shared.status_msg : "",
            .mode = c->cq.pull                ? "pull"
                    : c->cq.local || c->batch ? "local"
                                              : NULL,
            .cache_hit = c->shared.cache_hit,
        };
        tn_log_access(quiet ? TN_LOG_DEBUG : TN_LOG_INFO, &a);
        tn_metrics_call_handled_p(method_of(c), c->cq.http ? TN_P_HTTP : TN_P_GRPC, code,
                                  ms / 1000);
        tn_metrics_front_spool_add(-(int64_t)c->cq.received);
        grpc_call_unref(c->call);
    }
    grpc_metadata_array_destroy(&c->md);
    grpc_slice_unref(c->shared.status_slice);
    if (c->cq.recv_buf)
        grpc_byte_buffer_destroy(c->cq.recv_buf);
    if (c->shared.send_buf)
        grpc_byte_buffer_destroy(c->shared.send_buf);
    if (c->shared.spool_fd >= 0)
        close(c->shared.spool_fd);
    if (c->cq.pull_fd >= 0)
        close(c->cq.pull_fd);
    if (c->shared.reply_fd >= 0)
        close(c->shared.reply_fd);
    if (c->shared.worker_fd >= 0)
        close(c->shared.worker_fd);
    drop_results(c);
    batch_free(c->batch);
    struct gen_call *parent = c->parent;
    cache_hash_free(c);
    tn_cache_store_abort(&c->poll.store);
    pthread_mutex_destroy(&c->mu);
    free(c);
    if (parent)
        gen_unref(parent); /* a Batch's file job: its reference on the call */
    if (accepted) {
        pthread_mutex_lock(&f->mu);
        f->n_gen_calls--;
        f->n_live--;
        pthread_mutex_unlock(&f->mu);
    }
}

void gen_ref_locked(struct gen_call *c)
{
    c->shared.refs++;
}

void gen_unref(struct gen_call *c)
{
    pthread_mutex_lock(&c->mu);
    int left = --c->shared.refs;
    pthread_mutex_unlock(&c->mu);
    if (left == 0)
        gen_destroy(c);
}

/* ------------------------------------------------------------------------ */
/* Sending (either thread, c->mu held)                                      */

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

/* A result's Thumbnail header, as Generate and Batch stream it; th borrows m's reason. */
void thumbnail_header(Thumbnail__V1__Thumbnail *th, const struct tn_ipc_result *m)
{
    thumbnail__v1__thumbnail__init(th);
    th->index = m->index;
    th->requested_time = m->requested_time;
    th->actual_time = m->actual_time;
    th->width = m->width;
    th->height = m->height;
    th->format = (Thumbnail__V1__ImageFormat)m->format;
    th->size = m->size;
    th->reason = (char *)m->reason;
    th->kind = (Thumbnail__V1__ThumbnailKind)m->kind;
}

static grpc_byte_buffer *header_message(const struct tn_ipc_result *m)
{
    Thumbnail__V1__Thumbnail th;
    Thumbnail__V1__GenerateResponse resp = THUMBNAIL__V1__GENERATE_RESPONSE__INIT;
    thumbnail_header(&th, m);
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

/* Start the next send batch if none is outstanding: a range request (between
 * thumbnails, never inside one), results, then the status. */
void kick_send_locked(struct gen_call *c)
{
    if (c->parent) { /* a Batch's file job: its results go to the Batch call */
        batch_child_kick_locked(c);
        return;
    }
    if (c->batch) {
        batch_kick_send_locked(c);
        return;
    }
    if (c->shared.sending || c->shared.status_sent || !c->call)
        return;
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->shared.md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    bool range =
        !c->shared.dead && !c->shared.cur && c->shared.range_to_send && !c->shared.status_set;
    if (range) {
        c->shared.range_to_send = false;
        c->shared.send_buf = range_message(c->shared.range_off, c->shared.range_len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->shared.send_buf;
        n++;
    } else if (!c->shared.dead && !c->shared.cur && c->shared.res_head) {
        c->shared.cur = c->shared.res_head;
        c->shared.res_head = c->shared.cur->next;
        if (!c->shared.res_head)
            c->shared.res_tail = NULL;
        c->shared.cur_header_sent = false;
        c->shared.cur_off = 0;
    }
    if (range) {
        /* the range request is in ops */
    } else if (!c->shared.dead && c->shared.cur && c->probe) {
        /* ProbeResponse{json, typed fields}: the whole result in one message, then done */
        c->shared.send_buf =
            tn_probe_msg_pack((const char *)c->shared.cur->map, (size_t)c->shared.cur->meta.size);
        size_t len = grpc_byte_buffer_length(c->shared.send_buf);
        if (len > c->f->cfg->max_message_bytes) {
            /* gRPC would refuse the send and log nothing useful: say it ourselves */
            grpc_byte_buffer_destroy(c->shared.send_buf);
            c->shared.send_buf = NULL;
            free_result(c->shared.cur);
            c->shared.cur = NULL;
            finish_locked(c, TN_RESOURCE_EXHAUSTED,
                          "the probe result is %zu bytes, over this server's --max-message-bytes "
                          "of %" PRIu64,
                          len, c->f->cfg->max_message_bytes);
            return;
        }
        c->shared.cur_off = c->shared.cur->meta.size;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->shared.send_buf;
        n++;
    } else if (!c->shared.dead && c->shared.cur) {
        if (!c->shared.cur_header_sent) {
            c->shared.send_buf = header_message(&c->shared.cur->meta);
        } else {
            uint64_t left = c->shared.cur->meta.size - c->shared.cur_off;
            size_t len = (size_t)(left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size);
            c->shared.send_buf = data_message(c->shared.cur->map + c->shared.cur_off, len);
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->shared.send_buf;
        n++;
    } else if (c->shared.status_set) {
        status_op_locked(c, &ops[n++]);
    } else {
        return; /* nothing to send yet */
    }
    start_send_locked(c, ops, n);
}

/* The op that sends the call's status (set, and nothing left before it). */
void status_op_locked(struct gen_call *c, grpc_op *op)
{
    op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    op->data.send_status_from_server.status = (grpc_status_code)c->shared.status_code;
    c->shared.status_slice = grpc_slice_from_copied_string(c->shared.status_msg);
    op->data.send_status_from_server.status_details =
        c->shared.status_code != TN_OK ? &c->shared.status_slice : NULL;
    c->shared.status_sent = true;
}

/* Start the call's one outstanding send batch; the batch holds a reference. */
void start_send_locked(struct gen_call *c, const grpc_op *ops, size_t n)
{
    c->shared.md_sent = true;
    c->shared.sending = true;
    c->shared.send_since_ms = tn_mono_ms();
    gen_ref_locked(c);
    start_batch(c->call, ops, n, &c->t_send);
}

/* Set the call's final status (first one wins) and send it when the results are out. */
void finish_locked(struct gen_call *c, int code, const char *fmt, ...)
{
    if (c->shared.status_set)
        return;
    c->shared.status_set = true;
    c->shared.status_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->shared.status_msg, sizeof(c->shared.status_msg), fmt, ap);
    va_end(ap);
    if (code != TN_OK)
        drop_results(c); /* an error status ends the stream: nothing more after it */
    kick_send_locked(c);
}

/* Stop the worker side of a call: shutting the reply socket tells the worker
 * to abandon the job, and makes the poller see EOF and release it. */
void abandon_job_locked(struct gen_call *c)
{
    if (c->shared.reply_fd >= 0)
        shutdown(c->shared.reply_fd, SHUT_RDWR);
}

void on_send_done(struct gen_call *c, bool ok)
{
    if (c->batch) {
        batch_on_send_done(c, ok);
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->shared.sending = false;
    if (c->shared.send_buf) {
        grpc_byte_buffer_destroy(c->shared.send_buf);
        c->shared.send_buf = NULL;
    }
    if (!ok) {
        c->shared.dead = true;
        drop_results(c);
        abandon_job_locked(c);
    } else if (c->shared.cur) {
        tn_metrics_msg_sent(method_of(c));
        if (!c->shared.cur_header_sent) {
            c->shared.cur_header_sent = true;
        } else {
            uint64_t left = c->shared.cur->meta.size - c->shared.cur_off;
            uint64_t len = left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size;
            c->shared.cur_off += len;
            c->shared.bytes_out += len;
            tn_metrics_bytes_sent(len);
        }
        if (c->shared.cur_header_sent && c->shared.cur_off >= c->shared.cur->meta.size) {
            c->shared.thumbs_out++;
            free_result(c->shared.cur);
            c->shared.cur = NULL;
        }
    }
    if (!c->shared.dead)
        kick_send_locked(c);
    pthread_mutex_unlock(&c->mu);
    gen_unref(c);
}

/* ------------------------------------------------------------------------ */
/* Accepting a call (CQ thread)                                             */

void on_close(struct gen_call *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->cq.cancelled) {
        c->shared.dead = true;
        drop_results(c);
        abandon_job_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (c->batch)
        batch_pump(c); /* the call is over: its file jobs left are abandoned */
    gen_unref(c);
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

/* A metadata value by key, or NULL (its length in *n). */
static const char *md_value(const grpc_metadata_array *md, const char *key, size_t *n)
{
    for (size_t i = 0; i < md->count; i++)
        if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0) {
            *n = GRPC_SLICE_LENGTH(md->metadata[i].value);
            return (const char *)GRPC_SLICE_START_PTR(md->metadata[i].value);
        }
    return NULL;
}

/* See front_int.h. */
bool gateway_peer(const struct front *f, const grpc_metadata_array *md, char *peer, size_t len)
{
    size_t n = 0, want = strlen(f->cfg->gateway_secret);
    const char *v = md_value(md, "tn-gateway", &n);
    if (!v || want == 0 || n != want || CRYPTO_memcmp(v, f->cfg->gateway_secret, n) != 0)
        return false;
    const char *p = md_value(md, "tn-gateway-peer", &n);
    if (!p)
        p = "?", n = 1;
    if (n > len - 6)
        n = len - 6;
    snprintf(peer, len, "http:%.*s", (int)n, p);
    for (char *q = peer; *q; q++)
        if ((unsigned char)*q < 0x20 || *q == '"' || *q == ' ')
            *q = '?'; /* one log line, one field */
    return true;
}

void on_new_generate(struct gen_call *c, bool ok)
{
    struct front *f = c->f;
    if (!ok) {
        gen_destroy(c); /* never accepted: refs are 0 */
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &c->cq.started);
    char *peer = grpc_call_get_peer(c->call);
    snprintf(c->cq.peer, sizeof(c->cq.peer), "%s", peer ? peer : "?");
    gpr_free(peer);
    /* A call of the HTTP gateway: labelled, and its peer is the HTTP client's,
     * so that --max-calls-per-peer counts that client, not the gateway. */
    c->cq.http = gateway_peer(f, &c->md, c->cq.peer, sizeof(c->cq.peer));
    tn_metrics_call_started_p(method_of(c), c->cq.http ? TN_P_HTTP : TN_P_GRPC);
    peer_address(c->cq.peer, c->cq.peer_addr, sizeof(c->cq.peer_addr));

    pthread_mutex_lock(&f->mu);
    f->n_live++;
    f->n_gen_calls++;
    int n = f->n_gen_calls;
    bool no_workers = f->workers_left == 0;
    dlink_push(&f->calls, &c->lists.all_link);
    int same_peer = 0;
    if (c->cq.peer_addr[0] && f->cfg->max_calls_per_peer > 0)
        for (struct dlink *l = f->calls.next; l != &f->calls; l = l->next)
            same_peer += !strcmp(DLINK_ENTRY(l, struct gen_call, lists.all_link)->cq.peer_addr,
                                 c->cq.peer_addr);
    pthread_mutex_unlock(&f->mu);
    if (c->batch)
        request_batch(f);
    else if (c->probe)
        request_probe(f);
    else
        request_generate(f);

    /* RECV_CLOSE_ON_SERVER first: it is how a client cancel is seen. */
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cq.cancelled;
    pthread_mutex_lock(&c->mu);
    c->shared.refs = 1;
    pthread_mutex_unlock(&c->mu);
    start_batch(c->call, &op, 1, &c->t_close);
    c->cq.last_msg_ms = tn_mono_ms();

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
        c->cq.refused_early = true;
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "server busy: %d calls in progress (--max-concurrent-calls %d); retry later",
                 n - 1, f->cfg->max_concurrent_calls);
        return;
    }
    if (f->cfg->max_calls_per_peer > 0 && same_peer > f->cfg->max_calls_per_peer) {
        c->cq.refused_early = true;
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "too many calls from %s: %d in progress (--max-calls-per-peer %d); retry later",
                 c->cq.peer_addr, same_peer - 1, f->cfg->max_calls_per_peer);
        return;
    }
    c->cq.window_start_ms = c->cq.last_msg_ms;
    if (c->batch)
        batch_start(c); /* its one request came with the call */
    else
        request_message(c);
}

void request_generate(struct front *f)
{
    struct gen_call *c = gen_call_new(f);
    grpc_call_error e = grpc_server_request_registered_call(
        f->server, f->m_generate, &c->call, &c->deadline, &c->md, NULL, f->cq, f->cq, &c->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

/* Probe calls are Generate calls with c->probe set (same upload,
 * same job path; the worker answers with JSON, sent as one ProbeResponse). */
void request_probe(struct front *f)
{
    struct gen_call *c = gen_call_new(f);
    c->probe = true;
    grpc_call_error e = grpc_server_request_registered_call(
        f->server, f->m_probe, &c->call, &c->deadline, &c->md, NULL, f->cq, f->cq, &c->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

/* ------------------------------------------------------------------------ */
/* Limits on the send side (CQ thread)                                      */

/* The send side of --idle-timeout: a client that reads none of its responses
 * for that long (one send batch outstanding all the while: HTTP/2 flow
 * control holds it) is ended with DEADLINE_EXCEEDED, and its results, the
 * worker's memfds mapped here, are freed at once rather than when gRPC gives
 * up on the connection. CQ thread. */
void check_send_stall(struct front *f, int64_t now)
{
    double t = f->cfg->idle_timeout_s;
    if (t <= 0)
        return;
    int64_t limit = (int64_t)(t * 1000);
    pthread_mutex_lock(&f->mu);
    for (struct dlink *l = f->calls.next; l != &f->calls; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, lists.all_link);
        pthread_mutex_lock(&c->mu);
        if (c->shared.sending && !c->shared.dead && now - c->shared.send_since_ms >= limit) {
            c->shared.dead = true;
            drop_results(c);
            abandon_job_locked(c);
            c->shared.status_set = c->shared.status_sent = true; /* the cancel below sends it */
            c->shared.status_code = TN_DEADLINE_EXCEEDED;
            snprintf(c->shared.status_msg, sizeof(c->shared.status_msg),
                     "the client read no response for %g s; the call was ended (--idle-timeout)",
                     t);
            tn_log_info("Generate peer=%s: reads nothing for %g s: ending it", c->cq.peer, t);
            grpc_call_cancel_with_status(c->call, GRPC_STATUS_DEADLINE_EXCEEDED,
                                         c->shared.status_msg, NULL);
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&f->mu);
}

/* Calls reset before they sent a request get no access line each (a flood of
 * them would write one per reset): one summary line a second at most. */
void log_quiet_resets(struct front *f, int64_t now)
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
