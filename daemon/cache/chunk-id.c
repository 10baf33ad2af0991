/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Chunk names (D7): SHA-256 through OpenSSL's one-shot EVP_Digest, which picks the SHA-NI (or
 * AVX2) code path for the CPU at run time, and their 64-digit lowercase hex form used as file names
 * and in logs. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "chunk-id.h"
#include "strutil.h"

void chunk_id_compute(const void *data, size_t len, ChunkId *ret) {
        unsigned int n = 0;

        /* EVP_Digest only fails when OpenSSL cannot allocate its context or the SHA-256
         * implementation is missing, which leaves us nothing sensible to name a chunk by. */
        if (EVP_Digest(data, len, ret->bytes, &n, EVP_sha256(), NULL) != 1 || n != CHUNK_ID_SIZE)
                abort();
}

bool chunk_id_matches(const ChunkId *id, const void *data, size_t len) {
        ChunkId actual;

        chunk_id_compute(data, len, &actual);
        /* The id comes from our own index, not from an attacker timing us: memcmp is fine. */
        return memcmp(actual.bytes, id->bytes, CHUNK_ID_SIZE) == 0;
}

void chunk_id_to_hex(const ChunkId *id, char ret[CHUNK_ID_HEX_SIZE]) {
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < CHUNK_ID_SIZE; i++) {
                ret[2 * i] = digits[id->bytes[i] >> 4];
                ret[2 * i + 1] = digits[id->bytes[i] & 0xf];
        }
        ret[2 * CHUNK_ID_SIZE] = '\0';
}

int chunk_id_from_hex(const char *hex, ChunkId *ret) {
        ChunkId id;

        if (!hex || !ret)
                return -EINVAL;

        for (size_t i = 0; i < CHUNK_ID_SIZE; i++) {
                /* Checking each digit before the next also stops at a short string's NUL. */
                int hi = unhexchar(hex[2 * i]);
                if (hi < 0)
                        return -EINVAL;
                int lo = unhexchar(hex[2 * i + 1]);
                if (lo < 0)
                        return -EINVAL;
                id.bytes[i] = (uint8_t) (hi << 4 | lo);
        }
        if (hex[2 * CHUNK_ID_SIZE] != '\0')
                return -EINVAL;

        *ret = id;
        return 0;
}
