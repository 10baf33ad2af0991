#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Bad input never hurts the daemon (DESIGN.md D12 and the original spec's bad-input cases): files
that cannot be parsed are listed under the Unknown names and logged once, entries that cannot be
read (FIFO, dangling symlink, symlink loop) are skipped with one log line each, odd tags and names
come out as valid UTF-8 names of at most 255 bytes, and a 10,000-track album lists completely."""

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402

UNKNOWN = os.path.join('Unknown Artist', 'Unknown Album')


def log_mentions(log, needle):
    return [line for line in log.splitlines() if needle in line]


class BadInputTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.base = tempfile.mkdtemp(prefix='musicfs-bad-')
        cls.lib = os.path.join(cls.base, 'lib')
        cls.info = genlib.gen_bad(cls.lib)
        big = cls.info['big_album']
        cls.big_tracks = genlib.bulk_tracks(big['count'], one_album=(big['artist'], big['album']),
                                            formats=('flac',), prefix=big['dir'] + '/')
        cls.big_expected = genlib.expected_paths(cls.big_tracks)
        cls.n_tracks = big['count'] + len(cls.info['unparsed']) + len(cls.info['odd'])

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.base)
        super().tearDownClass()

    def origin(self, rel):
        return os.path.join(os.fsencode(self.lib), os.fsencode(rel))

    def assertSameBytes(self, mounted, rel):
        self.assertEqual(harness.file_digest(mounted), harness.file_digest(self.origin(rel)),
                         '%s differs from origin %r' % (mounted, rel))

    def only_entry(self, *parts):
        d = self.d.path(*parts)
        names = os.listdir(os.fsencode(d))
        self.assertEqual(len(names), 1, '%s: %r' % (d, names))
        name = names[0]
        self.assertLessEqual(len(name), 255)
        try:
            name.decode('utf-8')
        except UnicodeDecodeError:
            self.fail('%r in %s is not UTF-8' % (name, d))
        return os.path.join(os.fsencode(d), name)

    def test_bad_library(self):
        self.d = d = self.daemon([self.lib])
        d.wait_tracks(self.n_tracks, timeout=300)
        self.assertTrue(d.running())

        # Every name in the tree is UTF-8, at most 255 bytes, never "." or "..".
        n_files = 0
        for dirpath, dirnames, filenames in os.walk(os.fsencode(d.mountpoint)):
            for n in dirnames + filenames:
                self.assertLessEqual(len(n), 255, n[:60])
                n.decode('utf-8')
                self.assertNotIn(n, (b'.', b'..', b''))
            n_files += len(filenames)
        self.assertEqual(n_files, self.n_tracks)

        # Unparseable files are listed under the Unknown names and read back intact.
        unknown = sorted(os.listdir(d.path(UNKNOWN)))
        self.assertEqual(unknown, sorted(os.path.basename(r) for r in self.info['unparsed']))
        for rel in self.info['unparsed']:
            self.assertSameBytes(d.path(UNKNOWN, os.path.basename(rel)), rel)
        self.assertEqual(os.path.getsize(d.path(UNKNOWN, 'zero-byte.flac')), 0)

        # The 10,000-track album lists completely, in one directory.
        big = self.info['big_album']
        album_dir = os.path.dirname(next(iter(self.big_expected)))
        names = os.listdir(d.path(album_dir))
        self.assertEqual(len(names), big['count'])
        self.assertEqual({os.path.join(album_dir, n) for n in names}, set(self.big_expected))
        for vpath in sorted(self.big_expected)[::997]:
            self.assertSameBytes(d.path(vpath), self.big_expected[vpath])

        # Tags that are not UTF-8 become valid UTF-8 names.
        odd = self.info['odd']
        artists = [a for a in os.listdir(d.mountpoint) if a.startswith('Bj')]
        self.assertEqual(len(artists), 1, os.listdir(d.mountpoint))
        albums = os.listdir(d.path(artists[0]))
        self.assertEqual(len(albums), 1)
        self.assertTrue(albums[0].startswith('Hom'), albums)
        f = self.only_entry(artists[0], albums[0])
        self.assertTrue(os.path.basename(f).startswith(b'01 - Caf'), f)
        self.assertSameBytes(f, odd['non_utf8_tags'])

        # A 1 MiB title still gives one readable file with a name the kernel accepts.
        f = self.only_entry('Huge Tags', 'Megabyte')
        self.assertTrue(os.path.basename(f).startswith(b'01 - HHHH'), f[:80])
        self.assertTrue(f.endswith(b'.flac'), f[-20:])
        self.assertSameBytes(f, odd['huge_title'])

        # A file name that is not UTF-8: its stem is the title, invalid bytes become '_'.
        f = self.only_entry('Byte Names', 'Raw Bytes')
        stem = os.path.splitext(os.path.basename(odd['non_utf8_name']))[0]
        self.assertEqual(os.fsdecode(os.path.basename(f)), genlib.render({}, stem, 'flac').split('/')[-1])
        self.assertSameBytes(f, odd['non_utf8_name'])

        # Skipped entries are not listed.
        for dirpath, dirnames, filenames in os.walk(d.mountpoint):
            for n in filenames:
                self.assertNotIn(n, ('fifo.flac', 'dangling.mp3'))

        # One log line per bad file, and none about the good ones.
        log = d.log()
        for rel in self.info['unparsed'] + self.info['skipped']:
            needle = os.path.basename(rel) if rel in self.info['unparsed'] else rel.split('/', 1)[1]
            lines = log_mentions(log, needle)
            self.assertEqual(len(lines), 1, 'want one log line about %s, got:\n%s' % (
                rel, '\n'.join(lines)))
        self.assertEqual(log_mentions(log, big['dir'] + '/'), [])

        # A restart does not parse (or log) the unchanged bad files again.
        d.restart()
        d.wait_tracks(self.n_tracks, timeout=300)
        self.assertTrue(os.path.exists(d.path(UNKNOWN, 'garbage.mp3')))
        # The background reconcile meets every entry again before it says it is done.
        d.wait_scan_done(timeout=300)
        self.assertEqual(len(log_mentions(d.log(), 'dangling.mp3')), 1)
        for rel in self.info['unparsed']:
            self.assertEqual(log_mentions(d.log(), os.path.basename(rel)), [],
                             '%s was parsed again although it did not change' % rel)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
