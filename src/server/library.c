/*
 * Library mode, the listing: the files and folders under --media-root (the
 * List call, and the file set of a Batch call given a dir and a glob).
 *
 * DESIGN. A listing runs on the CQ thread, in one go: readdir + fstatat of
 * every entry, then one sort of the full paths (byte order, as the proto
 * promises; a per-folder sort would not give it: "a-b" < "a/x"). A 10 000-file
 * folder takes a few ms, so no helper thread; LIBRARY_MAX_ENTRIES bounds what
 * one call may cost the thread. Paging re-lists and skips what the token's
 * last path says was already given: no state on the server between pages, so
 * a page token survives a restart and costs nothing when never used.
 *
 * The jail is local mode's (media_root.h): the folder is resolved like a
 * local_path; entries are read relative to its fd. A symlink entry is listed
 * only when what it leads to stays under the root (openat2 RESOLVE_BENEATH),
 * as Generate would then read it, and is never descended into (no loops);
 * where the server resolves without openat2 (TN_MEDIA_WALK follows no
 * symlink), symlinks are left out. FIFOs, sockets and devices are left out:
 * Generate refuses them.
 *
 * The page token is base64url("L1" NUL dir NUL glob NUL recursive NUL
 * last-path): opaque to clients, and a token from another listing (other
 * dir, glob or recursive) is refused rather than silently misread.
 */
#include "library.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>

#include "front_int.h"
#include "log.h"
#include "media_root.h"
#include "metrics.h"
#include "pbbuf.h"
#include "status.h"
#include "thumbnail.pb-c.h"

#define LIST_DEFAULT_PAGE 1000
#define LIST_MAX_PAGE 10000
#define TOKEN_MAGIC "L1"

/* ------------------------------------------------------------------------ */
/* The listing                                                              */

struct scan {
    int root_fd;
    enum tn_media_resolve how;
    const char *glob;
    bool recursive, files_only;
    struct tn_lib_entry *v;
    size_t n, cap;
    bool too_many;
    int err; /* first -errno that stopped the scan */
};

static int add(struct scan *s, const char *path, const struct stat *st, bool is_dir)
{
    if (s->n == LIBRARY_MAX_ENTRIES) {
        s->too_many = true;
        return -1;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        struct tn_lib_entry *v = realloc(s->v, cap * sizeof(*v));
        if (!v) {
            s->err = -ENOMEM;
            return -1;
        }
        s->v = v;
        s->cap = cap;
    }
    char *p = strdup(path);
    if (!p) {
        s->err = -ENOMEM;
        return -1;
    }
    s->v[s->n++] = (struct tn_lib_entry){
        .path = p,
        .size = is_dir ? 0 : (uint64_t)st->st_size,
        .mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
        .is_dir = is_dir,
    };
    return 0;
}

/* List the folder fd (whose path under the root is prefix, "" = the root).
 * Takes ownership of fd. Returns 0 or -1 (s->err / s->too_many say why). */
static int scan_dir(struct scan *s, int fd, const char *prefix)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        s->err = -errno;
        close(fd);
        return -1;
    }
    int rc = 0;
    char path[PATH_MAX];
    struct dirent *e;
    while (rc == 0 && (errno = 0, e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            continue;
        int pl = snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "/" : "", name);
        if (pl < 0 || (size_t)pl >= sizeof(path))
            continue; /* too long to name in a request: Generate could not read it either */
        struct stat st;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone since readdir */
        bool descend = true;
        if (S_ISLNK(st.st_mode)) {
            if (tn_media_root_stat(s->root_fd, path, s->how, &st) < 0)
                continue; /* leads out, or dangling: Generate would refuse it */
            descend = false;
        }
        if (S_ISDIR(st.st_mode)) {
            if (!s->files_only && add(s, path, &st, true) < 0) {
                rc = -1;
                break;
            }
            if (s->recursive && descend) {
                int sub = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0)
                    rc = scan_dir(s, sub, path);
                /* an unreadable subfolder is left out, as `find` would warn and go on */
            }
        } else if (S_ISREG(st.st_mode)) {
            if ((!s->glob[0] || fnmatch(s->glob, name, 0) == 0) && add(s, path, &st, false) < 0)
                rc = -1;
        }
    }
    if (rc == 0 && errno != 0 && !e) {
        s->err = -errno;
        rc = -1;
    }
    closedir(d);
    return rc;
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const struct tn_lib_entry *)a)->path, ((const struct tn_lib_entry *)b)->path);
}

void tn_lib_entries_free(struct tn_lib_entry *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i].path);
    free(v);
}

