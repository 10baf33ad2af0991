/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The /org/musicfs/Manager object: properties, methods and signals of org.musicfs.Manager, as
 * documented in introspection/org.musicfs.Manager.xml, and the org.freedesktop.DBus.ObjectManager
 * that announces the origin objects (bus-origin.h). D-Bus errors are made here and in bus-origin.c
 * and nowhere else. Everything runs on the event loop's thread. */
#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "manager.h"

extern const sd_bus_vtable manager_vtable[];

/* Puts the Manager, its object manager and the origin objects on a (new) connection. */
int bus_manager_attach(Manager *m, sd_bus *bus);

/* PropertiesChanged for one property of the Manager, or for several (NULL-terminated); no-ops while
 * off the bus. */
void bus_manager_emit_changed(Manager *m, const char *property);
void bus_manager_emit_changed_strv(Manager *m, char **properties);
void bus_manager_emit_scan_finished(Manager *m, const char *origin, uint64_t added, uint64_t changed, uint64_t removed);
void bus_manager_emit_origin_health_changed(Manager *m, const char *name, const char *from, const char *to);

/* The answers to calls the manager parked (manager_remove_origin(), manager_check_origin()).
 * r: 0 or a negative errno; mo NULL when the origin went away meanwhile. */
void bus_manager_reply_remove_origin(Manager *m, sd_bus_message *call, const char *name, int r);
void bus_manager_reply_check_origin(Manager *m, sd_bus_message *call, const char *name, const ManagedOrigin *mo);
/* manager_cache_verify()'s answer: r 0 with res, or a negative errno. */
void bus_manager_reply_verify_cache(Manager *m, sd_bus_message *call, bool repair, int r, const CacheVerifyResult *res);
