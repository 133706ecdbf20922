/*
 * Listeners and credentials: the server's channel args, its methods, TLS
 * credentials per address, unix: socket publication across reloads, the
 * per-call token check, and the calls requested ahead.
 */
#include "front_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpc/grpc_security.h>
#include <grpc/slice.h>

#include "log.h"
#include "reflection.h"
#include "tls.h"

#define PREREQUESTED_CALLS 32 /* Generate calls requested ahead (see setup()) */
#define PREREQUESTED_PROBES 4 /* Probe calls requested ahead (rarer; same reason) */

/* ------------------------------------------------------------------------ */
/* Credentials                                                              */

/*
 * --auth-token-file: NULL if the call may proceed (no token configured, or its
 * metadata carries "authorization: Bearer <token>"), else why not, as a status
 * message (static storage). The first authorization entry decides. The token
 * is never logged.
 */
const char *auth_refusal(const struct front *f, const grpc_metadata_array *md)
{
    const struct tn_tls *t = f->cfg->tls;
    if (!t || !t->have_token)
        return NULL;
    for (size_t i = 0; i < md->count; i++) {
        if (grpc_slice_str_cmp(md->metadata[i].key, "authorization") != 0)
            continue;
        grpc_slice v = md->metadata[i].value;
        if (tn_tls_token_ok(t, (const char *)GRPC_SLICE_START_PTR(v), GRPC_SLICE_LENGTH(v)))
            return NULL;
        return "the authorization token was not accepted (expected 'Bearer <token>' with the "
               "server's token)";
    }
    return "this server requires a token: send the metadata 'authorization: Bearer <token>' "
           "(thumbnail_client --auth-token-file)";
}

/* TLS server credentials from the material the master loaded; NULL if TLS is off. */
static grpc_server_credentials *server_tls_credentials(const struct tn_tls *t)
{
    if (!t || !t->cert_pem)
        return NULL;
    grpc_ssl_pem_key_cert_pair pair = {.private_key = t->key_pem, .cert_chain = t->cert_pem};
    return grpc_ssl_server_credentials_create_ex(
        t->client_ca_pem, &pair, 1,
        t->client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                         : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
}

/* ------------------------------------------------------------------------ */
/* unix: listeners across reloads                                           */

/*
 * unix:PATH listeners and reload. gRPC unlinks a unix socket's path when its
 * listener closes, by name: an old front draining after a reload would remove
 * the path the new front listens on. So each front binds a private name,
 * "PATH.<pid>" (which gRPC may unlink as it likes), and then links its socket
 * to PATH atomically (link to a temporary name, rename over PATH): clients
 * always find a listening socket at PATH, the newest front's. At exit a front
 * removes PATH only if it is still its own socket. Returns the address to give
 * gRPC (in buf), or addr itself when it is not a unix: path or the private name
 * would not fit in sun_path (then a reload removes PATH: logged).
 */
static const char *bind_name(struct front *f, const char *addr, char *buf, size_t len)
{
    if (strncmp(addr, "unix:", 5) != 0)
        return addr;
    const char *p = addr + 5;
    if (strncmp(p, "//", 2) == 0)
        p += 2;
    int n = snprintf(buf, len, "unix:%s.%d", p, (int)getpid());
    if (n < 0 || (size_t)n >= len || strlen(buf + 5) > 107) {
        tn_log_warn("%s: the path is too long to add .<pid>; a reload will remove it", addr);
        return addr;
    }
    struct unix_link *u = &f->unix_links[f->n_unix];
    snprintf(u->pub, sizeof(u->pub), "%s", p);
    u->ino = 0;
    f->n_unix++;
    return buf;
}

/* After the server started: link each private socket name to its public path. */
static int publish_unix(struct front *f)
{
    for (size_t i = 0; i < f->n_unix; i++) {
        struct unix_link *u = &f->unix_links[i];
        char priv[PATH_MAX + 16], tmp[PATH_MAX + 32];
        struct stat st;
        snprintf(priv, sizeof(priv), "%s.%d", u->pub, (int)getpid());
        snprintf(tmp, sizeof(tmp), "%s.%d.tmp", u->pub, (int)getpid());
        unlink(tmp);
        if (stat(priv, &st) < 0 || link(priv, tmp) < 0 || rename(tmp, u->pub) < 0) {
            tn_log_error("cannot make %s the socket %s: %s", u->pub, priv, strerror(errno));
            unlink(tmp);
            return -1;
        }
        u->dev = st.st_dev;
        u->ino = st.st_ino;
    }
    return 0;
}

void unpublish_unix(struct front *f)
{
    for (size_t i = 0; i < f->n_unix; i++) {
        struct unix_link *u = &f->unix_links[i];
        struct stat st;
        if (u->ino && stat(u->pub, &st) == 0 && st.st_dev == u->dev && st.st_ino == u->ino)
            unlink(u->pub);
        /* gRPC removes the private name when its listener closes; a front that
         * never got that far leaves it: remove it too. */
        char priv[PATH_MAX + 16];
        snprintf(priv, sizeof(priv), "%s.%d", u->pub, (int)getpid());
        unlink(priv);
    }
}

/* ------------------------------------------------------------------------ */
/* The server: channel args, methods, listeners, requests ahead             */

int setup(struct front *f, const struct tn_config *cfg)
{
    f->epfd = epoll_create1(EPOLL_CLOEXEC);
    f->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (f->epfd < 0 || f->evfd < 0) {
        tn_log_error("epoll/eventfd set-up failed: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &f->evfd};
    struct epoll_event evq = {.events = 0, .data.ptr = &f->queue_fd};
    struct epoll_event evc = {.events = EPOLLIN, .data.ptr = &f->ctl_fd};
    if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->evfd, &ev) < 0 ||
        epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->queue_fd, &evq) < 0 ||
        (f->ctl_fd >= 0 && epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->ctl_fd, &evc) < 0)) {
        tn_log_error("epoll_ctl() failed: %s", strerror(errno));
        return -1;
    }

    grpc_arg args[9];
    size_t na = 0;
