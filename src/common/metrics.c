/*
 * The shared metrics region and its Prometheus text exposition. See metrics.h
 * for the design; this file holds the layout and the formatting.
 *
 * Every counter is a uint64_t updated with __atomic builtins (lock-free on
 * every 64-bit target we build for, hence safe between processes). Histograms
 * keep per-bucket (non-cumulative) counts; the exposition derives the
 * cumulative buckets and _count from them, so "+Inf == _count" holds in every
 * scrape even while observations race with it. Sums are kept in microseconds.
 */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRONTS 8     /* a front and the ones draining after reloads */
#define MAX_WORKERS 1024 /* 256 workers, plus old ones draining after reloads */
#define N_CODES 17

static const double handling_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                         0.5,   1,    2.5,   5,    10}; /* Prometheus defaults */
#define N_HANDLING (sizeof(handling_bounds) / sizeof(handling_bounds[0]))
static const double decode_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_DECODE (sizeof(decode_bounds) / sizeof(decode_bounds[0]))

/* libav's codec names we tell apart; anything else is "other". "none": the
 * job ended before a video stream was found (not a video, ...). */
static const char *const codec_names[] = {"none",  "h264",       "hevc",  "vp8",    "vp9",  "av1",
                                          "mpeg4", "mpeg2video", "mjpeg", "prores", "other"};
#define N_CODECS (sizeof(codec_names) / sizeof(codec_names[0]))
static const char *const mode_names[] = {"other", "accurate", "keyframe", "smart"};
#define N_MODES (sizeof(mode_names) / sizeof(mode_names[0]))

static const struct {
    const char *service, *method, *type;
} methods[TN_M_N_METHODS] = {
    [TN_M_GENERATE] = {"thumbnail.v1.Thumbnailer", "Generate", "bidi_stream"},
    [TN_M_HEALTH_CHECK] = {"grpc.health.v1.Health", "Check", "unary"},
    [TN_M_HEALTH_WATCH] = {"grpc.health.v1.Health", "Watch", "server_stream"},
    [TN_M_REFLECTION] = {"grpc.reflection.v1.ServerReflection", "ServerReflectionInfo",
                         "bidi_stream"},
    [TN_M_REFLECTION_ALPHA] = {"grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo",
                               "bidi_stream"},
    [TN_M_PROBE] = {"thumbnail.v1.Thumbnailer", "Probe", "client_stream"},
};

/* go-grpc-prometheus spells codes as Go's codes.Code.String() does. */
static const char *const code_names[N_CODES] = {
    "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated"};

static const char *const cause_names[TN_RESTART_N_CAUSES] = {"crash", "timeout", "recycle",
                                                             "sandbox"};
static const char *const front_cause_names[TN_FRONT_N_CAUSES] = {"unhealthy", "memory"};

struct hist_handling {
    uint64_t bucket[N_HANDLING + 1]; /* last: above the largest bound */
    uint64_t sum_us;
};

struct hist_decode {
    uint64_t bucket[N_DECODE + 1];
    uint64_t sum_us;
};

struct front_rec {
    int32_t pid; /* 0 = free */
    int32_t queued;
    int64_t spool_bytes;
    int64_t cache_entries, cache_bytes;
};

struct worker_rec {
    int32_t pid; /* 0 = free */
    int32_t busy;
    int32_t timeout_kill; /* set by the front before it SIGKILLs this pid */
    int32_t pad;
};

struct region {
    uint64_t start_time_us; /* Unix time of tn_metrics_create() */
    /* [protocol]: direct gRPC calls, or the HTTP gateway's (TN_P_HTTP) */
    uint64_t started[TN_P_N][TN_M_N_METHODS];
    uint64_t handled[TN_P_N][TN_M_N_METHODS][N_CODES];
    uint64_t msg_received[TN_M_N_METHODS];
    uint64_t msg_sent[TN_M_N_METHODS];
    struct hist_handling handling[TN_P_N][TN_M_N_METHODS];
    uint64_t unknown_method;
    uint64_t bytes_received, bytes_sent;
    uint64_t restarts[TN_RESTART_N_CAUSES];
    uint64_t front_replaced[TN_FRONT_N_CAUSES];
    struct hist_decode decode[N_CODECS][N_MODES];
    uint64_t cache_hits, cache_misses, cache_damaged, cache_stores, cache_evictions,
        cache_evicted_bytes;
    struct front_rec fronts[MAX_FRONTS];
    struct worker_rec workers[MAX_WORKERS];
};

