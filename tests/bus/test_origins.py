#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The origins over D-Bus, against the built daemon on a real mount and a private system bus: the
org.musicfs.Origin objects and the ObjectManager (GetManagedObjects, InterfacesAdded/Removed),
AddOrigin and RemoveOrigin at runtime with what they do to the tree, the catalog, scans and readers,
and health: CheckOrigin, GetOriginHealth, OriginHealthChanged, the health properties, the daemon's
State, and a check that hangs past its timeout."""

import os
import signal
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import buslib  # noqa: E402
import harness  # noqa: E402

harness.require_fuse()
import dbus  # noqa: E402
import genlib  # noqa: E402

ERR = buslib.ERR
DBUS_ERR = buslib.DBUS_ERR
FAILPOINTS_BUILT = os.environ.get('MUSICFS_FAILPOINTS_BUILT', '1') == '1'
ORIGIN_PROPS = {'Name', 'Kind', 'Url', 'Priority', 'Health', 'ConsecutiveFailures', 'LastLatencyUSec',
                'LastCheckUSec', 'LastError', 'TrackCount'}


def make_library(directory, count, name, seed):
    """count tracks of one album; returns {virtual path: path relative to directory}."""
    tracks = genlib.gen_bulk(directory, count, seed=seed, one_album=(name, name + ' Album'), prefix=name.lower(),
                             write_expected=False)
    return genlib.expected_paths(tracks)


def all_threads_stopped(pid):
    states = []
    for task in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/stat' % (pid, task)) as f:
                states.append(f.read().rsplit(')', 1)[1].split()[0])
        except FileNotFoundError:
            continue
    return states and all(s in ('T', 't') for s in states)


class OriginsTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.work = tempfile.mkdtemp(prefix='musicfs-origins-')
        cls.music_src = os.path.join(cls.work, 'music')
        cls.music_tracks = make_library(cls.music_src, 4, 'Alpha', 1)
        cls.extra_src = os.path.join(cls.work, 'extra')
        cls.extra_tracks = make_library(cls.extra_src, 3, 'Beta', 2)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.work)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.rec = buslib.Recorder(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
        self.addCleanup(self.rec.close)
        # Each test gets origins it may rename and change.
        self.tmp = self.tempdir()
        self.music = self.copy(self.music_src, 'music')
        self.extra = self.copy(self.extra_src, 'extra dir')     # a blank, for percent escapes

    def copy(self, src, name):
        import shutil
        dst = os.path.join(self.tmp, name)
        shutil.copytree(src, dst)
        return dst

    def started(self, origins=None, tracks=None, **kwargs):
        d = self.daemon(origins or [self.music], **kwargs)
        d.wait_tracks(len(self.music_tracks) if tracks is None else tracks)
        harness.wait_until(lambda: buslib.plain(d.bus_get('ScanProgress'))[0] == '', 30,
                           message='ScanProgress to go idle')
        return d

    def assertDBusError(self, name, fn, *args, **kwargs):
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            fn(*args, **kwargs)
        self.assertEqual(c.exception.get_dbus_name(), name, str(c.exception))
        msg = c.exception.get_dbus_message()
        if name.startswith(ERR):
            self.assertGreater(len(msg.split()), 2, msg)
            self.assertTrue(msg.endswith('.'), msg)
        return msg

    def call(self, d, method, signature='', *args):
        return buslib.plain(d.bus_call(method, signature, *args))

    def origin(self, d, name):
        return buslib.plain(d.bus_get_all(iface=buslib.ORIGIN_IFACE, path=buslib.origin_path(name)))

    def managed(self, d):
        obj = d.bus.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False)
        return buslib.plain(obj.GetManagedObjects(dbus_interface=buslib.OBJECT_MANAGER, timeout=10))

    def tree_files(self, d):
        return {p for p, st in harness.walk_tree(d.mountpoint).items() if not os.path.isdir(d.path(p))}

    def add(self, d, name, url, priority=5, options=None):
        return self.call(d, 'AddOrigin', 'ssua{sv}', name, url, priority, options or {})

    # -- objects

    def test_origin_objects(self):
        d = self.started()
        path = buslib.origin_path('music')
        self.assertEqual(self.call(d, 'GetOriginHealth'), [('music', 'healthy', 0, 0, 0, '')])
        props = self.origin(d, 'music')
        self.assertEqual(set(props), ORIGIN_PROPS)
        self.assertEqual(props, {'Name': 'music', 'Kind': 'local', 'Url': self.music, 'Priority': 10,
                                 'Health': 'healthy', 'ConsecutiveFailures': 0, 'LastLatencyUSec': 0,
                                 'LastCheckUSec': 0, 'LastError': '', 'TrackCount': len(self.music_tracks)})
        raw = d.bus_get_all(iface=buslib.ORIGIN_IFACE, path=path)
        for name, cls in (('Priority', dbus.UInt32), ('ConsecutiveFailures', dbus.UInt32),
                          ('LastLatencyUSec', dbus.UInt64), ('TrackCount', dbus.UInt64)):
            self.assertIsInstance(raw[name], cls, name)
        objects = self.managed(d)
        self.assertEqual(set(objects), {path})
        self.assertEqual(objects[path][buslib.ORIGIN_IFACE], props)
        # Read-only; other paths under the prefix are not objects.
        obj = d.bus.get_object(harness.BUS_NAME, path, introspect=False)
        self.assertDBusError(DBUS_ERR + 'PropertyReadOnly', obj.Set, buslib.ORIGIN_IFACE, 'Health', 'unhealthy',
                             signature='ssv', dbus_interface=buslib.PROPS)
        for missing in (buslib.origin_path('nope'), buslib.ORIGIN_PREFIX + '_zz'):
            with self.assertRaises(dbus.exceptions.DBusException) as c:
                d.bus_get('Name', iface=buslib.ORIGIN_IFACE, path=missing)
            self.assertIn(c.exception.get_dbus_name(), (DBUS_ERR + 'UnknownObject', DBUS_ERR + 'UnknownMethod'))
        # Introspecting the prefix lists the origin as a child node.
        intro = str(d.bus.get_object(harness.BUS_NAME, '/org/musicfs/Manager/origin', introspect=False)
                    .Introspect(dbus_interface='org.freedesktop.DBus.Introspectable'))
        self.assertIn('<node name="music"/>', intro)

    # -- adding and removing at runtime

    def test_add_and_remove(self):
        d = self.started()
        first = buslib.origin_path('music')
        mark = self.rec.mark()
        url = 'file://' + urllib.parse.quote(self.extra)
        self.assertIn('%20', url)
        path = self.add(d, 'extra-2', url, 5)
        self.assertEqual(path, buslib.origin_path('extra-2'))
        self.assertEqual(path, buslib.ORIGIN_PREFIX + 'extra_2d2')
        total = len(self.music_tracks) + len(self.extra_tracks)

        # Announced: the object with its properties, the new list (priority 5 before 10), the scan.
        args = self.rec.wait_signal('InterfacesAdded', since=mark)
        self.assertEqual(args[0], path)
        self.assertEqual(args[1][buslib.ORIGIN_IFACE]['Name'], 'extra-2')
        self.assertEqual(args[1][buslib.ORIGIN_IFACE]['Url'], self.extra)
        self.rec.wait_change('Origins', [path, first], since=mark)
        self.rec.wait_signal('ScanFinished', ['extra-2', len(self.extra_tracks), 0, 0], since=mark)
        self.rec.wait_change('TrackCount', total, since=mark)
        self.rec.wait_change('TrackCount', len(self.extra_tracks), path=path, interface=buslib.ORIGIN_IFACE,
                             since=mark)
        props = self.origin(d, 'extra-2')
        self.assertEqual((props['Priority'], props['Kind'], props['TrackCount']), (5, 'local', len(self.extra_tracks)))
        self.assertEqual(self.tree_files(d), set(self.music_tracks) | set(self.extra_tracks))
        self.assertEqual(set(self.managed(d)), {first, path})
        self.assertEqual([h[0] for h in self.call(d, 'GetOriginHealth')], ['extra-2', 'music'])

        # Taken names, in either URL form.
        for u in (url, self.extra, self.music):
            self.assertDBusError(ERR + 'OriginExists', self.add, d, 'extra-2', u)
        self.assertDBusError(ERR + 'OriginExists', self.add, d, 'music', self.extra)

        # Removal: at once out of the tree and the catalog, announced, and the object is gone.
        mark = self.rec.mark()
        self.assertIsNone(self.call(d, 'RemoveOrigin', 's', 'extra-2'))
        self.assertEqual(self.tree_files(d), set(self.music_tracks))
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.music_tracks))
        args = self.rec.wait_signal('InterfacesRemoved', since=mark)
        self.assertEqual(args[0], path)
        self.assertIn(buslib.ORIGIN_IFACE, args[1])
        self.rec.wait_change('Origins', [first], since=mark)
        self.rec.wait_change('TrackCount', len(self.music_tracks), since=mark)
        self.assertEqual(set(self.managed(d)), {first})
        with self.assertRaises(dbus.exceptions.DBusException):
            d.bus_get('Name', iface=buslib.ORIGIN_IFACE, path=path)
        self.assertDBusError(ERR + 'NoSuchOrigin', self.call, d, 'RemoveOrigin', 's', 'extra-2')
        self.assertDBusError(ERR + 'NoSuchOrigin', self.call, d, 'CheckOrigin', 's', 'extra-2')
        self.assertDBusError(ERR + 'NoSuchOrigin', self.call, d, 'Rescan', 's', 'extra-2')

        # The same name again, now with the plain path form: scanned afresh.
        mark = self.rec.mark()
        self.assertEqual(self.add(d, 'extra-2', self.extra, 20), path)
        self.rec.wait_signal('ScanFinished', ['extra-2', len(self.extra_tracks), 0, 0], since=mark)
        self.rec.wait_change('Origins', [first, path], since=mark)
        d.wait_tracks(total)
        # A restart starts from the configuration: the runtime origin is gone, its rows ignored.
        d.restart()
        d.wait_tracks(len(self.music_tracks))
        self.assertEqual(self.tree_files(d), set(self.music_tracks))
        self.assertEqual(set(self.managed(d)), {first})

    def test_add_errors(self):
        d = self.started()
        afile = os.path.join(self.tmp, 'a-file')
        with open(afile, 'w') as f:
            f.write('x')
        cases = [
            ('', self.extra, 1, {}, 'InvalidArgs', 'empty'),
            ('a b', self.extra, 1, {}, 'InvalidArgs', 'not valid'),
            ('x' * 65, self.extra, 1, {}, 'InvalidArgs', 'not valid'),
            ('caf\u00e9', self.extra, 1, {}, 'InvalidArgs', 'not valid'),
            ('../etc', self.extra, 1, {}, 'InvalidArgs', 'not valid'),
            ('ok', '', 1, {}, 'InvalidArgs', 'empty'),
            ('ok', 'relative/dir', 1, {}, 'InvalidArgs', 'Unsupported'),
            ('ok', 'http://example.com/music', 1, {}, 'InvalidArgs', 'Unsupported'),
            ('ok', 'http://user:hunter2@example.com/music?token=hunter2', 1, {}, 'InvalidArgs', 'Unsupported'),
            ('ok', 'file://otherhost/music', 1, {}, 'InvalidArgs', 'another host'),
            ('ok', 'file:///tmp/%zz', 1, {}, 'InvalidArgs', 'percent'),
            ('ok', 'file:///tmp/%00x', 1, {}, 'InvalidArgs', 'percent'),
            ('ok', 'file:///tmp/x?y=1', 1, {}, 'InvalidArgs', 'query'),
            ('ok', os.path.join(self.tmp, 'missing'), 1, {}, 'InvalidArgs', 'does not exist'),
            ('ok', afile, 1, {}, 'InvalidArgs', 'not a directory'),
            ('ok', d.mountpoint, 1, {}, 'InvalidArgs', 'overlaps'),
            ('ok', os.path.dirname(d.mountpoint), 1, {}, 'InvalidArgs', 'overlaps'),
            ('ok', d.path('Alpha'), 1, {}, 'InvalidArgs', 'overlaps'),
            ('ok', self.extra, 1000001, {}, 'InvalidArgs', 'out of range'),
            ('ok', self.extra, 0xffffffff, {}, 'InvalidArgs', 'out of range'),
            ('ok', self.extra, 1, {'recursive': True}, 'InvalidArgs', 'Unknown option'),
            ('ok', self.extra, 1, {'': dbus.String('', variant_level=1)}, 'InvalidArgs', 'Unknown option'),
            # S3 origins (issue #5) take no credentials from a URL; test_s3_origin.py adds real ones.
            ('ok', 's3://AKIA:hunter2@bucket/prefix?X-Amz-Signature=hunter2', 1, {}, 'InvalidArgs', 'no user name'),
            ('ok', 'S3://bucket?X-Amz-Signature=hunter2', 1, {}, 'InvalidArgs', 'credentials never go in a URL'),
            # SFTP origins log in with keys only; tests/origins/test_sftp_daemon.py adds real ones.
            ('ok', 'sftp://me:hunter2@nas/music', 1, {}, 'InvalidArgs', 'password'),
            ('ok', 'sftp://nas', 1, {}, 'InvalidArgs', 'no path'),
        ]
        for name, url, priority, options, err, word in cases:
            msg = self.assertDBusError(ERR + err, self.add, d, name, url, priority, options)
            self.assertIn(word, msg, (name, url))
            self.assertNotIn('hunter2', msg, 'a secret in an error message')
        self.assertEqual(self.call(d, 'GetOriginHealth'), [('music', 'healthy', 0, 0, 0, '')])
        self.assertEqual(set(self.managed(d)), {buslib.origin_path('music')})
        # file://localhost/ is this host; priority 0 and 1000000 are in range.
        self.add(d, 'local-host', 'file://localhost' + urllib.parse.quote(self.extra), 0)
        empty = os.path.join(self.tmp, 'empty')
        os.mkdir(empty)
        self.add(d, 'far', empty, 1000000)
        self.assertEqual([h[0] for h in self.call(d, 'GetOriginHealth')], ['local-host', 'music', 'far'])
        for bad in ('', 'a/b', 'x' * 100):
            self.assertDBusError(ERR + 'InvalidArgs', self.call, d, 'RemoveOrigin', 's', bad)
        self.assertTrue(d.running())

    def test_remove_keeps_open_readers(self):
        big = os.path.join(self.music, 'big.flac')
        genlib.encode(big, 'flac', {'title': 'Long One', 'artist': 'Alpha', 'album': 'Alpha Album'}, duration=20)
        with open(big, 'rb') as f:
            want = f.read()
        d = self.started(tracks=len(self.music_tracks) + 1)
        virtual = next(p for p in self.tree_files(d) if 'Long One' in p)
        fd = os.open(d.path(virtual), os.O_RDONLY)
        self.addCleanup(os.close, fd)
        got = os.pread(fd, 4096, 0)
        self.assertEqual(got, want[:4096])

        # The origin goes while the file is open: the reader keeps the origin alive and reads on.
        self.call(d, 'RemoveOrigin', 's', 'music')
        self.assertEqual(self.tree_files(d), set())
        self.assertEqual(int(d.bus_get('TrackCount')), 0)
        self.assertEqual(buslib.plain(d.bus_get('Origins')), [])
        chunks = [got]
        offset = len(got)
        while offset < len(want):
            # Past what the kernel read ahead: these reads reach the daemon and the removed origin.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            b = os.pread(fd, 65536, offset)
            self.assertTrue(b, 'EOF at %d of %d' % (offset, len(want)))
            chunks.append(b)
            offset += len(b)
        self.assertEqual(b''.join(chunks), want)
        # State with no origins at all: nothing is down, so ready.
        self.assertEqual(str(d.bus_get('State')), 'ready')
        self.assertDaemonStops(d)

    def test_remove_during_scans(self):
        if not FAILPOINTS_BUILT:
            self.skipTest('slowing scans down needs failpoints')
        # watch = off: the files added to music below are for the Rescan to find, not the live sync
        # (issue #6), which would scan them and announce its own ScanFinished.
        d = self.daemon([], config_text='[musicfsd]\nscan_batch = 1\n[origin "music"]\npath = %s\nwatch = off\n'
                        % self.music)
        d.wait_tracks(len(self.music_tracks))
        harness.wait_until(lambda: buslib.plain(d.bus_get('ScanProgress'))[0] == '', 30,
                           message='ScanProgress to go idle')
        self.call(d, 'ArmFailpoint', 'ss', 'scan-file', 'sleep(300)')

        # Removed while it is being scanned: the scan stops, no ScanFinished, its files are gone.
        mark = self.rec.mark()
        self.add(d, 'extra', self.extra, 50)
        self.rec.wait_for(lambda: any(p[0] == 'extra' for p in self.rec.changes('ScanProgress', since=mark)),
                          message='the scan of extra to start')
        self.call(d, 'RemoveOrigin', 's', 'extra')
        self.rec.wait_change('ScanProgress', ('', 0, 0), since=mark)
        self.assertEqual(self.rec.select('ScanFinished', since=mark), [])
        self.assertEqual(self.tree_files(d), set(self.music_tracks))
        d.wait_log(r'Scan of origin extra cancelled')

        # Removed while another one is scanned: answered between two files of that scan, which goes on.
        more = os.path.join(self.music, 'more')
        added = make_library(more, 5, 'Gamma', 3)
        other = self.copy(self.extra_src, 'other')
        self.add(d, 'other', other, 60)
        d.wait_tracks(len(self.music_tracks) + len(self.extra_tracks))
        mark = self.rec.mark()
        self.call(d, 'Rescan', 's', 'music')
        self.rec.wait_for(lambda: any(p[0] == 'music' for p in self.rec.changes('ScanProgress', since=mark)),
                          message='the scan of music to start')
        self.call(d, 'RemoveOrigin', 's', 'other')
        self.assertEqual(self.rec.select('ScanFinished', since=mark), [], 'the removal waited for the scan')
        self.assertFalse(self.tree_files(d) & set(self.extra_tracks))
        self.rec.wait_signal('ScanFinished', ['music', len(added), 0, 0], since=mark)
        self.call(d, 'DisarmFailpoint', 's', 'scan-file')
        d.wait_tracks(len(self.music_tracks) + len(added))

    # -- health

    def test_health(self):
        d = self.started([self.music, self.extra], tracks=len(self.music_tracks) + len(self.extra_tracks))
        music = buslib.origin_path('music')
        extra_name = [h[0] for h in self.call(d, 'GetOriginHealth') if h[0] != 'music'][0]
        before = time.time()
        mark = self.rec.mark()
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'music'), 'healthy')
        props = self.origin(d, 'music')
        self.assertEqual((props['Health'], props['ConsecutiveFailures'], props['LastError']), ('healthy', 0, ''))
        self.assertGreater(props['LastLatencyUSec'], 0)
        self.assertLess(props['LastLatencyUSec'], 5000000)
        self.assertGreaterEqual(props['LastCheckUSec'], int(before * 1e6) - 1000000)
        self.assertLessEqual(props['LastCheckUSec'], int(time.time() * 1e6) + 1000000)
        self.rec.wait_change('LastCheckUSec', props['LastCheckUSec'], path=music, interface=buslib.ORIGIN_IFACE,
                             since=mark)
        self.assertEqual(self.rec.select('OriginHealthChanged', since=mark), [])

        # Its directory renamed away: one failed check makes a local origin unhealthy (D11).
        os.rename(self.music, self.music + '.away')
        self.addCleanup(lambda: os.path.exists(self.music + '.away') and os.rename(self.music + '.away', self.music))
        mark = self.rec.mark()
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'music'), 'unhealthy')
        self.rec.wait_signal('OriginHealthChanged', ['music', 'healthy', 'unhealthy'], since=mark)
        self.rec.wait_change('Health', 'unhealthy', path=music, interface=buslib.ORIGIN_IFACE, since=mark)
        self.rec.wait_change('ConsecutiveFailures', 1, path=music, interface=buslib.ORIGIN_IFACE, since=mark)
        props = self.origin(d, 'music')
        self.assertIn('gone', props['LastError'])
        self.assertIn(self.music, props['LastError'])
        self.rec.wait_change('LastError', props['LastError'], path=music, interface=buslib.ORIGIN_IFACE, since=mark)
        # One of two origins down: degraded.
        self.rec.wait_change('State', 'degraded', since=mark)
        health = {h[0]: h for h in self.call(d, 'GetOriginHealth')}
        self.assertEqual(health['music'][1:3], ('unhealthy', 1))
        self.assertEqual(health['music'][4], props['LastCheckUSec'])
        self.assertEqual(health['music'][5], props['LastError'])
        self.assertEqual(health[extra_name][1:3], ('healthy', 0))
        # The files it served stay listed (the catalog is not the origin): reads fail, nothing crashes.
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.music_tracks) + len(self.extra_tracks))

        # Failing again: counted, no new transition.
        mark = self.rec.mark()
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'music'), 'unhealthy')
        self.rec.wait_change('ConsecutiveFailures', 2, path=music, interface=buslib.ORIGIN_IFACE, since=mark)
        self.assertEqual(self.rec.select('OriginHealthChanged', since=mark), [])

        # Every origin down: offline.
        os.rename(self.extra, self.extra + '.away')
        self.addCleanup(lambda: os.path.exists(self.extra + '.away') and os.rename(self.extra + '.away', self.extra))
        self.assertEqual(self.call(d, 'CheckOrigin', 's', extra_name), 'unhealthy')
        self.rec.wait_change('State', 'offline', since=mark)

        # Back: one success heals.
        os.rename(self.music + '.away', self.music)
        os.rename(self.extra + '.away', self.extra)
        mark = self.rec.mark()
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'music'), 'healthy')
        self.rec.wait_signal('OriginHealthChanged', ['music', 'unhealthy', 'healthy'], since=mark)
        self.rec.wait_change('State', 'degraded', since=mark)
        self.assertEqual(self.call(d, 'CheckOrigin', 's', extra_name), 'healthy')
        self.rec.wait_change('State', 'ready', since=mark)
        props = self.origin(d, 'music')
        self.assertEqual((props['Health'], props['ConsecutiveFailures'], props['LastError']), ('healthy', 0, ''))
        self.rec.wait_change('LastError', '', path=music, interface=buslib.ORIGIN_IFACE, since=mark)

        # Another directory at the same path is not the origin that was opened.
        os.rename(self.music, self.music + '.old')
        os.mkdir(self.music)
        try:
            self.assertEqual(self.call(d, 'CheckOrigin', 's', 'music'), 'unhealthy')
            self.assertIn('moved or replaced', self.origin(d, 'music')['LastError'])
        finally:
            os.rmdir(self.music)
            os.rename(self.music + '.old', self.music)
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'music'), 'healthy')

        for name, err in (('nope', 'NoSuchOrigin'), ('', 'InvalidArgs'), ('a b', 'InvalidArgs')):
            self.assertDBusError(ERR + err, self.call, d, 'CheckOrigin', 's', name)
        self.assertDaemonStops(d)

    def test_concurrent_checks(self):
        d = self.started()
        calls = [self.rec.call_async('CheckOrigin', 's', 'music') for _ in range(20)]
        calls += [self.rec.call_async('CheckOrigin', 's', 'nope') for _ in range(3)]
        self.rec.wait_for(lambda: all('reply' in c or 'error' in c for c in calls), 30, 'every CheckOrigin answered')
        self.assertEqual([c.get('reply') for c in calls[:20]], [['healthy']] * 20)
        self.assertEqual([c['error'].get_dbus_name() for c in calls[20:]], [ERR + 'NoSuchOrigin'] * 3)
        self.assertGreater(self.origin(d, 'music')['LastCheckUSec'], 0)

    def test_check_that_hangs(self):
        # An origin inside another FUSE filesystem whose daemon is stopped, one that caches nothing
        # (the kernel would otherwise answer from its caches): the check's stat() never returns.
        pid, address = self.start_dbus()
        self.addCleanup(self.stop_dbus, pid)
        stuck = self.daemon([self.extra], bus_address=address,
                            config_text='[musicfsd]\nentry_timeout = 0\nattr_timeout = 0\n')
        stuck.wait_tracks(len(self.extra_tracks))
        d = self.started()
        inside = stuck.path(sorted(os.listdir(stuck.mountpoint))[0])
        mark = self.rec.mark()
        self.add(d, 'stuck', inside, 1)
        self.rec.wait_signal('ScanFinished', ['stuck', len(self.extra_tracks), 0, 0], since=mark)

        os.kill(stuck.pid, signal.SIGSTOP)
        self.addCleanup(lambda: stuck.running() and os.kill(stuck.pid, signal.SIGCONT))
        # kill() does not wait for the stop: every thread (the FUSE workers too) must be in it.
        harness.wait_until(lambda: all_threads_stopped(stuck.pid), 10, message='musicfsd %d to stop' % stuck.pid)
        mark = self.rec.mark()
        t0 = time.monotonic()
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'stuck'), 'unhealthy')
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, 4.0)
        self.assertLess(elapsed, 15.0)
        props = self.origin(d, 'stuck')
        self.assertEqual(props['LastLatencyUSec'], 5000000)
        self.assertIn('did not finish within 5 s', props['LastError'])
        self.rec.wait_signal('OriginHealthChanged', ['stuck', 'healthy', 'unhealthy'], since=mark)
        # While the check still hangs, asking again answers at once from the record.
        t0 = time.monotonic()
        self.assertEqual(self.call(d, 'CheckOrigin', 's', 'stuck'), 'unhealthy')
        self.assertLess(time.monotonic() - t0, 4.0)
        # The loop was never blocked: the bus and the mount answer.
        self.assertEqual(str(d.bus_get('State')), 'degraded')
        self.assertTrue(self.tree_files(d) >= set(self.music_tracks))

        os.kill(stuck.pid, signal.SIGCONT)
        # The hung check ends; what it found late does not count, the next check does.
        def healthy_again():
            return self.call(d, 'CheckOrigin', 's', 'stuck') == 'healthy'
        harness.wait_until(healthy_again, 30, 0.1, message='stuck to be healthy again')
        self.assertEqual(str(d.bus_get('State')), 'ready')
        self.call(d, 'RemoveOrigin', 's', 'stuck')
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
