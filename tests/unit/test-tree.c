/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The virtual tree, built from a real catalog in a temp dir: replicas and collisions (D3), stable
 * inode numbers (D4), lookup, the album rules, diffs for the kernel cache, and reference counting. */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include "catalog.h"
#include "failpoint.h"
#include "macro.h"
#include "tree-internal.h"
#include "tree-snapshot.h"

#define DEFAULT_TEMPLATE "{albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}"

typedef struct Spec {
        const char *origin;     /* "a" (priority 10) or "b" (priority 20) unless set otherwise */
        const char *rel_path;
        uint64_t size;
        int64_t mtime_ns;
        const char *artist, *album, *albumartist, *title;
        int year, track, disc, disc_total;
        bool compilation;
        bool unparsed;
        bool no_format;         /* the extension then comes from rel_path */
} Spec;

typedef struct Fixture {
        char dir[64];
        char db[128];
        Catalog *catalog;
        Template *tpl;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-tree-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->db, sizeof f->db, "%s/catalog.db", f->dir);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        char *reason = NULL;
        assert_int_equal(template_parse(DEFAULT_TEMPLATE, &f->tpl, &reason), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[256];

        catalog_close(f->catalog);
        template_free(f->tpl);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

static int64_t origin_id(Fixture *f, const char *name, unsigned priority) {
        int64_t id = 0;
        char url[64];
        snprintf(url, sizeof url, "file:///srv/%s", name);
        assert_int_equal(catalog_origin_ensure(f->catalog, name, url, priority, &id), 0);
        assert_true(id > 0);
        return id;
}

static unsigned default_priority(const char *origin) {
        return strcmp(origin, "a") == 0 ? 10 : 20;
}

/* Makes the catalog's files of the given origins exactly the specs (a full scan of each). */
static void sync_origins(Fixture *f, const char *const *origins, const Spec *specs, size_t n) {
        for (const char *const *o = origins; *o; o++) {
                int64_t id = origin_id(f, *o, default_priority(*o)), gen = 0;
                CatalogBatch *b = NULL;

                assert_int_equal(catalog_scan_begin(f->catalog, id, &gen), 0);
                assert_int_equal(catalog_batch_begin(f->catalog, &b), 0);
                for (size_t i = 0; i < n; i++) {
                        const Spec *s = specs + i;
                        if (strcmp(s->origin, *o) != 0)
                                continue;
                        CatalogFile cf = {
                                .origin_id = id,
                                .rel_path = (char *) s->rel_path,
                                .size = s->size,
                                .mtime_ns = s->mtime_ns,
                                .format = s->no_format ? NULL : (char *) "flac",
                                .parsed = !s->unparsed,
                                .tags = {
                                        .title = (char *) s->title, .artist = (char *) s->artist,
                                        .album = (char *) s->album, .albumartist = (char *) s->albumartist,
                                        .year = s->year, .track = s->track, .disc = s->disc,
                                        .disc_total = s->disc_total, .compilation = s->compilation,
                                },
                        };
                        assert_int_equal(catalog_batch_upsert(b, &cf, gen), 0);
                }
                assert_int_equal(catalog_batch_commit(b), 0);
                assert_int_equal(catalog_scan_finish(f->catalog, id, gen, NULL), 0);
        }
}

static char *dump(const Tree *t);

static int add_row(const CatalogFile *f, void *userdata) {
        return tree_builder_add(userdata, f);
}

/* Streams the catalog's rows into a tree builder, as the daemon does. */
static Tree *build_streaming(Fixture *f) {
        TreeBuilder *tb = NULL;
        Tree *t = NULL;

        assert_int_equal(tree_builder_new(&tb), 0);
        assert_int_equal(catalog_foreach_file(f->catalog, add_row, tb), 0);
        assert_int_equal(tree_builder_finish(tb, f->catalog, f->tpl, &t), 0);
        assert_non_null(t);
        tree_builder_free(tb);
        return t;
}

/* Builds from the loaded array, and checks that streaming the rows builds the very same tree. */
static Tree *build(Fixture *f) {
        CatalogFile *files = NULL;
        size_t n = 0;
        Tree *t = NULL;

        assert_int_equal(catalog_load_files(f->catalog, &files, &n), 0);
        assert_int_equal(tree_build(f->catalog, f->tpl, files, n, &t), 0);
        assert_non_null(t);
        catalog_files_free(files, n);

        Tree *streamed = build_streaming(f);
        _cleanup_free_ char *want = dump(t), *got = dump(streamed);
        assert_string_equal(want, got);
        assert_int_equal(tree_track_count(streamed), tree_track_count(t));
        tree_unref(streamed);
        return t;
}

/* Appends a line per node, depth first in name order, with everything a reader can observe. */
static void dump_node(const Tree *t, const TreeNode *n, const char *prefix, char **buf, size_t *len) {
        char line[2048];
        int k = snprintf(line, sizeof line, "%s%s|%" PRIu64 "|%d|%" PRIu64 "|%" PRIi64 "|", prefix, n->name, n->ino,
                         n->is_dir, n->size, n->mtime_ns);
        for (size_t i = 0; i < n->n_replicas; i++)
                k += snprintf(line + k, sizeof line - (size_t) k, "%" PRIi64 ":%u:%s,", n->replicas[i].origin_id,
                              n->replicas[i].priority, n->replicas[i].rel_path);
        k += snprintf(line + k, sizeof line - (size_t) k, "\n");
        *buf = realloc(*buf, *len + (size_t) k + 1);
        assert_non_null(*buf);
        memcpy(*buf + *len, line, (size_t) k + 1);
        *len += (size_t) k;

        char sub[1024];
        snprintf(sub, sizeof sub, "%s%s/", prefix, n->name);
        for (size_t i = 0; i < n->n_children; i++) {
                assert_int_equal(n->children[i]->parent, n->ino);
                assert_ptr_equal(tree_get(t, n->children[i]->ino), n->children[i]);
                dump_node(t, n->children[i], sub, buf, len);
        }
}

static char *dump(const Tree *t) {
        char *buf = NULL;
        size_t len = 0;
        dump_node(t, tree_get(t, TREE_ROOT_INO), "", &buf, &len);
        return buf;
}

static const TreeNode *lookup_path(const Tree *t, const char *path) {
        _cleanup_free_ char *copy = strdup(path);
        const TreeNode *n = tree_get(t, TREE_ROOT_INO);
        char *save = NULL;

        assert_non_null(copy);
        for (char *c = strtok_r(copy, "/", &save); c && n; c = strtok_r(NULL, "/", &save))
                n = tree_lookup(t, n->ino, c);
        return n;
}

static const TreeNode *must_lookup(const Tree *t, const char *path) {
        const TreeNode *n = lookup_path(t, path);
        if (!n)
                print_error("no node at %s\n", path);
        assert_non_null(n);
        _cleanup_free_ char *back = tree_node_path(t, n);
        assert_string_equal(back, path);
        return n;
}

static const char *const both[] = { "a", "b", NULL };

static const Spec library[] = {
        /* the same file on both origins: one node, two replicas */
        { "a", "X/Y/01.flac", 1000, 100, "X", "Y", NULL, "Same", 2000, 1 },
        { "b", "X/Y/01.flac", 1000, 200, "X", "Y", NULL, "Same", 2000, 1 },
        /* three different files rendering to one path */
        { "b", "z/song.flac", 700, 300, "X", "Y", NULL, "Dup", 2000, 2 },
        { "a", "x/song.flac", 500, 300, "X", "Y", NULL, "Dup", 2000, 2 },
        { "b", "y/song.flac", 600, 300, "X", "Y", NULL, "Dup", 2000, 2 },
        /* same rel_path, different size: different files */
        { "a", "X/Y/03.flac", 10, 400, "X", "Y", NULL, "Three", 2000, 3 },
        { "b", "X/Y/03.flac", 11, 400, "X", "Y", NULL, "Three", 2000, 3 },
};

static void test_replicas_and_collisions(void **state) {
        Fixture *f = *state;
        int64_t a = origin_id(f, "a", 10), b = origin_id(f, "b", 20);

        sync_origins(f, both, library, ELEMENTSOF(library));
        Tree *t = build(f);

        const TreeNode *same = must_lookup(t, "X/Y (2000)/01 - Same.flac");
        assert_false(same->is_dir);
        assert_int_equal(same->n_replicas, 2);
        assert_int_equal(same->replicas[0].origin_id, a);
        assert_int_equal(same->replicas[0].priority, 10);
        assert_string_equal(same->replicas[0].rel_path, "X/Y/01.flac");
        assert_int_equal(same->replicas[1].origin_id, b);
        assert_int_equal(same->replicas[1].priority, 20);
        assert_int_equal(same->size, 1000);
        assert_int_equal(same->mtime_ns, 100);      /* the preferred replica's */

        const TreeNode *d1 = must_lookup(t, "X/Y (2000)/02 - Dup.flac");
        const TreeNode *d2 = must_lookup(t, "X/Y (2000)/02 - Dup (2).flac");
        const TreeNode *d3 = must_lookup(t, "X/Y (2000)/02 - Dup (3).flac");
        assert_int_equal(d1->n_replicas, 1);
        assert_string_equal(d1->replicas[0].rel_path, "x/song.flac");
        assert_int_equal(d1->replicas[0].origin_id, a);
        assert_string_equal(d2->replicas[0].rel_path, "y/song.flac");
        assert_string_equal(d3->replicas[0].rel_path, "z/song.flac");
        assert_null(lookup_path(t, "X/Y (2000)/02 - Dup (4).flac"));

        const TreeNode *t1 = must_lookup(t, "X/Y (2000)/03 - Three.flac");
        const TreeNode *t2 = must_lookup(t, "X/Y (2000)/03 - Three (2).flac");
        assert_int_equal(t1->size, 10);
        assert_int_equal(t2->size, 11);

        assert_int_equal(tree_track_count(t), 6);
        assert_int_equal(tree_node_count(t), 1 + 2 + 6);
        const TreeNode *album = must_lookup(t, "X/Y (2000)");
        assert_true(album->is_dir);
        assert_int_equal(album->n_children, 6);
        assert_int_equal(album->mtime_ns, 400);
        assert_int_equal(must_lookup(t, "X")->mtime_ns, 400);
        assert_int_equal(tree_get(t, TREE_ROOT_INO)->mtime_ns, 400);

        _cleanup_free_ char *before = dump(t);

        /* any input order gives the same tree */
        CatalogFile *files = NULL;
        size_t n = 0;
        assert_int_equal(catalog_load_files(f->catalog, &files, &n), 0);
        assert_int_equal(n, ELEMENTSOF(library));
        CatalogFile *shuffled = malloc(n * sizeof(CatalogFile));
        assert_non_null(shuffled);
        uint32_t seed = 12345;
        for (int round = 0; round < 20; round++) {
                memcpy(shuffled, files, n * sizeof(CatalogFile));
                for (size_t i = n - 1; i > 0; i--) {
                        seed = seed * 1103515245u + 12345u;
                        size_t j = (seed >> 8) % (i + 1);
                        CatalogFile tmp = shuffled[i];
                        shuffled[i] = shuffled[j];
                        shuffled[j] = tmp;
                }
                Tree *again = NULL;
                assert_int_equal(tree_build(f->catalog, f->tpl, shuffled, n, &again), 0);
                _cleanup_free_ char *after = dump(again);
                assert_string_equal(before, after);
                tree_unref(again);
        }
        free(shuffled);
        catalog_files_free(files, n);

        /* and so does a restart */
        catalog_close(f->catalog);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        Tree *reopened = build(f);
        _cleanup_free_ char *after_reopen = dump(reopened);
        assert_string_equal(before, after_reopen);
        tree_unref(reopened);

        /* origin priority decides: b preferred now */
        assert_int_equal(origin_id(f, "b", 5), b);
        Tree *swapped = build(f);
        same = must_lookup(swapped, "X/Y (2000)/01 - Same.flac");
        assert_int_equal(same->replicas[0].origin_id, b);
        assert_int_equal(same->replicas[1].origin_id, a);
        assert_int_equal(same->mtime_ns, 200);
        assert_string_equal(must_lookup(swapped, "X/Y (2000)/02 - Dup.flac")->replicas[0].rel_path, "y/song.flac");
        assert_string_equal(must_lookup(swapped, "X/Y (2000)/02 - Dup (2).flac")->replicas[0].rel_path, "z/song.flac");
        assert_string_equal(must_lookup(swapped, "X/Y (2000)/02 - Dup (3).flac")->replicas[0].rel_path, "x/song.flac");
        assert_int_equal(must_lookup(swapped, "X/Y (2000)/03 - Three.flac")->size, 11);
        /* inode numbers belong to paths */
        assert_int_equal(must_lookup(swapped, "X/Y (2000)/02 - Dup.flac")->ino, d1->ino);
        tree_unref(swapped);
        tree_unref(t);
}

static void test_collision_with_suffixed_name(void **state) {
        Fixture *f = *state;
        /* a real "Dup (2)" title takes the name a suffix would have used */
        const Spec specs[] = {
                { "a", "1.flac", 1, 1, "X", "Y", NULL, "Dup", 0, 2 },
                { "a", "2.flac", 2, 1, "X", "Y", NULL, "Dup", 0, 2 },
                { "a", "3.flac", 3, 1, "X", "Y", NULL, "Dup (2)", 0, 2 },
        };
        const char *const only_a[] = { "a", NULL };
        sync_origins(f, only_a, specs, ELEMENTSOF(specs));
        Tree *t = build(f);
        assert_string_equal(must_lookup(t, "X/Y/02 - Dup.flac")->replicas[0].rel_path, "1.flac");
        assert_string_equal(must_lookup(t, "X/Y/02 - Dup (2).flac")->replicas[0].rel_path, "3.flac");
        assert_string_equal(must_lookup(t, "X/Y/02 - Dup (3).flac")->replicas[0].rel_path, "2.flac");
        assert_int_equal(tree_track_count(t), 3);
        tree_unref(t);

        /* a suffix on a name at NAME_MAX: the name stays within it, on a character boundary, and
         * keeps its extension; no format stored: the extension comes from the file name */
        size_t n = 4000;
        char *title = malloc(n + 1);
        assert_non_null(title);
        for (size_t i = 0; i < n; i += 2)
                memcpy(title + i, "ø", 2);
        title[n] = '\0';
        const Spec longs[] = {
                { "a", "l1.flac", 1, 1, "L", "M", NULL, title, 0, 1 },
                { "a", "l2.flac", 2, 1, "L", "M", NULL, title, 0, 1 },
                { "a", "Upper.MP3", 3, 1, "L", "M", NULL, "Up", 0, 2, .no_format = true },
        };
        sync_origins(f, only_a, longs, ELEMENTSOF(longs));
        t = build(f);
        const TreeNode *album = must_lookup(t, "L/M");
        assert_int_equal(album->n_children, 3);
        assert_string_equal(album->children[2]->name, "02 - Up.mp3");
        const TreeNode *first = NULL, *second = NULL;
        for (size_t i = 0; i < 2; i++) {
                const TreeNode *c = album->children[i];
                size_t len = strlen(c->name);
                assert_true(len <= 255);
                assert_true(len >= 250);
                assert_string_equal(c->name + len - 5, ".flac");
                assert_int_equal(strncmp(c->name, "01 - øø", strlen("01 - øø")), 0);
                if (strstr(c->name, " (2).flac"))
                        second = c;
                else
                        first = c;
        }
        assert_non_null(first);
        assert_non_null(second);
        assert_string_equal(first->replicas[0].rel_path, "l1.flac");
        assert_string_equal(second->replicas[0].rel_path, "l2.flac");
        /* the cut stem ends on a whole "ø" */
        const char *suffix = strstr(second->name, " (2).flac");
        assert_int_equal(strncmp(suffix - 2, "ø", 2), 0);
        tree_unref(t);
        free(title);
}

typedef struct InoMap {
        char **paths;
        uint64_t *inos;
        size_t n;
} InoMap;

static void collect(const Tree *t, const TreeNode *n, InoMap *m) {
        m->paths = realloc(m->paths, (m->n + 1) * sizeof(char *));
        m->inos = realloc(m->inos, (m->n + 1) * sizeof(uint64_t));
        assert_non_null(m->paths);
        assert_non_null(m->inos);
        m->paths[m->n] = tree_node_path(t, n);
        assert_non_null(m->paths[m->n]);
        m->inos[m->n++] = n->ino;
        for (size_t i = 0; i < n->n_children; i++)
                collect(t, n->children[i], m);
}

static void inomap_free(InoMap *m) {
        for (size_t i = 0; i < m->n; i++)
                free(m->paths[i]);
        free(m->paths);
        free(m->inos);
}

static void assert_same_inodes(const Tree *t, const InoMap *m) {
        for (size_t i = 0; i < m->n; i++) {
                const TreeNode *n = m->paths[i][0] ? lookup_path(t, m->paths[i]) : tree_get(t, TREE_ROOT_INO);
                assert_non_null(n);
                assert_int_equal(n->ino, m->inos[i]);
        }
}

static void test_inodes_stable(void **state) {
        Fixture *f = *state;
        InoMap m = {};

        sync_origins(f, both, library, ELEMENTSOF(library));
        Tree *t = build(f);
        collect(t, tree_get(t, TREE_ROOT_INO), &m);
        assert_int_equal(m.n, tree_node_count(t));
        assert_int_equal(m.inos[0], TREE_ROOT_INO);
        for (size_t i = 0; i < m.n; i++)
                for (size_t j = i + 1; j < m.n; j++)
                        assert_true(m.inos[i] != m.inos[j]);

        Tree *again = build(f);
        assert_same_inodes(again, &m);
        tree_unref(again);

        catalog_close(f->catalog);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        again = build(f);
        assert_same_inodes(again, &m);
        tree_unref(again);

        /* a file goes away and comes back: its inode comes back with it; a new file gets a new one */
        sync_origins(f, both, library + 1, ELEMENTSOF(library) - 1);       /* "a"'s 01 gone, "b" still has it */
        const Spec fewer[] = { library[2], library[3], library[4] };
        sync_origins(f, both, fewer, ELEMENTSOF(fewer));
        again = build(f);
        assert_null(lookup_path(again, "X/Y (2000)/01 - Same.flac"));
        assert_int_equal(tree_track_count(again), 3);
        tree_unref(again);

        Spec more[ELEMENTSOF(library) + 1];
        memcpy(more, library, sizeof library);
        more[ELEMENTSOF(library)] = (Spec) { "a", "new.flac", 5, 5, "X", "Y", NULL, "New", 2000, 9 };
        sync_origins(f, both, more, ELEMENTSOF(more));
        again = build(f);
        assert_same_inodes(again, &m);
        const TreeNode *added = must_lookup(again, "X/Y (2000)/09 - New.flac");
        for (size_t i = 0; i < m.n; i++)
                assert_true(added->ino != m.inos[i]);
        tree_unref(again);

        inomap_free(&m);
        tree_unref(t);
}

static void test_lookup_and_children(void **state) {
        Fixture *f = *state;
        const Spec specs[] = {
                { "a", "1.flac", 1, 10, "beta", "A", NULL, "t", 0, 1 },
                { "a", "2.flac", 1, 20, "Alpha", "A", NULL, "t", 0, 1 },
                { "a", "3.flac", 1, 30, "Ωmega", "A", NULL, "t", 0, 1 },
                { "a", "4.flac", 1, 40, "Zed", "A", NULL, "t", 0, 1 },
                { "a", "5.flac", 1, 50, "_under", "A", NULL, "t", 0, 1 },
                { "a", "6.flac", 1, 60, "alpha", "A", NULL, "t", 0, 1 },
        };
        const char *const only_a[] = { "a", NULL };
        sync_origins(f, only_a, specs, ELEMENTSOF(specs));
        Tree *t = build(f);

        const TreeNode *root = tree_get(t, TREE_ROOT_INO);
        assert_non_null(root);
        assert_true(root->is_dir);
        assert_int_equal(root->parent, TREE_ROOT_INO);
        assert_string_equal(root->name, "");
        _cleanup_free_ char *root_path = tree_node_path(t, root);
        assert_string_equal(root_path, "");

        const char *expected[] = { "Alpha", "Zed", "_under", "alpha", "beta", "Ωmega" };   /* byte order */
        assert_int_equal(root->n_children, ELEMENTSOF(expected));
        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                assert_string_equal(root->children[i]->name, expected[i]);
                assert_ptr_equal(tree_lookup(t, TREE_ROOT_INO, expected[i]), root->children[i]);
                assert_true(root->children[i]->is_dir);
        }
        assert_null(tree_lookup(t, TREE_ROOT_INO, "ALPHA"));
        assert_null(tree_lookup(t, TREE_ROOT_INO, ""));
        assert_null(tree_lookup(t, 999999, "Alpha"));
        assert_null(tree_get(t, 999999));
        assert_null(tree_get(NULL, TREE_ROOT_INO));

        const TreeNode *file = must_lookup(t, "Ωmega/A/01 - t.flac");
        assert_null(tree_lookup(t, file->ino, "x"));    /* a file has no children */
        assert_int_equal(file->mtime_ns, 30);
        assert_int_equal(must_lookup(t, "Ωmega")->mtime_ns, 30);
        assert_int_equal(root->mtime_ns, 60);
        tree_unref(t);
}

