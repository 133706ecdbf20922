/*
 * The process title: see proctitle.h.
 *
 * The kernel returns as /proc/PID/cmdline the bytes between the start of
 * argv[0] and the end of the last argument. If the byte at that end is no
 * longer NUL, it assumes setproctitle() and reads on, up to the first NUL,
 * into what was the environment. So a title is written from argv[0] over
 * every string that is contiguous with it, and the rest is filled with NULs.
 */
#include "proctitle.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

extern char **environ;

static char *area;      /* argv[0]'s original string: the first byte of the title */
static size_t area_len; /* through the end of the last contiguous argv/environ string */
/* The copies argv[] and environ point to now: owned here, never freed. Nothing
 * reads these two, but a leak checker must find the copies through them, after
 * glibc's exit-time cleanup has set environ to NULL (valgrind): hence `used`,
 * which keeps the compiler from dropping the stores. */
static char **args __attribute__((used));
static char **env __attribute__((used));

/* A heap copy of each string of v[0..n-1]; NULL if memory ran out. */
static char **copy_strings(char **v, size_t n)
{
    char **out = calloc(n + 1, sizeof(*out));
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!(out[i] = strdup(v[i]))) {
            while (i > 0)
                free(out[--i]);
            free(out);
            return NULL;
        }
    return out;
}

void tn_proctitle_init(int argc, char **argv)
{
    if (area || argc < 1 || !argv[0])
        return;
    char *end = argv[0];
    for (int i = 0; i < argc && argv[i] == end; i++)
        end = argv[i] + strlen(argv[i]) + 1;
    size_t n_env = 0;
    while (environ && environ[n_env])
        n_env++;
    /* Only when every argument is contiguous may the environment follow. */
    if (end == argv[argc - 1] + strlen(argv[argc - 1]) + 1)
        for (size_t i = 0; i < n_env && environ[i] == end; i++)
            end = environ[i] + strlen(environ[i]) + 1;

    /* Nothing may point into the area once it is overwritten: argv[] (config.c
     * keeps it for reloads), the environment, glibc's program name (error
     * messages). The copies are never freed: they live as long as the process.
     * Out of memory this early: keep the original title rather than fail. */
    env = copy_strings(environ, n_env);
    args = copy_strings(argv, (size_t)argc);
    if (!env || !args) {
        for (size_t i = 0; env && env[i]; i++)
            free(env[i]);
        for (size_t i = 0; args && args[i]; i++)
            free(args[i]);
        free(env);
        free(args);
        env = args = NULL;
        return;
    }
    environ = env;
    char *slash = strrchr(args[0], '/');
    program_invocation_name = args[0];
    program_invocation_short_name = slash ? slash + 1 : args[0];
    area = argv[0];
    area_len = (size_t)(end - argv[0]);
    for (int i = 0; i < argc; i++)
        argv[i] = args[i];
}

void tn_proctitle_set(const char *comm, const char *fmt, ...)
{
    if (comm)
        prctl(PR_SET_NAME, comm, 0, 0, 0);
    if (!area || area_len < 2)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(area, area_len, fmt, ap);
    va_end(ap);
    size_t used = n < 0 ? 0 : (size_t)n < area_len ? (size_t)n : area_len - 1;
    memset(area + used, 0, area_len - used);
}
