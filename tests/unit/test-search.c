/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Search: the query parser (valid and hostile input), and queries over a real catalog in a temp dir
 * mapped to a real tree: diacritics, prefixes, phrases, fields, years, boolean operators, ranking,
 * replicas, the triggers that keep the index in step, the v1 -> v2 migration, and a damaged FTS5
 * index detected and rebuilt (at a search and at open). */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "catalog.h"
#include "macro.h"
#include "search.h"
#include "tree.h"

#define TEMPLATE "{albumartist}/{album} ({year})/{track:02} - {title}.{ext}"

/* ---- the parser ---- */

typedef struct ParseCase {
        const char *query;
        const char *match;      /* NULL: no text part */
        int year_min, year_max;
} ParseCase;

static void test_parse_valid(void **state) {
        static const ParseCase cases[] = {
                { "beatles", "\"beatles\"" },
                { "kind of blue", "((\"kind\" AND \"of\") AND \"blue\")" },
                { "artist:miles", "{artist albumartist}: \"miles\"" },
                { "ARTIST:Miles", "{artist albumartist}: \"Miles\"" },
                { "albumartist:x album:y", "(albumartist: \"x\" AND album: \"y\")" },
                { "title:\"so what\"", "title: \"so what\"" },
                { "genre:jazz composer:evans", "(genre: \"jazz\" AND composer: \"evans\")" },
                { "\"kind of blue\"", "\"kind of blue\"" },
                { "bea*", "\"bea\"*" },
                { "\"kind of bl\"*", "\"kind of bl\"*" },
                { "a OR b c", "(\"a\" OR (\"b\" AND \"c\"))" },
                { "a AND b OR c", "((\"a\" AND \"b\") OR \"c\")" },
                { "a NOT b", "(\"a\" NOT \"b\")" },
                { "a b NOT c", "(\"a\" AND (\"b\" NOT \"c\"))" },
                { "(a OR b) c", "((\"a\" OR \"b\") AND \"c\")" },
                { "  ( ( a ) )  ", "\"a\"" },
                { "simon & garfunkel", "(\"simon\" AND \"garfunkel\")" },
                { "and or not", "((\"and\" AND \"or\") AND \"not\")" },
                { "Beyoncé", "\"Beyoncé\"" },
                { "AC/DC", "\"AC/DC\"" },
                /* FTS5 syntax typed by a user stays words */
                { "NEAR(a b)", "(\"NEAR\" AND (\"a\" AND \"b\"))" },
                { "{artist}:x", "\"{artist}:x\"" },
                { "1=1 OR x", "(\"1=1\" OR \"x\")" },
                { "x^ +y -z", "((\"x^\" AND \"+y\") AND \"-z\")" },
                { "12:30", "\"12:30\"" },
                { "year:1984", NULL, 1984, 1984 },
                { "miles year:1950..1969", "\"miles\"", 1950, 1969 },
                { "year:..1969 jazz", "\"jazz\"", 0, 1969 },
                { "year:2000..", NULL, 2000, 0 },
                { "year:1950..1980 year:1960..1990 x", "\"x\"", 1960, 1980 },
                { "(a OR b) year:1970", "(\"a\" OR \"b\")", 1970, 1970 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                SearchQuery q = {};
                char *reason = NULL;

                int r = search_parse(cases[i].query, &q, &reason);
                if (r < 0)
                        fail_msg("\"%s\": %s", cases[i].query, strna(reason));
                if (cases[i].match)
                        assert_non_null(q.match);
                if (!cases[i].match && q.match)
                        fail_msg("\"%s\": unexpected match %s", cases[i].query, q.match);
                if (cases[i].match && strcmp(q.match, cases[i].match) != 0)
                        fail_msg("\"%s\": got %s, want %s", cases[i].query, q.match, cases[i].match);
                assert_int_equal(q.year_min, cases[i].year_min);
                assert_int_equal(q.year_max, cases[i].year_max);
                search_query_done(&q);
                free(reason);
        }
}

static void test_parse_invalid(void **state) {
        static const struct {
                const char *query;
                const char *reason_has;
        } cases[] = {
                { "", "empty" },
                { "    ", "empty" },
                { "&", "no letters" },
                { "\"", "never closed" },
                { "say \"hi", "never closed" },
                { "x\"y", "quote inside" },
                { "\"a\"b", "space after" },
                { "colour:red", "Unknown field \"colour\"" },
                { "a:b:c", "Unknown field \"a\"" },
                { "title:", "needs a word" },
                { "title: x", "needs a word" },
                { "NOT a", "NOT needs a word before" },
                { "NOT", "NOT needs a word before" },
                { "a NOT", "NOT needs a word after" },
                { "a AND", "AND needs a word after" },
                { "a OR", "OR needs a word after" },
                { "OR a", "OR needs a word before" },
                { "AND a", "AND needs a word before" },
                { "a OR OR b", "OR needs a word after" },
                { "()", "Empty parentheses" },
                { "(a", "never closed" },
                { "a)", "has no \"(\"" },
                { "((((((((((a))))))))))", "nest deeper" },
                { "*", "no letters" },
                { "&*", "not a prefix" },
                { "year:abc", "is not a year" },
                { "year:", "needs a word" },
                { "year:..", "is not a year" },
                { "year:0", "is not a year" },
                { "year:19840", "is not a year" },
                { "year:1989..1980", "runs backwards" },
                { "year:1950 year:1960", "exclude each other" },
                { "a OR year:1980", "only be ANDed" },
                { "a NOT year:1980", "only be ANDed" },
                { "(a year:1980) OR b", "only be ANDed" },
                { "\xff\xfe", "UTF-8" },
                { "caf\xc3", "UTF-8" },
                { "\xc0\xaf", "UTF-8" },      /* overlong '/' */
                { "\xed\xa0\x80", "UTF-8" },  /* a surrogate */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                SearchQuery q = {};
                char *reason = NULL;

                int r = search_parse(cases[i].query, &q, &reason);
                if (r != -EINVAL)
                        fail_msg("\"%s\": expected -EINVAL, got %d (%s)", cases[i].query, r, strna(q.match));
                assert_non_null(reason);
                if (!strstr(reason, cases[i].reason_has))
                        fail_msg("\"%s\": reason \"%s\" lacks \"%s\"", cases[i].query, reason, cases[i].reason_has);
                assert_null(q.match);
                free(reason);
        }
}

static void test_parse_limits(void **state) {
        char big[SEARCH_QUERY_MAX + 2], terms[512] = "";
        SearchQuery q = {};
        char *reason = NULL;

        /* exactly the maximum is fine, one byte more is not */
        memset(big, 'a', SEARCH_QUERY_MAX);
        big[SEARCH_QUERY_MAX] = 0;
        assert_int_equal(search_parse(big, &q, &reason), 0);
        search_query_done(&q);
        big[SEARCH_QUERY_MAX] = 'a';
        big[SEARCH_QUERY_MAX + 1] = 0;
        assert_int_equal(search_parse(big, &q, &reason), -EINVAL);
        assert_non_null(strstr(reason, "longer than 1024"));
        free(reason);
        reason = NULL;

        for (int i = 0; i < SEARCH_TERMS_MAX; i++)
                strcat(terms, "w ");
        assert_int_equal(search_parse(terms, &q, &reason), 0);
        search_query_done(&q);
        strcat(terms, "w");
        assert_int_equal(search_parse(terms, &q, &reason), -EINVAL);
        assert_non_null(strstr(reason, "more than 32"));
        free(reason);
        reason = NULL;

        /* a query of nothing but operators and quotes, and control bytes: an error, never a crash */
        assert_int_equal(search_parse("\" \" \" \"", &q, &reason), -EINVAL);
        free(reason);
        reason = NULL;
        assert_int_equal(search_parse("\x01\x02 OR \x7f", &q, &reason), -EINVAL);
        free(reason);
}

static void test_plan(void **state) {
        static const struct {
                const char *query;
                const char *match;
                int year_min, year_max;
        } cases[] = {
                /* a short range with text: FTS5 terms of the year column */
                { "miles year:1958..1960", "\"miles\" AND year: (\"1958\" OR \"1959\" OR \"1960\")", 0, 0 },
                { "(a OR b) year:1999", "(\"a\" OR \"b\") AND year: \"1999\"", 0, 0 },
                /* alone, open or wide: a SQL condition */
                { "year:1999", NULL, 1999, 1999 },
                { "a year:2000..", "\"a\"", 2000, 0 },
                { "a year:1900..1999", "\"a\"", 1900, 1999 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                SearchQuery q = {};
                CatalogSearchQuery cq;
                char *reason = NULL, *buffer = NULL;

                assert_int_equal(search_parse(cases[i].query, &q, &reason), 0);
                assert_int_equal(search_plan(&q, true, 10, &cq, &buffer), 0);
                if (cases[i].match)
                        assert_string_equal(cq.match, cases[i].match);
                else
                        assert_null(cq.match);
                assert_int_equal(cq.year_min, cases[i].year_min);
                assert_int_equal(cq.year_max, cases[i].year_max);
                assert_true(cq.ranked);
                assert_int_equal(cq.limit, 10);
                free(buffer);
                search_query_done(&q);
        }
}

/* ---- over a catalog ---- */

typedef struct Spec {
        const char *origin;
        const char *rel_path;
        const char *artist, *albumartist, *album, *title, *genre, *composer;
        int year, track;
} Spec;

static const Spec library[] = {
        { "a", "01.flac", "Beyoncé", NULL, "I Am... Sasha Fierce", "Halo", "Pop", NULL, 2008, 1 },
        { "a", "02.flac", "Beyoncé", NULL, "Dangerously in Love", "Crazy in Love", "R&B", NULL, 2003, 1 },
        { "a", "03.flac", "Miles Davis", NULL, "Kind of Blue", "So What", "Jazz", "Miles Davis", 1959, 1 },
        { "a", "04.flac", "Miles Davis", NULL, "Kind of Blue", "Blue in Green", "Jazz", "Bill Evans", 1959, 3 },
        { "a", "05.flac", "John Coltrane", NULL, "Blue Train", "Blue Train", "Jazz", NULL, 1957, 1 },
        { "a", "06.flac", NULL, "Bill Evans Trio", "Waltz for Debby", "Waltz for Debby", "Jazz", NULL, 1961, 2 },
        { "a", "07.flac", "Nobody", NULL, "No Year", "Timeless", "Ambient", NULL, 0, 1 },
        /* the same file on a second origin: one virtual file with two replicas (D3) */
        { "b", "03.flac", "Miles Davis", NULL, "Kind of Blue", "So What", "Jazz", "Miles Davis", 1959, 1 },
};

typedef struct Fixture {
        char dir[64];
        char db[128];
        Catalog *catalog;
        Template *tpl;
        Tree *tree;
} Fixture;

static void sync_origin(Fixture *f, const char *name, const Spec *specs, size_t n) {
        int64_t id = 0, gen = 0;
        CatalogBatch *b = NULL;
        char url[64];

        snprintf(url, sizeof url, "file:///srv/%s", name);
        assert_int_equal(catalog_origin_ensure(f->catalog, name, url, strcmp(name, "a") == 0 ? 10 : 20, &id), 0);
        assert_int_equal(catalog_scan_begin(f->catalog, id, &gen), 0);
        assert_int_equal(catalog_batch_begin(f->catalog, &b), 0);
        for (size_t i = 0; i < n; i++) {
                if (strcmp(specs[i].origin, name) != 0)
                        continue;
                CatalogFile cf = {
                        .origin_id = id,
                        .rel_path = (char *) specs[i].rel_path,
                        .size = 1000,
                        .mtime_ns = 1,
                        .format = (char *) "flac",
                        .parsed = true,
                        .tags = {
                                .artist = (char *) specs[i].artist,
                                .albumartist = (char *) specs[i].albumartist,
                                .album = (char *) specs[i].album,
                                .title = (char *) specs[i].title,
                                .genre = (char *) specs[i].genre,
                                .composer = (char *) specs[i].composer,
                                .year = specs[i].year,
                                .track = specs[i].track,
                        },
                };
                assert_int_equal(catalog_batch_upsert(b, &cf, gen), 0);
        }
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_scan_finish(f->catalog, id, gen, NULL), 0);
}

static void rebuild_tree(Fixture *f) {
        CatalogFile *files = NULL;
        size_t n = 0;

        tree_unref(f->tree);
        f->tree = NULL;
        assert_int_equal(catalog_load_files(f->catalog, &files, &n), 0);
        assert_int_equal(tree_build(f->catalog, f->tpl, files, n, &f->tree), 0);
        catalog_files_free(files, n);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        char *reason = NULL;

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-search-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->db, sizeof f->db, "%s/catalog.db", f->dir);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(template_parse(TEMPLATE, &f->tpl, &reason), 0);
        sync_origin(f, "a", library, ELEMENTSOF(library));
        sync_origin(f, "b", library, ELEMENTSOF(library));
        rebuild_tree(f);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[256];

        tree_unref(f->tree);
        catalog_close(f->catalog);
        template_free(f->tpl);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

/* The titles a query finds, sorted and joined with '|' (order-independent comparison). */
static char *titles(Fixture *f, const char *query, bool ranked) {
        SearchResult *res = NULL;
        size_t n = 0;
        char *reason = NULL;
        int r = search_run(f->catalog, f->tree, query, 100, ranked, &res, &n, &reason);
        if (r < 0)
                fail_msg("\"%s\": %d %s", query, r, strna(reason));

        const char *sorted[64];
        assert_true(n <= ELEMENTSOF(sorted));
        for (size_t i = 0; i < n; i++)
                sorted[i] = res[i].title;
        for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && strcmp(sorted[j - 1], sorted[j]) > 0; j--) {
                        const char *t = sorted[j];
                        sorted[j] = sorted[j - 1];
                        sorted[j - 1] = t;
                }
        char *out = calloc(1, 1024);
        assert_non_null(out);
        for (size_t i = 0; i < n; i++) {
                if (i > 0)
                        strcat(out, "|");
                strcat(out, sorted[i]);
        }
        search_results_free(res, n);
        return out;
}

