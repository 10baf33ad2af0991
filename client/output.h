/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Text for people: escaping of strings that come from the bus, colours, sizes, time spans and
 * timestamps. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ANSI_RED       "\x1b[0;31m"
#define ANSI_GREEN     "\x1b[0;32m"
#define ANSI_YELLOW    "\x1b[0;33m"
#define ANSI_BOLD      "\x1b[1m"
#define ANSI_NORMAL    "\x1b[0m"

/* Whether stdout takes colour: a terminal, TERM not "dumb", NO_COLOR unset. */
bool colors_enabled(void);
/* Colour for a health or daemon state ("healthy", "ready", "degraded", ...), NULL for none. */
const char *state_color(const char *state);

/* A copy of s safe to print on a terminal: control characters and bytes that are not UTF-8 become
 * \n, \t or \xNN escapes (for people, not machines: --json is exact). NULL on ENOMEM. */
char *human_escape(const char *s);
/* Display width of a UTF-8 string in terminal columns (1 for anything wcwidth() cannot tell). */
size_t display_width(const char *s);

/* "1.5G", "734.0M", "512B" (powers of 1024). buf must hold FORMAT_BYTES_MAX. */
#define FORMAT_BYTES_MAX 16
const char *format_bytes(char *buf, size_t size, uint64_t bytes);
/* "850us", "1.2ms", "2.50s"; "-" for 0 when zero_is_unknown. buf must hold FORMAT_SPAN_MAX. */
#define FORMAT_SPAN_MAX 24
const char *format_span(char *buf, size_t size, uint64_t usec, bool zero_is_unknown);
/* Local time "2024-05-01 12:00:00" of a CLOCK_REALTIME µs value; "never" for 0. */
#define FORMAT_TIMESTAMP_MAX 64
const char *format_timestamp(char *buf, size_t size, uint64_t usec);
/* Local time with microseconds and UTC offset, for event logs: "2024-05-01 12:00:00.123456 +0200". */
const char *format_timestamp_precise(char *buf, size_t size, uint64_t usec);
uint64_t now_realtime_usec(void);
