/*
 * The result cache: keys (equivalent requests share one, anything that can
 * change the output does not), entries (what was stored comes back, through
 * the checked copy and through fd + offset), damage (a truncated or flipped
 * entry is a miss and is deleted by the writer only), the size cap and LRU
 * order, including uses seen only on disk (another process's hits), and a
 * reopen that finds what an earlier process stored.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/tn-test-cache-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct tn_job_opts opts(void)
{
    struct tn_job_opts o;
    memset(&o, 0, sizeof(o));
    tn_job_opts_defaults(&o);
    return o;
}

static struct tn_cache_ident file_ident(void)
{
    struct stat st;
    memset(&st, 0, sizeof(st));
    st.st_dev = 2049;
    st.st_ino = 1234;
    st.st_size = 5000000;
    st.st_mtim.tv_sec = 1700000000;
    st.st_mtim.tv_nsec = 123456789;
    struct tn_cache_ident id;
    tn_cache_ident_file(&id, &st);
    return id;
}

static struct tn_cache_key key_of(const struct tn_job_opts *o, const char *name,
                                  const struct tn_cache_ident *id)
{
    struct tn_cache_key k;
    tn_cache_key(o, name, id, &k);
    return k;
}

static bool same(struct tn_cache_key a, struct tn_cache_key b)
{
    return !memcmp(a.b, b.b, sizeof(a.b));
}

static void test_key_equivalent(void **state)
{
    (void)state;
    struct tn_cache_ident id = file_ident();
    struct tn_job_opts a = opts();
    struct tn_job_opts b;
    memset(&b, 0, sizeof(b));
    b.format = TN_FORMAT_PNG;
    b.mode = TN_MODE_ACCURATE;
    b.fit = TN_FIT_FIT;
    b.max_width = TN_JOB_DEFAULT_MAX_WIDTH;
    b.n_times = 1;
    b.times[0].kind = TN_TIME_DEFAULT;
    b.times[0].value = TN_JOB_DEFAULT_PERCENT;
    b.times[5].value = 99;  /* beyond n_times: not part of the request */
    b.quality = 70;         /* PNG ignores it */
    b.pad_color = 0xff0000; /* FIT ignores it */
    b.pad = 7;
    assert_true(same(key_of(&a, "a.mp4", &id), key_of(&b, "a.mp4", &id)));
    /* the name is not part of a thumbnail's key */
    assert_true(same(key_of(&a, "a.mp4", &id), key_of(&a, "other.mkv", &id)));
    assert_true(same(key_of(&a, NULL, &id), key_of(&a, "", &id)));

    /* a storyboard names its sprite after the stem: same stem, same key */
    struct tn_job_opts s = opts();
    s.storyboard = 1;
    tn_job_opts_defaults(&s);
    struct tn_job_opts s2 = s;
    s2.tile_width = TN_STORYBOARD_DEFAULT_TILE_WIDTH;
    s2.columns = TN_STORYBOARD_DEFAULT_COLUMNS;
    assert_true(same(key_of(&s, "dir/clip.mp4", &id), key_of(&s2, "clip.mkv", &id)));
    assert_false(same(key_of(&s, "clip.mp4", &id), key_of(&s, "other.mp4", &id)));

    /* a Probe reads no other option */
    struct tn_job_opts p1 = opts(), p2 = opts();
    p1.probe = p2.probe = 1;
    p2.max_width = 999;
    p2.format = TN_FORMAT_JPEG;
    assert_true(same(key_of(&p1, "x", &id), key_of(&p2, "y", &id)));
    assert_false(same(key_of(&p1, "x", &id), key_of(&a, "x", &id)));
}