static void expect(Fixture *f, const char *query, const char *want) {
        for (int ranked = 0; ranked <= 1; ranked++) {
                char *got = titles(f, query, ranked);
                if (strcmp(got, want) != 0)
                        fail_msg("\"%s\" (%s): got \"%s\", want \"%s\"", query, ranked ? "ranked" : "unranked",
                                 got, want);
                free(got);
        }
}

static void test_queries(void **state) {
        Fixture *f = *state;

        expect(f, "Beyonce", "Crazy in Love|Halo");
        expect(f, "BEYONCÉ halo", "Halo");
        expect(f, "beyoncè", "Crazy in Love|Halo");
        expect(f, "bey*", "Crazy in Love|Halo");
        expect(f, "\"kind of blue\"", "Blue in Green|So What");
        expect(f, "\"blue kind\"", "");
        expect(f, "\"kind of bl\"*", "Blue in Green|So What");
        expect(f, "title:blue", "Blue Train|Blue in Green");
        expect(f, "album:blue", "Blue Train|Blue in Green|So What");
        expect(f, "artist:evans", "Waltz for Debby");
        expect(f, "albumartist:evans", "Waltz for Debby");
        expect(f, "composer:evans", "Blue in Green");
        expect(f, "evans", "Blue in Green|Waltz for Debby");
        expect(f, "genre:jazz year:1958..1960", "Blue in Green|So What");
        expect(f, "jazz year:1900..1958", "Blue Train");         /* wide: the SQL condition */
        expect(f, "jazz year:1961..", "Waltz for Debby");
        expect(f, "year:..1958", "Blue Train");
        expect(f, "year:2003", "Crazy in Love");
        expect(f, "year:2000..", "Crazy in Love|Halo");
        expect(f, "2008", "Halo");                    /* a bare year is a word of the year column */
        expect(f, "0", "");                           /* no year is not the year 0 */
        expect(f, "blue NOT miles", "Blue Train");
        expect(f, "halo OR train", "Blue Train|Halo");
        expect(f, "(halo OR train) year:1957", "Blue Train");
        expect(f, "jazz NOT (evans OR coltrane)", "So What");
        expect(f, "r&b", "Crazy in Love");
        expect(f, "nothing-like-this", "");
        /* "So What" has two replicas: one result */
        expect(f, "\"so what\"", "So What");
}

