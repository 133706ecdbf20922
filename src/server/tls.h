/*
 * Transport security and call authentication material of the server: the TLS
 * certificate chain and key, the CA that client certificates must chain to
 * (mTLS), and the shared-secret bearer token.
 *
 * Everything is read and checked in the master, by tn_config_parse(), before
 * any process is forked: a missing file, a key that does not match its
 * certificate or an empty token fails the start with exit status 2 instead of
 * surfacing as a front that cannot listen, or as a refused first call. The
 * front gets the loaded material through fork and never reads the files.
 *
 * Only libcrypto is used here (PEM parsing, SHA-256, CRYPTO_memcmp); building
 * the gRPC credentials from this material is the front's business.
 */
#ifndef TN_TLS_H
#define TN_TLS_H

#include <stdbool.h>
#include <stddef.h>

#define TN_TLS_TOKEN_DIGEST 32 /* SHA-256 */

/* Loaded material. Owner: whoever called tn_tls_load(); free with tn_tls_clear(). */
struct tn_tls {
    char *cert_pem;      /* --tls-cert contents, NUL-terminated; NULL = plaintext server */
    char *key_pem;       /* --tls-key contents; set iff cert_pem is */
    char *client_ca_pem; /* --tls-client-ca contents; NULL = client certificates not asked for */
    bool have_token;     /* --auth-token-file given */
    /* SHA-256 of the token, not the token: the compare needs nothing else, and
     * a core dump of the front then holds no usable secret. */
    unsigned char token_digest[TN_TLS_TOKEN_DIGEST];
};

/*
 * Read and check the files named (any may be NULL: not configured) into t,
 * which is cleared first. cert and key go together. The certificate chain
 * must parse, the first certificate must not have expired, the key must be an
 * unencrypted PEM private key matching that certificate, the client CA file
 * must hold at least one certificate, and the token file must hold one token
 * of visible ASCII characters (surrounding whitespace and the final newline
 * are ignored). Returns 0, or -1 with a message naming the flag and the file
 * in err (t is then cleared).
 */
int tn_tls_load(struct tn_tls *t, const char *cert, const char *key, const char *client_ca,
                const char *token_file, char *err, size_t errlen);

/* Free what tn_tls_load() allocated and zero t (the token digest included). NULL-safe. */
void tn_tls_clear(struct tn_tls *t);

/*
 * Does the value of an `authorization` metadata entry carry the configured
 * token ("Bearer <token>"; the scheme is case-insensitive)? Constant time in
 * the token: both sides are hashed and the digests compared with
 * CRYPTO_memcmp, so neither the content nor the length of the secret leaks
 * through timing. Returns false if no token is configured.
 */
bool tn_tls_token_ok(const struct tn_tls *t, const char *value, size_t len);

#endif
