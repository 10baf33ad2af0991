/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Chunk files on the cache disk (D7): <dir>/xx/<hex>, written through temporaries in batches so a
 * chunk is under its name only once its bytes are durable, and verified against its name on every
 * read. Owns the store directory and nothing else: the index (chunk-index.c) decides which chunks
 * live, the cache (cache.c) turns the disk's errors into passthrough, so every error here keeps the
 * errno the kernel gave.
 *
 * Everything goes through one directory fd and paths relative to it ("xx/<hex>"), so
 * the store keeps one fd however many chunks it has, and it is thread-safe without a lock: a batch
 * belongs to one thread, and concurrent batches of the same chunk meet at an atomic rename. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "chunk-store.h"
#include "failpoint.h"
#include "io-util.h"
#include "log.h"
#include "macro.h"

#define TMP_PREFIX ".tmp-"
#define PROBE_PREFIX ".probe-"
#define PROBE_SIZE 4096
/* Chunk files opened at once by a prefetch: a reader's window of them, within any fd limit. */
#define PREFETCH_BATCH 32

/* "xx/" + chunk hex: what every chunk operation opens, relative to the store's fd. */
#define CHUNK_PATH_SIZE (3 + CHUNK_ID_HEX_SIZE)
/* "xx/.tmp-<hex>-<16 hex digits>" */
#define TMP_PATH_SIZE (3 + sizeof(TMP_PREFIX) - 1 + CHUNK_ID_HEX_SIZE - 1 + 1 + 16 + 1)

struct ChunkStore {
        char *dir;
        int dir_fd;
        atomic_uint_fast64_t advised;   /* chunk files handed to the kernel's read-ahead, ever */
        atomic_uint_fast64_t opened;    /* chunk files opened to be read or prefetched, ever */
};

typedef enum EntryState {
        ENTRY_TMP,              /* our temporary exists */
        ENTRY_RENAMED,          /* under its name, put there by this batch */
        ENTRY_THEIRS,           /* another batch stored it first; our temporary is gone */
} EntryState;

typedef struct BatchEntry {
        ChunkId id;
        char tmp[TMP_PATH_SIZE];
        EntryState state;
} BatchEntry;

struct ChunkBatch {
        ChunkStore *store;
        BatchEntry *entries;
        size_t n_entries, n_alloc;
        uint64_t touched[256 / 64];     /* xx directories with a temporary of ours */
};

static void chunk_path(const ChunkId *id, char ret[CHUNK_PATH_SIZE]) {
        char hex[CHUNK_ID_HEX_SIZE];

        chunk_id_to_hex(id, hex);
        snprintf(ret, CHUNK_PATH_SIZE, "%.2s/%s", hex, hex);
}

static void xx_name(unsigned d, char ret[3]) {
        static const char digits[] = "0123456789abcdef";

        ret[0] = digits[(d >> 4) & 0xf];
        ret[1] = digits[d & 0xf];
        ret[2] = '\0';
}

static bool is_xx_name(const char *name) {
        return strlen(name) == 2 && strspn(name, "0123456789abcdef") == 2;
}

/* A chunk file's name: 64 lowercase hex digits (the only form chunk_id_to_hex() writes), in the
 * directory of its first byte. Anything else would never be found by a read. */
static bool is_chunk_name(const char *xx, const char *name, ChunkId *ret) {
        if (strlen(name) != CHUNK_ID_HEX_SIZE - 1 || strspn(name, "0123456789abcdef") != CHUNK_ID_HEX_SIZE - 1)
                return false;
        if (strncmp(name, xx, 2) != 0)
                return false;
        return chunk_id_from_hex(name, ret) >= 0;
}

static int fsync_dirat(int dir_fd, const char *name) {
        _cleanup_close_ int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        if (fsync(fd) < 0)
                return negative_errno();
        return 0;
}

