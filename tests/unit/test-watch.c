/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The watcher (daemon/sync/watch.h) on real inotify over temp directories: what it reports for file
 * and directory changes, how it coalesces them, overflows, a root that goes and comes back, polling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "time-util.h"
#include "watch.h"

#define DEADLINE_USEC (5ULL * 1000000ULL)
#define MAX_REPORTS 256

typedef struct Report {
        int64_t origin_id;
        WatchReport kind;
        char **paths;
        size_t n_paths;
} Report;

typedef struct Fixture {
        char dir[64];
        Watcher *w;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        Report reports[MAX_REPORTS];
        size_t n_reports;
} Fixture;

static void on_report(int64_t origin_id, WatchReport kind, const char *const *paths, size_t n_paths, void *userdata) {
        Fixture *f = userdata;

        pthread_mutex_lock(&f->lock);
        if (f->n_reports < MAX_REPORTS) {
                Report *r = &f->reports[f->n_reports++];
                *r = (Report) { .origin_id = origin_id, .kind = kind, .n_paths = n_paths };
                r->paths = calloc(n_paths + 1, sizeof *r->paths);
                assert_non_null(r->paths);
                for (size_t i = 0; i < n_paths; i++)
                        r->paths[i] = strdup(paths[i]);
        }
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
}

static void reports_clear(Fixture *f) {
        pthread_mutex_lock(&f->lock);
        for (size_t i = 0; i < f->n_reports; i++) {
                for (size_t j = 0; j < f->reports[i].n_paths; j++)
                        free(f->reports[i].paths[j]);
                free(f->reports[i].paths);
        }
        f->n_reports = 0;
        pthread_mutex_unlock(&f->lock);
}

/* Waits until at least n reports arrived; returns how many there are. */
static size_t wait_reports(Fixture *f, size_t n) {
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + DEADLINE_USEC;
        size_t got;

        pthread_mutex_lock(&f->lock);
        while (f->n_reports < n && now_usec(CLOCK_MONOTONIC) < deadline) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 20 * 1000 * 1000;
                if (ts.tv_nsec >= 1000000000) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&f->cond, &f->lock, &ts);
        }
        got = f->n_reports;
        pthread_mutex_unlock(&f->lock);
        return got;
}

/* Whether some CHANGED report so far named exactly path. */
static bool reported(Fixture *f, const char *path) {
        bool found = false;
        pthread_mutex_lock(&f->lock);
        for (size_t i = 0; i < f->n_reports && !found; i++)
                for (size_t j = 0; f->reports[i].kind == WATCH_REPORT_CHANGED && j < f->reports[i].n_paths; j++)
                        if (strcmp(f->reports[i].paths[j], path) == 0)
                                found = true;
        pthread_mutex_unlock(&f->lock);
        return found;
}

static void wait_reported(Fixture *f, const char *path) {
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + DEADLINE_USEC;
        while (!reported(f, path)) {
                assert_true(now_usec(CLOCK_MONOTONIC) < deadline);
                wait_reports(f, f->n_reports + 1);
        }
}

static void wait_kind(Fixture *f, WatchReport kind, size_t *ret_index) {
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + DEADLINE_USEC;
        for (;;) {
                pthread_mutex_lock(&f->lock);
                for (size_t i = 0; i < f->n_reports; i++)
                        if (f->reports[i].kind == kind) {
                                if (ret_index)
                                        *ret_index = i;
                                pthread_mutex_unlock(&f->lock);
                                return;
                        }
                size_t n = f->n_reports;
                pthread_mutex_unlock(&f->lock);
                assert_true(now_usec(CLOCK_MONOTONIC) < deadline);
                wait_reports(f, n + 1);
        }
}

static void write_file(const Fixture *f, const char *rel, const char *text) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", f->dir, rel);
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
}

static void make_dir(const Fixture *f, const char *rel) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", f->dir, rel);
        assert_int_equal(mkdir(path, 0755), 0);
}

static void rename_in(const Fixture *f, const char *from, const char *to) {
        char a[512], b[512];
        snprintf(a, sizeof a, "%s/%s", f->dir, from);
        snprintf(b, sizeof b, "%s/%s", f->dir, to);
        assert_int_equal(rename(a, b), 0);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int setup_with(void **state, uint64_t debounce, uint64_t max_delay) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-watch-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->cond, NULL);
        WatcherOptions opts = { .debounce_usec = debounce, .max_delay_usec = max_delay, .report = on_report, .userdata = f };
        assert_int_equal(watcher_new(&opts, &f->w), 0);
        *state = f;
        return 0;
}

