/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The catalog against real SQLite files in temporary directories. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"

typedef struct Fixture {
        char dir[64];
        char db[128];
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-catalog-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->db, sizeof f->db, "%s/catalog.db", f->dir);
        *state = f;
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int teardown(void **state) {
        Fixture *f = *state;
        failpoint_disarm_all();
        nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(f);
        return 0;
}

static Catalog *open_ok(const char *path) {
        Catalog *c = NULL;
        assert_int_equal(catalog_open(path, &c), 0);
        assert_non_null(c);
        return c;
}

static int64_t origin(Catalog *c, const char *name, unsigned priority) {
        int64_t id = 0;
        assert_int_equal(catalog_origin_ensure(c, name, "file:///srv/music", priority, &id), 0);
        assert_true(id > 0);
        return id;
}

/* A file with every field set from the path, so a round trip checks them all. */
static CatalogFile make_file(int64_t origin_id, const char *rel_path, uint64_t size) {
        return (CatalogFile) {
                .origin_id = origin_id,
                .rel_path = (char *) rel_path,
                .size = size,
                .mtime_ns = 1700000000123456789LL + (int64_t) size,
                .format = (char *) "flac",
                .parsed = true,
                .tags = {
                        .title = (char *) rel_path,
                        .artist = (char *) "Artist",
                        .album = (char *) "Album",
                        .albumartist = NULL,
                        .genre = (char *) "Jazz",
                        .composer = NULL,
                        .year = 1959,
                        .track = (int) (size % 100),
                        .disc = 1,
                        .disc_total = 2,
                        .compilation = size % 2 == 0,
                        .duration_ms = 1000 * (int64_t) size,
                },
        };
}

static void upsert_all(Catalog *c, const CatalogFile *files, size_t n, int64_t generation) {
        CatalogBatch *b = NULL;
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(catalog_batch_upsert(b, &files[i], generation), 0);
        assert_int_equal(catalog_batch_commit(b), 0);
}

static void assert_same_file(const CatalogFile *got, const CatalogFile *want) {
        assert_int_equal(got->origin_id, want->origin_id);
        assert_string_equal(got->rel_path, want->rel_path);
        assert_int_equal(got->size, want->size);
        assert_int_equal(got->mtime_ns, want->mtime_ns);
        assert_string_equal(got->format, want->format);
        assert_int_equal(got->parsed, want->parsed);
        assert_string_equal(got->tags.title, want->tags.title);
        assert_string_equal(got->tags.artist, want->tags.artist);
        assert_string_equal(got->tags.album, want->tags.album);
        assert_null(got->tags.albumartist);
        assert_string_equal(got->tags.genre, want->tags.genre);
        assert_null(got->tags.composer);
        assert_int_equal(got->tags.year, want->tags.year);
        assert_int_equal(got->tags.track, want->tags.track);
        assert_int_equal(got->tags.disc, want->tags.disc);
        assert_int_equal(got->tags.disc_total, want->tags.disc_total);
        assert_int_equal(got->tags.compilation, want->tags.compilation);
        assert_int_equal(got->tags.duration_ms, want->tags.duration_ms);
        assert_true(got->id > 0);
}

/* Direct SQLite access, to inspect or tamper with the file behind the catalog's back. */
static int raw_int(const char *db, const char *sql) {
        sqlite3 *h = NULL;
        sqlite3_stmt *s = NULL;
        int v;
        assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        v = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        sqlite3_close(h);
        return v;
}

static char *raw_text(const char *db, const char *sql) {
        sqlite3 *h = NULL;
        sqlite3_stmt *s = NULL;
        char *v;
        assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        v = strdup((const char *) sqlite3_column_text(s, 0));
        assert_non_null(v);
        sqlite3_finalize(s);
        sqlite3_close(h);
        return v;
}

static void raw_exec(const char *db, const char *sql) {
        sqlite3 *h = NULL;
        assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(h);
}

static size_t count_corrupt_files(const char *dir, const char *prefix) {
        DIR *d = opendir(dir);
        struct dirent *de;
        size_t n = 0;
        assert_non_null(d);
        while ((de = readdir(d)))
                if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
                        n++;
        closedir(d);
        return n;
}

