/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The cache context (D7, D9, D11): open/close with real chunk files and a real LMDB index in a temp
 * dir, the byte budget and LRU eviction, pins kept out of eviction, access times across restarts,
 * a damaged index rebuilt from the chunk files, the spot check, clear and verify/repair, and — as
 * root, on a small tmpfs mounted over the chunk store — a full disk and a read-only remount turning
 * passthrough on and the health probe turning it off again.
 *
 * The tmpfs goes over <cache>/chunks only, not the whole cache dir: LMDB keeps index.mdb open for
 * writing, so the kernel refuses to remount a filesystem holding it read-only (EBUSY), and a full
 * tmpfs would fault LMDB's mapped lock file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache-internal.h"
#include "catalog.h"
#include "template.h"
#include "tree.h"
#include "cdc.h"
#include "failpoint.h"
#include "macro.h"
#include "origin.h"
#include "time-util.h"

#define CHUNK (16 * 1024)

typedef struct Fixture {
        char tmp[64];
        char dir[128];          /* the cache dir */
        char chunks[160];
        char mountpoint[160];   /* a tmpfs mounted by the test, "" when none */
        OriginSet *origins;
        Cache *cache;
        atomic_uint state_calls;
} Fixture;

static void on_state(void *userdata) {
        Fixture *f = userdata;
        atomic_fetch_add(&f->state_calls, 1);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->tmp, "/tmp/test-cache-XXXXXX");
        assert_non_null(mkdtemp(f->tmp));
        snprintf(f->dir, sizeof f->dir, "%s/cache", f->tmp);
        snprintf(f->chunks, sizeof f->chunks, "%s/chunks", f->dir);
        assert_int_equal(origin_set_new(&f->origins), 0);
        *state = f;
        return 0;
}

static int rm_rf(const char *path) {
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
        return system(cmd);
}

static int teardown(void **state) {
        Fixture *f = *state;
        failpoint_disarm_all();        /* a failed test may leave one armed */
        cache_close(f->cache);
        /* Lazily: a failed test may leave something open on it, and the mount must go whatever. */
        if (f->mountpoint[0] && umount2(f->mountpoint, MNT_DETACH) < 0)
                print_message("cannot unmount %s: %s\n", f->mountpoint, strerror(errno));
        origin_set_free(f->origins);
        rm_rf(f->tmp);
        free(f);
        return 0;
}

static void mount_small_tmpfs_at(Fixture *f, const char *where) {
        if (geteuid() != 0) {
                print_message("skipped: mounting a tmpfs needs root\n");
                skip();
        }
        char cmd[PATH_MAX];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", where);
        assert_int_equal(system(cmd), 0);
        if (mount("tmpfs", where, "tmpfs", 0, "size=2m") < 0) {
                print_message("skipped: cannot mount a tmpfs: %s\n", strerror(errno));
                skip();
        }
        snprintf(f->mountpoint, sizeof f->mountpoint, "%s", where);
}

/* A tmpfs of 2 MiB over the chunk store, or a skip when this is not root. */
static void mount_small_tmpfs(Fixture *f) {
        mount_small_tmpfs_at(f, f->chunks);
}

static void remount(Fixture *f, bool read_only) {
        /* A probe file open for writing at this instant makes the kernel answer EBUSY: retry. */
        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + 10000;
        for (;;) {
                if (mount(NULL, f->mountpoint, NULL, MS_REMOUNT | (read_only ? MS_RDONLY : 0), "size=2m") == 0)
                        return;
                assert_int_equal(errno, EBUSY);
                assert_true((now_usec(CLOCK_MONOTONIC) / 1000) < deadline);
                usleep(10000);
        }
}

static void open_cache_full(Fixture *f, uint64_t budget, unsigned interval, bool unclean, unsigned stop_percent) {
        CacheOptions o = {
                .dir = f->dir,
                .budget_bytes = budget,
                .unclean_start = unclean,
                .maintenance_interval_sec = interval,
                .stop_percent = stop_percent,
        };
        assert_int_equal(cache_open(&o, f->origins, on_state, f, &f->cache), 0);
}

static void open_cache(Fixture *f, uint64_t budget, unsigned interval) {
        open_cache_full(f, budget, interval, false, 0);
}

static void close_cache(Fixture *f) {
        cache_close(f->cache);
        f->cache = NULL;
}

static void make_data(uint8_t *buf, size_t size, uint32_t seed) {
        uint64_t x = 0x9E3779B97F4A7C15ULL * (seed + 1);
        for (size_t i = 0; i < size; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf[i] = (uint8_t) x;
        }
}

/* Stores one chunk as a fill does: batch, commit, index, note. */
static ChunkRef store_chunk(Cache *c, uint32_t seed, size_t size, uint64_t time_usec) {
        uint8_t *buf = malloc(size);
        ChunkBatch *b;
        ChunkRef ref;

        assert_non_null(buf);
        make_data(buf, size, seed);
        chunk_id_compute(buf, size, &ref.id);
        ref.size = (uint32_t) size;
        assert_int_equal(chunk_batch_new(c->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &ref.id, buf, size), 0);
        assert_int_equal(chunk_batch_commit(b), 0);
        assert_int_equal(chunk_index_chunks_add(c->index, &ref, 1, time_usec), 0);
        cache_note_stored(c, size);
        free(buf);
        return ref;
}

static bool is_stored(Cache *c, const ChunkRef *ref) {
        ChunkInfo info;
        int r = chunk_index_chunk_get(c->index, &ref->id, &info);
        assert_true(r == 0 || r == -ENOENT);
        return r == 0;
}

static bool file_exists(Cache *c, const ChunkRef *ref) {
        uint64_t size;
        int r = chunk_store_stat(c->store, &ref->id, &size);
        assert_true(r == 0 || r == -ENOENT);
        return r == 0;
}

static void chunk_file_path(Fixture *f, const ChunkRef *ref, char *buf, size_t size) {
        char hex[CHUNK_ID_HEX_SIZE];
        chunk_id_to_hex(&ref->id, hex);
        snprintf(buf, size, "%s/%.2s/%s", f->chunks, hex, hex);
}

static void flip_byte(Fixture *f, const ChunkRef *ref) {
        char path[PATH_MAX];
        uint8_t byte;
        chunk_file_path(f, ref, path, sizeof path);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, &byte, 1, 100), 1);
        byte ^= 0x40;
        assert_int_equal(pwrite(fd, &byte, 1, 100), 1);
        assert_int_equal(close(fd), 0);
}

