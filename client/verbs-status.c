/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* status: the Manager's properties (cache statistics: verbs-cache.c). */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bus-api.h"
#include "ctl.h"
#include "macro.h"
#include "output.h"

typedef struct ScanProgress {
        char *origin;           /* "" when idle */
        uint64_t processed, total;
} ScanProgress;

typedef struct NameList {
        char **names;
        size_t n;
} NameList;

typedef struct ManagerInfo {
        char *version, *state, *mount_point;
        bool passthrough;
        uint64_t track_count, cache_bytes, cache_budget;
        ScanProgress scan;
        NameList origins;       /* in priority order */
} ManagerInfo;

static void manager_info_done(ManagerInfo *i) {
        free(i->version);
        free(i->state);
        free(i->mount_point);
        free(i->scan.origin);
        for (size_t k = 0; k < i->origins.n; k++)
                free(i->origins.names[k]);
        free(i->origins.names);
}

static int read_scan_progress(sd_bus_message *m, void *field) {
        ScanProgress *p = field;
        const char *origin;
        int r;

        r = sd_bus_message_read(m, "(stt)", &origin, &p->processed, &p->total);
        if (r < 0)
                return r;
        free(p->origin);
        p->origin = strdup(origin);
        return p->origin ? 0 : -ENOMEM;
}

