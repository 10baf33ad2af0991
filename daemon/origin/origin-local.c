/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The local origin: a directory on a mounted filesystem. Every path is resolved relative to a
 * directory fd opened once, so no operation is limited by PATH_MAX and a rename of the directory's
 * parents does not move the origin under us.
 *
 * Timeouts (D10: 5 s per local operation) are not enforced here yet: a hung NFS or USB mount blocks
 * the calling thread. They belong in the origin_*() wrappers of origin.c, which every caller goes
 * through, so this file stays plain synchronous syscalls. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "origin-internal.h"

typedef struct LocalOrigin {
        Origin base;
        int root_fd;            /* O_PATH|O_DIRECTORY */
} LocalOrigin;

typedef struct LocalFile {
        OriginFile base;
        int fd;
} LocalFile;

static LocalOrigin *local_origin(Origin *o) {
        return (LocalOrigin *) o;
}

static int64_t timespec_to_ns(const struct timespec *ts) {
        int64_t ns;
        if (__builtin_mul_overflow((int64_t) ts->tv_sec, INT64_C(1000000000), &ns) ||
            __builtin_add_overflow(ns, (int64_t) ts->tv_nsec, &ns))
                return ts->tv_sec < 0 ? INT64_MIN : INT64_MAX;
        return ns;
}

static void origin_stat_from_stat(const struct stat *st, OriginStat *ret) {
        *ret = (OriginStat) {
                .size = st->st_size > 0 ? (uint64_t) st->st_size : 0,
                .mtime_ns = timespec_to_ns(&st->st_mtim),
        };
}

static int stat_verify_regular(const struct stat *st) {
        if (S_ISREG(st->st_mode))
                return 0;
        if (S_ISDIR(st->st_mode))
                return -EISDIR;
        return -EINVAL;
}

/* The kernel refuses a path of PATH_MAX bytes or more, but the walk does not stop there: a file it
 * found that deep is reached one directory at a time. Returns the parent directory and the last
 * component. rel_path has been checked already. */
