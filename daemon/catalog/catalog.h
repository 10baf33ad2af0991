/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The catalog (DESIGN.md D5): one SQLite database in WAL mode with versioned migrations. It owns the
 * schema and every SQL statement; nothing else in the daemon speaks SQL. It is a rebuildable cache of
 * the origins, never the source of truth.
 *
 * Tables: origins(id, name, url, priority); files(one row per origin file with its tags);
 * nodes(id = inode number, path UNIQUE) so that a virtual path keeps its inode across restarts and
 * rescans (D4). The connection is guarded by a mutex inside Catalog: any thread may call in. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Catalog Catalog;

typedef struct TrackTags {
        char *title, *artist, *album, *albumartist, *genre, *composer;
        int year;               /* 0 = none */
        int track, disc, disc_total;    /* 0 = none */
        bool compilation;
        int64_t duration_ms;    /* 0 = unknown */
} TrackTags;

void track_tags_free(TrackTags *t);     /* frees members, leaves t zeroed */

typedef struct CatalogFile {
        int64_t id;             /* files.id, 0 before insert */
        int64_t origin_id;
        unsigned origin_priority;       /* filled by catalog_load_files() */
        char *rel_path;         /* path inside the origin, '/'-separated, no leading '/' */
        uint64_t size;
        int64_t mtime_ns;
        char *format;           /* lower-case extension: flac, mp3, ogg, opus, m4a, wav */
        bool parsed;            /* false: tags could not be read; listed under the Unknown names */
        TrackTags tags;
} CatalogFile;

void catalog_file_free_members(CatalogFile *f);
void catalog_files_free(CatalogFile *f, size_t n);

/* Opens or creates, applies migrations, WAL, synchronous=NORMAL, runs PRAGMA quick_check.
 * -EBADMSG when the file is corrupt (not a database, or quick_check fails). */
int catalog_open(const char *path, Catalog **ret);
/* catalog_open(), and when the file is corrupt: moves it (and -wal/-shm) aside to
 * "<path>.corrupt-<unix time>", logs that, creates a fresh one and sets *ret_rebuilt. */
int catalog_open_or_rebuild(const char *path, Catalog **ret, bool *ret_rebuilt);
/* Checkpoints the WAL (TRUNCATE) and closes. NULL is fine. */
void catalog_close(Catalog *c);
int catalog_checkpoint(Catalog *c);
int catalog_quick_check(Catalog *c);    /* 0 or -EBADMSG */

/* Origins: returns the row id for name, inserting or updating url/priority. */
int catalog_origin_ensure(Catalog *c, const char *name, const char *url, unsigned priority, int64_t *ret_id);
int catalog_origin_remove(Catalog *c, const char *name);       /* and its files; -ENOENT when unknown */

/* All files of every origin, ordered by (origin priority, origin name, rel_path). */
int catalog_load_files(Catalog *c, CatalogFile **ret, size_t *ret_n);
/* Files of one origin, for a scan's unchanged test; ordered by rel_path. */
int catalog_load_origin_files(Catalog *c, int64_t origin_id, CatalogFile **ret, size_t *ret_n);
int catalog_count_files(Catalog *c, uint64_t *ret);

/* Scans: a generation stamps every row seen; rows of the origin not stamped by the end are removed.
 * A batch is one transaction (the "catalog-commit" failpoint fires at its commit). It holds the
 * catalog's lock from begin to commit/abort: other threads wait meanwhile, so read tags before
 * beginning a batch; the batch belongs to the thread that began it, and that thread calling any
 * other catalog function before ending it gets -EDEADLK. A failed upsert/touch whose error cost
 * SQLite the whole transaction (I/O, disk full) makes commit fail with that error; other failures
 * (e.g. -EINVAL for an unknown origin_id) cost only that row. scan_begin: -ENOENT unknown origin. */
typedef struct CatalogBatch CatalogBatch;
int catalog_scan_begin(Catalog *c, int64_t origin_id, int64_t *ret_generation);
int catalog_batch_begin(Catalog *c, CatalogBatch **ret);
int catalog_batch_upsert(CatalogBatch *b, const CatalogFile *f, int64_t generation);  /* new or changed */
int catalog_batch_touch(CatalogBatch *b, int64_t origin_id, const char *rel_path, int64_t generation); /* unchanged; -ENOENT: no such row */
int catalog_batch_commit(CatalogBatch *b);     /* frees b, success or not */
void catalog_batch_abort(CatalogBatch *b);     /* rolls back, frees b; NULL is fine */
int catalog_scan_finish(Catalog *c, int64_t origin_id, int64_t generation, uint64_t *ret_removed);

/* Virtual-path inode numbers (D4). Root "" is always 1. Calls fn for every stored (path, id). */
typedef int (*catalog_node_fn)(const char *path, int64_t id, void *userdata);
int catalog_nodes_foreach(Catalog *c, catalog_node_fn fn, void *userdata);
/* Inserts paths that have no id yet in one transaction; writes every path's id to ids[i]. */
int catalog_nodes_assign(Catalog *c, const char *const *paths, size_t n, int64_t *ids);
