/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bus-api.h"
#include "bus-manager.h"
#include "bus-origin.h"
#include "failpoint.h"
#include "log.h"
#include "polkit.h"
#include "search.h"
#include "strutil.h"

/* Sanity bounds on what callers send: anything beyond is a mistake or an attack, refused with a
 * sentence rather than passed on. */
#define ORIGIN_NAME_MAX 64
#define ORIGIN_PRIORITY_MAX 1000000u
/* How much of a caller's string an error message repeats. */
#define ECHO_MAX 200

static bool isempty(const char *s) {
        return !s || !*s;
}

static bool origin_name_valid(const char *name) {
        size_t n = strlen(name);
        return n > 0 && n <= ORIGIN_NAME_MAX &&
               strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* "/a/b" is under "/a" and under itself; "/ab" is not under "/a". */
static bool path_is_under(const char *path, const char *dir) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/')
                n--;
        if (n == 1 && dir[0] == '/')
                return true;
        return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static int check_origin_name(const char *name, sd_bus_error *error) {
        if (origin_name_valid(name))
                return 0;
        if (isempty(name))
                return sd_bus_error_set(error, MUSICFS_ERROR_INVALID_ARGS, "The origin name is empty.");
        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                 "Origin name \"%.*s\" is not valid: use 1 to %d letters, digits, '_' or '-'.",
                                 ECHO_MAX, name, ORIGIN_NAME_MAX);
}

static int check_absolute_path(const char *path, const char *what, sd_bus_error *error) {
        if (isempty(path))
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "The %s is empty.", what);
        if (strlen(path) >= PATH_MAX)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "The %s is longer than %d bytes.", what,
                                         PATH_MAX - 1);
        if (path[0] != '/')
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "The %s \"%.*s\" is not an absolute path.",
                                         what, ECHO_MAX, path);
        return 0;
}

static int origin_not_found(sd_bus_error *error, const char *name) {
        return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_ORIGIN, "There is no origin named \"%.*s\".",
                                 ECHO_MAX, name);
}

static int refuse_while_stopping(Manager *m, sd_bus_error *error) {
        if (!m->stopping)
                return 0;
        return sd_bus_error_set(error, MUSICFS_ERROR_BUSY, "musicfsd is stopping.");
}

/* The prologue of every state change: polkit first (which may park the call and dispatch it again
 * once it answers: 0), then no changes while stopping. 1 means go ahead. */
static int authorize_change(Manager *m, sd_bus_message *message, const char *action, sd_bus_error *error) {
        int r = polkit_verify(m->polkit, message, action, error);
        if (r <= 0)
                return r;
        r = refuse_while_stopping(m, error);
        return r < 0 ? r : 1;
}

/* The a{sv} options of a method. Each method lists the keys it knows with their types; none knows
 * any yet, so every key is refused, but by name, so that a caller sees what it got wrong. */
typedef struct BusOption {
        const char *key;
        const char *signature;
} BusOption;

static int read_options(sd_bus_message *message, const char *method, const BusOption *known, sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(message, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const char *key, *contents = NULL;
                const BusOption *o = NULL;
                char type;

                r = sd_bus_message_enter_container(message, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read(message, "s", &key);
                if (r < 0)
                        return r;
                for (const BusOption *k = known; k && k->key; k++)
                        if (strcmp(k->key, key) == 0)
                                o = k;
                if (!o)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                                 "Unknown option \"%.*s\": %s takes %s.", ECHO_MAX, key, method,
                                                 known && known->key ? "other options" : "no options yet");
                r = sd_bus_message_peek_type(message, &type, &contents);
                if (r < 0)
                        return r;
                if (!contents || strcmp(contents, o->signature) != 0)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                                 "Option \"%s\" wants a value of type '%s', not '%s'.", key,
                                                 o->signature, strempty(contents));
                r = sd_bus_message_skip(message, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(message);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(message);
}

static const BusOption no_options[] = { {} };

/* ---- properties ---- */

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", MUSICFS_VERSION);
}

static int property_get_state(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "s", m->state);
}

static int property_get_passthrough(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        /* While stopping, the stop thread closes the cache: show what was last seen. */
        if (m->stopping || !m->cache)
                return sd_bus_message_append(reply, "b", m->cache_passthrough_shown);
        return sd_bus_message_append(reply, "b", cache_passthrough(m->cache));
}

static int cache_not_open(sd_bus_error *error) {
        return sd_bus_error_set(error, MUSICFS_ERROR_NOT_SUPPORTED, "The chunk cache is not open.");
}

/* Never reached in practice: on_manager_message() answers Set of Passthrough first, because a setter
 * cannot wait for polkit (sd-bus replies as soon as it returns). Kept so the property is writable in
 * the introspection data; a Set that slipped past unauthorized is refused. */
static int property_set_passthrough(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *value, void *userdata, sd_bus_error *error) {
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Passthrough is switched through SetPassthrough.");
}