static uint64_t stored_bytes(Cache *c) {
        ChunkIndexTotals t;
        assert_int_equal(chunk_index_totals(c->index, &t), 0);
        return t.bytes;
}

static CachePassthroughReason reason(Cache *c) {
        CacheStats s;
        assert_int_equal(cache_get_stats(c, &s), 0);
        return s.passthrough_reason;
}

/* Polls (20 ms) until the reason is want, for at most timeout_ms. */
static bool wait_reason(Cache *c, CachePassthroughReason want, unsigned timeout_ms) {
        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + timeout_ms;
        do {
                if (reason(c) == want)
                        return true;
                usleep(20000);
        } while ((now_usec(CLOCK_MONOTONIC) / 1000) < deadline);
        return reason(c) == want;
}

/* The callback runs just after the reason changes, on the maintenance thread: wait for it too. */
static bool wait_state_calls(Fixture *f, unsigned at_least, unsigned timeout_ms) {
        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + timeout_ms;
        while (atomic_load(&f->state_calls) < at_least && (now_usec(CLOCK_MONOTONIC) / 1000) < deadline)
                usleep(5000);
        return atomic_load(&f->state_calls) >= at_least;
}

static void test_open_close_reopen(void **state) {
        Fixture *f = *state;
        ChunkRef refs[5];
        uint64_t sum = 0;

        open_cache(f, 64 << 20, 60);
        assert_false(cache_passthrough(f->cache));
        for (unsigned i = 0; i < 5; i++) {
                refs[i] = store_chunk(f->cache, i, CHUNK + i * 1000, now_usec(CLOCK_REALTIME));
                sum += refs[i].size;
        }
        close_cache(f);

        open_cache(f, 64 << 20, 60);
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.chunks, 5);
        assert_int_equal(s.bytes, sum);
        assert_int_equal(s.budget, 64 << 20);
        assert_false(s.passthrough);
        assert_int_equal(s.passthrough_reason, CACHE_PASSTHROUGH_NONE);
        uint8_t *buf = malloc(CDC_MAX_SIZE);
        assert_non_null(buf);
        for (unsigned i = 0; i < 5; i++) {
                assert_true(is_stored(f->cache, &refs[i]));
                assert_int_equal(chunk_store_read(f->cache->store, &refs[i].id, buf, CDC_MAX_SIZE), refs[i].size);
        }
        free(buf);
}

/* A store past the budget but below 1.02x of it only wakes the maintenance thread, whose eviction
 * then runs beside the test. Waits for it to bring the cache under the budget, then for its pass to
 * end (the counters and the files follow the index inside evict_lock), so what is checked next is
 * one state, not a pass half done. */
static void wait_evictions_settled(Cache *c, uint64_t budget) {
        for (unsigned i = 0; i < 1000 && stored_bytes(c) > budget; i++)
                usleep(10 * 1000);
        assert_true(stored_bytes(c) <= budget);
        pthread_mutex_lock(&c->evict_lock);
        pthread_mutex_unlock(&c->evict_lock);
}

static void test_budget_lru(void **state) {
        Fixture *f = *state;
        const uint64_t budget = 1 << 20;   /* 64 chunks of 16 KiB */
        ChunkRef old[60], fresh[30];
        uint64_t base = now_usec(CLOCK_REALTIME) - 3600ull * 1000000u, peak = 0;

        open_cache(f, budget, 60);
        for (unsigned i = 0; i < 60; i++) {
                old[i] = store_chunk(f->cache, i, CHUNK, base + i * 1000000ull);
                uint64_t b = stored_bytes(f->cache);
                peak = b > peak ? b : peak;
        }
        assert_int_equal(atomic_load(&f->cache->evictions), 0);
        /* Read the ten oldest: they become the most recently used. */
        for (unsigned i = 0; i < 10; i++)
                cache_note_access(f->cache, &old[i].id);

        for (unsigned i = 0; i < 30; i++) {
                fresh[i] = store_chunk(f->cache, 1000 + i, CHUNK, now_usec(CLOCK_REALTIME));
                uint64_t b = stored_bytes(f->cache);
                peak = b > peak ? b : peak;
                assert_true(b <= budget + budget / 20);
        }
        wait_evictions_settled(f->cache, budget);
        print_message("peak %" PRIu64 " of budget %" PRIu64 ", evictions %" PRIu64 "\n", peak, budget,
                      (uint64_t) atomic_load(&f->cache->evictions));
        assert_true(peak <= budget + budget / 20);
        assert_true(atomic_load(&f->cache->evictions) >= 90 - 67);    /* 90 chunks stored, at most 67 fit in 1.05× */
        assert_true(stored_bytes(f->cache) <= budget + budget / 20);

        for (unsigned i = 0; i < 10; i++)
                assert_true(is_stored(f->cache, &old[i]));
        for (unsigned i = 0; i < 30; i++)
                assert_true(is_stored(f->cache, &fresh[i]));
        /* Of the untouched old chunks, the oldest went first: the evicted ones are a prefix. */
        unsigned first_kept = 10;
        while (first_kept < 60 && !is_stored(f->cache, &old[first_kept]))
                first_kept++;
        assert_true(first_kept > 10);
        for (unsigned i = 10; i < 60; i++) {
                assert_int_equal(is_stored(f->cache, &old[i]), i >= first_kept);
                assert_int_equal(file_exists(f->cache, &old[i]), i >= first_kept);
        }
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.evictions, first_kept - 10);
        assert_int_equal(s.evicted_bytes, (uint64_t) (first_kept - 10) * CHUNK);
}

static uint32_t fired(const char *name) {
        uint32_t count = 0;
        assert_int_equal(failpoint_fired(name, &count), 0);
        return count;
}

/* The maintenance thread takes the buffered access times and is held (cache-touch) before it
 * commits them; a writer past 1.02x evicts meanwhile. Its eviction must wait for that commit: read
 * before it, the LRU order still has the ten re-read chunks as the oldest, and they would go. */
