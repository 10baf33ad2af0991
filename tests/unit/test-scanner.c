/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The scanner against a real local origin of ffmpeg-made files and a real SQLite catalog. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "origin.h"
#include "scanner.h"
#include "tags.h"
#include "time-util.h"

extern char **environ;

/* Encoded once; every test copies them into its own origin. */
typedef struct Samples {
        char dir[64];
        char *flac, *mp3;
        size_t flac_size, mp3_size;
} Samples;

static Samples samples;

typedef struct Fixture {
        char dir[64];
        char music[96];
        char db[96];
        Catalog *catalog;
        Origin *origin;
} Fixture;

static void run(const char *const *argv) {
        pid_t pid;
        int status;

        assert_int_equal(posix_spawnp(&pid, argv[0], NULL, NULL, (char *const *) argv, environ), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static char *slurp(const char *path, size_t *ret_size) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        char *buf;

        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        buf = malloc(st.st_size);
        assert_non_null(buf);
        assert_int_equal(read(fd, buf, st.st_size), st.st_size);
        *ret_size = st.st_size;
        return buf;
}

static int group_setup(void **state) {
        char flac[128], mp3[128];

        strcpy(samples.dir, "/tmp/test-scanner-samples-XXXXXX");
        assert_non_null(mkdtemp(samples.dir));
        snprintf(flac, sizeof flac, "%s/s.flac", samples.dir);
        snprintf(mp3, sizeof mp3, "%s/s.mp3", samples.dir);
#define SAMPLE_ARGS "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", \
                "-i", "sine=frequency=440:duration=0.2", "-metadata", "title=Scan Title", \
                "-metadata", "artist=Scan Artist", "-metadata", "album=Scan Album", "-metadata", "track=4/9"
        run((const char *const[]) { SAMPLE_ARGS, flac, NULL });
        run((const char *const[]) { SAMPLE_ARGS, "-c:a", "libmp3lame", "-id3v2_version", "3", mp3, NULL });
        samples.flac = slurp(flac, &samples.flac_size);
        samples.mp3 = slurp(mp3, &samples.mp3_size);
        tags_init();
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int group_teardown(void **state) {
        nftw(samples.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(samples.flac);
        free(samples.mp3);
        return 0;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        int64_t id = 0;

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-scanner-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->music, sizeof f->music, "%s/music", f->dir);
        snprintf(f->db, sizeof f->db, "%s/catalog.db", f->dir);
        assert_int_equal(mkdir(f->music, 0755), 0);

        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(origin_local_new("music", f->music, 0, &f->origin), 0);
        assert_int_equal(catalog_origin_ensure(f->catalog, "music", f->music, 0, &id), 0);
        f->origin->id = id;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        catalog_close(f->catalog);
        origin_free(f->origin);
        nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(f);
        return 0;
}

static void write_at(const Fixture *f, const char *rel_path, const void *data, size_t size) {
        char path[512];

        /* mkdir -p of the parents */
        snprintf(path, sizeof path, "%s/%s", f->music, rel_path);
        for (char *slash = strchr(path + strlen(f->music) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
                *slash = 0;
                assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
                *slash = '/';
        }
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
}

static void track_path(char *buf, size_t size, unsigned i) {
        snprintf(buf, size, "Artist %u/Album/%02u - Track.%s", i % 3, i, i % 2 ? "mp3" : "flac");
}

/* n audio files numbered from first, half FLAC and half MP3, in three artist directories. */
static void populate(const Fixture *f, unsigned first, unsigned n) {
        char rel[128];

        for (unsigned i = first; i < first + n; i++) {
                track_path(rel, sizeof rel, i);
                if (i % 2)
                        write_at(f, rel, samples.mp3, samples.mp3_size);
                else
                        write_at(f, rel, samples.flac, samples.flac_size);
        }
        /* Never catalogued: */
        write_at(f, "cover.jpg", "\xff\xd8\xff", 3);
        write_at(f, "Artist 0/notes.txt", "hello", 5);
}

static void remove_track(const Fixture *f, unsigned i) {
        char rel[128], path[512];

        track_path(rel, sizeof rel, i);
        snprintf(path, sizeof path, "%s/%s", f->music, rel);
        assert_int_equal(unlink(path), 0);
}

static void set_mtime(const Fixture *f, const char *rel_path, time_t sec) {
        char path[512];
        struct timespec ts[2] = { { .tv_sec = sec }, { .tv_sec = sec } };

        snprintf(path, sizeof path, "%s/%s", f->music, rel_path);
        assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static uint64_t count_files(const Fixture *f) {
        uint64_t n = 0;
        assert_int_equal(catalog_count_files(f->catalog, &n), 0);
        return n;
}

/* The catalog row of rel_path, or NULL; free with catalog_file_free_members() and free(). */
static CatalogFile *find_row(Catalog *c, int64_t origin_id, const char *rel_path) {
        CatalogFile *files = NULL, *found = NULL;
        size_t n = 0;

        assert_int_equal(catalog_load_origin_files(c, origin_id, &files, &n), 0);
        for (size_t i = 0; i < n; i++)
                if (strcmp(files[i].rel_path, rel_path) == 0) {
                        found = malloc(sizeof *found);
                        assert_non_null(found);
                        *found = files[i];
                        files[i] = (CatalogFile) {};
                }
        catalog_files_free(files, n);
        return found;
}

static void row_free(CatalogFile *row) {
        if (row)
                catalog_file_free_members(row);
        free(row);
}

static ScanStats scan_ok(const Fixture *f, unsigned batch_size) {
        ScanStats stats;
        assert_int_equal(scan_origin(f->catalog, f->origin, batch_size, NULL, &stats), 0);
        return stats;
}

#define assert_stats(s, seen_, added_, changed_, unchanged_, removed_, unparsed_, failed_) \
        do {                                                    \
                assert_int_equal((s).seen, (seen_));            \
                assert_int_equal((s).added, (added_));          \
                assert_int_equal((s).changed, (changed_));      \
                assert_int_equal((s).unchanged, (unchanged_));  \
                assert_int_equal((s).removed, (removed_));      \
                assert_int_equal((s).unparsed, (unparsed_));    \
                assert_int_equal((s).failed, (failed_));        \
        } while (0)

static void test_lifecycle(void **state) {
        Fixture *f = *state;
        ScanStats s;
        CatalogFile *row;
        char rel[128], path[512];
        struct stat st;

        populate(f, 0, 10);
        s = scan_ok(f, 4);
        assert_stats(s, 10, 10, 0, 0, 0, 0, 0);
        assert_int_equal(count_files(f), 10);

        /* What the rows hold: the walk's size and mtime, the extension, the tags. */
        for (unsigned i = 0; i < 2; i++) {
                track_path(rel, sizeof rel, i);
                snprintf(path, sizeof path, "%s/%s", f->music, rel);
                assert_int_equal(stat(path, &st), 0);
                row = find_row(f->catalog, f->origin->id, rel);
                assert_non_null(row);
                assert_true(row->parsed);
                assert_string_equal(row->format, i % 2 ? "mp3" : "flac");
                assert_int_equal(row->size, st.st_size);
                assert_int_equal(row->mtime_ns, (int64_t) st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
                assert_string_equal(row->tags.title, "Scan Title");
                assert_string_equal(row->tags.artist, "Scan Artist");
                assert_int_equal(row->tags.track, 4);
                assert_true(row->tags.duration_ms > 100);
                row_free(row);
        }

        s = scan_ok(f, 4);
        assert_stats(s, 10, 0, 0, 10, 0, 0, 0);

        track_path(rel, sizeof rel, 3);
        set_mtime(f, rel, 1000000000);
        s = scan_ok(f, 4);
        assert_stats(s, 10, 0, 1, 9, 0, 0, 0);
        row = find_row(f->catalog, f->origin->id, rel);
        assert_non_null(row);
        assert_int_equal(row->mtime_ns, INT64_C(1000000000) * 1000000000);
        row_free(row);

        remove_track(f, 4);
        s = scan_ok(f, 4);
        assert_stats(s, 9, 0, 0, 9, 1, 0, 0);
        assert_int_equal(count_files(f), 9);
        track_path(rel, sizeof rel, 4);
        assert_null(find_row(f->catalog, f->origin->id, rel));

        /* Not audio inside: still listed, under the Unknown names. */
        write_at(f, "Junk/bad.mp3", "this is no mp3 at all, just some words", 38);
        s = scan_ok(f, 4);
        assert_stats(s, 10, 1, 0, 9, 0, 1, 0);
        row = find_row(f->catalog, f->origin->id, "Junk/bad.mp3");
        assert_non_null(row);
        assert_false(row->parsed);
        assert_string_equal(row->format, "mp3");
        assert_null(row->tags.title);
        assert_null(row->tags.artist);
        assert_int_equal(row->size, 38);
        row_free(row);

        /* Unparsed and unchanged stays as it is, without being read again. */
        s = scan_ok(f, 4);
        assert_stats(s, 10, 0, 0, 10, 0, 0, 0);

        /* The same path with real audio now: changed, parsed. */
        write_at(f, "Junk/bad.mp3", samples.mp3, samples.mp3_size);
        s = scan_ok(f, 4);
        assert_stats(s, 10, 0, 1, 9, 0, 0, 0);
        row = find_row(f->catalog, f->origin->id, "Junk/bad.mp3");
        assert_non_null(row);
        assert_true(row->parsed);
        assert_string_equal(row->tags.title, "Scan Title");
        row_free(row);
}

/* Enough files for the table to grow several times and collide plenty. */
static void test_many_files(void **state) {
        Fixture *f = *state;
        ScanStats s;

        populate(f, 0, 700);
        s = scan_ok(f, 0);      /* 0: the default batch size */
        assert_stats(s, 700, 700, 0, 0, 0, 0, 0);
        s = scan_ok(f, 64);
        assert_stats(s, 700, 0, 0, 700, 0, 0, 0);
        assert_int_equal(count_files(f), 700);
}

static void test_file_failpoint(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        ScanStats s;
        CatalogFile *row;
        char rel[128];
        int64_t old_mtime;

        /* A new file that fails is not catalogued, and the next scan adds it. */
        populate(f, 0, 6);
        assert_int_equal(failpoint_arm("scan-file", "1*return(EIO)", NULL), 0);
        s = scan_ok(f, 4);
        assert_stats(s, 6, 5, 0, 0, 0, 0, 1);
        assert_int_equal(count_files(f), 5);
        s = scan_ok(f, 4);
        assert_stats(s, 6, 1, 0, 5, 0, 0, 0);
        assert_int_equal(count_files(f), 6);

        /* A changed file that fails keeps its old row (not removed by the end of the scan), and the
         * next scan reads it. */
        track_path(rel, sizeof rel, 2);
        row = find_row(f->catalog, f->origin->id, rel);
        assert_non_null(row);
        old_mtime = row->mtime_ns;
        row_free(row);
        set_mtime(f, rel, 1000000000);
        assert_int_equal(failpoint_arm("scan-file", "1*return(EIO)", NULL), 0);
        s = scan_ok(f, 4);
        assert_stats(s, 6, 0, 0, 5, 0, 0, 1);
        assert_int_equal(count_files(f), 6);
        row = find_row(f->catalog, f->origin->id, rel);
        assert_non_null(row);
        assert_int_equal(row->mtime_ns, old_mtime);
        row_free(row);

        s = scan_ok(f, 4);
        assert_stats(s, 6, 0, 1, 5, 0, 0, 0);
        row = find_row(f->catalog, f->origin->id, rel);
        assert_non_null(row);
        assert_int_equal(row->mtime_ns, INT64_C(1000000000) * 1000000000);
        row_free(row);

        /* An origin that cannot be read is a failure, not a file to list under Unknown. */
        populate(f, 6, 1);
        assert_int_equal(failpoint_arm("origin-read", "return(EIO)", NULL), 0);
        s = scan_ok(f, 4);
        assert_stats(s, 7, 0, 0, 6, 0, 0, 1);
        assert_int_equal(count_files(f), 6);
        assert_int_equal(failpoint_arm("origin-open", "return(EACCES)", NULL), 0);
        assert_int_equal(failpoint_disarm("origin-read"), 0);
        s = scan_ok(f, 4);
        assert_stats(s, 7, 0, 0, 6, 0, 0, 1);
        failpoint_disarm_all();
        s = scan_ok(f, 4);
        assert_stats(s, 7, 1, 0, 6, 0, 0, 0);
#else
        skip();
#endif
}

typedef struct HookLog {
        unsigned calls;
        ScanStats last;
        bool monotonic;
        atomic_bool cancel;
        unsigned cancel_after;  /* set cancel in this call; 0 = never */
} HookLog;

static void on_batch(const ScanStats *stats, void *userdata) {
        HookLog *h = userdata;
        uint64_t done = stats->added + stats->changed + stats->unchanged;

        if (h->calls > 0 && done <= h->last.added + h->last.changed + h->last.unchanged)
                h->monotonic = false;
        h->calls++;
        h->last = *stats;
        if (h->cancel_after > 0 && h->calls == h->cancel_after)
                atomic_store(&h->cancel, true);
}

_unused_ static void assert_same_catalog(Catalog *a, int64_t origin_a, Catalog *b, int64_t origin_b) {
        CatalogFile *fa = NULL, *fb = NULL;
        size_t na = 0, nb = 0;

        assert_int_equal(catalog_load_origin_files(a, origin_a, &fa, &na), 0);
        assert_int_equal(catalog_load_origin_files(b, origin_b, &fb, &nb), 0);
        assert_int_equal(na, nb);
        for (size_t i = 0; i < na; i++) {
                assert_string_equal(fa[i].rel_path, fb[i].rel_path);
                assert_int_equal(fa[i].size, fb[i].size);
                assert_int_equal(fa[i].mtime_ns, fb[i].mtime_ns);
                assert_int_equal(fa[i].parsed, fb[i].parsed);
                assert_string_equal(fa[i].format, fb[i].format);
                assert_string_equal(fa[i].tags.title, fb[i].tags.title);
                assert_int_equal(fa[i].tags.track, fb[i].tags.track);
                assert_int_equal(fa[i].tags.duration_ms, fb[i].tags.duration_ms);
        }
        catalog_files_free(fa, na);
        catalog_files_free(fb, nb);
}

static void test_batches(void **state) {
        Fixture *f = *state;
        HookLog h = { .monotonic = true };
        ScanHooks hooks = { .batch_committed = on_batch, .userdata = &h };
        ScanStats s;

        populate(f, 0, 14);
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, &hooks, &s), 0);
        assert_stats(s, 14, 14, 0, 0, 0, 0, 0);
        assert_int_equal(h.calls, 4);   /* 4 + 4 + 4 + 2 */
        assert_true(h.monotonic);
        assert_int_equal(h.last.added, 14);
}

static void test_batch_failpoint(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        HookLog h = { .monotonic = true };
        ScanHooks hooks = { .batch_committed = on_batch, .userdata = &h };
        Catalog *clean = NULL;
        int64_t clean_id = 0;
        char clean_db[128];
        ScanStats s;

        populate(f, 0, 14);
        remove_track(f, 13);
        s = scan_ok(f, 4);
        assert_int_equal(s.added, 13);
        populate(f, 13, 11);    /* 24 files, 13 catalogued */
        remove_track(f, 0);     /* and one to remove: 23 on the origin */

        /* Stopped after the second committed batch: exactly 2 × 4 files were written. */
        assert_int_equal(failpoint_arm("scan-batch", "1*off->return(EIO)", NULL), 0);
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, &hooks, &s), -EIO);
        assert_int_equal(h.calls, 1);
        assert_int_equal(s.added + s.changed + s.unchanged, 8);
        assert_int_equal(s.removed, 0);
        assert_int_equal(count_files(f), 13 + s.added);       /* nothing removed either */
        failpoint_disarm_all();

        /* Resumed, the catalog is the one a single clean scan makes. */
        s = scan_ok(f, 4);
        assert_int_equal(s.seen, 23);
        assert_int_equal(s.removed, 1);
        assert_int_equal(count_files(f), 23);

        snprintf(clean_db, sizeof clean_db, "%s/clean.db", f->dir);
        assert_int_equal(catalog_open(clean_db, &clean), 0);
        assert_int_equal(catalog_origin_ensure(clean, "music", f->music, 0, &clean_id), 0);
        int64_t id = f->origin->id;
        f->origin->id = clean_id;
        assert_int_equal(scan_origin(clean, f->origin, 1000, NULL, &s), 0);
        f->origin->id = id;
        assert_int_equal(s.added, 23);
        assert_same_catalog(f->catalog, id, clean, clean_id);
        catalog_close(clean);

        /* A commit that fails stops the scan with its error. */
        populate(f, 30, 2);
        assert_int_equal(failpoint_arm("catalog-commit", "return(EIO)", NULL), 0);
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, NULL, &s), -EIO);
        failpoint_disarm_all();
        assert_int_equal(count_files(f), 23);
        s = scan_ok(f, 4);
        assert_int_equal(s.added, 2);
