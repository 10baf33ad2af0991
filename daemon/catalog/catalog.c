/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "catalog.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "time-util.h"

/* Schema migrations, applied in order, each in its own transaction; PRAGMA user_version counts how
 * many have been applied. Never edit a released entry: append a new one. v2 adds the FTS5 index
 * (D5) as an external-content table over files (content_rowid = files.id) plus triggers, which is
 * why files keeps an INTEGER PRIMARY KEY.
 *
 * Strings are declared TEXT but hold whatever bytes the origin gave us (file names need not be
 * UTF-8): they are bound with explicit lengths and read back with sqlite3_column_bytes(), and SQLite
 * stores such bytes untouched. BINARY collation makes ORDER BY rel_path plain byte order (strcmp).
 *
 * nodes uses AUTOINCREMENT so that an inode number (D4) is never handed to a different path, even
 * after the newest node is deleted. The generation counter lives in meta so that it keeps rising
 * even when every file row is gone. */
static const char *const catalog_migrations[] = {
        /* v1 */
        "CREATE TABLE meta (\n"
        "        key TEXT PRIMARY KEY NOT NULL,\n"
        "        value INTEGER NOT NULL\n"
        ") WITHOUT ROWID;\n"
        "INSERT INTO meta (key, value) VALUES ('generation', 0);\n"
        "CREATE TABLE origins (\n"
        "        id INTEGER PRIMARY KEY,\n"
        "        name TEXT UNIQUE NOT NULL,\n"
        "        url TEXT NOT NULL,\n"
        "        priority INTEGER NOT NULL\n"
        ");\n"
        "CREATE TABLE files (\n"
        "        id INTEGER PRIMARY KEY,\n"
        "        origin_id INTEGER NOT NULL REFERENCES origins (id) ON DELETE CASCADE,\n"
        "        rel_path TEXT NOT NULL,\n"
        "        size INTEGER NOT NULL DEFAULT 0,\n"
        "        mtime_ns INTEGER NOT NULL DEFAULT 0,\n"
        "        format TEXT,\n"
        "        parsed INTEGER NOT NULL DEFAULT 0,\n"
        "        title TEXT,\n"
        "        artist TEXT,\n"
        "        album TEXT,\n"
        "        albumartist TEXT,\n"
        "        genre TEXT,\n"
        "        composer TEXT,\n"
        "        year INTEGER NOT NULL DEFAULT 0,\n"
        "        track INTEGER NOT NULL DEFAULT 0,\n"
        "        disc INTEGER NOT NULL DEFAULT 0,\n"
        "        disc_total INTEGER NOT NULL DEFAULT 0,\n"
        "        compilation INTEGER NOT NULL DEFAULT 0,\n"
        "        duration_ms INTEGER NOT NULL DEFAULT 0,\n"
        "        generation INTEGER NOT NULL DEFAULT 0,\n"
        "        UNIQUE (origin_id, rel_path)\n"      /* also serves the cascade and per-origin scans */
        ");\n"
        "CREATE TABLE nodes (\n"
        "        id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "        path TEXT UNIQUE NOT NULL\n"
        ");\n"
        "INSERT INTO nodes (id, path) VALUES (1, '');\n",

        /* v2: full-text search (D5), owned by the search half of issue #6. files_fts is an
         * external-content FTS5 table: it stores only the index, and its content is files seen
         * through files_search (year 0 means "no year" and must not index the token "0"). The
         * triggers keep it in step inside the same transaction as the row change; the update trigger
         * fires only when an indexed column really changed, so a scan's generation stamp (and an
         * upsert of a file whose tags did not change) costs nothing. remove_diacritics 2 makes
         * "Beyonce" find "Beyoncé"; the prefix index keeps "bea*" off a full term scan. files_year
         * serves year:A..B, which is a SQL condition rather than text. */
        "CREATE VIEW files_search AS SELECT id, artist, albumartist, album, title, genre, composer,\n"
        "        NULLIF(year, 0) AS year FROM files;\n"
        "CREATE VIRTUAL TABLE files_fts USING fts5 (artist, albumartist, album, title, genre, composer, year,\n"
        "        content = 'files_search', content_rowid = 'id',\n"
        "        tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3');\n"
        "CREATE TRIGGER files_fts_insert AFTER INSERT ON files BEGIN\n"
        "        INSERT INTO files_fts (rowid, artist, albumartist, album, title, genre, composer, year)\n"
        "        VALUES (new.id, new.artist, new.albumartist, new.album, new.title, new.genre, new.composer,\n"
        "                NULLIF(new.year, 0));\n"
        "END;\n"
        "CREATE TRIGGER files_fts_delete AFTER DELETE ON files BEGIN\n"
        "        INSERT INTO files_fts (files_fts, rowid, artist, albumartist, album, title, genre, composer, year)\n"
        "        VALUES ('delete', old.id, old.artist, old.albumartist, old.album, old.title, old.genre,\n"
        "                old.composer, NULLIF(old.year, 0));\n"
        "END;\n"
        "CREATE TRIGGER files_fts_update AFTER UPDATE OF artist, albumartist, album, title, genre, composer, year\n"
        "        ON files WHEN old.artist IS NOT new.artist OR old.albumartist IS NOT new.albumartist\n"
        "        OR old.album IS NOT new.album OR old.title IS NOT new.title OR old.genre IS NOT new.genre\n"
        "        OR old.composer IS NOT new.composer OR old.year IS NOT new.year BEGIN\n"
        "        INSERT INTO files_fts (files_fts, rowid, artist, albumartist, album, title, genre, composer, year)\n"
        "        VALUES ('delete', old.id, old.artist, old.albumartist, old.album, old.title, old.genre,\n"
        "                old.composer, NULLIF(old.year, 0));\n"
        "        INSERT INTO files_fts (rowid, artist, albumartist, album, title, genre, composer, year)\n"
        "        VALUES (new.id, new.artist, new.albumartist, new.album, new.title, new.genre, new.composer,\n"
        "                NULLIF(new.year, 0));\n"
        "END;\n"
        "CREATE INDEX files_year ON files (year);\n"
        "INSERT INTO files_fts (files_fts) VALUES ('rebuild');\n",
};

#define CATALOG_SCHEMA_VERSION ((int) ELEMENTSOF(catalog_migrations))
#define CATALOG_SEARCH_SINCE_VERSION 2  /* the migration that creates files_fts and builds it */
#define CATALOG_BUSY_TIMEOUT_MS 5000
/* Page cache. The catalog is off the FUSE path (the tree serves every request) and is read whole
 * only at startup and scans, where a bigger cache saves little and costs resident memory. */
#define CATALOG_CACHE_KIB 8192

/* Every statement the catalog runs more than once, prepared on first use and kept for the life of
 * the connection. */
typedef enum CatalogStatement {
        STMT_UPSERT,
        STMT_TOUCH,
        STMT_ORIGIN_ENSURE,
        STMT_ORIGIN_REMOVE,
        STMT_ORIGIN_EXISTS,
        STMT_ORIGINS_ORDERED,
        STMT_LOAD_ORIGIN_FILES,
        STMT_COUNT_FILES,
        STMT_NEXT_GENERATION,
        STMT_SCAN_FINISH,
        STMT_NODES_ALL,
        STMT_NODE_GET,
        STMT_NODE_INSERT,
        _STMT_MAX,
} CatalogStatement;

#define FILE_COLUMNS                                                                    \
        "f.id, f.origin_id, o.priority, f.rel_path, f.size, f.mtime_ns, f.format, f.parsed, " \
        "f.title, f.artist, f.album, f.albumartist, f.genre, f.composer, "             \
        "f.year, f.track, f.disc, f.disc_total, f.compilation, f.duration_ms"

static const char *const statement_sql[_STMT_MAX] = {
        [STMT_UPSERT] =
                "INSERT INTO files (origin_id, rel_path, size, mtime_ns, format, parsed, "
                "title, artist, album, albumartist, genre, composer, "
                "year, track, disc, disc_total, compilation, duration_ms, generation) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) "
                "ON CONFLICT (origin_id, rel_path) DO UPDATE SET "
                "size = excluded.size, mtime_ns = excluded.mtime_ns, format = excluded.format, "
                "parsed = excluded.parsed, title = excluded.title, artist = excluded.artist, "
                "album = excluded.album, albumartist = excluded.albumartist, genre = excluded.genre, "
                "composer = excluded.composer, year = excluded.year, track = excluded.track, "
                "disc = excluded.disc, disc_total = excluded.disc_total, "
                "compilation = excluded.compilation, duration_ms = excluded.duration_ms, "
                "generation = excluded.generation",
        [STMT_TOUCH] =
                "UPDATE files SET generation = ?3 WHERE origin_id = ?1 AND rel_path = ?2",
        [STMT_ORIGIN_ENSURE] =
                "INSERT INTO origins (name, url, priority) VALUES (?1, ?2, ?3) "
                "ON CONFLICT (name) DO UPDATE SET url = excluded.url, priority = excluded.priority "
                "RETURNING id",
        [STMT_ORIGIN_REMOVE] =
                "DELETE FROM origins WHERE name = ?1",
        [STMT_ORIGIN_EXISTS] =
                "SELECT 1 FROM origins WHERE id = ?1",
        [STMT_ORIGINS_ORDERED] =
                "SELECT id FROM origins ORDER BY priority, name",
        [STMT_LOAD_ORIGIN_FILES] =
                "SELECT " FILE_COLUMNS " FROM files AS f JOIN origins AS o ON o.id = f.origin_id "
                "WHERE f.origin_id = ?1 ORDER BY f.rel_path",
        [STMT_COUNT_FILES] =
                "SELECT count(*) FROM files",
        [STMT_NEXT_GENERATION] =
                "UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value",
        [STMT_SCAN_FINISH] =
                "DELETE FROM files WHERE origin_id = ?1 AND generation < ?2",
        [STMT_NODES_ALL] =
                "SELECT path, id FROM nodes",
        [STMT_NODE_GET] =
                "SELECT id FROM nodes WHERE path = ?1",
        [STMT_NODE_INSERT] =
                "INSERT INTO nodes (path) VALUES (?1) RETURNING id",
};

