/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The read path of the chunk cache (D7, D8): readers that serve verified chunks and go back to the
 * origins for what the cache lacks, the fill jobs that stream whole files into the store behind them
 * (a queue ordered by kind, its threads, and each job's progress so readers use it at once), and album
 * read-ahead. cache.c owns the context, the budget, passthrough and the disk; this file only asks it
 * through cache-internal.h.
 *
 * Locks: CacheReader.lock (the reader's state) may be held while taking CacheFills.lock, never the
 * other way round; CacheReader.slot_lock is a leaf. No lock is held across a chunk file read, an
 * origin read or a store write; a reader's lock is held across index lookups and the lazy opening of
 * its replica (the threads of one reader wait for one open rather than race to open several). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cache-internal.h"
#include "cdc.h"
#include "crash.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "replica.h"
#include "time-util.h"

#define FILL_READ_SIZE (1024u * 1024u)                  /* one origin read of a fill */
#define FILL_BUF_SIZE (FILL_READ_SIZE + CDC_MAX_SIZE)   /* always a whole maximal chunk ahead */
#define FILL_BATCH_BYTES (4u * 1024u * 1024u)           /* chunk bytes per store batch and progress step */
#define FILL_BATCH_MIN_BYTES (64u * 1024u)
#define FILL_QUEUE_MAX 1024u                            /* queued jobs; readers may go up to twice that */
/* A fill waits while readers fetch missing bytes from the origins, until they have been quiet this
 * long, but at most FILL_YIELD_MAX_USEC at a time (see fill_yield_to_readers()). */
#define FILL_YIELD_QUIET_USEC (30u * 1000u)
#define FILL_YIELD_MAX_USEC (1000u * 1000u)
#define READER_SLOTS 4                                  /* verified chunks a reader keeps (≤ 4 × 256 KiB): the kernel has 2-3 requests of one file in flight, and each shares its boundary chunks with the next */
/* A read this close to where the last one ended is still sequential: the kernel's read-ahead sends
 * several reads at once, and they arrive out of order. */
#define SEQ_WINDOW (512u * 1024u)
/* How far ahead of a reader of a cached file its chunk files are prefetched: a chunk file is small,
 * so the kernel's own read-ahead never crosses into the next one. */
#define PREFETCH_AHEAD (4u * 1024u * 1024u)
#define PREFETCH_FIRST (256u * 1024u)                   /* after the first sequential request; doubles per request */
#define PREFETCH_MAX_CHUNKS 64u
/* Open chunk files a reader keeps from its prefetch to its read: a window of PREFETCH_AHEAD holds
 * 64 chunks of the average size and more of smaller ones; a file pushed out is opened again. */
#define READER_PREFETCH_FDS 128u

DEFINE_TRIVIAL_CLEANUP_FUNC(ReplicaReader *, replica_reader_close);


typedef enum FillState {
        FILL_QUEUED,
        FILL_RUNNING,
        FILL_DONE,              /* the version is recorded */
        FILL_FAILED,            /* stopped, cancelled or dropped: the chunks so far stay, no version */
} FillState;

typedef struct FillJob {
        CacheFileSpec spec;
        /* Under CacheFills.lock. kind only rises (a reader adopts a read-ahead, which then is no longer
         * cancelled by the reader of the track before it). */
        CacheFillKind kind;
        FillState state;
        uint64_t seq;           /* FIFO within one kind */
        unsigned n_ref;
        unsigned ra_owners;     /* readers whose read-ahead this is */
        atomic_bool cancel;
        /* Progress, under CacheFills.lock: the chunks stored and indexed so far, in file order, and the
         * byte offset they reach. Only the job's thread appends. */
        ChunkRef *chunks;
        uint64_t *offsets;
        size_t n_chunks, n_alloc;
        uint64_t covered;
} FillJob;

struct CacheFills {
        Cache *cache;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        FillJob **jobs;         /* queued and running, at most one per key */
        size_t n_jobs, n_jobs_alloc;
        size_t n_queued, n_running;
        uint64_t next_seq;
        bool stopping;
        pthread_t *threads;
        unsigned n_threads;
        /* Readers fetching bytes the cache lacks from the origins right now, and when the last of
         * them finished (monotonic): what fills yield to. */
        atomic_uint origin_readers;
        atomic_uint_fast64_t origin_read_end_usec;
        /* Chunk files readers hold open between their prefetch and their read, and the most they may
         * (a quarter of RLIMIT_NOFILE: origins, FUSE and the index need the rest). */
        atomic_uint prefetch_fds;
        unsigned prefetch_fds_max;
};

typedef struct PrefetchedFd {
        ChunkId id;
        int fd;
} PrefetchedFd;

typedef struct ChunkSlot {
        ChunkId id;
        uint8_t *data;          /* the chunk's bytes (at least size), or NULL */
        uint32_t size;
        uint64_t used;
        bool valid;
} ChunkSlot;

struct CacheReader {
        Cache *cache;
        const Tree *tree;
        const TreeNode *file;
        CacheFileSpec spec;

        pthread_mutex_t lock;
        ReplicaReader *replica;         /* opened lazily; never replaced until close */
        /* The recorded version, once known; gen counts changes so a thread that found a chunk stale
         * drops only the list it used. */
        ChunkRef *chunks;
        uint64_t *offsets;
        size_t n_chunks;
        uint64_t gen;
        bool version_checked;
        FillJob *job;                   /* the fill behind this reader (a reference) */
        bool fill_queued;               /* queued once per reader; a failed fill is queued by a later one */
        bool fill_done;
        atomic_bool refill_queued;      /* a recorded version lost chunks (evicted): one fill stores them again */
        atomic_bool origin_failed;
        /* Sequential reading and album read-ahead. */
        uint64_t n_reads, last_end, seq_end;
        uint64_t prefetched_end;        /* chunk files up to here were handed to the kernel's read-ahead */
        uint64_t prefetch_window;       /* how far past a request that is advised now (grows while sequential) */
        bool ra_started;
        FillJob **ra_jobs;
        size_t n_ra;

        pthread_mutex_t slot_lock;
        ChunkSlot slots[READER_SLOTS];
        uint64_t slot_clock;
        /* Under slot_lock: chunk files the prefetch opened, oldest first, for the read to use rather
         * than open each a second time (a syscall costs dearly in a VM: 7 per chunk were 4). */
        PrefetchedFd fds[READER_PREFETCH_FDS];
        size_t n_fds;
};

/* cache.c may swap the index (a rebuild) or set store and index late (the disk recovered); an
 * object it replaces stays allocated until close, so a pointer loaded once stays usable. NULL while
 * the cache has no disk. */
static ChunkIndex *read_index(Cache *c) {
        return __atomic_load_n(&c->index, __ATOMIC_ACQUIRE);
}

static ChunkStore *read_store(Cache *c) {
        return __atomic_load_n(&c->store, __ATOMIC_ACQUIRE);
}

static size_t min_size(size_t a, size_t b) {
        return a < b ? a : b;
}

/* Errors from the store or the index that cache.c turns into passthrough (the rest it ignores). */
static int disk_error(Cache *c, int r, const char *what, const char *path) {
        cache_disk_failed(c, r);
        return log_warning_errno(r, "Cache: %s for %s failed: %m", what, strna(path));
}

/* ---- version keys and file specs ---- */

char *cache_version_key(const TreeNode *file) {
        char *k = NULL;

        if (!file || file->is_dir)
                return NULL;
        const char *rel = file->n_replicas > 0 && file->replicas ? strempty(file->replicas[0].rel_path) : "";
        if (asprintf(&k, "v1:%" PRIu64 ":%" PRIi64 ":%s", file->size, file->mtime_ns, rel) < 0)
                return NULL;
        return k;
}

/* The file size a key names, for a version the index does not know yet. */
static uint64_t key_size(const char *key) {
        uint64_t size = 0;
        if (sscanf(key, "v1:%" SCNu64 ":", &size) != 1)
                return 0;
        return size;
}

void cache_file_spec_done(CacheFileSpec *s) {
        if (!s)
                return;
        free(s->key);
        free(s->path);
        for (size_t i = 0; i < s->n_replicas; i++)
                free(s->replicas[i].rel_path);
        free(s->replicas);
        *s = (CacheFileSpec) {};
}

static int spec_fill_replicas(CacheFileSpec *s, const TreeReplica *replicas, size_t n) {
        s->replicas = calloc(n, sizeof *s->replicas);
        if (!s->replicas)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                s->replicas[i] = replicas[i];
                s->replicas[i].rel_path = strdup(strempty(replicas[i].rel_path));
                if (!s->replicas[i].rel_path)
                        return -ENOMEM;
                s->n_replicas++;
        }
        return 0;
}

int cache_file_spec_from_node(const Tree *tree, const TreeNode *file, CacheFileSpec *ret) {
        _cleanup_(cache_file_spec_done) CacheFileSpec s = {};

        if (!file || !ret)
                return -EINVAL;
        if (file->is_dir)
                return -EISDIR;
        if (file->n_replicas == 0 || !file->replicas)
                return -ENOENT;

        s.key = cache_version_key(file);
        s.path = tree ? tree_node_path(tree, file) : strdup(strempty(file->name));
        if (!s.key || !s.path)
                return -ENOMEM;
        s.size = file->size;
        int r = spec_fill_replicas(&s, file->replicas, file->n_replicas);
        if (r < 0)
                return r;

        *ret = s;
        s = (CacheFileSpec) {};
        return 0;
}

static int spec_copy(const CacheFileSpec *src, CacheFileSpec *ret) {
        _cleanup_(cache_file_spec_done) CacheFileSpec s = {};

        s.key = strdup(src->key);
        s.path = strdup(strempty(src->path));
        if (!s.key || !s.path)
                return -ENOMEM;
        s.size = src->size;
        int r = spec_fill_replicas(&s, src->replicas, src->n_replicas);
        if (r < 0)
                return r;

        *ret = s;
        s = (CacheFileSpec) {};
        return 0;
}

static int spec_replica_open(Cache *c, const CacheFileSpec *s, ReplicaReader **ret) {
        /* replica_reader_open() copies what it needs from the node. */
        TreeNode node = {
                .name = s->path,
                .size = s->size,
                .replicas = s->replicas,
                .n_replicas = s->n_replicas,
        };
        return replica_reader_open(c->origins, &node, ret);
}

/* ---- chunk lists ---- */

/* The chunk of a sorted offsets list that holds byte off (off below the end of the list). */
static size_t chunk_find(const uint64_t *offsets, size_t n, uint64_t off) {
        size_t lo = 0, hi = n;
        while (hi - lo > 1) {
                size_t mid = lo + (hi - lo) / 2;
                if (offsets[mid] <= off)
                        lo = mid;
                else
                        hi = mid;
        }
        return lo;
}

typedef struct ChunkRange {
        ChunkRef *refs;
        uint64_t *offsets;
        size_t n;
} ChunkRange;

static void chunk_range_done(ChunkRange *r) {
        free(r->refs);
        free(r->offsets);
        *r = (ChunkRange) {};
}

/* Copies the chunks of list that hold [offset, offset + size) (within the list's extent). */
static int chunk_range_copy(const ChunkRef *chunks, const uint64_t *offsets, size_t n, uint64_t offset, size_t size,
                            ChunkRange *ret) {
        size_t first = chunk_find(offsets, n, offset), last = chunk_find(offsets, n, offset + size - 1);

        ret->n = last - first + 1;
        ret->refs = malloc(ret->n * sizeof *ret->refs);
        ret->offsets = malloc(ret->n * sizeof *ret->offsets);
        if (!ret->refs || !ret->offsets) {
                chunk_range_done(ret);
                return -ENOMEM;
        }
        memcpy(ret->refs, chunks + first, ret->n * sizeof *ret->refs);
        memcpy(ret->offsets, offsets + first, ret->n * sizeof *ret->offsets);
        return 0;
}

static uint64_t *offsets_from_chunks(const ChunkRef *chunks, size_t n, uint64_t *ret_total) {
        uint64_t *o = malloc((n > 0 ? n : 1) * sizeof *o), total = 0;
        if (!o)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                o[i] = total;
                total += chunks[i].size;
        }
        *ret_total = total;
        return o;
}

