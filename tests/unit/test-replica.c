/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The read seam (D3, spec §2.10): a virtual file with replicas on two local origins, read from the
 * preferred one and failed over to the next when it cannot open or read, under concurrent reads. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "failpoint.h"
#include "macro.h"
#include "origin.h"
#include "replica.h"

#define FILE_SIZE (256 * 1024 + 333)
#define REL_PATH "Artist/Album/01 - Song.flac"
#define ORIGIN_A 101
#define ORIGIN_B 202

DEFINE_TRIVIAL_CLEANUP_FUNC(ReplicaReader *, replica_reader_close);

typedef struct Fixture {
        char dir_a[64];
        char dir_b[64];
        char path_a[128];
        char path_b[128];
        OriginSet *origins;
        TreeReplica replicas[3];
        TreeNode node;
        uint8_t *content_a;
        uint8_t *content_b;
} Fixture;

static uint8_t pattern_byte(uint64_t i, uint8_t salt) {
        uint64_t x = (i + salt) * 0x9E3779B97F4A7C15ULL;
        return (uint8_t) (x >> 56) ^ salt;
}

static void write_file(const char *path, const uint8_t *data, size_t size) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
        assert_int_equal(close(fd), 0);
}

static void make_replica(char *dir, char *path, size_t path_size, const uint8_t *content) {
        char p[192];
        strcpy(dir, "/tmp/test-replica-XXXXXX");
        assert_non_null(mkdtemp(dir));
        snprintf(p, sizeof p, "%s/Artist", dir);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(p, sizeof p, "%s/Artist/Album", dir);
        assert_int_equal(mkdir(p, 0755), 0);
        snprintf(path, path_size, "%s/" REL_PATH, dir);
        write_file(path, content, FILE_SIZE);
}

static void add_origin(Fixture *f, const char *name, const char *dir, unsigned priority, int64_t id) {
        Origin *o = NULL;
        assert_int_equal(origin_local_new(name, dir, priority, &o), 0);
        o->id = id;
        assert_int_equal(origin_set_add(f->origins, o), 0);
}

/* Two replicas of one file. salt_b 0 gives both the same bytes, as D3 has it; otherwise B's
 * bytes differ, so a test can tell which replica answered. */
static Fixture *fixture_new(uint8_t salt_b) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        f->content_a = malloc(FILE_SIZE);
        f->content_b = malloc(FILE_SIZE);
        assert_non_null(f->content_a);
        assert_non_null(f->content_b);
        for (size_t i = 0; i < FILE_SIZE; i++) {
                f->content_a[i] = pattern_byte(i, 0);
                f->content_b[i] = pattern_byte(i, salt_b);
        }

        make_replica(f->dir_a, f->path_a, sizeof f->path_a, f->content_a);
        make_replica(f->dir_b, f->path_b, sizeof f->path_b, f->content_b);

        assert_int_equal(origin_set_new(&f->origins), 0);
        /* Added in the "wrong" order: the set sorts, the node's replica order decides. */
        add_origin(f, "backup", f->dir_b, 5, ORIGIN_B);
        add_origin(f, "primary", f->dir_a, 1, ORIGIN_A);

        f->replicas[0] = (TreeReplica) { .origin_id = ORIGIN_A, .priority = 1, .file_id = 1, .rel_path = REL_PATH };
        f->replicas[1] = (TreeReplica) { .origin_id = ORIGIN_B, .priority = 5, .file_id = 2, .rel_path = REL_PATH };
        f->node = (TreeNode) {
                .ino = 42,
                .parent = 7,
                .name = "01 - Song.flac",
                .size = FILE_SIZE,
                .mtime_ns = 1,
                .replicas = f->replicas,
                .n_replicas = 2,
        };
        return f;
}

static void rm_replica(const char *dir) {
        char p[192];
        snprintf(p, sizeof p, "%s/" REL_PATH, dir);
        (void) unlink(p);
        snprintf(p, sizeof p, "%s/Artist/Album", dir);
        (void) rmdir(p);
        snprintf(p, sizeof p, "%s/Artist", dir);
        (void) rmdir(p);
        (void) rmdir(dir);
}

static int setup_distinct(void **state) {
        *state = fixture_new(0x5A);
        return 0;
}

