/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Any D-Bus value as JSON or as text, for properties and signals whose shape musicfsctl does not
 * need to know (monitor, cache statistics). Structs become JSON arrays, dictionaries with string
 * keys JSON objects (other keys are written as strings), variants are unwrapped. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "macro.h"
#include "output.h"

typedef union BasicValue {
        uint8_t u8;
        int16_t s16;
        uint16_t u16;
        int32_t s32;
        uint32_t u32;
        int64_t s64;
        uint64_t u64;
        double d;
        int b;
        const char *s;
} BasicValue;

static bool is_string_type(char t) {
        return t == 's' || t == 'o' || t == 'g';
}

/* A basic value as a string, for dictionary keys and text output. NULL on ENOMEM. */
static char *basic_to_string(char type, const BasicValue *v) {
        char *s = NULL;
        int r;

        switch (type) {
        case 'y': r = asprintf(&s, "%" PRIu8, v->u8); break;
        case 'n': r = asprintf(&s, "%" PRIi16, v->s16); break;
        case 'q': r = asprintf(&s, "%" PRIu16, v->u16); break;
        case 'i': case 'h': r = asprintf(&s, "%" PRIi32, v->s32); break;
        case 'u': r = asprintf(&s, "%" PRIu32, v->u32); break;
        case 'x': r = asprintf(&s, "%" PRIi64, v->s64); break;
        case 't': r = asprintf(&s, "%" PRIu64, v->u64); break;
        case 'd': r = asprintf(&s, "%g", v->d); break;
        case 'b': r = asprintf(&s, "%s", v->b ? "yes" : "no"); break;
        default:  r = asprintf(&s, "%s", v->s); break;
        }
        return r < 0 ? NULL : s;
}

static int json_basic(JsonWriter *w, char type, const BasicValue *v) {
        switch (type) {
        case 'y': json_uint(w, v->u8); break;
        case 'n': json_int(w, v->s16); break;
        case 'q': json_uint(w, v->u16); break;
        case 'i': json_int(w, v->s32); break;
        case 'h': json_null(w); break;  /* a file descriptor means nothing in a document */
        case 'u': json_uint(w, v->u32); break;
        case 'x': json_int(w, v->s64); break;
        case 't': json_uint(w, v->u64); break;
        case 'd': json_double(w, v->d); break;
        case 'b': json_bool(w, v->b); break;
        default:  json_string(w, v->s); break;
        }
        return json_writer_error(w);
}

/* The signature inside "{...}": what sd_bus_message_enter_container(m, 'e', ...) wants. */
static char *entry_signature(const char *contents) {
        size_t n = strlen(contents);

        if (n < 4 || contents[0] != '{' || contents[n - 1] != '}')
                return NULL;
        return strndup(contents + 1, n - 2);
}

int message_value_to_json(sd_bus_message *m, JsonWriter *w) {
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENXIO;

        if (type == SD_BUS_TYPE_ARRAY && contents[0] == '{') {
                _cleanup_free_ char *inner = entry_signature(contents);
                if (!inner)
                        return -EBADMSG;
                r = sd_bus_message_enter_container(m, 'a', contents);
                if (r < 0)
                        return r;
                json_begin_object(w);
                while ((r = sd_bus_message_enter_container(m, 'e', inner)) > 0) {
                        _cleanup_free_ char *key = NULL;
                        BasicValue v;

                        r = sd_bus_message_read_basic(m, inner[0], &v);
                        if (r < 0)
                                return r;
                        key = basic_to_string(inner[0], &v);
                        if (!key)
                                return -ENOMEM;
                        json_key(w, key);
                        r = message_value_to_json(m, w);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;
                json_end_object(w);
                return sd_bus_message_exit_container(m);
        }
        if (type == SD_BUS_TYPE_ARRAY || type == SD_BUS_TYPE_STRUCT) {
                r = sd_bus_message_enter_container(m, type, contents);
                if (r < 0)
                        return r;
                json_begin_array(w);
                while ((r = sd_bus_message_at_end(m, false)) == 0) {
                        r = message_value_to_json(m, w);
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;
                json_end_array(w);
                return sd_bus_message_exit_container(m);
        }
        if (type == SD_BUS_TYPE_VARIANT) {
                r = sd_bus_message_enter_container(m, 'v', contents);
                if (r < 0)
                        return r;
                r = message_value_to_json(m, w);
                if (r < 0)
                        return r;
                return sd_bus_message_exit_container(m);
        }

        BasicValue v;
        r = sd_bus_message_read_basic(m, type, &v);
        if (r < 0)
                return r;
        return json_basic(w, type, &v);
}

/* Strings for people: bare when that is unambiguous, else in double quotes with C escapes. */
static void text_string(FILE *f, const char *s) {
        _cleanup_free_ char *escaped = human_escape(s);
        bool quote = !s[0] || strpbrk(s, " \"'=,()[]{}\\") || !escaped || strcmp(escaped, s) != 0;

        if (!quote) {
                fputs(s, f);
                return;
        }
        fputc('"', f);
        for (const char *p = escaped ?: ""; *p; p++) {
                if (*p == '"')
                        fputc('\\', f);
                fputc(*p, f);
        }
        fputc('"', f);
}

int message_value_to_text(sd_bus_message *m, FILE *f) {
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENXIO;

        if (type == SD_BUS_TYPE_ARRAY && contents[0] == '{') {
                _cleanup_free_ char *inner = entry_signature(contents);
                bool first = true;

                if (!inner)
                        return -EBADMSG;
                r = sd_bus_message_enter_container(m, 'a', contents);
                if (r < 0)
                        return r;
                fputc('{', f);
                while ((r = sd_bus_message_enter_container(m, 'e', inner)) > 0) {
                        if (!first)
                                fputs(", ", f);
                        first = false;
                        for (unsigned i = 0; i < 2; i++) {
                                if (i == 1)
                                        fputs(": ", f);
                                r = message_value_to_text(m, f);
                                if (r < 0)
                                        return r;
                        }
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;
                fputc('}', f);
                return sd_bus_message_exit_container(m);
        }
        if (type == SD_BUS_TYPE_ARRAY || type == SD_BUS_TYPE_STRUCT) {
                bool first = true;

                r = sd_bus_message_enter_container(m, type, contents);
                if (r < 0)
                        return r;
                fputc(type == SD_BUS_TYPE_ARRAY ? '[' : '(', f);
                while ((r = sd_bus_message_at_end(m, false)) == 0) {
                        if (!first)
                                fputs(", ", f);
                        first = false;
                        r = message_value_to_text(m, f);
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;
                fputc(type == SD_BUS_TYPE_ARRAY ? ']' : ')', f);
                return sd_bus_message_exit_container(m);
        }
        if (type == SD_BUS_TYPE_VARIANT) {
                r = sd_bus_message_enter_container(m, 'v', contents);
                if (r < 0)
                        return r;
                r = message_value_to_text(m, f);
                if (r < 0)
                        return r;
                return sd_bus_message_exit_container(m);
        }

        BasicValue v;
        r = sd_bus_message_read_basic(m, type, &v);
        if (r < 0)
                return r;
        if (is_string_type(type)) {
                text_string(f, v.s);
                return 0;
        }
        _cleanup_free_ char *s = basic_to_string(type, &v);
        if (!s)
                return -ENOMEM;
        fputs(s, f);
        return 0;
}
