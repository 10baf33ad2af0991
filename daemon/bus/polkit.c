/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Asynchronous polkit checks with public sd-bus API (the contract of systemd's bus_verify_polkit_async):
 *
 *   handler(m) -> polkit_verify(m) = 0     CheckAuthorization sent, m parked in the registry (ref'd)
 *   handler returns 1                      sd-bus sends no reply for now
 *   on_check_authorization_reply()         verdict stored, m rewound and sd_bus_enqueue_for_read()
 *   handler(m) -> polkit_verify(m) = 1/<0  verdict taken from the registry and dropped
 *
 * A verdict is used once. If the re-dispatched message never reaches polkit_verify() again (the
 * object went away meanwhile, the bus closed) an idle-priority defer source drops it: the bus
 * dispatches its read queue at normal priority, so the defer runs only once the message was handled. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-event.h>

#include "log.h"
#include "macro.h"
#include "polkit.h"

#define POLKIT_BUS_NAME   "org.freedesktop.PolicyKit1"
#define POLKIT_PATH       "/org/freedesktop/PolicyKit1/Authority"
#define POLKIT_INTERFACE  "org.freedesktop.PolicyKit1.Authority"
/* CheckAuthorizationFlags: let polkit ask the user (through their agent) for a password. */
#define POLKIT_CHECK_ALLOW_USER_INTERACTION 1u

typedef struct PolkitQuery PolkitQuery;

struct PolkitQuery {
        PolkitRegistry *registry;
        PolkitQuery *prev, *next;

        sd_bus_message *request;        /* the parked method call; the registry's key */
        char *action;
        sd_bus_slot *slot;              /* the CheckAuthorization call in flight; NULL once answered */
        sd_event_source *expire;        /* drops an answered verdict nobody came back for */

        bool answered;
        bool authorized;
        sd_bus_error error;             /* why not, when answered and !authorized */
};

struct PolkitRegistry {
        PolkitQuery *queries;
};

static void polkit_query_free(PolkitQuery *q) {
        if (!q)
                return;

        if (q->registry) {
                if (q->prev)
                        q->prev->next = q->next;
                else
                        q->registry->queries = q->next;
                if (q->next)
                        q->next->prev = q->prev;
        }

        /* Unref'ing a pending call's slot cancels it: a late answer from polkit is dropped. */
        sd_bus_slot_unref(q->slot);
        sd_event_source_disable_unref(q->expire);
        sd_bus_message_unref(q->request);
        sd_bus_error_free(&q->error);
        free(q->action);
        free(q);
}

int polkit_registry_new(PolkitRegistry **ret) {
        PolkitRegistry *r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        *ret = r;
        return 0;
}

void polkit_registry_free(PolkitRegistry *r) {
        if (!r)
                return;
        while (r->queries)
                polkit_query_free(r->queries);
        free(r);
}

static PolkitQuery *polkit_registry_find(PolkitRegistry *r, sd_bus_message *m) {
        for (PolkitQuery *q = r->queries; q; q = q->next)
                if (q->request == m)
                        return q;
        return NULL;
}

/* A connection that was closed and replaced (the bus daemon restarted) never dispatches its parked
 * messages again and may never answer its calls: forget them. */
static void polkit_registry_prune(PolkitRegistry *r) {
        PolkitQuery *next;

        for (PolkitQuery *q = r->queries; q; q = next) {
                next = q->next;
                if (sd_bus_is_open(sd_bus_message_get_bus(q->request)) <= 0)
                        polkit_query_free(q);
        }
}

static int on_expire(sd_event_source *s, void *userdata) {
        PolkitQuery *q = userdata;

        log_debug("Dropping the unused polkit verdict for %s (%s)", strna(sd_bus_message_get_member(q->request)), q->action);
        polkit_query_free(q);
        return 0;
}

static bool error_is_unknown_service(const sd_bus_error *e) {
        return sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER);
}

/* Fills in q->authorized or q->error from polkit's answer. */
static void polkit_query_read_verdict(PolkitQuery *q, sd_bus_message *reply) {
        int authorized = false, challenge = false;
        int r;

        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);

                if (error_is_unknown_service(e)) {
                        (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                                 "Authorization service polkit is not available; access to %s denied.",
                                                 q->action);
                        return;
                }
                /* polkit's own failure (or a timeout): the caller learns what it was. */
                log_debug("polkit could not check %s: %s: %s", q->action, strna(e ? e->name : NULL),
                          strna(e ? e->message : NULL));
                r = sd_bus_error_copy(&q->error, e);
                if (r >= 0 && !sd_bus_error_is_set(&q->error))
                        (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                                 "Authorization check for %s failed.", q->action);
                return;
        }

        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0) {
                log_debug_errno(r, "Unexpected CheckAuthorization reply for %s: %m", q->action);
                (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Authorization service polkit gave an unreadable answer; access to %s denied.",
                                         q->action);
                return;
        }

        if (authorized)
                q->authorized = true;
        else if (challenge)
                (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Interactive authentication required for %s; allow interactive "
                                         "authorization in the call (e.g. run musicfsctl without --no-ask-password).",
                                         q->action);
        else
                (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Not authorized by polkit to perform %s.", q->action);
}

