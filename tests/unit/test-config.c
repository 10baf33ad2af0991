/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Configuration: defaults, files and drop-ins, every error with its FILE:LINE, --origin naming and
 * config_validate(). Files live in a mkdtemp() directory. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "config.h"
#include "macro.h"

typedef struct Fixture {
        char dir[64];
        char conf[128];         /* <dir>/musicfsd.conf */
        char dropins[128];      /* <dir>/musicfsd.conf.d */
        char music[128];        /* an existing directory for origins */
} Fixture;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        if (!f)
                return -1;
        strcpy(f->dir, "/tmp/test-config-XXXXXX");
        if (!mkdtemp(f->dir))
                return -1;
        snprintf(f->conf, sizeof f->conf, "%s/musicfsd.conf", f->dir);
        snprintf(f->dropins, sizeof f->dropins, "%s/musicfsd.conf.d", f->dir);
        snprintf(f->music, sizeof f->music, "%s/music", f->dir);
        if (mkdir(f->music, 0755) < 0)
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

static void write_bytes(const char *path, const char *data, size_t size) {
        FILE *file = fopen(path, "we");
        assert_non_null(file);
        assert_int_equal(fwrite(data, 1, size, file), size);
        assert_int_equal(fclose(file), 0);
}

static void write_file(const char *path, const char *data) {
        write_bytes(path, data, strlen(data));
}

static void write_dropin(Fixture *f, const char *name, const char *data) {
        char path[256];
        if (mkdir(f->dropins, 0755) < 0)
                assert_int_equal(errno, EEXIST);
        snprintf(path, sizeof path, "%s/%s", f->dropins, name);
        write_file(path, data);
}

static void load_ok(Config *c, const char *path) {
        char *error = NULL;
        int r = config_load_file(c, path, true, &error);
        if (r < 0)
                fail_msg("loading %s: %d %s", path, r, strna(error));
        assert_null(error);
}

/* ---- defaults and a full file -------------------------------------------------------------- */

static void test_defaults(void **state) {
        Config c;

        config_init_defaults(&c);
        assert_null(c.mountpoint);
        assert_string_equal(c.cache_dir, CONFIG_DEFAULT_CACHE_DIR);
        assert_string_equal(c.template, CONFIG_DEFAULT_TEMPLATE);
        assert_false(c.user_bus);
        assert_int_equal(c.fuse_threads, 8);
        assert_int_equal(c.read_ahead_kb, 1024);
        assert_int_equal(c.scan_batch, 256);
        assert_int_equal(c.log_level, LOG_INFO);
        assert_int_equal(c.entry_timeout, 86400);
        assert_int_equal(c.attr_timeout, 86400);
        assert_true(c.cache_budget == UINT64_C(10) * 1024 * 1024 * 1024);
        assert_int_equal(c.cache_readahead, 1);
        assert_false(c.cache_passthrough);
        assert_int_equal(c.cache_maintenance_sec, 60);
        assert_null(c.origins);
        assert_int_equal(c.n_origins, 0);
        assert_null(c.config_path);

        config_free(&c);
        assert_null(c.cache_dir);
        assert_null(c.template);
        config_free(&c);        /* twice is harmless */
}

static void test_full_file(void **state) {
        Fixture *f = *state;
        char text[2048];
        Config c;

        snprintf(text, sizeof text,
                 "\xEF\xBB\xBF# MusicFS configuration\n"
                 "; another comment\n"
                 "\n"
                 "[musicfsd]\n"
                 "mountpoint = /srv/music\n"
                 "cache_dir=/var/cache/mfs   ; inline comment\n"
                 "template = {artist}/{title}.{ext}\n"
                 "   fuse_threads = 16\n"
                 "read_ahead_kb = 0\n"
                 "\tlog_level = debug\n"
                 "bus = user\r\n"
                 "scan_batch = 1000\n"
                 "entry_timeout = 0\n"
                 "attr_timeout = 60\n"
                 "\n"
                 "[origin \"main\"]\n"
                 "  kind = local\n"
                 "  path = %s\n"
                 "\n"
                 "[ origin.backup_2-x ]  # a comment\n"
                 "path = /mnt/backup\n"
                 "priority = 5\n"
                 "[origin \"empty\"]\n",
                 f->music);
        write_file(f->conf, text);

        config_init_defaults(&c);
        load_ok(&c, f->conf);
        assert_string_equal(c.mountpoint, "/srv/music");
        assert_string_equal(c.cache_dir, "/var/cache/mfs");
        assert_string_equal(c.template, "{artist}/{title}.{ext}");
        assert_int_equal(c.fuse_threads, 16);
        assert_int_equal(c.read_ahead_kb, 0);
        assert_int_equal(c.log_level, LOG_DEBUG);
        assert_true(c.user_bus);
        assert_int_equal(c.scan_batch, 1000);
        assert_int_equal(c.entry_timeout, 0);
        assert_int_equal(c.attr_timeout, 60);
        assert_string_equal(c.config_path, f->conf);

        assert_int_equal(c.n_origins, 3);
        assert_string_equal(c.origins[0].name, "main");
        assert_string_equal(c.origins[0].kind, "local");
        assert_string_equal(c.origins[0].path, f->music);
        assert_int_equal(c.origins[0].priority, 10);
        assert_string_equal(c.origins[1].name, "backup_2-x");
        assert_string_equal(c.origins[1].kind, "local");
        assert_string_equal(c.origins[1].path, "/mnt/backup");
        assert_int_equal(c.origins[1].priority, 5);
        /* A section without keys still declares the origin (validation then wants its path). */
        assert_string_equal(c.origins[2].name, "empty");
        assert_null(c.origins[2].path);
        assert_int_equal(c.origins[2].priority, 30);
        config_free(&c);
}

