/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* For origin implementations only (origin-local.c, later s3/sftp), never for callers of origin.h.
 *
 * An implementation's file struct embeds OriginFile as its first member; origin_open() fills the
 * base after ops->open succeeds, so origin_pread()/origin_close() can find their way back to the
 * vtable from a bare OriginFile pointer.
 *
 * Ownership: origin_free() frees name and url, then calls ops->free(), which releases the
 * implementation's state and the allocation that embeds the Origin. */
#include <stdatomic.h>

#include "origin.h"

struct OriginFile {
        const OriginOps *ops;
        Origin *origin;
        /* References beyond the first (the opener's): a worker still running a pread that timed out
         * keeps the file open until it returns (origin_close() drops the opener's). */
        atomic_uint n_ref;
        /* Reads of this file past their limit and still running (origin-exec.c). */
        atomic_uint n_stuck;
};

/* One origin operation, as origin.c's wrappers hand it to origin_call() (origin-exec.c). */
typedef enum OriginOp {
        ORIGIN_OP_STAT,
        ORIGIN_OP_OPEN,
        ORIGIN_OP_PREAD,
        ORIGIN_OP_CHECK,
} OriginOp;

typedef struct OriginCall {
        OriginOp op;
        Origin *origin;
        OriginFile *file;       /* pread */
        const char *rel_path;   /* stat, open */
        void *buf;              /* pread */
        size_t size;
        uint64_t offset;
        OriginStat st;          /* stat: the answer */
        OriginFile *opened;     /* open: the answer, base filled in */
} OriginCall;

/* Runs c with its failpoint, inline for an origin with own_timeouts (unless deadline_usec comes
 * before its own timeout would), else on the origin's workers
 * under the earlier of its timeout and deadline_usec (0 none): -ETIMEDOUT past it, the late answer
 * discarded; -EIO at once when all the workers the origin may have are stuck. */
ssize_t origin_call(OriginCall *c, uint64_t deadline_usec);
/* A walk (run(o, rel_dir, ...): the walk itself, "" for everything) on a thread of its own, for an
 * origin without own_timeouts: -ETIMEDOUT when the origin's limit passes with no entry found, time
 * spent in fn/skipped not counted. fn and skipped run on that thread, one at a time, never after
 * this returned. */
typedef int (*origin_walk_run_fn)(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped,
                                  void *userdata);
int origin_walk_call(Origin *o, const char *rel_dir, origin_walk_run_fn run, origin_walk_fn fn,
                     origin_walk_skipped_fn skipped, void *userdata);
void origin_exec_free(struct OriginExec *e);    /* the origin's reference; stuck workers finish alone */
OriginFile *origin_file_ref(OriginFile *f);
void origin_file_unref(OriginFile *f);          /* the last one closes */

/* Shared by implementations: rel_path is relative, with no empty, "." or ".." component. */
int origin_rel_path_check(const char *rel_path);     /* 0 or -EINVAL */
