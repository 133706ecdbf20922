/*
 * Logging: one line per event, "2026-11-22T03:10:00.123Z INFO front 815: text".
 * The role ("master", "worker#2", "front", "client") and the pid are set once per
 * process with tn_log_set_role() after fork. Writes go to stderr or to the log
 * file with one write(2) per line (O_APPEND), so lines from several processes
 * sharing the file never interleave.
 */
#ifndef TN_LOG_H
#define TN_LOG_H

#include <stdarg.h>

enum tn_log_level { TN_LOG_ERROR = 0, TN_LOG_WARN, TN_LOG_INFO, TN_LOG_DEBUG };

/* path NULL = stderr. Returns 0 or -errno (then logging stays on stderr). */
int tn_log_init(const char *role, int level, const char *path);
/* After fork: new role name, pid re-read. */
void tn_log_set_role(const char *role);
/* SIGUSR1: reopen the log file (logrotate). Returns 0 or -errno. */
int tn_log_reopen(void);
/* The fd logging writes to (2 or the file), e.g. to keep it across daemon(). */
int tn_log_fd(void);
int tn_log_level(void);
/* "error" | "warn" | "info" | "debug" -> level; -1 if unknown. */
int tn_log_level_parse(const char *s);

void tn_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tn_vlog(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#define tn_log_error(...) tn_log(TN_LOG_ERROR, __VA_ARGS__)
#define tn_log_warn(...) tn_log(TN_LOG_WARN, __VA_ARGS__)
#define tn_log_info(...) tn_log(TN_LOG_INFO, __VA_ARGS__)
#define tn_log_debug(...)                                                                          \
    do {                                                                                           \
        if (tn_log_level() >= TN_LOG_DEBUG)                                                        \
            tn_log(TN_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