/* Stores one chunk fetched again from an origin (already checked against its name). */
static int chunk_store_back(Cache *c, const ChunkRef *ref, const void *data, const char *path) {
        ChunkStore *store = read_store(c);
        ChunkIndex *index = read_index(c);
        ChunkBatch *b = NULL;
        int r;

        if (!store || !index || !cache_writes_allowed(c))
                return 0;
        r = chunk_batch_new(store, &b);
        if (r < 0)
                return disk_error(c, r, "storing a chunk again", path);
        r = chunk_batch_add(b, &ref->id, data, ref->size);
        if (r < 0) {
                chunk_batch_abort(b);
                return disk_error(c, r, "storing a chunk again", path);
        }
        cache_make_room(c, ref->size);
        r = chunk_batch_commit(b);
        if (r >= 0)
                r = FAILPOINT(CACHE_INDEX);
        if (r >= 0)
                r = chunk_index_chunks_add(index, ref, 1, now_usec(CLOCK_REALTIME));
        if (r < 0) {
                cache_room_release(c, ref->size);
                return disk_error(c, r, "storing a chunk again", path);
        }
        cache_note_stored(c, ref->size);
        return 0;
}

int cache_version_complete(Cache *c, const char *key, uint64_t *ret_missing_bytes) {
        _cleanup_free_ ChunkRef *chunks = NULL;
        uint64_t size = 0, missing = 0;
        size_t n = 0;

        if (!c || !key)
                return -EINVAL;

        ChunkIndex *index = read_index(c);
        int r = index ? chunk_index_version_get(index, key, &size, &chunks, &n) : -ENOENT;
        if (r == -ENOENT) {
                if (ret_missing_bytes)
                        *ret_missing_bytes = key_size(key);
                return 0;
        }
        if (r < 0) {
                cache_disk_failed(c, r);
                return r;
        }

        for (size_t i = 0; i < n; i++) {
                ChunkInfo info;
                r = chunk_index_chunk_get(index, &chunks[i].id, &info);
                if (r == -ENOENT)
                        missing += chunks[i].size;
                else if (r < 0) {
                        cache_disk_failed(c, r);
                        return r;
                }
        }

        if (ret_missing_bytes)
                *ret_missing_bytes = missing;
        return missing == 0;
}

/* ---- fill jobs ---- */

static void fill_job_unref_locked(FillJob *j) {
        if (!j || --j->n_ref > 0)
                return;
        cache_file_spec_done(&j->spec);
        free(j->chunks);
        free(j->offsets);
        free(j);
}

static FillJob *fills_find_locked(CacheFills *f, const char *key) {
        for (size_t i = 0; i < f->n_jobs; i++)
                if (streq_ptr(f->jobs[i]->spec.key, key))
                        return f->jobs[i];
        return NULL;
}

/* Takes j out of the table with its final state (FILL_DONE or FILL_FAILED) and drops the table's
 * reference: the state is set before, as that reference may be the last. */
static void fills_remove_locked(CacheFills *f, FillJob *j, FillState final) {
        for (size_t i = 0; i < f->n_jobs; i++)
                if (f->jobs[i] == j) {
                        f->jobs[i] = f->jobs[--f->n_jobs];
                        break;
                }
        if (j->state == FILL_QUEUED)
                f->n_queued--;
        j->state = final;
        fill_job_unref_locked(j);
}

/* The newest queued read-ahead, the first to go when the queue is full. */
static FillJob *fills_droppable_locked(CacheFills *f) {
        FillJob *best = NULL;
        for (size_t i = 0; i < f->n_jobs; i++) {
                FillJob *j = f->jobs[i];
                if (j->state == FILL_QUEUED && j->kind == CACHE_FILL_READAHEAD && (!best || j->seq > best->seq))
                        best = j;
        }
        return best;
}

/* Queues a fill of spec unless one of that key is queued or running (its kind is raised then).
 * Returns 0 when queued, 1 when there already; *ret_job (may be NULL) gets a reference either way. A
 * read-ahead counts its caller among the job's read-ahead owners. */
