/*
 * The gRPC target for the --server values.
 *
 * One value is used as given: gRPC resolves it (host:port through DNS, unix:,
 * dns:///host:port, ipv4:/ipv6: lists). Several values must each be HOST:PORT
 * or [IPV6]:PORT; their names are resolved here, once, with getaddrinfo(), and
 * the addresses joined into one "ipv4:a:p,b:p" (or "ipv6:") target, so that a
 * single channel with the round_robin policy spreads calls over every server
 * that is up. gRPC's ipv4:/ipv6: lists hold one address family: IPv4 is used
 * when every server has an IPv4 address, else IPv6 when every one has that.
 */
#ifndef TN_CLIENT_TARGET_H
#define TN_CLIENT_TARGET_H

#include <stdbool.h>
#include <stddef.h>

struct tn_target {
    char *uri;       /* for grpc_channel_create(); malloc'd */
    char *authority; /* the :authority (and TLS name) to use; NULL = gRPC's default; malloc'd */
    size_t n_addrs;  /* addresses in uri (several servers), or 0 (one, resolved by gRPC) */
};

/*
 * Build t from servers[0..n-1] (n >= 1). With several servers, TLS needs one
 * name to verify every server's certificate against: the servers' common host
 * name, or tls_server_name; with different hosts and no tls_server_name this
 * fails. Returns 0, or -1 with a message in err (t is then empty).
 */
int tn_target_build(const char *const *servers, size_t n, bool tls, const char *tls_server_name,
                    struct tn_target *t, char *err, size_t errlen);

/*
 * Why can server (one --server value) not be reached? Tries what gRPC tried,
 * with the OS's own answer: resolves the name, then connects over TCP (or to
 * the unix socket) with a short timeout. Returns 1 with the reason in why
 * ("connection refused", "cannot resolve 'h': Name or service not known"),
 * or 0 when it can connect or cannot tell (then the trouble is above TCP:
 * TLS, or not a gRPC server), why holding a remark or "".
 */
int tn_target_diagnose(const char *server, char *why, size_t len);

/* Free what tn_target_build() allocated; NULL-safe, idempotent. */
void tn_target_free(struct tn_target *t);

#endif
