#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *tn_output_stem(const char *rel)
{
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    const char *dot = strrchr(base, '.');
    /* A leading dot is not an extension; the walk skips such names anyway. */
    size_t len = dot && dot > base ? (size_t)(dot - rel) : strlen(rel);
    return strndup(rel, len);
}

char *tn_output_path(const char *out_dir, const char *rel, const char *ext, size_t index,
                     size_t count)
{
    char *stem = tn_output_stem(rel);
    if (!stem)
        return NULL;
    size_t dl = strlen(out_dir);
    const char *sep = dl && out_dir[dl - 1] == '/' ? "" : "/";
    char *p;
    int r = count > 1 ? asprintf(&p, "%s%s%s-%zu.%s", out_dir, sep, stem, index + 1, ext)
                      : asprintf(&p, "%s%s%s.%s", out_dir, sep, stem, ext);
    free(stem);
    return r < 0 ? NULL : p;
}

int tn_output_make_dir(const char *dir)
{
    if (!*dir)
        return 0;
    char *p = strdup(dir);
    if (!p)
        return -ENOMEM;
    int ret = 0;
    /* Create each prefix in turn; EEXIST is fine if it is a directory (another thread won). */
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s)
            continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0777) < 0 && errno != EEXIST) {
            ret = -errno;
            break;
        }
        *s = c;
        if (!c)
            break;
    }
    if (ret == 0) {
        struct stat st;
        if (stat(p, &st) < 0)
            ret = -errno;
        else if (!S_ISDIR(st.st_mode))
            ret = -ENOTDIR;
    }
    free(p);
    return ret;
}

int tn_output_make_parent(const char *file)
{
    const char *slash = strrchr(file, '/');
    if (!slash || slash == file)
        return 0;
    char *dir = strndup(file, (size_t)(slash - file));
    if (!dir)
        return -ENOMEM;
    int ret = tn_output_make_dir(dir);
    free(dir);
    return ret;
}

int tn_output_check_parent(const char *file)
{
    char *p = strdup(file);
    if (!p)
        return -ENOMEM;
    int ret = 0;
    for (;;) {
        char *slash = strrchr(p, '/');
        if (!slash) {
            strcpy(p, ".");
        } else if (slash == p) {
            slash[1] = 0;
        } else {
            *slash = 0;
        }
        struct stat st;
        if (stat(p, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                ret = -ENOTDIR;
            else if (access(p, W_OK | X_OK) < 0)
                ret = -errno;
            break;
        }
        if (errno != ENOENT) {
            ret = -errno;
            break;
        }
        if (!slash || slash == p)
            break;
    }
    free(p);
    return ret;
}

int tn_output_init(struct tn_output_file *f, const char *final)
{
    *f = (struct tn_output_file){.fd = -1};
    f->final = strdup(final);
    return f->final ? 0 : -ENOMEM;
}

int tn_output_open(struct tn_output_file *f)
{
    tn_output_discard(f);
    const char *slash = strrchr(f->final, '/');
    int dirlen = slash ? (int)(slash - f->final + 1) : 0;
    /* The pid keeps two clients writing the same tree apart; within one client
     * no two jobs share an output (collisions are rejected before any call). */
    if (asprintf(&f->tmp, "%.*s.%s.tmp.%ld", dirlen, f->final, f->final + dirlen, (long)getpid()) <
        0) {
        f->tmp = NULL;
        return -ENOMEM;
    }
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (f->fd < 0) {
        int e = -errno;
        free(f->tmp);
        f->tmp = NULL;
        return e;
    }
    f->written = 0;
    return 0;
}

int tn_output_write(struct tn_output_file *f, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(f->fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
        f->written += (uint64_t)w;
    }
    return 0;
}

static int rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* No RENAME_NOREPLACE here: link() is just as atomic about EEXIST. */
    if (link(from, to) < 0)
        return -errno;
    unlink(from);
    return 0;
}

int tn_output_commit(struct tn_output_file *f, bool overwrite)
{
    int ret = 0;
    /* No fsync: a thumbnail is cheap to regenerate and a batch may write thousands. */
    if (f->fd >= 0 && close(f->fd) < 0)
        ret = -errno;
    f->fd = -1;
    if (ret == 0 && f->tmp) {
        if (overwrite)
            ret = rename(f->tmp, f->final) < 0 ? -errno : 0;
        else
            ret = rename_noreplace(f->tmp, f->final);
        if (ret == 0) {
            free(f->tmp);
            f->tmp = NULL;
        }
    }
    if (ret < 0)
        tn_output_discard(f);
    return ret;
}

void tn_output_discard(struct tn_output_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->tmp) {
        unlink(f->tmp);
        free(f->tmp);
        f->tmp = NULL;
    }
    f->written = 0;
}

void tn_output_free(struct tn_output_file *f)
{
    if (!f)
        return;
    tn_output_discard(f);
    free(f->final);
    f->final = NULL;
}