static int fill_queue_ref(Cache *c, const CacheFileSpec *spec, CacheFillKind kind, FillJob **ret_job) {
        CacheFills *f = c->fills;
        int r;

        if (!f)
                return -ESHUTDOWN;

        pthread_mutex_lock(&f->lock);
        if (f->stopping) {
                r = -ESHUTDOWN;
                goto finish;
        }

        FillJob *j = fills_find_locked(f, spec->key);
        if (j) {
                if (kind < j->kind)
                        j->kind = kind;
                r = 1;
        } else {
                if (f->n_queued >= FILL_QUEUE_MAX) {
                        FillJob *victim = fills_droppable_locked(f);
                        if (victim) {
                                log_debug("Fill queue full, dropping the read-ahead of %s", victim->spec.path);
                                fills_remove_locked(f, victim, FILL_FAILED);
                        } else if (kind != CACHE_FILL_READER || f->n_queued >= 2 * FILL_QUEUE_MAX) {
                                r = -ENOBUFS;
                                goto finish;
                        }
                }

                if (GREEDY_REALLOC(f->jobs, f->n_jobs_alloc, f->n_jobs + 1) < 0) {
                        r = -ENOMEM;
                        goto finish;
                }

                j = calloc(1, sizeof *j);
                if (!j) {
                        r = -ENOMEM;
                        goto finish;
                }
                r = spec_copy(spec, &j->spec);
                if (r < 0) {
                        free(j);
                        goto finish;
                }
                j->kind = kind;
                j->state = FILL_QUEUED;
                j->seq = f->next_seq++;
                j->n_ref = 1;
                atomic_init(&j->cancel, false);
                f->jobs[f->n_jobs++] = j;
                f->n_queued++;
                pthread_cond_signal(&f->wake);
                r = 0;
        }

        if (kind == CACHE_FILL_READAHEAD)
                j->ra_owners++;
        if (ret_job) {
                j->n_ref++;
                *ret_job = j;
        }
finish:
        pthread_mutex_unlock(&f->lock);
        return r;
}

/* A reader lets go of its read-ahead job; cancel: it went elsewhere, so the job is dropped (queued)
 * or stopped (running) unless another reader still wants it or a reader of that file adopted it. */
static void fill_readahead_release(CacheFills *f, FillJob *j, bool cancel) {
        bool drop = false;

        pthread_mutex_lock(&f->lock);
        if (j->ra_owners > 0)
                j->ra_owners--;
        if (cancel && j->ra_owners == 0 && j->kind == CACHE_FILL_READAHEAD) {
                if (j->state == FILL_QUEUED) {
                        log_debug("Read-ahead of %s cancelled before it started", j->spec.path);
                        drop = true;
                } else if (j->state == FILL_RUNNING) {
                        log_debug("Read-ahead of %s cancelled", j->spec.path);
                        atomic_store(&j->cancel, true);
                }
        }
        /* The table's reference (the last one) goes last: the reader's first, while j is held. */
        if (drop) {
                j->n_ref--;
                fills_remove_locked(f, j, FILL_FAILED);
        } else
                fill_job_unref_locked(j);
        pthread_mutex_unlock(&f->lock);
}

static void fill_job_unref(CacheFills *f, FillJob *j) {
        if (!j)
                return;
        pthread_mutex_lock(&f->lock);
        fill_job_unref_locked(j);
        pthread_mutex_unlock(&f->lock);
}

int cache_fill_queue(Cache *c, const CacheFileSpec *spec, CacheFillKind kind) {
        if (!c || !spec || !spec->key)
                return -EINVAL;
        if (!c->fills)
                return -ESHUTDOWN;

        /* A job that is there already wins without a look at the index. */
        pthread_mutex_lock(&c->fills->lock);
        FillJob *j = fills_find_locked(c->fills, spec->key);
        if (j && kind < j->kind)
                j->kind = kind;
        pthread_mutex_unlock(&c->fills->lock);
        if (j)
                return 1;

        int r = cache_version_complete(c, spec->key, NULL);
        if (r > 0)
                return 1;
        if (r < 0)
                log_debug_errno(r, "Cannot tell whether %s is cached, filling it: %m", strna(spec->path));

        return fill_queue_ref(c, spec, kind, NULL);
}

void cache_fills_counts(Cache *c, uint64_t *ret_active, uint64_t *ret_queued) {
        uint64_t active = 0, queued = 0;
        if (c && c->fills) {
                pthread_mutex_lock(&c->fills->lock);
                active = c->fills->n_running;
                queued = c->fills->n_queued;
                pthread_mutex_unlock(&c->fills->lock);
        }
        if (ret_active)
                *ret_active = active;
        if (ret_queued)
                *ret_queued = queued;
}

/* One fill in progress: the chunks cut since the last publication, and the store batch of those
 * among them that were not stored yet. */
typedef struct FillBatch {
        ChunkRef *pending;
        uint64_t *pending_offsets;
        size_t n_pending, n_pending_alloc;
        uint64_t pending_bytes;
        ChunkRef *added;        /* written to the batch: indexed after its commit */
        size_t n_added, n_added_alloc;
        uint64_t added_bytes;
        ChunkBatch *batch;
        ChunkStore *store;      /* loaded once per fill */
        ChunkIndex *index;
} FillBatch;

static void fill_batch_done(FillBatch *b) {
        chunk_batch_abort(b->batch);
        free(b->pending);
        free(b->pending_offsets);
        free(b->added);
        *b = (FillBatch) {};
}

static bool fills_stopping(CacheFills *f) {
        pthread_mutex_lock(&f->lock);
        bool s = f->stopping;
        pthread_mutex_unlock(&f->lock);
        return s;
}

static CacheFillKind fill_job_kind(CacheFills *f, FillJob *j) {
        pthread_mutex_lock(&f->lock);
        CacheFillKind k = j->kind;
        pthread_mutex_unlock(&f->lock);
        return k;
}

/* The budget is checked after each batch (cache_note_stored), so a batch may overshoot it by its own
 * size, and two fill threads by twice that: small budgets get small batches, to stay within 1.05×. */
static uint64_t fill_batch_bytes(Cache *c) {
        uint64_t b = c->opts.budget_bytes / 64, disk = cache_disk_batch_max(c);
        if (c->opts.budget_bytes == 0 || b > FILL_BATCH_BYTES)
                b = FILL_BATCH_BYTES;
        /* A small disk (smaller than the budget, even) gets small batches too. */
        if (disk > 0 && b > disk)
                b = disk;
        return b < FILL_BATCH_MIN_BYTES ? FILL_BATCH_MIN_BYTES : b;
}

/* Before each batch: may this fill write? Read-ahead and pins also stop past the prefetch watermark. */
static bool fill_may_write(CacheFills *f, FillJob *j) {
        Cache *c = f->cache;
        if (!cache_writes_allowed(c))
                return false;
        if (fill_job_kind(f, j) != CACHE_FILL_READER && !cache_prefetch_allowed(c))
                return false;
        return true;
}

static int fill_add_chunk(CacheFills *f, FillJob *j, FillBatch *b, const ChunkId *id, const uint8_t *data, size_t len,
                          uint64_t offset) {
        Cache *c = f->cache;
        int r;

        size_t pa = b->n_pending_alloc;
        r = greedy_realloc((void **) &b->pending, &pa, b->n_pending + 1, sizeof *b->pending);
        if (r < 0)
                return r;
        size_t pa2 = b->n_pending_alloc;
        r = greedy_realloc((void **) &b->pending_offsets, &pa2, b->n_pending + 1, sizeof *b->pending_offsets);
        if (r < 0)
                return r;
        b->n_pending_alloc = min_size(pa, pa2);

        ChunkRef ref = { .id = *id, .size = (uint32_t) len };
        b->pending[b->n_pending] = ref;
        b->pending_offsets[b->n_pending] = offset;
        b->n_pending++;
        b->pending_bytes += len;

        /* Stored already (this file earlier, or another one), or in this batch: nothing to write. */
        ChunkInfo info;
        r = chunk_index_chunk_get(b->index, id, &info);
        if (r >= 0) {
                /* Part of the file being filled: as used as the chunks this fill stores, or an
                 * eviction in the middle of the fill takes it before older ones. */
                cache_note_access(c, id);
                return 0;
        }
        if (r != -ENOENT)
                return disk_error(c, r, "looking up a chunk", j->spec.path);
        for (size_t i = 0; i < b->n_added; i++)
                if (memcmp(&b->added[i].id, id, sizeof *id) == 0)
                        return 0;

        if (!b->batch) {
                cache_make_disk_room(c, fill_batch_bytes(c));
                r = chunk_batch_new(b->store, &b->batch);
                if (r < 0)
                        return disk_error(c, r, "starting a chunk batch", j->spec.path);
        }
        r = chunk_batch_add(b->batch, id, data, len);
        if (r < 0)
                return disk_error(c, r, "writing a chunk", j->spec.path);

        r = GREEDY_REALLOC(b->added, b->n_added_alloc, b->n_added + 1);
        if (r < 0)
                return r;
        b->added[b->n_added++] = ref;
        b->added_bytes += len;
        return 0;
}

/* Commits the batch, indexes what it stored, and publishes the pending chunks as the job's progress,
 * up to end (the file offset after the last of them). */