static void test_results(void **state) {
        Fixture *f = *state;
        SearchResult *res = NULL;
        size_t n = 0;
        char *reason = NULL;

        /* Ranking: "Blue Train" (title and album) and "Blue in Green" (title and album) say "blue"
         * more than "So What" (album only). */
        assert_int_equal(search_run(f->catalog, f->tree, "blue", 100, true, &res, &n, &reason), 0);
        assert_int_equal(n, 3);
        for (size_t i = 1; i < n; i++)
                assert_true(res[i - 1].score >= res[i].score);
        assert_string_equal(res[2].title, "So What");
        assert_true(res[0].score > res[2].score);
        assert_true(res[2].score > 0);
        search_results_free(res, n);

        /* the virtual path, the tags, the limit */
        assert_int_equal(search_run(f->catalog, f->tree, "halo", 1, true, &res, &n, &reason), 0);
        assert_int_equal(n, 1);
        assert_string_equal(res[0].path, "Beyoncé/I Am... Sasha Fierce (2008)/01 - Halo.flac");
        assert_string_equal(res[0].artist, "Beyoncé");
        assert_string_equal(res[0].album, "I Am... Sasha Fierce");
        assert_ptr_equal(res[0].node, tree_lookup(f->tree, res[0].node->parent, "01 - Halo.flac"));
        search_results_free(res, n);

        assert_int_equal(search_run(f->catalog, f->tree, "jazz", 2, false, &res, &n, &reason), 0);
        assert_int_equal(n, 2);
        assert_true(res[0].score == 0.0);
        search_results_free(res, n);

        /* album artist stands in for a missing artist */
        assert_int_equal(search_run(f->catalog, f->tree, "debby", 10, true, &res, &n, &reason), 0);
        assert_int_equal(n, 1);
        assert_string_equal(res[0].artist, "Bill Evans Trio");
        search_results_free(res, n);

        /* limits and bad queries: -EINVAL with a reason */
        assert_int_equal(search_run(f->catalog, f->tree, "blue", 0, true, &res, &n, &reason), -EINVAL);
        assert_non_null(strstr(reason, "limit"));
        free(reason);
        reason = NULL;
        assert_int_equal(search_run(f->catalog, f->tree, "blue", SEARCH_LIMIT_MAX + 1, true, &res, &n, &reason), -EINVAL);
        free(reason);
        reason = NULL;
        assert_int_equal(search_run(f->catalog, f->tree, "colour:red", 10, true, &res, &n, &reason), -EINVAL);
        assert_non_null(strstr(reason, "colour"));
        free(reason);

        /* a file the tree does not have yet (a scan added it after the build) is left out */
        static const Spec extra[] = { { "a", "99.flac", "Late", NULL, "Arrival", "Blue Late", "Jazz", NULL, 2020, 1 } };
        Spec all[ELEMENTSOF(library) + 1];
        memcpy(all, library, sizeof library);
        all[ELEMENTSOF(library)] = extra[0];
        sync_origin(f, "a", all, ELEMENTSOF(all));
        char *got = titles(f, "late", true);
        assert_string_equal(got, "");
        free(got);
        rebuild_tree(f);
        expect(f, "late", "Blue Late");
}

