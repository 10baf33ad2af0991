/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The chunk index (D7), in LMDB: one environment file "<cache_dir>/index.mdb" (MDB_NOSUBDIR) with
 * named databases
 *   chunks    ChunkId -> { size, refcount, pin count, last access, stored }
 *   lru       be64 last access ‖ ChunkId -> ""    (stored unpinned chunks, eviction order, oldest first)
 *   versions  version key -> file size, then the ordered (ChunkId, size) list
 *   pins      pinned path -> the version keys it pinned (and the chunks it added pin counts to)
 *   pinkeys   version key -> the pins that list it, so a version recorded after its pin is pinned
 *   meta      "bytes" (sum of chunk sizes), "format"
 * refcount counts the references from versions (a chunk in two files, or twice in one, counts each);
 * the pin count, the references from pinned versions. A record lives while the chunk is stored or
 * referenced. "Stored" means its file is in the store; a version may name chunks that are not
 * (evicted, or dropped as bad): readers fetch those again. The totals count stored chunks only.
 *
 * Robustness: the map grows (doubling, up to a limit) when a write meets MDB_MAP_FULL and the write is
 * retried; stale readers are cleared at open (mdb_reader_check); MDB_PANIC or MDB_CORRUPTED make the
 * caller reopen (chunk_index_reopen). A file damaged by a crash or by garbage is detected by
 * chunk_index_probe() before it is opened in the daemon, in a child process, because LMDB trusts its
 * pages and may crash on a bad one.
 *
 * Every call is thread-safe (LMDB serialises writers; readers do not block). Times are
 * CLOCK_REALTIME microseconds, so they survive restarts. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chunk-id.h"

#define CHUNK_INDEX_FILE "index.mdb"

typedef struct ChunkIndex ChunkIndex;

typedef struct ChunkRef {
        ChunkId id;
        uint32_t size;
} ChunkRef;

typedef struct ChunkInfo {
        uint64_t size;
        uint32_t refcount;
        uint32_t pin_count;
        uint64_t last_access_usec;
} ChunkInfo;

typedef struct ChunkIndexTotals {
        uint64_t chunks, bytes;         /* stored chunks and their bytes */
        uint64_t pinned_chunks, pinned_bytes;
        uint64_t versions, version_bytes;       /* files known, and their logical size (dedup ratio) */
        uint64_t pins;
} ChunkIndexTotals;

typedef struct ChunkIndexOptions {
        uint64_t initial_map_size;      /* 0: 64 MiB */
        uint64_t max_map_size;          /* 0: 16 GiB; the map doubles up to this on MDB_MAP_FULL */
} ChunkIndexOptions;

/* Opens (creating) the index at path; opts NULL for the defaults. -EBADMSG when the file is not an
 * LMDB environment of ours. */
int chunk_index_open(const char *path, const ChunkIndexOptions *opts, ChunkIndex **ret);
void chunk_index_close(ChunkIndex *x);         /* NULL is fine */
/* Closes and opens the environment again, after MDB_PANIC (see -ENOTRECOVERABLE below). */
int chunk_index_reopen(ChunkIndex *x);
/* Checks the file at path in a child process: opens it and walks every database, checking that each
 * record decodes and that lru and meta agree with chunks. 0 when good, -EBADMSG when damaged (the
 * child found a bad record, or crashed), other errors when it could not be checked. Never opens the
 * file in this process. */
int chunk_index_probe(const char *path);

/* Errors of all calls below: -ENOTRECOVERABLE when LMDB reports MDB_PANIC or MDB_CORRUPTED (reopen or
 * rebuild), -ENOSPC when the map cannot grow further or the disk is full, -ENOMEM, -EIO. */

/* A file version: key is the cache's version key (cache.c). */
int chunk_index_version_get(ChunkIndex *x, const char *key, uint64_t *ret_size, ChunkRef **ret_chunks, size_t *ret_n);  /* -ENOENT */
/* Records (or replaces) a version. refcounts follow: +1 per reference of the new list, -1 per
 * reference of the replaced one; a pinned version's chunks keep their pin counts. */
int chunk_index_version_put(ChunkIndex *x, const char *key, uint64_t size, const ChunkRef *chunks, size_t n);
/* Adds chunks whose files were just renamed into the store (one transaction; already stored ones
 * only get their last access set), with their refcounts and pin counts taken from the versions and
 * pins that name them. */
int chunk_index_chunks_add(ChunkIndex *x, const ChunkRef *stored, size_t n, uint64_t now_usec);
int chunk_index_version_drop(ChunkIndex *x, const char *key);  /* -ENOENT */

int chunk_index_chunk_get(ChunkIndex *x, const ChunkId *id, ChunkInfo *ret);   /* -ENOENT: not stored */
/* Forgets a stored chunk (its file is gone or about to be): the totals drop by its size. Versions
 * keep naming it. -ENOENT when not stored. */
int chunk_index_chunk_remove(ChunkIndex *x, const ChunkId *id);
/* Sets the last access of chunks to times_usec[i] (each access's own time), in one transaction (the
 * cache batches reads' touches). A time not later than the one recorded leaves the chunk as it is;
 * unknown ids are ignored. */
int chunk_index_touch(ChunkIndex *x, const ChunkId *ids, const uint64_t *times_usec, size_t n);
/* Up to max unpinned stored chunks, least recently used first, into ret (caller's array). */
int chunk_index_oldest_unpinned(ChunkIndex *x, ChunkRef *ret, size_t max, size_t *ret_n);

/* Pins: path is the pinned path as the user gave it (relative to the mountpoint; "" is the whole
 * library). Pinning adds one
 * pin count to every chunk of every listed version, stored or not; unpinning removes what that pin
 * added. Pinning a path again replaces its list. A listed version not recorded yet is pinned when
 * chunk_index_version_put() first records it (pin, then fill); replacing a recorded version adds no
 * pin counts (pin again for that). */
int chunk_index_pin_put(ChunkIndex *x, const char *path, const char *const *version_keys, size_t n);
int chunk_index_pin_drop(ChunkIndex *x, const char *path);     /* -ENOENT */
typedef int (*chunk_index_pin_fn)(const char *path, const char *const *version_keys, size_t n, void *userdata);
int chunk_index_pins_foreach(ChunkIndex *x, chunk_index_pin_fn fn, void *userdata);

typedef int (*chunk_index_chunk_fn)(const ChunkId *id, const ChunkInfo *info, void *userdata);
/* Every stored chunk (a read transaction: fn must not write the index). */
int chunk_index_chunks_foreach(ChunkIndex *x, chunk_index_chunk_fn fn, void *userdata);

int chunk_index_totals(ChunkIndex *x, ChunkIndexTotals *ret);
/* Drops every stored unpinned chunk from the index, calling fn for each so the caller removes its
 * file; versions and pins stay. */
int chunk_index_clear_unpinned(ChunkIndex *x, chunk_index_chunk_fn fn, void *userdata);

/* Rebuilds an index from nothing: the caller has moved the bad file aside and opened a fresh one;
 * this adds every chunk the walk reports (refcount 0, last access = the file's mtime) in batches. */
int chunk_index_adopt(ChunkIndex *x, const ChunkRef *chunks, const uint64_t *last_access_usec, size_t n);