static int property_get_mount_point(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "s", strempty(m->mountpoint));
}

static int property_get_track_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "t", m->track_count);
}

/* CacheBytes, CacheBudget. */
static int property_get_cache_size(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        CacheStats st = { .bytes = m->cache_bytes_shown, .budget = m->config.cache_budget };

        /* While stopping, the stop thread closes the cache: show what was last seen. */
        if (m->cache && !m->stopping) {
                int r = cache_get_stats(m->cache, &st);
                if (r < 0)
                        return sd_bus_error_set_errnof(error, r, "Failed to read the cache statistics: %m");
        }
        return sd_bus_message_append(reply, "t", strcmp(property, "CacheBudget") == 0 ? st.budget : st.bytes);
}

static int property_get_scan_progress(sd_bus *bus, const char *path, const char *interface, const char *property,
                                      sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "(stt)", strempty(m->progress_origin), m->progress_files,
                                     m->progress_known);
}

static int property_get_origins(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "o");
        for (size_t i = 0; r >= 0 && i < m->n_managed; i++)
                r = sd_bus_message_append(reply, "o", m->managed[i]->object_path);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

/* ---- the mount ---- */

static int method_mount(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *path, *target;
        int r;

        r = sd_bus_message_read(message, "s", &path);
        if (r < 0)
                return r;
        r = read_options(message, "Mount", no_options, error);
        if (r < 0)
                return r;
        if (!isempty(path)) {
                r = check_absolute_path(path, "mountpoint", error);
                if (r < 0)
                        return r;
        }

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_MOUNT, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */

        if (m->fs)
                return sd_bus_error_setf(error, MUSICFS_ERROR_BUSY, "The library is mounted at %s already; unmount it first.",
                                         strempty(m->mountpoint));
        target = isempty(path) ? m->config.mountpoint : path;
        /* The scanner would walk the daemon's own mount, and the mount would hide the origin. */
        for (size_t i = 0; i < m->n_managed; i++) {
                const Origin *o = m->managed[i]->origin;
                if (strcmp(o->ops->kind, "local") != 0)
                        continue;
                if (path_is_under(target, o->url) || path_is_under(o->url, target))
                        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                                 "Mountpoint %.*s overlaps origin %s (%s); mount it elsewhere.",
                                                 ECHO_MAX, target, o->name, m->managed[i]->url);
        }

        r = manager_mount(m, target);
        switch (r) {
        case 0:
                break;
        case -EBUSY:
                return sd_bus_error_setf(error, MUSICFS_ERROR_BUSY, "Another filesystem is mounted at %.*s.", ECHO_MAX, target);
        case -ENOENT:
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Mountpoint %.*s does not exist.", ECHO_MAX, target);
        case -ENOTDIR:
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Mountpoint %.*s is not a directory.",
                                         ECHO_MAX, target);
        case -ENOTEMPTY:
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Mountpoint %.*s is not empty.", ECHO_MAX, target);
        default:
                return sd_bus_error_set_errnof(error, r, "Failed to mount the library at %.*s: %m", ECHO_MAX, target);
        }
        return sd_bus_reply_method_return(message, NULL);
}

static int method_unmount(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *where = NULL;
        int force, r;

        r = sd_bus_message_read(message, "b", &force);
        if (r < 0)
                return r;

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_MOUNT, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */

        if (m->mountpoint) {
                where = strdup(m->mountpoint);
                if (!where)
                        return -ENOMEM;
        }
        r = manager_unmount(m, force);
        if (r == -ENOTCONN)
                return sd_bus_error_set(error, MUSICFS_ERROR_NOT_MOUNTED, "The library is not mounted.");
        if (r == -EBUSY)
                return sd_bus_error_setf(error, MUSICFS_ERROR_BUSY,
                                         "%s is busy: files are open in it or a process works in it. Close them, "
                                         "or unmount with force to detach it.", strna(where));
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to unmount %s: %m", strna(where));
        return sd_bus_reply_method_return(message, NULL);
}

/* ---- origins ---- */

/* A local origin's directory from "/abs/dir" or "file:///abs/dir" (percent-decoded); *ret_remote is
 * set instead for the schemes of later issues. */
