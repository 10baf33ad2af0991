#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""musicfsctl (minimal client) against the built daemon on private buses: the status table, the
failpoint verbs, D-Bus errors printed as one sentence, exit codes 0/1, and --user (session bus)."""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402

CTL = os.environ.get('MUSICFS_CTL') or os.path.join(harness.BUILD_ROOT, 'client', 'musicfsctl')
FAILPOINTS_BUILT = os.environ.get('MUSICFS_FAILPOINTS_BUILT', '1') == '1'


def ctl(*args, env=None):
    r = subprocess.run([CTL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, **(env or {})), timeout=60)
    return r.returncode, r.stdout, r.stderr


class MusicfsctlTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_session_bus()
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-ctl-')
        cls.origin = os.path.join(cls.workdir, 'origin')
        for i, fmt in enumerate(('flac', 'mp3'), 1):
            genlib.encode(os.path.join(cls.origin, 't%d.%s' % (i, fmt)), fmt,
                          {'title': 'T%d' % i, 'artist': 'Ctl', 'album': 'A', 'year': 2020, 'track': i}, duration=0.5)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.workdir)
        super().tearDownClass()

    def assertSentence(self, stderr, start):
        lines = stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith(start), stderr)
        self.assertTrue(lines[0].endswith('.'), stderr)

    def test_status(self):
        d = self.daemon([self.origin])
        d.wait_tracks(2)
        rc, out, err = ctl('status')
        self.assertEqual(rc, 0, err)
        table = dict(line.split(':', 1) for line in out.splitlines())
        table = {k.strip(): v.strip() for k, v in table.items()}
        self.assertEqual(table, {'Version': str(d.bus_get('Version')), 'State': 'ready',
                                 'MountPoint': d.mountpoint, 'TrackCount': '2'})

        self.assertDaemonStops(d)
        rc, out, err = ctl('status')
        self.assertEqual(rc, 1)
        self.assertEqual(out, '')
        self.assertSentence(err, 'Failed to read the daemon\'s status: musicfsd is not running')

    def test_user_bus(self):
        d = self.daemon([self.origin], user_bus=True)
        d.wait_tracks(2)
        rc, out, err = ctl('--user', 'status')
        self.assertEqual(rc, 0, err)
        self.assertIn('TrackCount: 2', out)
        # Not on the system bus.
        rc, _, err = ctl('status')
        self.assertEqual(rc, 1)
        self.assertIn('not running', err)

    def test_failpoint_verbs(self):
        d = self.daemon([self.origin])
        if not FAILPOINTS_BUILT:
            rc, _, err = ctl('failpoint', 'arm', 'fuse-read', 'return(EIO)')
            self.assertEqual(rc, 1)
            self.assertSentence(err, 'Failed to arm failpoint fuse-read: Failpoints are not compiled')
            return

        rc, out, err = ctl('failpoint', 'list')
        self.assertEqual(rc, 0, err)
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(rows[0], ['NAME', 'ACTIONS', 'FIRED'])
        self.assertIn(['fuse-read', '-', '0'], rows[1:])

        rc, out, err = ctl('failpoint', 'arm', 'fuse-read', '2*return(EIO)->sleep(1)')
        self.assertEqual((rc, out, err), (0, '', ''))
        self.assertIn(['fuse-read', '2*return(EIO)->sleep(1)', '0'],
                      [line.split() for line in ctl('failpoint', 'list')[1].splitlines()])

        rc, out, err = ctl('failpoint', 'arm', 'fuse-read', 'bogus(')
        self.assertEqual(rc, 1)
        self.assertSentence(err, 'Failed to arm failpoint fuse-read: Invalid actions')
        rc, out, err = ctl('failpoint', 'arm', 'no-such-point', 'return(EIO)')
        self.assertEqual(rc, 1)
        self.assertSentence(err, 'Failed to arm failpoint no-such-point: There is no failpoint named')
        rc, out, err = ctl('failpoint', 'disarm', 'no-such-point')
        self.assertEqual(rc, 1)
        self.assertSentence(err, 'Failed to disarm failpoint no-such-point:')

        rc, out, err = ctl('failpoint', 'disarm', 'fuse-read')
        self.assertEqual((rc, err), (0, ''))
        armed = {str(n): str(a) for n, a, _ in d.bus_call('ListFailpoints')}
        self.assertEqual(armed['fuse-read'], '')

    def test_usage_errors(self):
        for args in ((), ('bogus',), ('status', 'extra'), ('failpoint',), ('failpoint', 'arm', 'fuse-read'),
                     ('failpoint', 'disarm'), ('failpoint', 'list', 'x'), ('--no-such-option', 'status')):
            rc, out, err = ctl(*args)
            self.assertEqual(rc, 1, args)
            self.assertNotEqual(err.strip(), '', args)
        rc, out, err = ctl('--help')
        self.assertEqual(rc, 0)
        for verb in ('status', 'failpoint list', 'failpoint arm', 'failpoint disarm', '--user'):
            self.assertIn(verb, out)


if __name__ == '__main__':
    harness.main()