static void test_other_values(void **state) {
        Fixture *f = *state;
        Config c;

        write_file(f->conf, "[musicfsd]\nbus = system\nlog_level = WARN\nfuse_threads = 64\n"
                            "read_ahead_kb = 16384\nscan_batch = 1\nentry_timeout = 31536000\n[origin.x]\npriority = 0\n");
        config_init_defaults(&c);
        c.user_bus = true;
        load_ok(&c, f->conf);
        assert_false(c.user_bus);
        assert_int_equal(c.log_level, LOG_WARNING);
        assert_int_equal(c.fuse_threads, 64);
        assert_int_equal(c.read_ahead_kb, 16384);
        assert_int_equal(c.scan_batch, 1);
        assert_int_equal(c.entry_timeout, 31536000);
        assert_int_equal(c.origins[0].priority, 0);
        config_free(&c);
}

static void test_quoted_values(void **state) {
        Fixture *f = *state;
        Config c;

        write_file(f->conf, "[musicfsd]\nmountpoint = \"/srv/My Music \"\ntemplate = \" {title}\"\n"
                            "[origin.a]\npath = \"/srv/a b\"\nkind = \"local\"\npriority = \"7\"\n"
                            "[origin.b]\npath = \"/srv/\"quoted\"\"\n");
        config_init_defaults(&c);
        load_ok(&c, f->conf);
        assert_string_equal(c.mountpoint, "/srv/My Music ");
        assert_string_equal(c.template, " {title}");
        assert_string_equal(c.origins[0].path, "/srv/a b");
        assert_int_equal(c.origins[0].priority, 7);
        /* Only one pair of quotes at the ends is removed. */
        assert_string_equal(c.origins[1].path, "/srv/\"quoted\"");
        config_free(&c);

        write_file(f->conf, "[musicfsd]\nmountpoint = \"\"\n");
        config_init_defaults(&c);
        char *error = NULL;
        assert_int_equal(config_load_file(&c, f->conf, true, &error), -EINVAL);
        assert_non_null(strstr(error, ":2: mountpoint needs a value"));
        free(error);
        config_free(&c);
}

/* No cmocka asserts: this also runs in a forked child. */
static bool check_unreadable(Fixture *f) {
        char *error = NULL;
        Config c;

        config_init_defaults(&c);
        int r = config_load_file(&c, f->conf, true, &error);
        bool ok = r == -EACCES && error && strstr(error, f->conf) && strstr(error, "Permission denied");
        if (!ok)
                fprintf(stderr, "unreadable file gave %d '%s'\n", r, strna(error));
        free(error);
        /* Not explicit does not mean "ignore errors": only a missing file is skipped. */
        r = config_load_file(&c, f->conf, false, NULL);
        ok = ok && r == -EACCES;
        config_free(&c);
        return ok;
}

static void test_unreadable_file(void **state) {
        Fixture *f = *state;

        write_file(f->conf, "[musicfsd]\n");
        assert_int_equal(chmod(f->conf, 0), 0);
        if (geteuid() != 0) {
                assert_true(check_unreadable(f));
                return;
        }
        /* root reads anything: drop to nobody in a child, where the 0700 directory also bars the way. */
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
                        _exit(77);
                _exit(check_unreadable(f) ? 0 : 1);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77)
                skip();
        assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- drop-ins ------------------------------------------------------------------------------ */

static void test_dropins(void **state) {
        Fixture *f = *state;
        char text[512];
        Config c;

        snprintf(text, sizeof text,
                 "[musicfsd]\nmountpoint = /srv/a\nfuse_threads = 2\nscan_batch = 10\n"
                 "[origin \"music\"]\npath = %s\npriority = 5\n", f->music);
        write_file(f->conf, text);
        /* Created out of order (neither creation order nor its reverse is lexical). */
        write_dropin(f, "20-later.conf", "[musicfsd]\nfuse_threads = 6\nmountpoint = /srv/later\n"
                                         "[origin.music]\npath = /srv/elsewhere\n");
        write_dropin(f, "10-first.conf", "[musicfsd]\nfuse_threads = 4\nmountpoint = /srv/b\n"
                                         "[origin \"extra\"]\npath = /srv/extra\n");
        write_dropin(f, "30-last.conf", "[musicfsd]\nmountpoint = /srv/c\n");
        write_dropin(f, "30-other.txt", "this is not read\n");
        write_dropin(f, ".hidden.conf", "[bogus]\n");
        write_dropin(f, "conf", "[bogus]\n");
        char subdir[256];
        snprintf(subdir, sizeof subdir, "%s/.conf", f->dropins);
        assert_int_equal(mkdir(subdir, 0755), 0);

        config_init_defaults(&c);
        load_ok(&c, f->conf);
        /* Lexical order: 10-first, 20-later, 30-last, each overriding what came before. */
        assert_int_equal(c.fuse_threads, 6);
        assert_string_equal(c.mountpoint, "/srv/c");
        assert_int_equal(c.scan_batch, 10);
        assert_int_equal(c.n_origins, 2);
        /* The drop-in amends the origin of the same name, keeping what it does not set. */
        assert_string_equal(c.origins[0].name, "music");
        assert_string_equal(c.origins[0].path, "/srv/elsewhere");
        assert_int_equal(c.origins[0].priority, 5);
        assert_string_equal(c.origins[1].name, "extra");
        assert_string_equal(c.origins[1].path, "/srv/extra");
        assert_int_equal(c.origins[1].priority, 20);
        assert_string_equal(c.config_path, f->conf);
        config_free(&c);
}

