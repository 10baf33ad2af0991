/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The cache context (D7, D9, D11): opening the store and the index (probe, move aside and rebuild a
 * damaged index, spot check), the maintenance thread (batched access times, the byte budget and LRU
 * eviction, the disk watermarks, the health probe that turns passthrough off again), pins and their
 * progress, stats, clear and verify. The read path (readers, fills, read-ahead) is cache-read.c's.
 *
 * The cache disk may fail at any moment: every error from it or from the index goes through
 * cache_disk_failed(), which turns passthrough on with a reason instead of failing anything; the
 * maintenance thread probes the disk every 5 s while a reason is set and clears it once the disk
 * works again and a spot check passed. c->index may be NULL (an index that cannot even be created):
 * every path here copes, and the health probe opens it when the disk recovers. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache-internal.h"
#include "cdc.h"
#include "crash.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "time-util.h"

#define SPOT_CHECK_CHUNKS 100
#define EVICT_BATCH 256
#define ADOPT_BATCH 1024
#define WATERMARK_HYSTERESIS 5          /* percent below evict_percent that a watermark eviction aims at */
#define FORCED_EVICT_MIN (4u * 1024u * 1024u)   /* at least this much goes after an ENOSPC */
#define HEALTH_INTERVAL_SEC 5           /* while passthrough has a disk reason */
#define CHUNK_FILE_MAX (64u * 1024u * 1024u)    /* larger "chunk" files are bad without reading them */

static const char *const reason_table[_CACHE_PASSTHROUGH_REASON_MAX] = {
        [CACHE_PASSTHROUGH_NONE] = "none",
        [CACHE_PASSTHROUGH_MANUAL] = "manual",
        [CACHE_PASSTHROUGH_READ_ONLY] = "read-only",
        [CACHE_PASSTHROUGH_FULL] = "full",
        [CACHE_PASSTHROUGH_IO_ERROR] = "io-error",
        [CACHE_PASSTHROUGH_PERMISSION] = "permission",
};

const char *cache_passthrough_reason_to_string(CachePassthroughReason r) {
        if (r < 0 || r >= _CACHE_PASSTHROUGH_REASON_MAX)
                return NULL;
        return reason_table[r];
}

/* Other threads may swap c->index (a rebuild after a failed reopen) or set c->store and c->index
 * once the disk recovers; the old index object is retired, never freed, until close. */
static ChunkIndex *cache_index(Cache *c) {
        return __atomic_load_n(&c->index, __ATOMIC_ACQUIRE);
}

static ChunkStore *cache_store(Cache *c) {
        return __atomic_load_n(&c->store, __ATOMIC_ACQUIRE);
}

static CachePassthroughReason reason_from_errno(int error) {
        switch (abs(error)) {
        case EROFS:
                return CACHE_PASSTHROUGH_READ_ONLY;
        case ENOSPC:
        case EDQUOT:
                return CACHE_PASSTHROUGH_FULL;
        case EACCES:
        case EPERM:
                return CACHE_PASSTHROUGH_PERMISSION;
        case EIO:
        case ENXIO:
        case ENODEV:
        case ENOTRECOVERABLE:
        case EUCLEAN:
        case ESTALE:
        case EREMOTEIO:
        case ENOTCONN:
                return CACHE_PASSTHROUGH_IO_ERROR;
        default:
                return CACHE_PASSTHROUGH_NONE;
        }
}

/* The errno a caller of a cache operation that needs the disk sees while the disk is failing. */
static int passthrough_errno(Cache *c) {
        switch (atomic_load(&c->passthrough_reason)) {
        case CACHE_PASSTHROUGH_READ_ONLY:
                return -EROFS;
        case CACHE_PASSTHROUGH_FULL:
                return -ENOSPC;
        case CACHE_PASSTHROUGH_PERMISSION:
                return -EACCES;
        default:
                return -EIO;
        }
}

static void notify_state(Cache *c) {
        if (c->state_fn)
                c->state_fn(c->state_userdata);
}

static void maintenance_wake(Cache *c) {
        pthread_mutex_lock(&c->lock);
        c->maintenance_requested = true;
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->lock);
}

/* Sets the disk reason unless one is set already (the first failure names it). */
static bool passthrough_set_reason(Cache *c, CachePassthroughReason reason, int error, const char *what) {
        int expected = CACHE_PASSTHROUGH_NONE;

        if (reason == CACHE_PASSTHROUGH_NONE)
                return false;
        if (!atomic_compare_exchange_strong(&c->passthrough_reason, &expected, (int) reason))
                return false;

        if (error != 0)
                log_warning_errno(error, "Cache disk failed (%s, %s): passthrough on, reads go to the origins: %m",
                                  cache_passthrough_reason_to_string(reason), what);
        else
                log_warning("Cache disk failed (%s, %s): passthrough on, reads go to the origins",
                            cache_passthrough_reason_to_string(reason), what);
        notify_state(c);
        return true;
}

static void passthrough_clear_reason(Cache *c) {
        int old = atomic_exchange(&c->passthrough_reason, CACHE_PASSTHROUGH_NONE);
        if (old == CACHE_PASSTHROUGH_NONE)
                return;
        log_notice("Cache disk works again (was %s)%s", cache_passthrough_reason_to_string(old),
                   atomic_load(&c->passthrough_manual) ? "; passthrough stays on by hand" : ": caching resumes");
        notify_state(c);
}

bool cache_passthrough_active(Cache *c) {
        return atomic_load(&c->passthrough_manual) ||
               atomic_load(&c->passthrough_reason) != CACHE_PASSTHROUGH_NONE;
}

static bool over_hard_budget(Cache *c) {
        uint64_t budget = c->opts.budget_bytes;
        return budget > 0 && atomic_load(&c->stored_bytes) > budget + budget / 25;     /* 1.04× */
}

bool cache_writes_allowed(Cache *c) {
        return !cache_passthrough_active(c) && cache_store(c) && cache_index(c) &&
               atomic_load(&c->watermark_level) < 3 && !over_hard_budget(c);
}

bool cache_prefetch_allowed(Cache *c) {
        return cache_writes_allowed(c) && atomic_load(&c->watermark_level) < 2;
}

/* ---- access times ---- */

void cache_note_access(Cache *c, const ChunkId *id) {
        bool wake = false;

        pthread_mutex_lock(&c->lock);
        if (c->n_touched >= TOUCH_MAX)
                goto finish;   /* the flush is late; an access time is a hint, not worth unbounded memory */
        if (c->n_touched >= c->n_touched_alloc) {
                size_t n = c->n_touched_alloc ? c->n_touched_alloc * 2 : 256;
                ChunkId *t = reallocarray(c->touched, n, sizeof *t);
                if (!t)
                        goto finish;
                c->touched = t;
                uint64_t *at = reallocarray(c->touched_at, n, sizeof *at);
                if (!at)
                        goto finish;
                c->touched_at = at;
                c->n_touched_alloc = n;
        }
        c->touched[c->n_touched] = *id;
        c->touched_at[c->n_touched++] = now_usec(CLOCK_REALTIME);
        c->touch_last_mono = now_usec(CLOCK_MONOTONIC);
        if (c->n_touched == TOUCH_FLUSH_AT)
                c->touch_due_mono = c->touch_last_mono;
        wake = c->n_touched == TOUCH_FLUSH_AT || c->n_touched == TOUCH_FORCE_AT;
finish:
        pthread_mutex_unlock(&c->lock);
        if (wake)
                maintenance_wake(c);
}

static void flush_touches(Cache *c) {
        _cleanup_free_ uint64_t *times = NULL;
        ChunkId *ids;
        size_t n;

        pthread_mutex_lock(&c->touch_flush_lock);
        pthread_mutex_lock(&c->lock);
        ids = TAKE_PTR(c->touched);
        times = TAKE_PTR(c->touched_at);
        n = c->n_touched;
        c->n_touched = c->n_touched_alloc = 0;
        c->touch_due_mono = 0;
        pthread_mutex_unlock(&c->lock);

        ChunkIndex *x = cache_index(c);
        if (n > 0 && x) {
                int r = FAILPOINT(CACHE_TOUCH);
                if (r >= 0)
                        r = chunk_index_touch(x, ids, times, n);
                if (r < 0) {
                        log_debug_errno(r, "Failed to record %zu access times, dropping them: %m", n);
                        cache_disk_failed(c, r);
                }
        }
        pthread_mutex_unlock(&c->touch_flush_lock);
        free(ids);
}

/* ---- small file helpers ---- */

static int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static void chunk_path(ChunkStore *s, const ChunkId *id, char *buf, size_t size) {
        char hex[CHUNK_ID_HEX_SIZE];
        chunk_id_to_hex(id, hex);
        snprintf(buf, size, "%s/%.2s/%s", chunk_store_dir(s), hex, hex);
}

static uint64_t chunk_mtime_usec(ChunkStore *s, const ChunkId *id) {
        char path[PATH_MAX];
        struct stat st;

        chunk_path(s, id, path, sizeof path);
        if (stat(path, &st) < 0)
                return now_usec(CLOCK_REALTIME);
        return (uint64_t) st.st_mtim.tv_sec * 1000000u + (uint64_t) st.st_mtim.tv_nsec / 1000u;
}