static void test_touch_flush_before_eviction(void **state) {
        Fixture *f = *state;
        const uint64_t budget = 1 << 20;   /* 64 chunks of 16 KiB */
        ChunkRef old[64];
        uint64_t base = now_usec(CLOCK_REALTIME) - 3600ull * 1000000u;
        char *why = NULL;

#if !MUSICFS_FAILPOINTS
        print_message("skipped: failpoints compiled out\n");
        skip();
#endif
        open_cache(f, budget, 60);
        for (unsigned i = 0; i < 64; i++)
                old[i] = store_chunk(f->cache, i, CHUNK, base + i * 1000000ull);
        assert_int_equal(atomic_load(&f->cache->evictions), 0);
        assert_int_equal(failpoint_arm("cache-touch", "1*sleep(1000)", &why), 0);
        free(why);
        for (unsigned i = 0; i < 10; i++)
                cache_note_access(f->cache, &old[i].id);

        /* Past the budget but not 1.02x: only the maintenance thread is woken, and it flushes. */
        store_chunk(f->cache, 1000, CHUNK, now_usec(CLOCK_REALTIME));
        for (unsigned i = 0; i < 5000 && fired("cache-touch") == 0; i++)
                usleep(1000);
        assert_int_equal(fired("cache-touch"), 1);

        /* Past 1.02x: this thread evicts to 95 % itself, while the touches are held. */
        store_chunk(f->cache, 1001, CHUNK, now_usec(CLOCK_REALTIME));
        assert_true(atomic_load(&f->cache->evictions) > 0);
        for (unsigned i = 0; i < 10; i++)
                assert_true(is_stored(f->cache, &old[i]));
        assert_false(is_stored(f->cache, &old[10]));
        assert_int_equal(failpoint_disarm("cache-touch"), 0);
}

static uint64_t last_access(Cache *c, const ChunkRef *ref) {
        ChunkInfo info;
        assert_int_equal(chunk_index_chunk_get(c->index, &ref->id, &info), 0);
        return info.last_access_usec;
}

/* TOUCH_FLUSH_AT touches make a flush due; it waits while reads go on (its commit syncs the index
 * the readers' disk), and follows the first pause of TOUCH_QUIET_USEC. */
static void test_touch_flush_waits_for_pause(void **state) {
        Fixture *f = *state;
        uint64_t old = now_usec(CLOCK_REALTIME) - 3600ull * 1000000u;

        open_cache(f, 0, 60);
        ChunkRef a = store_chunk(f->cache, 1, CHUNK, old);
        for (unsigned i = 0; i < TOUCH_FLUSH_AT; i++)
                cache_note_access(f->cache, &a.id);

        uint64_t start = now_usec(CLOCK_MONOTONIC), prev = start, max_gap = 0;
        while (prev - start < 300 * 1000) {
                usleep(2000);
                cache_note_access(f->cache, &a.id);
                uint64_t now = now_usec(CLOCK_MONOTONIC);
                max_gap = now - prev > max_gap ? now - prev : max_gap;
                prev = now;
        }
        if (max_gap < TOUCH_QUIET_USEC)
                assert_int_equal(last_access(f->cache, &a), old);
        else    /* this machine stalled the loop for a pause's length: a flush was allowed */
                print_message("inconclusive: %" PRIu64 " µs between two touches\n", max_gap);

        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + 5 * 1000000u;
        while (last_access(f->cache, &a) == old) {
                assert_true(now_usec(CLOCK_MONOTONIC) < deadline);
                usleep(5000);
        }
        assert_true(now_usec(CLOCK_MONOTONIC) - prev >= TOUCH_QUIET_USEC);
        assert_true(last_access(f->cache, &a) > old);
}

static void pin_chunks(Cache *c, const char *path, const char *key, const ChunkRef *refs, size_t n) {
        uint64_t size = 0;
        for (size_t i = 0; i < n; i++)
                size += refs[i].size;
        assert_int_equal(chunk_index_version_put(c->index, key, size, refs, n), 0);
        const char *keys[] = { key };
        assert_int_equal(chunk_index_pin_put(c->index, path, keys, 1), 0);
}

static void test_pinned_never_evicted(void **state) {
        Fixture *f = *state;
        const uint64_t budget = 512 * 1024;
        ChunkRef pinned[4];
        uint64_t base = now_usec(CLOCK_REALTIME) - 3600ull * 1000000u;

        open_cache(f, budget, 60);
        /* The oldest chunks of all are the pinned ones. */
        for (unsigned i = 0; i < 4; i++)
                pinned[i] = store_chunk(f->cache, i, CHUNK, base + i);
        pin_chunks(f->cache, "Artist/Album", "v1:65536:1:Artist/Album/a.flac", pinned, 4);

        for (unsigned i = 0; i < 100; i++) {
                store_chunk(f->cache, 100 + i, CHUNK, base + 1000000ull * (i + 1));
                assert_true(stored_bytes(f->cache) <= budget + budget / 20);
        }
        assert_true(atomic_load(&f->cache->evictions) >= 70);
        for (unsigned i = 0; i < 4; i++) {
                assert_true(is_stored(f->cache, &pinned[i]));
                assert_true(file_exists(f->cache, &pinned[i]));
        }
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.pinned_chunks, 4);
        assert_int_equal(s.pinned_bytes, 4 * CHUNK);
        assert_int_equal(s.pins, 1);

        char **pins = NULL;
        assert_int_equal(cache_list_pins(f->cache, &pins), 0);
        assert_string_equal(pins[0], "Artist/Album");
        assert_null(pins[1]);
        free(pins[0]);
        free(pins);

        assert_int_equal(cache_unpin(f->cache, "Nope"), -ENOENT);
        assert_int_equal(cache_unpin(f->cache, "Artist/Album"), 0);
        /* Unpinned, they are the oldest: the next pressure evicts them first. */
        for (unsigned i = 0; i < 8; i++)
                store_chunk(f->cache, 500 + i, CHUNK, now_usec(CLOCK_REALTIME));
        for (unsigned i = 0; i < 4; i++)
                assert_false(is_stored(f->cache, &pinned[i]));
}

static void test_access_times_survive(void **state) {
        Fixture *f = *state;
        uint64_t old = now_usec(CLOCK_REALTIME) - 7200ull * 1000000u;
        ChunkInfo info;

        open_cache(f, 64 << 20, 60);
        ChunkRef a = store_chunk(f->cache, 1, CHUNK, old);
        ChunkRef b = store_chunk(f->cache, 2, CHUNK, old);
        uint64_t before = now_usec(CLOCK_REALTIME);
        cache_note_access(f->cache, &a.id);
        close_cache(f);

        open_cache(f, 64 << 20, 60);
        assert_int_equal(chunk_index_chunk_get(f->cache->index, &a.id, &info), 0);
        assert_true(info.last_access_usec >= before);
        assert_int_equal(chunk_index_chunk_get(f->cache->index, &b.id, &info), 0);
        assert_int_equal(info.last_access_usec, old);
        /* And the LRU order follows: b is the oldest now. */
        ChunkRef oldest[2];
        size_t n;
        assert_int_equal(chunk_index_oldest_unpinned(f->cache->index, oldest, 2, &n), 0);
        assert_int_equal(n, 2);
        assert_memory_equal(&oldest[0].id, &b.id, sizeof b.id);
}

