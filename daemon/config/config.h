/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Configuration (DESIGN.md D15): embedded defaults, then /etc/musicfs/musicfsd.conf (or --config),
 * then the musicfsd.conf.d/NAME.conf drop-ins in lexical order, then command-line flags. INI parsed by
 * libinih. Owns the Config struct and nothing else; applying a config is the manager's job.
 *
 * File format:
 *   [musicfsd]
 *   mountpoint = /srv/music          cache_dir = /var/cache/musicfs
 *   template = {albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}
 *   fuse_threads = 8   log_level = info   bus = system|user   scan_batch = 256
 *   read_ahead_kb = 1024   (KiB of kernel read-ahead on the mount; 0: the kernel's default)
 *   entry_timeout = 86400   (seconds; attr_timeout likewise)
 *   health_interval = 30   (seconds between health checks of every origin, 1..3600; 60 s while
 *                           offline, i.e. every origin is unhealthy)
 *   health_timeout = 5     (seconds one health check may take before it counts as failed, 1..300)
 *   [cache]
 *   budget = 10G   (bytes, or with a K/M/G/T suffix: powers of 1024)   readahead = 1   (tracks; 0: off)
 *   passthrough = no   maintenance_interval = 60   (seconds)
 *   [origin "NAME"]    (or [origin.NAME])
 *   kind = local   path = /srv/music-files   priority = 10
 *   watch = inotify|poll|off   (change detection, issue #6: default inotify for local origins; poll
 *                               rescans every poll_interval; off: only Rescan and restarts)
 *   poll_interval = 300        (seconds, 1..604800; also in [musicfsd] as every origin's default)
 *   kind = s3   bucket = music   (and the other keys in config-s3.h; no path)
 *   kind = sftp   host = nas   path = /srv/music   (and the other keys in config-sftp.h)
 * One "key = value" per line (at most 197 characters); indentation is allowed; a value in double
 * quotes keeps the blanks at its ends; '#' or ';' starts a comment line, " ;" an inline comment.
 * Drop-ins amend the origin of the same name; a name defined twice in one file is an error.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config-s3.h"
#include "config-sftp.h"

#define CONFIG_DEFAULT_PATH "/etc/musicfs/musicfsd.conf"
#define CONFIG_DEFAULT_TEMPLATE "{albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}"
#define CONFIG_DEFAULT_CACHE_DIR "/var/cache/musicfs"
#define CONFIG_DEFAULT_POLL_INTERVAL_SEC 300
#define CONFIG_DEFAULT_CACHE_BUDGET (UINT64_C(10) << 30)
#define CONFIG_DEFAULT_CACHE_READAHEAD 1
/* The kernel's 128 KiB makes a sequential read 8 FUSE requests (and 8 origin reads on a miss) per
 * MiB; libfuse lets a request carry 1 MiB (max_write 1 MiB, so max_pages 256). */
#define CONFIG_DEFAULT_READ_AHEAD_KB 1024
#define CONFIG_DEFAULT_CACHE_MAINTENANCE_SEC 60
#define CONFIG_DEFAULT_HEALTH_INTERVAL_SEC 30   /* D11 */
#define CONFIG_DEFAULT_HEALTH_TIMEOUT_SEC 5

typedef struct OriginConfig {
        char *name;             /* [A-Za-z0-9_-]+, unique */
        char *kind;             /* "local" (s3, sftp in later issues) */
        char *path;             /* local: absolute directory */
        unsigned priority;      /* lower is preferred; default: order of appearance × 10 */
        char *watch;            /* "inotify", "poll", "off"; NULL: the kind's default (local: inotify) */
        unsigned poll_interval; /* seconds; 0: Config.poll_interval */
        OriginS3Config s3;      /* kind = s3: its keys (config-s3.h) */
        OriginSftpConfig sftp;  /* kind = sftp: its keys (config-sftp.h); timeout is s3.timeout_sec */
} OriginConfig;

typedef struct Config {
        char *mountpoint;
        char *cache_dir;
        char *template;
        bool user_bus;
        unsigned fuse_threads;  /* default 8, 1..64 */
        unsigned read_ahead_kb; /* the mount's kernel read-ahead, 0..16384 KiB; 0: the kernel's own */
        unsigned scan_batch;    /* files per catalog transaction, default 256 */
        int log_level;          /* LOG_INFO */
        unsigned entry_timeout; /* seconds, default 86400: the tree is read-only, changes are pushed */
        unsigned attr_timeout;
        /* [cache] (the directory is cache_dir above) */
        uint64_t cache_budget;          /* bytes, default 10 GiB, at least 1 MiB */
        unsigned cache_readahead;       /* next tracks of an album fetched while one plays; 0: off */
        bool cache_passthrough;         /* start with reads bypassing the cache */
        unsigned cache_maintenance_sec; /* seconds between maintenance passes, default 60, 1..3600 */
        unsigned poll_interval; /* seconds between polls of polled origins, default 300 */
        unsigned health_interval;       /* seconds between health checks, default 30 (D11) */
        unsigned health_timeout;        /* seconds one health check may take, default 5 */
        OriginConfig *origins;
        size_t n_origins;
        char *config_path;      /* the file that was read, NULL when none */
} Config;

void config_init_defaults(Config *c);
void config_free(Config *c);    /* frees members, leaves c zeroed */

/* Reads path (NULL: CONFIG_DEFAULT_PATH if it exists, nothing otherwise) and its drop-in directory
 * "<path>.d/" (musicfsd.conf.d/) into c, on top of what is there.
 * -EINVAL with *ret_error = "FILE:LINE: reason" on bad input; -ENOENT if an explicit path is missing. */
int config_load_file(Config *c, const char *path, bool explicit_path, char **ret_error);

/* Adds a local origin named after the directory's base name (made unique), as --origin DIR does. */
int config_add_origin_dir(Config *c, const char *dir, char **ret_error);

/* Checks the whole config (mountpoint absolute, origins exist and are absolute, template parses...).
 * -EINVAL with a sentence in *ret_error. */
int config_validate(const Config *c, char **ret_error);
