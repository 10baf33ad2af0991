#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""D10 through the mount: a local origin that hangs (origin-read=sleep(20000), the failpoint running
inside the origin's worker) answers a read with EIO within the bound, never a hung player. The bound
for a file with one replica is the 5 s operation limit plus the retries' 2.6 s; a hung origin takes
5.1 s of it (no retry queues behind a read that still hangs, and the kernel's own second try of the
page fails at once). Meanwhile ls and stat of the mount, which never touch the origin, stay fast;
once the origin answers again the same file reads byte-exact."""

import errno
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

LIMIT_S = 5.0                   # D10: a local origin's operation
BOUND_S = LIMIT_S + 2.6         # one replica: the limit plus the back-offs' share
SLACK_S = 2.5                   # a loaded machine, the kernel's own request handling
FAST_S = 1.0                    # an ls or a stat that does not touch the origin


class OriginTimeoutTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.files = rutil.origin_files(cls.lib)

    def test_hung_origin_read_answers_eio(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        vpath = rutil.smallest(self.files)[0]
        others = [v for v in sorted(self.files) if v != vpath]

        rutil.fp_arm(d, 'origin-read', 'sleep(20000)')
        reader = rutil.Reader(d.path(vpath))
        reader.start()
        rutil.wait_fired(d, 'origin-read', 1)

        # While the read is held: listings and stats answer at once, again and again.
        rounds, slowest = 0, 0.0
        deadline = reader.started_at + BOUND_S + SLACK_S
        while not reader.done.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            for root, dirs, names in os.walk(d.mountpoint):
                for n in names:
                    os.stat(os.path.join(root, n))
            self.assertTrue(os.listdir(d.mountpoint))
            for v in others[:20]:
                os.stat(d.path(v))
            slowest = max(slowest, time.monotonic() - t0)
            rounds += 1
            reader.done.wait(0.05)
        self.assertLess(slowest, FAST_S, 'an ls/stat round took %.2f s while the origin hung' % slowest)
        self.assertGreater(rounds, 10, 'the listings did not run alongside the held read')

        self.assertTrue(reader.wait(max(0.1, deadline - time.monotonic())),
                        'the read of a hung origin did not answer within %.1f s' % (BOUND_S + SLACK_S))
        self.assertIsNotNone(reader.error, 'the read returned data while the origin hung')
        self.assertEqual(reader.error.errno, errno.EIO, reader.error)
        print('hung read answered EIO after %.2f s (%d ls/stat rounds meanwhile, slowest %.3f s)' % (
            reader.seconds, rounds, slowest), file=sys.stderr)
        # It did wait for the limit: the EIO is the timeout's, not some other failure's.
        self.assertGreaterEqual(reader.seconds, LIMIT_S - 0.1)
        self.assertLessEqual(reader.seconds, BOUND_S + SLACK_S)
        self.assertTrue(d.running(), d.describe())

        # The origin answers again (the stuck workers still sleep): the same file reads byte-exact.
        rutil.fp_disarm(d, 'origin-read')
        self.assertEqual(rutil.read_fresh(d.path(vpath)), rutil.origin_bytes(self.files[vpath]))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
