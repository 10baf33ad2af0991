/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The chunk index (D7) on LMDB: record encodings, the counters in meta, map growth, stale readers and
 * the out-of-process probe of a possibly damaged file.
 *
 * Every record is a fixed little-endian layout that starts with a format byte and is size-checked on
 * every read, so a damaged record is -EBADMSG and never an out-of-bounds read. Version keys and pin
 * paths may be longer than LMDB's 511-byte key limit, so those databases are keyed by the SHA-256 of
 * the string and the record carries the string itself (compared on lookup).
 *
 * One rwlock guards the environment: every transaction holds it shared; growing the map and reopening
 * hold it exclusively, because mdb_env_set_mapsize() needs no transaction active in this process.
 * A write runs as a callback inside index_write(), which retries it from scratch after growing the
 * map, so a write callback must not have effects outside the transaction other than idempotent ones. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <openssl/sha.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chunk-index.h"
#include "failpoint.h"
#include "log.h"
#include "macro.h"

#define INDEX_FORMAT 1
#define DEFAULT_INITIAL_MAP_SIZE (UINT64_C(64) << 20)
#define DEFAULT_MAX_MAP_SIZE (UINT64_C(16) << 30)
#define ADOPT_BATCH 4096
#define PROBE_TIMEOUT_SEC 30

/* chunks value */
#define CHUNK_REC_SIZE 24
#define CHUNK_FLAG_STORED 0x01
/* lru key */
#define LRU_KEY_SIZE (8 + CHUNK_ID_SIZE)
/* versions value: format, pad[3], n, size, key_len, then key, then n × (id, le32 size) */
#define VERSION_HDR_SIZE 20
#define VERSION_ENTRY_SIZE (CHUNK_ID_SIZE + 4)
/* pins value: format, pad[3], path_len, n_keys, n_chunks, path, n_keys × (le32 len, key), ids */
#define PIN_HDR_SIZE 16
/* pinkeys value: format, pad[3], n, n × pin path hash */
#define PINKEY_HDR_SIZE 8
/* meta values: format, le64 */
#define META_VALUE_SIZE 9

typedef struct ChunkRec {
        bool stored;
        uint32_t size;
        uint32_t refcount;
        uint32_t pin_count;
        uint64_t last_access;
} ChunkRec;

/* The counters kept in meta, in step with the chunk records. */
enum {
        META_CHUNKS,
        META_BYTES,
        META_PINNED_CHUNKS,
        META_PINNED_BYTES,
        META_VERSION_BYTES,
        _META_MAX,
};
static const char *const meta_names[_META_MAX] = {
        [META_CHUNKS] = "chunks",
        [META_BYTES] = "bytes",
        [META_PINNED_CHUNKS] = "pinned_chunks",
        [META_PINNED_BYTES] = "pinned_bytes",
        [META_VERSION_BYTES] = "version_bytes",
};

struct ChunkIndex {
        char *path;
        uint64_t max_map_size;
        pthread_rwlock_t lock;          /* shared: any transaction; exclusive: resize, reopen */
        MDB_env *env;                   /* NULL after a failed reopen */
        uint64_t map_size;              /* under lock */
        MDB_dbi chunks, lru, versions, pins, meta;
        MDB_dbi pinkeys;                /* version key hash -> hashes of the pins that list it */
};

/* One write transaction and the meta deltas it has accumulated. */
typedef struct Wtx {
        ChunkIndex *x;
        MDB_txn *txn;
        bool map_full;
        int64_t delta[_META_MAX];
} Wtx;

/* ---- encodings ---- */

static void put_le32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void put_le64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
static uint32_t get_le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t get_le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

static void chunk_rec_encode(const ChunkRec *r, uint8_t buf[CHUNK_REC_SIZE]) {
        memset(buf, 0, CHUNK_REC_SIZE);
        buf[0] = INDEX_FORMAT;
        buf[1] = r->stored ? CHUNK_FLAG_STORED : 0;
        put_le32(buf + 4, r->size);
        put_le32(buf + 8, r->refcount);
        put_le32(buf + 12, r->pin_count);
        put_le64(buf + 16, r->last_access);
}

static int chunk_rec_decode(const MDB_val *v, ChunkRec *ret) {
        const uint8_t *p = v->mv_data;
        if (v->mv_size != CHUNK_REC_SIZE || p[0] != INDEX_FORMAT || (p[1] & ~CHUNK_FLAG_STORED) || p[2] || p[3])
                return -EBADMSG;
        *ret = (ChunkRec) {
                .stored = p[1] & CHUNK_FLAG_STORED,
                .size = get_le32(p + 4),
                .refcount = get_le32(p + 8),
                .pin_count = get_le32(p + 12),
                .last_access = get_le64(p + 16),
        };
        /* A record lives only while stored or referenced. */
        if (!ret->stored && ret->refcount == 0 && ret->pin_count == 0)
                return -EBADMSG;
        return 0;
}

static void lru_key(uint64_t last_access, const ChunkId *id, uint8_t buf[LRU_KEY_SIZE]) {
        uint64_t be = htobe64(last_access);
        memcpy(buf, &be, 8);
        memcpy(buf + 8, id->bytes, CHUNK_ID_SIZE);
}

static bool rec_in_lru(const ChunkRec *r) { return r->stored && r->pin_count == 0; }

static void string_key(const char *s, uint8_t buf[SHA256_DIGEST_LENGTH]) {
        SHA256((const unsigned char *) s, strlen(s), buf);
}

/* A decoded version record points into the LMDB page: valid while its transaction lives. */
typedef struct VersionView {
        uint64_t size;
        uint32_t n;
        const uint8_t *entries;
} VersionView;

static int version_decode(const MDB_val *k, const MDB_val *v, const char *expect_key, VersionView *ret) {
        const uint8_t *p = v->mv_data;
        uint32_t n, key_len;
        uint64_t size, sum = 0;

        if (v->mv_size < VERSION_HDR_SIZE || p[0] != INDEX_FORMAT || p[1] || p[2] || p[3])
                return -EBADMSG;
        n = get_le32(p + 4);
        size = get_le64(p + 8);
        key_len = get_le32(p + 16);
        if (key_len == 0 || (uint64_t) v->mv_size != VERSION_HDR_SIZE + (uint64_t) key_len + (uint64_t) n * VERSION_ENTRY_SIZE)
                return -EBADMSG;
        if (expect_key && (strlen(expect_key) != key_len || memcmp(expect_key, p + VERSION_HDR_SIZE, key_len) != 0))
                return -EBADMSG;
        /* The database key is the hash of the stored key; callers looking a key up compare the stored
         * one (expect_key). Not hashed again here: the probe runs this in a child forked from a
         * threaded process, where OpenSSL's locks are best left alone. */
        if (k && k->mv_size != SHA256_DIGEST_LENGTH)
                return -EBADMSG;
        const uint8_t *e = p + VERSION_HDR_SIZE + key_len;
        for (uint32_t i = 0; i < n; i++)
                sum += get_le32(e + (size_t) i * VERSION_ENTRY_SIZE + CHUNK_ID_SIZE);
        if (sum != size)
                return -EBADMSG;
        *ret = (VersionView) { .size = size, .n = n, .entries = e };
        return 0;
}

static void version_entry(const VersionView *v, uint32_t i, ChunkRef *ret) {
        const uint8_t *e = v->entries + (size_t) i * VERSION_ENTRY_SIZE;
        memcpy(ret->id.bytes, e, CHUNK_ID_SIZE);
        ret->size = get_le32(e + CHUNK_ID_SIZE);
}

typedef struct PinView {
        const char *path;               /* not NUL-terminated */
        uint32_t path_len, n_keys, n_chunks;
        const uint8_t *keys;            /* n_keys × (le32 len, bytes) */
        const uint8_t *ids;             /* n_chunks × ChunkId: what this pin added pin counts to */
} PinView;

static int pin_decode(const MDB_val *k, const MDB_val *v, const char *expect_path, PinView *ret) {
        const uint8_t *p = v->mv_data;
        size_t left, off;

        if (v->mv_size < PIN_HDR_SIZE || p[0] != INDEX_FORMAT || p[1] || p[2] || p[3])
                return -EBADMSG;
        PinView pv = {
                .path_len = get_le32(p + 4),
                .n_keys = get_le32(p + 8),
                .n_chunks = get_le32(p + 12),
        };
        left = v->mv_size - PIN_HDR_SIZE;
        off = PIN_HDR_SIZE;
        if (pv.path_len > left)
                return -EBADMSG;
        pv.path = (const char *) p + off;
        off += pv.path_len, left -= pv.path_len;
        pv.keys = p + off;
        for (uint32_t i = 0; i < pv.n_keys; i++) {
                if (left < 4)
                        return -EBADMSG;
                uint32_t l = get_le32(p + off);
                off += 4, left -= 4;
                if (l == 0 || l > left || memchr(p + off, 0, l))
                        return -EBADMSG;
                off += l, left -= l;
        }
        if ((uint64_t) left != (uint64_t) pv.n_chunks * CHUNK_ID_SIZE)
                return -EBADMSG;
        pv.ids = p + off;
        if (memchr(pv.path, 0, pv.path_len))
                return -EBADMSG;
        if (expect_path && (strlen(expect_path) != pv.path_len || memcmp(expect_path, pv.path, pv.path_len) != 0))
                return -EBADMSG;
        if (k && k->mv_size != SHA256_DIGEST_LENGTH)
                return -EBADMSG;
        *ret = pv;
        return 0;
}

