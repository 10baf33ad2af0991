/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The manager's pure parts: the configuration layering (defaults <- file <- flags) with its one-line
 * errors, the reload diff (hot and cold keys), the cache-directory lock with the holder's PID, the
 * URL secret stripping the origin objects show, and the origin lifetime the runtime RemoveOrigin
 * relies on (origin_set_remove() with readers holding references).
 * The daemon as a whole is tested through the bus and signals (tests/bus, tests/resilience). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "bus-api.h"
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

static void test_url_strip_secrets(void **state) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                /* Plain paths and file URLs have nothing to hide. */
                { "/srv/music", "/srv/music" },
                { "/srv/with:colon@at?x=password", "/srv/with:colon@at?x=password" },
                { "file:///srv/music", "file:///srv/music" },
                { "", "" },
                { "relative/dir", "relative/dir" },
                /* The password of the userinfo goes, the user stays. */
                { "sftp://me:hunter2@nas.local/music", "sftp://me@nas.local/music" },
                { "sftp://me:hunter2@nas.local:2222/music", "sftp://me@nas.local:2222/music" },
                { "sftp://me@nas.local/music", "sftp://me@nas.local/music" },
                { "sftp://:hunter2@nas/x", "sftp://nas/x" },
                { "sftp://me:@nas/x", "sftp://me@nas/x" },
                { "s3://AKIAXXXX:hunter2@bucket", "s3://AKIAXXXX@bucket" },
                /* The last '@' of the authority ends the userinfo; one in the path is not userinfo. */
                { "sftp://me:p@ss@nas/x", "sftp://me@nas/x" },
                { "sftp://nas/a:b@c", "sftp://nas/a:b@c" },
                /* Credentials in the query go, whatever their case or escaping; the rest stays in order. */
                { "s3://bucket/prefix?region=eu-west-1&secret_key=hunter2&endpoint=http://127.0.0.1:9000",
                  "s3://bucket/prefix?region=eu-west-1&endpoint=http://127.0.0.1:9000" },
                { "https://h/x?X-Amz-Credential=AK%2F2024&X-Amz-Signature=abc&X-Amz-Date=1",
                  "https://h/x?X-Amz-Date=1" },
                { "https://h/x?x%2Damz%2Dsecurity%2Dtoken=t&a=1", "https://h/x?a=1" },
                { "s3://b?token=1&password=2&PASS=3&apikey=4", "s3://b" },
                { "s3://b?a=1&&b=2", "s3://b?a=1&b=2" },
                { "s3://b?keyring=ok&key", "s3://b?keyring=ok" },
                { "s3://u:p@b/p?sig=zz#frag", "s3://u@b/p#frag" },
                { "s3://b?", "s3://b" },
                { "s3://b#only=fragment", "s3://b#only=fragment" },
                /* Something that only looks like a scheme is not one. */
                { "1s3://u:p@b", "1s3://u:p@b" },
                { "://u:p@b", "://u:p@b" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *out = NULL;
                assert_int_equal(manager_url_strip_secrets(cases[i].in, &out), 0);
                if (strcmp(out, cases[i].out) != 0)
                        fail_msg("strip(\"%s\") = \"%s\", want \"%s\"", cases[i].in, out, cases[i].out);
                assert_null(strstr(out, "hunter2"));
                free(out);
        }
        assert_int_equal(manager_url_strip_secrets(NULL, &(char *) { NULL }), -EINVAL);
}

static void test_address_strip_guid(void **state) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "unix:path=/run/dbus/system_bus_socket", "unix:path=/run/dbus/system_bus_socket" },
                { "unix:path=/tmp/bus,guid=0123abcd", "unix:path=/tmp/bus" },
                { "unix:guid=0123abcd,path=/tmp/bus", "unix:path=/tmp/bus" },
                { "unix:abstract=/tmp/x,guid=1,foo=bar", "unix:abstract=/tmp/x,foo=bar" },
                { "unix:path=/a,guid=1;tcp:host=localhost,port=1,guid=2", "unix:path=/a;tcp:host=localhost,port=1" },
                { "unix:path=/a/guid=1", "unix:path=/a/guid=1" },
                { "", "" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *out = NULL;
                assert_int_equal(manager_address_strip_guid(cases[i].in, &out), 0);
                if (strcmp(out, cases[i].out) != 0)
                        fail_msg("strip_guid(\"%s\") = \"%s\", want \"%s\"", cases[i].in, out, cases[i].out);
                free(out);
        }
}

static void test_health_names(void **state) {
        assert_string_equal(origin_health_state_to_string(ORIGIN_HEALTHY), MUSICFS_HEALTH_HEALTHY);
        assert_string_equal(origin_health_state_to_string(ORIGIN_DEGRADED), MUSICFS_HEALTH_DEGRADED);
        assert_string_equal(origin_health_state_to_string(ORIGIN_UNHEALTHY), MUSICFS_HEALTH_UNHEALTHY);
        assert_string_equal(origin_health_state_to_string(_ORIGIN_HEALTH_MAX), "unknown");
}

