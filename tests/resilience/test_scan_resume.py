#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""2.5 (COVERAGE.md): interrupted-sync recovery. A first scan killed (SIGKILL, from the scan-batch
failpoint) after N committed batches resumes at the next start where it stopped: the catalog's
checkpoint gives it the same generation and the files already done are stamped, not read again
(counted by a print failpoint on every tag read, and by the scanner's own figures), and the catalog
it ends with equals the one of a scan that was never interrupted (files compared row by row, without
ids and generations)."""

import os
import re
import signal
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

BULK = 3000
BATCH = 256
BATCHES_BEFORE_KILL = 5
TAG_READ = 'failpoint scan-file: tagread'


def catalog_rows(cache_dir):
    """The files of the catalog as (origin name, rel_path, size, mtime, tags...), sorted."""
    db = sqlite3.connect('file:%s?mode=ro' % os.path.join(cache_dir, 'catalog.db'), uri=True)
    try:
        return db.execute(
            'SELECT o.name, f.rel_path, f.size, f.mtime_ns, f.format, f.parsed, f.title, f.artist, f.album, '
            'f.albumartist, f.genre, f.composer, f.year, f.track, f.disc, f.disc_total, f.compilation, '
            'f.duration_ms FROM files AS f JOIN origins AS o ON o.id = f.origin_id '
            'ORDER BY o.name, f.rel_path').fetchall()
    finally:
        db.close()


def checkpoint(cache_dir):
    db = sqlite3.connect('file:%s?mode=ro' % os.path.join(cache_dir, 'catalog.db'), uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'scan:%'").fetchall())
    finally:
        db.close()


class ScanResumeTest(harness.MusicfsTestCase):

    def test_killed_scan_resumes(self):
        lib = rutil.bulk_library(BULK)
        files = rutil.origin_files(lib)
        conf = '[musicfsd]\nscan_batch = %d\n' % BATCH
        fps = 'scan-batch=%d*off->kill;scan-file=print(tagread)' % (BATCHES_BEFORE_KILL - 1)
        d = self.daemon([lib], start=False, config_text=conf, failpoints=fps)
        d.start(wait_ready=False)
        rc, _ = rutil.wait_exit(d, 120.0)
        self.assertEqual(rc, -signal.SIGKILL, d.describe())
        done = BATCHES_BEFORE_KILL * BATCH
        # Killed right after its fifth commit: that many tags were read, and the checkpoint says so.
        self.assertEqual(d.log(0).count(TAG_READ), done)
        cp = checkpoint(d.cache_dir)
        self.assertEqual(len(cp), 2, cp)
        gen_key = [k for k in cp if k.endswith(':generation')][0]
        generation = cp[gen_key]
        self.assertEqual(cp[gen_key.replace(':generation', ':files')], done)
        self.assertEqual(len(catalog_rows(d.cache_dir)), done)

        d.failpoints = 'scan-file=print(tagread)'
        d.start(timeout=30.0)
        d.wait_tracks(BULK, timeout=300.0)
        rutil.wait_scan_done(d)
        log = d.log()
        self.assertIn('resuming an interrupted scan (generation %d, %d files done)' % (generation, done), log)
        # Only the files the killed scan never reached were read: none twice over both runs.
        self.assertEqual(log.count(TAG_READ), BULK - done)
        m = re.search(r'scanned (\d+) files: (\d+) added, (\d+) changed, (\d+) removed, (\d+) unchanged, '
                      r'\d+ unreadable tags, (\d+) failed, (\d+) tags read', log)
        self.assertIsNotNone(m, log)
        seen, added, changed, removed, unchanged, failed, read = map(int, m.groups())
        self.assertEqual((seen, added, changed, removed, unchanged, failed, read),
                         (BULK, BULK - done, 0, 0, done, 0, BULK - done))
        self.assertEqual(checkpoint(d.cache_dir), {}, 'the finished scan left its checkpoint behind')
        self.assertEqual(rutil.tree_files(d.mountpoint), set(files))
        self.assertDaemonStops(d)
        resumed = catalog_rows(d.cache_dir)

        # The same library scanned once, start to end.
        clean = self.daemon([lib], config_text=conf)
        clean.wait_tracks(BULK, timeout=300.0)
        rutil.wait_scan_done(clean)
        self.assertNotIn('resuming', clean.log())
        self.assertDaemonStops(clean)
        self.assertEqual(len(resumed), BULK)
        self.assertEqual(resumed, catalog_rows(clean.cache_dir))

    def test_interrupted_rescan_removes_what_went(self):
        """A rescan killed halfway, then files removed before the next start: the resumed scan
        removes exactly the gone ones, those the killed scan had stamped with its generation too."""
        lib = rutil.library_copy(rutil.bulk_library(1000), self)
        files = rutil.origin_files(lib)
        conf = '[musicfsd]\nscan_batch = 100\n'
        d = self.daemon([lib], config_text=conf)
        d.wait_tracks(1000, timeout=120.0)
        rutil.wait_scan_done(d)
        self.assertDaemonStops(d)

        # The startup rescan dies after 3 batches (all files unchanged: stamps only).
        d.failpoints = 'scan-batch=2*off->kill'
        d.start(wait_ready=False)
        rc, _ = rutil.wait_exit(d, 120.0)
        self.assertEqual(rc, -signal.SIGKILL, d.describe())
        self.assertEqual(checkpoint(d.cache_dir).get('scan:1:files'), 300)

        ordered = sorted(files.items())
        gone = dict(ordered[::50])          # spread over the walk: some stamped, some not yet
        for v, origin in gone.items():
            os.unlink(origin)
        d.failpoints = None
        d.start(timeout=30.0)
        d.wait_tracks(1000 - len(gone), timeout=120.0)
        rutil.wait_scan_done(d)
        self.assertIn('resuming an interrupted scan', d.log())
        self.assertRegex(d.log(), r'scanned %d files: 0 added, 0 changed, %d removed' % (1000 - len(gone), len(gone)))
        self.assertEqual(rutil.tree_files(d.mountpoint), set(files) - set(gone))
        self.assertEqual(checkpoint(d.cache_dir), {})
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
