/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <linux/magic.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "bus-api.h"
#include "bus-manager.h"
#include "bus-origin.h"
#include "build-id.h"
#include "crash.h"
#include "failpoint.h"
#include "log.h"
#include "manager.h"
#include "polkit.h"
#include "scanner.h"
#include "time-util.h"
#include "tree-snapshot.h"

/* A clean stop must be over well within 10 s; past this the mount is detached and we exit 1. */
#define STOP_TIMEOUT_USEC (9ULL * 1000000ULL)
/* During a first scan the tree is republished at most this often, so that files appear as found. */
#define FIRST_SCAN_PUBLISH_USEC (2ULL * 1000000ULL)
#define BUS_RECONNECT_USEC (1ULL * 1000000ULL)
/* A FUSE daemon that does not answer statfs() within this is hung or stopped: its mount is stale. */
#define MOUNT_PROBE_TIMEOUT_USEC (2ULL * 1000000ULL)
/* D11: each health check runs under its own timeout (health_timeout, 5 s); all origins are checked
 * every health_interval (30 s), every minute while offline; a DNS failure is checked again sooner. */
#define HEALTH_CHECK_TIMEOUT_USEC(m) ((uint64_t) (m)->config.health_timeout * 1000000ULL)
#define HEALTH_OFFLINE_INTERVAL_SEC 60u
#define HEALTH_DNS_RECHECK_USEC (5ULL * 1000000ULL)
/* ScanProgress is announced at most this often while the file count moves. */
#define PROGRESS_INTERVAL_USEC (250ULL * 1000ULL)
/* CacheBytes is announced at most this often while it moves. */
#define CACHE_BYTES_INTERVAL_USEC (2ULL * 1000000ULL)


DEFINE_TRIVIAL_CLEANUP_FUNC(Template *, template_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(Tree *, tree_unref);
DEFINE_TRIVIAL_CLEANUP_FUNC(Origin *, origin_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DIR *, closedir);

static int strdup_to(char **dst, const char *src) {
        char *copy = NULL;
        if (src) {
                copy = strdup(src);
                if (!copy)
                        return -ENOMEM;
        }
        free(*dst);
        *dst = copy;
        return 0;
}

static const char *log_level_to_string(int level) {
        static const char *const names[] = { "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug" };
        return level >= 0 && level < (int) ELEMENTSOF(names) ? names[level] : "?";
}

/* ---- arguments and configuration ---- */

void manager_args_init(ManagerArgs *a) {
        *a = (ManagerArgs) { .log_level = -1 };
}

void manager_args_free(ManagerArgs *a) {
        free(a->config_path);
        for (size_t i = 0; i < a->n_origin_dirs; i++)
                free(a->origin_dirs[i]);
        free(a->origin_dirs);
        free(a->cache_dir);
        free(a->template);
        free(a->mountpoint);
        manager_args_init(a);
}

int manager_args_add_origin(ManagerArgs *a, const char *dir) {
        char **grown = realloc(a->origin_dirs, (a->n_origin_dirs + 1) * sizeof(char *));
        if (!grown)
                return -ENOMEM;
        a->origin_dirs = grown;
        a->origin_dirs[a->n_origin_dirs] = strdup(dir);
        if (!a->origin_dirs[a->n_origin_dirs])
                return -ENOMEM;
        a->n_origin_dirs++;
        return 0;
}

static int set_error(char **ret_error, int r, const char *format, ...) _printf_(3, 4);
static int set_error(char **ret_error, int r, const char *format, ...) {
        if (ret_error) {
                va_list ap;
                char *s = NULL;
                va_start(ap, format);
                if (vasprintf(&s, format, ap) < 0)
                        s = NULL;
                va_end(ap);
                free(*ret_error);
                *ret_error = s;
        }
        return r;
}

int manager_load_config(const ManagerArgs *args, Config *ret, Template **ret_template, char **ret_error) {
        _cleanup_(config_free) Config c = {};
        _cleanup_(template_freep) Template *tpl = NULL;
        _cleanup_free_ char *error = NULL;
        int r;

        config_init_defaults(&c);

        r = config_load_file(&c, args->config_path, args->config_path != NULL, &error);
        if (r == -ENOENT && args->config_path && !error)
                return set_error(ret_error, r, "Configuration file %s does not exist", args->config_path);
        if (r < 0) {
                if (!error)
                        return set_error(ret_error, r, "Failed to read configuration %s: %s",
                                         args->config_path ?: CONFIG_DEFAULT_PATH, strerror(-r));
                if (ret_error) {
                        free(*ret_error);
                        *ret_error = TAKE_PTR(error);
                }
                return r;
        }

        if ((args->mountpoint && strdup_to(&c.mountpoint, args->mountpoint) < 0) ||
            (args->cache_dir && strdup_to(&c.cache_dir, args->cache_dir) < 0) ||
            (args->template && strdup_to(&c.template, args->template) < 0))
                return set_error(ret_error, -ENOMEM, "Out of memory");
        if (args->threads > 0)
                c.fuse_threads = args->threads;
        if (args->log_level >= 0)
                c.log_level = args->log_level;
        if (args->user_bus)
                c.user_bus = true;

        for (size_t i = 0; i < args->n_origin_dirs; i++) {
                r = config_add_origin_dir(&c, args->origin_dirs[i], &error);
                if (r < 0)
                        return set_error(ret_error, r, "--origin %s: %s", args->origin_dirs[i],
                                         error ?: strerror(-r));
        }

        r = config_validate(&c, &error);
        if (r < 0)
                return set_error(ret_error, r, "%s", error ?: "Invalid configuration");

        _cleanup_free_ char *reason = NULL;
        r = template_parse(c.template, &tpl, &reason);
        if (r < 0)
                return set_error(ret_error, r, "Invalid template \"%s\": %s", c.template,
                                 reason ?: strerror(-r));

        *ret = c;
        c = (Config) {};
        if (ret_template)
                *ret_template = TAKE_PTR(tpl);
        return 0;
}

static bool origins_equal(const Config *a, const Config *b) {
        if (a->n_origins != b->n_origins)
                return false;
        for (size_t i = 0; i < a->n_origins; i++) {
                const OriginConfig *x = &a->origins[i], *y = &b->origins[i];
                if (!streq_ptr(x->name, y->name) || !streq_ptr(x->kind, y->kind) ||
                    !streq_ptr(x->path, y->path) || x->priority != y->priority ||
                    !streq_ptr(x->watch, y->watch) || x->poll_interval != y->poll_interval ||
                    !config_sftp_equal(&x->sftp, &y->sftp) || !config_s3_equal(&x->s3, &y->s3))
                        return false;
        }
        return true;
}

unsigned manager_config_diff(const Config *old, const Config *new) {
        unsigned changes = 0;

        if (old->log_level != new->log_level)
                changes |= CONFIG_CHANGE_LOG_LEVEL;
        if (!streq_ptr(old->template, new->template))
                changes |= CONFIG_CHANGE_TEMPLATE;
        if (old->entry_timeout != new->entry_timeout || old->attr_timeout != new->attr_timeout ||
            old->health_interval != new->health_interval || old->health_timeout != new->health_timeout)
                changes |= CONFIG_CHANGE_TIMEOUTS;
        if (old->scan_batch != new->scan_batch)
                changes |= CONFIG_CHANGE_SCAN_BATCH;
        if (old->read_ahead_kb != new->read_ahead_kb)
                changes |= CONFIG_CHANGE_READ_AHEAD;
        if (!streq_ptr(old->mountpoint, new->mountpoint))
                changes |= CONFIG_CHANGE_MOUNTPOINT;
        if (!streq_ptr(old->cache_dir, new->cache_dir))
                changes |= CONFIG_CHANGE_CACHE_DIR;
        if (!origins_equal(old, new) || old->poll_interval != new->poll_interval)
                changes |= CONFIG_CHANGE_ORIGINS;
        if (old->user_bus != new->user_bus)
                changes |= CONFIG_CHANGE_BUS;
        if (old->fuse_threads != new->fuse_threads)
                changes |= CONFIG_CHANGE_FUSE_THREADS;
        if (old->cache_budget != new->cache_budget || old->cache_readahead != new->cache_readahead ||
            old->cache_passthrough != new->cache_passthrough || old->cache_maintenance_sec != new->cache_maintenance_sec)
                changes |= CONFIG_CHANGE_CACHE;
        return changes;
}

/* ---- cache directory and lock ---- */

static int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; ; s++) {
                bool last = *s == '\0';
                if (*s != '/' && !last)
                        continue;
                *s = '\0';
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                if (last)
                        break;
                *s = '/';
        }
        struct stat st;
        if (stat(path, &st) < 0)
                return -errno;
        return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int manager_lock_cache_dir(const char *cache_dir, int *ret_fd, pid_t *ret_holder) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -1;

        if (asprintf(&path, "%s/%s", cache_dir, MANAGER_LOCK_FILE) < 0)
                return -ENOMEM;
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return -errno;

        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                int r = -errno;
                if (r != -EWOULDBLOCK)
                        return r;
                if (ret_holder) {
                        char buf[32] = {};
                        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
                        long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
                        *ret_holder = pid > 0 && pid <= INT_MAX ? (pid_t) pid : 0;
                }
                return -EBUSY;
        }

        char buf[32];
        int len = snprintf(buf, sizeof buf, "%ld\n", (long) getpid());
        if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t) len, 0) != len)
                return -errno ?: -EIO;

        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* statfs() on a FUSE mount waits for its daemon, forever if that daemon is stopped: ask from a
 * helper thread and give up after a while. The probe owns itself once we stop waiting. */
typedef struct MountProbe {
        pthread_mutex_t lock;
        pthread_cond_t done_cond;
        bool done, abandoned;
        bool live;
        char path[];
} MountProbe;

static void mount_probe_release(MountProbe *p, bool from_thread) {
        pthread_mutex_lock(&p->lock);
        bool last = from_thread ? p->abandoned : p->done;
        if (from_thread) {
                p->done = true;
                pthread_cond_signal(&p->done_cond);
        } else
                p->abandoned = true;
        pthread_mutex_unlock(&p->lock);
        if (last) {
                pthread_mutex_destroy(&p->lock);
                pthread_cond_destroy(&p->done_cond);
                free(p);
        }
}

static void *mount_probe_main(void *userdata) {
        MountProbe *p = userdata;
        _cleanup_free_ char *parent = NULL;
        struct statfs sfs;
        struct stat st, parent_st;

        /* Something of its own mounted right there (not merely a directory inside a FUSE mount),
         * of type FUSE, and its daemon answers. */
        p->live = asprintf(&parent, "%s/..", p->path) >= 0 &&
                  statfs(p->path, &sfs) == 0 && sfs.f_type == FUSE_SUPER_MAGIC &&
                  stat(p->path, &st) == 0 && stat(parent, &parent_st) == 0 && st.st_dev != parent_st.st_dev;
        mount_probe_release(p, true);
        return NULL;
}

/* 1 when a FUSE filesystem is mounted at path and its daemon answers, 0 otherwise (nothing there,
 * another kind of mount, a dead or hung FUSE daemon: those fusefs_cleanup_stale_mount() clears). */
static int mountpoint_has_live_fuse(const char *path, uint64_t timeout_usec) {
        size_t len = strlen(path);
        MountProbe *p = calloc(1, sizeof *p + len + 1);
        pthread_t thread;
        int r, live = 0;

        if (!p)
                return -ENOMEM;
        memcpy(p->path, path, len + 1);
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->done_cond, NULL);

        r = pthread_create(&thread, NULL, mount_probe_main, p);
        if (r != 0) {
                pthread_mutex_destroy(&p->lock);
                pthread_cond_destroy(&p->done_cond);
                free(p);
                return -r;
        }
        (void) pthread_detach(thread);

        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += (time_t) (timeout_usec / 1000000ULL);
        deadline.tv_nsec += (long) (timeout_usec % 1000000ULL) * 1000L;
        if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
        }

        pthread_mutex_lock(&p->lock);
        while (!p->done && pthread_cond_timedwait(&p->done_cond, &p->lock, &deadline) != ETIMEDOUT)
                ;
        if (p->done)
                live = p->live;
        else
                log_notice("The FUSE filesystem at %s does not answer; treating it as stale", path);
        pthread_mutex_unlock(&p->lock);
        mount_probe_release(p, false);
        return live;
}

/* fusefs_mount() checks the mountpoint too; checking here first makes the error the first line the
 * daemon prints, before the catalog is touched. */
static int check_mountpoint(const char *path) {
        struct stat st;

        if (stat(path, &st) < 0) {
                if (errno == ENOENT)
                        return log_error_errno(ENOENT, "Mountpoint %s does not exist", path);
                return log_error_errno(errno, "Mountpoint %s cannot be used: %m", path);
        }
        if (!S_ISDIR(st.st_mode))
                return log_error_errno(ENOTDIR, "Mountpoint %s is not a directory", path);

        _cleanup_(closedirp) DIR *d = opendir(path);
        if (!d)
                return log_error_errno(errno, "Mountpoint %s cannot be read: %m", path);
        for (struct dirent *de; (de = readdir(d)); )
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, ".."))
                        return log_error_errno(ENOTEMPTY, "Mountpoint %s is not empty", path);
        return 0;
}

/* ---- URLs ---- */

/* Query parameters that carry credentials in the URLs of s3/sftp/http-like origins. */
static bool query_key_is_secret(const char *key, size_t len) {
        static const char *const secrets[] = {
                "password", "passwd", "pass", "pwd", "passphrase", "secret", "secret_key", "secretkey",
                "secret_access_key", "aws_secret_access_key", "access_key", "accesskey", "access_key_id",
                "aws_access_key_id", "token", "access_token", "session_token", "security_token", "auth",
                "authorization", "credential", "credentials", "signature", "sig", "key", "api_key", "apikey",
                "private_key", "x-amz-credential", "x-amz-signature", "x-amz-security-token",
        };
        char decoded[64];
        size_t n = 0;

        /* Compare the decoded name, so that "X%2DAmz%2DSignature" is caught too. */
        for (size_t i = 0; i < len; i++) {
                char c = key[i];
                if (c == '%' && i + 2 < len && isxdigit((unsigned char) key[i + 1]) &&
                    isxdigit((unsigned char) key[i + 2])) {
                        char hex[3] = { key[i + 1], key[i + 2], 0 };
                        c = (char) strtol(hex, NULL, 16);
                        i += 2;
                } else if (c == '+')
                        c = ' ';
                if (n + 1 >= sizeof decoded)
                        return false;   /* no credential parameter has a name this long */
                decoded[n++] = c;
        }
        decoded[n] = '\0';
        for (size_t i = 0; i < ELEMENTSOF(secrets); i++)
                if (strcasecmp(decoded, secrets[i]) == 0)
                        return true;
        return false;
}

int manager_url_strip_secrets(const char *url, char **ret) {
        const char *sep, *p;
        char *out;
        size_t o = 0;

        if (!url || !ret)
                return -EINVAL;

        /* A plain path (a local origin), or anything without an authority, has no userinfo to hide. */
        sep = strstr(url, "://");
        bool scheme_ok = sep && sep > url && isalpha((unsigned char) url[0]);
        for (const char *s = url; scheme_ok && s < sep; s++)
                if (!isalnum((unsigned char) *s) && *s != '+' && *s != '-' && *s != '.')
                        scheme_ok = false;
        if (!scheme_ok) {
                out = strdup(url);
                if (!out)
                        return -ENOMEM;
                *ret = out;
                return 0;
        }

        out = malloc(strlen(url) + 1);
        if (!out)
                return -ENOMEM;

        p = sep + 3;
        memcpy(out, url, (size_t) (p - url));
        o = (size_t) (p - url);

        /* userinfo@host:port — keep the user, drop ":password". */
        size_t authority_len = strcspn(p, "/?#");
        const char *at = memrchr(p, '@', authority_len);
        if (at) {
                const char *colon = memchr(p, ':', (size_t) (at - p));
                size_t user_len = colon ? (size_t) (colon - p) : (size_t) (at - p);
                if (user_len > 0) {
                        memcpy(out + o, p, user_len);
                        o += user_len;
                        out[o++] = '@';
                }
                memcpy(out + o, at + 1, (size_t) (p + authority_len - at - 1));
                o += (size_t) (p + authority_len - at - 1);
        } else {
                memcpy(out + o, p, authority_len);
                o += authority_len;
        }
        p += authority_len;

        size_t path_len = strcspn(p, "?#");
        memcpy(out + o, p, path_len);
        o += path_len;
        p += path_len;

        if (*p == '?') {
                bool first = true;
                p++;
                for (;;) {
                        size_t param_len = strcspn(p, "&;#");
                        size_t key_len = strcspn(p, "=&;#");
                        if (key_len > param_len)
                                key_len = param_len;
                        if (param_len > 0 && !query_key_is_secret(p, key_len)) {
                                out[o++] = first ? '?' : '&';
                                memcpy(out + o, p, param_len);
                                o += param_len;
                                first = false;
                        }
                        p += param_len;
                        if (*p != '&' && *p != ';')
                                break;
                        p++;
                }
        }

        /* The fragment never reaches a server, but it is the caller's: keep it. */
        size_t rest = strlen(p);
        memcpy(out + o, p, rest);
        o += rest;
        out[o] = '\0';
        *ret = out;
        return 0;
}

