/*
 * The result cache: keys, the entry format, lookups, stores and LRU eviction
 * (see cache.h for the design and who owns what).
 */
#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "log.h"

#define HEX_LEN (2 * TN_CACHE_KEY_LEN)

/* The checksum covers every byte before it: it must end the trailer, unpadded. */
_Static_assert(offsetof(struct tn_cache_trailer, sum) + 32 == sizeof(struct tn_cache_trailer),
               "the checksum ends the trailer");
#define TMP_STALE_S 600 /* a temp file this old belongs to a writer that died */

/* ---- keys ------------------------------------------------------------------ */

void tn_cache_ident_file(struct tn_cache_ident *id, const struct stat *st)
{
    memset(id, 0, sizeof(*id));
    id->kind = TN_CACHE_ID_FILE;
    id->dev = (uint64_t)st->st_dev;
    id->ino = (uint64_t)st->st_ino;
    id->size = (uint64_t)st->st_size;
    id->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

void tn_cache_ident_content(struct tn_cache_ident *id, const unsigned char sha256[32],
                            uint64_t size)
{
    memset(id, 0, sizeof(*id));
    id->kind = TN_CACHE_ID_CONTENT;
    id->size = size;
    memcpy(id->sha256, sha256, 32);
}

/* The serialised key material: explicit fields, little-endian. */
struct kbuf {
    unsigned char b[4096];
    size_t n;
};

static void put(struct kbuf *k, const void *p, size_t n)
{
    if (k->n + n > sizeof(k->b))
        abort(); /* the fields below are bounded: a bug */
    memcpy(k->b + k->n, p, n);
    k->n += n;
}

static void put_u64(struct kbuf *k, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put(k, b, 8);
}

static void put_f64(struct kbuf *k, double d)
{
    uint64_t v;
    if (d == 0)
        d = 0; /* -0.0 and 0.0 ask for the same */
    memcpy(&v, &d, 8);
    put_u64(k, v);
}

/* The stem the engine names a storyboard's sprite after (storyboard.c). */
static void put_stem(struct kbuf *k, const char *name)
{
    if (!name || !name[0])
        name = "video";
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strnlen(base, TN_IPC_NAME_MAX);
    if (n > TN_IPC_NAME_MAX)
        n = TN_IPC_NAME_MAX;
    put_u64(k, n);
    put(k, base, n);
}

void tn_cache_key(const struct tn_job_opts *o, const char *file_name,
                  const struct tn_cache_ident *id, struct tn_cache_key *key)
{
    struct kbuf k = {.n = 0};
    put(&k, TN_CACHE_KEY_TAG, sizeof(TN_CACHE_KEY_TAG));
    put_u64(&k, TN_IPC_VERSION);
    put_u64(&k, o->probe);
    if (!o->probe) {
        put_u64(&k, o->format);
        put_u64(&k, o->mode);
        put_u64(&k, o->fit);
        put_u64(&k, o->upscale);
        put_u64(&k, o->cover_art);
        put_u64(&k, o->max_width);
        put_u64(&k, o->max_height);
        put_u64(&k, o->format == TN_FORMAT_JPEG || o->format == TN_FORMAT_WEBP ? o->quality : 0);
        put_u64(&k, o->format == TN_FORMAT_PNG ? o->png_level : 0);
        put_u64(&k, o->format == TN_FORMAT_WEBP ? o->lossless : 0);
        put_u64(&k, o->fit == TN_FIT_PAD ? o->pad_color : 0);
        uint32_t nt = o->n_times < TN_JOB_MAX_TIMES ? o->n_times : TN_JOB_MAX_TIMES;
        put_u64(&k, o->n_times);
        for (uint32_t i = 0; i < nt; i++) {
            put_u64(&k, o->times[i].kind);
            put_f64(&k, o->times[i].value);
        }
        put_u64(&k, o->count);
        put_f64(&k, o->every);
        put_u64(&k, o->storyboard);
        if (o->storyboard) {
            put_u64(&k, o->tile_width ? o->tile_width : TN_STORYBOARD_DEFAULT_TILE_WIDTH);
            put_u64(&k, o->columns ? o->columns : TN_STORYBOARD_DEFAULT_COLUMNS);
            put_stem(&k, file_name);
        }
    }
    put_u64(&k, id->kind);
    put_u64(&k, id->size);
    if (id->kind == TN_CACHE_ID_CONTENT) {
        put(&k, id->sha256, 32);
    } else {
        put_u64(&k, id->dev);
        put_u64(&k, id->ino);
        put_u64(&k, (uint64_t)id->mtime_ns);
    }
    unsigned len = 0;
    if (!EVP_Digest(k.b, k.n, key->b, &len, EVP_sha256(), NULL) || len != TN_CACHE_KEY_LEN)
        abort(); /* SHA-256 cannot fail short of a broken libcrypto */
}

void tn_cache_key_hex(const struct tn_cache_key *key, char out[2 * TN_CACHE_KEY_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < TN_CACHE_KEY_LEN; i++) {
        out[2 * i] = hex[key->b[i] >> 4];
        out[2 * i + 1] = hex[key->b[i] & 15];
    }
    out[HEX_LEN] = '\0';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool key_from_hex(const char *s, struct tn_cache_key *key)
{
    if (strlen(s) != HEX_LEN)
        return false;
    for (int i = 0; i < TN_CACHE_KEY_LEN; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        key->b[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* "ab/abcdef..." relative to the cache dir. */
static void rel_path(const struct tn_cache_key *key, char out[HEX_LEN + 4])
{
    char hex[HEX_LEN + 1];
    tn_cache_key_hex(key, hex);
    snprintf(out, HEX_LEN + 4, "%.2s/%s", hex, hex);
}

/* ---- the index (writer) ------------------------------------------------------ */

struct ent {
    struct tn_cache_key key;
    uint64_t size;
    int64_t used_ns;           /* mtime when last seen */
    struct ent *hnext;         /* hash chain */
    struct ent *newer, *older; /* LRU list */
};

struct tn_cache {
    char *dir;
    int dirfd; /* O_PATH|O_DIRECTORY; owned */
    enum tn_cache_role role;
    uint64_t max_bytes;
    pthread_mutex_t mu;
    /* under mu */
    struct ent **buckets;
    size_t n_buckets;
    struct ent *newest, *oldest;
    struct tn_cache_stats st;
    uint64_t tmp_seq;
};

static size_t bucket_of(const struct tn_cache *c, const struct tn_cache_key *k)
{
    uint64_t h;
    memcpy(&h, k->b, sizeof(h));
    return (size_t)(h & (c->n_buckets - 1));
}

static struct ent *find(struct tn_cache *c, const struct tn_cache_key *k)
{
    for (struct ent *e = c->buckets[bucket_of(c, k)]; e; e = e->hnext)
        if (!memcmp(e->key.b, k->b, TN_CACHE_KEY_LEN))
            return e;
    return NULL;
}

static void lru_unlink(struct tn_cache *c, struct ent *e)
{
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void lru_push_newest(struct tn_cache *c, struct ent *e)
{
    e->older = c->newest;
    e->newer = NULL;
    if (c->newest)
        c->newest->newer = e;
    c->newest = e;
    if (!c->oldest)
        c->oldest = e;
}

static void grow(struct tn_cache *c)
{
    size_t nb = c->n_buckets * 2;
    struct ent **b = calloc(nb, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->n_buckets; i++) {
        for (struct ent *e = c->buckets[i], *next; e; e = next) {
            next = e->hnext;
            uint64_t h;
            memcpy(&h, e->key.b, sizeof(h));
            size_t j = (size_t)(h & (nb - 1));
            e->hnext = b[j];
            b[j] = e;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->n_buckets = nb;
}

/* Insert or update key as the newest entry. Returns false when out of memory. */
static bool index_put(struct tn_cache *c, const struct tn_cache_key *k, uint64_t size,
                      int64_t used_ns)
{
    struct ent *e = find(c, k);
    if (e) {
        c->st.bytes -= e->size;
        lru_unlink(c, e);
    } else {
        if (!(e = calloc(1, sizeof(*e))))
            return false;
        e->key = *k;
        size_t b = bucket_of(c, k);
        e->hnext = c->buckets[b];
        c->buckets[b] = e;
        c->st.entries++;
        if (c->st.entries > c->n_buckets)
            grow(c);
    }
    e->size = size;
    e->used_ns = used_ns;
    c->st.bytes += size;
    lru_push_newest(c, e);
    return true;
}

static void index_del(struct tn_cache *c, struct ent *e)
{
    struct ent **pp = &c->buckets[bucket_of(c, &e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    c->st.entries--;
    c->st.bytes -= e->size;
    free(e);
}

static int64_t mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/*
 * Evict the least recently used entries until the index fits max_bytes. A
 * candidate whose file was used since we last saw it (another process's hit)
 * goes back to the front instead. Under mu.
 */
static void evict_locked(struct tn_cache *c)
{
    uint64_t rechecks = c->st.entries;
    while (c->st.bytes > c->max_bytes && c->oldest) {
        struct ent *e = c->oldest;
        char rel[HEX_LEN + 4];
        rel_path(&e->key, rel);
        struct stat st;
        if (fstatat(c->dirfd, rel, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            index_del(c, e); /* gone already */
            continue;
        }
        if (mtime_ns(&st) > e->used_ns && rechecks > 0) {
            rechecks--;
            index_put(c, &e->key, (uint64_t)st.st_size, mtime_ns(&st));
            continue;
        }
        if (unlinkat(c->dirfd, rel, 0) < 0 && errno != ENOENT) {
            tn_log_warn("cache: cannot evict %s/%s: %s", c->dir, rel, strerror(errno));
            return; /* retried after the next store */
        }
        c->st.evictions++;
        c->st.evicted_bytes += e->size;
        index_del(c, e);
    }
}

struct scanned {
    struct tn_cache_key key;
    uint64_t size;
    int64_t mtime;
};

static int by_mtime(const void *a, const void *b)
{
    const struct scanned *x = a, *y = b;
    return (x->mtime > y->mtime) - (x->mtime < y->mtime);
}

/* Build the index from the files in dir (writer open). */
static int scan(struct tn_cache *c, char *err, size_t errlen)
{
    struct scanned *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    time_t now = time(NULL);
    for (int b = 0; b < 256; b++) {
        char sub[3];
        snprintf(sub, sizeof(sub), "%02x", b);
        int fd = openat(c->dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        DIR *d = fdopendir(fd);
        if (!d) {
            close(fd);
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            struct stat st;
            struct tn_cache_key key;
            if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                continue;
            if (!strncmp(de->d_name, ".tmp.", 5)) {
                if (now - st.st_mtim.tv_sec > TMP_STALE_S)
                    unlinkat(fd, de->d_name, 0);
                continue;
            }
            if (!key_from_hex(de->d_name, &key) || key.b[0] != b)
                continue; /* not ours: leave it alone */
            if (n == cap) {
                size_t nc = cap ? 2 * cap : 1024;
                struct scanned *nv = realloc(v, nc * sizeof(*v));
                if (!nv) {
                    closedir(d);
                    rc = -ENOMEM;
                    snprintf(err, errlen, "cache: out of memory scanning %s", c->dir);
                    goto out;
                }
                v = nv;
                cap = nc;
            }
            v[n++] = (struct scanned){key, (uint64_t)st.st_size, mtime_ns(&st)};
        }
        closedir(d);
    }
    if (n)
        qsort(v, n, sizeof(*v), by_mtime); /* v is NULL for an empty cache */
    for (size_t i = 0; i < n; i++) {
        if (!index_put(c, &v[i].key, v[i].size, v[i].mtime)) {
            rc = -ENOMEM;
            snprintf(err, errlen, "cache: out of memory indexing %s", c->dir);
            goto out;
        }
    }
out:
    free(v);
    return rc;
}

/* ---- open, close, stats ----------------------------------------------------- */

int tn_cache_open(struct tn_cache **out, const char *dir, uint64_t max_bytes,
                  enum tn_cache_role role, char *err, size_t errlen)
{
    int rc = 0;
    struct tn_cache *c = calloc(1, sizeof(*c));
    *out = NULL;
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        snprintf(err, errlen, "cache: out of memory");
        return -ENOMEM;
    }
    c->dirfd = -1;
    c->role = role;
    c->max_bytes = max_bytes ? max_bytes : TN_CACHE_DEFAULT_SIZE;
    c->st.max_bytes = role == TN_CACHE_WRITER ? c->max_bytes : 0;
    pthread_mutex_init(&c->mu, NULL);
    if (role == TN_CACHE_WRITER && mkdir(dir, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "cannot create the cache directory %s: %s", dir, strerror(errno));
        goto out;
    }
    c->dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (c->dirfd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot open the cache directory %s: %s", dir, strerror(errno));
        goto out;
    }
    if (role == TN_CACHE_WRITER) {
        if (faccessat(c->dirfd, ".", W_OK | X_OK, AT_EACCESS) < 0) {
            rc = -errno;
            snprintf(err, errlen, "the cache directory %s is not writable: %s", dir,
                     strerror(errno));
            goto out;
        }
        c->n_buckets = 1024;
        if (!(c->buckets = calloc(c->n_buckets, sizeof(*c->buckets)))) {
            rc = -ENOMEM;
            snprintf(err, errlen, "cache: out of memory");
            goto out;
        }
        if ((rc = scan(c, err, errlen)) < 0)
            goto out;
        evict_locked(c);
    }
out:
    if (rc < 0)
        tn_cache_close(&c);
    *out = c;
    return rc;
}

void tn_cache_close(struct tn_cache **cp)
{
    struct tn_cache *c = *cp;
    if (!c)
        return;
    *cp = NULL;
    if (c->buckets) {
        for (size_t i = 0; i < c->n_buckets; i++) {
            for (struct ent *e = c->buckets[i], *next; e; e = next) {
                next = e->hnext;
                free(e);
            }
        }
        free(c->buckets);
    }
    if (c->dirfd >= 0)
        close(c->dirfd);
    pthread_mutex_destroy(&c->mu);
    free(c->dir);
    free(c);
}

void tn_cache_stats(struct tn_cache *c, struct tn_cache_stats *st)
{
    pthread_mutex_lock(&c->mu);
    *st = c->st;
    pthread_mutex_unlock(&c->mu);
}

/* ---- lookup ----------------------------------------------------------------- */

struct entry_priv {
    struct tn_cache_entry pub;
    unsigned char *data;
    struct tn_cache_item *items;
};

void tn_cache_entry_free(struct tn_cache_entry **ep)
{
    struct tn_cache_entry *e = *ep;
    if (!e)
        return;
    *ep = NULL;
    struct entry_priv *p = (struct entry_priv *)e;
    if (e->fd >= 0)
        close(e->fd);
    free(p->data);
    free(p->items);
    free(p);
}

static int read_all(int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, buf + got, len - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -ENODATA; /* shrank under us */
        got += (size_t)r;
    }
    return 0;
}

/* Check an entry read whole; NULL if it is fine, else why not. Fills items. */
static const char *check_entry(const unsigned char *data, uint64_t len,
                               const struct tn_cache_key *key, struct tn_cache_item **items,
                               uint32_t *n)
{
    struct tn_cache_trailer t;
    if (len < sizeof(t))
        return "shorter than its trailer";
    memcpy(&t, data + len - sizeof(t), sizeof(t));
    if (memcmp(t.magic, TN_CACHE_MAGIC, sizeof(t.magic)))
        return "bad magic (truncated or not an entry)";
    if (t.format != TN_CACHE_FORMAT || t.record_size != sizeof(struct tn_cache_record))
        return "another format version";
    if (t.file_len != len)
        return "length differs from the trailer's";
    if (memcmp(t.key, key->b, TN_CACHE_KEY_LEN))
        return "holds another key";
    if (t.n == 0 || t.n > TN_CACHE_MAX_RESULTS)
        return "bad result count";
    if (t.records_off > len ||
        (len - t.records_off) != (uint64_t)t.n * sizeof(struct tn_cache_record) + sizeof(t))
        return "bad records offset";
    unsigned char sum[32];
    unsigned slen = 0;
    if (!EVP_Digest(data, len - sizeof(t.sum), sum, &slen, EVP_sha256(), NULL) || slen != 32)
        return "checksum failed to compute";
    if (memcmp(sum, t.sum, 32))
        return "checksum mismatch";
    struct tn_cache_item *it = calloc(t.n, sizeof(*it));
    if (!it)
        return "out of memory";
    for (uint32_t i = 0; i < t.n; i++) {
        struct tn_cache_record r;
        memcpy(&r, data + t.records_off + (uint64_t)i * sizeof(r), sizeof(r));
        if (r.offset > t.records_off || r.length > t.records_off - r.offset ||
            r.length != r.meta.size) {
            free(it);
            return "a result lies outside the data";
        }
        it[i].meta = r.meta;
        it[i].meta.h.job_id = 0;
        it[i].meta.reason[TN_IPC_REASON_MAX - 1] = '\0';
        it[i].offset = r.offset;
        it[i].length = r.length;
    }
    *items = it;
    *n = t.n;
    return NULL;
}

/* Writer: remove an entry that failed a check, if the name still holds that file. */
static void drop_corrupt(struct tn_cache *c, const char *rel, const struct stat *seen,
                         const struct tn_cache_key *key)
{
    struct stat now;
    if (fstatat(c->dirfd, rel, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == seen->st_dev &&
        now.st_ino == seen->st_ino)
        unlinkat(c->dirfd, rel, 0);
    struct ent *e = find(c, key);
    if (e)
        index_del(c, e);
}

int tn_cache_lookup(struct tn_cache *c, const struct tn_cache_key *key, struct tn_cache_entry **out)
{
    char rel[HEX_LEN + 4];
    struct entry_priv *p = NULL;
    const char *why = NULL;
    struct stat st;
    int rc = 0;
    int fd = -1;
    *out = NULL;
    rel_path(key, rel);
    fd = openat(c->dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        rc = errno == ENOENT || errno == ELOOP ? -ENOENT : -errno;
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -ENOENT;
        goto out;
    }
    if (!(p = calloc(1, sizeof(*p)))) {
        rc = -ENOMEM;
        goto out;
    }
    p->pub.fd = -1;
    uint64_t len = (uint64_t)st.st_size;
    if (len > SIZE_MAX / 2 || !(p->data = malloc(len ? (size_t)len : 1))) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = read_all(fd, p->data, (size_t)len)) < 0) {
        if (rc == -ENODATA) {
            why = "shrank while read";
            rc = -ENOENT;
        }
        goto out;
    }
    if ((why = check_entry(p->data, len, key, &p->items, &p->pub.n))) {
        rc = -ENOENT;
        goto out;
    }
    futimens(fd, NULL); /* the LRU's "used": best effort (a reader may not own the file) */
    p->pub.fd = fd;
    fd = -1;
    p->pub.data = p->data;
    p->pub.file_len = len;
    p->pub.mtime = st.st_mtim;
    p->pub.key = *key;
    p->pub.items = p->items;
out:
    pthread_mutex_lock(&c->mu);
    if (rc == 0) {
        c->st.hits++;
        if (c->role == TN_CACHE_WRITER) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            index_put(c, key, (uint64_t)st.st_size, (int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
        }
    } else {
        c->st.misses++;
        if (why) {
            c->st.corrupt++;
            if (c->role == TN_CACHE_WRITER) {
                tn_log_warn("cache: entry %s/%s is damaged (%s): deleted, treated as a miss",
                            c->dir, rel, why);
                drop_corrupt(c, rel, &st, key);
            }
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (fd >= 0)
        close(fd);
    if (rc == 0)
        *out = &p->pub;
    else
        tn_cache_entry_free((struct tn_cache_entry **)&p);
    return rc;
}

/* ---- store ------------------------------------------------------------------ */

struct tn_cache_store {
    struct tn_cache *c;
    struct tn_cache_key key;
    int fd;                 /* the temp file; owned */
    char tmp[HEX_LEN + 64]; /* its name relative to dirfd */
    EVP_MD_CTX *md;         /* SHA-256 of everything written */
    uint64_t off;           /* bytes written */
    struct tn_cache_record *recs;
    uint32_t n;
    bool failed; /* a write failed: commit drops it */
};

void tn_cache_store_abort(struct tn_cache_store **sp)
{
    struct tn_cache_store *s = *sp;
    if (!s)
        return;
    *sp = NULL;
    if (s->fd >= 0) {
        close(s->fd);
        unlinkat(s->c->dirfd, s->tmp, 0);
    }
    EVP_MD_CTX_free(s->md);
    free(s->recs);
    free(s);
}

struct tn_cache_store *tn_cache_store_begin(struct tn_cache *c, const struct tn_cache_key *key)
{
    if (!c || c->role != TN_CACHE_WRITER)
        return NULL;
    struct tn_cache_store *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->c = c;
    s->key = *key;
    s->fd = -1;
    char hex[HEX_LEN + 1];
    tn_cache_key_hex(key, hex);
    char sub[3] = {hex[0], hex[1], '\0'};
    if (mkdirat(c->dirfd, sub, 0700) < 0 && errno != EEXIST) {
        tn_log_warn("cache: cannot create %s/%s: %s", c->dir, sub, strerror(errno));
        goto fail;
    }
    pthread_mutex_lock(&c->mu);
    uint64_t seq = ++c->tmp_seq;
    pthread_mutex_unlock(&c->mu);
    snprintf(s->tmp, sizeof(s->tmp), "%s/.tmp.%s.%d.%llu", sub, hex, (int)getpid(),
             (unsigned long long)seq);
    s->fd = openat(c->dirfd, s->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s->fd < 0) {
        tn_log_warn("cache: cannot create %s/%s: %s", c->dir, s->tmp, strerror(errno));
        goto fail;
    }
    if (!(s->md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(s->md, EVP_sha256(), NULL))
        goto fail;
    return s;
fail:
    tn_cache_store_abort(&s);
    return NULL;
}

static void store_write(struct tn_cache_store *s, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t done = 0;
    if (s->failed)
        return;
    while (done < len) {
        ssize_t w = write(s->fd, p + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            tn_log_warn("cache: cannot write %s/%s: %s; the result is not cached", s->c->dir,
                        s->tmp, w < 0 ? strerror(errno) : "no progress");
            s->failed = true;
            return;
        }
        done += (size_t)w;
    }
    if (!EVP_DigestUpdate(s->md, data, len))
        s->failed = true;
    s->off += len;
}

void tn_cache_store_add(struct tn_cache_store *s, const struct tn_ipc_result *meta,
                        const void *data, uint64_t length)
{
    if (!s || s->failed)
        return;
    if (s->n == TN_CACHE_MAX_RESULTS || length > s->c->max_bytes) {
        s->failed = true;
        return;
    }
    struct tn_cache_record *r = realloc(s->recs, (s->n + 1) * sizeof(*r));
    if (!r) {
        s->failed = true;
        return;
    }
    s->recs = r;
    r = &s->recs[s->n++];
    memset(r, 0, sizeof(*r));
    r->offset = s->off;
    r->length = length;
    r->meta = *meta;
    r->meta.h.job_id = 0;
    r->meta.size = length;
    store_write(s, data, (size_t)length);
}

int tn_cache_store_commit(struct tn_cache_store **sp)
{
    struct tn_cache_store *s = *sp;
    int rc = -EINVAL;
    if (!s)
        return rc;
    struct tn_cache *c = s->c;
    struct tn_cache_trailer t;
    memset(&t, 0, sizeof(t));
    memcpy(t.magic, TN_CACHE_MAGIC, sizeof(t.magic));
    t.format = TN_CACHE_FORMAT;
    t.record_size = sizeof(struct tn_cache_record);
    t.n = s->n;
    t.records_off = s->off;
    t.file_len = s->off + (uint64_t)s->n * sizeof(struct tn_cache_record) + sizeof(t);
    memcpy(t.key, s->key.b, TN_CACHE_KEY_LEN);
    if (s->n == 0 || t.file_len > c->max_bytes / 2)
        goto out; /* nothing to keep, or it would push out half the cache */
    store_write(s, s->recs, (size_t)s->n * sizeof(struct tn_cache_record));
    if (s->failed)
        goto out;
    unsigned slen = 0;
    if (!EVP_DigestUpdate(s->md, &t, sizeof(t) - sizeof(t.sum)) ||
        !EVP_DigestFinal_ex(s->md, t.sum, &slen) || slen != 32)
        goto out;
    /* the checksum is not part of what it sums: write the trailer without updating md */
    size_t done = 0;
    while (done < sizeof(t)) {
        ssize_t w = write(s->fd, (const char *)&t + done, sizeof(t) - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = w < 0 ? -errno : -EIO;
            tn_log_warn("cache: cannot write %s/%s: %s; the result is not cached", c->dir, s->tmp,
                        strerror(-rc));
            goto out;
        }
        done += (size_t)w;
    }
    char rel[HEX_LEN + 4];
    rel_path(&s->key, rel);
    if (renameat(c->dirfd, s->tmp, c->dirfd, rel) < 0) {
        rc = -errno;
        tn_log_warn("cache: cannot rename %s/%s into place: %s", c->dir, s->tmp, strerror(errno));
        goto out;
    }
    close(s->fd);
    s->fd = -1; /* renamed: abort must not unlink */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    pthread_mutex_lock(&c->mu);
    c->st.stores++;
    index_put(c, &s->key, t.file_len, (int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
    evict_locked(c);
    pthread_mutex_unlock(&c->mu);
    rc = 0;
out:
    tn_cache_store_abort(sp);
    return rc;
}
