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
        /* O_DIRECTORY | O_NOFOLLOW on a symlink to a directory is ENOTDIR too */
        if (fd < 0 && e == ENOTDIR && next && fstatat(dir, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISLNK(st.st_mode))
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

int tn_media_root_open(int root_fd, const char *path, enum tn_media_resolve *how, uint64_t *size,
                       int *code, char *msg, size_t len)
{
    if (path[0] == '/')
        return refuse(code, msg, len, TN_INVALID_ARGUMENT,
                      "local_path \"%.200s\" is absolute: give a path relative to the server's "
                      "--media-root",
                      path);
    if (strlen(path) >= PATH_MAX)
        return refuse(code, msg, len, TN_INVALID_ARGUMENT, "local_path is longer than %d bytes",
                      PATH_MAX - 1);
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return refuse(code, msg, len, TN_PERMISSION_DENIED,
                          "local_path \"%.200s\" contains \"..\": only files under the server's "
                          "--media-root can be read",
                          path);
        p += n;
        p += strspn(p, "/");
    }
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK; /* a FIFO must not block us */
    int fd = *how == TN_MEDIA_WALK ? -ENOSYS : openat2_beneath(root_fd, path, flags);
    if (fd == -ENOSYS) {
        *how = TN_MEDIA_WALK;
        fd = walk_beneath(root_fd, path, flags);
    }
    if (fd < 0) {
        int c;
        const char *why;
        switch (-fd) {
        case ENOENT:
        case ENOTDIR:
            c = TN_NOT_FOUND;
            why = "no such file under the server's --media-root";
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
        return refuse(code, msg, len, c, "local_path \"%.200s\": %s", path, why);
    }
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
