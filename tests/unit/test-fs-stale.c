/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The FUSE layer against the real kernel: mountpoint checks, the stale mount a SIGKILLed daemon
 * leaves behind and its cleanup, a live foreign mount left alone, byte-exact reads, the read-only
 * namespace (D1), a 10,000-entry directory, kernel cache invalidation on a new tree, a connection
 * lost to an outside umount, the failpoints and the errno table, and the watchdog's proof of life.
 *
 * Needs root and /dev/fuse: without them the whole test is skipped (exit 77). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <fuse_lowlevel.h>

#include "catalog.h"
#include "failpoint.h"
#include "fs.h"
#include "macro.h"
#include "origin.h"
#include "template.h"
#include "tree.h"

#define LONG_TIMEOUT 86400.0    /* so that only an invalidation can make the kernel see a change */
#define MTIME_NS INT64_C(1700000000123456789)
#define WAIT_TIMEOUT_MS 10000
#define LARGE_DIR_ENTRIES 10000

typedef struct Fixture {
        char dir[64];
        char mnt[128];
        char origin_dir[128];
        Catalog *catalog;
        Template *tpl;
        int64_t origin_id;
        OriginSet *origins;
        TreeStore *trees;
        FuseFs *fs;
} Fixture;

/* ---- helpers ------------------------------------------------------------------------------ */

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
                        struct dirent *de;
                        while ((de = readdir(d)))
                                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                                        rm_rf_at(fd, de->d_name);
                        closedir(d);
                } else
                        close(fd);
        }
        (void) unlinkat(dir_fd, name, AT_REMOVEDIR);
}

/* The fstype of the topmost mount at path ("" when none), from /proc/self/mountinfo. */
static void mount_fstype(const char *path, char *ret, size_t size) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        assert_non_null(f);
        char *line = NULL;
        size_t n = 0;
        ret[0] = '\0';
        while (getline(&line, &n, f) >= 0) {
                char mnt[PATH_MAX], fstype[256];
                const char *dash = strstr(line, " - ");
                if (!dash || sscanf(line, "%*s %*s %*s %*s %4095s", mnt) != 1 || sscanf(dash + 3, "%255s", fstype) != 1)
                        continue;
                /* Our temp paths contain no characters that mountinfo escapes. */
                if (strcmp(mnt, path) == 0)
                        snprintf(ret, size, "%s", fstype);
        }
        free(line);
        fclose(f);
}

static bool is_mounted(const char *path) {
        char fstype[256];
        mount_fstype(path, fstype, sizeof fstype);
        return fstype[0] != '\0';
}

static bool dir_is_empty(const char *path) {
        DIR *d = opendir(path);
        assert_non_null(d);
        bool empty = true;
        struct dirent *de;
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        empty = false;
        closedir(d);
        return empty;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Names in a directory except "." and "..", sorted; errno of a failed listing as a negative. */
static int list_dir(const char *path, char ***ret, size_t *ret_n) {
        DIR *d = opendir(path);
        if (!d)
                return -errno;
        char **names = NULL;
        size_t n = 0, allocated = 0;
        struct dirent *de;
        errno = 0;
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (n == allocated) {
                        allocated = allocated ? allocated * 2 : 16;
                        names = realloc(names, allocated * sizeof *names);
                        assert_non_null(names);
                }
                names[n] = strdup(de->d_name);
                assert_non_null(names[n]);
                n++;
                errno = 0;
        }
        int r = errno ? -errno : 0;
        closedir(d);
        if (r < 0) {
                for (size_t i = 0; i < n; i++)
                        free(names[i]);
                free(names);
                return r;
        }
        qsort(names, n, sizeof *names, cmp_str);
        *ret = names;
        *ret_n = n;
        return 0;
}

static void free_names(char **names, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
}

static void assert_listing(const char *path, const char *const *expected, size_t n_expected) {
        char **names = NULL;
        size_t n = 0;
        assert_int_equal(list_dir(path, &names, &n), 0);
        assert_int_equal(n, n_expected);
        for (size_t i = 0; i < n; i++)
                assert_string_equal(names[i], expected[i]);
        free_names(names, n);
}

static uint8_t pattern_byte(unsigned seed, uint64_t i) {
        uint64_t x = (i + 1) * UINT64_C(0x9E3779B97F4A7C15) ^ ((uint64_t) seed << 32);
        x ^= x >> 29;
        return (uint8_t) (x * UINT64_C(0xBF58476D1CE4E5B9) >> 56);
}

static uint8_t *pattern(unsigned seed, size_t size) {
        uint8_t *b = malloc(size ? size : 1);
        assert_non_null(b);
        for (size_t i = 0; i < size; i++)
                b[i] = pattern_byte(seed, i);
        return b;
}

/* Writes origin_dir/rel with the pattern and mtime, and describes it as the scanner would. */
static void make_file(Fixture *f, CatalogFile *cf, int64_t id, const char *rel, const char *artist, const char *title,
                      size_t size, unsigned seed, int64_t mtime_ns, bool write_bytes) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", f->origin_dir, rel);
        if (write_bytes) {
                uint8_t *b = pattern(seed, size);
                int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                assert_true(fd >= 0);
                assert_int_equal(write(fd, b, size), (ssize_t) size);
                struct timespec ts[2] = {
                        { .tv_sec = mtime_ns / 1000000000, .tv_nsec = mtime_ns % 1000000000 },
                        { .tv_sec = mtime_ns / 1000000000, .tv_nsec = mtime_ns % 1000000000 },
                };
                assert_int_equal(futimens(fd, ts), 0);
                close(fd);
                free(b);
        }

        const char *ext = strrchr(rel, '.');
        *cf = (CatalogFile) {
                .id = id,
                .origin_id = f->origin_id,
                .origin_priority = 0,
                .rel_path = strdup(rel),
                .size = size,
                .mtime_ns = mtime_ns,
                .format = strdup(ext ? ext + 1 : ""),
                .parsed = true,
                .tags = {
                        .title = strdup(title),
                        .artist = strdup(artist),
                },
        };
        assert_non_null(cf->rel_path);
        assert_non_null(cf->format);
        assert_non_null(cf->tags.title);
        assert_non_null(cf->tags.artist);
}