static Origin *new_origin(const char *name, const char *dir, unsigned priority, int64_t id) {
        Origin *o = NULL;
        assert_int_equal(origin_local_new(name, dir, priority, &o), 0);
        o->id = id;
        return o;
}

/* A reader that holds a reference keeps a removed origin usable; the last reference frees it
 * (under the sanitizers, a use after free or a leak here fails the test). */
static void test_origin_set_remove(void **state) {
        Fixture *f = *state;
        OriginSet *set = NULL;
        char path[192];

        snprintf(path, sizeof path, "%s/song.flac", f->music);
        write_file(path, "0123456789");

        assert_int_equal(origin_set_new(&set), 0);
        assert_int_equal(origin_set_add(set, new_origin("music", f->music, 10, 1)), 0);
        assert_int_equal(origin_set_add(set, new_origin("other", f->other, 5, 2)), 0);
        assert_int_equal(origin_set_remove(set, 99), -ENOENT);

        Origin *held = origin_set_get_ref(set, 1);
        assert_non_null(held);
        OriginFile *file = NULL;
        assert_int_equal(origin_open(held, "song.flac", &file), 0);

        assert_int_equal(origin_set_remove(set, 1), 0);
        assert_null(origin_set_get(set, 1));
        assert_null(origin_set_get_ref(set, 1));
        assert_int_equal(origin_set_size(set), 1);
        assert_string_equal(origin_set_at(set, 0)->name, "other");
        assert_null(origin_set_at_ref(set, 1));
        assert_int_equal(origin_set_remove(set, 1), -ENOENT);

        /* Still whole for the reader that has it. */
        char buf[16] = {};
        assert_int_equal(origin_pread_full(file, buf, sizeof buf, 0), 10);
        assert_memory_equal(buf, "0123456789", 10);
        assert_string_equal(held->name, "music");
        assert_int_equal(origin_check(held), 0);
        origin_close(file);
        origin_unref(held);

        /* A name freed by a removal can be added again. */
        assert_int_equal(origin_set_add(set, new_origin("music", f->music, 10, 3)), 0);
        assert_int_equal(origin_set_size(set), 2);
        Origin *again = origin_set_at_ref(set, 1);
        assert_string_equal(again->name, "music");
        origin_unref(again);

        /* origin_free() of an origin nobody else holds frees at once, as before references. */
        Origin *lone = new_origin("lone", f->other, 1, 4);
        origin_free(lone);
        origin_set_free(set);
}

typedef struct Reader {
        OriginSet *set;
        atomic_bool stop;
        unsigned found;
} Reader;

static void *reader_main(void *userdata) {
        Reader *r = userdata;
        while (!atomic_load(&r->stop))
                for (int64_t id = 1; id <= 2; id++) {
                        Origin *o = origin_set_get_ref(r->set, id);
                        if (!o)
                                continue;
                        /* Use it after the lookup, as a FUSE read does. */
                        if (origin_check(o) == 0 && o->name[0])
                                r->found++;
                        origin_unref(o);
                }
        return NULL;
}

/* Readers looking origins up while the loop removes and adds them: no reader sees a freed origin. */
static void test_origin_set_concurrent_remove(void **state) {
        Fixture *f = *state;
        Reader r = {};
        pthread_t threads[3];

        assert_int_equal(origin_set_new(&r.set), 0);
        assert_int_equal(origin_set_add(r.set, new_origin("other", f->other, 5, 2)), 0);
        for (size_t i = 0; i < ELEMENTSOF(threads); i++)
                assert_int_equal(pthread_create(&threads[i], NULL, reader_main, &r), 0);
        for (unsigned i = 0; i < 2000; i++) {
                assert_int_equal(origin_set_add(r.set, new_origin("music", f->music, 10, 1)), 0);
                assert_int_equal(origin_set_remove(r.set, 1), 0);
        }
        atomic_store(&r.stop, true);
        for (size_t i = 0; i < ELEMENTSOF(threads); i++)
                pthread_join(threads[i], NULL);
        assert_true(r.found > 0);
        assert_int_equal(origin_set_size(r.set), 1);
        origin_set_free(r.set);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_flags_without_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flags_override_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_diff, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
                cmocka_unit_test(test_url_strip_secrets),
                cmocka_unit_test(test_address_strip_guid),
                cmocka_unit_test(test_health_names),
                cmocka_unit_test_setup_teardown(test_origin_set_remove, setup, teardown),
                cmocka_unit_test_setup_teardown(test_origin_set_concurrent_remove, setup, teardown),
        };
        log_set_max_level(LOG_CRIT);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
