#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <grpc/grpc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"

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
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: thumbnail_client [options] [INPUT_DIR [OUTPUT_DIR]]\n"
            "\n"
            "Uploads every regular file under INPUT_DIR (default input/; hidden files and\n"
            "directories are skipped, symlinks to directories are not followed) to a\n"
            "thumbnail_server and writes OUTPUT_DIR/<path minus extension>.png (default\n"
            "output/; .jpg or .webp with --format). With several --at points the outputs\n"
            "are <name>-1.png, <name>-2.png...\n"
            "\n"
            "Options:\n"
            "  -s, --server ADDR       server address, e.g. host:50051 or unix:/run/tn.sock\n"
            "                          (env THUMBNAIL_SERVER; default " TN_CLIENT_DEFAULT_SERVER
            ")\n"
            "  -j, --jobs N            files processed concurrently, 1..%d\n"
            "                          (env NUM_JOBS; default %d)\n"
            "      --at T              time point: seconds (12.5), percent (10%%) or [h:]m:s\n"
            "                          (1:30); repeatable or comma-separated, at most %d.\n"
            "                          Default: none sent, the server picks 10%%\n"
            "      --width W           bounding box width in pixels, 0 = unbounded\n"
            "      --height H          bounding box height in pixels, 0 = unbounded\n"
            "                          (neither given: width %d, height unbounded)\n"
            "      --upscale           allow scaling up videos smaller than the box\n"
            "      --mode MODE         accurate (exact frame, default) or keyframe (faster)\n"
            "      --format FMT        png (default), jpeg (.jpg) or webp (.webp)\n"
            "      --quality N         JPEG/WebP quality 1..100 (server default: JPEG 85,\n"
            "                          WebP 80); with --lossless, the WebP effort\n"
            "                          (default: fastest; 100: slowest, ~15%% smaller)\n"
            "      --lossless          lossless WebP (needs --format webp)\n"
            "      --png-level N       PNG zlib level 1..9 (server default 1: fast)\n"
            "      --chunk-size SIZE   bytes per upload message, e.g. 256K, 4M (default 1M)\n"
            "      --retries N         retries of a call that failed with UNAVAILABLE (or was\n"
            "                          cancelled by the server before any result, as in a\n"
            "                          server's restart), with exponential backoff; the\n"
            "                          upload restarts (default %d)\n"
            "      --timeout SECS      deadline of each call, e.g. 90, 10m (default %.0f s;\n"
            "                          %.0f s for --health)\n"
            "      --connect-timeout SECS\n"
            "                          how long to wait for the server at start-up\n"
            "                          (default %.0f s); unreachable = exit status 2\n"
            "      --overwrite         replace existing outputs (default: a file whose\n"
            "                          outputs all exist is skipped)\n"
            "  -q, --quiet             print only failures: no ok/skip lines, progress bar\n"
            "                          or summary\n"
            "  -v, --verbose           debug diagnostics on stderr\n"
            "      --health            check grpc.health.v1.Health for service \"\" and exit:\n"
            "                          0 SERVING, 1 not serving or error, 2 unreachable\n"
            "  -h, --help              show this help and exit\n"
            "  -V, --version           show the version and exit\n"
            "\n"
            "Exit status: 0 all files done or skipped, 1 some file failed, 2 usage error,\n"
            "missing INPUT_DIR or unreachable server, 130 interrupted.\n",
            TN_CLIENT_MAX_JOBS, TN_CLIENT_DEFAULT_JOBS, TN_IPC_MAX_TIMES, TN_CLIENT_DEFAULT_WIDTH,
            TN_CLIENT_DEFAULT_RETRIES, TN_CLIENT_DEFAULT_TIMEOUT, TN_CLIENT_DEFAULT_HEALTH_TIMEOUT,
            TN_CLIENT_DEFAULT_CONNECT_TIMEOUT);
}

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
    if (tn_parse_uint(s, 0, 65535, &v) < 0)
        return bad(what, s, "expected pixels 0..65535, 0 = unbounded");
    *out = (uint32_t)v;
    return 0;
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
        if (o->n_times == TN_IPC_MAX_TIMES)
            return bad("--at", s, "at most %d time points", TN_IPC_MAX_TIMES);
        if (tn_parse_time_point(tok, &o->times[o->n_times]) < 0)
            return bad("--at", tok, "expected seconds (12.5), percent 0..100 (10%%) or [h:]m:s");
        o->n_times++;
    }
    if (n == 0)
        return bad("--at", s, "expected a time point");
    return 0;
}

int tn_options_parse(struct tn_client_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof(*o));
    o->server = TN_CLIENT_DEFAULT_SERVER;
    o->input_dir = "input/";
    o->output_dir = "output/";
    o->jobs = TN_CLIENT_DEFAULT_JOBS;
    o->mode = TN_MODE_ACCURATE;
    o->format = TN_FORMAT_PNG;
    o->chunk_size = TN_CLIENT_DEFAULT_CHUNK;
    o->retries = TN_CLIENT_DEFAULT_RETRIES;
    o->timeout = TN_CLIENT_DEFAULT_TIMEOUT;
    o->connect_timeout = TN_CLIENT_DEFAULT_CONNECT_TIMEOUT;

    const char *env = getenv("THUMBNAIL_SERVER");
    if (env && *env)
        o->server = env;
    env = getenv("NUM_JOBS");
    if (env && *env && parse_jobs("NUM_JOBS", env, &o->jobs) < 0)
        return TN_OPTIONS_USAGE;

    bool width_set = false, height_set = false;
    uint64_t v;
    int c;
    opterr = 0; /* our own messages, always followed by the --help hint */
    while ((c = getopt_long(argc, argv, ":s:j:qvhV", long_options, NULL)) != -1) {
        switch (c) {
        case 's':
            if (!*optarg)
                return bad("--server", optarg, "expected an address");
            o->server = optarg;
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
            else
                return bad("--mode", optarg, "expected accurate or keyframe");
            break;
        case OPT_FORMAT:
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
            if (tn_parse_uint(optarg, 1, 100, &v) < 0)
                return bad("--quality", optarg, "expected an integer 1..100");
            o->quality = (uint32_t)v;
            break;
        case OPT_LOSSLESS: o->lossless = true; break;
        case OPT_PNG_LEVEL:
            if (tn_parse_uint(optarg, 1, 9, &v) < 0)
                return bad("--png-level", optarg, "expected an integer 1..9");
            o->png_level = (uint32_t)v;
            break;
        case OPT_CHUNK:
            if (tn_parse_size(optarg, &v) < 0 || v < TN_CLIENT_MIN_CHUNK || v > TN_CLIENT_MAX_CHUNK)
                return bad("--chunk-size", optarg, "expected a size 1K..256M such as 64K or 4M");
            o->chunk_size = v;
            break;
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
        case 'h': usage(stdout); return TN_OPTIONS_EXIT_OK;
        case 'V':
            printf("thumbnail_client %s (gRPC core %s)\n", TN_VERSION, grpc_version_string());
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
    if (rest > 2) {
        fprintf(stderr,
                "thumbnail_client: too many arguments ('%s')\n"
                "Try 'thumbnail_client --help'.\n",
                argv[optind + 2]);
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
    /* Explicit rather than relying on the server's "both 0" rule. */
    if (!width_set && !height_set)
        o->max_width = TN_CLIENT_DEFAULT_WIDTH;
    return TN_OPTIONS_RUN;
}

const char *tn_options_extension(int format)
{
    switch (format) {
    case TN_FORMAT_JPEG: return "jpg";
    case TN_FORMAT_WEBP: return "webp";
    default: return "png";
    }
}