static void test_dropins_without_main_file(void **state) {
        Fixture *f = *state;
        char *error = NULL;
        Config c;

        write_dropin(f, "50-x.conf", "[musicfsd]\nscan_batch = 7\n");
        config_init_defaults(&c);
        /* Not explicit: a missing file is fine and its drop-ins still apply. */
        assert_int_equal(config_load_file(&c, f->conf, false, &error), 0);
        assert_null(error);
        assert_int_equal(c.scan_batch, 7);
        assert_null(c.config_path);
        config_free(&c);
}

static void test_error_in_dropin(void **state) {
        Fixture *f = *state;
        char *error = NULL, expected[512];
        Config c;

        write_file(f->conf, "[musicfsd]\nfuse_threads = 3\n");
        write_dropin(f, "10-ok.conf", "[musicfsd]\nscan_batch = 9\n");
        write_dropin(f, "20-bad.conf", "# comment\n\n[musicfsd]\nfuse_threads = many\n");

        config_init_defaults(&c);
        assert_int_equal(config_load_file(&c, f->conf, true, &error), -EINVAL);
        snprintf(expected, sizeof expected,
                 "%s/20-bad.conf:4: fuse_threads = 'many' is not a number; expected an integer from 1 to 64",
                 f->dropins);
        assert_string_equal(error, expected);
        free(error);
        /* Nothing of the good files was applied either. */
        assert_int_equal(c.fuse_threads, 8);
        assert_int_equal(c.scan_batch, 256);
        assert_null(c.config_path);
        config_free(&c);
}

static void test_dropin_dir_not_a_directory(void **state) {
        Fixture *f = *state;
        char *error = NULL;
        Config c;

        write_file(f->conf, "[musicfsd]\n");
        write_file(f->dropins, "not a directory\n");
        config_init_defaults(&c);
        assert_int_equal(config_load_file(&c, f->conf, true, &error), -ENOTDIR);
        assert_non_null(strstr(error, f->dropins));
        assert_non_null(strstr(error, "Not a directory"));
        free(error);
        config_free(&c);
}

/* ---- errors -------------------------------------------------------------------------------- */

static void check_error(Fixture *f, const char *text, size_t size, unsigned line, const char *reason) {
        char *error = NULL, prefix[256];
        Config c;

        write_bytes(f->conf, text, size);
        config_init_defaults(&c);
        c.fuse_threads = 3;
        int r = config_load_file(&c, f->conf, true, &error);
        if (r != -EINVAL)
                fail_msg("expected -EINVAL for \"%s\", got %d (%s)", text, r, strna(error));
        snprintf(prefix, sizeof prefix, "%s:%u: ", f->conf, line);
        if (!error || strncmp(error, prefix, strlen(prefix)) != 0 || !strstr(error, reason))
                fail_msg("for \"%s\": got '%s', expected '%s...%s'", text, strna(error), prefix, reason);
        free(error);
        /* The config is as it was. */
        assert_int_equal(c.fuse_threads, 3);
        assert_int_equal(c.n_origins, 0);
        assert_null(c.mountpoint);
        assert_null(c.config_path);
        config_free(&c);
}

#define CHECK_ERROR(text, line, reason) check_error(f, text, sizeof(text) - 1, line, reason)

/* Sync (issue #6): watch modes and poll intervals, global and per origin. */
static void test_watch_keys(void **state) {
        Fixture *f = *state;
        Config c;

        config_init_defaults(&c);
        assert_int_equal(c.poll_interval, CONFIG_DEFAULT_POLL_INTERVAL_SEC);
        config_free(&c);

        write_file(f->conf, "[musicfsd]\npoll_interval = 60\n[origin \"a\"]\npath = /x\nwatch = poll\npoll_interval = 5\n"
                            "[origin \"b\"]\npath = /y\nwatch = off\n[origin \"c\"]\npath = /z\n");
        write_dropin(f, "50-watch.conf", "[origin \"c\"]\nwatch = inotify\n");
        config_init_defaults(&c);
        load_ok(&c, f->conf);
        assert_int_equal(c.poll_interval, 60);
        assert_int_equal(c.n_origins, 3);
        assert_string_equal(c.origins[0].watch, "poll");
        assert_int_equal(c.origins[0].poll_interval, 5);
        assert_string_equal(c.origins[1].watch, "off");
        assert_int_equal(c.origins[1].poll_interval, 0);
        assert_string_equal(c.origins[2].watch, "inotify");
        config_free(&c);

        CHECK_ERROR("[origin \"a\"]\npath = /x\nwatch = fanotify\n", 3,
                    "watch = 'fanotify' is not a watch mode; expected inotify, poll or off");
        CHECK_ERROR("[musicfsd]\npoll_interval = 0\n", 2, "poll_interval");
        CHECK_ERROR("[origin \"a\"]\npath = /x\npoll_interval = 604801\n", 3, "poll_interval");
}

