/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Failover between the replicas of one virtual file (D3, spec §2.10).
 *
 * The kernel may send several reads on one file handle at once. They share the current replica's
 * OriginFile without a lock (pread has no file position); the mutex only guards which replica is
 * current. Each OriginFile sits in a reference-counted handle, so a reader that switches replicas
 * never closes a file another thread is still reading from: the last reference closes it.
 *
 * Retries with backoff (D10: 100 ms, 500 ms, 2 s) and per-operation timeouts belong to a later issue;
 * they slot in around the origin_pread_full() call in replica_reader_read(). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "replica.h"

typedef struct ReplicaSource {
        int64_t origin_id;
        char *rel_path;
} ReplicaSource;

typedef struct ReplicaHandle {
        OriginFile *file;
        Origin *origin;         /* a reference */
        size_t index;           /* into ReplicaReader.sources */
        atomic_uint n_ref;
} ReplicaHandle;

struct ReplicaReader {
        OriginSet *origins;
        /* The catalog's size: a replica that ends before it has changed since the scan, and its
         * bytes are not this file's any more. */
        uint64_t size;
        ReplicaSource *sources; /* copied, so the reader does not pin the Tree it came from */
        size_t n_sources;

        pthread_mutex_t lock;
        ReplicaHandle *current; /* under lock; holds one reference; NULL after every replica failed */
};

static ReplicaHandle *handle_ref(ReplicaHandle *h) {
        if (h)
                atomic_fetch_add_explicit(&h->n_ref, 1, memory_order_relaxed);
        return h;
}

static void handle_unref(ReplicaHandle *h) {
        if (!h)
                return;
        if (atomic_fetch_sub_explicit(&h->n_ref, 1, memory_order_acq_rel) != 1)
                return;
        origin_close(h->file);
        origin_unref(h->origin);
        free(h);
}

static int reader_open_one(ReplicaReader *r, size_t i, ReplicaHandle **ret) {
        const ReplicaSource *src = &r->sources[i];

        /* Our own reference: the origin may be removed at runtime while this handle reads from it. */
        Origin *o = origin_set_get_ref(r->origins, src->origin_id);
        if (!o) {
                log_debug("Replica %s on unknown origin %" PRIi64 " skipped", src->rel_path, src->origin_id);
                return -ENODEV;
        }

        ReplicaHandle *h = calloc(1, sizeof *h);
        if (!h) {
                origin_unref(o);
                return -ENOMEM;
        }

        int k = origin_open(o, src->rel_path, &h->file);
        if (k < 0) {
                log_debug_errno(k, "Failed to open %s on origin %s: %m", src->rel_path, o->name);
                origin_unref(o);
                free(h);
                return k;
        }

        h->origin = o;
        h->index = i;
        atomic_init(&h->n_ref, 1);
        *ret = h;
        return 0;
}

/* Opens the first replica that opens, in priority order from start, wrapping around, leaving out
 * exclude (SIZE_MAX for none). Returns the first error; a replica on an origin that is not
 * configured (any more) is skipped rather than counted as the error. */
static int reader_open_from(ReplicaReader *r, size_t start, size_t exclude, ReplicaHandle **ret) {
        int first_error = 0;

        for (size_t k = 0; k < r->n_sources; k++) {
                size_t i = (start + k) % r->n_sources;
                if (i == exclude)
                        continue;

                int e = reader_open_one(r, i, ret);
                if (e >= 0)
                        return 0;
                if (e == -ENOMEM)
                        return e;
                if (e != -ENODEV && first_error == 0)
                        first_error = e;
        }

        return first_error < 0 ? first_error : -ENOENT;
}

static void reader_free(ReplicaReader *r) {
        if (!r)
                return;
        handle_unref(r->current);
        for (size_t i = 0; i < r->n_sources; i++)
                free(r->sources[i].rel_path);
        free(r->sources);
        pthread_mutex_destroy(&r->lock);
        free(r);
}