static void test_create_migrate_reopen(void **state) {
        Fixture *f = *state;
        CatalogFile files[2], *loaded = NULL;
        size_t n = 0;
        uint64_t count = 1;
        int64_t id, id2;

        Catalog *c = open_ok(f->db);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 0);
        assert_int_equal(catalog_quick_check(c), 0);
        id = origin(c, "local", 0);
        files[0] = make_file(id, "a/one.flac", 11);
        files[1] = make_file(id, "b/two.flac", 22);
        upsert_all(c, files, 2, 1);
        assert_int_equal(catalog_checkpoint(c), 0);
        catalog_close(c);

        /* The schema is migrated (v2 added the search index; later ones may follow) and the file
         * stays in WAL mode. */
        assert_true(raw_int(f->db, "PRAGMA user_version") >= 2);
        char *mode = raw_text(f->db, "PRAGMA journal_mode");
        assert_string_equal(mode, "wal");
        free(mode);

        /* Reopening migrates nothing and keeps the rows. */
        c = open_ok(f->db);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, 2);
        assert_same_file(&loaded[0], &files[0]);
        assert_same_file(&loaded[1], &files[1]);
        catalog_files_free(loaded, n);

        /* ensure: same name, same id, new url/priority. */
        assert_int_equal(catalog_origin_ensure(c, "local", "file:///elsewhere", 7, &id2), 0);
        assert_int_equal(id2, id);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(loaded[0].origin_priority, 7);
        catalog_files_free(loaded, n);
        int version = raw_int(f->db, "PRAGMA user_version");
        catalog_close(c);
        assert_int_equal(raw_int(f->db, "PRAGMA user_version"), version);
        char *url = raw_text(f->db, "SELECT url FROM origins WHERE name = 'local'");
        assert_string_equal(url, "file:///elsewhere");
        free(url);
}

static void test_future_version_refused(void **state) {
        Fixture *f = *state;
        Catalog *c = open_ok(f->db);
        bool rebuilt = true;

        catalog_close(c);
        raw_exec(f->db, "PRAGMA user_version = 99");

        c = NULL;
        assert_int_equal(catalog_open(f->db, &c), -EPROTO);
        assert_null(c);
        /* Not corrupt, just newer: never moved aside, never downgraded. */
        assert_int_equal(catalog_open_or_rebuild(f->db, &c, &rebuilt), -EPROTO);
        assert_null(c);
        assert_int_equal(count_corrupt_files(f->dir, "catalog.db.corrupt-"), 0);
        assert_int_equal(raw_int(f->db, "PRAGMA user_version"), 99);
}

static void test_load_priority_order(void **state) {
        Fixture *f = *state;
        CatalogFile *loaded = NULL;
        size_t n = 0;
        Catalog *c = open_ok(f->db);

        int64_t nas = origin(c, "nas", 1);
        int64_t local = origin(c, "local", 0);
        int64_t backup = origin(c, "backup", 0);
        /* Inserted in no particular order; "B" sorts before "a" bytewise. */
        CatalogFile files[] = {
                make_file(nas, "z.flac", 1), make_file(local, "b.flac", 2), make_file(backup, "a.flac", 3),
                make_file(nas, "a.flac", 4), make_file(local, "B.flac", 5), make_file(local, "a/x.flac", 6),
        };
        upsert_all(c, files, ELEMENTSOF(files), 1);

        static const struct {
                const char *origin, *path;
                unsigned priority;
        } want[] = {
                { "backup", "a.flac", 0 }, { "local", "B.flac", 0 }, { "local", "a/x.flac", 0 },
                { "local", "b.flac", 0 },  { "nas", "a.flac", 1 },   { "nas", "z.flac", 1 },
        };
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, ELEMENTSOF(want));
        for (size_t i = 0; i < n; i++) {
                int64_t want_origin = streq_ptr(want[i].origin, "nas") ? nas :
                                      streq_ptr(want[i].origin, "local") ? local : backup;
                assert_int_equal(loaded[i].origin_id, want_origin);
                assert_string_equal(loaded[i].rel_path, want[i].path);
                assert_int_equal(loaded[i].origin_priority, want[i].priority);
        }
        catalog_files_free(loaded, n);

        /* One origin's files, by rel_path. */
        assert_int_equal(catalog_load_origin_files(c, local, &loaded, &n), 0);
        assert_int_equal(n, 3);
        assert_string_equal(loaded[0].rel_path, "B.flac");
        assert_string_equal(loaded[1].rel_path, "a/x.flac");
        assert_string_equal(loaded[2].rel_path, "b.flac");
        assert_same_file(&loaded[2], &files[1]);
        catalog_files_free(loaded, n);
        catalog_close(c);
}

