#include "parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int tn_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end)
        return -EINVAL;
    if (errno == ERANGE || v < min || v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

int tn_parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    unsigned shift = 0;
    if (*end) {
        switch (*end) {
        case 'k':
        case 'K': shift = 10; break;
        case 'm':
        case 'M': shift = 20; break;
        case 'g':
        case 'G': shift = 30; break;
        case 't':
        case 'T': shift = 40; break;
        case 'b':
        case 'B': shift = 0; break;
        default: return -EINVAL;
        }
        const char *rest = end + 1;
        if (shift && *rest && strcasecmp(rest, "ib") != 0 && strcasecmp(rest, "b") != 0)
            return -EINVAL;
        if (!shift && *rest)
            return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_double(const char *s, const char **end_out, double *out)
{
    if (!s || !*s || *s == ' ' || *s == '+')
        return -EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno == ERANGE || !isfinite(v))
        return -EINVAL;
    /* strtod accepts hex floats and "inf"; users never mean those. */
    for (const char *p = s; p < end; p++)
        if (!strchr("0123456789.-eE", *p))
            return -EINVAL;
    *end_out = end;
    *out = v;
    return 0;
}

int tn_parse_duration(const char *s, double *out)
{
    const char *end;
    double v;
    if (parse_double(s, &end, &v) < 0)
        return -EINVAL;
    double mult;
    if (!*end || strcmp(end, "s") == 0)
        mult = 1;
    else if (strcmp(end, "ms") == 0)
        mult = 0.001;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        mult = 60;
    else if (strcmp(end, "h") == 0)
        mult = 3600;
    else
        return -EINVAL;
    if (v < 0)
        return -ERANGE;
    *out = v * mult;
    return 0;
}

int tn_parse_time_point(const char *s, struct tn_time_point *out)
{
    const char *end;
    double v = 0; /* read by the error path below when the first parse fails */
    if (!s)
        return -EINVAL;
    size_t len = strlen(s);
    if (len > 1 && s[len - 1] == '%') {
        char buf[64];
        if (len >= sizeof(buf))
            return -EINVAL;
        memcpy(buf, s, len - 1);
        buf[len - 1] = 0;
        if (parse_double(buf, &end, &v) < 0 || *end)
            return -EINVAL;
        if (v < 0 || v > 100)
            return -ERANGE;
        out->kind = TN_TIME_PERCENT;
        out->pad = 0;
        out->value = v;
        return 0;
    }
    /* [[h:]m:]s with the last part possibly fractional. */
    double total = 0;
    int parts = 0;
    const char *p = s;
    for (;;) {
        if (parse_double(p, &end, &v) < 0 || v < 0)
            return v < 0 ? -ERANGE : -EINVAL;
        parts++;
        total = total * 60 + v;
        if (*end == ':' && parts < 3) {
            if (v != floor(v) || (parts > 1 && v >= 60))
                return -EINVAL;
            p = end + 1;
            continue;
        }
        if (*end)
            return -EINVAL;
        if (parts > 1 && v >= 60)
            return -EINVAL;
        break;
    }
    out->kind = TN_TIME_SECONDS;
    out->pad = 0;
    out->value = total;
    return 0;
}
