/*
 * The HTTP gateway's routes (see route.h).
 */
#include "route.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return status;
}

int tn_route_encode(const char *s, bool keep_slash, char *out, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~' ||
                     (keep_slash && *p == '/');
        if (o + (plain ? 1 : 3) >= len)
            return -1;
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = 0;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    const struct tn_route_param *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

/* The sorted, encoded query without sig (and without `skip` if not NULL). */
static int canonical_query(const struct tn_route_param *params, size_t n, const char *skip,
                           char *out, size_t len)
{
    struct tn_route_param sorted[ROUTE_MAX_PARAMS];
    size_t m = 0, o = 0;
    for (size_t i = 0; i < n && m < ROUTE_MAX_PARAMS; i++)
        if (strcmp(params[i].name, "sig") != 0 && (!skip || strcmp(params[i].name, skip) != 0))
            sorted[m++] = params[i];
    qsort(sorted, m, sizeof(sorted[0]), by_name);
    out[0] = 0;
    for (size_t i = 0; i < m; i++) {
        char name[256], value[1024];
        if (tn_route_encode(sorted[i].name, false, name, sizeof(name)) < 0 ||
            tn_route_encode(sorted[i].value, false, value, sizeof(value)) < 0)
            return -1;
        int k = snprintf(out + o, len - o, "%s%s=%s", i ? "&" : "", name, value);
        if (k < 0 || (size_t)k >= len - o)
            return -1;
        o += (size_t)k;
    }
    return 0;
}

int tn_route_canonical(const char *url, const struct tn_route_param *params, size_t n_params,
                       char *out, size_t len)
{
    if (tn_route_encode(url, true, out, len) < 0)
        return -1;
    size_t o = strlen(out);
    char q[2048];
    if (canonical_query(params, n_params, NULL, q, sizeof(q)) < 0)
        return -1;
    if (q[0] && snprintf(out + o, len - o, "?%s", q) >= (int)(len - o))
        return -1;
    return 0;
}

/* ---- values ----------------------------------------------------------------- */

static int parse_uint(const char *name, const char *v, uint32_t lo, uint32_t hi, uint32_t *out,
                      char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || v[0] == '+' || x < lo || x > hi)
        return fail(err, errlen, 400, "%s=%s: expected a whole number from %u to %u", name, v, lo,
                    hi);
    *out = (uint32_t)x;
    return 0;
}

static int parse_double(const char *name, const char *v, double lo, double hi, double *out,
                        char *err, size_t errlen)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x) || x < lo || x > hi)
        return fail(err, errlen, 400, "%s=%s: expected a number from %g to %g", name, v, lo, hi);
    *out = x;
    return 0;
}

/* "10%" (of the duration) or "12.5" (seconds). */
static int parse_time(const char *name, const char *v, Thumbnail__V1__TimePoint *t, char *err,
                      size_t errlen)
{
    size_t n = strlen(v);
    char num[64];
    thumbnail__v1__time_point__init(t);
    if (n && v[n - 1] == '%') {
        if (n - 1 >= sizeof(num))
            return fail(err, errlen, 400, "%s=%s: too long", name, v);
        memcpy(num, v, n - 1);
        num[n - 1] = 0;
        t->point_case = THUMBNAIL__V1__TIME_POINT__POINT_PERCENT;
        if (parse_double(name, num, 0, 100, &t->percent, err, errlen))
            return fail(err, errlen, 400, "%s=%s: expected a percentage from 0%% to 100%%", name,
                        v);
        return 0;
    }
    t->point_case = THUMBNAIL__V1__TIME_POINT__POINT_SECONDS;
    if (parse_double(name, v, 0, 1e9, &t->seconds, err, errlen))
        return fail(err, errlen, 400,
                    "%s=%s: expected seconds (12.5) or a percentage of the duration (10%%)", name,
                    v);
    return 0;
}

static int parse_bool(const char *name, const char *v, protobuf_c_boolean *out, char *err,
                      size_t errlen)
{
    if (!strcmp(v, "1") || !strcmp(v, "true") || !*v)
        *out = 1;
    else if (!strcmp(v, "0") || !strcmp(v, "false"))
        *out = 0;
    else
        return fail(err, errlen, 400, "%s=%s: expected true or false", name, v);
    return 0;
}

/* ---- routes ------------------------------------------------------------------ */

struct route_def {
    const char *prefix;
    enum tn_route_kind kind;
    const char *exts; /* allowed extensions, space-separated; NULL = none */
    const char *params;
};

static const struct route_def routes[] = {
    {"/v1/thumbnail/", ROUTE_THUMBNAIL, "png jpg webp", "time width height fit mode quality"},
    {"/v1/storyboard/", ROUTE_STORYBOARD_VTT, "vtt jpg webp", "width columns count every format"},
    {"/v1/animated/", ROUTE_ANIMATED, "webp", "start end fps width height"},
    {"/v1/probe/", ROUTE_PROBE, NULL, ""},
    {"/v1/list/", ROUTE_LIST, NULL, "recursive glob page_size page_token"},
};

