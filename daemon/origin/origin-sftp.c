/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The SFTP origin (DESIGN.md D10): a directory on an SSH server, read through libssh2.
 *
 * Owns: a small pool of SSH connections per origin, each carrying up to SFTP_CHANNELS SFTP sessions
 * (each operation borrows one; a session that broke is dropped with its connection and a new one
 * made on the next borrow), host key verification against known_hosts (or
 * a pinned SHA-256 fingerprint), key authentication (agent or key file), keepalives, the per-file
 * read-ahead buffer, and the timeout/retry policy: every operation has one deadline (timeout_sec,
 * retries included); connection errors are retried after 100 ms, 500 ms and 2 s on a fresh session,
 * then answered -EIO.
 *
 * Every session is non-blocking: a libssh2 call that would block returns EAGAIN and we poll() the
 * socket until the operation's deadline, so neither a dead server nor a black-holed connect can hold
 * a thread past its timeout (libssh2_session_set_timeout() does not cover connect or the agent).
 *
 * Remote handles are cached per session, keyed by the OriginFile that opened them, so a file's reads
 * cost no extra open round trip, and sequential reads continue libssh2's pipelined read stream
 * (libssh2_sftp_read() keeps several SSH_FXP_READ requests in flight for a large buffer). Round
 * trips are what a scan over a slow link pays for, so: open sends OPEN and STAT together and leaves
 * the handle in its session, which the first read then prefers; a CLOSE's answer is read on the
 * session's next use instead of waited for; the walk lists several directories at once. */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libssh2.h>
#include <libssh2_sftp.h>
#include <openssl/evp.h>

#include "log.h"
#include "macro.h"
#include "origin-internal.h"
#include "time-util.h"

#define SFTP_POOL_MAX 64
#define SFTP_CHANNELS 4                 /* SFTP channels (sessions) per SSH connection */
#define SFTP_SESSIONS_MAX (SFTP_POOL_MAX * SFTP_CHANNELS)
#define SFTP_HANDLE_SLOTS 8             /* open remote handles kept per session */
#define SFTP_CLOSING_MAX 32             /* handles whose CLOSE is sent and its answer not yet read */
#define SFTP_CONNECTING_MAX 8           /* sessions being set up at once: below sshd's MaxStartups (10 by default) */
#define SFTP_CONNECTING_SPARE 2         /* of those, never taken by sessions connected ahead of need */
#define SFTP_READAHEAD (128 * 1024)     /* what a small read fetches: the tag parser's many small reads cost one */
#define SFTP_STREAM_MIN (512 * 1024)    /* a read this large is a stream's (a fill reads 1 MiB at a time) */
#define SFTP_STREAM_AHEAD (2 * 1024 * 1024)     /* kept in flight by a stream: OpenSSH sftp's 64 x 32 KiB */
#define SFTP_CHECK_TIMEOUT_SEC 5        /* D11: a health check has its own 5 s */
#define USEC_PER_SEC UINT64_C(1000000)
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

typedef uint64_t usec_t;

/* A session connected ahead of need logs why it failed at debug level only: the operation that
 * then connects a session of its own fails the same way and says so, once. */
#define session_log_errno(s, level, error, ...) log_full_errno((s)->quiet ? LOG_DEBUG : (level), (error), __VA_ARGS__)

/* What a file's handles are keyed by: it outlives the SftpFile while sessions still hold a handle. */
typedef struct FileKey {
        atomic_uint n_ref;
        atomic_bool closed;
        char path[];            /* the remote path */
} FileKey;

static FileKey *file_key_ref(FileKey *k) {
        atomic_fetch_add(&k->n_ref, 1);
        return k;
}

static void file_key_unref(FileKey *k) {
        if (k && atomic_fetch_sub(&k->n_ref, 1) == 1)
                free(k);
}

typedef struct HandleSlot {
        FileKey *key;
        LIBSSH2_SFTP_HANDLE *handle;
        uint64_t pos;           /* where libssh2's read stream on this handle continues */
        usec_t last_used;
} HandleSlot;

/* One SSH connection, carrying up to SFTP_CHANNELS SFTP channels. A handshake costs some ten round
 * trips and a server process; another channel on a connection that is up costs three and no key
 * exchange, so concurrent operations share connections. libssh2 is not thread-safe per session:
 * every call on the connection or on one of its channels holds lock, and no thread waits while
 * holding it. A call may read another channel's answer off the socket into libssh2's buffers; the
 * receive callback then wakes that channel's waiter (its eventfd), which would otherwise poll a
 * quiet socket. */
typedef struct SftpConn {
        int fd;
        LIBSSH2_SESSION *ssh;
        pthread_mutex_t lock;
        atomic_bool broken;     /* the transport failed: no channel on it is used again */
        unsigned current;       /* the channel whose call holds lock */
        int wake[SFTP_CHANNELS];        /* each channel's eventfd, -1 for a free slot; under lock */
        bool woken[SFTP_CHANNELS];      /* written to and not drained yet; under lock */
        /* Under the origin's lock: */
        unsigned n_channels;    /* channels on it, being opened included: the last one frees it */
        unsigned n_borrowed;
        bool adding;            /* a channel being opened (libssh2 opens one at a time per connection) */
        bool full;              /* the server refused a channel on it: no more are asked for */
        usec_t last_active;     /* a channel of it was borrowed or returned */
} SftpConn;

/* One SFTP channel, what an operation borrows from the pool. */
typedef struct SftpSession {
        SftpConn *conn;
        int fd;                 /* conn's, for brevity */
        LIBSSH2_SESSION *ssh;   /* conn's */
        unsigned slot;          /* in conn->wake */
        int wake_fd;
        LIBSSH2_SFTP *sftp;
        bool broken;            /* the transport failed or an operation was cut off mid-way */
        bool quiet;             /* connected ahead of need: its failures are the next borrower's to report */
        int wait_error;         /* why the last wait ended, a negative errno, 0 if it did not fail */
        int last_rc;            /* libssh2's error code of the last SSH_CALL_PTR() that failed */
        usec_t idle_since;
        HandleSlot slots[SFTP_HANDLE_SLOTS];
        /* CLOSEs sent whose answers are read on the session's next use: a close costs no round
         * trip of its own (libssh2 finishes a close called again once its answer is there). */
        LIBSSH2_SFTP_HANDLE *closing[SFTP_CLOSING_MAX];
        unsigned n_closing;
} SftpSession;

typedef struct SftpOrigin {
        Origin base;
        char *host, *user, *root, *identity_file, *known_hosts, *fingerprint;
        unsigned port, pool_size, timeout_sec, keepalive_sec;
        bool use_agent;
        char **default_identities;      /* NULL-terminated, when no identity_file was given */

        pthread_mutex_t lock;
        pthread_cond_t cond;
        SftpSession *idle[SFTP_SESSIONS_MAX];
        unsigned n_idle;
        unsigned n_sessions;    /* channels: idle, borrowed, or being opened */
        SftpConn *conns[SFTP_POOL_MAX]; /* connections that are up */
        unsigned n_conns_up;
        unsigned n_conns;       /* up or being connected: at most pool_size */
        unsigned n_connecting;  /* being connected: at most SFTP_CONNECTING_MAX */
} SftpOrigin;

typedef struct SftpFile {
        OriginFile base;
        FileKey *key;
        uint64_t size;
        pthread_mutex_t lock;   /* the read-ahead buffer */
        uint8_t *ra;
        uint64_t ra_off;
        size_t ra_len;
} SftpFile;

static SftpOrigin *sftp_origin(Origin *o) {
        return (SftpOrigin *) o;
}

static void libssh2_init_once(void) {
        /* Also initialises the crypto backend; must not race with sessions being made. */
        if (libssh2_init(0) != 0)
                log_error("libssh2_init() failed");
}

/* ---- waiting on a non-blocking session ------------------------------------------------------ */

/* Takes the connection for one libssh2 call on s (or a few that belong together), and drains the
 * wakeups meant for s: the call sees whatever they announced. */
static void session_lock(SftpSession *s) {
        SftpConn *c = s->conn;
        pthread_mutex_lock(&c->lock);
        c->current = s->slot;
        if (c->woken[s->slot]) {
                eventfd_t v;
                (void) eventfd_read(s->wake_fd, &v);
                c->woken[s->slot] = false;
        }
}

/* Lets the connection go and says which way the call that said EAGAIN waits (libssh2 keeps one
 * answer per connection, so it is read before another channel's call changes it). */
static int session_unlock(SftpSession *s) {
        int dirs = libssh2_session_block_directions(s->ssh);
        pthread_mutex_unlock(&s->conn->lock);
        return dirs;
}

/* libssh2's reads from the socket, on whichever channel's call: data may be another channel's. */
static LIBSSH2_RECV_FUNC(conn_recv) {
        SftpConn *c = *abstract;
        ssize_t n = recv(socket, buffer, length, flags);
        int err = n < 0 ? errno : 0;

        if (err != EAGAIN && err != EWOULDBLOCK)
                for (unsigned i = 0; i < SFTP_CHANNELS; i++)
                        if (i != c->current && c->wake[i] >= 0 && !c->woken[i]) {
                                c->woken[i] = true;
                                (void) eventfd_write(c->wake[i], 1);
                        }
        return n < 0 ? -err : n;
}

/* Waits until the socket is ready the way libssh2 wants it (dirs, from session_unlock()), another
 * channel's call read something for s, or the deadline passes. */
static int session_wait(SftpSession *s, int dirs, usec_t deadline) {
        struct pollfd p[2] = { { .fd = s->fd }, { .fd = s->wake_fd, .events = POLLIN } };

        if (dirs & LIBSSH2_SESSION_BLOCK_INBOUND)
                p[0].events |= POLLIN;
        if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND)
                p[0].events |= POLLOUT;
        if (p[0].events == 0)
                p[0].events = POLLIN;

        for (;;) {
                usec_t n = now_usec(CLOCK_MONOTONIC);
                if (n >= deadline)
                        return (s->wait_error = -ETIMEDOUT);
                int ms = (int) MIN((deadline - n + 999) / 1000, (usec_t) INT_MAX);
                int k = poll(p, s->wake_fd >= 0 ? 2 : 1, ms);
                if (k > 0)
                        return 0;       /* also POLLHUP/POLLERR: libssh2 reads the error itself */
                if (k == 0)
                        return (s->wait_error = -ETIMEDOUT);
                if (errno != EINTR)
                        return (s->wait_error = -errno);
        }
}