static int parse_origin_url(const char *url, char **ret_dir, const char **ret_remote, sd_bus_error *error) {
        static const char *const remote[] = { "s3", "sftp" };
        const char *colon;
        int r;

        *ret_dir = NULL;
        *ret_remote = NULL;
        if (isempty(url))
                return sd_bus_error_set(error, MUSICFS_ERROR_INVALID_ARGS,
                                        "The origin URL is empty; expected file:///absolute/directory or /absolute/directory.");
        if (strlen(url) >= PATH_MAX + 16)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "The origin URL is longer than %d bytes.",
                                         PATH_MAX + 15);

        if (url[0] == '/') {
                r = check_absolute_path(url, "origin directory", error);
                if (r < 0)
                        return r;
                *ret_dir = strdup(url);
                return *ret_dir ? 0 : -ENOMEM;
        }

        colon = strstr(url, "://");
        if (colon) {
                for (size_t i = 0; i < ELEMENTSOF(remote); i++)
                        if ((size_t) (colon - url) == strlen(remote[i]) && strncasecmp(url, remote[i], strlen(remote[i])) == 0) {
                                *ret_remote = remote[i];
                                return 0;
                        }
        }
        if (!colon || (size_t) (colon - url) != 4 || strncasecmp(url, "file", 4) != 0) {
                _cleanup_free_ char *shown = NULL;
                if (manager_url_strip_secrets(url, &shown) < 0)
                        return -ENOMEM;
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Unsupported origin URL \"%.*s\": expected file:///absolute/directory, "
                                         "/absolute/directory, s3://... or sftp://....", ECHO_MAX, shown);
        }

        const char *p = colon + 3;
        if (strncasecmp(p, "localhost/", 10) == 0)
                p += 9;
        if (p[0] != '/')
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Origin URL \"%.*s\" names another host; a file URL must be file:///absolute/directory.",
                                         ECHO_MAX, url);

        if (strpbrk(p, "?#"))
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Origin URL \"%.*s\" has a query or fragment; a file URL names a directory only.",
                                         ECHO_MAX, url);
        _cleanup_free_ char *dir = NULL;
        int k = percent_decode(p, strlen(p), true, &dir);
        if (k == -EINVAL)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Origin URL \"%.*s\" has a bad percent escape.", ECHO_MAX, url);
        if (k < 0)
                return k;
        r = check_absolute_path(dir, "origin directory", error);
        if (r < 0)
                return r;
        *ret_dir = TAKE_PTR(dir);
        return 0;
}

static int method_add_origin(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *dir = NULL;
        const char *name, *url, *remote = NULL;
        ManagedOrigin *mo = NULL;
        uint32_t priority;
        int r;

        r = sd_bus_message_read(message, "ssu", &name, &url, &priority);
        if (r < 0)
                return r;
        r = read_options(message, "AddOrigin", no_options, error);
        if (r < 0)
                return r;
        r = check_origin_name(name, error);
        if (r < 0)
                return r;
        if (priority > ORIGIN_PRIORITY_MAX)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Priority %u is out of range; expected 0 (preferred) to %u.", priority,
                                         ORIGIN_PRIORITY_MAX);
        r = parse_origin_url(url, &dir, &remote, error);
        if (r < 0)
                return r;
        _cleanup_(config_s3_done) OriginS3Config s3 = { .path_style = -1 };
        if (streq_ptr(remote, "s3")) {
                _cleanup_free_ char *reason = NULL;
                r = config_s3_from_url(url, &s3, &reason);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Bad s3:// origin URL: %s.",
                                                 strna(reason));
        }
        _cleanup_(config_sftp_done) OriginSftpConfig sftp = { .agent = -1 };
        _cleanup_free_ char *sftp_path = NULL;
        if (streq_ptr(remote, "sftp")) {
                _cleanup_free_ char *reason = NULL;
                r = config_sftp_from_url(url, &sftp, &sftp_path, &reason);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                                 "Bad sftp:// origin URL: %s (expected sftp://[user@]host[:port]/absolute/directory; "
                                                 "identity file, agent, known_hosts and the rest need an [origin] section).",
                                                 strna(reason));
        }

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_ORIGINS, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */

        if (streq_ptr(remote, "s3")) {
                r = manager_add_s3_origin(m, name, &s3, priority, &mo);
                if (r == -EEXIST)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_ORIGIN_EXISTS, "There is an origin named \"%s\" already.", name);
                if (r == -EBUSY)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_BUSY,
                                                 "Origin \"%s\" is still being removed; add it again when that is done.", name);
                if (r < 0)
                        return sd_bus_error_set_errnof(error, r, "Failed to add S3 origin %s: %m", name);
                return sd_bus_reply_method_return(message, "o", mo->object_path);
        }
        if (streq_ptr(remote, "sftp")) {
                r = manager_add_sftp_origin(m, name, &sftp, sftp_path, priority, &mo);
                if (r == -EEXIST)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_ORIGIN_EXISTS, "There is an origin named \"%s\" already.", name);
                if (r == -EBUSY)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_BUSY,
                                                 "Origin \"%s\" is still being removed; add it again when that is done.", name);
                if (r < 0)
                        return sd_bus_error_set_errnof(error, r, "Failed to add SFTP origin %s: %m", name);
                return sd_bus_reply_method_return(message, "o", mo->object_path);
        }
        if (remote)
                return sd_bus_error_setf(error, MUSICFS_ERROR_NOT_SUPPORTED,
                                         "%s origins are not supported yet: this musicfsd has local origins only.", remote);
        if (manager_find_origin(m, name))
                return sd_bus_error_setf(error, MUSICFS_ERROR_ORIGIN_EXISTS, "There is an origin named \"%s\" already.", name);
        if ((m->mountpoint && (path_is_under(dir, m->mountpoint) || path_is_under(m->mountpoint, dir))) ||
            (path_is_under(dir, m->config.mountpoint) || path_is_under(m->config.mountpoint, dir)))
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Directory %.*s overlaps the mountpoint %s; the scan would walk the daemon's own mount.",
                                         ECHO_MAX, dir, m->mountpoint ?: m->config.mountpoint);

        r = manager_add_origin(m, name, dir, priority, &mo);
        switch (r) {
        case 0:
                break;
        case -EEXIST:
                return sd_bus_error_setf(error, MUSICFS_ERROR_ORIGIN_EXISTS, "There is an origin named \"%s\" already.", name);
        case -EBUSY:
                return sd_bus_error_setf(error, MUSICFS_ERROR_BUSY,
                                         "Origin \"%s\" is still being removed; add it again when that is done.", name);
        case -ENOENT:
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Directory %.*s does not exist.", ECHO_MAX, dir);
        case -ENOTDIR:
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "%.*s is not a directory.", ECHO_MAX, dir);
        default:
                return sd_bus_error_set_errnof(error, r, "Failed to add origin %s (%.*s): %m", name, ECHO_MAX, dir);
        }
        return sd_bus_reply_method_return(message, "o", mo->object_path);
}