static unsigned count_aside(Fixture *f, const char *prefix) {
        DIR *d = opendir(f->dir);
        struct dirent *de;
        unsigned n = 0;
        assert_non_null(d);
        while ((de = readdir(d)))
                if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
                        n++;
        closedir(d);
        return n;
}

static void garbage_index(Fixture *f) {
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/index.mdb", f->dir);
        assert_int_equal(stat(path, &st), 0);
        assert_true(st.st_size > 0);
        uint8_t *junk = malloc(st.st_size);
        assert_non_null(junk);
        make_data(junk, st.st_size, 4242);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, junk, st.st_size, 0), st.st_size);
        assert_int_equal(close(fd), 0);
        free(junk);
}

static void check_rebuilt(Fixture *f, const ChunkRef *refs, size_t n, uint64_t mtime_floor) {
        CacheStats s;
        ChunkInfo info;

        assert_false(cache_passthrough(f->cache));
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.chunks, n);
        assert_int_equal(s.versions, 0);       /* versions are lost; readers chunk again */
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(chunk_index_chunk_get(f->cache->index, &refs[i].id, &info), 0);
                assert_int_equal(info.size, refs[i].size);
                assert_int_equal(info.refcount, 0);
                /* last access = the file's mtime, not the moment of the rebuild */
                assert_true(info.last_access_usec >= mtime_floor);
        }
        assert_int_equal(count_aside(f, "index.mdb.corrupt-"), 1);
}

static void test_unclean_garbage_index(void **state) {
        Fixture *f = *state;
        ChunkRef refs[5];
        uint64_t t0 = now_usec(CLOCK_REALTIME) - 2000000;

        open_cache(f, 64 << 20, 60);
        for (unsigned i = 0; i < 5; i++)
                refs[i] = store_chunk(f->cache, i, CHUNK + i, now_usec(CLOCK_REALTIME));
        ChunkRef key = refs[0];
        assert_int_equal(chunk_index_version_put(f->cache->index, "v1:16384:1:x.flac", CHUNK, &key, 1), 0);
        close_cache(f);
        garbage_index(f);

        open_cache_full(f, 64 << 20, 60, true, 0);
        check_rebuilt(f, refs, 5, t0);
        for (unsigned i = 0; i < 5; i++)
                assert_true(file_exists(f->cache, &refs[i]));
        /* The fresh index works and survives a clean reopen. */
        ChunkRef more = store_chunk(f->cache, 77, CHUNK, now_usec(CLOCK_REALTIME));
        close_cache(f);
        open_cache(f, 64 << 20, 60);
        assert_true(is_stored(f->cache, &more));
        assert_true(is_stored(f->cache, &refs[4]));
}

static void test_garbage_index_clean_start(void **state) {
        Fixture *f = *state;
        ChunkRef refs[3];
        uint64_t t0 = now_usec(CLOCK_REALTIME) - 2000000;

        /* No unclean flag: the open itself fails on the garbage, and that leads to the same rebuild. */
        open_cache(f, 64 << 20, 60);
        for (unsigned i = 0; i < 3; i++)
                refs[i] = store_chunk(f->cache, 10 + i, CHUNK, now_usec(CLOCK_REALTIME));
        close_cache(f);
        garbage_index(f);

        open_cache(f, 64 << 20, 60);
        check_rebuilt(f, refs, 3, t0);
}

/* The clean-stop marker vouches for the index only as the close left it: garbage written over it
 * afterwards (which changes its mtime) makes the next start probe it. Consumed either way. */
static void test_clean_marker(void **state) {
        Fixture *f = *state;
        char marker[PATH_MAX];

        snprintf(marker, sizeof marker, "%s/cache.clean", f->tmp);
        open_cache(f, 64 << 20, 60);
        store_chunk(f->cache, 1, CHUNK, now_usec(CLOCK_REALTIME));
        close_cache(f);

        assert_false(cache_clean_marker_consume(f->dir, marker));      /* none */
        assert_int_equal(cache_clean_marker_write(f->dir, marker), 0);
        assert_true(cache_clean_marker_consume(f->dir, marker));
        assert_int_equal(access(marker, F_OK), -1);
        assert_false(cache_clean_marker_consume(f->dir, marker));      /* consumed */

        assert_int_equal(cache_clean_marker_write(f->dir, marker), 0);
        usleep(20000);         /* a new mtime even on coarse timestamps */
        garbage_index(f);
        assert_false(cache_clean_marker_consume(f->dir, marker));
        assert_int_equal(access(marker, F_OK), -1);
}

static void test_spot_check_drops_flipped(void **state) {
        Fixture *f = *state;
        ChunkRef refs[6];

        open_cache(f, 64 << 20, 60);
        for (unsigned i = 0; i < 6; i++)
                refs[i] = store_chunk(f->cache, i, CHUNK, now_usec(CLOCK_REALTIME));
        close_cache(f);
        flip_byte(f, &refs[2]);
        char path[PATH_MAX];
        chunk_file_path(f, &refs[4], path, sizeof path);
        assert_int_equal(unlink(path), 0);

        open_cache(f, 64 << 20, 60);
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.bad_chunks, 1);
        assert_int_equal(s.chunks, 4);
        assert_false(is_stored(f->cache, &refs[2]));
        assert_false(file_exists(f->cache, &refs[2]));
        assert_false(is_stored(f->cache, &refs[4]));
        for (unsigned i = 0; i < 6; i++)
                if (i != 2 && i != 4)
                        assert_true(is_stored(f->cache, &refs[i]));
}

static void fill_disk(const char *path) {
        static uint8_t buf[64 * 1024];
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        memset(buf, 0xA5, sizeof buf);
        for (unsigned i = 0; i < 1000; i++) {   /* 64 MiB at most; the tmpfs has 2 */
                ssize_t k = write(fd, buf, sizeof buf);
                if (k < 0) {
                        assert_int_equal(errno, ENOSPC);
                        break;
                }
        }
        /* The last pages too. */
        while (write(fd, buf, 512) > 0)
                ;
        assert_int_equal(close(fd), 0);
}

