/*
 * thumbnail_server: parse the configuration, open the log, take the pidfile,
 * detach if asked (--daemon), then run the master (master.c) until it stops.
 *
 * DESIGN. Everything that can refuse the start (bad flags, an unwritable log
 * file, a pidfile naming a live server) happens while the user's terminal is
 * still attached, so the error is seen and the exit status is 2. With
 * --daemon, the process the user started waits on a pipe until the detached
 * master has rewritten the pidfile with its own pid, and only then exits 0;
 * during that time the pidfile names the waiting process, which is alive, so a
 * second start refuses throughout.
 *
 * The pidfile is created complete and atomically: the pid is written to a
 * temporary file that is then link()ed to the final name (EEXIST if taken) or
 * rename()d over it, so another process never reads it half-written. A
 * pidfile naming a dead process, or a live one that is not thumbnail_server
 * (a recycled pid, e.g. pid 1 in a restarted container), is stale and replaced.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "master.h"
#include "metrics_http.h"
#include "proctitle.h"

#define PROG "thumbnail_server"

/* Before the master runs: to stderr (the user is there), and to the log file too. */
__attribute__((format(printf, 1, 2))) static void startup_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s\n", msg);
    if (tn_log_fd() != STDERR_FILENO)
        tn_log_error("%s", msg);
}

/* Started with 0, 1 or 2 closed, the first files opened would take those
 * numbers, and a stray write to stdout or stderr would land in them. */
static void ensure_std_fds(void)
{
    for (;;) {
        int fd = open("/dev/null", O_RDWR);
        if (fd < 0 || fd > STDERR_FILENO) {
            if (fd >= 0)
                close(fd);
            return;
        }
    }
}

/* The pid in a pidfile, 0 if absent, empty or not a pid. */
static pid_t read_pidfile(const char *path)
{
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf) - 1)) < 0 && errno == EINTR)
        ;
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *end;
    long v = strtol(buf, &end, 10);
    if (end == buf || (*end && *end != '\n') || v <= 0 || v > INT32_MAX)
        return 0;
    return (pid_t)v;
}

static bool read_comm(pid_t pid, char *buf, size_t len)
{
    char path[64];
    if (pid)
        snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/comm");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = 0;
    return true;
}

/* Does pid name a running thumbnail_server? When /proc cannot tell, assume so:
 * refusing to start is the safe mistake. */
static bool server_running(pid_t pid)
{
    char mine[64], theirs[64];
    if (pid == getpid())
        return false;
    if (kill(pid, 0) < 0 && errno != EPERM)
        return false;
    if (!read_comm(0, mine, sizeof(mine)) || !read_comm(pid, theirs, sizeof(theirs)))
        return true;
    return strcmp(mine, theirs) == 0;
}

/* Write "<pid>\n" to a new temporary file next to path; its name goes to tmp. */
static int write_temp_pidfile(const char *path, char *tmp, size_t len)
{
    char line[32];
    int n = snprintf(line, sizeof(line), "%d\n", (int)getpid());
    if ((size_t)snprintf(tmp, len, "%s.%d.tmp", path, (int)getpid()) >= len)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    ssize_t w;
    while ((w = write(fd, line, (size_t)n)) < 0 && errno == EINTR)
        ;
    int e = w < 0 ? -errno : w != n ? -EIO : 0;
    if (close(fd) < 0 && !e)
        e = -errno;
    if (e)
        unlink(tmp);
    return e;
}

/*
 * Create the pidfile with our pid, unless it names a running server: then
 * return -EEXIST with its pid in *other. A stale one is replaced.
 */
static int pidfile_acquire(const char *path, pid_t *other)
{
    char tmp[4200];
    int rc = write_temp_pidfile(path, tmp, sizeof(tmp));
    if (rc < 0)
        return rc;
    for (int attempt = 0; attempt < 5; attempt++) {
        if (link(tmp, path) == 0) {
            unlink(tmp);
            return 0;
        }
        if (errno != EEXIST) {
            rc = -errno;
            unlink(tmp);
            return rc;
        }
        pid_t pid = read_pidfile(path);
        if (pid > 0 && server_running(pid)) {
            unlink(tmp);
            *other = pid;
            return -EEXIST;
        }
        /* Stale (or empty: a crash between creating and writing cannot happen
         * with link(), so nobody is about to fill it in). */
        if (pid > 0)
            tn_log_info("removing stale pidfile %s (pid %d is not a running server)", path,
                        (int)pid);
        if (unlink(path) < 0 && errno != ENOENT) {
            rc = -errno;
            unlink(tmp);
            return rc;
        }
    }
    unlink(tmp);
    *other = 0;
    return -EEXIST; /* someone keeps recreating it */
}

/* After daemonizing: put the new pid in the pidfile we already hold. */
static int pidfile_update(const char *path)
{
    char tmp[4200];
    int rc = write_temp_pidfile(path, tmp, sizeof(tmp));
    if (rc < 0)
        return rc;
    if (rename(tmp, path) < 0) {
        rc = -errno;
        unlink(tmp);
        return rc;
    }
    return 0;
}

/* Remove the pidfile if it is still ours. */
static void pidfile_release(const char *path)
{
    if (read_pidfile(path) == getpid() && unlink(path) < 0)
        tn_log_warn("removing pidfile %s failed: %s", path, strerror(errno));
}

