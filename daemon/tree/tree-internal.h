/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* What a Tree is made of, shared by the builder (tree.c) and the snapshot (tree-snapshot.c), which
 * writes a tree's arrays to a file and reads them back. Nothing outside daemon/tree includes this. */
#include <stdatomic.h>
#include <stdbool.h>

#include "macro.h"
#include "tree.h"

/* Strings of a tree: blocks that are freed together with it. */
typedef struct ArenaBlock {
        struct ArenaBlock *next;
        size_t used, size;
        char data[];
} ArenaBlock;

typedef struct Arena {
        ArenaBlock *head;
} Arena;

void arena_free(Arena *a);

struct Tree {
        atomic_uint n_ref;
        TreeNode *nodes;        /* [0] is the root; directories, then files */
        size_t n_nodes;
        uint64_t n_files;
        TreeNode **children;
        TreeReplica *replicas;
        uint32_t *ino_slots;    /* node index + 1, 0 = empty */
        size_t ino_mask;
        /* Catalog file id -> node, for search hits: one entry per replica, sorted by file id (16
         * bytes a replica, binary search; cheaper than a hash at 100k+ tracks). */
        struct TreeFileEntry {
                int64_t file_id;
                uint32_t node;
        } *files_by_id;
        size_t n_files_by_id;
        Arena strings;
};

/* An array of n elements, zeroed or not, freed with free(); large ones are aligned and advised for
 * huge pages. NULL when out of memory. */
void *tree_alloc_array(size_t n, size_t size, bool zero);
/* A tree of n_nodes nodes (zeroed, or left for the caller to fill in whole) and nothing else, one
 * reference. */
int tree_alloc(size_t n_nodes, bool zero, Tree **ret);
void tree_free(Tree *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(Tree *, tree_free);
/* Indexes every node by inode number; -EBADMSG when two nodes share one. */
int tree_index_inodes(Tree *t);

/* The snapshot file's layout (tree-snapshot.c; here for the tests that craft damaged files). */
#define SNAPSHOT_MAGIC "MFSTREE"
#define SNAPSHOT_VERSION 1u

typedef struct SnapshotHeader {
        char magic[8];
        uint32_t version;
        /* sizes of the records below: a build with another layout writes another value */
        uint16_t node_size, replica_size, file_entry_size, tree_node_size;
        uint32_t reserved;      /* 0: no padding byte goes unchecked */
        uint64_t n_nodes, n_files, n_children, n_replicas, strings_len, n_file_ids, key_len, annex_len;
        uint8_t digest[32];     /* SHA-256 of everything after the header */
} SnapshotHeader;

typedef struct SnapshotNode {
        uint64_t ino, parent, name, size;
        int64_t mtime_ns;
        uint64_t children_first, replicas_first;
        uint32_t n_children;
        uint16_t n_replicas;
        uint8_t is_dir, pad;
} SnapshotNode;

typedef struct SnapshotReplica {
        int64_t origin_id, file_id;
        uint64_t rel_path;
        uint32_t priority, pad;
} SnapshotReplica;
