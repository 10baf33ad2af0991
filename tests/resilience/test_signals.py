#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""2.1 / 2.3 (COVERAGE.md): signals stop the daemon cleanly and in order. SIGTERM and SIGINT: exit 0
within 10 s, STOPPING=1 sent, the mount gone, the catalog's WAL checkpointed; a read in flight when
SIGTERM arrives still gets its bytes; a second signal exits at once even with a read stuck; SIGHUP
is a reload, never an exit."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

BULK = 2000


class SignalsTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.files = rutil.origin_files(cls.lib)

    def start(self, **kwargs):
        d = self.daemon([self.lib], **kwargs)
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        return d

    def wal_path(self, d):
        return os.path.join(d.cache_dir, 'catalog.db-wal')

    def assertCleanStop(self, d, sig):
        # The first scan wrote the catalog: its WAL holds the transactions until the checkpoint.
        wal = self.wal_path(d)
        self.assertTrue(os.path.exists(wal) and os.path.getsize(wal) > 0,
                        'no WAL content before the stop, the checkpoint check would prove nothing')
        t0 = time.monotonic()
        rc = d.stop(sig, timeout=10.0)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, 'exit status after %s\n%s' % (sig.name, d.describe()))
        self.assertLess(took, 10.0)
        self.assertFalse(d.is_mounted(), 'still mounted after %s' % sig.name)
        self.assertTrue(d.notify.seen('STOPPING=1'), 'no STOPPING=1: %r' % d.notify.lines())
        self.assertFalse(os.path.exists(wal) and os.path.getsize(wal) > 0,
                         'catalog.db-wal still holds %d bytes: not checkpointed' % (
                             os.path.getsize(wal) if os.path.exists(wal) else 0))
        # What was committed is there at the next start, from the catalog, at once.
        d.start(timeout=10.0)
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))

    def test_sigterm(self):
        self.assertCleanStop(self.start(), signal.SIGTERM)

    def test_sigint(self):
        self.assertCleanStop(self.start(), signal.SIGINT)

    def test_sigterm_finishes_read_in_flight(self):
        d = self.start()
        vpath = rutil.smallest(self.files)[0]
        want = rutil.read_file(self.files[vpath])
        rutil.fp_arm(d, 'origin-read', '1*sleep(1500)')
        reader = rutil.Reader(d.path(vpath))
        reader.start()
        rutil.wait_fired(d, 'origin-read', 1)
        self.assertFalse(reader.done.is_set(), 'the read was not held by the failpoint')

        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        self.assertTrue(reader.wait(10.0), 'the in-flight read never returned')
        self.assertIsNone(reader.error, 'the in-flight read failed: %s' % reader.error)
        self.assertEqual(reader.data, want, 'the in-flight read got wrong bytes')
        rc, _ = rutil.wait_exit(d, 10.0 - (time.monotonic() - t0))
        self.assertEqual(rc, 0, d.describe())
        self.assertFalse(d.is_mounted())
        self.assertTrue(d.notify.seen('STOPPING=1'))
        # The daemon waited for the read: it cannot have exited before the read's 1.5 s were over.
        self.assertGreaterEqual(reader.finished_at, reader.started_at + 1.4)

    def test_second_signal_exits_at_once(self):
        d = self.start()
        vpath = rutil.smallest(self.files)[0]
        rutil.fp_arm(d, 'origin-read', 'sleep(20000)')
        reader = rutil.Reader(d.path(vpath))
        reader.start()
        rutil.wait_fired(d, 'origin-read', 1)

        d.proc.send_signal(signal.SIGTERM)
        # The first signal must have been taken (a second one pending at the same time would merge).
        d.notify.wait_for('STOPPING=1', 5.0)
        self.assertTrue(d.running(), 'exited on the first SIGTERM with a 20 s read in flight')
        d.proc.send_signal(signal.SIGTERM)
        rc, took = rutil.wait_exit(d, 5.0)
        self.assertLess(took, 2.5, 'a second signal took %.1f s to end the daemon' % took)
        self.assertGreater(rc, 0, 'a forced exit should not report success (%s)' % rc)
        self.assertTrue(reader.wait(10.0), 'the reader stayed blocked after the daemon exited')
        # The stuck read is not answered with data that was never read.
        self.assertIsNotNone(reader.error, 'the read returned data after a forced exit')
        self.assertIn(reader.error.errno, rutil.DEAD_MOUNT_ERRNOS, reader.error)
        self.assertIn('exiting at once', d.log())

        # The mount is gone, or the next start cleans it and mounts at once.
        if d.is_mounted():
            self.assertIn(rutil.listdir_errno(d.mountpoint), rutil.DEAD_MOUNT_ERRNOS)
        d.failpoints = None
        d.start(timeout=10.0)
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        self.assertEqual(rutil.read_file(d.path(vpath)), rutil.read_file(self.files[vpath]))
        self.assertDaemonStops(d)

    def test_stuck_request_cannot_hold_the_stop(self):
        # A read that never finishes: the stop waits for it only until its deadline, then detaches
        # the mount and exits, still within the 10 s.
        d = self.start()
        vpath = rutil.smallest(self.files)[0]
        rutil.fp_arm(d, 'fuse-read', 'pause')
        reader = rutil.Reader(d.path(vpath))
        reader.start()
        rutil.wait_fired(d, 'fuse-read', 1)
        d.proc.send_signal(signal.SIGTERM)
        d.notify.wait_for('STOPPING=1', 5.0)
        rc, took = rutil.wait_exit(d, 10.5)
        self.assertLess(took, 10.0)
        self.assertNotEqual(rc, 0, 'an unfinished drain reported a clean stop')
        self.assertGreater(rc, 0, 'killed by a signal (%s), not an orderly exit' % rc)
        self.assertIn('did not finish', d.log())
        self.assertTrue(reader.wait(10.0), 'the reader stayed blocked after the exit')
        self.assertIsNotNone(reader.error)
        self.assertFalse(d.is_mounted(), 'the mount was left behind')
        d.failpoints = None
        d.start(timeout=10.0)
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        self.assertDaemonStops(d)

    def test_sigterm_during_first_scan(self):
        lib = rutil.bulk_library(BULK)
        # Slow batches, so that the signal lands in the middle of the scan.
        d = self.daemon([lib], start=False, failpoints='scan-batch=sleep(250)')
        d.start()
        rutil.wait_fired(d, 'scan-batch', 2, timeout=120.0)
        wal = self.wal_path(d)
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM, timeout=10.0)
        self.assertEqual(rc, 0, d.describe())
        self.assertLess(time.monotonic() - t0, 10.0)
        self.assertFalse(d.is_mounted())
        self.assertFalse(os.path.exists(wal) and os.path.getsize(wal) > 0, 'WAL not checkpointed')
        self.assertRegex(d.log(), r'[Cc]ancel', 'the scan was not cancelled but ran to its end')

        # What the cancelled scan committed is served at once; the next scan completes the rest.
        d.failpoints = None
        d.start(timeout=10.0)
        committed = int(d.bus_get('TrackCount'))
        self.assertGreater(committed, 0)
        self.assertLess(committed, BULK)
        d.wait_tracks(BULK, timeout=300.0)
        self.assertEqual(rutil.tree_files(d.mountpoint), set(rutil.origin_files(lib)))
        self.assertDaemonStops(d)

    def test_sigterm_during_startup(self):
        # The signal arrives while the catalog is still being opened (before the loop runs): it is
        # held, not lost, and the daemon stops cleanly as soon as it can.
        d = self.daemon([self.lib], start=False, failpoints='catalog-open=sleep(1500)')
        d.start(wait_ready=False)
        rutil.wait_log(d, r'Failpoints armed')
        d.proc.send_signal(signal.SIGTERM)
        rc, took = rutil.wait_exit(d, 10.5)
        self.assertEqual(rc, 0, d.describe())
        self.assertLess(took, 10.0)
        self.assertFalse(d.is_mounted())
        self.assertEqual(os.listdir(d.mountpoint), [])
        d.failpoints = None
        d.start(timeout=10.0)
        self.assertDaemonStops(d)

    def test_sighup_does_not_exit(self):
        d = self.start()
        d.notify.clear()
        d.proc.send_signal(signal.SIGHUP)
        # A reload says RELOADING=1 and then READY=1 again (Type=notify-reload).
        d.notify.wait_for('RELOADING=1', 10.0, check=d._check_running)
        d.notify.wait_for('READY=1', 10.0, check=d._check_running)
        rutil.wait_log(d, r'Reloaded the configuration|Received SIGHUP')
        self.assertTrue(d.running())
        self.assertFalse(d.notify.seen('STOPPING=1'))
        self.assertTrue(d.is_mounted())
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        vpath = sorted(self.files)[0]
        self.assertEqual(rutil.read_file(d.path(vpath)), rutil.read_file(self.files[vpath]))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
