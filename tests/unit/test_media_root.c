/*
 * The jailed open of local mode (media_root.h) on a real temporary directory:
 * every refusal a client can provoke, with the status it gets, through both
 * resolutions (openat2() and the component walk). The root holds a sibling
 * "outside" directory's secret that no path may reach.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "media_root.h"
#include "status.h"

static char base[512]; /* base/root is the media root, base/outside is not */
static int root_fd = -1;

static void put(const char *rel, const char *text)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", base, rel);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void path_of(char *out, size_t len, const char *rel)
{
    snprintf(out, len, "%s/%s", base, rel);
}

static int setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(base, sizeof(base), "%s/tn-media-root-XXXXXX", tmp);
    if (!mkdtemp(base))
        return -1;
    char p[PATH_MAX], q[PATH_MAX];
    path_of(p, sizeof(p), "root");
    mkdir(p, 0700);
    path_of(p, sizeof(p), "root/sub");
    mkdir(p, 0700);
    path_of(p, sizeof(p), "outside");
    mkdir(p, 0700);
    put("root/a.mp4", "0123456789");
    put("root/sub/b.mp4", "abc");
    put("root/empty.mp4", "");
    put("outside/secret.mp4", "secret");
    /* symlinks: one inside the root, three that leave it */
    path_of(p, sizeof(p), "root/inner.mp4");
    if (symlink("a.mp4", p) < 0)
        return -1;
    path_of(p, sizeof(p), "root/up.mp4");
    if (symlink("../outside/secret.mp4", p) < 0)
        return -1;
    path_of(p, sizeof(p), "root/abs.mp4");
    path_of(q, sizeof(q), "outside/secret.mp4");
    if (symlink(q, p) < 0)
        return -1;
    path_of(p, sizeof(p), "root/outdir");
    if (symlink("../outside", p) < 0)
        return -1;
    path_of(p, sizeof(p), "root/fifo");
    if (mkfifo(p, 0600) < 0)
        return -1;
    /* a bound unix socket: open() of it fails with ENXIO */
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    path_of(p, sizeof(p), "root/sock");
    if (s < 0 || strlen(p) >= sizeof(sa.sun_path))
        return -1;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p);
    if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return -1;
    close(s);
    path_of(p, sizeof(p), "root");
    root_fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    return root_fd >= 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (root_fd >= 0)
        close(root_fd);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

/* The resolution a test runs with; openat2 is skipped (visibly) on a kernel without it. */
static enum tn_media_resolve resolution(void **state)
{
    enum tn_media_resolve how = *(enum tn_media_resolve *)*state;
    if (how == TN_MEDIA_OPENAT2) {
        enum tn_media_resolve probe = TN_MEDIA_OPENAT2;
        uint64_t size;
        int code;
        char msg[600];
        int fd = tn_media_root_open(root_fd, "a.mp4", &probe, &size, &code, msg, sizeof(msg));
        if (fd >= 0)
            close(fd);
        if (probe != TN_MEDIA_OPENAT2)
            skip(); /* kernel before 5.6: only the walk exists */
    }
    return how;
}

static void opens(void **state, const char *path, uint64_t want_size, const char *want_text)
{
    enum tn_media_resolve how = resolution(state), asked = how;
    uint64_t size = 0;
    int code = -1;
    char msg[600] = "";
    int fd = tn_media_root_open(root_fd, path, &how, &size, &code, msg, sizeof(msg));
    if (fd < 0)
        fail_msg("\"%s\": expected to open, got %d \"%s\"", path, code, msg);
    assert_int_equal(how, asked);
    assert_int_equal(size, want_size);
    char buf[64] = "";
    assert_int_equal(read(fd, buf, sizeof(buf) - 1), (ssize_t)want_size);
    assert_string_equal(buf, want_text);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
}

