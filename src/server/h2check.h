/*
 * A gRPC health check without gRPC: one grpc.health.v1.Health/Check call
 * spoken as raw HTTP/2 (prior knowledge, plaintext) over a plain socket, for
 * the master's front watchdog. The master forks at any time and so must never
 * call grpc_init() (gRPC core is not fork-safe); this needs nothing but the
 * socket API. It speaks just enough HTTP/2 for the one call: a fixed request
 * (literal HPACK, no dynamic table, no Huffman) and a reader that looks only
 * at frame headers and the DATA of stream 1, which HPACK does not touch.
 */
#ifndef TN_H2CHECK_H
#define TN_H2CHECK_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Whether a --listen address can be checked this way (a plaintext listener:
 * HOST:PORT with a fixed port, or unix:PATH). The caller knows which
 * listeners use TLS.
 */
bool tn_h2check_supported(const char *listen);

/*
 * Call Health/Check (service "") on the server listening at `listen` (a
 * --listen address; a wildcard host is reached on loopback), within
 * timeout_ms for the whole exchange. Blocks. Returns 1 if it answered
 * SERVING, 0 if it answered anything else or closed the stream, or -errno
 * (-ETIMEDOUT past the deadline) with the failing step in why[].
 */
int tn_h2check_health(const char *listen, int timeout_ms, char *why, size_t whylen);

#endif
