/*
 * The client side of the gRPC API, on the C core completion-queue API.
 *
 * DESIGN. Each worker thread owns one completion queue (for_next) and drives
 * one call at a time synchronously: it starts a batch, then waits on its own
 * queue. A call has at most three batches in flight: the receive-status batch
 * (started first, so an early error from the server — too large, not a video —
 * is seen during the upload and stops it), one send batch, and one receive
 * batch. Waiting wakes every 200 ms to notice an interrupt (SIGINT) and cancel.
 * Every wait is bounded by the call's deadline, and by a grace period after a
 * cancel: a call whose batches gRPC never completes is abandoned (leaked with
 * its completion queue), never waited for forever.
 * The channel is shared by all threads.
 */
#ifndef TN_CLIENT_RPC_H
#define TN_CLIENT_RPC_H

#include <grpc/grpc.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ipc.h"

/* Big enough for any server chunk size we would configure; never rely on the 4 MiB default. */
#define TN_RPC_MAX_RECEIVE (64 << 20)

/* How to reach the server (security and balancing). */
struct tn_rpc_channel_config {
    const char *target;          /* gRPC target URI (target.h) */
    const char *authority;       /* :authority and default TLS name; NULL = from the target */
    uint64_t chunk_size;         /* upload bytes per message */
    bool tls;                    /* else plaintext */
    const char *ca_pem;          /* TLS roots, PEM text; NULL = the system's */
    const char *cert_pem;        /* client certificate chain for mTLS, PEM text; NULL = none */
    const char *key_pem;         /* its private key; set iff cert_pem is */
    const char *tls_server_name; /* name to verify the server's certificate against; NULL = host */
};

/*
 * Channel for cc with explicit message size limits (receive
 * TN_RPC_MAX_RECEIVE, send chunk_size plus room for the message framing) and
 * the round_robin load-balancing policy, so that a target with several
 * addresses (several --server values, a dns:/// name with many records)
 * spreads calls over all of those that are up. Never NULL (gRPC returns a
 * lame channel for a bad target).
 */
grpc_channel *tn_rpc_channel_create(const struct tn_rpc_channel_config *cc);

/*
 * Ask the channel to connect and wait until it is READY or `timeout` seconds
 * pass. Returns 0 when ready, else -ETIMEDOUT and the last state's name in
 * *state_name. With stop_on_failure, returns -ECONNREFUSED as soon as the
 * channel reaches TRANSIENT_FAILURE (every address failed once), so that the
 * caller can find out why at once.
 */
int tn_rpc_wait_ready(grpc_channel *ch, double timeout, bool stop_on_failure,
                      const char **state_name);

/*
 * grpc.health.v1.Health/Check for `service`. Returns the call's status code
 * (GRPC_STATUS_OK: *serving holds the ServingStatus enum value), with the
 * status details in msg.
 */
grpc_status_code tn_rpc_health(grpc_channel *ch, const char *service, double timeout, int *serving,
                               char *msg, size_t msglen);

/* A thumbnail header as received (validated: index in range, not seen before, PNG). */
struct tn_rpc_thumb {
    uint32_t index; /* into the request's times (0 if none were sent) */
    uint32_t width;
    uint32_t height;
    double requested_time;
    double actual_time;
    uint64_t size;
    char reason[TN_IPC_REASON_MAX]; /* Thumbnail.reason: how the server got the picture */
    int kind;                       /* Thumbnail.kind: 0 image, 1 sprite, 2 WebVTT */
};

/*
 * Where received thumbnails go. Callbacks run on the calling thread. A
 * negative return (-errno) aborts the call: it is cancelled and reported as a
 * local error with strerror. The rpc layer checks the sizes: data never
 * exceeds the header's size, and a thumbnail is complete only when it is
 * reached.
 */
struct tn_rpc_sink {
    void *ctx;
    int (*begin)(void *ctx, const struct tn_rpc_thumb *t);
    int (*data)(void *ctx, uint32_t index, const void *p, size_t n);
    /* n more bytes of video were accepted by gRPC; may be NULL. */
    void (*sent)(void *ctx, uint64_t n);
};

/* How the video reaches the server. */
enum tn_rpc_transfer {
    TN_RPC_UPLOAD = 0, /* the whole file, in chunk_size messages */
    TN_RPC_PULL,       /* only the ranges the server asks for (Options.pull) */
    TN_RPC_LOCAL,      /* a path under the server's --media-root (Options.local_path) */
};