typedef struct Walk {
        Catalog *catalog;
        const CatalogFile *want;
        size_t n_want, seen, stop_at;
        int inner;              /* what a catalog call from inside the walk got */
} Walk;

static int walk_row(const CatalogFile *f, void *userdata) {
        Walk *w = userdata;
        uint64_t count = 0;

        assert_true(w->seen < w->n_want);
        assert_int_equal(f->id, w->want[w->seen].id);
        assert_int_equal(f->origin_priority, w->want[w->seen].origin_priority);
        assert_same_file(f, &w->want[w->seen]);
        if (w->seen == 0)
                w->inner = catalog_count_files(w->catalog, &count);
        if (++w->seen == w->stop_at)
                return -ECANCELED;
        return 0;
}

/* catalog_foreach_file() hands over the rows of catalog_load_files(), in its order, one at a time. */
static void test_foreach_file(void **state) {
        Fixture *f = *state;
        CatalogFile *loaded = NULL;
        size_t n = 0;
        Catalog *c = open_ok(f->db);

        /* an empty catalog walks nothing */
        Walk w = { .catalog = c };
        assert_int_equal(catalog_foreach_file(c, walk_row, &w), 0);
        assert_int_equal(w.seen, 0);

        int64_t nas = origin(c, "nas", 1), local = origin(c, "local", 0), backup = origin(c, "backup", 0);
        CatalogFile files[] = {
                make_file(nas, "z.flac", 1), make_file(local, "b.flac", 2), make_file(backup, "a.flac", 3),
                make_file(nas, "a.flac", 4), make_file(local, "B.flac", 5), make_file(local, "a/x.flac", 6),
        };
        upsert_all(c, files, ELEMENTSOF(files), 1);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, ELEMENTSOF(files));

        w = (Walk) { .catalog = c, .want = loaded, .n_want = n };
        assert_int_equal(catalog_foreach_file(c, walk_row, &w), 0);
        assert_int_equal(w.seen, n);
        /* the callback runs with the lock held: the catalog refuses a call from it */
        assert_int_equal(w.inner, -EDEADLK);

        /* a negative return stops the walk and is handed back; the catalog is usable afterwards */
        w = (Walk) { .catalog = c, .want = loaded, .n_want = n, .stop_at = 2 };
        assert_int_equal(catalog_foreach_file(c, walk_row, &w), -ECANCELED);
        assert_int_equal(w.seen, 2);
        w = (Walk) { .catalog = c, .want = loaded, .n_want = n };
        assert_int_equal(catalog_foreach_file(c, walk_row, &w), 0);
        assert_int_equal(w.seen, n);
        assert_int_equal(catalog_foreach_file(NULL, walk_row, &w), -EINVAL);
        assert_int_equal(catalog_foreach_file(c, NULL, &w), -EINVAL);

        catalog_files_free(loaded, n);
        catalog_close(c);
}

