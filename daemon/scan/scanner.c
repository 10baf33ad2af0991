/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "crash.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "scanner.h"
#include "tags.h"

#define SCAN_BATCH_SIZE_DEFAULT 256
#define SCAN_BATCH_SIZE_MAX 65536
/* Tag reads in flight. A remote read is mostly waiting on the network: at two round trips of 20 ms
 * a file (an SFTP open, one read), 32 keep some 700 files a second going (an SFTP origin carries
 * them on a few connections, several channels each). A local one is mostly libavformat's CPU and the disk: a few keep
 * both busy on a small machine without crowding the rest of the daemon. */
#define SCAN_READS_REMOTE 32u
#ifndef SCAN_READS_LOCAL        /* -DSCAN_READS_LOCAL=1u: the serial scanner, for the bench's comparison */
#define SCAN_READS_LOCAL 4u
#endif
#define SCAN_READS_MAX 64u

/* The origin's rows as the catalog had them when the scan began, found by rel_path without a query
 * per file: open addressing with linear probing over indexes into the loaded array, at most half
 * full. */
typedef struct KnownFiles {
        CatalogFile *files;
        size_t n_files;
        bool *seen;             /* by index into files: the walk reported it */
        size_t *slots;          /* index + 1 into files; 0 = empty */
        size_t mask;
} KnownFiles;

static uint64_t path_hash(const char *s) {
        uint64_t h = UINT64_C(14695981039346656037);     /* FNV-1a */
        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= UINT64_C(1099511628211);
        }
        return h;
}

/* prefix "": every row of the origin; otherwise those at or below prefix (a targeted scan). */
static int known_files_load(KnownFiles *k, Catalog *catalog, int64_t origin_id, const char *prefix) {
        size_t n_slots = 16;
        int r;

        r = catalog_load_origin_files_under(catalog, origin_id, prefix, &k->files, &k->n_files);
        if (r < 0)
                return r;

        while (n_slots < k->n_files * 2)
                n_slots *= 2;
        k->slots = calloc(n_slots, sizeof *k->slots);
        k->seen = calloc(k->n_files + 1, sizeof *k->seen);
        if (!k->slots || !k->seen)
                return -ENOMEM;
        k->mask = n_slots - 1;

        for (size_t i = 0; i < k->n_files; i++) {
                size_t at = path_hash(k->files[i].rel_path) & k->mask;
                while (k->slots[at] != 0)
                        at = (at + 1) & k->mask;
                k->slots[at] = i + 1;
        }
        return 0;
}

static const CatalogFile *known_files_get(const KnownFiles *k, const char *rel_path) {
        if (!k->slots)
                return NULL;
        for (size_t at = path_hash(rel_path) & k->mask; k->slots[at] != 0; at = (at + 1) & k->mask) {
                const CatalogFile *f = &k->files[k->slots[at] - 1];
                if (strcmp(f->rel_path, rel_path) == 0)
                        return f;
        }
        return NULL;
}

static void known_files_done(KnownFiles *k) {
        catalog_files_free(k->files, k->n_files);
        free(k->seen);
        free(k->slots);
        *k = (KnownFiles) {};
}

/* What the scan will write for one file. Tags are read before the batch opens, so the catalog's
 * write lock is held only for the writes themselves, never across origin reads. */
typedef enum PendingKind {
        PENDING_UNCHANGED,      /* same size and mtime: stamp the row */
        PENDING_KEEP,           /* changed but unreadable this time: stamp the old row, retry next scan */
        PENDING_UPSERT,         /* new or changed: write the row */
        PENDING_UNREAD,         /* not seen, under an entry the walk could not read: stamp the row */
        PENDING_REMOVE,         /* a resumed scan did not see it: gone since the interrupted scan stamped it */
} PendingKind;

typedef struct Pending {
        PendingKind kind;
        bool existed;
        CatalogFile file;       /* rel_path owned; tags owned for an upsert */
} Pending;

/* A new or changed file handed to the tag readers, and what they found. */
typedef struct ReadJob {
        struct ReadJob *next;
        char *rel_path;
        OriginStat st;
        const char *ext;        /* static (tags_audio_extension()) */
        bool existed;
        int result;             /* 0 read (parsed or not), a negative errno from the origin, -ECANCELED skipped */
        bool parsed;
        TrackTags tags;
} ReadJob;

/* The scan's tag readers: threads started as reads come (an unchanged rescan starts none), each with
 * its own libavformat context per file. They only read: every catalog write stays on the scanning
 * thread, which takes their results back (ReadPool.done) into its batches. */
