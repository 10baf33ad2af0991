/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* D10 for origins that cannot bound their own operations (local: a pread on a dead NFS mount or a
 * dying disk blocks in the kernel, and no signal gets it out). Owns each origin's small pool of
 * worker threads and the jobs on it.
 *
 * The caller queues a job and waits for it with a CLOCK_MONOTONIC deadline. Past the deadline it
 * answers -ETIMEDOUT and walks away: the job owns everything the operation touches (a copy of the
 * path, references to the origin and the file) and is freed by whichever of the caller and the
 * worker lets go of it last, so a late answer lands in the job and dies with it. A pread fills the
 * worker's own buffer, which the worker copies into the caller's under the lock only while the caller
 * still waits, so late bytes never reach a buffer the caller has given back. A worker stuck in a job does not serve the
 * queue, so a new one is started for the next job, up to EXEC_THREADS_MAX; when every one of those
 * is stuck the origin fails fast with -EIO rather than pile up threads or waiters.
 *
 * The failpoints origin-stat/open/read run inside the job, so sleep(ms) on them is a hung origin. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crash.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "origin-internal.h"
#include "time-util.h"

#define EXEC_THREADS_MAX 16u            /* per origin, stuck ones included */
#define EXEC_QUEUE_MAX 256u             /* waiting jobs per origin */
#define EXEC_IDLE_EXIT_SEC 30           /* an idle worker beyond the first exits after this */
#define EXEC_STACK_SIZE (256u * 1024u)
#define EXEC_BUF_MAX (1024u * 1024u)    /* a worker's read buffer; longer preads come back short */

typedef struct OriginJob {
        struct OriginJob *next;
        OriginCall call;                /* rel_path points into the job's own copy; buf is the worker's */
        char *rel_path;
        void *dst;                      /* the caller's buffer: written only under the lock, while waited for */
        ssize_t result;
        /* Under the exec lock. */
        bool started, done, abandoned;
        unsigned n_ref;                 /* the caller's and the queue's/worker's */
        pthread_cond_t cond;
} OriginJob;

typedef struct OriginExec {
        pthread_mutex_t lock;
        pthread_cond_t work;
        pthread_condattr_t cond_attr;   /* CLOCK_MONOTONIC, for every cond here */
        OriginJob *head, *tail;
        unsigned n_queued;
        unsigned n_threads, n_idle;
        unsigned n_stuck;               /* workers running a job whose caller gave up */
        unsigned n_ref;                 /* the origin's and one per worker */
        bool shutdown;
} OriginExec;

static struct timespec usec_timespec(uint64_t usec) {
        return (struct timespec) { .tv_sec = (time_t) (usec / 1000000u), .tv_nsec = (long) (usec % 1000000u) * 1000 };
}

OriginFile *origin_file_ref(OriginFile *f) {
        if (f)
                atomic_fetch_add_explicit(&f->n_ref, 1, memory_order_relaxed);
        return f;
}

void origin_file_unref(OriginFile *f) {
        if (!f)
                return;

        /* n_ref counts the references beyond the first, as Origin.n_ref does. */
        unsigned n = atomic_load_explicit(&f->n_ref, memory_order_acquire);
        do {
                if (n == 0)
                        break;
        } while (!atomic_compare_exchange_weak_explicit(&f->n_ref, &n, n - 1, memory_order_acq_rel,
                                                        memory_order_acquire));
        if (n == 0)
                f->ops->close(f);
}

bool origin_file_stuck(OriginFile *f) {
        return f && atomic_load_explicit(&f->n_stuck, memory_order_acquire) > 0;
}

