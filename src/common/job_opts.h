/*
 * A job's options: what the client asked for, in one C type that the front
 * fills from the proto, the IPC job carries to a worker and the engine reads.
 * The limits are named here once, and tn_job_opts_check() is the one place
 * that enforces them: the front calls it before queueing a job, the engine
 * again before touching the video (a worker must never trust its input).
 *
 * Adding an option: the proto, this struct and its check, and the code that
 * uses it.
 *
 * Enum values are the proto's (ImageFormat, SeekMode, FitMode), so the front
 * copies them as they are; 0 is "unspecified" until tn_job_opts_defaults()
 * replaces it.
 */
#ifndef TN_JOB_OPTS_H
#define TN_JOB_OPTS_H

#include <stddef.h>
#include <stdint.h>

/* Limits (documented in the README and the proto). */
#define TN_JOB_MAX_TIMES 64    /* time points, or count, of one call */
#define TN_JOB_MAX_SIDE 16384  /* pixels on each side of a thumbnail or a storyboard sheet */
#define TN_JOB_MAX_QUALITY 100 /* JPEG/WebP quality 1..100 */
#define TN_JOB_MAX_PNG_LEVEL 9 /* zlib level 1..9 */
#define TN_JOB_MAX_PAD_COLOR 0xffffffu
#define TN_JOB_MIN_EVERY 0.001 /* seconds */
#define TN_STORYBOARD_MAX_TILES 1000
#define TN_STORYBOARD_MAX_TILE_WIDTH 1024
#define TN_STORYBOARD_MAX_COLUMNS 100
/* Animated preview: fps x span bounds the frames decoded, rendered and encoded,
 * so a request's cost stays near that of a few dozen thumbnails. */
#define TN_ANIM_MAX_FPS 30.0
#define TN_ANIM_MIN_FPS 0.1
#define TN_ANIM_MAX_SPAN 10.0 /* seconds from start to end */
#define TN_ANIM_MAX_FRAMES 300

/* Defaults for what the client leaves 0. */
#define TN_JOB_DEFAULT_MAX_WIDTH 320
#define TN_JOB_DEFAULT_PERCENT 10.0 /* the one time point when none is given */
#define TN_STORYBOARD_DEFAULT_TILE_WIDTH 160
#define TN_STORYBOARD_DEFAULT_COLUMNS 10
#define TN_ANIM_DEFAULT_FPS 10.0
#define TN_ANIM_DEFAULT_SPAN 3.0 /* seconds, when no end is given */

enum tn_format { TN_FORMAT_PNG = 1, TN_FORMAT_JPEG = 2, TN_FORMAT_WEBP = 3 };
enum tn_mode { TN_MODE_ACCURATE = 1, TN_MODE_KEYFRAME = 2, TN_MODE_SMART = 3 };
enum tn_fit { TN_FIT_FIT = 1, TN_FIT_FILL = 2, TN_FIT_PAD = 3 };
/* DEFAULT: the request named no time; value is a percent, and a black or blank
 * frame there is passed over for a representative one nearby. */
enum tn_time_kind { TN_TIME_SECONDS = 1, TN_TIME_PERCENT = 2, TN_TIME_DEFAULT = 3 };

struct tn_time_point {
    uint32_t kind; /* enum tn_time_kind; 0 = the client gave neither (invalid) */
    uint32_t pad;
    double value; /* seconds, or percent 0..100 */
};

/* Plain data with fixed-size fields: it crosses the job queue as it is. */
struct tn_job_opts {
    uint32_t n_times;   /* as requested; times[] holds min(n_times, TN_JOB_MAX_TIMES) */
    uint32_t max_width; /* 0 = unbounded (not both, outside storyboards) */
    uint32_t max_height;
    /* JPEG/WebP 1..100; 0 = the engine's default (JPEG 85, WebP 80). Lossless
     * WebP: the effort, 1..100 = libwebp's presets 0..9; 0 = fastest. */
    uint32_t quality;
    uint32_t png_level;  /* zlib level 1..9; 0 = the engine's default (1) */
    uint32_t pad_color;  /* 0xRRGGBB, FIT_PAD's border */
    uint32_t count;      /* > 0: this many evenly spaced points instead of times */
    uint32_t tile_width; /* storyboard; 0 = default */
    uint32_t columns;    /* storyboard; 0 = default */
    uint8_t format;      /* enum tn_format */
    uint8_t mode;        /* enum tn_mode */
    uint8_t fit;         /* enum tn_fit; 0 = FIT */
    uint8_t upscale;     /* 0/1 */
    uint8_t lossless;    /* 0/1, WebP only */
    uint8_t cover_art;   /* 0/1: index 0 is the attached picture when there is one */
    uint8_t storyboard;  /* 0/1: a sprite and a WebVTT instead of thumbnails */
    uint8_t probe;       /* 0/1: a Probe call; the other options are not used */
    uint8_t animation;   /* 0/1: one animated WebP of anim_start..anim_end at fps */
    uint8_t pad[3];
    double every; /* > 0: a point every this many seconds instead of times */
    /* Animated preview: kind 0 = not given (start: 0 s; end: start +
     * TN_ANIM_DEFAULT_SPAN); fps 0 = TN_ANIM_DEFAULT_FPS until defaults(). */
    struct tn_time_point anim_start, anim_end;
    double fps;
    struct tn_time_point times[TN_JOB_MAX_TIMES];
};

/*
 * Replace the "unspecified" zeros by the defaults: format PNG (WEBP for an
 * animation, whose box is TN_JOB_DEFAULT_MAX_WIDTH on the longer side, and
 * whose fps is TN_ANIM_DEFAULT_FPS); mode ACCURATE
 * (KEYFRAME for a storyboard: one cheap pass); fit FIT; a box of
 * TN_JOB_DEFAULT_MAX_WIDTH wide when neither side is given (not for a
 * storyboard, which has its own tile width); one point at
 * TN_JOB_DEFAULT_PERCENT when neither times, count, every nor a storyboard
 * asks for any. Values out of range are left for tn_job_opts_check().
 */
void tn_job_opts_defaults(struct tn_job_opts *o);

/*
 * Check o against the limits: TN_OK, or TN_INVALID_ARGUMENT with a message
 * naming the field (the proto's name) written to err. A request that passes
 * asks for at least one thumbnail, unless what is left depends on the video
 * (every against its duration: the engine checks that one).
 */
int tn_job_opts_check(const struct tn_job_opts *o, char *err, size_t errlen);

/*
 * An animation's span start..end (seconds) at fps: TN_OK and the number of
 * frames (ticks start + i / fps before end) in *frames (may be NULL), or
 * TN_INVALID_ARGUMENT when end is not after start, the span is over
 * TN_ANIM_MAX_SPAN or the frames over TN_ANIM_MAX_FRAMES. The check calls
 * it for spans in seconds; the engine for spans that needed the duration.
 */
int tn_job_opts_anim_frames(double start, double end, double fps, unsigned *frames, char *err,
                            size_t errlen);

#endif
