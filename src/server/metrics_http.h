/*
 * The metrics process: serves GET /metrics (Prometheus text format) over
 * HTTP with libmicrohttpd, from the shared region of src/common/metrics.h.
 *
 * It is its own process, forked and respawned by the master like the front
 * and the workers, never a thread in the master: the master must stay
 * single-threaded to fork safely, and this process never calls grpc_init()
 * nor touches libav.
 */
#ifndef TN_METRICS_HTTP_H
#define TN_METRICS_HTTP_H

#include <stddef.h>

/*
 * Bind and listen on addr ("HOST:PORT", "[IPV6]:PORT" or ":PORT" for every
 * interface). Returns the listening fd (O_CLOEXEC), or -1 with a message in err
 * that starts with flag. Called before daemonizing, so that a taken port
 * refuses the start; the HTTP gateway's --http-listen uses it too.
 */
int tn_metrics_http_listen(const char *flag, const char *addr, char *err, size_t errlen);

/*
 * Serve on listen_fd (not owned: the master keeps it for the next respawn)
 * until SIGTERM, SIGINT or SIGQUIT. Returns the exit status: 0 after a stop,
 * 2 if the HTTP server could not start.
 */
int tn_metrics_http_main(int listen_fd);

#endif
