/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The local origin (D10) and the OriginSet: path validation, byte-exact reads, the walk over
 * symlinks, loops, FIFOs, odd names and trees deeper than PATH_MAX, failpoints, and fd exhaustion. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
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
#include <grp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "failpoint.h"
#include "macro.h"
#include "origin.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(Origin *, origin_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(OriginFile *, origin_close);
DEFINE_TRIVIAL_CLEANUP_FUNC(OriginSet *, origin_set_free);

/* 200 levels of 30-byte names: about 6 KiB of path, well past PATH_MAX. */
#define DEEP_LEVELS 200
#define DEEP_NAME "level-with-a-thirty-byte-name_"

typedef struct Fixture {
        char dir[64];
        int dir_fd;
} Fixture;

/* Removes a tree relative to a dir fd, so depth and path length do not matter. */
static void rm_rf_at(int dir_fd, const char *name) {
        struct stat st;
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return;
        if (!S_ISDIR(st.st_mode)) {
                (void) unlinkat(dir_fd, name, 0);
                return;
        }

        int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
                DIR *d = fdopendir(fd);
                if (d) {
                        for (bool removed = true; removed;) {
                                removed = false;
                                rewinddir(d);
                                struct dirent *de;
                                while ((de = readdir(d)))
                                        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                                                rm_rf_at(fd, de->d_name);
                                                removed = true;
                                        }
                        }
                        closedir(d);
                } else
                        close(fd);
        }
        (void) unlinkat(dir_fd, name, AT_REMOVEDIR);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-origin-local-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->dir_fd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(f->dir_fd >= 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        close(f->dir_fd);
        rm_rf_at(AT_FDCWD, f->dir);
        free(f);
        return 0;
}

