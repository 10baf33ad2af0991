#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The system bus policy, policy/org.musicfs.Manager.conf, in a real dbus-daemon: a base as strict as
Debian's system.conf (nobody may own a name or call a method unless a policy file says so) plus our
file, <include>d as the system.d directory would. Root may own org.musicfs.Manager; uid 65534 may not,
but may talk to it through its own interfaces and the standard ones (which method it may then call is
polkit's business, test_polkit.py); anything else sent to it is rejected by the bus."""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import busutil  # noqa: E402
from busutil import call, ACCESS_DENIED  # noqa: E402
import harness  # noqa: E402

busutil.require_setpriv()
harness.require_program('dbus-daemon')
import dbus  # noqa: E402
import dbusmock  # noqa: E402

POLICY = os.path.join(harness.SOURCE_ROOT, 'policy', 'org.musicfs.Manager.conf')
ORIGIN_PATH = harness.MANAGER_PATH + '/origin/music'
DBUS = ('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus')
REQUEST_NAME_PRIMARY_OWNER = 1

# Debian's /usr/share/dbus-1/system.conf without the parts that need a real system (messagebus user,
# launch helper, pid file, syslog, standard service directories).
STRICT_BASE = busutil.BUSCONFIG_DOCTYPE + '''
<busconfig>
  <type>system</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <include>%s</include>
</busconfig>
'''


def request_name(name):
    return call('RequestName', '(su)', (name, 4), dest=DBUS[0], path=DBUS[1], interface=DBUS[2])


class PolicyTest(dbusmock.DBusTestCase):

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-policy-')
        conf = os.path.join(cls.workdir, 'system.conf')
        with open(conf, 'w', encoding='utf-8') as f:
            f.write(STRICT_BASE % POLICY)
        # dbus-daemon refuses to start on a policy file it cannot parse: that is checked here too.
        cls.system_bus_pid, cls.address = busutil.start_bus(conf)
        os.environ['DBUS_SYSTEM_BUS_ADDRESS'] = cls.address
        cls.bus = dbus.bus.BusConnection(cls.address)

    @classmethod
    def tearDownClass(cls):
        cls.bus.close()
        harness.safe_rmtree(cls.workdir)
        super().tearDownClass()

    def mock_manager(self):
        """A stand-in Manager owned by root (dbusmock), with an origin object."""
        proc = self.spawn_server(harness.BUS_NAME, harness.MANAGER_PATH, harness.MANAGER_IFACE,
                                 system_bus=True, stdout=subprocess.DEVNULL)

        def stop():
            proc.terminate()
            proc.wait(10)
            harness.wait_until(lambda: not self.bus.name_has_owner(harness.BUS_NAME), 10)
        self.addCleanup(stop)
        obj = self.bus.get_object(harness.BUS_NAME, harness.MANAGER_PATH)
        mock = dbus.Interface(obj, 'org.freedesktop.DBus.Mock')
        mock.AddMethod(harness.MANAGER_IFACE, 'ListFailpoints', '', 'a(ssu)', 'ret = [("fuse-read", "", 0)]')
        mock.AddMethod(harness.MANAGER_IFACE, 'Reload', '', '', '')
        mock.AddProperty(harness.MANAGER_IFACE, 'State', 'ready')
        mock.AddMethod('org.freedesktop.DBus.ObjectManager', 'GetManagedObjects', '', 'a{oa{sa{sv}}}', 'ret = {}')
        mock.AddMethod('org.example.Private', 'Secret', '', 's', 'ret = "leaked"')
        mock.AddObject(ORIGIN_PATH, 'org.musicfs.Origin', {'Name': 'music'},
                       [('Check', '', 's', 'ret = "healthy"')])
        return mock

    # -- owning the name

    def test_root_may_own_the_name(self):
        r = self.bus.request_name(harness.BUS_NAME, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
        self.assertEqual(r, REQUEST_NAME_PRIMARY_OWNER)
        self.bus.release_name(harness.BUS_NAME)

    def test_nobody_may_not_own_it(self):
        results = busutil.as_nobody(self.address, request_name(harness.BUS_NAME), request_name('org.musicfs.Other'))
        for r in results:
            self.assertEqual(r.get('error'), ACCESS_DENIED, r)
        self.assertIn('org.musicfs.Manager', results[0]['message'])
        self.assertFalse(self.bus.name_has_owner(harness.BUS_NAME))

    # -- talking to it

    def test_nobody_may_use_the_manager_interfaces(self):
        mock = self.mock_manager()
        results = busutil.as_nobody(
            self.address,
            call('ListFailpoints'),
            call('Reload'),
            busutil.get_property('State'),
            call('GetAll', '(s)', (harness.MANAGER_IFACE,), interface='org.freedesktop.DBus.Properties'),
            call('Introspect', interface='org.freedesktop.DBus.Introspectable'),
            call('Ping', interface='org.freedesktop.DBus.Peer'),
            call('GetManagedObjects', interface='org.freedesktop.DBus.ObjectManager'),
            call('Check', interface='org.musicfs.Origin', path=ORIGIN_PATH),
            busutil.get_property('Name', interface='org.musicfs.Origin', path=ORIGIN_PATH))
        for r in results:
            self.assertIn('ok', r, r)
        self.assertEqual(results[0]['ok'], [[['fuse-read', '', 0]]])
        self.assertEqual(results[2]['ok'], ['ready'])
        self.assertEqual(results[7]['ok'], ['healthy'])
        self.assertEqual(results[8]['ok'], ['music'])
        # The calls reached the Manager: it was the bus that let them through.
        self.assertEqual(len(mock.GetMethodCalls('Reload')), 1)

    def test_nobody_may_not_use_other_interfaces(self):
        mock = self.mock_manager()
        results = busutil.as_nobody(
            self.address,
            call('Secret', interface='org.example.Private'),
            # dbusmock's control interface: exactly what a policy without send_interface= would expose
            call('Reset', interface='org.freedesktop.DBus.Mock'),
            call('GetCalls', interface='org.freedesktop.DBus.Mock'))
        for r in results:
            self.assertEqual(r.get('error'), ACCESS_DENIED, r)
            # Refused by the bus (dbus-daemon's wording), not by the service.
            self.assertIn('Rejected send message', r['message'])
        self.assertEqual([c for c in mock.GetCalls() if str(c[1]) in ('Secret', 'Reset')], [])
        # Root may (the policy lets root send anything to the Manager, for debugging).
        self.assertEqual(str(self.bus.get_object(harness.BUS_NAME, harness.MANAGER_PATH).Secret(
            dbus_interface='org.example.Private')), 'leaked')

    def test_real_daemon_under_the_policy(self):
        """The daemon, as root, gets its name under this policy, and an unprivileged user reads it."""
        if os.geteuid() != 0 or not os.access('/dev/fuse', os.R_OK | os.W_OK):
            self.skipTest('FUSE mounts need root and /dev/fuse')
        import genlib
        origin = os.path.join(self.workdir, 'origin')
        os.makedirs(origin, exist_ok=True)
        genlib.encode(os.path.join(origin, 'a.flac'), 'flac', {'title': 'A', 'artist': 'B', 'album': 'C'},
                      duration=0.3)
        d = harness.Daemon(origins=[origin], bus_address=self.address)
        self.addCleanup(d.cleanup)
        try:
            d.start()
            d.wait_tracks(1)
        except harness.DaemonFailed:
            sys.stderr.write(d.describe())
            raise
        results = busutil.as_nobody(
            self.address,
            call('GetAll', '(s)', (harness.MANAGER_IFACE,), interface='org.freedesktop.DBus.Properties'),
            call('Introspect', interface='org.freedesktop.DBus.Introspectable'),
            call('GetManagedObjects', interface='org.freedesktop.DBus.ObjectManager'))
        for r in results:
            self.assertIn('ok', r, r)
        self.assertEqual(results[0]['ok'][0]['MountPoint'], d.mountpoint)
        self.assertEqual(d.stop(), 0, d.describe())


if __name__ == '__main__':
    import unittest
    unittest.main(verbosity=2)
