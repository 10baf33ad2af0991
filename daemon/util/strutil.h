/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Small string helpers that several subsystems need: hex digits and URL percent-decoding (origin URLs
 * on the bus and in the configuration, chunk names). */
#include <stdbool.h>
#include <stddef.h>

/* The value of one hex digit (either case), or -EINVAL. */
int unhexchar(char c);

/* The first n bytes of s with %XX escapes decoded, newly allocated in *ret. -EINVAL on a truncated or
 * non-hex escape and on %00 (a C string cannot hold it), and on an escaped '/' unless allow_slash
 * (a single path component or host name must not gain one); -ENOMEM. */
int percent_decode(const char *s, size_t n, bool allow_slash, char **ret);
