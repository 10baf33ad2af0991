/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* /.search/ (see fs-search.h). A result set is a snapshot of names and link targets, not of tree
 * nodes, so it needs no reference on a tree. The registry is a short list under one mutex: the
 * search itself runs outside it. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs-search.h"
#include "log.h"
#include "macro.h"
#include "search.h"
#include "time-util.h"

#define ROOT_INO FS_SEARCH_INO_BASE
/* A result set's block: dir = base + (slot << BLOCK_BITS), link i = dir + 1 + i. */
#define BLOCK_BITS 16
/* A result set is answered again for a lookup of the same query within this time. */
#define REUSE_NSEC (2LL * 1000 * 1000 * 1000)
/* Result sets nobody holds that are kept; past HARD_MAX the oldest goes even if held (the kernel
 * then gets ENOENT for it, never another query's entries). */
#define KEEP_UNUSED 16
#define HARD_MAX 256
#define NAME_BYTES_MAX 255

typedef struct SearchLink {
        char *name;
        char *target;
} SearchLink;

typedef struct ResultSet {
        uint64_t ino;                   /* the directory's */
        char *query;
        SearchLink *links;
        size_t n_links;
        int64_t created_nsec;           /* CLOCK_MONOTONIC, for reuse */
        struct timespec mtime;          /* CLOCK_REALTIME, for stat */
        uint64_t nlookup;               /* the kernel's references to any inode of the set */
        struct ResultSet *next;         /* newest first */
} ResultSet;

struct FsSearch {
        Catalog *catalog;
        TreeStore *trees;
        uid_t uid;
        gid_t gid;
        pthread_mutex_t lock;
        ResultSet *sets;
        size_t n_sets;
        uint64_t next_slot;
};

static void result_set_free(ResultSet *rs) {
        if (!rs)
                return;
        for (size_t i = 0; i < rs->n_links; i++) {
                free(rs->links[i].name);
                free(rs->links[i].target);
        }
        free(rs->links);
        free(rs->query);
        free(rs);
}

int fs_search_new(Catalog *catalog, TreeStore *trees, uid_t uid, gid_t gid, FsSearch **ret) {
        FsSearch *s;

        if (!catalog || !trees || !ret)
                return -EINVAL;
        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        *s = (FsSearch) { .catalog = catalog, .trees = trees, .uid = uid, .gid = gid, .next_slot = 1 };
        pthread_mutex_init(&s->lock, NULL);
        *ret = s;
        return 0;
}

void fs_search_free(FsSearch *s) {
        if (!s)
                return;
        while (s->sets) {
                ResultSet *rs = s->sets;
                s->sets = rs->next;
                result_set_free(rs);
        }
        pthread_mutex_destroy(&s->lock);
        free(s);
}

/* Lock held. The set that owns ino (its directory or one of its links); *ret_index: -1 for the
 * directory, else the link. */
static ResultSet *find_set(FsSearch *s, uint64_t ino, ssize_t *ret_index) {
        uint64_t dir = ino & ~((UINT64_C(1) << BLOCK_BITS) - 1);
        for (ResultSet *rs = s->sets; rs; rs = rs->next)
                if (rs->ino == dir) {
                        uint64_t i = ino - dir;
                        if (i > rs->n_links)
                                return NULL;
                        *ret_index = (ssize_t) i - 1;
                        return rs;
                }
        return NULL;
}

/* Lock held. Drops unheld sets beyond KEEP_UNUSED and anything beyond HARD_MAX, oldest first. */
static void trim(FsSearch *s) {
        size_t unused = 0, kept = 0;
        ResultSet **p = &s->sets;

        while (*p) {
                ResultSet *rs = *p;
                bool drop = kept >= HARD_MAX || (rs->nlookup == 0 && unused >= KEEP_UNUSED);
                if (drop) {
                        *p = rs->next;
                        result_set_free(rs);
                        s->n_sets--;
                        continue;
                }
                kept++;
                unused += rs->nlookup == 0;
                p = &rs->next;
        }
}

/* A file name can hold neither '/' nor NUL, and at most NAME_BYTES_MAX bytes: cut on a UTF-8
 * character boundary. */
