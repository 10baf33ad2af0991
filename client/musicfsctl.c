/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* musicfsctl: a small client of org.musicfs.Manager. Minimal for now (status and failpoints); the
 * full verb set, --json and progress bars come with the management-API issue. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "bus-api.h"
#include "macro.h"

typedef struct Context {
        bool user_bus;
} Context;

static void help(void) {
        printf("musicfsctl [OPTIONS...] COMMAND ...\n"
               "\n"
               "Queries and controls the musicfsd daemon over D-Bus (%s).\n"
               "\n"
               "Commands:\n"
               "  status                       Show version, state, mountpoint and track count\n"
               "  failpoint list               List failpoints: armed actions, times fired\n"
               "  failpoint arm NAME ACTIONS   Arm a failpoint, e.g. arm origin-read '3*return(EIO)'\n"
               "  failpoint disarm NAME        Disarm a failpoint\n"
               "\n"
               "Options:\n"
               "     --user        Talk to a daemon on the session bus (musicfsd --user)\n"
               "  -h --help        Show this help\n"
               "     --version     Show the version\n"
               "\n"
               "Exit status: 0 on success, 1 on any failure.\n",
               MUSICFS_BUS_NAME);
}

/* A D-Bus error as a sentence for people: what we tried, then why it failed. */
static int report_error(const char *what, const sd_bus_error *error, int r) {
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                fprintf(stderr, "Failed to %s: musicfsd is not running (nobody owns %s on this bus).\n",
                        what, MUSICFS_BUS_NAME);
        else if (error && error->message)
                fprintf(stderr, "Failed to %s: %s%s\n", what, error->message,
                        error->message[0] && strchr(".!?", error->message[strlen(error->message) - 1]) ? "" : ".");
        else
                fprintf(stderr, "Failed to %s: %s.\n", what, strerror(r < 0 ? -r : EIO));
        return -1;
}

static int connect_bus(const Context *c, sd_bus **ret) {
        int r = c->user_bus ? sd_bus_open_user(ret) : sd_bus_open_system(ret);
        if (r < 0) {
                fprintf(stderr, "Failed to connect to the %s bus: %s.\n", c->user_bus ? "user" : "system", strerror(-r));
                return r;
        }
        return 0;
}

static int verb_status(sd_bus *bus, int argc, char **argv) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL, *state = NULL, *mountpoint = NULL;
        uint64_t tracks = 0;
        int r;

        if (argc != 1) {
                fprintf(stderr, "status takes no arguments.\n");
                return -EINVAL;
        }

        r = sd_bus_get_property_string(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                       "Version", &error, &version);
        if (r >= 0)
                r = sd_bus_get_property_string(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                               "State", &error, &state);
        if (r >= 0)
                r = sd_bus_get_property_string(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                               "MountPoint", &error, &mountpoint);
        if (r >= 0)
                r = sd_bus_get_property_trivial(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                                "TrackCount", &error, 't', &tracks);
        if (r < 0) {
                report_error("read the daemon's status", &error, r);
                sd_bus_error_free(&error);
                return r;
        }

        printf("   Version: %s\n"
               "     State: %s\n"
               "MountPoint: %s\n"
               "TrackCount: %" PRIu64 "\n",
               version, state, mountpoint, tracks);
        return 0;
}

static int verb_failpoint_list(sd_bus *bus) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *name, *actions;
        uint32_t fired;
        int r;

        r = sd_bus_call_method(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                               "ListFailpoints", &error, &reply, NULL);
        if (r < 0) {
                report_error("list failpoints", &error, r);
                sd_bus_error_free(&error);
                return r;
        }

        r = sd_bus_message_enter_container(reply, 'a', "(ssu)");
        if (r < 0)
                goto bad_reply;
        printf("%-16s %-32s %s\n", "NAME", "ACTIONS", "FIRED");
        while ((r = sd_bus_message_read(reply, "(ssu)", &name, &actions, &fired)) > 0)
                printf("%-16s %-32s %" PRIu32 "\n", name, actions[0] ? actions : "-", fired);
        if (r < 0)
                goto bad_reply;
        return 0;

bad_reply:
        fprintf(stderr, "Failed to list failpoints: the daemon sent a malformed reply (%s).\n", strerror(-r));
        return r;
}

static int verb_failpoint(sd_bus *bus, int argc, char **argv) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *what = NULL;
        int r;

        if (argc >= 2 && strcmp(argv[1], "list") == 0 && argc == 2)
                return verb_failpoint_list(bus);

        if (argc == 4 && strcmp(argv[1], "arm") == 0) {
                if (asprintf(&what, "arm failpoint %s", argv[2]) < 0)
                        return -ENOMEM;
                r = sd_bus_call_method(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                       "ArmFailpoint", &error, NULL, "ss", argv[2], argv[3]);
        } else if (argc == 3 && strcmp(argv[1], "disarm") == 0) {
                if (asprintf(&what, "disarm failpoint %s", argv[2]) < 0)
                        return -ENOMEM;
                r = sd_bus_call_method(bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                                       "DisarmFailpoint", &error, NULL, "s", argv[2]);
        } else {
                fprintf(stderr, "Usage: musicfsctl failpoint list | arm NAME ACTIONS | disarm NAME\n");
                return -EINVAL;
        }

        if (r < 0) {
                report_error(what, &error, r);
                sd_bus_error_free(&error);
                return r;
        }
        return 0;
}

/* 1: run a verb, 0: done (--help, --version), <0: usage error. */
static int parse_argv(int argc, char *argv[], Context *c) {
        enum { ARG_USER = 0x100, ARG_VERSION };
        static const struct option options[] = {
                { "user",    no_argument, NULL, ARG_USER    },
                { "help",    no_argument, NULL, 'h'         },
                { "version", no_argument, NULL, ARG_VERSION },
                {}
        };
        int opt;

        /* "+": stop at the first verb, so that ACTIONS may start with a dash. */
        while ((opt = getopt_long(argc, argv, "+h", options, NULL)) >= 0)
                switch (opt) {
                case ARG_USER:
                        c->user_bus = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("musicfsctl %s\n", MUSICFS_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'musicfsctl --help' for more information.\n");
                        return -EINVAL;
                }

        if (optind >= argc) {
                fprintf(stderr, "Missing command. Try 'musicfsctl --help' for more information.\n");
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        Context c = {};
        int r;

        r = parse_argv(argc, argv, &c);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        char **verb_argv = argv + optind;
        int verb_argc = argc - optind;
        int (*verb)(sd_bus *, int, char **) = NULL;

        if (strcmp(verb_argv[0], "status") == 0)
                verb = verb_status;
        else if (strcmp(verb_argv[0], "failpoint") == 0)
                verb = verb_failpoint;
        else {
                fprintf(stderr, "Unknown command '%s'. Try 'musicfsctl --help' for more information.\n", verb_argv[0]);
                return EXIT_FAILURE;
        }

        r = sd_bus_error_add_map(musicfs_bus_error_map);
        if (r < 0) {
                fprintf(stderr, "Failed to register the D-Bus error map: %s.\n", strerror(-r));
                return EXIT_FAILURE;
        }
        if (connect_bus(&c, &bus) < 0)
                return EXIT_FAILURE;

        return verb(bus, verb_argc, verb_argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
