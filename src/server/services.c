/*
 * The standard services and the rest: Health/Check and unknown methods (one
 * batch each, struct simple_call), Health/Watch and server reflection v1 and
 * v1alpha (streams, struct stream_call). All on the CQ thread.
 */
#include "front_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "pbbuf.h"
#include "reflection.h"
#include "status.h"

/* ------------------------------------------------------------------------ */
/* Unary calls: Health/Check and unknown methods                            */

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

void simple_free(struct simple_call *s)
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
    s->code = (int)code;
    if (msg) {
        if (s->kind == TAG_NEW_HEALTH)
            tn_metrics_msg_sent(TN_M_HEALTH_CHECK);
        s->resp = msg;
    }
    answer_unary(s->call, msg, code, details, &s->status_slice, &s->cancelled, &s->t_done);
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

void on_new_health(struct simple_call *s, bool ok)
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

void on_new_generic(struct simple_call *s, bool ok)
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

void request_health(struct front *f)
{
    struct simple_call *s = simple_new(f, TAG_NEW_HEALTH);
    grpc_call_error e =
        grpc_server_request_registered_call(f->server, f->m_health, &s->call, &s->deadline, &s->md,
                                            &s->payload, f->cq, f->cq, &s->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

/* Unknown methods hang until the client's deadline unless a generic request is
 * outstanding: keep one, and answer UNIMPLEMENTED. */
void request_generic(struct front *f)
{
    struct simple_call *s = simple_new(f, TAG_NEW_GENERIC);
    grpc_call_error e =
        grpc_server_request_call(f->server, &s->call, &s->details, &s->md, f->cq, f->cq, &s->t_new);
    must_succeed(e, "grpc_server_request_call");
}

/* ------------------------------------------------------------------------ */
/* Streams: Health/Watch and server reflection                              */

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

void on_new_stream(struct stream_call *s, bool ok)
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

void on_stream_recv(struct stream_call *s, bool ok)
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

void on_stream_send(struct stream_call *s, bool ok)
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

void on_stream_close(struct stream_call *s)
{
    s->dead = true; /* cancelled, or our status went out: either way, done */
    stream_unref(s);
}

/* Drain started: tell every Watch. Shutdown started: end every stream, or the
 * server's shutdown would wait for clients that never hang up. */
void streams_update(struct front *f, bool stopping)
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

void request_stream(struct front *f, enum tag_kind kind)
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
