#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The chunk cache's files damaged under it (COVERAGE.md 2.4, 6.3, 6.4; DESIGN.md D7): chunk files
flipped, truncated and deleted on disk while the daemon is down (after a clean stop or a SIGKILL) and
while it runs, the whole store deleted, garbage over the LMDB index and over the catalog's SQLite
header, and index errors at runtime (failpoints). After each: every read is compared with the origin
file (no wrong byte is ever served), the daemon keeps running, bad chunks are dropped and fetched
again by themselves, a damaged index is moved aside and rebuilt from the chunk files, and once the
files are read again the cache is whole: VerifyCache finds nothing, its totals are those of the files
on disk. VerifyCache counts damage exactly and VerifyCache(repair) mends it without a read.
Layer 2: the built daemon on a real mount and a private bus, driven only through D-Bus and signals."""

import glob
import hashlib
import os
import random
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

# About 200 chunks of 64 KiB on average: more than the 100 the daemon spot-checks at startup, so some
# damage is only found by the read that meets it.
SIZES = [1400000, 900000, 1700000, 600000, 1300000, 1100000, 800000, 1600000, 1000000, 1500000]


def flip(path, rng):
    size = os.path.getsize(path)
    off = rng.randrange(size)
    with open(path, 'r+b') as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x5a]))


def truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


class CacheIntegrityTest(harness.MusicfsTestCase):

    def setUp(self):
        super().setUp()
        self.lib, self.files = rutil.noise_library(self, SIZES, seed=24)

    def library_bytes(self):
        return sum(os.path.getsize(p) for p in self.files.values())

    def cached_daemon(self, **kwargs):
        """A daemon whose cache holds the whole library, consistent."""
        d = self.daemon([self.lib], config_text=rutil.cache_config('256M'), **kwargs)
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        rutil.wait_cached(self, d, self.files)
        s = rutil.assert_consistent(self, d)
        self.assertEqual(s['bytes'], self.library_bytes(), 'noise does not dedup: the cache holds exactly the library')
        self.assertGreater(s['chunks'], 100)
        return d

    def damage_chunks(self, d, rng, n_flip=6, n_trunc=6, n_del=6, n_empty=2):
        """Damages distinct chunk files; returns (bad ones, deleted ones)."""
        names = sorted(rutil.chunk_files(d))
        picked = rng.sample(names, n_flip + n_trunc + n_del + n_empty)
        files = rutil.chunk_files(d)
        for h in picked[:n_flip]:
            flip(files[h], rng)
        for h in picked[n_flip:n_flip + n_trunc]:
            truncate(files[h])
        for h in picked[n_flip + n_trunc:n_flip + n_trunc + n_del]:
            os.unlink(files[h])
        for h in picked[n_flip + n_trunc + n_del:]:
            os.truncate(files[h], 0)
        return n_flip + n_trunc + n_empty, n_del

    def assertRecovers(self, d, min_bad=0):
        """Right bytes at once, then a whole, consistent cache after the files are read again."""
        rutil.check_all_bytes(self, d, self.files)
        self.assertTrue(d.running())
        s = rutil.wait_cached(self, d, self.files)
        self.assertGreaterEqual(s['bad-chunks'], min_bad, 'not every damaged chunk was caught: %r' % s)
        rutil.assert_consistent(self, d)
        self.assertFalse(s['passthrough'], s)
        self.assertEqual(str(d.bus_get('State')), 'ready')
        return s

    # The baseline of everything below: what was cached is still cached after a clean restart and
    # after a SIGKILL (no file is fetched again), and the index agrees with the store.
    def test_cache_survives_restart(self):
        d = self.cached_daemon()
        chunks = set(rutil.chunk_files(d))
        for how in ('SIGTERM', 'SIGKILL'):
            if how == 'SIGTERM':
                self.assertDaemonStops(d)
            else:
                d.kill9()
            d.start(timeout=10.0)
            s = rutil.cache_stats(d)
            self.assertEqual((s['chunks'], s['bytes']), (len(chunks), self.library_bytes()),
                             'after a %s the index does not have what the store holds: %r' % (how, s))
            rutil.check_all_bytes(self, d, self.files)
            after = rutil.cache_stats(d)
            self.assertEqual(after['misses'], s['misses'], 'after a %s the cached files are fetched again' % how)
            self.assertEqual(set(rutil.chunk_files(d)), chunks)
            rutil.assert_consistent(self, d)
        self.assertDaemonStops(d)

    # 2.4: damage at rest, found at the next start or by the read that meets it.
    def _damaged_at_rest(self, clean):
        d = self.cached_daemon()
        if clean:
            self.assertDaemonStops(d)
        else:
            d.kill9()
        rng = random.Random(24 if clean else 25)
        bad, _ = self.damage_chunks(d, rng)
        # A temporary an earlier crash left behind.
        sub = sorted(os.listdir(rutil.chunks_dir(d)))[0]
        with open(os.path.join(rutil.chunks_dir(d), sub, '.tmp-%s-leftover' % ('ab' * 32)), 'wb') as f:
            f.write(os.urandom(5000))
        t0 = time.monotonic()
        d.start(timeout=10.0)
        self.assertLess(time.monotonic() - t0, 5.0, 'READY took too long with damaged chunks')
        self.assertEqual(rutil.foreign_files(d), [], 'a leftover temporary survived the start')
        self.assertRecovers(d, min_bad=bad)
        self.assertDaemonStops(d)

    def test_damaged_chunks_after_clean_stop(self):
        self._damaged_at_rest(clean=True)

    def test_damaged_chunks_after_sigkill(self):
        self._damaged_at_rest(clean=False)

    # 6.4: damage while the daemon serves.
    def test_damaged_chunks_while_running(self):
        d = self.cached_daemon()
        before = rutil.cache_stats(d)
        bad, _ = self.damage_chunks(d, random.Random(64))
        rutil.check_all_bytes(self, d, self.files)
        s = rutil.cache_stats(d)
        self.assertGreaterEqual(s['bad-chunks'] - before['bad-chunks'], bad,
                                'reads met damaged chunks without noticing: %r' % s)
        self.assertRecovers(d, min_bad=bad)

        # A chunk the daemon cannot open (mode 000 means nothing to root: a directory in its place).
        victim = sorted(rutil.chunk_files(d).items())[7][1]
        os.unlink(victim)
        os.mkdir(victim)
        rutil.check_all_bytes(self, d, self.files)
        self.assertTrue(d.running())
        os.rmdir(victim)
        self.assertRecovers(d)

        # Everything below chunks/ gone (rm -rf chunks/*): all reads go to the origin, the store
        # fills again.
        for sub in os.listdir(rutil.chunks_dir(d)):
            shutil.rmtree(os.path.join(rutil.chunks_dir(d), sub))
        self.assertEqual(rutil.chunk_files(d), {})
        self.assertRecovers(d)
        self.assertEqual(rutil.chunk_bytes_on_disk(d), self.library_bytes())
        self.assertDaemonStops(d)

    # 2.4 / 6.4: VerifyCache counts exactly what was done to the store, and repair makes it whole
    # without a read: bad chunks and missing ones leave the index, a good chunk the index does not know
    # (a crash between rename and index leaves such) is adopted.
    def test_verify_and_repair(self):
        d = self.cached_daemon()
        n_before = len(rutil.chunk_files(d))
        bad, missing = self.damage_chunks(d, random.Random(77), n_flip=3, n_trunc=3, n_del=3, n_empty=1)
        orphan = os.urandom(70000)
        name = hashlib.sha256(orphan).hexdigest()
        os.makedirs(os.path.join(rutil.chunks_dir(d), name[:2]), exist_ok=True)
        with open(os.path.join(rutil.chunks_dir(d), name[:2], name), 'wb') as f:
            f.write(orphan)
        v = rutil.verify_cache(d)
        self.assertEqual((v['bad'], v['missing'], v['orphans'], v['repaired']), (bad, missing, 1, 0), v)
        self.assertEqual(v['checked'], n_before - missing + 1, v)
        v = rutil.verify_cache(d, repair=True)
        self.assertEqual((v['bad'], v['missing'], v['orphans']), (bad, missing, 1), v)
        self.assertEqual(v['repaired'], bad + missing + 1, v)
        v = rutil.verify_cache(d)
        self.assertEqual((v['bad'], v['missing'], v['orphans'], v['repaired']), (0, 0, 0, 0), v)
        s = rutil.cache_stats(d)
        self.assertEqual(s['chunks'], n_before - bad - missing + 1, s)
        self.assertEqual(s['bytes'], rutil.chunk_bytes_on_disk(d), s)
        self.assertIn(name, rutil.chunk_files(d), 'the good orphan was not kept')
        self.assertRecovers(d)
        self.assertDaemonStops(d)

    def test_chunk_store_deleted_at_rest(self):
        # 6.4: all chunk files gone while the index still lists them: the store is made again at the
        # start, every chunk is fetched again.
        d = self.cached_daemon()
        self.assertDaemonStops(d)
        shutil.rmtree(rutil.chunks_dir(d))
        d.start(timeout=10.0)
        self.assertTrue(os.path.isdir(rutil.chunks_dir(d)), 'chunks/ was not made again at the start')
        self.assertRecovers(d)
        self.assertDaemonStops(d)

    # 6.3 / 3.5: the LMDB index damaged at rest. It is detected, moved aside, rebuilt from the chunk
    # files; the chunks on disk are kept (no chunk is fetched again), nothing wrong is served.
    def _index_damaged(self, clean, how):
        d = self.cached_daemon()
        chunks_before = set(rutil.chunk_files(d))
        if clean:
            self.assertDaemonStops(d)
        else:
            d.kill9()
        path = rutil.index_path(d)
        size = os.path.getsize(path)
        rng = random.Random(63)
        with open(path, 'r+b') as f:
            if how == 'header':
                f.write(b'\xff' * 8192)
            elif how == 'middle':
                f.seek(size // 4)
                f.write(bytes(rng.randrange(256) for _ in range(size // 2)))
            elif how == 'truncated':
                f.truncate(4096)
        with open(path, 'rb') as f:
            damaged = f.read()
        t0 = time.monotonic()
        d.start(timeout=20.0)
        self.assertLess(time.monotonic() - t0, 5.0, 'READY took too long with a damaged index')
        rutil.check_all_bytes(self, d, self.files)
        self.assertTrue(d.running())
        moved = glob.glob(path + '.corrupt-*')
        said = sorted(set(line.split(': ', 2)[-1] for line in d.log().splitlines()
                          if 'ndex' in line or 'recoverable' in line))[:6]
        self.assertEqual(len(moved), 1, 'the damaged index (%s, %s stop) was neither detected nor moved aside '
                         'and rebuilt: the daemon goes on with it (log: %s)' % (
                             how, 'clean' if clean else 'unclean', '; '.join(said)))
        self.assertRegex(d.log(), r'(?i)corrupt|damaged', 'the damaged index was not reported')
        with open(moved[0], 'rb') as f:
            self.assertEqual(f.read(), damaged, 'the moved-aside file is not the damaged index')
        # Rebuilt from the chunk files: they are all still there and counted.
        s = rutil.cache_stats(d)
        self.assertEqual(set(rutil.chunk_files(d)), chunks_before)
        self.assertEqual(s['chunks'], len(chunks_before), s)
        self.assertEqual(s['bytes'], rutil.chunk_bytes_on_disk(d), s)
        self.assertRecovers(d)
        self.assertEqual(set(rutil.chunk_files(d)), chunks_before, 'the rebuilt cache stores other chunks')
        self.assertDaemonStops(d)
        # The rebuilt index is a good one: the next start uses it as it is.
        d.start(timeout=10.0)
        self.assertEqual(len(glob.glob(path + '.corrupt-*')), 1)
        before = rutil.cache_stats(d)
        rutil.check_all_bytes(self, d, self.files)
        after = rutil.cache_stats(d)
        self.assertEqual(after['misses'], before['misses'], 'the rebuilt index lost the files after a restart')
        self.assertDaemonStops(d)

    def test_index_header_garbage_after_clean_stop(self):
        self._index_damaged(True, 'header')

    def test_index_middle_garbage_after_sigkill(self):
        self._index_damaged(False, 'middle')

    def test_index_middle_garbage_after_clean_stop(self):
        # The file was closed cleanly and damaged afterwards: the start must not trust it blindly
        # (LMDB trusts its pages and may crash on a bad one).
        self._index_damaged(True, 'middle')

    def test_index_truncated_after_sigkill(self):
        self._index_damaged(False, 'truncated')

    # 6.3 at runtime: the index failing (failpoints on its writes) sends reads to the origins, and the
    # cache comes back by itself once the index works again.
    def test_index_errors_while_running(self):
        d = self.daemon([self.lib], config_text=rutil.cache_config('256M'))
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        names = sorted(self.files)
        for i, (fp, first, second) in enumerate((('cache-index', names[:3], names[3:5]),
                                                 ('cache-index-commit', names[5:8], names[8:]))):
            rutil.fp_arm(d, fp, 'return(EIO)')
            rutil.check_all_bytes(self, d, self.files, first)
            rutil.wait_fired(d, fp, 1)
            # The health probe tests the disk, not the index: passthrough turns off again at the next
            # maintenance pass while the point is still armed, and on at the next failure. So the
            # log, not a poll of the stats, says it was on.
            d.wait_log(r'Passthrough is on: the cache disk failed \(io-error\)', count=i + 1)
            rutil.check_all_bytes(self, d, self.files, first + second)
            self.assertTrue(d.running())
            rutil.fp_disarm(d, fp)
            rutil.wait_passthrough(d, False)
            rutil.wait_state(d, 'ready')
            rutil.wait_cached(self, d, self.files, first + second)
            rutil.assert_consistent(self, d)
        self.assertDaemonStops(d)

    # 2.4: garbage over the catalog's SQLite header. The catalog is rebuilt by a rescan; the cache
    # does not depend on it and keeps serving the same chunks (no file is fetched again).
    def test_catalog_garbage_keeps_cache(self):
        d = self.cached_daemon()
        chunks_before = set(rutil.chunk_files(d))
        self.assertDaemonStops(d)
        catalog = os.path.join(d.cache_dir, 'catalog.db')
        with open(catalog, 'r+b') as f:
            f.write(b'\xff' * 100)
        d.start(timeout=10.0)
        self.assertIn('corrupt', d.log())
        d.wait_tracks(len(self.files), timeout=120.0)
        rutil.wait_scan_done(d)
        before = rutil.cache_stats(d)
        rutil.check_all_bytes(self, d, self.files)
        after = rutil.cache_stats(d)
        self.assertEqual(after['misses'], before['misses'], 'the cache was lost with the catalog: %r' % after)
        self.assertGreater(after['hits'], before['hits'])
        self.assertEqual(set(rutil.chunk_files(d)), chunks_before)
        rutil.assert_consistent(self, d)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