static int setup_identical(void **state) {
        *state = fixture_new(0);
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        origin_set_free(f->origins);
        rm_replica(f->dir_a);
        rm_replica(f->dir_b);
        free(f->content_a);
        free(f->content_b);
        free(f);
        return 0;
}

static void assert_read(ReplicaReader *r, uint64_t offset, size_t size, const uint8_t *expected) {
        _cleanup_free_ uint8_t *buf = malloc(size + 1);
        assert_non_null(buf);
        size_t want = offset >= FILE_SIZE ? 0 : FILE_SIZE - offset < size ? FILE_SIZE - offset : size;

        ssize_t n = replica_reader_read(r, buf, size, offset);
        assert_int_equal(n, (ssize_t) want);
        if (want > 0)
                assert_memory_equal(buf, expected + offset, want);
}

static void test_reads_preferred(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_read(r, 0, FILE_SIZE, f->content_a);
        assert_read(r, 1, 4096, f->content_a);
        assert_read(r, 131071, 65537, f->content_a);
        assert_read(r, FILE_SIZE - 100, 4096, f->content_a);     /* short at EOF */
        assert_read(r, FILE_SIZE, 4096, f->content_a);           /* at EOF */
        assert_read(r, FILE_SIZE + 12345, 10, f->content_a);     /* past EOF */
}

static void test_bad_arguments(void **state) {
        Fixture *f = *state;
        ReplicaReader *r = NULL;

        TreeNode dir = { .ino = 2, .parent = 1, .name = "Artist", .is_dir = true };
        assert_int_equal(replica_reader_open(f->origins, &dir, &r), -EISDIR);
        TreeNode none = { .ino = 3, .parent = 1, .name = "x.flac", .size = 1 };
        assert_int_equal(replica_reader_open(f->origins, &none, &r), -ENOENT);
        assert_int_equal(replica_reader_open(NULL, &f->node, &r), -EINVAL);
        assert_int_equal(replica_reader_open(f->origins, NULL, &r), -EINVAL);
        assert_null(r);
        assert_int_equal(replica_reader_read(NULL, NULL, 0, 0), -EINVAL);
        replica_reader_close(NULL);
}

static void test_preferred_missing_at_open(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(unlink(f->path_a), 0);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_read(r, 0, FILE_SIZE, f->content_b);
        assert_read(r, 7777, 100, f->content_b);
}

static void test_all_missing_at_open(void **state) {
        Fixture *f = *state;
        ReplicaReader *r = NULL;

        assert_int_equal(unlink(f->path_a), 0);
        assert_int_equal(unlink(f->path_b), 0);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), -ENOENT);
        assert_null(r);
}

static void test_unknown_origin_skipped(void **state) {
        Fixture *f = *state;
        ReplicaReader *r = NULL;

        /* A replica on an origin that is no longer configured is passed over. */
        TreeReplica replicas[2] = {
                { .origin_id = 999, .priority = 0, .file_id = 9, .rel_path = REL_PATH },
                { .origin_id = ORIGIN_B, .priority = 5, .file_id = 2, .rel_path = REL_PATH },
        };
        TreeNode node = f->node;
        node.replicas = replicas;
        assert_int_equal(replica_reader_open(f->origins, &node, &r), 0);
        assert_read(r, 0, 1000, f->content_b);
        replica_reader_close(r);
        r = NULL;

        node.n_replicas = 1;
        assert_int_equal(replica_reader_open(f->origins, &node, &r), -ENOENT);
        assert_null(r);
}

/* Deleting the preferred file while it is open: the open file keeps its bytes (POSIX), so reads go
 * on from it, and they are right. Once its bytes are gone too (emptied, then unlinked, as a tool
 * rewriting the file does), the reader moves to the next replica and stays there. */
static void test_preferred_deleted_after_open(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL, *r2 = NULL;

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_read(r, 0, 4096, f->content_a);
        assert_int_equal(unlink(f->path_a), 0);
        assert_read(r, 100, 4096, f->content_a);
        assert_read(r, 0, FILE_SIZE, f->content_a);

        write_file(f->path_a, f->content_a, FILE_SIZE);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r2), 0);
        assert_read(r2, 0, 10, f->content_a);
        assert_int_equal(truncate(f->path_a, 0), 0);
        assert_int_equal(unlink(f->path_a), 0);

        assert_read(r2, 4096, 8192, f->content_b);
        assert_read(r2, 0, FILE_SIZE, f->content_b);
        assert_read(r2, FILE_SIZE - 5, 100, f->content_b);
}

