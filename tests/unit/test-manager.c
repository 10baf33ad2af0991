/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The manager's pure parts: the configuration layering (defaults <- file <- flags) with its one-line
 * errors, the reload diff (hot and cold keys) and the cache-directory lock with the holder's PID.
 * The daemon as a whole is tested through the bus and signals (tests/bus, tests/resilience). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "log.h"
#include "manager.h"

typedef struct Fixture {
        char dir[64];
        char conf[128];
        char music[128];
        char other[128];
        char mnt[128];
} Fixture;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        if (!f)
                return -1;
        strcpy(f->dir, "/tmp/test-manager-XXXXXX");
        if (!mkdtemp(f->dir))
                return -1;
        snprintf(f->conf, sizeof f->conf, "%s/musicfsd.conf", f->dir);
        snprintf(f->music, sizeof f->music, "%s/music", f->dir);
        snprintf(f->other, sizeof f->other, "%s/other", f->dir);
        snprintf(f->mnt, sizeof f->mnt, "%s/mnt", f->dir);
        if (mkdir(f->music, 0755) < 0 || mkdir(f->other, 0755) < 0 || mkdir(f->mnt, 0755) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(f);
        return 0;
}

static void write_file(const char *path, const char *text) {
        FILE *fp = fopen(path, "we");
        assert_non_null(fp);
        assert_int_equal(fputs(text, fp) >= 0, 1);
        assert_int_equal(fclose(fp), 0);
}

static void test_flags_without_file(void **state) {
        Fixture *f = *state;
        ManagerArgs a;
        Config c = {};
        Template *tpl = NULL;
        char *error = NULL;

        manager_args_init(&a);
        /* An explicit file that is missing must be an error, so point at a real (empty) one. */
        write_file(f->conf, "");
        a.config_path = strdup(f->conf);
        a.mountpoint = strdup(f->mnt);
        assert_int_equal(manager_args_add_origin(&a, f->music), 0);

        assert_int_equal(manager_load_config(&a, &c, &tpl, &error), 0);
        assert_null(error);
        assert_non_null(tpl);
        assert_string_equal(c.mountpoint, f->mnt);
        assert_string_equal(c.cache_dir, CONFIG_DEFAULT_CACHE_DIR);
        assert_string_equal(c.template, CONFIG_DEFAULT_TEMPLATE);
        assert_int_equal(c.n_origins, 1);
        assert_string_equal(c.origins[0].path, f->music);
        assert_string_equal(c.origins[0].name, "music");
        assert_int_equal(c.log_level, LOG_INFO);
        assert_false(c.user_bus);

        template_free(tpl);
        config_free(&c);
        manager_args_free(&a);
}

static void test_flags_override_file(void **state) {
        Fixture *f = *state;
        ManagerArgs a;
        Config c = {};
        Template *tpl = NULL;
        char *error = NULL;
        char text[1024];

        snprintf(text, sizeof text,
                 "[musicfsd]\nmountpoint = %s\ncache_dir = %s/from-file\nfuse_threads = 4\nlog_level = debug\n"
                 "template = {artist}/{title}.{ext}\n"
                 "[origin \"nas\"]\npath = %s\npriority = 5\n",
                 f->mnt, f->dir, f->other);
        write_file(f->conf, text);

        manager_args_init(&a);
        a.config_path = strdup(f->conf);
        assert_int_equal(asprintf(&a.cache_dir, "%s/from-flag", f->dir) > 0, 1);
        a.threads = 2;
        a.log_level = LOG_WARNING;
        a.user_bus = true;
        assert_int_equal(manager_args_add_origin(&a, f->music), 0);

        assert_int_equal(manager_load_config(&a, &c, &tpl, &error), 0);
        assert_string_equal(c.mountpoint, f->mnt);                 /* from the file */
        assert_string_equal(c.cache_dir, a.cache_dir);              /* flag wins */
        assert_string_equal(c.template, "{artist}/{title}.{ext}");  /* file, no flag */
        assert_int_equal(c.fuse_threads, 2);
        assert_int_equal(c.log_level, LOG_WARNING);
        assert_true(c.user_bus);
        /* --origin adds to the file's origins. */
        assert_int_equal(c.n_origins, 2);
        assert_string_equal(c.origins[0].name, "nas");
        assert_int_equal(c.origins[0].priority, 5);
        assert_string_equal(c.origins[1].path, f->music);
        assert_string_equal(c.config_path, f->conf);

        template_free(tpl);
        config_free(&c);
        manager_args_free(&a);
}

static void expect_error(ManagerArgs *a, const char *needle) {
        Config c = {};
        Template *tpl = NULL;
        char *error = NULL;

        assert_true(manager_load_config(a, &c, &tpl, &error) < 0);
        assert_null(tpl);
        assert_null(c.mountpoint);
        assert_non_null(error);
        assert_null(strchr(error, '\n'));       /* one line */
        if (!strstr(error, needle))
                fail_msg("error \"%s\" does not mention \"%s\"", error, needle);
        free(error);
}

