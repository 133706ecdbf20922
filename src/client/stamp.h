/*
 * How an output was made, so that a re-run skips only outputs that are up to
 * date: the same options, made from the same source (its size and mtime).
 *
 * The record is one line of ASCII, carried by the output itself where that
 * is simple: a PNG's tEXt chunk (keyword "thumbnail_client") just before IEND,
 * a JPEG's COM segment just after SOI ("thumbnail_client: ..."). It then
 * travels with the file, and the common formats need no second file. WebP
 * (whose simple format has room for one chunk only: metadata means rewriting
 * it as VP8X) gets a hidden sidecar ".NAME.thumbmeta" beside it instead. A
 * storyboard's WebVTT file is left exactly as the server made it: it is up to
 * date when its sprite sheet is (one call makes both); the walk skips hidden names, so a sidecar is
 * never taken for input. An output without a record (made by something else, or an older client) is
 * not known to be up to date: it is made again.
 */
#ifndef TN_CLIENT_STAMP_H
#define TN_CLIENT_STAMP_H

#include <stdbool.h>
#include <sys/stat.h>

#include "options.h"

/* The record for a source with this stat and these options; malloc'd, NULL on ENOMEM. */
char *tn_stamp_make(const struct tn_client_options *o, const struct stat *src);

/* Does the output at path carry exactly this record? */
bool tn_stamp_matches(const char *path, const char *stamp);

/*
 * Attach the record to the complete output. For a PNG or JPEG (by name), fd
 * is its temporary file, open for reading and writing, and the record goes in
 * before it is renamed; for anything else the sidecar of final_path is
 * written (call after the rename). Returns 0 or -errno (-EINVAL: not a PNG
 * ending in IEND or a JPEG starting with SOI; nothing changed).
 */
int tn_stamp_attach(const char *final_path, int fd, const char *stamp);

/* Is this output name one whose record lives inside the file (PNG, JPEG)? */
bool tn_stamp_inline(const char *final_path);

#endif
