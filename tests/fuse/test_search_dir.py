#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""/.search/<query>/ in a real mount of the genlib sample library: a lookup runs the query and
gives a directory of symlinks "NNN - Artist - Title.ext", best first, pointing to "../../<path>";
following one reads the track's bytes; bad queries are EINVAL; results follow the catalog; the
inodes are out of the tree's range and a listing stays consistent while it is held."""

import errno
import os
import shutil
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402

SEARCH_INO_BASE = 1 << 62


class SearchDirTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)

    def started(self, lib=None):
        d = self.daemon([lib or self.lib])
        d.wait_tracks(len(self.expected))
        return d

    def test_listing_links_and_bytes(self):
        d = self.started()
        sdir = d.path('.search')
        st = os.stat(sdir)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertGreaterEqual(st.st_ino, SEARCH_INO_BASE)
        # Not listed in the root: a walk of the library never wanders into it.
        self.assertNotIn('.search', os.listdir(d.mountpoint))

        # "lux" is in both tracks' album, and in one title: that one ranks first.
        qdir = os.path.join(sdir, 'lux')
        names = sorted(os.listdir(qdir))
        self.assertEqual(names, ['001 - György Ligeti - Lux Æterna.opus', '002 - György Ligeti - Atmosphères.opus'])
        for n in names:
            link = os.path.join(qdir, n)
            lst = os.lstat(link)
            self.assertTrue(stat.S_ISLNK(lst.st_mode))
            self.assertGreaterEqual(lst.st_ino, SEARCH_INO_BASE)
            target = os.readlink(link)
            self.assertTrue(target.startswith('../../'), target)
            vpath = target[len('../../'):]
            self.assertIn(vpath, self.expected)
            self.assertEqual(lst.st_size, len(target.encode()))
            # Following the link reads the track's bytes, through the mount.
            with open(link, 'rb') as f, open(os.path.join(self.lib, self.expected[vpath]), 'rb') as g:
                self.assertEqual(f.read(), g.read())
            self.assertEqual(os.path.realpath(link), os.path.realpath(d.path(vpath)))
        # A query with spaces, quotes and diacritics folded away, as a shell would pass it.
        names = os.listdir(os.path.join(sdir, 'sigur ros year:1999'))
        self.assertEqual(sorted(n.split(' - ', 2)[2] for n in names), ['Starálfur.ogg', 'Svefn-g-englar.ogg'])
        self.assertEqual(os.listdir(os.path.join(sdir, '"long way"')),
                         ["001 - AC_DC - It's a Long Way to the Top.mp3"])
        # No result: an empty directory.
        self.assertEqual(os.listdir(os.path.join(sdir, 'nothing-like-this')), [])
        # Read-only like the rest of the mount.
        with self.assertRaises(OSError) as c:
            os.mkdir(os.path.join(qdir, 'x'))
        self.assertIn(c.exception.errno, (errno.EROFS, errno.EPERM, errno.EACCES))
        self.assertDaemonStops(d)

    def test_bad_queries(self):
        d = self.started()
        for q in ('colour:red', 'NOT rock', 'say "hi', '(rock', 'rock OR', 'year:abc', '&', ' '):
            with self.assertRaises(OSError) as c:
                os.listdir(d.path('.search', q))
            self.assertEqual(c.exception.errno, errno.EINVAL, q)
        # A name inside a result directory that is not one of its links.
        qdir = d.path('.search', 'aurora')
        self.assertEqual(len(os.listdir(qdir)), 6)
        with self.assertRaises(FileNotFoundError):
            os.lstat(os.path.join(qdir, 'no such link'))
        # The daemon is fine and the tree untouched.
        self.assertEqual(len([p for p, st in harness.walk_tree(d.mountpoint).items()
                              if stat.S_ISREG(st.st_mode)]), len(self.expected))
        self.assertDaemonStops(d)

    def test_results_follow_the_catalog(self):
        work = self.tempdir()
        lib = os.path.join(work, 'lib')
        shutil.copytree(self.lib, lib)
        d = self.started(lib)
        self.assertEqual(len(os.listdir(d.path('.search', 'title:dusk'))), 1)
        # The file goes from the origin; after the rescan the query finds nothing (its entry and
        # listing expire within a second or two, no restart, no remount).
        rel = self.expected[next(v for v in self.expected if v.endswith('Dusk.flac'))]
        os.unlink(os.path.join(lib, rel))
        d.bus_call('Rescan', 's', '')
        d.wait_tracks(len(self.expected) - 1)
        harness.wait_until(lambda: os.listdir(d.path('.search', 'title:dusk')) == [], 10,
                           message='the removed track gone from /.search/title:dusk')
        self.assertDaemonStops(d)

    def test_held_directory_stays_consistent(self):
        d = self.started()
        qdir = d.path('.search', 'aurora')
        fd = os.open(qdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            first = sorted(os.listdir(fd))
            # Many other queries meanwhile: the held result set is not dropped.
            for i in range(40):
                os.listdir(d.path('.search', 'year:%d..2100' % (1900 + i)))
            self.assertEqual(sorted(os.listdir(fd)), first)
            st = os.fstat(fd)
            self.assertGreaterEqual(st.st_ino, SEARCH_INO_BASE)
        finally:
            os.close(fd)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
