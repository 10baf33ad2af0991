/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* cache: the chunk cache's statistics (GetCacheStats), clear, verify, repair, pin and unpin. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"
#include "table.h"

/* A verification reads every chunk: minutes for a big cache. */
#define VERIFY_TIMEOUT_USEC (UINT64_C(3600) * 1000000)

/* Figures that are byte counts: shown as "1.5G" for people. */
static bool key_is_bytes(const char *key) {
        static const char *const keys[] = {
                "bytes", "budget", "pinned-bytes", "evicted-bytes", "pin-bytes-total", "pin-bytes-done",
        };
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (strcmp(key, keys[i]) == 0)
                        return true;
        return false;
}

/* One value of an a{sv} entry (positioned at the variant) as text for people. */
static int value_text(sd_bus_message *m, const char *key, char **ret) {
        const char *contents = NULL;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (type == 'v' && contents && strcmp(contents, "t") == 0 && key_is_bytes(key)) {
                char b[FORMAT_BYTES_MAX];
                uint64_t v;

                r = sd_bus_message_read(m, "v", "t", &v);
                if (r < 0)
                        return r;
                return asprintf(ret, "%s (%" PRIu64 ")", format_bytes(b, sizeof b, v), v) < 0 ? -ENOMEM : 0;
        }
        if (type == 'v' && contents && strcmp(contents, "d") == 0) {
                double v;

                r = sd_bus_message_read(m, "v", "d", &v);
                if (r < 0)
                        return r;
                return asprintf(ret, strcmp(key, "disk-percent") == 0 ? "%.1f%%" : "%.2f", v) < 0 ? -ENOMEM : 0;
        }

        /* Anything else as the generic printer writes it. */
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        r = message_value_to_text(m, f);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0) {
                free(buf);
                return r;
        }
        *ret = buf;
        return 0;
}

/* An a{sv} reply as a FIGURE/VALUE table, or as one JSON object. */
static int print_figures(Context *c, sd_bus_message *reply, const char *what) {
        _cleanup_(table_freep) Table *t = NULL;
        int r;

        if (c->json) {
                JsonWriter w;

                json_writer_init(&w, stdout);
                r = message_value_to_json(reply, &w);
                if (r < 0)
                        return report_bad_reply(what, r);
                return json_writer_finish(&w) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
        }

        t = table_new(2, (const char *const[]) { "FIGURE", "VALUE" });
        if (!t)
                return report_bad_reply(what, -ENOMEM);
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                return report_bad_reply(what, r);
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                _cleanup_free_ char *text = NULL;
                const char *key;

                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r < 0)
                        return report_bad_reply(what, r);
                r = value_text(reply, key, &text);
                if (r < 0)
                        return report_bad_reply(what, r);
                if (table_add_cell(t, key, NULL) < 0 || table_add_cell(t, text, NULL) < 0)
                        return report_bad_reply(what, -ENOMEM);
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return report_bad_reply(what, r);
        }
        if (r < 0)
                return report_bad_reply(what, r);
        return table_print(t, stdout, c->legend, c->colors) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
}

static int cache_stats(Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *what = "read the cache statistics";
        int r;

        r = call_manager(c, what, NULL, "GetCacheStats", &reply, NULL);
        if (r != EXIT_SUCCESS)
                return r;
        return print_figures(c, reply, what);
}

/* The figures of VerifyCache's answer that say something is wrong. */
static int count_problems(sd_bus_message *reply, uint64_t *ret) {
        uint64_t problems = 0;
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key, *contents = NULL;
                uint64_t v;

                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(reply, NULL, &contents);
                if (r < 0)
                        return r;
                if (contents && strcmp(contents, "t") == 0 &&
                    (strcmp(key, "bad") == 0 || strcmp(key, "missing") == 0 || strcmp(key, "orphans") == 0)) {
                        r = sd_bus_message_read(reply, "v", "t", &v);
                        if (r < 0)
                                return r;
                        problems += v;
                } else {
                        r = sd_bus_message_skip(reply, "v");
                        if (r < 0)
                                return r;
                }
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return r;
        *ret = problems;
        return sd_bus_message_rewind(reply, true);
}

/* verify: exit 1 when something is wrong (like check); repair: exit 0 once it has fixed things. */
static int cache_verify(Context *c, bool repair) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *what = repair ? "repair the cache" : "verify the cache";
        uint64_t problems = 0;
        int r;

        r = sd_bus_message_new_method_call(c->bus, &call, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH,
                                           MUSICFS_MANAGER_IFACE, "VerifyCache");
        if (r >= 0)
                r = sd_bus_message_append(call, "b", repair);
        if (r < 0)
                return report_bad_reply(what, r);
        r = sd_bus_call(c->bus, call, VERIFY_TIMEOUT_USEC, &error, &reply);
        if (r < 0)
                return report_bus_error(c, what, NULL, &error, r);

        r = count_problems(reply, &problems);
        if (r < 0)
                return report_bad_reply(what, r);
        r = print_figures(c, reply, what);
        if (r != EXIT_SUCCESS)
                return r;
        if (!repair && problems > 0) {
                if (!c->json)
                        fprintf(stderr, "The cache has %" PRIu64 " problem%s; 'musicfsctl cache repair' fixes them.\n",
                                problems, problems == 1 ? "" : "s");
                return EXIT_DAEMON_FAILED;
        }
        return EXIT_SUCCESS;
}

bool cache_subcommand_privileged(int argc, char **argv) {
        return argc > 1 && strcmp(argv[1], "stats") != 0 && strcmp(argv[1], "verify") != 0;
}

int verb_cache(Context *c, int argc, char **argv) {
        const char *sub = argc > 1 ? argv[1] : "stats";
        bool takes_path = strcmp(sub, "pin") == 0 || strcmp(sub, "unpin") == 0;

        if (!takes_path && argc > 2)
                return usage_error("cache %s takes no argument, not '%s'.", sub, argv[2]);
        if (takes_path && argc != 3)
                return usage_error("cache %s wants a PATH.", sub);
        if (c->json && strcmp(sub, "stats") != 0 && strcmp(sub, "verify") != 0 && strcmp(sub, "repair") != 0)
                return usage_error("--json is for cache stats, verify and repair.");

        if (strcmp(sub, "stats") == 0)
                return cache_stats(c);
        if (strcmp(sub, "clear") == 0)
                return verb_clear_cache(c, 1, (char *[]) { (char *) "clear-cache", NULL });
        if (strcmp(sub, "verify") == 0)
                return cache_verify(c, false);
        if (strcmp(sub, "repair") == 0)
                return cache_verify(c, true);
        if (takes_path)
                return verb_pin(c, 2, argv + 1);
        return usage_error("unknown cache command '%s'; expected stats, clear, verify, repair, pin or unpin.", sub);
}