static int mkdir_parents_and_self(const char *dir) {
        _cleanup_free_ char *p = strdup(dir);
        if (!p)
                return -ENOMEM;

        /* Every prefix, then the whole path; existing ones are fine. */
        for (char *slash = strchr(p + 1, '/');; slash = strchr(slash + 1, '/')) {
                if (slash)
                        *slash = '\0';
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        return negative_errno();
                if (!slash)
                        return 0;
                *slash = '/';
                if (slash[1] == '\0')
                        return 0;
        }
}

/* Removes what an earlier run left behind: temporaries in the xx directories (a batch that never
 * committed) and probe files at the top. A failure to remove one is logged and skipped: the store
 * still opens, and the health probe tells the cache if the disk has gone bad. */
static unsigned remove_leftovers(ChunkStore *s) {
        _cleanup_close_ int top_fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        unsigned removed = 0;

        if (top_fd < 0) {
                log_warning_errno(errno, "Failed to list chunk store %s, not cleaning up: %m", s->dir);
                return 0;
        }
        DIR *top = fdopendir(TAKE_FD(top_fd));
        if (!top) {
                log_warning_errno(errno, "Failed to list chunk store %s, not cleaning up: %m", s->dir);
                return 0;
        }

        for (struct dirent *de; (de = readdir(top));) {
                if (strncmp(de->d_name, PROBE_PREFIX, strlen(PROBE_PREFIX)) == 0) {
                        if (unlinkat(s->dir_fd, de->d_name, 0) < 0 && errno != ENOENT)
                                log_warning_errno(errno, "Failed to remove %s/%s, ignoring: %m", s->dir, de->d_name);
                        continue;
                }
                if (!is_xx_name(de->d_name))
                        continue;

                int sub_fd = openat(s->dir_fd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (sub_fd < 0) {
                        log_warning_errno(errno, "Failed to open %s/%s, ignoring: %m", s->dir, de->d_name);
                        continue;
                }
                DIR *sub = fdopendir(sub_fd);
                if (!sub) {
                        log_warning_errno(errno, "Failed to list %s/%s, ignoring: %m", s->dir, de->d_name);
                        close(sub_fd);
                        continue;
                }
                for (struct dirent *e; (e = readdir(sub));) {
                        if (strncmp(e->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0)
                                continue;
                        if (unlinkat(dirfd(sub), e->d_name, 0) < 0) {
                                if (errno != ENOENT)
                                        log_warning_errno(errno, "Failed to remove temporary %s/%s/%s, ignoring: %m",
                                                          s->dir, de->d_name, e->d_name);
                                continue;
                        }
                        removed++;
                }
                closedir(sub);
        }
        closedir(top);

        return removed;
}

int chunk_store_open(const char *dir, ChunkStore **ret, unsigned *ret_removed_tmp) {
        if (!dir || !*dir || !ret)
                return -EINVAL;

        int r = mkdir_parents_and_self(dir);
        if (r < 0)
                return log_error_errno(r, "Failed to create chunk store %s: %m", dir);

        ChunkStore *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->dir_fd = -1;
        s->dir = strdup(dir);
        if (!s->dir) {
                chunk_store_free(s);
                return -ENOMEM;
        }
        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                r = log_error_errno(errno, "Failed to open chunk store %s: %m", dir);
                chunk_store_free(s);
                return r;
        }

        unsigned removed = remove_leftovers(s);
        if (removed > 0)
                log_info("Removed %u leftover temporar%s from chunk store %s", removed, removed == 1 ? "y" : "ies", dir);
        else
                log_debug("Opened chunk store %s, no leftover temporaries", dir);

        if (ret_removed_tmp)
                *ret_removed_tmp = removed;
        *ret = s;
        return 0;
}

void chunk_store_free(ChunkStore *s) {
        if (!s)
                return;
        if (s->dir_fd >= 0)
                close(s->dir_fd);
        free(s->dir);
        free(s);
}

const char *chunk_store_dir(const ChunkStore *s) {
        return s ? s->dir : NULL;
}

/* ---- batches --------------------------------------------------------------------------------- */

int chunk_batch_new(ChunkStore *s, ChunkBatch **ret) {
        if (!s || !ret)
                return -EINVAL;

        ChunkBatch *b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        b->store = s;
        *ret = b;
        return 0;
}

static void batch_free(ChunkBatch *b) {
        free(b->entries);
        free(b);
}

/* Removes the temporaries not yet renamed and, when undo_renames, the names this batch created. */
static void batch_cleanup(ChunkBatch *b, bool undo_renames) {
        for (size_t i = 0; i < b->n_entries; i++) {
                BatchEntry *e = &b->entries[i];
                if (e->state == ENTRY_THEIRS)
                        continue;
                if (e->state == ENTRY_RENAMED) {
                        if (!undo_renames)
                                continue;
                        char path[CHUNK_PATH_SIZE];
                        chunk_path(&e->id, path);
                        if (unlinkat(b->store->dir_fd, path, 0) < 0 && errno != ENOENT)
                                log_warning_errno(errno, "Failed to remove %s/%s after a failed batch, ignoring: %m",
                                                  b->store->dir, path);
                        continue;
                }
                if (unlinkat(b->store->dir_fd, e->tmp, 0) < 0 && errno != ENOENT)
                        log_debug_errno(errno, "Failed to remove temporary %s/%s, left for the next start: %m",
                                        b->store->dir, e->tmp);
        }
}

/* Creates the temporary, making its xx directory when it is missing (a new store, or someone
 * removed it). */
static int open_tmp(ChunkStore *s, const char *tmp, const char *xx) {
        for (unsigned attempt = 0;; attempt++) {
                int fd = openat(s->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (fd >= 0)
                        return fd;
                if (errno != ENOENT || attempt > 0)
                        return negative_errno();
                /* The directory becomes durable with the batch's syncfs(), before any rename. */
                if (mkdirat(s->dir_fd, xx, 0755) < 0 && errno != EEXIST)
                        return negative_errno();
        }
}

int chunk_batch_add(ChunkBatch *b, const ChunkId *id, const void *data, size_t len) {
        if (!b || !id || (!data && len > 0))
                return -EINVAL;
        if (len == 0)
                return -EINVAL;         /* the chunker never makes one, and a read takes it for damage */

        ChunkStore *s = b->store;
        char path[CHUNK_PATH_SIZE];
        chunk_path(id, path);

        /* The same chunk twice in a batch (a repeated stretch within a file). */
        for (size_t i = 0; i < b->n_entries; i++)
                if (memcmp(b->entries[i].id.bytes, id->bytes, CHUNK_ID_SIZE) == 0)
                        return 0;

        /* Already stored: same name, same bytes. A file of another size under the name is damage,
         * which this write replaces. */
        struct stat st;
        if (fstatat(s->dir_fd, path, &st, 0) >= 0) {
                if (S_ISREG(st.st_mode) && (uint64_t) st.st_size == len)
                        return 0;
        } else if (errno != ENOENT)
                return log_debug_errno(errno, "Failed to check for %s/%s: %m", s->dir, path);

        if (GREEDY_REALLOC(b->entries, b->n_alloc, b->n_entries + 1) < 0)
                return -ENOMEM;

        int r = FAILPOINT(CACHE_WRITE);
        if (r < 0)
                return r;

        uint64_t rnd;
        if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != sizeof rnd)
                /* No entropy yet this early in boot: O_EXCL still keeps names apart. */
                rnd = (uint64_t) getpid() << 32 ^ (uint64_t) (uintptr_t) b ^ b->n_entries;

        BatchEntry *e = &b->entries[b->n_entries];
        *e = (BatchEntry) { .id = *id, .state = ENTRY_TMP };
        snprintf(e->tmp, sizeof e->tmp, "%.2s/" TMP_PREFIX "%s-%016" PRIx64, path, path + 3, rnd);

        char xx[3] = { path[0], path[1], '\0' };
        _cleanup_close_ int fd = open_tmp(s, e->tmp, xx);
        if (fd < 0)
                return log_debug_errno(fd, "Failed to create %s/%s: %m", s->dir, e->tmp);

        r = loop_write(fd, data, len);
        if (r >= 0 && close(TAKE_FD(fd)) < 0)
                r = negative_errno();
        if (r < 0) {
                (void) unlinkat(s->dir_fd, e->tmp, 0);
                return log_debug_errno(r, "Failed to write %s/%s: %m", s->dir, e->tmp);
        }

        unsigned dir_index = (unsigned) id->bytes[0];
        b->touched[dir_index / 64] |= UINT64_C(1) << (dir_index % 64);
        b->n_entries++;
        return 0;
}

/* One syncfs() makes the whole batch durable (and the xx directories it created); a file system
 * without it gets an fsync() per temporary. */
static int batch_sync(ChunkBatch *b) {
        ChunkStore *s = b->store;

        if (syncfs(s->dir_fd) >= 0)
                return 0;
        if (errno != ENOSYS)
                return log_debug_errno(errno, "syncfs() on %s failed: %m", s->dir);

        for (size_t i = 0; i < b->n_entries; i++) {
                _cleanup_close_ int fd = openat(s->dir_fd, b->entries[i].tmp, O_RDONLY | O_CLOEXEC);
                if (fd < 0 || fsync(fd) < 0)
                        return log_debug_errno(errno, "Failed to fsync %s/%s: %m", s->dir, b->entries[i].tmp);
        }
        /* xx directories this batch may have created; the renames are made durable after. */
        return fsync(s->dir_fd) < 0 ? log_debug_errno(errno, "Failed to fsync %s: %m", s->dir) : 0;
}

/* Puts one temporary under its name. Another batch may have stored the same chunk meanwhile: then
 * its file stays (same bytes) and ours goes, so undoing this batch never removes another's chunk.
 * A file of the wrong size under the name is damage and is replaced. */
static int batch_rename(ChunkBatch *b, BatchEntry *e) {
        ChunkStore *s = b->store;
        char path[CHUNK_PATH_SIZE];
        chunk_path(&e->id, path);

        if (renameat2(s->dir_fd, e->tmp, s->dir_fd, path, RENAME_NOREPLACE) >= 0) {
                e->state = ENTRY_RENAMED;
                return 0;
        }
        if (errno == EEXIST) {
                struct stat ours, theirs;
                if (fstatat(s->dir_fd, e->tmp, &ours, 0) >= 0 && fstatat(s->dir_fd, path, &theirs, 0) >= 0 &&
                    S_ISREG(theirs.st_mode) && theirs.st_size == ours.st_size) {
                        if (unlinkat(s->dir_fd, e->tmp, 0) < 0 && errno != ENOENT)
                                return negative_errno();
                        e->state = ENTRY_THEIRS;
                        return 0;
                }
        } else if (errno != EINVAL && errno != ENOSYS)
                return negative_errno();

        /* A file system without RENAME_NOREPLACE, or damage under the name. */
        if (renameat(s->dir_fd, e->tmp, s->dir_fd, path) < 0)
                return negative_errno();
        e->state = ENTRY_RENAMED;
        return 0;
}

int chunk_batch_commit(ChunkBatch *b) {
        if (!b)
                return -EINVAL;
        if (b->n_entries == 0) {
                batch_free(b);
                return 0;
        }

        ChunkStore *s = b->store;
        int r = batch_sync(b);
        if (r >= 0)
                r = FAILPOINT(CACHE_RENAME);

        for (size_t i = 0; r >= 0 && i < b->n_entries; i++) {
                r = batch_rename(b, &b->entries[i]);
                if (r < 0)
                        log_debug_errno(r, "Failed to rename %s/%s into place: %m", s->dir, b->entries[i].tmp);
        }

        /* The renames are durable once their directories are: one more syncfs() for all of them
         * (a batch touches dozens of xx directories, an fsync each cost more than the data's sync),
         * an fsync per directory where there is no syncfs(). */
        bool dirs_synced = false;
        if (r >= 0) {
                if (syncfs(s->dir_fd) >= 0)
                        dirs_synced = true;
                else if (errno != ENOSYS) {
                        r = negative_errno();
                        log_debug_errno(r, "syncfs() on %s failed: %m", s->dir);
                }
        }
        for (unsigned d = 0; r >= 0 && !dirs_synced && d < 256; d++) {
                if (!(b->touched[d / 64] & UINT64_C(1) << (d % 64)))
                        continue;
                char xx[3];
                xx_name(d, xx);
                r = fsync_dirat(s->dir_fd, xx);
                if (r < 0)
                        log_debug_errno(r, "Failed to fsync %s/%s: %m", s->dir, xx);
        }

        if (r < 0)
                batch_cleanup(b, /* undo_renames= */ true);
        batch_free(b);
        return r < 0 ? r : 0;
}

void chunk_batch_abort(ChunkBatch *b) {
        if (!b)
                return;
        batch_cleanup(b, /* undo_renames= */ false);
        batch_free(b);
}

/* ---- reading and the rest -------------------------------------------------------------------- */

/* Removes a chunk file found bad, unless a writer has put a new file under the name since we
 * opened it. */
static void drop_bad(ChunkStore *s, const char *path, int fd, const char *why) {
        struct stat ours, now;

        log_warning("Chunk %s/%s is damaged (%s), removing it", s->dir, path, why);
        if (fstat(fd, &ours) < 0 || fstatat(s->dir_fd, path, &now, 0) < 0)
                return;
        if (ours.st_dev != now.st_dev || ours.st_ino != now.st_ino)
                return;
        if (unlinkat(s->dir_fd, path, 0) < 0 && errno != ENOENT)
                log_warning_errno(errno, "Failed to remove damaged chunk %s/%s: %m", s->dir, path);
}

ssize_t chunk_store_read_fd(ChunkStore *s, const ChunkId *id, int fd, void *buf, size_t bufsize) {
        if (!s || !id || fd < 0 || !buf)
                return -EINVAL;

        int r = FAILPOINT(CACHE_CHUNK_READ);
        if (r < 0)
                return r;

        char path[CHUNK_PATH_SIZE];
        chunk_path(id, path);

        struct stat st;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode)) {
                log_warning("Chunk %s/%s is not a regular file, ignoring it", s->dir, path);
                return -EBADMSG;
        }
        if (st.st_size == 0 || (uint64_t) st.st_size > bufsize) {
                drop_bad(s, path, fd, st.st_size == 0 ? "empty" : "larger than any chunk");
                return -EBADMSG;
        }

        /* From offset 0, where a prefetch that opened it left it. */
        ssize_t n = loop_read(fd, buf, (size_t) st.st_size);
        if (n < 0)
                return log_debug_errno((int) n, "Failed to read chunk %s/%s: %m", s->dir, path);
        /* A file that shrank under us reads short; its hash tells. */
        if (!chunk_id_matches(id, buf, (size_t) n)) {
                drop_bad(s, path, fd, "content does not match its name");
                return -EBADMSG;
        }
        return n;
}