/* Runs an int-returning libssh2 call until it stops saying EAGAIN or the deadline passes. */
#define SSH_CALL(s, deadline, rc, expr)                                                  \
        do {                                                                             \
                (s)->wait_error = 0;                                                     \
                for (;;) {                                                               \
                        session_lock(s);                                                 \
                        (rc) = (expr);                                                   \
                        int dirs_ = session_unlock(s);                                   \
                        if ((rc) != LIBSSH2_ERROR_EAGAIN)                                \
                                break;                                                   \
                        if (session_wait((s), dirs_, (deadline)) < 0) {                  \
                                (rc) = LIBSSH2_ERROR_TIMEOUT;                            \
                                break;                                                   \
                        }                                                                \
                }                                                                        \
        } while (0)

/* The same for a call that returns a pointer, NULL on failure (why: (s)->last_rc). */
#define SSH_CALL_PTR(s, deadline, ptr, expr)                                             \
        do {                                                                             \
                (s)->wait_error = 0;                                                     \
                for (;;) {                                                               \
                        session_lock(s);                                                 \
                        (ptr) = (expr);                                                  \
                        (s)->last_rc = (ptr) ? 0 : libssh2_session_last_errno((s)->ssh); \
                        int dirs_ = session_unlock(s);                                   \
                        if ((ptr) || (s)->last_rc != LIBSSH2_ERROR_EAGAIN)               \
                                break;                                                   \
                        if (session_wait((s), dirs_, (deadline)) < 0) {                  \
                                (s)->last_rc = LIBSSH2_ERROR_TIMEOUT;                    \
                                break;                                                   \
                        }                                                                \
                }                                                                        \
        } while (0)

static int sftp_status_to_errno(unsigned long status) {
        switch (status) {
        case LIBSSH2_FX_NO_SUCH_FILE:
        case LIBSSH2_FX_NO_SUCH_PATH:
                return -ENOENT;
        case LIBSSH2_FX_PERMISSION_DENIED:
        case LIBSSH2_FX_WRITE_PROTECT:
                return -EACCES;
        case LIBSSH2_FX_NOT_A_DIRECTORY:
                return -ENOTDIR;
        case LIBSSH2_FX_INVALID_FILENAME:
                return -EINVAL;
        case LIBSSH2_FX_LINK_LOOP:
                return -ELOOP;
        case LIBSSH2_FX_OP_UNSUPPORTED:
                return -EOPNOTSUPP;
        default:
                return -EIO;
        }
}

/* Turns a failed libssh2 call into a negative errno. An SFTP status is the server's answer about a
 * path and leaves the session usable; anything else (a timeout included: the request may still be
 * in flight) leaves the session in an unknown state, so it is marked broken and dropped. */
static int session_error(SftpSession *s, int rc, const char *what) {
        if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL && s->sftp)
                return sftp_status_to_errno(libssh2_sftp_last_error(s->sftp));

        /* The other channels on the connection are no better off: they go too. */
        s->broken = true;
        atomic_store(&s->conn->broken, true);
        if (s->wait_error < 0) {
                log_debug_errno(s->wait_error, "SFTP %s: %m", what);
                return s->wait_error;
        }
        char *msg = NULL;
        session_lock(s);        /* the message is the connection's, replaced by its next error */
        libssh2_session_last_error(s->ssh, &msg, NULL, 0);
        log_debug("SFTP %s failed: %s (libssh2 error %d)", what, strna(msg), rc);
        (void) session_unlock(s);
        return rc == LIBSSH2_ERROR_TIMEOUT ? -ETIMEDOUT : -ECONNRESET;
}

/* ---- sessions ---------------------------------------------------------------------------------- */

static void conn_free(SftpConn *c) {
        if (!c)
                return;
        if (c->ssh) {
                if (atomic_load(&c->broken) && c->fd >= 0)
                        /* Nothing more will be said on this connection: every write below fails at
                         * once instead of waiting on a dead peer. */
                        (void) shutdown(c->fd, SHUT_RDWR);
                /* Blocking with a short timeout: the goodbyes of a healthy connection are best effort. */
                libssh2_session_set_timeout(c->ssh, 1000);
                libssh2_session_set_blocking(c->ssh, 1);
                if (!atomic_load(&c->broken))
                        libssh2_session_disconnect(c->ssh, "bye");
                libssh2_session_free(c->ssh);   /* and whatever channels are left on it */
        }
        if (c->fd >= 0)
                close(c->fd);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

/* The channel's end, on the connection only (the pool's accounting is the caller's). A healthy
 * channel is closed politely: that happens only when nobody uses its connection (the origin's end),
 * so the blocking calls hold nobody up. A broken one breaks its connection: its other channels
 * fail at once instead of waiting out their deadlines on a dead peer. */
static void session_close_channel(SftpSession *s) {
        SftpConn *c = s->conn;
        bool broken = s->broken || atomic_load(&c->broken);

        pthread_mutex_lock(&c->lock);
        if (broken) {
                atomic_store(&c->broken, true);
                if (c->fd >= 0)
                        (void) shutdown(c->fd, SHUT_RDWR);
        } else if (s->sftp) {
                libssh2_session_set_timeout(c->ssh, 1000);
                libssh2_session_set_blocking(c->ssh, 1);
                for (size_t i = 0; i < SFTP_HANDLE_SLOTS; i++)
                        if (s->slots[i].handle)
                                libssh2_sftp_close_handle(s->slots[i].handle);
                for (unsigned i = 0; i < s->n_closing; i++)
                        libssh2_sftp_close_handle(s->closing[i]);
                libssh2_sftp_shutdown(s->sftp);
                libssh2_session_set_blocking(c->ssh, 0);
                libssh2_session_set_timeout(c->ssh, 0);
        }
        /* A broken channel's libssh2 state is freed with the connection's. */
        s->sftp = NULL;
        c->wake[s->slot] = -1;
        c->woken[s->slot] = false;
        pthread_mutex_unlock(&c->lock);

        for (size_t i = 0; i < SFTP_HANDLE_SLOTS; i++)
                file_key_unref(s->slots[i].key);
        if (s->wake_fd >= 0)
                close(s->wake_fd);
        free(s);
}

static int tcp_connect(SftpOrigin *so, SftpSession *s, usec_t deadline, int *ret_fd) {
        char port[8];
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
        int r;

        snprintf(port, sizeof port, "%u", so->port);
        /* getaddrinfo() has no deadline of its own; names are normally local or cached. */
        r = getaddrinfo(so->host, port, &hints, &ai);
        if (r != 0) {
                session_log_errno(s, LOG_WARNING, 0, "SFTP origin %s: cannot resolve %s: %s", so->base.name, so->host,
                                  gai_strerror(r));
                return r == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
        }

        r = -ECONNREFUSED;
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
                _cleanup_close_ int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                                                a->ai_protocol);
                if (fd < 0) {
                        r = -errno;
                        continue;
                }
                if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
                        if (errno != EINPROGRESS) {
                                r = -errno;
                                continue;
                        }
                        struct pollfd p = { .fd = fd, .events = POLLOUT };
                        usec_t n = now_usec(CLOCK_MONOTONIC);
                        int k = n >= deadline ? 0 : poll(&p, 1, (int) MIN((deadline - n + 999) / 1000, (usec_t) INT_MAX));
                        if (k <= 0) {
                                r = k == 0 ? -ETIMEDOUT : -errno;
                                break;  /* the deadline is spent */
                        }
                        int err = 0;
                        socklen_t len = sizeof err;
                        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                                err = errno;
                        if (err != 0) {
                                r = -err;
                                continue;
                        }
                }
                int one = 1;
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                (void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
                *ret_fd = TAKE_FD(fd);
                r = 0;
                break;
        }
        freeaddrinfo(ai);
        return r;
}

static int knownhost_keytype(int hostkey_type) {
        switch (hostkey_type) {
        case LIBSSH2_HOSTKEY_TYPE_RSA:       return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
        case LIBSSH2_HOSTKEY_TYPE_DSS:       return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
        case LIBSSH2_HOSTKEY_TYPE_ED25519:   return LIBSSH2_KNOWNHOST_KEY_ED25519;
        default:                             return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
        }
}

/* "SHA256:<base64 without padding>", as ssh-keygen -l prints it. */
static int hostkey_fingerprint(LIBSSH2_SESSION *ssh, char *buf, size_t size) {
        const unsigned char *hash = (const unsigned char *) libssh2_hostkey_hash(ssh, LIBSSH2_HOSTKEY_HASH_SHA256);
        unsigned char b64[64];

        if (!hash)
                return -EIO;
        int n = EVP_EncodeBlock(b64, hash, 32);
        while (n > 0 && b64[n - 1] == '=')
                n--;
        if (snprintf(buf, size, "SHA256:%.*s", n, (const char *) b64) >= (int) size)
                return -ENOBUFS;
        return 0;
}

static bool fingerprint_equal(const char *pinned, const char *actual) {
        size_t a = strlen(pinned), b = strlen(actual);
        while (a > 0 && pinned[a - 1] == '=')
                a--;
        return a == b && strncmp(pinned, actual, a) == 0;
}

/* Refuses a server whose key known_hosts contradicts, or that neither known_hosts nor the pinned
 * fingerprint vouches for: -EPERM, with one clear log line. Never retried. */
static int session_verify_host(SftpOrigin *so, SftpSession *s) {
        size_t len = 0;
        int type = 0;
        const char *key = libssh2_session_hostkey(s->ssh, &len, &type);
        char fp[80];
        int r;

        if (!key)
                return session_log_errno(s, LOG_ERR, EIO, "SFTP origin %s: the server sent no host key", so->base.name);
        r = hostkey_fingerprint(s->ssh, fp, sizeof fp);
        if (r < 0)
                return session_log_errno(s, LOG_ERR, r, "SFTP origin %s: cannot hash the host key: %m", so->base.name);

        int check = LIBSSH2_KNOWNHOST_CHECK_NOTFOUND;
        LIBSSH2_KNOWNHOSTS *kh = libssh2_knownhost_init(s->ssh);
        if (!kh)
                return -ENOMEM;
        if (so->known_hosts && access(so->known_hosts, F_OK) == 0) {
                if (libssh2_knownhost_readfile(kh, so->known_hosts, LIBSSH2_KNOWNHOST_FILE_OPENSSH) < 0) {
                        libssh2_knownhost_free(kh);
                        return session_log_errno(s, LOG_ERR, EPERM, "SFTP origin %s: cannot read known_hosts file %s; refusing to connect",
                                               so->base.name, so->known_hosts);
                }
                struct libssh2_knownhost *entry = NULL;
                check = libssh2_knownhost_checkp(kh, so->host, (int) so->port, key, len,
                                                 LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                                 knownhost_keytype(type), &entry);
        }
        libssh2_knownhost_free(kh);

        if (so->fingerprint && !fingerprint_equal(so->fingerprint, fp))
                return session_log_errno(s, LOG_ERR, EPERM, "SFTP origin %s: host key of %s:%u has fingerprint %s, not the pinned %s; refusing to connect",
                                       so->base.name, so->host, so->port, fp, so->fingerprint);

        switch (check) {
        case LIBSSH2_KNOWNHOST_CHECK_MATCH:
                return 0;
        case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
                return session_log_errno(s, LOG_ERR, EPERM, "SFTP origin %s: HOST KEY MISMATCH for %s:%u (offered %s) against %s: someone may be intercepting the connection, or the key changed; refusing to connect",
                                       so->base.name, so->host, so->port, fp, strna(so->known_hosts));
        case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
                if (so->fingerprint)
                        return 0;       /* pinned and equal, checked above */
                return session_log_errno(s, LOG_ERR, EPERM, "SFTP origin %s: host %s:%u (key %s) is not in %s and no host_key_fingerprint is pinned; refusing to connect",
                                       so->base.name, so->host, so->port, fp, strna(so->known_hosts));
        default:
                return session_log_errno(s, LOG_ERR, EPERM, "SFTP origin %s: cannot check the host key of %s:%u against %s; refusing to connect",
                                       so->base.name, so->host, so->port, strna(so->known_hosts));
        }
}

