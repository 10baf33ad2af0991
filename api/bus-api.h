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

/* Polkit action ids of privileged methods (policy/ installs them in the management-API issue). */
#define MUSICFS_POLKIT_ACTION_FAILPOINTS "org.musicfs.manager.failpoints"

/* Registered with sd_bus_error_add_map() by daemon and client, so that a named error and the errno
 * it stands for convert both ways. */
extern const sd_bus_error_map musicfs_bus_error_map[];

/* Daemon states, the values of the State property. */
#define MUSICFS_STATE_STARTING "starting"
#define MUSICFS_STATE_READY    "ready"
#define MUSICFS_STATE_DEGRADED "degraded"
#define MUSICFS_STATE_OFFLINE  "offline"
#define MUSICFS_STATE_STOPPING "stopping"