ssize_t chunk_store_read(ChunkStore *s, const ChunkId *id, void *buf, size_t bufsize) {
        if (!s || !id || !buf)
                return -EINVAL;

        char path[CHUNK_PATH_SIZE];
        chunk_path(id, path);

        /* O_NONBLOCK: a FIFO put where a chunk was must not hang the reader in open(); the fstat
         * that follows finds it is no regular file. (It changes nothing for one that is.) */
        _cleanup_close_ int fd = openat(s->dir_fd, path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
                return negative_errno();
        atomic_fetch_add(&s->opened, 1);
        return chunk_store_read_fd(s, id, fd, buf, bufsize);
}

int chunk_store_stat(ChunkStore *s, const ChunkId *id, uint64_t *ret_size) {
        if (!s || !id)
                return -EINVAL;

        char path[CHUNK_PATH_SIZE];
        chunk_path(id, path);

        struct stat st;
        if (fstatat(s->dir_fd, path, &st, 0) < 0)
                return negative_errno();
        if (ret_size)
                *ret_size = (uint64_t) st.st_size;
        return 0;
}

size_t chunk_store_prefetch_fds(ChunkStore *s, const ChunkId *ids, size_t n, int *ret_fds) {
        int fds[PREFETCH_BATCH];
        size_t advised = 0;

        if (!s || !ids)
                return 0;
        /* All opens of a batch first, then all the advice: the read-ahead of neighbouring files is
         * then queued back to back and the block layer merges what lies side by side on the disk.
         * Advising each file as it opens lets the device take them one small request at a time
         * (measured on a cached 1 GiB file: 0.45 -> 0.61 GB/s). */
        for (size_t done = 0; done < n;) {
                size_t first = done, m = 0;
                for (; done < n && m < PREFETCH_BATCH; done++, m++) {
                        char path[CHUNK_PATH_SIZE];
                        chunk_path(&ids[done], path);
                        fds[m] = openat(s->dir_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
                        if (fds[m] >= 0)
                                atomic_fetch_add(&s->opened, 1);
                }
                for (size_t i = 0; i < m; i++)
                        if (fds[i] >= 0 && posix_fadvise(fds[i], 0, 0, POSIX_FADV_WILLNEED) == 0)
                                advised++;
                for (size_t i = 0; i < m; i++) {
                        if (ret_fds)
                                ret_fds[first + i] = fds[i];
                        else
                                safe_close(fds[i]);
                }
        }
        atomic_fetch_add(&s->advised, advised);
        return advised;
}

size_t chunk_store_prefetch(ChunkStore *s, const ChunkId *ids, size_t n) {
        return chunk_store_prefetch_fds(s, ids, n, NULL);
}

uint64_t chunk_store_advised(ChunkStore *s) {
        return s ? atomic_load(&s->advised) : 0;
}

uint64_t chunk_store_opened(ChunkStore *s) {
        return s ? atomic_load(&s->opened) : 0;
}

int chunk_store_remove(ChunkStore *s, const ChunkId *id) {
        if (!s || !id)
                return -EINVAL;

        char path[CHUNK_PATH_SIZE];
        chunk_path(id, path);

        if (unlinkat(s->dir_fd, path, 0) < 0)
                return negative_errno();
        return 0;
}

static int walk_dir(ChunkStore *s, const char *xx, chunk_store_walk_fn fn, void *userdata, uint64_t *foreign) {
        int fd = openat(s->dir_fd, xx, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? 0 : negative_errno();
        DIR *d = fdopendir(fd);
        if (!d) {
                int r = negative_errno();
                close(fd);
                return r;
        }

        int r = 0;
        for (;;) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                r = negative_errno();
                        break;
                }
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;

                ChunkId id;
                struct stat st;
                if (!is_chunk_name(xx, de->d_name, &id)) {
                        (*foreign)++;
                        continue;
                }
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno == ENOENT)            /* removed while we walk */
                                continue;
                        r = negative_errno();
                        break;
                }
                if (!S_ISREG(st.st_mode)) {
                        (*foreign)++;
                        continue;
                }
                r = fn(&id, (uint64_t) st.st_size, userdata);
                if (r < 0)
                        break;
        }
        closedir(d);
        return r < 0 ? r : 0;
}

