/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Chunk names and chunk files (D7) on real directories: SHA-256 known answers and hex forms; the
 * batch protocol (temporaries, one sync, renames) with dedup, abort and failpoints at each step;
 * verification on read (damaged files are refused and removed); cleanup of leftovers at open; the
 * walk; and the disk's own errors on a real 1 MiB tmpfs, full and read-only (as root; skipped
 * otherwise). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cdc.h"
#include "chunk-id.h"
#include "chunk-store.h"
#include "failpoint.h"
#include "macro.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(ChunkStore *, chunk_store_free);

typedef struct Fixture {
        char root[64];          /* mkdtemp */
        char dir[192];          /* root/chunks, or root/mnt/chunks on the tmpfs */
        char mnt[128];          /* root/mnt when a tmpfs is mounted there */
        bool mounted;
        ChunkStore *store;
} Fixture;

static uint64_t splitmix64(uint64_t *state) {
        uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

/* A chunk's bytes: size bytes from seed, and its id. */
typedef struct TestChunk {
        uint8_t *data;
        size_t size;
        ChunkId id;
        char hex[CHUNK_ID_HEX_SIZE];
} TestChunk;

static void test_chunk_make(TestChunk *c, size_t size, uint64_t seed) {
        c->data = malloc(size);
        assert_non_null(c->data);
        c->size = size;
        for (size_t i = 0; i < size; i += 8) {
                uint64_t v = splitmix64(&seed);
                memcpy(c->data + i, &v, size - i < 8 ? size - i : 8);
        }
        chunk_id_compute(c->data, size, &c->id);
        chunk_id_to_hex(&c->id, c->hex);
}

static void test_chunk_done(TestChunk *c) {
        free(c->data);
        *c = (TestChunk) {};
}

static void chunk_file(const Fixture *f, const TestChunk *c, char *ret, size_t size) {
        snprintf(ret, size, "%s/%.2s/%s", f->dir, c->hex, c->hex);
}

static bool exists(const char *path) {
        struct stat st;
        return lstat(path, &st) == 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) (flag == FTW_DP ? rmdir(path) : unlink(path));
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Names starting with ".tmp-" in the xx directories. */
static unsigned count_tmp(const char *dir) {
        unsigned n = 0;
        DIR *top = opendir(dir);
        assert_non_null(top);
        for (struct dirent *de; (de = readdir(top));) {
                if (de->d_name[0] == '.')
                        continue;
                char sub[512];
                snprintf(sub, sizeof sub, "%s/%s", dir, de->d_name);
                DIR *d = opendir(sub);
                if (!d)
                        continue;
                for (struct dirent *e; (e = readdir(d));)
                        n += strncmp(e->d_name, ".tmp-", 5) == 0;
                closedir(d);
        }
        closedir(top);
        return n;
}

static int walk_count(const ChunkId *id, uint64_t size, void *userdata) {
        (*(unsigned *) userdata)++;
        return 0;
}

static unsigned count_chunks(ChunkStore *s, uint64_t *ret_foreign) {
        unsigned n = 0;
        assert_int_equal(chunk_store_walk(s, walk_count, &n, ret_foreign), 0);
        return n;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->root, "/tmp/test-chunk-store-XXXXXX");
        assert_non_null(mkdtemp(f->root));
        snprintf(f->dir, sizeof f->dir, "%s/chunks", f->root);
        unsigned removed = 99;
        assert_int_equal(chunk_store_open(f->dir, &f->store, &removed), 0);
        assert_int_equal(removed, 0);
        assert_string_equal(chunk_store_dir(f->store), f->dir);
        failpoint_disarm_all();
        *state = f;
        return 0;
}

