/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* A small streaming JSON writer (RFC 8259) for musicfsctl --json. No Debian JSON library is a
 * dependency of MusicFS and the client only ever writes JSON, never parses it, so ~200 lines here
 * beat a new build and runtime dependency. Output is compact (one document per line), strings are
 * escaped per RFC 8259 including every control character, and bytes that are not valid UTF-8 become
 * U+FFFD, so the output always parses whatever the daemon sent.
 *
 * Usage: json_begin_object(w); json_key(w, "name"); json_string(w, "nas"); json_end_object(w);
 * Errors (nesting too deep, mismatched end, a value where a key belongs, write failures) are sticky:
 * json_writer_error() reports the first. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 32

typedef struct JsonWriter {
        FILE *f;
        unsigned depth;
        /* Per level: 'o' object or 'a' array, and whether a member was written (comma needed). */
        char kind[JSON_MAX_DEPTH];
        bool has_member[JSON_MAX_DEPTH];
        bool after_key;         /* a key was written; its value comes next */
        bool document;          /* the top-level value was started */
        int error;              /* first error, negative errno; 0 when fine */
} JsonWriter;

void json_writer_init(JsonWriter *w, FILE *f);
int json_writer_error(const JsonWriter *w);
/* Ends a top-level document: checks it is complete, writes "\n" and flushes. Returns the first error. */
int json_writer_finish(JsonWriter *w);

void json_begin_object(JsonWriter *w);
void json_end_object(JsonWriter *w);
void json_begin_array(JsonWriter *w);
void json_end_array(JsonWriter *w);
void json_key(JsonWriter *w, const char *key);

void json_string(JsonWriter *w, const char *s);         /* NULL writes null */
void json_string_len(JsonWriter *w, const char *s, size_t n);
void json_uint(JsonWriter *w, uint64_t v);
void json_int(JsonWriter *w, int64_t v);
void json_double(JsonWriter *w, double v);              /* NaN and infinities write null */
void json_bool(JsonWriter *w, bool v);
void json_null(JsonWriter *w);

/* Writes s as a JSON string literal (with quotes) to f. Exposed for tests and one-off uses. */
int json_write_escaped(FILE *f, const char *s, size_t n);

/* Decodes one UTF-8 sequence at s (n bytes available). Returns its length (1-4) and the code point in
 * *ret, or 0 if the bytes there are not a valid, shortest-form, non-surrogate sequence. */
size_t utf8_decode(const char *s, size_t n, uint32_t *ret);
