/*
 * The metrics process (see metrics_http.h).
 *
 * DESIGN. libmicrohttpd runs its own polling thread (MHD_USE_INTERNAL_POLLING_
 * THREAD) on the socket the master bound at start-up; the main thread only
 * waits for signals in sigsuspend(). Every request renders the exposition
 * afresh from the shared counters: a scrape costs one pass over a few
 * kilobytes, and there is no state to keep in step.
 */
#include "metrics_http.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "log.h"
#include "metrics.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define CONNECTION_LIMIT 64
#define CONNECTION_TIMEOUT_S 10

/* A listening socket on ai, or -1 with the errno in *e. */
static int bind_one(const struct addrinfo *ai, int *e)
{
    int one = 1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        *e = errno;
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 511) == 0)
        return fd;
    *e = errno;
    close(fd);
    return -1;
}

int tn_metrics_http_listen(const char *flag, const char *addr, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    struct addrinfo hints, *res = NULL;
    int fd = -1;

    if (!colon || (size_t)(colon - addr) >= sizeof(host)) {
        snprintf(err, errlen, "%s '%s': expected HOST:PORT, [IPV6]:PORT or :PORT", flag, addr);
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    if (host[0] == '[') { /* [::1] -> ::1 */
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']') {
            snprintf(err, errlen, "%s '%s': an IPv6 address goes in brackets", flag, addr);
            return -1;
        }
        memmove(host, host + 1, n - 2);
        host[n - 2] = 0;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s '%s': %s", flag, addr, gai_strerror(rc));
        return -1;
    }
    /* Take the first address that binds. For ":PORT", try "::" before
     * 0.0.0.0: on Linux an IPv6 wildcard socket takes IPv4 connections too
     * (unless net.ipv6.bindv6only), and a host without IPv6 falls back. */
    int e = EADDRNOTAVAIL;
    struct addrinfo *ai;
    if (!host[0])
        for (ai = res; fd < 0 && ai; ai = ai->ai_next)
            if (ai->ai_family == AF_INET6)
                fd = bind_one(ai, &e);
    for (ai = res; fd < 0 && ai; ai = ai->ai_next)
        if (host[0] || ai->ai_family != AF_INET6)
            fd = bind_one(ai, &e);
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "%s '%s': cannot listen: %s", flag, addr, strerror(e));
    return fd;
}

static enum MHD_Result queue_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The signature is libmicrohttpd's MHD_AccessHandlerCallback. */
static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
           const char *version, const char *upload_data,
           size_t *upload_data_size, /* NOLINT(readability-non-const-parameter) */
           void **req_cls)
{
    static int marker;
    (void)cls;
    (void)version;
    (void)upload_data;
    /* Answer on the second call: a response queued on the first makes
     * libmicrohttpd close the connection, and scrapers keep theirs alive. */
    if (*req_cls == NULL) {
        *req_cls = &marker;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return queue_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/") == 0)
        return queue_text(conn, MHD_HTTP_OK, "thumbnail_server metrics: GET /metrics\n");
    if (strcmp(url, "/metrics") != 0)
        return queue_text(conn, MHD_HTTP_NOT_FOUND, "not found; the metrics are at /metrics\n");

    size_t len = 0;
    char *body = tn_metrics_render(&len);
    if (!body)
        return queue_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

__attribute__((format(printf, 2, 0))) static void on_mhd_error(void *cls, const char *fmt,
                                                               va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = 0;
    tn_log_warn("libmicrohttpd: %s", msg);
}

static volatile sig_atomic_t sig_stop, sig_usr1;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        sig_usr1 = 1;
    else
        sig_stop = 1;
}

int tn_metrics_http_main(int listen_fd)
{
    struct sigaction sa;
    sigset_t block, old;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&block);
    static const int sigs[] = {SIGTERM, SIGINT, SIGQUIT, SIGUSR1};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(&block, sigs[i]);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    /* MHD's thread inherits the mask: the signals stay with the main thread,
     * which takes them only inside sigsuspend() (no lost wake-up). */
    pthread_sigmask(SIG_BLOCK, &block, &old);

    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_error, NULL, /* first: it applies from here on */
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
        MHD_OPTION_END);
    if (!d) {
        tn_log_error("cannot start the metrics HTTP server (libmicrohttpd)");
        return 2;
    }
    tn_log_info("serving metrics at /metrics");
    sigset_t wait_mask = old;
    for (int i = 0; i < 4; i++)
        sigdelset(&wait_mask, sigs[i]);
    while (!sig_stop) {
        sigsuspend(&wait_mask);
        if (sig_usr1) {
            sig_usr1 = 0;
            tn_log_reopen();
        }
    }
    MHD_stop_daemon(d); /* closes our copy of the socket; the master keeps its own */
    tn_log_info("stopped");
    return 0;
}
