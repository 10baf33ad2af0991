/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

size_t utf8_decode(const char *s, size_t n, uint32_t *ret) {
        const unsigned char *p = (const unsigned char *) s;
        uint32_t cp, min;
        size_t len;

        if (n == 0)
                return 0;
        if (p[0] < 0x80) {
                *ret = p[0];
                return 1;
        }
        if (p[0] >= 0xc2 && p[0] <= 0xdf) {
                len = 2;
                cp = p[0] & 0x1f;
                min = 0x80;
        } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
                len = 3;
                cp = p[0] & 0x0f;
                min = 0x800;
        } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
                len = 4;
                cp = p[0] & 0x07;
                min = 0x10000;
        } else
                return 0;       /* a continuation byte, an overlong lead (c0, c1) or beyond U+10FFFF */

        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        *ret = cp;
        return len;
}

int json_write_escaped(FILE *f, const char *s, size_t n) {
        if (fputc('"', f) == EOF)
                return -EIO;
        for (size_t i = 0; i < n;) {
                unsigned char c = (unsigned char) s[i];
                uint32_t cp;
                size_t len;

                switch (c) {
                case '"':  fputs("\\\"", f); i++; continue;
                case '\\': fputs("\\\\", f); i++; continue;
                case '\b': fputs("\\b", f);  i++; continue;
                case '\f': fputs("\\f", f);  i++; continue;
                case '\n': fputs("\\n", f);  i++; continue;
                case '\r': fputs("\\r", f);  i++; continue;
                case '\t': fputs("\\t", f);  i++; continue;
                default:
                        break;
                }
                if (c < 0x20 || c == 0x7f) {
                        /* RFC 8259 requires escaping U+0000..U+001F; DEL is escaped too so that
                         * the output never carries a raw control character to a terminal. */
                        fprintf(f, "\\u%04x", c);
                        i++;
                        continue;
                }
                len = utf8_decode(s + i, n - i, &cp);
                if (len == 0) {
                        /* Not UTF-8: one replacement character per offending byte. */
                        fputs("\\ufffd", f);
                        i++;
                        continue;
                }
                fwrite(s + i, 1, len, f);
                i += len;
        }
        if (fputc('"', f) == EOF || ferror(f))
                return -EIO;
        return 0;
}

void json_writer_init(JsonWriter *w, FILE *f) {
        *w = (JsonWriter) { .f = f };
}

int json_writer_error(const JsonWriter *w) {
        return w->error;
}

static void json_fail(JsonWriter *w, int error) {
        if (w->error == 0)
                w->error = error;
}

/* Before any value: the comma between members, and whether a value may stand here at all. */
static bool json_before_value(JsonWriter *w) {
        if (w->error < 0)
                return false;
        if (w->depth == 0) {
                if (w->document) {
                        json_fail(w, -EINVAL);  /* one document at a time: call json_writer_finish() */
                        return false;
                }
                w->document = true;
                return true;
        }
        if (w->kind[w->depth - 1] == 'o') {
                if (!w->after_key) {
                        json_fail(w, -EINVAL);
                        return false;
                }
                w->after_key = false;
                return true;
        }
        if (w->has_member[w->depth - 1])
                fputc(',', w->f);
        w->has_member[w->depth - 1] = true;
        return true;
}

static void json_begin(JsonWriter *w, char kind) {
        if (!json_before_value(w))
                return;
        if (w->depth + 1 >= JSON_MAX_DEPTH) {
                json_fail(w, -E2BIG);
                return;
        }
        fputc(kind == 'o' ? '{' : '[', w->f);
        w->kind[w->depth] = kind;
        w->has_member[w->depth] = false;
        w->depth++;
}

static void json_end(JsonWriter *w, char kind) {
        if (w->error < 0)
                return;
        if (w->depth == 0 || w->kind[w->depth - 1] != kind || w->after_key) {
                json_fail(w, -EINVAL);
                return;
        }
        w->depth--;
        fputc(kind == 'o' ? '}' : ']', w->f);
}

void json_begin_object(JsonWriter *w) { json_begin(w, 'o'); }
void json_end_object(JsonWriter *w)   { json_end(w, 'o'); }
void json_begin_array(JsonWriter *w)  { json_begin(w, 'a'); }
void json_end_array(JsonWriter *w)    { json_end(w, 'a'); }

void json_key(JsonWriter *w, const char *key) {
        if (w->error < 0)
                return;
        if (w->depth == 0 || w->kind[w->depth - 1] != 'o' || w->after_key || !key) {
                json_fail(w, -EINVAL);
                return;
        }
        if (w->has_member[w->depth - 1])
                fputc(',', w->f);
        w->has_member[w->depth - 1] = true;
        if (json_write_escaped(w->f, key, strlen(key)) < 0)
                json_fail(w, -EIO);
        fputc(':', w->f);
        w->after_key = true;
}

void json_string_len(JsonWriter *w, const char *s, size_t n) {
        if (!json_before_value(w))
                return;
        if (!s) {
                fputs("null", w->f);
                return;
        }
        if (json_write_escaped(w->f, s, n) < 0)
                json_fail(w, -EIO);
}

void json_string(JsonWriter *w, const char *s) {
        json_string_len(w, s, s ? strlen(s) : 0);
}

void json_uint(JsonWriter *w, uint64_t v) {
        if (json_before_value(w))
                fprintf(w->f, "%" PRIu64, v);
}

void json_int(JsonWriter *w, int64_t v) {
        if (json_before_value(w))
                fprintf(w->f, "%" PRIi64, v);
}

void json_double(JsonWriter *w, double v) {
        char buf[64];

        if (!json_before_value(w))
                return;
        if (!isfinite(v)) {
                fputs("null", w->f);    /* JSON has no NaN or infinity */
                return;
        }
        /* The shortest of %.15g and %.17g that reads back as the same double. */
        snprintf(buf, sizeof buf, "%.15g", v);
        if (strtod(buf, NULL) != v)
                snprintf(buf, sizeof buf, "%.17g", v);
        /* %g never writes a locale decimal comma here: musicfsctl only sets LC_CTYPE. */
        fputs(buf, w->f);
}

void json_bool(JsonWriter *w, bool v) {
        if (json_before_value(w))
                fputs(v ? "true" : "false", w->f);
}

void json_null(JsonWriter *w) {
        if (json_before_value(w))
                fputs("null", w->f);
}

int json_writer_finish(JsonWriter *w) {
        if (w->error == 0 && (w->depth != 0 || w->after_key || !w->document))
                json_fail(w, -EINVAL);
        fputc('\n', w->f);
        if (fflush(w->f) == EOF || ferror(w->f))
                json_fail(w, -EIO);
        int r = w->error;
        json_writer_init(w, w->f);
        return r;
}