static int open_parent_by_components(int root_fd, const char *rel_path, int *ret_fd, const char **ret_name) {
        const char *last = strrchr(rel_path, '/');
        if (!last)
                return -ENAMETOOLONG;   /* a single name that long cannot exist */

        _cleanup_close_ int fd = -EBADF;
        for (const char *p = rel_path; p < last;) {
                size_t len = strcspn(p, "/");
                char name[NAME_MAX + 1];
                if (len > NAME_MAX)
                        return -ENAMETOOLONG;
                memcpy(name, p, len);
                name[len] = '\0';

                int next = openat(fd >= 0 ? fd : root_fd, name, O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (next < 0)
                        return negative_errno();
                closep(&fd);
                fd = next;
                p += len + 1;
        }

        *ret_fd = TAKE_FD(fd);
        *ret_name = last + 1;
        return 0;
}

static int local_stat(Origin *o, const char *rel_path, OriginStat *ret) {
        int r = origin_rel_path_check(rel_path);
        if (r < 0)
                return r;

        int root_fd = local_origin(o)->root_fd;
        struct stat st;
        if (fstatat(root_fd, rel_path, &st, 0) < 0) {
                if (errno != ENAMETOOLONG)
                        return negative_errno();

                _cleanup_close_ int dir_fd = -EBADF;
                const char *name;
                r = open_parent_by_components(root_fd, rel_path, &dir_fd, &name);
                if (r < 0)
                        return r;
                if (fstatat(dir_fd, name, &st, 0) < 0)
                        return negative_errno();
        }
        r = stat_verify_regular(&st);
        if (r < 0)
                return r;

        origin_stat_from_stat(&st, ret);
        return 0;
}

static int local_open(Origin *o, const char *rel_path, OriginFile **ret) {
        int r = origin_rel_path_check(rel_path);
        if (r < 0)
                return r;

        /* O_NONBLOCK so that a FIFO planted in the library cannot hang us in open(); it is cleared
         * again once we know the file is regular. */
        const int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
        _cleanup_close_ int dir_fd = -EBADF;
        int at_fd = local_origin(o)->root_fd;
        const char *name = rel_path;

        if (strlen(rel_path) >= PATH_MAX) {
                r = open_parent_by_components(at_fd, rel_path, &dir_fd, &name);
                if (r < 0)
                        return r;
                at_fd = dir_fd;
        }

        /* O_NOATIME spares the disk a metadata write per open, but only the file's owner may ask. */
        _cleanup_close_ int fd = openat(at_fd, name, flags | O_NOATIME);
        if (fd < 0 && errno == EPERM)
                fd = openat(at_fd, name, flags);
        if (fd < 0)
                return negative_errno();

        struct stat st;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        r = stat_verify_regular(&st);
        if (r < 0)
                return r;

        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
                return negative_errno();

        LocalFile *f = calloc(1, sizeof *f);
        if (!f)
                return -ENOMEM;
        f->fd = TAKE_FD(fd);

        *ret = &f->base;
        return 0;
}

static ssize_t local_pread(OriginFile *file, void *buf, size_t size, uint64_t offset) {
        LocalFile *f = (LocalFile *) file;

        for (;;) {
                ssize_t n = pread(f->fd, buf, size, (off_t) offset);
                if (n >= 0)
                        return n;
                if (errno != EINTR)
                        return negative_errno();
        }
}

/* Bytes the page cache holds, without waiting on the device (D10's fast path: origin.c skips the
 * worker hop when this answers). -EAGAIN when the read would wait, or the file system cannot say. */
static ssize_t local_pread_nowait(OriginFile *file, void *buf, size_t size, uint64_t offset) {
        LocalFile *f = (LocalFile *) file;
        struct iovec iov = { .iov_base = buf, .iov_len = size };

        ssize_t n = preadv2(f->fd, &iov, 1, (off_t) offset, RWF_NOWAIT);
        return n >= 0 ? n : -EAGAIN;
}

static void local_close(OriginFile *file) {
        LocalFile *f = (LocalFile *) file;
        closep(&f->fd);
        free(f);
}

static int local_check(Origin *o) {
        LocalOrigin *l = local_origin(o);
        struct stat st;

        if (fstat(l->root_fd, &st) < 0)
                return negative_errno();
        if (!S_ISDIR(st.st_mode))
                return -ENOTDIR;
        /* Our fd keeps a removed directory alive; without a link it serves nothing new. */
        if (st.st_nlink == 0)
                return -ENOENT;
        /* Nor does a directory moved away from its configured path (renamed, or another mounted
         * over it): the fd would follow it, but the origin is what lives at the path. A path we may
         * not search (the fd was opened with more privileges) proves nothing either way. */
        struct stat path_st;
        if (stat(o->url, &path_st) < 0) {
                if (errno == ENOENT || errno == ENOTDIR)
                        return negative_errno();
        } else if (path_st.st_dev != st.st_dev || path_st.st_ino != st.st_ino)
                return -ESTALE;

        /* A dead disk or a stale network mount often still answers fstat from cached attributes;
         * listing the directory makes it go to the device. */
        int fd = openat(l->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        DIR *d = fdopendir(fd);
        if (!d) {
                int r = negative_errno();
                close(fd);
                return r;
        }

        errno = 0;
        int r = readdir(d) ? 0 : (errno > 0 ? -errno : -EIO);   /* "." at least must be there */
        closedir(d);
        return r;
}

/* The walk is iterative, with one open directory per level of the current branch, so a deep tree
 * costs heap rather than stack, and only running out of fds (returned, for the scanner to decide)
 * bounds its depth.
 *
 * An entry it cannot read is skipped, but not silently: it is counted and reported, because the
 * scanner removes what a walk did not see, and a directory that failed with EIO this once must not
 * take its files out of the library. */
typedef struct WalkFrame {
        DIR *dir;
        dev_t dev;
        ino_t ino;
        size_t path_len;        /* length of this directory's rel_path in Walk.path */
} WalkFrame;

typedef struct Walk {
        LocalOrigin *origin;
        origin_walk_fn fn;
        origin_walk_skipped_fn skipped;
        void *userdata;
        unsigned n_unread;      /* entries skipped for an error that hides what they hold */
        WalkFrame *frames;
        size_t n_frames;
        size_t n_allocated;
        char *path;             /* rel_path of the current entry, NUL-terminated */
        size_t path_allocated;
} Walk;

static void walk_done(Walk *w) {
        while (w->n_frames > 0)
                closedir(w->frames[--w->n_frames].dir);
        free(w->frames);
        free(w->path);
}

/* Makes w->path "<parent>/<name>" (just "<name>" at the root) and returns its length. */
static int walk_path_set(Walk *w, size_t parent_len, const char *name, size_t *ret_len) {
        size_t name_len = strlen(name);
        size_t sep = parent_len > 0;
        size_t need = parent_len + sep + name_len + 1;

        if (need > w->path_allocated) {
                size_t n = w->path_allocated ? w->path_allocated : 256;
                while (n < need)
                        n *= 2;
                char *p = realloc(w->path, n);
                if (!p)
                        return -ENOMEM;
                w->path = p;
                w->path_allocated = n;
        }

        if (sep)
                w->path[parent_len] = '/';
        memcpy(w->path + parent_len + sep, name, name_len + 1);
        *ret_len = parent_len + sep + name_len;
        return 0;
}

static bool errno_is_resource_shortage(int err) {
        return err == EMFILE || err == ENFILE || err == ENOMEM;
}

/* The entry is not there to read: removed (or replaced by a file) while we looked, a dangling
 * symlink, a symlink loop. Nothing hides behind it, so the walk is no less complete for it. */
static bool errno_is_gone(int err) {
        return err == ENOENT || err == ENOTDIR || err == ELOOP;
}

/* w->path is an entry whose contents the walk could not learn. */
static int walk_unread(Walk *w, int err) {
        if (w->n_unread < INT_MAX)
                w->n_unread++;
        return w->skipped ? w->skipped(w->path, -err, w->userdata) : 0;
}

/* An entry we cannot use costs one log line, and the walk goes on; running out of fds or memory
 * stops it, since every later entry would fail the same way. */
static int walk_skip(Walk *w, int err) {
        if (errno_is_resource_shortage(err))
                return log_debug_errno(err, "Walk of %s stopped at %s: %m", w->origin->base.url, w->path);
        if (err == ENOENT)
                log_warning_errno(err, "Skipping %s/%s (a dangling symlink, or removed while we looked): %m",
                                  w->origin->base.url, w->path);
        else
                log_warning_errno(err, "Skipping %s/%s: %m", w->origin->base.url, w->path);
        if (errno_is_gone(err))
                return 0;
        return walk_unread(w, err);
}

/* Below the root a directory we cannot list is skipped; the root itself failing fails the walk. */
static int walk_skip_dir(Walk *w, int err) {
        if (w->n_frames == 0)
                return log_error_errno(err, "Failed to list origin directory %s: %m", w->origin->base.url);
        return walk_skip(w, err);
}

/* Takes fd, a directory whose rel_path is the first path_len bytes of w->path. */
static int walk_push(Walk *w, int fd, size_t path_len) {
        _cleanup_close_ int dfd = fd;
        struct stat st;

        if (fstat(dfd, &st) < 0)
                return walk_skip_dir(w, errno);
        /* Listable but not searchable: every entry would fail its stat. One line for the directory
         * instead. The mode bits spare the syscall in the usual case. */
        if (!(st.st_mode & S_IXOTH) && faccessat(dfd, ".", X_OK, AT_EACCESS) < 0)
                return walk_skip_dir(w, errno);

        /* Following symlinks makes cycles possible (a/b -> ..): a directory that is its own
         * ancestor would be entered forever. Comparing against the ancestors only, not every
         * directory seen, keeps two links to one directory both listed, as a reader would see them. */
        for (size_t i = 0; i < w->n_frames; i++)
                if (w->frames[i].dev == st.st_dev && w->frames[i].ino == st.st_ino) {
                        log_warning("Skipping %s/%s: it leads back to %s%s%.*s (a directory loop)",
                                    w->origin->base.url, w->path, w->origin->base.url,
                                    w->frames[i].path_len > 0 ? "/" : "",
                                    (int) w->frames[i].path_len, w->path);
                        return 0;
                }

        if (GREEDY_REALLOC(w->frames, w->n_allocated, w->n_frames + 1) < 0)
                return -ENOMEM;

        DIR *d = fdopendir(dfd);
        if (!d)
                return walk_skip_dir(w, errno);
        TAKE_FD(dfd);

        w->frames[w->n_frames++] = (WalkFrame) {
                .dir = d,
                .dev = st.st_dev,
                .ino = st.st_ino,
                .path_len = path_len,
        };
        return 0;
}

static int walk_entry(Walk *w, int dir_fd, const struct dirent *de, size_t path_len) {
        unsigned char type = de->d_type;
        struct stat st;

        /* d_type spares a stat for directories; files need one for size and mtime anyway. */
        switch (type) {
        case DT_REG:
                if (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return walk_skip(w, errno);
                break;
        case DT_DIR:
                break;
        case DT_LNK:
        case DT_UNKNOWN:
                if (fstatat(dir_fd, de->d_name, &st, 0) < 0)
                        return walk_skip(w, errno);
                type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
                break;
        default:
                type = DT_UNKNOWN;
        }

        if (type == DT_REG) {
                if (!S_ISREG(st.st_mode))       /* replaced since readdir */
                        return 0;
                /* A file we cannot read is no use to the tree: the scanner could not tag it, nor a
                 * reader open it. */
                if (!(st.st_mode & S_IROTH) && faccessat(dir_fd, de->d_name, R_OK, AT_EACCESS) < 0)
                        return walk_skip(w, errno);
                OriginStat os;
                origin_stat_from_stat(&st, &os);
                return w->fn(w->path, &os, w->userdata);
        }

        if (type == DT_DIR) {
                int fd = openat(dir_fd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (fd < 0)
                        return walk_skip(w, errno);
                return walk_push(w, fd, path_len);
        }

        log_notice("Skipping %s/%s: not a regular file or directory", w->origin->base.url, w->path);
        return 0;
}

/* The walk of the subtree at rel_dir ("" the whole origin). A subtree that is not there (any more)
 * fails the walk with -ENOENT/-ENOTDIR, quietly: the sync scans directories that events named, and
 * one that went away since is news, not an error. */
static int local_walk_under(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped,
                            void *userdata) {
        LocalOrigin *l = local_origin(o);
        _cleanup_(walk_done) Walk w = {
                .origin = l,
                .fn = fn,
                .skipped = skipped,
                .userdata = userdata,
        };
        size_t len;
        int r;

        if (rel_dir[0] && origin_rel_path_check(rel_dir) < 0)
                return -EINVAL;
        r = walk_path_set(&w, 0, rel_dir, &len);
        if (r < 0)
                return r;

        int fd = openat(l->root_fd, rel_dir[0] ? rel_dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
                if (rel_dir[0] && errno_is_gone(errno))
                        return -errno;
                return log_error_errno(errno, "Failed to open origin directory %s%s%s: %m", o->url,
                                       rel_dir[0] ? "/" : "", rel_dir);
        }
        r = walk_push(&w, fd, len);
        if (r < 0)
                return r;

        while (w.n_frames > 0) {
                WalkFrame *f = &w.frames[w.n_frames - 1];
                size_t parent_len = f->path_len;

                errno = 0;
                struct dirent *de = readdir(f->dir);
                if (!de) {
                        int err = errno;

                        closedir(f->dir);
                        w.n_frames--;
                        if (err <= 0)
                                continue;

                        w.path[parent_len] = '\0';
                        /* Half a listing of the root is no walk of the origin. */
                        if (w.n_frames == 0 || errno_is_resource_shortage(err))
                                return log_error_errno(err, "Failed to list %s%s%s: %m",
                                                       o->url, parent_len > 0 ? "/" : "", w.path);
                        log_warning_errno(err, "Failed to list %s/%s, skipping the rest of it: %m", o->url, w.path);
                        r = walk_unread(&w, err);
                        if (r < 0)
                                return r;
                        continue;
                }

                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;

                r = walk_path_set(&w, parent_len, de->d_name, &len);
                if (r < 0)
                        return r;

                /* May push a frame: f is not to be used after this. */
                r = walk_entry(&w, dirfd(f->dir), de, len);
                if (r < 0)
                        return r;
        }

        return (int) w.n_unread;
}

static int local_walk(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        return local_walk_under(o, "", fn, skipped, userdata);
}

static void local_free(Origin *o) {
        LocalOrigin *l = local_origin(o);
        closep(&l->root_fd);
        free(l);
}

static const OriginOps local_ops = {
        .kind = "local",
        .stat = local_stat,
        .open = local_open,
        .pread = local_pread,
        .pread_nowait = local_pread_nowait,
        .close = local_close,
        .walk = local_walk,
        .walk_under = local_walk_under,
        .check = local_check,
        .free = local_free,
};

/* The directory as given, made absolute against the working directory, without trailing slashes;
 * symlinks are kept as the user wrote them. */
static int dir_make_absolute(const char *dir, char **ret) {
        _cleanup_free_ char *cwd = NULL;
        char *p;

        if (dir[0] == '/')
                p = strdup(dir);
        else {
                cwd = getcwd(NULL, 0);
                if (!cwd)
                        return negative_errno();
                if (asprintf(&p, "%s%s%s", cwd, streq_ptr(cwd, "/") ? "" : "/", dir) < 0)
                        p = NULL;
        }
        if (!p)
                return -ENOMEM;

        size_t n = strlen(p);
        while (n > 1 && p[n - 1] == '/')
                p[--n] = '\0';

        *ret = p;
        return 0;
}

int origin_local_new(const char *name, const char *dir, unsigned priority, Origin **ret) {
        _cleanup_free_ char *url = NULL, *copy = NULL;
        int r;

        if (!name || !name[0] || !dir || !dir[0] || !ret)
                return -EINVAL;

        r = dir_make_absolute(dir, &url);
        if (r < 0)
                return log_error_errno(r, "Failed to make origin directory %s absolute: %m", dir);

        _cleanup_close_ int fd = open(url, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open origin directory %s: %m", url);

        copy = strdup(name);
        if (!copy)
                return -ENOMEM;

        LocalOrigin *l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;

        l->base = (Origin) {
                .ops = &local_ops,
                .name = TAKE_PTR(copy),
                .url = TAKE_PTR(url),
                .priority = priority,
                .id = 0,        /* catalog ids start at 1; the manager sets ours */
        };
        l->root_fd = TAKE_FD(fd);

        *ret = &l->base;
        return 0;
}
