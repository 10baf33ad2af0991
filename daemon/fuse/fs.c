/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The read-only FUSE filesystem over the published Tree (see fs.h).
 *
 * Requests are served by our own worker threads rather than fuse_session_loop_mt(): each worker
 * waits on the non-blocking session fd together with a stop eventfd, so stopping never has to
 * interrupt a read() in the kernel and every in-flight request is answered before we unmount. Each
 * worker has its own epoll set holding the session fd with EPOLLEXCLUSIVE, so a request wakes one
 * idle worker rather than all of them (plain poll() woke every worker for each request, and all but
 * one read EAGAIN: a quarter of the daemon's CPU on a cached read went to those wake-ups).
 *
 * Inode numbers are catalog ids (D4) and live in the Tree, so the filesystem keeps no per-inode
 * state: forget is a no-op and a lookup is a search in whatever tree is published right now. (The
 * exception is /.search/: its inodes lie above FS_SEARCH_INO_BASE and fs-search.c serves them.)
 * An open directory or file holds a reference on the tree it was opened in, so a listing or a read
 * never sees a node freed under it.
 *
 * A lookup or getattr of an inode that is no longer in the published tree (and not held open)
 * answers ENOENT, not ESTALE: a path that vanished with a rescan should look like any missing file
 * to a reader, and ESTALE belongs to NFS file handles, which we do not export. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "crash.h"
#include "failpoint.h"
#include "fs.h"
#include "fs-search.h"
#include "log.h"
#include "macro.h"
#include "replica.h"
#include "time-util.h"

#define USEC_PER_SEC UINT64_C(1000000)
#define NSEC_PER_SEC INT64_C(1000000000)
/* One log line per error class per this interval, however many readers fail. */
#define READER_ERROR_LOG_INTERVAL_USEC (10 * USEC_PER_SEC)
#define READER_OFFLINE_LOG_INTERVAL_USEC (60 * USEC_PER_SEC)      /* D11 */
#define DEFAULT_THREADS 4U
#define MAX_THREADS 256U
#define STATFS_BLOCK_SIZE 4096U
#define ATTR_BLKSIZE 4096
#define NAME_MAX_BYTES 255
#ifndef streq
#define streq(a, b) (strcmp((a), (b)) == 0)
#endif
/* Dead mounts can stack (stat() of a dead mount may succeed from cached attributes, so a careless
 * restart can mount over one); they are peeled one at a time. */
#define MAX_STALE_MOUNTS 16

typedef struct RateLimit {
        _Atomic uint64_t last_usec;
        _Atomic uint64_t suppressed;
} RateLimit;

/* What a reader can be told (errno_for_reader's outputs), one log budget each. */
typedef enum ReaderErrorClass {
        READER_ERROR_ENOENT,
        READER_ERROR_EACCES,
        READER_ERROR_EISDIR,
        READER_ERROR_EROFS,
        READER_ERROR_EINVAL,
        READER_ERROR_ENFILE,
        READER_ERROR_EIO,
        _READER_ERROR_MAX,
} ReaderErrorClass;

typedef struct NodeHandle NodeHandle;

typedef struct FuseWorker {
        FuseFs *fs;
        pthread_t thread;
        int epoll_fd;           /* the session fd (EPOLLEXCLUSIVE) and the stop fd */
        /* CLOCK_MONOTONIC µs when the current request was taken, 0 while waiting for one. */
        _Atomic uint64_t busy_since_usec;
} FuseWorker;

struct FuseFs {
        struct fuse_session *se;
        char *mountpoint;
        TreeStore *trees;
        OriginSet *origins;
        Cache *cache;           /* NULL: reads go to the replicas directly */

        /* Seconds; changed by fusefs_set_timeouts() while workers read them. */
        _Atomic double entry_timeout, attr_timeout;
        uid_t uid;
        gid_t gid;

        int session_fd;
        int stop_fd;            /* eventfd, never drained: once written every worker sees it */
        int lost_fd;            /* eventfd, written once when the kernel connection goes */
        atomic_bool connection_lost;

        /* statfs f_blocks of the published tree, recomputed on every publish rather than per call. */
        _Atomic uint64_t total_blocks;

        /* The kernel lets us decline OPENDIR (FUSE_CAP_NO_OPENDIR_SUPPORT): it then stops sending
         * OPENDIR/RELEASEDIR and caches listings itself (FOPEN_CACHE_DIR|KEEP_CACHE by default). */
        atomic_bool no_opendir;

        unsigned read_ahead_kb;         /* applied once the workers run */
        unsigned n_threads;     /* requested */
        FuseWorker *workers;
        unsigned n_workers;     /* running */
        bool started;

        RateLimit reader_errors[_READER_ERROR_MAX];
        RateLimit receive_errors;

        FsSearch *search;       /* /.search/ (fs-search.h); NULL without a catalog */

        /* Open files and directories: fstat() of one a rescan removed must still answer (the
         * kernel's GETATTR for fstat() carries no handle), and a connection that ends without
         * RELEASEs must not leak them. */
        pthread_mutex_t handles_lock;
        NodeHandle *handles;
};

/* An open directory, and the head of an open file: getattr can answer from either, and FuseFs
 * lists every open one. The node's is_dir tells the kinds apart. */
/* An open directory (fh of OPENDIR, when the kernel still sends it) or file. */
struct NodeHandle {
        Tree *tree;
        const TreeNode *node;
        /* Files only, one of the two (cache_reader with a cache). Shared by concurrent reads of this
         * handle (async read, readahead): cache.h and replica.h allow it. */
        CacheReader *cache_reader;
        ReplicaReader *reader;
        NodeHandle *prev, *next;        /* FuseFs.handles */
};

static inline void fs_tree_unrefp(Tree **t) {
        tree_unref(*t);
}

/* True when this event may be logged; counts the ones that may not. */
static bool ratelimit_pass_every(RateLimit *rl, uint64_t interval_usec, uint64_t *ret_suppressed) {
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        uint64_t last = atomic_load_explicit(&rl->last_usec, memory_order_relaxed);

        if ((last == 0 || now - last >= interval_usec) &&
            atomic_compare_exchange_strong(&rl->last_usec, &last, now)) {
                *ret_suppressed = atomic_exchange(&rl->suppressed, 0);
                return true;
        }
        atomic_fetch_add_explicit(&rl->suppressed, 1, memory_order_relaxed);
        return false;
}

static bool ratelimit_pass(RateLimit *rl, uint64_t *ret_suppressed) {
        return ratelimit_pass_every(rl, READER_ERROR_LOG_INTERVAL_USEC, ret_suppressed);
}

/* D11: offline is every origin unhealthy (the manager's view in Origin.health). Only asked on a
 * failure, so the walk over the set costs nothing while reads succeed. */
static bool fs_offline(FuseFs *fs) {
        size_t n = 0;

        for (;; n++) {
                Origin *o = origin_set_at_ref(fs->origins, n);
                if (!o)
                        break;
                bool down = origin_get_health(o) == ORIGIN_UNHEALTHY;
                origin_unref(o);
                if (!down)
                        return false;
        }
        return n > 0;
}

/* The one table from an internal failure to what a reader sees (DESIGN.md "Errors"). Only errors
 * that mean something to the reader pass through; the daemon's own table being full becomes
 * ENFILE (system-wide), never EMFILE (which would blame the reader's process); every transport,
 * integrity or space problem behind us is plain EIO. */
static int errno_for_reader(int internal_error) {
        int e = internal_error < 0 ? -internal_error : internal_error;

        switch (e) {
        case ENOENT:
        case EACCES:
        case EISDIR:
        case EROFS:
        case EINVAL:
                return e;
        case EMFILE:
        case ENFILE:
                return ENFILE;
        case ETIMEDOUT:
        case EHOSTUNREACH:
        case ECONNRESET:
        case EBADMSG:
        case ENOSPC:
        default:
                return EIO;
        }
}

static ReaderErrorClass reader_error_class(int reader_errno) {
        switch (reader_errno) {
        case ENOENT: return READER_ERROR_ENOENT;
        case EACCES: return READER_ERROR_EACCES;
        case EISDIR: return READER_ERROR_EISDIR;
        case EROFS:  return READER_ERROR_EROFS;
        case EINVAL: return READER_ERROR_EINVAL;
        case ENFILE: return READER_ERROR_ENFILE;
        default:     return READER_ERROR_EIO;
        }
}

/* Maps, logs within the rate limit, and returns the errno to answer. offset < 0: an open. */
static int reader_failure(FuseFs *fs, const Tree *t, const TreeNode *n, int64_t offset, int internal_error) {
        int e = errno_for_reader(internal_error);
        uint64_t suppressed;
        char where[64] = "", since[96] = "";

        /* Offline, every uncached read fails: one summary line a minute rather than a flood. */
        bool offline = fs_offline(fs);
        if (!ratelimit_pass_every(&fs->reader_errors[reader_error_class(e)],
                                  offline ? READER_OFFLINE_LOG_INTERVAL_USEC : READER_ERROR_LOG_INTERVAL_USEC, &suppressed))
                return e;

        _cleanup_free_ char *path = n ? tree_node_path(t, n) : NULL;
        if (offset >= 0)
                snprintf(where, sizeof where, " at offset %" PRIi64, offset);
        if (offline)
                snprintf(since, sizeof since, " (offline: %" PRIu64 " more failed since the last message; "
                         "summarised once a minute)", suppressed);
        else if (suppressed > 0)
                snprintf(since, sizeof since, " (and %" PRIu64 " more like it since the last message)", suppressed);

        if (e == ENFILE)
                log_warning_errno(internal_error,
                                  "Out of file descriptors, cannot %s /%s: %m; readers get ENFILE (raise "
                                  "LimitNOFILE=)%s", offset >= 0 ? "read" : "open", strna(path), since);
        else
                log_warning_errno(internal_error, "Failed to %s /%s%s: %m; readers get %s%s",
                                  offset >= 0 ? "read" : "open", strna(path), where, strerrorname_np(e), since);
        return e;
}

static uint64_t node_blocks(const TreeNode *n) {
        if (!n->is_dir)
                return (n->size + STATFS_BLOCK_SIZE - 1) / STATFS_BLOCK_SIZE;

        uint64_t sum = 0;
        for (size_t i = 0; i < n->n_children; i++)
                sum += node_blocks(n->children[i]);
        return sum;
}

static uint64_t tree_total_blocks(const Tree *t) {
        const TreeNode *root = t ? tree_get(t, TREE_ROOT_INO) : NULL;
        return root ? node_blocks(root) : 0;
}

static void node_to_stat(const FuseFs *fs, const TreeNode *n, struct stat *st) {
        *st = (struct stat) {
                .st_ino = n->ino,
                .st_uid = fs->uid,
                .st_gid = fs->gid,
                .st_blksize = ATTR_BLKSIZE,
        };

        if (n->is_dir) {
                nlink_t subdirs = 0;
                for (size_t i = 0; i < n->n_children; i++)
                        subdirs += n->children[i]->is_dir;
                st->st_mode = S_IFDIR | 0555;
                st->st_nlink = 2 + subdirs;
        } else {
                st->st_mode = S_IFREG | 0444;
                st->st_nlink = 1;
                st->st_size = (off_t) n->size;
                st->st_blocks = (blkcnt_t) ((n->size + 511) / 512);
        }

        int64_t ns = n->mtime_ns;
        struct timespec ts = {
                .tv_sec = ns / NSEC_PER_SEC,
                .tv_nsec = ns % NSEC_PER_SEC,
        };
        if (ts.tv_nsec < 0) {
                ts.tv_sec--;
                ts.tv_nsec += NSEC_PER_SEC;
        }
        st->st_atim = st->st_mtim = st->st_ctim = ts;
}

static void node_to_entry(const FuseFs *fs, const TreeNode *n, struct fuse_entry_param *e) {
        *e = (struct fuse_entry_param) {
                .ino = n->ino,
                .attr_timeout = atomic_load_explicit(&fs->attr_timeout, memory_order_relaxed),
                .entry_timeout = atomic_load_explicit(&fs->entry_timeout, memory_order_relaxed),
        };
        node_to_stat(fs, n, &e->attr);
}

static const TreeNode *lookup_child(const Tree *t, fuse_ino_t parent, const char *name) {
        const TreeNode *p = tree_get(t, parent);
        if (!p || !p->is_dir)
                return NULL;
        if (streq(name, "."))
                return p;
        if (streq(name, ".."))
                return tree_get(t, p->parent);
        return tree_lookup(t, parent, name);
}

/* ---- FUSE operations ---------------------------------------------------------------------- */

static void fs_init(void *userdata, struct fuse_conn_info *conn) {
        FuseFs *fs = userdata;

        if (conn->capable & FUSE_CAP_ASYNC_READ)
                conn->want |= FUSE_CAP_ASYNC_READ;
        if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
                conn->want |= FUSE_CAP_CACHE_SYMLINKS;
        /* Two round trips less per directory walked: `ls -lR` of 100k tracks spends more time in
         * OPENDIR/RELEASEDIR than in READDIRPLUS. */
        if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT)
                atomic_store(&fs->no_opendir, true);
        /* Read-only: nothing to write back, and changes are pushed with notify_inval_*, so the
         * kernel need not re-check attributes before using cached pages (that costs a getattr per
         * read once the attr timeout lapses). */
        conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_AUTO_INVAL_DATA);
        /* max_readahead stays at what the kernel offered (its bdi read_ahead_kb): it accepts only
         * less, and less would only cost throughput. */

        log_debug("FUSE connection to %s up: protocol %u.%u, max_readahead %u, max_write %u",
                  fs->mountpoint, conn->proto_major, conn->proto_minor, conn->max_readahead, conn->max_write);
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
        FuseFs *fs = fuse_req_userdata(req);

        int r = FAILPOINT(FUSE_LOOKUP);
        if (r < 0) {
                fuse_reply_err(req, -r);
                return;
        }

        if (fs->search && fs_search_ino(parent)) {
                fs_search_lookup(fs->search, req, parent, name);
                return;
        }
        if (fs->search && parent == TREE_ROOT_INO && streq(name, FS_SEARCH_DIR_NAME)) {
                fs_search_root_entry(fs->search, req);
                return;
        }

        _cleanup_(fs_tree_unrefp) Tree *t = tree_store_get(fs->trees);
        const TreeNode *n = t ? lookup_child(t, parent, name) : NULL;
        if (!n) {
                /* No negative entry with a timeout: additions are not pushed per name, so a
                 * cached miss would hide a file that a rescan adds. */
                fuse_reply_err(req, ENOENT);
                return;
        }

        struct fuse_entry_param e;
        node_to_entry(fs, n, &e);
        fuse_reply_entry(req, &e);
}