/* Locking: one connection, one mutex. Every call takes the mutex for its duration, except a batch,
 * which holds it from catalog_batch_begin() until catalog_batch_commit()/abort(): a batch is one
 * SQLite transaction on the shared connection, so any other statement run meanwhile would silently
 * join it. Consequences: other threads wait while a batch is open (keep batches short and do slow
 * work such as tag reading outside them); a batch belongs to the thread that began it; and that
 * thread calling any other catalog function before ending its batch gets -EDEADLK (the mutex is
 * error-checking) instead of hanging. */
struct Catalog {
        pthread_mutex_t lock;
        sqlite3 *db;
        char *path;
        sqlite3_stmt *statements[_STMT_MAX];
        CatalogBatch *batch;    /* the open batch, if any */
        bool corrupt_seen;      /* never vouch for this file with a clean-close marker */
        char *clean_identity;   /* the marker this open found matching, or NULL */
        /* Files rows added, changed or removed through this connection (catalog_content_changes()):
         * counted when the statement ran, so a batch rolled back later still counts. */
        _Atomic uint64_t content_changes;
        /* Search reads on a connection of their own (read-only, opened on first use): WAL lets them
         * run while a batch writes, so a search never waits for a scan. search_lock guards it. */
        pthread_mutex_t search_lock;
        sqlite3 *search_db;
        /* A damaged index found by a search is rebuilt on a thread of its own (17 s at 1M tracks:
         * too long for a caller such as the bus loop to wait); searches answer -EBUSY meanwhile.
         * Started under search_lock; joined by catalog_free(). */
        pthread_t rebuild_thread;
        bool rebuild_thread_started;
        atomic_bool rebuilding;
        /* Rebuilds of the index that committed. A rebuild a search asked for is skipped when another
         * one (the check's) committed since that search began: it saw an index that is gone. */
        _Atomic uint64_t rebuilds;
        uint64_t rebuilds_seen_by_search;       /* for the rebuild thread; set before it starts */
        /* quick_check does not look inside the search index's blobs, so an open that was not after a
         * clean close leaves the FTS5 integrity-check due: catalog_search_repair_if_due() runs it
         * after the mount (D6: 1.5-2.7 s at 1M tracks, a rebuild 8-17 s more). Under lock. */
        bool search_check_due;
        atomic_bool repairing;  /* that check found damage and rebuilds: searches answer -EBUSY */
};

struct CatalogBatch {
        Catalog *catalog;
        int error;              /* set when SQLite dropped the transaction: the batch can only fail */
};

/* The one place SQLite result codes become errnos. Logs one line with SQLite's own message. */
static int catalog_error(Catalog *c, int rc, const char *what) {
        int r;

        switch (rc & 0xff) {
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                r = -EBUSY;
                break;
        case SQLITE_FULL:
                r = -ENOSPC;
                break;
        case SQLITE_IOERR:
                r = -EIO;
                break;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                r = -EBADMSG;
                c->corrupt_seen = true;
                break;
        case SQLITE_READONLY:
                r = -EROFS;
                break;
        case SQLITE_NOMEM:
                r = -ENOMEM;
                break;
        case SQLITE_TOOBIG:
                r = -E2BIG;
                break;
        case SQLITE_INTERRUPT:
                r = -ECANCELED;         /* always asked for: a close, or a caller that stops */
                break;
        case SQLITE_CONSTRAINT:
                r = -EINVAL;
                break;
        case SQLITE_CANTOPEN: {
                int e = c->db ? sqlite3_system_errno(c->db) : 0;
                r = e == ENOENT || e == ENOTDIR ? -ENOENT : -EACCES;
                break;
        }
        default:
                r = -EIO;
        }

        const char *message = c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
        if (r == -ECANCELED)
                return log_debug_errno(r, "Catalog %s: %s: %s", c->path, what, message);
        if (r == -EBADMSG)
                return log_error_errno(r, "Catalog %s is corrupt or not a database: %s: %s", c->path, what, message);
        return log_error_errno(r, "Catalog %s: %s: %s", c->path, what, message);
}

static int catalog_lock(Catalog *c) {
        int r = pthread_mutex_lock(&c->lock);
        if (r == EDEADLK)
                return log_error_errno(EDEADLK, "Catalog %s: called by the thread that holds an open batch",
                                       c->path);
        if (r != 0)
                return log_error_errno(r, "Catalog %s: cannot take the lock: %m", c->path);
        return 0;
}

static void catalog_unlock(Catalog *c) {
        (void) pthread_mutex_unlock(&c->lock);
}

/* Releases the lock at the end of the scope. Declare it before any _cleanup_stmt_reset_ variable:
 * cleanups run in reverse order, and a statement must be reset while the lock is still held. */
static void catalog_unlockp(Catalog **c) {
        if (*c)
                catalog_unlock(*c);
}
#define _cleanup_catalog_unlock_ _cleanup_(catalog_unlockp)

static int catalog_exec(Catalog *c, const char *sql) {
        int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, sql);
        return 0;
}

/* Ends the current transaction without logging a second time: called on paths that already failed. */
static void catalog_rollback(Catalog *c) {
        if (!sqlite3_get_autocommit(c->db))
                (void) sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

/* A cached statement, reset and unbound when the caller's scope ends (bound strings are SQLITE_STATIC,
 * so bindings must not outlive the caller's buffers). */
static void stmt_resetp(sqlite3_stmt **s) {
        if (*s) {
                (void) sqlite3_reset(*s);
                (void) sqlite3_clear_bindings(*s);
        }
}
#define _cleanup_stmt_reset_ _cleanup_(stmt_resetp)

static int catalog_statement(Catalog *c, CatalogStatement id, sqlite3_stmt **ret) {
        if (!c->statements[id]) {
                int rc = sqlite3_prepare_v3(c->db, statement_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                            &c->statements[id], NULL);
                if (rc != SQLITE_OK)
                        return catalog_error(c, rc, "prepare");
        }
        *ret = c->statements[id];
        return 0;
}

static int bind_string(sqlite3_stmt *s, int i, const char *t) {
        if (!t)
                return sqlite3_bind_null(s, i);
        return sqlite3_bind_text64(s, i, t, strlen(t), SQLITE_STATIC, SQLITE_UTF8);
}

/* Byte-exact copy of a text column; NULL stays NULL. */
static int column_string(sqlite3_stmt *s, int i, char **ret) {
        if (sqlite3_column_type(s, i) == SQLITE_NULL) {
                *ret = NULL;
                return 0;
        }
        const unsigned char *t = sqlite3_column_text(s, i);
        if (!t)
                return -ENOMEM;
        size_t n = (size_t) sqlite3_column_bytes(s, i);
        char *p = malloc(n + 1);
        if (!p)
                return -ENOMEM;
        memcpy(p, t, n);
        p[n] = 0;
        *ret = p;
        return 0;
}

void track_tags_free(TrackTags *t) {
        if (!t)
                return;
        free(t->title);
        free(t->artist);
        free(t->album);
        free(t->albumartist);
        free(t->genre);
        free(t->composer);
        *t = (TrackTags) {};
}

void catalog_file_free_members(CatalogFile *f) {
        if (!f)
                return;
        free(f->rel_path);
        free(f->format);
        track_tags_free(&f->tags);
        *f = (CatalogFile) {};
}

void catalog_files_free(CatalogFile *f, size_t n) {
        if (!f)
                return;
        for (size_t i = 0; i < n; i++)
                catalog_file_free_members(&f[i]);
        free(f);
}

static void catalog_free(Catalog *c) {
        if (!c)
                return;
        /* Before the connection goes: a background search-index rebuild uses it. */
        if (c->rebuild_thread_started)
                (void) pthread_join(c->rebuild_thread, NULL);
        for (size_t i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(c->statements[i]);
        if (c->db && sqlite3_close(c->db) != SQLITE_OK)
                log_warning("Catalog %s: close: %s", c->path, sqlite3_errmsg(c->db));
        pthread_mutex_destroy(&c->lock);
        if (c->search_db)
                (void) sqlite3_close(c->search_db);
        pthread_mutex_destroy(&c->search_lock);
        free(c->clean_identity);
        free(c->path);
        free(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Catalog *, catalog_free);

static void content_changed(Catalog *c, uint64_t n) {
        atomic_fetch_add_explicit(&c->content_changes, n, memory_order_relaxed);
}

static int catalog_user_version(Catalog *c, int *ret) {
        sqlite3_stmt *s;
        int rc = sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &s, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "PRAGMA user_version");
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW)
                *ret = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "PRAGMA user_version");
        return 0;
}

static int catalog_check_version(Catalog *c, int version) {
        if (version > CATALOG_SCHEMA_VERSION)
                return log_error_errno(EPROTO,
                                       "Catalog %s has schema version %d, newer than the %d this musicfsd knows; "
                                       "refusing to use or downgrade it (run a newer musicfsd or move the file away)",
                                       c->path, version, CATALOG_SCHEMA_VERSION);
        if (version < 0)
                return log_error_errno(EBADMSG, "Catalog %s has an invalid schema version %d", c->path, version);
        return 0;
}

static int catalog_migrate(Catalog *c) {
        int version, rc, r;

        r = catalog_user_version(c, &version);
        if (r < 0)
                return r;
        r = catalog_check_version(c, version);
        if (r < 0)
                return r;

        while (version < CATALOG_SCHEMA_VERSION) {
                char set_version[64];

                r = catalog_exec(c, "BEGIN IMMEDIATE");
                if (r < 0)
                        return r;
                /* Another process may have migrated while we waited for the write lock. */
                r = catalog_user_version(c, &version);
                if (r >= 0)
                        r = catalog_check_version(c, version);
                if (r < 0 || version >= CATALOG_SCHEMA_VERSION) {
                        catalog_rollback(c);
                        return r < 0 ? r : 0;
                }

                snprintf(set_version, sizeof set_version, "PRAGMA user_version = %d", version + 1);
                rc = sqlite3_exec(c->db, catalog_migrations[version], NULL, NULL, NULL);
                r = rc == SQLITE_OK ? 0 : catalog_error(c, rc, "migration");
                if (r >= 0)
                        r = catalog_exec(c, set_version);
                if (r >= 0)
                        r = catalog_exec(c, "COMMIT");
                if (r < 0) {
                        catalog_rollback(c);
                        return log_error_errno(r, "Catalog %s: migration to schema version %d failed: %m",
                                               c->path, version + 1);
                }
                log_debug("Catalog %s: migrated to schema version %d", c->path, version + 1);
                version++;
        }
        return 0;
}

