/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Path templates (DESIGN.md D2): parsed once into segments of literal and field parts, rendered per
 * file while the tree is built, so rendering avoids re-reading the spec and allocates little.
 *
 * Rules beyond template.h, decided here:
 *  - A missing track renders nothing (not "00"); {disc} also renders nothing when it is directly
 *    followed by a {track} that is missing ("1-" alone would be noise).
 *  - A literal made only of separators (" - ", ".", ", " ...) that ends up next to missing fields
 *    with nothing else to separate is dropped: with no tags, "{disc}{track:02} - {title}.{ext}"
 *    renders "<stem>.flac", "{artist} - {album} - {title}" without album renders "A - T".
 *  - An empty "()" or "[]" around missing fields goes with the white space before it.
 *  - {artist} falls back to the album artist before "Unknown Artist". */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "macro.h"
#include "template.h"

#define TEMPLATE_MAX_LEN 4096
#define TEMPLATE_MAX_PARTS 64           /* parts in one segment */
#define TEMPLATE_MAX_WIDTH 16
#define EXT_KEEP_MAX 32                 /* a longer "extension" is not worth keeping when cutting */

typedef enum FieldId {
        FIELD_ALBUMARTIST,
        FIELD_ARTIST,
        FIELD_ALBUM,
        FIELD_TITLE,
        FIELD_YEAR,
        FIELD_GENRE,
        FIELD_COMPOSER,
        FIELD_EXT,
        FIELD_TRACK,
        FIELD_DISC,
        _FIELD_MAX,
} FieldId;

static const char *const field_names[_FIELD_MAX] = {
        [FIELD_ALBUMARTIST] = "albumartist",
        [FIELD_ARTIST] = "artist",
        [FIELD_ALBUM] = "album",
        [FIELD_TITLE] = "title",
        [FIELD_YEAR] = "year",
        [FIELD_GENRE] = "genre",
        [FIELD_COMPOSER] = "composer",
        [FIELD_EXT] = "ext",
        [FIELD_TRACK] = "track",
        [FIELD_DISC] = "disc",
};

static bool field_is_numeric(FieldId f) {
        return f == FIELD_YEAR || f == FIELD_TRACK || f == FIELD_DISC;
}

typedef struct Part {
        bool is_field;
        FieldId field;
        unsigned width;         /* zero padding for numeric fields, 0 = none */
        char *literal;
        size_t literal_len;
        bool separator_only;    /* literal made of " -_.,:;~|+" only */
} Part;

typedef struct Segment {
        Part *parts;
        size_t n_parts;
} Segment;

struct Template {
        Segment *segments;
        size_t n_segments;
        char *spec;
};

static bool is_ascii_space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool is_separator_char(char c) {
        return strchr(" -_.,:;~|+", c) && c != '\0';
}

static bool is_separator_text(const char *s, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (!is_separator_char(s[i]))
                        return false;
        return true;
}

void template_free(Template *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->n_segments; i++) {
                for (size_t j = 0; j < t->segments[i].n_parts; j++)
                        free(t->segments[i].parts[j].literal);
                free(t->segments[i].parts);
        }
        free(t->segments);
        free(t->spec);
        free(t);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Template *, template_free);

const char *template_spec(const Template *t) {
        return t ? t->spec : NULL;
}

static int reason_set(char **ret_reason, const char *format, ...) _printf_(2, 3);
static int reason_set(char **ret_reason, const char *format, ...) {
        if (ret_reason) {
                va_list ap;
                char *s = NULL;

                va_start(ap, format);
                if (vasprintf(&s, format, ap) < 0)
                        s = NULL;
                va_end(ap);
                free(*ret_reason);
                *ret_reason = s;
        }
        return -EINVAL;
}

static int segment_add_part(Segment *seg, const Part *p) {
        if (seg->n_parts >= TEMPLATE_MAX_PARTS)
                return -E2BIG;
        Part *n = realloc(seg->parts, (seg->n_parts + 1) * sizeof(Part));
        if (!n)
                return -ENOMEM;
        seg->parts = n;
        seg->parts[seg->n_parts++] = *p;
        return 0;
}

static int segment_add_literal(Segment *seg, const char *s, size_t len) {
        if (len == 0)
                return 0;
        Part p = {
                .literal = strndup(s, len),
                .literal_len = len,
                .separator_only = is_separator_text(s, len),
        };
        if (!p.literal)
                return -ENOMEM;
        int r = segment_add_part(seg, &p);
        if (r < 0)
                free(p.literal);
        return r;
}

