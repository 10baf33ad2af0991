#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The chunk cache's part of org.musicfs.Manager against the built daemon on a real mount and a
private system bus: GetCacheStats and its keys, Pin/Unpin with both spellings of a path and every
kind of bad one, ClearCache, SetPassthrough and the Passthrough property with their
PropertiesChanged, CacheBytes announced while it grows, VerifyCache finding a corrupted chunk and
repair fixing it (the file still reads right), the cache disk filling up turning
passthrough on with State "degraded" and back, and an unprivileged caller refused the changes but
not the reading. (test_polkit.py checks the polkit action of each method.)"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import buslib  # noqa: E402
import busutil  # noqa: E402
from busutil import call, variant, ACCESS_DENIED  # noqa: E402
import harness  # noqa: E402

harness.require_fuse()
import dbus  # noqa: E402
import genlib  # noqa: E402

ERR = buslib.ERR
DBUS_ERR = buslib.DBUS_ERR
STATS_KEYS = {'bytes', 'budget', 'chunks', 'pinned-bytes', 'versions', 'dedup-ratio', 'hits', 'misses', 'evictions',
              'evicted-bytes', 'bad-chunks', 'fills-active', 'fills-queued', 'pins', 'pin-bytes-total',
              'pin-bytes-done', 'disk-percent', 'passthrough', 'passthrough-reason'}
VERIFY_KEYS = {'checked', 'bad', 'missing', 'orphans', 'repaired'}
TRACKS = [({'title': 'One', 'artist': 'Cache Band', 'album': 'Chunks', 'year': 2024, 'track': 1}, 'one'),
          ({'title': 'Two', 'artist': 'Cache Band', 'album': 'Chunks', 'year': 2024, 'track': 2}, 'two'),
          ({'title': 'Three', 'artist': 'Other Band', 'album': 'Elsewhere', 'year': 2023, 'track': 1}, 'three')]


class CacheApiTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.work = tempfile.mkdtemp(prefix='musicfs-cache-api-')
        cls.lib = os.path.join(cls.work, 'music')
        cls.files = {}
        for i, (tags, stem) in enumerate(TRACKS):
            path = os.path.join(cls.lib, stem + '.wav')
            genlib.encode(path, 'wav', tags, duration=4, frequency=330 + 110 * i)
            cls.files[genlib.render(tags, stem, 'wav')] = path

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.work)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.rec = buslib.Recorder(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
        self.addCleanup(self.rec.close)

    def started(self, **kwargs):
        d = self.daemon([self.lib], **kwargs)
        d.wait_tracks(len(self.files))
        return d

    def stats(self, d):
        return buslib.plain(d.bus_call('GetCacheStats'))

    def assertDBusError(self, name, fn, *args, **kwargs):
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            fn(*args, **kwargs)
        self.assertEqual(c.exception.get_dbus_name(), name, str(c.exception))
        msg = c.exception.get_dbus_message()
        if name.startswith(ERR):
            self.assertGreater(len(msg.split()), 2, msg)
            self.assertTrue(msg.endswith('.'), msg)
            self.assertLess(len(msg), 1000, 'the error repeats a huge argument')
        return msg

    def read_all(self, d):
        for v, origin in sorted(self.files.items()):
            self.assertEqual(harness.file_digest(d.path(v)), harness.file_digest(origin), v)

    def wait_cached(self, d):
        last = {}

        def done():
            last.update(self.stats(d))
            return last['fills-active'] == 0 and last['fills-queued'] == 0 and last['bytes'] > 0
        harness.wait_until(done, 60, 0.05, message='the fills to end (last %r)' % last)
        return dict(last)

    # -- GetCacheStats

    def test_stats(self):
        d = self.started(config_text='[cache]\nbudget = 64M\n')
        raw = d.bus_call('GetCacheStats')
        self.assertEqual(set(map(str, raw)), STATS_KEYS)
        types = {str(k): type(v) for k, v in raw.items()}
        for k in STATS_KEYS - {'dedup-ratio', 'disk-percent', 'passthrough', 'passthrough-reason'}:
            self.assertIs(types[k], dbus.UInt64, k)
        self.assertIs(types['dedup-ratio'], dbus.Double)
        self.assertIs(types['disk-percent'], dbus.Double)
        self.assertIs(types['passthrough'], dbus.Boolean)
        self.assertIs(types['passthrough-reason'], dbus.String)
        st = buslib.plain(raw)
        self.assertEqual(st['budget'], 64 << 20)
        self.assertEqual(int(d.bus_get('CacheBudget')), 64 << 20)
        self.assertEqual((st['bytes'], st['chunks'], st['pins'], st['passthrough'], st['passthrough-reason']),
                         (0, 0, 0, False, 'none'))
        self.assertTrue(0.0 <= st['disk-percent'] <= 100.0, st)

        # CacheBytes follows the cache, announced with PropertiesChanged while it grows.
        mark = self.rec.mark()
        self.read_all(d)
        st = self.wait_cached(d)
        self.assertGreater(st['misses'], 0)
        self.assertGreaterEqual(st['versions'], len(self.files))
        self.assertGreaterEqual(st['dedup-ratio'], 1.0)
        self.rec.wait_for(lambda: (self.rec.changes('CacheBytes', since=mark) or [0])[-1] == st['bytes'],
                          message='PropertiesChanged for CacheBytes = %d' % st['bytes'])
        self.assertEqual(int(d.bus_get('CacheBytes')), st['bytes'])
        # Budget never changes at runtime: not announced.
        self.assertEqual(self.rec.changes('CacheBudget', since=mark), [])

    # -- pins

    def test_pin_and_unpin(self):
        d = self.started()
        album = 'Cache Band/Chunks (2024)'
        self.assertTrue(os.path.isdir(d.path(album)))
        d.bus_call('Pin', 's', '/' + album)
        d.bus_call('Pin', 's', '/' + album + '/')          # the same pin, spelled differently
        d.bus_call('Pin', 's', d.path('Other Band'))       # under the mount point
        st = self.stats(d)
        self.assertEqual(st['pins'], 2)
        harness.wait_until(lambda: (lambda s: s['pin-bytes-total'] > 0 and s['pin-bytes-done'] == s['pin-bytes-total'])(
            self.stats(d)), 60, 0.05, message='the pins to be fetched')
        pinned_total = self.stats(d)['pin-bytes-total']
        self.assertEqual(pinned_total, sum(os.path.getsize(p) for p in self.files.values()))

        d.bus_call('ClearCache')
        st = self.stats(d)
        self.assertEqual(st['pin-bytes-done'], pinned_total)
        self.assertGreater(st['bytes'], 0)

        # Errors: each says what was wrong, and nothing changed.
        for path in ('/No Such Artist', '/Cache Band/Chunks (2024)/99 - Nothing.wav', d.path('Nope')):
            self.assertDBusError(ERR + 'NoSuchFile', d.bus_call, 'Pin', 's', path)
        overlong = 'x' * 5000
        for path in ('', 'Cache Band', '/' + overlong, '/Cache Band/../Other Band', '/./Cache Band'):
            self.assertDBusError(ERR + 'InvalidArgs', d.bus_call, 'Pin', 's', path)
            self.assertDBusError(ERR + 'InvalidArgs', d.bus_call, 'Unpin', 's', path)
        self.assertDBusError(DBUS_ERR + 'InvalidArgs', d.bus_call, 'Pin', 'as', ['/x'])
        self.assertDBusError(DBUS_ERR + 'InvalidArgs', d.bus_call, 'VerifyCache', 's', 'yes')
        self.assertDBusError(ERR + 'NoSuchFile', d.bus_call, 'Unpin', 's', '/Cache Band')   # inside a pin
        self.assertEqual(self.stats(d)['pins'], 2)

        d.bus_call('Unpin', 's', d.path(album))
        d.bus_call('Unpin', 's', '/Other Band')
        self.assertEqual(self.stats(d)['pins'], 0)
        self.assertDBusError(ERR + 'NoSuchFile', d.bus_call, 'Unpin', 's', '/Other Band')
        # "/" is the whole library.
        d.bus_call('Pin', 's', '/')
        self.assertEqual(self.stats(d)['pins'], 1)
        d.bus_call('Unpin', 's', '/')
        d.bus_call('ClearCache')
        self.assertEqual(self.stats(d)['bytes'], 0)
        self.assertTrue(d.running())

    def test_pins_follow_new_files(self):
        """A file added under a pinned directory is pinned and fetched once a scan publishes it."""
        lib = os.path.join(self.tempdir(), 'music')
        shutil.copytree(self.lib, lib)
        d = self.daemon([lib])
        d.wait_tracks(len(self.files))
        d.bus_call('Pin', 's', '/Cache Band')

        def fetched():
            s = self.stats(d)
            return s['pin-bytes-total'] > 0 and s['pin-bytes-done'] == s['pin-bytes-total'] and s
        before = harness.wait_until(fetched, 60, 0.05, message='the pin to be fetched')
        tags = {'title': 'Four', 'artist': 'Cache Band', 'album': 'Chunks', 'year': 2024, 'track': 4}
        added = os.path.join(lib, 'four.wav')
        genlib.encode(added, 'wav', tags, duration=2, frequency=880)
        d.bus_call('Rescan', 's', '')
        d.wait_tracks(len(self.files) + 1)
        harness.wait_until(lambda: (lambda s: s['pin-bytes-total'] == before['pin-bytes-total'] + os.path.getsize(added)
                                    and s['pin-bytes-done'] == s['pin-bytes-total'])(self.stats(d)),
                           60, 0.05, message='the new file to be pinned and fetched')
        self.assertEqual(self.stats(d)['pins'], 1)

    def test_pin_over_budget(self):
        d = self.started(config_text='[cache]\nbudget = 1M\n')
        msg = self.assertDBusError(ERR + 'CacheFull', d.bus_call, 'Pin', 's', '/')
        self.assertIn('budget', msg)
        self.assertEqual(self.stats(d)['pins'], 0)

    # -- passthrough

    def test_passthrough(self):
        d = self.started()
        mark = self.rec.mark()
        d.bus_call('SetPassthrough', 'b', True)
        self.assertIs(buslib.plain(d.bus_get('Passthrough')), True)
        self.rec.wait_change('Passthrough', True, since=mark)
        st = self.stats(d)
        self.assertEqual((st['passthrough'], st['passthrough-reason']), (True, 'manual'))
        self.read_all(d)
        self.assertEqual(self.stats(d)['bytes'], 0)
        # Switched by hand: not a failure of anything.
        self.assertEqual(str(d.bus_get('State')), 'ready')
        d.manager().Set(harness.MANAGER_IFACE, 'Passthrough', dbus.Boolean(False), signature='ssv',
                        dbus_interface=buslib.PROPS)
        self.rec.wait_change('Passthrough', False, since=mark)
        self.assertEqual(self.stats(d)['passthrough-reason'], 'none')
        self.assertEqual(self.rec.changes('State', since=mark), [])
        self.assertDBusError(DBUS_ERR + 'InvalidArgs', d.manager().Set, harness.MANAGER_IFACE, 'Passthrough',
                             'on', signature='ssv', dbus_interface=buslib.PROPS)

    def test_disk_failure_degrades_and_recovers(self):
        """The cache's own filesystem fills up (a small tmpfs at <cache_dir>/cache): passthrough
        turns on by itself with reason "full" and State is "degraded"; reads stay right; once space
        is back, the health probe turns it off and State is "ready" again."""
        cache_dir = self.tempdir()
        tmp = self.tmpfs(8 << 20)
        cache_mnt = os.path.join(cache_dir, 'cache')
        os.makedirs(cache_mnt)
        subprocess.run(['mount', '--bind', tmp.path, cache_mnt], check=True)
        self.addCleanup(lambda: subprocess.run(['umount', '-l', cache_mnt]))
        d = self.started(cache_dir=cache_dir, config_text='[cache]\nmaintenance_interval = 1\n')
        mark = self.rec.mark()
        filler = os.path.join(cache_mnt, 'filler')
        with open(filler, 'wb') as f:
            try:
                while True:
                    f.write(b'\0' * (256 << 10))
                    f.flush()
            except OSError:
                pass
        try:
            # Writes fail (or the watermark check sees the disk full) from here on.
            self.read_all(d)
            self.rec.wait_change('Passthrough', True, since=mark, timeout=60)
            self.rec.wait_change('State', 'degraded', since=mark)
            st = self.stats(d)
            self.assertEqual((st['passthrough'], st['passthrough-reason']), (True, 'full'))
            self.assertIn('Passthrough is on', d.log())
            self.read_all(d)
        finally:
            os.unlink(filler)
        # The health probe sees the space back.
        self.rec.wait_change('Passthrough', False, since=mark, timeout=60)
        self.rec.wait_change('State', 'ready', since=mark)
        self.assertEqual(self.stats(d)['passthrough-reason'], 'none')
        self.read_all(d)

    # -- restarts

    def test_restarts_keep_the_cache(self):
        """A clean stop leaves <cache_dir>/cache.clean (consumed at the next start); a killed daemon
        leaves none, and the next start still finds what was cached and pinned. A changed [cache]
        section is logged as needing a restart by a reload."""
        d = self.started(config_text='[cache]\nbudget = 64M\n')
        marker = os.path.join(d.cache_dir, 'cache.clean')
        d.bus_call('Pin', 's', '/Other Band')
        self.read_all(d)
        cached = self.wait_cached(d)
        self.assertFalse(os.path.exists(marker))
        self.assertDaemonStops(d)
        self.assertTrue(os.path.exists(marker))

        d.start()
        d.wait_tracks(len(self.files))
        self.assertFalse(os.path.exists(marker))
        st = self.stats(d)
        self.assertEqual((st['bytes'], st['pins']), (cached['bytes'], 1))

        d.kill9()
        self.assertFalse(os.path.exists(marker))
        d.start()
        d.wait_tracks(len(self.files))
        st = self.stats(d)
        self.assertEqual((st['bytes'], st['pins']), (cached['bytes'], 1))
        self.assertEqual(buslib.plain(d.bus_call('VerifyCache', 'b', False))['bad'], 0)

        with open(d.config_path, 'w', encoding='utf-8') as f:
            f.write('[cache]\nbudget = 32M\nreadahead = 2\n')
        d.bus_call('Reload')
        d.wait_log(r'\[cache\] changed .*needs a restart')
        self.assertEqual(int(d.bus_get('CacheBudget')), 64 << 20)
        self.assertDaemonStops(d)

    # -- verification

    def test_verify_and_repair(self):
        d = self.started()
        res = buslib.plain(d.bus_call('VerifyCache', 'b', False))
        self.assertEqual(set(res), VERIFY_KEYS)
        self.assertEqual(res, dict.fromkeys(VERIFY_KEYS, 0))

        self.read_all(d)
        st = self.wait_cached(d)
        res = buslib.plain(d.bus_call('VerifyCache', 'b', False, timeout=300))
        self.assertEqual(res['checked'], st['chunks'])
        self.assertEqual((res['bad'], res['missing'], res['orphans'], res['repaired']), (0, 0, 0, 0))

        # One chunk file damaged on disk (same size, other bytes), one removed, and one good chunk
        # file the index does not know.
        chunks_dir = os.path.join(d.cache_dir, 'cache', 'chunks')
        names = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(chunks_dir) for f in fs
                       if not f.startswith('.'))
        self.assertGreaterEqual(len(names), 2)
        with open(names[0], 'r+b') as f:
            data = f.read()
            f.seek(0)
            f.write(bytes(b ^ 0xff for b in data[:64]))
        os.unlink(names[1])
        content = b'a chunk no file version names'
        name = hashlib.sha256(content).hexdigest()
        orphan = os.path.join(chunks_dir, name[:2], name)
        os.makedirs(os.path.dirname(orphan), exist_ok=True)
        with open(orphan, 'wb') as f:
            f.write(content)

        res = buslib.plain(d.bus_call('VerifyCache', 'b', False, timeout=300))
        self.assertEqual((res['bad'], res['missing'], res['orphans'], res['repaired']), (1, 1, 1, 0), res)
        res = buslib.plain(d.bus_call('VerifyCache', 'b', True, timeout=300))
        self.assertGreaterEqual(res['repaired'], 3, res)
        res = buslib.plain(d.bus_call('VerifyCache', 'b', False, timeout=300))
        self.assertEqual((res['bad'], res['missing'], res['orphans']), (0, 0, 0), res)
        # Whatever was dropped comes back from the origin: the files read right.
        d.bus_call('Unmount', 'b', False)
        d.bus_call('Mount', 'sa{sv}', '', dbus.Dictionary({}, signature='sv'))
        harness.wait_until(d.is_mounted, 10)
        self.read_all(d)
        self.assertTrue(d.running())


