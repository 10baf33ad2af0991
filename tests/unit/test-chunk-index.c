/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The chunk index (D7) on real LMDB files in temporary directories: versions and refcounts, dedup,
 * the stored/unstored lifecycle, LRU order, pins, clear, map growth up to its limit, reopen, the
 * out-of-process probe against damaged files, stale readers left by a killed process, records that
 * do not decode, and the commit failpoint. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "chunk-id.h"
#include "chunk-index.h"
#include "failpoint.h"
#include "macro.h"

typedef struct Fixture {
        char dir[64];
        char path[128];
        ChunkIndex *x;
        pid_t children[2];              /* test_stale_reader's, killed in teardown if a check failed */
} Fixture;

static ChunkId make_id(unsigned n) {
        char s[32];
        ChunkId id;
        snprintf(s, sizeof s, "chunk-%u", n);
        chunk_id_compute(s, strlen(s), &id);
        return id;
}

static ChunkRef make_ref(unsigned n) {
        return (ChunkRef) { .id = make_id(n), .size = 1000 + n };
}

static void rm_dir(const char *dir) {
        char p[192];
        const char *names[] = { "index.mdb", "index.mdb-lock", "copy.mdb", "copy.mdb-lock" };
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                snprintf(p, sizeof p, "%s/%s", dir, names[i]);
                (void) unlink(p);
        }
        (void) rmdir(dir);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-chunk-index-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof f->path, "%s/" CHUNK_INDEX_FILE, f->dir);
        assert_int_equal(chunk_index_open(f->path, NULL, &f->x), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        for (size_t i = 0; i < ELEMENTSOF(f->children); i++)
                if (f->children[i] > 0) {
                        (void) kill(f->children[i], SIGKILL);
                        (void) waitpid(f->children[i], NULL, 0);
                }
        chunk_index_close(f->x);
        rm_dir(f->dir);
        free(f);
        return 0;
}

static uint64_t refs_size(const ChunkRef *refs, size_t n) {
        uint64_t s = 0;
        for (size_t i = 0; i < n; i++)
                s += refs[i].size;
        return s;
}

static void put_version(ChunkIndex *x, const char *key, const ChunkRef *refs, size_t n) {
        assert_int_equal(chunk_index_version_put(x, key, refs_size(refs, n), refs, n), 0);
}

static void assert_version(ChunkIndex *x, const char *key, const ChunkRef *refs, size_t n) {
        _cleanup_free_ ChunkRef *got = NULL;
        uint64_t size = 0;
        size_t got_n = 0;
        assert_int_equal(chunk_index_version_get(x, key, &size, &got, &got_n), 0);
        assert_int_equal(got_n, n);
        assert_int_equal(size, refs_size(refs, n));
        for (size_t i = 0; i < n; i++) {
                assert_memory_equal(got[i].id.bytes, refs[i].id.bytes, CHUNK_ID_SIZE);
                assert_int_equal(got[i].size, refs[i].size);
        }
}

static ChunkInfo chunk_info(ChunkIndex *x, const ChunkRef *ref) {
        ChunkInfo info = {};
        assert_int_equal(chunk_index_chunk_get(x, &ref->id, &info), 0);
        return info;
}

static ChunkIndexTotals totals(ChunkIndex *x) {
        ChunkIndexTotals t = {};
        assert_int_equal(chunk_index_totals(x, &t), 0);
        return t;
}

static void assert_oldest(ChunkIndex *x, const ChunkRef *expect, size_t n) {
        ChunkRef got[16];
        size_t got_n = 99;
        assert_int_equal(chunk_index_oldest_unpinned(x, got, ELEMENTSOF(got), &got_n), 0);
        assert_int_equal(got_n, n);
        for (size_t i = 0; i < n; i++) {
                assert_memory_equal(got[i].id.bytes, expect[i].id.bytes, CHUNK_ID_SIZE);
                assert_int_equal(got[i].size, expect[i].size);
        }
}

static void test_version_refcounts(void **state) {
        Fixture *f = *state;
        ChunkRef c[3] = { make_ref(1), make_ref(2), make_ref(3) };
        _cleanup_free_ ChunkRef *none = NULL;

        assert_int_equal(chunk_index_chunks_add(f->x, c, 3, 100), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 0);

        assert_int_equal(chunk_index_version_get(f->x, "v1:1", NULL, &none, NULL), -ENOENT);
        put_version(f->x, "v1:1", c, 2);
        assert_version(f->x, "v1:1", c, 2);
        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 1);
        assert_int_equal(chunk_info(f->x, &c[1]).refcount, 1);
        assert_int_equal(chunk_info(f->x, &c[2]).refcount, 0);
        assert_int_equal(totals(f->x).versions, 1);
        assert_int_equal(totals(f->x).version_bytes, refs_size(c, 2));

        /* Replace: c1 loses its reference, c3 gains one, c2 keeps one. */
        put_version(f->x, "v1:1", c + 1, 2);
        assert_version(f->x, "v1:1", c + 1, 2);
        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 0);
        assert_int_equal(chunk_info(f->x, &c[1]).refcount, 1);
        assert_int_equal(chunk_info(f->x, &c[2]).refcount, 1);
        assert_int_equal(totals(f->x).versions, 1);
        assert_int_equal(totals(f->x).version_bytes, refs_size(c + 1, 2));

        /* A size that is not the sum of the chunks is refused and changes nothing. */
        assert_int_equal(chunk_index_version_put(f->x, "v1:1", 5, c, 3), -EINVAL);
        assert_version(f->x, "v1:1", c + 1, 2);

        /* An empty file is a version with no chunks. */
        assert_int_equal(chunk_index_version_put(f->x, "v1:empty", 0, NULL, 0), 0);
        assert_version(f->x, "v1:empty", NULL, 0);

        assert_int_equal(chunk_index_version_drop(f->x, "v1:1"), 0);
        assert_int_equal(chunk_index_version_drop(f->x, "v1:1"), -ENOENT);
        assert_int_equal(chunk_index_version_get(f->x, "v1:1", NULL, NULL, NULL), -ENOENT);
        for (int i = 0; i < 3; i++)
                assert_int_equal(chunk_info(f->x, &c[i]).refcount, 0);
        /* Dropping a version leaves the stored chunks stored. */
        assert_int_equal(totals(f->x).chunks, 3);
        assert_int_equal(totals(f->x).bytes, refs_size(c, 3));
        assert_int_equal(totals(f->x).versions, 1);
        assert_int_equal(totals(f->x).version_bytes, 0);

        /* Keys longer than LMDB's key limit work (they are hashed). */
        char long_key[2048];
        memset(long_key, 'k', sizeof long_key - 1);
        long_key[sizeof long_key - 1] = 0;
        put_version(f->x, long_key, c, 3);
        assert_version(f->x, long_key, c, 3);
}