static void write_file_at(int dir_fd, const char *path, const void *data, size_t size) {
        int fd = openat(dir_fd, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
        assert_int_equal(close(fd), 0);
}

static void write_sized(Fixture *f, const char *path, size_t size) {
        _cleanup_free_ char *buf = malloc(size + 1);
        assert_non_null(buf);
        for (size_t i = 0; i < size; i++)
                buf[i] = (char) ('a' + i % 26);
        write_file_at(f->dir_fd, path, buf, size);
}

/* Deterministic, non-repeating-looking bytes, so an offset mix-up shows. */
static uint8_t pattern_byte(uint64_t i) {
        uint64_t x = i * 0x9E3779B97F4A7C15ULL;
        return (uint8_t) (x >> 56);
}

static Origin *new_origin(Fixture *f) {
        Origin *o = NULL;
        assert_int_equal(origin_local_new("music", f->dir, 10, &o), 0);
        assert_non_null(o);
        return o;
}

/* ---- collecting a walk ---- */

typedef struct Entry {
        char *path;
        uint64_t size;
        int64_t mtime_ns;
} Entry;

typedef struct Collected {
        Entry *entries;
        size_t n;
        int stop_after;         /* >0: fail with -ECANCELED once this many were seen */
} Collected;

static int collect(const char *rel_path, const OriginStat *st, void *userdata) {
        Collected *c = userdata;
        if (c->stop_after > 0 && (int) c->n >= c->stop_after)
                return -ECANCELED;
        Entry *e = reallocarray(c->entries, c->n + 1, sizeof *e);
        assert_non_null(e);
        c->entries = e;
        c->entries[c->n++] = (Entry) { .path = strdup(rel_path), .size = st->size, .mtime_ns = st->mtime_ns };
        assert_non_null(c->entries[c->n - 1].path);
        return 0;
}

static int entry_compare(const void *a, const void *b) {
        return strcmp(((const Entry *) a)->path, ((const Entry *) b)->path);
}

static void collected_done(Collected *c) {
        for (size_t i = 0; i < c->n; i++)
                free(c->entries[i].path);
        free(c->entries);
}

/* What origin_walk_full() reports as skipped. Plain C, no cmocka: it also runs in forked children. */
typedef struct Skipped {
        char *paths[16];
        int errors[16];
        size_t n;
        int fail_with;          /* <0: return this from the first report */
} Skipped;

/* Both callbacks' userdata: collect() finds its Collected first. */
typedef struct Walked {
        Collected c;
        Skipped sk;
} Walked;

static int collect_skipped(const char *rel_path, int error, void *userdata) {
        Skipped *sk = &((Walked *) userdata)->sk;
        if (sk->n < ELEMENTSOF(sk->paths)) {
                sk->paths[sk->n] = strdup(rel_path);
                sk->errors[sk->n] = error;
        }
        sk->n++;
        return sk->fail_with;
}

static void skipped_done(Skipped *sk) {
        for (size_t i = 0; i < sk->n && i < ELEMENTSOF(sk->paths); i++)
                free(sk->paths[i]);
        *sk = (Skipped) {};
}

/* The error skipped reported for path, or 0 when it did not report path exactly once. */
static int skipped_error(const Skipped *sk, const char *path) {
        int error = 0;
        for (size_t i = 0; i < sk->n && i < ELEMENTSOF(sk->paths); i++)
                if (sk->paths[i] && strcmp(sk->paths[i], path) == 0) {
                        if (error != 0)
                                return 0;
                        error = sk->errors[i];
                }
        return error;
}

static const Entry *collected_find(const Collected *c, const char *path) {
        for (size_t i = 0; i < c->n; i++)
                if (strcmp(c->entries[i].path, path) == 0)
                        return &c->entries[i];
        return NULL;
}

/* ---- tests ---- */

static void test_new_errors(void **state) {
        Fixture *f = *state;
        Origin *o = NULL;
        char path[PATH_MAX];

        snprintf(path, sizeof path, "%s/missing", f->dir);
        assert_int_equal(origin_local_new("x", path, 0, &o), -ENOENT);
        assert_null(o);

        write_sized(f, "plain", 3);
        snprintf(path, sizeof path, "%s/plain", f->dir);
        assert_int_equal(origin_local_new("x", path, 0, &o), -ENOTDIR);
        assert_null(o);

        assert_int_equal(origin_local_new("", f->dir, 0, &o), -EINVAL);
        assert_int_equal(origin_local_new("x", "", 0, &o), -EINVAL);
        assert_int_equal(origin_local_new("x", NULL, 0, &o), -EINVAL);

        /* A relative directory is made absolute, trailing slashes go. */
        _cleanup_free_ char *cwd = getcwd(NULL, 0);
        assert_non_null(cwd);
        assert_int_equal(chdir(f->dir), 0);
        assert_int_equal(mkdirat(f->dir_fd, "sub", 0755), 0);
        int r = origin_local_new("rel", "sub//", 3, &o);
        assert_int_equal(chdir(cwd), 0);
        assert_int_equal(r, 0);
        snprintf(path, sizeof path, "%s/sub", f->dir);
        assert_string_equal(o->url, path);
        assert_string_equal(o->name, "rel");
        assert_int_equal(o->priority, 3);
        origin_free(o);
}

static void test_rel_path_validation(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        static const char *const bad[] = {
                "../x", "/x", "a//b", "a/./b", "a/../b", "a/..", ".", "..", "./a", "", "a/", "/",
        };
        OriginStat st;
        OriginFile *file = NULL;

        assert_int_equal(mkdirat(f->dir_fd, "a", 0755), 0);
        write_sized(f, "a/b", 4);
        write_sized(f, "x", 4);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(origin_stat(o, bad[i], &st), -EINVAL);
                assert_int_equal(origin_open(o, bad[i], &file), -EINVAL);
                assert_null(file);
        }

        /* Names that merely start with dots are names. */
        write_sized(f, "a/..b", 2);
        write_sized(f, "a/.c", 1);
        assert_int_equal(origin_stat(o, "a/..b", &st), 0);
        assert_int_equal(st.size, 2);
        assert_int_equal(origin_stat(o, "a/.c", &st), 0);
        assert_int_equal(origin_stat(o, "a/b", &st), 0);
        assert_int_equal(st.size, 4);
}

