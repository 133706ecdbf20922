#include "rpc.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "ipc.h" /* tn_mono_ms */
#include "log.h"
#include "pbbuf.h"
#include "thumbnail.pb-c.h"

#define METHOD_GENERATE "/thumbnail.v1.Thumbnailer/Generate"
#define METHOD_PROBE "/thumbnail.v1.Thumbnailer/Probe"
#define METHOD_BATCH "/thumbnail.v1.Thumbnailer/Batch"
#define METHOD_HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define POLL_MS 200
/* After a cancel gRPC completes the pending batches at once; past this, give up on them. */
#define CANCEL_GRACE_MS 2000
/* gRPC ends a call at its deadline; ours is a backstop a little later. */
#define DEADLINE_SLACK_MS 1000
/* Room for the GenerateRequest framing around a data chunk, and for the Options message. */
#define SEND_OVERHEAD (64 << 10)
/* GenerateRequest.data: field 2, wire type 2 (length-delimited). Checked against the descriptor. */
#define DATA_FIELD_NUMBER 2
#define DATA_KEY ((DATA_FIELD_NUMBER << 3) | 2)
/* GenerateRequest.range_data (field 5) = RangeData{offset = 1 (varint), data = 2 (bytes)}:
 * framed by hand like data, for the same reason. Checked against the descriptor. */
#define RANGE_DATA_FIELD_NUMBER 5
#define RANGE_DATA_KEY ((RANGE_DATA_FIELD_NUMBER << 3) | 2)
/* The largest range request we answer: the server asks for at most 4 MiB. */
#define MAX_RANGE (64u << 20)

/* Set once any call was abandoned: gRPC would wait for it in grpc_shutdown(). */
static bool wedged;

bool tn_rpc_wedged(void)
{
    return __atomic_load_n(&wedged, __ATOMIC_RELAXED);
}

/* The batches of one call; the tag of a batch is its enum value + 1. */
enum tag { TAG_SEND, TAG_RECV, TAG_STATUS, N_TAGS };

struct call {
    grpc_completion_queue *cq;
    grpc_call *call;
    volatile sig_atomic_t *stop;
    bool pending[N_TAGS]; /* started, completion not yet seen */
    bool success[N_TAGS]; /* of the last completion */
    bool cancelled;
    bool interrupted;
    bool timed_out;       /* our backstop deadline fired */
    bool abandoned;       /* batches still pending long after the cancel: leaked */
    int64_t deadline_ms;  /* tn_mono_ms() at which the call must be over */
    int64_t cancelled_ms; /* tn_mono_ms() of the cancel */
    grpc_metadata_array initial_md;
    grpc_metadata_array trailing_md;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string; /* gpr_malloc'd by gRPC */
};

static void *tag_ptr(enum tag t)
{
    return (void *)(intptr_t)(t + 1);
}

static void call_init(struct call *c, grpc_completion_queue *cq, volatile sig_atomic_t *stop)
{
    memset(c, 0, sizeof(*c));
    c->cq = cq;
    c->stop = stop;
    c->status = GRPC_STATUS_UNKNOWN;
    c->details = grpc_empty_slice();
    grpc_metadata_array_init(&c->initial_md);
    grpc_metadata_array_init(&c->trailing_md);
}

/* Every batch must have completed: the queue is left empty for the next call. An
 * abandoned call is left alone: gRPC may still write into its arrays. */
static void call_destroy(struct call *c)
{
    if (c->abandoned)
        return;
    for (int t = 0; t < N_TAGS; t++)
        if (c->pending[t]) {
            tn_log_error("call destroyed with batch %d pending", t);
            abort();
        }
    grpc_metadata_array_destroy(&c->initial_md);
    grpc_metadata_array_destroy(&c->trailing_md);
    grpc_slice_unref(c->details);
    gpr_free((void *)c->error_string);
    if (c->call)
        grpc_call_unref(c->call);
}

static grpc_call *create_call(struct call *c, grpc_channel *ch, const char *method, double timeout)
{
    c->deadline_ms = tn_mono_ms() + (int64_t)(timeout * 1000) + DEADLINE_SLACK_MS;
    grpc_completion_queue *cq = c->cq;
    gpr_timespec deadline = gpr_time_add(
        gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis((int64_t)(timeout * 1000), GPR_TIMESPAN));
    return grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                    grpc_slice_from_static_string(method), NULL, deadline, NULL);
}

/* The two receive ops every call starts: the server's initial metadata into
 * md, and its status (with trailing metadata, details, error string) into st;
 * all of it lands in c. */
static void recv_md_and_status(struct call *c, grpc_op *md, grpc_op *st)
{
    md->op = GRPC_OP_RECV_INITIAL_METADATA;
    md->data.recv_initial_metadata.recv_initial_metadata = &c->initial_md;
    st->op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    st->data.recv_status_on_client.trailing_metadata = &c->trailing_md;
    st->data.recv_status_on_client.status = &c->status;
    st->data.recv_status_on_client.status_details = &c->details;
    st->data.recv_status_on_client.error_string = &c->error_string;
}

