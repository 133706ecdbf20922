/*
 * Framed IPC between the front and the decode workers.
 *
 * DESIGN. Two kinds of SOCK_SEQPACKET sockets carry fixed-size messages (one
 * message = one struct, sent with one sendmsg, so boundaries are the kernel's):
 *
 *  - the job queue, one socketpair made by the master before any fork: the
 *    front sends struct tn_ipc_job with fds [video, reply]; every idle worker
 *    blocks in recvmsg() on the other end and the kernel gives each job to
 *    exactly one of them.
 *  - a reply socketpair per job, made by the front: the worker answers on it
 *    with ACK, then one RESULT per thumbnail (fd: a sealed memfd holding the
 *    encoded image; the message carries the engine's reason for it), then
 *    DONE. EOF before DONE means the worker died. The front closing its end
 *    means "abandon the job" (client gone, deadline).
 *
 * The control socket between the master and each front (front.h) uses the
 * same framing for its two small messages (struct tn_ipc_ctl).
 *
 * File descriptors, never bytes, cross the boundary. Every struct starts with
 * the same header; `version` lets a respawned front and an old worker (reload)
 * refuse each other cleanly instead of misreading.
 */
#ifndef TN_IPC_H
#define TN_IPC_H

#include <stddef.h>
#include <stdint.h>

#include "job_opts.h"

#define TN_IPC_MAGIC 0x544e4a31u /* "TNJ1" */
#define TN_IPC_VERSION 4         /* 4: the job's options carry an animation */
#define TN_IPC_MAX_FDS 2
#define TN_IPC_NAME_MAX 256
#define TN_IPC_MESSAGE_MAX 512
#define TN_IPC_REASON_MAX 200

enum tn_ipc_type {
    /* every job */
    TN_IPC_JOB = 1,    /* front -> worker, fds [video, reply] */
    TN_IPC_ACK = 2,    /* worker -> front: job taken, by this pid */
    TN_IPC_RESULT = 3, /* worker -> front, fd [memfd with the image] */
    TN_IPC_DONE = 4,   /* worker -> front: last message of a job */
    /* pull and local mode */
    TN_IPC_READ = 5,       /* worker -> front (pull): fetch bytes into the video fd */
    TN_IPC_READ_REPLY = 6, /* front -> worker (pull): those bytes are in the video fd now */
    /* the control socket between the master and a front (front.h) */
    TN_IPC_CTL_READY = 7,   /* front -> master: the gRPC server is started and serving */
    TN_IPC_CTL_WORKERS = 8, /* master -> front: worker slots left (value) */
};

struct tn_ipc_header {
    uint32_t magic;   /* TN_IPC_MAGIC */
    uint16_t version; /* TN_IPC_VERSION */
    uint16_t type;    /* enum tn_ipc_type */
    uint64_t job_id;  /* front-assigned, echoed in every reply */
};

struct tn_ipc_job {
    struct tn_ipc_header h;
    uint64_t file_size;              /* bytes in the video fd */
    int64_t deadline_ms;             /* CLOCK_MONOTONIC ms (system-wide); 0 = none */
    char file_name[TN_IPC_NAME_MAX]; /* NUL-terminated, for logs and as a format hint */
    struct tn_job_opts opts;         /* defaults filled in, checked by the front */
    /* pull and local mode */
    uint8_t pull; /* 0/1: the video fd is an empty spool file of file_size bytes to be;
                   * read it only where a READ_REPLY said it was filled */
    uint8_t pad_pull[7];
};

/*
 * Pull mode. The worker sends READ {offset, length} on the reply socket and
 * waits; the front asks the client for those bytes, writes them into the video
 * fd (the job's spool file) at that offset, and answers READ_REPLY with the
 * same offset and length. One READ outstanding at a time; offset + length <=
 * file_size; 0 < length <= TN_IPC_READ_MAX. The front closing the socket
 * instead means: abandon the job.
 */
