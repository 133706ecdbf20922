/*
 * The box arithmetic (render.h) on plain numbers: how large a picture is
 * drawn, the FILL crop and the PAD canvas, for FIT / FILL / PAD, a quarter
 * turn, a sample aspect ratio, upscaling on and off, odd sizes, 1-pixel
 * extremes and the 16384-pixel limit. The expected numbers are worked out by
 * hand in the comments, not taken from the code.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "job_opts.h"
#include "render.h"
#include "status.h"

struct want {
    int ow, oh; /* drawn size, after the turn */
    int sw, sh; /* drawn size, before the turn */
    int cx, cy, cw, ch;
    int bw, bh, px, py;
};

static struct geom fit_ok(struct box box, int w, int h, int sar_num, int sar_den, int transpose)
{
    struct geom g;
    char err[256] = "";

    memset(&g, 0x55, sizeof(g)); /* every output field must be written */
    g.transpose = transpose;
    g.rev_a = 1;
    g.rev_b = 0;
    int code = tn_render_fit(&box, w, h, sar_num, sar_den, &g, err, sizeof(err));
    if (code != TN_OK)
        fail_msg("%dx%d into %ux%u (fit %d, upscale %d): %d \"%s\"", w, h, box.max_width,
                 box.max_height, box.fit, box.upscale, code, err);
    /* the orientation is the caller's: left alone */
    assert_int_equal(g.transpose, transpose);
    assert_int_equal(g.rev_a, 1);
    assert_int_equal(g.rev_b, 0);
    return g;
}

static void expect(const struct geom *g, struct want w)
{
    if (g->ow != w.ow || g->oh != w.oh || g->sw != w.sw || g->sh != w.sh || g->cx != w.cx ||
        g->cy != w.cy || g->cw != w.cw || g->ch != w.ch || g->bw != w.bw || g->bh != w.bh ||
        g->px != w.px || g->py != w.py)
        fail_msg("got o %dx%d s %dx%d crop %d,%d %dx%d box %dx%d at %d,%d; want o %dx%d s %dx%d "
                 "crop %d,%d %dx%d box %dx%d at %d,%d",
                 g->ow, g->oh, g->sw, g->sh, g->cx, g->cy, g->cw, g->ch, g->bw, g->bh, g->px, g->py,
                 w.ow, w.oh, w.sw, w.sh, w.cx, w.cy, w.cw, w.ch, w.bw, w.bh, w.px, w.py);
}

/* An image of w x h, nothing cropped, nothing padded, not turned. */
static struct want plain(int w, int h)
{
    return (struct want){w, h, w, h, 0, 0, w, h, w, h, 0, 0};
}

static void refused(struct box box, int w, int h, int sar_num, int sar_den, int transpose,
                    const char *size)
{
    struct geom g;
    char err[256] = "";

    memset(&g, 0, sizeof(g));
    g.transpose = transpose;
    int code = tn_render_fit(&box, w, h, sar_num, sar_den, &g, err, sizeof(err));
    assert_int_equal(code, TN_INVALID_ARGUMENT);
    if (!strstr(err, size) || !strstr(err, "16384"))
        fail_msg("message \"%s\" should name %s and the 16384 limit", err, size);
}

static void test_fit(void **state)
{
    (void)state;
    /* width only: 1920x1080 * 320/1920 = 320x180 */
    struct geom g = fit_ok((struct box){320, 0, 0, TN_FIT_FIT}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(320, 180));
    /* fit 0 means FIT; a square box: the width decides */
    g = fit_ok((struct box){320, 320, 0, 0}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(320, 180));
    /* portrait in a landscape box: the height decides, 1080 * 180/1920 = 101.25 */
    g = fit_ok((struct box){320, 180, 0, TN_FIT_FIT}, 1080, 1920, 0, 0, 0);
    expect(&g, plain(101, 180));
    /* height only: 640x480 * 120/480 = 160x120 */
    g = fit_ok((struct box){0, 120, 0, TN_FIT_FIT}, 640, 480, 0, 0, 0);
    expect(&g, plain(160, 120));
    /* no box at all: the picture's own size */
    g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 640, 480, 0, 0, 0);
    expect(&g, plain(640, 480));
}

static void test_upscale(void **state)
{
    (void)state;
    /* a 160x90 video in a 320-wide box: kept at its size unless upscaling */
    struct geom g = fit_ok((struct box){320, 0, 0, TN_FIT_FIT}, 160, 90, 0, 0, 0);
    expect(&g, plain(160, 90));
    g = fit_ok((struct box){320, 0, 1, TN_FIT_FIT}, 160, 90, 0, 0, 0);
    expect(&g, plain(320, 180));
    /* upscaling changes nothing for a picture larger than the box */
    g = fit_ok((struct box){320, 0, 1, TN_FIT_FIT}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(320, 180));
}

