/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The /org/musicfs/Manager object: properties and methods of org.musicfs.Manager, as documented in
 * introspection/org.musicfs.Manager.xml. D-Bus errors are made here and nowhere else. Everything
 * runs on the event loop's thread. */
#include <systemd/sd-bus.h>

#include "manager.h"

extern const sd_bus_vtable manager_vtable[];

/* The authorisation seam for privileged methods. For now: uid 0 is allowed, everyone else gets
 * AccessDenied. The management-API issue replaces the body with an asynchronous polkit check (action
 * id from bus-api.h) and may then return 0 = "pending, the method will be called again".
 * Returns 1 when allowed, a negative errno with *error set when not. */
int bus_manager_check_privileged(Manager *m, sd_bus_message *message, const char *action, sd_bus_error *error);

/* PropertiesChanged for one property of the Manager; a no-op while off the bus. */
void bus_manager_emit_changed(Manager *m, const char *property);
