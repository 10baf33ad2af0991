#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""3.4 (COVERAGE.md): FUSE session recovery. When the kernel aborts the connection (fusectl's abort,
which is what a FUSE protocol failure does too), the daemon mounts again in place without a restart:
same tree, same inode numbers (D4), bytes exact, the cache and catalog kept; a handle opened on the
old mount fails (ENOTCONN) and a new open works. A remount that fails is tried again after 1 s, 5 s
and 15 s (here: the mountpoint directory was not empty under the dead mount). A mount that keeps dying (more than 3 aborts within
60 s) stops the daemon with exit 1 for systemd, and an unmount from outside is taken as a decision:
the daemon stops (exit 1) rather than fight it."""

import errno
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

REMOUNTED = r'Mounted \S+ again after the kernel aborted its FUSE connection'


class FuseRecoveryTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.files = rutil.origin_files(cls.lib)
        # fusectl, where a connection can be aborted: the system's, or one of our own.
        cls.fusectl = '/sys/fs/fuse/connections'
        cls.own_fusectl = None
        if not cls._fusectl_mounted():
            cls.own_fusectl = tempfile.mkdtemp(prefix='musicfs-fusectl-')
            r = subprocess.run(['mount', '-t', 'fusectl', 'fusectl', cls.own_fusectl], capture_output=True)
            if r.returncode != 0:
                os.rmdir(cls.own_fusectl)
                raise AssertionError('cannot mount fusectl: %s' % r.stderr.decode(errors='replace'))
            cls.fusectl = cls.own_fusectl

    @classmethod
    def tearDownClass(cls):
        if cls.own_fusectl:
            subprocess.run(['umount', '-l', cls.own_fusectl])
            os.rmdir(cls.own_fusectl)
        super().tearDownClass()

    @staticmethod
    def _fusectl_mounted():
        with open('/proc/self/mountinfo') as f:
            return any(' - fusectl ' in line for line in f)

    def abort(self, d):
        """Aborts the mount's connection through fusectl (connections are named by the minor)."""
        minor = os.minor(os.stat(d.mountpoint).st_dev)
        with open(os.path.join(self.fusectl, str(minor), 'abort'), 'w') as f:
            f.write('1')
        return minor

    def started(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        return d

    def test_abort_remounts_in_place(self):
        d = self.started()
        before = rutil.tree_inodes(d.mountpoint)
        v = rutil.smallest(self.files)[0]
        old = os.open(d.path(v), os.O_RDONLY | os.O_CLOEXEC)
        try:
            minor = self.abort(d)
            rutil.wait_log(d, REMOUNTED, 20)
            self.assertTrue(d.running())
            # The new mount is a new connection; the tree and its inode numbers are the same.
            self.assertNotEqual(os.minor(os.stat(d.mountpoint).st_dev), minor)
            self.assertEqual(rutil.tree_inodes(d.mountpoint), before)
            for p in sorted(self.files):
                self.assertEqual(rutil.read_fresh(d.path(p)), rutil.read_file(self.files[p]), p)
            self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
            self.assertEqual(str(d.bus_get('MountPoint')), d.mountpoint)
            # The handle of the dead connection stays dead: no stale bytes, a clear error.
            with self.assertRaises(OSError) as cm:
                os.pread(old, 4096, 0)
            self.assertIn(cm.exception.errno, (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV))
        finally:
            os.close(old)
        rutil.wait_state(d, 'ready', 10)
        self.assertDaemonStops(d)

    def test_failed_remount_retried(self):
        # The directory under the mount is reached through a bind mount of its parent (which does not
        # carry the FUSE mount): a file there makes the remount fail until it is removed.
        d = self.started()
        parent, name = os.path.split(d.mountpoint)
        view = tempfile.mkdtemp(prefix='musicfs-under-')
        self.addCleanup(os.rmdir, view)
        subprocess.run(['mount', '--bind', parent, view], check=True)
        self.addCleanup(subprocess.run, ['umount', '-l', view])
        blocker = os.path.join(view, name, 'blocker')
        with open(blocker, 'w') as f:
            f.write('not empty')
        self.abort(d)
        rutil.wait_log(d, r'Cannot mount \S+ again: .*; next try in 1 s', 20)
        self.assertTrue(d.running())
        self.assertEqual(str(d.bus_get('MountPoint')), '', 'MountPoint while unmounted')
        os.unlink(blocker)
        rutil.wait_log(d, REMOUNTED, 20)
        self.assertEqual(str(d.bus_get('MountPoint')), d.mountpoint)
        v = rutil.smallest(self.files)[0]
        self.assertEqual(rutil.read_fresh(d.path(v)), rutil.read_file(self.files[v]))
        self.assertNotIn('next try in 5 s', d.log())
        self.assertDaemonStops(d)

    def test_abort_loop_stops(self):
        # Three aborts within the window are mounted again; the fourth stops the daemon.
        d = self.started()
        for i in range(3):
            self.abort(d)
            d.wait_log(REMOUNTED, 20, count=i + 1)
            self.assertEqual(sorted(os.listdir(d.mountpoint)), sorted({p.split('/')[0] for p in self.files}))
        self.abort(d)
        rc, _ = rutil.wait_exit(d, 30.0)
        self.assertEqual(rc, 1, d.describe())
        self.assertRegex(d.log(), r'FUSE connection of \S+ was lost 4 times within 60 s')
        self.assertFalse(d.is_mounted(), 'the daemon left its dead mount behind')

    def test_outside_unmount_stops(self):
        d = self.started()
        r = subprocess.run(['umount', d.mountpoint], capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        rc, _ = rutil.wait_exit(d, 30.0)
        self.assertEqual(rc, 1, d.describe())
        self.assertIn('went away (unmounted from outside?); stopping', d.log())
        self.assertNotRegex(d.log(), REMOUNTED)
        self.assertFalse(d.is_mounted())


if __name__ == '__main__':
    harness.main()
