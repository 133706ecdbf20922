/*
 * JSON for the whole project (the probe result, the log's JSON lines) is
 * written with jansson. Its strings must be UTF-8; what we put in them comes
 * from files and peers (container tags, file names) and may be anything, so
 * every string goes through this module.
 */
#ifndef TN_JSON_H
#define TN_JSON_H

#include <stddef.h>

#include <jansson.h>

/*
 * A new JSON string from s (NULL = JSON null): bytes that are not well-formed
 * UTF-8 become U+FFFD, and the text is cut at a character boundary to at most
 * max bytes of UTF-8 (0 = no limit). NULL only when out of memory.
 */
json_t *tn_json_str(const char *s, size_t max);

/* json_object_set_new(), NULL-safe for the value (a NULL value = out of memory: -1). */
int tn_json_set(json_t *obj, const char *key, json_t *value);

#endif