static int catalog_run_quick_check(Catalog *c) {
        sqlite3_stmt *s;
        int rc, r = 0;

        /* quick_check(1): stop at the first problem; a corrupt catalog is rebuilt, not repaired. */
        rc = sqlite3_prepare_v2(c->db, "PRAGMA quick_check(1)", -1, &s, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "quick_check");
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
                const char *result = (const char *) sqlite3_column_text(s, 0);
                if (!streq_ptr(result, "ok")) {
                        /* One log line: the report names the database and the page on separate lines. */
                        char flat[256];
                        snprintf(flat, sizeof flat, "%s", strna(result));
                        for (char *p = flat; *p; p++)
                                if (*p == '\n')
                                        *p = ' ';
                        c->corrupt_seen = true;
                        r = log_error_errno(EBADMSG, "Catalog %s is corrupt: quick_check: %s", c->path, flat);
                }
        } else
                r = catalog_error(c, rc, "quick_check");
        sqlite3_finalize(s);
        return r;
}

static int catalog_configure(Catalog *c) {
        char cache_size[64];
        sqlite3_stmt *s;
        int rc, r;

        rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "PRAGMA journal_mode");
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
                const char *mode = (const char *) sqlite3_column_text(s, 0);
                if (!streq_ptr(mode, "wal"))
                        log_warning("Catalog %s: journal mode is %s, not wal (is the filesystem able to share memory maps?)",
                                    c->path, strna(mode));
                r = 0;
        } else
                r = catalog_error(c, rc, "PRAGMA journal_mode");
        sqlite3_finalize(s);
        if (r < 0)
                return r;

        snprintf(cache_size, sizeof cache_size, "PRAGMA cache_size = -%d", CATALOG_CACHE_KIB);
        r = catalog_exec(c, "PRAGMA synchronous = NORMAL");
        if (r >= 0)
                r = catalog_exec(c, "PRAGMA foreign_keys = ON");
        if (r >= 0)
                r = catalog_exec(c, "PRAGMA temp_store = MEMORY");
        if (r >= 0)
                r = catalog_exec(c, cache_size);
        return r;
}

/* The clean-close marker. A full quick_check reads every page: at 100k tracks it costs more than
 * the rest of startup together, and the catalog is on the path to the mount (D6). So catalog_close()
 * leaves "<path>.clean" naming the database file exactly as it left it (device, inode, size, mtime),
 * and the next open skips quick_check only when the file is still exactly that and no -wal exists;
 * the marker is removed first thing, so a crash or an outside write always means a full check.
 * Corruption that keeps size and mtime (bit rot) still surfaces as SQLITE_CORRUPT on the pages
 * that loading the catalog reads, and catalog_quick_check() stays available for a later check. */
static char *clean_marker_path(const char *path) {
        char *p = NULL;
        return asprintf(&p, "%s.clean", path) < 0 ? NULL : p;
}

static char *file_identity(const struct stat *st) {
        char *p = NULL;
        return asprintf(&p, "%llu %llu %lld %lld %ld", (unsigned long long) st->st_dev, (unsigned long long) st->st_ino,
                        (long long) st->st_size, (long long) st->st_mtim.tv_sec, st->st_mtim.tv_nsec) < 0 ? NULL : p;
}

/* Returns the identity written, or NULL when no marker could be written. */
static char *clean_marker_write(const char *path) {
        _cleanup_free_ char *marker = clean_marker_path(path), *identity = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        struct stat st;

        if (!marker || stat(path, &st) < 0)
                return NULL;
        identity = file_identity(&st);
        if (!identity)
                return NULL;
        f = fopen(marker, "we");
        if (!f)
                return NULL;
        if (fprintf(f, "%s\n", identity) < 0 || fflush(f) != 0) {
                (void) unlink(marker);
                return NULL;
        }
        return TAKE_PTR(identity);
}

/* The identity the marker named when it matched, else NULL; the marker is gone afterwards either
 * way. */
static char *clean_marker_consume(const char *path) {
        _cleanup_free_ char *marker = clean_marker_path(path), *wal = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        unsigned long long dev, ino;
        long long size, sec;
        long nsec;
        struct stat st;
        bool clean;

        if (!marker)
                return NULL;
        f = fopen(marker, "re");
        if (!f)
                return NULL;
        clean = fscanf(f, "%llu %llu %lld %lld %ld", &dev, &ino, &size, &sec, &nsec) == 5 &&
                stat(path, &st) == 0 && st.st_dev == dev && st.st_ino == ino && st.st_size == size &&
                st.st_mtim.tv_sec == sec && st.st_mtim.tv_nsec == nsec &&
                asprintf(&wal, "%s-wal", path) >= 0 && access(wal, F_OK) < 0 && errno == ENOENT;
        if (unlink(marker) < 0 && errno != ENOENT)
                clean = false;  /* it would vouch for the file again next time */
        return clean ? file_identity(&st) : NULL;
}

int catalog_open(const char *path, Catalog **ret) {
        _cleanup_(catalog_freep) Catalog *c = NULL;
        pthread_mutexattr_t attr;
        int version, rc, r;

        if (!path || !ret)
                return -EINVAL;

        r = FAILPOINT(CATALOG_OPEN);
        if (r < 0)
                return log_error_errno(r, "Catalog %s: open failed (failpoint): %m", path);

        c = calloc(1, sizeof *c);
        if (!c)
                return log_error_errno(ENOMEM, "Catalog %s: out of memory", path);
        r = pthread_mutexattr_init(&attr);
        if (r != 0) {
                free(TAKE_PTR(c));
                return -r;
        }
        (void) pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
        r = pthread_mutex_init(&c->lock, &attr);
        pthread_mutexattr_destroy(&attr);
        if (r != 0) {
                free(TAKE_PTR(c));
                return -r;
        }
        r = pthread_mutex_init(&c->search_lock, NULL);
        if (r != 0) {
                pthread_mutex_destroy(&c->lock);
                free(TAKE_PTR(c));
                return -r;
        }
        c->path = strdup(path);
        if (!c->path)
                return log_error_errno(ENOMEM, "Catalog %s: out of memory", path);
        c->clean_identity = clean_marker_consume(path);
        bool closed_cleanly = c->clean_identity != NULL;

        /* NOMUTEX: our own mutex already serialises every use of the connection. */
        rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "open");
        (void) sqlite3_extended_result_codes(c->db, 1);
        (void) sqlite3_busy_timeout(c->db, CATALOG_BUSY_TIMEOUT_MS);

        /* Read the version before anything writes to the file: a newer schema is left untouched. This
         * is also the first read of the header, where "not a database" shows up. */
        r = catalog_user_version(c, &version);
        if (r < 0)
                return r;
        r = catalog_check_version(c, version);
        if (r < 0)
                return r;

        r = catalog_configure(c);
        if (r < 0)
                return r;
        if (closed_cleanly)
                log_debug("Catalog %s was closed cleanly and not touched since: no quick_check", path);
        else {
                r = catalog_run_quick_check(c);
                if (r < 0)
                        return r;
        }
        r = catalog_migrate(c);
        if (r < 0)
                return r;
        /* A new file, or one older than the index, had its index built by this open's migration:
         * nothing a crash could have torn. */
        c->search_check_due = !closed_cleanly && version >= CATALOG_SEARCH_SINCE_VERSION;

        log_debug("Catalog %s opened (schema version %d)", path, CATALOG_SCHEMA_VERSION);
        *ret = TAKE_PTR(c);
        return 0;
}

static int move_aside(const char *from, const char *to) {
        if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) < 0) {
                if (errno == ENOENT)
                        return 0;
                return -errno;
        }
        return 1;
}

/* Moves the database and its -wal/-shm to "<path>.corrupt-<time>" (keeping their suffixes, so the
 * set stays openable for a post-mortem). Never overwrites an earlier corpse. */
static int catalog_move_aside(const char *path, char **ret_name) {
        static const char *const suffixes[] = { "", "-wal", "-shm" };
        long long now = (long long) time(NULL);
        _cleanup_free_ char *base = NULL;
        int r;

        for (unsigned attempt = 0; attempt < 100; attempt++) {
                free(base);
                base = NULL;
                if ((attempt == 0 ? asprintf(&base, "%s.corrupt-%lld", path, now) :
                                    asprintf(&base, "%s.corrupt-%lld.%u", path, now, attempt)) < 0)
                        return -ENOMEM;
                r = move_aside(path, base);
                if (r == -EEXIST)
                        continue;
                if (r < 0)
                        return log_error_errno(r, "Catalog %s: cannot move the corrupt file to %s: %m", path, base);
                break;
        }
        if (r < 0)
                return log_error_errno(r, "Catalog %s: cannot find a free name to move the corrupt file to", path);

        for (size_t i = 1; i < ELEMENTSOF(suffixes); i++) {
                _cleanup_free_ char *from = NULL, *to = NULL;
                if (asprintf(&from, "%s%s", path, suffixes[i]) < 0 || asprintf(&to, "%s%s", base, suffixes[i]) < 0)
                        return -ENOMEM;
                r = move_aside(from, to);
                if (r < 0) {
                        /* A stale -wal next to a fresh database would be replayed into it: remove it. */
                        log_warning_errno(r, "Catalog %s: cannot move %s aside, removing it: %m", path, from);
                        if (unlink(from) < 0 && errno != ENOENT)
                                return log_error_errno(errno, "Catalog %s: cannot remove %s: %m", path, from);
                }
        }

        *ret_name = TAKE_PTR(base);
        return 0;
}

int catalog_open_or_rebuild(const char *path, Catalog **ret, bool *ret_rebuilt) {
        _cleanup_free_ char *moved = NULL;
        int r;

        if (!path || !ret)
                return -EINVAL;

        r = catalog_open(path, ret);
        if (r != -EBADMSG) {
                if (r >= 0 && ret_rebuilt)
                        *ret_rebuilt = false;
                return r;
        }

        r = catalog_move_aside(path, &moved);
        if (r < 0)
                return r;
        log_warning("Catalog %s was corrupt: moved it to %s and starting an empty catalog; "
                    "the next scan fills it again", path, moved);

        r = catalog_open(path, ret);
        if (r < 0)
                return log_error_errno(r, "Catalog %s: cannot create a fresh catalog: %m", path);
        if (ret_rebuilt)
                *ret_rebuilt = true;
        return 0;
}