/* Inodes are catalog ids held by the Tree; the kernel's lookup counts need no bookkeeping, except
 * for /.search/'s, whose result sets live while the kernel holds them. */
static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
        FuseFs *fs = fuse_req_userdata(req);

        if (fs->search && fs_search_ino(ino))
                fs_search_forget(fs->search, ino, nlookup);
        fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
        FuseFs *fs = fuse_req_userdata(req);

        for (size_t i = 0; fs->search && i < count; i++)
                if (fs_search_ino(forgets[i].ino))
                        fs_search_forget(fs->search, forgets[i].ino, forgets[i].nlookup);
        fuse_reply_none(req);
}

static void handles_add(FuseFs *fs, NodeHandle *h) {
        pthread_mutex_lock(&fs->handles_lock);
        h->prev = NULL;
        h->next = fs->handles;
        if (h->next)
                h->next->prev = h;
        fs->handles = h;
        pthread_mutex_unlock(&fs->handles_lock);
}

static void handles_remove(FuseFs *fs, NodeHandle *h) {
        pthread_mutex_lock(&fs->handles_lock);
        if (h->prev)
                h->prev->next = h->next;
        else
                fs->handles = h->next;
        if (h->next)
                h->next->prev = h->prev;
        h->prev = h->next = NULL;
        pthread_mutex_unlock(&fs->handles_lock);
}