static void test_big_album(void **state) {
        Fixture *f = *state;
        const size_t n = 10000;
        Spec *specs = calloc(n, sizeof(Spec));
        char (*paths)[32] = calloc(n, 32);
        assert_non_null(specs);
        assert_non_null(paths);
        for (size_t i = 0; i < n; i++) {
                snprintf(paths[i], 32, "big/%05zu.flac", i);
                specs[i] = (Spec) { "a", paths[i], 1000 + i, (int64_t) i, "Big", "Box", NULL, "Song", 2020, (int) i + 1 };
        }
        const char *const only_a[] = { "a", NULL };
        sync_origins(f, only_a, specs, n);
        Tree *t = build(f);

        const TreeNode *album = must_lookup(t, "Big/Box (2020)");
        assert_int_equal(album->n_children, n);
        assert_int_equal(tree_track_count(t), n);
        for (size_t i = 1; i < n; i++)
                assert_true(strcmp(album->children[i - 1]->name, album->children[i]->name) < 0);
        for (size_t i = 0; i < n; i++) {
                char name[64];
                snprintf(name, sizeof name, "%02zu - Song.flac", i + 1);
                const TreeNode *c = tree_lookup(t, album->ino, name);
                assert_non_null(c);
                assert_int_equal(c->size, 1000 + i);
                assert_string_equal(c->replicas[0].rel_path, paths[i]);
        }
        assert_int_equal(album->mtime_ns, (int64_t) n - 1);
        tree_unref(t);
        free(specs);
        free(paths);
}

