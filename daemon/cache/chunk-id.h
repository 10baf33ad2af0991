/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* A chunk's name: the SHA-256 of its bytes (D7), computed with OpenSSL (SHA-NI where the CPU has it).
 * Owned by the cache; shared by the store (file names), the index (keys) and the read path (checks). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHUNK_ID_SIZE 32
#define CHUNK_ID_HEX_SIZE (2 * CHUNK_ID_SIZE + 1)

typedef struct ChunkId {
        uint8_t bytes[CHUNK_ID_SIZE];
} ChunkId;

void chunk_id_compute(const void *data, size_t len, ChunkId *ret);
/* True when data hashes to id: the check every chunk read passes before its bytes are served. */
bool chunk_id_matches(const ChunkId *id, const void *data, size_t len);
void chunk_id_to_hex(const ChunkId *id, char ret[CHUNK_ID_HEX_SIZE]);
int chunk_id_from_hex(const char *hex, ChunkId *ret);  /* -EINVAL unless exactly 64 hex digits */