static void handle_free(NodeHandle *h) {
        if (!h)
                return;
        /* Before the tree: a cache reader uses the node until it is closed. */
        cache_reader_close(h->cache_reader);
        if (h->reader)
                replica_reader_close(h->reader);
        tree_unref(h->tree);
        free(h);
}

/* An inode gone from the published tree may still be open: answer from the snapshot it was
 * opened in. Only reached on a miss, which is rare, so a walk of the open handles is fine. */
static bool open_handle_stat(FuseFs *fs, fuse_ino_t ino, struct stat *st) {
        bool found = false;

        pthread_mutex_lock(&fs->handles_lock);
        for (NodeHandle *h = fs->handles; h; h = h->next)
                if (h->node->ino == ino) {
                        node_to_stat(fs, h->node, st);
                        found = true;
                        break;
                }
        pthread_mutex_unlock(&fs->handles_lock);
        return found;
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        FuseFs *fs = fuse_req_userdata(req);
        struct stat st;

        if (fs->search && fs_search_ino(ino)) {
                fs_search_getattr(fs->search, req, ino);
                return;
        }

        /* The published tree first: the kernel's inode is shared by every opener and should
         * carry the current size. Only an inode that has left the tree is answered from the
         * snapshot it is still open in, through the handle the kernel sent (the read path) or
         * the list (fstat() sends none). */
        _cleanup_(fs_tree_unrefp) Tree *t = tree_store_get(fs->trees);
        const TreeNode *n = t ? tree_get(t, ino) : NULL;
        const NodeHandle *h = fi && fi->fh ? (const NodeHandle *) (uintptr_t) fi->fh : NULL;
        if (n)
                node_to_stat(fs, n, &st);
        else if (h && h->node->ino == ino)
                node_to_stat(fs, h->node, &st);
        else if (!open_handle_stat(fs, ino, &st)) {
                fuse_reply_err(req, ENOENT);
                return;
        }

        fuse_reply_attr(req, &st, atomic_load_explicit(&fs->attr_timeout, memory_order_relaxed));
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        FuseFs *fs = fuse_req_userdata(req);

        if (atomic_load(&fs->no_opendir)) {
                /* ENOSYS once, and the kernel never asks again (see no_opendir). */
                fuse_reply_err(req, ENOSYS);
                return;
        }
        if (fs->search && fs_search_ino(ino)) {
                fs_search_opendir(fs->search, req, ino, fi);
                return;
        }

        _cleanup_(fs_tree_unrefp) Tree *t = tree_store_get(fs->trees);
        const TreeNode *n = t ? tree_get(t, ino) : NULL;
        if (!n) {
                fuse_reply_err(req, ENOENT);
                return;
        }
        if (!n->is_dir) {
                fuse_reply_err(req, ENOTDIR);
                return;
        }

        NodeHandle *h = calloc(1, sizeof *h);
        if (!h) {
                fuse_reply_err(req, ENOMEM);
                return;
        }
        h->tree = TAKE_PTR(t);
        h->node = n;

        fi->fh = (uintptr_t) h;
        /* Listings only change with a new tree, and fusefs_tree_changed() invalidates them. */
        fi->cache_readdir = 1;
        fi->keep_cache = 1;
        handles_add(fs, h);
        if (fuse_reply_open(req, fi) == -ENOENT) {
                /* The opener was interrupted: no releasedir will follow. */
                handles_remove(fs, h);
                handle_free(h);
        }
}

