#include "target.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "errf.h"
#include "parse.h"

#define ADDR_MAX (INET6_ADDRSTRLEN + 16) /* "[addr]:port" */

/* "host:port" or "[v6]:port" into host and port; -1 if it has another shape. */
static int split_host_port(const char *s, char *host, size_t hlen, char *port, size_t plen)
{
    const char *colon;
    const char *h = s;
    size_t n;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        h = s + 1;
        n = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || strchr(s, ':') != colon) /* an IPv6 address goes in brackets */
            return -1;
        n = (size_t)(colon - s);
    }
    uint64_t p;
    if (n == 0 || n >= hlen || tn_parse_uint(colon + 1, 1, 65535, &p) < 0)
        return -1;
    memcpy(host, h, n);
    host[n] = 0;
    snprintf(port, plen, "%u", (unsigned)p);
    return 0;
}

/* The first IPv4 and the first IPv6 address of host:port, as "a:p" / "[a]:p" ("" if none). */
static int resolve(const char *server, const char *host, const char *port, char *v4, char *v6,
                   char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    v4[0] = v6[0] = 0;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        return tn_errf(err, errlen, -1, "--server '%s': cannot resolve '%s': %s", server, host,
                       gai_strerror(rc));
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        if (a->ai_family == AF_INET && !v4[0]) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, ip, sizeof(ip));
            snprintf(v4, ADDR_MAX, "%s:%s", ip, port);
        } else if (a->ai_family == AF_INET6 && !v6[0]) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, ip, sizeof(ip));
            snprintf(v6, ADDR_MAX, "[%s]:%s", ip, port);
        }
    }
    freeaddrinfo(res);
    return 0;
}

int tn_target_build(const char *const *servers, size_t n, bool tls, const char *tls_server_name,
                    struct tn_target *t, char *err, size_t errlen)
{
    char(*v4)[ADDR_MAX] = NULL, (*v6)[ADDR_MAX] = NULL;
    char host[256], port[8], first_host[256];
    bool same_host = true, all4 = true, all6 = true;
    int rc = -1;

    memset(t, 0, sizeof(*t));
    if (n == 1) {
        if (!(t->uri = strdup(servers[0])))
            return tn_errf(err, errlen, -1, "out of memory");
        return 0;
    }
    v4 = calloc(n, sizeof(*v4));
    v6 = calloc(n, sizeof(*v6));
    if (!v4 || !v6) {
        tn_errf(err, errlen, -1, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (split_host_port(servers[i], host, sizeof(host), port, sizeof(port)) < 0) {
            tn_errf(err, errlen, -1,
                    "--server '%s': with several --server values each must be HOST:PORT or "
                    "[IPV6]:PORT (a unix:, dns: or other URI target goes alone)",
                    servers[i]);
            goto out;
        }
        if (i == 0)
            snprintf(first_host, sizeof(first_host), "%s", host);
        else if (strcasecmp(host, first_host) != 0)
            same_host = false;
        if (resolve(servers[i], host, port, v4[i], v6[i], err, errlen) < 0)
            goto out;
        all4 = all4 && v4[i][0];
        all6 = all6 && v6[i][0];
    }
    if (!all4 && !all6) {
        tn_errf(err, errlen, -1,
                "--server: some servers have only IPv4 addresses and others only IPv6 ones; one "
                "balanced channel takes one address family");
        goto out;
    }
    if (tls && !same_host && !tls_server_name) {
        tn_errf(err, errlen, -1,
                "--tls with several --server hosts: give --tls-server-name, the name every "
                "server's certificate carries (one channel verifies them all against one name)");
        goto out;
    }

    /* "ipv4:" + n * ("addr:port" + ","): duplicates (the same server twice) dropped. */
    char(*list)[ADDR_MAX] = all4 ? v4 : v6;
    size_t cap = 8 + n * (ADDR_MAX + 1);
    if (!(t->uri = malloc(cap)) || !(t->authority = strdup(servers[0]))) {
        tn_errf(err, errlen, -1, "out of memory");
        goto out;
    }
    size_t off = (size_t)snprintf(t->uri, cap, "%s", all4 ? "ipv4:" : "ipv6:");
    for (size_t i = 0; i < n; i++) {
        bool dup = false;
        for (size_t k = 0; k < i && !dup; k++)
            dup = strcmp(list[k], list[i]) == 0;
        if (dup)
            continue;
        off += (size_t)snprintf(t->uri + off, cap - off, "%s%s", t->n_addrs ? "," : "", list[i]);
        t->n_addrs++;
    }
    rc = 0;
out:
    free(v4);
    free(v6);
    if (rc < 0)
        tn_target_free(t);
    return rc;
}

void tn_target_free(struct tn_target *t)
{
    if (!t)
        return;
    free(t->uri);
    free(t->authority);
    t->uri = t->authority = NULL;
    t->n_addrs = 0;
}

/* Connect fd to a within timeout_ms: 0 or an errno. */
static int try_connect(const struct sockaddr *a, socklen_t alen, int timeout_ms)
{
    int fd = socket(a->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return errno;
    int e = 0;
    if (connect(fd, a, alen) < 0) {
        e = errno;
        if (e == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int r;
            do
                r = poll(&p, 1, timeout_ms);
            while (r < 0 && errno == EINTR);
            socklen_t el = sizeof(e);
            if (r == 0)
                e = ETIMEDOUT;
            else if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
                e = errno;
        }
    }
    close(fd);
    return e;
}

/* Definitive: nobody is there. ETIMEDOUT is not: a slow network may still answer. */
static int definitive(int e)
{
    return e == ECONNREFUSED || e == ENOENT || e == ENETUNREACH || e == EHOSTUNREACH ||
           e == EACCES || e == ENOTSOCK || e == EADDRNOTAVAIL;
}

int tn_target_diagnose(const char *server, char *why, size_t len)
{
    why[0] = 0;
    if (!strncmp(server, "unix:", 5)) {
        const char *path = server + 5;
        if (!strncmp(path, "//", 2))
            path += 2;
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(un.sun_path))
            return 0;
        strcpy(un.sun_path, path);
        int e = try_connect((struct sockaddr *)&un, sizeof(un), 1000);
        if (e && definitive(e)) {
            snprintf(why, len, "%s: %s", path, strerror(e));
            return 1;
        }
        return 0;
    }
    const char *hp = server;
    if (!strncmp(server, "dns:", 4)) {
        hp = strrchr(server, '/');
        hp = hp ? hp + 1 : server + 4;
    } else if (strchr(server, '/') || !strncmp(server, "ipv4:", 5) ||
               !strncmp(server, "ipv6:", 5)) {
        return 0; /* other schemes: gRPC's business */
    }
    char host[256], port[8];
    if (split_host_port(hp, host, sizeof(host), port, sizeof(port)) < 0)
        return 0;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(why, len, "cannot resolve '%s': %s", host,
                 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return rc == EAI_NONAME || rc == EAI_FAIL || rc == EAI_NODATA ? 1 : 0;
    }
    int last = 0, all_definitive = 1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int e = try_connect(a->ai_addr, a->ai_addrlen, 1000);
        if (e == 0) {
            all_definitive = 0;
            snprintf(why, len, "%s:%s accepts TCP connections", host, port);
            last = 0;
            break;
        }
        last = e;
        all_definitive = all_definitive && definitive(e);
    }
    freeaddrinfo(res);
    if (!last)
        return 0;
    snprintf(why, len, "%s:%s: %s", host, port, strerror(last));
    return all_definitive;
}