static int setup(void **state) {
        return setup_with(state, 100 * 1000, 2 * 1000 * 1000);
}

/* A long quiet period, so that writes done in a burst land in one set. */
static int setup_slow(void **state) {
        return setup_with(state, 700 * 1000, 4 * 1000 * 1000);
}

static int teardown(void **state) {
        Fixture *f = *state;
        watcher_free(f->w);
        reports_clear(f);
        nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        pthread_mutex_destroy(&f->lock);
        pthread_cond_destroy(&f->cond);
        free(f);
        return 0;
}

static void test_modes(void **state) {
        assert_int_equal(watch_mode_from_string("inotify"), WATCH_INOTIFY);
        assert_int_equal(watch_mode_from_string("poll"), WATCH_POLL);
        assert_int_equal(watch_mode_from_string("off"), WATCH_OFF);
        assert_int_equal(watch_mode_from_string("sometimes"), _WATCH_MODE_INVALID);
        assert_int_equal(watch_mode_from_string(NULL), _WATCH_MODE_INVALID);
        assert_string_equal(watch_mode_to_string(WATCH_POLL), "poll");
        assert_null(watch_mode_to_string(_WATCH_MODE_MAX));
        assert_int_equal(watch_dir_fs_is_remote("/proc"), 0);
        assert_true(watch_dir_fs_is_remote("/nonexistent/dir") < 0);
}

static void test_files(void **state) {
        Fixture *f = *state;

        make_dir(f, "A");
        make_dir(f, "A/B");
        assert_int_equal(watcher_add(f->w, 7, "o", f->dir, WATCH_INOTIFY, 0), 0);
        assert_int_equal(watcher_count_watches(f->w, 7), 3);    /* root, A, A/B */

        write_file(f, "A/B/one.flac", "x");
        wait_reported(f, "A/B/one.flac");

        write_file(f, "top.mp3", "y");
        wait_reported(f, "top.mp3");

        rename_in(f, "A/B/one.flac", "A/two.flac");
        wait_reported(f, "A/B/one.flac");
        wait_reported(f, "A/two.flac");

        char path[512];
        reports_clear(f);
        snprintf(path, sizeof path, "%s/top.mp3", f->dir);
        assert_int_equal(unlink(path), 0);
        wait_reported(f, "top.mp3");

        /* A change of attributes (touch -d) is a change too: the scan compares the mtime. */
        snprintf(path, sizeof path, "%s/A/two.flac", f->dir);
        struct timespec ts[2] = { { .tv_sec = 4102444800 }, { .tv_sec = 4102444800 } };
        assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
        wait_reported(f, "A/two.flac");

        /* What cannot be audio is not reported at all. */
        reports_clear(f);
        write_file(f, "A/cover.jpg", "z");
        write_file(f, "A/three.ogg", "z");
        wait_reported(f, "A/three.ogg");
        assert_false(reported(f, "A/cover.jpg"));
        pthread_mutex_lock(&f->lock);
        for (size_t i = 0; i < f->n_reports; i++)
                assert_int_equal(f->reports[i].origin_id, 7);
        pthread_mutex_unlock(&f->lock);
}

static void test_directories(void **state) {
        Fixture *f = *state;

        assert_int_equal(watcher_add(f->w, 1, "o", f->dir, WATCH_INOTIFY, 0), 0);
        assert_int_equal(watcher_count_watches(f->w, 1), 1);

        /* Made in one go, faster than a watch can land on each level: the new top directory is
         * reported, whose scan finds what is below. */
        make_dir(f, "x");
        make_dir(f, "x/y");
        make_dir(f, "x/y/z");
        write_file(f, "x/y/z/early.flac", "1");
        wait_reported(f, "x");
        /* And every level is watched now. */
        assert_int_equal(watcher_count_watches(f->w, 1), 4);
        reports_clear(f);
        write_file(f, "x/y/z/later.flac", "2");
        wait_reported(f, "x/y/z/later.flac");

        /* A directory moved within the origin: both names are reported, its watches follow it. */
        reports_clear(f);
        rename_in(f, "x/y", "moved");
        wait_reported(f, "x/y");
        wait_reported(f, "moved");
        assert_int_equal(watcher_count_watches(f->w, 1), 4);
        reports_clear(f);
        write_file(f, "moved/z/after.flac", "3");
        wait_reported(f, "moved/z/after.flac");

        /* A directory removed is reported as a path that is gone; its watches go. */
        reports_clear(f);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s/moved'", f->dir);
        assert_int_equal(system(cmd), 0);
        wait_reported(f, "moved");
        assert_int_equal(watcher_count_watches(f->w, 1), 2);    /* root, x */
}

