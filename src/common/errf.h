/*
 * Error text written into a caller's buffer (the Redis anetSetError habit):
 * a function that can fail for a reason the user must read takes
 * `char *err, size_t errlen` and returns tn_errf(err, errlen, code, ...).
 */
#ifndef TN_ERRF_H
#define TN_ERRF_H

#include <stddef.h>

/* Formats into err (truncated to errlen bytes, NUL-terminated; nothing is
 * written when errlen is 0) and returns code, so a caller can write
 * `return tn_errf(err, errlen, -1, "...", ...);`. */
__attribute__((format(printf, 4, 5))) int tn_errf(char *err, size_t errlen, int code,
                                                  const char *fmt, ...);

#endif