static int method_remove_origin(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = sd_bus_message_read(message, "s", &name);
        if (r < 0)
                return r;
        r = check_origin_name(name, error);
        if (r < 0)
                return r;

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_ORIGINS, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */

        r = manager_remove_origin(m, name, message);
        if (r == -ENXIO)
                return origin_not_found(error, name);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to remove origin %s: %m", name);
        return 1;       /* answered when its files are out of the catalog and the tree */
}

void bus_manager_reply_remove_origin(Manager *m, sd_bus_message *call, const char *name, int r) {
        int k;

        if (r < 0)
                k = sd_bus_reply_method_errorf(call, MUSICFS_ERROR_CATALOG,
                                               "Origin %s is removed from the daemon and its tree, but its files could "
                                               "not be dropped from the catalog: %s.", name, strerror(-r));
        else
                k = sd_bus_reply_method_return(call, NULL);
        if (k < 0)
                log_debug_errno(k, "Failed to answer RemoveOrigin(%s), ignoring: %m", name);
}

static int method_check_origin(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        ManagedOrigin *mo;
        const char *name;
        int r;

        r = sd_bus_message_read(message, "s", &name);
        if (r < 0)
                return r;
        r = check_origin_name(name, error);
        if (r < 0)
                return r;
        mo = manager_find_origin(m, name);
        if (!mo)
                return origin_not_found(error, name);
        r = refuse_while_stopping(m, error);
        if (r < 0)
                return r;

        r = manager_check_origin(m, mo, message);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to start a health check of origin %s: %m", name);
        if (r > 0)      /* a check hangs past its timeout: the record says so already */
                return sd_bus_reply_method_return(message, "s", origin_health_state_to_string(mo->health));
        return 1;       /* answered when the check ends or times out */
}

void bus_manager_reply_check_origin(Manager *m, sd_bus_message *call, const char *name, const ManagedOrigin *mo) {
        int k;

        if (!mo)
                k = sd_bus_reply_method_errorf(call, MUSICFS_ERROR_NO_SUCH_ORIGIN,
                                               "Origin %s was removed while it was being checked.", name);
        else
                k = sd_bus_reply_method_return(call, "s", origin_health_state_to_string(mo->health));
        if (k < 0)
                log_debug_errno(k, "Failed to answer CheckOrigin(%s), ignoring: %m", name);
}