static int session_auth_agent(SftpOrigin *so, SftpSession *s, usec_t deadline) {
        const char *sock = getenv("SSH_AUTH_SOCK");
        if (!sock || !sock[0])
                return -ENOENT;

        LIBSSH2_AGENT *agent = libssh2_agent_init(s->ssh);
        if (!agent)
                return -ENOMEM;
        int r = -EACCES;
        if (libssh2_agent_connect(agent) != 0 || libssh2_agent_list_identities(agent) != 0) {
                log_debug("SFTP origin %s: the ssh agent cannot be used", so->base.name);
                r = -ENOENT;
        } else {
                struct libssh2_agent_publickey *id = NULL, *prev = NULL;
                while (libssh2_agent_get_identity(agent, &id, prev) == 0) {
                        int rc;
                        SSH_CALL(s, deadline, rc, libssh2_agent_userauth(agent, so->user, id));
                        if (rc == 0) {
                                r = 0;
                                break;
                        }
                        if (s->wait_error < 0 || rc == LIBSSH2_ERROR_SOCKET_RECV || rc == LIBSSH2_ERROR_SOCKET_SEND ||
                            rc == LIBSSH2_ERROR_SOCKET_DISCONNECT || rc == LIBSSH2_ERROR_TIMEOUT) {
                                r = session_error(s, rc, "agent authentication");
                                break;
                        }
                        prev = id;
                }
                libssh2_agent_disconnect(agent);
        }
        libssh2_agent_free(agent);
        return r;
}

static int session_auth_file(SftpOrigin *so, SftpSession *s, const char *key_file, usec_t deadline) {
        _cleanup_free_ char *pub = NULL;
        int rc;

        if (access(key_file, R_OK) < 0)
                return -errno;
        /* libssh2 derives the public key from the private one, but takes "KEY.pub" when it is there. */
        if (asprintf(&pub, "%s.pub", key_file) < 0)
                return -ENOMEM;
        SSH_CALL(s, deadline, rc, libssh2_userauth_publickey_fromfile_ex(s->ssh, so->user, (unsigned) strlen(so->user),
                                                                         access(pub, R_OK) == 0 ? pub : NULL,
                                                                         key_file, NULL));
        if (rc == 0)
                return 0;
        if (rc == LIBSSH2_ERROR_FILE || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED ||
            rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_METHOD_NOT_SUPPORTED) {
                log_debug("SFTP origin %s: key %s not accepted (libssh2 error %d)", so->base.name, key_file, rc);
                return -EACCES;
        }
        return session_error(s, rc, "key authentication");
}

static int session_auth(SftpOrigin *so, SftpSession *s, usec_t deadline) {
        int r;

        if (so->use_agent || !so->identity_file) {
                r = session_auth_agent(so, s, deadline);
                if (r == 0 || s->broken)
                        return r;
        }
        if (so->identity_file) {
                r = session_auth_file(so, s, so->identity_file, deadline);
                if (r == 0 || s->broken)
                        return r;
                if (r != -EACCES)
                        session_log_errno(s, LOG_WARNING, r, "SFTP origin %s: cannot read identity file %s: %m", so->base.name,
                                          so->identity_file);
        } else
                for (char **k = so->default_identities; k && *k; k++) {
                        r = session_auth_file(so, s, *k, deadline);
                        if (r == 0 || s->broken)
                                return r;
                }

        return session_log_errno(s, LOG_ERR, EACCES, "SFTP origin %s: %s@%s:%u refused every key we offered; check identity_file/agent and the server's authorized_keys",
                               so->base.name, so->user, so->host, so->port);
}

static int session_alloc(SftpConn *c, SftpSession **ret) {
        SftpSession *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0) {
                int r = -errno;
                free(s);
                return r;
        }
        s->conn = c;
        s->fd = c->fd;
        s->ssh = c->ssh;
        pthread_mutex_lock(&c->lock);
        for (s->slot = 0; s->slot < SFTP_CHANNELS - 1 && c->wake[s->slot] >= 0; s->slot++)
                ;
        c->wake[s->slot] = s->wake_fd;  /* the pool never asks for more than SFTP_CHANNELS */
        pthread_mutex_unlock(&c->lock);
        *ret = s;
        return 0;
}

/* Starts SFTP on a new channel of s's connection, before the deadline. */
static int session_start_sftp(SftpSession *s, usec_t deadline) {
        SSH_CALL_PTR(s, deadline, s->sftp, libssh2_sftp_init(s->ssh));
        if (!s->sftp)
                return session_error(s, s->last_rc, "subsystem start");
        s->idle_since = now_usec(CLOCK_MONOTONIC);
        return 0;
}

/* Connects, checks the host, authenticates and starts SFTP, all before the deadline: a connection
 * with one channel. On failure nothing is left (the pool's accounting is the caller's). */
static int session_new(SftpOrigin *so, usec_t deadline, bool quiet, SftpSession **ret) {
        SftpConn *c = calloc(1, sizeof *c);
        SftpSession *s = NULL;
        int r, rc;

        if (!c)
                return -ENOMEM;
        c->fd = -EBADF;
        pthread_mutex_init(&c->lock, NULL);
        for (size_t i = 0; i < SFTP_CHANNELS; i++)
                c->wake[i] = -1;
        c->n_channels = 1;

        r = tcp_connect(so, &(SftpSession) { .quiet = quiet }, deadline, &c->fd);
        if (r < 0) {
                log_debug_errno(r, "SFTP origin %s: cannot connect to %s:%u: %m", so->base.name, so->host, so->port);
                conn_free(c);
                return r;
        }
        c->ssh = libssh2_session_init_ex(NULL, NULL, NULL, c);
        if (!c->ssh) {
                conn_free(c);
                return -ENOMEM;
        }
        libssh2_session_set_blocking(c->ssh, 0);
        libssh2_session_callback_set(c->ssh, LIBSSH2_CALLBACK_RECV, (void *) conn_recv);
        r = session_alloc(c, &s);
        if (r < 0) {
                conn_free(c);
                return r;
        }
        s->quiet = quiet;

        SSH_CALL(s, deadline, rc, libssh2_session_handshake(s->ssh, s->fd));
        if (rc != 0) {
                r = session_error(s, rc, "handshake");
                goto fail;
        }
        r = session_verify_host(so, s);
        if (r < 0)
                goto fail;
        r = session_auth(so, s, deadline);
        if (r < 0)
                goto fail;
        r = session_start_sftp(s, deadline);
        if (r < 0)
                goto fail;
        libssh2_keepalive_config(s->ssh, 1, so->keepalive_sec);
        s->quiet = false;
        *ret = s;
        return 0;

fail:
        s->broken = true;
        session_close_channel(s);
        conn_free(c);
        return r;
}

/* Another channel on a connection that is up (its adding flag is the caller's). On failure the
 * channel is gone; the connection is broken only if the transport failed, not if the server
 * refused a channel: -EBUSY, and the caller asks no more of that connection. */
static int session_add_channel(SftpOrigin *so, SftpConn *c, usec_t deadline, SftpSession **ret) {
        SftpSession *s = NULL;
        int r = session_alloc(c, &s);
        if (r < 0)
                return r;
        s->wait_error = 0;
        SSH_CALL_PTR(s, deadline, s->sftp, libssh2_sftp_init(s->ssh));
        if (!s->sftp) {
                if (s->last_rc == LIBSSH2_ERROR_CHANNEL_FAILURE) {
                        log_debug("SFTP origin %s: the server refused another channel on a connection (MaxSessions?)",
                                  so->base.name);
                        r = -EBUSY;
                } else
                        r = session_error(s, s->last_rc, "channel start");
                session_close_channel(s);
                return r;
        }
        s->idle_since = now_usec(CLOCK_MONOTONIC);
        *ret = s;
        return 0;
}

/* ---- the pool ---------------------------------------------------------------------------------- */

static bool session_has_handle(const SftpSession *s, const FileKey *k) {
        for (size_t i = 0; i < SFTP_HANDLE_SLOTS; i++)
                if (s->slots[i].key == k)
                        return true;
        return false;
}

/* A connection's channel gone (closed or never opened): the last one takes the connection with it,
 * and only then is its place in pool_size free (connections never outnumber it). */
static void pool_release_channel(SftpOrigin *so, SftpConn *c) {
        bool last;

        pthread_mutex_lock(&so->lock);
        last = --c->n_channels == 0;
        if (last)
                for (unsigned i = 0; i < so->n_conns_up; i++)
                        if (so->conns[i] == c) {
                                so->conns[i] = so->conns[--so->n_conns_up];
                                break;
                        }
        pthread_mutex_unlock(&so->lock);
        if (!last)
                return;
        conn_free(c);
        pthread_mutex_lock(&so->lock);
        so->n_conns--;
        pthread_cond_broadcast(&so->cond);
        pthread_mutex_unlock(&so->lock);
}

/* Frees a channel the pool counted, borrowed by the caller. */
static void pool_free(SftpOrigin *so, SftpSession *s) {
        SftpConn *c = s->conn;
        session_close_channel(s);
        pool_release_channel(so, c);
}

/* A connection that is up and may take another channel. */
static SftpConn *pool_conn_with_room(SftpOrigin *so) {
        SftpConn *best = NULL;
        for (unsigned i = 0; i < so->n_conns_up; i++) {
                SftpConn *c = so->conns[i];
                if (c->adding || c->full || c->n_channels >= SFTP_CHANNELS || atomic_load(&c->broken))
                        continue;
                if (!best || c->n_channels < best->n_channels)
                        best = c;
        }
        return best;
}