static void test_dedup(void **state) {
        Fixture *f = *state;
        ChunkRef c[4] = { make_ref(1), make_ref(2), make_ref(3), make_ref(4) };
        ChunkRef a[3] = { c[0], c[1], c[2] }, b[4] = { c[1], c[2], c[3], c[3] };

        put_version(f->x, "v1:a", a, 3);
        put_version(f->x, "v1:b", b, 4);
        assert_int_equal(chunk_index_chunks_add(f->x, c, 4, 100), 0);

        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 1);
        assert_int_equal(chunk_info(f->x, &c[1]).refcount, 2);
        assert_int_equal(chunk_info(f->x, &c[2]).refcount, 2);
        assert_int_equal(chunk_info(f->x, &c[3]).refcount, 2);  /* twice in one file */

        ChunkIndexTotals t = totals(f->x);
        assert_int_equal(t.chunks, 4);
        assert_int_equal(t.bytes, refs_size(c, 4));     /* each stored once */
        assert_int_equal(t.versions, 2);
        assert_int_equal(t.version_bytes, refs_size(a, 3) + refs_size(b, 4));
        assert_true(t.version_bytes > t.bytes);
}

static void test_stored_lifecycle(void **state) {
        Fixture *f = *state;
        ChunkRef c[2] = { make_ref(1), make_ref(2) }, lone = make_ref(9);
        ChunkInfo info;

        put_version(f->x, "v1:v", c, 2);
        /* Named by a version but not stored: not found, not counted. */
        assert_int_equal(chunk_index_chunk_get(f->x, &c[0].id, &info), -ENOENT);
        assert_int_equal(totals(f->x).chunks, 0);
        assert_oldest(f->x, NULL, 0);

        assert_int_equal(chunk_index_chunks_add(f->x, c, 1, 500), 0);
        info = chunk_info(f->x, &c[0]);
        assert_int_equal(info.size, c[0].size);
        assert_int_equal(info.refcount, 1);
        assert_int_equal(info.pin_count, 0);
        assert_int_equal(info.last_access_usec, 500);
        assert_int_equal(totals(f->x).chunks, 1);
        assert_int_equal(totals(f->x).bytes, c[0].size);

        /* Adding it again only sets its last access. */
        assert_int_equal(chunk_index_chunks_add(f->x, c, 1, 600), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).last_access_usec, 600);
        assert_int_equal(totals(f->x).chunks, 1);

        assert_int_equal(chunk_index_chunk_remove(f->x, &c[0].id), 0);
        assert_int_equal(chunk_index_chunk_get(f->x, &c[0].id, &info), -ENOENT);
        assert_int_equal(chunk_index_chunk_remove(f->x, &c[0].id), -ENOENT);
        assert_int_equal(chunk_index_chunk_remove(f->x, &c[1].id), -ENOENT);
        assert_int_equal(totals(f->x).chunks, 0);
        assert_int_equal(totals(f->x).bytes, 0);
        assert_oldest(f->x, NULL, 0);
        /* The version still names it, and storing it again finds its reference. */
        assert_version(f->x, "v1:v", c, 2);
        assert_int_equal(chunk_index_chunks_add(f->x, c, 1, 700), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 1);

        /* A chunk nobody names lives while stored; once removed its record is gone. */
        assert_int_equal(chunk_index_chunks_add(f->x, &lone, 1, 800), 0);
        assert_int_equal(chunk_info(f->x, &lone).refcount, 0);
        assert_int_equal(chunk_index_chunk_remove(f->x, &lone.id), 0);
        put_version(f->x, "v1:w", &lone, 1);
        assert_int_equal(chunk_index_version_drop(f->x, "v1:w"), 0);
        assert_int_equal(chunk_index_chunks_add(f->x, &lone, 1, 900), 0);
        assert_int_equal(chunk_info(f->x, &lone).refcount, 0);
        assert_int_equal(totals(f->x).chunks, 2);
}

