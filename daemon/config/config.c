/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Configuration (DESIGN.md D15): defaults, the INI file and its drop-ins, --origin, validation.
 *
 * libinih does the INI splitting. It is fed through our own line reader, which counts lines (so that
 * every error is "FILE:LINE: reason"), strips indentation (inih would otherwise read an indented
 * "key = value" as the continuation of the previous value), refuses lines inih would silently split,
 * and checks section headers itself (inih neither reports a section without keys nor keeps names
 * longer than 49 characters). A file is applied to a scratch copy of the Config, so a bad file
 * changes nothing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "macro.h"

#define ORIGIN_NAME_MAX 64
#define FUSE_THREADS_MIN 1
#define FUSE_THREADS_MAX 64
#define READ_AHEAD_KB_MAX 16384u
#define SCAN_BATCH_MIN 1
#define SCAN_BATCH_MAX 100000
#define TIMEOUT_MAX (365u * 24 * 3600)
#define PRIORITY_MAX 1000000
#define CACHE_BUDGET_MIN (UINT64_C(1) << 20)
#define CACHE_BUDGET_MAX (UINT64_C(1) << 50)
#define CACHE_READAHEAD_MAX 16
#define CACHE_MAINTENANCE_MIN 1
#define CACHE_MAINTENANCE_MAX 3600
#define POLL_INTERVAL_MIN 1
#define POLL_INTERVAL_MAX (7u * 24 * 3600)
#define HEALTH_INTERVAL_MIN 1
#define HEALTH_INTERVAL_MAX 3600
#define HEALTH_TIMEOUT_MIN 1
#define HEALTH_TIMEOUT_MAX 300

static const char main_keys[] =
        "mountpoint, cache_dir, template, fuse_threads, read_ahead_kb, log_level, bus, scan_batch, entry_timeout, attr_timeout, "
        "poll_interval, health_interval, health_timeout";
static const char origin_keys[] = "kind, path, priority, watch, poll_interval";
static const char cache_keys[] = "budget, readahead, passthrough, maintenance_interval";

_printf_(2, 3)
static int set_error(char **ret_error, const char *format, ...) {
        va_list ap;
        char *s = NULL;

        if (!ret_error)
                return 0;
        va_start(ap, format);
        if (vasprintf(&s, format, ap) < 0)
                s = NULL;
        va_end(ap);
        free(*ret_error);
        *ret_error = s;
        return 0;
}

static int strdup_to(char **dst, const char *src) {
        char *s = NULL;

        if (src) {
                s = strdup(src);
                if (!s)
                        return -ENOMEM;
        }
        free(*dst);
        *dst = s;
        return 0;
}

void config_init_defaults(Config *c) {
        /* An allocation failure leaves the string NULL; config_validate() then refuses it. */
        *c = (Config) {
                .cache_dir = strdup(CONFIG_DEFAULT_CACHE_DIR),
                .template = strdup(CONFIG_DEFAULT_TEMPLATE),
                .fuse_threads = 8,
                .read_ahead_kb = CONFIG_DEFAULT_READ_AHEAD_KB,
                .scan_batch = 256,
                .log_level = LOG_INFO,
                .entry_timeout = 86400,
                .attr_timeout = 86400,
                .cache_budget = CONFIG_DEFAULT_CACHE_BUDGET,
                .cache_readahead = CONFIG_DEFAULT_CACHE_READAHEAD,
                .cache_maintenance_sec = CONFIG_DEFAULT_CACHE_MAINTENANCE_SEC,
                .poll_interval = CONFIG_DEFAULT_POLL_INTERVAL_SEC,
                .health_interval = CONFIG_DEFAULT_HEALTH_INTERVAL_SEC,
                .health_timeout = CONFIG_DEFAULT_HEALTH_TIMEOUT_SEC,
        };
}

static void origin_config_done(OriginConfig *o) {
        free(o->name);
        free(o->kind);
        free(o->path);
        free(o->watch);
        config_s3_done(&o->s3);
        config_sftp_done(&o->sftp);
        *o = (OriginConfig) {};
}

void config_free(Config *c) {
        if (!c)
                return;
        free(c->mountpoint);
        free(c->cache_dir);
        free(c->template);
        for (size_t i = 0; i < c->n_origins; i++)
                origin_config_done(&c->origins[i]);
        free(c->origins);
        free(c->config_path);
        *c = (Config) {};
}

