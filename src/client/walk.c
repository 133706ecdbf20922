#include "walk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Deeper trees are almost certainly a bind-mount loop; report instead of exhausting fds. */
#define MAX_DEPTH 128

static int push(struct tn_walk_list *l, const char *rel, uint64_t size, int err)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct tn_walk_entry *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    char *copy = strdup(rel);
    if (!copy)
        return -ENOMEM;
    l->v[l->n++] = (struct tn_walk_entry){.rel = copy, .size = size, .err = err};
    return 0;
}

static char *join(const char *dir, const char *name)
{
    char *p;
    if (!*dir)
        return strdup(name);
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        return NULL;
    return p;
}

/*
 * Walk the directory open as dfd (ownership taken: closed here), whose
 * relative name is rel ("" for the root). Returns 0 or -ENOMEM; unreadable
 * entries become error entries.
 */
static int walk_dir(int dfd, const char *rel, const struct stat *skip, int depth,
                    struct tn_walk_list *out)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = errno;
        close(dfd);
        return push(out, *rel ? rel : ".", 0, e);
    }
    int ret = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno)
                ret = push(out, *rel ? rel : ".", 0, errno);
            break;
        }
        if (de->d_name[0] == '.') /* also ".", ".." and our own ".x.png.tmp.PID" files */
            continue;
        char *child = join(rel, de->d_name);
        if (!child) {
            ret = -ENOMEM;
            break;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            ret = errno == ENOENT ? 0 : push(out, child, 0, errno); /* vanished: not ours */
        } else if (S_ISDIR(st.st_mode)) {
            if (skip && st.st_dev == skip->st_dev && st.st_ino == skip->st_ino) {
                ret = 0;
            } else if (depth >= MAX_DEPTH) {
                ret = push(out, child, 0, ELOOP);
            } else {
                int cfd =
                    openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                ret = cfd < 0 ? push(out, child, 0, errno)
                              : walk_dir(cfd, child, skip, depth + 1, out);
            }
        } else if (S_ISLNK(st.st_mode)) {
            /* Follow to files only; dangling links and links to dirs are ignored. */
            if (fstatat(dirfd(d), de->d_name, &st, 0) == 0 && S_ISREG(st.st_mode))
                ret = push(out, child, (uint64_t)st.st_size, 0);
            else
                ret = 0;
        } else if (S_ISREG(st.st_mode)) {
            ret = push(out, child, (uint64_t)st.st_size, 0);
        }
        free(child);
        if (ret < 0)
            break;
    }
    closedir(d);
    return ret;
}

static int by_rel(const void *a, const void *b)
{
    return strcmp(((const struct tn_walk_entry *)a)->rel, ((const struct tn_walk_entry *)b)->rel);
}

int tn_walk(const char *root, const struct stat *skip, struct tn_walk_list *out, char *err,
            size_t errlen)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open input directory %s: %s", root, strerror(e));
        return -e;
    }
    int ret = walk_dir(fd, "", skip, 0, out);
    if (ret < 0) {
        snprintf(err, errlen, "listing %s: %s", root, strerror(-ret));
        return ret;
    }
    if (out->n)
        qsort(out->v, out->n, sizeof(*out->v), by_rel);
    return 0;
}

void tn_walk_free(struct tn_walk_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].rel);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}
