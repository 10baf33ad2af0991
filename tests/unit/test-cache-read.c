/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The read path of the chunk cache (D7, D8): a real cache (cache_open) in a temp dir over a real
 * local origin and a tree built from a real catalog. Bytes always equal the origin's, at random
 * offsets and sizes; a miss fills the file behind the reader and the filled file plays with its
 * origin gone; bad, missing and truncated chunks are fetched again; an origin changed under the same
 * size and mtime wins; readers share one handle from several threads; album read-ahead fills the next
 * track and is cancelled by a seek; passthrough reads the origin and writes nothing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache-internal.h"
#include "catalog.h"
#include "failpoint.h"
#include "macro.h"
#include "origin.h"
#include "time-util.h"
#include "tree.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define BIG_SIZE (5u * MiB + 333u)      /* not a multiple of any chunk size */
#define WAIT_MS 30000

DEFINE_TRIVIAL_CLEANUP_FUNC(CacheReader *, cache_reader_close);

typedef struct TestFile {
        const char *rel_path;
        const char *title;
        int track;
        size_t size;
        uint8_t salt;
} TestFile;

/* Album "A": sizes of every kind; album "B": four tracks for read-ahead. */
static const TestFile files[] = {
        { "A/empty.flac", "empty", 1, 0, 1 },
        { "A/one.flac", "one", 2, 1, 2 },
        { "A/small.flac", "small", 3, 100 * KiB, 3 },
        { "A/big.flac", "big", 4, BIG_SIZE, 4 },
        { "B/t1.flac", "t1", 1, 1 * MiB + 17, 5 },
        { "B/t2.flac", "t2", 2, 2 * MiB + 5, 6 },
        { "B/t3.flac", "t3", 3, 3 * MiB + 99, 7 },
        { "B/t4.flac", "t4", 4, 1 * MiB + 3, 8 },
};
#define N_FILES ELEMENTSOF(files)
enum { F_EMPTY, F_ONE, F_SMALL, F_BIG, F_T1, F_T2, F_T3, F_T4 };

typedef struct Fixture {
        char dir[64];
        char origin_dir[128];
        char cache_dir[128];
        char db[128];
        uint8_t *content[N_FILES];
        Catalog *catalog;
        Template *tpl;
        OriginSet *origins;
        Tree *tree;
        const TreeNode *node[N_FILES];
        Cache *cache;
} Fixture;

static uint8_t pattern_byte(uint64_t i, uint8_t salt) {
        uint64_t x = (i + salt * 7919u) * 0x9E3779B97F4A7C15ULL;
        return (uint8_t) (x >> 56) ^ (uint8_t) (x >> 23);
}

static void write_file(const char *path, const uint8_t *data, size_t size) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        if (size > 0)
                assert_int_equal(write(fd, data, size), (ssize_t) size);
        assert_int_equal(close(fd), 0);
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

static const TreeNode *find_node(const TreeNode *n, const char *rel_path) {
        if (!n->is_dir)
                return n->n_replicas > 0 && strcmp(n->replicas[0].rel_path, rel_path) == 0 ? n : NULL;
        for (size_t i = 0; i < n->n_children; i++) {
                const TreeNode *m = find_node(n->children[i], rel_path);
                if (m)
                        return m;
        }
        return NULL;
}

static void cache_start(Fixture *f, unsigned readahead_tracks) {
        CacheOptions opts = {
                .dir = f->cache_dir,
                .budget_bytes = 1024ull * MiB,
                .readahead_tracks = readahead_tracks,
        };
        assert_int_equal(cache_open(&opts, f->origins, NULL, NULL, &f->cache), 0);
        assert_false(cache_passthrough_active(f->cache));
}