static void pool_return(SftpOrigin *so, SftpSession *s) {
        SftpConn *c = s->conn;
        bool broken = s->broken || atomic_load(&c->broken);

        pthread_mutex_lock(&so->lock);
        c->n_borrowed--;
        c->last_active = now_usec(CLOCK_MONOTONIC);
        if (broken)
                so->n_sessions--;
        else {
                s->idle_since = c->last_active;
                so->idle[so->n_idle++] = s;
        }
        pthread_cond_signal(&so->cond);
        pthread_mutex_unlock(&so->lock);
        if (broken)
                pool_free(so, s);
}

/* An idle session (one that holds want's handle if there is such); else a new channel on a
 * connection that has room for one (three round trips); else a new connection while fewer than
 * pool_size exist and fewer than SFTP_CONNECTING_MAX are being set up (connections are made as they
 * are needed, never a burst of handshakes that sshd's MaxStartups would drop); otherwise waits. */
static int pool_borrow_for(SftpOrigin *so, const FileKey *want, usec_t deadline, SftpSession **ret) {
        SftpConn *room;
        int r;

        pthread_mutex_lock(&so->lock);
        for (;;) {
                room = NULL;
                if (so->n_idle > 0)
                        break;
                room = pool_conn_with_room(so);
                if (room || (so->n_conns < so->pool_size && so->n_connecting < SFTP_CONNECTING_MAX))
                        break;

                struct timespec ts;
                usec_t n = now_usec(CLOCK_MONOTONIC);
                if (n >= deadline) {
                        pthread_mutex_unlock(&so->lock);
                        return -ETIMEDOUT;
                }
                clock_gettime(CLOCK_REALTIME, &ts);
                usec_t wait = MIN(deadline - n, 60 * USEC_PER_SEC);
                ts.tv_sec += (time_t) (wait / USEC_PER_SEC);
                ts.tv_nsec += (long) (wait % USEC_PER_SEC) * 1000;
                if (ts.tv_nsec >= 1000000000) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&so->cond, &so->lock, &ts);
        }

        if (so->n_idle > 0) {
                /* The one that holds the file's handle (its OPEN is done), else the most recently
                 * used: the likeliest to be alive. */
                unsigned pick = so->n_idle - 1;
                for (unsigned i = 0; want && i < so->n_idle; i++)
                        if (session_has_handle(so->idle[i], want)) {
                                pick = i;
                                break;
                        }
                SftpSession *s = so->idle[pick];
                SftpConn *c = s->conn;
                so->idle[pick] = so->idle[--so->n_idle];
                usec_t n = now_usec(CLOCK_MONOTONIC);
                /* Idle for two keepalive intervals with nobody sending them: a NAT or the server
                 * may have dropped it without a word, and an operation on a silently dead
                 * connection would wait out its whole deadline. A new one takes its place. */
                bool stale = c->n_borrowed == 0 && n - c->last_active > 2 * (usec_t) so->keepalive_sec * USEC_PER_SEC;
                c->n_borrowed++;
                c->last_active = n;
                pthread_mutex_unlock(&so->lock);

                if (!stale && !atomic_load(&c->broken)) {
                        /* A connection idle past the keepalive interval tells the server (and
                         * NATs) it is still wanted; a dead connection shows up as a failure of
                         * the operation itself, retried at once on a new session. */
                        int next = 0;
                        session_lock(s);
                        if (libssh2_keepalive_send(s->ssh, &next) < 0 &&
                            libssh2_session_last_errno(s->ssh) != LIBSSH2_ERROR_EAGAIN)
                                s->broken = true;
                        (void) session_unlock(s);
                        *ret = s;
                        return 1;       /* reused */
                }
                s->broken = true;
                pool_return(so, s);     /* frees it */
                return pool_borrow_for(so, want, deadline, ret);
        }

        so->n_sessions++;
        if (room) {
                room->adding = true;
                room->n_channels++;
                room->n_borrowed++;
                room->last_active = now_usec(CLOCK_MONOTONIC);
                pthread_mutex_unlock(&so->lock);

                r = session_add_channel(so, room, deadline, ret);

                pthread_mutex_lock(&so->lock);
                room->adding = false;
                if (r < 0) {
                        so->n_sessions--;
                        room->n_borrowed--;
                        room->full = room->full || r == -EBUSY;
                }
                pthread_cond_broadcast(&so->cond);
                pthread_mutex_unlock(&so->lock);
                if (r < 0)
                        pool_release_channel(so, room);
                if (r == -EBUSY)
                        return pool_borrow_for(so, want, deadline, ret);     /* elsewhere */
                return r < 0 ? r : 0;
        }

        so->n_conns++;
        so->n_connecting++;
        pthread_mutex_unlock(&so->lock);

        r = session_new(so, deadline, false, ret);

        pthread_mutex_lock(&so->lock);
        so->n_connecting--;
        if (r < 0) {
                so->n_sessions--;
                so->n_conns--;
        } else {
                (*ret)->conn->n_borrowed = 1;
                (*ret)->conn->last_active = now_usec(CLOCK_MONOTONIC);
                so->conns[so->n_conns_up++] = (*ret)->conn;
        }
        /* Whoever waits for a connect slot, a connection's room or a session may go on. */
        pthread_cond_broadcast(&so->cond);
        pthread_mutex_unlock(&so->lock);
        return r < 0 ? r : 0;
}

static int pool_borrow(SftpOrigin *so, usec_t deadline, SftpSession **ret) {
        return pool_borrow_for(so, NULL, deadline, ret);
}

/* Connects one session into the pool, idle, while fewer than target connections exist and a connect
 * slot is free, leaving SFTP_CONNECTING_SPARE slots to whoever needs a session now (a health check
 * must not wait behind handshakes that a dead server holds until their deadline). A walk calls this
 * on each of its threads as it starts: the handshakes (some ten round trips each) then run side by
 * side with the first one's and the root's listing, instead of one after the other as listings find
 * directories. */
static void pool_connect_ahead(SftpOrigin *so, unsigned target) {
        SftpSession *s = NULL;

        pthread_mutex_lock(&so->lock);
        if (so->n_conns >= MIN(target, so->pool_size) ||
            so->n_connecting >= SFTP_CONNECTING_MAX - SFTP_CONNECTING_SPARE) {
                pthread_mutex_unlock(&so->lock);
                return;
        }
        so->n_sessions++;
        so->n_conns++;
        so->n_connecting++;
        pthread_mutex_unlock(&so->lock);

        int r = session_new(so, now_usec(CLOCK_MONOTONIC) + (usec_t) so->timeout_sec * USEC_PER_SEC, true, &s);
        if (r < 0)
                log_debug_errno(r, "SFTP origin %s: cannot connect a session ahead: %m", so->base.name);

        pthread_mutex_lock(&so->lock);
        so->n_connecting--;
        if (r < 0) {
                so->n_sessions--;
                so->n_conns--;
                pthread_cond_broadcast(&so->cond);
                pthread_mutex_unlock(&so->lock);
                return;
        }
        SftpConn *c = s->conn;
        c->last_active = now_usec(CLOCK_MONOTONIC);
        c->adding = true;
        so->conns[so->n_conns_up++] = c;
        so->idle[so->n_idle++] = s;
        pthread_cond_broadcast(&so->cond);

        /* Its other channels too, one after the other (libssh2 opens one at a time), each idle as
         * soon as it is up: the listings and the reads of what they find take them at once instead
         * of waiting three round trips each. */
        while (c->n_channels < SFTP_CHANNELS && !c->full && !atomic_load(&c->broken)) {
                c->n_channels++;
                so->n_sessions++;
                pthread_mutex_unlock(&so->lock);

                r = session_add_channel(so, c, now_usec(CLOCK_MONOTONIC) + (usec_t) so->timeout_sec * USEC_PER_SEC, &s);

                pthread_mutex_lock(&so->lock);
                if (r < 0) {
                        /* Not c's last channel unless the others went meanwhile: c is not touched
                         * after this. */
                        so->n_sessions--;
                        c->full = c->full || r == -EBUSY;
                        c->adding = false;
                        pthread_cond_broadcast(&so->cond);
                        pthread_mutex_unlock(&so->lock);
                        pool_release_channel(so, c);
                        return;
                }
                so->idle[so->n_idle++] = s;
                pthread_cond_broadcast(&so->cond);
        }
        c->adding = false;
        pthread_cond_broadcast(&so->cond);
        pthread_mutex_unlock(&so->lock);
}

/* Errors that a fresh connection may cure; everything else (the server's answer about a path, a
 * refused host key or login) is final. */
static bool error_is_transient(int r) {
        switch (-r) {
        case ECONNRESET: case ECONNREFUSED: case ECONNABORTED: case ETIMEDOUT: case EHOSTUNREACH:
        case ENETUNREACH: case ENETDOWN: case EPIPE: case ENOTCONN: case EAGAIN:
                return true;
        default:
                return false;
        }
}

typedef ssize_t (*sftp_op_fn)(SftpOrigin *so, SftpSession *s, void *arg, usec_t deadline);

/* Runs op on a borrowed session under one deadline for everything, retries included (D10):
 * a connection error drops the session and tries again on a new one after 100 ms, 500 ms, 2 s;
 * then, or when the deadline passes, -EIO. A failure on a reused session is retried at once the
 * first time: a server that closed an idle connection is not an outage. */
static ssize_t sftp_run_for(SftpOrigin *so, const FileKey *want, const char *what, const char *path,
                            unsigned timeout_sec, sftp_op_fn op, void *arg) {
        static const unsigned backoff_ms[] = { 100, 500, 2000 };
        usec_t deadline = now_usec(CLOCK_MONOTONIC) + (usec_t) timeout_sec * USEC_PER_SEC;
        bool free_retry = true;
        ssize_t r;

        for (unsigned attempt = 0;;) {
                SftpSession *s = NULL;
                int b = pool_borrow_for(so, want, deadline, &s);
                bool reused = b > 0;
                if (b < 0)
                        r = b;
                else {
                        r = op(so, s, arg, deadline);
                        pool_return(so, s);
                }
                if (r >= 0 || !error_is_transient((int) r))
                        return r;

                if (reused && free_retry) {
                        free_retry = false;
                        continue;
                }
                usec_t n = now_usec(CLOCK_MONOTONIC);
                if (attempt >= ELEMENTSOF(backoff_ms) || n + backoff_ms[attempt] * UINT64_C(1000) >= deadline) {
                        log_warning_errno((int) r, "SFTP origin %s: %s %s failed after %u attempt(s): %m",
                                          so->base.name, what, strempty(path), attempt + 1);
                        /* A host that does not resolve stays EHOSTUNREACH, as the S3 origin answers
                         * it: the health check tells a DNS failure apart and rechecks sooner (4.2.5). */
                        return r == -EHOSTUNREACH ? r : -EIO;
                }
                log_debug_errno((int) r, "SFTP origin %s: %s %s failed, retrying in %u ms: %m", so->base.name, what,
                                strempty(path), backoff_ms[attempt]);
                struct timespec ts = { .tv_sec = backoff_ms[attempt] / 1000,
                                       .tv_nsec = (long) (backoff_ms[attempt] % 1000) * 1000000 };
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
                attempt++;
        }
}

