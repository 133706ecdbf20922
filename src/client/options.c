#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grpc/grpc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "output.h" /* tn_output_name */
#include "parse.h"
#include "status.h"

enum {
    OPT_AT = 256,
    OPT_WIDTH,
    OPT_HEIGHT,
    OPT_UPSCALE,
    OPT_MODE,
    OPT_FORMAT,
    OPT_QUALITY,
    OPT_LOSSLESS,
    OPT_PNG_LEVEL,
    OPT_CHUNK,
    OPT_RETRIES,
    OPT_TIMEOUT,
    OPT_CONNECT_TIMEOUT,
    OPT_OVERWRITE,
    OPT_HEALTH,
    OPT_FIT,
    OPT_PAD_COLOR,
    OPT_COUNT,
    OPT_EVERY,
    OPT_COVER_ART,
    OPT_PROBE,
    OPT_STORYBOARD,
    OPT_TILE_WIDTH,
    OPT_COLUMNS,
    OPT_ANIMATED,
    OPT_FPS,
    OPT_PULL, /* pull and local mode */
    OPT_NO_PULL,
    OPT_PULL_THRESHOLD,
    OPT_LOCAL,
    OPT_PER_FILE,
    /* tls */
    OPT_TLS,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_TLS_SERVER_NAME,
    OPT_AUTH_TOKEN_FILE,
    /* batch */
    OPT_NAME,
    OPT_INCLUDE,
    OPT_EXCLUDE,
    OPT_JSON,
};

static const struct option long_options[] = {
    {"server", required_argument, NULL, 's'},
    {"jobs", required_argument, NULL, 'j'},
    {"at", required_argument, NULL, OPT_AT},
    {"width", required_argument, NULL, OPT_WIDTH},
    {"height", required_argument, NULL, OPT_HEIGHT},
    {"upscale", no_argument, NULL, OPT_UPSCALE},
    {"mode", required_argument, NULL, OPT_MODE},
    {"format", required_argument, NULL, OPT_FORMAT},
    {"quality", required_argument, NULL, OPT_QUALITY},
    {"lossless", no_argument, NULL, OPT_LOSSLESS},
    {"png-level", required_argument, NULL, OPT_PNG_LEVEL},
    {"chunk-size", required_argument, NULL, OPT_CHUNK},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"overwrite", no_argument, NULL, OPT_OVERWRITE},
    {"quiet", no_argument, NULL, 'q'},
    {"verbose", no_argument, NULL, 'v'},
    {"health", no_argument, NULL, OPT_HEALTH},
    {"fit", required_argument, NULL, OPT_FIT},
    {"pad-color", required_argument, NULL, OPT_PAD_COLOR},
    {"count", required_argument, NULL, OPT_COUNT},
    {"every", required_argument, NULL, OPT_EVERY},
    {"cover-art", no_argument, NULL, OPT_COVER_ART},
    {"probe", no_argument, NULL, OPT_PROBE},
    {"storyboard", no_argument, NULL, OPT_STORYBOARD},
    {"tile-width", required_argument, NULL, OPT_TILE_WIDTH},
    {"columns", required_argument, NULL, OPT_COLUMNS},
    {"animated", required_argument, NULL, OPT_ANIMATED},
    {"fps", required_argument, NULL, OPT_FPS},
    {"pull", no_argument, NULL, OPT_PULL},
    {"no-pull", no_argument, NULL, OPT_NO_PULL},
    {"pull-threshold", required_argument, NULL, OPT_PULL_THRESHOLD},
    {"local", no_argument, NULL, OPT_LOCAL},
    {"per-file", no_argument, NULL, OPT_PER_FILE},
    /* tls */
    {"tls", no_argument, NULL, OPT_TLS},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"tls-server-name", required_argument, NULL, OPT_TLS_SERVER_NAME},
    {"auth-token-file", required_argument, NULL, OPT_AUTH_TOKEN_FILE},
    {"input", required_argument, NULL, 'i'},
    {"output", required_argument, NULL, 'o'},
    {"name", required_argument, NULL, OPT_NAME},
    {"include", required_argument, NULL, OPT_INCLUDE},
    {"exclude", required_argument, NULL, OPT_EXCLUDE},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static int bad(const char *what, const char *value, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Print "thumbnail_client: --jobs: invalid value 'x' (expected ...)"; always TN_OPTIONS_USAGE. */
static int bad(const char *what, const char *value, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "thumbnail_client: %s: invalid value '%s' (", what, value);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ")\nTry 'thumbnail_client --help'.\n");
    return TN_OPTIONS_USAGE;
}

