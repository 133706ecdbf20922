/*
 * The --config file: "key = value" lines whose keys are the long flag names,
 * turned into "--key=value" arguments that config.c's one getopt loop reads
 * before the command line's (see config.c's top comment).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config_int.h"
#include "errf.h"

#define MAX_CONFIG_BYTES (1 << 20) /* a config file is a few hundred bytes; more is a mistake */

/* Strip leading and trailing blanks in place. */
static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

static const struct option *find_key(const char *key)
{
    for (const struct option *o = long_options; o->name; o++)
        if (strcmp(o->name, key) == 0 && o->val != 'h' && o->val != 'V' && o->val != OPT_CONFIG)
            return o;
    return NULL;
}

/*
 * Split one line (NUL-terminated, no newline) into key and value. Returns 1
 * for a setting, 0 for a blank or comment line, -1 with a message in err.
 * A '#' at the start or after a blank starts a comment; a value in double
 * quotes keeps its '#' and its blanks.
 */
static int split_line(char *s, char **key, char **val, char *err, size_t errlen)
{
    s = trim(s);
    if (!*s || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (!eq)
        return tn_errf(err, errlen, -1, "expected 'key = value', got '%s'", s);
    *eq = 0;
    *key = trim(s);
    char *v = eq + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v == '"') {
        char *close = strchr(v + 1, '"');
        if (!close)
            return tn_errf(err, errlen, -1, "%s: unterminated \" in the value", *key);
        char *rest = trim(close + 1);
        if (*rest && *rest != '#')
            return tn_errf(err, errlen, -1, "%s: unexpected text after the quoted value: '%s'",
                           *key, rest);
        *close = 0;
        *val = v + 1;
    } else {
        for (char *p = v; *p; p++)
            if (*p == '#' && (p == v || p[-1] == ' ' || p[-1] == '\t')) {
                *p = 0;
                break;
            }
        *val = trim(v);
    }
    if (!**key)
        return tn_errf(err, errlen, -1, "missing key before '='");
    return 1;
}

static bool parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return *out = true, true;
        if (strcasecmp(v, no[i]) == 0)
            return *out = false, true;
    }
    return false;
}

/* Read the whole file into a new NUL-terminated buffer (caller frees). */
static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    int rc = -1;
    if (!f)
        return tn_errf(err, errlen, -1, "--config '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        tn_errf(err, errlen, -1, "--config '%s': not a regular file", path);
        goto out;
    }
    if (st.st_size > MAX_CONFIG_BYTES) {
        tn_errf(err, errlen, -1, "--config '%s': larger than %d bytes; is this the right file?",
                path, MAX_CONFIG_BYTES);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        tn_errf(err, errlen, -1, "--config '%s': out of memory", path);
        goto out;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        tn_errf(err, errlen, -1, "--config '%s': read failed: %s", path, strerror(errno));
        goto out;
    }
    buf[n] = 0;
    if (memchr(buf, 0, n)) {
        tn_errf(err, errlen, -1, "--config '%s': contains NUL bytes; not a text file", path);
        goto out;
    }
    *out = buf;
    *len = n;
    buf = NULL; /* now the caller's */
    rc = 0;
out:
    free(buf);
    fclose(f);
    return rc;
}

/* See config_int.h. */
struct store *load_config(const char *path, int argc, char **argv, char *err, size_t errlen)
{
    char *text = NULL, abs[PATH_MAX];
    size_t len = 0, lines = 1;
    struct store *st = NULL;

    if (!*path) {
        tn_errf(err, errlen, -1, "--config: expected a file path");
        return NULL;
    }
    const char *p = absolutize(path, abs, sizeof(abs));
    if (!p || strlen(p) >= sizeof(st->path)) {
        tn_errf(err, errlen, -1, "--config '%s': path too long", path);
        return NULL;
    }
    if (read_file(p, &text, &len, err, errlen) < 0)
        return NULL;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    /* Each setting becomes "--" key "=" value NUL: at most its line plus 4 bytes. */
    size_t data_len = len + 4 * lines + 1;
    size_t nargs = lines + (size_t)argc + 1;
    st = calloc(1, sizeof(*st) + data_len);
    if (st) {
        st->argv = calloc(nargs, sizeof(*st->argv));
        st->line = calloc(nargs, sizeof(*st->line));
    }
    if (!st || !st->argv || !st->line) {
        tn_errf(err, errlen, -1, "--config '%s': out of memory", p);
        goto err;
    }
    strcpy(st->path, p);

    int n = 0;
    char *w = st->data;
    st->argv[n++] = argv[0];
    char *line = text;
    for (int lineno = 1; line; lineno++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        char *key = NULL, *val = NULL, msg[512];
        int rc = split_line(line, &key, &val, msg, sizeof(msg));
        line = nl ? nl + 1 : NULL;
        if (rc == 0)
            continue;
        const struct option *o = rc < 0 ? NULL : find_key(key);
        if (rc > 0 && !o) {
            if (strcmp(key, "config") == 0)
                snprintf(msg, sizeof(msg), "config: a config file cannot include another");
            else
                snprintf(msg, sizeof(msg),
                         "unknown key '%s' (keys are the long option names without '--', "
                         "e.g. listen, workers; see thumbnail_server --help)",
                         key);
            rc = -1;
        }
        bool on = true;
        if (rc > 0 && o->has_arg == no_argument && !parse_bool(val, &on)) {
            snprintf(msg, sizeof(msg), "%s '%s': expected true or false", key, val);
            rc = -1;
        }
        if (rc < 0) {
            tn_errf(err, errlen, -1, "%s:%d: %s", p, lineno, msg);
            goto err;
        }
        if (!on)
            continue; /* "daemon = false": the default; a flag can still turn it on */
        st->line[n] = lineno;
        st->argv[n++] = w;
        w += o->has_arg == no_argument ? sprintf(w, "--%s", key) + 1
                                       : sprintf(w, "--%s=%s", key, val) + 1;
    }
    for (int i = 1; i < argc; i++)
        st->argv[n++] = argv[i];
    st->argv[n] = NULL;
    free(text);
    return st;
err:
    if (st) {
        free(st->argv);
        free(st->line);
    }
    free(st);
    free(text);
    return NULL;
}
