/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Measures tree_build() on a synthetic library: time and heap for N tracks (default 100000), with
 * the catalog in a temp dir. Not a test. Build from a configured build dir, e.g.:
 *   cc -O2 -D_GNU_SOURCE -DMUSICFS_FAILPOINTS=1 -Iapi -Idaemon/util -Idaemon/catalog -Idaemon/tree \
 *      bench/tree-build.c build/daemon/tree/libmfs-tree.a build/daemon/catalog/libmfs-catalog.a \
 *      build/daemon/util/libmfs-util.a build/api/libmusicfs-api.a -lsqlite3 -lsystemd -lpthread \
 *      -o /tmp/tree-build && /tmp/tree-build 100000 */
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "tree.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static double cpu_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static double heap_mb(void) {
        struct mallinfo2 mi = mallinfo2();
        return (double) (mi.uordblks + mi.hblkhd) / (1024.0 * 1024.0);
}

static long rss_kb(void) {
        FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        long kb = -1;
        while (f && fgets(line, sizeof line, f))
                if (strncmp(line, "VmRSS:", 6) == 0)
                        kb = atol(line + 6);
        if (f)
                fclose(f);
        return kb;
}

#define CHECK(x) do { int _r = (x); if (_r < 0) { fprintf(stderr, "%s: %d\n", #x, _r); exit(1); } } while (0)

int main(int argc, char **argv) {
        size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
        char dir[] = "/tmp/tree-bench-XXXXXX", db[128];
        Catalog *c = NULL;
        Template *tpl = NULL;
        int64_t a = 0, b = 0, gen_a = 0, gen_b = 0;

        if (!mkdtemp(dir))
                return 1;
        snprintf(db, sizeof db, "%s/catalog.db", dir);
        CHECK(catalog_open(db, &c));
        CHECK(template_parse("{albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}", &tpl, NULL));
        CHECK(catalog_origin_ensure(c, "a", "file:///a", 10, &a));
        CHECK(catalog_origin_ensure(c, "b", "file:///b", 20, &b));
        CHECK(catalog_scan_begin(c, a, &gen_a));
        CHECK(catalog_scan_begin(c, b, &gen_b));

        double t0 = now();
        CatalogBatch *batch = NULL;
        CHECK(catalog_batch_begin(c, &batch));
        for (size_t i = 0; i < n; i++) {
                char rel[256], title[128], artist[64], album[96];
                size_t ar = i / 100, al = (i / 10) % 10, tr = i % 10;
                snprintf(artist, sizeof artist, "Artist Number %zu", ar);
                snprintf(album, sizeof album, "The Album Called %zu of %zu", al, ar);
                snprintf(title, sizeof title, "A Track With A Reasonably Long Title %zu", i);
                snprintf(rel, sizeof rel, "%s/%s/%02zu %s.flac", artist, album, tr + 1, title);
                CatalogFile f = {
                        /* every tenth file also lives on origin b: replicas */
                        .origin_id = a, .rel_path = rel, .size = 30000000 + i, .mtime_ns = (int64_t) i * 1000,
                        .format = (char *) "flac", .parsed = true,
                        .tags = { .title = title, .artist = artist, .album = album, .year = 1990 + (int) (ar % 30),
                                  .track = (int) tr + 1, .disc = (tr >= 5) + 1 },
                };
                CHECK(catalog_batch_upsert(batch, &f, gen_a));
                if (i % 10 == 0) {
                        f.origin_id = b;
                        CHECK(catalog_batch_upsert(batch, &f, gen_b));
                }
        }
        CHECK(catalog_batch_commit(batch));
        fprintf(stderr, "catalog filled with %zu rows in %.2f s\n", n + n / 10, now() - t0);

        for (int round = 0; round < 3; round++) {
                CatalogFile *files = NULL;
                size_t n_files = 0;
                Tree *t = NULL;

                malloc_trim(0);
                double h0 = heap_mb();
                long r0 = rss_kb();
                t0 = now();
                CHECK(catalog_load_files(c, &files, &n_files));
                double t_load = now() - t0;
                double h_files = heap_mb();

                t0 = now();
                double c0 = cpu_now();
                CHECK(tree_build(c, tpl, files, n_files, &t));
                double t_build = now() - t0, c_build = cpu_now() - c0;
                long r_peak = rss_kb();

                catalog_files_free(files, n_files);
                malloc_trim(0);
                double h_tree = heap_mb();
                long r1 = rss_kb();
                printf("round %d (%s): %zu rows -> %" PRIu64 " tracks, %" PRIu64 " nodes; load %.0f ms, build %.0f ms (cpu %.0f ms); "
                       "heap: files %.1f MB, tree %.1f MB; RSS before %ld MB, peak-ish %ld MB, after %ld MB\n",
                       round, round == 0 ? "assigns inodes" : "inodes known", n_files, tree_track_count(t),
                       tree_node_count(t), t_load * 1e3, t_build * 1e3, c_build * 1e3, h_files - h0, h_tree - h0, r0 / 1024,
                       r_peak / 1024, r1 / 1024);
                tree_unref(t);
        }

        template_free(tpl);
        catalog_close(c);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        return system(cmd) == 0 ? 0 : 1;
}