static void refused(void **state, const char *path, int want_code, const char *want_text)
{
    enum tn_media_resolve how = resolution(state);
    uint64_t size = 12345;
    int code = -1;
    char msg[600] = "";
    int fd = tn_media_root_open(root_fd, path, &how, &size, &code, msg, sizeof(msg));
    if (fd >= 0) {
        close(fd);
        fail_msg("\"%s\": expected a refusal (%d, \"%s\"), it opened", path, want_code, want_text);
    }
    if (code != want_code || !strstr(msg, want_text))
        fail_msg("\"%s\": expected %d \"...%s...\", got %d \"%s\"", path, want_code, want_text,
                 code, msg);
    assert_int_equal(size, 12345); /* untouched */
}

static void test_regular_files(void **state)
{
    opens(state, "a.mp4", 10, "0123456789");
    opens(state, "./a.mp4", 10, "0123456789");
    opens(state, "sub/b.mp4", 3, "abc");
    opens(state, "sub//b.mp4", 3, "abc");
}

static void test_absolute(void **state)
{
    char p[PATH_MAX];
    path_of(p, sizeof(p), "root/a.mp4"); /* absolute, even though it is inside */
    refused(state, p, TN_INVALID_ARGUMENT, "is absolute");
}

static void test_dotdot(void **state)
{
    refused(state, "../outside/secret.mp4", TN_PERMISSION_DENIED, "contains \"..\"");
    refused(state, "sub/../a.mp4", TN_PERMISSION_DENIED, "contains \"..\"");
    refused(state, "sub/..", TN_PERMISSION_DENIED, "contains \"..\"");
    /* ".." inside a name is a name */
    refused(state, "a..mp4", TN_NOT_FOUND, "no such file");
}

static void test_escaping_symlinks(void **state)
{
    const char *why = "leads outside the server's --media-root";
    refused(state, "up.mp4", TN_PERMISSION_DENIED, why);
    refused(state, "abs.mp4", TN_PERMISSION_DENIED, why);
    refused(state, "outdir/secret.mp4", TN_PERMISSION_DENIED, why);
}

/* The one difference: openat2 follows a symlink that stays inside, the walk follows none. */
static void test_inner_symlink(void **state)
{
    if (*(enum tn_media_resolve *)*state == TN_MEDIA_WALK)
        refused(state, "inner.mp4", TN_PERMISSION_DENIED, "leads outside");
    else
        opens(state, "inner.mp4", 10, "0123456789");
}

static void test_missing(void **state)
{
    refused(state, "nope.mp4", TN_NOT_FOUND, "no such file under the server's --media-root");
    refused(state, "nosub/a.mp4", TN_NOT_FOUND, "no such file");
    refused(state, "a.mp4/x", TN_NOT_FOUND, "no such file"); /* a file as a directory */
}

static void test_not_regular(void **state)
{
    refused(state, "sub", TN_INVALID_ARGUMENT, "not a regular file");
    refused(state, "fifo", TN_INVALID_ARGUMENT, "not a regular file"); /* and did not block */
    refused(state, "sock", TN_INVALID_ARGUMENT, "not a regular file");
    refused(state, "empty.mp4", TN_INVALID_ARGUMENT, "the file is empty (0 bytes)");
}

static void test_root_itself(void **state)
{
    enum tn_media_resolve how = resolution(state);
    /* openat2 opens the directory (not a regular file), the walk has no component (EISDIR) */
    refused(state, ".", TN_INVALID_ARGUMENT,
            how == TN_MEDIA_WALK ? "a directory, not a video file" : "not a regular file");
}

static void test_trailing_slash(void **state)
{
    refused(state, "a.mp4/", TN_NOT_FOUND, "no such file");
}

