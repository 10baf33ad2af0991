#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The chunk cache through crashes and under load (COVERAGE.md 3.5, 3.10, 5.7; DESIGN.md D7-D9).
5.7/3.5: a SIGKILL between every two steps of a chunk write (the failpoints cache-write,
cache-rename, cache-index and cache-index-commit armed with `kill` over the bus, then a read that
starts a fill), in a chunk read and in an eviction: no chunk file is ever visible with bytes that do
not hash to its name, the next start removes the temporaries, index and store agree again once the
files are read (VerifyCache finds nothing, the totals are those of the files on disk) and no wrong
byte is served. Also readers at many offsets of one file while its fill runs, with and without a
kill in the middle of it. 3.10: the byte total is exact, the budget holds (never above 1.05x) while
readers force constant eviction, and the least-recently-used order survives a restart.
Layer 2: the built daemon on a real mount and a private bus, driven only through D-Bus and signals."""

import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

MiB = 1 << 20


class RangeReaders(rutil.ThreadLoad):
    """Threads reading random ranges (and whole copies) of one file until stopped or a read count is
    reached; every byte compared with the origin. Errors of a dead mount are counted apart."""

    def __init__(self, path, origin, threads=6, max_reads=400):
        self.path = path
        self.origin = rutil.origin_bytes(origin)
        self.wrong = []
        self.errors = []
        self.reads = 0
        self.max_reads = max_reads
        super().__init__(threads)

    def run(self, seed):
        rng = random.Random(seed)
        size = len(self.origin)
        n = 0
        while not self.stop.is_set() and n < self.max_reads:
            n += 1
            if seed == 0:
                off, length = 0, size
            else:
                off = rng.randrange(size)
                length = rng.randrange(1, 300000)
            try:
                data = rutil.read_fresh(self.path, off, length)
            except OSError as e:
                self.errors.append(e.errno)
                if e.errno in rutil.DEAD_MOUNT_ERRNOS:
                    return
                continue
            self.reads += 1
            if data != self.origin[off:off + length]:
                self.wrong.append((off, length, len(data)))

class CacheCrashTest(harness.MusicfsTestCase):

    def library(self, sizes, seed):
        self.lib, self.files = rutil.noise_library(self, sizes, seed=seed)
        self.names = sorted(self.files)

    def start(self, budget='256M', failpoints=None):
        d = self.daemon([self.lib], config_text=rutil.cache_config(budget), failpoints=failpoints)
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        return d

    def restart_after_kill(self, d):
        """Starts again after a SIGKILL; the store has no temporaries left and only whole chunks."""
        d.failpoints = None
        t0 = time.monotonic()
        d.start(timeout=20.0)
        self.assertLess(time.monotonic() - t0, 5.0, 'READY took too long after a crash')
        self.assertEqual(rutil.foreign_files(d), [], 'temporaries of the killed run survived the start')
        self.assertEqual(rutil.bad_chunk_files(d), [])

    def kill_in(self, d, fp, spec, vpath):
        """Arms fp with spec (ending in kill), reads vpath, waits for the daemon to die. Returns what
        the store held at the moment of death (temporaries, chunk files)."""
        rutil.fp_arm(d, fp, spec)
        reader = rutil.Reader(d.path(vpath))
        reader.start()
        rc, _ = rutil.wait_exit(d, 60.0)
        self.assertEqual(rc, -signal.SIGKILL, '%s=%s did not kill the daemon\n%s' % (fp, spec, d.describe()))
        self.assertTrue(reader.wait(10.0), 'a reader stayed blocked on the dead mount')
        if reader.error is None:
            self.assertTrue(reader.data == rutil.origin_bytes(self.files[vpath]), '%s: wrong bytes' % vpath)
        else:
            self.assertIn(reader.error.errno, rutil.DEAD_MOUNT_ERRNOS, reader.error)
        # A chunk is never visible under its name with bytes that are not its own.
        self.assertEqual(rutil.bad_chunk_files(d), [], 'a half-written chunk is visible after %s' % fp)
        return rutil.foreign_files(d), set(rutil.chunk_files(d))

    # 5.7 and 3.5: SIGKILL between every two steps of a chunk write.
    def test_kill_between_write_steps(self):
        self.library([1200000, 1000000, 1400000, 900000, 1300000, 1100000], seed=57)
        d = self.start()
        done = []
        steps = (
            # Two temporaries written, the third not: the batch is neither durable nor renamed.
            ('cache-write', '2*off->kill', 'temporaries'),
            # The batch durable, not renamed.
            ('cache-rename', 'kill', 'temporaries'),
            # Renamed, the index not told: chunk files the index does not know.
            ('cache-index', 'kill', 'orphans'),
            # The index transaction of those chunks not committed: the same.
            ('cache-index-commit', 'kill', 'orphans'),
        )
        for i, (fp, spec, left) in enumerate(steps):
            v = self.names[i]
            tmps, _ = self.kill_in(d, fp, spec, v)
            if left == 'temporaries':
                self.assertTrue(tmps, 'no temporary in the store at a kill in %s: did the kill come between '
                                'the steps?' % fp)
            self.restart_after_kill(d)
            if left == 'orphans':
                # Before anything reads the file again: the store holds chunks the index does not know
                # (harmless: a fill that meets them adopts them), and nothing else is wrong.
                ver = rutil.verify_cache(d)
                self.assertGreater(ver['orphans'], 0, 'no orphan after a kill in %s: did the kill come between '
                                   'the steps? %r' % (fp, ver))
                self.assertEqual((ver['bad'], ver['missing']), (0, 0), ver)
            done.append(v)
            rutil.check_all_bytes(self, d, self.files, done)
            rutil.wait_cached(self, d, self.files, done)
            rutil.assert_consistent(self, d)

        # A kill in the middle of a chunk read (cached file).
        self.kill_in(d, 'cache-chunk-read', '3*off->kill', done[0])
        self.restart_after_kill(d)
        rutil.check_all_bytes(self, d, self.files, done)
        rutil.wait_cached(self, d, self.files, done)
        rutil.assert_consistent(self, d)
        self.assertDaemonStops(d)

        # A kill in an eviction: the next start has a budget far below what is cached.
        budget = 2 * MiB
        d.config_path = os.path.join(d.workdir, 'small-budget.conf')
        with open(d.config_path, 'w', encoding='utf-8') as f:
            f.write(rutil.cache_config(budget))
        d.failpoints = 'cache-evict=1*off->kill'
        d.start(wait_ready=False)
        rc, _ = rutil.wait_exit(d, 60.0)
        self.assertEqual(rc, -signal.SIGKILL, 'cache-evict=kill did not kill the daemon\n%s' % d.describe())
        self.assertEqual(rutil.bad_chunk_files(d), [])
        self.restart_after_kill(d)
        rutil.wait_stats(d, lambda s: s['bytes'] <= budget * 1.05, 30.0, 'the budget is not held after the crash')
        rutil.check_all_bytes(self, d, self.files, done)
        rutil.wait_fills_idle(d)
        rutil.wait_stats(d, lambda s: s['bytes'] <= budget * 1.05, 30.0, 'the budget is not held')
        s = rutil.assert_consistent(self, d)
        self.assertGreater(s['evictions'], 0, s)
        self.assertDaemonStops(d)

    # 5.7 / D8: many readers of one file in the middle of its fill, then a kill there. The fill is
    # held at its 80th chunk write (cache-write=80*off->pause): the first batch (4 MiB) is stored, the
    # next one is half written as temporaries. Readers at every offset get the right bytes, from the
    # stored chunks where the fill has passed and from the origin beyond.
    def test_readers_during_fill(self):
        self.library([8 * MiB, 8 * MiB + 300000], seed=58)
        d = self.start()
        a, b = self.names
        rutil.fp_arm(d, 'cache-write', '80*off->pause')
        rutil.check_all_bytes(self, d, self.files, [a])
        rutil.wait_fired(d, 'cache-write', 1)
        before = rutil.cache_stats(d)
        self.assertGreater(before['bytes'], 0, 'no batch was stored before the pause: %r' % before)
        with RangeReaders(d.path(a), self.files[a], max_reads=30) as rr:
            harness.wait_until(lambda: all(not t.is_alive() for t in rr.threads), 120.0,
                               message='range readers during the fill')
        s = rutil.cache_stats(d)
        self.assertEqual(rr.wrong, [], 'wrong bytes served during a fill')
        self.assertEqual(rr.errors, [])
        self.assertGreater(rr.reads, 100)
        self.assertEqual(s['fills-active'], 1, 'the fill did not wait at the failpoint: %r' % s)
        self.assertGreater(s['hits'], before['hits'], 'nothing was served from the part already stored')
        self.assertGreater(s['misses'], before['misses'])
        rutil.fp_disarm(d, 'cache-write')
        rutil.wait_cached(self, d, self.files, [a])
        rutil.assert_consistent(self, d)

        # The same with b, and a SIGKILL while the readers run and the fill waits.
        rutil.fp_arm(d, 'cache-write', '80*off->pause')
        rutil.check_all_bytes(self, d, self.files, [b])
        rutil.wait_fired(d, 'cache-write', 1)
        self.assertTrue(rutil.foreign_files(d), 'no temporary of the unfinished batch in the store')
        with RangeReaders(d.path(b), self.files[b]) as rr:
            harness.wait_until(lambda: rr.reads >= 30 or rr.wrong, 60.0, message='30 range reads during the fill')
            d.kill9()
        self.assertEqual(rr.wrong, [], 'wrong bytes served during a fill')
        for e in rr.errors:
            self.assertIn(e, rutil.DEAD_MOUNT_ERRNOS)
        self.assertEqual(rutil.bad_chunk_files(d), [])
        self.restart_after_kill(d)
        rutil.check_all_bytes(self, d, self.files)
        rutil.wait_cached(self, d, self.files)
        rutil.assert_consistent(self, d)
        self.assertDaemonStops(d)

    # 3.10: readers that force constant eviction get right bytes; the totals stay those of the files
    # on disk; a pinned file (D9) is never evicted, whatever the pressure.
    def test_eviction_under_readers(self):
        self.library([1000000 + 37000 * i for i in range(10)], seed=310)
        budget = 3 * MiB
        d = self.start(budget='%d' % budget)
        pinned = self.names[4]
        pinned_size = os.path.getsize(self.files[pinned])
        d.bus_call('Pin', 's', d.path(pinned))
        rutil.wait_stats(d, lambda st: st['pins'] == 1 and st['pin-bytes-done'] == st['pin-bytes-total'] == pinned_size,
                         60.0, 'the pin is not fetched')
        rutil.wait_fills_idle(d)
        pin_stats = rutil.cache_stats(d)

        peak = [0]
        stop = threading.Event()
        errors = []

        def sampler():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], rutil.cache_stats(d)['bytes'])
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append('stats: %s' % e)
                    return
                stop.wait(0.03)

        def reader(seed):
            rng = random.Random(seed)
            for _ in range(40):
                if stop.is_set():
                    return
                v = rng.choice(self.names)
                try:
                    if rutil.read_fresh(d.path(v)) != rutil.origin_bytes(self.files[v]):
                        errors.append('%s: wrong bytes' % v)
                except OSError as e:
                    errors.append('%s: %s' % (v, e))
        threads = [threading.Thread(target=sampler, daemon=True)] + \
            [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120.0
        for t in threads[1:]:
            t.join(max(0.1, deadline - time.monotonic()))
        stop.set()
        threads[0].join(10.0)
        self.assertFalse(any(t.is_alive() for t in threads), 'readers did not finish within 120 s')
        self.assertEqual(errors, [])
        self.assertTrue(d.running())
        rutil.wait_fills_idle(d)
        s = rutil.assert_consistent(self, d)
        self.assertLessEqual(s['bytes'], budget * 1.05)
        self.assertGreater(s['evictions'], 0)
        before = rutil.cache_stats(d)
        rutil.check_all_bytes(self, d, self.files, [pinned])
        self.assertEqual(rutil.cache_stats(d)['misses'], before['misses'],
                         'chunks of the pinned file were evicted (right after its pin was fetched the stats said %r)'
                         % pin_stats)
        self.assertEqual(s['pinned-bytes'], pinned_size, s)
        # Unpinned, it is just another file: it may go.
        d.bus_call('Unpin', 's', d.path(pinned))
        rutil.wait_stats(d, lambda st: st['pinned-bytes'] == 0 and st['pins'] == 0, 10.0, 'the unpin')
        self.assertDaemonStops(d)
        # The peak depends on how the two fill threads meet: test_budget_never_exceeded checks it.
        sys.stderr.write('eviction under readers: peak %d bytes, %.2fx the budget\n' % (peak[0], peak[0] / budget))

    # 3.10 / D9: never above 1.05x the budget, even for a moment. Writers store chunks, then evict:
    # the first eviction is held 1.5 s (cache-evict=1*sleep(1500)) while 4 readers fill 4 files, so a
    # poll sees the total the index has while other writers store on; the daemon has it whatever the
    # timing, only for a shorter time.
    def test_budget_never_exceeded(self):
        self.library([3 * MiB + i * 100000 for i in range(4)], seed=313)
        budget = 2 * MiB
        d = self.start(budget='%d' % budget)
        rutil.fp_arm(d, 'cache-evict', '1*sleep(1500)')
        peak = [0]
        readers = [rutil.Reader(d.path(v)) for v in self.names]
        for r in readers:
            r.start()

        def sample():
            peak[0] = max(peak[0], rutil.cache_stats(d)['bytes'])
            return all(r.done.is_set() for r in readers) and rutil.fp_fired(d, 'cache-evict') >= 1
        harness.wait_until(sample, 60.0, 0.02, message='the reads and an eviction')
        for r, v in zip(readers, self.names):
            self.assertTrue(r.data == rutil.origin_bytes(self.files[v]), '%s: %s' % (v, r.error))
        rutil.wait_fills_idle(d)
        s = rutil.wait_stats(d, lambda st: st['bytes'] <= budget * 1.05, 30.0, 'the budget is not held at rest')
        rutil.assert_consistent(self, d)
        self.assertGreater(s['evictions'], 0)
        self.assertDaemonStops(d)
        self.assertLessEqual(peak[0], budget * 1.05, 'the cache held %d bytes, %.2fx its budget of %d (D9: never '
                             'above 1.05x): writers store before they evict, and while one evicts the others store on'
                             % (peak[0], peak[0] / budget, budget))

    # 3.10: the byte total is exact, and the least-recently-used order survives a restart.
    def test_totals_and_lru_survive_restart(self):
        self.library([1000000 + 37000 * i for i in range(10)], seed=311)
        budget = 3 * MiB
        d = self.start(budget='%d' % budget)
        first = self.names[0]
        s = rutil.wait_cached(self, d, self.files, [first])
        self.assertEqual(s['bytes'], os.path.getsize(self.files[first]), 'one file cached: the total is its size')
        self.assertEqual(s['budget'], budget)

        # LRU order survives restarts. last is stored first, then n1, then last is read again, each
        # step in a run of its own (a stop writes the access times of the run); then n2 pushes the
        # total over the budget: the least recently used is n1, so last must stay (it would go first
        # if its access time were lost, being the oldest written).
        d.bus_call('ClearCache')
        s = rutil.cache_stats(d)
        self.assertEqual((s['bytes'], s['chunks']), (0, 0), s)
        self.assertEqual(rutil.chunk_files(d), {})
        last, n1, n2 = self.names[-1], self.names[1], self.names[2]
        for v in (last, n1, last):
            rutil.wait_cached(self, d, self.files, [v])
            self.assertDaemonStops(d)
            d.start()
        s = rutil.cache_stats(d)
        self.assertEqual(s['bytes'], rutil.chunk_bytes_on_disk(d), 'the total after a restart: %r' % s)
        self.assertEqual(s['bytes'], os.path.getsize(self.files[last]) + os.path.getsize(self.files[n1]), s)
        rutil.check_all_bytes(self, d, self.files, [n2])
        rutil.wait_fills_idle(d)
        rutil.wait_stats(d, lambda st: st['bytes'] <= budget * 1.05, 30.0, 'the budget is not held')
        before = rutil.cache_stats(d)
        self.assertGreater(before['evictions'], 0, before)
        rutil.check_all_bytes(self, d, self.files, [last])
        after = rutil.cache_stats(d)
        self.assertEqual(after['misses'], before['misses'],
                         'the file read just before the stop was evicted before an older one: access times '
                         'were not kept across the restart')

        # Unclean stop: the totals are rebuilt right.
        d.kill9()
        self.restart_after_kill(d)
        rutil.assert_consistent(self, d)
        self.assertDaemonStops(d)

    # 3.10 / D9: the LRU order within one run. last is stored, then n1, then last is read again, all
    # within a second; n2 then pushes the total over the budget. Least recently used is n1: last and
    # n2 (being filled) must stay whole.
    def test_lru_order_within_a_run(self):
        self.library([1000000 + 37000 * i for i in range(10)], seed=312)
        budget = 3 * MiB
        d = self.start(budget='%d' % budget)
        last, n1, n2 = self.names[-1], self.names[1], self.names[2]
        for v in (last, n1, last):
            rutil.wait_cached(self, d, self.files, [v])
        rutil.check_all_bytes(self, d, self.files, [n2])
        rutil.wait_fills_idle(d)
        rutil.wait_stats(d, lambda st: st['bytes'] <= budget * 1.05, 30.0, 'the budget is not held')
        lost = {}
        for v in (last, n2, n1):
            before = rutil.cache_stats(d)
            rutil.check_all_bytes(self, d, self.files, [v])
            lost[v] = rutil.cache_stats(d)['misses'] - before['misses']
            rutil.wait_fills_idle(d)
        self.assertGreater(before['evictions'], 0, before)
        self.assertEqual((lost[last], lost[n2]), (0, 0),
                         'eviction took chunks of files used after n1 (reads that missed: %s=%d, %s=%d, n1 %s=%d): '
                         'an access is recorded with the time its batch is flushed (cache.c flush_touches), so '
                         'reads within one maintenance interval (default 60 s) lose their order' % (
                             last, lost[last], n2, lost[n2], n1, lost[n1]))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
