#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""6.2 (COVERAGE.md): the catalog is a rebuildable cache (D5). A catalog.db damaged while the daemon
was down — its header overwritten with 0xFF, or garbage in the middle of the file — is detected at the
next start, logged, moved aside to catalog.db.corrupt-<time> (kept for a post-mortem), and replaced by
an empty one: the daemon mounts at once (READY) and the rescan fills the tree back to the whole
library, while lookups and reads during the rescan get right answers or ENOENT, never a crash."""

import errno
import glob
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

BULK = 1000
SCAN_BATCH = 50


class Prober(rutil.ThreadLoad):
    """Threads that list, stat and read the mount while it fills; only ENOENT is an acceptable
    error (a name the rescan has not reached yet)."""

    def __init__(self, d, files, threads=3):
        self.d = d
        self.files = files
        self.names = sorted(files)
        self.errors = []
        self.ops = 0
        self.found = 0
        super().__init__(threads)

    def run(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set() and len(self.errors) < 20:
            v = rng.choice(self.names)
            try:
                if rng.random() < 0.3:
                    os.listdir(self.d.path(os.path.dirname(v)))
                else:
                    with open(self.d.path(v), 'rb') as f:
                        data = f.read()
                    if data != rutil.read_file(self.files[v]):
                        self.errors.append('%s: wrong bytes' % v)
                    self.found += 1
            except OSError as e:
                if e.errno != errno.ENOENT:
                    self.errors.append('%s: %s' % (v, e))
            self.ops += 1

class CatalogCorruptTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = rutil.bulk_library(BULK)
        cls.files = rutil.origin_files(cls.lib)

    def catalog(self, d):
        return os.path.join(d.cache_dir, 'catalog.db')

    def first_run(self):
        d = self.daemon([self.lib])
        d.wait_tracks(BULK, timeout=300.0)
        rutil.wait_scan_done(d)
        self.assertDaemonStops(d)
        self.assertEqual(glob.glob(self.catalog(d) + '.corrupt-*'), [])
        return d

    def assertRebuilt(self, d, damaged):
        # A slow rescan (small batches, each held 300 ms), so that lookups meet a half-filled tree.
        d.config_path = os.path.join(d.workdir, 'slow-scan.conf')
        with open(d.config_path, 'w', encoding='utf-8') as f:
            f.write('[musicfsd]\nscan_batch = %d\n' % SCAN_BATCH)
        d.failpoints = 'scan-batch=sleep(300)'
        t0 = time.monotonic()
        d.start(timeout=10.0)
        self.assertLess(time.monotonic() - t0, 5.0, 'READY took too long with a corrupt catalog')
        counts = set()
        with Prober(d, self.files) as prober:
            def full():
                d._check_running()
                counts.add(int(d.bus_get('TrackCount')))
                return BULK in counts
            harness.wait_until(full, 300.0, 0.05, message='TrackCount %d' % BULK)
            partial_ops = prober.ops
            rutil.wait_scan_done(d)
        self.assertEqual(prober.errors, [])
        self.assertGreater(partial_ops, 0)
        self.assertTrue([c for c in counts if 0 < c < BULK], 'never saw a half-filled tree: %r' % counts)
        self.assertTrue(d.running())
        d.config_path = None
        d.failpoints = None

        log = d.log()
        self.assertIn('corrupt', log)
        self.assertRegex(log, r'with 0 tracks from the catalog', 'the corrupt catalog was used, not replaced')
        moved = glob.glob(self.catalog(d) + '.corrupt-*')
        self.assertEqual(len([m for m in moved if not m.endswith(('-wal', '-shm'))]), 1, moved)
        corpse = [m for m in moved if not m.endswith(('-wal', '-shm'))][0]
        self.assertIn(os.path.basename(corpse), log)
        with open(corpse, 'rb') as f:
            self.assertEqual(f.read(), damaged, 'the moved-aside file is not the damaged catalog')

        self.assertEqual(rutil.tree_files(d.mountpoint), set(self.files))
        for v in sorted(self.files)[::50]:
            self.assertEqual(rutil.read_file(d.path(v)), rutil.read_file(self.files[v]), v)
        inodes = rutil.tree_inodes(d.mountpoint)
        self.assertDaemonStops(d)

        # The rebuilt catalog is a good one: the next start serves it at once, same tree.
        d.start(timeout=10.0)
        self.assertEqual(int(d.bus_get('TrackCount')), BULK)
        self.assertEqual(rutil.tree_inodes(d.mountpoint), inodes)
        self.assertNotIn('corrupt', d.log())
        self.assertDaemonStops(d)

    def damage(self, path, offset, data):
        with open(path, 'r+b') as f:
            f.seek(offset)
            f.write(data)
        with open(path, 'rb') as f:
            return f.read()

    def test_header_overwritten(self):
        d = self.first_run()
        damaged = self.damage(self.catalog(d), 0, b'\xff' * 100)
        self.assertRebuilt(d, damaged)

    def test_garbage_in_the_middle(self):
        d = self.first_run()
        path = self.catalog(d)
        size = os.path.getsize(path)
        self.assertGreater(size, 16 * 4096)
        rng = random.Random(62)
        damaged = self.damage(path, size // 4, bytes(rng.randrange(256) for _ in range(size // 2)))
        self.assertRebuilt(d, damaged)


if __name__ == '__main__':
    harness.main()
