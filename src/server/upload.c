/*
 * The receive side of a Generate call (CQ thread): options, the upload
 * spooled to an O_TMPFILE file, pull mode's range data, local mode's file
 * under --media-root, and the receive-side limits (--idle-timeout,
 * --min-upload-rate, --range-timeout). A complete upload is handed to the
 * poller (upload_complete()).
 */
#include "front_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "data_msg.h"
#include "log.h"
#include "media_root.h"
#include "metrics.h"
#include "options_msg.h"
#include "pbbuf.h"
#include "status.h"
#include "thumbnail.pb-c.h"

/* Free space kept in the spool beyond declared uploads: 1 % of the file
 * system, at least SPOOL_MARGIN, but never more than 1/SPOOL_MARGIN_SHARE of
 * it (a small spool, e.g. a 64 MiB tmpfs, must still take uploads). */
#define SPOOL_MARGIN (64ull << 20)
#define SPOOL_MARGIN_SHARE 8

/* ------------------------------------------------------------------------ */
/* Receiving: failure and the next message                                  */

void gen_fail(struct gen_call *c, int code, const char *fmt, ...)
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
    if (c->shared.spool_fd >= 0) {
        close(c->shared.spool_fd);
        c->shared.spool_fd = -1;
    }
    finish_locked(c, code, "%s", msg);
    abandon_job_locked(c); /* pull mode: a job is running already */
    pthread_mutex_unlock(&c->mu);
}

/* f->recving: the uploads waiting for a message, scanned for --idle-timeout.
 * CQ thread only; a call on it cannot be destroyed: its RECV holds a reference. */
void request_message(struct gen_call *c)
{
    dlink_push(&c->f->recving, &c->cq.recv_link);
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->cq.recv_buf;
    pthread_mutex_lock(&c->mu);
    gen_ref_locked(c);
    pthread_mutex_unlock(&c->mu);
    start_batch(c->call, &op, 1, &c->t_recv);
}

/* ------------------------------------------------------------------------ */
/* The spool                                                                */

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

/* A write to the spool file failed with errno e: log it and fail the call.
 * A full spool (ENOSPC, EDQUOT) is RESOURCE_EXHAUSTED, which a client may
 * retry later or elsewhere; anything else UNAVAILABLE. */
