/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* D10 on a local origin: an operation that hangs (a failpoint sleeping inside the job) answers
 * -ETIMEDOUT at its limit while the origin keeps serving other reads, the late answer never reaches
 * the caller's buffer, stuck workers are bounded, and the replica reader retries transient errors
 * after 100 ms, 500 ms and 2 s within one bounded budget before failing over. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "failpoint.h"
#include "macro.h"
#include "origin-internal.h"
#include "replica.h"
#include "time-util.h"

#define FILE_SIZE (192 * 1024)
#define REL_PATH "song.flac"
#define ORIGIN_ID 7

DEFINE_TRIVIAL_CLEANUP_FUNC(ReplicaReader *, replica_reader_close);

typedef struct Fixture {
        char dir[64];
        char path[128];
        uint8_t *content;
        OriginSet *origins;
        Origin *origin;         /* borrowed from origins */
        TreeReplica replica;
        TreeNode node;
        unsigned pre_fds;       /* before the fixture */
        unsigned base_fds;
} Fixture;

static unsigned count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        assert_non_null(d);
        unsigned n = 0;
        for (struct dirent *de; (de = readdir(d));)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1;   /* the DIR's own */
}

static void wait_unstuck(Origin *o, unsigned timeout_ms) {
        uint64_t end = (now_usec(CLOCK_MONOTONIC) / 1000) + timeout_ms;
        while (origin_stuck_ops(o) > 0) {
                if ((now_usec(CLOCK_MONOTONIC) / 1000) > end)
                        fail_msg("%u operations still stuck after %u ms", origin_stuck_ops(o), timeout_ms);
                usleep(10 * 1000);
        }
}

/* A job that outlived its caller still holds the file open; its end is when the fd goes. */
static void wait_fds(unsigned want, unsigned timeout_ms) {
        uint64_t end = (now_usec(CLOCK_MONOTONIC) / 1000) + timeout_ms;
        for (;;) {
                unsigned n = count_fds();
                if (n == want)
                        return;
                if ((now_usec(CLOCK_MONOTONIC) / 1000) > end)
                        fail_msg("%u fds open, want %u, after %u ms", n, want, timeout_ms);
                usleep(10 * 1000);
        }
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        f->pre_fds = count_fds();

        strcpy(f->dir, "/tmp/test-origin-timeout-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof f->path, "%s/" REL_PATH, f->dir);
        f->content = malloc(FILE_SIZE);
        assert_non_null(f->content);
        for (size_t i = 0; i < FILE_SIZE; i++)
                f->content[i] = (uint8_t) ((i * 2654435761u) >> 24);
        int fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, f->content, FILE_SIZE), FILE_SIZE);
        assert_int_equal(close(fd), 0);

        assert_int_equal(origin_set_new(&f->origins), 0);
        Origin *o = NULL;
        assert_int_equal(origin_local_new("disk", f->dir, 1, &o), 0);
        o->id = ORIGIN_ID;
        origin_set_timeout(o, 500);
        assert_int_equal(origin_set_add(f->origins, o), 0);
        f->origin = o;
        f->base_fds = count_fds();      /* with the origin's directory fd */

        f->replica = (TreeReplica) { .origin_id = ORIGIN_ID, .priority = 1, .file_id = 1, .rel_path = REL_PATH };
        f->node = (TreeNode) {
                .ino = 42, .parent = 1, .name = REL_PATH, .size = FILE_SIZE, .mtime_ns = 1,
                .replicas = &f->replica, .n_replicas = 1,
        };
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        failpoint_disarm_all();
        if (f->origin)
                wait_unstuck(f->origin, 5000);
        origin_set_free(f->origins);
        /* Nothing of this test outlives it: every job that held a file or the origin has ended. */
        wait_fds(f->pre_fds, 5000);
        (void) unlink(f->path);
        (void) rmdir(f->dir);
        free(f->content);
        free(f);
        return 0;
}

static void test_defaults(void **state) {
        Fixture *f = *state;
        Origin *o = NULL;
        assert_int_equal(origin_local_new("other", f->dir, 1, &o), 0);
        assert_int_equal(origin_timeout_ms(o), 5000);   /* D10: local 5 s */
        origin_set_timeout(o, 250);
        assert_int_equal(origin_timeout_ms(o), 250);
        origin_free(o);
}

typedef struct SideRead {
        OriginFile *file;
        const uint8_t *expected;
        ssize_t n;
        uint64_t ms;
        bool same;
} SideRead;

