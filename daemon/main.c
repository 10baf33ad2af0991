/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crash.h"
#include "failpoint.h"
#include "log.h"
#include "manager.h"

enum {
        EXIT_USAGE = 2,
};

static void help(void) {
        printf("musicfsd [OPTIONS...] MOUNTPOINT\n"
               "\n"
               "Mounts a read-only FUSE view of a music collection organised by its tags\n"
               "(Artist/Album/Track) and serves org.musicfs.Manager on D-Bus. Stays in the\n"
               "foreground and talks to systemd with sd_notify (Type=notify).\n"
               "\n"
               "Options:\n"
               "     --config FILE      Read FILE and FILE.d/*.conf\n"
               "                        (default: %s, if it exists)\n"
               "     --origin DIR       Add a local origin named after DIR (repeatable); with no\n"
               "                        configuration file, embedded defaults apply\n"
               "     --cache-dir DIR    Catalog and lock file (default: %s)\n"
               "     --template T       Path template, default:\n"
               "                        %s\n"
               "     --threads N        FUSE worker threads, 1-64 (default: 8)\n"
               "     --log-level L      err, warning, notice, info or debug (default: info)\n"
               "     --user             Use the session bus instead of the system bus\n"
               "  -h --help             Show this help and exit\n"
               "     --version          Show the version and exit\n"
               "\n"
               "MOUNTPOINT (an existing, empty directory) may also come from mountpoint= in the\n"
               "configuration. Flags override the file; --origin adds to its origins.\n"
               "\n"
               "Signals: SIGTERM/SIGINT stop cleanly (in-flight requests finish, the catalog is\n"
               "checkpointed, the mount is removed); a second one exits at once. SIGHUP (or the\n"
               "Reload method) re-reads the configuration: log_level, template, scan_batch and the\n"
               "FUSE timeouts apply at once, mountpoint, cache_dir, origins, bus and fuse_threads\n"
               "need a restart. Over D-Bus, origins can be added and removed and the library\n"
               "unmounted and mounted again while the daemon runs, until it stops.\n"
               "\n"
               "Environment: MUSICFS_FAILPOINTS='name=actions;...' arms failpoints at startup\n"
               "(builds with failpoints only), e.g. 'origin-read=3*return(EIO)'.\n"
               "\n"
               "Exit status: 0 clean stop, 1 startup or runtime error (one line says why),\n"
               "2 usage error.\n"
               "\n"
               "Manage a running daemon with musicfsctl(1) or busctl: musicfsctl status.\n",
               CONFIG_DEFAULT_PATH, CONFIG_DEFAULT_CACHE_DIR, CONFIG_DEFAULT_TEMPLATE);
}

static int usage_error(const char *format, ...) _printf_(1, 2);
static int usage_error(const char *format, ...) {
        va_list ap;

        fputs("musicfsd: ", stderr);
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fputs("\nTry 'musicfsd --help' for more information.\n", stderr);
        return -EINVAL;
}

