/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* musicfsctl: controls musicfsd over D-Bus (org.musicfs.Manager), in the manner of timedatectl.
 * This file parses the command line and dispatches to the verbs in verbs-*.c. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"
#include "polkit-agent.h"

enum {
        OPT_WAIT  = 1 << 0,
        OPT_FORCE = 1 << 1,
        OPT_LIMIT = 1 << 2,
        /* Not an option: the verb changes something, which polkit may want a password for. */
        PRIVILEGED = 1 << 3,
};

typedef struct Verb {
        const char *name;
        unsigned min_args, max_args;    /* after the verb */
        unsigned options;               /* OPT_*: the verb-specific options it takes; PRIVILEGED */
        int (*run)(Context *c, int argc, char **argv);
} Verb;

static const Verb verbs[] = {
        { "status",        0, 0,        0,                     verb_status        },
        { "origins",       0, 0,        0,                     verb_origins       },
        { "check",         1, 1,        0,                     verb_check         },
        { "mount",         0, 1,        PRIVILEGED,            verb_mount         },
        { "unmount",       0, 0,        PRIVILEGED | OPT_FORCE, verb_unmount       },
        { "passthrough",   1, 1,        PRIVILEGED,            verb_passthrough   },
        { "rescan",        0, 1,        PRIVILEGED | OPT_WAIT, verb_rescan        },
        { "add-origin",    2, 3,        PRIVILEGED | OPT_WAIT, verb_add_origin    },
        { "remove-origin", 1, 1,        PRIVILEGED,            verb_remove_origin },
        { "search",        1, UINT_MAX, OPT_LIMIT,             verb_search        },
        { "pin",           1, 1,        PRIVILEGED,            verb_pin           },
        { "unpin",         1, 1,        PRIVILEGED,            verb_pin           },
        { "cache",         0, 2,        PRIVILEGED,            verb_cache         },  /* but stats, verify */
        { "clear-cache",   0, 0,        PRIVILEGED,            verb_clear_cache   },
        { "failpoint",     1, 3,        PRIVILEGED,            verb_failpoint     },  /* but "list" */
        { "monitor",       0, 0,        0,                     verb_monitor       },
        { "reload",        0, 0,        PRIVILEGED,            verb_reload        },
};

static void help(void) {
        printf("musicfsctl [OPTIONS...] COMMAND ...\n"
               "\n"
               "Query and control the MusicFS daemon, musicfsd, over D-Bus (%s).\n"
               "\n"
               "Commands:\n"
               "  status                       Show version, state, mount point, tracks, cache, scan\n"
               "  origins                      List the origins with their health\n"
               "  check NAME                   Check an origin's health now (exit 0 only if healthy)\n"
               "  mount [MOUNTPOINT]           Mount the library (default: the configured mount point)\n"
               "  unmount [--force]            Unmount it; --force detaches it even while files are open\n"
               "  passthrough on|off           Let reads bypass the cache, or not\n"
               "  rescan [ORIGIN] [--wait]     Scan one origin or all again; --wait follows it to the end\n"
               "  add-origin NAME DIR|URL [PRIORITY] [--wait]\n"
               "                               Add an origin (default: least preferred) and scan it\n"
               "  remove-origin NAME           Remove an origin; its files leave the library\n"
               "  search QUERY... [--limit N]  Search the catalog (default: %u results)\n"
               "  cache [stats]                Show cache statistics\n"
               "  cache clear                  Drop every unpinned chunk from the cache\n"
               "  cache verify                 Check every cached chunk (exit 1 if any is bad)\n"
               "  cache repair                 Check every cached chunk and fix what is wrong\n"
               "  cache pin PATH               Keep PATH (a file or album of the library) in the cache\n"
               "  cache unpin PATH             Let PATH be evicted again\n"
               "  pin PATH, unpin PATH, clear-cache\n"
               "                               The same as cache pin, cache unpin, cache clear\n"
               "  failpoint list               List failpoints: armed actions, times fired\n"
               "  failpoint arm NAME ACTIONS   Arm a failpoint, e.g. arm origin-read '3*return(EIO)'\n"
               "  failpoint disarm NAME        Disarm a failpoint\n"
               "  monitor                      Print the daemon's events as they happen, until Ctrl+C\n"
               "  reload                       Re-read the configuration file\n"
               "\n"
               "Options:\n"
               "     --user             Talk to a daemon on the session bus (musicfsd --user)\n"
               "     --json             Print JSON: one document, or one per line for monitor and\n"
               "                        rescan --wait (status, origins, check, cache stats,\n"
               "                        cache verify, cache repair, search, failpoint list, monitor)\n"
               "     --no-legend        Print tables without their header line\n"
               "     --no-ask-password  Do not ask for a password to authorize a change\n"
               "     --wait             With rescan, add-origin: wait until the scan has finished\n"
               "     --force            With unmount: detach even if files are open\n"
               "  -n --limit N          With search: at most N results (1-10000)\n"
               "  -h --help             Show this help\n"
               "     --version          Show the version\n"
               "\n"
               "Exit status: 0 success; 1 the daemon reported a failure (or check found the origin\n"
               "not healthy); 2 usage error; 3 the daemon cannot be reached (not running, no bus,\n"
               "no answer); 4 not authorized.\n"
               "\n"
               "See musicfsctl(1).\n",
               MUSICFS_BUS_NAME, SEARCH_DEFAULT_LIMIT);
}

