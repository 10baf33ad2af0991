/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* monitor: the daemon's signals as they come, one line each (JSON lines with --json), until SIGINT
 * or SIGTERM. Follows the daemon across restarts: it need not be running when monitoring starts. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"

typedef struct Monitor {
        Context *c;
        sd_event *event;
        /* The unique name owning org.musicfs.Manager now (NULL when none): signals from anyone else
         * on the bus are not the daemon's and are not shown. */
        char *owner;
        bool output_failed;
} Monitor;

/* One line being put together. It is written out only when the whole message could be read, so a
 * malformed signal never leaves half a line (or half a JSON document) behind. */
typedef struct Event {
        FILE *f;
        char *buf;
        size_t size;
        JsonWriter w;
        bool json;
} Event;

static void event_free(Event *e) {
        if (e->f)
                fclose(e->f);
        free(e->buf);
}

static bool from_daemon(Monitor *mon, sd_bus_message *m) {
        const char *sender = sd_bus_message_get_sender(m);
        return mon->owner && sender && strcmp(sender, mon->owner) == 0;
}

static void text_word(Event *e, const char *s) {
        _cleanup_free_ char *escaped = human_escape(s);

        fputc(' ', e->f);
        fputs(strempty(escaped), e->f);
}

/* Time and event name, for people or as the first JSON members; path names the object. */
static int event_begin(Monitor *mon, Event *e, const char *event, const char *path) {
        uint64_t now = now_realtime_usec();
        char ts[FORMAT_TIMESTAMP_MAX];
        _cleanup_free_ char *origin = path ? origin_name_from_path(path) : NULL;

        e->json = mon->c->json;
        e->f = open_memstream(&e->buf, &e->size);
        if (!e->f)
                return -ENOMEM;
        format_timestamp_precise(ts, sizeof ts, now);
        if (e->json) {
                json_writer_init(&e->w, e->f);
                json_begin_object(&e->w);
                json_key(&e->w, "time");
                json_string(&e->w, ts);
                json_key(&e->w, "time_usec");
                json_uint(&e->w, now);
                json_key(&e->w, "event");
                json_string(&e->w, event);
                if (path) {
                        json_key(&e->w, "path");
                        json_string(&e->w, path);
                }
                if (origin) {
                        json_key(&e->w, "origin");
                        json_string(&e->w, origin);
                }
                return 0;
        }
        fprintf(e->f, "%s %s", ts, event);
        if (origin) {
                _cleanup_free_ char *o = human_escape(origin);
                fprintf(e->f, " origin/%s", strempty(o));
        } else if (path && strcmp(path, MUSICFS_MANAGER_PATH) == 0)
                fputs(" manager", e->f);
        else if (path)
                text_word(e, path);
        return 0;
}

/* Writes the line if r (how reading the message went) is fine; output failures end the monitor. */
static int event_finish(Monitor *mon, Event *e, int r) {
        if (r >= 0 && e->json) {
                json_end_object(&e->w);
                r = json_writer_finish(&e->w);  /* also writes the newline */
        } else if (r >= 0)
                fputc('\n', e->f);
        if (fflush(e->f) == EOF)
                r = -ENOMEM;
        if (r < 0) {
                /* Not the documented shape: skipped, and said so, rather than shown half. */
                fprintf(stderr, "Skipped a signal musicfsctl could not read: %s.\n", strerror(-r));
                return 0;
        }
        if (fwrite(e->buf, 1, e->size, stdout) != e->size || fflush(stdout) == EOF) {
                mon->output_failed = true;
                return sd_event_exit(mon->event, EXIT_DAEMON_FAILED);
        }
        return 0;
}