/* The triggers: a changed tag, a removed file, a removed origin. */
static void test_index_follows_catalog(void **state) {
        Fixture *f = *state;
        Spec changed[ELEMENTSOF(library)];

        memcpy(changed, library, sizeof library);
        changed[0].title = "Halo (Live)";
        changed[1].rel_path = "02-renamed.flac";        /* 02.flac goes, 02-renamed.flac comes */
        sync_origin(f, "a", changed, ELEMENTSOF(changed));
        rebuild_tree(f);
        expect(f, "live", "Halo (Live)");
        expect(f, "crazy", "Crazy in Love");
        assert_int_equal(catalog_search_check(f->catalog), 0);

        sync_origin(f, "a", changed + 2, 3);    /* origin a keeps three files */
        rebuild_tree(f);
        expect(f, "beyonce", "");
        expect(f, "\"so what\"", "So What");     /* still on origin b */
        assert_int_equal(catalog_origin_remove(f->catalog, "b"), 0);
        rebuild_tree(f);
        expect(f, "\"so what\"", "So What");     /* and on a */
        expect(f, "jazz", "Blue Train|Blue in Green|So What");
        assert_int_equal(catalog_search_check(f->catalog), 0);
}

/* 5.2: the index lives in the catalog's transactions (D5), so a crash can never leave it out of
 * step. A child process commits track A, then dies in the middle of a batch that adds track B; the
 * catalog opened again finds A, not B, and its index is sound. */