static void test_stat_open_pread(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        const size_t size = 300 * 1024 + 17;
        _cleanup_free_ uint8_t *data = malloc(size), *buf = malloc(size + 100);
        assert_non_null(data);
        assert_non_null(buf);
        for (size_t i = 0; i < size; i++)
                data[i] = pattern_byte(i);

        assert_int_equal(mkdirat(f->dir_fd, "Artist", 0755), 0);
        write_file_at(f->dir_fd, "Artist/track.flac", data, size);
        struct timespec times[2] = {
                { .tv_sec = 1000, .tv_nsec = 0 },
                { .tv_sec = 1234567890, .tv_nsec = 123456789 },
        };
        assert_int_equal(utimensat(f->dir_fd, "Artist/track.flac", times, 0), 0);

        OriginStat st;
        assert_int_equal(origin_stat(o, "Artist/track.flac", &st), 0);
        assert_int_equal(st.size, size);
        assert_int_equal(st.mtime_ns, INT64_C(1234567890123456789));

        assert_int_equal(origin_stat(o, "Artist/missing.flac", &st), -ENOENT);
        assert_int_equal(origin_stat(o, "Artist", &st), -EISDIR);
        assert_int_equal(origin_stat(o, "Artist/track.flac/x", &st), -ENOTDIR);

        _cleanup_(origin_closep) OriginFile *file = NULL;
        assert_int_equal(origin_open(o, "Artist/track.flac", &file), 0);
        assert_non_null(file);

        assert_int_equal(origin_pread_full(file, buf, size, 0), (ssize_t) size);
        assert_memory_equal(buf, data, size);

        /* Odd offsets and lengths, including across the end. */
        static const struct { uint64_t offset; size_t len; } reads[] = {
                { 0, 1 }, { 1, 4095 }, { 4095, 2 }, { 65536, 65536 }, { 100003, 77777 }, { 300 * 1024, 17 },
        };
        for (size_t i = 0; i < ELEMENTSOF(reads); i++) {
                ssize_t n = origin_pread(file, buf, reads[i].len, reads[i].offset);
                assert_int_equal(n, (ssize_t) reads[i].len);
                assert_memory_equal(buf, data + reads[i].offset, reads[i].len);
        }
        assert_int_equal(origin_pread_full(file, buf, 100, size - 10), 10);
        assert_memory_equal(buf, data + size - 10, 10);
        assert_int_equal(origin_pread_full(file, buf, 100, size), 0);
        assert_int_equal(origin_pread_full(file, buf, 100, size + 1000000), 0);
        assert_int_equal(origin_pread(file, buf, 0, 0), 0);
}

static void test_open_rejects_nonregular(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        OriginFile *file = NULL;
        OriginStat st;

        assert_int_equal(mkdirat(f->dir_fd, "dir", 0755), 0);
        assert_int_equal(mkfifoat(f->dir_fd, "fifo", 0644), 0);
        assert_int_equal(symlinkat("dir", f->dir_fd, "dirlink"), 0);
        assert_int_equal(symlinkat("nowhere", f->dir_fd, "dangling"), 0);

        assert_int_equal(origin_open(o, "dir", &file), -EISDIR);
        assert_int_equal(origin_open(o, "dirlink", &file), -EISDIR);
        /* Must not block waiting for a writer. */
        assert_int_equal(origin_open(o, "fifo", &file), -EINVAL);
        assert_int_equal(origin_stat(o, "fifo", &st), -EINVAL);
        assert_int_equal(origin_open(o, "dangling", &file), -ENOENT);
        assert_int_equal(origin_open(o, "missing", &file), -ENOENT);
        assert_null(file);

        /* A symlink to a file is the file. */
        write_sized(f, "dir/real.mp3", 12);
        assert_int_equal(symlinkat("dir/real.mp3", f->dir_fd, "filelink.mp3"), 0);
        assert_int_equal(origin_open(o, "filelink.mp3", &file), 0);
        char buf[32];
        assert_int_equal(origin_pread_full(file, buf, sizeof buf, 0), 12);
        assert_memory_equal(buf, "abcdefghijkl", 12);
        origin_close(file);
}

static void test_walk(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        _cleanup_(collected_done) Collected c = {};
        const char bad_utf8[] = "\xff\xfe bad.flac";
        char path[64];

        assert_int_equal(mkdirat(f->dir_fd, "a", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "a/b", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "a/b/c", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "empty", 0755), 0);
        write_sized(f, "top.mp3", 10);
        write_sized(f, "a/b/c/deep.flac", 20);
        write_sized(f, "a/\xc3\xbc name.ogg", 7);
        write_sized(f, bad_utf8, 5);
        write_sized(f, ".hidden.flac", 3);
        struct timespec times[2] = { { .tv_sec = 5 }, { .tv_sec = 1600000000, .tv_nsec = 42 } };
        assert_int_equal(utimensat(f->dir_fd, "top.mp3", times, 0), 0);

        assert_int_equal(symlinkat("a/b", f->dir_fd, "linkdir"), 0);      /* followed */
        assert_int_equal(symlinkat("top.mp3", f->dir_fd, "link.mp3"), 0); /* followed */
        assert_int_equal(symlinkat("..", f->dir_fd, "a/loop"), 0);        /* loop to the root */
        assert_int_equal(symlinkat("../..", f->dir_fd, "a/b/up"), 0);     /* loop, also via linkdir */
        assert_int_equal(symlinkat("nowhere", f->dir_fd, "dangling"), 0);
        assert_int_equal(symlinkat("self", f->dir_fd, "self"), 0);        /* ELOOP */
        assert_int_equal(mkfifoat(f->dir_fd, "fifo", 0644), 0);
        assert_int_equal(symlinkat("fifo", f->dir_fd, "fifolink"), 0);

        assert_int_equal(origin_walk(o, collect, &c), 0);
        qsort(c.entries, c.n, sizeof *c.entries, entry_compare);

        static const struct { const char *path; uint64_t size; } expected[] = {
                { ".hidden.flac", 3 },
                { "a/b/c/deep.flac", 20 },
                { "a/\xc3\xbc name.ogg", 7 },
                { "link.mp3", 10 },
                { "linkdir/c/deep.flac", 20 },
                { "top.mp3", 10 },
                { "\xff\xfe bad.flac", 5 },
        };
        for (size_t i = 0; i < c.n; i++)
                print_message("walked: %s (%" PRIu64 ")\n", c.entries[i].path, c.entries[i].size);
        assert_int_equal(c.n, ELEMENTSOF(expected));
        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                assert_string_equal(c.entries[i].path, expected[i].path);
                assert_int_equal(c.entries[i].size, expected[i].size);
        }
        assert_int_equal(collected_find(&c, "top.mp3")->mtime_ns, INT64_C(1600000000000000042));
        assert_int_equal(collected_find(&c, "link.mp3")->mtime_ns, INT64_C(1600000000000000042));

        /* What the walk reports, open and stat accept. */
        OriginFile *file = NULL;
        snprintf(path, sizeof path, "%s", bad_utf8);
        assert_int_equal(origin_open(o, path, &file), 0);
        char buf[8];
        assert_int_equal(origin_pread_full(file, buf, sizeof buf, 0), 5);
        assert_memory_equal(buf, "abcde", 5);
        origin_close(file);
        OriginStat st;
        assert_int_equal(origin_stat(o, "linkdir/c/deep.flac", &st), 0);
        assert_int_equal(st.size, 20);
}