static bool segment_has_field(const Segment *seg) {
        for (size_t i = 0; i < seg->n_parts; i++)
                if (seg->parts[i].is_field)
                        return true;
        return false;
}

/* Parses "{name}" or "{name:0N}" starting at spec[*i] == '{'; advances *i past the '}'. */
static int parse_field(const char *spec, size_t *i, Part *ret, char **ret_reason) {
        size_t start = *i, column = start + 1;
        const char *close = NULL;

        for (const char *c = spec + start + 1; *c; c++) {
                if (*c == '{')
                        break;
                if (*c == '}') {
                        close = c;
                        break;
                }
        }
        if (!close)
                return reason_set(ret_reason, "unbalanced brace '{' at column %zu", column);

        const char *body = spec + start + 1;
        size_t body_len = (size_t) (close - body);
        const char *colon = memchr(body, ':', body_len);
        size_t name_len = colon ? (size_t) (colon - body) : body_len;
        int width = 0;

        FieldId field = _FIELD_MAX;
        for (FieldId f = 0; f < _FIELD_MAX; f++)
                if (strlen(field_names[f]) == name_len && memcmp(field_names[f], body, name_len) == 0) {
                        field = f;
                        break;
                }
        if (field == _FIELD_MAX)
                return reason_set(ret_reason, "unknown field {%.*s} at column %zu", (int) name_len, body, column);

        if (colon) {
                const char *w = colon + 1;
                size_t w_len = (size_t) (close - w);

                if (w_len == 0 || w_len > 2 || strspn(w, "0123456789") < w_len)
                        return reason_set(ret_reason, "bad width in {%.*s} at column %zu, expected e.g. {track:02}",
                                          (int) body_len, body, column);
                width = atoi(w);
                if (width < 1 || width > TEMPLATE_MAX_WIDTH)
                        return reason_set(ret_reason, "bad width in {%.*s} at column %zu, must be 1..%d",
                                          (int) body_len, body, column, TEMPLATE_MAX_WIDTH);
                if (!field_is_numeric(field))
                        return reason_set(ret_reason, "width given to text field {%.*s} at column %zu",
                                          (int) body_len, body, column);
        }

        *ret = (Part) { .is_field = true, .field = field, .width = (unsigned) width };
        *i = (size_t) (close - spec) + 1;
        return 0;
}

static int template_add_segment(Template *t, Segment *seg) {
        Segment *n = realloc(t->segments, (t->n_segments + 1) * sizeof(Segment));
        if (!n)
                return -ENOMEM;
        t->segments = n;
        t->segments[t->n_segments++] = *seg;
        *seg = (Segment) {};
        return 0;
}

static void segment_clear(Segment *seg) {
        for (size_t j = 0; j < seg->n_parts; j++)
                free(seg->parts[j].literal);
        free(seg->parts);
        *seg = (Segment) {};
}

/* Ends the segment that started at column seg_column; at is the column of the '/' or the end. */
static int finish_segment(Template *t, Segment *seg, size_t seg_column, bool last, char **ret_reason) {
        if (seg->n_parts == 0) {
                if (seg_column == 1)
                        return reason_set(ret_reason, "absolute template: '/' at column 1, templates are relative");
                if (last)
                        return reason_set(ret_reason,
                                          "template has no file name part: it ends with '/' at column %zu",
                                          seg_column - 1);
                return reason_set(ret_reason, "empty path segment at column %zu", seg_column);
        }
        if (!segment_has_field(seg)) {
                const char *lit = seg->parts[0].literal;
                if (streq_ptr(lit, ".") || streq_ptr(lit, ".."))
                        return reason_set(ret_reason, "path segment \"%s\" at column %zu is not allowed",
                                          lit, seg_column);
                if (last)
                        return reason_set(ret_reason,
                                          "file name part \"%s\" at column %zu has no field, every file would get the same name",
                                          lit, seg_column);
        }
        return template_add_segment(t, seg);
}

