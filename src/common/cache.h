/*
 * The result cache: every result of a finished job, on disk, keyed by what
 * the job asked for and which file it read, so that the same request is
 * answered again without a decode.
 *
 * DESIGN.
 *
 * Key. SHA-256 (libcrypto EVP) over a version tag (TN_CACHE_KEY_TAG, which
 * also names TN_IPC_VERSION: a new engine output format gets new keys), the
 * job's NORMALISED options and the file's identity (struct tn_cache_ident).
 * Normalised = after tn_job_opts_defaults(), serialised field by field (never
 * the raw struct: padding and the unused tail of times[] are not part of it),
 * with the fields that cannot change the output zeroed: quality unless JPEG or
 * WebP, png_level unless PNG, lossless unless WebP, pad_color unless fit PAD,
 * the storyboard fields unless a storyboard, and every option but `probe` for
 * a Probe. A storyboard's VTT names the sprite after the file's stem, so for
 * a storyboard (only) the stem is part of the key; otherwise the file name is
 * not ("a.mp4" and "b.mp4" with the same bytes share entries). Values are not
 * resolved beyond tn_job_opts_defaults() (quality 0 and the engine's default
 * 85 are two keys: a missed share, never a wrong answer). Identity: a local
 * file is (st_dev, st_ino, st_size, st_mtim in ns) of the opened fd, so a
 * file replaced or touched gets a new key; an upload is the SHA-256 of its
 * content (the front hashes it while spooling) and its size.
 *
 * Layout. DIR/ab/abcdef...(64 hex digits of the key): a two-level fan-out on
 * the first byte, so no directory holds more than 1/256 of the entries. An
 * entry is written to DIR/ab/.tmp.<hex>.<pid>.<n> and renamed into place: a
 * reader sees a whole entry or none. No fsync: an entry cut short by a crash
 * fails its checksum and is a miss. A writer's open removes temp files older
 * than ten minutes (a crashed writer's), not younger ones (another writer's).
 *
 * Entry format (one file = ALL results of one job, native byte order: the
 * cache belongs to one host):
 *
 *   data     the results' bytes, back to back, at the offsets the records give
 *   records  n x struct tn_cache_record {offset, length, struct tn_ipc_result}
 *   trailer  struct tn_cache_trailer: magic "TNCACHE\1", format version,
 *            sizeof(struct tn_ipc_result), n, records_off, file_len, the key,
 *            then SHA-256 over every byte of the file before the checksum
 *
 * A reader checks the trailer's magic, version and sizes against fstat(),
 * that the key is the one it asked for, every record's range, and the
 * checksum over the whole file: anything else is a MISS, and the front
 * (only) deletes the entry. A truncated or bit-flipped entry is therefore
 * never served. Reading the whole entry to check it costs a copy of a few
 * kB per hit; in exchange the entry handle holds the checked bytes (data),
 * which a gRPC front streams from, while an HTTP server may sendfile() the
 * same range of fd: the writer never changes an entry in place (it replaces
 * the name), so the inode behind fd keeps the bytes that were checked.
 *
 * Eviction. --cache-size bounds the sum of the entries' sizes. The writer
 * keeps an in-memory index (key -> size, last use) rebuilt at open by
 * scanning DIR (so it survives restarts; the order is the files' mtime) and
 * evicts the least recently used entries after each store that went over
 * the cap. A hit touches the file's mtime (futimens), in any process; before
 * evicting, the writer re-reads the candidate's mtime, so hits served by
 * another process (the HTTP gateway) count as uses too.
 *
 * Who owns what. The front opens the cache TN_CACHE_WRITER: it alone stores,
 * deletes corrupt entries and evicts. Any other process (the HTTP gateway)
 * opens it TN_CACHE_READER with only the directory path: lookups and the
 * mtime touch, no index, no deletion. Several writers on one directory (the
 * old and new front across a reload) are safe, entries are replaced whole;
 * each counts only its own stores against the cap until its next open.
 * A struct tn_cache is safe to use from several threads (one mutex inside);
 * an entry handle belongs to whoever looked it up, and outlives the cache.
 */
#ifndef TN_CACHE_H
#define TN_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "ipc.h"
#include "job_opts.h"

#define TN_CACHE_KEY_LEN 32 /* SHA-256 */
#define TN_CACHE_KEY_TAG "thumbnail_server result cache 1"
#define TN_CACHE_MAGIC "TNCACHE\1" /* 8 bytes, no NUL */
#define TN_CACHE_FORMAT 1
#define TN_CACHE_MAX_RESULTS 1024 /* more than any job makes (TN_JOB_MAX_TIMES, storyboard 2) */
#define TN_CACHE_DEFAULT_SIZE (1ull << 30)

struct tn_cache_key {
    unsigned char b[TN_CACHE_KEY_LEN];
};

enum tn_cache_ident_kind {
    TN_CACHE_ID_FILE = 1,    /* a file opened on this host (local mode, HTTP) */
    TN_CACHE_ID_CONTENT = 2, /* uploaded bytes, known by their hash */
};

/* What the output was computed from. Fill with the functions below. */
struct tn_cache_ident {
    uint32_t kind; /* enum tn_cache_ident_kind */
    uint32_t pad;
    uint64_t dev, ino, size;
    int64_t mtime_ns;
    unsigned char sha256[32]; /* TN_CACHE_ID_CONTENT */
};

