/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "catalog.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"

/* Schema migrations, applied in order, each in its own transaction; PRAGMA user_version counts how
 * many have been applied. Never edit a released entry: append a new one. A later migration adds
 * the FTS5 index (D5) as an external-content table over files (content_rowid = files.id) plus
 * triggers, which is why files keeps an INTEGER PRIMARY KEY.
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
};

#define CATALOG_SCHEMA_VERSION ((int) ELEMENTSOF(catalog_migrations))
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
        for (size_t i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(c->statements[i]);
        if (c->db && sqlite3_close(c->db) != SQLITE_OK)
                log_warning("Catalog %s: close: %s", c->path, sqlite3_errmsg(c->db));
        pthread_mutex_destroy(&c->lock);
        free(c->path);
        free(c);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Catalog *, catalog_free);

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

static void clean_marker_write(const char *path) {
        _cleanup_free_ char *marker = clean_marker_path(path);
        _cleanup_fclose_ FILE *f = NULL;
        struct stat st;

        if (!marker || stat(path, &st) < 0)
                return;
        f = fopen(marker, "we");
        if (!f)
                return;
        fprintf(f, "%llu %llu %lld %lld %ld\n", (unsigned long long) st.st_dev, (unsigned long long) st.st_ino,
                (long long) st.st_size, (long long) st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

/* True when the marker matched; the marker is gone afterwards either way. */
static bool clean_marker_consume(const char *path) {
        _cleanup_free_ char *marker = clean_marker_path(path), *wal = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        unsigned long long dev, ino;
        long long size, sec;
        long nsec;
        struct stat st;
        bool clean;

        if (!marker)
                return false;
        f = fopen(marker, "re");
        if (!f)
                return false;
        clean = fscanf(f, "%llu %llu %lld %lld %ld", &dev, &ino, &size, &sec, &nsec) == 5 &&
                stat(path, &st) == 0 && st.st_dev == dev && st.st_ino == ino && st.st_size == size &&
                st.st_mtim.tv_sec == sec && st.st_mtim.tv_nsec == nsec &&
                asprintf(&wal, "%s-wal", path) >= 0 && access(wal, F_OK) < 0 && errno == ENOENT;
        if (unlink(marker) < 0 && errno != ENOENT)
                clean = false;  /* it would vouch for the file again next time */
        return clean;
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
        c->path = strdup(path);
        if (!c->path)
                return log_error_errno(ENOMEM, "Catalog %s: out of memory", path);
        bool closed_cleanly = clean_marker_consume(path);

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
        int rc, r;

        if (!c)
                return;

        r = catalog_lock(c);
        if (r == -EDEADLK && c->batch) {
                /* The caller closes with its own batch still open: roll it back, the batch is gone. */
                catalog_rollback(c);
                free(TAKE_PTR(c->batch));
        } else if (r < 0)
                return;

        (void) sqlite3_exec(c->db, "PRAGMA optimize", NULL, NULL, NULL);
        rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK)
                (void) catalog_error(c, rc, "checkpoint");
        catalog_unlock(c);

        _cleanup_free_ char *path = rc == SQLITE_OK && !c->corrupt_seen ? strdup(c->path) : NULL;
        catalog_free(c);
        /* After the close: the last connection's close may still touch the file. */
        if (path)
                clean_marker_write(path);
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
        log_debug("Catalog %s: removed origin %s and its files", c->path, name);
        return 0;
}

static int read_file_row(sqlite3_stmt *s, CatalogFile *f) {
        int r;

        *f = (CatalogFile) {
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

        if ((r = column_string(s, 3, &f->rel_path)) < 0 ||
            (r = column_string(s, 6, &f->format)) < 0 ||
            (r = column_string(s, 8, &f->tags.title)) < 0 ||
            (r = column_string(s, 9, &f->tags.artist)) < 0 ||
            (r = column_string(s, 10, &f->tags.album)) < 0 ||
            (r = column_string(s, 11, &f->tags.albumartist)) < 0 ||
            (r = column_string(s, 12, &f->tags.genre)) < 0 ||
            (r = column_string(s, 13, &f->tags.composer)) < 0) {
                catalog_file_free_members(f);
                return r;
        }
        if (!f->rel_path) {     /* NOT NULL in the schema: only a damaged row gets here */
                catalog_file_free_members(f);
                return -EBADMSG;
        }
        return 0;
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

/* Runs a file query of one origin (bound to origin_id) to the end, appending its rows. */
static int catalog_append_origin_files(Catalog *c, int64_t origin_id, FileList *l) {
        _cleanup_stmt_reset_ sqlite3_stmt *s = NULL;
        int rc, r;

        r = catalog_statement(c, STMT_LOAD_ORIGIN_FILES, &s);
        if (r < 0)
                return r;
        rc = sqlite3_bind_int64(s, 1, origin_id);
        if (rc != SQLITE_OK)
                return catalog_error(c, rc, "load bind");

        for (;;) {
                rc = sqlite3_step(s);
                if (rc == SQLITE_DONE)
                        return 0;
                if (rc != SQLITE_ROW)
                        return catalog_error(c, rc, "load files");
                if (l->n == l->allocated) {
                        size_t want = l->allocated ? l->allocated * 2 : 1024;
                        CatalogFile *p = reallocarray(l->files, want, sizeof *l->files);
                        if (!p)
                                return log_error_errno(ENOMEM, "Catalog %s: out of memory loading files", c->path);
                        l->files = p;
                        l->allocated = want;
                }
                r = read_file_row(s, &l->files[l->n]);
                if (r < 0)
                        return log_error_errno(r, "Catalog %s: cannot read a file row: %m", c->path);
                l->n++;
        }
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
                if (n == allocated) {
                        size_t want = allocated ? allocated * 2 : 16;
                        int64_t *p = reallocarray(ids, want, sizeof *ids);
                        if (!p)
                                return -ENOMEM;
                        ids = p;
                        allocated = want;
                }
                ids[n++] = sqlite3_column_int64(s, 0);
        }
        *ret = TAKE_PTR(ids);
        *ret_n = n;
        return 0;
}

int catalog_load_files(Catalog *c, CatalogFile **ret, size_t *ret_n) {
        _cleanup_catalog_unlock_ Catalog *locked = NULL;
        _cleanup_free_ int64_t *origins = NULL;
        FileList l = {};
        size_t n_origins = 0;
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = catalog_lock(c);
        if (r < 0)
                return r;
        locked = c;

        /* Origin by origin, each read in rel_path order straight off the UNIQUE (origin_id, rel_path)
         * index: this is the startup path, and it saves sorting every row of the library. One read
         * transaction keeps the origins and their files one snapshot. */
        r = catalog_exec(c, "BEGIN");
        if (r < 0)
                return r;
        r = catalog_ordered_origins(c, &origins, &n_origins);
        for (size_t i = 0; r >= 0 && i < n_origins; i++)
                r = catalog_append_origin_files(c, origins[i], &l);
        if (r >= 0)
                r = catalog_exec(c, "COMMIT");
        if (r < 0) {
                catalog_rollback(c);
                file_list_done(&l);
                return r;
        }

        *ret = l.files;
        *ret_n = l.n;
        return 0;
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