static int fill_flush(CacheFills *f, FillJob *j, FillBatch *b, uint64_t end) {
        Cache *c = f->cache;
        int r;

        if (b->batch) {
                if (b->n_added > 0) {
                        cache_make_room(c, b->added_bytes);
                        r = chunk_batch_commit(TAKE_PTR(b->batch));
                        if (r < 0) {
                                cache_room_release(c, b->added_bytes);
                                return disk_error(c, r, "committing a chunk batch", j->spec.path);
                        }
                        r = FAILPOINT(CACHE_INDEX);
                        if (r >= 0)
                                r = chunk_index_chunks_add(b->index, b->added, b->n_added, now_usec(CLOCK_REALTIME));
                        if (r < 0) {
                                cache_room_release(c, b->added_bytes);
                                return disk_error(c, r, "indexing stored chunks", j->spec.path);
                        }
                        cache_note_stored(c, b->added_bytes);
                } else
                        chunk_batch_abort(TAKE_PTR(b->batch));
        }

        pthread_mutex_lock(&f->lock);
        size_t a1 = j->n_alloc, a2 = j->n_alloc;
        r = greedy_realloc((void **) &j->chunks, &a1, j->n_chunks + b->n_pending, sizeof *j->chunks);
        if (r >= 0)
                r = greedy_realloc((void **) &j->offsets, &a2, j->n_chunks + b->n_pending, sizeof *j->offsets);
        j->n_alloc = min_size(a1, a2);
        if (r >= 0) {
                if (b->n_pending > 0) {         /* an empty file has none, and no arrays */
                        memcpy(j->chunks + j->n_chunks, b->pending, b->n_pending * sizeof *b->pending);
                        memcpy(j->offsets + j->n_chunks, b->pending_offsets, b->n_pending * sizeof *b->pending_offsets);
                        j->n_chunks += b->n_pending;
                }
                j->covered = end;
        }
        pthread_mutex_unlock(&f->lock);
        if (r < 0)
                return r;

        b->n_pending = 0;
        b->pending_bytes = 0;
        b->n_added = 0;
        b->added_bytes = 0;
        return 0;
}

/* Streams the file from its replicas through the chunker into the store. 0 when the version is
 * recorded; a negative errno when it stopped (the chunks stored so far stay). */
/* A reader fetching what the cache lacks is what somebody waits for; a fill is background work.
 * Both go to the same origin and the same disk, and letting them compete made a cold miss of a local
 * 1 GiB file 25-35 % slower. So before each origin read a fill waits while readers are fetching, and
 * until they have been quiet for FILL_YIELD_QUIET_USEC; a player's reads, spaced by its buffer, hardly
 * ever hold it. It never waits more than FILL_YIELD_MAX_USEC at a time, so a reader that streams
 * misses for minutes still gets its file filled, a read at a time. */
static void fill_yield_to_readers(CacheFills *f, FillJob *j) {
        uint64_t start = now_usec(CLOCK_MONOTONIC);

        pthread_mutex_lock(&f->lock);
        while (!f->stopping && !atomic_load(&j->cancel)) {
                uint64_t now = now_usec(CLOCK_MONOTONIC), quiet_from;
                if (atomic_load(&f->origin_readers) > 0)
                        quiet_from = now;
                else {
                        quiet_from = atomic_load(&f->origin_read_end_usec);
                        if (quiet_from == 0 || now >= quiet_from + FILL_YIELD_QUIET_USEC)
                                break;
                }
                if (now - start >= FILL_YIELD_MAX_USEC)
                        break;
                uint64_t until = quiet_from + FILL_YIELD_QUIET_USEC;
                if (until > start + FILL_YIELD_MAX_USEC)
                        until = start + FILL_YIELD_MAX_USEC;
                struct timespec deadline = {
                        .tv_sec = (time_t) (until / 1000000u),
                        .tv_nsec = (long) (until % 1000000u) * 1000,
                };
                (void) pthread_cond_timedwait(&f->wake, &f->lock, &deadline);
        }
        pthread_mutex_unlock(&f->lock);
}

static int fill_run(CacheFills *f, FillJob *j) {
        Cache *c = f->cache;
        const CacheFileSpec *s = &j->spec;
        _cleanup_(replica_reader_closep) ReplicaReader *rr = NULL;
        _cleanup_(fill_batch_done) FillBatch b = {};
        _cleanup_free_ uint8_t *buf = NULL;
        uint64_t read_pos = 0, pos = 0, batch_bytes = fill_batch_bytes(c);
        size_t start = 0, end = 0;
        int r;

        b.store = read_store(c);
        b.index = read_index(c);
        if (!b.store || !b.index || !fill_may_write(f, j))
                return log_debug_errno(-EROFS, "Fill of %s not started: the cache takes no writes now", s->path);

        r = spec_replica_open(c, s, &rr);
        if (r < 0)
                return log_debug_errno(r, "Fill of %s: no replica opens: %m", s->path);

        buf = malloc(FILL_BUF_SIZE);
        if (!buf)
                return -ENOMEM;

        for (;;) {
                if (atomic_load(&j->cancel) || fills_stopping(f))
                        return log_debug_errno(-ECANCELED, "Fill of %s stopped at %" PRIu64 ": %m", s->path, pos);

                bool eof = read_pos >= s->size;
                if (!eof && end - start < CDC_MAX_SIZE) {
                        memmove(buf, buf + start, end - start);
                        end -= start;
                        start = 0;
                        size_t want = FILL_BUF_SIZE - end;
                        if (want > FILL_READ_SIZE)
                                want = FILL_READ_SIZE;
                        if (want > s->size - read_pos)
                                want = (size_t) (s->size - read_pos);
                        fill_yield_to_readers(f, j);
                        ssize_t n = replica_reader_read(rr, buf + end, want, read_pos);
                        if (n >= 0 && (size_t) n < want)
                                n = -EIO;       /* shorter than the catalog knows: changed since the scan */
                        if (n < 0)
                                return log_debug_errno((int) n, "Fill of %s: reading at %" PRIu64 " failed: %m",
                                                       s->path, read_pos);
                        end += (size_t) n;
                        read_pos += (uint64_t) n;
                        continue;
                }
                if (start == end)
                        break;

                size_t cut = cdc_next_cut(buf + start, end - start, eof);
                if (cut == 0 || cut > end - start)
                        return log_error_errno(-EPROTO, "Fill of %s: the chunker asked for more bytes than it may: %m", s->path);

                /* A batch stays within its size (unless one chunk alone is bigger). */
                if (b.n_pending > 0 && b.pending_bytes + cut > batch_bytes) {
                        r = fill_flush(f, j, &b, pos);
                        if (r < 0)
                                return r;
                }
                if (b.n_pending == 0 && !fill_may_write(f, j))
                        return log_debug_errno(-EROFS, "Fill of %s stopped at %" PRIu64 ": the cache takes no writes now",
                                               s->path, pos);

                ChunkId id;
                chunk_id_compute(buf + start, cut, &id);
                r = fill_add_chunk(f, j, &b, &id, buf + start, cut, pos);
                if (r < 0)
                        return r;
                start += cut;
                pos += cut;
        }

        r = fill_flush(f, j, &b, pos);
        if (r < 0)
                return r;

        /* Only this thread appends to the job's list, so it is read here without the lock. */
        r = chunk_index_version_put(b.index, s->key, s->size, j->chunks, j->n_chunks);
        if (r < 0)
                return disk_error(c, r, "recording the version", s->path);

        if (fill_job_kind(f, j) == CACHE_FILL_PIN)
                cache_pin_progress(c, s->size);
        log_debug("Filled %s into the cache: %zu chunks, %" PRIu64 " bytes", s->path, j->n_chunks, s->size);
        return 0;
}

/* The queued job to run next: readers first, then pins, then read-ahead; FIFO within a kind. */
static FillJob *fills_pick_locked(CacheFills *f) {
        FillJob *best = NULL;
        for (size_t i = 0; i < f->n_jobs; i++) {
                FillJob *j = f->jobs[i];
                if (j->state != FILL_QUEUED)
                        continue;
                if (!best || j->kind < best->kind || (j->kind == best->kind && j->seq < best->seq))
                        best = j;
        }
        return best;
}

/* Fills are background work: a reader waits for its own bytes, never for a fill (D8). On two cores
 * a fill at the readers' priority took half the CPU a cold miss needed to answer its reads (SHA-256
 * and chunk writes against one 128 KiB origin read per request); niced, it uses what the readers
 * leave, which is nearly everything while music plays. The I/O priority is the lowest best-effort
 * one, not idle: an idle-class fill could starve behind a reader that never pauses. */
