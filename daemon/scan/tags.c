/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libavformat/avformat.h>
#include <libavformat/avio.h>
#include <libavutil/dict.h>
#include <libavutil/log.h>
#include <libavutil/mathematics.h>
#include <libavutil/mem.h>

#include "macro.h"
#include "tags.h"

/* D12: the probe window. The format is guessed from content alone (there is no name to hint with):
 * FLAC, WAV, Ogg and M4A announce themselves in the first bytes, and the MP3 probe recognises an
 * ID3v2 tag larger than the window (cover art) by its header. */
#define TAGS_PROBE_SIZE (32 * 1024)
/* Each origin read is a round trip on a remote origin, so fewer and larger reads win, as long as
 * they stay near what the demuxer wants. The AVIO buffer is the smallest read; reads that continue
 * where the previous one ended double up to TAGS_READAHEAD_MAX; the first bytes of the file are kept
 * for the demuxer's return to them. Measured (FFmpeg 5.1): FLAC 12 KiB in 2 reads, MP3 4 KiB in 1,
 * M4A 16-40 KiB in 3-4, Ogg Vorbis and Opus 76 KiB in 7 (the last 64 KiB hold the duration), WAV
 * 64 KiB in 2 (the S/PDIF probe reads PCM). */
#define TAGS_IO_BUFFER_SIZE (4 * 1024)
#define TAGS_READAHEAD_MAX (64 * 1024)
#define TAGS_HEAD_MAX (64 * 1024)
#define TAGS_STRING_MAX 1024

/* Demuxers allowed to parse untrusted origin files: the formats we index and nothing else. */
#define TAGS_FORMAT_WHITELIST "flac,mp3,ogg,mov,mp4,m4a,aac,wav"

typedef struct TagsIO {
        OriginFile *file;
        uint64_t size;
        uint64_t pos;
        int error;      /* first negative errno from the origin; wins over whatever libavformat says */

        /* The file's first bytes, as far as they were read in one sequential run: demuxers come
         * back to them after a look at the end (Ogg's duration, MP3's trailing tags). */
        uint8_t *head;
        size_t head_len;
        uint8_t *window;        /* read-ahead: file bytes [window_offset, window_offset + window_len) */
        uint64_t window_offset;
        size_t window_len;
        size_t last_read;       /* size of the last origin read */
        uint64_t next_offset;   /* where the last origin read ended */
} TagsIO;

static const char *const audio_extensions[] = { "flac", "mp3", "ogg", "oga", "opus", "m4a", "mp4", "aac", "wav" };

bool tags_audio_extension(const char *name, const char **ret_ext) {
        const char *dot;

        if (!name)
                return false;
        dot = strrchr(name, '.');
        if (!dot || dot == name || dot[-1] == '/' || strchr(dot, '/'))
                return false;
        for (size_t i = 0; i < ELEMENTSOF(audio_extensions); i++)
                if (strcasecmp(dot + 1, audio_extensions[i]) == 0) {
                        if (ret_ext)
                                *ret_ext = audio_extensions[i];
                        return true;
                }
        return false;
}

void tags_init(void) {
        av_log_set_level(AV_LOG_QUIET);
}

static size_t size_min(size_t a, size_t b) {
        return a < b ? a : b;
}

