/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "bus-manager.h"
#include "failpoint.h"
#include "log.h"

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", MUSICFS_VERSION);
}

static int property_get_state(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "s", m->state);
}

static int property_get_mount_point(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "s", strempty(m->config.mountpoint));
}

static int property_get_track_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "t", m->track_count);
}

int bus_manager_check_privileged(Manager *m, sd_bus_message *message, const char *action, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;
        int r;

        r = sd_bus_query_sender_creds(message, SD_BUS_CREDS_EUID | SD_BUS_CREDS_AUGMENT, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &euid);
        if (r < 0) {
                log_debug_errno(r, "Cannot tell who called %s, refusing: %m", sd_bus_message_get_member(message));
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Cannot determine the caller's identity, access to %s denied.", action);
        }
        if (euid != 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Only root may do this (%s); uid %u is not allowed.", action, (unsigned) euid);
        return 1;
}

void bus_manager_emit_changed(Manager *m, const char *property) {
        if (!m->bus)
                return;
        int r = sd_bus_emit_properties_changed(m->bus, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, property, NULL);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", property);
}

#if MUSICFS_FAILPOINTS
static int method_arm_failpoint(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *reason = NULL;
        const char *name, *actions;
        int r;

        r = sd_bus_message_read(message, "ss", &name, &actions);
        if (r < 0)
                return r;

        r = bus_manager_check_privileged(m, message, MUSICFS_POLKIT_ACTION_FAILPOINTS, error);
        if (r <= 0)
                return r;

        r = failpoint_arm(name, actions, &reason);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_FAILPOINT, "There is no failpoint named \"%s\".", name);
        if (r == -EINVAL)
                return sd_bus_error_setf(error, MUSICFS_ERROR_INVALID_ARGS, "Invalid actions \"%s\" for failpoint %s: %s",
                                         actions, name, reason ?: "cannot parse");
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

        r = bus_manager_check_privileged(m, message, MUSICFS_POLKIT_ACTION_FAILPOINTS, error);
        if (r <= 0)
                return r;

        r = failpoint_disarm(name);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, MUSICFS_ERROR_NO_SUCH_FAILPOINT, "There is no failpoint named \"%s\".", name);
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
        SD_BUS_PROPERTY("MountPoint", "s", property_get_mount_point, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("TrackCount", "t", property_get_track_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
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
        SD_BUS_VTABLE_END
};