static int config_copy(Config *dst, const Config *src) {
        Config c = {
                .user_bus = src->user_bus,
                .fuse_threads = src->fuse_threads,
                .read_ahead_kb = src->read_ahead_kb,
                .scan_batch = src->scan_batch,
                .log_level = src->log_level,
                .entry_timeout = src->entry_timeout,
                .attr_timeout = src->attr_timeout,
                .cache_budget = src->cache_budget,
                .cache_readahead = src->cache_readahead,
                .cache_passthrough = src->cache_passthrough,
                .cache_maintenance_sec = src->cache_maintenance_sec,
                .poll_interval = src->poll_interval,
                .health_interval = src->health_interval,
                .health_timeout = src->health_timeout,
        };

        if (strdup_to(&c.mountpoint, src->mountpoint) < 0 || strdup_to(&c.cache_dir, src->cache_dir) < 0 ||
            strdup_to(&c.template, src->template) < 0 || strdup_to(&c.config_path, src->config_path) < 0)
                goto oom;
        if (src->n_origins > 0) {
                c.origins = calloc(src->n_origins, sizeof *c.origins);
                if (!c.origins)
                        goto oom;
                for (size_t i = 0; i < src->n_origins; i++) {
                        OriginConfig *o = &c.origins[i];
                        c.n_origins++;
                        o->priority = src->origins[i].priority;
                        o->poll_interval = src->origins[i].poll_interval;
                        if (strdup_to(&o->watch, src->origins[i].watch) < 0 ||
                            strdup_to(&o->name, src->origins[i].name) < 0 ||
                            strdup_to(&o->kind, src->origins[i].kind) < 0 ||
                            strdup_to(&o->path, src->origins[i].path) < 0 ||
                            config_s3_copy(&o->s3, &src->origins[i].s3) < 0 ||
                            config_sftp_copy(&o->sftp, &src->origins[i].sftp) < 0)
                                goto oom;
                }
        }
        *dst = c;
        return 0;

oom:
        config_free(&c);
        return -ENOMEM;
}