/* ---- managed origins (loop thread) ---- */

const char *origin_health_state_to_string(OriginHealthState s) {
        static const char *const names[_ORIGIN_HEALTH_MAX] = {
                [ORIGIN_HEALTHY] = MUSICFS_HEALTH_HEALTHY,
                [ORIGIN_DEGRADED] = MUSICFS_HEALTH_DEGRADED,
                [ORIGIN_UNHEALTHY] = MUSICFS_HEALTH_UNHEALTHY,
        };
        return s >= 0 && s < _ORIGIN_HEALTH_MAX ? names[s] : "unknown";
}

static void managed_origin_free(ManagedOrigin *mo) {
        if (!mo)
                return;
        sd_event_source_disable_unref(mo->recheck_source);
        origin_unref(mo->origin);
        free(mo->object_path);
        free(mo->url);
        free(mo->last_error);
        free(mo);
}

DEFINE_TRIVIAL_CLEANUP_FUNC(ManagedOrigin *, managed_origin_free);

static int managed_origin_new(Origin *o, ManagedOrigin **ret) {
        _cleanup_(managed_origin_freep) ManagedOrigin *mo = calloc(1, sizeof *mo);
        int r;

        if (!mo)
                return -ENOMEM;
        mo->origin = origin_ref(o);
        mo->health = ORIGIN_HEALTHY;
        r = bus_origin_path(o->name, &mo->object_path);
        if (r < 0)
                return r;
        r = manager_url_strip_secrets(o->url, &mo->url);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(mo);
        return 0;
}

ManagedOrigin *manager_find_origin(Manager *m, const char *name) {
        for (size_t i = 0; name && i < m->n_managed; i++)
                if (strcmp(m->managed[i]->origin->name, name) == 0)
                        return m->managed[i];
        return NULL;
}

static ManagedOrigin *manager_find_origin_by_id(Manager *m, int64_t id) {
        for (size_t i = 0; i < m->n_managed; i++)
                if (m->managed[i]->origin->id == id)
                        return m->managed[i];
        return NULL;
}

/* The OriginSet's order: priority, then name. */
static int manager_insert_managed(Manager *m, ManagedOrigin *mo) {
        ManagedOrigin **grown = reallocarray(m->managed, m->n_managed + 1, sizeof *grown);
        size_t pos;

        if (!grown)
                return -ENOMEM;
        m->managed = grown;
        for (pos = m->n_managed; pos > 0; pos--) {
                const Origin *prev = m->managed[pos - 1]->origin;
                if (prev->priority < mo->origin->priority ||
                    (prev->priority == mo->origin->priority && strcmp(prev->name, mo->origin->name) < 0))
                        break;
        }
        memmove(m->managed + pos + 1, m->managed + pos, (m->n_managed - pos) * sizeof *m->managed);
        m->managed[pos] = mo;
        m->n_managed++;
        return 0;
}

static void manager_remove_managed(Manager *m, ManagedOrigin *mo) {
        for (size_t i = 0; i < m->n_managed; i++)
                if (m->managed[i] == mo) {
                        memmove(m->managed + i, m->managed + i + 1, (m->n_managed - i - 1) * sizeof *m->managed);
                        m->n_managed--;
                        return;
                }
}

/* ---- tree building (startup on the main thread, later on the worker) ---- */

typedef struct TreeRows {
        Manager *manager;
        TreeBuilder *builder;
        OriginCount *counts;
        size_t n_counts, n_files;
} TreeRows;

static int count_file(TreeRows *rows, int64_t origin_id) {
        /* rows come origin by origin: the last origin counted is nearly always the one */
        for (size_t j = rows->n_counts; j > 0; j--)
                if (rows->counts[j - 1].origin_id == origin_id) {
                        rows->counts[j - 1].files++;
                        return 0;
                }
        OriginCount *grown = reallocarray(rows->counts, rows->n_counts + 1, sizeof *grown);
        if (!grown)
                return -ENOMEM;
        rows->counts = grown;
        rows->counts[rows->n_counts++] = (OriginCount) { .origin_id = origin_id, .files = 1 };
        return 0;
}

/* Called for each catalog row with the catalog's lock held. Files of origins that are not (or no
 * longer) in the set stay in the catalog (it is a cache) but are not shown: there would be nothing
 * to read them from. */
static int tree_row(const CatalogFile *f, void *userdata) {
        TreeRows *rows = userdata;
        int r;

        if (!origin_set_get(rows->manager->origins, f->origin_id))
                return 0;
        r = count_file(rows, f->origin_id);
        if (r < 0)
                return r;
        rows->n_files++;
        return tree_builder_add(rows->builder, f);
}

static uint64_t count_of(const OriginCount *counts, size_t n, int64_t origin_id) {
        for (size_t i = 0; i < n; i++)
                if (counts[i].origin_id == origin_id)
                        return counts[i].files;
        return 0;
}

/* What a build reads besides the catalog's rows: the template, and the origins whose rows it shows
 * with the priorities that order replicas. Newly allocated, NULL when out of memory. */
static char *manager_tree_inputs(Manager *m, const Template *tpl) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);

        if (!f)
                return NULL;
        fprintf(f, "template %s\n", template_spec(tpl) ?: "");
        for (size_t i = 0;; i++) {
                Origin *o = origin_set_at_ref(m->origins, i);
                if (!o)
                        break;
                fprintf(f, "origin %" PRIi64 " %u %s\n", o->id, o->priority, o->name);
                origin_unref(o);
        }
        if (fclose(f) != 0)
                return NULL;
        return TAKE_PTR(buf);
}

/* ret_inputs and ret_changes describe what the tree was built from, for its snapshot: the inputs as
 * the walk began, the catalog's change count once inode numbers were assigned. */
static int manager_build_tree(Manager *m, const Template *tpl, Tree **ret, size_t *ret_n_files,
                              OriginCount **ret_counts, size_t *ret_n_counts, char **ret_inputs,
                              uint64_t *ret_changes) {
        TreeRows rows = { .manager = m };
        _cleanup_free_ char *inputs = manager_tree_inputs(m, tpl);
        int r;

        /* During a scan the tag readers free their buffers in their own heaps, which this thread
         * cannot reuse: handed back before the build rather than kept under its peak. */
        (void) malloc_trim(0);
        r = tree_builder_new(&rows.builder);
        if (r < 0)
                return log_warning_errno(r, "Failed to build the tree: %m");

        /* The rows stream into the builder, which keeps only what the tree needs of each (the whole
         * rows with their tags were the largest transient cost of a build, ~50 MB at 100k tracks).
         * Inode numbers come from the catalog after the walk, once its lock is free again. */
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        r = catalog_foreach_file(m->catalog, tree_row, &rows);
        if (r < 0)
                log_warning_errno(r, "Failed to load the catalog: %m");
        uint64_t t1 = now_usec(CLOCK_MONOTONIC);
        if (r >= 0) {
                r = tree_builder_finish(rows.builder, m->catalog, tpl, ret);
                if (r < 0)
                        log_warning_errno(r, "Failed to build the tree: %m");
        }
        uint64_t t2 = now_usec(CLOCK_MONOTONIC);
        tree_builder_free(rows.builder);
        /* glibc keeps freed heap for reuse, which would count against the daemon's RSS until the
         * next build */
        (void) malloc_trim(0);
        if (r < 0) {
                free(rows.counts);
                return r;
        }
        log_debug("Read %zu files in %.0f ms, built the tree in %.0f ms, freed the rows in %.0f ms", rows.n_files,
                  (double) (t1 - t0) / 1000.0, (double) (t2 - t1) / 1000.0, (double) (now_usec(CLOCK_MONOTONIC) - t2) / 1000.0);
        if (ret_n_files)
                *ret_n_files = rows.n_files;
        *ret_counts = rows.counts;
        *ret_n_counts = rows.n_counts;
        *ret_changes = catalog_content_changes(m->catalog);
        *ret_inputs = TAKE_PTR(inputs);
        return 0;
}

/* ---- tree snapshots (daemon/tree/tree-snapshot.h) ---- */

#define TREE_SNAPSHOT_FILE "tree.snapshot"

/* The snapshot is read back only by this build, on the catalog file exactly as the clean close that
 * followed the snapshot's tree left it, under the same template and origins. */
static char *manager_snapshot_key(const char *catalog_identity, const char *inputs) {
        _cleanup_free_ char *build = NULL;
        char *key = NULL;

        if (build_id_self(&build) < 0)
                return NULL;
        if (asprintf(&key, "musicfsd tree snapshot\nbuild %s\ncatalog %s\n%s", build, catalog_identity, inputs) < 0)
                return NULL;
        return key;
}

static char *manager_snapshot_path(Manager *m) {
        char *p = NULL;
        return asprintf(&p, "%s/%s", m->config.cache_dir, TREE_SNAPSHOT_FILE) < 0 ? NULL : p;
}

/* Startup: the tree from the snapshot a clean stop left, if it is this catalog's. The file goes
 * either way: from here on the catalog changes, and the next clean stop writes a new one. */