static int method_get_origin_health(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssutts)");
        for (size_t i = 0; r >= 0 && i < m->n_managed; i++) {
                const ManagedOrigin *mo = m->managed[i];
                r = sd_bus_message_append(reply, "(ssutts)", mo->origin->name, origin_health_state_to_string(mo->health),
                                          (uint32_t) mo->consecutive_failures, mo->last_latency_usec,
                                          mo->last_check_usec, strempty(mo->last_error));
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_rescan(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = sd_bus_message_read(message, "s", &name);
        if (r < 0)
                return r;
        if (!isempty(name)) {
                r = check_origin_name(name, error);
                if (r < 0)
                        return r;
        }

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_ORIGINS, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */

        r = manager_rescan(m, name);
        if (r == -ENXIO)
                return origin_not_found(error, name);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to queue the scan: %m");
        return sd_bus_reply_method_return(message, NULL);
}

/* ---- capabilities of later issues ---- */

/* ---- the chunk cache ---- */

/* SetPassthrough and Set of the Passthrough property, once authorized. */
static int set_passthrough(Manager *m, bool enabled, sd_bus_error *error) {
        int r;

        if (!m->cache)
                return cache_not_open(error);
        r = refuse_while_stopping(m, error);
        if (r < 0)
                return r;
        r = manager_set_passthrough(m, enabled);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to turn passthrough %s: %m", enabled ? "on" : "off");
        return 0;
}

static int method_set_passthrough(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int enabled, r;

        r = sd_bus_message_read(message, "b", &enabled);
        if (r < 0)
                return r;
        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_CACHE, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */
        r = set_passthrough(m, enabled, error);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(message, NULL);
}

typedef struct SearchResults {
        SearchResult *r;
        size_t n;
} SearchResults;

static void search_results_freep(SearchResults *s) {
        search_results_free(s->r, s->n);
}

static int method_search(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *query;
        uint32_t limit;
        int r;

        r = sd_bus_message_read(message, "su", &query, &limit);
        if (r < 0)
                return r;
        if (limit == 0 || limit > SEARCH_LIMIT_MAX)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                         "Limit %u is out of range; expected 1 to %u results.", limit, SEARCH_LIMIT_MAX);

        /* The stop thread closes the catalog; it starts only after stopping is set, on this thread. */
        r = refuse_while_stopping(m, error);
        if (r < 0)
                return r;

        /* On the loop thread: a search takes milliseconds (bench/README.md, Search) on the catalog's
         * own read-only search connection, which never waits for a scan's batch. */
        _cleanup_(search_results_freep) SearchResults results = {};
        _cleanup_free_ char *reason = NULL;
        Tree *tree = tree_store_get(m->trees);
        r = search_run(m->catalog, tree, query, limit, true, &results.r, &results.n, &reason);
        if (r == -EINVAL) {
                tree_unref(tree);
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "%s",
                                         reason ?: "The search query is not valid.");
        }
        if (r == -EBUSY) {
                tree_unref(tree);
                return sd_bus_error_set(error, MUSICFS_ERROR_BUSY,
                                        "The search index was damaged and is being rebuilt; try again in a moment.");
        }
        if (r < 0) {
                tree_unref(tree);
                return sd_bus_error_set_errnof(error, r, "Failed to search the catalog: %m");
        }

        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssssd)");
        for (size_t i = 0; r >= 0 && i < results.n; i++) {
                const SearchResult *res = &results.r[i];
                r = sd_bus_message_append(reply, "(ssssd)", res->path, res->artist, res->album, res->title,
                                          res->score);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        tree_unref(tree);       /* results point into it */
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* An absolute path in the tree ("/Artist/Album", "/" for everything) as the cache wants it: relative,
 * without repeated or trailing slashes ("Artist/Album", ""). "." and ".." are refused: the tree has
 * neither, and a caller who sends them means a filesystem path we would have to resolve. */
static int tree_path_normalize(const char *path, char **ret, sd_bus_error *error) {
        _cleanup_free_ char *out = malloc(strlen(path) + 1);
        size_t n = 0;

        if (!out)
                return -ENOMEM;
        for (const char *p = path; *p; ) {
                p += strspn(p, "/");
                size_t len = strcspn(p, "/");
                if (len == 0)
                        break;
                if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
                        return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS,
                                                 "The path \"%.*s\" has a \".\" or \"..\" component; give the path "
                                                 "of a file or directory of the library as it is.", ECHO_MAX, path);
                if (n > 0)
                        out[n++] = '/';
                memcpy(out + n, p, len);
                n += len;
                p += len;
        }
        out[n] = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

/* Pin and Unpin take the path in the tree ("/Artist/Album") or under the mountpoint
 * ("/srv/music/Artist/Album"); the latter is tried first while mounted, then the former. */
static int method_pin_or_unpin(sd_bus_message *message, Manager *m, bool pin, sd_bus_error *error) {
        _cleanup_free_ char *in_tree = NULL, *in_mount = NULL;
        const char *path;
        int r;

        r = sd_bus_message_read(message, "s", &path);
        if (r < 0)
                return r;
        r = check_absolute_path(path, "path", error);
        if (r < 0)
                return r;
        r = tree_path_normalize(path, &in_tree, error);
        if (r < 0)
                return r;
        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_CACHE, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */
        if (!m->cache)
                return cache_not_open(error);

        if (m->mountpoint && strcmp(m->mountpoint, "/") != 0 && path_is_under(path, m->mountpoint)) {
                r = tree_path_normalize(path + strlen(m->mountpoint), &in_mount, error);
                if (r < 0)
                        return r;
        }

        r = -ENOENT;
        if (in_mount)
                r = pin ? manager_cache_pin(m, in_mount) : manager_cache_unpin(m, in_mount);
        if (r == -ENOENT)
                r = pin ? manager_cache_pin(m, in_tree) : manager_cache_unpin(m, in_tree);
        switch (r) {
        case 0:
                break;
        case -ENOENT:
                if (pin)
                        return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_FILE,
                                                 "There is no file or directory \"%.*s\" in the library.", ECHO_MAX, path);
                return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_FILE, "\"%.*s\" is not pinned.", ECHO_MAX, path);
        case -ENOSPC:
                return sd_bus_error_setf(error, MUSICFS_ERROR_CACHE_FULL,
                                         "The files under \"%.*s\" do not fit in the cache budget with what is pinned "
                                         "already; unpin something or raise [cache] budget.", ECHO_MAX, path);
        default:
                return sd_bus_error_set_errnof(error, r, "Failed to %s \"%.*s\": %m", pin ? "pin" : "unpin", ECHO_MAX, path);
        }
        return sd_bus_reply_method_return(message, NULL);
}

