/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The FUSE filesystem: low-level API, read-only (D1), served by our own pool of worker threads
 * reading a non-blocking /dev/fuse fd, so that stopping is: stop taking requests, let in-flight ones
 * finish, unmount. Every operation answers from the published Tree and the chunk cache (cache.h; the
 * ReplicaReader when mounted without one) and answers an errno on failure; nothing here waits on the
 * event loop. */
#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "origin.h"
#include "tree.h"

typedef struct FuseFs FuseFs;

typedef struct FuseFsOptions {
        const char *mountpoint;         /* absolute */
        unsigned threads;               /* worker threads */
        unsigned read_ahead_kb;         /* the mount's kernel read-ahead (its bdi); 0: leave the kernel's */
        double entry_timeout, attr_timeout;     /* seconds */
        bool allow_other;               /* only when running as root */
        bool debug;
        Cache *cache;                   /* reads go through it; NULL: straight to the replicas */
        Catalog *catalog;               /* /.search/ runs its queries here (fs-search.h); NULL: none */
} FuseFsOptions;

/* Mounts (checks the mountpoint: absolute, a directory, empty) but starts no thread yet.
 * -ENOTDIR / -ENOTEMPTY / -ENOENT with a log line that says which. */
int fusefs_mount(const FuseFsOptions *opts, TreeStore *trees, OriginSet *origins, FuseFs **ret);
int fusefs_start(FuseFs *fs);
/* Sets the kernel read-ahead of the running mount (0: leave it). Needs the workers running (it stats
 * the mountpoint to find its device). A failure is logged and otherwise ignored: reads work with the
 * kernel's default, only in smaller requests. */
int fusefs_set_read_ahead(FuseFs *fs, unsigned kb);
/* After tree_store_publish(): tells the kernel which entries and directories changed. */
void fusefs_tree_changed(FuseFs *fs, const Tree *old, const Tree *new);
/* Changes the entry and attribute timeouts given in replies from now on (a SIGHUP reload); what the
 * kernel already caches keeps its old timeout. Thread-safe. (Added by the manager, H7.) */
void fusefs_set_timeouts(FuseFs *fs, double entry_timeout, double attr_timeout);
/* False when every worker has been busy with its current request for longer than max_busy_usec,
 * i.e. the filesystem can make no progress: the watchdog's proof of life. One slow read is fine. */
bool fusefs_alive(FuseFs *fs, uint64_t max_busy_usec);
/* True once the kernel connection has gone (unmounted from outside, aborted). */
bool fusefs_connection_lost(FuseFs *fs);
/* An fd that becomes readable when the connection is lost (for the event loop). */
int fusefs_event_fd(FuseFs *fs);
/* Whether this mount is still in the mount table at its mountpoint: after the kernel aborted the
 * connection it is (dead, answering ENOTCONN), after an unmount from outside it is not. */
bool fusefs_mount_present(FuseFs *fs);
/* Stops workers after their current request, unmounts, frees. NULL is fine. */
void fusefs_stop(FuseFs *fs);

/* Detects a stale FUSE mount (a killed daemon's) at path and lazily unmounts it.
 * 0: nothing there, 1: cleaned up, negative errno: could not. */
int fusefs_cleanup_stale_mount(const char *path);
