#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""musicfsctl against the dbusmock template of the Manager (tests/mocks/musicfs_manager.py) on a
private system bus: every verb and option, tables for people, --json read back with json.loads,
D-Bus errors as one sentence, the documented exit codes (0 ok, 1 daemon failure, 2 usage, 3
unreachable, 4 not authorized), rescan --wait ending on ScanFinished, and monitor printing signals
live until SIGINT."""

import importlib.util
import json
import os
import pty
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402  (exits 77 without dbus/dbusmock)

import dbus  # noqa: E402
import dbusmock  # noqa: E402

CTL = os.environ.get('MUSICFS_CTL') or os.path.join(harness.BUILD_ROOT, 'client', 'musicfsctl')
MOCK = os.path.join(harness.SOURCE_ROOT, 'tests', 'mocks', 'musicfs_manager.py')


def mock_default(name):
    """A default of the mock template (what it serves when the test passes no parameter)."""
    spec = importlib.util.spec_from_file_location('musicfs_manager_template', MOCK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)
MOCK_IFACE = 'org.freedesktop.DBus.Mock'
MANAGER_IFACE = 'org.musicfs.Manager'
DEADLINE = 20.0

EXIT_DAEMON, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED = 1, 2, 3, 4
VERBS = ('status', 'origins', 'check', 'mount', 'unmount', 'passthrough', 'rescan', 'add-origin',
         'remove-origin', 'search', 'pin', 'unpin', 'cache', 'clear-cache', 'failpoint list', 'failpoint arm',
         'failpoint disarm', 'monitor', 'reload')


def ctl(*args, env=None, stdin=subprocess.DEVNULL, cwd=None):
    r = subprocess.run([CTL] + list(args), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=dict(os.environ, **(env or {})), cwd=cwd, timeout=60)
    return r.returncode, r.stdout.decode('utf-8', 'replace'), r.stderr.decode('utf-8', 'replace')


def fields(out):
    """'  Label: value' lines as a dict."""
    res = {}
    for line in out.splitlines():
        k, sep, v = line.partition(': ')
        if sep:
            res[k.strip()] = v
    return res


class Child:
    """A musicfsctl that keeps running (rescan --wait, monitor); its stdout lines are collected by a
    thread so that the test can wait for one with a deadline."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([CTL] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip('\n'))
        self._queue.put(None)

    def wait_line(self, predicate, timeout=DEADLINE, what='a line'):
        """Returns the first new line for which predicate(line) holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError('no %s within %.0f s; got %r' % (what, timeout, self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError('musicfsctl exited (%s) before %s; got %r, stderr %r' % (
                    self.proc.wait(), what, self.lines, self.proc.stderr.read()))
            self.lines.append(line)
            if predicate(line):
                return line

    def finish(self, timeout=DEADLINE):
        rc = self.proc.wait(timeout)
        self._thread.join(timeout)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            self.lines.append(line)
        return rc, self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class ClientMockTest(dbusmock.DBusTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.access(CTL, os.X_OK):
            raise unittest.SkipTest('%s is not built' % CTL)
        cls.start_system_bus()
        cls.start_session_bus()
        cls.bus = cls.get_dbus(system_bus=True)

    @classmethod
    def tearDownClass(cls):
        cls.bus.close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.p_mock = None
        self.start_mock()

    def start_mock(self, parameters=None, system_bus=True):
        self.stop_mock()
        self.p_mock, self.obj = self.spawn_server_template(MOCK, parameters or {}, stdout=subprocess.DEVNULL,
                                                           system_bus=system_bus)
        self.mock = dbus.Interface(self.obj, MOCK_IFACE)
        self.manager = dbus.Interface(self.obj, MANAGER_IFACE)
        self.addCleanup(self.stop_mock)

    def stop_mock(self):
        if self.p_mock is None:
            return
        self.p_mock.terminate()
        self.p_mock.wait()
        self.p_mock = None
        # Gone from the bus, not only dead: the next mock must get the name.
        harness.wait_until(lambda: not self.bus.name_has_owner('org.musicfs.Manager'), DEADLINE,
                           message='org.musicfs.Manager to be released')

    def prop(self, name):
        return self.obj.Get(MANAGER_IFACE, name, dbus_interface=dbus.PROPERTIES_IFACE)

    def calls(self, method):
        return [[str(a) if isinstance(a, str) else a for a in args] for _, args in self.mock.GetMethodCalls(method)]

    def assertSentence(self, err, start=None, end=None):
        lines = err.strip('\n').split('\n')
        self.assertEqual(len(lines), 1, err)
        if start:
            self.assertTrue(lines[0].startswith(start), err)
        if end:
            self.assertTrue(lines[0].endswith(end), err)
        self.assertTrue(lines[0].endswith('.') or lines[0].endswith(').'), err)
        self.assertNotIn('\x1b', err)

    def assertOk(self, res):
        rc, out, err = res
        self.assertEqual(rc, 0, 'stdout %r stderr %r' % (out, err))
        self.assertEqual(err, '')
        return out

    # ---------------------------------------------------------------------------------------------
    # status, origins, check, cache

    def test_status(self):
        out = self.assertOk(ctl('status'))
        self.assertNotIn('\x1b', out)   # no colour when stdout is not a terminal
        self.assertEqual(fields(out), {
            'Version': '0.1.0', 'State': 'ready', 'Mount point': '/srv/music', 'Tracks': '5',
            'Passthrough': 'off', 'Cache': '700.0M of 10.0G', 'Scan': 'idle', 'Origins': '2 (2 healthy)'})

        self.mock.SetOriginHealth('nas', 'unhealthy', 'timed out')
        self.mock.EmitScanProgress('music', dbus.UInt64(3), dbus.UInt64(10))
        self.manager.Unmount(True)
        f = fields(self.assertOk(ctl('status')))
        self.assertEqual(f['State'], 'degraded')
        self.assertEqual(f['Scan'], 'scanning music, 3 of 10 files')
        self.assertEqual(f['Origins'], '2 (1 healthy, 1 unhealthy)')
        self.assertEqual(f['Mount point'], '(not mounted)')

    def test_status_json(self):
        st = json.loads(self.assertOk(ctl('status', '--json')))
        self.assertEqual(st, {
            'version': '0.1.0', 'state': 'ready', 'mount_point': '/srv/music', 'track_count': 5,
            'passthrough': False, 'cache_bytes': 734003200, 'cache_budget': 10737418240,
            'scan': {'origin': '', 'processed': 0, 'total': 0}, 'origins': ['music', 'nas']})
        self.mock.EmitScanProgress('nas', dbus.UInt64(7), dbus.UInt64(0))
        st = json.loads(self.assertOk(ctl('--json', 'status')))     # options before the verb too
        self.assertEqual(st['scan'], {'origin': 'nas', 'processed': 7, 'total': 0})
        self.assertEqual(fields(self.assertOk(ctl('status')))['Scan'], 'scanning nas, 7 files')

    def test_status_of_an_older_daemon(self):
        """A daemon with fewer properties and methods: status shows what there is; a verb whose
        method is missing says so in a sentence."""
        self.stop_mock()
        self.p_mock = self.spawn_server('org.musicfs.Manager', '/org/musicfs/Manager', MANAGER_IFACE,
                                        system_bus=True, stdout=subprocess.DEVNULL)
        obj = self.bus.get_object('org.musicfs.Manager', '/org/musicfs/Manager')
        obj.AddProperties(MANAGER_IFACE, {'Version': '0.0.9', 'State': 'ready'}, dbus_interface=MOCK_IFACE)
        self.assertEqual(fields(self.assertOk(ctl('status'))), {'Version': '0.0.9', 'State': 'ready'})
        st = json.loads(self.assertOk(ctl('status', '--json')))
        self.assertEqual((st['version'], st['track_count'], st['origins']), ('0.0.9', None, None))
        rc, out, err = ctl('rescan')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to rescan the origins: this musicfsd does not offer it')

    def test_origins(self):
        self.mock.SetOriginHealth('nas', 'unhealthy', 'connect: timed out\n\x1b[31mred')
        out = self.assertOk(ctl('origins'))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ['NAME', 'KIND', 'PRIORITY', 'HEALTH', 'FAILURES', 'LATENCY',
                                            'TRACKS', 'LAST', 'ERROR'])
        self.assertEqual(lines[1].split(), ['music', 'local', '10', 'healthy', '0', '1.2ms', '3', '-'])
        # Control characters from the bus are escaped, never sent to the terminal.
        self.assertEqual(lines[2].split(None, 7), ['nas', 'local', '20', 'unhealthy', '1', '1.2ms', '2',
                                                   'connect: timed out\\n\\x1b[31mred'])
        self.assertNotIn('\x1b', out)
        # Columns line up: every row starts its HEALTH column where the header does.
        col = lines[0].index('HEALTH')
        self.assertTrue(all(line[col - 1] == ' ' and line[col] != ' ' for line in lines[1:]), out)

        out = self.assertOk(ctl('origins', '--no-legend'))
        self.assertEqual([line.split()[0] for line in out.splitlines()], ['music', 'nas'])

        # Priority order, whatever order the objects come in.
        self.manager.AddOrigin('first', '/srv/first', dbus.UInt32(1), dbus.Dictionary({}, signature='sv'))
        out = self.assertOk(ctl('origins', '--no-legend'))
        self.assertEqual([line.split()[0] for line in out.splitlines()], ['first', 'music', 'nas'])

        self.manager.RemoveOrigin('first')
        self.manager.RemoveOrigin('music')
        self.manager.RemoveOrigin('nas')
        self.assertEqual(self.assertOk(ctl('origins')), 'No origins.\n')
        self.assertEqual(json.loads(self.assertOk(ctl('origins', '--json'))), [])

    def test_origins_json(self):
        nasty = 'quote " backslash \\ tab \t nul-free \x01\x1f del \x7f ünïcødé 🎵'
        self.start_mock({'Origins': dbus.Array([dbus.Dictionary(
            {'Name': 'a_b-1', 'Url': '/srv/a', 'Priority': dbus.UInt32(7), 'Health': 'degraded',
             'ConsecutiveFailures': dbus.UInt32(2), 'LastLatencyUSec': dbus.UInt64(1500000),
             'LastCheckUSec': dbus.UInt64(1700000000000000), 'LastError': nasty, 'TrackCount': dbus.UInt64(42)},
            signature='sv')], signature='a{sv}')})
        res = json.loads(self.assertOk(ctl('origins', '--json')))
        self.assertEqual(res, [{
            'name': 'a_b-1', 'kind': 'local', 'url': '/srv/a', 'priority': 7, 'health': 'degraded',
            'consecutive_failures': 2, 'last_latency_usec': 1500000, 'last_check_usec': 1700000000000000,
            'last_error': nasty, 'track_count': 42}])
        line = self.assertOk(ctl('origins', '--no-legend'))
        self.assertEqual(line.split()[:7], ['a_b-1', 'local', '7', 'degraded', '2', '1.50s', '42'])

    def test_check(self):
        out = self.assertOk(ctl('check', 'nas'))
        f = fields(out)
        self.assertEqual((f['Origin'], f['Health'], f['Failures'], f['Latency'], f['Last error']),
                         ('nas', 'healthy', '0', '1.2ms', '-'))
        self.assertEqual(self.calls('CheckOrigin'), [['nas']])

        self.mock.SetOriginHealth('nas', 'unhealthy', 'No such file or directory')
        rc, out, err = ctl('check', 'nas')
        self.assertEqual((rc, err), (EXIT_DAEMON, ''))       # exit 1: not healthy, no error message
        self.assertEqual(fields(out)['Health'], 'unhealthy')
        rc, out, err = ctl('check', 'nas', '--json')
        self.assertEqual(rc, EXIT_DAEMON)
        res = json.loads(out)
        self.assertEqual((res['name'], res['health'], res['consecutive_failures'], res['last_error']),
                         ('nas', 'unhealthy', 1, 'No such file or directory'))
        self.assertGreater(res['last_check_usec'], 0)

        rc, out, err = ctl('check', 'nope')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named nope.\n'))

    def table(self, out):
        rows = [line.split(None, 1) for line in out.splitlines()]
        self.assertEqual(rows[0], ['FIGURE', 'VALUE'])
        return dict((k, v) for k, v in rows[1:])

    def test_cache(self):
        out = self.assertOk(ctl('cache'))
        self.assertEqual(self.assertOk(ctl('cache', 'stats')), out)
        t = self.table(out)
        self.assertEqual(t['bytes'], '700.0M (734003200)')
        self.assertEqual(t['budget'], '10.0G (10737418240)')
        self.assertEqual(t['pinned-bytes'], '0B (0)')
        self.assertEqual(t['dedup-ratio'], '1.00')
        self.assertEqual(t['disk-percent'], '42.5%')
        self.assertEqual(t['hits'], '10400')
        self.assertEqual(t['passthrough'], 'no')
        self.assertEqual(t['passthrough-reason'], 'none')
        st = json.loads(self.assertOk(ctl('cache', '--json')))
        self.assertEqual(st, json.loads(self.assertOk(ctl('cache', 'stats', '--json'))))
        self.assertEqual((st['bytes'], st['budget'], st['chunks'], st['pins'], st['dedup-ratio'], st['passthrough']),
                         (734003200, 10737418240, 11200, 0, 1.0, False))
        self.assertNotIn('FIGURE', self.assertOk(ctl('cache', '--no-legend')))
        # Whatever the daemon puts in the dictionary comes through, nested values included.
        self.mock.SetCacheStats(dbus.Dictionary({
            'Watermarks': dbus.Array([dbus.Byte(90), dbus.Byte(95), dbus.Byte(99)], signature='y', variant_level=1),
            'Disk': dbus.Struct(('/dev/sda1', dbus.Boolean(True), dbus.Int32(-1)), signature='sbi', variant_level=1),
            'PerOrigin': dbus.Dictionary({'nas': dbus.UInt64(5)}, signature='st', variant_level=1),
        }, signature='sv'))
        self.assertEqual(json.loads(self.assertOk(ctl('cache', '--json'))), {
            'Watermarks': [90, 95, 99], 'Disk': ['/dev/sda1', True, -1], 'PerOrigin': {'nas': 5}})
        t = self.table(self.assertOk(ctl('cache')))
        self.assertEqual(t, {'Watermarks': '[90, 95, 99]', 'Disk': '(/dev/sda1, yes, -1)', 'PerOrigin': '{nas: 5}'})

    def test_cache_verify_and_repair(self):
        res = json.loads(self.assertOk(ctl('cache', 'verify', '--json')))
        self.assertEqual(res, {'checked': 11200, 'bad': 0, 'missing': 0, 'orphans': 0, 'repaired': 0})
        self.assertEqual(self.table(self.assertOk(ctl('cache', 'verify')))['checked'], '11200')
        # Problems: verify says so and exits 1; repair fixes them and exits 0; verify is clean again.
        self.mock.SetVerifyResult(dbus.Dictionary({'bad': dbus.UInt64(2), 'orphans': dbus.UInt64(1)}, signature='sv'))
        rc, out, err = ctl('cache', 'verify')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertEqual(self.table(out)['bad'], '2')
        self.assertEqual(err, "The cache has 3 problems; 'musicfsctl cache repair' fixes them.\n")
        rc, out, err = ctl('cache', 'verify', '--json')
        self.assertEqual((rc, err), (EXIT_DAEMON, ''))
        self.assertEqual(json.loads(out)['orphans'], 1)
        self.assertEqual(json.loads(self.assertOk(ctl('cache', 'repair', '--json')))['repaired'], 3)
        self.assertEqual(json.loads(self.assertOk(ctl('cache', 'verify', '--json')))['bad'], 0)
        self.assertEqual(self.calls('VerifyCache'), [[False]] * 4 + [[True], [False]])
        # Only repair is privileged.
        checks = [str(a) for a, _ in self.mock.GetAuthorizationChecks()]
        self.assertEqual(checks.count('org.musicfs.manager.cache'), 1)
        self.mock.SetVerifyBusy(True)
        rc, out, err = ctl('cache', 'verify')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertEqual(err, 'Failed to verify the cache: A verification of the cache is running already.\n')
        self.mock.SetAuthorized(False)
        self.mock.SetVerifyBusy(False)
        rc, out, err = ctl('cache', 'repair')
        self.assertEqual(rc, EXIT_DENIED)
        self.assertTrue(err.startswith('Not allowed to repair the cache: '), err)
        self.assertEqual(ctl('cache', 'verify')[0], 0)

    # ---------------------------------------------------------------------------------------------
    # rescan

    def test_rescan(self):
        self.mock.SetAutoScan(False)
        self.assertEqual(self.assertOk(ctl('rescan')), '')
        self.assertEqual(self.assertOk(ctl('rescan', 'nas')), '')
        self.assertEqual(self.calls('Rescan'), [[''], ['nas']])
        rc, out, err = ctl('rescan', 'nope')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named nope.\n'))
        rc, out, err = ctl('rescan', 'nope', '--wait')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named nope.\n'))

    def test_rescan_wait_ends_on_scan_finished(self):
        self.mock.SetAutoScan(False)
        child = Child('rescan', '--wait')
        self.addCleanup(child.kill)
        harness.wait_until(lambda: self.calls('Rescan') == [['']], DEADLINE, message='the Rescan call')

        # Progress, as plain lines (stdout is a pipe here, not a terminal).
        self.mock.EmitScanProgress('music', dbus.UInt64(1), dbus.UInt64(3))
        child.wait_line(lambda s: s == 'Scanning music: 1/3 files', what='the progress line')
        self.mock.EmitScanFinished('music', dbus.UInt32(2), dbus.UInt32(1), dbus.UInt32(0))
        child.wait_line(lambda s: s == 'Scanned music: 2 added, 1 changed, 0 removed.', what='music finished')
        # nas has not finished: still waiting.
        self.mock.EmitScanProgress('nas', dbus.UInt64(4), dbus.UInt64(0))
        child.wait_line(lambda s: s == 'Scanning nas: 4 files', what='nas progress')
        self.assertIsNone(child.proc.poll())
        self.mock.EmitScanFinished('nas', dbus.UInt32(0), dbus.UInt32(0), dbus.UInt32(3))
        rc, err = child.finish()
        self.assertEqual((rc, err), (0, ''))
        self.assertEqual(child.lines[-1], 'Scanned nas: 0 added, 0 changed, 3 removed.')

    def test_rescan_wait_one_origin_json(self):
        self.mock.SetAutoScan(False)
        child = Child('rescan', 'nas', '--wait', '--json')
        self.addCleanup(child.kill)
        harness.wait_until(lambda: self.calls('Rescan') == [['nas']], DEADLINE, message='the Rescan call')
        # Only the daemon's signals count: a ScanFinished from anyone else is ignored.
        self.bus.send_message(self.spoofed_signal('nas'))
        self.mock.EmitScanProgress('nas', dbus.UInt64(1), dbus.UInt64(2))
        self.mock.EmitScanFinished('music', dbus.UInt32(1), dbus.UInt32(0), dbus.UInt32(0))   # not waited for
        self.mock.EmitScanFinished('nas', dbus.UInt32(5), dbus.UInt32(0), dbus.UInt32(1))
        rc, err = child.finish()
        self.assertEqual((rc, err), (0, ''))
        self.assertEqual([json.loads(s) for s in child.lines], [
            {'origin': 'music', 'added': 1, 'changed': 0, 'removed': 0},
            {'origin': 'nas', 'added': 5, 'changed': 0, 'removed': 1}])

    def test_rescan_wait_simulated_scan(self):
        """The template's own scan (AutoScan): progress steps, then ScanFinished per origin."""
        out = self.assertOk(ctl('rescan', '--wait'))
        lines = out.splitlines()
        self.assertEqual([s for s in lines if s.startswith('Scanned')],
                         ['Scanned music: 0 added, 0 changed, 0 removed.',
                          'Scanned nas: 0 added, 0 changed, 0 removed.'])
        self.assertIn('Scanning music: 3/3 files', lines)
        self.assertEqual(self.prop('ScanProgress'), ('', 0, 0))

    def test_rescan_wait_progress_bar_on_a_terminal(self):
        self.start_mock({'ScanStepMs': dbus.UInt32(50)})
        master, slave = pty.openpty()
        proc = subprocess.Popen([CTL, 'rescan', 'nas', '--wait'], stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=subprocess.PIPE)
        os.close(slave)
        data = b''
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:     # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
        os.close(master)
        self.assertEqual(proc.wait(DEADLINE), 0, proc.stderr.read())
        proc.stderr.close()
        text = data.decode()
        self.assertIn('\r\x1b[KScanning nas [', text)
        self.assertIn('] 2/2 files', text)
        self.assertTrue(text.endswith('\r\x1b[KScanned nas: 0 added, 0 changed, 0 removed.\r\n'), repr(text))

    def test_rescan_wait_daemon_goes_away(self):
        self.mock.SetAutoScan(False)
        child = Child('rescan', '--wait')
        self.addCleanup(child.kill)
        harness.wait_until(lambda: self.calls('Rescan') == [['']], DEADLINE, message='the Rescan call')
        self.stop_mock()
        rc, err = child.finish()
        self.assertEqual(rc, EXIT_UNREACHABLE)
        self.assertSentence(err, 'musicfsd left the system bus before the scan finished')

    # ---------------------------------------------------------------------------------------------
    # mount, unmount, passthrough, pin, unpin, reload

    def test_mount_unmount(self):
        self.assertEqual(self.assertOk(ctl('unmount')), '')
        self.assertEqual(self.prop('MountPoint'), '')
        rc, out, err = ctl('unmount')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to unmount: Nothing is mounted')

        self.assertOk(ctl('mount'))
        self.assertEqual(self.prop('MountPoint'), '/srv/music')
        rc, out, err = ctl('mount', '/elsewhere')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertSentence(err, 'Failed to mount on /elsewhere: Already mounted on /srv/music')

        self.mock.SetMountBusy(True)
        rc, out, err = ctl('unmount')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertSentence(err, 'Failed to unmount: Files are open under /srv/music',
                            'use --force to detach it anyway.')
        self.assertOk(ctl('unmount', '--force'))
        self.assertEqual(self.prop('MountPoint'), '')
        self.assertEqual(self.calls('Unmount'), [[False], [False], [False], [True]])

        # A relative mount point is made absolute with the caller's working directory.
        with tempfile.TemporaryDirectory() as d:
            self.assertOk(ctl('mount', 'lib', cwd=d))
            self.assertEqual(self.prop('MountPoint'), os.path.join(os.path.realpath(d), 'lib'))
        self.assertEqual(self.calls('Mount')[-1], [os.path.join(os.path.realpath(d), 'lib'), {}])

    def test_passthrough(self):
        self.assertOk(ctl('passthrough', 'on'))
        self.assertEqual(self.prop('Passthrough'), True)
        self.assertOk(ctl('passthrough', 'off'))
        self.assertEqual(self.prop('Passthrough'), False)
        rc, out, err = ctl('passthrough', 'maybe')
        self.assertEqual((rc, out), (EXIT_USAGE, ''))
        self.assertIn("passthrough wants on or off, not 'maybe'", err)
        self.assertEqual(self.calls('SetPassthrough'), [[True], [False]])

    def test_pin_unpin(self):
        """PATH as search prints it, as a path under the mount point, or already absolute in the tree:
        the daemon always gets the absolute path in the tree."""
        album = 'Miles Davis/Kind of Blue (1959)'
        self.assertEqual(self.assertOk(ctl('pin', album)), '')
        self.assertEqual(self.assertOk(ctl('cache', 'pin', '/srv/music/' + album)), '')
        self.assertEqual(json.loads(self.assertOk(ctl('cache', '--json')))['pins'], 1)
        self.assertEqual(self.assertOk(ctl('unpin', '/' + album)), '')
        self.assertEqual(self.assertOk(ctl('cache', 'pin', '/srv/music')), '')        # everything
        self.assertEqual(self.assertOk(ctl('cache', 'unpin', '/srv/music')), '')
        self.assertEqual(json.loads(self.assertOk(ctl('cache', '--json')))['pins'], 0)
        rc, out, err = ctl('unpin', '/srv/musical')      # not under /srv/music: a path in the tree
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'Failed to unpin /srv/musical: "/srv/musical" is not pinned.\n'))
        rc, out, err = ctl('cache', 'pin', 'Nobody/Nothing')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertEqual(err, 'Failed to pin Nobody/Nothing: There is no file or directory "/Nobody/Nothing" in '
                              'the library.\n')
        self.assertEqual(self.calls('Pin'), [['/' + album], ['/' + album], ['/'], ['/Nobody/Nothing']])
        self.assertEqual(self.calls('Unpin'), [['/' + album], ['/'], ['/srv/musical']])

        # A relative path inside the mount point is relative to the working directory there.
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, 'Miles Davis'))
            self.manager.Unmount(False)
            self.manager.Mount(d, dbus.Dictionary({}, signature='sv'))
            self.assertOk(ctl('pin', 'Kind of Blue (1959)', cwd=os.path.join(d, 'Miles Davis')))
            self.assertOk(ctl('cache', 'unpin', 'Kind of Blue (1959)', cwd=os.path.join(d, 'Miles Davis')))
        self.assertEqual(self.calls('Pin')[-1], ['/' + album])
        self.assertEqual(self.calls('Unpin')[-1], ['/' + album])

        # A pin the budget cannot hold.
        self.obj.Set(MANAGER_IFACE, 'CacheBudget', dbus.UInt64(1 << 20), dbus_interface='org.freedesktop.DBus.Properties')
        rc, out, err = ctl('pin', '/')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertTrue(err.startswith('Failed to pin /: The files under "/" do not fit in the cache budget'), err)

    def test_clear_cache(self):
        self.assertEqual(self.assertOk(ctl('clear-cache')), '')
        self.assertEqual(self.prop('CacheBytes'), 0)
        # Pinned files stay.
        self.assertOk(ctl('pin', '/Nina Simone'))
        self.assertOk(ctl('cache', 'clear'))
        st = json.loads(self.assertOk(ctl('cache', '--json')))
        self.assertEqual(st['bytes'], st['pinned-bytes'])
        self.assertGreater(st['bytes'], 0)
        self.mock.SetNotSupported(['ClearCache'])
        rc, out, err = ctl('clear-cache')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'ClearCache is not supported by this version of musicfsd yet.\n'))

    def test_add_remove_origin(self):
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, 'more'))
            # A relative directory is made absolute; without PRIORITY it comes after the others.
            self.assertEqual(self.assertOk(ctl('add-origin', 'more', 'more', cwd=d)), '')
            self.assertEqual(self.calls('AddOrigin')[-1], ['more', os.path.join(os.path.realpath(d), 'more'), 30, {}])
        self.assertOk(ctl('add-origin', 'first', 'file:///srv/first', '5'))
        self.assertEqual(self.calls('AddOrigin')[-1], ['first', 'file:///srv/first', 5, {}])
        out = self.assertOk(ctl('origins', '--no-legend'))
        self.assertEqual([line.split()[0] for line in out.splitlines()], ['first', 'music', 'nas', 'more'])

        rc, out, err = ctl('add-origin', 'first', '/srv/again')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to add origin first: An origin named "first" exists already')
        rc, out, err = ctl('add-origin', 'bad name', '/srv/x', '1')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertSentence(err, 'Failed to add origin bad name: Invalid origin name')
        rc, out, err = ctl('add-origin', 'remote', 's3://bucket/music', '1')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertEqual(err, 'Remote origins are not supported by this version of musicfsd yet.\n')
        rc, out, err = ctl('add-origin', 'x', '/srv/x', 'high')
        self.assertEqual((rc, out), (EXIT_USAGE, ''))

        self.assertEqual(self.assertOk(ctl('remove-origin', 'first')), '')
        rc, out, err = ctl('remove-origin', 'first')
        self.assertEqual((rc, out, err), (EXIT_DAEMON, '', 'No origin named first.\n'))

    def test_add_origin_wait(self):
        self.mock.SetAutoScan(False)
        child = Child('add-origin', 'late', '/srv/late', '50', '--wait')
        self.addCleanup(child.kill)
        harness.wait_until(lambda: self.calls('AddOrigin'), DEADLINE, message='the AddOrigin call')
        self.mock.EmitScanFinished('late', dbus.UInt32(4), dbus.UInt32(0), dbus.UInt32(0))
        rc, err = child.finish()
        self.assertEqual((rc, err), (0, ''))
        self.assertEqual(child.lines, ['Scanned late: 4 added, 0 changed, 0 removed.'])

    def test_reload(self):
        self.assertOk(ctl('reload'))
        self.mock.SetReloadError('/etc/musicfs/musicfsd.conf:3: unknown key "colour"')
        rc, out, err = ctl('reload')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertEqual(err, 'Failed to reload the configuration: '
                              '/etc/musicfs/musicfsd.conf:3: unknown key "colour".\n')

    # ---------------------------------------------------------------------------------------------
    # search

    def test_search(self):
        out = self.assertOk(ctl('search', 'kind', 'of', 'blue'))
        self.assertEqual(self.calls('Search'), [['kind of blue', 50]])
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ['ARTIST', 'ALBUM', 'TITLE', 'PATH'])
        self.assertEqual(len(lines), 4)
        self.assertTrue(all(line.startswith('Miles Davis Kind of Blue ') for line in lines[1:]), out)

        res = json.loads(self.assertOk(ctl('search', 'nobody', '--json', '--limit', '3')))
        self.assertEqual(len(res), 1)
        self.assertEqual(set(res[0]), {'path', 'artist', 'album', 'title', 'score'})
        self.assertEqual((res[0]['artist'], res[0]['title']),
                         ('Nina Simone', "Nobody Knows You When You're Down and Out"))
        self.assertIsInstance(res[0]['score'], float)
        self.assertEqual(self.calls('Search')[-1], ['nobody', 3])

        self.assertEqual(len(json.loads(self.assertOk(ctl('search', 'blue', '-n', '2', '--json')))), 2)
        self.assertEqual(self.assertOk(ctl('search', 'zzz')), 'No tracks match.\n')
        self.assertEqual(json.loads(self.assertOk(ctl('search', 'zzz', '--json'))), [])

        rc, out, err = ctl('search', 'blue', '--limit', '0')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to search: Limit 0 is out of range')
        for bad in ('abc', '-1', '4294967296', ''):
            rc, out, err = ctl('search', 'blue', '--limit', bad)
            self.assertEqual((rc, out), (EXIT_USAGE, ''), bad)

    # ---------------------------------------------------------------------------------------------
    # failpoints

    def test_failpoints(self):
        out = self.assertOk(ctl('failpoint', 'list'))
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(rows[0], ['NAME', 'ACTIONS', 'FIRED'])
        self.assertIn(['origin-read', '-', '0'], rows[1:])
        self.assertEqual([r[0] for r in rows[1:]], sorted(mock_default('DEFAULT_FAILPOINTS')))     # all of them, by name

        self.assertEqual(self.assertOk(ctl('failpoint', 'arm', 'origin-read', '3*return(EIO)->sleep(10)')), '')
        res = json.loads(self.assertOk(ctl('failpoint', 'list', '--json')))
        self.assertIn({'name': 'origin-read', 'actions': '3*return(EIO)->sleep(10)', 'fired': 0}, res)
        self.assertIn({'name': 'fuse-read', 'actions': '', 'fired': 0}, res)

        rc, out, err = ctl('failpoint', 'arm', 'origin-read', 'bogus(')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'Failed to arm failpoint origin-read: Invalid actions')
        rc, out, err = ctl('failpoint', 'arm', 'no-such', 'off')
        self.assertEqual((rc, out), (EXIT_DAEMON, ''))
        self.assertSentence(err, 'No failpoint named no-such')
        rc, out, err = ctl('failpoint', 'disarm', 'no-such')
        self.assertEqual(rc, EXIT_DAEMON)
        self.assertSentence(err, 'No failpoint named no-such')

        self.assertOk(ctl('failpoint', 'disarm', 'origin-read'))
        self.assertIn(['origin-read', '-', '0'], [line.split() for line in ctl('failpoint', 'list')[1].splitlines()])
        self.assertEqual(self.calls('ArmFailpoint'), [['origin-read', '3*return(EIO)->sleep(10)'],
                                                      ['origin-read', 'bogus('], ['no-such', 'off']])

    def test_failpoints_compiled_out(self):
        self.start_mock({'FailpointsSupported': False})
        for args in (('list',), ('arm', 'fuse-read', 'off'), ('disarm', 'fuse-read')):
            rc, out, err = ctl('failpoint', *args)
            self.assertEqual((rc, out), (EXIT_DAEMON, ''), args)
            self.assertEqual(err, 'Failpoints are not compiled into this musicfsd (-Dfailpoints=false).\n')

    # ---------------------------------------------------------------------------------------------
    # errors and exit codes

    def test_not_supported(self):
        self.mock.SetNotSupported(['Search', 'Pin', 'Unpin', 'GetCacheStats', 'SetPassthrough', 'CheckOrigin'])
        for args, method in ((('search', 'blue'), 'Search'), (('pin', 'x'), 'Pin'), (('unpin', 'x'), 'Unpin'),
                             (('cache',), 'GetCacheStats'), (('cache', '--json'), 'GetCacheStats'),
                             (('passthrough', 'on'), 'SetPassthrough'), (('check', 'nas'), 'CheckOrigin')):
            rc, out, err = ctl(*args)
            self.assertEqual((rc, out), (EXIT_DAEMON, ''), args)
            self.assertEqual(err, '%s is not supported by this version of musicfsd yet.\n' % method)

    def test_not_authorized(self):
        self.mock.SetAuthorized(False)
        for args, action in ((('mount',), 'mount'), (('unmount',), 'unmount'),
                             (('rescan', 'nas'), 'rescan origin nas'), (('rescan', '--wait'), 'rescan the origins'),
                             (('reload',), 'reload the configuration'), (('pin', 'a'), 'pin a'),
                             (('passthrough', 'on'), 'turn passthrough on'),
                             (('failpoint', 'arm', 'fuse-read', 'off'), 'arm failpoint fuse-read'),
                             (('failpoint', 'disarm', 'fuse-read'), 'disarm failpoint fuse-read'),
                             (('add-origin', 'x', '/srv/x', '1'), 'add origin x'),
                             (('remove-origin', 'nas'), 'remove origin nas'), (('clear-cache',), 'clear the cache')):
            rc, out, err = ctl(*args)
            self.assertEqual((rc, out), (EXIT_DENIED, ''), args)
            self.assertSentence(err, 'Not allowed to %s: Access denied' % action,
                                '. Try again as root or with an authorized account.')
        # Reading is not privileged.
        self.assertOk(ctl('status'))
        self.assertOk(ctl('failpoint', 'list'))

    def test_interactive_authorization(self):
        """Interactive polkit authorization is allowed when stdin is a terminal, never with
        --no-ask-password and not without a terminal."""
        master, slave = pty.openpty()
        try:
            self.assertOk(ctl('reload', stdin=slave))
            self.assertOk(ctl('reload', '--no-ask-password', stdin=slave))
        finally:
            os.close(slave)
            os.close(master)
        self.assertOk(ctl('reload'))
        self.assertEqual([(str(a), bool(i)) for a, i in self.mock.GetAuthorizationChecks()], [
            ('org.musicfs.manager.reload', True), ('org.musicfs.manager.reload', False),
            ('org.musicfs.manager.reload', False)])

    def test_not_running(self):
        self.stop_mock()
        for args, what in ((('status',), "read the daemon's status"), (('origins', '--json'), 'list the origins'),
                           (('check', 'nas'), 'check origin nas'), (('rescan', '--wait'), 'rescan the origins'),
                           (('failpoint', 'list'), 'list failpoints'), (('cache',), 'read the cache statistics'),
                           (('mount',), 'mount'), (('reload',), 'reload the configuration')):
            rc, out, err = ctl(*args)
            self.assertEqual((rc, out), (EXIT_UNREACHABLE, ''), args)
            self.assertEqual(err, 'Failed to %s: musicfsd is not running (no owner of org.musicfs.Manager '
                                  'on the system bus).\n' % what)

    def test_no_bus(self):
        rc, out, err = ctl('status', env={'DBUS_SYSTEM_BUS_ADDRESS': 'unix:path=/nonexistent/bus'})
        self.assertEqual((rc, out), (EXIT_UNREACHABLE, ''))
        self.assertSentence(err, 'Failed to connect to the system bus: ')

    def test_user_bus(self):
        # The mock is on the system bus: --user does not find it...
        rc, out, err = ctl('--user', 'status')
        self.assertEqual(rc, EXIT_UNREACHABLE)
        self.assertIn('no owner of org.musicfs.Manager on the session bus', err)
        # ...until one runs on the session bus.
        self.stop_mock()
        self.start_mock({'Version': '9.9'}, system_bus=False)
        self.assertEqual(fields(self.assertOk(ctl('status', '--user')))['Version'], '9.9')
        rc, out, err = ctl('status')
        self.assertEqual(rc, EXIT_UNREACHABLE)

    def test_usage_errors(self):
        for args in ((), ('bogus',), ('status', 'extra'), ('origins', 'x'), ('check',), ('check', 'a', 'b'),
                     ('mount', 'a', 'b'), ('unmount', 'x'), ('passthrough',), ('passthrough', 'on', 'off'),
                     ('rescan', 'a', 'b'), ('search',), ('pin',), ('unpin', 'a', 'b'), ('cache', 'x'),
                     ('cache', 'pin'), ('cache', 'unpin', 'a', 'b'), ('cache', 'stats', 'x'),
                     ('cache', 'clear', '--json'),
                     ('failpoint',), ('failpoint', 'bogus'), ('failpoint', 'list', 'x'),
                     ('failpoint', 'arm', 'fuse-read'), ('failpoint', 'disarm'), ('monitor', 'x'),
                     ('reload', 'x'), ('--no-such-option', 'status'), ('-x', 'status'),
                     ('status', '--wait'), ('origins', '--force'), ('status', '--limit', '3'),
                     ('search', 'x', '--limit'), ('rescan', '--force'), ('add-origin', 'x'),
                     ('add-origin', 'a', 'b', '1', 'x'), ('remove-origin',), ('clear-cache', 'x'),
                     ('remove-origin', 'x', '--wait')):
            rc, out, err = ctl(*args)
            self.assertEqual((rc, out), (EXIT_USAGE, ''), args)
            self.assertTrue(err.startswith('musicfsctl: '), (args, err))
            self.assertIn("Try 'musicfsctl --help'", err)
        # A usage error is found before the bus is needed.
        rc, out, err = ctl('bogus', env={'DBUS_SYSTEM_BUS_ADDRESS': 'unix:path=/nonexistent/bus'})
        self.assertEqual(rc, EXIT_USAGE)

    def test_help_and_version(self):
        rc, out, err = ctl('--help')
        self.assertEqual((rc, err), (0, ''))
        for word in VERBS + ('--user', '--json', '--no-ask-password', '--no-legend', '--wait', '--force',
                             '--limit', '--version', 'Exit status'):
            self.assertIn(word, out)
        for code in ('0 success', '1 the daemon reported a failure', '2 usage error',
                     '3 the daemon cannot be reached', '4 not authorized'):
            self.assertIn(code, ' '.join(out.split()))
        self.assertEqual(ctl('-h')[1], out)
        rc, out, err = ctl('--version')
        self.assertEqual((rc, out, err), (0, 'musicfsctl 0.1.0\n', ''))

    def complete(self, *words):
        """What shell-completion/bash/musicfsctl offers after the words (the last one being typed)."""
        script = os.path.join(harness.SOURCE_ROOT, 'shell-completion', 'bash', 'musicfsctl')
        words = ('musicfsctl',) + words
        cmd = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; '
               '_musicfsctl; printf "%s\\n" "${COMPREPLY[@]}"')
        r = subprocess.run(['bash', '-c', cmd, 'bash', script] + list(words), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60,
                           env=dict(os.environ, PATH=os.path.dirname(CTL) + ':' + os.environ['PATH']))
        self.assertEqual(r.stderr, '')
        return sorted(s for s in r.stdout.split('\n') if s)

    def test_bash_completion(self):
        self.assertEqual(self.complete('re'), ['reload', 'remove-origin', 'rescan'])
        self.assertEqual(self.complete('--json', 'or'), ['origins'])
        self.assertEqual(self.complete('check', ''), ['music', 'nas'])         # asked of the daemon
        self.assertEqual(self.complete('rescan', '--wait', 'n'), ['nas'])
        self.assertEqual(self.complete('passthrough', ''), ['off', 'on'])
        self.assertEqual(self.complete('cache', ''), ['clear', 'pin', 'repair', 'stats', 'unpin', 'verify'])
        self.assertEqual(self.complete('cache', 're'), ['repair'])
        self.assertEqual(self.complete('failpoint', ''), ['arm', 'disarm', 'list'])
        self.assertIn('origin-read', self.complete('failpoint', 'arm', 'orig'))
        self.assertEqual(self.complete('status', '--no-l'), ['--no-legend'])
        self.assertEqual(self.complete('check', 'nas', ''), [])
        self.stop_mock()
        self.assertEqual(self.complete('check', ''), [])                       # quietly nothing

    # ---------------------------------------------------------------------------------------------
    # monitor

    def start_monitor(self, *args):
        child = Child('monitor', *args)
        self.addCleanup(child.kill)
        # The monitor subscribes after it starts: emit until it shows that it listens.
        deadline = time.monotonic() + DEADLINE
        while True:
            self.mock.EmitScanFinished('music', dbus.UInt32(0), dbus.UInt32(0), dbus.UInt32(0))
            try:
                child.wait_line(lambda s: 'ScanFinished' in s, timeout=0.5, what='the first event')
                return child
            except AssertionError:
                if time.monotonic() > deadline or child.proc.poll() is not None:
                    raise

    def test_monitor(self):
        child = self.start_monitor()
        ts = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} [+-]\d{4}'

        # A signal from someone else than the daemon is not shown: the next line is the daemon's.
        self.bus.send_message(self.spoofed_signal())
        self.mock.SetOriginHealth('nas', 'unhealthy', 'timed out')
        line = child.wait_line(lambda s: True, what='PropertiesChanged of nas')
        self.assertRegex(line, '^%s PropertiesChanged origin/nas Health=unhealthy ConsecutiveFailures=1 '
                               'LastError="timed out" LastCheckUSec=\\d+$' % ts)
        line = child.wait_line(lambda s: True, what='OriginHealthChanged')
        self.assertRegex(line, '^%s OriginHealthChanged nas healthy -> unhealthy$' % ts)
        line = child.wait_line(lambda s: True, what='State')
        self.assertRegex(line, '^%s PropertiesChanged manager State=degraded$' % ts)

        self.mock.EmitScanFinished('nas', dbus.UInt32(1), dbus.UInt32(2), dbus.UInt32(3))
        child.wait_line(lambda s: s.endswith(' ScanFinished nas added=1 changed=2 removed=3'), what='ScanFinished')

        self.manager.AddOrigin('extra', '/srv/extra', dbus.UInt32(30), dbus.Dictionary({}, signature='sv'))
        child.wait_line(lambda s: s.endswith(' InterfacesAdded origin/extra org.musicfs.Origin'), what='added')
        child.wait_line(lambda s: s.endswith(' PropertiesChanged manager Origins=[music, nas, extra]'),
                        what='Origins')
        self.manager.RemoveOrigin('extra')
        child.wait_line(lambda s: s.endswith(' InterfacesRemoved origin/extra org.musicfs.Origin'), what='removed')

        # The daemon goes and comes back: both are events, and the new one's signals are followed.
        self.stop_mock()
        child.wait_line(lambda s: ' DaemonStopped :' in s, what='DaemonStopped')
        self.start_mock()
        child.wait_line(lambda s: ' DaemonStarted :' in s, what='DaemonStarted')
        self.mock.SetState('stopping')
        child.wait_line(lambda s: s.endswith(' PropertiesChanged manager State=stopping'), what='State')

        child.proc.send_signal(signal.SIGINT)
        rc, err = child.finish()
        self.assertEqual((rc, err), (0, ''))
        self.assertFalse([s for s in child.lines if 'spoof' in s], child.lines)

    def spoofed_signal(self, origin='spoof'):
        msg = dbus.lowlevel.SignalMessage('/org/musicfs/Manager', MANAGER_IFACE, 'ScanFinished')
        msg.append(origin, dbus.UInt32(9), dbus.UInt32(9), dbus.UInt32(9), signature='suuu')
        return msg

    def test_monitor_json(self):
        child = self.start_monitor('--json')
        first = json.loads(child.lines[-1])
        self.assertEqual({k: first[k] for k in ('event', 'origin', 'added', 'changed', 'removed')},
                         {'event': 'ScanFinished', 'origin': 'music', 'added': 0, 'changed': 0, 'removed': 0})
        self.assertIsInstance(first['time_usec'], int)

        self.mock.SetOriginHealth('music', 'degraded', 'slow\n"disk"')
        ev = json.loads(child.wait_line(lambda s: True, what='PropertiesChanged'))
        self.assertEqual((ev['event'], ev['path'], ev['origin'], ev['interface'], ev['invalidated']),
                         ('PropertiesChanged', '/org/musicfs/Manager/origin/music', 'music', 'org.musicfs.Origin', []))
        self.assertEqual({k: ev['changed'][k] for k in ('Health', 'ConsecutiveFailures', 'LastError')},
                         {'Health': 'degraded', 'ConsecutiveFailures': 1, 'LastError': 'slow\n"disk"'})
        ev = json.loads(child.wait_line(lambda s: True, what='OriginHealthChanged'))
        self.assertEqual({k: ev[k] for k in ('event', 'origin', 'from', 'to')},
                         {'event': 'OriginHealthChanged', 'origin': 'music', 'from': 'healthy', 'to': 'degraded'})

        self.mock.EmitScanProgress('nas', dbus.UInt64(2), dbus.UInt64(5))
        ev = json.loads(child.wait_line(lambda s: True, what='ScanProgress'))
        self.assertEqual(ev['changed'], {'ScanProgress': ['nas', 2, 5]})

        self.manager.AddOrigin('x1', 'file:///srv/x1', dbus.UInt32(3), dbus.Dictionary({}, signature='sv'))
        ev = json.loads(child.wait_line(lambda s: '"InterfacesAdded"' in s, what='InterfacesAdded'))
        self.assertEqual((ev['path'], ev['origin']), ('/org/musicfs/Manager/origin/x1', 'x1'))
        self.assertEqual(ev['interfaces']['org.musicfs.Origin']['Url'], '/srv/x1')
        self.manager.RemoveOrigin('x1')
        ev = json.loads(child.wait_line(lambda s: '"InterfacesRemoved"' in s, what='InterfacesRemoved'))
        self.assertEqual(ev['interfaces'], ['org.musicfs.Origin'])

        # A signal musicfsctl does not know yet is shown with its arguments.
        self.mock.EmitSignal(MANAGER_IFACE, 'SomethingNew', 'sas', ['a', ['b', 'c d']])
        ev = json.loads(child.wait_line(lambda s: 'SomethingNew' in s, what='SomethingNew'))
        self.assertEqual(ev['args'], ['a', ['b', 'c d']])

        child.proc.send_signal(signal.SIGTERM)
        rc, err = child.finish()
        self.assertEqual((rc, err), (0, ''))
        for s in child.lines:
            json.loads(s)


if __name__ == '__main__':
    unittest.main(verbosity=2)
