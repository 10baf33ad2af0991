/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Tree snapshots (D6 at any size): a published tree written to one file at a clean stop and read
 * back at the next start, so that mounting costs reading that file rather than reading every catalog
 * row and building the tree again (5-9 s at a million tracks).
 *
 * The file owns nothing else: whoever writes it passes a key (what the tree was built from: the
 * catalog file as it was left, the template, the origins, the binary) and an annex of its own bytes;
 * a read answers -ESTALE unless the key is byte for byte the same. The file carries a SHA-256 of its
 * contents and every offset and index in it is checked before a tree is handed out, so a damaged,
 * truncated or crafted file is refused (-EBADMSG) and never crashes or hangs a reader: the caller
 * then builds from the catalog as it would without a snapshot. */
#include <stddef.h>

#include "tree.h"

/* Writes t to path through path.tmp, fsync and rename. 0 or a negative errno. */
int tree_snapshot_write(const char *path, const Tree *t, const void *key, size_t key_len, const void *annex,
                        size_t annex_len);

/* Reads the snapshot at path: -ENOENT when there is none, -ESTALE when its key differs, -EBADMSG
 * when it is damaged or inconsistent, another negative errno on I/O errors. On success the tree
 * (one reference) and a newly allocated copy of the annex (NULL when it is empty). */
int tree_snapshot_read(const char *path, const void *key, size_t key_len, Tree **ret, void **ret_annex,
                       size_t *ret_annex_len);
