#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""3.3 (COVERAGE.md): backpressure between the daemon's work and its announcements. The original
design broadcast one event per change on a bounded channel that silently dropped for slow receivers.
Here changes are coalesced before they reach the bus: the worker wakes the loop through one eventfd,
the loop publishes the latest TrackCount and ScanProgress (at most a few a second), and a burst of
file changes becomes a few targeted syncs (the watcher's debounce), each one ScanFinished. The test
moves 1,000 tracks into a watched origin in bursts and checks that the bus saw a bounded number of
signals, nothing lost (the last TrackCount is the library's, every sync announced), and that the
daemon kept answering calls within a second meanwhile."""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bus'))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402
import buslib  # noqa: E402

N = 1000
BURSTS = 10
MAX_SIGNALS_PER_S = 20          # one per file would be hundreds a second
CALL_BOUND_S = 1.0


class SignalStormTest(harness.MusicfsTestCase):

    def test_burst_of_changes_is_coalesced(self):
        src = rutil.bulk_library(N)
        root = self.tempdir('musicfs-storm-')
        staging, lib = os.path.join(root, 'staging'), os.path.join(root, 'lib')
        os.makedirs(lib)
        # The generated library, moved in burst by burst (same file system: renames, one event each).
        shutil.copytree(src, staging)
        entries = sorted(rutil.genlib.load_expected(src).values())
        self.assertEqual(len(entries), N)

        d = self.daemon([lib])
        d.wait_tracks(0)
        rutil.wait_scan_done(d)
        rec = buslib.Recorder(d.bus_address)
        self.addCleanup(rec.close)
        t0 = time.monotonic()
        mark = rec.mark()

        # Each burst lands while the sync of the one before may still run; the next burst starts once
        # the tree has the previous one, so that the storm lasts and spans several syncs.
        slowest = 0.0
        per_burst = (len(entries) + BURSTS - 1) // BURSTS
        for b in range(BURSTS):
            for e in entries[b * per_burst:(b + 1) * per_burst]:
                os.makedirs(os.path.dirname(os.path.join(lib, e)), exist_ok=True)
                os.rename(os.path.join(staging, e), os.path.join(lib, e))
            t = time.monotonic()
            d.bus_call('GetCacheStats', timeout=10)
            slowest = max(slowest, time.monotonic() - t)
            rec.pump()
            d.wait_tracks(min(N, (b + 1) * per_burst), timeout=120)

        def announced():
            return sum(a[1] for _, _, _, a in rec.select('ScanFinished', since=mark))
        # Everything settles: the last announcements of the last sync arrive.
        rec.wait_for(lambda: announced() >= N and N in rec.changes('TrackCount', since=mark), 30,
                     'ScanFinished for %d added tracks and TrackCount %d (got %d, %r)' % (
                         N, N, announced(), rec.changes('TrackCount', since=mark)[-5:]))
        elapsed = time.monotonic() - t0

        signals = rec.select(since=mark)
        finished = rec.select('ScanFinished', since=mark)
        counts = rec.changes('TrackCount', since=mark)
        added = sum(a[1] for _, _, _, a in finished)
        rate = len(signals) / elapsed
        print('%d tracks in %d bursts: %d signals in %.1f s (%.1f/s), %d ScanFinished, %d TrackCount changes, '
              'slowest call %.3f s' % (N, BURSTS, len(signals), elapsed, rate, len(finished), len(counts), slowest),
              file=sys.stderr)

        self.assertLessEqual(rate, MAX_SIGNALS_PER_S, 'the bus got %d signals in %.1f s' % (len(signals), elapsed))
        self.assertLess(len(signals), N // 4, 'not coalesced: %d signals for %d changes' % (len(signals), N))
        # Nothing lost: each sync is announced with what it added, and they add up to the library.
        self.assertGreaterEqual(len(finished), 1)
        self.assertEqual(added, N, 'ScanFinished announced %d added tracks, %d were moved in' % (added, N))
        self.assertEqual(counts[-1], N)
        self.assertEqual(counts, sorted(counts), 'TrackCount went backwards: %r' % counts)
        self.assertLess(slowest, CALL_BOUND_S, 'a call took %.2f s during the storm' % slowest)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