static int setup_with(void **state, unsigned readahead_tracks) {
        Fixture *f = calloc(1, sizeof *f);
        char p[256];
        int64_t origin_id = 0, gen = 0;
        CatalogBatch *b = NULL;
        char *reason = NULL;

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-cache-read-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->origin_dir, sizeof f->origin_dir, "%s/origin", f->dir);
        snprintf(f->cache_dir, sizeof f->cache_dir, "%s/cache", f->dir);
        snprintf(f->db, sizeof f->db, "%s/catalog.db", f->dir);
        assert_int_equal(mkdir(f->origin_dir, 0755), 0);
        snprintf(p, sizeof p, "%s/A", f->origin_dir);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(p, sizeof p, "%s/B", f->origin_dir);
        assert_int_equal(mkdir(p, 0755), 0);

        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(template_parse("{album}/{track:02} - {title}.{ext}", &f->tpl, &reason), 0);
        assert_int_equal(catalog_origin_ensure(f->catalog, "local", f->origin_dir, 1, &origin_id), 0);

        assert_int_equal(catalog_scan_begin(f->catalog, origin_id, &gen), 0);
        assert_int_equal(catalog_batch_begin(f->catalog, &b), 0);
        for (size_t i = 0; i < N_FILES; i++) {
                struct stat st;
                f->content[i] = malloc(files[i].size + 1);
                assert_non_null(f->content[i]);
                for (size_t k = 0; k < files[i].size; k++)
                        f->content[i][k] = pattern_byte(k, files[i].salt);
                snprintf(p, sizeof p, "%s/%s", f->origin_dir, files[i].rel_path);
                write_file(p, f->content[i], files[i].size);
                assert_int_equal(stat(p, &st), 0);

                CatalogFile cf = {
                        .origin_id = origin_id,
                        .rel_path = (char *) files[i].rel_path,
                        .size = files[i].size,
                        .mtime_ns = (int64_t) st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
                        .format = (char *) "flac",
                        .parsed = true,
                        .tags = {
                                .title = (char *) files[i].title,
                                .artist = (char *) "Artist",
                                .album = (char *) (files[i].rel_path[0] == 'A' ? "A" : "B"),
                                .track = files[i].track,
                        },
                };
                assert_int_equal(catalog_batch_upsert(b, &cf, gen), 0);
        }
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_scan_finish(f->catalog, origin_id, gen, NULL), 0);

        CatalogFile *cfs = NULL;
        size_t n = 0;
        assert_int_equal(catalog_load_files(f->catalog, &cfs, &n), 0);
        assert_int_equal(n, N_FILES);
        assert_int_equal(tree_build(f->catalog, f->tpl, cfs, n, &f->tree), 0);
        catalog_files_free(cfs, n);
        for (size_t i = 0; i < N_FILES; i++) {
                f->node[i] = find_node(tree_get(f->tree, TREE_ROOT_INO), files[i].rel_path);
                assert_non_null(f->node[i]);
                assert_int_equal(f->node[i]->size, files[i].size);
        }

        Origin *o = NULL;
        assert_int_equal(origin_set_new(&f->origins), 0);
        assert_int_equal(origin_local_new("local", f->origin_dir, 1, &o), 0);
        o->id = origin_id;
        assert_int_equal(origin_set_add(f->origins, o), 0);

        cache_start(f, readahead_tracks);
        *state = f;
        return 0;
}

static int setup(void **state) {
        return setup_with(state, 0);
}

static int setup_readahead(void **state) {
        return setup_with(state, 1);
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[256];

#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        cache_close(f->cache);
        origin_set_free(f->origins);
        tree_unref(f->tree);
        catalog_close(f->catalog);
        template_free(f->tpl);
        for (size_t i = 0; i < N_FILES; i++)
                free(f->content[i]);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

/* Reads [offset, offset + size) through r and checks it against expected (the file is fsize long). */
static void assert_read(CacheReader *r, const uint8_t *expected, uint64_t fsize, uint64_t offset, size_t size) {
        _cleanup_free_ uint8_t *buf = malloc(size + 1);
        assert_non_null(buf);
        size_t want = offset >= fsize ? 0 : fsize - offset < size ? (size_t) (fsize - offset) : size;

        ssize_t n = cache_reader_read(r, buf, size, offset);
        assert_int_equal(n, (ssize_t) want);
        if (want > 0)
                assert_memory_equal(buf, expected + offset, want);
}

/* The whole file, in FUSE-sized reads. */
static void assert_read_all(CacheReader *r, const uint8_t *expected, uint64_t fsize) {
        for (uint64_t off = 0; off < fsize; off += 128 * KiB)
                assert_read(r, expected, fsize, off, 128 * KiB);
        assert_read(r, expected, fsize, fsize, 4096);
}

static char *key_of(const TreeNode *n) {
        char *k = cache_version_key(n);
        assert_non_null(k);
        return k;
}

static bool version_complete(Cache *c, const TreeNode *n) {
        _cleanup_free_ char *k = key_of(n);
        int r = cache_version_complete(c, k, NULL);
        assert_true(r >= 0);
        return r > 0;
}

static void wait_complete(Cache *c, const TreeNode *n) {
        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + WAIT_MS;
        while (!version_complete(c, n)) {
                assert_true((now_usec(CLOCK_MONOTONIC) / 1000) < deadline);
                sleep_ms(10);
        }
}

static void wait_fills_idle(Cache *c) {
        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + WAIT_MS, active, queued;
        for (;;) {
                cache_fills_counts(c, &active, &queued);
                if (active == 0 && queued == 0)
                        return;
                assert_true((now_usec(CLOCK_MONOTONIC) / 1000) < deadline);
                sleep_ms(10);
        }
}

/* Fills n completely: a first read misses and queues the fill behind it. */
static void fill(Fixture *f, size_t i) {
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[i], &r), 0);
        assert_read(r, f->content[i], files[i].size, 0, 4096);
        wait_complete(f->cache, f->node[i]);
}