#define FILL_NICE 10
#define IOPRIO_CLASS_BE 2
#define IOPRIO_CLASS_SHIFT 13
static void fill_thread_lower_priority(void) {
        pid_t tid = (pid_t) syscall(SYS_gettid);
        if (setpriority(PRIO_PROCESS, (id_t) tid, FILL_NICE) < 0)
                log_debug_errno(-errno, "Cannot lower the CPU priority of a fill thread, ignoring: %m");
        if (syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, tid, (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7) < 0)
                log_debug_errno(-errno, "Cannot lower the I/O priority of a fill thread, ignoring: %m");
}

static void *fill_thread(void *userdata) {
        CacheFills *f = userdata;
        thread_set_name("mfs-fill");

        fill_thread_lower_priority();

        pthread_mutex_lock(&f->lock);
        while (!f->stopping) {
                FillJob *j = fills_pick_locked(f);
                if (!j) {
                        pthread_cond_wait(&f->wake, &f->lock);
                        continue;
                }
                j->state = FILL_RUNNING;
                f->n_queued--;
                f->n_running++;
                pthread_mutex_unlock(&f->lock);

                int r = fill_run(f, j);

                pthread_mutex_lock(&f->lock);
                f->n_running--;
                fills_remove_locked(f, j, r >= 0 ? FILL_DONE : FILL_FAILED);
        }
        pthread_mutex_unlock(&f->lock);
        return NULL;
}

