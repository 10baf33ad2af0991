#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""org.musicfs.Manager against the built daemon on a real mount and a private system bus: every
property's value and its PropertiesChanged, Mount and Unmount at runtime (busy, forced, mounted
again elsewhere), Rescan with ScanProgress and ScanFinished, Reload, the capabilities of later issues
(NotSupported after their argument checks), and bad input of every kind (wrong types, absurd limits,
bad paths, unknown options, overlong and non-UTF-8 strings), each answered with its error and the
daemon still answering the next call."""

import errno
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import buslib  # noqa: E402
import harness  # noqa: E402

harness.require_fuse()
import dbus  # noqa: E402
import genlib  # noqa: E402

ERR = buslib.ERR
DBUS_ERR = buslib.DBUS_ERR
FAILPOINTS_BUILT = os.environ.get('MUSICFS_FAILPOINTS_BUILT', '1') == '1'
PROPERTIES = {'Version', 'State', 'Passthrough', 'MountPoint', 'TrackCount', 'CacheBytes', 'CacheBudget',
              'ScanProgress', 'Origins'}


def make_library(directory, count, name, seed):
    """count tracks of one album; returns {virtual path: path relative to directory}."""
    tracks = genlib.gen_bulk(directory, count, seed=seed, one_album=(name, name + ' Album'), prefix=name.lower(),
                             write_expected=False)
    return genlib.expected_paths(tracks)


class ManagerApiTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.work = tempfile.mkdtemp(prefix='musicfs-api-')
        cls.lib = os.path.join(cls.work, 'music')
        cls.expected = make_library(cls.lib, 4, 'Alpha', 1)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.work)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.rec = buslib.Recorder(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
        self.addCleanup(self.rec.close)

    def started(self, origins=None, tracks=None, **kwargs):
        d = self.daemon(origins or [self.lib], **kwargs)
        d.wait_tracks(len(self.expected) if tracks is None else tracks)
        # The first scan is over once ScanProgress is idle again and its ScanFinished went out.
        harness.wait_until(lambda: buslib.plain(d.bus_get('ScanProgress'))[0] == '', 30,
                           message='ScanProgress to go idle')
        return d

    def assertDBusError(self, name, fn, *args, **kwargs):
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            fn(*args, **kwargs)
        self.assertEqual(c.exception.get_dbus_name(), name, str(c.exception))
        msg = c.exception.get_dbus_message()
        if name.startswith(ERR):
            # A sentence for a person: it says something and ends like one.
            self.assertGreater(len(msg.split()), 2, msg)
            self.assertTrue(msg.endswith('.'), msg)
        return msg

    def assertAlive(self, d):
        self.assertTrue(d.running(), d.describe())
        self.assertEqual(str(d.bus_get('State')), 'ready')
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.expected))

    def call(self, d, method, signature='', *args):
        return d.bus_call(method, signature, *args)

    # -- properties

    def test_properties(self):
        d = self.started()
        props = buslib.plain(d.bus_get_all())
        self.assertEqual(set(props), PROPERTIES)
        self.assertRegex(props['Version'], r'^\d+\.\d+\.\d+')
        self.assertEqual(props['State'], 'ready')
        self.assertIs(props['Passthrough'], False)
        self.assertEqual(props['MountPoint'], d.mountpoint)
        self.assertEqual(props['TrackCount'], len(self.expected))
        self.assertEqual(props['CacheBytes'], 0)
        self.assertEqual(props['CacheBudget'], 10 << 30)   # [cache] budget's default
        self.assertEqual(props['ScanProgress'], ('', 0, 0))
        self.assertEqual(props['Origins'], [buslib.origin_path('music')])
        raw = d.bus_get_all()
        for name, cls in (('TrackCount', dbus.UInt64), ('CacheBytes', dbus.UInt64), ('Passthrough', dbus.Boolean),
                          ('Origins', dbus.Array), ('ScanProgress', dbus.Struct)):
            self.assertIsInstance(raw[name], cls, name)
        self.assertEqual([type(x) for x in raw['ScanProgress']], [dbus.String, dbus.UInt64, dbus.UInt64])
        # Read-only ones refuse Set; Passthrough takes it (root needs no polkit).
        obj = d.manager()
        self.assertDBusError(DBUS_ERR + 'PropertyReadOnly', obj.Set, harness.MANAGER_IFACE, 'MountPoint', '/x',
                             dbus_interface=buslib.PROPS)
        self.assertDBusError(DBUS_ERR + 'PropertyReadOnly', obj.Set, harness.MANAGER_IFACE, 'CacheBudget',
                             dbus.UInt64(1), signature='ssv', dbus_interface=buslib.PROPS)
        for value in (True, False):
            obj.Set(harness.MANAGER_IFACE, 'Passthrough', dbus.Boolean(value), signature='ssv',
                    dbus_interface=buslib.PROPS)
            self.assertIs(buslib.plain(d.bus_get('Passthrough')), value)
        self.assertDBusError(DBUS_ERR + 'InvalidArgs', obj.Set, harness.MANAGER_IFACE, 'Passthrough', 'yes',
                             signature='ssv', dbus_interface=buslib.PROPS)
        self.assertDBusError(DBUS_ERR + 'UnknownProperty', obj.Set, harness.MANAGER_IFACE, 'NoSuch',
                             dbus.Boolean(True), signature='ssv', dbus_interface=buslib.PROPS)
        self.assertIs(buslib.plain(d.bus_get('Passthrough')), False)
        self.assertAlive(d)

    def test_properties_changed_during_startup(self):
        mark = self.rec.mark()
        d = self.daemon([self.lib])
        # A first scan on an empty catalog: progress for the origin, then idle; the tracks arrive.
        self.rec.wait_change('TrackCount', len(self.expected), since=mark)
        self.rec.wait_change('ScanProgress', ('', 0, 0), since=mark)
        self.rec.wait_signal('ScanFinished', ['music', len(self.expected), 0, 0], since=mark)
        self.assertEqual(self.rec.changes('State', since=mark), ['ready'])
        progress = self.rec.changes('ScanProgress', since=mark)
        self.assertIn('music', [p[0] for p in progress], progress)
        # The announcement of the tracks comes before the signal that the scan is over.
        finished_at = next(i for i, s in enumerate(self.rec.signals[mark:]) if s[2] == 'ScanFinished')
        tracks_at = next(i for i, s in enumerate(self.rec.signals[mark:])
                         if s[2] == 'PropertiesChanged' and 'TrackCount' in s[3][1])
        self.assertLess(tracks_at, finished_at)
        self.assertDaemonStops(d)
        self.rec.wait_change('State', 'stopping', since=mark)

    # -- capabilities of later issues: their arguments are checked, then NotSupported

    def test_not_supported_yet(self):
        d = self.started()
        # (The cache's methods: test_cache_api.py; Search: test_search.py.)
        overlong = 'x' * 5000
        for method, sig, args in (('Search', 'su', ('alpha', 0)),
                                  ('Search', 'su', ('alpha', 10001)),
                                  ('Search', 'su', ('alpha', 0xffffffff)),
                                  ('Search', 'su', ('', 10)),
                                  ('Search', 'su', (overlong, 10)),
                                  ('Pin', 's', ('',)),
                                  ('Pin', 's', ('relative/path',)),
                                  ('Pin', 's', ('/' + overlong,)),
                                  ('Unpin', 's', ('',)),
                                  ('Unpin', 's', ('Alpha',))):
            msg = self.assertDBusError(ERR + 'InvalidArgs', self.call, d, method, sig, *args)
            self.assertLess(len(msg), 1000, 'the error repeats a huge argument')
        self.assertAlive(d)

    # -- bad input at the message level

    def test_wrong_types(self):
        d = self.started()
        for method, sig, args in (('Mount', 's', ('',)),
                                  ('Mount', 'ss', ('', '')),
                                  ('Unmount', 's', ('yes',)),
                                  ('Unmount', '', ()),
                                  ('AddOrigin', 'sss', ('a', '/tmp', '1')),
                                  ('AddOrigin', 'ssua{ss}', ('a', '/tmp', 1, {})),
                                  ('RemoveOrigin', 'u', (1,)),
                                  ('CheckOrigin', 'i', (1,)),
                                  ('Rescan', 'b', (True,)),
                                  ('Search', 'ss', ('x', '10')),
                                  ('Search', 'si', ('x', -1)),
                                  ('Pin', 'as', (['/x'],)),
                                  ('ArmFailpoint', 's', ('fuse-read',)),
                                  ('Reload', 's', ('now',)),
                                  ('GetOriginHealth', 'b', (True,))):
            self.assertDBusError(DBUS_ERR + 'InvalidArgs', self.call, d, method, sig, *args)
        self.assertDBusError(DBUS_ERR + 'UnknownMethod', self.call, d, 'NoSuchMethod', '')
        self.assertAlive(d)

    def test_non_utf8_and_huge_strings(self):
        d = self.started()
        address = os.environ['DBUS_SYSTEM_BUS_ADDRESS']
        bad = [b'\xff\xfe', b'caf\xc3', b'\xed\xa0\x80', b'a\x00b']
        for i, raw in enumerate(bad):
            for method in ('CheckOrigin', 'Rescan', 'RemoveOrigin'):
                msg = buslib.marshal_call(2, harness.BUS_NAME, harness.MANAGER_PATH, harness.MANAGER_IFACE, method,
                                          's', buslib.marshal_string(raw))
                answered, closed = buslib.send_raw(address, [msg])
                # The bus (or sd-bus) refuses the message; either way the daemon must not care.
                self.assertTrue(answered or closed)
                self.assertAlive(d)
        # A well-formed raw call gets its answer, so the raw client itself is sound.
        msg = buslib.marshal_call(2, harness.BUS_NAME, harness.MANAGER_PATH, harness.MANAGER_IFACE, 'CheckOrigin',
                                  's', buslib.marshal_string(b'music'))
        self.assertEqual(buslib.send_raw(address, [msg]), (True, False))
        # Strings far beyond any limit, and ones full of odd characters, get sentences, not crashes.
        huge = 'n' * (1 << 20)
        for method, sig, args, err in (('CheckOrigin', 's', (huge,), 'InvalidArgs'),
                                       ('RemoveOrigin', 's', (huge,), 'InvalidArgs'),
                                       ('Rescan', 's', (huge,), 'InvalidArgs'),
                                       ('Mount', 'sa{sv}', ('/' + huge, {}), 'InvalidArgs'),
                                       ('AddOrigin', 'ssua{sv}', ('x', '/' + huge, 1, {}), 'InvalidArgs'),
                                       ('AddOrigin', 'ssua{sv}', ('x', 'file://' + huge, 1, {}), 'InvalidArgs'),
                                       ('ArmFailpoint', 'ss', ('fuse-read', huge),
                                        'InvalidArgs' if FAILPOINTS_BUILT else 'NotSupported'),
                                       ('ArmFailpoint', 'ss', (huge, 'off'),
                                        'NoSuchFailpoint' if FAILPOINTS_BUILT else 'NotSupported'),
                                       ('CheckOrigin', 's', ('\u00e9t\u00e9\U0001f3b5', ), 'InvalidArgs'),
                                       ('Rescan', 's', ('a\tb\nc', ), 'InvalidArgs')):
            msg = self.assertDBusError(ERR + err, self.call, d, method, sig, *args)
            self.assertLess(len(msg), 2000)
        self.assertAlive(d)

    # -- failpoint methods: malformed actions

    def test_malformed_failpoint_actions(self):
        if not FAILPOINTS_BUILT:
            self.skipTest('failpoints compiled out (test_introspection covers NotSupported)')
        d = self.started()
        for actions in ('', 'bogus', 'return(', 'return(EIO', 'return(NOPE)', '101%return', '-1*return',
                        '1*', 'sleep(x)', 'sleep(-5)', '->', 'off->', 'return(EIO)->->off', '%', '**',
                        'print(' + 'a' * 10000):
            self.assertDBusError(ERR + 'InvalidArgs', self.call, d, 'ArmFailpoint', 'ss', 'fuse-read', actions)
        points = {str(n): str(a) for n, a, _ in self.call(d, 'ListFailpoints')}
        self.assertTrue(all(a == '' for a in points.values()), points)
        self.assertAlive(d)

    # -- mount and unmount at runtime

    def test_unmount_busy_force_and_mount_again(self):
        d = self.started()
        some = sorted(self.expected)[0]
        with open(os.path.join(self.lib, self.expected[some]), 'rb') as f:
            want = f.read()

        mark = self.rec.mark()
        held = open(d.path(some), 'rb')
        self.addCleanup(held.close)
        self.assertEqual(held.read(4), want[:4])
        msg = self.assertDBusError(ERR + 'Busy', self.call, d, 'Unmount', 'b', False)
        self.assertIn(d.mountpoint, msg)
        self.assertTrue(d.is_mounted())
        self.assertEqual(str(d.bus_get('MountPoint')), d.mountpoint)

        # A working directory inside keeps it busy too.
        cwd = os.getcwd()
        os.chdir(d.path('Alpha'))
        try:
            self.assertDBusError(ERR + 'Busy', self.call, d, 'Unmount', 'b', False)
        finally:
            os.chdir(cwd)

        self.call(d, 'Unmount', 'b', True)
        self.assertFalse(d.is_mounted())
        self.assertEqual(str(d.bus_get('MountPoint')), '')
        self.rec.wait_change('MountPoint', '', since=mark)
        # The file that was open fails from now on instead of pinning a dead mount (once the kernel
        # forgets the pages it read: those it may still serve).
        os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with self.assertRaises(OSError) as c:
            os.pread(held.fileno(), 1 << 16, 0)
        self.assertIn(c.exception.errno, (errno.ENOTCONN, errno.EIO, errno.ENODEV))
        held.close()
        # Unmounted, but running: the state is unchanged and the bus answers.
        self.assertEqual(str(d.bus_get('State')), 'ready')
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.expected))
        self.assertDBusError(ERR + 'NotMounted', self.call, d, 'Unmount', 'b', False)
        self.assertDBusError(ERR + 'NotMounted', self.call, d, 'Unmount', 'b', True)

        # "" mounts at the configured mountpoint again.
        self.call(d, 'Mount', 'sa{sv}', '', {})
        self.assertTrue(d.is_mounted())
        self.assertEqual(str(d.bus_get('MountPoint')), d.mountpoint)
        self.rec.wait_change('MountPoint', d.mountpoint, since=mark)
        with open(d.path(some), 'rb') as f:
            self.assertEqual(f.read(), want)
        self.assertDBusError(ERR + 'Busy', self.call, d, 'Mount', 'sa{sv}', '', {})

        # Idle: a plain unmount works, and the library mounts somewhere else.
        self.call(d, 'Unmount', 'b', False)
        self.assertFalse(d.is_mounted())
        other = os.path.join(self.tempdir(), 'elsewhere')
        os.mkdir(other)
        self.addCleanup(harness.lazy_unmount, other)
        self.call(d, 'Mount', 'sa{sv}', other, {})
        self.assertTrue(harness.is_mounted(other))
        self.assertEqual(str(d.bus_get('MountPoint')), other)
        self.rec.wait_change('MountPoint', other, since=mark)
        files = {p for p, st in harness.walk_tree(other).items() if not os.path.isdir(os.path.join(other, p))}
        self.assertEqual(files, set(self.expected))
        with open(os.path.join(other, some), 'rb') as f:
            self.assertEqual(f.read(), want)
        self.assertEqual(self.rec.changes('MountPoint', since=mark), ['', d.mountpoint, '', other])
        self.assertNotIn('stopping', self.rec.changes('State', since=mark))

        # Back where the harness expects it, and a clean stop unmounts it.
        self.call(d, 'Unmount', 'b', False)
        self.assertFalse(harness.is_mounted(other))
        self.call(d, 'Mount', 'sa{sv}', d.mountpoint, {})
        self.assertDaemonStops(d)

    def test_mount_errors(self):
        d = self.started()
        tmp = self.tempdir()
        full = os.path.join(tmp, 'full')
        os.mkdir(full)
        with open(os.path.join(full, 'x'), 'w') as f:
            f.write('x')
        afile = os.path.join(tmp, 'file')
        with open(afile, 'w') as f:
            f.write('x')
        # Mounted: any Mount is Busy, whatever the path.
        self.assertDBusError(ERR + 'Busy', self.call, d, 'Mount', 'sa{sv}', tmp, {})
        self.call(d, 'Unmount', 'b', False)
        for path, options, word in (('relative/dir', {}, 'absolute'),
                                    ('/' + 'd' * 5000, {}, 'longer'),
                                    (os.path.join(tmp, 'missing'), {}, 'does not exist'),
                                    (full, {}, 'not empty'),
                                    (afile, {}, 'not a directory'),
                                    (self.lib, {}, 'overlaps'),
                                    (os.path.dirname(self.lib), {}, 'overlaps'),
                                    (os.path.join(tmp, 'x'), {'ro': True}, 'Unknown option'),
                                    ('', {'allow_other': dbus.Boolean(True), 'x': 1}, 'Unknown option')):
            msg = self.assertDBusError(ERR + 'InvalidArgs', self.call, d, 'Mount', 'sa{sv}', path, options)
            self.assertIn(word, msg)
        self.assertEqual(str(d.bus_get('MountPoint')), '')
        self.assertFalse(d.is_mounted())
        self.call(d, 'Mount', 'sa{sv}', '', {})
        self.assertTrue(d.is_mounted())
        self.assertAlive(d)

    # -- scans

    def test_rescan(self):
        lib = os.path.join(self.tempdir(), 'music')
        shutil.copytree(self.lib, lib)
        # One file per catalog batch, each new file slowed down: the scan is long enough to watch.
        d = self.started([lib], config_text='[musicfsd]\nscan_batch = 1\n')
        self.assertDBusError(ERR + 'NoSuchOrigin', self.call, d, 'Rescan', 's', 'nope')
        self.assertDBusError(ERR + 'InvalidArgs', self.call, d, 'Rescan', 's', 'bad name')

        # Nothing changed: the scan says so, and the tree stays.
        mark = self.rec.mark()
        self.call(d, 'Rescan', 's', 'music')
        self.rec.wait_signal('ScanFinished', ['music', 0, 0, 0], since=mark)
        self.assertEqual(self.rec.changes('TrackCount', since=mark), [])
        # However quick, the scan shows in ScanProgress: it ran, then it is idle again.
        self.rec.wait_change('ScanProgress', ('', 0, 0), since=mark)
        progress = self.rec.changes('ScanProgress', since=mark)
        self.assertEqual(progress[0][0], 'music', progress)
        self.assertEqual(progress[0][2], len(self.expected), progress)

        added = make_library(os.path.join(lib, 'more'), 6, 'Beta', 2)
        victim = sorted(self.expected)[0]
        os.unlink(os.path.join(lib, self.expected[victim]))
        if FAILPOINTS_BUILT:
            self.call(d, 'ArmFailpoint', 'ss', 'scan-file', 'sleep(150)')
        mark = self.rec.mark()
        self.call(d, 'Rescan', 's', '')     # returns at once; the scan runs behind it
        total = len(self.expected) - 1 + len(added)
        args = self.rec.wait_signal('ScanFinished', since=mark)
        self.assertEqual(args, ['music', len(added), 0, 1])
        self.rec.wait_change('TrackCount', total, since=mark)
        self.rec.wait_change('ScanProgress', ('', 0, 0), since=mark)
        progress = self.rec.changes('ScanProgress', since=mark)
        seen = [p for p in progress if p[0] == 'music']
        self.assertTrue(seen, progress)
        # (origin, files so far, files the catalog had before): counts only grow, known is fixed.
        self.assertEqual({p[2] for p in seen}, {len(self.expected)})
        self.assertEqual([p[1] for p in seen], sorted(p[1] for p in seen))
        if FAILPOINTS_BUILT:
            self.call(d, 'DisarmFailpoint', 's', 'scan-file')
            # 6 files at 150 ms, one batch each: a count between 0 and the end was announced.
            self.assertTrue(any(0 < p[1] < len(self.expected) - 1 + len(added) for p in seen), seen)
        self.assertEqual(int(d.bus_get('TrackCount')), total)
        self.assertFalse(os.path.exists(d.path(victim)))
        for v in added:
            self.assertTrue(os.path.exists(d.path(v)), v)

    # -- reload

    def test_reload(self):
        tmp = self.tempdir()
        conf = os.path.join(tmp, 'musicfsd.conf')
        with open(conf, 'w') as f:
            f.write('[musicfsd]\nlog_level = info\n')
        d = self.started(extra_args=['--config', conf])
        self.call(d, 'Reload')
        d.wait_log(r'Reloaded the configuration: nothing changed')

        with open(conf, 'w') as f:
            f.write('[musicfsd]\nlog_level = info\nthis line is not ini\n')
        msg = self.assertDBusError(ERR + 'InvalidConfig', self.call, d, 'Reload')
        self.assertIn('%s:3' % conf, msg)
        self.assertIn('kept', msg)
        self.assertAlive(d)

        with open(conf, 'w') as f:
            f.write('[musicfsd]\nlog_level = debug\n')
        self.call(d, 'Reload')
        d.wait_log(r'log_level changed: info -> debug')
        os.unlink(conf)
        msg = self.assertDBusError(ERR + 'InvalidConfig', self.call, d, 'Reload')
        self.assertIn(conf, msg)
        self.assertAlive(d)


if __name__ == '__main__':
    harness.main()
