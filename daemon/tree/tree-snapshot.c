/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Tree snapshots. The file is the tree's arrays with every pointer turned into an index or a string
 * offset, native byte order (a snapshot never leaves the machine that wrote it; another byte order
 * or layout fails the header check and is rebuilt from the catalog):
 *
 *   header | key | annex | strings | nodes | children | replicas | file index
 *
 * Strings come first so that the nodes can be pointed at them as they are read; the sections are
 * read straight into the tree's own arrays (nodes and replicas through a small buffer), so loading
 * costs no second copy of a tree that is ~190 MB at a million tracks. The inode index is rebuilt,
 * which also refuses two nodes with one inode number. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io-util.h"
#include "log.h"
#include "tree-internal.h"
#include "tree-snapshot.h"

/* No implicit padding: every byte of the file is either checked or hashed. */
_Static_assert(sizeof(SnapshotHeader) == 120, "snapshot header layout");
_Static_assert(sizeof(SnapshotNode) == 64, "snapshot node layout");
_Static_assert(sizeof(SnapshotReplica) == 32, "snapshot replica layout");

#define SNAPSHOT_KEY_MAX (1u << 20)
#define SNAPSHOT_ANNEX_MAX (64u << 20)
#define SNAPSHOT_IO_BUF (1u << 20)

/* ---- writing: one buffered stream that hashes what it writes ---- */

typedef struct Writer {
        int fd;
        EVP_MD_CTX *md;
        uint8_t *buf;
        size_t used;
        int error;
} Writer;

static void writer_flush(Writer *w) {
        if (w->error == 0 && w->used > 0) {
                if (EVP_DigestUpdate(w->md, w->buf, w->used) != 1)
                        w->error = -ENOMEM;
                else
                        w->error = loop_write(w->fd, w->buf, w->used);
        }
        w->used = 0;
}

static void writer_put(Writer *w, const void *p, size_t n) {
        const uint8_t *b = p;

        while (n > 0 && w->error == 0) {
                size_t k = SNAPSHOT_IO_BUF - w->used < n ? SNAPSHOT_IO_BUF - w->used : n;
                memcpy(w->buf + w->used, b, k);
                w->used += k;
                b += k;
                n -= k;
                if (w->used == SNAPSHOT_IO_BUF)
                        writer_flush(w);
        }
}

static size_t node_index(const Tree *t, const TreeNode *n) {
        return (size_t) (n - t->nodes);
}

/* The sections after the header, in the order the reader expects them. */
static void write_sections(Writer *w, const Tree *t, const void *key, size_t key_len, const void *annex,
                           size_t annex_len) {
        uint64_t off, first;

        writer_put(w, key, key_len);
        writer_put(w, annex, annex_len);

        /* strings: each node's name, then each file's replicas' paths, in node order */
        for (size_t i = 0; i < t->n_nodes; i++)
                writer_put(w, t->nodes[i].name, strlen(t->nodes[i].name) + 1);
        for (size_t i = 0; i < t->n_nodes; i++)
                for (size_t j = 0; j < t->nodes[i].n_replicas; j++)
                        writer_put(w, t->nodes[i].replicas[j].rel_path, strlen(t->nodes[i].replicas[j].rel_path) + 1);

        /* nodes, with the same offsets the strings above were laid out at */
        off = 0;
        uint64_t children = 0, replicas = 0;
        for (size_t i = 0; i < t->n_nodes; i++) {
                const TreeNode *n = t->nodes + i;
                SnapshotNode s = {
                        .ino = n->ino, .parent = n->parent, .name = off, .size = n->size, .mtime_ns = n->mtime_ns,
                        .children_first = children, .replicas_first = replicas, .n_children = n->n_children,
                        .n_replicas = n->n_replicas, .is_dir = n->is_dir,
                };
                writer_put(w, &s, sizeof s);
                off += strlen(n->name) + 1;
                children += n->n_children;
                replicas += n->n_replicas;
        }
        for (size_t i = 0; i < t->n_nodes; i++)
                for (size_t j = 0; j < t->nodes[i].n_children; j++) {
                        uint32_t c = (uint32_t) node_index(t, t->nodes[i].children[j]);
                        writer_put(w, &c, sizeof c);
                }
        first = off;
        for (size_t i = 0; i < t->n_nodes; i++)
                for (size_t j = 0; j < t->nodes[i].n_replicas; j++) {
                        const TreeReplica *rp = t->nodes[i].replicas + j;
                        SnapshotReplica s = { .origin_id = rp->origin_id, .file_id = rp->file_id, .rel_path = first,
                                              .priority = rp->priority };
                        writer_put(w, &s, sizeof s);
                        first += strlen(rp->rel_path) + 1;
                }
        for (size_t i = 0; i < t->n_files_by_id; i++) {
                struct TreeFileEntry e;
                memset(&e, 0, sizeof e);        /* the padding too: it is hashed */
                e.file_id = t->files_by_id[i].file_id;
                e.node = t->files_by_id[i].node;
                writer_put(w, &e, sizeof e);
        }
        writer_flush(w);
}

