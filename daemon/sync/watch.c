/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The watcher: inotify watches and poll timers of the origins, on a thread of its own (watch.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "crash.h"
#include "log.h"
#include "macro.h"
#include "tags.h"
#include "time-util.h"
#include "watch.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(DIR *, closedir);

#define WATCH_MASK (IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | \
                    IN_MOVE_SELF | IN_ATTRIB | IN_ONLYDIR | IN_EXCL_UNLINK)

static const char *const watch_mode_table[_WATCH_MODE_MAX] = {
        [WATCH_INOTIFY] = "inotify",
        [WATCH_POLL] = "poll",
        [WATCH_OFF] = "off",
};

const char *watch_mode_to_string(WatchMode m) {
        return m >= 0 && m < _WATCH_MODE_MAX ? watch_mode_table[m] : NULL;
}

WatchMode watch_mode_from_string(const char *s) {
        for (int i = 0; s && i < _WATCH_MODE_MAX; i++)
                if (strcmp(s, watch_mode_table[i]) == 0)
                        return (WatchMode) i;
        return _WATCH_MODE_INVALID;
}

/* 5.4: inotify sees only what this kernel changes; on a network or FUSE file system another machine's
 * writes never raise an event. */
int watch_dir_fs_is_remote(const char *dir) {
        static const unsigned long remote[] = {
                0x6969,         /* NFS */
                0x517B,         /* SMB */
                0xFF534D42,     /* CIFS */
                0xFE534D42,     /* SMB2 */
                0x65735546,     /* FUSE (sshfs, rclone, ...) */
                0x00C36400,     /* Ceph */
                0x5346414F,     /* AFS */
                0x73757245,     /* Coda */
                0x01021997,     /* 9P */
                0x47504653,     /* GPFS */
                0x0BD00BD0,     /* Lustre */
        };
        struct statfs sf;

        if (!dir)
                return -EINVAL;
        if (statfs(dir, &sf) < 0)
                return -errno;
        for (size_t i = 0; i < ELEMENTSOF(remote); i++)
                if ((unsigned long) sf.f_type == remote[i])
                        return 1;
        return 0;
}

typedef struct WatchEntry {
        char *rel;              /* the directory's rel_path, "" for the root; NULL: free slot */
        unsigned pass;          /* the registration pass that last reached it (loops, duplicates) */
} WatchEntry;

typedef enum OriginState {
        STATE_WATCHING,         /* inotify */
        STATE_LOST,             /* inotify, root gone: waiting for watcher_reregister() */
        STATE_POLLING,
        STATE_OFF,
} OriginState;

typedef struct WatchedOrigin {
        int64_t id;
        char *name;
        char *dir;
        WatchMode mode;
        OriginState state;
        uint64_t poll_interval_usec;
        uint64_t next_poll_usec;
        int ifd;                /* inotify instance; -1 when none */
        WatchEntry *watches;    /* by wd */
        size_t n_watches_allocated;
        size_t n_watches;
        unsigned pass;
        /* The change set waiting for its debounce. */
        char **pending;
        size_t n_pending, n_pending_allocated;
        bool pending_full;
        uint64_t first_usec, last_usec;         /* 0: nothing pending */
        /* STATE_LOST: the next attempt to watch it again (0: none, wait for watcher_reregister()). */
        uint64_t retry_usec;
        unsigned n_retries;
} WatchedOrigin;

/* 4.2.4: a lost origin is tried again after 1 s, 5 s, then 30 s three times; after that only the
 * health check's watcher_reregister() brings it back. */
static const uint64_t retry_delays_usec[] = { 1000000, 5000000, 30000000, 30000000, 30000000 };

typedef enum CommandKind {
        CMD_ADD,
        CMD_REMOVE,
        CMD_REREGISTER,
        CMD_OVERFLOW,
        CMD_COUNT,
} CommandKind;

typedef struct Command {
        CommandKind kind;
        int64_t id;
        char *name, *dir;
        WatchMode mode;
        uint64_t poll_interval_usec;
        /* CMD_COUNT: answered under Watcher.lock */
        bool done;
        int result;
        struct Command *next;
} Command;

struct Watcher {
        WatcherOptions opts;
        pthread_t thread;
        bool started;
        int efd;
        pthread_mutex_t lock;
        pthread_cond_t answered;
        Command *commands, **commands_tail;     /* under lock */
        bool stop;                              /* under lock */
        /* The thread's own. */
        WatchedOrigin **origins;
        size_t n_origins;
        bool limit_logged;      /* the watch limit is logged once per daemon, not per directory */
};

