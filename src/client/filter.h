/*
 * Which files of a folder are sent: --include/--exclude globs, and by default
 * none that is plainly not a video.
 *
 * "Plainly" means both: the extension says subtitles, text, a still image or
 * an archive, and the first bytes agree (a JPEG's magic, a PNG's, no NUL in
 * what should be text...). A file whose content disagrees with its name, or
 * whose extension is unknown, is sent: the server is the judge of what it can
 * decode. GIF is sent too: an animated GIF is a short video and ffmpeg decodes
 * it. A file matched by an --include glob is always sent.
 */
#ifndef TN_CLIENT_FILTER_H
#define TN_CLIENT_FILTER_H

#include <stdbool.h>
#include <stddef.h>

#include "options.h"

/*
 * By name: NULL = not excluded; else why it is skipped ("excluded by --exclude
 * '*.nfo'"), written into buf. *included tells whether an --include glob
 * matched (then the content is not judged). A glob without '/' matches the
 * file name, one with '/' the path relative to INPUT_DIR; case-insensitive.
 */
const char *tn_filter_name(const struct tn_client_options *o, const char *rel, bool *included,
                           char *buf, size_t len);

/* By content (fd open on the file): NULL = send it; else why not, into buf. */
const char *tn_filter_content(const char *rel, int fd, char *buf, size_t len);

#endif
