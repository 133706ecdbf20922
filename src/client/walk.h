/*
 * Listing the input tree: every regular file under a root, sorted.
 *
 * Hidden entries (a name starting with '.') are skipped, files and directories
 * alike. Symbolic links to regular files are followed; links to directories
 * are not, so a link cycle cannot make the walk loop. Entries that cannot be
 * read are kept, with their errno, so that the caller can report them as
 * failures in order with the rest.
 */
#ifndef TN_CLIENT_WALK_H
#define TN_CLIENT_WALK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

struct tn_walk_entry {
    char *rel;     /* path relative to the root, '/'-separated; owned by the list */
    uint64_t size; /* st_size at walk time (0 for an error entry) */
    int err;       /* 0, or the errno that made this file/directory unreadable */
};

struct tn_walk_list {
    struct tn_walk_entry *v;
    size_t n;
    size_t cap;
};

/*
 * Append every regular file under root to *out, sorted by rel (strcmp). A
 * directory with the same st_dev/st_ino as *skip (e.g. the output directory
 * inside the input one) is not entered; skip may be NULL.
 * Returns 0, or -errno if the root itself cannot be opened (message in err)
 * or memory ran out. On error *out holds what was found so far: free it.
 */
int tn_walk(const char *root, const struct stat *skip, struct tn_walk_list *out, char *err,
            size_t errlen);

/* Free the entries and the array; NULL-safe; *l is reset to empty. */
void tn_walk_free(struct tn_walk_list *l);

#endif
