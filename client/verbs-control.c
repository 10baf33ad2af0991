/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The verbs that change something and print nothing on success: mount, unmount, passthrough,
 * pin, unpin, reload. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"

/* "on"/"off" and the usual spellings of a boolean: 1/0 or -EINVAL. */
static int parse_boolean(const char *s) {
        static const char *const yes[] = { "on", "yes", "true", "1", "y", "t" };
        static const char *const no[] = { "off", "no", "false", "0", "n", "f" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0)
                        return 1;
                if (strcasecmp(s, no[i]) == 0)
                        return 0;
        }
        return -EINVAL;
}

int verb_mount(Context *c, int argc, char **argv) {
        _cleanup_free_ char *path = NULL, *what = NULL;

        /* The daemon resolves paths in its own working directory (/): make ours absolute first. */
        if (argc > 1 && argv[1][0] != '/') {
                _cleanup_free_ char *cwd = getcwd(NULL, 0);
                if (!cwd) {
                        fprintf(stderr, "Failed to determine the current directory: %s.\n", strerror(errno));
                        return EXIT_DAEMON_FAILED;
                }
                if (asprintf(&path, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, argv[1]) < 0)
                        return report_bad_reply("mount", -ENOMEM);
        } else if (argc > 1 && !(path = strdup(argv[1])))
                return report_bad_reply("mount", -ENOMEM);

        if (path) {
                _cleanup_free_ char *escaped = human_escape(path);
                if (!escaped || asprintf(&what, "mount on %s", escaped) < 0)
                        return report_bad_reply("mount", -ENOMEM);
        }
        return call_manager(c, what ?: "mount", NULL, "Mount", NULL, "sa{sv}", path ?: "", 0);
}

int verb_unmount(Context *c, int argc, char **argv) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, "Unmount",
                               &error, NULL, "b", c->force);
        if (r >= 0)
                return EXIT_SUCCESS;
        if (sd_bus_error_has_name(&error, MUSICFS_ERROR_BUSY) && !c->force) {
                _cleanup_free_ char *msg = human_escape(error.message ?: "the mount is busy");
                size_t n = msg ? strlen(msg) : 0;

                if (n > 0 && msg[n - 1] == '.')
                        msg[n - 1] = 0;
                fprintf(stderr, "Failed to unmount: %s. Close the files, or use --force to detach it anyway.\n",
                        strempty(msg));
                return EXIT_DAEMON_FAILED;
        }
        return report_bus_error(c, "unmount", NULL, &error, r);
}

int verb_passthrough(Context *c, int argc, char **argv) {
        int enable = parse_boolean(argv[1]);

        if (enable < 0)
                return usage_error("passthrough wants on or off, not '%s'.", argv[1]);
        return call_manager(c, enable ? "turn passthrough on" : "turn passthrough off", NULL, "SetPassthrough",
                            NULL, "b", enable);
}

/* PATH as the daemon wants it, absolute in the mounted tree ("/Artist/Album (2001)"). People give
 * it as search prints it (relative to the mount point), as a path under the mount point, or
 * relative to a working directory inside the mount. */
static int tree_path(Context *c, const char *path, char **ret) {
        _cleanup_free_ char *mount_point = NULL, *cwd = NULL, *joined = NULL;
        const char *p = path;
        size_t n;

        /* Best effort: without the mount point every path is taken as a path in the tree. */
        if (sd_bus_get_property_string(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                       "MountPoint", NULL, &mount_point) < 0)
                mount_point = NULL;
        n = mount_point ? strlen(mount_point) : 0;
        while (n > 1 && mount_point[n - 1] == '/')
                n--;

        if (p[0] != '/' && n > 0 && (cwd = getcwd(NULL, 0)) &&
            strncmp(cwd, mount_point, n) == 0 && (cwd[n] == '/' || cwd[n] == 0)) {
                if (asprintf(&joined, "%s/%s", cwd, p) < 0)
                        return -ENOMEM;
                p = joined;
        }
        if (n > 0 && strncmp(p, mount_point, n) == 0 && (p[n] == '/' || p[n] == 0))
                p += n;

        if (asprintf(ret, "%s%s", p[0] == '/' ? "" : "/", p) < 0)
                return -ENOMEM;
        return 0;
}

/* pin and unpin. */
int verb_pin(Context *c, int argc, char **argv) {
        bool pin = strcmp(argv[0], "pin") == 0;
        _cleanup_free_ char *what = NULL, *escaped = human_escape(argv[1]), *path = NULL;

        if (!escaped || asprintf(&what, "%s %s", pin ? "pin" : "unpin", escaped) < 0 ||
            tree_path(c, argv[1], &path) < 0)
                return report_bad_reply(argv[0], -ENOMEM);
        return call_manager(c, what, NULL, pin ? "Pin" : "Unpin", NULL, "s", path);
}

int verb_clear_cache(Context *c, int argc, char **argv) {
        return call_manager(c, "clear the cache", NULL, "ClearCache", NULL, NULL);
}

int verb_reload(Context *c, int argc, char **argv) {
        return call_manager(c, "reload the configuration", NULL, "Reload", NULL, NULL);
}