/* ---- origins and their watches (watcher thread only) ---- */

static void pending_clear(WatchedOrigin *o) {
        for (size_t i = 0; i < o->n_pending; i++)
                free(o->pending[i]);
        o->n_pending = 0;
        o->pending_full = false;
        o->first_usec = o->last_usec = 0;
}

static void watches_drop(WatchedOrigin *o) {
        closep(&o->ifd);        /* closing the instance removes every watch at once */
        o->ifd = -1;            /* closep() leaves the number: another instance may get it next */
        for (size_t i = 0; i < o->n_watches_allocated; i++)
                free(o->watches[i].rel);
        free(o->watches);
        o->watches = NULL;
        o->n_watches_allocated = o->n_watches = 0;
}

static void watched_origin_free(WatchedOrigin *o) {
        if (!o)
                return;
        watches_drop(o);
        pending_clear(o);
        free(o->pending);
        free(o->name);
        free(o->dir);
        free(o);
}

static WatchedOrigin *watcher_find(Watcher *w, int64_t id, size_t *ret_index) {
        for (size_t i = 0; i < w->n_origins; i++)
                if (w->origins[i]->id == id) {
                        if (ret_index)
                                *ret_index = i;
                        return w->origins[i];
                }
        return NULL;
}

static void mark_changed(WatchedOrigin *o, const char *path) {
        uint64_t now = now_usec(CLOCK_MONOTONIC);

        if (o->first_usec == 0)
                o->first_usec = now;
        o->last_usec = now;
        if (o->pending_full)
                return;
        if (!path || o->n_pending >= WATCH_MAX_PENDING_PATHS) {
                pending_clear(o);
                o->pending_full = true;
                o->first_usec = o->first_usec ?: now;
                o->last_usec = now;
                return;
        }
        /* The newest repeats the one before it most often (a file's create, writes, close). */
        if (o->n_pending > 0 && strcmp(o->pending[o->n_pending - 1], path) == 0)
                return;
        if (GREEDY_REALLOC(o->pending, o->n_pending_allocated, o->n_pending + 1) < 0)
                goto full;
        o->pending[o->n_pending] = strdup(path);
        if (!o->pending[o->n_pending])
                goto full;
        o->n_pending++;
        return;
full:
        /* Out of memory: a full rescan loses nothing. */
        pending_clear(o);
        o->pending_full = true;
        o->first_usec = o->last_usec = now;
}

static int watch_slot_set(WatchedOrigin *o, int wd, const char *rel) {
        if ((size_t) wd >= o->n_watches_allocated) {
                size_t n = o->n_watches_allocated ? o->n_watches_allocated : 64;
                while (n <= (size_t) wd)
                        n *= 2;
                WatchEntry *a = reallocarray(o->watches, n, sizeof *a);
                if (!a)
                        return -ENOMEM;
                memset(a + o->n_watches_allocated, 0, (n - o->n_watches_allocated) * sizeof *a);
                o->watches = a;
                o->n_watches_allocated = n;
        }
        WatchEntry *e = &o->watches[wd];
        if (!e->rel || strcmp(e->rel, rel) != 0) {
                char *copy = strdup(rel);
                if (!copy)
                        return -ENOMEM;
                if (!e->rel)
                        o->n_watches++;
                free(e->rel);
                e->rel = copy;
        }
        e->pass = o->pass;
        return 0;
}

static void watch_slot_clear(WatchedOrigin *o, int wd) {
        if (wd < 0 || (size_t) wd >= o->n_watches_allocated || !o->watches[wd].rel)
                return;
        free(o->watches[wd].rel);
        o->watches[wd].rel = NULL;
        o->n_watches--;
}

static const char *watch_slot_get(const WatchedOrigin *o, int wd) {
        if (wd < 0 || (size_t) wd >= o->n_watches_allocated)
                return NULL;
        return o->watches[wd].rel;
}

