/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* /.search/ in the mount (issue #6): the FUSE operations on its inodes. fs.c hands every request
 * for an inode in the search range (and the lookup of "/.search") here.
 *
 *   /.search/                  a directory, not listed in "/" (it holds nothing until asked); it
 *                              hides a library directory of that name, should a template make one
 *   /.search/<query>/          looking the name up runs the query (search.h; up to
 *                              FS_SEARCH_RESULTS_MAX results, best first); a bad query is EINVAL
 *   /.search/<query>/NNN - Artist - Title.ext
 *                              symlinks to "../../<path of the track>", so any player or file
 *                              manager follows them into the tree
 * A lookup while the search index is being rebuilt (catalog.h) is EAGAIN.
 *
 * Inode numbers are at and above FS_SEARCH_INO_BASE, far beyond catalog node ids. Each result set
 * gets a fresh block of inode numbers that is never reused, so the kernel can never see one
 * query's entries under another's inode; a result set lives while the kernel holds any of its
 * inodes (lookup counts, released by FORGET), and a few recent ones are kept for reuse. Results
 * change with the catalog, so entries and attributes expire after FS_SEARCH_TIMEOUT seconds. */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <fuse_lowlevel.h>

#include "catalog.h"
#include "tree.h"

#define FS_SEARCH_DIR_NAME ".search"
#define FS_SEARCH_INO_BASE (UINT64_C(1) << 62)
#define FS_SEARCH_RESULTS_MAX 200
#define FS_SEARCH_TIMEOUT 1.0

typedef struct FsSearch FsSearch;

int fs_search_new(Catalog *catalog, TreeStore *trees, uid_t uid, gid_t gid, FsSearch **ret);
void fs_search_free(FsSearch *s);      /* NULL is fine */

static inline bool fs_search_ino(uint64_t ino) {
        return ino >= FS_SEARCH_INO_BASE;
}

/* Each replies to req. lookup: parent is the search root or a query directory. */
void fs_search_lookup(FsSearch *s, fuse_req_t req, uint64_t parent, const char *name);
void fs_search_root_entry(FsSearch *s, fuse_req_t req);        /* the lookup of "/.search" */
void fs_search_getattr(FsSearch *s, fuse_req_t req, uint64_t ino);
void fs_search_readlink(FsSearch *s, fuse_req_t req, uint64_t ino);
void fs_search_opendir(FsSearch *s, fuse_req_t req, uint64_t ino, struct fuse_file_info *fi);
void fs_search_readdir(FsSearch *s, fuse_req_t req, uint64_t ino, size_t size, off_t off, bool plus);
void fs_search_access(FsSearch *s, fuse_req_t req, uint64_t ino, int mask);
/* No reply (FORGET has none). */
void fs_search_forget(FsSearch *s, uint64_t ino, uint64_t nlookup);
