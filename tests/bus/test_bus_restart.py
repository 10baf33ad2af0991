#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon survives a restart of the bus daemon (issue 3, "Units and activation"; style-anchors
§9.9): the dbus-daemon is stopped (SIGTERM, and SIGKILL, which leaves its socket file behind) and a new
one is started at the same address. musicfsd keeps serving its mount while the bus is gone,
reconnects, takes org.musicfs.Manager back and answers on the new bus as before, polkit checks
included."""

import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import busutil  # noqa: E402
from busutil import call  # noqa: E402
import harness  # noqa: E402

harness.require_fuse()
harness.require_program('dbus-daemon')
import dbus  # noqa: E402
import genlib  # noqa: E402

FAILPOINTS_BUILT = os.environ.get('MUSICFS_FAILPOINTS_BUILT', '1') == '1'
TAGS = {'title': 'Again', 'artist': 'Restart', 'album': 'Reconnect', 'year': 2024, 'track': 1}
TRACK = genlib.render(TAGS, 'again', 'flac')


def strip_guid(address):
    return ';'.join(','.join(kv for kv in a.split(',') if not kv.startswith('guid=')) for a in address.split(';'))


class BusRestartTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        # Our own bus at a fixed path, so that a new one can be started at the same address.
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-busrestart-')
        os.chmod(cls.workdir, 0o755)        # uid 65534 connects to the socket in it
        cls.origin = os.path.join(cls.workdir, 'origin')
        os.makedirs(cls.origin)
        genlib.encode(os.path.join(cls.origin, 'again.flac'), 'flac', TAGS, duration=0.5)
        with open(os.path.join(cls.origin, 'again.flac'), 'rb') as f:
            cls.track_bytes = f.read()
        cls.socket = os.path.join(cls.workdir, 'system_bus_socket')
        cls.conf = busutil.write_bus_conf(cls.workdir, listen='unix:path=' + cls.socket)

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.workdir)

    def start_bus(self):
        bus = busutil.BusDaemon(self.conf, os.path.join(self.workdir, 'bus.log'))
        address = bus.start()
        self.addCleanup(bus.stop)
        # For dbusmock's spawn_server_template()
        os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = address
        return bus

    def connect(self, bus):
        conn = dbus.bus.BusConnection(bus.address)
        self.addCleanup(conn.close)
        return conn

    def read_track(self, d):
        with open(d.path(TRACK), 'rb') as f:
            return f.read()

    def assertServes(self, d):
        self.assertTrue(d.running(), d.describe())
        self.assertTrue(d.is_mounted())
        self.assertEqual(self.read_track(d), self.track_bytes)

    def assertManagerBack(self, d, bus):
        conn = self.connect(bus)
        busutil.wait_name_owner(conn, harness.BUS_NAME, 30, check=d._check_running)
        self.assertEqual(busutil.connection_pid(conn, harness.BUS_NAME), d.pid)
        props = conn.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False).GetAll(
            harness.MANAGER_IFACE, dbus_interface='org.freedesktop.DBus.Properties', timeout=10)
        self.assertEqual(str(props['State']), 'ready')
        self.assertEqual(str(props['MountPoint']), d.mountpoint)
        self.assertEqual(int(props['TrackCount']), 1)
        return conn

    def restart_bus(self, d, bus, sig):
        bus.stop(sig)
        # No bus: the mount goes on serving, the daemon goes on living.
        self.assertServes(d)
        if sig == signal.SIGKILL:
            self.assertTrue(os.path.exists(self.socket), 'SIGKILL should leave the socket behind')
        new = self.start_bus()
        self.assertEqual(new.address.split(',')[0], bus.address.split(',')[0])
        return new

    def check_restarts(self, with_guid):
        bus = self.start_bus()
        # The bus prints its address with its guid, which a restarted bus does not share. Services
        # the bus activates get it that way; the system bus's usual address has none.
        address = bus.address if with_guid else strip_guid(bus.address)
        d = self.daemon([self.origin], bus_address=address)
        d.wait_tracks(1)
        conn = self.assertManagerBack(d, bus)
        self.assertServes(d)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            bus = self.restart_bus(d, bus, sig)
            conn = self.assertManagerBack(d, bus)
            self.assertServes(d)
        self.assertDaemonStops(d)

    def test_bus_restarts(self):
        self.check_restarts(with_guid=False)

    def test_bus_restarts_address_with_guid(self):
        self.check_restarts(with_guid=True)

    def test_polkit_after_a_restart(self):
        """Calls parked on the old connection are forgotten, and queries on the new one work."""
        if not FAILPOINTS_BUILT:
            self.skipTest('failpoints compiled out')
        bus = self.start_bus()
        d = self.daemon([self.origin], bus_address=strip_guid(bus.address))
        d.wait_tracks(1)
        self.assertManagerBack(d, bus)

        # A query polkit never answers, then the bus goes away under it.
        pk = busutil.PolkitMock(self)
        pk.obj.SimulateHang(True, dbus_interface='org.freedesktop.DBus.Mock')
        waiting = busutil.as_user_start(bus.address, [call('ArmFailpoint', '(ss)', ('fuse-read', 'return(EIO)'))])
        pk.wait_hanging(waiting)
        pk.bus.close()
        bus = self.restart_bus(d, bus, signal.SIGTERM)
        self.assertIn('error', busutil.as_user_finish(waiting)['results'][0])
        pk.proc.wait(30)     # dbusmock exits with its bus
        self.assertManagerBack(d, bus)

        pk = busutil.PolkitMock(self)
        self.addCleanup(pk.stop)
        pk.set_allowed([busutil.ACTION_FAILPOINTS])
        res = busutil.as_nobody(bus.address, call('ArmFailpoint', '(ss)', ('fuse-read', 'return(EIO)')),
                                call('DisarmFailpoint', '(s)', ('fuse-read',)), call('Reload'))
        self.assertEqual(res[:2], [{'ok': []}, {'ok': []}])
        self.assertEqual(res[2].get('error'), busutil.ACCESS_DENIED, res)
        self.assertServes(d)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
