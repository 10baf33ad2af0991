/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Path templates (DESIGN.md D2): parsing, the fallbacks, sanitising and the NAME_MAX cap. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "macro.h"
#include "template.h"

#define DEFAULT_TEMPLATE "{albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}"

static Template *parse_ok(const char *spec) {
        Template *t = NULL;
        char *reason = NULL;
        int r = template_parse(spec, &t, &reason);
        if (r < 0)
                print_error("template_parse(%s): %d %s\n", spec, r, strna(reason));
        assert_int_equal(r, 0);
        assert_non_null(t);
        assert_null(reason);
        return t;
}

static char *render(const char *spec, const TrackTags *tags, const char *stem, const char *ext, bool multi_disc,
                    bool compilation) {
        Template *t = parse_ok(spec);
        TemplateInput in = {
                .tags = tags, .stem = stem, .ext = ext, .multi_disc = multi_disc, .compilation = compilation,
        };
        char *path = NULL;

        assert_int_equal(template_render(t, &in, &path), 0);
        assert_non_null(path);
        template_free(t);
        return path;
}

static void assert_render(const char *spec, const TrackTags *tags, const char *stem, const char *ext, bool multi_disc,
                          bool compilation, const char *expected) {
        _cleanup_free_ char *p = render(spec, tags, stem, ext, multi_disc, compilation);
        assert_string_equal(p, expected);
}

static void test_default_full_tags(void **state) {
        TrackTags tags = {
                .title = (char *) "Battery", .artist = (char *) "Metallica", .album = (char *) "Master of Puppets",
                .albumartist = (char *) "Metallica", .genre = (char *) "Metal", .year = 1986, .track = 1,
        };
        assert_render(DEFAULT_TEMPLATE, &tags, "01 battery", "flac", false, false,
                      "Metallica/Master of Puppets (1986)/01 - Battery.flac");

        /* the other fields and widths */
        tags.composer = (char *) "Hetfield";
        assert_render("{genre}/{artist} - {album}/{track} {title} [{composer}] {year:04}.{ext}", &tags, "x", "mp3",
                      false, false, "Metal/Metallica - Master of Puppets/1 Battery [Hetfield] 1986.mp3");
}

static void test_compilation(void **state) {
        TrackTags tags = {
                .title = (char *) "Song", .artist = (char *) "Someone", .album = (char *) "Now 42",
                .albumartist = (char *) "Someone", .year = 2001, .track = 7, .compilation = true,
        };
        assert_render(DEFAULT_TEMPLATE, &tags, "s", "mp3", false, true, "Various Artists/Now 42 (2001)/07 - Song.mp3");
        /* {artist} is still the track's artist */
        assert_render("{albumartist}/{album}/{artist} - {title}.{ext}", &tags, "s", "mp3", false, true,
                      "Various Artists/Now 42/Someone - Song.mp3");

        _cleanup_free_ char *aa = NULL;
        assert_int_equal(template_album_artist(&tags, true, &aa), 0);
        assert_string_equal(aa, "Various Artists");
}

static void test_albumartist_fallback(void **state) {
        TrackTags tags = { .title = (char *) "T", .artist = (char *) "Solo Artist", .album = (char *) "A", .track = 3 };
        assert_render(DEFAULT_TEMPLATE, &tags, "t", "ogg", false, false, "Solo Artist/A/03 - T.ogg");

        /* blank albumartist counts as missing */
        tags.albumartist = (char *) "   ";
        assert_render(DEFAULT_TEMPLATE, &tags, "t", "ogg", false, false, "Solo Artist/A/03 - T.ogg");

        tags.albumartist = (char *) "Band";
        assert_render(DEFAULT_TEMPLATE, &tags, "t", "ogg", false, false, "Band/A/03 - T.ogg");

        /* {artist} falls back to the album artist */
        tags.artist = NULL;
        assert_render("{artist}/{title}.{ext}", &tags, "t", "ogg", false, false, "Band/T.ogg");

        _cleanup_free_ char *aa = NULL, *aa2 = NULL, *aa3 = NULL;
        assert_int_equal(template_album_artist(&tags, false, &aa), 0);
        assert_string_equal(aa, "Band");
        TrackTags none = {};
        assert_int_equal(template_album_artist(&none, false, &aa2), 0);
        assert_string_equal(aa2, "Unknown Artist");
        TrackTags slash = { .artist = (char *) " AC/DC " };
        assert_int_equal(template_album_artist(&slash, false, &aa3), 0);
        assert_string_equal(aa3, "AC_DC");
}

