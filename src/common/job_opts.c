/*
 * A job's options: defaults and the one validation (see job_opts.h).
 */
#include "job_opts.h"

#include <math.h>
#include <stdio.h>

#include "errf.h"
#include "status.h"

void tn_job_opts_defaults(struct tn_job_opts *o)
{
    if (o->animation) {
        if (!o->format)
            o->format = TN_FORMAT_WEBP;
        if (!o->mode)
            o->mode = TN_MODE_ACCURATE;
        if (!o->fit)
            o->fit = TN_FIT_FIT;
        if (!o->max_width && !o->max_height)
            o->max_width = o->max_height = TN_JOB_DEFAULT_MAX_WIDTH;
        if (o->fps == 0)
            o->fps = TN_ANIM_DEFAULT_FPS;
        return;
    }
    if (!o->format)
        o->format = TN_FORMAT_PNG;
    if (!o->mode)
        o->mode = o->storyboard ? TN_MODE_KEYFRAME : TN_MODE_ACCURATE;
    if (!o->fit)
        o->fit = TN_FIT_FIT;
    if (o->storyboard)
        return;
    if (!o->max_width && !o->max_height)
        o->max_width = TN_JOB_DEFAULT_MAX_WIDTH;
    if (!o->n_times && !o->count && !(o->every > 0)) {
        o->n_times = 1;
        o->times[0] =
            (struct tn_time_point){.kind = TN_TIME_DEFAULT, .value = TN_JOB_DEFAULT_PERCENT};
    }
}

static const char *fit_name(unsigned fit)
{
    return fit == TN_FIT_FILL ? "FILL" : "PAD";
}

/* A time point of an animation's span: unset (kind 0), seconds or percent. */
static int check_anim_point(const struct tn_time_point *t, const char *name, char *err,
                            size_t errlen)
{
    if (t->kind == 0)
        return TN_OK;
    if (t->kind == TN_TIME_SECONDS && isfinite(t->value) && t->value >= 0)
        return TN_OK;
    if (t->kind == TN_TIME_PERCENT && isfinite(t->value) && t->value >= 0 && t->value <= 100)
        return TN_OK;
    if (t->kind == TN_TIME_PERCENT)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation.%s: %g%% is not within 0..100 %%", name, t->value);
    return tn_errf(err, errlen, TN_INVALID_ARGUMENT, "animation.%s: %g s is not a time >= 0", name,
                   t->value);
}

/* The animation's own rules; the rest of tn_job_opts_check() (box, quality)
 * applies as to a thumbnail. */
static int check_animation(const struct tn_job_opts *o, char *err, size_t errlen)
{
    if (o->n_times || o->count || o->every > 0 || o->storyboard)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation is one preview of its own span: not with times, count, every "
                       "or storyboard");
    if (o->format != TN_FORMAT_WEBP)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation: an animated preview is WebP: leave format unspecified or WEBP");
    if (o->mode != TN_MODE_ACCURATE)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation decodes every frame of its span: leave mode unspecified or "
                       "ACCURATE");
    if (o->cover_art)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation: cover_art is a still picture, not a preview");
    if (!isfinite(o->fps) || o->fps < TN_ANIM_MIN_FPS || o->fps > TN_ANIM_MAX_FPS)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation.fps %g: use %g..%g frames a second (0 = %g)", o->fps,
                       TN_ANIM_MIN_FPS, TN_ANIM_MAX_FPS, TN_ANIM_DEFAULT_FPS);
    int code = check_anim_point(&o->anim_start, "start", err, errlen);
    if (code == TN_OK)
        code = check_anim_point(&o->anim_end, "end", err, errlen);
    if (code != TN_OK)
        return code;
    /* A span in seconds on both ends is checked here; one in percent needs
     * the duration: tn_job_opts_anim_frames() again in the engine. */
    double start = o->anim_start.kind ? o->anim_start.value : 0;
    if (o->anim_end.kind &&
        o->anim_end.kind == (o->anim_start.kind ? o->anim_start.kind : TN_TIME_SECONDS)) {
        if (o->anim_end.kind == TN_TIME_SECONDS)
            return tn_job_opts_anim_frames(start, o->anim_end.value, o->fps, NULL, err, errlen);
        if (o->anim_end.value <= start)
            return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                           "animation: end %g%% is not after start %g%%", o->anim_end.value, start);
    }
    return TN_OK;
}

