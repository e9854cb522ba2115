#include "CTLSShim.h"

int tshim_tls_set_min_version_tls12(SSL_CTX *ctx) { return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); }

int tshim_tls_set_server_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }

const char *tshim_tls_server_name(const SSL *ssl) { return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name); }

int tshim_tls_bio_pending(BIO *bio) { return BIO_pending(bio); }

void tshim_tls_last_error(char *buffer, size_t length) {
    unsigned long code = 0, last;
    while ((last = ERR_get_error()) != 0) code = last;
    if (length == 0) return;
    buffer[0] = 0;
    if (code != 0) ERR_error_string_n(code, buffer, length);
}

#include <openssl/hmac.h>
#include <openssl/crypto.h>

int tshim_hmac_sha256(const uint8_t *key, size_t key_length, const uint8_t *data, size_t length, uint8_t *out) {
    unsigned int written = 0;
    return HMAC(EVP_sha256(), key, (int)key_length, data, length, out, &written) != NULL && written == 32 ? 0 : -1;
}

int tshim_equal_in_constant_time(const uint8_t *a, const uint8_t *b, size_t length) {
    return CRYPTO_memcmp(a, b, length);
}