typedef struct ReadPool {
        pthread_mutex_t lock;
        pthread_cond_t work;    /* to the readers: a job queued, or stop */
        pthread_cond_t finished; /* to the scanner: a job done */
        ReadJob *todo, *todo_tail;
        ReadJob *done, *done_tail;
        unsigned n_in_flight;   /* submitted and not yet taken back */
        unsigned max_reads;     /* 1: no threads, reads run on the scanning thread */
        pthread_t threads[SCAN_READS_MAX];
        unsigned n_threads, n_idle;
        bool stop;
        Origin *origin;
        atomic_bool *cancel;
} ReadPool;

typedef struct Scan {
        Catalog *catalog;
        Origin *origin;
        const ScanHooks *hooks;
        int64_t generation;
        KnownFiles known;
        ScanStats stats;

        Pending *pending;
        size_t n_pending;
        size_t batch_size;

        char **unread;          /* rel_paths the walk skipped as unreadable */
        size_t n_unread;
        size_t n_unread_allocated;
        uint64_t n_unstamped;   /* existing rows whose stamp could not be written */

        int error;      /* why the walk callback stopped the walk */
        bool checkpoint;        /* a full scan: record progress with every batch, so it can resume */

        ReadPool readers;
} Scan;

static void pending_clear(Scan *s) {
        for (size_t i = 0; i < s->n_pending; i++)
                catalog_file_free_members(&s->pending[i].file);
        s->n_pending = 0;
}

static bool scan_cancelled(const Scan *s) {
        return s->hooks && s->hooks->cancel && atomic_load(s->hooks->cancel);
}

/* Writes the pending files in one transaction. A file whose row cannot be written is counted as
 * failed and the batch goes on; when the failure took the whole transaction with it, the commit
 * says so and the scan stops. */
static int scan_collect(Scan *s, unsigned max_left);

static int scan_flush(Scan *s) {
        CatalogBatch *b = NULL;
        ScanStats stats;
        const char *first_failed = NULL;
        unsigned n_failed = 0;
        int r, first_error = 0;

        /* A batch commits files whose tags are read, never one still in flight: the checkpoint's
         * count is then exactly the files the catalog has. */
        r = scan_collect(s, 0);
        if (r < 0)
                return r;
        if (s->n_pending == 0)
                return 0;
        stats = s->stats;

        r = catalog_batch_begin(s->catalog, &b);
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot start a catalog batch: %m", s->origin->name);

        for (size_t i = 0; i < s->n_pending; i++) {
                Pending *p = &s->pending[i];

                if (p->kind == PENDING_UPSERT) {
                        r = catalog_batch_upsert(b, &p->file, s->generation);
                        if (r >= 0) {
                                if (p->existed)
                                        stats.changed++;
                                else
                                        stats.added++;
                                if (!p->file.parsed)
                                        stats.unparsed++;
                                continue;
                        }
                        if (n_failed++ == 0) {
                                first_failed = p->file.rel_path;
                                first_error = r;
                        }
                        stats.failed++;
                        if (!p->existed)
                                continue;
                        /* Keep its old row rather than let the end of the scan remove it. */
                }

                if (p->kind == PENDING_REMOVE) {
                        r = catalog_batch_remove(b, s->origin->id, p->file.rel_path);
                        if (r >= 0)
                                stats.removed++;
                        else if (r != -ENOENT && n_failed++ == 0) {
                                first_failed = p->file.rel_path;
                                first_error = r;
                        }
                        continue;
                }

                r = catalog_batch_touch(b, s->origin->id, p->file.rel_path, s->generation);
                if (r >= 0) {
                        if (p->kind == PENDING_UNCHANGED)
                                stats.unchanged++;
                        else if (p->kind == PENDING_UNREAD)
                                stats.kept++;
                } else if (r == -ENOENT)        /* the row went away since we loaded it; nothing to keep */
                        log_debug("Origin %s: %s left the catalog during the scan", s->origin->name, p->file.rel_path);
                else {
                        /* Unstamped, the end of the scan would remove it. */
                        s->n_unstamped++;
                        if (p->kind == PENDING_UPSERT)  /* counted already */
                                continue;
                        if (n_failed++ == 0) {
                                first_failed = p->file.rel_path;
                                first_error = r;
                        }
                        stats.failed++;
                }
        }
        /* One line per batch: when the transaction itself is lost, every file fails alike. */
        if (n_failed > 0)
                log_warning_errno(first_error, "Origin %s: cannot write %s to the catalog%s: %m",
                                  s->origin->name, first_failed, n_failed > 1 ? " (and other files of this batch)" : "");

        /* Inside the batch's transaction, so that the count and the rows it counts never disagree. */
        if (s->checkpoint) {
                r = catalog_batch_checkpoint(b, s->origin->id, stats.seen);
                if (r < 0)
                        log_debug_errno(r, "Origin %s: cannot record the scan's progress: %m", s->origin->name);
        }
        r = catalog_batch_commit(b);
        pending_clear(s);
        if (r < 0)
                return log_error_errno(r, "Origin %s: catalog batch failed: %m", s->origin->name);
        s->stats = stats;

        /* The resilience suite stops scans here, between two committed batches. */
        r = FAILPOINT(SCAN_BATCH);
        if (r < 0)
                return log_warning_errno(r, "Origin %s: scan stopped after a batch (failpoint): %m", s->origin->name);

        if (s->hooks && s->hooks->batch_committed)
                s->hooks->batch_committed(&s->stats, s->hooks->userdata);
        return 0;
}

