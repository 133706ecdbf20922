/* JSON strings from untrusted bytes. See json.h. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong
 * forms, no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

json_t *tn_json_str(const char *s, size_t max)
{
    if (!s)
        return json_null();
    size_t n = strlen(s), len = 0;
    char *buf = malloc(n * 3 + 1); /* each bad byte may become 3 (U+FFFD) */
    if (!buf)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t k = utf8_len(p);
        const char *src = k ? (const char *)p : "\xef\xbf\xbd";
        size_t out = k ? k : 3;
        if (max && len + out > max)
            break;
        memcpy(buf + len, src, out);
        len += out;
        p += k ? k : 1;
    }
    json_t *j = json_stringn_nocheck(buf, len);
    free(buf);
    return j;
}

int tn_json_set(json_t *obj, const char *key, json_t *value)
{
    if (!value)
        return -1;
    return json_object_set_new(obj, key, value);
}