static void test_album_rules(void **state) {
        Fixture *f = *state;
        const Spec specs[] = {
                /* a compilation flagged on every track, only track artists */
                { "a", "c1.flac", 1, 1, "Artist One", "Now 42", NULL, "First", 2001, 1, .compilation = true },
                { "a", "c2.flac", 1, 1, "Artist Two", "Now 42", NULL, "Second", 2001, 2, .compilation = true },
                /* album artist tag with one flagged track: all of it is the compilation */
                { "a", "m1.flac", 1, 1, "P", "Mixed", "DJ", "One", 0, 1, .compilation = true },
                { "a", "m2.flac", 1, 1, "Q", "Mixed", "DJ", "Two", 0, 2 },
                /* multi-disc: one track on disc 2 makes the whole album prefixed */
                { "a", "d1.flac", 1, 1, "Band", "Double", NULL, "A", 1999, 1, 1 },
                { "a", "d2.flac", 1, 1, "Band", "Double", NULL, "B", 1999, 1, 2 },
                { "a", "d3.flac", 1, 1, "Band", "Double", NULL, "C", 1999, 2 },
                /* another artist's album of the same name is single-disc */
                { "a", "o1.flac", 1, 1, "Other", "Double", NULL, "D", 1999, 1 },
                /* disc_total alone says multi-disc */
                { "a", "t1.flac", 1, 1, "Tot", "Set", NULL, "E", 0, 1, 1, 2 },
                /* same album name, no album artist, no flag: split by artist */
                { "a", "s1.flac", 1, 1, "S1", "Hits", NULL, "F", 0, 1 },
                { "a", "s2.flac", 1, 1, "S2", "Hits", NULL, "G", 0, 1 },
                /* tags unreadable: Unknown names and the stem, whatever the row holds */
                { "a", "dir/My Stem.flac", 1, 1, "Ignored", "Ignored", NULL, "Ignored", 1990, 4, .unparsed = true },
                /* no tags at all */
                { "a", "dir/Other Stem.flac", 1, 1 },
        };
        const char *const only_a[] = { "a", NULL };
        sync_origins(f, only_a, specs, ELEMENTSOF(specs));
        Tree *t = build(f);

        must_lookup(t, "Various Artists/Now 42 (2001)/01 - First.flac");
        must_lookup(t, "Various Artists/Now 42 (2001)/02 - Second.flac");
        must_lookup(t, "Various Artists/Mixed/01 - One.flac");
        must_lookup(t, "Various Artists/Mixed/02 - Two.flac");
        must_lookup(t, "Band/Double (1999)/1-01 - A.flac");
        must_lookup(t, "Band/Double (1999)/2-01 - B.flac");
        must_lookup(t, "Band/Double (1999)/1-02 - C.flac");
        must_lookup(t, "Other/Double (1999)/01 - D.flac");
        must_lookup(t, "Tot/Set/1-01 - E.flac");
        must_lookup(t, "S1/Hits/01 - F.flac");
        must_lookup(t, "S2/Hits/01 - G.flac");
        must_lookup(t, "Unknown Artist/Unknown Album/My Stem.flac");
        must_lookup(t, "Unknown Artist/Unknown Album/Other Stem.flac");
        assert_null(lookup_path(t, "Artist One"));
        assert_int_equal(tree_track_count(t), ELEMENTSOF(specs));
        tree_unref(t);
}