static int method_pin(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return method_pin_or_unpin(message, userdata, true, error);
}

static int method_unpin(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return method_pin_or_unpin(message, userdata, false, error);
}

static int append_entry(sd_bus_message *reply, const char *key, const char *type, ...) {
        va_list ap;
        int r;

        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', type);
        if (r >= 0) {
                va_start(ap, type);
                r = sd_bus_message_appendv(reply, type, ap);
                va_end(ap);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int method_get_cache_stats(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        CacheStats st = {};
        int r;

        r = refuse_while_stopping(m, error);
        if (r < 0)
                return r;
        if (!m->cache)
                return cache_not_open(error);
        r = cache_get_stats(m->cache, &st);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to read the cache statistics: %m");

        /* Keys as documented in the XML; a new figure is a new key, never a new type of an old one. */
        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0) r = append_entry(reply, "bytes", "t", st.bytes);
        if (r >= 0) r = append_entry(reply, "budget", "t", st.budget);
        if (r >= 0) r = append_entry(reply, "chunks", "t", st.chunks);
        if (r >= 0) r = append_entry(reply, "pinned-bytes", "t", st.pinned_bytes);
        if (r >= 0) r = append_entry(reply, "versions", "t", st.versions);
        if (r >= 0) r = append_entry(reply, "dedup-ratio", "d", st.dedup_ratio);
        if (r >= 0) r = append_entry(reply, "hits", "t", st.hits);
        if (r >= 0) r = append_entry(reply, "misses", "t", st.misses);
        if (r >= 0) r = append_entry(reply, "evictions", "t", st.evictions);
        if (r >= 0) r = append_entry(reply, "evicted-bytes", "t", st.evicted_bytes);
        if (r >= 0) r = append_entry(reply, "bad-chunks", "t", st.bad_chunks);
        if (r >= 0) r = append_entry(reply, "fills-active", "t", st.fills_active);
        if (r >= 0) r = append_entry(reply, "fills-queued", "t", st.fills_queued);
        if (r >= 0) r = append_entry(reply, "pins", "t", st.pins);
        if (r >= 0) r = append_entry(reply, "pin-bytes-total", "t", st.pin_bytes_total);
        if (r >= 0) r = append_entry(reply, "pin-bytes-done", "t", st.pin_bytes_done);
        if (r >= 0) r = append_entry(reply, "disk-percent", "d", st.disk_percent);
        if (r >= 0) r = append_entry(reply, "passthrough", "b", (int) st.passthrough);
        if (r >= 0) r = append_entry(reply, "passthrough-reason", "s",
                                     cache_passthrough_reason_to_string(st.passthrough_reason));
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_clear_cache(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int r;

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_CACHE, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */
        if (!m->cache)
                return cache_not_open(error);
        r = cache_clear(m->cache);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to clear the cache: %m");
        log_info("Cache cleared (pinned files kept)");
        bus_manager_emit_changed(m, "CacheBytes");
        return sd_bus_reply_method_return(message, NULL);
}

/* Verification reads every chunk: minutes on a big cache, so it runs off the loop and the call is
 * answered when it ends. Only repair changes anything, so only repair is privileged. */
static int method_verify_cache(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int repair, r;

        r = sd_bus_message_read(message, "b", &repair);
        if (r < 0)
                return r;
        if (repair) {
                r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_CACHE, error);
                if (r <= 0)
                        return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */
        } else {
                r = refuse_while_stopping(m, error);
                if (r < 0)
                        return r;
        }
        if (!m->cache)
                return cache_not_open(error);

        r = manager_cache_verify(m, repair, message);
        if (r == -EBUSY)
                return sd_bus_error_set(error, MUSICFS_ERROR_BUSY,
                                        "A verification of the cache is running already; try again when it is done.");
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to start verifying the cache: %m");
        return 1;       /* answered when the verification ends */
}

void bus_manager_reply_verify_cache(Manager *m, sd_bus_message *call, bool repair, int r, const CacheVerifyResult *res) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int k;

        if (r < 0) {
                k = sd_bus_reply_method_errnof(call, r, "Failed to %s the cache: %m", repair ? "repair" : "verify");
                goto done;
        }
        k = sd_bus_message_new_method_return(call, &reply);
        if (k >= 0)
                k = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (k >= 0) k = append_entry(reply, "checked", "t", res->checked);
        if (k >= 0) k = append_entry(reply, "bad", "t", res->bad);
        if (k >= 0) k = append_entry(reply, "missing", "t", res->missing);
        if (k >= 0) k = append_entry(reply, "orphans", "t", res->orphans);
        if (k >= 0) k = append_entry(reply, "repaired", "t", res->repaired);
        if (k >= 0)
                k = sd_bus_message_close_container(reply);
        if (k >= 0)
                k = sd_bus_send(NULL, reply, NULL);
done:
        if (k < 0)
                log_debug_errno(k, "Failed to answer VerifyCache, ignoring: %m");
}

