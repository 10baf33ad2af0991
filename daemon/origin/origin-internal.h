/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* For origin implementations only (origin-local.c, later s3/sftp), never for callers of origin.h.
 *
 * An implementation's file struct embeds OriginFile as its first member; origin_open() fills the
 * base after ops->open succeeds, so origin_pread()/origin_close() can find their way back to the
 * vtable from a bare OriginFile pointer.
 *
 * Ownership: origin_free() frees name and url, then calls ops->free(), which releases the
 * implementation's state and the allocation that embeds the Origin. */
#include "origin.h"

struct OriginFile {
        const OriginOps *ops;
        Origin *origin;
};

/* Shared by implementations: rel_path is relative, with no empty, "." or ".." component. */
int origin_rel_path_check(const char *rel_path);     /* 0 or -EINVAL */
