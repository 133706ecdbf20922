/*
 * The HTTP gateway (see gateway.h).
 *
 * DESIGN. libmicrohttpd with epoll and one thread per core answers what needs
 * no worker inline: errors, 304s, cache hits (from the entry's file, see
 * serve_hit()). A request that needs the front suspends its connection and
 * makes one synchronous gRPC call (upstream.h) on a helper thread of its own,
 * which resumes the connection with the answer (defer()): a slow decode holds
 * that one connection, never the threads that serve the others. The
 * connection cap bounds the helper threads. The main thread only waits for
 * signals in sigsuspend().
 *
 * Per request, in order: method (GET, HEAD), /healthz, then for /v1/ and the
 * gallery's pages: the token (--auth-token-file: "Authorization:
 * Bearer", checked here for the requests answered here and forwarded to the
 * front for the rest); a gallery page is then one List call rendered by
 * gallery.c; for /v1/ the URL signature (--url-signing-key), the route and
 * its parameters (route.h), the file under --media-root (opened with the
 * front's jailed open, so the refusals and their messages are the gRPC
 * ones), its identity for the ETag and Last-Modified, a 304 when the client
 * already has it, and only then the call to the front.
 *
 * The ETag is a SHA-256 over the file's identity (device, inode, size,
 * mtime in ns: a replaced or touched file gets a new one), the route and the
 * canonical query: the same URL on the same file is the same bytes, because
 * the engine is deterministic for given options. A signed URL is served
 * "immutable": its parameters cannot be changed without the key.
 */
#include "gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cache.h"
#include "gallery.h"
#include "ipc.h"
#include "job_opts.h"
#include "log.h"
#include "media_root.h"
#include "metrics.h"
#include "options_msg.h"
#include "route.h"
#include "status.h"
#include "tls.h"
#include "upstream.h"

#define CONNECTION_LIMIT 512         /* and at most as many helper threads (defer()) */
#define PER_IP_LIMIT 64              /* a browser opens ~6; a proxy or a benchmark more */
#define CONNECTION_MEMORY (32 << 10) /* request line + headers must fit: else 414/431 */
#define THREAD_STACK (512 << 10)
#define MAX_SIGNING_KEY 4096
#define MAX_AGE_S 3600            /* unsigned URLs: revalidate (ETag) after an hour */
#define MAX_AGE_SIGNED_S 31536000 /* signed: a year, immutable */

static struct {
    const struct tn_config *cfg;
    int root_fd;
    enum tn_media_resolve how;
    unsigned char key[MAX_SIGNING_KEY]; /* --url-signing-key; key_len 0 = unsigned URLs */
    size_t key_len;
    double timeout_s;       /* of a call to the front */
    struct tn_cache *cache; /* --cache-dir, read-only here; NULL = none */
    int inflight;           /* requests on a helper thread (atomic) */
    uint64_t held_bytes;    /* answers not yet freed by libmicrohttpd (atomic; held_response()) */
} gw;

/* ---- responses -------------------------------------------------------------- */

struct exch;

/* ---- the request's context ---------------------------------------------------- */

struct req {
    struct tn_route_param params[ROUTE_MAX_PARAMS + 1];
    size_t n_params;
    bool too_many;
    char peer[96];
    const char *authorization;
    bool signed_url;
    /* the file's identity, when the route names one */
    bool have_file;
    struct stat st;
    char etag[40];
    char last_modified[40];
};

/*
 * One request, from libmicrohttpd's first call of the handler to its
 * completion callback (which frees it). A request that needs the front is
 * answered by a helper thread while the connection is suspended ("deferred"):
 * its response waits here until the handler runs again after the resume.
 */
struct exch {
    struct MHD_Connection *conn;
    bool deferred;             /* a helper thread answers; queue() stores into status/resp */
    unsigned status;           /* deferred: the answer */
    struct MHD_Response *resp; /* deferred: owned until queued; NULL = close the connection */
    bool health;               /* deferred: /healthz */
    bool gallery;              /* deferred: a gallery page; r.path the folder */
    struct req q;
    struct tn_route r;
};