static int parse_limit(const char *s, uint32_t *ret) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end || s[0] == '-' || v > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t) v;
        return 0;
}

/* Returns -1 to run a verb, else the exit status (--help, --version, usage errors). */
static int parse_argv(int argc, char *argv[], Context *c, unsigned *ret_options) {
        enum {
                ARG_USER = 0x100, ARG_JSON, ARG_NO_LEGEND, ARG_NO_ASK_PASSWORD, ARG_WAIT, ARG_FORCE, ARG_VERSION,
        };
        static const struct option options[] = {
                { "user",            no_argument,       NULL, ARG_USER            },
                { "json",            no_argument,       NULL, ARG_JSON            },
                { "no-legend",       no_argument,       NULL, ARG_NO_LEGEND       },
                { "no-ask-password", no_argument,       NULL, ARG_NO_ASK_PASSWORD },
                { "wait",            no_argument,       NULL, ARG_WAIT            },
                { "force",           no_argument,       NULL, ARG_FORCE           },
                { "limit",           required_argument, NULL, 'n'                 },
                { "help",            no_argument,       NULL, 'h'                 },
                { "version",         no_argument,       NULL, ARG_VERSION         },
                {}
        };
        unsigned given = 0;
        int opt;

        /* Options may come before or after the command, as with systemctl; "--" ends them. */
        while ((opt = getopt_long(argc, argv, ":hn:", options, NULL)) >= 0)
                switch (opt) {
                case ARG_USER:
                        c->user_bus = true;
                        break;
                case ARG_JSON:
                        c->json = true;
                        break;
                case ARG_NO_LEGEND:
                        c->legend = false;
                        break;
                case ARG_NO_ASK_PASSWORD:
                        c->ask_password = 0;
                        break;
                case ARG_WAIT:
                        c->wait = true;
                        given |= OPT_WAIT;
                        break;
                case ARG_FORCE:
                        c->force = true;
                        given |= OPT_FORCE;
                        break;
                case 'n':
                        if (parse_limit(optarg, &c->limit) < 0)
                                return usage_error("--limit wants a number of results, not '%s'.", optarg);
                        given |= OPT_LIMIT;
                        break;
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                case ARG_VERSION:
                        printf("musicfsctl %s\n", MUSICFS_VERSION);
                        return EXIT_SUCCESS;
                case ':':
                        return usage_error("option %s wants an argument.", argv[optind - 1]);
                case '?':
                        if (optopt > 0 && optopt < 0x100)
                                return usage_error("unknown option -%c.", optopt);
                        return usage_error("unknown option %s.", argv[optind - 1]);
                default:
                        return usage_error("unhandled option %s.", argv[optind - 1]);
                }

        *ret_options = given;
        return -1;
}

int main(int argc, char *argv[]) {
        Context c = { .legend = true, .ask_password = -1, .limit = SEARCH_DEFAULT_LIMIT };
        unsigned given = 0;
        const Verb *verb = NULL;
        pid_t agent = 0;
        int r, verb_argc;
        char **verb_argv;

        /* Only the character type, for display widths: numbers in --json stay in the C locale. */
        (void) setlocale(LC_CTYPE, "");

        r = parse_argv(argc, argv, &c, &given);
        if (r >= 0)
                return r;

        if (optind >= argc)
                return usage_error("missing command.");
        verb_argv = argv + optind;
        verb_argc = argc - optind;
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (strcmp(verbs[i].name, verb_argv[0]) == 0) {
                        verb = verbs + i;
                        break;
                }
        if (!verb)
                return usage_error("unknown command '%s'.", verb_argv[0]);
        if ((unsigned) verb_argc - 1 < verb->min_args)
                return usage_error("%s wants %s %u argument%s.", verb->name,
                                   verb->min_args == verb->max_args ? "exactly" : "at least", verb->min_args,
                                   verb->min_args > 1 ? "s" : "");
        if ((unsigned) verb_argc - 1 > verb->max_args)
                return usage_error("too many arguments for %s, starting at '%s'.", verb->name,
                                   verb_argv[verb->max_args + 1]);
        if (given & ~(verb->options & ~PRIVILEGED))
                return usage_error("%s does not take %s.", verb->name,
                                   given & OPT_WAIT && !(verb->options & OPT_WAIT) ? "--wait" :
                                   given & OPT_FORCE && !(verb->options & OPT_FORCE) ? "--force" : "--limit");

        r = sd_bus_error_add_map(musicfs_bus_error_map);
        if (r < 0) {
                fprintf(stderr, "Failed to register the D-Bus error map: %s.\n", strerror(-r));
                return EXIT_DAEMON_FAILED;
        }
        c.colors = colors_enabled();
        r = connect_bus(&c);
        if (r != EXIT_SUCCESS)
                return r;
        if ((verb->options & PRIVILEGED) && c.ask_password != 0 &&
            !(verb->run == verb_failpoint && strcmp(verb_argv[1], "list") == 0) &&
            !(verb->run == verb_cache && !cache_subcommand_privileged(verb_argc, verb_argv))) {
                polkit_agent_open(&agent);
                /* The answer may wait for a person to type a password: more than the 25 s default. */
                if (agent > 0)
                        (void) sd_bus_set_method_call_timeout(c.bus, UINT64_C(300) * 1000000);
        }
        r = verb->run(&c, verb_argc, verb_argv);
        polkit_agent_close(agent);
        sd_bus_flush_close_unref(c.bus);
        return r;
}