static bool origin_name_valid(const char *name) {
        size_t n = strlen(name);
        return n > 0 && n <= ORIGIN_NAME_MAX &&
               strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static OriginConfig *config_find_origin(Config *c, const char *name) {
        for (size_t i = 0; i < c->n_origins; i++)
                if (streq_ptr(c->origins[i].name, name))
                        return &c->origins[i];
        return NULL;
}

/* Appends a local origin with the default priority; takes ownership of name. */
static int config_append_origin(Config *c, char *name, OriginConfig **ret) {
        OriginConfig *grown = reallocarray(c->origins, c->n_origins + 1, sizeof *c->origins);
        if (!grown) {
                free(name);
                return -ENOMEM;
        }
        c->origins = grown;

        char *kind = strdup("local");
        if (!kind) {
                free(name);
                return -ENOMEM;
        }
        OriginConfig *o = &c->origins[c->n_origins];
        *o = (OriginConfig) {
                .name = name,
                .kind = kind,
                .priority = (unsigned) (10 * (c->n_origins + 1)),
                .s3 = { .path_style = -1 },
                .sftp = { .agent = -1 },
        };
        c->n_origins++;
        if (ret)
                *ret = o;
        return 0;
}

/* ---- parsing one file ---------------------------------------------------------------------- */

typedef enum SectionKind {
        SECTION_NONE,
        SECTION_MAIN,
        SECTION_ORIGIN,
        SECTION_CACHE,
} SectionKind;

typedef struct SeenOrigin {
        size_t index;
        unsigned line;
} SeenOrigin;

typedef struct LoadContext {
        Config *config;
        const char *file;
        FILE *f;
        char *buf;
        size_t buf_size;
        unsigned line;
        SectionKind section;
        size_t origin;                  /* index into config->origins in SECTION_ORIGIN */
        SeenOrigin *seen;               /* origin sections of this file, for duplicates */
        size_t n_seen;
        unsigned error_line;            /* first error we found, 0 when none */
        char *error;
        int error_code;
} LoadContext;

_printf_(2, 3)
static int context_fail(LoadContext *ctx, const char *format, ...) {
        va_list ap;

        if (ctx->error_line != 0 || ctx->error_code != 0)
                return -EINVAL;
        ctx->error_line = ctx->line;
        ctx->error_code = -EINVAL;
        va_start(ap, format);
        if (vasprintf(&ctx->error, format, ap) < 0) {
                ctx->error = NULL;
                ctx->error_code = -ENOMEM;
        }
        va_end(ap);
        return -EINVAL;
}

static int context_oom(LoadContext *ctx) {
        if (ctx->error_code == 0) {
                ctx->error_line = ctx->line;
                ctx->error_code = -ENOMEM;
        }
        return -ENOMEM;
}

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static int enter_origin_section(LoadContext *ctx, const char *name) {
        if (!*name)
                return context_fail(ctx, "origin section needs a name, as in [origin \"music\"]");
        if (strlen(name) > ORIGIN_NAME_MAX)
                return context_fail(ctx, "origin name '%.*s...' is longer than %d characters",
                                    ORIGIN_NAME_MAX, name, ORIGIN_NAME_MAX);
        if (!origin_name_valid(name))
                return context_fail(ctx, "origin name '%s' may only contain letters, digits, '_' and '-'", name);

        for (size_t i = 0; i < ctx->n_seen; i++)
                if (streq_ptr(ctx->config->origins[ctx->seen[i].index].name, name))
                        return context_fail(ctx, "duplicate origin '%s' (already defined at line %u)",
                                            name, ctx->seen[i].line);

        /* An origin from an earlier file (or --origin) is amended by this one. */
        OriginConfig *o = config_find_origin(ctx->config, name);
        if (!o) {
                char *copy = strdup(name);
                if (!copy || config_append_origin(ctx->config, copy, &o) < 0)
                        return context_oom(ctx);
        }

        SeenOrigin *grown = reallocarray(ctx->seen, ctx->n_seen + 1, sizeof *ctx->seen);
        if (!grown)
                return context_oom(ctx);
        ctx->seen = grown;
        ctx->origin = (size_t) (o - ctx->config->origins);
        ctx->seen[ctx->n_seen++] = (SeenOrigin) { .index = ctx->origin, .line = ctx->line };
        ctx->section = SECTION_ORIGIN;
        return 0;
}

/* s points at '['. Finds the end the way inih does: ']' or an inline comment (';' after a blank). */
static int parse_section_header(LoadContext *ctx, char *s) {
        char *end = s + 1;
        bool was_blank = false;

        while (*end && *end != ']' && !(was_blank && *end == ';')) {
                was_blank = is_blank(*end);
                end++;
        }
        if (*end != ']')
                return context_fail(ctx, "section header has no closing ']'");

        const char *rest = end + 1;
        rest += strspn(rest, " \t\r\n");
        if (*rest && *rest != ';' && *rest != '#')
                return context_fail(ctx, "unexpected text '%s' after the section header", rest);

        /* Trimmed contents of the brackets. */
        char *name = s + 1;
        *end = '\0';
        while (is_blank(*name))
                name++;
        for (char *e = end; e > name && is_blank(e[-1]);)
                *--e = '\0';

        if (strcmp(name, "musicfsd") == 0) {
                ctx->section = SECTION_MAIN;
                return 0;
        }
        if (strcmp(name, "cache") == 0) {
                ctx->section = SECTION_CACHE;
                return 0;
        }
        if (strncmp(name, "origin", 6) == 0) {
                char *p = name + 6;
                if (*p == '.')
                        return enter_origin_section(ctx, p + 1);
                if (is_blank(*p) || *p == '"') {
                        p += strspn(p, " \t");
                        size_t n = strlen(p);
                        if (n >= 2 && p[0] == '"' && p[n - 1] == '"') {
                                p[n - 1] = '\0';
                                return enter_origin_section(ctx, p + 1);
                        }
                        return context_fail(ctx, "origin section name must be quoted, as in [origin \"music\"], not [%s]",
                                            name);
                }
                if (*p == '\0')
                        return context_fail(ctx, "origin section needs a name, as in [origin \"music\"]");
        }
        return context_fail(ctx, "unknown section [%s]; expected [musicfsd], [cache] or [origin \"NAME\"]", name);
}

/* fgets-like reader for ini_parse_stream(): one whole line at a time, or NULL to stop. */
static char *config_reader(char *str, int num, void *stream) {
        LoadContext *ctx = stream;

        if (ctx->error_line != 0 || ctx->error_code != 0)
                return NULL;

        errno = 0;
        ssize_t n = getline(&ctx->buf, &ctx->buf_size, ctx->f);
        if (n < 0) {
                if (ferror(ctx->f)) {
                        ctx->error_line = ctx->line + 1;
                        ctx->error_code = errno > 0 ? -errno : -EIO;
                }
                return NULL;
        }
        ctx->line++;

        char *s = ctx->buf;
        if ((size_t) n != strlen(s)) {
                context_fail(ctx, "line contains a NUL byte");
                return NULL;
        }
        if (ctx->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
                s += 3;
        /* Indentation would make inih read the line as a continuation of the previous value. */
        s += strspn(s, " \t");

        size_t len = strlen(s), content = len;
        while (content > 0 && (s[content - 1] == '\n' || s[content - 1] == '\r'))
                content--;
        if (num < 3 || content > (size_t) num - 3 || len >= (size_t) num) {
                context_fail(ctx, "line is longer than %d characters", num - 3);
                return NULL;
        }

        if (*s == '[') {
                _cleanup_free_ char *header = strdup(s);
                if (!header) {
                        context_oom(ctx);
                        return NULL;
                }
                if (parse_section_header(ctx, header) < 0)
                        return NULL;
        }

        memcpy(str, s, len + 1);
        return str;
}

static int parse_unsigned(LoadContext *ctx, const char *key, const char *value, unsigned min, unsigned max,
                          unsigned *ret) {
        unsigned long long v = 0;
        const char *p = value;

        if (*p < '0' || *p > '9')
                return context_fail(ctx, "%s = '%s' is not a number; expected an integer from %u to %u",
                                    key, value, min, max);
        for (; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (unsigned) (*p - '0');
                if (v > max)
                        break;
        }
        if (*p && (*p < '0' || *p > '9'))
                return context_fail(ctx, "%s = '%s' is not a number; expected an integer from %u to %u",
                                    key, value, min, max);
        if (v > max || v < min)
                return context_fail(ctx, "%s = %s is out of range; expected an integer from %u to %u",
                                    key, value, min, max);
        *ret = (unsigned) v;
        return 0;
}

static int set_path(LoadContext *ctx, const char *key, const char *value, char **dst) {
        if (value[0] != '/')
                return context_fail(ctx, "%s = '%s' is not an absolute path; expected a path starting with '/'",
                                    key, value);
        if (strdup_to(dst, value) < 0)
                return context_oom(ctx);
        return 0;
}

static int handle_main_key(LoadContext *ctx, const char *key, const char *value) {
        Config *c = ctx->config;

        if (strcmp(key, "mountpoint") == 0)
                return set_path(ctx, key, value, &c->mountpoint);
        if (strcmp(key, "cache_dir") == 0)
                return set_path(ctx, key, value, &c->cache_dir);
        if (strcmp(key, "template") == 0)
                return strdup_to(&c->template, value) < 0 ? context_oom(ctx) : 0;
        if (strcmp(key, "fuse_threads") == 0)
                return parse_unsigned(ctx, key, value, FUSE_THREADS_MIN, FUSE_THREADS_MAX, &c->fuse_threads);
        if (strcmp(key, "read_ahead_kb") == 0)
                return parse_unsigned(ctx, key, value, 0, READ_AHEAD_KB_MAX, &c->read_ahead_kb);
        if (strcmp(key, "scan_batch") == 0)
                return parse_unsigned(ctx, key, value, SCAN_BATCH_MIN, SCAN_BATCH_MAX, &c->scan_batch);
        if (strcmp(key, "entry_timeout") == 0)
                return parse_unsigned(ctx, key, value, 0, TIMEOUT_MAX, &c->entry_timeout);
        if (strcmp(key, "attr_timeout") == 0)
                return parse_unsigned(ctx, key, value, 0, TIMEOUT_MAX, &c->attr_timeout);
        if (strcmp(key, "poll_interval") == 0)
                return parse_unsigned(ctx, key, value, POLL_INTERVAL_MIN, POLL_INTERVAL_MAX, &c->poll_interval);
        if (strcmp(key, "health_interval") == 0)
                return parse_unsigned(ctx, key, value, HEALTH_INTERVAL_MIN, HEALTH_INTERVAL_MAX, &c->health_interval);
        if (strcmp(key, "health_timeout") == 0)
                return parse_unsigned(ctx, key, value, HEALTH_TIMEOUT_MIN, HEALTH_TIMEOUT_MAX, &c->health_timeout);
        if (strcmp(key, "log_level") == 0) {
                int level = log_level_from_string(value);
                if (level < 0)
                        return context_fail(ctx, "log_level = '%s' is not a log level; expected one of "
                                            "emerg, alert, crit, err, warning, notice, info, debug", value);
                c->log_level = level;
                return 0;
        }
        if (strcmp(key, "bus") == 0) {
                if (strcmp(value, "system") == 0)
                        c->user_bus = false;
                else if (strcmp(value, "user") == 0)
                        c->user_bus = true;
                else
                        return context_fail(ctx, "bus = '%s' is not a bus; expected 'system' or 'user'", value);
                return 0;
        }
        return context_fail(ctx, "unknown key '%s' in [musicfsd]; expected one of %s", key, main_keys);
}

/* "10G", "512M", "1048576": bytes, with an optional K/M/G/T suffix (powers of 1024, "KiB"/"KB"
 * spellings too). */
static int parse_size(LoadContext *ctx, const char *key, const char *value, uint64_t min, uint64_t max,
                      uint64_t *ret) {
        static const struct { const char *suffix; unsigned shift; } units[] = {
                { "", 0 }, { "B", 0 },
                { "K", 10 }, { "KB", 10 }, { "KiB", 10 },
                { "M", 20 }, { "MB", 20 }, { "MiB", 20 },
                { "G", 30 }, { "GB", 30 }, { "GiB", 30 },
                { "T", 40 }, { "TB", 40 }, { "TiB", 40 },
        };
        uint64_t v = 0;
        const char *p = value;

        if (*p < '0' || *p > '9')
                return context_fail(ctx, "%s = '%s' is not a size; expected bytes or a number with K, M, G or T, "
                                    "as in 10G", key, value);
        for (; *p >= '0' && *p <= '9'; p++) {
                if (v > (UINT64_MAX - 9) / 10)
                        return context_fail(ctx, "%s = %s is out of range; expected %" PRIu64 " MiB to %" PRIu64 " TiB",
                                            key, value, min >> 20, max >> 40);
                v = v * 10 + (uint64_t) (*p - '0');
        }
        p += strspn(p, " \t");
        for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                if (strcasecmp(p, units[i].suffix) != 0)
                        continue;
                if (units[i].shift > 0 && v > (max >> units[i].shift))
                        return context_fail(ctx, "%s = %s is out of range; expected %" PRIu64 " MiB to %" PRIu64 " TiB",
                                            key, value, min >> 20, max >> 40);
                v <<= units[i].shift;
                if (v < min || v > max)
                        return context_fail(ctx, "%s = %s is out of range; expected %" PRIu64 " MiB to %" PRIu64 " TiB",
                                            key, value, min >> 20, max >> 40);
                *ret = v;
                return 0;
        }
        return context_fail(ctx, "%s = '%s' has an unknown unit; expected bytes or a number with K, M, G or T, "
                            "as in 10G", key, value);
}

static int parse_bool(LoadContext *ctx, const char *key, const char *value, bool *ret) {
        static const char *const yes[] = { "yes", "true", "on", "1" };
        static const char *const no[] = { "no", "false", "off", "0" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(value, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(value, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return context_fail(ctx, "%s = '%s' is not a boolean; expected yes or no", key, value);
}

static int handle_cache_key(LoadContext *ctx, const char *key, const char *value) {
        Config *c = ctx->config;

        if (strcmp(key, "budget") == 0)
                return parse_size(ctx, key, value, CACHE_BUDGET_MIN, CACHE_BUDGET_MAX, &c->cache_budget);
        if (strcmp(key, "readahead") == 0)
                return parse_unsigned(ctx, key, value, 0, CACHE_READAHEAD_MAX, &c->cache_readahead);
        if (strcmp(key, "passthrough") == 0)
                return parse_bool(ctx, key, value, &c->cache_passthrough);
        if (strcmp(key, "maintenance_interval") == 0)
                return parse_unsigned(ctx, key, value, CACHE_MAINTENANCE_MIN, CACHE_MAINTENANCE_MAX,
                                      &c->cache_maintenance_sec);
        if (strcmp(key, "cache_dir") == 0)
                return context_fail(ctx, "cache_dir belongs in [musicfsd], not [cache]");
        return context_fail(ctx, "unknown key '%s' in [cache]; expected one of %s", key, cache_keys);
}

static int handle_origin_key(LoadContext *ctx, const char *key, const char *value) {
        OriginConfig *o = &ctx->config->origins[ctx->origin];

        if (strcmp(key, "kind") == 0) {
                if (strcmp(value, "local") != 0 && strcmp(value, "s3") != 0 && strcmp(value, "sftp") != 0)
                        return context_fail(ctx, "kind = '%s' is not an origin kind; expected 'local', 's3' or 'sftp'",
                                            value);
                return strdup_to(&o->kind, value) < 0 ? context_oom(ctx) : 0;
        }
        if (strcmp(key, "path") == 0)
                return set_path(ctx, key, value, &o->path);
        if (strcmp(key, "priority") == 0)
                return parse_unsigned(ctx, key, value, 0, PRIORITY_MAX, &o->priority);
        if (strcmp(key, "watch") == 0) {
                if (strcmp(value, "inotify") != 0 && strcmp(value, "poll") != 0 && strcmp(value, "off") != 0)
                        return context_fail(ctx, "watch = '%s' is not a watch mode; expected inotify, poll or off", value);
                return strdup_to(&o->watch, value) < 0 ? context_oom(ctx) : 0;
        }
        if (strcmp(key, "poll_interval") == 0)
                return parse_unsigned(ctx, key, value, POLL_INTERVAL_MIN, POLL_INTERVAL_MAX, &o->poll_interval);
        _cleanup_free_ char *reason = NULL;
        int r = config_sftp_key(&o->sftp, key, value, &reason);
        if (r == -ENOMEM)
                return context_oom(ctx);
        if (r < 0 && r != -ENOENT)
                return context_fail(ctx, "%s", strna(reason));
        if (r == 0)
                return 0;
        r = config_s3_key(&o->s3, ctx->file, key, value, &reason);
        if (r == -ENOMEM)
                return context_oom(ctx);
        if (r < 0 && r != -ENOENT)
                return context_fail(ctx, "%s", strna(reason));
        if (r == 0)
                return 0;
        return context_fail(ctx, "unknown key '%s' in [origin \"%s\"]; expected one of %s (kind = s3: %s; kind = sftp: %s)",
                            key, o->name, origin_keys, CONFIG_S3_KEYS, CONFIG_SFTP_KEYS);
}

static int config_handler(void *user, const char *section, const char *key, const char *raw_value) {
        LoadContext *ctx = user;
        _cleanup_free_ char *unquoted = NULL;
        const char *value = raw_value;
        int r;

        if (ctx->error_line != 0 || ctx->error_code != 0)
                return 0;
        /* A value in double quotes keeps the blanks at its ends. */
        size_t n = value ? strlen(value) : 0;
        if (n >= 2 && value[0] == '"' && value[n - 1] == '"') {
                unquoted = strndup(value + 1, n - 2);
                if (!unquoted) {
                        context_oom(ctx);
                        return 0;
                }
                value = unquoted;
        }
        if (!key || !*key)
                r = context_fail(ctx, "missing key name before '='");
        else if (ctx->section == SECTION_NONE)
                r = context_fail(ctx, "key '%s' is outside any section; put it under [musicfsd]", key);
        else if (!value || !*value)
                r = context_fail(ctx, "%s needs a value", key);
        else if (ctx->section == SECTION_MAIN)
                r = handle_main_key(ctx, key, value);
        else if (ctx->section == SECTION_CACHE)
                r = handle_cache_key(ctx, key, value);
        else
                r = handle_origin_key(ctx, key, value);
        return r >= 0;
}

/* Applies one file to c. 0 when read, 1 when missing and missing_ok, <0 with *ret_error on failure. */
static int config_parse_one(Config *c, const char *path, bool missing_ok, char **ret_error) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        /* O_NONBLOCK: a FIFO must not hang startup; it is refused below. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                int r = negative_errno();
                if (r == -ENOENT && missing_ok)
                        return 1;
                errno = -r;
                set_error(ret_error, "%s: cannot open the configuration file: %m", path);
                return r;
        }
        if (fstat(fd, &st) < 0) {
                int r = negative_errno();
                errno = -r;
                set_error(ret_error, "%s: cannot stat the configuration file: %m", path);
                return r;
        }
        if (S_ISDIR(st.st_mode)) {
                set_error(ret_error, "%s: is a directory, not a configuration file", path);
                return -EISDIR;
        }
        if (!S_ISREG(st.st_mode)) {
                set_error(ret_error, "%s: is not a regular file", path);
                return -EINVAL;
        }

        _cleanup_fclose_ FILE *f = fdopen(fd, "re");
        if (!f)
                return -ENOMEM;
        fd = -EBADF;

        LoadContext ctx = {
                .config = c,
                .file = path,
                .f = f,
        };
        int line = ini_parse_stream(config_reader, &ctx, config_handler, &ctx);
        int r = 0;

        if (ctx.error_code == -ENOMEM || line == -2)
                r = -ENOMEM;
        else if (line > 0 && (ctx.error_line == 0 || (unsigned) line < ctx.error_line)) {
                set_error(ret_error, "%s:%d: expected 'key = value', a [section] header or a comment", path, line);
                r = -EINVAL;
        } else if (ctx.error_code == -EINVAL) {
                set_error(ret_error, "%s:%u: %s", path, ctx.error_line, ctx.error);
                r = -EINVAL;
        } else if (ctx.error_code < 0) {
                errno = -ctx.error_code;
                set_error(ret_error, "%s:%u: read error: %m", path, ctx.error_line);
                r = ctx.error_code;
        } else if (line != 0)
                r = -EIO;       /* cannot happen: inih reports nothing else for a stream */

        free(ctx.buf);
        free(ctx.seen);
        free(ctx.error);
        return r;
}

static int compare_strings(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static void strv_free(char **v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

/* The *.conf files of dir in lexical (byte) order; none when dir does not exist. */
static int list_dropins(const char *dir, char ***ret, size_t *ret_n, char **ret_error) {
        DIR *d = opendir(dir);
        char **names = NULL;
        size_t n = 0;
        int r = 0;

        if (!d) {
                r = negative_errno();
                if (r == -ENOENT) {
                        *ret = NULL;
                        *ret_n = 0;
                        return 0;
                }
                errno = -r;
                set_error(ret_error, "%s: cannot read the drop-in directory: %m", dir);
                return r;
        }

        for (;;) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno != 0) {
                                r = -errno;
                                set_error(ret_error, "%s: cannot read the drop-in directory: %m", dir);
                        }
                        break;
                }
                size_t len = strlen(de->d_name);
                if (de->d_name[0] == '.' || len <= 5 || strcmp(de->d_name + len - 5, ".conf") != 0)
                        continue;

                char **grown = reallocarray(names, n + 1, sizeof *names);
                if (!grown) {
                        r = -ENOMEM;
                        break;
                }
                names = grown;
                if (asprintf(&names[n], "%s/%s", dir, de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                n++;
        }
        closedir(d);

        if (r < 0) {
                strv_free(names, n);
                return r;
        }
        if (n > 0)
                qsort(names, n, sizeof *names, compare_strings);
        *ret = names;
        *ret_n = n;
        return 0;
}

int config_load_file(Config *c, const char *path, bool explicit_path, char **ret_error) {
        _cleanup_(config_free) Config scratch = {};
        _cleanup_free_ char *dropin_dir = NULL;
        char **dropins = NULL;
        size_t n_dropins = 0;
        int r;

        if (ret_error)
                *ret_error = NULL;
        if (!c)
                return -EINVAL;
        if (!path) {
                path = CONFIG_DEFAULT_PATH;
                explicit_path = false;
        }
        if (!*path) {
                set_error(ret_error, "the configuration file name is empty");
                return -EINVAL;
        }

        r = config_copy(&scratch, c);
        if (r < 0)
                return r;

        r = config_parse_one(&scratch, path, !explicit_path, ret_error);
        if (r < 0)
                return r;
        bool main_read = r == 0;

        /* musicfsd.conf -> musicfsd.conf.d/ */
        if (asprintf(&dropin_dir, "%s.d", path) < 0) {
                dropin_dir = NULL;
                return -ENOMEM;
        }
        r = list_dropins(dropin_dir, &dropins, &n_dropins, ret_error);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_dropins; i++) {
                /* A drop-in removed since the listing is simply gone. */
                r = config_parse_one(&scratch, dropins[i], true, ret_error);
                if (r < 0)
                        break;
        }
        strv_free(dropins, n_dropins);
        if (r < 0)
                return r;

        if (main_read && strdup_to(&scratch.config_path, path) < 0)
                return -ENOMEM;

        config_free(c);
        *c = scratch;
        scratch = (Config) {};
        return 0;
}

/* ---- --origin ------------------------------------------------------------------------------ */

/* Letters, digits, '_' and '-' kept; a run of anything else inside the name becomes one '_', and
 * is dropped at either end. */
static char *sanitize_origin_name(const char *base) {
        static const char allowed[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        char *name = malloc(ORIGIN_NAME_MAX + 1), *p = name;
        bool meaningful = false, pending = false;

        if (!name)
                return NULL;
        for (const char *s = base; *s; s++) {
                if (!strchr(allowed, *s)) {
                        pending = true;
                        continue;
                }
                if (pending && p > name) {
                        if (p - name + 2 > ORIGIN_NAME_MAX)
                                break;
                        *p++ = '_';
                }
                pending = false;
                if (p - name + 1 > ORIGIN_NAME_MAX)
                        break;
                *p++ = *s;
                meaningful = meaningful || (*s != '_' && *s != '-');
        }
        *p = '\0';
        if (!meaningful) {
                free(name);
                return strdup("origin");
        }
        return name;
}

static int make_absolute(const char *dir, char **ret) {
        char *abs;

        if (dir[0] == '/')
                abs = strdup(dir);
        else {
                abs = realpath(dir, NULL);
                if (!abs) {
                        /* It may not exist yet; config_validate() says so. Anchor it anyway. */
                        _cleanup_free_ char *cwd = getcwd(NULL, 0);
                        if (!cwd)
                                return negative_errno();
                        if (asprintf(&abs, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, dir) < 0)
                                return -ENOMEM;
                }
        }
        if (!abs)
                return -ENOMEM;

        /* No trailing slashes, except for "/" itself. */
        size_t n = strlen(abs);
        while (n > 1 && abs[n - 1] == '/')
                abs[--n] = '\0';
        *ret = abs;
        return 0;
}

int config_add_origin_dir(Config *c, const char *dir, char **ret_error) {
        _cleanup_free_ char *path = NULL, *base = NULL;
        int r;

        if (ret_error)
                *ret_error = NULL;
        if (!c)
                return -EINVAL;
        if (!dir || !*dir) {
                set_error(ret_error, "the origin directory name is empty");
                return -EINVAL;
        }

        r = make_absolute(dir, &path);
        if (r < 0) {
                errno = -r;
                set_error(ret_error, "cannot make '%s' an absolute path: %m", dir);
                return r;
        }

        /* Named as the user typed it, unless that is "." or ".." (then as it resolved). */
        _cleanup_free_ char *given = strdup(dir);
        if (!given)
                return -ENOMEM;
        size_t n = strlen(given);
        while (n > 1 && given[n - 1] == '/')
                given[--n] = '\0';
        const char *last = strrchr(given, '/') ? strrchr(given, '/') + 1 : given;
        if (strcmp(last, ".") == 0 || strcmp(last, "..") == 0)
                last = strrchr(path, '/') + 1;
        base = sanitize_origin_name(last);
        if (!base)
                return -ENOMEM;

        /* base, base-2, base-3...: the suffix replaces the tail if the name is at its limit. */
        _cleanup_free_ char *name = strdup(base);
        if (!name)
                return -ENOMEM;
        for (unsigned i = 2; config_find_origin(c, name); i++) {
                char suffix[16];
                int k = snprintf(suffix, sizeof suffix, "-%u", i);
                size_t keep = strlen(base);
                if (keep + (size_t) k > ORIGIN_NAME_MAX)
                        keep = ORIGIN_NAME_MAX - (size_t) k;
                free(name);
                if (asprintf(&name, "%.*s%s", (int) keep, base, suffix) < 0) {
                        name = NULL;
                        return -ENOMEM;
                }
        }

        OriginConfig *o;
        r = config_append_origin(c, TAKE_PTR(name), &o);
        if (r < 0)
                return r;
        o->path = TAKE_PTR(path);
        return 0;
}

/* ---- validation ---------------------------------------------------------------------------- */

/* Whether path is dir or below it, textually (both absolute, without trailing slashes but "/"). */
static bool path_is_under(const char *path, const char *dir) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/')
                n--;
        if (n == 1 && dir[0] == '/')
                return true;
        return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

int config_validate(const Config *c, char **ret_error) {
        struct stat st;

        if (ret_error)
                *ret_error = NULL;
        if (!c)
                return -EINVAL;

#define REFUSE(...) do { set_error(ret_error, __VA_ARGS__); return -EINVAL; } while (0)

        if (!c->mountpoint || !*c->mountpoint)
                REFUSE("no mountpoint: give MOUNTPOINT on the command line or 'mountpoint =' in [musicfsd]");
        if (c->mountpoint[0] != '/')
                REFUSE("mountpoint '%s' is not an absolute path", c->mountpoint);
        if (!c->cache_dir || !*c->cache_dir)
                REFUSE("cache_dir is not set; expected an absolute path");
        if (c->cache_dir[0] != '/')
                REFUSE("cache_dir '%s' is not an absolute path", c->cache_dir);
        if (!c->template || !*c->template)
                REFUSE("template is empty; expected a path template such as '%s'", CONFIG_DEFAULT_TEMPLATE);
        if (c->fuse_threads < FUSE_THREADS_MIN || c->fuse_threads > FUSE_THREADS_MAX)
                REFUSE("fuse_threads is %u; expected %d to %d", c->fuse_threads, FUSE_THREADS_MIN, FUSE_THREADS_MAX);
        if (c->scan_batch < SCAN_BATCH_MIN || c->scan_batch > SCAN_BATCH_MAX)
                REFUSE("scan_batch is %u; expected %d to %d", c->scan_batch, SCAN_BATCH_MIN, SCAN_BATCH_MAX);
        if (c->log_level < LOG_EMERG || c->log_level > LOG_DEBUG)
                REFUSE("log_level is %d; expected %d (emerg) to %d (debug)", c->log_level, LOG_EMERG, LOG_DEBUG);
        if (c->entry_timeout > TIMEOUT_MAX)
                REFUSE("entry_timeout is %u seconds; expected at most %u", c->entry_timeout, TIMEOUT_MAX);
        if (c->attr_timeout > TIMEOUT_MAX)
                REFUSE("attr_timeout is %u seconds; expected at most %u", c->attr_timeout, TIMEOUT_MAX);
        if (c->health_interval < HEALTH_INTERVAL_MIN || c->health_interval > HEALTH_INTERVAL_MAX)
                REFUSE("health_interval is %u seconds; expected %d to %d", c->health_interval, HEALTH_INTERVAL_MIN,
                       HEALTH_INTERVAL_MAX);
        if (c->health_timeout < HEALTH_TIMEOUT_MIN || c->health_timeout > HEALTH_TIMEOUT_MAX)
                REFUSE("health_timeout is %u seconds; expected %d to %d", c->health_timeout, HEALTH_TIMEOUT_MIN,
                       HEALTH_TIMEOUT_MAX);
        if (c->cache_budget < CACHE_BUDGET_MIN || c->cache_budget > CACHE_BUDGET_MAX)
                REFUSE("cache budget is %" PRIu64 " bytes; expected %" PRIu64 " MiB to %" PRIu64 " TiB",
                       c->cache_budget, CACHE_BUDGET_MIN >> 20, CACHE_BUDGET_MAX >> 40);
        if (c->cache_readahead > CACHE_READAHEAD_MAX)
                REFUSE("cache readahead is %u tracks; expected 0 to %d", c->cache_readahead, CACHE_READAHEAD_MAX);
        if (c->cache_maintenance_sec < CACHE_MAINTENANCE_MIN || c->cache_maintenance_sec > CACHE_MAINTENANCE_MAX)
                REFUSE("cache maintenance_interval is %u seconds; expected %d to %d", c->cache_maintenance_sec,
                       CACHE_MAINTENANCE_MIN, CACHE_MAINTENANCE_MAX);

        if (c->n_origins == 0)
                REFUSE("no origins: give --origin DIR or an [origin \"NAME\"] section with a path");

        for (size_t i = 0; i < c->n_origins; i++) {
                const OriginConfig *o = &c->origins[i];

                if (!o->name || !origin_name_valid(o->name))
                        REFUSE("origin name '%s' is not valid; expected 1 to %d letters, digits, '_' or '-'",
                               strna(o->name), ORIGIN_NAME_MAX);
                for (size_t j = 0; j < i; j++)
                        if (streq_ptr(c->origins[j].name, o->name))
                                REFUSE("origin name '%s' is used twice", o->name);
                if (streq_ptr(o->kind, "sftp")) {
                        _cleanup_free_ char *reason = NULL;
                        const OriginS3Config *s3 = &o->s3;      /* only its timeout is shared */
                        if (s3->bucket || s3->endpoint || s3->region || s3->prefix || s3->access_key_id ||
                            s3->secret_access_key || s3->session_token || s3->credentials_file || s3->profile ||
                            s3->path_style >= 0)
                                REFUSE("origin '%s' (kind sftp) has S3 keys (bucket, endpoint, ...); set kind = s3 or remove them",
                                       o->name);
                        if (o->priority > PRIORITY_MAX)
                                REFUSE("origin '%s': priority %u is out of range; expected 0 to %d", o->name,
                                       o->priority, PRIORITY_MAX);
                        if (config_sftp_validate(o->name, o->path, &o->sftp, &reason) < 0)
                                REFUSE("%s", strna(reason));
                        if (streq_ptr(o->watch, "inotify"))
                                REFUSE("origin '%s' (kind sftp) cannot be watched with inotify; expected watch = poll or off",
                                       o->name);
                        continue;
                }
                if (o->sftp.any_key)
                        REFUSE("origin '%s' has SFTP keys (host, user, ...) but kind '%s'; set kind = sftp",
                               o->name, strna(o->kind));
                if (streq_ptr(o->kind, "s3")) {
                        _cleanup_free_ char *reason = NULL;
                        if (o->path)
                                REFUSE("origin '%s' (kind s3) has a path; it takes bucket and prefix instead", o->name);
                        if (config_s3_validate(o->name, &o->s3, &reason) < 0)
                                REFUSE("%s", strna(reason));
                        if (streq_ptr(o->watch, "inotify"))
                                REFUSE("origin '%s' (kind s3): watch = inotify is for local directories; use poll or off",
                                       o->name);
                        continue;
                }
                if (o->s3.any_key)
                        REFUSE("origin '%s' has S3 keys (bucket, endpoint, ...) but kind '%s'; set kind = s3",
                               o->name, strna(o->kind));
                if (o->kind && strcmp(o->kind, "local") != 0)
                        REFUSE("origin '%s': kind '%s' is not supported by this build; expected 'local', 's3' or 'sftp'",
                               o->name, o->kind);
                if (o->priority > PRIORITY_MAX)
                        REFUSE("origin '%s': priority %u is out of range; expected 0 to %d", o->name, o->priority,
                               PRIORITY_MAX);
                if (!o->path || !*o->path)
                        REFUSE("origin '%s' has no path; expected 'path = /absolute/directory' in its section",
                               o->name);
                if (o->path[0] != '/')
                        REFUSE("origin '%s': path '%s' is not an absolute path", o->name, o->path);
                if (stat(o->path, &st) < 0) {
                        int r = negative_errno();
                        if (r == -ENOENT)
                                REFUSE("origin '%s': directory '%s' does not exist", o->name, o->path);
                        errno = -r;
                        REFUSE("origin '%s': cannot access '%s': %m", o->name, o->path);
                }
                if (!S_ISDIR(st.st_mode))
                        REFUSE("origin '%s': '%s' is not a directory", o->name, o->path);
                /* The scanner would walk the daemon's own mount, and the mount would hide the origin. */
                if (path_is_under(c->mountpoint, o->path))
                        REFUSE("mountpoint '%s' is inside origin '%s' ('%s'); mount it elsewhere",
                               c->mountpoint, o->name, o->path);
                if (path_is_under(o->path, c->mountpoint))
                        REFUSE("origin '%s' ('%s') is inside the mountpoint '%s'; mount it elsewhere",
                               o->name, o->path, c->mountpoint);
        }
#undef REFUSE
        return 0;
}