/* "a//b/./c/" -> "a/b/c" (the prefix of the listed paths). */
static void normalise(const char *in, char *out, size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (const char *p = in; *p;) {
        size_t n = strcspn(p, "/");
        if (n && !(n == 1 && p[0] == '.')) {
            if (o + (o ? 1 : 0) + n + 1 > len)
                break; /* longer than PATH_MAX: the open below refuses it */
            if (o)
                out[o++] = '/';
            memcpy(out + o, p, n);
            o += n;
            out[o] = '\0';
        }
        p += n;
        p += strspn(p, "/");
    }
}

int tn_lib_list(struct front *f, const char *dir, bool recursive, const char *glob, bool files_only,
                struct tn_lib_entry **out, size_t *n, char *msg, size_t len)
{
    *out = NULL;
    *n = 0;
    if (f->media_root_fd < 0) {
        snprintf(msg, len, "library mode is off on this server (no --media-root)");
        return TN_FAILED_PRECONDITION;
    }
    /* CQ thread only, like upload.c's open_local(). */
    static int how = -1;
    if (how < 0)
        how = getenv("TN_NO_OPENAT2") ? TN_MEDIA_WALK : TN_MEDIA_OPENAT2;
    enum tn_media_resolve r = (enum tn_media_resolve)how;
    int code = TN_OK;
    int fd = tn_media_root_open_dir(f->media_root_fd, "dir", dir, &r, &code, msg, len);
    how = (int)r;
    if (fd < 0)
        return code;
    char prefix[PATH_MAX];
    normalise(dir, prefix, sizeof(prefix));
    struct scan s = {
        .root_fd = f->media_root_fd,
        .how = r,
        .glob = glob ? glob : "",
        .recursive = recursive,
        .files_only = files_only,
    };
    if (scan_dir(&s, fd, prefix) < 0) {
        tn_lib_entries_free(s.v, s.n);
        if (s.too_many) {
            snprintf(msg, len,
                     "dir \"%.200s\" holds more than %d entries%s: list its subfolders instead",
                     dir, LIBRARY_MAX_ENTRIES, recursive ? " (recursive)" : "");
            return TN_RESOURCE_EXHAUSTED;
        }
        snprintf(msg, len, "dir \"%.200s\": %s", dir, strerror(-s.err));
        return s.err == -EACCES || s.err == -EPERM ? TN_PERMISSION_DENIED : TN_UNAVAILABLE;
    }
    if (s.n) /* an empty folder: s.v is NULL, which qsort() must not be given */
        qsort(s.v, s.n, sizeof(*s.v), by_path);
    *out = s.v;
    *n = s.n;
    return TN_OK;
}

/* ------------------------------------------------------------------------ */
/* Page tokens                                                              */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding; out is malloc'd. */
static char *b64_encode(const unsigned char *in, size_t n)
{
    char *out = malloc(n / 3 * 4 + 5), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = b64[(v >> 6) & 63];
        *o++ = b64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = b64[(v >> 6) & 63];
    }
    *o = '\0';
    return out;
}

/* Returns the decoded length, or -1 for a character outside base64url or a
 * length no encoder produces. out holds at least strlen(in) bytes. */
static long b64_decode(const char *in, unsigned char *out)
{
    size_t n = strlen(in), o = 0;
    if (n % 4 == 1)
        return -1;
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = in[i] ? strchr(b64, in[i]) : NULL;
        if (!p)
            return -1;
        v = v << 6 | (uint32_t)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    return (long)o;
}

/* The token after `last` in the listing (dir, glob, recursive). malloc'd. */
static char *token_encode(const char *dir, const char *glob, bool recursive, const char *last)
{
    size_t n = strlen(TOKEN_MAGIC) + strlen(dir) + strlen(glob) + strlen(last) + 6;
    unsigned char *raw = malloc(n);
    if (!raw)
        return NULL;
    int len = snprintf((char *)raw, n, "%s%c%s%c%s%c%c%c%s", TOKEN_MAGIC, 0, dir, 0, glob, 0,
                       recursive ? '1' : '0', 0, last);
    char *t = len > 0 ? b64_encode(raw, (size_t)len) : NULL;
    free(raw);
    return t;
}

/* The last path a token names, into last (PATH_MAX); -1 with msg set when the
 * token is not one of this listing's. */
