/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* failpoint list | arm NAME ACTIONS | disarm NAME (DESIGN.md D14). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"
#include "table.h"

static int failpoint_list(Context *c) {
        static const char *const headers[] = { "NAME", "ACTIONS", "FIRED" };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        const char *what = "list failpoints", *name, *actions;
        JsonWriter w;
        uint32_t fired;
        int r;

        r = call_manager(c, what, NULL, "ListFailpoints", &reply, NULL);
        if (r != EXIT_SUCCESS)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(ssu)");
        if (r < 0)
                return report_bad_reply(what, r);

        if (c->json) {
                json_writer_init(&w, stdout);
                json_begin_array(&w);
        } else {
                t = table_new(ELEMENTSOF(headers), headers);
                if (!t)
                        return report_bad_reply(what, -ENOMEM);
                table_align_right(t, 2);
        }
        while ((r = sd_bus_message_read(reply, "(ssu)", &name, &actions, &fired)) > 0) {
                if (c->json) {
                        json_begin_object(&w);
                        json_key(&w, "name");
                        json_string(&w, name);
                        json_key(&w, "actions");
                        json_string(&w, actions);
                        json_key(&w, "fired");
                        json_uint(&w, fired);
                        json_end_object(&w);
                } else if (table_add_cell(t, name, NULL) < 0 ||
                           table_add_cell(t, actions[0] ? actions : "-", actions[0] ? ANSI_YELLOW : NULL) < 0 ||
                           table_add_cellf(t, NULL, "%" PRIu32, fired) < 0)
                        return report_bad_reply(what, -ENOMEM);
        }
        if (r < 0)
                return report_bad_reply(what, r);

        if (c->json) {
                json_end_array(&w);
                return json_writer_finish(&w) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
        }
        return table_print(t, stdout, c->legend, c->colors) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
}

int verb_failpoint(Context *c, int argc, char **argv) {
        _cleanup_free_ char *what = NULL;

        if (argc >= 2 && strcmp(argv[1], "list") == 0) {
                if (argc != 2)
                        return usage_error("failpoint list takes no arguments.");
                return failpoint_list(c);
        }
        if (argc >= 2 && strcmp(argv[1], "arm") == 0) {
                if (argc != 4)
                        return usage_error("failpoint arm wants NAME ACTIONS, e.g. failpoint arm origin-read '3*return(EIO)'.");
                if (asprintf(&what, "arm failpoint %s", argv[2]) < 0)
                        return report_bad_reply("arm the failpoint", -ENOMEM);
                return call_manager(c, what, argv[2], "ArmFailpoint", NULL, "ss", argv[2], argv[3]);
        }
        if (argc >= 2 && strcmp(argv[1], "disarm") == 0) {
                if (argc != 3)
                        return usage_error("failpoint disarm wants NAME.");
                if (asprintf(&what, "disarm failpoint %s", argv[2]) < 0)
                        return report_bad_reply("disarm the failpoint", -ENOMEM);
                return call_manager(c, what, argv[2], "DisarmFailpoint", NULL, "s", argv[2]);
        }
        return usage_error("failpoint wants list, arm NAME ACTIONS or disarm NAME.");
}
