#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The cache disk failing under the daemon (COVERAGE.md 2.8, 6.6, 6.7; DESIGN.md D9, D11), with real
faults: the cache directory on a small tmpfs filled to the last byte by a ballast file and by the
cache itself, the same tmpfs remounted read-only and back, the store's directories made unwritable
for a daemon without CAP_DAC_OVERRIDE (so modes bind it), and I/O errors from the failpoints of the
chunk reads and writes. Through all of it every read is compared with the origin file; the daemon
turns passthrough on with the disk's reason (State "degraded"), and once the fault is gone it turns
it off by itself (State "ready"), the cache fills again and VerifyCache finds it whole.
Layer 2: the built daemon on a real mount and a private bus, driven only through D-Bus and signals."""

import errno
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

MiB = 1 << 20
SIZES = [1300000, 900000, 1600000, 700000, 1200000, 1000000, 1500000, 800000]


def fill_disk(path, name='ballast'):
    """Writes a ballast file in the filesystem at path until it is full (ENOSPC); returns its path."""
    p = os.path.join(path, name)
    block = os.urandom(MiB)
    with open(p, 'wb', buffering=0) as f:
        for size in (MiB, 64 << 10, 4096, 512):
            for _ in range(4096):       # bounded: 4 GiB at most
                try:
                    f.write(block[:size])
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return p


def set_store_mode(d, mode):
    top = rutil.chunks_dir(d)
    for sub in os.listdir(top):
        p = os.path.join(top, sub)
        if os.path.isdir(p):
            os.chmod(p, mode)
    os.chmod(top, mode)


class CacheDiskTest(harness.MusicfsTestCase):

    def setUp(self):
        super().setUp()
        self.lib, self.files = rutil.noise_library(self, SIZES, seed=66)
        self.names = sorted(self.files)

    def start(self, d):
        d.start()
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        return d

    def assertRecovered(self, d, names=None):
        """Passthrough off, State ready, the files cached again, index and store in agreement."""
        rutil.wait_passthrough(d, False, timeout=30.0)
        rutil.wait_state(d, 'ready')
        self.assertFalse(bool(d.bus_get('Passthrough')))
        rutil.wait_cached(self, d, self.files, names)
        return rutil.assert_consistent(self, d)

    # 2.8: the cache disk filled to the last byte by files that are not the cache's. Passthrough
    # "full" at once; D9: past 90 % the cache evicts, so once its own chunks made room it goes back
    # to caching by itself. Emptied and filled again, with nothing of its own to evict: passthrough stays
    # on (State degraded) until the ballast goes. Every read byte-exact throughout.
    def test_disk_full_by_ballast(self):
        t = self.tmpfs(24 * MiB)
        d = self.start(self.daemon([self.lib], cache_dir=t.path, config_text=rutil.cache_config('256M'), start=False))
        cached = self.names[:3]
        rutil.wait_cached(self, d, self.files, cached)
        ballast = fill_disk(t.path)
        self.assertGreaterEqual(t.usage()[2], 99.0)
        d.wait_log(r'Cache disk failed \(full', timeout=15.0)
        rutil.check_all_bytes(self, d, self.files)
        s = rutil.wait_passthrough(d, False, timeout=30.0)
        self.assertGreater(s['evictions'], 0, 'the cache did not make room: %r' % s)
        self.assertLess(s['disk-percent'], 99.0, s)
        self.assertTrue(d.running())

        # Nothing of the cache's left to evict, then full again.
        d.bus_call('ClearCache')
        rutil.wait_fills_idle(d)
        ballasts = [fill_disk(t.path, 'ballast2')]
        self.assertGreaterEqual(t.usage()[2], 99.0)

        def full():
            # Whatever frees a little space meanwhile (a temporary removed, a WAL truncated) is
            # filled again, so the disk stays past the last watermark.
            if t.usage()[2] < 99.5 and len(ballasts) < 20:
                ballasts.append(fill_disk(t.path, 'ballast%d' % (len(ballasts) + 2)))
            # The stats' disk figure is taken when they are read, the passthrough state when the
            # daemon last looked: a sample between a free and the top-up is not the state under test.
            s = rutil.cache_stats(d)
            return s if s['passthrough'] and s['passthrough-reason'] == 'full' and s['disk-percent'] >= 99.0 else None
        s = harness.wait_until(full, 20.0, 0.05, message='passthrough "full" with the disk full')
        rutil.wait_state(d, 'degraded')
        self.assertTrue(bool(d.bus_get('Passthrough')))
        rutil.check_all_bytes(self, d, self.files)
        rutil.check_all_bytes(self, d, self.files)
        s = rutil.cache_stats(d)
        self.assertTrue(s['passthrough'], 'passthrough went off with the disk still full: %r' % s)
        self.assertTrue(d.running())
        self.assertEqual(rutil.bad_chunk_files(d), [])
        for b in [ballast] + ballasts:
            os.unlink(b)
        self.assertRecovered(d)
        self.assertDaemonStops(d)

    # 2.8 / D9: the cache itself would fill the disk (its budget is larger than the disk): the
    # watermarks hold it below the top and reads never suffer.
    def test_disk_filled_by_cache(self):
        t = self.tmpfs(8 * MiB)
        lib, files = rutil.noise_library(self, [2 * MiB + i * 100000 for i in range(10)], seed=28, prefix='big')
        d = self.daemon([lib], cache_dir=t.path, config_text=rutil.cache_config('1G'), start=False)
        d.start()
        d.wait_tracks(len(files))
        rutil.wait_scan_done(d)
        peak = [0.0]
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                peak[0] = max(peak[0], t.usage()[2])
                stop.wait(0.01)
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            for _ in range(2):
                rutil.check_all_bytes(self, d, files)
                self.assertTrue(d.running())
            rutil.wait_fills_idle(d, 60.0)
        finally:
            stop.set()
            th.join(5.0)
        # Once nothing writes, the cache is back under its watermarks by itself.
        s = rutil.wait_passthrough(d, False, timeout=30.0)
        rutil.wait_state(d, 'ready')
        self.assertLess(s['disk-percent'], 99.0, s)
        self.assertLess(abs(s['disk-percent'] - t.usage()[2]), 3.0, 'disk-percent %r, df says %.1f' % (s, t.usage()[2]))
        self.assertGreater(s['chunks'], 0, 'the cache kept nothing')
        self.assertLessEqual(s['bytes'], 8 * MiB)
        rutil.check_all_bytes(self, d, files)
        rutil.wait_fills_idle(d, 60.0)
        rutil.wait_passthrough(d, False, timeout=30.0)
        rutil.assert_consistent(self, d)
        sys.stderr.write('disk filled by the cache: peak %.1f %% of 8 MiB, at rest %.1f %%, %d chunks\n' % (
            peak[0], s['disk-percent'], s['chunks']))
        # D9: past 90 % the cache evicts (least recently used first) to make room, so the files read
        # last are the ones cached: the last one comes wholly from the cache once read again.
        s = rutil.cache_stats(d)
        newest = sorted(files)[-1]
        self.assertDaemonStops(d)
        enospc = d.log().count('No space left on device')
        self.assertGreater(s['evictions'], 0, 'the cache filled its disk (%d ENOSPC in the log) and never evicted: '
                           'the 90 %% watermark evicts only while the stored bytes pass 80 %% of the budget '
                           '(cache.c budget_check), so with a budget larger than the disk nothing makes room and '
                           'every new file fails to fill: %r' % (enospc, s))
        d.start()
        rutil.wait_cached(self, d, files, [newest], timeout=30.0)
        self.assertDaemonStops(d)

    def remount(self, t, read_only, d=None):
        """Remounts t; going read-only waits until no file on it is open for writing (a fill or the
        health probe may hold one for a moment): bounded by a deadline."""
        def done():
            if d is not None and read_only:
                rutil.wait_fills_idle(d)
            return t.remount(read_only)
        harness.wait_until(done, 20.0, 0.05, message='mount -o remount,%s %s' % ('ro' if read_only else 'rw', t.path))

    # 6.6: the chunk store's disk goes read-only under the daemon, and comes back; then it is
    # read-only when the daemon starts. (The store has a disk of its own here: Linux refuses to make a
    # filesystem read-only while a file on it is open for writing, and the index and the catalog
    # always are.)
    def test_read_only_disk(self):
        cache_dir = self.tempdir('musicfs-cache-')
        chunks = os.path.join(cache_dir, 'cache', 'chunks')
        os.makedirs(chunks)
        t = self.tmpfs(64 * MiB, path=chunks)
        d = self.start(self.daemon([self.lib], cache_dir=cache_dir, config_text=rutil.cache_config('256M'),
                                   start=False))
        cached, uncached = self.names[:4], self.names[4:]
        rutil.wait_cached(self, d, self.files, cached)
        n_chunks = len(rutil.chunk_files(d))
        self.remount(t, True, d)
        try:
            rutil.check_all_bytes(self, d, self.files, cached)
            rutil.check_all_bytes(self, d, self.files, uncached)
            rutil.wait_passthrough(d, True, 'read-only', timeout=15.0)
            rutil.wait_state(d, 'degraded')
            self.assertTrue(bool(d.bus_get('Passthrough')))
            # Switching passthrough off by hand cannot override the disk.
            d.bus_call('SetPassthrough', 'b', False)
            s = rutil.cache_stats(d)
            self.assertTrue(s['passthrough'], s)
            self.assertEqual(s['passthrough-reason'], 'read-only')
            rutil.check_all_bytes(self, d, self.files)
            self.assertTrue(d.running())
            self.assertEqual(len(rutil.chunk_files(d)), n_chunks)
        finally:
            self.remount(t, False)
        self.assertRecovered(d)

        # Manual passthrough is not a disk fault: State stays ready.
        d.bus_call('SetPassthrough', 'b', True)
        s = rutil.wait_passthrough(d, True, 'manual')
        self.assertEqual(str(d.bus_get('State')), 'ready')
        rutil.check_all_bytes(self, d, self.files)
        d.bus_call('SetPassthrough', 'b', False)
        rutil.wait_passthrough(d, False)
        self.assertDaemonStops(d)

        # Read-only from the start.
        self.remount(t, True)
        try:
            d.start(timeout=10.0)
            rutil.wait_passthrough(d, True, 'read-only', timeout=15.0)
            rutil.wait_state(d, 'degraded')
            rutil.check_all_bytes(self, d, self.files)
            self.assertTrue(d.running())
        finally:
            self.remount(t, False)
        self.assertRecovered(d)
        self.assertDaemonStops(d)

    # 6.6: bad sectors: reads and writes of the cache disk fail with EIO.
    def test_io_errors(self):
        d = self.start(self.daemon([self.lib], config_text=rutil.cache_config('256M'), start=False))
        cached, uncached = self.names[:4], self.names[4:]
        rutil.wait_cached(self, d, self.files, cached)
        n_chunks = len(rutil.chunk_files(d))
        for i, (fp, names) in enumerate((('cache-chunk-read', cached), ('cache-write', uncached))):
            rutil.fp_arm(d, fp, 'return(EIO)')
            rutil.check_all_bytes(self, d, self.files, names)
            rutil.wait_fired(d, fp, 1)
            # The health probe writes and reads a file of its own, past these failpoints: passthrough
            # may be off again at the next maintenance pass while the point is armed. The log says it
            # was on.
            d.wait_log(r'Passthrough is on: the cache disk failed \(io-error\)', count=i + 1)
            rutil.check_all_bytes(self, d, self.files)
            self.assertTrue(d.running())
            rutil.fp_disarm(d, fp)
            # An EIO while reading a chunk says nothing about its bytes: it is kept.
            self.assertGreaterEqual(len(rutil.chunk_files(d)), n_chunks)
            self.assertRecovered(d, cached)
        self.assertRecovered(d)
        self.assertDaemonStops(d)

    # 6.7: the store's directories lose their write permission while the daemon runs.
    def test_permissions_changed_while_running(self):
        d = rutil.cap_dropped_daemon(self, [self.lib], config_text=rutil.cache_config('256M'), start=False)
        self.start(d)
        cached, uncached = self.names[:4], self.names[4:]
        rutil.wait_cached(self, d, self.files, cached)
        set_store_mode(d, 0o500)
        try:
            rutil.check_all_bytes(self, d, self.files, uncached)
            rutil.wait_passthrough(d, True, 'permission', timeout=15.0)
            rutil.wait_state(d, 'degraded')
            rutil.check_all_bytes(self, d, self.files)
            self.assertTrue(d.running())
            # While the disk is away a chunk rots: the recovery checks the chunks (all of them: fewer
            # than the 100 it samples) before it trusts them again.
            victim = sorted(rutil.chunk_files(d).values())[5]
            with open(victim, 'r+b') as f:
                b = f.read(1)
                f.seek(0)
                f.write(bytes([b[0] ^ 0xff]))
            bad_before = rutil.cache_stats(d)['bad-chunks']
        finally:
            set_store_mode(d, 0o755)
        s = rutil.wait_passthrough(d, False, timeout=30.0)
        self.assertEqual(s['bad-chunks'], bad_before + 1, 'the recovery did not check the chunks: %r' % s)
        self.assertFalse(os.path.exists(victim))
        self.assertRecovered(d)

        # One chunk file the daemon may not read.
        victim = sorted(rutil.chunk_files(d).values())[3]
        os.chmod(victim, 0)
        try:
            rutil.check_all_bytes(self, d, self.files)
            self.assertTrue(d.running())
        finally:
            os.chmod(victim, 0o644)
        self.assertRecovered(d)
        self.assertDaemonStops(d)

    # 6.7: the store is not writable when the daemon starts: it starts anyway, in passthrough.
    def test_unwritable_store_at_start(self):
        d = rutil.cap_dropped_daemon(self, [self.lib], config_text=rutil.cache_config('256M'), start=False)
        self.start(d)
        rutil.wait_cached(self, d, self.files, self.names[:3])
        self.assertDaemonStops(d)
        set_store_mode(d, 0o500)
        try:
            d.start(timeout=10.0)
            rutil.wait_passthrough(d, True, 'permission', timeout=15.0)
            rutil.wait_state(d, 'degraded')
            rutil.check_all_bytes(self, d, self.files)
            self.assertTrue(d.running())
            log = d.log()
        finally:
            set_store_mode(d, 0o755)
        self.assertRecovered(d)
        self.assertDaemonStops(d)
        # 6.7 asks for the exact path (and the mode expected) in the error at startup.
        self.assertIn(rutil.chunks_dir(d), log, 'the startup error does not name the directory that is not '
                      'writable (%s, mode 0500)' % rutil.chunks_dir(d))


if __name__ == '__main__':
    harness.main()
