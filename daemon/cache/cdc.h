/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Content-defined chunking (D7): FastCDC with a gear hash and normalised chunking, minimum 16 KiB,
 * average 64 KiB, maximum 256 KiB. Cut points depend only on the bytes, so the same content in two
 * files, on two origins, or shifted by an edit earlier in a file, gives the same chunks, stored once.
 * Stateless and allocation-free; must run at ≥ 1 GB/s per core (bench/). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CDC_MIN_SIZE (16u * 1024u)
#define CDC_AVG_SIZE (64u * 1024u)
#define CDC_MAX_SIZE (256u * 1024u)

/* The length of the chunk that starts at data[0], given len bytes of the file from there:
 * - a cut point found by the gear hash (never below CDC_MIN_SIZE, never above CDC_MAX_SIZE);
 * - CDC_MAX_SIZE when len reaches it without a cut point;
 * - len when eof is true and no cut point comes first (the file's last chunk, may be short);
 * - 0 when eof is false and len is below CDC_MAX_SIZE with no cut point yet: give more bytes.
 * Callers that keep CDC_MAX_SIZE bytes buffered (or the rest of the file) never see 0. */
size_t cdc_next_cut(const uint8_t *data, size_t len, bool eof);