static ssize_t sftp_run(SftpOrigin *so, const char *what, const char *path, unsigned timeout_sec, sftp_op_fn op,
                        void *arg) {
        return sftp_run_for(so, NULL, what, path, timeout_sec, op, arg);
}

/* ---- closing handles without waiting -------------------------------------------------------------- */

/* Sends the CLOSE and leaves its answer to the session's next use. libssh2 keeps a close's state in
 * its handle: called again, it reads the answer (queued meanwhile, whatever else ran) and frees the
 * handle. Only a CLOSE that is wholly sent is left pending: a half-written packet would make the
 * next request fail (libssh2 must finish one packet before it starts another), so that one is
 * waited for, as is one past SFTP_CLOSING_MAX. */
static void session_close_handle(SftpSession *s, LIBSSH2_SFTP_HANDLE *handle, usec_t deadline) {
        session_lock(s);
        int rc = libssh2_sftp_close_handle(handle);
        int dirs = session_unlock(s);
        if (rc == LIBSSH2_ERROR_EAGAIN && s->n_closing < SFTP_CLOSING_MAX && !(dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND)) {
                s->closing[s->n_closing++] = handle;
                return;
        }
        if (rc == LIBSSH2_ERROR_EAGAIN)
                SSH_CALL(s, deadline, rc, libssh2_sftp_close_handle(handle));
        if (rc != 0 && rc != LIBSSH2_ERROR_SFTP_PROTOCOL)
                (void) session_error(s, rc, "close");
}

/* Finishes the pending CLOSEs whose answers are there, without waiting for the others. */
static void session_reap_closes(SftpSession *s) {
        unsigned j = 0;
        for (unsigned i = 0; i < s->n_closing; i++) {
                if (s->broken)
                        break;
                session_lock(s);
                int rc = libssh2_sftp_close_handle(s->closing[i]);
                (void) session_unlock(s);
                if (rc == LIBSSH2_ERROR_EAGAIN)
                        s->closing[j++] = s->closing[i];
                else if (rc != 0 && rc != LIBSSH2_ERROR_SFTP_PROTOCOL)
                        (void) session_error(s, rc, "close");
        }
        if (!s->broken)
                s->n_closing = j;
}

/* ---- operations --------------------------------------------------------------------------------- */

static char *remote_path(SftpOrigin *so, const char *rel) {
        char *p;
        if (!rel || !rel[0])
                return strdup(so->root);
        if (asprintf(&p, "%s%s%s", so->root, streq_ptr(so->root, "/") ? "" : "/", rel) < 0)
                return NULL;
        return p;
}

static int attrs_verify_regular(const LIBSSH2_SFTP_ATTRIBUTES *a) {
        if (!(a->flags & LIBSSH2_SFTP_ATTR_PERMISSIONS))
                return 0;       /* the server does not say; take it for a file */
        if (LIBSSH2_SFTP_S_ISREG(a->permissions))
                return 0;
        if (LIBSSH2_SFTP_S_ISDIR(a->permissions))
                return -EISDIR;
        return -EINVAL;
}

static void origin_stat_from_attrs(const LIBSSH2_SFTP_ATTRIBUTES *a, OriginStat *ret) {
        *ret = (OriginStat) {
                .size = (a->flags & LIBSSH2_SFTP_ATTR_SIZE) ? a->filesize : 0,
                .mtime_ns = (a->flags & LIBSSH2_SFTP_ATTR_ACMODTIME) ? (int64_t) a->mtime * INT64_C(1000000000) : 0,
        };
}

typedef struct StatArg {
        const char *path;
        int type;               /* LIBSSH2_SFTP_STAT or _LSTAT */
        LIBSSH2_SFTP_ATTRIBUTES attrs;
} StatArg;

static ssize_t op_stat(SftpOrigin *so, SftpSession *s, void *arg, usec_t deadline) {
        StatArg *a = arg;
        int rc;
        (void) so;
        SSH_CALL(s, deadline, rc, libssh2_sftp_stat_ex(s->sftp, a->path, (unsigned) strlen(a->path), a->type, &a->attrs));
        return rc == 0 ? 0 : session_error(s, rc, "stat");
}

static int sftp_stat(Origin *o, const char *rel_path, OriginStat *ret) {
        SftpOrigin *so = sftp_origin(o);
        int r = origin_rel_path_check(rel_path);
        if (r < 0)
                return r;

        _cleanup_free_ char *p = remote_path(so, rel_path);
        if (!p)
                return -ENOMEM;
        StatArg a = { .path = p, .type = LIBSSH2_SFTP_STAT };
        r = (int) sftp_run(so, "stat", rel_path, so->timeout_sec, op_stat, &a);
        if (r < 0)
                return r;
        r = attrs_verify_regular(&a.attrs);
        if (r < 0)
                return r;
        origin_stat_from_attrs(&a.attrs, ret);
        return 0;
}

static void session_sweep(SftpSession *s, usec_t deadline);
static int session_free_slot_ok(SftpSession *s, usec_t deadline, HandleSlot **ret);

typedef struct OpenArg {
        FileKey *key;
        LIBSSH2_SFTP_ATTRIBUTES attrs;
} OpenArg;

/* OPEN and STAT sent together, one round trip for both: the STAT tells what open() must (that it is
 * there and a regular file) and the size, and the handle stays in the session for the first read,
 * which borrows this session when it is idle (pool_borrow_for()). libssh2 keeps an open's and a
 * stat's state apart (sftp->open_state, sftp->stat_state), so both can be under way; a request is
 * only started once the one before is wholly sent. */
static ssize_t op_open(SftpOrigin *so, SftpSession *s, void *arg, usec_t deadline) {
        OpenArg *a = arg;
        const char *path = a->key->path;
        LIBSSH2_SFTP_HANDLE *handle = NULL;
        bool open_done = false, stat_done = false;
        int open_rc = 0, stat_rc = LIBSSH2_ERROR_EAGAIN, r;
        unsigned long open_status = 0, stat_status = 0;
        (void) so;

        session_sweep(s, deadline);
        if (s->broken)
                return -ECONNRESET;
        s->wait_error = 0;
        for (;;) {
                session_lock(s);
                if (!open_done) {
                        handle = libssh2_sftp_open_ex(s->sftp, path, (unsigned) strlen(path), LIBSSH2_FXF_READ, 0,
                                                      LIBSSH2_SFTP_OPENFILE);
                        open_rc = handle ? 0 : libssh2_session_last_errno(s->ssh);
                        if (open_rc != LIBSSH2_ERROR_EAGAIN) {
                                open_done = true;
                                if (open_rc == LIBSSH2_ERROR_SFTP_PROTOCOL)
                                        open_status = libssh2_sftp_last_error(s->sftp);
                        } else if (libssh2_session_block_directions(s->ssh) & LIBSSH2_SESSION_BLOCK_OUTBOUND)
                                goto wait;      /* the OPEN is not wholly sent yet */
                }
                if (!stat_done) {
                        stat_rc = libssh2_sftp_stat_ex(s->sftp, path, (unsigned) strlen(path), LIBSSH2_SFTP_STAT,
                                                       &a->attrs);
                        if (stat_rc != LIBSSH2_ERROR_EAGAIN) {
                                stat_done = true;
                                if (stat_rc == LIBSSH2_ERROR_SFTP_PROTOCOL)
                                        stat_status = libssh2_sftp_last_error(s->sftp);
                        }
                }
                if (open_done && stat_done) {
                        (void) session_unlock(s);
                        break;
                }
        wait:;
                int dirs = session_unlock(s);
                /* In slices: with two answers due, one may already sit in libssh2's buffers while
                 * the socket stays quiet, so both calls are tried again at least every 20 ms. */
                if (session_wait(s, dirs, MIN(deadline, now_usec(CLOCK_MONOTONIC) + 20 * 1000)) < 0) {
                        if (s->wait_error == -ETIMEDOUT && now_usec(CLOCK_MONOTONIC) < deadline) {
                                s->wait_error = 0;
                                continue;
                        }
                        /* Requests in flight: the session is in an unknown state. */
                        (void) session_error(s, LIBSSH2_ERROR_TIMEOUT, "open");
                        return s->wait_error;
                }
        }

        if (stat_rc != 0 && stat_rc != LIBSSH2_ERROR_SFTP_PROTOCOL)
                r = session_error(s, stat_rc, "stat");
        else if (open_rc != 0 && open_rc != LIBSSH2_ERROR_SFTP_PROTOCOL)
                r = session_error(s, open_rc, "open");
        else if (stat_rc != 0)
                r = sftp_status_to_errno(stat_status);
        else {
                r = attrs_verify_regular(&a->attrs);
                if (r >= 0 && open_rc != 0)
                        r = sftp_status_to_errno(open_status);
        }
        if (r < 0 || s->broken) {
                if (handle && !s->broken)
                        session_close_handle(s, handle, deadline);
                return r < 0 ? r : -ECONNRESET;
        }

        HandleSlot *h = NULL;
        r = session_free_slot_ok(s, deadline, &h);
        if (r < 0)
                return r;
        *h = (HandleSlot) { .key = file_key_ref(a->key), .handle = handle, .pos = 0, .last_used = now_usec(CLOCK_MONOTONIC) };
        return 0;
}

static int sftp_open(Origin *o, const char *rel_path, OriginFile **ret) {
        SftpOrigin *so = sftp_origin(o);
        int r = origin_rel_path_check(rel_path);
        if (r < 0)
                return r;

        _cleanup_free_ char *p = remote_path(so, rel_path);
        if (!p)
                return -ENOMEM;
        size_t n = strlen(p);
        FileKey *k = malloc(sizeof *k + n + 1);
        if (!k)
                return -ENOMEM;
        atomic_init(&k->n_ref, 1);
        atomic_init(&k->closed, false);
        memcpy(k->path, p, n + 1);

        OpenArg a = { .key = k };
        r = (int) sftp_run(so, "open", rel_path, so->timeout_sec, op_open, &a);
        SftpFile *f = r < 0 ? NULL : calloc(1, sizeof *f);
        if (!f) {
                /* A session that kept a handle closes it on its next use. */
                atomic_store(&k->closed, true);
                file_key_unref(k);
                return r < 0 ? r : -ENOMEM;
        }
        f->key = k;
        f->size = (a.attrs.flags & LIBSSH2_SFTP_ATTR_SIZE) ? a.attrs.filesize : UINT64_MAX;
        pthread_mutex_init(&f->lock, NULL);
        *ret = &f->base;
        return 0;
}

