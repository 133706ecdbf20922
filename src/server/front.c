/*
 * The gRPC front (front.h): signals, the completion-queue thread's main loop,
 * drain and shutdown. The design (threads, ownership, lock order) is in
 * front_int.h.
 */
#include "front_int.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "reflection.h"

static volatile sig_atomic_t sig_stop, sig_quit, sig_usr1;

static void on_signal(int sig)
{
    if (sig == SIGQUIT)
        sig_quit = 1;
    else if (sig == SIGUSR1)
        sig_usr1 = 1;
    else
        sig_stop = 1;
}

/*
 * gRPC's own diagnostics go to our log instead of a stderr that a daemon sends
 * to /dev/null: a refused TLS handshake (a client without a certificate, with
 * a rogue one, or speaking plaintext) is only ever reported there. They are
 * the peer's fault, not the server's, hence WARN for gRPC's ERROR.
 */
static void log_from_grpc(gpr_log_func_args *a)
{
    int level = a->severity == GPR_LOG_SEVERITY_ERROR  ? TN_LOG_WARN
                : a->severity == GPR_LOG_SEVERITY_INFO ? TN_LOG_INFO
                                                       : TN_LOG_DEBUG;
    const char *file = a->file ? strrchr(a->file, '/') : NULL;
    tn_log(level, "grpc: %s (%s:%d)", a->message,
           file      ? file + 1
           : a->file ? a->file
                     : "?",
           a->line);
}

/* ------------------------------------------------------------------------ */
/* Heap trimming (CQ thread)                                                 */

#define TRIM_INTERVAL_MS 1000
#define TRIM_SLACK (32l << 20) /* resident growth over the lowest seen that asks for a trim */