/* Sync (issue #6): the walk of one subtree, natively and through the filter that origins without
 * walk_under get; a subtree that is not there is -ENOENT/-ENOTDIR, a bad one -EINVAL. */
static void test_walk_under(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);

        assert_int_equal(mkdirat(f->dir_fd, "a", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "a/b", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "a b", 0755), 0);
        write_sized(f, "a/one.flac", 1);
        write_sized(f, "a/b/two.flac", 2);
        write_sized(f, "a b/three.flac", 3);
        write_sized(f, "top.flac", 4);

        OriginOps filtered = *o->ops;
        filtered.walk_under = NULL;
        const OriginOps *native = o->ops;
        for (int pass = 0; pass < 2; pass++) {
                o->ops = pass == 0 ? native : &filtered;
                _cleanup_(collected_done) Collected c = {};
                assert_int_equal(origin_walk_under(o, "a", collect, NULL, &c), 0);
                qsort(c.entries, c.n, sizeof *c.entries, entry_compare);
                assert_int_equal(c.n, 2);
                assert_string_equal(c.entries[0].path, "a/b/two.flac");
                assert_string_equal(c.entries[1].path, "a/one.flac");
                _cleanup_(collected_done) Collected deeper = {};
                assert_int_equal(origin_walk_under(o, "a/b", collect, NULL, &deeper), 0);
                assert_int_equal(deeper.n, 1);
                assert_string_equal(deeper.entries[0].path, "a/b/two.flac");
                _cleanup_(collected_done) Collected all = {};
                assert_int_equal(origin_walk_under(o, "", collect, NULL, &all), 0);
                assert_int_equal(all.n, 4);
        }
        o->ops = native;

        _cleanup_(collected_done) Collected none = {};
        assert_int_equal(origin_walk_under(o, "missing", collect, NULL, &none), -ENOENT);
        assert_int_equal(origin_walk_under(o, "top.flac", collect, NULL, &none), -ENOTDIR);
        assert_int_equal(origin_walk_under(o, "../x", collect, NULL, &none), -EINVAL);
        assert_int_equal(origin_walk_under(o, NULL, collect, NULL, &none), -EINVAL);
        assert_int_equal(none.n, 0);
}

/* Permission faults need someone chmod stops: a child that drops to nobody. Each unusable entry
 * costs exactly one log line, the walk carries on past it, and it says it was incomplete: the count
 * as its return, the entries through the skipped callback. */