static void test_multi_disc(void **state) {
        TrackTags d1 = { .title = (char *) "One", .artist = (char *) "X", .album = (char *) "Double", .track = 1, .disc = 1 };
        TrackTags d2 = { .title = (char *) "Two", .artist = (char *) "X", .album = (char *) "Double", .track = 1, .disc = 2 };
        TrackTags nodisc = { .title = (char *) "Three", .artist = (char *) "X", .album = (char *) "Double", .track = 5 };

        assert_render(DEFAULT_TEMPLATE, &d1, "a", "flac", true, false, "X/Double/1-01 - One.flac");
        assert_render(DEFAULT_TEMPLATE, &d2, "b", "flac", true, false, "X/Double/2-01 - Two.flac");
        /* a track without a disc number on a multi-disc album is on disc 1 */
        assert_render(DEFAULT_TEMPLATE, &nodisc, "c", "flac", true, false, "X/Double/1-05 - Three.flac");
        /* single disc: no prefix, even when the disc tag says 1 */
        assert_render(DEFAULT_TEMPLATE, &d1, "a", "flac", false, false, "X/Double/01 - One.flac");
        /* disc width */
        assert_render("{album}/{disc:02}{track:02}.{ext}", &d2, "b", "flac", true, false, "Double/02-01.flac");
}

static void test_missing_everything(void **state) {
        TrackTags none = {};

        assert_render(DEFAULT_TEMPLATE, &none, "some file", "flac", false, false,
                      "Unknown Artist/Unknown Album/some file.flac");
        /* NULL tags is the same as none */
        assert_render(DEFAULT_TEMPLATE, NULL, "some file", "flac", false, false,
                      "Unknown Artist/Unknown Album/some file.flac");
        /* multi-disc album but no track: no dangling "1-" */
        assert_render(DEFAULT_TEMPLATE, &none, "x", "flac", true, false, "Unknown Artist/Unknown Album/x.flac");

        /* a missing year alone: the " ()" goes, the rest stays */
        TrackTags noyear = { .title = (char *) "T", .artist = (char *) "A", .album = (char *) "Al", .track = 2 };
        assert_render(DEFAULT_TEMPLATE, &noyear, "x", "flac", false, false, "A/Al/02 - T.flac");
        assert_render("{album} [{genre}] ({year})/{title}.{ext}", &noyear, "x", "flac", false, false, "Al/T.flac");
        assert_render("{album} ({year}, {genre})/{title}.{ext}", &noyear, "x", "flac", false, false, "Al/T.flac");

        /* separators between missing fields collapse */
        assert_render("{artist}/{album} - {genre} - {title}.{ext}", &noyear, "x", "flac", false, false, "A/Al - T.flac");
        TrackTags notitle = { .track = 4 };
        assert_render(DEFAULT_TEMPLATE, &notitle, "", "wav", false, false, "Unknown Artist/Unknown Album/04.wav");
        /* no extension: no trailing dot */
        assert_render(DEFAULT_TEMPLATE, &noyear, "x", NULL, false, false, "A/Al/02 - T");
        /* a literal "()" in a tag is not ours to remove */
        TrackTags paren = { .title = (char *) "Song ()", .artist = (char *) "A", .album = (char *) "B" };
        assert_render("{artist}/{title}.{ext}", &paren, "x", "mp3", false, false, "A/Song ().mp3");
}