/* Reads a chunk file and checks it against its name without touching it (verify only counts):
 * 1 good, 0 bad, -ENOENT gone, another negative errno from the disk. */
static int chunk_file_check(ChunkStore *s, const ChunkId *id, uint8_t **buf, size_t *bufsize) {
        char path[PATH_MAX];
        struct stat st;

        chunk_path(s, id, path, sizeof path);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (st.st_size <= 0 || (uint64_t) st.st_size > CHUNK_FILE_MAX)
                return 0;
        size_t size = (size_t) st.st_size;
        if (size > *bufsize) {
                uint8_t *b = realloc(*buf, size);
                if (!b)
                        return -ENOMEM;
                *buf = b;
                *bufsize = size;
        }
        size_t done = 0;
        while (done < size) {
                ssize_t k = pread(fd, *buf + done, size - done, (off_t) done);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return 0;      /* shrank under us: not the chunk its name says */
                done += (size_t) k;
        }
        return chunk_id_matches(id, *buf, size) ? 1 : 0;
}

/* The first directory of the store this process may not write to (the top, or one of its xx/
 * subdirectories), newly allocated in *ret_path, with the errno; 0 when every one is writable. The
 * health probe only writes at the top, and a startup warning must name the exact directory. */
static int store_find_unwritable(ChunkStore *s, char **ret_path) {
        const char *top = chunk_store_dir(s);

        for (int i = -1; i < 256; i++) {
                _cleanup_free_ char *p = NULL;
                if ((i < 0 ? asprintf(&p, "%s", top) : asprintf(&p, "%s/%02x", top, (unsigned) i)) < 0)
                        return -ENOMEM;
                if (faccessat(AT_FDCWD, p, W_OK | X_OK, AT_EACCESS) >= 0 || errno == ENOENT)
                        continue;
                int r = -errno;
                *ret_path = TAKE_PTR(p);
                return r;
        }
        return 0;
}

/* 6.7: say which directory, why, and what it would take, not just "the cache". */
static void log_unwritable(const char *path, int error) {
        struct stat st;

        if (stat(path, &st) >= 0)
                log_warning_errno(error, "Cache directory %s is not writable (%m; mode %04o, owner %u:%u; the daemon runs as "
                                  "%u:%u and needs write and search permission there): reads bypass the cache until it is",
                                  path, (unsigned) (st.st_mode & 07777), (unsigned) st.st_uid, (unsigned) st.st_gid,
                                  (unsigned) geteuid(), (unsigned) getegid());
        else
                log_warning_errno(error, "Cache directory %s is not writable (%m): reads bypass the cache until it is", path);
}

static void store_check_writable(Cache *c, int probe_error) {
        _cleanup_free_ char *path = NULL;

        int r = store_find_unwritable(c->store, &path);
        if (r == -ENOMEM)
                return;
        if (r < 0) {
                log_unwritable(path, r);
                passthrough_set_reason(c, reason_from_errno(r) ?: CACHE_PASSTHROUGH_PERMISSION, r, path);
        } else if (probe_error == -EACCES || probe_error == -EPERM)
                log_unwritable(chunk_store_dir(c->store), probe_error);
}

/* ---- index: open, move aside, rebuild ---- */

typedef struct AdoptBatch {
        ChunkStore *store;
        ChunkIndex *index;
        ChunkRef refs[ADOPT_BATCH];
        uint64_t times[ADOPT_BATCH];
        size_t n;
        uint64_t chunks, bytes;
} AdoptBatch;

static int adopt_flush(AdoptBatch *b) {
        if (b->n == 0)
                return 0;
        int r = chunk_index_adopt(b->index, b->refs, b->times, b->n);
        if (r < 0)
                return r;
        b->n = 0;
        return 0;
}

static int adopt_one(const ChunkId *id, uint64_t size, void *userdata) {
        AdoptBatch *b = userdata;

        if (size == 0 || size > UINT32_MAX)
                return 0;      /* not a chunk we could have written; verify reports it */
        b->refs[b->n] = (ChunkRef) { .id = *id, .size = (uint32_t) size };
        b->times[b->n] = chunk_mtime_usec(b->store, id);
        b->n++;
        b->chunks++;
        b->bytes += size;
        if (b->n == ADOPT_BATCH)
                return adopt_flush(b);
        return 0;
}

/* Versions are lost in a rebuild: readers chunk the files again and CDC finds the adopted chunks. */
static int index_rebuild_from_store(ChunkStore *store, ChunkIndex *x) {
        _cleanup_free_ AdoptBatch *b = calloc(1, sizeof *b);
        uint64_t foreign = 0;
        int r;

        if (!b)
                return -ENOMEM;
        b->store = store;
        b->index = x;
        r = chunk_store_walk(store, adopt_one, b, &foreign);
        if (r >= 0)
                r = adopt_flush(b);
        if (r < 0)
                return log_error_errno(r, "Rebuilding the chunk index stopped after %" PRIu64 " chunks: %m", b->chunks);
        log_notice("Chunk index rebuilt from the store: %" PRIu64 " chunks, %" PRIu64 " bytes adopted, %" PRIu64
                   " foreign files skipped", b->chunks, b->bytes, foreign);
        return 0;
}

