/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The replica reader and the manager's health view (D3, D11): replicas on unhealthy origins are
 * tried last and only briefly (no retries: EIO at once), what a down origin answers is EIO, and a
 * reader on a backup replica moves back to the preferred one on its next read after that origin
 * recovered. Two real local origins whose copies differ, so each read tells which one answered. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
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
#include "time-util.h"

#define FILE_SIZE (64 * 1024 + 17)
#define REL_PATH "song.flac"
#define ORIGIN_A 11
#define ORIGIN_B 22

DEFINE_TRIVIAL_CLEANUP_FUNC(ReplicaReader *, replica_reader_close);

typedef struct Fixture {
        char dir[2][64];
        char path[2][128];
        uint8_t content[2][FILE_SIZE];
        OriginSet *origins;
        Origin *o[2];           /* borrowed from the set */
        TreeReplica replicas[2];
        TreeNode node;
} Fixture;

static void write_file(const char *path, const uint8_t *data, size_t size) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
        assert_int_equal(close(fd), 0);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        static const char *const names[2] = { "primary", "backup" };
        static const int64_t ids[2] = { ORIGIN_A, ORIGIN_B };

        assert_non_null(f);
        assert_int_equal(origin_set_new(&f->origins), 0);
        for (size_t k = 0; k < 2; k++) {
                for (size_t i = 0; i < FILE_SIZE; i++)
                        f->content[k][i] = (uint8_t) ((i * 2654435761u) >> (8 + k * 5));
                strcpy(f->dir[k], "/tmp/test-replica-health-XXXXXX");
                assert_non_null(mkdtemp(f->dir[k]));
                snprintf(f->path[k], sizeof f->path[k], "%s/" REL_PATH, f->dir[k]);
                write_file(f->path[k], f->content[k], FILE_SIZE);
                assert_int_equal(origin_local_new(names[k], f->dir[k], 10 * (unsigned) (k + 1), &f->o[k]), 0);
                f->o[k]->id = ids[k];
                assert_int_equal(origin_set_add(f->origins, f->o[k]), 0);
                f->replicas[k] = (TreeReplica) { .origin_id = ids[k], .priority = 10 * (unsigned) (k + 1),
                                                 .file_id = (int64_t) k + 1, .rel_path = REL_PATH };
        }
        f->node = (TreeNode) { .ino = 5, .parent = 1, .name = REL_PATH, .size = FILE_SIZE, .mtime_ns = 1,
                               .replicas = f->replicas, .n_replicas = 2 };
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        origin_set_free(f->origins);
        for (size_t k = 0; k < 2; k++) {
                (void) unlink(f->path[k]);
                (void) rmdir(f->dir[k]);
        }
        free(f);
        return 0;
}

/* Which copy answered a read at offset: 0 (primary), 1 (backup); fails on anything else. */
static int read_from(ReplicaReader *r, const Fixture *f, uint64_t offset) {
        uint8_t buf[4096];
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, offset), (ssize_t) sizeof buf);
        for (int k = 0; k < 2; k++)
                if (memcmp(buf, f->content[k] + offset, sizeof buf) == 0)
                        return k;
        fail_msg("the bytes at %llu are neither replica's", (unsigned long long) offset);
        return -1;
}

static void test_healthy_first_and_back(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        /* The preferred origin is down (its files would still read: the view alone decides). */
        origin_set_health(f->o[0], ORIGIN_UNHEALTHY);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(read_from(r, f, 0), 1);
        assert_int_equal(read_from(r, f, 8192), 1);

        /* Degraded still counts as up: it is preferred by priority. */
        _cleanup_(replica_reader_closep) ReplicaReader *r2 = NULL;
        origin_set_health(f->o[0], ORIGIN_DEGRADED);
        assert_int_equal(origin_get_recoveries(f->o[0]), 0u);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r2), 0);
        assert_int_equal(read_from(r2, f, 0), 0);
        /* Degraded is no recovery: the open reader stays on the backup. */
        assert_int_equal(read_from(r, f, 100), 1);

        /* Healthy again: a recovery, and the open reader moves back on its next read. */
        origin_set_health(f->o[0], ORIGIN_HEALTHY);
        assert_int_equal(origin_get_recoveries(f->o[0]), 1u);
        assert_int_equal(read_from(r, f, 200), 0);
        assert_int_equal(read_from(r, f, 300), 0);
}

static void test_recovered_but_unreadable_tried_once(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;

        origin_set_health(f->o[0], ORIGIN_UNHEALTHY);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(read_from(r, f, 0), 1);
        /* Back, but without this file: one try, then the backup serves on without further tries. */
        assert_int_equal(unlink(f->path[0]), 0);
        origin_set_health(f->o[0], ORIGIN_HEALTHY);
        assert_int_equal(read_from(r, f, 0), 1);
        write_file(f->path[0], f->content[0], FILE_SIZE);
        assert_int_equal(read_from(r, f, 4096), 1);
        /* The next recovery is another chance. */
        origin_set_health(f->o[0], ORIGIN_UNHEALTHY);
        origin_set_health(f->o[0], ORIGIN_HEALTHY);
        assert_int_equal(read_from(r, f, 4096), 0);
}

static void test_all_unhealthy(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;
        uint8_t buf[4096];

        origin_set_health(f->o[0], ORIGIN_UNHEALTHY);
        origin_set_health(f->o[1], ORIGIN_UNHEALTHY);
        /* Down origins still get their short try, in priority order: bytes that can be read are. */
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(read_from(r, f, 0), 0);

#if MUSICFS_FAILPOINTS
        /* A transient error on a down origin is not retried (100 ms, 500 ms, 2 s): EIO at once. */
        assert_int_equal(failpoint_arm("origin-read", "return(ETIMEDOUT)", NULL), 0);
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -EIO);
        assert_true(now_usec(CLOCK_MONOTONIC) - t0 < 90 * 1000);
        assert_int_equal(failpoint_disarm("origin-read"), 0);
#endif

        /* What a down origin answers says nothing about the file: EIO, not ENOENT. */
        _cleanup_(replica_reader_closep) ReplicaReader *none = NULL;
        assert_int_equal(unlink(f->path[0]), 0);
        assert_int_equal(unlink(f->path[1]), 0);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &none), -EIO);
        assert_null(none);
        origin_set_health(f->o[0], ORIGIN_HEALTHY);
        origin_set_health(f->o[1], ORIGIN_HEALTHY);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &none), -ENOENT);
        (void) buf;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_healthy_first_and_back, setup, teardown),
                cmocka_unit_test_setup_teardown(test_recovered_but_unreadable_tried_once, setup, teardown),
                cmocka_unit_test_setup_teardown(test_all_unhealthy, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