static int parse_jobs(const char *what, const char *s, unsigned *out)
{
    uint64_t v;
    if (tn_parse_uint(s, 1, TN_CLIENT_MAX_JOBS, &v) < 0)
        return bad(what, s, "expected an integer 1..%d", TN_CLIENT_MAX_JOBS);
    *out = (unsigned)v;
    return 0;
}

static int parse_seconds(const char *what, const char *s, double *out)
{
    double v;
    if (tn_parse_duration(s, &v) < 0 || v <= 0 || v > 30 * 86400.0)
        return bad(what, s, "expected a duration > 0 such as 30, 2.5, 500ms, 10m");
    *out = v;
    return 0;
}

static int parse_dimension(const char *what, const char *s, uint32_t *out)
{
    uint64_t v;
    if (tn_parse_uint(s, 0, TN_JOB_MAX_SIDE, &v) < 0)
        return bad(what, s, "expected pixels 0..%d, 0 = unbounded", TN_JOB_MAX_SIDE);
    *out = (uint32_t)v;
    return 0;
}

/* "5s", "1m30s", "1h2m3.5s", "500ms": a duration like --timeout, as a time in seconds. */
static int parse_at_duration(const char *s, struct tn_time_point *out)
{
    double total = 0, v;
    const char *p = s;
    while (*p) {
        char *end;
        if (!(*p >= '0' && *p <= '9') && *p != '.')
            return -1;
        v = strtod(p, &end);
        if (end == p)
            return -1;
        if (!strncmp(end, "ms", 2)) {
            v /= 1000;
            end += 2;
        } else if (*end == 'h') {
            v *= 3600;
            end++;
        } else if (*end == 'm') {
            v *= 60;
            end++;
        } else if (*end == 's') {
            end++;
        } else {
            return -1;
        }
        total += v;
        p = end;
    }
    if (p == s)
        return -1;
    out->kind = TN_TIME_SECONDS;
    out->value = total;
    return 0;
}

/*
 * --server: a gRPC target that names a port. "320" is ffmpegthumbnailer's
 * -s (size) and "http://h:p" a URL: both would be taken for a host name by
 * gRPC and fail only later, obscurely. NULL if fine, else why not.
 */
static const char *server_problem(const char *s)
{
    if (!strncmp(s, "unix:", 5) || !strncmp(s, "unix-abstract:", 14))
        return s[strcspn(s, ":") + 1] ? NULL : "expected a socket path after unix:";
    if (strspn(s, "0123456789") == strlen(s))
        return "a bare number is not a server address; thumbnail_client's -s is --server "
               "HOST:PORT, not ffmpegthumbnailer's size flag: use --width/--height for the size";
    if (strstr(s, "://") && strncmp(s, "dns://", 6) != 0)
        return "expected HOST:PORT, unix:PATH or dns:///HOST:PORT, not a URL";
    const char *hp = s;
    if (!strncmp(s, "dns:", 4)) {
        hp = strrchr(s, '/'); /* dns:///host:port, dns://resolver/host:port */
        hp = hp ? hp + 1 : s + 4;
    } else if (!strncmp(s, "ipv4:", 5) || !strncmp(s, "ipv6:", 5)) {
        return NULL; /* address lists: gRPC checks them */
    }
    const char *colon = strrchr(hp, ':');
    const char *bracket = strrchr(hp, ']');
    if (!colon || (bracket && colon < bracket) || !colon[1] ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return "no port: expected HOST:PORT (e.g. localhost:50051), [IPV6]:PORT, "
               "unix:PATH or dns:///HOST:PORT";
    if (colon == hp)
        return "no host before the port";
    return NULL;
}

/* "10%,50%,1:30": each comma-separated point appended to o->times. */
static int parse_times(struct tn_client_options *o, const char *s)
{
    char buf[256];
    if (strlen(s) >= sizeof(buf))
        return bad("--at", s, "too long");
    snprintf(buf, sizeof(buf), "%s", s);
    char *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
        if (o->n_times == TN_JOB_MAX_TIMES)
            return bad("--at", s, "at most %d time points", TN_JOB_MAX_TIMES);
        if (tn_parse_time_point(tok, &o->times[o->n_times]) < 0 &&
            parse_at_duration(tok, &o->times[o->n_times]) < 0)
            return bad("--at", tok,
                       "expected seconds (12.5, 5s, 1m30s, 500ms), percent 0..100 (10%%) or "
                       "[h:]m:s (1:30)");
        o->n_times++;
    }
    if (n == 0)
        return bad("--at", s, "expected a time point");
    return 0;
}