static int rename_aside(const char *dir, const char *name, time_t t) {
        _cleanup_free_ char *from = NULL, *to = NULL;

        if (asprintf(&from, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        for (unsigned i = 0; i < 100; i++) {
                free(to);
                to = NULL;
                if ((i == 0 ? asprintf(&to, "%s/%s.corrupt-%lld", dir, name, (long long) t)
                            : asprintf(&to, "%s/%s.corrupt-%lld-%u", dir, name, (long long) t, i)) < 0)
                        return -ENOMEM;
                if (access(to, F_OK) < 0 && errno == ENOENT)
                        break;
        }
        if (rename(from, to) < 0) {
                if (errno == ENOENT)
                        return 0;
                return log_error_errno(errno, "Failed to move %s aside: %m", from);
        }
        log_warning("Moved the damaged %s aside as %s", from, to);
        return 0;
}

static bool index_error_is_damage(int r) {
        return r == -EBADMSG || r == -ENOTRECOVERABLE || r == -EINVAL || r == -EPROTO || r == -EUCLEAN;
}

/* Opens dir/index.mdb; probes it first when asked (an unclean stop); a damaged one is moved aside and
 * a fresh one is rebuilt from the chunk files. Errors are the disk's (the caller turns passthrough
 * on). store may be NULL (nothing to rebuild from then). */
static int index_open_recovering(const char *dir, ChunkStore *store, bool probe, bool damaged, ChunkIndex **ret) {
        _cleanup_free_ char *path = NULL;
        ChunkIndex *x = NULL;
        int r;

        if (asprintf(&path, "%s/%s", dir, CHUNK_INDEX_FILE) < 0)
                return -ENOMEM;

        if (!damaged && probe && access(path, F_OK) == 0) {
                r = chunk_index_probe(path);
                if (r == -EBADMSG)
                        damaged = true;
                else if (r < 0)
                        log_warning_errno(r, "Could not probe the chunk index %s, opening it anyway: %m", path);
                else
                        log_debug("Chunk index %s probed: good", path);
        }

        if (!damaged) {
                r = chunk_index_open(path, NULL, &x);
                if (r >= 0) {
                        *ret = x;
                        return 0;
                }
                if (!index_error_is_damage(r))
                        return log_warning_errno(r, "Failed to open the chunk index %s: %m", path);
                log_warning_errno(r, "Chunk index %s cannot be opened: %m", path);
                damaged = true;
        } else
                log_warning("Chunk index %s is damaged", path);

        /* Moved aside, never deleted: it may still help someone find out what happened. */
        time_t t = time(NULL);
        r = rename_aside(dir, CHUNK_INDEX_FILE, t);
        if (r < 0)
                return r;
        r = rename_aside(dir, CHUNK_INDEX_FILE "-lock", t);
        if (r < 0)
                return r;

        r = chunk_index_open(path, NULL, &x);
        if (r < 0)
                return log_error_errno(r, "Failed to create a fresh chunk index %s: %m", path);
        if (store) {
                r = index_rebuild_from_store(store, x);
                if (r < 0) {
                        /* What was adopted stays: verify --repair adopts the rest later. */
                        *ret = x;
                        return r;
                }
        }
        *ret = x;
        return 0;
}

static void index_retire(Cache *c, ChunkIndex *old) {
        if (!old)
                return;
        ChunkIndex **a = reallocarray(c->retired, c->n_retired + 1, sizeof *a);
        if (!a) {
                /* Leaking it is safer than closing it under another thread's feet. */
                log_error("Out of memory retiring the old chunk index, leaking it");
                return;
        }
        c->retired = a;
        c->retired[c->n_retired++] = old;
}

/* ---- spot check ---- */

typedef struct Sample {
        ChunkId ids[SPOT_CHECK_CHUNKS];
        size_t n;
        uint64_t seen;
        uint64_t rng;
} Sample;

static uint64_t sample_rand(Sample *s) {
        /* xorshift64*: only needs to be unpredictable enough to spread the sample. */
        s->rng ^= s->rng >> 12;
        s->rng ^= s->rng << 25;
        s->rng ^= s->rng >> 27;
        return s->rng * 0x2545F4914F6CDD1DULL;
}

static int sample_one(const ChunkId *id, const ChunkInfo *info, void *userdata) {
        Sample *s = userdata;
        (void) info;

        s->seen++;
        if (s->n < SPOT_CHECK_CHUNKS)
                s->ids[s->n++] = *id;
        else {
                uint64_t j = sample_rand(s) % s->seen;
                if (j < SPOT_CHECK_CHUNKS)
                        s->ids[j] = *id;
        }
        return 0;
}

/* Reads and verifies up to 100 random stored chunks; bad and missing ones leave the index (the store
 * removed a bad file already). A disk error stops it and is returned (passthrough is on then). */
static int spot_check(Cache *c) {
        ChunkIndex *x = cache_index(c);
        ChunkStore *s = cache_store(c);
        _cleanup_free_ Sample *sample = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        unsigned bad = 0, missing = 0, good = 0;
        int r;

        if (!x || !s)
                return 0;
        sample = calloc(1, sizeof *sample);
        buf = malloc(CDC_MAX_SIZE);
        if (!sample || !buf)
                return -ENOMEM;
        if (getrandom(&sample->rng, sizeof sample->rng, GRND_NONBLOCK) != sizeof sample->rng)
                sample->rng = now_usec(CLOCK_REALTIME);
        sample->rng |= 1;

        r = chunk_index_chunks_foreach(x, sample_one, sample);
        if (r < 0) {
                cache_disk_failed(c, r);
                return log_warning_errno(r, "Spot check: failed to list the stored chunks: %m");
        }

        for (size_t i = 0; i < sample->n; i++) {
                const ChunkId *id = &sample->ids[i];
                /* No chunk is larger than CDC_MAX_SIZE: a larger file is bad (the store says so). */
                ssize_t k = chunk_store_read(s, id, buf, CDC_MAX_SIZE);
                if (k >= 0) {
                        good++;
                        continue;
                }
                if (k == -EBADMSG || k == -ENOENT) {
                        if (k == -EBADMSG) {
                                bad++;
                                atomic_fetch_add(&c->bad_chunks, 1);
                        } else
                                missing++;
                        r = chunk_index_chunk_remove(x, id);
                        if (r < 0 && r != -ENOENT) {
                                cache_disk_failed(c, r);
                                return log_warning_errno(r, "Spot check: failed to drop a chunk from the index: %m");
                        }
                        continue;
                }
                cache_disk_failed(c, (int) k);
                return log_warning_errno((int) k, "Spot check stopped by a disk error: %m");
        }

        if (bad > 0 || missing > 0)
                log_warning("Spot check of %zu of %" PRIu64 " chunks: %u good, %u bad, %u missing (dropped; fetched again when read)",
                            sample->n, sample->seen, good, bad, missing);
        else
                log_info("Spot check of %zu of %" PRIu64 " chunks: all good", sample->n, sample->seen);
        return 0;
}

/* ---- disk failures ---- */

static uint64_t watermark_evict_locked(Cache *c, uint64_t extra, bool force);

void cache_disk_failed(Cache *c, int error) {
        if (!c || error == 0)
                return;
        error = -abs(error);

        if (error == -ENOTRECOVERABLE || error == -EBADMSG) {
                ChunkIndex *x = cache_index(c);
                if (!x || atomic_load(&c->index_rebuild))
                        return;        /* a rebuild is pending: every call fails until it ran */
                /* MDB_PANIC: a reopen is all it takes, at once, and the maintenance thread probes
                 * the file (in a child) meanwhile. But MDB_CORRUPTED reopens "successfully" and
                 * fails again at the next lookup: a second error before that check, or a record
                 * that does not decode (EBADMSG), takes the path below. */
                if (error == -ENOTRECOVERABLE && !atomic_exchange(&c->index_check, true)) {
                        if (pthread_mutex_trylock(&c->index_lock) != 0)
                                return;        /* someone else is reopening or rebuilding already */
                        int r = chunk_index_reopen(x);
                        pthread_mutex_unlock(&c->index_lock);
                        if (r >= 0) {
                                log_warning("Chunk index reopened after an unrecoverable error; checking it");
                                maintenance_wake(c);
                                return;
                        }
                        log_error_errno(r, "Failed to reopen the chunk index: %m");
                }
                /* The maintenance thread probes the file and reopens it when good, or moves it aside
                 * and rebuilds it from the chunk files; reads bypass the cache until then. */
                if (atomic_exchange(&c->index_rebuild, true))
                        return;
                log_error_errno(error, "Chunk index failed (%m): checking it, and rebuilding it from the chunk files if it is damaged");
                passthrough_set_reason(c, CACHE_PASSTHROUGH_IO_ERROR, error, "chunk index");
                maintenance_wake(c);
                return;
        }

        CachePassthroughReason reason = reason_from_errno(error);
        if (reason == CACHE_PASSTHROUGH_NONE)
                return;
        /* A full disk: make room, and only when nothing can go is it passthrough. The lock is tried,
         * never waited for: an eviction's own failure comes here with it held. */
        if (reason == CACHE_PASSTHROUGH_FULL && cache_store(c) && cache_index(c) &&
            pthread_mutex_trylock(&c->evict_lock) == 0) {
                uint64_t evicted = watermark_evict_locked(c, 0, true);
                pthread_mutex_unlock(&c->evict_lock);
                if (evicted > 0) {
                        log_debug_errno(error, "Cache write failed (%m), room made: no passthrough");
                        return;
                }
        }
        if (passthrough_set_reason(c, reason, error, "cache disk"))
                maintenance_wake(c);
}

/* ---- eviction ---- */

static void stored_bytes_refresh(Cache *c) {
        ChunkIndex *x = cache_index(c);
        ChunkIndexTotals t;

        if (!x)
                return;
        int r = chunk_index_totals(x, &t);
        if (r < 0) {
                cache_disk_failed(c, r);
                return;
        }
        atomic_store(&c->stored_bytes, t.bytes);
}

/* Evicts least recently used unpinned chunks until the stored bytes are at or below target. The
 * caller holds evict_lock; the bytes evicted go to *ret_evicted (may be NULL). */
static int evict_locked(Cache *c, uint64_t target, uint64_t *ret_evicted) {
        ChunkRef refs[EVICT_BATCH];
        ChunkIndexTotals t;
        uint64_t n_evicted = 0, bytes_evicted = 0;
        int r = 0;

        /* Recent reads must count before the order is read. */
        flush_touches(c);

        ChunkIndex *x = cache_index(c);
        ChunkStore *s = cache_store(c);
        if (!x || !s)
                goto finish;

        r = chunk_index_totals(x, &t);
        if (r < 0) {
                cache_disk_failed(c, r);
                goto finish;
        }
        uint64_t bytes = t.bytes;

        while (bytes > target) {
                size_t n = 0;
                r = chunk_index_oldest_unpinned(x, refs, EVICT_BATCH, &n);
                if (r < 0) {
                        cache_disk_failed(c, r);
                        log_warning_errno(r, "Eviction: failed to read the LRU order: %m");
                        goto finish;
                }
                if (n == 0) {
                        log_warning("Eviction: %" PRIu64 " bytes stored, target %" PRIu64 ", and nothing left that is not pinned",
                                    bytes, target);
                        break;
                }
                for (size_t i = 0; i < n && bytes > target; i++) {
                        r = FAILPOINT(CACHE_EVICT);
                        if (r < 0) {
                                log_warning_errno(r, "Eviction stopped (failpoint cache-evict): %m");
                                goto finish;
                        }
                        /* Index first: a crash in between leaves an orphan file, which verify adopts;
                         * the other order would leave the index naming a chunk that is gone. */
                        r = chunk_index_chunk_remove(x, &refs[i].id);
                        if (r == -ENOENT)
                                continue;      /* removed meanwhile (a bad chunk, clear) */
                        if (r < 0) {
                                cache_disk_failed(c, r);
                                log_warning_errno(r, "Eviction: failed to drop a chunk from the index: %m");
                                goto finish;
                        }
                        r = chunk_store_remove(s, &refs[i].id);
                        if (r < 0 && r != -ENOENT) {
                                cache_disk_failed(c, r);
                                log_warning_errno(r, "Eviction: failed to remove a chunk file (left as an orphan): %m");
                        }
                        bytes -= bytes < refs[i].size ? bytes : refs[i].size;
                        n_evicted++;
                        bytes_evicted += refs[i].size;
                }
        }
        r = 0;
finish:
        if (n_evicted > 0) {
                atomic_fetch_add(&c->evictions, n_evicted);
                atomic_fetch_add(&c->evicted_bytes, bytes_evicted);
                log_debug("Evicted %" PRIu64 " chunks, %" PRIu64 " bytes (target %" PRIu64 ")", n_evicted, bytes_evicted, target);
        }
        stored_bytes_refresh(c);
        if (ret_evicted)
                *ret_evicted = bytes_evicted;
        return r;
}

static int evict_to(Cache *c, uint64_t target) {
        pthread_mutex_lock(&c->evict_lock);
        int r = evict_locked(c, target, NULL);
        pthread_mutex_unlock(&c->evict_lock);
        return r;
}

/* Bytes the cache disk must lose to be at most percent full once extra more bytes are written;
 * 0 when it is there already. */
static int disk_excess(Cache *c, unsigned percent, uint64_t extra, uint64_t *ret) {
        ChunkStore *s = cache_store(c);
        uint64_t used, total;

        if (!s)
                return -ENODEV;
        int r = chunk_store_disk_space(s, &used, &total);
        if (r < 0)
                return r;
        uint64_t limit = total / 100 * percent + total % 100 * percent / 100;
        *ret = used + extra > limit ? used + extra - limit : 0;
        return 0;
}

/* D9: past the evict watermark (or when a write met ENOSPC: force), least recently used unpinned
 * chunks go until the disk is back a few percent below it, whatever the budget: a budget larger
 * than its disk would otherwise never make room, and every new file would fail to fill. The caller
 * holds evict_lock. Returns the bytes evicted. */
static uint64_t watermark_evict_locked(Cache *c, uint64_t extra, bool force) {
        unsigned evict = c->opts.evict_percent;
        unsigned low = evict > 10 ? evict - WATERMARK_HYSTERESIS : evict / 2;
        uint64_t excess = 0, evicted = 0;

        if (disk_excess(c, evict, extra, &excess) < 0 || (excess == 0 && !force))
                return 0;
        if (disk_excess(c, low, extra, &excess) < 0)
                return 0;
        stored_bytes_refresh(c);
        uint64_t stored = atomic_load(&c->stored_bytes);
        if (force) {
                /* ENOSPC below the watermark (a quota, another writer): make some room anyway. */
                uint64_t least = stored / 10 > FORCED_EVICT_MIN ? stored / 10 : FORCED_EVICT_MIN;
                if (excess < least)
                        excess = least;
        }
        if (stored == 0)
                return 0;
        (void) evict_locked(c, stored > excess ? stored - excess : 0, &evicted);
        if (evicted > 0)
                log_info("Cache disk %s: evicted %" PRIu64 " bytes (least recently used) to bring it below %u%%",
                         force ? "full" : "past its evict watermark", evicted, low);
        return evicted;
}

static void watermark_evict(Cache *c, uint64_t extra) {
        pthread_mutex_lock(&c->evict_lock);
        (void) watermark_evict_locked(c, extra, false);
        pthread_mutex_unlock(&c->evict_lock);
}

static uint64_t budget_part(uint64_t budget, unsigned percent) {
        return budget / 100 * percent + budget % 100 * percent / 100;
}

void cache_room_release(Cache *c, uint64_t bytes) {
        uint_fast64_t old = atomic_load(&c->reserved_bytes);
        while (!atomic_compare_exchange_weak(&c->reserved_bytes, &old, old > bytes ? old - bytes : 0))
                ;
}

void cache_note_stored(Cache *c, uint64_t bytes) {
        uint64_t budget = c->opts.budget_bytes;

        /* The index's total is the truth (a batch may have been all dedup hits); it is read before
         * the reservation goes, so the bytes are never counted nowhere. */
        stored_bytes_refresh(c);
        cache_room_release(c, bytes);
        if (budget == 0)
                return;
        uint64_t stored = atomic_load(&c->stored_bytes);
        /* D9 says never above 1.05×: past 1.02× the writer evicts itself rather than trust that the
         * maintenance thread keeps up with two fill threads; past the budget it only wakes the thread. */
        if (stored > budget_part(budget, 102))
                (void) evict_to(c, budget_part(budget, 95));
        else if (stored > budget)
                maintenance_wake(c);
}

void cache_make_disk_room(Cache *c, uint64_t bytes) {
        uint64_t excess = 0;

        /* A batch that would take the disk past the evict watermark makes room itself, rather than
         * fail with ENOSPC before the maintenance thread's next look. */
        if (disk_excess(c, c->opts.evict_percent, bytes, &excess) >= 0 && excess > 0)
                watermark_evict(c, bytes);
}

uint64_t cache_disk_batch_max(Cache *c) {
        ChunkStore *s = cache_store(c);
        uint64_t used, total;

        if (!s || chunk_store_disk_space(s, &used, &total) < 0 || c->opts.evict_percent >= 100)
                return 0;
        return total / 100 * (100 - c->opts.evict_percent) / 4;
}

void cache_make_room(Cache *c, uint64_t bytes) {
        uint64_t budget = c->opts.budget_bytes;

        cache_make_disk_room(c, bytes);
        uint64_t reserved = atomic_fetch_add(&c->reserved_bytes, bytes) + bytes;
        if (budget == 0)
                return;
        if (atomic_load(&c->stored_bytes) + reserved <= budget)
                return;
        /* Down to 95 % with every announced batch counted (readers storing chunks again and both
         * fill threads), so that what they commit meanwhile still leaves the total under 1.05x. */
        uint64_t target = budget_part(budget, 95);
        (void) evict_to(c, target > reserved ? target - reserved : 0);
}

/* ---- the maintenance thread ---- */

static void disk_check(Cache *c) {
        ChunkStore *s = cache_store(c);
        double pct;

        if (!s)
                return;
        int r = chunk_store_disk_usage(s, &pct);
        if (r < 0) {
                cache_disk_failed(c, r);
                return;
        }
        int level = pct >= c->opts.stop_percent ? 3 : pct >= c->opts.prefetch_percent ? 2 : pct >= c->opts.evict_percent ? 1 : 0;
        int old = atomic_exchange(&c->watermark_level, level);
        if (old != level)
                log_info("Cache disk %.1f%% full: watermark level %d -> %d%s", pct, old, level,
                         level >= 3 ? " (no writes)" : level == 2 ? " (no prefetch)" : level == 1 ? " (evicting harder)" : "");
        if (level >= 3)
                passthrough_set_reason(c, CACHE_PASSTHROUGH_FULL, 0, "past the last watermark");
}

static void budget_check(Cache *c) {
        uint64_t budget = c->opts.budget_bytes;

        stored_bytes_refresh(c);
        if (budget == 0)
                return;
        uint64_t stored = atomic_load(&c->stored_bytes);
        if (stored > budget)
                (void) evict_to(c, budget_part(budget, 95));
}

/* Past the evict watermark: back below it, then the level is measured again (so that passthrough
 * for a full disk ends at the next probe, not a pass later). */
static void watermark_check(Cache *c) {
        if (atomic_load(&c->watermark_level) < 1)
                return;
        watermark_evict(c, 0);
        disk_check(c);
}

/* Timed passes only. While a disk reason is set: brings store and index back when missing or
 * broken, probes the disk, spot-checks the chunks and clears the reason. Otherwise the probe of D11
 * that notices a disk that failed while nothing was written. */
static void health_check(Cache *c, bool timed) {
        int r;

        if (!timed)
                return;
        if (atomic_load(&c->passthrough_reason) == CACHE_PASSTHROUGH_NONE) {
                ChunkStore *s = cache_store(c);
                if (s) {
                        r = chunk_store_probe(s);
                        if (r < 0)
                                cache_disk_failed(c, r);
                }
                return;
        }

        if (!cache_store(c)) {
                _cleanup_free_ char *path = NULL;
                ChunkStore *s;
                if (asprintf(&path, "%s/chunks", c->dir) < 0)
                        return;
                r = mkdir_p(c->dir, 0755);
                if (r < 0)
                        return (void) log_debug_errno(r, "Health probe: %s still cannot be created: %m", c->dir);
                r = chunk_store_open(path, &s, NULL);
                if (r < 0)
                        return (void) log_debug_errno(r, "Health probe: the chunk store still cannot be opened: %m");
                __atomic_store_n(&c->store, s, __ATOMIC_RELEASE);
        }

        r = chunk_store_probe(cache_store(c));
        if (r < 0)
                return (void) log_debug_errno(r, "Health probe: cache disk still failing: %m");
        if (atomic_load(&c->watermark_level) >= 3)
                return (void) log_debug("Health probe: the disk works but is still past the last watermark");

        pthread_mutex_lock(&c->index_lock);
        if (!cache_index(c)) {
                ChunkIndex *x = NULL;
                r = index_open_recovering(c->dir, cache_store(c), true, false, &x);
                if (x)
                        __atomic_store_n(&c->index, x, __ATOMIC_RELEASE);
                if (r < 0) {
                        pthread_mutex_unlock(&c->index_lock);
                        return (void) log_debug_errno(r, "Health probe: the chunk index still cannot be opened: %m");
                }
        } else if (atomic_load(&c->index_rebuild)) {
                ChunkIndex *old = cache_index(c);
                _cleanup_free_ char *path = NULL;
                if (asprintf(&path, "%s/%s", c->dir, CHUNK_INDEX_FILE) < 0) {
                        pthread_mutex_unlock(&c->index_lock);
                        return;
                }
                /* The index said it is damaged: check the file first (in a child: LMDB trusts its
                 * pages), since a reopen of a damaged file "succeeds" and fails again on the next
                 * lookup. Damaged or gone: rebuild; good: reopen; anything else (EIO): retry. */
                int p = chunk_index_probe(path);
                if (p >= 0 || (p != -EBADMSG && p != -ENOENT)) {
                        if (p < 0)
                                log_warning_errno(p, "Could not check the chunk index %s, reopening it anyway: %m", path);
                        r = chunk_index_reopen(old);
                        if (r < 0) {
                                pthread_mutex_unlock(&c->index_lock);
                                return (void) log_debug_errno(r, "Health probe: the chunk index cannot be reopened yet: %m");
                        }
                        log_notice("Chunk index %s reopened after an error%s", path, p >= 0 ? " (checked: good)" : "");
                } else {
                        ChunkIndex *x = NULL;
                        r = index_open_recovering(c->dir, cache_store(c), false, true, &x);
                        if (!x) {
                                pthread_mutex_unlock(&c->index_lock);
                                return (void) log_warning_errno(r, "Failed to rebuild the chunk index: %m");
                        }
                        /* The old object stays allocated: another thread may still hold it. */
                        __atomic_store_n(&c->index, x, __ATOMIC_RELEASE);
                        index_retire(c, old);
                        if (r < 0) {
                                pthread_mutex_unlock(&c->index_lock);
                                return;
                        }
                }
                atomic_store(&c->index_check, false);
                atomic_store(&c->index_rebuild, false);
        }
        pthread_mutex_unlock(&c->index_lock);

        /* Recovery means the disk may have lost or garbled chunks while it was away. */
        if (spot_check(c) < 0)
                return;
        passthrough_clear_reason(c);
        stored_bytes_refresh(c);
}

/* After a reopen for an error: the file is probed in a child (LMDB trusts its pages); a damaged one
 * goes to the rebuild of the health check. */
static void index_check(Cache *c) {
        _cleanup_free_ char *path = NULL;

        if (!atomic_load(&c->index_check) || atomic_load(&c->index_rebuild))
                return;
        if (asprintf(&path, "%s/%s", c->dir, CHUNK_INDEX_FILE) < 0)
                return;
        int r = chunk_index_probe(path);
        atomic_store(&c->index_check, false);
        if (r == -EBADMSG)
                cache_disk_failed(c, r);
        else if (r < 0)
                log_debug_errno(r, "Could not check the reopened chunk index %s: %m", path);
        else
                log_info("Chunk index %s checked after its reopen: good", path);
}

/* When the buffered touches are to be flushed: never while none is due; else at the first pause in
 * reads, or at once past TOUCH_FORCE_AT, or TOUCH_QUIET_MAX_USEC after it fell due. Under c->lock. */
static uint64_t touch_flush_time_locked(Cache *c) {
        if (c->touch_due_mono == 0)
                return UINT64_MAX;
        if (c->n_touched >= TOUCH_FORCE_AT)
                return 0;
        uint64_t quiet = c->touch_last_mono + TOUCH_QUIET_USEC, latest = c->touch_due_mono + TOUCH_QUIET_MAX_USEC;
        return quiet < latest ? quiet : latest;
}

static void maintenance_pass(Cache *c, bool timed, bool flush) {
        index_check(c);
        if (flush)
                flush_touches(c);
        disk_check(c);
        budget_check(c);
        watermark_check(c);
        health_check(c, timed);
}

/* Timed passes come every interval (every 5 s while a disk reason is set) whatever the wakes in
 * between: writers wake the thread often, and must not postpone the health probe forever. A woken
 * pass flushes, checks the disk and the budget, but leaves recovery to the timed ones, so one stray
 * error keeps passthrough on for a few seconds rather than flapping. */
static void *maintenance_thread(void *userdata) {
        Cache *c = userdata;
        uint64_t next = now_usec(CLOCK_MONOTONIC) + (uint64_t) c->opts.maintenance_interval_sec * 1000000u;
        thread_set_name("mfs-cache");

        pthread_mutex_lock(&c->lock);
        while (!c->stopping) {
                uint64_t now = now_usec(CLOCK_MONOTONIC);
                if (atomic_load(&c->passthrough_reason) != CACHE_PASSTHROUGH_NONE &&
                    next > now + HEALTH_INTERVAL_SEC * 1000000ull)
                        next = now + HEALTH_INTERVAL_SEC * 1000000ull;

                uint64_t until = touch_flush_time_locked(c);
                if (until > next)
                        until = next;
                struct timespec deadline = {
                        .tv_sec = (time_t) (until / 1000000u),
                        .tv_nsec = (long) (until % 1000000u) * 1000,
                };
                while (!c->stopping && !c->maintenance_requested)
                        if (pthread_cond_timedwait(&c->wake, &c->lock, &deadline) == ETIMEDOUT)
                                break;
                if (c->stopping)
                        break;
                bool requested = c->maintenance_requested;
                c->maintenance_requested = false;
                now = now_usec(CLOCK_MONOTONIC);
                bool timed = now >= next;
                if (timed)
                        next = now + (uint64_t) c->opts.maintenance_interval_sec * 1000000u;
                bool flush = timed || now >= touch_flush_time_locked(c);
                if (!requested && !timed && !flush)
                        continue;       /* a due flush still waiting for reads to pause */
                pthread_mutex_unlock(&c->lock);
                maintenance_pass(c, timed, flush);
                pthread_mutex_lock(&c->lock);
        }
        pthread_mutex_unlock(&c->lock);
        return NULL;
}

/* ---- open and close ---- */

static void cache_free(Cache *c) {
        if (!c)
                return;
        chunk_index_close(c->index);
        for (size_t i = 0; i < c->n_retired; i++)
                chunk_index_close(c->retired[i]);
        free(c->retired);
        chunk_store_free(c->store);
        free(c->touched);
        free(c->touched_at);
        for (size_t i = 0; i < c->n_pins_missing; i++)
                free(c->pins_missing[i]);
        free(c->pins_missing);
        pthread_cond_destroy(&c->wake);
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->evict_lock);
        pthread_mutex_destroy(&c->touch_flush_lock);
        pthread_mutex_destroy(&c->index_lock);
        free(c->dir);
        free(c);
}

void cache_close(Cache *c) {
        if (!c)
                return;
        cache_fills_free(c->fills);
        c->fills = NULL;
        if (c->maintenance_started) {
                pthread_mutex_lock(&c->lock);
                c->stopping = true;
                pthread_cond_signal(&c->wake);
                pthread_mutex_unlock(&c->lock);
                pthread_join(c->maintenance, NULL);
                c->maintenance_started = false;
        }
        flush_touches(c);
        cache_free(c);
}

int cache_open(const CacheOptions *opts, OriginSet *origins, cache_state_fn state_fn, void *userdata, Cache **ret) {
        pthread_condattr_t attr;
        Cache *c;
        int r;

        if (!opts || !opts->dir || !ret)
                return -EINVAL;

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->opts = *opts;
        c->dir = strdup(opts->dir);
        if (!c->dir) {
                free(c);
                return -ENOMEM;
        }
        c->opts.dir = c->dir;
        if (c->opts.evict_percent == 0)
                c->opts.evict_percent = 90;
        if (c->opts.prefetch_percent == 0)
                c->opts.prefetch_percent = 95;
        if (c->opts.stop_percent == 0)
                c->opts.stop_percent = 99;
        if (c->opts.maintenance_interval_sec == 0)
                c->opts.maintenance_interval_sec = 60;
        c->origins = origins;
        atomic_init(&c->passthrough_reason, CACHE_PASSTHROUGH_NONE);
        atomic_init(&c->passthrough_manual, opts->passthrough);
        pthread_mutex_init(&c->lock, NULL);
        pthread_mutex_init(&c->evict_lock, NULL);
        pthread_mutex_init(&c->touch_flush_lock, NULL);
        pthread_mutex_init(&c->index_lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->wake, &attr);
        pthread_condattr_destroy(&attr);

        /* From here on nothing about the disk fails the open: passthrough carries the reason. */
        r = mkdir_p(c->dir, 0755);
        if (r < 0)
                passthrough_set_reason(c, reason_from_errno(r) ?: CACHE_PASSTHROUGH_IO_ERROR, r, "creating the cache directory");
        else {
                _cleanup_free_ char *chunks = NULL;
                unsigned removed = 0;
                if (asprintf(&chunks, "%s/chunks", c->dir) < 0) {
                        cache_free(c);
                        return -ENOMEM;
                }
                r = chunk_store_open(chunks, &c->store, &removed);
                if (r < 0)
                        passthrough_set_reason(c, reason_from_errno(r) ?: CACHE_PASSTHROUGH_IO_ERROR, r, "opening the chunk store");
                else {
                        r = chunk_store_probe(c->store);
                        if (r == -EACCES || r == -EPERM || r >= 0)
                                store_check_writable(c, r);
                        if (r < 0)
                                passthrough_set_reason(c, reason_from_errno(r) ?: CACHE_PASSTHROUGH_IO_ERROR, r, "probing the cache disk");
                }

                ChunkIndex *x = NULL;
                r = index_open_recovering(c->dir, c->store, opts->unclean_start, false, &x);
                c->index = x;
                if (r < 0)
                        passthrough_set_reason(c, reason_from_errno(r) ?: CACHE_PASSTHROUGH_IO_ERROR, r, "opening the chunk index");
        }
        if (!c->index && atomic_load(&c->passthrough_reason) == CACHE_PASSTHROUGH_NONE)
                passthrough_set_reason(c, CACHE_PASSTHROUGH_IO_ERROR, -EIO, "no chunk index");

        if (c->index && c->store && atomic_load(&c->passthrough_reason) == CACHE_PASSTHROUGH_NONE)
                (void) spot_check(c);
        stored_bytes_refresh(c);
        disk_check(c);

        /* Only now: the caller does not have the Cache yet, so no callback during the open. */
        c->state_fn = state_fn;
        c->state_userdata = userdata;

        r = cache_fills_new(c, 2, &c->fills);
        if (r < 0) {
                log_error_errno(r, "Failed to start the cache fill threads: %m");
                cache_free(c);
                return r;
        }
        r = -pthread_create(&c->maintenance, NULL, maintenance_thread, c);
        if (r < 0) {
                log_error_errno(r, "Failed to start the cache maintenance thread: %m");
                cache_close(c);
                return r;
        }
        c->maintenance_started = true;

        {
                CachePassthroughReason reason = atomic_load(&c->passthrough_reason);
                log_info("Cache %s opened: budget %" PRIu64 " bytes, %" PRIu64 " stored%s%s%s", c->dir,
                         c->opts.budget_bytes, (uint64_t) atomic_load(&c->stored_bytes),
                         reason != CACHE_PASSTHROUGH_NONE ? ", passthrough (" : "",
                         reason != CACHE_PASSTHROUGH_NONE ? cache_passthrough_reason_to_string(reason) : "",
                         reason != CACHE_PASSTHROUGH_NONE ? ")" : "");
        }
        *ret = c;
        return 0;
}

/* ---- the clean-stop marker ---- */

int cache_clean_marker_write(const char *dir, const char *marker) {
        _cleanup_free_ char *index = NULL;
        struct stat st;

        if (!dir || !marker)
                return -EINVAL;
        if (asprintf(&index, "%s/%s", dir, CHUNK_INDEX_FILE) < 0)
                return -ENOMEM;
        if (stat(index, &st) < 0)
                return log_debug_errno(errno, "No clean-stop marker: cannot stat %s: %m", index);
        _cleanup_close_ int fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return log_debug_errno(errno, "Failed to write %s: %m", marker);
        if (dprintf(fd, "%llu %llu %lld %lld %ld\n", (unsigned long long) st.st_dev, (unsigned long long) st.st_ino,
                    (long long) st.st_size, (long long) st.st_mtim.tv_sec, st.st_mtim.tv_nsec) < 0 ||
            fsync(fd) < 0) {
                int r = -errno;
                (void) unlink(marker);
                return log_debug_errno(r, "Failed to write %s: %m", marker);
        }
        return 0;
}

bool cache_clean_marker_consume(const char *dir, const char *marker) {
        _cleanup_free_ char *index = NULL;
        unsigned long long dev, ino;
        long long size, sec;
        long nsec;
        struct stat st;
        bool clean = false;

        if (!dir || !marker)
                return false;
        FILE *f = fopen(marker, "re");
        if (!f)
                return false;
        clean = fscanf(f, "%llu %llu %lld %lld %ld", &dev, &ino, &size, &sec, &nsec) == 5 &&
                asprintf(&index, "%s/%s", dir, CHUNK_INDEX_FILE) >= 0 && stat(index, &st) == 0 &&
                st.st_dev == dev && st.st_ino == ino && st.st_size == size &&
                st.st_mtim.tv_sec == sec && st.st_mtim.tv_nsec == nsec;
        fclose(f);
        if (unlink(marker) < 0 && errno != ENOENT) {
                log_debug_errno(errno, "Failed to remove %s: %m", marker);
                clean = false;  /* it would vouch for the file again next time */
        }
        if (!clean && index)
                log_info("Chunk index %s changed since the last clean stop: probing it", index);
        return clean;
}

/* ---- passthrough and stats ---- */

int cache_set_passthrough(Cache *c, bool enabled) {
        if (!c)
                return -EINVAL;
        bool before = cache_passthrough_active(c);
        bool old = atomic_exchange(&c->passthrough_manual, enabled);
        if (old == enabled)
                return 0;
        CachePassthroughReason reason = atomic_load(&c->passthrough_reason);
        if (!enabled && reason != CACHE_PASSTHROUGH_NONE)
                log_notice("Passthrough switched off by hand, but stays on: the cache disk is %s",
                           cache_passthrough_reason_to_string(reason));
        else
                log_info("Passthrough switched %s by hand", enabled ? "on" : "off");
        if (before != cache_passthrough_active(c))
                notify_state(c);
        return 0;
}

bool cache_passthrough(Cache *c) {
        return c && cache_passthrough_active(c);
}

int cache_get_stats(Cache *c, CacheStats *ret) {
        ChunkIndexTotals t = {};

        if (!c || !ret)
                return -EINVAL;
        *ret = (CacheStats) {};

        ChunkIndex *x = cache_index(c);
        if (x) {
                int r = chunk_index_totals(x, &t);
                if (r < 0) {
                        cache_disk_failed(c, r);
                        t = (ChunkIndexTotals) {};
                }
        }
        ret->bytes = t.bytes;
        ret->budget = c->opts.budget_bytes;
        ret->chunks = t.chunks;
        ret->pinned_bytes = t.pinned_bytes;
        ret->pinned_chunks = t.pinned_chunks;
        ret->versions = t.versions;
        ret->version_bytes = t.version_bytes;
        ret->dedup_ratio = t.bytes > 0 ? (double) t.version_bytes / (double) t.bytes : 0.0;
        ret->hits = atomic_load(&c->hits);
        ret->misses = atomic_load(&c->misses);
        ret->evictions = atomic_load(&c->evictions);
        ret->evicted_bytes = atomic_load(&c->evicted_bytes);
        ret->bad_chunks = atomic_load(&c->bad_chunks);
        if (c->fills)
                cache_fills_counts(c, &ret->fills_active, &ret->fills_queued);
        ret->pins = t.pins;
        pthread_mutex_lock(&c->lock);
        ret->pin_bytes_total = c->pin_bytes_total;
        ret->pin_bytes_done = c->pin_bytes_done < c->pin_bytes_total ? c->pin_bytes_done : c->pin_bytes_total;
        pthread_mutex_unlock(&c->lock);

        ChunkStore *s = cache_store(c);
        if (s) {
                double pct;
                int r = chunk_store_disk_usage(s, &pct);
                if (r >= 0)
                        ret->disk_percent = pct;
        }

        CachePassthroughReason reason = atomic_load(&c->passthrough_reason);
        bool manual = atomic_load(&c->passthrough_manual);
        ret->passthrough = reason != CACHE_PASSTHROUGH_NONE || manual;
        ret->passthrough_reason = reason != CACHE_PASSTHROUGH_NONE ? reason
                                : manual ? CACHE_PASSTHROUGH_MANUAL : CACHE_PASSTHROUGH_NONE;
        return 0;
}

/* ---- clear ---- */

typedef struct ClearCtx {
        Cache *cache;
        ChunkStore *store;
        uint64_t chunks, bytes;
        int error;
} ClearCtx;

static int clear_one(const ChunkId *id, const ChunkInfo *info, void *userdata) {
        ClearCtx *ctx = userdata;

        ctx->chunks++;
        ctx->bytes += info->size;
        int r = chunk_store_remove(ctx->store, id);
        if (r < 0 && r != -ENOENT && ctx->error == 0)
                ctx->error = r;        /* the file stays an orphan: verify finds it */
        return 0;
}

int cache_clear(Cache *c) {
        ClearCtx ctx = { .cache = c };

        if (!c)
                return -EINVAL;
        ChunkIndex *x = cache_index(c);
        ctx.store = cache_store(c);
        if (!x || !ctx.store)
                return passthrough_errno(c);

        pthread_mutex_lock(&c->evict_lock);
        int r = chunk_index_clear_unpinned(x, clear_one, &ctx);
        pthread_mutex_unlock(&c->evict_lock);
        if (r < 0) {
                cache_disk_failed(c, r);
                return log_warning_errno(r, "Failed to clear the cache: %m");
        }
        if (ctx.error < 0) {
                cache_disk_failed(c, ctx.error);
                log_warning_errno(ctx.error, "Clearing the cache: some chunk files could not be removed: %m");
        }
        stored_bytes_refresh(c);
        log_info("Cache cleared: %" PRIu64 " unpinned chunks, %" PRIu64 " bytes dropped", ctx.chunks, ctx.bytes);
        return 0;
}

/* ---- verify ---- */

typedef struct VerifyCtx {
        Cache *cache;
        ChunkStore *store;
        ChunkIndex *index;
        bool repair;
        CacheVerifyResult res;
        ChunkId *seen;                  /* every chunk file the walk found, sorted afterwards */
        size_t n_seen, n_seen_alloc;
        ChunkId *missing;               /* indexed, not found by the walk */
        size_t n_missing, n_missing_alloc;
        uint8_t *buf;
        size_t bufsize;
        int disk_error;
} VerifyCtx;

static int id_append(ChunkId **a, size_t *n, size_t *alloc, const ChunkId *id) {
        if (GREEDY_REALLOC(*a, *alloc, *n + 1) < 0)
                return -ENOMEM;
        (*a)[(*n)++] = *id;
        return 0;
}

static int id_compare(const void *a, const void *b) {
        return memcmp(a, b, sizeof(ChunkId));
}

static int verify_file(VerifyCtx *v, const ChunkId *id, int check) {
        ChunkInfo info;
        int r;

        if (check < 0 && check != -ENOENT && v->disk_error == 0)
                v->disk_error = check;
        bool good = check == 1;

        r = chunk_index_chunk_get(v->index, id, &info);
        if (r < 0 && r != -ENOENT)
                return r;
        bool indexed = r >= 0;

        v->res.checked++;
        if (!good) {
                v->res.bad++;
                if (!indexed)
                        v->res.orphans++;
                if (v->repair) {
                        int k = chunk_store_remove(v->store, id);
                        if (k < 0 && k != -ENOENT && v->disk_error == 0)
                                v->disk_error = k;
                        if (indexed) {
                                r = chunk_index_chunk_remove(v->index, id);
                                if (r < 0 && r != -ENOENT)
                                        return r;
                        }
                        atomic_fetch_add(&v->cache->bad_chunks, 1);
                        v->res.repaired++;
                }
                return 0;
        }
        if (!indexed) {
                v->res.orphans++;
                if (v->repair) {
                        /* A file that hashes to its name is a good chunk: keep it. */
                        char path[PATH_MAX];
                        struct stat st;
                        chunk_path(v->store, id, path, sizeof path);
                        if (stat(path, &st) < 0)
                                return 0;
                        if (st.st_size <= 0 || (uint64_t) st.st_size > UINT32_MAX)
                                return 0;
                        ChunkRef ref = { .id = *id, .size = (uint32_t) st.st_size };
                        uint64_t t = (uint64_t) st.st_mtim.tv_sec * 1000000u + (uint64_t) st.st_mtim.tv_nsec / 1000u;
                        r = chunk_index_adopt(v->index, &ref, &t, 1);
                        if (r < 0)
                                return r;
                        v->res.repaired++;
                }
        }
        return 0;
}

static int verify_one(const ChunkId *id, uint64_t size, void *userdata) {
        VerifyCtx *v = userdata;
        (void) size;

        int check = chunk_file_check(v->store, id, &v->buf, &v->bufsize);
        if (check == -ENOENT)
                return 0;      /* evicted while we walked */
        if (check == -ENOMEM)
                return check;
        int r = id_append(&v->seen, &v->n_seen, &v->n_seen_alloc, id);
        if (r < 0)
                return r;
        return verify_file(v, id, check);
}

static int verify_indexed(const ChunkId *id, const ChunkInfo *info, void *userdata) {
        VerifyCtx *v = userdata;
        (void) info;

        if (bsearch(id, v->seen, v->n_seen, sizeof(ChunkId), id_compare))
                return 0;
        /* Collected, not acted on: this is a read transaction. */
        return id_append(&v->missing, &v->n_missing, &v->n_missing_alloc, id);
}

int cache_verify(Cache *c, bool repair, CacheVerifyResult *ret) {
        VerifyCtx v = { .cache = c, .repair = repair };
        uint64_t foreign = 0;
        int r;

        if (!c || !ret)
                return -EINVAL;
        v.index = cache_index(c);
        v.store = cache_store(c);
        if (!v.index || !v.store)
                return passthrough_errno(c);

        /* Eviction and clear would make files vanish between the two passes. */
        pthread_mutex_lock(&c->evict_lock);

        r = chunk_store_walk(v.store, verify_one, &v, &foreign);
        if (r < 0) {
                log_warning_errno(r, "Verify: walking the chunk store failed: %m");
                goto finish;
        }
        qsort(v.seen, v.n_seen, sizeof(ChunkId), id_compare);
        r = chunk_index_chunks_foreach(v.index, verify_indexed, &v);
        if (r < 0) {
                log_warning_errno(r, "Verify: reading the chunk index failed: %m");
                goto finish;
        }
        for (size_t i = 0; i < v.n_missing; i++) {
                uint64_t size;
                /* A fill may have stored it after the walk passed its directory. */
                if (chunk_store_stat(v.store, &v.missing[i], &size) >= 0)
                        continue;
                v.res.missing++;
                if (repair) {
                        r = chunk_index_chunk_remove(v.index, &v.missing[i]);
                        if (r < 0 && r != -ENOENT) {
                                log_warning_errno(r, "Verify: failed to drop a missing chunk from the index: %m");
                                goto finish;
                        }
                        v.res.repaired++;
                }
        }
        r = 0;

finish:
        pthread_mutex_unlock(&c->evict_lock);
        if (v.disk_error < 0)
                cache_disk_failed(c, v.disk_error);
        if (r < 0)
                cache_disk_failed(c, r);
        free(v.seen);
        free(v.missing);
        free(v.buf);
        if (r < 0)
                return r;
        stored_bytes_refresh(c);
        log_info("Cache %s: %" PRIu64 " chunks checked, %" PRIu64 " bad, %" PRIu64 " missing, %" PRIu64
                 " orphans, %" PRIu64 " repaired, %" PRIu64 " foreign files", repair ? "repair" : "verify",
                 v.res.checked, v.res.bad, v.res.missing, v.res.orphans, v.res.repaired, foreign);
        *ret = v.res;
        return 0;
}

/* ---- pins ---- */

/* The size is part of the version key ("v1:<size>:..."), so a pin's bytes are known before any of
 * its files was read. */
static uint64_t key_size(const char *key) {
        if (strncmp(key, "v1:", 3) != 0)
                return 0;
        char *e;
        errno = 0;
        unsigned long long v = strtoull(key + 3, &e, 10);
        if (errno != 0 || e == key + 3 || *e != ':')
                return 0;
        return v;
}

typedef struct StrList {
        char **s;
        size_t n, alloc;
} StrList;

static void strlist_done(StrList *l) {
        for (size_t i = 0; i < l->n; i++)
                free(l->s[i]);
        free(l->s);
        *l = (StrList) {};
}

static int strlist_add(StrList *l, const char *s) {
        if (GREEDY_REALLOC(l->s, l->alloc, l->n + 2) < 0)        /* and the NULL after it */
                return -ENOMEM;
        l->s[l->n] = strdup(s);
        if (!l->s[l->n])
                return -ENOMEM;
        l->n++;
        l->s[l->n] = NULL;
        return 0;
}

static int str_compare(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static void strlist_sort_unique(StrList *l) {
        if (l->n == 0)
                return;
        qsort(l->s, l->n, sizeof(char *), str_compare);
        size_t j = 1;
        for (size_t i = 1; i < l->n; i++) {
                if (strcmp(l->s[i], l->s[j - 1]) == 0)
                        free(l->s[i]);
                else
                        l->s[j++] = l->s[i];
        }
        l->n = j;
        l->s[j] = NULL;
}

typedef struct PinRecord {
        char *path;
        StrList keys;
} PinRecord;

typedef struct PinList {
        PinRecord *p;
        size_t n, alloc;
} PinList;

static void pinlist_done(PinList *l) {
        for (size_t i = 0; i < l->n; i++) {
                free(l->p[i].path);
                strlist_done(&l->p[i].keys);
        }
        free(l->p);
        *l = (PinList) {};
}

static int pins_collect_one(const char *path, const char *const *keys, size_t n, void *userdata) {
        PinList *l = userdata;
        int r;

        if (GREEDY_REALLOC(l->p, l->alloc, l->n + 1) < 0)
                return -ENOMEM;
        PinRecord *rec = &l->p[l->n];
        *rec = (PinRecord) { .path = strdup(path) };
        if (!rec->path)
                return -ENOMEM;
        l->n++;
        for (size_t i = 0; i < n; i++) {
                r = strlist_add(&rec->keys, keys[i]);
                if (r < 0)
                        return r;
        }
        strlist_sort_unique(&rec->keys);
        return 0;
}

static int pins_collect(Cache *c, ChunkIndex *x, PinList *ret) {
        int r = chunk_index_pins_foreach(x, pins_collect_one, ret);
        if (r < 0) {
                cache_disk_failed(c, r);
                pinlist_done(ret);
                return log_warning_errno(r, "Failed to read the pins: %m");
        }
        return 0;
}

/* The files at or below a node, with their version keys (sorted, unique) and their bytes. */
typedef struct PinFiles {
        const TreeNode **files;
        size_t n, alloc;
        StrList keys;
        uint64_t bytes;
} PinFiles;

static void pinfiles_done(PinFiles *f) {
        free(f->files);
        strlist_done(&f->keys);
        *f = (PinFiles) {};
}

static int pinfiles_collect(const TreeNode *n, PinFiles *f, unsigned depth) {
        int r;

        if (depth > 256)
                return -ELOOP;
        if (!n->is_dir) {
                if (GREEDY_REALLOC(f->files, f->alloc, f->n + 1) < 0)
                        return -ENOMEM;
                f->files[f->n++] = n;
                _cleanup_free_ char *key = cache_version_key(n);
                if (!key)
                        return -ENOMEM;
                r = strlist_add(&f->keys, key);
                if (r < 0)
                        return r;
                f->bytes += n->size;
                return 0;
        }
        for (size_t i = 0; i < n->n_children; i++) {
                r = pinfiles_collect(n->children[i], f, depth + 1);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* path relative to the mountpoint; "" (or "/") is the root. -ENOENT when a component is missing. */
static int tree_resolve(const Tree *tree, const char *path, const TreeNode **ret) {
        const TreeNode *n = tree_get(tree, TREE_ROOT_INO);
        if (!n)
                return -ENOENT;
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        char *save = NULL;
        for (char *comp = strtok_r(p, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
                if (!n->is_dir)
                        return -ENOENT;
                n = tree_lookup(tree, n->ino, comp);
                if (!n)
                        return -ENOENT;
        }
        *ret = n;
        return 0;
}

static int pinfiles_for_path(const Tree *tree, const char *path, PinFiles *ret) {
        const TreeNode *node;
        int r = tree_resolve(tree, path, &node);
        if (r < 0)
                return r;
        r = pinfiles_collect(node, ret, 0);
        if (r < 0) {
                pinfiles_done(ret);
                return r;
        }
        strlist_sort_unique(&ret->keys);
        return 0;
}

static void pin_queue_files(Cache *c, const Tree *tree, const PinFiles *f) {
        for (size_t i = 0; i < f->n; i++) {
                CacheFileSpec spec = {};
                int r = cache_file_spec_from_node(tree, f->files[i], &spec);
                if (r < 0) {
                        log_debug_errno(r, "Pin: cannot describe a file for its fill, skipping it: %m");
                        continue;
                }
                r = cache_fill_queue(c, &spec, CACHE_FILL_PIN);
                if (r < 0)
                        log_debug_errno(r, "Pin: failed to queue the fill of %s: %m", strna(spec.path));
                cache_file_spec_done(&spec);
        }
}

/* Pin progress from the index: every pinned version once, done when all its chunks are stored.
 * Fills add to done as they finish (cache_pin_progress); this sets both again from the truth. */
static void pin_progress_recompute(Cache *c, ChunkIndex *x) {
        _cleanup_(pinlist_done) PinList pins = {};
        StrList all = {};
        uint64_t total = 0, done = 0;

        if (pins_collect(c, x, &pins) < 0)
                return;
        for (size_t i = 0; i < pins.n; i++)
                for (size_t j = 0; j < pins.p[i].keys.n; j++)
                        if (strlist_add(&all, pins.p[i].keys.s[j]) < 0) {
                                strlist_done(&all);
                                return;
                        }
        strlist_sort_unique(&all);
        for (size_t i = 0; i < all.n; i++) {
                uint64_t size = key_size(all.s[i]), missing = 0;
                total += size;
                if (cache_version_complete(c, all.s[i], &missing) > 0)
                        done += size;
        }
        strlist_done(&all);

        pthread_mutex_lock(&c->lock);
        c->pin_bytes_total = total;
        c->pin_bytes_done = done;
        pthread_mutex_unlock(&c->lock);
}

void cache_pin_progress(Cache *c, uint64_t bytes) {
        pthread_mutex_lock(&c->lock);
        c->pin_bytes_done += bytes;
        if (c->pin_bytes_done > c->pin_bytes_total)
                c->pin_bytes_done = c->pin_bytes_total;
        pthread_mutex_unlock(&c->lock);
}

static void pins_missing_forget(Cache *c, const char *path) {
        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; i < c->n_pins_missing; i++)
                if (streq_ptr(c->pins_missing[i], path)) {
                        free(c->pins_missing[i]);
                        c->pins_missing[i] = c->pins_missing[--c->n_pins_missing];
                        break;
                }
        pthread_mutex_unlock(&c->lock);
}

/* True the first time a pinned path is found missing (so it is logged once). */
static bool pins_missing_note(Cache *c, const char *path) {
        bool first = true;

        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; i < c->n_pins_missing; i++)
                if (streq_ptr(c->pins_missing[i], path)) {
                        first = false;
                        goto finish;
                }
        char **a = reallocarray(c->pins_missing, c->n_pins_missing + 1, sizeof *a);
        char *p = strdup(path);
        if (a)
                c->pins_missing = a;
        if (!a || !p) {
                free(p);
                goto finish;
        }
        c->pins_missing[c->n_pins_missing++] = p;
finish:
        pthread_mutex_unlock(&c->lock);
        return first;
}

int cache_pin(Cache *c, const Tree *tree, const char *path) {
        _cleanup_(pinfiles_done) PinFiles files = {};
        _cleanup_(pinlist_done) PinList pins = {};
        StrList all = {};
        int r;

        if (!c || !tree || !path)
                return -EINVAL;
        ChunkIndex *x = cache_index(c);
        if (!x)
                return passthrough_errno(c);

        r = pinfiles_for_path(tree, path, &files);
        if (r == -ENOENT)
                return log_info_errno(r, "Cannot pin %s: no such path in the library", *path ? path : "/");
        if (r < 0)
                return log_warning_errno(r, "Cannot pin %s: %m", path);

        /* Pinned bytes: every pinned version once, whichever pins name it; re-pinning a path
         * replaces its own list, so it does not count twice. */
        r = pins_collect(c, x, &pins);
        if (r < 0)
                return r;
        for (size_t i = 0; i < pins.n && r >= 0; i++)
                if (!streq_ptr(pins.p[i].path, path))
                        for (size_t j = 0; j < pins.p[i].keys.n && r >= 0; j++)
                                r = strlist_add(&all, pins.p[i].keys.s[j]);
        for (size_t j = 0; j < files.keys.n && r >= 0; j++)
                r = strlist_add(&all, files.keys.s[j]);
        if (r < 0) {
                strlist_done(&all);
                return r;
        }
        strlist_sort_unique(&all);
        uint64_t pinned = 0;
        for (size_t i = 0; i < all.n; i++)
                pinned += key_size(all.s[i]);
        strlist_done(&all);
        if (c->opts.budget_bytes > 0 && pinned > c->opts.budget_bytes)
                return log_info_errno(-ENOSPC, "Cannot pin %s (%zu files, %" PRIu64 " bytes): %" PRIu64
                                      " pinned bytes would not fit in the budget of %" PRIu64,
                                      *path ? path : "/", files.n, files.bytes, pinned, c->opts.budget_bytes);

        r = chunk_index_pin_put(x, path, (const char *const *) files.keys.s, files.keys.n);
        if (r < 0) {
                cache_disk_failed(c, r);
                return log_warning_errno(r, "Failed to record the pin of %s: %m", path);
        }
        pins_missing_forget(c, path);
        pin_queue_files(c, tree, &files);
        pin_progress_recompute(c, x);
        log_info("Pinned %s: %zu files, %" PRIu64 " bytes", *path ? path : "/", files.n, files.bytes);
        maintenance_wake(c);
        return 0;
}

int cache_unpin(Cache *c, const char *path) {
        if (!c || !path)
                return -EINVAL;
        ChunkIndex *x = cache_index(c);
        if (!x)
                return passthrough_errno(c);
        int r = chunk_index_pin_drop(x, path);
        if (r == -ENOENT)
                return r;
        if (r < 0) {
                cache_disk_failed(c, r);
                return log_warning_errno(r, "Failed to drop the pin of %s: %m", path);
        }
        pins_missing_forget(c, path);
        pin_progress_recompute(c, x);
        log_info("Unpinned %s", path);
        return 0;
}

static bool strlist_equal(const StrList *a, const StrList *b) {
        if (a->n != b->n)
                return false;
        for (size_t i = 0; i < a->n; i++)
                if (strcmp(a->s[i], b->s[i]) != 0)
                        return false;
        return true;
}

int cache_pins_refresh(Cache *c, const Tree *tree) {
        _cleanup_(pinlist_done) PinList pins = {};
        int r, ret = 0;

        if (!c || !tree)
                return -EINVAL;
        ChunkIndex *x = cache_index(c);
        if (!x)
                return passthrough_errno(c);
        r = pins_collect(c, x, &pins);
        if (r < 0)
                return r;

        for (size_t i = 0; i < pins.n; i++) {
                _cleanup_(pinfiles_done) PinFiles files = {};
                const char *path = pins.p[i].path;

                r = pinfiles_for_path(tree, path, &files);
                if (r == -ENOENT) {
                        /* Perhaps a rescan in progress, or an origin away: the pin stays. */
                        if (pins_missing_note(c, path))
                                log_notice("Pinned path %s is not in the library now; keeping its pin", path);
                        continue;
                }
                if (r < 0) {
                        log_warning_errno(r, "Failed to refresh the pin of %s: %m", path);
                        if (ret == 0)
                                ret = r;
                        continue;
                }
                pins_missing_forget(c, path);
                if (!strlist_equal(&files.keys, &pins.p[i].keys)) {
                        r = chunk_index_pin_put(x, path, (const char *const *) files.keys.s, files.keys.n);
                        if (r < 0) {
                                cache_disk_failed(c, r);
                                return log_warning_errno(r, "Failed to update the pin of %s: %m", path);
                        }
                        log_info("Pin of %s updated: %zu files, %" PRIu64 " bytes", path, files.n, files.bytes);
                }
                /* The queue skips complete and running versions; after a restart this restarts the rest. */
                pin_queue_files(c, tree, &files);
        }
        pin_progress_recompute(c, x);
        return ret;
}

int cache_list_pins(Cache *c, char ***ret) {
        _cleanup_(pinlist_done) PinList pins = {};
        StrList l = {};
        int r;

        if (!c || !ret)
                return -EINVAL;
        ChunkIndex *x = cache_index(c);
        if (x) {
                r = pins_collect(c, x, &pins);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < pins.n; i++) {
                r = strlist_add(&l, pins.p[i].path);
                if (r < 0) {
                        strlist_done(&l);
                        return r;
                }
        }
        if (!l.s) {
                l.s = calloc(1, sizeof(char *));
                if (!l.s)
                        return -ENOMEM;
        }
        *ret = l.s;
        return 0;
}
