/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The manager: musicfsd's one context. It starts the subsystems in order (config, lock, catalog,
 * origins, tree, mount, bus), owns the sd-event loop that handles signals, the bus, sd_notify and the
 * watchdog, runs scans on a background worker thread and stops everything in order. Behind the bus
 * (daemon/bus/) it mounts and unmounts, adds and removes origins, queues scans and checks origins'
 * health at runtime.
 *
 * Threads: the loop thread owns everything sd-event and sd-bus, and the ManagedOrigin records. The
 * worker thread scans, drops removed origins from the catalog and rebuilds the tree; it tells the
 * loop about progress only through the fields under `lock`, atomics and an eventfd. Health checks
 * run on short-lived detached threads (origin_check() can hang on a dead filesystem) and hand their
 * result back through a queue and an eventfd. A stop runs on a short-lived thread so that the loop
 * stays responsive (a second signal exits at once). FUSE runs in its own workers (fs.h); origins
 * are reference-counted, so one removed at runtime lives on while a reader holds it. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>


#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "cache.h"
#include "catalog.h"
#include "config.h"
#include "fs.h"
#include "origin.h"
#include "template.h"
#include "tree.h"
#include "watch.h"

/* What the command line asked for; kept so that SIGHUP re-reads the same sources. */
typedef struct ManagerArgs {
        char *config_path;              /* --config; NULL: CONFIG_DEFAULT_PATH if it exists */
        char **origin_dirs;             /* --origin, in order */
        size_t n_origin_dirs;
        char *cache_dir;                /* NULL: not given */
        char *template;
        char *mountpoint;
        unsigned threads;               /* 0: not given */
        int log_level;                  /* -1: not given */
        bool user_bus;                  /* --user (only ever turns the user bus on) */
} ManagerArgs;

void manager_args_init(ManagerArgs *a);
void manager_args_free(ManagerArgs *a);
int manager_args_add_origin(ManagerArgs *a, const char *dir);

/* Builds the effective configuration: defaults, then the file (and its drop-ins), then the flags;
 * validates it and parses the template. -EINVAL/-ENOENT with one sentence in *ret_error ("FILE:LINE:
 * reason" for a bad file). */
int manager_load_config(const ManagerArgs *args, Config *ret, Template **ret_template, char **ret_error);

/* What a reload would change. Cold keys cannot change while running. */
typedef enum ConfigChange {
        CONFIG_CHANGE_LOG_LEVEL     = 1 << 0,
        CONFIG_CHANGE_TEMPLATE      = 1 << 1,
        CONFIG_CHANGE_TIMEOUTS      = 1 << 2,
        CONFIG_CHANGE_SCAN_BATCH    = 1 << 3,
        CONFIG_CHANGE_READ_AHEAD    = 1 << 4,
        CONFIG_CHANGE_HOT           = (1 << 5) - 1,
        CONFIG_CHANGE_MOUNTPOINT    = 1 << 8,
        CONFIG_CHANGE_CACHE_DIR     = 1 << 9,
        CONFIG_CHANGE_ORIGINS       = 1 << 10,
        CONFIG_CHANGE_BUS           = 1 << 11,
        CONFIG_CHANGE_FUSE_THREADS  = 1 << 12,
        CONFIG_CHANGE_CACHE         = 1 << 13,  /* [cache]: the cache takes its options at open */
        CONFIG_CHANGE_COLD          = 0x3f << 8,
} ConfigChange;
unsigned manager_config_diff(const Config *old, const Config *new);

/* The lock that keeps two daemons off one cache directory: an flock()ed "<dir>/musicfsd.lock" holding
 * our PID. -EBUSY when another process holds it, with its PID in *ret_holder (0 if unreadable). */
#define MANAGER_LOCK_FILE "musicfsd.lock"
int manager_lock_cache_dir(const char *cache_dir, int *ret_fd, pid_t *ret_holder);

typedef struct Manager Manager;
typedef struct HealthCheck HealthCheck;
typedef struct HealthQueue HealthQueue;
typedef struct PolkitRegistry PolkitRegistry;
typedef struct CacheVerifyJob CacheVerifyJob;

