#include "options_msg.h"

#include <stdint.h>
#include <string.h>

#include "status.h"

/* A TimePoint (NULL or neither field: kind 0, "not given"). */
static void take_time_point(const Thumbnail__V1__TimePoint *t, struct tn_time_point *tp)
{
    if (t && t->point_case == THUMBNAIL__V1__TIME_POINT__POINT_SECONDS) {
        tp->kind = TN_TIME_SECONDS;
        tp->value = t->seconds;
    } else if (t && t->point_case == THUMBNAIL__V1__TIME_POINT__POINT_PERCENT) {
        tp->kind = TN_TIME_PERCENT;
        tp->value = t->percent;
    }
}

int tn_options_to_job(const Thumbnail__V1__Options *o, bool probe, struct tn_job_opts *j, char *err,
                      size_t errlen)
{
    memset(j, 0, sizeof(*j));
    /* the enums are the proto's numbers; the check refuses unknown ones */
    j->format = o->format >= 0 && o->format <= UINT8_MAX ? (uint8_t)o->format : UINT8_MAX;
    j->mode = o->mode >= 0 && o->mode <= UINT8_MAX ? (uint8_t)o->mode : UINT8_MAX;
    j->fit = o->fit >= 0 && o->fit <= UINT8_MAX ? (uint8_t)o->fit : UINT8_MAX;
    j->n_times = o->n_times > UINT32_MAX ? UINT32_MAX : (uint32_t)o->n_times;
    for (size_t i = 0; i < o->n_times && i < TN_JOB_MAX_TIMES; i++)
        take_time_point(o->times[i], &j->times[i]);
    j->max_width = o->max_width;
    j->max_height = o->max_height;
    j->upscale = o->upscale ? 1 : 0;
    j->quality = o->quality;
    j->lossless = o->lossless ? 1 : 0;
    j->png_level = o->png_level;
    j->pad_color = o->pad_color;
    j->count = o->count;
    j->every = o->every;
    j->cover_art = o->cover_art ? 1 : 0;
    j->storyboard = o->storyboard ? 1 : 0;
    j->tile_width = o->tile_width;
    j->columns = o->columns;
    if (o->animation) {
        j->animation = 1;
        take_time_point(o->animation->start, &j->anim_start);
        take_time_point(o->animation->end, &j->anim_end);
        j->fps = o->animation->fps;
    }
    j->probe = probe ? 1 : 0;
    tn_job_opts_defaults(j);
    return tn_job_opts_check(j, err, errlen);
}
