/*
 * The job-options module: defaults and the one validation the front and the
 * engine share. Every limit is probed on both sides of its edge, and every
 * refusal must name the field the client got wrong.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "job_opts.h"
#include "status.h"

static struct tn_job_opts defaulted(void)
{
    struct tn_job_opts o;
    memset(&o, 0, sizeof(o));
    tn_job_opts_defaults(&o);
    return o;
}

/* TN_INVALID_ARGUMENT with `field` in the message. */
static void refused(const struct tn_job_opts *o, const char *field)
{
    char err[512] = "";
    int code = tn_job_opts_check(o, err, sizeof(err));
    if (code != TN_INVALID_ARGUMENT || !strstr(err, field))
        fail_msg("expected INVALID_ARGUMENT naming \"%s\", got %d \"%s\"", field, code, err);
}

static void accepted(const struct tn_job_opts *o)
{
    char err[512] = "";
    int code = tn_job_opts_check(o, err, sizeof(err));
    if (code != TN_OK)
        fail_msg("expected OK, got %d \"%s\"", code, err);
}

static void test_defaults(void **state)
{
    (void)state;
    struct tn_job_opts o = defaulted();
    assert_int_equal(o.format, TN_FORMAT_PNG);
    assert_int_equal(o.mode, TN_MODE_ACCURATE);
    assert_int_equal(o.fit, TN_FIT_FIT);
    assert_int_equal(o.max_width, TN_JOB_DEFAULT_MAX_WIDTH);
    assert_int_equal(o.max_height, 0);
    assert_int_equal(o.n_times, 1);
    assert_int_equal(o.times[0].kind, TN_TIME_DEFAULT);
    assert_true(o.times[0].value == TN_JOB_DEFAULT_PERCENT);
    accepted(&o);

    /* count / every: no default time point, which would conflict */
    memset(&o, 0, sizeof(o));
    o.every = 2;
    tn_job_opts_defaults(&o);
    assert_int_equal(o.n_times, 0);
    accepted(&o);

    /* a storyboard: keyframe mode, no box, no time point */
    memset(&o, 0, sizeof(o));
    o.storyboard = 1;
    tn_job_opts_defaults(&o);
    assert_int_equal(o.mode, TN_MODE_KEYFRAME);
    assert_int_equal(o.max_width, 0);
    assert_int_equal(o.n_times, 0);
    accepted(&o);

    /* what the client gave stays */
    memset(&o, 0, sizeof(o));
    o.format = TN_FORMAT_WEBP;
    o.mode = TN_MODE_SMART;
    o.max_height = 90;
    tn_job_opts_defaults(&o);
    assert_int_equal(o.format, TN_FORMAT_WEBP);
    assert_int_equal(o.mode, TN_MODE_SMART);
    assert_int_equal(o.max_width, 0);
    assert_int_equal(o.max_height, 90);
}

static void test_enums_and_encoders(void **state)
{
    (void)state;
    struct tn_job_opts o = defaulted();
    o.format = 4;
    refused(&o, "format 4");
    o = defaulted();
    o.mode = 0; /* defaults not applied: the engine must not guess */
    refused(&o, "mode 0");
    o = defaulted();
    o.fit = 4;
    refused(&o, "fit 4");
    o = defaulted();
    o.quality = TN_JOB_MAX_QUALITY;
    accepted(&o);
    o.quality = TN_JOB_MAX_QUALITY + 1;
    refused(&o, "quality");
    o = defaulted();
    o.png_level = TN_JOB_MAX_PNG_LEVEL;
    accepted(&o);
    o.png_level = TN_JOB_MAX_PNG_LEVEL + 1;
    refused(&o, "png_level");
    o = defaulted();
    o.pad_color = TN_JOB_MAX_PAD_COLOR;
    accepted(&o);
    o.pad_color = TN_JOB_MAX_PAD_COLOR + 1;
    refused(&o, "pad_color");
}

