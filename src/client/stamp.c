#include "stamp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define KEYWORD "thumbnail_client"
#define MAX_STAMP 1024
static int write_all_at(int fd, const void *p, size_t n, off_t off);
static const unsigned char iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};

char *tn_stamp_make(const struct tn_client_options *o, const struct stat *src)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    /* Every option that changes the pictures, as sent; not the transfer mode (same pixels). */
    fprintf(f, "v1 size=%lld mtime=%lld.%09ld at=", (long long)src->st_size,
            (long long)src->st_mtim.tv_sec, src->st_mtim.tv_nsec);
    for (size_t i = 0; i < o->n_times; i++)
        fprintf(f, "%s%.17g%s", i ? "," : "", o->times[i].value,
                o->times[i].kind == TN_TIME_PERCENT ? "%" : "s");
    fprintf(f,
            " w=%u h=%u up=%d mode=%d fmt=%d q=%u lossless=%d png=%u fit=%d pad=%06x count=%u "
            "every=%.17g cover=%d storyboard=%d tile=%u cols=%u",
            o->max_width, o->max_height, o->upscale, o->storyboard && !o->mode_set ? 2 : o->mode,
            o->format, o->quality, o->lossless, o->png_level, o->fit, o->pad_color, o->count,
            o->every, o->cover_art, o->storyboard, o->tile_width, o->columns);
    if (o->animated) /* only then: the records of other outputs stay as they were */
        fprintf(f, " anim=%.17g%s-%.17g%s fps=%.17g", o->anim_start.value,
                o->anim_start.kind == TN_TIME_PERCENT ? "%" : "s", o->anim_end.value,
                o->anim_end.kind == TN_TIME_PERCENT ? "%"
                : o->anim_end.kind                  ? "s"
                                                    : "",
                o->fps);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static bool ends_with(const char *p, const char *ext)
{
    size_t n = strlen(p), e = strlen(ext);
    return n > e && !strcasecmp(p + n - e, ext);
}

bool tn_stamp_inline(const char *p)
{
    return ends_with(p, ".png") || ends_with(p, ".jpg");
}

/* A JPEG's record: a COM segment right after SOI holding COM_PREFIX + the stamp. */
#define COM_PREFIX KEYWORD ": "
#define MAX_JPEG (64u << 20)

static int jpeg_attach(int fd, const char *stamp, size_t sl)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (st.st_size < 4 || (uint64_t)st.st_size > MAX_JPEG)
        return -EINVAL;
    size_t n = (size_t)st.st_size - 2, seg = 4 + strlen(COM_PREFIX) + sl;
    unsigned char *buf = malloc(seg + n), soi[2];
    if (!buf)
        return -ENOMEM;
    int r = 0;
    if (pread(fd, soi, 2, 0) != 2 || soi[0] != 0xff || soi[1] != 0xd8 ||
        pread(fd, buf + seg, n, 2) != (ssize_t)n) {
        r = -EINVAL;
    } else {
        buf[0] = 0xff;
        buf[1] = 0xfe;
        buf[2] = (unsigned char)((seg - 2) >> 8);
        buf[3] = (unsigned char)(seg - 2);
        memcpy(buf + 4, COM_PREFIX, strlen(COM_PREFIX));
        memcpy(buf + 4 + strlen(COM_PREFIX), stamp, sl);
        r = write_all_at(fd, buf, seg + n, 2);
    }
    free(buf);
    return r;
}

static bool jpeg_matches(int fd, const char *stamp, size_t sl)
{
    unsigned char buf[6 + sizeof(COM_PREFIX) + MAX_STAMP];
    size_t seg = 4 + strlen(COM_PREFIX) + sl;
    if (pread(fd, buf, 2 + seg, 0) != (ssize_t)(2 + seg))
        return false;
    return buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff && buf[3] == 0xfe &&
           buf[4] == (unsigned char)((seg - 2) >> 8) && buf[5] == (unsigned char)(seg - 2) &&
           !memcmp(buf + 6, COM_PREFIX, strlen(COM_PREFIX)) &&
           !memcmp(buf + 6 + strlen(COM_PREFIX), stamp, sl);
}

