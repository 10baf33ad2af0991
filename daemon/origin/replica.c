/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Failover between the replicas of one virtual file (D3, spec §2.10).
 *
 * The kernel may send several reads on one file handle at once. They share the current replica's
 * OriginFile without a lock (pread has no file position); the mutex only guards which replica is
 * current. Each OriginFile sits in a reference-counted handle, so a reader that switches replicas
 * never closes a file another thread is still reading from: the last reference closes it.
 *
 * D10: a transient error (EIO, ETIMEDOUT, ECONNRESET, EAGAIN, EHOSTUNREACH, ...) is retried on the same
 * replica after 100 ms, 500 ms and 2 s before failing over; a definite one (ENOENT, EACCES, ENXIO, a
 * replica that ends early) fails over at once. Each replica gets one budget: its origin's operation
 * timeout plus the 2.6 s of backoff, and every try runs under what is left of it (origin.c answers
 * -ETIMEDOUT at the deadline), so one replica costs a read at most timeout + 2.6 s: 7.6 s for a hung
 * local origin, 32.6 s for a remote one, and a read at most the sum over its replicas. A retry that
 * would start after the budget is not made, nor one while the replica's timed-out read still hangs
 * in the origin (it would only queue behind it): a hung local origin answers after 5.1 s, and the
 * kernel's own second try of the page (it retries a failed read once) fails at once rather than
 * costing another 5 s.
 *
 * A remote origin (own_timeouts) retries inside its own operation timeout, so it gets one try here;
 * a read of it that failed slowly makes the next reads of that handle fail at once for 2 s (the
 * kernel retries a failed page once). A short deadline (the unhealthy try below) is enforced on it by
 * origin.c's workers.
 *
 * D11: replicas are tried healthy first, then in priority order: an origin the manager found
 * unhealthy (Origin.health) is left for last and gets one short try (no retries), so that reads
 * fail fast with EIO while offline instead of waiting out the timeouts of dead origins. A handle
 * reading from a backup replica logs that once (debug) and moves back to a preferred replica on its
 * next read after that replica's origin recovered (Origin.recoveries). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "replica.h"
#include "time-util.h"

typedef struct ReplicaSource {
        int64_t origin_id;
        char *rel_path;
        atomic_uint recoveries; /* its origin's Origin.recoveries when last looked at */
} ReplicaSource;

/* An unhealthy origin's one try (open, or a read) before the reader gives up on it. */
#define UNHEALTHY_TRY_USEC (1000u * 1000u)

