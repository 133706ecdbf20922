/*
 * The engine's encoders: an RGB24 image as PNG (libpng), JPEG (TurboJPEG) or
 * WebP (libwebp), stored in a sealed memfd that the worker passes to the
 * front. A failing encoder writes its own text into a buffer of
 * ENC_ERR_MAX bytes; encode() turns it into the request's error.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <png.h>
#include <turbojpeg.h>
#include <webp/encode.h>

#include "engine_int.h"
#include "log.h"
#include "status.h"

#define PNG_LEVEL 1     /* default zlib level: see encode_png() */
#define JPEG_QUALITY 85 /* quality 0 in the request: these, as the proto documents */
#define WEBP_QUALITY 80
#define ENC_ERR_MAX 128 /* an encoder's error text */

/* msg as the encoder's error text in perr (ENC_ERR_MAX bytes); returns -1,
 * the encoders' failure. */
static int enc_error(char *perr, const char *msg)
{
    snprintf(perr, ENC_ERR_MAX, "%s", msg);
    return -1;
}

const char *format_name(int format)
{
    switch (format) {
    case TN_FORMAT_PNG: return "PNG";
    case TN_FORMAT_JPEG: return "JPEG";
    case TN_FORMAT_WEBP: return "WEBP";
    default: return NULL;
    }
}

static void png_write_cb(png_structp png, png_bytep data, size_t len)
{
    struct membuf *mb = png_get_io_ptr(png);
    if (mb->len + len > mb->cap) {
        size_t cap = mb->cap ? mb->cap : 64 * 1024;
        while (cap < mb->len + len)
            cap *= 2;
        uint8_t *p = realloc(mb->data, cap);
        if (!p)
            png_error(png, "out of memory");
        mb->data = p;
        mb->cap = cap;
    }
    memcpy(mb->data + mb->len, data, len);
    mb->len += len;
}

static void png_flush_cb(png_structp png)
{
    (void)png;
}

static void png_error_cb(png_structp png, png_const_charp msg)
{
    enc_error(png_get_error_ptr(png), msg);
    png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg)
{
    (void)png;
    tn_log_debug("libpng: %s", msg);
}

/* Encode w x h RGB24 into mb. No local changes after setjmp, so nothing
 * needs to be volatile. */
static int encode_png(const uint8_t *rgb, int w, int h, size_t stride, int level, struct membuf *mb,
                      char perr[ENC_ERR_MAX])
{
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, perr, png_error_cb, png_warning_cb);
    if (!png)
        return -1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    mb->len = 0;
    png_set_write_fn(png, mb, png_write_cb, png_flush_cb);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    /* level 1 (the default) is ~4x faster than 6 for ~20 % more bytes; SUB is
     * the cheap filter */
    png_set_compression_level(png, level);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, rgb + (size_t)y * stride);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

/* A sealed memfd holding buf: the receiver can map it without fearing that
 * it changes or shrinks under it. Returns the fd or -errno. */
