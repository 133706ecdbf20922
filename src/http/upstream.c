/*
 * The gateway's gRPC client of the front (see upstream.h).
 *
 * DESIGN. Each request that needs the front runs on a helper thread of its
 * own while its connection is suspended (gateway.c, defer()); it makes its
 * call synchronously on a completion queue of its own (for_pluck), so a slow
 * call blocks only its own connection. The channel is
 * shared by all threads (gRPC channels are thread-safe) and reconnects by
 * itself when a reload replaces the front behind the socket path. A call is
 * three batches: the request (initial metadata, the one message, half-close,
 * the server's initial metadata), the status, and one RECV_MESSAGE at a time.
 */
#include "upstream.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "pbbuf.h"
#include "status.h"

static grpc_channel *channel; /* owned for the process's life */
static const char *gw_secret;

int tn_upstream_init(const char *socket_path, const char *secret)
{
    char target[256];
    snprintf(target, sizeof(target), "unix:%s", socket_path);
    grpc_init();
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = (int)UPSTREAM_MAX_RESULT},
        /* a reload's new front is there at once: do not back off for seconds */
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = 100},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, .value.integer = 1000},
    };
    grpc_channel_args ca = {.num_args = sizeof(args) / sizeof(args[0]), .args = args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    channel = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);
    gw_secret = secret;
    return channel ? 0 : -1;
}

static void set_status(struct tn_upstream_status *st, int code, const char *msg)
{
    st->code = code;
    snprintf(st->message, sizeof(st->message), "%s", msg);
}

/* Wait for tag on cq; false if the batch failed. */
static bool wait_tag(grpc_completion_queue *cq, void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/*
 * One call of method with one request message; each response message goes
 * to on_msg (a nonzero return cancels the call with that status and the
 * message the callback put in st). The call's status lands in st, the
 * number of messages received in *n_msgs.
 */
static void call_once(const struct tn_upstream_ctx *ctx, const char *method,
                      const ProtobufCMessage *req,
                      int (*on_msg)(void *arg, grpc_slice msg, struct tn_upstream_status *st),
                      void *arg, struct tn_upstream_status *st, int *n_msgs)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                     gpr_time_from_millis((int64_t)(ctx->timeout_s * 1000), GPR_TIMESPAN));
    grpc_slice m = grpc_slice_from_static_string(method);
    grpc_call *c = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL,
                                            deadline, NULL);
    grpc_metadata md[3];
    size_t nmd = 0;
    md[nmd++] = (grpc_metadata){.key = grpc_slice_from_static_string("tn-gateway"),
                                .value = grpc_slice_from_static_string(gw_secret)};
    md[nmd++] = (grpc_metadata){.key = grpc_slice_from_static_string("tn-gateway-peer"),
                                .value = grpc_slice_from_copied_string(ctx->peer)};
    if (ctx->authorization)
        md[nmd++] = (grpc_metadata){.key = grpc_slice_from_static_string("authorization"),
                                    .value = grpc_slice_from_copied_string(ctx->authorization)};
    grpc_byte_buffer *send = tn_pb_pack(req);
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    int t_send, t_status, t_recv;
    grpc_call_error e = grpc_call_start_batch(c, ops, 4, &t_send, NULL);
    grpc_op sop = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
    sop.data.recv_status_on_client.trailing_metadata = &trail_md;
    sop.data.recv_status_on_client.status = &code;
    sop.data.recv_status_on_client.status_details = &details;
    if (e == GRPC_CALL_OK)
        e = grpc_call_start_batch(c, &sop, 1, &t_status, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "grpc_call_start_batch: %d\n", (int)e);
        abort(); /* a bug in this file */
    }
    wait_tag(cq, &t_send); /* a failure shows in the status */
    int cb = 0;
    for (;;) {
        grpc_byte_buffer *bb = NULL;
        grpc_op rop = {.op = GRPC_OP_RECV_MESSAGE};
        rop.data.recv_message.recv_message = &bb;
        if (grpc_call_start_batch(c, &rop, 1, &t_recv, NULL) != GRPC_CALL_OK)
            abort();
        bool ok = wait_tag(cq, &t_recv);
        if (!ok || !bb)
            break;
        grpc_slice s = tn_pb_flatten(bb);
        grpc_byte_buffer_destroy(bb);
        (*n_msgs)++;
        if (!cb && on_msg)
            cb = on_msg(arg, s, st);
        grpc_slice_unref(s);
        if (cb) {
            grpc_call_cancel(c, NULL);
            break;
        }
    }
    wait_tag(cq, &t_status);
    if (!cb) {
        char *d = grpc_slice_to_c_string(details);
        set_status(st, (int)code, d);
        gpr_free(d);
    }
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_byte_buffer_destroy(send);
    grpc_slice_unref(md[1].value);
    if (nmd > 2)
        grpc_slice_unref(md[2].value);
    grpc_call_unref(c);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