/* The store on a fresh 1 MiB tmpfs, for the disk's own errors. Skips unless we may mount. */
static void mount_small_tmpfs(Fixture *f) {
        if (geteuid() != 0)
                skip();         /* needs root to mount a tmpfs; the other tests cover the rest */

        chunk_store_free(TAKE_PTR(f->store));
        snprintf(f->mnt, sizeof f->mnt, "%s/mnt", f->root);
        assert_int_equal(mkdir(f->mnt, 0755), 0);
        if (mount("tmpfs", f->mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755") < 0) {
                if (errno == EPERM || errno == EACCES)
                        skip(); /* root without CAP_SYS_ADMIN (a container) */
                fail_msg("mount tmpfs: %s", strerror(errno));
        }
        f->mounted = true;
        snprintf(f->dir, sizeof f->dir, "%s/chunks", f->mnt);
        assert_int_equal(chunk_store_open(f->dir, &f->store, NULL), 0);
}

static int teardown(void **state) {
        Fixture *f = *state;

        failpoint_disarm_all();
        chunk_store_free(f->store);
        if (f->mounted && umount2(f->mnt, 0) < 0)
                assert_int_equal(umount2(f->mnt, MNT_DETACH), 0);
        rm_rf(f->root);
        free(f);
        return 0;
}

static void put(ChunkStore *s, const TestChunk *c) {
        ChunkBatch *b = NULL;
        assert_int_equal(chunk_batch_new(s, &b), 0);
        assert_int_equal(chunk_batch_add(b, &c->id, c->data, c->size), 0);
        assert_int_equal(chunk_batch_commit(b), 0);
}

static void assert_reads_back(ChunkStore *s, const TestChunk *c) {
        _cleanup_free_ uint8_t *buf = malloc(CDC_MAX_SIZE);
        assert_non_null(buf);
        assert_int_equal(chunk_store_read(s, &c->id, buf, CDC_MAX_SIZE), (ssize_t) c->size);
        assert_memory_equal(buf, c->data, c->size);
}

/* ---- chunk ids ------------------------------------------------------------------------------- */

static void test_chunk_id(void **state) {
        /* FIPS 180-2 known answers. */
        ChunkId id, back;
        char hex[CHUNK_ID_HEX_SIZE];

        chunk_id_compute("abc", 3, &id);
        chunk_id_to_hex(&id, hex);
        assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        chunk_id_compute("", 0, &id);
        chunk_id_to_hex(&id, hex);
        assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

        assert_true(chunk_id_matches(&id, "", 0));
        assert_false(chunk_id_matches(&id, "abc", 3));

        assert_int_equal(chunk_id_from_hex(hex, &back), 0);
        assert_memory_equal(back.bytes, id.bytes, CHUNK_ID_SIZE);
        assert_int_equal(chunk_id_from_hex("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", &back), 0);
        assert_memory_equal(back.bytes, id.bytes, CHUNK_ID_SIZE);

        /* Exactly 64 hex digits, nothing else; a refusal leaves *ret alone. */
        memset(&back, 0x5a, sizeof back);
        assert_int_equal(chunk_id_from_hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85", &back), -EINVAL);
        assert_int_equal(chunk_id_from_hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550", &back), -EINVAL);
        assert_int_equal(chunk_id_from_hex("g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", &back), -EINVAL);
        assert_int_equal(chunk_id_from_hex("", &back), -EINVAL);
        assert_int_equal(chunk_id_from_hex(NULL, &back), -EINVAL);
        for (size_t i = 0; i < CHUNK_ID_SIZE; i++)
                assert_int_equal(back.bytes[i], 0x5a);
}

/* ---- batches --------------------------------------------------------------------------------- */

static void test_round_trip(void **state) {
        Fixture *f = *state;
        TestChunk c[3];
        test_chunk_make(&c[0], 1, 1);
        test_chunk_make(&c[1], 70001, 2);
        test_chunk_make(&c[2], CDC_MAX_SIZE, 3);

        ChunkBatch *b = NULL;
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(chunk_batch_add(b, &c[i].id, c[i].data, c[i].size), 0);
        /* Nothing under a name before the commit, only temporaries. */
        char path[512];
        for (size_t i = 0; i < 3; i++) {
                chunk_file(f, &c[i], path, sizeof path);
                assert_false(exists(path));
        }
        assert_int_equal(count_tmp(f->dir), 3);
        assert_int_equal(chunk_batch_commit(b), 0);
        assert_int_equal(count_tmp(f->dir), 0);

        for (size_t i = 0; i < 3; i++) {
                chunk_file(f, &c[i], path, sizeof path);
                struct stat st;
                assert_int_equal(stat(path, &st), 0);
                assert_true(S_ISREG(st.st_mode));
                assert_int_equal(st.st_size, c[i].size);

                uint64_t size = 0;
                assert_int_equal(chunk_store_stat(f->store, &c[i].id, &size), 0);
                assert_int_equal(size, c[i].size);
                assert_reads_back(f->store, &c[i]);
        }

        /* A second store on the same directory sees them (nothing lives only in memory). */
        _cleanup_(chunk_store_freep) ChunkStore *again = NULL;
        assert_int_equal(chunk_store_open(f->dir, &again, NULL), 0);
        for (size_t i = 0; i < 3; i++)
                assert_reads_back(again, &c[i]);

        /* Prefetch: a hint for each chunk that is there. */
        ChunkId ids[3] = { c[0].id, c[1].id, c[2].id };
        assert_int_equal(chunk_store_prefetch(f->store, ids, 3), 3);

        /* Remove. */
        assert_int_equal(chunk_store_remove(f->store, &c[1].id), 0);
        assert_int_equal(chunk_store_remove(f->store, &c[1].id), -ENOENT);
        /* ... and none for one that is gone, without giving up on the others. */
        assert_int_equal(chunk_store_prefetch(f->store, ids, 3), 2);
        assert_int_equal(chunk_store_prefetch(f->store, &c[1].id, 1), 0);
        assert_int_equal(chunk_store_stat(f->store, &c[1].id, NULL), -ENOENT);

        /* An empty batch commits to nothing; an empty chunk is refused. */
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &c[0].id, c[0].data, 0), -EINVAL);
        assert_int_equal(chunk_batch_commit(b), 0);

        for (size_t i = 0; i < 3; i++)
                test_chunk_done(&c[i]);
}

static void test_dedup(void **state) {
        Fixture *f = *state;
        TestChunk a;
        test_chunk_make(&a, 50000, 10);
        char path[512];
        chunk_file(f, &a, path, sizeof path);

        put(f->store, &a);
        struct stat before, after;
        assert_int_equal(stat(path, &before), 0);

        /* Stored already: no temporary, no rewrite. */
        ChunkBatch *b = NULL;
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &a.id, a.data, a.size), 0);
        assert_int_equal(count_tmp(f->dir), 0);
        assert_int_equal(chunk_batch_commit(b), 0);
        assert_int_equal(stat(path, &after), 0);
        assert_int_equal(after.st_ino, before.st_ino);
        assert_int_equal(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);

        /* Twice in one batch: one temporary, one file. */
        TestChunk c;
        test_chunk_make(&c, 20000, 11);
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &c.id, c.data, c.size), 0);
        assert_int_equal(chunk_batch_add(b, &c.id, c.data, c.size), 0);
        assert_int_equal(count_tmp(f->dir), 1);
        assert_int_equal(chunk_batch_commit(b), 0);
        assert_int_equal(count_chunks(f->store, NULL), 2);

        /* A damaged file of another size under the name is not "stored already": it is replaced. */
        assert_int_equal(truncate(path, 1000), 0);
        put(f->store, &a);
        assert_int_equal(stat(path, &after), 0);
        assert_int_equal(after.st_size, a.size);
        assert_reads_back(f->store, &a);

        test_chunk_done(&a);
        test_chunk_done(&c);
}

