/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* What the verbs of musicfsctl share: the parsed command line, exit statuses, bus calls that
 * explain their failures in a sentence.
 *
 * Verbs and the helpers below return an exit status (EXIT_SUCCESS or one of the EXIT_* below), not
 * an errno: what a caller of musicfsctl needs to tell apart is "the daemon said no", "you typed it
 * wrong", "there is no daemon" and "you may not", and each of those has already been explained on
 * stderr by the time the status comes back. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <systemd/sd-bus.h>

#include "json.h"

enum {
        EXIT_DAEMON_FAILED = 1, /* the daemon reported a failure (or sent something we cannot read) */
        EXIT_USAGE         = 2, /* bad command line */
        EXIT_UNREACHABLE   = 3, /* no bus, or musicfsd is not running on it, or it does not answer */
        EXIT_DENIED        = 4, /* the daemon (polkit) refused the caller */
};

typedef struct Context {
        bool user_bus;          /* --user: the session bus */
        bool json;              /* --json */
        bool legend;            /* false with --no-legend */
        int ask_password;       /* --no-ask-password: 0; default: -1 (yes on a terminal) */
        bool wait;              /* rescan --wait */
        bool force;             /* unmount --force */
        uint32_t limit;         /* search --limit */
        bool colors;            /* stdout takes ANSI colours */
        sd_bus *bus;
} Context;

#define SEARCH_DEFAULT_LIMIT 50

int usage_error(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* bus-util.c */
int connect_bus(Context *c);
const char *bus_kind(const Context *c);        /* "system" or "session" */
/* Explains a failed call on stderr and returns the exit status for it. what is the action in the
 * infinitive ("rescan nas"); subject, when not NULL, is the origin or failpoint name the call was
 * about, for "No origin named X." */
int report_bus_error(const Context *c, const char *what, const char *subject, const sd_bus_error *error, int r);
/* A reply that does not have the documented signature. */
int report_bad_reply(const char *what, int r);
/* Calls a method of org.musicfs.Manager; on failure explains it and returns the exit status. */
int call_manager(Context *c, const char *what, const char *subject, const char *member,
                 sd_bus_message **ret_reply, const char *types, ...);
/* Org.freedesktop.DBus.Properties.GetAll of an object, the reply positioned at the a{sv}. */
int get_all_properties(Context *c, const char *what, const char *path, const char *iface, sd_bus_message **ret_reply);
/* The origin name in an origin object path, or NULL if the path is not an origin's. */
char *origin_name_from_path(const char *path);

/* Reading a{sv} property dictionaries into structs, like systemd's bus_map_all_properties(). */
typedef struct PropertyMap {
        const char *name;
        const char *signature;  /* what the property must hold; anything else is skipped */
        size_t offset;          /* of the field in the struct */
        /* Reads the variant's contents into the field; NULL for "s" (char *, strdup'ed), "b" (bool),
         * "u" (uint32_t) and "t" (uint64_t). */
        int (*read)(sd_bus_message *m, void *field);
} PropertyMap;
/* Reads an a{sv} at the current position of m; unknown or mistyped properties are skipped.
 * Returns a bit mask of the map entries that were found (entry i: bit i), or a negative errno. */
int64_t map_properties(sd_bus_message *m, const PropertyMap *map, void *userdata);

/* variant.c: one complete value at the current position of m, as JSON or as text for people. */
int message_value_to_json(sd_bus_message *m, JsonWriter *w);
int message_value_to_text(sd_bus_message *m, FILE *f);

/* Verbs, each in verbs-*.c. argv[0] is the verb. */
int verb_status(Context *c, int argc, char **argv);
int verb_cache(Context *c, int argc, char **argv);
/* Whether "cache SUBCOMMAND" changes something (all but stats and verify). */
bool cache_subcommand_privileged(int argc, char **argv);
int verb_origins(Context *c, int argc, char **argv);
int verb_check(Context *c, int argc, char **argv);
int verb_rescan(Context *c, int argc, char **argv);
int verb_add_origin(Context *c, int argc, char **argv);
int verb_remove_origin(Context *c, int argc, char **argv);
int verb_clear_cache(Context *c, int argc, char **argv);
int verb_mount(Context *c, int argc, char **argv);
int verb_unmount(Context *c, int argc, char **argv);
int verb_passthrough(Context *c, int argc, char **argv);
int verb_pin(Context *c, int argc, char **argv);
int verb_reload(Context *c, int argc, char **argv);
int verb_search(Context *c, int argc, char **argv);
int verb_failpoint(Context *c, int argc, char **argv);
int verb_monitor(Context *c, int argc, char **argv);