/* The chunk list of a recorded version. */
static size_t version_chunks(Fixture *f, size_t i, ChunkRef **ret) {
        _cleanup_free_ char *k = key_of(f->node[i]);
        uint64_t size = 0;
        size_t n = 0;
        assert_int_equal(chunk_index_version_get(f->cache->index, k, &size, ret, &n), 0);
        assert_int_equal(size, files[i].size);
        return n;
}

static void chunk_file(Fixture *f, const ChunkId *id, char *buf, size_t size) {
        char hex[CHUNK_ID_HEX_SIZE];
        chunk_id_to_hex(id, hex);
        snprintf(buf, size, "%s/chunks/%.2s/%s", f->cache_dir, hex, hex);
}

static uint64_t offset_of(const ChunkRef *chunks, size_t k) {
        uint64_t o = 0;
        for (size_t i = 0; i < k; i++)
                o += chunks[i].size;
        return o;
}

static unsigned count_chunk_files(Fixture *f) {
        char p[256];
        unsigned n = 0;
        snprintf(p, sizeof p, "%s/chunks", f->cache_dir);
        DIR *d = opendir(p);
        if (!d)
                return 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                char sub[512];
                snprintf(sub, sizeof sub, "%s/%s", p, de->d_name);
                DIR *s = opendir(sub);
                if (!s)
                        continue;
                struct dirent *e;
                while ((e = readdir(s)))
                        if (strlen(e->d_name) == 64)
                                n++;
                closedir(s);
        }
        closedir(d);
        return n;
}

static void origin_away(Fixture *f, const char *album, char *moved, size_t size) {
        char p[256], probe[256];
        snprintf(p, sizeof p, "%s/%s", f->origin_dir, album);
        snprintf(moved, size, "%s/%s-away", f->dir, album);
        assert_int_equal(rename(p, moved), 0);
        snprintf(probe, sizeof probe, "%s/%s", f->origin_dir, files[album[0] == 'A' ? F_BIG : F_T2].rel_path);
        assert_int_equal(access(probe, F_OK), -1);
}

static void origin_back(Fixture *f, const char *album, const char *moved) {
        char p[256];
        snprintf(p, sizeof p, "%s/%s", f->origin_dir, album);
        assert_int_equal(rename(moved, p), 0);
}

static void test_bytes_identical(void **state) {
        Fixture *f = *state;
        unsigned seed = 12345;

        for (size_t i = F_EMPTY; i <= F_BIG; i++) {
                _cleanup_(cache_reader_closep) CacheReader *r = NULL;
                uint64_t fsize = files[i].size;

                assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[i], &r), 0);
                assert_read(r, f->content[i], fsize, 0, 128 * KiB);
                assert_read(r, f->content[i], fsize, fsize, 10);
                assert_read(r, f->content[i], fsize, fsize + 12345, 10);
                /* Random ranges while the fill runs behind the reader, then again from the cache. */
                for (unsigned round = 0; round < 2; round++) {
                        for (unsigned k = 0; k < 150; k++) {
                                uint64_t off = fsize > 0 ? (uint64_t) rand_r(&seed) % (fsize + 1) : 0;
                                size_t size = 1 + (size_t) rand_r(&seed) % (300 * KiB);
                                assert_read(r, f->content[i], fsize, off, size);
                        }
                        if (fsize > 0 && round == 0)
                                wait_complete(f->cache, f->node[i]);
                }
        }

        CacheStats st;
        assert_int_equal(cache_get_stats(f->cache, &st), 0);
        assert_true(st.hits > 0);
        assert_true(st.misses > 0);
        assert_int_equal(st.bad_chunks, 0);
}