static void test_abort(void **state) {
        Fixture *f = *state;
        TestChunk c[3];
        ChunkBatch *b = NULL;

        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        for (size_t i = 0; i < 3; i++) {
                test_chunk_make(&c[i], 30000 + i, 20 + i);
                assert_int_equal(chunk_batch_add(b, &c[i].id, c[i].data, c[i].size), 0);
        }
        assert_int_equal(count_tmp(f->dir), 3);
        chunk_batch_abort(b);
        chunk_batch_abort(NULL);
        assert_int_equal(count_tmp(f->dir), 0);
        for (size_t i = 0; i < 3; i++) {
                assert_int_equal(chunk_store_stat(f->store, &c[i].id, NULL), -ENOENT);
                test_chunk_done(&c[i]);
        }
        assert_int_equal(count_chunks(f->store, NULL), 0);
}

/* ---- reads ----------------------------------------------------------------------------------- */

static void test_damage(void **state) {
        Fixture *f = *state;
        _cleanup_free_ uint8_t *buf = malloc(CDC_MAX_SIZE);
        assert_non_null(buf);
        TestChunk c;
        test_chunk_make(&c, 65536, 30);
        char path[512];
        chunk_file(f, &c, path, sizeof path);

        assert_int_equal(chunk_store_read(f->store, &c.id, buf, CDC_MAX_SIZE), -ENOENT);

        /* One flipped bit. */
        put(f->store, &c);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        uint8_t byte = c.data[40000] ^ 0x10;
        assert_int_equal(pwrite(fd, &byte, 1, 40000), 1);
        assert_int_equal(close(fd), 0);
        assert_int_equal(chunk_store_read(f->store, &c.id, buf, CDC_MAX_SIZE), -EBADMSG);
        assert_false(exists(path));
        assert_int_equal(chunk_store_read(f->store, &c.id, buf, CDC_MAX_SIZE), -ENOENT);

        /* Truncated, and empty. */
        put(f->store, &c);
        assert_int_equal(truncate(path, c.size / 2), 0);
        assert_int_equal(chunk_store_read(f->store, &c.id, buf, CDC_MAX_SIZE), -EBADMSG);
        assert_false(exists(path));

        put(f->store, &c);
        assert_int_equal(truncate(path, 0), 0);
        assert_int_equal(chunk_store_read(f->store, &c.id, buf, CDC_MAX_SIZE), -EBADMSG);
        assert_false(exists(path));

        /* Longer than any chunk the caller can take. */
        put(f->store, &c);
        assert_int_equal(chunk_store_read(f->store, &c.id, buf, c.size - 1), -EBADMSG);
        assert_false(exists(path));

        /* Fetched again, it reads fine. */
        put(f->store, &c);
        assert_reads_back(f->store, &c);
        test_chunk_done(&c);
}