/* 1: run, 0: exit 0 (--help, --version), <0: usage error. */
static int parse_argv(int argc, char *argv[], ManagerArgs *args) {
        enum {
                ARG_CONFIG = 0x100,
                ARG_ORIGIN,
                ARG_CACHE_DIR,
                ARG_TEMPLATE,
                ARG_THREADS,
                ARG_LOG_LEVEL,
                ARG_USER,
                ARG_VERSION,
        };
        static const struct option options[] = {
                { "config",    required_argument, NULL, ARG_CONFIG    },
                { "origin",    required_argument, NULL, ARG_ORIGIN    },
                { "cache-dir", required_argument, NULL, ARG_CACHE_DIR },
                { "template",  required_argument, NULL, ARG_TEMPLATE  },
                { "threads",   required_argument, NULL, ARG_THREADS   },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "user",      no_argument,       NULL, ARG_USER      },
                { "help",      no_argument,       NULL, 'h'           },
                { "version",   no_argument,       NULL, ARG_VERSION   },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                char **dst = NULL;

                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("musicfsd %s (%sfailpoints)\n", MUSICFS_VERSION, MUSICFS_FAILPOINTS ? "+" : "-");
                        return 0;
                case ARG_CONFIG:
                        dst = &args->config_path;
                        break;
                case ARG_CACHE_DIR:
                        dst = &args->cache_dir;
                        break;
                case ARG_TEMPLATE:
                        dst = &args->template;
                        break;
                case ARG_ORIGIN:
                        if (manager_args_add_origin(args, optarg) < 0)
                                return log_error_errno(ENOMEM, "Out of memory");
                        break;
                case ARG_THREADS: {
                        char *end;
                        errno = 0;
                        unsigned long n = strtoul(optarg, &end, 10);
                        if (errno || end == optarg || *end || optarg[0] == '-' || n == 0 || n > UINT_MAX)
                                return usage_error("--threads wants a positive number, not '%s'", optarg);
                        args->threads = (unsigned) n;
                        break;
                }
                case ARG_LOG_LEVEL: {
                        int level = log_level_from_string(optarg);
                        if (level < 0)
                                return usage_error("--log-level wants err, warning, notice, info or debug, not '%s'", optarg);
                        args->log_level = level;
                        break;
                }
                case ARG_USER:
                        args->user_bus = true;
                        break;
                case '?':
                        /* getopt_long() has said what is wrong. */
                        fputs("Try 'musicfsd --help' for more information.\n", stderr);
                        return -EINVAL;
                default:
                        return usage_error("unhandled option %s", argv[optind - 1]);
                }

                if (dst) {
                        free(*dst);
                        *dst = strdup(optarg);
                        if (!*dst)
                                return log_error_errno(ENOMEM, "Out of memory");
                }
        }

        if (optind < argc - 1)
                return usage_error("too many arguments, starting at '%s'", argv[optind + 1]);
        if (optind == argc - 1) {
                args->mountpoint = strdup(argv[optind]);
                if (!args->mountpoint)
                        return log_error_errno(ENOMEM, "Out of memory");
        } else if (!args->config_path && access(CONFIG_DEFAULT_PATH, F_OK) < 0)
                /* With a configuration file, mountpoint= may name it; without one it is missing. */
                return usage_error("missing MOUNTPOINT (and there is no %s to name one)", CONFIG_DEFAULT_PATH);
        return 1;
}

static int arm_failpoints_from_environment(void) {
        const char *spec = getenv("MUSICFS_FAILPOINTS");

        if (!spec || !*spec)
                return 0;
#if MUSICFS_FAILPOINTS
        _cleanup_free_ char *reason = NULL;
        int r = failpoint_arm_from_string(spec, &reason);
        if (r < 0)
                return log_error_errno(r, "Invalid MUSICFS_FAILPOINTS '%s': %s", spec, reason ?: strerror(-r));
        log_notice("Failpoints armed from MUSICFS_FAILPOINTS: %s", spec);
        return 0;
#else
        return log_error_errno(EOPNOTSUPP, "MUSICFS_FAILPOINTS is set, but this musicfsd was built with "
                               "-Dfailpoints=false; unset it");
#endif
}

int main(int argc, char *argv[]) {
        sigset_t mask;
        Manager *m = NULL;
        int r;

        /* Before any thread exists, so that every thread inherits the mask and the signals reach
         * only the event loop's signalfd. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
                log_error_errno(errno, "Failed to block signals: %m");
                return EXIT_FAILURE;
        }
        /* A reader gone from a pipe or socket is an error to handle, not a reason to die. */
        (void) signal(SIGPIPE, SIG_IGN);
        /* A crash in any thread ends the daemon; it must say where and how (COVERAGE 2.2). */
        (void) crash_handler_install();
        thread_set_name("musicfsd");

        _cleanup_(manager_args_free) ManagerArgs args;
        manager_args_init(&args);

        r = parse_argv(argc, argv, &args);
        if (r < 0)
                return r == -ENOMEM ? EXIT_FAILURE : EXIT_USAGE;
        if (r == 0)
                return EXIT_SUCCESS;

        if (arm_failpoints_from_environment() < 0)
                return EXIT_FAILURE;

        r = manager_new(&args, &m);
        if (r < 0)
                return EXIT_FAILURE;

        r = manager_run(m);
        manager_free(m);
        return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
