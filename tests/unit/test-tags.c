/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Tag reading against real files made by real encoders (ffmpeg: flac, libmp3lame, libvorbis, libopus,
 * aac, pcm), read through a real local origin. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "failpoint.h"
#include "log.h"
#include "macro.h"
#include "origin-internal.h"
#include "origin.h"
#include "tags.h"

extern char **environ;

typedef struct Fixture {
        char dir[64];
        Origin *origin;
} Fixture;

#define FULL_TAGS                                                                       \
        "-metadata", "title=Title \xe2\x9c\x93", "-metadata", "artist=Artist",          \
        "-metadata", "album=Album", "-metadata", "album_artist=Album Artist",           \
        "-metadata", "genre=Genre", "-metadata", "composer=Composer",                   \
        "-metadata", "date=2021-05-01", "-metadata", "track=3/12",                      \
        "-metadata", "disc=1/2", "-metadata", "compilation=1"

static void run(const char *const *argv) {
        pid_t pid;
        int status;

        assert_int_equal(posix_spawnp(&pid, argv[0], NULL, NULL, (char *const *) argv, environ), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "command failed:");
                for (const char *const *a = argv; *a; a++)
                        fprintf(stderr, " %s", *a);
                fprintf(stderr, "\n");
                fail();
        }
}

/* ffmpeg -f lavfi -i SOURCE [extra...] dir/name */
#define ENCODE_FROM(f, name, source, ...)                                               \
        do {                                                                            \
                char _out[128];                                                         \
                snprintf(_out, sizeof _out, "%s/%s", (f)->dir, (name));                 \
                run((const char *const[]) { "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", \
                                            "-f", "lavfi", "-i", (source), __VA_ARGS__, _out, NULL }); \
        } while (0)
/* 0.3 s of a 440 Hz tone with the given tags. */
#define ENCODE(f, name, ...) ENCODE_FROM(f, name, "sine=frequency=440:duration=0.3", __VA_ARGS__)