static void test_fill(void **state)
{
    (void)state;
    /* 1920x1080 covering 200x200: scale max(200/1920, 200/1080) = 0.185185,
     * drawn 355.6 -> 356 x 200, the middle 200x200 kept: x from (356-200)/2 */
    struct geom g = fit_ok((struct box){200, 200, 0, TN_FIT_FILL}, 1920, 1080, 0, 0, 0);
    expect(&g, (struct want){356, 200, 356, 200, 78, 0, 200, 200, 200, 200, 0, 0});
    /* portrait: 1080x1920 covering 320x180: scale 320/1080, 320 x 568.9 -> 569,
     * the middle 180 rows: y from (569-180)/2 = 194 */
    g = fit_ok((struct box){320, 180, 0, TN_FIT_FILL}, 1080, 1920, 0, 0, 0);
    expect(&g, (struct want){320, 569, 320, 569, 0, 194, 320, 180, 320, 180, 0, 0});
    /* 160x90 under a 320x320 box, no upscale: the scale would be 320/90 =
     * 3.56, so the window is the box's aspect at the video's scale: 90x90,
     * from x (160-90)/2 = 35 */
    g = fit_ok((struct box){320, 320, 0, TN_FIT_FILL}, 160, 90, 0, 0, 0);
    expect(&g, (struct want){160, 90, 160, 90, 35, 0, 90, 90, 90, 90, 0, 0});
    /* the same with upscale: 160 * 3.5556 = 568.9 -> 569 x 320, 320x320 kept
     * from x (569-320)/2 = 124 */
    g = fit_ok((struct box){320, 320, 1, TN_FIT_FILL}, 160, 90, 0, 0, 0);
    expect(&g, (struct want){569, 320, 569, 320, 124, 0, 320, 320, 320, 320, 0, 0});
}

static void test_pad(void **state)
{
    (void)state;
    /* 1920x1080 inside 320x320: 320x180 on a 320x320 canvas, 70 rows above */
    struct geom g = fit_ok((struct box){320, 320, 0, TN_FIT_PAD}, 1920, 1080, 0, 0, 0);
    expect(&g, (struct want){320, 180, 320, 180, 0, 0, 320, 180, 320, 320, 0, 70});
    /* small, no upscale: 160x90 centred on 320x240 at (80, 75) */
    g = fit_ok((struct box){320, 240, 0, TN_FIT_PAD}, 160, 90, 0, 0, 0);
    expect(&g, (struct want){160, 90, 160, 90, 0, 0, 160, 90, 320, 240, 80, 75});
    /* small, upscale: 160x90 * min(2, 2.67) = 320x180 on 320x240 at (0, 30) */
    g = fit_ok((struct box){320, 240, 1, TN_FIT_PAD}, 160, 90, 0, 0, 0);
    expect(&g, (struct want){320, 180, 320, 180, 0, 0, 320, 180, 320, 240, 0, 30});
    /* the picture exactly the box: no border */
    g = fit_ok((struct box){320, 180, 0, TN_FIT_PAD}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(320, 180));
}

static void test_quarter_turn(void **state)
{
    (void)state;
    /* a 1920x1080 frame shown turned by 90 (or 270) degrees is 1080x1920:
     * into 320 wide: 320 x 568.9 -> 569 after the turn, 569x320 before it */
    struct geom g = fit_ok((struct box){320, 0, 0, TN_FIT_FIT}, 1920, 1080, 0, 0, 1);
    expect(&g, (struct want){320, 569, 569, 320, 0, 0, 320, 569, 320, 569, 0, 0});
    /* the same frame unturned is the landscape answer */
    g = fit_ok((struct box){320, 0, 0, TN_FIT_FIT}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(320, 180));
    /* PAD of the turned picture in 320x320: 180x320 at (70, 0), scaled 320x180 */
    g = fit_ok((struct box){320, 320, 0, TN_FIT_PAD}, 1920, 1080, 0, 0, 1);
    expect(&g, (struct want){180, 320, 320, 180, 0, 0, 180, 320, 320, 320, 70, 0});
    /* FILL of the turned picture in 320x180: 320x569, 180 rows from 194 */
    g = fit_ok((struct box){320, 180, 0, TN_FIT_FILL}, 1920, 1080, 0, 0, 1);
    expect(&g, (struct want){320, 569, 569, 320, 0, 194, 320, 180, 320, 180, 0, 0});
}