static bool path_is_or_under(const char *path, const char *dir) {
        size_t n = strlen(dir);
        if (n == 0)
                return true;
        return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* The watches of rel and below go: it moved away, or out of the origin. */
static void watches_forget_under(WatchedOrigin *o, const char *rel) {
        for (size_t wd = 0; wd < o->n_watches_allocated; wd++) {
                const char *p = o->watches[wd].rel;
                if (!p || !path_is_or_under(p, rel))
                        continue;
                (void) inotify_rm_watch(o->ifd, (int) wd);
                watch_slot_clear(o, (int) wd);
        }
}

static char *path_join(const char *a, const char *b) {
        char *p;
        if (asprintf(&p, "%s%s%s", a, a[0] && b[0] ? "/" : "", b) < 0)
                return NULL;
        return p;
}

/* Watches the directory rel and every directory below it. -ENOSPC when the watch limit is hit,
 * -ENOMEM; a directory that cannot be read or is gone is skipped (its scan says why). */
static int watches_add_tree(Watcher *w, WatchedOrigin *o, const char *rel) {
        char **stack = NULL;
        size_t n_stack = 0, allocated = 0;
        int r = 0;

        o->pass++;
        char *first = strdup(rel);
        if (!first)
                return -ENOMEM;
        stack = malloc(16 * sizeof *stack);
        if (!stack) {
                free(first);
                return -ENOMEM;
        }
        allocated = 16;
        stack[n_stack++] = first;

        while (n_stack > 0) {
                _cleanup_free_ char *cur = stack[--n_stack];
                _cleanup_free_ char *abs = path_join(o->dir, cur);
                if (!abs) {
                        r = -ENOMEM;
                        break;
                }

                int wd = inotify_add_watch(o->ifd, abs, WATCH_MASK);
                if (wd < 0) {
                        if (errno == ENOSPC) {
                                r = -ENOSPC;
                                break;
                        }
                        if (errno == ENOMEM) {
                                r = -ENOMEM;
                                break;
                        }
                        /* Gone, not a directory (IN_ONLYDIR), unreadable: nothing to watch there. */
                        if (!cur[0]) {
                                r = -errno;
                                break;
                        }
                        log_debug_errno(errno, "Origin %s: cannot watch %s: %m", o->name, abs);
                        continue;
                }
                /* The same directory reached twice in one pass (a symlink to an ancestor, or two
                 * links to one directory) keeps its first name and is not entered again. */
                if (watch_slot_get(o, wd) && o->watches[wd].pass == o->pass)
                        continue;
                if (w->opts.max_watches > 0 && !watch_slot_get(o, wd) && o->n_watches >= w->opts.max_watches) {
                        (void) inotify_rm_watch(o->ifd, wd);
                        r = -ENOSPC;
                        break;
                }
                r = watch_slot_set(o, wd, cur);
                if (r < 0)
                        break;

                _cleanup_(closedirp) DIR *d = opendir(abs);
                if (!d)
                        continue;
                struct dirent *de;
                while ((de = readdir(d))) {
                        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                                continue;
                        if (de->d_type != DT_DIR && de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
                                continue;
                        if (de->d_type != DT_DIR) {
                                struct stat st;
                                if (fstatat(dirfd(d), de->d_name, &st, 0) < 0 || !S_ISDIR(st.st_mode))
                                        continue;
                        }
                        if (n_stack == allocated) {
                                char **a = reallocarray(stack, allocated * 2, sizeof *a);
                                if (!a) {
                                        r = -ENOMEM;
                                        break;
                                }
                                stack = a;
                                allocated *= 2;
                        }
                        stack[n_stack] = path_join(cur, de->d_name);
                        if (!stack[n_stack]) {
                                r = -ENOMEM;
                                break;
                        }
                        n_stack++;
                }
                if (r < 0)
                        break;
        }
        while (n_stack > 0)
                free(stack[--n_stack]);
        free(stack);
        return r;
}

static void origin_start_polling(Watcher *w, WatchedOrigin *o) {
        watches_drop(o);
        o->state = STATE_POLLING;
        o->next_poll_usec = now_usec(CLOCK_MONOTONIC) + o->poll_interval_usec;
}

/* Opens the instance and registers the whole tree. A resource limit switches the origin to polling
 * and says so once. */
static int origin_register(Watcher *w, WatchedOrigin *o) {
        int r;

        watches_drop(o);
        o->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (o->ifd < 0)
                r = -errno;
        else
                r = watches_add_tree(w, o, "");

        if (r == -ENOSPC || r == -EMFILE || r == -ENFILE || r == -ENOMEM) {
                if (!w->limit_logged)
                        log_warning_errno(r, "Origin %s: out of inotify watches or instances (raise "
                                          "fs.inotify.max_user_watches / max_user_instances); polling it every %" PRIu64
                                          " s instead: %m", o->name, o->poll_interval_usec / UINT64_C(1000000));
                else
                        log_info("Origin %s: out of inotify watches or instances; polling it every %" PRIu64 " s instead",
                                 o->name, o->poll_interval_usec / UINT64_C(1000000));
                w->limit_logged = true;
                origin_start_polling(w, o);
                const char *none[] = { NULL };
                w->opts.report(o->id, WATCH_REPORT_POLLING, none, 0, w->opts.userdata);
                return 0;
        }
        if (r < 0) {
                /* The root is not there: like a root that goes away later, wait for the health check. */
                watches_drop(o);
                if (o->state != STATE_LOST) {
                        o->n_retries = 0;
                        o->state = STATE_LOST;
                }
                if (o->n_retries < ELEMENTSOF(retry_delays_usec)) {
                        uint64_t d = retry_delays_usec[o->n_retries++];
                        o->retry_usec = now_usec(CLOCK_MONOTONIC) + d;
                        log_warning_errno(r, "Origin %s: cannot watch %s, will retry in %" PRIu64 " s: %m", o->name,
                                          o->dir, d / UINT64_C(1000000));
                } else {
                        o->retry_usec = 0;
                        log_warning_errno(r, "Origin %s: cannot watch %s; waiting for its health check to see it "
                                          "back: %m", o->name, o->dir);
                }
                return r;
        }
        o->state = STATE_WATCHING;
        log_debug("Origin %s: watching %zu directories of %s", o->name, o->n_watches, o->dir);
        return 0;
}

/* ---- events ---- */

static void origin_lost(Watcher *w, WatchedOrigin *o, const char *why) {
        log_warning("Origin %s: %s %s; changes are not watched until it is back (will retry in %" PRIu64 " s)",
                    o->name, o->dir, why, retry_delays_usec[0] / UINT64_C(1000000));
        watches_drop(o);
        pending_clear(o);
        o->state = STATE_LOST;
        o->n_retries = 1;
        o->retry_usec = now_usec(CLOCK_MONOTONIC) + retry_delays_usec[0];
        const char *none[] = { NULL };
        w->opts.report(o->id, WATCH_REPORT_LOST, none, 0, w->opts.userdata);
}

static void origin_overflow(Watcher *w, WatchedOrigin *o) {
        log_notice("Origin %s: the inotify queue overflowed; rescanning the origin", o->name);
        mark_changed(o, NULL);
        /* Directories created while events were lost have no watch yet. */
        int r = watches_add_tree(w, o, "");
        if (r < 0 && o->state == STATE_WATCHING)
                (void) origin_register(w, o);
}

static void handle_event(Watcher *w, WatchedOrigin *o, const struct inotify_event *ev) {
        if (ev->mask & IN_Q_OVERFLOW)
                return origin_overflow(w, o);

        const char *dir = watch_slot_get(o, ev->wd);
        if (ev->mask & IN_IGNORED) {
                watch_slot_clear(o, ev->wd);
                return;
        }
        if (!dir)
                return;         /* a watch we dropped already */

        if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)) {
                if (!dir[0])
                        origin_lost(w, o, ev->mask & IN_MOVE_SELF ? "was moved away" :
                                          ev->mask & IN_UNMOUNT ? "was unmounted" : "was removed");
                /* Below the root, the parent's MOVED_FROM/DELETE says it. */
                return;
        }
        if (ev->len == 0 || !ev->name[0])
                return;

        _cleanup_free_ char *path = path_join(dir, ev->name);
        if (!path)
                return mark_changed(o, NULL);

        if (ev->mask & IN_ISDIR) {
                if (ev->mask & (IN_MOVED_FROM | IN_DELETE)) {
                        watches_forget_under(o, path);
                        mark_changed(o, path);
                } else if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
                        /* Files may have landed in it before its watch did: its scan finds them. */
                        int r = watches_add_tree(w, o, path);
                        if (r == -ENOSPC || r == -ENOMEM) {
                                (void) origin_register(w, o);   /* logs, and polls from now on */
                                if (o->state != STATE_WATCHING)
                                        return;
                        }
                        mark_changed(o, path);
                }
                return;
        }

        /* Only audio files make the tree; a cover image or an editor's temporary file does not. */
        if (!tags_audio_extension(ev->name, NULL))
                return;
        mark_changed(o, path);
}