static void test_too_long(void **state)
{
    char name[300];
    memset(name, 'x', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    refused(state, name, TN_INVALID_ARGUMENT, "a path component is too long");

    char *path = malloc(PATH_MAX + 10);
    assert_non_null(path);
    memset(path, 'y', PATH_MAX + 9);
    path[PATH_MAX + 9] = '\0';
    refused(state, path, TN_INVALID_ARGUMENT, "local_path is longer than");
    free(path);
}

/* Folders to list: opened as a folder under the root, or refused as files are. */
static void dir_opens(void **state, const char *path, const char *child)
{
    enum tn_media_resolve how = resolution(state);
    int code = -1;
    char msg[600] = "";
    int fd = tn_media_root_open_dir(root_fd, "dir", path, &how, &code, msg, sizeof(msg));
    if (fd < 0)
        fail_msg("dir \"%s\": expected to open, got %d \"%s\"", path, code, msg);
    struct stat st;
    assert_int_equal(fstatat(fd, child, &st, AT_SYMLINK_NOFOLLOW), 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
}

static void dir_refused(void **state, const char *path, int want_code, const char *want_text)
{
    enum tn_media_resolve how = resolution(state);
    int code = -1;
    char msg[600] = "";
    int fd = tn_media_root_open_dir(root_fd, "dir", path, &how, &code, msg, sizeof(msg));
    if (fd >= 0) {
        close(fd);
        fail_msg("dir \"%s\": expected a refusal, it opened", path);
    }
    if (code != want_code || !strstr(msg, want_text) || strncmp(msg, "dir \"", 5) != 0)
        fail_msg("dir \"%s\": expected %d \"...%s...\", got %d \"%s\"", path, want_code, want_text,
                 code, msg);
}

static void test_dirs(void **state)
{
    dir_opens(state, "", "a.mp4"); /* the root itself */
    dir_opens(state, ".", "a.mp4");
    dir_opens(state, "./", "sub");
    dir_opens(state, "sub", "b.mp4");
    dir_opens(state, "./sub//", "b.mp4");
    dir_refused(state, "/etc", TN_INVALID_ARGUMENT, "absolute");
    dir_refused(state, "..", TN_PERMISSION_DENIED, "\"..\"");
    dir_refused(state, "sub/../..", TN_PERMISSION_DENIED, "\"..\"");
    dir_refused(state, "outdir", TN_PERMISSION_DENIED, "outside");
    dir_refused(state, "missing", TN_NOT_FOUND, "no such folder");
    dir_refused(state, "a.mp4", TN_INVALID_ARGUMENT, "not a folder");
}

/* What a listing shows of a symlink: where it leads, only if under the root. */
static void test_stat_symlinks(void **state)
{
    enum tn_media_resolve how = resolution(state);
    struct stat st;
    if (how == TN_MEDIA_WALK) {
        assert_int_equal(tn_media_root_stat(root_fd, "inner.mp4", how, &st), -ELOOP);
        return;
    }
    assert_int_equal(tn_media_root_stat(root_fd, "inner.mp4", how, &st), 0);
    assert_int_equal(st.st_size, 10);
    assert_true(tn_media_root_stat(root_fd, "up.mp4", how, &st) < 0);
    assert_true(tn_media_root_stat(root_fd, "abs.mp4", how, &st) < 0);
    assert_true(tn_media_root_stat(root_fd, "outdir", how, &st) < 0);
}

static enum tn_media_resolve use_openat2 = TN_MEDIA_OPENAT2, use_walk = TN_MEDIA_WALK;

#define BOTH(fn)                                                                                   \
    {#fn "/openat2", fn, NULL, NULL, &use_openat2},                                                \
    {                                                                                              \
#fn "/walk", fn, NULL, NULL, &use_walk                                                     \
    }

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_regular_files),     BOTH(test_absolute),      BOTH(test_dotdot),
        BOTH(test_escaping_symlinks), BOTH(test_inner_symlink), BOTH(test_missing),
        BOTH(test_not_regular),       BOTH(test_root_itself),   BOTH(test_trailing_slash),
        BOTH(test_too_long),          BOTH(test_dirs),          BOTH(test_stat_symlinks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