static Tree *build_tree(Fixture *f, const CatalogFile *files, size_t n) {
        Tree *t = NULL;
        assert_int_equal(tree_build(f->catalog, f->tpl, files, n, &t), 0);
        assert_non_null(t);
        return t;
}

/* Publishes t and tells the filesystem, as the manager does. */
static void publish(Fixture *f, Tree *t) {
        Tree *old = tree_store_publish(f->trees, t);
        fusefs_tree_changed(f->fs, old, t);
        tree_unref(old);
}

static FuseFsOptions options(Fixture *f, unsigned threads) {
        return (FuseFsOptions) {
                .mountpoint = f->mnt,
                .threads = threads,
                .entry_timeout = LONG_TIMEOUT,
                .attr_timeout = LONG_TIMEOUT,
        };
}

static void mount_and_start(Fixture *f, unsigned threads) {
        FuseFsOptions o = options(f, threads);
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &f->fs), 0);
        assert_int_equal(fusefs_start(f->fs), 0);
}

static void stop(Fixture *f) {
        fusefs_stop(TAKE_PTR(f->fs));
        assert_false(is_mounted(f->mnt));
        assert_true(dir_is_empty(f->mnt));
}

static void join_path(char *buf, size_t size, const char *a, const char *b) {
        int n = snprintf(buf, size, "%s/%s", a, b);
        assert_true(n > 0 && (size_t) n < size);
}

static int errno_of(int r) {
        return r < 0 ? errno : 0;
}

/* Sends stderr (where the log goes) to a file until capture_end(), which returns its text. */
static int capture_begin(const char *path) {
        fflush(stderr);
        int saved = dup(STDERR_FILENO);
        assert_true(saved >= 0);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
        close(fd);
        return saved;
}

static char *capture_end(int saved, const char *path) {
        fflush(stderr);
        assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
        close(saved);
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        char *text = calloc(1, 65536);
        assert_non_null(text);
        size_t n = fread(text, 1, 65535, f);
        text[n] = '\0';
        fclose(f);
        fputs(text, stderr);    /* still shown */
        return text;
}

static unsigned count_substr(const char *text, const char *needle) {
        unsigned n = 0;
        for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

/* ---- fixture ------------------------------------------------------------------------------ */

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-fs-stale-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        join_path(f->mnt, sizeof f->mnt, f->dir, "mnt");
        join_path(f->origin_dir, sizeof f->origin_dir, f->dir, "origin");
        assert_int_equal(mkdir(f->mnt, 0755), 0);
        assert_int_equal(mkdir(f->origin_dir, 0755), 0);

        char db[PATH_MAX];
        join_path(db, sizeof db, f->dir, "catalog.db");
        assert_int_equal(catalog_open(db, &f->catalog), 0);
        assert_int_equal(template_parse("{artist}/{title}.{ext}", &f->tpl, NULL), 0);
        assert_int_equal(catalog_origin_ensure(f->catalog, "local", f->origin_dir, 0, &f->origin_id), 0);

        Origin *o = NULL;
        assert_int_equal(origin_local_new("local", f->origin_dir, 0, &o), 0);
        o->id = f->origin_id;
        assert_int_equal(origin_set_new(&f->origins), 0);
        assert_int_equal(origin_set_add(f->origins, o), 0);

        Tree *empty = NULL;
        assert_int_equal(tree_new_empty(&empty), 0);
        assert_int_equal(tree_store_new(empty, &f->trees), 0);

        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        fusefs_stop(TAKE_PTR(f->fs));
        /* Whatever a failed test left mounted must go before the directory is removed. */
        for (int i = 0; i < 8 && is_mounted(f->mnt); i++)
                (void) umount2(f->mnt, MNT_DETACH);
        char ctl[PATH_MAX];
        join_path(ctl, sizeof ctl, f->dir, "fusectl");
        if (is_mounted(ctl))
                (void) umount2(ctl, MNT_DETACH);
        tree_store_free(f->trees);
        origin_set_free(f->origins);
        template_free(f->tpl);
        catalog_close(f->catalog);
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        rm_rf_at(AT_FDCWD, f->dir);
        free(f);
        return 0;
}

/* ---- mountpoint checks -------------------------------------------------------------------- */