/* The version keys of a pin, newly allocated as one block (array then strings). */
static int pin_keys_copy(const PinView *pv, char ***ret) {
        size_t total = (size_t) pv->n_keys * sizeof(char *) + sizeof(char *), off = 0;
        for (uint32_t i = 0; i < pv->n_keys; i++) {
                uint32_t l = get_le32(pv->keys + off);
                total += l + 1;
                off += 4 + l;
        }
        char **a = malloc(total);
        if (!a)
                return -ENOMEM;
        char *s = (char *) (a + pv->n_keys + 1);
        off = 0;
        for (uint32_t i = 0; i < pv->n_keys; i++) {
                uint32_t l = get_le32(pv->keys + off);
                memcpy(s, pv->keys + off + 4, l);
                s[l] = 0;
                a[i] = s;
                s += l + 1;
                off += 4 + l;
        }
        a[pv->n_keys] = NULL;
        *ret = a;
        return 0;
}

static int meta_decode(const MDB_val *v, uint64_t *ret) {
        const uint8_t *p = v->mv_data;
        if (v->mv_size != META_VALUE_SIZE || p[0] != INDEX_FORMAT)
                return -EBADMSG;
        *ret = get_le64(p + 1);
        return 0;
}

/* ---- errors ---- */

static int lmdb_errno(int rc) {
        switch (rc) {
        case 0:
                return 0;
        case MDB_NOTFOUND:
                return -ENOENT;
        case MDB_MAP_FULL:
                return -ENOSPC;
        case MDB_PANIC:
        case MDB_CORRUPTED:
        case MDB_PAGE_NOTFOUND:
        case MDB_BAD_TXN:
                return -ENOTRECOVERABLE;
        case MDB_INVALID:
        case MDB_VERSION_MISMATCH:
        case MDB_INCOMPATIBLE:
                return -EBADMSG;
        case MDB_READERS_FULL:
        case MDB_MAP_RESIZED:
                return -EAGAIN;
        case MDB_TXN_FULL:
                return -E2BIG;
        case MDB_BAD_VALSIZE:
                return -EINVAL;
        case MDB_KEYEXIST:
                return -EEXIST;
        default:
                return rc > 0 ? -rc : -EIO;
        }
}

/* For calls inside a write transaction: remembers MDB_MAP_FULL so index_write() grows and retries. */
static int wrc(Wtx *w, int rc) {
        if (rc == MDB_MAP_FULL)
                w->map_full = true;
        return lmdb_errno(rc);
}

/* ---- environment ---- */

static int env_open_locked(ChunkIndex *x) {
        MDB_env *env = NULL;
        MDB_txn *txn = NULL;
        MDB_envinfo info;
        int rc, r, dead = 0;

        rc = mdb_env_create(&env);
        if (rc != 0)
                return log_error_errno(lmdb_errno(rc), "Cannot create LMDB environment: %m");
        rc = mdb_env_set_maxdbs(env, 8);
        if (rc == 0)
                rc = mdb_env_set_mapsize(env, x->map_size);
        if (rc == 0)
                rc = mdb_env_open(env, x->path, MDB_NOSUBDIR | MDB_NOTLS | MDB_NOMEMINIT, 0644);
        if (rc != 0) {
                r = log_error_errno(lmdb_errno(rc), "Cannot open chunk index %s: %s", x->path, mdb_strerror(rc));
                goto fail;
        }

        rc = mdb_reader_check(env, &dead);
        if (rc != 0)
                log_warning("Cannot check chunk index %s for stale readers: %s", x->path, mdb_strerror(rc));
        else if (dead > 0)
                log_notice("Chunk index %s: cleared %d stale reader(s) left by dead processes", x->path, dead);

        /* The file may be bigger than asked for: LMDB takes the larger size. */
        rc = mdb_env_info(env, &info);
        if (rc == 0 && info.me_mapsize > x->map_size)
                x->map_size = info.me_mapsize;

        rc = mdb_txn_begin(env, NULL, 0, &txn);
        if (rc == 0)
                rc = mdb_dbi_open(txn, "chunks", MDB_CREATE, &x->chunks);
        if (rc == 0)
                rc = mdb_dbi_open(txn, "lru", MDB_CREATE, &x->lru);
        if (rc == 0)
                rc = mdb_dbi_open(txn, "versions", MDB_CREATE, &x->versions);
        if (rc == 0)
                rc = mdb_dbi_open(txn, "pins", MDB_CREATE, &x->pins);
        if (rc == 0)
                rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &x->meta);
        if (rc == 0)
                rc = mdb_dbi_open(txn, "pinkeys", MDB_CREATE, &x->pinkeys);
        if (rc != 0) {
                r = log_error_errno(lmdb_errno(rc), "Cannot open the databases of chunk index %s: %s", x->path, mdb_strerror(rc));
                goto fail;
        }

        MDB_val k = { .mv_size = strlen("format"), .mv_data = (void *) "format" }, v;
        rc = mdb_get(txn, x->meta, &k, &v);
        if (rc == 0) {
                uint64_t format;
                if (meta_decode(&v, &format) < 0 || format != INDEX_FORMAT) {
                        r = log_error_errno(EBADMSG, "Chunk index %s has an unknown format", x->path);
                        goto fail;
                }
                /* Commit, not abort: aborting would close the database handles just opened. */
                rc = mdb_txn_commit(txn);
                txn = NULL;
                if (rc != 0) {
                        r = log_error_errno(lmdb_errno(rc), "Cannot open chunk index %s: %s", x->path, mdb_strerror(rc));
                        goto fail;
                }
        } else if (rc == MDB_NOTFOUND) {
                MDB_stat st;
                uint8_t buf[META_VALUE_SIZE] = { INDEX_FORMAT };
                put_le64(buf + 1, INDEX_FORMAT);
                v = (MDB_val) { .mv_size = sizeof buf, .mv_data = buf };
                /* A new file has nothing else; anything else without a format is not ours. */
                if (mdb_stat(txn, x->chunks, &st) != 0 || st.ms_entries > 0 ||
                    mdb_stat(txn, x->versions, &st) != 0 || st.ms_entries > 0) {
                        r = log_error_errno(EBADMSG, "Chunk index %s has records but no format", x->path);
                        goto fail;
                }
                rc = mdb_put(txn, x->meta, &k, &v, 0);
                if (rc == 0)
                        rc = mdb_txn_commit(txn);
                else
                        mdb_txn_abort(txn);
                txn = NULL;
                if (rc != 0) {
                        r = log_error_errno(lmdb_errno(rc), "Cannot initialise chunk index %s: %s", x->path, mdb_strerror(rc));
                        goto fail;
                }
        } else {
                r = log_error_errno(lmdb_errno(rc), "Cannot read chunk index %s: %s", x->path, mdb_strerror(rc));
                goto fail;
        }

        x->env = env;
        return 0;

fail:
        if (txn)
                mdb_txn_abort(txn);
        mdb_env_close(env);
        return r;
}

int chunk_index_open(const char *path, const ChunkIndexOptions *opts, ChunkIndex **ret) {
        ChunkIndex *x;
        int r;

        if (!path || !ret)
                return -EINVAL;
        x = calloc(1, sizeof *x);
        if (!x)
                return -ENOMEM;
        x->path = strdup(path);
        if (!x->path) {
                free(x);
                return -ENOMEM;
        }
        x->map_size = opts && opts->initial_map_size ? opts->initial_map_size : DEFAULT_INITIAL_MAP_SIZE;
        x->max_map_size = opts && opts->max_map_size ? opts->max_map_size : DEFAULT_MAX_MAP_SIZE;
        if (x->max_map_size < x->map_size)
                x->max_map_size = x->map_size;
        pthread_rwlock_init(&x->lock, NULL);

        r = env_open_locked(x);
        if (r < 0) {
                chunk_index_close(x);
                return r;
        }
        *ret = x;
        return 0;
}

