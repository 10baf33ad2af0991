/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Search (issue #6): the query language and the one way to run a query. It owns the parsing of what
 * a person types into an FTS5 MATCH expression plus a year range, and the mapping of the catalog's
 * hits to virtual files in the published tree. The index itself and every SQL statement belong to
 * the catalog (catalog_search()); the bus (Search) and the mount (/.search/<query>/) are callers.
 *
 * The language:
 *   beatles abbey          words, in any field; several words all have to match (implicit AND)
 *   artist:miles           one field: artist (the track's or the album's), albumartist, album,
 *                          title, genre, composer; field names are case-insensitive
 *   "kind of blue"         an exact phrase; field:"..." too
 *   bea*                   a prefix
 *   year:1984 year:1980..1989 year:..1969 year:2000..   a year or a range (a condition on the
 *                          year tag, ANDed with the rest: not allowed inside OR or NOT)
 *   a AND b, a OR b, a NOT b, ( ... )   operators in capitals; NOT binds tighter than AND, AND
 *                          than OR; lower-case "and"/"or"/"not" are words
 * Matching ignores case and diacritics ("Beyonce" finds "Beyoncé"). Every word reaches FTS5 as a
 * quoted string, so nothing a user types is FTS5 syntax. Words made of ASCII punctuation alone
 * ("&", "-") are skipped: they index as nothing. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "tree.h"

#define SEARCH_QUERY_MAX 1024   /* bytes */
#define SEARCH_TERMS_MAX 32     /* words and phrases */
#define SEARCH_DEPTH_MAX 8      /* nested parentheses */
#define SEARCH_LIMIT_MAX 10000u

typedef struct SearchQuery {
        char *match;            /* FTS5 MATCH expression; NULL: a year condition alone */
        int year_min, year_max; /* inclusive, 0 = unbounded */
} SearchQuery;

/* -EINVAL with one sentence in *ret_reason (for people: it names the offending part) when the query
 * is empty, too long, not UTF-8, has an unknown field, an unbalanced quote or parenthesis, an operator
 * without its operands, too many terms, or a bad year. -ENOMEM. */
int search_parse(const char *query, SearchQuery *ret, char **ret_reason);
void search_query_done(SearchQuery *q);

/* The plan for catalog_search(). A year condition with text goes into the FTS5 expression when it
 * spans at most SEARCH_YEAR_TERMS_MAX years (year: ("1980" OR ... "1989")): FTS5 then intersects
 * doclists itself, where a SQL condition on files.year would have to look up every text match
 * ("the year:1999" at 1M tracks: 0.5 ms instead of 200 ms). A year alone, or an open or wide range,
 * stays a SQL condition (files_year index). *ret borrows from q and *ret_buffer (free it). */
#define SEARCH_YEAR_TERMS_MAX 50
int search_plan(const SearchQuery *q, bool ranked, size_t limit, CatalogSearchQuery *ret, char **ret_buffer);

typedef struct SearchResult {
        const TreeNode *node;   /* in the tree passed to search_run(): valid while it is held */
        char *path;             /* relative to the mountpoint: "Artist/Album/01 - Title.flac" */
        char *artist, *album, *title;   /* "" when the tag is missing */
        double score;           /* higher is better; 0 when unranked */
} SearchResult;

/* Parses and runs a query against the catalog and maps the hits to files of tree, best first, each
 * virtual file once (replicas of one file are one result); hits with no file in tree (a scan changed
 * the catalog since it was built) are left out. Ranked, the order does not depend on limit: a
 * smaller limit gets the start of a larger one's answer (the first CATALOG_SEARCH_CAP_DEFAULT
 * matches are scored; any beyond come after them unranked, score 0). limit 1..SEARCH_LIMIT_MAX.
 * -EINVAL with a reason as search_parse(); otherwise catalog_search()'s errors. */
int search_run(Catalog *c, const Tree *tree, const char *query, size_t limit, bool ranked,
               SearchResult **ret, size_t *ret_n, char **ret_reason);
void search_results_free(SearchResult *r, size_t n);