static void test_disk_full_watermark(void **state) {
        Fixture *f = *state;
        char filler[PATH_MAX];

        mount_small_tmpfs(f);
        open_cache(f, 64 << 20, 1);
        ChunkRef a = store_chunk(f->cache, 1, CHUNK, now_usec(CLOCK_REALTIME));
        assert_false(cache_passthrough(f->cache));
        assert_true(cache_writes_allowed(f->cache));

        snprintf(filler, sizeof filler, "%s/filler", f->chunks);
        fill_disk(filler);
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_FULL, 10000));
        assert_true(cache_passthrough(f->cache));
        assert_false(cache_writes_allowed(f->cache));
        assert_false(cache_prefetch_allowed(f->cache));
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_true(s.disk_percent >= 99.0);
        assert_true(wait_state_calls(f, 1, 5000));
        assert_string_equal(cache_passthrough_reason_to_string(s.passthrough_reason), "full");

        unsigned calls = atomic_load(&f->state_calls);
        assert_int_equal(unlink(filler), 0);
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_NONE, 15000));
        assert_false(cache_passthrough(f->cache));
        assert_true(cache_writes_allowed(f->cache));
        assert_true(wait_state_calls(f, calls + 1, 5000));
        /* D9: past the evict watermark the cache made what room it could, whatever the budget. */
        assert_false(is_stored(f->cache, &a));
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_true(s.evictions >= 1);
        store_chunk(f->cache, 2, CHUNK, now_usec(CLOCK_REALTIME));
}

static void test_disk_full_write(void **state) {
        Fixture *f = *state;
        char filler[PATH_MAX];
        uint8_t *buf = malloc(CHUNK);
        ChunkBatch *b;
        ChunkId id;

        mount_small_tmpfs(f);
        /* The last watermark out of reach: only the failed write can tell the disk is full. */
        open_cache_full(f, 64 << 20, 1, false, 101);
        snprintf(filler, sizeof filler, "%s/filler", f->chunks);
        fill_disk(filler);

        assert_non_null(buf);
        make_data(buf, CHUNK, 99);
        chunk_id_compute(buf, CHUNK, &id);
        assert_int_equal(chunk_batch_new(f->cache->store, &b), 0);
        int r = chunk_batch_add(b, &id, buf, CHUNK);
        if (r >= 0)
                r = chunk_batch_commit(b);
        else
                chunk_batch_abort(b);
        free(buf);
        assert_true(r == -ENOSPC);
        cache_disk_failed(f->cache, r);
        assert_int_equal(reason(f->cache), CACHE_PASSTHROUGH_FULL);
        assert_false(cache_writes_allowed(f->cache));

        assert_int_equal(unlink(filler), 0);
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_NONE, 15000));
}

static void test_read_only_remount(void **state) {
        Fixture *f = *state;

        mount_small_tmpfs(f);
        open_cache(f, 64 << 20, 1);
        ChunkRef a = store_chunk(f->cache, 1, CHUNK, now_usec(CLOCK_REALTIME));
        assert_false(cache_passthrough(f->cache));

        remount(f, true);
        /* Nothing is written: the periodic health probe notices. */
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_READ_ONLY, 10000));
        assert_false(cache_writes_allowed(f->cache));
        assert_true(wait_state_calls(f, 1, 5000));
        /* Manual off does not switch off a disk reason. */
        assert_int_equal(cache_set_passthrough(f->cache, false), 0);
        assert_true(cache_passthrough(f->cache));

        unsigned calls = atomic_load(&f->state_calls);
        remount(f, false);
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_NONE, 10000));
        assert_false(cache_passthrough(f->cache));
        assert_true(wait_state_calls(f, calls + 1, 5000));
        assert_true(is_stored(f->cache, &a));
        assert_true(file_exists(f->cache, &a));
        store_chunk(f->cache, 2, CHUNK, now_usec(CLOCK_REALTIME));
}

static void test_disk_failed_mapping(void **state) {
        Fixture *f = *state;
        static const struct {
                int error;
                CachePassthroughReason reason;
        } table[] = {
                { -EROFS, CACHE_PASSTHROUGH_READ_ONLY },
                { -ENOSPC, CACHE_PASSTHROUGH_FULL },
                { -EDQUOT, CACHE_PASSTHROUGH_FULL },
                { -EIO, CACHE_PASSTHROUGH_IO_ERROR },
                { -EACCES, CACHE_PASSTHROUGH_PERMISSION },
                { -EPERM, CACHE_PASSTHROUGH_PERMISSION },
        };

        /* A long interval: nothing but this test clears the reason in between. */
        open_cache(f, 64 << 20, 3600);
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                unsigned calls = atomic_load(&f->state_calls);
                cache_disk_failed(f->cache, table[i].error);
                assert_int_equal(reason(f->cache), table[i].reason);
                assert_int_equal(atomic_load(&f->state_calls), calls + 1);
                /* The first reason stays. */
                cache_disk_failed(f->cache, -EIO);
                assert_int_equal(reason(f->cache), table[i].reason);
                atomic_store(&f->cache->passthrough_reason, CACHE_PASSTHROUGH_NONE);
        }
        /* Not a disk error: ignored. */
        cache_disk_failed(f->cache, -ENOENT);
        assert_false(cache_passthrough(f->cache));
        /* The index reports damage: passthrough until the maintenance thread probed the file (good
         * here, so it is reopened, not rebuilt). */
        cache_disk_failed(f->cache, -EBADMSG);
        assert_int_equal(reason(f->cache), CACHE_PASSTHROUGH_IO_ERROR);
        assert_true(atomic_load(&f->cache->index_rebuild));
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_NONE, 15000));
        assert_false(atomic_load(&f->cache->index_rebuild));
}