int template_parse(const char *spec, Template **ret, char **ret_reason) {
        _cleanup_(template_freep) Template *t = NULL;
        Segment seg = {};
        size_t len, i = 0, literal_start = 0, seg_column = 1;
        int r;

        if (!spec || !ret)
                return -EINVAL;
        if (ret_reason)
                *ret_reason = NULL;

        len = strlen(spec);
        if (len == 0)
                return reason_set(ret_reason, "empty template");
        if (len > TEMPLATE_MAX_LEN)
                return reason_set(ret_reason, "template longer than %d bytes", TEMPLATE_MAX_LEN);
        if (spec[0] == '/')
                return reason_set(ret_reason, "absolute template: '/' at column 1, templates are relative");

        t = calloc(1, sizeof(Template));
        if (!t)
                return -ENOMEM;
        t->spec = strdup(spec);
        if (!t->spec)
                return -ENOMEM;

        while (i <= len) {
                char c = spec[i];

                if (c == '\0' || c == '/' || c == '{') {
                        r = segment_add_literal(&seg, spec + literal_start, i - literal_start);
                        if (r < 0)
                                goto fail;
                }

                if (c == '\0' || c == '/') {
                        r = finish_segment(t, &seg, seg_column, c == '\0', ret_reason);
                        if (r < 0)
                                goto fail;
                        i++;
                        literal_start = i;
                        seg_column = i + 1;
                } else if (c == '{') {
                        Part p;

                        r = parse_field(spec, &i, &p, ret_reason);
                        if (r < 0)
                                goto fail;
                        r = segment_add_part(&seg, &p);
                        if (r < 0)
                                goto fail;
                        literal_start = i;
                } else if (c == '}') {
                        r = reason_set(ret_reason, "unbalanced brace '}' at column %zu", i + 1);
                        goto fail;
                } else
                        i++;
        }

        *ret = TAKE_PTR(t);
        return 0;

fail:
        segment_clear(&seg);
        if (r == -E2BIG)
                r = reason_set(ret_reason, "more than %d parts in the path segment at column %zu",
                               TEMPLATE_MAX_PARTS, seg_column);
        return r;
}

/* ---- sanitising ---- */

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 when invalid. */
static size_t utf8_valid_len(const unsigned char *s, size_t n, uint32_t *ret_cp) {
        uint32_t cp;
        size_t len;

        if (s[0] < 0x80) {
                *ret_cp = s[0];
                return 1;
        }
        if (s[0] >= 0xc2 && s[0] <= 0xdf) {
                len = 2;
                cp = s[0] & 0x1f;
        } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
                len = 3;
                cp = s[0] & 0x0f;
        } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
                len = 4;
                cp = s[0] & 0x07;
        } else
                return 0;
        if (n < len)
                return 0;
        for (size_t k = 1; k < len; k++) {
                if ((s[k] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[k] & 0x3f);
        }
        /* overlong, surrogate, beyond U+10FFFF */
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        *ret_cp = cp;
        return len;
}

static size_t utf8_floor(const char *s, size_t at) {
        while (at > 0 && ((unsigned char) s[at] & 0xc0) == 0x80)
                at--;
        return at;
}

static void trim_span(const char **s, size_t *len) {
        while (*len > 0 && is_ascii_space((*s)[0])) {
                (*s)++;
                (*len)--;
        }
        while (*len > 0 && is_ascii_space((*s)[*len - 1]))
                (*len)--;
}

/* The rules of template.h for one path segment, written to buf (room for in_len + 2 bytes);
 * returns the length. keep_ext: when cutting to NAME_MAX, keep the suffix from the last '.' (a file
 * name's extension). */
static size_t sanitize_into(char *buf, const char *in, size_t in_len, bool keep_ext) {
        const char *s = in ?: "";
        size_t len = in ? in_len : 0, o = 0;

        trim_span(&s, &len);

        for (size_t i = 0; i < len;) {
                uint32_t cp;
                size_t n = utf8_valid_len((const unsigned char *) s + i, len - i, &cp);

                if (n == 0) {
                        buf[o++] = '_';
                        i++;
                } else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == '/') {
                        buf[o++] = '_';
                        i += n;
                } else {
                        memcpy(buf + o, s + i, n);
                        o += n;
                        i += n;
                }
        }
        buf[o] = '\0';

        if (o > NAME_MAX) {
                const char *dot = keep_ext ? strrchr(buf, '.') : NULL;
                size_t ext_len = dot ? o - (size_t) (dot - buf) : 0;

                if (!dot || dot == buf || ext_len > EXT_KEEP_MAX)
                        ext_len = 0;

                size_t stem_len = utf8_floor(buf, NAME_MAX - ext_len);
                while (stem_len > 0 && is_ascii_space(buf[stem_len - 1]))
                        stem_len--;
                memmove(buf + stem_len, buf + o - ext_len, ext_len);
                o = stem_len + ext_len;
                buf[o] = '\0';
        }

        if (o == 0 || strcmp(buf, ".") == 0 || strcmp(buf, "..") == 0) {
                buf[0] = '_';
                buf[1] = '\0';
                o = 1;
        }
        return o;
}

static char *sanitize(const char *in, size_t in_len, bool keep_ext) {
        char *buf = malloc((in ? in_len : 0) + 2);
        if (!buf)
                return NULL;
        sanitize_into(buf, in, in_len, keep_ext);
        return buf;
}

