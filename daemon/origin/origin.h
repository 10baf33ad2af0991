/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Origins: where the bytes live. An Origin is a vtable plus identity; every operation returns 0 /
 * a byte count or a negative errno, is safe to call from any thread, and passes through the origin-*
 * failpoints. Local origins only in this issue; s3/sftp plug in as new OriginOps later.
 *
 * OriginSet holds the configured origins by catalog id, ordered by priority. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct Origin Origin;
typedef struct OriginFile OriginFile;

typedef struct OriginStat {
        uint64_t size;
        int64_t mtime_ns;
} OriginStat;

/* Called for every regular file the walk finds (symlinks followed, loops and unreadable entries
 * skipped with one log line each). Return <0 to stop the walk with that error. */
typedef int (*origin_walk_fn)(const char *rel_path, const OriginStat *st, void *userdata);

/* Called, after its one log line, for every entry the walk skipped because the origin could not read
 * it: a directory it cannot list or enter, an entry it cannot stat, a file it may not read (EACCES,
 * EIO, ESTALE, ...; error is the negative errno). The origin may hold files at rel_path or below it
 * that the walk did not report: they are unknown this time, not gone. Entries that are gone are not
 * reported (removed while the walk looked, dangling or looping symlinks), nor directory loops.
 * Return <0 to stop the walk with that error. */
typedef int (*origin_walk_skipped_fn)(const char *rel_path, int error, void *userdata);

typedef struct OriginOps {
        const char *kind;
        int (*stat)(Origin *o, const char *rel_path, OriginStat *ret);
        int (*open)(Origin *o, const char *rel_path, OriginFile **ret);
        ssize_t (*pread)(OriginFile *f, void *buf, size_t size, uint64_t offset);
        void (*close)(OriginFile *f);
        int (*walk)(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata); /* skipped may be NULL */
        int (*check)(Origin *o);        /* health probe: 0 healthy */
        void (*free)(Origin *o);
        /* Optional (sync, issue #6): walk only the directory rel_dir and below; -ENOENT/-ENOTDIR,
         * unlogged, when it is not there. NULL: origin_walk_under() filters a full walk. */
        int (*walk_under)(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata);
        /* D10: true when the implementation bounds every operation by itself (remote origins: the
         * transport's own timeouts, the remote 30 s); origin.c then calls it inline. false (local):
         * origin.c runs stat/open/pread/check on the origin's worker threads under Origin.timeout_ms
         * and answers -ETIMEDOUT for an operation that hangs (origin-exec.c). */
        bool own_timeouts;
        /* Optional: what can be read at once from memory, never waiting on the device, or -EAGAIN.
         * origin_pread() tries it on the caller's thread before paying the worker hop. */
        ssize_t (*pread_nowait)(OriginFile *f, void *buf, size_t size, uint64_t offset);
} OriginOps;

/* D11: an origin is healthy, degraded (failing, not yet past its threshold) or unhealthy. */
typedef enum OriginHealthState {
        ORIGIN_HEALTHY,
        ORIGIN_DEGRADED,
        ORIGIN_UNHEALTHY,
        _ORIGIN_HEALTH_MAX,
} OriginHealthState;

struct Origin {
        const OriginOps *ops;
        char *name;
        char *url;              /* local: the absolute directory; never holds secrets */
        unsigned priority;      /* lower is preferred */
        int64_t id;             /* catalog origins.id, set by the manager */
        /* References beyond the first (the creator's, handed to the OriginSet): 0 when the first is
         * the only one, so an implementation's zero-initialised struct starts right. */
        atomic_uint n_ref;
        /* D10: the limit of one operation in ms; 0 is the default (5 s local, 30 s own_timeouts).
         * Set before the origin is shared (origin_set_timeout()). */
        unsigned timeout_ms;
        _Atomic(struct OriginExec *) exec;      /* origin-exec.c's workers; made on first use */
        /* D11: the manager's view of its health (an OriginHealthState; zero, healthy, at first),
         * shared with readers: replica.c prefers replicas on origins that are not unhealthy and
         * gives unhealthy ones only a short try. recoveries counts its returns to healthy, so that a
         * handle reading from a backup replica moves back to this one on its next read. Written by
         * the manager's loop only (origin_set_health()). */
        atomic_int health;
        atomic_uint recoveries;
};