static void header_counts(const Tree *t, SnapshotHeader *h) {
        for (size_t i = 0; i < t->n_nodes; i++) {
                const TreeNode *n = t->nodes + i;
                h->strings_len += strlen(n->name) + 1;
                h->n_children += n->n_children;
                h->n_replicas += n->n_replicas;
                for (size_t j = 0; j < n->n_replicas; j++)
                        h->strings_len += strlen(n->replicas[j].rel_path) + 1;
        }
}

static void header_init(SnapshotHeader *h) {
        memset(h, 0, sizeof *h);
        memcpy(h->magic, SNAPSHOT_MAGIC, sizeof SNAPSHOT_MAGIC);
        h->version = SNAPSHOT_VERSION;
        h->node_size = sizeof(SnapshotNode);
        h->replica_size = sizeof(SnapshotReplica);
        h->file_entry_size = sizeof(struct TreeFileEntry);
        h->tree_node_size = sizeof(TreeNode);
}

int tree_snapshot_write(const char *path, const Tree *t, const void *key, size_t key_len, const void *annex,
                        size_t annex_len) {
        _cleanup_free_ char *tmp = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        _cleanup_close_ int fd = -1;
        SnapshotHeader h;
        unsigned digest_len = 0;
        int r;

        if (!path || !t || (key_len > 0 && !key) || (annex_len > 0 && !annex) || key_len > SNAPSHOT_KEY_MAX ||
            annex_len > SNAPSHOT_ANNEX_MAX)
                return -EINVAL;
        if (asprintf(&tmp, "%s.tmp", path) < 0)
                return -ENOMEM;
        buf = malloc(SNAPSHOT_IO_BUF);
        if (!buf)
                return -ENOMEM;

        header_init(&h);
        h.n_nodes = t->n_nodes;
        h.n_files = t->n_files;
        h.n_file_ids = t->n_files_by_id;
        h.key_len = key_len;
        h.annex_len = annex_len;
        header_counts(t, &h);

        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        /* The header goes last, with the digest: until then the file is refused by its magic. */
        r = loop_write(fd, &(SnapshotHeader) {}, sizeof h);
        if (r < 0)
                goto fail;

        Writer w = { .fd = fd, .buf = buf, .md = EVP_MD_CTX_new() };
        if (!w.md || EVP_DigestInit_ex(w.md, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(w.md);
                r = -ENOMEM;
                goto fail;
        }
        write_sections(&w, t, key, key_len, annex, annex_len);
        if (w.error == 0 && (EVP_DigestFinal_ex(w.md, h.digest, &digest_len) != 1 || digest_len != sizeof h.digest))
                w.error = -ENOMEM;
        EVP_MD_CTX_free(w.md);
        r = w.error;
        if (r < 0)
                goto fail;
        if (pwrite(fd, &h, sizeof h, 0) != (ssize_t) sizeof h) {
                r = errno ? -errno : -EIO;
                goto fail;
        }
        if (fsync(fd) < 0) {
                r = -errno;
                goto fail;
        }
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        return 0;

fail:
        (void) unlink(tmp);
        return r;
}

/* ---- reading ---- */

typedef struct Reader {
        int fd;
        uint8_t *buf;
} Reader;

static int reader_get(Reader *rd, void *p, size_t n) {
        ssize_t k = loop_read(rd->fd, p, n);

        if (k < 0)
                return (int) k;
        return (size_t) k == n ? 0 : -EBADMSG;  /* shorter than its header says */
}

/* The next records of a section into rd->buf: as many of the left ones of size bytes as fit. */
static int reader_batch(Reader *rd, uint64_t left, size_t size, size_t *ret_n) {
        size_t per = SNAPSHOT_IO_BUF / size;

        *ret_n = left < per ? (size_t) left : per;
        return reader_get(rd, rd->buf, *ret_n * size);
}

/* The digest is checked on a thread of its own, reading the file through its own offsets, while the
 * caller's thread reads and converts the same bytes: at a million tracks hashing 170 MB is ~100 ms,
 * as long as the rest together. */
typedef struct DigestCheck {
        int fd;
        uint64_t offset, len;
        const uint8_t *want;
        atomic_bool cancel;
        int result;             /* 0: the digest matches; -EBADMSG: it does not; -ECANCELED */
} DigestCheck;

static int digest_check_run(DigestCheck *c) {
        _cleanup_free_ uint8_t *buf = malloc(SNAPSHOT_IO_BUF);
        uint8_t digest[32];
        unsigned digest_len = 0;
        int r = 0;

        EVP_MD_CTX *md = EVP_MD_CTX_new();
        if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(md);
                return -ENOMEM;
        }
        for (uint64_t done = 0; r == 0 && done < c->len;) {
                if (atomic_load_explicit(&c->cancel, memory_order_relaxed)) {
                        r = -ECANCELED;
                        break;
                }
                size_t want = c->len - done < SNAPSHOT_IO_BUF ? (size_t) (c->len - done) : SNAPSHOT_IO_BUF;
                ssize_t k = pread(c->fd, buf, want, (off_t) (c->offset + done));
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        r = -errno;
                else if (k == 0)
                        r = -EBADMSG;
                else if (EVP_DigestUpdate(md, buf, (size_t) k) != 1)
                        r = -ENOMEM;
                else
                        done += (uint64_t) k;
        }
        if (r == 0 && (EVP_DigestFinal_ex(md, digest, &digest_len) != 1 || digest_len != sizeof digest))
                r = -ENOMEM;
        EVP_MD_CTX_free(md);
        if (r == 0 && memcmp(digest, c->want, sizeof digest) != 0)
                r = -EBADMSG;
        return r;
}

