/*
 * The gallery: the HTML page the HTTP gateway serves at `GET /` and
 * `GET /browse/{dir}`. The folder listing is rendered here, on the server, from
 * what the List RPC returned, so the plain list (folders, then video tiles with
 * their thumbnails as <img>) works without JavaScript; the page's script
 * (embedded in the same template, gallery.html) only adds the storyboard
 * scrubbing, the probe panel and the animated preview.
 *
 * Every name is escaped twice over: percent-encoded in URLs (each '/'-separated
 * segment) and HTML-escaped in text and attributes.
 */
#ifndef TN_GALLERY_H
#define TN_GALLERY_H

#include <stddef.h>

#include "thumbnail.pb-c.h"

/* The URL prefix of folder pages; "/" alone is the root's page. */
#define TN_GALLERY_BROWSE "/browse/"

/*
 * The page for folder dir ("" = the root of --media-root; '/'-separated, no
 * leading or trailing '/') listing entries, one non-recursive List page of dir
 * as the front returned it (paths relative to the root, any order): folders
 * first, then files, each group by name. Files with a video extension become
 * tiles with a lazy-loaded thumbnail; the others are listed without one.
 * next_page_token: the List response's (NULL or "" = none), rendered as a
 * "more" link to TN_GALLERY_BROWSE "{dir}?page={token}".
 *
 * On success returns 0 and the page in *html (NUL-terminated, malloc'd: the
 * caller frees it) and its length in *len; -ENOMEM otherwise.
 */
int tn_gallery_render(const char *dir, const Thumbnail__V1__ListEntry *const *entries, size_t n,
                      const char *next_page_token, char **html, size_t *len);

/* The Content-Type of the page. */
#define TN_GALLERY_CONTENT_TYPE "text/html; charset=utf-8"

#endif