static void test_fill_then_origin_gone(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        char moved[256];
        CacheStats before, after;

        assert_false(version_complete(f->cache, f->node[F_BIG]));
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_int_equal(cache_get_stats(f->cache, &before), 0);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 0, 128 * KiB);
        assert_int_equal(cache_get_stats(f->cache, &after), 0);
        assert_int_equal(after.misses, before.misses + 1);
        wait_complete(f->cache, f->node[F_BIG]);
        cache_reader_close(TAKE_PTR(r));

        /* The origin's files go away (the local origin holds its root directory open, so renaming
         * that would not take them away). */
        origin_away(f, "A", moved, sizeof moved);

        /* Opening and reading need no origin now. */
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_int_equal(cache_get_stats(f->cache, &before), 0);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
        unsigned seed = 99;
        for (unsigned k = 0; k < 100; k++) {
                uint64_t off = (uint64_t) rand_r(&seed) % BIG_SIZE;
                assert_read(r, f->content[F_BIG], BIG_SIZE, off, 1 + (size_t) rand_r(&seed) % (256 * KiB));
        }
        assert_int_equal(cache_get_stats(f->cache, &after), 0);
        assert_int_equal(after.misses, before.misses);
        assert_true(after.hits >= before.hits + 140);

        /* A missing chunk with no origin to fetch it from: EIO for the range that needs it, the rest
         * still plays. */
        _cleanup_free_ ChunkRef *chunks = NULL;
        size_t n = version_chunks(f, F_BIG, &chunks);
        assert_true(n > 3);
        char p[256];
        chunk_file(f, &chunks[2].id, p, sizeof p);
        assert_int_equal(unlink(p), 0);
        cache_reader_close(TAKE_PTR(r));
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        uint8_t buf[4096];
        assert_int_equal(cache_reader_read(r, buf, sizeof buf, offset_of(chunks, 2)), -EIO);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 0, 4096);
        assert_read(r, f->content[F_BIG], BIG_SIZE, offset_of(chunks, 3), 4096);

        /* The origin back: the chunk is served from it, and a refill of the file stores it again. */
        origin_back(f, "A", moved);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
        wait_complete(f->cache, f->node[F_BIG]);
        assert_true(access(p, F_OK) == 0);
}

/* While the fill runs, what it has stored is served from the cache; past it, from the origin. */
static void test_progress_served(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        CacheStats before, after;
        char *reason = NULL;

        /* The fill indexes its first 4 MiB batch, then stops before indexing the rest. */
        assert_int_equal(failpoint_arm("cache-index", "1*off->pause", &reason), 0);
        free(reason);
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 0, 128 * KiB);

        uint64_t deadline = (now_usec(CLOCK_MONOTONIC) / 1000) + WAIT_MS;
        for (;;) {
                assert_int_equal(cache_get_stats(f->cache, &before), 0);
                assert_read(r, f->content[F_BIG], BIG_SIZE, 64 * KiB, 128 * KiB);
                assert_int_equal(cache_get_stats(f->cache, &after), 0);
                if (after.hits == before.hits + 1)
                        break;
                assert_true((now_usec(CLOCK_MONOTONIC) / 1000) < deadline);
                sleep_ms(10);
        }
        assert_false(version_complete(f->cache, f->node[F_BIG]));

        /* A seek past the filled part: the origin, directly. */
        assert_int_equal(cache_get_stats(f->cache, &before), 0);
        assert_read(r, f->content[F_BIG], BIG_SIZE, BIG_SIZE - 1000, 128 * KiB);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 3 * MiB, 128 * KiB);
        assert_int_equal(cache_get_stats(f->cache, &after), 0);
        assert_int_equal(after.misses, before.misses + 1);
        assert_int_equal(after.hits, before.hits + 1);

        failpoint_disarm_all();
        wait_complete(f->cache, f->node[F_BIG]);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
#else
        skip();
#endif
}

typedef enum Damage { DAMAGE_FLIP, DAMAGE_DELETE, DAMAGE_TRUNCATE, DAMAGE_FIFO } Damage;

static void damage_and_read(Fixture *f, Damage d) {
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        _cleanup_free_ ChunkRef *chunks = NULL;
        CacheStats before, after;
        char p[256];

        fill(f, F_BIG);
        size_t n = version_chunks(f, F_BIG, &chunks);
        assert_true(n > 4);
        size_t k = n / 2;
        chunk_file(f, &chunks[k].id, p, sizeof p);

        if (d == DAMAGE_FLIP) {
                int fd = open(p, O_RDWR | O_CLOEXEC);
                assert_true(fd >= 0);
                uint8_t byte;
                assert_int_equal(pread(fd, &byte, 1, 100), 1);
                byte ^= 0x40;
                assert_int_equal(pwrite(fd, &byte, 1, 100), 1);
                assert_int_equal(close(fd), 0);
        } else if (d == DAMAGE_DELETE)
                assert_int_equal(unlink(p), 0);
        else if (d == DAMAGE_FIFO) {
                /* Opened without O_NONBLOCK, a FIFO with no writer would hang the read for good. */
                assert_int_equal(unlink(p), 0);
                assert_int_equal(mkfifo(p, 0644), 0);
        } else
                assert_int_equal(truncate(p, chunks[k].size / 2), 0);

        assert_int_equal(cache_get_stats(f->cache, &before), 0);
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
        assert_int_equal(cache_get_stats(f->cache, &after), 0);
        assert_int_equal(after.bad_chunks, before.bad_chunks + (d == DAMAGE_DELETE ? 0 : 1));
        /* One read needed the origin (the damaged chunk's); the others were hits. */
        assert_true(after.misses >= before.misses + 1 && after.misses <= before.misses + 2);

        /* Stored again, whole and verified: a bad chunk at once, a missing one by a refill. */
        wait_complete(f->cache, f->node[F_BIG]);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal(st.st_size, chunks[k].size);
        _cleanup_free_ uint8_t *buf = malloc(chunks[k].size);
        assert_non_null(buf);
        assert_int_equal(chunk_store_read(f->cache->store, &chunks[k].id, buf, chunks[k].size), (ssize_t) chunks[k].size);
        assert_memory_equal(buf, f->content[F_BIG] + offset_of(chunks, k), chunks[k].size);
        assert_true(version_complete(f->cache, f->node[F_BIG]));
}