static void test_box(void **state)
{
    (void)state;
    struct tn_job_opts o = defaulted();
    o.max_width = TN_JOB_MAX_SIDE;
    o.max_height = TN_JOB_MAX_SIDE;
    accepted(&o);
    o.max_height = TN_JOB_MAX_SIDE + 1;
    refused(&o, "max_width x max_height");
    o = defaulted();
    o.fit = TN_FIT_FILL;
    refused(&o, "needs a box");
    o.max_height = 90;
    accepted(&o);
    o.fit = TN_FIT_PAD;
    o.max_width = 0;
    refused(&o, "fit PAD needs a box");
}

/* Nothing that divides by zero or asks for no picture gets through. */
static void test_points(void **state)
{
    (void)state;
    struct tn_job_opts o = defaulted();
    o.n_times = 0;
    refused(&o, "times");

    o = defaulted();
    o.n_times = TN_JOB_MAX_TIMES + 1;
    refused(&o, "times");

    o = defaulted();
    o.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = -1};
    refused(&o, "times[0]");
    o.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = NAN};
    refused(&o, "times[0]");
    o.times[0] = (struct tn_time_point){.kind = TN_TIME_PERCENT, .value = 100.5};
    refused(&o, "times[0]");
    o.times[0] = (struct tn_time_point){.kind = 0, .value = 1};
    refused(&o, "times[0] has neither");
    o.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = 1e18};
    accepted(&o); /* past the end: the engine's last frame */

    struct tn_job_opts base;
    memset(&base, 0, sizeof(base));
    base.format = TN_FORMAT_PNG;
    base.mode = TN_MODE_ACCURATE;
    base.max_width = 320;

    o = base;
    o.every = TN_JOB_MIN_EVERY;
    accepted(&o);
    o.every = TN_JOB_MIN_EVERY / 2;
    refused(&o, "every");
    o.every = -1;
    refused(&o, "every");
    o.every = INFINITY;
    refused(&o, "every");
    o.every = NAN;
    refused(&o, "every");
    o.every = 1e18; /* huge but finite: the engine decides against the duration */
    accepted(&o);

    o = base;
    o.count = TN_JOB_MAX_TIMES;
    accepted(&o);
    o.count = TN_JOB_MAX_TIMES + 1;
    refused(&o, "count");
    o.count = 2;
    o.every = 1;
    refused(&o, "count or every");
    o.every = 0;
    o.n_times = 1;
    o.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = 1};
    refused(&o, "times");
}

static void test_storyboard(void **state)
{
    (void)state;
    struct tn_job_opts o;
    memset(&o, 0, sizeof(o));
    o.storyboard = 1;
    tn_job_opts_defaults(&o);

    struct tn_job_opts s = o;
    s.count = TN_STORYBOARD_MAX_TILES;
    accepted(&s);
    s.count = TN_STORYBOARD_MAX_TILES + 1;
    refused(&s, "count");

    s = o;
    s.tile_width = TN_STORYBOARD_MAX_TILE_WIDTH;
    s.columns = TN_STORYBOARD_MAX_COLUMNS;
    accepted(&s);
    s.tile_width = TN_STORYBOARD_MAX_TILE_WIDTH + 1;
    refused(&s, "tile_width");
    s.tile_width = 0;
    s.columns = TN_STORYBOARD_MAX_COLUMNS + 1;
    refused(&s, "columns");

    s = o;
    s.n_times = 1;
    s.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = 1};
    refused(&s, "times");

    s = o;
    s.every = 1e18;
    accepted(&s);
}

static struct tn_job_opts animation(double start, double end, double fps)
{
    struct tn_job_opts o;
    memset(&o, 0, sizeof(o));
    o.animation = 1;
    o.anim_start = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = start};
    if (end >= 0)
        o.anim_end = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = end};
    o.fps = fps;
    tn_job_opts_defaults(&o);
    return o;
}

