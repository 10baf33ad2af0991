/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "origin-internal.h"

int origin_rel_path_check(const char *rel_path) {
        if (!rel_path || rel_path[0] == '\0' || rel_path[0] == '/')
                return -EINVAL;

        for (const char *p = rel_path;;) {
                size_t len = strcspn(p, "/");
                if (len == 0)
                        return -EINVAL;         /* "a//b" or a trailing '/' */
                if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
                        return -EINVAL;
                if (p[len] == '\0')
                        return 0;
                p += len + 1;
        }
}

/* D10: 5 s for an origin whose operations origin-exec.c bounds, 30 s for one that bounds its own. */
#define ORIGIN_TIMEOUT_LOCAL_MS 5000u
#define ORIGIN_TIMEOUT_REMOTE_MS 30000u

void origin_set_timeout(Origin *o, unsigned ms) {
        if (o)
                o->timeout_ms = ms;
}

unsigned origin_timeout_ms(const Origin *o) {
        if (!o)
                return ORIGIN_TIMEOUT_LOCAL_MS;
        if (o->timeout_ms > 0)
                return o->timeout_ms;
        return o->ops->own_timeouts ? ORIGIN_TIMEOUT_REMOTE_MS : ORIGIN_TIMEOUT_LOCAL_MS;
}

int origin_stat(Origin *o, const char *rel_path, OriginStat *ret) {
        if (!o || !rel_path || !ret)
                return -EINVAL;

        OriginCall c = { .op = ORIGIN_OP_STAT, .origin = o, .rel_path = rel_path };
        int r = (int) origin_call(&c, 0);
        if (r < 0)
                return r;
        *ret = c.st;
        return r;
}

int origin_open_until(Origin *o, const char *rel_path, OriginFile **ret, uint64_t deadline_usec) {
        if (!o || !rel_path || !ret)
                return -EINVAL;

        OriginCall c = { .op = ORIGIN_OP_OPEN, .origin = o, .rel_path = rel_path };
        int r = (int) origin_call(&c, deadline_usec);
        if (r < 0)
                return r;
        *ret = c.opened;
        return 0;
}

int origin_open(Origin *o, const char *rel_path, OriginFile **ret) {
        return origin_open_until(o, rel_path, ret, 0);
}

ssize_t origin_pread_until(OriginFile *f, void *buf, size_t size, uint64_t offset, uint64_t deadline_usec) {
        if (!f || (!buf && size > 0))
                return -EINVAL;
        if (offset > INT64_MAX)
                return -EINVAL;

        /* A byte count must fit the return type. */
        if (size > SSIZE_MAX)
                size = SSIZE_MAX;

        /* Bytes already in memory cannot hang: no worker hop for them (about 15 µs a read). A read
         * the failpoint must see, or one that would wait on the device, goes to the workers. */
        if (f->ops->pread_nowait && !f->ops->own_timeouts && !FAILPOINT_ARMED(ORIGIN_READ)) {
                ssize_t n = f->ops->pread_nowait(f, buf, size, offset);
                if (n >= 0)
                        return n;
        }

        OriginCall c = { .op = ORIGIN_OP_PREAD, .origin = f->origin, .file = f, .buf = buf, .size = size, .offset = offset };
        return origin_call(&c, deadline_usec);
}

ssize_t origin_pread(OriginFile *f, void *buf, size_t size, uint64_t offset) {
        return origin_pread_until(f, buf, size, offset, 0);
}

ssize_t origin_pread_full_until(OriginFile *f, void *buf, size_t size, uint64_t offset, uint64_t deadline_usec) {
        if (size > SSIZE_MAX)
                size = SSIZE_MAX;

        size_t done = 0;
        while (done < size) {
                ssize_t n = origin_pread_until(f, (char *) buf + done, size - done, offset + done, deadline_usec);
                if (n == -EINTR)
                        continue;
                if (n < 0)
                        return n;
                if (n == 0)
                        break;          /* EOF */
                done += (size_t) n;
        }
        return (ssize_t) done;
}

