/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The origin objects /org/musicfs/Manager/origin/<sd_bus_path_encode(name)>, interface
 * org.musicfs.Origin (introspection/org.musicfs.Origin.xml): one fallback vtable that finds the
 * ManagedOrigin by path, and a node enumerator for introspection and the ObjectManager. Loop thread
 * only. */
#include <systemd/sd-bus.h>

#include "manager.h"

extern const sd_bus_vtable origin_vtable[];

int bus_origin_attach(Manager *m, sd_bus *bus);

/* The object path of an origin name, newly allocated. */
int bus_origin_path(const char *name, char **ret);

/* InterfacesAdded, after the origin is in Manager.managed; InterfacesRemoved, while it still is. */
void bus_origin_emit_added(Manager *m, const ManagedOrigin *mo);
void bus_origin_emit_removed(Manager *m, const ManagedOrigin *mo);
/* PropertiesChanged of org.musicfs.Origin, for the NULL-terminated list. */
void bus_origin_emit_changed(Manager *m, const ManagedOrigin *mo, char **properties);