/* Cookies: entry i of [".", "..", children...] carries offset i + 1, the index to resume at, so
 * any page of a 10,000-entry directory is found without a scan. */
static void fs_do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi, bool plus) {
        FuseFs *fs = fuse_req_userdata(req);
        const NodeHandle *h = (const NodeHandle *) (uintptr_t) fi->fh;
        _cleanup_(fs_tree_unrefp) Tree *current = NULL;
        const Tree *tree;
        const TreeNode *dir;

        if (fs->search && fs_search_ino(ino)) {
                fs_search_readdir(fs->search, req, ino, size, off, plus);
                return;
        }
        if (h) {
                tree = h->tree;
                dir = h->node;
        } else {
                /* No OPENDIR (no_opendir): list the published tree. A new tree invalidates the
                 * directory in the kernel, which then lists it afresh from offset 0. */
                tree = current = tree_store_get(fs->trees);
                dir = current ? tree_get(current, ino) : NULL;
                if (!dir || !dir->is_dir) {
                        fuse_reply_err(req, dir ? ENOTDIR : ENOENT);
                        return;
                }
        }

        int r = FAILPOINT(FUSE_READDIR);
        if (r < 0) {
                fuse_reply_err(req, -r);
                return;
        }

        size_t n_entries = dir->n_children + 2;
        if (off < 0 || (uint64_t) off >= n_entries || size == 0) {
                fuse_reply_buf(req, NULL, 0);
                return;
        }

        _cleanup_free_ char *buf = malloc(size);
        if (!buf) {
                fuse_reply_err(req, ENOMEM);
                return;
        }

        size_t used = 0;
        for (size_t i = (size_t) off; i < n_entries; i++) {
                const TreeNode *n;
                const char *name;

                if (i == 0) {
                        n = dir;
                        name = ".";
                } else if (i == 1) {
                        n = tree_get(tree, dir->parent);
                        if (!n)
                                n = dir;
                        name = "..";
                } else {
                        n = dir->children[i - 2];
                        name = n->name;
                }

                size_t entsize;
                if (plus) {
                        struct fuse_entry_param e;
                        node_to_entry(fs, n, &e);
                        entsize = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t) (i + 1));
                } else {
                        struct stat st = {
                                .st_ino = n->ino,
                                .st_mode = n->is_dir ? S_IFDIR : S_IFREG,
                        };
                        entsize = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t) (i + 1));
                }
                if (entsize > size - used)
                        break;
                used += entsize;
        }

        fuse_reply_buf(req, buf, used);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
        fs_do_readdir(req, ino, size, off, fi, false);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
        fs_do_readdir(req, ino, size, off, fi, true);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        FuseFs *fs = fuse_req_userdata(req);
        NodeHandle *h = (NodeHandle *) (uintptr_t) fi->fh;

        if (h) {
                handles_remove(fs, h);
                handle_free(h);
        }
        fuse_reply_err(req, 0);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        FuseFs *fs = fuse_req_userdata(req);

        if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_APPEND))) {
                fuse_reply_err(req, EROFS);
                return;
        }

        _cleanup_(fs_tree_unrefp) Tree *t = tree_store_get(fs->trees);
        const TreeNode *n = t ? tree_get(t, ino) : NULL;
        if (!n) {
                fuse_reply_err(req, ENOENT);
                return;
        }
        if (n->is_dir) {
                fuse_reply_err(req, EISDIR);
                return;
        }

        NodeHandle *h = calloc(1, sizeof *h);
        if (!h) {
                fuse_reply_err(req, ENOMEM);
                return;
        }
        h->node = n;

        int r = fs->cache ? cache_reader_open(fs->cache, t, n, &h->cache_reader)
                          : replica_reader_open(fs->origins, n, &h->reader);
        if (r < 0) {
                int e = reader_failure(fs, t, n, -1, r);
                h->reader = NULL;
                h->cache_reader = NULL;
                handle_free(h);
                fuse_reply_err(req, e);
                return;
        }
        h->tree = TAKE_PTR(t);

        fi->fh = (uintptr_t) h;
        /* Bytes of a given inode only change with a new tree, which invalidates them. */
        fi->keep_cache = 1;
        fi->noflush = 1;
        handles_add(fs, h);
        if (fuse_reply_open(req, fi) == -ENOENT) {
                handles_remove(fs, h);
                handle_free(h);
        }
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
        FuseFs *fs = fuse_req_userdata(req);
        NodeHandle *h = (NodeHandle *) (uintptr_t) fi->fh;

        int r = FAILPOINT(FUSE_READ);
        if (r < 0) {
                fuse_reply_err(req, -r);
                return;
        }

        /* Reads serve the version of the file this handle was opened on; past its size is EOF. */
        uint64_t file_size = h->node->size;
        if (off < 0 || (uint64_t) off >= file_size || size == 0) {
                fuse_reply_buf(req, NULL, 0);
                return;
        }
        if (size > file_size - (uint64_t) off)
                size = (size_t) (file_size - (uint64_t) off);

        _cleanup_free_ void *buf = malloc(size);
        if (!buf) {
                fuse_reply_err(req, ENOMEM);
                return;
        }

        ssize_t n = h->cache_reader ? cache_reader_read(h->cache_reader, buf, size, (uint64_t) off)
                                    : replica_reader_read(h->reader, buf, size, (uint64_t) off);
        if (n < 0) {
                fuse_reply_err(req, reader_failure(fs, h->tree, h->node, (int64_t) off, (int) n));
                return;
        }

        fuse_reply_buf(req, buf, (size_t) n);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        fuse_reply_err(req, 0);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
        fuse_reply_err(req, 0);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino) {
        FuseFs *fs = fuse_req_userdata(req);

        _cleanup_(fs_tree_unrefp) Tree *t = tree_store_get(fs->trees);
        struct statvfs st = {
                .f_bsize = STATFS_BLOCK_SIZE,
                .f_frsize = STATFS_BLOCK_SIZE,
                .f_blocks = atomic_load(&fs->total_blocks),
                .f_files = t ? tree_node_count(t) : 0,
                .f_namemax = NAME_MAX_BYTES,
                .f_flag = ST_RDONLY | ST_NOSUID | ST_NODEV,
        };
        fuse_reply_statfs(req, &st);
}

