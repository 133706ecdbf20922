#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_level = TN_LOG_INFO;
static int log_fd = STDERR_FILENO; /* owned here when it is a file (log_path != NULL) */
static char log_path[4096];
static char log_role[32] = "?";
static pid_t log_pid;

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

void tn_vlog(int level, const char *fmt, va_list ap)
{
    if (level > log_level)
        return;
    int saved = errno;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s %d: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), level_names[level], log_role, (int)log_pid);
    if (n < 0)
        goto out;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (m < 0)
        goto out;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2; /* truncated: still one line */
    line[len++] = '\n';
    /* One write per line: atomic with O_APPEND, so processes never interleave. */
    while (write(log_fd, line, len) < 0 && errno == EINTR)
        ;
out:
    errno = saved;
}

void tn_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tn_vlog(level, fmt, ap);
    va_end(ap);
}
