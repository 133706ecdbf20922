/*
 * TLS material and the bearer token: read in the master, checked with
 * libcrypto so that every mistake is reported at start-up with the flag and
 * file that caused it (see tls.h).
 */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "errf.h"

#define MAX_PEM_BYTES (1u << 20) /* a CA bundle is ~200 KiB; more is not a PEM file */
#define MAX_TOKEN_FILE (64u << 10)
#define MAX_TOKEN 4096 /* it travels in an HTTP/2 header */

/* The reason of the last libcrypto error, for messages; clears the queue. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "unknown error");
    ERR_clear_error();
    return buf;
}

/*
 * Read a whole regular file of at most max bytes into a malloc'd,
 * NUL-terminated buffer. Returns 0, or -1 with "FLAG 'PATH': why" in err.
 */
static int read_file(const char *flag, const char *path, size_t max, char **out, size_t *outlen,
                     char *err, size_t errlen)
{
    int fd = -1, rc = -1;
    char *buf = NULL;
    struct stat st;

    *out = NULL;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
        tn_errf(err, errlen, -1, "%s '%s': cannot open: %s", flag, path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        tn_errf(err, errlen, -1, "%s '%s': %s", flag, path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        tn_errf(err, errlen, -1, "%s '%s': not a regular file", flag, path);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        tn_errf(err, errlen, -1,
                "%s '%s': %lld bytes, larger than any sensible file of this kind (%zu)", flag, path,
                (long long)st.st_size, max);
        goto out;
    }
    if (!(buf = malloc(max + 1))) {
        tn_errf(err, errlen, -1, "%s '%s': out of memory", flag, path);
        goto out;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, max + 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            tn_errf(err, errlen, -1, "%s '%s': read failed: %s", flag, path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got > max) { /* grew since fstat */
            tn_errf(err, errlen, -1, "%s '%s': larger than %zu bytes", flag, path, max);
            goto out;
        }
    }
    buf[got] = 0;
    if (strlen(buf) != got) {
        tn_errf(err, errlen, -1, "%s '%s': contains NUL bytes (not a PEM or text file)", flag,
                path);
        goto out;
    }
    *out = buf;
    *outlen = got;
    buf = NULL;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* Never prompt on the terminal for a passphrase: an encrypted key is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* Parse every certificate of a PEM file; returns how many (0 = none or garbage). */
static int count_certs(const char *pem, size_t len, X509 **first)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    int n = 0;
    X509 *x;
    if (!bio)
        return 0;
    while ((x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL))) {
        if (n == 0 && first)
            *first = x;
        else
            X509_free(x);
        n++;
    }
    ERR_clear_error(); /* the loop always ends on "no start line" */
    BIO_free(bio);
    return n;
}

static int check_cert_and_key(struct tn_tls *t, const char *cert, size_t cert_len,
                              const char *cert_path, const char *key_path, size_t key_len,
                              char *err, size_t errlen)
{
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    BIO *bio = NULL;
    char why[256];
    int rc = -1;

    if (count_certs(cert, cert_len, &x) == 0) {
        tn_errf(err, errlen, -1,
                "--tls-cert '%s': no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
                cert_path);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
        tn_errf(err, errlen, -1,
                "--tls-cert '%s': the certificate has expired; clients would refuse it", cert_path);
        goto out;
    }
    if (!(bio = BIO_new_mem_buf(t->key_pem, (int)key_len)))
        goto oom;
    if (!(k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL))) {
        tn_errf(err, errlen, -1,
                "--tls-key '%s': no usable PEM private key in it (%s; an encrypted key is not "
                "supported: decrypt it, e.g. openssl pkey -in KEY -out KEY.plain)",
                key_path, ssl_reason(why, sizeof(why)));
        goto out;
    }
    if (X509_check_private_key(x, k) != 1) {
        ERR_clear_error();
        tn_errf(err, errlen, -1,
                "--tls-key '%s' does not match the certificate in --tls-cert '%s' (the first "
                "certificate of the file must be the server's own)",
                key_path, cert_path);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    tn_errf(err, errlen, -1, "out of memory while checking --tls-cert / --tls-key");
out:
    BIO_free(bio);
    EVP_PKEY_free(k);
    X509_free(x);
    return rc;
}