static void origin_read_events(Watcher *w, WatchedOrigin *o) {
        _Alignas(struct inotify_event) char buf[64 * 1024];
        int ifd = o->ifd;

        for (;;) {
                ssize_t n = read(ifd, buf, sizeof buf);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                log_debug_errno(errno, "Origin %s: reading inotify events: %m", o->name);
                        return;
                }
                if (n == 0)
                        return;
                for (char *p = buf; p < buf + n;) {
                        const struct inotify_event *ev = (const struct inotify_event *) p;
                        p += sizeof *ev + ev->len;
                        handle_event(w, o, ev);
                        if (o->ifd != ifd)      /* lost, registered anew, or polled from now on */
                                return;
                }
        }
}

static int string_compare(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Hands the set over: sorted, and without paths that a directory of the set covers. */
static void origin_flush(Watcher *w, WatchedOrigin *o) {
        if (o->pending_full) {
                const char *all[] = { "" };
                pending_clear(o);
                w->opts.report(o->id, WATCH_REPORT_RESCAN, all, 1, w->opts.userdata);
                return;
        }
        if (o->n_pending == 0) {
                pending_clear(o);
                return;
        }
        qsort(o->pending, o->n_pending, sizeof *o->pending, string_compare);
        size_t kept = 0;
        for (size_t i = 0; i < o->n_pending; i++) {
                bool covered = false;
                for (size_t j = 0; j < kept && !covered; j++)
                        covered = path_is_or_under(o->pending[i], o->pending[j]);
                if (covered)
                        free(o->pending[i]);
                else
                        o->pending[kept++] = o->pending[i];
        }
        o->n_pending = kept;
        w->opts.report(o->id, WATCH_REPORT_CHANGED, (const char *const *) o->pending, o->n_pending, w->opts.userdata);
        pending_clear(o);
}

static uint64_t origin_deadline(const Watcher *w, const WatchedOrigin *o) {
        uint64_t d = UINT64_MAX;

        if (o->first_usec > 0) {
                uint64_t a = o->last_usec + w->opts.debounce_usec, b = o->first_usec + w->opts.max_delay_usec;
                d = a < b ? a : b;
        }
        if (o->state == STATE_POLLING && o->next_poll_usec < d)
                d = o->next_poll_usec;
        if (o->state == STATE_LOST && o->retry_usec > 0 && o->retry_usec < d)
                d = o->retry_usec;
        return d;
}

/* A lost origin's root may be back: watch it anew, and rescan it for what changed meanwhile. */
static void origin_watch_again(Watcher *w, WatchedOrigin *o) {
        if (origin_register(w, o) < 0 || o->state != STATE_WATCHING)
                return;
        log_info("Origin %s: watching %s again (%zu directories); rescanning it", o->name, o->dir, o->n_watches);
        o->retry_usec = 0;
        mark_changed(o, NULL);
}

/* ---- commands ---- */

static void command_free(Command *c) {
        if (!c)
                return;
        free(c->name);
        free(c->dir);
        free(c);
}

static int watcher_send(Watcher *w, Command *c, bool wait) {
        int result = 0;

        pthread_mutex_lock(&w->lock);
        c->next = NULL;
        *w->commands_tail = c;
        w->commands_tail = &c->next;
        if (eventfd_write(w->efd, 1) < 0)
                log_debug_errno(errno, "Failed to wake the watcher: %m");
        if (wait) {
                while (!c->done)
                        pthread_cond_wait(&w->answered, &w->lock);
                result = c->result;
        }
        pthread_mutex_unlock(&w->lock);
        if (wait)
                command_free(c);
        return result;
}

static void run_command(Watcher *w, Command *c) {
        size_t index;
        WatchedOrigin *o = watcher_find(w, c->id, &index);

        switch (c->kind) {
        case CMD_ADD: {
                if (o) {
                        watched_origin_free(o);
                        w->origins[index] = w->origins[--w->n_origins];
                }
                WatchedOrigin **a = reallocarray(w->origins, w->n_origins + 1, sizeof *a);
                o = calloc(1, sizeof *o);
                if (!a || !o) {
                        free(o);
                        if (a)
                                w->origins = a;
                        log_error_errno(ENOMEM, "Origin %s: out of memory, not watched", c->name);
                        return;
                }
                w->origins = a;
                *o = (WatchedOrigin) {
                        .id = c->id,
                        .name = TAKE_PTR(c->name),
                        .dir = TAKE_PTR(c->dir),
                        .mode = c->mode,
                        .poll_interval_usec = c->poll_interval_usec ?: WATCH_POLL_INTERVAL_SEC_DEFAULT * 1000000ULL,
                        .ifd = -1,
                };
                w->origins[w->n_origins++] = o;
                if (o->mode == WATCH_INOTIFY)
                        (void) origin_register(w, o);
                else if (o->mode == WATCH_POLL) {
                        origin_start_polling(w, o);
                        log_debug("Origin %s: polled every %" PRIu64 " s", o->name, o->poll_interval_usec / UINT64_C(1000000));
                } else
                        o->state = STATE_OFF;
                return;
        }
        case CMD_REMOVE:
                if (o) {
                        watched_origin_free(o);
                        w->origins[index] = w->origins[--w->n_origins];
                }
                return;
        case CMD_REREGISTER:
                if (!o || o->state != STATE_LOST)
                        return;
                o->n_retries = 0;
                origin_watch_again(w, o);
                return;
        case CMD_OVERFLOW:
                if (o && o->state == STATE_WATCHING)
                        origin_overflow(w, o);
                return;
        case CMD_COUNT:
                c->result = !o ? -ENOENT : o->state == STATE_WATCHING ? (int) o->n_watches :
                            o->state == STATE_POLLING ? -EOPNOTSUPP : -ENOLINK;
                return;
        }
}

/* ---- the thread ---- */

static void *watcher_main(void *userdata) {
        Watcher *w = userdata;
        struct pollfd *fds = NULL;
        WatchedOrigin **polled = NULL;
        thread_set_name("mfs-watch");

        for (;;) {
                Command *commands;

                pthread_mutex_lock(&w->lock);
                bool stop = w->stop;
                commands = w->commands;
                w->commands = NULL;
                w->commands_tail = &w->commands;
                pthread_mutex_unlock(&w->lock);

                while (commands) {
                        Command *c = commands;
                        commands = c->next;
                        if (!stop)
                                run_command(w, c);
                        if (c->kind == CMD_COUNT) {
                                pthread_mutex_lock(&w->lock);
                                c->done = true;
                                pthread_cond_broadcast(&w->answered);
                                pthread_mutex_unlock(&w->lock);
                        } else
                                command_free(c);
                }
                if (stop)
                        break;

                /* Reports whose time has come. */
                uint64_t now = now_usec(CLOCK_MONOTONIC), next = UINT64_MAX;
                for (size_t i = 0; i < w->n_origins; i++) {
                        WatchedOrigin *o = w->origins[i];
                        uint64_t d = origin_deadline(w, o);
                        if (d <= now) {
                                if (o->first_usec > 0 &&
                                    (o->last_usec + w->opts.debounce_usec <= now || o->first_usec + w->opts.max_delay_usec <= now))
                                        origin_flush(w, o);
                                if (o->state == STATE_LOST && o->retry_usec > 0 && o->retry_usec <= now) {
                                        o->retry_usec = 0;
                                        origin_watch_again(w, o);
                                }
                                if (o->state == STATE_POLLING && o->next_poll_usec <= now) {
                                        const char *all[] = { "" };
                                        o->next_poll_usec = now + o->poll_interval_usec;
                                        w->opts.report(o->id, WATCH_REPORT_RESCAN, all, 1, w->opts.userdata);
                                }
                                d = origin_deadline(w, o);
                        }
                        if (d < next)
                                next = d;
                }

                struct pollfd *f = reallocarray(fds, w->n_origins + 1, sizeof *f);
                WatchedOrigin **p = reallocarray(polled, w->n_origins + 1, sizeof *p);
                if (f)
                        fds = f;
                if (p)
                        polled = p;
                if (!f || !p) {
                        log_error_errno(ENOMEM, "Watcher out of memory; retrying in 1 s");
                        (void) poll(NULL, 0, 1000);
                        continue;
                }
                size_t n = 0;
                fds[n++] = (struct pollfd) { .fd = w->efd, .events = POLLIN };
                for (size_t i = 0; i < w->n_origins; i++)
                        if (w->origins[i]->ifd >= 0) {
                                polled[n] = w->origins[i];
                                fds[n++] = (struct pollfd) { .fd = w->origins[i]->ifd, .events = POLLIN };
                        }

                int timeout = -1;
                if (next != UINT64_MAX) {
                        now = now_usec(CLOCK_MONOTONIC);
                        uint64_t ms = next > now ? (next - now + 999) / 1000 : 0;
                        timeout = ms > INT_MAX ? INT_MAX : (int) ms;
                }
                int k = poll(fds, n, timeout);
                if (k < 0) {
                        if (errno != EINTR)
                                log_debug_errno(errno, "Watcher poll failed: %m");
                        continue;
                }
                if (fds[0].revents & POLLIN) {
                        eventfd_t v;
                        (void) eventfd_read(w->efd, &v);
                }
                for (size_t i = 1; i < n; i++)
                        if (fds[i].revents & (POLLIN | POLLERR | POLLHUP))
                                origin_read_events(w, polled[i]);
        }
        free(fds);
        free(polled);
        return NULL;
}

int watcher_new(const WatcherOptions *opts, Watcher **ret) {
        Watcher *w;
        int r;

        if (!opts || !opts->report || !ret)
                return -EINVAL;
        w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->opts = *opts;
        if (w->opts.debounce_usec == 0)
                w->opts.debounce_usec = WATCH_DEBOUNCE_USEC_DEFAULT;
        if (w->opts.max_delay_usec == 0)
                w->opts.max_delay_usec = WATCH_MAX_DELAY_USEC_DEFAULT;
        if (w->opts.max_delay_usec < w->opts.debounce_usec)
                w->opts.max_delay_usec = w->opts.debounce_usec;
        w->commands_tail = &w->commands;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->answered, NULL);
        w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->efd < 0) {
                r = -errno;
                watcher_free(w);
                return r;
        }

        /* Signals stay with the event loop's thread. */
        sigset_t all, old;
        sigfillset_except_crash(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        r = -pthread_create(&w->thread, NULL, watcher_main, w);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0) {
                watcher_free(w);
                return r;
        }
        w->started = true;
        *ret = w;
        return 0;
}

