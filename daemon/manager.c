/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "bus-api.h"
#include "bus-manager.h"
#include "failpoint.h"
#include "log.h"
#include "manager.h"
#include "scanner.h"

/* A clean stop must be over well within 10 s; past this the mount is detached and we exit 1. */
#define STOP_TIMEOUT_USEC (9ULL * 1000000ULL)
/* During a first scan the tree is republished at most this often, so that files appear as found. */
#define FIRST_SCAN_PUBLISH_USEC (2ULL * 1000000ULL)
#define BUS_RECONNECT_USEC (1ULL * 1000000ULL)
/* A FUSE daemon that does not answer statfs() within this is hung or stopped: its mount is stale. */
#define MOUNT_PROBE_TIMEOUT_USEC (2ULL * 1000000ULL)


DEFINE_TRIVIAL_CLEANUP_FUNC(Template *, template_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(Tree *, tree_unref);
DEFINE_TRIVIAL_CLEANUP_FUNC(Origin *, origin_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(DIR *, closedir);

static uint64_t cpu_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

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
                    !streq_ptr(x->path, y->path) || x->priority != y->priority)
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
        if (old->entry_timeout != new->entry_timeout || old->attr_timeout != new->attr_timeout)
                changes |= CONFIG_CHANGE_TIMEOUTS;
        if (old->scan_batch != new->scan_batch)
                changes |= CONFIG_CHANGE_SCAN_BATCH;
        if (!streq_ptr(old->mountpoint, new->mountpoint))
                changes |= CONFIG_CHANGE_MOUNTPOINT;
        if (!streq_ptr(old->cache_dir, new->cache_dir))
                changes |= CONFIG_CHANGE_CACHE_DIR;
        if (!origins_equal(old, new))
                changes |= CONFIG_CHANGE_ORIGINS;
        if (old->user_bus != new->user_bus)
                changes |= CONFIG_CHANGE_BUS;
        if (old->fuse_threads != new->fuse_threads)
                changes |= CONFIG_CHANGE_FUSE_THREADS;
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

/* ---- tree building (startup on the main thread, later on the worker) ---- */

/* Files of origins that are no longer configured stay in the catalog (it is a cache) but are not
 * shown: there would be nothing to read them from. */
static size_t drop_unconfigured(Manager *m, CatalogFile *files, size_t n) {
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
                if (origin_set_get(m->origins, files[i].origin_id))
                        files[kept++] = files[i];
                else
                        catalog_file_free_members(&files[i]);
        }
        return kept;
}

static int manager_build_tree(Manager *m, const Template *tpl, Tree **ret, size_t *ret_n_files) {
        CatalogFile *files = NULL;
        size_t n = 0;
        int r;

        uint64_t t0 = now_usec();
        r = catalog_load_files(m->catalog, &files, &n);
        if (r < 0)
                return log_warning_errno(r, "Failed to load the catalog: %m");
        n = drop_unconfigured(m, files, n);
        uint64_t t1 = now_usec();
        r = tree_build(m->catalog, tpl, files, n, ret);
        uint64_t t2 = now_usec();
        catalog_files_free(files, n);
        if (r < 0)
                return log_warning_errno(r, "Failed to build the tree: %m");
        log_debug("Loaded %zu files in %.0f ms, built the tree in %.0f ms, freed the rows in %.0f ms", n,
                  (double) (t1 - t0) / 1000.0, (double) (t2 - t1) / 1000.0, (double) (now_usec() - t2) / 1000.0);
        if (ret_n_files)
                *ret_n_files = n;
        return 0;
}

/* ---- startup, steps 1-5 ---- */