static int load_token(struct tn_tls *t, const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    if (read_file("--auth-token-file", path, MAX_TOKEN_FILE, &buf, &len, err, errlen) < 0)
        return -1;
    char *p = buf, *end = buf + len;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n'))
        end--;
    int rc = -1;
    if (p == end) {
        tn_errf(err, errlen, -1, "--auth-token-file '%s': the file is empty (expected one token)",
                path);
    } else if ((size_t)(end - p) > MAX_TOKEN) {
        tn_errf(err, errlen, -1, "--auth-token-file '%s': token longer than %d bytes", path,
                MAX_TOKEN);
    } else {
        rc = 0;
        for (const char *q = p; q < end; q++)
            if (*q < 0x21 || *q > 0x7e) {
                tn_errf(err, errlen, -1,
                        "--auth-token-file '%s': the token must be one word of visible ASCII "
                        "characters (it travels as 'authorization: Bearer <token>')",
                        path);
                rc = -1;
                break;
            }
    }
    if (rc == 0 && !EVP_Digest(p, (size_t)(end - p), t->token_digest, NULL, EVP_sha256(), NULL)) {
        ERR_clear_error();
        rc = tn_errf(err, errlen, -1, "--auth-token-file: SHA-256 unavailable");
    }
    if (rc == 0)
        t->have_token = true;
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

int tn_tls_load(struct tn_tls *t, const char *cert, const char *key, const char *client_ca,
                const char *token_file, char *err, size_t errlen)
{
    size_t cert_len = 0, key_len = 0, ca_len = 0;
    tn_tls_clear(t);
    if (!cert != !key)
        return tn_errf(err, errlen, -1, "%s",
                       cert ? "--tls-cert needs --tls-key (the certificate's private key)"
                            : "--tls-key needs --tls-cert (the certificate it belongs to)");
    if (client_ca && !cert)
        return tn_errf(err, errlen, -1,
                       "--tls-client-ca needs --tls-cert and --tls-key: client certificates are "
                       "checked only on a TLS connection");
    if (cert) {
        if (read_file("--tls-cert", cert, MAX_PEM_BYTES, &t->cert_pem, &cert_len, err, errlen) <
                0 ||
            read_file("--tls-key", key, MAX_PEM_BYTES, &t->key_pem, &key_len, err, errlen) < 0 ||
            check_cert_and_key(t, t->cert_pem, cert_len, cert, key, key_len, err, errlen) < 0)
            goto fail;
    }
    if (client_ca) {
        if (read_file("--tls-client-ca", client_ca, MAX_PEM_BYTES, &t->client_ca_pem, &ca_len, err,
                      errlen) < 0)
            goto fail;
        if (count_certs(t->client_ca_pem, ca_len, NULL) == 0) {
            tn_errf(err, errlen, -1,
                    "--tls-client-ca '%s': no PEM certificate in it (expected the CA that signs "
                    "client certificates)",
                    client_ca);
            goto fail;
        }
    }
    if (token_file && load_token(t, token_file, err, errlen) < 0)
        goto fail;
    return 0;
fail:
    tn_tls_clear(t);
    return -1;
}

void tn_tls_clear(struct tn_tls *t)
{
    if (!t)
        return;
    if (t->key_pem) {
        OPENSSL_cleanse(t->key_pem, strlen(t->key_pem));
        free(t->key_pem);
    }
    free(t->cert_pem);
    free(t->client_ca_pem);
    OPENSSL_cleanse(t, sizeof(*t));
}

bool tn_tls_token_ok(const struct tn_tls *t, const char *value, size_t len)
{
    static const char scheme[] = "Bearer ";
    const size_t slen = sizeof(scheme) - 1;
    unsigned char d[TN_TLS_TOKEN_DIGEST];
    if (!t || !t->have_token || len <= slen || strncasecmp(value, scheme, slen) != 0)
        return false;
    if (!EVP_Digest(value + slen, len - slen, d, NULL, EVP_sha256(), NULL)) {
        ERR_clear_error();
        return false;
    }
    return CRYPTO_memcmp(d, t->token_digest, sizeof(d)) == 0;
}