static void test_flipped_byte(void **state) {
        damage_and_read(*state, DAMAGE_FLIP);
}

static void test_deleted_chunk(void **state) {
        damage_and_read(*state, DAMAGE_DELETE);
}

static void test_truncated_chunk(void **state) {
        damage_and_read(*state, DAMAGE_TRUNCATE);
}

static void test_fifo_chunk(void **state) {
        damage_and_read(*state, DAMAGE_FIFO);
}

static void test_origin_changed(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        _cleanup_free_ ChunkRef *chunks = NULL;
        char path[256], p[256];
        struct stat st;

        fill(f, F_BIG);
        size_t n = version_chunks(f, F_BIG, &chunks);
        assert_true(n > 4);

        /* Different bytes, same size, same mtime: the tree cannot tell. */
        snprintf(path, sizeof path, "%s/%s", f->origin_dir, files[F_BIG].rel_path);
        assert_int_equal(stat(path, &st), 0);
        _cleanup_free_ uint8_t *changed = malloc(BIG_SIZE);
        assert_non_null(changed);
        for (size_t i = 0; i < BIG_SIZE; i++)
                changed[i] = pattern_byte(i, 200);
        write_file(path, changed, BIG_SIZE);
        struct timespec times[2] = { st.st_atim, st.st_mtim };
        assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);

        /* While every chunk is there the cached version is what the reader gets; the chunk that has
         * to come from the origin again shows the change. */
        size_t k = n / 2;
        chunk_file(f, &chunks[k].id, p, sizeof p);
        assert_int_equal(unlink(p), 0);

        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        uint64_t off = offset_of(chunks, k);
        assert_read(r, changed, BIG_SIZE, off, chunks[k].size);
        /* The stale version is gone: from now on the origin's bytes, everywhere. */
        assert_read_all(r, changed, BIG_SIZE);
        assert_read(r, changed, BIG_SIZE, 0, 1000);

        /* The file is filled again with its new bytes, and a new reader plays those. */
        wait_complete(f->cache, f->node[F_BIG]);
        cache_reader_close(TAKE_PTR(r));
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_read_all(r, changed, BIG_SIZE);
}

typedef struct ThreadArgs {
        Fixture *f;
        CacheReader *r;
        unsigned seed;
        unsigned errors;
} ThreadArgs;

static void *reader_thread(void *userdata) {
        ThreadArgs *a = userdata;
        uint8_t *buf = malloc(256 * KiB);
        if (!buf) {
                a->errors++;
                return NULL;
        }
        for (unsigned k = 0; k < 300; k++) {
                uint64_t off = (uint64_t) rand_r(&a->seed) % BIG_SIZE;
                size_t size = 1 + (size_t) rand_r(&a->seed) % (256 * KiB);
                size_t want = BIG_SIZE - off < size ? (size_t) (BIG_SIZE - off) : size;
                ssize_t n = cache_reader_read(a->r, buf, size, off);
                if (n != (ssize_t) want || memcmp(buf, a->f->content[F_BIG] + off, want) != 0)
                        a->errors++;
        }
        free(buf);
        return NULL;
}

/* Thread i of n reads requests i, i + n, ... of 128 KiB in order: one handle read sequentially
 * by several threads at once, as the kernel's read-ahead sends its requests. */
static void *striped_reader_thread(void *userdata) {
        ThreadArgs *a = userdata;
        uint8_t *buf = malloc(128 * KiB);
        if (!buf) {
                a->errors++;
                return NULL;
        }
        for (uint64_t off = a->seed * 128 * KiB; off < BIG_SIZE; off += 4 * 128 * KiB) {
                size_t want = BIG_SIZE - off < 128 * KiB ? (size_t) (BIG_SIZE - off) : 128 * KiB;
                ssize_t n = cache_reader_read(a->r, buf, 128 * KiB, off);
                if (n != (ssize_t) want || memcmp(buf, a->f->content[F_BIG] + off, want) != 0)
                        a->errors++;
        }
        free(buf);
        return NULL;
}