static void test_debounce(void **state) {
        Fixture *f = *state;
        char name[64];

        make_dir(f, "d");
        assert_int_equal(watcher_add(f->w, 1, "o", f->dir, WATCH_INOTIFY, 0), 0);
        assert_int_equal(watcher_count_watches(f->w, 1), 2);

        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        for (int i = 0; i < 20; i++) {
                snprintf(name, sizeof name, "d/%02d.flac", i);
                write_file(f, name, "a");
                write_file(f, name, "ab");      /* the same file again: one path */
        }
        uint64_t burst = now_usec(CLOCK_MONOTONIC) - t0;
        assert_int_equal(wait_reports(f, 1), 1);
        /* The burst took far less than the 700 ms quiet period: one set of 20 paths. */
        if (burst < 300 * 1000) {
                pthread_mutex_lock(&f->lock);
                assert_int_equal(f->reports[0].kind, WATCH_REPORT_CHANGED);
                assert_int_equal(f->reports[0].n_paths, 20);
                assert_string_equal(f->reports[0].paths[0], "d/00.flac");
                pthread_mutex_unlock(&f->lock);
        }

        /* A new directory and files in it: the directory covers them in the set. */
        reports_clear(f);
        make_dir(f, "e");
        write_file(f, "e/1.flac", "1");
        write_file(f, "d/00.flac", "abc");
        wait_reports(f, 1);
        pthread_mutex_lock(&f->lock);
        Report *r = &f->reports[0];
        bool has_e = false, has_e1 = false;
        for (size_t i = 0; i < r->n_paths; i++) {
                has_e = has_e || strcmp(r->paths[i], "e") == 0;
                has_e1 = has_e1 || strcmp(r->paths[i], "e/1.flac") == 0;
        }
        pthread_mutex_unlock(&f->lock);
        assert_true(has_e);
        assert_false(has_e1);
}

static void test_overflow(void **state) {
        Fixture *f = *state;
        size_t i;

        assert_int_equal(watcher_add(f->w, 3, "o", f->dir, WATCH_INOTIFY, 0), 0);
        assert_int_equal(watcher_count_watches(f->w, 3), 1);
        /* Directories made while the queue was lost are found by the new registration pass. */
        make_dir(f, "lost");
        assert_int_equal(watcher_simulate_overflow(f->w, 3), 0);
        wait_kind(f, WATCH_REPORT_RESCAN, &i);
        pthread_mutex_lock(&f->lock);
        assert_int_equal(f->reports[i].origin_id, 3);
        assert_int_equal(f->reports[i].n_paths, 1);
        assert_string_equal(f->reports[i].paths[0], "");
        pthread_mutex_unlock(&f->lock);
        assert_int_equal(watcher_count_watches(f->w, 3), 2);
        reports_clear(f);
        write_file(f, "lost/found.flac", "1");
        wait_reported(f, "lost/found.flac");
}

static void test_root_lost_and_back(void **state) {
        Fixture *f = *state;
        char away[128];

        make_dir(f, "root");
        snprintf(away, sizeof away, "%s/away", f->dir);
        char root[128];
        snprintf(root, sizeof root, "%s/root", f->dir);
        assert_int_equal(watcher_add(f->w, 5, "o", root, WATCH_INOTIFY, 0), 0);
        assert_int_equal(watcher_count_watches(f->w, 5), 1);

        assert_int_equal(rename(root, away), 0);
        wait_kind(f, WATCH_REPORT_LOST, NULL);
        assert_true(watcher_count_watches(f->w, 5) < 0);

        /* Back (a health check would see it): watched again, rescanned for what it missed. */
        reports_clear(f);
        assert_int_equal(rename(away, root), 0);
        assert_int_equal(watcher_reregister(f->w, 5), 0);
        wait_kind(f, WATCH_REPORT_RESCAN, NULL);
        assert_int_equal(watcher_count_watches(f->w, 5), 1);
        write_file(f, "root/new.flac", "1");
        wait_reported(f, "new.flac");

        /* Gone again and back without anyone calling: the watcher's own retry (1 s) finds it. */
        reports_clear(f);
        assert_int_equal(rename(root, away), 0);
        wait_kind(f, WATCH_REPORT_LOST, NULL);
        assert_int_equal(rename(away, root), 0);
        wait_kind(f, WATCH_REPORT_RESCAN, NULL);
        assert_int_equal(watcher_count_watches(f->w, 5), 1);
}

