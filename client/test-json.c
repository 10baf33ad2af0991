/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The JSON writer: escaping per RFC 8259, U+FFFD for bytes that are not UTF-8, structure checks. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "json.h"

typedef struct Buffer {
        char *data;
        size_t size;
        FILE *f;
} Buffer;

static void buffer_open(Buffer *b) {
        b->data = NULL;
        b->size = 0;
        b->f = open_memstream(&b->data, &b->size);
        assert_non_null(b->f);
}

static const char *buffer_close(Buffer *b) {
        assert_int_equal(fclose(b->f), 0);
        b->f = NULL;
        return b->data;
}

static void check_escaped(const char *in, size_t n, const char *expected) {
        Buffer b;

        buffer_open(&b);
        assert_int_equal(json_write_escaped(b.f, in, n), 0);
        assert_string_equal(buffer_close(&b), expected);
        free(b.data);
}

static void test_escape_specials(void **state) {
        check_escaped("plain", 5, "\"plain\"");
        check_escaped("", 0, "\"\"");
        check_escaped("a\"b\\c/d", 7, "\"a\\\"b\\\\c/d\"");
        check_escaped("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
        /* Every other control character, NUL included, as \u00XX; DEL too. */
        check_escaped("\x01\x1f\x7f", 3, "\"\\u0001\\u001f\\u007f\"");
        check_escaped("a\0b", 3, "\"a\\u0000b\"");
}

static void test_escape_utf8(void **state) {
        /* Valid UTF-8 passes through byte for byte: 2-, 3- and 4-byte sequences. */
        check_escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8e\xb5", 14, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8e\xb5\"");
        /* Not UTF-8: one U+FFFD per bad byte, the rest kept. */
        check_escaped("a\xffz", 3, "\"a\\ufffdz\"");
        check_escaped("\x80", 1, "\"\\ufffd\"");                         /* lone continuation */
        check_escaped("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");              /* overlong '/' */
        check_escaped("\xe0\x80\xaf", 3, "\"\\ufffd\\ufffd\\ufffd\"");   /* overlong, 3 bytes */
        check_escaped("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");   /* UTF-16 surrogate */
        check_escaped("\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* > U+10FFFF */
        check_escaped("ok\xe2\x82", 4, "\"ok\\ufffd\\ufffd\"");         /* cut short at the end */
        check_escaped("\xc3(", 2, "\"\\ufffd(\"");                       /* bad continuation */
}

static void test_utf8_decode(void **state) {
        uint32_t cp = 0;

        assert_int_equal(utf8_decode("A", 1, &cp), 1);
        assert_int_equal(cp, 'A');
        assert_int_equal(utf8_decode("\xc3\xa9", 2, &cp), 2);
        assert_int_equal(cp, 0xe9);
        assert_int_equal(utf8_decode("\xef\xbf\xbd", 3, &cp), 3);
        assert_int_equal(cp, 0xfffd);
        assert_int_equal(utf8_decode("\xf4\x8f\xbf\xbf", 4, &cp), 4);
        assert_int_equal(cp, 0x10ffff);
        assert_int_equal(utf8_decode("\xc3\xa9", 1, &cp), 0);
        assert_int_equal(utf8_decode("", 0, &cp), 0);
}

static void test_document(void **state) {
        JsonWriter w;
        Buffer b;

        buffer_open(&b);
        json_writer_init(&w, b.f);
        json_begin_object(&w);
        json_key(&w, "name");
        json_string(&w, "nas");
        json_key(&w, "n");
        json_uint(&w, UINT64_MAX);
        json_key(&w, "neg");
        json_int(&w, INT64_MIN);
        json_key(&w, "list");
        json_begin_array(&w);
        json_bool(&w, true);
        json_bool(&w, false);
        json_null(&w);
        json_string(&w, NULL);
        json_begin_object(&w);
        json_end_object(&w);
        json_begin_array(&w);
        json_end_array(&w);
        json_end_array(&w);
        json_key(&w, "d");
        json_double(&w, 0.1);
        json_key(&w, "nan");
        json_double(&w, NAN);
        json_key(&w, "inf");
        json_double(&w, -INFINITY);
        json_key(&w, "k\"ey");
        json_double(&w, 3.0);
        json_end_object(&w);
        assert_int_equal(json_writer_finish(&w), 0);

        /* A second document on the next line (JSON lines). */
        json_begin_array(&w);
        json_end_array(&w);
        assert_int_equal(json_writer_finish(&w), 0);

        assert_string_equal(buffer_close(&b),
                            "{\"name\":\"nas\",\"n\":18446744073709551615,\"neg\":-9223372036854775808,"
                            "\"list\":[true,false,null,null,{},[]],\"d\":0.1,\"nan\":null,\"inf\":null,"
                            "\"k\\\"ey\":3}\n[]\n");
        free(b.data);
}

static void test_misuse(void **state) {
        JsonWriter w;
        Buffer b;

        buffer_open(&b);

        /* A value where a key belongs. */
        json_writer_init(&w, b.f);
        json_begin_object(&w);
        json_string(&w, "x");
        assert_int_equal(json_writer_error(&w), -EINVAL);
        assert_int_equal(json_writer_finish(&w), -EINVAL);

        /* A key in an array; a mismatched end; an unfinished document; two documents at once. */
        json_begin_array(&w);
        json_key(&w, "k");
        assert_int_equal(json_writer_finish(&w), -EINVAL);
        json_begin_array(&w);
        json_end_object(&w);
        assert_int_equal(json_writer_finish(&w), -EINVAL);
        json_begin_object(&w);
        json_key(&w, "k");
        assert_int_equal(json_writer_finish(&w), -EINVAL);
        json_uint(&w, 1);
        json_uint(&w, 2);
        assert_int_equal(json_writer_finish(&w), -EINVAL);
        assert_int_equal(json_writer_finish(&w), -EINVAL);     /* nothing written */

        /* Too deep. */
        for (unsigned i = 0; i < JSON_MAX_DEPTH + 2; i++)
                json_begin_array(&w);
        assert_int_equal(json_writer_error(&w), -E2BIG);
        assert_int_equal(json_writer_finish(&w), -E2BIG);

        buffer_close(&b);
        free(b.data);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_escape_specials),
                cmocka_unit_test(test_escape_utf8),
                cmocka_unit_test(test_utf8_decode),
                cmocka_unit_test(test_document),
                cmocka_unit_test(test_misuse),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