static int manager_snapshot_load(Manager *m, Tree **ret) {
        _cleanup_free_ char *path = manager_snapshot_path(m), *inputs = NULL, *key = NULL;
        _cleanup_free_ void *annex = NULL;
        const char *identity = catalog_clean_identity(m->catalog);
        size_t annex_len = 0;
        Tree *tree = NULL;
        int r;

        if (!path)
                return -ENOMEM;
        /* A stop cut short by its deadline may have left the temporary of a snapshot it was writing. */
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp", path) >= 0)
                (void) unlink(tmp);
        if (!identity || m->catalog_rebuilt) {
                if (unlink(path) >= 0)
                        log_info("Not reading the tree snapshot: the catalog was not closed cleanly since");
                return -ESTALE;
        }
        inputs = manager_tree_inputs(m, m->template);
        key = inputs ? manager_snapshot_key(identity, inputs) : NULL;
        if (!key)
                return -ENOMEM;
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        r = tree_snapshot_read(path, key, strlen(key), &tree, &annex, &annex_len);
        if (r == 0 && annex_len % sizeof(OriginCount) != 0) {
                tree_unref(TAKE_PTR(tree));
                r = -EBADMSG;
        }
        if (r != -ENOENT && unlink(path) < 0 && errno != ENOENT)
                log_warning_errno(errno, "Failed to remove %s, ignoring: %m", path);
        if (r == -ENOENT)
                return r;
        if (r == -ESTALE) {
                log_info("The tree snapshot is not this catalog's or configuration's; building the tree from the catalog");
                return r;
        }
        if (r < 0)
                return log_warning_errno(r, "Failed to read the tree snapshot %s, building the tree from the catalog: %m",
                                         path);
        log_debug("Read the tree snapshot (%" PRIu64 " tracks) in %.0f ms", tree_track_count(tree),
                  (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0);

        free(m->counts);
        m->counts = TAKE_PTR(annex);
        m->n_counts = annex_len / sizeof(OriginCount);
        free(m->tree_inputs);
        m->tree_inputs = TAKE_PTR(inputs);
        m->tree_changes = catalog_content_changes(m->catalog);
        *ret = tree;
        return 0;
}

/* Stop, before the catalog closes: is the published tree still what the catalog would build? */
static bool manager_tree_current(Manager *m) {
        bool current;

        pthread_mutex_lock(&m->lock);
        current = m->tree_inputs && !m->rebuild_requested && !m->pending_template &&
                  m->tree_changes != UINT64_MAX && m->tree_changes == catalog_content_changes(m->catalog);
        pthread_mutex_unlock(&m->lock);
        return current;
}

/* Stop, after the catalog closed and left its marker (catalog_identity): every thread that changes
 * the tree or the catalog is gone. */
static void manager_snapshot_save(Manager *m, const char *catalog_identity) {
        _cleanup_free_ char *path = manager_snapshot_path(m), *key = NULL;
        _cleanup_(tree_unrefp) Tree *tree = tree_store_get(m->trees);
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        int r;

        key = path ? manager_snapshot_key(catalog_identity, m->tree_inputs) : NULL;
        if (!key) {
                log_warning("Out of memory: no tree snapshot for the next start");
                return;
        }
        r = tree_snapshot_write(path, tree, key, strlen(key), m->counts, m->n_counts * sizeof *m->counts);
        if (r < 0)
                log_warning_errno(r, "Failed to write the tree snapshot %s, the next start builds the tree: %m", path);
        else
                log_debug("Wrote the tree snapshot (%" PRIu64 " tracks) in %.0f ms", tree_track_count(tree),
                          (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0);
}

/* ---- the chunk cache ---- */

static void manager_update_state(Manager *m);
static void manager_arm_health_timer(Manager *m);

static unsigned health_interval_sec(const Manager *m, bool offline) {
        unsigned sec = m->config.health_interval;
        return offline && sec < HEALTH_OFFLINE_INTERVAL_SEC ? HEALTH_OFFLINE_INTERVAL_SEC : sec;
}
static bool manager_cache_verify_abandon(Manager *m);

/* The cache's state callback: any thread, including the loop's own (cache_set_passthrough). */
static void on_cache_state(void *userdata) {
        Manager *m = userdata;

        if (m->cache_efd >= 0 && eventfd_write(m->cache_efd, 1) < 0)
                log_debug_errno(errno, "Failed to wake the event loop for the cache, ignoring: %m");
}

/* <cache_dir>/cache holds chunks/ and index.mdb, apart from catalog.db and the lock beside it; the
 * clean-stop marker sits next to that directory, where the cache's own clean-ups never look. */
static int manager_open_cache(Manager *m) {
        _cleanup_free_ char *dir = NULL, *index = NULL;
        int r;

        if (asprintf(&dir, "%s/cache", m->config.cache_dir) < 0 ||
            asprintf(&index, "%s/index.mdb", dir) < 0 ||
            asprintf(&m->cache_clean_marker, "%s/cache.clean", m->config.cache_dir) < 0)
                return log_error_errno(ENOMEM, "Out of memory");

        /* A directory that cannot be made is the cache's to report: it starts in passthrough. */
        r = mkdir_p(dir, 0755);
        if (r < 0)
                log_warning_errno(r, "Failed to create the cache directory %s: %m", dir);

        /* Present and naming the index as it is: the last run closed the cache and nothing wrote
         * the index since; consumed now, so a crash from here on is seen. */
        bool clean = cache_clean_marker_consume(dir, m->cache_clean_marker);
        bool unclean = !clean && access(index, F_OK) >= 0;

        m->cache_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (m->cache_efd < 0)
                return log_error_errno(errno, "Failed to create an eventfd: %m");

        CacheOptions opts = {
                .dir = dir,
                .budget_bytes = m->config.cache_budget,
                .readahead_tracks = m->config.cache_readahead,
                .passthrough = m->config.cache_passthrough,
                .unclean_start = unclean,
                .maintenance_interval_sec = m->config.cache_maintenance_sec,
        };
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        r = cache_open(&opts, m->origins, on_cache_state, m, &m->cache);
        if (r < 0)
                return log_error_errno(r, "Failed to open the chunk cache in %s: %m", dir);
        log_debug("Opened the chunk cache in %.0f ms%s", (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0,
                  unclean ? " (after an unclean stop: index probed)" : "");

        CacheStats st = {};
        if (cache_get_stats(m->cache, &st) >= 0) {
                m->cache_passthrough_shown = st.passthrough;
                m->cache_reason_shown = st.passthrough_reason;
                m->cache_bytes_shown = st.bytes;
                if (st.passthrough && st.passthrough_reason != CACHE_PASSTHROUGH_MANUAL)
                        log_warning("The chunk cache in %s cannot be used (%s): reads go to the origins", dir,
                                    cache_passthrough_reason_to_string(st.passthrough_reason));
        }
        return 0;
}

/* After the unmount and before the catalog. A VerifyCache still running keeps the cache open (the
 * process is about to exit): no marker then, and the next start probes the index. */
static void manager_close_cache(Manager *m) {
        if (!m->cache)
                return;
        if (m->cache_verify && !manager_cache_verify_abandon(m)) {
                log_warning("A cache verification is still running; leaving the cache to the exit");
                return;
        }
        cache_close(m->cache);
        m->cache = NULL;
        if (m->cache_clean_marker) {
                _cleanup_free_ char *dir = NULL;
                if (asprintf(&dir, "%s/cache", m->config.cache_dir) >= 0)
                        (void) cache_clean_marker_write(dir, m->cache_clean_marker);
        }
}

/* Loop thread: what the bus shows of the cache follows cache_get_stats(). */
static void manager_cache_sync(Manager *m, bool bytes_too) {
        CacheStats st = {};
        char *changed[3];
        size_t n = 0;

        /* From the stop on, the stop thread owns the cache (it closes it). */
        if (m->stopping || !m->cache || cache_get_stats(m->cache, &st) < 0)
                return;

        if (st.passthrough != m->cache_passthrough_shown || st.passthrough_reason != m->cache_reason_shown) {
                CachePassthroughReason old = m->cache_reason_shown;
                const char *reason = cache_passthrough_reason_to_string(st.passthrough_reason);

                if (st.passthrough_reason == CACHE_PASSTHROUGH_NONE)
                        log_notice("Passthrough is off: reads go through the chunk cache again");
                else if (st.passthrough_reason == CACHE_PASSTHROUGH_MANUAL)
                        log_notice("Passthrough is on (switched on): reads bypass the chunk cache");
                else
                        log_warning("Passthrough is on: the cache disk failed (%s); reads go to the origins until "
                                    "it recovers", reason);
                if (st.passthrough != m->cache_passthrough_shown)
                        changed[n++] = (char *) "Passthrough";
                m->cache_passthrough_shown = st.passthrough;
                m->cache_reason_shown = st.passthrough_reason;
                if (old != st.passthrough_reason)
                        manager_update_state(m);
        }
        if (bytes_too && st.bytes != m->cache_bytes_shown) {
                m->cache_bytes_shown = st.bytes;
                changed[n++] = (char *) "CacheBytes";
        }
        changed[n] = NULL;
        bus_manager_emit_changed_strv(m, changed);
}

static int on_cache_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        eventfd_t v;

        (void) eventfd_read(fd, &v);
        manager_cache_sync(m, true);
        return 0;
}

static int on_cache_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        manager_cache_sync(m, true);
        int r = sd_event_source_set_time_relative(s, CACHE_BYTES_INTERVAL_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Failed to re-arm the cache timer; CacheBytes is no longer announced: %m");
        return 0;
}

static int manager_watch_cache(Manager *m) {
        int r;

        if (m->cache_efd < 0)
                return 0;
        r = sd_event_add_io(m->event, &m->cache_source, m->cache_efd, EPOLLIN, on_cache_event, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the cache: %m");
        r = sd_event_add_time_relative(m->event, &m->cache_timer_source, CLOCK_MONOTONIC, CACHE_BYTES_INTERVAL_USEC, 0,
                                       on_cache_timer, m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the cache timer: %m");
        return 0;
}

/* Pins resolve against the published tree (the one FUSE serves). */
int manager_cache_pin(Manager *m, const char *path) {
        _cleanup_(tree_unrefp) Tree *tree = tree_store_get(m->trees);
        int r;

        if (!m->cache)
                return -EOPNOTSUPP;
        if (!tree)
                return -ENOENT;
        r = cache_pin(m->cache, tree, path);
        if (r >= 0)
                log_info("Pinned /%s: its files are fetched and kept for offline use", path);
        return r;
}

int manager_cache_unpin(Manager *m, const char *path) {
        int r;

        if (!m->cache)
                return -EOPNOTSUPP;
        r = cache_unpin(m->cache, path);
        if (r >= 0)
                log_info("Unpinned /%s", path);
        return r;
}

int manager_set_passthrough(Manager *m, bool enabled) {
        int r;

        if (!m->cache)
                return -EOPNOTSUPP;
        r = cache_set_passthrough(m->cache, enabled);
        if (r < 0)
                return r;
        /* The callback has woken the loop too; answering the caller with the bus already showing the
         * new value is nicer. */
        manager_cache_sync(m, false);
        return 0;
}

/* VerifyCache runs on a short-lived thread of its own; it owns an eventfd the loop watches
 * (Manager.cache_verify_source, with the call in Manager.cache_verify_call: loop-side, never touched
 * by the thread). A job that outlives the manager (a stop while it runs) frees itself. */
struct CacheVerifyJob {
        pthread_mutex_t lock;
        bool done, abandoned;           /* under lock */
        int efd;
        Cache *cache;
        bool repair;
        int result;
        CacheVerifyResult res;
        pthread_t thread;
};

static void cache_verify_job_free(CacheVerifyJob *j) {
        if (!j)
                return;
        if (j->efd >= 0)
                close(j->efd);
        pthread_mutex_destroy(&j->lock);
        free(j);
}

static void *cache_verify_main(void *userdata) {
        CacheVerifyJob *j = userdata;
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);

        j->result = cache_verify(j->cache, j->repair, &j->res);
        if (j->result < 0)
                log_warning_errno(j->result, "Cache %s failed: %m", j->repair ? "repair" : "verification");
        else
                log_info("Cache %s in %.1f s: %" PRIu64 " chunks checked, %" PRIu64 " bad, %" PRIu64 " missing, %" PRIu64
                         " orphans, %" PRIu64 " repaired", j->repair ? "repaired" : "verified",
                         (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1e6, j->res.checked, j->res.bad, j->res.missing, j->res.orphans,
                         j->res.repaired);

        pthread_mutex_lock(&j->lock);
        j->done = true;
        bool abandoned = j->abandoned;
        if (!abandoned && eventfd_write(j->efd, 1) < 0)
                log_error_errno(errno, "Failed to wake the event loop for the cache verification: %m");
        pthread_mutex_unlock(&j->lock);
        if (abandoned)
                cache_verify_job_free(j);
        return NULL;
}

static int on_cache_verify_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        CacheVerifyJob *j = m->cache_verify;

        /* From the stop on, the stop thread owns the job. */
        if (!j || m->stopping)
                return 0;
        m->cache_verify = NULL;
        (void) pthread_join(j->thread, NULL);
        bus_manager_reply_verify_cache(m, m->cache_verify_call, j->repair, j->result, &j->res);
        m->cache_verify_call = sd_bus_message_unref(m->cache_verify_call);
        m->cache_verify_source = sd_event_source_disable_unref(m->cache_verify_source);
        if (j->repair)
                manager_cache_sync(m, true);
        cache_verify_job_free(j);
        return 0;
}

/* At a stop (on the stop thread: the loop's parts stay for manager_free) or free: true when the job
 * had ended (it is freed), false when it still runs (it frees itself when it ends; its call goes
 * unanswered, the caller sees the daemon go). */
static bool manager_cache_verify_abandon(Manager *m) {
        CacheVerifyJob *j = TAKE_PTR(m->cache_verify);

        pthread_mutex_lock(&j->lock);
        bool done = j->done;
        j->abandoned = !done;
        pthread_mutex_unlock(&j->lock);
        if (done) {
                (void) pthread_join(j->thread, NULL);
                cache_verify_job_free(j);
                return true;
        }
        (void) pthread_detach(j->thread);
        return false;
}

int manager_cache_verify(Manager *m, bool repair, sd_bus_message *call) {
        int r;

        if (!m->cache)
                return -EOPNOTSUPP;
        if (m->cache_verify)
                return -EBUSY;

        CacheVerifyJob *j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        pthread_mutex_init(&j->lock, NULL);
        j->cache = m->cache;
        j->repair = repair;
        j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (j->efd < 0) {
                r = -errno;
                cache_verify_job_free(j);
                return r;
        }
        r = sd_event_add_io(m->event, &m->cache_verify_source, j->efd, EPOLLIN, on_cache_verify_done, m);
        if (r < 0) {
                cache_verify_job_free(j);
                return r;
        }
        r = -pthread_create(&j->thread, NULL, cache_verify_main, j);
        if (r < 0) {
                m->cache_verify_source = sd_event_source_disable_unref(m->cache_verify_source);
                cache_verify_job_free(j);
                return log_warning_errno(r, "Failed to start the cache verification: %m");
        }
        m->cache_verify_call = sd_bus_message_ref(call);
        log_info("Cache %s started", repair ? "repair" : "verification");
        m->cache_verify = j;
        return 0;
}

/* ---- startup, steps 1-5 ---- */

/* An [origin] section of kind s3. The secrets pass through here into the origin only. */
static int manager_origin_s3_new(const OriginConfig *oc, Origin **ret) {
        _cleanup_free_ char *key_id = NULL, *reason = NULL;
        char *secret = NULL, *token = NULL;
        int r;

        r = config_s3_credentials(&oc->s3, &key_id, &secret, &token, &reason);
        if (r < 0)
                return reason ? log_error_errno(r, "Origin %s: %s", oc->name, reason) : r;
        if (!key_id)
                log_notice("Origin %s: no S3 credentials in its section, a credentials file or the environment; "
                           "requests go unsigned", oc->name);
        S3OriginOptions opts = {
                .endpoint = oc->s3.endpoint,
                .region = oc->s3.region,
                .bucket = oc->s3.bucket,
                .prefix = oc->s3.prefix,
                .path_style = config_s3_path_style(&oc->s3),
                .access_key_id = key_id,
                .secret_access_key = secret,
                .session_token = token,
                .timeout_sec = oc->s3.timeout_sec,
        };
        r = origin_s3_new(oc->name, &opts, oc->priority, ret);
        if (secret)
                explicit_bzero(secret, strlen(secret));
        if (token)
                explicit_bzero(token, strlen(token));
        free(secret);
        free(token);
        return r;
}

/* An [origin] section of kind sftp. Keys stay in their files; only their paths pass here. */
static int manager_origin_sftp_new(const OriginConfig *oc, Origin **ret) {
        SftpOriginOptions opts = {
                .host = oc->sftp.host,
                .port = oc->sftp.port,
                .user = oc->sftp.user,
                .path = oc->path,
                .identity_file = oc->sftp.identity_file,
                .use_agent = oc->sftp.agent > 0,
                .known_hosts = oc->sftp.known_hosts,
                .host_key_fingerprint = oc->sftp.host_key_fingerprint,
                .pool_size = oc->sftp.pool_size,
                .timeout_sec = oc->s3.timeout_sec,     /* the section's timeout key (config-sftp.h) */
                .keepalive_sec = oc->sftp.keepalive_sec,
        };
        return origin_sftp_new(oc->name, &opts, oc->priority, ret);
}

static int manager_open_origins(Manager *m) {
        int r;

        r = origin_set_new(&m->origins);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the origin set: %m");

        for (size_t i = 0; i < m->config.n_origins; i++) {
                const OriginConfig *oc = &m->config.origins[i];
                _cleanup_(origin_freep) Origin *o = NULL;
                _cleanup_(managed_origin_freep) ManagedOrigin *mo = NULL;
                int64_t id;

                if (streq_ptr(oc->kind, "s3")) {
                        r = manager_origin_s3_new(oc, &o);
                        if (r < 0)
                                return log_error_errno(r, "Failed to set up origin %s: %m", oc->name);
                } else if (streq_ptr(oc->kind, "sftp")) {
                        r = manager_origin_sftp_new(oc, &o);
                        if (r < 0)
                                return log_error_errno(r, "Failed to set up origin %s: %m", oc->name);
                } else if (oc->kind && strcmp(oc->kind, "local") != 0)
                        return log_error_errno(EOPNOTSUPP, "Origin %s: kind \"%s\" is not supported", oc->name, oc->kind);

                r = catalog_origin_ensure(m->catalog, oc->name, o ? o->url : oc->path, oc->priority, &id);
                if (r < 0)
                        return log_error_errno(r, "Failed to record origin %s in the catalog: %m", oc->name);
                if (!o) {
                        r = origin_local_new(oc->name, oc->path, oc->priority, &o);
                        if (r < 0)
                                return log_error_errno(r, "Failed to set up origin %s (%s): %m", oc->name, oc->path);
                }
                o->id = id;
                r = managed_origin_new(o, &mo);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up origin %s: %m", oc->name);
                r = origin_set_add(m->origins, o);
                if (r < 0)
                        return log_error_errno(r, "Failed to add origin %s: %m", oc->name);
                TAKE_PTR(o);
                r = manager_insert_managed(m, mo);
                if (r < 0)
                        return log_error_errno(r, "Failed to add origin %s: %m", oc->name);
                TAKE_PTR(mo);
        }
        return 0;
}

static void manager_apply_counts(Manager *m, const OriginCount *counts, size_t n_counts, bool *changed) {
        for (size_t i = 0; i < m->n_managed; i++) {
                uint64_t c = count_of(counts, n_counts, m->managed[i]->origin->id);
                if (c == m->managed[i]->track_count)
                        continue;
                m->managed[i]->track_count = c;
                if (changed)
                        changed[i] = true;
        }
}

static int manager_startup(Manager *m) {
        _cleanup_free_ char *error = NULL, *catalog_path = NULL;
        int r;

        /* 1. Configuration. */
        r = manager_load_config(&m->args, &m->config, &m->template, &error);
        if (r < 0)
                return log_error_errno(r, "%s", error ?: "Invalid configuration");
        log_set_max_level(m->config.log_level);
        atomic_store(&m->scan_batch, m->config.scan_batch);

        /* 2. Cache directory and the lock that keeps a second daemon off it. */
        r = mkdir_p(m->config.cache_dir, 0755);
        if (r < 0)
                return log_error_errno(r, "Failed to create cache directory %s: %m", m->config.cache_dir);
        pid_t holder = 0;
        r = manager_lock_cache_dir(m->config.cache_dir, &m->lock_fd, &holder);
        if (r == -EBUSY) {
                if (holder > 0)
                        return log_error_errno(r, "musicfsd is already running (PID %ld) on %s",
                                               (long) holder, m->config.cache_dir);
                return log_error_errno(r, "musicfsd is already running on %s", m->config.cache_dir);
        }
        if (r < 0)
                return log_error_errno(r, "Failed to lock %s/%s: %m", m->config.cache_dir, MANAGER_LOCK_FILE);

        /* A killed predecessor may have left its mount behind ("Transport endpoint is not connected").
         * A mount whose daemon still answers is another instance's (on another cache directory):
         * leave it alone. */
        r = mountpoint_has_live_fuse(m->config.mountpoint, MOUNT_PROBE_TIMEOUT_USEC);
        if (r > 0)
                return log_error_errno(EBUSY, "Mountpoint %s is not empty: a running FUSE filesystem is mounted there "
                                       "(another musicfsd?)", m->config.mountpoint);
        r = fusefs_cleanup_stale_mount(m->config.mountpoint);
        if (r < 0)
                return log_error_errno(r, "Mountpoint %s holds a stale mount that cannot be removed: %m",
                                       m->config.mountpoint);
        if (r > 0)
                log_notice("Removed a stale mount at %s left by a previous instance", m->config.mountpoint);
        r = check_mountpoint(m->config.mountpoint);
        if (r < 0)
                return r;

        uint64_t t0 = now_usec(CLOCK_MONOTONIC), cpu0 = now_usec(CLOCK_PROCESS_CPUTIME_ID);

        /* 3. Catalog and origins. */
        if (asprintf(&catalog_path, "%s/catalog.db", m->config.cache_dir) < 0)
                return log_error_errno(ENOMEM, "Out of memory");
        r = catalog_open_or_rebuild(catalog_path, &m->catalog, &m->catalog_rebuilt);
        if (r < 0)
                return log_error_errno(r, "Failed to open catalog %s: %m", catalog_path);
        log_debug("Opened the catalog in %.0f ms", (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0);
        if (m->catalog_rebuilt)
                log_warning("Catalog %s was corrupt and has been rebuilt; rescanning every origin", catalog_path);

        r = manager_open_origins(m);
        if (r < 0)
                return r;

        r = manager_open_cache(m);
        if (r < 0)
                return r;

        /* 4. The tree from the catalog; the scan reconciles with the origins later. An unreadable
         * catalog must not keep the library from mounting: start empty and let the scan fill it. */
        _cleanup_(tree_unrefp) Tree *tree = NULL;
        size_t n_files = 0;
        bool from_snapshot = manager_snapshot_load(m, &tree) >= 0;
        if (from_snapshot) {
                n_files = tree_track_count(tree);
                /* Built again from the catalog in the background, first thing: what is shown then
                 * cannot stay behind the catalog even if something wrote to it unseen. */
                m->rebuild_requested = true;
                r = 0;
        } else
                r = manager_build_tree(m, m->template, &tree, &n_files, &m->counts, &m->n_counts, &m->tree_inputs,
                                       &m->tree_changes);
        if (r < 0) {
                log_warning("Mounting an empty tree; the scan will fill it");
                r = tree_new_empty(&tree);
                if (r < 0)
                        return log_error_errno(r, "Failed to create an empty tree: %m");
                n_files = 0;
        }
        manager_apply_counts(m, m->counts, m->n_counts, NULL);
        /* Pins follow the tree: files added under a pinned directory since the last run are fetched. */
        r = cache_pins_refresh(m->cache, tree);
        if (r < 0)
                log_warning_errno(r, "Failed to resolve the pinned paths in the tree, ignoring: %m");
        m->first_scan = m->catalog_rebuilt || n_files == 0;
        /* A first scan that a crash interrupted goes on showing files as it finds them (2.5). */
        for (size_t i = 0; !m->first_scan && i < m->n_managed; i++) {
                bool in_progress = false;
                if (catalog_scan_in_progress(m->catalog, m->managed[i]->origin->id, &in_progress) >= 0 && in_progress)
                        m->first_scan = true;
        }
        m->track_count = tree_track_count(tree);
        atomic_store(&m->published_tracks, m->track_count);
        r = tree_store_new(TAKE_PTR(tree), &m->trees);
        if (r < 0)
                return log_error_errno(r, "Failed to create the tree store: %m");

        /* 5. Mount. */
        FuseFsOptions opts = {
                .mountpoint = m->config.mountpoint,
                .threads = m->config.fuse_threads,
                .read_ahead_kb = m->config.read_ahead_kb,
                .entry_timeout = m->config.entry_timeout,
                .attr_timeout = m->config.attr_timeout,
                .allow_other = geteuid() == 0,
                .debug = false,
                .cache = m->cache,
                .catalog = m->catalog,
        };
        r = fusefs_mount(&opts, m->trees, m->origins, &m->fs);
        if (r < 0)
                return log_error_errno(r, "Failed to mount %s: %m", m->config.mountpoint);
        m->mountpoint = strdup(m->config.mountpoint);
        if (!m->mountpoint)
                return log_error_errno(ENOMEM, "Out of memory");
        r = fusefs_start(m->fs);
        if (r < 0)
                return log_error_errno(r, "Failed to start the FUSE workers: %m");

        log_info("Mounted %s with %" PRIu64 " tracks from the catalog%s in %.0f ms (%.0f ms CPU)%s",
                 m->config.mountpoint, m->track_count, from_snapshot ? " (its tree snapshot)" : "",
                 (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0, (double) (now_usec(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / 1000.0,
                 m->first_scan ? " (first scan: the tree fills as it proceeds)" : "");
        return 0;
}

int manager_new(ManagerArgs *args, Manager **ret) {
        Manager *m = calloc(1, sizeof *m);
        int r;

        if (!m)
                return log_error_errno(ENOMEM, "Out of memory");

        m->args = *args;
        manager_args_init(args);
        m->lock_fd = m->worker_efd = m->stop_efd = m->cache_efd = -1;
        m->state = MUSICFS_STATE_STARTING;
        atomic_init(&m->cancel, false);
        atomic_init(&m->scan_cancel, false);
        atomic_init(&m->scan_files, 0);
        atomic_init(&m->published_tracks, 0);
        atomic_init(&m->scan_batch, 256);
        pthread_mutex_init(&m->lock, NULL);
        pthread_mutex_init(&m->fs_lock, NULL);
        pthread_cond_init(&m->wake, NULL);

        r = polkit_registry_new(&m->polkit);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the polkit registry: %m");
                manager_free(m);
                return r;
        }

        r = manager_startup(m);
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

/* ---- state, status ---- */

void manager_set_state(Manager *m, const char *state) {
        if (streq_ptr(m->state, state))
                return;
        log_debug("State %s -> %s", m->state, state);
        m->state = state;
        bus_manager_emit_changed(m, "State");
}

/* D11: some origins down is degraded, all of them offline (cached bytes would still be served). */
static void manager_update_state(Manager *m) {
        size_t down = 0;

        if (m->stopping || !m->ready_sent)
                return;
        for (size_t i = 0; i < m->n_managed; i++)
                if (m->managed[i]->health == ORIGIN_UNHEALTHY)
                        down++;
        /* A cache disk that failed (passthrough for a reason other than the switch) degrades too:
         * reads still work, but nothing new is kept for offline use. */
        bool cache_failed = m->cache_reason_shown != CACHE_PASSTHROUGH_NONE &&
                            m->cache_reason_shown != CACHE_PASSTHROUGH_MANUAL;
        bool was_offline = streq_ptr(m->state, MUSICFS_STATE_OFFLINE);
        bool offline = m->n_managed > 0 && down == m->n_managed;
        manager_set_state(m, offline ? MUSICFS_STATE_OFFLINE :
                             down > 0 || cache_failed ? MUSICFS_STATE_DEGRADED : MUSICFS_STATE_READY);
        if (offline == was_offline)
                return;
        if (offline)
                log_warning("Offline: all %zu origin(s) are unhealthy. Cached bytes are still served, other reads "
                            "fail with EIO (logged once a minute); checking the origins every %u s",
                            m->n_managed, health_interval_sec(m, true));
        else
                log_notice("Back online: %zu of %zu origin(s) are up", m->n_managed - down, m->n_managed);
        manager_arm_health_timer(m);
}

/* STATUS= goes out on changes once READY=1 is sent; before that it rides along with READY=1. */
static void manager_update_status(Manager *m) {
        _cleanup_free_ char *s = NULL;
        int r;

        if (m->stopping)
                r = asprintf(&s, "Stopping");
        else if (m->progress_origin)
                r = asprintf(&s, "Scanning %s: %" PRIu64 " files", m->progress_origin, m->progress_files);
        else
                r = asprintf(&s, "Serving %" PRIu64 " tracks", m->track_count);
        if (r < 0)
                return;
        if (streq_ptr(s, m->status))
                return;
        free(m->status);
        m->status = TAKE_PTR(s);
        if (m->ready_sent)
                (void) sd_notifyf(false, "STATUS=%s", m->status);
}

static int on_progress_timer(sd_event_source *s, uint64_t usec, void *userdata);

/* Announces ScanProgress: a new origin (or the end of a scan) at once, a moving file count at most
 * every PROGRESS_INTERVAL_USEC, and the last value always, from a timer. */
static void manager_emit_progress(Manager *m) {
        bool origin_changed = !streq_ptr(m->progress_origin, m->emitted_origin);
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        int r;

        if (!origin_changed && m->progress_files == m->emitted_files && m->progress_known == m->emitted_known)
                return;
        if (!origin_changed && now - m->progress_emitted_usec < PROGRESS_INTERVAL_USEC) {
                int enabled = SD_EVENT_OFF;
                uint64_t when = m->progress_emitted_usec + PROGRESS_INTERVAL_USEC;

                if (m->progress_source)
                        (void) sd_event_source_get_enabled(m->progress_source, &enabled);
                if (enabled != SD_EVENT_OFF)
                        return;
                if (!m->progress_source)
                        r = sd_event_add_time(m->event, &m->progress_source, CLOCK_MONOTONIC, when, 0,
                                              on_progress_timer, m);
                else {
                        r = sd_event_source_set_time(m->progress_source, when);
                        if (r >= 0)
                                r = sd_event_source_set_enabled(m->progress_source, SD_EVENT_ONESHOT);
                }
                if (r >= 0)
                        return;
                log_debug_errno(r, "Failed to defer ScanProgress, announcing it now: %m");
        }

        if (strdup_to(&m->emitted_origin, m->progress_origin) < 0)
                return;
        m->emitted_files = m->progress_files;
        m->emitted_known = m->progress_known;
        m->progress_emitted_usec = now;
        bus_manager_emit_changed(m, "ScanProgress");
}

static int on_progress_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        manager_emit_progress(userdata);
        return 0;
}

static void manager_update_progress(Manager *m, int64_t scanning_id, uint64_t known) {
        ManagedOrigin *mo = scanning_id > 0 ? manager_find_origin_by_id(m, scanning_id) : NULL;

        if (!streq_ptr(mo ? mo->origin->name : NULL, m->progress_origin) &&
            strdup_to(&m->progress_origin, mo ? mo->origin->name : NULL) < 0)
                return;
        m->progress_files = mo ? atomic_load(&m->scan_files) : 0;
        m->progress_known = mo ? known : 0;
        manager_emit_progress(m);
}

static void manager_answer_removals(Manager *m, RemovalJob *done, size_t n_done) {
        for (size_t i = 0; i < n_done; i++) {
                for (size_t j = 0; j < m->n_pending_removals; j++) {
                        PendingRemoval *p = &m->pending_removals[j];
                        if (p->id != done[i].id)
                                continue;
                        bus_manager_reply_remove_origin(m, p->call, p->name, done[i].result);
                        sd_bus_message_unref(p->call);
                        free(p->name);
                        memmove(p, p + 1, (m->n_pending_removals - j - 1) * sizeof *p);
                        m->n_pending_removals--;
                        break;
                }
                free(done[i].name);
        }
        free(done);
}

/* Everything the worker published since the last time, in the order a client wants to see it: the
 * tree's counts, then the scan's progress, then the ends of scans and removals. */
static void manager_sync_from_worker(Manager *m) {
        _cleanup_free_ bool *changed = calloc(m->n_managed + 1, sizeof *changed);
        ScanFinished *finished;
        RemovalJob *done;
        size_t n_finished, n_done;
        int64_t scanning_id, last_begun_id;
        uint64_t known, scans_begun, last_begun_known;

        if (!changed)
                return (void) log_error_errno(ENOMEM, "Out of memory");

        pthread_mutex_lock(&m->lock);
        if (m->counts_changed) {
                manager_apply_counts(m, m->counts, m->n_counts, changed);
                m->counts_changed = false;
        }
        scanning_id = m->scanning_id;
        known = m->scanning_known;
        scans_begun = m->scans_begun;
        last_begun_id = m->last_begun_id;
        last_begun_known = m->last_begun_known;
        finished = TAKE_PTR(m->finished);
        n_finished = m->n_finished;
        m->n_finished = 0;
        done = TAKE_PTR(m->removals_done);
        n_done = m->n_removals_done;
        m->n_removals_done = 0;
        pthread_mutex_unlock(&m->lock);

        uint64_t tracks = atomic_load(&m->published_tracks);
        if (tracks != m->track_count) {
                m->track_count = tracks;
                bus_manager_emit_changed(m, "TrackCount");
        }
        for (size_t i = 0; i < m->n_managed; i++)
                if (changed[i])
                        bus_origin_emit_changed(m, m->managed[i], (char *[]) { (char *) "TrackCount", NULL });

        /* A scan that began and ended between two wake-ups still shows that it ran. */
        if (scans_begun != m->scans_announced && last_begun_id != scanning_id)
                manager_update_progress(m, last_begun_id, last_begun_known);
        m->scans_announced = scans_begun;
        manager_update_progress(m, scanning_id, known);

        for (size_t i = 0; i < n_finished; i++) {
                /* A scan of an origin removed meanwhile has nothing left to announce. */
                if (manager_find_origin_by_id(m, finished[i].origin_id))
                        bus_manager_emit_scan_finished(m, finished[i].name, finished[i].added, finished[i].changed,
                                                       finished[i].removed);
                free(finished[i].name);
        }
        free(finished);

        manager_answer_removals(m, done, n_done);
}

static void manager_check_ready(Manager *m) {
        if (m->ready_sent || m->stopping || !m->name_acquired || !m->fs)
                return;
        manager_sync_from_worker(m);
        manager_set_state(m, MUSICFS_STATE_READY);
        manager_update_status(m);
        m->ready_sent = true;
        manager_update_state(m);
        (void) sd_notifyf(false, "READY=1\nSTATUS=%s", m->status ?: "Serving");
        log_info("Ready: %" PRIu64 " tracks at %s, %s on the %s bus", m->track_count, m->config.mountpoint,
                 MUSICFS_BUS_NAME, m->config.user_bus ? "user" : "system");
}

/* ---- the worker: scans, removals and tree rebuilds ---- */

static void worker_notify(Manager *m) {
        if (eventfd_write(m->worker_efd, 1) < 0)
                log_debug_errno(errno, "Failed to wake the event loop, ignoring: %m");
}

static void worker_rebuild(Manager *m) {
        _cleanup_(tree_unrefp) Tree *tree = NULL;
        OriginCount *counts = NULL;
        size_t n_counts = 0;
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        int r;

        pthread_mutex_lock(&m->lock);
        if (m->pending_template) {
                template_free(m->template);
                m->template = TAKE_PTR(m->pending_template);
        }
        m->rebuild_requested = false;
        pthread_mutex_unlock(&m->lock);

        _cleanup_free_ char *inputs = NULL;
        uint64_t changes = UINT64_MAX;
        r = manager_build_tree(m, m->template, &tree, NULL, &counts, &n_counts, &inputs, &changes);
        if (r < 0) {
                log_warning("Keeping the current tree");
                return;
        }
        /* The store owns the new tree from here; only this thread publishes, so it stays alive. */
        Tree *published = tree;
        Tree *old = tree_store_publish(m->trees, TAKE_PTR(tree));
        /* The loop may unmount meanwhile: it takes the filesystem away under the same lock. */
        pthread_mutex_lock(&m->fs_lock);
        if (m->fs)
                fusefs_tree_changed(m->fs, old, published);
        pthread_mutex_unlock(&m->fs_lock);
        tree_unref(old);
        /* Off the loop: resolving the pins walks the tree. The cache is closed only after this
         * thread stops. */
        r = cache_pins_refresh(m->cache, published);
        if (r < 0)
                log_warning_errno(r, "Failed to resolve the pinned paths in the new tree, ignoring: %m");

        pthread_mutex_lock(&m->lock);
        free(m->counts);
        m->counts = counts;
        m->n_counts = n_counts;
        m->counts_changed = true;
        free(m->tree_inputs);
        m->tree_inputs = TAKE_PTR(inputs);
        m->tree_changes = changes;
        pthread_mutex_unlock(&m->lock);

        atomic_store(&m->published_tracks, tree_track_count(published));
        log_debug("Published a tree of %" PRIu64 " tracks in %.0f ms", tree_track_count(published),
                  (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0);
        worker_notify(m);
}

/* Drops the catalog rows of removed origins (except the one being scanned, whose scan stops first)
 * and publishes the tree without them; the loop answers the callers. */
static void worker_process_removals(Manager *m, int64_t skip_id) {
        RemovalJob *jobs = NULL;
        size_t n_jobs = 0, kept = 0;

        pthread_mutex_lock(&m->lock);
        if (skip_id == 0) {
                jobs = TAKE_PTR(m->removals);
                n_jobs = m->n_removals;
                m->n_removals = 0;
        } else if (m->n_removals > 0) {
                /* Out of memory, nothing is taken: the removals wait for the end of the scan. */
                jobs = calloc(m->n_removals, sizeof *jobs);
                for (size_t i = 0; jobs && i < m->n_removals; i++) {
                        if (m->removals[i].id == skip_id)
                                m->removals[kept++] = m->removals[i];
                        else
                                jobs[n_jobs++] = m->removals[i];
                }
                if (jobs)
                        m->n_removals = kept;
        }
        pthread_mutex_unlock(&m->lock);

        if (n_jobs == 0) {
                free(jobs);
                return;
        }

        for (size_t i = 0; i < n_jobs; i++) {
                int r = catalog_origin_remove(m->catalog, jobs[i].name);
                if (r == -ENOENT)
                        r = 0;
                /* Its id may be handed out again: an unfinished scan of it must not look resumable. */
                if (r >= 0)
                        (void) catalog_scan_checkpoint_clear(m->catalog, jobs[i].id);
                if (r < 0)
                        log_warning_errno(r, "Failed to drop the files of removed origin %s from the catalog: %m",
                                          jobs[i].name);
                else
                        log_info("Origin %s removed from the catalog", jobs[i].name);
                jobs[i].result = r;
        }
        worker_rebuild(m);

        pthread_mutex_lock(&m->lock);
        RemovalJob *grown = reallocarray(m->removals_done, m->n_removals_done + n_jobs, sizeof *grown);
        if (grown) {
                m->removals_done = grown;
                memcpy(m->removals_done + m->n_removals_done, jobs, n_jobs * sizeof *jobs);
                m->n_removals_done += n_jobs;
        } else {
                /* The callers get no answer (their calls time out), but nothing leaks. */
                log_error_errno(ENOMEM, "Out of memory; cannot answer RemoveOrigin");
                for (size_t i = 0; i < n_jobs; i++)
                        free(jobs[i].name);
        }
        pthread_mutex_unlock(&m->lock);
        free(jobs);
        worker_notify(m);
}

typedef struct ScanContext {
        Manager *m;
        int64_t origin_id;
        bool publish_while_scanning;
        uint64_t last_publish;
} ScanContext;

static void on_batch_committed(const ScanStats *stats, void *userdata) {
        ScanContext *c = userdata;
        Manager *m = c->m;

        atomic_store(&m->scan_files, stats->seen);
        worker_notify(m);

        /* A RemoveOrigin of another origin does not wait for the end of this scan. */
        worker_process_removals(m, c->origin_id);

        if (c->publish_while_scanning && now_usec(CLOCK_MONOTONIC) - c->last_publish >= FIRST_SCAN_PUBLISH_USEC) {
                worker_rebuild(m);
                c->last_publish = now_usec(CLOCK_MONOTONIC);
        }
}

static void worker_finished(Manager *m, const Origin *o, int result, const ScanStats *st) {
        ScanFinished f = {
                .origin_id = o->id,
                .name = strdup(o->name),
                .result = result,
                .added = st->added,
                .changed = st->changed,
                .removed = st->removed,
        };

        if (!f.name)
                return (void) log_error_errno(ENOMEM, "Out of memory; no ScanFinished for %s", o->name);
        pthread_mutex_lock(&m->lock);
        ScanFinished *grown = reallocarray(m->finished, m->n_finished + 1, sizeof *grown);
        if (grown) {
                m->finished = grown;
                m->finished[m->n_finished++] = f;
        }
        pthread_mutex_unlock(&m->lock);
        if (!grown) {
                free(f.name);
                log_error_errno(ENOMEM, "Out of memory; no ScanFinished for %s", o->name);
        }
        /* The rebuild before this woke the loop already, which may have looked before the entry was
         * there: without a wake of its own, the last sync of a burst was announced only by whatever
         * woke the loop next (test_signal_storm). */
        worker_notify(m);
}

static void worker_scan_one(Manager *m, int64_t id, uint64_t known) {
        Origin *o = origin_set_get_ref(m->origins, id);
        ScanStats st = {};
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        int r;

        if (o) {
                /* A library that starts empty shows its files as they are found, not at the end. */
                ScanContext ctx = {
                        .m = m,
                        .origin_id = id,
                        .publish_while_scanning = m->first_scan || known == 0,
                        .last_publish = now_usec(CLOCK_MONOTONIC),
                };
                ScanHooks hooks = { .batch_committed = on_batch_committed, .userdata = &ctx, .cancel = &m->scan_cancel };

                atomic_store(&m->scan_files, 0);
                worker_notify(m);

                r = scan_origin(m->catalog, o, atomic_load(&m->scan_batch), &hooks, &st);
                uint64_t scan_usec = now_usec(CLOCK_MONOTONIC) - t0;
                /* The scan held the origin's catalog rows in a table (~50 MB at 100k tracks): hand
                 * that heap back rather than carry it until the next scan. */
                (void) malloc_trim(0);
                uint64_t changes = st.added + st.changed + st.removed;
                pthread_mutex_lock(&m->lock);
                m->scanning_id = 0;
                pthread_mutex_unlock(&m->lock);

                /* The same catalog gives the same tree: at 100k tracks a rebuild is a second of CPU. A
                 * cancelled scan belongs to an origin being removed (which publishes anyway) or to a
                 * stop. */
                if (r != -ECANCELED && !atomic_load(&m->cancel)) {
                        if (changes > 0 || r < 0 || ctx.publish_while_scanning)
                                worker_rebuild(m);
                        else
                                log_debug("The scan of %s changed nothing; keeping the tree", o->name);
                        worker_finished(m, o, r, &st);
                }
                /* Logged once the tree shows what the scan found: "scanned" means visible. */
                if (r == -ECANCELED)
                        log_info("Scan of origin %s cancelled after %" PRIu64 " files", o->name, st.seen);
                else if (r < 0)
                        /* Batches committed before the failure stay in the catalog. */
                        log_warning_errno(r, "Scan of origin %s failed after %" PRIu64 " files: %m", o->name, st.seen);
                else
                        scan_stats_log(o->name, &st, scan_usec);
        } else {
                pthread_mutex_lock(&m->lock);
                m->scanning_id = 0;
                pthread_mutex_unlock(&m->lock);
        }

        worker_notify(m);
        origin_unref(o);
}

/* ---- sync: targeted scans of what the watcher reported (daemon/sync/watch.h) ---- */

static void sync_request_done(SyncRequest *q) {
        for (size_t i = 0; i < q->n_paths; i++)
                free(q->paths[i]);
        free(q->paths);
        *q = (SyncRequest) {};
}

/* Under m->lock. */
static void manager_drop_sync_locked(Manager *m, int64_t origin_id) {
        size_t kept = 0;
        for (size_t i = 0; i < m->n_sync_queue; i++) {
                if (m->sync_queue[i].origin_id == origin_id)
                        sync_request_done(&m->sync_queue[i]);
                else
                        m->sync_queue[kept++] = m->sync_queue[i];
        }
        m->n_sync_queue = kept;
}

/* Worker thread: scans the changed paths and, when that changed the catalog, publishes the tree
 * (which invalidates the kernel's caches of what moved) and announces ScanFinished. */
static void worker_sync_one(Manager *m, const SyncRequest *q) {
        Origin *o = origin_set_get_ref(m->origins, q->origin_id);
        ScanStats st = {};
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        int r;

        if (!o)
                return;
        /* Only a stop cancels it; a RemoveOrigin waits for it (it is short) and then drops the rows. */
        ScanHooks hooks = { .cancel = &m->cancel };
        r = scan_origin_paths(m->catalog, o, (const char *const *) q->paths, q->n_paths, atomic_load(&m->scan_batch),
                              &hooks, &st);
        uint64_t changes = st.added + st.changed + st.removed;
        if (r == -ECANCELED || atomic_load(&m->cancel)) {
                origin_unref(o);
                return;
        }
        if (r < 0)
                log_warning_errno(r, "Origin %s: sync of %zu changed paths failed: %m", o->name, q->n_paths);
        else if (changes > 0)
                log_info("Origin %s: synced changes in %.0f ms: %" PRIu64 " added, %" PRIu64 " changed, %" PRIu64 " removed",
                         o->name, (double) (now_usec(CLOCK_MONOTONIC) - t0) / 1000.0, st.added, st.changed, st.removed);
        if (changes > 0) {
                worker_rebuild(m);
                worker_finished(m, o, r, &st);
        }
        /* A request for the whole origin (an overflowed watch) was a full scan: said like one. */
        if (r >= 0)
                for (size_t i = 0; i < q->n_paths; i++)
                        if (!q->paths[i][0]) {
                                scan_stats_log(o->name, &st, now_usec(CLOCK_MONOTONIC) - t0);
                                break;
                        }
        origin_unref(o);
}

static void *worker_main(void *userdata) {
        Manager *m = userdata;
        thread_set_name("mfs-scan");

        /* After an unclean stop, the search index check that catalog_open() left for after the mount
         * (D6), before the first scan; a stop cuts it short. Logs its own outcome. */
        (void) catalog_search_repair_if_due(m->catalog, &m->cancel);

        pthread_mutex_lock(&m->lock);
        for (;;) {
                while (!atomic_load(&m->cancel) && !m->rebuild_requested && m->n_scan_queue == 0 && m->n_removals == 0 &&
                       m->n_sync_queue == 0)
                        pthread_cond_wait(&m->wake, &m->lock);
                if (atomic_load(&m->cancel))
                        break;

                if (m->n_removals > 0) {
                        pthread_mutex_unlock(&m->lock);
                        worker_process_removals(m, 0);
                        pthread_mutex_lock(&m->lock);
                        continue;
                }

                /* Before the scans: a new template, or the tree read from a snapshot, is checked
                 * against the catalog first, not after a rescan that can take minutes. */
                if (m->rebuild_requested) {
                        pthread_mutex_unlock(&m->lock);
                        worker_rebuild(m);
                        pthread_mutex_lock(&m->lock);
                        continue;
                }

                if (m->n_scan_queue > 0) {
                        int64_t id = m->scan_queue[0];
                        memmove(m->scan_queue, m->scan_queue + 1, (m->n_scan_queue - 1) * sizeof *m->scan_queue);
                        m->n_scan_queue--;
                        /* Under the lock, so that a RemoveOrigin of this origin sees it and cancels. */
                        m->scanning_id = m->last_begun_id = id;
                        m->scanning_known = m->last_begun_known = count_of(m->counts, m->n_counts, id);
                        m->scans_begun++;
                        uint64_t known = m->scanning_known;
                        atomic_store(&m->scan_cancel, false);
                        /* The full scan walks after these changes were reported: it covers them. */
                        manager_drop_sync_locked(m, id);
                        pthread_mutex_unlock(&m->lock);

                        worker_scan_one(m, id, known);

                        pthread_mutex_lock(&m->lock);
                        if (m->n_scan_queue == 0)
                                m->first_scan = false;
                        continue;
                }

                if (m->n_sync_queue > 0) {
                        SyncRequest q = m->sync_queue[0];
                        memmove(m->sync_queue, m->sync_queue + 1, (m->n_sync_queue - 1) * sizeof *m->sync_queue);
                        m->n_sync_queue--;
                        pthread_mutex_unlock(&m->lock);

                        worker_sync_one(m, &q);
                        sync_request_done(&q);

                        pthread_mutex_lock(&m->lock);
                }
        }
        pthread_mutex_unlock(&m->lock);
        return NULL;
}

/* Under m->lock. */
static int manager_queue_scan_locked(Manager *m, int64_t id) {
        for (size_t i = 0; i < m->n_scan_queue; i++)
                if (m->scan_queue[i] == id)
                        return 0;
        int64_t *grown = reallocarray(m->scan_queue, m->n_scan_queue + 1, sizeof *grown);
        if (!grown)
                return -ENOMEM;
        m->scan_queue = grown;
        m->scan_queue[m->n_scan_queue++] = id;
        return 0;
}

static int manager_queue_scans(Manager *m, ManagedOrigin *only) {
        int r = 0;

        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; r >= 0 && i < m->n_managed; i++)
                if (!only || m->managed[i] == only)
                        r = manager_queue_scan_locked(m, m->managed[i]->origin->id);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        return r;
}

/* Under m->lock: adds paths to the origin's pending targeted scan. A full scan of it already queued
 * covers them; a set that grows past the watcher's own bound becomes one. */
static int manager_queue_sync_locked(Manager *m, int64_t origin_id, const char *const *paths, size_t n_paths) {
        SyncRequest *q = NULL;

        for (size_t i = 0; i < m->n_scan_queue; i++)
                if (m->scan_queue[i] == origin_id)
                        return 0;
        for (size_t i = 0; i < m->n_sync_queue && !q; i++)
                if (m->sync_queue[i].origin_id == origin_id)
                        q = &m->sync_queue[i];
        if (!q) {
                SyncRequest *grown = reallocarray(m->sync_queue, m->n_sync_queue + 1, sizeof *grown);
                if (!grown)
                        return manager_queue_scan_locked(m, origin_id);
                m->sync_queue = grown;
                q = &m->sync_queue[m->n_sync_queue++];
                *q = (SyncRequest) { .origin_id = origin_id };
        }
        if (q->n_paths + n_paths > WATCH_MAX_PENDING_PATHS) {
                manager_drop_sync_locked(m, origin_id);
                return manager_queue_scan_locked(m, origin_id);
        }
        char **grown = reallocarray(q->paths, q->n_paths + n_paths, sizeof *grown);
        if (!grown) {
                manager_drop_sync_locked(m, origin_id);
                return manager_queue_scan_locked(m, origin_id);
        }
        q->paths = grown;
        for (size_t i = 0; i < n_paths; i++) {
                q->paths[q->n_paths] = strdup(paths[i]);
                if (!q->paths[q->n_paths]) {
                        manager_drop_sync_locked(m, origin_id);
                        return manager_queue_scan_locked(m, origin_id);
                }
                q->n_paths++;
        }
        return 0;
}

/* The watcher's thread: changes become targeted scans, overflows and polls full ones. */
static void on_watch_report(int64_t origin_id, WatchReport report, const char *const *paths, size_t n_paths,
                            void *userdata) {
        Manager *m = userdata;
        int r = 0;

        /* The watcher logged these; the health check, the watcher's retries or the polls take over. */
        if (report == WATCH_REPORT_LOST) {
                pthread_mutex_lock(&m->lock);
                bool known = false;
                for (size_t i = 0; i < m->n_watch_lost; i++)
                        known = known || m->watch_lost[i] == origin_id;
                int64_t *grown = known ? NULL : reallocarray(m->watch_lost, m->n_watch_lost + 1, sizeof *grown);
                if (grown) {
                        m->watch_lost = grown;
                        m->watch_lost[m->n_watch_lost++] = origin_id;
                }
                pthread_mutex_unlock(&m->lock);
                return;
        }
        if (report == WATCH_REPORT_POLLING)
                return;

        pthread_mutex_lock(&m->lock);
        if (report == WATCH_REPORT_RESCAN)
                r = manager_queue_scan_locked(m, origin_id);
        else
                r = manager_queue_sync_locked(m, origin_id, paths, n_paths);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        if (r < 0)
                log_warning_errno(r, "Failed to queue the scan of a change; Rescan to catch up: %m");
}

/* Loop thread. The origin's watch mode: its [origin] watch key, else inotify for a local directory,
 * except on a network or FUSE file system (5.4) and for remote kinds, which are polled. */
static void manager_watch_origin(Manager *m, const Origin *o) {
        unsigned interval = m->config.poll_interval;
        WatchMode mode = WATCH_INOTIFY;
        bool explicit = false;
        int r;

        if (m->stopping || !m->watcher)
                return;
        for (size_t i = 0; i < m->config.n_origins; i++) {
                const OriginConfig *oc = &m->config.origins[i];
                if (!streq_ptr(oc->name, o->name))
                        continue;
                if (oc->watch) {
                        mode = watch_mode_from_string(oc->watch);
                        explicit = true;
                }
                if (oc->poll_interval > 0)
                        interval = oc->poll_interval;
        }
        if (!explicit && strcmp(o->ops->kind, "local") != 0)
                mode = WATCH_POLL;
        else if (!explicit && watch_dir_fs_is_remote(o->url) > 0) {
                log_notice("Origin %s: %s is on a network or FUSE file system, where inotify misses other hosts' "
                           "changes; polling it every %u s (set watch = inotify to override)", o->name, o->url, interval);
                mode = WATCH_POLL;
        }
        if (mode < 0)
                mode = WATCH_INOTIFY;
        r = watcher_add(m->watcher, o->id, o->name, o->url, mode, (uint64_t) (interval ?: 300) * UINT64_C(1000000));
        if (r < 0)
                log_warning_errno(r, "Origin %s: cannot watch it for changes; Rescan to catch up: %m", o->name);
}

static int manager_start_watcher(Manager *m) {
        WatcherOptions opts = { .report = on_watch_report, .userdata = m };
        int r;

        r = watcher_new(&opts, &m->watcher);
        if (r < 0)
                return log_warning_errno(r, "Failed to start watching origins for changes; only Rescan and restarts "
                                         "will see them: %m");
        for (size_t i = 0; i < m->n_managed; i++)
                manager_watch_origin(m, m->managed[i]->origin);
        return 0;
}

int manager_rescan(Manager *m, const char *name) {
        ManagedOrigin *mo = NULL;

        if (name && *name) {
                mo = manager_find_origin(m, name);
                if (!mo)
                        return -ENXIO;
        }
        log_info("Rescan of %s requested", mo ? mo->origin->name : "every origin");
        return manager_queue_scans(m, mo);
}

static void manager_stop_worker(Manager *m) {
        if (!m->worker_started)
                return;
        pthread_mutex_lock(&m->lock);
        atomic_store(&m->cancel, true);
        atomic_store(&m->scan_cancel, true);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->worker, NULL);
        m->worker_started = false;
}

static int on_worker_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        eventfd_t v;

        (void) eventfd_read(fd, &v);
        manager_sync_from_worker(m);
        manager_update_status(m);
        return 0;
}

/* ---- adding and removing origins at runtime ---- */

static int manager_add_origin_check(Manager *m, const char *name) {
        if (manager_find_origin(m, name))
                return -EEXIST;
        /* Its rows are dropped by name; a new origin of that name must not lose its own. */
        for (size_t i = 0; i < m->n_pending_removals; i++)
                if (streq_ptr(m->pending_removals[i].name, name))
                        return -EBUSY;
        return 0;
}

static int manager_add_origin_object(Manager *m, Origin *origin, ManagedOrigin **ret);

int manager_add_origin(Manager *m, const char *name, const char *dir, unsigned priority, ManagedOrigin **ret) {
        Origin *o = NULL;
        int r;

        r = manager_add_origin_check(m, name);
        if (r < 0)
                return r;
        r = origin_local_new(name, dir, priority, &o);
        if (r < 0)
                return r;
        return manager_add_origin_object(m, o, ret);
}

int manager_add_s3_origin(Manager *m, const char *name, const OriginS3Config *s3, unsigned priority, ManagedOrigin **ret) {
        const OriginConfig oc = { .name = (char *) name, .kind = (char *) "s3", .priority = priority, .s3 = *s3 };
        Origin *o = NULL;
        int r;

        r = manager_add_origin_check(m, name);
        if (r < 0)
                return r;
        r = manager_origin_s3_new(&oc, &o);
        if (r < 0)
                return r;
        return manager_add_origin_object(m, o, ret);
}

int manager_add_sftp_origin(Manager *m, const char *name, const OriginSftpConfig *sftp, const char *path,
                            unsigned priority, ManagedOrigin **ret) {
        const OriginConfig oc = { .name = (char *) name, .kind = (char *) "sftp", .path = (char *) path,
                                  .priority = priority, .sftp = *sftp };
        Origin *o = NULL;
        int r;

        r = manager_add_origin_check(m, name);
        if (r < 0)
                return r;
        r = manager_origin_sftp_new(&oc, &o);
        if (r < 0)
                return r;
        return manager_add_origin_object(m, o, ret);
}

/* Takes origin, also on failure. */
static int manager_add_origin_object(Manager *m, Origin *origin, ManagedOrigin **ret) {
        _cleanup_(origin_freep) Origin *o = origin;
        _cleanup_(managed_origin_freep) ManagedOrigin *mo = NULL;
        const char *name = o->name;
        unsigned priority = o->priority;
        int64_t id;
        int r;

        r = manager_add_origin_check(m, name);
        if (r < 0)
                return r;
        /* Rows left under this name (an origin configured once, not now) describe another
         * directory as far as we know: start from nothing. */
        r = catalog_origin_remove(m->catalog, name);
        if (r < 0 && r != -ENOENT)
                return log_error_errno(r, "Failed to drop old catalog rows of origin %s: %m", name);
        r = catalog_origin_ensure(m->catalog, name, o->url, priority, &id);
        if (r < 0)
                return log_error_errno(r, "Failed to record origin %s in the catalog: %m", name);
        o->id = id;

        r = managed_origin_new(o, &mo);
        if (r < 0)
                return r;
        r = manager_insert_managed(m, mo);
        if (r < 0)
                return r;
        r = origin_set_add(m->origins, o);
        if (r < 0) {
                manager_remove_managed(m, mo);
                return r;
        }
        TAKE_PTR(o);
        ManagedOrigin *added = TAKE_PTR(mo);

        log_info("Added origin %s (%s, priority %u); scanning it", name, added->url, priority);
        bus_origin_emit_added(m, added);
        bus_manager_emit_changed(m, "Origins");
        manager_update_state(m);
        r = manager_queue_scans(m, added);
        if (r < 0)
                log_warning_errno(r, "Failed to queue a scan of origin %s; Rescan it: %m", name);
        manager_watch_origin(m, added->origin);
        if (ret)
                *ret = added;
        return 0;
}

static void health_check_answer(Manager *m, HealthCheck *c, const char *name, const ManagedOrigin *mo);
static void health_check_detach(HealthCheck *c);

int manager_remove_origin(Manager *m, const char *name, sd_bus_message *call) {
        ManagedOrigin *mo = manager_find_origin(m, name);
        RemovalJob job = {};
        int r;

        if (!mo)
                return -ENXIO;

        /* Everything that can fail first, so that a failure leaves the origin as it was. */
        PendingRemoval *grown = reallocarray(m->pending_removals, m->n_pending_removals + 1, sizeof *grown);
        if (!grown)
                return -ENOMEM;
        m->pending_removals = grown;
        _cleanup_free_ char *pending_name = strdup(name);
        job.name = strdup(name);
        if (!pending_name || !job.name) {
                free(job.name);
                return -ENOMEM;
        }
        job.id = mo->origin->id;

        pthread_mutex_lock(&m->lock);
        RemovalJob *jobs = reallocarray(m->removals, m->n_removals + 1, sizeof *jobs);
        if (jobs) {
                m->removals = jobs;
                m->removals[m->n_removals++] = job;
                /* Its queued scan goes; a running one stops at the next file. */
                size_t kept = 0;
                for (size_t i = 0; i < m->n_scan_queue; i++)
                        if (m->scan_queue[i] != job.id)
                                m->scan_queue[kept++] = m->scan_queue[i];
                m->n_scan_queue = kept;
                if (m->scanning_id == job.id)
                        atomic_store(&m->scan_cancel, true);
                manager_drop_sync_locked(m, job.id);
                pthread_cond_broadcast(&m->wake);
        }
        pthread_mutex_unlock(&m->lock);
        if (!jobs) {
                free(job.name);
                return -ENOMEM;
        }

        if (!m->stopping && m->watcher)
                (void) watcher_remove(m->watcher, job.id);
        /* InterfacesRemoved needs the object still there. */
        bus_origin_emit_removed(m, mo);
        r = origin_set_remove(m->origins, job.id);
        if (r < 0)
                log_warning_errno(r, "Origin %s was not in the origin set: %m", name);
        manager_remove_managed(m, mo);
        if (mo->check) {
                health_check_answer(m, mo->check, name, NULL);
                health_check_detach(mo->check);
                mo->check = NULL;
        }
        m->pending_removals[m->n_pending_removals++] = (PendingRemoval) {
                .id = job.id,
                .name = TAKE_PTR(pending_name),
                .call = sd_bus_message_ref(call),
        };

        log_info("Removing origin %s (%s)", name, mo->url);
        bus_manager_emit_changed(m, "Origins");
        manager_update_state(m);
        managed_origin_free(mo);
        return 0;
}

/* ---- health checks ---- */

/* Checks run on short-lived detached threads, because origin_check() can hang on a dead network
 * filesystem; the loop answers from a timer if one takes too long. The queue outlives the manager
 * while a check is still running. */
struct HealthQueue {
        pthread_mutex_t lock;
        atomic_uint n_ref;
        int efd;
        bool closed;            /* the manager is gone: checks that end free themselves */
        HealthCheck *done;      /* checks that ended, for the loop */
};

struct HealthCheck {
        /* Set before the thread starts. */
        HealthQueue *queue;     /* the thread's reference */
        Origin *origin;         /* a reference */
        int64_t origin_id;
        /* Written by the thread before it queues the check, read by the loop after. */
        int result;
        uint64_t latency_usec;
        uint64_t checked_usec;  /* CLOCK_REALTIME */
        HealthCheck *next;
        bool queued;            /* under queue->lock */
        /* Loop thread only. */
        Manager *manager;
        sd_bus_message **waiters;
        size_t n_waiters;
        sd_event_source *timeout_source;
        bool timed_out;
};

static int health_queue_new(HealthQueue **ret) {
        HealthQueue *q = calloc(1, sizeof *q);
        if (!q)
                return -ENOMEM;
        q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (q->efd < 0) {
                int r = -errno;
                free(q);
                return r;
        }
        pthread_mutex_init(&q->lock, NULL);
        atomic_init(&q->n_ref, 1);
        *ret = q;
        return 0;
}

static HealthQueue *health_queue_ref(HealthQueue *q) {
        atomic_fetch_add(&q->n_ref, 1);
        return q;
}

static void health_queue_unref(HealthQueue *q) {
        if (!q || atomic_fetch_sub(&q->n_ref, 1) != 1)
                return;
        close(q->efd);
        pthread_mutex_destroy(&q->lock);
        free(q);
}

/* The loop's parts: the timer and the parked calls (unanswered: the caller answers first). */
static void health_check_detach(HealthCheck *c) {
        c->timeout_source = sd_event_source_disable_unref(c->timeout_source);
        for (size_t i = 0; i < c->n_waiters; i++)
                sd_bus_message_unref(c->waiters[i]);
        c->waiters = mfree(c->waiters);
        c->n_waiters = 0;
        c->manager = NULL;
}

static void health_check_free(HealthCheck *c) {
        if (!c)
                return;
        health_check_detach(c);
        origin_unref(c->origin);
        free(c);
}

static void health_check_answer(Manager *m, HealthCheck *c, const char *name, const ManagedOrigin *mo) {
        for (size_t i = 0; i < c->n_waiters; i++) {
                bus_manager_reply_check_origin(m, c->waiters[i], name, mo);
                sd_bus_message_unref(c->waiters[i]);
        }
        c->waiters = mfree(c->waiters);
        c->n_waiters = 0;
}

static void *health_check_main(void *userdata) {
        HealthCheck *c = userdata;
        HealthQueue *q = c->queue;
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        thread_set_name("mfs-health");

        c->result = origin_check(c->origin);
        c->latency_usec = now_usec(CLOCK_MONOTONIC) - t0;
        c->checked_usec = now_usec(CLOCK_REALTIME);

        pthread_mutex_lock(&q->lock);
        bool closed = q->closed;
        if (!closed) {
                /* From here the check is the loop's. */
                c->next = q->done;
                q->done = c;
                c->queued = true;
                if (eventfd_write(q->efd, 1) < 0)
                        log_error_errno(errno, "Failed to wake the event loop for a health check: %m");
        }
        pthread_mutex_unlock(&q->lock);
        if (closed)
                health_check_free(c);
        health_queue_unref(q);
        return NULL;
}

static char *health_error_describe(const ManagedOrigin *mo, int r, unsigned timeout_sec) {
        char buf[64];
        char *s = NULL;
        const char *why;

        switch (-r) {
        case ETIMEDOUT:
                snprintf(buf, sizeof buf, "the health check did not finish within %u s", timeout_sec);
                why = buf;
                break;
        case EHOSTUNREACH:
                why = "DNS lookup failed (or no route to the host)";
                break;
        case ENOENT:
                why = "the directory is gone";
                break;
        case ESTALE:
                why = "the directory at this path is not the one the origin opened (moved or replaced)";
                break;
        default:
                why = strerror(-r);
        }
        if (asprintf(&s, "%s: %s", mo->url, why) < 0)
                return NULL;
        return s;
}

static int on_health_recheck(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        ManagedOrigin *mo = NULL;

        for (size_t i = 0; i < m->n_managed; i++)
                if (m->managed[i]->recheck_source == s)
                        mo = m->managed[i];
        if (mo && !m->stopping)
                (void) manager_check_origin(m, mo, NULL);
        return 0;
}

/* A DNS failure is often a short glitch of the resolver: the origin is checked again after 5 s
 * rather than at the next round. */
static void manager_schedule_recheck(Manager *m, ManagedOrigin *mo) {
        int r;

        if (mo->recheck_source)
                r = sd_event_source_set_time_relative(mo->recheck_source, HEALTH_DNS_RECHECK_USEC);
        else
                r = sd_event_add_time_relative(m->event, &mo->recheck_source, CLOCK_MONOTONIC, HEALTH_DNS_RECHECK_USEC,
                                               0, on_health_recheck, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(mo->recheck_source, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Origin %s: cannot schedule the recheck after a DNS failure: %m", mo->origin->name);
}

/* D11: a local origin is unhealthy after one failed check, a remote one after three; one success
 * heals. A DNS failure keeps it degraded (4.2.5). */
static void manager_record_check(Manager *m, ManagedOrigin *mo, int r, uint64_t latency_usec, uint64_t when_usec) {
        OriginHealthState old = mo->health;
        unsigned threshold = strcmp(mo->origin->ops->kind, "local") == 0 ? 1 : 3;
        char *changed[8];
        size_t n = 0;

        changed[n++] = (char *) "LastCheckUSec";
        mo->last_check_usec = when_usec;
        if (latency_usec != mo->last_latency_usec) {
                mo->last_latency_usec = latency_usec;
                changed[n++] = (char *) "LastLatencyUSec";
        }

        if (r < 0) {
                _cleanup_free_ char *e = health_error_describe(mo, r, m->config.health_timeout);
                if (mo->consecutive_failures < UINT32_MAX) {
                        mo->consecutive_failures++;
                        changed[n++] = (char *) "ConsecutiveFailures";
                }
                if (e && !streq_ptr(e, mo->last_error)) {
                        free(mo->last_error);
                        mo->last_error = TAKE_PTR(e);
                        changed[n++] = (char *) "LastError";
                }
                /* 4.2.5: a name that does not resolve says more about the network or the resolver
                 * than about the origin: degraded, rechecked sooner, never unhealthy for that alone. */
                if (r == -EHOSTUNREACH)
                        mo->health = ORIGIN_DEGRADED;
                else
                        mo->health = mo->consecutive_failures >= threshold ? ORIGIN_UNHEALTHY : ORIGIN_DEGRADED;
        } else {
                if (mo->consecutive_failures > 0) {
                        mo->consecutive_failures = 0;
                        changed[n++] = (char *) "ConsecutiveFailures";
                }
                if (mo->last_error) {
                        mo->last_error = mfree(mo->last_error);
                        changed[n++] = (char *) "LastError";
                }
                mo->health = ORIGIN_HEALTHY;
        }
        if (mo->health != old)
                changed[n++] = (char *) "Health";
        changed[n] = NULL;
        /* Readers see it at once: they prefer healthy replicas and give up fast on unhealthy ones. */
        origin_set_health(mo->origin, mo->health);

        if (r == -EHOSTUNREACH && !m->stopping) {
                if (mo->consecutive_failures == 1)
                        log_warning("Origin %s: DNS failure (its host does not resolve or cannot be reached); "
                                    "checking again in %llu s", mo->origin->name, HEALTH_DNS_RECHECK_USEC / 1000000ULL);
                manager_schedule_recheck(m, mo);
        }

        bus_origin_emit_changed(m, mo, changed);
        /* 4.2.4: an origin that answers again gets its watches back if it had lost them (a no-op
         * otherwise). */
        bool watcher_rescans = false;
        if (r >= 0 && !m->stopping && m->watcher) {
                (void) watcher_reregister(m->watcher, mo->origin->id);
                pthread_mutex_lock(&m->lock);
                for (size_t i = 0; i < m->n_watch_lost; i++)
                        if (m->watch_lost[i] == mo->origin->id) {
                                m->watch_lost[i] = m->watch_lost[--m->n_watch_lost];
                                watcher_rescans = true;
                                break;
                        }
                pthread_mutex_unlock(&m->lock);
        }
        if (mo->health == old)
                return;
        if (r < 0)
                log_warning("Origin %s is %s: %s", mo->origin->name, origin_health_state_to_string(mo->health),
                            strna(mo->last_error));
        else
                log_notice("Origin %s is %s again", mo->origin->name, origin_health_state_to_string(mo->health));
        bus_manager_emit_origin_health_changed(m, mo->origin->name, origin_health_state_to_string(old),
                                               origin_health_state_to_string(mo->health));
        manager_update_state(m);
        /* While it was down, changes on it went unseen (failed polls and targeted scans): catch up,
         * unless the watcher lost its root and rescans it itself once re-registered (above). */
        if (watcher_rescans && old == ORIGIN_UNHEALTHY && mo->health == ORIGIN_HEALTHY)
                log_info("Origin %s is back: its watches are registered anew and it is rescanned to catch up",
                         mo->origin->name);
        else if (old == ORIGIN_UNHEALTHY && mo->health == ORIGIN_HEALTHY && !m->stopping) {
                log_info("Origin %s is back: rescanning it to catch up", mo->origin->name);
                int k = manager_rescan(m, mo->origin->name);
                if (k < 0)
                        log_warning_errno(k, "Failed to queue the catch-up rescan of origin %s; Rescan it: %m",
                                          mo->origin->name);
        }
}

static int on_health_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        HealthCheck *c = userdata;
        Manager *m = c->manager;
        ManagedOrigin *mo = m ? manager_find_origin_by_id(m, c->origin_id) : NULL;

        if (!mo || mo->check != c)
                return 0;
        /* It may still end, late: it stays this origin's check so that no second thread piles up on a
         * hung filesystem, but what it finds no longer counts. */
        c->timed_out = true;
        manager_record_check(m, mo, -ETIMEDOUT, HEALTH_CHECK_TIMEOUT_USEC(m), now_usec(CLOCK_REALTIME));
        health_check_answer(m, c, mo->origin->name, mo);
        return 0;
}

static int on_health_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        HealthQueue *q = m->health_queue;
        HealthCheck *done;
        eventfd_t v;

        (void) eventfd_read(fd, &v);
        pthread_mutex_lock(&q->lock);
        done = TAKE_PTR(q->done);
        pthread_mutex_unlock(&q->lock);

        while (done) {
                HealthCheck *c = done;
                ManagedOrigin *mo = manager_find_origin_by_id(m, c->origin_id);

                done = c->next;
                if (mo && mo->check == c) {
                        mo->check = NULL;
                        if (!c->timed_out)
                                manager_record_check(m, mo, c->result, c->latency_usec, c->checked_usec);
                        health_check_answer(m, c, mo->origin->name, mo);
                }
                health_check_free(c);
        }
        return 0;
}

int manager_check_origin(Manager *m, ManagedOrigin *mo, sd_bus_message *call) {
        HealthCheck *c = mo->check;
        pthread_attr_t attr;
        pthread_t thread;
        int r;

        if (c && c->timed_out)
                return 1;
        /* The last check failed and an operation of the origin still hangs in the kernel (origin.c
         * gave up on it, D10): another check would only hang beside it. The record stands until
         * the hung operation ends. */
        if (!c && mo->consecutive_failures > 0 && origin_stuck_ops(mo->origin) > 0)
                return call ? 1 : 0;
        /* call NULL: a periodic check, nobody to answer. */
        if (!call && c)
                return 0;

        sd_bus_message **grown = NULL;
        if (call) {
                grown = reallocarray(c ? c->waiters : NULL, (c ? c->n_waiters : 0) + 1, sizeof *grown);
                if (!grown)
                        return -ENOMEM;
        }
        if (c) {
                /* One check at a time per origin: this call gets the answer of the one running. */
                c->waiters = grown;
                c->waiters[c->n_waiters++] = sd_bus_message_ref(call);
                return 0;
        }

        c = calloc(1, sizeof *c);
        if (!c) {
                free(grown);
                return -ENOMEM;
        }
        c->origin = origin_ref(mo->origin);
        c->origin_id = mo->origin->id;
        c->manager = m;
        c->waiters = grown;
        if (call)
                c->waiters[c->n_waiters++] = sd_bus_message_ref(call);

        /* Accuracy 1 µs, not sd-event's default 250 ms: the check must count as failed at its timeout,
         * before the origin's own operation timeout (D10, as long for a local origin) answers it. */
        r = sd_event_add_time_relative(m->event, &c->timeout_source, CLOCK_MONOTONIC, HEALTH_CHECK_TIMEOUT_USEC(m), 1,
                                       on_health_timeout, c);
        if (r < 0) {
                health_check_free(c);
                return r;
        }

        c->queue = health_queue_ref(m->health_queue);
        r = -pthread_attr_init(&attr);
        if (r == 0)
                r = -pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (r == 0)
                r = -pthread_create(&thread, &attr, health_check_main, c);
        (void) pthread_attr_destroy(&attr);
        if (r < 0) {
                health_queue_unref(c->queue);
                health_check_free(c);
                return log_warning_errno(r, "Failed to start a health check of origin %s: %m", mo->origin->name);
        }
        mo->check = c;
        return 0;
}

/* D11: every origin is checked every health_interval, every minute while offline, each check on its
 * own thread under its own timeout; an origin whose check still runs (or hangs) is not checked twice. */
static int on_health_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        if (m->stopping)
                return 0;
        for (size_t i = 0; i < m->n_managed; i++)
                (void) manager_check_origin(m, m->managed[i], NULL);
        manager_arm_health_timer(m);
        return 0;
}

/* (Re)starts the round from now: at startup, after a round, and when offline begins or ends. */
static void manager_arm_health_timer(Manager *m) {
        int r;

        if (m->stopping || !m->event)
                return;
        uint64_t usec = (uint64_t) health_interval_sec(m, streq_ptr(m->state, MUSICFS_STATE_OFFLINE)) * 1000000ULL;
        if (m->health_timer_source)
                r = sd_event_source_set_time_relative(m->health_timer_source, usec);
        else
                r = sd_event_add_time_relative(m->event, &m->health_timer_source, CLOCK_MONOTONIC, usec, 0,
                                               on_health_timer, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->health_timer_source, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Failed to schedule the periodic health checks: %m");
}

/* ---- mounting and unmounting at runtime ---- */

static int on_fuse_event(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int manager_watch_fuse(Manager *m) {
        int fd = fusefs_event_fd(m->fs);
        int r;

        if (fd < 0) {
                log_warning_errno(fd, "No FUSE connection event fd, an unmount from outside will go unnoticed: %m");
                return 0;
        }
        r = sd_event_add_io(m->event, &m->fuse_source, fd, EPOLLIN, on_fuse_event, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the FUSE connection: %m");
        return 0;
}

int manager_mount(Manager *m, const char *mountpoint) {
        _cleanup_free_ char *path = NULL;
        FuseFs *fs = NULL;
        int r;

        if (m->fs)
                return -EBUSY;
        path = strdup(mountpoint && *mountpoint ? mountpoint : m->config.mountpoint);
        if (!path)
                return -ENOMEM;

        r = mountpoint_has_live_fuse(path, MOUNT_PROBE_TIMEOUT_USEC);
        if (r < 0)
                return r;
        if (r > 0)
                return -EBUSY;
        r = fusefs_cleanup_stale_mount(path);
        if (r < 0)
                return r;
        if (r > 0)
                log_notice("Removed a stale mount at %s", path);
        r = check_mountpoint(path);
        if (r < 0)
                return r;

        FuseFsOptions opts = {
                .mountpoint = path,
                .threads = m->config.fuse_threads,
                .read_ahead_kb = m->config.read_ahead_kb,
                .entry_timeout = m->config.entry_timeout,
                .attr_timeout = m->config.attr_timeout,
                .allow_other = geteuid() == 0,
                .debug = false,
                .cache = m->cache,
                .catalog = m->catalog,
        };
        r = fusefs_mount(&opts, m->trees, m->origins, &fs);
        if (r < 0)
                return r;
        r = fusefs_start(fs);
        if (r < 0) {
                fusefs_stop(fs);
                return r;
        }

        pthread_mutex_lock(&m->fs_lock);
        m->fs = fs;
        pthread_mutex_unlock(&m->fs_lock);
        free(m->mountpoint);
        m->mountpoint = TAKE_PTR(path);
        (void) manager_watch_fuse(m);

        log_info("Mounted %s with %" PRIu64 " tracks", m->mountpoint, m->track_count);
        bus_manager_emit_changed(m, "MountPoint");
        return 0;
}

/* A plain (not lazy) unmount, which the kernel refuses with EBUSY while files are open in the mount
 * or a process has its working directory there. */
static int unmount_if_idle(const char *path) {
        if (umount2(path, UMOUNT_NOFOLLOW) >= 0)
                return 0;
        if (errno != EPERM || geteuid() == 0)
                return -errno;

        /* Not root: fusermount3 -u (without -z) refuses a busy mount the same way. */
        extern char **environ;
        char *argv[] = { (char *) "fusermount3", (char *) "-u", (char *) "-q", (char *) "--", (char *) path, NULL };
        pid_t pid;
        int status, r;

        r = posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ);
        if (r != 0)
                return -r;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EBUSY;
}

int manager_unmount(Manager *m, bool force) {
        FuseFs *fs;
        int r;

        if (!m->fs)
                return -ENOTCONN;

        /* Our own unmount closes the connection; that is not a loss to stop for. */
        m->fuse_source = sd_event_source_disable_unref(m->fuse_source);
        if (!force) {
                r = unmount_if_idle(m->mountpoint);
                if (r < 0) {
                        (void) manager_watch_fuse(m);
                        return r;
                }
        }

        pthread_mutex_lock(&m->fs_lock);
        fs = TAKE_PTR(m->fs);
        pthread_mutex_unlock(&m->fs_lock);
        /* With force, this detaches lazily and closes /dev/fuse: the kernel aborts the connection,
         * and files still open fail with ENOTCONN instead of keeping the old mount alive. */
        fusefs_stop(fs);

        log_info("Unmounted %s%s; still running", m->mountpoint, force ? " (forced)" : "");
        m->mountpoint = mfree(m->mountpoint);
        bus_manager_emit_changed(m, "MountPoint");
        return 0;
}

/* ---- stopping ---- */

static _noreturn_ void manager_exit_now(Manager *m) {
        if (m->mountpoint && umount2(m->mountpoint, MNT_DETACH) < 0)
                log_warning_errno(errno, "Failed to detach %s: %m", m->mountpoint);
        _exit(1);
}

/* Runs off the loop so that the loop can still answer a second signal while requests drain. */
static void *stopper_main(void *userdata) {
        Manager *m = userdata;
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        thread_set_name("mfs-stop");

        /* The loop stopped calling it when m->stopping was set, before this thread started. */
        watcher_free(TAKE_PTR(m->watcher));
        manager_stop_worker(m);
        /* Lets tests make the drain slow (sleep, pause) to reach the deadline or a second signal.
         * An error cannot stop a stop. */
        int r = FAILPOINT(SHUTDOWN_DRAIN);
        if (r < 0)
                log_warning_errno(r, "shutdown-drain failpoint: %m; stopping anyway");
        uint64_t t1 = now_usec(CLOCK_MONOTONIC);
        fusefs_stop(m->fs);
        m->fs = NULL;
        manager_close_cache(m);
        uint64_t t2 = now_usec(CLOCK_MONOTONIC);
        bool tree_current = manager_tree_current(m);
        _cleanup_free_ char *catalog_identity = catalog_close_vouched(m->catalog);
        m->catalog = NULL;
        uint64_t t3 = now_usec(CLOCK_MONOTONIC);
        if (tree_current && catalog_identity)
                manager_snapshot_save(m, catalog_identity);
        log_debug("Stopped the scan in %.0f ms, FUSE and the cache in %.0f ms, closed the catalog in %.0f ms, "
                  "%s the tree snapshot in %.0f ms", (double) (t1 - t0) / 1000.0, (double) (t2 - t1) / 1000.0,
                  (double) (t3 - t2) / 1000.0, tree_current && catalog_identity ? "wrote" : "skipped",
                  (double) (now_usec(CLOCK_MONOTONIC) - t3) / 1000.0);

        if (eventfd_write(m->stop_efd, 1) < 0)
                log_error_errno(errno, "Failed to tell the event loop that the stop is done: %m");
        return NULL;
}

static int on_stop_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        eventfd_t v;

        (void) eventfd_read(fd, &v);
        if (m->stopper_started) {
                pthread_join(m->stopper, NULL);
                m->stopper_started = false;
        }
        m->stop_deadline_source = sd_event_source_disable_unref(m->stop_deadline_source);

        if (m->bus && m->name_acquired) {
                int r = sd_bus_release_name(m->bus, MUSICFS_BUS_NAME);
                if (r < 0)
                        log_debug_errno(r, "Failed to release %s, ignoring: %m", MUSICFS_BUS_NAME);
                m->name_acquired = false;
        }
        log_info("Stopped");
        return sd_event_exit(m->event, m->exit_code);
}

static int on_stop_deadline(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        log_error("Stopping did not finish within %llu s; detaching the mount and exiting",
                  STOP_TIMEOUT_USEC / 1000000ULL);
        manager_exit_now(m);
}

static void manager_begin_stop(Manager *m, int exit_code) {
        int r;

        if (m->stopping)
                return;
        m->stopping = true;
        m->exit_code = exit_code;
        manager_set_state(m, MUSICFS_STATE_STOPPING);
        manager_update_status(m);
        (void) sd_notifyf(false, "STOPPING=1\nSTATUS=%s", m->status ?: "Stopping");

        /* Unmounting makes the connection fd readable; that is not a loss to react to. */
        m->fuse_source = sd_event_source_disable_unref(m->fuse_source);

        r = sd_event_add_time_relative(m->event, &m->stop_deadline_source, CLOCK_MONOTONIC,
                                       STOP_TIMEOUT_USEC, 0, on_stop_deadline, m);
        if (r < 0)
                log_warning_errno(r, "Failed to arm the stop deadline, ignoring: %m");

        r = pthread_create(&m->stopper, NULL, stopper_main, m);
        if (r != 0) {
                log_warning_errno(r, "Failed to start the stop thread, stopping on the loop: %m");
                (void) stopper_main(m);
                return;
        }
        m->stopper_started = true;
}

/* ---- loop handlers ---- */

int manager_reload(Manager *m, char **ret_error) {
        _cleanup_(config_free) Config new = {};
        _cleanup_(template_freep) Template *tpl = NULL;
        _cleanup_free_ char *error = NULL;
        int r;

        (void) sd_notify(false, "RELOADING=1\nSTATUS=Reloading the configuration");

        r = manager_load_config(&m->args, &new, &tpl, &error);
        if (r < 0) {
                log_error("%s", error ?: "Invalid configuration");
                log_warning("Reload failed; keeping the running configuration");
                if (ret_error)
                        *ret_error = TAKE_PTR(error);
                goto done;
        }

        unsigned changes = manager_config_diff(&m->config, &new);
        if (changes == 0) {
                log_info("Reloaded the configuration: nothing changed");
                goto done;
        }

        if (changes & CONFIG_CHANGE_MOUNTPOINT)
                log_warning("mountpoint changed (%s -> %s): needs a restart, keeping %s",
                            m->config.mountpoint, new.mountpoint, m->config.mountpoint);
        if (changes & CONFIG_CHANGE_CACHE_DIR)
                log_warning("cache_dir changed (%s -> %s): needs a restart, keeping %s",
                            m->config.cache_dir, new.cache_dir, m->config.cache_dir);
        if (changes & CONFIG_CHANGE_ORIGINS)
                log_warning("origins changed: needs a restart, keeping the %zu running origin(s)", m->n_managed);
        if (changes & CONFIG_CHANGE_BUS)
                log_warning("bus changed: needs a restart, staying on the %s bus", m->config.user_bus ? "user" : "system");
        if (changes & CONFIG_CHANGE_FUSE_THREADS)
                log_warning("fuse_threads changed (%u -> %u): needs a restart, keeping %u",
                            m->config.fuse_threads, new.fuse_threads, m->config.fuse_threads);
        if (changes & CONFIG_CHANGE_CACHE)
                log_warning("[cache] changed (budget %" PRIu64 " -> %" PRIu64 " bytes, readahead %u -> %u, "
                            "passthrough %s -> %s, maintenance_interval %u -> %u s): needs a restart, keeping the "
                            "running cache (SetPassthrough switches passthrough at runtime)",
                            m->config.cache_budget, new.cache_budget, m->config.cache_readahead, new.cache_readahead,
                            m->config.cache_passthrough ? "yes" : "no", new.cache_passthrough ? "yes" : "no",
                            m->config.cache_maintenance_sec, new.cache_maintenance_sec);

        if (changes & CONFIG_CHANGE_LOG_LEVEL) {
                log_info("log_level changed: %s -> %s", log_level_to_string(m->config.log_level),
                         log_level_to_string(new.log_level));
                m->config.log_level = new.log_level;
                log_set_max_level(new.log_level);
        }
        if (changes & CONFIG_CHANGE_SCAN_BATCH) {
                log_info("scan_batch changed: %u -> %u (from the next scan)", m->config.scan_batch, new.scan_batch);
                m->config.scan_batch = new.scan_batch;
                atomic_store(&m->scan_batch, new.scan_batch);
        }
        if (changes & CONFIG_CHANGE_READ_AHEAD) {
                log_info("read_ahead_kb changed: %u -> %u KiB%s", m->config.read_ahead_kb, new.read_ahead_kb,
                         new.read_ahead_kb == 0 ? " (the kernel's current value is kept until the next mount)" : "");
                m->config.read_ahead_kb = new.read_ahead_kb;
                if (m->fs)
                        (void) fusefs_set_read_ahead(m->fs, new.read_ahead_kb);
        }
        if ((changes & CONFIG_CHANGE_TIMEOUTS) &&
            (m->config.entry_timeout != new.entry_timeout || m->config.attr_timeout != new.attr_timeout)) {
                log_info("entry_timeout/attr_timeout changed: %u/%u -> %u/%u s (for entries looked up from now on)",
                         m->config.entry_timeout, m->config.attr_timeout, new.entry_timeout, new.attr_timeout);
                m->config.entry_timeout = new.entry_timeout;
                m->config.attr_timeout = new.attr_timeout;
                if (m->fs)
                        fusefs_set_timeouts(m->fs, new.entry_timeout, new.attr_timeout);
        }
        if ((changes & CONFIG_CHANGE_TIMEOUTS) && (m->config.health_interval != new.health_interval ||
                                                   m->config.health_timeout != new.health_timeout)) {
                log_info("health_interval/health_timeout changed: %u/%u -> %u/%u s (from the next round of checks)",
                         m->config.health_interval, m->config.health_timeout, new.health_interval, new.health_timeout);
                m->config.health_interval = new.health_interval;
                m->config.health_timeout = new.health_timeout;
                manager_arm_health_timer(m);
        }
        if (changes & CONFIG_CHANGE_TEMPLATE) {
                log_info("template changed: \"%s\" -> \"%s\", rebuilding the tree", m->config.template, new.template);
                free(m->config.template);
                m->config.template = TAKE_PTR(new.template);
                pthread_mutex_lock(&m->lock);
                template_free(m->pending_template);
                m->pending_template = TAKE_PTR(tpl);
                m->rebuild_requested = true;
                pthread_cond_broadcast(&m->wake);
                pthread_mutex_unlock(&m->lock);
        }
        r = 0;

done:
        manager_update_status(m);
        (void) sd_notifyf(false, "READY=1\nSTATUS=%s", m->status ?: "Serving");
        return r;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        int sig = (int) si->ssi_signo;

        if (sig == SIGHUP) {
                if (m->stopping) {
                        log_info("Received SIGHUP while stopping, ignoring");
                        return 0;
                }
                log_info("Received SIGHUP, reloading the configuration");
                (void) manager_reload(m, NULL);
                return 0;
        }

        if (m->stopping) {
                log_error("Received SIG%s while stopping; exiting at once", sigabbrev_np(sig));
                manager_exit_now(m);
        }
        log_info("Received SIG%s, stopping", sigabbrev_np(sig));
        manager_begin_stop(m, 0);
        return 0;
}

/* 3.4: a connection the kernel aborted (echo 1 > /sys/fs/fuse/connections/N/abort, a FUSE protocol
 * error) leaves a dead mount that answers ENOTCONN: the daemon mounts again in place, keeping its
 * catalog, tree and cache; open files of the old mount stay dead and must be opened again. A mount
 * that fails is tried again after 1 s, 5 s and 15 s, then the daemon stops for systemd. More than
 * REMOUNT_MAX losses in REMOUNT_WINDOW_USEC is a mount that keeps dying: stop. An unmount from
 * outside (the mount is gone from the table) is someone's decision: stop. */
#define REMOUNT_MAX 3u
#define REMOUNT_WINDOW_USEC (60u * 1000u * 1000u)
static const unsigned remount_backoff_sec[] = { 1, 5, 15 };

static void manager_try_remount(Manager *m);

static int on_remount_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        manager_try_remount(userdata);
        return 0;
}

static void manager_try_remount(Manager *m) {
        int r;

        if (m->stopping || !m->remount_path)
                return;
        r = manager_mount(m, m->remount_path);
        if (r >= 0) {
                log_notice("Mounted %s again after the kernel aborted its FUSE connection (%u of %u remounts "
                           "allowed within %u s); files open on the old mount must be opened again", m->remount_path,
                           m->remounts_in_window, REMOUNT_MAX, REMOUNT_WINDOW_USEC / 1000000u);
                m->remount_path = mfree(m->remount_path);
                m->remount_attempt = 0;
                return;
        }
        if (m->remount_attempt >= ELEMENTSOF(remount_backoff_sec)) {
                log_error_errno(r, "Cannot mount %s again after %u tries, stopping: %m", m->remount_path,
                                m->remount_attempt + 1);
                manager_begin_stop(m, 1);
                return;
        }
        unsigned sec = remount_backoff_sec[m->remount_attempt++];
        log_warning_errno(r, "Cannot mount %s again: %m; next try in %u s", m->remount_path, sec);
        uint64_t usec = (uint64_t) sec * 1000000u;
        if (m->remount_source)
                r = sd_event_source_set_time_relative(m->remount_source, usec);
        else
                r = sd_event_add_time_relative(m->event, &m->remount_source, CLOCK_MONOTONIC, usec, 0,
                                               on_remount_timer, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->remount_source, SD_EVENT_ONESHOT);
        if (r < 0) {
                log_error_errno(r, "Cannot schedule the next mount of %s, stopping: %m", m->remount_path);
                manager_begin_stop(m, 1);
        }
}

/* Detaches the dead mount and mounts again (now, or by the backoff). -ELOOP when it keeps dying. */
static int manager_remount(Manager *m) {
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        FuseFs *fs;

        if (now - m->remount_window_start > REMOUNT_WINDOW_USEC) {
                m->remount_window_start = now;
                m->remounts_in_window = 0;
        }
        if (++m->remounts_in_window > REMOUNT_MAX)
                return log_error_errno(-ELOOP, "The FUSE connection of %s was lost %u times within %u s: %m",
                                       m->mountpoint, m->remounts_in_window, REMOUNT_WINDOW_USEC / 1000000u);

        m->fuse_source = sd_event_source_disable_unref(m->fuse_source);
        pthread_mutex_lock(&m->fs_lock);
        fs = TAKE_PTR(m->fs);
        pthread_mutex_unlock(&m->fs_lock);
        /* The workers saw the connection end and are gone; this detaches the dead mount. */
        fusefs_stop(fs);
        free(m->remount_path);
        m->remount_path = TAKE_PTR(m->mountpoint);
        bus_manager_emit_changed(m, "MountPoint");
        m->remount_attempt = 0;
        manager_try_remount(m);
        return 0;
}

static int on_fuse_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        if (m->stopping)
                return 0;
        if (!fusefs_mount_present(m->fs)) {
                log_error("The mount at %s went away (unmounted from outside?); stopping", strna(m->mountpoint));
                manager_begin_stop(m, 1);
                return 0;
        }
        log_warning("The FUSE connection of %s was aborted; mounting again", strna(m->mountpoint));
        if (manager_remount(m) < 0) {
                log_error("Stopping: %s stays unmounted", strna(m->mountpoint));
                manager_begin_stop(m, 1);
        }
        return 0;
}

static int on_watchdog(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        /* Running this timer proves the loop alive; the FUSE workers must prove themselves. */
        if (m->stopping || fusefs_alive(m->fs, m->watchdog_usec))
                (void) sd_notify(false, "WATCHDOG=1");
        else
                log_warning("FUSE workers have made no progress for %" PRIu64 " ms; withholding the watchdog ping",
                            m->watchdog_usec / 1000);

        int r = sd_event_source_set_time_relative(s, m->watchdog_usec / 2);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Failed to re-arm the watchdog timer: %m");
        return 0;
}

/* ---- bus ---- */

static int manager_attach_bus(Manager *m, sd_bus *bus);

static int on_reconnect_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        int r;

        if (m->bus) {
                (void) sd_bus_detach_event(m->bus);
                m->bus = sd_bus_close_unref(m->bus);
        }

        /* Same address as before; watch_bind waits for a socket that is not back yet. */
        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, m->bus_address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, true);
        if (r >= 0)
                r = sd_bus_set_watch_bind(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r >= 0)
                r = manager_attach_bus(m, TAKE_PTR(bus));
        if (r < 0) {
                log_debug_errno(r, "Reconnecting to the bus failed, retrying: %m");
                r = sd_event_source_set_time_relative(s, BUS_RECONNECT_USEC);
                if (r >= 0)
                        r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
                if (r < 0)
                        log_error_errno(r, "Failed to schedule another bus reconnection: %m");
                return 0;
        }
        log_info("Reconnected to the bus at %s", m->bus_address);
        return 0;
}

