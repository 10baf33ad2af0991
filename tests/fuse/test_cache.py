#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The chunk cache through a real mount (D7, D8, D9, D11): a library read once plays entirely from
the cache with its origin gone; a pinned album is fetched completely and survives ClearCache;
passthrough reads are right and store nothing; the cache never holds more than 1.05x its budget
while several times the budget streams through it.

Between the first and the second read the library is unmounted and mounted again over the bus, so
the second read cannot come from the kernel's page cache: it goes through musicfsd."""

import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import dbus  # noqa: E402
import genlib  # noqa: E402

BUDGET = 4 << 20
STREAM_TRACKS = 6       # x about 3.5 MiB of WAV each: five times the budget


def plain(v):
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, (dbus.String, dbus.ObjectPath)):
        return str(v)
    if isinstance(v, dbus.Double):
        return float(v)
    if isinstance(v, (dbus.UInt64, dbus.UInt32, dbus.Int64, dbus.Int32, dbus.Byte)):
        return int(v)
    return v


class CacheTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sample = harness.sample_library()
        cls.expected = genlib.load_expected(cls.sample)
        cls.digests = {v: harness.file_digest(os.path.join(cls.sample, r)) for v, r in cls.expected.items()}

    def setUp(self):
        super().setUp()
        # A copy of our own: the tests take it away.
        self.work = self.tempdir()
        self.lib = os.path.join(self.work, 'lib')
        shutil.copytree(self.sample, self.lib)

    def stats(self, d):
        return {str(k): plain(v) for k, v in d.bus_call('GetCacheStats').items()}

    def wait_fills_done(self, d, timeout=60.0):
        """Until no file is being fetched into the cache and something is there; the stats then."""
        last = {}

        def done():
            last.update(self.stats(d))
            return last['fills-active'] == 0 and last['fills-queued'] == 0 and last['bytes'] > 0
        harness.wait_until(done, timeout, 0.05, message='cache fills to end (last: %r)' % last)
        return dict(last)

    def remount(self, d):
        """A new FUSE connection: the kernel forgets the pages it cached."""
        d.bus_call('Unmount', 'b', False)
        d.wait_unmounted()
        d.bus_call('Mount', 'sa{sv}', '', dbus.Dictionary({}, signature='sv'))
        harness.wait_until(d.is_mounted, 10, message='the mount to come back')

    def read_all(self, d, vpaths=None):
        for v in sorted(vpaths or self.expected):
            self.assertEqual(harness.file_digest(d.path(v)), self.digests[v], v)

    def take_origin_away(self):
        """Renamed away, and its files deleted: the local origin holds its directory open (O_PATH),
        so a rename alone would leave the daemon reading through the old directory."""
        away = self.lib + '.away'
        os.rename(self.lib, away)
        shutil.rmtree(away)

    # -- a library read once plays entirely from the cache with its origin gone

    def test_plays_from_cache_without_origin(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.expected))
        before = self.stats(d)
        self.assertEqual(before['bytes'], 0)
        self.assertEqual(before['passthrough'], False)
        self.assertEqual(before['passthrough-reason'], 'none')

        self.read_all(d)
        filled = self.wait_fills_done(d)
        self.assertGreater(filled['misses'], 0)
        self.assertGreaterEqual(filled['versions'], len(self.expected))
        self.assertGreater(filled['chunks'], 0)
        # Each chunk is counted once: at most the bytes of the library.
        self.assertLessEqual(filled['bytes'], sum(os.path.getsize(os.path.join(self.lib, r))
                                                  for r in self.expected.values()))
        self.assertEqual(int(d.bus_get('CacheBytes')), self.stats(d)['bytes'])

        self.take_origin_away()
        self.remount(d)
        self.read_all(d)
        after = self.stats(d)
        self.assertGreater(after['hits'], filled['hits'])
        self.assertEqual(after['bad-chunks'], 0)

    # -- pins

    def test_pin_fetches_and_survives_clear(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.expected))
        albums = sorted({os.path.dirname(v) for v in self.expected if os.path.dirname(v)})
        album = albums[0]
        in_album = [v for v in self.expected if os.path.dirname(v) == album]
        others = [v for v in self.expected if os.path.dirname(v) != album]
        self.assertTrue(in_album and others)

        # The mountpoint spelling and the tree spelling name the same thing.
        d.bus_call('Pin', 's', d.path(album))
        d.bus_call('Pin', 's', '/' + album)
        last = {}

        def pinned():
            last.update(self.stats(d))
            return last['pin-bytes-total'] > 0 and last['pin-bytes-done'] == last['pin-bytes-total']
        harness.wait_until(pinned, 60, 0.05, message='the pinned album to be fetched (last: %r)' % last)
        self.assertEqual(last['pins'], 1)
        self.assertGreater(last['pinned-bytes'], 0)

        # Something unpinned, then ClearCache drops it and keeps the pin.
        self.read_all(d, others)
        full = self.wait_fills_done(d)
        self.assertGreater(full['bytes'], full['pinned-bytes'])
        d.bus_call('ClearCache')
        cleared = self.stats(d)
        self.assertLess(cleared['bytes'], full['bytes'])
        self.assertGreaterEqual(cleared['bytes'], cleared['pinned-bytes'])
        self.assertEqual(cleared['pinned-bytes'], full['pinned-bytes'])
        self.assertEqual(cleared['pin-bytes-done'], cleared['pin-bytes-total'])

        # The pinned album plays with the origin gone.
        self.take_origin_away()
        self.remount(d)
        self.read_all(d, in_album)

        # Unpinned: nothing is kept any more, and a second unpin is an error.
        d.bus_call('Unpin', 's', '/' + album)
        self.assertEqual(self.stats(d)['pins'], 0)
        with self.assertRaises(dbus.DBusException) as ctx:
            d.bus_call('Unpin', 's', '/' + album)
        self.assertEqual(ctx.exception.get_dbus_name(), 'org.musicfs.Error.NoSuchFile')

    # -- passthrough

    def test_passthrough_reads_right_and_stores_nothing(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.expected))
        d.bus_call('SetPassthrough', 'b', True)
        self.assertIs(plain(d.bus_get('Passthrough')), True)
        st = self.stats(d)
        self.assertEqual((st['passthrough'], st['passthrough-reason']), (True, 'manual'))
        # Switched on by hand is not a failure.
        self.assertEqual(str(d.bus_get('State')), 'ready')

        self.read_all(d)
        st = self.stats(d)
        self.assertEqual(st['bytes'], 0)
        self.assertEqual(st['fills-active'] + st['fills-queued'], 0)

        d.bus_call('SetPassthrough', 'b', False)
        self.assertIs(plain(d.bus_get('Passthrough')), False)
        self.assertEqual(self.stats(d)['passthrough-reason'], 'none')
        self.remount(d)
        self.read_all(d)
        self.assertGreater(self.wait_fills_done(d)['bytes'], 0)

    def test_passthrough_from_config(self):
        d = self.daemon([self.lib], config_text='[cache]\npassthrough = yes\n')
        d.wait_tracks(len(self.expected))
        self.assertIs(plain(d.bus_get('Passthrough')), True)
        self.assertEqual(self.stats(d)['passthrough-reason'], 'manual')
        self.read_all(d)
        self.assertEqual(self.stats(d)['bytes'], 0)

    # -- the budget

    def test_budget_is_honoured(self):
        big = os.path.join(self.work, 'big')
        tracks = {}
        for i in range(STREAM_TRACKS):
            tags = {'title': 'Stream %d' % i, 'artist': 'Budget Band', 'album': 'Overflow', 'year': 2020,
                    'track': i + 1}
            rel = 'stream-%d.wav' % i
            # Different tones: the chunks do not deduplicate into nothing.
            genlib.encode(os.path.join(big, rel), 'wav', tags, duration=36, frequency=300 + 40 * i, sample_rate=48000)
            tracks[genlib.render(tags, 'stream-%d' % i, 'wav')] = os.path.join(big, rel)
        total = sum(os.path.getsize(p) for p in tracks.values())
        self.assertGreater(total, 4 * BUDGET)

        d = self.daemon([big], config_text='[cache]\nbudget = 4M\nreadahead = 0\nmaintenance_interval = 1\n')
        d.wait_tracks(len(tracks))
        self.assertEqual(int(d.bus_get('CacheBudget')), BUDGET)
        chunks_dir = os.path.join(d.cache_dir, 'cache', 'chunks')

        samples = []
        stop = threading.Event()
        errors = []

        def on_disk():
            n = 0
            for dirpath, _, files in os.walk(chunks_dir):
                for f in files:
                    if f.startswith('.tmp-'):
                        continue
                    try:
                        n += os.stat(os.path.join(dirpath, f)).st_size
                    except FileNotFoundError:
                        pass    # evicted while we looked
            return n

        def sampler():
            try:
                bus = dbus.bus.BusConnection(d.bus_address)
                mgr = bus.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False)
                while not stop.is_set():
                    st = mgr.GetCacheStats(dbus_interface=harness.MANAGER_IFACE, timeout=10)
                    samples.append((int(st['bytes']), on_disk()))
                    time.sleep(0.02)
                bus.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=sampler)
        t.start()
        try:
            for rnd in range(2):
                for v, origin in sorted(tracks.items()):
                    self.assertEqual(harness.file_digest(d.path(v)), harness.file_digest(origin), v)
                    self.wait_fills_done(d)
                if rnd == 0:
                    self.remount(d)
        finally:
            stop.set()
            t.join(30)
        self.assertFalse(errors, errors)
        self.assertGreater(len(samples), 20)

        limit = 1.05 * BUDGET
        worst_bus = max(s[0] for s in samples)
        worst_disk = max(s[1] for s in samples)
        self.assertLessEqual(worst_bus, limit, 'GetCacheStats bytes %d > 1.05 x %d' % (worst_bus, BUDGET))
        self.assertLessEqual(worst_disk, limit, 'chunk files %d bytes > 1.05 x %d' % (worst_disk, BUDGET))
        # It did fill up and evict, so the bound above was tested.
        self.assertGreater(worst_bus, BUDGET // 2)
        st = self.stats(d)
        self.assertGreater(st['evictions'], 0)
        self.assertLessEqual(st['bytes'], limit)


if __name__ == '__main__':
    harness.main()
