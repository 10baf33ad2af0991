/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The read seam between FUSE and the bytes: a ReplicaReader reads one virtual file from the best of
 * its replicas, in origin-priority order, failing over to the next on an error. The chunk cache
 * (a later issue) slots in behind this interface without touching the FUSE layer. */
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "origin.h"
#include "tree.h"

typedef struct ReplicaReader ReplicaReader;

/* Opens the first replica that opens; -ENOENT/-EIO etc. when none does. */
int replica_reader_open(OriginSet *origins, const TreeNode *file, ReplicaReader **ret);
/* Reads up to size bytes at offset (short only at EOF); on an error from the current replica the
 * next one is opened and the read retried there. Several threads may read one reader at once. */
ssize_t replica_reader_read(ReplicaReader *r, void *buf, size_t size, uint64_t offset);
void replica_reader_close(ReplicaReader *r);