/* OriginHealthState (D11) is in origin.h: readers share the manager's view of it. */
const char *origin_health_state_to_string(OriginHealthState s);   /* MUSICFS_HEALTH_* */

/* One configured origin as the loop sees it: the bus object /org/musicfs/Manager/origin/<name> and
 * its health record. Loop thread only. */
typedef struct ManagedOrigin {
        Origin *origin;                 /* a reference of our own; the OriginSet holds another */
        char *object_path;
        char *url;                      /* for showing: secrets removed (manager_url_strip_secrets) */
        OriginHealthState health;
        unsigned consecutive_failures;
        uint64_t last_latency_usec;
        uint64_t last_check_usec;       /* CLOCK_REALTIME; 0 = never checked */
        char *last_error;               /* NULL: none */
        uint64_t track_count;           /* its files in the catalog, as of the last tree */
        HealthCheck *check;             /* the check in flight, NULL when none */
        sd_event_source *recheck_source;        /* D11: the sooner recheck after a DNS failure */
} ManagedOrigin;

/* A RemoveOrigin call waiting for the worker to drop the origin's rows and publish the tree. */
typedef struct PendingRemoval {
        int64_t id;
        char *name;
        sd_bus_message *call;
} PendingRemoval;

/* What the worker hands the loop (under Manager.lock). */
typedef struct ScanFinished {
        int64_t origin_id;
        char *name;
        int result;                     /* 0, or the negative errno the scan failed with */
        uint64_t added, changed, removed;
} ScanFinished;

/* Changed paths of one origin that the watcher reported, for a targeted scan (sync, issue #6). */
typedef struct SyncRequest {
        int64_t origin_id;
        char **paths;
        size_t n_paths;
} SyncRequest;

typedef struct OriginCount {
        int64_t origin_id;
        uint64_t files;
} OriginCount;

typedef struct RemovalJob {
        int64_t id;
        char *name;
        int result;                     /* set by the worker */
} RemovalJob;

struct Manager {
        ManagerArgs args;
        Config config;

        int lock_fd;
        Catalog *catalog;
        bool catalog_rebuilt;
        OriginSet *origins;
        TreeStore *trees;
        Cache *cache;                   /* thread-safe; opened before the mount, closed after it */
        char *cache_clean_marker;       /* "<cache_dir>/cache.clean": written after a clean close */
        FuseFs *fs;                     /* NULL while unmounted; the worker reads it under fs_lock */
        char *mountpoint;               /* where fs is mounted; NULL while unmounted */
        pthread_mutex_t fs_lock;

        sd_event *event;
        sd_bus *bus;
        char *bus_address;              /* to reconnect to after the bus went away */
        PolkitRegistry *polkit;
        sd_event_source *signal_sources[3];
        sd_event_source *watchdog_source;
        sd_event_source *fuse_source;
        /* 3.4: in-process remounts after the kernel aborted the connection, counted per window so
         * that a mount that keeps dying stops the daemon instead of looping. CLOCK_MONOTONIC µs. */
        uint64_t remount_window_start;
        unsigned remounts_in_window;
        char *remount_path;             /* the mountpoint while a remount is pending; NULL otherwise */
        unsigned remount_attempt;       /* failed tries of the pending remount (backoff 1, 5, 15 s) */
        sd_event_source *remount_source;
        sd_event_source *worker_source;
        sd_event_source *stop_source;
        sd_event_source *stop_deadline_source;
        sd_event_source *reconnect_source;
        sd_event_source *health_source;
        sd_event_source *health_timer_source;   /* D11: the periodic checks of every origin */
        sd_event_source *progress_source;       /* the deferred ScanProgress emission */
        uint64_t watchdog_usec;