/* ---- open, walk ------------------------------------------------------------------------------ */

static void touch(const char *path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "x", 1), 1);
        assert_int_equal(close(fd), 0);
}

static void test_leftovers_removed_at_open(void **state) {
        Fixture *f = *state;
        TestChunk c;
        test_chunk_make(&c, 12345, 40);
        put(f->store, &c);

        /* What a crash leaves: temporaries in two xx directories and a health probe's file. */
        char p[512];
        snprintf(p, sizeof p, "%s/ab", f->dir);
        (void) mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/ab/.tmp-ab00-0123456789abcdef", f->dir);
        touch(p);
        snprintf(p, sizeof p, "%s/%.2s/.tmp-%s-fedcba9876543210", f->dir, c.hex, c.hex);
        touch(p);
        snprintf(p, sizeof p, "%s/.probe-1234-1234", f->dir);
        touch(p);
        /* Not ours to remove. */
        char keep[512];
        snprintf(keep, sizeof keep, "%s/ab/notes.txt", f->dir);
        touch(keep);

        chunk_store_free(TAKE_PTR(f->store));
        unsigned removed = 0;
        assert_int_equal(chunk_store_open(f->dir, &f->store, &removed), 0);
        assert_int_equal(removed, 2);
        assert_int_equal(count_tmp(f->dir), 0);
        assert_false(exists(p));
        assert_true(exists(keep));
        assert_reads_back(f->store, &c);
        test_chunk_done(&c);
}

