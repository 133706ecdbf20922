/*
 * The front's side of the result cache (--cache-dir; cache.h has the design):
 * a job's key, a hit served without a worker, the store of a finished job's
 * results, and the metrics.
 *
 * Who does what. The CQ thread computes the key when the file is known
 * (local mode: fstat of the opened file; uploads: the SHA-256 hashed while
 * spooling, upload.c) and looks it up in upload_complete(): a hit becomes the
 * call's result list, streamed by kick_send_locked() exactly as a worker's
 * results would be, then OK. A miss goes to a worker as before; the poller
 * (dispatch.c) writes each RESULT to a store as it arrives and commits it
 * when the worker's DONE says OK, the call still alive and every result
 * taken: a failed, cancelled or partial job is never stored.
 *
 * Pull mode is not cached: the front only sees the ranges the worker asked
 * for, so it has no identity of the whole file to key on (hashing it would
 * mean pulling all of it, which is what pull mode exists to avoid).
 */
#include "front_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cache.h"
#include "log.h"
#include "metrics.h"
#include "status.h"

int cache_open(struct front *f)
{
    const struct tn_config *cfg = f->cfg;
    char err[512];
    if (!cfg->cache_dir)
        return 0;
    int rc = tn_cache_open(&f->cache, cfg->cache_dir, cfg->cache_size, TN_CACHE_WRITER, err,
                           sizeof(err));
    if (rc < 0) {
        tn_log_error("--cache-dir: %s", err);
        return -1;
    }
    struct tn_cache_stats st;
    tn_cache_stats(f->cache, &st);
    tn_log_info("result cache: %s, %" PRIu64 " entries, %" PRIu64 " of %" PRIu64 " MiB",
                cfg->cache_dir, st.entries, st.bytes >> 20, st.max_bytes >> 20);
    cache_publish(f);
    return 0;
}

void cache_publish(struct front *f)
{
    if (!f->cache)
        return;
    /* The snapshot is taken under the lock, so deltas never go backwards. */
    pthread_mutex_lock(&f->cache_pub_mu);
    struct tn_cache_stats st, *p = &f->cache_pub;
    tn_cache_stats(f->cache, &st);
    tn_metrics_cache_add(st.hits - p->hits, st.misses - p->misses, st.corrupt - p->corrupt,
                         st.stores - p->stores, st.evictions - p->evictions,
                         st.evicted_bytes - p->evicted_bytes);
    tn_metrics_front_cache_size(st.entries, st.bytes);
    *p = st;
    pthread_mutex_unlock(&f->cache_pub_mu);
}

void cache_key_local(struct gen_call *c, int fd)
{
    struct stat st;
    if (!c->f->cache || fstat(fd, &st) < 0)
        return;
    struct tn_cache_ident id;
    tn_cache_ident_file(&id, &st);
    tn_cache_key(&c->job.opts, c->job.file_name, &id, &c->cache_key);
    c->cacheable = true;
}

void cache_hash_begin(struct gen_call *c)
{
    if (!c->f->cache)
        return;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(md);
        return; /* not cached, served all the same */
    }
    c->cq.upload_md = md;
}

void cache_hash_update(struct gen_call *c, const void *p, size_t len)
{
    if (c->cq.upload_md && !EVP_DigestUpdate(c->cq.upload_md, p, len)) {
        EVP_MD_CTX_free(c->cq.upload_md);
        c->cq.upload_md = NULL;
    }
}

/* The upload is complete: its key from the hash of what was spooled. */
static void key_upload(struct gen_call *c)
{
    unsigned char sha[32];
    unsigned len = 0;
    EVP_MD_CTX *md = c->cq.upload_md;
    c->cq.upload_md = NULL;
    if (!md)
        return;
    if (EVP_DigestFinal_ex(md, sha, &len) && len == sizeof(sha)) {
        struct tn_cache_ident id;
        tn_cache_ident_content(&id, sha, c->cq.received);
        tn_cache_key(&c->job.opts, c->job.file_name, &id, &c->cache_key);
        c->cacheable = true;
    }
    EVP_MD_CTX_free(md);
}

void cache_hash_free(struct gen_call *c)
{
    EVP_MD_CTX_free(c->cq.upload_md);
    c->cq.upload_md = NULL;
}

/* A result that holds a copy of one cached item. */
static struct result *result_copy(const struct tn_cache_entry *e, const struct tn_cache_item *it)
{
    struct result *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = -1;
    r->meta = it->meta;
    r->heap = malloc((size_t)it->length);
    if (!r->heap) {
        free(r);
        return NULL;
    }
    memcpy(r->heap, e->data + it->offset, (size_t)it->length);
    r->map = r->heap;
    __atomic_add_fetch(&held_result_bytes, r->meta.size, __ATOMIC_RELAXED); /* free_result() */
    return r;
}

bool cache_serve(struct gen_call *c)
{
    struct front *f = c->f;
    if (!c->cq.pull && !c->cq.local)
        key_upload(c);
    if (!f->cache || !c->cacheable)
        return false;
    uint64_t held = __atomic_load_n(&held_result_bytes, __ATOMIC_RELAXED);
    if (f->cfg->max_result_bytes && held >= f->cfg->max_result_bytes)
        return false; /* upload_complete() refuses it with the reason */
    struct tn_cache_entry *e = NULL;
    int rc = tn_cache_lookup(f->cache, &c->cache_key, &e);
    cache_publish(f);
    if (rc < 0) {
        if (rc != -ENOENT)
            tn_log_warn("result cache lookup failed: %s; decoding instead", strerror(-rc));
        return false;
    }
    struct result *head = NULL, *tail = NULL;
    bool ok = e->n > 0;
    for (uint32_t i = 0; ok && i < e->n; i++) {
        struct result *r = e->items[i].length ? result_copy(e, &e->items[i]) : NULL;
        if (!r) {
            ok = false;
            break;
        }
        if (tail)
            tail->next = r;
        else
            head = r;
        tail = r;
    }
    tn_cache_entry_free(&e);
    if (!ok) {
        while (head) {
            struct result *r = head;
            head = r->next;
            free_result(r);
        }
        return false; /* out of memory: a worker may still do it */
    }
    pthread_mutex_lock(&c->mu);
    c->shared.cache_hit = true;
    if (c->shared.spool_fd >= 0) {
        close(c->shared.spool_fd); /* the video is not needed: free the spool now */
        c->shared.spool_fd = -1;
    }
    if (c->shared.dead || c->shared.status_set) {
        pthread_mutex_unlock(&c->mu);
        while (head) {
            struct result *r = head;
            head = r->next;
            free_result(r);
        }
        return true;
    }
    c->shared.res_head = head;
    c->shared.res_tail = tail;
    finish_locked(c, TN_OK, "OK"); /* sent after the results */
    pthread_mutex_unlock(&c->mu);
    return true;
}

void cache_store_result(struct gen_call *c, const struct result *r)
{
    struct front *f = c->f;
    if (!c->cacheable || c->poll.store_dropped)
        return;
    if (!c->poll.store && !(c->poll.store = tn_cache_store_begin(f->cache, &c->cache_key))) {
        c->poll.store_dropped = true;
        return;
    }
    tn_cache_store_add(c->poll.store, &r->meta, r->map, r->meta.size);
}

void cache_store_drop(struct gen_call *c)
{
    c->poll.store_dropped = true;
    tn_cache_store_abort(&c->poll.store);
}

void cache_store_commit(struct front *f, struct tn_cache_store **s)
{
    if (!*s)
        return;
    tn_cache_store_commit(s);
    cache_publish(f);
}
