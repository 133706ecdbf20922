/*
 * A Batch call: thumbnails of many files under --media-root in one call, the
 * files fanned out over the workers, per-file events streamed back.
 *
 * DESIGN. A Batch call is a struct gen_call (the parent) with a struct batch
 * beside it: so it is one call for every limit that counts calls
 * (--max-concurrent-calls, --max-calls-per-peer, the drain), the send-side
 * --idle-timeout applies as to Generate, and it gets one access line. Each
 * file is a child gen_call without a grpc_call, made as a local-mode Generate
 * would be (open_local(), upload_complete()), so it takes the existing job
 * path unchanged: the dispatch list, the queue, the poller's ACK / RESULT /
 * DONE handling, deadlines and kills. The poller was not taught about
 * batches; three hooks forward what it does to a child to the parent:
 *
 *  - kick_send_locked() on a child (a result arrived, or its status was set)
 *    calls batch_child_kick_locked(): the results become THUMBNAIL events of
 *    the parent, the status a DONE event with the very code and message a
 *    Generate call would have had;
 *  - the ACK calls batch_child_started_locked(): a STARTED event;
 *  - kick_send_locked() / on_send_done() on the parent stream the events.
 *
 * Events sit in one queue under the parent's mu and go out one message at a
 * time (one SEND outstanding, as for Generate), a thumbnail's header and data
 * messages in a row. The CQ thread starts files (batch_pump()): after the
 * request, after each send completion, when the call ends, and on the tick.
 * At most a window of 2 x the workers is "active" (started, DONE not yet
 * sent): enough that a worker finishing a file finds the next in the queue,
 * few enough that other clients' jobs wait behind at most two rounds, and
 * that a client reading slowly holds at most a window of results (the DONE
 * of a file goes out after its thumbnails). A file is not started while the
 * queue is at --max-queued-jobs or results at --max-result-bytes: it waits
 * (the tick retries) instead of failing.
 *
 * Ownership: the parent owns the struct batch (batch_free() in gen_destroy()).
 * A child holds a reference on the parent until it is destroyed; the parent's
 * batch holds one reference on each child in kids[] until the child's DONE is
 * forwarded, or the call is over (then the children left are abandoned as a
 * cancelled Generate's job is: dead, reply socket shut down, the worker stops).
 *
 * Lock order: front.mu, then a child's mu, then the parent's mu. The parent's
 * mu is never held while a child's is taken (batch_pump() collects under it,
 * then works on the children unlocked).
 */
#include "front_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

#include "library.h"
#include "log.h"
#include "metrics.h"
#include "pbbuf.h"
#include "status.h"

enum bev_kind { BEV_QUEUED, BEV_STARTED, BEV_THUMB, BEV_DONE, BEV_SUMMARY };

/* One event waiting to be sent. Owns r and msg. */
struct bev {
    struct bev *next;
    enum bev_kind kind;
    uint32_t file;
    struct result *r; /* BEV_THUMB */
    int code;         /* BEV_DONE */
    char *msg;        /* BEV_DONE */
};

struct batch {
    grpc_byte_buffer *payload; /* the request, until batch_start(); owned */
    /* CQ thread: set by batch_start(), read-only after but `next` */
    char **paths; /* owned */
    size_t n_files;
    size_t next; /* the next file to start */
    bool ready;  /* the request was accepted: files may start */
    int cap;     /* slots in kids[] */
    struct timespec started;
    /* under the parent's mu */
    struct gen_call **kids; /* children the batch holds a reference on */
    bool *kid_done;         /* their DONE was forwarded: release them */
    int active;             /* files started whose DONE is not sent yet */
    struct bev *head, *tail, *cur;
    bool cur_header_sent;
    uint64_t cur_off;
    uint32_t ok, failed;
    bool summary_queued;
};

/* ------------------------------------------------------------------------ */
/* Events (parent's mu held)                                                */

static void bev_free(struct bev *e)
{
    if (!e)
        return;
    free_result(e->r);
    free(e->msg);
    free(e);
}

static void drop_events_locked(struct batch *b)
{
    bev_free(b->cur);
    b->cur = NULL;
    while (b->head) {
        struct bev *e = b->head;
        b->head = e->next;
        bev_free(e);
    }
    b->tail = NULL;
}

/* Out of memory for an event: the call cannot keep its promise of one event
 * per step; abort as call_alloc() does, the master respawns the front. */