/* Closes the handles of files closed since, without waiting for the answers. */
static void session_sweep(SftpSession *s, usec_t deadline) {
        session_reap_closes(s);
        for (size_t i = 0; i < SFTP_HANDLE_SLOTS && !s->broken; i++) {
                HandleSlot *h = &s->slots[i];
                if (!h->key || !atomic_load(&h->key->closed))
                        continue;
                session_close_handle(s, h->handle, deadline);
                file_key_unref(h->key);
                *h = (HandleSlot) {};
        }
}

/* A free slot, the least recently used one's handle closed if none is. */
static HandleSlot *session_free_slot(SftpSession *s, usec_t deadline) {
        HandleSlot *victim = NULL;
        for (size_t i = 0; i < SFTP_HANDLE_SLOTS; i++) {
                HandleSlot *h = &s->slots[i];
                if (!victim || (victim->key && (!h->key || h->last_used < victim->last_used)))
                        victim = h;
        }
        if (victim->key) {
                session_close_handle(s, victim->handle, deadline);
                file_key_unref(victim->key);
                *victim = (HandleSlot) {};
        }
        return victim;
}

static int session_free_slot_ok(SftpSession *s, usec_t deadline, HandleSlot **ret) {
        *ret = session_free_slot(s, deadline);
        return s->broken ? -ECONNRESET : 0;
}

/* The session's handle for the file, opened if it has none (evicting the least recently used). */
static int session_handle(SftpSession *s, FileKey *k, usec_t deadline, HandleSlot **ret) {
        session_sweep(s, deadline);
        if (s->broken)
                return -ECONNRESET;
        for (size_t i = 0; i < SFTP_HANDLE_SLOTS; i++) {
                HandleSlot *h = &s->slots[i];
                if (h->key == k) {
                        *ret = h;
                        return 0;
                }
        }
        HandleSlot *victim = session_free_slot(s, deadline);
        if (s->broken)
                return -ECONNRESET;

        LIBSSH2_SFTP_HANDLE *handle;
        SSH_CALL_PTR(s, deadline, handle, libssh2_sftp_open_ex(s->sftp, k->path, (unsigned) strlen(k->path),
                                                               LIBSSH2_FXF_READ, 0, LIBSSH2_SFTP_OPENFILE));
        if (!handle)
                return session_error(s, s->last_rc, "open");
        *victim = (HandleSlot) { .key = file_key_ref(k), .handle = handle, .pos = 0 };
        *ret = victim;
        return 0;
}

typedef struct ReadArg {
        FileKey *key;
        uint8_t *buf;
        size_t size;
        uint64_t offset;
        uint64_t file_size;     /* at open; UINT64_MAX when unknown */
} ReadArg;

/* Makes libssh2 forget the handle's read stream (requests in flight, buffered data, EOF) and
 * continue at pos. A seek to where it already is would be a no-op, hence the detour. */
static void handle_reset(SftpSession *s, HandleSlot *h, uint64_t pos) {
        session_lock(s);
        libssh2_sftp_seek64(h->handle, pos + 1);
        libssh2_sftp_seek64(h->handle, pos);
        (void) session_unlock(s);
        h->pos = pos;
}

/* Exactly size bytes, fewer only at EOF. A read that continues where the last one on this handle
 * ended needs no seek, so libssh2's read-ahead requests already in flight are used, not discarded. */
static ssize_t op_read(SftpOrigin *so, SftpSession *s, void *arg, usec_t deadline) {
        ReadArg *a = arg;
        HandleSlot *h = NULL;
        size_t done = 0;
        (void) so;

        int r = session_handle(s, a->key, deadline, &h);
        if (r < 0)
                return r;
        h->last_used = now_usec(CLOCK_MONOTONIC);
        /* Only a read that continues this handle's stream keeps reading ahead past its end: reads
         * that jump (the kernel's concurrent 1 MiB requests spread over several sessions) would each
         * leave SFTP_STREAM_AHEAD in flight for the next read to discard (4.5x the file on the wire). */
        bool sequential = h->pos == a->offset;
        if (!sequential)
                handle_reset(s, h, a->offset);
        bool fresh = false;     /* nothing was read since the stream was reset */
        while (done < a->size) {
                ssize_t n;
                s->wait_error = 0;
                for (;;) {
                        /* libssh2 keeps four times the buffer it is given requested ahead: a quarter of
                         * what is left asks for all of it at once, pipelined, and for nothing past it.
                         * A large read that continues the handle's stream (a fill's) streams:
                         * SFTP_STREAM_AHEAD stays requested past its end, so the next sequential read
                         * finds its data under way instead of a round trip's gap (libssh2 drops what a
                         * seek or close leaves unread). */
                        size_t want = a->size - done;
                        size_t ask = a->size >= SFTP_STREAM_MIN && sequential ? SFTP_STREAM_AHEAD / 4 : (want + 3) / 4;
                        session_lock(s);
                        n = libssh2_sftp_read(h->handle, (char *) a->buf + done, MIN(ask, want));
                        int dirs = session_unlock(s);
                        if (n != LIBSSH2_ERROR_EAGAIN)
                                break;
                        if (session_wait(s, dirs, deadline) < 0) {
                                n = LIBSSH2_ERROR_TIMEOUT;
                                break;
                        }
                }
                if (n < 0) {
                        /* The stream's position is unknown now: seek next time. */
                        h->pos = UINT64_MAX;
                        return session_error(s, (int) n, "read");
                }
                if (n == 0) {
                        /* libssh2 1.10 can answer 0 before the end when its pipeline runs dry (a
                         * request not yet sent heads the queue); short is only allowed at EOF, so
                         * below the size the file had, ask again on a reset stream, once. */
                        if (fresh || a->offset + done >= a->file_size)
                                break;
                        log_debug("SFTP read of %s: early 0 at %" PRIu64 ", retrying", a->key->path, a->offset + done);
                        handle_reset(s, h, a->offset + done);
                        fresh = true;
                        continue;
                }
                fresh = false;
                done += (size_t) n;
                h->pos += (uint64_t) n;
        }
        return (ssize_t) done;
}

static ssize_t sftp_read_remote(SftpOrigin *so, SftpFile *f, void *buf, size_t size, uint64_t offset) {
        ReadArg a = { .key = f->key, .buf = buf, .size = size, .offset = offset, .file_size = f->size };
        return sftp_run_for(so, f->key, "read", f->key->path + strlen(so->root), so->timeout_sec, op_read, &a);
}

static ssize_t sftp_pread(OriginFile *file, void *buf, size_t size, uint64_t offset) {
        SftpFile *f = (SftpFile *) file;
        SftpOrigin *so = sftp_origin(file->origin);
        ssize_t n;

        if (size == 0)
                return 0;
        /* A large read goes straight to the caller's buffer. */
        if (size >= SFTP_READAHEAD)
                return sftp_read_remote(so, f, buf, size, offset);

        pthread_mutex_lock(&f->lock);
        if (!(f->ra && offset >= f->ra_off && offset + size <= f->ra_off + f->ra_len) &&
            !(f->ra && offset >= f->ra_off && offset <= f->ra_off + f->ra_len && f->ra_len < SFTP_READAHEAD)) {
                /* Not (all) in the buffer, and the buffer does not end at EOF before it: refill. */
                if (!f->ra) {
                        f->ra = malloc(SFTP_READAHEAD);
                        if (!f->ra) {
                                pthread_mutex_unlock(&f->lock);
                                return -ENOMEM;
                        }
                }
                f->ra_len = 0;
                n = sftp_read_remote(so, f, f->ra, SFTP_READAHEAD, offset);
                if (n < 0) {
                        pthread_mutex_unlock(&f->lock);
                        return n;
                }
                f->ra_off = offset;
                f->ra_len = (size_t) n;
        }
        size_t avail = (size_t) (f->ra_off + f->ra_len - offset);
        n = (ssize_t) MIN(size, avail);
        memcpy(buf, f->ra + (offset - f->ra_off), (size_t) n);
        pthread_mutex_unlock(&f->lock);
        return n;
}

static void sftp_close(OriginFile *file) {
        SftpFile *f = (SftpFile *) file;
        /* Sessions that hold a handle for it close that handle the next time they are borrowed. */
        atomic_store(&f->key->closed, true);
        file_key_unref(f->key);
        pthread_mutex_destroy(&f->lock);
        free(f->ra);
        free(f);
}

static ssize_t op_check(SftpOrigin *so, SftpSession *s, void *arg, usec_t deadline) {
        LIBSSH2_SFTP_ATTRIBUTES attrs;
        int rc;
        (void) arg;
        SSH_CALL(s, deadline, rc, libssh2_sftp_stat_ex(s->sftp, so->root, (unsigned) strlen(so->root),
                                                       LIBSSH2_SFTP_STAT, &attrs));
        if (rc != 0)
                return session_error(s, rc, "stat");
        if ((attrs.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && !LIBSSH2_SFTP_S_ISDIR(attrs.permissions))
                return -ENOTDIR;
        return 0;
}

static int sftp_check(Origin *o) {
        SftpOrigin *so = sftp_origin(o);
        return (int) sftp_run(so, "check", "", MIN(so->timeout_sec, (unsigned) SFTP_CHECK_TIMEOUT_SEC), op_check, NULL);
}

/* ---- the walk ---------------------------------------------------------------------------------- */

/* Directories are listed on up to SFTP_WALK_LISTERS threads at once (each listing is a few round
 * trips: a serial walk of 10-file directories over 20 ms would cap a scan near 100 files/s), each on
 * a session borrowed from the pool for that one directory, with sftp_run()'s retries. The walk's own
 * thread takes the listings as they come and handles their entries: it alone calls fn and skipped,
 * and alone grows the tree of directories; it borrows a session only for what an entry needs (a
 * symlink's stat and realpath) and gives it back after each listing, so a pool of one still walks.
 * SFTP has no inode numbers: a directory loop (a symlink to an ancestor) is found by canonical path,
 * asked of the server (realpath) only for directories reached through a symlink. */
#define SFTP_WALK_LISTERS 8

typedef struct WalkDir {
        struct WalkDir *parent;
        struct WalkDir *next_todo;
        char *rel;              /* "" for the walk's start */
        char *canon;            /* the server's canonical path */
} WalkDir;

typedef struct WalkEntry {
        char *name;
        LIBSSH2_SFTP_ATTRIBUTES attrs;
} WalkEntry;

typedef struct WalkListing {
        struct WalkListing *next;
        WalkDir *dir;
        WalkEntry *entries;
        size_t n;
        int r;
        bool conn_failed;       /* r came from the connection, not from the server's answer */
} WalkListing;

typedef struct SftpWalk {
        SftpOrigin *so;
        SftpSession *s;         /* the walk thread's, borrowed while it handles one listing's entries */
        origin_walk_fn fn;
        origin_walk_skipped_fn skipped;
        void *userdata;
        unsigned n_unread;
        unsigned n_sessions_ahead;      /* sessions the listers connect as they start (the walk's included) */
        bool conn_failed;
        WalkDir **dirs;         /* every directory seen, freed at the end (the walk thread's) */
        size_t n_dirs, n_dirs_allocated;

        pthread_mutex_t lock;   /* what follows */
        pthread_cond_t todo_cond, done_cond;
        WalkDir *todo;          /* still to list */
        WalkListing *done, **done_tail;
        unsigned n_listing;     /* being listed */
        int error;              /* a lister could not report a listing */
        bool stop;
} SftpWalk;

static void walk_listing_free(WalkListing *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++)
                free(l->entries[i].name);
        free(l->entries);
        free(l);
}

