/*
 * The HTTP gateway's routes: a request's path and query parameters turned
 * into a gRPC request, and the canonical form of both that the ETag and URL
 * signatures are computed over. Pure: no I/O, no gRPC, no libmicrohttpd.
 *
 *   /v1/thumbnail/{path}.{png|jpg|webp}  time width height fit mode quality
 *   /v1/storyboard/{path}.vtt            width columns count every format
 *   /v1/storyboard/{path}.{jpg|webp}     width columns count every
 *   /v1/animated/{path}.webp             start end fps width height
 *   /v1/probe/{path}                     (none)
 *   /v1/list/{dir}                       recursive glob page_size page_token
 *
 * Every route also takes sig (the URL signature, see tn_route_canonical).
 * An unknown parameter, a repeated one or a bad value is refused (400)
 * rather than ignored: a typo must not silently give another picture.
 *
 * Canonical form (what is signed, and what the ETag covers): the path with
 * every byte outside RFC 3986's unreserved set and '/' percent-encoded
 * (uppercase hex), then, if there are parameters other than sig, '?' and
 * the parameters sorted by name (bytewise), each name=value with the value
 * encoded the same way (and '/' too), joined by '&'. For a path and values
 * of letters, digits and "-._~/" the canonical form is the URL as written,
 * with the parameters sorted and % written %25.
 */
#ifndef TN_HTTP_ROUTE_H
#define TN_HTTP_ROUTE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "thumbnail.pb-c.h"

#define ROUTE_MAX_PARAMS 16
#define ROUTE_CANON_MAX (3 * PATH_MAX + 2048)

enum tn_route_kind {
    ROUTE_THUMBNAIL,
    ROUTE_STORYBOARD_VTT,
    ROUTE_STORYBOARD_IMAGE,
    ROUTE_ANIMATED,
    ROUTE_PROBE,
    ROUTE_LIST,
};

struct tn_route_param {
    const char *name, *value; /* decoded; not owned */
};

struct tn_route {
    enum tn_route_kind kind;
    char path[PATH_MAX]; /* under --media-root, decoded; "" = the root (list only) */
    const char *ext;     /* "png", "jpg", "webp", "vtt"; NULL for probe and list */
    char ext_buf[8];
    const char *mime;             /* Content-Type of a success */
    const char *sprite_ext;       /* storyboard VTT: the sprite's route extension */
    char file_name[NAME_MAX + 1]; /* Options.file_name: the path's last component */
    /* the gRPC request, filled by tn_route_parse; pointers into this struct */
    Thumbnail__V1__Options opts;
    Thumbnail__V1__TimePoint time, start, end;
    Thumbnail__V1__TimePoint *times[1];
    Thumbnail__V1__Animation anim;
    Thumbnail__V1__ListRequest list;
    char glob[256], page_token[256];
    /* the canonical query (without sig), for the ETag and the VTT's sprite URLs */
    char query[2048];
    char sprite_query[2048]; /* storyboard VTT: the query without format, for the sprite URL */
    const char *sig;         /* the sig parameter's value; NULL = none */
};

/*
 * Parse url (decoded, starting with "/v1/") and its parameters into r.
 * Returns 0, or an HTTP status (404 for an unknown route, 400 for a bad
 * parameter) with the reason in err.
 */
int tn_route_parse(struct tn_route *r, const char *url, const struct tn_route_param *params,
                   size_t n_params, char *err, size_t errlen);

/* The canonical form of url and the parameters (sig left out) into out.
 * Returns 0, or -1 if it would not fit in len. */
int tn_route_canonical(const char *url, const struct tn_route_param *params, size_t n_params,
                       char *out, size_t len);

/* Percent-encode s (RFC 3986 unreserved kept, and '/' when keep_slash) into out. */
int tn_route_encode(const char *s, bool keep_slash, char *out, size_t len);

#endif