int sealed_memfd(const uint8_t *buf, size_t len)
{
    int fd = memfd_create("thumbnail", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int err = n < 0 ? -errno : -EIO;
            close(fd);
            return err;
        }
        off += (size_t)n;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0 ||
        lseek(fd, 0, SEEK_SET) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Encode w x h RGB24 as baseline JPEG, 4:2:0 chroma (the common choice, as
 * cjpeg's default) into e->out, which is grown to the worst case first so
 * that libjpeg-turbo never reallocates it (NOREALLOC: the buffer is ours,
 * from malloc). ~0.1 ms at 320x180. */
static int encode_jpeg(struct engine *e, const uint8_t *rgb, int w, int h, size_t stride,
                       int quality, char perr[ENC_ERR_MAX])
{
    unsigned long bound = tjBufSize(w, h, TJSAMP_420);
    unsigned long len = bound;

    if (bound == (unsigned long)-1) {
        return enc_error(perr, tjGetErrorStr2(NULL));
    }
    if (!e->tj && !(e->tj = tjInitCompress())) {
        return enc_error(perr, tjGetErrorStr2(NULL));
    }
    if (e->out.cap < bound) {
        uint8_t *p = realloc(e->out.data, bound);
        if (!p) {
            return enc_error(perr, "out of memory");
        }
        e->out.data = p;
        e->out.cap = bound;
    }
    unsigned char *dst = e->out.data;
    if (tjCompress2(e->tj, rgb, w, (int)stride, h, TJPF_RGB, &dst, &len, TJSAMP_420, quality,
                    TJFLAG_NOREALLOC) < 0) {
        return enc_error(perr, tjGetErrorStr2(e->tj));
    }
    e->out.len = len;
    return 0;
}

static const char *webp_error(enum WebPEncodingError err)
{
    switch (err) {
    case VP8_ENC_ERROR_OUT_OF_MEMORY:
    case VP8_ENC_ERROR_BITSTREAM_OUT_OF_MEMORY: return "out of memory";
    case VP8_ENC_ERROR_BAD_DIMENSION: return "bad dimension";
    case VP8_ENC_ERROR_PARTITION0_OVERFLOW:
    case VP8_ENC_ERROR_PARTITION_OVERFLOW: return "partition overflow";
    default: return "encoder error";
    }
}

/* Encode w x h RGB24 as WebP into *out (WebPMemoryWriter, freed by the
 * caller with WebPMemoryWriterClear). Lossy: quality is the usual 1..100,
 * method 4 (libwebp's default, ~3 ms at 320x180). Lossless: the pixels are
 * exact and quality is the effort, 1..100 mapped to libwebp's presets 0..9,
 * 0 (the default) = preset 0. Effort buys little and costs a lot: at 320x180
 * preset 0 takes ~1 ms for 18.6 KB, preset 6 ~100 ms for 16 KB, preset 9
 * ~500 ms for 15.9 KB (PNG level 1: ~1 ms, 24.9 KB). */
static int encode_webp(const uint8_t *rgb, int w, int h, size_t stride, unsigned quality,
                       int lossless, WebPMemoryWriter *out, char perr[ENC_ERR_MAX])
{
    WebPConfig config;
    WebPPicture pic;
    int ok = 0;

    if (!WebPConfigInit(&config) || !WebPPictureInit(&pic)) {
        return enc_error(perr, "libwebp version mismatch");
    }
    if (lossless) {
        if (!WebPConfigLosslessPreset(&config, quality ? (int)(quality - 1) / 11 : 0)) {
            return enc_error(perr, "invalid lossless preset");
        }
    } else {
        config.quality = (float)(quality ? quality : WEBP_QUALITY);
        config.method = 4;
    }
    if (!WebPValidateConfig(&config)) {
        return enc_error(perr, "invalid configuration");
    }
    pic.use_argb = lossless; /* lossless works on ARGB, lossy on YUV: no extra conversion */
    pic.width = w;
    pic.height = h;
    pic.writer = WebPMemoryWrite;
    pic.custom_ptr = out;
    if (!WebPPictureImportRGB(&pic, rgb, (int)stride)) {
        enc_error(perr, "out of memory");
        goto out;
    }
    if (!WebPEncode(&config, &pic)) {
        enc_error(perr, webp_error(pic.error_code));
        goto out;
    }
    ok = 1;
out:
    WebPPictureFree(&pic);
    return ok ? 0 : -1;
}

/* Encode the image in the requested format and store it in a sealed memfd.
 * Returns the fd and sets *size, or a negative TN code (message in e->err). */
int encode(struct engine *e, const uint8_t *img, int w, int h, size_t stride, uint64_t *size)
{
    const struct tn_engine_request *req = e->req;
    char perr[ENC_ERR_MAX] = "";
    const uint8_t *data = NULL;
    size_t len = 0;
    WebPMemoryWriter webp;
    int fd, rc;

    WebPMemoryWriterInit(&webp);
    switch (req->opts.format) {
    case TN_FORMAT_JPEG:
        rc = encode_jpeg(e, img, w, h, stride,
                         req->opts.quality ? (int)req->opts.quality : JPEG_QUALITY, perr);
        data = e->out.data;
        len = e->out.len;
        break;
    case TN_FORMAT_WEBP:
        if (w > WEBP_MAX_DIMENSION || h > WEBP_MAX_DIMENSION) {
            WebPMemoryWriterClear(&webp);
            return -fail(e, TN_INVALID_ARGUMENT,
                         "the thumbnail would be %dx%d, over WebP's %d a side: give a smaller box "
                         "or use PNG or JPEG",
                         w, h, WEBP_MAX_DIMENSION);
        }
        rc =
            encode_webp(img, w, h, stride, req->opts.quality, req->opts.lossless != 0, &webp, perr);
        data = webp.mem;
        len = webp.size;
        break;
    default:
        rc = encode_png(img, w, h, stride,
                        req->opts.png_level ? (int)req->opts.png_level : PNG_LEVEL, &e->out, perr);
        data = e->out.data;
        len = e->out.len;
        break;
    }
    if (rc < 0) {
        WebPMemoryWriterClear(&webp);
        if (!perr[0] || !strcmp(perr, "out of memory"))
            return -fail(e, TN_INVALID_ARGUMENT,
                         "%s encoding failed: out of memory (the thumbnail is too large for a "
                         "worker's memory; ask for a smaller size)",
                         format_name(req->opts.format));
        return -fail(e, TN_INTERNAL, "%s encoding failed: %s", format_name(req->opts.format), perr);
    }
    fd = sealed_memfd(data, len);
    WebPMemoryWriterClear(&webp);
    if (fd < 0)
        return -fail(e, fd == -ENOMEM || fd == -EMFILE ? TN_RESOURCE_EXHAUSTED : TN_INTERNAL,
                     "cannot store the thumbnail in a memfd: %s", strerror(-fd));
    *size = len;
    return fd;
}