static void walk_done(SftpWalk *w) {
        for (size_t i = 0; i < w->n_dirs; i++) {
                free(w->dirs[i]->rel);
                free(w->dirs[i]->canon);
                free(w->dirs[i]);
        }
        free(w->dirs);
        while (w->done) {
                WalkListing *l = w->done;
                w->done = l->next;
                walk_listing_free(l);
        }
        if (w->s)
                pool_return(w->so, w->s);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->todo_cond);
        pthread_cond_destroy(&w->done_cond);
}

static int walk_add_dir(SftpWalk *w, WalkDir *parent, char *rel, char *canon) {
        WalkDir *d = calloc(1, sizeof *d);
        if (!d || GREEDY_REALLOC(w->dirs, w->n_dirs_allocated, w->n_dirs + 1) < 0) {
                free(d);
                free(rel);
                free(canon);
                return -ENOMEM;
        }
        *d = (WalkDir) { .parent = parent, .rel = rel, .canon = canon };
        w->dirs[w->n_dirs++] = d;
        pthread_mutex_lock(&w->lock);
        d->next_todo = w->todo;
        w->todo = d;
        pthread_cond_signal(&w->todo_cond);
        pthread_mutex_unlock(&w->lock);
        return 0;
}

static usec_t walk_deadline(SftpWalk *w) {
        return now_usec(CLOCK_MONOTONIC) + (usec_t) w->so->timeout_sec * USEC_PER_SEC;
}

static bool errno_is_gone(int err) {
        return err == ENOENT || err == ENOTDIR || err == ELOOP;
}

static int walk_skip(SftpWalk *w, const char *rel, int err) {
        if (errno_is_gone(err)) {
                log_warning_errno(err, "Skipping %s/%s (a dangling symlink, or removed while we looked): %m",
                                  w->so->base.url, rel);
                return 0;
        }
        log_warning_errno(err, "Skipping %s/%s: %m", w->so->base.url, rel);
        if (w->n_unread < INT_MAX)
                w->n_unread++;
        return w->skipped ? w->skipped(rel, -err, w->userdata) : 0;
}

/* The walk thread's session, borrowed when an entry first needs one. */
static int walk_session(SftpWalk *w) {
        if (w->s)
                return 0;
        int r = pool_borrow(w->so, walk_deadline(w), &w->s);
        if (r < 0) {
                w->s = NULL;
                w->conn_failed = true;
                return r;
        }
        return 0;
}

static int walk_realpath(SftpWalk *w, const char *path, char **ret) {
        char buf[PATH_MAX];
        int rc;
        SSH_CALL(w->s, walk_deadline(w), rc, libssh2_sftp_symlink_ex(w->s->sftp, path, (unsigned) strlen(path), buf,
                                                                    sizeof buf - 1, LIBSSH2_SFTP_REALPATH));
        if (rc < 0)
                return session_error(w->s, rc, "realpath");
        buf[MIN((size_t) rc, sizeof buf - 1)] = '\0';
        *ret = strdup(buf);
        return *ret ? 0 : -ENOMEM;
}

typedef struct ListArg {
        const char *path;
        unsigned timeout_sec;
        WalkEntry *entries;
        size_t n;
        bool conn_failed;
} ListArg;

/* Reads the whole directory; its handle's CLOSE is answered on the session's next use. */
static ssize_t op_list(SftpOrigin *so, SftpSession *s, void *arg, usec_t deadline) {
        ListArg *a = arg;
        LIBSSH2_SFTP_HANDLE *dh;
        WalkEntry *e = NULL;
        size_t n = 0, allocated = 0;
        int rc, r = 0;
        (void) so;
#define LIST_DEADLINE (now_usec(CLOCK_MONOTONIC) + (usec_t) a->timeout_sec * USEC_PER_SEC)

        a->conn_failed = true;
        session_sweep(s, deadline);
        if (s->broken)
                return -ECONNRESET;
        SSH_CALL_PTR(s, LIST_DEADLINE, dh, libssh2_sftp_open_ex(s->sftp, a->path, (unsigned) strlen(a->path), 0, 0,
                                                                 LIBSSH2_SFTP_OPENDIR));
        if (!dh) {
                r = session_error(s, s->last_rc, "opendir");
                a->conn_failed = s->broken;
                return r;
        }
        for (;;) {
                char name[NAME_MAX + 1];
                LIBSSH2_SFTP_ATTRIBUTES attrs;
                SSH_CALL(s, LIST_DEADLINE, rc, libssh2_sftp_readdir_ex(dh, name, sizeof name, NULL, 0, &attrs));
                if (rc == 0)
                        break;
                if (rc < 0) {
                        r = session_error(s, rc, "readdir");
                        break;
                }
                if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                        continue;
                if (GREEDY_REALLOC(e, allocated, n + 1) < 0) {
                        r = -ENOMEM;
                        break;
                }
                e[n].name = strdup(name);
                if (!e[n].name) {
                        r = -ENOMEM;
                        break;
                }
                e[n++].attrs = attrs;
        }
#undef LIST_DEADLINE
        if (!s->broken)
                session_close_handle(s, dh, deadline);
        if (r < 0) {
                for (size_t i = 0; i < n; i++)
                        free(e[i].name);
                free(e);
                a->conn_failed = s->broken;
                return r;
        }
        a->entries = e;
        a->n = n;
        a->conn_failed = false;
        return 0;
}

static void *walk_lister(void *userdata) {
        SftpWalk *w = userdata;

        pool_connect_ahead(w->so, w->n_sessions_ahead);
        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->stop && !w->todo)
                        pthread_cond_wait(&w->todo_cond, &w->lock);
                if (w->stop)
                        break;
                WalkDir *d = w->todo;
                w->todo = d->next_todo;
                w->n_listing++;
                pthread_mutex_unlock(&w->lock);

                _cleanup_free_ char *path = remote_path(w->so, d->rel);
                WalkListing *l = calloc(1, sizeof *l);
                if (l) {
                        ListArg a = { .path = path, .timeout_sec = w->so->timeout_sec, .conn_failed = true };
                        l->dir = d;
                        l->r = path ? (int) sftp_run(w->so, "list", d->rel, w->so->timeout_sec, op_list, &a) : -ENOMEM;
                        l->conn_failed = l->r < 0 && a.conn_failed && path;
                        l->entries = a.entries;
                        l->n = a.n;
                }

                pthread_mutex_lock(&w->lock);
                w->n_listing--;
                if (l) {
                        *w->done_tail = l;
                        w->done_tail = &l->next;
                } else if (w->error == 0)
                        w->error = -ENOMEM;
                pthread_cond_signal(&w->done_cond);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

static int walk_entry(SftpWalk *w, WalkDir *dir, WalkEntry *e) {
        _cleanup_free_ char *rel = NULL, *path = NULL;
        LIBSSH2_SFTP_ATTRIBUTES a = e->attrs;
        bool via_link = false;
        int r, rc;

        if (asprintf(&rel, "%s%s%s", dir->rel, dir->rel[0] ? "/" : "", e->name) < 0)
                return -ENOMEM;
        path = remote_path(w->so, rel);
        if (!path)
                return -ENOMEM;

        if (!(a.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) || LIBSSH2_SFTP_S_ISLNK(a.permissions)) {
                via_link = true;
                r = walk_session(w);
                if (r < 0)
                        return r;
                SSH_CALL(w->s, walk_deadline(w), rc, libssh2_sftp_stat_ex(w->s->sftp, path, (unsigned) strlen(path),
                                                                          LIBSSH2_SFTP_STAT, &a));
                if (rc != 0) {
                        r = session_error(w->s, rc, "stat");
                        return w->s->broken ? r : walk_skip(w, rel, -r);
                }
        }
        if (!(a.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) || LIBSSH2_SFTP_S_ISREG(a.permissions)) {
                OriginStat st;
                origin_stat_from_attrs(&a, &st);
                return w->fn(rel, &st, w->userdata);
        }
        if (LIBSSH2_SFTP_S_ISDIR(a.permissions)) {
                _cleanup_free_ char *canon = NULL;
                if (via_link) {
                        r = walk_realpath(w, path, &canon);
                        if (r < 0)
                                return w->s->broken ? r : walk_skip(w, rel, -r);
                } else if (asprintf(&canon, "%s%s%s", dir->canon, streq_ptr(dir->canon, "/") ? "" : "/", e->name) < 0)
                        return -ENOMEM;
                /* Two links to one directory are both listed, as a reader would see them; only a
                 * directory that is its own ancestor is not entered. */
                for (WalkDir *p = dir; p; p = p->parent)
                        if (streq_ptr(p->canon, canon)) {
                                log_warning("Skipping %s/%s: it leads back to %s%s%s (a directory loop)",
                                            w->so->base.url, rel, w->so->base.url, p->rel[0] ? "/" : "", p->rel);
                                return 0;
                        }
                return walk_add_dir(w, dir, TAKE_PTR(rel), TAKE_PTR(canon));
        }
        log_notice("Skipping %s/%s: not a regular file or directory", w->so->base.url, rel);
        return 0;
}

