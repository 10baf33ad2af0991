/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The chunk cache (D7, D8, D9, D11 passthrough): everything between a FUSE read and the origins.
 * Owns <cache_dir>/chunks/ (chunk-store.h), <cache_dir>/index.mdb (chunk-index.h), the fill workers
 * that stream files into the store behind readers, album read-ahead, pins, the byte budget and
 * eviction, the disk watermarks, passthrough and the cache-health probe.
 *
 * A file version is identified by its key "v1:<size>:<mtime_ns>:<preferred replica's rel_path>" (the
 * tree node's size and mtime): a changed file is a new version, replicas of one file share one, and
 * identical chunks of different versions are stored once.
 *
 * Reads (D8): a fully cached version is served from verified chunk files and needs no origin at all;
 * a missing or bad chunk is fetched again (its range, from the replicas) and checked against its
 * name before it is served or stored. A version that is not cached answers each read with one ranged
 * origin read through a ReplicaReader (replica.h) and starts a fill job that streams the whole file
 * through the chunker into the store, sequentially, behind the reader; ranges the fill has passed
 * are served from the cache. No read holds more than one chunk (256 KiB) per request in memory.
 *
 * Threads: every function is thread-safe. The cache runs its own fill threads (2) and a maintenance
 * thread (access-time flush, budget enforcement, watermark and health checks every minute and after
 * writes). It never calls into the manager except through the state callback. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "origin.h"
#include "tree.h"

typedef struct Cache Cache;
typedef struct CacheReader CacheReader;

typedef struct CacheOptions {
        const char *dir;                /* <cache_dir>: chunks/ and index.mdb live here */
        uint64_t budget_bytes;          /* stored chunk bytes kept at or below this (never > 1.05×) */
        unsigned readahead_tracks;      /* next tracks of an album fetched while one plays; 0: off */
        bool passthrough;               /* start with passthrough switched on by hand */
        bool unclean_start;             /* the last run did not stop cleanly: probe the index */
        /* Watermarks of the cache disk's fill level, percent (D9): evict harder / no prefetch, pins
         * or read-ahead / no writes at all (passthrough). Defaults 90, 95, 99 when 0. */
        unsigned evict_percent, prefetch_percent, stop_percent;
        unsigned maintenance_interval_sec;     /* 0: 60 */
} CacheOptions;

/* Why passthrough is on (D11); CACHE_PASSTHROUGH_NONE when reads go through the cache. */
typedef enum CachePassthroughReason {
        CACHE_PASSTHROUGH_NONE,
        CACHE_PASSTHROUGH_MANUAL,       /* SetPassthrough(true) / the configuration */
        CACHE_PASSTHROUGH_READ_ONLY,    /* EROFS from the cache disk */
        CACHE_PASSTHROUGH_FULL,         /* past stop_percent, or ENOSPC/EDQUOT */
        CACHE_PASSTHROUGH_IO_ERROR,     /* EIO and friends from the cache disk or the index */
        CACHE_PASSTHROUGH_PERMISSION,   /* EACCES/EPERM */
        _CACHE_PASSTHROUGH_REASON_MAX,
} CachePassthroughReason;
const char *cache_passthrough_reason_to_string(CachePassthroughReason r);  /* "none", "manual", "read-only", ... */

typedef struct CacheStats {
        uint64_t bytes, budget, chunks;
        uint64_t pinned_bytes, pinned_chunks;
        uint64_t versions, version_bytes;       /* dedup ratio = version_bytes of cached versions / bytes */
        double dedup_ratio;
        uint64_t hits, misses;          /* reads answered from chunks / needing the origin */
        uint64_t evictions, evicted_bytes;
        uint64_t bad_chunks;            /* chunks that failed verification and were dropped */
        uint64_t fills_active, fills_queued;
        uint64_t pins, pin_bytes_total, pin_bytes_done;        /* pin progress */
        double disk_percent;
        bool passthrough;
        CachePassthroughReason passthrough_reason;
} CacheStats;

/* Called (from any cache thread, or from the caller of cache_set_passthrough) when passthrough turns
 * on or off; the manager re-reads cache_get_stats() on its own loop. */
typedef void (*cache_state_fn)(void *userdata);

/* Opens the cache: removes leftover temporaries, probes the index in a child when unclean_start (a
 * damaged index is moved aside as index.mdb.corrupt-<time> and rebuilt from the chunk files),
 * verifies 100 random chunks (bad ones dropped), and starts the threads. A cache directory that
 * cannot be written does not fail the open: the cache starts in passthrough with the reason, and the
 * health probe turns it back on when the disk recovers. origins must outlive the cache. */
int cache_open(const CacheOptions *opts, OriginSet *origins, cache_state_fn state_fn, void *userdata, Cache **ret);
/* Stops the threads (fills in flight are abandoned: their chunks so far stay), flushes access times,
 * closes the index. NULL is fine. */
void cache_close(Cache *c);

/* The read path, for FUSE. tree and file must stay valid until the reader is closed (the handle holds
 * the tree). In passthrough the reader reads the replicas directly. Opening needs no origin when the
 * version is cached; otherwise it opens a replica (-ENOENT/-EIO... when none opens). */
int cache_reader_open(Cache *c, const Tree *tree, const TreeNode *file, CacheReader **ret);
/* Exactly min(size, file size - offset) bytes unless an error; the bytes are the version's (verified
 * chunks, or the origin's); a negative errno (-EIO when neither cache nor any replica has them). */
ssize_t cache_reader_read(CacheReader *r, void *buf, size_t size, uint64_t offset);
void cache_reader_close(CacheReader *r);       /* NULL is fine; cancels its read-ahead */

/* Pins (D9): path is relative to the mountpoint ("" is the whole library). Every file at or below it
 * in tree is fetched completely in the background and kept out of eviction; the pin is persisted and
 * survives restarts. -ENOENT: no such path in tree; -ENOSPC: the pinned bytes would not fit in the
 * budget. Unpin: -ENOENT when path is not pinned. */
int cache_pin(Cache *c, const Tree *tree, const char *path);
int cache_unpin(Cache *c, const char *path);
/* After a new tree is published (and once after open): re-resolves the pinned paths in tree, so
 * files added or changed under a pinned directory are pinned and fetched too. */
int cache_pins_refresh(Cache *c, const Tree *tree);
/* The pinned paths, newly allocated (strv, NULL-terminated). */
int cache_list_pins(Cache *c, char ***ret);

/* Manual passthrough (SetPassthrough / the Passthrough property). Turning it off while the disk is
 * still failing leaves it on with the disk's reason. */
int cache_set_passthrough(Cache *c, bool enabled);
bool cache_passthrough(Cache *c);

int cache_get_stats(Cache *c, CacheStats *ret);
/* Drops every unpinned chunk (ClearCache). */
int cache_clear(Cache *c);

/* Integrity on demand (musicfsctl cache verify / repair): reads and verifies every stored chunk
 * against its name and the index against the store. verify only counts; repair also drops bad and
 * missing chunks from the index, removes chunk files the index does not know (or adopts them), and
 * corrects the totals. Runs on the caller's thread; can take minutes (the bus runs it off the loop). */
typedef struct CacheVerifyResult {
        uint64_t checked;               /* chunk files read and verified */
        uint64_t bad;                   /* failed verification */
        uint64_t missing;               /* in the index, not in the store */
        uint64_t orphans;               /* in the store, not in the index */
        uint64_t repaired;              /* fixed by repair */
} CacheVerifyResult;
int cache_verify(Cache *c, bool repair, CacheVerifyResult *ret);

/* The clean-stop marker, kept by the cache's owner at a path of its choosing outside dir. After
 * cache_close(), write records the identity of dir/index.mdb as the close left it (device, inode,
 * size, mtime). At the next start, consume returns true only when the marker is there and the index
 * is still exactly that file, and removes the marker either way (so a crash from then on is seen):
 * garbage written over a cleanly closed index changes its mtime, and the open probes it then. */
int cache_clean_marker_write(const char *dir, const char *marker);
bool cache_clean_marker_consume(const char *dir, const char *marker);

/* The version key of a file (see above), newly allocated. */
char *cache_version_key(const TreeNode *file);