static Pending *pending_add(Scan *s, PendingKind kind, const char *rel_path, const OriginStat *st, const char *ext, bool existed) {
        Pending *p = &s->pending[s->n_pending];

        *p = (Pending) {
                .kind = kind,
                .existed = existed,
                .file = {
                        .origin_id = s->origin->id,
                        .rel_path = strdup(rel_path),
                        .size = st->size,
                        .mtime_ns = st->mtime_ns,
                },
        };
        if (!p->file.rel_path)
                return NULL;
        if (ext) {
                p->file.format = strdup(ext);
                if (!p->file.format) {
                        free(p->file.rel_path);
                        return NULL;
                }
        }
        s->n_pending++;
        return p;
}

static void read_job_free(ReadJob *j) {
        if (!j)
                return;
        free(j->rel_path);
        track_tags_free(&j->tags);
        free(j);
}

/* Opens and parses one new or changed file, on a reader thread (or the scanning thread when reads
 * are serial). Touches nothing but the job and the origin. */
static void read_job_run(ReadPool *p, ReadJob *j) {
        OriginFile *f = NULL;
        int r;

        if (p->cancel && atomic_load(p->cancel)) {
                j->result = -ECANCELED;
                return;
        }
        r = origin_open(p->origin, j->rel_path, &f);
        if (r >= 0) {
                r = tags_read(f, j->st.size, &j->tags);
                origin_close(f);
        }
        j->parsed = r >= 0;
        j->result = r == -EBADMSG ? 0 : r;
}

static void *reader_main(void *userdata) {
        ReadPool *p = userdata;
        thread_set_name("mfs-tags");

        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->todo && !p->stop) {
                        p->n_idle++;
                        pthread_cond_wait(&p->work, &p->lock);
                        p->n_idle--;
                }
                if (p->stop)
                        break;
                ReadJob *j = p->todo;
                p->todo = j->next;
                if (!p->todo)
                        p->todo_tail = NULL;
                pthread_mutex_unlock(&p->lock);

                read_job_run(p, j);

                pthread_mutex_lock(&p->lock);
                j->next = NULL;
                if (p->done_tail)
                        p->done_tail->next = j;
                else
                        p->done = j;
                p->done_tail = j;
                pthread_cond_signal(&p->finished);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

static unsigned scan_max_reads(const Origin *o, const ScanHooks *hooks, size_t batch_size) {
        unsigned n;

        if (hooks && hooks->max_reads > 0)
                n = hooks->max_reads;
        else if (o->ops->own_timeouts || !o->ops->kind || strcmp(o->ops->kind, "local") != 0)
                n = SCAN_READS_REMOTE;
        else
                n = SCAN_READS_LOCAL;
        if (n > SCAN_READS_MAX)
                n = SCAN_READS_MAX;
        /* More than a batch in flight would only wait for the batch's end. */
        return batch_size < n ? (unsigned) batch_size : n;
}

static int read_pool_init(ReadPool *p, Origin *o, atomic_bool *cancel, unsigned max_reads) {
        int k;

        *p = (ReadPool) { .max_reads = max_reads, .origin = o, .cancel = cancel };
        k = pthread_mutex_init(&p->lock, NULL);
        if (k != 0)
                return -k;
        k = pthread_cond_init(&p->work, NULL);
        if (k == 0) {
                k = pthread_cond_init(&p->finished, NULL);
                if (k != 0)
                        pthread_cond_destroy(&p->work);
        }
        if (k != 0) {
                pthread_mutex_destroy(&p->lock);
                *p = (ReadPool) {};
                return -k;
        }
        return 0;
}

