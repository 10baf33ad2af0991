/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <elf.h>
#include <stdbool.h>
#include <stdint.h>
#include <errno.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "build-id.h"

typedef struct Found {
        const uint8_t *id;
        size_t len;
        bool done;
} Found;

#define NOTE_ALIGN(n) (((n) + 3u) & ~(size_t) 3u)

/* The first object dl_iterate_phdr() reports is the program itself. */
static int find_build_id(struct dl_phdr_info *info, size_t size, void *userdata) {
        Found *f = userdata;
        (void) size;

        if (f->done)
                return 1;
        f->done = true;
        for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
                const ElfW(Phdr) *ph = info->dlpi_phdr + i;
                if (ph->p_type != PT_NOTE)
                        continue;
                const uint8_t *p = (const uint8_t *) (info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
                while ((size_t) (end - p) >= sizeof(ElfW(Nhdr))) {
                        const ElfW(Nhdr) *n = (const ElfW(Nhdr) *) p;
                        const uint8_t *name = p + sizeof *n, *desc = name + NOTE_ALIGN(n->n_namesz);
                        if (n->n_namesz > (size_t) (end - name) || n->n_descsz > (size_t) (end - desc))
                                break;
                        if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 && memcmp(name, "GNU", 4) == 0 &&
                            n->n_descsz > 0) {
                                f->id = desc;
                                f->len = n->n_descsz;
                                return 1;
                        }
                        p = desc + NOTE_ALIGN(n->n_descsz);
                }
        }
        return 1;
}

int build_id_self(char **ret) {
        Found f = {};
        char *s;

        (void) dl_iterate_phdr(find_build_id, &f);
        if (f.id) {
                s = malloc(f.len * 2 + 1);
                if (!s)
                        return -ENOMEM;
                for (size_t i = 0; i < f.len; i++)
                        sprintf(s + 2 * i, "%02x", f.id[i]);
                *ret = s;
                return 0;
        }

        struct stat st;
        if (stat("/proc/self/exe", &st) < 0)
                return -ENOENT;
        if (asprintf(&s, "exe %llu %llu %lld %lld.%09ld", (unsigned long long) st.st_dev,
                     (unsigned long long) st.st_ino, (long long) st.st_size, (long long) st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec) < 0)
                return -ENOMEM;
        *ret = s;
        return 0;
}