/*
 * Detach: fork, setsid, fork again (the daemon is not a session leader, so it
 * can never reacquire a controlling terminal), chdir("/"), stdio to /dev/null.
 * The umask is left as inherited: the operator's umask decides who may
 * connect to a unix: socket. The log fd stays open (a file; without
 * --log-file a daemon logs to syslog).
 *
 * Returns only in the daemon, with *notify_fd the pipe on which to report
 * "started" (one 0 byte) or an error text to the waiting original process.
 * The original process exits from here: 0 once told "started", 1 otherwise.
 */
static int daemonize(const char *pidfile, int *notify_fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = -errno;
        close(p[0]);
        close(p[1]);
        return e;
    }
    if (pid > 0) {
        /* The original process: wait for the daemon's word. */
        char msg[1024];
        ssize_t n, got = 0;
        close(p[1]);
        while ((size_t)got < sizeof(msg) - 1 &&
               ((n = read(p[0], msg + got, sizeof(msg) - 1 - (size_t)got)) > 0 ||
                (n < 0 && errno == EINTR)))
            got += n > 0 ? n : 0;
        waitpid(pid, NULL, 0); /* the intermediate child */
        if (got == 1 && msg[0] == 0)
            _exit(0);
        msg[got] = 0;
        if (got > 0)
            fprintf(stderr, PROG ": %s\n", msg);
        else
            fprintf(stderr, PROG ": the daemon exited during start-up; see the log file\n");
        if (pidfile)
            pidfile_release(pidfile); /* still ours if the daemon never took it over */
        _exit(1);
    }

    close(p[0]);
    if (setsid() < 0)
        _exit(1); /* cannot happen: a fresh child is never a group leader */
    pid = fork();
    if (pid < 0) {
        dprintf(p[1], "fork() failed while daemonizing: %s", strerror(errno));
        _exit(1);
    }
    if (pid > 0)
        _exit(0);

    tn_log_set_role("master"); /* new pid */
    if (chdir("/") < 0) {
        dprintf(p[1], "chdir(\"/\") failed: %s", strerror(errno));
        _exit(1);
    }
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) {
        dprintf(p[1], "open(/dev/null) failed: %s", strerror(errno));
        _exit(1);
    }
    for (int fd = 0; fd <= 2; fd++)
        dup2(null, fd); /* dup2 clears O_CLOEXEC on the copies */
    if (null > 2)
        close(null);
    *notify_fd = p[1];
    return 0;
}

int main(int argc, char **argv)
{
    struct tn_config cfg;
    char err[1024];
    int notify_fd = -1, rc;

    tn_proctitle_init(argc, argv); /* before the parser keeps pointers into argv */
    ensure_std_fds();
    rc = tn_config_parse(&cfg, argc, argv, err, sizeof(err));
    if (rc == 1)
        return 0;
    if (rc < 0) {
        fprintf(stderr, PROG ": %s\nTry '" PROG " --help' for more information.\n", err);
        return 2;
    }
    rc = tn_log_init("master", cfg.log_level, cfg.log_file);
    if (rc < 0) {
        fprintf(stderr, PROG ": cannot open log file '%s': %s\n", cfg.log_file, strerror(-rc));
        return 2;
    }
    tn_log_set_format(cfg.log_format);
    if (cfg.log_syslog)
        tn_log_use_syslog(); /* a daemon without --log-file */

    if (cfg.pidfile) {
        pid_t other = 0;
        rc = pidfile_acquire(cfg.pidfile, &other);
        if (rc == -EEXIST && other > 0) {
            startup_error("already running as pid %d (pidfile %s)", (int)other, cfg.pidfile);
            return 2;
        }
        if (rc < 0) {
            startup_error("cannot create pidfile %s: %s", cfg.pidfile, strerror(-rc));
            return 2;
        }
    }

    /* Bound here, while a taken port can still refuse the start; the master
     * keeps it for every metrics process it forks. */
    if (cfg.metrics_listen) {
        cfg.metrics_fd =
            tn_metrics_http_listen("--metrics-listen", cfg.metrics_listen, err, sizeof(err));
        if (cfg.metrics_fd < 0) {
            startup_error("%s", err);
            if (cfg.pidfile)
                pidfile_release(cfg.pidfile);
            return 2;
        }
    }
    if (cfg.http_listen) {
        cfg.http_fd = tn_metrics_http_listen("--http-listen", cfg.http_listen, err, sizeof(err));
        if (cfg.http_fd < 0) {
            startup_error("%s", err);
            if (cfg.pidfile)
                pidfile_release(cfg.pidfile);
            return 2;
        }
    }

    if (cfg.daemon) {
        rc = daemonize(cfg.pidfile, &notify_fd);
        if (rc < 0) {
            startup_error("daemonizing failed: %s", strerror(-rc));
            if (cfg.pidfile)
                pidfile_release(cfg.pidfile);
            return 1;
        }
        if (cfg.pidfile && (rc = pidfile_update(cfg.pidfile)) < 0) {
            tn_log_error("writing pidfile %s failed: %s", cfg.pidfile, strerror(-rc));
            dprintf(notify_fd, "writing pidfile %s failed: %s", cfg.pidfile, strerror(-rc));
            _exit(1); /* the original process removes the pidfile, still naming it */
        }
        /* Started: the original process may exit 0. Nothing reads this pipe
         * afterwards, and no child must inherit it. */
        char ok = 0;
        while (write(notify_fd, &ok, 1) < 0 && errno == EINTR)
            ;
        close(notify_fd);
    }

    rc = tn_master_run(&cfg);
    if (cfg.pidfile)
        pidfile_release(cfg.pidfile);
    return rc;
}
