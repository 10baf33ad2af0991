/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Whole reads and writes on a file descriptor, through short transfers and EINTR. */
#include <stddef.h>
#include <sys/types.h>

/* Writes all len bytes: 0, or a negative errno (-EIO when the kernel takes none). */
int loop_write(int fd, const void *data, size_t len);

/* Reads up to len bytes, fewer only at the end of the file: the count, or a negative errno. */
ssize_t loop_read(int fd, void *buf, size_t len);