/* ---- reload ---- */

static int method_reload(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *reason = NULL;
        int r;

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_RELOAD, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */

        r = manager_reload(m, &reason);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_CONFIG, "%s; the running configuration is kept.",
                                         reason ?: "Invalid configuration");
        return sd_bus_reply_method_return(message, NULL);
}

/* ---- failpoints ---- */

#if MUSICFS_FAILPOINTS
static int method_arm_failpoint(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *reason = NULL;
        const char *name, *actions;
        int r;

        r = sd_bus_message_read(message, "ss", &name, &actions);
        if (r < 0)
                return r;

        r = polkit_verify(m->polkit, message, MUSICFS_POLKIT_ACTION_FAILPOINTS, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = failpoint_arm(name, actions, &reason);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_FAILPOINT, "There is no failpoint named \"%.*s\".",
                                         ECHO_MAX, name);
        if (r == -EINVAL)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Invalid actions \"%.*s\" for failpoint %s: %.*s.",
                                         ECHO_MAX, actions, name, 2 * ECHO_MAX, reason ?: "cannot parse");
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to arm failpoint %s: %m", name);

        log_notice("Failpoint %s armed: %s", name, actions);
        return sd_bus_reply_method_return(message, NULL);
}

static int method_disarm_failpoint(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = sd_bus_message_read(message, "s", &name);
        if (r < 0)
                return r;

        r = polkit_verify(m->polkit, message, MUSICFS_POLKIT_ACTION_FAILPOINTS, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = failpoint_disarm(name);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_FAILPOINT, "There is no failpoint named \"%.*s\".",
                                         ECHO_MAX, name);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to disarm failpoint %s: %m", name);

        log_notice("Failpoint %s disarmed", name);
        return sd_bus_reply_method_return(message, NULL);
}

static int method_list_failpoints(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        FailpointInfo *points = NULL;
        size_t n = 0;
        int r;

        r = failpoint_list(&points, &n);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to list failpoints: %m");

        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssu)");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(reply, "(ssu)", points[i].name, strempty(points[i].actions), points[i].fired);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        failpoint_info_free(points, n);
        if (r < 0)
                return r;

        return sd_bus_send(NULL, reply, NULL);
}
#else
/* Compiled out (-Dfailpoints=false): the methods stay, so the interface is the same in every build
 * (D13), but the registry is not there to call. */
static int failpoints_not_supported(sd_bus_error *error) {
        return sd_bus_error_set(error, MUSICFS_ERROR_NOT_SUPPORTED,
                                "Failpoints are not compiled into this musicfsd (built with -Dfailpoints=false).");
}

static int method_arm_failpoint(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return failpoints_not_supported(error);
}

static int method_disarm_failpoint(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return failpoints_not_supported(error);
}

static int method_list_failpoints(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return failpoints_not_supported(error);
}
#endif