static void test_errors(void **state) {
        Fixture *f = *state;
        ManagerArgs a;
        char text[512], where[160];

        /* A bad line: FILE:LINE first. */
        snprintf(text, sizeof text, "[musicfsd]\nmountpoint = %s\nfuse_threads = many\n", f->mnt);
        write_file(f->conf, text);
        manager_args_init(&a);
        a.config_path = strdup(f->conf);
        snprintf(where, sizeof where, "%s:3:", f->conf);
        expect_error(&a, where);
        manager_args_free(&a);

        /* A missing explicit file. */
        manager_args_init(&a);
        assert_int_equal(asprintf(&a.config_path, "%s/nope.conf", f->dir) > 0, 1);
        a.mountpoint = strdup(f->mnt);
        expect_error(&a, "nope.conf");
        manager_args_free(&a);

        /* A template that does not parse: the parser's reason. */
        write_file(f->conf, "");
        manager_args_init(&a);
        a.config_path = strdup(f->conf);
        a.mountpoint = strdup(f->mnt);
        a.template = strdup("{artist}/{nosuchfield}.{ext}");
        assert_int_equal(manager_args_add_origin(&a, f->music), 0);
        expect_error(&a, "nosuchfield");
        manager_args_free(&a);

        /* A relative mountpoint fails validation. */
        manager_args_init(&a);
        a.config_path = strdup(f->conf);
        a.mountpoint = strdup("relative/mnt");
        assert_int_equal(manager_args_add_origin(&a, f->music), 0);
        expect_error(&a, "relative/mnt");
        manager_args_free(&a);

        /* An origin that does not exist. */
        manager_args_init(&a);
        a.config_path = strdup(f->conf);
        a.mountpoint = strdup(f->mnt);
        snprintf(where, sizeof where, "%s/does-not-exist", f->dir);
        assert_int_equal(manager_args_add_origin(&a, where), 0);
        expect_error(&a, "does-not-exist");
        manager_args_free(&a);
}

static void test_config_diff(void **state) {
        Fixture *f = *state;
        ManagerArgs a;
        Config old = {}, new = {};
        char *error = NULL;

        write_file(f->conf, "");
        manager_args_init(&a);
        a.config_path = strdup(f->conf);
        a.mountpoint = strdup(f->mnt);
        assert_int_equal(manager_args_add_origin(&a, f->music), 0);
        assert_int_equal(manager_load_config(&a, &old, NULL, &error), 0);
        assert_int_equal(manager_load_config(&a, &new, NULL, &error), 0);
        assert_int_equal(manager_config_diff(&old, &new), 0);

        new.log_level = LOG_DEBUG;
        new.attr_timeout = 5;
        free(new.template);
        new.template = strdup("{title}.{ext}");
        new.scan_batch = 10;
        unsigned d = manager_config_diff(&old, &new);
        assert_int_equal(d, CONFIG_CHANGE_LOG_LEVEL | CONFIG_CHANGE_TIMEOUTS | CONFIG_CHANGE_TEMPLATE |
                            CONFIG_CHANGE_SCAN_BATCH);
        assert_int_equal(d & CONFIG_CHANGE_COLD, 0);

        config_free(&new);
        assert_int_equal(manager_load_config(&a, &new, NULL, &error), 0);
        free(new.cache_dir);
        new.cache_dir = strdup("/elsewhere");
        new.fuse_threads = 3;
        new.user_bus = true;
        new.origins[0].priority = 99;
        d = manager_config_diff(&old, &new);
        assert_int_equal(d, CONFIG_CHANGE_CACHE_DIR | CONFIG_CHANGE_FUSE_THREADS | CONFIG_CHANGE_BUS |
                            CONFIG_CHANGE_ORIGINS);
        assert_int_equal(d & CONFIG_CHANGE_HOT, 0);

        config_free(&new);
        assert_int_equal(manager_load_config(&a, &new, NULL, &error), 0);
        free(new.mountpoint);
        new.mountpoint = strdup("/srv/other");
        assert_int_equal(manager_config_diff(&old, &new), CONFIG_CHANGE_MOUNTPOINT);

        config_free(&old);
        config_free(&new);
        manager_args_free(&a);
}

static void test_lock(void **state) {
        Fixture *f = *state;
        int fd = -1, fd2 = -1;
        pid_t holder = -1;
        char path[192], buf[32] = {};

        assert_int_equal(manager_lock_cache_dir(f->dir, &fd, &holder), 0);
        assert_true(fd >= 0);

        /* Our PID is in it, and only our PID (a longer stale one was truncated). */
        snprintf(path, sizeof path, "%s/%s", f->dir, MANAGER_LOCK_FILE);
        int rfd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(rfd >= 0);
        assert_true(read(rfd, buf, sizeof buf - 1) > 0);
        close(rfd);
        assert_int_equal(strtol(buf, NULL, 10), getpid());

        /* A second holder (flock is per open file, so this process can play the second daemon). */
        assert_int_equal(manager_lock_cache_dir(f->dir, &fd2, &holder), -EBUSY);
        assert_int_equal(fd2, -1);
        assert_int_equal(holder, getpid());

        /* Released when the holder's fd closes (as when it dies). */
        close(fd);
        holder = -1;
        assert_int_equal(manager_lock_cache_dir(f->dir, &fd2, &holder), 0);
        assert_int_equal(holder, -1);
        close(fd2);

        /* A long, stale PID from an earlier run is replaced, not partly overwritten. */
        int wfd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
        assert_true(wfd >= 0);
        assert_int_equal(write(wfd, "1234567890\n", 11), 11);
        close(wfd);
        assert_int_equal(manager_lock_cache_dir(f->dir, &fd, &holder), 0);
        rfd = open(path, O_RDONLY | O_CLOEXEC);
        memset(buf, 0, sizeof buf);
        assert_true(read(rfd, buf, sizeof buf - 1) > 0);
        close(rfd);
        char want[32];
        snprintf(want, sizeof want, "%ld\n", (long) getpid());
        assert_string_equal(buf, want);
        close(fd);

        /* A cache directory that does not exist. */
        snprintf(path, sizeof path, "%s/missing", f->dir);
        assert_int_equal(manager_lock_cache_dir(path, &fd, &holder), -ENOENT);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_flags_without_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flags_override_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_diff, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
        };
        log_set_max_level(LOG_CRIT);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