static void test_sample_aspect(void **state)
{
    (void)state;
    /* PAL 16:9 anamorphic: 720x576 with SAR 64:45 is displayed 1024x576 */
    struct geom g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 720, 576, 64, 45, 0);
    expect(&g, plain(1024, 576));
    g = fit_ok((struct box){320, 0, 0, TN_FIT_FIT}, 720, 576, 64, 45, 0);
    expect(&g, plain(320, 180));
    /* SAR 16:15 (4:3 PAL): 768x576 */
    g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 720, 576, 16, 15, 0);
    expect(&g, plain(768, 576));
    /* the SAR widens before the turn: 720x576 at 64:45 turned is 576x1024 */
    g = fit_ok((struct box){0, 512, 0, TN_FIT_FIT}, 720, 576, 64, 45, 1);
    expect(&g, (struct want){288, 512, 512, 288, 0, 0, 288, 512, 288, 512, 0, 0});
    /* an unknown SAR (0:1, 1:0, negative) is square pixels */
    g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 720, 576, 0, 1, 0);
    expect(&g, plain(720, 576));
    g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 720, 576, 1, 0, 0);
    expect(&g, plain(720, 576));
    g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 720, 576, -4, 3, 0);
    expect(&g, plain(720, 576));
}

static void test_odd_sizes(void **state)
{
    (void)state;
    /* 7x5 into 4 wide: 4 x 2.857 -> 3 */
    struct geom g = fit_ok((struct box){4, 0, 0, TN_FIT_FIT}, 7, 5, 0, 0, 0);
    expect(&g, plain(4, 3));
    /* 7x5 centred on 10x10 (no upscale): border of 1 left, 2 above (halves round down) */
    g = fit_ok((struct box){10, 10, 0, TN_FIT_PAD}, 7, 5, 0, 0, 0);
    expect(&g, (struct want){7, 5, 7, 5, 0, 0, 7, 5, 10, 10, 1, 2});
    /* 7x5 covering 3x3 (FILL): scale max(3/7, 3/5) = 0.6: 4.2 -> 4 x 3, the
     * middle 3 columns from (4-3)/2 = 0 */
    g = fit_ok((struct box){3, 3, 0, TN_FIT_FILL}, 7, 5, 0, 0, 0);
    expect(&g, (struct want){4, 3, 4, 3, 0, 0, 3, 3, 3, 3, 0, 0});
    /* 1921x1081 into 321 wide: 321 x 180.63 -> 181 */
    g = fit_ok((struct box){321, 0, 0, TN_FIT_FIT}, 1921, 1081, 0, 0, 0);
    expect(&g, plain(321, 181));
}

static void test_one_pixel(void **state)
{
    (void)state;
    /* a 1x1 video */
    struct geom g = fit_ok((struct box){320, 0, 0, TN_FIT_FIT}, 1, 1, 0, 0, 0);
    expect(&g, plain(1, 1));
    g = fit_ok((struct box){16384, 16384, 1, TN_FIT_FIT}, 1, 1, 0, 0, 0);
    expect(&g, plain(16384, 16384));
    /* a 1x1 box */
    g = fit_ok((struct box){1, 1, 0, TN_FIT_FIT}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(1, 1));
    g = fit_ok((struct box){1, 1, 0, TN_FIT_FILL}, 1920, 1080, 0, 0, 0);
    expect(&g, (struct want){2, 1, 2, 1, 0, 0, 1, 1, 1, 1, 0, 0});
    g = fit_ok((struct box){1, 1, 0, TN_FIT_PAD}, 1920, 1080, 0, 0, 0);
    expect(&g, plain(1, 1));
    /* a line: 16384x1 into 100 wide is 100 x 0.006, never less than 1 */
    g = fit_ok((struct box){100, 0, 0, TN_FIT_FIT}, 16384, 1, 0, 0, 0);
    expect(&g, plain(100, 1));
    g = fit_ok((struct box){0, 100, 0, TN_FIT_FIT}, 1, 16384, 0, 0, 0);
    expect(&g, plain(1, 100));
}

static void test_side_limit(void **state)
{
    (void)state;
    /* 16384 a side is allowed, one more is not */
    struct geom g = fit_ok((struct box){0, 0, 0, TN_FIT_FIT}, 16384, 16384, 0, 0, 0);
    expect(&g, plain(16384, 16384));
    refused((struct box){0, 0, 0, TN_FIT_FIT}, 16385, 10, 0, 0, 0, "16385x10");
    refused((struct box){0, 0, 0, TN_FIT_FIT}, 10, 16385, 0, 0, 1, "16385x10");
    /* upscaling a 1x2 video to 16384 wide would make it 32768 high */
    refused((struct box){16384, 0, 1, TN_FIT_FIT}, 1, 2, 0, 0, 0, "16384x32768");
    g = fit_ok((struct box){16384, 0, 1, TN_FIT_FIT}, 2, 1, 0, 0, 0);
    expect(&g, plain(16384, 8192));
    /* a wide SAR past the limit */
    refused((struct box){0, 0, 0, TN_FIT_FIT}, 8192, 100, 3, 1, 0, "24576x100");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit),          cmocka_unit_test(test_upscale),
        cmocka_unit_test(test_fill),         cmocka_unit_test(test_pad),
        cmocka_unit_test(test_quarter_turn), cmocka_unit_test(test_sample_aspect),
        cmocka_unit_test(test_odd_sizes),    cmocka_unit_test(test_one_pixel),
        cmocka_unit_test(test_side_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
