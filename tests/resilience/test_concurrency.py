#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""5.1 (COVERAGE.md): one slow request must not freeze the filesystem. 100 threads each read a
whole, different file through the mount at once while one origin read is held for 5 s
(origin-read=1*sleep(5000)): every read is byte-exact and done within 30 s, and the 99 others are
all done well before the slow one. Then 100 concurrent readers again with nothing held, and the
daemon still answers on the bus and stops cleanly."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

READERS = 100
SLOW_MS = 5000


class ConcurrencyTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = rutil.bulk_library(2 * READERS)
        cls.files = rutil.origin_files(cls.lib)

    def run_readers(self, d, vpaths):
        go = threading.Event()

        class GatedReader(rutil.Reader):
            def run(self):
                go.wait()
                super().run()
        readers = [GatedReader(d.path(v)) for v in vpaths]
        for r in readers:
            r.start()
        t0 = time.monotonic()
        go.set()
        for r, v in zip(readers, vpaths):
            self.assertTrue(r.wait(max(0.1, t0 + 30.0 - time.monotonic())), 'read of %s not done in 30 s' % v)
            self.assertIsNone(r.error, '%s: %s' % (v, r.error))
            self.assertEqual(r.data, rutil.read_file(self.files[v]), v)
        return readers

    def test_hundred_readers_one_slow(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        vpaths = sorted(self.files)
        first, second = vpaths[:READERS], vpaths[READERS:2 * READERS]

        rutil.fp_arm(d, 'origin-read', '1*sleep(%d)' % SLOW_MS)
        readers = self.run_readers(d, first)
        self.assertEqual(rutil.fp_fired(d, 'origin-read'), 1)

        # Each reader's own time, open to EOF: a thread may start late on a loaded machine, but no
        # read may have to wait for the held one.
        by_time = sorted(readers, key=lambda r: r.seconds)
        slow, others = by_time[-1], by_time[:-1]
        self.assertGreaterEqual(slow.seconds, SLOW_MS / 1000.0 - 0.1, 'no reader was held by the failpoint')
        self.assertLess(slow.seconds, 30.0)
        # "Well before": every other read took at least 2 s less than the held one.
        self.assertLess(others[-1].seconds, slow.seconds - 2.0,
                        'another read took %.1f s while one was held for %.1f s' % (others[-1].seconds, slow.seconds))
        # And they overlapped it: most of them started while the held read was in progress.
        overlapping = [r for r in others if r.started_at < slow.finished_at - 2.0]
        self.assertGreater(len(overlapping), READERS // 2, 'the readers did not run concurrently with the held one')

        # Nothing held: another 100 at once, all quick.
        readers = self.run_readers(d, second)
        self.assertEqual(rutil.fp_fired(d, 'origin-read'), 1)
        self.assertLess(max(r.seconds for r in readers), 30.0)
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