/* Tags are not exposed as xattrs (yet). GETXATTR is left unimplemented on purpose: the kernel
 * remembers ENOSYS and answers EOPNOTSUPP itself from then on, where ENODATA would cost a round trip
 * for every security.selinux / system.posix_acl_access probe (two per file in `ls -l`). LISTXATTR
 * answers an empty list, so tools that copy xattrs find none and carry on quietly. */
static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
        if (size == 0)
                fuse_reply_xattr(req, 0);
        else
                fuse_reply_buf(req, NULL, 0);
}

static void fs_access(fuse_req_t req, fuse_ino_t ino, int mask) {
        FuseFs *fs = fuse_req_userdata(req);

        if (fs->search && fs_search_ino(ino)) {
                fs_search_access(fs->search, req, ino, mask);
                return;
        }

        _cleanup_(fs_tree_unrefp) Tree *t = tree_store_get(fs->trees);
        const TreeNode *n = t ? tree_get(t, ino) : NULL;
        if (!n)
                fuse_reply_err(req, ENOENT);
        else if (mask & W_OK)
                fuse_reply_err(req, EROFS);
        else if ((mask & X_OK) && !n->is_dir)
                fuse_reply_err(req, EACCES);
        else
                fuse_reply_err(req, 0);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino) {
        FuseFs *fs = fuse_req_userdata(req);

        if (fs->search && fs_search_ino(ino))
                fs_search_readlink(fs->search, req, ino);
        else
                fuse_reply_err(req, EINVAL);    /* the tree has no symlinks; /.search/ has */
}

/* D1: the namespace is read-only. */
static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
        fuse_reply_err(req, EROFS);
}

static void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
        fuse_reply_err(req, EROFS);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
        fuse_reply_err(req, EROFS);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
        fuse_reply_err(req, EROFS);
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
        fuse_reply_err(req, EROFS);
}

static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
        fuse_reply_err(req, EROFS);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned flags) {
        fuse_reply_err(req, EROFS);
}

static void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
        fuse_reply_err(req, EROFS);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
        fuse_reply_err(req, EROFS);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
        fuse_reply_err(req, EROFS);
}

static void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi) {
        fuse_reply_err(req, EROFS);
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
        fuse_reply_err(req, EROFS);
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
        fuse_reply_err(req, EROFS);
}

static void fs_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
                               fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len,
                               int flags) {
        fuse_reply_err(req, EROFS);
}

static const struct fuse_lowlevel_ops fs_ops = {
        .init = fs_init,
        .lookup = fs_lookup,
        .forget = fs_forget,
        .forget_multi = fs_forget_multi,
        .getattr = fs_getattr,
        .setattr = fs_setattr,
        .readlink = fs_readlink,
        .mknod = fs_mknod,
        .mkdir = fs_mkdir,
        .unlink = fs_unlink,
        .rmdir = fs_rmdir,
        .symlink = fs_symlink,
        .rename = fs_rename,
        .link = fs_link,
        .open = fs_open,
        .read = fs_read,
        .write = fs_write,
        .flush = fs_flush,
        .release = fs_release,
        .fsync = fs_fsync,
        .opendir = fs_opendir,
        .readdir = fs_readdir,
        .readdirplus = fs_readdirplus,
        .releasedir = fs_release,
        .fsyncdir = fs_fsync,
        .statfs = fs_statfs,
        .setxattr = fs_setxattr,
        .listxattr = fs_listxattr,
        .removexattr = fs_removexattr,
        .access = fs_access,
        .create = fs_create,
        .fallocate = fs_fallocate,
        .copy_file_range = fs_copy_file_range,
};

/* ---- workers ------------------------------------------------------------------------------ */

static void mark_connection_lost(FuseFs *fs) {
        if (atomic_exchange(&fs->connection_lost, true))
                return;

        log_warning("FUSE connection of %s is gone (unmounted from outside or aborted).", fs->mountpoint);
        uint64_t one = 1;
        if (write(fs->lost_fd, &one, sizeof one) < 0)
                log_error_errno(errno, "Failed to signal the lost FUSE connection: %m");
}

static void *worker_main(void *userdata) {
        FuseWorker *w = userdata;
        FuseFs *fs = w->fs;
        struct fuse_buf buf = {};
        thread_set_name("mfs-fuse");

        for (;;) {
                struct epoll_event ev[2];
                int n = epoll_wait(w->epoll_fd, ev, ELEMENTSOF(ev), -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error_errno(errno, "FUSE worker cannot wait for requests: %m");
                        break;
                }
                bool stop = false, request = false;
                for (int i = 0; i < n; i++) {
                        if (ev[i].data.fd == fs->stop_fd)
                                stop = true;
                        else
                                request = true;
                }
                if (stop)
                        break;
                if (!request)
                        continue;

                /* Another worker may still have taken it first (-EAGAIN). EPOLLERR (connection
                 * gone) also lands here, and the read then reports it. */
                int r = fuse_session_receive_buf(fs->se, &buf);
                if (r == -EAGAIN || r == -EINTR)
                        continue;
                if (r == 0 || r == -ENODEV) {
                        mark_connection_lost(fs);
                        break;
                }
                if (r < 0) {
                        uint64_t suppressed;
                        if (ratelimit_pass(&fs->receive_errors, &suppressed))
                                log_warning_errno(r, "Failed to read a FUSE request: %m (%" PRIu64 " more not logged)",
                                                  suppressed);
                        continue;
                }

                atomic_store(&w->busy_since_usec, now_usec(CLOCK_MONOTONIC));
                fuse_session_process_buf(fs->se, &buf);
                atomic_store(&w->busy_since_usec, 0);
        }

        free(buf.mem);
        return NULL;
}

static void stop_workers(FuseFs *fs) {
        uint64_t one = 1;

        if (fs->n_workers == 0)
                return;
        if (write(fs->stop_fd, &one, sizeof one) < 0)
                log_error_errno(errno, "Failed to tell FUSE workers to stop: %m");
        for (unsigned i = 0; i < fs->n_workers; i++) {
                pthread_join(fs->workers[i].thread, NULL);
                safe_close(fs->workers[i].epoll_fd);
        }
        fs->n_workers = 0;
}

