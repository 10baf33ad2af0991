/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The virtual tree. A build takes the catalog's rows one at a time (a TreeBuilder keeps of each
 * only what the tree needs, so the rows never sit in memory whole), then runs in passes over flat
 * arrays indexed by file, virtual file and directory number, with open-addressing hash indexes that
 * store only those numbers, so 100k tracks cost a few large allocations rather than hundreds of
 * thousands of small ones; what no later pass needs is freed as soon as it is done. The finished
 * Tree is five arrays (nodes, children, replicas, inode index, file index) and one string arena.
 * A rebuild runs beside the published tree, so its peak is what counts: the passes are ordered so
 * that the rows and the rendered paths are gone before the nodes are allocated (at 100k tracks the
 * build needs ~18 MB of heap beside the published tree, the new tree's own ~17.5 MB included).
 *
 * Album grouping (for {disc} and compilations), decided here:
 *   - tracks with the same album tag and the same album artist tag (the artist when there is no
 *     album artist tag) form a tag group; if any track of a tag group is flagged compilation, all
 *     of it is. So a compilation whose tracks carry only their own artists and the flag lands in one
 *     "Various Artists/Album", and one unflagged track of an album artist's record cannot pull it
 *     apart. A track without an album tag is a compilation only if it is flagged itself.
 *   - an album is (rendered album artist, album tag); it is multi-disc if any of its tracks has
 *     disc > 1 or disc_total > 1.
 * Replicas of one virtual file are the files with the same rel_path and size (D3); the preferred
 * one (lowest priority value, then lowest origin id, then rel_path) supplies tags, size and mtime. */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "tree-internal.h"

#define NONE UINT32_MAX
#define EXT_KEEP_MAX 32

/* ---- string arena ---- */

#define ARENA_BLOCK_SIZE (256u * 1024u)

static char *arena_alloc(Arena *a, size_t len) {
        ArenaBlock *b = a->head;

        if (!b || b->size - b->used < len) {
                size_t size = len > ARENA_BLOCK_SIZE ? len : ARENA_BLOCK_SIZE;

                b = malloc(sizeof(ArenaBlock) + size);
                if (!b)
                        return NULL;
                b->size = size;
                b->used = 0;
                b->next = a->head;
                a->head = b;
        }
        char *p = b->data + b->used;
        b->used += len;
        return p;
}

static char *arena_strndup(Arena *a, const char *s, size_t len) {
        char *p = arena_alloc(a, len + 1);

        if (!p)
                return NULL;
        memcpy(p, s, len);
        p[len] = '\0';
        return p;
}

void arena_free(Arena *a) {
        while (a->head) {
                ArenaBlock *next = a->head->next;
                free(a->head);
                a->head = next;
        }
}

/* ---- hash index: maps a key to a small integer; the caller owns the keys ---- */

typedef struct HashSlot {
        uint32_t hash;
        uint32_t value;         /* index + 1; 0 = empty */
} HashSlot;

typedef struct HashIndex {
        HashSlot *slots;
        size_t mask, n;
} HashIndex;

typedef bool (*hash_eq_fn)(const void *ctx, uint32_t index, const void *key);

static uint32_t hash_bytes(const char *s, size_t len) {
        uint64_t h = 0xcbf29ce484222325ULL;     /* FNV-1a, folded */
        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char) s[i];
                h *= 0x100000001b3ULL;
        }
        return (uint32_t) (h ^ (h >> 32));
}

static uint32_t hash_mix(uint32_t h, uint64_t v) {
        uint64_t x = (h ^ v) * 0x9e3779b97f4a7c15ULL;
        return (uint32_t) (x ^ (x >> 29) ^ (x >> 47));
}

static int hash_index_init(HashIndex *h, size_t expected) {
        size_t cap = 16;

        while (cap < expected * 2)
                cap <<= 1;
        h->slots = calloc(cap, sizeof(HashSlot));
        if (!h->slots)
                return -ENOMEM;
        h->mask = cap - 1;
        h->n = 0;
        return 0;
}

static void hash_index_done(HashIndex *h) {
        free(h->slots);
        *h = (HashIndex) {};
}

/* The slot holding key, or the empty slot where it belongs. */
static HashSlot *hash_index_find(const HashIndex *h, uint32_t hash, const void *key, hash_eq_fn eq, const void *ctx) {
        for (size_t i = hash & h->mask;; i = (i + 1) & h->mask) {
                HashSlot *s = h->slots + i;

                if (s->value == 0 || (s->hash == hash && eq(ctx, s->value - 1, key)))
                        return s;
        }
}

static uint32_t hash_index_get(const HashIndex *h, uint32_t hash, const void *key, hash_eq_fn eq, const void *ctx) {
        HashSlot *s = hash_index_find(h, hash, key, eq, ctx);
        return s->value == 0 ? NONE : s->value - 1;
}

/* Fills the empty slot returned by hash_index_find(); the slot pointer is invalid afterwards. */
static int hash_index_fill(HashIndex *h, HashSlot *slot, uint32_t hash, uint32_t index) {
        slot->hash = hash;
        slot->value = index + 1;
        h->n++;
        if (h->n * 2 <= h->mask + 1)
                return 0;

        size_t cap = (h->mask + 1) * 2;
        HashSlot *slots = calloc(cap, sizeof(HashSlot));
        if (!slots)
                return -ENOMEM;
        for (size_t i = 0; i <= h->mask; i++) {
                if (h->slots[i].value == 0)
                        continue;
                size_t j = h->slots[i].hash & (cap - 1);
                while (slots[j].value != 0)
                        j = (j + 1) & (cap - 1);
                slots[j] = h->slots[i];
        }
        free(h->slots);
        h->slots = slots;
        h->mask = cap - 1;
        return 0;
}

typedef struct Span {
        const char *p;
        size_t len;
} Span;

static bool span_eq(Span a, Span b) {
        return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}

static Span span_trimmed(const char *s) {
        Span r = { s ?: "", s ? strlen(s) : 0 };

        while (r.len > 0 && strchr(" \t\n\v\f\r", r.p[0])) {
                r.p++;
                r.len--;
        }
        while (r.len > 0 && strchr(" \t\n\v\f\r", r.p[r.len - 1]))
                r.len--;
        return r;
}

/* ---- the tree ---- */

_Static_assert(sizeof(TreeNode) == 64, "a TreeNode is 64 bytes: one per file and directory, two trees during a rebuild");

void tree_free(Tree *t) {
        if (!t)
                return;
        free(t->nodes);
        free(t->children);
        free(t->replicas);
        free(t->ino_slots);
        free(t->files_by_id);
        arena_free(&t->strings);
        free(t);
}

Tree *tree_ref(Tree *t) {
        if (t)
                atomic_fetch_add_explicit(&t->n_ref, 1, memory_order_relaxed);
        return t;
}

void tree_unref(Tree *t) {
        if (!t)
                return;
        if (atomic_fetch_sub_explicit(&t->n_ref, 1, memory_order_acq_rel) == 1)
                tree_free(t);
}

static size_t ino_hash(uint64_t ino) {
        uint64_t x = ino * 0x9e3779b97f4a7c15ULL;
        return (size_t) (x ^ (x >> 32));
}

void *tree_alloc_array(size_t n, size_t size, bool zero) {
        const size_t huge = 2u << 20;
        size_t bytes;
        void *p = NULL;

        if (__builtin_mul_overflow(n ? n : 1, size, &bytes))
                return NULL;
        if (bytes < 2 * huge)
                return zero ? calloc(1, bytes) : malloc(bytes);
        /* Aligned, so that the kernel can back it with 2 MiB pages: a million-track tree is ~300 MB,
         * and 4 KiB pages cost a page fault each (75,000, a third of the time of reading a snapshot
         * on a VM). */
        if (posix_memalign(&p, huge, bytes) != 0)
                return NULL;
        (void) madvise(p, bytes, MADV_HUGEPAGE);
        if (zero)
                memset(p, 0, bytes);
        return p;
}

