/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* origins, check, rescan: the origin objects, immediate health checks, scans (followed live). */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"
#include "table.h"

typedef struct OriginInfo {
        char *name, *kind, *url, *health, *last_error;
        uint32_t priority, failures;
        uint64_t latency_usec, last_check_usec, track_count;
} OriginInfo;

static const PropertyMap origin_map[] = {
        { "Name",                "s", offsetof(OriginInfo, name) },
        { "Kind",                "s", offsetof(OriginInfo, kind) },
        { "Url",                 "s", offsetof(OriginInfo, url) },
        { "Priority",            "u", offsetof(OriginInfo, priority) },
        { "Health",              "s", offsetof(OriginInfo, health) },
        { "ConsecutiveFailures", "u", offsetof(OriginInfo, failures) },
        { "LastLatencyUSec",     "t", offsetof(OriginInfo, latency_usec) },
        { "LastCheckUSec",       "t", offsetof(OriginInfo, last_check_usec) },
        { "LastError",           "s", offsetof(OriginInfo, last_error) },
        { "TrackCount",          "t", offsetof(OriginInfo, track_count) },
        {}
};

static void origin_info_done(OriginInfo *o) {
        free(o->name);
        free(o->kind);
        free(o->url);
        free(o->health);
        free(o->last_error);
}

typedef struct OriginList {
        OriginInfo *items;
        size_t n;
} OriginList;

static void origin_list_done(OriginList *l) {
        for (size_t i = 0; i < l->n; i++)
                origin_info_done(l->items + i);
        free(l->items);
}

static int origin_compare(const void *a, const void *b) {
        const OriginInfo *x = a, *y = b;

        if (x->priority != y->priority)
                return x->priority < y->priority ? -1 : 1;
        return strcmp(strempty(x->name), strempty(y->name));
}

/* One org.freedesktop.DBus.ObjectManager.GetManagedObjects call: every origin with all its
 * properties, consistent with each other, in priority order. */
