/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Origins: where the bytes live. An Origin is a vtable plus identity; every operation returns 0 /
 * a byte count or a negative errno, is safe to call from any thread, and passes through the origin-*
 * failpoints. Local origins only in this issue; s3/sftp plug in as new OriginOps later.
 *
 * OriginSet holds the configured origins by catalog id, ordered by priority. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct Origin Origin;
typedef struct OriginFile OriginFile;

typedef struct OriginStat {
        uint64_t size;
        int64_t mtime_ns;
} OriginStat;

/* Called for every regular file the walk finds (symlinks followed, loops and unreadable entries
 * skipped with one log line each). Return <0 to stop the walk with that error. */
typedef int (*origin_walk_fn)(const char *rel_path, const OriginStat *st, void *userdata);

/* Called, after its one log line, for every entry the walk skipped because the origin could not read
 * it: a directory it cannot list or enter, an entry it cannot stat, a file it may not read (EACCES,
 * EIO, ESTALE, ...; error is the negative errno). The origin may hold files at rel_path or below it
 * that the walk did not report: they are unknown this time, not gone. Entries that are gone are not
 * reported (removed while the walk looked, dangling or looping symlinks), nor directory loops.
 * Return <0 to stop the walk with that error. */
typedef int (*origin_walk_skipped_fn)(const char *rel_path, int error, void *userdata);

typedef struct OriginOps {
        const char *kind;
        int (*stat)(Origin *o, const char *rel_path, OriginStat *ret);
        int (*open)(Origin *o, const char *rel_path, OriginFile **ret);
        ssize_t (*pread)(OriginFile *f, void *buf, size_t size, uint64_t offset);
        void (*close)(OriginFile *f);
        int (*walk)(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata); /* skipped may be NULL */
        int (*check)(Origin *o);        /* health probe: 0 healthy */
        void (*free)(Origin *o);
} OriginOps;

struct Origin {
        const OriginOps *ops;
        char *name;
        char *url;              /* local: the absolute directory; never holds secrets */
        unsigned priority;      /* lower is preferred */
        int64_t id;             /* catalog origins.id, set by the manager */
        /* References beyond the first (the creator's, handed to the OriginSet): 0 when the first is
         * the only one, so an implementation's zero-initialised struct starts right. */
        atomic_uint n_ref;
};

int origin_local_new(const char *name, const char *dir, unsigned priority, Origin **ret);

/* Convenience wrappers that evaluate the failpoints and call through the vtable. */
int origin_stat(Origin *o, const char *rel_path, OriginStat *ret);
int origin_open(Origin *o, const char *rel_path, OriginFile **ret);
ssize_t origin_pread(OriginFile *f, void *buf, size_t size, uint64_t offset);
/* Reads exactly size bytes unless EOF comes first; returns the count or a negative errno. */
ssize_t origin_pread_full(OriginFile *f, void *buf, size_t size, uint64_t offset);
void origin_close(OriginFile *f);
/* Walks the whole origin. Returns 0 when the walk was complete; a positive count of entries (mostly
 * directories) that could not be read, each skipped and logged once, when it was not; a negative
 * errno when it stopped: the origin's own directory cannot be listed, fds or memory ran out, or fn
 * returned one. Only a complete walk tells what is no longer there: after an incomplete one, what
 * lies under a skipped entry must be taken as still there. */
int origin_walk(Origin *o, origin_walk_fn fn, void *userdata);
/* The same, calling skipped (may be NULL) for each entry that a positive return counts. */
int origin_walk_full(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata);
int origin_check(Origin *o);    /* the health probe through the vtable: 0 healthy */
/* Drops a reference; the last one frees. origin_free() drops the creator's (the first) reference,
 * so a caller that never took another one frees at once, as before references existed. */
void origin_free(Origin *o);
/* Another reference, for a thread that uses the origin while the loop may remove it from the set
 * (FUSE readers, scans, health checks). NULL is fine. (Added by the management API, I3-A.) */
Origin *origin_ref(Origin *o);
void origin_unref(Origin *o);   /* the same as origin_free(); NULL is fine */

typedef struct OriginSet OriginSet;
int origin_set_new(OriginSet **ret);
void origin_set_free(OriginSet *s);     /* frees the origins too */
/* Takes ownership on success; on an error (-EEXIST on a duplicate name) the caller still owns o.
 * Safe while other threads read the set. */
int origin_set_add(OriginSet *s, Origin *o);
/* Borrowed pointers: valid only as long as nobody removes the origin, i.e. on the thread that removes
 * origins (the manager's loop) or with the set in no other thread's hands. */
Origin *origin_set_get(OriginSet *s, int64_t id);      /* NULL when unknown */
size_t origin_set_size(OriginSet *s);
Origin *origin_set_at(OriginSet *s, size_t i);         /* priority order, then name; NULL past the end */
/* The same with a reference for the caller (origin_unref() it), safe against a concurrent remove. */
Origin *origin_set_get_ref(OriginSet *s, int64_t id);
Origin *origin_set_at_ref(OriginSet *s, size_t i);
/* Takes the origin out of the set and drops the set's reference: lookups stop finding it at once,
 * and it is freed when the last thread that holds a reference drops it. -ENOENT when unknown.
 * Safe while other threads read the set. */
int origin_set_remove(OriginSet *s, int64_t id);
