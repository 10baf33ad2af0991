#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""2.9 (COVERAGE.md): a failure inside a locked section must not leave the lock held or the shared
state unusable. The catalog commit runs with the catalog's lock held: make it fail (catalog-commit=
return(EIO)) during a scan that has new files to add, and everything else keeps working — stat,
readdir and reads through the mount, bus properties, failpoint calls — and later users of the catalog
lock still get it: a template reload rebuilds the tree from the catalog, a SIGTERM checkpoints and
closes it within the 10 s. After the failpoint is gone, a restart adds the new files. Also a failed
tree publication (tree-publish=return(EIO)): the mount keeps serving the tree it had."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness, genlib  # noqa: E402

NEW = 5
NEW_ALBUM = ('Late Arrival', 'Fresh Files')
TEMPLATE = genlib.DEFAULT_TEMPLATE
# Only the first segment changes, so every expected path just gains the prefix.
TEMPLATE_BY = 'by ' + genlib.DEFAULT_TEMPLATE


def config(template):
    return '[musicfsd]\ntemplate = %s\n' % template


class LocksTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sample = harness.sample_library()

    def setUp(self):
        super().setUp()
        self.lib = rutil.library_copy(self.sample, self)
        self.files = rutil.origin_files(self.lib)

    def first_run(self, **kwargs):
        """Scans the library into a fresh catalog, stops; returns the daemon and the tree it served."""
        d = self.daemon([self.lib], **kwargs)
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        tree = rutil.tree_inodes(d.mountpoint)
        self.assertDaemonStops(d)
        return d, tree

    def add_new_files(self):
        tracks = genlib.gen_bulk(os.path.join(self.lib, 'new'), NEW, one_album=NEW_ALBUM, write_expected=False)
        for t in tracks:
            t['rel'] = 'new/' + t['rel']
        new = {v: os.path.join(self.lib, r) for v, r in genlib.expected_paths(tracks).items()}
        self.assertFalse(set(new) & set(self.files))
        return new

    def assertServes(self, d, files, prefix=''):
        """The mount shows exactly files (under prefix) and every byte is right; the bus answers."""
        self.assertEqual(rutil.tree_files(d.mountpoint), {prefix + v for v in files})
        for v, origin in sorted(files.items()):
            self.assertEqual(rutil.read_file(d.path(prefix + v)), rutil.read_file(origin), v)
        props = d.bus_get_all()
        self.assertEqual(int(props['TrackCount']), len(files))
        self.assertEqual(str(props['MountPoint']), d.mountpoint)
        self.assertIn(str(props['State']), ('ready', 'degraded'))
        self.assertIn('catalog-commit', rutil.fp_list(d))

    def test_failed_commit_releases_the_catalog(self):
        d, old_tree = self.first_run(config_text=config(TEMPLATE))
        new = self.add_new_files()

        d.failpoints = 'catalog-commit=return(EIO)'
        d.start()
        rutil.wait_scan_done(d)
        self.assertGreaterEqual(rutil.fp_fired(d, 'catalog-commit'), 1)
        self.assertIn('batch commit failed', d.log())
        # Nothing new was committed; all the rest works, repeatedly.
        for _ in range(3):
            self.assertServes(d, self.files)
        self.assertEqual(rutil.tree_inodes(d.mountpoint), old_tree)
        for v in new:
            self.assertFalse(os.path.exists(d.path(v)), v)

        # The catalog's lock is free: a reload re-renders the tree from the catalog...
        with open(d.config_path, 'w', encoding='utf-8') as f:
            f.write(config(TEMPLATE_BY))
        d.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: rutil.tree_files(d.mountpoint) == {'by ' + v for v in self.files},
                           30.0, 0.1, message='the tree re-rendered with the new template',
                           ignore=(OSError,))
        self.assertServes(d, self.files, prefix='by ')
        # ...and the stop checkpoints and closes it in time.
        rutil.fp_disarm(d, 'catalog-commit')
        self.assertEqual(rutil.fp_list(d)['catalog-commit'][0], '')
        self.assertDaemonStops(d)
        self.assertNotIn('did not finish', d.log())

        # Without the failpoint the new files are scanned in.
        d.failpoints = None
        d.start()
        d.wait_tracks(len(self.files) + NEW)
        rutil.wait_scan_done(d)
        self.assertServes(d, dict(self.files, **new), prefix='by ')
        self.assertDaemonStops(d)

    def test_failed_publish_keeps_the_tree(self):
        d, old_tree = self.first_run()
        new = self.add_new_files()

        # Hold the scan at its first new file, then make every tree publication fail.
        d.failpoints = 'scan-file=pause'
        d.start()
        rutil.wait_fired(d, 'scan-file', 1)
        rutil.fp_arm(d, 'tree-publish', 'return(EIO)')
        rutil.fp_disarm(d, 'scan-file')
        rutil.wait_scan_done(d)
        rutil.wait_fired(d, 'tree-publish', 1)
        rutil.wait_log(d, r'[Kk]eeping the current (tree|one)')

        for _ in range(3):
            self.assertServes(d, self.files)
        self.assertEqual(rutil.tree_inodes(d.mountpoint), old_tree)
        for v in new:
            self.assertFalse(os.path.exists(d.path(v)), v)

        rutil.fp_disarm(d, 'tree-publish')
        self.assertDaemonStops(d)
        # The scan did commit the new files: the next start serves them from the catalog.
        d.failpoints = None
        d.start()
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files) + NEW)
        self.assertServes(d, dict(self.files, **new))
        tree = rutil.tree_inodes(d.mountpoint)
        self.assertEqual({p: tree[p] for p in old_tree}, old_tree)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