static bool in_words(const char *words, const char *w)
{
    size_t n = strlen(w);
    for (const char *p = words; (p = strstr(p, w)); p += n)
        if ((p == words || p[-1] == ' ') && (p[n] == ' ' || p[n] == 0))
            return true;
    return false;
}

static int32_t image_format(const char *ext)
{
    if (!strcmp(ext, "jpg"))
        return THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_JPEG;
    if (!strcmp(ext, "webp"))
        return THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_WEBP;
    return THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_PNG;
}

static const char *mime_of(const char *ext)
{
    if (!strcmp(ext, "jpg"))
        return "image/jpeg";
    if (!strcmp(ext, "webp"))
        return "image/webp";
    if (!strcmp(ext, "vtt"))
        return "text/vtt; charset=utf-8";
    return "image/png";
}

/* One parameter into r. */
static int take_param(struct tn_route *r, const char *name, const char *v, char *err, size_t errlen)
{
    Thumbnail__V1__Options *o = &r->opts;
    uint32_t u;
    int rc;
    bool sb = r->kind == ROUTE_STORYBOARD_VTT || r->kind == ROUTE_STORYBOARD_IMAGE;
    if (!strcmp(name, "time")) {
        if ((rc = parse_time(name, v, &r->time, err, errlen)))
            return rc;
        r->times[0] = &r->time;
        o->times = r->times;
        o->n_times = 1;
    } else if (!strcmp(name, "width")) {
        if ((rc = parse_uint(name, v, 1, sb ? 1024 : 16384, &u, err, errlen)))
            return rc;
        if (sb)
            o->tile_width = u;
        else
            o->max_width = u;
    } else if (!strcmp(name, "height")) {
        if ((rc = parse_uint(name, v, 1, 16384, &o->max_height, err, errlen)))
            return rc;
    } else if (!strcmp(name, "fit")) {
        if (!strcmp(v, "fit"))
            o->fit = THUMBNAIL__V1__FIT_MODE__FIT_MODE_FIT;
        else if (!strcmp(v, "fill"))
            o->fit = THUMBNAIL__V1__FIT_MODE__FIT_MODE_FILL;
        else if (!strcmp(v, "pad"))
            o->fit = THUMBNAIL__V1__FIT_MODE__FIT_MODE_PAD;
        else
            return fail(err, errlen, 400, "fit=%s: expected fit, fill or pad", v);
    } else if (!strcmp(name, "mode")) {
        if (!strcmp(v, "accurate"))
            o->mode = THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_ACCURATE;
        else if (!strcmp(v, "keyframe"))
            o->mode = THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_KEYFRAME;
        else if (!strcmp(v, "smart"))
            o->mode = THUMBNAIL__V1__SEEK_MODE__SEEK_MODE_SMART;
        else
            return fail(err, errlen, 400, "mode=%s: expected accurate, keyframe or smart", v);
    } else if (!strcmp(name, "quality")) {
        if ((rc = parse_uint(name, v, 1, 100, &o->quality, err, errlen)))
            return rc;
    } else if (!strcmp(name, "columns")) {
        if ((rc = parse_uint(name, v, 1, 100, &o->columns, err, errlen)))
            return rc;
    } else if (!strcmp(name, "count")) {
        if ((rc = parse_uint(name, v, 1, 1000, &o->count, err, errlen)))
            return rc;
    } else if (!strcmp(name, "every")) {
        if ((rc = parse_double(name, v, 0.001, 1e6, &o->every, err, errlen)))
            return rc;
    } else if (!strcmp(name, "format")) {
        if (strcmp(v, "jpg") != 0 && strcmp(v, "webp") != 0)
            return fail(err, errlen, 400, "format=%s: the sprite is jpg or webp", v);
        r->sprite_ext = !strcmp(v, "jpg") ? "jpg" : "webp";
    } else if (!strcmp(name, "start") || !strcmp(name, "end")) {
        Thumbnail__V1__TimePoint *t = name[0] == 's' ? &r->start : &r->end;
        if ((rc = parse_time(name, v, t, err, errlen)))
            return rc;
        if (name[0] == 's')
            r->anim.start = t;
        else
            r->anim.end = t;
    } else if (!strcmp(name, "fps")) {
        if ((rc = parse_double(name, v, 0.1, 30, &r->anim.fps, err, errlen)))
            return rc;
    } else if (!strcmp(name, "recursive")) {
        if ((rc = parse_bool(name, v, &r->list.recursive, err, errlen)))
            return rc;
    } else if (!strcmp(name, "glob")) {
        snprintf(r->glob, sizeof(r->glob), "%s", v);
        r->list.glob = r->glob;
    } else if (!strcmp(name, "page_size")) {
        if ((rc = parse_uint(name, v, 1, 10000, &r->list.page_size, err, errlen)))
            return rc;
    } else if (!strcmp(name, "page_token")) {
        snprintf(r->page_token, sizeof(r->page_token), "%s", v);
        r->list.page_token = r->page_token;
    }
    return 0;
}