static void spool_failed(struct gen_call *c, const char *syscall, const char *what, int e)
{
    tn_log_error("%s() to spool file failed: %s", syscall, strerror(e));
    gen_fail(c, e == ENOSPC || e == EDQUOT ? TN_RESOURCE_EXHAUSTED : TN_UNAVAILABLE,
             "the server could not store %s: %s", what, strerror(e));
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
    if (c->cq.declared <= usable)
        return 0;
    gen_fail(c, TN_RESOURCE_EXHAUSTED,
             "the server's spool (--spool-dir) has %" PRIu64 " MiB free, the upload needs %" PRIu64
             " MiB; retry later",
             usable >> 20, (c->cq.declared + (1u << 20) - 1) >> 20);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Local mode                                                               */

/*
 * Open local_path under --media-root for a local-mode job (media_root.h).
 * Returns the fd and its size, or fails the call (the status says why, in the
 * user's terms) and returns -1.
 */
int open_local(struct gen_call *c, const char *path, uint64_t *size)
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

/* ------------------------------------------------------------------------ */
/* Options                                                                  */

/* The proto's Options into c->job.opts, defaults filled in and checked.
 * Returns 0 or fails the call (INVALID_ARGUMENT) and returns -1. */
int take_job_opts(struct gen_call *c, const Thumbnail__V1__Options *o)
{
    struct tn_job_opts *j = &c->job.opts;
    char err[TN_IPC_MESSAGE_MAX];

    if (tn_options_to_job(o, c->probe, j, err, sizeof(err)) != TN_OK) {
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
        int lfd = open_local(c, o->local_path, &c->cq.file_size);
        if (lfd < 0)
            return -1;
        c->shared.spool_fd = lfd;
        c->cq.local = true;
        cache_key_local(c, lfd);
        c->cq.have_options = true;
        return 0;
    }
    c->cq.pull = o->pull;
    c->cq.declared = o->size;
    c->cq.file_size = o->size;
    /* Pull mode: the spool file only holds the ranges pulled; ENOSPC while
     * writing them is RESOURCE_EXHAUSTED. */
    if (c->cq.declared && !c->cq.pull && check_spool_space(c) < 0)
        return -1;
    int fd = open_spool(cfg->spool_dir);
    if (fd < 0) {
        tn_log_error("cannot create a spool file in %s: %s", cfg->spool_dir, strerror(-fd));
        gen_fail(c, TN_UNAVAILABLE, "the server cannot store uploads right now (spool: %s)",
                 strerror(-fd));
        return -1;
    }
    c->shared.spool_fd = fd;
    if (!c->cq.pull)
        cache_hash_begin(c); /* the key of an upload is its content's */
    if (c->cq.pull && (c->cq.pull_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        tn_log_error("dup() of a spool file failed: %s", strerror(errno));
        gen_fail(c, TN_UNAVAILABLE, "the server is out of resources (%s)", strerror(errno));
        return -1;
    }
    c->cq.have_options = true;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Pull mode: range data                                                    */

/* Pull mode: one RangeData message. Returns 0 or fails the call and returns -1. */
static int take_range(struct gen_call *c, uint64_t offset, const uint8_t *data, size_t len)
{
    pthread_mutex_lock(&c->mu);
    bool out = c->shared.range_out;
    uint64_t want = c->shared.range_off + c->shared.range_got,
             left = c->shared.range_len - c->shared.range_got;
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
        ssize_t n = pwrite(c->cq.pull_fd, data + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            spool_failed(c, "pwrite", "the pulled bytes", errno);
            return -1;
        }
        done += (size_t)n;
    }
    c->cq.received += len;
    tn_metrics_front_spool_add((int64_t)len); /* released in gen_destroy(), like uploads */

    pthread_mutex_lock(&c->mu);
    c->shared.range_got += len;
    if (c->shared.range_got == c->shared.range_len) {
        c->shared.range_out = false;
        struct tn_ipc_read rd;
        memset(&rd, 0, sizeof(rd));
        tn_ipc_header_init(&rd.h, TN_IPC_READ_REPLY, c->job.h.job_id);
        rd.offset = c->shared.range_off;
        rd.length = c->shared.range_len;
        /* The worker waits for this: its socket buffer is empty. -EPIPE: the
         * worker is gone, which the poller reports. */
        int rc = c->shared.reply_fd >= 0
                     ? tn_ipc_send(c->shared.reply_fd, &rd, sizeof(rd), NULL, 0, MSG_DONTWAIT)
                     : 0;
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

/* ------------------------------------------------------------------------ */
/* Upload data                                                              */

static int spool_write(struct gen_call *c, const unsigned char *p, size_t len)
{
    const struct tn_config *cfg = c->f->cfg;
    if (c->cq.received + len > cfg->max_upload_bytes) {
        gen_fail(c, TN_RESOURCE_EXHAUSTED,
                 "upload exceeds this server's --max-upload-bytes of %" PRIu64 " bytes",
                 cfg->max_upload_bytes);
        return -1;
    }
    if (c->cq.declared && c->cq.received + len > c->cq.declared) {
        gen_fail(c, TN_INVALID_ARGUMENT,
                 "upload sent more than the %" PRIu64 " bytes declared in options.size",
                 c->cq.declared);
        return -1;
    }
    while (len > 0) {
        ssize_t n = write(c->shared.spool_fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            spool_failed(c, "write", "the upload", errno);
            return -1;
        }
        cache_hash_update(c, p, (size_t)n);
        p += n;
        len -= (size_t)n;
        c->cq.received += (uint64_t)n;
        tn_metrics_bytes_received((uint64_t)n);
        tn_metrics_front_spool_add(n); /* released in gen_destroy() */
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
    /* pull mode writes ranges at their offsets (take_range), local mode has no upload */
    if (c->cq.pull || c->cq.local || bb->type != GRPC_BB_RAW ||
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
    size_t i = tn_data_msg_header(hdr, nh, sb->length, &n);
    if (!i)
        return 0;
    const struct tn_config *cfg = c->f->cfg;
    if (c->cq.received + n > cfg->max_upload_bytes ||
        (c->cq.declared && c->cq.received + n > c->cq.declared))
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
            /* hashed as it goes out: a failed write fails the call anyway */
            cache_hash_update(c, iov[niov].iov_base, iov[niov].iov_len);
            skip = 0;
            niov++;
        }
        struct iovec *v = iov;
        while (niov > 0) {
            ssize_t w = writev(c->shared.spool_fd, v, niov);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                spool_failed(c, "writev", "the upload", errno);
                return -1;
            }
            c->cq.received += (uint64_t)w;
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
    *complete = c->cq.declared && c->cq.received == c->cq.declared;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* A complete upload, and the receive loop                                  */

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

/* The upload is complete: hand the call to the poller for dispatch. */
void upload_complete(struct gen_call *c)
{
    struct front *f = c->f;
    const struct tn_config *cfg = f->cfg;
    int sp[2];

    uint64_t size = c->cq.pull || c->cq.local ? c->cq.file_size : c->cq.received;
    if (size == 0) {
        gen_fail(c, TN_INVALID_ARGUMENT, "the file is empty (0 bytes): not a video");
        return;
    }
    if (cache_serve(c))
        return; /* a hit: the results are on their way, no job */
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
    c->job.pull = c->cq.pull ? 1 : 0;

    pthread_mutex_lock(&c->mu);
    c->shared.reply_fd = sp[0];
    c->shared.worker_fd = sp[1];
    c->shared.job_deadline_ms = dl;
    gen_ref_locked(c); /* held by the dispatch list, then by the poller */
    pthread_mutex_unlock(&c->mu);

    pthread_mutex_lock(&f->mu);
    c->lists.pend_next = NULL;
    if (f->pend_tail)
        f->pend_tail->lists.pend_next = c;
    else
        f->pend_head = c;
    f->pend_tail = c;
    pthread_mutex_unlock(&f->mu);
    uint64_t one = 1;
    if (write(f->evfd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        tn_log_error("write() to eventfd failed: %s", strerror(errno));
}

void on_recv(struct gen_call *c, bool ok)
{
    grpc_byte_buffer *bb = c->cq.recv_buf;
    c->cq.recv_buf = NULL;
    dlink_remove(&c->cq.recv_link); /* request_message() puts it back */
    c->cq.last_msg_ms = tn_mono_ms();
    if (bb)
        c->cq.window_bytes += grpc_byte_buffer_length(bb);

    pthread_mutex_lock(&c->mu);
    bool stop = c->shared.dead || c->shared.status_set;
    pthread_mutex_unlock(&c->mu);
    if (stop)
        goto out;

    if ((!ok || !bb) && c->cq.pull && c->cq.have_options) {
        /* Pull mode: a half-close is fine unless the worker waits for bytes. */
        pthread_mutex_lock(&c->mu);
        c->shared.recv_closed = true;
        bool out = c->shared.range_out;
        uint64_t off = c->shared.range_off + c->shared.range_got,
                 left = c->shared.range_len - c->shared.range_got;
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
        if (!c->cq.have_options && grpc_call_failed_before_recv_message(c->call)) {
            pthread_mutex_lock(&c->mu); /* a reset, not a request: status CANCELLED */
            c->shared.dead = true;
            pthread_mutex_unlock(&c->mu);
        } else if (!c->cq.have_options)
            gen_fail(c, TN_INVALID_ARGUMENT, "the request stream ended before the options");
        else
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "the upload ended after %" PRIu64 " bytes without an end message%s",
                     c->cq.received, c->cq.declared ? " or the declared size" : "");
        goto out;
    }

    tn_metrics_msg_received(c->probe ? TN_M_PROBE : TN_M_GENERATE);
    bool complete = false;
    grpc_slice s = grpc_empty_slice();
    if (c->cq.have_options) {
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
    if (c->cq.have_options && !c->cq.pull && (i = tn_data_msg_header(p, len, len, &n)) != 0) {
        if (spool_write(c, p + i, (size_t)n) < 0)
            goto out_slice;
        complete = c->cq.declared && c->cq.received == c->cq.declared;
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
        if (c->cq.have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT, "options sent twice; send them once, first");
            rc = -1;
        } else {
            rc = take_options(c, req->options);
            complete = rc == 0 && (c->cq.pull || c->cq.local); /* nothing to upload */
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_RANGE_DATA:
        if (!c->cq.pull) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "range_data is only for pull mode (options.pull); upload with data");
            rc = -1;
        } else {
            rc = take_range(c, req->range_data->offset, req->range_data->data.data,
                            req->range_data->data.len);
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_DATA:
        if (!c->cq.have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "data before options; the first message must "
                     "carry the options");
            rc = -1;
        } else if (c->cq.pull || c->cq.local) {
            gen_fail(c, TN_INVALID_ARGUMENT, "data sent in %s mode, where nothing is uploaded",
                     c->cq.pull ? "pull" : "local");
            rc = -1;
        } else {
            rc = spool_write(c, req->data.data, req->data.len);
            complete = rc == 0 && c->cq.declared && c->cq.received == c->cq.declared;
        }
        break;
    case THUMBNAIL__V1__GENERATE_REQUEST__MSG_END:
        if (!c->cq.have_options) {
            gen_fail(c, TN_INVALID_ARGUMENT, "end before options");
            rc = -1;
        } else if (c->cq.pull || c->cq.local) {
            gen_fail(c, TN_INVALID_ARGUMENT, "end sent in %s mode, where nothing is uploaded",
                     c->cq.pull ? "pull" : "local");
            rc = -1;
        } else if (c->cq.declared && c->cq.received != c->cq.declared) {
            gen_fail(c, TN_INVALID_ARGUMENT,
                     "upload ended at %" PRIu64 " bytes but options.size declared %" PRIu64,
                     c->cq.received, c->cq.declared);
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
    if (!complete || c->cq.pull) /* pull mode: range data comes after the job started */
        request_message(c);
out_slice:
    grpc_slice_unref(s);
out:
    if (bb)
        grpc_byte_buffer_destroy(bb);
    gen_unref(c);
}

/* ------------------------------------------------------------------------ */
/* --idle-timeout, --min-upload-rate, --range-timeout                       */

/* End uploads that have waited for a message longer than --idle-timeout, or
 * that sent less than --min-upload-rate's bytes in a window of it (a trickle
 * of tiny messages, one per stream, keeps a per-message timer from ever
 * firing: the rate does not care how many messages carry the bytes); in pull
 * mode, a range request unanswered for --range-timeout. The status ends the
 * call; its outstanding RECV_MESSAGE then completes and on_recv() sees
 * status_set and releases its reference, so the call, its slot and its spool
 * file go away as for any other failed upload. */
void check_idle(struct front *f, int64_t now)
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
        struct gen_call *c = DLINK_ENTRY(l, struct gen_call, cq.recv_link);
        if (c->cq.idle_ended)
            continue;
        int64_t since = c->cq.last_msg_ms;
        if (c->cq.pull && c->cq.have_options) {
            /* Pull mode: silence is normal while the worker decodes; only an
             * unanswered range request counts. */
            pthread_mutex_lock(&c->mu);
            bool out = c->shared.range_out;
            if (c->shared.range_since_ms > since)
                since = c->shared.range_since_ms;
            pthread_mutex_unlock(&c->mu);
            if (!out || range <= 0 || now - since < range)
                continue;
            c->cq.idle_ended = true;
            tn_log_info("Generate peer=%s: a range request unanswered for %g s: ending it",
                        c->cq.peer, (double)range / 1000);
            gen_fail(c, TN_DEADLINE_EXCEEDED,
                     "the client did not answer a range request for %g s; the call was ended "
                     "(%s)",
                     (double)range / 1000, range_flag ? "--range-timeout" : "--idle-timeout");
            continue;
        }
        if (idle > 0 && now - since >= idle) {
            c->cq.idle_ended = true;
            tn_log_info("Generate peer=%s: no upload data for %g s: ending it", c->cq.peer,
                        cfg->idle_timeout_s);
            gen_fail(c, TN_DEADLINE_EXCEEDED,
                     "no upload data for %g s; the call was ended (--idle-timeout)",
                     cfg->idle_timeout_s);
            continue;
        }
        if (!cfg->min_upload_bytes || now - c->cq.window_start_ms < window)
            continue;
        if (c->cq.window_bytes >= cfg->min_upload_bytes) {
            c->cq.window_start_ms = now;
            c->cq.window_bytes = 0;
            continue;
        }
        c->cq.idle_ended = true;
        tn_log_info("Generate peer=%s: %" PRIu64
                    " bytes in %g s, under --min-upload-rate: ending it",
                    c->cq.peer, c->cq.window_bytes, cfg->min_upload_window_s);
        gen_fail(c, TN_DEADLINE_EXCEEDED,
                 "the upload sent %" PRIu64 " bytes in %g s, less than this server's "
                 "--min-upload-rate of %" PRIu64 " bytes per %g s; the call was ended",
                 c->cq.window_bytes, cfg->min_upload_window_s, cfg->min_upload_bytes,
                 cfg->min_upload_window_s);
    }
}
