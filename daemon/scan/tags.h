/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Tag reading (DESIGN.md D12): libavformat through a custom AVIOContext over the origin's ranged
 * reads, 32 KiB probesize, no avformat_find_stream_info(), so a file costs only the bytes its headers
 * occupy. Formats: FLAC, MP3, Ogg Vorbis, Opus, M4A/AAC, WAV. */
#include <stdbool.h>
#include <stdint.h>

#include "catalog.h"
#include "origin.h"

/* True when the name has an audio extension we index; *ret_ext is the lower-case extension
 * (static storage). Case-insensitive: "x.FLAC" -> "flac". */
bool tags_audio_extension(const char *name, const char **ret_ext);

/* Reads tags of an open origin file of the given size into *ret (zeroed first).
 * 0: parsed; -EBADMSG: not a parseable audio file (caller lists it under the Unknown names);
 * other negative errno: the origin failed. Tag strings are valid UTF-8 (each byte of an invalid
 * sequence becomes U+FFFD; control characters are dropped, tab/CR/LF become a space), at most 1024
 * bytes each (cut on a character boundary), trimmed; NULL when empty. Numbers take the part before
 * '/' ("3/12" -> 3, disc_total 12). Thread-safe: no shared state. */
int tags_read(OriginFile *f, uint64_t size, TrackTags *ret);

/* Silences libavformat's own logging (we log one line per bad file ourselves). Call once. */
void tags_init(void);