static void test_mountpoint_checks(void **state) {
        Fixture *f = *state;
        FuseFs *fs = NULL;
        FuseFsOptions o = options(f, 1);
        char path[PATH_MAX];

        o.mountpoint = "relative/mnt";
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &fs), -EINVAL);
        assert_int_equal(fusefs_cleanup_stale_mount("relative/mnt"), -EINVAL);

        join_path(path, sizeof path, f->dir, "missing");
        o.mountpoint = path;
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &fs), -ENOENT);
        assert_int_equal(fusefs_cleanup_stale_mount(path), 0);

        join_path(path, sizeof path, f->dir, "catalog.db");
        o.mountpoint = path;
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &fs), -ENOTDIR);

        /* The origin directory has a file in it. */
        int fd = open(f->origin_dir, O_RDONLY | O_DIRECTORY);
        assert_true(fd >= 0);
        assert_int_equal(mknodat(fd, "x", S_IFREG | 0644, 0), 0);
        close(fd);
        o.mountpoint = f->origin_dir;
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &fs), -ENOTEMPTY);
        assert_null(fs);

        /* An empty plain directory: nothing to clean, with or without a trailing slash. */
        assert_int_equal(fusefs_cleanup_stale_mount(f->mnt), 0);
        snprintf(path, sizeof path, "%s/", f->mnt);
        assert_int_equal(fusefs_cleanup_stale_mount(path), 0);
        assert_false(is_mounted(f->mnt));

        /* Mounted but never started (the manager failed in between): stop still unmounts. */
        o.mountpoint = f->mnt;
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &f->fs), 0);
        assert_true(is_mounted(f->mnt));
        assert_true(fusefs_alive(f->fs, 0));
        stop(f);
}

/* ---- stale mounts ------------------------------------------------------------------------- */

/* A daemon that mounts, proves the mount answers, and dies without unmounting. */
static _noreturn_ void mount_and_die(Fixture *f, int ready_fd) {
        FuseFs *fs = NULL;
        FuseFsOptions o = options(f, 1);
        struct stat st;

        if (fusefs_mount(&o, f->trees, f->origins, &fs) < 0 || fusefs_start(fs) < 0)
                _exit(1);
        if (stat(f->mnt, &st) < 0 || st.st_ino != TREE_ROOT_INO)
                _exit(2);
        if (write(ready_fd, "x", 1) != 1)
                _exit(3);
        raise(SIGKILL);
        _exit(4);
}

static void test_stale_mount_cleanup(void **state) {
        Fixture *f = *state;
        int p[2];
        char c;
        int status;
        struct stat st;
        char fstype[256];

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(p[0]);
                mount_and_die(f, p[1]);
        }
        close(p[1]);
        ssize_t n = read(p[0], &c, 1);
        close(p[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_int_equal(n, 1);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);

        /* What a killed daemon leaves: a mount whose every request fails ("Transport endpoint is
         * not connected"); stat() may still answer from the attributes the kernel cached. */
        struct statvfs sv;
        assert_int_equal(errno_of(statvfs(f->mnt, &sv)), ENOTCONN);
        assert_null(opendir(f->mnt));
        assert_int_equal(errno, ENOTCONN);
        mount_fstype(f->mnt, fstype, sizeof fstype);
        assert_string_equal(fstype, "fuse.musicfs");

        /* Mounting over it is refused with a reason, cleaning it up works once. */
        FuseFs *fs = NULL;
        FuseFsOptions o = options(f, 1);
        assert_int_equal(fusefs_mount(&o, f->trees, f->origins, &fs), -ENOTCONN);
        assert_int_equal(fusefs_cleanup_stale_mount(f->mnt), 1);
        assert_false(is_mounted(f->mnt));
        assert_int_equal(stat(f->mnt, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_true(dir_is_empty(f->mnt));
        assert_int_equal(fusefs_cleanup_stale_mount(f->mnt), 0);

        /* And the path takes a new mount. */
        mount_and_start(f, 2);
        assert_int_equal(stat(f->mnt, &st), 0);
        assert_int_equal(st.st_ino, TREE_ROOT_INO);
        assert_true(S_ISDIR(st.st_mode));
        mount_fstype(f->mnt, fstype, sizeof fstype);
        assert_string_equal(fstype, "fuse.musicfs");
        stop(f);
}

/* A tiny live FUSE filesystem of another kind, to prove cleanup leaves it alone. */
static void other_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        struct stat st = { .st_ino = ino, .st_mode = S_IFDIR | 0755, .st_nlink = 2 };
        fuse_reply_attr(req, &st, 0);
}

static void *other_loop(void *se) {
        fuse_session_loop(se);
        return NULL;
}

static void test_live_foreign_mount_is_busy(void **state) {
        Fixture *f = *state;
        static const struct fuse_lowlevel_ops ops = { .getattr = other_getattr };
        const char *argv[] = { "other", "-o", "fsname=other,subtype=other", NULL };
        struct fuse_args args = FUSE_ARGS_INIT(3, (char **) argv);
        struct stat st;
        char fstype[256];
        pthread_t thread;

        struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
        fuse_opt_free_args(&args);
        assert_non_null(se);
        assert_int_equal(fuse_session_mount(se, f->mnt), 0);
        assert_int_equal(pthread_create(&thread, NULL, other_loop, se), 0);
        assert_int_equal(stat(f->mnt, &st), 0);
        mount_fstype(f->mnt, fstype, sizeof fstype);
        assert_string_equal(fstype, "fuse.other");

        assert_int_equal(fusefs_cleanup_stale_mount(f->mnt), -EBUSY);
        assert_true(is_mounted(f->mnt));
        assert_int_equal(stat(f->mnt, &st), 0);

        /* Unmounting ends the connection, which ends the loop. */
        assert_int_equal(umount2(f->mnt, MNT_DETACH), 0);
        assert_int_equal(pthread_join(thread, NULL), 0);
        fuse_session_unmount(se);
        fuse_session_destroy(se);
        assert_false(is_mounted(f->mnt));
}

/* ---- serving ------------------------------------------------------------------------------ */

typedef struct SmallLibrary {
        CatalogFile files[2];
        uint8_t *one, *two;
} SmallLibrary;

#define ONE_SIZE 4103
#define TWO_SIZE (3 * 1024 * 1024 + 13)         /* several FUSE read requests */

static void small_library(Fixture *f, SmallLibrary *lib) {
        char path[PATH_MAX];
        join_path(path, sizeof path, f->origin_dir, "sub");
        assert_int_equal(mkdir(path, 0755), 0);
        make_file(f, &lib->files[0], 1, "one.flac", "Artist", "One", ONE_SIZE, 1, MTIME_NS, true);
        make_file(f, &lib->files[1], 2, "sub/two.mp3", "Artist", "Two", TWO_SIZE, 2, MTIME_NS + 1000, true);
        lib->one = pattern(1, ONE_SIZE);
        lib->two = pattern(2, TWO_SIZE);
}

static void small_library_free(SmallLibrary *lib) {
        for (size_t i = 0; i < ELEMENTSOF(lib->files); i++)
                catalog_file_free_members(&lib->files[i]);
        free(lib->one);
        free(lib->two);
}

static void assert_file_bytes(const char *path, const uint8_t *expected, size_t size) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        uint8_t *got = malloc(size + 1);
        assert_non_null(got);
        size_t total = 0;
        for (;;) {
                ssize_t n = read(fd, got + total, size + 1 - total < 100000 ? size + 1 - total : 100000);
                assert_true(n >= 0);
                if (n == 0)
                        break;
                total += (size_t) n;
                if (total == size + 1)
                        break;
        }
        assert_int_equal(total, size);
        assert_memory_equal(got, expected, size);

        /* Positional reads at odd offsets, including one running past the end. */
        uint8_t small[777];
        if (size > 5000) {
                assert_int_equal(pread(fd, small, sizeof small, 4097), (ssize_t) sizeof small);
                assert_memory_equal(small, expected + 4097, sizeof small);
        }
        assert_int_equal(pread(fd, small, sizeof small, (off_t) size - 10), 10);
        assert_memory_equal(small, expected + size - 10, 10);
        assert_int_equal(pread(fd, small, sizeof small, (off_t) size + 100), 0);
        close(fd);
        free(got);
}

