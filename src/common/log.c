#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

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

/* Room every JSON string leaves after itself for the keys, numbers and
 * closing quotes that follow it in the line: a long string is cut short, but
 * the line stays one valid JSON object. */
#define JSON_TAIL_RESERVE 256

/* s as the body of a JSON string: quotes, backslashes and control characters
 * escaped; bytes that are not UTF-8 become U+FFFD, so every line parses. */
static void put_json_str(struct line *l, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p && l->len + 8 + JSON_TAIL_RESERVE < sizeof(l->buf)) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            put(l, "\\%c", c);
            p++;
        } else if (c == '\n') {
            put(l, "\\n");
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            put(l, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            l->buf[l->len++] = (char)c;
            p++;
        } else {
            /* a whole, valid UTF-8 sequence, copied as is */
            int n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            int ok = n > 0;
            for (int i = 1; ok && i < n; i++)
                ok = (p[i] & 0xc0) == 0x80;
            if (ok) {
                memcpy(l->buf + l->len, p, (size_t)n);
                l->len += (size_t)n;
                p += n;
            } else {
                put(l, "\\ufffd");
                p++;
            }
        }
    }
    l->buf[l->len] = 0;
}

static const char *json_levels[] = {"error", "warn", "info", "debug"};

/* The start of a line: text "TS LEVEL role pid: ", JSON '{"ts":...,"msg":"'.
 * Syslog adds its own timestamp, pid and ident. */
static void put_prefix(struct line *l, int level)
{
    char ts[64];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    if (log_format == TN_LOG_JSON)
        put(l, "{\"ts\":\"%s\",\"level\":\"%s\",\"role\":\"%s\",\"pid\":%d,\"msg\":\"", ts,
            json_levels[level], log_role, (int)log_pid);
    else if (log_syslog)
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

void tn_vlog(int level, const char *fmt, va_list ap)
{
    if (level > log_level)
        return;
    int saved = errno;
    struct line l = {.len = 0};
    put_prefix(&l, level);
    if (log_format == TN_LOG_JSON) {
        struct line msg = {.len = 0};
        vput(&msg, fmt, ap);
        put_json_str(&l, msg.buf);
        put(&l, "\"}");
    } else {
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
    put_prefix(&l, level);
    if (log_format == TN_LOG_JSON) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s %s", name, status);
        put_json_str(&l, msg);
        /* short fields first: if a long one is cut, these are whole */
        put(&l, "\",\"type\":\"access\",\"method\":\"");
        put_json_str(&l, method);
        put(&l, "\",\"status\":\"");
        put_json_str(&l, status);
        put(&l,
            "\",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
            ",\"thumbnails\":%u,\"duration_ms\":%.1f,\"peer\":\"",
            a->bytes_in, a->bytes_out, a->thumbnails, a->ms);
        put_json_str(&l, a->peer);
        put(&l, "\",\"file\":\"");
        put_json_str(&l, a->file);
        put(&l, "\",\"mode\":\"");
        put_json_str(&l, a->mode ? a->mode : "upload");
        put(&l, "\",\"message\":\"");
        put_json_str(&l, failed ? a->message : "");
        put(&l, "\"}");
    } else {
        put(&l,
            "%s peer=%s file=\"%s\"%s%s in=%" PRIu64 " out=%" PRIu64 " thumbnails=%u ms=%.1f "
            "status=%s%s%s",
            name, a->peer ? a->peer : "-", a->file ? a->file : "", a->mode ? " mode=" : "",
            a->mode ? a->mode : "", a->bytes_in, a->bytes_out, a->thumbnails, a->ms, status,
            failed ? " message=" : "", failed ? a->message : "");
    }
    write_line(level, &l);
    errno = saved;
}