/* Answer with r (consumed): queued now, or kept for the handler's next call. */
static enum MHD_Result queue(struct exch *x, unsigned status, struct MHD_Response *r)
{
    if (x->deferred) {
        x->status = status;
        x->resp = r;
        return r ? MHD_YES : MHD_NO;
    }
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(x->conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_text(struct exch *x, unsigned status, const char *msg)
{
    char *body = NULL;
    if (asprintf(&body, "%s\n", msg) < 0)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    return queue(x, status, r);
}

/*
 * A gRPC status as an HTTP one. INVALID_ARGUMENT about the file rather than
 * the parameters ("not a video file", "no video stream", a refused format,
 * an empty file) is 415: the request was fine, the file is not a video.
 */
static unsigned http_status(int code, const char *msg)
{
    switch (code) {
    case TN_OK: return MHD_HTTP_OK;
    case TN_INVALID_ARGUMENT:
    case TN_OUT_OF_RANGE:
        if (strstr(msg, "not a video") || strstr(msg, "no video stream") ||
            strstr(msg, "is not accepted: upload a video"))
            return MHD_HTTP_UNSUPPORTED_MEDIA_TYPE;
        return MHD_HTTP_BAD_REQUEST;
    case TN_NOT_FOUND: return MHD_HTTP_NOT_FOUND;
    case TN_PERMISSION_DENIED: return MHD_HTTP_FORBIDDEN;
    case TN_UNAUTHENTICATED: return MHD_HTTP_UNAUTHORIZED;
    case TN_RESOURCE_EXHAUSTED: return MHD_HTTP_TOO_MANY_REQUESTS;
    case TN_UNAVAILABLE:
    case TN_FAILED_PRECONDITION:
    case TN_CANCELLED: return MHD_HTTP_SERVICE_UNAVAILABLE;
    case TN_DEADLINE_EXCEEDED: return MHD_HTTP_GATEWAY_TIMEOUT;
    case TN_UNIMPLEMENTED: return MHD_HTTP_NOT_IMPLEMENTED;
    default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

static enum MHD_Result send_status(struct exch *x, int code, const char *msg)
{
    unsigned s = http_status(code, msg);
    enum MHD_Result ret = send_text(x, s, msg);
    return ret;
}

static enum MHD_Result collect_param(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    struct req *q = cls;
    (void)kind;
    if (q->n_params == ROUTE_MAX_PARAMS + 1) {
        q->too_many = true;
        return MHD_NO;
    }
    q->params[q->n_params++] = (struct tn_route_param){.name = key, .value = value ? value : ""};
    return MHD_YES;
}

/* gRPC's spelling of the peer ("ipv4:1.2.3.4:5678"): the front's per-peer cap
 * and access log then name the HTTP client. */
static void format_peer(struct MHD_Connection *conn, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char a[INET6_ADDRSTRLEN] = "?";
    snprintf(out, len, "?");
    if (!ci || !ci->client_addr)
        return;
    if (ci->client_addr->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)ci->client_addr;
        inet_ntop(AF_INET, &s->sin_addr, a, sizeof(a));
        snprintf(out, len, "ipv4:%s:%u", a, ntohs(s->sin_port));
    } else if (ci->client_addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)ci->client_addr;
        inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof(a));
        snprintf(out, len, "ipv6:[%s]:%u", a, ntohs(s->sin6_port));
    }
}

/* ---- signing, ETag, dates ---------------------------------------------------------- */

static void hex(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* HMAC-SHA256 of s with the signing key, in lowercase hex (65 bytes with the NUL). */
static void sign(const char *s, char out[65])
{
    unsigned char mac[32];
    unsigned int n = sizeof(mac);
    HMAC(EVP_sha256(), gw.key, (int)gw.key_len, (const unsigned char *)s, strlen(s), mac, &n);
    hex(mac, 32, out);
}

/* NULL if the URL's sig is right, else why not. */
static const char *signature_refusal(const char *url, const struct req *q, const char *sig)
{
    char canon[ROUTE_CANON_MAX], want[65];
    if (!sig)
        return "this server needs signed URLs: add sig=HMAC-SHA256(key, path?sorted-query) "
               "(see the README, Signed URLs)";
    if (tn_route_canonical(url, q->params, q->n_params, canon, sizeof(canon)) < 0)
        return "the URL is too long to sign";
    sign(canon, want);
    if (strlen(sig) != 64 || CRYPTO_memcmp(sig, want, 64) != 0)
        return "the URL's signature (sig) is not valid for this path and query";
    return NULL;
}

static void make_etag(const struct tn_route *r, const struct stat *st, char out[40])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    uint64_t id[5] = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                      (uint64_t)st->st_mtim.tv_sec, (uint64_t)st->st_mtim.tv_nsec};
    int kind = (int)r->kind;
    EVP_DigestInit_ex(x, EVP_sha256(), NULL);
    EVP_DigestUpdate(x, "tn-http-1", 10);
    EVP_DigestUpdate(x, id, sizeof(id));
    EVP_DigestUpdate(x, &kind, sizeof(kind));
    EVP_DigestUpdate(x, r->ext ? r->ext : "", r->ext ? strlen(r->ext) + 1 : 1);
    EVP_DigestUpdate(x, r->path, strlen(r->path) + 1);
    EVP_DigestUpdate(x, r->query, strlen(r->query));
    EVP_DigestFinal_ex(x, md, &n);
    EVP_MD_CTX_free(x);
    out[0] = '"';
    hex(md, 16, out + 1);
    out[33] = '"';
    out[34] = 0;
}

static void http_date(time_t t, char *out, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, len, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Does the client already hold this version (If-None-Match, else If-Modified-Since)? */
static bool not_modified(struct MHD_Connection *conn, const struct req *q)
{
    const char *inm =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (inm)
        return strstr(inm, q->etag) != NULL || strcmp(inm, "*") == 0;
    const char *ims =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_MODIFIED_SINCE);
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (!ims || !strptime(ims, "%a, %d %b %Y %H:%M:%S GMT", &tm))
        return false;
    return q->st.st_mtime <= timegm(&tm);
}

/* The caching headers of a success or a 304. */
static void add_cache_headers(struct MHD_Response *r, const struct req *q)
{
    char cc[96];
    if (q->signed_url)
        snprintf(cc, sizeof(cc), "public, max-age=%d, immutable", MAX_AGE_SIGNED_S);
    else
        snprintf(cc, sizeof(cc), "public, max-age=%d", MAX_AGE_S);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, cc);
    if (q->have_file) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, q->etag);
        MHD_add_response_header(r, MHD_HTTP_HEADER_LAST_MODIFIED, q->last_modified);
    }
}

/* ---- the routes ---------------------------------------------------------------------- */

/* The VTT with its sprite URLs ("<stem>.sprite.<ext>#xywh=...") pointing at
 * the sprite route, with the same query (and its own signature). Malloc'd. */