typedef struct WalkSeen {
        TestChunk *chunks;
        size_t n;
        bool *seen;
        unsigned calls;
        unsigned stop_after;
} WalkSeen;

static int walk_check(const ChunkId *id, uint64_t size, void *userdata) {
        WalkSeen *w = userdata;
        w->calls++;
        if (w->stop_after > 0 && w->calls == w->stop_after)
                return -ECANCELED;
        for (size_t i = 0; i < w->n; i++)
                if (memcmp(w->chunks[i].id.bytes, id->bytes, CHUNK_ID_SIZE) == 0) {
                        assert_false(w->seen[i]);
                        assert_int_equal(size, w->chunks[i].size);
                        w->seen[i] = true;
                        return 0;
                }
        fail_msg("walk reported a chunk that was never stored");
        return -EINVAL;
}

static void test_walk(void **state) {
        Fixture *f = *state;
        TestChunk c[20];
        bool seen[20] = {};
        ChunkBatch *b = NULL;

        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        for (size_t i = 0; i < 20; i++) {
                test_chunk_make(&c[i], 1000 + 97 * i, 50 + i);
                assert_int_equal(chunk_batch_add(b, &c[i].id, c[i].data, c[i].size), 0);
        }
        assert_int_equal(chunk_batch_commit(b), 0);

        /* Foreign names: a file and a directory at the top, a stray file in an xx directory, a
         * chunk name in the wrong xx directory, an upper-case name, a directory under a chunk name,
         * a temporary. None of them is a chunk a read could find. */
        char p[512], upper[CHUNK_ID_HEX_SIZE];
        snprintf(p, sizeof p, "%s/junk", f->dir);
        touch(p);
        snprintf(p, sizeof p, "%s/zz", f->dir);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(p, sizeof p, "%s/%.2s/README", f->dir, c[0].hex);
        touch(p);
        snprintf(p, sizeof p, "%s/%s", f->dir, c[1].hex[0] == '0' ? "11" : "00");
        (void) mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/%s/%s", f->dir, c[1].hex[0] == '0' ? "11" : "00", c[1].hex);
        touch(p);
        for (size_t i = 0; i < sizeof upper; i++)
                upper[i] = (char) (c[2].hex[i] >= 'a' && c[2].hex[i] <= 'f' ? c[2].hex[i] - 'a' + 'A' : c[2].hex[i]);
        snprintf(p, sizeof p, "%s/%.2s/%s", f->dir, c[2].hex, upper);
        if (strcmp(upper, c[2].hex) != 0)
                touch(p);
        unsigned expected_foreign = 6 + (strcmp(upper, c[2].hex) != 0);
        TestChunk d;
        test_chunk_make(&d, 100, 99);
        snprintf(p, sizeof p, "%s/%.2s", f->dir, d.hex);
        (void) mkdir(p, 0755);
        snprintf(p, sizeof p, "%s/%.2s/%s", f->dir, d.hex, d.hex);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(p, sizeof p, "%s/%.2s/.tmp-%s-0000000000000000", f->dir, d.hex, d.hex);
        touch(p);

        WalkSeen w = { .chunks = c, .n = 20, .seen = seen };
        uint64_t foreign = 0;
        assert_int_equal(chunk_store_walk(f->store, walk_check, &w, &foreign), 0);
        assert_int_equal(w.calls, 20);
        for (size_t i = 0; i < 20; i++)
                assert_true(seen[i]);
        assert_int_equal(foreign, expected_foreign);

        /* A callback's error stops the walk and comes back. */
        memset(seen, 0, sizeof seen);
        w = (WalkSeen) { .chunks = c, .n = 20, .seen = seen, .stop_after = 5 };
        assert_int_equal(chunk_store_walk(f->store, walk_check, &w, NULL), -ECANCELED);
        assert_int_equal(w.calls, 5);

        for (size_t i = 0; i < 20; i++)
                test_chunk_done(&c[i]);
        test_chunk_done(&d);
}