static void test_lru_touch(void **state) {
        Fixture *f = *state;
        ChunkRef c[3] = { make_ref(1), make_ref(2), make_ref(3) }, unknown = make_ref(77);
        ChunkRef got[2];
        size_t n = 0;

        for (int i = 0; i < 3; i++)
                assert_int_equal(chunk_index_chunks_add(f->x, &c[i], 1, 100 * (i + 1)), 0);
        assert_oldest(f->x, (ChunkRef[]) { c[0], c[1], c[2] }, 3);

        ChunkId ids[2] = { c[0].id, unknown.id };
        assert_int_equal(chunk_index_touch(f->x, ids, (uint64_t[]) { 400, 400 }, 2), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).last_access_usec, 400);
        assert_int_equal(chunk_index_chunk_get(f->x, &unknown.id, NULL), -ENOENT);
        assert_oldest(f->x, (ChunkRef[]) { c[1], c[2], c[0] }, 3);

        /* Touching with the same time twice leaves one lru entry. */
        assert_int_equal(chunk_index_touch(f->x, &c[1].id, (uint64_t[]) { 500 }, 1), 0);
        assert_int_equal(chunk_index_touch(f->x, &c[1].id, (uint64_t[]) { 500 }, 1), 0);
        assert_oldest(f->x, (ChunkRef[]) { c[2], c[0], c[1] }, 3);

        /* Each access keeps its own time within one batch, and a time older than the recorded one
         * (c[1] at 500) does not move a chunk back. */
        ChunkId batch[3] = { c[0].id, c[2].id, c[1].id };
        assert_int_equal(chunk_index_touch(f->x, batch, (uint64_t[]) { 700, 600, 450 }, 3), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).last_access_usec, 700);
        assert_int_equal(chunk_info(f->x, &c[2]).last_access_usec, 600);
        assert_int_equal(chunk_info(f->x, &c[1]).last_access_usec, 500);
        assert_oldest(f->x, (ChunkRef[]) { c[1], c[2], c[0] }, 3);
        /* Back to the order the rest of this test expects. */
        assert_int_equal(chunk_index_touch(f->x, batch, (uint64_t[]) { 900, 800, 1000 }, 3), 0);
        assert_oldest(f->x, (ChunkRef[]) { c[2], c[0], c[1] }, 3);

        assert_int_equal(chunk_index_oldest_unpinned(f->x, got, 2, &n), 0);
        assert_int_equal(n, 2);
        assert_memory_equal(got[0].id.bytes, c[2].id.bytes, CHUNK_ID_SIZE);
        assert_memory_equal(got[1].id.bytes, c[0].id.bytes, CHUNK_ID_SIZE);
}

typedef struct PinSeen {
        char paths[4][64];
        size_t n_keys[4];
        char first_key[4][64];
        size_t n;
} PinSeen;

static int pin_cb(const char *path, const char *const *keys, size_t n, void *userdata) {
        PinSeen *s = userdata;
        if (s->n >= 4)
                return -E2BIG;
        snprintf(s->paths[s->n], sizeof s->paths[0], "%s", path);
        s->n_keys[s->n] = n;
        snprintf(s->first_key[s->n], sizeof s->first_key[0], "%s", n > 0 ? keys[0] : "");
        s->n++;
        return 0;
}

static void test_pins(void **state) {
        Fixture *f = *state;
        ChunkRef c[4] = { make_ref(1), make_ref(2), make_ref(3), make_ref(4) };
        const char *album[] = { "v1:v", "v1:w" };
        const char *v_only[] = { "v1:v" };
        const char *unknown[] = { "v1:not-yet" };
        PinSeen seen = {};

        put_version(f->x, "v1:v", c, 2);
        put_version(f->x, "v1:w", c + 2, 1);
        for (int i = 0; i < 4; i++)
                assert_int_equal(chunk_index_chunks_add(f->x, &c[i], 1, 100 * (i + 1)), 0);

        assert_int_equal(chunk_index_pin_put(f->x, "Artist/Album", v_only, 1), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[1]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[2]).pin_count, 0);
        assert_oldest(f->x, (ChunkRef[]) { c[2], c[3] }, 2);
        ChunkIndexTotals t = totals(f->x);
        assert_int_equal(t.pins, 1);
        assert_int_equal(t.pinned_chunks, 2);
        assert_int_equal(t.pinned_bytes, refs_size(c, 2));
        assert_int_equal(t.chunks, 4);

        /* Pinning the path again replaces its list: no double counts. */
        assert_int_equal(chunk_index_pin_put(f->x, "Artist/Album", album, 2), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[2]).pin_count, 1);
        assert_oldest(f->x, (ChunkRef[]) { c[3] }, 1);
        assert_int_equal(totals(f->x).pinned_chunks, 3);

        /* A second pin on the same version counts separately. */
        assert_int_equal(chunk_index_pin_put(f->x, "Artist/Album/01.flac", v_only, 1), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 2);
        assert_int_equal(totals(f->x).pins, 2);
        /* A version not known yet pins nothing. */
        assert_int_equal(chunk_index_pin_put(f->x, "Other", unknown, 1), 0);
        assert_int_equal(totals(f->x).pinned_chunks, 3);

        assert_int_equal(chunk_index_pins_foreach(f->x, pin_cb, &seen), 0);
        assert_int_equal(seen.n, 3);
        size_t album_seen = 0;
        for (size_t i = 0; i < seen.n; i++)
                if (streq_ptr(seen.paths[i], "Artist/Album")) {
                        album_seen++;
                        assert_int_equal(seen.n_keys[i], 2);
                        assert_string_equal(seen.first_key[i], "v1:v");
                }
        assert_int_equal(album_seen, 1);

        assert_int_equal(chunk_index_pin_drop(f->x, "Artist/Album"), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[2]).pin_count, 0);
        assert_oldest(f->x, (ChunkRef[]) { c[2], c[3] }, 2);
        assert_int_equal(chunk_index_pin_drop(f->x, "Artist/Album"), -ENOENT);

        /* A pinned version replaced keeps its chunks' pin counts until the pin goes. */
        put_version(f->x, "v1:v", c + 3, 1);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 0);
        assert_int_equal(chunk_index_pin_drop(f->x, "Artist/Album/01.flac"), 0);
        assert_int_equal(chunk_index_pin_drop(f->x, "Other"), 0);
        for (int i = 0; i < 4; i++)
                assert_int_equal(chunk_info(f->x, &c[i]).pin_count, 0);
        assert_oldest(f->x, c, 4);
        t = totals(f->x);
        assert_int_equal(t.pins, 0);
        assert_int_equal(t.pinned_chunks, 0);
        assert_int_equal(t.pinned_bytes, 0);

        /* Pinning chunks that are not stored yet counts them when they arrive. */
        assert_int_equal(chunk_index_chunk_remove(f->x, &c[3].id), 0);
        assert_int_equal(chunk_index_pin_put(f->x, "P", v_only, 1), 0);
        assert_int_equal(totals(f->x).pinned_chunks, 0);
        assert_int_equal(chunk_index_chunks_add(f->x, &c[3], 1, 999), 0);
        assert_int_equal(chunk_info(f->x, &c[3]).pin_count, 1);
        assert_int_equal(totals(f->x).pinned_chunks, 1);
        assert_oldest(f->x, c, 3);

        /* Pinned before its version is known (pin, then fill): recording the version pins it, and
         * unpinning takes that back. */
        const char *late[] = { "v1:late", "v1:v" };
        assert_int_equal(chunk_index_pin_put(f->x, "Later", late, 2), 0);
        assert_int_equal(chunk_info(f->x, &c[3]).pin_count, 2);
        put_version(f->x, "v1:late", c, 2);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[1]).pin_count, 1);
        assert_oldest(f->x, c + 2, 1);
        assert_int_equal(totals(f->x).pinned_chunks, 3);
        assert_int_equal(chunk_index_pin_drop(f->x, "Later"), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 0);
        assert_int_equal(chunk_info(f->x, &c[3]).pin_count, 1);
        /* The dropped pin no longer reaches versions recorded after it. */
        assert_int_equal(chunk_index_version_drop(f->x, "v1:late"), 0);
        put_version(f->x, "v1:late", c, 2);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 0);
        assert_int_equal(chunk_index_pin_drop(f->x, "P"), 0);
        assert_int_equal(totals(f->x).pinned_chunks, 0);
        assert_oldest(f->x, c, 4);

        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(chunk_index_probe(f->path), 0);
}