static void write_file(const Fixture *f, const char *name, const void *data, size_t size) {
        char path[128];
        _cleanup_close_ int fd = -1;

        snprintf(path, sizeof path, "%s/%s", f->dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
}

static char *read_whole(const Fixture *f, const char *name, size_t *ret_size) {
        char path[128];
        struct stat st;
        char *buf;
        _cleanup_close_ int fd = -1;

        snprintf(path, sizeof path, "%s/%s", f->dir, name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        buf = malloc(st.st_size + 1);
        assert_non_null(buf);
        assert_int_equal(read(fd, buf, st.st_size), st.st_size);
        *ret_size = st.st_size;
        return buf;
}

/* An ffmetadata file: how tags too long for a command line reach ffmpeg. */
static void write_ffmetadata(const Fixture *f, const char *name, const char *key, const char *unit, size_t repeat, const char *more) {
        size_t unit_len = strlen(unit), n = 0;
        size_t size = 64 + strlen(key) + unit_len * repeat + strlen(more);
        _cleanup_free_ char *buf = malloc(size);

        assert_non_null(buf);
        if (!buf)
                return;
        n += sprintf(buf, ";FFMETADATA1\n%s=", key);
        for (size_t i = 0; i < repeat; i++, n += unit_len)
                memcpy(buf + n, unit, unit_len);
        n += sprintf(buf + n, "\n%s", more);
        write_file(f, name, buf, n);
}

static int group_setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        char meta[128];

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-tags-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        tags_init();

        ENCODE(f, "full.flac", FULL_TAGS);
        ENCODE(f, "full.mp3", FULL_TAGS, "-c:a", "libmp3lame", "-id3v2_version", "3");
        ENCODE(f, "full.ogg", FULL_TAGS, "-c:a", "libvorbis");
        ENCODE(f, "full.opus", FULL_TAGS, "-c:a", "libopus");
        ENCODE(f, "full.m4a", FULL_TAGS, "-c:a", "aac");
        ENCODE(f, "full.wav", FULL_TAGS);

        /* A minute of noise each (real bit rates), for what reading tags costs (D12). */
#define NOISE "anoisesrc=duration=60:color=pink:amplitude=0.3"
        ENCODE_FROM(f, "long.flac", NOISE, FULL_TAGS);
        ENCODE_FROM(f, "long.mp3", NOISE, FULL_TAGS, "-c:a", "libmp3lame", "-id3v2_version", "3");
        ENCODE_FROM(f, "long.ogg", NOISE, FULL_TAGS, "-c:a", "libvorbis");
        ENCODE_FROM(f, "long.opus", NOISE, FULL_TAGS, "-c:a", "libopus");
        ENCODE_FROM(f, "long.m4a", NOISE, FULL_TAGS, "-c:a", "aac");
        ENCODE_FROM(f, "long.wav", NOISE, FULL_TAGS);

        /* Other spellings of the same tags, as other taggers write them. */
        ENCODE(f, "variant1.flac", "-metadata", "track= 07", "-metadata", "disc=2", "-metadata", "DISCTOTAL=3",
               "-metadata", "date=May 1999", "-metadata", "albumartist=Plain Key", "-metadata", "compilation=0");
        ENCODE(f, "variant2.flac", "-metadata", "TRACKNUMBER=11", "-metadata", "DISCNUMBER=1", "-metadata", "TOTALDISCS=4",
               "-metadata", "YEAR=1987", "-metadata", "album artist=Spaced Key", "-metadata", "ARTIST=Upper Key");
        ENCODE(f, "variant.ogg", "-metadata", "ALBUMARTIST=Ogg Album Artist", "-metadata", "DISCNUMBER=2/3",
               "-metadata", "TRACKNUMBER=5/9", "-c:a", "libvorbis");

        /* Bytes straight into Vorbis comments: ffmpeg passes its arguments through unchecked. */
        char padded[2100] = "album_artist=";
        memset(padded + strlen(padded), ' ', 2000);
        strcat(padded, "Far Right");
        ENCODE(f, "dirty.flac",
               "-metadata", padded,
               "-metadata", "title=  \t Hello\nWorld \x1b[0m \r ",
               "-metadata", "artist=Bj\xf6rk\x01\x7f ok",
               "-metadata", "album=   \t ",
               "-metadata", "genre=Tail\xe2\x82",
               "-metadata", "composer=\xc0\xaf overlong \xed\xa0\x80 surrogate \xc2\x85 C1");

        /* Megabyte tags: 1 MiB of ASCII as title, 1.2 MB of three-byte characters as artist. */
        write_ffmetadata(f, "huge.txt", "title", "x", 1 << 20, "artist=");
        {
                size_t size;
                _cleanup_free_ char *head = read_whole(f, "huge.txt", &size);
                _cleanup_free_ char *buf = malloc(size + 3 * 400000 + 2);
                assert_non_null(buf);
                memcpy(buf, head, size);
                for (size_t i = 0; i < 400000; i++, size += 3)
                        memcpy(buf + size, "\xe2\x82\xac", 3);
                buf[size++] = '\n';
                write_file(f, "huge.txt", buf, size);
        }
        snprintf(meta, sizeof meta, "%s/huge.txt", f->dir);
        ENCODE(f, "huge.flac", "-i", meta, "-map_metadata", "1");
        ENCODE(f, "huge.mp3", "-i", meta, "-map_metadata", "1", "-c:a", "libmp3lame", "-id3v2_version", "3");

        /* An ID3v2 tag much larger than the 32 KiB probe window (cover art does that). */
        write_ffmetadata(f, "bigid3.txt", "comment", "0123456789abcdef", 8192, "title=Behind A Big Tag\n");
        snprintf(meta, sizeof meta, "%s/bigid3.txt", f->dir);
        ENCODE(f, "bigid3.mp3", "-i", meta, "-map_metadata", "1", "-c:a", "libmp3lame", "-id3v2_version", "3");

        /* Only an ID3v1 tag, at the end, appended by hand as old taggers did; Latin-1 inside. */
        ENCODE(f, "id3v1.mp3", "-c:a", "libmp3lame", "-id3v2_version", "0");
        {
                size_t size;
                _cleanup_free_ char *mp3 = read_whole(f, "id3v1.mp3", &size);
                char *buf = realloc(mp3, size + 128);
                assert_non_null(buf);
                mp3 = buf;
                memset(buf + size, 0, 128);
                memcpy(buf + size, "TAG", 3);
                memcpy(buf + size + 3, "Old Title", 9);
                memcpy(buf + size + 33, "Bj\xf6rk", 5);
                memcpy(buf + size + 63, "Old Album", 9);
                memcpy(buf + size + 93, "1995", 4);
                buf[size + 126] = 7;    /* ID3v1.1 track */
                buf[size + 127] = 17;   /* genre: Rock */
                write_file(f, "id3v1.mp3", buf, size + 128);
        }

        /* Not audio. */
        write_file(f, "empty.flac", "", 0);
        {
                size_t size;
                _cleanup_free_ char *flac = read_whole(f, "full.flac", &size);
                assert_true(size > 100);
                write_file(f, "truncated.flac", flac, 100);
        }
        {
                uint8_t junk[64 * 1024];
                uint32_t x = 0x12345678;
                for (size_t i = 0; i < sizeof junk; i++) {
                        x = x * 1103515245u + 12345u;
                        junk[i] = (uint8_t) (x >> 24);
                }
                write_file(f, "garbage.mp3", junk, sizeof junk);
                write_file(f, "garbage.m4a", junk, 777);
        }
        {
                char text[8192];
                for (size_t i = 0; i < sizeof text; i++)
                        text[i] = "This is not an audio file.\n"[i % 27];
                write_file(f, "text.flac", text, sizeof text);
        }

        assert_int_equal(origin_local_new("test", f->dir, 0, &f->origin), 0);
        *state = f;
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static int group_teardown(void **state) {
        Fixture *f = *state;
        origin_free(f->origin);
        nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(f);
        return 0;
}

static int teardown(void **state) {
#if MUSICFS_FAILPOINTS
        failpoint_disarm_all();
#endif
        return 0;
}

static int read_tags(const Fixture *f, const char *name, TrackTags *ret) {
        OriginStat st;
        OriginFile *file = NULL;
        int r;

        assert_int_equal(origin_stat(f->origin, name, &st), 0);
        assert_int_equal(origin_open(f->origin, name, &file), 0);
        r = tags_read(file, st.size, ret);
        origin_close(file);
        return r;
}

static bool utf8_valid(const char *s) {
        const unsigned char *p = (const unsigned char *) s;
        while (*p) {
                size_t n;
                uint32_t cp;
                if (*p < 0x80) {
                        p++;
                        continue;
                } else if (*p >= 0xc2 && *p <= 0xdf)
                        n = 1, cp = *p & 0x1f;
                else if (*p >= 0xe0 && *p <= 0xef)
                        n = 2, cp = *p & 0x0f;
                else if (*p >= 0xf0 && *p <= 0xf4)
                        n = 3, cp = *p & 0x07;
                else
                        return false;
                for (size_t i = 1; i <= n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (p[i] & 0x3f);
                }
                if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
                        return false;
                p += n + 1;
        }
        return true;
}

static void test_audio_extension(void **state) {
        static const struct {
                const char *name, *ext;
        } yes[] = {
                { "a.flac", "flac" }, { "dir/B.FLAC", "flac" }, { "x.Mp3", "mp3" }, { "x.ogg", "ogg" },
                { "x.oga", "oga" },   { "x.opus", "opus" },     { "x.M4A", "m4a" }, { "x.mp4", "mp4" },
                { "x.aac", "aac" },   { "a.b/c.d.wav", "wav" },
        };
        static const char *const no[] = {
                "a.txt", "flac", "a.flac.txt", "a.", ".flac", "dir/.mp3", "dir.flac/cover", "a.flacc", "a.fla", "",
        };
        const char *ext;

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                ext = NULL;
                assert_true(tags_audio_extension(yes[i].name, &ext));
                assert_string_equal(ext, yes[i].ext);
        }
        assert_true(tags_audio_extension("x.FLAC", NULL));
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                assert_false(tags_audio_extension(no[i], &ext));
        assert_false(tags_audio_extension(NULL, &ext));
}

static void assert_duration_near(int64_t ms, int64_t expected) {
        /* Encoder delay and padding: MP3 frames are 26 ms, Opus pre-skip 6.5 ms. */
        if (ms < expected - 60 || ms > expected + 60) {
                fprintf(stderr, "duration %lld ms, expected about %lld\n", (long long) ms, (long long) expected);
                fail();
        }
}

static void test_formats(void **state) {
        Fixture *f = *state;
        static const char *const names[] = { "full.flac", "full.mp3", "full.ogg", "full.opus", "full.m4a" };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                TrackTags t;

                fprintf(stderr, "%s\n", names[i]);
                assert_int_equal(read_tags(f, names[i], &t), 0);
                assert_string_equal(t.title, "Title \xe2\x9c\x93");
                assert_string_equal(t.artist, "Artist");
                assert_string_equal(t.album, "Album");
                assert_string_equal(t.albumartist, "Album Artist");
                assert_string_equal(t.genre, "Genre");
                assert_string_equal(t.composer, "Composer");
                assert_int_equal(t.year, 2021);
                assert_int_equal(t.track, 3);
                assert_int_equal(t.disc, 1);
                assert_int_equal(t.disc_total, 2);
                assert_true(t.compilation);
                assert_duration_near(t.duration_ms, 300);
                track_tags_free(&t);
                assert_null(t.title);
        }

        /* RIFF INFO has no album artist, composer, disc or compilation: the rest must come through. */
        TrackTags t;
        assert_int_equal(read_tags(f, "full.wav", &t), 0);
        assert_string_equal(t.title, "Title \xe2\x9c\x93");
        assert_string_equal(t.artist, "Artist");
        assert_string_equal(t.album, "Album");
        assert_string_equal(t.genre, "Genre");
        assert_int_equal(t.year, 2021);
        assert_int_equal(t.track, 3);
        assert_null(t.albumartist);
        assert_int_equal(t.disc, 0);
        assert_false(t.compilation);
        assert_duration_near(t.duration_ms, 300);
        track_tags_free(&t);
}