int origin_local_new(const char *name, const char *dir, unsigned priority, Origin **ret);

/* An SFTP server (origin-sftp.c, libssh2). Strings are copied; NULL/0 fields take the defaults. */
#define SFTP_DEFAULT_PORT 22
#define SFTP_DEFAULT_POOL_SIZE 16     /* a scan keeps 16 reads in flight (scan/scanner.c); sessions are made as needed */
#define SFTP_DEFAULT_TIMEOUT_SEC 30
#define SFTP_DEFAULT_KEEPALIVE_SEC 30
typedef struct SftpOriginOptions {
        const char *host;               /* required */
        unsigned port;                  /* 0: 22 */
        const char *user;               /* NULL: the invoking user's name */
        const char *path;               /* remote directory, absolute or relative to the login directory */
        const char *identity_file;      /* private key (unencrypted); NULL with !use_agent: ~/.ssh/id_* and the agent */
        bool use_agent;                 /* try ssh-agent ($SSH_AUTH_SOCK) first */
        const char *known_hosts;        /* NULL: ~/.ssh/known_hosts of the invoking user */
        const char *host_key_fingerprint; /* "SHA256:<base64>": accepted when known_hosts lacks the host */
        unsigned pool_size;             /* sessions at most, 0: SFTP_DEFAULT_POOL_SIZE */
        unsigned timeout_sec;           /* per operation, retries included; 0: 30 */
        unsigned keepalive_sec;         /* 0: 30 */
} SftpOriginOptions;
int origin_sftp_new(const char *name, const SftpOriginOptions *opts, unsigned priority, Origin **ret);

/* An S3 bucket (origin-s3.c, issue #5). Strings are copied; the secrets are kept only in memory and
 * never end up in Origin.url or a log line. */
typedef struct S3OriginOptions {
        const char *endpoint;           /* "http://127.0.0.1:9000"; NULL: https://s3.REGION.amazonaws.com */
        const char *region;             /* NULL: us-east-1 */
        const char *bucket;
        const char *prefix;             /* key prefix the origin is rooted at; NULL or "": the whole bucket */
        bool path_style;                /* http://endpoint/bucket/key rather than http://bucket.endpoint/key */
        const char *access_key_id;      /* NULL: anonymous, unsigned requests */
        const char *secret_access_key;
        const char *session_token;      /* NULL unless temporary credentials */
        unsigned timeout_sec;           /* per operation, retries included; 0: 30 (D10) */
} S3OriginOptions;
int origin_s3_new(const char *name, const S3OriginOptions *opts, unsigned priority, Origin **ret);
/* HTTP requests the S3 origin o has sent (retries count); 0 for other kinds. */
uint64_t origin_s3_request_count(Origin *o);

/* Convenience wrappers that evaluate the failpoints and call through the vtable. */
int origin_stat(Origin *o, const char *rel_path, OriginStat *ret);
int origin_open(Origin *o, const char *rel_path, OriginFile **ret);
ssize_t origin_pread(OriginFile *f, void *buf, size_t size, uint64_t offset);
/* Reads exactly size bytes unless EOF comes first; returns the count or a negative errno. */
ssize_t origin_pread_full(OriginFile *f, void *buf, size_t size, uint64_t offset);
void origin_close(OriginFile *f);
/* Walks the whole origin. Returns 0 when the walk was complete; a positive count of entries (mostly
 * directories) that could not be read, each skipped and logged once, when it was not; a negative
 * errno when it stopped: the origin's own directory cannot be listed, fds or memory ran out, or fn
 * returned one. Only a complete walk tells what is no longer there: after an incomplete one, what
 * lies under a skipped entry must be taken as still there. */