static int manager_open_origins(Manager *m) {
        int r;

        r = origin_set_new(&m->origins);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the origin set: %m");

        for (size_t i = 0; i < m->config.n_origins; i++) {
                const OriginConfig *oc = &m->config.origins[i];
                _cleanup_(origin_freep) Origin *o = NULL;
                int64_t id;

                if (oc->kind && strcmp(oc->kind, "local") != 0)
                        return log_error_errno(EOPNOTSUPP, "Origin %s: kind \"%s\" is not supported", oc->name, oc->kind);

                r = catalog_origin_ensure(m->catalog, oc->name, oc->path, oc->priority, &id);
                if (r < 0)
                        return log_error_errno(r, "Failed to record origin %s in the catalog: %m", oc->name);
                r = origin_local_new(oc->name, oc->path, oc->priority, &o);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up origin %s (%s): %m", oc->name, oc->path);
                o->id = id;
                r = origin_set_add(m->origins, o);
                if (r < 0)
                        return log_error_errno(r, "Failed to add origin %s: %m", oc->name);
                TAKE_PTR(o);
        }
        return 0;
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

        uint64_t t0 = now_usec(), cpu0 = cpu_usec();

        /* 3. Catalog and origins. */
        if (asprintf(&catalog_path, "%s/catalog.db", m->config.cache_dir) < 0)
                return log_error_errno(ENOMEM, "Out of memory");
        r = catalog_open_or_rebuild(catalog_path, &m->catalog, &m->catalog_rebuilt);
        if (r < 0)
                return log_error_errno(r, "Failed to open catalog %s: %m", catalog_path);
        log_debug("Opened the catalog in %.0f ms", (double) (now_usec() - t0) / 1000.0);
        if (m->catalog_rebuilt)
                log_warning("Catalog %s was corrupt and has been rebuilt; rescanning every origin", catalog_path);

        r = manager_open_origins(m);
        if (r < 0)
                return r;

        /* 4. The tree from the catalog; the scan reconciles with the origins later. An unreadable
         * catalog must not keep the library from mounting: start empty and let the scan fill it. */
        _cleanup_(tree_unrefp) Tree *tree = NULL;
        size_t n_files = 0;
        r = manager_build_tree(m, m->template, &tree, &n_files);
        if (r < 0) {
                log_warning("Mounting an empty tree; the scan will fill it");
                r = tree_new_empty(&tree);
                if (r < 0)
                        return log_error_errno(r, "Failed to create an empty tree: %m");
                n_files = 0;
        }
        m->first_scan = m->catalog_rebuilt || n_files == 0;
        m->track_count = tree_track_count(tree);
        atomic_store(&m->published_tracks, m->track_count);
        r = tree_store_new(TAKE_PTR(tree), &m->trees);
        if (r < 0)
                return log_error_errno(r, "Failed to create the tree store: %m");

        /* 5. Mount. */
        FuseFsOptions opts = {
                .mountpoint = m->config.mountpoint,
                .threads = m->config.fuse_threads,
                .entry_timeout = m->config.entry_timeout,
                .attr_timeout = m->config.attr_timeout,
                .allow_other = geteuid() == 0,
                .debug = false,
        };
        r = fusefs_mount(&opts, m->trees, m->origins, &m->fs);
        if (r < 0)
                return log_error_errno(r, "Failed to mount %s: %m", m->config.mountpoint);
        r = fusefs_start(m->fs);
        if (r < 0)
                return log_error_errno(r, "Failed to start the FUSE workers: %m");

        log_info("Mounted %s with %" PRIu64 " tracks from the catalog in %.0f ms (%.0f ms CPU)%s",
                 m->config.mountpoint, m->track_count, (double) (now_usec() - t0) / 1000.0,
                 (double) (cpu_usec() - cpu0) / 1000.0,
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
        m->lock_fd = m->worker_efd = m->stop_efd = -1;
        m->state = MUSICFS_STATE_STARTING;
        atomic_init(&m->cancel, false);
        atomic_init(&m->scan_origin, -1);
        atomic_init(&m->scan_files, 0);
        atomic_init(&m->published_tracks, 0);
        atomic_init(&m->scan_batch, 256);
        pthread_mutex_init(&m->lock, NULL);
        pthread_cond_init(&m->wake, NULL);

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

/* STATUS= goes out on changes once READY=1 is sent; before that it rides along with READY=1. */
static void manager_update_status(Manager *m) {
        _cleanup_free_ char *s = NULL;
        int idx = atomic_load(&m->scan_origin);
        Origin *o = idx >= 0 ? origin_set_at(m->origins, (size_t) idx) : NULL;
        int r;

        if (m->stopping)
                r = asprintf(&s, "Stopping");
        else if (o)
                r = asprintf(&s, "Scanning %s: %" PRIu64 " files", o->name, (uint64_t) atomic_load(&m->scan_files));
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

static void manager_sync_from_worker(Manager *m) {
        uint64_t tracks = atomic_load(&m->published_tracks);
        if (tracks != m->track_count) {
                m->track_count = tracks;
                bus_manager_emit_changed(m, "TrackCount");
        }
}

static void manager_check_ready(Manager *m) {
        if (m->ready_sent || m->stopping || !m->name_acquired || !m->fs)
                return;
        manager_sync_from_worker(m);
        manager_set_state(m, MUSICFS_STATE_READY);
        manager_update_status(m);
        m->ready_sent = true;
        (void) sd_notifyf(false, "READY=1\nSTATUS=%s", m->status ?: "Serving");
        log_info("Ready: %" PRIu64 " tracks at %s, %s on the %s bus", m->track_count, m->config.mountpoint,
                 MUSICFS_BUS_NAME, m->config.user_bus ? "user" : "system");
}

/* ---- the worker: scans and tree rebuilds ---- */

static void worker_notify(Manager *m) {
        if (eventfd_write(m->worker_efd, 1) < 0)
                log_debug_errno(errno, "Failed to wake the event loop, ignoring: %m");
}

static void worker_rebuild(Manager *m) {
        _cleanup_(tree_unrefp) Tree *tree = NULL;
        uint64_t t0 = now_usec();
        int r;

        pthread_mutex_lock(&m->lock);
        if (m->pending_template) {
                template_free(m->template);
                m->template = TAKE_PTR(m->pending_template);
        }
        m->rebuild_requested = false;
        pthread_mutex_unlock(&m->lock);

        r = manager_build_tree(m, m->template, &tree, NULL);
        if (r < 0) {
                log_warning("Keeping the current tree");
                return;
        }
        /* The store owns the new tree from here; only this thread publishes, so it stays alive. */
        Tree *published = tree;
        Tree *old = tree_store_publish(m->trees, TAKE_PTR(tree));
        if (m->fs)
                fusefs_tree_changed(m->fs, old, published);
        tree_unref(old);

        atomic_store(&m->published_tracks, tree_track_count(published));
        log_debug("Published a tree of %" PRIu64 " tracks in %.0f ms", tree_track_count(published),
                  (double) (now_usec() - t0) / 1000.0);
        worker_notify(m);
}

typedef struct ScanContext {
        Manager *m;
        uint64_t last_publish;
} ScanContext;

static void on_batch_committed(const ScanStats *stats, void *userdata) {
        ScanContext *c = userdata;
        Manager *m = c->m;

        atomic_store(&m->scan_files, stats->seen);
        worker_notify(m);

        if (m->first_scan && now_usec() - c->last_publish >= FIRST_SCAN_PUBLISH_USEC) {
                worker_rebuild(m);
                c->last_publish = now_usec();
        }
}

static void worker_scan_all(Manager *m) {
        ScanContext ctx = { .m = m, .last_publish = now_usec() };
        ScanHooks hooks = { .batch_committed = on_batch_committed, .userdata = &ctx, .cancel = &m->cancel };
        uint64_t changes = 0;
        bool failed = false;

        for (size_t i = 0; i < origin_set_size(m->origins) && !atomic_load(&m->cancel); i++) {
                Origin *o = origin_set_at(m->origins, i);
                ScanStats st = {};
                uint64_t t0 = now_usec();
                int r;

                atomic_store(&m->scan_files, 0);
                atomic_store(&m->scan_origin, (int) i);
                worker_notify(m);

                r = scan_origin(m->catalog, o, atomic_load(&m->scan_batch), &hooks, &st);
                changes += st.added + st.changed + st.removed;
                if (r == -ECANCELED) {
                        log_info("Scan of origin %s cancelled after %" PRIu64 " files", o->name, st.seen);
                        break;
                }
                if (r < 0) {
                        /* Batches committed before the failure stay in the catalog. */
                        failed = true;
                        log_warning_errno(r, "Scan of origin %s failed after %" PRIu64 " files: %m", o->name, st.seen);
                } else
                        log_debug("Scanned origin %s in %.1f s: %" PRIu64 " files, %" PRIu64 " added, %" PRIu64
                                 " changed, %" PRIu64 " removed, %" PRIu64 " with unreadable tags, %" PRIu64 " failed",
                                 o->name, (double) (now_usec() - t0) / 1e6, st.seen, st.added, st.changed,
                                 st.removed, st.unparsed, st.failed);
        }

        atomic_store(&m->scan_origin, -1);
        /* The same catalog gives the same tree: at 100k tracks a rebuild is a second of CPU. */
        if (!atomic_load(&m->cancel)) {
                if (changes > 0 || failed || m->first_scan)
                        worker_rebuild(m);
                else
                        log_debug("The scan changed nothing; keeping the tree");
        }
        m->first_scan = false;
        worker_notify(m);
}

static void *worker_main(void *userdata) {
        Manager *m = userdata;

        worker_scan_all(m);

        pthread_mutex_lock(&m->lock);
        for (;;) {
                while (!atomic_load(&m->cancel) && !m->rebuild_requested)
                        pthread_cond_wait(&m->wake, &m->lock);
                if (atomic_load(&m->cancel))
                        break;
                pthread_mutex_unlock(&m->lock);
                worker_rebuild(m);
                pthread_mutex_lock(&m->lock);
        }
        pthread_mutex_unlock(&m->lock);
        return NULL;
}

static void manager_stop_worker(Manager *m) {
        if (!m->worker_started)
                return;
        atomic_store(&m->cancel, true);
        pthread_mutex_lock(&m->lock);
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

/* ---- stopping ---- */

static _noreturn_ void manager_exit_now(Manager *m) {
        if (m->config.mountpoint && umount2(m->config.mountpoint, MNT_DETACH) < 0)
                log_warning_errno(errno, "Failed to detach %s: %m", m->config.mountpoint);
        _exit(1);
}

/* Runs off the loop so that the loop can still answer a second signal while requests drain. */
static void *stopper_main(void *userdata) {
        Manager *m = userdata;
        uint64_t t0 = now_usec();

        manager_stop_worker(m);
        /* Lets tests make the drain slow (sleep, pause) to reach the deadline or a second signal.
         * An error cannot stop a stop. */
        int r = FAILPOINT(SHUTDOWN_DRAIN);
        if (r < 0)
                log_warning_errno(r, "shutdown-drain failpoint: %m; stopping anyway");
        uint64_t t1 = now_usec();
        fusefs_stop(m->fs);
        m->fs = NULL;
        uint64_t t2 = now_usec();
        catalog_close(m->catalog);
        m->catalog = NULL;
        log_debug("Stopped the scan in %.0f ms, FUSE in %.0f ms, closed the catalog in %.0f ms",
                  (double) (t1 - t0) / 1000.0, (double) (t2 - t1) / 1000.0, (double) (now_usec() - t2) / 1000.0);

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

static void manager_reload(Manager *m) {
        _cleanup_(config_free) Config new = {};
        _cleanup_(template_freep) Template *tpl = NULL;
        _cleanup_free_ char *error = NULL;
        int r;

        (void) sd_notify(false, "RELOADING=1\nSTATUS=Reloading the configuration");

        r = manager_load_config(&m->args, &new, &tpl, &error);
        if (r < 0) {
                log_error("%s", error ?: "Invalid configuration");
                log_warning("Reload failed; keeping the running configuration");
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
                log_warning("origins changed: needs a restart, keeping the %zu running origin(s)", m->config.n_origins);
        if (changes & CONFIG_CHANGE_BUS)
                log_warning("bus changed: needs a restart, staying on the %s bus", m->config.user_bus ? "user" : "system");
        if (changes & CONFIG_CHANGE_FUSE_THREADS)
                log_warning("fuse_threads changed (%u -> %u): needs a restart, keeping %u",
                            m->config.fuse_threads, new.fuse_threads, m->config.fuse_threads);

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
        if (changes & CONFIG_CHANGE_TIMEOUTS) {
                log_info("entry_timeout/attr_timeout changed: %u/%u -> %u/%u s (for entries looked up from now on)",
                         m->config.entry_timeout, m->config.attr_timeout, new.entry_timeout, new.attr_timeout);
                m->config.entry_timeout = new.entry_timeout;
                m->config.attr_timeout = new.attr_timeout;
                if (m->fs)
                        fusefs_set_timeouts(m->fs, new.entry_timeout, new.attr_timeout);
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

done:
        manager_update_status(m);
        (void) sd_notifyf(false, "READY=1\nSTATUS=%s", m->status ?: "Serving");
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
                manager_reload(m);
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

static int on_fuse_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        log_error("The mount at %s went away (unmounted from outside?); stopping", m->config.mountpoint);
        manager_begin_stop(m, 1);
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

        r = sd_bus_add_object_vtable(bus, NULL, MUSICFS_MANAGER_PATH, MUSICFS_MANAGER_IFACE, manager_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Failed to add the %s object: %m", MUSICFS_MANAGER_PATH);
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
        if (address && strdup_to(&m->bus_address, address) < 0) {
                sd_bus_close_unref(bus);
                return log_error_errno(ENOMEM, "Out of memory");
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

        int fd = fusefs_event_fd(m->fs);
        if (fd >= 0) {
                r = sd_event_add_io(m->event, &m->fuse_source, fd, EPOLLIN, on_fuse_event, m);
                if (r < 0)
                        return log_error_errno(r, "Failed to watch the FUSE connection: %m");
        } else
                log_warning_errno(fd, "No FUSE connection event fd, an unmount from outside will go unnoticed: %m");

        m->worker_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        m->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (m->worker_efd < 0 || m->stop_efd < 0)
                return log_error_errno(errno, "Failed to create an eventfd: %m");
        r = sd_event_add_io(m->event, &m->worker_source, m->worker_efd, EPOLLIN, on_worker_event, m);
        if (r >= 0)
                r = sd_event_add_io(m->event, &m->stop_source, m->stop_efd, EPOLLIN, on_stop_done, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch an eventfd: %m");
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
        manager_stop_worker(m);
        fusefs_stop(m->fs);

        for (size_t i = 0; i < ELEMENTSOF(m->signal_sources); i++)
                sd_event_source_disable_unref(m->signal_sources[i]);
        sd_event_source_disable_unref(m->watchdog_source);
        sd_event_source_disable_unref(m->fuse_source);
        sd_event_source_disable_unref(m->worker_source);
        sd_event_source_disable_unref(m->stop_source);
        sd_event_source_disable_unref(m->stop_deadline_source);
        sd_event_source_disable_unref(m->reconnect_source);
        if (m->bus) {
                (void) sd_bus_detach_event(m->bus);
                sd_bus_flush_close_unref(m->bus);
        }
        sd_event_unref(m->event);

        tree_store_free(m->trees);
        origin_set_free(m->origins);
        catalog_close(m->catalog);
        template_free(m->template);
        template_free(m->pending_template);
        config_free(&m->config);
        manager_args_free(&m->args);

        closep(&m->worker_efd);
        closep(&m->stop_efd);
        closep(&m->lock_fd);
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->wake);
        free(m->status);
        free(m->bus_address);
        free(m);
}
