/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Chunk files (D7): <dir>/xx/<64 hex digits>, where xx is the first byte of the id in hex. A chunk
 * becomes visible under its name only once its bytes are durable: written to a temporary name in the
 * same directory (".tmp-<hex>-<random>"), fsynced (one syncfs() per batch), then renamed. The index
 * (chunk-index.h) learns of a chunk only after that rename, so a crash between any two steps leaves
 * at worst a temporary (removed at the next open) or a chunk file the index does not know (adopted
 * or removed by a rebuild). Every read is verified against the name.
 *
 * Failpoints: cache-write (before a temporary is written), cache-rename (after the batch is durable,
 * before the renames), cache-chunk-read (before a chunk file is read).
 *
 * Thread-safe: no state beyond the directory fd and counters. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chunk-id.h"

typedef struct ChunkStore ChunkStore;

/* Opens (creating) the store at dir and removes leftover temporaries of an earlier run; the count
 * removed goes to *ret_removed_tmp (may be NULL) and to the log. */
int chunk_store_open(const char *dir, ChunkStore **ret, unsigned *ret_removed_tmp);
void chunk_store_free(ChunkStore *s);  /* NULL is fine */
const char *chunk_store_dir(const ChunkStore *s);

/* A batch of chunks on their way in: write them, then commit. A chunk file that exists already is
 * not written again (same name, same bytes). */
typedef struct ChunkBatch ChunkBatch;
int chunk_batch_new(ChunkStore *s, ChunkBatch **ret);
/* Writes one chunk to a temporary. -ENOSPC/-EROFS/-EIO/-EACCES come straight from the disk. */
int chunk_batch_add(ChunkBatch *b, const ChunkId *id, const void *data, size_t len);
/* Makes every temporary durable, then renames each to its name. After a failure nothing of the batch
 * is under its name (temporaries are removed). Frees b either way. */
int chunk_batch_commit(ChunkBatch *b);
void chunk_batch_abort(ChunkBatch *b); /* removes the temporaries, frees; NULL is fine */

/* Reads the chunk whole into buf (bufsize ≥ its size) and verifies it: its size on success, -ENOENT
 * when there is no such file, -EBADMSG when the bytes do not hash to id (the file is removed then,
 * so the next reader fetches it again), -EIO etc. from the disk. */
ssize_t chunk_store_read(ChunkStore *s, const ChunkId *id, void *buf, size_t bufsize);
/* The same on a chunk file chunk_store_prefetch_fds() opened (the fd stays the caller's). */
ssize_t chunk_store_read_fd(ChunkStore *s, const ChunkId *id, int fd, void *buf, size_t bufsize);
/* The size of the chunk file, without reading or verifying it; -ENOENT when absent. */
int chunk_store_stat(ChunkStore *s, const ChunkId *id, uint64_t *ret_size);
int chunk_store_remove(ChunkStore *s, const ChunkId *id);      /* -ENOENT when absent */
/* Asks the kernel to start reading the n chunk files (POSIX_FADV_WILLNEED), so that a sequential
 * reader of a cached file does not wait for each small file in turn. Best effort: files that are
 * absent or cannot be opened are skipped. Returns how many were advised. */
size_t chunk_store_prefetch(ChunkStore *s, const ChunkId *ids, size_t n);
/* The same, handing the open files to the caller (ret_fds[i] is -1 where one could not be opened),
 * so that a reader reads them without opening them again. */
size_t chunk_store_prefetch_fds(ChunkStore *s, const ChunkId *ids, size_t n, int *ret_fds);
uint64_t chunk_store_advised(ChunkStore *s);    /* chunk files advised by the prefetches, in all */
uint64_t chunk_store_opened(ChunkStore *s);     /* chunk files opened by reads and prefetches, in all */

/* Every chunk file (names that are not chunk ids, and temporaries, are skipped and counted in
 * *ret_foreign if not NULL). fn returning <0 stops the walk with that value. */
typedef int (*chunk_store_walk_fn)(const ChunkId *id, uint64_t size, void *userdata);
int chunk_store_walk(ChunkStore *s, chunk_store_walk_fn fn, void *userdata, uint64_t *ret_foreign);

/* The cache disk's fill level in percent (0..100, from statvfs: used / total, as df shows it). */
int chunk_store_disk_usage(ChunkStore *s, double *ret_percent);
/* The same in bytes: used, and used + available (the total the percentage is of). */
int chunk_store_disk_space(ChunkStore *s, uint64_t *ret_used, uint64_t *ret_total);
/* The health probe of D11: writes, fsyncs, reads back and deletes a small test file in the store.
 * 0 when the disk works; the first error otherwise (-EROFS, -ENOSPC, -EIO, -EACCES). */
int chunk_store_probe(ChunkStore *s);
