/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The search micro-benchmark's driver (bench_search.py runs it; not a test). It times
 * search_parse() + search_plan() + catalog_search() on a catalog file, which is what Search and /.search/ pay
 * before mapping hits to the tree.
 *   search-bench init CATALOG            create the file with the current schema, then exit
 *   search-bench run CATALOG ROUNDS LIMIT < queries   one query per line; for each query, mode
 *                                       (unranked, ranked) and round prints
 *                                       "<mode>\t<usec>\t<hits>\t<query>" */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "catalog.h"
#include "search.h"

static long long usec_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long) ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
        Catalog *c = NULL;
        char line[2048];
        int r;

        if (argc >= 3 && strcmp(argv[1], "init") == 0) {
                r = catalog_open(argv[2], &c);
                if (r < 0) {
                        fprintf(stderr, "catalog_open: %s\n", strerror(-r));
                        return 1;
                }
                catalog_close(c);
                return 0;
        }
        if (argc < 5 || strcmp(argv[1], "run") != 0) {
                fprintf(stderr, "usage: %s init CATALOG | run CATALOG ROUNDS LIMIT < queries\n", argv[0]);
                return 2;
        }
        int rounds = atoi(argv[3]);
        size_t limit = (size_t) atol(argv[4]);
        r = catalog_open(argv[2], &c);
        if (r < 0) {
                fprintf(stderr, "catalog_open: %s\n", strerror(-r));
                return 1;
        }
        while (fgets(line, sizeof line, stdin)) {
                line[strcspn(line, "\n")] = 0;
                if (!*line)
                        continue;
                for (int round = 0; round < rounds; round++)
                        for (int ranked = 0; ranked <= 1; ranked++) {
                                SearchQuery q = {};
                                CatalogSearchHit *hits = NULL;
                                size_t n = 0;
                                char *reason = NULL;
                                long long t0 = usec_now();
                                r = search_parse(line, &q, &reason);
                                char *buffer = NULL;
                                CatalogSearchQuery cq;
                                if (r >= 0)
                                        r = search_plan(&q, ranked, limit, &cq, &buffer);
                                if (r >= 0)
                                        r = catalog_search(c, &cq, &hits, &n);
                                free(buffer);
                                long long dt = usec_now() - t0;
                                if (r < 0) {
                                        fprintf(stderr, "%s: %s %s\n", line, strerror(-r), reason ? reason : "");
                                        catalog_close(c);
                                        return 1;
                                }
                                printf("%s\t%lld\t%zu\t%s\n", ranked ? "ranked" : "unranked", dt, n, line);
                                catalog_search_hits_free(hits, n);
                                search_query_done(&q);
                                free(reason);
                        }
        }
        catalog_close(c);
        return 0;
}