static void test_mount_and_read(void **state) {
        Fixture *f = *state;
        SmallLibrary lib;
        char dir[PATH_MAX], one[PATH_MAX], two[PATH_MAX], path[PATH_MAX];
        struct stat st;

        small_library(f, &lib);
        Tree *t = build_tree(f, lib.files, ELEMENTSOF(lib.files));
        tree_unref(tree_store_publish(f->trees, t));
        mount_and_start(f, 3);
        assert_true(is_mounted(f->mnt));
        assert_false(fusefs_connection_lost(f->fs));
        assert_true(fusefs_event_fd(f->fs) >= 0);

        join_path(dir, sizeof dir, f->mnt, "Artist");
        join_path(one, sizeof one, dir, "One.flac");
        join_path(two, sizeof two, dir, "Two.mp3");

        assert_listing(f->mnt, (const char *[]) { "Artist" }, 1);
        assert_listing(dir, (const char *[]) { "One.flac", "Two.mp3" }, 2);

        /* Attributes. */
        assert_int_equal(stat(f->mnt, &st), 0);
        assert_int_equal(st.st_ino, TREE_ROOT_INO);
        assert_int_equal(st.st_mode, S_IFDIR | 0555);
        assert_int_equal(st.st_nlink, 3);       /* one subdirectory */
        assert_int_equal(stat(dir, &st), 0);
        assert_int_equal(st.st_mode, S_IFDIR | 0555);
        assert_int_equal(st.st_nlink, 2);
        assert_int_equal(st.st_uid, getuid());

        assert_int_equal(stat(one, &st), 0);
        assert_int_equal(st.st_mode, S_IFREG | 0444);
        assert_int_equal(st.st_nlink, 1);
        assert_int_equal(st.st_size, ONE_SIZE);
        assert_int_equal(st.st_blocks, (ONE_SIZE + 511) / 512);
        assert_int_equal(st.st_mtim.tv_sec, MTIME_NS / 1000000000);
        assert_int_equal(st.st_mtim.tv_nsec, MTIME_NS % 1000000000);
        assert_int_equal(st.st_uid, getuid());
        assert_int_equal(st.st_gid, getgid());
        uint64_t one_ino = st.st_ino;
        assert_true(one_ino > TREE_ROOT_INO);
        assert_int_equal(stat(two, &st), 0);
        assert_int_equal(st.st_size, TWO_SIZE);
        assert_int_equal(st.st_blocks, (TWO_SIZE + 511) / 512);
        assert_true(st.st_ino != one_ino);

        join_path(path, sizeof path, dir, "Missing.flac");
        assert_int_equal(errno_of(stat(path, &st)), ENOENT);

        /* Bytes, whole and positional, twice (the second time from the kernel's page cache). */
        for (int pass = 0; pass < 2; pass++) {
                assert_file_bytes(one, lib.one, ONE_SIZE);
                assert_file_bytes(two, lib.two, TWO_SIZE);
        }

        /* D1: read-only. */
        assert_int_equal(errno_of(open(one, O_WRONLY)), EROFS);
        assert_int_equal(errno_of(open(one, O_RDWR)), EROFS);
        assert_int_equal(errno_of(open(one, O_RDONLY | O_TRUNC)), EROFS);
        join_path(path, sizeof path, dir, "New.flac");
        assert_int_equal(errno_of(open(path, O_WRONLY | O_CREAT, 0644)), EROFS);
        join_path(path, sizeof path, f->mnt, "NewDir");
        assert_int_equal(errno_of(mkdir(path, 0755)), EROFS);
        assert_int_equal(errno_of(unlink(one)), EROFS);
        assert_int_equal(errno_of(rmdir(dir)), EROFS);
        assert_int_equal(errno_of(rename(one, path)), EROFS);
        assert_int_equal(errno_of(truncate(one, 0)), EROFS);
        assert_int_equal(errno_of(chmod(one, 0644)), EROFS);
        assert_int_equal(errno_of(symlink("x", path)), EROFS);
        assert_int_equal(errno_of(link(one, path)), EROFS);
        assert_int_equal(errno_of(setxattr(one, "user.x", "1", 1, 0)), EROFS);
        assert_int_equal(errno_of(access(one, W_OK)), EROFS);
        assert_int_equal(access(one, R_OK), 0);
        assert_int_equal(errno_of(access(one, X_OK)), EACCES);
        assert_int_equal(access(dir, R_OK | X_OK), 0);
        /* Nothing of that reached the origin. */
        assert_file_bytes(one, lib.one, ONE_SIZE);
        join_path(path, sizeof path, f->origin_dir, "one.flac");
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_size, ONE_SIZE);

        /* No xattrs, no symlinks. */
        char buf[64];
        assert_int_equal(listxattr(one, buf, sizeof buf), 0);
        assert_int_equal(listxattr(one, NULL, 0), 0);
        assert_int_equal(errno_of((int) getxattr(one, "user.x", buf, sizeof buf)), EOPNOTSUPP);
        assert_int_equal(errno_of((int) readlink(one, buf, sizeof buf)), EINVAL);

        /* statfs: read-only, one inode per node (root, Artist, two files). */
        struct statvfs sv;
        assert_int_equal(statvfs(one, &sv), 0);
        assert_true(sv.f_flag & ST_RDONLY);
        assert_int_equal(sv.f_files, 4);
        assert_int_equal(sv.f_namemax, 255);
        assert_int_equal(sv.f_blocks * sv.f_frsize, ((ONE_SIZE + 4095) / 4096 + (TWO_SIZE + 4095) / 4096) * 4096);

        /* Idle workers are alive whatever the limit. */
        assert_true(fusefs_alive(f->fs, 0));
        assert_true(fusefs_alive(f->fs, UINT64_MAX));
        assert_false(fusefs_connection_lost(f->fs));

        stop(f);
        small_library_free(&lib);
}