static int read_origin_paths(sd_bus_message *m, void *field) {
        NameList *l = field;
        const char *path;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "o");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read_basic(m, 'o', &path)) > 0) {
                char *name = origin_name_from_path(path), **a;

                if (!name)
                        name = strdup(path);    /* not under our prefix: show it as it is */
                if (!name)
                        return -ENOMEM;
                a = reallocarray(l->names, l->n + 1, sizeof(char *));
                if (!a) {
                        free(name);
                        return -ENOMEM;
                }
                l->names = a;
                l->names[l->n++] = name;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

enum {
        P_VERSION, P_STATE, P_MOUNT_POINT, P_TRACK_COUNT, P_PASSTHROUGH, P_CACHE_BYTES, P_CACHE_BUDGET,
        P_SCAN_PROGRESS, P_ORIGINS,
};

static const PropertyMap manager_map[] = {
        [P_VERSION]       = { "Version",      "s",     offsetof(ManagerInfo, version) },
        [P_STATE]         = { "State",        "s",     offsetof(ManagerInfo, state) },
        [P_MOUNT_POINT]   = { "MountPoint",   "s",     offsetof(ManagerInfo, mount_point) },
        [P_TRACK_COUNT]   = { "TrackCount",   "t",     offsetof(ManagerInfo, track_count) },
        [P_PASSTHROUGH]   = { "Passthrough",  "b",     offsetof(ManagerInfo, passthrough) },
        [P_CACHE_BYTES]   = { "CacheBytes",   "t",     offsetof(ManagerInfo, cache_bytes) },
        [P_CACHE_BUDGET]  = { "CacheBudget",  "t",     offsetof(ManagerInfo, cache_budget) },
        [P_SCAN_PROGRESS] = { "ScanProgress", "(stt)", offsetof(ManagerInfo, scan), read_scan_progress },
        [P_ORIGINS]       = { "Origins",      "ao",    offsetof(ManagerInfo, origins), read_origin_paths },
        {}
};

#define HAS(found, p) (((found) >> (p)) & 1)

/* "2 (1 healthy, 1 unhealthy)" from GetOriginHealth; NULL when the daemon cannot tell (older
 * daemons) — status still shows the rest. */
static char *origin_health_summary(Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        unsigned healthy = 0, degraded = 0, unhealthy = 0, other = 0;
        const char *name, *state, *last_error;
        uint64_t latency, last_check;
        uint32_t failures;
        char *s = NULL;
        int r;

        r = sd_bus_call_method(c->bus, MUSICFS_BUS_NAME, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE,
                               "GetOriginHealth", NULL, &reply, NULL);
        if (r < 0)
                return NULL;
        r = sd_bus_message_enter_container(reply, 'a', "(ssutts)");
        if (r < 0)
                return NULL;
        while ((r = sd_bus_message_read(reply, "(ssutts)", &name, &state, &failures, &latency, &last_check,
                                        &last_error)) > 0) {
                if (strcmp(state, "healthy") == 0)
                        healthy++;
                else if (strcmp(state, "degraded") == 0)
                        degraded++;
                else if (strcmp(state, "unhealthy") == 0)
                        unhealthy++;
                else
                        other++;
        }
        if (r < 0)
                return NULL;
        unsigned total = healthy + degraded + unhealthy + other;
        char parts[128];
        size_t n = 0;

        n += (size_t) snprintf(parts + n, sizeof parts - n, "%u healthy", healthy);
        if (degraded)
                n += (size_t) snprintf(parts + n, sizeof parts - n, ", %u degraded", degraded);
        if (unhealthy)
                n += (size_t) snprintf(parts + n, sizeof parts - n, ", %u unhealthy", unhealthy);
        if (other)
                (void) snprintf(parts + n, sizeof parts - n, ", %u in another state", other);
        if ((total == 0 ? asprintf(&s, "0") : asprintf(&s, "%u (%s)", total, parts)) < 0)
                return NULL;
        return s;
}

static void print_field(const Context *c, const char *label, const char *value, const char *color) {
        _cleanup_free_ char *escaped = human_escape(value);

        printf("%12s: ", label);
        if (c->colors && color)
                printf("%s%s%s\n", color, escaped ?: "", ANSI_NORMAL);
        else
                printf("%s\n", escaped ?: "");
}

static int status_json(const ManagerInfo *i, int64_t found) {
        JsonWriter w;

        json_writer_init(&w, stdout);
        json_begin_object(&w);
        json_key(&w, "version");
        json_string(&w, HAS(found, P_VERSION) ? i->version : NULL);
        json_key(&w, "state");
        json_string(&w, HAS(found, P_STATE) ? i->state : NULL);
        json_key(&w, "mount_point");
        json_string(&w, HAS(found, P_MOUNT_POINT) ? i->mount_point : NULL);
        json_key(&w, "track_count");
        if (HAS(found, P_TRACK_COUNT))
                json_uint(&w, i->track_count);
        else
                json_null(&w);
        json_key(&w, "passthrough");
        if (HAS(found, P_PASSTHROUGH))
                json_bool(&w, i->passthrough);
        else
                json_null(&w);
        json_key(&w, "cache_bytes");
        if (HAS(found, P_CACHE_BYTES))
                json_uint(&w, i->cache_bytes);
        else
                json_null(&w);
        json_key(&w, "cache_budget");
        if (HAS(found, P_CACHE_BUDGET))
                json_uint(&w, i->cache_budget);
        else
                json_null(&w);
        json_key(&w, "scan");
        if (HAS(found, P_SCAN_PROGRESS)) {
                json_begin_object(&w);
                json_key(&w, "origin");
                json_string(&w, i->scan.origin);
                json_key(&w, "processed");
                json_uint(&w, i->scan.processed);
                json_key(&w, "total");
                json_uint(&w, i->scan.total);
                json_end_object(&w);
        } else
                json_null(&w);
        json_key(&w, "origins");
        if (HAS(found, P_ORIGINS)) {
                json_begin_array(&w);
                for (size_t k = 0; k < i->origins.n; k++)
                        json_string(&w, i->origins.names[k]);
                json_end_array(&w);
        } else
                json_null(&w);
        json_end_object(&w);
        return json_writer_finish(&w) < 0 ? EXIT_DAEMON_FAILED : EXIT_SUCCESS;
}

int verb_status(Context *c, int argc, char **argv) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(manager_info_done) ManagerInfo i = {};
        const char *what = "read the daemon's status";
        int64_t found;
        int r;

        r = get_all_properties(c, what, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, &reply);
        if (r != EXIT_SUCCESS)
                return r;
        found = map_properties(reply, manager_map, &i);
        if (found < 0)
                return report_bad_reply(what, (int) found);

        if (c->json)
                return status_json(&i, found);

        if (HAS(found, P_VERSION))
                print_field(c, "Version", i.version, NULL);
        if (HAS(found, P_STATE))
                print_field(c, "State", i.state, state_color(i.state));
        if (HAS(found, P_MOUNT_POINT))
                print_field(c, "Mount point", i.mount_point[0] ? i.mount_point : "(not mounted)", NULL);
        if (HAS(found, P_TRACK_COUNT))
                printf("%12s: %" PRIu64 "\n", "Tracks", i.track_count);
        if (HAS(found, P_PASSTHROUGH))
                printf("%12s: %s\n", "Passthrough", i.passthrough ? "on" : "off");
        if (HAS(found, P_CACHE_BYTES) && HAS(found, P_CACHE_BUDGET)) {
                char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX];

                if (i.cache_budget == 0 && i.cache_bytes == 0)
                        printf("%12s: %s\n", "Cache", "none");
                else
                        printf("%12s: %s of %s\n", "Cache", format_bytes(a, sizeof a, i.cache_bytes),
                               format_bytes(b, sizeof b, i.cache_budget));
        }
        if (HAS(found, P_SCAN_PROGRESS)) {
                _cleanup_free_ char *s = NULL;

                if (!i.scan.origin[0])
                        r = asprintf(&s, "idle");
                else if (i.scan.total > 0)
                        r = asprintf(&s, "scanning %s, %" PRIu64 " of %" PRIu64 " files", i.scan.origin,
                                     i.scan.processed, i.scan.total);
                else
                        r = asprintf(&s, "scanning %s, %" PRIu64 " files", i.scan.origin, i.scan.processed);
                if (r < 0)
                        return report_bad_reply(what, -ENOMEM);
                print_field(c, "Scan", s, NULL);
        }
        if (HAS(found, P_ORIGINS)) {
                _cleanup_free_ char *summary = origin_health_summary(c);
                char n[32];

                snprintf(n, sizeof n, "%zu", i.origins.n);
                print_field(c, "Origins", summary ?: n, NULL);
        }
        return EXIT_SUCCESS;
}
