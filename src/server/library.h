/*
 * Library mode, the listing (library.c): the files and folders under
 * --media-root, jailed as local mode is, sorted by path; and the List call
 * that pages through them. Front-internal: the CQ thread calls all of it.
 */
#ifndef TN_LIBRARY_H
#define TN_LIBRARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct front;

/* Entries one listing may hold (a recursive one too): bounds the CQ thread's
 * time per call (~30 ms per 10 000 entries on a warm cache). */
#define LIBRARY_MAX_ENTRIES 200000

struct tn_lib_entry {
    char *path; /* relative to --media-root, '/'-separated; owned */
    uint64_t size;
    int64_t mtime_ns;
    bool is_dir;
};

/*
 * The entries of `dir` (relative to --media-root, "" = the root) whose name
 * matches `glob` (fnmatch(3); "" = all; folders always, unless files_only),
 * recursively if asked, sorted by path in byte order. Returns TN_OK with
 * *out (free with tn_lib_entries_free()) and *n set, or a TN_* status with
 * msg set in the client's terms (the jail's, as local mode words them).
 */
int tn_lib_list(struct front *f, const char *dir, bool recursive, const char *glob, bool files_only,
                struct tn_lib_entry **out, size_t *n, char *msg, size_t len);
void tn_lib_entries_free(struct tn_lib_entry *v, size_t n);

/* The List call: keep one request outstanding; a new call; its end. */
void request_list(struct front *f);
void on_new_list(void *owner, bool ok);
void on_list_done(void *owner);

#endif