int tree_index_inodes(Tree *t) {
        size_t cap = 16;

        while (cap < t->n_nodes * 2)
                cap <<= 1;
        t->ino_slots = tree_alloc_array(cap, sizeof(uint32_t), true);
        if (!t->ino_slots)
                return -ENOMEM;
        t->ino_mask = cap - 1;

        for (size_t i = 0; i < t->n_nodes; i++) {
                size_t j = ino_hash(t->nodes[i].ino) & t->ino_mask;

                while (t->ino_slots[j] != 0) {
                        if (t->nodes[t->ino_slots[j] - 1].ino == t->nodes[i].ino)
                                return log_error_errno(-EBADMSG, "Inode %" PRIu64 " given to two paths, refusing the tree",
                                                       t->nodes[i].ino);
                        j = (j + 1) & t->ino_mask;
                }
                t->ino_slots[j] = (uint32_t) i + 1;
        }
        return 0;
}

static int file_entry_cmp(const void *x, const void *y) {
        const struct TreeFileEntry *a = x, *b = y;
        return (a->file_id > b->file_id) - (a->file_id < b->file_id);
}

static int tree_index_files(Tree *t) {
        size_t n = 0;

        for (size_t i = 0; i < t->n_nodes; i++)
                n += t->nodes[i].is_dir ? 0 : t->nodes[i].n_replicas;
        if (n == 0)
                return 0;
        t->files_by_id = reallocarray(NULL, n, sizeof *t->files_by_id);
        if (!t->files_by_id)
                return -ENOMEM;
        for (size_t i = 0; i < t->n_nodes; i++)
                for (size_t j = 0; !t->nodes[i].is_dir && j < t->nodes[i].n_replicas; j++)
                        t->files_by_id[t->n_files_by_id++] = (struct TreeFileEntry) {
                                .file_id = t->nodes[i].replicas[j].file_id,
                                .node = (uint32_t) i,
                        };
        qsort(t->files_by_id, t->n_files_by_id, sizeof *t->files_by_id, file_entry_cmp);
        return 0;
}