static void test_special_characters(void **state) {
        TrackTags tags = { .title = (char *) "Who Made Who?", .artist = (char *) "AC/DC", .album = (char *) "Who Made Who",
                           .track = 1 };
        assert_render(DEFAULT_TEMPLATE, &tags, "x", "mp3", false, false, "AC_DC/Who Made Who/01 - Who Made Who?.mp3");

        TrackTags ctl = { .title = (char *) "a\tb\x01" "c\x7f", .artist = (char *) "\n Band \r\n", .album = (char *) "x\x1b[0m",
                          .track = 2 };
        assert_render(DEFAULT_TEMPLATE, &ctl, "x", "mp3", false, false, "Band/x_[0m/02 - a_b_c_.mp3");

        TrackTags dots = { .title = (char *) "..", .artist = (char *) ".", .album = (char *) " .. " };
        assert_render("{artist}/{album}/{title}", &dots, "x", "mp3", false, false, "_/_/_");
        assert_render("{artist}/{album}/{title}.{ext}", &dots, "x", "mp3", false, false, "_/_/...mp3");

        TrackTags slashes = { .title = (char *) "/", .artist = (char *) "//", .album = (char *) "a/../b" };
        assert_render("{artist}/{album}/{title}", &slashes, "x", "mp3", false, false, "__/a_.._b/_");

        _cleanup_free_ char *s1 = template_sanitize_segment("  ");
        _cleanup_free_ char *s2 = template_sanitize_segment("..");
        _cleanup_free_ char *s3 = template_sanitize_segment(" x/y ");
        _cleanup_free_ char *s4 = template_sanitize_segment(NULL);
        assert_string_equal(s1, "_");
        assert_string_equal(s2, "_");
        assert_string_equal(s3, "x_y");
        assert_string_equal(s4, "_");
}

static void test_unicode(void **state) {
        TrackTags tags = { .title = (char *) "Lux Æterna", .artist = (char *) "Clint Mansell", .album = (char *) "Requiem for a Dream",
                           .year = 2000, .track = 12 };
        assert_render(DEFAULT_TEMPLATE, &tags, "x", "flac", false, false,
                      "Clint Mansell/Requiem for a Dream (2000)/12 - Lux Æterna.flac");

        TrackTags cjk = { .title = (char *) "君が代 🎵", .artist = (char *) "Ŝtraße" };
        assert_render("{artist}/{title}.{ext}", &cjk, "x", "opus", false, false, "Ŝtraße/君が代 🎵.opus");

        /* invalid UTF-8: lone continuation, truncated sequence, overlong '/', surrogate, C1 control */
        _cleanup_free_ char *s = template_sanitize_segment("a\x80" "b\xe2\x82" "c\xc0\xaf" "d\xed\xa0\x80" "e\xc2\x85" "f");
        assert_string_equal(s, "a_b__c__d___e_f");
}

static bool utf8_valid(const char *s) {
        const unsigned char *p = (const unsigned char *) s;
        while (*p) {
                size_t n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : (*p & 0xf8) == 0xf0 ? 4 : 0;
                if (n == 0)
                        return false;
                for (size_t k = 1; k < n; k++)
                        if ((p[k] & 0xc0) != 0x80)
                                return false;
                p += n;
        }
        return true;
}