/* Hands each listing to walk_entry() as it comes, until none is left or one fails the walk. */
static int walk_run(SftpWalk *w, Origin *o, const char *rel_dir) {
        int r = 0;

        for (;;) {
                pthread_mutex_lock(&w->lock);
                while (!w->done && (w->todo || w->n_listing > 0) && w->error == 0)
                        pthread_cond_wait(&w->done_cond, &w->lock);
                WalkListing *l = w->done;
                if (l) {
                        w->done = l->next;
                        if (!w->done)
                                w->done_tail = &w->done;
                }
                int error = w->error;
                pthread_mutex_unlock(&w->lock);
                if (error < 0) {
                        walk_listing_free(l);
                        return error;
                }
                if (!l)
                        return 0;       /* nothing listed, nothing to list: done */

                WalkDir *d = l->dir;
                if (l->r < 0) {
                        r = l->r;
                        if (l->conn_failed || !d->parent) {
                                r = log_error_errno(r, "Failed to list %s%s%s: %m", o->url, d->rel[0] ? "/" : "", d->rel);
                                if (!d->parent && rel_dir[0] && errno_is_gone(-r))
                                        r = -ENOENT;
                        } else
                                r = walk_skip(w, d->rel, -r);
                }
                for (size_t i = 0; i < l->n && r >= 0; i++) {
                        r = walk_entry(w, d, &l->entries[i]);
                        if (r < 0 && (w->conn_failed || (w->s && w->s->broken)))
                                log_error_errno(r, "Walk of %s stopped, the connection failed: %m", o->url);
                }
                walk_listing_free(l);
                if (w->s) {
                        pool_return(w->so, w->s);
                        w->s = NULL;
                }
                if (r < 0)
                        return r;
        }
}

static int sftp_walk_under(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped,
                           void *userdata) {
        SftpOrigin *so = sftp_origin(o);
        _cleanup_(walk_done) SftpWalk w = {
                .so = so,
                .fn = fn,
                .skipped = skipped,
                .userdata = userdata,
                .lock = PTHREAD_MUTEX_INITIALIZER,
                .todo_cond = PTHREAD_COND_INITIALIZER,
                .done_cond = PTHREAD_COND_INITIALIZER,
        };
        _cleanup_free_ char *start = NULL, *rel = NULL, *canon = NULL;
        pthread_t listers[SFTP_WALK_LISTERS];
        unsigned n_listers = 0;
        bool root_failed = false;
        int r = 0;

        w.done_tail = &w.done;
        if (rel_dir[0] && origin_rel_path_check(rel_dir) < 0)
                return -EINVAL;
        start = remote_path(so, rel_dir);
        rel = strdup(rel_dir);
        if (!start || !rel)
                return -ENOMEM;

        /* The listers start first: each connects a session ahead while the walk's own one checks
         * the root, so the handshakes overlap (half the pool lists, one lister at least: readers of
         * the files found need sessions too). They wait for the root's listing to be queued. */
        unsigned want = MIN(so->pool_size > 1 ? so->pool_size / 2 : 1u, (unsigned) SFTP_WALK_LISTERS);
        w.n_sessions_ahead = want;
        while (n_listers < want) {
                int k = pthread_create(&listers[n_listers], NULL, walk_lister, &w);
                if (k != 0) {
                        if (n_listers == 0)
                                r = log_error_errno(k, "SFTP origin %s: cannot start a walk thread: %m", o->name);
                        break;
                }
                n_listers++;
        }

        usec_t deadline = now_usec(CLOCK_MONOTONIC) + (usec_t) so->timeout_sec * USEC_PER_SEC;
        for (unsigned attempt = 0; n_listers > 0; attempt++) {
                r = pool_borrow(so, deadline, &w.s);
                if (r >= 0) {
                        /* OpenSSH's realpath of a missing path can be a plain failure: stat tells. */
                        StatArg a = { .path = start, .type = LIBSSH2_SFTP_STAT };
                        r = (int) op_stat(so, w.s, &a, deadline);
                        if (r >= 0 && (a.attrs.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) &&
                            !LIBSSH2_SFTP_S_ISDIR(a.attrs.permissions))
                                r = -ENOTDIR;
                        if (r >= 0)
                                r = walk_realpath(&w, start, &canon);
                        if (r >= 0 || !w.s->broken || attempt > 0)
                                break;
                        pool_return(so, w.s);   /* a stale idle session: once more on a new one */
                        w.s = NULL;
                        continue;
                }
                w.s = NULL;
                if (!error_is_transient(r) || attempt > 0 || now_usec(CLOCK_MONOTONIC) >= deadline)
                        break;
        }
        if (w.s) {
                /* The listers borrow their own: a pool of one must not wait on the walk's. */
                pool_return(so, w.s);
                w.s = NULL;
        }
        if (n_listers > 0 && r < 0) {
                root_failed = true;
                if (!(rel_dir[0] && errno_is_gone(-r)))
                        r = log_error_errno(r, "Failed to open origin directory %s%s%s: %m", o->url, rel_dir[0] ? "/" : "",
                                            rel_dir);
        } else if (n_listers > 0)
                r = walk_add_dir(&w, NULL, TAKE_PTR(rel), TAKE_PTR(canon));
        if (r >= 0)
                r = walk_run(&w, o, rel_dir);

        pthread_mutex_lock(&w.lock);
        w.stop = true;
        pthread_cond_broadcast(&w.todo_cond);
        pthread_mutex_unlock(&w.lock);
        for (unsigned i = 0; i < n_listers; i++)
                pthread_join(listers[i], NULL);
        if (root_failed)
                return r;
        if (r < 0)
                return error_is_transient(r) ? -EIO : r;
        return (int) w.n_unread;
}

static int sftp_walk(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        return sftp_walk_under(o, "", fn, skipped, userdata);
}

/* ---- the origin ----------------------------------------------------------------------------------- */

static void sftp_free(Origin *o) {
        SftpOrigin *so = sftp_origin(o);

        /* No borrower is left: the last reference is gone. */
        while (so->n_idle > 0)
                pool_free(so, so->idle[--so->n_idle]);
        pthread_mutex_destroy(&so->lock);
        pthread_cond_destroy(&so->cond);
        free(so->host);
        free(so->user);
        free(so->root);
        free(so->identity_file);
        free(so->known_hosts);
        free(so->fingerprint);
        if (so->default_identities)
                for (char **k = so->default_identities; *k; k++)
                        free(*k);
        free(so->default_identities);
        free(so);
}

static const OriginOps sftp_ops = {
        .kind = "sftp",
        .stat = sftp_stat,
        .open = sftp_open,
        .pread = sftp_pread,
        .close = sftp_close,
        .walk = sftp_walk,
        .walk_under = sftp_walk_under,
        .check = sftp_check,
        .free = sftp_free,
        .own_timeouts = true,   /* every wait is a poll() under the operation's deadline */
};

static const char *home_dir(void) {
        const char *h = getenv("HOME");
        if (h && h[0] == '/')
                return h;
        struct passwd *pw = getpwuid(geteuid());
        return pw && pw->pw_dir ? pw->pw_dir : NULL;
}

static int strdup_or_null(const char *s, char **ret) {
        *ret = NULL;
        if (!s || !s[0])
                return 0;
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

int origin_sftp_new(const char *name, const SftpOriginOptions *opts, unsigned priority, Origin **ret) {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        const char *home = home_dir();
        int r;

        if (!name || !name[0] || !opts || !opts->host || !opts->host[0] || !ret)
                return -EINVAL;
        if (opts->port > 65535 || opts->pool_size > SFTP_POOL_MAX)
                return -ERANGE;
        if (opts->host_key_fingerprint && strncmp(opts->host_key_fingerprint, "SHA256:", 7) != 0)
                return log_error_errno(EINVAL, "SFTP origin %s: host_key_fingerprint must be \"SHA256:<base64>\" as ssh-keygen -l prints it",
                                       name);
        pthread_once(&once, libssh2_init_once);

        SftpOrigin *so = calloc(1, sizeof *so);
        if (!so)
                return -ENOMEM;
        pthread_mutex_init(&so->lock, NULL);
        pthread_cond_init(&so->cond, NULL);
        so->base = (Origin) { .ops = &sftp_ops, .priority = priority };
        so->port = opts->port ?: SFTP_DEFAULT_PORT;
        so->pool_size = opts->pool_size ?: SFTP_DEFAULT_POOL_SIZE;
        so->timeout_sec = opts->timeout_sec ?: SFTP_DEFAULT_TIMEOUT_SEC;
        so->keepalive_sec = opts->keepalive_sec ?: SFTP_DEFAULT_KEEPALIVE_SEC;
        so->base.timeout_ms = so->timeout_sec * 1000;
        so->use_agent = opts->use_agent;

        r = -ENOMEM;
        if (strdup_or_null(name, &so->base.name) < 0 || strdup_or_null(opts->host, &so->host) < 0 ||
            strdup_or_null(opts->identity_file, &so->identity_file) < 0 ||
            strdup_or_null(opts->host_key_fingerprint, &so->fingerprint) < 0)
                goto fail;

        if (opts->user && opts->user[0])
                so->user = strdup(opts->user);
        else {
                struct passwd *pw = getpwuid(geteuid());
                so->user = strdup(pw && pw->pw_name ? pw->pw_name : "root");
        }
        if (!so->user)
                goto fail;

        /* The root without trailing slashes; "" (the login directory) is ".". */
        const char *path = opts->path && opts->path[0] ? opts->path : ".";
        so->root = strdup(path);
        if (!so->root)
                goto fail;
        for (size_t n = strlen(so->root); n > 1 && so->root[n - 1] == '/';)
                so->root[--n] = '\0';

        if (opts->known_hosts && opts->known_hosts[0])
                so->known_hosts = strdup(opts->known_hosts);
        else if (home && asprintf(&so->known_hosts, "%s/.ssh/known_hosts", home) < 0)
                so->known_hosts = NULL;
        if (!so->known_hosts && (opts->known_hosts || home))
                goto fail;

        if (!so->identity_file && home) {
                static const char *const defaults[] = { "id_ed25519", "id_ecdsa", "id_rsa" };
                so->default_identities = calloc(ELEMENTSOF(defaults) + 1, sizeof(char *));
                if (!so->default_identities)
                        goto fail;
                for (size_t i = 0, j = 0; i < ELEMENTSOF(defaults); i++)
                        if (asprintf(&so->default_identities[j++], "%s/.ssh/%s", home, defaults[i]) < 0) {
                                so->default_identities[--j] = NULL;
                                goto fail;
                        }
        }

        /* Never a password or key: user, host, port and path only. */
        bool v6 = strchr(so->host, ':');
        if (asprintf(&so->base.url, "sftp://%s@%s%s%s:%u%s%s", so->user, v6 ? "[" : "", so->host, v6 ? "]" : "",
                     so->port, so->root[0] == '/' ? "" : "/", so->root) < 0) {
                so->base.url = NULL;
                goto fail;
        }

        *ret = &so->base;
        return 0;

fail:
        free(so->base.name);
        free(so->base.url);
        sftp_free(&so->base);
        return r;
}