static ssize_t call_run(OriginCall *c) {
        Origin *o = c->origin;
        ssize_t r;

        switch (c->op) {
        case ORIGIN_OP_STAT:
                r = FAILPOINT(ORIGIN_STAT);
                return r < 0 ? r : o->ops->stat(o, c->rel_path, &c->st);
        case ORIGIN_OP_OPEN:
                r = FAILPOINT(ORIGIN_OPEN);
                if (r < 0)
                        return r;
                r = o->ops->open(o, c->rel_path, &c->opened);
                if (r < 0)
                        return r;
                c->opened->ops = o->ops;
                c->opened->origin = o;
                atomic_init(&c->opened->n_ref, 0);
                atomic_init(&c->opened->n_stuck, 0);
                return 0;
        case ORIGIN_OP_PREAD:
                r = FAILPOINT(ORIGIN_READ);
                return r < 0 ? r : c->file->ops->pread(c->file, c->buf, c->size, c->offset);
        case ORIGIN_OP_CHECK:
                return o->ops->check(o);
        }
        return -EINVAL;
}

static void exec_unref_locked(OriginExec *e, bool *ret_free) {
        *ret_free = --e->n_ref == 0;
}

static void exec_destroy(OriginExec *e) {
        pthread_cond_destroy(&e->work);
        pthread_condattr_destroy(&e->cond_attr);
        pthread_mutex_destroy(&e->lock);
        free(e);
}

static void job_free(OriginJob *j) {
        if (j->call.opened)             /* an open that came too late: nobody will close it */
                origin_file_unref(j->call.opened);
        origin_file_unref(j->call.file);
        origin_unref(j->call.origin);
        free(j->rel_path);
        pthread_cond_destroy(&j->cond);
        free(j);
}

/* Under the lock; true when the caller must job_free() after unlocking. */
static bool job_unref_locked(OriginJob *j) {
        return --j->n_ref == 0;
}

static void *exec_worker(void *userdata) {
        OriginExec *e = userdata;
        thread_set_name("mfs-origin");
        /* Reused across jobs: no allocation per read on the fast path. */
        void *buf = NULL;
        size_t buf_size = 0;

        pthread_mutex_lock(&e->lock);
        for (;;) {
                while (!e->head && !e->shutdown) {
                        struct timespec until = usec_timespec(now_usec(CLOCK_MONOTONIC) + EXEC_IDLE_EXIT_SEC * 1000000ull);
                        e->n_idle++;
                        int k = pthread_cond_timedwait(&e->work, &e->lock, &until);
                        e->n_idle--;
                        if (k == ETIMEDOUT && !e->head && e->n_threads > 1)
                                break;
                }
                if (!e->head)
                        break;

                OriginJob *j = e->head;
                e->head = j->next;
                if (!e->head)
                        e->tail = NULL;
                e->n_queued--;

                if (j->abandoned) {
                        bool free_it = job_unref_locked(j);
                        pthread_mutex_unlock(&e->lock);
                        if (free_it)
                                job_free(j);
                        pthread_mutex_lock(&e->lock);
                        continue;
                }

                j->started = true;
                pthread_mutex_unlock(&e->lock);
                ssize_t r = -ENOMEM;
                if (j->call.op == ORIGIN_OP_PREAD && j->call.size > buf_size) {
                        void *b = realloc(buf, j->call.size);
                        if (b) {
                                buf = b;
                                buf_size = j->call.size;
                        }
                }
                if (j->call.op != ORIGIN_OP_PREAD || j->call.size <= buf_size) {
                        j->call.buf = buf;
                        r = call_run(&j->call);
                }
                pthread_mutex_lock(&e->lock);

                if (r > 0 && j->call.op == ORIGIN_OP_PREAD && !j->abandoned)
                        memcpy(j->dst, buf, (size_t) r);
                j->result = r;
                j->done = true;
                if (j->abandoned) {
                        e->n_stuck--;
                        if (j->call.file)
                                atomic_fetch_sub_explicit(&j->call.file->n_stuck, 1, memory_order_release);
                } else
                        pthread_cond_signal(&j->cond);
                bool free_it = job_unref_locked(j);
                if (free_it) {
                        /* Freeing drops the origin's reference, which may free the origin and so
                         * take the exec's lock: not under it. */
                        pthread_mutex_unlock(&e->lock);
                        job_free(j);
                        pthread_mutex_lock(&e->lock);
                }
        }

        free(buf);
        e->n_threads--;
        bool free_exec;
        exec_unref_locked(e, &free_exec);
        pthread_mutex_unlock(&e->lock);
        if (free_exec)
                exec_destroy(e);
        return NULL;
}