/* Many concurrent readers over few workers: each gets its own bytes. */
typedef struct ConcurrentRead {
        const char *path;
        const uint8_t *expected;
        size_t size;
        unsigned id;
        int failures;
} ConcurrentRead;

static void *concurrent_reader(void *userdata) {
        ConcurrentRead *c = userdata;
        int fd = open(c->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                c->failures++;
                return NULL;
        }
        uint8_t buf[65536];
        /* Strided so that readers ask for different parts at the same time. */
        for (size_t off = (c->id * 131072) % c->size, k = 0; k < 48; k++, off = (off + 262144 + 4099) % c->size) {
                size_t want = c->size - off < sizeof buf ? c->size - off : sizeof buf;
                ssize_t n = pread(fd, buf, want, (off_t) off);
                if (n != (ssize_t) want || memcmp(buf, c->expected + off, want) != 0)
                        c->failures++;
        }
        close(fd);
        return NULL;
}

static void test_concurrent_reads(void **state) {
        Fixture *f = *state;
        SmallLibrary lib;
        char two[PATH_MAX];
        ConcurrentRead readers[16];
        pthread_t threads[ELEMENTSOF(readers)];

        small_library(f, &lib);
        tree_unref(tree_store_publish(f->trees, build_tree(f, lib.files, ELEMENTSOF(lib.files))));
        mount_and_start(f, 2);
        join_path(two, sizeof two, f->mnt, "Artist/Two.mp3");

        for (unsigned i = 0; i < ELEMENTSOF(readers); i++) {
                readers[i] = (ConcurrentRead) { .path = two, .expected = lib.two, .size = TWO_SIZE, .id = i };
                assert_int_equal(pthread_create(&threads[i], NULL, concurrent_reader, &readers[i]), 0);
        }
        for (unsigned i = 0; i < ELEMENTSOF(readers); i++) {
                assert_int_equal(pthread_join(threads[i], NULL), 0);
                assert_int_equal(readers[i].failures, 0);
        }

        stop(f);
        small_library_free(&lib);
}

static void test_large_directory(void **state) {
        Fixture *f = *state;
        CatalogFile *files = calloc(LARGE_DIR_ENTRIES, sizeof *files);
        char **expected = calloc(LARGE_DIR_ENTRIES, sizeof *expected);
        char dir[PATH_MAX], path[PATH_MAX + 64], rel[64], title[64];
        struct stat st;

        assert_non_null(files);
        assert_non_null(expected);
        /* Listing and attributes only: the origin needs no bytes for these. */
        for (size_t i = 0; i < LARGE_DIR_ENTRIES; i++) {
                snprintf(rel, sizeof rel, "f%05zu.flac", i);
                snprintf(title, sizeof title, "Track %05zu", (i * 7919) % LARGE_DIR_ENTRIES);
                make_file(f, &files[i], (int64_t) i + 1, rel, "Many", title, 1000 + i, 0, MTIME_NS, false);
                assert_true(asprintf(&expected[i], "%s.flac", title) > 0);
        }
        qsort(expected, LARGE_DIR_ENTRIES, sizeof *expected, cmp_str);
        tree_unref(tree_store_publish(f->trees, build_tree(f, files, LARGE_DIR_ENTRIES)));
        mount_and_start(f, 2);

        join_path(dir, sizeof dir, f->mnt, "Many");
        /* Twice: the second listing comes from the kernel's readdir cache. */
        for (int pass = 0; pass < 2; pass++)
                assert_listing(dir, (const char *const *) expected, LARGE_DIR_ENTRIES);

        assert_int_equal(stat(dir, &st), 0);
        assert_int_equal(st.st_nlink, 2);
        for (size_t i = 0; i < LARGE_DIR_ENTRIES; i += 97) {
                size_t k = (i * 7919) % LARGE_DIR_ENTRIES;       /* file i has title k */
                snprintf(path, sizeof path, "%s/Track %05zu.flac", dir, k);
                assert_int_equal(stat(path, &st), 0);
                assert_int_equal(st.st_size, 1000 + i);
        }

        stop(f);
        catalog_files_free(files, LARGE_DIR_ENTRIES);
        free_names(expected, LARGE_DIR_ENTRIES);
}