const TreeNode *tree_find_file(const Tree *t, int64_t file_id) {
        size_t lo = 0, hi;

        if (!t || !t->files_by_id)
                return NULL;
        hi = t->n_files_by_id;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (t->files_by_id[mid].file_id == file_id)
                        return t->nodes + t->files_by_id[mid].node;
                if (t->files_by_id[mid].file_id < file_id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

const TreeNode *tree_get(const Tree *t, uint64_t ino) {
        if (!t || !t->ino_slots)
                return NULL;
        for (size_t j = ino_hash(ino) & t->ino_mask; t->ino_slots[j] != 0; j = (j + 1) & t->ino_mask)
                if (t->nodes[t->ino_slots[j] - 1].ino == ino)
                        return t->nodes + t->ino_slots[j] - 1;
        return NULL;
}

/* The child of dir called name[0..len), by binary search in the sorted children; strcmp's order. */
static const TreeNode *dir_find_child_n(const TreeNode *dir, const char *name, size_t len) {
        size_t lo = 0, hi = dir->n_children;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                const char *c_name = dir->children[mid]->name;
                int c = strncmp(name, c_name, len);

                if (c == 0 && c_name[len] != '\0')
                        c = -1;         /* name is a prefix of c_name */
                if (c == 0)
                        return dir->children[mid];
                if (c < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

static const TreeNode *dir_find_child(const TreeNode *dir, const char *name) {
        return dir_find_child_n(dir, name, strlen(name));
}

const TreeNode *tree_lookup(const Tree *t, uint64_t parent_ino, const char *name) {
        const TreeNode *dir = tree_get(t, parent_ino);

        if (!dir || !dir->is_dir || !name)
                return NULL;
        return dir_find_child(dir, name);
}

uint64_t tree_track_count(const Tree *t) {
        return t ? t->n_files : 0;
}

uint64_t tree_node_count(const Tree *t) {
        return t ? t->n_nodes : 0;
}

/* A parent of n in t: the published tree's by inode number, the build's by index (its inode numbers
 * are not all known yet). NULL when the chain is broken. */
typedef const TreeNode *(*node_parent_fn)(const void *ctx, const TreeNode *n);

/* "Artist/Album/01 - x.flac" of n, joined from the names up to the root (""); NULL when out of memory
 * or the chain is broken (the walk is bounded, so a loop cannot hang it). */
static char *node_path_up(const Tree *t, const TreeNode *n, node_parent_fn parent, const void *ctx) {
        size_t len = 0, depth = 0;

        for (const TreeNode *p = n;; p = parent(ctx, p)) {
                if (!p || depth++ > t->n_nodes)
                        return NULL;
                if (p->ino == TREE_ROOT_INO)
                        break;
                len += strlen(p->name) + 1;
        }

        char *path = malloc(len + 1);
        if (!path)
                return NULL;
        size_t end = len > 0 ? len - 1 : 0;
        path[end] = '\0';
        for (const TreeNode *p = n; p->ino != TREE_ROOT_INO; p = parent(ctx, p)) {
                size_t l = strlen(p->name);

                end -= l;
                memcpy(path + end, p->name, l);
                if (end > 0)
                        path[--end] = '/';
        }
        return path;
}

static const TreeNode *published_parent(const void *ctx, const TreeNode *n) {
        return tree_get(ctx, n->parent);
}

char *tree_node_path(const Tree *t, const TreeNode *n) {
        if (!t || !n)
                return NULL;
        return node_path_up(t, n, published_parent, t);
}

int tree_alloc(size_t n_nodes, bool zero, Tree **ret) {
        Tree *t = calloc(1, sizeof(Tree));
        if (!t)
                return -ENOMEM;
        atomic_init(&t->n_ref, 1);
        t->nodes = tree_alloc_array(n_nodes, sizeof(TreeNode), zero);
        if (!t->nodes) {
                free(t);
                return -ENOMEM;
        }
        t->n_nodes = n_nodes;
        *ret = t;
        return 0;
}

int tree_new_empty(Tree **ret) {
        _cleanup_(tree_freep) Tree *t = NULL;
        int r;

        r = tree_alloc(1, true, &t);
        if (r < 0)
                return r;
        t->nodes[0] = (TreeNode) { .ino = TREE_ROOT_INO, .parent = TREE_ROOT_INO, .name = (char *) "", .is_dir = true };
        r = tree_index_inodes(t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

/* ---- building ---- */

#define ALLOC_ARRAY(p, n) ((p) = calloc((n) ? (n) : 1, sizeof(*(p))))

typedef struct DirInfo {
        const char *path;       /* points into a rendered file path; not NUL-terminated at len */
        uint32_t len;
        uint32_t parent;
} DirInfo;

typedef struct TagGroup {
        Span album, artist;
        bool compilation;
} TagGroup;

typedef struct AlbumGroup {
        const char *album_artist;
        Span album;
        bool multi_disc;
} AlbumGroup;

/* A catalog row as the build keeps it while the rest arrive: the numbers, its rel_path in one arena
 * (which becomes the tree's: the replicas point into it) and a run of the strings of PACKED_* that
 * the row has, each NUL-terminated, in another, dropped once the paths are rendered. The tags are
 * copied only when the row's were read, as the build ignores them otherwise (file_tags()). */
enum {
        PACKED_FORMAT,
        PACKED_TITLE,
        PACKED_ARTIST,
        PACKED_ALBUM,
        PACKED_ALBUMARTIST,
        PACKED_GENRE,
        PACKED_COMPOSER,
        _PACKED_MAX,
};

typedef struct PackedFile {
        int64_t id, origin_id, mtime_ns;
        uint64_t size;
        const char *rel_path;
        const char *strings;    /* NULL once rendered */
        unsigned priority;
        int year, track, disc, disc_total;
        uint8_t present;        /* bit PACKED_x: that string follows */
        bool parsed, compilation;
} PackedFile;

struct TreeBuilder {
        PackedFile *files;      /* rows with a path, in the order they were added */
        size_t n_files, cap_files;
        /* the rows' rel_paths, then the nodes' names: becomes the tree's string arena */
        Arena tree_strings;
        Arena tag_strings;
        /* tag_strings' blocks, oldest first, and the first row with strings in each: the rows
         * fill them in order, so the rendering can drop each once it has rendered its rows */
        ArenaBlock **tag_blocks;
        uint32_t *tag_block_first_row;
        size_t n_tag_blocks, cap_tag_blocks;

        uint32_t *order;        /* valid files, preferred first */
        size_t n_valid;
        uint32_t *rep_next;     /* per file: the next replica of its virtual file */

        /* virtual files, numbered in the rank order of their preferred replicas */
        size_t n_vf;
        uint32_t *vf_best, *vf_dir, *vf_album;
        bool *vf_compilation;
        const char **vf_path;   /* rendered, in paths */
        Arena paths;
        char **vf_final;        /* with a collision suffix; NULL = vf_path */
        char **vf_album_artist;

        /* what the tree needs of the rows once the paths are rendered: the replicas (the tree's,
         * grouped by virtual file: those of v from vf_first_rep[v] to vf_first_rep[v + 1]) and the
         * preferred replica's size and mtime */
        TreeReplica *replicas;
        uint32_t *vf_first_rep;
        uint64_t *vf_size;
        int64_t *vf_mtime;
        const char **node_name; /* per node (directories, then files), in tree_strings */

        TagGroup *tag_groups;
        size_t n_tag_groups, cap_tag_groups;
        AlbumGroup *albums;
        size_t n_albums, cap_albums;

        DirInfo *dirs;
        size_t n_dirs, cap_dirs;
        HashIndex dir_index, file_index;

        Tree *tree;
};
typedef struct TreeBuilder Build;

static const TrackTags no_tags = {};

/* A view of a kept row, its strings pointing into the builder's arena. */
static void packed_view(const PackedFile *p, CatalogFile *ret) {
        char *fields[_PACKED_MAX] = {};
        const char *s = p->strings;

        for (int k = 0; s && k < _PACKED_MAX; k++)
                if (p->present & (1u << k)) {
                        fields[k] = (char *) s;
                        s += strlen(s) + 1;
                }
        *ret = (CatalogFile) {
                .id = p->id,
                .origin_id = p->origin_id,
                .origin_priority = p->priority,
                .rel_path = (char *) p->rel_path,
                .size = p->size,
                .mtime_ns = p->mtime_ns,
                .format = fields[PACKED_FORMAT],
                .parsed = p->parsed,
                .tags = {
                        .title = fields[PACKED_TITLE],
                        .artist = fields[PACKED_ARTIST],
                        .album = fields[PACKED_ALBUM],
                        .albumartist = fields[PACKED_ALBUMARTIST],
                        .genre = fields[PACKED_GENRE],
                        .composer = fields[PACKED_COMPOSER],
                        .year = p->year,
                        .track = p->track,
                        .disc = p->disc,
                        .disc_total = p->disc_total,
                        .compilation = p->compilation,
                },
        };
}

static const TrackTags *file_tags(const CatalogFile *f) {
        return f->parsed ? &f->tags : &no_tags;
}

static const char *vf_final_path(const Build *b, uint32_t v) {
        return b->vf_final[v] ?: b->vf_path[v];
}

static void build_done(Build *b) {
        free(b->files);
        arena_free(&b->tree_strings);
        arena_free(&b->tag_strings);
        free(b->tag_blocks);
        free(b->tag_block_first_row);
        free(b->order);
        free(b->rep_next);
        free(b->vf_best);
        free(b->vf_dir);
        free(b->vf_album);
        free(b->vf_compilation);
        for (size_t v = 0; v < b->n_vf; v++) {
                if (b->vf_final)
                        free(b->vf_final[v]);
                if (b->vf_album_artist)
                        free(b->vf_album_artist[v]);
        }
        free(b->vf_path);
        arena_free(&b->paths);
        free(b->vf_final);
        free(b->vf_album_artist);
        free(b->replicas);
        free(b->vf_first_rep);
        free(b->vf_size);
        free(b->vf_mtime);
        free(b->node_name);
        free(b->tag_groups);
        free(b->albums);
        free(b->dirs);
        hash_index_done(&b->dir_index);
        hash_index_done(&b->file_index);
        tree_free(b->tree);
        *b = (Build) {};
}

/* Once the paths are rendered, the tags and the album groups have served: the rest of the build and
 * the tree it makes, the largest part of the build's peak, need not sit beside them. */
static void build_drop_tags(Build *b) {
        for (size_t i = 0; i < b->n_files; i++)
                b->files[i].strings = NULL;
        arena_free(&b->tag_strings);
        b->tag_blocks = mfree(b->tag_blocks);
        b->tag_block_first_row = mfree(b->tag_block_first_row);
        b->n_tag_blocks = b->cap_tag_blocks = 0;
        for (size_t v = 0; b->vf_album_artist && v < b->n_vf; v++)
                free(b->vf_album_artist[v]);
        b->vf_album_artist = mfree(b->vf_album_artist);
        b->vf_compilation = mfree(b->vf_compilation);
        b->vf_album = mfree(b->vf_album);
        b->tag_groups = mfree(b->tag_groups);
        b->albums = mfree(b->albums);
        b->n_tag_groups = b->n_albums = b->cap_tag_groups = b->cap_albums = 0;
}

/* After the rendering, of the rows the tree needs only their replicas and the preferred ones' sizes
 * and times: those are taken now, so the rows (the largest part of the build with the rendered
 * paths) are gone before the tree is allocated. */
static int build_take_rows(Build *b) {
        uint32_t k = 0;

        if (!ALLOC_ARRAY(b->replicas, b->n_valid) || !ALLOC_ARRAY(b->vf_first_rep, b->n_vf + 1) ||
            !ALLOC_ARRAY(b->vf_size, b->n_vf) || !ALLOC_ARRAY(b->vf_mtime, b->n_vf))
                return -ENOMEM;
        for (size_t v = 0; v < b->n_vf; v++) {
                const PackedFile *best = b->files + b->vf_best[v];

                b->vf_first_rep[v] = k;
                b->vf_size[v] = best->size;
                b->vf_mtime[v] = best->mtime_ns;
                for (uint32_t i = b->vf_best[v]; i != NONE; i = b->rep_next[i]) {
                        const PackedFile *f = b->files + i;

                        b->replicas[k++] = (TreeReplica) {
                                .origin_id = f->origin_id,
                                .priority = f->priority,
                                .file_id = f->id,
                                .rel_path = (char *) f->rel_path,
                        };
                }
        }
        b->vf_first_rep[b->n_vf] = k;

        b->files = mfree(b->files);
        b->rep_next = mfree(b->rep_next);
        b->vf_best = mfree(b->vf_best);
        b->n_files = b->cap_files = 0;
        return 0;
}

/* Preferred replica first: origin priority (lower wins), origin id, rel_path. */
static int file_rank_cmp(const PackedFile *a, const PackedFile *b) {
        if (a->priority != b->priority)
                return a->priority < b->priority ? -1 : 1;
        if (a->origin_id != b->origin_id)
                return a->origin_id < b->origin_id ? -1 : 1;
        int c = strcmp(a->rel_path, b->rel_path);
        if (c != 0)
                return c;
        return a->id < b->id ? -1 : a->id > b->id;
}

static int order_cmp(const void *x, const void *y, void *userdata) {
        const Build *b = userdata;
        uint32_t i = *(const uint32_t *) x, j = *(const uint32_t *) y;
        int c = file_rank_cmp(b->files + i, b->files + j);
        return c != 0 ? c : (i > j) - (i < j);
}

typedef struct ReplicaKey {
        const char *rel_path;
        uint64_t size;
} ReplicaKey;

static bool replica_eq(const void *ctx, uint32_t v, const void *key) {
        const Build *b = ctx;
        const ReplicaKey *k = key;
        const PackedFile *f = b->files + b->vf_best[v];
        return f->size == k->size && strcmp(f->rel_path, k->rel_path) == 0;
}

static int build_merge_replicas(Build *b) {
        _cleanup_free_ uint32_t *vf_last = NULL;
        HashIndex idx = {};
        int r;

        if (!ALLOC_ARRAY(b->order, b->n_files) || !ALLOC_ARRAY(b->rep_next, b->n_files))
                return -ENOMEM;
        /* tree_builder_add() kept only the rows with a path */
        for (size_t i = 0; i < b->n_files; i++)
                b->order[b->n_valid++] = (uint32_t) i;
        /* the catalog hands them over nearly always in this order already */
        for (size_t k = 1; k < b->n_valid; k++)
                if (order_cmp(b->order + k - 1, b->order + k, b) > 0) {
                        qsort_r(b->order, b->n_valid, sizeof(uint32_t), order_cmp, b);
                        break;
                }

        if (!ALLOC_ARRAY(b->vf_best, b->n_valid) || !ALLOC_ARRAY(vf_last, b->n_valid))
                return -ENOMEM;
        r = hash_index_init(&idx, b->n_valid);
        if (r < 0)
                return r;

        for (size_t k = 0; k < b->n_valid; k++) {
                uint32_t i = b->order[k];
                const PackedFile *f = b->files + i;
                const char *rel_path = f->rel_path;
                ReplicaKey key = { rel_path, f->size };
                uint32_t h = hash_mix(hash_bytes(rel_path, strlen(rel_path)), f->size);
                HashSlot *slot = hash_index_find(&idx, h, &key, replica_eq, b);

                b->rep_next[i] = NONE;
                if (slot->value != 0) {
                        uint32_t v = slot->value - 1;
                        b->rep_next[vf_last[v]] = i;
                        vf_last[v] = i;
                        continue;
                }
                uint32_t v = (uint32_t) b->n_vf++;
                b->vf_best[v] = vf_last[v] = i;
                r = hash_index_fill(&idx, slot, h, v);
                if (r < 0)
                        break;
        }
        hash_index_done(&idx);
        /* the rank order is in the virtual files' numbers now */
        b->order = mfree(b->order);
        return r;
}

static bool tag_group_eq(const void *ctx, uint32_t g, const void *key) {
        const Build *b = ctx;
        const TagGroup *k = key;
        return span_eq(b->tag_groups[g].album, k->album) && span_eq(b->tag_groups[g].artist, k->artist);
}

static bool album_eq(const void *ctx, uint32_t a, const void *key) {
        const Build *b = ctx;
        const AlbumGroup *k = key;
        return span_eq(b->albums[a].album, k->album) && strcmp(b->albums[a].album_artist, k->album_artist) == 0;
}

static int build_group_albums(Build *b) {
        HashIndex idx = {};
        uint32_t *vf_tag_group = NULL;
        int r;

        /* The groups are mostly whole albums, a tenth of the files or fewer: their arrays and
         * indexes grow as needed rather than sized for one group per file. */
        if (!ALLOC_ARRAY(b->vf_album, b->n_vf) || !ALLOC_ARRAY(b->vf_compilation, b->n_vf) ||
            !ALLOC_ARRAY(b->vf_album_artist, b->n_vf) || !ALLOC_ARRAY(vf_tag_group, b->n_vf))
                return -ENOMEM;

        /* tag groups: which albums are compilations */
        r = hash_index_init(&idx, b->n_vf / 8);
        if (r < 0)
                goto finish;
        for (size_t v = 0; v < b->n_vf; v++) {
                CatalogFile best;
                packed_view(b->files + b->vf_best[v], &best);
                const TrackTags *tags = file_tags(&best);
                TagGroup key = { .album = span_trimmed(tags->album), .artist = span_trimmed(tags->albumartist) };

                vf_tag_group[v] = NONE;
                if (key.album.len == 0)
                        continue;
                if (key.artist.len == 0)
                        key.artist = span_trimmed(tags->artist);

                uint32_t h = hash_mix(hash_bytes(key.album.p, key.album.len), hash_bytes(key.artist.p, key.artist.len));
                HashSlot *slot = hash_index_find(&idx, h, &key, tag_group_eq, b);
                uint32_t g;
                if (slot->value != 0)
                        g = slot->value - 1;
                else {
                        if (GREEDY_REALLOC(b->tag_groups, b->cap_tag_groups, b->n_tag_groups + 1) < 0) {
                                r = -ENOMEM;
                                goto finish;
                        }
                        g = (uint32_t) b->n_tag_groups++;
                        b->tag_groups[g] = key;
                        r = hash_index_fill(&idx, slot, h, g);
                        if (r < 0)
                                goto finish;
                }
                b->tag_groups[g].compilation |= tags->compilation;
                vf_tag_group[v] = g;
        }
        hash_index_done(&idx);

        /* albums: which are multi-disc */
        r = hash_index_init(&idx, b->n_vf / 8);
        if (r < 0)
                goto finish;
        const char *aa = NULL;
        Span prev_albumartist = {}, prev_artist = {};
        bool prev_compilation = false;
        for (size_t v = 0; v < b->n_vf; v++) {
                CatalogFile best;
                packed_view(b->files + b->vf_best[v], &best);
                const TrackTags *tags = file_tags(&best);
                Span albumartist = span_trimmed(tags->albumartist), artist = span_trimmed(tags->artist);

                b->vf_compilation[v] = vf_tag_group[v] != NONE ? b->tag_groups[vf_tag_group[v]].compilation
                                                               : tags->compilation;
                /* neighbours are mostly tracks of one album: render the album artist once for them */
                if (!aa || b->vf_compilation[v] != prev_compilation || !span_eq(albumartist, prev_albumartist) ||
                    !span_eq(artist, prev_artist)) {
                        r = template_album_artist(tags, b->vf_compilation[v], &b->vf_album_artist[v]);
                        if (r < 0)
                                goto finish;
                        aa = b->vf_album_artist[v];
                        prev_albumartist = albumartist;
                        prev_artist = artist;
                        prev_compilation = b->vf_compilation[v];
                }

                AlbumGroup key = { .album_artist = aa, .album = span_trimmed(tags->album) };
                uint32_t h = hash_mix(hash_bytes(key.album.p, key.album.len),
                                      hash_bytes(key.album_artist, strlen(key.album_artist)));
                HashSlot *slot = hash_index_find(&idx, h, &key, album_eq, b);
                uint32_t a;
                if (slot->value != 0)
                        a = slot->value - 1;
                else {
                        if (GREEDY_REALLOC(b->albums, b->cap_albums, b->n_albums + 1) < 0) {
                                r = -ENOMEM;
                                goto finish;
                        }
                        a = (uint32_t) b->n_albums++;
                        b->albums[a] = key;
                        r = hash_index_fill(&idx, slot, h, a);
                        if (r < 0)
                                goto finish;
                }
                b->albums[a].multi_disc |= tags->disc > 1 || tags->disc_total > 1;
                b->vf_album[v] = a;
        }
        /* The rendering needs only whether each album is multi-disc. */
        b->tag_groups = mfree(b->tag_groups);
        b->n_tag_groups = b->cap_tag_groups = 0;
        for (size_t v = 0; v < b->n_vf; v++)
                free(b->vf_album_artist[v]);
        b->vf_album_artist = mfree(b->vf_album_artist);
        for (size_t a = 0; a < b->n_albums; a++)
                b->albums[a].album_artist = NULL;       /* freed: the rendering needs only multi_disc */
        AlbumGroup *albums = reallocarray(b->albums, b->n_albums ?: 1, sizeof *albums);
        if (albums) {
                b->albums = albums;
                b->cap_albums = b->n_albums;
        }
        r = 0;
finish:
        hash_index_done(&idx);
        free(vf_tag_group);
        return r;
}

/* Frees block k of the tag strings (its rows' strings must not be read again). */
static void build_free_tag_block(Build *b, size_t k) {
        for (ArenaBlock **p = &b->tag_strings.head; *p; p = &(*p)->next)
                if (*p == b->tag_blocks[k]) {
                        *p = (*p)->next;
                        free(b->tag_blocks[k]);
                        b->tag_blocks[k] = NULL;
                        return;
                }
}

static int tag_block_last_cmp(const void *x, const void *y, void *userdata) {
        const uint32_t *last = userdata;
        uint32_t a = last[*(const uint32_t *) x], c = last[*(const uint32_t *) y];
        return (a > c) - (a < c);
}

/* The rendering reads the tags of each virtual file's preferred row once, nearly always in the order
 * the rows came in: a block of tag strings is freed as soon as the last of its rows is rendered, so
 * the rendered paths mostly take the place of the tags rather than come on top of them. Returns, for
 * the blocks sorted by the virtual file that reads them last, their numbers (*ret_order) and those
 * last readers (*ret_last; NONE, sorted last: no reader, freed at once). */
static int build_tag_block_plan(Build *b, uint32_t **ret_order, uint32_t **ret_last) {
        _cleanup_free_ uint32_t *order = NULL, *last = NULL;

        if (!ALLOC_ARRAY(order, b->n_tag_blocks) || !ALLOC_ARRAY(last, b->n_tag_blocks))
                return -ENOMEM;
        for (size_t k = 0; k < b->n_tag_blocks; k++) {
                order[k] = (uint32_t) k;
                last[k] = NONE;
        }
        for (size_t v = 0; v < b->n_vf; v++) {
                uint32_t i = b->vf_best[v];
                size_t lo = 0, hi = b->n_tag_blocks;

                if (!b->files[i].strings)
                        continue;
                /* the last block starting at or before row i */
                while (hi - lo > 1) {
                        size_t mid = lo + (hi - lo) / 2;
                        if (b->tag_block_first_row[mid] <= i)
                                lo = mid;
                        else
                                hi = mid;
                }
                last[lo] = (uint32_t) v;
        }
        for (size_t k = 0; k < b->n_tag_blocks; k++)
                if (last[k] == NONE)
                        build_free_tag_block(b, k);
        qsort_r(order, b->n_tag_blocks, sizeof *order, tag_block_last_cmp, last);
        *ret_order = TAKE_PTR(order);
        *ret_last = TAKE_PTR(last);
        return 0;
}

static int build_render(Build *b, const Template *tpl) {
        _cleanup_free_ char *stem = NULL;
        _cleanup_free_ uint32_t *block_order = NULL, *block_last = NULL;
        size_t stem_cap = 0, next_block = 0;
        int r;

        if (!ALLOC_ARRAY(b->vf_path, b->n_vf))
                return -ENOMEM;
        r = build_tag_block_plan(b, &block_order, &block_last);
        if (r < 0)
                return r;

        for (size_t v = 0; v < b->n_vf; v++) {
                CatalogFile view;
                packed_view(b->files + b->vf_best[v], &view);
                const CatalogFile *f = &view;
                const char *base = strrchr(f->rel_path, '/');
                base = base ? base + 1 : f->rel_path;
                const char *dot = strrchr(base, '.');
                size_t stem_len = dot && dot != base ? (size_t) (dot - base) : strlen(base);
                char ext[16] = "";

                if (stem_len + 1 > stem_cap) {
                        size_t cap = stem_len + 64;
                        char *n = realloc(stem, cap);
                        if (!n)
                                return -ENOMEM;
                        stem = n;
                        stem_cap = cap;
                }
                memcpy(stem, base, stem_len);
                stem[stem_len] = '\0';

                if (f->format && f->format[0])
                        snprintf(ext, sizeof ext, "%s", f->format);
                else if (dot && dot != base && strlen(dot + 1) < sizeof ext)
                        for (size_t k = 0; dot[k + 1]; k++)
                                ext[k] = (char) (dot[k + 1] >= 'A' && dot[k + 1] <= 'Z' ? dot[k + 1] + 32 : dot[k + 1]);

                TemplateInput in = {
                        .tags = file_tags(f),
                        .stem = stem,
                        .ext = ext,
                        .multi_disc = b->albums[b->vf_album[v]].multi_disc,
                        .compilation = b->vf_compilation[v],
                };
                _cleanup_free_ char *path = NULL;
                r = template_render(tpl, &in, &path);
                if (r < 0)
                        return log_error_errno(r, "Failed to render the path of %s: %m", f->rel_path);
                /* the renderer's buffer is more than twice the path as a rule */
                b->vf_path[v] = arena_strndup(&b->paths, path, strlen(path));
                if (!b->vf_path[v])
                        return -ENOMEM;

                for (; next_block < b->n_tag_blocks && block_last[block_order[next_block]] == v; next_block++)
                        build_free_tag_block(b, block_order[next_block]);
        }
        return 0;
}

static bool dir_eq(const void *ctx, uint32_t d, const void *key) {
        const Build *b = ctx;
        const Span *k = key;
        return span_eq((Span) { b->dirs[d].path, b->dirs[d].len }, *k);
}

static int build_dirs(Build *b) {
        int r;

        b->cap_dirs = 64;
        if (!ALLOC_ARRAY(b->dirs, b->cap_dirs) || !ALLOC_ARRAY(b->vf_dir, b->n_vf))
                return -ENOMEM;
        r = hash_index_init(&b->dir_index, b->n_vf / 4 + 16);
        if (r < 0)
                return r;

        /* the root: the empty path */
        Span root = { "", 0 };
        uint32_t h = hash_bytes("", 0);
        r = hash_index_fill(&b->dir_index, hash_index_find(&b->dir_index, h, &root, dir_eq, b), h, 0);
        if (r < 0)
                return r;
        b->dirs[b->n_dirs++] = (DirInfo) { .path = "", .len = 0, .parent = 0 };

        for (size_t v = 0; v < b->n_vf; v++) {
                const char *p = b->vf_path[v];
                uint32_t parent = 0;

                for (const char *slash = strchr(p, '/'); slash; slash = strchr(slash + 1, '/')) {
                        Span key = { p, (size_t) (slash - p) };

                        h = hash_bytes(key.p, key.len);
                        HashSlot *slot = hash_index_find(&b->dir_index, h, &key, dir_eq, b);
                        if (slot->value != 0) {
                                parent = slot->value - 1;
                                continue;
                        }
                        if (GREEDY_REALLOC(b->dirs, b->cap_dirs, b->n_dirs + 1) < 0)
                                return -ENOMEM;
                        if (b->n_dirs >= UINT32_MAX - 1 || key.len > UINT32_MAX)
                                return -E2BIG;
                        uint32_t d = (uint32_t) b->n_dirs++;
                        b->dirs[d] = (DirInfo) { .path = p, .len = (uint32_t) key.len, .parent = parent };
                        r = hash_index_fill(&b->dir_index, slot, h, d);
                        if (r < 0)
                                return r;
                        parent = d;
                }
                b->vf_dir[v] = parent;
        }
        return 0;
}

static bool file_eq(const void *ctx, uint32_t v, const void *key) {
        const Build *b = ctx;
        const Span *k = key;
        const char *p = vf_final_path(b, v);
        return strncmp(p, k->p, k->len) == 0 && p[k->len] == '\0';
}

static int vf_collision_cmp(const void *x, const void *y, void *userdata) {
        const Build *b = userdata;
        uint32_t v = *(const uint32_t *) x, w = *(const uint32_t *) y;
        int c = strcmp(b->vf_path[v], b->vf_path[w]);
        if (c != 0)
                return c;
        /* virtual files are numbered in rank order */
        return (v > w) - (v < w);
}

/* "dir/name.ext" -> "dir/name (n).ext", the file name kept within NAME_MAX. */
static char *path_with_suffix(const char *path, unsigned n) {
        const char *name = strrchr(path, '/');
        name = name ? name + 1 : path;
        const char *dot = strrchr(name, '.');
        size_t dir_len = (size_t) (name - path), name_len = strlen(name);
        size_t ext_len = dot && dot != name ? name_len - (size_t) (dot - name) : 0;
        char suffix[16];
        int s = snprintf(suffix, sizeof suffix, " (%u)", n);

        if (ext_len > EXT_KEEP_MAX)
                ext_len = 0;
        size_t stem_len = name_len - ext_len;
        if (stem_len + (size_t) s + ext_len > NAME_MAX) {
                stem_len = NAME_MAX - (size_t) s - ext_len;
                while (stem_len > 0 && ((unsigned char) name[stem_len] & 0xc0) == 0x80)
                        stem_len--;
        }

        char *r = malloc(dir_len + stem_len + (size_t) s + ext_len + 1);
        if (!r)
                return NULL;
        char *e = mempcpy(r, path, dir_len);
        e = mempcpy(e, name, stem_len);
        e = mempcpy(e, suffix, (size_t) s);
        e = mempcpy(e, name + name_len - ext_len, ext_len);
        *e = '\0';
        return r;
}

static bool path_taken(const Build *b, const char *p, uint32_t h) {
        Span key = { p, strlen(p) };
        return hash_index_get(&b->dir_index, h, &key, dir_eq, b) != NONE ||
               hash_index_get(&b->file_index, h, &key, file_eq, b) != NONE;
}

static int build_names(Build *b) {
        _cleanup_free_ uint32_t *sorted = NULL, *losers = NULL;
        size_t n_losers = 0;
        int r;

        if (!ALLOC_ARRAY(b->vf_final, b->n_vf) || !ALLOC_ARRAY(sorted, b->n_vf) || !ALLOC_ARRAY(losers, b->n_vf))
                return -ENOMEM;
        for (size_t v = 0; v < b->n_vf; v++)
                sorted[v] = (uint32_t) v;
        qsort_r(sorted, b->n_vf, sizeof(uint32_t), vf_collision_cmp, b);

        r = hash_index_init(&b->file_index, b->n_vf);
        if (r < 0)
                return r;

        /* First the names that need no suffix, so a suffixed name can never take one of them. */
        for (size_t k = 0; k < b->n_vf; k++) {
                uint32_t v = sorted[k];
                const char *p = b->vf_path[v];
                Span key = { p, strlen(p) };
                uint32_t h = hash_bytes(key.p, key.len);

                if (hash_index_get(&b->dir_index, h, &key, dir_eq, b) != NONE) {
                        losers[n_losers++] = v;         /* a directory keeps the name */
                        continue;
                }
                HashSlot *slot = hash_index_find(&b->file_index, h, &key, file_eq, b);
                if (slot->value != 0) {
                        losers[n_losers++] = v;
                        continue;
                }
                r = hash_index_fill(&b->file_index, slot, h, v);
                if (r < 0)
                        return r;
        }

        const char *group = NULL;
        unsigned next = 2;
        for (size_t k = 0; k < n_losers; k++) {
                uint32_t v = losers[k];

                if (!group || strcmp(group, b->vf_path[v]) != 0) {
                        group = b->vf_path[v];
                        next = 2;
                }
                for (;; next++) {
                        if (next == 0)
                                return -E2BIG;
                        _cleanup_free_ char *candidate = path_with_suffix(b->vf_path[v], next);
                        if (!candidate)
                                return -ENOMEM;
                        uint32_t h = hash_bytes(candidate, strlen(candidate));
                        if (path_taken(b, candidate, h))
                                continue;
                        const TreeReplica *best = b->replicas + b->vf_first_rep[v];
                        log_debug("Two files render to %s, the one from origin %" PRIi64 " path %s is listed as %s",
                                  b->vf_path[v], best->origin_id, best->rel_path, candidate);
                        Span key = { candidate, strlen(candidate) };
                        HashSlot *slot = hash_index_find(&b->file_index, h, &key, file_eq, b);
                        b->vf_final[v] = TAKE_PTR(candidate);
                        r = hash_index_fill(&b->file_index, slot, h, v);
                        if (r < 0)
                                return r;
                        next++;
                        break;
                }
        }
        return 0;
}

static int child_name_cmp(const void *x, const void *y) {
        const TreeNode *a = *(TreeNode *const *) x, *c = *(TreeNode *const *) y;
        return strcmp(a->name, c->name);
}

/* The nodes' names go to the tree's strings now: the rendered paths and their indexes are done with
 * before the nodes are allocated (inode numbers are then looked up through the tree's children). */
static int build_node_names(Build *b) {
        if (!ALLOC_ARRAY(b->node_name, b->n_dirs + b->n_vf))
                return -ENOMEM;
        for (size_t d = 0; d < b->n_dirs; d++) {
                const DirInfo *di = b->dirs + d;
                const char *name = memrchr(di->path, '/', di->len);
                name = name ? name + 1 : di->path;

                b->node_name[d] = arena_strndup(&b->tree_strings, name, di->len - (size_t) (name - di->path));
                if (!b->node_name[d])
                        return -ENOMEM;
        }
        for (size_t v = 0; v < b->n_vf; v++) {
                const char *path = vf_final_path(b, (uint32_t) v);
                const char *name = strrchr(path, '/');
                name = name ? name + 1 : path;

                b->node_name[b->n_dirs + v] = arena_strndup(&b->tree_strings, name, strlen(name));
                if (!b->node_name[b->n_dirs + v])
                        return -ENOMEM;
        }

        /* the directories' paths pointed into the rendered paths */
        for (size_t d = 0; d < b->n_dirs; d++)
                b->dirs[d].path = NULL;
        hash_index_done(&b->dir_index);
        hash_index_done(&b->file_index);
        for (size_t v = 0; v < b->n_vf; v++)
                free(b->vf_final[v]);
        b->vf_final = mfree(b->vf_final);
        b->vf_path = mfree(b->vf_path);
        arena_free(&b->paths);
        return 0;
}

static int build_nodes(Build *b) {
        _cleanup_free_ uint32_t *fill = NULL;
        Tree *t;
        int r;

        r = tree_alloc(b->n_dirs + b->n_vf, true, &b->tree);
        if (r < 0)
                return r;
        t = b->tree;
        t->n_files = b->n_vf;
        /* the replicas point at the rows' rel_paths, the nodes at their names: all in tree_strings */
        t->strings = b->tree_strings;
        b->tree_strings = (Arena) {};
        t->replicas = TAKE_PTR(b->replicas);
        if (!ALLOC_ARRAY(t->children, t->n_nodes) || !ALLOC_ARRAY(fill, b->n_dirs))
                return -ENOMEM;

        for (size_t d = 0; d < b->n_dirs; d++) {
                t->nodes[d].is_dir = true;
                t->nodes[d].mtime_ns = INT64_MIN;
                t->nodes[d].name = (char *) b->node_name[d];
                if (d > 0)
                        t->nodes[b->dirs[d].parent].n_children++;
        }

        for (size_t v = 0; v < b->n_vf; v++) {
                TreeNode *n = t->nodes + b->n_dirs + v;

                n->name = (char *) b->node_name[b->n_dirs + v];
                n->size = b->vf_size[v];
                n->mtime_ns = b->vf_mtime[v];
                n->replicas = t->replicas + b->vf_first_rep[v];
                uint32_t n_replicas = b->vf_first_rep[v + 1] - b->vf_first_rep[v];
                if (n_replicas > TREE_REPLICAS_MAX) {
                        log_warning("%s is on %" PRIu32 " origins, listing the first %u as its replicas", n->name,
                                    n_replicas, TREE_REPLICAS_MAX);
                        n_replicas = TREE_REPLICAS_MAX;
                }
                n->n_replicas = (uint16_t) n_replicas;
                t->nodes[b->vf_dir[v]].n_children++;

                /* a directory's mtime is the newest below it */
                for (uint32_t d = b->vf_dir[v];; d = b->dirs[d].parent) {
                        if (t->nodes[d].mtime_ns >= n->mtime_ns)
                                break;
                        t->nodes[d].mtime_ns = n->mtime_ns;
                        if (d == 0)
                                break;
                }
        }
        b->node_name = mfree(b->node_name);
        b->vf_first_rep = mfree(b->vf_first_rep);
        b->vf_size = mfree(b->vf_size);
        b->vf_mtime = mfree(b->vf_mtime);

        for (size_t d = 0; d < b->n_dirs; d++)
                if (t->nodes[d].mtime_ns == INT64_MIN)
                        t->nodes[d].mtime_ns = 0;       /* the root of an empty tree */

        TreeNode **slice = t->children;
        for (size_t d = 0; d < b->n_dirs; d++) {
                t->nodes[d].children = t->nodes[d].n_children > 0 ? slice : NULL;
                slice += t->nodes[d].n_children;
        }
        for (size_t d = 1; d < b->n_dirs; d++) {
                uint32_t p = b->dirs[d].parent;
                t->nodes[p].children[fill[p]++] = t->nodes + d;
        }
        for (size_t v = 0; v < b->n_vf; v++) {
                uint32_t p = b->vf_dir[v];
                t->nodes[p].children[fill[p]++] = t->nodes + b->n_dirs + v;
        }
        for (size_t d = 0; d < b->n_dirs; d++)
                if (t->nodes[d].n_children > 1)
                        qsort(t->nodes[d].children, t->nodes[d].n_children, sizeof(TreeNode *), child_name_cmp);
        return 0;
}

/* The node at path ("Artist/Album/01 - x.flac", the root at ""), walking down from the root. */
static const TreeNode *build_node_at(const Tree *t, const char *path) {
        const TreeNode *n = t->nodes;

        for (const char *p = path; *p;) {
                const char *slash = strchr(p, '/');
                size_t len = slash ? (size_t) (slash - p) : strlen(p);

                if (!n->is_dir)
                        return NULL;
                n = dir_find_child_n(n, p, len);
                if (!n)
                        return NULL;
                if (!slash)
                        break;
                p = slash + 1;
                if (!*p)
                        return NULL;    /* a trailing slash names no node */
        }
        return n;
}

/* Node i's path, newly allocated: its names up the parents (the nodes' parent inodes are not set yet). */
static const TreeNode *build_parent(const void *ctx, const TreeNode *n) {
        const Build *b = ctx;
        size_t i = (size_t) (n - b->tree->nodes);

        return b->tree->nodes + (i < b->n_dirs ? b->dirs[i].parent : b->vf_dir[i - b->n_dirs]);
}

/* Node i's path, before the tree's inode numbers (other than the root's) are all known. */
static char *build_node_path(const Build *b, size_t i) {
        return node_path_up(b->tree, b->tree->nodes + i, build_parent, b);
}

static int node_id_cb(const char *path, int64_t id, void *userdata) {
        Build *b = userdata;
        const TreeNode *n;

        if (!path[0])
                return 0;       /* the root is always TREE_ROOT_INO */
        n = build_node_at(b->tree, path);
        if (!n)
                return 0;
        if (id <= TREE_ROOT_INO)
                return log_error_errno(-EBADMSG, "Catalog gives %s the inode number %" PRIi64 ", refusing", path, id);
        b->tree->nodes[n - b->tree->nodes].ino = (uint64_t) id;
        return 0;
}

static int build_inodes(Build *b, Catalog *catalog) {
        Tree *t = b->tree;
        _cleanup_free_ char **paths = NULL;
        _cleanup_free_ int64_t *ids = NULL;
        _cleanup_free_ uint32_t *which = NULL;
        size_t n_missing = 0;
        int r;

        t->nodes[0].ino = TREE_ROOT_INO;
        r = catalog_nodes_foreach(catalog, node_id_cb, b);
        if (r < 0)
                return log_error_errno(r, "Failed to read inode numbers from the catalog: %m");

        for (size_t i = 1; i < t->n_nodes; i++)
                n_missing += t->nodes[i].ino == 0;
        if (n_missing > 0) {
                if (!ALLOC_ARRAY(paths, n_missing) || !ALLOC_ARRAY(ids, n_missing) || !ALLOC_ARRAY(which, n_missing))
                        return -ENOMEM;
                size_t k = 0;
                for (size_t i = 1; i < t->n_nodes; i++) {
                        if (t->nodes[i].ino != 0)
                                continue;
                        paths[k] = build_node_path(b, i);
                        if (!paths[k]) {
                                r = -ENOMEM;
                                goto finish;
                        }
                        which[k++] = (uint32_t) i;
                }
                r = catalog_nodes_assign(catalog, (const char **) paths, n_missing, ids);
                if (r < 0) {
                        log_error_errno(r, "Failed to assign inode numbers to %zu new paths: %m", n_missing);
                        goto finish;
                }
                for (k = 0; k < n_missing; k++) {
                        if (ids[k] <= TREE_ROOT_INO) {
                                r = log_error_errno(-EBADMSG, "Catalog assigned %s the inode number %" PRIi64 ", refusing",
                                                    paths[k], ids[k]);
                                goto finish;
                        }
                        t->nodes[which[k]].ino = (uint64_t) ids[k];
                }
        }

        for (size_t d = 0; d < b->n_dirs; d++)
                t->nodes[d].parent = t->nodes[b->dirs[d].parent].ino;
        for (size_t v = 0; v < b->n_vf; v++)
                t->nodes[b->n_dirs + v].parent = t->nodes[b->vf_dir[v]].ino;
        r = tree_index_inodes(t);

finish:
        for (size_t k = 0; paths && k < n_missing; k++)
                free(paths[k]);
        return r;
}


/* After a pass that freed a large part of the build: glibc keeps the freed pages, and what the next
 * passes allocate mostly does not fit in the holes, so it would come on top of them (at 100k tracks
 * ~5 MB of the build's peak). A trim costs 1-2 ms. */
static void build_release_freed(void) {
        (void) malloc_trim(0);
}

int tree_builder_new(TreeBuilder **ret) {
        if (!ret)
                return -EINVAL;
        *ret = calloc(1, sizeof(TreeBuilder));
        return *ret ? 0 : -ENOMEM;
}

void tree_builder_free(TreeBuilder *tb) {
        if (!tb)
                return;
        build_done(tb);
        free(tb);
}

int tree_builder_add(TreeBuilder *tb, const CatalogFile *f) {
        const char *fields[_PACKED_MAX] = {};
        size_t len;
        char *p;

        if (!tb || !f)
                return -EINVAL;
        if (!f->rel_path || !f->rel_path[0]) {
                log_warning("Catalog file %" PRIi64 " has no path, not listed", f->id);
                return 0;
        }
        if (tb->n_files >= UINT32_MAX / 2)
                return -E2BIG;

        fields[PACKED_FORMAT] = f->format;
        if (f->parsed) {
                fields[PACKED_TITLE] = f->tags.title;
                fields[PACKED_ARTIST] = f->tags.artist;
                fields[PACKED_ALBUM] = f->tags.album;
                fields[PACKED_ALBUMARTIST] = f->tags.albumartist;
                fields[PACKED_GENRE] = f->tags.genre;
                fields[PACKED_COMPOSER] = f->tags.composer;
        }

        PackedFile row = {
                .id = f->id,
                .origin_id = f->origin_id,
                .mtime_ns = f->mtime_ns,
                .size = f->size,
                .priority = f->origin_priority,
                .parsed = f->parsed,
        };
        if (f->parsed) {
                row.year = f->tags.year;
                row.track = f->tags.track;
                row.disc = f->tags.disc;
                row.disc_total = f->tags.disc_total;
                row.compilation = f->tags.compilation;
        }
        len = 0;
        for (int k = 0; k < _PACKED_MAX; k++)
                if (fields[k]) {
                        row.present |= 1u << k;
                        len += strlen(fields[k]) + 1;
                }

        if (GREEDY_REALLOC(tb->files, tb->cap_files, tb->n_files + 1) < 0)
                return -ENOMEM;

        row.rel_path = arena_strndup(&tb->tree_strings, f->rel_path, strlen(f->rel_path));
        if (!row.rel_path)
                return -ENOMEM;
        if (len > 0) {
                /* Two arrays, one count: each grows from the same capacity, which moves once both have. */
                size_t cap_blocks = tb->cap_tag_blocks, cap_first = tb->cap_tag_blocks;
                if (greedy_realloc((void **) &tb->tag_blocks, &cap_blocks, tb->n_tag_blocks + 1, sizeof *tb->tag_blocks) < 0 ||
                    greedy_realloc((void **) &tb->tag_block_first_row, &cap_first, tb->n_tag_blocks + 1,
                                   sizeof *tb->tag_block_first_row) < 0)
                        return -ENOMEM;
                tb->cap_tag_blocks = cap_blocks < cap_first ? cap_blocks : cap_first;
                ArenaBlock *head = tb->tag_strings.head;
                p = arena_alloc(&tb->tag_strings, len);
                if (!p)
                        return -ENOMEM;
                if (tb->tag_strings.head != head) {
                        tb->tag_blocks[tb->n_tag_blocks] = tb->tag_strings.head;
                        tb->tag_block_first_row[tb->n_tag_blocks++] = (uint32_t) tb->n_files;
                }
                row.strings = p;
                for (int k = 0; k < _PACKED_MAX; k++)
                        if (fields[k])
                                p = stpcpy(p, fields[k]) + 1;
        }

        tb->files[tb->n_files++] = row;
        return 0;
}

int tree_builder_finish(TreeBuilder *tb, Catalog *catalog, const Template *tpl, Tree **ret) {
        size_t n_rows;
        int r;

        if (!tb)
                return -EINVAL;
        n_rows = tb->n_files;
        r = FAILPOINT(TREE_PUBLISH);
        if (r < 0)
                goto finish;
        if (!catalog || !tpl || !ret || tb->tree || tb->order) {
                r = -EINVAL;
                goto finish;
        }

        /* The rows' array grew by doubling: up to half of it is slack, through the build's peak. */
        if (tb->n_files > 0 && tb->n_files < tb->cap_files) {
                PackedFile *files = reallocarray(tb->files, tb->n_files, sizeof *files);
                if (files) {
                        tb->files = files;
                        tb->cap_files = tb->n_files;
                }
        }
        r = build_merge_replicas(tb);
        if (r < 0)
                goto finish;
        build_release_freed();
        r = build_group_albums(tb);
        if (r < 0)
                goto finish;
        build_release_freed();
        r = build_render(tb, tpl);
        if (r < 0)
                goto finish;
        build_drop_tags(tb);
        r = build_take_rows(tb);
        if (r < 0)
                goto finish;
        build_release_freed();
        r = build_dirs(tb);
        if (r < 0)
                goto finish;
        r = build_names(tb);
        if (r < 0)
                goto finish;
        r = build_node_names(tb);
        if (r < 0)
                goto finish;
        build_release_freed();
        r = build_nodes(tb);
        if (r < 0)
                goto finish;
        r = build_inodes(tb, catalog);
        if (r < 0)
                goto finish;
        r = tree_index_files(tb->tree);
        if (r < 0)
                goto finish;

        log_debug("Tree built: %zu files from %zu catalog rows, %zu directories, %zu albums",
                  tb->n_vf, tb->n_valid, tb->n_dirs, tb->n_albums);
        *ret = TAKE_PTR(tb->tree);
finish:
        if (r == -ENOMEM)
                log_error_errno(r, "Out of memory building the tree of %zu files", n_rows);
        build_done(tb);
        return r;
}

int tree_build(Catalog *catalog, const Template *tpl, const CatalogFile *files, size_t n_files, Tree **ret) {
        TreeBuilder *tb = NULL;
        int r;

        if (!catalog || !tpl || (!files && n_files > 0) || !ret)
                return -EINVAL;
        r = tree_builder_new(&tb);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_files; i++) {
                r = tree_builder_add(tb, files + i);
                if (r < 0) {
                        tree_builder_free(tb);
                        return r;
                }
        }
        r = tree_builder_finish(tb, catalog, tpl, ret);
        tree_builder_free(tb);
        return r;
}

/* ---- differences ---- */

static bool file_changed(const TreeNode *a, const TreeNode *b) {
        return a->size != b->size || a->mtime_ns != b->mtime_ns;
}

void tree_diff(const Tree *old, const Tree *new, tree_entry_fn entry_fn, tree_inode_fn inode_fn, void *userdata) {
        if (!old || !new)
                return;

        for (size_t i = 0; i < old->n_nodes; i++) {
                const TreeNode *od = old->nodes + i, *nd;
                bool listing_changed = false;

                if (!od->is_dir)
                        continue;
                /* A directory that is gone is reported as an entry of its parent, which is enough:
                 * dropping it drops everything the kernel knows below it. */
                nd = tree_get(new, od->ino);
                if (!nd || !nd->is_dir || nd->parent != od->parent || strcmp(nd->name, od->name) != 0)
                        continue;

                size_t a = 0, z = 0;
                while (a < od->n_children || z < nd->n_children) {
                        const TreeNode *oc = a < od->n_children ? od->children[a] : NULL;
                        const TreeNode *nc = z < nd->n_children ? nd->children[z] : NULL;
                        int c = !oc ? 1 : !nc ? -1 : strcmp(oc->name, nc->name);

                        if (c != 0) {
                                /* removed (c < 0) or added (c > 0): the kernel may hold the entry
                                 * or a negative entry for the name */
                                const TreeNode *e = c < 0 ? oc : nc;
                                if (entry_fn)
                                        entry_fn(od->ino, e->name, userdata);
                                listing_changed = true;
                                if (c < 0)
                                        a++;
                                else
                                        z++;
                                continue;
                        }

                        if (oc->ino != nc->ino || oc->is_dir != nc->is_dir) {
                                if (entry_fn)
                                        entry_fn(od->ino, oc->name, userdata);
                                if (oc->ino == nc->ino && inode_fn)
                                        inode_fn(oc->ino, userdata);
                                listing_changed = true;
                        } else if (!oc->is_dir && file_changed(oc, nc)) {
                                if (entry_fn)
                                        entry_fn(od->ino, oc->name, userdata);
                                if (inode_fn)
                                        inode_fn(oc->ino, userdata);
                        }
                        a++;
                        z++;
                }

                if ((listing_changed || od->mtime_ns != nd->mtime_ns) && inode_fn)
                        inode_fn(od->ino, userdata);
        }
}

/* ---- the published tree ---- */

struct TreeStore {
        pthread_mutex_t lock;
        Tree *current;
};

int tree_store_new(Tree *initial, TreeStore **ret) {
        TreeStore *s;
        int r;

        if (!ret) {
                tree_unref(initial);
                return -EINVAL;
        }
        s = calloc(1, sizeof(TreeStore));
        if (!s) {
                tree_unref(initial);
                return -ENOMEM;
        }
        if (!initial) {
                r = tree_new_empty(&initial);
                if (r < 0) {
                        free(s);
                        return r;
                }
        }
        r = pthread_mutex_init(&s->lock, NULL);
        if (r != 0) {
                tree_unref(initial);
                free(s);
                return -r;
        }
        s->current = initial;
        *ret = s;
        return 0;
}

void tree_store_free(TreeStore *s) {
        if (!s)
                return;
        tree_unref(s->current);
        pthread_mutex_destroy(&s->lock);
        free(s);
}

Tree *tree_store_get(TreeStore *s) {
        Tree *t;

        if (!s)
                return NULL;
        pthread_mutex_lock(&s->lock);
        t = tree_ref(s->current);
        pthread_mutex_unlock(&s->lock);
        return t;
}

Tree *tree_store_publish(TreeStore *s, Tree *t) {
        Tree *old;

        if (!s || !t)
                return t;       /* nothing published: hand the reference back to be dropped */
        pthread_mutex_lock(&s->lock);
        old = s->current;
        s->current = t;
        pthread_mutex_unlock(&s->lock);
        return old;
}