#define TN_IPC_READ_MAX (4u << 20)

struct tn_ipc_read {
    struct tn_ipc_header h;
    uint64_t offset;
    uint64_t length;
};

struct tn_ipc_ack {
    struct tn_ipc_header h;
    int32_t pid; /* the worker that took the job: the front kills it on overrun */
    uint32_t pad;
};

struct tn_ipc_result {
    struct tn_ipc_header h;
    uint32_t index; /* into job.times */
    uint32_t width;
    uint32_t height;
    uint32_t format;       /* enum tn_format */
    double requested_time; /* seconds, percent resolved */
    double actual_time;    /* pts of the frame used, seconds */
    uint64_t size;         /* bytes of the image in the memfd (from offset 0) */
    uint32_t kind;         /* the proto's ThumbnailKind: 0 image, 1 sprite, 2 VTT, 3 animation */
    uint32_t pad;
    char reason[TN_IPC_REASON_MAX]; /* how the engine got the picture ("skipped 1 black
                                     * frame"); NUL-terminated, "" if nothing to say */
};

/* TN_IPC_CTL_READY (value 0) and TN_IPC_CTL_WORKERS; job_id is 0. */
struct tn_ipc_ctl {
    struct tn_ipc_header h;
    int32_t value;
    uint32_t pad;
};

struct tn_ipc_done {
    struct tn_ipc_header h;
    int32_t code; /* enum tn_code */
    uint32_t pad;
    char message[TN_IPC_MESSAGE_MAX]; /* for the user when code != TN_OK */
};

/* The largest message; receive buffers are this size. */
union tn_ipc_any {
    struct tn_ipc_header h;
    struct tn_ipc_job job;
    struct tn_ipc_ack ack;
    struct tn_ipc_result result;
    struct tn_ipc_done done;
    struct tn_ipc_read read; /* TN_IPC_READ and TN_IPC_READ_REPLY */
    struct tn_ipc_ctl ctl;   /* TN_IPC_CTL_READY and TN_IPC_CTL_WORKERS */
};

/* Milliseconds on CLOCK_MONOTONIC: the clock of tn_ipc_job.deadline_ms. The
 * clock is system-wide, so the front's deadline means the same in a worker. */
int64_t tn_mono_ms(void);

/* Fill in magic, version, type and job id. */
void tn_ipc_header_init(struct tn_ipc_header *h, enum tn_ipc_type type, uint64_t job_id);

/*
 * Send one message with up to TN_IPC_MAX_FDS fds (SCM_RIGHTS; the caller keeps
 * its copies and closes them). EINTR is retried; MSG_NOSIGNAL is used.
 * flags: 0 or MSG_DONTWAIT. Returns 0, -EAGAIN (nonblocking, full), -EPIPE
 * (peer gone, also for the kernel's ECONNRESET), or another -errno. Never a partial send
 * (SEQPACKET).
 */
int tn_ipc_send(int sock, const void *msg, size_t len, const int *fds, int nfds, int flags);

/*
 * Receive one message into buf (size cap, normally sizeof(union tn_ipc_any)).
 * Received fds are stored in fds[0..*nfds) with O_CLOEXEC; the caller owns them.
 * Returns the message length (> 0), 0 on EOF (peer closed), or:
 *   -EMSGSIZE  message truncated (longer than cap)
 *   -EPROTO    control data truncated (too many fds; any that arrived are closed),
 *              bad magic/version, or a length that does not match the type
 *   -EAGAIN    nonblocking and nothing there
 *   other -errno
 * On error every received fd is closed and *nfds is 0. EINTR is retried.
 * flags: 0 or MSG_DONTWAIT. The message is validated: header magic and version,
 * and len == the size of the struct named by type.
 */
int tn_ipc_recv(int sock, void *buf, size_t cap, int *fds, int *nfds, int flags);

/* Expected size of a message of this type, 0 if the type is unknown. */
size_t tn_ipc_size(unsigned type);

#endif