static char *rewrite_vtt(const struct tn_route *r, const unsigned char *vtt, size_t len,
                         size_t *out_len)
{
    char path[3 * PATH_MAX], canon[3 * PATH_MAX + 2200], url[sizeof(canon) + 80];
    if (tn_route_encode(r->path, true, path, sizeof(path)) < 0)
        return NULL;
    snprintf(canon, sizeof(canon), "/v1/storyboard/%s.%s%s%s", path, r->sprite_ext,
             r->sprite_query[0] ? "?" : "", r->sprite_query);
    if (gw.key_len) {
        char sig[65];
        sign(canon, sig);
        snprintf(url, sizeof(url), "%s%ssig=%s", canon, r->sprite_query[0] ? "&" : "?", sig);
    } else {
        snprintf(url, sizeof(url), "%s", canon);
    }
    size_t ulen = strlen(url), cap = len * 2 + 4096, o = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    const char *p = (const char *)vtt, *end = p + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        const char *hash = memmem(p, n, "#xywh=", 6);
        size_t need = hash ? ulen + (size_t)(p + n - hash) : n;
        if (o + need + 1 > cap) {
            cap = (o + need + 1) * 2;
            char *bigger = realloc(out, cap);
            if (!bigger) {
                free(out);
                return NULL;
            }
            out = bigger;
        }
        if (hash) {
            memcpy(out + o, url, ulen);
            o += ulen;
            memcpy(out + o, hash, (size_t)(p + n - hash));
            o += (size_t)(p + n - hash);
        } else {
            memcpy(out + o, p, n);
            o += n;
        }
        p += n;
    }
    *out_len = o;
    return out;
}

/* ---- cache hits ------------------------------------------------------------------------ */

/* The front's job options for these Options (the cache key is computed from
 * them). Returns false when the front would refuse them (then it is the
 * front's to say why). */
static bool job_opts_of(const Thumbnail__V1__Options *o, struct tn_job_opts *j)
{
    char err[256];
    return tn_options_to_job(o, false, j, err, sizeof(err)) == TN_OK;
}

/* The cache, opened on first use: the front creates its directory, maybe
 * after this process started. At most one attempt a second. */
static struct tn_cache *cache(void)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static int64_t last_try_ms;
    struct tn_cache *c = __atomic_load_n(&gw.cache, __ATOMIC_ACQUIRE);
    if (c || !gw.cfg->cache_dir)
        return c;
    pthread_mutex_lock(&mu);
    int64_t now = tn_mono_ms();
    if (!gw.cache && now - last_try_ms >= 1000) {
        char err[512];
        last_try_ms = now;
        if (tn_cache_open(&c, gw.cfg->cache_dir, 0, TN_CACHE_READER, err, sizeof(err)) == 0)
            __atomic_store_n(&gw.cache, c, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&mu);
    return __atomic_load_n(&gw.cache, __ATOMIC_ACQUIRE);
}

/*
 * Hot hits. A verified hit's response (its headers and the result's bytes) is
 * kept for MEMO_TTL_MS under the request's ETag, which
 * covers the file's identity, the route and the canonical query (and the
 * signed flag, for Cache-Control): the next request with that ETag queues
 * the same libmicrohttpd response (they are reference-counted and reusable)
 * without opening, reading and checking the entry again; after the TTL the
 * entry is looked up again, which checks it again and touches it for the
 * front's LRU. Direct-mapped: a collision replaces. One table per
 * libmicrohttpd thread (a connection's requests always run on the same one):
 * a hit takes no lock another thread holds, and a response is referenced by
 * one thread only. Shared, they cost a contended mutex per hit, which under
 * a full CPU put a futex sleep into the p99.
 *
 * A result of up to MEMO_ITEM_MAX bytes is answered from a copy in memory
 * (the lookup has just read and checked it): libmicrohttpd then sends the
 * headers and the body in one write, where a file costs a send() and a
 * sendfile(), two segments and two wake-ups of the client (bench/http_cache.sh,
 * 7 KB JPEG, wrk -c16: from 48 % to 65 % of nginx's rate on the same file).
 * Copies are held up to MEMO_BYTES_MAX in all (every thread's); past that, and for bigger results,
 * the answer is sent from the entry's fd at the result's offset (the entry's file is never changed
 * in place, cache.h, so the bytes behind the fd are the ones checked).
 */
#define MEMO_SLOTS 1024
#define MEMO_TTL_MS 10000
#define MEMO_ITEM_MAX (256u << 10)
#define MEMO_BYTES_MAX (32u << 20)

struct memo {
    char etag[40];
    bool signed_url;
    int64_t until_ms;
    struct MHD_Response *resp; /* one reference is the memo's */
    size_t bytes;              /* of resp's body held in memory (memo_bytes) */
};
static __thread struct memo *memo; /* this thread's MEMO_SLOTS; kept for the thread's life */
static size_t memo_bytes;          /* every thread's copies (atomic) */

/* This thread's slot for q, or NULL (out of memory: no memo). */
static struct memo *memo_slot(const struct req *q)
{
    if (!memo && !(memo = calloc(MEMO_SLOTS, sizeof(*memo))))
        return NULL;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = q->etag; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return &memo[(h ^ q->signed_url) % MEMO_SLOTS];
}

static void count_hit(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    tn_metrics_call_started_p(TN_M_GENERATE, TN_P_HTTP);
    tn_metrics_call_handled_p(TN_M_GENERATE, TN_P_HTTP, TN_OK,
                              (double)(t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) / 1e9);
    tn_metrics_cache_add(1, 0, 0, 0, 0, 0);
}