static void test_key_variants(void **state) {
        Fixture *f = *state;
        TrackTags t;

        assert_int_equal(read_tags(f, "variant1.flac", &t), 0);
        assert_int_equal(t.track, 7);
        assert_int_equal(t.disc, 2);
        assert_int_equal(t.disc_total, 3);
        assert_int_equal(t.year, 1999);
        assert_string_equal(t.albumartist, "Plain Key");
        assert_false(t.compilation);
        assert_null(t.title);
        assert_null(t.artist);
        track_tags_free(&t);

        assert_int_equal(read_tags(f, "variant2.flac", &t), 0);
        assert_int_equal(t.track, 11);
        assert_int_equal(t.disc, 1);
        assert_int_equal(t.disc_total, 4);
        assert_int_equal(t.year, 1987);
        assert_string_equal(t.albumartist, "Spaced Key");
        assert_string_equal(t.artist, "Upper Key");
        track_tags_free(&t);

        /* Ogg keeps Vorbis comments on the stream, not the container. */
        assert_int_equal(read_tags(f, "variant.ogg", &t), 0);
        assert_string_equal(t.albumartist, "Ogg Album Artist");
        assert_int_equal(t.track, 5);
        assert_int_equal(t.disc, 2);
        assert_int_equal(t.disc_total, 3);
        track_tags_free(&t);
}

