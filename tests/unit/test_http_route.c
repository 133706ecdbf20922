/*
 * The HTTP gateway's routes (src/http/route.h): URL and query into a gRPC
 * request, and the canonical form that URL signatures and ETags cover. The
 * canonical strings here are the ones README.md's "Signed URLs" documents: a
 * change to them breaks every signed URL in the wild.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "route.h"

#define P(n, v) ((struct tn_route_param){.name = (n), .value = (v)})

static int parse(struct tn_route *r, const char *url, const struct tn_route_param *p, size_t n,
                 char *err)
{
    return tn_route_parse(r, url, p, n, err, 512);
}

static void canonical_form(void **state)
{
    (void)state;
    char out[ROUTE_CANON_MAX];
    struct tn_route_param p[] = {P("width", "320"), P("time", "10%"), P("sig", "abc")};
    assert_int_equal(tn_route_canonical("/v1/thumbnail/clips/a.mp4.png", p, 3, out, sizeof(out)),
                     0);
    assert_string_equal(out, "/v1/thumbnail/clips/a.mp4.png?time=10%25&width=320");
    /* path bytes outside the unreserved set, '/' kept in the path, encoded in values */
    struct tn_route_param q[] = {P("glob", "a b/*.mp4")};
    assert_int_equal(tn_route_canonical("/v1/list/my clip/é", q, 1, out, sizeof(out)), 0);
    assert_string_equal(out, "/v1/list/my%20clip/%C3%A9?glob=a%20b%2F%2A.mp4");
    /* no parameters but sig: no '?' */
    assert_int_equal(tn_route_canonical("/v1/probe/a.mp4", p + 2, 1, out, sizeof(out)), 0);
    assert_string_equal(out, "/v1/probe/a.mp4");
    /* too small a buffer is an error, not a truncated string that would verify */
    assert_int_equal(tn_route_canonical("/v1/probe/a.mp4", p, 2, out, 20), -1);
}

static void thumbnail_route(void **state)
{
    (void)state;
    static struct tn_route r;
    char err[512];
    struct tn_route_param p[] = {P("time", "12.5"), P("width", "320"),     P("height", "180"),
                                 P("fit", "pad"),   P("mode", "keyframe"), P("quality", "70")};
    assert_int_equal(parse(&r, "/v1/thumbnail/sub/a.b.mp4.jpg", p, 6, err), 0);
    assert_int_equal(r.kind, ROUTE_THUMBNAIL);
    assert_string_equal(r.path, "sub/a.b.mp4");
    assert_string_equal(r.opts.local_path, "sub/a.b.mp4");
    assert_string_equal(r.opts.file_name, "a.b.mp4");
    assert_string_equal(r.mime, "image/jpeg");
    assert_int_equal(r.opts.format, THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_JPEG);
    assert_int_equal(r.opts.n_times, 1);
    assert_int_equal(r.opts.times[0]->point_case, THUMBNAIL__V1__TIME_POINT__POINT_SECONDS);
    assert_true(r.opts.times[0]->seconds == 12.5);
    assert_int_equal(r.opts.max_width, 320);
    assert_int_equal(r.opts.max_height, 180);
    assert_int_equal(r.opts.fit, THUMBNAIL__V1__FIT_MODE__FIT_MODE_PAD);
    assert_int_equal(r.opts.mode, THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_KEYFRAME);
    assert_int_equal(r.opts.quality, 70);
    assert_string_equal(r.query, "fit=pad&height=180&mode=keyframe&quality=70&time=12.5&width=320");

    struct tn_route_param pct[] = {P("time", "10%")};
    assert_int_equal(parse(&r, "/v1/thumbnail/a.mp4.webp", pct, 1, err), 0);
    assert_int_equal(r.opts.times[0]->point_case, THUMBNAIL__V1__TIME_POINT__POINT_PERCENT);
    assert_true(r.opts.times[0]->percent == 10);
    assert_int_equal(r.opts.format, THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_WEBP);
}

static void refusals(void **state)
{
    (void)state;
    static struct tn_route r;
    char err[512];
    struct tn_route_param bad[][2] = {
        {P("width", "0")},
        {P("width", "-1")},
        {P("width", "12px")},
        {P("time", "101%")},
        {P("time", "-2")},
        {P("time", "nan")},
        {P("fit", "stretch")},
        {P("mode", "fast")},
        {P("quality", "101")},
        {P("widht", "1")},
        {P("format", "webp")}, /* format: VTT only */
        {P("width", "1"), P("width", "2")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = bad[i][1].name ? 2 : 1;
        assert_int_equal(parse(&r, "/v1/thumbnail/a.mp4.png", bad[i], n, err), 400);
    }
    assert_int_equal(parse(&r, "/v1/thumbnail/a.mp4.gif", NULL, 0, err), 404);
    assert_int_equal(parse(&r, "/v1/thumbnail/.png", NULL, 0, err), 404);
    assert_int_equal(parse(&r, "/v1/nothing/a.mp4", NULL, 0, err), 404);
    assert_int_equal(parse(&r, "/v1/probe/", NULL, 0, err), 404);
    assert_non_null(strstr(err, "no path"));
}

static void storyboard_animated_list(void **state)
{
    (void)state;
    static struct tn_route r;
    char err[512];
    struct tn_route_param sb[] = {P("format", "webp"), P("count", "4"), P("width", "80")};
    assert_int_equal(parse(&r, "/v1/storyboard/a.mp4.vtt", sb, 3, err), 0);
    assert_int_equal(r.kind, ROUTE_STORYBOARD_VTT);
    assert_true(r.opts.storyboard);
    assert_string_equal(r.sprite_ext, "webp");
    assert_int_equal(r.opts.format, THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_WEBP);
    assert_int_equal(r.opts.tile_width, 80);
    assert_int_equal(r.opts.count, 4);
    assert_string_equal(r.sprite_query, "count=4&width=80"); /* format is the VTT's alone */
    assert_int_equal(parse(&r, "/v1/storyboard/a.mp4.jpg", sb + 1, 2, err), 0);
    assert_int_equal(r.kind, ROUTE_STORYBOARD_IMAGE);

    struct tn_route_param an[] = {P("start", "1.5"), P("end", "50%"), P("fps", "12")};
    assert_int_equal(parse(&r, "/v1/animated/a.mp4.webp", an, 3, err), 0);
    assert_non_null(r.opts.animation);
    assert_true(r.opts.animation->start->seconds == 1.5);
    assert_true(r.opts.animation->end->percent == 50);
    assert_true(r.opts.animation->fps == 12);
    assert_int_equal(parse(&r, "/v1/animated/a.mp4.png", NULL, 0, err), 404);

    struct tn_route_param ls[] = {P("recursive", ""), P("glob", "*.mkv"), P("page_size", "10")};
    assert_int_equal(parse(&r, "/v1/list/sub/", ls, 3, err), 0);
    assert_int_equal(r.kind, ROUTE_LIST);
    assert_string_equal(r.list.dir, "sub");
    assert_true(r.list.recursive);
    assert_string_equal(r.list.glob, "*.mkv");
    assert_int_equal(r.list.page_size, 10);
    assert_int_equal(parse(&r, "/v1/list/", NULL, 0, err), 0);
    assert_string_equal(r.list.dir, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(canonical_form),
        cmocka_unit_test(thumbnail_route),
        cmocka_unit_test(refusals),
        cmocka_unit_test(storyboard_animated_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