void catalog_close(Catalog *c) {
        free(catalog_close_vouched(c));
}

const char *catalog_clean_identity(const Catalog *c) {
        return c ? c->clean_identity : NULL;
}

uint64_t catalog_content_changes(Catalog *c) {
        return c ? atomic_load_explicit(&c->content_changes, memory_order_relaxed) : UINT64_MAX;
}

char *catalog_close_vouched(Catalog *c) {
        int rc, r;

        if (!c)
                return NULL;

        /* A background rebuild of the search index would hold the stop up: interrupt it (the index
         * stays damaged and is rebuilt again when a search meets it). */
        if (atomic_load(&c->rebuilding))
                sqlite3_interrupt(c->db);
        /* The search connection goes first: the last connection to close removes the -wal, and a
         * read-only one cannot, which would cost the clean-close marker. */
        (void) pthread_mutex_lock(&c->search_lock);
        if (c->search_db) {
                (void) sqlite3_close(c->search_db);
                c->search_db = NULL;
        }
        (void) pthread_mutex_unlock(&c->search_lock);
        r = catalog_lock(c);
        if (r == -EDEADLK && c->batch) {
                /* The caller closes with its own batch still open: roll it back, the batch is gone. */
                catalog_rollback(c);
                free(TAKE_PTR(c->batch));
        } else if (r < 0)
                return NULL;

        (void) sqlite3_exec(c->db, "PRAGMA optimize", NULL, NULL, NULL);
        rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK)
                (void) catalog_error(c, rc, "checkpoint");
        catalog_unlock(c);

        /* A search index check still due (the daemon stopped before it ran, or stopped it) is due at
         * the next open too: no marker. */
        _cleanup_free_ char *path = rc == SQLITE_OK && !c->corrupt_seen && !c->search_check_due ?
                                    strdup(c->path) : NULL;
        catalog_free(c);
        /* After the close: the last connection's close may still touch the file. */
        return path ? clean_marker_write(path) : NULL;
}

int catalog_checkpoint(Catalog *c) {
        if (!c)
                return -EINVAL;
        int r = catalog_lock(c);
        if (r < 0)
                return r;
        _cleanup_catalog_unlock_ Catalog *locked = c;

        int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "checkpoint");
        return 0;
}

int catalog_quick_check(Catalog *c) {
        if (!c)
                return -EINVAL;
        int r = catalog_lock(c);
        if (r < 0)
                return r;
        _cleanup_catalog_unlock_ Catalog *locked = c;

        return catalog_run_quick_check(c);
}

int catalog_origin_ensure(Catalog *c, const char *name, const char *url, unsigned priority, int64_t *ret_id) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        if (!c || !name || !url)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_statement(c, STMT_ORIGIN_ENSURE, &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, name);
        if (rc == SQLITE_OK)
                rc = bind_string(s, 2, url);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(s, 3, (sqlite3_int64) priority);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "origin bind");

        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "origin ensure");
        int64_t id = sqlite3_column_int64(s, 0);
        rc = sqlite3_step(s);   /* runs the statement to completion, so that it commits */
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "origin ensure");
        if (ret_id)
                *ret_id = id;
        return 0;
}

int catalog_origin_remove(Catalog *c, const char *name) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        if (!c || !name)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_statement(c, STMT_ORIGIN_REMOVE, &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, name);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "origin bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "origin remove");
        if (sqlite3_changes(c->db) == 0)
                return -ENOENT;
        content_changed(c, 1);
        log_debug("Catalog %s: removed origin %s and its files", c->path, name);
        return 0;
}

/* A file row's numbers; its strings are the columns of file_row_strings (STMT_LOAD_* order). */
static CatalogFile file_row_numbers(sqlite3_stmt *s) {
        return (CatalogFile) {
                .id = sqlite3_column_int64(s, 0),
                .origin_id = sqlite3_column_int64(s, 1),
                .origin_priority = (unsigned) sqlite3_column_int64(s, 2),
                .size = (uint64_t) sqlite3_column_int64(s, 4),
                .mtime_ns = sqlite3_column_int64(s, 5),
                .parsed = sqlite3_column_int(s, 7) != 0,
                .tags.year = sqlite3_column_int(s, 14),
                .tags.track = sqlite3_column_int(s, 15),
                .tags.disc = sqlite3_column_int(s, 16),
                .tags.disc_total = sqlite3_column_int(s, 17),
                .tags.compilation = sqlite3_column_int(s, 18) != 0,
                .tags.duration_ms = sqlite3_column_int64(s, 19),
        };
}

static const struct {
        int column;
        size_t offset;
} file_row_strings[] = {
        { 3, offsetof(CatalogFile, rel_path) },
        { 6, offsetof(CatalogFile, format) },
        { 8, offsetof(CatalogFile, tags.title) },
        { 9, offsetof(CatalogFile, tags.artist) },
        { 10, offsetof(CatalogFile, tags.album) },
        { 11, offsetof(CatalogFile, tags.albumartist) },
        { 12, offsetof(CatalogFile, tags.genre) },
        { 13, offsetof(CatalogFile, tags.composer) },
};

static char **file_row_string(CatalogFile *f, size_t i) {
        return (char **) ((uint8_t *) f + file_row_strings[i].offset);
}

/* A column's text as SQLite holds it: valid until the statement steps or is reset. */
static const char *column_text_borrowed(sqlite3_stmt *s, int i, int *error) {
        if (sqlite3_column_type(s, i) == SQLITE_NULL)
                return NULL;
        const char *t = (const char *) sqlite3_column_text(s, i);
        if (!t)
                *error = -ENOMEM;
        return t;
}

/* borrow: the strings point into SQLite's buffers (valid until the statement steps or resets);
 * otherwise they are copies the caller frees with catalog_file_free_members(). */
static int read_file_row(sqlite3_stmt *s, bool borrow, CatalogFile *f) {
        int r = 0;

        *f = file_row_numbers(s);
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(file_row_strings); i++) {
                if (borrow)
                        *file_row_string(f, i) = (char *) column_text_borrowed(s, file_row_strings[i].column, &r);
                else
                        r = column_string(s, file_row_strings[i].column, file_row_string(f, i));
        }
        /* rel_path is NOT NULL in the schema: only a damaged row lacks it. */
        if (r >= 0 && !f->rel_path)
                r = -EBADMSG;
        if (r < 0) {
                if (!borrow)
                        catalog_file_free_members(f);
                *f = (CatalogFile) {};
        }
        return r;
}

/* Files accumulate in one array that grows geometrically: one allocation per string, none per row. */
typedef struct FileList {
        CatalogFile *files;
        size_t n, allocated;
} FileList;

static void file_list_done(FileList *l) {
        catalog_files_free(l->files, l->n);
        *l = (FileList) {};
}

/* One origin's rows (the query bound to origin_id), each handed to cb as it is stepped. borrow: the
 * strings are SQLite's own buffers, valid during the call; otherwise they are copies that cb takes
 * over when it succeeds (they are freed here when it fails). */
static int catalog_walk_origin_files(Catalog *c, int64_t origin_id, bool borrow, catalog_file_fn cb, void *userdata) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        r = catalog_statement(c, STMT_LOAD_ORIGIN_FILES, &s);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 1, origin_id);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "load bind");

        for (;;) {
                CatalogFile f;

                rc = sqlite3_step(s);
                if (rc == SQLITE_DONE)
                        return 0;
                if (rc != SQLITE_ROW)
                        return catalog_error(c, rc, "load files");
                r = read_file_row(s, borrow, &f);
                if (r < 0)
                        return log_error_errno(r, "Catalog %s: cannot read a file row: %m", c->path);
                r = cb(&f, userdata);
                if (r < 0) {
                        if (!borrow)
                                catalog_file_free_members(&f);
                        return r;
                }
        }
}

/* Takes the row over (its strings are copies, see catalog_walk_origin_files()). */
static int file_list_append(const CatalogFile *f, void *userdata) {
        FileList *l = userdata;

        if (GREEDY_REALLOC(l->files, l->allocated, l->n + 1) < 0)
                return -ENOMEM;
        l->files[l->n++] = *f;
        return 0;
}

/* Runs a file query of one origin (bound to origin_id) to the end, appending its rows. */
static int catalog_append_origin_files(Catalog *c, int64_t origin_id, FileList *l) {
        int r = catalog_walk_origin_files(c, origin_id, false, file_list_append, l);
        if (r == -ENOMEM)
                return log_error_errno(r, "Catalog %s: out of memory loading files: %m", c->path);
        return r;
}

static int catalog_ordered_origins(Catalog *c, int64_t **ret, size_t *ret_n) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        _cleanup_free_ int64_t *ids = NULL;
        size_t n = 0, allocated = 0;
        int rc, r;

        r = catalog_statement(c, STMT_ORIGINS_ORDERED, &s);
        if (r < 0)
                return r;
        for (;;) {
                rc = sqlite3_step(s);
                if (rc == SQLITE_DONE)
                        break;
                if (rc != SQLITE_ROW)
                        return catalog_error(c, rc, "load origins");
                if (GREEDY_REALLOC(ids, allocated, n + 1) < 0)
                        return -ENOMEM;
                ids[n++] = sqlite3_column_int64(s, 0);
        }
        *ret = TAKE_PTR(ids);
        *ret_n = n;
        return 0;
}

/* Runs per_origin on every origin in catalog order, origin by origin off the UNIQUE (origin_id,
 * rel_path) index: this is the startup path, and it saves sorting every row of the library. One read
 * transaction keeps the origins and their files one snapshot. Under the lock. */
typedef int (*origin_rows_fn)(Catalog *c, int64_t origin_id, void *userdata);
static int catalog_walk_origins_locked(Catalog *c, origin_rows_fn per_origin, void *userdata) {
        _cleanup_free_ int64_t *origins = NULL;
        size_t n_origins = 0;
        int r;

        r = catalog_exec(c, "BEGIN");
        if (r < 0)
                return r;
        r = catalog_ordered_origins(c, &origins, &n_origins);
        for (size_t i = 0; r >= 0 && i < n_origins; i++)
                r = per_origin(c, origins[i], userdata);
        if (r >= 0)
                r = catalog_exec(c, "COMMIT");
        if (r < 0)
                catalog_rollback(c);
        return r;
}