static int load_origins(Context *c, const char *what, OriginList *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        int r;

        r = sd_bus_call_method(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, "org.freedesktop.DBus.ObjectManager",
                               "GetManagedObjects", &error, &reply, NULL);
        if (r < 0)
                return report_bus_error(c, what, NULL, &error, r);

        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        if (r < 0)
                goto bad;
        while ((r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                r = sd_bus_message_read_basic(reply, 'o', &path);
                if (r < 0)
                        goto bad;
                r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                if (r < 0)
                        goto bad;
                while ((r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        const char *iface;

                        r = sd_bus_message_read_basic(reply, 's', &iface);
                        if (r < 0)
                                goto bad;
                        if (strcmp(iface, MUSICFS_ORIGIN_IFACE) != 0) {
                                r = sd_bus_message_skip(reply, "a{sv}");
                                if (r < 0)
                                        goto bad;
                        } else {
                                OriginInfo *items = reallocarray(ret->items, ret->n + 1, sizeof(OriginInfo));
                                int64_t found;

                                if (!items) {
                                        r = -ENOMEM;
                                        goto bad;
                                }
                                ret->items = items;
                                items[ret->n] = (OriginInfo) {};
                                found = map_properties(reply, origin_map, items + ret->n);
                                ret->n++;
                                if (found < 0) {
                                        r = (int) found;
                                        goto bad;
                                }
                                if (!items[ret->n - 1].name) {
                                        /* No Name property: the path says it. */
                                        items[ret->n - 1].name = origin_name_from_path(path);
                                        if (!items[ret->n - 1].name && !(items[ret->n - 1].name = strdup(path))) {
                                                r = -ENOMEM;
                                                goto bad;
                                        }
                                }
                        }
                        r = sd_bus_message_exit_container(reply);
                        if (r < 0)
                                goto bad;
                }
                if (r < 0)
                        goto bad;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        goto bad;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        goto bad;
        }
        if (r < 0)
                goto bad;
        if (ret->n > 1)
                qsort(ret->items, ret->n, sizeof(OriginInfo), origin_compare);
        return EXIT_SUCCESS;

bad:
        return report_bad_reply(what, r);
}

static void origin_json(JsonWriter *w, const OriginInfo *o) {
        json_begin_object(w);
        json_key(w, "name");
        json_string(w, o->name);
        json_key(w, "kind");
        json_string(w, o->kind);
        json_key(w, "url");
        json_string(w, o->url);
        json_key(w, "priority");
        json_uint(w, o->priority);
        json_key(w, "health");
        json_string(w, o->health);
        json_key(w, "consecutive_failures");
        json_uint(w, o->failures);
        json_key(w, "last_latency_usec");
        json_uint(w, o->latency_usec);
        json_key(w, "last_check_usec");
        json_uint(w, o->last_check_usec);
        json_key(w, "last_error");
        json_string(w, o->last_error);
        json_key(w, "track_count");
        json_uint(w, o->track_count);
        json_end_object(w);
}

int verb_origins(Context *c, int argc, char **argv) {
        static const char *const headers[] = {
                "NAME", "KIND", "PRIORITY", "HEALTH", "FAILURES", "LATENCY", "TRACKS", "LAST ERROR",
        };
        _cleanup_(origin_list_done) OriginList list = {};
        _cleanup_(table_freep) Table *t = NULL;
        int r;

        r = load_origins(c, "list the origins", &list);
        if (r != EXIT_SUCCESS)
                return r;

        if (c->json) {
                JsonWriter w;

                json_writer_init(&w, stdout);
                json_begin_array(&w);
                for (size_t i = 0; i < list.n; i++)
                        origin_json(&w, list.items + i);
                json_end_array(&w);
                return json_writer_finish(&w) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
        }

        if (list.n == 0) {
                if (c->legend)
                        printf("No origins.\n");
                return EXIT_SUCCESS;
        }

        t = table_new(ELEMENTSOF(headers), headers);
        if (!t)
                return report_bad_reply("list the origins", -ENOMEM);
        for (unsigned col = 2; col <= 6; col++)
                if (col != 3)
                        table_align_right(t, col);
        for (size_t i = 0; i < list.n; i++) {
                const OriginInfo *o = list.items + i;
                char latency[FORMAT_SPAN_MAX];

                format_span(latency, sizeof latency, o->latency_usec, o->last_check_usec == 0);
                if (table_add_cell(t, o->name, NULL) < 0 ||
                    table_add_cell(t, o->kind ?: "-", NULL) < 0 ||
                    table_add_cellf(t, NULL, "%" PRIu32, o->priority) < 0 ||
                    table_add_cell(t, o->health ?: "-", state_color(o->health)) < 0 ||
                    table_add_cellf(t, o->failures > 0 ? ANSI_RED : NULL, "%" PRIu32, o->failures) < 0 ||
                    table_add_cell(t, latency, NULL) < 0 ||
                    table_add_cellf(t, NULL, "%" PRIu64, o->track_count) < 0 ||
                    table_add_cell(t, o->last_error && o->last_error[0] ? o->last_error : "-", NULL) < 0)
                        return report_bad_reply("list the origins", -ENOMEM);
        }
        r = table_print(t, stdout, c->legend, c->colors);
        return r < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
}

/* check NAME: CheckOrigin, then the origin's health record as GetOriginHealth has it. */
int verb_check(Context *c, int argc, char **argv) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *health = NULL;
        _cleanup_free_ char *what = NULL;
        const char *state, *name, *hstate, *last_error = "";
        uint64_t latency = 0, last_check = 0;
        uint32_t failures = 0;
        int r;

        if (asprintf(&what, "check origin %s", argv[1]) < 0)
                return report_bad_reply("check the origin", -ENOMEM);
        r = call_manager(c, what, argv[1], "CheckOrigin", &reply, "s", argv[1]);
        if (r != EXIT_SUCCESS)
                return r;
        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0)
                return report_bad_reply(what, r);

        /* The details are a nicety: an older daemon without GetOriginHealth still gets its answer. */
        if (sd_bus_call_method(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                               "GetOriginHealth", NULL, &health, NULL) >= 0 &&
            sd_bus_message_enter_container(health, 'a', "(ssutts)") >= 0) {
                uint64_t l, lc;
                uint32_t f;
                const char *le;

                while (sd_bus_message_read(health, "(ssutts)", &name, &hstate, &f, &l, &lc, &le) > 0)
                        if (strcmp(name, argv[1]) == 0) {
                                failures = f;
                                latency = l;
                                last_check = lc;
                                last_error = le;
                        }
        }

        if (c->json) {
                JsonWriter w;

                json_writer_init(&w, stdout);
                json_begin_object(&w);
                json_key(&w, "name");
                json_string(&w, argv[1]);
                json_key(&w, "health");
                json_string(&w, state);
                json_key(&w, "consecutive_failures");
                json_uint(&w, failures);
                json_key(&w, "last_latency_usec");
                json_uint(&w, latency);
                json_key(&w, "last_check_usec");
                json_uint(&w, last_check);
                json_key(&w, "last_error");
                json_string(&w, last_error);
                json_end_object(&w);
                if (json_writer_finish(&w) < 0)
                        return EXIT_DAEMON_FAILED;
        } else {
                _cleanup_free_ char *n = human_escape(argv[1]), *s = human_escape(state), *e = human_escape(last_error);
                char span[FORMAT_SPAN_MAX], ts[FORMAT_TIMESTAMP_MAX];
                const char *color = c->colors ? state_color(state) : NULL;

                printf("%10s: %s\n", "Origin", strempty(n));
                printf("%10s: %s%s%s\n", "Health", color ?: "", strempty(s), color ? ANSI_NORMAL : "");
                printf("%10s: %" PRIu32 "\n", "Failures", failures);
                printf("%10s: %s\n", "Latency", format_span(span, sizeof span, latency, last_check == 0));
                printf("%10s: %s\n", "Last check", format_timestamp(ts, sizeof ts, last_check));
                printf("%10s: %s\n", "Last error", e && e[0] ? e : "-");
        }
        /* Scripts can ask "is it healthy?" with the exit status alone. */
        return strcmp(state, "healthy") == 0 ? EXIT_SUCCESS : EXIT_DAEMON_FAILED;
}