const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_WRITABLE_PROPERTY("Passthrough", "b", property_get_passthrough, property_set_passthrough, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("MountPoint", "s", property_get_mount_point, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("TrackCount", "t", property_get_track_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CacheBytes", "t", property_get_cache_size, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CacheBudget", "t", property_get_cache_size, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("ScanProgress", "(stt)", property_get_scan_progress, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Origins", "ao", property_get_origins, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),

        SD_BUS_METHOD_WITH_ARGS("Mount",
                                SD_BUS_ARGS("s", mountpoint, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                method_mount,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unmount",
                                SD_BUS_ARGS("b", force),
                                SD_BUS_NO_RESULT,
                                method_unmount,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AddOrigin",
                                SD_BUS_ARGS("s", name, "s", url, "u", priority, "a{sv}", options),
                                SD_BUS_RESULT("o", origin),
                                method_add_origin,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("RemoveOrigin",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_remove_origin,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CheckOrigin",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_RESULT("s", state),
                                method_check_origin,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetOriginHealth",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssutts)", health),
                                method_get_origin_health,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetPassthrough",
                                SD_BUS_ARGS("b", enabled),
                                SD_BUS_NO_RESULT,
                                method_set_passthrough,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Rescan",
                                SD_BUS_ARGS("s", origin),
                                SD_BUS_NO_RESULT,
                                method_rescan,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Search",
                                SD_BUS_ARGS("s", query, "u", limit),
                                SD_BUS_RESULT("a(ssssd)", results),
                                method_search,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Pin",
                                SD_BUS_ARGS("s", path),
                                SD_BUS_NO_RESULT,
                                method_pin,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unpin",
                                SD_BUS_ARGS("s", path),
                                SD_BUS_NO_RESULT,
                                method_unpin,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetCacheStats",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a{sv}", stats),
                                method_get_cache_stats,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ClearCache",
                                SD_BUS_NO_ARGS,
                                SD_BUS_NO_RESULT,
                                method_clear_cache,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("VerifyCache",
                                SD_BUS_ARGS("b", repair),
                                SD_BUS_RESULT("a{sv}", result),
                                method_verify_cache,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ArmFailpoint",
                                SD_BUS_ARGS("s", name, "s", actions),
                                SD_BUS_NO_RESULT,
                                method_arm_failpoint,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DisarmFailpoint",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_disarm_failpoint,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListFailpoints",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssu)", failpoints),
                                method_list_failpoints,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Reload",
                                SD_BUS_NO_ARGS,
                                SD_BUS_NO_RESULT,
                                method_reload,
                                SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_SIGNAL_WITH_ARGS("OriginHealthChanged",
                                SD_BUS_ARGS("s", name, "s", from, "s", to),
                                0),
        SD_BUS_SIGNAL_WITH_ARGS("ScanFinished",
                                SD_BUS_ARGS("s", origin, "u", added, "u", changed, "u", removed),
                                0),
        SD_BUS_VTABLE_END
};

/* Properties.Set of Passthrough, before sd-bus gets to the vtable's setter: a setter cannot park the
 * call while polkit decides (sd-bus answers as soon as it returns), a method handler can. */
static int on_manager_message(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *interface, *property;
        int enabled, r;

        if (!sd_bus_message_is_method_call(message, "org.freedesktop.DBus.Properties", "Set"))
                return 0;
        r = sd_bus_message_read(message, "ss", &interface, &property);
        if (r < 0 || strcmp(interface, MUSICFS_MANAGER_IFACE) != 0 || strcmp(property, "Passthrough") != 0)
                goto not_ours;
        /* A value of the wrong type gets sd-bus's own answer. */
        r = sd_bus_message_enter_container(message, 'v', "b");
        if (r <= 0)
                goto not_ours;
        r = sd_bus_message_read(message, "b", &enabled);
        if (r < 0)
                goto not_ours;

        r = authorize_change(m, message, MUSICFS_POLKIT_ACTION_CACHE, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit is asked; the call comes back with its answer */
        r = set_passthrough(m, enabled, error);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(message, NULL);

not_ours:
        r = sd_bus_message_rewind(message, true);
        return r < 0 ? r : 0;
}

int bus_manager_attach(Manager *m, sd_bus *bus) {
        int r;

        r = sd_bus_add_object(bus, NULL, MUSICFS_MANAGER_PATH, on_manager_message, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch calls to %s: %m", MUSICFS_MANAGER_PATH);
        r = sd_bus_add_object_vtable(bus, NULL, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, manager_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Failed to add the %s object: %m", MUSICFS_MANAGER_PATH);
        r = sd_bus_add_object_manager(bus, NULL, MUSICFS_MANAGER_PATH);
        if (r < 0)
                return log_error_errno(r, "Failed to add the object manager at %s: %m", MUSICFS_MANAGER_PATH);
        return bus_origin_attach(m, bus);
}

void bus_manager_emit_changed(Manager *m, const char *property) {
        if (!m->bus)
                return;
        int r = sd_bus_emit_properties_changed(m->bus, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, property, NULL);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", property);
}

void bus_manager_emit_changed_strv(Manager *m, char **properties) {
        if (!m->bus || !properties || !properties[0])
                return;
        int r = sd_bus_emit_properties_changed_strv(m->bus, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, properties);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged for %s..., ignoring: %m", properties[0]);
}

static uint32_t clamp_u32(uint64_t v) {
        return v > UINT32_MAX ? UINT32_MAX : (uint32_t) v;
}

void bus_manager_emit_scan_finished(Manager *m, const char *origin, uint64_t added, uint64_t changed, uint64_t removed) {
        if (!m->bus)
                return;
        int r = sd_bus_emit_signal(m->bus, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, "ScanFinished", "suuu", origin,
                                   clamp_u32(added), clamp_u32(changed), clamp_u32(removed));
        if (r < 0)
                log_debug_errno(r, "Failed to emit ScanFinished for %s, ignoring: %m", origin);
}

void bus_manager_emit_origin_health_changed(Manager *m, const char *name, const char *from, const char *to) {
        if (!m->bus)
                return;
        int r = sd_bus_emit_signal(m->bus, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, "OriginHealthChanged", "sss",
                                   name, from, to);
        if (r < 0)
                log_debug_errno(r, "Failed to emit OriginHealthChanged for %s, ignoring: %m", name);
}