int replica_reader_open(OriginSet *origins, const TreeNode *file, ReplicaReader **ret) {
        if (!origins || !file || !ret)
                return -EINVAL;
        if (file->is_dir)
                return -EISDIR;
        if (file->n_replicas == 0 || !file->replicas)
                return -ENOENT;

        ReplicaReader *r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        int e = pthread_mutex_init(&r->lock, NULL);
        if (e != 0) {
                free(r);
                return -e;
        }
        r->origins = origins;
        r->size = file->size;

        r->sources = calloc(file->n_replicas, sizeof *r->sources);
        if (!r->sources) {
                reader_free(r);
                return -ENOMEM;
        }
        for (size_t i = 0; i < file->n_replicas; i++) {
                r->sources[i].origin_id = file->replicas[i].origin_id;
                r->sources[i].rel_path = strdup(strempty(file->replicas[i].rel_path));
                r->n_sources++;
                if (!r->sources[i].rel_path) {
                        reader_free(r);
                        return -ENOMEM;
                }
        }

        e = reader_open_from(r, 0, SIZE_MAX, &r->current);
        if (e < 0) {
                reader_free(r);
                return e;
        }

        *ret = r;
        return 0;
}

/* The current replica with a reference for the caller. After every replica failed, each new read
 * tries them all again from the preferred one: an origin that comes back serves open handles too. */
static ReplicaHandle *reader_acquire(ReplicaReader *r, int *first_error) {
        pthread_mutex_lock(&r->lock);
        if (!r->current) {
                int e = reader_open_from(r, 0, SIZE_MAX, &r->current);
                if (e < 0 && *first_error == 0)
                        *first_error = e;
        }
        ReplicaHandle *h = handle_ref(r->current);
        pthread_mutex_unlock(&r->lock);
        return h;
}

/* failed has just failed a read: makes the next replica that opens current, unless another thread
 * already moved on, and returns the new current with a reference for the caller (NULL when no
 * other replica opens). */
static ReplicaHandle *reader_failover(ReplicaReader *r, ReplicaHandle *failed, int *first_error) {
        ReplicaHandle *h = NULL;

        pthread_mutex_lock(&r->lock);
        if (r->current == failed) {
                /* The caller still holds a reference, so this does not close the file under it. */
                handle_unref(TAKE_PTR(r->current));

                int e = reader_open_from(r, failed->index + 1, failed->index, &r->current);
                if (e < 0 && *first_error == 0)
                        *first_error = e;
        }
        h = handle_ref(r->current);
        pthread_mutex_unlock(&r->lock);

        return h;
}

static bool read_is_short(const ReplicaReader *r, size_t got, size_t size, uint64_t offset) {
        if (got >= size || offset >= r->size)
                return false;
        uint64_t expected = r->size - offset < size ? r->size - offset : size;
        return got < expected;
}

ssize_t replica_reader_read(ReplicaReader *r, void *buf, size_t size, uint64_t offset) {
        if (!r || (!buf && size > 0))
                return -EINVAL;

        int first_error = 0;
        ReplicaHandle *h = reader_acquire(r, &first_error);

        /* Each replica gets at most one try per read, however other threads move the current one. */
        for (size_t attempt = 1; h; attempt++) {
                ssize_t n = origin_pread_full(h->file, buf, size, offset);
                if (n >= 0 && !read_is_short(r, (size_t) n, size, offset)) {
                        handle_unref(h);
                        return n;
                }

                int e;
                if (n < 0) {
                        e = (int) n;
                        log_debug_errno(e, "Reading %s at %" PRIu64 " from origin %s failed, trying the next replica: %m",
                                        r->sources[h->index].rel_path, offset, h->origin->name);
                } else {
                        e = -EIO;
                        log_debug("Replica %s on origin %s ends before the %" PRIu64 " bytes the catalog knows, trying the next replica",
                                  r->sources[h->index].rel_path, h->origin->name, r->size);
                }
                if (first_error == 0)
                        first_error = e;

                ReplicaHandle *next = attempt < r->n_sources ? reader_failover(r, h, &first_error) : NULL;
                handle_unref(h);
                h = next;
        }

        return first_error < 0 ? first_error : -EIO;
}

void replica_reader_close(ReplicaReader *r) {
        reader_free(r);
}
