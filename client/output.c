/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

#include "json.h"
#include "output.h"

bool colors_enabled(void) {
        const char *term = getenv("TERM");

        if (getenv("NO_COLOR"))
                return false;
        if (term && strcmp(term, "dumb") == 0)
                return false;
        return isatty(STDOUT_FILENO);
}

const char *state_color(const char *state) {
        if (!state)
                return NULL;
        if (strcmp(state, "healthy") == 0 || strcmp(state, "ready") == 0)
                return ANSI_GREEN;
        if (strcmp(state, "degraded") == 0 || strcmp(state, "starting") == 0 || strcmp(state, "stopping") == 0)
                return ANSI_YELLOW;
        if (strcmp(state, "unhealthy") == 0 || strcmp(state, "offline") == 0)
                return ANSI_RED;
        return NULL;
}

char *human_escape(const char *s) {
        size_t n = strlen(s), o = 0;
        char *out = malloc(n * 4 + 1);  /* \xNN is the longest expansion of one byte */

        if (!out)
                return NULL;
        for (size_t i = 0; i < n;) {
                unsigned char c = (unsigned char) s[i];
                uint32_t cp = 0;
                size_t len;

                if (c == '\n' || c == '\t' || c == '\r') {
                        out[o++] = '\\';
                        out[o++] = c == '\n' ? 'n' : c == '\t' ? 't' : 'r';
                        i++;
                        continue;
                }
                len = c < 0x20 || c == 0x7f ? 0 : utf8_decode(s + i, n - i, &cp);
                /* C1 controls (U+0080..U+009F) can drive terminals too. */
                if (len == 0 || (cp >= 0x80 && cp < 0xa0)) {
                        size_t bytes = len == 0 ? 1 : len;
                        for (size_t k = 0; k < bytes; k++)
                                o += (size_t) sprintf(out + o, "\\x%02x", (unsigned char) s[i + k]);
                        i += bytes;
                        continue;
                }
                memcpy(out + o, s + i, len);
                o += len;
                i += len;
        }
        out[o] = 0;
        return out;
}

size_t display_width(const char *s) {
        size_t n = strlen(s), width = 0;

        for (size_t i = 0; i < n;) {
                uint32_t cp;
                size_t len = utf8_decode(s + i, n - i, &cp);
                int w;

                if (len == 0) {
                        width++;
                        i++;
                        continue;
                }
                w = wcwidth((wchar_t) cp);
                width += w < 0 ? 1 : (size_t) w;
                i += len;
        }
        return width;
}

const char *format_bytes(char *buf, size_t size, uint64_t bytes) {
        static const char suffixes[] = "BKMGTPE";
        double v = (double) bytes;
        unsigned i = 0;

        if (bytes < 1024) {
                snprintf(buf, size, "%uB", (unsigned) bytes);
                return buf;
        }
        while (v >= 1024.0 && i + 1 < sizeof suffixes - 1) {
                v /= 1024.0;
                i++;
        }
        snprintf(buf, size, "%.1f%c", v, suffixes[i]);
        return buf;
}

const char *format_span(char *buf, size_t size, uint64_t usec, bool zero_is_unknown) {
        if (usec == 0 && zero_is_unknown)
                snprintf(buf, size, "-");
        else if (usec < 1000)
                snprintf(buf, size, "%uus", (unsigned) usec);
        else if (usec < 1000000)
                snprintf(buf, size, "%.1fms", (double) usec / 1e3);
        else
                snprintf(buf, size, "%.2fs", (double) usec / 1e6);
        return buf;
}

const char *format_timestamp(char *buf, size_t size, uint64_t usec) {
        time_t t = (time_t) (usec / 1000000);
        struct tm tm;

        if (usec == 0 || !localtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm) == 0)
                snprintf(buf, size, usec == 0 ? "never" : "@%llu", (unsigned long long) (usec / 1000000));
        return buf;
}

const char *format_timestamp_precise(char *buf, size_t size, uint64_t usec) {
        time_t t = (time_t) (usec / 1000000);
        char date[32], zone[8];
        struct tm tm;

        if (!localtime_r(&t, &tm) || strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm) == 0 ||
            strftime(zone, sizeof zone, "%z", &tm) == 0) {
                snprintf(buf, size, "@%llu.%06u", (unsigned long long) (usec / 1000000), (unsigned) (usec % 1000000));
                return buf;
        }
        snprintf(buf, size, "%s.%06u %s", date, (unsigned) (usec % 1000000), zone);
        return buf;
}

uint64_t now_realtime_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}