/* D11: the health monitor's interval and per-check timeout. */
static void test_health_keys(void **state) {
        Fixture *f = *state;
        Config c;

        config_init_defaults(&c);
        assert_int_equal(c.health_interval, CONFIG_DEFAULT_HEALTH_INTERVAL_SEC);
        assert_int_equal(c.health_timeout, CONFIG_DEFAULT_HEALTH_TIMEOUT_SEC);
        config_free(&c);

        write_file(f->conf, "[musicfsd]\nhealth_interval = 1\nhealth_timeout = 300\n");
        config_init_defaults(&c);
        load_ok(&c, f->conf);
        assert_int_equal(c.health_interval, 1);
        assert_int_equal(c.health_timeout, 300);
        config_free(&c);

        CHECK_ERROR("[musicfsd]\nhealth_interval = 0\n", 2, "health_interval");
        CHECK_ERROR("[musicfsd]\nhealth_interval = 3601\n", 2, "health_interval");
        CHECK_ERROR("[musicfsd]\nhealth_timeout = 0\n", 2, "health_timeout");
        CHECK_ERROR("[musicfsd]\nhealth_timeout = 5s\n", 2, "health_timeout");
}

static void test_errors(void **state) {
        Fixture *f = *state;

        /* Sections */
        CHECK_ERROR("[bogus]\n", 1, "unknown section [bogus]; expected [musicfsd], [cache] or [origin \"NAME\"]");
        CHECK_ERROR("[musicfsd]\n[MusicFSD]\nx=1\n", 2, "unknown section [MusicFSD]");
        CHECK_ERROR("[musicfsd \"x\"]\n", 1, "unknown section [musicfsd \"x\"]");
        CHECK_ERROR("[musicfsd\nmountpoint = /x\n", 1, "section header has no closing ']'");
        CHECK_ERROR("[musicfsd] junk\n", 1, "unexpected text 'junk");
        CHECK_ERROR("[origin]\n", 1, "origin section needs a name");
        CHECK_ERROR("[origin.]\n", 1, "origin section needs a name");
        CHECK_ERROR("[origin \"\"]\n", 1, "origin section needs a name");
        CHECK_ERROR("[origin music]\n", 1, "origin section name must be quoted");
        CHECK_ERROR("[origin \"my music\"]\n", 1, "origin name 'my music' may only contain letters, digits, '_' and '-'");
        CHECK_ERROR("[origin.a/b]\n", 1, "origin name 'a/b' may only contain");
        CHECK_ERROR("[origin \"Bj\xc3\xb6rk\"]\n", 1, "may only contain letters");
        CHECK_ERROR("[origin \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]\n", 1,
                    "is longer than 64 characters");
        CHECK_ERROR("# one\n[origin \"a\"]\npath = /x\n\n[origin.a]\n", 5,
                    "duplicate origin 'a' (already defined at line 2)");

        /* Keys */
        CHECK_ERROR("mountpoint = /x\n", 1, "key 'mountpoint' is outside any section; put it under [musicfsd]");
        CHECK_ERROR("[musicfsd]\nfoo = 1\n", 2, "unknown key 'foo' in [musicfsd]; expected one of mountpoint, cache_dir");
        CHECK_ERROR("[origin \"a\"]\npath = /x\nmountpoint = /y\n", 3,
                    "unknown key 'mountpoint' in [origin \"a\"]; expected one of kind, path, priority");
        CHECK_ERROR("[musicfsd]\nmountpoint =\n", 2, "mountpoint needs a value");
        CHECK_ERROR("[musicfsd]\n= /x\n", 2, "missing key name before '='");
        CHECK_ERROR("[musicfsd]\njust some words\n", 2, "expected 'key = value', a [section] header or a comment");

        /* Numbers */
        CHECK_ERROR("[musicfsd]\nfuse_threads = abc\n", 2,
                    "fuse_threads = 'abc' is not a number; expected an integer from 1 to 64");
        CHECK_ERROR("[musicfsd]\nfuse_threads = 0\n", 2, "fuse_threads = 0 is out of range; expected an integer from 1 to 64");
        CHECK_ERROR("[musicfsd]\nfuse_threads = 65\n", 2, "fuse_threads = 65 is out of range");
        CHECK_ERROR("[musicfsd]\nfuse_threads = 99999999999999999999999\n", 2, "is out of range");
        CHECK_ERROR("[musicfsd]\nfuse_threads = 8x\n", 2, "fuse_threads = '8x' is not a number");
        CHECK_ERROR("[musicfsd]\nfuse_threads = -1\n", 2, "fuse_threads = '-1' is not a number");
        CHECK_ERROR("[musicfsd]\nscan_batch = 0\n", 2, "scan_batch = 0 is out of range; expected an integer from 1 to 100000");
        CHECK_ERROR("[musicfsd]\nentry_timeout = 1e3\n", 2, "entry_timeout = '1e3' is not a number");
        CHECK_ERROR("[musicfsd]\nattr_timeout = 31536001\n", 2, "attr_timeout = 31536001 is out of range");
        CHECK_ERROR("[origin.a]\npriority = high\n", 2, "priority = 'high' is not a number; expected an integer from 0 to 1000000");
        CHECK_ERROR("[origin.a]\npriority = 1000001\n", 2, "priority = 1000001 is out of range");

        /* Words and paths */
        CHECK_ERROR("[musicfsd]\nlog_level = loud\n", 2, "log_level = 'loud' is not a log level; expected one of emerg");
        CHECK_ERROR("[musicfsd]\nbus = session\n", 2, "bus = 'session' is not a bus; expected 'system' or 'user'");
        CHECK_ERROR("[musicfsd]\nmountpoint = srv/music\n", 2, "mountpoint = 'srv/music' is not an absolute path");
        CHECK_ERROR("[musicfsd]\ncache_dir = cache\n", 2, "cache_dir = 'cache' is not an absolute path");
        CHECK_ERROR("[origin \"a\"]\nkind = s3\nbucket = x\n", 3, "bucket = 'x' is not a bucket name");
        CHECK_ERROR("[origin \"a\"]\nkind = s3\npath_style = maybe\n", 3, "path_style = 'maybe' is not a boolean");
        CHECK_ERROR("[origin \"a\"]\nkind = s3\nendpoint = s3.example.com\n", 3, "is not an http:// or https:// URL");
        CHECK_ERROR("[origin \"a\"]\nkind = sftp\nport = 0\n", 3, "port = '0' is not a port number from 1 to 65535");
        CHECK_ERROR("[origin \"a\"]\nkind = sftp\nhost_key_fingerprint = abc\n", 3, "is not a SHA256 fingerprint");
        CHECK_ERROR("[origin \"a\"]\nkind = ftp\n", 2, "kind = 'ftp' is not an origin kind; expected 'local'");
        CHECK_ERROR("[origin \"a\"]\npath = music\n", 2, "path = 'music' is not an absolute path");
        /* Indented lines are keys of their own, not continuations of the line above. */
        CHECK_ERROR("[origin \"a\"]\n  path = /x\n  timeout = 0\n", 3, "timeout = '0' is not a number of seconds");

        /* Raw bytes */
        CHECK_ERROR("[musicfsd]\nmountpoint = /a\0b\n", 2, "line contains a NUL byte");
        char long_line[400];
        int n = snprintf(long_line, sizeof long_line, "[musicfsd]\n\nmountpoint = /%0250d\n", 0);
        check_error(f, long_line, (size_t) n, 3, "line is longer than 197 characters");

        /* The first error wins, whatever kind. */
        CHECK_ERROR("[musicfsd]\nnonsense\nfuse_threads = 0\n", 2, "expected 'key = value'");
        CHECK_ERROR("[musicfsd]\nfuse_threads = 0\nnonsense\n", 2, "fuse_threads = 0 is out of range");
}