static unsigned open_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        unsigned n = 0;
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));)
                n += de->d_name[0] != '.';
        closedir(d);
        return n;
}

static void test_concurrent_readers(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        pthread_t t[4];
        ThreadArgs args[4];
        unsigned fds_before = open_fds();

        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        /* Twice: while the fill runs behind them, and from the cache. */
        for (unsigned round = 0; round < 2; round++) {
                for (unsigned i = 0; i < 4; i++) {
                        args[i] = (ThreadArgs) { .f = f, .r = r, .seed = 1000 * round + i };
                        assert_int_equal(pthread_create(&t[i], NULL, reader_thread, &args[i]), 0);
                }
                for (unsigned i = 0; i < 4; i++) {
                        assert_int_equal(pthread_join(t[i], NULL), 0);
                        assert_int_equal(args[i].errors, 0);
                }
                if (round == 0)
                        wait_complete(f->cache, f->node[F_BIG]);
        }
        /* Sequential, striped over the threads, from the cache: prefetched files handed across them. */
        for (unsigned pass = 0; pass < 3; pass++) {
                cache_reader_close(TAKE_PTR(r));
                assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
                for (unsigned i = 0; i < 4; i++) {
                        args[i] = (ThreadArgs) { .f = f, .r = r, .seed = i };
                        assert_int_equal(pthread_create(&t[i], NULL, striped_reader_thread, &args[i]), 0);
                }
                for (unsigned i = 0; i < 4; i++) {
                        assert_int_equal(pthread_join(t[i], NULL), 0);
                        assert_int_equal(args[i].errors, 0);
                }
        }
        CacheStats st;
        assert_int_equal(cache_get_stats(f->cache, &st), 0);
        assert_int_equal(st.bad_chunks, 0);
        /* Every file a prefetch opened was read or closed with the reader. */
        cache_reader_close(TAKE_PTR(r));
        wait_fills_idle(f->cache);
        assert_int_equal(open_fds(), fds_before);
}

/* Reads the file sequentially up to fraction/10 of it. */
static void read_sequentially(Fixture *f, CacheReader *r, size_t i, unsigned tenths) {
        uint64_t upto = files[i].size * tenths / 10;
        for (uint64_t off = 0; off < upto; off += 128 * KiB)
                assert_read(r, f->content[i], files[i].size, off, 128 * KiB);
}

/* Chunk files of a cached file advised ahead of its reader: nothing past a first request (a tagger
 * reads 4 KiB and closes), then a window that grows with each sequential request; every chunk ahead
 * of the first advised exactly once by the end, and each chunk file opened once; a reader that
 * starts with a request over several chunks has them advised together. */
static uint64_t advised(Fixture *f) {
        return chunk_store_advised(f->cache->store);
}

static void test_prefetch_window(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        _cleanup_free_ ChunkRef *chunks = NULL;

        fill(f, F_BIG);
        size_t n = version_chunks(f, F_BIG, &chunks);
        assert_true(n > 20);

        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        uint64_t a0 = advised(f), o0 = chunk_store_opened(f->cache->store);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 0, 4096);
        assert_int_equal(advised(f), a0);

        /* The second, sequential request: a window of 256 KiB past it, so at most its chunks. */
        assert_read(r, f->content[F_BIG], BIG_SIZE, 4096, 4096);
        uint64_t a1 = advised(f) - a0;
        size_t in_window = 0;
        while (in_window < n && offset_of(chunks, in_window) < 8192 + 256 * KiB)
                in_window++;
        assert_true(a1 >= 1);
        assert_true(a1 <= in_window - 1);

        for (uint64_t off = 8192; off < BIG_SIZE; off += 128 * KiB)
                assert_read(r, f->content[F_BIG], BIG_SIZE, off, 128 * KiB);
        assert_int_equal(advised(f) - a0, n - 1);
        /* Each chunk file opened once: the reads use the files their prefetch opened. */
        assert_int_equal(chunk_store_opened(f->cache->store) - o0, n);
        cache_reader_close(TAKE_PTR(r));

        /* A first request over several chunks: those, together, and nothing past them. */
        size_t k = n / 2;
        uint64_t from = offset_of(chunks, k) + 1, to = offset_of(chunks, k + 3) - 1;
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        a0 = advised(f);
        assert_read(r, f->content[F_BIG], BIG_SIZE, from, (size_t) (to - from));
        assert_int_equal(advised(f) - a0, 3);
        /* A jump far away starts again with nothing past the request. */
        assert_read(r, f->content[F_BIG], BIG_SIZE, offset_of(chunks, 1), 4096);
        assert_int_equal(advised(f) - a0, 3);
}

