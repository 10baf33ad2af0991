/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"

int usage_error(const char *format, ...) {
        va_list ap;

        fputs("musicfsctl: ", stderr);
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fputs("\nTry 'musicfsctl --help' for more information.\n", stderr);
        return EXIT_USAGE;
}

const char *bus_kind(const Context *c) {
        return c->user_bus ? "session" : "system";
}

int connect_bus(Context *c) {
        int r;

        r = c->user_bus ? sd_bus_open_user(&c->bus) : sd_bus_open_system(&c->bus);
        if (r < 0) {
                fprintf(stderr, "Failed to connect to the %s bus: %s.\n", bus_kind(c), strerror(-r));
                return EXIT_UNREACHABLE;
        }
        /* Like timedatectl: polkit may ask for a password when a person is there to type it. */
        r = sd_bus_set_allow_interactive_authorization(
                        c->bus, c->ask_password < 0 ? isatty(STDIN_FILENO) : c->ask_password > 0);
        if (r < 0) {
                fprintf(stderr, "Failed to set up the bus connection: %s.\n", strerror(-r));
                return EXIT_DAEMON_FAILED;
        }
        return EXIT_SUCCESS;
}

/* The daemon's message, escaped for the terminal and without its final full stop (we add one). */
static char *daemon_message(const sd_bus_error *error) {
        char *m;
        size_t n;

        if (!error || !error->message || !error->message[0])
                return NULL;
        m = human_escape(error->message);
        if (!m)
                return NULL;
        n = strlen(m);
        while (n > 0 && (m[n - 1] == '.' || m[n - 1] == ' '))
                m[--n] = 0;
        return m;
}

int report_bus_error(const Context *c, const char *what, const char *subject, const sd_bus_error *error, int r) {
        _cleanup_free_ char *msg = daemon_message(error), *subj = subject ? human_escape(subject) : NULL;
        const char *why = msg ?: strerror(r < 0 ? -r : EIO);

        if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER)) {
                fprintf(stderr, "Failed to %s: musicfsd is not running (no owner of %s on the %s bus).\n",
                        what, MUSICFS_BUS_NAME, bus_kind(c));
                return EXIT_UNREACHABLE;
        }
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_NO_REPLY, SD_BUS_ERROR_TIMEOUT, SD_BUS_ERROR_DISCONNECTED) ||
            (!sd_bus_error_is_set(error) && (r == -ETIMEDOUT || r == -ENOTCONN || r == -ECONNRESET))) {
                fprintf(stderr, "Failed to %s: musicfsd did not answer (it may have stopped, crashed or hung): %s.\n",
                        what, why);
                return EXIT_UNREACHABLE;
        }
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_ACCESS_DENIED)) {
                fprintf(stderr, "Not allowed to %s: %s. Try again as root or with an authorized account.\n", what, why);
                return EXIT_DENIED;
        }
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED)) {
                fprintf(stderr, "Not allowed to %s without authenticating: %s. %s\n", what, why,
                        c->ask_password == 0 ? "Drop --no-ask-password to be asked, or run it as root."
                                             : "Run it on a terminal to be asked, or as root.");
                return EXIT_DENIED;
        }
        if (sd_bus_error_has_names(error, MUSICFS_ERROR_NO_SUCH_ORIGIN) && subj) {
                fprintf(stderr, "No origin named %s.\n", subj);
                return EXIT_DAEMON_FAILED;
        }
        if (sd_bus_error_has_names(error, MUSICFS_ERROR_NO_SUCH_FAILPOINT) && subj) {
                fprintf(stderr, "No failpoint named %s ('musicfsctl failpoint list' shows them).\n", subj);
                return EXIT_DAEMON_FAILED;
        }
        if (sd_bus_error_has_names(error, MUSICFS_ERROR_NOT_SUPPORTED) && msg) {
                fprintf(stderr, "%s.\n", msg);
                return EXIT_DAEMON_FAILED;
        }
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_UNKNOWN_METHOD, SD_BUS_ERROR_UNKNOWN_OBJECT,
                                   SD_BUS_ERROR_UNKNOWN_INTERFACE, SD_BUS_ERROR_UNKNOWN_PROPERTY)) {
                fprintf(stderr, "Failed to %s: this musicfsd does not offer it (it may be older than musicfsctl): %s.\n",
                        what, why);
                return EXIT_DAEMON_FAILED;
        }
        fprintf(stderr, "Failed to %s: %s.\n", what, why);
        return EXIT_DAEMON_FAILED;
}

int report_bad_reply(const char *what, int r) {
        fprintf(stderr, "Failed to %s: musicfsd sent a reply this musicfsctl cannot read (%s).\n",
                what, strerror(r < 0 ? -r : EBADMSG));
        return EXIT_DAEMON_FAILED;
}

int call_manager(Context *c, const char *what, const char *subject, const char *member,
                 sd_bus_message **ret_reply, const char *types, ...) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        va_start(ap, types);
        r = sd_bus_call_methodv(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, member,
                                &error, ret_reply, types, ap);
        va_end(ap);
        if (r < 0)
                return report_bus_error(c, what, subject, &error, r);
        return EXIT_SUCCESS;
}

int get_all_properties(Context *c, const char *what, const char *path, const char *iface, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(c->bus, MUSICFS_BUS_NAME, path, "org.freedesktop.DBus.Properties", "GetAll",
                               &error, ret_reply, "s", iface);
        if (r < 0)
                return report_bus_error(c, what, NULL, &error, r);
        return EXIT_SUCCESS;
}

char *origin_name_from_path(const char *path) {
        char *name = NULL;

        if (sd_bus_path_decode(path, MUSICFS_ORIGIN_PREFIX, &name) <= 0)
                return NULL;
        return name;
}

static int read_basic_field(sd_bus_message *m, char type, void *field) {
        int r;

        switch (type) {
        case 's': {
                const char *s;
                char *copy;

                r = sd_bus_message_read_basic(m, 's', &s);
                if (r < 0)
                        return r;
                copy = strdup(s);
                if (!copy)
                        return -ENOMEM;
                free(*(char **) field);
                *(char **) field = copy;
                return 0;
        }
        case 'b': {
                int b;

                r = sd_bus_message_read_basic(m, 'b', &b);
                if (r >= 0)
                        *(bool *) field = b;
                return r;
        }
        case 'u':
                return sd_bus_message_read_basic(m, 'u', field);
        case 't':
                return sd_bus_message_read_basic(m, 't', field);
        default:
                return -EINVAL;
        }
}

int64_t map_properties(sd_bus_message *m, const PropertyMap *map, void *userdata) {
        int64_t found = 0;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *name, *contents;
                const PropertyMap *p = NULL;
                unsigned i;

                r = sd_bus_message_read_basic(m, 's', &name);
                if (r < 0)
                        return r;
                for (i = 0; map[i].name; i++)
                        if (strcmp(map[i].name, name) == 0) {
                                p = map + i;
                                break;
                        }
                r = sd_bus_message_peek_type(m, NULL, &contents);
                if (r < 0)
                        return r;
                if (!p || strcmp(contents, p->signature) != 0) {
                        /* Newer daemons may add properties or change one: ignore, don't fail. */
                        r = sd_bus_message_skip(m, "v");
                        if (r < 0)
                                return r;
                } else {
                        void *field = (char *) userdata + p->offset;

                        r = sd_bus_message_enter_container(m, 'v', contents);
                        if (r < 0)
                                return r;
                        r = p->read ? p->read(m, field) : read_basic_field(m, p->signature[0], field);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                        if (i < 63)
                                found |= INT64_C(1) << i;
                }
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        return found;
}