typedef struct Collected {
        ChunkId ids[16];
        size_t n;
        unsigned fail_at;               /* 1-based call that fails; 0 none */
} Collected;

static int collect_cb(const ChunkId *id, const ChunkInfo *info, void *userdata) {
        Collected *c = userdata;
        assert_int_equal(info->pin_count, 0);
        if (c->n >= ELEMENTSOF(c->ids))
                return -E2BIG;
        c->ids[c->n++] = *id;
        if (c->fail_at && c->n == c->fail_at)
                return -EBUSY;
        return 0;
}

static void test_clear_unpinned(void **state) {
        Fixture *f = *state;
        ChunkRef c[4] = { make_ref(1), make_ref(2), make_ref(3), make_ref(4) };
        const char *v_only[] = { "v1:v" };
        Collected col = { .fail_at = 2 };

        put_version(f->x, "v1:v", c, 2);
        put_version(f->x, "v1:w", c + 2, 2);
        for (int i = 0; i < 4; i++)
                assert_int_equal(chunk_index_chunks_add(f->x, &c[i], 1, 100 * (i + 1)), 0);
        assert_int_equal(chunk_index_pin_put(f->x, "Album", v_only, 1), 0);

        /* The second callback fails: that chunk keeps its record, the call reports the error. */
        assert_int_equal(chunk_index_clear_unpinned(f->x, collect_cb, &col), -EBUSY);
        assert_int_equal(col.n, 2);
        assert_memory_equal(col.ids[0].bytes, c[2].id.bytes, CHUNK_ID_SIZE);
        assert_memory_equal(col.ids[1].bytes, c[3].id.bytes, CHUNK_ID_SIZE);
        assert_int_equal(chunk_index_chunk_get(f->x, &c[2].id, NULL), -ENOENT);
        assert_int_equal(chunk_info(f->x, &c[3]).refcount, 1);

        col = (Collected) {};
        assert_int_equal(chunk_index_clear_unpinned(f->x, collect_cb, &col), 0);
        assert_int_equal(col.n, 1);
        assert_int_equal(chunk_index_chunk_get(f->x, &c[3].id, NULL), -ENOENT);
        assert_int_equal(chunk_info(f->x, &c[0]).pin_count, 1);
        assert_int_equal(chunk_info(f->x, &c[1]).pin_count, 1);

        ChunkIndexTotals t = totals(f->x);
        assert_int_equal(t.chunks, 2);
        assert_int_equal(t.bytes, refs_size(c, 2));
        assert_int_equal(t.pinned_chunks, 2);
        assert_int_equal(t.versions, 2);
        assert_int_equal(t.pins, 1);
        assert_version(f->x, "v1:w", c + 2, 2);
        assert_oldest(f->x, NULL, 0);
}

typedef struct Sum {
        uint64_t n, bytes;
} Sum;

static int sum_cb(const ChunkId *id, const ChunkInfo *info, void *userdata) {
        Sum *s = userdata;
        s->n++;
        s->bytes += info->size;
        return 0;
}

/* n versions of per chunks each, every chunk distinct, all stored; keys "v1:%u". */
static void populate(ChunkIndex *x, unsigned first, unsigned n, unsigned per) {
        _cleanup_free_ ChunkRef *refs = calloc(per, sizeof *refs);
        assert_non_null(refs);
        for (unsigned v = first; v < first + n; v++) {
                char key[32];
                for (unsigned j = 0; j < per; j++)
                        refs[j] = make_ref(v * per + j);
                snprintf(key, sizeof key, "v1:%u", v);
                put_version(x, key, refs, per);
                assert_int_equal(chunk_index_chunks_add(x, refs, per, 1000 + v), 0);
        }
}