static int exec_new(OriginExec **ret) {
        OriginExec *e = calloc(1, sizeof *e);
        if (!e)
                return -ENOMEM;

        int k = pthread_condattr_init(&e->cond_attr);
        if (k == 0)
                k = pthread_condattr_setclock(&e->cond_attr, CLOCK_MONOTONIC);
        if (k == 0)
                k = pthread_mutex_init(&e->lock, NULL);
        if (k == 0)
                k = pthread_cond_init(&e->work, &e->cond_attr);
        if (k != 0) {
                free(e);
                return -k;
        }
        e->n_ref = 1;
        *ret = e;
        return 0;
}

/* The origin's exec, made on first use; several callers may race to make it. */
static int exec_get(Origin *o, OriginExec **ret) {
        OriginExec *e = atomic_load_explicit(&o->exec, memory_order_acquire);
        if (e) {
                *ret = e;
                return 0;
        }

        int r = exec_new(&e);
        if (r < 0)
                return r;

        OriginExec *expected = NULL;
        if (!atomic_compare_exchange_strong_explicit(&o->exec, &expected, e,
                                                     memory_order_acq_rel, memory_order_acquire)) {
                exec_destroy(e);
                e = expected;
        }
        *ret = e;
        return 0;
}

unsigned origin_stuck_ops(Origin *o) {
        OriginExec *e = o ? atomic_load_explicit(&o->exec, memory_order_acquire) : NULL;
        if (!e)
                return 0;
        pthread_mutex_lock(&e->lock);
        unsigned n = e->n_stuck;
        pthread_mutex_unlock(&e->lock);
        return n;
}

void origin_exec_free(OriginExec *e) {
        if (!e)
                return;

        pthread_mutex_lock(&e->lock);
        e->shutdown = true;
        pthread_cond_broadcast(&e->work);
        bool free_exec;
        exec_unref_locked(e, &free_exec);
        pthread_mutex_unlock(&e->lock);
        if (free_exec)
                exec_destroy(e);
}