static void start(struct call *c, const grpc_op *ops, size_t n, enum tag t)
{
    c->pending[t] = true;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag_ptr(t), NULL);
    if (e != GRPC_CALL_OK) { /* a bug in this file, not a runtime condition */
        tn_log_error("grpc_call_start_batch(tag %d) failed: %d", t, (int)e);
        abort();
    }
}

static void cancel(struct call *c)
{
    if (!c->cancelled) {
        grpc_call_cancel(c->call, NULL);
        c->cancelled_ms = tn_mono_ms();
    }
    c->cancelled = true;
}

/*
 * Wait until batch t has completed (it may have already) and return its
 * success flag. Other batches' completions seen meanwhile are recorded.
 */
static bool wait_for(struct call *c, enum tag t)
{
    while (c->pending[t] && !c->abandoned) {
        if (c->stop && *c->stop && !c->cancelled) {
            c->interrupted = true;
            cancel(c);
        }
        int64_t now = tn_mono_ms();
        if (!c->cancelled && now > c->deadline_ms) {
            c->timed_out = true;
            cancel(c);
        }
        if (c->cancelled && now > c->cancelled_ms + CANCEL_GRACE_MS) {
            tn_log_error("gRPC did not complete a cancelled call within %d ms; abandoning it",
                         CANCEL_GRACE_MS);
            c->abandoned = true;
            __atomic_store_n(&wedged, true, __ATOMIC_RELAXED);
            break;
        }
        gpr_timespec dl =
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(POLL_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(c->cq, dl, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT)
            continue;
        intptr_t i = (intptr_t)ev.tag - 1;
        if (ev.type != GRPC_OP_COMPLETE || i < 0 || i >= N_TAGS || !c->pending[i]) {
            tn_log_error("unexpected completion queue event type %d tag %p", (int)ev.type, ev.tag);
            abort();
        }
        c->pending[i] = false;
        c->success[i] = ev.success != 0;
    }
    return !c->abandoned && c->success[t];
}

static bool status_arrived(const struct call *c)
{
    /* Started first and only ever waited for at the end: not pending = completed. */
    return !c->pending[TAG_STATUS];
}

static void copy_status_message(const struct call *c, char *msg, size_t len)
{
    size_t n = GRPC_SLICE_LENGTH(c->details);
    if (n) {
        snprintf(msg, len, "%.*s", (int)n, (const char *)GRPC_SLICE_START_PTR(c->details));
    } else {
        msg[0] = 0;
    }
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t h = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        p[h++] = b | (v ? 0x80 : 0);
    } while (v);
    return h;
}

/* Read n bytes of fd at off into p; 0, -errno, or -ENODATA if the file ended early. */
static int read_exact(int fd, uint8_t *p, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -ENODATA;
        got += (size_t)r;
    }
    return 0;
}

/* A GenerateRequest{range_data{offset, data}} with n bytes of fd at off, read
 * straight into the slice gRPC sends. NULL with *err as for data_message(). */