static void test_manual_passthrough(void **state) {
        Fixture *f = *state;
        CacheStats s;

        open_cache(f, 64 << 20, 60);
        assert_false(cache_passthrough(f->cache));
        assert_int_equal(cache_set_passthrough(f->cache, true), 0);
        assert_true(cache_passthrough(f->cache));
        assert_false(cache_writes_allowed(f->cache));
        assert_int_equal(atomic_load(&f->state_calls), 1);
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_true(s.passthrough);
        assert_int_equal(s.passthrough_reason, CACHE_PASSTHROUGH_MANUAL);
        assert_string_equal(cache_passthrough_reason_to_string(s.passthrough_reason), "manual");
        assert_int_equal(cache_set_passthrough(f->cache, true), 0);
        assert_int_equal(atomic_load(&f->state_calls), 1);
        assert_int_equal(cache_set_passthrough(f->cache, false), 0);
        assert_false(cache_passthrough(f->cache));
        assert_true(cache_writes_allowed(f->cache));
        assert_int_equal(atomic_load(&f->state_calls), 2);
        close_cache(f);

        /* From the configuration. */
        CacheOptions o = { .dir = f->dir, .budget_bytes = 1 << 20, .passthrough = true };
        assert_int_equal(cache_open(&o, f->origins, on_state, f, &f->cache), 0);
        assert_int_equal(reason(f->cache), CACHE_PASSTHROUGH_MANUAL);
}

static void test_clear_keeps_pinned(void **state) {
        Fixture *f = *state;
        ChunkRef refs[6];

        open_cache(f, 64 << 20, 60);
        for (unsigned i = 0; i < 6; i++)
                refs[i] = store_chunk(f->cache, i, CHUNK, now_usec(CLOCK_REALTIME));
        pin_chunks(f->cache, "A", "v1:32768:5:A/a.flac", refs, 2);
        assert_int_equal(cache_clear(f->cache), 0);
        for (unsigned i = 0; i < 6; i++) {
                assert_int_equal(is_stored(f->cache, &refs[i]), i < 2);
                assert_int_equal(file_exists(f->cache, &refs[i]), i < 2);
        }
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.chunks, 2);
        assert_int_equal(s.bytes, 2 * CHUNK);
}

static void check_verify(const CacheVerifyResult *v, uint64_t checked, uint64_t bad, uint64_t missing, uint64_t orphans,
                         uint64_t repaired) {
        print_message("verify: checked %" PRIu64 " bad %" PRIu64 " missing %" PRIu64 " orphans %" PRIu64 " repaired %" PRIu64 "\n",
                      v->checked, v->bad, v->missing, v->orphans, v->repaired);
        assert_int_equal(v->checked, checked);
        assert_int_equal(v->bad, bad);
        assert_int_equal(v->missing, missing);
        assert_int_equal(v->orphans, orphans);
        assert_int_equal(v->repaired, repaired);
}

static void test_verify_repair(void **state) {
        Fixture *f = *state;
        ChunkRef refs[6];
        CacheVerifyResult v;
        char path[PATH_MAX];

        open_cache(f, 64 << 20, 60);
        for (unsigned i = 0; i < 6; i++)
                refs[i] = store_chunk(f->cache, i, CHUNK, now_usec(CLOCK_REALTIME));
        /* A good chunk file the index never heard of (a crash between rename and index). */
        uint8_t *buf = malloc(CHUNK);
        ChunkBatch *b;
        ChunkRef orphan = { .size = CHUNK };
        assert_non_null(buf);
        make_data(buf, CHUNK, 555);
        chunk_id_compute(buf, CHUNK, &orphan.id);
        assert_int_equal(chunk_batch_new(f->cache->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &orphan.id, buf, CHUNK), 0);
        assert_int_equal(chunk_batch_commit(b), 0);
        free(buf);

        flip_byte(f, &refs[0]);
        chunk_file_path(f, &refs[1], path, sizeof path);
        assert_int_equal(unlink(path), 0);

        assert_int_equal(cache_verify(f->cache, false, &v), 0);
        check_verify(&v, 6, 1, 1, 1, 0);
        /* verify only counts: the same again. */
        assert_int_equal(cache_verify(f->cache, false, &v), 0);
        check_verify(&v, 6, 1, 1, 1, 0);
        assert_true(file_exists(f->cache, &refs[0]));

        assert_int_equal(cache_verify(f->cache, true, &v), 0);
        check_verify(&v, 6, 1, 1, 1, 3);
        assert_false(is_stored(f->cache, &refs[0]));
        assert_false(file_exists(f->cache, &refs[0]));
        assert_false(is_stored(f->cache, &refs[1]));
        assert_true(is_stored(f->cache, &orphan));

        assert_int_equal(cache_verify(f->cache, false, &v), 0);
        check_verify(&v, 5, 0, 0, 0, 0);
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.chunks, 5);
        assert_int_equal(s.bytes, 5 * CHUNK);
}

static void test_evict_failpoint(void **state) {
        Fixture *f = *state;
        const uint64_t budget = 256 * 1024;

        char *why = NULL;
#if !MUSICFS_FAILPOINTS
        print_message("skipped: failpoints compiled out\n");
        skip();
#endif
        assert_int_equal(failpoint_arm("cache-evict", "return(EIO)", &why), 0);
        free(why);
        open_cache(f, budget, 60);
        for (unsigned i = 0; i < 20; i++)
                store_chunk(f->cache, i, CHUNK, now_usec(CLOCK_REALTIME) - 1000000ull * (100 - i));
        /* Eviction cannot proceed: writes stop before the budget is passed by more than 4 %. */
        assert_int_equal(atomic_load(&f->cache->evictions), 0);
        assert_false(cache_writes_allowed(f->cache));
        assert_false(cache_passthrough(f->cache));
        assert_int_equal(failpoint_disarm("cache-evict"), 0);
        store_chunk(f->cache, 100, CHUNK, now_usec(CLOCK_REALTIME));
        assert_true(stored_bytes(f->cache) <= budget);
        assert_true(cache_writes_allowed(f->cache));
}

/* ---- pins, with a real tree over a local origin and real fills ---- */

typedef struct Library {
        char origin_dir[160];
        char db[160];
        Catalog *catalog;
        Template *tpl;
        int64_t origin_id;
        Tree *tree;
} Library;

static const struct {
        const char *rel_path, *album, *title;
        unsigned track;
        size_t size;
} lib_files[] = {
        { "A/1.flac", "A", "one", 1, 300 * 1024 + 11 },
        { "A/2.flac", "A", "two", 2, 200 * 1024 + 7 },
        { "B/1.flac", "B", "three", 1, 400 * 1024 + 3 },
        { "A/3.flac", "A", "four", 3, 100 * 1024 + 5 },        /* added later */
};

