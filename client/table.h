/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Aligned text tables for people: a header row and cells added left to right, row by row. Cells are
 * copied and escaped (control characters cannot reach the terminal); widths count display columns.
 * Colour is an ANSI sequence per cell, written only when the table is printed with colours on. */
#include <stdbool.h>
#include <stdio.h>

typedef struct Table Table;

Table *table_new(unsigned n_columns, const char *const *headers);
void table_free(Table *t);
static inline void table_freep(Table **t) { if (*t) table_free(*t); }

/* Right-aligns a column (numbers). */
void table_align_right(Table *t, unsigned column);
/* Adds the next cell; color is an ANSI SGR sequence such as ANSI_RED, or NULL. -ENOMEM on failure. */
int table_add_cell(Table *t, const char *text, const char *color);
int table_add_cellf(Table *t, const char *color, const char *format, ...) __attribute__((format(printf, 3, 4)));
unsigned table_rows(const Table *t);
/* Prints the table; the header row only when legend, colours only when colors. */
int table_print(const Table *t, FILE *f, bool legend, bool colors);
