/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The query language (search.h) and search_run(). The parser is a small recursive descent over a
 * hand-written lexer; it builds a tree of nodes, pulls the year conditions out of the top-level AND
 * and renders the rest as a fully parenthesised FTS5 expression in which every user word is a
 * quoted string (quotes doubled), so FTS5 never sees user syntax. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "macro.h"
#include "search.h"

#define ECHO_MAX 60     /* how much of a bad word a reason repeats */
#define YEAR_MAX 9999
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

typedef enum NodeKind {
        NODE_TERM,
        NODE_YEAR,
        NODE_AND,
        NODE_OR,
        NODE_NOT,
} NodeKind;

typedef struct Node {
        NodeKind kind;
        char *text;             /* TERM: the rendered FTS5 phrase, e.g. {artist albumartist}: "x"* */
        int year_min, year_max; /* YEAR */
        struct Node *a, *b;     /* AND, OR, NOT (a NOT b) */
} Node;

typedef enum TokenKind {
        TOK_END,
        TOK_WORD,               /* a word or phrase, possibly with a field */
        TOK_AND,
        TOK_OR,
        TOK_NOT,
        TOK_OPEN,
        TOK_CLOSE,
} TokenKind;

typedef struct Parser {
        const char *p;          /* next unread byte */
        TokenKind kind;         /* the current token */
        Node *word;             /* TOK_WORD: its node (owned until taken) */
        unsigned terms;
        unsigned depth;
        char *reason;
} Parser;

static void node_free(Node *n) {
        if (!n)
                return;
        node_free(n->a);
        node_free(n->b);
        free(n->text);
        free(n);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Node *, node_free);

_printf_(2, 3)
static int fail(Parser *ps, const char *format, ...) {
        va_list ap;
        if (ps->reason)
                return -EINVAL;         /* keep the first reason */
        va_start(ap, format);
        if (vasprintf(&ps->reason, format, ap) < 0)
                ps->reason = NULL;
        va_end(ap);
        return ps->reason ? -EINVAL : -ENOMEM;
}

static bool utf8_valid(const char *s) {
        const unsigned char *p = (const unsigned char *) s;
        while (*p) {
                unsigned n;
                uint32_t cp;
                if (*p < 0x80) {
                        p++;
                        continue;
                } else if ((*p & 0xe0) == 0xc0) {
                        n = 1;
                        cp = *p & 0x1f;
                } else if ((*p & 0xf0) == 0xe0) {
                        n = 2;
                        cp = *p & 0x0f;
                } else if ((*p & 0xf8) == 0xf0) {
                        n = 3;
                        cp = *p & 0x07;
                } else
                        return false;
                p++;
                for (unsigned i = 0; i < n; i++, p++) {
                        if ((*p & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (*p & 0x3f);
                }
                if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
                    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
        }
        return true;
}

static bool is_space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Bytes that end a bare word. */
static bool is_word_end(char c) {
        return c == 0 || is_space(c) || c == '(' || c == ')' || c == '"';
}

/* A word indexes as nothing when it holds only ASCII punctuation: unicode61 splits on it. */
static bool indexes_as_nothing(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
                        return false;
        }
        return true;
}

static const struct {
        const char *name;
        const char *columns;    /* FTS5 column filter */
} fields[] = {
        { "artist",      "{artist albumartist}" },
        { "albumartist", "albumartist" },
        { "album",       "album" },
        { "title",       "title" },
        { "genre",       "genre" },
        { "composer",    "composer" },
};

/* Renders one phrase: columns (or NULL for every column), the text as one FTS5 string, "*" for a
 * prefix. */
static int term_node(Parser *ps, const char *columns, const char *s, size_t n, bool prefix, Node **ret) {
        _cleanup_free_ char *text = NULL;
        char *q;

        if (++ps->terms > SEARCH_TERMS_MAX)
                return fail(ps, "The query has more than %d words and phrases.", SEARCH_TERMS_MAX);
        text = malloc((columns ? strlen(columns) + 2 : 0) + 2 * n + 4);
        if (!text)
                return -ENOMEM;
        q = text;
        if (columns) {
                q = stpcpy(q, columns);
                q = stpcpy(q, ": ");
        }
        *q++ = '"';
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '"')
                        *q++ = '"';
                *q++ = s[i];
        }
        *q++ = '"';
        if (prefix)
                *q++ = '*';
        *q = 0;

        Node *node = calloc(1, sizeof *node);
        if (!node)
                return -ENOMEM;
        node->kind = NODE_TERM;
        node->text = TAKE_PTR(text);
        *ret = node;
        return 0;
}