void watcher_free(Watcher *w) {
        if (!w)
                return;
        if (w->started) {
                pthread_mutex_lock(&w->lock);
                w->stop = true;
                (void) eventfd_write(w->efd, 1);
                pthread_mutex_unlock(&w->lock);
                pthread_join(w->thread, NULL);
        }
        while (w->commands) {
                Command *c = w->commands;
                w->commands = c->next;
                command_free(c);
        }
        for (size_t i = 0; i < w->n_origins; i++)
                watched_origin_free(w->origins[i]);
        free(w->origins);
        closep(&w->efd);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->answered);
        free(w);
}

static int command_new(CommandKind kind, int64_t id, Command **ret) {
        Command *c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->kind = kind;
        c->id = id;
        *ret = c;
        return 0;
}

int watcher_add(Watcher *w, int64_t origin_id, const char *name, const char *dir, WatchMode mode,
                uint64_t poll_interval_usec) {
        Command *c;
        int r;

        if (!w || !name || !dir || mode < 0 || mode >= _WATCH_MODE_MAX)
                return -EINVAL;
        /* Only inotify needs a local directory; a polled origin is scanned through its vtable. */
        if (mode == WATCH_INOTIFY && dir[0] != '/')
                return -EINVAL;
        r = command_new(CMD_ADD, origin_id, &c);
        if (r < 0)
                return r;
        c->name = strdup(name);
        c->dir = strdup(dir);
        c->mode = mode;
        c->poll_interval_usec = poll_interval_usec;
        if (!c->name || !c->dir) {
                command_free(c);
                return -ENOMEM;
        }
        return watcher_send(w, c, false);
}

static int watcher_simple(Watcher *w, CommandKind kind, int64_t origin_id, bool wait) {
        Command *c;
        int r;

        if (!w)
                return -EINVAL;
        r = command_new(kind, origin_id, &c);
        if (r < 0)
                return r;
        return watcher_send(w, c, wait);
}

int watcher_remove(Watcher *w, int64_t origin_id) {
        return watcher_simple(w, CMD_REMOVE, origin_id, false);
}

int watcher_reregister(Watcher *w, int64_t origin_id) {
        return watcher_simple(w, CMD_REREGISTER, origin_id, false);
}

int watcher_simulate_overflow(Watcher *w, int64_t origin_id) {
        return watcher_simple(w, CMD_OVERFLOW, origin_id, false);
}

int watcher_count_watches(Watcher *w, int64_t origin_id) {
        return watcher_simple(w, CMD_COUNT, origin_id, true);
}