/* With day-long kernel timeouts, only fusefs_tree_changed() can make a new tree visible. */
static void test_tree_changed_invalidates(void **state) {
        Fixture *f = *state;
        SmallLibrary lib;
        CatalogFile v2[2];
        char dir[PATH_MAX], one[PATH_MAX], two[PATH_MAX], three[PATH_MAX];
        struct stat st;

        small_library(f, &lib);
        tree_unref(tree_store_publish(f->trees, build_tree(f, lib.files, ELEMENTSOF(lib.files))));
        mount_and_start(f, 2);
        join_path(dir, sizeof dir, f->mnt, "Artist");
        join_path(one, sizeof one, dir, "One.flac");
        join_path(two, sizeof two, dir, "Two.mp3");
        join_path(three, sizeof three, dir, "Three.ogg");

        /* Fill the kernel's caches: dentries, attributes, the listing, One's pages. */
        assert_listing(dir, (const char *[]) { "One.flac", "Two.mp3" }, 2);
        assert_int_equal(stat(one, &st), 0);
        uint64_t one_ino = st.st_ino;
        assert_int_equal(stat(two, &st), 0);
        assert_file_bytes(one, lib.one, ONE_SIZE);
        assert_int_equal(errno_of(stat(three, &st)), ENOENT);

        /* A rescan: One rewritten in place (new size and mtime), Two gone, Three new. */
        make_file(f, &v2[0], 1, "one.flac", "Artist", "One", 9000, 3, MTIME_NS + 5000000000, true);
        make_file(f, &v2[1], 3, "three.ogg", "Artist", "Three", 1234, 4, MTIME_NS, true);
        publish(f, build_tree(f, v2, ELEMENTSOF(v2)));

        assert_listing(dir, (const char *[]) { "One.flac", "Three.ogg" }, 2);
        assert_int_equal(errno_of(stat(two, &st)), ENOENT);
        assert_int_equal(stat(three, &st), 0);
        assert_int_equal(st.st_size, 1234);
        assert_int_equal(stat(one, &st), 0);
        assert_int_equal(st.st_ino, one_ino);   /* D4: the path keeps its inode */
        assert_int_equal(st.st_size, 9000);
        assert_int_equal(st.st_mtim.tv_sec, (MTIME_NS + 5000000000) / 1000000000);
        uint8_t *one_v2 = pattern(3, 9000);
        assert_file_bytes(one, one_v2, 9000);
        free(one_v2);
        uint8_t *three_bytes = pattern(4, 1234);
        assert_file_bytes(three, three_bytes, 1234);
        free(three_bytes);

        stop(f);
        for (size_t i = 0; i < ELEMENTSOF(v2); i++)
                catalog_file_free_members(&v2[i]);
        small_library_free(&lib);
}