/* Origins=[music, nas]: names read better than object paths. */
static int text_origin_names(Event *e, sd_bus_message *m) {
        const char *path;
        bool first = true;
        int r;

        r = sd_bus_message_enter_container(m, 'v', "ao");
        if (r >= 0)
                r = sd_bus_message_enter_container(m, 'a', "o");
        if (r < 0)
                return r;
        fputs(" Origins=[", e->f);
        while ((r = sd_bus_message_read_basic(m, 'o', &path)) > 0) {
                _cleanup_free_ char *name = origin_name_from_path(path), *escaped = NULL;

                escaped = human_escape(name ?: path);
                fprintf(e->f, "%s%s", first ? "" : ", ", strempty(escaped));
                first = false;
        }
        if (r < 0)
                return r;
        fputc(']', e->f);
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        _cleanup_(event_free) Event e = {};
        const char *iface, *name, *contents;
        int r;

        if (!from_daemon(mon, m) || sd_bus_message_read(m, "s", &iface) < 0)
                return 0;
        r = event_begin(mon, &e, "PropertiesChanged", sd_bus_message_get_path(m));
        if (r < 0)
                return event_finish(mon, &e, r);
        if (e.json) {
                json_key(&e.w, "interface");
                json_string(&e.w, iface);
                json_key(&e.w, "changed");
                json_begin_object(&e.w);
        }
        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                r = sd_bus_message_read_basic(m, 's', &name);
                if (r < 0)
                        break;
                if (e.json) {
                        json_key(&e.w, name);
                        r = message_value_to_json(m, &e.w);
                } else if (strcmp(name, "Origins") == 0 && sd_bus_message_peek_type(m, NULL, &contents) > 0 &&
                           strcmp(contents, "ao") == 0)
                        r = text_origin_names(&e, m);
                else {
                        text_word(&e, name);
                        fputc('=', e.f);
                        r = message_value_to_text(m, e.f);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (e.json) {
                json_end_object(&e.w);
                json_key(&e.w, "invalidated");
                json_begin_array(&e.w);
        }
        if (r >= 0)
                r = sd_bus_message_enter_container(m, 'a', "s");
        while (r >= 0 && (r = sd_bus_message_read_basic(m, 's', &name)) > 0) {
                if (e.json)
                        json_string(&e.w, name);
                else {
                        text_word(&e, name);
                        fputs(" (invalidated)", e.f);
                }
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (e.json)
                json_end_array(&e.w);
        return event_finish(mon, &e, r);
}

static int on_manager_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        _cleanup_(event_free) Event e = {};
        const char *member = sd_bus_message_get_member(m), *origin, *from, *to;
        uint32_t added, changed, removed;
        int r;

        if (!from_daemon(mon, m) || !member)
                return 0;
        r = event_begin(mon, &e, member, NULL);
        if (r < 0)
                return event_finish(mon, &e, r);

        if (strcmp(member, "OriginHealthChanged") == 0) {
                r = sd_bus_message_read(m, "sss", &origin, &from, &to);
                if (r < 0)
                        return event_finish(mon, &e, r);
                if (e.json) {
                        json_key(&e.w, "origin");
                        json_string(&e.w, origin);
                        json_key(&e.w, "from");
                        json_string(&e.w, from);
                        json_key(&e.w, "to");
                        json_string(&e.w, to);
                } else {
                        text_word(&e, origin);
                        text_word(&e, from);
                        fputs(" ->", e.f);
                        text_word(&e, to);
                }
        } else if (strcmp(member, "ScanFinished") == 0) {
                r = sd_bus_message_read(m, "suuu", &origin, &added, &changed, &removed);
                if (r < 0)
                        return event_finish(mon, &e, r);
                if (e.json) {
                        json_key(&e.w, "origin");
                        json_string(&e.w, origin);
                        json_key(&e.w, "added");
                        json_uint(&e.w, added);
                        json_key(&e.w, "changed");
                        json_uint(&e.w, changed);
                        json_key(&e.w, "removed");
                        json_uint(&e.w, removed);
                } else {
                        text_word(&e, origin);
                        fprintf(e.f, " added=%u changed=%u removed=%u", added, changed, removed);
                }
        } else {
                /* A signal this musicfsctl does not know yet: shown with its arguments as they are. */
                if (e.json) {
                        json_key(&e.w, "args");
                        json_begin_array(&e.w);
                }
                while ((r = sd_bus_message_at_end(m, false)) == 0) {
                        if (e.json)
                                r = message_value_to_json(m, &e.w);
                        else {
                                fputc(' ', e.f);
                                r = message_value_to_text(m, e.f);
                        }
                        if (r < 0)
                                break;
                }
                if (e.json)
                        json_end_array(&e.w);
        }
        return event_finish(mon, &e, r);
}

static int on_object_manager_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        _cleanup_(event_free) Event e = {};
        const char *member = sd_bus_message_get_member(m), *path, *iface;
        bool added;
        int r;

        if (!from_daemon(mon, m) || !member)
                return 0;
        added = strcmp(member, "InterfacesAdded") == 0;
        if (!added && strcmp(member, "InterfacesRemoved") != 0)
                return 0;
        if (sd_bus_message_read_basic(m, 'o', &path) < 0)
                return 0;

        r = event_begin(mon, &e, member, path);
        if (r < 0)
                return event_finish(mon, &e, r);
        if (e.json) {
                /* InterfacesAdded: {interface: {property: value}}; InterfacesRemoved: [interface]. */
                json_key(&e.w, "interfaces");
                return event_finish(mon, &e, message_value_to_json(m, &e.w));
        }
        if (added) {
                r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
                while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                        r = sd_bus_message_read_basic(m, 's', &iface);
                        if (r >= 0) {
                                text_word(&e, iface);
                                r = sd_bus_message_skip(m, "a{sv}");
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                }
        } else {
                r = sd_bus_message_enter_container(m, 'a', "s");
                while (r >= 0 && (r = sd_bus_message_read_basic(m, 's', &iface)) > 0)
                        text_word(&e, iface);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        return event_finish(mon, &e, r);
}

static int owner_event(Monitor *mon, const char *event, const char *owner) {
        _cleanup_(event_free) Event e = {};
        int r;

        r = event_begin(mon, &e, event, NULL);
        if (r >= 0 && e.json) {
                json_key(&e.w, "owner");
                json_string(&e.w, owner);
        } else if (r >= 0)
                text_word(&e, owner);
        return event_finish(mon, &e, r);
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || strcmp(name, MUSICFS_BUS_NAME) != 0)
                return 0;

        free(mon->owner);
        mon->owner = NULL;
        if (new_owner[0] && !(mon->owner = strdup(new_owner)))
                return sd_event_exit(mon->event, EXIT_DAEMON_FAILED);
        if (old_owner[0])
                (void) owner_event(mon, "DaemonStopped", old_owner);
        if (new_owner[0] && !mon->output_failed)
                (void) owner_event(mon, "DaemonStarted", new_owner);
        return 0;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), EXIT_SUCCESS);
}