static void *side_read(void *userdata) {
        SideRead *s = userdata;
        uint8_t buf[4096];
        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        s->n = origin_pread(s->file, buf, sizeof buf, 4096);
        s->ms = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        s->same = s->n == (ssize_t) sizeof buf && memcmp(buf, s->expected + 4096, sizeof buf) == 0;
        return NULL;
}

/* A read that hangs answers -ETIMEDOUT at the limit; meanwhile another worker serves the next read,
 * and the hung one's late bytes never land in the caller's buffer. */
static void test_read_times_out(void **state) {
        Fixture *f = *state;
        OriginFile *file = NULL;
        assert_int_equal(origin_open(f->origin, REL_PATH, &file), 0);

        assert_int_equal(failpoint_arm("origin-read", "1*sleep(1500)", NULL), 0);
        uint8_t *buf = malloc(FILE_SIZE);
        assert_non_null(buf);
        memset(buf, 0xAA, FILE_SIZE);

        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_pread(file, buf, FILE_SIZE, 0), -ETIMEDOUT);
        uint64_t took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("hung read answered after %" PRIu64 " ms\n", took);
        assert_true(took >= 500);
        assert_true(took < 500 + 400);

        /* The stuck worker still sleeps. The same file answers at once rather than queue behind it
         * (the kernel retries a failed page once: that must not cost another limit)... */
        t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_pread(file, buf, 4096, 0), -ETIMEDOUT);
        assert_true((now_usec(CLOCK_MONOTONIC) / 1000) - t0 < 100);
        assert_true(origin_file_stuck(file));

        /* ... and another worker serves another handle of the origin at once. */
        OriginFile *other = NULL;
        assert_int_equal(origin_open(f->origin, REL_PATH, &other), 0);
        SideRead s = { .file = other, .expected = f->content };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, side_read, &s), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        print_message("read beside the stuck one took %" PRIu64 " ms\n", s.ms);
        assert_true(s.same);
        assert_true(s.ms < 300);
        assert_false(origin_file_stuck(other));
        origin_close(other);

        /* Closing the file and dropping the origin under the stuck job is safe: the job holds both
         * until it ends, and then closes the fd. */
        origin_close(file);
        assert_int_equal(origin_set_remove(f->origins, ORIGIN_ID), 0);
        f->origin = NULL;
        wait_fds(f->base_fds - 1, 5000);       /* the file's and the origin's */
        for (size_t i = 0; i < FILE_SIZE; i++)
                if (buf[i] != 0xAA)
                        fail_msg("byte %zu of the caller's buffer written after the timeout", i);
        free(buf);
}

static void test_open_and_stat_time_out(void **state) {
        Fixture *f = *state;
        OriginFile *file = NULL;
        OriginStat st = { 0 };

        assert_int_equal(failpoint_arm("origin-stat", "1*sleep(1000)", NULL), 0);
        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_stat(f->origin, REL_PATH, &st), -ETIMEDOUT);
        assert_true((now_usec(CLOCK_MONOTONIC) / 1000) - t0 >= 500);
        assert_int_equal(st.size, 0);   /* the late answer is not copied out */
        assert_int_equal(origin_stat(f->origin, REL_PATH, &st), 0);
        assert_int_equal(st.size, FILE_SIZE);

        /* An open that comes too late is closed by the job: no fd leaks. */
        assert_int_equal(failpoint_arm("origin-open", "1*sleep(1000)", NULL), 0);
        t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_open(f->origin, REL_PATH, &file), -ETIMEDOUT);
        assert_true((now_usec(CLOCK_MONOTONIC) / 1000) - t0 >= 500);
        assert_null(file);
        wait_unstuck(f->origin, 5000);
        wait_fds(f->base_fds, 5000);

        assert_int_equal(origin_open(f->origin, REL_PATH, &file), 0);
        origin_close(file);
}

/* Every worker an origin may have stuck: the next operation fails at once with -EIO instead of
 * queueing behind them; once they come back the origin serves again. */
