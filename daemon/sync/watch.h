/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The sync's change detection (issue #6, DESIGN.md D6): it owns the inotify watches of local origins
 * and the poll timers of the others, and nothing else. It never scans and never touches the
 * catalog: it tells its owner (the manager) which paths of which origin changed, and the owner's
 * worker scans them (scan_origin_paths()).
 *
 * Each watched origin has its own inotify instance (so an overflow names its origin), with a watch
 * on every directory: added recursively at registration and for every directory that appears later
 * (a new directory is reported as changed, so files created in it before its watch landed are found
 * by the scan of it). Events are coalesced per origin into a set of changed paths and reported after
 * `debounce_usec` of quiet (at most `max_delay_usec` after the first one), on CLOCK_MONOTONIC, so a
 * wall-clock jump cannot stall or hurry it. A queue overflow, or more changes than a set holds,
 * becomes a full rescan of the origin (and a new registration pass, for directories whose creation
 * was lost). The origin's root going away (deleted, moved, unmounted) drops its watches until
 * watcher_reregister(), which the owner calls when the health check sees the origin back; the first
 * report after that is a full rescan, for what changed meanwhile. When inotify runs out (the
 * fs.inotify.max_user_watches or max_user_instances limit), that is logged once and the origin is
 * polled instead.
 *
 * A polled origin (mode poll, or inotify that fell back) gets a full-rescan report every poll
 * interval, on CLOCK_MONOTONIC.
 *
 * Threads: everything runs on the watcher's own thread (poll(2) on the inotify fds, an eventfd for
 * commands, and a timeout for the earliest deadline), so registering a large tree never stalls the
 * event loop. The functions below may be called from any thread; they queue a command and return.
 * The report callback runs on the watcher's thread, with no lock of the watcher's held. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Watcher Watcher;

typedef enum WatchMode {
        WATCH_INOTIFY,
        WATCH_POLL,
        WATCH_OFF,
        _WATCH_MODE_MAX,
        _WATCH_MODE_INVALID = -1,
} WatchMode;

const char *watch_mode_to_string(WatchMode m);
WatchMode watch_mode_from_string(const char *s);       /* _WATCH_MODE_INVALID when unknown */

/* 1 when dir lives on a network or FUSE file system (NFS, SMB/CIFS, FUSE, Ceph, AFS, 9P, ...), where
 * inotify misses other machines' changes: such local origins are polled by default (5.4). 0 when
 * not, a negative errno when statfs() fails. */
int watch_dir_fs_is_remote(const char *dir);

typedef enum WatchReport {
        WATCH_REPORT_CHANGED,   /* paths (rel_paths: files, directories or what is gone) changed */
        WATCH_REPORT_RESCAN,    /* scan the whole origin: overflow, re-registration, or a poll */
        WATCH_REPORT_LOST,      /* the root went away; nothing is watched until watcher_reregister() */
        WATCH_REPORT_POLLING,   /* inotify is not available for it: polled from now on */
} WatchReport;

typedef void (*watcher_report_fn)(int64_t origin_id, WatchReport report, const char *const *paths, size_t n_paths,
                                  void *userdata);

#define WATCH_DEBOUNCE_USEC_DEFAULT (300ULL * 1000ULL)
#define WATCH_MAX_DELAY_USEC_DEFAULT (1000ULL * 1000ULL)
#define WATCH_POLL_INTERVAL_SEC_DEFAULT 300U
/* More changed paths than this in one set: a full rescan is cheaper to describe. */
#define WATCH_MAX_PENDING_PATHS 4096

typedef struct WatcherOptions {
        uint64_t debounce_usec;         /* 0: WATCH_DEBOUNCE_USEC_DEFAULT */
        uint64_t max_delay_usec;        /* 0: WATCH_MAX_DELAY_USEC_DEFAULT */
        watcher_report_fn report;
        void *userdata;
        /* Test hook: more directories than this in one origin fail like a full fs.inotify
         * max_user_watches (ENOSPC). 0: only the kernel's limit. */
        size_t max_watches;
} WatcherOptions;

/* Starts the thread. */
int watcher_new(const WatcherOptions *opts, Watcher **ret);
/* Stops the thread and drops every watch. NULL is fine. */
void watcher_free(Watcher *w);

/* Starts watching dir (absolute) as origin id, in mode; poll_interval_usec for mode poll and for a
 * fall-back to it (0: the default). Replaces an earlier registration of id. */
int watcher_add(Watcher *w, int64_t origin_id, const char *name, const char *dir, WatchMode mode,
                uint64_t poll_interval_usec);
int watcher_remove(Watcher *w, int64_t origin_id);
/* Registers the watches of an inotify origin anew (after its root came back), then reports a full
 * rescan. Does nothing to polled origins. */
int watcher_reregister(Watcher *w, int64_t origin_id);

/* Test hook: handles an IN_Q_OVERFLOW on the origin's queue as if the kernel had sent one. */
int watcher_simulate_overflow(Watcher *w, int64_t origin_id);
/* Test hook: the number of directories watched for the origin (as of the thread's last command),
 * or a negative errno. Waits for the commands queued before it to be done. */
int watcher_count_watches(Watcher *w, int64_t origin_id);
