/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The virtual tree: an immutable snapshot built from the catalog's files, shared by reference count.
 * A rebuild makes a new Tree and publishes it in a TreeStore; readers that hold the old one keep
 * using it until they drop it. No locks are needed to read a Tree.
 *
 * Building applies D2 (template), D3 (same rel_path + size on several origins = one file with
 * replicas in priority order; distinct files on one virtual path get " (2)", " (3)" before the
 * extension, ordered by the preferred replica's origin priority, then origin id (the catalog row id:
 * stable, and independent of the order files are passed in), then rel_path; a directory and a file on
 * one path: the directory keeps it, the file is suffixed) and D4 (inode numbers are catalog node
 * ids, root = 1). A missing track number renders nothing (see template.c). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "template.h"

#define TREE_ROOT_INO 1

typedef struct TreeReplica {
        int64_t origin_id;
        unsigned priority;
        int64_t file_id;
        char *rel_path;
} TreeReplica;

/* 64 bytes: a tree has one per file and directory, and two trees are in memory during a rebuild. */
typedef struct TreeNode {
        uint64_t ino;
        uint64_t parent;        /* root's parent is itself */
        char *name;             /* "" for root */
        uint64_t size;          /* files */
        int64_t mtime_ns;       /* files: origin mtime; dirs: newest below */
        /* directories: children sorted by name (strcmp) */
        struct TreeNode **children;
        /* files: replicas, preferred first */
        TreeReplica *replicas;
        uint32_t n_children;
        uint16_t n_replicas;    /* a build lists at most TREE_REPLICAS_MAX */
        bool is_dir;
} TreeNode;

#define TREE_REPLICAS_MAX UINT16_MAX

typedef struct Tree Tree;

/* Builds a tree from catalog rows handed over one at a time (catalog_foreach_file()), keeping of
 * each only what the tree needs: its numbers, rel_path, and format and tags packed in one string
 * run until the paths are rendered. add() copies, so the row may go away after it; a row without a
 * path is logged and left out. finish() builds as tree_build() always did, assigning inode numbers
 * through the catalog (catalog_nodes_*: call it after the walk, not from its callback, which holds
 * the catalog's lock), and leaves the builder empty whatever it returns. */
typedef struct TreeBuilder TreeBuilder;
int tree_builder_new(TreeBuilder **ret);
int tree_builder_add(TreeBuilder *tb, const CatalogFile *f);
int tree_builder_finish(TreeBuilder *tb, Catalog *catalog, const Template *tpl, Tree **ret);
void tree_builder_free(TreeBuilder *tb);       /* NULL is fine */

/* Builds a tree from an array of rows: a tree builder fed with each of them. */
int tree_build(Catalog *catalog, const Template *tpl, const CatalogFile *files, size_t n_files, Tree **ret);
/* An empty tree (root only), for the moment before the catalog is read. */
int tree_new_empty(Tree **ret);

Tree *tree_ref(Tree *t);
void tree_unref(Tree *t);       /* NULL is fine */

const TreeNode *tree_get(const Tree *t, uint64_t ino);         /* NULL when unknown */
const TreeNode *tree_lookup(const Tree *t, uint64_t parent_ino, const char *name);
/* The file that has catalog row file_id as one of its replicas; NULL when none. O(log n). */
const TreeNode *tree_find_file(const Tree *t, int64_t file_id);
uint64_t tree_track_count(const Tree *t);
uint64_t tree_node_count(const Tree *t);
/* Path of a node relative to the root ("Artist/Album/01 - x.flac"), newly allocated. */
char *tree_node_path(const Tree *t, const TreeNode *n);

/* Differences between two trees, for kernel cache invalidation. For every directory present in both
 * (same inode, same place): entry_fn(dir, name) for each child name that disappeared, appeared (the
 * kernel may hold a negative entry), points to a different inode or type, or is a file whose size or
 * mtime changed; inode_fn(file) for such a changed file; inode_fn(dir) when its listing (names,
 * inodes) or its mtime changed. Entries below a directory that is gone are not reported one by one:
 * invalidating the directory's own entry drops them. Linear in the size of the trees. */
typedef void (*tree_entry_fn)(uint64_t parent_ino, const char *name, void *userdata);
typedef void (*tree_inode_fn)(uint64_t ino, void *userdata);
void tree_diff(const Tree *old, const Tree *new, tree_entry_fn entry_fn, tree_inode_fn inode_fn, void *userdata);

/* The published tree. tree_store_get() returns a new reference (never NULL once initialised). */
typedef struct TreeStore TreeStore;
int tree_store_new(Tree *initial, TreeStore **ret);    /* takes the reference */
void tree_store_free(TreeStore *s);
Tree *tree_store_get(TreeStore *s);
/* Publishes t (takes the reference) and returns the previous tree (caller unrefs). */
Tree *tree_store_publish(TreeStore *s, Tree *t);
