#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""musicfsctl against the real daemon on a real mount (private buses): status and origins as the
bus has them, check, failpoints, rescan --wait ending when the new file is in the catalog,
add-origin --wait and remove-origin, unmount/mount (busy, --force), reload (good and bad files),
the cache verbs (stats, pin and unpin with every spelling of a path, clear, verify, repair,
passthrough), search refusing a bad query with one clear sentence and
exit 1, monitor following a scan, and -- as an unprivileged user
on a bus that admits everyone -- exit 4 without authorization and the interactive-authorization
flag reaching polkit only when a person can answer."""

import json
import os
import pty
import queue
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import busutil  # noqa: E402
import dbus  # noqa: E402
import genlib  # noqa: E402

CTL = os.environ.get('MUSICFS_CTL') or os.path.join(harness.BUILD_ROOT, 'client', 'musicfsctl')
FAILPOINTS_BUILT = os.environ.get('MUSICFS_FAILPOINTS_BUILT', '1') == '1'
EXIT_DAEMON, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED = 1, 2, 3, 4
DEADLINE = 60.0


def ctl(*args, env=None, stdin=subprocess.DEVNULL, prefix=(), timeout=120):
    r = subprocess.run(list(prefix) + [CTL] + list(args), stdin=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=dict(os.environ, **(env or {})), timeout=timeout, cwd='/')
    return r.returncode, r.stdout.decode('utf-8', 'replace'), r.stderr.decode('utf-8', 'replace')


def fields(out):
    res = {}
    for line in out.splitlines():
        k, sep, v = line.partition(': ')
        if sep:
            res[k.strip()] = v
    return res


def track(directory, name, n, fmt='flac', artist='Ctl'):
    genlib.encode(os.path.join(directory, '%s.%s' % (name, fmt)), fmt,
                  {'title': name, 'artist': artist, 'album': 'Album', 'year': 2020, 'track': n}, duration=0.3)


class ClientDaemonTest(harness.MusicfsTestCase):
    with_session_bus = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.access(CTL, os.X_OK):
            harness.skip_module('%s is not built' % CTL)
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-ctl-daemon-')
        cls.lib_a = os.path.join(cls.workdir, 'alpha')
        cls.lib_b = os.path.join(cls.workdir, 'beta')
        for i, fmt in enumerate(('flac', 'mp3'), 1):
            track(cls.lib_a, 'a%d' % i, i, fmt, artist='Alpha')
        track(cls.lib_b, 'b1', 1, 'flac', artist='Beta')

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.workdir)
        super().tearDownClass()

    def origin_copy(self, src, name):
        """A private copy of a library, for tests that change files."""
        d = os.path.join(self.tempdir(), name)
        shutil.copytree(src, d)
        return d

    def start(self, origins=None, **kwargs):
        d = self.daemon(origins or [self.lib_a, self.lib_b], **kwargs)
        d.wait_scan_done()
        return d

    def assertOk(self, res):
        rc, out, err = res
        self.assertEqual(rc, 0, 'stdout %r stderr %r' % (out, err))
        self.assertEqual(err, '')
        return out

    def assertSentence(self, err, start=None):
        lines = err.strip('\n').split('\n')
        self.assertEqual(len(lines), 1, err)
        if start:
            self.assertTrue(lines[0].startswith(start), err)
        self.assertTrue(lines[0].endswith('.'), err)

    # ---------------------------------------------------------------------------------------------

    def test_status_and_origins(self):
        d = self.start()
        d.wait_tracks(3)
        out = self.assertOk(ctl('status'))
        self.assertEqual(fields(out), {
            'Version': str(d.bus_get('Version')), 'State': 'ready', 'Mount point': d.mountpoint, 'Tracks': '3',
            'Passthrough': 'off', 'Cache': '0B of 10.0G', 'Scan': 'idle', 'Origins': '2 (2 healthy)'})
        st = json.loads(self.assertOk(ctl('status', '--json')))
        self.assertEqual(st, {
            'version': str(d.bus_get('Version')), 'state': 'ready', 'mount_point': d.mountpoint, 'track_count': 3,
            'passthrough': False, 'cache_bytes': 0, 'cache_budget': 10 << 30,
            'scan': {'origin': '', 'processed': 0, 'total': 0}, 'origins': ['alpha', 'beta']})

        rows = [line.split() for line in self.assertOk(ctl('origins')).splitlines()]
        self.assertEqual(rows[0], ['NAME', 'KIND', 'PRIORITY', 'HEALTH', 'FAILURES', 'LATENCY', 'TRACKS', 'LAST',
                                   'ERROR'])
        self.assertEqual([r[:5] + r[6:] for r in rows[1:]], [['alpha', 'local', '10', 'healthy', '0', '2', '-'],
                                                             ['beta', 'local', '20', 'healthy', '0', '1', '-']])
        res = json.loads(self.assertOk(ctl('origins', '--json')))
        self.assertEqual([(o['name'], o['url'], o['priority'], o['health'], o['track_count'], o['last_error'])
                          for o in res],
                         [('alpha', self.lib_a, 10, 'healthy', 2, ''), ('beta', self.lib_b, 20, 'healthy', 1, '')])
        health = {str(h[0]): h for h in d.bus_call('GetOriginHealth')}
        for o in res:
            self.assertEqual(o['consecutive_failures'], int(health[o['name']][2]))
            self.assertEqual(o['last_check_usec'], int(health[o['name']][4]))

        # Gone: exit 3 and the sentence.
        self.assertDaemonStops(d)
        rc, out, err = ctl('status')
        self.assertEqual((rc, out), (EXIT_UNREACHABLE, ''))
        self.assertEqual(err, "Failed to read the daemon's status: musicfsd is not running (no owner of "
                              "org.musicfs.Manager on the system bus).\n")

    def test_user_bus(self):
        d = self.daemon([self.lib_b], user_bus=True)
        d.wait_tracks(1)
        self.assertEqual(fields(self.assertOk(ctl('--user', 'status')))['Tracks'], '1')
        self.assertEqual([o['name'] for o in json.loads(self.assertOk(ctl('origins', '--json', '--user')))],
                         ['beta'])
        rc, out, err = ctl('status')
        self.assertEqual((rc, out), (EXIT_UNREACHABLE, ''))
        self.assertIn('(no owner of org.musicfs.Manager on the system bus)', err)

    def test_check(self):
        lib = self.origin_copy(self.lib_b, 'beta')
        d = self.start([self.lib_a, lib])
        out = self.assertOk(ctl('check', 'beta'))
        f = fields(out)
        self.assertEqual((f['Origin'], f['Health'], f['Failures'], f['Last error']), ('beta', 'healthy', '0', '-'))
        self.assertNotEqual(f['Last check'], 'never')
        res = json.loads(self.assertOk(ctl('check', 'beta', '--json')))
        self.assertEqual((res['health'], res['consecutive_failures']), ('healthy', 0))
        self.assertGreater(res['last_check_usec'], 0)

        # The directory goes away: the check fails, exit 1, the reason is shown.
        os.rename(lib, lib + '.gone')
        self.addCleanup(lambda: os.path.exists(lib + '.gone') and os.rename(lib + '.gone', lib))
        rc, out, err = ctl('check', 'beta', '--json')
        self.assertEqual((rc, err), (EXIT_DAEMON, ''))
        res = json.loads(out)
        self.assertEqual((res['name'], res['health'], res['consecutive_failures']), ('beta', 'unhealthy', 1))
        self.assertNotEqual(res['last_error'], '')
        self.assertEqual(fields(ctl('status')[1])['State'], 'degraded')
        rows = [line.split(None, 7) for line in self.assertOk(ctl('origins', '--no-legend')).splitlines()]
        self.assertEqual((rows[1][0], rows[1][3], rows[1][4]), ('beta', 'unhealthy', '1'))
        self.assertEqual(rows[1][7], res['last_error'])

        os.rename(lib + '.gone', lib)
        self.assertOk(ctl('check', 'beta'))
        self.assertEqual(fields(ctl('status')[1])['State'], 'ready')

        rc, out, err = ctl('check', 'nope')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named nope.\n'))
        self.assertTrue(d.running())

    def test_failpoints(self):
        self.start([self.lib_a])
        if not FAILPOINTS_BUILT:
            for args in (('list',), ('arm', 'fuse-read', 'off')):
                rc, out, err = ctl('failpoint', *args)
                self.assertEqual((rc, out), (EXIT_DAEMON, ''))
                self.assertSentence(err, 'Failpoints are not compiled into this musicfsd')
            return

        rows = [line.split() for line in self.assertOk(ctl('failpoint', 'list')).splitlines()]
        self.assertEqual(rows[0], ['NAME', 'ACTIONS', 'FIRED'])
        self.assertIn(['origin-read', '-', '0'], rows[1:])
        self.assertEqual(self.assertOk(ctl('failpoint', 'arm', 'fuse-read', '2*return(EIO)->sleep(1)')), '')
        res = json.loads(self.assertOk(ctl('failpoint', 'list', '--json')))
        self.assertIn({'name': 'fuse-read', 'actions': '2*return(EIO)->sleep(1)', 'fired': 0}, res)

        rc, out, err = ctl('failpoint', 'arm', 'fuse-read', 'bogus(')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to arm failpoint fuse-read: ')
        rc, out, err = ctl('failpoint', 'arm', 'no-such-point', 'return(EIO)')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', "No failpoint named no-such-point ('musicfsctl "
                                                            "failpoint list' shows them).\n"))
        self.assertOk(ctl('failpoint', 'disarm', 'fuse-read'))
        res = json.loads(self.assertOk(ctl('failpoint', 'list', '--json')))
        self.assertIn({'name': 'fuse-read', 'actions': '', 'fired': 0}, res)

    def test_rescan_wait(self):
        lib = self.origin_copy(self.lib_a, 'alpha')
        d = self.start([lib, self.lib_b])
        d.wait_tracks(3)
        track(lib, 'a3', 3, 'flac', artist='Alpha')

        lines = self.assertOk(ctl('rescan', 'alpha', '--wait')).splitlines()
        self.assertEqual(lines[-1], 'Scanned alpha: 1 added, 0 changed, 0 removed.')
        self.assertTrue(all(s.startswith('Scanning alpha: ') for s in lines[:-1]), lines)
        # When --wait returns, the tree shows the result.
        self.assertEqual(int(d.bus_get('TrackCount')), 3 + 1)

        os.unlink(os.path.join(lib, 'a1.flac'))
        res = [json.loads(s) for s in self.assertOk(ctl('rescan', '--wait', '--json')).splitlines()]
        self.assertEqual(sorted((r['origin'], r['added'], r['changed'], r['removed']) for r in res),
                         [('alpha', 0, 0, 1), ('beta', 0, 0, 0)])
        self.assertEqual(int(d.bus_get('TrackCount')), 3)

        rc, out, err = ctl('rescan', 'nope', '--wait')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named nope.\n'))

    def test_add_and_remove_origin(self):
        d = self.start([self.lib_a])
        d.wait_tracks(2)
        lines = self.assertOk(ctl('add-origin', 'more', self.lib_b, '--wait')).splitlines()
        # Progress lines, as many as the daemon reported (a short scan may have none), then the end.
        self.assertEqual(lines[-1], 'Scanned more: 1 added, 0 changed, 0 removed.')
        self.assertTrue(all(s.startswith('Scanning more: ') for s in lines[:-1]), lines)
        res = json.loads(self.assertOk(ctl('origins', '--json')))
        self.assertEqual([(o['name'], o['priority'], o['url']) for o in res],
                         [('alpha', 10, self.lib_a), ('more', 20, self.lib_b)])
        self.assertEqual(int(d.bus_get('TrackCount')), 3)

        rc, out, err = ctl('add-origin', 'more', self.lib_b)
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to add origin more: ')
        rc, out, err = ctl('add-origin', 'far', 'sftp://me:secret@host/music')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err)

        self.assertOk(ctl('remove-origin', 'more'))
        self.assertEqual(int(d.bus_get('TrackCount')), 2)
        rc, out, err = ctl('remove-origin', 'more')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named more.\n'))

    def test_unmount_and_mount(self):
        d = self.start([self.lib_a])
        self.assertEqual(self.assertOk(ctl('unmount')), '')
        d.wait_unmounted()
        self.assertEqual(fields(ctl('status')[1])['Mount point'], '(not mounted)')
        rc, out, err = ctl('unmount')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to unmount: ')

        self.assertEqual(self.assertOk(ctl('mount')), '')
        self.assertTrue(d.is_mounted())
        rc, out, err = ctl('mount')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to mount: ')

        # Busy: a file is open in the mount.
        def raise_error(e):
            raise e
        name = next(os.path.join(top, n) for top, _, files in os.walk(d.mountpoint, onerror=raise_error)
                    for n in files if n.endswith('.flac'))
        with open(name, 'rb'):
            rc, out, err = ctl('unmount')
            self.assertEqual((rc, out), (EXIT_DAEMON, ''))
            self.assertSentence(err, 'Failed to unmount: ')
            self.assertIn('use --force to detach it anyway', err)
            self.assertTrue(d.is_mounted())
            self.assertOk(ctl('unmount', '--force'))
            d.wait_unmounted()
        self.assertOk(ctl('mount'))
        self.assertTrue(d.is_mounted())
        self.assertEqual(str(d.bus_get('MountPoint')), d.mountpoint)

    def test_reload(self):
        work = self.tempdir()
        conf = os.path.join(work, 'musicfsd.conf')
        with open(conf, 'w', encoding='utf-8') as f:
            f.write('[musicfsd]\nlog_level = info\n\n[origin "alpha"]\npath = %s\n' % self.lib_a)
        d = self.daemon(extra_args=['--config', conf])
        d.wait_scan_done(1)
        self.assertOk(ctl('reload'))
        with open(conf, 'a', encoding='utf-8') as f:
            f.write('colour = blue\n')
        rc, out, err = ctl('reload')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to reload the configuration: %s:6: ' % conf)
        self.assertTrue(d.running())
        self.assertEqual(fields(ctl('status')[1])['State'], 'ready')

    def test_search_errors(self):
        """A query the daemon refuses: one sentence with its reason, exit 1, nothing on stdout, and
        the daemon carries on. (Results: tests/bus/test_search.py.)"""
        d = self.start([self.lib_a])
        for args in (('search', 'colour:red'), ('search', 'colour:red', '--json')):
            rc, out, err = ctl(*args)
            self.assertEqual((rc, out), (EXIT_DAEMON, ''), args)
            self.assertSentence(err, 'Failed to search: ')
            self.assertIn('Unknown field "colour"', err)
        # A limit out of range is an error of its own.
        rc, out, err = ctl('search', 'alpha', '--limit', '0')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertSentence(err, 'Failed to search: ')
        self.assertTrue(d.running())
        self.assertEqual(fields(ctl('status')[1])['Passthrough'], 'off')

    def cache_stats(self):
        return json.loads(self.assertOk(ctl('cache', 'stats', '--json')))

    def test_cache_verbs(self):
        d = self.start([self.lib_a])
        # stats: a table for people, JSON for programs, with the documented keys.
        out = self.assertOk(ctl('cache'))
        self.assertEqual(out, self.assertOk(ctl('cache', 'stats')))
        rows = [line.split(None, 1) for line in out.splitlines()]
        self.assertEqual(rows[0], ['FIGURE', 'VALUE'])
        table = dict((k, v) for k, v in rows[1:])
        self.assertEqual(table['budget'], '10.0G (%d)' % (10 << 30))
        self.assertEqual(table['passthrough-reason'], 'none')
        self.assertNotIn('FIGURE', self.assertOk(ctl('cache', '--no-legend')))
        st = self.cache_stats()
        for key in ('bytes', 'budget', 'chunks', 'pinned-bytes', 'dedup-ratio', 'hits', 'misses', 'evictions',
                    'bad-chunks', 'fills-active', 'fills-queued', 'pins', 'pin-bytes-total', 'pin-bytes-done',
                    'disk-percent', 'passthrough', 'passthrough-reason'):
            self.assertIn(key, st)
        self.assertEqual((st['bytes'], st['budget'], st['pins']), (0, 10 << 30, 0))

        # pin: as search prints it, under the mount point, and relative to a directory in the mount.
        album = next(e for e in os.listdir(d.path('Alpha')))
        self.assertOk(ctl('cache', 'pin', 'Alpha'))
        self.assertEqual(self.cache_stats()['pins'], 1)
        self.assertOk(ctl('pin', d.path('Alpha', album)))
        r = subprocess.run([CTL, 'cache', 'pin', album], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           cwd=d.path('Alpha'), timeout=60)
        self.assertEqual((r.returncode, r.stderr), (0, b''))
        self.assertEqual(self.cache_stats()['pins'], 2)
        harness.wait_until(lambda: (lambda s: s['pin-bytes-total'] > 0 and
                                    s['pin-bytes-done'] == s['pin-bytes-total'])(self.cache_stats()),
                           DEADLINE, 0.1, message='the pins to be fetched')
        rc, out, err = ctl('cache', 'pin', 'No Such Artist')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to pin No Such Artist: There is no file or directory')
        for args in (('cache', 'pin'), ('cache', 'pin', 'a', 'b'), ('cache', 'bogus'), ('cache', 'clear', 'x'),
                     ('cache', 'clear', '--json')):
            self.assertEqual(ctl(*args)[0], EXIT_USAGE, args)

        # clear keeps the pinned bytes; unpin drops the pins (twice is an error).
        self.assertOk(ctl('cache', 'clear'))
        st = self.cache_stats()
        self.assertGreater(st['bytes'], 0)
        self.assertEqual(st['pin-bytes-done'], st['pin-bytes-total'])
        self.assertOk(ctl('cache', 'unpin', '/Alpha'))
        self.assertOk(ctl('unpin', d.path('Alpha', album)))
        self.assertEqual(self.cache_stats()['pins'], 0)
        rc, out, err = ctl('cache', 'unpin', 'Alpha')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertSentence(err, 'Failed to unpin Alpha: ')
        self.assertOk(ctl('clear-cache'))
        self.assertEqual(self.cache_stats()['bytes'], 0)

        # verify and repair of a sound cache: nothing wrong, exit 0.
        for sub in ('verify', 'repair'):
            res = json.loads(self.assertOk(ctl('cache', sub, '--json')))
            self.assertEqual(set(res), {'checked', 'bad', 'missing', 'orphans', 'repaired'})
            self.assertEqual((res['bad'], res['missing'], res['orphans'], res['repaired']), (0, 0, 0, 0))
            self.assertIn('checked', self.assertOk(ctl('cache', sub)))

        # passthrough on and off, as status and the statistics show it.
        self.assertOk(ctl('passthrough', 'on'))
        self.assertEqual(fields(self.assertOk(ctl('status')))['Passthrough'], 'on')
        self.assertEqual(self.cache_stats()['passthrough-reason'], 'manual')
        self.assertOk(ctl('passthrough', 'off'))
        self.assertEqual(self.cache_stats()['passthrough'], False)
        self.assertEqual(ctl('passthrough', 'sideways')[0], EXIT_USAGE)
        self.assertTrue(d.running())

    def test_monitor(self):
        lib = self.origin_copy(self.lib_a, 'alpha')
        d = self.start([lib])
        proc = subprocess.Popen([CTL, 'monitor', '--json'], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(s) for s in proc.stdout], daemon=True)
        reader.start()

        # Rescans until the monitor shows one (it subscribes after it starts).
        deadline = time.monotonic() + DEADLINE
        events = []
        while not any(e['event'] == 'ScanFinished' for e in events):
            self.assertLess(time.monotonic(), deadline, events)
            d.bus_call('Rescan', 's', 'alpha')
            try:
                while True:
                    events.append(json.loads(lines.get(timeout=2)))
                    if events[-1]['event'] == 'ScanFinished':
                        break
            except queue.Empty:
                pass
        # Subscribed now: a scan that finds a new file shows the new TrackCount, then its end.
        track(lib, 'a9', 9, 'flac', artist='Alpha')
        d.bus_call('Rescan', 's', 'alpha')
        events = []
        while not events or events[-1]['event'] != 'ScanFinished':
            events.append(json.loads(lines.get(timeout=DEADLINE)))
        self.assertEqual({k: events[-1][k] for k in ('origin', 'added', 'changed', 'removed')},
                         {'origin': 'alpha', 'added': 1, 'changed': 0, 'removed': 0})
        counts = [e['changed']['TrackCount'] for e in events
                  if e['event'] == 'PropertiesChanged' and e['path'] == harness.MANAGER_PATH
                  and 'TrackCount' in e['changed']]
        self.assertEqual(counts[-1:], [3], events)

        # An origin made to fail its check: the origin's properties and OriginHealthChanged.
        os.rename(lib, lib + '.gone')
        d.bus_call('CheckOrigin', 's', 'alpha')
        seen = {}
        while 'OriginHealthChanged' not in seen:
            e = json.loads(lines.get(timeout=DEADLINE))
            seen[e['event']] = e
        self.assertEqual({k: seen['OriginHealthChanged'][k] for k in ('origin', 'from', 'to')},
                         {'origin': 'alpha', 'from': 'healthy', 'to': 'unhealthy'})
        os.rename(lib + '.gone', lib)

        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(DEADLINE), 0)
        self.assertEqual(proc.stderr.read(), '')
        proc.stderr.close()
        reader.join(DEADLINE)
        proc.stdout.close()


class ClientAuthorizationTest(harness.MusicfsTestCase):
    """An unprivileged musicfsctl: refused (exit 4) without polkit, let through by a polkit mock, and
    asking for interactive authorization only on a terminal and without --no-ask-password."""

    @classmethod
    def setUpClass(cls):
        busutil.require_setpriv()
        # dbusmock's bus only admits its own user; this one admits everyone (busutil).
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-ctl-auth-')
        os.chmod(cls.workdir, 0o755)
        conf = busutil.write_bus_conf(cls.workdir)
        cls.system_bus_pid, cls.address = busutil.start_bus(conf)
        os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = cls.address
        cls.system_bus = dbus.bus.BusConnection(cls.address)
        cls.lib = os.path.join(cls.workdir, 'lib')
        track(cls.lib, 'n1', 1)
        if not os.access(CTL, os.X_OK):
            harness.skip_module('%s is not built' % CTL)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.workdir)
        super().tearDownClass()

    def as_nobody(self, *args, stdin=subprocess.DEVNULL):
        prefix = [busutil.require_setpriv(), '--reuid=%d' % busutil.NOBODY, '--regid=%d' % busutil.NOBODY,
                  '--clear-groups']
        return ctl(*args, stdin=stdin, prefix=prefix, env={'HOME': '/nonexistent'})

    def test_refused_then_allowed(self):
        d = self.daemon([self.lib], bus_address=self.address)
        d.wait_scan_done(1)

        # No polkit on the bus: every change is refused, reading is fine.
        for args, what in ((('rescan',), 'rescan the origins'), (('unmount',), 'unmount'),
                           (('reload',), 'reload the configuration'), (('cache', 'clear'), 'clear the cache'),
                           (('cache', 'repair'), 'repair the cache'), (('passthrough', 'on'), 'turn passthrough on')):
            rc, out, err = self.as_nobody(*args)
            self.assertEqual((rc, out), (EXIT_DENIED, ''), (args, err))
            self.assertTrue(err.startswith('Not allowed to %s: ' % what), err)
            self.assertTrue(err.endswith('. Try again as root or with an authorized account.\n'), err)
        self.assertEqual(self.as_nobody('status')[0], 0)
        self.assertEqual(self.as_nobody('cache')[0], 0)
        self.assertEqual(self.as_nobody('cache', 'verify')[0], 0)
        self.assertTrue(d.is_mounted())

        polkit = busutil.PolkitMock(self)
        self.addCleanup(polkit.stop)
        rc, out, err = self.as_nobody('reload')
        self.assertEqual(rc, EXIT_DENIED, err)
        polkit.set_allowed([busutil.ACTION_RELOAD, busutil.ACTION_ORIGINS])
        self.assertEqual(self.as_nobody('reload'), (0, '', ''))
        self.assertEqual(self.as_nobody('rescan', '--wait')[0], 0)

        # The interactive flag: set on a terminal, not with --no-ask-password, not without a terminal.
        master, slave = pty.openpty()
        try:
            self.assertEqual(self.as_nobody('reload', stdin=slave)[0], 0)
            self.assertEqual(self.as_nobody('reload', '--no-ask-password', stdin=slave)[0], 0)
        finally:
            os.close(slave)
            os.close(master)
        flags = [int(args[3]) for _, args in polkit.method_calls() if str(args[1]) == busutil.ACTION_RELOAD]
        self.assertEqual(flags[-3:], [0, 1, 0])     # no terminal, terminal, terminal + --no-ask-password

    def test_terminal_agent(self):
        """On its controlling terminal, an unprivileged musicfsctl runs pkttyagent for itself, so that
        polkit can ask for a password there; not with --no-ask-password, not without a terminal."""
        if not os.access('/usr/bin/pkttyagent', os.X_OK) or not shutil.which('setsid'):
            self.skipTest('pkttyagent or setsid is not installed')
        d = self.daemon([self.lib], bus_address=self.address)
        d.wait_scan_done(1)
        polkit = busutil.PolkitMock(self)
        self.addCleanup(polkit.stop)
        polkit.set_allowed([busutil.ACTION_RELOAD])
        # What pkttyagent --fallback calls; dbusmock's polkitd template lacks it.
        polkit.obj.AddMethod(busutil.POLKIT_IFACE, 'RegisterAuthenticationAgentWithOptions', '(sa{sv})ssa{sv}', '',
                             '', dbus_interface='org.freedesktop.DBus.Mock')

        def run(*args):
            master, slave = pty.openpty()
            try:
                # setsid --ctty: the terminal becomes the controlling one, which pkttyagent talks to.
                proc = subprocess.Popen(['setsid', '--ctty', busutil.require_setpriv(), '--reuid=%d' % busutil.NOBODY,
                                         '--regid=%d' % busutil.NOBODY, '--clear-groups', CTL] + list(args),
                                        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd='/')
                out, err = proc.communicate(timeout=120)
            finally:
                os.close(slave)
                os.close(master)
            self.assertEqual((proc.returncode, err), (0, b''), args)
            return proc.pid

        def registrations():
            return [(str(a[0][0]), int(a[0][1].get('pid', 0)))
                    for _, a in polkit.method_calls('RegisterAuthenticationAgentWithOptions')]

        pid = run('reload')
        self.assertEqual(registrations(), [('unix-process', pid)])
        run('reload', '--no-ask-password')
        run('status')       # reading needs no agent
        self.assertEqual(len(registrations()), 1)
        self.assertEqual(self.as_nobody('reload')[0], 0)     # no terminal: no agent
        self.assertEqual(len(registrations()), 1)


if __name__ == '__main__':
    harness.main()