static void assert_populated(ChunkIndex *x, unsigned first, unsigned n, unsigned per) {
        _cleanup_free_ ChunkRef *refs = calloc(per, sizeof *refs);
        assert_non_null(refs);
        for (unsigned v = first; v < first + n; v++) {
                char key[32];
                for (unsigned j = 0; j < per; j++)
                        refs[j] = make_ref(v * per + j);
                snprintf(key, sizeof key, "v1:%u", v);
                assert_version(x, key, refs, per);
                assert_int_equal(chunk_info(x, &refs[per - 1]).refcount, 1);
        }
}

static void test_totals_foreach(void **state) {
        Fixture *f = *state;
        Sum s = {};

        populate(f->x, 0, 5, 7);
        assert_int_equal(chunk_index_chunks_foreach(f->x, sum_cb, &s), 0);
        ChunkIndexTotals t = totals(f->x);
        assert_int_equal(t.chunks, 35);
        assert_int_equal(s.n, 35);
        assert_int_equal(s.bytes, t.bytes);
        assert_int_equal(t.versions, 5);
        assert_int_equal(t.version_bytes, t.bytes);
}

static off_t file_size(const char *path) {
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        return st.st_size;
}

static void test_map_growth(void **state) {
        Fixture *f = *state;
        ChunkIndexOptions opts = { .initial_map_size = 64 * 1024, .max_map_size = 64 << 20 };

        chunk_index_close(f->x);
        f->x = NULL;
        rm_dir(f->dir);
        assert_int_equal(mkdir(f->dir, 0700), 0);
        assert_int_equal(chunk_index_open(f->path, &opts, &f->x), 0);

        /* 120 versions × 64 chunks: about 1.5 MiB of records, far past the first 64 KiB map. */
        populate(f->x, 0, 120, 64);
        assert_true(file_size(f->path) > 4 * 64 * 1024);
        assert_populated(f->x, 0, 120, 64);
        ChunkIndexTotals t = totals(f->x);
        assert_int_equal(t.chunks, 120 * 64);
        assert_int_equal(t.versions, 120);

        /* The grown map survives a reopen and a close/open with the small initial size. */
        assert_int_equal(chunk_index_reopen(f->x), 0);
        assert_populated(f->x, 0, 120, 64);
        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(chunk_index_open(f->path, &opts, &f->x), 0);
        assert_populated(f->x, 0, 120, 64);
        populate(f->x, 120, 10, 64);
        assert_populated(f->x, 0, 130, 64);
        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(chunk_index_probe(f->path), 0);
}

typedef struct Reader {
        ChunkIndex *x;
        atomic_bool *stop;
        unsigned reads, errors;
} Reader;

static void *reader_thread(void *userdata) {
        Reader *r = userdata;
        for (unsigned i = 0; i < 200000 && !atomic_load(r->stop); i++) {
                char key[32];
                ChunkIndexTotals t;
                ChunkRef *refs = NULL;
                size_t n;
                snprintf(key, sizeof key, "v1:%u", i % 40);
                int q = chunk_index_version_get(r->x, key, NULL, &refs, &n);
                if ((q < 0 && q != -ENOENT) || (q == 0 && n != 64))
                        r->errors++;
                free(refs);
                /* Each version is put, then its chunks stored: a snapshot never has more. */
                if (chunk_index_totals(r->x, &t) < 0 || t.bytes > t.version_bytes || t.chunks > t.versions * 64)
                        r->errors++;
                r->reads++;
        }
        return NULL;
}

/* Readers on other threads while the map grows under them (the resize waits for their
 * transactions, they wait for it). */
static void test_map_growth_concurrent(void **state) {
        Fixture *f = *state;
        ChunkIndexOptions opts = { .initial_map_size = 64 * 1024, .max_map_size = 64 << 20 };
        atomic_bool stop = false;
        Reader readers[2];
        pthread_t threads[2];

        chunk_index_close(f->x);
        f->x = NULL;
        rm_dir(f->dir);
        assert_int_equal(mkdir(f->dir, 0700), 0);
        assert_int_equal(chunk_index_open(f->path, &opts, &f->x), 0);
        for (int i = 0; i < 2; i++) {
                readers[i] = (Reader) { .x = f->x, .stop = &stop };
                assert_int_equal(pthread_create(&threads[i], NULL, reader_thread, &readers[i]), 0);
        }
        populate(f->x, 0, 40, 64);
        atomic_store(&stop, true);
        for (int i = 0; i < 2; i++) {
                assert_int_equal(pthread_join(threads[i], NULL), 0);
                print_message("reader %d: %u reads\n", i, readers[i].reads);
                assert_int_equal(readers[i].errors, 0);
                assert_true(readers[i].reads > 0);
        }
        assert_populated(f->x, 0, 40, 64);
}

