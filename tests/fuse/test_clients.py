#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Real programs use the mount as they would any directory: ffprobe sees the same format, tags and
duration as on the origin, ffmpeg decodes every track, cp -r/tar copy the whole tree byte for byte,
find and ls -lR walk it."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
harness.require_program('ffprobe')
harness.require_program('ffmpeg')
import genlib  # noqa: E402


def ffprobe(path):
    r = subprocess.run(['ffprobe', '-v', 'error', '-print_format', 'json', '-show_format', '-show_streams',
                        path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if r.returncode != 0:
        raise AssertionError('ffprobe %s failed: %s' % (path, r.stderr.decode(errors='replace')))
    info = json.loads(r.stdout)
    fmt = info['format']
    for k in ('filename', 'probe_score'):
        fmt.pop(k, None)
    return info


class ClientsTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)

    def setUp(self):
        super().setUp()
        self.d = self.daemon([self.lib])
        self.d.wait_tracks(len(self.expected))

    def test_ffprobe_and_ffmpeg(self):
        for vpath, rel in sorted(self.expected.items()):
            mounted = self.d.path(vpath)
            origin = os.path.join(self.lib, rel)
            self.assertEqual(ffprobe(mounted), ffprobe(origin), vpath)
            r = subprocess.run(['ffmpeg', '-nostdin', '-v', 'error', '-i', mounted, '-f', 'null', '-'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual(r.returncode, 0, '%s: %s' % (vpath, r.stderr.decode(errors='replace')))
            self.assertEqual(r.stderr, b'', vpath)
        # Spot checks of what a player shows.
        info = ffprobe(self.d.path('Sigur Rós', 'Ágætis byrjun (1999)', '01 - Svefn-g-englar.ogg'))
        tags = {k.lower(): v for k, v in info['streams'][0].get('tags', {}).items()}
        self.assertEqual(tags.get('artist'), 'Sigur Rós')
        self.assertAlmostEqual(float(info['format']['duration']), 2.0, delta=0.1)

    def test_copy_whole_tree(self):
        dest = os.path.join(self.tempdir(), 'copy')
        subprocess.run(['cp', '-r', self.d.mountpoint, dest], check=True)
        copied = {p for p, st in harness.walk_tree(dest).items() if not os.path.stat.S_ISDIR(st.st_mode)}
        self.assertEqual(copied, set(self.expected))
        for vpath, rel in self.expected.items():
            self.assertEqual(harness.file_digest(os.path.join(dest, vpath)),
                             harness.file_digest(os.path.join(self.lib, rel)), vpath)
        # tar reads with its own block sizes and checks the file did not change while it read.
        r = subprocess.run('tar -C %s -cf - . | tar -tf -' % subprocess.list2cmdline([self.d.mountpoint]),
                           shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors='replace'))
        self.assertEqual(r.stderr, b'')
        names = {n[2:] for n in r.stdout.decode().splitlines() if not n.endswith('/')}
        self.assertEqual(names, set(self.expected))

    def test_find_and_ls(self):
        r = subprocess.run(['find', self.d.mountpoint, '-type', 'f'], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, check=True)
        self.assertEqual(r.stderr, b'')
        found = {os.path.relpath(p, self.d.mountpoint) for p in r.stdout.decode().splitlines()}
        self.assertEqual(found, set(self.expected))
        r = subprocess.run(['ls', '-lR', '--time-style=+%s', self.d.mountpoint], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, check=True)
        self.assertEqual(r.stderr, b'')
        out = r.stdout.decode()
        for vpath in self.expected:
            self.assertIn(os.path.basename(vpath), out)
        r = subprocess.run(['du', '-sb', '--apparent-size', self.d.mountpoint], stdout=subprocess.PIPE,
                           check=True)
        total = sum(os.path.getsize(os.path.join(self.lib, rel)) for rel in self.expected.values())
        self.assertGreaterEqual(int(r.stdout.split()[0]), total)
        self.assertDaemonStops(self.d)


if __name__ == '__main__':
    harness.main()