static void test_cache_section(void **state) {
        Fixture *f = *state;
        static const struct { const char *value; uint64_t bytes; } sizes[] = {
                { "1048576", UINT64_C(1) << 20 },
                { "1M", UINT64_C(1) << 20 },
                { "2048k", UINT64_C(2) << 20 },
                { "512MiB", UINT64_C(512) << 20 },
                { "10G", UINT64_C(10) << 30 },
                { "3 GB", UINT64_C(3) << 30 },
                { "\"64M\"", UINT64_C(64) << 20 },
                { "2T", UINT64_C(2) << 40 },
                { "1024T", UINT64_C(1) << 50 },
        };
        char text[256];
        Config c;

        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                snprintf(text, sizeof text, "[cache]\nbudget = %s\n", sizes[i].value);
                write_file(f->conf, text);
                config_init_defaults(&c);
                load_ok(&c, f->conf);
                if (c.cache_budget != sizes[i].bytes)
                        fail_msg("budget = %s gave %" PRIu64 ", expected %" PRIu64, sizes[i].value, c.cache_budget,
                                 sizes[i].bytes);
                config_free(&c);
        }

        static const char *const trues[] = { "yes", "true", "on", "1", "YES" }, *const falses[] = { "no", "false", "off", "0", "Off" };
        for (size_t i = 0; i < ELEMENTSOF(trues); i++) {
                snprintf(text, sizeof text, "[cache]\npassthrough = %s\n", trues[i]);
                write_file(f->conf, text);
                config_init_defaults(&c);
                load_ok(&c, f->conf);
                assert_true(c.cache_passthrough);
                snprintf(text, sizeof text, "[cache]\npassthrough = %s\n", falses[i]);
                write_file(f->conf, text);
                load_ok(&c, f->conf);
                assert_false(c.cache_passthrough);
                config_free(&c);
        }

        /* Every key, around the other sections; a drop-in amends the cache section. */
        write_file(f->conf, "[musicfsd]\nscan_batch = 9\n[cache]\n  budget = 64M\n  readahead = 0\n"
                            "  passthrough = yes\n  maintenance_interval = 2\n[origin.a]\npath = /x\n");
        write_dropin(f, "50-cache.conf", "[cache]\nreadahead = 16\npassthrough = off\n");
        config_init_defaults(&c);
        load_ok(&c, f->conf);
        assert_true(c.cache_budget == UINT64_C(64) << 20);
        assert_int_equal(c.cache_readahead, 16);
        assert_false(c.cache_passthrough);
        assert_int_equal(c.cache_maintenance_sec, 2);
        assert_int_equal(c.scan_batch, 9);
        assert_int_equal(c.n_origins, 1);
        config_free(&c);


        /* Errors of the section, each with its line. */
        CHECK_ERROR("[cache]\nbudget = lots\n", 2, "budget = 'lots' is not a size; expected bytes or a number with K, M, G or T");
        CHECK_ERROR("[cache]\nbudget = 10X\n", 2, "budget = '10X' has an unknown unit");
        CHECK_ERROR("[cache]\nbudget = -1G\n", 2, "budget = '-1G' is not a size");
        CHECK_ERROR("[cache]\nbudget = 1.5G\n", 2, "budget = '1.5G' has an unknown unit");
        CHECK_ERROR("[cache]\nbudget = 512K\n", 2, "budget = 512K is out of range; expected 1 MiB to 1024 TiB");
        CHECK_ERROR("[cache]\nbudget = 0\n", 2, "budget = 0 is out of range");
        CHECK_ERROR("[cache]\nbudget = 2000T\n", 2, "budget = 2000T is out of range");
        CHECK_ERROR("[cache]\nbudget = 99999999999999999999999\n", 2, "is out of range");
        CHECK_ERROR("[cache]\nbudget = 99999999999G\n", 2, "is out of range");
        CHECK_ERROR("[cache]\nreadahead = 17\n", 2, "readahead = 17 is out of range; expected an integer from 0 to 16");
        CHECK_ERROR("[cache]\nreadahead = some\n", 2, "readahead = 'some' is not a number");
        CHECK_ERROR("[cache]\npassthrough = maybe\n", 2, "passthrough = 'maybe' is not a boolean; expected yes or no");
        CHECK_ERROR("[cache]\nmaintenance_interval = 0\n", 2,
                    "maintenance_interval = 0 is out of range; expected an integer from 1 to 3600");
        CHECK_ERROR("[cache]\nmaintenance_interval = 3601\n", 2, "maintenance_interval = 3601 is out of range");
        CHECK_ERROR("[cache]\ncache_dir = /x\n", 2, "cache_dir belongs in [musicfsd], not [cache]");
        CHECK_ERROR("[cache]\nsize = 1G\n", 2,
                    "unknown key 'size' in [cache]; expected one of budget, readahead, passthrough, maintenance_interval");
        CHECK_ERROR("[cache]\nbudget =\n", 2, "budget needs a value");

}