static int tags_io_read(void *opaque, uint8_t *buf, int buf_size) {
        TagsIO *io = opaque;
        uint8_t *dst;
        size_t want, n;
        ssize_t k;

        if (io->error < 0)
                return AVERROR(-io->error);
        if (buf_size <= 0)
                return 0;
        if (io->pos >= io->size)
                return AVERROR_EOF;
        n = (size_t) buf_size;
        if (n > io->size - io->pos)
                n = (size_t) (io->size - io->pos);

        if (io->pos < io->head_len) {
                if (n > io->head_len - io->pos)
                        n = io->head_len - (size_t) io->pos;
                memcpy(buf, io->head + io->pos, n);
                io->pos += n;
                return (int) n;
        }
        if (io->window_len > 0 && io->pos >= io->window_offset && io->pos < io->window_offset + io->window_len) {
                size_t at = (size_t) (io->pos - io->window_offset);
                if (n > io->window_len - at)
                        n = io->window_len - at;
                memcpy(buf, io->window + at, n);
                io->pos += n;
                return (int) n;
        }

        want = TAGS_IO_BUFFER_SIZE;
        if (io->pos == io->next_offset && io->last_read > 0)
                want = io->last_read >= TAGS_READAHEAD_MAX / 2 ? TAGS_READAHEAD_MAX : io->last_read * 2;
        if (want > io->size - io->pos)
                want = (size_t) (io->size - io->pos);

        /* When the caller asks for at least a window's worth, straight into its buffer. */
        dst = n >= want ? buf : io->window;
        k = origin_pread(io->file, dst, n >= want ? n : want, io->pos);
        if (k < 0) {
                io->error = (int) k;
                return AVERROR((int) -k);
        }
        if (k == 0)     /* shorter than stat said: the file shrank under us */
                return AVERROR_EOF;

        if (io->pos == io->head_len && io->head_len < TAGS_HEAD_MAX) {
                size_t add = size_min((size_t) k, TAGS_HEAD_MAX - io->head_len);
                memcpy(io->head + io->head_len, dst, add);
                io->head_len += add;
        }
        if (dst == io->window) {
                io->window_offset = io->pos;
                io->window_len = (size_t) k;
                n = size_min(n, (size_t) k);
                memcpy(buf, io->window, n);
        } else
                n = (size_t) k;

        /* A large direct read is usually a box or block the demuxer wanted whole; what follows is
         * as likely a skip as more reading, so the read-ahead starts small again. */
        io->last_read = dst == buf ? TAGS_IO_BUFFER_SIZE : (size_t) k;
        io->next_offset = io->pos + (uint64_t) k;
        io->pos += n;
        return (int) n;
}

static int64_t tags_io_seek(void *opaque, int64_t offset, int whence) {
        TagsIO *io = opaque;
        int64_t base;

        if (whence & AVSEEK_SIZE)
                return io->size > INT64_MAX ? AVERROR(EOVERFLOW) : (int64_t) io->size;

        switch (whence & ~AVSEEK_FORCE) {
        case SEEK_SET:
                base = 0;
                break;
        case SEEK_CUR:
                base = (int64_t) io->pos;
                break;
        case SEEK_END:
                base = (int64_t) io->size;
                break;
        default:
                return AVERROR(EINVAL);
        }
        if ((offset > 0 && base > INT64_MAX - offset) || base + offset < 0)
                return AVERROR(EINVAL);

        io->pos = (uint64_t) (base + offset);
        return (int64_t) io->pos;
}

/* Demuxers may try to open side files (mov data references, playlists); origin files never get to. */
static int tags_io_open_refused(AVFormatContext *s, AVIOContext **pb, const char *url, int flags, AVDictionary **options) {
        return AVERROR(EPERM);
}

/* Copies at most TAGS_STRING_MAX bytes of valid UTF-8: each byte of an invalid sequence becomes
 * U+FFFD, control characters (C0, DEL, C1) go away except that tab and line breaks become a space,
 * surrounding whitespace is trimmed. NULL when nothing is left (or out of memory: a missing tag is the
 * graceful outcome there, and the next scan tries again). */