static int child_commit_a_then_die(const char *db) {
        Catalog *c = NULL;
        CatalogBatch *b = NULL;
        int64_t id = 0, gen = 0;

        if (catalog_open(db, &c) < 0 || catalog_origin_ensure(c, "a", "file:///srv/a", 10, &id) < 0 ||
            catalog_scan_begin(c, id, &gen) < 0)
                return 2;
        const char *titles[] = { "Committed Aria", "Uncommitted Ballad" };
        for (size_t i = 0; i < 2; i++) {
                CatalogFile cf = {
                        .origin_id = id,
                        .rel_path = (char *) (i == 0 ? "crash-a.flac" : "crash-b.flac"),
                        .size = 1000,
                        .mtime_ns = 1,
                        .format = (char *) "flac",
                        .parsed = true,
                        .tags = { .artist = (char *) "Crash Test", .title = (char *) titles[i], .year = 2020 },
                };
                if (catalog_batch_begin(c, &b) < 0 || catalog_batch_upsert(b, &cf, gen) < 0)
                        return 3;
                if (i == 0 && catalog_batch_commit(b) < 0)
                        return 4;
        }
        _exit(0);       /* dies with B's batch open: no commit, no close, no checkpoint */
}

static void test_crash_mid_batch(void **state) {
        Fixture *f = *state;

        catalog_close(f->catalog);
        f->catalog = NULL;
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(child_commit_a_then_die(f->db));
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);

        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(catalog_search_check(f->catalog), 0);
        rebuild_tree(f);
        expect(f, "crash", "Committed Aria");
        expect(f, "ballad", "");
        expect(f, "title:blue", "Blue Train|Blue in Green");
}