/* An open file keeps reading the version it was opened on while the tree moves on. */
static void test_open_file_survives_rescan(void **state) {
        Fixture *f = *state;
        SmallLibrary lib;
        char two[PATH_MAX];
        struct stat st;
        uint8_t buf[4096];

        small_library(f, &lib);
        tree_unref(tree_store_publish(f->trees, build_tree(f, lib.files, ELEMENTSOF(lib.files))));
        mount_and_start(f, 2);
        join_path(two, sizeof two, f->mnt, "Artist/Two.mp3");

        int fd = open(two, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        /* Two leaves the tree (its origin file stays). */
        publish(f, build_tree(f, lib.files, 1));
        assert_int_equal(errno_of(stat(two, &st)), ENOENT);

        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(st.st_size, TWO_SIZE);
        assert_int_equal(pread(fd, buf, sizeof buf, 1 << 20), (ssize_t) sizeof buf);
        assert_memory_equal(buf, lib.two + (1 << 20), sizeof buf);
        close(fd);

        stop(f);
        small_library_free(&lib);
}

/* New timeouts apply to replies from then on; what the kernel cached keeps its old timeout. Seen
 * through a tree published without fusefs_tree_changed(), so only expiry can reveal it. */
static void test_set_timeouts(void **state) {
        Fixture *f = *state;
        SmallLibrary lib;
        char one[PATH_MAX], two[PATH_MAX];
        struct stat st;

        small_library(f, &lib);
        tree_unref(tree_store_publish(f->trees, build_tree(f, lib.files, ELEMENTSOF(lib.files))));
        mount_and_start(f, 2);
        join_path(one, sizeof one, f->mnt, "Artist/One.flac");
        join_path(two, sizeof two, f->mnt, "Artist/Two.mp3");

        assert_int_equal(stat(one, &st), 0);            /* cached for a day */
        fusefs_set_timeouts(f->fs, 0, 0);
        assert_int_equal(stat(two, &st), 0);            /* not cached at all */

        Tree *empty = NULL;
        assert_int_equal(tree_new_empty(&empty), 0);
        tree_unref(tree_store_publish(f->trees, empty));

        assert_int_equal(stat(one, &st), 0);
        assert_int_equal(st.st_size, ONE_SIZE);
        assert_int_equal(errno_of(stat(two, &st)), ENOENT);

        stop(f);
        small_library_free(&lib);
}

static void test_connection_lost(void **state) {
        Fixture *f = *state;
        struct stat st;

        mount_and_start(f, 2);
        assert_int_equal(stat(f->mnt, &st), 0);
        struct pollfd p = { .fd = fusefs_event_fd(f->fs), .events = POLLIN };
        assert_int_equal(poll(&p, 1, 0), 0);
        assert_false(fusefs_connection_lost(f->fs));

        /* Someone unmounts us from outside. */
        assert_int_equal(umount2(f->mnt, MNT_DETACH), 0);
        assert_int_equal(poll(&p, 1, WAIT_TIMEOUT_MS), 1);
        assert_true(fusefs_connection_lost(f->fs));
        assert_true(fusefs_alive(f->fs, 0));

        stop(f);
        /* The path is usable again. */
        mount_and_start(f, 1);
        assert_int_equal(stat(f->mnt, &st), 0);
        stop(f);
}

/* The connection aborted under a live daemon (fusectl's abort, a kernel-side failure): the workers
 * notice, and stop leaves no dead mount behind for the restart (spec 3.4). */
static void test_connection_aborted(void **state) {
        Fixture *f = *state;
        char ctl[PATH_MAX], abort_path[PATH_MAX + 32];
        struct stat st;
        struct statvfs sv;

        join_path(ctl, sizeof ctl, f->dir, "fusectl");
        assert_int_equal(mkdir(ctl, 0755), 0);
        if (mount("fusectl", ctl, "fusectl", 0, NULL) < 0) {
                fprintf(stderr, "cannot mount fusectl: %s\n", strerror(errno));
                skip();
        }

        mount_and_start(f, 2);
        assert_int_equal(stat(f->mnt, &st), 0);
        /* Connections are named by the kernel's device number: major 0, so the minor. */
        snprintf(abort_path, sizeof abort_path, "%s/%u/abort", ctl, minor(st.st_dev));
        int fd = open(abort_path, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "1", 1), 1);
        close(fd);

        struct pollfd p = { .fd = fusefs_event_fd(f->fs), .events = POLLIN };
        assert_int_equal(poll(&p, 1, WAIT_TIMEOUT_MS), 1);
        assert_true(fusefs_connection_lost(f->fs));
        assert_int_equal(errno_of(statvfs(f->mnt, &sv)), ENOTCONN);
        assert_true(is_mounted(f->mnt));

        stop(f);
        assert_int_equal(umount2(ctl, 0), 0);
}

#if MUSICFS_FAILPOINTS
static void arm(const char *name, const char *actions) {
        char *reason = NULL;
        int r = failpoint_arm(name, actions, &reason);
        if (r < 0)
                fail_msg("arming %s=%s: %s", name, actions, strna(reason));
        free(reason);
}

/* The failpoints answer their errno; origin failures reach the reader through the errno table. */
static void test_failpoints_and_errno_table(void **state) {
        Fixture *f = *state;
        CatalogFile files[6];
        char path[PATH_MAX], buf[4096];
        struct stat st;
        char **names;
        size_t n;
        static const char *const titles[] = { "A", "B", "C", "D", "E", "F" };

        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                char rel[32];
                snprintf(rel, sizeof rel, "%s.flac", titles[i]);
                make_file(f, &files[i], (int64_t) i + 1, rel, "Artist", titles[i], 5000, (unsigned) i + 10, MTIME_NS, true);
        }
        tree_unref(tree_store_publish(f->trees, build_tree(f, files, ELEMENTSOF(files))));
        mount_and_start(f, 2);

        /* fuse-lookup, first: a listing would put every name in the dentry cache (readdirplus). */
        arm("fuse-lookup", "return(EACCES)");
        join_path(path, sizeof path, f->mnt, "Artist/A.flac");
        assert_int_equal(errno_of(stat(path, &st)), EACCES);
        failpoint_disarm("fuse-lookup");
        assert_int_equal(stat(path, &st), 0);

        /* fuse-readdir: a listing the kernel has not cached yet fails, then works. */
        join_path(path, sizeof path, f->mnt, "Artist");
        arm("fuse-readdir", "return(EIO)");
        assert_int_equal(list_dir(path, &names, &n), -EIO);
        failpoint_disarm("fuse-readdir");
        assert_int_equal(list_dir(path, &names, &n), 0);
        assert_int_equal(n, ELEMENTSOF(files));
        free_names(names, n);

        /* fuse-read. */
        join_path(path, sizeof path, f->mnt, "Artist/A.flac");
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        arm("fuse-read", "return(EIO)");
        assert_int_equal(errno_of((int) pread(fd, buf, sizeof buf, 0)), EIO);
        failpoint_disarm("fuse-read");
        assert_int_equal(pread(fd, buf, sizeof buf, 0), (ssize_t) sizeof buf);
        close(fd);

        /* The table: a full fd table is ENFILE, transport and integrity failures are EIO, the
         * errors that mean something to a reader pass through. */
        static const struct {
                const char *point, *actions, *file;
                int expected;
        } table[] = {
                { "origin-open", "return(EMFILE)", "Artist/B.flac", ENFILE },
                { "origin-open", "return(ENOENT)", "Artist/B.flac", ENOENT },
                { "origin-open", "return(EACCES)", "Artist/B.flac", EACCES },
                { "origin-read", "return(ETIMEDOUT)", "Artist/C.flac", EIO },
                { "origin-read", "return(ECONNRESET)", "Artist/D.flac", EIO },
                { "origin-read", "return(EBADMSG)", "Artist/E.flac", EIO },
                { "origin-read", "return(ENOSPC)", "Artist/F.flac", EIO },
        };
        char log_path[PATH_MAX];
        join_path(log_path, sizeof log_path, f->dir, "log");
        int saved_stderr = capture_begin(log_path);
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                join_path(path, sizeof path, f->mnt, table[i].file);
                arm(table[i].point, table[i].actions);
                if (strcmp(table[i].point, "origin-open") == 0)
                        assert_int_equal(errno_of(open(path, O_RDONLY | O_CLOEXEC)), table[i].expected);
                else {
                        fd = open(path, O_RDONLY | O_CLOEXEC);
                        assert_true(fd >= 0);
                        assert_int_equal(errno_of((int) pread(fd, buf, sizeof buf, 0)), table[i].expected);
                        close(fd);
                }
                failpoint_disarm(table[i].point);
        }
        /* Four failed reads, one line: no log storms (one per error class per 10 s). */
        char *log = capture_end(saved_stderr, log_path);
        assert_int_equal(count_substr(log, "readers get EIO"), 1);
        assert_int_equal(count_substr(log, "readers get ENFILE"), 1);
        free(log);

        /* Once the origin is back, the same files read. */
        join_path(path, sizeof path, f->mnt, "Artist/F.flac");
        uint8_t *expected = pattern(15, 5000);
        assert_file_bytes(path, expected, 5000);
        free(expected);

        stop(f);
        for (size_t i = 0; i < ELEMENTSOF(files); i++)
                catalog_file_free_members(&files[i]);
}