static void test_map_limit(void **state) {
        Fixture *f = *state;
        ChunkIndexOptions opts = { .initial_map_size = 64 * 1024, .max_map_size = 512 * 1024 };
        ChunkRef refs[64];
        unsigned ok = 0;
        int r = 0;

        chunk_index_close(f->x);
        f->x = NULL;
        rm_dir(f->dir);
        assert_int_equal(mkdir(f->dir, 0700), 0);
        assert_int_equal(chunk_index_open(f->path, &opts, &f->x), 0);

        for (unsigned v = 0; v < 1000; v++) {
                char key[32];
                for (unsigned j = 0; j < 64; j++)
                        refs[j] = make_ref(v * 64 + j);
                snprintf(key, sizeof key, "v1:%u", v);
                r = chunk_index_version_put(f->x, key, refs_size(refs, 64), refs, 64);
                if (r < 0)
                        break;
                ok++;
        }
        print_message("%u versions fit in 512 KiB\n", ok);
        assert_int_equal(r, -ENOSPC);
        assert_true(ok > 10);
        assert_true(file_size(f->path) <= 512 * 1024);

        /* The failed write left nothing; everything before it is there. */
        char key[32];
        snprintf(key, sizeof key, "v1:%u", ok);
        assert_int_equal(chunk_index_version_get(f->x, key, NULL, NULL, NULL), -ENOENT);
        assert_int_equal(totals(f->x).versions, ok);
        for (unsigned v = 0; v < ok; v++) {
                for (unsigned j = 0; j < 64; j++)
                        refs[j] = make_ref(v * 64 + j);
                snprintf(key, sizeof key, "v1:%u", v);
                assert_version(f->x, key, refs, 64);
        }
        /* A small write still fits: the limit stops what does not fit, not the index. (A write that
         * touches most pages may not, even a drop: LMDB copies each page it changes and the freed ones
         * come back only after the commit.) */
        for (unsigned j = 0; j < 4; j++)
                refs[j] = make_ref(999999 - j);
        assert_int_equal(chunk_index_version_put(f->x, "v1:again", refs_size(refs, 1), refs, 1), 0);
        assert_version(f->x, "v1:again", refs, 1);
        assert_int_equal(chunk_index_version_drop(f->x, "v1:0"), 0);
        assert_int_equal(chunk_index_version_get(f->x, "v1:0", NULL, NULL, NULL), -ENOENT);
        assert_int_equal(totals(f->x).versions, ok);
        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(chunk_index_probe(f->path), 0);
}

static void test_reopen_keeps_data(void **state) {
        Fixture *f = *state;

        populate(f->x, 0, 3, 4);
        assert_int_equal(chunk_index_pin_put(f->x, "A", (const char *[]) { "v1:1" }, 1), 0);
        ChunkIndexTotals before = totals(f->x);
        assert_int_equal(chunk_index_reopen(f->x), 0);
        assert_populated(f->x, 0, 3, 4);
        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(chunk_index_probe(f->path), 0);
        assert_int_equal(chunk_index_open(f->path, NULL, &f->x), 0);
        assert_populated(f->x, 0, 3, 4);
        ChunkIndexTotals after = totals(f->x);
        assert_memory_equal(&before, &after, sizeof before);
        assert_int_equal(after.pinned_chunks, 4);

        /* A lock file with garbage in it (left by some crash) is rebuilt by the first opener. */
        char lock[160];
        chunk_index_close(f->x);
        f->x = NULL;
        snprintf(lock, sizeof lock, "%s-lock", f->path);
        int fd = open(lock, O_WRONLY | O_TRUNC | O_CLOEXEC);
        assert_true(fd >= 0);
        char junk[8192];
        memset(junk, 0xA5, sizeof junk);
        assert_int_equal(write(fd, junk, sizeof junk), (ssize_t) sizeof junk);
        close(fd);
        assert_int_equal(chunk_index_probe(f->path), 0);
        assert_int_equal(chunk_index_open(f->path, NULL, &f->x), 0);
        assert_populated(f->x, 0, 3, 4);
        populate(f->x, 3, 1, 4);
}

/* ---- damaged files ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint8_t rng_byte(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return (uint8_t) rng_state;
}

static void copy_file(const char *from, const char *to) {
        int in = open(from, O_RDONLY | O_CLOEXEC), out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        char buf[65536];
        ssize_t n;
        assert_true(in >= 0);
        assert_true(out >= 0);
        while ((n = read(in, buf, sizeof buf)) > 0)
                assert_int_equal(write(out, buf, n), n);
        assert_int_equal(n, 0);
        close(in);
        close(out);
}

static void scribble(const char *path, off_t from, off_t to) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        for (off_t o = from; o < to; o++) {
                uint8_t b = rng_byte();
                assert_int_equal(pwrite(fd, &b, 1, o), 1);
        }
        close(fd);
}

static void test_probe(void **state) {
        Fixture *f = *state;
        char copy[160];
        off_t size;
        ChunkIndex *y = NULL;

        populate(f->x, 0, 60, 20);
        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(chunk_index_probe(f->path), 0);
        size = file_size(f->path);
        print_message("probing damage to a %lld-byte index\n", (long long) size);
        snprintf(copy, sizeof copy, "%s/copy.mdb", f->dir);

        /* Missing: not damage, just absent. */
        assert_int_equal(chunk_index_probe(copy), -ENOENT);

        /* Garbage over the whole file: the probe says so, and open refuses it without crashing. */
        copy_file(f->path, copy);
        scribble(copy, 0, size);
        assert_int_equal(chunk_index_probe(copy), -EBADMSG);
        assert_int_equal(chunk_index_open(copy, NULL, &y), -EBADMSG);
        assert_null(y);

        /* Garbage over the two meta pages. */
        copy_file(f->path, copy);
        scribble(copy, 0, 8192);
        assert_int_equal(chunk_index_probe(copy), -EBADMSG);
        assert_int_equal(chunk_index_open(copy, NULL, &y), -EBADMSG);

        /* Truncated to half. */
        copy_file(f->path, copy);
        assert_int_equal(truncate(copy, size / 2), 0);
        assert_int_equal(chunk_index_probe(copy), -EBADMSG);

        /* Zero length. */
        assert_int_equal(truncate(copy, 0), 0);
        assert_int_equal(chunk_index_probe(copy), -EBADMSG);

        /* Random bytes over the middle half, where the records live. */
        copy_file(f->path, copy);
        scribble(copy, size / 4, size * 3 / 4);
        assert_int_equal(chunk_index_probe(copy), -EBADMSG);

        /* Single pages damaged, one at a time, through the file's data pages: every one the walk
         * reads is detected (pages on the free list are not read, and need not be). */
        unsigned detected = 0, pages = (unsigned) (size / 4096);
        for (unsigned p = 2; p < pages && p < 200; p++) {
                copy_file(f->path, copy);
                scribble(copy, (off_t) p * 4096, (off_t) p * 4096 + 4096);
                int r = chunk_index_probe(copy);
                if (r != 0 && r != -EBADMSG)
                        fail_msg("page %u: probe answered %d", p, r);
                detected += r == -EBADMSG;
        }
        print_message("%u of %u single damaged pages detected\n", detected, pages - 2);
        assert_true(detected > 0);

        /* The original is untouched and still good. */
        assert_int_equal(chunk_index_probe(f->path), 0);
        assert_int_equal(chunk_index_open(f->path, NULL, &f->x), 0);
        assert_populated(f->x, 0, 60, 20);
}

