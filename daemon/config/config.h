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
 *   entry_timeout = 86400   (seconds; attr_timeout likewise)
 *   [origin "NAME"]    (or [origin.NAME])
 *   kind = local   path = /srv/music-files   priority = 10
 * One "key = value" per line (at most 197 characters); indentation is allowed; a value in double
 * quotes keeps the blanks at its ends; '#' or ';' starts a comment line, " ;" an inline comment.
 * Drop-ins amend the origin of the same name; a name defined twice in one file is an error.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_DEFAULT_PATH "/etc/musicfs/musicfsd.conf"
#define CONFIG_DEFAULT_TEMPLATE "{albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}"
#define CONFIG_DEFAULT_CACHE_DIR "/var/cache/musicfs"

typedef struct OriginConfig {
        char *name;             /* [A-Za-z0-9_-]+, unique */
        char *kind;             /* "local" (s3, sftp in later issues) */
        char *path;             /* local: absolute directory */
        unsigned priority;      /* lower is preferred; default: order of appearance × 10 */
} OriginConfig;

typedef struct Config {
        char *mountpoint;
        char *cache_dir;
        char *template;
        bool user_bus;
        unsigned fuse_threads;  /* default 8, 1..64 */
        unsigned scan_batch;    /* files per catalog transaction, default 256 */
        int log_level;          /* LOG_INFO */
        unsigned entry_timeout; /* seconds, default 86400: the tree is read-only, changes are pushed */
        unsigned attr_timeout;
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