ssize_t origin_pread_full(OriginFile *f, void *buf, size_t size, uint64_t offset) {
        return origin_pread_full_until(f, buf, size, offset, 0);
}

void origin_close(OriginFile *f) {
        /* A worker still in a pread that timed out holds its own reference. */
        origin_file_unref(f);
}

static int walk_run(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata);

int origin_walk_full(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        if (!o || !fn)
                return -EINVAL;
        return origin_walk_call(o, "", walk_run, fn, skipped, userdata);
}

int origin_walk(Origin *o, origin_walk_fn fn, void *userdata) {
        return origin_walk_full(o, fn, NULL, userdata);
}

/* An origin without walk_under walks everything and passes on what lies under the prefix. */
typedef struct WalkFilter {
        const char *prefix;
        size_t len;
        origin_walk_fn fn;
        origin_walk_skipped_fn skipped;
        void *userdata;
} WalkFilter;

static bool path_under(const char *path, const char *prefix, size_t len) {
        return strncmp(path, prefix, len) == 0 && (path[len] == '/' || path[len] == '\0');
}

static int walk_filter_fn(const char *rel_path, const OriginStat *st, void *userdata) {
        WalkFilter *f = userdata;
        return path_under(rel_path, f->prefix, f->len) ? f->fn(rel_path, st, f->userdata) : 0;
}

static int walk_filter_skipped(const char *rel_path, int error, void *userdata) {
        WalkFilter *f = userdata;
        /* An unreadable parent hides the subtree as well. */
        if (!f->skipped || !(path_under(rel_path, f->prefix, f->len) || path_under(f->prefix, rel_path, strlen(rel_path))))
                return 0;
        return f->skipped(rel_path, error, f->userdata);
}

/* The walk itself, on origin-exec.c's walk thread (D10). */
static int walk_run(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        if (!rel_dir[0])
                return o->ops->walk(o, fn, skipped, userdata);
        if (o->ops->walk_under)
                return o->ops->walk_under(o, rel_dir, fn, skipped, userdata);

        WalkFilter f = { .prefix = rel_dir, .len = strlen(rel_dir), .fn = fn, .skipped = skipped, .userdata = userdata };
        return o->ops->walk(o, walk_filter_fn, walk_filter_skipped, &f);
}

int origin_walk_under(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        if (!o || !fn || !rel_dir)
                return -EINVAL;
        return origin_walk_call(o, rel_dir, walk_run, fn, skipped, userdata);
}

int origin_check(Origin *o) {
        if (!o)
                return -EINVAL;
        OriginCall c = { .op = ORIGIN_OP_CHECK, .origin = o };
        return (int) origin_call(&c, 0);
}

Origin *origin_ref(Origin *o) {
        if (o)
                atomic_fetch_add_explicit(&o->n_ref, 1, memory_order_relaxed);
        return o;
}

void origin_unref(Origin *o) {
        if (!o)
                return;

        /* n_ref counts the references beyond the first, so 0 means ours is the last. */
        unsigned n = atomic_load_explicit(&o->n_ref, memory_order_acquire);
        do {
                if (n == 0)
                        break;
        } while (!atomic_compare_exchange_weak_explicit(&o->n_ref, &n, n - 1, memory_order_acq_rel,
                                                        memory_order_acquire));
        if (n > 0)
                return;

        origin_exec_free(atomic_exchange(&o->exec, NULL));
        free(o->name);
        o->name = NULL;
        free(o->url);
        o->url = NULL;
        o->ops->free(o);
}

void origin_free(Origin *o) {
        origin_unref(o);
}

/* Sorted by (priority, name). Readers take the lock shared; add and remove take it exclusive, so a
 * reader never sees the array mid-insert or mid-realloc. The set holds one reference to each origin;
 * a removed origin lives on while a reader holds a reference of its own. */
struct OriginSet {
        pthread_rwlock_t lock;
        Origin **origins;
        size_t n_origins;
        size_t n_allocated;
};

