#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""2.10 and 3.1 (COVERAGE.md): sd_notify and the watchdog, against a datagram socket standing in for
systemd's NOTIFY_SOCKET. READY=1 comes exactly once, and only when the mount is live and the bus name
has its owner; STATUS= says what the scan is doing; STOPPING=1 on stop. With WATCHDOG_USEC set the
daemon pings at half the interval, stops pinging while every FUSE worker is wedged (so systemd would
restart it) and resumes once they are free."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

BULK = 2000
WATCHDOG_USEC = 2000000


class NotifyTest(harness.MusicfsTestCase):

    def test_ready_status_stopping(self):
        lib = rutil.bulk_library(BULK)
        d = self.daemon([lib], start=False)
        d.start(wait_ready=False)
        clock = rutil.NotifyClock(d.notify)

        # Catch READY=1 the moment it arrives and look at the world right then.
        deadline = time.monotonic() + 30.0
        while not any(l == 'READY=1' for _, l in clock.events):
            d._check_running()
            self.assertLess(time.monotonic(), deadline, 'no READY=1 within 30 s\n%s' % d.describe())
            clock.poll_for(0.01)
        mounted, owned = d.is_mounted(), rutil.name_has_owner(d)
        self.assertTrue(mounted, 'READY=1 before the mount was live')
        self.assertTrue(owned, 'READY=1 before %s had an owner' % harness.BUS_NAME)
        # Lists the tree right away: a first scan mounts at once and fills in.
        self.assertIsInstance(os.listdir(d.mountpoint), list)

        d.wait_tracks(BULK, timeout=300.0)
        rutil.wait_scan_done(d)
        clock.update()
        statuses = [l[len('STATUS='):] for _, l in clock.events if l.startswith('STATUS=')]
        scanning = [s for s in statuses if s.startswith('Scanning')]
        self.assertTrue(scanning, 'no STATUS= while scanning: %r' % statuses)
        # Progress only goes forward.
        counts = [int(s.split(':')[-1].split()[0]) for s in scanning if s.split(':')[-1].split()[0].isdigit()]
        self.assertEqual(counts, sorted(counts), statuses)
        harness.wait_until(lambda: clock.update() or
                           [l for _, l in clock.events if l.startswith('STATUS=')][-1] == 'STATUS=Serving %d tracks' % BULK,
                           10.0, message='STATUS=Serving %d tracks' % BULK)

        ready_at = [t for t, l in clock.events if l == 'READY=1']
        self.assertEqual(len(ready_at), 1, 'READY=1 sent %d times' % len(ready_at))
        self.assertDaemonStops(d)
        clock.update()
        stopping = clock.times('STOPPING=1')
        self.assertEqual(len(stopping), 1)
        self.assertGreater(stopping[0], ready_at[0])
        self.assertEqual(clock.times('READY=1'), ready_at, 'READY=1 again while stopping')
        self.assertEqual(clock.times('WATCHDOG=1'), [], 'watchdog pings without WATCHDOG_USEC')

    def test_watchdog(self):
        lib = harness.sample_library()
        files = rutil.origin_files(lib)
        d = self.daemon([lib], start=False, extra_args=['--threads', '2'],
                        env={'WATCHDOG_USEC': str(WATCHDOG_USEC)})
        d.start()
        d.wait_tracks(len(files))
        rutil.wait_scan_done(d)
        clock = rutil.NotifyClock(d.notify)

        # Healthy: a ping every WATCHDOG_USEC/2 = 1 s.
        t0 = time.monotonic()
        clock.poll_for(4.2)
        pings = clock.times('WATCHDOG=1', start=t0)
        self.assertGreaterEqual(len(pings), 3, 'only %d pings in 4.2 s' % len(pings))

        # Wedge both FUSE workers: every read request parks in the failpoint.
        rutil.fp_arm(d, 'fuse-read', 'pause')
        victims = rutil.smallest(files, 3)
        readers = [rutil.Reader(d.path(v)) for v in victims]
        for r in readers:
            r.start()
        rutil.wait_fired(d, 'fuse-read', 2)
        wedged = time.monotonic()
        self.assertTrue(d.running())
        # Give the daemon WATCHDOG_USEC to notice, plus one ping interval; then silence.
        clock.poll_for(wedged + WATCHDOG_USEC / 1e6 + 1.2 - time.monotonic())
        quiet_from = time.monotonic()
        clock.poll_for(4.0)
        late = clock.times('WATCHDOG=1', start=quiet_from)
        self.assertEqual(late, [], 'pinged %d times with every FUSE worker stuck' % len(late))
        self.assertTrue(d.running())
        self.assertIn('withholding the watchdog ping', d.log())
        # The loop itself is alive: the bus answers while FUSE is wedged.
        self.assertEqual(int(d.bus_get('TrackCount')), len(files))
        self.assertFalse(any(r.done.is_set() for r in readers[:2]))

        # Release: the readers get their bytes and the pings come back.
        released = time.monotonic()
        rutil.fp_disarm(d, 'fuse-read')
        for r, v in zip(readers, victims):
            self.assertTrue(r.wait(10.0), 'reader of %s still blocked after DisarmFailpoint' % v)
            self.assertIsNone(r.error, r.error)
            self.assertEqual(r.data, rutil.read_file(files[v]), v)
        clock.poll_for(3.5)
        back = clock.times('WATCHDOG=1', start=released)
        self.assertGreaterEqual(len(back), 2, 'only %d pings in 3.5 s after the workers were freed' % len(back))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
