/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* search QUERY...: the catalog's full-text search. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"
#include "table.h"

/* The words of the command line, joined: "musicfsctl search kind of blue" needs no quotes. */
static char *join_words(int argc, char **argv) {
        size_t n = 1;
        char *s, *p;

        for (int i = 0; i < argc; i++)
                n += strlen(argv[i]) + 1;
        s = p = malloc(n);
        if (!s)
                return NULL;
        for (int i = 0; i < argc; i++) {
                if (i > 0)
                        *p++ = ' ';
                p = stpcpy(p, argv[i]);
        }
        *p = 0;
        return s;
}

int verb_search(Context *c, int argc, char **argv) {
        static const char *const headers[] = { "ARTIST", "ALBUM", "TITLE", "PATH" };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_free_ char *query = join_words(argc - 1, argv + 1);
        const char *what = "search", *path, *artist, *album, *title;
        JsonWriter w;
        double score;
        int r;

        if (!query)
                return report_bad_reply(what, -ENOMEM);
        r = call_manager(c, what, NULL, "Search", &reply, "su", query, c->limit);
        if (r != EXIT_SUCCESS)
                return r;

        r = sd_bus_message_enter_container(reply, 'a', "(ssssd)");
        if (r < 0)
                return report_bad_reply(what, r);
        if (c->json) {
                json_writer_init(&w, stdout);
                json_begin_array(&w);
        } else {
                t = table_new(ELEMENTSOF(headers), headers);
                if (!t)
                        return report_bad_reply(what, -ENOMEM);
        }
        while ((r = sd_bus_message_read(reply, "(ssssd)", &path, &artist, &album, &title, &score)) > 0) {
                if (c->json) {
                        json_begin_object(&w);
                        json_key(&w, "path");
                        json_string(&w, path);
                        json_key(&w, "artist");
                        json_string(&w, artist);
                        json_key(&w, "album");
                        json_string(&w, album);
                        json_key(&w, "title");
                        json_string(&w, title);
                        json_key(&w, "score");
                        json_double(&w, score);
                        json_end_object(&w);
                } else if (table_add_cell(t, artist, NULL) < 0 || table_add_cell(t, album, NULL) < 0 ||
                           table_add_cell(t, title, NULL) < 0 || table_add_cell(t, path, NULL) < 0)
                        return report_bad_reply(what, -ENOMEM);
        }
        if (r < 0)
                return report_bad_reply(what, r);

        if (c->json) {
                json_end_array(&w);
                return json_writer_finish(&w) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
        }
        if (table_rows(t) == 0) {
                if (c->legend)
                        printf("No tracks match.\n");
                return EXIT_SUCCESS;
        }
        return table_print(t, stdout, c->legend, c->colors) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
}