static char *sidecar_path(const char *final_path)
{
    const char *slash = strrchr(final_path, '/');
    int dirlen = slash ? (int)(slash - final_path + 1) : 0;
    char *p;
    if (asprintf(&p, "%.*s.%s.thumbmeta", dirlen, final_path, final_path + dirlen) < 0)
        return NULL;
    return p;
}

static uint32_t crc32_png(const unsigned char *p, size_t n, uint32_t c)
{
    c = ~c;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static int write_all_at(int fd, const void *p, size_t n, off_t off)
{
    const char *c = p;
    while (n) {
        ssize_t w = pwrite(fd, c, n, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        c += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

int tn_stamp_attach(const char *final_path, int fd, const char *stamp)
{
    size_t sl = strlen(stamp);
    if (sl > MAX_STAMP)
        return -EINVAL;
    if (!tn_stamp_inline(final_path)) {
        char *side = sidecar_path(final_path);
        if (!side)
            return -ENOMEM;
        int sfd = open(side, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
        free(side);
        if (sfd < 0)
            return -errno;
        int r = write_all_at(sfd, stamp, sl, 0);
        if (close(sfd) < 0 && r == 0)
            r = -errno;
        return r;
    }
    if (ends_with(final_path, ".jpg"))
        return jpeg_attach(fd, stamp, sl);
    struct stat st;
    unsigned char tail[12];
    if (fstat(fd, &st) < 0)
        return -errno;
    if (st.st_size < 8 + 25 + 12 || pread(fd, tail, 12, st.st_size - 12) != 12 ||
        memcmp(tail, iend, 12) != 0)
        return -EINVAL;
    unsigned char chunk[8 + sizeof(KEYWORD) + MAX_STAMP + 4 + 12];
    size_t body = sizeof(KEYWORD) + sl; /* keyword, NUL, text */
    put32(chunk, (uint32_t)body);
    memcpy(chunk + 4, "tEXt", 4);
    memcpy(chunk + 8, KEYWORD, sizeof(KEYWORD));
    memcpy(chunk + 8 + sizeof(KEYWORD), stamp, sl);
    put32(chunk + 8 + body, crc32_png(chunk + 4, 4 + body, 0));
    memcpy(chunk + 12 + body, iend, 12);
    return write_all_at(fd, chunk, 12 + body + 12, st.st_size - 12);
}

bool tn_stamp_matches(const char *path, const char *stamp)
{
    size_t sl = strlen(stamp);
    bool inl = tn_stamp_inline(path);
    char *side = inl ? NULL : sidecar_path(path);
    int fd = open(inl ? path : side ? side : "", O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    free(side);
    if (fd < 0)
        return false;
    bool ok = false;
    unsigned char buf[8 + sizeof(KEYWORD) + MAX_STAMP + 4 + 12];
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if (!inl) {
            ssize_t n = pread(fd, buf, sizeof(buf), 0);
            ok = n == (ssize_t)sl && memcmp(buf, stamp, sl) == 0;
        } else if (ends_with(path, ".jpg")) {
            ok = jpeg_matches(fd, stamp, sl);
        } else {
            /* Ours is the last chunk before IEND: exactly where tn_stamp_attach put it. */
            size_t want = 8 + sizeof(KEYWORD) + sl + 4 + 12;
            if ((size_t)st.st_size > want &&
                pread(fd, buf, want, st.st_size - (off_t)want) == (ssize_t)want) {
                ok = !memcmp(buf + 4, "tEXt", 4) && !memcmp(buf + 8, KEYWORD, sizeof(KEYWORD)) &&
                     !memcmp(buf + 8 + sizeof(KEYWORD), stamp, sl) &&
                     !memcmp(buf + want - 12, iend, 12);
                unsigned char len[4];
                put32(len, (uint32_t)(sizeof(KEYWORD) + sl));
                ok = ok && !memcmp(buf, len, 4);
            }
        }
    }
    close(fd);
    return ok;
}