#else
        skip();
#endif
}

static void test_cancel(void **state) {
        Fixture *f = *state;
        HookLog h = { .monotonic = true, .cancel_after = 1 };
        ScanHooks hooks = { .batch_committed = on_batch, .userdata = &h, .cancel = &h.cancel };
        ScanStats s;

        populate(f, 0, 10);
        s = scan_ok(f, 4);
        assert_int_equal(count_files(f), 10);
        remove_track(f, 1);
        remove_track(f, 2);
        populate(f, 10, 6);

        /* Cancelled after the first batch: it stays committed, and nothing is removed. */
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, &hooks, &s), -ECANCELED);
        assert_int_equal(h.calls, 1);
        assert_int_equal(s.added + s.changed + s.unchanged, 4);
        assert_int_equal(s.removed, 0);
        assert_int_equal(count_files(f), 10 + s.added);

        /* Cancelled before it starts: nothing at all. */
        h = (HookLog) { .monotonic = true };
        atomic_store(&h.cancel, true);
        uint64_t before = count_files(f);
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, &hooks, &s), -ECANCELED);
        assert_int_equal(h.calls, 0);
        assert_int_equal(s.seen, 0);
        assert_int_equal(count_files(f), before);

        atomic_store(&h.cancel, false);
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, &hooks, &s), 0);
        assert_int_equal(s.removed, 2);
        assert_int_equal(count_files(f), 14);
}