static int token_decode(const char *tok, const char *dir, const char *glob, bool recursive,
                        char *last, char *msg, size_t len)
{
    size_t tl = strlen(tok);
    unsigned char *raw = malloc(tl + 1);
    if (!raw) {
        snprintf(msg, len, "out of memory");
        return -1;
    }
    long n = tl < 4 * (PATH_MAX + 3 * 256) ? b64_decode(tok, raw) : -1;
    const char *field[5];
    int k = 0;
    if (n > 0) {
        raw[n] = '\0';
        for (long i = 0; i < n && k < 5;) {
            field[k++] = (const char *)raw + i;
            i += (long)strlen((const char *)raw + i) + 1;
        }
    }
    int rc = -1;
    if (n <= 0 || k != 5 || strcmp(field[0], TOKEN_MAGIC) != 0 || strlen(field[4]) >= PATH_MAX ||
        (long)(field[4] - (const char *)raw + strlen(field[4])) != n)
        snprintf(msg, len, "page_token is not a token this server issued");
    else if (strcmp(field[1], dir) || strcmp(field[2], glob) ||
             strcmp(field[3], recursive ? "1" : "0"))
        snprintf(msg, len,
                 "page_token belongs to another listing (dir, glob or recursive differ): repeat "
                 "the request that returned it");
    else {
        snprintf(last, PATH_MAX, "%s", field[4]);
        rc = 0;
    }
    free(raw);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The List call (CQ thread)                                                */

struct list_call {
    struct front *f;
    struct tag t_new, t_done;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_byte_buffer *resp;
    grpc_slice status_slice;
    int cancelled;
    struct timespec started;
    int code;
    char msg[STATUS_MAX];
    char dir[200]; /* for the access line */
    size_t n_entries;
    bool http;      /* from the HTTP gateway (gateway_peer()) */
    char peer[128]; /* the HTTP client's address when http */
};

static void list_free(struct list_call *l)
{
    struct front *f = l->f;
    bool accepted = l->call != NULL;
    if (accepted) {
        int code = l->cancelled ? TN_CANCELLED : l->code;
        double ms = elapsed_ms(&l->started);
        tn_metrics_call_handled_p(TN_M_LIST, l->http ? TN_P_HTTP : TN_P_GRPC, code, ms / 1000);
        char *peer = grpc_call_get_peer(l->call);
        struct tn_log_access a = {
            .method = "thumbnail.v1.Thumbnailer/List",
            .peer = l->http ? l->peer : peer,
            .file = l->dir,
            .ms = ms,
            .status = tn_code_name(code),
            .message = code != TN_OK ? l->msg : "",
            .mode = "local",
        };
        tn_log_access(TN_LOG_INFO, &a);
        gpr_free(peer);
        grpc_call_unref(l->call);
    }
    grpc_metadata_array_destroy(&l->md);
    if (l->payload)
        grpc_byte_buffer_destroy(l->payload);
    if (l->resp)
        grpc_byte_buffer_destroy(l->resp);
    grpc_slice_unref(l->status_slice);
    free(l);
    if (accepted) {
        pthread_mutex_lock(&f->mu);
        f->n_live--;
        pthread_mutex_unlock(&f->mu);
    }
}

void request_list(struct front *f)
{
    struct list_call *l = call_alloc(sizeof(*l));
    l->f = f;
    l->t_new = (struct tag){TAG_NEW_LIST, l};
    l->t_done = (struct tag){TAG_LIST_DONE, l};
    l->status_slice = grpc_empty_slice();
    grpc_metadata_array_init(&l->md);
    must_succeed(grpc_server_request_registered_call(f->server, f->m_list, &l->call, &l->deadline,
                                                     &l->md, &l->payload, f->cq, f->cq, &l->t_new),
                 "grpc_server_request_registered_call");
}

/* One batch answers the call: the message (if any), the status, the close. */
static void list_answer(struct list_call *l, grpc_byte_buffer *msg, int code)
{
    l->code = code;
    if (msg) {
        tn_metrics_msg_sent(TN_M_LIST);
        l->resp = msg;
    }
    answer_unary(l->call, msg, (grpc_status_code)code, code != TN_OK ? l->msg : NULL,
                 &l->status_slice, &l->cancelled, &l->t_done);
}

static int list_fail(struct list_call *l, int code, const char *msg)
{
    snprintf(l->msg, sizeof(l->msg), "%s", msg);
    list_answer(l, NULL, code);
    return 0;
}

void on_new_list(void *owner, bool ok)
{
    struct list_call *l = owner;
    struct front *f = l->f;
    if (!ok) { /* server shutting down */
        list_free(l);
        return;
    }
    pthread_mutex_lock(&f->mu);
    f->n_live++;
    pthread_mutex_unlock(&f->mu);
    request_list(f);
    clock_gettime(CLOCK_MONOTONIC, &l->started);
    l->http = gateway_peer(f, &l->md, l->peer, sizeof(l->peer));
    tn_metrics_call_started_p(TN_M_LIST, l->http ? TN_P_HTTP : TN_P_GRPC);
    const char *refusal = auth_refusal(f, &l->md);
    if (refusal) {
        list_fail(l, TN_UNAUTHENTICATED, refusal);
        return;
    }
    Thumbnail__V1__ListRequest *req = NULL;
    if (l->payload) {
        tn_metrics_msg_received(TN_M_LIST);
        grpc_slice sl = tn_pb_flatten(l->payload);
        req = thumbnail__v1__list_request__unpack(NULL, GRPC_SLICE_LENGTH(sl),
                                                  GRPC_SLICE_START_PTR(sl));
        grpc_slice_unref(sl);
    }
    if (!req) {
        list_fail(l, TN_INVALID_ARGUMENT, "malformed ListRequest message");
        return;
    }
    const char *dir = req->dir ? req->dir : "", *glob = req->glob ? req->glob : "";
    snprintf(l->dir, sizeof(l->dir), "%s", dir);
    for (char *p = l->dir; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"')
            *p = '?'; /* keep log lines one line */
    char msg[STATUS_MAX], last[PATH_MAX] = "";
    struct tn_lib_entry *v = NULL;
    size_t n = 0;
    uint32_t page = req->page_size ? req->page_size : LIST_DEFAULT_PAGE;
    if (req->page_size > LIST_MAX_PAGE) {
        snprintf(msg, sizeof(msg), "page_size %u: at most %d (0 = %d)", req->page_size,
                 LIST_MAX_PAGE, LIST_DEFAULT_PAGE);
        list_fail(l, TN_INVALID_ARGUMENT, msg);
        goto out;
    }
    if (req->page_token && req->page_token[0] &&
        token_decode(req->page_token, dir, glob, req->recursive, last, msg, sizeof(msg)) < 0) {
        list_fail(l, TN_INVALID_ARGUMENT, msg);
        goto out;
    }
    int code = tn_lib_list(f, dir, req->recursive, glob, false, &v, &n, msg, sizeof(msg));
    if (code != TN_OK) {
        list_fail(l, code, msg);
        goto out;
    }
    /* the first entry after the token's: a binary search in the sorted listing */
    size_t lo = 0, hi = n;
    if (last[0])
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (strcmp(v[mid].path, last) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
    size_t end = n - lo > page ? lo + page : n;
    Thumbnail__V1__ListResponse resp = THUMBNAIL__V1__LIST_RESPONSE__INIT;
    Thumbnail__V1__ListEntry *ents = calloc(end - lo + 1, sizeof(*ents));
    Thumbnail__V1__ListEntry **ptrs = calloc(end - lo + 1, sizeof(*ptrs));
    char *next = NULL;
    if (end < n)
        next = token_encode(dir, glob, req->recursive, v[end - 1].path);
    if (!ents || !ptrs || (end < n && !next)) {
        free(ents);
        free(ptrs);
        free(next);
        list_fail(l, TN_RESOURCE_EXHAUSTED, "the server is out of memory for this listing");
        goto out;
    }
    for (size_t i = lo; i < end; i++) {
        Thumbnail__V1__ListEntry *e = &ents[i - lo];
        thumbnail__v1__list_entry__init(e);
        e->path = v[i].path;
        e->size = v[i].size;
        e->mtime_ns = v[i].mtime_ns;
        e->is_dir = v[i].is_dir;
        ptrs[i - lo] = e;
    }
    resp.n_entries = end - lo;
    resp.entries = ptrs;
    resp.next_page_token = next ? next : "";
    l->n_entries = end - lo;
    grpc_byte_buffer *bb = tn_pb_pack(&resp.base);
    free(ents);
    free(ptrs);
    free(next);
    size_t blen = grpc_byte_buffer_length(bb);
    if (blen > f->cfg->max_message_bytes) {
        grpc_byte_buffer_destroy(bb);
        snprintf(msg, sizeof(msg),
                 "this page is %zu bytes, over this server's --max-message-bytes of %" PRIu64
                 ": ask for a smaller page_size",
                 blen, f->cfg->max_message_bytes);
        list_fail(l, TN_RESOURCE_EXHAUSTED, msg);
        goto out;
    }
    list_answer(l, bb, TN_OK);
out:
    tn_lib_entries_free(v, n);
    thumbnail__v1__list_request__free_unpacked(req, NULL);
}

void on_list_done(void *owner)
{
    list_free(owner);
}
