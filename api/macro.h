/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Small helpers shared by daemon, client and tests: scope-bound cleanup in the systemd manner.
 * Everything here is header-only and has no state. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))
#define _likely_(x) __builtin_expect(!!(x), 1)
#define _unlikely_(x) __builtin_expect(!!(x), 0)

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

static inline void freep(void *p) { free(*(void **) p); }
/* Frees p and returns NULL, for `x = mfree(x)`. */
static inline void *mfree(void *p) {
        free(p);
        return NULL;
}
static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
/* Closes fd if it is one (errno kept); returns -1 for `fd = safe_close(fd)`. */
static inline int safe_close(int fd) {
        closep(&fd);
        return -1;
}
static inline void fclosep(FILE **f) { if (*f) fclose(*f); }

#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Defines NAMEp(type **p) that calls func(*p) when non-NULL. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                         \
        static inline void func##p(type *p) {                           \
                if (*p)                                                 \
                        func(*p);                                       \
        }

/* Hand ownership out of a _cleanup_ variable. */
#define TAKE_PTR(p)                             \
        ({                                      \
                __typeof__(p) _p_ = (p);        \
                (p) = NULL;                     \
                _p_;                            \
        })
#define TAKE_FD(fd)                             \
        ({                                      \
                int _fd_ = (fd);                \
                (fd) = -1;                      \
                _fd_;                           \
        })

/* errno as a negative return value, never 0 even if errno was clobbered. */
static inline int negative_errno(void) { return errno > 0 ? -errno : -EIO; }

static inline const char *strna(const char *s) { return s ? s : "n/a"; }
static inline const char *strempty(const char *s) { return s ? s : ""; }
static inline int streq_ptr(const char *a, const char *b) {
        extern int strcmp(const char *, const char *);
        if (!a || !b) return a == b;
        return strcmp(a, b) == 0;
}

/* Room for at least need elements of size bytes in *p, of which *allocated fit so far: doubles from
 * 16, so a list built one element at a time costs amortised O(1) per element. 0, or -ENOMEM with
 * *p and *allocated untouched. */
static inline int greedy_realloc(void **p, size_t *allocated, size_t need, size_t size) {
        if (need <= *allocated)
                return 0;
        size_t n = *allocated > 16 ? *allocated : 16;
        while (n < need) {
                if (n > SIZE_MAX / 2)
                        return -ENOMEM;
                n *= 2;
        }
        void *q = reallocarray(*p, n, size);
        if (!q)
                return -ENOMEM;
        *p = q;
        *allocated = n;
        return 0;
}
#define GREEDY_REALLOC(array, allocated, need) \
        greedy_realloc((void **) &(array), &(allocated), (need), sizeof((array)[0]))