/* rescan --wait: follows ScanProgress and ScanFinished until every origin asked for has finished. */
typedef struct RescanWait {
        Context *c;
        sd_event *event;
        char **pending;         /* origins whose ScanFinished has not come yet */
        size_t n_pending;
        bool tty;               /* draw a progress bar */
        bool bar_drawn;
        int status;
} RescanWait;

static void rescan_wait_done(RescanWait *w) {
        for (size_t i = 0; i < w->n_pending; i++)
                free(w->pending[i]);
        free(w->pending);
        sd_event_unref(w->event);
}

static void clear_bar(RescanWait *w) {
        if (w->bar_drawn) {
                fputs("\r\x1b[K", stdout);
                fflush(stdout);
                w->bar_drawn = false;
        }
}

static unsigned terminal_columns(void) {
        struct winsize ws = {};

        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0)
                return 80;
        return ws.ws_col;
}

static void show_progress(RescanWait *w, const char *origin, uint64_t processed, uint64_t total) {
        _cleanup_free_ char *name = human_escape(origin);
        char count[64];

        if (!name || w->c->json)
                return;
        if (total > 0)
                snprintf(count, sizeof count, "%" PRIu64 "/%" PRIu64 " files", processed, total);
        else
                snprintf(count, sizeof count, "%" PRIu64 " files", processed);

        if (!w->tty) {
                printf("Scanning %s: %s\n", name, count);
                fflush(stdout);
                return;
        }

        /* "Scanning NAME [=====>     ] 12/30 files", fitted to the terminal. */
        unsigned cols = terminal_columns();
        size_t fixed = strlen("Scanning ") + display_width(name) + strlen(" [] ") + strlen(count);
        unsigned bar = cols > fixed + 10 ? (unsigned) (cols - fixed - 1) : 0;
        if (bar > 40)
                bar = 40;

        fputs("\r\x1b[K", stdout);
        printf("Scanning %s ", name);
        if (bar > 0 && total > 0) {
                uint64_t done = processed >= total ? bar : processed * bar / total;
                putchar('[');
                for (unsigned i = 0; i < bar; i++)
                        putchar(i < done ? '=' : i == done ? '>' : ' ');
                fputs("] ", stdout);
        }
        fputs(count, stdout);
        fflush(stdout);
        w->bar_drawn = true;
}

static int on_scan_finished(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        RescanWait *w = userdata;
        const char *origin;
        uint32_t added, changed, removed;
        int r;

        r = sd_bus_message_read(m, "suuu", &origin, &added, &changed, &removed);
        if (r < 0)
                return 0;       /* not the documented signal: not ours to judge here */

        clear_bar(w);
        if (w->c->json) {
                JsonWriter j;

                json_writer_init(&j, stdout);
                json_begin_object(&j);
                json_key(&j, "origin");
                json_string(&j, origin);
                json_key(&j, "added");
                json_uint(&j, added);
                json_key(&j, "changed");
                json_uint(&j, changed);
                json_key(&j, "removed");
                json_uint(&j, removed);
                json_end_object(&j);
                (void) json_writer_finish(&j);
        } else {
                _cleanup_free_ char *name = human_escape(origin);
                printf("Scanned %s: %" PRIu32 " added, %" PRIu32 " changed, %" PRIu32 " removed.\n",
                       strempty(name), added, changed, removed);
                fflush(stdout);
        }

        for (size_t i = 0; i < w->n_pending; i++)
                if (strcmp(w->pending[i], origin) == 0) {
                        free(w->pending[i]);
                        w->pending[i] = w->pending[--w->n_pending];
                        break;
                }
        if (w->n_pending == 0)
                sd_event_exit(w->event, 0);
        return 0;
}