/* Under the lock: a worker for the job about to be queued, unless an idle one will take it. */
static int exec_spawn_locked(OriginExec *e) {
        if (e->n_idle > e->n_queued)
                return 0;
        if (e->n_threads >= EXEC_THREADS_MAX)
                return e->n_stuck >= EXEC_THREADS_MAX ? -EIO : 0;

        pthread_attr_t attr;
        int k = pthread_attr_init(&attr);
        if (k != 0)
                return -k;
        (void) pthread_attr_setstacksize(&attr, EXEC_STACK_SIZE);
        (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        k = pthread_create(&t, &attr, exec_worker, e);
        pthread_attr_destroy(&attr);
        if (k != 0)
                /* The running workers will get to the job, unless there are none. */
                return e->n_threads - e->n_stuck > 0 ? 0 : -k;

        e->n_threads++;
        e->n_ref++;
        return 0;
}

static int job_new(const OriginCall *c, pthread_condattr_t *attr, OriginJob **ret) {
        OriginJob *j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        int k = pthread_cond_init(&j->cond, attr);
        if (k != 0) {
                free(j);
                return -k;
        }

        j->call = (OriginCall) {
                .op = c->op,
                .origin = origin_ref(c->origin),
                .file = origin_file_ref(c->file),
                .size = c->size,
                .offset = c->offset,
        };
        if (c->rel_path) {
                j->rel_path = strdup(c->rel_path);
                j->call.rel_path = j->rel_path;
        }
        if (c->op == ORIGIN_OP_PREAD) {
                j->dst = c->buf;
                /* A short read is a read: origin_pread_full() asks for the rest. */
                if (j->call.size > EXEC_BUF_MAX)
                        j->call.size = EXEC_BUF_MAX;
        }
        j->n_ref = 2;
        if (c->rel_path && !j->rel_path) {
                job_free(j);
                return -ENOMEM;
        }

        *ret = j;
        return 0;
}

ssize_t origin_call(OriginCall *c, uint64_t deadline_usec) {
        Origin *o = c->origin;

        /* A remote origin keeps its own timeout: inline, unless the caller wants an answer sooner
         * (the short try of an unhealthy origin), which only a worker can give. */
        if (o->ops->own_timeouts &&
            (deadline_usec == 0 || deadline_usec >= now_usec(CLOCK_MONOTONIC) + (uint64_t) origin_timeout_ms(o) * 1000u))
                return call_run(c);
        if (c->op == ORIGIN_OP_PREAD && origin_file_stuck(c->file))
                return -ETIMEDOUT;      /* behind a read of the same file that hangs */

        uint64_t limit = now_usec(CLOCK_MONOTONIC) + (uint64_t) origin_timeout_ms(o) * 1000u;
        if (deadline_usec > 0 && deadline_usec < limit)
                limit = deadline_usec;

        OriginExec *e = NULL;
        int r = exec_get(o, &e);
        if (r < 0)
                return r;
        OriginJob *j = NULL;
        r = job_new(c, &e->cond_attr, &j);
        if (r < 0)
                return r;

        pthread_mutex_lock(&e->lock);
        if (e->n_queued >= EXEC_QUEUE_MAX)
                r = -EIO;
        else
                r = exec_spawn_locked(e);
        if (r < 0) {
                pthread_mutex_unlock(&e->lock);
                j->n_ref = 1;
                job_free(j);
                log_debug_errno(r, "Origin %s: no worker free for an operation (%u stuck): %m", o->name, e->n_stuck);
                return r;
        }

        if (e->tail)
                e->tail->next = j;
        else
                e->head = j;
        e->tail = j;
        e->n_queued++;
        pthread_cond_signal(&e->work);

        struct timespec until = usec_timespec(limit);
        while (!j->done) {
                int k = pthread_cond_timedwait(&j->cond, &e->lock, &until);
                if (k == ETIMEDOUT && !j->done) {
                        j->abandoned = true;
                        if (j->started) {
                                e->n_stuck++;
                                if (j->call.file)
                                        atomic_fetch_add_explicit(&j->call.file->n_stuck, 1, memory_order_release);
                        }
                        break;
                }
        }

        ssize_t result;
        if (j->done) {
                result = j->result;
                if (result >= 0)
                        switch (c->op) {
                        case ORIGIN_OP_STAT:
                                c->st = j->call.st;
                                break;
                        case ORIGIN_OP_OPEN:
                                c->opened = TAKE_PTR(j->call.opened);
                                break;
                        case ORIGIN_OP_PREAD:   /* the worker copied */
                                break;
                        case ORIGIN_OP_CHECK:
                                break;
                        }
        } else
                result = -ETIMEDOUT;

        bool free_it = job_unref_locked(j);
        pthread_mutex_unlock(&e->lock);
        if (free_it)
                job_free(j);

        if (result == -ETIMEDOUT)
                log_debug("Origin %s: operation %d gave no answer within its limit", o->name, (int) c->op);
        return result;
}

/* A walk is long (a whole library) and rare (one per scan): it gets a thread of its own rather than
 * one of the pool's, and its limit counts from the last sign of life (an entry found or skipped),
 * not from the start. The caller's callbacks run on that thread while the caller waits, so they see
 * what they would see inline; once the caller gave up, the walk is stopped at its next entry. */
typedef struct WalkJob {
        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC */
        unsigned n_ref;                 /* under lock: the caller's and the thread's */
        bool done, abandoned, in_callback;
        uint64_t last_progress_usec;
        int result;

        Origin *origin;                 /* a reference */
        char *rel_dir;
        origin_walk_run_fn run;
        origin_walk_fn fn;
        origin_walk_skipped_fn skipped;
        void *userdata;
} WalkJob;

static void walk_job_unref(WalkJob *w) {
        pthread_mutex_lock(&w->lock);
        bool last = --w->n_ref == 0;
        pthread_mutex_unlock(&w->lock);
        if (!last)
                return;
        origin_unref(w->origin);
        free(w->rel_dir);
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
}

/* Under the lock: false when the caller gave up (the walk stops: -ECANCELED). */
static bool walk_enter(WalkJob *w) {
        pthread_mutex_lock(&w->lock);
        bool go = !w->abandoned;
        if (go)
                w->in_callback = true;
        pthread_mutex_unlock(&w->lock);
        return go;
}

static void walk_leave(WalkJob *w) {
        pthread_mutex_lock(&w->lock);
        w->in_callback = false;
        w->last_progress_usec = now_usec(CLOCK_MONOTONIC);
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}

static int walk_job_fn(const char *rel_path, const OriginStat *st, void *userdata) {
        WalkJob *w = userdata;
        if (!walk_enter(w))
                return -ECANCELED;
        int r = w->fn(rel_path, st, w->userdata);
        walk_leave(w);
        return r;
}

static int walk_job_skipped(const char *rel_path, int error, void *userdata) {
        WalkJob *w = userdata;
        if (!walk_enter(w))
                return -ECANCELED;
        int r = w->skipped(rel_path, error, w->userdata);
        walk_leave(w);
        return r;
}

static void *walk_thread(void *userdata) {
        WalkJob *w = userdata;
        int r = w->run(w->origin, w->rel_dir, walk_job_fn, w->skipped ? walk_job_skipped : NULL, w);

        pthread_mutex_lock(&w->lock);
        w->result = r;
        w->done = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        walk_job_unref(w);
        return NULL;
}

int origin_walk_call(Origin *o, const char *rel_dir, origin_walk_run_fn run, origin_walk_fn fn,
                     origin_walk_skipped_fn skipped, void *userdata) {
        if (o->ops->own_timeouts)
                return run(o, rel_dir, fn, skipped, userdata);

        WalkJob *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        pthread_condattr_t attr;
        int k = pthread_condattr_init(&attr);
        if (k == 0) {
                k = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
                if (k == 0)
                        k = pthread_cond_init(&w->cond, &attr);
                pthread_condattr_destroy(&attr);
        }
        if (k != 0) {
                free(w);
                return -k;
        }
        pthread_mutex_init(&w->lock, NULL);
        w->n_ref = 2;
        w->origin = origin_ref(o);
        w->rel_dir = strdup(rel_dir);
        w->run = run;
        w->fn = fn;
        w->skipped = skipped;
        w->userdata = userdata;
        w->last_progress_usec = now_usec(CLOCK_MONOTONIC);
        if (!w->rel_dir) {
                w->n_ref = 1;
                walk_job_unref(w);
                return -ENOMEM;
        }

        pthread_attr_t tattr;
        pthread_t t;
        k = pthread_attr_init(&tattr);
        if (k == 0) {
                (void) pthread_attr_setdetachstate(&tattr, PTHREAD_CREATE_DETACHED);
                k = pthread_create(&t, &tattr, walk_thread, w);
                pthread_attr_destroy(&tattr);
        }
        if (k != 0) {
                w->n_ref = 1;
                walk_job_unref(w);
                return log_debug_errno(-k, "Origin %s: cannot start a walk thread: %m", o->name);
        }

        uint64_t limit_usec = (uint64_t) origin_timeout_ms(o) * 1000u;
        int r;
        pthread_mutex_lock(&w->lock);
        for (;;) {
                if (w->done) {
                        r = w->result;
                        break;
                }
                if (w->in_callback) {   /* the caller's own time: not the origin's */
                        pthread_cond_wait(&w->cond, &w->lock);
                        continue;
                }
                uint64_t until = w->last_progress_usec + limit_usec;
                if (now_usec(CLOCK_MONOTONIC) >= until) {
                        w->abandoned = true;
                        r = -ETIMEDOUT;
                        break;
                }
                struct timespec ts = usec_timespec(until);
                (void) pthread_cond_timedwait(&w->cond, &w->lock, &ts);
        }
        pthread_mutex_unlock(&w->lock);
        walk_job_unref(w);

        if (r == -ETIMEDOUT)
                log_warning("Origin %s: walk found nothing for %u ms, giving up", o->name, origin_timeout_ms(o));
        return r;
}
