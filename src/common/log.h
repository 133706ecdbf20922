/*
 * Logging: one line per event, "2026-11-22T03:10:00.123Z INFO front 815: text".
 * The role ("master", "worker#2", "front", "client") and the pid are set once per
 * process with tn_log_set_role() after fork. Writes go to stderr or to the log
 * file with one write(2) per line (O_APPEND), so lines from several processes
 * sharing the file never interleave.
 *
 * --log-format json makes every line one JSON object: {"ts", "level", "role",
 * "pid", "msg"}, and for access lines (tn_log_access) the call's fields too.
 * With syslog (a daemon without --log-file) lines go to syslog(3), facility
 * LOG_DAEMON, ident "thumbnail_server", without the timestamp syslog adds.
 */
#ifndef TN_LOG_H
#define TN_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

enum tn_log_level { TN_LOG_ERROR = 0, TN_LOG_WARN, TN_LOG_INFO, TN_LOG_DEBUG };
enum tn_log_format { TN_LOG_TEXT = 0, TN_LOG_JSON };

/* path NULL = stderr. Returns 0 or -errno (then logging stays on stderr). */
int tn_log_init(const char *role, int level, const char *path);
/* TN_LOG_TEXT (default) or TN_LOG_JSON, for every line from now on. */
void tn_log_set_format(int format);
/* Log to syslog (LOG_DAEMON) instead of stderr or the file. Call before forking. */
void tn_log_use_syslog(void);
/* With syslog: connect to /dev/log now rather than at the first line (a worker
 * does this before its seccomp filter forbids socket and connect). */
void tn_log_connect(void);
/* After fork: new role name, pid re-read (and the syslog connection reopened:
 * the master's is closed with the fds a child does not own). */
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

/* One finished call, for the access log. Strings may be NULL. */
struct tn_log_access {
    const char *method;  /* "thumbnail.v1.Thumbnailer/Generate" */
    const char *peer;    /* "ipv4:127.0.0.1:5312" */
    const char *file;    /* the client's file name */
    uint64_t bytes_in;   /* upload bytes received */
    uint64_t bytes_out;  /* image bytes sent */
    unsigned thumbnails; /* sent completely */
    double ms;           /* from accepting the call to its end */
    const char *status;  /* "OK", "INVALID_ARGUMENT", ... */
    const char *message; /* the status message of a failed call */
    const char *mode;    /* how the video came: "pull", "local"; NULL = uploaded */
    bool cache_hit;      /* answered from the result cache, without a worker */
};
void tn_log_access(int level, const struct tn_log_access *a);

#define tn_log_error(...) tn_log(TN_LOG_ERROR, __VA_ARGS__)
#define tn_log_warn(...) tn_log(TN_LOG_WARN, __VA_ARGS__)
#define tn_log_info(...) tn_log(TN_LOG_INFO, __VA_ARGS__)
#define tn_log_debug(...)                                                                          \
    do {                                                                                           \
        if (tn_log_level() >= TN_LOG_DEBUG)                                                        \
            tn_log(TN_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