static void exec_sql(const char *db, const char *sql) {
        sqlite3 *h = NULL;
        char *err = NULL;

        assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
        if (sqlite3_exec(h, sql, NULL, NULL, &err) != SQLITE_OK)
                fail_msg("%s: %s", sql, err);
        sqlite3_close(h);
}

static int64_t sql_int(const char *db, const char *sql) {
        sqlite3 *h = NULL;
        sqlite3_stmt *s = NULL;
        int64_t v = -1;

        assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &s, NULL), SQLITE_OK);
        if (sqlite3_step(s) == SQLITE_ROW)
                v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        sqlite3_close(h);
        return v;
}

/* A rescan that finds nothing new writes nothing to the index: the update trigger fires only when
 * an indexed column changes, not for the generation stamp or an upsert with the same tags. */
static void test_unchanged_rows_cost_nothing(void **state) {
        Fixture *f = *state;
        const char *index_bytes = "SELECT count(*) * 1000000 + total(length(block)) FROM files_fts_data";
        int64_t before = sql_int(f->db, index_bytes), id = 0, gen = 0;
        CatalogBatch *b = NULL;

        sync_origin(f, "a", library, ELEMENTSOF(library));     /* the same tags, upserted again */
        assert_int_equal(catalog_origin_ensure(f->catalog, "a", "file:///srv/a", 10, &id), 0);
        assert_int_equal(catalog_scan_begin(f->catalog, id, &gen), 0);
        assert_int_equal(catalog_batch_begin(f->catalog, &b), 0);
        for (size_t i = 0; i < ELEMENTSOF(library); i++)
                if (strcmp(library[i].origin, "a") == 0)
                        assert_int_equal(catalog_batch_touch(b, id, library[i].rel_path, gen), 0);
        assert_int_equal(catalog_batch_commit(b), 0);
        assert_int_equal(catalog_scan_finish(f->catalog, id, gen, NULL), 0);
        assert_int_equal(sql_int(f->db, index_bytes), before);

        /* and one changed tag does write */
        Spec changed[ELEMENTSOF(library)];
        memcpy(changed, library, sizeof library);
        changed[2].genre = "Cool Jazz";
        sync_origin(f, "a", changed, ELEMENTSOF(changed));
        assert_true(sql_int(f->db, index_bytes) != before);
        rebuild_tree(f);
        expect(f, "cool", "So What");
}

