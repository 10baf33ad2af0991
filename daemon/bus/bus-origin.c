/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "bus-origin.h"
#include "log.h"

int bus_origin_path(const char *name, char **ret) {
        return sd_bus_path_encode(MUSICFS_ORIGIN_PREFIX, name, ret);
}

static int origin_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                              void **found, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *name = NULL;
        int r;

        r = sd_bus_path_decode(path, MUSICFS_ORIGIN_PREFIX, &name);
        if (r <= 0)
                return r;

        ManagedOrigin *mo = manager_find_origin(m, name);
        if (!mo)
                return 0;
        *found = mo;
        return 1;
}

static int origin_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes,
                                  sd_bus_error *error) {
        Manager *m = userdata;
        char **l = calloc(m->n_managed + 1, sizeof *l);

        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < m->n_managed; i++) {
                l[i] = strdup(m->managed[i]->object_path);
                if (!l[i]) {
                        for (size_t j = 0; j < i; j++)
                                free(l[j]);
                        free(l);
                        return -ENOMEM;
                }
        }
        *nodes = l;
        return 0;
}

static int property_get_name(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "s", mo->origin->name);
}

static int property_get_kind(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "s", mo->origin->ops->kind);
}

static int property_get_url(sd_bus *bus, const char *path, const char *interface, const char *property,
                            sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        /* Never o->url itself: that may carry credentials once remote origins exist (D15). */
        return sd_bus_message_append(reply, "s", strempty(mo->url));
}

static int property_get_priority(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) mo->origin->priority);
}

static int property_get_health(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "s", origin_health_state_to_string(mo->health));
}

static int property_get_consecutive_failures(sd_bus *bus, const char *path, const char *interface,
                                             const char *property, sd_bus_message *reply, void *userdata,
                                             sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) mo->consecutive_failures);
}

static int property_get_last_latency(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "t", mo->last_latency_usec);
}

static int property_get_last_check(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "t", mo->last_check_usec);
}

static int property_get_last_error(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "s", strempty(mo->last_error));
}

static int property_get_track_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ManagedOrigin *mo = userdata;
        return sd_bus_message_append(reply, "t", mo->track_count);
}

const sd_bus_vtable origin_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", property_get_name, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Kind", "s", property_get_kind, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Url", "s", property_get_url, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Priority", "u", property_get_priority, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Health", "s", property_get_health, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ConsecutiveFailures", "u", property_get_consecutive_failures, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LastLatencyUSec", "t", property_get_last_latency, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LastCheckUSec", "t", property_get_last_check, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LastError", "s", property_get_last_error, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("TrackCount", "t", property_get_track_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END
};

int bus_origin_attach(Manager *m, sd_bus *bus) {
        int r;

        r = sd_bus_add_fallback_vtable(bus, NULL, MUSICFS_ORIGIN_PREFIX, MUSICFS_ORIGIN_IFACE, origin_vtable,
                                       origin_object_find, m);
        if (r < 0)
                return log_error_errno(r, "Failed to add the origin objects under %s: %m", MUSICFS_ORIGIN_PREFIX);
        r = sd_bus_add_node_enumerator(bus, NULL, MUSICFS_ORIGIN_PREFIX, origin_node_enumerator, m);
        if (r < 0)
                return log_error_errno(r, "Failed to add the enumerator of %s: %m", MUSICFS_ORIGIN_PREFIX);
        return 0;
}

void bus_origin_emit_added(Manager *m, const ManagedOrigin *mo) {
        if (!m->bus)
                return;
        int r = sd_bus_emit_object_added(m->bus, mo->object_path);
        if (r < 0)
                log_debug_errno(r, "Failed to announce %s, ignoring: %m", mo->object_path);
}

void bus_origin_emit_removed(Manager *m, const ManagedOrigin *mo) {
        if (!m->bus)
                return;
        int r = sd_bus_emit_object_removed(m->bus, mo->object_path);
        if (r < 0)
                log_debug_errno(r, "Failed to announce the removal of %s, ignoring: %m", mo->object_path);
}

void bus_origin_emit_changed(Manager *m, const ManagedOrigin *mo, char **properties) {
        if (!m->bus || !properties || !properties[0])
                return;
        int r = sd_bus_emit_properties_changed_strv(m->bus, mo->object_path, MUSICFS_ORIGIN_IFACE, properties);
        if (r < 0)
                log_debug_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", mo->object_path);
}