int cache_fills_new(Cache *c, unsigned threads, CacheFills **ret) {
        if (!c || !ret)
                return -EINVAL;
        if (threads == 0)
                threads = 2;

        CacheFills *f = calloc(1, sizeof *f);
        if (!f)
                return -ENOMEM;
        f->cache = c;
        struct rlimit nofile;
        if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
                rlim_t quarter = nofile.rlim_cur == RLIM_INFINITY ? 65536u : nofile.rlim_cur / 4u;
                f->prefetch_fds_max = (unsigned) (quarter < 65536u ? quarter : 65536u);
        }
        pthread_mutex_init(&f->lock, NULL);
        /* Monotonic: fill_yield_to_readers() waits with deadlines, and a clock step must not stretch them. */
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&f->wake, &attr);
        pthread_condattr_destroy(&attr);
        f->threads = calloc(threads, sizeof *f->threads);
        if (!f->threads) {
                cache_fills_free(f);
                return -ENOMEM;
        }

        /* Signals belong to the event loop's thread (DESIGN.md, Threading). */
        sigset_t all, old;
        sigfillset_except_crash(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        int e = 0;
        for (unsigned i = 0; i < threads; i++) {
                e = pthread_create(&f->threads[i], NULL, fill_thread, f);
                if (e != 0)
                        break;
                f->n_threads++;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (e != 0) {
                cache_fills_free(f);
                return log_error_errno(-e, "Failed to start the cache fill threads: %m");
        }

        *ret = f;
        return 0;
}

void cache_fills_free(CacheFills *f) {
        if (!f)
                return;

        pthread_mutex_lock(&f->lock);
        f->stopping = true;
        for (size_t i = 0; i < f->n_jobs; i++)
                atomic_store(&f->jobs[i]->cancel, true);
        pthread_cond_broadcast(&f->wake);
        pthread_mutex_unlock(&f->lock);

        for (unsigned i = 0; i < f->n_threads; i++)
                pthread_join(f->threads[i], NULL);

        /* What is left never ran. */
        while (f->n_jobs > 0) {
                FillJob *j = f->jobs[0];
                fills_remove_locked(f, j, FILL_FAILED);
        }
        free(f->jobs);
        free(f->threads);
        pthread_cond_destroy(&f->wake);
        pthread_mutex_destroy(&f->lock);
        free(f);
}

/* ---- readers ---- */

static bool slot_copy(CacheReader *r, const ChunkId *id, size_t from, size_t len, uint8_t *dst) {
        bool found = false;

        pthread_mutex_lock(&r->slot_lock);
        for (size_t i = 0; i < READER_SLOTS; i++) {
                ChunkSlot *s = &r->slots[i];
                if (s->valid && memcmp(&s->id, id, sizeof *id) == 0 && from + len <= s->size) {
                        memcpy(dst, s->data + from, len);
                        s->used = ++r->slot_clock;
                        found = true;
                        break;
                }
        }
        pthread_mutex_unlock(&r->slot_lock);
        return found;
}

/* Keeps a verified chunk for the next read; takes *data and hands back the buffer it replaces. */
static void slot_install(CacheReader *r, const ChunkId *id, uint8_t **data, uint32_t size) {
        pthread_mutex_lock(&r->slot_lock);
        ChunkSlot *victim = NULL;
        for (size_t i = 0; i < READER_SLOTS; i++)
                if (r->slots[i].valid && memcmp(&r->slots[i].id, id, sizeof *id) == 0)
                        goto finish;    /* another thread was quicker */
        for (size_t i = 0; i < READER_SLOTS; i++) {
                ChunkSlot *s = &r->slots[i];
                if (!s->valid) {
                        victim = s;
                        break;
                }
                if (!victim || s->used < victim->used)
                        victim = s;
        }
        uint8_t *old = victim->data;
        victim->data = *data;
        victim->id = *id;
        victim->size = size;
        victim->valid = true;
        victim->used = ++r->slot_clock;
        *data = old;
finish:
        pthread_mutex_unlock(&r->slot_lock);
}

/* Prefetches ids, keeping the open files for the reads when the budget of open files allows. */
static void reader_prefetch(CacheReader *r, ChunkStore *store, const ChunkId *ids, size_t n) {
        CacheFills *f = r->cache->fills;
        int fds[PREFETCH_MAX_CHUNKS];

        if (n > PREFETCH_MAX_CHUNKS)
                n = PREFETCH_MAX_CHUNKS;
        if (!f || atomic_fetch_add(&f->prefetch_fds, (unsigned) n) + n > f->prefetch_fds_max) {
                if (f)
                        atomic_fetch_sub(&f->prefetch_fds, (unsigned) n);
                (void) chunk_store_prefetch(store, ids, n);
                return;
        }

        (void) chunk_store_prefetch_fds(store, ids, n, fds);
        unsigned unused = 0;
        pthread_mutex_lock(&r->slot_lock);
        for (size_t i = 0; i < n; i++) {
                if (fds[i] < 0) {
                        unused++;
                        continue;
                }
                if (r->n_fds == ELEMENTSOF(r->fds)) {
                        /* Full: the oldest was not read (a jump, another thread's request). */
                        safe_close(r->fds[0].fd);
                        unused++;
                        memmove(r->fds, r->fds + 1, (r->n_fds - 1) * sizeof *r->fds);
                        r->n_fds--;
                }
                r->fds[r->n_fds++] = (PrefetchedFd) { .id = ids[i], .fd = fds[i] };
        }
        pthread_mutex_unlock(&r->slot_lock);
        atomic_fetch_sub(&f->prefetch_fds, unused);
}

/* The prefetched open file of id, now the caller's to close (reader_fd_done()); -1 when there is none. */
static int reader_take_fd(CacheReader *r, const ChunkId *id) {
        int fd = -1;

        pthread_mutex_lock(&r->slot_lock);
        for (size_t i = 0; i < r->n_fds; i++)
                if (memcmp(&r->fds[i].id, id, sizeof *id) == 0) {
                        fd = r->fds[i].fd;
                        memmove(r->fds + i, r->fds + i + 1, (r->n_fds - i - 1) * sizeof *r->fds);
                        r->n_fds--;
                        break;
                }
        pthread_mutex_unlock(&r->slot_lock);
        return fd;
}

static void reader_fd_done(CacheReader *r, int fd) {
        safe_close(fd);
        atomic_fetch_sub(&r->cache->fills->prefetch_fds, 1);
}

/* Closes the prefetched files: a jump (they are behind the reader now) or the end. */
static void reader_drop_fds(CacheReader *r) {
        pthread_mutex_lock(&r->slot_lock);
        size_t n = r->n_fds;
        for (size_t i = 0; i < n; i++)
                safe_close(r->fds[i].fd);
        r->n_fds = 0;
        pthread_mutex_unlock(&r->slot_lock);
        if (n > 0)
                atomic_fetch_sub(&r->cache->fills->prefetch_fds, (unsigned) n);
}

static ReplicaReader *reader_replica(CacheReader *r, int *ret_error) {
        ReplicaReader *rr;

        pthread_mutex_lock(&r->lock);
        if (!r->replica) {
                int k = spec_replica_open(r->cache, &r->spec, &r->replica);
                if (k < 0) {
                        log_debug_errno(k, "No replica of %s opens: %m", r->spec.path);
                        *ret_error = k;
                }
        }
        rr = r->replica;
        pthread_mutex_unlock(&r->lock);
        return rr;
}

/* Exactly size bytes at offset (within the file) from the replicas, or a negative errno. */
static int reader_origin_read(CacheReader *r, void *buf, size_t size, uint64_t offset) {
        CacheFills *f = r->cache->fills;
        int error = 0;
        ReplicaReader *rr = reader_replica(r, &error);
        if (!rr) {
                atomic_store(&r->origin_failed, true);
                /* The file is there, its bytes are not: a read answers EIO. */
                return -EIO;
        }

        /* The fills wait while a reader waits for an origin (fill_yield_to_readers). */
        if (f)
                atomic_fetch_add(&f->origin_readers, 1);
        ssize_t n = replica_reader_read(rr, buf, size, offset);
        if (f) {
                atomic_store(&f->origin_read_end_usec, now_usec(CLOCK_MONOTONIC));
                atomic_fetch_sub(&f->origin_readers, 1);
        }
        if (n >= 0 && (size_t) n != size)
                n = -EIO;
        if (n < 0) {
                atomic_store(&r->origin_failed, true);
                return log_debug_errno((int) n, "Reading %s at %" PRIu64 " from the origins failed: %m", r->spec.path,
                                       offset);
        }
        return 0;
}

/* A recorded version whose chunks were evicted or cleared: one fill of the whole file stores the
 * missing ones again in batches (it skips what is stored), rather than one durable write per chunk
 * behind every read. */
static void reader_queue_refill(CacheReader *r) {
        if (atomic_exchange(&r->refill_queued, true) || !cache_writes_allowed(r->cache))
                return;
        int k = cache_fill_queue(r->cache, &r->spec, CACHE_FILL_READER);
        if (k < 0)
                log_debug_errno(k, "Cannot queue the refill of %s: %m", r->spec.path);
}

/* Copies [from, from + len) of one chunk at chunk_offset of the file into dst: from the reader's
 * slots, else from the store (verified), else (a bad chunk, a disk error) fetched again from the
 * origins, checked against its name and stored back (a missing one by a refill of the file).
 * -ENOENT when neither the store nor the index has it (evicted, cleared): the caller reads it with
 * the rest of its request (reader_serve_missing). -ESTALE when the origin's bytes are not that
 * chunk (the file changed under the same size and mtime); the origin's error when neither has it.
 *
 * A chunk wholly inside the request (most of them, with 1 MiB requests) is read and verified in
 * place in dst and not kept in a slot: no other request of this handle covers it, and a 256 KiB
 * buffer per chunk cost a malloc (an mmap at that size), a copy and its page faults. */
static int reader_chunk_copy(CacheReader *r, const ChunkRef *ref, uint64_t chunk_offset, size_t from, size_t len,
                             uint8_t *dst, bool *ret_origin) {
        Cache *c = r->cache;
        char hex[CHUNK_ID_HEX_SIZE];
        int k;

        if (slot_copy(r, &ref->id, from, len, dst))
                return 0;

        bool in_place = from == 0 && len == ref->size;
        _cleanup_free_ uint8_t *data = NULL;
        if (!in_place) {
                data = malloc(CDC_MAX_SIZE);
                if (!data)
                        return -ENOMEM;
        }

        ChunkStore *store = read_store(c);
        ChunkIndex *index = read_index(c);
        uint8_t *into = in_place ? dst : data;
        size_t room = in_place ? ref->size : CDC_MAX_SIZE;
        int fd = store ? reader_take_fd(r, &ref->id) : -1;
        ssize_t n = !store ? -ENOENT
                  : fd >= 0 ? chunk_store_read_fd(store, &ref->id, fd, into, room)
                            : chunk_store_read(store, &ref->id, into, room);
        if (fd >= 0)
                reader_fd_done(r, fd);
        if (n >= 0 && (size_t) n == ref->size) {
                cache_note_access(c, &ref->id);
                if (in_place)
                        return 0;
        } else {
                chunk_id_to_hex(&ref->id, hex);
                if (n >= 0)
                        n = -EBADMSG;   /* hashes to its name but not the size the version knows */
                if (n == -EBADMSG) {
                        atomic_fetch_add(&c->bad_chunks, 1);
                        log_warning("Chunk %s of %s failed verification, dropped; fetching it again", hex, r->spec.path);
                } else if (n == -ENOENT)
                        log_debug("Chunk %s of %s is not in the store, fetching it again", hex, r->spec.path);
                else
                        disk_error(c, (int) n, "reading a chunk", r->spec.path);
                /* Missing: another reader may have stored it again since (it was evicted under our
                 * read); forgetting it then would leave that file an orphan the index does not
                 * count. A bad file the store removed itself. */
                uint64_t size_now;
                bool unindexed = false;
                if (n == -ENOENT && store && chunk_store_stat(store, &ref->id, &size_now) >= 0)
                        log_debug("Chunk %s of %s was stored again meanwhile", hex, r->spec.path);
                else if ((n == -EBADMSG || n == -ENOENT) && index) {
                        k = chunk_index_chunk_remove(index, &ref->id);
                        unindexed = k == -ENOENT;
                        if (k < 0 && k != -ENOENT)
                                disk_error(c, k, "forgetting a chunk", r->spec.path);
                        /* Stored again between the look and the removal: index it again (a store
                         * renames before it indexes, so this look cannot miss one we undid). */
                        if (k >= 0 && store && chunk_store_stat(store, &ref->id, &size_now) >= 0 &&
                            size_now > 0 && size_now <= UINT32_MAX) {
                                ChunkRef again = { .id = ref->id, .size = (uint32_t) size_now };
                                k = chunk_index_chunks_add(index, &again, 1, now_usec(CLOCK_REALTIME));
                                if (k < 0)
                                        disk_error(c, k, "indexing a chunk stored again", r->spec.path);
                        }
                }

                /* Gone from the index too: evicted or cleared, not damaged behind its back. The chunks
                 * after it most likely went with it: the caller reads the rest of its request from the
                 * origins at once. (A damaged store goes chunk by chunk, so that every bad chunk a
                 * read meets is found and dropped.) */
                if (n == -ENOENT && unindexed)
                        return -ENOENT;

                if (!data) {
                        data = malloc(CDC_MAX_SIZE);
                        if (!data)
                                return -ENOMEM;
                }
                k = reader_origin_read(r, data, ref->size, chunk_offset);
                if (k < 0)
                        return k;
                *ret_origin = true;
                if (!chunk_id_matches(&ref->id, data, ref->size)) {
                        /* The bytes are the origin's: serve them, never a chunk of an older file. */
                        memcpy(dst, data + from, len);
                        return -ESTALE;
                }
                if (n == -ENOENT)
                        reader_queue_refill(r);
                else
                        (void) chunk_store_back(c, ref, data, r->spec.path);
        }

        memcpy(dst, data + from, len);
        slot_install(r, &ref->id, &data, ref->size);
        return 0;
}

/* The chunks of range from first on, with one origin read of their whole span (whole chunks, so each
 * is checked against its name before a byte of it is served), and a refill of the file queued. A
 * chunk the store lacks was evicted or cleared, and the ones after it most likely went with it (they
 * were used together): fetching each on its own cost a round trip per chunk, 16 per MiB, where D8
 * allows one per request (0.3 GB/s against 2.2 for a first miss of the same file). */
static int reader_serve_missing(CacheReader *r, const ChunkRange *range, size_t first, uint8_t *buf, size_t size,
                                uint64_t offset, bool *ret_origin) {
        const ChunkRef *last = &range->refs[range->n - 1];
        uint64_t span_start = range->offsets[first], span_end = range->offsets[range->n - 1] + last->size;
        size_t span = (size_t) (span_end - span_start);

        _cleanup_free_ uint8_t *data = malloc(span);
        if (!data)
                return -ENOMEM;
        int k = reader_origin_read(r, data, span, span_start);
        if (k < 0)
                return k;
        *ret_origin = true;

        for (size_t i = first; i < range->n; i++) {
                const ChunkRef *ref = &range->refs[i];
                uint64_t cs = range->offsets[i], ce = cs + ref->size;
                const uint8_t *chunk = data + (cs - span_start);
                /* The origin's file is no longer this version: the caller drops it and reads again. */
                if (!chunk_id_matches(&ref->id, chunk, ref->size))
                        return -ESTALE;
                uint64_t s = cs > offset ? cs : offset, e = ce < offset + size ? ce : offset + size;
                memcpy(buf + (s - offset), chunk + (s - cs), (size_t) (e - s));
        }
        reader_queue_refill(r);

        /* The last chunk reaches past the request: the next sequential one starts inside it. */
        if (span_end > offset + size) {
                uint8_t *keep = malloc(last->size);
                if (keep) {
                        memcpy(keep, data + (span - last->size), last->size);
                        slot_install(r, &last->id, &keep, last->size);
                        free(keep);
                }
        }
        return 0;
}

static bool slot_holds(CacheReader *r, const ChunkId *id) {
        bool found = false;

        pthread_mutex_lock(&r->slot_lock);
        for (size_t i = 0; i < READER_SLOTS && !found; i++)
                found = r->slots[i].valid && memcmp(&r->slots[i].id, id, sizeof *id) == 0;
        pthread_mutex_unlock(&r->slot_lock);
        return found;
}

/* A reader that met evicted chunks (its refill queued) asks the index before the store: a chunk the
 * index does not know is not looked up on the disk at all (a cold directory block per request). */
static bool reader_chunk_known_missing(CacheReader *r, const ChunkId *id) {
        if (!atomic_load(&r->refill_queued) || slot_holds(r, id))
                return false;
        ChunkIndex *index = read_index(r->cache);
        ChunkInfo info;
        return index && chunk_index_chunk_get(index, id, &info) == -ENOENT;
}

static int reader_serve_range(CacheReader *r, const ChunkRange *range, uint8_t *buf, size_t size, uint64_t offset,
                              bool *ret_origin) {
        for (size_t i = 0; i < range->n; i++) {
                uint64_t cs = range->offsets[i], ce = cs + range->refs[i].size;
                uint64_t s = cs > offset ? cs : offset, e = ce < offset + size ? ce : offset + size;
                if (s >= e)
                        continue;
                if (reader_chunk_known_missing(r, &range->refs[i].id))
                        return reader_serve_missing(r, range, i, buf, size, offset, ret_origin);
                int k = reader_chunk_copy(r, &range->refs[i], cs, (size_t) (s - cs), (size_t) (e - s), buf + (s - offset),
                                          ret_origin);
                if (k == -ENOENT)
                        return reader_serve_missing(r, range, i, buf, size, offset, ret_origin);
                if (k < 0)
                        return k;
        }
        return 0;
}

/* Loads the recorded version of the reader's file, under r->lock. */
static void reader_load_version_locked(CacheReader *r) {
        Cache *c = r->cache;
        _cleanup_free_ ChunkRef *chunks = NULL;
        uint64_t size = 0, total = 0;
        size_t n = 0;

        ChunkIndex *index = read_index(c);
        r->version_checked = true;
        int k = index ? chunk_index_version_get(index, r->spec.key, &size, &chunks, &n) : -ENOENT;
        if (k == -ENOENT)
                return;
        if (k < 0) {
                disk_error(c, k, "looking up the version", r->spec.path);
                return;
        }

        uint64_t *offsets = offsets_from_chunks(chunks, n, &total);
        if (!offsets)
                return;
        if (total != r->spec.size || size != r->spec.size) {
                log_warning("Cached version of %s lists %" PRIu64 " bytes of chunks for %" PRIu64 " bytes, dropping it",
                            r->spec.path, total, r->spec.size);
                free(offsets);
                k = chunk_index_version_drop(index, r->spec.key);
                if (k < 0 && k != -ENOENT)
                        disk_error(c, k, "dropping a version", r->spec.path);
                return;
        }

        free(r->chunks);
        free(r->offsets);
        r->chunks = TAKE_PTR(chunks);
        r->offsets = offsets;
        r->n_chunks = n;
        r->gen++;
}

/* The version turned out stale: forget it here and in the index, so the file is filled afresh. */
static void reader_drop_version(CacheReader *r, uint64_t gen) {
        Cache *c = r->cache;
        bool dropped = false;

        pthread_mutex_lock(&r->lock);
        if (r->gen == gen && r->chunks) {
                r->chunks = mfree(r->chunks);
                r->offsets = mfree(r->offsets);
                r->n_chunks = 0;
                r->gen++;
                r->fill_queued = false;
                dropped = true;
        }
        pthread_mutex_unlock(&r->lock);
        if (!dropped)
                return;

        log_warning("%s changed on its origin under the same size and mtime; its cached version is dropped and the origin's bytes served",
                    r->spec.path);
        ChunkIndex *index = read_index(c);
        int k = index ? chunk_index_version_drop(index, r->spec.key) : 0;
        if (k < 0 && k != -ENOENT)
                disk_error(c, k, "dropping a version", r->spec.path);
}

/* The chunks of the recorded version between what was prefetched and the window past the request
 * [offset, end), into ids (PREFETCH_MAX_CHUNKS at most). The window grows as the kernel's own
 * read-ahead does: a reader that starts or jumps gets nothing past its request (a tagger or a file
 * manager reads a few KiB and closes; advising the rest of the file would put reads nobody wants in
 * front of the next file's), then PREFETCH_FIRST, doubling with each sequential request up to
 * PREFETCH_AHEAD. A start or jump whose request spans several chunk files has them opened and
 * advised together, so their reads go to the disk at once rather than one after another; a single
 * one is just read. Under r->lock. */
static size_t reader_prefetch_pick_locked(CacheReader *r, uint64_t offset, uint64_t end, ChunkId *ids, bool *ret_jump) {
        uint64_t from = r->prefetched_end;
        size_t n = 0;

        *ret_jump = false;
        if (r->n_chunks == 0)
                return 0;
        /* The kernel's read-ahead sends a few reads at once and they arrive out of order: a request
         * a little past what was prefetched is still sequential. */
        bool jump = r->n_reads == 0 || from > end + PREFETCH_AHEAD || offset > from + SEQ_WINDOW;
        *ret_jump = jump;
        if (jump) {
                from = offset;
                r->prefetch_window = 0;
        } else {
                if (from < offset)
                        from = offset;
                r->prefetch_window = r->prefetch_window == 0 ? PREFETCH_FIRST : 2 * r->prefetch_window;
                if (r->prefetch_window > PREFETCH_AHEAD)
                        r->prefetch_window = PREFETCH_AHEAD;
        }
        uint64_t window = r->prefetch_window;
        if (from >= end + window / 2)
                return 0;       /* far enough ahead still: advise in strides, not per read */
        size_t i = chunk_find(r->offsets, r->n_chunks, from);
        if (r->offsets[i] + r->chunks[i].size <= from)
                i++;            /* the end of the file: the last chunk is behind from, not at it */
        for (; i < r->n_chunks && n < PREFETCH_MAX_CHUNKS; i++) {
                if (r->offsets[i] >= end + window)
                        break;
                ids[n++] = r->chunks[i].id;
                from = r->offsets[i] + r->chunks[i].size;
        }
        r->prefetched_end = from;
        return jump && n == 1 ? 0 : n;
}

/* Serves the request from the cache when it can: 0 (all of it), -EAGAIN when the cache does not
 * hold the range (the caller reads the origin), -ESTALE when the version was stale and is dropped,
 * another negative errno when a chunk could be neither read nor fetched again. */
static int reader_read_cached(CacheReader *r, uint8_t *buf, size_t size, uint64_t offset, bool *ret_origin) {
        Cache *c = r->cache;
        CacheFills *f = c->fills;
        _cleanup_(chunk_range_done) ChunkRange range = {};
        uint64_t gen = 0;
        bool from_version = false;
        ChunkId prefetch[PREFETCH_MAX_CHUNKS];
        size_t n_prefetch = 0;
        bool jump = false;
        int k = -EAGAIN;

        pthread_mutex_lock(&r->lock);
        /* Asked again before the first miss queues a fill: another reader's may have finished since. */
        if (!r->chunks && (!r->version_checked || (!r->job && !r->fill_queued)))
                reader_load_version_locked(r);
        if (!r->chunks && r->job && f) {
                pthread_mutex_lock(&f->lock);
                FillState st = r->job->state;
                pthread_mutex_unlock(&f->lock);
                if (st == FILL_DONE || st == FILL_FAILED) {
                        fill_job_unref(f, TAKE_PTR(r->job));
                        if (st == FILL_DONE) {
                                r->fill_done = true;
                                reader_load_version_locked(r);
                        }
                }
        }
        if (r->chunks) {
                k = chunk_range_copy(r->chunks, r->offsets, r->n_chunks, offset, size, &range);
                gen = r->gen;
                from_version = true;
                n_prefetch = reader_prefetch_pick_locked(r, offset, offset + size, prefetch, &jump);
        } else if (r->job && f) {
                pthread_mutex_lock(&f->lock);
                if (offset + size <= r->job->covered)
                        k = chunk_range_copy(r->job->chunks, r->job->offsets, r->job->n_chunks, offset, size, &range);
                pthread_mutex_unlock(&f->lock);
        }
        pthread_mutex_unlock(&r->lock);
        if (k < 0)
                return k;

        ChunkStore *store = read_store(c);
        if (jump)
                reader_drop_fds(r);
        if (store && n_prefetch > 0)
                reader_prefetch(r, store, prefetch, n_prefetch);
        k = reader_serve_range(r, &range, buf, size, offset, ret_origin);
        if (k == -ESTALE && from_version)
                reader_drop_version(r, gen);
        return k < 0 ? k : 0;
}

/* A miss: the first one queues the fill of the whole file behind this reader (or adopts one there). */
static void reader_queue_fill(CacheReader *r) {
        Cache *c = r->cache;

        pthread_mutex_lock(&r->lock);
        if (!r->chunks && !r->job && !r->fill_queued && cache_writes_allowed(c)) {
                r->fill_queued = true;
                int k = fill_queue_ref(c, &r->spec, CACHE_FILL_READER, &r->job);
                if (k < 0)
                        log_debug_errno(k, "Cannot queue the fill of %s: %m", r->spec.path);
        }
        pthread_mutex_unlock(&r->lock);
}

/* The next files of the album: the siblings after this file in its directory's sorted listing. */
static void reader_start_readahead_locked(CacheReader *r) {
        Cache *c = r->cache;
        unsigned want = c->opts.readahead_tracks;

        const TreeNode *parent = r->tree ? tree_get(r->tree, r->file->parent) : NULL;
        if (!parent || parent == r->file)
                return;

        size_t i = 0;
        while (i < parent->n_children && parent->children[i] != r->file &&
               parent->children[i]->ino != r->file->ino)
                i++;

        free(r->ra_jobs);
        r->ra_jobs = calloc(want, sizeof *r->ra_jobs);
        r->n_ra = 0;
        if (!r->ra_jobs)
                return;

        for (i++; i < parent->n_children && r->n_ra < want; i++) {
                const TreeNode *next = parent->children[i];
                _cleanup_(cache_file_spec_done) CacheFileSpec s = {};
                FillJob *j = NULL;

                if (next->is_dir)
                        continue;
                if (cache_file_spec_from_node(r->tree, next, &s) < 0)
                        continue;
                if (cache_version_complete(c, s.key, NULL) > 0)
                        continue;
                int k = fill_queue_ref(c, &s, CACHE_FILL_READAHEAD, &j);
                if (k < 0) {
                        log_debug_errno(k, "No read-ahead of %s: %m", s.path);
                        continue;
                }
                log_debug("Read-ahead of %s after %s", s.path, r->spec.path);
                r->ra_jobs[r->n_ra++] = j;
        }
}

static void reader_cancel_readahead_locked(CacheReader *r, bool cancel) {
        for (size_t i = 0; i < r->n_ra; i++)
                fill_readahead_release(r->cache->fills, r->ra_jobs[i], cancel);
        r->ra_jobs = mfree(r->ra_jobs);
        r->n_ra = 0;
}

/* Follows the reading position: album read-ahead starts once this file is read sequentially past its
 * middle (or its fill is done), and is cancelled when the reader jumps elsewhere. */
static void reader_track(CacheReader *r, uint64_t offset, size_t size, bool passthrough) {
        Cache *c = r->cache;
        uint64_t end = offset + size, fsize = r->spec.size;

        pthread_mutex_lock(&r->lock);
        bool seq = r->n_reads == 0 ? offset < SEQ_WINDOW
                                   : offset + SEQ_WINDOW >= r->last_end && offset <= r->last_end + SEQ_WINDOW;
        r->n_reads++;
        if (!seq) {
                if (r->n_ra > 0)
                        log_debug("%s: read at %" PRIu64 " after %" PRIu64 ", cancelling its read-ahead", r->spec.path,
                                  offset, r->last_end);
                reader_cancel_readahead_locked(r, true);
                r->ra_started = false;
                r->last_end = end;
                r->seq_end = 0;
        } else {
                if (end > r->last_end)
                        r->last_end = end;
                if (end > r->seq_end)
                        r->seq_end = end;
        }

        if (seq && !r->ra_started && !passthrough && c->fills && c->opts.readahead_tracks > 0 &&
            (r->seq_end >= fsize / 2 || r->fill_done) && !atomic_load(&r->origin_failed) &&
            cache_prefetch_allowed(c)) {
                r->ra_started = true;
                reader_start_readahead_locked(r);
        }
        pthread_mutex_unlock(&r->lock);
}

int cache_reader_open(Cache *c, const Tree *tree, const TreeNode *file, CacheReader **ret) {
        if (!c || !file || !ret)
                return -EINVAL;
        if (file->is_dir)
                return -EISDIR;

        CacheReader *r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        r->cache = c;
        r->tree = tree;
        r->file = file;
        pthread_mutex_init(&r->lock, NULL);
        pthread_mutex_init(&r->slot_lock, NULL);
        atomic_init(&r->origin_failed, false);

        int k = cache_file_spec_from_node(tree, file, &r->spec);
        if (k < 0) {
                cache_reader_close(r);
                return k;
        }

        /* A recorded version needs no origin to open: the library plays with its origins gone. In
         * passthrough the index is not asked (it may be what failed). */
        if (!cache_passthrough_active(c)) {
                pthread_mutex_lock(&r->lock);
                reader_load_version_locked(r);
                pthread_mutex_unlock(&r->lock);
        }
        if (!r->chunks) {
                k = spec_replica_open(c, &r->spec, &r->replica);
                if (k < 0) {
                        log_debug_errno(k, "No replica of %s opens: %m", r->spec.path);
                        cache_reader_close(r);
                        return k;
                }
        }

        *ret = r;
        return 0;
}

ssize_t cache_reader_read(CacheReader *r, void *buf, size_t size, uint64_t offset) {
        if (!r || (!buf && size > 0))
                return -EINVAL;

        Cache *c = r->cache;
        uint64_t fsize = r->spec.size;
        if (offset >= fsize || size == 0)
                return 0;
        if (size > fsize - offset)
                size = (size_t) (fsize - offset);

        bool passthrough = cache_passthrough_active(c), from_origin = false;
        int k = -EAGAIN;

        if (!passthrough) {
                /* Twice at most: a version found stale is dropped and the read starts again. */
                for (unsigned attempt = 0; attempt < 2; attempt++) {
                        from_origin = false;
                        k = reader_read_cached(r, buf, size, offset, &from_origin);
                        if (k != -ESTALE)
                                break;
                }
        }
        if (k == -EAGAIN || k == -ESTALE) {
                from_origin = true;
                k = reader_origin_read(r, buf, size, offset);
                /* After the answer, so the fill's first read does not compete with it for the link;
                 * and not when the origin just failed: the fill would too. */
                if (k >= 0 && !passthrough)
                        reader_queue_fill(r);
        }

        atomic_fetch_add(from_origin || k < 0 ? &c->misses : &c->hits, 1);
        if (k < 0)
                return k;

        reader_track(r, offset, size, passthrough);
        return (ssize_t) size;
}

void cache_reader_close(CacheReader *r) {
        if (!r)
                return;

        pthread_mutex_lock(&r->lock);
        /* Left before the end of the track: the next one is not coming. */
        bool cancel = r->seq_end < r->spec.size - r->spec.size / 10;
        reader_cancel_readahead_locked(r, cancel);
        if (r->job)
                fill_job_unref(r->cache->fills, TAKE_PTR(r->job));
        pthread_mutex_unlock(&r->lock);

        reader_drop_fds(r);
        replica_reader_close(r->replica);
        free(r->chunks);
        free(r->offsets);
        for (size_t i = 0; i < READER_SLOTS; i++)
                free(r->slots[i].data);
        cache_file_spec_done(&r->spec);
        pthread_mutex_destroy(&r->slot_lock);
        pthread_mutex_destroy(&r->lock);
        free(r);
}
