#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""D6 at any size: a clean stop writes the published tree to <cache_dir>/tree.snapshot, and the next
start mounts from it instead of reading every catalog row and building the tree (daemon/tree/
tree-snapshot.h). What must hold: the tree read back is the tree built (paths, inode numbers, sizes,
bytes, counts); the snapshot is used only on the catalog exactly as the clean close left it, under
the same template and origins; a damaged, truncated or foreign snapshot is refused with one log line
and the daemon builds from the catalog, never a crash or a wrong tree; a killed daemon leaves none;
and a start from a snapshot still rebuilds from the catalog in the background."""

import os
import signal
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

BULK = 600
FROM_SNAPSHOT = r'with %d tracks from the catalog \(its tree snapshot\) in' % BULK
FROM_ROWS = r'with %d tracks from the catalog in' % BULK


class TreeSnapshotTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = rutil.bulk_library(BULK)
        cls.files = rutil.origin_files(cls.lib)

    def snapshot(self, d):
        return os.path.join(d.cache_dir, 'tree.snapshot')

    def first_run(self, **kwargs):
        """A daemon that scanned the library and stopped cleanly: the snapshot is there."""
        d = self.daemon([self.lib], extra_args=['--log-level', 'debug'], **kwargs)
        d.wait_tracks(BULK, timeout=300.0)
        rutil.wait_scan_done(d)
        inodes = rutil.tree_inodes(d.mountpoint)
        self.assertEqual(len([p for p, v in inodes.items() if not v[1]]), BULK)
        self.assertDaemonStops(d)
        self.assertTrue(os.path.isfile(self.snapshot(d)), os.listdir(d.cache_dir))
        self.assertFalse(os.path.exists(self.snapshot(d) + '.tmp'))
        return d, inodes

    def assertServesLibrary(self, d, inodes):
        self.assertEqual(rutil.tree_inodes(d.mountpoint), inodes)
        self.assertEqual(int(d.bus_get('TrackCount')), BULK)
        # the origin's own count, which the snapshot carries beside the tree
        paths = [str(p) for p in d.bus_get('Origins')]
        self.assertEqual(len(paths), 1)
        self.assertEqual(int(d.bus_get('TrackCount', iface='org.musicfs.Origin', path=paths[0])), BULK)
        for v in sorted(self.files)[::60]:
            self.assertEqual(rutil.read_file(d.path(v)), rutil.read_file(self.files[v]), v)

    def test_restart_mounts_from_snapshot(self):
        d, inodes = self.first_run()
        d.start(timeout=30.0)
        log = d.log()
        self.assertRegex(log, FROM_SNAPSHOT)
        # Read once: the catalog changes from here on, and the next clean stop writes a new one.
        self.assertFalse(os.path.exists(self.snapshot(d)))
        self.assertServesLibrary(d, inodes)
        # The background rebuild from the catalog ran, and changed nothing the kernel had to drop.
        rutil.wait_log(d, r'Published a tree of %d tracks' % BULK, timeout=60.0)
        self.assertServesLibrary(d, inodes)
        rutil.wait_scan_done(d)
        self.assertDaemonStops(d)
        self.assertTrue(os.path.isfile(self.snapshot(d)))
        self.assertRegex(d.log(), r'wrote the tree snapshot')

        # And again: a snapshot written by a start from a snapshot reads back the same.
        d.start(timeout=30.0)
        self.assertRegex(d.log(), FROM_SNAPSHOT)
        self.assertServesLibrary(d, inodes)
        self.assertDaemonStops(d)

    def test_damaged_snapshot_is_refused(self):
        d, inodes = self.first_run()
        path = self.snapshot(d)
        with open(path, 'rb') as f:
            good = f.read()
        self.assertGreater(len(good), BULK * 64)
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x10
        cases = [('a flipped bit', bytes(flipped)), ('cut short', good[:len(good) * 2 // 3]),
                 ('garbage', bytes((i * 131 + 7) % 251 for i in range(len(good)))), ('empty', b'')]
        for what, data in cases:
            with self.subTest(what):
                with open(path, 'wb') as f:
                    f.write(data)
                d.start(timeout=30.0)
                log = d.log()
                self.assertRegex(log, r'Failed to read the tree snapshot .*building the tree from the catalog')
                self.assertRegex(log, FROM_ROWS)
                self.assertServesLibrary(d, inodes)
                self.assertDaemonStops(d)
                self.assertTrue(os.path.isfile(path), 'the clean stop wrote no snapshot')
        # the last clean stop wrote a good one again
        d.start(timeout=30.0)
        self.assertRegex(d.log(), FROM_SNAPSHOT)
        self.assertServesLibrary(d, inodes)
        self.assertDaemonStops(d)

    def test_snapshot_of_another_catalog_or_template_is_not_used(self):
        d, inodes = self.first_run()

        # The catalog changed while the daemon was down: a tag edited by hand. The clean-close
        # marker no longer vouches for the file, so the snapshot cannot either.
        db = sqlite3.connect(os.path.join(d.cache_dir, 'catalog.db'))
        with db:
            db.execute("UPDATE files SET title = 'Edited While Down' WHERE id = (SELECT min(id) FROM files)")
        db.close()
        d.start(timeout=30.0)
        self.assertRegex(d.log(), r'Not reading the tree snapshot: the catalog was not closed cleanly')
        self.assertRegex(d.log(), FROM_ROWS)
        self.assertEqual(len([p for p in rutil.tree_files(d.mountpoint) if 'Edited While Down' in p]), 1)
        rutil.wait_scan_done(d)
        self.assertDaemonStops(d)
        self.assertTrue(os.path.isfile(self.snapshot(d)))

        # Another template: the snapshot is the old layout's.
        d.extra_args = ['--template', '{artist}/{title}.{ext}']
        d.start(timeout=30.0)
        self.assertRegex(d.log(), r'tree snapshot is not this catalog\'s or configuration\'s')
        self.assertRegex(d.log(), FROM_ROWS)
        self.assertFalse([p for p in rutil.tree_files(d.mountpoint) if p.count('/') != 1])
        self.assertEqual(len(rutil.tree_files(d.mountpoint)), BULK)
        self.assertDaemonStops(d)

    def test_killed_daemon_leaves_no_snapshot(self):
        d, inodes = self.first_run()
        d.start(timeout=30.0)
        self.assertRegex(d.log(), FROM_SNAPSHOT)
        rutil.wait_scan_done(d)
        d.kill9()
        self.assertFalse(os.path.exists(self.snapshot(d)))
        d.start(timeout=30.0)
        self.assertRegex(d.log(), FROM_ROWS)
        self.assertServesLibrary(d, inodes)
        self.assertDaemonStops(d, sig=signal.SIGINT)
        self.assertTrue(os.path.isfile(self.snapshot(d)))


if __name__ == '__main__':
    harness.main()