static void name_fix(char *name) {
        for (char *p = name; *p; p++)
                if (*p == '/')
                        *p = '_';
}

static char *link_name(size_t rank, const SearchResult *res) {
        const char *base = strrchr(res->path, '/');
        const char *dot = strrchr(base ? base + 1 : res->path, '.');
        const char *ext = dot && dot[1] ? dot : "";
        const char *artist = *res->artist ? res->artist : "Unknown Artist";
        const char *title = *res->title ? res->title : "Unknown Title";
        char *name = NULL;

        if (strlen(ext) > 16)
                ext = "";
        if (asprintf(&name, "%03zu - %s - %s", rank, artist, title) < 0)
                return NULL;
        size_t room = NAME_BYTES_MAX - strlen(ext), n = strlen(name);
        if (n > room) {
                n = room;
                while (n > 0 && ((unsigned char) name[n] & 0xc0) == 0x80)
                        n--;
        }
        name[n] = 0;
        name_fix(name);
        char *full = NULL;
        if (asprintf(&full, "%s%s", name, ext) < 0)
                full = NULL;
        free(name);
        return full;
}

/* Runs the query; *ret is a new set not yet in the registry. */
static int result_set_make(FsSearch *s, const char *query, ResultSet **ret) {
        SearchResult *results = NULL;
        size_t n = 0;
        char *reason = NULL;
        Tree *tree = tree_store_get(s->trees);
        int r;

        r = search_run(s->catalog, tree, query, FS_SEARCH_RESULTS_MAX, true, &results, &n, &reason);
        if (r < 0) {
                if (r == -EINVAL)
                        log_debug("/.search/%s: %s", query, strna(reason));
                else if (r == -EBUSY)
                        log_debug("/.search/%s: the search index is being rebuilt", query);
                else
                        log_warning_errno(r, "/.search/%s: the search failed: %m", query);
                free(reason);
                tree_unref(tree);
                return r;
        }

        ResultSet *rs = calloc(1, sizeof *rs);
        if (rs) {
                rs->query = strdup(query);
                rs->links = calloc(n > 0 ? n : 1, sizeof *rs->links);
        }
        r = rs && rs->query && rs->links ? 0 : -ENOMEM;
        for (size_t i = 0; r >= 0 && i < n; i++) {
                SearchLink *l = &rs->links[rs->n_links++];
                l->name = link_name(i + 1, &results[i]);
                if (!l->name || asprintf(&l->target, "../../%s", results[i].path) < 0) {
                        l->target = NULL;
                        r = -ENOMEM;
                }
        }
        search_results_free(results, n);
        tree_unref(tree);
        if (r < 0) {
                result_set_free(rs);
                return r;
        }
        rs->created_nsec = (int64_t) now_nsec(CLOCK_MONOTONIC);
        clock_gettime(CLOCK_REALTIME, &rs->mtime);
        *ret = rs;
        return 0;
}

static void root_stat(FsSearch *s, struct stat *st) {
        *st = (struct stat) {
                .st_ino = ROOT_INO,
                .st_mode = S_IFDIR | 0555,
                .st_nlink = 2,
                .st_uid = s->uid,
                .st_gid = s->gid,
                .st_blksize = 4096,
        };
}

static void set_stat(FsSearch *s, const ResultSet *rs, ssize_t index, struct stat *st) {
        *st = (struct stat) {
                .st_uid = s->uid,
                .st_gid = s->gid,
                .st_blksize = 4096,
                .st_atim = rs->mtime,
                .st_mtim = rs->mtime,
                .st_ctim = rs->mtime,
        };
        if (index < 0) {
                st->st_ino = rs->ino;
                st->st_mode = S_IFDIR | 0555;
                st->st_nlink = 2;
        } else {
                st->st_ino = rs->ino + 1 + (uint64_t) index;
                st->st_mode = S_IFLNK | 0444;
                st->st_nlink = 1;
                st->st_size = (off_t) strlen(rs->links[index].target);
        }
}