/* Every path of a fixed template has the same depth, so a file can only meet a directory of the
 * same name at the same level when its name equals a directory name there: check that names that
 * coincide across levels and across file/dir kinds stay apart. */
static void test_dir_and_file_names(void **state) {
        Fixture *f = *state;
        Template *tpl = NULL;
        char *reason = NULL;
        assert_int_equal(template_parse("{artist}/{title}", &tpl, &reason), 0);
        const Spec specs[] = {
                { "a", "1.flac", 1, 1, "Same", "x", NULL, "Same" },
                { "a", "2.flac", 2, 1, "Same", "x", NULL, "Same" },
                { "a", "3.flac", 3, 1, "Other", "x", NULL, "Same" },
        };
        const char *const only_a[] = { "a", NULL };
        sync_origins(f, only_a, specs, ELEMENTSOF(specs));

        CatalogFile *files = NULL;
        size_t n = 0;
        Tree *t = NULL;
        assert_int_equal(catalog_load_files(f->catalog, &files, &n), 0);
        assert_int_equal(tree_build(f->catalog, tpl, files, n, &t), 0);
        const TreeNode *dir = must_lookup(t, "Same");
        assert_true(dir->is_dir);
        assert_false(must_lookup(t, "Same/Same")->is_dir);
        assert_false(must_lookup(t, "Same/Same (2)")->is_dir);
        assert_false(must_lookup(t, "Other/Same")->is_dir);
        assert_string_equal(must_lookup(t, "Same/Same (2)")->replicas[0].rel_path, "2.flac");
        tree_unref(t);
        catalog_files_free(files, n);
        template_free(tpl);
}