static void test_key_different(void **state)
{
    (void)state;
    struct tn_cache_ident id = file_ident();
    struct tn_job_opts a = opts();
    struct tn_cache_key k = key_of(&a, "a.mp4", &id);
    struct tn_job_opts b;

    b = a, b.max_width = 321;
    assert_false(same(k, key_of(&b, "a.mp4", &id)));
    b = a, b.format = TN_FORMAT_JPEG;
    assert_false(same(k, key_of(&b, "a.mp4", &id)));
    b = a, b.times[0].value = 11;
    assert_false(same(k, key_of(&b, "a.mp4", &id)));
    b = a, b.times[0].kind = TN_TIME_PERCENT;
    assert_false(same(k, key_of(&b, "a.mp4", &id)));
    b = a, b.png_level = 9;
    assert_false(same(k, key_of(&b, "a.mp4", &id)));
    b = a, b.mode = TN_MODE_KEYFRAME;
    assert_false(same(k, key_of(&b, "a.mp4", &id)));
    b = a, b.fit = TN_FIT_PAD;
    struct tn_job_opts c = b;
    c.pad_color = 0x00ff00;
    assert_false(same(key_of(&b, "a.mp4", &id), key_of(&c, "a.mp4", &id)));
    b = a, b.format = TN_FORMAT_JPEG, c = b, c.quality = 50;
    assert_false(same(key_of(&b, "a.mp4", &id), key_of(&c, "a.mp4", &id)));

    /* identity: every field of a file's, and an upload's content */
    struct tn_cache_ident i2;
    i2 = id, i2.mtime_ns++;
    assert_false(same(k, key_of(&a, "a.mp4", &i2)));
    i2 = id, i2.ino++;
    assert_false(same(k, key_of(&a, "a.mp4", &i2)));
    i2 = id, i2.dev++;
    assert_false(same(k, key_of(&a, "a.mp4", &i2)));
    i2 = id, i2.size++;
    assert_false(same(k, key_of(&a, "a.mp4", &i2)));
    unsigned char sha[32] = {1, 2, 3};
    struct tn_cache_ident u1, u2;
    tn_cache_ident_content(&u1, sha, 5000000);
    sha[31] = 1;
    tn_cache_ident_content(&u2, sha, 5000000);
    assert_false(same(key_of(&a, "a.mp4", &u1), key_of(&a, "a.mp4", &u2)));
    assert_false(same(k, key_of(&a, "a.mp4", &u1)));

    char hex[2 * TN_CACHE_KEY_LEN + 1];
    tn_cache_key_hex(&k, hex);
    assert_int_equal(strlen(hex), 64);
    assert_int_equal(strspn(hex, "0123456789abcdef"), 64);
}

static struct tn_cache *open_cache(uint64_t cap, enum tn_cache_role role)
{
    struct tn_cache *c = NULL;
    char err[256] = "";
    int rc = tn_cache_open(&c, dir, cap, role, err, sizeof(err));
    if (rc < 0)
        fail_msg("tn_cache_open(%s): %d %s", dir, rc, err);
    return c;
}

static struct tn_cache_key nth_key(int n)
{
    struct tn_cache_ident id = file_ident();
    struct tn_job_opts o = opts();
    o.max_width = 100 + (uint32_t)n;
    return key_of(&o, "v.mp4", &id);
}

/* Two results: an image of `size` bytes of `fill`, and a small one. */
static void store(struct tn_cache *c, struct tn_cache_key k, size_t size, int fill)
{
    struct tn_cache_store *s = tn_cache_store_begin(c, &k);
    assert_non_null(s);
    unsigned char *buf = malloc(size);
    memset(buf, fill, size);
    struct tn_ipc_result m;
    memset(&m, 0, sizeof(m));
    m.h.job_id = 77;
    m.width = 320;
    m.height = 180;
    m.format = TN_FORMAT_PNG;
    m.requested_time = 1.5;
    m.actual_time = 1.48;
    m.size = size;
    snprintf(m.reason, sizeof(m.reason), "skipped %d black frames", fill);
    tn_cache_store_add(s, &m, buf, size);
    m.index = 1;
    m.kind = 2;
    m.size = 5;
    snprintf(m.reason, sizeof(m.reason), "%s", "");
    tn_cache_store_add(s, &m, "WEBVT", 5);
    free(buf);
    assert_int_equal(tn_cache_store_commit(&s), 0);
    assert_null(s);
}