int tn_route_parse(struct tn_route *r, const char *url, const struct tn_route_param *params,
                   size_t n_params, char *err, size_t errlen)
{
    const struct route_def *d = NULL;
    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]) && !d; i++)
        if (!strncmp(url, routes[i].prefix, strlen(routes[i].prefix)))
            d = &routes[i];
    if (!d)
        return fail(err, errlen, 404,
                    "no such route: /v1/thumbnail/, /v1/storyboard/, /v1/animated/, /v1/probe/ "
                    "and /v1/list/ are served");
    r->kind = d->kind;
    const char *rest = url + strlen(d->prefix);
    if (strlen(rest) >= sizeof(r->path))
        return fail(err, errlen, 414, "the path is longer than %zu bytes", sizeof(r->path) - 1);
    snprintf(r->path, sizeof(r->path), "%s", rest);
    if (d->exts) {
        char *dot = strrchr(r->path, '.');
        if (!dot || strchr(dot, '/') || !in_words(d->exts, dot + 1))
            return fail(err, errlen, 404, "%s{path}: the path must end in .%s", d->prefix, d->exts);
        snprintf(r->ext_buf, sizeof(r->ext_buf), "%s", dot + 1);
        r->ext = r->ext_buf;
        *dot = 0;
        if (!r->path[0])
            return fail(err, errlen, 404, "%s{path}.%s: no path", d->prefix, dot + 1);
        if (r->kind == ROUTE_STORYBOARD_VTT && strcmp(r->ext, "vtt") != 0)
            r->kind = ROUTE_STORYBOARD_IMAGE;
        r->mime = mime_of(r->ext);
    } else if (r->kind == ROUTE_PROBE && !r->path[0]) {
        return fail(err, errlen, 404, "/v1/probe/{path}: no path");
    }
    /* the list route's "dir/" and "" are the same folder */
    size_t n = strlen(r->path);
    if (r->kind == ROUTE_LIST && n && r->path[n - 1] == '/')
        r->path[n - 1] = 0;
    const char *slash = strrchr(r->path, '/');
    snprintf(r->file_name, sizeof(r->file_name), "%s", slash ? slash + 1 : r->path);

    thumbnail__v1__options__init(&r->opts);
    thumbnail__v1__animation__init(&r->anim);
    thumbnail__v1__list_request__init(&r->list);
    r->opts.local_path = r->path;
    r->opts.file_name = r->file_name;
    r->list.dir = r->path;
    if (n_params > ROUTE_MAX_PARAMS)
        return fail(err, errlen, 400, "too many parameters (at most %d)", ROUTE_MAX_PARAMS);
    for (size_t i = 0; i < n_params; i++) {
        const char *name = params[i].name, *v = params[i].value ? params[i].value : "";
        for (size_t j = 0; j < i; j++)
            if (!strcmp(params[j].name, name))
                return fail(err, errlen, 400, "parameter %s given twice", name);
        if (!strcmp(name, "sig")) {
            r->sig = v;
            continue;
        }
        bool vtt_only = !strcmp(name, "format") && r->kind != ROUTE_STORYBOARD_VTT;
        if (!in_words(d->params, name) || vtt_only)
            return fail(err, errlen, 400, "unknown parameter '%s' for %s (known: %s%ssig)", name,
                        d->prefix, vtt_only ? "width columns count every" : d->params,
                        *d->params ? " " : "");
        int rc = take_param(r, name, v, err, errlen);
        if (rc)
            return rc;
    }
    switch (r->kind) {
    case ROUTE_THUMBNAIL: r->opts.format = image_format(r->ext); break;
    case ROUTE_STORYBOARD_VTT:
        if (!r->sprite_ext)
            r->sprite_ext = "jpg";
        r->opts.storyboard = 1;
        r->opts.format = image_format(r->sprite_ext);
        break;
    case ROUTE_STORYBOARD_IMAGE:
        r->opts.storyboard = 1;
        r->opts.format = image_format(r->ext);
        break;
    case ROUTE_ANIMATED:
        r->opts.format = THUMBNAIL__V1__IMAGE_FORMAT__IMAGE_FORMAT_WEBP;
        r->opts.animation = &r->anim;
        break;
    default: break;
    }
    if (canonical_query(params, n_params, NULL, r->query, sizeof(r->query)) < 0 ||
        canonical_query(params, n_params, "format", r->sprite_query, sizeof(r->sprite_query)) < 0)
        return fail(err, errlen, 414, "the query is too long");
    return 0;
}