static int on_bus_disconnected(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        int r;

        m->name_acquired = false;
        if (m->stopping)
                return 0;
        log_warning("Lost the connection to the bus; reconnecting (the mount keeps serving)");
        if (!m->bus_address) {
                log_error("Lost the connection to the bus and do not know its address; staying off the bus");
                return 0;
        }
        if (!m->reconnect_source)
                r = sd_event_add_time_relative(m->event, &m->reconnect_source, CLOCK_MONOTONIC,
                                               BUS_RECONNECT_USEC, 0, on_reconnect_timer, m);
        else {
                r = sd_event_source_set_time_relative(m->reconnect_source, BUS_RECONNECT_USEC);
                if (r >= 0)
                        r = sd_event_source_set_enabled(m->reconnect_source, SD_EVENT_ONESHOT);
        }
        if (r < 0)
                log_error_errno(r, "Failed to schedule a bus reconnection: %m");
        return 0;
}

static int on_name_acquired(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        uint32_t result = 0;
        int r;

        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);
                if (m->bus && !sd_bus_is_open(m->bus))
                        return 0;       /* the disconnect handler deals with it */
                log_error("Failed to acquire the bus name %s: %s", MUSICFS_BUS_NAME, e && e->message ? e->message : "unknown error");
                if (!m->ready_sent)
                        manager_begin_stop(m, 1);
                return 0;
        }

        r = sd_bus_message_read(reply, "u", &result);
        if (r < 0) {
                log_error_errno(r, "Failed to parse the reply to RequestName: %m");
                if (!m->ready_sent)
                        manager_begin_stop(m, 1);
                return 0;
        }
        /* 1: primary owner, 4: already the owner. With DO_NOT_QUEUE, 3 means someone else owns it. */
        if (result != 1 && result != 4) {
                log_error("The bus name %s is owned by another process; is another musicfsd running?", MUSICFS_BUS_NAME);
                if (!m->ready_sent)
                        manager_begin_stop(m, 1);
                return 0;
        }

        m->name_acquired = true;
        log_debug("Acquired the bus name %s", MUSICFS_BUS_NAME);
        manager_check_ready(m);
        return 0;
}

