/*
 * The thumbnail engine: one video fd in, encoded images out. No IPC, no gRPC:
 * the worker's job loop, the unit tests and the in-process benchmark all call
 * it the same way.
 *
 * The video is read through a custom AVIOContext with pread() on the fd (no
 * path is ever opened; containers only, no playlists). Every requested time is
 * served from one open demuxer and decoder, in time order; results are emitted
 * in that order, each carrying its index into req->times.
 */
#ifndef TN_ENGINE_H
#define TN_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "ipc.h"

/* What a result holds (the proto's ThumbnailKind). */
enum tn_result_kind {
    TN_KIND_IMAGE = 0,
    TN_KIND_SPRITE = 1,
    TN_KIND_VTT = 2,
    TN_KIND_ANIMATION = 3
};

struct tn_engine_limits {
    uint64_t max_pixels; /* decoder and find_stream_info; 0 = libav default */
    int64_t probesize;   /* bytes; 0 = engine default */
    int64_t analyzeduration_us;
};

/*
 * Reads the video's bytes [pos, pos + len) into buf: returns the count read
 * (> 0; fewer than len is fine), 0 at the end of the file, or a negative enum
 * tn_code that stops the job with that code (-TN_DEADLINE_EXCEEDED,
 * -TN_CANCELLED, ...). pos < the request's size and len > 0 on every call.
 */
typedef int (*tn_engine_read_fn)(void *opaque, uint8_t *buf, int len, int64_t pos);

struct tn_engine_request {
    int fd;                /* the video; read with pread, never closed by the engine */
    uint64_t size;         /* bytes in fd */
    const char *file_name; /* for logs and as a format hint; may be NULL */
    /* What to make: tn_job_opts_check() must pass (after tn_job_opts_defaults(),
     * which the engine does not apply). The probe flag asks for one result,
     * index 0, format 0: the probe.h JSON; the other options are then ignored.
     * Storyboard: tiles at the count / every points (default: every
     * max(1 s, duration / 100)), tile_width wide, in a grid of `columns`, into
     * one sprite (index 0, the requested format) and a WebVTT file (index 1,
     * format 0) whose cues point into it with #xywh= fragments; max_width,
     * max_height, fit and times are ignored. count / every replace times.
     * Animation: one animated WebP (index 0, kind ANIMATION) of the frames
     * shown at anim_start + i / fps up to anim_end, fitted into the box;
     * actual_time is its first frame's. */
    struct tn_job_opts opts;
    int64_t deadline_ms; /* CLOCK_MONOTONIC ms; 0 = none. Checked in reads and between frames */
    int cancel_fd;       /* POLLHUP/POLLERR/readable EOF on it = abandon; -1 = none */
    const struct tn_engine_limits *limits; /* NULL = defaults */
    /* pull and local mode: NULL = pread() on fd, else every read goes through
     * read(read_opaque, ...) and fd is not used (pull mode's worker cache). */
    tn_engine_read_fn read;
    void *read_opaque;
    /* Out, optional: libav's name of the video stream's codec ("h264"), written
     * once the stream is chosen (left alone if the file never gets that far). */
    char *codec_out;
    size_t codec_out_len;
};

struct tn_engine_result {
    unsigned index;        /* into req->times */
    double requested_time; /* seconds (percent resolved against the duration) */
    double actual_time;    /* pts of the frame used, seconds */
    unsigned width, height;
    int format; /* enum tn_format */
    int fd;     /* memfd with the image at offset 0, sealed; ownership passes to emit */
    uint64_t size;
    /* For people: how the picture was chosen or treated ("skipped 2 black
     * frames", "deinterlaced"); "" if nothing to say. Valid during emit. */
    const char *reason;
    int kind; /* enum tn_result_kind */
};

/* Called once per thumbnail. Takes ownership of r->fd (must close it). Nonzero = stop the job
 * (the value is returned from tn_engine_run as the code, e.g. TN_CANCELLED). */
typedef int (*tn_engine_emit_fn)(void *opaque, const struct tn_engine_result *r);

/*
 * Run one request. Returns an enum tn_code (TN_OK when every thumbnail was
 * emitted); on failure a message a user can act on is written to err, e.g.
 * "not a video file (no container format recognised)", "no video stream",
 * "deadline exceeded after decoding 120 frames".
 *
 * Modes: ACCURATE and KEYFRAME as in the proto; SMART looks at a few
 * keyframes from the requested time on and takes the most representative
 * one that is not black or blank (smart.h).
 */
int tn_engine_run(const struct tn_engine_request *req, tn_engine_emit_fn emit, void *opaque,
                  char *err, size_t errlen);

/* Process-wide set-up (log level for libav, etc.). Call once per worker, before serving. */
void tn_engine_global_init(void);

#endif
