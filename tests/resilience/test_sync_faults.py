#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Change detection under faults (COVERAGE.md):
4.2.4 the watcher gets its watches back after the origin's root went away and came back: it retries on
      its own (1 s, 5 s, 30 s... logged), and the health check that sees the origin healthy again
      re-registers at once; what changed meanwhile is rescanned, and later changes are seen live.
5.4   an origin on a FUSE file system (another musicfsd's mount, where inotify never sees the writes
      behind it) is polled instead of watched, and a change behind it still arrives.
5.6   change detection compares size and mtime for equality, never for order: a file whose mtime
      jumps to 2100 is re-read once and then unchanged (no rescan sees every file as changed), and
      new bytes of the same size with an mtime set back to 1971 are found (nothing hidden).
"""

import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness, genlib  # noqa: E402

DEADLINE = 10.0
N = 20


class SyncFaultTest(harness.MusicfsTestCase):
    with_session_bus = True     # 5.4 runs a second daemon, on the session bus

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.work = tempfile.mkdtemp(prefix='musicfs-syncfault-')
        cls.tpl = genlib.make_templates(cls.work)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.work)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.parent = self.tempdir()
        self.lib = os.path.join(self.parent, 'lib')
        self.expected = genlib.gen_bulk(self.lib, N, templates=self.tpl)
        os.unlink(os.path.join(self.lib, genlib.EXPECTED_NAME))

    def write(self, root, rel, tags, fmt='flac'):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        genlib.write_tagged(path, fmt, tags, *self.tpl)
        return genlib.render(tags, os.path.splitext(os.path.basename(rel))[0], fmt)

    def wait_path(self, d, vpath, exists=True):
        harness.wait_until(lambda: os.path.exists(d.path(vpath)) == exists, DEADLINE,
                           message='%s to %s' % (vpath, 'appear' if exists else 'go'))

    def started(self, origins=(), **kw):
        d = self.daemon(origins, **kw)
        d.wait_tracks(N, timeout=60.0)
        rutil.wait_scan_done(d)
        return d

    # -- 4.2.4

    def test_watches_come_back_with_the_origin(self):
        d = self.started([self.lib])
        away = self.lib + '.away'
        os.rename(self.lib, away)
        rutil.wait_log(d, r'Origin lib: .* was moved away; changes are not watched until it is back '
                          r'\(will retry in 1 s\)')
        self.assertEqual(str(d.bus_call('CheckOrigin', 's', 'lib')), 'unhealthy')
        # Its own retries fail while the directory is away, each logged with the next delay.
        rutil.wait_log(d, r'cannot watch .*, will retry in 5 s', timeout=DEADLINE)
        rutil.wait_log(d, r'cannot watch .*, will retry in 30 s', timeout=DEADLINE)

        # Changed while nobody watched it.
        missed = self.write(away, 'while/away.flac', {'title': 'Missed', 'artist': 'Away', 'album': 'Gone',
                                                      'year': 2002, 'track': 1})
        os.rename(away, self.lib)
        # The health check sees it back; the next retry would be 30 s away, so it is the check that
        # gives the watches back, and the rescan that finds what was missed.
        self.assertEqual(str(d.bus_call('CheckOrigin', 's', 'lib')), 'healthy')
        rutil.wait_log(d, r'Origin lib: watching .* again', timeout=5.0)
        self.wait_path(d, missed)
        # And it is watched again: a new change arrives live.
        live = self.write(self.lib, 'back/live.flac', {'title': 'Live', 'artist': 'Back', 'album': 'Again',
                                                       'year': 2003, 'track': 1})
        self.wait_path(d, live)
        d.wait_tracks(N + 2)
        self.assertDaemonStops(d)

    # -- 5.4

    def test_origin_on_fuse_is_polled(self):
        a = self.started([self.lib])
        conf = ('[musicfsd]\npoll_interval = 1\nbus = user\n'
                '[origin "upstream"]\npath = %s\n' % a.mountpoint)
        b = self.daemon(config_text=conf, user_bus=True)
        b.wait_tracks(N, timeout=60.0)
        self.assertRegex(b.log(), r'Origin upstream: .* is on a network or FUSE file system, where inotify misses '
                                  r"other hosts' changes; polling it every 1 s")
        # A change behind the FUSE mount: a reaches it by inotify on its own disk, b only by polling.
        v = self.write(self.lib, 'new/polled.flac', {'title': 'Behind', 'artist': 'Upstream', 'album': 'Remote',
                                                     'year': 1999, 'track': 1})
        self.wait_path(a, v)
        harness.wait_until(lambda: os.path.exists(b.path(v)), DEADLINE, message='the polled origin to show it')
        b.wait_tracks(N + 1)
        self.assertNotIn('synced changes', b.log())
        self.assertEqual(rutil.read_file(b.path(v)), rutil.read_file(os.path.join(self.lib, 'new/polled.flac')))
        self.assertDaemonStops(b)
        self.assertDaemonStops(a)

    # -- 5.6

    def test_mtime_jumps(self):
        d = self.started([self.lib])
        v, rel = sorted(self.expected.items())[0]
        path = os.path.join(self.lib, rel)
        fmt = os.path.splitext(rel)[1][1:]

        # Written while the clock said 2100: one change, then stable.
        os.utime(path, (4102444800, 4102444800))
        rutil.wait_log(d, r'Origin lib: synced changes in \d+ ms: 0 added, 1 changed, 0 removed')
        d.bus_call('Rescan', 's', 'lib')
        lines = d.wait_log(r'Origin lib: scanned %d files' % N, count=2)
        self.assertRegex(lines[-1], r'scanned %d files: 0 added, 0 changed, 0 removed, %d unchanged, .* 0 tags read'
                         % (N, N))

        # New tags of the same length (same size) and an mtime set back to 1971: still a change.
        tags = None
        for t in genlib.bulk_tracks(N):
            if t['rel'] == rel:
                tags = dict(t['tags'])
        title = tags['title']
        tags['title'] = ''.join('Z' if c.isalpha() else c for c in title)
        self.assertNotEqual(tags['title'], title)
        size = os.path.getsize(path)
        new_v = self.write(self.lib, rel, tags, fmt=fmt)
        self.assertEqual(os.path.getsize(path), size)
        os.utime(path, (31536000, 31536000))
        self.wait_path(d, new_v)
        self.wait_path(d, v, exists=False)
        self.assertEqual(rutil.read_file(d.path(new_v)), rutil.read_file(path))
        # And with nothing watching (a restart): the startup scan sees no change in the rest.
        self.assertDaemonStops(d)
        d.start()
        rutil.wait_scan_done(d)
        self.assertRegex(d.log(), r'scanned %d files: 0 added, 0 changed, 0 removed, %d unchanged, .* 0 tags read'
                         % (N, N))
        self.assertTrue(os.path.exists(d.path(new_v)))
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