static void test_walk_unreadable(void **state) {
        Fixture *f = *state;
        char log_path[96];

        assert_int_equal(fchmod(f->dir_fd, 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "ok", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "ok/deeper", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "ok/deeper/shut", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "locked", 0755), 0);
        assert_int_equal(mkdirat(f->dir_fd, "noexec", 0755), 0);
        write_sized(f, "ok/deeper/shut/far.flac", 10);
        write_sized(f, "ok/song.flac", 11);
        write_sized(f, "ok/secret.flac", 12);
        write_sized(f, "locked/hidden.flac", 13);
        write_sized(f, "noexec/a.flac", 14);
        write_sized(f, "noexec/b.flac", 15);
        write_sized(f, "noexec/c.flac", 16);
        write_sized(f, "z.flac", 17);
        assert_int_equal(fchmodat(f->dir_fd, "ok/secret.flac", 0600, 0), 0);
        assert_int_equal(fchmodat(f->dir_fd, "locked", 0000, 0), 0);
        assert_int_equal(fchmodat(f->dir_fd, "ok/deeper/shut", 0700, 0), 0);
        assert_int_equal(fchmodat(f->dir_fd, "noexec", 0644, 0), 0);
        /* Gone, not unreadable: none of these makes the walk incomplete. */
        assert_int_equal(symlinkat("nowhere", f->dir_fd, "dangling.flac"), 0);
        assert_int_equal(symlinkat("self", f->dir_fd, "self"), 0);

        snprintf(log_path, sizeof log_path, "%s.log", f->dir);
        _cleanup_close_ int log_fd = open(log_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(log_fd >= 0);
        assert_int_equal(unlink(log_path), 0);

        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (dup2(log_fd, STDERR_FILENO) < 0 || setgroups(0, NULL) < 0 || setgid(65534) < 0 ||
                    setuid(65534) < 0)
                        _exit(77);

                Origin *o = NULL;
                Walked w = {};
                if (origin_local_new("music", f->dir, 0, &o) < 0)
                        _exit(2);
                /* Incomplete: four entries hide what they hold, and they are exactly the ones reported. */
                if (origin_walk_full(o, collect, collect_skipped, &w) != 4 || w.sk.n != 4)
                        _exit(2);
                if (skipped_error(&w.sk, "locked") != -EACCES || skipped_error(&w.sk, "noexec") != -EACCES ||
                    skipped_error(&w.sk, "ok/secret.flac") != -EACCES ||
                    skipped_error(&w.sk, "ok/deeper/shut") != -EACCES)
                        _exit(6);
                qsort(w.c.entries, w.c.n, sizeof *w.c.entries, entry_compare);
                if (w.c.n != 2 || strcmp(w.c.entries[0].path, "ok/song.flac") != 0 ||
                    strcmp(w.c.entries[1].path, "z.flac") != 0)
                        _exit(3);
                collected_done(&w.c);
                skipped_done(&w.sk);

                /* The log is checked for one line per entry: the walks below go elsewhere. */
                int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
                if (null_fd < 0 || dup2(null_fd, STDERR_FILENO) < 0)
                        _exit(7);

                /* Without the callback the count still tells. */
                Collected c = {};
                if (origin_walk(o, collect, &c) != 4 || c.n != 2)
                        _exit(8);
                collected_done(&c);

                /* The callback's error stops the walk at the first unreadable entry. */
                w = (Walked) { .sk.fail_with = -ECANCELED };
                if (origin_walk_full(o, collect, collect_skipped, &w) != -ECANCELED || w.sk.n != 1)
                        _exit(9);
                collected_done(&w.c);
                skipped_done(&w.sk);
                origin_free(o);
                if (dup2(log_fd, STDERR_FILENO) < 0)
                        _exit(7);
                close(null_fd);

                /* An origin whose own directory cannot be listed fails the walk and the check. */
                char locked[96];
                snprintf(locked, sizeof locked, "%s/locked", f->dir);
                c = (Collected) {};
                if (origin_local_new("locked", locked, 0, &o) < 0)
                        _exit(4);
                if (origin_walk(o, collect, &c) != -EACCES || c.n != 0 || origin_check(o) != -EACCES)
                        _exit(5);
                origin_free(o);
                _exit(0);
        }

        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77)
                skip();

        char log[4096] = {};
        assert_true(pread(log_fd, log, sizeof log - 1, 0) > 0);
        print_message("%s", log);
        assert_int_equal(WEXITSTATUS(status), 0);

        /* One "Skipping" line per unusable entry, then the locked origin's own failure. */
        static const char *const skipped[] = {
                "/locked:", "/noexec:", "/ok/secret.flac:", "/ok/deeper/shut:", "/dangling.flac ", "/self:",
        };
        unsigned skipped_seen[ELEMENTSOF(skipped)] = {};
        size_t lines = 0, skipping = 0;
        for (char *p = log, *nl; (nl = strchr(p, '\n')); p = nl + 1, lines++) {
                *nl = '\0';
                if (strstr(p, "Skipping "))
                        skipping++;
                for (size_t i = 0; i < ELEMENTSOF(skipped); i++)
                        if (strstr(p, "Skipping ") && strstr(p, skipped[i]))
                                skipped_seen[i]++;
                *nl = '\n';
        }
        assert_int_equal(lines, ELEMENTSOF(skipped) + 1);
        assert_int_equal(skipping, ELEMENTSOF(skipped));
        for (size_t i = 0; i < ELEMENTSOF(skipped); i++)
                assert_int_equal(skipped_seen[i], 1);
        assert_non_null(strstr(log, "Permission denied"));
}