int origin_set_new(OriginSet **ret) {
        if (!ret)
                return -EINVAL;

        OriginSet *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;

        /* glibc's default lets a steady stream of readers (FUSE workers looking up origins on every
         * read) starve origin_set_add() forever; no reader takes the lock twice, so writer
         * preference is safe. */
        pthread_rwlockattr_t attr;
        int r = pthread_rwlockattr_init(&attr);
        if (r == 0) {
                r = pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
                if (r == 0)
                        r = pthread_rwlock_init(&s->lock, &attr);
                pthread_rwlockattr_destroy(&attr);
        }
        if (r != 0) {
                free(s);
                return -r;
        }

        *ret = s;
        return 0;
}

void origin_set_free(OriginSet *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->n_origins; i++)
                origin_free(s->origins[i]);
        free(s->origins);
        pthread_rwlock_destroy(&s->lock);
        free(s);
}

static int origin_compare(const Origin *a, const Origin *b) {
        if (a->priority != b->priority)
                return a->priority < b->priority ? -1 : 1;
        return strcmp(a->name, b->name);
}

int origin_set_add(OriginSet *s, Origin *o) {
        if (!s || !o || !o->name)
                return -EINVAL;

        int r = 0;
        pthread_rwlock_wrlock(&s->lock);

        for (size_t i = 0; i < s->n_origins; i++)
                if (strcmp(s->origins[i]->name, o->name) == 0) {
                        r = -EEXIST;
                        goto finish;
                }

        if (GREEDY_REALLOC(s->origins, s->n_allocated, s->n_origins + 1) < 0) {
                r = -ENOMEM;
                goto finish;
        }

        size_t pos = s->n_origins;
        while (pos > 0 && origin_compare(s->origins[pos - 1], o) > 0)
                pos--;
        memmove(s->origins + pos + 1, s->origins + pos, (s->n_origins - pos) * sizeof *s->origins);
        s->origins[pos] = o;
        s->n_origins++;

finish:
        pthread_rwlock_unlock(&s->lock);
        return r;
}

static Origin *origin_set_find(OriginSet *s, int64_t id, bool take_ref) {
        if (!s)
                return NULL;

        Origin *found = NULL;
        pthread_rwlock_rdlock(&s->lock);
        for (size_t i = 0; i < s->n_origins; i++)
                if (s->origins[i]->id == id) {
                        found = s->origins[i];
                        break;
                }
        /* Under the lock: a remove cannot drop the set's reference in between. */
        if (take_ref)
                origin_ref(found);
        pthread_rwlock_unlock(&s->lock);
        return found;
}

Origin *origin_set_get(OriginSet *s, int64_t id) {
        return origin_set_find(s, id, false);
}

Origin *origin_set_get_ref(OriginSet *s, int64_t id) {
        return origin_set_find(s, id, true);
}

int origin_set_remove(OriginSet *s, int64_t id) {
        if (!s)
                return -EINVAL;

        Origin *found = NULL;
        pthread_rwlock_wrlock(&s->lock);
        for (size_t i = 0; i < s->n_origins; i++)
                if (s->origins[i]->id == id) {
                        found = s->origins[i];
                        memmove(s->origins + i, s->origins + i + 1, (s->n_origins - i - 1) * sizeof *s->origins);
                        s->n_origins--;
                        break;
                }
        pthread_rwlock_unlock(&s->lock);

        if (!found)
                return -ENOENT;
        origin_unref(found);
        return 0;
}

size_t origin_set_size(OriginSet *s) {
        if (!s)
                return 0;

        pthread_rwlock_rdlock(&s->lock);
        size_t n = s->n_origins;
        pthread_rwlock_unlock(&s->lock);
        return n;
}

static Origin *origin_set_index(OriginSet *s, size_t i, bool take_ref) {
        if (!s)
                return NULL;

        pthread_rwlock_rdlock(&s->lock);
        Origin *o = i < s->n_origins ? s->origins[i] : NULL;
        if (take_ref)
                origin_ref(o);
        pthread_rwlock_unlock(&s->lock);
        return o;
}

Origin *origin_set_at(OriginSet *s, size_t i) {
        return origin_set_index(s, i, false);
}

Origin *origin_set_at_ref(OriginSet *s, size_t i) {
        return origin_set_index(s, i, true);
}
