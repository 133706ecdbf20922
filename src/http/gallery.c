/*
 * The gallery page: the embedded template (gallery.html, with its CSS and
 * script) with three markers filled in here: the title, the breadcrumbs and the
 * listing. Rendering on the server is what makes the page work without
 * JavaScript; the script reads only what is rendered (data-u on each tile: the
 * percent-encoded path), so the URL encoding lives in one place, this file.
 */
#include "gallery.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* gallery.html as bytes (embed_bytes.cmake) */
extern const unsigned char tn_gallery_html[];
extern const size_t tn_gallery_html_len;

/* Thumbnails of the tiles: the size the <img> reserves, so the grid does not
 * move while they load; the gateway is asked for that box. */
#define TILE_W 320
#define TILE_H 180

/* Names shown as video tiles; any other file is listed without a thumbnail
 * (asking for one would only draw a broken image). */
static const char *const video_ext[] = {"mp4", "m4v", "mov",  "mkv", "webm", "avi",  "wmv",
                                        "flv", "ts",  "m2ts", "mts", "mpg",  "mpeg", "ogv",
                                        "3gp", "mxf", "vob",  "gif", "y4m"};

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static bool is_video(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name)
        return false;
    for (size_t i = 0; i < sizeof video_ext / sizeof video_ext[0]; i++)
        if (strcasecmp(dot + 1, video_ext[i]) == 0)
            return true;
    return false;
}

/* The first n bytes of s (or up to its NUL), as text or an attribute value
 * alike (attributes are always double-quoted). */
static void put_html_n(FILE *f, const char *s, size_t n)
{
    for (; n && *s; s++, n--) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

static void put_html(FILE *f, const char *s)
{
    put_html_n(f, s, (size_t)-1);
}

/* The first n bytes of a path (or up to its NUL) as a URL path: every byte but
 * RFC 3986's unreserved ones and the '/' separators percent-encoded (so '?',
 * '#', '%', spaces, quotes and non-ASCII bytes cannot end or change the URL).
 * The result is also safe in an HTML attribute. */
static void put_url_n(FILE *f, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; n && *p; p++, n--) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~' || *p == '/')
            fputc(*p, f);
        else
            fprintf(f, "%%%c%c", hex[*p >> 4], hex[*p & 15]);
    }
}

static void put_url(FILE *f, const char *s)
{
    put_url_n(f, s, (size_t)-1);
}

