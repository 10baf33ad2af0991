#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""D-Bus activation (issue 3, "Units and activation"): on a private bus whose service directory holds
an org.musicfs.Manager.service, the first call to the Manager starts musicfsd, which mounts and
answers it. Twice: on a system bus with a service file pointing at the built daemon, and on a session
bus with the session file we ship (units/user/org.musicfs.Manager.service, only the daemon's path
changed), which takes the mountpoint and origins from the user's ~/.config/musicfs/musicfsd.conf and
keeps its catalog in ~/.cache/musicfs. Without that file the activation fails with a spawn error
rather than hanging."""

import os
import shlex
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import busutil  # noqa: E402
import harness  # noqa: E402

harness.require_fuse()
harness.require_program('dbus-daemon')
import dbus  # noqa: E402
import genlib  # noqa: E402

SESSION_FILE = os.path.join(harness.SOURCE_ROOT, 'units', 'user', 'org.musicfs.Manager.service')
TAGS = {'title': 'Wake', 'artist': 'Activation', 'album': 'On Demand', 'year': 2024, 'track': 1}
TRACK = genlib.render(TAGS, 'wake', 'flac')


def daemon_version():
    out = subprocess.run([harness.DAEMON, '--version'], stdout=subprocess.PIPE, text=True, check=True).stdout
    return out.split()[1]


class ActivationTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='musicfs-activation-')
        self.addCleanup(harness.safe_rmtree, self.tmp)
        self.origin = os.path.join(self.tmp, 'origin')
        os.makedirs(self.origin)
        genlib.encode(os.path.join(self.origin, 'wake.flac'), 'flac', TAGS, duration=0.5)
        self.mnt = os.path.join(self.tmp, 'mnt')
        os.makedirs(self.mnt)
        self.servicedir = os.path.join(self.tmp, 'services')
        os.makedirs(self.servicedir)
        self.bus_log = os.path.join(self.tmp, 'bus.log')

    def start_bus(self, bus_type, env=None):
        conf = busutil.write_bus_conf(self.tmp, bus_type, servicedir=self.servicedir, name=bus_type + '.conf')
        bus = busutil.BusDaemon(conf, self.bus_log, env)
        bus.start()
        self.addCleanup(bus.stop)
        conn = dbus.bus.BusConnection(bus.address)
        self.addCleanup(conn.close)
        return bus, conn

    def write_service(self, text):
        with open(os.path.join(self.servicedir, 'org.musicfs.Manager.service'), 'w', encoding='utf-8') as f:
            f.write(text)

    def adopt_activated_daemon(self, bus, conn):
        """The activated daemon's pid; stopped (SIGTERM) and unmounted in cleanup."""
        pid = busutil.connection_pid(conn, harness.BUS_NAME)

        def stop():
            clean = busutil.terminate_pid(pid)
            harness.lazy_unmount(self.mnt)
            self.assertTrue(clean, 'the activated musicfsd ignored SIGTERM\n' + bus.log())
        self.addCleanup(stop)
        return pid

    def assertActivates(self, bus, conn):
        self.assertFalse(conn.name_has_owner(harness.BUS_NAME))
        try:
            # The bus starts the daemon and holds the call until it owns the name.
            manager = conn.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False)
            version = manager.Get(harness.MANAGER_IFACE, 'Version',
                                  dbus_interface='org.freedesktop.DBus.Properties', timeout=60)
        except dbus.exceptions.DBusException as e:
            self.fail('activation failed: %s\nbus and daemon output:\n%s' % (e, bus.log()))
        self.assertEqual(str(version), daemon_version())
        pid = self.adopt_activated_daemon(bus, conn)
        # Started by the bus (which double-forks it), since nothing else here started one.
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            self.assertIn(os.fsencode(harness.DAEMON), f.read().split(b'\0'))
        self.assertTrue(harness.is_mounted(self.mnt), bus.log())
        self.assertEqual(str(manager.Get(harness.MANAGER_IFACE, 'MountPoint',
                                         dbus_interface='org.freedesktop.DBus.Properties')), self.mnt)
        harness.wait_until(lambda: int(manager.Get(harness.MANAGER_IFACE, 'TrackCount',
                                                   dbus_interface='org.freedesktop.DBus.Properties')) == 1,
                           60, message='the activated daemon to scan its origin')
        with open(os.path.join(self.origin, 'wake.flac'), 'rb') as f:
            want = f.read()
        with open(os.path.join(self.mnt, TRACK), 'rb') as f:
            self.assertEqual(f.read(), want, bus.log())
        return pid

    def test_system_bus(self):
        cache = os.path.join(self.tmp, 'cache')
        wrapper = os.environ.get('MUSICFS_TEST_WRAPPER', '')
        argv = shlex.split(wrapper) + [harness.DAEMON, '--origin', self.origin, '--cache-dir', cache, self.mnt]
        self.write_service('[D-BUS Service]\nName=org.musicfs.Manager\nExec=%s\n' % ' '.join(argv))
        bus, conn = self.start_bus('system')
        pid = self.assertActivates(bus, conn)
        self.assertTrue(os.path.exists(os.path.join(cache, 'musicfsd.lock')))
        # A second call goes to the same daemon.
        conn.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False).Get(
            harness.MANAGER_IFACE, 'State', dbus_interface='org.freedesktop.DBus.Properties')
        self.assertEqual(busutil.connection_pid(conn, harness.BUS_NAME), pid)

    def session_env(self):
        home = os.path.join(self.tmp, 'home')
        env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(self.tmp, 'xdg-cache'))
        env.pop('XDG_CONFIG_HOME', None)       # the file's fallback: $HOME/.config
        env.pop('DBUS_SESSION_BUS_ADDRESS', None)
        return home, env

    def shipped_session_file(self):
        with open(SESSION_FILE, encoding='utf-8') as f:
            text = f.read()
        self.assertIn('/usr/sbin/musicfsd --user', text)
        return text.replace('/usr/sbin/musicfsd', harness.DAEMON)

    def test_session_bus_with_the_shipped_file(self):
        home, env = self.session_env()
        conf_dir = os.path.join(home, '.config', 'musicfs')
        os.makedirs(conf_dir)
        with open(os.path.join(conf_dir, 'musicfsd.conf'), 'w', encoding='utf-8') as f:
            f.write('[musicfsd]\nmountpoint = %s\n\n[origin "music"]\nkind = local\npath = %s\n' % (
                self.mnt, self.origin))
        self.write_service(self.shipped_session_file())
        bus, conn = self.start_bus('session', env)
        pid = self.assertActivates(bus, conn)
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            argv = f.read().split(b'\0')
        self.assertIn(b'--user', argv)
        # Its catalog went to the user's cache directory.
        self.assertTrue(os.path.exists(os.path.join(env['XDG_CACHE_HOME'], 'musicfs', 'musicfsd.lock')))

    def test_session_bus_without_a_configuration(self):
        _, env = self.session_env()
        self.write_service(self.shipped_session_file())
        bus, conn = self.start_bus('session', env)
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            # (dbus-python activates the name as soon as it makes the proxy)
            manager = conn.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False)
            manager.Get(harness.MANAGER_IFACE, 'Version', dbus_interface='org.freedesktop.DBus.Properties',
                        timeout=60)
        self.assertTrue(c.exception.get_dbus_name().startswith('org.freedesktop.DBus.Error.Spawn.'),
                        '%s\n%s' % (c.exception, bus.log()))
        self.assertIn('musicfsd.conf', bus.log())       # the daemon said which file it missed
        self.assertFalse(harness.is_mounted(self.mnt))


if __name__ == '__main__':
    unittest.main(verbosity=2)