/* Stops the readers once their current file is done, and drops what they had not taken back. */
static void read_pool_done(ReadPool *p) {
        if (!p->origin)
                return;
        pthread_mutex_lock(&p->lock);
        p->stop = true;
        pthread_cond_broadcast(&p->work);
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < p->n_threads; i++)
                (void) pthread_join(p->threads[i], NULL);

        for (ReadJob *lists[] = { p->todo, p->done }, **l = lists; l < lists + ELEMENTSOF(lists); l++)
                while (*l) {
                        ReadJob *next = (*l)->next;
                        read_job_free(*l);
                        *l = next;
                }
        pthread_cond_destroy(&p->finished);
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->lock);
        *p = (ReadPool) {};
}

/* Hands a job to the readers (owning it from here), starting one more reader when none is idle. */
static int read_pool_submit(ReadPool *p, ReadJob *j) {
        if (p->max_reads <= 1) {
                read_job_run(p, j);
                if (p->done_tail)
                        p->done_tail->next = j;
                else
                        p->done = j;
                p->done_tail = j;
                p->n_in_flight++;
                return 0;
        }

        pthread_mutex_lock(&p->lock);
        if (p->todo_tail)
                p->todo_tail->next = j;
        else
                p->todo = j;
        p->todo_tail = j;
        p->n_in_flight++;
        if (p->n_idle == 0 && p->n_threads < p->max_reads) {
                int k = pthread_create(&p->threads[p->n_threads], NULL, reader_main, p);
                if (k == 0)
                        p->n_threads++;
                else if (p->n_threads == 0) {
                        /* No thread to be had (EAGAIN: the task limit): the scan reads serially
                         * rather than fail. Nothing else is queued, since nobody could take it. */
                        log_debug_errno(k, "Origin %s: cannot start a tag reader, reading serially: %m",
                                        p->origin->name);
                        p->todo = p->todo_tail = NULL;
                        p->n_in_flight--;
                        p->max_reads = 1;
                        pthread_mutex_unlock(&p->lock);
                        return read_pool_submit(p, j);
                }
        }
        pthread_cond_signal(&p->work);
        pthread_mutex_unlock(&p->lock);
        return 0;
}

static int scan_oom(Scan *s);

/* A read came back: its file joins the pending batch (or is counted as failed). */
static int scan_take(Scan *s, ReadJob *j) {
        Pending *p;

        if (j->result == -ECANCELED) {  /* never read: the next scan reads it */
                s->stats.read--;
                return 0;
        }
        if (j->result < 0) {
                log_warning_errno(j->result, "Origin %s: cannot read %s, skipping it: %m", s->origin->name, j->rel_path);
                s->stats.failed++;
                /* A row it had stays until a scan can read the file again. */
                if (j->existed && !pending_add(s, PENDING_KEEP, j->rel_path, &j->st, NULL, true))
                        return scan_oom(s);
                return 0;
        }
        if (!j->parsed)
                log_info("Origin %s: cannot read tags of %s, listing under Unknown", s->origin->name, j->rel_path);
        p = pending_add(s, PENDING_UPSERT, j->rel_path, &j->st, j->ext, j->existed);
        if (!p)
                return scan_oom(s);
        p->file.parsed = j->parsed;
        p->file.tags = j->tags;
        j->tags = (TrackTags) {};
        return 0;
}

/* Takes back the finished reads, waiting until at most max_left are still in flight. */
static int scan_collect(Scan *s, unsigned max_left) {
        ReadPool *p = &s->readers;
        int r = 0;

        if (!p->origin)
                return 0;
        for (;;) {
                ReadJob *done;

                if (p->max_reads > 1)
                        pthread_mutex_lock(&p->lock);
                while (!p->done && p->n_in_flight > max_left)
                        pthread_cond_wait(&p->finished, &p->lock);
                done = p->done;
                p->done = p->done_tail = NULL;
                for (ReadJob *j = done; j; j = j->next)
                        p->n_in_flight--;
                bool more = p->n_in_flight > max_left;
                if (p->max_reads > 1)
                        pthread_mutex_unlock(&p->lock);

                while (done) {
                        ReadJob *next = done->next;
                        if (r >= 0)
                                r = scan_take(s, done);
                        read_job_free(done);
                        done = next;
                }
                if (r < 0 || !more)
                        return r;
        }
}

static int scan_oom(Scan *s) {
        return log_error_errno(ENOMEM, "Origin %s: out of memory, scan stopped: %m", s->origin->name);
}