int chunk_store_walk(ChunkStore *s, chunk_store_walk_fn fn, void *userdata, uint64_t *ret_foreign) {
        if (!s || !fn)
                return -EINVAL;

        /* The top level is read once up front, so the walk's callbacks may add and remove chunks. */
        int top_fd = openat(s->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (top_fd < 0)
                return negative_errno();
        DIR *top = fdopendir(top_fd);
        if (!top) {
                int r = negative_errno();
                close(top_fd);
                return r;
        }

        uint64_t dirs[256 / 64] = {}, foreign = 0;
        int r = 0;
        for (;;) {
                errno = 0;
                struct dirent *de = readdir(top);
                if (!de) {
                        if (errno != 0)
                                r = negative_errno();
                        break;
                }
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (is_xx_name(de->d_name)) {
                        unsigned d = (unsigned) strtoul(de->d_name, NULL, 16);
                        dirs[d / 64] |= UINT64_C(1) << (d % 64);
                        continue;
                }
                foreign++;
        }
        closedir(top);

        for (unsigned d = 0; r >= 0 && d < 256; d++) {
                if (!(dirs[d / 64] & UINT64_C(1) << (d % 64)))
                        continue;
                char xx[3];
                xx_name(d, xx);
                r = walk_dir(s, xx, fn, userdata, &foreign);
        }

        if (ret_foreign)
                *ret_foreign = foreign;
        return r;
}

int chunk_store_disk_space(ChunkStore *s, uint64_t *ret_used, uint64_t *ret_total) {
        if (!s || !ret_used || !ret_total)
                return -EINVAL;

        struct statvfs sv;
        if (fstatvfs(s->dir_fd, &sv) < 0)
                return negative_errno();

        /* As df: the blocks reserved for root count neither as used nor as available. */
        uint64_t used = (uint64_t) sv.f_blocks - sv.f_bfree;
        *ret_used = used * sv.f_frsize;
        *ret_total = (used + sv.f_bavail) * sv.f_frsize;
        return 0;
}

int chunk_store_disk_usage(ChunkStore *s, double *ret_percent) {
        uint64_t used, total;

        if (!s || !ret_percent)
                return -EINVAL;
        int r = chunk_store_disk_space(s, &used, &total);
        if (r < 0)
                return r;
        double p = total > 0 ? 100.0 * (double) used / (double) total : 0.0;
        *ret_percent = p < 0.0 ? 0.0 : p > 100.0 ? 100.0 : p;
        return 0;
}

int chunk_store_probe(ChunkStore *s) {
        if (!s)
                return -EINVAL;

        /* pid and thread: two probes at once (a timer and a bus call) must not share a file. */
        char name[64];
        snprintf(name, sizeof name, PROBE_PREFIX "%d-%d", (int) getpid(), (int) gettid());

        uint8_t out[PROBE_SIZE], in[PROBE_SIZE];
        for (size_t i = 0; i < sizeof out; i++)
                out[i] = (uint8_t) (i * 31 + 7);

        _cleanup_close_ int fd = openat(s->dir_fd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return log_debug_errno(errno, "Health probe: failed to create %s/%s: %m", s->dir, name);

        int r = loop_write(fd, out, sizeof out);
        if (r < 0)
                log_debug_errno(r, "Health probe: failed to write %s/%s: %m", s->dir, name);
        if (r >= 0 && fsync(fd) < 0)
                r = log_debug_errno(errno, "Health probe: failed to fsync %s/%s: %m", s->dir, name);
        if (r >= 0 && lseek(fd, 0, SEEK_SET) < 0)
                r = negative_errno();
        if (r >= 0) {
                ssize_t n = loop_read(fd, in, sizeof in);
                if (n < 0)
                        r = log_debug_errno((int) n, "Health probe: failed to read back %s/%s: %m", s->dir, name);
                else if ((size_t) n != sizeof in || memcmp(in, out, sizeof in) != 0)
                        r = log_debug_errno(EIO, "Health probe: %s/%s read back different bytes", s->dir, name);
        }

        if (unlinkat(s->dir_fd, name, 0) < 0 && r >= 0)
                r = log_debug_errno(errno, "Health probe: failed to remove %s/%s: %m", s->dir, name);
        return r;
}