static void test_name_max(void **state) {
        /* 10 KB of multi-byte characters so a cut in the middle of one would show */
        size_t n = 10240;
        _cleanup_free_ char *title = malloc(n + 1);
        assert_non_null(title);
        for (size_t i = 0; i < n; i += 2)
                memcpy(title + i, "é", 2);
        title[n] = '\0';

        TrackTags tags = { .title = title, .artist = title, .album = (char *) "A", .track = 1 };
        _cleanup_free_ char *p = render(DEFAULT_TEMPLATE, &tags, "x", "flac", false, false);

        char *slash1 = strchr(p, '/');
        assert_non_null(slash1);
        assert_true((size_t) (slash1 - p) <= NAME_MAX);
        assert_true((size_t) (slash1 - p) >= NAME_MAX - 3);
        char *file = strrchr(p, '/') + 1;
        assert_true(strlen(file) <= NAME_MAX);
        assert_true(strlen(file) >= NAME_MAX - 3);
        assert_int_equal(strncmp(file, "01 - éé", strlen("01 - éé")), 0);
        assert_string_equal(file + strlen(file) - 5, ".flac");
        assert_true(utf8_valid(p));

        /* exactly NAME_MAX is kept whole */
        _cleanup_free_ char *exact = malloc(NAME_MAX + 1);
        assert_non_null(exact);
        memset(exact, 'a', NAME_MAX);
        exact[NAME_MAX] = '\0';
        _cleanup_free_ char *s = template_sanitize_segment(exact);
        assert_string_equal(s, exact);
        memset(title, 'b', 300);
        title[300] = '\0';
        _cleanup_free_ char *s2 = template_sanitize_segment(title);
        assert_int_equal(strlen(s2), NAME_MAX);
}

static void assert_refused(const char *spec, const char *reason_part) {
        Template *t = NULL;
        char *reason = NULL;

        assert_int_equal(template_parse(spec, &t, &reason), -EINVAL);
        assert_null(t);
        assert_non_null(reason);
        if (!strstr(reason, reason_part))
                print_error("template \"%s\": reason \"%s\" lacks \"%s\"\n", spec, reason, reason_part);
        assert_non_null(strstr(reason, reason_part));
        free(reason);
}

static void test_bad_templates(void **state) {
        assert_refused("", "empty template");
        assert_refused("/{artist}/{title}", "absolute");
        assert_refused("{artist}/{nope}/{title}", "unknown field {nope} at column 10");
        assert_refused("{artist}/{album/{title}", "unbalanced brace '{' at column 10");
        assert_refused("{artist}/{album", "unbalanced brace '{' at column 10");
        assert_refused("{artist}}/{title}", "unbalanced brace '}' at column 9");
        assert_refused("{artist}/{track:x}", "bad width in {track:x} at column 10");
        assert_refused("{artist}/{track:}", "bad width");
        assert_refused("{artist}/{track:123}", "bad width");
        assert_refused("{artist}/{track:00}", "bad width");
        assert_refused("{artist}/{title:02}", "width given to text field {title:02} at column 10");
        assert_refused("{artist}/", "no file name part");
        assert_refused("{artist}/track.flac", "has no field");
        assert_refused("{artist}//{title}", "empty path segment at column 10");
        assert_refused("{artist}/../{title}", "\"..\" at column 10");

        /* without a reason pointer the error is the same */
        Template *t = NULL;
        assert_int_equal(template_parse("{bad}", &t, NULL), -EINVAL);
        assert_null(t);
}

static void test_good_templates(void **state) {
        Template *t = parse_ok("{title}");
        template_free(t);
        t = parse_ok("Music/{genre}/{artist}/{title}.{ext}");
        template_free(t);
        template_free(NULL);

        TrackTags tags = { .title = (char *) "T", .genre = (char *) "Jazz" };
        assert_render("Music/{genre}/{title}.{ext}", &tags, "x", "m4a", false, false, "Music/Jazz/T.m4a");
        /* a literal-only directory is fine */
        assert_render("All/{title}", &tags, "x", "m4a", false, false, "All/T");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_default_full_tags),
                cmocka_unit_test(test_compilation),
                cmocka_unit_test(test_albumartist_fallback),
                cmocka_unit_test(test_multi_disc),
                cmocka_unit_test(test_missing_everything),
                cmocka_unit_test(test_special_characters),
                cmocka_unit_test(test_unicode),
                cmocka_unit_test(test_name_max),
                cmocka_unit_test(test_bad_templates),
                cmocka_unit_test(test_good_templates),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