void chunk_index_close(ChunkIndex *x) {
        if (!x)
                return;
        if (x->env)
                mdb_env_close(x->env);
        pthread_rwlock_destroy(&x->lock);
        free(x->path);
        free(x);
}

int chunk_index_reopen(ChunkIndex *x) {
        int r;

        pthread_rwlock_wrlock(&x->lock);
        if (x->env) {
                mdb_env_close(x->env);
                x->env = NULL;
        }
        r = env_open_locked(x);
        pthread_rwlock_unlock(&x->lock);
        if (r >= 0)
                log_info("Chunk index %s reopened", x->path);
        return r;
}

/* Doubles the map, unless another thread already grew it past seen. */
static int index_grow(ChunkIndex *x, uint64_t seen) {
        int r = 0;

        pthread_rwlock_wrlock(&x->lock);
        if (!x->env)
                r = -ENOTRECOVERABLE;
        else if (x->map_size == seen) {
                if (x->map_size >= x->max_map_size)
                        r = -ENOSPC;
                else {
                        uint64_t n = x->map_size > x->max_map_size / 2 ? x->max_map_size : x->map_size * 2;
                        int rc = mdb_env_set_mapsize(x->env, n);
                        if (rc != 0)
                                r = lmdb_errno(rc);
                        else {
                                log_info("Chunk index %s: map grown from %" PRIu64 " to %" PRIu64 " bytes", x->path, x->map_size, n);
                                x->map_size = n;
                        }
                }
        }
        pthread_rwlock_unlock(&x->lock);
        if (r == -ENOSPC)
                log_warning("Chunk index %s is full at its maximum map size (%" PRIu64 " bytes)", x->path, x->max_map_size);
        return r;
}

static int meta_apply(Wtx *w) {
        for (int i = 0; i < _META_MAX; i++) {
                uint64_t cur = 0;
                uint8_t buf[META_VALUE_SIZE] = { INDEX_FORMAT };
                MDB_val k = { .mv_size = strlen(meta_names[i]), .mv_data = (void *) meta_names[i] }, v;
                int rc, r;

                if (w->delta[i] == 0)
                        continue;
                rc = mdb_get(w->txn, w->x->meta, &k, &v);
                if (rc == 0) {
                        r = meta_decode(&v, &cur);
                        if (r < 0)
                                return r;
                } else if (rc != MDB_NOTFOUND)
                        return wrc(w, rc);
                if (w->delta[i] < 0 && (uint64_t) -w->delta[i] > cur)
                        return -EBADMSG;        /* the counters disagree with the records */
                put_le64(buf + 1, cur + (uint64_t) w->delta[i]);
                v = (MDB_val) { .mv_size = sizeof buf, .mv_data = buf };
                rc = mdb_put(w->txn, w->x->meta, &k, &v, 0);
                if (rc != 0)
                        return wrc(w, rc);
        }
        return 0;
}

typedef int (*write_fn)(Wtx *w, void *userdata);

/* Runs fn in a write transaction, growing the map and running it again when it fills. */
static int index_write(ChunkIndex *x, write_fn fn, void *userdata) {
        for (;;) {
                Wtx w = { .x = x };
                uint64_t seen;
                int r, rc;

                pthread_rwlock_rdlock(&x->lock);
                seen = x->map_size;
                if (!x->env) {
                        pthread_rwlock_unlock(&x->lock);
                        return -ENOTRECOVERABLE;
                }
                rc = mdb_txn_begin(x->env, NULL, 0, &w.txn);
                if (rc != 0) {
                        pthread_rwlock_unlock(&x->lock);
                        return lmdb_errno(rc);
                }
                r = fn(&w, userdata);
                if (r >= 0)
                        r = meta_apply(&w);
                if (r >= 0) {
                        int f = FAILPOINT(CACHE_INDEX_COMMIT);
                        if (f < 0)
                                r = f;
                }
                if (r >= 0)
                        r = wrc(&w, mdb_txn_commit(w.txn));
                else
                        mdb_txn_abort(w.txn);
                pthread_rwlock_unlock(&x->lock);

                if (w.map_full && r < 0) {
                        int g = index_grow(x, seen);
                        if (g < 0)
                                return g;
                        continue;
                }
                return r;
        }
}

typedef int (*read_fn)(ChunkIndex *x, MDB_txn *txn, void *userdata);

static int index_read(ChunkIndex *x, read_fn fn, void *userdata) {
        MDB_txn *txn;
        int r, rc;

        pthread_rwlock_rdlock(&x->lock);
        if (!x->env) {
                pthread_rwlock_unlock(&x->lock);
                return -ENOTRECOVERABLE;
        }
        rc = mdb_txn_begin(x->env, NULL, MDB_RDONLY, &txn);
        if (rc != 0) {
                pthread_rwlock_unlock(&x->lock);
                return lmdb_errno(rc);
        }
        r = fn(x, txn, userdata);
        mdb_txn_abort(txn);
        pthread_rwlock_unlock(&x->lock);
        return r;
}

/* ---- chunk records ---- */

static int chunk_load(MDB_txn *txn, MDB_dbi dbi, const ChunkId *id, ChunkRec *ret) {
        MDB_val k = { .mv_size = CHUNK_ID_SIZE, .mv_data = (void *) id->bytes }, v;
        int rc = mdb_get(txn, dbi, &k, &v);
        if (rc != 0)
                return lmdb_errno(rc);
        return chunk_rec_decode(&v, ret);
}

static void meta_account(Wtx *w, const ChunkRec *r, int sign) {
        if (!r || !r->stored)
                return;
        w->delta[META_CHUNKS] += sign;
        w->delta[META_BYTES] += sign * (int64_t) r->size;
        if (r->pin_count > 0) {
                w->delta[META_PINNED_CHUNKS] += sign;
                w->delta[META_PINNED_BYTES] += sign * (int64_t) r->size;
        }
}

/* Writes a chunk record that was old (NULL: none) and is now nw, keeping lru and the counters in step.
 * A record neither stored nor referenced is deleted. */
static int chunk_store_rec(Wtx *w, const ChunkId *id, const ChunkRec *old, const ChunkRec *nw) {
        uint8_t lk[LRU_KEY_SIZE], buf[CHUNK_REC_SIZE];
        MDB_val k = { .mv_size = CHUNK_ID_SIZE, .mv_data = (void *) id->bytes }, v;
        bool keep = nw->stored || nw->refcount > 0 || nw->pin_count > 0;
        bool old_lru = old && rec_in_lru(old), new_lru = keep && rec_in_lru(nw);
        int rc;

        if (old_lru && !(new_lru && old->last_access == nw->last_access)) {
                lru_key(old->last_access, id, lk);
                MDB_val lkv = { .mv_size = sizeof lk, .mv_data = lk };
                rc = mdb_del(w->txn, w->x->lru, &lkv, NULL);
                if (rc == MDB_NOTFOUND)
                        return -EBADMSG;        /* lru lost an entry: the index is inconsistent */
                if (rc != 0)
                        return wrc(w, rc);
        }
        if (new_lru && !(old_lru && old->last_access == nw->last_access)) {
                lru_key(nw->last_access, id, lk);
                MDB_val lkv = { .mv_size = sizeof lk, .mv_data = lk }, empty = { 0, NULL };
                rc = mdb_put(w->txn, w->x->lru, &lkv, &empty, 0);
                if (rc != 0)
                        return wrc(w, rc);
        }

        meta_account(w, old, -1);
        if (keep) {
                meta_account(w, nw, +1);
                chunk_rec_encode(nw, buf);
                v = (MDB_val) { .mv_size = sizeof buf, .mv_data = buf };
                rc = mdb_put(w->txn, w->x->chunks, &k, &v, 0);
        } else if (old)
                rc = mdb_del(w->txn, w->x->chunks, &k, NULL);
        else
                rc = 0;
        return wrc(w, rc);
}

/* Loads a chunk record; *found false and a blank record when there is none. */
static int chunk_load_w(Wtx *w, const ChunkId *id, ChunkRec *ret, bool *found) {
        int r = chunk_load(w->txn, w->x->chunks, id, ret);
        if (r == -ENOENT) {
                *ret = (ChunkRec) {};
                *found = false;
                return 0;
        }
        *found = r >= 0;
        return r < 0 ? r : 0;
}

/* refcount or pin count of a chunk += delta (a reference from a version or a pin). */
static int chunk_adjust(Wtx *w, const ChunkId *id, uint32_t size, int dref, int dpin) {
        ChunkRec old, nw;
        bool found;
        int r;

        r = chunk_load_w(w, id, &old, &found);
        if (r < 0)
                return r;
        nw = old;
        if (!found)
                nw.size = size;
        if ((dref < 0 && nw.refcount < (uint32_t) -dref) || (dpin < 0 && nw.pin_count < (uint32_t) -dpin))
                return -EBADMSG;        /* a reference the record does not count */
        nw.refcount += dref;
        nw.pin_count += dpin;
        return chunk_store_rec(w, id, found ? &old : NULL, &nw);
}