/* A response for the cached answer to r, or NULL on a miss. *in_memory: the
 * bytes of its body held in memory (0: sent from the entry's file). */
static struct MHD_Response *hit_response(const struct tn_route *r, const struct req *q,
                                         size_t *in_memory)
{
    struct tn_job_opts j;
    if (!job_opts_of(&r->opts, &j))
        return NULL;
    char name[sizeof(r->file_name)];
    snprintf(name, sizeof(name), "%s", r->file_name);
    for (char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"')
            *p = '?'; /* as the front names the job (upload.c) */
    struct tn_cache_ident id;
    struct tn_cache_key key;
    struct tn_cache_entry *e = NULL;
    tn_cache_ident_file(&id, &q->st);
    tn_cache_key(&j, name, &id, &key);
    if (tn_cache_lookup(gw.cache, &key, &e) < 0)
        return NULL;
    uint32_t want = r->kind == ROUTE_STORYBOARD_VTT     ? 2u
                    : r->kind == ROUTE_STORYBOARD_IMAGE ? 1u
                    : r->kind == ROUTE_ANIMATED         ? 3u
                                                        : 0u;
    const struct tn_cache_item *it = NULL;
    for (uint32_t i = 0; i < e->n && !it; i++)
        if (e->items[i].meta.kind == want)
            it = &e->items[i];
    struct MHD_Response *resp = NULL;
    if (it && r->kind == ROUTE_STORYBOARD_VTT) {
        size_t n = 0;
        char *vtt = rewrite_vtt(r, e->data + it->offset, (size_t)it->length, &n);
        if (vtt && !(resp = MHD_create_response_from_buffer(n, vtt, MHD_RESPMEM_MUST_FREE)))
            free(vtt);
        *in_memory = n;
    } else if (it && it->length <= MEMO_ITEM_MAX &&
               __atomic_load_n(&memo_bytes, __ATOMIC_RELAXED) + it->length <= MEMO_BYTES_MAX) {
        resp = MHD_create_response_from_buffer((size_t)it->length, (void *)(e->data + it->offset),
                                               MHD_RESPMEM_MUST_COPY);
        *in_memory = (size_t)it->length;
    } else if (it) {
        int fd = fcntl(e->fd, F_DUPFD_CLOEXEC, 0); /* the response owns it */
        if (fd >= 0 &&
            !(resp = MHD_create_response_from_fd_at_offset64(it->length, fd, it->offset)))
            close(fd);
    }
    char t[64];
    if (it)
        snprintf(t, sizeof(t), "%.3f", it->meta.actual_time);
    tn_cache_entry_free(&e);
    if (!resp)
        return NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->mime);
    add_cache_headers(resp, q);
    if (r->kind == ROUTE_THUMBNAIL)
        MHD_add_response_header(resp, "X-Thumbnail-Time", t);
    MHD_add_response_header(resp, "X-Cache", "HIT");
    return resp;
}

/*
 * Serve the request from the result cache when the front stored its answer:
 * the image straight from the entry's file (fd + offset, sent by
 * libmicrohttpd), no gRPC call, no worker. Returns MHD_YES/MHD_NO when it
 * answered, or -1 on a miss (then the front is asked, and stores it).
 */
static int serve_hit(struct exch *x, const struct tn_route *r, const struct req *q)
{
    struct timespec t0;
    if (!cache() || !q->have_file ||
        (r->kind != ROUTE_THUMBNAIL && r->kind != ROUTE_STORYBOARD_VTT &&
         r->kind != ROUTE_STORYBOARD_IMAGE && r->kind != ROUTE_ANIMATED))
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int64_t now = tn_mono_ms();
    struct memo *m = memo_slot(q);
    if (m && m->resp && now < m->until_ms && m->signed_url == q->signed_url &&
        strcmp(m->etag, q->etag) == 0) {
        enum MHD_Result ret = MHD_queue_response(x->conn, MHD_HTTP_OK, m->resp);
        count_hit(&t0);
        return ret;
    }

    size_t bytes = 0;
    struct MHD_Response *resp = hit_response(r, q, &bytes);
    if (!resp)
        return -1;
    enum MHD_Result ret = MHD_queue_response(x->conn, MHD_HTTP_OK, resp);
    if (m) {
        if (m->resp) /* connections still sending it hold their own references */
            MHD_destroy_response(m->resp);
        __atomic_add_fetch(&memo_bytes, bytes - m->bytes, __ATOMIC_RELAXED);
        *m = (struct memo){.signed_url = q->signed_url,
                           .until_ms = now + MEMO_TTL_MS,
                           .resp = resp,
                           .bytes = bytes};
        snprintf(m->etag, sizeof(m->etag), "%s", q->etag);
    } else {
        MHD_destroy_response(resp);
    }
    count_hit(&t0);
    return ret;
}

/*
 * Answers from the front wait in memory until their client has read them: a
 * client that reads slowly, or many at once, must not grow the gateway
 * without bound. --max-result-bytes (the front's cap on the results it holds)
 * caps their sum here too, as in the front: while the gateway holds that
 * much, a new answer is refused with 429. The bytes count until libmicrohttpd
 * frees the response.
 */
struct held {
    void *buf;
    size_t len;
};

static void free_held(void *cls)
{
    struct held *h = cls;
    __atomic_sub_fetch(&gw.held_bytes, h->len, __ATOMIC_RELAXED);
    free(h->buf);
    free(h);
}