typedef struct Recorded {
        char lines[64][300];
        size_t n;
} Recorded;

static void record_entry(uint64_t parent, const char *name, void *userdata) {
        Recorded *r = userdata;
        assert_true(r->n < ELEMENTSOF(r->lines));
        snprintf(r->lines[r->n++], sizeof r->lines[0], "entry %" PRIu64 " %s", parent, name);
}

static void record_inode(uint64_t ino, void *userdata) {
        Recorded *r = userdata;
        assert_true(r->n < ELEMENTSOF(r->lines));
        snprintf(r->lines[r->n++], sizeof r->lines[0], "inode %" PRIu64, ino);
}

static int line_cmp(const void *a, const void *b) {
        return strcmp(a, b);
}

static void assert_recorded(Recorded *got, Recorded *want) {
        qsort(got->lines, got->n, sizeof got->lines[0], line_cmp);
        qsort(want->lines, want->n, sizeof want->lines[0], line_cmp);
        bool same = got->n == want->n;
        for (size_t i = 0; same && i < got->n; i++)
                same = strcmp(got->lines[i], want->lines[i]) == 0;
        if (!same) {
                for (size_t i = 0; i < got->n; i++)
                        print_error("got  %s\n", got->lines[i]);
                for (size_t i = 0; i < want->n; i++)
                        print_error("want %s\n", want->lines[i]);
        }
        assert_int_equal(got->n, want->n);
        for (size_t i = 0; i < got->n; i++)
                assert_string_equal(got->lines[i], want->lines[i]);
}

static void test_diff(void **state) {
        Fixture *f = *state;
        const Spec before[] = {
                { "a", "1.flac", 100, 1000, "A", "Al", NULL, "One", 2000, 1 },
                { "a", "2.flac", 100, 1000, "A", "Al", NULL, "Two", 2000, 2 },
                { "a", "3.flac", 100, 1000, "A", "Al", NULL, "Three", 2000, 3 },
                { "a", "4.flac", 100, 1000, "B", "Bl", NULL, "X", 0, 1 },
                { "a", "5.flac", 100, 1000, "D", "Dl", NULL, "Y", 0, 1 },
        };
        const Spec after[] = {
                { "a", "1.flac", 100, 1000, "A", "Al", NULL, "One", 2000, 1 },         /* same */
                { "a", "3.flac", 101, 1000, "A", "Al", NULL, "Three", 2000, 3 },       /* size changed */
                { "a", "6.flac", 100, 2000, "A", "Al", NULL, "Four", 2000, 4 },        /* added, newer */
                { "a", "7.flac", 100, 1000, "C", "Cl", NULL, "Y", 0, 1 },              /* new artist */
                { "a", "5.flac", 100, 1000, "D", "Dl", NULL, "Y", 0, 1 },              /* same */
                /* 2.flac removed, B's only file removed */
        };
        const char *const only_a[] = { "a", NULL };

        sync_origins(f, only_a, before, ELEMENTSOF(before));
        Tree *old = build(f);
        uint64_t album = must_lookup(old, "A/Al (2000)")->ino, artist = must_lookup(old, "A")->ino;
        uint64_t three = must_lookup(old, "A/Al (2000)/03 - Three.flac")->ino;
        uint64_t b_dir = must_lookup(old, "B")->ino;

        /* no change, no calls */
        Recorded got = {}, want = {};
        Tree *same = build(f);
        tree_diff(old, same, record_entry, record_inode, &got);
        assert_int_equal(got.n, 0);
        tree_diff(old, old, record_entry, record_inode, &got);
        assert_int_equal(got.n, 0);
        tree_unref(same);

        sync_origins(f, only_a, after, ELEMENTSOF(after));
        Tree *new = build(f);
        assert_int_equal(must_lookup(new, "A/Al (2000)/03 - Three.flac")->ino, three);

        tree_diff(old, new, record_entry, record_inode, &got);
        snprintf(want.lines[want.n++], 300, "entry %" PRIu64 " 02 - Two.flac", album);
        snprintf(want.lines[want.n++], 300, "entry %" PRIu64 " 03 - Three.flac", album);
        snprintf(want.lines[want.n++], 300, "entry %" PRIu64 " 04 - Four.flac", album);
        snprintf(want.lines[want.n++], 300, "entry %d B", TREE_ROOT_INO);
        snprintf(want.lines[want.n++], 300, "entry %d C", TREE_ROOT_INO);
        snprintf(want.lines[want.n++], 300, "inode %" PRIu64, three);          /* size changed */
        snprintf(want.lines[want.n++], 300, "inode %" PRIu64, album);          /* listing changed */
        snprintf(want.lines[want.n++], 300, "inode %d", TREE_ROOT_INO);        /* listing changed */
        snprintf(want.lines[want.n++], 300, "inode %" PRIu64, artist);         /* mtime: newest below */
        assert_recorded(&got, &want);
        (void) b_dir;   /* B's own children are not reported: dropping B drops them */

        /* a rebuilt catalog numbers paths differently: every entry of the root now names another
         * inode, and directories whose inode now belongs to another path are not compared */
        Fixture other = {};
        snprintf(other.db, sizeof other.db, "%s/other.db", f->dir);
        assert_int_equal(catalog_open(other.db, &other.catalog), 0);
        other.tpl = f->tpl;
        const char *shift[] = { "nothing/here" };
        int64_t shift_id = 0;
        assert_int_equal(catalog_nodes_assign(other.catalog, shift, 1, &shift_id), 0);
        sync_origins(&other, only_a, after, ELEMENTSOF(after));
        Tree *renumbered = build(&other);
        const TreeNode *nroot = tree_get(renumbered, TREE_ROOT_INO);
        Recorded got2 = {}, want2 = {};
        tree_diff(new, renumbered, record_entry, record_inode, &got2);
        for (size_t i = 0; i < nroot->n_children; i++) {
                assert_true(nroot->children[i]->ino != must_lookup(new, nroot->children[i]->name)->ino);
                snprintf(want2.lines[want2.n++], 300, "entry %d %s", TREE_ROOT_INO, nroot->children[i]->name);
        }
        snprintf(want2.lines[want2.n++], 300, "inode %d", TREE_ROOT_INO);
        assert_recorded(&got2, &want2);
        tree_unref(renumbered);
        catalog_close(other.catalog);

        /* NULL callbacks and NULL trees are fine */
        tree_diff(old, new, NULL, NULL, NULL);
        tree_diff(NULL, new, record_entry, record_inode, &got);
        tree_unref(old);
        tree_unref(new);
}