static int manager_attach_bus(Manager *m, sd_bus *bus_in) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = bus_in;
        int r;

        r = bus_manager_attach(m, bus);
        if (r < 0)
                return r;
        r = sd_bus_match_signal_async(bus, NULL, "org.freedesktop.DBus.Local", NULL, "org.freedesktop.DBus.Local",
                                      "Disconnected", on_bus_disconnected, NULL, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch for a bus disconnection: %m");
        r = sd_bus_request_name_async(bus, NULL, MUSICFS_BUS_NAME, 0, on_name_acquired, m);
        if (r < 0)
                return log_error_errno(r, "Failed to request the bus name %s: %m", MUSICFS_BUS_NAME);
        r = sd_bus_attach_event(bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        m->bus = TAKE_PTR(bus);
        return 0;
}

/* A bus daemon that comes back has a new guid: an address that names the old one (as the address an
 * activated service is given does) would refuse every reconnection. */
int manager_address_strip_guid(const char *address, char **ret) {
        char *out;
        size_t o = 0;

        if (!address || !ret)
                return -EINVAL;
        out = malloc(strlen(address) + 1);
        if (!out)
                return -ENOMEM;

        /* TRANSPORT:KEY=VALUE,KEY=VALUE;TRANSPORT:... */
        for (const char *p = address; *p; ) {
                size_t seg = strcspn(p, ";");
                const char *colon = memchr(p, ':', seg);
                size_t head = colon ? (size_t) (colon - p) + 1 : 0;
                bool first = true;

                memcpy(out + o, p, head);
                o += head;
                for (const char *q = p + head; q < p + seg; ) {
                        size_t n = strcspn(q, ",;");
                        if (!(n >= 5 && strncmp(q, "guid=", 5) == 0)) {
                                if (!first)
                                        out[o++] = ',';
                                memcpy(out + o, q, n);
                                o += n;
                                first = false;
                        }
                        q += n;
                        if (*q == ',')
                                q++;
                }
                p += seg;
                if (*p == ';')
                        out[o++] = *p++;
        }
        out[o] = '\0';
        *ret = out;
        return 0;
}

static int manager_connect_bus(Manager *m) {
        sd_bus *bus = NULL;
        int r;

        r = sd_bus_error_add_map(musicfs_bus_error_map);
        if (r < 0)
                return log_error_errno(r, "Failed to register the D-Bus error map: %m");

        r = m->config.user_bus ? sd_bus_open_user(&bus) : sd_bus_open_system(&bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the %s bus: %m", m->config.user_bus ? "user" : "system");

        const char *address = NULL;
        (void) sd_bus_get_address(bus, &address);
        if (address) {
                m->bus_address = mfree(m->bus_address);
                if (manager_address_strip_guid(address, &m->bus_address) < 0) {
                        sd_bus_close_unref(bus);
                        return log_error_errno(ENOMEM, "Out of memory");
                }
        }
        return manager_attach_bus(m, bus);
}

/* ---- run ---- */

static int manager_setup_loop(Manager *m) {
        static const int signals[] = { SIGTERM, SIGINT, SIGHUP };
        sigset_t mask;
        int r;

        /* main() blocked these before any thread existed; repeat it for callers that did not. */
        sigemptyset(&mask);
        for (size_t i = 0; i < ELEMENTSOF(signals); i++)
                sigaddset(&mask, signals[i]);
        r = pthread_sigmask(SIG_BLOCK, &mask, NULL);
        if (r != 0)
                return log_error_errno(r, "Failed to block signals: %m");

        r = sd_event_default(&m->event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        for (size_t i = 0; i < ELEMENTSOF(signals); i++) {
                r = sd_event_add_signal(m->event, &m->signal_sources[i], signals[i], on_signal, m);
                if (r < 0)
                        return log_error_errno(r, "Failed to watch SIG%s: %m", sigabbrev_np(signals[i]));
        }

        r = sd_watchdog_enabled(false, &m->watchdog_usec);
        if (r < 0)
                log_warning_errno(r, "Failed to read the watchdog settings, ignoring: %m");
        if (r > 0 && m->watchdog_usec > 0) {
                r = sd_event_add_time_relative(m->event, &m->watchdog_source, CLOCK_MONOTONIC,
                                               m->watchdog_usec / 2, 0, on_watchdog, m);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up the watchdog timer: %m");
                log_debug("Watchdog enabled: pinging every %" PRIu64 " ms", m->watchdog_usec / 2000);
        }

        r = manager_watch_fuse(m);
        if (r < 0)
                return r;

        m->worker_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        m->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (m->worker_efd < 0 || m->stop_efd < 0)
                return log_error_errno(errno, "Failed to create an eventfd: %m");
        r = sd_event_add_io(m->event, &m->worker_source, m->worker_efd, EPOLLIN, on_worker_event, m);
        if (r >= 0)
                r = sd_event_add_io(m->event, &m->stop_source, m->stop_efd, EPOLLIN, on_stop_done, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch an eventfd: %m");

        r = manager_watch_cache(m);
        if (r < 0)
                return r;

        r = health_queue_new(&m->health_queue);
        if (r < 0)
                return log_error_errno(r, "Failed to set up health checks: %m");
        r = sd_event_add_io(m->event, &m->health_source, m->health_queue->efd, EPOLLIN, on_health_event, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch health checks: %m");
        manager_arm_health_timer(m);
        return 0;
}

int manager_run(Manager *m) {
        int r;

        r = manager_setup_loop(m);
        if (r < 0)
                return 1;
        r = manager_connect_bus(m);
        if (r < 0)
                return 1;

        /* Watch before the first scans walk: a change lands in one or the other. */
        (void) manager_start_watcher(m);

        /* Reconcile every origin with the catalog, in priority order. */
        r = manager_queue_scans(m, NULL);
        if (r < 0) {
                log_error_errno(r, "Failed to queue the first scans: %m");
                return 1;
        }
        r = pthread_create(&m->worker, NULL, worker_main, m);
        if (r != 0) {
                log_error_errno(r, "Failed to start the scan thread: %m");
                return 1;
        }
        m->worker_started = true;

        r = sd_event_loop(m->event);
        if (r < 0) {
                log_error_errno(r, "Event loop failed: %m");
                return 1;
        }
        return r;
}

void manager_free(Manager *m) {
        if (!m)
                return;

        if (m->stopper_started)
                pthread_join(m->stopper, NULL);
        watcher_free(TAKE_PTR(m->watcher));
        manager_stop_worker(m);
        fusefs_stop(m->fs);
        m->fs = NULL;
        manager_close_cache(m);

        /* Health checks still running free themselves when they end; those that ended are ours. */
        HealthCheck *done = NULL;
        if (m->health_queue) {
                pthread_mutex_lock(&m->health_queue->lock);
                m->health_queue->closed = true;
                done = TAKE_PTR(m->health_queue->done);
                pthread_mutex_unlock(&m->health_queue->lock);
        }
        for (size_t i = 0; i < m->n_managed; i++)
                if (m->managed[i]->check && !m->managed[i]->check->queued)
                        health_check_detach(m->managed[i]->check);
        while (done) {
                HealthCheck *c = done;
                done = c->next;
                health_check_free(c);
        }
        health_queue_unref(m->health_queue);

        for (size_t i = 0; i < ELEMENTSOF(m->signal_sources); i++)
                sd_event_source_disable_unref(m->signal_sources[i]);
        sd_event_source_disable_unref(m->watchdog_source);
        sd_event_source_disable_unref(m->fuse_source);
        sd_event_source_disable_unref(m->remount_source);
        sd_event_source_disable_unref(m->worker_source);
        sd_event_source_disable_unref(m->stop_source);
        sd_event_source_disable_unref(m->stop_deadline_source);
        sd_event_source_disable_unref(m->reconnect_source);
        sd_event_source_disable_unref(m->health_source);
        sd_event_source_disable_unref(m->health_timer_source);
        sd_event_source_disable_unref(m->progress_source);
        sd_event_source_disable_unref(m->cache_source);
        sd_event_source_disable_unref(m->cache_timer_source);
        sd_event_source_disable_unref(m->cache_verify_source);
        sd_bus_message_unref(m->cache_verify_call);
        for (size_t i = 0; i < m->n_pending_removals; i++) {
                sd_bus_message_unref(m->pending_removals[i].call);
                free(m->pending_removals[i].name);
        }
        free(m->pending_removals);
        /* Before the bus: it holds calls parked on the bus. */
        polkit_registry_free(m->polkit);
        if (m->bus) {
                (void) sd_bus_detach_event(m->bus);
                sd_bus_flush_close_unref(m->bus);
        }
        sd_event_unref(m->event);

        tree_store_free(m->trees);
        for (size_t i = 0; i < m->n_managed; i++)
                managed_origin_free(m->managed[i]);
        free(m->managed);
        origin_set_free(m->origins);
        catalog_close(m->catalog);
        template_free(m->template);
        template_free(m->pending_template);
        free(m->tree_inputs);
        config_free(&m->config);
        manager_args_free(&m->args);

        closep(&m->worker_efd);
        closep(&m->stop_efd);
        closep(&m->cache_efd);
        free(m->cache_clean_marker);
        closep(&m->lock_fd);
        pthread_mutex_destroy(&m->lock);
        pthread_mutex_destroy(&m->fs_lock);
        pthread_cond_destroy(&m->wake);
        free(m->status);
        free(m->bus_address);
        free(m->mountpoint);
        free(m->remount_path);
        free(m->progress_origin);
        free(m->emitted_origin);
        free(m->counts);
        free(m->scan_queue);
        free(m->watch_lost);
        for (size_t i = 0; i < m->n_sync_queue; i++)
                sync_request_done(&m->sync_queue[i]);
        free(m->sync_queue);
        for (size_t i = 0; i < m->n_removals; i++)
                free(m->removals[i].name);
        free(m->removals);
        for (size_t i = 0; i < m->n_removals_done; i++)
                free(m->removals_done[i].name);
        free(m->removals_done);
        for (size_t i = 0; i < m->n_finished; i++)
                free(m->finished[i].name);
        free(m->finished);
        free(m);
}