static void test_dirty_strings(void **state) {
        Fixture *f = *state;
        TrackTags t;

        assert_int_equal(read_tags(f, "dirty.flac", &t), 0);
        /* Line breaks and tabs become spaces, ESC goes, the ends are trimmed. */
        assert_string_equal(t.title, "Hello World [0m");
        /* A Latin-1 byte becomes U+FFFD; C0 controls and DEL go. */
        assert_string_equal(t.artist, "Bj\xef\xbf\xbdrk ok");
        assert_null(t.album);
        /* Leading blanks do not count against the 1024-byte cap. */
        assert_string_equal(t.albumartist, "Far Right");
        /* A sequence cut short: each of its bytes is replaced. */
        assert_string_equal(t.genre, "Tail\xef\xbf\xbd\xef\xbf\xbd");
        /* Overlong forms and surrogates are invalid; U+0085 is a C1 control. */
        assert_true(utf8_valid(t.composer));
        assert_null(strstr(t.composer, "\xc0"));
        assert_null(strstr(t.composer, "\xed\xa0"));
        assert_null(strstr(t.composer, "\xc2\x85"));
        assert_non_null(strstr(t.composer, "overlong"));
        assert_non_null(strstr(t.composer, "surrogate"));
        track_tags_free(&t);
}

static void test_huge_tags(void **state) {
        Fixture *f = *state;
        static const char *const names[] = { "huge.flac", "huge.mp3" };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                TrackTags t;

                fprintf(stderr, "%s\n", names[i]);
                assert_int_equal(read_tags(f, names[i], &t), 0);
                assert_non_null(t.title);
                assert_int_equal(strlen(t.title), 1024);
                assert_int_equal(strspn(t.title, "x"), 1024);
                /* Cut on a character boundary: 341 whole euro signs. */
                assert_non_null(t.artist);
                assert_int_equal(strlen(t.artist), 1023);
                assert_true(utf8_valid(t.artist));
                assert_memory_equal(t.artist + 1020, "\xe2\x82\xac", 3);
                assert_duration_near(t.duration_ms, 300);
                track_tags_free(&t);
        }
}