/* ---- versions ---- */

static int version_pin_late(Wtx *w, const uint8_t *vh, const ChunkRef *chunks, size_t n);

typedef struct VersionPut {
        const char *key;
        uint64_t size;
        const ChunkRef *chunks;
        size_t n;
        bool drop;
} VersionPut;

static int version_put_fn(Wtx *w, void *userdata) {
        const VersionPut *p = userdata;
        uint8_t h[SHA256_DIGEST_LENGTH];
        MDB_val k = { .mv_size = sizeof h, .mv_data = h }, v;
        _cleanup_free_ uint8_t *copy = NULL;
        VersionView old;
        bool have_old = false;
        int rc, r;

        string_key(p->key, h);
        rc = mdb_get(w->txn, w->x->versions, &k, &v);
        if (rc == 0) {
                r = version_decode(&k, &v, p->key, &old);
                if (r < 0)
                        return r;
                /* Copy the old list: a value read in a write transaction is valid only until the next
                 * update. */
                copy = malloc((size_t) old.n * VERSION_ENTRY_SIZE + 1);
                if (!copy)
                        return -ENOMEM;
                memcpy(copy, old.entries, (size_t) old.n * VERSION_ENTRY_SIZE);
                old.entries = copy;
                have_old = true;
        } else if (rc != MDB_NOTFOUND)
                return wrc(w, rc);
        if (!have_old && p->drop)
                return -ENOENT;

        /* New references first, so a chunk in both lists is never dropped in between. */
        if (!p->drop)
                for (size_t i = 0; i < p->n; i++) {
                        r = chunk_adjust(w, &p->chunks[i].id, p->chunks[i].size, +1, 0);
                        if (r < 0)
                                return r;
                }
        if (have_old) {
                w->delta[META_VERSION_BYTES] -= (int64_t) old.size;
                for (uint32_t i = 0; i < old.n; i++) {
                        ChunkRef ref;
                        version_entry(&old, i, &ref);
                        r = chunk_adjust(w, &ref.id, ref.size, -1, 0);
                        if (r < 0)
                                return r;
                }
        }

        if (p->drop) {
                rc = mdb_del(w->txn, w->x->versions, &k, NULL);
                return wrc(w, rc);
        }

        size_t key_len = strlen(p->key);
        size_t len = VERSION_HDR_SIZE + key_len + p->n * VERSION_ENTRY_SIZE;
        _cleanup_free_ uint8_t *buf = calloc(1, len);
        if (!buf)
                return -ENOMEM;
        buf[0] = INDEX_FORMAT;
        put_le32(buf + 4, (uint32_t) p->n);
        put_le64(buf + 8, p->size);
        put_le32(buf + 16, (uint32_t) key_len);
        memcpy(buf + VERSION_HDR_SIZE, p->key, key_len);
        uint8_t *e = buf + VERSION_HDR_SIZE + key_len;
        for (size_t i = 0; i < p->n; i++) {
                memcpy(e, p->chunks[i].id.bytes, CHUNK_ID_SIZE);
                put_le32(e + CHUNK_ID_SIZE, p->chunks[i].size);
                e += VERSION_ENTRY_SIZE;
        }
        v = (MDB_val) { .mv_size = len, .mv_data = buf };
        rc = mdb_put(w->txn, w->x->versions, &k, &v, 0);
        if (rc != 0)
                return wrc(w, rc);
        w->delta[META_VERSION_BYTES] += (int64_t) p->size;
        /* A replaced version's chunks keep the pin counts they have; a new one gets its pins'. */
        return have_old ? 0 : version_pin_late(w, h, p->chunks, p->n);
}

int chunk_index_version_put(ChunkIndex *x, const char *key, uint64_t size, const ChunkRef *chunks, size_t n) {
        uint64_t sum = 0;

        if (!x || !key || !*key || (n > 0 && !chunks) || n > UINT32_MAX || strlen(key) > UINT32_MAX)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                sum += chunks[i].size;
        if (sum != size)
                return -EINVAL;
        return index_write(x, version_put_fn, &(VersionPut) { .key = key, .size = size, .chunks = chunks, .n = n });
}

int chunk_index_version_drop(ChunkIndex *x, const char *key) {
        if (!x || !key || !*key)
                return -EINVAL;
        return index_write(x, version_put_fn, &(VersionPut) { .key = key, .drop = true });
}

typedef struct VersionGet {
        const char *key;
        uint64_t size;
        ChunkRef *chunks;
        size_t n;
} VersionGet;

static int version_get_fn(ChunkIndex *x, MDB_txn *txn, void *userdata) {
        VersionGet *g = userdata;
        uint8_t h[SHA256_DIGEST_LENGTH];
        MDB_val k = { .mv_size = sizeof h, .mv_data = h }, v;
        VersionView vv;
        int rc, r;

        string_key(g->key, h);
        rc = mdb_get(txn, x->versions, &k, &v);
        if (rc != 0)
                return lmdb_errno(rc);
        r = version_decode(&k, &v, g->key, &vv);
        if (r < 0)
                return r;
        g->chunks = malloc(((size_t) vv.n + 1) * sizeof(ChunkRef));
        if (!g->chunks)
                return -ENOMEM;
        for (uint32_t i = 0; i < vv.n; i++)
                version_entry(&vv, i, &g->chunks[i]);
        g->size = vv.size;
        g->n = vv.n;
        return 0;
}

int chunk_index_version_get(ChunkIndex *x, const char *key, uint64_t *ret_size, ChunkRef **ret_chunks, size_t *ret_n) {
        VersionGet g = { .key = key };
        int r;

        if (!x || !key || !*key)
                return -EINVAL;
        r = index_read(x, version_get_fn, &g);
        if (r < 0) {
                free(g.chunks);
                return r;
        }
        if (ret_size)
                *ret_size = g.size;
        if (ret_n)
                *ret_n = g.n;
        if (ret_chunks)
                *ret_chunks = g.chunks;
        else
                free(g.chunks);
        return 0;
}

/* ---- stored chunks ---- */

typedef struct ChunksAdd {
        const ChunkRef *chunks;
        const uint64_t *last_access;    /* per chunk, or NULL: now */
        uint64_t now;
        size_t n;
} ChunksAdd;

static int chunks_add_fn(Wtx *w, void *userdata) {
        const ChunksAdd *a = userdata;

        for (size_t i = 0; i < a->n; i++) {
                const ChunkId *id = &a->chunks[i].id;
                ChunkRec old, nw;
                bool found;
                int r;

                r = chunk_load_w(w, id, &old, &found);
                if (r < 0)
                        return r;
                nw = old;
                if (!nw.stored)
                        nw.size = a->chunks[i].size;    /* the stored file's size is the truth */
                nw.stored = true;
                nw.last_access = a->last_access ? a->last_access[i] : a->now;
                r = chunk_store_rec(w, id, found ? &old : NULL, &nw);
                if (r < 0)
                        return r;
        }
        return 0;
}

int chunk_index_chunks_add(ChunkIndex *x, const ChunkRef *stored, size_t n, uint64_t now_usec) {
        if (!x || (n > 0 && !stored))
                return -EINVAL;
        if (n == 0)
                return 0;
        return index_write(x, chunks_add_fn, &(ChunksAdd) { .chunks = stored, .now = now_usec, .n = n });
}

int chunk_index_adopt(ChunkIndex *x, const ChunkRef *chunks, const uint64_t *last_access_usec, size_t n) {
        if (!x || (n > 0 && (!chunks || !last_access_usec)))
                return -EINVAL;
        /* In batches, so a large cache does not make one huge transaction. */
        for (size_t i = 0; i < n; i += ADOPT_BATCH) {
                size_t m = n - i < ADOPT_BATCH ? n - i : ADOPT_BATCH;
                int r = index_write(x, chunks_add_fn, &(ChunksAdd) {
                        .chunks = chunks + i, .last_access = last_access_usec + i, .n = m });
                if (r < 0)
                        return r;
        }
        return 0;
}

static int chunk_remove_fn(Wtx *w, void *userdata) {
        const ChunkId *id = userdata;
        ChunkRec old, nw;
        bool found;
        int r;

        r = chunk_load_w(w, id, &old, &found);
        if (r < 0)
                return r;
        if (!found || !old.stored)
                return -ENOENT;
        nw = old;
        nw.stored = false;
        nw.last_access = 0;
        return chunk_store_rec(w, id, &old, &nw);
}