static void test_stuck_bound_fails_fast(void **state) {
        Fixture *f = *state;
        OriginFile *file = NULL, *files[24] = { 0 };
        uint8_t buf[512];

        origin_set_timeout(f->origin, 50);
        /* One handle per read: a stuck handle fails its own next read at once, without a worker. */
        for (size_t i = 0; i < ELEMENTSOF(files); i++)
                assert_int_equal(origin_open(f->origin, REL_PATH, &files[i]), 0);
        assert_int_equal(failpoint_arm("origin-read", "sleep(1500)", NULL), 0);

        unsigned n_timeouts = 0;
        ssize_t n = 0;
        uint64_t t0 = 0;
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
                n = origin_pread(files[i], buf, sizeof buf, 0);
                if (n != -ETIMEDOUT)
                        break;
                n_timeouts++;
        }
        uint64_t took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("%u reads timed out, then %zd after %" PRIu64 " ms\n", n_timeouts, n, took);
        assert_int_equal(n, -EIO);
        assert_int_equal(n_timeouts, 16);      /* EXEC_THREADS_MAX */
        assert_true(took < 50);

        assert_int_equal(failpoint_disarm("origin-read"), 0);
        assert_int_equal(origin_stuck_ops(f->origin), 16);
        for (size_t i = 0; i < ELEMENTSOF(files); i++)
                origin_close(files[i]);
        wait_unstuck(f->origin, 5000);
        wait_fds(f->base_fds, 5000);    /* and the last one closed the file */

        origin_set_timeout(f->origin, 500);
        assert_int_equal(origin_open(f->origin, REL_PATH, &file), 0);
        assert_int_equal(origin_pread(file, buf, sizeof buf, 100), (ssize_t) sizeof buf);
        assert_memory_equal(buf, f->content + 100, sizeof buf);
        origin_close(file);
}

/* D10 retries: 100 ms, then 500 ms, then the read succeeds on the same replica. */
static void test_transient_error_retried(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;
        uint8_t buf[4096];

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(failpoint_arm("origin-read", "2*return(EIO)", NULL), 0);
        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 1000), (ssize_t) sizeof buf);
        uint64_t took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("read after two EIOs took %" PRIu64 " ms\n", took);
        assert_memory_equal(buf, f->content + 1000, sizeof buf);
        assert_true(took >= 600);
        assert_true(took < 600 + 500);

        /* Three EIOs then a fourth: the retries are spent and the error comes back after all three
         * back-offs (2.6 s), not later. */
        assert_int_equal(failpoint_arm("origin-read", "4*return(EIO)", NULL), 0);
        t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -EIO);
        took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("four EIOs answered after %" PRIu64 " ms\n", took);
        assert_true(took >= 2600);
        assert_true(took < 2600 + 500);
}

static void test_definite_error_not_retried(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;
        uint8_t buf[4096];

        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(failpoint_arm("origin-read", "1*return(ENOENT)", NULL), 0);
        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -ENOENT);
        assert_true((now_usec(CLOCK_MONOTONIC) / 1000) - t0 < 100);

        assert_int_equal(failpoint_arm("origin-read", "1*return(EACCES)", NULL), 0);
        t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -EACCES);
        assert_true((now_usec(CLOCK_MONOTONIC) / 1000) - t0 < 100);

        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), (ssize_t) sizeof buf);
        assert_memory_equal(buf, f->content, sizeof buf);
}

/* A hung origin: the first try times out, and no retry queues behind the read that still hangs, so
 * the read ends after the limit and one back-off. An origin that was only slow (its late answer came
 * within the back-off) is retried and serves the read. */
static void test_hung_read_bounded(void **state) {
        Fixture *f = *state;
        _cleanup_(replica_reader_closep) ReplicaReader *r = NULL;
        uint8_t buf[4096];

        origin_set_timeout(f->origin, 300);
        assert_int_equal(replica_reader_open(f->origins, &f->node, &r), 0);
        assert_int_equal(failpoint_arm("origin-read", "sleep(1500)", NULL), 0);
        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -ETIMEDOUT);
        uint64_t took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("hung replica answered after %" PRIu64 " ms\n", took);
        assert_true(took >= 300 + 100);
        assert_true(took < 300 + 100 + 300);
        /* The kernel's second try of the same page, while the first still hangs: at once. */
        t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), -ETIMEDOUT);
        assert_true((now_usec(CLOCK_MONOTONIC) / 1000) - t0 < 100 + 100);

        assert_int_equal(failpoint_disarm("origin-read"), 0);
        wait_unstuck(f->origin, 5000);

        /* Slow, not hung: 350 ms against a 300 ms limit; after the 100 ms back-off it has answered,
         * and the retry reads. */
        assert_int_equal(failpoint_arm("origin-read", "1*sleep(350)", NULL), 0);
        t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(replica_reader_read(r, buf, sizeof buf, 0), (ssize_t) sizeof buf);
        took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("slow replica served after %" PRIu64 " ms\n", took);
        assert_memory_equal(buf, f->content, sizeof buf);
        assert_true(took >= 300 + 100);
        assert_int_equal(failpoint_disarm("origin-read"), 0);
        replica_reader_close(TAKE_PTR(r));
        wait_unstuck(f->origin, 5000);
        wait_fds(f->base_fds, 5000);
}