/* A record that does not decode is -EBADMSG from the call that reads it, and the probe finds it. */
static void test_bad_records(void **state) {
        Fixture *f = *state;
        ChunkRef c[2] = { make_ref(1), make_ref(2) };
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi chunks, versions;
        MDB_cursor *cur;
        MDB_val k, v;

        put_version(f->x, "v1:v", c, 2);
        assert_int_equal(chunk_index_chunks_add(f->x, c, 2, 100), 0);
        chunk_index_close(f->x);
        f->x = NULL;

        /* Damage two records with LMDB itself, so the file stays a valid environment. */
        assert_int_equal(mdb_env_create(&env), 0);
        assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
        assert_int_equal(mdb_env_open(env, f->path, MDB_NOSUBDIR, 0644), 0);
        assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
        assert_int_equal(mdb_dbi_open(txn, "chunks", 0, &chunks), 0);
        assert_int_equal(mdb_dbi_open(txn, "versions", 0, &versions), 0);
        k = (MDB_val) { .mv_size = CHUNK_ID_SIZE, .mv_data = c[0].id.bytes };
        v = (MDB_val) { .mv_size = 5, .mv_data = "short" };
        assert_int_equal(mdb_put(txn, chunks, &k, &v, 0), 0);
        assert_int_equal(mdb_cursor_open(txn, versions, &cur), 0);
        assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_FIRST), 0);
        _cleanup_free_ uint8_t *val = malloc(v.mv_size);
        assert_non_null(val);
        memcpy(val, v.mv_data, v.mv_size);
        val[8] ^= 0x01;         /* the file size no longer matches its chunks */
        MDB_val nv = { .mv_size = v.mv_size, .mv_data = val };
        assert_int_equal(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), 0);
        mdb_cursor_close(cur);
        assert_int_equal(mdb_txn_commit(txn), 0);
        mdb_env_close(env);

        assert_int_equal(chunk_index_probe(f->path), -EBADMSG);
        assert_int_equal(chunk_index_open(f->path, NULL, &f->x), 0);
        assert_int_equal(chunk_index_chunk_get(f->x, &c[0].id, NULL), -EBADMSG);
        assert_int_equal(chunk_index_version_get(f->x, "v1:v", NULL, NULL, NULL), -EBADMSG);
        assert_int_equal(chunk_info(f->x, &c[1]).size, c[1].size);
        /* Writes that meet a bad record fail cleanly. */
        assert_int_equal(chunk_index_version_put(f->x, "v1:v", 0, NULL, 0), -EBADMSG);
        assert_int_equal(chunk_index_touch(f->x, &c[0].id, (uint64_t[]) { 5 }, 1), -EBADMSG);
}

/* ---- stale readers ---- */

typedef struct ReaderCount {
        pid_t pid;
        int n;
} ReaderCount;

static int reader_line(const char *msg, void *ctx) {
        ReaderCount *rc = ctx;
        int pid;
        if (sscanf(msg, "%d", &pid) == 1 && pid == rc->pid)
                rc->n++;
        return 0;
}

static MDB_env *child_env(const char *path) {
        MDB_env *env;
        if (mdb_env_create(&env) != 0 || mdb_env_set_maxdbs(env, 8) != 0 ||
            mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOTLS, 0644) != 0)
                _exit(3);
        return env;
}

static char read_byte(int fd) {
        char ch = 0;
        assert_int_equal(read(fd, &ch, 1), 1);
        return ch;
}