static struct bev *push_locked(struct batch *b, enum bev_kind kind, uint32_t file)
{
    struct bev *e = call_alloc(sizeof(*e));
    e->kind = kind;
    e->file = file;
    if (b->tail)
        b->tail->next = e;
    else
        b->head = e;
    b->tail = e;
    return e;
}

static void put_varint(unsigned char **p, uint64_t v)
{
    while (v >= 0x80) {
        *(*p)++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *(*p)++ = (unsigned char)v;
}

/* BatchEvent{file, data: bytes} encoded by hand: one copy out of the memfd. */
static grpc_byte_buffer *data_message(uint32_t file, const unsigned char *p, size_t len)
{
    grpc_slice s = grpc_slice_malloc(len + 22);
    unsigned char *w = GRPC_SLICE_START_PTR(s);
    if (file) {
        *w++ = 0x08; /* field 1, varint */
        put_varint(&w, file);
    }
    *w++ = 0x2a; /* field 5, length-delimited */
    put_varint(&w, len);
    memcpy(w, p, len);
    w += len;
    grpc_slice used = grpc_slice_sub(s, 0, (size_t)(w - GRPC_SLICE_START_PTR(s)));
    grpc_slice_unref(s);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&used, 1);
    grpc_slice_unref(used);
    return bb;
}

static grpc_byte_buffer *event_message(const struct gen_call *c, const struct bev *e)
{
    const struct batch *b = c->batch;
    Thumbnail__V1__BatchEvent ev = THUMBNAIL__V1__BATCH_EVENT__INIT;
    Thumbnail__V1__BatchStarted st = THUMBNAIL__V1__BATCH_STARTED__INIT;
    Thumbnail__V1__Thumbnail th = THUMBNAIL__V1__THUMBNAIL__INIT;
    Thumbnail__V1__BatchFileDone done = THUMBNAIL__V1__BATCH_FILE_DONE__INIT;
    Thumbnail__V1__BatchSummary sum = THUMBNAIL__V1__BATCH_SUMMARY__INIT;
    ev.file = e->file;
    switch (e->kind) {
    case BEV_QUEUED:
        ev.event_case = THUMBNAIL__V1__BATCH_EVENT__EVENT_QUEUED;
        ev.queued = b->paths[e->file];
        break;
    case BEV_STARTED:
        ev.event_case = THUMBNAIL__V1__BATCH_EVENT__EVENT_STARTED;
        ev.started = &st;
        break;
    case BEV_THUMB: {
        thumbnail_header(&th, &e->r->meta);
        ev.event_case = THUMBNAIL__V1__BATCH_EVENT__EVENT_THUMBNAIL;
        ev.thumbnail = &th;
        break;
    }
    case BEV_DONE:
        done.code = e->code;
        done.message = e->msg ? e->msg : "";
        ev.event_case = THUMBNAIL__V1__BATCH_EVENT__EVENT_DONE;
        ev.done = &done;
        break;
    case BEV_SUMMARY:
        sum.files = (uint32_t)b->n_files;
        sum.ok = b->ok;
        sum.failed = b->failed;
        sum.bytes_out = c->shared.bytes_out;
        sum.seconds = elapsed_ms(&b->started) / 1000;
        ev.file = 0;
        ev.event_case = THUMBNAIL__V1__BATCH_EVENT__EVENT_SUMMARY;
        ev.summary = &sum;
        break;
    }
    return tn_pb_pack(&ev.base);
}

/* ------------------------------------------------------------------------ */
/* The parent's send side (its mu held; either thread)                      */

void batch_kick_send_locked(struct gen_call *c)
{
    struct batch *b = c->batch;
    if (c->shared.sending || c->shared.status_sent || !c->call)
        return;
    if (c->shared.dead || (c->shared.status_set && c->shared.status_code != TN_OK))
        drop_events_locked(b); /* an error status ends the stream: nothing more after it */
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!c->shared.md_sent)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (!b->cur && b->head) {
        b->cur = b->head;
        b->head = b->cur->next;
        if (!b->head)
            b->tail = NULL;
        b->cur->next = NULL;
        b->cur_header_sent = false;
        b->cur_off = 0;
    }
    if (b->cur) {
        if (b->cur->kind == BEV_THUMB && b->cur_header_sent) {
            uint64_t left = b->cur->r->meta.size - b->cur_off;
            size_t len = (size_t)(left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size);
            c->shared.send_buf = data_message(b->cur->file, b->cur->r->map + b->cur_off, len);
        } else {
            c->shared.send_buf = event_message(c, b->cur);
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->shared.send_buf;
    } else if (c->shared.status_set) {
        status_op_locked(c, &ops[n++]);
    } else {
        return; /* nothing to send yet */
    }
    start_send_locked(c, ops, n);
}