static char *entry_path(struct tn_cache_key k)
{
    static char p[256];
    char hex[65];
    tn_cache_key_hex(&k, hex);
    snprintf(p, sizeof(p), "%s/%.2s/%s", dir, hex, hex);
    return p;
}

static void check_hit(struct tn_cache *c, struct tn_cache_key k, size_t size, int fill)
{
    struct tn_cache_entry *e = NULL;
    assert_int_equal(tn_cache_lookup(c, &k, &e), 0);
    assert_non_null(e);
    assert_int_equal(e->n, 2);
    assert_memory_equal(e->key.b, k.b, sizeof(k.b));
    const struct tn_cache_item *a = &e->items[0], *b = &e->items[1];
    assert_int_equal(a->length, size);
    assert_int_equal(a->meta.size, size);
    assert_int_equal(a->meta.width, 320);
    assert_int_equal(a->meta.h.job_id, 0);
    assert_true(a->meta.actual_time == 1.48);
    char want[64];
    snprintf(want, sizeof(want), "skipped %d black frames", fill);
    assert_string_equal(a->meta.reason, want);
    for (size_t i = 0; i < size; i++)
        if (e->data[a->offset + i] != fill)
            fail_msg("byte %zu differs", i);
    /* the same bytes through the fd, as a gateway would send them */
    unsigned char *via_fd = malloc(size);
    assert_int_equal(pread(e->fd, via_fd, size, (off_t)a->offset), (ssize_t)size);
    assert_memory_equal(via_fd, e->data + a->offset, size);
    free(via_fd);
    assert_int_equal(b->meta.kind, 2);
    assert_int_equal(b->length, 5);
    assert_memory_equal(e->data + b->offset, "WEBVT", 5);
    assert_int_equal(e->file_len, lseek(e->fd, 0, SEEK_END));
    tn_cache_entry_free(&e);
    assert_null(e);
}

static void miss(struct tn_cache *c, struct tn_cache_key k)
{
    struct tn_cache_entry *e = NULL;
    assert_int_equal(tn_cache_lookup(c, &k, &e), -ENOENT);
    assert_null(e);
}

static void test_hit_miss(void **state)
{
    (void)state;
    struct tn_cache *c = open_cache(0, TN_CACHE_WRITER);
    miss(c, nth_key(1));
    store(c, nth_key(1), 10000, 0xab);
    check_hit(c, nth_key(1), 10000, 0xab);
    miss(c, nth_key(2));
    /* an aborted store leaves nothing, not even its temp file */
    struct tn_cache_key k3 = nth_key(3);
    struct tn_cache_store *s = tn_cache_store_begin(c, &k3);
    struct tn_ipc_result m = {.size = 3};
    tn_cache_store_add(s, &m, "abc", 3);
    tn_cache_store_abort(&s);
    miss(c, k3);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "test -z \"$(find '%s' -name '.tmp.*')\"", dir);
    assert_int_equal(system(cmd), 0);
    /* a replaced entry gives the new bytes */
    store(c, nth_key(1), 20000, 0x11);
    check_hit(c, nth_key(1), 20000, 0x11);
    struct tn_cache_stats st;
    tn_cache_stats(c, &st);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 3);
    assert_int_equal(st.stores, 2);
    assert_int_equal(st.entries, 1);
    struct stat fst;
    assert_int_equal(stat(entry_path(nth_key(1)), &fst), 0);
    assert_int_equal(st.bytes, fst.st_size);
    tn_cache_close(&c);
    assert_null(c);
}

/* Damage the entry of k with `how`, then: a reader misses and leaves it, a
 * writer misses and deletes it. */