/* Garbage in the FTS5 shadow table's blocks, as a torn write or a bad disk would leave. */
#define DAMAGE "UPDATE files_fts_data SET block = x'00112233445566778899aabbccddeeff00112233' WHERE id > 10"

static void wait_rebuilt(Fixture *f) {
        for (int i = 0; catalog_search_rebuilding(f->catalog); i++) {
                assert_true(i < 1000);          /* 10 s */
                usleep(10000);
        }
}

static void test_corrupt_index_rebuilt_at_search(void **state) {
        Fixture *f = *state;
        SearchResult *res = NULL;
        size_t n = 0;
        char *reason = NULL;

        exec_sql(f->db, DAMAGE);
        assert_int_equal(catalog_search_check(f->catalog), -EBADMSG);
        /* the search notices and starts a rebuild; until it is over searches are -EBUSY */
        assert_int_equal(search_run(f->catalog, f->tree, "beyonce", 10, true, &res, &n, &reason), -EBUSY);
        wait_rebuilt(f);
        expect(f, "beyonce", "Crazy in Love|Halo");
        assert_int_equal(catalog_search_check(f->catalog), 0);
        /* the rest of the catalog never noticed */
        assert_int_equal(catalog_quick_check(f->catalog), 0);

        exec_sql(f->db, DAMAGE);
        assert_int_equal(catalog_search_repair(f->catalog), 1);
        assert_int_equal(catalog_search_repair(f->catalog), 0);

        /* closing while a rebuild runs: the close waits for it or interrupts it, never hangs */
        exec_sql(f->db, DAMAGE);
        assert_int_equal(search_run(f->catalog, f->tree, "beyonce", 10, true, &res, &n, &reason), -EBUSY);
        catalog_close(f->catalog);
        f->catalog = NULL;
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        /* damage was seen, so no clean-close marker: the check is due, and rebuilds if the close
         * interrupted the rebuild */
        assert_in_range(catalog_search_repair_if_due(f->catalog, NULL), 0, 1);
        expect(f, "beyonce", "Crazy in Love|Halo");
}

/* After an open that was not after a clean close, the index check is due, and runs once, when
 * asked (after the mount, D6): the open itself leaves the index alone. */
static void test_corrupt_index_rebuilt_when_due(void **state) {
        Fixture *f = *state;

        catalog_close(f->catalog);
        f->catalog = NULL;
        exec_sql(f->db, DAMAGE);        /* after a clean close: the marker no longer matches */
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(catalog_search_check(f->catalog), -EBADMSG);
        assert_int_equal(catalog_search_repair_if_due(f->catalog, NULL), 1);
        assert_int_equal(catalog_search_check(f->catalog), 0);
        expect(f, "title:blue", "Blue Train|Blue in Green");
        exec_sql(f->db, DAMAGE);
        assert_int_equal(catalog_search_repair_if_due(f->catalog, NULL), 0);    /* once */
        assert_int_equal(catalog_search_check(f->catalog), -EBADMSG);
}