static void test_big_id3(void **state) {
        Fixture *f = *state;
        TrackTags t;

        assert_int_equal(read_tags(f, "bigid3.mp3", &t), 0);
        assert_string_equal(t.title, "Behind A Big Tag");
        assert_duration_near(t.duration_ms, 300);
        track_tags_free(&t);
}

static void test_id3v1(void **state) {
        Fixture *f = *state;
        TrackTags t;

        assert_int_equal(read_tags(f, "id3v1.mp3", &t), 0);
        assert_string_equal(t.title, "Old Title");
        assert_string_equal(t.artist, "Bj\xef\xbf\xbdrk");
        assert_string_equal(t.album, "Old Album");
        assert_string_equal(t.genre, "Rock");
        assert_int_equal(t.year, 1995);
        assert_int_equal(t.track, 7);
        assert_duration_near(t.duration_ms, 300);
        track_tags_free(&t);
}

static void test_unparseable(void **state) {
        Fixture *f = *state;
        static const char *const names[] = { "empty.flac", "truncated.flac", "garbage.mp3", "garbage.m4a", "text.flac" };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                TrackTags t = { .year = 42 };

                fprintf(stderr, "%s\n", names[i]);
                assert_int_equal(read_tags(f, names[i], &t), -EBADMSG);
                /* Zeroed, nothing to free. */
                assert_null(t.title);
                assert_int_equal(t.year, 0);
        }
}

static void test_origin_read_error(void **state) {
#if MUSICFS_FAILPOINTS
        Fixture *f = *state;
        static const char *const names[] = { "full.flac", "full.mp3", "full.ogg", "full.m4a", "empty.flac" };
        TrackTags t;

        /* Every read fails: the origin's errno, not "not audio". */
        assert_int_equal(failpoint_arm("origin-read", "return(EIO)", NULL), 0);
        for (size_t i = 0; i < ELEMENTSOF(names) - 1; i++)
                assert_int_equal(read_tags(f, names[i], &t), -EIO);
        assert_null(t.title);

        /* The first read succeeds, a later one fails mid-parse (libavformat has its own ideas of what
         * to return then). A Vorbis file needs a read far from the start for its duration. */
        assert_int_equal(failpoint_arm("origin-read", "1*off->return(ETIMEDOUT)", NULL), 0);
        assert_int_equal(read_tags(f, "full.ogg", &t), -ETIMEDOUT);
        assert_null(t.title);

        /* A zero-byte file needs no read at all. */
        assert_int_equal(failpoint_arm("origin-read", "return(EIO)", NULL), 0);
        assert_int_equal(read_tags(f, "empty.flac", &t), -EBADMSG);

        failpoint_disarm_all();
        assert_int_equal(read_tags(f, "full.ogg", &t), 0);
        track_tags_free(&t);
#else
        skip();
#endif
}