struct tn_rpc_request {
    int fd;                /* the video, read with pread from offset 0 */
    uint64_t size;         /* bytes to send (declared in Options.size) */
    const char *file_name; /* Options.file_name */
    const struct tn_time_point *times;
    size_t n_times; /* 0 = none: the server picks one */
    uint32_t max_width;
    uint32_t max_height;
    bool upscale;
    int mode;                    /* enum tn_mode */
    int format;                  /* enum tn_format; 0 = PNG */
    uint32_t quality;            /* Options.quality: 0 = the server's default */
    bool lossless;               /* Options.lossless */
    uint32_t png_level;          /* Options.png_level: 0 = the server's default */
    uint64_t chunk_size;         /* bytes of video per message */
    double timeout;              /* seconds from the start of the call */
    const char *authorization;   /* metadata "authorization" (e.g. "Bearer <token>"); NULL = none */
    volatile sig_atomic_t *stop; /* set asynchronously: cancel the call; may be NULL */
    /* engine options */
    int fit;            /* enum tn_fit; 0 = the server's default */
    uint32_t pad_color; /* 0xRRGGBB */
    uint32_t count;     /* > 0: expect this many thumbnails (n_times must be 0) */
    double every;       /* > 0: expect 1..TN_JOB_MAX_TIMES thumbnails (n_times must be 0) */
    bool cover_art;
    bool probe;      /* call Probe instead: the sink gets the JSON as thumbnail 0 */
    bool storyboard; /* expect the sprite (index 0) and the WebVTT (index 1) */
    uint32_t tile_width;
    uint32_t columns;
    int transfer;           /* enum tn_rpc_transfer */
    const char *local_path; /* TN_RPC_LOCAL: relative to the server's --media-root */

    /* Options.animation: expect one animated WebP (index 0) */
    bool animated;
    struct tn_time_point anim_start, anim_end; /* kind 0 = not sent */
    double fps;                                /* 0 = the server's default */
};

struct tn_rpc_result {
    /* The gRPC status of the call. For a client-side error (local == true)
     * this is the status the call ended with after our cancel, usually CANCELLED. */
    grpc_status_code code;
    bool local;       /* the failure is ours: I/O, protocol violation, interrupt */
    bool interrupted; /* *stop was seen */
    bool abandoned;   /* gRPC never completed the cancelled call: leak cq, skip grpc_shutdown */
    char message[512];
    uint32_t thumbnails; /* complete thumbnails received */
    uint64_t bytes_sent; /* bytes of video sent (all of them, the pulled ranges, or none) */
    uint32_t ranges;     /* pull mode: range requests answered */
};

/*
 * One Generate call: upload req->size bytes of req->fd (or answer the server's
 * range requests from it, or name req->local_path), pass the thumbnails to
 * the sink, wait for the status. Success means code == GRPC_STATUS_OK, !local,
 * and every expected thumbnail (count, or max(1, n_times); with every, at
 * least one) arrived complete; anything
 * else is described in res->message. cq must be a for_next queue used by this
 * thread only, and is empty again on return, unless res->abandoned: then gRPC
 * still holds batches on it and the caller must leak it (and skip grpc_shutdown).
 */
void tn_rpc_generate(grpc_channel *ch, grpc_completion_queue *cq, const struct tn_rpc_request *req,
                     const struct tn_rpc_sink *sink, struct tn_rpc_result *res);

/*
 * Where the events of a Batch call go: file i's thumbnails to sink(ctx, i)
 * (validated as Generate's are), then done(ctx, i, r) with the file's result
 * as tn_rpc_generate() would have reported it (code and message from the
 * server's DONE; a protocol error or a sink failure of that file: local).
 * A file whose DONE never came gets no done() call: the call's own result says why.
 */
struct tn_rpc_batch_sink {
    void *ctx;
    const struct tn_rpc_sink *(*sink)(void *ctx, size_t file);
    void (*done)(void *ctx, size_t file, const struct tn_rpc_result *r);
    void (*queued)(void *ctx, size_t file); /* the server took the file; may be NULL */
};

/*
 * One Batch call over n local paths (relative to the server's --media-root)
 * with req's options (its file-specific fields unused; req->timeout bounds
 * each file: the call's deadline is n times it). res is the call's result;
 * UNIMPLEMENTED with no event: the server has no Batch (fall back to
 * Generate). cq as for tn_rpc_generate().
 */
void tn_rpc_batch(grpc_channel *ch, grpc_completion_queue *cq, const struct tn_rpc_request *req,
                  const char *const *paths, size_t n, const struct tn_rpc_batch_sink *bs,
                  struct tn_rpc_result *res);

/* Was any call abandoned? Then neither destroy the channel nor call
 * grpc_shutdown(): both would wait for it; leave the rest to exit(). */
bool tn_rpc_wedged(void);

/* Shut down, drain and destroy a completion queue. NULL-safe. */
void tn_rpc_cq_destroy(grpc_completion_queue **cq);

#endif