static void test_error_without_reason_pointer(void **state) {
        Fixture *f = *state;
        Config c;

        write_file(f->conf, "[bogus]\n");
        config_init_defaults(&c);
        assert_int_equal(config_load_file(&c, f->conf, true, NULL), -EINVAL);
        config_free(&c);
}

static void test_missing_and_odd_files(void **state) {
        Fixture *f = *state;
        char *error = NULL;
        Config c;

        config_init_defaults(&c);

        /* Explicit and missing: -ENOENT, named. */
        assert_int_equal(config_load_file(&c, f->conf, true, &error), -ENOENT);
        assert_non_null(error);
        assert_non_null(strstr(error, f->conf));
        free(error);

        /* Implicit and missing: nothing to read. */
        assert_int_equal(config_load_file(&c, f->conf, false, &error), 0);
        assert_null(error);
        assert_null(c.config_path);

        /* A directory. */
        assert_int_equal(config_load_file(&c, f->music, true, &error), -EISDIR);
        assert_non_null(strstr(error, f->music));
        assert_non_null(strstr(error, "is a directory"));
        free(error);

        /* A FIFO neither hangs nor is read. */
        char fifo[256];
        snprintf(fifo, sizeof fifo, "%s/fifo.conf", f->dir);
        assert_int_equal(mkfifo(fifo, 0600), 0);
        assert_int_equal(config_load_file(&c, fifo, true, &error), -EINVAL);
        assert_non_null(strstr(error, "is not a regular file"));
        free(error);

        /* A path through a file. */
        char through[256];
        write_file(f->conf, "[musicfsd]\n");
        snprintf(through, sizeof through, "%s/x.conf", f->conf);
        assert_int_equal(config_load_file(&c, through, true, &error), -ENOTDIR);
        assert_non_null(strstr(error, through));
        free(error);

        assert_int_equal(config_load_file(&c, "", true, &error), -EINVAL);
        assert_non_null(error);
        free(error);

        config_free(&c);
}

static void test_default_path_argument(void **state) {
        char *error = NULL;
        Config c;

        /* NULL means the default path, which may or may not exist here: never -ENOENT. */
        config_init_defaults(&c);
        int r = config_load_file(&c, NULL, true, &error);
        assert_int_not_equal(r, -ENOENT);
        if (r == 0 && c.config_path)
                assert_string_equal(c.config_path, CONFIG_DEFAULT_PATH);
        free(error);
        config_free(&c);
}

/* ---- --origin ------------------------------------------------------------------------------ */

static void add_ok(Config *c, const char *dir) {
        char *error = NULL;
        int r = config_add_origin_dir(c, dir, &error);
        if (r < 0)
                fail_msg("--origin %s: %d %s", dir, r, strna(error));
        assert_null(error);
}