static long resident_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *fp = fopen("/proc/self/statm", "re");
    if (!fp)
        return 0;
    if (fscanf(fp, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(fp);
    return rss * sysconf(_SC_PAGESIZE);
}

/*
 * gRPC 1.51 builds a call (~13 KB of arena) for every stream a client opens,
 * even one it resets at once, and keeps it until the server takes it: a rapid
 * reset burst (30 000 HEADERS + RST_STREAM in 0.1 s) takes the front from
 * 16 MB to ~400 MB for a few seconds. All of it is freed once the calls are
 * taken, but in the middle of glibc's heaps (one arena per gRPC thread), where
 * no trim threshold returns it: the front then stayed at 400 MB for good.
 * malloc_trim(0) returns those pages; run it at most once a TRIM_INTERVAL_MS
 * while the resident size is TRIM_SLACK above the lowest seen. Its cost is a
 * walk of the free chunks, a few ms at 400 MB.
 */
static void trim_heap(int64_t now)
{
    static int64_t last_ms;
    static long floor_rss;
    if (now - last_ms < TRIM_INTERVAL_MS)
        return;
    last_ms = now;
    long rss = resident_bytes();
    if (!floor_rss || rss < floor_rss)
        floor_rss = rss;
    if (rss <= floor_rss + TRIM_SLACK)
        return;
    malloc_trim(0);
    long after = resident_bytes();
    if (rss - after >= TRIM_SLACK / 4)
        tn_log_debug("returned %ld MiB of freed heap to the system (resident now %ld MiB)",
                     (rss - after) >> 20, after >> 20);
}

static void handle_event(struct front *f, grpc_event ev, bool *shutdown_done)
{
    struct tag *t = ev.tag;
    bool ok = ev.success != 0;
    switch (t->kind) {
    case TAG_NEW_GENERATE: on_new_generate(t->owner, ok); break;
    case TAG_NEW_HEALTH: on_new_health(t->owner, ok); break;
    case TAG_NEW_GENERIC: on_new_generic(t->owner, ok); break;
    case TAG_GEN_RECV: on_recv(t->owner, ok); break;
    case TAG_GEN_SEND: on_send_done(t->owner, ok); break;
    case TAG_GEN_CLOSE: on_close(t->owner); break;
    case TAG_SIMPLE_DONE: simple_free(t->owner); break;
    case TAG_NEW_WATCH:
    case TAG_NEW_REFL:
    case TAG_NEW_REFL_ALPHA: on_new_stream(t->owner, ok); break;
    case TAG_STREAM_RECV: on_stream_recv(t->owner, ok); break;
    case TAG_STREAM_SEND: on_stream_send(t->owner, ok); break;
    case TAG_STREAM_CLOSE: on_stream_close(t->owner); break;
    case TAG_SHUTDOWN: *shutdown_done = true; break;
    }
}

int tn_front_main(const struct tn_config *cfg, int queue_fd, int ctl_fd)
{
    struct front fr;
    struct front *f = &fr;
    int status = 1;
    memset(f, 0, sizeof(*f));
    dlink_init(&f->running);
    dlink_init(&f->recving);
    dlink_init(&f->calls);
    f->cfg = cfg;
    f->queue_fd = queue_fd;
    f->ctl_fd = ctl_fd;
    f->workers_left = -1;
    f->epfd = f->evfd = f->media_root_fd = -1;
    f->t_shutdown = (struct tag){TAG_SHUTDOWN, f};
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->cache_pub_mu, NULL);
    /* Upload messages are 1 MiB buffers, malloc'd and freed all the time. With
     * glibc's defaults each free trimmed the heap (brk) and the next malloc
     * faulted the pages back in: 18 % of the front's time went to brk and
     * page faults in a perf profile of a 60 MB upload; front CPU per MB fell
     * from 3.6-5.8 ms to 0.2-0.8 ms (bench/run.sh's upload figure) with
     * these. Kept free memory is bounded by the trim threshold. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);

    /* gRPC's threads and the poller inherit a mask with our signals blocked, so
     * only the main thread runs the handlers (and its cq_next wakes each tick). */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &old);

    tn_metrics_front_attach();
    gpr_set_log_function(log_from_grpc);
    grpc_init();
    int rc = setup(f, cfg);
    if (rc == 0) {
        if (pthread_create(&f->poller, NULL, poller_main, f) != 0) {
            tn_log_error("cannot start the poller thread");
            rc = -1;
        } else {
            f->poller_started = true;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == -2 || (rc < 0 && !f->server)) {
        /* Never started: no call or request is outstanding. */
        status = rc == -2 ? 2 : 1;
        if (f->server)
            grpc_server_destroy(f->server);
        if (f->cq) {
            grpc_completion_queue_shutdown(f->cq);
            while (
                grpc_completion_queue_next(f->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
                GRPC_QUEUE_SHUTDOWN)
                ;
            grpc_completion_queue_destroy(f->cq);
        }
        goto out_grpc;
    } else if (rc < 0) {
        /* Started but the poller failed: an orderly shutdown of what was set up. */
        status = 1;
        sig_stop = 1;
    } else {
        tn_log_info("serving (max %d concurrent calls, chunk %" PRIu64 " bytes)",
                    cfg->max_concurrent_calls, cfg->chunk_size);
        tn_notify_ready("serving on %s%s", cfg->listen[0], cfg->n_listen > 1 ? " and more" : "");
        status = 0;
        /* The master retires the previous generation (reload) on this word. */
        struct tn_ipc_ctl ready = {.value = 0};
        tn_ipc_header_init(&ready.h, TN_IPC_CTL_READY, 0);
        int err = f->ctl_fd >= 0 ? tn_ipc_send(f->ctl_fd, &ready, sizeof(ready), NULL, 0, 0) : 0;
        if (err < 0)
            tn_log_error("telling the master that the front is serving failed: %s", strerror(-err));
    }

    bool shutting_down = false, shutdown_done = false, cancelled_all = false, ended = false;
    int64_t drain_deadline = 0, last_idle_check = 0;
    for (;;) {
        if (sig_usr1) {
            sig_usr1 = 0;
            tn_log_reopen();
        }
        int64_t now = tn_mono_ms();
        pthread_mutex_lock(&f->mu);
        bool was_draining = f->draining;
        if (sig_quit && !f->draining) {
            f->draining = true;
            drain_deadline = now + (int64_t)(cfg->grace_s * 1000);
            tn_log_info("draining: %d calls in progress, up to %.0f s", f->n_gen_calls,
                        cfg->grace_s);
        }
        if (sig_stop && (!f->draining || drain_deadline > now)) {
            f->draining = true; /* stop now, also in the middle of a drain */
            drain_deadline = now;
        }
        bool drained = f->draining && (f->n_gen_calls == 0 || now >= drain_deadline);
        int live = f->n_live;
        bool drain_started = f->draining && !was_draining;
        bool health_changed = f->health_changed;
        f->health_changed = false;
        pthread_mutex_unlock(&f->mu);
        if (drain_started || health_changed)
            streams_update(f, false); /* Watch: NOT_SERVING */
        if (f->draining && !shutting_down) {
            /* At once, not when drained: the listeners close and every client
             * gets GOAWAY, so new calls go elsewhere (after a reload, to the
             * new front) instead of failing here; calls in flight go on. */
            shutting_down = true;
            grpc_server_shutdown_and_notify(f->server, f->cq, &f->t_shutdown);
        }
        if (drained && !ended) {
            ended = true;
            streams_update(f, true); /* or the shutdown would wait for them */
        }
        if (shutting_down && !cancelled_all && now >= drain_deadline) {
            cancelled_all = true;
            grpc_server_cancel_all_calls(f->server);
        }
        if (shutdown_done && live == 0)
            break;
        grpc_event ev = grpc_completion_queue_next(
            f->cq,
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(200, GPR_TIMESPAN)),
            NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(f, ev, &shutdown_done);
        int64_t t_now = tn_mono_ms();
        if (t_now - last_idle_check >= POLL_TICK_MS) {
            last_idle_check = t_now;
            check_idle(f, t_now);
            check_send_stall(f, t_now);
            log_quiet_resets(f, t_now);
        }
        trim_heap(t_now);
    }

    if (f->poller_started) {
        pthread_mutex_lock(&f->mu);
        f->stop_poller = true;
        pthread_mutex_unlock(&f->mu);
        uint64_t one = 1;
        if (write(f->evfd, &one, sizeof(one)) < 0)
            tn_log_error("write() to eventfd failed: %s", strerror(errno));
        pthread_join(f->poller, NULL);
    }
    grpc_server_destroy(f->server);
    unpublish_unix(f);
    grpc_completion_queue_shutdown(f->cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(f->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(f, ev, &shutdown_done);
    }
    grpc_completion_queue_destroy(f->cq);
out_grpc:
    grpc_shutdown();
    if (f->epfd >= 0)
        close(f->epfd);
    if (f->evfd >= 0)
        close(f->evfd);
    if (f->media_root_fd >= 0)
        close(f->media_root_fd);
    close(f->queue_fd);
    if (f->ctl_fd >= 0)
        close(f->ctl_fd);
    tn_reflection_free(&f->refl);
    tn_cache_close(&f->cache);
    pthread_mutex_destroy(&f->cache_pub_mu);
    pthread_mutex_destroy(&f->mu);
    tn_log_info("stopped");
    return status;
}