/* An origin that counts what goes through it, wrapped around the local one. */
typedef struct CountingOrigin {
        Origin base;
        Origin *inner;
        uint64_t bytes;
        unsigned reads;
} CountingOrigin;

typedef struct CountingFile {
        OriginFile base;
        OriginFile *inner;
        CountingOrigin *owner;
} CountingFile;

static int counting_open(Origin *o, const char *rel_path, OriginFile **ret) {
        CountingFile *f = calloc(1, sizeof *f);
        int r;

        if (!f)
                return -ENOMEM;
        r = origin_open(((CountingOrigin *) o)->inner, rel_path, &f->inner);
        if (r < 0) {
                free(f);
                return r;
        }
        f->owner = (CountingOrigin *) o;
        *ret = &f->base;
        return 0;
}

static ssize_t counting_pread(OriginFile *file, void *buf, size_t size, uint64_t offset) {
        CountingFile *f = (CountingFile *) file;
        ssize_t n = origin_pread(f->inner, buf, size, offset);

        f->owner->reads++;
        if (n > 0)
                f->owner->bytes += (uint64_t) n;
        return n;
}

static void counting_close(OriginFile *file) {
        CountingFile *f = (CountingFile *) file;
        origin_close(f->inner);
        free(f);
}

static void counting_free(Origin *o) {
        free(o);
}

static const OriginOps counting_ops = {
        .kind = "counting",
        .open = counting_open,
        .pread = counting_pread,
        .close = counting_close,
        .free = counting_free,
};

static void test_read_cost(void **state) {
        Fixture *f = *state;
        /* D12's budget per format (bytes, origin reads); measured values are in the scan report. */
        static const struct {
                const char *name;
                uint64_t max_bytes;
                unsigned max_reads;
        } budget[] = {
                { "long.flac", 16 * 1024, 3 },
                { "long.mp3", 16 * 1024, 3 },
                { "long.m4a", 64 * 1024, 5 },
                { "long.ogg", 128 * 1024, 8 },
                { "long.opus", 128 * 1024, 8 },
                { "long.wav", 72 * 1024, 3 },
        };
        CountingOrigin *c = calloc(1, sizeof *c);

        assert_non_null(c);
        c->base = (Origin) { .ops = &counting_ops, .name = strdup("counting") };
        c->inner = f->origin;

        for (size_t i = 0; i < ELEMENTSOF(budget); i++) {
                OriginStat st;
                OriginFile *file = NULL;
                TrackTags t;

                assert_int_equal(origin_stat(f->origin, budget[i].name, &st), 0);
                /* Big enough that reading it whole could not pass for reading headers. */
                assert_true(st.size > 2 * budget[i].max_bytes);
                c->bytes = c->reads = 0;
                assert_int_equal(origin_open(&c->base, budget[i].name, &file), 0);
                assert_int_equal(tags_read(file, st.size, &t), 0);
                origin_close(file);

                fprintf(stderr, "%s: %" PRIu64 " of %" PRIu64 " bytes in %u reads\n",
                        budget[i].name, c->bytes, st.size, c->reads);
                assert_string_equal(t.title, "Title \xe2\x9c\x93");
                assert_duration_near(t.duration_ms, 60000);
                assert_true(c->bytes <= budget[i].max_bytes);
                assert_true(c->reads <= budget[i].max_reads);
                track_tags_free(&t);
        }
        origin_free(&c->base);
}

static void test_bad_arguments(void **state) {
        TrackTags t;
        assert_int_equal(tags_read(NULL, 10, &t), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_audio_extension, teardown),
                cmocka_unit_test_teardown(test_formats, teardown),
                cmocka_unit_test_teardown(test_key_variants, teardown),
                cmocka_unit_test_teardown(test_dirty_strings, teardown),
                cmocka_unit_test_teardown(test_huge_tags, teardown),
                cmocka_unit_test_teardown(test_big_id3, teardown),
                cmocka_unit_test_teardown(test_read_cost, teardown),
                cmocka_unit_test_teardown(test_id3v1, teardown),
                cmocka_unit_test_teardown(test_unparseable, teardown),
                cmocka_unit_test_teardown(test_origin_read_error, teardown),
                cmocka_unit_test_teardown(test_bad_arguments, teardown),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
