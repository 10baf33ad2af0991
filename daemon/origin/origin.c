/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "failpoint.h"
#include "log.h"
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

int origin_stat(Origin *o, const char *rel_path, OriginStat *ret) {
        if (!o || !rel_path || !ret)
                return -EINVAL;

        int r = FAILPOINT(ORIGIN_STAT);
        if (r < 0)
                return r;

        return o->ops->stat(o, rel_path, ret);
}

int origin_open(Origin *o, const char *rel_path, OriginFile **ret) {
        if (!o || !rel_path || !ret)
                return -EINVAL;

        int r = FAILPOINT(ORIGIN_OPEN);
        if (r < 0)
                return r;

        OriginFile *f = NULL;
        r = o->ops->open(o, rel_path, &f);
        if (r < 0)
                return r;

        f->ops = o->ops;
        f->origin = o;
        *ret = f;
        return 0;
}

ssize_t origin_pread(OriginFile *f, void *buf, size_t size, uint64_t offset) {
        if (!f || (!buf && size > 0))
                return -EINVAL;
        if (offset > INT64_MAX)
                return -EINVAL;

        int r = FAILPOINT(ORIGIN_READ);
        if (r < 0)
                return r;

        /* A byte count must fit the return type. */
        if (size > SSIZE_MAX)
                size = SSIZE_MAX;

        return f->ops->pread(f, buf, size, offset);
}

ssize_t origin_pread_full(OriginFile *f, void *buf, size_t size, uint64_t offset) {
        if (size > SSIZE_MAX)
                size = SSIZE_MAX;

        size_t done = 0;
        while (done < size) {
                ssize_t n = origin_pread(f, (char *) buf + done, size - done, offset + done);
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

void origin_close(OriginFile *f) {
        if (f)
                f->ops->close(f);
}

int origin_walk_full(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        if (!o || !fn)
                return -EINVAL;
        return o->ops->walk(o, fn, skipped, userdata);
}

int origin_walk(Origin *o, origin_walk_fn fn, void *userdata) {
        return origin_walk_full(o, fn, NULL, userdata);
}

int origin_check(Origin *o) {
        if (!o)
                return -EINVAL;
        return o->ops->check(o);
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

        if (s->n_origins == s->n_allocated) {
                size_t n = s->n_allocated ? s->n_allocated * 2 : 4;
                Origin **a = reallocarray(s->origins, n, sizeof *a);
                if (!a) {
                        r = -ENOMEM;
                        goto finish;
                }
                s->origins = a;
                s->n_allocated = n;
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
