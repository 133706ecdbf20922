/*
 * The jailed open of local mode (media_root.h): a client's path resolved under
 * --media-root, refused in the client's terms when it is absolute, climbs out
 * with "..", leaves through a symlink, or is not a non-empty regular file.
 */
#include "media_root.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include "status.h"

/* openat2() has no glibc wrapper in Debian 12; -ENOSYS on kernels before 5.6. */
static int openat2_beneath(int root, const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)flags,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    long fd;
    do
        fd = syscall(SYS_openat2, root, path, &how, sizeof(how));
    while (fd < 0 && errno == EINTR);
    return fd >= 0 ? (int)fd : -errno;
}

/* Without openat2: walk the path one component at a time and follow no
 * symlink at all (stricter than RESOLVE_BENEATH: -ELOOP for any symlink). */
static int walk_beneath(int root, const char *path, int flags)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    size_t plen = strlen(path);
    if (plen && path[plen - 1] == '/')
        flags |= O_DIRECTORY; /* "a.mp4/" is ENOTDIR, as openat2() (path resolution) has it */
    int dir = dup(root);
    if (dir < 0)
        return -errno;
    char *save = NULL;
    char *comp = strtok_r(buf, "/", &save);
    while (comp) {
        char *next = strtok_r(NULL, "/", &save);
        if (!strcmp(comp, ".")) {
            comp = next;
            continue;
        }
        int fd = openat(dir, comp,
                        next ? O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC : flags | O_NOFOLLOW);
        int e = errno;
        struct stat st;
        /* O_DIRECTORY | O_NOFOLLOW on a symlink to a directory is ENOTDIR too (a
         * middle component, or the last one of a folder to list) */
        if (fd < 0 && e == ENOTDIR && (next || (flags & O_DIRECTORY)) &&
            fstatat(dir, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
            e = ELOOP;
        close(dir);
        if (fd < 0)
            return -e;
        dir = fd;
        comp = next;
        if (!comp)
            return dir;
    }
    close(dir);
    return -EISDIR; /* only "." components: the root itself */
}

static int refuse(int *code, char *msg, size_t len, int c, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Set *code and msg; returns -1. */
static int refuse(int *code, char *msg, size_t len, int c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    *code = c;
    return -1;
}

/* The checks before any system call: not absolute, not too long, no "..". */
static int check_path(const char *field, const char *path, int *code, char *msg, size_t len)
{
    if (path[0] == '/')
        return refuse(code, msg, len, TN_INVALID_ARGUMENT,
                      "%s \"%.200s\" is absolute: give a path relative to the server's "
                      "--media-root",
                      field, path);
    if (strlen(path) >= PATH_MAX)
        return refuse(code, msg, len, TN_INVALID_ARGUMENT, "%s is longer than %d bytes", field,
                      PATH_MAX - 1);
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return refuse(code, msg, len, TN_PERMISSION_DENIED,
                          "%s \"%.200s\" contains \"..\": only files under the server's "
                          "--media-root can be read",
                          field, path);
        p += n;
        p += strspn(p, "/");
    }
    return 0;
}

/* Resolve path under root_fd with flags (media_root.h's two ways). Returns the
 * fd, or -1 with *code and msg set in the client's terms. */
static int jailed_open(int root_fd, const char *field, const char *path, int flags,
                       enum tn_media_resolve *how, int *code, char *msg, size_t len)
{
    int fd = *how == TN_MEDIA_WALK ? -ENOSYS : openat2_beneath(root_fd, path, flags);
    if (fd == -ENOSYS) {
        *how = TN_MEDIA_WALK;
        fd = walk_beneath(root_fd, path, flags);
    }
    if (fd >= 0)
        return fd;
    bool want_dir = flags & O_DIRECTORY;
    int c;
    const char *why;
    switch (-fd) {
    case ENOENT:
        c = TN_NOT_FOUND;
        why = want_dir ? "no such folder under the server's --media-root"
                       : "no such file under the server's --media-root";
        break;
    case ENOTDIR:
        c = want_dir ? TN_INVALID_ARGUMENT : TN_NOT_FOUND;
        why = want_dir ? "not a folder" : "no such file under the server's --media-root";
        break;
    case EXDEV:
    case ELOOP:
        c = TN_PERMISSION_DENIED;
        why = "it leads outside the server's --media-root (a symlink?)";
        break;
    case EACCES:
    case EPERM:
        c = TN_PERMISSION_DENIED;
        why = "the server may not read it";
        break;
    case EISDIR:
        c = TN_INVALID_ARGUMENT;
        why = "a directory, not a video file";
        break;
    case ENXIO: /* a socket or a FIFO without a writer: nothing a retry fixes */
    case ENODEV:
        c = TN_INVALID_ARGUMENT;
        why = "not a regular file";
        break;
    case ENAMETOOLONG:
        c = TN_INVALID_ARGUMENT;
        why = "a path component is too long";
        break;
    default: c = TN_UNAVAILABLE; why = strerror(-fd);
    }
    return refuse(code, msg, len, c, "%s \"%.200s\": %s", field, path, why);
}

int tn_media_root_open(int root_fd, const char *path, enum tn_media_resolve *how, uint64_t *size,
                       int *code, char *msg, size_t len)
{
    if (check_path("local_path", path, code, msg, len) < 0)
        return -1;
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK; /* a FIFO must not block us */
    int fd = jailed_open(root_fd, "local_path", path, flags, how, code, msg, len);
    if (fd < 0)
        return -1;
    struct stat st;
    const char *bad = NULL;
    if (fstat(fd, &st) < 0)
        bad = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        bad = "not a regular file";
    else if (st.st_size == 0)
        bad = "the file is empty (0 bytes): not a video";
    if (bad) {
        close(fd);
        return refuse(code, msg, len, TN_INVALID_ARGUMENT, "local_path \"%.200s\": %s", path, bad);
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

int tn_media_root_open_dir(int root_fd, const char *field, const char *path,
                           enum tn_media_resolve *how, int *code, char *msg, size_t len)
{
    if (check_path(field, path, code, msg, len) < 0)
        return -1;
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    bool root = true; /* "", ".", "./" ...: the root itself */
    for (const char *p = path; *p; p++)
        if (*p != '.' && *p != '/')
            root = false;
    if (root) {
        int fd = openat(root_fd, ".", flags);
        if (fd < 0)
            return refuse(code, msg, len, TN_UNAVAILABLE, "the server's --media-root: %s",
                          strerror(errno));
        return fd;
    }
    return jailed_open(root_fd, field, path, flags, how, code, msg, len);
}

int tn_media_root_stat(int root_fd, const char *path, enum tn_media_resolve how, struct stat *st)
{
    if (how == TN_MEDIA_WALK)
        return -ELOOP; /* the walk follows no symlink */
    int fd = openat2_beneath(root_fd, path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return fd;
    int rc = fstat(fd, st) < 0 ? -errno : 0;
    close(fd);
    return rc;
}