static void reopen_origin(Fixture *f) {
        origin_free(f->origin);
        f->origin = NULL;
        assert_int_equal(origin_local_new("music", f->music, 0, &f->origin), 0);
        assert_int_equal(catalog_origin_ensure(f->catalog, "music", f->music, 0, &f->origin->id), 0);
}

static void test_origin_gone(void **state) {
        Fixture *f = *state;
        ScanStats s;

        populate(f, 0, 8);
        s = scan_ok(f, 4);
        assert_int_equal(count_files(f), 8);

        /* Root removed (while the origin is open): an error, and the library keeps every file. */
        assert_int_equal(nftw(f->music, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
        assert_true(scan_origin(f->catalog, f->origin, 4, NULL, &s) < 0);
        assert_int_equal(s.removed, 0);
        assert_int_equal(count_files(f), 8);

        /* An empty directory where the files were (an unmounted disk's mount point): nothing
         * removed either. */
        assert_int_equal(mkdir(f->music, 0755), 0);
        reopen_origin(f);
        s = scan_ok(f, 4);
        assert_stats(s, 0, 0, 0, 0, 0, 0, 0);
        assert_int_equal(count_files(f), 8);

        /* Files back (new mtimes): changed in place, none added or removed. */
        populate(f, 0, 8);
        s = scan_ok(f, 4);
        assert_stats(s, 8, 0, 8, 0, 0, 0, 0);
        assert_int_equal(count_files(f), 8);

        /* An origin with files left removes what went away as usual. */
        remove_track(f, 5);
        s = scan_ok(f, 4);
        assert_stats(s, 7, 0, 0, 7, 1, 0, 0);
}

/* A scan with the file-system rights of nobody, so that modes locking others out lock the scan out
 * too (root passes every permission check). Only this thread's fs uid changes, for the scan alone:
 * the catalog stays open as it is, and no SQLite connection crosses a fork. 77 when we cannot. */
static int scan_as_nobody(const Fixture *f, unsigned batch_size, ScanStats *ret) {
        bool root = geteuid() == 0;
        int r;

        if (root) {
                (void) setfsuid(65534);
                if (setfsuid((uid_t) -1) != 65534) {    /* no CAP_SETUID: nothing changed */
                        (void) setfsuid(0);
                        return 77;
                }
        }
        r = scan_origin(f->catalog, f->origin, batch_size, NULL, ret);
        if (root) {
                (void) setfsuid(0);
                assert_int_equal(setfsuid((uid_t) -1), 0);
        }
        return r;
}

static void chmod_at(const Fixture *f, const char *rel_path, mode_t mode) {
        char path[512];

        snprintf(path, sizeof path, "%s/%s", f->music, rel_path);
        assert_int_equal(chmod(path, mode), 0);
}

/* rel_path -> row id of every catalogued file, as a sorted "path\tid" list, so that two snapshots
 * compare as wholes: a row removed and added again would come back with another id (D4). */
static char *catalog_snapshot(const Fixture *f, size_t *ret_n) {
        CatalogFile *files = NULL;
        size_t n = 0, size = 1;
        char *buf;

        assert_int_equal(catalog_load_origin_files(f->catalog, f->origin->id, &files, &n), 0);
        for (size_t i = 0; i < n; i++)
                size += strlen(files[i].rel_path) + 32;
        buf = malloc(size);
        assert_non_null(buf);
        buf[0] = '\0';
        for (size_t i = 0, at = 0; i < n; i++)
                at += (size_t) snprintf(buf + at, size - at, "%s\t%lld\n", files[i].rel_path, (long long) files[i].id);
        catalog_files_free(files, n);
        *ret_n = n;
        return buf;
}

static int64_t row_id(const Fixture *f, const char *rel_path) {
        CatalogFile *row = find_row(f->catalog, f->origin->id, rel_path);
        int64_t id;

        assert_non_null(row);
        id = row->id;
        row_free(row);
        return id;
}

/* A directory the scan cannot read is unknown, not gone: its files stay, with their inode numbers,
 * while the rest of the origin gets its removals; readable again, nothing is lost or doubled. */
static void test_unreadable_directory(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *before = NULL, *after = NULL;
        char rel[128], locked_track[128], secret[128], gone[128], changed[128];
        size_t n_before, n_after;
        ScanStats s;
        int r;

        /* Artist 0: tracks 0 3 6 9; Artist 1: 1 4 7 10; Artist 2: 2 5 8 11. */
        populate(f, 0, 12);
        s = scan_ok(f, 3);
        assert_stats(s, 12, 12, 0, 0, 0, 0, 0);
        before = catalog_snapshot(f, &n_before);
        assert_int_equal(n_before, 12);

        chmod_at(f, "Artist 0", 0700);          /* root's alone: unreadable to nobody */
        track_path(secret, sizeof secret, 4);   /* a file nobody may not read */
        chmod_at(f, secret, 0600);
        track_path(gone, sizeof gone, 7);       /* removed where the scan can see */
        remove_track(f, 7);
        track_path(locked_track, sizeof locked_track, 3);       /* removed where it cannot */
        remove_track(f, 3);
        track_path(changed, sizeof changed, 5);
        set_mtime(f, changed, 1000000000);
        populate(f, 12, 1);                     /* a new one, in Artist 0 again: not seen */
        populate(f, 14, 1);                     /* and one in Artist 2 */

        r = scan_as_nobody(f, 3, &s);
        if (r == 77)
                skip();
        assert_int_equal(r, 0);
        assert_int_equal(s.unreadable, 2);                      /* Artist 0, and the secret file */
        assert_int_equal(s.kept, 4 + 1);                        /* 0 3 6 9, and 4 */
        assert_int_equal(s.removed, 1);                         /* 7 only */
        assert_stats(s, 7, 1, 1, 5, 1, 0, 0);                   /* seen 1 2 5 8 10 11 14: 5 changed, 14 added */
        assert_null(find_row(f->catalog, f->origin->id, gone));
        assert_int_equal(count_files(f), 12 - 1 + 1);

        /* The kept rows are the rows they were: same ids (so no removal and re-add), same sizes. */
        for (unsigned i = 0; i < 12; i++) {
                char expect[256];
                CatalogFile *row;

                track_path(rel, sizeof rel, i);
                row = find_row(f->catalog, f->origin->id, rel);
                if (i == 7) {
                        assert_null(row);
                        continue;
                }
                assert_non_null(row);
                snprintf(expect, sizeof expect, "%s\t%lld\n", rel, (long long) row->id);
                assert_non_null(strstr(before, expect));
                assert_int_equal(row->size, i % 2 ? samples.mp3_size : samples.flac_size);
                row_free(row);
        }
        track_path(rel, sizeof rel, 12);        /* new under the locked directory: not seen yet */
        assert_null(find_row(f->catalog, f->origin->id, rel));

        /* Readable again: what went while it was locked goes now, what came comes, the rest stays. */
        chmod_at(f, "Artist 0", 0755);
        chmod_at(f, secret, 0644);
        r = scan_as_nobody(f, 3, &s);
        assert_int_equal(r, 0);
        assert_int_equal(s.unreadable, 0);
        assert_int_equal(s.kept, 0);
        assert_stats(s, 12, 1, 0, 11, 1, 0, 0);                 /* 12 added, 3 removed at last */
        assert_null(find_row(f->catalog, f->origin->id, locked_track));
        assert_int_equal(count_files(f), 12);

        /* Nothing doubled, and every file that never went keeps its inode number. */
        after = catalog_snapshot(f, &n_after);
        assert_int_equal(n_after, 12);
        for (unsigned i = 0; i < 15; i++) {
                track_path(rel, sizeof rel, i);
                bool present = i != 3 && i != 7 && i != 13;
                const char *line = strstr(after, rel);
                assert_int_equal(line != NULL, present);
                if (!present)
                        continue;
                assert_null(strstr(line + 1, rel));            /* once */
                if (i < 12) {
                        char expect[256];
                        snprintf(expect, sizeof expect, "%s\t%lld\n", rel, (long long) row_id(f, rel));
                        assert_non_null(strstr(before, expect));
                }
        }
}

/* An origin that says its walk was incomplete but not where (a count, no skipped entries): nothing
 * can be removed safely. */
static int vague_walk(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        Origin *inner = *(Origin **) (o + 1);
        int r = origin_walk(inner, fn, userdata);
        return r < 0 ? r : r + 1;
}

static int vague_check(Origin *o) {
        return origin_check(*(Origin **) (o + 1));
}

static int vague_open(Origin *o, const char *rel_path, OriginFile **ret) {
        return -EIO;    /* only unchanged files are walked: never reached */
}

static void vague_free(Origin *o) {
        free(o);
}

static const OriginOps vague_ops = {
        .kind = "vague",
        .open = vague_open,
        .walk = vague_walk,
        .check = vague_check,
        .free = vague_free,
};

static void test_incomplete_walk_unlocated(void **state) {
        Fixture *f = *state;
        ScanStats s;

        populate(f, 0, 6);
        s = scan_ok(f, 4);
        assert_int_equal(count_files(f), 6);
        remove_track(f, 2);

        Origin *vague = calloc(1, sizeof(Origin) + sizeof(Origin *));
        assert_non_null(vague);
        *vague = (Origin) { .ops = &vague_ops, .name = strdup("music"), .id = f->origin->id };
        assert_non_null(vague->name);
        *(Origin **) (vague + 1) = f->origin;

        assert_int_equal(scan_origin(f->catalog, vague, 4, NULL, &s), 0);
        origin_free(vague);
        assert_int_equal(s.unreadable, 1);
        assert_stats(s, 5, 0, 0, 5, 0, 0, 0);
        assert_int_equal(count_files(f), 6);

        /* The origin itself, complete, removes it. */
        s = scan_ok(f, 4);
        assert_stats(s, 5, 0, 0, 5, 1, 0, 0);
        assert_int_equal(count_files(f), 5);
}

static void test_bad_arguments(void **state) {
        Fixture *f = *state;
        ScanStats s = { .seen = 7 };

        assert_int_equal(scan_origin(NULL, f->origin, 4, NULL, &s), -EINVAL);
        assert_int_equal(s.seen, 0);
        assert_int_equal(scan_origin(f->catalog, NULL, 4, NULL, NULL), -EINVAL);

        /* An origin the catalog does not know. */
        f->origin->id = 9999;
        assert_true(scan_origin(f->catalog, f->origin, 4, NULL, &s) < 0);
}

/* ---- sync (issue #6): resumable full scans, targeted scans, clock safety ---- */

static ScanStats scan_paths_ok(const Fixture *f, const char *const *paths, size_t n) {
        ScanStats stats;
        assert_int_equal(scan_origin_paths(f->catalog, f->origin, paths, n, 4, NULL, &stats), 0);
        return stats;
}

static bool in_progress(const Fixture *f) {
        bool b = true;
        assert_int_equal(catalog_scan_in_progress(f->catalog, f->origin->id, &b), 0);
        return b;
}

/* 2.5: a scan stopped after N batches resumes with its generation and its progress; the files it had
 * done are stamped, not read again; files removed in between go; the catalog equals a clean scan's. */
static void test_resume(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        CatalogFile *rows = NULL;
        Catalog *clean = NULL;
        int64_t clean_id = 0;
        char clean_db[128], path[512];
        size_t n_rows = 0;
        ScanStats s;

        populate(f, 0, 24);
        assert_false(in_progress(f));
        /* Dies after the third committed batch (as a kill would: nothing after it ran). */
        assert_int_equal(failpoint_arm("scan-batch", "2*off->return(EIO)", NULL), 0);
        assert_int_equal(scan_origin(f->catalog, f->origin, 4, NULL, &s), -EIO);
        failpoint_disarm_all();
        assert_int_equal(s.read, 12);
        assert_int_equal(count_files(f), 12);
        assert_true(in_progress(f));

        /* Meanwhile one of the done files goes and a new one comes. */
        assert_int_equal(catalog_load_origin_files(f->catalog, f->origin->id, &rows, &n_rows), 0);
        assert_int_equal(n_rows, 12);
        snprintf(path, sizeof path, "%s/%s", f->music, rows[0].rel_path);
        assert_int_equal(unlink(path), 0);
        catalog_files_free(rows, n_rows);
        populate(f, 24, 1);

        s = scan_ok(f, 4);
        assert_int_equal(s.resumed, 12);
        assert_int_equal(s.seen, 24);
        assert_int_equal(s.read, 13);           /* 12 never reached, 1 new: no done file read again */
        assert_int_equal(s.unchanged, 11);
        assert_int_equal(s.removed, 1);
        assert_int_equal(count_files(f), 24);
        assert_false(in_progress(f));

        snprintf(clean_db, sizeof clean_db, "%s/clean.db", f->dir);
        assert_int_equal(catalog_open(clean_db, &clean), 0);
        assert_int_equal(catalog_origin_ensure(clean, "music", f->music, 0, &clean_id), 0);
        int64_t id = f->origin->id;
        f->origin->id = clean_id;
        assert_int_equal(scan_origin(clean, f->origin, 1000, NULL, &s), 0);
        f->origin->id = id;
        assert_same_catalog(f->catalog, id, clean, clean_id);
        catalog_close(clean);

        /* A finished scan leaves nothing to resume: the next one is a fresh, unchanged one. */
        s = scan_ok(f, 4);
        assert_int_equal(s.resumed, 0);
        assert_int_equal(s.read, 0);
        assert_int_equal(s.unchanged, 24);
#else
        skip();
#endif
}

static void test_targeted(void **state) {
        Fixture *f = *state;
        char rel[128], gone[128], changed[128], untouched[128], path[512];
        CatalogFile *row;
        ScanStats s;

        populate(f, 0, 9);      /* Artist 0, 1, 2: three tracks each */
        write_at(f, "Artist 1.b/x.flac", samples.flac, samples.flac_size);     /* sorts between "Artist 1" and "Artist 1/" */
        s = scan_ok(f, 4);
        assert_int_equal(s.added, 10);

        track_path(gone, sizeof gone, 0);               /* Artist 0 */
        track_path(changed, sizeof changed, 2);         /* Artist 2 */
        track_path(untouched, sizeof untouched, 3);     /* Artist 0, gone but not named */
        remove_track(f, 0);
        remove_track(f, 3);
        set_mtime(f, changed, 1500000000);
        write_at(f, "Artist 1/Album/new.flac", samples.flac, samples.flac_size);

        const char *paths[] = { "Artist 1", changed, gone, "Artist 1" };
        s = scan_paths_ok(f, paths, ELEMENTSOF(paths));
        assert_int_equal(s.added, 1);
        assert_int_equal(s.changed, 1);
        assert_int_equal(s.removed, 1);
        assert_int_equal(s.unchanged, 3);       /* the three old files of Artist 1 */
        assert_int_equal(s.read, 2);            /* the new and the changed file only */
        assert_null(find_row(f->catalog, f->origin->id, gone));
        row = find_row(f->catalog, f->origin->id, untouched);  /* not named: not looked at */
        assert_non_null(row);
        row_free(row);
        assert_int_equal(count_files(f), 10);

        /* A directory that is gone takes its rows with it, and only its own: not "Artist 1.b". */
        snprintf(path, sizeof path, "rm -rf '%s/Artist 1'", f->music);
        assert_int_equal(system(path), 0);
        const char *dir[] = { "Artist 1" };
        s = scan_paths_ok(f, dir, 1);
        assert_int_equal(s.removed, 4);
        row = find_row(f->catalog, f->origin->id, "Artist 1.b/x.flac");
        assert_non_null(row);
        row_free(row);
        assert_int_equal(count_files(f), 6);

        /* Non-audio and unknown paths cost nothing; bad paths are refused. */
        const char *noise[] = { "cover.jpg", "nowhere/at/all" };
        s = scan_paths_ok(f, noise, 2);
        assert_int_equal(s.seen + s.removed + s.read, 0);
        const char *bad[] = { "../etc" };
        assert_int_equal(scan_origin_paths(f->catalog, f->origin, bad, 1, 4, NULL, &s), -EINVAL);

        /* "" is the whole origin: the untouched removal is found now. */
        const char *all[] = { "" };
        s = scan_paths_ok(f, all, 1);
        assert_int_equal(s.removed, 1);
        assert_int_equal(count_files(f), 5);

        /* An origin whose root is gone loses nothing, whatever the events said. */
        track_path(rel, sizeof rel, 5);
        snprintf(path, sizeof path, "rm -rf '%s'", f->music);
        assert_int_equal(system(path), 0);
        const char *lost[] = { "Artist 2", rel };
        assert_true(scan_origin_paths(f->catalog, f->origin, lost, 2, 4, NULL, &s) < 0);
        assert_int_equal(count_files(f), 5);
}

/* 5.6: a change is a different size or mtime, never a newer one: a clock that jumped ahead and
 * back neither hides a change nor makes the unchanged look changed. */
static void test_clock_jumps(void **state) {
        Fixture *f = *state;
        char rel[128];
        ScanStats s;

        populate(f, 0, 6);
        s = scan_ok(f, 4);
        assert_int_equal(s.added, 6);

        /* A file written while the clock ran in 2100. */
        track_path(rel, sizeof rel, 1);
        set_mtime(f, rel, 4102444800);
        s = scan_ok(f, 4);
        assert_int_equal(s.changed, 1);
        assert_int_equal(s.read, 1);
        /* Nothing else looks changed, and the future mtime is stable. */
        s = scan_ok(f, 4);
        assert_int_equal(s.read, 0);
        assert_int_equal(s.unchanged, 6);

        /* Back to a clock in 1971: older than the row, still a change. */
        set_mtime(f, rel, 31536000);
        const char *paths[] = { rel };
        s = scan_paths_ok(f, paths, 1);
        assert_int_equal(s.changed, 1);
        assert_int_equal(s.read, 1);
        s = scan_paths_ok(f, paths, 1);
        assert_int_equal(s.read, 0);
        assert_int_equal(s.unchanged, 1);

        /* New bytes of the same size, with the mtime set back below the row's: found. */
        track_path(rel, sizeof rel, 2);         /* a FLAC */
        char *other = malloc(samples.flac_size);
        assert_non_null(other);
        memcpy(other, samples.flac, samples.flac_size);
        other[samples.flac_size - 1] ^= 0x55;
        write_at(f, rel, other, samples.flac_size);
        free(other);
        set_mtime(f, rel, 1000);
        s = scan_ok(f, 4);
        assert_int_equal(s.changed, 1);
        assert_int_equal(s.unchanged, 5);
}

#if MUSICFS_FAILPOINTS
/* n files, each with a title of its own ("Title 0007", as long as the samples' "Scan Title", so the
 * tag block keeps its size): a read whose result landed in another file's row shows. */
static void populate_titled(const Fixture *f, unsigned n) {
        char rel[128], title[16];

        for (unsigned i = 0; i < n; i++) {
                const char *sample = i % 2 ? samples.mp3 : samples.flac;
                size_t size = i % 2 ? samples.mp3_size : samples.flac_size;
                _cleanup_free_ char *buf = malloc(size);
                assert_non_null(buf);
                memcpy(buf, sample, size);
                char *at = memmem(buf, size, "Scan Title", 10);
                assert_non_null(at);
                snprintf(title, sizeof title, "Title %04u", i);
                memcpy(at, title, 10);
                track_path(rel, sizeof rel, i);
                write_at(f, rel, buf, size);
        }
}

static uint32_t fired(const char *name) {
        uint32_t count = 0;
        assert_int_equal(failpoint_fired(name, &count), 0);
        return count;
}

#endif

/* Tag reads overlap: with every origin read taking 20 ms (a remote origin's round trip, made with
 * sleep(20), which blocks as a network wait does; delay() would spin a CPU and measure the cores),
 * a scan with its default readers takes well under the serial sum of those 20 ms, and writes the
 * catalog a serial scan writes, each file with its own tags. */
static void test_concurrent_reads(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        ScanHooks serial = { .max_reads = 1 };
        char db[128], rel[128], title[16];
        Catalog *other = NULL;
        int64_t id = f->origin->id, other_id = 0;
        ScanStats s;

        populate_titled(f, 40);

        assert_int_equal(failpoint_arm("origin-read", "sleep(20)", NULL), 0);
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        assert_int_equal(scan_origin(f->catalog, f->origin, 0, &serial, &s), 0);
        uint64_t serial_usec = now_usec(CLOCK_MONOTONIC) - t0;
        uint32_t reads = fired("origin-read");
        assert_stats(s, 40, 40, 0, 0, 0, 0, 0);
        assert_int_equal(s.read, 40);
        /* At least one origin read per file, each 20 ms: the serial scan paid every one. */
        assert_true(reads >= 40);
        assert_true(serial_usec >= (uint64_t) reads * 20000u);

        snprintf(db, sizeof db, "%s/concurrent.db", f->dir);
        assert_int_equal(catalog_open(db, &other), 0);
        assert_int_equal(catalog_origin_ensure(other, "music", f->music, 0, &other_id), 0);
        f->origin->id = other_id;
        assert_int_equal(failpoint_arm("origin-read", "sleep(20)", NULL), 0);
        t0 = now_usec(CLOCK_MONOTONIC);
        assert_int_equal(scan_origin(other, f->origin, 0, NULL, &s), 0);
        uint64_t concurrent_usec = now_usec(CLOCK_MONOTONIC) - t0;
        f->origin->id = id;
        failpoint_disarm_all();
        assert_stats(s, 40, 40, 0, 0, 0, 0, 0);
        assert_int_equal(s.read, 40);
        print_message("40 files, %u reads of 20 ms: serial %.0f ms, concurrent %.0f ms\n", reads,
                      serial_usec / 1000.0, concurrent_usec / 1000.0);
        assert_true(concurrent_usec < serial_usec / 2);

        assert_same_catalog(f->catalog, id, other, other_id);
        for (unsigned i = 0; i < 40; i++) {
                track_path(rel, sizeof rel, i);
                snprintf(title, sizeof title, "Title %04u", i);
                CatalogFile *row = find_row(other, other_id, rel);
                assert_non_null(row);
                assert_true(row->parsed);
                assert_string_equal(row->tags.title, title);
                assert_string_equal(row->tags.artist, "Scan Artist");
                row_free(row);
        }
        catalog_close(other);
#else
        skip();
#endif
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_file_failpoint, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batches, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_failpoint, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_origin_gone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unreadable_directory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_incomplete_walk_unlocated, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
                cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
                cmocka_unit_test_setup_teardown(test_targeted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clock_jumps, setup, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_reads, setup, teardown),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