/* A check that was due when the catalog opened and has not run by a clean close (the daemon
 * stopped first, or stopped it) is due at the next open too. */
static void test_check_due_survives_close(void **state) {
        Fixture *f = *state;
        atomic_bool stop = true;
        char marker[160];

        snprintf(marker, sizeof marker, "%s.clean", f->db);
        catalog_close(f->catalog);
        f->catalog = NULL;
        exec_sql(f->db, DAMAGE);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(catalog_search_repair_if_due(f->catalog, &stop), -ECANCELED);
        catalog_close(f->catalog);
        f->catalog = NULL;
        assert_int_equal(access(marker, F_OK), -1);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        catalog_close(f->catalog);      /* never asked for: still due */
        f->catalog = NULL;
        assert_int_equal(access(marker, F_OK), -1);

        /* a search while the check is due meets the damage itself: Busy, and a rebuild of its own */
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        SearchResult *res = NULL;
        size_t n = 0;
        char *reason = NULL;
        assert_int_equal(search_run(f->catalog, f->tree, "beyonce", 10, true, &res, &n, &reason), -EBUSY);
        stop = false;
        assert_in_range(catalog_search_repair_if_due(f->catalog, &stop), 0, 1);
        wait_rebuilt(f);
        expect(f, "beyonce", "Crazy in Love|Halo");
        /* the search saw damage: never vouched for, checked again next time, and sound */
        catalog_close(f->catalog);
        f->catalog = NULL;
        assert_int_equal(access(marker, F_OK), -1);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        assert_int_equal(catalog_search_repair_if_due(f->catalog, NULL), 0);
        assert_int_equal(catalog_search_check(f->catalog), 0);
}

/* The search connection must not cost the clean-close marker: after a search and a close, no -wal
 * is left behind and the marker is there, so the next start skips its checks (D6). */
static void test_clean_close_after_search(void **state) {
        Fixture *f = *state;
        char wal[160], marker[160];

        expect(f, "beyonce", "Crazy in Love|Halo");
        catalog_close(f->catalog);
        f->catalog = NULL;
        snprintf(wal, sizeof wal, "%s-wal", f->db);
        snprintf(marker, sizeof marker, "%s.clean", f->db);
        assert_int_equal(access(wal, F_OK), -1);
        assert_int_equal(access(marker, F_OK), 0);
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
}

/* A catalog of schema v1 with files gets the index filled by the migration. */
static void test_migration_fills_index(void **state) {
        Fixture *f = *state;

        catalog_close(f->catalog);
        f->catalog = NULL;
        exec_sql(f->db, "DROP TRIGGER files_fts_insert; DROP TRIGGER files_fts_delete; DROP TRIGGER files_fts_update;"
                        "DROP TABLE files_fts; DROP VIEW files_search; DROP INDEX files_year;"
                        "PRAGMA user_version = 1;");
        assert_int_equal(catalog_open(f->db, &f->catalog), 0);
        expect(f, "beyonce", "Crazy in Love|Halo");
        expect(f, "year:1961", "Waltz for Debby");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_valid),
                cmocka_unit_test(test_parse_invalid),
                cmocka_unit_test(test_parse_limits),
                cmocka_unit_test(test_plan),
                cmocka_unit_test_setup_teardown(test_queries, setup, teardown),
                cmocka_unit_test_setup_teardown(test_results, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_follows_catalog, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unchanged_rows_cost_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_index_rebuilt_at_search, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_index_rebuilt_when_due, setup, teardown),
                cmocka_unit_test_setup_teardown(test_check_due_survives_close, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_fills_index, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clean_close_after_search, setup, teardown),
                cmocka_unit_test_setup_teardown(test_crash_mid_batch, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
