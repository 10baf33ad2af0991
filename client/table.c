/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "output.h"
#include "table.h"

typedef struct Cell {
        char *text;             /* escaped */
        const char *color;      /* static */
        size_t width;
} Cell;

struct Table {
        unsigned n_columns;
        Cell *cells;            /* header row first */
        size_t n_cells, allocated;
        bool *right;
};

static int table_push(Table *t, const char *text, const char *color) {
        _cleanup_free_ char *escaped = human_escape(text ? text : "");

        if (!escaped)
                return -ENOMEM;
        if (GREEDY_REALLOC(t->cells, t->allocated, t->n_cells + 1) < 0)
                return -ENOMEM;
        /* Two statements: the order in which an initializer list is evaluated is unspecified. */
        size_t width = display_width(escaped);
        t->cells[t->n_cells++] = (Cell) { .text = TAKE_PTR(escaped), .width = width, .color = color };
        return 0;
}

Table *table_new(unsigned n_columns, const char *const *headers) {
        Table *t = calloc(1, sizeof(Table));

        if (!t)
                return NULL;
        t->n_columns = n_columns;
        t->right = calloc(n_columns, sizeof(bool));
        if (!t->right) {
                table_free(t);
                return NULL;
        }
        for (unsigned i = 0; i < n_columns; i++)
                if (table_push(t, headers[i], NULL) < 0) {
                        table_free(t);
                        return NULL;
                }
        return t;
}

void table_free(Table *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i].text);
        free(t->cells);
        free(t->right);
        free(t);
}

void table_align_right(Table *t, unsigned column) {
        if (column < t->n_columns)
                t->right[column] = true;
}

int table_add_cell(Table *t, const char *text, const char *color) {
        return table_push(t, text, color);
}

int table_add_cellf(Table *t, const char *color, const char *format, ...) {
        _cleanup_free_ char *text = NULL;
        va_list ap;
        int r;

        va_start(ap, format);
        r = vasprintf(&text, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        return table_push(t, text, color);
}

unsigned table_rows(const Table *t) {
        return (unsigned) (t->n_cells / t->n_columns) - 1;
}

int table_print(const Table *t, FILE *f, bool legend, bool colors) {
        _cleanup_free_ size_t *widths = calloc(t->n_columns, sizeof(size_t));

        if (!widths)
                return -ENOMEM;
        for (size_t i = legend ? 0 : t->n_columns; i < t->n_cells; i++)
                if (t->cells[i].width > widths[i % t->n_columns])
                        widths[i % t->n_columns] = t->cells[i].width;

        for (size_t i = legend ? 0 : t->n_columns; i < t->n_cells; i++) {
                unsigned col = (unsigned) (i % t->n_columns);
                const Cell *c = t->cells + i;
                bool last = col + 1 == t->n_columns;
                const char *color = i < t->n_columns ? ANSI_BOLD : c->color;
                size_t pad = widths[col] - c->width;

                if (t->right[col])
                        fprintf(f, "%*s", (int) pad, "");
                if (colors && color)
                        fprintf(f, "%s%s%s", color, c->text, ANSI_NORMAL);
                else
                        fputs(c->text, f);
                if (last)
                        fputc('\n', f);
                else
                        fprintf(f, "%*s", (int) (t->right[col] ? 0 : pad) + 1, "");
        }
        return ferror(f) ? -EIO : 0;
}