/* ---- failpoints ------------------------------------------------------------------------------ */

static void test_failpoint_write(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();         /* built with -Dfailpoints=false */
#endif
        Fixture *f = *state;
        TestChunk a, c;
        test_chunk_make(&a, 40000, 60);
        test_chunk_make(&c, 40001, 61);

        /* The second temporary fails: the caller aborts and nothing is left anywhere. */
        assert_int_equal(failpoint_arm("cache-write", "1*off->return(ENOSPC)", NULL), 0);
        ChunkBatch *b = NULL;
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &a.id, a.data, a.size), 0);
        assert_int_equal(chunk_batch_add(b, &c.id, c.data, c.size), -ENOSPC);
        assert_int_equal(count_tmp(f->dir), 1);
        chunk_batch_abort(b);
        assert_int_equal(count_tmp(f->dir), 0);
        assert_int_equal(count_chunks(f->store, NULL), 0);

        /* A failed add does not spoil the batch: what was added before commits. */
        assert_int_equal(failpoint_arm("cache-write", "1*off->return(EIO)", NULL), 0);
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &a.id, a.data, a.size), 0);
        assert_int_equal(chunk_batch_add(b, &c.id, c.data, c.size), -EIO);
        assert_int_equal(chunk_batch_commit(b), 0);
        assert_int_equal(count_tmp(f->dir), 0);
        assert_reads_back(f->store, &a);
        assert_int_equal(chunk_store_stat(f->store, &c.id, NULL), -ENOENT);

        test_chunk_done(&a);
        test_chunk_done(&c);
}

static void test_failpoint_rename(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();         /* built with -Dfailpoints=false */
#endif
        Fixture *f = *state;
        TestChunk c[4];
        ChunkBatch *b = NULL;

        assert_int_equal(failpoint_arm("cache-rename", "return(EIO)", NULL), 0);
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        for (size_t i = 0; i < 4; i++) {
                test_chunk_make(&c[i], 20000 + i, 70 + i);
                assert_int_equal(chunk_batch_add(b, &c[i].id, c[i].data, c[i].size), 0);
        }
        assert_int_equal(chunk_batch_commit(b), -EIO);
        assert_int_equal(count_tmp(f->dir), 0);
        assert_int_equal(count_chunks(f->store, NULL), 0);

        /* Once the point is off the same chunks go in. */
        assert_int_equal(failpoint_disarm("cache-rename"), 0);
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        for (size_t i = 0; i < 4; i++)
                assert_int_equal(chunk_batch_add(b, &c[i].id, c[i].data, c[i].size), 0);
        assert_int_equal(chunk_batch_commit(b), 0);
        for (size_t i = 0; i < 4; i++) {
                assert_reads_back(f->store, &c[i]);
                test_chunk_done(&c[i]);
        }
}

static void test_failpoint_chunk_read(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();         /* built with -Dfailpoints=false */
#endif
        Fixture *f = *state;
        _cleanup_free_ uint8_t *buf = malloc(CDC_MAX_SIZE);
        assert_non_null(buf);
        TestChunk c;
        test_chunk_make(&c, 33333, 80);
        put(f->store, &c);

        /* An I/O error is not damage: the file stays for the next read. */
        assert_int_equal(failpoint_arm("cache-chunk-read", "1*return(EIO)", NULL), 0);
        assert_int_equal(chunk_store_read(f->store, &c.id, buf, CDC_MAX_SIZE), -EIO);
        assert_int_equal(chunk_store_stat(f->store, &c.id, NULL), 0);
        assert_reads_back(f->store, &c);
        test_chunk_done(&c);
}