static int append_origin_rows(Catalog *c, int64_t origin_id, void *userdata) {
        return catalog_append_origin_files(c, origin_id, userdata);
}

int catalog_load_files(Catalog *c, CatalogFile **ret, size_t *ret_n) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        FileList l = {};
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_walk_origins_locked(c, append_origin_rows, &l);
        if (r < 0) {
                file_list_done(&l);
                return r;
        }
        *ret = l.files;
        *ret_n = l.n;
        return 0;
}


typedef struct RowWalk {
        catalog_file_fn cb;
        void *userdata;
} RowWalk;

static int walk_origin_rows(Catalog *c, int64_t origin_id, void *userdata) {
        RowWalk *w = userdata;
        return catalog_walk_origin_files(c, origin_id, true, w->cb, w->userdata);
}

int catalog_foreach_file(Catalog *c, catalog_file_fn cb, void *userdata) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        RowWalk w = { .cb = cb, .userdata = userdata };
        int r;

        if (!c || !cb)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        /* As catalog_load_files(), without the copies. */
        r = catalog_walk_origins_locked(c, walk_origin_rows, &w);
        return r < 0 ? r : 0;
}

int catalog_load_origin_files(Catalog *c, int64_t origin_id, CatalogFile **ret, size_t *ret_n) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        FileList l = {};
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_append_origin_files(c, origin_id, &l);
        if (r < 0) {
                file_list_done(&l);
                return r;
        }
        *ret = l.files;
        *ret_n = l.n;
        return 0;
}

int catalog_count_files(Catalog *c, uint64_t *ret) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        if (!c || !ret)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_statement(c, STMT_COUNT_FILES, &s);
        if (r < 0)
                return r;
        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "count files");
        *ret = (uint64_t) sqlite3_column_int64(s, 0);
        return 0;
}

int catalog_scan_begin(Catalog *c, int64_t origin_id, int64_t *ret_generation) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_reset_ sqlite3_stmt *exists = NULL, *next = NULL;
        int rc, r;

        if (!c || !ret_generation)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_statement(c, STMT_ORIGIN_EXISTS, &exists);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(exists, 1, origin_id);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "scan bind");
        rc = sqlite3_step(exists);
        if (rc == SQLITE_DONE)
                return log_error_errno(ENOENT, "Catalog %s: no origin with id %" PRIi64 " to scan", c->path, origin_id);
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "scan begin");

        r = catalog_statement(c, STMT_NEXT_GENERATION, &next);
        if (r < 0)
                return r;
        rc = sqlite3_step(next);
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "scan begin");
        int64_t generation = sqlite3_column_int64(next, 0);
        rc = sqlite3_step(next);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "scan begin");

        *ret_generation = generation;
        return 0;
}

int catalog_scan_finish(Catalog *c, int64_t origin_id, int64_t generation, uint64_t *ret_removed) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        if (!c)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_statement(c, STMT_SCAN_FINISH, &s);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 1, origin_id);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(s, 2, generation);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "scan finish bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "scan finish");
        content_changed(c, (uint64_t) sqlite3_changes64(c->db));
        if (ret_removed)
                *ret_removed = (uint64_t) sqlite3_changes64(c->db);
        return 0;
}

int catalog_batch_begin(Catalog *c, CatalogBatch **ret) {
        CatalogBatch *b;
        int r;

        if (!c || !ret)
                return -EINVAL;
        b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        r = catalog_lock(c);
        if (r < 0) {
                free(b);
                return r;
        }
        /* IMMEDIATE: take the write lock now, so a busy database fails here and not at the commit. */
        r = catalog_exec(c, "BEGIN IMMEDIATE");
        if (r < 0) {
                catalog_unlock(c);
                free(b);
                return r;
        }
        b->catalog = c;
        c->batch = b;
        *ret = b;       /* the lock stays held until commit or abort */
        return 0;
}

/* A statement inside a batch failed. SQLite rolls back the whole transaction on some errors (I/O,
 * disk full, out of memory): then nothing the batch did survives, and running on would commit the
 * rest piecemeal in autocommit mode; so the batch is poisoned and can only fail. Errors that cost
 * only the statement (a too-long string) leave the batch usable. */
static int batch_failed(CatalogBatch *b, int r) {
        if (sqlite3_get_autocommit(b->catalog->db) && b->error == 0)
                b->error = r;
        return r;
}

int catalog_batch_upsert(CatalogBatch *b, const CatalogFile *f, int64_t generation) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        Catalog *c;
        int rc, r;

        if (!b || !f || !f->rel_path)
                return -EINVAL;
        if (b->error < 0)
                return b->error;
        c = b->catalog;

        r = catalog_statement(c, STMT_UPSERT, &s);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 1, f->origin_id);
        if (rc == SQLITE_OK) rc = bind_string(s, 2, f->rel_path);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 3, (sqlite3_int64) f->size);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 4, f->mtime_ns);
        if (rc == SQLITE_OK) rc = bind_string(s, 5, f->format);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 6, f->parsed);
        if (rc == SQLITE_OK) rc = bind_string(s, 7, f->tags.title);
        if (rc == SQLITE_OK) rc = bind_string(s, 8, f->tags.artist);
        if (rc == SQLITE_OK) rc = bind_string(s, 9, f->tags.album);
        if (rc == SQLITE_OK) rc = bind_string(s, 10, f->tags.albumartist);
        if (rc == SQLITE_OK) rc = bind_string(s, 11, f->tags.genre);
        if (rc == SQLITE_OK) rc = bind_string(s, 12, f->tags.composer);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 13, f->tags.year);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 14, f->tags.track);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 15, f->tags.disc);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 16, f->tags.disc_total);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int(s, 17, f->tags.compilation);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 18, f->tags.duration_ms);
        if (rc == SQLITE_OK) rc = sqlite3_bind_int64(s, 19, generation);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "upsert bind");

        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return batch_failed(b, catalog_error(c, rc, "upsert"));
        content_changed(c, 1);
        return 0;
}

int catalog_batch_touch(CatalogBatch *b, int64_t origin_id, const char *rel_path, int64_t generation) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        Catalog *c;
        int rc, r;

        if (!b || !rel_path)
                return -EINVAL;
        if (b->error < 0)
                return b->error;
        c = b->catalog;

        r = catalog_statement(c, STMT_TOUCH, &s);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 1, origin_id);
        if (rc == SQLITE_OK)
                rc = bind_string(s, 2, rel_path);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(s, 3, generation);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "touch bind");

        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return batch_failed(b, catalog_error(c, rc, "touch"));
        if (sqlite3_changes(c->db) == 0)
                return -ENOENT;         /* not in the catalog: the caller should upsert it */
        return 0;
}

static void batch_end(CatalogBatch *b) {
        Catalog *c = b->catalog;
        c->batch = NULL;
        free(b);
        catalog_unlock(c);
}

int catalog_batch_commit(CatalogBatch *b) {
        Catalog *c;
        int r;

        if (!b)
                return -EINVAL;
        c = b->catalog;

        r = b->error;
        if (r < 0)
                log_error_errno(r, "Catalog %s: batch not committed, it failed earlier: %m", c->path);
        else {
                r = FAILPOINT(CATALOG_COMMIT);
                if (r < 0)
                        log_error_errno(r, "Catalog %s: batch commit failed (failpoint): %m", c->path);
                else
                        r = catalog_exec(c, "COMMIT");
        }
        if (r < 0)
                catalog_rollback(c);    /* a failed COMMIT (e.g. busy) leaves the transaction open */

        batch_end(b);
        return r;
}

void catalog_batch_abort(CatalogBatch *b) {
        if (!b)
                return;
        catalog_rollback(b->catalog);
        batch_end(b);
}

/* ---- sync (issue #6): resumable full scans and scans of one subtree ----
 *
 * A full scan in progress is recorded in meta as 'scan:<origin_id>:generation' (its generation) and
 * 'scan:<origin_id>:files' (files committed so far, written inside each batch's transaction). A
 * scan killed halfway leaves them behind, and the next full scan of that origin takes the same
 * generation back instead of starting over; catalog_scan_checkpoint_clear() ends the record. These
 * statements run once per scan or per batch, so they are prepared on the spot rather than cached. */

static int meta_key(char *buf, size_t size, int64_t origin_id, const char *what) {
        int n = snprintf(buf, size, "scan:%" PRIi64 ":%s", origin_id, what);
        return n < 0 || (size_t) n >= size ? -EINVAL : 0;
}

static void stmt_finalizep(sqlite3_stmt **s) {
        if (*s)
                (void) sqlite3_finalize(*s);
}
#define _cleanup_stmt_finalize_ _cleanup_(stmt_finalizep)

static int catalog_prepare(Catalog *c, const char *sql, sqlite3_stmt **ret) {
        int rc = sqlite3_prepare_v2(c->db, sql, -1, ret, NULL);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "prepare");
        return 0;
}

/* Under the lock. 0 with *ret set, or -ENOENT when the key is absent. */
static int meta_get_locked(Catalog *c, const char *key, int64_t *ret) {
        _cleanup_stmt_finalize_ sqlite3_stmt *s = NULL;
        int rc, r;

        r = catalog_prepare(c, "SELECT value FROM meta WHERE key = ?1", &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, key);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "meta bind");
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "meta get");
        *ret = sqlite3_column_int64(s, 0);
        return 0;
}

static int meta_set_locked(Catalog *c, const char *key, int64_t value) {
        _cleanup_stmt_finalize_ sqlite3_stmt *s = NULL;
        int rc, r;

        r = catalog_prepare(c, "INSERT INTO meta (key, value) VALUES (?1, ?2) "
                               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, key);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(s, 2, value);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "meta bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "meta set");
        return 0;
}