/* The worker's own epoll set: EPOLLEXCLUSIVE on the session fd (the kernel wakes one of the
 * exclusive waiters per request), the stop fd shared by all (a stop wakes every worker). */
static int worker_epoll_new(FuseFs *fs) {
        int efd = epoll_create1(EPOLL_CLOEXEC);
        if (efd < 0)
                return -errno;
        struct epoll_event session = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = fs->session_fd };
        struct epoll_event stop = { .events = EPOLLIN, .data.fd = fs->stop_fd };
        if (epoll_ctl(efd, EPOLL_CTL_ADD, fs->session_fd, &session) < 0 ||
            epoll_ctl(efd, EPOLL_CTL_ADD, fs->stop_fd, &stop) < 0) {
                int r = -errno;
                safe_close(efd);
                return r;
        }
        return efd;
}

int fusefs_start(FuseFs *fs) {
        sigset_t all, saved;
        int r = 0;

        if (!fs)
                return -EINVAL;
        if (fs->started)
                return -EALREADY;

        fs->workers = calloc(fs->n_threads, sizeof *fs->workers);
        if (!fs->workers)
                return log_error_errno(-ENOMEM, "Failed to allocate FUSE workers: %m");

        /* Signals belong to the event loop's thread (sd-event needs them blocked everywhere else);
         * the workers inherit this mask. */
        sigfillset_except_crash(&all);
        pthread_sigmask(SIG_BLOCK, &all, &saved);
        for (unsigned i = 0; i < fs->n_threads; i++) {
                FuseWorker *w = &fs->workers[fs->n_workers];
                w->fs = fs;
                w->epoll_fd = r = worker_epoll_new(fs);
                if (r < 0)
                        break;
                r = -pthread_create(&w->thread, NULL, worker_main, w);
                if (r < 0) {
                        w->epoll_fd = safe_close(w->epoll_fd);
                        break;
                }
                fs->n_workers++;
        }
        pthread_sigmask(SIG_SETMASK, &saved, NULL);

        if (fs->n_workers == 0)
                return log_error_errno(r, "Failed to start any FUSE worker thread: %m");
        if (r < 0)
                log_warning_errno(r, "Started only %u of %u FUSE worker threads: %m", fs->n_workers, fs->n_threads);

        fs->started = true;
        log_debug("Serving %s with %u worker threads.", fs->mountpoint, fs->n_workers);
        (void) fusefs_set_read_ahead(fs, fs->read_ahead_kb);
        return 0;
}

int fusefs_set_read_ahead(FuseFs *fs, unsigned kb) {
        char path[64], value[16];
        struct stat st;

        if (!fs)
                return -EINVAL;
        fs->read_ahead_kb = kb;
        if (kb == 0 || !fs->started)
                return 0;
        /* A FUSE mount's bdi is named after its anonymous device; the root's getattr is answered by
         * the workers, which run by now. */
        if (stat(fs->mountpoint, &st) < 0)
                return log_warning_errno(-errno, "Cannot find the device of %s to set its read-ahead, keeping the "
                                         "kernel's: %m", fs->mountpoint);
        snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev), minor(st.st_dev));
        int n = snprintf(value, sizeof value, "%u\n", kb);

        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, value, (size_t) n) != n)
                return log_warning_errno(-errno, "Cannot set the read-ahead of %s to %u KiB (%s), keeping the kernel's: %m",
                                         fs->mountpoint, kb, path);
        log_debug("Read-ahead of %s set to %u KiB", fs->mountpoint, kb);
        return 0;
}

void fusefs_set_timeouts(FuseFs *fs, double entry_timeout, double attr_timeout) {
        if (!fs)
                return;
        /* Negative or NaN would be refused by nobody and mean nothing: treat as "do not cache". */
        atomic_store_explicit(&fs->entry_timeout, entry_timeout > 0 ? entry_timeout : 0, memory_order_relaxed);
        atomic_store_explicit(&fs->attr_timeout, attr_timeout > 0 ? attr_timeout : 0, memory_order_relaxed);
}

bool fusefs_alive(FuseFs *fs, uint64_t max_busy_usec) {
        if (!fs || fs->n_workers == 0)
                return true;

        uint64_t now = now_usec(CLOCK_MONOTONIC);
        for (unsigned i = 0; i < fs->n_workers; i++) {
                uint64_t since = atomic_load(&fs->workers[i].busy_since_usec);
                if (since == 0 || now - since <= max_busy_usec)
                        return true;
        }
        return false;
}

bool fusefs_connection_lost(FuseFs *fs) {
        return fs && atomic_load(&fs->connection_lost);
}

int fusefs_event_fd(FuseFs *fs) {
        return fs ? fs->lost_fd : -EINVAL;
}

/* ---- kernel cache invalidation -------------------------------------------------------------- */

typedef struct InvalContext {
        FuseFs *fs;
        const Tree *old, *new;
        unsigned entries, inodes, failures;
} InvalContext;

static void inval_result(InvalContext *c, int r, const char *what, uint64_t ino, const char *name) {
        /* -ENOENT: the kernel has nothing cached for it, which is the common case. -ENOTCONN: no
         * INIT yet, -ENODEV: connection gone; in both cases there is no cache to clear. */
        if (r >= 0 || r == -ENOENT || r == -ENOTCONN || r == -ENODEV)
                return;
        c->failures++;
        log_debug_errno(r, "Failed to invalidate %s %" PRIu64 "%s%s: %m", what, ino, name ? "/" : "", strempty(name));
}

static void inval_entry(uint64_t parent_ino, const char *name, void *userdata) {
        InvalContext *c = userdata;
        int r = fuse_lowlevel_notify_inval_entry(c->fs->se, parent_ino, name, strlen(name));
        inval_result(c, r, "entry", parent_ino, name);
        c->entries++;

        /* A file that changed in place keeps its inode; its cached pages and size are stale. One
         * that left the tree keeps its cache for whoever still has it open. */
        const TreeNode *old = tree_lookup(c->old, parent_ino, name);
        const TreeNode *now = old && !old->is_dir ? tree_get(c->new, old->ino) : NULL;
        if (now && !now->is_dir) {
                r = fuse_lowlevel_notify_inval_inode(c->fs->se, old->ino, 0, 0);
                inval_result(c, r, "inode", old->ino, NULL);
        }
}