        /* Bus-visible state; changed only on the loop thread. */
        const char *state;              /* MUSICFS_STATE_* */
        uint64_t track_count;
        char *status;                   /* last STATUS= sent */
        bool name_acquired;
        bool ready_sent;
        bool stopping;
        int exit_code;
        ManagedOrigin **managed;        /* priority order, then name, like the OriginSet */
        size_t n_managed;
        PendingRemoval *pending_removals;
        size_t n_pending_removals;
        HealthQueue *health_queue;
        /* ScanProgress: what the getter shows, and what was last announced (at most ~4×/s). */
        char *progress_origin;          /* NULL: idle */
        uint64_t progress_files, progress_known;
        char *emitted_origin;
        uint64_t emitted_files, emitted_known;
        uint64_t progress_emitted_usec;

        /* The worker. `lock` guards the request fields; the atomics are what it publishes. */
        pthread_t worker;
        bool worker_started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        atomic_bool cancel;             /* the daemon stops: the worker exits */
        atomic_bool scan_cancel;        /* the scan in progress stops (set with cancel, or its origin went) */
        int worker_efd;
        Template *template;             /* the worker's after startup */
        Template *pending_template;     /* under lock: a reload's template, picked up by the worker */
        bool rebuild_requested;         /* under lock */
        bool first_scan;                /* the catalog had nothing: publish while scanning */
        int64_t *scan_queue;            /* under lock: origin ids to scan, in order */
        size_t n_scan_queue;
        SyncRequest *sync_queue;        /* under lock: changed paths to scan, one entry per origin */
        size_t n_sync_queue;
        Watcher *watcher;               /* change detection; the loop's (NULL once stopping) */
        int64_t *watch_lost;            /* under lock: origins whose root the watcher lost: it rescans
                                         * them itself once re-registered, so no catch-up scan is queued */
        size_t n_watch_lost;
        int64_t scanning_id;            /* under lock: the origin being scanned, 0 when none */
        uint64_t scanning_known;        /* under lock: its files in the catalog before the scan */
        uint64_t scans_begun;           /* under lock: scans started so far, and the last one's origin */
        int64_t last_begun_id;
        uint64_t last_begun_known;
        uint64_t scans_announced;       /* loop: scans_begun as of the last ScanProgress update */
        RemovalJob *removals;           /* under lock: origins whose rows the worker must drop */
        size_t n_removals;
        RemovalJob *removals_done;      /* under lock: dropped, for the loop to answer */
        size_t n_removals_done;
        ScanFinished *finished;         /* under lock: scans that ended, for ScanFinished */
        size_t n_finished;
        /* Under lock: what the published tree was built from besides the catalog (template and
         * origins, manager_tree_inputs()) and the catalog's change count once it was built. A clean
         * stop writes a tree that is still what the catalog would build as a snapshot, which the
         * next start reads instead of building (D6 at any size). */
        char *tree_inputs;
        uint64_t tree_changes;
        OriginCount *counts;            /* under lock: files per origin in the last published tree */
        size_t n_counts;
        bool counts_changed;            /* under lock */
        atomic_uint scan_batch;
        atomic_uint_fast64_t published_tracks;
        atomic_uint_fast64_t scan_files;        /* files seen so far in the origin being scanned */

        /* The cache as the bus shows it (loop thread). cache_efd is written by the cache's state
         * callback (any thread); a timer re-reads the byte count every few seconds. */
        int cache_efd;
        sd_event_source *cache_source;
        sd_event_source *cache_timer_source;
        bool cache_passthrough_shown;
        CachePassthroughReason cache_reason_shown;
        uint64_t cache_bytes_shown;
        CacheVerifyJob *cache_verify;   /* the VerifyCache in flight, NULL when none */
        sd_event_source *cache_verify_source;   /* its eventfd; loop thread (freed in manager_free) */
        sd_bus_message *cache_verify_call;      /* the call it answers */

        /* The stop thread. */
        pthread_t stopper;
        bool stopper_started;
        int stop_efd;
};

/* Steps 1-5 of the startup: config, lock, catalog, origins, tree, mount. On failure logs one line,
 * undoes what was done and returns a negative errno. Takes the args (resets *args). */
int manager_new(ManagerArgs *args, Manager **ret);
/* Step 6 onwards: event loop, signals, bus, worker; returns when stopped, with the exit code. */
int manager_run(Manager *m);
void manager_free(Manager *m);