typedef struct BlockedRead {
        int fd;
        ssize_t result;
        uint8_t buf[1000];
} BlockedRead;

static void *blocked_reader(void *userdata) {
        BlockedRead *b = userdata;
        b->result = pread(b->fd, b->buf, sizeof b->buf, 0);
        return NULL;
}

static bool wait_alive(FuseFs *fs, bool expected) {
        for (int i = 0; i < WAIT_TIMEOUT_MS; i++) {
                if (fusefs_alive(fs, 0) == expected)
                        return true;
                nanosleep(&(struct timespec) { .tv_nsec = 1000000 }, NULL);
        }
        return false;
}

/* The watchdog's proof of life: one worker stuck in a read makes a one-worker filesystem dead,
 * within any limit shorter than how long it has been stuck, and alive again once it returns. */
static void test_alive_reports_stuck_workers(void **state) {
        Fixture *f = *state;
        SmallLibrary lib;
        char one[PATH_MAX];
        pthread_t thread;

        small_library(f, &lib);
        tree_unref(tree_store_publish(f->trees, build_tree(f, lib.files, ELEMENTSOF(lib.files))));
        mount_and_start(f, 1);
        join_path(one, sizeof one, f->mnt, "Artist/One.flac");

        BlockedRead b = { .fd = open(one, O_RDONLY | O_CLOEXEC) };
        assert_true(b.fd >= 0);
        /* The worker goes idle just after its reply reaches us. */
        assert_true(wait_alive(f->fs, true));

        arm("fuse-read", "pause");
        assert_int_equal(pthread_create(&thread, NULL, blocked_reader, &b), 0);
        assert_true(wait_alive(f->fs, false));
        assert_true(fusefs_alive(f->fs, UINT64_MAX));

        failpoint_disarm("fuse-read");
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_int_equal(b.result, (ssize_t) sizeof b.buf);
        assert_memory_equal(b.buf, lib.one, sizeof b.buf);
        assert_true(wait_alive(f->fs, true));
        close(b.fd);

        stop(f);
        small_library_free(&lib);
}
#endif

static bool fuse_usable(void) {
        if (geteuid() != 0) {
                fprintf(stderr, "test-fs-stale: skipped, mounting needs root\n");
                return false;
        }
        int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                fprintf(stderr, "test-fs-stale: skipped, cannot open /dev/fuse: %s\n", strerror(errno));
                return false;
        }
        close(fd);
        return true;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_mountpoint_checks, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stale_mount_cleanup, setup, teardown),
                cmocka_unit_test_setup_teardown(test_live_foreign_mount_is_busy, setup, teardown),
                cmocka_unit_test_setup_teardown(test_mount_and_read, setup, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_reads, setup, teardown),
                cmocka_unit_test_setup_teardown(test_large_directory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_tree_changed_invalidates, setup, teardown),
                cmocka_unit_test_setup_teardown(test_open_file_survives_rescan, setup, teardown),
                cmocka_unit_test_setup_teardown(test_set_timeouts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_lost, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_aborted, setup, teardown),
#if MUSICFS_FAILPOINTS
                cmocka_unit_test_setup_teardown(test_failpoints_and_errno_table, setup, teardown),
                cmocka_unit_test_setup_teardown(test_alive_reports_stuck_workers, setup, teardown),
#endif
        };

        if (!fuse_usable())
                return 77;
        return cmocka_run_group_tests(tests, NULL, NULL);
}