void batch_on_send_done(struct gen_call *c, bool ok)
{
    struct batch *b = c->batch;
    pthread_mutex_lock(&c->mu);
    c->shared.sending = false;
    if (c->shared.send_buf) {
        grpc_byte_buffer_destroy(c->shared.send_buf);
        c->shared.send_buf = NULL;
    }
    if (!ok) {
        c->shared.dead = true;
        drop_events_locked(b);
    } else if (b->cur) {
        tn_metrics_msg_sent(TN_M_BATCH);
        bool over = true;
        if (b->cur->kind == BEV_THUMB) {
            if (!b->cur_header_sent) {
                b->cur_header_sent = true;
            } else {
                uint64_t left = b->cur->r->meta.size - b->cur_off;
                uint64_t len = left < c->f->cfg->chunk_size ? left : c->f->cfg->chunk_size;
                b->cur_off += len;
                c->shared.bytes_out += len;
                tn_metrics_bytes_sent(len);
            }
            over = b->cur_header_sent && b->cur_off >= b->cur->r->meta.size;
            if (over)
                c->shared.thumbs_out++;
        } else if (b->cur->kind == BEV_DONE) {
            b->active--;
        }
        if (over) {
            bev_free(b->cur);
            b->cur = NULL;
        }
    }
    if (!c->shared.dead)
        batch_kick_send_locked(c);
    pthread_mutex_unlock(&c->mu);
    batch_pump(c);
    gen_unref(c);
}

/* ------------------------------------------------------------------------ */
/* Hooks from a child's job (the child's mu held, maybe front.mu too)        */