/* ---- threads --------------------------------------------------------------------------------- */

#define N_SHARED 12

typedef struct ThreadArgs {
        ChunkStore *store;
        TestChunk *chunks;
        unsigned first;
        int result;
} ThreadArgs;

static void *writer(void *userdata) {
        ThreadArgs *a = userdata;

        /* Both threads store the same chunks in different orders, so their batches race for names. */
        for (unsigned round = 0; round < 8 && a->result >= 0; round++) {
                ChunkBatch *b = NULL;
                a->result = chunk_batch_new(a->store, &b);
                for (unsigned k = 0; k < N_SHARED && a->result >= 0; k++) {
                        const TestChunk *c = &a->chunks[(a->first + k * 5) % N_SHARED];
                        a->result = chunk_batch_add(b, &c->id, c->data, c->size);
                }
                if (a->result < 0) {
                        chunk_batch_abort(b);
                        break;
                }
                a->result = chunk_batch_commit(b);
                for (unsigned k = 0; k < N_SHARED && a->result >= 0; k += 3)
                        if (chunk_store_remove(a->store, &a->chunks[(a->first + k) % N_SHARED].id) == -EIO)
                                a->result = -EIO;
        }
        return NULL;
}

static void test_concurrent_batches(void **state) {
        Fixture *f = *state;
        TestChunk c[N_SHARED];
        for (size_t i = 0; i < N_SHARED; i++)
                test_chunk_make(&c[i], 5000 + 311 * i, 90 + i);

        ThreadArgs args[2] = {
                { .store = f->store, .chunks = c, .first = 0 },
                { .store = f->store, .chunks = c, .first = 7 },
        };
        pthread_t t[2];
        for (size_t i = 0; i < 2; i++)
                assert_int_equal(pthread_create(&t[i], NULL, writer, &args[i]), 0);
        for (size_t i = 0; i < 2; i++) {
                assert_int_equal(pthread_join(t[i], NULL), 0);
                assert_int_equal(args[i].result, 0);
        }

        /* Whatever survived the removals is whole; temporaries are all gone. */
        assert_int_equal(count_tmp(f->dir), 0);
        put(f->store, &c[0]);
        _cleanup_free_ uint8_t *buf = malloc(CDC_MAX_SIZE);
        assert_non_null(buf);
        for (size_t i = 0; i < N_SHARED; i++) {
                ssize_t n = chunk_store_read(f->store, &c[i].id, buf, CDC_MAX_SIZE);
                assert_true(n == -ENOENT || n == (ssize_t) c[i].size);
                test_chunk_done(&c[i]);
        }
}

/* ---- the disk -------------------------------------------------------------------------------- */

static void test_probe_and_usage(void **state) {
        Fixture *f = *state;

        assert_int_equal(chunk_store_probe(f->store), 0);
        DIR *d = opendir(f->dir);
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));)
                assert_false(strncmp(de->d_name, ".probe-", 7) == 0);
        closedir(d);

        double pct = -1;
        assert_int_equal(chunk_store_disk_usage(f->store, &pct), 0);
        assert_true(pct >= 0.0 && pct <= 100.0);
}