static void *digest_check_main(void *userdata) {
        DigestCheck *c = userdata;
        c->result = digest_check_run(c);
        return NULL;
}

static bool mul_add(uint64_t *acc, uint64_t n, uint64_t size) {
        uint64_t x;
        return !__builtin_mul_overflow(n, size, &x) && !__builtin_add_overflow(*acc, x, acc);
}

/* Sizes that fit in this process and add up to the file's size. */
static int header_check(const SnapshotHeader *h, uint64_t file_size) {
        SnapshotHeader want;
        uint64_t total = sizeof *h;

        header_init(&want);
        if (memcmp(h->magic, want.magic, sizeof want.magic) != 0 || h->version != want.version ||
            h->node_size != want.node_size || h->replica_size != want.replica_size ||
            h->file_entry_size != want.file_entry_size || h->tree_node_size != want.tree_node_size ||
            h->reserved != 0)
                return -EBADMSG;
        if (h->n_nodes == 0 || h->n_nodes > UINT32_MAX || h->n_children >= h->n_nodes || h->n_files >= h->n_nodes ||
            h->strings_len == 0 || h->key_len > SNAPSHOT_KEY_MAX || h->annex_len > SNAPSHOT_ANNEX_MAX ||
            h->n_file_ids != h->n_replicas || h->n_replicas > SIZE_MAX / sizeof(TreeReplica))
                return -EBADMSG;
        if (!mul_add(&total, 1, h->key_len) || !mul_add(&total, 1, h->annex_len) ||
            !mul_add(&total, 1, h->strings_len) || !mul_add(&total, h->n_nodes, sizeof(SnapshotNode)) ||
            !mul_add(&total, h->n_children, sizeof(uint32_t)) ||
            !mul_add(&total, h->n_replicas, sizeof(SnapshotReplica)) ||
            !mul_add(&total, h->n_file_ids, sizeof(struct TreeFileEntry)) || total != file_size)
                return -EBADMSG;
        return 0;
}