/* One time point as --at takes it. */
static int parse_point(const char *s, struct tn_time_point *out)
{
    return tn_parse_time_point(s, out) < 0 && parse_at_duration(s, out) < 0 ? -1 : 0;
}

/* --animated START[-END] into o->anim_start and o->anim_end (kind 0: not given). */
static int parse_span(struct tn_client_options *o, const char *s)
{
    char buf[128];
    if (strlen(s) >= sizeof(buf))
        return bad("--animated", s, "too long");
    snprintf(buf, sizeof(buf), "%s", s);
    char *dash = strchr(buf, '-');
    if (dash)
        *dash = '\0';
    memset(&o->anim_end, 0, sizeof(o->anim_end));
    if (parse_point(buf, &o->anim_start) < 0 || (dash && parse_point(dash + 1, &o->anim_end) < 0))
        return bad("--animated", s,
                   "expected START or START-END, each in seconds (12.5, 5s, 1m30s), percent "
                   "(10%%) or [h:]m:s (1:30), e.g. 1:30-1:33");
    o->animated = true;
    return 0;
}

/* --animated's rules beyond its syntax; the server checks the same (job_opts.h). */
static const char *animated_problem(struct tn_client_options *o, bool format_set, char *buf,
                                    size_t len)
{
    if (!o->animated)
        return o->fps > 0 ? "--fps needs --animated" : NULL;
    if (o->n_times || o->count || o->every > 0 || o->storyboard || o->cover_art)
        return "--animated makes one preview of its span: not with --at, --count, --every, "
               "--storyboard or --cover-art";
    if (format_set && o->format != TN_FORMAT_WEBP)
        return "--animated writes an animated WebP: --format webp or a .webp output only";
    if (o->mode_set && o->mode != TN_MODE_ACCURATE)
        return "--animated decodes every frame of its span: no --mode keyframe or smart";
    o->format = TN_FORMAT_WEBP;
    const struct tn_time_point *a = &o->anim_start, *b = &o->anim_end;
    double fps = o->fps > 0 ? o->fps : TN_ANIM_DEFAULT_FPS;
    if (b->kind == TN_TIME_PERCENT && a->kind == TN_TIME_PERCENT && !(b->value > a->value)) {
        snprintf(buf, len, "--animated: the end %g%% is not after the start %g%%", b->value,
                 a->value);
        return buf;
    }
    if (a->kind == TN_TIME_SECONDS && b->kind != TN_TIME_PERCENT) {
        char err[256];
        double end = b->kind ? b->value : a->value + TN_ANIM_DEFAULT_SPAN;
        if (tn_job_opts_anim_frames(a->value, end, fps, NULL, err, sizeof(err)) != TN_OK) {
            snprintf(buf, len, "--animated: %s", err + strlen("animation: "));
            return buf;
        }
    }
    return NULL;
}

#define MAX_PEM_BYTES (1u << 20)
#define MAX_TOKEN 4096

/* Read a whole regular file (at most max bytes) into a malloc'd string. On
 * failure print "thumbnail_client: FLAG 'PATH': why" and return NULL. */