static void library_write(Fixture *f, Library *l, size_t n_files) {
        int64_t gen = 0;
        CatalogBatch *b = NULL;
        char p[PATH_MAX];

        assert_int_equal(catalog_scan_begin(l->catalog, l->origin_id, &gen), 0);
        assert_int_equal(catalog_batch_begin(l->catalog, &b), 0);
        for (size_t i = 0; i < n_files; i++) {
                struct stat st;
                snprintf(p, sizeof p, "%s/%s", l->origin_dir, lib_files[i].rel_path);
                if (stat(p, &st) < 0) {
                        uint8_t *data = malloc(lib_files[i].size);
                        assert_non_null(data);
                        make_data(data, lib_files[i].size, 7000 + i);
                        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                        assert_true(fd >= 0);
                        assert_int_equal(write(fd, data, lib_files[i].size), (ssize_t) lib_files[i].size);
                        assert_int_equal(close(fd), 0);
                        free(data);
                        assert_int_equal(stat(p, &st), 0);
                }
                CatalogFile cf = {
                        .origin_id = l->origin_id,
                        .rel_path = (char *) lib_files[i].rel_path,
                        .size = lib_files[i].size,
                        .mtime_ns = (int64_t) st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
                        .format = (char *) "flac",
                        .parsed = true,
                        .tags = {
                                .title = (char *) lib_files[i].title,
                                .artist = (char *) "Artist",
                                .album = (char *) lib_files[i].album,
                                .track = lib_files[i].track,
                        },
                };
                assert_int_equal(catalog_batch_upsert(b, &cf, gen), 0);
        }
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_scan_finish(l->catalog, l->origin_id, gen, NULL), 0);

        CatalogFile *cfs = NULL;
        size_t n = 0;
        assert_int_equal(catalog_load_files(l->catalog, &cfs, &n), 0);
        assert_int_equal(n, n_files);
        tree_unref(l->tree);
        l->tree = NULL;
        assert_int_equal(tree_build(l->catalog, l->tpl, cfs, n, &l->tree), 0);
        catalog_files_free(cfs, n);
        (void) f;
}

static void library_setup(Fixture *f, Library *l) {
        char p[PATH_MAX], *reason = NULL;
        Origin *o = NULL;

        snprintf(l->origin_dir, sizeof l->origin_dir, "%s/origin", f->tmp);
        snprintf(l->db, sizeof l->db, "%s/catalog.db", f->tmp);
        assert_int_equal(mkdir(l->origin_dir, 0755), 0);
        snprintf(p, sizeof p, "%s/A", l->origin_dir);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(p, sizeof p, "%s/B", l->origin_dir);
        assert_int_equal(mkdir(p, 0755), 0);
        assert_int_equal(catalog_open(l->db, &l->catalog), 0);
        assert_int_equal(template_parse("{album}/{track:02} - {title}.{ext}", &l->tpl, &reason), 0);
        free(reason);
        assert_int_equal(catalog_origin_ensure(l->catalog, "local", l->origin_dir, 1, &l->origin_id), 0);
        library_write(f, l, 3);

        assert_int_equal(origin_local_new("local", l->origin_dir, 1, &o), 0);
        o->id = l->origin_id;
        assert_int_equal(origin_set_add(f->origins, o), 0);
}

static void library_done(Library *l) {
        tree_unref(l->tree);
        catalog_close(l->catalog);
        template_free(l->tpl);
}

static const TreeNode *lib_node(Library *l, const char *path) {
        const TreeNode *n = tree_get(l->tree, TREE_ROOT_INO);
        char buf[256], *save = NULL;
        snprintf(buf, sizeof buf, "%s", path);
        for (char *c = strtok_r(buf, "/", &save); c && n; c = strtok_r(NULL, "/", &save))
                n = tree_lookup(l->tree, n->ino, c);
        assert_non_null(n);
        return n;
}

static bool version_complete(Cache *c, const TreeNode *n) {
        _cleanup_free_ char *key = cache_version_key(n);
        uint64_t missing = 0;
        assert_non_null(key);
        int r = cache_version_complete(c, key, &missing);
        assert_true(r >= 0);
        return r > 0;
}

/* Polls until the pin progress is complete and equals want_total. */
static bool wait_pins_done(Cache *c, uint64_t want_total, unsigned timeout_ms) {
        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + timeout_ms;
        CacheStats s;
        do {
                assert_int_equal(cache_get_stats(c, &s), 0);
                if (s.pin_bytes_total == want_total && s.pin_bytes_done == want_total)
                        return true;
                usleep(20000);
        } while ((now_usec(CLOCK_MONOTONIC) / 1000) < deadline);
        print_message("pin progress %" PRIu64 "/%" PRIu64 ", want %" PRIu64 "\n", s.pin_bytes_done, s.pin_bytes_total, want_total);
        return false;
}