int origin_walk(Origin *o, origin_walk_fn fn, void *userdata);
/* The same, calling skipped (may be NULL) for each entry that a positive return counts. */
int origin_walk_full(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata);
/* The same for the subtree at rel_dir ("" everything): a targeted scan's walk. rel_dir not being a
 * directory of the origin (any more) is -ENOENT or -ENOTDIR (only a full walk can tell that from an
 * origin that filters a full walk). */
int origin_walk_under(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata);
int origin_check(Origin *o);    /* the health probe through the vtable: 0 healthy */
/* The shared health view above. origin_set_health() is the manager's; a return from unhealthy or
 * degraded to healthy counts a recovery. */
static inline OriginHealthState origin_get_health(const Origin *o) {
        return (OriginHealthState) atomic_load_explicit(&((Origin *) o)->health, memory_order_relaxed);
}
static inline unsigned origin_get_recoveries(const Origin *o) {
        return atomic_load_explicit(&((Origin *) o)->recoveries, memory_order_acquire);
}
static inline void origin_set_health(Origin *o, OriginHealthState h) {
        int old = atomic_exchange_explicit(&o->health, (int) h, memory_order_relaxed);
        if (h == ORIGIN_HEALTHY && old != ORIGIN_HEALTHY)
                atomic_fetch_add_explicit(&o->recoveries, 1, memory_order_release);
}
/* D10 timeouts. Every operation above answers -ETIMEDOUT once it took the origin's limit; the
 * _until variants stop at the earlier of that and deadline_usec (CLOCK_MONOTONIC µs, 0 none), so a
 * retry loop keeps one overall bound. */
void origin_set_timeout(Origin *o, unsigned ms);        /* 0: the D10 default */
/* Operations that passed their limit and still occupy one of the origin's workers. */
unsigned origin_stuck_ops(Origin *o);
unsigned origin_timeout_ms(const Origin *o);
/* Whether a read of this file passed its limit and is still running. While one is, further reads
 * of the file answer -ETIMEDOUT at once instead of queueing behind it: the kernel retries a failed
 * read of a page once, and that retry must not cost a second full limit. */
bool origin_file_stuck(OriginFile *f);
ssize_t origin_pread_until(OriginFile *f, void *buf, size_t size, uint64_t offset, uint64_t deadline_usec);
ssize_t origin_pread_full_until(OriginFile *f, void *buf, size_t size, uint64_t offset, uint64_t deadline_usec);
int origin_open_until(Origin *o, const char *rel_path, OriginFile **ret, uint64_t deadline_usec);
/* Drops a reference; the last one frees. origin_free() drops the creator's (the first) reference,
 * so a caller that never took another one frees at once, as before references existed. */
void origin_free(Origin *o);
/* Another reference, for a thread that uses the origin while the loop may remove it from the set
 * (FUSE readers, scans, health checks). NULL is fine. (Added by the management API, I3-A.) */
Origin *origin_ref(Origin *o);
void origin_unref(Origin *o);   /* the same as origin_free(); NULL is fine */

typedef struct OriginSet OriginSet;
int origin_set_new(OriginSet **ret);
void origin_set_free(OriginSet *s);     /* frees the origins too */
/* Takes ownership on success; on an error (-EEXIST on a duplicate name) the caller still owns o.
 * Safe while other threads read the set. */
int origin_set_add(OriginSet *s, Origin *o);
/* Borrowed pointers: valid only as long as nobody removes the origin, i.e. on the thread that removes
 * origins (the manager's loop) or with the set in no other thread's hands. */
Origin *origin_set_get(OriginSet *s, int64_t id);      /* NULL when unknown */
size_t origin_set_size(OriginSet *s);
Origin *origin_set_at(OriginSet *s, size_t i);         /* priority order, then name; NULL past the end */
/* The same with a reference for the caller (origin_unref() it), safe against a concurrent remove. */
Origin *origin_set_get_ref(OriginSet *s, int64_t id);
Origin *origin_set_at_ref(OriginSet *s, size_t i);
/* Takes the origin out of the set and drops the set's reference: lookups stop finding it at once,
 * and it is freed when the last thread that holds a reference drops it. -ENOENT when unknown.
 * Safe while other threads read the set. */
int origin_set_remove(OriginSet *s, int64_t id);
