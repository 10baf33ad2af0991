/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The scanner: walks one origin, reads tags of new or changed files (size or mtime differ from the
 * catalog), and writes the catalog in batched transactions; rows not seen are removed at the end,
 * except those under what the walk could not read. A full scan checkpoints its progress in every
 * batch and, killed halfway, resumes at the next one (catalog_full_scan_begin()); the sync's
 * targeted scans (scan_origin_paths()) cover only the paths that changed.
 * Runs on the caller's thread (the manager runs it on a background thread), which alone touches the
 * catalog; the tags of new and changed files are read by a few threads of the scan's own, several
 * files in flight at once, so a remote origin costs its latency once per batch of reads rather than
 * once per file. */
#include <stdatomic.h>
#include <stdint.h>

#include "catalog.h"
#include "origin.h"

typedef struct ScanStats {
        uint64_t seen;          /* audio files found by the walk */
        uint64_t added, changed, unchanged, removed;
        uint64_t unparsed;      /* listed under the Unknown names */
        uint64_t failed;        /* skipped: the origin could not stat/open/read them */
        uint64_t unreadable;    /* entries the walk could not read (mostly directories), see origin_walk() */
        uint64_t kept;          /* catalogued files under those: unknown this time, so kept as they were */
        uint64_t read;          /* files whose tags were read (new or changed ones); unchanged files cost a stat */
        uint64_t resumed;       /* a full scan that took over an interrupted one: the files it had done */
} ScanStats;

typedef struct ScanHooks {
        /* After every committed batch, on the scanning thread. */
        void (*batch_committed)(const ScanStats *stats, void *userdata);
        void *userdata;
        atomic_bool *cancel;    /* checked between files; a cancelled scan removes nothing */
        /* Tag reads in flight at once; 0: the default for the origin's kind (16 for a remote one,
         * where each read is a round trip, 4 for a local one), 1: read on the scanning thread. */
        unsigned max_reads;
} ScanHooks;

/* 0 on completion, -ECANCELED when cancelled, other negative errno when the walk or catalog failed
 * (the catalog keeps every batch committed before the failure). Rows are removed only after a walk
 * that ran to its end, of an origin that still passes origin_check() and still holds audio files (an
 * empty mount point keeps its catalogued files). A file that cannot be read keeps the row it had, and
 * so does every file under an entry the walk had to skip as unreadable (a directory it could not
 * list: EACCES, EIO, ...); the rest of the origin gets its removals as usual. Both count as success.
 * batch_size 0 means the default (256). Tags are read outside the catalog's transactions. */
int scan_origin(Catalog *catalog, Origin *origin, unsigned batch_size, const ScanHooks *hooks, ScanStats *ret);

/* "Origin X: scanned N files: ..." at info level. The caller logs it once the scan's results are
 * visible (the tree published): tests and users read it as "the scan is over". */
void scan_stats_log(const char *origin_name, const ScanStats *st, uint64_t usec);

/* A scan of what changed (sync, issue #6): each path is a rel_path an event or a poll named, be it
 * a file, a directory (its subtree is walked) or something no longer there (its rows, and the rows
 * below it, go). "" among them makes it a full scan_origin(). Rows elsewhere in the origin are not
 * touched; a file is new or changed when its size or mtime differs from its row's (equality only,
 * so a clock that jumped cannot hide a change or fake one), and an unchanged file costs a stat.
 * What cannot be read is kept; nothing is removed unless origin_check() still passes at the end.
 * Paths are borrowed; a full scan's checkpoint is not touched. */
int scan_origin_paths(Catalog *catalog, Origin *origin, const char *const *paths, size_t n_paths, unsigned batch_size,
                      const ScanHooks *hooks, ScanStats *ret);
