#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""3.9 (COVERAGE.md): one daemon per cache directory. A second musicfsd on the same cache (another
mountpoint) exits 1 saying "already running (PID N)" with the first one's PID, mounts nothing and
leaves the first alone. The lock is the kernel's (flock): once the first exits — cleanly or by
SIGKILL — the next one starts."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402


class LockFileTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.files = rutil.origin_files(cls.lib)

    def second(self, cache_dir):
        """A daemon on cache_dir with its own mountpoint and work dir."""
        return self.daemon([self.lib], start=False, cache_dir=cache_dir)

    def assertRefused(self, first, second):
        rc, out = second.run_to_exit(timeout=30.0)
        self.assertEqual(rc, 1, out)
        self.assertIn('already running (PID %d)' % first.pid, out)
        self.assertFalse(second.is_mounted(), 'the refused daemon mounted %s' % second.mountpoint)
        self.assertEqual(os.listdir(second.mountpoint), [])
        # The first one did not notice.
        self.assertTrue(first.running())
        self.assertEqual(rutil.listdir_errno(first.mountpoint), 0)
        self.assertEqual(int(first.bus_get('TrackCount')), len(self.files))
        v = sorted(self.files)[0]
        self.assertEqual(rutil.read_file(first.path(v)), rutil.read_file(self.files[v]))
        with open(os.path.join(first.cache_dir, 'musicfsd.lock'), encoding='ascii') as f:
            self.assertEqual(f.read().strip(), str(first.pid))

    def test_second_daemon_refused_then_allowed(self):
        first = self.daemon([self.lib])
        first.wait_tracks(len(self.files))
        second = self.second(first.cache_dir)
        self.assertRefused(first, second)
        # Twice: a refused start leaves nothing behind that changes the answer.
        self.assertRefused(first, second)

        self.assertDaemonStops(first)
        second.start(timeout=10.0)
        self.assertEqual(int(second.bus_get('TrackCount')), len(self.files))
        self.assertDaemonStops(second)

    def test_lock_released_by_kill9(self):
        first = self.daemon([self.lib])
        first.wait_tracks(len(self.files))
        rutil.wait_scan_done(first)
        second = self.second(first.cache_dir)
        self.assertRefused(first, second)

        first.kill9()
        second.start(timeout=10.0)
        self.assertEqual(int(second.bus_get('TrackCount')), len(self.files))
        with open(os.path.join(second.cache_dir, 'musicfsd.lock'), encoding='ascii') as f:
            self.assertEqual(f.read().strip(), str(second.pid))
        # ...and now the second one holds the lock against the first.
        rc, out = first.run_to_exit(timeout=30.0)
        self.assertEqual(rc, 1, out)
        self.assertIn('already running (PID %d)' % second.pid, out)
        self.assertTrue(second.running())
        self.assertDaemonStops(second)


if __name__ == '__main__':
    harness.main()
