/*
 * The engine's insides, shared by its files and by nothing else: the state of
 * one request (struct engine) and the functions one file calls in another.
 * engine.h is the engine's one entry point; this header is not for the
 * worker, the tests, the fuzzer or the benchmark.
 *
 *   engine.c      the request: validation, the order of the steps, errors,
 *                 libav's log, probe, emitting results
 *   input.c       AVIO on the fd, whitelists, opening, stream selection, timing
 *                 and duration, the points to serve
 *   decode.c      seeking and the ACCURATE / KEYFRAME / SMART / default
 *                 strategies, their fallbacks, cover art
 *   render.c      geometry, orientation, fit, scale, rotation, padding
 *   encode.c      PNG / JPEG / WebP into a sealed memfd
 *   storyboard.c  the sprite sheet and its WebVTT
 *   animation.c   the animated WebP preview
 *
 * The functions keep their short names, and are hidden: a program that links
 * the engine does not export them, so a shared library with a function of
 * the same name (libcodec2, loaded by libavcodec, exports encode()) still
 * calls its own. Two definitions in one link are still an error.
 */
#ifndef TN_ENGINE_INT_H
#define TN_ENGINE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <turbojpeg.h>

#include "engine.h"
#include "render.h"

#define REASON_MAX 200
#define NONREF_MARGIN_FRAMES 16 /* H.264's deepest reordering: where pts may be a guess */
/* the last error libav logged (av_last_suffix()) */
#define AV_LAST_ERROR_MAX 256

/* The AVIO's state (input.c's reads and seeks; the stop code every file checks). */
struct io {
    int fd;
    tn_engine_read_fn read; /* NULL = pread(fd) */
    void *read_opaque;
    int64_t size;
    int64_t pos;
    int64_t deadline_ms;
    int cancel_fd;
    unsigned calls;
    int stop; /* sticky: TN_DEADLINE_EXCEEDED or TN_CANCELLED once seen */
};

/* One thumbnail to make: input.c's resolve_times() fills them, in time order. */
struct point {
    unsigned index; /* into req->opts.times */
    int is_default; /* no time was named: avoid a black or blank frame */
    double seconds; /* resolved, from the start of the video */
    int64_t target; /* in stream time base, start included */
};

/* A growing output buffer (encode.c). */
struct membuf {
    uint8_t *data;
    size_t len, cap;
};

/* One request's state: on tn_engine_run()'s stack, which frees what it holds;
 * every file of the engine reads and writes it, one call at a time. */
struct engine {
    const struct tn_engine_request *req;
    char *err;
    size_t errlen;

    struct io io;
    AVIOContext *avio;
    AVFormatContext *fmt;
    const AVInputFormat *ifmt;
    int probe_score;
    AVStream *st;
    int si;
    AVCodecContext *dec;
    AVPacket *pkt;
    AVFrame *frame;           /* receive_frame scratch */
    AVFrame *prev;            /* latest frame before the target: used if the stream ends first */
    AVFrame *cur;             /* the frame chosen for the current point */
    struct tn_colour *colour; /* made on first use */
    unsigned colour_did;      /* enum tn_colour_did of the latest image */

    int64_t start_pts; /* stream time base */
    int64_t end_pts;   /* start + video duration; AV_NOPTS_VALUE if unknown */
    double duration;   /* seconds, for percent points; < 0 if unknown */
    int64_t frame_dur; /* one frame, stream time base (estimated) */
    int64_t nonref_margin;
    int can_skip_nonref;

    /* decoder position */
    int fresh;       /* nothing read since open: at the start of the stream */
    int positioned;  /* decoder holds state that decoding can continue from */
    int drained;     /* sent the NULL packet: needs a seek (flush) to go on */
    int64_t seek_ts; /* what the last seek asked for; INT64_MIN = the start */
    int64_t last_pkt_ts;
    int64_t last_out_pts;
    int64_t skip_until; /* non-reference frames with pkt pts below are not decoded */
    int64_t key_ts;     /* KEYFRAME: the packet's time, for a frame that has none */
    int64_t cur_key;    /* KEYFRAME: the packet time of e->cur */
    int64_t target;     /* of the point being served */
    int need_key;       /* after a seek: drop packets up to a keyframe */
    int have_prev, have_cur, cur_exact, cur_clamped;
    int64_t cur_pts;
    /* Fallbacks, for the reason: the demuxer could not seek (from then on
     * every point is decoded forward from the start), and how e->cur was
     * got when no frame was at the target (enum fallback). */
    int seek_broken;
    int fallback, cur_fallback; /* for this point; for e->cur when it is clamped */
    int probed_streams;         /* avformat_find_stream_info was run (again on a reopen) */
    int64_t first_pts;          /* find_start()'s answer when the header names no start */
    int64_t file_start;         /* find_start(): the earliest stream's first pts, video tb */
    int check_key;              /* the next frame must be a keyframe (see BAD_KEY) */