/* A recorded version whose chunks are gone (ClearCache, an eviction): each request is served with one
 * origin read, not one per chunk. The origin answers one read and then fails, so a second one for the
 * same request would turn it into EIO; the refill queued behind the read is the only other reader.
 * (A local origin's worker reads at most 1 MiB at a time: the spans here stay below that.) */
static void read_with_one_origin_read(Fixture *f, uint64_t offset, size_t size) {
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        char *why = NULL;

        wait_fills_idle(f->cache);
        assert_int_equal(failpoint_arm("origin-read", "1*off->return(EIO)", &why), 0);
        free(why);
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_read(r, f->content[F_BIG], BIG_SIZE, offset, size);
        cache_reader_close(TAKE_PTR(r));
        wait_fills_idle(f->cache);
        assert_int_equal(failpoint_disarm("origin-read"), 0);
}

static void test_evicted_one_origin_read(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        _cleanup_free_ ChunkRef *chunks = NULL;
        CacheStats st;

        fill(f, F_BIG);
        size_t n = version_chunks(f, F_BIG, &chunks);
        assert_int_equal(cache_clear(f->cache), 0);
        assert_int_equal(cache_get_stats(f->cache, &st), 0);
        assert_int_equal(st.bytes, 0);
        _cleanup_free_ ChunkRef *kept = NULL;
        assert_int_equal(version_chunks(f, F_BIG, &kept), n);     /* the version is kept */

        read_with_one_origin_read(f, 0, 512 * KiB);
        read_with_one_origin_read(f, 2 * MiB + 1000, 300 * KiB);
        read_with_one_origin_read(f, BIG_SIZE - 100 * KiB, 128 * KiB);
        assert_false(version_complete(f->cache, f->node[F_BIG]));

        /* One reader, request after request: once it met evicted chunks, it asks the index first. */
        char *why = NULL;
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        for (uint64_t off = 0; off < 2 * MiB; off += 512 * KiB) {
                wait_fills_idle(f->cache);
                assert_int_equal(failpoint_arm("origin-read", "1*off->return(EIO)", &why), 0);
                why = mfree(why);
                assert_read(r, f->content[F_BIG], BIG_SIZE, off, 512 * KiB);
        }
        cache_reader_close(TAKE_PTR(r));
        wait_fills_idle(f->cache);
        assert_int_equal(failpoint_disarm("origin-read"), 0);

        /* The origin back to normal: a reader gets every byte and its refill stores the file again. */
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
        wait_complete(f->cache, f->node[F_BIG]);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
#else
        print_message("skipped: failpoints compiled out\n");
        skip();
#endif
}

static void test_readahead(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;

        /* Track 1 played past its middle: track 2 is fetched without anyone reading it. */
        fill(f, F_T1);
        assert_false(version_complete(f->cache, f->node[F_T2]));
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_T1], &r), 0);
        read_sequentially(f, r, F_T1, 3);
        wait_fills_idle(f->cache);
        assert_false(version_complete(f->cache, f->node[F_T2]));
        read_sequentially(f, r, F_T1, 10);
        wait_complete(f->cache, f->node[F_T2]);
        assert_false(version_complete(f->cache, f->node[F_T3]));
        cache_reader_close(TAKE_PTR(r));

        /* Track 2 plays from the cache with the origin gone. */
        char moved[256];
        origin_away(f, "B", moved, sizeof moved);
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_T2], &r), 0);
        assert_read_all(r, f->content[F_T2], files[F_T2].size);
        cache_reader_close(TAKE_PTR(r));
        origin_back(f, "B", moved);

#if MUSICFS_FAILPOINTS
        /* Slow chunk writes, so track 3's read-ahead is still under way when the reader of track 2
         * jumps back to its start: the read-ahead stops and track 3 is not recorded. */
        char *reason = NULL;
        assert_int_equal(failpoint_arm("cache-write", "sleep(20)", &reason), 0);
        free(reason);
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_T2], &r), 0);
        read_sequentially(f, r, F_T2, 6);
        uint64_t active = 0, queued = 0;
        cache_fills_counts(f->cache, &active, &queued);
        assert_int_equal(active + queued, 1);   /* queued by the read that passed the middle */
        assert_read(r, f->content[F_T2], files[F_T2].size, 0, 4096);        /* the seek */
        wait_fills_idle(f->cache);
        uint64_t missing = 0;
        _cleanup_free_ char *k3 = key_of(f->node[F_T3]);
        assert_int_equal(cache_version_complete(f->cache, k3, &missing), 0);
        assert_true(missing > 0);
        cache_reader_close(TAKE_PTR(r));

        /* Track 3 (not cached) played to 60 % and closed: the read-ahead of track 4 goes with it,
         * while track 3's own fill, behind its reader, runs on. */
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_T3], &r), 0);
        read_sequentially(f, r, F_T3, 6);
        cache_fills_counts(f->cache, &active, &queued);
        assert_int_equal(active + queued, 2);
        cache_reader_close(TAKE_PTR(r));
        wait_fills_idle(f->cache);
        assert_true(version_complete(f->cache, f->node[F_T3]));
        assert_false(version_complete(f->cache, f->node[F_T4]));
        failpoint_disarm_all();

        /* Played to the end this time: the read-ahead runs to completion, also after the close. */
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_T3], &r), 0);
        read_sequentially(f, r, F_T3, 10);
        cache_reader_close(TAKE_PTR(r));
        wait_complete(f->cache, f->node[F_T4]);