int catalog_full_scan_begin(Catalog *c, int64_t origin_id, int64_t *ret_generation, uint64_t *ret_resumed_files) {
        char gen_key[64], files_key[64];
        int64_t generation = 0, files = 0;
        int r;

        if (!c || !ret_generation)
                return -EINVAL;
        if (meta_key(gen_key, sizeof gen_key, origin_id, "generation") < 0 ||
            meta_key(files_key, sizeof files_key, origin_id, "files") < 0)
                return -EINVAL;

        {
                _cleanup_catalog_unlock_ Catalog *locked = NULL;
                r = catalog_lock(c);
                if (r < 0)
                        return r;
                locked = c;
                r = meta_get_locked(c, gen_key, &generation);
                if (r < 0 && r != -ENOENT)
                        return r;
                if (r >= 0) {
                        if (meta_get_locked(c, files_key, &files) < 0)
                                files = 0;
                        *ret_generation = generation;
                        if (ret_resumed_files)
                                *ret_resumed_files = files > 0 ? (uint64_t) files : 0;
                        return 1;
                }
        }

        r = catalog_scan_begin(c, origin_id, &generation);
        if (r < 0)
                return r;

        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;
        r = catalog_exec(c, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        r = meta_set_locked(c, gen_key, generation);
        if (r >= 0)
                r = meta_set_locked(c, files_key, 0);
        if (r >= 0)
                r = catalog_exec(c, "COMMIT");
        if (r < 0) {
                catalog_rollback(c);
                return r;
        }
        *ret_generation = generation;
        if (ret_resumed_files)
                *ret_resumed_files = 0;
        return 0;
}

int catalog_batch_checkpoint(CatalogBatch *b, int64_t origin_id, uint64_t files_done) {
        char key[64];
        int r;

        if (!b || meta_key(key, sizeof key, origin_id, "files") < 0)
                return -EINVAL;
        if (b->error < 0)
                return b->error;
        r = meta_set_locked(b->catalog, key, files_done > INT64_MAX ? INT64_MAX : (int64_t) files_done);
        if (r < 0)
                return batch_failed(b, r);
        return 0;
}

int catalog_scan_checkpoint_clear(Catalog *c, int64_t origin_id) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_finalize_ sqlite3_stmt *s = NULL;
        char pattern[64];
        int rc, r;

        if (!c || meta_key(pattern, sizeof pattern, origin_id, "%") < 0)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;
        r = catalog_prepare(c, "DELETE FROM meta WHERE key LIKE ?1", &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, pattern);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "checkpoint bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "checkpoint clear");
        return 0;
}

int catalog_scan_in_progress(Catalog *c, int64_t origin_id, bool *ret) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        char key[64];
        int64_t v;
        int r;

        if (!c || !ret || meta_key(key, sizeof key, origin_id, "generation") < 0)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;
        r = meta_get_locked(c, key, &v);
        if (r < 0 && r != -ENOENT)
                return r;
        *ret = r >= 0;
        return 0;
}

int catalog_batch_remove(CatalogBatch *b, int64_t origin_id, const char *rel_path) {
        _cleanup_stmt_finalize_ sqlite3_stmt *s = NULL;
        Catalog *c;
        int rc, r;

        if (!b || !rel_path)
                return -EINVAL;
        if (b->error < 0)
                return b->error;
        c = b->catalog;
        r = catalog_prepare(c, "DELETE FROM files WHERE origin_id = ?1 AND rel_path = ?2", &s);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 1, origin_id);
        if (rc == SQLITE_OK)
                rc = bind_string(s, 2, rel_path);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "remove bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return batch_failed(b, catalog_error(c, rc, "remove"));
        if (sqlite3_changes(c->db) == 0)
                return -ENOENT;
        content_changed(c, 1);
        return 0;
}

/* The rows at prefix itself (a file) and below "prefix/" (a directory), as two index ranges: a
 * byte-wise range ["prefix/", "prefix0") is exactly what starts with "prefix/" ('0' follows '/'). */
#define UNDER_PREFIX "(f.rel_path = ?2 OR (f.rel_path >= ?3 AND f.rel_path < ?4))"

static int bind_prefix(Catalog *c, sqlite3_stmt *s, int64_t origin_id, const char *prefix, char **slash, char **zero) {
        int rc;

        if (asprintf(slash, "%s/", prefix) < 0 || asprintf(zero, "%s0", prefix) < 0)
                return -ENOMEM;
        rc = sqlite3_bind_int64(s, 1, origin_id);
        if (rc == SQLITE_OK)
                rc = bind_string(s, 2, prefix);
        if (rc == SQLITE_OK)
                rc = bind_string(s, 3, *slash);
        if (rc == SQLITE_OK)
                rc = bind_string(s, 4, *zero);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "prefix bind");
        return 0;
}

int catalog_load_origin_files_under(Catalog *c, int64_t origin_id, const char *prefix, CatalogFile **ret, size_t *ret_n) {
        _cleanup_free_ char *slash = NULL, *zero = NULL;
        FileList l = {};
        int rc, r;

        if (!c || !prefix || !ret || !ret_n)
                return -EINVAL;
        if (!prefix[0])
                return catalog_load_origin_files(c, origin_id, ret, ret_n);

        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;
        _cleanup_stmt_finalize_ sqlite3_stmt *s = NULL;
        r = catalog_prepare(c, "SELECT " FILE_COLUMNS " FROM files AS f JOIN origins AS o ON o.id = f.origin_id "
                               "WHERE f.origin_id = ?1 AND " UNDER_PREFIX " ORDER BY f.rel_path", &s);
        if (r < 0)
                return r;
        r = bind_prefix(c, s, origin_id, prefix, &slash, &zero);
        if (r < 0)
                return r;
        for (;;) {
                rc = sqlite3_step(s);
                if (rc == SQLITE_DONE)
                        break;
                if (rc != SQLITE_ROW) {
                        file_list_done(&l);
                        return catalog_error(c, rc, "load files");
                }
                if (GREEDY_REALLOC(l.files, l.allocated, l.n + 1) < 0) {
                        file_list_done(&l);
                        return -ENOMEM;
                }
                r = read_file_row(s, false, &l.files[l.n]);
                if (r < 0) {
                        file_list_done(&l);
                        return r;
                }
                l.n++;
        }
        *ret = l.files;
        *ret_n = l.n;
        return 0;
}

int catalog_scan_finish_under(Catalog *c, int64_t origin_id, const char *prefix, int64_t generation, uint64_t *ret_removed) {
        _cleanup_free_ char *slash = NULL, *zero = NULL;
        int rc, r;

        if (!c || !prefix)
                return -EINVAL;
        if (!prefix[0])
                return catalog_scan_finish(c, origin_id, generation, ret_removed);

        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;
        _cleanup_stmt_finalize_ sqlite3_stmt *s = NULL;
        r = catalog_prepare(c, "DELETE FROM files AS f WHERE f.origin_id = ?1 AND " UNDER_PREFIX " AND f.generation < ?5", &s);
        if (r < 0)
                return r;
        r = bind_prefix(c, s, origin_id, prefix, &slash, &zero);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 5, generation);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "scan finish bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "scan finish");
        content_changed(c, (uint64_t) sqlite3_changes64(c->db));
        if (ret_removed)
                *ret_removed = (uint64_t) sqlite3_changes64(c->db);
        return 0;
}

int catalog_nodes_foreach(Catalog *c, catalog_node_fn fn, void *userdata) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        if (!c || !fn)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        r = catalog_statement(c, STMT_NODES_ALL, &s);
        if (r < 0)
                return r;
        for (;;) {
                rc = sqlite3_step(s);
                if (rc == SQLITE_DONE)
                        return 0;
                if (rc != SQLITE_ROW)
                        return catalog_error(c, rc, "nodes");
                const char *path = (const char *) sqlite3_column_text(s, 0);
                if (!path)
                        return -ENOMEM;
                r = fn(path, sqlite3_column_int64(s, 1), userdata);
                if (r < 0)
                        return r;
        }
}

static int node_get(Catalog *c, const char *path, int64_t *ret) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        r = catalog_statement(c, STMT_NODE_GET, &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, path);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "node bind");
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
                return 0;
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "node lookup");
        *ret = sqlite3_column_int64(s, 0);
        return 1;
}

static int node_insert(Catalog *c, const char *path, int64_t *ret) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        r = catalog_statement(c, STMT_NODE_INSERT, &s);
        if (r < 0)
                return r;
        rc = bind_string(s, 1, path);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "node bind");
        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW)
                return catalog_error(c, rc, "node insert");
        *ret = sqlite3_column_int64(s, 0);
        rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
                return catalog_error(c, rc, "node insert");
        return 0;
}

int catalog_nodes_assign(Catalog *c, const char *const *paths, size_t n, int64_t *ids) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        int r;

        if (!c || (n > 0 && (!paths || !ids)))
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!paths[i])
                        return -EINVAL;
        if (n == 0)
                return 0;

        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        /* Look up before inserting: after the first run nearly every path exists already. */
        r = catalog_exec(c, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = node_get(c, paths[i], &ids[i]);
                if (r == 0)
                        r = node_insert(c, paths[i], &ids[i]);
                if (r < 0) {
                        catalog_rollback(c);
                        return r;
                }
        }
        r = catalog_exec(c, "COMMIT");
        if (r < 0) {
                catalog_rollback(c);
                return r;
        }
        return 0;
}

/* ---- Full-text search (v2: files_fts) ---- */

#define SEARCH_DEADLINE_NSEC (5ULL * 1000 * 1000 * 1000)
/* The score: musicfs_rank(), BM25 with per-column weights (below), registered on the search
 * connection. FTS5's own bm25() counts every row that holds each phrase before it scores the first
 * one (the IDF): for "the" at 1M tracks that alone is 20-40 ms, however few rows are then scored.
 * musicfs_rank() counts up to SEARCH_IDF_COUNT_MAX rows in rowid order and extrapolates from how far
 * into the rowid range it got (rowids of files are spread evenly enough), so a common word costs a
 * bounded count, and a rare one is counted exactly. ?6 is max(files.id). */
#define SEARCH_BM25 "musicfs_rank(files_fts, ?6)"
#define SEARCH_IDF_COUNT_MAX 5000
#define SEARCH_BM25_K1 1.2
#define SEARCH_BM25_B 0.75
/* In the order of files_fts's columns: a word in the artist or the title says more about a track
 * than one in its genre. */
static const double search_column_weights[] = { 4.0, 2.0, 3.0, 4.0, 1.0, 2.0, 1.0 };
#define SEARCH_TAGS "f.artist, f.albumartist, f.album, f.title"

static int search_past_deadline(void *userdata) {
        return now_nsec(CLOCK_MONOTONIC) > *(const uint64_t *) userdata;
}