static int read_nodes(Reader *rd, const SnapshotHeader *h, Tree *t) {
        const SnapshotNode *s = (const SnapshotNode *) rd->buf;
        const char *strings = t->strings.head->data;
        uint64_t children = 0, replicas = 0, files = 0;
        size_t k;
        int r;

        for (size_t done = 0; done < t->n_nodes;) {
                r = reader_batch(rd, t->n_nodes - done, sizeof *s, &k);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < k; i++, done++) {
                        TreeNode *n = t->nodes + done;
                        /* Each record says where its children and replicas start: they must follow on
                         * from the record before, which also keeps every range inside its array. */
                        if (s[i].name >= h->strings_len || s[i].children_first != children ||
                            s[i].replicas_first != replicas || s[i].is_dir > 1 ||
                            (s[i].is_dir ? s[i].n_replicas != 0 : s[i].n_children != 0 || s[i].n_replicas == 0) ||
                            s[i].n_children > h->n_children - children || s[i].n_replicas > h->n_replicas - replicas)
                                return -EBADMSG;
                        *n = (TreeNode) {
                                .ino = s[i].ino, .parent = s[i].parent, .name = (char *) strings + s[i].name,
                                .size = s[i].size, .mtime_ns = s[i].mtime_ns,
                                .children = s[i].n_children ? t->children + children : NULL,
                                .replicas = s[i].n_replicas ? t->replicas + replicas : NULL,
                                .n_children = s[i].n_children, .n_replicas = s[i].n_replicas, .is_dir = s[i].is_dir,
                        };
                        children += s[i].n_children;
                        replicas += s[i].n_replicas;
                        files += !s[i].is_dir;
                }
        }
        if (children != h->n_children || replicas != h->n_replicas || files != h->n_files)
                return -EBADMSG;
        return 0;
}

static int read_children(Reader *rd, const SnapshotHeader *h, Tree *t) {
        const uint32_t *s = (const uint32_t *) rd->buf;
        size_t k;
        int r;

        for (size_t done = 0; done < h->n_children;) {
                r = reader_batch(rd, h->n_children - done, sizeof *s, &k);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < k; i++, done++) {
                        if (s[i] == 0 || s[i] >= t->n_nodes)    /* the root is nobody's child */
                                return -EBADMSG;
                        t->children[done] = t->nodes + s[i];
                }
        }
        return 0;
}

static int read_replicas(Reader *rd, const SnapshotHeader *h, Tree *t) {
        const SnapshotReplica *s = (const SnapshotReplica *) rd->buf;
        const char *strings = t->strings.head->data;
        size_t k;
        int r;

        for (size_t done = 0; done < h->n_replicas;) {
                r = reader_batch(rd, h->n_replicas - done, sizeof *s, &k);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < k; i++, done++) {
                        if (s[i].rel_path >= h->strings_len)
                                return -EBADMSG;
                        t->replicas[done] = (TreeReplica) { .origin_id = s[i].origin_id, .priority = s[i].priority,
                                                            .file_id = s[i].file_id,
                                                            .rel_path = (char *) strings + s[i].rel_path };
                }
        }
        return 0;
}

/* The arrays hold together as a tree: every node but the root is the child of exactly one directory
 * and names that directory as its parent, so walking up from any node ends at the root; children are
 * sorted as lookups expect; the file index points at files and is sorted. The checks that read the
 * nodes go through the directories in array order (a walk in tree order reads them ~10 % slower at a
 * million tracks); the walk from the root that proves them connected reads only the child arrays. */
static int tree_check(const Tree *t) {
        _cleanup_free_ uint8_t *seen = calloc(t->n_nodes, 1);
        _cleanup_free_ uint32_t *stack = malloc(t->n_nodes * sizeof *stack);
        const TreeNode *root = t->nodes;
        size_t top = 0, reached = 0;

        if (!seen || !stack)
                return -ENOMEM;
        if (!root->is_dir || root->ino != TREE_ROOT_INO || root->parent != TREE_ROOT_INO)
                return -EBADMSG;
        for (size_t i = 0; i < t->n_nodes; i++) {
                const TreeNode *d = t->nodes + i;
                for (uint32_t j = 0; j < d->n_children; j++) {
                        const TreeNode *c = d->children[j];
                        if (seen[node_index(t, c)]++ || c->parent != d->ino ||
                            (j > 0 && strcmp(d->children[j - 1]->name, c->name) >= 0))
                                return -EBADMSG;
                }
        }
        /* Each node a child once, the root never: with the parents above that is a tree, if it is
         * connected; a cycle of directories off the root would pass too. */
        memset(seen, 0, t->n_nodes);
        stack[top++] = 0;
        seen[0] = 1;
        while (top > 0) {
                const TreeNode *d = t->nodes + stack[--top];
                reached++;
                for (uint32_t j = 0; j < d->n_children; j++) {
                        size_t c = node_index(t, d->children[j]);
                        if (seen[c])
                                return -EBADMSG;
                        seen[c] = 1;
                        stack[top++] = (uint32_t) c;
                }
        }
        if (reached != t->n_nodes)
                return -EBADMSG;
        for (size_t i = 0; i < t->n_files_by_id; i++) {
                const struct TreeFileEntry *e = t->files_by_id + i;
                if (e->node >= t->n_nodes || t->nodes[e->node].is_dir ||
                    (i > 0 && t->files_by_id[i - 1].file_id > e->file_id))
                        return -EBADMSG;
        }
        return 0;
}

