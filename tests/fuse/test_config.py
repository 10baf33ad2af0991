#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Startup configuration (DESIGN.md D15): a bad config file, a missing, non-empty or relative
mountpoint, or a second daemon on the same cache dir each exit 1 with one clear line and mount
nothing; --origin alone runs on embedded defaults; a config file and --template are honoured."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402


class ConfigTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)

    def assertRefused(self, d, *needles, rc=1):
        """The daemon exits with rc before mounting, saying why in its output."""
        code, out = d.run_to_exit()
        self.assertEqual(code, rc, 'exit status %s, want %d\n%s' % (code, rc, out))
        lines = [line for line in out.splitlines() if line.strip()]
        self.assertTrue(lines, 'no message at all')
        for n in needles:
            self.assertIn(n, out)
        if d.mountpoint and os.path.isabs(d.mountpoint):
            self.assertFalse(harness.is_mounted(d.mountpoint), '%s got mounted' % d.mountpoint)
        self.assertFalse(self.system_bus.name_has_owner(harness.BUS_NAME), 'the bus name is owned')
        self.assertFalse(d.notify.seen('READY=1'), 'READY=1 sent')
        return out

    def test_bad_config_file(self):
        for text, line in (('[musicfsd]\nlog_level = info\nfuse_threads = lots\n', 3),
                           ('[musicfsd]\nlog_level = info\nfuse_threads = 65\n', 3),
                           ('[musicfsd]\nread_ahead_kb = 16385\n', 2),
                           ('[musicfsd\nmountpoint = /x\n', 1),
                           ('[musicfsd]\nno_such_key = 1\n', 2),
                           ('[origin "x"]\nkind = floppy\npath = /tmp\n', 2)):
            d = self.daemon([self.lib], start=False, config_text=text)
            out = self.assertRefused(d)
            self.assertIn('%s:%d:' % (d.config_path, line), out, 'config %r' % text)
        # Whole-config checks name what is wrong.
        for text, needle in (('[origin "x"]\nkind = local\npath = relative/dir\n', 'relative/dir'),
                             ('[musicfsd]\ntemplate = {artist}/{nonsense}.{ext}\n', 'nonsense')):
            out = self.assertRefused(self.daemon([self.lib], start=False, config_text=text))
            self.assertIn(needle, out)

    def test_missing_config_file(self):
        d = self.daemon([self.lib], start=False,
                        extra_args=['--config', os.path.join(self.tempdir(), 'nope.conf')])
        self.assertRefused(d, 'nope.conf')

    def test_mountpoint_problems(self):
        base = self.tempdir()
        # No mountpoint at all: a usage error (exit 2) naming what is missing.
        d = self.daemon([self.lib], start=False, mountpoint='')
        self.assertRefused(d, 'MOUNTPOINT', rc=2)
        # Does not exist.
        missing = os.path.join(base, 'missing')
        self.assertRefused(self.daemon([self.lib], start=False, mountpoint=missing), missing)
        self.assertFalse(os.path.exists(missing))
        # Not empty: refused, and the files there are untouched.
        full = os.path.join(base, 'full')
        os.makedirs(full)
        with open(os.path.join(full, 'keep.txt'), 'w') as f:
            f.write('mine')
        self.assertRefused(self.daemon([self.lib], start=False, mountpoint=full), full)
        with open(os.path.join(full, 'keep.txt')) as f:
            self.assertEqual(f.read(), 'mine')
        # Relative.
        self.assertRefused(self.daemon([self.lib], start=False, mountpoint='relative/mnt'), 'relative/mnt')
        # A file, not a directory.
        self.assertRefused(self.daemon([self.lib], start=False, mountpoint=os.path.join(full, 'keep.txt')),
                           'keep.txt')

    def test_bad_origin(self):
        missing = os.path.join(self.tempdir(), 'no-such-origin')
        self.assertRefused(self.daemon([missing], start=False), missing)

    def test_origin_without_config(self):
        if os.path.exists('/etc/musicfs/musicfsd.conf'):
            self.skipTest('/etc/musicfs/musicfsd.conf exists here and would be read')
        d = self.daemon([self.lib])
        self.assertIsNone(d.config_path)
        d.wait_tracks(len(self.expected))
        self.assertEqual(d.bus_get('MountPoint'), d.mountpoint)
        self.assertIn(d.bus_get('State'), ('ready', 'starting'))
        self.assertTrue(os.path.isfile(d.path(next(iter(self.expected)))))
        self.assertDaemonStops(d)

    def test_config_file(self):
        mnt = os.path.join(self.tempdir(), 'from-config')
        os.makedirs(mnt)
        cache = self.tempdir()
        text = ('# comment\n[musicfsd]\nmountpoint = %s\ncache_dir = %s\nfuse_threads = 2\n'
                'template = {artist}/{title}.{ext}\n\n[origin "sample"]\nkind = local\npath = %s\n'
                'priority = 5\n' % (mnt, cache, self.lib))
        d = self.daemon(start=False, config_text=text, mountpoint=mnt, cache_dir='', mountpoint_arg=False)
        d.start()
        d.wait_tracks(len(self.expected))
        self.assertEqual(d.bus_get('MountPoint'), mnt)
        self.assertTrue(os.path.exists(os.path.join(cache, 'musicfsd.lock')), os.listdir(cache))
        tracks = [{'rel': t['rel'], 'tags': t['tags']} for t in genlib.sample_tracks()]
        want = genlib.expected_paths(tracks, '{artist}/{title}.{ext}')
        files = {p for p, st in harness.walk_tree(mnt).items() if not os.path.stat.S_ISDIR(st.st_mode)}
        self.assertEqual(files, set(want))
        self.assertDaemonStops(d)

    def test_template_flag_overrides_file(self):
        tpl = '{albumartist}/{album}/{track:02} {title}.{ext}'
        text = '[musicfsd]\ntemplate = {title}.{ext}\n'
        d = self.daemon([self.lib], config_text=text, extra_args=['--template', tpl])
        d.wait_tracks(len(self.expected))
        tracks = [{'rel': t['rel'], 'tags': t['tags']} for t in genlib.sample_tracks()]
        want = genlib.expected_paths(tracks, tpl)
        files = {p for p, st in harness.walk_tree(d.mountpoint).items() if not os.path.stat.S_ISDIR(st.st_mode)}
        self.assertEqual(files, set(want))
        self.assertDaemonStops(d)

    def test_bad_flags(self):
        for args in (['--threads', '0'], ['--threads', 'x'], ['--log-level', 'loud'], ['--bogus'],
                     ['--template', '{nope}']):
            d = self.daemon([self.lib], start=False, extra_args=args)
            self.assertRefused(d, rc=1 if args[0] == '--template' else 2)

    def test_second_daemon_refused(self):
        first = self.daemon([self.lib])
        second = self.daemon([self.lib], start=False, cache_dir=first.cache_dir)
        self.assertRefusedWhileOtherRuns(second, 'already running (PID %d)' % first.pid)
        self.assertTrue(first.running())
        self.assertTrue(first.is_mounted())
        self.assertDaemonStops(first)

    def assertRefusedWhileOtherRuns(self, d, needle):
        code, out = d.run_to_exit()
        self.assertEqual(code, 1, out)
        self.assertIn(needle, out)
        self.assertFalse(harness.is_mounted(d.mountpoint))


if __name__ == '__main__':
    harness.main()