static int on_manager_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        RescanWait *w = userdata;
        const char *iface, *name, *contents, *origin;
        uint64_t processed, total;

        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, MUSICFS_MANAGER_IFACE) != 0)
                return 0;
        if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                if (sd_bus_message_read_basic(m, 's', &name) < 0 || sd_bus_message_peek_type(m, NULL, &contents) < 0)
                        return 0;
                if (strcmp(name, "ScanProgress") == 0 && strcmp(contents, "(stt)") == 0) {
                        if (sd_bus_message_read(m, "v", "(stt)", &origin, &processed, &total) < 0)
                                return 0;
                        if (origin[0])
                                show_progress(w, origin, processed, total);
                } else if (sd_bus_message_skip(m, "v") < 0)
                        return 0;
                if (sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        return 0;
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        RescanWait *w = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || strcmp(name, MUSICFS_BUS_NAME) != 0)
                return 0;
        if (new_owner[0])
                return 0;
        clear_bar(w);
        fprintf(stderr, "musicfsd left the %s bus before the scan finished.\n", bus_kind(w->c));
        w->status = EXIT_UNREACHABLE;
        sd_event_exit(w->event, 0);
        return 0;
}

/* The names in the Origins property: what "rescan" without an origin scans. */
static int origin_names(Context *c, const char *what, char ***ret, size_t *ret_n) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        char **names = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_get_property(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, "Origins",
                                &error, &reply, "ao");
        if (r < 0)
                return report_bus_error(c, what, NULL, &error, r);
        r = sd_bus_message_enter_container(reply, 'a', "o");
        if (r >= 0)
                while ((r = sd_bus_message_read_basic(reply, 'o', &path)) > 0) {
                        _cleanup_free_ char *name = origin_name_from_path(path);
                        char **a;

                        if (!name) {
                                r = -EBADMSG;   /* not an origin's path (or out of memory) */
                                break;
                        }
                        a = reallocarray(names, n + 1, sizeof(char *));
                        if (!a) {
                                r = -ENOMEM;
                                break;
                        }
                        names = a;
                        names[n++] = TAKE_PTR(name);
                }
        if (r < 0) {
                for (size_t i = 0; i < n; i++)
                        free(names[i]);
                free(names);
                return report_bad_reply(what, r);
        }
        *ret = names;
        *ret_n = n;
        return EXIT_SUCCESS;
}

/* Subscribes, makes the call that starts the scans, then follows them until every origin in
 * w->pending has finished. Returns the exit status. */
static int follow_scans(RescanWait *w, int (*start)(Context *c, const void *userdata), const void *userdata) {
        Context *c = w->c;
        int r;

        /* Subscribed before the call, so that a quick scan's ScanFinished cannot slip past. */
        r = sd_bus_match_signal(c->bus, NULL, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, "ScanFinished",
                                on_scan_finished, w);
        if (r >= 0)
                r = sd_bus_match_signal(c->bus, NULL, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, "org.freedesktop.DBus.Properties",
                                        "PropertiesChanged", on_manager_properties_changed, w);
        if (r >= 0)
                r = sd_bus_match_signal(c->bus, NULL, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "NameOwnerChanged", on_owner_changed, w);
        if (r < 0) {
                fprintf(stderr, "Failed to subscribe to the daemon's signals: %s.\n", strerror(-r));
                return r == -ECONNRESET || r == -ENOTCONN ? EXIT_UNREACHABLE : EXIT_DAEMON_FAILED;
        }

        r = start(c, userdata);
        if (r != EXIT_SUCCESS)
                return r;
        if (w->n_pending == 0)
                return EXIT_SUCCESS;    /* no origins: nothing will finish */

        r = sd_event_new(&w->event);
        if (r >= 0)
                r = sd_bus_attach_event(c->bus, w->event, SD_EVENT_PRIORITY_NORMAL);
        /* A lost bus connection ends the loop with a non-zero exit code instead of waiting forever. */
        if (r >= 0)
                r = sd_bus_set_exit_on_disconnect(c->bus, true);
        if (r >= 0)
                r = sd_event_loop(w->event);
        clear_bar(w);
        (void) sd_bus_detach_event(c->bus);
        if (r < 0) {
                fprintf(stderr, "Failed to wait for the scan: %s.\n", strerror(-r));
                return EXIT_DAEMON_FAILED;
        }
        if (r > 0) {
                fprintf(stderr, "Lost the connection to the %s bus before the scan finished.\n", bus_kind(c));
                return EXIT_UNREACHABLE;
        }
        return w->status;
}