typedef struct RankData {
        int n_phrases;
        double avgdl;           /* mean tokens per row, all columns */
        double *idf;            /* per phrase */
} RankData;

typedef struct PhraseCount {
        int64_t n;
        int64_t last_rowid;
} PhraseCount;

static int rank_count_cb(const Fts5ExtensionApi *api, Fts5Context *fts, void *userdata) {
        PhraseCount *pc = userdata;
        pc->last_rowid = api->xRowid(fts);
        return ++pc->n >= SEARCH_IDF_COUNT_MAX ? SQLITE_DONE : SQLITE_OK;
}

static int rank_data_new(const Fts5ExtensionApi *api, Fts5Context *fts, int64_t max_rowid, RankData **ret) {
        sqlite3_int64 rows = 0, tokens = 0;
        RankData *d;
        int rc;

        rc = api->xRowCount(fts, &rows);
        if (rc == SQLITE_OK)
                rc = api->xColumnTotalSize(fts, -1, &tokens);
        if (rc != SQLITE_OK)
                return rc;
        d = calloc(1, sizeof *d);
        if (!d)
                return SQLITE_NOMEM;
        d->n_phrases = api->xPhraseCount(fts);
        d->avgdl = rows > 0 ? (double) tokens / (double) rows : 1.0;
        d->idf = calloc((size_t) (d->n_phrases > 0 ? d->n_phrases : 1), sizeof *d->idf);
        if (!d->idf) {
                free(d);
                return SQLITE_NOMEM;
        }
        for (int p = 0; p < d->n_phrases; p++) {
                PhraseCount pc = {};
                rc = api->xQueryPhrase(fts, p, &pc, rank_count_cb);
                if (rc != SQLITE_OK) {
                        free(d->idf);
                        free(d);
                        return rc;
                }
                double hits = (double) pc.n;
                if (pc.n >= SEARCH_IDF_COUNT_MAX && pc.last_rowid > 0 && max_rowid > pc.last_rowid)
                        hits = hits * (double) max_rowid / (double) pc.last_rowid;
                if (hits > (double) rows)
                        hits = (double) rows;
                double idf = log(((double) rows - hits + 0.5) / (hits + 0.5));
                d->idf[p] = idf > 1e-6 ? idf : 1e-6;
        }
        *ret = d;
        return SQLITE_OK;
}

static void rank_data_free(void *p) {
        RankData *d = p;
        if (d) {
                free(d->idf);
                free(d);
        }
}

/* musicfs_rank(files_fts, max_rowid): higher is better. */
static void rank_function(const Fts5ExtensionApi *api, Fts5Context *fts, sqlite3_context *ctx, int n_args,
                          sqlite3_value **args) {
        double freq_stack[16], *freq = freq_stack, score = 0;
        int n_inst = 0, dl = 0, rc;
        RankData *d;

        d = api->xGetAuxdata(fts, 0);
        if (!d) {
                rc = rank_data_new(api, fts, n_args > 0 ? sqlite3_value_int64(args[0]) : 0, &d);
                if (rc == SQLITE_OK)
                        rc = api->xSetAuxdata(fts, d, rank_data_free);
                if (rc != SQLITE_OK) {
                        sqlite3_result_error_code(ctx, rc);
                        return;
                }
        }
        if (d->n_phrases > (int) ELEMENTSOF(freq_stack)) {
                freq = calloc((size_t) d->n_phrases, sizeof *freq);
                if (!freq) {
                        sqlite3_result_error_nomem(ctx);
                        return;
                }
        } else
                memset(freq_stack, 0, sizeof freq_stack);

        rc = api->xInstCount(fts, &n_inst);
        for (int i = 0; rc == SQLITE_OK && i < n_inst; i++) {
                int phrase, column, offset;
                rc = api->xInst(fts, i, &phrase, &column, &offset);
                if (rc == SQLITE_OK && phrase >= 0 && phrase < d->n_phrases && column >= 0)
                        freq[phrase] += column < (int) ELEMENTSOF(search_column_weights) ?
                                        search_column_weights[column] : 1.0;
        }
        if (rc == SQLITE_OK)
                rc = api->xColumnSize(fts, -1, &dl);
        if (rc == SQLITE_OK) {
                double norm = SEARCH_BM25_K1 * (1 - SEARCH_BM25_B + SEARCH_BM25_B * dl / d->avgdl);
                for (int p = 0; p < d->n_phrases; p++)
                        score += d->idf[p] * freq[p] * (SEARCH_BM25_K1 + 1) / (freq[p] + norm);
        }
        if (freq != freq_stack)
                free(freq);
        if (rc != SQLITE_OK)
                sqlite3_result_error_code(ctx, rc);
        else
                sqlite3_result_double(ctx, score);
}

static int search_register_rank(sqlite3 *db) {
        fts5_api *api = NULL;
        sqlite3_stmt *s = NULL;
        int rc;

        rc = sqlite3_prepare_v2(db, "SELECT fts5(?1)", -1, &s, NULL);
        if (rc == SQLITE_OK) {
                (void) sqlite3_bind_pointer(s, 1, (void *) &api, "fts5_api_ptr", NULL);
                (void) sqlite3_step(s);
        }
        sqlite3_finalize(s);
        if (!api)
                return SQLITE_ERROR;
        return api->xCreateFunction(api, "musicfs_rank", NULL, rank_function, NULL);
}

