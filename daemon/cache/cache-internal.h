/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* What the two halves of the cache share. cache.c owns the context: open/close, the maintenance
 * thread (access-time flush, budget and eviction, watermarks, the health probe and passthrough),
 * pins, stats, clear and verify. cache-read.c owns the read path: readers, fill jobs (their queue and
 * threads) and album read-ahead. Neither reaches into the other's fields except those marked shared. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "chunk-id.h"
#include "chunk-index.h"
#include "chunk-store.h"

/* What a fill needs to know of a file, copied so it does not pin a Tree. */
typedef struct CacheFileSpec {
        char *key;                      /* cache_version_key() */
        char *path;                     /* virtual path, for logs */
        uint64_t size;
        TreeReplica *replicas;          /* copied; rel_path strdup'ed */
        size_t n_replicas;
} CacheFileSpec;

int cache_file_spec_from_node(const Tree *tree, const TreeNode *file, CacheFileSpec *ret);
void cache_file_spec_done(CacheFileSpec *s);    /* frees members */

typedef enum CacheFillKind {
        CACHE_FILL_READER,              /* behind a reader: first in line */
        CACHE_FILL_PIN,                 /* a pinned file */
        CACHE_FILL_READAHEAD,           /* the next track of an album: cancelled when its reader goes */
} CacheFillKind;

typedef struct CacheFills CacheFills;   /* cache-read.c */

/* Access times are buffered and flushed to the index in batches by the maintenance thread. */
#define TOUCH_FLUSH_AT 4096             /* buffered touches that make a flush due */
#define TOUCH_FORCE_AT 32768            /* ... and that flush at once, reads or not */
#define TOUCH_MAX 65536                 /* beyond this, touches are dropped until the next flush */
/* A due flush waits for a pause in reads this long: its commit syncs the index, and readers of
 * small files on the same disk waited behind it (open + 4 KiB p99 2-3x that of passthrough_ll while
 * a flush ran). At most TOUCH_QUIET_MAX_USEC, then it goes anyway. */
#define TOUCH_QUIET_USEC (50u * 1000u)
#define TOUCH_QUIET_MAX_USEC (10u * 1000u * 1000u)

struct Cache {
        CacheOptions opts;              /* dir strdup'ed */
        char *dir;
        OriginSet *origins;
        ChunkStore *store;
        ChunkIndex *index;
        cache_state_fn state_fn;
        void *state_userdata;

        /* Passthrough (cache.c writes, everyone reads). */
        atomic_int passthrough_reason;          /* CachePassthroughReason of the disk; NONE when fine */
        atomic_bool passthrough_manual;
        /* Watermark level from the last disk check (cache.c): 0 fine, 1 evict harder, 2 no prefetch,
         * 3 no writes. */
        atomic_int watermark_level;

        /* Counters (both halves add). */
        atomic_uint_fast64_t hits, misses, evictions, evicted_bytes, bad_chunks;

        CacheFills *fills;              /* cache-read.c */

        /* cache.c: batched access times, the maintenance thread, pins in progress. */
        pthread_mutex_t lock;
        pthread_cond_t wake;
        ChunkId *touched;
        uint64_t *touched_at;           /* each access's own time: a batch must keep the LRU order */
        size_t n_touched, n_touched_alloc;
        uint64_t touch_last_mono;       /* CLOCK_MONOTONIC µs of the last touch */
        uint64_t touch_due_mono;        /* when TOUCH_FLUSH_AT was reached; 0: no flush due */
        /* Held from taking the buffered touches to their commit: an eviction that flushes first must
         * not read the LRU order while another thread's taken touches are still on their way. */
        pthread_mutex_t touch_flush_lock;
        bool maintenance_requested;
        bool stopping;
        pthread_t maintenance;
        bool maintenance_started;
        uint64_t pin_bytes_total, pin_bytes_done;
        /* cache.c (added by the context's author): one eviction or clear at a time, so a writer's
         * synchronous eviction and the thread's do not both empty the cache; the index's replacement
         * after a failed reopen (the old object stays allocated in retired until close, because other
         * threads may still hold the pointer); the last stored total seen, for cache_writes_allowed();
         * pinned paths already logged as missing from the tree. */
        pthread_mutex_t evict_lock;
        pthread_mutex_t index_lock;
        ChunkIndex **retired;
        size_t n_retired;
        atomic_bool index_rebuild;              /* the maintenance thread must rebuild the index */
        atomic_bool index_check;                /* reopened after an error: the maintenance thread probes it */
        atomic_uint_fast64_t stored_bytes;
        atomic_uint_fast64_t reserved_bytes;    /* announced by cache_make_room(), not indexed yet */
        char **pins_missing;
        size_t n_pins_missing;
};