static void reply_entry(fuse_req_t req, const struct stat *st) {
        struct fuse_entry_param e = {
                .ino = st->st_ino,
                .attr = *st,
                .attr_timeout = FS_SEARCH_TIMEOUT,
                .entry_timeout = FS_SEARCH_TIMEOUT,
        };
        fuse_reply_entry(req, &e);
}

void fs_search_root_entry(FsSearch *s, fuse_req_t req) {
        struct stat st;
        root_stat(s, &st);
        reply_entry(req, &st);
}

void fs_search_lookup(FsSearch *s, fuse_req_t req, uint64_t parent, const char *name) {
        struct stat st;
        ssize_t index;
        int r;

        if (parent == ROOT_INO) {
                int64_t now = (int64_t) now_nsec(CLOCK_MONOTONIC);

                pthread_mutex_lock(&s->lock);
                for (ResultSet *rs = s->sets; rs; rs = rs->next)
                        if (now - rs->created_nsec < REUSE_NSEC && strcmp(rs->query, name) == 0) {
                                rs->nlookup++;
                                set_stat(s, rs, -1, &st);
                                pthread_mutex_unlock(&s->lock);
                                reply_entry(req, &st);
                                return;
                        }
                pthread_mutex_unlock(&s->lock);

                ResultSet *rs = NULL;
                r = result_set_make(s, name, &rs);
                if (r < 0) {
                        /* EAGAIN: the index is being rebuilt (catalog_search()) */
                        fuse_reply_err(req, r == -EINVAL ? EINVAL : r == -ENOMEM ? ENOMEM : r == -EBUSY ? EAGAIN : EIO);
                        return;
                }
                pthread_mutex_lock(&s->lock);
                rs->ino = FS_SEARCH_INO_BASE + (s->next_slot++ << BLOCK_BITS);
                rs->nlookup = 1;
                rs->next = s->sets;
                s->sets = rs;
                s->n_sets++;
                set_stat(s, rs, -1, &st);
                trim(s);
                pthread_mutex_unlock(&s->lock);
                reply_entry(req, &st);
                return;
        }

        pthread_mutex_lock(&s->lock);
        ResultSet *rs = find_set(s, parent, &index);
        if (!rs || index >= 0) {
                pthread_mutex_unlock(&s->lock);
                fuse_reply_err(req, rs ? ENOTDIR : ENOENT);
                return;
        }
        for (size_t i = 0; i < rs->n_links; i++)
                if (strcmp(rs->links[i].name, name) == 0) {
                        rs->nlookup++;
                        set_stat(s, rs, (ssize_t) i, &st);
                        pthread_mutex_unlock(&s->lock);
                        reply_entry(req, &st);
                        return;
                }
        pthread_mutex_unlock(&s->lock);
        fuse_reply_err(req, ENOENT);
}

void fs_search_getattr(FsSearch *s, fuse_req_t req, uint64_t ino) {
        struct stat st;
        ssize_t index;

        if (ino == ROOT_INO)
                root_stat(s, &st);
        else {
                pthread_mutex_lock(&s->lock);
                ResultSet *rs = find_set(s, ino, &index);
                if (rs)
                        set_stat(s, rs, index, &st);
                pthread_mutex_unlock(&s->lock);
                if (!rs) {
                        fuse_reply_err(req, ENOENT);
                        return;
                }
        }
        fuse_reply_attr(req, &st, FS_SEARCH_TIMEOUT);
}

void fs_search_readlink(FsSearch *s, fuse_req_t req, uint64_t ino) {
        _cleanup_free_ char *target = NULL;
        ssize_t index;

        pthread_mutex_lock(&s->lock);
        ResultSet *rs = ino == ROOT_INO ? NULL : find_set(s, ino, &index);
        if (rs && index >= 0)
                target = strdup(rs->links[index].target);
        pthread_mutex_unlock(&s->lock);
        if (!rs)
                fuse_reply_err(req, ino == ROOT_INO ? EINVAL : ENOENT);
        else if (index < 0)
                fuse_reply_err(req, EINVAL);
        else if (!target)
                fuse_reply_err(req, ENOMEM);
        else
                fuse_reply_readlink(req, target);
}