static int parse_year_number(const char *s, size_t n, int *ret) {
        int v = 0;
        if (n == 0 || n > 4)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
                v = v * 10 + (s[i] - '0');
        }
        if (v < 1 || v > YEAR_MAX)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* year:N, year:A..B, year:..B, year:A.. */
static int year_node(Parser *ps, const char *s, size_t n, Node **ret) {
        const char *dots = NULL;
        int lo = 0, hi = 0, r;

        for (size_t i = 0; i + 1 < n; i++)
                if (s[i] == '.' && s[i + 1] == '.') {
                        dots = s + i;
                        break;
                }
        if (!dots) {
                r = parse_year_number(s, n, &lo);
                hi = lo;
        } else {
                size_t left = (size_t) (dots - s), right = n - left - 2;
                r = left == 0 && right == 0 ? -EINVAL : 0;
                if (r >= 0 && left > 0)
                        r = parse_year_number(s, left, &lo);
                if (r >= 0 && right > 0)
                        r = parse_year_number(dots + 2, right, &hi);
        }
        if (r < 0)
                return fail(ps, "\"year:%.*s\" is not a year: use year:1984, year:1980..1989, year:..1969 or "
                            "year:2000.. (years 1 to %d).", (int) MIN(n, (size_t) ECHO_MAX), s, YEAR_MAX);
        if (lo > 0 && hi > 0 && lo > hi)
                return fail(ps, "The year range %d..%d runs backwards.", lo, hi);

        Node *node = calloc(1, sizeof *node);
        if (!node)
                return -ENOMEM;
        node->kind = NODE_YEAR;
        node->year_min = lo;
        node->year_max = hi;
        *ret = node;
        return 0;
}

/* Reads a quoted phrase starting after the opening quote; *end is the byte after the closing one. */
static int read_phrase(Parser *ps, const char *start, const char **ret_end) {
        const char *p = strchr(start, '"');
        if (!p)
                return fail(ps, "The quote before \"%.*s\" is never closed.", ECHO_MAX, start);
        *ret_end = p + 1;
        return 0;
}

/* Moves to the next token. TOK_WORD with ps->word == NULL is a word that indexes as nothing. */
static int next(Parser *ps) {
        const char *s, *colon = NULL, *body;
        const char *columns = NULL;
        bool is_year = false, prefix = false;
        int r;

        node_free(TAKE_PTR(ps->word));
        while (is_space(*ps->p))
                ps->p++;
        s = ps->p;
        switch (*s) {
        case 0:
                ps->kind = TOK_END;
                return 0;
        case '(':
                ps->p++;
                ps->kind = TOK_OPEN;
                return 0;
        case ')':
                ps->p++;
                ps->kind = TOK_CLOSE;
                return 0;
        }

        ps->kind = TOK_WORD;
        if (*s != '"') {
                /* A field prefix: letters, then ':' */
                const char *q = s;
                while ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z'))
                        q++;
                if (*q == ':' && q > s)
                        colon = q;
        }
        if (colon) {
                size_t len = (size_t) (colon - s);
                if (len == 4 && strncasecmp(s, "year", 4) == 0)
                        is_year = true;
                else {
                        for (size_t i = 0; i < ELEMENTSOF(fields); i++)
                                if (strlen(fields[i].name) == len && strncasecmp(s, fields[i].name, len) == 0)
                                        columns = fields[i].columns;
                        if (!columns)
                                return fail(ps, "Unknown field \"%.*s\": use artist, albumartist, album, title, "
                                            "genre, composer or year.", (int) MIN(len, (size_t) ECHO_MAX), s);
                }
                body = colon + 1;
                if (is_word_end(*body) && *body != '"')
                        return fail(ps, "\"%.*s:\" needs a word after the colon.", (int) MIN(len, (size_t) ECHO_MAX), s);
        } else
                body = s;

        if (*body == '"') {
                const char *end = NULL;
                r = read_phrase(ps, body + 1, &end);
                if (r < 0)
                        return r;
                ps->p = end;
                if (*ps->p == '*') {
                        prefix = true;
                        ps->p++;
                }
                if (!is_word_end(*ps->p))
                        return fail(ps, "Put a space after the closing quote of \"%.*s\".",
                                    (int) MIN((size_t) (end - body - 2), (size_t) ECHO_MAX), body + 1);
                const char *text = body + 1;
                size_t n = (size_t) (end - text - 1);
                if (is_year)
                        return year_node(ps, text, n, &ps->word);
                if (indexes_as_nothing(text, n))
                        return 0;
                return term_node(ps, columns, text, n, prefix, &ps->word);
        }

        const char *e = body;
        while (!is_word_end(*e))
                e++;
        ps->p = e;
        if (*e == '"')
                return fail(ps, "A quote inside the word \"%.*s\": put a space before it, or quote the whole word.",
                            (int) MIN((size_t) (e - s), (size_t) ECHO_MAX), s);
        size_t n = (size_t) (e - body);
        if (is_year)
                return year_node(ps, body, n, &ps->word);
        if (!colon) {
                if (n == 3 && memcmp(body, "AND", 3) == 0) {
                        ps->kind = TOK_AND;
                        return 0;
                }
                if (n == 2 && memcmp(body, "OR", 2) == 0) {
                        ps->kind = TOK_OR;
                        return 0;
                }
                if (n == 3 && memcmp(body, "NOT", 3) == 0) {
                        ps->kind = TOK_NOT;
                        return 0;
                }
        }
        if (n > 1 && body[n - 1] == '*') {
                prefix = true;
                n--;
        }
        if (indexes_as_nothing(body, n)) {
                if (prefix)
                        return fail(ps, "\"%.*s*\" is not a prefix: a prefix needs a letter or digit.",
                                    (int) MIN(n, (size_t) ECHO_MAX), body);
                return 0;
        }
        return term_node(ps, columns, body, n, prefix, &ps->word);
}