class CacheApiUnprivilegedTest(harness.MusicfsTestCase):
    """uid 65534 on a bus that admits everyone, no polkit: reading is fine, changing is not, and the
    refused calls change nothing."""

    @classmethod
    def setUpClass(cls):
        busutil.require_setpriv()
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-cache-nobody-')
        conf = busutil.write_bus_conf(cls.workdir)
        cls.system_bus_pid, cls.address = busutil.start_bus(conf)
        os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = cls.address
        cls.system_bus = dbus.bus.BusConnection(cls.address)
        cls.lib = os.path.join(cls.workdir, 'music')
        tags, stem = TRACKS[0]
        genlib.encode(os.path.join(cls.lib, stem + '.flac'), 'flac', tags, duration=0.5)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.workdir)
        super().tearDownClass()

    def test_nobody(self):
        d = self.daemon([self.lib], bus_address=self.address)
        d.wait_tracks(1)
        changes = [call('SetPassthrough', '(b)', (True,)), call('Pin', '(s)', ('/Cache Band',)),
                   call('Unpin', '(s)', ('/Cache Band',)), call('ClearCache'), call('VerifyCache', '(b)', (True,)),
                   call('Set', '(ssv)', (harness.MANAGER_IFACE, 'Passthrough', variant('b', True)),
                        interface='org.freedesktop.DBus.Properties')]
        reads = [call('GetCacheStats'), call('VerifyCache', '(b)', (False,)),
                 busutil.get_property('Passthrough'), busutil.get_property('CacheBytes'),
                 busutil.get_property('CacheBudget')]
        # Bad arguments are refused as such, before any authorization.
        bad = [call('Pin', '(s)', ('relative',)), call('Unpin', '(s)', ('',))]
        results = busutil.as_nobody(self.address, *(changes + reads + bad))
        for c, res in zip(changes, results[:len(changes)]):
            self.assertEqual(res.get('error'), ACCESS_DENIED, (c['method'], res))
        for c, res in zip(reads, results[len(changes):len(changes) + len(reads)]):
            self.assertIn('ok', res, (c, res))
        stats = results[len(changes)]['ok'][0]
        self.assertEqual((stats['pins'], stats['passthrough']), (0, False))
        self.assertEqual(set(results[len(changes) + 1]['ok'][0]), VERIFY_KEYS)
        for res in results[len(changes) + len(reads):]:
            self.assertEqual(res.get('error'), ERR + 'InvalidArgs', res)
        self.assertIs(bool(d.bus_get('Passthrough')), False)


if __name__ == '__main__':
    harness.main()