/* On disk: one per result, in the entry's records section. */
struct tn_cache_record {
    uint64_t offset; /* of the result's bytes from the start of the file */
    uint64_t length;
    struct tn_ipc_result meta; /* as the worker sent it; h.job_id is meaningless */
};

/* On disk: the last bytes of an entry. */
struct tn_cache_trailer {
    char magic[8];        /* TN_CACHE_MAGIC */
    uint32_t format;      /* TN_CACHE_FORMAT */
    uint32_t record_size; /* sizeof(struct tn_cache_record) */
    uint32_t n;           /* records */
    uint32_t pad;
    uint64_t records_off; /* where the records start; data is [0, records_off) */
    uint64_t file_len;    /* the whole file, trailer included */
    unsigned char key[TN_CACHE_KEY_LEN];
    unsigned char sum[32]; /* SHA-256 of bytes [0, file_len - 32) */
};

/* ---- keys (no struct tn_cache needed: any process) ------------------------- */

/* The identity of an opened file, from fstat(). */
void tn_cache_ident_file(struct tn_cache_ident *id, const struct stat *st);
/* The identity of uploaded content: its SHA-256 and size. */
void tn_cache_ident_content(struct tn_cache_ident *id, const unsigned char sha256[32],
                            uint64_t size);

/*
 * The key of a job. o: after tn_job_opts_defaults() (and accepted by
 * tn_job_opts_check()); file_name: the job's file name as the engine sees it
 * (tn_ipc_job.file_name; "" or NULL = none), used for a storyboard only.
 */
void tn_cache_key(const struct tn_job_opts *o, const char *file_name,
                  const struct tn_cache_ident *id, struct tn_cache_key *key);

/* 64 lowercase hex digits and a NUL: the entry's file name, usable as an ETag. */
void tn_cache_key_hex(const struct tn_cache_key *key, char out[2 * TN_CACHE_KEY_LEN + 1]);

/* ---- the cache ------------------------------------------------------------- */

struct tn_cache;

enum tn_cache_role {
    TN_CACHE_READER = 0, /* lookups only */
    TN_CACHE_WRITER = 1, /* the front: lookups, stores, deletion, eviction */
};

/*
 * Open the cache in dir. A writer creates dir (0700) if missing, scans it to
 * build the index and evicts down to max_bytes (0 = TN_CACHE_DEFAULT_SIZE); a
 * reader only checks that dir is a directory (max_bytes unused). Returns 0
 * and *out, or -errno with a message for the user in err.
 */
int tn_cache_open(struct tn_cache **out, const char *dir, uint64_t max_bytes,
                  enum tn_cache_role role, char *err, size_t errlen);
/* NULL-safe; entries looked up stay valid. */
void tn_cache_close(struct tn_cache **c);

/* One result of an entry. */
struct tn_cache_item {
    struct tn_ipc_result meta; /* reason NUL-terminated; h.job_id is 0 */
    uint64_t offset;           /* in fd (and in data) */
    uint64_t length;
};

/* A checked entry. Owner: the caller of tn_cache_lookup(); free it with
 * tn_cache_entry_free(). Everything in it is read-only. */
struct tn_cache_entry {
    int fd;                    /* the entry's file, O_RDONLY|O_CLOEXEC; owned by the entry */
    const unsigned char *data; /* the whole file as checked (file_len bytes) */
    uint64_t file_len;
    struct timespec mtime; /* before this hit touched it: when it was stored or last used */
    struct tn_cache_key key;
    uint32_t n; /* results, in the worker's order */
    const struct tn_cache_item *items;
};

/*
 * Look key up. Returns 0 and *out on a hit (the file's mtime is touched);
 * -ENOENT on a miss, which includes an entry that fails any check (a writer
 * deletes it then and logs why); another -errno on an I/O error (also a miss
 * to the caller). Counts a hit or a miss in the stats.
 */
int tn_cache_lookup(struct tn_cache *c, const struct tn_cache_key *key,
                    struct tn_cache_entry **out);
void tn_cache_entry_free(struct tn_cache_entry **e);

/*
 * Storing, the writer only: begin when the job starts, add each result as it
 * arrives (its bytes are written to an unnamed temp file at once, so nothing
 * is held in memory), then commit when the job is DONE with OK, or abort
 * (failed, cancelled, partial). Commit makes the entry visible atomically,
 * replacing one with the same key, then evicts down to the cap. A store that
 * fails (disk full, ...) is logged and dropped: the cache is best effort and
 * never fails the job. Every function is NULL-safe on the store, and
 * tn_cache_store_begin() returns NULL on failure, so a caller needs no checks.
 * A store belongs to one thread at a time.
 */
struct tn_cache_store;
struct tn_cache_store *tn_cache_store_begin(struct tn_cache *c, const struct tn_cache_key *key);
void tn_cache_store_add(struct tn_cache_store *s, const struct tn_ipc_result *meta,
                        const void *data, uint64_t length);
/* Returns 0 when the entry is in place, else -errno (already logged). Frees s. */
int tn_cache_store_commit(struct tn_cache_store **s);
/* NULL-safe; frees s. */
void tn_cache_store_abort(struct tn_cache_store **s);

/* Counters since open (this process), and the writer's index. */
struct tn_cache_stats {
    uint64_t hits, misses, corrupt; /* corrupt: misses on an entry that failed a check */
    uint64_t stores, evictions, evicted_bytes;
    uint64_t entries, bytes; /* in the index (writer; 0 for a reader) */
    uint64_t max_bytes;
};
void tn_cache_stats(struct tn_cache *c, struct tn_cache_stats *st);

#endif