int tree_snapshot_read(const char *path, const void *key, size_t key_len, Tree **ret, void **ret_annex,
                       size_t *ret_annex_len) {
        _cleanup_(tree_freep) Tree *t = NULL;
        _cleanup_free_ uint8_t *buf = NULL, *got_key = NULL;
        _cleanup_free_ void *annex = NULL;
        _cleanup_close_ int fd = -1;
        SnapshotHeader h;
        struct stat st;
        int r;

        if (!path || !ret || (key_len > 0 && !key))
                return -EINVAL;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;
        ssize_t k = pread(fd, &h, sizeof h, 0);
        if (k < 0)
                return -errno;
        if ((size_t) k != sizeof h)
                return -EBADMSG;
        r = header_check(&h, (uint64_t) st.st_size);
        if (r < 0)
                return r;
        if (h.key_len != key_len)
                return -ESTALE;
        if (lseek(fd, sizeof h, SEEK_SET) < 0)
                return -errno;

        buf = malloc(SNAPSHOT_IO_BUF);
        got_key = malloc(key_len ? key_len : 1);
        annex = h.annex_len ? malloc(h.annex_len) : NULL;
        if (!buf || !got_key || (h.annex_len && !annex))
                return -ENOMEM;
        Reader rd = { .fd = fd, .buf = buf };

        /* From here to the join, no return: the thread uses fd and check. */
        DigestCheck check = { .fd = fd, .offset = sizeof h, .len = (uint64_t) st.st_size - sizeof h,
                              .want = h.digest };
        pthread_t thread;
        bool threaded = pthread_create(&thread, NULL, digest_check_main, &check) == 0;

        r = reader_get(&rd, got_key, key_len);
        if (r >= 0 && key_len > 0 && memcmp(got_key, key, key_len) != 0)
                r = -ESTALE;
        if (r >= 0)
                r = reader_get(&rd, annex, h.annex_len);
        /* Every element below is written before it is read: no zeroing. */
        if (r >= 0)
                r = tree_alloc(h.n_nodes, false, &t);
        if (r >= 0) {
                t->n_files = h.n_files;
                t->strings.head = tree_alloc_array(1, sizeof(ArenaBlock) + h.strings_len, false);
                t->children = tree_alloc_array(h.n_children, sizeof *t->children, false);
                t->replicas = tree_alloc_array(h.n_replicas, sizeof *t->replicas, false);
                t->files_by_id = tree_alloc_array(h.n_file_ids, sizeof *t->files_by_id, false);
                if (!t->strings.head || !t->children || !t->replicas || !t->files_by_id)
                        r = -ENOMEM;
        }
        if (r >= 0) {
                *t->strings.head = (ArenaBlock) { .used = h.strings_len, .size = h.strings_len };
                r = reader_get(&rd, t->strings.head->data, h.strings_len);
                /* every offset below is < strings_len: a final NUL ends every string inside */
                if (r >= 0 && t->strings.head->data[h.strings_len - 1] != '\0')
                        r = -EBADMSG;
        }
        if (r >= 0)
                r = read_nodes(&rd, &h, t);
        if (r >= 0)
                r = read_children(&rd, &h, t);
        if (r >= 0)
                r = read_replicas(&rd, &h, t);
        if (r >= 0) {
                r = reader_get(&rd, t->files_by_id, h.n_file_ids * sizeof *t->files_by_id);
                t->n_files_by_id = h.n_file_ids;
        }

        if (r < 0)
                atomic_store(&check.cancel, true);
        if (threaded)
                (void) pthread_join(thread, NULL);
        else if (r >= 0)
                check.result = digest_check_run(&check);
        if (r < 0)
                return r;
        if (check.result < 0)
                return check.result;

        r = tree_check(t);
        if (r < 0)
                return r;
        r = tree_index_inodes(t);
        if (r < 0)
                return r == -ENOMEM ? r : -EBADMSG;

        *ret = TAKE_PTR(t);
        if (ret_annex)
                *ret_annex = TAKE_PTR(annex);
        if (ret_annex_len)
                *ret_annex_len = h.annex_len;
        return 0;
}