static void test_store_refcount(void **state) {
        Fixture *f = *state;
        TreeStore *s = NULL;
        Tree *empty = NULL;

        assert_int_equal(tree_new_empty(&empty), 0);
        assert_int_equal(tree_track_count(empty), 0);
        assert_int_equal(tree_node_count(empty), 1);
        assert_true(tree_get(empty, TREE_ROOT_INO)->is_dir);
        assert_int_equal(tree_get(empty, TREE_ROOT_INO)->n_children, 0);
        assert_int_equal(tree_store_new(empty, &s), 0);

        Tree *reader = tree_store_get(s);
        assert_ptr_equal(reader, empty);

        sync_origins(f, both, library, ELEMENTSOF(library));
        Tree *built = build(f);
        Tree *old = tree_store_publish(s, built);
        assert_ptr_equal(old, empty);
        tree_unref(old);

        /* the reader's reference keeps the old tree whole */
        assert_int_equal(tree_node_count(reader), 1);
        assert_non_null(tree_get(reader, TREE_ROOT_INO));
        assert_null(tree_lookup(reader, TREE_ROOT_INO, "X"));

        Tree *current = tree_store_get(s);
        assert_ptr_equal(current, built);
        assert_non_null(tree_lookup(current, TREE_ROOT_INO, "X"));

        /* replace again while `current` is held */
        Tree *second = build(f);
        old = tree_store_publish(s, second);
        assert_ptr_equal(old, built);
        tree_unref(old);
        must_lookup(current, "X/Y (2000)/01 - Same.flac");
        tree_unref(current);
        tree_unref(reader);
        tree_unref(NULL);

        tree_store_free(s);

        /* a store made from nothing holds an empty tree */
        assert_int_equal(tree_store_new(NULL, &s), 0);
        Tree *e = tree_store_get(s);
        assert_non_null(e);
        assert_int_equal(tree_node_count(e), 1);
        tree_unref(e);
        tree_store_free(s);
}

static void test_empty_catalog(void **state) {
        Fixture *f = *state;
        Tree *t = NULL;

        assert_int_equal(tree_build(f->catalog, f->tpl, NULL, 0, &t), 0);
        assert_int_equal(tree_node_count(t), 1);
        assert_int_equal(tree_track_count(t), 0);
        tree_unref(t);
        assert_int_equal(tree_build(NULL, f->tpl, NULL, 0, &t), -EINVAL);

        /* a builder given nothing builds the root alone, and is empty again after finishing */
        TreeBuilder *tb = NULL;
        assert_int_equal(tree_builder_new(&tb), 0);
        assert_int_equal(tree_builder_finish(tb, f->catalog, f->tpl, &t), 0);
        assert_int_equal(tree_node_count(t), 1);
        tree_unref(t);
        t = NULL;
        assert_int_equal(tree_builder_finish(tb, NULL, f->tpl, &t), -EINVAL);
        assert_null(t);
        tree_builder_free(tb);
        tree_builder_free(NULL);
}

/* Rows handed to a builder are copied: the caller may reuse or free them at once, as the catalog's
 * walk does with its rows. Rows without a path are left out. */
static void test_builder_copies_rows(void **state) {
        Fixture *f = *state;
        Tree *want = NULL, *got = NULL;
        CatalogFile *files = NULL;
        TreeBuilder *tb = NULL;
        size_t n = 0;

        sync_origins(f, both, library, ELEMENTSOF(library));
        want = build(f);

        assert_int_equal(catalog_load_files(f->catalog, &files, &n), 0);
        assert_int_equal(tree_builder_new(&tb), 0);
        for (size_t i = 0; i < n; i++) {
                CatalogFile copy = {};
                copy = files[i];
                copy.rel_path = strdup(files[i].rel_path);
                copy.tags.title = files[i].tags.title ? strdup(files[i].tags.title) : NULL;
                assert_non_null(copy.rel_path);
                assert_int_equal(tree_builder_add(tb, &copy), 0);
                /* scribble over the strings before freeing them */
                memset(copy.rel_path, 'x', strlen(copy.rel_path));
                if (copy.tags.title)
                        memset(copy.tags.title, 'y', strlen(copy.tags.title));
                free(copy.rel_path);
                free(copy.tags.title);
        }
        CatalogFile no_path = { .id = 999, .origin_id = files[0].origin_id, .rel_path = (char *) "" };
        assert_int_equal(tree_builder_add(tb, &no_path), 0);
        no_path.rel_path = NULL;
        assert_int_equal(tree_builder_add(tb, &no_path), 0);
        assert_int_equal(tree_builder_finish(tb, f->catalog, f->tpl, &got), 0);
        tree_builder_free(tb);
        catalog_files_free(files, n);

        _cleanup_free_ char *a = dump(want), *b = dump(got);
        assert_string_equal(a, b);
        tree_unref(want);
        tree_unref(got);
}

static void test_failpoint(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        Tree *t = NULL;

        assert_int_equal(failpoint_arm("tree-publish", "return(ENOSPC)", NULL), 0);
        assert_int_equal(tree_build(f->catalog, f->tpl, NULL, 0, &t), -ENOSPC);
        assert_null(t);
        assert_int_equal(failpoint_disarm("tree-publish"), 0);
        assert_int_equal(tree_build(f->catalog, f->tpl, NULL, 0, &t), 0);
        tree_unref(t);
#else
        skip();
#endif
}