static void inval_inode(uint64_t ino, void *userdata) {
        InvalContext *c = userdata;
        int r = fuse_lowlevel_notify_inval_inode(c->fs->se, ino, 0, 0);
        inval_result(c, r, "inode", ino, NULL);
        c->inodes++;
}

void fusefs_tree_changed(FuseFs *fs, const Tree *old, const Tree *new) {
        if (!fs || !new)
                return;

        atomic_store(&fs->total_blocks, tree_total_blocks(new));
        if (!old || atomic_load(&fs->connection_lost))
                return;

        InvalContext c = { .fs = fs, .old = old, .new = new };
        tree_diff(old, new, inval_entry, inval_inode, &c);
        log_debug("Tree changed: invalidated %u entries and %u directories in the kernel (%u failures).",
                  c.entries, c.inodes, c.failures);
}

/* ---- mount and unmount -------------------------------------------------------------------- */

static int check_mountpoint(const char *path) {
        struct stat st;

        if (!path || path[0] != '/')
                return log_error_errno(-EINVAL, "Mountpoint %s is not an absolute path.", strna(path));
        if (stat(path, &st) < 0) {
                int r = -errno;
                if (r == -ENOENT)
                        return log_error_errno(r, "Mountpoint %s does not exist.", path);
                if (r == -ENOTCONN)
                        return log_error_errno(r, "Mountpoint %s is a stale FUSE mount (%m); it must be "
                                               "unmounted first.", path);
                return log_error_errno(r, "Cannot stat mountpoint %s: %m", path);
        }
        if (!S_ISDIR(st.st_mode))
                return log_error_errno(-ENOTDIR, "Mountpoint %s is not a directory.", path);

        DIR *d = opendir(path);
        if (!d) {
                int r = -errno;
                if (r == -ENOTCONN)
                        return log_error_errno(r, "Mountpoint %s is a stale FUSE mount (%m); it must be "
                                               "unmounted first.", path);
                return log_error_errno(r, "Cannot list mountpoint %s: %m", path);
        }
        bool empty = true;
        struct dirent *de;
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, "..")) {
                        empty = false;
                        break;
                }
        closedir(d);
        if (!empty)
                return log_error_errno(-ENOTEMPTY, "Mountpoint %s is not empty.", path);
        return 0;
}

static void fusefs_free(FuseFs *fs) {
        if (!fs)
                return;
        if (fs->se)
                fuse_session_destroy(fs->se);
        if (fs->stop_fd >= 0)
                close(fs->stop_fd);
        if (fs->lost_fd >= 0)
                close(fs->lost_fd);
        /* Handles the kernel never released: files still open when we unmounted, or a connection
         * that was aborted. */
        while (fs->handles) {
                NodeHandle *h = fs->handles;
                handles_remove(fs, h);
                handle_free(h);
        }
        pthread_mutex_destroy(&fs->handles_lock);
        fs_search_free(fs->search);
        free(fs->workers);
        free(fs->mountpoint);
        free(fs);
}

DEFINE_TRIVIAL_CLEANUP_FUNC(FuseFs *, fusefs_free);

int fusefs_mount(const FuseFsOptions *opts, TreeStore *trees, OriginSet *origins, FuseFs **ret) {
        int r;

        if (!opts || !trees || !origins || !ret)
                return -EINVAL;

        r = check_mountpoint(opts->mountpoint);
        if (r < 0)
                return r;

        _cleanup_(fusefs_freep) FuseFs *fs = calloc(1, sizeof *fs);
        if (!fs)
                return log_error_errno(-ENOMEM, "Failed to allocate the filesystem: %m");
        fs->stop_fd = fs->lost_fd = fs->session_fd = -1;
        pthread_mutex_init(&fs->handles_lock, NULL);
        fs->trees = trees;
        fs->origins = origins;
        fs->cache = opts->cache;
        fusefs_set_timeouts(fs, opts->entry_timeout, opts->attr_timeout);
        fs->uid = getuid();
        fs->gid = getgid();
        if (opts->catalog) {
                r = fs_search_new(opts->catalog, trees, fs->uid, fs->gid, &fs->search);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up /%s: %m", FS_SEARCH_DIR_NAME);
        }
        fs->read_ahead_kb = opts->read_ahead_kb;
        fs->n_threads = opts->threads == 0 ? DEFAULT_THREADS : opts->threads;
        if (fs->n_threads > MAX_THREADS)
                fs->n_threads = MAX_THREADS;

        fs->mountpoint = strdup(opts->mountpoint);
        if (!fs->mountpoint)
                return log_error_errno(-ENOMEM, "Failed to allocate the filesystem: %m");

        fs->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        fs->lost_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fs->stop_fd < 0 || fs->lost_fd < 0)
                return log_error_errno(errno, "Failed to create eventfds: %m");

        Tree *t = tree_store_get(trees);
        atomic_store(&fs->total_blocks, tree_total_blocks(t));
        tree_unref(t);

        bool allow_other = opts->allow_other;
        if (allow_other && geteuid() != 0) {
                log_notice("allow_other needs root; mounting %s for this user only.", opts->mountpoint);
                allow_other = false;
        }
        /* No auto_unmount: it needs fusermount3 and a helper pipe; as root we unmount ourselves,
         * a crash is cleaned by fusefs_cleanup_stale_mount() at the next start (and the unit). */
        char mount_opts[256];
        snprintf(mount_opts, sizeof mount_opts, "fsname=musicfs,subtype=musicfs,ro,default_permissions%s%s",
                 allow_other ? ",allow_other" : "", opts->debug ? ",debug" : "");
        char *argv[] = { (char *) "musicfsd", (char *) "-o", mount_opts, NULL };
        struct fuse_args args = FUSE_ARGS_INIT(3, argv);

        fs->se = fuse_session_new(&args, &fs_ops, sizeof fs_ops, fs);
        fuse_opt_free_args(&args);
        if (!fs->se)
                return log_error_errno(-EINVAL, "Failed to create the FUSE session for %s (options: %s).",
                                       opts->mountpoint, mount_opts);

        if (fuse_session_mount(fs->se, opts->mountpoint) != 0)
                return log_error_errno(-EIO, "Failed to mount FUSE at %s (is /dev/fuse usable?).", opts->mountpoint);

        fs->session_fd = fuse_session_fd(fs->se);
        int flags = fcntl(fs->session_fd, F_GETFL);
        if (flags < 0 || fcntl(fs->session_fd, F_SETFL, flags | O_NONBLOCK) < 0) {
                r = log_error_errno(errno, "Failed to make the FUSE fd non-blocking: %m");
                fuse_session_unmount(fs->se);
                return r;
        }

        log_info("Mounted musicfs at %s.", opts->mountpoint);
        *ret = TAKE_PTR(fs);
        return 0;
}

