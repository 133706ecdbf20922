/*
 * A gRPC health check spoken as raw HTTP/2: see h2check.h for why.
 *
 * The request is fixed bytes: the client preface, an empty SETTINGS frame, a
 * HEADERS frame for stream 1 whose header block uses only static-table
 * indices and literals without indexing (so the server's HPACK decoder needs
 * no state from us), and one DATA frame with an empty HealthCheckRequest and
 * END_STREAM. The answer is read frame by frame; only SETTINGS (acknowledged),
 * GOAWAY, RST_STREAM, and the HEADERS and DATA frames of stream 1 matter. The
 * response headers are never decoded: the verdict comes from the DATA frame
 * (the gRPC message: a HealthCheckResponse whose field 1 is the status), or a
 * HEADERS frame that ends the stream before any message (a trailers-only
 * error answer, which still proves the front answers).
 */
#include "h2check.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FRAME_HEADER 9
#define MAX_FRAME 16384 /* SETTINGS_MAX_FRAME_SIZE's default: we never raise it */
#define T_DATA 0x0
#define T_HEADERS 0x1
#define T_RST_STREAM 0x3
#define T_SETTINGS 0x4
#define T_GOAWAY 0x7
#define F_END_STREAM 0x1
#define F_ACK 0x1
#define F_PADDED 0x8
#define HEALTH_SERVING 1 /* grpc.health.v1.HealthCheckResponse.ServingStatus */

static const char PATH[] = "/grpc.health.v1.Health/Check";

bool tn_h2check_supported(const char *listen)
{
    if (strncmp(listen, "unix:", 5) == 0)
        return listen[5] != '\0';
    const char *colon = strrchr(listen, ':');
    return colon && strcmp(colon + 1, "0") != 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for events on fd until deadline; returns 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r > 0)
            return 0;
    }
}

/* A non-blocking socket connected to addr, or -errno. */
static int connect_to(const struct sockaddr *addr, socklen_t len, int64_t deadline)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, addr, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    int rc = wait_fd(fd, POLLOUT, deadline);
    int err = 0;
    socklen_t el = sizeof(err);
    if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err)
        rc = -err;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Connect to a --listen address; a wildcard host means this machine. */
static int dial(const char *listen, int64_t deadline)
{
    if (strncmp(listen, "unix:", 5) == 0) {
        const char *p = listen + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(p) >= sizeof(sun.sun_path))
            return -ENAMETOOLONG;
        memcpy(sun.sun_path, p, strlen(p) + 1);
        return connect_to((struct sockaddr *)&sun, sizeof(sun), deadline);
    }
    const char *colon = strrchr(listen, ':');
    if (!colon)
        return -EINVAL;
    char host[256];
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof(host))
        return -ENAMETOOLONG;
    memcpy(host, listen, hl);
    host[hl] = '\0';
    char *h = host;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    if (!*h || strcmp(h, "0.0.0.0") == 0)
        h = "127.0.0.1";
    else if (strcmp(h, "::") == 0)
        h = "::1";
    struct addrinfo hints = {.ai_flags = AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(h, colon + 1, &hints, &res);
    if (g != 0)
        return g == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    int fd = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = connect_to(ai->ai_addr, ai->ai_addrlen, deadline);
    freeaddrinfo(res);
    return fd;
}

static int send_all(int fd, const uint8_t *p, size_t n, int64_t deadline)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            int rc = wait_fd(fd, POLLOUT, deadline);
            if (rc < 0)
                return rc;
            continue;
        }
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static uint8_t *frame_header(uint8_t *p, size_t len, uint8_t type, uint8_t flags, uint32_t stream)
{
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    p[5] = (uint8_t)(stream >> 24);
    p[6] = (uint8_t)(stream >> 16);
    p[7] = (uint8_t)(stream >> 8);
    p[8] = (uint8_t)stream;
    return p + FRAME_HEADER;
}

/* HPACK "literal without indexing", name from the static table (index < 15)
 * or a new name (index 0); no Huffman. Values here are short (< 127). */
static uint8_t *literal(uint8_t *p, unsigned index, const char *name, const char *value)
{
    if (index < 15) {
        *p++ = (uint8_t)index;
    } else { /* 4-bit prefix integer */
        *p++ = 0x0f;
        *p++ = (uint8_t)(index - 15);
    }
    if (index == 0) {
        *p++ = (uint8_t)strlen(name);
        memcpy(p, name, strlen(name));
        p += strlen(name);
    }
    *p++ = (uint8_t)strlen(value);
    memcpy(p, value, strlen(value));
    return p + strlen(value);
}

