/*
 * The HTTP gateway's gRPC client of the front: one synchronous call at a time
 * per thread, over the private unix socket (master.c's DESIGN). Every call
 * carries the per-run secret ("tn-gateway"), the HTTP client's address
 * ("tn-gateway-peer") and, when the HTTP request had one, its Authorization
 * header (the front checks the token, as for any gRPC client).
 *
 * Messages are packed and unpacked with protobuf-c here; the caller gets
 * whole results in memory (a thumbnail is kilobytes; an animation or a
 * sprite a few megabytes, bounded by UPSTREAM_MAX_RESULT).
 */
#ifndef TN_HTTP_UPSTREAM_H
#define TN_HTTP_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "thumbnail.pb-c.h"

#define UPSTREAM_MAX_RESULT (64u << 20)
#define UPSTREAM_MSG_MAX 512

/* Connect lazily to unix:socket_path. Call once, after fork, in the gateway. */
int tn_upstream_init(const char *socket_path, const char *secret);

/* Who asks, for the metadata. */
struct tn_upstream_ctx {
    const char *peer;          /* "ipv4:1.2.3.4:5678" */
    const char *authorization; /* the HTTP Authorization header; NULL = none */
    double timeout_s;          /* the call's deadline from now */
};

/* One result of a Generate call. */
struct tn_upstream_item {
    Thumbnail__V1__Thumbnail *hdr; /* owned; protobuf-c unpacked */
    unsigned char *data;           /* hdr->size bytes, malloc'd */
    size_t len;
};

/* A call's outcome: code 0 = OK; else the gRPC status code and message. */
struct tn_upstream_status {
    int code;
    char message[UPSTREAM_MSG_MAX];
};

struct tn_upstream_results {
    struct tn_upstream_item items[4];
    size_t n;
};

/* Generate with these options (local_path set by the caller). */
void tn_upstream_generate(const struct tn_upstream_ctx *ctx, const Thumbnail__V1__Options *opts,
                          struct tn_upstream_results *out, struct tn_upstream_status *st);
void tn_upstream_results_free(struct tn_upstream_results *r);

/* Probe a file under --media-root: *json (malloc'd) is ProbeResponse.json. */
void tn_upstream_probe(const struct tn_upstream_ctx *ctx, const char *path, char **json,
                       struct tn_upstream_status *st);

/* List: *resp owned by the caller (thumbnail__v1__list_response__free_unpacked). */
void tn_upstream_list(const struct tn_upstream_ctx *ctx, const Thumbnail__V1__ListRequest *req,
                      Thumbnail__V1__ListResponse **resp, struct tn_upstream_status *st);

/* Health/Check of the front: 0 = SERVING, else a status code. */
int tn_upstream_health(const struct tn_upstream_ctx *ctx, struct tn_upstream_status *st);

#endif