static void test_scan_touch_finish(void **state) {
        Fixture *f = *state;
        CatalogFile *loaded = NULL;
        CatalogBatch *b = NULL;
        size_t n = 0;
        uint64_t removed = 99;
        int64_t g1, g2, g3, changed_id = 0;
        Catalog *c = open_ok(f->db);

        int64_t o = origin(c, "local", 0);
        int64_t other = origin(c, "other", 1);
        assert_int_equal(catalog_scan_begin(c, o, &g1), 0);
        CatalogFile files[] = {
                make_file(o, "keep1.flac", 1), make_file(o, "keep2.flac", 2),
                make_file(o, "change.flac", 3), make_file(o, "gone.flac", 4),
                make_file(other, "elsewhere.flac", 5),
        };
        upsert_all(c, files, ELEMENTSOF(files), g1);
        assert_int_equal(catalog_load_origin_files(c, o, &loaded, &n), 0);
        for (size_t i = 0; i < n; i++)
                if (streq_ptr(loaded[i].rel_path, "change.flac"))
                        changed_id = loaded[i].id;
        catalog_files_free(loaded, n);
        assert_true(changed_id > 0);

        /* Second scan: two unchanged, one changed, one vanished. */
        assert_int_equal(catalog_scan_begin(c, o, &g2), 0);
        assert_true(g2 > g1);
        CatalogFile changed = make_file(o, "change.flac", 333);
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_touch(b, o, "keep1.flac", g2), 0);
        assert_int_equal(catalog_batch_touch(b, o, "keep2.flac", g2), 0);
        assert_int_equal(catalog_batch_touch(b, o, "never-seen.flac", g2), -ENOENT);
        assert_int_equal(catalog_batch_upsert(b, &changed, g2), 0);
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_scan_finish(c, o, g2, &removed), 0);
        assert_int_equal(removed, 1);

        assert_int_equal(catalog_load_origin_files(c, o, &loaded, &n), 0);
        assert_int_equal(n, 3);
        assert_string_equal(loaded[0].rel_path, "change.flac");
        assert_int_equal(loaded[0].id, changed_id);   /* an update keeps the row id */
        assert_int_equal(loaded[0].size, 333);
        assert_string_equal(loaded[1].rel_path, "keep1.flac");
        assert_string_equal(loaded[2].rel_path, "keep2.flac");
        catalog_files_free(loaded, n);

        /* The other origin's rows are older but not in this scan. */
        assert_int_equal(catalog_load_origin_files(c, other, &loaded, &n), 0);
        assert_int_equal(n, 1);
        catalog_files_free(loaded, n);

        /* Generations keep rising across reopen and after every row is gone. */
        assert_int_equal(catalog_scan_finish(c, o, g2 + 1000, &removed), 0);
        assert_int_equal(removed, 3);
        catalog_close(c);
        c = open_ok(f->db);
        assert_int_equal(catalog_scan_begin(c, o, &g3), 0);
        assert_true(g3 > g2);
        assert_int_equal(catalog_scan_begin(c, 12345, &g3), -ENOENT);
        catalog_close(c);
}

static void test_origin_remove_cascades(void **state) {
        Fixture *f = *state;
        CatalogFile *loaded = NULL;
        size_t n = 0;
        uint64_t count = 0;
        Catalog *c = open_ok(f->db);

        int64_t a = origin(c, "a", 0), b = origin(c, "b", 1);
        CatalogFile files[] = { make_file(a, "1.flac", 1), make_file(a, "2.flac", 2), make_file(b, "3.flac", 3) };
        upsert_all(c, files, ELEMENTSOF(files), 1);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 3);

        assert_int_equal(catalog_origin_remove(c, "a"), 0);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 1);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(loaded[0].origin_id, b);
        catalog_files_free(loaded, n);
        assert_int_equal(catalog_origin_remove(c, "a"), -ENOENT);
        catalog_close(c);
}

typedef struct NodeSeen {
        size_t n;
        int64_t root, deep;
} NodeSeen;

static int node_cb(const char *path, int64_t id, void *userdata) {
        NodeSeen *seen = userdata;
        seen->n++;
        if (streq_ptr(path, ""))
                seen->root = id;
        if (streq_ptr(path, "A/B (1999)/01 - c.flac"))
                seen->deep = id;
        return 0;
}

static int node_stop_cb(const char *path, int64_t id, void *userdata) {
        return -ECANCELED;
}

static void test_nodes_stable(void **state) {
        Fixture *f = *state;
        const char *first[] = { "", "A", "A/B (1999)", "A/B (1999)/01 - c.flac", "A" };
        const char *second[] = { "Z", "A/B (1999)/01 - c.flac", "", "Bj\xf6rk\xff" };
        int64_t ids1[ELEMENTSOF(first)], ids2[ELEMENTSOF(second)], ids3[ELEMENTSOF(second)];
        NodeSeen seen = {};
        Catalog *c = open_ok(f->db);

        assert_int_equal(catalog_nodes_assign(c, first, ELEMENTSOF(first), ids1), 0);
        assert_int_equal(ids1[0], 1);
        assert_int_equal(ids1[4], ids1[1]);     /* a repeated path in one call */
        assert_true(ids1[1] != ids1[2] && ids1[2] != ids1[3] && ids1[1] > 1 && ids1[2] > 1 && ids1[3] > 1);

        assert_int_equal(catalog_nodes_assign(c, second, ELEMENTSOF(second), ids2), 0);
        assert_int_equal(ids2[1], ids1[3]);
        assert_int_equal(ids2[2], 1);
        assert_true(ids2[0] > ids1[3] && ids2[3] > ids2[0]);
        catalog_close(c);

        c = open_ok(f->db);
        assert_int_equal(catalog_nodes_assign(c, second, ELEMENTSOF(second), ids3), 0);
        assert_memory_equal(ids2, ids3, sizeof ids2);
        assert_int_equal(catalog_nodes_foreach(c, node_cb, &seen), 0);
        assert_int_equal(seen.n, 6);
        assert_int_equal(seen.root, 1);
        assert_int_equal(seen.deep, ids1[3]);
        assert_int_equal(catalog_nodes_foreach(c, node_stop_cb, NULL), -ECANCELED);
        assert_int_equal(catalog_nodes_assign(c, NULL, 0, NULL), 0);
        catalog_close(c);
}

