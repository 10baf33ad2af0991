/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The D-Bus contract shared by musicfsd and musicfsctl: names, paths, error names and their errno
 * map. introspection/org.musicfs.Manager.xml documents the members; this header only names them. */
#include <systemd/sd-bus.h>

#define MUSICFS_BUS_NAME        "org.musicfs.Manager"
#define MUSICFS_MANAGER_PATH    "/org/musicfs/Manager"
#define MUSICFS_MANAGER_IFACE   "org.musicfs.Manager"
#define MUSICFS_ORIGIN_PREFIX   "/org/musicfs/Manager/origin"
#define MUSICFS_ORIGIN_IFACE    "org.musicfs.Origin"

#define MUSICFS_ERROR_INVALID_ARGS   "org.musicfs.Error.InvalidArgs"
#define MUSICFS_ERROR_NOT_SUPPORTED  "org.musicfs.Error.NotSupported"
#define MUSICFS_ERROR_NO_SUCH_FAILPOINT "org.musicfs.Error.NoSuchFailpoint"
#define MUSICFS_ERROR_NOT_MOUNTED    "org.musicfs.Error.NotMounted"
#define MUSICFS_ERROR_BUSY           "org.musicfs.Error.Busy"
#define MUSICFS_ERROR_NO_SUCH_ORIGIN "org.musicfs.Error.NoSuchOrigin"
#define MUSICFS_ERROR_ORIGIN_UNREACHABLE "org.musicfs.Error.OriginUnreachable"
#define MUSICFS_ERROR_CATALOG        "org.musicfs.Error.CatalogFailed"
#define MUSICFS_ERROR_ORIGIN_EXISTS  "org.musicfs.Error.OriginExists"
#define MUSICFS_ERROR_INVALID_CONFIG "org.musicfs.Error.InvalidConfig"
#define MUSICFS_ERROR_NO_SUCH_FILE   "org.musicfs.Error.NoSuchFile"     /* Pin/Unpin: not in the tree, not pinned */
#define MUSICFS_ERROR_CACHE_FULL     "org.musicfs.Error.CacheFull"      /* Pin: would not fit in the budget */

/* Polkit action ids of privileged methods, one per kind of change (policy/org.musicfs.policy). */
#define MUSICFS_POLKIT_ACTION_MOUNT      "org.musicfs.manager.mount"      /* Mount, Unmount */
#define MUSICFS_POLKIT_ACTION_ORIGINS    "org.musicfs.manager.origins"    /* AddOrigin, RemoveOrigin, Rescan */
#define MUSICFS_POLKIT_ACTION_CACHE      "org.musicfs.manager.cache"      /* passthrough, pins, ClearCache, VerifyCache(repair) */
#define MUSICFS_POLKIT_ACTION_FAILPOINTS "org.musicfs.manager.failpoints" /* ArmFailpoint, DisarmFailpoint */
#define MUSICFS_POLKIT_ACTION_RELOAD     "org.musicfs.manager.reload"     /* Reload */

/* Registered with sd_bus_error_add_map() by daemon and client, so that a named error and the errno
 * it stands for convert both ways. */
extern const sd_bus_error_map musicfs_bus_error_map[];

/* Daemon states, the values of the State property. */
#define MUSICFS_STATE_STARTING "starting"
#define MUSICFS_STATE_READY    "ready"
#define MUSICFS_STATE_DEGRADED "degraded"
#define MUSICFS_STATE_OFFLINE  "offline"
#define MUSICFS_STATE_STOPPING "stopping"

/* Origin health, the values of Origin.Health and of CheckOrigin's answer (D11). */
#define MUSICFS_HEALTH_HEALTHY   "healthy"
#define MUSICFS_HEALTH_DEGRADED  "degraded"
#define MUSICFS_HEALTH_UNHEALTHY "unhealthy"
