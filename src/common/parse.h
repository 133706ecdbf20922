/*
 * Parsing of the values users type on command lines and in env variables.
 * All functions return 0 on success or -EINVAL (bad syntax) / -ERANGE (out of
 * range) and leave *out untouched on failure. Whole-string matches only:
 * trailing garbage is an error.
 */
#ifndef TN_PARSE_H
#define TN_PARSE_H

#include <stdint.h>

#include "ipc.h"

/* "1048576", "64K", "1M", "1MiB", "2G", "2GB" (binary multiples; case-insensitive). */
int tn_parse_size(const char *s, uint64_t *out);
/* Unsigned integer in [min, max]. */
int tn_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Duration in seconds: "30", "2.5", "500ms", "30s", "2m", "1h". Must be >= 0. */
int tn_parse_duration(const char *s, double *out);
/* Time point: "12.5" (seconds), "10%" (percent, 0..100), "1:30" or "1:02:03.5". */
int tn_parse_time_point(const char *s, struct tn_time_point *out);

#endif
