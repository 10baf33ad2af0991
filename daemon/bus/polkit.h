/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Authorization of privileged bus methods through polkit's CheckAuthorization, asynchronously and
 * with public sd-bus API only (the contract of systemd's internal bus_verify_polkit_async()): the
 * first call sends the query and parks the message; when polkit answers, the message is re-queued
 * with sd_bus_enqueue_for_read() and the method handler runs again, this time getting the cached
 * verdict. Root short-circuits. No polkit on the bus means denied. */
#include <systemd/sd-bus.h>

typedef struct PolkitRegistry PolkitRegistry;

int polkit_registry_new(PolkitRegistry **ret);
void polkit_registry_free(PolkitRegistry *r);   /* NULL is fine; cancels queries in flight */

/* 1: authorized now; 0: a query is in flight and the message will be dispatched again when it is
 * answered — the handler must return 1 at once; <0: refused or failed, *error set (AccessDenied when
 * polkit said no or is not there). */
int polkit_verify(PolkitRegistry *r, sd_bus_message *m, const char *action, sd_bus_error *error);