/* A response that owns body (freed in any case); NULL if the gateway already
 * held the cap or is out of memory. */
static struct MHD_Response *held_response(void *body, size_t len)
{
    uint64_t cap = gw.cfg->max_result_bytes;
    struct held *h = malloc(sizeof(*h));
    uint64_t now = __atomic_add_fetch(&gw.held_bytes, len, __ATOMIC_RELAXED);
    if (!h || (cap && now - len >= cap)) {
        __atomic_sub_fetch(&gw.held_bytes, len, __ATOMIC_RELAXED);
        free(h);
        free(body);
        return NULL;
    }
    *h = (struct held){.buf = body, .len = len};
    struct MHD_Response *r =
        MHD_create_response_from_buffer_with_free_callback_cls(len, body, free_held, h);
    if (!r)
        free_held(h);
    return r;
}

static enum MHD_Result serve_generate(struct exch *x, const struct tn_route *r, const struct req *q)
{
    struct tn_upstream_ctx ctx = {
        .peer = q->peer, .authorization = q->authorization, .timeout_s = gw.timeout_s};
    struct tn_upstream_results res;
    struct tn_upstream_status st;
    tn_upstream_generate(&ctx, &r->opts, &res, &st);
    if (st.code != 0) {
        tn_upstream_results_free(&res);
        return send_status(x, st.code, st.message);
    }
    /* which result is the answer */
    int want_kind =
        r->kind == ROUTE_STORYBOARD_VTT     ? THUMBNAIL__V1__THUMBNAIL_KIND__THUMBNAIL_KIND_VTT
        : r->kind == ROUTE_STORYBOARD_IMAGE ? THUMBNAIL__V1__THUMBNAIL_KIND__THUMBNAIL_KIND_SPRITE
        : r->kind == ROUTE_ANIMATED ? THUMBNAIL__V1__THUMBNAIL_KIND__THUMBNAIL_KIND_ANIMATION
                                    : THUMBNAIL__V1__THUMBNAIL_KIND__THUMBNAIL_KIND_IMAGE;
    struct tn_upstream_item *it = NULL;
    for (size_t i = 0; i < res.n && !it; i++)
        if ((int)res.items[i].hdr->kind == want_kind)
            it = &res.items[i];
    if (!it) {
        tn_upstream_results_free(&res);
        if (r->kind == ROUTE_ANIMATED)
            return send_text(x, MHD_HTTP_NOT_IMPLEMENTED,
                             "this server's engine does not make animated previews yet");
        return send_text(x, MHD_HTTP_BAD_GATEWAY, "the front's answer had no such result");
    }
    unsigned char *body = it->data;
    size_t len = it->len;
    it->data = NULL;
    if (r->kind == ROUTE_STORYBOARD_VTT) {
        size_t n = 0;
        char *vtt = rewrite_vtt(r, body, len, &n);
        free(body);
        if (!vtt) {
            tn_upstream_results_free(&res);
            return send_text(x, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        }
        body = (unsigned char *)vtt;
        len = n;
    }
    char t[64];
    snprintf(t, sizeof(t), "%.3f", it->hdr->actual_time);
    char reason[256];
    snprintf(reason, sizeof(reason), "%s", it->hdr->reason ? it->hdr->reason : "");
    tn_upstream_results_free(&res);
    struct MHD_Response *resp = held_response(body, len);
    if (!resp)
        return send_text(x, MHD_HTTP_TOO_MANY_REQUESTS,
                         "the HTTP gateway holds too many answers that their clients have not "
                         "read yet (--max-result-bytes); retry later");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->mime);
    add_cache_headers(resp, q);
    if (r->kind == ROUTE_THUMBNAIL)
        MHD_add_response_header(resp, "X-Thumbnail-Time", t);
    if (reason[0] && !strpbrk(reason, "\r\n"))
        MHD_add_response_header(resp, "X-Thumbnail-Reason", reason);
    return queue(x, MHD_HTTP_OK, resp);
}

static enum MHD_Result send_json(struct exch *x, char *json, const struct req *q, bool cacheable)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(json);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (cacheable)
        add_cache_headers(resp, q);
    else
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return queue(x, MHD_HTTP_OK, resp);
}

static enum MHD_Result serve_probe(struct exch *x, const struct tn_route *r, const struct req *q)
{
    struct tn_upstream_ctx ctx = {
        .peer = q->peer, .authorization = q->authorization, .timeout_s = gw.timeout_s};
    struct tn_upstream_status st;
    char *json = NULL;
    tn_upstream_probe(&ctx, r->path, &json, &st);
    if (st.code != 0) {
        free(json);
        return send_status(x, st.code, st.message);
    }
    return send_json(x, json, q, true);
}