/*
 * call_once, retried while the front is UNAVAILABLE (or CANCELLED) and said
 * nothing: after a reload the old front's GOAWAY fails the calls that were
 * about to use its connection, a call that reached it just as its drain
 * began is cancelled, and the channel needs a moment to reach the new front
 * behind the same path. Every call here is a GET's: repeating it is safe. A front that is really
 * down is still a quick UNAVAILABLE (about 0.4 s), not a wait until the deadline.
 */
static void call(const struct tn_upstream_ctx *ctx, const char *method, const ProtobufCMessage *req,
                 int (*on_msg)(void *arg, grpc_slice msg, struct tn_upstream_status *st), void *arg,
                 struct tn_upstream_status *st)
{
    static const int delay_ms[] = {20, 100, 250};
    for (size_t i = 0;; i++) {
        int n = 0;
        call_once(ctx, method, req, on_msg, arg, st, &n);
        bool again = st->code == TN_UNAVAILABLE || st->code == TN_CANCELLED;
        if (!again || n > 0 || i == sizeof(delay_ms) / sizeof(delay_ms[0]))
            return;
        struct timespec ts = {0, delay_ms[i] * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- Generate ------------------------------------------------------------- */

static int on_generate(void *arg, grpc_slice s, struct tn_upstream_status *st)
{
    struct tn_upstream_results *r = arg;
    Thumbnail__V1__GenerateResponse *m = thumbnail__v1__generate_response__unpack(
        NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    int rc = 0;
    if (!m) {
        set_status(st, TN_INTERNAL, "the front sent a message the gateway cannot read");
        return TN_INTERNAL;
    }
    if (m->msg_case == THUMBNAIL__V1__GENERATE_RESPONSE__MSG_THUMBNAIL) {
        if (r->n == sizeof(r->items) / sizeof(r->items[0]) ||
            m->thumbnail->size > UPSTREAM_MAX_RESULT) {
            set_status(st, TN_INTERNAL, "more results than the gateway handles");
            rc = TN_INTERNAL;
            goto out;
        }
        struct tn_upstream_item *it = &r->items[r->n];
        it->data = malloc(m->thumbnail->size ? m->thumbnail->size : 1);
        if (!it->data) {
            set_status(st, TN_RESOURCE_EXHAUSTED, "the gateway is out of memory");
            rc = TN_RESOURCE_EXHAUSTED;
            goto out;
        }
        it->hdr = m->thumbnail;
        m->thumbnail = NULL; /* taken */
        m->msg_case = THUMBNAIL__V1__GENERATE_RESPONSE__MSG__NOT_SET;
        it->len = 0;
        r->n++;
    } else if (m->msg_case == THUMBNAIL__V1__GENERATE_RESPONSE__MSG_DATA) {
        struct tn_upstream_item *it = r->n ? &r->items[r->n - 1] : NULL;
        if (!it || it->len + m->data.len > it->hdr->size) {
            set_status(st, TN_INTERNAL, "the front sent more data than its header said");
            rc = TN_INTERNAL;
            goto out;
        }
        memcpy(it->data + it->len, m->data.data, m->data.len);
        it->len += m->data.len;
    }
out:
    thumbnail__v1__generate_response__free_unpacked(m, NULL);
    return rc;
}

void tn_upstream_generate(const struct tn_upstream_ctx *ctx, const Thumbnail__V1__Options *opts,
                          struct tn_upstream_results *out, struct tn_upstream_status *st)
{
    Thumbnail__V1__GenerateRequest req = THUMBNAIL__V1__GENERATE_REQUEST__INIT;
    req.msg_case = THUMBNAIL__V1__GENERATE_REQUEST__MSG_OPTIONS;
    req.options = (Thumbnail__V1__Options *)opts;
    memset(out, 0, sizeof(*out));
    call(ctx, "/thumbnail.v1.Thumbnailer/Generate", &req.base, on_generate, out, st);
    if (st->code == 0)
        for (size_t i = 0; i < out->n; i++)
            if (out->items[i].len != out->items[i].hdr->size) {
                set_status(st, TN_INTERNAL, "a result ended before its declared size");
                break;
            }
}

void tn_upstream_results_free(struct tn_upstream_results *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->items[i].data);
        thumbnail__v1__thumbnail__free_unpacked(r->items[i].hdr, NULL);
    }
    r->n = 0;
}

/* ---- Probe, List, Health --------------------------------------------------- */

static int on_probe(void *arg, grpc_slice s, struct tn_upstream_status *st)
{
    char **json = arg;
    Thumbnail__V1__ProbeResponse *m =
        thumbnail__v1__probe_response__unpack(NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    if (!m) {
        set_status(st, TN_INTERNAL, "the front sent a message the gateway cannot read");
        return TN_INTERNAL;
    }
    free(*json);
    *json = strdup(m->json ? m->json : "{}");
    thumbnail__v1__probe_response__free_unpacked(m, NULL);
    return 0;
}

void tn_upstream_probe(const struct tn_upstream_ctx *ctx, const char *path, char **json,
                       struct tn_upstream_status *st)
{
    Thumbnail__V1__Options o = THUMBNAIL__V1__OPTIONS__INIT;
    o.local_path = (char *)path;
    const char *slash = strrchr(path, '/');
    o.file_name = (char *)(slash ? slash + 1 : path);
    Thumbnail__V1__GenerateRequest req = THUMBNAIL__V1__GENERATE_REQUEST__INIT;
    req.msg_case = THUMBNAIL__V1__GENERATE_REQUEST__MSG_OPTIONS;
    req.options = &o;
    *json = NULL;
    call(ctx, "/thumbnail.v1.Thumbnailer/Probe", &req.base, on_probe, json, st);
    if (st->code == 0 && !*json)
        set_status(st, TN_INTERNAL, "the front answered the probe with no message");
}

static int on_list(void *arg, grpc_slice s, struct tn_upstream_status *st)
{
    Thumbnail__V1__ListResponse **resp = arg;
    if (*resp)
        thumbnail__v1__list_response__free_unpacked(*resp, NULL);
    *resp =
        thumbnail__v1__list_response__unpack(NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    if (!*resp) {
        set_status(st, TN_INTERNAL, "the front sent a message the gateway cannot read");
        return TN_INTERNAL;
    }
    return 0;
}

void tn_upstream_list(const struct tn_upstream_ctx *ctx, const Thumbnail__V1__ListRequest *req,
                      Thumbnail__V1__ListResponse **resp, struct tn_upstream_status *st)
{
    *resp = NULL;
    call(ctx, "/thumbnail.v1.Thumbnailer/List", &req->base, on_list, resp, st);
    if (st->code == 0 && !*resp)
        set_status(st, TN_INTERNAL, "the front answered List with no message");
}

static int on_health(void *arg, grpc_slice s, struct tn_upstream_status *st)
{
    int *serving = arg;
    Grpc__Health__V1__HealthCheckResponse *m = grpc__health__v1__health_check_response__unpack(
        NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    (void)st;
    if (m) {
        *serving = m->status;
        grpc__health__v1__health_check_response__free_unpacked(m, NULL);
    }
    return 0;
}

int tn_upstream_health(const struct tn_upstream_ctx *ctx, struct tn_upstream_status *st)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    int serving = 0;
    call(ctx, "/grpc.health.v1.Health/Check", &req.base, on_health, &serving, st);
    if (st->code != 0)
        return st->code;
    if (serving != GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING) {
        set_status(st, TN_UNAVAILABLE, "the server is not serving (draining, or no worker)");
        return TN_UNAVAILABLE;
    }
    return 0;
}