static Node *pair(NodeKind kind, Node *a, Node *b) {
        Node *n = calloc(1, sizeof *n);
        if (!n)
                return NULL;
        n->kind = kind;
        n->a = a;
        n->b = b;
        return n;
}

static int parse_or(Parser *ps, Node **ret);

static const char *token_name(TokenKind k) {
        switch (k) {
        case TOK_AND: return "AND";
        case TOK_OR: return "OR";
        case TOK_NOT: return "NOT";
        case TOK_CLOSE: return ")";
        default: return "the end of the query";
        }
}

/* A primary: a word or a parenthesised expression. *ret NULL: only words that index as nothing. */
static int parse_primary(Parser *ps, Node **ret) {
        int r;

        *ret = NULL;
        if (ps->kind == TOK_WORD) {
                *ret = TAKE_PTR(ps->word);
                return next(ps);
        }
        if (ps->kind == TOK_OPEN) {
                if (++ps->depth > SEARCH_DEPTH_MAX)
                        return fail(ps, "Parentheses nest deeper than %d levels.", SEARCH_DEPTH_MAX);
                r = next(ps);
                if (r < 0)
                        return r;
                if (ps->kind == TOK_CLOSE)
                        return fail(ps, "Empty parentheses \"()\".");
                r = parse_or(ps, ret);
                if (r < 0)
                        return r;
                if (ps->kind != TOK_CLOSE)
                        return fail(ps, "A \"(\" is never closed.");
                ps->depth--;
                return next(ps);
        }
        if (ps->kind == TOK_NOT)
                return fail(ps, "NOT needs a word before it: write \"a NOT b\" (NOT alone excludes from nothing).");
        return fail(ps, "Expected a word where %s is.", token_name(ps->kind));
}

/* Combines, where either side may be NULL (it indexed as nothing). */
static int combine(NodeKind kind, Node **acc, Node *b) {
        if (!b)
                return 0;
        if (!*acc) {
                *acc = b;
                return 0;
        }
        Node *n = pair(kind, *acc, b);
        if (!n) {
                node_free(b);
                return -ENOMEM;
        }
        *acc = n;
        return 0;
}

