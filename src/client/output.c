#include "output.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The extension of rel's last component: a pointer to its dot, or NULL. */
static const char *extension(const char *rel)
{
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    const char *dot = strrchr(base, '.');
    /* A leading dot is not an extension; the walk skips such names anyway. */
    return dot && dot > base ? dot : NULL;
}

bool tn_output_template_numbers(const char *tmpl)
{
    return tmpl && (strstr(tmpl, "{index}") || strstr(tmpl, "{time}"));
}

char *tn_output_name(const char *tmpl, const char *rel, bool keep_ext, size_t index,
                     const char *time)
{
    const char *dot = extension(rel);
    size_t path_len = dot ? (size_t)(dot - rel) : strlen(rel);
    if (!tmpl)
        return keep_ext ? strdup(rel) : strndup(rel, path_len);
    const char *slash = strrchr(rel, '/');
    const char *base = slash ? slash + 1 : rel;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    int err = 0;
    for (const char *p = tmpl; *p && !err; p++) {
        if (*p != '{') {
            fputc(*p, f);
            continue;
        }
        const char *close = strchr(p, '}');
        size_t n = close ? (size_t)(close - p - 1) : 0;
        if (!close)
            err = EINVAL;
        else if (n == 4 && !strncmp(p + 1, "path", 4))
            fwrite(rel, 1, path_len, f);
        else if (n == 4 && !strncmp(p + 1, "stem", 4))
            fwrite(base, 1, path_len - (size_t)(base - rel), f);
        else if (n == 3 && !strncmp(p + 1, "ext", 3))
            fputs(dot ? dot + 1 : "", f);
        else if (n == 5 && !strncmp(p + 1, "index", 5))
            fprintf(f, "%zu", index ? index : 1);
        else if (n == 4 && !strncmp(p + 1, "time", 4) && time)
            fputs(time, f);
        else
            err = EINVAL;
        if (close)
            p = close;
    }
    if (fclose(f) != 0) {
        free(buf);
        errno = ENOMEM;
        return NULL;
    }
    /* Stay inside the output directory: no absolute name, no "..", nothing empty. */
    if (!err && (!*buf || buf[0] == '/' || buf[strlen(buf) - 1] == '/'))
        err = EINVAL;
    for (char *c = buf; !err && c; c = strchr(c, '/')) {
        c += *c == '/';
        if (!strncmp(c, "..", 2) && (c[2] == '/' || !c[2]))
            err = EINVAL;
    }
    if (err) {
        free(buf);
        errno = err;
        return NULL;
    }
    return buf;
}

char *tn_output_join(const char *dir, const char *name, const char *suffix)
{
    size_t dl = strlen(dir);
    char *p;
    if (asprintf(&p, "%s%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name, suffix) < 0)
        return NULL;
    return p;
}

/* ".NAME.EXT.tmp.PID", EXT one of ours, with PID not running (and not us): the
 * PID, else 0. Other programs' temporary files are left alone. */
static long stale_pid(const char *name)
{
    static const char *const exts[] = {".png.tmp", ".jpg.tmp", ".webp.tmp", ".vtt.tmp"};
    const char *t = strrchr(name, '.');
    bool ours = false;
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]) && t && !ours; i++) {
        size_t n = strlen(exts[i]);
        ours = t - name > (ptrdiff_t)n && !strncmp(t - n, exts[i], n);
    }
    if (name[0] != '.' || !ours)
        return 0;
    char *end;
    long pid = strtol(t + 1, &end, 10);
    if (*end || end == t + 1 || pid <= 0 || pid == (long)getpid())
        return 0;
    return kill((pid_t)pid, 0) < 0 && errno == ESRCH ? pid : 0;
}

static size_t clean_dir(int dfd, int depth)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return 0;
    }
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (S_ISDIR(st.st_mode) && depth < 64) {
            int c = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (c >= 0)
                n += clean_dir(c, depth + 1);
        } else if (S_ISREG(st.st_mode) && stale_pid(de->d_name) &&
                   unlinkat(dirfd(d), de->d_name, 0) == 0) {
            n++;
        }
    }
    closedir(d);
    return n;
}

size_t tn_output_clean_stale(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 ? 0 : clean_dir(fd, 0);
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
    if (strcmp(f->final, "-") == 0) {
        f->fd = memfd_create("thumbnail", MFD_CLOEXEC);
        return f->fd < 0 ? -errno : 0;
    }
    const char *slash = strrchr(f->final, '/');
    int dirlen = slash ? (int)(slash - f->final + 1) : 0;
    /* The pid keeps two clients writing the same tree apart; within one client
     * no two jobs share an output (collisions are rejected before any call). */
    if (asprintf(&f->tmp, "%.*s.%s.tmp.%ld", dirlen, f->final, f->final + dirlen, (long)getpid()) <
        0) {
        f->tmp = NULL;
        return -ENOMEM;
    }
    f->fd = open(f->tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
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

/* Standard output gets the whole thumbnail or nothing: copied only once complete. */
static int copy_to_stdout(int fd)
{
    char buf[65536];
    if (lseek(fd, 0, SEEK_SET) < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : 0;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return -errno;
            off += w;
        }
    }
}

int tn_output_commit(struct tn_output_file *f, bool overwrite)
{
    int ret = 0;
    if (strcmp(f->final, "-") == 0) {
        ret = f->fd >= 0 ? copy_to_stdout(f->fd) : -EBADF;
        tn_output_discard(f);
        return ret;
    }
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