/* Loop thread only. */
void manager_set_state(Manager *m, const char *state);

/* The runtime management API behind the bus (loop thread only). Each returns 0 or a negative errno
 * and leaves the D-Bus wording to daemon/bus/. */

ManagedOrigin *manager_find_origin(Manager *m, const char *name);      /* NULL when unknown */

/* Mounts at mountpoint (NULL or "": the configured one). -EBUSY: mounted already, or a live FUSE
 * filesystem is there; -ENOENT/-ENOTDIR/-ENOTEMPTY/-ENOTCONN: the mountpoint cannot take it. */
int manager_mount(Manager *m, const char *mountpoint);
/* -ENOTCONN: not mounted; -EBUSY: files are open (and !force). force detaches lazily and aborts the
 * connection, so open files fail from then on. The daemon keeps running unmounted. */
int manager_unmount(Manager *m, bool force);

/* A local origin at an absolute directory, scanned at once. -EEXIST: the name is taken; -EBUSY: an
 * origin of that name is still being removed; -ENOENT/-ENOTDIR/-EACCES...: the directory. */
int manager_add_origin(Manager *m, const char *name, const char *dir, unsigned priority, ManagedOrigin **ret);
/* The same for an S3 origin (AddOrigin with an s3:// URL); credentials from the daemon's environment. */
int manager_add_s3_origin(Manager *m, const char *name, const OriginS3Config *s3, unsigned priority, ManagedOrigin **ret);
/* An SFTP origin from AddOrigin's URL: sftp (host, user, port) and path; the rest are defaults. */
int manager_add_sftp_origin(Manager *m, const char *name, const OriginSftpConfig *sftp, const char *path,
                            unsigned priority, ManagedOrigin **ret);
/* Takes the origin out at once (readers stop finding it; readers that hold it finish), then has the
 * worker drop its rows and publish the tree; call (referenced) is answered through
 * bus_manager_reply_remove_origin() when that is done. -ENXIO: unknown. */
int manager_remove_origin(Manager *m, const char *name, sd_bus_message *call);
/* Runs origin_check() off the loop, under a timeout. 0: call (referenced) is answered through
 * bus_manager_reply_check_origin() when the check ends; 1: a check of this origin hangs past its
 * timeout (or, after a failed check, one of its operations still hangs), answer now with the
 * current state. call NULL: a periodic check (D11), answered to nobody;
 * a no-op while one runs. */
int manager_check_origin(Manager *m, ManagedOrigin *mo, sd_bus_message *call);
/* Queues a scan of one origin (NULL or "": all). -ENXIO: unknown. */
int manager_rescan(Manager *m, const char *name);
/* The cache behind the bus (loop thread). Paths are relative to the mountpoint ("" is everything).
 * Pin: -ENOENT unknown path, -ENOSPC over the budget; Unpin: -ENOENT not pinned. */
int manager_cache_pin(Manager *m, const char *path);
int manager_cache_unpin(Manager *m, const char *path);
int manager_set_passthrough(Manager *m, bool enabled);
/* Runs cache_verify() off the loop. 0: call (referenced) is answered through
 * bus_manager_reply_verify_cache() when it ends; -EBUSY: a verification runs already. */
int manager_cache_verify(Manager *m, bool repair, sd_bus_message *call);

/* Re-reads the configuration like SIGHUP. -EINVAL/-ENOENT with "FILE:LINE: reason" in *ret_error;
 * the running configuration is kept then. */
int manager_reload(Manager *m, char **ret_error);

/* The URL without its secrets: the password of the userinfo ("user:pw@" -> "user@") and query
 * parameters that carry credentials (X-Amz-Signature, token, password, ...). A plain path is kept. */
int manager_url_strip_secrets(const char *url, char **ret);

/* A D-Bus address without its guid= keys, to reconnect to a bus daemon that was restarted (and so
 * has another guid) at the same place. */
int manager_address_strip_guid(const char *address, char **ret);
