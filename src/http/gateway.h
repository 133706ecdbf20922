/*
 * The HTTP gateway process (--http-listen): thumbnails, storyboards, animated
 * previews, probes and listings as plain HTTP GETs, for browsers, CDNs and
 * caching proxies (deploy/nginx/).
 *
 * It is its own process, forked and respawned by the master like the metrics
 * process (master.c's DESIGN), and it is a gRPC CLIENT of the front over a
 * private unix socket: every HTTP request that needs a worker becomes a
 * Generate, Probe or List call, so the front's limits (concurrent calls, the
 * job queue, deadlines, per-peer caps) apply to HTTP unchanged, and a bug on
 * the HTTP side can take down this process only. HTTP/1.1 parsing, keep-alive
 * and TLS are libmicrohttpd's.
 */
#ifndef TN_HTTP_GATEWAY_H
#define TN_HTTP_GATEWAY_H

#include "config.h"

/*
 * Serve on listen_fd (not owned: the master keeps it for the next respawn)
 * until SIGTERM, SIGINT or SIGQUIT. Returns the exit status: 0 after a stop,
 * 2 if the gateway could not start (bad signing key, TLS unavailable, ...).
 * Calls grpc_init(): only in a freshly forked child.
 */
int tn_gateway_main(const struct tn_config *cfg, int listen_fd);

#endif