int chunk_index_chunk_remove(ChunkIndex *x, const ChunkId *id) {
        if (!x || !id)
                return -EINVAL;
        return index_write(x, chunk_remove_fn, (void *) id);
}

typedef struct ChunkGet {
        const ChunkId *id;
        ChunkInfo *ret;
} ChunkGet;

static int chunk_get_fn(ChunkIndex *x, MDB_txn *txn, void *userdata) {
        ChunkGet *g = userdata;
        ChunkRec rec;
        int r = chunk_load(txn, x->chunks, g->id, &rec);
        if (r < 0)
                return r;
        if (!rec.stored)
                return -ENOENT;
        *g->ret = (ChunkInfo) { .size = rec.size, .refcount = rec.refcount, .pin_count = rec.pin_count,
                                .last_access_usec = rec.last_access };
        return 0;
}

int chunk_index_chunk_get(ChunkIndex *x, const ChunkId *id, ChunkInfo *ret) {
        ChunkInfo info;
        int r;

        if (!x || !id)
                return -EINVAL;
        r = index_read(x, chunk_get_fn, &(ChunkGet) { .id = id, .ret = &info });
        if (r >= 0 && ret)
                *ret = info;
        return r;
}

typedef struct Touch {
        const ChunkId *ids;
        const uint64_t *times;
        size_t n;
} Touch;

static int touch_fn(Wtx *w, void *userdata) {
        const Touch *t = userdata;

        for (size_t i = 0; i < t->n; i++) {
                ChunkRec old, nw;
                bool found;
                int r;

                r = chunk_load_w(w, &t->ids[i], &old, &found);
                if (r < 0)
                        return r;
                /* Never backwards: a batch may carry an access older than a later store or touch. */
                if (!found || !old.stored || old.last_access >= t->times[i])
                        continue;
                nw = old;
                nw.last_access = t->times[i];
                r = chunk_store_rec(w, &t->ids[i], &old, &nw);
                if (r < 0)
                        return r;
        }
        return 0;
}

int chunk_index_touch(ChunkIndex *x, const ChunkId *ids, const uint64_t *times_usec, size_t n) {
        if (!x || (n > 0 && (!ids || !times_usec)))
                return -EINVAL;
        if (n == 0)
                return 0;
        return index_write(x, touch_fn, &(Touch) { .ids = ids, .times = times_usec, .n = n });
}

typedef struct Oldest {
        ChunkRef *ret;
        size_t max, n;
} Oldest;

static int oldest_fn(ChunkIndex *x, MDB_txn *txn, void *userdata) {
        Oldest *o = userdata;
        MDB_cursor *c;
        MDB_val k, v;
        int rc, r = 0;

        rc = mdb_cursor_open(txn, x->lru, &c);
        if (rc != 0)
                return lmdb_errno(rc);
        for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && o->n < o->max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
                ChunkRec rec;
                ChunkId id;

                if (k.mv_size != LRU_KEY_SIZE || v.mv_size != 0) {
                        r = -EBADMSG;
                        break;
                }
                memcpy(id.bytes, (uint8_t *) k.mv_data + 8, CHUNK_ID_SIZE);
                r = chunk_load(txn, x->chunks, &id, &rec);
                if (r == -ENOENT || (r >= 0 && !rec_in_lru(&rec)))
                        r = -EBADMSG;
                if (r < 0)
                        break;
                o->ret[o->n++] = (ChunkRef) { .id = id, .size = rec.size };
        }
        mdb_cursor_close(c);
        if (r < 0)
                return r;
        return rc == 0 || rc == MDB_NOTFOUND ? 0 : lmdb_errno(rc);
}

int chunk_index_oldest_unpinned(ChunkIndex *x, ChunkRef *ret, size_t max, size_t *ret_n) {
        Oldest o = { .ret = ret, .max = max };
        int r;

        if (!x || (max > 0 && !ret))
                return -EINVAL;
        r = index_read(x, oldest_fn, &o);
        if (r < 0)
                return r;
        if (ret_n)
                *ret_n = o.n;
        return 0;
}

typedef struct Foreach {
        chunk_index_chunk_fn fn;
        void *userdata;
} Foreach;

static int chunks_foreach_fn(ChunkIndex *x, MDB_txn *txn, void *userdata) {
        Foreach *f = userdata;
        MDB_cursor *c;
        MDB_val k, v;
        int rc, r = 0;

        rc = mdb_cursor_open(txn, x->chunks, &c);
        if (rc != 0)
                return lmdb_errno(rc);
        for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
                ChunkRec rec;
                ChunkId id;

                if (k.mv_size != CHUNK_ID_SIZE) {
                        r = -EBADMSG;
                        break;
                }
                r = chunk_rec_decode(&v, &rec);
                if (r < 0)
                        break;
                if (!rec.stored)
                        continue;
                memcpy(id.bytes, k.mv_data, CHUNK_ID_SIZE);
                ChunkInfo info = { .size = rec.size, .refcount = rec.refcount, .pin_count = rec.pin_count,
                                   .last_access_usec = rec.last_access };
                r = f->fn(&id, &info, f->userdata);
                if (r < 0)
                        break;
        }
        mdb_cursor_close(c);
        if (r < 0)
                return r;
        return rc == MDB_NOTFOUND ? 0 : lmdb_errno(rc);
}

int chunk_index_chunks_foreach(ChunkIndex *x, chunk_index_chunk_fn fn, void *userdata) {
        if (!x || !fn)
                return -EINVAL;
        return index_read(x, chunks_foreach_fn, &(Foreach) { .fn = fn, .userdata = userdata });
}

typedef struct Clear {
        chunk_index_chunk_fn fn;
        void *userdata;
        int first_error;
} Clear;

/* Walks lru (exactly the stored unpinned chunks) and forgets each chunk whose file fn removed. fn
 * runs inside the write transaction: it must not write the index (that would wait for itself), and
 * after a map growth the walk runs again, so fn may see a chunk whose file it already removed. */
static int clear_fn(Wtx *w, void *userdata) {
        Clear *cl = userdata;
        MDB_cursor *c;
        MDB_val k, v;
        uint8_t from[LRU_KEY_SIZE] = {};
        bool have_from = false;
        int rc, r = 0;

        cl->first_error = 0;
        /* Deleting under an open cursor is fine in LMDB, but the record updates touch other dbs: reopen
         * the cursor past the last key each round, which keeps it simple and correct. */
        for (;;) {
                ChunkRec rec, nw;
                ChunkId id;

                rc = mdb_cursor_open(w->txn, w->x->lru, &c);
                if (rc != 0)
                        return wrc(w, rc);
                if (have_from) {
                        k = (MDB_val) { .mv_size = sizeof from, .mv_data = from };
                        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
                        if (rc == 0 && k.mv_size == sizeof from && memcmp(k.mv_data, from, sizeof from) == 0)
                                rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
                } else
                        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
                if (rc == 0 && k.mv_size != LRU_KEY_SIZE)
                        r = -EBADMSG;
                if (rc == 0 && r == 0) {
                        memcpy(from, k.mv_data, sizeof from);
                        have_from = true;
                }
                mdb_cursor_close(c);
                if (rc == MDB_NOTFOUND)
                        return 0;
                if (rc != 0)
                        return wrc(w, rc);
                if (r < 0)
                        return r;

                memcpy(id.bytes, from + 8, CHUNK_ID_SIZE);
                r = chunk_load(w->txn, w->x->chunks, &id, &rec);
                if (r == -ENOENT || (r >= 0 && !rec_in_lru(&rec)))
                        return -EBADMSG;
                if (r < 0)
                        return r;
                ChunkInfo info = { .size = rec.size, .refcount = rec.refcount, .pin_count = rec.pin_count,
                                   .last_access_usec = rec.last_access };
                if (cl->fn) {
                        r = cl->fn(&id, &info, cl->userdata);
                        if (r < 0) {
                                /* Its file stays, so its record stays. */
                                if (cl->first_error == 0)
                                        cl->first_error = r;
                                r = 0;
                                continue;
                        }
                }
                nw = rec;
                nw.stored = false;
                nw.last_access = 0;
                r = chunk_store_rec(w, &id, &rec, &nw);
                if (r < 0)
                        return r;
        }
}

int chunk_index_clear_unpinned(ChunkIndex *x, chunk_index_chunk_fn fn, void *userdata) {
        Clear cl = { .fn = fn, .userdata = userdata };
        int r;

        if (!x)
                return -EINVAL;
        r = index_write(x, clear_fn, &cl);
        if (r < 0)
                return r;
        return cl.first_error;
}

/* ---- pins ---- */

typedef struct PinPut {
        const char *path;
        const char *const *keys;
        size_t n;
        bool drop;
} PinPut;

