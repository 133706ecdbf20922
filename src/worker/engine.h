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

struct tn_engine_limits {
    uint64_t max_pixels; /* decoder and find_stream_info; 0 = libav default */
    int64_t probesize;   /* bytes; 0 = engine default */
    int64_t analyzeduration_us;
};

struct tn_engine_request {
    int fd;                /* the video; read with pread, never closed by the engine */
    uint64_t size;         /* bytes in fd */
    const char *file_name; /* for logs and as a format hint; may be NULL */
    const struct tn_time_point *times;
    size_t n_times;     /* >= 1 */
    unsigned max_width; /* 0 = unbounded; not both 0 */
    unsigned max_height;
    int upscale; /* 0/1 */
    int format;  /* enum tn_format */
    /* JPEG/WebP 1..100; 0 = default (JPEG 85, WebP 80); > 100 = INVALID_ARGUMENT.
     * Lossless WebP: the effort, 1..100 = libwebp's presets 0..9; 0 = fastest. */
    unsigned quality;
    int lossless;        /* 0/1: lossless WebP; ignored by the other formats */
    unsigned png_level;  /* zlib level 1..9; 0 = default (1); else INVALID_ARGUMENT */
    int mode;            /* enum tn_mode */
    int64_t deadline_ms; /* CLOCK_MONOTONIC ms; 0 = none. Checked in reads and between frames */
    int cancel_fd;       /* POLLHUP/POLLERR/readable EOF on it = abandon; -1 = none */
    const struct tn_engine_limits *limits; /* NULL = defaults */
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
};

/* Called once per thumbnail. Takes ownership of r->fd (must close it). Nonzero = stop the job
 * (the value is returned from tn_engine_run as the code, e.g. TN_CANCELLED). */
typedef int (*tn_engine_emit_fn)(void *opaque, const struct tn_engine_result *r);

/*
 * Run one request. Returns an enum tn_code (TN_OK when every thumbnail was
 * emitted); on failure a message a user can act on is written to err, e.g.
 * "not a video file (no container format recognised)", "no video stream",
 * "deadline exceeded after decoding 120 frames".
 */
int tn_engine_run(const struct tn_engine_request *req, tn_engine_emit_fn emit, void *opaque,
                  char *err, size_t errlen);

/* Process-wide set-up (log level for libav, etc.). Call once per worker, before serving. */
void tn_engine_global_init(void);

#endif