int tn_job_opts_anim_frames(double start, double end, double fps, unsigned *frames, char *err,
                            size_t errlen)
{
    if (!(end > start))
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation: end %g s is not after start %g s", end, start);
    if (end - start > TN_ANIM_MAX_SPAN + 1e-9)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation: a span of %g s (%g..%g s) is too long: at most %g s",
                       end - start, start, end, TN_ANIM_MAX_SPAN);
    /* one frame per tick start + i / fps before end; a hair of tolerance so
     * that 3 s at 10 fps is 30 frames, not 29 or 31 */
    double n = ceil((end - start) * fps - 1e-6);
    if (n < 1)
        n = 1;
    if (n > TN_ANIM_MAX_FRAMES)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "animation: %g s at %g fps is %.0f frames, over %d: use a shorter span or "
                       "a lower fps",
                       end - start, fps, n, TN_ANIM_MAX_FRAMES);
    if (frames)
        *frames = (unsigned)n;
    return TN_OK;
}

int tn_job_opts_check(const struct tn_job_opts *o, char *err, size_t errlen)
{
    if (o->format < TN_FORMAT_PNG || o->format > TN_FORMAT_WEBP)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "format %u is unknown: use PNG, JPEG or WEBP", o->format);
    if (o->mode < TN_MODE_ACCURATE || o->mode > TN_MODE_SMART)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "mode %u is unknown: use ACCURATE, KEYFRAME or SMART", o->mode);
    if (o->fit > TN_FIT_PAD)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT, "fit %u is unknown: use FIT, FILL or PAD",
                       o->fit);
    if (o->quality > TN_JOB_MAX_QUALITY)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "quality %u is out of range: use 1..%d (0 = default)", o->quality,
                       TN_JOB_MAX_QUALITY);
    if (o->png_level > TN_JOB_MAX_PNG_LEVEL)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "png_level %u is out of range: use 1..%d (0 = default)", o->png_level,
                       TN_JOB_MAX_PNG_LEVEL);
    if (o->pad_color > TN_JOB_MAX_PAD_COLOR)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "pad_color 0x%x is not an RGB colour 0xRRGGBB", o->pad_color);
    if (o->max_width > TN_JOB_MAX_SIDE || o->max_height > TN_JOB_MAX_SIDE)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "max_width x max_height %ux%u is too large: at most %d on each side",
                       o->max_width, o->max_height, TN_JOB_MAX_SIDE);
    if (!o->storyboard && (o->fit == TN_FIT_FILL || o->fit == TN_FIT_PAD) &&
        (!o->max_width || !o->max_height))
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "fit %s needs a box: give both max_width and max_height", fit_name(o->fit));
    if (o->animation)
        return check_animation(o, err, errlen);
    if (o->every != 0 && !(isfinite(o->every) && o->every >= TN_JOB_MIN_EVERY))
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "every %g s: use an interval of at least %g s (0 = not used)", o->every,
                       TN_JOB_MIN_EVERY);
    if (o->count && o->every > 0)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT, "give count or every, not both");
    unsigned max_points = o->storyboard ? TN_STORYBOARD_MAX_TILES : TN_JOB_MAX_TIMES;
    if (o->count > max_points)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT, "count %u: at most %u %s per call",
                       o->count, max_points, o->storyboard ? "storyboard tiles" : "thumbnails");
    if (o->n_times > TN_JOB_MAX_TIMES)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "times: %u time points requested; at most %d per call", o->n_times,
                       TN_JOB_MAX_TIMES);
    if (o->storyboard) {
        if (o->n_times)
            return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                           "times: a storyboard takes count or every, not times");
        if (o->tile_width > TN_STORYBOARD_MAX_TILE_WIDTH)
            return tn_errf(err, errlen, TN_INVALID_ARGUMENT, "tile_width %u: at most %d pixels",
                           o->tile_width, TN_STORYBOARD_MAX_TILE_WIDTH);
        if (o->columns > TN_STORYBOARD_MAX_COLUMNS)
            return tn_errf(err, errlen, TN_INVALID_ARGUMENT, "columns %u: at most %d", o->columns,
                           TN_STORYBOARD_MAX_COLUMNS);
        return TN_OK; /* count, every or the default interval: at least one tile */
    }
    if (o->count || o->every > 0) {
        if (o->n_times)
            return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                           "give times or count/every, not both (%u time points given)",
                           o->n_times);
        return TN_OK;
    }
    if (!o->n_times)
        return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                       "times: no time point requested (nor count or every)");
    for (uint32_t i = 0; i < o->n_times; i++) {
        const struct tn_time_point *t = &o->times[i];
        if (t->kind == TN_TIME_SECONDS) {
            if (!isfinite(t->value) || t->value < 0)
                return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                               "times[%u]: %g s is not a time >= 0", i, t->value);
        } else if (t->kind == TN_TIME_PERCENT || t->kind == TN_TIME_DEFAULT) {
            if (!isfinite(t->value) || t->value < 0 || t->value > 100)
                return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                               "times[%u]: %g%% is not within 0..100 %%", i, t->value);
        } else {
            return tn_errf(err, errlen, TN_INVALID_ARGUMENT,
                           "times[%u] has neither seconds nor percent", i);
        }
    }
    return TN_OK;
}
