/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The catalog (DESIGN.md D5): one SQLite database in WAL mode with versioned migrations. It owns the
 * schema and every SQL statement; nothing else in the daemon speaks SQL. It is a rebuildable cache of
 * the origins, never the source of truth.
 *
 * Tables: origins(id, name, url, priority); files(one row per origin file with its tags);
 * nodes(id = inode number, path UNIQUE) so that a virtual path keeps its inode across restarts and
 * rescans (D4); files_fts, the full-text index over files' tags (schema v2, see catalog_search()).
 * The connection is guarded by a mutex inside Catalog: any thread may call in. */
#include <stdatomic.h>
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

/* Opens or creates, applies migrations, WAL, synchronous=NORMAL, runs PRAGMA quick_check unless the
 * file is exactly as a clean close left it. -EBADMSG when the file is corrupt (not a database, or
 * quick_check fails). The search index's own check is left for catalog_search_repair_if_due(). */
int catalog_open(const char *path, Catalog **ret);
/* catalog_open(), and when the file is corrupt: moves it (and -wal/-shm) aside to
 * "<path>.corrupt-<unix time>", logs that, creates a fresh one and sets *ret_rebuilt. */
int catalog_open_or_rebuild(const char *path, Catalog **ret, bool *ret_rebuilt);
/* Checkpoints the WAL (TRUNCATE) and closes. NULL is fine. */
void catalog_close(Catalog *c);
/* catalog_close(), returning the identity of the file (device, inode, size, mtime, as a string) that
 * its clean-close marker vouches for: the next open that finds the file so returns the same string
 * from catalog_clean_identity(). NULL when no marker was left (a damaged file, a check still due, an
 * error), so nothing may be keyed on this state of the file. */
char *catalog_close_vouched(Catalog *c);
/* The identity of the file as the last clean close left it, when this open found it untouched since;
 * NULL otherwise. Owned by the catalog. */
const char *catalog_clean_identity(const Catalog *c);
/* Files rows added, changed or removed (and origins removed) through this catalog since it was
 * opened: what a tree is built from. Equal values mean none of that was written in between; the
 * bookkeeping of a rescan that found nothing new (touches, checkpoints) does not count. UINT64_MAX
 * for NULL. */
uint64_t catalog_content_changes(Catalog *c);
int catalog_checkpoint(Catalog *c);
int catalog_quick_check(Catalog *c);    /* 0 or -EBADMSG */

/* Origins: returns the row id for name, inserting or updating url/priority. */
int catalog_origin_ensure(Catalog *c, const char *name, const char *url, unsigned priority, int64_t *ret_id);
int catalog_origin_remove(Catalog *c, const char *name);       /* and its files; -ENOENT when unknown */

/* All files of every origin, ordered by (origin priority, origin name, rel_path). */
int catalog_load_files(Catalog *c, CatalogFile **ret, size_t *ret_n);
/* The same rows in the same order, one at a time, without holding them all: cb gets each row as a
 * CatalogFile whose strings are valid only during the call. cb runs with the catalog's lock held:
 * calling into the catalog from it fails with -EDEADLK. A negative return stops the walk and is
 * returned. */
typedef int (*catalog_file_fn)(const CatalogFile *f, void *userdata);
int catalog_foreach_file(Catalog *c, catalog_file_fn cb, void *userdata);
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

/* Sync (issue #6). A full scan is resumable: catalog_full_scan_begin() records its generation in
 * meta ('scan:<origin_id>:generation') and returns 0; when a scan of that origin was left unfinished
 * (the daemon died), it returns 1 with that scan's generation and the files it had committed
 * (*ret_resumed_files, from 'scan:<origin_id>:files', which catalog_batch_checkpoint() writes inside
 * each batch). catalog_scan_checkpoint_clear() ends the record once the scan has finished. */