static char *sanitize_tag(const char *s) {
        static const char replacement[] = "\xef\xbf\xbd";
        const unsigned char *p = (const unsigned char *) s;
        char *out;
        size_t n = 0;

        out = malloc(TAGS_STRING_MAX + 1);
        if (!out)
                return NULL;

        while (*p) {
                unsigned char c = *p;
                size_t len, need;
                uint32_t cp;

                if (c < 0x80) {
                        len = 1;
                        cp = c;
                } else {
                        if (c >= 0xc2 && c <= 0xdf) {
                                need = 1;
                                cp = c & 0x1f;
                        } else if (c >= 0xe0 && c <= 0xef) {
                                need = 2;
                                cp = c & 0x0f;
                        } else if (c >= 0xf0 && c <= 0xf4) {
                                need = 3;
                                cp = c & 0x07;
                        } else {
                                need = 0;
                                cp = 0;
                        }

                        len = 0;
                        if (need > 0) {
                                size_t i;
                                for (i = 1; i <= need && (p[i] & 0xc0) == 0x80; i++)
                                        cp = (cp << 6) | (p[i] & 0x3f);
                                /* Complete, shortest form, no surrogates, within Unicode. */
                                if (i == need + 1 &&
                                    !(need == 2 && cp < 0x800) && !(need == 3 && cp < 0x10000) &&
                                    !(cp >= 0xd800 && cp <= 0xdfff) && cp <= 0x10ffff)
                                        len = need + 1;
                        }
                        if (len == 0) {
                                if (n + sizeof replacement - 1 > TAGS_STRING_MAX)
                                        break;
                                memcpy(out + n, replacement, sizeof replacement - 1);
                                n += sizeof replacement - 1;
                                p++;
                                continue;
                        }
                }

                if (cp == '\t' || cp == '\n' || cp == '\r')
                        cp = ' ', c = ' ';
                /* Leading blanks would otherwise eat into the length cap. */
                if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || (cp == ' ' && n == 0)) {
                        p += len;
                        continue;
                }
                if (n + len > TAGS_STRING_MAX)
                        break;
                if (len == 1)
                        out[n] = (char) c;
                else
                        memcpy(out + n, p, len);
                n += len;
                p += len;
        }

        while (n > 0 && out[n - 1] == ' ')
                n--;
        if (n == 0) {
                free(out);
                return NULL;
        }
        out[n] = 0;

        char *shrunk = realloc(out, n + 1);
        return shrunk ?: out;
}

static const char *dict_lookup(AVDictionary *container, AVDictionary *stream, const char *const *keys) {
        /* av_dict_get() matches keys case-insensitively unless told otherwise. Container metadata
         * first; Ogg keeps its Vorbis comments on the stream. */
        for (int pass = 0; pass < 2; pass++) {
                AVDictionary *dict = pass == 0 ? container : stream;
                if (!dict)
                        continue;
                for (const char *const *k = keys; *k; k++) {
                        AVDictionaryEntry *e = av_dict_get(dict, *k, NULL, 0);
                        if (e && e->value && e->value[0])
                                return e->value;
                }
        }
        return NULL;
}

/* The leading number: " 03/12" -> 3; 0 when there is none or it does not fit. The part after '/'
 * goes to *ret_total when asked for. */
static int parse_number(const char *s, int *ret_total) {
        long v = 0;
        char *end;

        if (!s)
                return 0;
        s += strspn(s, " \t");
        if (*s >= '0' && *s <= '9') {
                errno = 0;
                v = strtol(s, &end, 10);
                if (errno != 0 || v > INT_MAX)
                        v = 0;
                s = end;
        }
        if (ret_total) {
                s += strspn(s, " \t");
                if (*s == '/') {
                        int total = parse_number(s + 1, NULL);
                        if (total > 0)
                                *ret_total = total;
                }
        }
        return (int) v;
}