void fs_search_opendir(FsSearch *s, fuse_req_t req, uint64_t ino, struct fuse_file_info *fi) {
        ssize_t index = -1;

        if (ino != ROOT_INO) {
                pthread_mutex_lock(&s->lock);
                ResultSet *rs = find_set(s, ino, &index);
                pthread_mutex_unlock(&s->lock);
                if (!rs) {
                        fuse_reply_err(req, ENOENT);
                        return;
                }
                if (index >= 0) {
                        fuse_reply_err(req, ENOTDIR);
                        return;
                }
        }
        /* No handle: a listing is served from the registry by inode. A result set's listing never
         * changes (a new result set is a new inode), so the kernel may keep it. */
        fi->fh = 0;
        fi->cache_readdir = ino != ROOT_INO;
        fi->keep_cache = ino != ROOT_INO;
        fuse_reply_open(req, fi);
}

void fs_search_readdir(FsSearch *s, fuse_req_t req, uint64_t ino, size_t size, off_t off, bool plus) {
        _cleanup_free_ char *buf = NULL;
        size_t used = 0;
        ssize_t index = -1;
        ResultSet *rs = NULL;

        pthread_mutex_lock(&s->lock);
        if (ino != ROOT_INO) {
                rs = find_set(s, ino, &index);
                if (!rs || index >= 0) {
                        pthread_mutex_unlock(&s->lock);
                        fuse_reply_err(req, rs ? ENOTDIR : ENOENT);
                        return;
                }
        }
        size_t n_entries = 2 + (rs ? rs->n_links : 0);
        if (off < 0 || (uint64_t) off >= n_entries || size == 0) {
                pthread_mutex_unlock(&s->lock);
                fuse_reply_buf(req, NULL, 0);
                return;
        }
        buf = malloc(size);
        if (!buf) {
                pthread_mutex_unlock(&s->lock);
                fuse_reply_err(req, ENOMEM);
                return;
        }
        for (size_t i = (size_t) off; i < n_entries; i++) {
                struct stat st;
                const char *name;

                if (i < 2) {
                        name = i == 0 ? "." : "..";
                        if (rs && i == 0)
                                set_stat(s, rs, -1, &st);
                        else
                                root_stat(s, &st);     /* ".." of the root is not ours to describe */
                } else {
                        name = rs->links[i - 2].name;
                        set_stat(s, rs, (ssize_t) i - 2, &st);
                }
                size_t entsize;
                if (plus) {
                        struct fuse_entry_param e = {
                                .ino = st.st_ino, .attr = st,
                                .attr_timeout = FS_SEARCH_TIMEOUT, .entry_timeout = FS_SEARCH_TIMEOUT,
                        };
                        entsize = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t) (i + 1));
                        /* the kernel counts a lookup for every entry but "." and ".." */
                        if (entsize <= size - used && i >= 2)
                                rs->nlookup++;
                } else
                        entsize = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t) (i + 1));
                if (entsize > size - used)
                        break;
                used += entsize;
        }
        pthread_mutex_unlock(&s->lock);
        fuse_reply_buf(req, buf, used);
}

void fs_search_access(FsSearch *s, fuse_req_t req, uint64_t ino, int mask) {
        ssize_t index = -1;
        bool found = ino == ROOT_INO;

        if (!found) {
                pthread_mutex_lock(&s->lock);
                found = find_set(s, ino, &index) != NULL;
                pthread_mutex_unlock(&s->lock);
        }
        if (!found)
                fuse_reply_err(req, ENOENT);
        else if (mask & W_OK)
                fuse_reply_err(req, EROFS);
        else
                fuse_reply_err(req, 0);
}

void fs_search_forget(FsSearch *s, uint64_t ino, uint64_t nlookup) {
        ssize_t index;

        if (ino == ROOT_INO)
                return;
        pthread_mutex_lock(&s->lock);
        ResultSet *rs = find_set(s, ino, &index);
        if (rs) {
                rs->nlookup = rs->nlookup > nlookup ? rs->nlookup - nlookup : 0;
                trim(s);
        }
        pthread_mutex_unlock(&s->lock);
}