/* cache.c, for the read path. */
bool cache_passthrough_active(Cache *c);        /* manual or a disk reason */
bool cache_writes_allowed(Cache *c);            /* not past stop_percent, not in passthrough */
bool cache_prefetch_allowed(Cache *c);          /* below prefetch_percent: read-ahead and pins may fill */
/* A chunk was served: its access time is flushed to the index in a batch (survives restarts). */
void cache_note_access(Cache *c, const ChunkId *id);
/* Chunks were stored: wakes the maintenance thread to hold the budget (it evicts before the total
 * passes 1.05× the budget; writers call it after each batch); releases what cache_make_room()
 * reserved for them. */
void cache_note_stored(Cache *c, uint64_t bytes);
/* An error from the cache disk or index (negative errno): EROFS, ENOSPC, EDQUOT, EIO, EACCES, EPERM
 * turn passthrough on with their reason; -ENOTRECOVERABLE reopens the index. Others are ignored. */
void cache_disk_failed(Cache *c, int error);
/* A pinned file finished filling (bytes = its size), for pin progress. */
void cache_pin_progress(Cache *c, uint64_t bytes);
/* (Added by the read path.) Called by a writer just before it commits a batch of bytes of new chunks
 * (they appear in the store at the rename, before the index or cache_note_stored() know them):
 * evicts first, synchronously, if the stored total plus bytes would pass the budget, so that the
 * chunk files on disk never exceed 1.05× even with two fill threads. */
void cache_make_room(Cache *c, uint64_t bytes);
/* Every cache_make_room() is followed by cache_note_stored() with the same bytes once the batch is
 * indexed, or by this when it failed: the bytes announced by writers in flight count against the
 * budget too, so that concurrent writers do not all see room for themselves. */
void cache_room_release(Cache *c, uint64_t bytes);
/* (Added for D9.) Before a writer writes a batch of up to bytes: evicts first, synchronously, when
 * the disk would pass the evict watermark, whatever the budget (cache_make_room checks the disk too,
 * before the commit). */
void cache_make_disk_room(Cache *c, uint64_t bytes);
/* The most bytes one batch should hold on this disk (0: no limit known): a batch's temporaries take
 * room before anything can be evicted for it, so two fill threads' batches must fit in the room
 * between the evict watermark and a full disk. */
uint64_t cache_disk_batch_max(Cache *c);

/* cache-read.c, for cache.c. */
int cache_fills_new(Cache *c, unsigned threads, CacheFills **ret);
void cache_fills_free(CacheFills *f);           /* stops the threads; NULL is fine */
/* Queues a fill of spec (copied) unless one of that key runs or waits, or the version is complete
 * in the cache. Returns 0 queued, 1 already there or running. */
int cache_fill_queue(Cache *c, const CacheFileSpec *spec, CacheFillKind kind);
void cache_fills_counts(Cache *c, uint64_t *ret_active, uint64_t *ret_queued);
/* True when every chunk of the version is stored (the index says so; files not read). */
int cache_version_complete(Cache *c, const char *key, uint64_t *ret_missing_bytes);
