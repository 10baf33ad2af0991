#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""D1: the namespace is read-only. Every mutating operation answers EROFS, missing names ENOENT,
file/directory mix-ups ENOTDIR/EISDIR, statvfs says ST_RDONLY, and nothing on the origin changes."""

import errno
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402

FILE = 'Aurora Lane/First Light (2001)/01 - Dawn.flac'
DIR = 'Aurora Lane/First Light (2001)'


def origin_snapshot(lib):
    return {p: (st.st_size, st.st_mtime_ns, st.st_mode, harness.file_digest(os.path.join(lib, p))
                if os.path.stat.S_ISREG(st.st_mode) else None)
            for p, st in harness.walk_tree(lib).items()}


class ErrnoTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)

    def setUp(self):
        super().setUp()
        self.before = origin_snapshot(self.lib)
        self.d = self.daemon([self.lib])
        self.d.wait_tracks(len(self.expected))
        self.file = self.d.path(FILE)
        self.dir = self.d.path(DIR)
        self.assertTrue(os.path.isfile(self.file))
        self.assertTrue(os.path.isdir(self.dir))
        self.addCleanup(self.check_nothing_changed)

    def check_nothing_changed(self):
        self.assertEqual(origin_snapshot(self.lib), self.before, 'the origin changed')

    def assertErrno(self, err, fn, *args, **kwargs):
        with self.assertRaises(OSError, msg='%s%r' % (fn.__name__, args)) as c:
            r = fn(*args, **kwargs)
            if isinstance(r, int) and fn is os.open:
                os.close(r)
        self.assertEqual(c.exception.errno, err, '%s%r: %s, want %s' % (
            fn.__name__, args, errno.errorcode.get(c.exception.errno), errno.errorcode[err]))

    def test_open_for_writing(self):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_APPEND,
                      os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC, os.O_RDWR | os.O_CREAT):
            self.assertErrno(errno.EROFS, os.open, self.file, flags)
        self.assertFalse(os.access(self.file, os.W_OK))
        self.assertErrno(errno.EROFS, os.open, os.path.join(self.dir, 'new.flac'),
                         os.O_WRONLY | os.O_CREAT, 0o644)
        self.assertErrno(errno.EROFS, os.open, os.path.join(self.dir, 'new.flac'),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.assertErrno(errno.EROFS, os.open, self.d.mountpoint, os.O_TMPFILE | os.O_WRONLY, 0o600)
        self.assertFalse(os.path.exists(os.path.join(self.dir, 'new.flac')))

    def test_namespace_changes(self):
        new = os.path.join(self.dir, 'new')
        self.assertErrno(errno.EROFS, os.mkdir, new)
        self.assertErrno(errno.EROFS, os.mkdir, self.d.path('New Artist'))
        self.assertErrno(errno.EROFS, os.unlink, self.file)
        self.assertErrno(errno.EROFS, os.rmdir, self.dir)
        self.assertErrno(errno.EROFS, os.rename, self.file, new)
        self.assertErrno(errno.EROFS, os.rename, self.dir, self.d.path('Elsewhere'))
        self.assertErrno(errno.EROFS, os.symlink, FILE, new)
        self.assertErrno(errno.EROFS, os.link, self.file, new)
        self.assertErrno(errno.EROFS, os.mkfifo, new)
        self.assertErrno(errno.EROFS, os.mknod, new, 0o600 | os.path.stat.S_IFREG)
        self.assertTrue(os.path.isfile(self.file))
        self.assertEqual(sorted(os.listdir(self.dir)), sorted(
            os.path.basename(p) for p in self.expected if os.path.dirname(p) == DIR))

    def test_attribute_changes(self):
        for path in (self.file, self.dir, self.d.mountpoint):
            self.assertErrno(errno.EROFS, os.chmod, path, 0o777)
            self.assertErrno(errno.EROFS, os.chown, path, 1, 1)
            self.assertErrno(errno.EROFS, os.utime, path, (1, 1))
            self.assertErrno(errno.EROFS, os.utime, path, None)
            self.assertErrno(errno.EROFS, os.setxattr, path, 'user.musicfs', b'1')
            self.assertErrno(errno.EROFS, os.removexattr, path, 'user.musicfs')
        self.assertErrno(errno.EROFS, os.truncate, self.file, 0)
        self.assertErrno(errno.EROFS, os.truncate, self.file, 10 << 20)
        # A read-only descriptor cannot write or be truncated either.
        fd = os.open(self.file, os.O_RDONLY)
        try:
            self.assertErrno(errno.EBADF, os.write, fd, b'x')
            self.assertErrno(errno.EINVAL, os.ftruncate, fd, 0)
            self.assertErrno(errno.EROFS, os.fchmod, fd, 0o600)
        finally:
            os.close(fd)
        st = os.stat(self.file)
        self.assertEqual(st.st_size, os.path.getsize(os.path.join(self.lib, self.expected[FILE])))

    def test_missing_and_mixups(self):
        missing = self.d.path('No Such Artist')
        self.assertErrno(errno.ENOENT, os.stat, missing)
        self.assertErrno(errno.ENOENT, os.lstat, os.path.join(self.dir, 'nope.flac'))
        self.assertErrno(errno.ENOENT, os.open, missing, os.O_RDONLY)
        self.assertErrno(errno.ENOENT, os.listdir, missing)
        self.assertErrno(errno.ENOENT, os.stat, os.path.join(missing, 'deeper', 'still'))
        self.assertErrno(errno.ENOTDIR, os.stat, os.path.join(self.file, 'x'))
        self.assertErrno(errno.ENOTDIR, os.listdir, self.file)
        self.assertErrno(errno.ENOTDIR, os.open, self.file, os.O_RDONLY | os.O_DIRECTORY)
        self.assertErrno(errno.EISDIR, os.open, self.dir, os.O_WRONLY)
        self.assertErrno(errno.EISDIR, os.open, self.dir, os.O_RDWR)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            self.assertErrno(errno.EISDIR, os.read, fd, 10)
        finally:
            os.close(fd)
        # Names that no template renders.
        for name in ('.', '..'):
            self.assertNotIn(name, os.listdir(self.d.mountpoint))
        self.assertErrno(errno.ENOENT, os.stat, self.d.path('Aurora Lane', 'x' * 255))

    def test_statvfs(self):
        vfs = os.statvfs(self.d.mountpoint)
        self.assertTrue(vfs.f_flag & os.ST_RDONLY, 'statvfs flags %#x lack ST_RDONLY' % vfs.f_flag)
        self.assertGreaterEqual(vfs.f_namemax, 255)
        self.assertTrue(self.d.is_mounted())
        mounts = [m for m in harness.mounts() if m[0] == self.d.mountpoint]
        self.assertEqual(len(mounts), 1)
        self.assertTrue(mounts[0][1].startswith('fuse'), mounts[0])

    def test_still_serving_after_refusals(self):
        self.test_namespace_changes()
        self.test_attribute_changes()
        self.assertEqual(harness.file_digest(self.file),
                         harness.file_digest(os.path.join(self.lib, self.expected[FILE])))
        self.assertTrue(self.d.running())
        self.assertDaemonStops(self.d)


if __name__ == '__main__':
    harness.main()
