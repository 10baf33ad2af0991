#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Issue #6, change detection: files added to, changed in, moved within and removed from a local
origin while the daemon runs show up in the mounted tree on their own (inotify, daemon/sync/), with
the kernel's cached attributes invalidated, and nothing else in the tree moves; new files are in the
search index at once; a retagged file's unchanged audio is not stored in the chunk cache twice. Also
the polled mode (watch = poll) and watch = off. Deadlines here are generous (10 s); the latency is measured by
bench/bench_sync.py, not asserted."""

import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402
import dbus  # noqa: E402

DEADLINE = 10.0
N_TRACKS = 20


def tags(artist, album, title, track, year=2001, genre=None):
    return {'title': title, 'artist': artist, 'album': album, 'year': year, 'track': track, 'genre': genre}


class LiveSyncTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.work = tempfile.mkdtemp(prefix='musicfs-livesync-')
        cls.flac_tpl, cls.mp3_tpl = genlib.make_templates(cls.work)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.work)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.lib = os.path.join(self.tempdir(), 'lib')
        self.expected = genlib.gen_bulk(self.lib, N_TRACKS, templates=(self.flac_tpl, self.mp3_tpl))
        os.unlink(os.path.join(self.lib, genlib.EXPECTED_NAME))

    def start(self, config_text=None):
        if config_text:
            d = self.daemon(config_text=config_text, mountpoint_arg=True)
        else:
            d = self.daemon([self.lib])
        d.wait_tracks(len(self.expected))
        d.wait_scan_done()
        # Every test ends with a clean stop: the watcher's thread and the queued syncs wind down.
        self.addCleanup(self.assertDaemonStops, d)
        return d

    def write(self, rel, t, fmt='flac'):
        path = os.path.join(self.lib, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        genlib.write_tagged(path, fmt, t, self.flac_tpl, self.mp3_tpl)
        return path

    def vpath(self, t, rel, fmt='flac'):
        stem = os.path.splitext(os.path.basename(rel))[0]
        return genlib.render(t, stem, fmt)

    def wait_exists(self, d, vpath, exists=True):
        harness.wait_until(lambda: os.path.exists(d.path(vpath)) == exists, DEADLINE,
                           message='%s %s in the mount' % (vpath, 'to appear' if exists else 'to go'))

    def assertSameBytes(self, mounted, origin):
        with open(mounted, 'rb') as a, open(origin, 'rb') as b:
            self.assertEqual(a.read(), b.read(), '%s differs from %s' % (mounted, origin))

    def unchanged_paths(self, d, skip=()):
        for v in self.expected:
            if v in skip:
                continue
            self.assertTrue(os.path.isfile(d.path(v)), '%s vanished from the mount' % v)

    # -- the tests

    def test_added_file_appears(self):
        d = self.start()
        t = tags('Newcomer', 'Debut', 'Hello', 1)
        origin = self.write('new/artist/01.flac', t)
        v = self.vpath(t, 'new/artist/01.flac')
        self.wait_exists(d, v)
        self.assertSameBytes(d.path(v), origin)
        d.wait_tracks(N_TRACKS + 1)
        self.unchanged_paths(d)
        # The search index is the catalog's (D5): the new file is found at once.
        found = [str(r[0]) for r in d.bus_call('Search', 'su', 'Newcomer', 10)]
        self.assertEqual(found, [v])

    def test_changed_tags_move_the_file(self):
        d = self.start()
        v_old, rel = next(iter(sorted(self.expected.items())))
        t = tags('Renamed Artist', 'Other Album', 'Changed', 3)
        # The way tag editors do it: a new file renamed over the old one.
        tmp = self.write(rel + '.tmp', t, fmt=os.path.splitext(rel)[1][1:])
        os.rename(tmp, os.path.join(self.lib, rel))
        v_new = self.vpath(t, rel, fmt=os.path.splitext(rel)[1][1:])
        self.wait_exists(d, v_new)
        self.wait_exists(d, v_old, exists=False)
        self.assertSameBytes(d.path(v_new), os.path.join(self.lib, rel))
        self.assertEqual(int(d.bus_get('TrackCount')), N_TRACKS)
        self.unchanged_paths(d, skip=(v_old,))

    def test_removed_file_disappears(self):
        d = self.start()
        v, rel = sorted(self.expected.items())[1]
        os.unlink(os.path.join(self.lib, rel))
        self.wait_exists(d, v, exists=False)
        d.wait_tracks(N_TRACKS - 1)
        self.unchanged_paths(d, skip=(v,))

    def test_renamed_directory(self):
        d = self.start()
        # Every file under the first artist's folder moves; the tags, hence the tree, stay.
        moved = {v: rel for v, rel in self.expected.items() if rel.startswith('0000/')}
        self.assertTrue(moved)
        os.rename(os.path.join(self.lib, '0000'), os.path.join(self.lib, 'renamed'))

        def reads_from_new_place():
            for v, rel in moved.items():
                new = os.path.join(self.lib, 'renamed', rel[len('0000/'):])
                try:
                    with open(d.path(v), 'rb') as a, open(new, 'rb') as b:
                        if a.read() != b.read():
                            return False
                except OSError:
                    return False
            return True
        harness.wait_until(reads_from_new_place, DEADLINE, message='the moved files to read through the mount')
        self.unchanged_paths(d)
        self.assertEqual(int(d.bus_get('TrackCount')), N_TRACKS)
        # And a file created in the moved directory afterwards is seen: its watch followed it.
        t = tags('After Move', 'Still Watched', 'Late', 1)
        self.write('renamed/00/99.flac', t)
        self.wait_exists(d, self.vpath(t, 'renamed/00/99.flac'))

    def test_new_nested_directories(self):
        d = self.start()
        added = []
        # Created in one go, faster than a watch can land on each new level: the scan of the new
        # top directory finds what its watch missed.
        for i in range(5):
            t = tags('Deep Artist', 'Deep Album %d' % i, 'Deep %d' % i, i + 1)
            rel = 'a/b/c%d/d/%02d.flac' % (i, i)
            self.write(rel, t)
            added.append(self.vpath(t, rel))
        for v in added:
            self.wait_exists(d, v)
        # Directories that existed before their watch must be watched now as well.
        t = tags('Deep Artist', 'Deep Album 0', 'Later', 9)
        self.write('a/b/c0/d/09.flac', t)
        self.wait_exists(d, self.vpath(t, 'a/b/c0/d/09.flac'))
        d.wait_tracks(N_TRACKS + 6)

    def test_kernel_attribute_cache_invalidated(self):
        d = self.start()
        v, rel = sorted(self.expected.items())[2]
        path = d.path(v)
        before = os.stat(path).st_size       # cached by the kernel for attr_timeout (a day)
        self.assertEqual(before, os.path.getsize(os.path.join(self.lib, rel)))
        # Same tags that make the path, one more that does not: same virtual path, new size.
        fmt = os.path.splitext(rel)[1][1:]
        old_tags = None
        for t in genlib.bulk_tracks(N_TRACKS):
            if t['rel'] == rel:
                old_tags = dict(t['tags'])
        self.assertIsNotNone(old_tags)
        old_tags['genre'] = 'A genre long enough to change the size of the file ' * 4
        self.write(rel, old_tags, fmt=fmt)
        after = os.path.getsize(os.path.join(self.lib, rel))
        self.assertNotEqual(before, after)
        harness.wait_until(lambda: os.stat(path).st_size == after, DEADLINE,
                           message='the mount to show the new size')
        self.assertSameBytes(path, os.path.join(self.lib, rel))

    def test_tag_change_reuses_cached_chunks(self):
        """A file whose tags changed is a new version for the cache; its audio did not change, and
        the chunks of that part are reused rather than stored (and fetched) again."""
        d = self.start()
        try:
            self.cache_stats(d)
        except dbus.DBusException as e:
            self.skipTest('no chunk cache in this build: %s' % e)
        rng = random.Random(6)
        audio = bytes(rng.getrandbits(8) for _ in range(4 << 20))      # incompressible "frames"
        t = tags('Chunky', 'Reused', 'Long Track', 1)
        rel = 'big/long.flac'
        v = self.write_big(rel, t, audio)
        self.wait_exists(d, v)
        size = os.path.getsize(os.path.join(self.lib, rel))
        self.assertSameBytes(d.path(v), os.path.join(self.lib, rel))
        first = self.wait_cached(d)
        self.assertGreaterEqual(first['bytes'], size * 9 // 10, first)

        t2 = dict(t, album='Reused Again', genre='Retagged with a longer comment block')
        v2 = self.write_big(rel, t2, audio)
        self.wait_exists(d, v2)
        self.wait_exists(d, v, exists=False)
        self.assertSameBytes(d.path(v2), os.path.join(self.lib, rel))
        second = self.wait_cached(d, versions=first['versions'] + 1)
        # Only the chunks around the new tags are new: far less than the file.
        grown = second['bytes'] - first['bytes']
        self.assertLess(grown, size // 10, 'a tag change stored %d new bytes of a %d-byte file' % (grown, size))
        self.assertGreater(second['dedup-ratio'], first['dedup-ratio'])

    def write_big(self, rel, t, audio):
        """A FLAC header with t's tags followed by the same bytes every time."""
        path = os.path.join(self.lib, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.part'
        genlib.write_tagged(tmp, 'flac', t, self.flac_tpl, self.mp3_tpl)
        with open(tmp, 'ab') as f:
            f.write(audio)
        os.rename(tmp, path)
        return self.vpath(t, rel)

    def cache_stats(self, d):
        return {str(k): (float(v) if isinstance(v, dbus.Double) else v) for k, v in d.bus_call('GetCacheStats').items()}

    def wait_cached(self, d, versions=1):
        last = {}

        def done():
            last.update(self.cache_stats(d))
            return (last['fills-active'] == 0 and last['fills-queued'] == 0 and last['versions'] >= versions
                    and last['bytes'] > 0)
        harness.wait_until(done, 60.0, 0.05, message='the cache fill to end (last: %r)' % last)
        return dict(last)

    def test_poll_mode(self):
        conf = ('[musicfsd]\npoll_interval = 1\n[origin "lib"]\npath = %s\nwatch = poll\n' % self.lib)
        d = self.start(conf)
        t = tags('Polled', 'By Timer', 'Tick', 1)
        self.write('polled/01.flac', t)
        self.wait_exists(d, self.vpath(t, 'polled/01.flac'))
        # A poll is a full scan, not an event: more than the first scan ran, and no event sync.
        self.assertGreaterEqual(len(d.wait_log(r'Origin lib: scanned \d+ files', count=2)), 2)
        self.assertNotIn('synced changes', d.log())

    def test_watch_off(self):
        conf = '[origin "lib"]\npath = %s\nwatch = off\n' % self.lib
        d = self.start(conf)
        t = tags('Unwatched', 'Quiet', 'Silent', 1)
        self.write('off/01.flac', t)
        v = self.vpath(t, 'off/01.flac')
        # Nothing watches it: a Rescan is what brings it in, and no event-driven sync ever ran.
        d.bus_call('Rescan', 's', '')
        self.wait_exists(d, v)
        self.assertNotIn('synced changes', d.log())


if __name__ == '__main__':
    harness.main()