static enum MHD_Result serve_list(struct exch *x, const struct tn_route *r, const struct req *q)
{
    struct tn_upstream_ctx ctx = {
        .peer = q->peer, .authorization = q->authorization, .timeout_s = gw.timeout_s};
    struct tn_upstream_status st;
    Thumbnail__V1__ListResponse *resp = NULL;
    tn_upstream_list(&ctx, &r->list, &resp, &st);
    if (st.code != 0) {
        if (resp)
            thumbnail__v1__list_response__free_unpacked(resp, NULL);
        if (st.code == TN_UNIMPLEMENTED)
            return send_text(x, MHD_HTTP_NOT_IMPLEMENTED,
                             "listing is not available: this server's front has no List method "
                             "yet");
        return send_status(x, st.code, st.message);
    }
    json_t *entries = json_array();
    for (size_t i = 0; i < resp->n_entries; i++) {
        const Thumbnail__V1__ListEntry *e = resp->entries[i];
        json_array_append_new(entries,
                              json_pack("{s:s, s:I, s:I, s:b}", "path", e->path ? e->path : "",
                                        "size", (json_int_t)e->size, "mtime_ns",
                                        (json_int_t)e->mtime_ns, "is_dir", e->is_dir));
    }
    json_t *o = json_pack("{s:s, s:o, s:s}", "dir", r->path, "entries", entries, "next_page_token",
                          resp->next_page_token ? resp->next_page_token : "");
    thumbnail__v1__list_response__free_unpacked(resp, NULL);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return send_text(x, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    return send_json(x, text, q, false);
}

static enum MHD_Result serve_health(struct exch *x, const struct req *q)
{
    struct tn_upstream_ctx ctx = {.peer = q->peer, .timeout_s = 2};
    struct tn_upstream_status st;
    if (tn_upstream_health(&ctx, &st) != 0)
        return send_text(x, MHD_HTTP_SERVICE_UNAVAILABLE, st.message);
    return send_text(x, MHD_HTTP_OK, "SERVING");
}

static bool is_gallery(const char *url)
{
    return strcmp(url, "/") == 0 || strncmp(url, TN_GALLERY_BROWSE, strlen(TN_GALLERY_BROWSE)) == 0;
}

/* GET / and GET /browse/{dir}[?page=TOKEN] (on a helper thread): one List page
 * of the folder x->r.path, rendered as the gallery's HTML (gallery.h). */
static enum MHD_Result serve_gallery(struct exch *x)
{
    Thumbnail__V1__ListRequest lr = THUMBNAIL__V1__LIST_REQUEST__INIT;
    lr.dir = x->r.path;
    lr.page_token = x->r.page_token;
    struct tn_upstream_ctx ctx = {
        .peer = x->q.peer, .authorization = x->q.authorization, .timeout_s = gw.timeout_s};
    struct tn_upstream_status st;
    Thumbnail__V1__ListResponse *resp = NULL;
    tn_upstream_list(&ctx, &lr, &resp, &st);
    if (st.code != 0) {
        if (resp)
            thumbnail__v1__list_response__free_unpacked(resp, NULL);
        if (st.code == TN_UNIMPLEMENTED)
            return send_text(x, MHD_HTTP_NOT_IMPLEMENTED,
                             "the gallery needs listing: this server's front has no List method "
                             "yet");
        return send_status(x, st.code, st.message);
    }
    char *html = NULL;
    size_t len = 0;
    int rc = tn_gallery_render(x->r.path, (const Thumbnail__V1__ListEntry *const *)resp->entries,
                               resp->n_entries, resp->next_page_token, &html, &len);
    thumbnail__v1__list_response__free_unpacked(resp, NULL);
    if (rc != 0)
        return send_text(x, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    struct MHD_Response *r = MHD_create_response_from_buffer(len, html, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(html);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, TN_GALLERY_CONTENT_TYPE);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return queue(x, MHD_HTTP_OK, r);
}

/* The file the route names, opened under --media-root as the front would:
 * its identity for the ETag. Returns 0, or a status code with msg. */
static int identify(const struct tn_route *r, struct req *q, char *msg, size_t len)
{
    uint64_t size = 0;
    int code = 0;
    enum tn_media_resolve how = __atomic_load_n(&gw.how, __ATOMIC_RELAXED);
    int fd = tn_media_root_open(gw.root_fd, r->path, &how, &size, &code, msg, len);
    __atomic_store_n(&gw.how, how, __ATOMIC_RELAXED);
    if (fd < 0)
        return code ? code : TN_INTERNAL;
    int rc = fstat(fd, &q->st);
    close(fd);
    if (rc < 0) {
        snprintf(msg, len, "cannot stat the file: %s", strerror(errno));
        return TN_INTERNAL;
    }
    q->have_file = true;
    make_etag(r, &q->st, q->etag);
    http_date(q->st.st_mtime, q->last_modified, sizeof(q->last_modified));
    return 0;
}

/* ---- requests that need the front: a helper thread each -------------------------------- */

/* The helper: the call, its answer into x, then the connection resumes and
 * the handler queues the answer (on_request). */
static void *answer_deferred(void *arg)
{
    struct exch *x = arg;
    if (x->health)
        serve_health(x, &x->q);
    else if (x->gallery)
        serve_gallery(x);
    else if (x->r.kind == ROUTE_LIST)
        serve_list(x, &x->r, &x->q);
    else if (x->r.kind == ROUTE_PROBE)
        serve_probe(x, &x->r, &x->q);
    else
        serve_generate(x, &x->r, &x->q);
    MHD_resume_connection(x->conn);
    __atomic_sub_fetch(&gw.inflight, 1, __ATOMIC_RELEASE);
    return NULL;
}

/*
 * Suspend the connection and answer on a helper thread: a gRPC call blocks
 * for as long as the decode takes, and must not hold one of the few threads
 * that serve every connection (hits, 304s, errors are answered inline).
 */
static enum MHD_Result defer(struct exch *x)
{
    pthread_attr_t a;
    pthread_t t;
    x->deferred = true;
    __atomic_add_fetch(&gw.inflight, 1, __ATOMIC_ACQUIRE);
    MHD_suspend_connection(x->conn);
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, THREAD_STACK);
    int e = pthread_create(&t, &a, answer_deferred, x);
    pthread_attr_destroy(&a);
    if (e != 0) {
        tn_log_warn("cannot start a thread for a request: %s", strerror(e));
        send_text(x, MHD_HTTP_SERVICE_UNAVAILABLE, "the HTTP gateway is out of threads; retry");
        MHD_resume_connection(x->conn);
        __atomic_sub_fetch(&gw.inflight, 1, __ATOMIC_RELEASE);
    }
    return MHD_YES;
}

/* A gallery page's folder (url decoded) and page token into x->r; then the
 * List call on a helper thread. */
static enum MHD_Result start_gallery(struct exch *x, const char *url)
{
    if (gw.key_len)
        return send_text(x, MHD_HTTP_FORBIDDEN,
                         "the gallery is off with --url-signing-key: its pages cannot sign the "
                         "URLs of their images");
    const char *d = strcmp(url, "/") == 0 ? "" : url + strlen(TN_GALLERY_BROWSE);
    while (*d == '/')
        d++;
    if (snprintf(x->r.path, sizeof(x->r.path), "%s", d) >= (int)sizeof(x->r.path))
        return send_text(x, MHD_HTTP_URI_TOO_LONG, "the folder's path is too long");
    for (size_t n = strlen(x->r.path); n && x->r.path[n - 1] == '/';)
        x->r.path[--n] = 0;
    const char *page = MHD_lookup_connection_value(x->conn, MHD_GET_ARGUMENT_KIND, "page");
    if (snprintf(x->r.page_token, sizeof(x->r.page_token), "%s", page ? page : "") >=
        (int)sizeof(x->r.page_token))
        return send_text(x, MHD_HTTP_BAD_REQUEST, "page: too long");
    x->gallery = true;
    return defer(x);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct exch *x = *req_cls;
    if (x && x->resp)
        MHD_destroy_response(x->resp);
    free(x);
    *req_cls = NULL;
}

/* The signature is libmicrohttpd's MHD_AccessHandlerCallback. */
static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
           const char *version, const char *upload_data,
           size_t *upload_data_size, /* NOLINT(readability-non-const-parameter) */
           void **req_cls)
{
    (void)cls;
    (void)version;
    (void)upload_data;
    struct exch *x = *req_cls;
    /* Answer on the second call, once the request is complete: a response
     * queued on the first makes libmicrohttpd close the connection (it cannot
     * know the body was read), and keep-alive is the point. */
    if (!x) {
        if (!(x = calloc(1, sizeof(*x))))
            return MHD_NO;
        x->conn = conn;
        *req_cls = x;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* a body on a GET or HEAD: ignored, as RFC 9110 allows */
        return MHD_YES;
    }
    if (x->deferred) { /* resumed: the helper's answer */
        struct MHD_Response *r = x->resp;
        x->resp = NULL;
        if (!r)
            return MHD_NO;
        enum MHD_Result ret = MHD_queue_response(conn, x->status, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return send_text(x, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD");

    struct req *q = &x->q;
    format_peer(conn, q->peer, sizeof(q->peer));
    if (strcmp(url, "/healthz") == 0) {
        x->health = true;
        return defer(x);
    }
    if (strncmp(url, "/v1/", 4) != 0 && !is_gallery(url))
        return send_text(x, MHD_HTTP_NOT_FOUND, "no such file");

    /* the token, as for gRPC (health is exempt, above) */
    const struct tn_tls *t = gw.cfg->tls;
    q->authorization =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (t && t->have_token) {
        if (!q->authorization)
            return send_text(x, MHD_HTTP_UNAUTHORIZED,
                             "this server requires a token: send the header 'Authorization: "
                             "Bearer <token>'");
        if (!tn_tls_token_ok(t, q->authorization, strlen(q->authorization)))
            return send_text(x, MHD_HTTP_UNAUTHORIZED,
                             "the authorization token was not accepted (expected 'Bearer "
                             "<token>' with the server's token)");
    }

    if (is_gallery(url)) /* after the token: the page lists the files */
        return start_gallery(x, url);

    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_param, q);
    if (q->too_many)
        return send_text(x, MHD_HTTP_BAD_REQUEST, "too many parameters");
    const char *sig = NULL;
    for (size_t i = 0; i < q->n_params; i++)
        if (!strcmp(q->params[i].name, "sig"))
            sig = q->params[i].value;
    if (gw.key_len) {
        const char *why = signature_refusal(url, q, sig);
        if (why)
            return send_text(x, MHD_HTTP_FORBIDDEN, why);
        q->signed_url = true;
    }

    struct tn_route *r = &x->r;
    char err[1024];
    int rc = tn_route_parse(r, url, q->params, q->n_params, err, sizeof(err));
    if (rc)
        return send_text(x, (unsigned)rc, err);
    if (r->kind == ROUTE_LIST)
        return defer(x);
    int code = identify(r, q, err, sizeof(err));
    if (code)
        return send_status(x, code, err);
    if (not_modified(conn, q)) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (!resp)
            return MHD_NO;
        add_cache_headers(resp, q);
        return queue(x, MHD_HTTP_NOT_MODIFIED, resp);
    }
    if (r->kind != ROUTE_PROBE) {
        int hit = serve_hit(x, r, q);
        if (hit >= 0)
            return (enum MHD_Result)hit;
    }
    return defer(x);
}

/* ---- the process ---------------------------------------------------------------------- */

__attribute__((format(printf, 2, 0))) static void on_mhd_error(void *cls, const char *fmt,
                                                               va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = 0;
    tn_log_warn("libmicrohttpd: %s", msg);
}

/* --url-signing-key: the file's bytes, without surrounding whitespace. */
static int load_key(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tn_log_error("--url-signing-key %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t n = read(fd, gw.key, sizeof(gw.key));
    close(fd);
    if (n < 0) {
        tn_log_error("--url-signing-key %s: %s", path, strerror(errno));
        return -1;
    }
    size_t a = 0, b = (size_t)n;
    while (a < b &&
           (gw.key[a] == ' ' || gw.key[a] == '\n' || gw.key[a] == '\t' || gw.key[a] == '\r'))
        a++;
    while (b > a && (gw.key[b - 1] == ' ' || gw.key[b - 1] == '\n' || gw.key[b - 1] == '\t' ||
                     gw.key[b - 1] == '\r'))
        b--;
    if (b - a < 16 || (size_t)n == sizeof(gw.key)) {
        tn_log_error("--url-signing-key %s: expected a key of 16 to %d bytes", path,
                     MAX_SIGNING_KEY - 1);
        return -1;
    }
    memmove(gw.key, gw.key + a, b - a);
    gw.key_len = b - a;
    return 0;
}

static volatile sig_atomic_t sig_stop, sig_quit, sig_usr1;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        sig_usr1 = 1;
    else if (sig == SIGQUIT)
        sig_quit = 1;
    else
        sig_stop = 1;
}

int tn_gateway_main(const struct tn_config *cfg, int listen_fd)
{
    struct sigaction sa;
    sigset_t block, old;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&block);
    static const int sigs[] = {SIGTERM, SIGINT, SIGQUIT, SIGUSR1};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(&block, sigs[i]);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    /* every thread (MHD's, gRPC's) inherits the mask: signals stay with main */
    pthread_sigmask(SIG_BLOCK, &block, &old);

    gw.cfg = cfg;
    gw.how = getenv("TN_NO_OPENAT2") ? TN_MEDIA_WALK : TN_MEDIA_OPENAT2;
    gw.timeout_s = cfg->job_timeout_s + 10;
    if (cfg->url_signing_key && load_key(cfg->url_signing_key) < 0)
        return 2;
    gw.root_fd = open(cfg->media_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (gw.root_fd < 0) {
        tn_log_error("cannot open --media-root %s: %s", cfg->media_root, strerror(errno));
        return 2;
    }
    /* epoll with a thread per core; calls to the front run on helper threads
     * while their connection is suspended (defer()) */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC /* MHD_quiesce_daemon() */ | MHD_USE_ERROR_LOG;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned pool = ncpu < 2 ? 2 : ncpu > 16 ? 16 : (unsigned)ncpu;
    bool tls = cfg->tls && cfg->tls->cert_pem;
    if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        tn_log_error("--tls-cert: this libmicrohttpd has no TLS support; HTTP would be "
                     "plaintext: not starting the HTTP gateway");
        return 2;
    }
    if (tls)
        flags |= MHD_USE_TLS;
    unsigned timeout = cfg->idle_timeout_s > 0 ? (unsigned)(cfg->idle_timeout_s + 0.5) : 60;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_error, NULL},
        {MHD_OPTION_LISTEN_SOCKET, listen_fd, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT, NULL},
        {MHD_OPTION_PER_IP_CONNECTION_LIMIT, PER_IP_LIMIT, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONNECTION_MEMORY, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, timeout, NULL},
        {MHD_OPTION_THREAD_STACK_SIZE, THREAD_STACK, NULL},
        {MHD_OPTION_THREAD_POOL_SIZE, pool, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, NULL},
        {MHD_OPTION_STRICT_FOR_CLIENT, 1, NULL},
        {tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, tls ? cfg->tls->key_pem : NULL},
        {tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, tls ? cfg->tls->cert_pem : NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    if (tn_upstream_init(cfg->gateway_socket, cfg->gateway_secret) < 0) {
        tn_log_error("cannot create the gRPC channel to the front");
        return 2;
    }
    struct MHD_Daemon *d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL,
                                            MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!d) {
        tn_log_error("cannot start the HTTP gateway (libmicrohttpd)");
        return 2;
    }
    tn_log_info("serving HTTP%s on %s%s%s", tls ? "S" : "", cfg->http_listen,
                gw.key_len ? "; URLs must be signed" : "",
                cfg->tls && cfg->tls->have_token ? "; requests need the token" : "");
    sigset_t wait_mask = old;
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigdelset(&wait_mask, sigs[i]);
    while (!sig_stop && !sig_quit) {
        sigsuspend(&wait_mask);
        if (sig_usr1) {
            sig_usr1 = 0;
            tn_log_reopen();
        }
    }
    if (sig_quit && !sig_stop) {
        /* Replaced (a reload): stop accepting (the next gateway takes the
         * master's socket), let the calls in flight answer, up to --grace
         * (at most 30 s). Idle keep-alive connections are closed: clients
         * open a new one. */
        MHD_quiesce_daemon(d);
        double grace = cfg->grace_s < 30 ? cfg->grace_s : 30;
        int64_t until = tn_mono_ms() + (int64_t)(grace * 1000);
        while (__atomic_load_n(&gw.inflight, __ATOMIC_ACQUIRE) > 0 && tn_mono_ms() < until &&
               !sig_stop) {
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    MHD_stop_daemon(d); /* closes our copy of the socket; the master keeps its own */
    tn_log_info("stopped");
    /* No grpc_shutdown(): a call still in flight would make it wait; exit frees all. */
    return 0;
}