static int parse_not(Parser *ps, Node **ret) {
        _cleanup_(node_freep) Node *acc = NULL;
        int r;

        r = parse_primary(ps, &acc);
        if (r < 0)
                return r;
        while (ps->kind == TOK_NOT) {
                Node *b = NULL;
                r = next(ps);
                if (r < 0)
                        return r;
                if (ps->kind != TOK_WORD && ps->kind != TOK_OPEN)
                        return fail(ps, "NOT needs a word after it.");
                r = parse_primary(ps, &b);
                if (r < 0)
                        return r;
                if (!b)
                        continue;       /* "a NOT &": nothing to exclude */
                if (!acc) {
                        node_free(b);
                        return fail(ps, "NOT needs a word before it: write \"a NOT b\".");
                }
                r = combine(NODE_NOT, &acc, b);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(acc);
        return 0;
}

static int parse_and(Parser *ps, Node **ret) {
        _cleanup_(node_freep) Node *acc = NULL;
        int r;

        r = parse_not(ps, &acc);
        if (r < 0)
                return r;
        for (;;) {
                Node *b = NULL;
                if (ps->kind == TOK_AND) {
                        r = next(ps);
                        if (r < 0)
                                return r;
                        if (ps->kind != TOK_WORD && ps->kind != TOK_OPEN)
                                return fail(ps, "AND needs a word after it.");
                } else if (ps->kind != TOK_WORD && ps->kind != TOK_OPEN)
                        break;
                r = parse_not(ps, &b);
                if (r < 0)
                        return r;
                r = combine(NODE_AND, &acc, b);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(acc);
        return 0;
}

static int parse_or(Parser *ps, Node **ret) {
        _cleanup_(node_freep) Node *acc = NULL;
        int r;

        if (ps->kind == TOK_OR || ps->kind == TOK_AND)
                return fail(ps, "%s needs a word before it.", token_name(ps->kind));
        r = parse_and(ps, &acc);
        if (r < 0)
                return r;
        while (ps->kind == TOK_OR) {
                Node *b = NULL;
                r = next(ps);
                if (r < 0)
                        return r;
                if (ps->kind != TOK_WORD && ps->kind != TOK_OPEN)
                        return fail(ps, "OR needs a word after it.");
                r = parse_and(ps, &b);
                if (r < 0)
                        return r;
                r = combine(NODE_OR, &acc, b);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(acc);
        return 0;
}

static bool has_year(const Node *n) {
        return n && (n->kind == NODE_YEAR || has_year(n->a) || has_year(n->b));
}

/* Moves the YEAR conjuncts of the top-level AND into q; returns the rest (NULL if nothing is left).
 * Takes n. */
static int extract_years(Parser *ps, Node *n, SearchQuery *q, Node **ret) {
        _cleanup_(node_freep) Node *node = n;
        Node *a = NULL, *b = NULL;
        int r;

        *ret = NULL;
        if (node->kind == NODE_YEAR) {
                if (node->year_min > 0 && (q->year_min == 0 || node->year_min > q->year_min))
                        q->year_min = node->year_min;
                if (node->year_max > 0 && (q->year_max == 0 || node->year_max < q->year_max))
                        q->year_max = node->year_max;
                if (q->year_min > 0 && q->year_max > 0 && q->year_min > q->year_max)
                        return fail(ps, "The year conditions exclude each other.");
                return 0;
        }
        if (node->kind != NODE_AND) {
                if (has_year(node))
                        return fail(ps, "year: can only be ANDed with the rest of the query, not used inside OR or NOT.");
                *ret = TAKE_PTR(node);
                return 0;
        }
        r = extract_years(ps, TAKE_PTR(node->a), q, &a);
        if (r < 0)
                return r;
        r = extract_years(ps, TAKE_PTR(node->b), q, &b);
        if (r < 0) {
                node_free(a);
                return r;
        }
        if (!a || !b) {
                *ret = a ? a : b;
                return 0;
        }
        node->a = a;
        node->b = b;
        *ret = TAKE_PTR(node);
        return 0;
}

static int render(const Node *n, FILE *f) {
        static const char *const ops[] = { [NODE_AND] = " AND ", [NODE_OR] = " OR ", [NODE_NOT] = " NOT " };
        int r;

        if (n->kind == NODE_TERM)
                return fputs(n->text, f) < 0 ? -EIO : 0;
        if (fputc('(', f) == EOF)
                return -EIO;
        r = render(n->a, f);
        if (r < 0)
                return r;
        if (fputs(ops[n->kind], f) < 0)
                return -EIO;
        r = render(n->b, f);
        if (r < 0)
                return r;
        return fputc(')', f) == EOF ? -EIO : 0;
}

static int render_string(const Node *n, char **ret) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        int r;

        if (!f)
                return -ENOMEM;
        r = render(n, f);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0) {
                free(buf);
                return r;
        }
        *ret = buf;
        return 0;
}

void search_query_done(SearchQuery *q) {
        if (!q)
                return;
        free(q->match);
        *q = (SearchQuery) {};
}

int search_parse(const char *query, SearchQuery *ret, char **ret_reason) {
        _cleanup_(node_freep) Node *root = NULL, *rest = NULL;
        Parser ps = { .p = query };
        SearchQuery q = {};
        int r;

        if (!query || !ret)
                return -EINVAL;

        if (strlen(query) > SEARCH_QUERY_MAX)
                r = fail(&ps, "The query is longer than %d bytes.", SEARCH_QUERY_MAX);
        else if (!utf8_valid(query))
                r = fail(&ps, "The query is not valid UTF-8.");
        else
                r = next(&ps);
        if (r >= 0 && ps.kind == TOK_END)
                r = fail(&ps, "The query is empty.");
        if (r >= 0)
                r = parse_or(&ps, &root);
        if (r >= 0 && ps.kind == TOK_CLOSE)
                r = fail(&ps, "A \")\" has no \"(\" to close.");
        if (r >= 0 && ps.kind != TOK_END)
                r = fail(&ps, "Unexpected %s.", token_name(ps.kind));
        if (r >= 0 && !root)
                r = fail(&ps, "The query has no letters or digits to search for.");
        if (r >= 0)
                r = extract_years(&ps, TAKE_PTR(root), &q, &rest);
        if (r >= 0 && rest)
                r = render_string(rest, &q.match);
        node_free(TAKE_PTR(ps.word));

        if (r < 0) {
                search_query_done(&q);
                if (ret_reason)
                        *ret_reason = TAKE_PTR(ps.reason);
                free(ps.reason);
                return r;
        }
        free(ps.reason);
        *ret = q;
        return 0;
}

int search_plan(const SearchQuery *q, bool ranked, size_t limit, CatalogSearchQuery *ret, char **ret_buffer) {
        if (!q || !ret || !ret_buffer)
                return -EINVAL;
        *ret_buffer = NULL;
        *ret = (CatalogSearchQuery) {
                .match = q->match,
                .year_min = q->year_min,
                .year_max = q->year_max,
                .ranked = ranked,
                .limit = limit,
        };
        if (!q->match || q->year_min <= 0 || q->year_max <= 0 || q->year_max - q->year_min >= SEARCH_YEAR_TERMS_MAX)
                return 0;

        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fprintf(f, "%s AND year: ", q->match);
        if (q->year_min == q->year_max)
                fprintf(f, "\"%d\"", q->year_min);
        else {
                fputc('(', f);
                for (int y = q->year_min; y <= q->year_max; y++)
                        fprintf(f, "%s\"%d\"", y > q->year_min ? " OR " : "", y);
                fputc(')', f);
        }
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        ret->match = *ret_buffer = buf;
        ret->year_min = ret->year_max = 0;
        return 0;
}

void search_results_free(SearchResult *r, size_t n) {
        if (!r)
                return;
        for (size_t i = 0; i < n; i++) {
                free(r[i].path);
                free(r[i].artist);
                free(r[i].album);
                free(r[i].title);
        }
        free(r);
}

static char *strdup_or_empty(const char *s) {
        return strdup(s ? s : "");
}

/* catalog_search(), with a ranked answer whose order does not depend on the limit, so that Search
 * (any limit), musicfsctl search --limit N and /.search/ (FS_SEARCH_RESULTS_MAX) begin with the same
 * results. catalog_search() scores max(cap, limit) candidates, the first matches in rowid order: a
 * limit past the cap would score more of them and reorder the top (measured at 1M tracks: "the" at
 * limit 10000 shared 30 of its first 200 with limit 200). Past the cap, the first cap candidates are
 * scored, as for every smaller limit, and the later matches follow unranked (score 0, rowid order;
 * a scored match is always above 0). */
static int search_hits(Catalog *c, const CatalogSearchQuery *cq, CatalogSearchHit **ret, size_t *ret_n) {
        CatalogSearchHit *hits = NULL, *rest = NULL;
        size_t n = 0, n_rest = 0;
        int r;

        if (!cq->ranked || !cq->match || cq->limit <= CATALOG_SEARCH_CAP_DEFAULT)
                return catalog_search(c, cq, ret, ret_n);

        CatalogSearchQuery scored = *cq, unranked = *cq;
        scored.limit = scored.cap = CATALOG_SEARCH_CAP_DEFAULT;
        r = catalog_search(c, &scored, &hits, &n);
        if (r < 0)
                return r;
        if (n < scored.limit) {         /* every match was a candidate */
                *ret = hits;
                *ret_n = n;
                return 0;
        }

        /* The same matches in rowid order: the first n are the candidates, the rest follow. */
        unranked.ranked = false;
        r = catalog_search(c, &unranked, &rest, &n_rest);
        if (r < 0)
                goto fail;
        int64_t last_candidate = 0;
        for (size_t i = 0; i < n; i++)
                last_candidate = MAX(last_candidate, hits[i].file_id);
        CatalogSearchHit *all = reallocarray(hits, MAX(n + n_rest, (size_t) 1), sizeof *hits);
        if (!all) {
                r = -ENOMEM;
                goto fail;
        }
        hits = all;
        for (size_t i = 0; i < n_rest && n < cq->limit; i++)
                if (rest[i].file_id > last_candidate) {
                        hits[n++] = rest[i];    /* its strings go with it */
                        rest[i] = (CatalogSearchHit) {};
                }
        catalog_search_hits_free(rest, n_rest);
        *ret = hits;
        *ret_n = n;
        return 0;

fail:
        catalog_search_hits_free(hits, n);
        catalog_search_hits_free(rest, n_rest);
        return r;
}

int search_run(Catalog *c, const Tree *tree, const char *query, size_t limit, bool ranked,
               SearchResult **ret, size_t *ret_n, char **ret_reason) {
        _cleanup_(search_query_done) SearchQuery q = {};
        CatalogSearchHit *hits = NULL;
        SearchResult *results = NULL;
        size_t n_hits = 0, n = 0;
        int r;

        if (!c || !tree || !query || !ret || !ret_n)
                return -EINVAL;
        if (limit == 0 || limit > SEARCH_LIMIT_MAX) {
                if (ret_reason)
                        (void) asprintf(ret_reason, "The limit %zu is out of range: 1 to %u.", limit, SEARCH_LIMIT_MAX);
                return -EINVAL;
        }
        r = search_parse(query, &q, ret_reason);
        if (r < 0)
                return r;

        /* Ask for a few more than limit: replicas of one file are one result. */
        CatalogSearchQuery cq;
        _cleanup_free_ char *buffer = NULL;
        r = search_plan(&q, ranked, limit + limit / 4 + 4, &cq, &buffer);
        if (r < 0)
                return r;
        r = search_hits(c, &cq, &hits, &n_hits);
        if (r == -EINVAL && ret_reason)
                (void) asprintf(ret_reason, "The search index refused the query.");
        if (r < 0)
                return r;

        results = calloc(MAX(n_hits, (size_t) 1), sizeof *results);
        if (!results) {
                catalog_search_hits_free(hits, n_hits);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n_hits && n < limit; i++) {
                const TreeNode *node = tree_find_file(tree, hits[i].file_id);
                if (!node)
                        continue;
                /* Only a file with replicas can be hit twice (file ids are unique). */
                bool seen = false;
                for (size_t j = 0; node->n_replicas > 1 && j < n && !seen; j++)
                        seen = results[j].node == node;
                if (seen)
                        continue;
                SearchResult *res = &results[n];
                res->node = node;
                res->score = hits[i].score;
                res->path = tree_node_path(tree, node);
                res->artist = strdup_or_empty(hits[i].artist);
                res->album = strdup_or_empty(hits[i].album);
                res->title = strdup_or_empty(hits[i].title);
                n++;
                if (!res->path || !res->artist || !res->album || !res->title) {
                        r = -ENOMEM;
                        break;
                }
        }
        catalog_search_hits_free(hits, n_hits);
        if (r < 0) {
                search_results_free(results, n);
                return r;
        }
        *ret = results;
        *ret_n = n;
        return 0;
}
