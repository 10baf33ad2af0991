/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Which build of the program is running, for state it writes that only the same build may read back
 * (the tree snapshot): the linker's GNU build ID, which changes whenever the code does. */

/* The running program's build ID as lower-case hex, newly allocated. Without one (a linker that
 * wrote none), the executable file's device, inode, size and mtime stand in. -ENOENT when neither
 * can be had, -ENOMEM. */
int build_id_self(char **ret);