static void test_walk_stop_and_empty(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);

        _cleanup_(collected_done) Collected empty = {};
        assert_int_equal(origin_walk(o, collect, &empty), 0);
        assert_int_equal(empty.n, 0);

        char name[32];
        for (int i = 0; i < 10; i++) {
                snprintf(name, sizeof name, "f%d.mp3", i);
                write_sized(f, name, (size_t) i);
        }
        _cleanup_(collected_done) Collected c = { .stop_after = 3 };
        assert_int_equal(origin_walk(o, collect, &c), -ECANCELED);
        assert_int_equal(c.n, 3);
}

static void test_walk_many(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        _cleanup_(collected_done) Collected c = {};
        char name[64];

        /* Enough entries that readdir needs several getdents batches per directory. */
        for (int d = 0; d < 20; d++) {
                snprintf(name, sizeof name, "artist-%02d", d);
                assert_int_equal(mkdirat(f->dir_fd, name, 0755), 0);
                for (int i = 0; i < 150; i++) {
                        snprintf(name, sizeof name, "artist-%02d/track-%03d.flac", d, i);
                        write_sized(f, name, (size_t) (d + i));
                }
        }

        assert_int_equal(origin_walk(o, collect, &c), 0);
        assert_int_equal(c.n, 20 * 150);
        qsort(c.entries, c.n, sizeof *c.entries, entry_compare);
        for (int d = 0, k = 0; d < 20; d++)
                for (int i = 0; i < 150; i++, k++) {
                        snprintf(name, sizeof name, "artist-%02d/track-%03d.flac", d, i);
                        assert_string_equal(c.entries[k].path, name);
                        assert_int_equal(c.entries[k].size, d + i);
                }
}

/* Creates DEEP_LEVELS nested directories with a file in the middle one and one at the bottom; returns
 * the bottom file's rel_path. */
static char *make_deep_tree(Fixture *f) {
        size_t cap = (size_t) DEEP_LEVELS * (sizeof DEEP_NAME + 4) + 64;
        char *rel = malloc(cap);
        assert_non_null(rel);
        rel[0] = '\0';

        int fd = dup(f->dir_fd);
        assert_true(fd >= 0);
        for (int level = 0; level < DEEP_LEVELS; level++) {
                char name[64];
                snprintf(name, sizeof name, DEEP_NAME "%03d", level);
                assert_int_equal(mkdirat(fd, name, 0755), 0);
                int next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                assert_true(next >= 0);
                close(fd);
                fd = next;
                if (level > 0)
                        strcat(rel, "/");
                strcat(rel, name);
                if (level == DEEP_LEVELS / 2)
                        write_file_at(fd, "middle.flac", "middle", 6);
        }
        write_file_at(fd, "bottom.flac", "bottom!", 7);
        close(fd);

        strcat(rel, "/bottom.flac");
        assert_true(strlen(rel) > PATH_MAX);
        return rel;
}

static void test_walk_deep(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        _cleanup_(collected_done) Collected c = {};
        _cleanup_free_ char *bottom = make_deep_tree(f);

        assert_int_equal(origin_walk(o, collect, &c), 0);
        assert_int_equal(c.n, 2);
        const Entry *e = collected_find(&c, bottom);
        assert_non_null(e);
        assert_int_equal(e->size, 7);

        bool middle = false;
        for (size_t i = 0; i < c.n; i++)
                if (strstr(c.entries[i].path, "/middle.flac")) {
                        middle = true;
                        assert_int_equal(c.entries[i].size, 6);
                }
        assert_true(middle);

        /* A path longer than PATH_MAX that the walk reported still opens and stats. */
        OriginStat st;
        assert_int_equal(origin_stat(o, bottom, &st), 0);
        assert_int_equal(st.size, 7);
        OriginFile *file = NULL;
        assert_int_equal(origin_open(o, bottom, &file), 0);
        char buf[16];
        assert_int_equal(origin_pread_full(file, buf, sizeof buf, 0), 7);
        assert_memory_equal(buf, "bottom!", 7);
        origin_close(file);
}

