/*
 * The jailed open of local mode: a path a client names, opened for reading
 * only if it resolves under the --media-root directory. Pure: no gRPC, no
 * front state; the caller owns the root fd and the fd returned.
 *
 * Two ways to resolve: openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), which
 * follows symlinks that stay inside the root; and, where openat2 is missing
 * (kernels before 5.6) or the caller asks for it, a walk one component at a
 * time that follows no symlink at all (stricter: any symlink is refused).
 */
#ifndef TN_MEDIA_ROOT_H
#define TN_MEDIA_ROOT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

enum tn_media_resolve {
    TN_MEDIA_OPENAT2, /* openat2(); becomes TN_MEDIA_WALK on a kernel without it */
    TN_MEDIA_WALK,    /* the component walk */
};

/*
 * Open `path` (relative, no ".." component, shorter than PATH_MAX) under the
 * directory root_fd (O_PATH is enough) as a non-empty regular file, O_RDONLY |
 * O_CLOEXEC | O_NONBLOCK (a FIFO must not block the caller). *how selects the
 * resolution and is set to TN_MEDIA_WALK when openat2() is not available, so
 * that the caller asks once. Returns the fd with *size set; or -1 with *code a
 * TN_* status (status.h) and msg the reason in the client's terms ("local_path
 * \"...\": ..."), NUL-terminated in len bytes.
 */
int tn_media_root_open(int root_fd, const char *path, enum tn_media_resolve *how, uint64_t *size,
                       int *code, char *msg, size_t len);

/*
 * The folder `path` under root_fd, as tn_media_root_open() resolves a file,
 * opened O_RDONLY | O_DIRECTORY | O_CLOEXEC; "" (or ".") is the root itself.
 * `field` names the request field in the message ("dir"). Returns the fd, or
 * -1 with *code and msg set (NOT_FOUND, INVALID_ARGUMENT for a file,
 * PERMISSION_DENIED for ".." or a way out).
 */
int tn_media_root_open_dir(int root_fd, const char *field, const char *path,
                           enum tn_media_resolve *how, int *code, char *msg, size_t len);

/*
 * stat() of what the symlink `path` (relative to root_fd) leads to, only if
 * it stays under the root (openat2 RESOLVE_BENEATH); with TN_MEDIA_WALK,
 * which follows no symlink, always -ELOOP. Returns 0 or -errno.
 */
int tn_media_root_stat(int root_fd, const char *path, enum tn_media_resolve how, struct stat *st);

#endif