static void damaged(void (*how)(const char *path, off_t size))
{
    struct tn_cache *c = open_cache(0, TN_CACHE_WRITER);
    struct tn_cache *r = open_cache(0, TN_CACHE_READER);
    struct tn_cache_key k = nth_key(9);
    store(c, k, 30000, 0x5a);
    check_hit(r, k, 30000, 0x5a);
    struct stat st;
    assert_int_equal(stat(entry_path(k), &st), 0);
    how(entry_path(k), st.st_size);
    miss(r, k);
    assert_int_equal(access(entry_path(k), F_OK), 0);
    miss(c, k);
    assert_int_equal(access(entry_path(k), F_OK), -1);
    struct tn_cache_stats s;
    tn_cache_stats(c, &s);
    assert_int_equal(s.corrupt, 1);
    assert_int_equal(s.entries, 0);
    /* and the next store of that key works again */
    store(c, k, 100, 1);
    check_hit(c, k, 100, 1);
    tn_cache_close(&r);
    tn_cache_close(&c);
}

static void truncate_by_one(const char *path, off_t size)
{
    assert_int_equal(truncate(path, size - 1), 0);
}

static void truncate_to_data(const char *path, off_t size)
{
    (void)size;
    assert_int_equal(truncate(path, 20000), 0);
}

static void flip(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= 0x04;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void flip_in_data(const char *path, off_t size)
{
    (void)size;
    flip(path, 12345);
}

static void flip_in_record(const char *path, off_t size)
{
    /* the first record's width, well before the trailer */
    off_t rec0 =
        size - (off_t)sizeof(struct tn_cache_trailer) - 2 * (off_t)sizeof(struct tn_cache_record);
    flip(path, rec0 + (off_t)offsetof(struct tn_cache_record, meta.width));
}

static void flip_in_sum(const char *path, off_t size)
{
    flip(path, size - 1);
}

static void test_truncated(void **state)
{
    (void)state;
    damaged(truncate_by_one);
    damaged(truncate_to_data);
}

static void test_bit_flips(void **state)
{
    (void)state;
    damaged(flip_in_data);
    damaged(flip_in_record);
    damaged(flip_in_sum);
}

static void test_wrong_name(void **state)
{
    (void)state;
    /* an entry renamed to another key's name is not that key's answer */
    struct tn_cache *c = open_cache(0, TN_CACHE_WRITER);
    store(c, nth_key(1), 100, 1);
    char from[256];
    snprintf(from, sizeof(from), "%s", entry_path(nth_key(1)));
    struct tn_cache_key k2 = nth_key(2);
    char *to = entry_path(k2);
    char sub[256];
    snprintf(sub, sizeof(sub), "%.*s", (int)(strrchr(to, '/') - to), to);
    mkdir(sub, 0700);
    assert_int_equal(rename(from, to), 0);
    miss(c, k2);
    tn_cache_close(&c);
}

static uint64_t entry_size(void)
{
    struct stat st;
    assert_int_equal(stat(entry_path(nth_key(100)), &st), 0);
    return (uint64_t)st.st_size;
}

static void set_mtime(struct tn_cache_key k, time_t t)
{
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, entry_path(k), ts, 0), 0);
}

static bool present(int n)
{
    return access(entry_path(nth_key(n)), F_OK) == 0;
}