static void test_add_origin_dir(void **state) {
        Fixture *f = *state;
        Config c;

        config_init_defaults(&c);
        add_ok(&c, "/srv/Music");
        add_ok(&c, "/other/Music/");
        add_ok(&c, "/third/Music//");
        add_ok(&c, "/srv/My Music!");
        add_ok(&c, "/srv/\xe6\x97\xa5\xe6\x9c\xac");
        add_ok(&c, "/");
        add_ok(&c, "/srv/--");
        add_ok(&c, "/srv/caf\xc3\xa9 del mar");

        static const char *const names[] = {
                "Music", "Music-2", "Music-3", "My_Music", "origin", "origin-2", "origin-3", "caf_del_mar",
        };
        static const char *const paths[] = {
                "/srv/Music", "/other/Music", "/third/Music", "/srv/My Music!", "/srv/\xe6\x97\xa5\xe6\x9c\xac",
                "/", "/srv/--", "/srv/caf\xc3\xa9 del mar",
        };
        assert_int_equal(c.n_origins, ELEMENTSOF(names));
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                assert_string_equal(c.origins[i].name, names[i]);
                assert_string_equal(c.origins[i].path, paths[i]);
                assert_string_equal(c.origins[i].kind, "local");
                assert_int_equal(c.origins[i].priority, 10 * (i + 1));
        }
        config_free(&c);

        /* After the file's origins, numbering continues by position; names from the file count. */
        char text[256];
        snprintf(text, sizeof text, "[origin \"music\"]\npath = %s\npriority = 1\n", f->music);
        write_file(f->conf, text);
        config_init_defaults(&c);
        load_ok(&c, f->conf);
        add_ok(&c, f->music);
        assert_int_equal(c.n_origins, 2);
        assert_string_equal(c.origins[1].name, "music-2");
        assert_string_equal(c.origins[1].path, f->music);
        assert_int_equal(c.origins[1].priority, 20);
        config_free(&c);
}

static void test_add_origin_dir_relative(void **state) {
        Fixture *f = *state;
        char cwd[PATH_MAX], expected[256];
        Config c;

        assert_non_null(getcwd(cwd, sizeof cwd));
        assert_int_equal(chdir(f->dir), 0);

        config_init_defaults(&c);
        add_ok(&c, "music");
        add_ok(&c, "./music/");
        add_ok(&c, "not-yet");
        assert_int_equal(chdir(f->music), 0);
        add_ok(&c, ".");
        add_ok(&c, "..");
        assert_int_equal(chdir(cwd), 0);

        assert_string_equal(c.origins[0].name, "music");
        assert_string_equal(c.origins[0].path, f->music);
        assert_string_equal(c.origins[1].name, "music-2");
        assert_string_equal(c.origins[1].path, f->music);
        assert_string_equal(c.origins[2].name, "not-yet");
        snprintf(expected, sizeof expected, "%s/not-yet", f->dir);
        assert_string_equal(c.origins[2].path, expected);
        /* "." and ".." are named after where they lead. */
        assert_string_equal(c.origins[3].name, "music-3");
        assert_string_equal(c.origins[3].path, f->music);
        assert_string_equal(c.origins[4].name, f->dir + strlen("/tmp/"));
        assert_string_equal(c.origins[4].path, f->dir);
        config_free(&c);
}

static void test_add_origin_dir_long_names(void **state) {
        char dir[256];
        Config c;

        snprintf(dir, sizeof dir, "/srv/%0100d", 7);
        config_init_defaults(&c);
        add_ok(&c, dir);
        add_ok(&c, dir);
        assert_int_equal(strlen(c.origins[0].name), 64);
        assert_int_equal(strncmp(c.origins[0].name, dir + 5, 64), 0);
        assert_int_equal(strlen(c.origins[1].name), 64);
        assert_int_equal(strncmp(c.origins[1].name, dir + 5, 62), 0);
        assert_string_equal(c.origins[1].name + 62, "-2");
        assert_string_equal(c.origins[0].path, dir);

        char *error = NULL;
        assert_int_equal(config_add_origin_dir(&c, "", &error), -EINVAL);
        assert_non_null(strstr(error, "empty"));
        free(error);
        assert_int_equal(config_add_origin_dir(&c, NULL, NULL), -EINVAL);
        assert_int_equal(c.n_origins, 2);
        config_free(&c);
}

/* ---- validation ---------------------------------------------------------------------------- */

static void valid_config(Fixture *f, Config *c) {
        char mnt[256];
        config_init_defaults(c);
        snprintf(mnt, sizeof mnt, "%s/mnt", f->dir);
        c->mountpoint = strdup(mnt);
        assert_non_null(c->mountpoint);
        add_ok(c, f->music);
        char *error = NULL;
        int r = config_validate(c, &error);
        if (r < 0)
                fail_msg("valid config refused: %s", strna(error));
        assert_null(error);
}

static void expect_invalid(const Config *c, const char *reason) {
        char *error = NULL;
        assert_int_equal(config_validate(c, &error), -EINVAL);
        if (!error || !strstr(error, reason))
                fail_msg("got '%s', expected it to mention \"%s\"", strna(error), reason);
        free(error);
        assert_int_equal(config_validate(c, NULL), -EINVAL);
}

static void replace(char **dst, const char *s) {
        free(*dst);
        *dst = s ? strdup(s) : NULL;
        if (s)
                assert_non_null(*dst);
}