typedef struct ReplicaHandle {
        OriginFile *file;
        Origin *origin;         /* a reference */
        size_t index;           /* into ReplicaReader.sources */
        atomic_uint n_ref;
        /* A remote origin's read that just failed slowly (its own timeout ran out): until then, reads
         * on this handle fail at once, so that the kernel's second try of the same page does not wait
         * the whole timeout again. CLOCK_MONOTONIC µs; 0 none. */
        _Atomic uint64_t slow_failure_until;
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
        atomic_bool backup_logged;      /* "served from a backup replica" was logged for this handle */
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

/* last_resort false: open the replica only if its origin is not unhealthy, 1 when it is left for
 * later; true: open it whatever its health, an unhealthy origin with a short deadline. */
static int reader_open_one(ReplicaReader *r, size_t i, bool last_resort, ReplicaHandle **ret) {
        ReplicaSource *src = &r->sources[i];

        /* Our own reference: the origin may be removed at runtime while this handle reads from it. */
        Origin *o = origin_set_get_ref(r->origins, src->origin_id);
        if (!o) {
                log_debug("Replica %s on unknown origin %" PRIi64 " skipped", src->rel_path, src->origin_id);
                return -ENODEV;
        }
        bool unhealthy = origin_get_health(o) == ORIGIN_UNHEALTHY;
        if (unhealthy && !last_resort) {
                origin_unref(o);
                return 1;
        }
        atomic_store(&src->recoveries, origin_get_recoveries(o));

        ReplicaHandle *h = calloc(1, sizeof *h);
        if (!h) {
                origin_unref(o);
                return -ENOMEM;
        }

        int k = origin_open_until(o, src->rel_path, &h->file, unhealthy ? now_usec(CLOCK_MONOTONIC) + UNHEALTHY_TRY_USEC : 0);
        if (k < 0) {
                log_debug_errno(k, "Failed to open %s on origin %s: %m", src->rel_path, o->name);
                origin_unref(o);
                free(h);
                /* What a down origin answers (ENOENT from an emptied mountpoint, ...) says nothing
                 * about the file: the reader gets EIO. */
                return unhealthy && k != -ENOMEM ? -EIO : k;
        }

        h->origin = o;
        h->index = i;
        atomic_init(&h->n_ref, 1);
        *ret = h;
        return 0;
}

/* Opens the first replica that opens, those on origins that are not unhealthy first, each group in
 * priority order from start, wrapping around, leaving out exclude (SIZE_MAX for none). Returns the
 * first error; a replica on an origin that is not configured (any more) is skipped rather than
 * counted as the error. */
static int reader_open_from(ReplicaReader *r, size_t start, size_t exclude, ReplicaHandle **ret) {
        uint64_t left = 0;      /* replicas the first pass left for the second (any past 64 are tried) */
        int first_error = 0;

        for (int pass = 0; pass < 2; pass++)
                for (size_t k = 0; k < r->n_sources; k++) {
                        size_t i = (start + k) % r->n_sources;
                        if (i == exclude || (pass == 1 && i < 64 && !(left & (UINT64_C(1) << i))))
                                continue;

                        int e = reader_open_one(r, i, pass == 1, ret);
                        if (e == 0)
                                return 0;
                        if (e == 1) {
                                if (i < 64)
                                        left |= UINT64_C(1) << i;
                                continue;
                        }
                        if (e == -ENOMEM)
                                return e;
                        if (e < 0 && e != -ENODEV && first_error == 0)
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
                Origin *o = origin_set_get_ref(origins, r->sources[i].origin_id);
                atomic_init(&r->sources[i].recoveries, o ? origin_get_recoveries(o) : 0);
                origin_unref(o);
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
/* D11: the current replica is a backup, and a preferred one's origin recovered since this reader
 * last looked at it: 1 (with its index) when that one should be tried. Cheap: only the replicas
 * before the current one are looked at, and only while a backup serves. */
static bool reader_preferred_recovered(ReplicaReader *r, size_t current, size_t *ret) {
        for (size_t i = 0; i < current; i++) {
                Origin *o = origin_set_get_ref(r->origins, r->sources[i].origin_id);
                if (!o)
                        continue;
                bool back = origin_get_health(o) == ORIGIN_HEALTHY &&
                            origin_get_recoveries(o) != atomic_load(&r->sources[i].recoveries);
                origin_unref(o);
                if (back) {
                        *ret = i;
                        return true;
                }
        }
        return false;
}

static ReplicaHandle *reader_acquire(ReplicaReader *r, int *first_error) {
        size_t preferred;

        pthread_mutex_lock(&r->lock);
        if (!r->current) {
                int e = reader_open_from(r, 0, SIZE_MAX, &r->current);
                if (e < 0 && *first_error == 0)
                        *first_error = e;
        } else if (reader_preferred_recovered(r, r->current->index, &preferred)) {
                ReplicaHandle *h = NULL;
                /* One try per recovery: reader_open_one() records the recovery count it saw. */
                if (reader_open_one(r, preferred, false, &h) == 0) {
                        log_debug("Origin %s recovered: reading %s from it again instead of origin %s",
                                  h->origin->name, r->sources[preferred].rel_path, r->current->origin->name);
                        /* Readers still on the old handle hold their own references. */
                        handle_unref(r->current);
                        r->current = h;
                        atomic_store(&r->backup_logged, false);
                }
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

static const unsigned retry_backoff_ms[] = { 100, 500, 2000 };
#define RETRY_BUDGET_MS (100u + 500u + 2000u)

static bool error_is_transient(int e) {
        switch (-e) {
        case EIO:
        case ETIMEDOUT:
        case ECONNRESET:
        case ECONNABORTED:
        case ECONNREFUSED:
        case EAGAIN:
        case EINTR:
        case EHOSTUNREACH:
        case ENETUNREACH:
        case ENETDOWN:
        case EPIPE:
                return true;
        default:
                return false;
        }
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* A remote origin retries inside its own timeout (D10's 100 ms, 500 ms, 2 s): one try here, under
 * that timeout, and a slow failure remembered for SLOW_FAILURE_USEC. */
#define SLOW_FAILURE_USEC (2000u * 1000u)
static ssize_t read_remote(ReplicaHandle *h, void *buf, size_t size, uint64_t offset) {
        uint64_t start = now_usec(CLOCK_MONOTONIC);

        if (start < atomic_load(&h->slow_failure_until))
                return -EIO;
        ssize_t n = origin_pread_full_until(h->file, buf, size, offset, 0);
        uint64_t end = now_usec(CLOCK_MONOTONIC);
        if (n < 0 && error_is_transient((int) n) && end - start >= SLOW_FAILURE_USEC / 2)
                atomic_store(&h->slow_failure_until, end + SLOW_FAILURE_USEC);
        return n;
}

/* One replica's answer, retried while the error is transient and its budget lasts. */
static ssize_t read_with_retries(ReplicaReader *r, ReplicaHandle *h, void *buf, size_t size, uint64_t offset) {
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + ((uint64_t) origin_timeout_ms(h->origin) + RETRY_BUDGET_MS) * 1000u;

        /* D11: an origin known to be down gets one short try, so that reads fail fast while offline. */
        if (origin_get_health(h->origin) == ORIGIN_UNHEALTHY) {
                ssize_t n = origin_pread_full_until(h->file, buf, size, offset, now_usec(CLOCK_MONOTONIC) + UNHEALTHY_TRY_USEC);
                return n < 0 ? -EIO : n;
        }
        if (h->origin->ops->own_timeouts)
                return read_remote(h, buf, size, offset);

        ssize_t first = 0;      /* the first error wins, as across replicas */
        for (size_t retry = 0;; retry++) {
                ssize_t n = origin_pread_full_until(h->file, buf, size, offset, deadline);
                if (n >= 0)
                        return n;
                if (first == 0)
                        first = n;
                if (!error_is_transient((int) n) || retry >= ELEMENTSOF(retry_backoff_ms))
                        return first;
                if (now_usec(CLOCK_MONOTONIC) + retry_backoff_ms[retry] * 1000u >= deadline)
                        return first;

                log_debug_errno((int) n, "Reading %s at %" PRIu64 " from origin %s failed, retrying in %u ms: %m",
                                r->sources[h->index].rel_path, offset, h->origin->name, retry_backoff_ms[retry]);
                sleep_ms(retry_backoff_ms[retry]);
                if (origin_file_stuck(h->file))
                        return first;
        }
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
                ssize_t n = read_with_retries(r, h, buf, size, offset);
                if (n >= 0 && !read_is_short(r, (size_t) n, size, offset)) {
                        if (h->index > 0 && !atomic_exchange(&r->backup_logged, true))
                                log_debug("Serving %s from a backup replica on origin %s: the preferred replica "
                                          "is unavailable", r->sources[h->index].rel_path, h->origin->name);
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