static char *read_small_file(const char *flag, const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    char *buf = NULL;
    const char *why = NULL;
    if (fd < 0) {
        why = strerror(errno);
    } else if (fstat(fd, &st) < 0) {
        why = strerror(errno);
    } else if (!S_ISREG(st.st_mode)) {
        why = "not a regular file";
    } else if ((uint64_t)st.st_size > max) {
        why = "too large for a file of this kind";
    } else if (!(buf = malloc(max + 1))) {
        why = "out of memory";
    } else {
        size_t got = 0;
        for (;;) {
            ssize_t n = read(fd, buf + got, max + 1 - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                why = strerror(errno);
            else if ((got += (size_t)n) > max)
                why = "too large for a file of this kind";
            if (n <= 0 || why)
                break;
        }
        buf[got > max ? max : got] = 0;
        if (!why && strlen(buf) != got)
            why = "contains NUL bytes (not a PEM or text file)";
    }
    if (fd >= 0)
        close(fd);
    if (why) {
        fprintf(stderr, "thumbnail_client: %s '%s': %s\n", flag, path, why);
        free(buf);
        return NULL;
    }
    return buf;
}

/* A PEM file that should hold `what` ("CERTIFICATE", "PRIVATE KEY"). */
static int load_pem(const char *flag, const char *path, const char *what, char **out)
{
    if (!(*out = read_small_file(flag, path, MAX_PEM_BYTES)))
        return TN_OPTIONS_USAGE;
    char marker[64];
    snprintf(marker, sizeof(marker), "%s-----", what);
    if (!strstr(*out, "-----BEGIN ") || !strstr(*out, marker)) {
        fprintf(stderr, "thumbnail_client: %s '%s': no PEM %s in it\n", flag, path, what);
        return TN_OPTIONS_USAGE;
    }
    return 0;
}

/* The token file: one word of visible ASCII; surrounding whitespace ignored. */
static int load_token(const char *flag, const char *path, char **authorization)
{
    char *buf = read_small_file(flag, path, 64u << 10);
    if (!buf)
        return TN_OPTIONS_USAGE;
    char *p = buf, *end = buf + strlen(buf);
    while (p < end && strchr(" \t\r\n", *p))
        p++;
    while (end > p && strchr(" \t\r\n", end[-1]))
        end--;
    const char *why = p == end              ? "the file is empty (expected one token)"
                      : end - p > MAX_TOKEN ? "token longer than 4096 bytes"
                                            : NULL;
    for (const char *q = p; !why && q < end; q++)
        if (*q < 0x21 || *q > 0x7e)
            why = "the token must be one word of visible ASCII characters";
    if (!why) {
        size_t n = (size_t)(end - p);
        if ((*authorization = malloc(n + sizeof("Bearer "))))
            snprintf(*authorization, n + sizeof("Bearer "), "Bearer %.*s", (int)n, p);
        else
            why = "out of memory";
    }
    memset(buf, 0, strlen(buf));
    free(buf);
    if (why) {
        fprintf(stderr, "thumbnail_client: %s '%s': %s\n", flag, path, why);
        return TN_OPTIONS_USAGE;
    }
    return 0;
}

/* After the flags: check the security options and read their files. */
static int load_security(struct tn_client_options *o)
{
    if (!o->cert_file != !o->key_file) {
        fprintf(stderr, "thumbnail_client: %s\nTry 'thumbnail_client --help'.\n",
                o->cert_file ? "--cert needs --key (the certificate's private key)"
                             : "--key needs --cert (the certificate it belongs to)");
        return TN_OPTIONS_USAGE;
    }
    if (o->ca_file || o->cert_file)
        o->tls = true;
    if (o->tls_server_name && !o->tls) {
        fprintf(stderr, "thumbnail_client: --tls-server-name needs --tls (or --ca)\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if (o->ca_file && load_pem("--ca", o->ca_file, "CERTIFICATE", &o->ca_pem) < 0)
        return TN_OPTIONS_USAGE;
    if (o->cert_file && (load_pem("--cert", o->cert_file, "CERTIFICATE", &o->cert_pem) < 0 ||
                         load_pem("--key", o->key_file, "PRIVATE KEY", &o->key_pem) < 0))
        return TN_OPTIONS_USAGE;
    const char *tf = o->auth_token_file;
    if (tf && load_token(getenv("THUMBNAIL_TOKEN_FILE") == tf ? "THUMBNAIL_TOKEN_FILE"
                                                              : "--auth-token-file",
                         tf, &o->authorization) < 0)
        return TN_OPTIONS_USAGE;
    return 0;
}

int tn_options_parse(struct tn_client_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof(*o));
    o->server = TN_CLIENT_DEFAULT_SERVER;
    o->input_dir = "input/";
    o->output_dir = "output/";
    o->jobs = TN_CLIENT_DEFAULT_JOBS;
    o->format = TN_FORMAT_PNG;
    o->chunk_size = TN_CLIENT_DEFAULT_CHUNK;
    o->retries = TN_CLIENT_DEFAULT_RETRIES;
    o->timeout = TN_CLIENT_DEFAULT_TIMEOUT;
    o->connect_timeout = TN_CLIENT_DEFAULT_CONNECT_TIMEOUT;
    o->pull = -1;
    o->pull_threshold = TN_CLIENT_DEFAULT_PULL_THRESHOLD;

    const char *env = getenv("THUMBNAIL_SERVER");
    if (env && *env) {
        if (server_problem(env))
            return bad("THUMBNAIL_SERVER", env, "%s", server_problem(env));
        o->server = env;
    }
    o->servers[o->n_servers++] = o->server; /* replaced by the first --server */
    bool server_flag = false;
    env = getenv("THUMBNAIL_TOKEN_FILE");
    if (env && *env)
        o->auth_token_file = env;
    env = getenv("NUM_JOBS");
    if (env && *env && parse_jobs("NUM_JOBS", env, &o->jobs) < 0)
        return TN_OPTIONS_USAGE;

    bool width_set = false, height_set = false, format_set = false;
    uint64_t v;
    int c;
    opterr = 0; /* our own messages, always followed by the --help hint */
    while ((c = getopt_long(argc, argv, ":s:j:i:o:qvhV", long_options, NULL)) != -1) {
        switch (c) {
        case 's':
            if (!*optarg)
                return bad("--server", optarg, "expected an address");
            if (server_problem(optarg))
                return bad("--server", optarg, "%s", server_problem(optarg));
            if (!server_flag)
                o->n_servers = 0;
            server_flag = true;
            if (o->n_servers == TN_CLIENT_MAX_SERVERS)
                return bad("--server", optarg, "at most %d servers", TN_CLIENT_MAX_SERVERS);
            o->servers[o->n_servers++] = optarg;
            o->server = o->servers[0];
            break;
        case 'j':
            if (parse_jobs("--jobs", optarg, &o->jobs) < 0)
                return TN_OPTIONS_USAGE;
            break;
        case OPT_AT:
            if (parse_times(o, optarg) < 0)
                return TN_OPTIONS_USAGE;
            break;
        case OPT_WIDTH:
            if (parse_dimension("--width", optarg, &o->max_width) < 0)
                return TN_OPTIONS_USAGE;
            width_set = true;
            break;
        case OPT_HEIGHT:
            if (parse_dimension("--height", optarg, &o->max_height) < 0)
                return TN_OPTIONS_USAGE;
            height_set = true;
            break;
        case OPT_UPSCALE: o->upscale = true; break;
        case OPT_MODE:
            if (strcmp(optarg, "accurate") == 0)
                o->mode = TN_MODE_ACCURATE;
            else if (strcmp(optarg, "keyframe") == 0)
                o->mode = TN_MODE_KEYFRAME;
            else if (strcmp(optarg, "smart") == 0)
                o->mode = TN_MODE_SMART;
            else
                return bad("--mode", optarg, "expected accurate, keyframe or smart");
            o->mode_set = true;
            break;
        case OPT_FORMAT:
            format_set = true;
            if (strcmp(optarg, "png") == 0)
                o->format = TN_FORMAT_PNG;
            else if (strcmp(optarg, "jpeg") == 0 || strcmp(optarg, "jpg") == 0)
                o->format = TN_FORMAT_JPEG;
            else if (strcmp(optarg, "webp") == 0)
                o->format = TN_FORMAT_WEBP;
            else
                return bad("--format", optarg, "expected png, jpeg or webp");
            break;
        case OPT_QUALITY:
            if (tn_parse_uint(optarg, 1, TN_JOB_MAX_QUALITY, &v) < 0)
                return bad("--quality", optarg, "expected an integer 1..%d", TN_JOB_MAX_QUALITY);
            o->quality = (uint32_t)v;
            break;
        case OPT_LOSSLESS: o->lossless = true; break;
        case OPT_PNG_LEVEL:
            if (tn_parse_uint(optarg, 1, TN_JOB_MAX_PNG_LEVEL, &v) < 0)
                return bad("--png-level", optarg, "expected an integer 1..%d",
                           TN_JOB_MAX_PNG_LEVEL);
            o->png_level = (uint32_t)v;
            break;
        case OPT_CHUNK:
            if (tn_parse_size(optarg, &v) < 0 || v < TN_CLIENT_MIN_CHUNK || v > TN_CLIENT_MAX_CHUNK)
                return bad("--chunk-size", optarg, "expected a size 1K..256M such as 64K or 4M");
            o->chunk_size = v;
            break;
        case OPT_PULL: o->pull = 1; break;
        case OPT_NO_PULL: o->pull = 0; break;
        case OPT_PULL_THRESHOLD:
            if (tn_parse_size(optarg, &v) < 0 || v == 0)
                return bad("--pull-threshold", optarg, "expected a size > 0 such as 64M or 1G");
            o->pull_threshold = v;
            break;
        case OPT_LOCAL: o->local = true; break;
        case OPT_PER_FILE: o->per_file = true; break;
        case OPT_RETRIES:
            if (tn_parse_uint(optarg, 0, 20, &v) < 0)
                return bad("--retries", optarg, "expected an integer 0..20");
            o->retries = (unsigned)v;
            break;
        case OPT_TIMEOUT:
            if (parse_seconds("--timeout", optarg, &o->timeout) < 0)
                return TN_OPTIONS_USAGE;
            o->timeout_set = true;
            break;
        case OPT_CONNECT_TIMEOUT:
            if (parse_seconds("--connect-timeout", optarg, &o->connect_timeout) < 0)
                return TN_OPTIONS_USAGE;
            break;
        case OPT_OVERWRITE: o->overwrite = true; break;
        case 'q': o->quiet = true; break;
        case 'v': o->verbose = true; break;
        case OPT_HEALTH: o->health = true; break;
        case OPT_FIT:
            if (strcmp(optarg, "fit") == 0)
                o->fit = TN_FIT_FIT;
            else if (strcmp(optarg, "fill") == 0)
                o->fit = TN_FIT_FILL;
            else if (strcmp(optarg, "pad") == 0)
                o->fit = TN_FIT_PAD;
            else
                return bad("--fit", optarg, "expected fit, fill or pad");
            break;
        case OPT_PAD_COLOR: {
            const char *h = optarg[0] == '#' ? optarg + 1 : optarg;
            char *end;
            unsigned long rgb = strtoul(h, &end, 16);
            if (strlen(h) != 6 || *end || !isxdigit((unsigned char)h[0]))
                return bad("--pad-color", optarg, "expected RRGGBB in hex, e.g. 202020");
            o->pad_color = (uint32_t)rgb;
            break;
        }
        case OPT_COUNT:
            if (tn_parse_uint(optarg, 1, TN_STORYBOARD_MAX_TILES, &v) < 0)
                return bad("--count", optarg,
                           "expected an integer 1..64 (1..1000 with --storyboard)");
            o->count = (uint32_t)v;
            break;
        case OPT_EVERY:
            if (parse_seconds("--every", optarg, &o->every) < 0)
                return TN_OPTIONS_USAGE;
            if (o->every < 0.001)
                return bad("--every", optarg, "expected an interval of at least 0.001 s");
            break;
        case OPT_COVER_ART: o->cover_art = true; break;
        case OPT_PROBE: o->probe = true; break;
        case OPT_STORYBOARD: o->storyboard = true; break;
        case OPT_TILE_WIDTH:
            if (tn_parse_uint(optarg, 1, TN_STORYBOARD_MAX_TILE_WIDTH, &v) < 0)
                return bad("--tile-width", optarg, "expected an integer 1..%d",
                           TN_STORYBOARD_MAX_TILE_WIDTH);
            o->tile_width = (uint32_t)v;
            break;
        case OPT_COLUMNS:
            if (tn_parse_uint(optarg, 1, TN_STORYBOARD_MAX_COLUMNS, &v) < 0)
                return bad("--columns", optarg, "expected an integer 1..%d",
                           TN_STORYBOARD_MAX_COLUMNS);
            o->columns = (uint32_t)v;
            break;
        case OPT_ANIMATED:
            if (parse_span(o, optarg) < 0)
                return TN_OPTIONS_USAGE;
            break;
        case OPT_FPS: {
            char *end;
            double fps = strtod(optarg, &end);
            if (!*optarg || *end || !(fps >= TN_ANIM_MIN_FPS && fps <= TN_ANIM_MAX_FPS))
                return bad("--fps", optarg, "expected frames a second %g..%g", TN_ANIM_MIN_FPS,
                           TN_ANIM_MAX_FPS);
            o->fps = fps;
            break;
        }
        case 'i':
        case 'o':
            if (!*optarg)
                return bad(c == 'i' ? "--input" : "--output", optarg, "expected a file name");
            *(c == 'i' ? &o->input_file : &o->output_file) = optarg;
            break;
        case OPT_NAME: {
            /* Checked once here with sample values, so that jobs never meet a bad one. */
            char *t = tn_output_name(optarg, "dir/name.mp4", false, 1, "1s");
            if (!t)
                return bad("--name", optarg, "%s",
                           errno == ENOMEM ? "out of memory"
                                           : "expected a relative name using {path}, {stem}, "
                                             "{ext}, {index} and {time}, without '..'");
            free(t);
            o->name_template = optarg;
            break;
        }
        case OPT_INCLUDE:
        case OPT_EXCLUDE: {
            const char **globs = c == OPT_INCLUDE ? o->includes : o->excludes;
            size_t *n = c == OPT_INCLUDE ? &o->n_includes : &o->n_excludes;
            if (!*optarg)
                return bad(c == OPT_INCLUDE ? "--include" : "--exclude", optarg,
                           "expected a glob such as '*.mp4'");
            if (*n == TN_CLIENT_MAX_GLOBS)
                return bad(c == OPT_INCLUDE ? "--include" : "--exclude", optarg, "at most %d",
                           TN_CLIENT_MAX_GLOBS);
            globs[(*n)++] = optarg;
            break;
        }
        case OPT_JSON: o->json = true; break;
        case OPT_TLS: o->tls = true; break;
        case OPT_CA:
        case OPT_CERT:
        case OPT_KEY:
        case OPT_AUTH_TOKEN_FILE:
            if (!*optarg)
                return bad(c == OPT_CA     ? "--ca"
                           : c == OPT_CERT ? "--cert"
                           : c == OPT_KEY  ? "--key"
                                           : "--auth-token-file",
                           optarg, "expected a file path");
            if (c == OPT_CA)
                o->ca_file = optarg;
            else if (c == OPT_CERT)
                o->cert_file = optarg;
            else if (c == OPT_KEY)
                o->key_file = optarg;
            else
                o->auth_token_file = optarg;
            break;
        case OPT_TLS_SERVER_NAME:
            if (!*optarg || strchr(optarg, '/'))
                return bad("--tls-server-name", optarg, "expected a host name or IP address");
            o->tls_server_name = optarg;
            break;
        case 'h': tn_options_usage(stdout); return TN_OPTIONS_EXIT_OK;
        case 'V':
            /* The version alone on the first line: help2man puts it in the man page's footer. */
            printf("thumbnail_client %s\ngRPC core %s\n", TN_VERSION, grpc_version_string());
            return TN_OPTIONS_EXIT_OK;
        case ':':
            fprintf(stderr, "thumbnail_client: %s needs a value\nTry 'thumbnail_client --help'.\n",
                    argv[optind - 1]);
            return TN_OPTIONS_USAGE;
        default:
            fprintf(stderr,
                    "thumbnail_client: unknown option '%s'\nTry 'thumbnail_client --help'.\n",
                    argv[optind - 1]);
            return TN_OPTIONS_USAGE;
        }
    }
    int rest = argc - optind;
    if (o->probe) {
        if (rest < 1) {
            fprintf(stderr, "thumbnail_client: --probe needs at least one FILE\n"
                            "Try 'thumbnail_client --help'.\n");
            return TN_OPTIONS_USAGE;
        }
        o->probe_files = argv + optind;
        o->n_probe_files = (size_t)rest;
        rest = 0;
    }
    if (rest > 2) {
        fprintf(stderr,
                "thumbnail_client: too many arguments ('%s')\n"
                "Try 'thumbnail_client --help'.\n",
                argv[optind + 2]);
        return TN_OPTIONS_USAGE;
    }
    if (o->input_file || o->output_file) {
        const char *why = NULL;
        if (!o->input_file || !o->output_file)
            why = o->input_file ? "-i needs -o (the output file, or - for standard output)"
                                : "-o needs -i (the video)";
        else if (rest)
            why = "-i/-o take one file: no INPUT_DIR or OUTPUT_DIR with them";
        else if (o->probe)
            why = "--probe takes its files as arguments, not -i";
        else if (tn_options_outputs(o) > 1 && !strcmp(o->output_file, "-"))
            why = "-o - writes one thumbnail: not with --storyboard, --count, --every or "
                  "several --at";
        else if (o->json && !strcmp(o->output_file, "-"))
            why = "--json and -o - both want standard output";
        if (why) {
            fprintf(stderr, "thumbnail_client: %s\nTry 'thumbnail_client --help'.\n", why);
            return TN_OPTIONS_USAGE;
        }
        /* ffmpegthumbnailer's habit: the output's extension picks the format. */
        const char *dot = strrchr(o->output_file, '.');
        int f = 0;
        if (dot && !strchr(dot, '/')) {
            if (!strcasecmp(dot, ".png"))
                f = TN_FORMAT_PNG;
            else if (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"))
                f = TN_FORMAT_JPEG;
            else if (!strcasecmp(dot, ".webp"))
                f = TN_FORMAT_WEBP;
        }
        if (f && format_set && f != o->format) {
            fprintf(stderr,
                    "thumbnail_client: -o %s does not match --format %s\n"
                    "Try 'thumbnail_client --help'.\n",
                    o->output_file, tn_options_extension(o->format));
            return TN_OPTIONS_USAGE;
        }
        if (f) {
            o->format = f;
            format_set = true;
        }
    }
    char why_anim[320];
    const char *anim = animated_problem(o, format_set, why_anim, sizeof(why_anim));
    if (anim) {
        fprintf(stderr, "thumbnail_client: %s\nTry 'thumbnail_client --help'.\n", anim);
        return TN_OPTIONS_USAGE;
    }
    if (o->name_template && strstr(o->name_template, "{time}") && (o->count || o->storyboard)) {
        fprintf(stderr, "thumbnail_client: --name {time} needs --at or --every (the times of "
                        "--count and --storyboard are known only to the server)\n");
        return TN_OPTIONS_USAGE;
    }
    if (rest >= 1)
        o->input_dir = argv[optind];
    if (rest == 2)
        o->output_dir = argv[optind + 1];
    if (!*o->input_dir || !*o->output_dir) {
        fprintf(stderr, "thumbnail_client: empty directory name\n");
        return TN_OPTIONS_USAGE;
    }
    /* Options that the chosen format would silently ignore are mistakes. */
    if (o->lossless && o->format != TN_FORMAT_WEBP) {
        fprintf(stderr, "thumbnail_client: --lossless needs --format webp\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if (o->quality && o->format == TN_FORMAT_PNG) {
        fprintf(stderr, "thumbnail_client: --quality needs --format jpeg or webp\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if (o->png_level && o->format != TN_FORMAT_PNG) {
        fprintf(stderr, "thumbnail_client: --png-level needs --format png\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if ((o->count != 0) + (o->every > 0) + (o->n_times != 0) > 1) {
        fprintf(stderr, "thumbnail_client: give one of --at, --count and --every\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if (o->count > TN_JOB_MAX_TIMES && !o->storyboard) {
        fprintf(stderr,
                "thumbnail_client: --count %u: at most %d thumbnails (1000 tiles with "
                "--storyboard)\nTry 'thumbnail_client --help'.\n",
                o->count, TN_JOB_MAX_TIMES);
        return TN_OPTIONS_USAGE;
    }
    if (o->storyboard && o->n_times) {
        fprintf(stderr, "thumbnail_client: --storyboard takes --every or --count, not --at\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if ((o->fit == TN_FIT_FILL || o->fit == TN_FIT_PAD) && (!o->max_width || !o->max_height)) {
        fprintf(stderr,
                "thumbnail_client: --fit %s needs --width and --height\n"
                "Try 'thumbnail_client --help'.\n",
                o->fit == TN_FIT_FILL ? "fill" : "pad");
        return TN_OPTIONS_USAGE;
    }
    if (o->local && o->pull == 1) {
        fprintf(stderr, "thumbnail_client: --local and --pull cannot be used together\n"
                        "Try 'thumbnail_client --help'.\n");
        return TN_OPTIONS_USAGE;
    }
    if (load_security(o) < 0) {
        tn_options_free(o);
        return TN_OPTIONS_USAGE;
    }
    /* A named time (--at, --count, --every) is exact unless --mode says otherwise; with
     * none, no mode is sent either, and the server picks a representative frame. */
    if (!o->mode_set && !o->storyboard && (o->n_times || o->count || o->every > 0))
        o->mode = TN_MODE_ACCURATE;
    /* Like other thumbnailers, the default bounds the longer side: a square box
     * (with the default fit, FIT, the picture keeps its aspect inside it). */
    if (!width_set && !height_set)
        o->max_width = o->max_height = TN_CLIENT_DEFAULT_BOX;
    return TN_OPTIONS_RUN;
}

bool tn_options_pulls(const struct tn_client_options *o, uint64_t size)
{
    return size > 0 && (o->pull == 1 || (o->pull < 0 && size >= o->pull_threshold));
}

size_t tn_options_outputs(const struct tn_client_options *o)
{
    if (o->storyboard)
        return 2;
    if (o->count)
        return o->count;
    if (o->every > 0)
        return TN_JOB_MAX_TIMES;
    return o->n_times ? o->n_times : 1;
}

void tn_options_free(struct tn_client_options *o)
{
    if (!o)
        return;
    if (o->key_pem)
        memset(o->key_pem, 0, strlen(o->key_pem));
    if (o->authorization)
        memset(o->authorization, 0, strlen(o->authorization));
    free(o->ca_pem);
    free(o->cert_pem);
    free(o->key_pem);
    free(o->authorization);
    o->ca_pem = o->cert_pem = o->key_pem = o->authorization = NULL;
}

const char *tn_options_extension(int format)
{
    switch (format) {
    case TN_FORMAT_JPEG: return "jpg";
    case TN_FORMAT_WEBP: return "webp";
    default: return "png";
    }
}