static void test_animation(void **state)
{
    (void)state;
    unsigned n = 0;
    char err[512];
    struct tn_job_opts o = animation(0, -1, 0);
    assert_int_equal(o.format, TN_FORMAT_WEBP);
    assert_int_equal(o.mode, TN_MODE_ACCURATE);
    assert_int_equal(o.n_times, 0); /* no default time point: it would conflict */
    assert_int_equal(o.max_width, TN_JOB_DEFAULT_MAX_WIDTH);
    assert_int_equal(o.max_height, TN_JOB_DEFAULT_MAX_WIDTH);
    assert_true(o.fps == TN_ANIM_DEFAULT_FPS);
    accepted(&o);

    /* frames: ticks start + i / fps before end */
    assert_int_equal(tn_job_opts_anim_frames(2, 5, 10, &n, err, sizeof(err)), TN_OK);
    assert_int_equal(n, 30);
    assert_int_equal(tn_job_opts_anim_frames(0, 10, 30, &n, err, sizeof(err)), TN_OK);
    assert_int_equal(n, TN_ANIM_MAX_FRAMES);
    assert_int_equal(tn_job_opts_anim_frames(0, 0.01, 10, &n, err, sizeof(err)), TN_OK);
    assert_int_equal(n, 1);
    assert_int_equal(tn_job_opts_anim_frames(0, 0.25, 10, &n, err, sizeof(err)), TN_OK);
    assert_int_equal(n, 3);

    o = animation(0, TN_ANIM_MAX_SPAN, TN_ANIM_MAX_FPS);
    accepted(&o);
    o = animation(1, 1 + TN_ANIM_MAX_SPAN + 0.01, 1);
    refused(&o, "too long");
    o = animation(3, 2, 0);
    refused(&o, "end 2 s is not after start 3 s");
    o = animation(3, 3, 0);
    refused(&o, "not after");
    o = animation(0, 1, TN_ANIM_MAX_FPS + 0.5);
    refused(&o, "animation.fps");
    o = animation(0, 1, TN_ANIM_MIN_FPS / 2);
    refused(&o, "animation.fps");
    o = animation(0, 1, NAN);
    refused(&o, "animation.fps");
    o = animation(-1, -1, 0);
    refused(&o, "animation.start");
    o = animation(0, -1, 0);
    o.anim_end = (struct tn_time_point){.kind = TN_TIME_PERCENT, .value = 101};
    refused(&o, "animation.end");
    o.anim_end.value = 50; /* seconds then percent: the engine checks, with the duration */
    accepted(&o);
    o.anim_start = (struct tn_time_point){.kind = TN_TIME_PERCENT, .value = 60};
    refused(&o, "end 50% is not after start 60%");

    /* not with the other ways of asking for pictures, nor another format or mode */
    o = animation(0, 1, 0);
    o.count = 3;
    refused(&o, "not with times, count, every or storyboard");
    o = animation(0, 1, 0);
    o.n_times = 1;
    o.times[0] = (struct tn_time_point){.kind = TN_TIME_SECONDS, .value = 1};
    refused(&o, "not with times");
    o = animation(0, 1, 0);
    o.storyboard = 1;
    refused(&o, "storyboard");
    o = animation(0, 1, 0);
    o.format = TN_FORMAT_PNG;
    refused(&o, "format");
    o = animation(0, 1, 0);
    o.mode = TN_MODE_KEYFRAME;
    refused(&o, "mode");
    o = animation(0, 1, 0);
    o.cover_art = 1;
    refused(&o, "cover_art");
    o = animation(0, 1, 0); /* the box is checked as for a thumbnail */
    o.max_width = TN_JOB_MAX_SIDE + 1;
    refused(&o, "max_width");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),   cmocka_unit_test(test_enums_and_encoders),
        cmocka_unit_test(test_box),        cmocka_unit_test(test_points),
        cmocka_unit_test(test_storyboard), cmocka_unit_test(test_animation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
