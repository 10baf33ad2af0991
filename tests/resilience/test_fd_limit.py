#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""5.3 (COVERAGE.md): file-descriptor exhaustion. The daemon runs with RLIMIT_NOFILE 64 and readers
open 100 files through the mount at once and keep them open: the daemon does not crash, the opens it
cannot serve fail with a clear errno (ENFILE, EMFILE or EIO) and a log line that says why, and once
the files are closed every file opens and reads correctly again; the bus answers throughout."""

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

NOFILE = 64
OPEN = 100
CLEAR_ERRNOS = (errno.ENFILE, errno.EMFILE, errno.EIO)


class FdLimitTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        harness.require_program('prlimit')
        cls.lib = rutil.bulk_library(120)
        cls.files = rutil.origin_files(cls.lib)

    def test_fd_exhaustion(self):
        d = rutil.limited_daemon(self, [self.lib], NOFILE)
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        with open('/proc/%d/limits' % d.pid, encoding='ascii') as f:
            self.assertRegex(f.read(), r'Max open files\s+%d\s+%d' % (NOFILE, NOFILE))
        vpaths = sorted(self.files)[:OPEN]

        # Open them all, read one byte of each, keep them open.
        held, failed = [], []
        for v in vpaths:
            try:
                fd = os.open(d.path(v), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                failed.append((v, e.errno))
                continue
            held.append((v, fd))
            try:
                self.assertEqual(os.pread(fd, 1, 0), rutil.read_file(self.files[v])[:1], v)
            except OSError as e:
                failed.append((v, e.errno))
        try:
            self.assertTrue(d.running(), d.describe())
            self.assertLessEqual(rutil.fd_count(d.pid), NOFILE)
            # Every open file costs the daemon a descriptor: with 64 it cannot hold 100.
            self.assertTrue(failed, 'all %d opens worked under RLIMIT_NOFILE %d' % (OPEN, NOFILE))
            self.assertTrue(held, 'not a single open worked')
            for v, e in failed:
                self.assertIn(e, CLEAR_ERRNOS, '%s: %s' % (v, os.strerror(e)))
            rutil.wait_log(d, r'(Out of file descriptors|Too many open files)')
            # The bus still answers while the table is full.
            self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
            self.assertIn('origin-read', rutil.fp_list(d))
            # The files that did open read correctly to the end.
            for v, fd in held[:10]:
                data = rutil.read_file(self.files[v])
                self.assertEqual(os.pread(fd, len(data) + 1, 0), data, v)
        finally:
            for _, fd in held:
                os.close(fd)

        # All closed: every file opens and reads again.
        for v in vpaths:
            self.assertEqual(rutil.read_file(d.path(v)), rutil.read_file(self.files[v]), v)
        self.assertTrue(d.running())
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