/* FTS5's own check: the index against files, every blob decoded. Main connection, lock held. */
static int search_index_check_locked(Catalog *c) {
        int rc = sqlite3_exec(c->db, "INSERT INTO files_fts (files_fts) VALUES ('integrity-check')", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
                return 0;
        if ((rc & 0xff) == SQLITE_CORRUPT) {
                log_warning("Catalog %s: the search index is damaged: %s", c->path, sqlite3_errmsg(c->db));
                return -EBADMSG;
        }
        return catalog_error(c, rc, "search index integrity-check");
}

/* Whether the caller's stop flag is set; a progress handler, so the check and its rebuild stop
 * within a few milliseconds of it. */
static int search_index_cancelled(void *userdata) {
        return atomic_load((const atomic_bool *) userdata);
}

static int search_index_rebuild_locked(Catalog *c) {
        uint64_t start = now_nsec(CLOCK_MONOTONIC);
        int r;

        r = catalog_exec(c, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        r = catalog_exec(c, "INSERT INTO files_fts (files_fts) VALUES ('rebuild')");
        if (r >= 0)
                r = catalog_exec(c, "COMMIT");
        if (r < 0) {
                catalog_rollback(c);
                if (r == -ECANCELED)
                        return r;       /* the index stays as it was, damaged: whoever stopped us knows */
                return log_error_errno(r, "Catalog %s: cannot rebuild the search index: %m", c->path);
        }
        atomic_fetch_add(&c->rebuilds, 1);
        log_notice("Catalog %s: search index rebuilt from the catalog in %.2f s", c->path,
                   (double) (now_nsec(CLOCK_MONOTONIC) - start) / 1e9);
        return 0;
}

/* 0: the index was fine; 1: it was damaged and has been rebuilt. */
static int search_index_repair_locked(Catalog *c) {
        int r = search_index_check_locked(c);
        if (r != -EBADMSG)
                return r;
        r = search_index_rebuild_locked(c);
        return r < 0 ? r : 1;
}

/* Runs one of the search-index maintenance steps under the catalog's lock. */
static int search_index_locked_call(Catalog *c, int (*step)(Catalog *c)) {
        if (!c)
                return -EINVAL;
        int r = catalog_lock(c);
        if (r < 0)
                return r;
        _cleanup_catalog_unlock_ Catalog *locked = c;
        return step(c);
}

int catalog_search_check(Catalog *c) {
        return search_index_locked_call(c, search_index_check_locked);
}

int catalog_search_rebuild(Catalog *c) {
        return search_index_locked_call(c, search_index_rebuild_locked);
}

int catalog_search_repair(Catalog *c) {
        return search_index_locked_call(c, search_index_repair_locked);
}

int catalog_search_repair_if_due(Catalog *c, const atomic_bool *cancel) {
        uint64_t start = now_nsec(CLOCK_MONOTONIC);
        int r;

        if (!c)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        _cleanup_catalog_unlock_ Catalog *locked = c;
        if (!c->search_check_due)
                return 0;
        if (cancel && atomic_load(cancel))
                return log_info_errno(ECANCELED, "Catalog %s: search index check skipped: stopping; "
                                      "it runs at the next start", c->path);

        if (cancel)
                sqlite3_progress_handler(c->db, 10000, search_index_cancelled, (void *) cancel);
        r = search_index_check_locked(c);
        if (r == -EBADMSG) {
                /* Searches meanwhile would meet the damage and ask for a rebuild of their own. */
                atomic_store(&c->repairing, true);
                r = search_index_rebuild_locked(c);
                atomic_store(&c->repairing, false);
                r = r < 0 ? r : 1;
        }
        if (cancel)
                sqlite3_progress_handler(c->db, 0, NULL, NULL);

        double seconds = (double) (now_nsec(CLOCK_MONOTONIC) - start) / 1e9;
        if (r == -ECANCELED)
                /* Still due: catalog_close() leaves no clean-close marker, the next open asks again. */
                return log_info_errno(r, "Catalog %s: search index check stopped after %.2f s; "
                                      "it runs at the next start", c->path, seconds);
        c->search_check_due = false;
        if (r < 0) {
                c->corrupt_seen = true;         /* the next open checks again */
                return log_error_errno(r, "Catalog %s: search index check failed after %.2f s: %m",
                                       c->path, seconds);
        }
        log_info("Catalog %s: search index checked in %.2f s: %s", c->path, seconds,
                 r > 0 ? "damaged, rebuilt" : "sound");
        return r;
}

void catalog_search_hits_free(CatalogSearchHit *h, size_t n) {
        if (!h)
                return;
        for (size_t i = 0; i < n; i++) {
                free(h[i].artist);
                free(h[i].album);
                free(h[i].title);
        }
        free(h);
}

/* SQLite's verdict on a search, from the search connection. SQLITE_ERROR is FTS5 refusing the MATCH
 * expression: the caller's mistake, not the catalog's. */
static int search_error(Catalog *c, int rc) {
        const char *message = sqlite3_errmsg(c->search_db);
        switch (rc & 0xff) {
        case SQLITE_CORRUPT:
                log_warning("Catalog %s: search hit a damaged index: %s", c->path, message);
                return -EBADMSG;
        case SQLITE_ERROR:
                return log_debug_errno(EINVAL, "Catalog %s: search refused: %s", c->path, message);
        case SQLITE_INTERRUPT:
                return log_warning_errno(ETIMEDOUT, "Catalog %s: search took longer than %llu s, stopped",
                                         c->path, SEARCH_DEADLINE_NSEC / 1000000000ULL);
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return log_warning_errno(EBUSY, "Catalog %s: search: %s", c->path, message);
        case SQLITE_NOMEM:
                return -ENOMEM;
        default:
                return log_error_errno(EIO, "Catalog %s: search: %s", c->path, message);
        }
}

static int search_db_open_locked(Catalog *c) {
        sqlite3 *db = NULL;
        int rc;

        if (c->search_db)
                return 0;
        rc = sqlite3_open_v2(c->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK) {
                int r = log_error_errno(EIO, "Catalog %s: cannot open a search connection: %s", c->path,
                                        db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
                sqlite3_close(db);
                return r;
        }
        (void) sqlite3_extended_result_codes(db, 1);
        (void) sqlite3_busy_timeout(db, CATALOG_BUSY_TIMEOUT_MS);
        rc = search_register_rank(db);
        if (rc != SQLITE_OK) {
                sqlite3_close(db);
                return log_error_errno(EIO, "Catalog %s: cannot register the search ranking with FTS5", c->path);
        }
        c->search_db = db;
        return 0;
}

static int search_step_rows(Catalog *c, sqlite3_stmt *s, size_t limit, CatalogSearchHit **ret, size_t *ret_n) {
        CatalogSearchHit *hits = NULL;
        size_t n = 0, allocated = 0;
        int rc, r = 0;

        for (;;) {
                rc = sqlite3_step(s);
                if (rc == SQLITE_DONE)
                        break;
                if (rc != SQLITE_ROW) {
                        r = search_error(c, rc);
                        break;
                }
                if (n >= limit)
                        break;
                if (GREEDY_REALLOC(hits, allocated, n + 1) < 0) {
                        r = -ENOMEM;
                        break;
                }
                CatalogSearchHit *h = &hits[n++];
                *h = (CatalogSearchHit) {
                        .file_id = sqlite3_column_int64(s, 0),
                        .score = sqlite3_column_double(s, 1),
                };
                /* The track's artist, else the album's. */
                int artist_col = sqlite3_column_type(s, 2) != SQLITE_NULL ? 2 : 3;
                if (column_string(s, artist_col, &h->artist) < 0 || column_string(s, 4, &h->album) < 0 ||
                    column_string(s, 5, &h->title) < 0) {
                        r = -ENOMEM;
                        break;
                }
        }
        if (r < 0) {
                catalog_search_hits_free(hits, n);
                return r;
        }
        *ret = hits;
        *ret_n = n;
        return 0;
}

/* Binds ?6, the largest files.id (the end of the rowid range, for musicfs_rank's estimate). */
static int search_max_rowid(Catalog *c, sqlite3_stmt *query) {
        sqlite3_stmt *s = NULL;
        int rc = sqlite3_prepare_v2(c->search_db, "SELECT max(id) FROM files", -1, &s, NULL);
        if (rc == SQLITE_OK) {
                rc = sqlite3_step(s);
                rc = rc == SQLITE_ROW ? sqlite3_bind_int64(query, 6, sqlite3_column_int64(s, 0)) : rc;
        }
        sqlite3_finalize(s);
        return rc;
}

static int search_run(Catalog *c, const CatalogSearchQuery *q, CatalogSearchHit **ret, size_t *ret_n) {
        bool by_year = q->year_min > 0 || q->year_max > 0;
        size_t cap = q->cap > 0 ? q->cap : CATALOG_SEARCH_CAP_DEFAULT;
        const char *sql;
        sqlite3_stmt *s = NULL;
        uint64_t deadline;
        int rc, r;

        if (!q->match)
                sql = "SELECT f.id, 0.0, " SEARCH_TAGS " FROM files AS f "
                      "WHERE f.year BETWEEN ?3 AND ?4 ORDER BY f.year, f.id LIMIT ?5";
        else if (q->ranked && by_year)
                /* Score only the first cap candidates: bm25 over every row of a common word is what
                 * would make it slow. The inner LIMIT keeps SQLite from flattening the subquery. */
                sql = "SELECT h.id, h.score, " SEARCH_TAGS " FROM ("
                      "SELECT files_fts.rowid AS id, " SEARCH_BM25 " AS score FROM files_fts "
                      "CROSS JOIN files AS y ON y.id = files_fts.rowid "
                      "WHERE files_fts MATCH ?1 AND y.year BETWEEN ?3 AND ?4 LIMIT ?2) AS h "
                      "CROSS JOIN files AS f ON f.id = h.id ORDER BY h.score DESC, h.id LIMIT ?5";
        else if (q->ranked)
                sql = "SELECT h.id, h.score, " SEARCH_TAGS " FROM ("
                      "SELECT files_fts.rowid AS id, " SEARCH_BM25 " AS score FROM files_fts "
                      "WHERE files_fts MATCH ?1 LIMIT ?2) AS h "
                      "CROSS JOIN files AS f ON f.id = h.id ORDER BY h.score DESC, h.id LIMIT ?5";
        else if (by_year)
                sql = "SELECT files_fts.rowid, 0.0, " SEARCH_TAGS " FROM files_fts "
                      "CROSS JOIN files AS f ON f.id = files_fts.rowid "
                      "WHERE files_fts MATCH ?1 AND f.year BETWEEN ?3 AND ?4 LIMIT ?5";
        else
                sql = "SELECT files_fts.rowid, 0.0, " SEARCH_TAGS " FROM files_fts "
                      "CROSS JOIN files AS f ON f.id = files_fts.rowid "
                      "WHERE files_fts MATCH ?1 LIMIT ?5";

        r = pthread_mutex_lock(&c->search_lock);
        if (r != 0)
                return -r;
        r = search_db_open_locked(c);
        if (r < 0)
                goto finish;

        rc = sqlite3_prepare_v3(c->search_db, sql, -1, 0, &s, NULL);
        if (rc != SQLITE_OK) {
                r = search_error(c, rc);
                goto finish;
        }
        rc = SQLITE_OK;
        if (q->match)
                rc = sqlite3_bind_text(s, 1, q->match, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(s, 2, (sqlite3_int64) (cap > q->limit ? cap : q->limit));
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int(s, 3, q->year_min > 0 ? q->year_min : 1);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int(s, 4, q->year_max > 0 ? q->year_max : INT_MAX);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(s, 5, (sqlite3_int64) q->limit);
        if (rc == SQLITE_OK && q->match && q->ranked)
                rc = search_max_rowid(c, s);
        if (rc != SQLITE_OK) {
                r = search_error(c, rc);
                goto finish;
        }

        deadline = now_nsec(CLOCK_MONOTONIC) + SEARCH_DEADLINE_NSEC;
        sqlite3_progress_handler(c->search_db, 10000, search_past_deadline, &deadline);
        r = search_step_rows(c, s, q->limit, ret, ret_n);
        sqlite3_progress_handler(c->search_db, 0, NULL, NULL);

finish:
        sqlite3_finalize(s);
        pthread_mutex_unlock(&c->search_lock);
        return r;
}

static void *search_rebuild_main(void *userdata) {
        Catalog *c = userdata;

        /* Damage was seen: whatever becomes of this rebuild (catalog_close() may interrupt it), the
         * next open checks the file and the index instead of trusting a clean-close marker. */
        if (catalog_lock(c) >= 0) {
                c->corrupt_seen = true;
                if (atomic_load(&c->rebuilds) == c->rebuilds_seen_by_search)
                        (void) search_index_rebuild_locked(c);  /* logs either way */
                else
                        log_info("Catalog %s: the search index was rebuilt since the search that found it damaged",
                                 c->path);
                catalog_unlock(c);
        }
        atomic_store(&c->rebuilding, false);
        return NULL;
}

/* -EBUSY: a rebuild runs (now). rebuilds_seen: c->rebuilds when the search that met the damage began. */
static int search_rebuild_start(Catalog *c, uint64_t rebuilds_seen) {
        int r;

        r = pthread_mutex_lock(&c->search_lock);
        if (r != 0)
                return -r;
        if (atomic_load(&c->rebuilding)) {
                pthread_mutex_unlock(&c->search_lock);
                return -EBUSY;
        }
        if (c->rebuild_thread_started) {
                (void) pthread_join(c->rebuild_thread, NULL);   /* finished: rebuilding is false */
                c->rebuild_thread_started = false;
        }
        atomic_store(&c->rebuilding, true);
        c->rebuilds_seen_by_search = rebuilds_seen;
        r = pthread_create(&c->rebuild_thread, NULL, search_rebuild_main, c);
        if (r != 0) {
                atomic_store(&c->rebuilding, false);
                pthread_mutex_unlock(&c->search_lock);
                return log_error_errno(r, "Catalog %s: cannot start rebuilding the search index: %m", c->path);
        }
        c->rebuild_thread_started = true;
        pthread_mutex_unlock(&c->search_lock);
        log_warning("Catalog %s: rebuilding the damaged search index in the background", c->path);
        return -EBUSY;
}

int catalog_search(Catalog *c, const CatalogSearchQuery *q, CatalogSearchHit **ret, size_t *ret_n) {
        int r;

        if (!c || !q || !ret || !ret_n || q->limit == 0)
                return -EINVAL;
        if (q->year_min < 0 || q->year_max < 0 || (q->year_max > 0 && q->year_min > q->year_max))
                return -EINVAL;

        if (atomic_load(&c->rebuilding) || atomic_load(&c->repairing))
                return -EBUSY;
        uint64_t rebuilds = atomic_load(&c->rebuilds);
        r = search_run(c, q, ret, ret_n);
        if (r != -EBADMSG)
                return r;
        /* The index is damaged: rebuild it from files. The tree, and so browsing, never reads it. */
        return search_rebuild_start(c, rebuilds);
}

bool catalog_search_rebuilding(Catalog *c) {
        return c && (atomic_load(&c->rebuilding) || atomic_load(&c->repairing));
}