static void put_size(FILE *f, uint64_t b)
{
    static const char *const unit[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    fprintf(f, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
}

/* Folders first, then by name, case folded, bytes as the tie-break. */
static int entry_cmp(const void *a, const void *b)
{
    const Thumbnail__V1__ListEntry *x = *(const Thumbnail__V1__ListEntry *const *)a;
    const Thumbnail__V1__ListEntry *y = *(const Thumbnail__V1__ListEntry *const *)b;
    if (x->is_dir != y->is_dir)
        return x->is_dir ? -1 : 1;
    int c = strcasecmp(base_name(x->path), base_name(y->path));
    return c ? c : strcmp(base_name(x->path), base_name(y->path));
}

static void put_title(FILE *f, const char *dir)
{
    put_html(f, dir[0] ? dir : "Media");
}

/* "Media / a / b": every level but the last a link. */
static void put_crumbs(FILE *f, const char *dir)
{
    fputs(dir[0] ? "<a href=\"/\">Media</a>" : "<span aria-current=\"page\">Media</span>", f);
    for (const char *seg = dir; *seg;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        fputs(" <span class=\"sep\">/</span> ", f);
        if (end) {
            fputs("<a href=\"" TN_GALLERY_BROWSE, f);
            put_url_n(f, dir, (size_t)(seg - dir) + len); /* the path up to this level */
            fputs("\">", f);
            put_html_n(f, seg, len);
            fputs("</a>", f);
        } else {
            fputs("<span aria-current=\"page\">", f);
            put_html_n(f, seg, len);
            fputs("</span>", f);
        }
        seg = end ? end + 1 : seg + len;
    }
}

static void put_dir(FILE *f, const Thumbnail__V1__ListEntry *e)
{
    fputs("<li class=\"dir\"><a href=\"" TN_GALLERY_BROWSE, f);
    put_url(f, e->path);
    fputs("\"><span class=\"icon\" aria-hidden=\"true\"></span><span class=\"name\">", f);
    put_html(f, base_name(e->path));
    fputs("</span></a></li>\n", f);
}

/* A tile: the thumbnail (a link to the probe JSON, which the script turns into
 * the panel), the name and the size. */
static void put_video(FILE *f, const Thumbnail__V1__ListEntry *e)
{
    const char *name = base_name(e->path);
    fputs("<li class=\"tile\" data-u=\"", f);
    put_url(f, e->path);
    fputs("\"><a class=\"thumb\" href=\"/v1/probe/", f);
    put_url(f, e->path);
    fputs("\"><img src=\"/v1/thumbnail/", f);
    put_url(f, e->path);
    fprintf(f,
            ".jpg?time=10%%25&amp;width=%d&amp;height=%d\" loading=\"lazy\" decoding=\"async\" "
            "width=\"%d\" height=\"%d\" alt=\"",
            TILE_W, TILE_H, TILE_W, TILE_H);
    put_html(f, name);
    fputs("\"></a><span class=\"name\" title=\"", f);
    put_html(f, name);
    fputs("\">", f);
    put_html(f, name);
    fputs("</span><span class=\"meta\">", f);
    put_size(f, e->size);
    fputs("</span></li>\n", f);
}

static void put_other(FILE *f, const Thumbnail__V1__ListEntry *e)
{
    fputs("<li class=\"file\"><span class=\"name\">", f);
    put_html(f, base_name(e->path));
    fputs("</span> <span class=\"meta\">", f);
    put_size(f, e->size);
    fputs("</span></li>\n", f);
}

static void put_listing(FILE *f, const char *dir, const Thumbnail__V1__ListEntry *const *sorted,
                        size_t n, const char *next_page_token)
{
    size_t videos = 0, others = 0;
    for (size_t i = 0; i < n; i++)
        if (!sorted[i]->is_dir)
            *(is_video(base_name(sorted[i]->path)) ? &videos : &others) += 1;

    fputs("<ul id=\"grid\" class=\"grid\">\n", f);
    for (size_t i = 0; i < n; i++) {
        if (sorted[i]->is_dir)
            put_dir(f, sorted[i]);
        else if (is_video(base_name(sorted[i]->path)))
            put_video(f, sorted[i]);
    }
    fputs("</ul>\n", f);
    if (n == 0)
        fputs("<p class=\"empty\">This folder is empty.</p>\n", f);
    if (others) {
        fputs("<h2 class=\"others\">Other files</h2>\n<ul class=\"files\">\n", f);
        for (size_t i = 0; i < n; i++)
            if (!sorted[i]->is_dir && !is_video(base_name(sorted[i]->path)))
                put_other(f, sorted[i]);
        fputs("</ul>\n", f);
    }
    if (next_page_token && next_page_token[0]) {
        fputs("<p class=\"more\"><a href=\"" TN_GALLERY_BROWSE, f);
        put_url(f, dir);
        fputs("?page=", f);
        put_url(f, next_page_token);
        fputs("\">More…</a></p>\n", f);
    }
}

int tn_gallery_render(const char *dir, const Thumbnail__V1__ListEntry *const *entries, size_t n,
                      const char *next_page_token, char **html, size_t *len)
{
    const Thumbnail__V1__ListEntry **sorted = NULL;
    char *buf = NULL;
    size_t buf_len = 0;
    FILE *f = NULL;
    int rc = -ENOMEM;

    if (n && !(sorted = malloc(n * sizeof *sorted)))
        goto out;
    if (n)
        memcpy(sorted, entries, n * sizeof *sorted);
    if (n)
        qsort(sorted, n, sizeof *sorted, entry_cmp);
    if (!(f = open_memstream(&buf, &buf_len)))
        goto out;

    /* the template, its markers replaced: <!--tn:NAME--> */
    const char *t = (const char *)tn_gallery_html, *end = t + tn_gallery_html_len;
    while (t < end) {
        const char *m = memmem(t, (size_t)(end - t), "<!--tn:", 7);
        if (!m) {
            fwrite(t, 1, (size_t)(end - t), f);
            break;
        }
        fwrite(t, 1, (size_t)(m - t), f);
        const char *close = memmem(m, (size_t)(end - m), "-->", 3);
        if (!close) { /* a broken template: the rest as it is */
            fwrite(m, 1, (size_t)(end - m), f);
            break;
        }
        size_t name_len = (size_t)(close - (m + 7));
        const char *name = m + 7;
        if (name_len == 5 && memcmp(name, "title", 5) == 0)
            put_title(f, dir);
        else if (name_len == 6 && memcmp(name, "crumbs", 6) == 0)
            put_crumbs(f, dir);
        else if (name_len == 7 && memcmp(name, "listing", 7) == 0)
            put_listing(f, dir, sorted, n, next_page_token);
        t = close + 3;
    }
    FILE *done = f;
    f = NULL;
    if (fclose(done) != 0) /* the memstream's last flush failed */
        goto out;
    *html = buf;
    *len = buf_len;
    buf = NULL;
    rc = 0;
out:
    if (f)
        fclose(f);
    free(buf);
    free(sorted);
    return rc;
}
