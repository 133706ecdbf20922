#include "filter.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static bool glob_matches(const char *glob, const char *rel)
{
    const char *base = strrchr(rel, '/');
    const char *subject = strchr(glob, '/') ? rel : base ? base + 1 : rel;
    return fnmatch(glob, subject, FNM_CASEFOLD | (strchr(glob, '/') ? FNM_PATHNAME : 0)) == 0;
}

const char *tn_filter_name(const struct tn_client_options *o, const char *rel, bool *included,
                           char *buf, size_t len)
{
    *included = false;
    for (size_t i = 0; i < o->n_includes && !*included; i++)
        *included = glob_matches(o->includes[i], rel);
    if (o->n_includes && !*included) {
        snprintf(buf, len, "not matched by --include");
        return buf;
    }
    for (size_t i = 0; i < o->n_excludes; i++)
        if (glob_matches(o->excludes[i], rel)) {
            snprintf(buf, len, "excluded by --exclude '%s'", o->excludes[i]);
            return buf;
        }
    return NULL;
}

enum kind { TEXT, IMAGE, ARCHIVE };

/* Extensions that are not video, and what their content must look like to be skipped. */
static const struct {
    const char *ext;
    enum kind kind;
    const char *what;
} known[] = {
    {"srt", TEXT, "subtitles"},
    {"vtt", TEXT, "subtitles"},
    {"ass", TEXT, "subtitles"},
    {"ssa", TEXT, "subtitles"},
    {"sub", TEXT, "subtitles"},
    {"idx", TEXT, "subtitles"},
    {"nfo", TEXT, "text"},
    {"txt", TEXT, "text"},
    {"json", TEXT, "text"},
    {"xml", TEXT, "text"},
    {"md", TEXT, "text"},
    {"log", TEXT, "text"},
    {"csv", TEXT, "text"},
    {"html", TEXT, "text"},
    {"htm", TEXT, "text"},
    {"ini", TEXT, "text"},
    {"yml", TEXT, "text"},
    {"yaml", TEXT, "text"},
    {"cue", TEXT, "text"},
    {"m3u", TEXT, "a playlist"},
    {"m3u8", TEXT, "a playlist"},
    {"pls", TEXT, "a playlist"},
    {"sfv", TEXT, "checksums"},
    {"md5", TEXT, "checksums"},
    {"sha1", TEXT, "checksums"},
    {"sha256", TEXT, "checksums"},
    {"url", TEXT, "text"},
    {"jpg", IMAGE, "a JPEG image"},
    {"jpeg", IMAGE, "a JPEG image"},
    {"png", IMAGE, "a PNG image"},
    {"bmp", IMAGE, "a BMP image"},
    {"tif", IMAGE, "a TIFF image"},
    {"tiff", IMAGE, "a TIFF image"},
    {"webp", IMAGE, "a WebP image"},
    {"heic", IMAGE, "a HEIF image"},
    {"heif", IMAGE, "a HEIF image"},
    {"ico", IMAGE, "an icon"},
    {"psd", IMAGE, "a Photoshop image"},
    {"pdf", ARCHIVE, "a PDF document"},
    {"zip", ARCHIVE, "a ZIP archive"},
    {"rar", ARCHIVE, "a RAR archive"},
    {"7z", ARCHIVE, "a 7-Zip archive"},
    {"gz", ARCHIVE, "a gzip file"},
};

static bool starts(const unsigned char *p, size_t n, size_t off, const char *magic, size_t m)
{
    return n >= off + m && memcmp(p + off, magic, m) == 0;
}

/* Do the first n bytes look like what the extension promises? */
static bool content_agrees(const char *ext, const unsigned char *p, size_t n)
{
    if (!strcasecmp(ext, "jpg") || !strcasecmp(ext, "jpeg"))
        return starts(p, n, 0, "\xff\xd8\xff", 3);
    if (!strcasecmp(ext, "png"))
        return starts(p, n, 0, "\x89PNG\r\n\x1a\n", 8);
    if (!strcasecmp(ext, "bmp"))
        return starts(p, n, 0, "BM", 2);
    if (!strcasecmp(ext, "tif") || !strcasecmp(ext, "tiff"))
        return starts(p, n, 0, "II*\0", 4) || starts(p, n, 0, "MM\0*", 4);
    if (!strcasecmp(ext, "webp"))
        return starts(p, n, 0, "RIFF", 4) && starts(p, n, 8, "WEBP", 4);
    if (!strcasecmp(ext, "heic") || !strcasecmp(ext, "heif"))
        return starts(p, n, 4, "ftyphei", 7) || starts(p, n, 4, "ftypmif1", 8);
    if (!strcasecmp(ext, "ico"))
        return starts(p, n, 0, "\0\0\1\0", 4);
    if (!strcasecmp(ext, "psd"))
        return starts(p, n, 0, "8BPS", 4);
    if (!strcasecmp(ext, "pdf"))
        return starts(p, n, 0, "%PDF", 4);
    if (!strcasecmp(ext, "zip"))
        return starts(p, n, 0, "PK\3\4", 4) || starts(p, n, 0, "PK\5\6", 4);
    if (!strcasecmp(ext, "rar"))
        return starts(p, n, 0, "Rar!", 4);
    if (!strcasecmp(ext, "7z"))
        return starts(p, n, 0, "7z\xbc\xaf", 4);
    if (!strcasecmp(ext, "gz"))
        return starts(p, n, 0, "\x1f\x8b", 2);
    /* Text (any 8-bit charset: .nfo files are CP437): no NUL, no control
     * characters but tab, newlines, form feed and DOS's end of file. */
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 && (p[i] == 0 || !strchr("\t\n\r\f\x1a", p[i])))
            return false;
    return true;
}

const char *tn_filter_content(const char *rel, int fd, char *buf, size_t len)
{
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base)
        return NULL;
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
        if (strcasecmp(dot + 1, known[k].ext) != 0)
            continue;
        unsigned char head[4096];
        ssize_t n;
        do
            n = pread(fd, head, sizeof(head), 0);
        while (n < 0 && errno == EINTR);
        if (n < 0 || !content_agrees(known[k].ext, head, (size_t)n))
            return NULL; /* named like one, but is something else: let the server judge */
        snprintf(buf, len, "not a video (%s)", known[k].what);
        return buf;
    }
    return NULL;
}