int catalog_full_scan_begin(Catalog *c, int64_t origin_id, int64_t *ret_generation, uint64_t *ret_resumed_files);
int catalog_batch_checkpoint(CatalogBatch *b, int64_t origin_id, uint64_t files_done);
int catalog_scan_checkpoint_clear(Catalog *c, int64_t origin_id);
int catalog_scan_in_progress(Catalog *c, int64_t origin_id, bool *ret);
/* Removes one row; -ENOENT when there is none. */
int catalog_batch_remove(CatalogBatch *b, int64_t origin_id, const char *rel_path);
/* A scan of one subtree: the rows at prefix (a file) or below "prefix/" (a directory), ordered by
 * rel_path; and the removal of those among them not stamped with generation. "" is the whole origin. */
int catalog_load_origin_files_under(Catalog *c, int64_t origin_id, const char *prefix, CatalogFile **ret, size_t *ret_n);
int catalog_scan_finish_under(Catalog *c, int64_t origin_id, const char *prefix, int64_t generation, uint64_t *ret_removed);

/* Virtual-path inode numbers (D4). Root "" is always 1. Calls fn for every stored (path, id). */
typedef int (*catalog_node_fn)(const char *path, int64_t id, void *userdata);
int catalog_nodes_foreach(Catalog *c, catalog_node_fn fn, void *userdata);
/* Inserts paths that have no id yet in one transaction; writes every path's id to ids[i]. */
int catalog_nodes_assign(Catalog *c, const char *const *paths, size_t n, int64_t *ids);

/* Full-text search (D5, schema v2): files_fts, an FTS5 index over the tags of files (artist,
 * albumartist, album, title, genre, composer, year), kept in step by triggers in the same
 * transactions, diacritics-insensitive. Queries come compiled by daemon/search/ (search.h): match is
 * an FTS5 MATCH expression, bound as a parameter, never pasted into SQL. Searches run on a read-only
 * connection of their own, so they do not wait for a scan's batch. */
#define CATALOG_SEARCH_CAP_DEFAULT 2000

typedef struct CatalogSearchQuery {
        const char *match;      /* FTS5 MATCH expression; NULL: no text condition (a year range alone) */
        int year_min, year_max; /* inclusive; 0 = unbounded; any bound excludes files without a year */
        bool ranked;            /* order by bm25 over the candidates; else catalog order, score 0 */
        size_t limit;           /* at most this many hits, >= 1 */
        size_t cap;             /* ranked: candidates scored (0 = CATALOG_SEARCH_CAP_DEFAULT) */
} CatalogSearchQuery;

typedef struct CatalogSearchHit {
        int64_t file_id;
        double score;           /* higher is better; 0 when unranked */
        char *artist;           /* the track's artist, else its album artist; NULL when none */
        char *album, *title;    /* NULL when none */
} CatalogSearchHit;

/* Best first. A search that meets a damaged index (SQLITE_CORRUPT) starts rebuilding it on a thread
 * of its own and answers -EBUSY, as does every search until the rebuild is over (1.7 s at 100k
 * tracks), or while catalog_search_repair_if_due() rebuilds; catalog_close() interrupts a rebuild.
 * -EINVAL: FTS5 refused the expression; -ETIMEDOUT: ran past 5 s. */
int catalog_search(Catalog *c, const CatalogSearchQuery *q, CatalogSearchHit **ret, size_t *ret_n);
bool catalog_search_rebuilding(Catalog *c);
void catalog_search_hits_free(CatalogSearchHit *h, size_t n);
/* FTS5 integrity-check: 0, or -EBADMSG when the index does not match files. */
int catalog_search_check(Catalog *c);
/* Rebuilds the index from files (one transaction). */
int catalog_search_rebuild(Catalog *c);
/* check, then rebuild when damaged: 0 = was fine, 1 = rebuilt. */
int catalog_search_repair(Catalog *c);
/* catalog_search_repair() once, when catalog_open() found the catalog not closed cleanly; logs what
 * it found and how long it took. For after the mount (D6): it holds the catalog's lock for the
 * check (1.5-2.7 s at 1M tracks) and a rebuild if needed (8-17 s); searches meanwhile run, and
 * answer -EBUSY when they meet the damage or while it rebuilds. 0: sound, or nothing due;
 * 1: rebuilt. -ECANCELED when *cancel is or becomes true (polled as it runs): still due, so
 * catalog_close() leaves no clean-close marker and the next open leaves it due again. */
int catalog_search_repair_if_due(Catalog *c, const atomic_bool *cancel);