#define INT_ARG(k, v)                                                                              \
    (args[na++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = (k), .value.integer = (v)})
    INT_ARG(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, (int)cfg->max_message_bytes);
    /* --max-message-bytes both ways: a data message is --chunk-size plus a few
     * bytes, but a ProbeResponse is one message of any size up to this */
    INT_ARG(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, (int)cfg->max_message_bytes);
    /* A reload starts a new front beside the old one on the same addresses:
     * both must set SO_REUSEPORT, and the kernel then spreads new connections
     * over the listeners until the old front stops listening (its drain). */
    INT_ARG(GRPC_ARG_ALLOW_REUSEPORT, 1);
    /* The BDP probe grows the HTTP/2 receive window without bound while the
     * spool write keeps up: one 1 GiB upload peaked the front at 117 MB RSS
     * with it, 19 MB without, at the same 0.3-0.5 GB/s (spool on /dev/shm,
     * 3 runs each). Memory must not scale with upload size: off. */
    INT_ARG(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    /* Identity only. gRPC inflates a compressed message in full before
     * GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH is checked against it, so 1 MB of
     * gzip became 1 GiB in the front; videos and PNGs do not compress anyway.
     * A compressed message now ends its call with UNIMPLEMENTED. */
    INT_ARG(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET, 1 << GRPC_COMPRESS_NONE);
    /* HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, which clients honour (grpcio,
     * ours, nginx). gRPC 1.51 does not refuse the streams of a client that
     * ignores it (150 on one connection drew no RST_STREAM). */
    INT_ARG(GRPC_ARG_MAX_CONCURRENT_STREAMS, cfg->max_streams_per_connection);
    /* The metadata a call may send: a 20 KB value is refused with
     * RESOURCE_EXHAUSTED. gRPC 1.51 still parses the whole header block
     * (CVE-2023-33953); the quota below bounds what that costs. */
    INT_ARG(GRPC_ARG_MAX_METADATA_SIZE, (int)cfg->max_header_bytes);
#undef INT_ARG

    if (!(f->refl = tn_reflection_new()))
        return -1;
    if (cfg->media_root) {
        f->media_root_fd = open(cfg->media_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (f->media_root_fd < 0) {
            tn_log_error("cannot open --media-root %s: %s", cfg->media_root, strerror(errno));
            return -1;
        }
        tn_log_info("local mode: paths are read under %s", cfg->media_root);
    }
    if (cache_open(f) < 0)
        return -1;
    /* gRPC charges its connections' buffers to this quota and, near it,
     * shrinks them: a 12 MB HPACK block of small headers peaked the front at
     * 159 MB without (or with 64M), 50 MB with 32M, 33 MB with 16M, while six
     * concurrent 100 MB uploads ran as fast with 32M as without (0.6 s, 25
     * MB). It does not cover calls: rapid reset peaks the same. Owned here;
     * the server holds its own ref. */
    grpc_resource_quota *quota = NULL;
    if (cfg->front_memory_quota) {
        quota = grpc_resource_quota_create("front");
        grpc_resource_quota_resize(quota, (size_t)cfg->front_memory_quota);
        args[na++] =
            (grpc_arg){.type = GRPC_ARG_POINTER,
                       .key = GRPC_ARG_RESOURCE_QUOTA,
                       .value.pointer = {.p = quota, .vtable = grpc_resource_quota_arg_vtable()}};
    }
    grpc_channel_args ca = {.num_args = na, .args = args};
    f->cq = grpc_completion_queue_create_for_next(NULL);
    f->server = grpc_server_create(&ca, NULL);
    if (quota)
        grpc_resource_quota_unref(quota);
    grpc_server_register_completion_queue(f->server, f->cq, NULL);
    f->m_generate = grpc_server_register_method(f->server, "/thumbnail.v1.Thumbnailer/Generate",
                                                NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    f->m_probe = grpc_server_register_method(f->server, "/thumbnail.v1.Thumbnailer/Probe", NULL,
                                             GRPC_SRM_PAYLOAD_NONE, 0);
    f->m_health = grpc_server_register_method(f->server, "/grpc.health.v1.Health/Check", NULL,
                                              GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    f->m_watch = grpc_server_register_method(f->server, "/grpc.health.v1.Health/Watch", NULL,
                                             GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    f->m_refl = grpc_server_register_method(
        f->server, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", NULL,
        GRPC_SRM_PAYLOAD_NONE, 0);
    f->m_refl_alpha = grpc_server_register_method(
        f->server, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", NULL,
        GRPC_SRM_PAYLOAD_NONE, 0);
    grpc_server_credentials *plain = grpc_insecure_server_credentials_create();
    grpc_server_credentials *tls = server_tls_credentials(cfg->tls);
    int rc = 0;
    for (size_t i = 0; i < cfg->n_listen && rc == 0; i++) {
        bool is_unix = strncmp(cfg->listen[i], "unix:", 5) == 0;
        bool use_tls = tls && (!is_unix || cfg->tls_unix);
        char name[PATH_MAX + 32];
        int port = grpc_server_add_http2_port(
            f->server, bind_name(f, cfg->listen[i], name, sizeof(name)), use_tls ? tls : plain);
        if (port == 0) {
            tn_log_error("cannot listen on %s (address in use, bad address or no permission%s)",
                         cfg->listen[i], use_tls ? ", or the TLS set-up failed" : "");
            rc = -2;
            break;
        }
        tn_log_info("listening on %s (%s)", cfg->listen[i],
                    !use_tls                  ? "plaintext"
                    : cfg->tls->client_ca_pem ? "TLS, client certificate required"
                                              : "TLS");
    }
    /* The HTTP gateway's private socket (master.c's DESIGN): plaintext, in
     * the master's 0700 directory; the socket itself is made 0600 below. */
    char gw_addr[sizeof(cfg->gateway_socket) + 8], gw_name[PATH_MAX + 32];
    gw_name[0] = 0;
    if (rc == 0 && cfg->gateway_socket[0]) {
        snprintf(gw_addr, sizeof(gw_addr), "unix:%s", cfg->gateway_socket);
        const char *bn = bind_name(f, gw_addr, gw_name, sizeof(gw_name));
        if (grpc_server_add_http2_port(f->server, bn, plain) == 0) {
            tn_log_error("cannot listen on the HTTP gateway's socket %s", cfg->gateway_socket);
            rc = -2;
        } else {
            snprintf(gw_name, sizeof(gw_name), "%s", bn + 5);
            tn_log_info("listening on %s for the HTTP gateway", cfg->gateway_socket);
        }
    }
    grpc_server_credentials_release(plain);
    if (tls)
        grpc_server_credentials_release(tls);
    if (rc < 0)
        return rc;
    if (cfg->tls && cfg->tls->have_token)
        tn_log_info("calls need an authorization token (--auth-token-file); health checks do not");
    grpc_server_start(f->server);
    if (gw_name[0] && chmod(gw_name, 0600) < 0)
        tn_log_warn("chmod(%s, 0600) failed: %s", gw_name, strerror(errno));
    if (publish_unix(f) < 0)
        return -1;
    /* Several requests outstanding, not one: a call that arrives while none
     * is outstanding waits unmatched inside gRPC, and the shutdown that starts
     * a drain (reload, SIGTERM) cancels such calls (CANCELLED, not retried by
     * clients) instead of letting them finish. Each new call requests the next. */
    for (int i = 0; i < PREREQUESTED_CALLS; i++)
        request_generate(f);
    for (int i = 0; i < PREREQUESTED_PROBES; i++)
        request_probe(f);
    request_health(f);
    request_generic(f);
    request_stream(f, TAG_NEW_WATCH);
    request_stream(f, TAG_NEW_REFL);
    request_stream(f, TAG_NEW_REFL_ALPHA);
    return 0;
}