/* Inherited through fork; never unmapped (it must outlive every child). */
static struct region *R;
/* This process's own record, once attached. */
static struct front_rec *my_front;
static struct worker_rec *my_worker;

static void add(uint64_t *p, uint64_t n) /* NOLINT(readability-non-const-parameter): atomic */
{
    __atomic_fetch_add(p, n, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static uint64_t to_us(double seconds)
{
    return seconds > 0 ? (uint64_t)(seconds * 1e6 + 0.5) : 0;
}

int tn_metrics_create(void)
{
    if (R)
        return 0;
    void *p = mmap(NULL, sizeof(struct region), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    R = p; /* zero-filled by the kernel */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    R->start_time_us = (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
    return 0;
}

static bool method_ok(enum tn_metrics_method m)
{
    return R && (unsigned)m < TN_M_N_METHODS;
}

void tn_metrics_call_started(enum tn_metrics_method m)
{
    tn_metrics_call_started_p(m, TN_P_GRPC);
}

void tn_metrics_call_handled(enum tn_metrics_method m, int code, double seconds)
{
    tn_metrics_call_handled_p(m, TN_P_GRPC, code, seconds);
}

void tn_metrics_call_started_p(enum tn_metrics_method m, enum tn_metrics_protocol p)
{
    if (method_ok(m) && (unsigned)p < TN_P_N)
        add(&R->started[p][m], 1);
}

void tn_metrics_call_handled_p(enum tn_metrics_method m, enum tn_metrics_protocol p, int code,
                               double seconds)
{
    if (!method_ok(m) || (unsigned)p >= TN_P_N)
        return;
    if (code < 0 || code >= N_CODES)
        code = 2; /* Unknown */
    size_t b = 0;
    while (b < N_HANDLING && seconds > handling_bounds[b])
        b++;
    add(&R->handling[p][m].bucket[b], 1);
    add(&R->handling[p][m].sum_us, to_us(seconds));
    add(&R->handled[p][m][code], 1);
}

void tn_metrics_msg_received(enum tn_metrics_method m)
{
    if (method_ok(m))
        add(&R->msg_received[m], 1);
}

void tn_metrics_msg_sent(enum tn_metrics_method m)
{
    if (method_ok(m))
        add(&R->msg_sent[m], 1);
}

void tn_metrics_unknown_method(void)
{
    if (R)
        add(&R->unknown_method, 1);
}

void tn_metrics_bytes_received(uint64_t n)
{
    if (R)
        add(&R->bytes_received, n);
}

void tn_metrics_bytes_sent(uint64_t n)
{
    if (R)
        add(&R->bytes_sent, n);
}

void tn_metrics_front_attach(void)
{
    if (!R || my_front)
        return;
    int32_t me = (int32_t)getpid();
    for (int i = 0; i < MAX_FRONTS; i++) {
        int32_t free_pid = 0;
        struct front_rec *r = &R->fronts[i];
        if (__atomic_compare_exchange_n(&r->pid, &free_pid, me, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            __atomic_store_n(&r->queued, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->spool_bytes, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->cache_entries, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->cache_bytes, 0, __ATOMIC_RELAXED);
            my_front = r;
            return;
        }
    }
    /* All taken (more fronts alive than MAX_FRONTS): this one's gauges go uncounted. */
}

void tn_metrics_front_queue_depth(int n)
{
    if (my_front)
        __atomic_store_n(&my_front->queued, n, __ATOMIC_RELAXED);
}

void tn_metrics_front_spool_add(int64_t n)
{
    if (my_front)
        __atomic_fetch_add(&my_front->spool_bytes, n, __ATOMIC_RELAXED);
}

void tn_metrics_cache_add(uint64_t hits, uint64_t misses, uint64_t damaged, uint64_t stores,
                          uint64_t evictions, uint64_t evicted_bytes)
{
    if (!R)
        return;
    add(&R->cache_hits, hits);
    add(&R->cache_misses, misses);
    add(&R->cache_damaged, damaged);
    add(&R->cache_stores, stores);
    add(&R->cache_evictions, evictions);
    add(&R->cache_evicted_bytes, evicted_bytes);
}

void tn_metrics_front_cache_size(uint64_t entries, uint64_t bytes)
{
    if (!my_front)
        return;
    __atomic_store_n(&my_front->cache_entries, (int64_t)entries, __ATOMIC_RELAXED);
    __atomic_store_n(&my_front->cache_bytes, (int64_t)bytes, __ATOMIC_RELAXED);
}

void tn_metrics_worker_mark_timeout(pid_t pid)
{
    if (!R || pid <= 0)
        return;
    for (int i = 0; i < MAX_WORKERS; i++)
        if (__atomic_load_n(&R->workers[i].pid, __ATOMIC_ACQUIRE) == (int32_t)pid) {
            __atomic_store_n(&R->workers[i].timeout_kill, 1, __ATOMIC_RELEASE);
            return;
        }
}

void tn_metrics_worker_attach(void)
{
    if (!R || my_worker)
        return;
    int32_t me = (int32_t)getpid();
    for (int i = 0; i < MAX_WORKERS; i++) {
        int32_t free_pid = 0;
        struct worker_rec *r = &R->workers[i];
        if (__atomic_compare_exchange_n(&r->pid, &free_pid, me, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            __atomic_store_n(&r->busy, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->timeout_kill, 0, __ATOMIC_RELAXED);
            my_worker = r;
            return;
        }
    }
}

void tn_metrics_worker_busy(int busy)
{
    if (my_worker)
        __atomic_store_n(&my_worker->busy, busy ? 1 : 0, __ATOMIC_RELAXED);
}

static size_t codec_index(const char *codec)
{
    if (!codec || !*codec)
        return 0;
    for (size_t i = 1; i < N_CODECS - 1; i++)
        if (strcmp(codec, codec_names[i]) == 0)
            return i;
    return N_CODECS - 1;
}

void tn_metrics_decode(const char *codec, int mode, double seconds)
{
    if (!R)
        return;
    size_t mi = mode >= 0 && (size_t)mode < N_MODES ? (size_t)mode : 0;
    struct hist_decode *h = &R->decode[codec_index(codec)][mi];
    size_t b = 0;
    while (b < N_DECODE && seconds > decode_bounds[b])
        b++;
    add(&h->bucket[b], 1);
    add(&h->sum_us, to_us(seconds));
}

int tn_metrics_reaped(pid_t pid)
{
    int timeout = 0;
    if (!R || pid <= 0)
        return 0;
    for (int i = 0; i < MAX_FRONTS; i++) {
        struct front_rec *r = &R->fronts[i];
        if (__atomic_load_n(&r->pid, __ATOMIC_ACQUIRE) == (int32_t)pid) {
            __atomic_store_n(&r->queued, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->spool_bytes, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->cache_entries, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->cache_bytes, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->pid, 0, __ATOMIC_RELEASE);
        }
    }
    for (int i = 0; i < MAX_WORKERS; i++) {
        struct worker_rec *r = &R->workers[i];
        if (__atomic_load_n(&r->pid, __ATOMIC_ACQUIRE) == (int32_t)pid) {
            timeout = __atomic_load_n(&r->timeout_kill, __ATOMIC_ACQUIRE);
            __atomic_store_n(&r->busy, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->timeout_kill, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->pid, 0, __ATOMIC_RELEASE);
        }
    }
    return timeout;
}

void tn_metrics_worker_restart(enum tn_restart_cause cause)
{
    if (R && (unsigned)cause < TN_RESTART_N_CAUSES)
        add(&R->restarts[cause], 1);
}

void tn_metrics_front_replaced(enum tn_front_cause cause)
{
    if (R && (unsigned)cause < TN_FRONT_N_CAUSES)
        add(&R->front_replaced[cause], 1);
}

const char *tn_metrics_cause_name(enum tn_restart_cause cause)
{
    return (unsigned)cause < TN_RESTART_N_CAUSES ? cause_names[cause] : "?";
}

/* ---- exposition --------------------------------------------------------- */

struct out {
    char *buf;
    size_t len, cap;
    bool oom;
};

__attribute__((format(printf, 2, 3))) static void emit(struct out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *p = realloc(o->buf, cap);
        if (!p) {
            o->oom = true;
            return;
        }
        o->buf = p;
        o->cap = cap;
    }
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    emit(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A float the way Prometheus' Go client writes one: integers plain, else the
 * shortest form that reads back as the same double. */
static void fmt_double(char *buf, size_t len, double v)
{
    if (v == (double)(int64_t)v && v < 1e15 && v > -1e15) {
        snprintf(buf, len, "%.0f", v); /* "10", not %g's "1e+01" */
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* One histogram: labels ("a=\"b\",c=\"d\"", no braces) may be empty. */
static void histogram(struct out *o, const char *name, const char *labels, const double *bounds,
                      size_t n_bounds, const uint64_t *bucket, uint64_t sum_us)
{
    uint64_t cum = 0;
    const char *sep = *labels ? "," : "";
    char le[32];
    for (size_t b = 0; b < n_bounds; b++) {
        cum += get(&bucket[b]);
        fmt_double(le, sizeof(le), bounds[b]);
        emit(o, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep, le, cum);
    }
    cum += get(&bucket[n_bounds]);
    emit(o, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep, cum);
    char sum[40];
    fmt_double(sum, sizeof(sum), (double)get(&sum_us) / 1e6);
    if (*labels) {
        emit(o, "%s_sum{%s} %s\n", name, labels, sum);
        emit(o, "%s_count{%s} %" PRIu64 "\n", name, labels, cum);
    } else {
        emit(o, "%s_sum %s\n%s_count %" PRIu64 "\n", name, sum, name, cum);
    }
}

/* A direct gRPC call's series have no protocol label (as before the HTTP
 * gateway existed, so dashboards keep working); the gateway's carry
 * protocol="http". */
static void method_labels(char *buf, size_t len, int m)
{
    snprintf(buf, len, "grpc_type=\"%s\",grpc_service=\"%s\",grpc_method=\"%s\"", methods[m].type,
             methods[m].service, methods[m].method);
}

static void proto_labels(char *buf, size_t len, int m, int p)
{
    method_labels(buf, len, m);
    if (p == TN_P_HTTP)
        snprintf(buf + strlen(buf), len - strlen(buf), ",protocol=\"http\"");
}

char *tn_metrics_render(size_t *len)
{
    struct out o = {.buf = NULL, .len = 0, .cap = 16384};
    char labels[256];

    if (!R)
        return NULL;
    if (!(o.buf = malloc(o.cap)))
        return NULL;
    o.buf[0] = 0;

    family(&o, "grpc_server_started_total", "counter",
           "Total number of RPCs started on the server.");
    for (int p = 0; p < TN_P_N; p++)
        for (int m = 0; m < TN_M_N_METHODS; m++) {
            proto_labels(labels, sizeof(labels), m, p);
            emit(&o, "grpc_server_started_total{%s} %" PRIu64 "\n", labels, get(&R->started[p][m]));
        }
    family(&o, "grpc_server_handled_total", "counter",
           "Total number of RPCs completed on the server, regardless of success or failure.");
    for (int p = 0; p < TN_P_N; p++)
        for (int m = 0; m < TN_M_N_METHODS; m++) {
            proto_labels(labels, sizeof(labels), m, p);
            for (int c = 0; c < N_CODES; c++)
                emit(&o, "grpc_server_handled_total{%s,grpc_code=\"%s\"} %" PRIu64 "\n", labels,
                     code_names[c], get(&R->handled[p][m][c]));
        }
    family(&o, "grpc_server_handling_seconds", "histogram",
           "Histogram of response latency (seconds) of gRPC that had been application-level "
           "handled by the server.");
    for (int p = 0; p < TN_P_N; p++)
        for (int m = 0; m < TN_M_N_METHODS; m++) {
            proto_labels(labels, sizeof(labels), m, p);
            histogram(&o, "grpc_server_handling_seconds", labels, handling_bounds, N_HANDLING,
                      R->handling[p][m].bucket, R->handling[p][m].sum_us);
        }
    family(&o, "grpc_server_msg_received_total", "counter",
           "Total number of RPC stream messages received on the server.");
    for (int m = 0; m < TN_M_N_METHODS; m++) {
        method_labels(labels, sizeof(labels), m);
        emit(&o, "grpc_server_msg_received_total{%s} %" PRIu64 "\n", labels,
             get(&R->msg_received[m]));
    }
    family(&o, "grpc_server_msg_sent_total", "counter",
           "Total number of gRPC stream messages sent by the server.");
    for (int m = 0; m < TN_M_N_METHODS; m++) {
        method_labels(labels, sizeof(labels), m);
        emit(&o, "grpc_server_msg_sent_total{%s} %" PRIu64 "\n", labels, get(&R->msg_sent[m]));
    }

    family(&o, "thumbnail_build_info", "gauge", "The server's version, as a label; always 1.");
    emit(&o, "thumbnail_build_info{version=\"%s\"} 1\n", TN_VERSION);
    family(&o, "thumbnail_start_time_seconds", "gauge",
           "When the server started, in Unix time: every counter here began at 0 then.");
    char start[40];
    fmt_double(start, sizeof(start), (double)R->start_time_us / 1e6);
    emit(&o, "thumbnail_start_time_seconds %s\n", start);

    family(&o, "thumbnail_unknown_method_calls_total", "counter",
           "Calls to methods this server does not serve (answered Unimplemented).");
    emit(&o, "thumbnail_unknown_method_calls_total %" PRIu64 "\n", get(&R->unknown_method));

    int64_t queued = 0, spool = 0, cache_entries = 0, cache_bytes = 0;
    for (int i = 0; i < MAX_FRONTS; i++) {
        if (__atomic_load_n(&R->fronts[i].pid, __ATOMIC_ACQUIRE) == 0)
            continue;
        queued += __atomic_load_n(&R->fronts[i].queued, __ATOMIC_RELAXED);
        spool += __atomic_load_n(&R->fronts[i].spool_bytes, __ATOMIC_RELAXED);
        /* fronts across a reload share one directory: the largest view, not the sum */
        int64_t e = __atomic_load_n(&R->fronts[i].cache_entries, __ATOMIC_RELAXED);
        int64_t b = __atomic_load_n(&R->fronts[i].cache_bytes, __ATOMIC_RELAXED);
        cache_entries = e > cache_entries ? e : cache_entries;
        cache_bytes = b > cache_bytes ? b : cache_bytes;
    }
    int busy = 0, idle = 0;
    for (int i = 0; i < MAX_WORKERS; i++) {
        if (__atomic_load_n(&R->workers[i].pid, __ATOMIC_ACQUIRE) == 0)
            continue;
        if (__atomic_load_n(&R->workers[i].busy, __ATOMIC_RELAXED))
            busy++;
        else
            idle++;
    }
    family(&o, "thumbnail_queue_depth", "gauge", "Uploaded jobs waiting for a free decode worker.");
    emit(&o, "thumbnail_queue_depth %" PRId64 "\n", queued < 0 ? 0 : queued);
    family(&o, "thumbnail_workers", "gauge", "Decode worker processes, by state.");
    emit(&o, "thumbnail_workers{state=\"busy\"} %d\n", busy);
    emit(&o, "thumbnail_workers{state=\"idle\"} %d\n", idle);
    family(&o, "thumbnail_worker_restarts_total", "counter",
           "Decode workers replaced after an unplanned exit, by cause.");
    for (int c = 0; c < TN_RESTART_N_CAUSES; c++)
        emit(&o, "thumbnail_worker_restarts_total{cause=\"%s\"} %" PRIu64 "\n", cause_names[c],
             get(&R->restarts[c]));
    family(&o, "thumbnail_front_replacements_total", "counter",
           "Fronts the master's watchdog replaced while they still ran, by cause.");
    for (int c = 0; c < TN_FRONT_N_CAUSES; c++)
        emit(&o, "thumbnail_front_replacements_total{cause=\"%s\"} %" PRIu64 "\n",
             front_cause_names[c], get(&R->front_replaced[c]));
    family(&o, "thumbnail_received_bytes_total", "counter",
           "Video bytes received from clients and written to the spool.");
    emit(&o, "thumbnail_received_bytes_total %" PRIu64 "\n", get(&R->bytes_received));
    family(&o, "thumbnail_sent_bytes_total", "counter", "Image bytes streamed to clients.");
    emit(&o, "thumbnail_sent_bytes_total %" PRIu64 "\n", get(&R->bytes_sent));
    family(&o, "thumbnail_spool_bytes", "gauge",
           "Bytes in spool files held by calls in progress (--spool-dir).");
    emit(&o, "thumbnail_spool_bytes %" PRId64 "\n", spool < 0 ? 0 : spool);

    family(&o, "thumbnail_cache_lookups_total", "counter",
           "Result cache (--cache-dir) lookups, by result; a damaged entry is a miss.");
    emit(&o, "thumbnail_cache_lookups_total{result=\"hit\"} %" PRIu64 "\n", get(&R->cache_hits));
    emit(&o, "thumbnail_cache_lookups_total{result=\"miss\"} %" PRIu64 "\n", get(&R->cache_misses));
    family(&o, "thumbnail_cache_damaged_total", "counter",
           "Cache entries that failed their checks (truncated, bit-flipped) and were deleted.");
    emit(&o, "thumbnail_cache_damaged_total %" PRIu64 "\n", get(&R->cache_damaged));
    family(&o, "thumbnail_cache_stores_total", "counter",
           "Finished jobs whose results were written to the cache.");
    emit(&o, "thumbnail_cache_stores_total %" PRIu64 "\n", get(&R->cache_stores));
    family(&o, "thumbnail_cache_evictions_total", "counter",
           "Cache entries removed to stay under --cache-size (least recently used first).");
    emit(&o, "thumbnail_cache_evictions_total %" PRIu64 "\n", get(&R->cache_evictions));
    family(&o, "thumbnail_cache_evicted_bytes_total", "counter", "Bytes of the evicted entries.");
    emit(&o, "thumbnail_cache_evicted_bytes_total %" PRIu64 "\n", get(&R->cache_evicted_bytes));
    family(&o, "thumbnail_cache_entries", "gauge", "Entries in the result cache.");
    emit(&o, "thumbnail_cache_entries %" PRId64 "\n", cache_entries);
    family(&o, "thumbnail_cache_bytes", "gauge",
           "Bytes in the result cache's entries (bounded by --cache-size).");
    emit(&o, "thumbnail_cache_bytes %" PRId64 "\n", cache_bytes);

    family(&o, "thumbnail_decode_seconds", "histogram",
           "Time a decode worker spent on one job, by video codec and seek mode (codec "
           "\"none\": no video stream was found).");
    for (size_t c = 0; c < N_CODECS; c++)
        for (size_t m = 0; m < N_MODES; m++) {
            const struct hist_decode *h = &R->decode[c][m];
            uint64_t n = 0;
            for (size_t b = 0; b <= N_DECODE; b++)
                n += get(&h->bucket[b]);
            if (n == 0)
                continue; /* a series appears with its first observation */
            snprintf(labels, sizeof(labels), "codec=\"%s\",mode=\"%s\"", codec_names[c],
                     mode_names[m]);
            histogram(&o, "thumbnail_decode_seconds", labels, decode_bounds, N_DECODE, h->bucket,
                      h->sum_us);
        }

    if (o.oom) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}