static void test_non_utf8_and_huge_strings(void **state) {
        Fixture *f = *state;
        static const char weird_path[] = "Bj\xf6rk/\xff\xfe\x80 broken \xc3(/track\x01.flac";
        static const char weird_artist[] = "Sigur R\xf3s \xed\xa0\x80";       /* Latin-1 and a UTF-16 surrogate */
        const size_t huge = 1024 * 1024 + 7;
        CatalogFile *loaded = NULL;
        size_t n = 0;
        Catalog *c = open_ok(f->db);

        char *title = malloc(huge + 1);
        assert_non_null(title);
        for (size_t i = 0; i < huge; i++)
                title[i] = (char) (1 + i % 255);        /* every byte value but NUL */
        title[huge] = 0;

        int64_t o = origin(c, "local", 0);
        CatalogFile file = make_file(o, weird_path, 42);
        file.tags.artist = (char *) weird_artist;
        file.tags.title = title;
        upsert_all(c, &file, 1, 1);
        catalog_close(c);

        c = open_ok(f->db);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(strlen(loaded[0].rel_path), sizeof weird_path - 1);
        assert_memory_equal(loaded[0].rel_path, weird_path, sizeof weird_path);
        assert_memory_equal(loaded[0].tags.artist, weird_artist, sizeof weird_artist);
        assert_int_equal(strlen(loaded[0].tags.title), huge);
        assert_memory_equal(loaded[0].tags.title, title, huge + 1);
        catalog_files_free(loaded, n);

        /* A touch finds the non-UTF-8 row by its exact bytes. */
        CatalogBatch *b = NULL;
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_touch(b, o, weird_path, 2), 0);
        assert_int_equal(catalog_batch_commit(b), 0);
        catalog_close(c);
        free(title);
}

static void populate(const char *db, size_t n_files) {
        Catalog *c = open_ok(db);
        CatalogBatch *b = NULL;
        char path[64];
        int64_t o = origin(c, "local", 0);

        assert_int_equal(catalog_batch_begin(c, &b), 0);
        for (size_t i = 0; i < n_files; i++) {
                snprintf(path, sizeof path, "Artist %zu/Album %zu/%04zu - Some fairly long title.flac",
                         i / 100, i / 10, i);
                CatalogFile file = make_file(o, path, i + 1);
                assert_int_equal(catalog_batch_upsert(b, &file, 1), 0);
        }
        assert_int_equal(catalog_batch_commit(b), 0);
        catalog_close(c);
}

static void overwrite(const char *path, off_t offset, size_t len, unsigned char byte, bool pattern) {
        unsigned char *buf = malloc(len);
        assert_non_null(buf);
        for (size_t i = 0; i < len; i++)
                buf[i] = pattern ? (unsigned char) (i * 131 + 17) : byte;
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, buf, len, offset), (ssize_t) len);
        assert_int_equal(fsync(fd), 0);
        close(fd);
        free(buf);
}

static void test_corrupt_header(void **state) {
        Fixture *f = *state;
        Catalog *c = NULL;

        populate(f->db, 100);
        overwrite(f->db, 0, 100, 0xff, false);
        assert_int_equal(catalog_open(f->db, &c), -EBADMSG);
        assert_null(c);

        /* Plain garbage that was never a database. */
        char other[160];
        snprintf(other, sizeof other, "%s/notadb", f->dir);
        int fd = open(other, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "this is not an SQLite database, just some text..........\n", 58), 58);
        for (int i = 0; i < 200; i++)
                assert_int_equal(write(fd, "garbage garbage garbage garbage\n", 32), 32);
        close(fd);
        assert_int_equal(catalog_open(other, &c), -EBADMSG);
        assert_null(c);
}