static void test_pins(void **state) {
        Fixture *f = *state;
        Library l = {};
        const uint64_t a_bytes = lib_files[0].size + lib_files[1].size;
        const uint64_t budget = 800 * 1024;
        CacheStats s;

        library_setup(f, &l);
        open_cache(f, budget, 60);

        assert_int_equal(cache_pin(f->cache, l.tree, "Nope"), -ENOENT);
        assert_int_equal(cache_pin(f->cache, l.tree, "A/Nope"), -ENOENT);
        assert_int_equal(cache_pin(f->cache, l.tree, "A"), 0);
        assert_true(wait_pins_done(f->cache, a_bytes, 20000));
        assert_true(version_complete(f->cache, lib_node(&l, "A/01 - one.flac")));
        assert_true(version_complete(f->cache, lib_node(&l, "A/02 - two.flac")));
        /* Pinning the same path again does not count its bytes twice; B would pass the budget. */
        assert_int_equal(cache_pin(f->cache, l.tree, "A"), 0);
        assert_int_equal(cache_pin(f->cache, l.tree, "B"), -ENOSPC);
        assert_int_equal(cache_pin(f->cache, l.tree, "B/01 - three.flac"), -ENOSPC);
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.pins, 1);
        assert_true(s.pinned_bytes >= a_bytes);        /* every chunk of both files, stored */

        /* Pressure far past the budget: the pinned versions stay complete. */
        for (unsigned i = 0; i < 60; i++)
                store_chunk(f->cache, 9000 + i, CHUNK, now_usec(CLOCK_REALTIME));
        assert_true(atomic_load(&f->cache->evictions) > 0);
        assert_true(stored_bytes(f->cache) <= budget + budget / 20);
        assert_true(version_complete(f->cache, lib_node(&l, "A/01 - one.flac")));
        assert_true(version_complete(f->cache, lib_node(&l, "A/02 - two.flac")));

        /* A file added under the pinned directory is pinned and fetched by the refresh. */
        library_write(f, &l, 4);
        assert_int_equal(cache_pins_refresh(f->cache, l.tree), 0);
        assert_true(wait_pins_done(f->cache, a_bytes + lib_files[3].size, 20000));
        assert_true(version_complete(f->cache, lib_node(&l, "A/03 - four.flac")));

        /* A tree without the path keeps the pin. */
        Tree *empty = NULL;
        assert_int_equal(tree_new_empty(&empty), 0);
        assert_int_equal(cache_pins_refresh(f->cache, empty), 0);
        assert_int_equal(cache_pins_refresh(f->cache, empty), 0);
        tree_unref(empty);
        char **pins = NULL;
        assert_int_equal(cache_list_pins(f->cache, &pins), 0);
        assert_string_equal(pins[0], "A");
        assert_null(pins[1]);
        free(pins[0]);
        free(pins);

        /* The pin survives a restart. */
        close_cache(f);
        open_cache(f, budget, 60);
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.pins, 1);
        assert_int_equal(cache_pins_refresh(f->cache, l.tree), 0);
        assert_true(wait_pins_done(f->cache, a_bytes + lib_files[3].size, 20000));

        assert_int_equal(cache_unpin(f->cache, "A"), 0);
        assert_int_equal(cache_unpin(f->cache, "A"), -ENOENT);
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.pins, 0);
        assert_int_equal(s.pinned_chunks, 0);
        assert_int_equal(s.pin_bytes_total, 0);
        /* Whole library: "" is the root; now B fits. */
        assert_int_equal(cache_pin(f->cache, l.tree, "B"), 0);
        assert_int_equal(cache_pin(f->cache, l.tree, ""), -ENOSPC);

        close_cache(f);
        library_done(&l);
}

/* The index breaks under a running cache and cannot even be reopened: passthrough on, then the
 * maintenance thread moves it aside and rebuilds it from the chunk files, and passthrough goes off. */
static void test_index_rebuilt_at_runtime(void **state) {
        Fixture *f = *state;
        ChunkRef refs[4];

        open_cache(f, 64 << 20, 60);
        for (unsigned i = 0; i < 4; i++)
                refs[i] = store_chunk(f->cache, i, CHUNK, now_usec(CLOCK_REALTIME));
        /* A reopen that works is all it takes for an index that is fine on disk. */
        cache_disk_failed(f->cache, -ENOTRECOVERABLE);
        assert_false(cache_passthrough(f->cache));
        assert_true(is_stored(f->cache, &refs[0]));

        garbage_index(f);
        cache_disk_failed(f->cache, -ENOTRECOVERABLE);
        assert_int_equal(reason(f->cache), CACHE_PASSTHROUGH_IO_ERROR);
        assert_false(cache_writes_allowed(f->cache));
        /* Stats and verify answer, without an index to speak of. */
        CacheStats s;
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_true(s.passthrough);

        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_NONE, 15000));
        for (unsigned i = 0; i < 4; i++)
                assert_true(is_stored(f->cache, &refs[i]));
        assert_int_equal(count_aside(f, "index.mdb.corrupt-"), 1);
        store_chunk(f->cache, 99, CHUNK, now_usec(CLOCK_REALTIME));
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.chunks, 5);
}

/* A cache disk that is read-only from the start: the open still succeeds, in passthrough, with no
 * store and no index; every call copes; the health probe brings both up once the disk is writable. */
static void test_open_on_read_only_disk(void **state) {
        Fixture *f = *state;
        CacheStats s;
        CacheVerifyResult v;
        char **pins = NULL;
        ChunkId id = {};

        mount_small_tmpfs_at(f, f->dir);
        remount(f, true);
        open_cache(f, 64 << 20, 1);
        assert_int_equal(reason(f->cache), CACHE_PASSTHROUGH_READ_ONLY);
        assert_null(f->cache->index);
        assert_false(cache_writes_allowed(f->cache));
        assert_int_equal(cache_get_stats(f->cache, &s), 0);
        assert_int_equal(s.chunks, 0);
        assert_true(s.passthrough);
        assert_int_equal(cache_clear(f->cache), -EROFS);
        assert_int_equal(cache_verify(f->cache, true, &v), -EROFS);
        assert_int_equal(cache_unpin(f->cache, "A"), -EROFS);
        assert_int_equal(cache_list_pins(f->cache, &pins), 0);
        assert_null(pins[0]);
        free(pins);
        cache_note_access(f->cache, &id);
        cache_note_stored(f->cache, 1000);
        cache_disk_failed(f->cache, -ENOTRECOVERABLE);
        assert_int_equal(cache_set_passthrough(f->cache, true), 0);
        assert_int_equal(cache_set_passthrough(f->cache, false), 0);
        assert_true(cache_passthrough(f->cache));

        remount(f, false);
        assert_true(wait_reason(f->cache, CACHE_PASSTHROUGH_NONE, 15000));
        assert_non_null(f->cache->index);
        assert_non_null(f->cache->store);
        ChunkRef a = store_chunk(f->cache, 1, CHUNK, now_usec(CLOCK_REALTIME));
        assert_true(is_stored(f->cache, &a));
        close_cache(f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_open_close_reopen, setup, teardown),
                cmocka_unit_test_setup_teardown(test_budget_lru, setup, teardown),
                cmocka_unit_test_setup_teardown(test_touch_flush_before_eviction, setup, teardown),
                cmocka_unit_test_setup_teardown(test_touch_flush_waits_for_pause, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pinned_never_evicted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_access_times_survive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unclean_garbage_index, setup, teardown),
                cmocka_unit_test_setup_teardown(test_garbage_index_clean_start, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clean_marker, setup, teardown),
                cmocka_unit_test_setup_teardown(test_spot_check_drops_flipped, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disk_full_watermark, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disk_full_write, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_only_remount, setup, teardown),
                cmocka_unit_test_setup_teardown(test_open_on_read_only_disk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disk_failed_mapping, setup, teardown),
                cmocka_unit_test_setup_teardown(test_manual_passthrough, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clear_keeps_pinned, setup, teardown),
                cmocka_unit_test_setup_teardown(test_verify_repair, setup, teardown),
                cmocka_unit_test_setup_teardown(test_evict_failpoint, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pins, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_rebuilt_at_runtime, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