/* The whole request into buf; returns its length. */
static size_t build_request(uint8_t *buf)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    uint8_t *p = buf;
    memcpy(p, preface, sizeof(preface) - 1);
    p += sizeof(preface) - 1;
    p = frame_header(p, 0, T_SETTINGS, 0, 0);

    uint8_t *hdr = p;
    uint8_t *block = p + FRAME_HEADER, *q = block;
    *q++ = 0x83;                                           /* :method POST (static 3) */
    *q++ = 0x86;                                           /* :scheme http (static 6) */
    q = literal(q, 4, NULL, PATH);                         /* :path */
    q = literal(q, 1, NULL, "localhost");                  /* :authority */
    q = literal(q, 31, NULL, "application/grpc");          /* content-type */
    q = literal(q, 0, "te", "trailers");                   /* te */
    q = literal(q, 0, "user-agent", "thumbnail-watchdog"); /* names us in debug logs */
    frame_header(hdr, (size_t)(q - block), T_HEADERS, 0x4 /* END_HEADERS */, 1);
    p = q;

    /* an empty HealthCheckRequest (service ""): gRPC framing only */
    p = frame_header(p, 5, T_DATA, F_END_STREAM, 1);
    memset(p, 0, 5);
    p += 5;
    return (size_t)(p - buf);
}

/* The verdict on one complete gRPC message (a HealthCheckResponse). */
static int verdict(const uint8_t *msg, size_t len)
{
    /* field 1 (status), varint: tag 0x08; absent = UNKNOWN */
    for (size_t i = 0; i + 1 < len; i++)
        if (msg[i] == 0x08)
            return msg[i + 1] == HEALTH_SERVING;
    return 0;
}

static int fail(int rc, char *why, size_t whylen, const char *step)
{
    snprintf(why, whylen, "%s: %s", step, rc == -ETIMEDOUT ? "no answer in time" : strerror(-rc));
    return rc;
}

int tn_h2check_health(const char *listen, int timeout_ms, char *why, size_t whylen)
{
    int64_t deadline = now_ms() + timeout_ms;
    uint8_t req[512];
    uint8_t in[FRAME_HEADER + MAX_FRAME + 256];
    uint8_t msg[64]; /* the gRPC message so far; a HealthCheckResponse is 7 bytes */
    size_t have = 0, msg_len = 0;
    int rc;

    snprintf(why, whylen, "ok");
    int fd = dial(listen, deadline);
    if (fd < 0)
        return fail(fd, why, whylen, "connect");
    size_t n = build_request(req);
    if ((rc = send_all(fd, req, n, deadline)) < 0) {
        fail(rc, why, whylen, "send");
        goto out;
    }
    for (;;) {
        /* every complete frame in the buffer */
        while (have >= FRAME_HEADER) {
            size_t len = (size_t)in[0] << 16 | (size_t)in[1] << 8 | in[2];
            uint8_t type = in[3], flags = in[4];
            uint32_t stream =
                ((uint32_t)in[5] << 24 | (uint32_t)in[6] << 16 | (uint32_t)in[7] << 8 | in[8]) &
                0x7fffffffu;
            if (len > MAX_FRAME) {
                rc = fail(-EPROTO, why, whylen, "frame larger than the default maximum");
                goto out;
            }
            if (have < FRAME_HEADER + len)
                break;
            const uint8_t *pl = in + FRAME_HEADER;
            if (type == T_SETTINGS && !(flags & F_ACK)) {
                uint8_t ack[FRAME_HEADER];
                frame_header(ack, 0, T_SETTINGS, F_ACK, 0);
                if ((rc = send_all(fd, ack, sizeof(ack), deadline)) < 0) {
                    fail(rc, why, whylen, "send");
                    goto out;
                }
            } else if (type == T_GOAWAY) {
                rc = fail(-ECONNRESET, why, whylen, "GOAWAY");
                goto out;
            } else if (type == T_RST_STREAM && stream == 1) {
                rc = fail(-ECONNRESET, why, whylen, "RST_STREAM");
                goto out;
            } else if (type == T_DATA && stream == 1) {
                size_t pad = 0, off = 0;
                if (flags & F_PADDED) {
                    pad = len ? pl[0] : 0;
                    off = 1;
                }
                for (size_t i = off; i + pad < len && msg_len < sizeof(msg); i++)
                    msg[msg_len++] = pl[i];
                if (msg_len >= 5) {
                    size_t mlen =
                        (size_t)msg[1] << 24 | (size_t)msg[2] << 16 | (size_t)msg[3] << 8 | msg[4];
                    if (mlen > sizeof(msg) - 5) {
                        rc = fail(-EPROTO, why, whylen, "health answer too large");
                        goto out;
                    }
                    if (msg_len >= 5 + mlen) {
                        rc = verdict(msg + 5, mlen);
                        snprintf(why, whylen, "answered %s", rc ? "SERVING" : "not SERVING");
                        goto out;
                    }
                }
            } else if (type == T_HEADERS && stream == 1 && (flags & F_END_STREAM)) {
                /* trailers before any message: an error status */
                rc = 0;
                snprintf(why, whylen, "answered with an error status");
                goto out;
            }
            memmove(in, in + FRAME_HEADER + len, have - FRAME_HEADER - len);
            have -= FRAME_HEADER + len;
        }
        ssize_t r = recv(fd, in + have, sizeof(in) - have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN) {
            if ((rc = wait_fd(fd, POLLIN, deadline)) < 0) {
                fail(rc, why, whylen, "read");
                goto out;
            }
            continue;
        }
        if (r <= 0) {
            rc = fail(r == 0 ? -ECONNRESET : -errno, why, whylen, "read");
            goto out;
        }
        have += (size_t)r;
    }
out:
    close(fd);
    return rc;
}