    int64_t frames; /* decoded, for messages */
    int errors_in_row;
    int last_decode_error;
    size_t done; /* thumbnails emitted */

    uint8_t *rgb, *rot; /* scaled image, rotated image */
    size_t rgb_cap, rot_cap;
    struct membuf out; /* the encoded image (PNG and JPEG; WebP has its own writer) */
    uint8_t *canvas;   /* PAD: the box, border colour around the picture */
    size_t canvas_cap;
    const AVStream *img_st;    /* whose geometry (matrix, SAR) e->cur has: st or the cover */
    struct box box;            /* fit() fits e->cur into this */
    char pick[REASON_MAX];     /* how e->cur was chosen (SMART, cover art), for the reason */
    struct tn_colour *analyse; /* SMART's small renderings, made on first use */
    size_t n_points;
    tjhandle tj; /* JPEG compressor, made on first use */

    /* The animation's ticks (tick0 + i * tick_step, stream time base; step 0 =
     * none): from tick0 on, non-reference frames that no tick shows are not
     * decoded either (decode.c's shown_at_tick()). */
    int64_t tick0;
    double tick_step;
};

/* How e->cur was found when the target had no frame of its own. */
enum fallback {
    FB_NONE = 0,
    FB_LAST,    /* the stream ends before the target: its last frame */
    FB_DAMAGED, /* decoding stopped at damaged data before the target: the last good frame */
};

#pragma GCC visibility push(hidden)

/* engine.c: the request's errors (e->err), libav's last logged error */
int fail(struct engine *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int fail_av(struct engine *e, int code, int averr, const char *what);
int check_stop(struct engine *e);
void av_last_suffix(char *buf, size_t len);

/* input.c: reading the fd, opening, streams, timing, the points */
int io_check(struct io *io, int force);
int select_stream(AVFormatContext *fmt, int *undecodable);
int open_input(struct engine *e);
int header_is_enough(AVFormatContext *fmt);
int find_stream_info(struct engine *e);
int open_stream(struct engine *e);
void setup_timing(struct engine *e);
int find_start(struct engine *e);
int needs_duration(const struct tn_engine_request *req);
int scan_duration(struct engine *e);
int resolve_times(struct engine *e, struct point *pts);
int reopen(struct engine *e);

/* decode.c: seeking and the strategies; each leaves its frame in e->cur */
int64_t packet_ts(const AVPacket *pkt);
int read_video_packet(struct engine *e);
int seek_to(struct engine *e, int64_t ts);
int serve_accurate(struct engine *e, int64_t target);
int decode_forward(struct engine *e);
int serve_keyframe(struct engine *e, int64_t target);
int serve_smart(struct engine *e, int64_t target);
int serve_default(struct engine *e, const struct point *p);
int cover_art(struct engine *e);
int serve(struct engine *e, int64_t target);

/* render.c: e->cur as the image to encode */
int render(struct engine *e, struct geom *g, const uint8_t **img, size_t *img_stride);

/* encode.c: images into sealed memfds */
const char *format_name(int format);
int sealed_memfd(const uint8_t *buf, size_t len);
int encode(struct engine *e, const uint8_t *img, int w, int h, size_t stride, uint64_t *size);

/* storyboard.c */
int run_storyboard(struct engine *e, const struct point *points, tn_engine_emit_fn emit,
                   void *opaque);

/* animation.c */
int run_animation(struct engine *e, tn_engine_emit_fn emit, void *opaque);

#pragma GCC visibility pop

#endif
