// OpenSSL (libssl-dev, 3.0) for Swift: the library's headers, plus plain functions for what
// OpenSSL defines as macros (Swift cannot call those).
#ifndef TSHIM_TLS_SHIM_H
#define TSHIM_TLS_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stddef.h>
#include <stdint.h>

/// TLS 1.2 as the floor.
int tshim_tls_set_min_version_tls12(SSL_CTX *ctx);
/// SNI for a client session.
int tshim_tls_set_server_name(SSL *ssl, const char *name);
/// The SNI name a server session received, or NULL.
const char *tshim_tls_server_name(const SSL *ssl);
/// Bytes waiting in a memory BIO.
int tshim_tls_bio_pending(BIO *bio);
/// The latest OpenSSL error as text into `buffer` (cleared from the queue); empty if none.
void tshim_tls_last_error(char *buffer, size_t length);
/// HMAC-SHA256 of `data` under `key` into `out` (32 bytes); 0 on success.
int tshim_hmac_sha256(const uint8_t *key, size_t key_length, const uint8_t *data, size_t length, uint8_t *out);
/// Constant-time comparison of two buffers of `length` bytes: 0 when equal.
int tshim_equal_in_constant_time(const uint8_t *a, const uint8_t *b, size_t length);

#endif