/* The first run of four digits: "2021-05-01" -> 2021, "May 1999" -> 1999. */
static int parse_year(const char *s) {
        if (!s)
                return 0;
        for (; *s; s++) {
                if (s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9' &&
                    s[2] >= '0' && s[2] <= '9' && s[3] >= '0' && s[3] <= '9') {
                        if (s[4] >= '0' && s[4] <= '9') {     /* not a year: skip the whole run */
                                while (*s >= '0' && *s <= '9')
                                        s++;
                                if (!*s)
                                        break;
                                continue;
                        }
                        return (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
                }
        }
        return 0;
}

static bool parse_bool(const char *s) {
        if (!s)
                return false;
        s += strspn(s, " ");
        return parse_number(s, NULL) > 0 || strncasecmp(s, "true", 4) == 0 || strncasecmp(s, "yes", 3) == 0;
}

static int64_t stream_duration_ms(const AVFormatContext *fmt, const AVStream *st) {
        if (fmt->duration != AV_NOPTS_VALUE && fmt->duration > 0)
                return av_rescale(fmt->duration, 1000, AV_TIME_BASE);
        if (st && st->duration != AV_NOPTS_VALUE && st->duration > 0 && st->time_base.num > 0 && st->time_base.den > 0)
                return av_rescale_q(st->duration, st->time_base, (AVRational) { 1, 1000 });
        return 0;
}

static int fill_tags(const AVFormatContext *fmt, const AVStream *st, TrackTags *t) {
        AVDictionary *c = fmt->metadata, *s = st->metadata;
        struct {
                char **field;
                const char *const *keys;
        } strings[] = {
                { &t->title,       (const char *const[]) { "title", NULL } },
                { &t->artist,      (const char *const[]) { "artist", NULL } },
                { &t->album,       (const char *const[]) { "album", NULL } },
                { &t->albumartist, (const char *const[]) { "album_artist", "albumartist", "album artist", NULL } },
                { &t->genre,       (const char *const[]) { "genre", NULL } },
                { &t->composer,    (const char *const[]) { "composer", NULL } },
        };

        for (size_t i = 0; i < ELEMENTSOF(strings); i++) {
                const char *v = dict_lookup(c, s, strings[i].keys);
                if (v)
                        *strings[i].field = sanitize_tag(v);
        }

        t->year = parse_year(dict_lookup(c, s, (const char *const[]) { "date", "year", "originaldate", NULL }));
        t->track = parse_number(dict_lookup(c, s, (const char *const[]) { "track", "tracknumber", NULL }), NULL);
        t->disc = parse_number(dict_lookup(c, s, (const char *const[]) { "disc", "discnumber", NULL }), &t->disc_total);
        if (t->disc_total == 0)
                t->disc_total = parse_number(dict_lookup(c, s, (const char *const[]) { "disctotal", "totaldiscs", NULL }), NULL);
        t->compilation = parse_bool(dict_lookup(c, s, (const char *const[]) { "compilation", NULL }));
        t->duration_ms = stream_duration_ms(fmt, st);
        return 0;
}

static void avio_context_freep(AVIOContext **pb) {
        if (!*pb)
                return;
        /* libavformat may have replaced the buffer (probe rewind, seekback): free the current one. */
        av_freep(&(*pb)->buffer);
        avio_context_free(pb);
}

int tags_read(OriginFile *f, uint64_t size, TrackTags *ret) {
        TagsIO io = { .file = f, .size = size };
        AVIOContext *pb = NULL;
        AVFormatContext *fmt = NULL;
        const AVStream *audio = NULL;
        unsigned char *buffer;
        int r;

        if (!f || !ret)
                return -EINVAL;
        *ret = (TrackTags) {};

        if (size == 0)
                return -EBADMSG;

        io.head = malloc(TAGS_HEAD_MAX + TAGS_READAHEAD_MAX);
        if (!io.head)
                return -ENOMEM;
        io.window = io.head + TAGS_HEAD_MAX;

        buffer = av_malloc(TAGS_IO_BUFFER_SIZE);
        if (!buffer) {
                free(io.head);
                return -ENOMEM;
        }
        pb = avio_alloc_context(buffer, TAGS_IO_BUFFER_SIZE, 0, &io, tags_io_read, NULL, tags_io_seek);
        if (!pb) {
                av_free(buffer);
                free(io.head);
                return -ENOMEM;
        }

        fmt = avformat_alloc_context();
        if (!fmt) {
                r = -ENOMEM;
                goto finish;
        }
        fmt->pb = pb;
        fmt->probesize = TAGS_PROBE_SIZE;
        fmt->format_probesize = TAGS_PROBE_SIZE;
        fmt->io_open = tags_io_open_refused;
        fmt->format_whitelist = av_strdup(TAGS_FORMAT_WHITELIST);
        if (!fmt->format_whitelist) {
                avformat_free_context(fmt);
                fmt = NULL;
                r = -ENOMEM;
                goto finish;
        }

        /* On failure avformat_open_input() frees fmt (not our pb) and sets it to NULL. */
        r = avformat_open_input(&fmt, "", NULL, NULL);
        if (io.error < 0) {
                r = io.error;
                goto finish;
        }
        if (r < 0) {
                r = r == AVERROR(ENOMEM) ? -ENOMEM : -EBADMSG;
                goto finish;
        }

        for (unsigned i = 0; i < fmt->nb_streams; i++)
                if (fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) {
                        audio = fmt->streams[i];
                        break;
                }
        if (!audio) {
                r = -EBADMSG;
                goto finish;
        }

        r = fill_tags(fmt, audio, ret);

finish:
        avformat_close_input(&fmt);
        avio_context_freep(&pb);
        free(io.head);
        if (r < 0)
                track_tags_free(ret);
        return r;
}