/* A replica that ends early (changed since the scan) is not this file any more: fail over rather
 * than hand the kernel a short read before the size it was told. */
static void test_truncated_replica_fails_over(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(truncate(f->path_a, FILE_SIZE / 2), 0);
        assert_read(r, 0, 1000, f->content_a);                  /* still within what is left */
        assert_read(r, FILE_SIZE / 2 - 10, 1000, f->content_b); /* runs into the cut */

        /* Every replica short: an error, not silently short data. */
        assert_int_equal(truncate(f->path_b, 10), 0);
        char buf[100];
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, FILE_SIZE / 2 - 10), -EIO);
        /* Where one still has the bytes, it serves them. */
        assert_read(r, 0, 100, f->content_a);
}

static void test_open_failpoint_failover(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(failpoint_arm("origin-open", "1*return(EIO)", NULL), 0);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_read(r, 0, FILE_SIZE, f->content_b);

        /* The count is spent: a new reader gets the preferred replica again. */
        _cleanup_(replica_reader_closep) ReplicaReader *r2 = NULL;
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r2), 0);
        assert_read(r2, 0, FILE_SIZE, f->content_a);
#endif
}

static void test_read_failpoint_failover(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_read(r, 0, 100, f->content_a);

        /* ENXIO: a definite error, failed over at once (a transient one is retried first: D10,
         * test-origin-timeout.c). */
        assert_int_equal(failpoint_arm("origin-read", "1*return(ENXIO)", NULL), 0);
        assert_read(r, 50, 5000, f->content_b);
        /* The reader stays on the replica that worked. */
        assert_read(r, 0, FILE_SIZE, f->content_b);
#endif
}

static void test_all_fail_first_error(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;
        ReplicaReader *none = NULL;
        char buf[64];

        /* At open: the preferred fails with EIO, the other is missing; the first error wins. */
        assert_int_equal(unlink(f->path_b), 0);
        assert_int_equal(failpoint_arm("origin-open", "1*return(EIO)", NULL), 0);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &none), -EIO);
        assert_null(none);
        write_file(f->path_b, f->content_b, FILE_SIZE);

        /* At read: EIO from the preferred (and ENXIO from its retry), ENXIO from the next: EIO comes back. */
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(failpoint_arm("origin-read", "1*return(EIO)->return(ENXIO)", NULL), 0);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -EIO);

        /* Every replica failing on every read: still an error, never a crash or a hang. */
        assert_int_equal(failpoint_arm("origin-read", "return(ENXIO)", NULL), 0);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -ENXIO);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -ENXIO);

        /* The origins come back: the same handle reads again. */
        assert_int_equal(failpoint_disarm("origin-read"), 0);
        ssize_t n = replica_reader_read(r, buf, sizeof buf, 10);
        assert_int_equal(n, sizeof buf);
        assert_true(memcmp(buf, f->content_a + 10, sizeof buf) == 0 ||
                    memcmp(buf, f->content_b + 10, sizeof buf) == 0);
#endif
}

/* After every replica failed to open during a failover, the next read tries them all again. */
static void test_reopen_after_exhaustion(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;
        char buf[64];

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(failpoint_arm("origin-read", "1*return(ENXIO)", NULL), 0);
        assert_int_equal(failpoint_arm("origin-open", "return(EHOSTDOWN)", NULL), 0);
        /* A's read fails, B will not open: the read fails with A's error. */
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -ENXIO);
        /* Nothing is open now, and nothing opens. */
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -EHOSTDOWN);

        assert_int_equal(failpoint_disarm("origin-open"), 0);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 3), sizeof buf);
        assert_memory_equal(buf, f->content_a + 3, sizeof buf);
#endif
}