void fusefs_stop(FuseFs *fs) {
        if (!fs)
                return;

        stop_workers(fs);
        fs->started = false;

        /* Lazy unmount as root: open files elsewhere cannot keep us from exiting. */
        fuse_session_unmount(fs->se);
        /* After an abort the mount stays behind answering ENOTCONN and libfuse skips the
         * unmount when it sees the dead fd; clear it so the path is usable again. */
        if (atomic_load(&fs->connection_lost))
                (void) fusefs_cleanup_stale_mount(fs->mountpoint);

        log_info("Unmounted %s.", fs->mountpoint);
        fusefs_free(fs);
}

/* ---- stale mounts ------------------------------------------------------------------------- */

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape_octal(char *s) {
        char *w = s;
        for (char *p = s; *p; ) {
                if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' &&
                    p[3] <= '7') {
                        *w++ = (char) ((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
                        p += 4;
                } else
                        *w++ = *p++;
        }
        *w = '\0';
}

static bool fstype_is_fuse(const char *fstype) {
        return streq(fstype, "fuse") || strncmp(fstype, "fuse.", 5) == 0;
}

/* The topmost FUSE mount at path, if any: 1 and its fstype, or 0. */
static int find_fuse_mount(const char *path, char **ret_fstype) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
        if (!f)
                return log_error_errno(errno, "Failed to open /proc/self/mountinfo: %m");

        _cleanup_free_ char *line = NULL, *found = NULL;
        size_t size = 0;
        while (getline(&line, &size, f) >= 0) {
                /* id parent major:minor root mountpoint options [optional...] - fstype source super */
                char *save = NULL, *mnt = NULL, *fstype = NULL;
                unsigned field = 0;
                bool after_dash = false;

                for (char *tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save), field++) {
                        if (field == 4)
                                mnt = tok;
                        else if (field > 5 && !after_dash && streq(tok, "-"))
                                after_dash = true;
                        else if (after_dash) {
                                fstype = tok;
                                break;
                        }
                }
                if (!mnt || !fstype || !fstype_is_fuse(fstype))
                        continue;
                unescape_octal(mnt);
                if (!streq(mnt, path))
                        continue;

                free(found);
                found = strdup(fstype);
                if (!found)
                        return -ENOMEM;
        }

        if (!found)
                return 0;
        *ret_fstype = TAKE_PTR(found);
        return 1;
}

/* mountinfo shows canonical paths; resolve the parent (the last component may be the dead mount,
 * which cannot be resolved) and strip trailing slashes. */
static int canonical_mountpoint(const char *path, char **ret) {
        _cleanup_free_ char *copy = strdup(path);
        if (!copy)
                return -ENOMEM;

        size_t len = strlen(copy);
        while (len > 1 && copy[len - 1] == '/')
                copy[--len] = '\0';

        char *slash = strrchr(copy, '/');
        const char *base = slash + 1;
        if (*base == '\0' || streq(base, ".") || streq(base, "..")) {
                char *real = realpath(copy, NULL);
                if (!real)
                        return -errno;
                *ret = real;
                return 0;
        }

        *slash = '\0';
        _cleanup_free_ char *parent = realpath(slash == copy ? "/" : copy, NULL);
        if (!parent)
                return -errno;

        char *joined;
        if (asprintf(&joined, "%s/%s", streq(parent, "/") ? "" : parent, base) < 0)
                return -ENOMEM;
        *ret = joined;
        return 0;
}

/* A FUSE mount whose daemon is gone answers ENOTCONN to every request; stat() may still succeed
 * from cached attributes, statfs() always asks. */
static bool mount_is_dead(const char *path) {
        struct statvfs sv;
        return statvfs(path, &sv) < 0 && errno == ENOTCONN;
}

bool fusefs_mount_present(FuseFs *fs) {
        _cleanup_free_ char *canon = NULL, *fstype = NULL;

        if (!fs || canonical_mountpoint(fs->mountpoint, &canon) < 0)
                return false;
        return find_fuse_mount(canon, &fstype) > 0 && streq(fstype, "fuse.musicfs");
}

int fusefs_cleanup_stale_mount(const char *path) {
        _cleanup_free_ char *canon = NULL;
        int cleaned = 0, r;

        if (!path || path[0] != '/')
                return log_error_errno(-EINVAL, "Mountpoint %s is not an absolute path.", strna(path));

        r = canonical_mountpoint(path, &canon);
        if (r == -ENOENT)
                return 0;       /* its parent does not exist, so nothing can be mounted there */
        if (r < 0)
                return log_error_errno(r, "Cannot resolve mountpoint %s: %m", path);

        for (unsigned i = 0; i < MAX_STALE_MOUNTS; i++) {
                _cleanup_free_ char *fstype = NULL;

                r = find_fuse_mount(canon, &fstype);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;

                /* Ours is unmounted without asking it, which would hang on a stopped daemon. */
                bool stale = streq(fstype, "fuse.musicfs") || mount_is_dead(canon);
                if (!stale)
                        return log_error_errno(-EBUSY, "Mountpoint %s is in use by a live %s mount; "
                                               "not touching it.", canon, fstype);

                if (umount2(canon, MNT_DETACH) < 0)
                        return log_error_errno(errno, "Failed to detach the stale %s mount at %s: %m", fstype, canon);
                log_notice("Detached a dead %s mount at %s.", fstype, canon);
                cleaned = 1;
        }

        if (!cleaned) {
                /* A dead FUSE mount we could not see in mountinfo (another namespace's view). */
                if (mount_is_dead(canon)) {
                        if (umount2(canon, MNT_DETACH) < 0)
                                return log_error_errno(errno, "Failed to detach the stale mount at %s: %m", canon);
                        log_notice("Detached a stale mount at %s (transport endpoint not connected).", canon);
                        cleaned = 1;
                }
        }

        return cleaned;
}