static void test_corrupt_middle_pages(void **state) {
        Fixture *f = *state;
        Catalog *c = NULL;
        struct stat st;

        populate(f->db, 3000);
        assert_int_equal(stat(f->db, &st), 0);
        int page_size = raw_int(f->db, "PRAGMA page_size");
        off_t pages = st.st_size / page_size;
        assert_true(pages > 40);

        /* The header is intact: only quick_check can tell. */
        overwrite(f->db, (pages / 2) * page_size, 8 * (size_t) page_size, 0, true);
        assert_int_equal(catalog_open(f->db, &c), -EBADMSG);
        assert_null(c);
}

/* The page size from the database header (bytes 16-17, big-endian), read without opening it with
 * SQLite, which would touch the file. */
static int header_page_size(const char *db) {
        unsigned char h[18];
        int fd = open(db, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(pread(fd, h, sizeof h, 0), (ssize_t) sizeof h);
        close(fd);
        int v = (h[16] << 8) | h[17];
        return v == 1 ? 65536 : v;
}

/* A clean close leaves a marker that lets the next open skip quick_check, but only for the very file
 * it closed: any write since (new mtime) or a leftover -wal means a full check again. The marker is
 * consumed by the open, so a crash after it always means a check. */
static void test_clean_close_marker(void **state) {
        Fixture *f = *state;
        Catalog *c = NULL;
        char marker[200];
        struct stat st;

        snprintf(marker, sizeof marker, "%s.clean", f->db);
        populate(f->db, 3000);
        assert_int_equal(access(marker, F_OK), 0);

        /* Corrupt the middle but put size and mtime back: the marker vouches, the open is quick,
         * and the on-demand check still finds it. */
        int page_size = header_page_size(f->db);
        assert_int_equal(stat(f->db, &st), 0);
        overwrite(f->db, (st.st_size / page_size / 2) * page_size, 8 * (size_t) page_size, 0, true);
        struct timespec times[2] = { st.st_atim, st.st_mtim };
        assert_int_equal(utimensat(AT_FDCWD, f->db, times, 0), 0);
        assert_int_equal(catalog_open(f->db, &c), 0);
        assert_int_equal(access(marker, F_OK), -1);
        assert_int_equal(catalog_quick_check(c), -EBADMSG);
        catalog_close(c);
        c = NULL;
        /* A catalog known to be corrupt is never vouched for. */
        assert_int_equal(access(marker, F_OK), -1);
        assert_int_equal(catalog_open(f->db, &c), -EBADMSG);

        /* A file written after the clean close (new mtime) is checked. */
        assert_int_equal(unlink(f->db), 0);
        populate(f->db, 3000);
        assert_int_equal(access(marker, F_OK), 0);
        overwrite(f->db, (st.st_size / page_size / 2) * page_size, 8 * (size_t) page_size, 0, true);
        assert_int_equal(catalog_open(f->db, &c), -EBADMSG);
        assert_null(c);
}

static void test_open_or_rebuild(void **state) {
        Fixture *f = *state;
        Catalog *c = NULL;
        bool rebuilt = true;
        uint64_t count = 1;
        int64_t id = 0;

        /* A healthy catalog is kept. */
        populate(f->db, 10);
        assert_int_equal(catalog_open_or_rebuild(f->db, &c, &rebuilt), 0);
        assert_false(rebuilt);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 10);
        catalog_close(c);

        /* A corrupt one is moved aside, a stale -wal with it, and an empty working catalog replaces it. */
        overwrite(f->db, 0, 100, 0xff, false);
        char wal[160];
        snprintf(wal, sizeof wal, "%s-wal", f->db);
        int fd = open(wal, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);

        c = NULL;
        assert_int_equal(catalog_open_or_rebuild(f->db, &c, &rebuilt), 0);
        assert_non_null(c);
        assert_true(rebuilt);
        assert_int_equal(count_corrupt_files(f->dir, "catalog.db.corrupt-"), 2);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 0);
        assert_int_equal(catalog_quick_check(c), 0);
        assert_int_equal(catalog_origin_ensure(c, "local", "file:///m", 0, &id), 0);
        CatalogFile file = make_file(id, "x.flac", 1);
        upsert_all(c, &file, 1, 1);
        int64_t root = 0;
        const char *paths[] = { "" };
        assert_int_equal(catalog_nodes_assign(c, paths, 1, &root), 0);
        assert_int_equal(root, 1);
        catalog_close(c);

        /* Rebuilding twice in the same second never overwrites the first corpse. */
        overwrite(f->db, 0, 100, 0xff, false);
        assert_int_equal(catalog_open_or_rebuild(f->db, &c, &rebuilt), 0);
        assert_true(rebuilt);
        catalog_close(c);
        assert_true(count_corrupt_files(f->dir, "catalog.db.corrupt-") >= 3);
}

