/*
 * Output files: naming, directories, and atomic writes.
 *
 * A thumbnail is written to a hidden temporary file next to its final name
 * (".name.png.tmp.<pid>") and renamed into place only when complete, so a
 * reader (or a crash, or a failed call) never leaves a half-written PNG under
 * the final name. Hidden names are also skipped by the input walk, so an
 * output directory inside the input directory does not feed itself.
 */
#ifndef TN_CLIENT_OUTPUT_H
#define TN_CLIENT_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The output path of thumbnail `index` (0-based) of `count` for input `rel`:
 * out_dir/rel minus its extension + "." + ext (e.g. "png"), or "-<index+1>.<ext>"
 * when count > 1. Only the last path component loses its extension
 * ("a.b/c" -> "a.b/c.png"). Returns a malloc'd string, or NULL on ENOMEM.
 */
char *tn_output_path(const char *out_dir, const char *rel, const char *ext, size_t index,
                     size_t count);

/* rel minus the extension of its last component, malloc'd (NULL on ENOMEM). */
char *tn_output_stem(const char *rel);

/* mkdir -p of the directory holding `file`. Returns 0 or -errno. */
int tn_output_make_parent(const char *file);

/*
 * Would tn_output_make_parent(file) likely succeed? Checks, without creating
 * anything, that the nearest existing ancestor of file's directory is a
 * directory we may write into. Lets a job fail before a long upload rather
 * than after it. Returns 0 or -errno (-ENOTDIR, -EACCES, ...).
 */
int tn_output_check_parent(const char *file);

/* mkdir -p of `dir` itself. Returns 0 or -errno. */
int tn_output_make_dir(const char *dir);

struct tn_output_file {
    char *final; /* owned */
    char *tmp;   /* owned; NULL when no temporary exists */
    int fd;      /* -1 when closed */
    uint64_t written;
};

/* Prepare *f for `final` (copied); no file is created yet. Returns 0 or -ENOMEM. */
int tn_output_init(struct tn_output_file *f, const char *final);

/* Create (truncate) the temporary file. Returns 0 or -errno. */
int tn_output_open(struct tn_output_file *f);

/* Append n bytes (EINTR and short writes handled). Returns 0 or -errno. */
int tn_output_write(struct tn_output_file *f, const void *p, size_t n);

/*
 * Close the temporary and rename it to the final name. Without `overwrite` an
 * existing final file is never replaced (RENAME_NOREPLACE, or link+unlink
 * where the filesystem lacks it) and -EEXIST is returned. On any error the
 * temporary is removed. Returns 0 or -errno.
 */
int tn_output_commit(struct tn_output_file *f, bool overwrite);

/* Close and unlink the temporary if any; the final name is untouched. Idempotent. */
void tn_output_discard(struct tn_output_file *f);

/* tn_output_discard + free the names. NULL-safe, idempotent. */
void tn_output_free(struct tn_output_file *f);

#endif