static int on_check_authorization_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        sd_bus *bus = sd_bus_message_get_bus(q->request);
        sd_event *event;
        int r;

        /* sd-bus holds its own reference while we run, so dropping ours here is safe. */
        q->slot = sd_bus_slot_unref(q->slot);
        q->answered = true;
        polkit_query_read_verdict(q, reply);

        r = sd_bus_message_rewind(q->request, true);
        if (r >= 0)
                r = sd_bus_enqueue_for_read(bus, q->request);
        if (r < 0) {
                log_debug_errno(r, "Cannot dispatch %s again after the polkit answer, replying now: %m",
                                strna(sd_bus_message_get_member(q->request)));
                if (q->authorized)
                        (void) sd_bus_reply_method_errnof(q->request, r, "Failed to resume the call after authorization: %m");
                else
                        (void) sd_bus_reply_method_error(q->request, &q->error);
                polkit_query_free(q);
                return 0;
        }

        event = sd_bus_get_event(bus);
        if (event) {
                r = sd_event_add_defer(event, &q->expire, on_expire, q);
                if (r >= 0)
                        r = sd_event_source_set_priority(q->expire, SD_EVENT_PRIORITY_IDLE);
                if (r < 0)
                        /* Harmless: the verdict then waits for the handler or for the registry's end. */
                        log_debug_errno(r, "Failed to arm the expiry of a polkit verdict, ignoring: %m");
        }
        return 0;
}

static int sender_is_root(sd_bus_message *m, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;
        int r;

        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID | SD_BUS_CREDS_AUGMENT, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &euid);
        if (r < 0) {
                log_debug_errno(r, "Cannot tell who called %s, refusing: %m", strna(sd_bus_message_get_member(m)));
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Cannot determine the caller's identity; access denied.");
        }
        return euid == 0;
}

static int polkit_query_send(PolkitRegistry *reg, sd_bus_message *m, const char *action, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        sd_bus *bus = sd_bus_message_get_bus(m);
        const char *sender;
        PolkitQuery *q;
        uint32_t flags = 0;
        int r;

        sender = sd_bus_message_get_sender(m);
        if (!sender)
                /* A direct (peer-to-peer) connection: polkit identifies callers by bus name only. */
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "The caller has no bus name polkit could check; access to %s denied.", action);

        r = sd_bus_message_get_allow_interactive_authorization(m);
        if (r < 0)
                return r;
        if (r > 0)
                flags |= POLKIT_CHECK_ALLOW_USER_INTERACTION;

        r = sd_bus_message_new_method_call(bus, &call, POLKIT_BUS_NAME, POLKIT_PATH, POLKIT_INTERFACE,
                                           "CheckAuthorization");
        if (r >= 0)
                r = sd_bus_message_append(call, "(sa{sv})s", "system-bus-name", 1, "name", "s", sender, action);
        if (r >= 0)
                r = sd_bus_message_append(call, "a{ss}", 0);
        if (r >= 0)
                r = sd_bus_message_append(call, "us", flags, "");
        if (r < 0)
                return log_debug_errno(r, "Failed to build the polkit query for %s: %m", action);

        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->error = SD_BUS_ERROR_NULL;
        q->action = strdup(action);
        if (!q->action) {
                polkit_query_free(q);
                return -ENOMEM;
        }
        /* The default timeout, like the caller's own: a polkit that hangs must not park calls forever. */
        r = sd_bus_call_async(bus, &q->slot, call, on_check_authorization_reply, q, 0);
        if (r < 0) {
                polkit_query_free(q);
                return log_debug_errno(r, "Failed to ask polkit about %s: %m", action);
        }
        q->request = sd_bus_message_ref(m);
        q->registry = reg;
        q->next = reg->queries;
        if (q->next)
                q->next->prev = q;
        reg->queries = q;

        log_debug("Asked polkit whether %s may %s", sender, action);
        return 0;
}

int polkit_verify(PolkitRegistry *reg, sd_bus_message *m, const char *action, sd_bus_error *error) {
        PolkitQuery *q;
        int r;

        if (!m || !action)
                return -EINVAL;

        if (reg) {
                polkit_registry_prune(reg);

                /* The second dispatch: polkit has answered. */
                q = polkit_registry_find(reg, m);
                if (q && !q->answered)
                        return 0;       /* dispatched again before the answer: still waiting */
                if (q) {
                        if (strcmp(q->action, action) != 0)
                                /* The handler asks about something else than what polkit judged. */
                                r = sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                                      "Authorization was checked for %s, not %s; access denied.",
                                                      q->action, action);
                        else if (q->authorized)
                                r = 1;
                        else
                                r = sd_bus_error_copy(error, &q->error);
                        polkit_query_free(q);
                        return r != 0 ? r : -EACCES;
                }
        }

        r = sender_is_root(m, error);
        if (r != 0)
                return r;

        if (!reg)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Only root may do this here (%s): polkit checks are not set up.", action);

        r = polkit_query_send(reg, m, action, error);
        if (r < 0 && !sd_bus_error_is_set(error))
                return sd_bus_error_set_errnof(error, r, "Failed to check authorization for %s: %m", action);
        return r;
}