static int scan_file(const char *rel_path, const OriginStat *st, void *userdata) {
        Scan *s = userdata;
        const CatalogFile *known;
        const char *ext;
        int r;

        if (scan_cancelled(s))
                return (s->error = -ECANCELED);

        if (!tags_audio_extension(rel_path, &ext))
                return 0;
        s->stats.seen++;

        known = known_files_get(&s->known, rel_path);
        if (known)
                s->known.seen[known - s->known.files] = true;
        if (known && known->size == st->size && known->mtime_ns == st->mtime_ns) {
                if (!pending_add(s, PENDING_UNCHANGED, rel_path, st, NULL, true))
                        return (s->error = scan_oom(s));
        } else {
                /* Per file read, on this thread and before the read: a pause holds the scan, and
                 * what it counted is what the batches commit. */
                r = FAILPOINT(SCAN_FILE);
                if (r < 0) {
                        log_warning_errno(r, "Origin %s: cannot read %s, skipping it: %m", s->origin->name, rel_path);
                        s->stats.failed++;
                        if (known && !pending_add(s, PENDING_KEEP, rel_path, st, NULL, true))
                                return (s->error = scan_oom(s));
                } else {
                        ReadJob *j = calloc(1, sizeof *j);
                        if (!j || !(j->rel_path = strdup(rel_path))) {
                                free(j);
                                return (s->error = scan_oom(s));
                        }
                        j->st = *st;
                        j->ext = ext;
                        j->existed = known;
                        s->stats.read++;
                        r = read_pool_submit(&s->readers, j);
                        if (r < 0)
                                return (s->error = log_error_errno(r, "Origin %s: cannot start a tag reader: %m",
                                                                   s->origin->name));
                }
        }

        /* The batch is full once what is pending and what is in flight fill it; with room left,
         * only a full set of readers waits for one of them. */
        r = scan_collect(s, s->n_pending + s->readers.n_in_flight >= s->batch_size ? 0 :
                            s->readers.max_reads > 0 ? s->readers.max_reads - 1 : 0);
        if (r < 0)
                return (s->error = r);
        if (s->n_pending >= s->batch_size) {
                r = scan_flush(s);
                if (r < 0)
                        return (s->error = r);
        }
        return 0;
}

/* The walk's origin_walk_skipped_fn. */
static int scan_unread(const char *rel_path, int error, void *userdata) {
        Scan *s = userdata;

        if (GREEDY_REALLOC(s->unread, s->n_unread_allocated, s->n_unread + 1) < 0)
                return (s->error = scan_oom(s));
        s->unread[s->n_unread] = strdup(rel_path);
        if (!s->unread[s->n_unread])
                return (s->error = scan_oom(s));
        s->n_unread++;
        return 0;
}