static void test_check(void **state) {
        Fixture *f = *state;
        char path[PATH_MAX];
        Origin *o = NULL;

        assert_int_equal(mkdirat(f->dir_fd, "root", 0755), 0);
        snprintf(path, sizeof path, "%s/root", f->dir);
        assert_int_equal(origin_local_new("checked", path, 0, &o), 0);
        assert_int_equal(origin_check(o), 0);
        assert_string_equal(o->ops->kind, "local");

        /* The origin's directory disappears: the fd keeps it alive, but it is unhealthy. */
        assert_int_equal(unlinkat(f->dir_fd, "root", AT_REMOVEDIR), 0);
        int r = origin_check(o);
        assert_true(r < 0);
        print_message("check after rmdir: %s\n", strerror(-r));

        _cleanup_(collected_done) Collected c = {};
        assert_true(origin_walk(o, collect, &c) <= 0);
        assert_int_equal(c.n, 0);
        origin_free(o);
}

static void test_failpoints(void **state) {
#if !MUSICFS_FAILPOINTS
        skip();
#else
        Fixture *f = *state;
        _cleanup_(origin_freep) Origin *o = new_origin(f);
        char buf[16];
        OriginStat st;

        write_file_at(f->dir_fd, "song.opus", "0123456789", 10);
        _cleanup_(origin_closep) OriginFile *file = NULL;
        assert_int_equal(origin_open(o, "song.opus", &file), 0);

        assert_int_equal(failpoint_arm("origin-read", "return(EIO)", NULL), 0);
        assert_int_equal(origin_pread(file, buf, sizeof buf, 0), -EIO);
        assert_int_equal(origin_pread_full(file, buf, sizeof buf, 0), -EIO);
        assert_int_equal(failpoint_disarm("origin-read"), 0);
        assert_int_equal(origin_pread(file, buf, sizeof buf, 0), 10);
        assert_memory_equal(buf, "0123456789", 10);

        /* pread_full rides out interrupted reads. */
        assert_int_equal(failpoint_arm("origin-read", "2*return(EINTR)", NULL), 0);
        assert_int_equal(origin_pread_full(file, buf, sizeof buf, 2), 8);
        assert_memory_equal(buf, "23456789", 8);
        assert_int_equal(failpoint_disarm("origin-read"), 0);

        OriginFile *other = NULL;
        assert_int_equal(failpoint_arm("origin-open", "return(ENOSPC)", NULL), 0);
        assert_int_equal(origin_open(o, "song.opus", &other), -ENOSPC);
        assert_null(other);
        assert_int_equal(failpoint_disarm("origin-open"), 0);

        assert_int_equal(failpoint_arm("origin-stat", "1*return(EIO)", NULL), 0);
        assert_int_equal(origin_stat(o, "song.opus", &st), -EIO);
        assert_int_equal(origin_stat(o, "song.opus", &st), 0);
        assert_int_equal(st.size, 10);
#endif
}

/* In a child, since the limit is process-wide: with the fd table full, every operation fails
 * cleanly with EMFILE and works again once an fd is free. */
#define CHILD_CHECK(cond)                                               \
        do {                                                            \
                if (!(cond)) {                                          \
                        fprintf(stderr, "child: %s failed\n", #cond);   \
                        _exit(__LINE__ % 250 + 1);                      \
                }                                                       \
        } while (0)

static void test_fd_exhaustion(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *bottom = make_deep_tree(f);
        write_sized(f, "song.flac", 100);

        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                Origin *o = NULL;
                CHILD_CHECK(origin_local_new("music", f->dir, 0, &o) == 0);

                struct rlimit rl = { .rlim_cur = 64, .rlim_max = 64 };
                CHILD_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);

                OriginFile *files[128] = {};
                size_t n = 0;
                int r = 0;
                for (; n < ELEMENTSOF(files); n++) {
                        r = origin_open(o, "song.flac", &files[n]);
                        if (r < 0)
                                break;
                }
                CHILD_CHECK(r == -EMFILE);
                CHILD_CHECK(n > 0 && n < ELEMENTSOF(files));

                /* Everything else that needs an fd says so too, without crashing. */
                Origin *o2 = NULL;
                CHILD_CHECK(origin_local_new("second", f->dir, 0, &o2) == -EMFILE);
                CHILD_CHECK(origin_check(o) == -EMFILE);
                Collected c = {};
                CHILD_CHECK(origin_walk(o, collect, &c) == -EMFILE);
                collected_done(&c);

                /* Open files still read. */
                char buf[200];
                CHILD_CHECK(origin_pread_full(files[0], buf, sizeof buf, 0) == 100);

                /* Room for a few fds, but not one per level of the deep tree. */
                for (size_t i = 0; i < n; i++)
                        origin_close(files[i]);
                CHILD_CHECK(origin_check(o) == 0);
                c = (Collected) {};
                CHILD_CHECK(origin_walk(o, collect, &c) == -EMFILE);
                collected_done(&c);
                CHILD_CHECK(origin_open(o, "song.flac", &files[0]) == 0);
                origin_close(files[0]);

                origin_free(o);
                _exit(0);
        }

        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_origin_set(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_set_freep) OriginSet *s = NULL;
        static const struct { const char *name; unsigned priority; int64_t id; } origins[] = {
                { "zeta", 5, 11 }, { "nas", 1, 12 }, { "disk", 1, 13 }, { "usb", 0, 14 },
        };

        assert_int_equal(origin_set_new(&s), 0);
        assert_int_equal(origin_set_size(s), 0);
        assert_null(origin_set_at(s, 0));

        for (size_t i = 0; i < ELEMENTSOF(origins); i++) {
                Origin *o = NULL;
                assert_int_equal(origin_local_new(origins[i].name, f->dir, origins[i].priority, &o), 0);
                o->id = origins[i].id;
                assert_int_equal(origin_set_add(s, o), 0);
        }

        /* A duplicate name is refused and stays the caller's. */
        Origin *dup = NULL;
        assert_int_equal(origin_local_new("nas", f->dir, 9, &dup), 0);
        assert_int_equal(origin_set_add(s, dup), -EEXIST);
        origin_free(dup);

        assert_int_equal(origin_set_size(s), 4);
        static const char *const order[] = { "usb", "disk", "nas", "zeta" };
        for (size_t i = 0; i < ELEMENTSOF(order); i++)
                assert_string_equal(origin_set_at(s, i)->name, order[i]);
        assert_null(origin_set_at(s, 4));

        assert_string_equal(origin_set_get(s, 12)->name, "nas");
        assert_string_equal(origin_set_get(s, 14)->name, "usb");
        assert_null(origin_set_get(s, 99));
        assert_int_equal(origin_set_add(s, NULL), -EINVAL);
}