int verb_monitor(Context *c, int argc, char **argv) {
        static const struct {
                const char *rule;
                sd_bus_message_handler_t handler;
        } matches[] = {
                { "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
                  "path_namespace='" MUSICFS_MANAGER_PATH "'", on_properties_changed },
                { "type='signal',path='" MUSICFS_MANAGER_PATH "',interface='" MUSICFS_MANAGER_IFACE "'",
                  on_manager_signal },
                { "type='signal',path='" MUSICFS_MANAGER_PATH "',interface='org.freedesktop.DBus.ObjectManager'",
                  on_object_manager_signal },
                { "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                  "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" MUSICFS_BUS_NAME "'",
                  on_owner_changed },
        };
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Monitor mon = { .c = c };
        const char *owner;
        sigset_t mask;
        int r;

        /* sd-event takes these signals through a signalfd, which wants them blocked. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
                fprintf(stderr, "Failed to block SIGINT and SIGTERM: %s.\n", strerror(errno));
                return EXIT_DAEMON_FAILED;
        }

        for (size_t i = 0; i < ELEMENTSOF(matches); i++) {
                r = sd_bus_add_match(c->bus, NULL, matches[i].rule, matches[i].handler, &mon);
                if (r < 0) {
                        fprintf(stderr, "Failed to subscribe to the daemon's signals: %s.\n", strerror(-r));
                        return r == -ECONNRESET || r == -ENOTCONN ? EXIT_UNREACHABLE : EXIT_DAEMON_FAILED;
                }
        }

        /* Who owns the name now, asked after subscribing so that no change in between is missed. */
        r = sd_bus_call_method(c->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "GetNameOwner", &error, &reply, "s", MUSICFS_BUS_NAME);
        if (r >= 0) {
                r = sd_bus_message_read(reply, "s", &owner);
                if (r < 0)
                        return report_bad_reply("follow the daemon", r);
                mon.owner = strdup(owner);
                if (!mon.owner)
                        return report_bad_reply("follow the daemon", -ENOMEM);
        } else if (!sd_bus_error_has_name(&error, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return report_bus_error(c, "follow the daemon", NULL, &error, r);

        if (isatty(STDERR_FILENO))
                fprintf(stderr, "Following musicfsd on the %s bus%s. Press Ctrl+C to stop.\n", bus_kind(c),
                        mon.owner ? "" : " (it is not running now)");

        r = sd_event_new(&mon.event);
        if (r >= 0)
                r = sd_event_add_signal(mon.event, NULL, SIGINT, on_signal, NULL);
        if (r >= 0)
                r = sd_event_add_signal(mon.event, NULL, SIGTERM, on_signal, NULL);
        if (r >= 0)
                r = sd_bus_attach_event(c->bus, mon.event, SD_EVENT_PRIORITY_NORMAL);
        /* A lost bus connection ends the loop with a non-zero code instead of waiting forever. */
        if (r >= 0)
                r = sd_bus_set_exit_on_disconnect(c->bus, true);
        if (r >= 0)
                r = sd_event_loop(mon.event);
        (void) sd_bus_detach_event(c->bus);
        sd_event_unref(mon.event);
        free(mon.owner);
        if (r < 0) {
                fprintf(stderr, "Failed to follow the daemon: %s.\n", strerror(-r));
                return EXIT_DAEMON_FAILED;
        }
        if (r > 0 && !mon.output_failed) {
                fprintf(stderr, "Lost the connection to the %s bus.\n", bus_kind(c));
                return EXIT_UNREACHABLE;
        }
        return r > 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
}