static int string_compare(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

typedef struct Prefix {
        const char *s;
        size_t len;
} Prefix;

static int prefix_compare(const void *key, const void *member) {
        const Prefix *p = key;
        const char *m = *(char *const *) member;
        int c = strncmp(p->s, m, p->len);

        if (c != 0)
                return c;
        return m[p->len] == '\0' ? 0 : -1;     /* m is longer, so it sorts after */
}

/* Whether rel_path, or a directory it lies in, is in the sorted unread list. */
static bool scan_is_unread(const Scan *s, const char *rel_path) {
        for (const char *p = rel_path;; p++)
                if (*p == '/' || *p == '\0') {
                        Prefix key = { .s = rel_path, .len = (size_t) (p - rel_path) };
                        if (bsearch(&key, s->unread, s->n_unread, sizeof *s->unread, prefix_compare))
                                return true;
                        if (*p == '\0')
                                return false;
                }
}

/* Queues as kind every known row the walk did not see that lies (under) or does not lie (!under)
 * below an entry the walk could not read, after the reads still in flight took their places in the
 * batches. */
static int scan_queue_unseen(Scan *s, PendingKind kind, bool under) {
        int r;

        r = scan_collect(s, 0);
        if (r < 0)
                return r;
        if (s->n_unread > 0)
                qsort(s->unread, s->n_unread, sizeof *s->unread, string_compare);

        for (size_t i = 0; i < s->known.n_files; i++) {
                const CatalogFile *known = &s->known.files[i];

                if (s->known.seen[i] || (s->n_unread > 0 && scan_is_unread(s, known->rel_path)) != under)
                        continue;
                if (scan_cancelled(s))
                        return -ECANCELED;

                OriginStat st = { .size = known->size, .mtime_ns = known->mtime_ns };
                if (!pending_add(s, kind, known->rel_path, &st, NULL, true))
                        return scan_oom(s);
                if (s->n_pending >= s->batch_size) {
                        r = scan_flush(s);
                        if (r < 0)
                                return r;
                }
        }
        return scan_flush(s);
}

/* What the walk could not read is unknown, not gone: stamps the rows it did not see below the
 * entries it skipped, so that the end of the scan removes only what a readable part of the origin
 * no longer has. */
static int scan_keep_unread(Scan *s) {
        return scan_queue_unseen(s, PENDING_UNREAD, /* under= */ true);
}

/* A resumed scan: rows the interrupted one stamped that this walk did not see (and could have) are
 * gone since. */
static int scan_remove_unseen(Scan *s) {
        return scan_queue_unseen(s, PENDING_REMOVE, /* under= */ false);
}

/* The walk ran to its end: the next full scan starts afresh. */
static void scan_checkpoint_end(Scan *s) {
        int r = catalog_scan_checkpoint_clear(s->catalog, s->origin->id);
        if (r < 0)      /* the next scan resumes this one's generation, which is harmless */
                log_warning_errno(r, "Origin %s: cannot clear the scan's checkpoint, ignoring: %m", s->origin->name);
}

static void scan_done(Scan *s) {
        read_pool_done(&s->readers);
        pending_clear(s);
        free(s->pending);
        known_files_done(&s->known);
        for (size_t i = 0; i < s->n_unread; i++)
                free(s->unread[i]);
        free(s->unread);
}

int scan_origin(Catalog *catalog, Origin *origin, unsigned batch_size, const ScanHooks *hooks, ScanStats *ret) {
        _cleanup_(scan_done) Scan s = {
                .catalog = catalog,
                .origin = origin,
                .hooks = hooks,
                .batch_size = batch_size == 0 ? SCAN_BATCH_SIZE_DEFAULT :
                              batch_size > SCAN_BATCH_SIZE_MAX ? SCAN_BATCH_SIZE_MAX : batch_size,
        };
        uint64_t removed = 0;
        int r;

        if (ret)
                *ret = (ScanStats) {};
        if (!catalog || !origin)
                return -EINVAL;

        /* Idempotent; here so that no caller can forget it and let libavformat write to stderr. */
        tags_init();

        s.pending = calloc(s.batch_size, sizeof *s.pending);
        if (!s.pending)
                return -ENOMEM;
        r = read_pool_init(&s.readers, origin, hooks ? hooks->cancel : NULL, scan_max_reads(origin, hooks, s.batch_size));
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot set up the tag readers: %m", origin->name);

        r = known_files_load(&s.known, catalog, origin->id, "");
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot load its catalog rows: %m", origin->name);

        uint64_t resumed = 0;
        r = catalog_full_scan_begin(catalog, origin->id, &s.generation, &resumed);
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot begin a scan: %m", origin->name);
        s.checkpoint = true;
        /* The files the interrupted scan got through have their rows: they compare unchanged now and
         * cost a stat and a stamp each, no tag read. */
        bool resuming = r > 0;
        if (resuming) {
                s.stats.resumed = resumed;
                log_info("Origin %s: resuming an interrupted scan (generation %" PRIi64 ", %" PRIu64 " files done)",
                         origin->name, s.generation, resumed);
        }

        r = origin_walk_full(origin, scan_file, scan_unread, &s);
        if (r >= 0 && scan_cancelled(&s))
                r = s.error = -ECANCELED;
        if (s.error < 0)
                r = s.error;
        unsigned n_unreadable = r > 0 ? (unsigned) r : 0;

        /* What was read before a cancel or a walk failure is good: keep it. After a catalog failure
         * or a stop at the scan-batch failpoint there is nothing left, or nothing to be trusted. */
        if (r >= 0 || r == -ECANCELED || s.error == 0) {
                int k = scan_flush(&s);
                if (k < 0 && r >= 0)
                        r = s.error = k;
        }
        s.stats.unreadable = n_unreadable;
        if (ret)
                *ret = s.stats;

        if (r == -ECANCELED) {
                log_info("Origin %s: scan cancelled, nothing removed", origin->name);
                return r;
        }
        if (r < 0) {
                if (s.error == 0)       /* the walk itself failed (the root is gone, ...) */
                        log_error_errno(r, "Origin %s: walk of %s failed, nothing removed: %m", origin->name, strna(origin->url));
                return r;
        }

        /* Only a walk that saw the whole origin may remove what it did not see. A root removed
         * during the walk still lists (empty) through the origin's open descriptor, and an
         * unmounted disk leaves an empty mount point: neither may empty the library. */
        r = origin_check(origin);
        if (r < 0)
                return log_error_errno(r, "Origin %s: %s is gone after the walk, nothing removed: %m",
                                       origin->name, strna(origin->url));
        if (s.stats.seen == 0 && s.known.n_files > 0) {
                log_warning("Origin %s: %s has no audio files left; keeping its %zu catalogued files in case it "
                            "is an unmounted disk (remove the origin to drop them)",
                            origin->name, strna(origin->url), s.known.n_files);
                scan_checkpoint_end(&s);
                return 0;
        }

        if (n_unreadable > 0) {
                if (s.n_unread < n_unreadable) {
                        /* Told that the walk was incomplete but not (everywhere) where: nothing can be
                         * removed safely. */
                        log_warning("Origin %s: scan of %s incomplete (%u entries unreadable); nothing removed",
                                    origin->name, strna(origin->url), n_unreadable);
                        scan_checkpoint_end(&s);
                        return 0;
                }
                r = scan_keep_unread(&s);
                if (ret)
                        *ret = s.stats;
                if (r == -ECANCELED) {
                        log_info("Origin %s: scan cancelled, nothing removed", origin->name);
                        return r;
                }
                if (r < 0)
                        return log_error_errno(r, "Origin %s: cannot keep the files of unreadable directories, "
                                               "nothing removed: %m", origin->name);
                log_warning("Origin %s: %zu entries of %s could not be read (among them %s); keeping the %" PRIu64
                            " catalogued files under them until they can",
                            origin->name, s.n_unread, strna(origin->url), s.unread[0], s.stats.kept);
        }
        if (s.n_unstamped > 0) {
                log_warning("Origin %s: %" PRIu64 " catalogued files could not be stamped as seen; nothing removed",
                            origin->name, s.n_unstamped);
                scan_checkpoint_end(&s);
                return 0;
        }

        /* The interrupted scan stamped files with this generation that may have gone since: they are
         * the rows this walk did not see, outside what it could not read. */
        if (resuming) {
                r = scan_remove_unseen(&s);
                if (r < 0)
                        return log_error_errno(r, "Origin %s: cannot remove the files gone since the interrupted scan, "
                                               "nothing removed: %m", origin->name);
        }

        r = catalog_scan_finish(catalog, origin->id, s.generation, &removed);
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot finish the scan: %m", origin->name);
        s.stats.removed += removed;
        if (ret)
                *ret = s.stats;
        scan_checkpoint_end(&s);
        return 0;
}

void scan_stats_log(const char *origin_name, const ScanStats *st, uint64_t usec) {
        log_info("Origin %s: scanned %" PRIu64 " files: %" PRIu64 " added, %" PRIu64 " changed, %" PRIu64 " removed, %"
                 PRIu64 " unchanged, %" PRIu64 " unreadable tags, %" PRIu64 " failed, %" PRIu64 " tags read in %.1f s",
                 origin_name, st->seen, st->added, st->changed, st->removed, st->unchanged, st->unparsed, st->failed,
                 st->read, (double) usec / 1e6);
}

/* ---- targeted scans (sync, issue #6) ---- */

static bool path_has_prefix_dir(const char *path, const char *dir) {
        size_t n = strlen(dir);
        return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* "" (the whole origin), or relative with no empty, "." or ".." component: what the origin accepts. */
static bool rel_path_valid(const char *p) {
        if (!p[0])
                return true;
        for (;;) {
                size_t n = strcspn(p, "/");
                if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
                        return false;
                if (!p[n])
                        return true;
                p += n + 1;
        }
}

/* Sorted, without duplicates, and without paths below another one of the list (its scan covers
 * them). Returns the count kept; the pointers are borrowed. */
static size_t paths_normalize(const char **paths, size_t n) {
        size_t kept = 0;

        qsort(paths, n, sizeof *paths, string_compare);
        for (size_t i = 0; i < n; i++) {
                if (kept > 0 && (strcmp(paths[kept - 1], paths[i]) == 0 || path_has_prefix_dir(paths[i], paths[kept - 1])))
                        continue;
                /* "a" sorts before "a b" before "a/x": an ancestor may be more than one entry back. */
                bool covered = false;
                for (size_t j = kept; j > 0 && !covered; j--)
                        covered = path_has_prefix_dir(paths[i], paths[j - 1]);
                if (!covered)
                        paths[kept++] = paths[i];
        }
        return kept;
}

/* One path of a targeted scan, under s->generation: the file, the directory's subtree, or the rows
 * of what is gone. 1 when the removals under it may run, 0 when they may not (something there was
 * unreadable), or a negative errno that stops the scan. */
static int scan_one_path(Scan *s, const char *path) {
        OriginStat st;
        int r;

        known_files_done(&s->known);
        r = known_files_load(&s->known, s->catalog, s->origin->id, path);
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot load the catalog rows of %s: %m", s->origin->name, path);
        for (size_t i = 0; i < s->n_unread; i++)
                free(s->unread[i]);
        s->n_unread = 0;

        r = origin_stat(s->origin, path, &st);
        if (r >= 0) {
                r = scan_file(path, &st, s);
                if (r < 0)
                        return s->error < 0 ? s->error : r;
        } else if (r == -EISDIR) {
                r = origin_walk_under(s->origin, path, scan_file, scan_unread, s);
                if (s->error < 0)
                        return s->error;
                if (r == -ENOENT || r == -ENOTDIR)      /* gone while we looked */
                        r = 0;
                if (r < 0) {
                        log_warning_errno(r, "Origin %s: cannot walk %s, keeping its files: %m", s->origin->name, path);
                        return 0;
                }
                if (r > 0) {
                        if (s->n_unread < (size_t) r)
                                return 0;
                        r = scan_keep_unread(s);
                        if (r < 0)
                                return r;
                }
        } else if (r != -ENOENT && r != -ENOTDIR && r != -EINVAL) {
                /* EACCES, EIO...: unknown, not gone. */
                log_warning_errno(r, "Origin %s: cannot stat %s, keeping its files: %m", s->origin->name, path);
                return 0;
        }

        r = scan_flush(s);
        if (r < 0)
                return r;
        return 1;
}

int scan_origin_paths(Catalog *catalog, Origin *origin, const char *const *paths, size_t n_paths, unsigned batch_size,
                      const ScanHooks *hooks, ScanStats *ret) {
        _cleanup_(scan_done) Scan s = {
                .catalog = catalog,
                .origin = origin,
                .hooks = hooks,
                .batch_size = batch_size == 0 ? SCAN_BATCH_SIZE_DEFAULT :
                              batch_size > SCAN_BATCH_SIZE_MAX ? SCAN_BATCH_SIZE_MAX : batch_size,
        };
        _cleanup_free_ const char **sorted = NULL;
        _cleanup_free_ bool *removable = NULL;
        int r;

        if (ret)
                *ret = (ScanStats) {};
        if (!catalog || !origin || (n_paths > 0 && !paths))
                return -EINVAL;
        for (size_t i = 0; i < n_paths; i++)
                if (!paths[i] || !rel_path_valid(paths[i]))
                        return -EINVAL;
        for (size_t i = 0; i < n_paths; i++)
                if (!paths[i][0])       /* the whole origin */
                        return scan_origin(catalog, origin, batch_size, hooks, ret);
        if (n_paths == 0)
                return 0;

        tags_init();
        s.pending = calloc(s.batch_size, sizeof *s.pending);
        sorted = calloc(n_paths, sizeof *sorted);
        removable = calloc(n_paths, sizeof *removable);
        if (!s.pending || !sorted || !removable)
                return -ENOMEM;
        r = read_pool_init(&s.readers, origin, hooks ? hooks->cancel : NULL, scan_max_reads(origin, hooks, s.batch_size));
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot set up the tag readers: %m", origin->name);
        memcpy(sorted, paths, n_paths * sizeof *paths);
        n_paths = paths_normalize(sorted, n_paths);

        r = catalog_scan_begin(catalog, origin->id, &s.generation);
        if (r < 0)
                return log_error_errno(r, "Origin %s: cannot begin a scan: %m", origin->name);

        for (size_t i = 0; i < n_paths; i++) {
                if (scan_cancelled(&s)) {
                        r = -ECANCELED;
                        break;
                }
                r = scan_one_path(&s, sorted[i]);
                if (r < 0)
                        break;
                removable[i] = r > 0;
                r = 0;
        }
        if (ret)
                *ret = s.stats;
        if (r == -ECANCELED)
                return r;
        if (r < 0)
                return log_warning_errno(r, "Origin %s: scan of changed paths failed, nothing removed: %m", origin->name);

        /* A root that went away makes every path look gone: only an origin still there may lose
         * rows. */
        r = origin_check(origin);
        if (r < 0)
                return log_warning_errno(r, "Origin %s: %s is not reachable, nothing removed: %m", origin->name,
                                         strna(origin->url));
        if (s.n_unstamped > 0) {
                log_warning("Origin %s: %" PRIu64 " catalogued files could not be stamped as seen; nothing removed",
                            origin->name, s.n_unstamped);
                return 0;
        }
        for (size_t i = 0; i < n_paths; i++) {
                uint64_t removed = 0;

                if (!removable[i])
                        continue;
                r = catalog_scan_finish_under(catalog, origin->id, sorted[i], s.generation, &removed);
                if (r < 0)
                        return log_error_errno(r, "Origin %s: cannot finish the scan of %s: %m", origin->name, sorted[i]);
                s.stats.removed += removed;
        }
        if (ret)
                *ret = s.stats;

        log_debug("Origin %s: synced %zu changed paths (%s%s): %" PRIu64 " files, %" PRIu64 " added, %" PRIu64
                  " changed, %" PRIu64 " removed, %" PRIu64 " tags read",
                  origin->name, n_paths, sorted[0], n_paths > 1 ? ", ..." : "", s.stats.seen, s.stats.added,
                  s.stats.changed, s.stats.removed, s.stats.read);
        return 0;
}
