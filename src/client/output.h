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
 * The name of an output relative to the output directory, without its own
 * extension. Without a template: rel minus its extension ("a.b/c.mp4" ->
 * "a.b/c"), or rel itself when keep_ext (two inputs "c.mp4" and "c.avi" would
 * otherwise share "c"). A template (--name) expands {path} (rel minus its
 * extension), {stem} (its file name minus the extension), {ext} (the
 * extension, no dot), {index} (`index`, 1-based) and {time} (`time`, may be
 * NULL when unknown). index 0 = a single output.
 * Returns a malloc'd string, or NULL with errno EINVAL (an unknown {field},
 * {time} without a time, an absolute name or a ".." component) or ENOMEM.
 */
char *tn_output_name(const char *tmpl, const char *rel, bool keep_ext, size_t index,
                     const char *time);

/* Does the template name each of several outputs apart ({index} or {time})? */
bool tn_output_template_numbers(const char *tmpl);

/* dir + "/" + name + suffix, malloc'd (NULL on ENOMEM). */
char *tn_output_join(const char *dir, const char *name, const char *suffix);

/*
 * Remove ".NAME.png.tmp.PID" files (and .jpg, .webp, .vtt) under dir, recursively, left by a
 * client that died before renaming them: those whose PID no longer runs.
 * Returns how many were removed.
 */
size_t tn_output_clean_stale(const char *dir);

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

/* Create (truncate) the temporary file; for the final name "-" (standard
 * output) an anonymous memory file, copied to stdout on commit. Returns 0 or -errno. */
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
