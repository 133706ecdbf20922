#include "log.h"

#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

static int log_level = TN_LOG_INFO;
static int log_fd = STDERR_FILENO; /* owned here when it is a file (log_path != NULL) */
static char log_path[4096];
static char log_role[32] = "?";
static pid_t log_pid;
static int log_format = TN_LOG_TEXT;
static int log_syslog; /* lines go to syslog(3), not log_fd */

static const char *level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

static int open_log(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

int tn_log_init(const char *role, int level, const char *path)
{
    log_level = level;
    tn_log_set_role(role);
    if (!path)
        return 0;
    int fd = open_log(path);
    if (fd < 0)
        return fd;
    snprintf(log_path, sizeof(log_path), "%s", path);
    log_fd = fd;
    return 0;
}

void tn_log_set_role(const char *role)
{
    snprintf(log_role, sizeof(log_role), "%s", role);
    log_pid = getpid();
    if (log_syslog) {
        /* A child closes the fds it does not own (the master's syslog socket
         * among them) right after this: drop it now, while it is still ours;
         * the next syslog() connects afresh. */
        closelog();
        openlog("thumbnail_server", LOG_PID, LOG_DAEMON);
    }
}

void tn_log_connect(void)
{
    if (log_syslog)
        openlog("thumbnail_server", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void tn_log_set_format(int format)
{
    log_format = format == TN_LOG_JSON ? TN_LOG_JSON : TN_LOG_TEXT;
}

void tn_log_use_syslog(void)
{
    log_syslog = 1;
    openlog("thumbnail_server", LOG_PID, LOG_DAEMON);
}

int tn_log_reopen(void)
{
    if (!log_path[0])
        return 0;
    int fd = open_log(log_path);
    if (fd < 0)
        return fd;
    /* dup2 keeps the number stable, so an fd cached by a caller stays right. */
    if (dup2(fd, log_fd) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    close(fd);
    return 0;
}

int tn_log_fd(void)
{
    return log_fd;
}

int tn_log_level(void)
{
    return log_level;
}

int tn_log_level_parse(const char *s)
{
    for (int i = 0; i <= TN_LOG_DEBUG; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return TN_LOG_WARN;
    return -1;
}

/* A line being built, always NUL-terminated, cut short (not overflowed) when full. */
struct line {
    char buf[4096];
    size_t len;
};

__attribute__((format(printf, 2, 0))) static void vput(struct line *l, const char *fmt, va_list ap)
{
    size_t room = sizeof(l->buf) - l->len;
    int n = vsnprintf(l->buf + l->len, room, fmt, ap);
    if (n < 0)
        return;
    l->len += (size_t)n < room ? (size_t)n : room - 1;
}

__attribute__((format(printf, 2, 3))) static void put(struct line *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vput(l, fmt, ap);
    va_end(ap);
}

/* A JSON line: the object serialised into l (one line of at most its
 * 4 KiB, newline not included), the long strings cut shorter until it fits,
 * so a long message is cut but the line stays one valid JSON object.
 * fill(obj, limit, opaque) sets the fields, strings cut to limit bytes. */
static void put_json(struct line *l, int (*fill)(json_t *, size_t, const void *),
                     const void *opaque)
{
    for (size_t limit = sizeof(l->buf) - 512; limit >= 16; limit /= 2) {
        json_t *o = json_object();
        if (!o || fill(o, limit, opaque) < 0) {
            json_decref(o);
            break;
        }
        size_t n = json_dumpb(o, l->buf, sizeof(l->buf) - 2, JSON_COMPACT | JSON_REAL_PRECISION(6));
        json_decref(o);
        if (n > 0 && n <= sizeof(l->buf) - 2) {
            l->len = n;
            l->buf[n] = 0;
            return;
        }
    }
    /* out of memory: a line that still parses */
    l->len =
        (size_t)snprintf(l->buf, sizeof(l->buf), "{\"msg\":\"(log line lost: out of memory)\"}");
}

static const char *json_levels[] = {"error", "warn", "info", "debug"};

static void timestamp(char *ts, size_t len)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
}

/* The fields every JSON line starts with. */
static int json_head(json_t *o, int level, const char *msg, size_t limit)
{
    char ts[64];
    timestamp(ts, sizeof(ts));
    return tn_json_set(o, "ts", json_string(ts)) |
           tn_json_set(o, "level", json_string(json_levels[level])) |
           tn_json_set(o, "role", tn_json_str(log_role, 0)) |
           tn_json_set(o, "pid", json_integer(log_pid)) |
           tn_json_set(o, "msg", tn_json_str(msg, limit));
}

/* The start of a text line: "TS LEVEL role pid: ". Syslog adds its own
 * timestamp, pid and ident. */
static void put_prefix(struct line *l, int level)
{
    char ts[64];
    timestamp(ts, sizeof(ts));
    if (log_syslog)
        put(l, "%s %s: ", level_names[level], log_role);
    else
        put(l, "%s %s %s %d: ", ts, level_names[level], log_role, (int)log_pid);
}

static void write_line(int level, struct line *l)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    if (log_syslog) {
        syslog(prio[level], "%s", l->buf);
        return;
    }
    if (l->len > sizeof(l->buf) - 2)
        l->len = sizeof(l->buf) - 2; /* truncated: still one line */
    l->buf[l->len++] = '\n';
    /* One write per line: atomic with O_APPEND, so processes never interleave. */
    while (write(log_fd, l->buf, l->len) < 0 && errno == EINTR)
        ;
}

struct plain_line {
    int level;
    struct line msg;
};

static int fill_plain(json_t *o, size_t limit, const void *opaque)
{
    const struct plain_line *p = opaque;
    return json_head(o, p->level, p->msg.buf, limit);
}

void tn_vlog(int level, const char *fmt, va_list ap)
{
    if (level > log_level)
        return;
    int saved = errno;
    struct line l = {.len = 0};
    if (log_format == TN_LOG_JSON) {
        struct plain_line p = {.level = level};
        vput(&p.msg, fmt, ap);
        put_json(&l, fill_plain, &p);
    } else {
        put_prefix(&l, level);
        vput(&l, fmt, ap);
    }
    write_line(level, &l);
    errno = saved;
}

void tn_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tn_vlog(level, fmt, ap);
    va_end(ap);
}

struct access_line {
    int level;
    const struct tn_log_access *a;
    const char *method, *status, *message;
    char msg[256];
};

/* Short fields first; the long ones (peer, file, message) are cut to limit. */
static int fill_access(json_t *o, size_t limit, const void *opaque)
{
    const struct access_line *x = opaque;
    const struct tn_log_access *a = x->a;
    return json_head(o, x->level, x->msg, limit) | tn_json_set(o, "type", json_string("access")) |
           tn_json_set(o, "method", tn_json_str(x->method, limit)) |
           tn_json_set(o, "status", tn_json_str(x->status, limit)) |
           tn_json_set(o, "bytes_in", json_integer((json_int_t)a->bytes_in)) |
           tn_json_set(o, "bytes_out", json_integer((json_int_t)a->bytes_out)) |
           tn_json_set(o, "thumbnails", json_integer(a->thumbnails)) |
           tn_json_set(o, "duration_ms", json_real(round(a->ms * 10) / 10)) |
           tn_json_set(o, "peer", tn_json_str(a->peer ? a->peer : "", limit)) |
           tn_json_set(o, "file", tn_json_str(a->file ? a->file : "", limit)) |
           tn_json_set(o, "mode", tn_json_str(a->mode ? a->mode : "upload", limit)) |
           tn_json_set(o, "cache_hit", json_boolean(a->cache_hit)) |
           tn_json_set(o, "message", tn_json_str(x->message, limit));
}

void tn_log_access(int level, const struct tn_log_access *a)
{
    if (level > log_level)
        return;
    int saved = errno;
    const char *method = a->method ? a->method : "?";
    /* Our own service's methods by their short name ("Generate"), others in full. */
    static const char own[] = "thumbnail.v1.Thumbnailer/";
    const char *name =
        strncmp(method, own, sizeof(own) - 1) == 0 ? method + sizeof(own) - 1 : method;
    const char *status = a->status ? a->status : "?";
    bool failed = a->message && *a->message && strcmp(status, "OK") != 0;
    struct line l = {.len = 0};
    if (log_format == TN_LOG_JSON) {
        struct access_line x = {.level = level, .a = a, .method = method, .status = status};
        snprintf(x.msg, sizeof(x.msg), "%s %s", name, status);
        x.message = failed ? a->message : "";
        put_json(&l, fill_access, &x);
    } else {
        put_prefix(&l, level);
        put(&l,
            "%s peer=%s file=\"%s\"%s%s%s in=%" PRIu64 " out=%" PRIu64 " thumbnails=%u ms=%.1f "
            "status=%s%s%s",
            name, a->peer ? a->peer : "-", a->file ? a->file : "", a->mode ? " mode=" : "",
            a->mode ? a->mode : "", a->cache_hit ? " cache=hit" : "", a->bytes_in, a->bytes_out,
            a->thumbnails, a->ms, status, failed ? " message=" : "", failed ? a->message : "");
    }
    write_line(level, &l);
    errno = saved;
}