static grpc_byte_buffer *range_data_message(int fd, uint64_t off, size_t n, int *err)
{
    uint8_t inner[24], outer[12];
    size_t i = 0, o = 0;
    inner[i++] = 0x08; /* RangeData.offset: field 1, varint */
    i += put_varint(inner + i, off);
    inner[i++] = 0x12; /* RangeData.data: field 2, length-delimited */
    i += put_varint(inner + i, n);
    outer[o++] = RANGE_DATA_KEY;
    o += put_varint(outer + o, i + n);
    grpc_slice s = grpc_slice_malloc(o + i + n);
    uint8_t *p = GRPC_SLICE_START_PTR(s);
    memcpy(p, outer, o);
    memcpy(p + o, inner, i);
    if ((*err = read_exact(fd, p + o + i, n, off)) < 0) {
        grpc_slice_unref(s);
        return NULL;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/*
 * A GenerateRequest{data} holding n bytes of fd at off. The message is framed
 * by hand (key, varint length) so that the file is read straight into the
 * slice gRPC sends: protobuf-c would need the bytes in a buffer of ours first
 * and then copy them again. Returns NULL with *err = -errno, or -ENODATA if the
 * file ended early (it shrank after we declared its size).
 */
static grpc_byte_buffer *data_message(int fd, uint64_t off, size_t n, int *err)
{
    uint8_t hdr[11];
    size_t h = 0;
    hdr[h++] = DATA_KEY;
    uint64_t v = n;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        hdr[h++] = b | (v ? 0x80 : 0);
    } while (v);
    grpc_slice s = grpc_slice_malloc(h + n);
    uint8_t *p = GRPC_SLICE_START_PTR(s);
    memcpy(p, hdr, h);
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + h + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            *err = r < 0 ? -errno : -ENODATA;
            grpc_slice_unref(s);
            return NULL;
        }
        got += (size_t)r;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/*
 * Send one message (with initial metadata if first, half-close if last); wait
 * for it. The initial metadata carries the authorization value, if any.
 */
static bool send_message(struct call *c, grpc_byte_buffer *bb, bool first, bool last,
                         const char *authorization)
{
    grpc_op ops[3];
    grpc_metadata md;
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (first) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        if (authorization) {
            memset(&md, 0, sizeof(md));
            md.key = grpc_slice_from_static_string("authorization");
            md.value = grpc_slice_from_static_string(authorization); /* outlives the batch */
            ops[n].data.send_initial_metadata.count = 1;
            ops[n].data.send_initial_metadata.metadata = &md;
        }
        n++;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    if (last)
        ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    start(c, ops, n, TAG_SEND);
    bool ok = wait_for(c, TAG_SEND);
    grpc_byte_buffer_destroy(bb);
    return ok;
}

/* Receive-side state of a Generate call. */
struct rx {
    const struct tn_rpc_sink *sink;
    uint32_t expected;
    bool seen[TN_JOB_MAX_TIMES];
    bool in_thumb;
    uint32_t index;
    uint64_t remaining;
    uint32_t complete;
    int format; /* enum tn_format asked for */
    bool probe; /* the one response is a ProbeResponse */
};

static int fail(struct tn_rpc_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int fail(struct tn_rpc_result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
    res->local = true;
    return -1;
}

/* Handle one response message. Returns 0, or -1 with res->message set. */
static int on_response(struct rx *rx, const Thumbnail__V1__GenerateResponse *m,
                       struct tn_rpc_result *res)
{
    int r;
    switch (m->msg_case) {
    case THUMBNAIL__V1__GENERATE_RESPONSE__MSG_THUMBNAIL: {
        const Thumbnail__V1__Thumbnail *t = m->thumbnail;
        if (rx->in_thumb)
            return fail(res, "protocol error: thumbnail %u ended %llu bytes short", rx->index,
                        (unsigned long long)rx->remaining);
        if (t->index >= rx->expected)
            return fail(res, "protocol error: thumbnail index %u, expected < %u", t->index,
                        rx->expected);
        if (rx->seen[t->index])
            return fail(res, "protocol error: thumbnail %u sent twice", t->index);
        if (t->kind != THUMBNAIL__V1__THUMBNAIL_KIND__THUMBNAIL_KIND_VTT &&
            (int)t->format != rx->format &&
            !(rx->format == TN_FORMAT_PNG &&
              t->format == THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_UNSPECIFIED))
            return fail(res, "protocol error: thumbnail %u has format %d, asked for %d", t->index,
                        (int)t->format, rx->format);
        if (t->size == 0)
            return fail(res, "protocol error: thumbnail %u is empty", t->index);
        struct tn_rpc_thumb th = {
            .index = t->index,
            .width = t->width,
            .height = t->height,
            .requested_time = t->requested_time,
            .actual_time = t->actual_time,
            .size = t->size,
        };
        snprintf(th.reason, sizeof(th.reason), "%s", t->reason ? t->reason : "");
        th.kind = (int)t->kind;
        if ((r = rx->sink->begin(rx->sink->ctx, &th)) < 0)
            return fail(res, "cannot write thumbnail %u: %s", t->index, strerror(-r));
        rx->seen[t->index] = true;
        rx->in_thumb = true;
        rx->index = t->index;
        rx->remaining = t->size;
        return 0;
    }
    case THUMBNAIL__V1__GENERATE_RESPONSE__MSG_DATA:
        if (!rx->in_thumb)
            return fail(res, "protocol error: %zu bytes of data outside a thumbnail", m->data.len);
        if (m->data.len > rx->remaining)
            return fail(res, "protocol error: thumbnail %u is larger than its declared size",
                        rx->index);
        if ((r = rx->sink->data(rx->sink->ctx, rx->index, m->data.data, m->data.len)) < 0)
            return fail(res, "cannot write thumbnail %u: %s", rx->index, strerror(-r));
        rx->remaining -= m->data.len;
        if (rx->remaining == 0) {
            rx->in_thumb = false;
            rx->complete++;
        }
        return 0;
    default: return fail(res, "protocol error: response message of unknown kind");
    }
}

/* Options.animation's storage, on the caller's stack like the time points. */
struct anim_pb {
    Thumbnail__V1__Animation a;
    Thumbnail__V1__TimePoint start, end;
};

static void time_point_pb(const struct tn_time_point *t, Thumbnail__V1__TimePoint *tp)
{
    thumbnail__v1__time_point__init(tp);
    if (t->kind == TN_TIME_PERCENT) {
        tp->point_case = THUMBNAIL__V1__TIME_POINT__POINT_PERCENT;
        tp->percent = t->value;
    } else {
        tp->point_case = THUMBNAIL__V1__TIME_POINT__POINT_SECONDS;
        tp->seconds = t->value;
    }
}

static void build_options(const struct tn_rpc_request *req, Thumbnail__V1__Options *opt,
                          Thumbnail__V1__TimePoint *tp, Thumbnail__V1__TimePoint **tpp,
                          struct anim_pb *anim)
{
    for (size_t i = 0; i < req->n_times; i++) {
        time_point_pb(&req->times[i], &tp[i]);
        tpp[i] = &tp[i];
    }
    thumbnail__v1__options__init(opt);
    opt->file_name = (char *)req->file_name;
    opt->size = req->size;
    opt->n_times = req->n_times;
    opt->times = req->n_times ? tpp : NULL;
    opt->max_width = req->max_width;
    opt->max_height = req->max_height;
    opt->upscale = req->upscale;
    /* enum tn_format has the proto's values */
    opt->format = (Thumbnail__V1__ImageFormat)(req->format ? req->format : TN_FORMAT_PNG);
    opt->quality = req->quality;
    opt->lossless = req->lossless;
    opt->png_level = req->png_level;
    /* Not given = UNSPECIFIED: the server's choice (a representative frame when no time
     * is named either), not an explicit ACCURATE. */
    opt->mode = req->mode == TN_MODE_KEYFRAME   ? THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_KEYFRAME
                : req->mode == TN_MODE_SMART    ? THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_SMART
                : req->mode == TN_MODE_ACCURATE ? THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_ACCURATE
                                                : THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_UNSPECIFIED;
    opt->fit = (Thumbnail__V1__FitMode)req->fit; /* enum tn_fit has the proto's values */
    opt->pad_color = req->pad_color;
    opt->count = req->count;
    opt->every = req->every;
    opt->cover_art = req->cover_art;
    opt->storyboard = req->storyboard;
    opt->tile_width = req->tile_width;
    opt->columns = req->columns;
    if (req->animated) {
        thumbnail__v1__animation__init(&anim->a);
        if (req->anim_start.kind) {
            time_point_pb(&req->anim_start, &anim->start);
            anim->a.start = &anim->start;
        }
        if (req->anim_end.kind) {
            time_point_pb(&req->anim_end, &anim->end);
            anim->a.end = &anim->end;
        }
        anim->a.fps = req->fps;
        opt->animation = &anim->a;
    }
    opt->pull = req->transfer == TN_RPC_PULL;
    if (req->transfer == TN_RPC_LOCAL) {
        opt->local_path = (char *)req->local_path;
        opt->size = 0; /* the server's file is what counts */
    }
}

/* Pull mode: answer one RangeRequest with the bytes of our file, in messages
 * of at most chunk_size. Returns 0, or -1 with res->message set (the caller
 * cancels). */
static int answer_range(struct call *c, const struct tn_rpc_request *req,
                        const Thumbnail__V1__RangeRequest *rr, const struct tn_rpc_sink *sink,
                        struct tn_rpc_result *res)
{
    if (req->transfer != TN_RPC_PULL)
        return fail(res, "protocol error: a range request outside pull mode");
    if (rr->length == 0 || rr->length > MAX_RANGE || rr->offset > req->size ||
        rr->length > req->size - rr->offset)
        return fail(res,
                    "protocol error: range request for %llu bytes at offset %llu of a %llu-byte "
                    "file",
                    (unsigned long long)rr->length, (unsigned long long)rr->offset,
                    (unsigned long long)req->size);
    tn_log_debug("%s: range request %llu+%llu", req->file_name, (unsigned long long)rr->offset,
                 (unsigned long long)rr->length);
    res->ranges++;
    for (uint64_t done = 0; done < rr->length;) {
        uint64_t left = rr->length - done;
        size_t n = left < req->chunk_size ? (size_t)left : (size_t)req->chunk_size;
        int err = 0;
        grpc_byte_buffer *bb = range_data_message(req->fd, rr->offset + done, n, &err);
        uint64_t end = rr->offset + done + n;
        if (!bb)
            return err == -ENODATA ? fail(res, "file shrank (it ends before byte %llu)",
                                          (unsigned long long)end)
                                   : fail(res, "read failed: %s", strerror(-err));
        if (!send_message(c, bb, false, false, NULL))
            return 0; /* the call is over: its status says why */
        done += n;
        res->bytes_sent += n;
        if (sink->sent)
            sink->sent(sink->ctx, n);
    }
    return 0;
}

/* Upload options, data, end. Stops early when the status arrives or a send fails. */
static void upload(struct call *c, const struct tn_rpc_request *req, const struct tn_rpc_sink *sink,
                   struct tn_rpc_result *res)
{
    Thumbnail__V1__TimePoint tp[TN_JOB_MAX_TIMES];
    Thumbnail__V1__TimePoint *tpp[TN_JOB_MAX_TIMES];
    Thumbnail__V1__Options opt;
    struct anim_pb anim;
    build_options(req, &opt, tp, tpp, &anim);
    Thumbnail__V1__GenerateRequest m = THUMBNAIL__V1__GENERATE_REQUEST__INIT;
    m.msg_case = THUMBNAIL__V1__GENERATE_REQUEST__MSG_OPTIONS;
    m.options = &opt;
    if (!send_message(c, tn_pb_pack(&m.base), true, req->transfer == TN_RPC_LOCAL,
                      req->authorization) ||
        req->transfer != TN_RPC_UPLOAD)
        return;

    uint64_t off = 0;
    while (off < req->size && !status_arrived(c) && !c->cancelled) {
        uint64_t left = req->size - off;
        size_t n = left < req->chunk_size ? (size_t)left : (size_t)req->chunk_size;
        int err = 0;
        grpc_byte_buffer *bb = data_message(req->fd, off, n, &err);
        if (!bb) {
            if (err == -ENODATA)
                fail(res, "file shrank during upload (read %llu of %llu bytes)",
                     (unsigned long long)off, (unsigned long long)req->size);
            else
                fail(res, "read failed: %s", strerror(-err));
            cancel(c);
            return;
        }
        if (!send_message(c, bb, false, false, NULL))
            return;
        off += n;
        res->bytes_sent += n;
        if (sink->sent)
            sink->sent(sink->ctx, n);
    }
    if (off < req->size || status_arrived(c) || c->cancelled)
        return;

    Thumbnail__V1__End end = THUMBNAIL__V1__END__INIT;
    m.msg_case = THUMBNAIL__V1__GENERATE_REQUEST__MSG_END;
    m.end = &end;
    send_message(c, tn_pb_pack(&m.base), false, true, NULL);
}

/* Read responses until the stream ends, answering range requests (pull
 * mode). A local error cancels the call. */
static void receive(struct call *c, struct rx *rx, const struct tn_rpc_request *req,
                    const struct tn_rpc_sink *sink, struct tn_rpc_result *res)
{
    while (!c->cancelled) {
        grpc_byte_buffer *bb = NULL;
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &bb;
        start(c, &op, 1, TAG_RECV);
        if (!wait_for(c, TAG_RECV) || !bb) {
            if (bb)
                grpc_byte_buffer_destroy(bb);
            return; /* end of stream, or the call failed: the status says which */
        }
        grpc_slice s = tn_pb_flatten(bb);
        grpc_byte_buffer_destroy(bb);
        if (rx->probe) {
            Thumbnail__V1__ProbeResponse *p = thumbnail__v1__probe_response__unpack(
                NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
            grpc_slice_unref(s);
            int r = 0;
            if (!p || rx->complete)
                r = fail(res, "protocol error: %s",
                         p ? "more than one ProbeResponse" : "undecodable ProbeResponse");
            if (r == 0) {
                struct tn_rpc_thumb th = {.size = strlen(p->json)};
                r = rx->sink->begin(rx->sink->ctx, &th);
                if (r == 0)
                    r = rx->sink->data(rx->sink->ctx, 0, p->json, th.size);
                if (r < 0)
                    r = fail(res, "cannot keep the probe result: %s", strerror(-r));
                else
                    rx->complete++;
            }
            if (p)
                thumbnail__v1__probe_response__free_unpacked(p, NULL);
            if (r < 0)
                cancel(c);
            continue;
        }
        Thumbnail__V1__GenerateResponse *m = thumbnail__v1__generate_response__unpack(
            NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
        grpc_slice_unref(s);
        int r = !m ? fail(res, "protocol error: undecodable response message")
                : m->msg_case == THUMBNAIL__V1__GENERATE_RESPONSE__MSG_RANGE_REQUEST
                    ? answer_range(c, req, m->range_request, sink, res)
                    : on_response(rx, m, res);
        if (m)
            thumbnail__v1__generate_response__free_unpacked(m, NULL);
        if (r < 0)
            cancel(c);
    }
}

static void check_wire_format(void)
{
    /* data_message() frames GenerateRequest.data by hand: make sure the proto agrees. */
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(
        &thumbnail__v1__generate_request__descriptor, "data");
    if (!f || f->id != DATA_FIELD_NUMBER || f->type != PROTOBUF_C_TYPE_BYTES) {
        tn_log_error("GenerateRequest.data is not field %d of type bytes", DATA_FIELD_NUMBER);
        abort();
    }
    f = protobuf_c_message_descriptor_get_field_by_name(
        &thumbnail__v1__generate_request__descriptor, "range_data");
    const ProtobufCFieldDescriptor *off = protobuf_c_message_descriptor_get_field_by_name(
        &thumbnail__v1__range_data__descriptor, "offset");
    const ProtobufCFieldDescriptor *data = protobuf_c_message_descriptor_get_field_by_name(
        &thumbnail__v1__range_data__descriptor, "data");
    if (!f || f->id != RANGE_DATA_FIELD_NUMBER || !off || off->id != 1 ||
        off->type != PROTOBUF_C_TYPE_UINT64 || !data || data->id != 2 ||
        data->type != PROTOBUF_C_TYPE_BYTES) {
        tn_log_error(
            "GenerateRequest.range_data is not field %d {uint64 offset = 1; bytes data = 2}",
            RANGE_DATA_FIELD_NUMBER);
        abort();
    }
}

void tn_rpc_generate(grpc_channel *ch, grpc_completion_queue *cq, const struct tn_rpc_request *req,
                     const struct tn_rpc_sink *sink, struct tn_rpc_result *res)
{
    check_wire_format();
    memset(res, 0, sizeof(*res));
    struct call c;
    call_init(&c, cq, req->stop);
    c.call = create_call(&c, ch, req->probe ? METHOD_PROBE : METHOD_GENERATE, req->timeout);

    /* Status first: an early error from the server must end the upload promptly. */
    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    recv_md_and_status(&c, &ops[0], &ops[1]);
    start(&c, ops, 2, TAG_STATUS);

    struct rx rx = {.sink = sink,
                    .expected = req->count       ? req->count
                                : req->every > 0 ? TN_JOB_MAX_TIMES
                                : req->n_times   ? (uint32_t)req->n_times
                                                 : 1,
                    .format = req->format ? req->format : TN_FORMAT_PNG,
                    .probe = req->probe};
    if (req->probe)
        rx.expected = 1;
    if (req->storyboard)
        rx.expected = 2;
    upload(&c, req, sink, res);
    receive(&c, &rx, req, sink, res);
    wait_for(&c, TAG_STATUS);

    res->code = c.status;
    res->thumbnails = rx.complete;
    res->interrupted = c.interrupted;
    res->abandoned = c.abandoned;
    if (c.interrupted) {
        res->local = true;
        snprintf(res->message, sizeof(res->message), "interrupted");
    } else if (c.abandoned || c.timed_out) {
        res->local = true;
        res->code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(res->message, sizeof(res->message),
                 "no answer within --timeout %.0f s (deadline exceeded)", req->timeout);
    } else if (res->local) {
        /* message already set */
    } else if (c.status != GRPC_STATUS_OK) {
        copy_status_message(&c, res->message, sizeof(res->message));
        if (c.error_string)
            tn_log_debug("%s: %s", req->file_name, c.error_string);
    } else if (rx.in_thumb) {
        fail(res, "protocol error: stream ended with %llu bytes of thumbnail %u missing",
             (unsigned long long)rx.remaining, rx.index);
    } else if (req->every > 0 ? rx.complete < 1 : rx.complete < rx.expected) {
        fail(res, "server sent %u of %u thumbnails", rx.complete, rx.expected);
    }
    call_destroy(&c);
}

/* The thumbnails one file of a Generate-like request should bring. */
static uint32_t expected_thumbs(const struct tn_rpc_request *req)
{
    if (req->probe)
        return 1;
    if (req->storyboard)
        return 2;
    return req->count       ? req->count
           : req->every > 0 ? TN_JOB_MAX_TIMES
           : req->n_times   ? (uint32_t)req->n_times
                            : 1;
}

/* A file's result once its DONE arrived: as tn_rpc_generate() ends a call. */
static void file_result(const struct tn_rpc_request *req, const struct rx *rx,
                        const Thumbnail__V1__BatchFileDone *d, struct tn_rpc_result *r)
{
    r->thumbnails = rx->complete;
    if (r->local)
        return; /* message already set */
    r->code = (grpc_status_code)d->code;
    if (d->code != GRPC_STATUS_OK)
        snprintf(r->message, sizeof(r->message), "%s", d->message ? d->message : "");
    else if (rx->in_thumb)
        fail(r, "protocol error: stream ended with %llu bytes of thumbnail %u missing",
             (unsigned long long)rx->remaining, rx->index);
    else if (req->every > 0 ? rx->complete < 1 : rx->complete < rx->expected)
        fail(r, "server sent %u of %u thumbnails", rx->complete, rx->expected);
}

void tn_rpc_batch(grpc_channel *ch, grpc_completion_queue *cq, const struct tn_rpc_request *req,
                  const char *const *paths, size_t n, const struct tn_rpc_batch_sink *bs,
                  struct tn_rpc_result *res)
{
    memset(res, 0, sizeof(*res));
    struct rx *rx = calloc(n ? n : 1, sizeof(*rx));
    struct tn_rpc_result *fr = calloc(n ? n : 1, sizeof(*fr));
    bool *done = calloc(n ? n : 1, sizeof(*done));
    if (!rx || !fr || !done) {
        fail(res, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++)
        rx[i] = (struct rx){.sink = bs->sink(bs->ctx, i),
                            .expected = expected_thumbs(req),
                            .format = req->format ? req->format : TN_FORMAT_PNG};

    struct call c;
    call_init(&c, cq, req->stop);
    c.call = create_call(&c, ch, METHOD_BATCH, req->timeout * (double)(n ? n : 1));
    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    recv_md_and_status(&c, &ops[0], &ops[1]);
    start(&c, ops, 2, TAG_STATUS);

    Thumbnail__V1__TimePoint tp[TN_JOB_MAX_TIMES];
    Thumbnail__V1__TimePoint *tpp[TN_JOB_MAX_TIMES];
    Thumbnail__V1__Options opt;
    struct anim_pb anim;
    build_options(req, &opt, tp, tpp, &anim);
    opt.file_name = NULL;
    opt.local_path = NULL;
    opt.pull = false;
    opt.size = 0;
    Thumbnail__V1__BatchRequest br = THUMBNAIL__V1__BATCH_REQUEST__INIT;
    br.n_paths = n;
    br.paths = (char **)paths;
    br.options = &opt;
    bool events = false;
    if (send_message(&c, tn_pb_pack(&br.base), true, true, req->authorization)) {
        while (!c.cancelled) {
            grpc_byte_buffer *bb = NULL;
            grpc_op op;
            memset(&op, 0, sizeof(op));
            op.op = GRPC_OP_RECV_MESSAGE;
            op.data.recv_message.recv_message = &bb;
            start(&c, &op, 1, TAG_RECV);
            if (!wait_for(&c, TAG_RECV) || !bb) {
                if (bb)
                    grpc_byte_buffer_destroy(bb);
                break; /* end of stream, or the call failed: the status says which */
            }
            grpc_slice s = tn_pb_flatten(bb);
            grpc_byte_buffer_destroy(bb);
            Thumbnail__V1__BatchEvent *ev = thumbnail__v1__batch_event__unpack(
                NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
            grpc_slice_unref(s);
            if (!ev || (ev->event_case != THUMBNAIL__V1__BATCH_EVENT__EVENT_SUMMARY &&
                        (ev->file >= n || done[ev->file]))) {
                fail(res, "protocol error: %s",
                     ev ? "an event of a file not in the batch" : "undecodable BatchEvent");
                if (ev)
                    thumbnail__v1__batch_event__free_unpacked(ev, NULL);
                cancel(&c);
                break;
            }
            events = true;
            size_t i = ev->file;
            Thumbnail__V1__GenerateResponse m = THUMBNAIL__V1__GENERATE_RESPONSE__INIT;
            switch (ev->event_case) {
            case THUMBNAIL__V1__BATCH_EVENT__EVENT_THUMBNAIL:
                m.msg_case = THUMBNAIL__V1__GENERATE_RESPONSE__MSG_THUMBNAIL;
                m.thumbnail = ev->thumbnail;
                if (!fr[i].local)
                    on_response(&rx[i], &m, &fr[i]); /* a failure marks the file only */
                break;
            case THUMBNAIL__V1__BATCH_EVENT__EVENT_DATA:
                m.msg_case = THUMBNAIL__V1__GENERATE_RESPONSE__MSG_DATA;
                m.data = ev->data;
                if (!fr[i].local)
                    on_response(&rx[i], &m, &fr[i]);
                break;
            case THUMBNAIL__V1__BATCH_EVENT__EVENT_DONE:
                done[i] = true;
                file_result(req, &rx[i], ev->done, &fr[i]);
                bs->done(bs->ctx, i, &fr[i]);
                break;
            case THUMBNAIL__V1__BATCH_EVENT__EVENT_QUEUED:
                if (bs->queued)
                    bs->queued(bs->ctx, i);
                break;
            default: break; /* started, summary: nothing to do here */
            }
            thumbnail__v1__batch_event__free_unpacked(ev, NULL);
        }
    }
    wait_for(&c, TAG_STATUS);
    res->code = c.status;
    res->interrupted = c.interrupted;
    res->abandoned = c.abandoned;
    if (c.interrupted) {
        res->local = true;
        snprintf(res->message, sizeof(res->message), "interrupted");
    } else if (c.abandoned || c.timed_out) {
        res->local = true;
        res->code = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(res->message, sizeof(res->message), "no answer in time (deadline exceeded)");
    } else if (res->local) {
        /* message already set */
    } else if (c.status != GRPC_STATUS_OK) {
        copy_status_message(&c, res->message, sizeof(res->message));
    }
    if (res->code == GRPC_STATUS_UNIMPLEMENTED && events)
        res->code = GRPC_STATUS_UNKNOWN; /* not the missing method: events came */
    call_destroy(&c);
out_free:
    free(rx);
    free(fr);
    free(done);
}

grpc_status_code tn_rpc_health(grpc_channel *ch, const char *service, double timeout, int *serving,
                               char *msg, size_t msglen)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    struct call c;
    call_init(&c, cq, NULL);
    c.call = create_call(&c, ch, METHOD_HEALTH_CHECK, timeout);

    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)service;
    grpc_byte_buffer *send = tn_pb_pack(&req.base);
    grpc_byte_buffer *recv = NULL;
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    recv_md_and_status(&c, &ops[3], &ops[5]);
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    start(&c, ops, 6, TAG_STATUS);
    wait_for(&c, TAG_STATUS);
    if (c.abandoned) { /* gRPC still owns the batch's buffers: leak them with the queue */
        snprintf(msg, msglen, "no answer within %.0f s", timeout);
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    }
    grpc_byte_buffer_destroy(send);

    grpc_status_code code = c.status;
    copy_status_message(&c, msg, msglen);
    *serving = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN;
    if (code == GRPC_STATUS_OK) {
        Grpc__Health__V1__HealthCheckResponse *resp = NULL;
        if (recv) {
            grpc_slice s = tn_pb_flatten(recv);
            resp = grpc__health__v1__health_check_response__unpack(NULL, GRPC_SLICE_LENGTH(s),
                                                                   GRPC_SLICE_START_PTR(s));
            grpc_slice_unref(s);
        }
        if (resp) {
            *serving = resp->status;
            grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
        } else {
            code = GRPC_STATUS_INTERNAL;
            snprintf(msg, msglen, "undecodable HealthCheckResponse");
        }
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    call_destroy(&c);
    tn_rpc_cq_destroy(&cq);
    return code;
}

grpc_channel *tn_rpc_channel_create(const struct tn_rpc_channel_config *cc)
{
    grpc_arg args[7];
    size_t n = 0;
    memset(args, 0, sizeof(args));
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[n++].value.integer = TN_RPC_MAX_RECEIVE;
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[n++].value.integer = (int)(cc->chunk_size + SEND_OVERHEAD);
    args[n].type = GRPC_ARG_STRING;
    args[n].key = (char *)GRPC_ARG_PRIMARY_USER_AGENT_STRING;
    args[n++].value.string = (char *)"thumbnail_client/" TN_VERSION;
    /* gRPC's own retries (on by default) buffer the upload, and with them a cancel
     * at the wrong moment was seen to leave RECV_MESSAGE and the status pending
     * forever. We retry whole calls ourselves (job.c). */
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_ENABLE_RETRIES;
    args[n++].value.integer = 0;
    /* Without it, gRPC picks the first address that connects and sends every call there. */
    args[n].type = GRPC_ARG_STRING;
    args[n].key = (char *)GRPC_ARG_SERVICE_CONFIG;
    args[n++].value.string = (char *)"{\"loadBalancingConfig\":[{\"round_robin\":{}}]}";
    if (cc->authority) {
        args[n].type = GRPC_ARG_STRING;
        args[n].key = (char *)GRPC_ARG_DEFAULT_AUTHORITY;
        args[n++].value.string = (char *)cc->authority;
    }
    if (cc->tls && cc->tls_server_name) {
        args[n].type = GRPC_ARG_STRING;
        args[n].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[n++].value.string = (char *)cc->tls_server_name;
    }
    grpc_channel_args ca = {.num_args = n, .args = args};
    grpc_channel_credentials *creds;
    if (cc->tls) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = cc->key_pem, .cert_chain = cc->cert_pem};
        creds = grpc_ssl_credentials_create_ex(cc->ca_pem, cc->cert_pem ? &pair : NULL, NULL, NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    grpc_channel *ch = grpc_channel_create(cc->target, creds, &ca);
    grpc_channel_credentials_release(creds);
    return ch;
}

static const char *state_name(grpc_connectivity_state s)
{
    switch (s) {
    case GRPC_CHANNEL_IDLE: return "IDLE";
    case GRPC_CHANNEL_CONNECTING: return "CONNECTING";
    case GRPC_CHANNEL_READY: return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE: return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN: return "SHUTDOWN";
    }
    return "?";
}

int tn_rpc_wait_ready(grpc_channel *ch, double timeout, bool stop_on_failure, const char **name)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis((int64_t)(timeout * 1000), GPR_TIMESPAN));
    grpc_connectivity_state s = grpc_channel_check_connectivity_state(ch, 1);
    while (s != GRPC_CHANNEL_READY && s != GRPC_CHANNEL_SHUTDOWN &&
           !(stop_on_failure && s == GRPC_CHANNEL_TRANSIENT_FAILURE)) {
        grpc_channel_watch_connectivity_state(ch, s, deadline, cq, NULL);
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE || !ev.success)
            break; /* deadline: the state did not change in time */
        /* try_to_connect again: after a failure the channel may have gone IDLE. */
        s = grpc_channel_check_connectivity_state(ch, 1);
        tn_log_debug("channel state %s", state_name(s));
    }
    tn_rpc_cq_destroy(&cq);
    *name = state_name(s);
    return s == GRPC_CHANNEL_READY                                  ? 0
           : stop_on_failure && s == GRPC_CHANNEL_TRANSIENT_FAILURE ? -ECONNREFUSED
                                                                    : -ETIMEDOUT;
}

void tn_rpc_cq_destroy(grpc_completion_queue **cq)
{
    if (!*cq)
        return;
    grpc_completion_queue_shutdown(*cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(*cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_completion_queue_destroy(*cq);
    *cq = NULL;
}