static int pinkey_decode(const MDB_val *v, uint32_t *ret_n, const uint8_t **ret_hashes) {
        const uint8_t *p = v->mv_data;
        if (v->mv_size < PINKEY_HDR_SIZE || p[0] != INDEX_FORMAT || p[1] || p[2] || p[3])
                return -EBADMSG;
        uint32_t n = get_le32(p + 4);
        if (n == 0 || (uint64_t) v->mv_size != PINKEY_HDR_SIZE + (uint64_t) n * SHA256_DIGEST_LENGTH)
                return -EBADMSG;
        *ret_n = n;
        *ret_hashes = p + PINKEY_HDR_SIZE;
        return 0;
}

/* Adds or removes (one occurrence of) pin hash ph in the list of pins naming version key hash vh. */
static int pinkey_update(Wtx *w, const uint8_t *vh, const uint8_t *ph, bool add) {
        MDB_val k = { .mv_size = SHA256_DIGEST_LENGTH, .mv_data = (void *) vh }, v;
        const uint8_t *hashes = NULL;
        uint32_t n = 0;
        int rc, r;

        rc = mdb_get(w->txn, w->x->pinkeys, &k, &v);
        if (rc == 0) {
                r = pinkey_decode(&v, &n, &hashes);
                if (r < 0)
                        return r;
        } else if (rc != MDB_NOTFOUND)
                return wrc(w, rc);

        _cleanup_free_ uint8_t *buf = malloc(PINKEY_HDR_SIZE + ((size_t) n + 1) * SHA256_DIGEST_LENGTH);
        if (!buf)
                return -ENOMEM;
        uint32_t m = 0;
        bool removed = false;
        for (uint32_t i = 0; i < n; i++) {
                const uint8_t *e = hashes + (size_t) i * SHA256_DIGEST_LENGTH;
                if (!add && !removed && memcmp(e, ph, SHA256_DIGEST_LENGTH) == 0) {
                        removed = true;
                        continue;
                }
                memcpy(buf + PINKEY_HDR_SIZE + (size_t) m++ * SHA256_DIGEST_LENGTH, e, SHA256_DIGEST_LENGTH);
        }
        if (add)
                memcpy(buf + PINKEY_HDR_SIZE + (size_t) m++ * SHA256_DIGEST_LENGTH, ph, SHA256_DIGEST_LENGTH);
        else if (!removed)
                return -EBADMSG;        /* the pin listed a key its reverse entry does not know */
        if (m == 0)
                return wrc(w, mdb_del(w->txn, w->x->pinkeys, &k, NULL));
        memset(buf, 0, PINKEY_HDR_SIZE);
        buf[0] = INDEX_FORMAT;
        put_le32(buf + 4, m);
        v = (MDB_val) { .mv_size = PINKEY_HDR_SIZE + (size_t) m * SHA256_DIGEST_LENGTH, .mv_data = buf };
        return wrc(w, mdb_put(w->txn, w->x->pinkeys, &k, &v, 0));
}

/* A version recorded after a pin that lists it (pin, then fill): each such pin adds a pin count to
 * its chunks and remembers them, as if the version had been there when it was pinned. */