#endif
}

/* Offline: a reader whose origin reads failed plays on from the cache but fetches no next track. */
static void test_readahead_offline(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        _cleanup_free_ ChunkRef *chunks = NULL;
        uint64_t active = 0, queued = 0;
        char moved[256], p[256];
        uint8_t buf[4096];

        fill(f, F_T1);
        wait_fills_idle(f->cache);
        size_t n = version_chunks(f, F_T1, &chunks);
        assert_true(n > 2);
        chunk_file(f, &chunks[0].id, p, sizeof p);
        assert_int_equal(unlink(p), 0);
        /* Track 1 is gone from the origin, track 2 is still there: a read-ahead would fill it. */
        char path[256];
        snprintf(path, sizeof path, "%s/%s", f->origin_dir, files[F_T1].rel_path);
        snprintf(moved, sizeof moved, "%s/t1-away", f->dir);
        assert_int_equal(rename(path, moved), 0);

        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_T1], &r), 0);
        assert_int_equal(cache_reader_read(r, buf, sizeof buf, 0), -EIO);
        for (uint64_t off = offset_of(chunks, 1); off < files[F_T1].size; off += 128 * KiB)
                assert_read(r, f->content[F_T1], files[F_T1].size, off, 128 * KiB);
        cache_fills_counts(f->cache, &active, &queued);
        assert_int_equal(active + queued, 0);
        wait_fills_idle(f->cache);
        assert_false(version_complete(f->cache, f->node[F_T2]));
        assert_int_equal(rename(moved, path), 0);
}

static void test_passthrough(void **state) {
        Fixture *f = *state;
        _cleanup_(cache_reader_closep) CacheReader *r = NULL;
        CacheStats st;

        assert_int_equal(cache_set_passthrough(f->cache, true), 0);
        assert_true(cache_passthrough_active(f->cache));
        assert_int_equal(cache_reader_open(f->cache, f->tree, f->node[F_BIG], &r), 0);
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 4 * MiB + 7, 200 * KiB);
        wait_fills_idle(f->cache);
        assert_int_equal(count_chunk_files(f), 0);
        assert_false(version_complete(f->cache, f->node[F_BIG]));
        assert_int_equal(cache_get_stats(f->cache, &st), 0);
        assert_int_equal(st.hits, 0);
        assert_int_equal(st.chunks, 0);

        /* Passthrough off under an open reader: its next miss fills the file. */
        assert_int_equal(cache_set_passthrough(f->cache, false), 0);
        assert_read(r, f->content[F_BIG], BIG_SIZE, 0, 128 * KiB);
        wait_complete(f->cache, f->node[F_BIG]);
        assert_true(count_chunk_files(f) > 0);

        /* And on again: a cached file is read from the origin, not the chunks. */
        assert_int_equal(cache_set_passthrough(f->cache, true), 0);
        assert_int_equal(cache_get_stats(f->cache, &st), 0);
        uint64_t hits = st.hits;
        assert_read_all(r, f->content[F_BIG], BIG_SIZE);
        assert_int_equal(cache_get_stats(f->cache, &st), 0);
        assert_int_equal(st.hits, hits);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_bytes_identical, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fill_then_origin_gone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_progress_served, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flipped_byte, setup, teardown),
                cmocka_unit_test_setup_teardown(test_deleted_chunk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_truncated_chunk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_chunk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_origin_changed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_readers, setup, teardown),
                cmocka_unit_test_setup_teardown(test_prefetch_window, setup, teardown),
                cmocka_unit_test_setup_teardown(test_evicted_one_origin_read, setup, teardown),
                cmocka_unit_test_setup_teardown(test_readahead, setup_readahead, teardown),
                cmocka_unit_test_setup_teardown(test_readahead_offline, setup_readahead, teardown),
                cmocka_unit_test_setup_teardown(test_passthrough, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