/* An origin whose walk finds one entry and then hangs for real (a blocking read of a pipe) until the
 * test writes to it. */
typedef struct HangOrigin {
        Origin base;
        int pipe[2];
        atomic_int last_fn_result;
        atomic_bool walk_ended;
} HangOrigin;

static int hang_walk(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        HangOrigin *h = (HangOrigin *) o;
        OriginStat st = { .size = 1 };
        int r = fn("a.flac", &st, userdata);
        if (r >= 0) {
                char c;
                while (read(h->pipe[0], &c, 1) < 0 && errno == EINTR)
                        ;
                r = fn("b.flac", &st, userdata);
        }
        atomic_store(&h->last_fn_result, r);
        atomic_store(&h->walk_ended, true);
        return r < 0 ? r : 0;
}

static int hang_stat(Origin *o, const char *rel_path, OriginStat *ret) {
        return -ENOENT;
}

static int hang_open(Origin *o, const char *rel_path, OriginFile **ret) {
        return -ENOENT;
}

static ssize_t hang_pread(OriginFile *f, void *buf, size_t size, uint64_t offset) {
        return -EIO;
}

static void hang_close(OriginFile *f) {
}

static int hang_check(Origin *o) {
        return 0;
}

static void hang_free(Origin *o) {
        HangOrigin *h = (HangOrigin *) o;
        close(h->pipe[0]);
        close(h->pipe[1]);
        free(h);
}

static const OriginOps hang_ops = {
        .kind = "hang", .stat = hang_stat, .open = hang_open, .pread = hang_pread, .close = hang_close,
        .walk = hang_walk, .check = hang_check, .free = hang_free,
};

typedef struct WalkCount {
        unsigned n;
        unsigned first_ms;      /* how long the first call takes: the caller's time, not the origin's */
} WalkCount;

static int count_fn(const char *rel_path, const OriginStat *st, void *userdata) {
        WalkCount *c = userdata;
        if (c->n++ == 0)
                usleep(c->first_ms * 1000);
        return 0;
}

static void test_walk_times_out(void **state) {
        HangOrigin *h = calloc(1, sizeof *h);
        assert_non_null(h);
        assert_int_equal(pipe2(h->pipe, O_CLOEXEC), 0);
        h->base.ops = &hang_ops;
        h->base.name = strdup("hang");
        h->base.url = strdup("/nowhere");
        origin_set_timeout(&h->base, 300);
        Origin *ref = origin_ref(&h->base);     /* ours, to look at it after the walk gave up */

        WalkCount c = { .first_ms = 500 };
        uint64_t t0 = (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_walk(&h->base, count_fn, &c), -ETIMEDOUT);
        uint64_t took = (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        print_message("hung walk answered after %" PRIu64 " ms\n", took);
        assert_int_equal(c.n, 1);
        /* The limit counts from the last entry, past the callback's own 500 ms. */
        assert_true(took >= 500 + 300);
        assert_true(took < 500 + 300 + 400);

        /* The origin comes back: the abandoned walk stops at its next entry, never calling us again. */
        assert_int_equal(write(h->pipe[1], "x", 1), 1);
        uint64_t end = (now_usec(CLOCK_MONOTONIC) / 1000) + 5000;
        while (!atomic_load(&h->walk_ended)) {
                assert_true((now_usec(CLOCK_MONOTONIC) / 1000) < end);
                usleep(10 * 1000);
        }
        assert_int_equal(atomic_load(&h->last_fn_result), -ECANCELED);
        assert_int_equal(c.n, 1);

        /* A walk that keeps finding entries is never cut, however long it takes in all. */
        atomic_store(&h->walk_ended, false);
        WalkCount c2 = { .first_ms = 0 };
        assert_int_equal(write(h->pipe[1], "x", 1), 1);
        assert_int_equal(origin_walk(&h->base, count_fn, &c2), 0);
        assert_int_equal(c2.n, 2);

        origin_unref(ref);
        origin_free(&h->base);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
                cmocka_unit_test(test_walk_times_out),
#if MUSICFS_FAILPOINTS
                cmocka_unit_test_setup_teardown(test_read_times_out, setup, teardown),
                cmocka_unit_test_setup_teardown(test_open_and_stat_time_out, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stuck_bound_fails_fast, setup, teardown),
                cmocka_unit_test_setup_teardown(test_transient_error_retried, setup, teardown),
                cmocka_unit_test_setup_teardown(test_definite_error_not_retried, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hung_read_bounded, setup, teardown),
#endif
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