static int version_pin_late(Wtx *w, const uint8_t *vh, const ChunkRef *chunks, size_t n) {
        MDB_val k = { .mv_size = SHA256_DIGEST_LENGTH, .mv_data = (void *) vh }, v;
        const uint8_t *hashes;
        uint32_t n_pins;
        int rc, r;

        if (n == 0)
                return 0;
        rc = mdb_get(w->txn, w->x->pinkeys, &k, &v);
        if (rc == MDB_NOTFOUND)
                return 0;
        if (rc != 0)
                return wrc(w, rc);
        r = pinkey_decode(&v, &n_pins, &hashes);
        if (r < 0)
                return r;
        _cleanup_free_ uint8_t *pins = malloc((size_t) n_pins * SHA256_DIGEST_LENGTH);
        if (!pins)
                return -ENOMEM;
        memcpy(pins, hashes, (size_t) n_pins * SHA256_DIGEST_LENGTH);

        for (uint32_t i = 0; i < n_pins; i++) {
                MDB_val pk = { .mv_size = SHA256_DIGEST_LENGTH, .mv_data = pins + (size_t) i * SHA256_DIGEST_LENGTH }, pv;
                PinView view;

                rc = mdb_get(w->txn, w->x->pins, &pk, &pv);
                if (rc == MDB_NOTFOUND)
                        return -EBADMSG;
                if (rc != 0)
                        return wrc(w, rc);
                r = pin_decode(&pk, &pv, NULL, &view);
                if (r < 0)
                        return r;
                if ((uint64_t) view.n_chunks + n > UINT32_MAX)
                        return -E2BIG;
                size_t len = pv.mv_size + n * CHUNK_ID_SIZE;
                _cleanup_free_ uint8_t *buf = malloc(len);
                if (!buf)
                        return -ENOMEM;
                memcpy(buf, pv.mv_data, pv.mv_size);
                put_le32(buf + 12, view.n_chunks + (uint32_t) n);
                for (size_t j = 0; j < n; j++)
                        memcpy(buf + pv.mv_size + j * CHUNK_ID_SIZE, chunks[j].id.bytes, CHUNK_ID_SIZE);
                pv = (MDB_val) { .mv_size = len, .mv_data = buf };
                rc = mdb_put(w->txn, w->x->pins, &pk, &pv, 0);
                if (rc != 0)
                        return wrc(w, rc);
                for (size_t j = 0; j < n; j++) {
                        r = chunk_adjust(w, &chunks[j].id, chunks[j].size, 0, +1);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int pin_put_fn(Wtx *w, void *userdata) {
        const PinPut *p = userdata;
        uint8_t h[SHA256_DIGEST_LENGTH];
        MDB_val k = { .mv_size = sizeof h, .mv_data = h }, v;
        _cleanup_free_ uint8_t *old_ids = NULL;
        _cleanup_free_ char **old_keys = NULL;
        uint32_t n_old = 0, n_old_keys = 0;
        int rc, r;

        string_key(p->path, h);
        rc = mdb_get(w->txn, w->x->pins, &k, &v);
        if (rc == 0) {
                PinView pv;
                r = pin_decode(&k, &v, p->path, &pv);
                if (r < 0)
                        return r;
                r = pin_keys_copy(&pv, &old_keys);
                if (r < 0)
                        return r;
                n_old_keys = pv.n_keys;
                n_old = pv.n_chunks;
                old_ids = malloc((size_t) n_old * CHUNK_ID_SIZE + 1);
                if (!old_ids)
                        return -ENOMEM;
                memcpy(old_ids, pv.ids, (size_t) n_old * CHUNK_ID_SIZE);
        } else if (rc != MDB_NOTFOUND)
                return wrc(w, rc);
        else if (p->drop)
                return -ENOENT;

        /* The chunks of the listed versions, as they are now: what this pin adds pin counts to. */
        size_t n_new = 0, n_alloc = 0, path_len = strlen(p->path), keys_len = 0;
        _cleanup_free_ uint8_t *new_ids = NULL;
        if (!p->drop)
                for (size_t i = 0; i < p->n; i++) {
                        uint8_t vh[SHA256_DIGEST_LENGTH];
                        MDB_val vk = { .mv_size = sizeof vh, .mv_data = vh }, vv;
                        VersionView view;

                        keys_len += 4 + strlen(p->keys[i]);
                        string_key(p->keys[i], vh);
                        rc = mdb_get(w->txn, w->x->versions, &vk, &vv);
                        if (rc == MDB_NOTFOUND)
                                continue;       /* not known yet: nothing of it to pin */
                        if (rc != 0)
                                return wrc(w, rc);
                        r = version_decode(&vk, &vv, p->keys[i], &view);
                        if (r < 0)
                                return r;
                        if (n_new + view.n > n_alloc) {
                                size_t na = (n_new + view.n) * 2;
                                uint8_t *t = realloc(new_ids, na * CHUNK_ID_SIZE);
                                if (!t)
                                        return -ENOMEM;
                                new_ids = t;
                                n_alloc = na;
                        }
                        for (uint32_t j = 0; j < view.n; j++)
                                memcpy(new_ids + (n_new + j) * CHUNK_ID_SIZE,
                                       view.entries + (size_t) j * VERSION_ENTRY_SIZE, CHUNK_ID_SIZE);
                        n_new += view.n;
                }

        for (size_t i = 0; i < n_new; i++) {
                ChunkId id;
                memcpy(id.bytes, new_ids + i * CHUNK_ID_SIZE, CHUNK_ID_SIZE);
                r = chunk_adjust(w, &id, 0, 0, +1);
                if (r < 0)
                        return r;
        }
        for (uint32_t i = 0; i < n_old; i++) {
                ChunkId id;
                memcpy(id.bytes, old_ids + (size_t) i * CHUNK_ID_SIZE, CHUNK_ID_SIZE);
                r = chunk_adjust(w, &id, 0, 0, -1);
                if (r < 0)
                        return r;
        }

        /* The reverse entries, so a listed version recorded later is pinned too. */
        for (uint32_t i = 0; i < n_old_keys; i++) {
                uint8_t vh[SHA256_DIGEST_LENGTH];
                string_key(old_keys[i], vh);
                r = pinkey_update(w, vh, h, false);
                if (r < 0)
                        return r;
        }
        if (!p->drop)
                for (size_t i = 0; i < p->n; i++) {
                        uint8_t vh[SHA256_DIGEST_LENGTH];
                        string_key(p->keys[i], vh);
                        r = pinkey_update(w, vh, h, true);
                        if (r < 0)
                                return r;
                }

        if (p->drop)
                return wrc(w, mdb_del(w->txn, w->x->pins, &k, NULL));

        if (n_new > UINT32_MAX || path_len > UINT32_MAX)
                return -E2BIG;
        size_t len = PIN_HDR_SIZE + path_len + keys_len + n_new * CHUNK_ID_SIZE;
        _cleanup_free_ uint8_t *buf = calloc(1, len);
        if (!buf)
                return -ENOMEM;
        buf[0] = INDEX_FORMAT;
        put_le32(buf + 4, (uint32_t) path_len);
        put_le32(buf + 8, (uint32_t) p->n);
        put_le32(buf + 12, (uint32_t) n_new);
        uint8_t *q = buf + PIN_HDR_SIZE;
        memcpy(q, p->path, path_len);
        q += path_len;
        for (size_t i = 0; i < p->n; i++) {
                size_t l = strlen(p->keys[i]);
                put_le32(q, (uint32_t) l);
                memcpy(q + 4, p->keys[i], l);
                q += 4 + l;
        }
        if (n_new > 0)
                memcpy(q, new_ids, n_new * CHUNK_ID_SIZE);
        v = (MDB_val) { .mv_size = len, .mv_data = buf };
        return wrc(w, mdb_put(w->txn, w->x->pins, &k, &v, 0));
}

int chunk_index_pin_put(ChunkIndex *x, const char *path, const char *const *version_keys, size_t n) {
        if (!x || !path || (n > 0 && !version_keys) || n > UINT32_MAX)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!version_keys[i] || !*version_keys[i])
                        return -EINVAL;
        return index_write(x, pin_put_fn, &(PinPut) { .path = path, .keys = version_keys, .n = n });
}

int chunk_index_pin_drop(ChunkIndex *x, const char *path) {
        if (!x || !path)
                return -EINVAL;
        return index_write(x, pin_put_fn, &(PinPut) { .path = path, .drop = true });
}

typedef struct PinsForeach {
        chunk_index_pin_fn fn;
        void *userdata;
} PinsForeach;

static int pins_foreach_fn(ChunkIndex *x, MDB_txn *txn, void *userdata) {
        PinsForeach *f = userdata;
        MDB_cursor *c;
        MDB_val k, v;
        int rc, r = 0;

        rc = mdb_cursor_open(txn, x->pins, &c);
        if (rc != 0)
                return lmdb_errno(rc);
        for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
                PinView pv;
                char **keys = NULL;
                char *path;

                r = pin_decode(&k, &v, NULL, &pv);
                if (r < 0)
                        break;
                path = strndup(pv.path, pv.path_len);
                r = path ? pin_keys_copy(&pv, &keys) : -ENOMEM;
                if (r >= 0)
                        r = f->fn(path, (const char *const *) keys, pv.n_keys, f->userdata);
                free(keys);
                free(path);
                if (r < 0)
                        break;
        }
        mdb_cursor_close(c);
        if (r < 0)
                return r;
        return rc == MDB_NOTFOUND ? 0 : lmdb_errno(rc);
}

int chunk_index_pins_foreach(ChunkIndex *x, chunk_index_pin_fn fn, void *userdata) {
        if (!x || !fn)
                return -EINVAL;
        return index_read(x, pins_foreach_fn, &(PinsForeach) { .fn = fn, .userdata = userdata });
}

/* ---- totals ---- */

static int meta_read(MDB_txn *txn, MDB_dbi meta, uint64_t ret[_META_MAX]) {
        for (int i = 0; i < _META_MAX; i++) {
                MDB_val k = { .mv_size = strlen(meta_names[i]), .mv_data = (void *) meta_names[i] }, v;
                int rc = mdb_get(txn, meta, &k, &v);
                ret[i] = 0;
                if (rc == MDB_NOTFOUND)
                        continue;
                if (rc != 0)
                        return lmdb_errno(rc);
                int r = meta_decode(&v, &ret[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int totals_fn(ChunkIndex *x, MDB_txn *txn, void *userdata) {
        ChunkIndexTotals *t = userdata;
        uint64_t m[_META_MAX];
        MDB_stat st;
        int r, rc;

        r = meta_read(txn, x->meta, m);
        if (r < 0)
                return r;
        *t = (ChunkIndexTotals) {
                .chunks = m[META_CHUNKS],
                .bytes = m[META_BYTES],
                .pinned_chunks = m[META_PINNED_CHUNKS],
                .pinned_bytes = m[META_PINNED_BYTES],
                .version_bytes = m[META_VERSION_BYTES],
        };
        rc = mdb_stat(txn, x->versions, &st);
        if (rc != 0)
                return lmdb_errno(rc);
        t->versions = st.ms_entries;
        rc = mdb_stat(txn, x->pins, &st);
        if (rc != 0)
                return lmdb_errno(rc);
        t->pins = st.ms_entries;
        return 0;
}

int chunk_index_totals(ChunkIndex *x, ChunkIndexTotals *ret) {
        ChunkIndexTotals t;
        int r;

        if (!x || !ret)
                return -EINVAL;
        r = index_read(x, totals_fn, &t);
        if (r >= 0)
                *ret = t;
        return r;
}

/* ---- probe ---- */

enum {
        PROBE_GOOD = 0,
        PROBE_DAMAGED = 1,
        PROBE_MISSING = 2,
        PROBE_ACCESS = 3,
        PROBE_FAILED = 4,
};

/* Walks one database with a cursor; check is called per record. Returns a PROBE_* code. */
typedef int (*probe_record_fn)(MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *userdata);

static int probe_walk(MDB_txn *txn, MDB_dbi dbi, probe_record_fn check, void *userdata) {
        MDB_cursor *c;
        MDB_val k, v;
        MDB_stat st;
        size_t n = 0;
        int rc;

        if (mdb_stat(txn, dbi, &st) != 0 || mdb_cursor_open(txn, dbi, &c) != 0)
                return PROBE_DAMAGED;
        for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
                n++;
                if (check(txn, &k, &v, userdata) != 0) {
                        mdb_cursor_close(c);
                        return PROBE_DAMAGED;
                }
        }
        mdb_cursor_close(c);
        if (rc != MDB_NOTFOUND || n != st.ms_entries)
                return PROBE_DAMAGED;
        return PROBE_GOOD;
}

typedef struct ProbeState {
        MDB_dbi chunks;
        uint64_t m[_META_MAX];          /* recomputed */
        uint64_t refs, pins, lru, in_lru;       /* from chunk records */
        uint64_t version_refs, pin_refs;        /* from versions and pins */
        uint64_t pin_keys, pinkey_refs;         /* keys listed by pins; reverse entries */
        MDB_dbi pins_dbi;
} ProbeState;

static int probe_chunk(_unused_ MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *userdata) {
        ProbeState *s = userdata;
        ChunkRec rec;
        if (k->mv_size != CHUNK_ID_SIZE || chunk_rec_decode(v, &rec) < 0)
                return -1;
        s->refs += rec.refcount;
        s->pins += rec.pin_count;
        if (rec.stored) {
                s->m[META_CHUNKS]++;
                s->m[META_BYTES] += rec.size;
                if (rec.pin_count > 0) {
                        s->m[META_PINNED_CHUNKS]++;
                        s->m[META_PINNED_BYTES] += rec.size;
                } else
                        s->in_lru++;
        }
        return 0;
}

static int probe_lru(MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *userdata) {
        ProbeState *s = userdata;
        ChunkRec rec;
        ChunkId id;
        uint64_t be;
        if (k->mv_size != LRU_KEY_SIZE || v->mv_size != 0)
                return -1;
        memcpy(&be, k->mv_data, 8);
        memcpy(id.bytes, (uint8_t *) k->mv_data + 8, CHUNK_ID_SIZE);
        if (chunk_load(txn, s->chunks, &id, &rec) < 0 || !rec_in_lru(&rec) || rec.last_access != be64toh(be))
                return -1;
        s->lru++;
        return 0;
}

static int probe_version(MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *userdata) {
        ProbeState *s = userdata;
        VersionView vv;
        if (version_decode(k, v, NULL, &vv) < 0)
                return -1;
        s->m[META_VERSION_BYTES] += vv.size;
        s->version_refs += vv.n;
        for (uint32_t i = 0; i < vv.n; i++) {
                ChunkRef ref;
                ChunkRec rec;
                version_entry(&vv, i, &ref);
                if (chunk_load(txn, s->chunks, &ref.id, &rec) < 0 || rec.refcount == 0)
                        return -1;
        }
        return 0;
}

static int probe_pin(MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *userdata) {
        ProbeState *s = userdata;
        PinView pv;
        if (pin_decode(k, v, NULL, &pv) < 0)
                return -1;
        s->pin_refs += pv.n_chunks;
        s->pin_keys += pv.n_keys;
        for (uint32_t i = 0; i < pv.n_chunks; i++) {
                ChunkId id;
                ChunkRec rec;
                memcpy(id.bytes, pv.ids + (size_t) i * CHUNK_ID_SIZE, CHUNK_ID_SIZE);
                if (chunk_load(txn, s->chunks, &id, &rec) < 0 || rec.pin_count == 0)
                        return -1;
        }
        return 0;
}

static int probe_pinkey(MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *userdata) {
        ProbeState *s = userdata;
        const uint8_t *hashes;
        uint32_t n;
        if (k->mv_size != SHA256_DIGEST_LENGTH || pinkey_decode(v, &n, &hashes) < 0)
                return -1;
        for (uint32_t i = 0; i < n; i++) {
                MDB_val pk = { .mv_size = SHA256_DIGEST_LENGTH, .mv_data = (void *) (hashes + (size_t) i * SHA256_DIGEST_LENGTH) }, pv;
                if (mdb_get(txn, s->pins_dbi, &pk, &pv) != 0)
                        return -1;
        }
        s->pinkey_refs += n;
        return 0;
}

static int probe_meta(_unused_ MDB_txn *txn, _unused_ const MDB_val *k, const MDB_val *v, _unused_ void *userdata) {
        uint64_t x;
        return meta_decode(v, &x) < 0 ? -1 : 0;
}

/* In the child: everything checked here, nothing written. */
static int probe_child(const char *path) {
        MDB_env *env = NULL;
        MDB_txn *txn = NULL;
        MDB_envinfo info;
        MDB_stat est;
        ProbeState s = {};
        MDB_dbi dbi[6];
        static const char *const names[6] = { "chunks", "lru", "versions", "pins", "meta", "pinkeys" };
        struct stat st;
        int rc, code;

        if (stat(path, &st) < 0)
                return errno == ENOENT ? PROBE_MISSING : errno == EACCES ? PROBE_ACCESS : PROBE_FAILED;
        if (!S_ISREG(st.st_mode) || st.st_size < 2 * 512)
                return PROBE_DAMAGED;   /* not even two meta pages */
        if (access(path, R_OK) < 0)
                return PROBE_ACCESS;

        if (mdb_env_create(&env) != 0)
                return PROBE_FAILED;
        /* Nobody else has the file open (the daemon probes before it opens), so no lock is needed, and
         * the lock file is left alone. */
        if (mdb_env_set_maxdbs(env, 8) != 0)
                return PROBE_FAILED;
        rc = mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0644);
        if (rc == ENOENT)
                return PROBE_MISSING;
        if (rc == EACCES)
                return PROBE_ACCESS;
        if (rc != 0)
                return PROBE_DAMAGED;   /* bad meta pages, or a map size no sane file has (ENOMEM) */
        /* A truncated file: pages in use past its end (reading them would be SIGBUS). */
        if (mdb_env_info(env, &info) != 0 || mdb_env_stat(env, &est) != 0 ||
            (uint64_t) (info.me_last_pgno + 1) * est.ms_psize > (uint64_t) st.st_size)
                return PROBE_DAMAGED;
        if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
                return PROBE_DAMAGED;
        for (int i = 0; i < 6; i++)
                if (mdb_dbi_open(txn, names[i], 0, &dbi[i]) != 0)
                        return PROBE_DAMAGED;
        s.chunks = dbi[0];
        s.pins_dbi = dbi[3];

        MDB_val k = { .mv_size = strlen("format"), .mv_data = (void *) "format" }, v;
        uint64_t format, m[_META_MAX];
        if (mdb_get(txn, dbi[4], &k, &v) != 0 || meta_decode(&v, &format) < 0 || format != INDEX_FORMAT)
                return PROBE_DAMAGED;

        if ((code = probe_walk(txn, dbi[0], probe_chunk, &s)) != PROBE_GOOD ||
            (code = probe_walk(txn, dbi[1], probe_lru, &s)) != PROBE_GOOD ||
            (code = probe_walk(txn, dbi[2], probe_version, &s)) != PROBE_GOOD ||
            (code = probe_walk(txn, dbi[3], probe_pin, &s)) != PROBE_GOOD ||
            (code = probe_walk(txn, dbi[4], probe_meta, &s)) != PROBE_GOOD ||
            (code = probe_walk(txn, dbi[5], probe_pinkey, &s)) != PROBE_GOOD)
                return code;
        if (meta_read(txn, dbi[4], m) < 0 || memcmp(m, s.m, sizeof m) != 0)
                return PROBE_DAMAGED;
        if (s.lru != s.in_lru || s.refs != s.version_refs || s.pins != s.pin_refs || s.pin_keys != s.pinkey_refs)
                return PROBE_DAMAGED;
        /* Deliberately no cleanup: the process ends here. */
        return PROBE_GOOD;
}

static int wait_child(pid_t pid, int *ret_status) {
        int pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (pidfd >= 0) {
                struct pollfd p = { .fd = pidfd, .events = POLLIN };
                int n;
                do
                        n = poll(&p, 1, PROBE_TIMEOUT_SEC * 1000);
                while (n < 0 && errno == EINTR);
                close(pidfd);
                if (n == 0)
                        kill(pid, SIGKILL);
        } else {
                /* No pidfd (old kernel): poll the child's state until the deadline. */
                struct timespec start, now, tick = { .tv_nsec = 10 * 1000 * 1000 };
                clock_gettime(CLOCK_MONOTONIC, &start);
                for (;;) {
                        pid_t q = waitpid(pid, ret_status, WNOHANG);
                        if (q == pid)
                                return 0;
                        clock_gettime(CLOCK_MONOTONIC, &now);
                        if (now.tv_sec - start.tv_sec >= PROBE_TIMEOUT_SEC) {
                                kill(pid, SIGKILL);
                                break;
                        }
                        nanosleep(&tick, NULL);
                }
        }
        while (waitpid(pid, ret_status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return 0;
}

int chunk_index_probe(const char *path) {
        int status, r;
        pid_t pid;

        if (!path)
                return -EINVAL;
        pid = fork();
        if (pid < 0)
                return log_error_errno(errno, "Cannot fork to probe chunk index %s: %m", path);
        if (pid == 0) {
                /* A bad page must kill this process, whatever handlers the parent installed (a crash
                 * handler that carried on would run the parent's code in here); SIGALRM bounds the walk
                 * even if the parent's timeout fails. */
                static const int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGALRM };
                sigset_t mask;
                sigemptyset(&mask);
                for (size_t i = 0; i < ELEMENTSOF(sigs); i++) {
                        signal(sigs[i], SIG_DFL);
                        sigaddset(&mask, sigs[i]);
                }
                sigprocmask(SIG_UNBLOCK, &mask, NULL);
                alarm(PROBE_TIMEOUT_SEC);
                _exit(probe_child(path));
        }
        r = wait_child(pid, &status);
        if (r < 0)
                return log_error_errno(r, "Cannot wait for the probe of chunk index %s: %m", path);
        if (WIFSIGNALED(status)) {
                log_warning("Chunk index %s is damaged: its probe died of signal %d", path, WTERMSIG(status));
                return -EBADMSG;
        }
        switch (WIFEXITED(status) ? WEXITSTATUS(status) : PROBE_DAMAGED) {
        case PROBE_GOOD:
                return 0;
        case PROBE_MISSING:
                return -ENOENT;
        case PROBE_ACCESS:
                return -EACCES;
        case PROBE_FAILED:
                return log_warning_errno(EIO, "Cannot probe chunk index %s", path);
        default:
                log_warning("Chunk index %s is damaged: a record does not decode or the totals disagree", path);
                return -EBADMSG;
        }
}