static int pending_one(RescanWait *w, const char *name) {
        w->pending = calloc(1, sizeof(char *));
        if (!w->pending || !(w->pending[0] = strdup(name)))
                return -ENOMEM;
        w->n_pending = 1;
        return 0;
}

typedef struct RescanCall {
        const char *what, *origin;
} RescanCall;

static int start_rescan(Context *c, const void *userdata) {
        const RescanCall *call = userdata;
        return call_manager(c, call->what, call->origin[0] ? call->origin : NULL, "Rescan", NULL, "s", call->origin);
}

int verb_rescan(Context *c, int argc, char **argv) {
        _cleanup_(rescan_wait_done) RescanWait w = { .c = c, .tty = isatty(STDOUT_FILENO) };
        _cleanup_free_ char *what = NULL;
        RescanCall call = { .origin = argc > 1 ? argv[1] : "" };
        int r;

        if (call.origin[0])
                r = asprintf(&what, "rescan origin %s", call.origin);
        else
                r = (what = strdup("rescan the origins")) ? 0 : -1;
        if (r < 0)
                return report_bad_reply("rescan", -ENOMEM);
        call.what = what;

        if (!c->wait)
                return start_rescan(c, &call);
        if (call.origin[0]) {
                if (pending_one(&w, call.origin) < 0)
                        return report_bad_reply(what, -ENOMEM);
        } else {
                r = origin_names(c, what, &w.pending, &w.n_pending);
                if (r != EXIT_SUCCESS)
                        return r;
        }
        return follow_scans(&w, start_rescan, &call);
}

typedef struct AddOriginCall {
        const char *what, *name, *url;
        uint32_t priority;
} AddOriginCall;

static int start_add_origin(Context *c, const void *userdata) {
        const AddOriginCall *call = userdata;
        return call_manager(c, call->what, NULL, "AddOrigin", NULL, "ssua{sv}", call->name, call->url,
                            call->priority, 0);
}

/* add-origin NAME URL|DIR [PRIORITY] [--wait] */
int verb_add_origin(Context *c, int argc, char **argv) {
        _cleanup_(rescan_wait_done) RescanWait w = { .c = c, .tty = isatty(STDOUT_FILENO) };
        _cleanup_free_ char *what = NULL, *url = NULL;
        AddOriginCall call = { .name = argv[1] };
        int r;

        if (asprintf(&what, "add origin %s", argv[1]) < 0)
                return report_bad_reply("add the origin", -ENOMEM);
        call.what = what;

        if (argc > 3) {
                char *end;
                unsigned long v;

                errno = 0;
                v = strtoul(argv[3], &end, 10);
                if (errno != 0 || end == argv[3] || *end || argv[3][0] == '-' || v > UINT32_MAX)
                        return usage_error("PRIORITY is a number (lower is preferred), not '%s'.", argv[3]);
                call.priority = (uint32_t) v;
        } else {
                /* After the origins there are: the least preferred. */
                _cleanup_(origin_list_done) OriginList list = {};

                r = load_origins(c, what, &list);
                if (r != EXIT_SUCCESS)
                        return r;
                call.priority = 10;
                for (size_t i = 0; i < list.n; i++)
                        if (list.items[i].priority >= call.priority && list.items[i].priority < UINT32_MAX - 10)
                                call.priority = list.items[i].priority + 10;
        }

        /* A directory may be given as it is typed: the daemon wants it absolute. */
        if (!strstr(argv[2], "://") && argv[2][0] != '/') {
                _cleanup_free_ char *cwd = getcwd(NULL, 0);
                if (!cwd) {
                        fprintf(stderr, "Failed to determine the current directory: %s.\n", strerror(errno));
                        return EXIT_DAEMON_FAILED;
                }
                if (asprintf(&url, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, argv[2]) < 0)
                        return report_bad_reply(what, -ENOMEM);
        }
        call.url = url ?: argv[2];

        if (!c->wait)
                return start_add_origin(c, &call);
        if (pending_one(&w, call.name) < 0)
                return report_bad_reply(what, -ENOMEM);
        return follow_scans(&w, start_add_origin, &call);
}

int verb_remove_origin(Context *c, int argc, char **argv) {
        _cleanup_free_ char *what = NULL;

        if (asprintf(&what, "remove origin %s", argv[1]) < 0)
                return report_bad_reply("remove the origin", -ENOMEM);
        return call_manager(c, what, argv[1], "RemoveOrigin", NULL, "s", argv[1]);
}