static void test_validate(void **state) {
        Fixture *f = *state;
        char buf[512];
        Config c;

        valid_config(f, &c);
        replace(&c.mountpoint, NULL);
        expect_invalid(&c, "no mountpoint");
        replace(&c.mountpoint, "mnt/music");
        expect_invalid(&c, "mountpoint 'mnt/music' is not an absolute path");
        config_free(&c);

        valid_config(f, &c);
        replace(&c.cache_dir, "cache");
        expect_invalid(&c, "cache_dir 'cache' is not an absolute path");
        replace(&c.cache_dir, NULL);
        expect_invalid(&c, "cache_dir is not set");
        config_free(&c);

        valid_config(f, &c);
        replace(&c.template, "");
        expect_invalid(&c, "template is empty");
        config_free(&c);

        valid_config(f, &c);
        c.fuse_threads = 0;
        expect_invalid(&c, "fuse_threads is 0; expected 1 to 64");
        c.fuse_threads = 65;
        expect_invalid(&c, "fuse_threads is 65; expected 1 to 64");
        c.fuse_threads = 64;
        c.scan_batch = 0;
        expect_invalid(&c, "scan_batch is 0");
        c.scan_batch = 256;
        c.log_level = 8;
        expect_invalid(&c, "log_level is 8");
        c.log_level = LOG_INFO;
        c.entry_timeout = UINT_MAX;
        expect_invalid(&c, "entry_timeout is 4294967295 seconds");
        c.entry_timeout = 60;
        c.cache_budget = 1000;
        expect_invalid(&c, "cache budget is 1000 bytes; expected 1 MiB to 1024 TiB");
        c.cache_budget = UINT64_C(1) << 30;
        c.cache_readahead = 17;
        expect_invalid(&c, "cache readahead is 17 tracks; expected 0 to 16");
        c.cache_readahead = 0;
        c.cache_maintenance_sec = 0;
        expect_invalid(&c, "cache maintenance_interval is 0 seconds; expected 1 to 3600");
        config_free(&c);

        config_init_defaults(&c);
        replace(&c.mountpoint, "/mnt");
        expect_invalid(&c, "no origins");
        config_free(&c);

        valid_config(f, &c);
        replace(&c.origins[0].path, NULL);
        expect_invalid(&c, "origin 'music' has no path");
        replace(&c.origins[0].path, "music");
        expect_invalid(&c, "origin 'music': path 'music' is not an absolute path");
        snprintf(buf, sizeof buf, "%s/nope", f->dir);
        replace(&c.origins[0].path, buf);
        expect_invalid(&c, "does not exist");
        expect_invalid(&c, buf);
        snprintf(buf, sizeof buf, "%s/file", f->dir);
        write_file(buf, "x");
        replace(&c.origins[0].path, buf);
        expect_invalid(&c, "is not a directory");
        config_free(&c);

        valid_config(f, &c);
        replace(&c.origins[0].kind, "s3");
        expect_invalid(&c, "origin 'music' (kind s3) has a path");
        replace(&c.origins[0].path, NULL);
        expect_invalid(&c, "origin 'music' (kind s3) has no bucket");
        config_free(&c);

        valid_config(f, &c);
        replace(&c.origins[0].name, "bad name");
        expect_invalid(&c, "origin name 'bad name' is not valid");
        config_free(&c);

        valid_config(f, &c);
        add_ok(&c, f->music);
        replace(&c.origins[1].name, "music");
        expect_invalid(&c, "origin name 'music' is used twice");
        config_free(&c);

        /* The mount must not be inside an origin, nor an origin inside the mount. */
        valid_config(f, &c);
        snprintf(buf, sizeof buf, "%s/inner", f->music);
        replace(&c.mountpoint, buf);
        expect_invalid(&c, "is inside origin 'music'");
        replace(&c.mountpoint, f->music);
        expect_invalid(&c, "is inside origin 'music'");
        replace(&c.mountpoint, f->dir);
        expect_invalid(&c, "origin 'music'");
        expect_invalid(&c, "is inside the mountpoint");
        /* A sibling with a common prefix is fine. */
        snprintf(buf, sizeof buf, "%s/music2", f->dir);
        replace(&c.mountpoint, buf);
        assert_int_equal(config_validate(&c, NULL), 0);
        config_free(&c);
}

static void test_validate_loaded_file(void **state) {
        Fixture *f = *state;
        char text[512], *error = NULL;
        Config c;

        snprintf(text, sizeof text, "[musicfsd]\nmountpoint = %s/mnt\n[origin \"music\"]\npath = %s\n"
                                    "[origin \"nopath\"]\nkind = local\n", f->dir, f->music);
        write_file(f->conf, text);
        config_init_defaults(&c);
        load_ok(&c, f->conf);
        assert_int_equal(config_validate(&c, &error), -EINVAL);
        assert_non_null(strstr(error, "origin 'nopath' has no path"));
        free(error);
        config_free(&c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
                cmocka_unit_test_setup_teardown(test_full_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_other_values, setup, teardown),
                cmocka_unit_test_setup_teardown(test_quoted_values, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cache_section, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_health_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unreadable_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dropins, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dropins_without_main_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_error_in_dropin, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dropin_dir_not_a_directory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_error_without_reason_pointer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_and_odd_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_default_path_argument, setup, teardown),
                cmocka_unit_test_setup_teardown(test_add_origin_dir, setup, teardown),
                cmocka_unit_test_setup_teardown(test_add_origin_dir_relative, setup, teardown),
                cmocka_unit_test_setup_teardown(test_add_origin_dir_long_names, setup, teardown),
                cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_validate_loaded_file, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