static void test_stale_reader(void **state) {
        Fixture *f = *state;
        int a_pipe[2], b_up[2], b_down[2], status;
        pid_t a, b;

        populate(f->x, 0, 2, 3);
        chunk_index_close(f->x);
        f->x = NULL;
        assert_int_equal(pipe(a_pipe), 0);
        assert_int_equal(pipe(b_up), 0);
        assert_int_equal(pipe(b_down), 0);

        /* B keeps the environment open (so the lock table is not reset by the next opener) and counts
         * the reader slots of A on request. */
        b = fork();
        assert_true(b >= 0);
        if (b == 0) {
                MDB_env *env = child_env(f->path);
                ReaderCount rc = {};
                char cmd;
                if (write(b_up[1], "r", 1) != 1)
                        _exit(4);
                while (read(b_down[0], &cmd, 1) == 1 && cmd != 'q') {
                        if (read(b_down[0], &rc.pid, sizeof rc.pid) != sizeof rc.pid)
                                _exit(5);
                        rc.n = 0;
                        mdb_reader_list(env, reader_line, &rc);
                        char n = (char) ('0' + rc.n);
                        if (write(b_up[1], &n, 1) != 1)
                                _exit(6);
                }
                mdb_env_close(env);
                _exit(0);
        }
        f->children[0] = b;
        assert_int_equal(read_byte(b_up[0]), 'r');

        /* A opens a read transaction and dies holding it. */
        a = fork();
        assert_true(a >= 0);
        if (a == 0) {
                MDB_env *env = child_env(f->path);
                MDB_txn *txn;
                if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
                        _exit(7);
                if (write(a_pipe[1], "t", 1) != 1)
                        _exit(8);
                for (;;)
                        pause();
        }
        f->children[1] = a;
        assert_int_equal(read_byte(a_pipe[0]), 't');
        assert_int_equal(kill(a, SIGKILL), 0);
        assert_int_equal(waitpid(a, &status, 0), a);
        f->children[1] = 0;
        assert_true(WIFSIGNALED(status));

        assert_int_equal(write(b_down[1], "c", 1), 1);
        assert_int_equal(write(b_down[1], &a, sizeof a), (ssize_t) sizeof a);
        assert_int_equal(read_byte(b_up[0]), '1');     /* A's slot is left behind */

        assert_int_equal(chunk_index_open(f->path, NULL, &f->x), 0);
        assert_int_equal(write(b_down[1], "c", 1), 1);
        assert_int_equal(write(b_down[1], &a, sizeof a), (ssize_t) sizeof a);
        assert_int_equal(read_byte(b_up[0]), '0');     /* and cleared by the open */

        populate(f->x, 2, 2, 3);
        assert_populated(f->x, 0, 4, 3);

        assert_int_equal(write(b_down[1], "q", 1), 1);
        assert_int_equal(waitpid(b, &status, 0), b);
        f->children[0] = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        for (int i = 0; i < 2; i++) {
                close(a_pipe[i]);
                close(b_up[i]);
                close(b_down[i]);
        }
}

/* ---- failpoint ---- */

static void test_commit_failpoint(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        ChunkRef c[2] = { make_ref(1), make_ref(2) };
        const char *keys[] = { "v1:v" };

        put_version(f->x, "v1:v", c, 1);
        assert_int_equal(chunk_index_chunks_add(f->x, c, 1, 100), 0);
        ChunkIndexTotals before = totals(f->x);

        assert_int_equal(failpoint_arm("cache-index-commit", "return(EIO)", NULL), 0);
        assert_int_equal(chunk_index_version_put(f->x, "v1:v", refs_size(c, 2), c, 2), -EIO);
        assert_int_equal(chunk_index_version_put(f->x, "v1:w", refs_size(c, 2), c, 2), -EIO);
        assert_int_equal(chunk_index_chunks_add(f->x, c + 1, 1, 200), -EIO);
        assert_int_equal(chunk_index_touch(f->x, &c[0].id, (uint64_t[]) { 300 }, 1), -EIO);
        assert_int_equal(chunk_index_pin_put(f->x, "A", keys, 1), -EIO);
        assert_int_equal(chunk_index_chunk_remove(f->x, &c[0].id), -EIO);
        assert_int_equal(chunk_index_version_drop(f->x, "v1:v"), -EIO);
        assert_int_equal(chunk_index_clear_unpinned(f->x, NULL, NULL), -EIO);

        /* Reads still work, and nothing changed. */
        assert_version(f->x, "v1:v", c, 1);
        assert_int_equal(chunk_index_version_get(f->x, "v1:w", NULL, NULL, NULL), -ENOENT);
        assert_int_equal(chunk_index_chunk_get(f->x, &c[1].id, NULL), -ENOENT);
        ChunkInfo info = chunk_info(f->x, &c[0]);
        assert_int_equal(info.refcount, 1);
        assert_int_equal(info.pin_count, 0);
        assert_int_equal(info.last_access_usec, 100);
        ChunkIndexTotals after = totals(f->x);
        assert_memory_equal(&before, &after, sizeof before);

        assert_int_equal(failpoint_disarm("cache-index-commit"), 0);
        assert_int_equal(chunk_index_version_put(f->x, "v1:w", refs_size(c, 2), c, 2), 0);
        assert_int_equal(chunk_info(f->x, &c[0]).refcount, 2);
#endif
}

static void test_bad_arguments(void **state) {
        Fixture *f = *state;
        ChunkIndex *y = NULL;

        assert_int_equal(chunk_index_open(NULL, NULL, &y), -EINVAL);
        assert_int_equal(chunk_index_version_put(f->x, "", 0, NULL, 0), -EINVAL);
        assert_int_equal(chunk_index_version_put(f->x, NULL, 0, NULL, 0), -EINVAL);
        assert_int_equal(chunk_index_version_put(f->x, "k", 5, NULL, 1), -EINVAL);
        /* "" is the whole library: a pin like any other. */
        assert_int_equal(chunk_index_pin_put(f->x, "", NULL, 0), 0);
        assert_int_equal(chunk_index_pin_drop(f->x, ""), 0);
        assert_int_equal(chunk_index_pin_drop(f->x, ""), -ENOENT);
        assert_int_equal(chunk_index_pin_put(f->x, "p", (const char *[]) { "" }, 1), -EINVAL);
        assert_int_equal(chunk_index_pin_drop(f->x, "never"), -ENOENT);
        assert_int_equal(chunk_index_version_drop(f->x, "never"), -ENOENT);
        chunk_index_close(NULL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_version_refcounts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stored_lifecycle, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lru_touch, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pins, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clear_unpinned, setup, teardown),
                cmocka_unit_test_setup_teardown(test_totals_foreach, setup, teardown),
                cmocka_unit_test_setup_teardown(test_map_growth, setup, teardown),
                cmocka_unit_test_setup_teardown(test_map_growth_concurrent, setup, teardown),
                cmocka_unit_test_setup_teardown(test_map_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
                cmocka_unit_test_setup_teardown(test_probe, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_records, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stale_reader, setup, teardown),
                cmocka_unit_test_setup_teardown(test_commit_failpoint, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
