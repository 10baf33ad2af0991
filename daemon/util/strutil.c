/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdlib.h>

#include "strutil.h"

int unhexchar(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

int percent_decode(const char *s, size_t n, bool allow_slash, char **ret) {
        char *d = malloc(n + 1), *p = d;

        if (!d)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                if (s[i] != '%') {
                        *p++ = s[i];
                        continue;
                }
                int hi = i + 2 < n ? unhexchar(s[i + 1]) : -EINVAL;
                int lo = hi >= 0 ? unhexchar(s[i + 2]) : -EINVAL;
                int c = hi * 16 + lo;
                if (hi < 0 || lo < 0 || c == 0 || (!allow_slash && c == '/')) {
                        free(d);
                        return -EINVAL;
                }
                *p++ = (char) c;
                i += 2;
        }
        *p = '\0';
        *ret = d;
        return 0;
}