static void test_disk_full(void **state) {
        Fixture *f = *state;
        mount_small_tmpfs(f);

        double pct = -1;
        assert_int_equal(chunk_store_disk_usage(f->store, &pct), 0);
        assert_true(pct < 5.0);

        TestChunk first;
        test_chunk_make(&first, 200 * 1024, 100);
        put(f->store, &first);
        /* 50 of the tmpfs's 256 pages. */
        assert_int_equal(chunk_store_disk_usage(f->store, &pct), 0);
        assert_true(pct > 15.0 && pct < 25.0);

        /* 200 KiB chunks until the disk says no: within the 1 MiB, and as ENOSPC. */
        TestChunk c[8];
        ChunkBatch *b = NULL;
        int r = 0;
        size_t made = 0;
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        for (; made < ELEMENTSOF(c) && r >= 0; made++) {
                test_chunk_make(&c[made], 200 * 1024, 101 + made);
                r = chunk_batch_add(b, &c[made].id, c[made].data, c[made].size);
        }
        assert_int_equal(r, -ENOSPC);
        assert_true(made >= 4 && made <= 6);

        /* Fill what is left, so the probe meets a full disk too. */
        char filler[256];
        snprintf(filler, sizeof filler, "%s/filler", f->mnt);
        int fd = open(filler, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        static const uint8_t page[4096];
        for (unsigned i = 0; i < 1024 && write(fd, page, sizeof page) == (ssize_t) sizeof page; i++)
                ;
        assert_int_equal(close(fd), 0);
        assert_int_equal(chunk_store_probe(f->store), -ENOSPC);

        /* Nothing of the failed batch is under a name, and its temporaries go with the abort. */
        chunk_batch_abort(b);
        assert_int_equal(unlink(filler), 0);
        uint64_t foreign = 99;
        assert_int_equal(count_chunks(f->store, &foreign), 1);
        assert_int_equal(foreign, 0);
        assert_int_equal(count_tmp(f->dir), 0);
        for (size_t i = 0; i < made; i++) {
                assert_int_equal(chunk_store_stat(f->store, &c[i].id, NULL), -ENOENT);
                test_chunk_done(&c[i]);
        }
        assert_reads_back(f->store, &first);
        assert_int_equal(chunk_store_probe(f->store), 0);
        test_chunk_done(&first);
}

static void test_read_only(void **state) {
        Fixture *f = *state;
        mount_small_tmpfs(f);

        TestChunk a, c, d;
        test_chunk_make(&a, 60000, 110);
        test_chunk_make(&c, 60001, 111);
        test_chunk_make(&d, 60002, 112);
        put(f->store, &a);

        /* A batch in flight when the disk goes read-only. */
        ChunkBatch *b = NULL;
        assert_int_equal(chunk_batch_new(f->store, &b), 0);
        assert_int_equal(chunk_batch_add(b, &c.id, c.data, c.size), 0);
        assert_int_equal(mount(NULL, f->mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL), 0);

        assert_int_equal(chunk_batch_add(b, &d.id, d.data, d.size), -EROFS);
        assert_int_equal(chunk_batch_commit(b), -EROFS);
        assert_int_equal(chunk_store_stat(f->store, &c.id, NULL), -ENOENT);
        assert_int_equal(chunk_store_probe(f->store), -EROFS);

        /* Reading still works. */
        assert_reads_back(f->store, &a);
        double pct = -1;
        assert_int_equal(chunk_store_disk_usage(f->store, &pct), 0);

        /* The temporary the commit could not remove goes at the next open, once writable. */
        assert_int_equal(mount(NULL, f->mnt, NULL, MS_REMOUNT, NULL), 0);
        assert_int_equal(count_tmp(f->dir), 1);
        chunk_store_free(TAKE_PTR(f->store));
        unsigned removed = 0;
        assert_int_equal(chunk_store_open(f->dir, &f->store, &removed), 0);
        assert_int_equal(removed, 1);
        assert_int_equal(chunk_store_stat(f->store, &c.id, NULL), -ENOENT);
        assert_int_equal(count_chunks(f->store, NULL), 1);

        test_chunk_done(&a);
        test_chunk_done(&c);
        test_chunk_done(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_chunk_id),
                cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
                cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
                cmocka_unit_test_setup_teardown(test_damage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_leftovers_removed_at_open, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failpoint_write, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failpoint_rename, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failpoint_chunk_read, setup, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_batches, setup, teardown),
                cmocka_unit_test_setup_teardown(test_probe_and_usage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disk_full, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
