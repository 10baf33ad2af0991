/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The manager: musicfsd's one context. It starts the subsystems in order (config, lock, catalog,
 * origins, tree, mount, bus), owns the sd-event loop that handles signals, the bus, sd_notify and the
 * watchdog, runs scans on a background worker thread and stops everything in order.
 *
 * Threads: the loop thread owns everything sd-event and sd-bus. The worker thread scans and rebuilds
 * the tree; it tells the loop about progress only through atomics plus an eventfd. A stop runs on a
 * short-lived thread so that the loop stays responsive (a second signal exits at once). FUSE runs in
 * its own workers (fs.h). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "catalog.h"
#include "config.h"
#include "fs.h"
#include "origin.h"
#include "template.h"
#include "tree.h"

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
        CONFIG_CHANGE_HOT           = (1 << 4) - 1,
        CONFIG_CHANGE_MOUNTPOINT    = 1 << 8,
        CONFIG_CHANGE_CACHE_DIR     = 1 << 9,
        CONFIG_CHANGE_ORIGINS       = 1 << 10,
        CONFIG_CHANGE_BUS           = 1 << 11,
        CONFIG_CHANGE_FUSE_THREADS  = 1 << 12,
        CONFIG_CHANGE_COLD          = 0x1f << 8,
} ConfigChange;
unsigned manager_config_diff(const Config *old, const Config *new);

/* The lock that keeps two daemons off one cache directory: an flock()ed "<dir>/musicfsd.lock" holding
 * our PID. -EBUSY when another process holds it, with its PID in *ret_holder (0 if unreadable). */
#define MANAGER_LOCK_FILE "musicfsd.lock"
int manager_lock_cache_dir(const char *cache_dir, int *ret_fd, pid_t *ret_holder);

typedef struct Manager {
        ManagerArgs args;
        Config config;

        int lock_fd;
        Catalog *catalog;
        bool catalog_rebuilt;
        OriginSet *origins;
        TreeStore *trees;
        FuseFs *fs;

        sd_event *event;
        sd_bus *bus;
        char *bus_address;              /* to reconnect to after the bus went away */
        sd_event_source *signal_sources[3];
        sd_event_source *watchdog_source;
        sd_event_source *fuse_source;
        sd_event_source *worker_source;
        sd_event_source *stop_source;
        sd_event_source *stop_deadline_source;
        sd_event_source *reconnect_source;
        uint64_t watchdog_usec;

        /* Bus-visible state; changed only on the loop thread. */
        const char *state;              /* MUSICFS_STATE_* */
        uint64_t track_count;
        char *status;                   /* last STATUS= sent */
        bool name_acquired;
        bool ready_sent;
        bool stopping;
        int exit_code;

        /* The worker. `lock` guards the request fields; the atomics are what it publishes. */
        pthread_t worker;
        bool worker_started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        atomic_bool cancel;
        int worker_efd;
        Template *template;             /* the worker's after startup */
        Template *pending_template;     /* under lock: a reload's template, picked up by the worker */
        bool rebuild_requested;         /* under lock */
        bool first_scan;                /* the catalog had nothing: publish while scanning */
        atomic_uint scan_batch;
        atomic_uint_fast64_t published_tracks;
        atomic_uint_fast64_t scan_files;        /* files seen so far in the origin being scanned */
        atomic_int scan_origin;                 /* index in origins, -1 when not scanning */

        /* The stop thread. */
        pthread_t stopper;
        bool stopper_started;
        int stop_efd;
} Manager;

/* Steps 1-5 of the startup: config, lock, catalog, origins, tree, mount. On failure logs one line,
 * undoes what was done and returns a negative errno. Takes the args (resets *args). */
int manager_new(ManagerArgs *args, Manager **ret);
/* Step 6 onwards: event loop, signals, bus, worker; returns when stopped, with the exit code. */
int manager_run(Manager *m);
void manager_free(Manager *m);

/* Loop thread only. */
void manager_set_state(Manager *m, const char *state);