char *template_sanitize_segment(const char *s) {
        return sanitize(s, s ? strlen(s) : 0, false);
}

/* ---- rendering ---- */

/* The tag trimmed, or NULL when missing or blank. */
static const char *tag_value(const char *s, size_t *ret_len) {
        size_t len;

        if (!s)
                return NULL;
        len = strlen(s);
        trim_span(&s, &len);
        if (len == 0)
                return NULL;
        *ret_len = len;
        return s;
}

static const char *album_artist_value(const TrackTags *tags, bool compilation, size_t *ret_len) {
        const char *v;

        if (compilation) {
                *ret_len = strlen("Various Artists");
                return "Various Artists";
        }
        if ((v = tag_value(tags->albumartist, ret_len)) || (v = tag_value(tags->artist, ret_len)))
                return v;
        *ret_len = strlen("Unknown Artist");
        return "Unknown Artist";
}

int template_album_artist(const TrackTags *tags, bool compilation, char **ret) {
        static const TrackTags none = {};
        size_t len;
        const char *v = album_artist_value(tags ?: &none, compilation, &len);
        char *s = sanitize(v, len, false);

        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

typedef struct RenderedPart {
        const char *s;
        size_t len;
        bool is_field;
        bool separator_only;    /* literals */
        bool dropped;
        char num[32];
} RenderedPart;

/* "%0*d" for a positive n, without the cost of snprintf (three fields per file, 100k files). */
static int format_padded(char *buf, size_t size, int n, unsigned width, const char *suffix) {
        char digits[12];
        size_t nd = 0, o = 0;

        do {
                digits[nd++] = (char) ('0' + n % 10);
                n /= 10;
        } while (n > 0 && nd < sizeof digits);
        for (size_t w = nd; w < width && o + 1 < size; w++)
                buf[o++] = '0';
        while (nd > 0 && o + 1 < size)
                buf[o++] = digits[--nd];
        for (; suffix && *suffix && o + 1 < size; suffix++)
                buf[o++] = *suffix;
        buf[o] = '\0';
        return (int) o;
}

static void render_field(const Part *p, const Part *next, const TemplateInput *in, const TrackTags *tags,
                         RenderedPart *out) {
        const char *v = NULL;
        size_t len = 0;
        int n = 0;

        switch (p->field) {
        case FIELD_ALBUMARTIST:
                v = album_artist_value(tags, in->compilation, &len);
                break;
        case FIELD_ARTIST:
                if (!(v = tag_value(tags->artist, &len)) && !(v = tag_value(tags->albumartist, &len))) {
                        v = "Unknown Artist";
                        len = strlen(v);
                }
                break;
        case FIELD_ALBUM:
                if (!(v = tag_value(tags->album, &len))) {
                        v = "Unknown Album";
                        len = strlen(v);
                }
                break;
        case FIELD_TITLE:
                if (!(v = tag_value(tags->title, &len)))
                        v = tag_value(in->stem, &len);
                break;
        case FIELD_GENRE:
                v = tag_value(tags->genre, &len);
                break;
        case FIELD_COMPOSER:
                v = tag_value(tags->composer, &len);
                break;
        case FIELD_EXT:
                v = tag_value(in->ext, &len);
                break;
        case FIELD_YEAR:
                if (tags->year > 0)
                        n = format_padded(out->num, sizeof out->num, tags->year, p->width, NULL);
                break;
        case FIELD_TRACK:
                if (tags->track > 0)
                        n = format_padded(out->num, sizeof out->num, tags->track, p->width, NULL);
                break;
        case FIELD_DISC:
                if (in->multi_disc && !(next && next->is_field && next->field == FIELD_TRACK && tags->track <= 0))
                        n = format_padded(out->num, sizeof out->num, tags->disc > 0 ? tags->disc : 1, p->width, "-");
                break;
        default:
                break;
        }

        if (n > 0) {
                v = out->num;
                len = (size_t) n;
        }
        out->s = v ?: "";
        out->len = v ? len : 0;
        out->is_field = true;
}

static bool is_open_bracket(char c) {
        return c == '(' || c == '[';
}

/* "Album ()" -> "Album": an opening bracket ending a literal, then only missing fields (and
 * separators), then a literal starting with the matching close. */
static void drop_empty_brackets(RenderedPart *parts, size_t n) {
        for (size_t i = 0; i < n; i++) {
                RenderedPart *open = parts + i;
                bool any_field = false;
                size_t j;

                if (open->is_field || open->len == 0 || !is_open_bracket(open->s[open->len - 1]))
                        continue;
                char close = open->s[open->len - 1] == '(' ? ')' : ']';

                for (j = i + 1; j < n; j++) {
                        if (parts[j].is_field) {
                                if (parts[j].len > 0)
                                        break;
                                any_field = true;
                        } else if (!parts[j].separator_only || parts[j].len == 0)
                                break;
                }
                if (!any_field || j >= n || parts[j].is_field || parts[j].len == 0 || parts[j].s[0] != close)
                        continue;

                open->len--;
                while (open->len > 0 && is_ascii_space(open->s[open->len - 1]))
                        open->len--;
                for (size_t k = i + 1; k < j; k++)
                        parts[k].len = 0;
                parts[j].s++;
                parts[j].len--;
                parts[j].separator_only = is_separator_text(parts[j].s, parts[j].len);
        }
}

/* Separator literals that separate nothing because the fields beside them are missing. */
static void drop_dangling_separators(RenderedPart *parts, size_t n) {
        bool emitted_any = false, missing_since = false;
        ssize_t last_sep = -1;

        for (size_t i = 0; i < n; i++) {
                RenderedPart *p = parts + i;

                if (p->is_field) {
                        if (p->len == 0) {
                                missing_since = true;
                                continue;
                        }
                } else {
                        if (p->len == 0)
                                continue;
                        if (p->separator_only) {
                                if (missing_since && !emitted_any) {
                                        p->dropped = true;
                                        continue;
                                }
                                /* two separators around missing fields: keep the later one, which
                                 * is closer to what it introduces ("01.flac", not "01 - flac") */
                                if (missing_since && last_sep >= 0)
                                        parts[last_sep].dropped = true;
                                emitted_any = true;
                                missing_since = false;
                                last_sep = (ssize_t) i;
                                continue;
                        }
                }
                emitted_any = true;
                missing_since = false;
                last_sep = -1;
        }
        if (last_sep >= 0 && missing_since)
                parts[last_sep].dropped = true;
}

typedef struct StrBuf {
        char *s;
        size_t len, cap;
} StrBuf;

static int strbuf_reserve(StrBuf *b, size_t more) {
        if (b->len + more + 1 > b->cap) {
                size_t cap = b->cap ? b->cap : 128;
                while (cap < b->len + more + 1)
                        cap *= 2;
                char *n = realloc(b->s, cap);
                if (!n)
                        return -ENOMEM;
                b->s = n;
                b->cap = cap;
        }
        return 0;
}

static int strbuf_append(StrBuf *b, const char *s, size_t len) {
        int r = strbuf_reserve(b, len);
        if (r < 0)
                return r;
        memcpy(b->s + b->len, s, len);
        b->len += len;
        b->s[b->len] = '\0';
        return 0;
}

int template_render(const Template *t, const TemplateInput *in, char **ret_path) {
        static const TrackTags none = {};
        RenderedPart parts[TEMPLATE_MAX_PARTS];
        StrBuf path = {}, seg = {};
        int r = 0;

        if (!t || !in || !ret_path)
                return -EINVAL;
        const TrackTags *tags = in->tags ?: &none;

        for (size_t si = 0; si < t->n_segments; si++) {
                const Segment *s = t->segments + si;
                bool last = si + 1 == t->n_segments;

                for (size_t pi = 0; pi < s->n_parts; pi++) {
                        const Part *p = s->parts + pi;

                        parts[pi] = (RenderedPart) {};
                        if (p->is_field)
                                render_field(p, pi + 1 < s->n_parts ? p + 1 : NULL, in, tags, parts + pi);
                        else {
                                parts[pi].s = p->literal;
                                parts[pi].len = p->literal_len;
                                parts[pi].separator_only = p->separator_only;
                        }
                }
                drop_empty_brackets(parts, s->n_parts);
                drop_dangling_separators(parts, s->n_parts);

                seg.len = 0;
                for (size_t pi = 0; pi < s->n_parts; pi++)
                        if (!parts[pi].dropped && parts[pi].len > 0) {
                                r = strbuf_append(&seg, parts[pi].s, parts[pi].len);
                                if (r < 0)
                                        goto finish;
                        }

                if (si > 0) {
                        r = strbuf_append(&path, "/", 1);
                        if (r < 0)
                                goto finish;
                }
                r = strbuf_reserve(&path, seg.len + 2);
                if (r < 0)
                        goto finish;
                path.len += sanitize_into(path.s + path.len, seg.s, seg.len, last);
        }

        *ret_path = TAKE_PTR(path.s);
finish:
        free(seg.s);
        free(path.s);
        return r;
}