typedef struct SetReaders {
        OriginSet *set;
        atomic_bool done;
        atomic_ulong lookups;
        atomic_ulong errors;    /* cmocka's asserts must stay on the main thread */
} SetReaders;

static void *set_reader(void *userdata) {
        SetReaders *sr = userdata;

        while (!atomic_load(&sr->done)) {
                /* The set only grows, so every index below an earlier size stays valid. */
                size_t n = origin_set_size(sr->set);
                for (size_t i = 0; i < n; i++) {
                        Origin *o = origin_set_at(sr->set, i);
                        if (!o || origin_set_get(sr->set, o->id) != o)
                                atomic_fetch_add(&sr->errors, 1);
                        atomic_fetch_add(&sr->lookups, 1);
                }
        }
        return NULL;
}

/* origin_set_add while readers iterate: no torn array, order holds at every step. */
static void test_origin_set_concurrent(void **state) {
        Fixture *f = *state;
        _cleanup_(origin_set_freep) OriginSet *s = NULL;
        assert_int_equal(origin_set_new(&s), 0);

        SetReaders sr = { .set = s };
        pthread_t threads[4];
        for (size_t i = 0; i < ELEMENTSOF(threads); i++)
                assert_int_equal(pthread_create(&threads[i], NULL, set_reader, &sr), 0);

        for (int i = 0; i < 300; i++) {
                char name[32];
                Origin *o = NULL;
                snprintf(name, sizeof name, "origin-%03d", i);
                assert_int_equal(origin_local_new(name, f->dir, (unsigned) (i * 7919 % 13), &o), 0);
                o->id = i + 1;
                assert_int_equal(origin_set_add(s, o), 0);
        }

        atomic_store(&sr.done, true);
        for (size_t i = 0; i < ELEMENTSOF(threads); i++)
                assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_int_equal(atomic_load(&sr.errors), 0);
        print_message("%lu lookups while adding\n", atomic_load(&sr.lookups));

        assert_int_equal(origin_set_size(s), 300);
        for (size_t i = 1; i < 300; i++) {
                Origin *a = origin_set_at(s, i - 1), *b = origin_set_at(s, i);
                assert_true(a->priority < b->priority ||
                            (a->priority == b->priority && strcmp(a->name, b->name) < 0));
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_new_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rel_path_validation, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stat_open_pread, setup, teardown),
                cmocka_unit_test_setup_teardown(test_open_rejects_nonregular, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk_under, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk_unreadable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk_stop_and_empty, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk_many, setup, teardown),
                cmocka_unit_test_setup_teardown(test_walk_deep, setup, teardown),
                cmocka_unit_test_setup_teardown(test_check, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failpoints, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fd_exhaustion, setup, teardown),
                cmocka_unit_test_setup_teardown(test_origin_set, setup, teardown),
                cmocka_unit_test_setup_teardown(test_origin_set_concurrent, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
