/*
 * The box arithmetic of a thumbnail: how large the picture is drawn, where it
 * is cropped (FILL) and where it sits on the canvas (PAD). Plain numbers in,
 * plain numbers out: no libav, no allocation, no I/O, so the unit tests can
 * hold every case of it (tests/unit/test_render.c). render.c's fit() feeds it
 * a decoded frame's size, sample aspect ratio and display matrix.
 */
#ifndef TN_RENDER_H
#define TN_RENDER_H

#include <stddef.h>

/* The box of the image being made: the request's, or a storyboard tile's. */
struct box {
    unsigned max_width, max_height;
    int upscale;
    int fit; /* enum tn_fit; 0 = FIT */
};

struct geom {
    int sw, sh;       /* scaled size, before rotation */
    int ow, oh;       /* scaled size, rotated */
    int transpose;    /* rotated by 90 or 270 degrees */
    int rev_a, rev_b; /* see orient() */
    int cx, cy;       /* FILL: the window of ow x oh that is kept, cw x ch */
    int cw, ch;
    int bw, bh; /* the image: cw x ch, or PAD's box with the picture at px, py */
    int px, py;
};

/*
 * Fits a picture of width x height pixels, sample aspect ratio
 * sar_num:sar_den (ignored unless both are > 0), into box, turned a quarter
 * if g->transpose is set (the caller sets g->transpose, g->rev_a and g->rev_b
 * first; they are left alone): FIT inside the box, FILL covering it (then
 * cropped to it), PAD inside it on a canvas of exactly the box. Without
 * upscale nothing is enlarged: FILL then crops to the box's aspect at the
 * video's scale, PAD centres the picture. Every side of the result is at
 * least 1. Returns TN_OK and fills the rest of g, or TN_INVALID_ARGUMENT with
 * a message in err when the picture would be over TN_JOB_MAX_SIDE a side.
 */
int tn_render_fit(const struct box *box, int width, int height, int sar_num, int sar_den,
                  struct geom *g, char *err, size_t errlen);

#endif