/* ---- snapshots ---- */

static const char snap_key[] = "catalog 1 2 3\ntemplate x\n";

/* A library with replicas, collisions, a big directory and untagged files: everything a node holds. */
static Tree *snapshot_library(Fixture *f) {
        Spec specs[ELEMENTSOF(library) + 300];
        char paths[300][48], titles[300][16];
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(library); i++)
                specs[n++] = library[i];
        for (int i = 0; i < 300; i++) {
                snprintf(paths[i], sizeof paths[i], "big/%03d.flac", i);
                snprintf(titles[i], sizeof titles[i], "T%03d", (i * 7) % 300);
                specs[n++] = (Spec) { i % 2 ? "a" : "b", paths[i], 1000u + (uint64_t) i, 50 + i, "Big", "Many",
                                      NULL, i % 17 ? titles[i] : NULL, 1999, i + 1, 1 + i / 150, 2,
                                      .unparsed = i % 29 == 0 };
        }
        sync_origins(f, both, specs, n);
        return build(f);
}

static char *snap_path(Fixture *f) {
        char *p = NULL;
        assert_true(asprintf(&p, "%s/tree.snapshot", f->dir) > 0);
        return p;
}

static void assert_same_tree(const Tree *want, const Tree *got) {
        _cleanup_free_ char *a = dump(want), *b = dump(got);
        assert_string_equal(a, b);
        assert_int_equal(tree_track_count(got), tree_track_count(want));
        assert_int_equal(tree_node_count(got), tree_node_count(want));
        /* the file index answers as the built tree's does, for every replica */
        for (size_t i = 0; i < tree_node_count(want); i++) {
                const TreeNode *n = want->nodes + i;
                for (size_t j = 0; j < n->n_replicas; j++) {
                        const TreeNode *g = tree_find_file(got, n->replicas[j].file_id);
                        assert_non_null(g);
                        _cleanup_free_ char *pw = tree_node_path(want, n), *pg = tree_node_path(got, g);
                        assert_string_equal(pw, pg);
                }
        }
}

static void test_snapshot_round_trip(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *path = snap_path(f);
        Tree *t = snapshot_library(f), *back = NULL, *empty = NULL;
        void *annex = NULL;
        size_t annex_len = 0;

        assert_true(tree_track_count(t) > 300);
        assert_int_equal(tree_snapshot_write(path, t, snap_key, sizeof snap_key, "counts", 6), 0);
        assert_int_equal(access(path, F_OK), 0);
        assert_int_equal(tree_snapshot_read(path, snap_key, sizeof snap_key, &back, &annex, &annex_len), 0);
        assert_same_tree(t, back);
        assert_int_equal(annex_len, 6);
        assert_memory_equal(annex, "counts", 6);
        must_lookup(back, "Big/Many (1999)/1-02 - T007.flac");
        free(annex);
        tree_unref(back);

        /* written again over the old one, with no annex; no temporary left behind */
        assert_int_equal(tree_snapshot_write(path, t, snap_key, sizeof snap_key, NULL, 0), 0);
        assert_int_equal(tree_snapshot_read(path, snap_key, sizeof snap_key, &back, &annex, &annex_len), 0);
        assert_null(annex);
        assert_int_equal(annex_len, 0);
        assert_same_tree(t, back);
        tree_unref(back);
        _cleanup_free_ char *tmp = NULL;
        assert_true(asprintf(&tmp, "%s.tmp", path) > 0);
        assert_int_equal(access(tmp, F_OK), -1);

        /* the root alone */
        assert_int_equal(tree_new_empty(&empty), 0);
        assert_int_equal(tree_snapshot_write(path, empty, NULL, 0, NULL, 0), 0);
        assert_int_equal(tree_snapshot_read(path, NULL, 0, &back, NULL, NULL), 0);
        assert_same_tree(empty, back);
        tree_unref(back);
        tree_unref(empty);
        tree_unref(t);
}

static void read_file(const char *path, uint8_t **ret, size_t *ret_len) {
        struct stat st;
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        *ret = malloc((size_t) st.st_size);
        assert_non_null(*ret);
        assert_int_equal(read(fd, *ret, (size_t) st.st_size), st.st_size);
        *ret_len = (size_t) st.st_size;
        close(fd);
}

/* Writes bytes to path; with rehash, with the digest made right for them, so that only the checks
 * of the structure stand between a crafted file and a tree. */
static void write_file(const char *path, uint8_t *bytes, size_t len, bool rehash) {
        if (rehash) {
                unsigned n = 0;
                SnapshotHeader *h = (SnapshotHeader *) bytes;
                assert_int_equal(EVP_Digest(bytes + sizeof *h, len - sizeof *h, h->digest, &n, EVP_sha256(), NULL), 1);
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, bytes, len), (ssize_t) len);
        close(fd);
}

static int read_back(const char *path) {
        Tree *t = NULL;
        void *annex = NULL;
        int r = tree_snapshot_read(path, snap_key, sizeof snap_key, &t, &annex, NULL);
        if (r == 0) {
                tree_unref(t);
                free(annex);
        } else
                assert_null(t);
        return r;
}

typedef struct Layout {
        SnapshotHeader h;
        size_t strings, nodes, children, replicas, file_ids;
} Layout;

static Layout layout_of(const uint8_t *bytes) {
        Layout l;
        memcpy(&l.h, bytes, sizeof l.h);
        l.strings = sizeof l.h + l.h.key_len + l.h.annex_len;
        l.nodes = l.strings + l.h.strings_len;
        l.children = l.nodes + l.h.n_nodes * sizeof(SnapshotNode);
        l.replicas = l.children + l.h.n_children * sizeof(uint32_t);
        l.file_ids = l.replicas + l.h.n_replicas * sizeof(SnapshotReplica);
        return l;
}

/* Every damaged, truncated, stale or crafted snapshot is refused with an error, and never read as a
 * tree: the daemon then builds from the catalog. */