static void test_eviction(void **state)
{
    (void)state;
    /* size one entry first, then give the cap room for exactly three */
    struct tn_cache *c = open_cache(0, TN_CACHE_WRITER);
    store(c, nth_key(100), 4000, 1);
    uint64_t one = entry_size();
    tn_cache_close(&c);
    assert_int_equal(unlink(entry_path(nth_key(100))), 0);

    c = open_cache(3 * one + one / 2, TN_CACHE_WRITER);
    store(c, nth_key(1), 4000, 1);
    store(c, nth_key(2), 4000, 2);
    store(c, nth_key(3), 4000, 3);
    check_hit(c, nth_key(1), 4000, 1); /* 1 is now the most recently used */
    store(c, nth_key(4), 4000, 4);     /* over the cap: 2 goes */
    assert_true(present(1));
    assert_false(present(2));
    assert_true(present(3) && present(4));
    struct tn_cache_stats st;
    tn_cache_stats(c, &st);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.evicted_bytes, one);
    assert_int_equal(st.entries, 3);
    assert_true(st.bytes <= st.max_bytes);

    /* a hit in another process (a reader) counts as a use too */
    struct tn_cache *r = open_cache(0, TN_CACHE_READER);
    usleep(30000);                     /* past the filesystem clock's tick */
    check_hit(r, nth_key(3), 4000, 3); /* 3 was the oldest in c's index */
    store(c, nth_key(5), 4000, 5);     /* 3 is rechecked and kept: 1 goes */
    assert_true(present(3));
    assert_false(present(1));
    assert_true(present(4) && present(5));
    tn_cache_close(&r);

    /* an entry larger than half the cap is not stored at all */
    struct tn_cache_key big = nth_key(6);
    struct tn_cache_store *s = tn_cache_store_begin(c, &big);
    unsigned char *buf = calloc(1, 2 * one);
    struct tn_ipc_result m = {.size = 2 * one};
    tn_cache_store_add(s, &m, buf, 2 * one);
    free(buf);
    assert_true(tn_cache_store_commit(&s) < 0);
    assert_false(present(6));
    assert_true(present(3) && present(4) && present(5));
    tn_cache_close(&c);
}

static void test_reopen(void **state)
{
    (void)state;
    struct tn_cache *c = open_cache(0, TN_CACHE_WRITER);
    for (int i = 1; i <= 4; i++)
        store(c, nth_key(i), 4000, i);
    tn_cache_close(&c);
    uint64_t one;
    {
        struct stat st;
        assert_int_equal(stat(entry_path(nth_key(1)), &st), 0);
        one = (uint64_t)st.st_size;
    }
    /* the last uses as a restarted process finds them on disk: 3 oldest, then 1, 4, 2 */
    set_mtime(nth_key(3), 1000);
    set_mtime(nth_key(1), 2000);
    set_mtime(nth_key(4), 3000);
    set_mtime(nth_key(2), 4000);
    /* a crashed writer's temp file, old enough to be removed */
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s/00/.tmp.dead", dir);
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/00", dir);
    mkdir(sub, 0700);
    FILE *f = fopen(tmp, "w");
    fclose(f);
    struct timespec old[2] = {{1000, 0}, {1000, 0}};
    utimensat(AT_FDCWD, tmp, old, 0);

    c = open_cache(2 * one + one / 2, TN_CACHE_WRITER); /* room for two: 3 and 1 go */
    struct tn_cache_stats st;
    tn_cache_stats(c, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.evictions, 2);
    assert_false(present(3));
    assert_false(present(1));
    check_hit(c, nth_key(2), 4000, 2);
    check_hit(c, nth_key(4), 4000, 4);
    assert_int_equal(access(tmp, F_OK), -1);
    tn_cache_close(&c);
}

static void test_open_errors(void **state)
{
    (void)state;
    struct tn_cache *c = NULL;
    char err[256] = "";
    assert_int_equal(tn_cache_open(&c, "/nonexistent/a/b", 0, TN_CACHE_WRITER, err, sizeof(err)),
                     -ENOENT);
    assert_null(c);
    assert_non_null(strstr(err, "/nonexistent/a/b"));
    err[0] = '\0';
    assert_int_equal(tn_cache_open(&c, "/nonexistent/x", 0, TN_CACHE_READER, err, sizeof(err)),
                     -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/x"));
    /* a reader never creates or writes */
    c = open_cache(0, TN_CACHE_READER);
    assert_null(tn_cache_store_begin(c, &(struct tn_cache_key){{0}}));
    tn_cache_close(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_equivalent),
        cmocka_unit_test(test_key_different),
        cmocka_unit_test_setup_teardown(test_hit_miss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bit_flips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