typedef struct Readers {
        ReplicaReader *reader;
        const uint8_t *expected;
        unsigned seed_base;
        atomic_ulong reads;
        atomic_ulong wrong;     /* bytes that differ, or a length that does: never allowed */
        atomic_ulong errors;    /* -EIO/-ENXIO when every replica failed one read: allowed under faults */
        atomic_ulong other;     /* any other outcome */
} Readers;

typedef struct ReaderThread {
        Readers *readers;
        unsigned seed;
} ReaderThread;

static void *reader_thread(void *userdata) {
        ReaderThread *t = userdata;
        Readers *rs = t->readers;
        unsigned seed = t->seed;
        uint8_t *buf = malloc(70000);
        if (!buf) {
                atomic_fetch_add(&rs->other, 1);
                return NULL;
        }

        for (int i = 0; i < 400; i++) {
                uint64_t offset = (uint64_t) rand_r(&seed) % (FILE_SIZE + 1000);
                size_t size = (size_t) rand_r(&seed) % 70000;
                size_t want = offset >= FILE_SIZE ? 0 : FILE_SIZE - offset < size ? FILE_SIZE - offset : size;

                ssize_t n = replica_reader_read(rs->reader, buf, size, offset);
                atomic_fetch_add(&rs->reads, 1);
                if (n == -EIO || n == -ENXIO)
                        atomic_fetch_add(&rs->errors, 1);
                else if (n < 0)
                        atomic_fetch_add(&rs->other, 1);
                else if ((size_t) n != want || memcmp(buf, rs->expected + offset, want) != 0)
                        atomic_fetch_add(&rs->wrong, 1);
        }
        free(buf);
        return NULL;
}

static void run_readers(Readers *rs) {
        pthread_t threads[8];
        ReaderThread args[8];

        for (size_t i = 0; i < ELEMENTSOF(threads); i++) {
                args[i] = (ReaderThread) { .readers = rs, .seed = rs->seed_base + (unsigned) i };
                assert_int_equal(pthread_create(&threads[i], NULL, reader_thread, &args[i]), 0);
        }
        for (size_t i = 0; i < ELEMENTSOF(threads); i++)
                assert_int_equal(pthread_join(threads[i], NULL), 0);

        print_message("%lu reads, %lu wrong, %lu EIO, %lu other\n", atomic_load(&rs->reads),
                      atomic_load(&rs->wrong), atomic_load(&rs->errors), atomic_load(&rs->other));
        assert_int_equal(atomic_load(&rs->reads), 8 * 400);
        assert_int_equal(atomic_load(&rs->wrong), 0);
        assert_int_equal(atomic_load(&rs->other), 0);
}

static void test_concurrent_reads(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        Readers rs = { .reader = r, .expected = f->content_a, .seed_base = 1 };
        run_readers(&rs);
        assert_int_equal(atomic_load(&rs.errors), 0);
}

/* Failovers racing with reads on the same handle: replicas switch back and forth under the
 * readers, and no read ever returns wrong bytes or touches a closed file. */
static void test_concurrent_reads_with_failover(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        /* ENXIO is failed over at once; EIO would mostly be healed by the retries on the same replica. */
        assert_int_equal(failpoint_arm("origin-read", "10%return(ENXIO)", NULL), 0);
        Readers rs = { .reader = r, .expected = f->content_a, .seed_base = 100 };
        run_readers(&rs);

        FailpointInfo *info = NULL;
        size_t n_info = 0;
        uint32_t fired = 0;
        assert_int_equal(failpoint_list(&info, &n_info), 0);
        for (size_t i = 0; i < n_info; i++)
                if (strcmp(info[i].name, "origin-read") == 0)
                        fired = info[i].fired;
        failpoint_info_free(info, n_info);
        print_message("origin-read fired %u times\n", fired);
        assert_true(fired > 0);
        /* Both replicas failing one read is the only way to an error. */
        assert_true(atomic_load(&rs.errors) < fired);
#endif
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_reads_preferred, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_bad_arguments, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_preferred_missing_at_open, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_all_missing_at_open, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_unknown_origin_skipped, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_preferred_deleted_after_open, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_truncated_replica_fails_over, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_open_failpoint_failover, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_read_failpoint_failover, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_all_fail_first_error, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_reopen_after_exhaustion, setup_distinct, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_reads, setup_identical, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_reads_with_failover, setup_identical, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