static void test_failpoints(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        CatalogFile *loaded = NULL;
        CatalogBatch *b = NULL;
        Catalog *c = NULL;
        uint64_t count = 0;
        size_t n = 0;

        assert_int_equal(failpoint_arm("catalog-open", "1*return(EACCES)", NULL), 0);
        assert_int_equal(catalog_open(f->db, &c), -EACCES);
        assert_null(c);
        c = open_ok(f->db);     /* the count is used up */

        int64_t o = origin(c, "local", 0);
        CatalogFile first = make_file(o, "first.flac", 1), second = make_file(o, "second.flac", 2);

        assert_int_equal(failpoint_arm("catalog-commit", "return(EIO)", NULL), 0);
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_upsert(b, &first, 1), 0);
        assert_int_equal(catalog_batch_commit(b), -EIO);
        assert_int_equal(failpoint_disarm("catalog-commit"), 0);

        /* Rolled back, unlocked, and every other operation works. */
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 0);
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_upsert(b, &second, 1), 0);
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(loaded[0].rel_path, "second.flac");
        catalog_files_free(loaded, n);
        assert_int_equal(catalog_quick_check(c), 0);
        catalog_close(c);

        /* A failpoint EBADMSG at open stands for corruption: open_or_rebuild starts afresh. */
        bool rebuilt = false;
        assert_int_equal(failpoint_arm("catalog-open", "1*return(EBADMSG)", NULL), 0);
        assert_int_equal(catalog_open_or_rebuild(f->db, &c, &rebuilt), 0);
        assert_true(rebuilt);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 0);
        catalog_close(c);
#else
        skip();
#endif
}

static void test_batch_20k(void **state) {
        Fixture *f = *state;
        const size_t n_files = 20000;
        CatalogFile *loaded = NULL;
        CatalogBatch *b = NULL;
        uint64_t count = 0, removed = 1;
        size_t n = 0;
        char path[64];
        int64_t g1, g2;
        Catalog *c = open_ok(f->db);
        int64_t o = origin(c, "local", 0);

        assert_int_equal(catalog_scan_begin(c, o, &g1), 0);
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        for (size_t i = 0; i < n_files; i++) {
                /* Descending, so the load has to sort. */
                snprintf(path, sizeof path, "Artist %05zu/track.flac", n_files - i);
                CatalogFile file = make_file(o, path, i + 1);
                assert_int_equal(catalog_batch_upsert(b, &file, g1), 0);
        }
        assert_int_equal(catalog_batch_commit(b), 0);
        catalog_close(c);

        c = open_ok(f->db);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, n_files);
        assert_int_equal(catalog_load_files(c, &loaded, &n), 0);
        assert_int_equal(n, n_files);
        for (size_t i = 1; i < n; i++)
                assert_true(strcmp(loaded[i - 1].rel_path, loaded[i].rel_path) < 0);
        assert_string_equal(loaded[0].rel_path, "Artist 00001/track.flac");
        assert_int_equal(loaded[0].size, n_files);

        /* A rescan that sees everything unchanged removes nothing. */
        assert_int_equal(catalog_scan_begin(c, o, &g2), 0);
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(catalog_batch_touch(b, o, loaded[i].rel_path, g2), 0);
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_scan_finish(c, o, g2, &removed), 0);
        assert_int_equal(removed, 0);
        catalog_files_free(loaded, n);
        catalog_close(c);
}

typedef struct Writer {
        Catalog *catalog;
        int64_t origin_id;
        int result;
        atomic_bool done;
} Writer;

#define WRITER_BATCHES 20
#define WRITER_BATCH_SIZE 50