static void test_snapshot_refused(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *path = snap_path(f);
        _cleanup_free_ uint8_t *good = NULL, *bytes = NULL;
        size_t len = 0;
        Tree *t = snapshot_library(f);

        assert_int_equal(read_back(path), -ENOENT);
        assert_int_equal(tree_snapshot_write(path, t, snap_key, sizeof snap_key, "annex", 5), 0);
        assert_int_equal(read_back(path), 0);
        read_file(path, &good, &len);
        bytes = malloc(len);
        assert_non_null(bytes);

        /* another key: the same length, a longer one, none */
        Tree *got = NULL;
        assert_int_equal(tree_snapshot_read(path, "catalog 1 2 4\ntemplate x\n", sizeof snap_key, &got, NULL, NULL),
                         -ESTALE);
        assert_int_equal(tree_snapshot_read(path, "catalog 1 2 3\ntemplate xy\n", sizeof snap_key + 1, &got, NULL,
                                            NULL), -ESTALE);
        assert_int_equal(tree_snapshot_read(path, NULL, 0, &got, NULL, NULL), -ESTALE);
        assert_null(got);

        /* one flipped bit anywhere: 512 places, the header's every byte among them */
        for (size_t i = 0; i < 512; i++) {
                size_t at = i < sizeof(SnapshotHeader) ? i : sizeof(SnapshotHeader) + (i * 7919u) % (len - sizeof(SnapshotHeader));
                memcpy(bytes, good, len);
                bytes[at] ^= (uint8_t) (1u << (i % 8));
                write_file(path, bytes, len, false);
                int r = read_back(path);
                if (r != -EBADMSG && r != -ESTALE)
                        print_error("a bit flipped at byte %zu of %zu: %d\n", at, len, r);
                assert_true(r == -EBADMSG || r == -ESTALE);
        }
        /* cut short anywhere, or grown */
        const size_t cuts[] = { 0, 1, sizeof(SnapshotHeader) - 1, sizeof(SnapshotHeader), len / 2, len - 1 };
        for (size_t i = 0; i < ELEMENTSOF(cuts); i++) {
                write_file(path, good, cuts[i], false);
                assert_int_equal(read_back(path), -EBADMSG);
        }
        memcpy(bytes, good, len);
        write_file(path, bytes, len, false);
        int fd = open(path, O_WRONLY | O_APPEND);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "x", 1), 1);
        close(fd);
        assert_int_equal(read_back(path), -EBADMSG);
        /* garbage of the same size; not a regular file */
        for (size_t i = 0; i < len; i++)
                bytes[i] = (uint8_t) (i * 2654435761u >> 13);
        write_file(path, bytes, len, false);
        assert_int_equal(read_back(path), -EBADMSG);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(mkfifo(path, 0600), 0);
        assert_int_equal(read_back(path), -EBADMSG);
        assert_int_equal(unlink(path), 0);

        /* crafted, with a right digest: out of bounds, unsorted, cycles, shared inodes. The sections
         * sit at any byte offset in the file: they are edited in aligned copies and copied back. */
        Layout l = layout_of(good);
        size_t nodes_len = l.h.n_nodes * sizeof(SnapshotNode), children_len = l.h.n_children * sizeof(uint32_t),
               replicas_len = l.h.n_replicas * sizeof(SnapshotReplica),
               ids_len = l.h.n_file_ids * sizeof(struct TreeFileEntry);
        _cleanup_free_ SnapshotNode *nodes = malloc(nodes_len);
        _cleanup_free_ uint32_t *children = malloc(children_len);
        _cleanup_free_ SnapshotReplica *replicas = malloc(replicas_len);
        _cleanup_free_ struct TreeFileEntry *ids = malloc(ids_len);
        assert_true(nodes && children && replicas && ids);
        size_t last_file = l.h.n_nodes - 1, first_child_dir = 1;
        memcpy(nodes, good + l.nodes, nodes_len);
        while (first_child_dir < l.h.n_nodes && nodes[first_child_dir].n_children <= 1)
                first_child_dir++;
        assert_true(first_child_dir < l.h.n_nodes);

        for (int c = 0; c < 11; c++) {
                memcpy(bytes, good, len);
                memcpy(nodes, good + l.nodes, nodes_len);
                memcpy(children, good + l.children, children_len);
                memcpy(replicas, good + l.replicas, replicas_len);
                memcpy(ids, good + l.file_ids, ids_len);
                SnapshotNode *d = nodes + first_child_dir;
                switch (c) {
                case 0: nodes[last_file].name = l.h.strings_len; break;
                case 1: replicas[0].rel_path = l.h.strings_len + 5; break;
                case 2: bytes[l.nodes - 1] = 'x'; break;                /* the last string unterminated */
                case 3: {                                               /* two children swapped */
                        uint32_t x = children[d->children_first];
                        children[d->children_first] = children[d->children_first + 1];
                        children[d->children_first + 1] = x;
                        break;
                }
                case 4: children[d->children_first] = (uint32_t) first_child_dir; break;   /* a dir its own child */
                case 5: children[0] = 0; break;                         /* the root as a child */
                case 6: children[d->children_first] = (uint32_t) l.h.n_nodes; break;
                case 7: nodes[last_file].ino = nodes[last_file - 1].ino; break;
                case 8: nodes[last_file].is_dir = 1; break;             /* a dir that has replicas */
                case 9: ids[0].file_id = INT64_MAX; break;              /* the file index out of order */
                case 10: nodes[1].children_first += 1; break;           /* ranges that do not follow on */
                }
                if (c != 2) {
                        memcpy(bytes + l.nodes, nodes, nodes_len);
                        memcpy(bytes + l.children, children, children_len);
                        memcpy(bytes + l.replicas, replicas, replicas_len);
                        memcpy(bytes + l.file_ids, ids, ids_len);
                }
                assert_memory_not_equal(bytes, good, len);
                write_file(path, bytes, len, true);
                int r = read_back(path);
                if (r != -EBADMSG)
                        print_error("crafted case %d: %d\n", c, r);
                assert_int_equal(r, -EBADMSG);
        }
        /* the same bytes rehashed untouched still read: the crafting above is what was refused */
        write_file(path, good, len, true);
        assert_int_equal(read_back(path), 0);
        tree_unref(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_replicas_and_collisions, setup, teardown),
                cmocka_unit_test_setup_teardown(test_collision_with_suffixed_name, setup, teardown),
                cmocka_unit_test_setup_teardown(test_inodes_stable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lookup_and_children, setup, teardown),
                cmocka_unit_test_setup_teardown(test_big_album, setup, teardown),
                cmocka_unit_test_setup_teardown(test_album_rules, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dir_and_file_names, setup, teardown),
                cmocka_unit_test_setup_teardown(test_diff, setup, teardown),
                cmocka_unit_test_setup_teardown(test_store_refcount, setup, teardown),
                cmocka_unit_test_setup_teardown(test_empty_catalog, setup, teardown),
                cmocka_unit_test_setup_teardown(test_builder_copies_rows, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failpoint, setup, teardown),
                cmocka_unit_test_setup_teardown(test_snapshot_round_trip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_snapshot_refused, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
