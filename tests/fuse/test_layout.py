#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The mounted tree has exactly the layout DESIGN.md D2-D4 promise, for the genlib sample library:
the template's rules, replicas and " (N)" suffixes across origins, inode numbers that survive
restarts and rescans, sizes and mtimes from the origin."""

import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402


def read_uncached(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b''.join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def inode_map(root):
    return {p: st.st_ino for p, st in harness.walk_tree(root).items()}


class LayoutTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)

    def mount_sample(self, lib=None, expected=None, **kwargs):
        d = self.daemon([lib or self.lib], **kwargs)
        d.wait_tracks(len(expected or self.expected))
        return d

    def assertTree(self, d, expected):
        """The mount holds exactly the files in expected ({virtual: rel}) and their directories."""
        tree = harness.walk_tree(d.mountpoint)
        files = {p for p, st in tree.items() if not os.path.stat.S_ISDIR(st.st_mode)}
        dirs = {p for p, st in tree.items() if os.path.stat.S_ISDIR(st.st_mode)}
        self.assertEqual(sorted(files - set(expected)), [], 'unexpected files in the mount')
        self.assertEqual(sorted(set(expected) - files), [], 'files missing from the mount')
        self.assertEqual(dirs, harness.expected_dirs(expected))
        return tree

    def test_sample_tree_is_exact(self):
        d = self.mount_sample()
        tree = self.assertTree(d, self.expected)
        for vpath, rel in self.expected.items():
            st = tree[vpath]
            ost = os.stat(os.path.join(self.lib, rel))
            self.assertTrue(os.path.stat.S_ISREG(st.st_mode), vpath)
            self.assertEqual(st.st_size, ost.st_size, 'size of %s' % vpath)
            self.assertEqual(st.st_mtime_ns, ost.st_mtime_ns, 'mtime of %s' % vpath)
        # A directory's mtime is that of the newest file below it (tree.h).
        for dpath in harness.expected_dirs(self.expected):
            newest = max(tree[v].st_mtime_ns for v in self.expected if v.startswith(dpath + '/'))
            self.assertEqual(tree[dpath].st_mtime_ns, newest, 'mtime of directory %s' % dpath)
        self.assertEqual(os.stat(d.mountpoint).st_ino, 1, 'the root is inode 1')
        self.assertDaemonStops(d)

    def test_template_rules(self):
        d = self.mount_sample()
        root = d.mountpoint
        top = set(os.listdir(root))
        # A compilation is filed under "Various Artists", whatever its track artists.
        self.assertIn('Various Artists', top)
        self.assertEqual(sorted(os.listdir(d.path('Various Artists', 'Summer Hits (2010)'))),
                         ['01 - Sand.flac', '02 - Heat.m4a', '03 - Tide.mp3'])
        for artist in ('Beach Unit', 'Sunny Delay', 'Wave Theory'):
            self.assertNotIn(artist, top)
        # Two discs: "N-" prefixes; one disc ("1/1"): none.
        self.assertEqual(sorted(os.listdir(d.path('Marlow Kane', 'Double Feature (2015)'))),
                         ['1-01 - Opening.flac', '1-02 - Chase.flac', '2-01 - Return.flac',
                          '2-02 - Credits.flac'])
        self.assertIn('01 - Dawn.flac', os.listdir(d.path('Aurora Lane', 'First Light (2001)')))
        # The album artist keeps a guest track with its album.
        self.assertIn('04 - Night.flac', os.listdir(d.path('Aurora Lane', 'First Light (2001)')))
        self.assertNotIn('Aurora Lane feat. Guest', top)
        # No year: no " ()".
        self.assertIn('Nowhere Sessions', os.listdir(d.path('Quiet Static')))
        # '/' in a tag becomes '_'.
        self.assertIn('AC_DC', top)
        # Unicode kept as is (NFC as tagged).
        self.assertIn('Sigur Rós', top)
        self.assertIn('Ágætis byrjun (1999)', os.listdir(d.path('Sigur Rós')))
        self.assertIn('01 - Lux Æterna.opus', os.listdir(d.path('György Ligeti', 'Lux Æterna (1968)')))
        # Trimmed tags; missing tags fall back to the Unknown names and the file's stem.
        self.assertIn('02 - Spaces Around.m4a', os.listdir(d.path('Neon Harbor', 'Night Drive (2019)')))
        self.assertEqual(sorted(os.listdir(d.path('Unknown Artist', 'Unknown Album'))),
                         ['05 - Only A Title.mp3', 'mystery.flac', 'untitled take.wav'])
        self.assertIn('01 - Lonely.ogg', os.listdir(d.path('Solo Act', 'Unknown Album')))
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                self.assertNotIn(' ()', n)
                self.assertEqual(n, n.strip())
                self.assertNotIn(n, ('.', '..', ''))
        self.assertDaemonStops(d)

    def test_replicas_and_suffixes(self):
        """D3 across two origins: the same rel_path and size is one file; distinct files on one
        virtual path get " (2)", " (3)" by origin priority, then origin path, stably."""
        base = self.tempdir()
        a = os.path.join(base, 'a', 'music')
        b = os.path.join(base, 'b', 'music')
        tags = {'title': 'Same Name', 'artist': 'Twin', 'album': 'Mirror', 'year': 2020, 'track': 1}
        genlib.encode(os.path.join(a, 'x', 'one.flac'), 'flac', tags, frequency=300)
        genlib.encode(os.path.join(a, 'z', 'dup.flac'), 'flac', tags, frequency=500)
        genlib.encode(os.path.join(b, 'y', 'again.flac'), 'flac', tags, frequency=700)
        genlib.encode(os.path.join(a, 'solo.mp3'), 'mp3', dict(tags, title='Only Here', track=2))
        # B's x/one.flac is a replica of A's (same path, same size). Its last byte differs, so that we
        # can tell which origin a read was served from.
        os.makedirs(os.path.join(b, 'x'))
        with open(os.path.join(a, 'x', 'one.flac'), 'rb') as f:
            a_bytes = f.read()
        b_bytes = a_bytes[:-1] + bytes([a_bytes[-1] ^ 0xff])
        with open(os.path.join(b, 'x', 'one.flac'), 'wb') as f:
            f.write(b_bytes)
        album = os.path.join('Twin', 'Mirror (2020)')
        want = {
            '01 - Same Name.flac': os.path.join(a, 'x', 'one.flac'),
            '01 - Same Name (2).flac': os.path.join(a, 'z', 'dup.flac'),
            '01 - Same Name (3).flac': os.path.join(b, 'y', 'again.flac'),
            '02 - Only Here.mp3': os.path.join(a, 'solo.mp3'),
        }
        # Passthrough: the replicas differ in one byte on purpose, and with the chunk cache on, a read
        # after the preferred replica went away would be served (rightly) from what was cached.
        d = self.daemon([a, b], config_text='[cache]\npassthrough = yes\n')
        d.wait_tracks(len(want))
        # Reads come from the preferred origin; when its replica goes away, from the other (D3).
        # POSIX_FADV_DONTNEED drops the kernel's cached pages so that the next read asks the daemon.
        same = d.path(album, '01 - Same Name.flac')
        self.assertEqual(read_uncached(same), a_bytes, 'not read from the preferred origin')
        preferred = os.path.join(a, 'x', 'one.flac')
        os.rename(preferred, preferred + '.away')
        self.assertEqual(read_uncached(same), b_bytes, 'no failover to the second origin')
        os.rename(preferred + '.away', preferred)

        for attempt in ('first start', 'restart'):
            self.assertEqual(sorted(os.listdir(d.path(album))), sorted(want), attempt)
            self.assertEqual(os.listdir(d.mountpoint), ['Twin'], attempt)
            for name, origin in want.items():
                if name == '01 - Same Name.flac' and attempt == 'first start':
                    # Back on the preferred origin or still on the replica that served last.
                    self.assertIn(read_uncached(same), (a_bytes, b_bytes))
                    continue
                self.assertEqual(harness.file_digest(d.path(album, name)), harness.file_digest(origin),
                                 '%s (%s) is not %s' % (name, attempt, origin))
            inodes = inode_map(d.mountpoint)
            if attempt == 'first start':
                first_inodes = inodes
                d.restart()
                d.wait_tracks(len(want))
            else:
                self.assertEqual(inodes, first_inodes)
        self.assertDaemonStops(d)

    def test_inodes_stable_across_restart_and_rescan(self):
        lib = os.path.join(self.tempdir(), 'lib')
        shutil.copytree(self.lib, lib, symlinks=True)
        d = self.mount_sample(lib)
        before = inode_map(d.mountpoint)
        self.assertEqual(len(set(before.values())), len(before), 'inode numbers are unique')

        d.restart()
        d.wait_tracks(len(self.expected))
        self.assertEqual(inode_map(d.mountpoint), before, 'inodes changed across a restart')

        # A rescan that adds and removes files: the daemon reconciles at startup.
        removed_v = 'Aurora Lane/Second Wind (2004)/02 - Breeze.mp3'
        os.unlink(os.path.join(lib, self.expected[removed_v]))
        added_v = 'Aurora Lane/Second Wind (2004)/03 - Squall.mp3'
        genlib.encode(os.path.join(lib, 'new', 'squall.mp3'), 'mp3',
                      {'title': 'Squall', 'artist': 'Aurora Lane', 'album': 'Second Wind', 'year': 2004,
                       'track': 3})
        d.restart()
        expected = dict(self.expected)
        del expected[removed_v]
        expected[added_v] = 'new/squall.mp3'
        d.wait_tracks(len(expected))
        harness.wait_until(lambda: os.path.exists(d.path(added_v)) and not os.path.exists(d.path(removed_v)),
                           30, message='the rescan to show the change')
        self.assertTree(d, expected)
        after = inode_map(d.mountpoint)
        for p, ino in after.items():
            if p in before:
                self.assertEqual(ino, before[p], 'inode of %s changed across a rescan' % p)
        self.assertNotIn(after[added_v], set(before.values()), 'a new file reused an inode number')
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