static void test_poll_and_off(void **state) {
        Fixture *f = *state;
        size_t polls = 0;

        assert_int_equal(watcher_add(f->w, 8, "p", f->dir, WATCH_POLL, 200 * 1000), 0);
        assert_int_equal(watcher_add(f->w, 9, "q", f->dir, WATCH_OFF, 0), 0);
        assert_int_equal(watcher_count_watches(f->w, 8), -EOPNOTSUPP);
        assert_true(watcher_count_watches(f->w, 9) < 0);
        write_file(f, "ignored.flac", "1");
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + DEADLINE_USEC;
        while (polls < 3 && now_usec(CLOCK_MONOTONIC) < deadline) {
                wait_reports(f, polls + 1);
                polls = 0;
                pthread_mutex_lock(&f->lock);
                for (size_t i = 0; i < f->n_reports; i++) {
                        /* Neither watches: only the poll's rescans of origin 8 come. */
                        assert_int_equal(f->reports[i].origin_id, 8);
                        assert_int_equal(f->reports[i].kind, WATCH_REPORT_RESCAN);
                        polls++;
                }
                pthread_mutex_unlock(&f->lock);
        }
        assert_true(polls >= 3);

        assert_int_equal(watcher_remove(f->w, 8), 0);
        assert_int_equal(watcher_count_watches(f->w, 8), -ENOENT);
        assert_int_equal(watcher_add(NULL, 1, "x", "/", WATCH_POLL, 0), -EINVAL);
        /* inotify needs a local directory; a polled origin (s3://, sftp://) does not. */
        assert_int_equal(watcher_add(f->w, 1, "x", "relative", WATCH_INOTIFY, 0), -EINVAL);
        assert_int_equal(watcher_add(f->w, 9, "remote", "s3://bucket/music", WATCH_POLL, 0), 0);
        assert_int_equal(watcher_remove(f->w, 9), 0);
}

/* Out of inotify watches (here a limit of 3 through the test hook; the kernel's is per user and
 * shared): the origin is polled instead, at its poll interval. Also when a directory made later
 * crosses the limit. */
static void test_watch_limit(void **state) {
        Fixture *f = *state;
        size_t i;

        make_dir(f, "a");
        make_dir(f, "b");
        make_dir(f, "c");
        assert_int_equal(watcher_add(f->w, 4, "o", f->dir, WATCH_INOTIFY, 300 * 1000), 0);
        wait_kind(f, WATCH_REPORT_POLLING, &i);
        assert_int_equal(watcher_count_watches(f->w, 4), -EOPNOTSUPP);
        reports_clear(f);
        wait_kind(f, WATCH_REPORT_RESCAN, &i);
        pthread_mutex_lock(&f->lock);
        assert_int_equal(f->reports[i].origin_id, 4);
        assert_string_equal(f->reports[i].paths[0], "");
        pthread_mutex_unlock(&f->lock);

        /* Under the limit at first, over it when a directory appears. */
        char other[128];
        snprintf(other, sizeof other, "%s/a", f->dir);
        reports_clear(f);
        assert_int_equal(watcher_add(f->w, 5, "p", other, WATCH_INOTIFY, 300 * 1000), 0);
        assert_int_equal(watcher_count_watches(f->w, 5), 1);
        make_dir(f, "a/x");
        make_dir(f, "a/y");
        make_dir(f, "a/z");
        wait_kind(f, WATCH_REPORT_POLLING, NULL);
        assert_int_equal(watcher_count_watches(f->w, 5), -EOPNOTSUPP);
}

static int setup_limited(void **state) {
        int r = setup_with(state, 100 * 1000, 2 * 1000 * 1000);
        Fixture *f = *state;
        /* The options are copied at watcher_new(): make a new one with the limit. */
        watcher_free(f->w);
        WatcherOptions opts = { .report = on_report, .userdata = f, .max_watches = 3 };
        assert_int_equal(watcher_new(&opts, &f->w), 0);
        return r;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_modes),
                cmocka_unit_test_setup_teardown(test_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_directories, setup, teardown),
                cmocka_unit_test_setup_teardown(test_debounce, setup_slow, teardown),
                cmocka_unit_test_setup_teardown(test_overflow, setup, teardown),
                cmocka_unit_test_setup_teardown(test_root_lost_and_back, setup, teardown),
                cmocka_unit_test_setup_teardown(test_poll_and_off, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_limit, setup_limited, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