void batch_child_started_locked(struct gen_call *k)
{
    struct gen_call *c = k->parent;
    pthread_mutex_lock(&c->mu);
    if (!c->shared.dead && !c->shared.status_set) {
        push_locked(c->batch, BEV_STARTED, k->batch_file);
        batch_kick_send_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
}

void batch_child_kick_locked(struct gen_call *k)
{
    struct gen_call *c = k->parent;
    struct batch *b = c->batch;
    pthread_mutex_lock(&c->mu);
    bool over = c->shared.dead || c->shared.status_set;
    while (k->shared.res_head) {
        struct result *r = k->shared.res_head;
        k->shared.res_head = r->next;
        r->next = NULL;
        if (over)
            free_result(r);
        else
            push_locked(b, BEV_THUMB, k->batch_file)->r = r;
    }
    k->shared.res_tail = NULL;
    if (k->shared.status_set && !k->shared.status_sent) {
        k->shared.status_sent = true;
        if (!over) {
            struct bev *e = push_locked(b, BEV_DONE, k->batch_file);
            e->code = k->shared.status_code;
            if (e->code != TN_OK) {
                e->msg = strdup(k->shared.status_msg);
                b->failed++;
            } else {
                b->ok++;
            }
        }
        for (int s = 0; s < b->cap; s++)
            if (b->kids[s] == k)
                b->kid_done[s] = true;
    }
    if (!over)
        batch_kick_send_locked(c);
    pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------------------ */
/* Starting files (CQ thread)                                               */

/* Start file i: a child job made as a local-mode Generate would make it.
 * Returns false when no slot is free (the window is full). */
static bool start_file(struct gen_call *c, size_t i)
{
    struct batch *b = c->batch;
    struct gen_call *k = gen_call_new(c->f);
    k->parent = c;
    k->batch_file = (uint32_t)i;
    k->deadline = c->deadline;
    k->job.opts = c->job.opts;
    snprintf(k->job.file_name, sizeof(k->job.file_name), "%s", b->paths[i]);
    for (char *p = k->job.file_name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"')
            *p = '?'; /* keep log lines one line */
    clock_gettime(CLOCK_MONOTONIC, &k->cq.started);
    k->shared.refs = 1; /* the batch's, in kids[] */

    pthread_mutex_lock(&c->mu);
    int slot = -1;
    for (int s = 0; s < b->cap && slot < 0; s++)
        if (!b->kids[s])
            slot = s;
    if (slot >= 0) {
        b->kids[slot] = k;
        b->kid_done[slot] = false;
        b->active++;
        gen_ref_locked(c); /* the child's, released in gen_destroy() */
        push_locked(b, BEV_QUEUED, k->batch_file);
        batch_kick_send_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (slot < 0) {
        k->parent = NULL;
        gen_unref(k);
        return false;
    }
    /* A failure sets the child's status: the hook makes it the file's DONE. */
    int fd = open_local(k, b->paths[i], &k->cq.file_size);
    if (fd < 0)
        return true;
    k->shared.spool_fd = fd;
    k->cq.local = true;
    cache_key_local(k, fd);
    k->cq.have_options = true;
    upload_complete(k);
    return true;
}

/* Files the batch keeps active: twice the workers (see DESIGN), at most cap. */
static int window(const struct gen_call *c, int *waiting)
{
    struct front *f = c->f;
    pthread_mutex_lock(&f->mu);
    int w = f->workers_left > 0 ? f->workers_left : f->cfg->workers;
    *waiting = f->n_waiting;
    pthread_mutex_unlock(&f->mu);
    w *= 2;
    if (w > c->batch->cap)
        w = c->batch->cap;
    return w < 1 ? 1 : w;
}

void batch_pump(struct gen_call *c)
{
    struct batch *b = c->batch;
    const struct tn_config *cfg = c->f->cfg;
    if (!b || !b->ready)
        return;
    struct gen_call *rel[b->cap];
    int nrel = 0;
    pthread_mutex_lock(&c->mu);
    bool over = c->shared.dead || c->shared.status_set;
    for (int s = 0; s < b->cap; s++)
        if (b->kids[s] && (b->kid_done[s] || over)) {
            rel[nrel++] = b->kids[s];
            b->kids[s] = NULL;
            b->kid_done[s] = false;
        }
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < nrel; i++) {
        if (over) { /* as on_close() does for a cancelled Generate */
            struct gen_call *k = rel[i];
            pthread_mutex_lock(&k->mu);
            k->shared.dead = true;
            abandon_job_locked(k);
            pthread_mutex_unlock(&k->mu);
        }
        gen_unref(rel[i]);
    }
    if (over)
        return;
    while (b->next < b->n_files) {
        int waiting;
        int w = window(c, &waiting);
        pthread_mutex_lock(&c->mu);
        int active = b->active;
        pthread_mutex_unlock(&c->mu);
        if (active >= w || waiting >= cfg->max_queued_jobs)
            break;
        uint64_t held = __atomic_load_n(&held_result_bytes, __ATOMIC_RELAXED);
        if (cfg->max_result_bytes && held >= cfg->max_result_bytes)
            break;
        if (!start_file(c, b->next))
            break;
        b->next++;
    }
    pthread_mutex_lock(&c->mu);
    if (b->next >= b->n_files && b->active == 0 && !b->summary_queued) {
        b->summary_queued = true;
        push_locked(b, BEV_SUMMARY, 0);
        finish_locked(c, TN_OK, "OK"); /* sent after the events */
    }
    pthread_mutex_unlock(&c->mu);
}

/* Batches waiting for room in the queue start files again (CQ thread). */
void batch_tick(struct front *f)
{
    struct gen_call *v[32];
    int n = 0;
    pthread_mutex_lock(&f->mu);
    for (struct dlink *l = f->calls.next; l != &f->calls && n < 32; l = l->next) {
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, lists.all_link);
        if (!c->batch)
            continue;
        pthread_mutex_lock(&c->mu);
        gen_ref_locked(c);
        pthread_mutex_unlock(&c->mu);
        v[n++] = c;
    }
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < n; i++) {
        batch_pump(v[i]);
        gen_unref(v[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* The call                                                                 */

void request_batch(struct front *f)
{
    struct gen_call *c = gen_call_new(f);
    c->batch = call_alloc(sizeof(*c->batch));
    grpc_call_error e =
        grpc_server_request_registered_call(f->server, f->m_batch, &c->call, &c->deadline, &c->md,
                                            &c->batch->payload, f->cq, f->cq, &c->t_new);
    must_succeed(e, "grpc_server_request_registered_call");
}

void batch_free(struct batch *b)
{
    if (!b)
        return;
    if (b->payload)
        grpc_byte_buffer_destroy(b->payload);
    for (size_t i = 0; i < b->n_files; i++)
        free(b->paths[i]);
    free(b->paths);
    drop_events_locked(b);
    free(b->kids); /* empty: every child holds a reference on the call */
    free(b->kid_done);
    free(b);
}

/* The request, checked as a whole: a bad one is the call's status; a bad
 * file is that file's DONE. */
void batch_start(struct gen_call *c)
{
    struct front *f = c->f;
    struct batch *b = c->batch;
    clock_gettime(CLOCK_MONOTONIC, &b->started);
    Thumbnail__V1__BatchRequest *req = NULL;
    if (b->payload) {
        tn_metrics_msg_received(TN_M_BATCH);
        grpc_slice sl = tn_pb_flatten(b->payload);
        req = thumbnail__v1__batch_request__unpack(NULL, GRPC_SLICE_LENGTH(sl),
                                                   GRPC_SLICE_START_PTR(sl));
        grpc_slice_unref(sl);
        grpc_byte_buffer_destroy(b->payload);
        b->payload = NULL;
    }
    if (!req) {
        gen_fail(c, TN_INVALID_ARGUMENT, "malformed BatchRequest message");
        return;
    }
    c->cq.have_options = true; /* a request, not a reset: logged as such */
    const char *dir = req->dir ? req->dir : "", *glob = req->glob ? req->glob : "";
    if (f->media_root_fd < 0) {
        gen_fail(c, TN_FAILED_PRECONDITION,
                 "local mode is off on this server (no --media-root): Batch reads files there; "
                 "upload them with Generate instead");
        goto out;
    }
    if (req->n_paths && (dir[0] || glob[0] || req->recursive)) {
        gen_fail(c, TN_INVALID_ARGUMENT, "give paths, or dir (with glob and recursive), not both");
        goto out;
    }
    if (req->n_paths > LIBRARY_MAX_ENTRIES) {
        gen_fail(c, TN_INVALID_ARGUMENT, "%zu paths: at most %d per Batch call", req->n_paths,
                 LIBRARY_MAX_ENTRIES);
        goto out;
    }
    Thumbnail__V1__Options none = THUMBNAIL__V1__OPTIONS__INIT;
    if (take_job_opts(c, req->options ? req->options : &none) < 0)
        goto out;
    if (req->n_paths) {
        b->paths = calloc(req->n_paths, sizeof(*b->paths));
        for (size_t i = 0; b->paths && i < req->n_paths; i++) {
            b->paths[i] = strdup(req->paths[i]);
            if (!b->paths[i])
                break;
            b->n_files = i + 1;
        }
        if (b->n_files != req->n_paths) {
            gen_fail(c, TN_RESOURCE_EXHAUSTED, "the server is out of memory for this batch");
            goto out;
        }
        snprintf(c->job.file_name, sizeof(c->job.file_name), "%zu paths", b->n_files);
    } else {
        char msg[STATUS_MAX];
        struct tn_lib_entry *v = NULL;
        size_t n = 0;
        int code = tn_lib_list(f, dir, req->recursive, glob, true, &v, &n, msg, sizeof(msg));
        if (code != TN_OK) {
            gen_fail(c, code, "%s", msg);
            goto out;
        }
        b->paths = n ? calloc(n, sizeof(*b->paths)) : NULL;
        if (n && !b->paths) {
            tn_lib_entries_free(v, n);
            gen_fail(c, TN_RESOURCE_EXHAUSTED, "the server is out of memory for this batch");
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            b->paths[i] = v[i].path; /* stolen */
            v[i].path = NULL;
        }
        b->n_files = n;
        tn_lib_entries_free(v, n);
        snprintf(c->job.file_name, sizeof(c->job.file_name), "%s%s%s", dir[0] ? dir : ".",
                 glob[0] ? "/" : "", glob);
        for (char *p = c->job.file_name; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == '"')
                *p = '?';
    }
    b->cap = 2 * (f->cfg->workers > 0 ? f->cfg->workers : 1);
    b->kids = calloc((size_t)b->cap, sizeof(*b->kids));
    b->kid_done = calloc((size_t)b->cap, sizeof(*b->kid_done));
    if (!b->kids || !b->kid_done) {
        gen_fail(c, TN_RESOURCE_EXHAUSTED, "the server is out of memory for this batch");
        goto out;
    }
    b->ready = true;
    tn_log_debug("Batch peer=%s: %zu file(s)", c->cq.peer, b->n_files);
    batch_pump(c);
out:
    thumbnail__v1__batch_request__free_unpacked(req, NULL);
}