static void *writer_thread(void *userdata) {
        Writer *w = userdata;
        char path[64];

        for (int i = 0; i < WRITER_BATCHES && w->result == 0; i++) {
                CatalogBatch *b = NULL;
                w->result = catalog_batch_begin(w->catalog, &b);
                if (w->result < 0)
                        break;
                for (int j = 0; j < WRITER_BATCH_SIZE && w->result == 0; j++) {
                        snprintf(path, sizeof path, "%02d/%02d.flac", i, j);
                        CatalogFile file = make_file(w->origin_id, path, 1);
                        w->result = catalog_batch_upsert(b, &file, 1);
                }
                if (w->result == 0)
                        w->result = catalog_batch_commit(b);
                else
                        catalog_batch_abort(b);
        }
        atomic_store(&w->done, true);
        return NULL;
}

/* Another thread's reads see whole batches or nothing of them, and never fail for the concurrency. */
static void test_threads_see_whole_batches(void **state) {
        Fixture *f = *state;
        Catalog *c = open_ok(f->db);
        Writer w = { .catalog = c, .origin_id = origin(c, "local", 0) };
        pthread_t t;
        uint64_t count = 0;

        assert_int_equal(pthread_create(&t, NULL, writer_thread, &w), 0);
        while (!atomic_load(&w.done)) {
                assert_int_equal(catalog_count_files(c, &count), 0);
                assert_int_equal(count % WRITER_BATCH_SIZE, 0);
        }
        assert_int_equal(pthread_join(t, NULL), 0);
        assert_int_equal(w.result, 0);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, WRITER_BATCHES * WRITER_BATCH_SIZE);
        catalog_close(c);
}

/* The thread that holds a batch gets an error, not a deadlock, when it calls in again. */
static void test_reentry_refused(void **state) {
        Fixture *f = *state;
        Catalog *c = open_ok(f->db);
        CatalogBatch *b = NULL;
        uint64_t count = 1;
        int64_t o = origin(c, "local", 0);
        CatalogFile file = make_file(o, "x.flac", 1);

        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_upsert(b, &file, 1), 0);
        assert_int_equal(catalog_count_files(c, &count), -EDEADLK);
        catalog_batch_abort(b);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 0);

        /* Closing with a batch still open rolls it back. */
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_upsert(b, &file, 1), 0);
        catalog_close(c);
        c = open_ok(f->db);
        assert_int_equal(catalog_count_files(c, &count), 0);
        assert_int_equal(count, 0);
        catalog_close(c);
}

static void test_bad_input(void **state) {
        Fixture *f = *state;
        Catalog *c = NULL;
        char missing[160];

        snprintf(missing, sizeof missing, "%s/no/such/dir/catalog.db", f->dir);
        assert_int_equal(catalog_open(missing, &c), -ENOENT);
        assert_null(c);
        assert_int_equal(catalog_open(f->dir, &c), -EACCES);       /* a directory */
        assert_null(c);
        assert_int_equal(catalog_open(NULL, &c), -EINVAL);

        c = open_ok(f->db);
        CatalogBatch *b = NULL;
        CatalogFile nameless = {};
        assert_int_equal(catalog_origin_ensure(c, NULL, "u", 0, NULL), -EINVAL);
        assert_int_equal(catalog_batch_begin(c, &b), 0);
        assert_int_equal(catalog_batch_upsert(b, &nameless, 1), -EINVAL);
        /* A file of an origin that does not exist breaks the foreign key, not the batch. */
        CatalogFile orphan = make_file(9999, "orphan.flac", 1);
        assert_int_equal(catalog_batch_upsert(b, &orphan, 1), -EINVAL);
        assert_int_equal(catalog_batch_commit(b), 0);
        catalog_batch_abort(NULL);
        catalog_close(NULL);
        catalog_files_free(NULL, 0);
        track_tags_free(NULL);
        catalog_close(c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_create_migrate_reopen, setup, teardown),
                cmocka_unit_test_setup_teardown(test_future_version_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_load_priority_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_foreach_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_scan_touch_finish, setup, teardown),
                cmocka_unit_test_setup_teardown(test_origin_remove_cascades, setup, teardown),
                cmocka_unit_test_setup_teardown(test_nodes_stable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_non_utf8_and_huge_strings, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_header, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_middle_pages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clean_close_marker, setup, teardown),
                cmocka_unit_test_setup_teardown(test_open_or_rebuild, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failpoints, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_20k, setup, teardown),
                cmocka_unit_test_setup_teardown(test_threads_see_whole_batches, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reentry_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        };
        log_set_max_level(LOG_ERR);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
