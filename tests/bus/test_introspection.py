#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The D-Bus contract (DESIGN.md D13): the running daemon's org.musicfs.Manager interface and the
org.musicfs.Origin interface of a live origin object, as `busctl --xml-interface introspect` shows
them, equal introspection/org.musicfs.Manager.xml and org.musicfs.Origin.xml, every member there is
documented, and the basics behave as documented over a private system bus: values,
PropertiesChanged, the failpoint methods' happy and error paths, the privilege seam and
MUSICFS_FAILPOINTS. (tests/bus/test_manager_api.py and test_origins.py cover the rest.)"""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
harness.require_program('busctl')
import dbus  # noqa: E402
import dbus.mainloop.glib  # noqa: E402
import genlib  # noqa: E402
from gi.repository import GLib  # noqa: E402

XML_PATH = os.path.join(harness.SOURCE_ROOT, 'introspection', 'org.musicfs.Manager.xml')
ORIGIN_XML_PATH = os.path.join(harness.SOURCE_ROOT, 'introspection', 'org.musicfs.Origin.xml')
IFACE = harness.MANAGER_IFACE
ORIGIN_IFACE = 'org.musicfs.Origin'
PROPERTIES = {'Version', 'State', 'Passthrough', 'MountPoint', 'TrackCount', 'CacheBytes', 'CacheBudget',
              'ScanProgress', 'Origins'}
FAILPOINTS_BUILT = os.environ.get('MUSICFS_FAILPOINTS_BUILT', '1') == '1'
ERR = 'org.musicfs.Error.'

TRACK_TAGS = {'title': 'Probe', 'artist': 'Bus Band', 'album': 'Introspection', 'year': 2024, 'track': 1}
TRACK_PATH = genlib.render(TRACK_TAGS, 'probe', 'flac')
KNOWN_FAILPOINTS = {'catalog-open', 'catalog-commit', 'scan-file', 'scan-batch', 'tree-publish', 'origin-open',
                    'origin-read', 'origin-stat', 'fuse-read', 'fuse-lookup', 'fuse-readdir', 'shutdown-drain',
                    'cache-write', 'cache-rename', 'cache-index', 'cache-index-commit', 'cache-evict', 'cache-touch', 'cache-chunk-read'}


# --------------------------------------------------------------------------------------------------
# Introspection XML, normalised: what a client can rely on, without whitespace, comments, attribute
# order or element order.

def _annotations(el):
    return tuple(sorted((a.get('name'), a.get('value')) for a in el.findall('annotation')))


def interface_model(xml_text, name):
    """{(kind, member): description} of one interface; raises KeyError when it is not there."""
    root = ET.fromstring(xml_text)
    found = [i for i in root.findall('interface') if i.get('name') == name]
    if len(found) != 1:
        raise KeyError('%d <interface name="%s"> elements' % (len(found), name))
    iface = found[0]
    model = {}
    for m in iface.findall('method'):
        args = tuple((a.get('name'), a.get('type'), a.get('direction', 'in')) for a in m.findall('arg'))
        model[('method', m.get('name'))] = (args, _annotations(m))
    for s in iface.findall('signal'):
        args = tuple((a.get('name'), a.get('type'), a.get('direction', 'out')) for a in s.findall('arg'))
        model[('signal', s.get('name'))] = (args, _annotations(s))
    for p in iface.findall('property'):
        ann = dict(_annotations(p))
        # Absent means "true" (the D-Bus specification's default); sd-bus writes it only otherwise.
        ann.setdefault('org.freedesktop.DBus.Property.EmitsChangedSignal', 'true')
        model[('property', p.get('name'))] = (p.get('type'), p.get('access'), tuple(sorted(ann.items())))
    for el in iface:
        if el.tag not in ('method', 'signal', 'property', 'annotation') and not callable(el.tag):
            raise AssertionError('unexpected <%s> in the interface' % el.tag)
    return model


def model_diff(want, got):
    """Human-readable differences, empty when equal."""
    out = []
    for key in sorted(set(want) | set(got)):
        if key not in got:
            out.append('%s %s: in the XML, not in the daemon' % key)
        elif key not in want:
            out.append('%s %s: in the daemon, not in the XML' % key)
        elif want[key] != got[key]:
            out.append('%s %s: XML %r, daemon %r' % (key[0], key[1], want[key], got[key]))
    return out


def undocumented_members(xml_text, name):
    """Members of the interface (and the interface itself) without a doc comment naming them."""
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(xml_text, parser=parser)
    missing = []

    def check(children, el, label):
        i = children.index(el)
        prev = children[i - 1] if i > 0 else None
        text = prev.text if prev is not None and prev.tag is ET.Comment else ''
        first = next((ln.strip() for ln in (text or '').splitlines() if ln.strip()), '')
        # rauc/gtk-doc style: the comment starts with "Name:" and says more than that.
        if first != label + ':' or len(text.split()) < 4:
            missing.append(label)

    root_children = list(root)
    iface = next(i for i in root.findall('interface') if i.get('name') == name)
    check(root_children, iface, name)
    children = list(iface)
    for el in children:
        if el.tag in ('method', 'signal', 'property'):
            check(children, el, el.get('name'))
    return missing


def introspect_with_busctl(bus_address, path=harness.MANAGER_PATH):
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus_address)
    r = subprocess.run(['busctl', '--system', '--xml-interface', 'introspect', harness.BUS_NAME,
                        path], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError('busctl introspect failed (%d): %s' % (r.returncode, r.stderr))
    return r.stdout


def make_origin(directory):
    os.makedirs(directory, exist_ok=True)
    genlib.encode(os.path.join(directory, 'probe.flac'), 'flac', TRACK_TAGS, duration=0.5)
    return directory


class SignalRecorder:
    """Collects org.freedesktop.DBus.Properties.PropertiesChanged of the Manager on its own
    connection with a GLib main loop (subscribed before the daemon starts)."""

    def __init__(self, bus_address):
        self.loop_ctx = GLib.MainContext.default()
        self.bus = dbus.bus.BusConnection(bus_address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.changes = []       # (property, value) in arrival order
        self.bus.add_signal_receiver(self._on_changed, signal_name='PropertiesChanged',
                                     dbus_interface='org.freedesktop.DBus.Properties',
                                     path=harness.MANAGER_PATH)
        # A round trip makes sure the bus has the match rule before we go on.
        self.bus.get_unique_name()
        self.bus.call_blocking('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
                               'GetId', '', [])

    def _on_changed(self, interface, changed, invalidated):
        if interface == IFACE:
            for k, v in changed.items():
                self.changes.append((str(k), v))

    def pump(self):
        while self.loop_ctx.iteration(False):
            pass

    def wait_for(self, prop, value, timeout=30.0):
        def seen():
            self.pump()
            return (prop, value) in self.changes
        harness.wait_until(seen, timeout, message='PropertiesChanged %s=%r (got %r)' % (prop, value, self.changes))

    def close(self):
        self.bus.close()


class IntrospectionTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workdir = tempfile.mkdtemp(prefix='musicfs-bus-')
        cls.origin = make_origin(os.path.join(cls.workdir, 'origin'))
        with open(XML_PATH, encoding='utf-8') as f:
            cls.xml = f.read()
        with open(ORIGIN_XML_PATH, encoding='utf-8') as f:
            cls.origin_xml = f.read()

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.workdir)
        super().tearDownClass()

    def start(self, **kwargs):
        d = self.daemon([self.origin], **kwargs)
        d.wait_tracks(1)
        return d

    def assertDBusError(self, name, fn, *args, **kwargs):
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            fn(*args, **kwargs)
        self.assertEqual(c.exception.get_dbus_name(), name, str(c.exception))
        return c.exception

    def failpoints(self, d):
        return {str(n): (str(a), int(f)) for n, a, f in d.bus_call('ListFailpoints')}

    # -- the contract

    def test_xml_is_documented(self):
        self.assertEqual(undocumented_members(self.xml, IFACE), [])
        self.assertEqual(undocumented_members(self.origin_xml, ORIGIN_IFACE), [])
        # The check itself must be able to fail: a member without its comment is seen.
        stripped = self.origin_xml.replace('Priority:', 'Priority is:')
        self.assertEqual(undocumented_members(stripped, ORIGIN_IFACE), ['Priority'])

    def test_running_interface_matches_xml(self):
        d = self.start()
        want = interface_model(self.xml, IFACE)
        got = interface_model(introspect_with_busctl(d.bus_address), IFACE)
        self.assertEqual(model_diff(want, got), [])
        # The comparison itself must be able to fail: a changed type is seen.
        self.assertNotEqual(model_diff(want, interface_model(self.xml.replace('type="t"', 'type="u"'), IFACE)), [])

    def test_running_origin_interface_matches_xml(self):
        d = self.start()
        origins = [str(p) for p in d.bus_get('Origins')]
        self.assertEqual(len(origins), 1)
        want = interface_model(self.origin_xml, ORIGIN_IFACE)
        text = introspect_with_busctl(d.bus_address, origins[0])
        self.assertEqual(model_diff(want, interface_model(text, ORIGIN_IFACE)), [])
        self.assertNotEqual(model_diff(want, interface_model(self.origin_xml.replace('"const"', '"true"'),
                                                             ORIGIN_IFACE)), [])
        # The Manager's object also is the ObjectManager of the origins.
        manager = ET.fromstring(introspect_with_busctl(d.bus_address))
        self.assertIn('org.freedesktop.DBus.ObjectManager', [i.get('name') for i in manager.findall('interface')])

    # -- properties

    def test_properties(self):
        d = self.start()
        props = d.bus_get_all()
        self.assertEqual(set(props), PROPERTIES)
        out = subprocess.run([harness.DAEMON, '--version'], stdout=subprocess.PIPE, text=True, check=True).stdout
        self.assertEqual(str(props['Version']), out.split()[1])
        self.assertRegex(str(props['Version']), r'^\d+\.\d+\.\d+')
        self.assertEqual(str(props['State']), 'ready')
        self.assertEqual(str(props['MountPoint']), d.mountpoint)
        self.assertEqual(int(props['TrackCount']), 1)
        self.assertIsInstance(props['TrackCount'], dbus.UInt64)
        # Read-only: Set is refused.
        obj = d.bus.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False)
        self.assertDBusError('org.freedesktop.DBus.Error.PropertyReadOnly', obj.Set, IFACE, 'State', 'stopping',
                             dbus_interface='org.freedesktop.DBus.Properties')

    def test_properties_changed(self):
        rec = SignalRecorder(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
        self.addCleanup(rec.close)
        # A fresh cache: the first scan takes TrackCount from 0 to 1.
        d = self.daemon([self.origin])
        rec.wait_for('State', 'ready')
        rec.wait_for('TrackCount', dbus.UInt64(1))
        self.assertEqual(int(d.bus_get('TrackCount')), 1)
        self.assertDaemonStops(d)
        rec.wait_for('State', 'stopping')
        states = [str(v) for k, v in rec.changes if k == 'State']
        self.assertEqual(states, ['ready', 'stopping'])

    # -- failpoint methods

    def test_arm_errors(self):
        d = self.start()
        if not FAILPOINTS_BUILT:
            for method, sig, args in (('ArmFailpoint', 'ss', ('fuse-lookup', 'return(EIO)')),
                                      ('DisarmFailpoint', 's', ('fuse-lookup',)), ('ListFailpoints', '', ())):
                e = self.assertDBusError(ERR + 'NotSupported', d.bus_call, method, sig, *args)
                self.assertIn('failpoints', e.get_dbus_message())
            return
        e = self.assertDBusError(ERR + 'InvalidArgs', d.bus_call, 'ArmFailpoint', 'ss', 'fuse-lookup', 'bogus(')
        self.assertIn('bogus', e.get_dbus_message())
        self.assertDBusError(ERR + 'InvalidArgs', d.bus_call, 'ArmFailpoint', 'ss', 'fuse-lookup', 'return(ENOTANERRNO)')
        self.assertDBusError(ERR + 'InvalidArgs', d.bus_call, 'ArmFailpoint', 'ss', 'fuse-lookup', '150%return')
        self.assertDBusError(ERR + 'NoSuchFailpoint', d.bus_call, 'ArmFailpoint', 'ss', 'no-such-point', 'return(EIO)')
        self.assertDBusError(ERR + 'NoSuchFailpoint', d.bus_call, 'DisarmFailpoint', 's', 'no-such-point')
        self.assertDBusError('org.freedesktop.DBus.Error.InvalidArgs', d.bus_call, 'ArmFailpoint', 's', 'fuse-lookup')
        # Nothing got armed by the failures, and the daemon still serves.
        self.assertTrue(all(a == '' for a, _ in self.failpoints(d).values()))
        os.stat(d.path(TRACK_PATH))

    def test_arm_fire_list_disarm(self):
        if not FAILPOINTS_BUILT:
            self.skipTest('failpoints compiled out (see test_arm_errors)')
        d = self.start()
        points = self.failpoints(d)
        self.assertEqual(set(points), KNOWN_FAILPOINTS)
        self.assertEqual(points['fuse-lookup'], ('', 0))

        d.bus_call('ArmFailpoint', 'ss', 'fuse-lookup', '1*return(EIO)')
        self.assertEqual(self.failpoints(d)['fuse-lookup'], ('1*return(EIO)', 0))
        # Nothing has looked this path up yet, so the first stat goes to the daemon's lookup.
        with self.assertRaises(OSError) as c:
            os.stat(d.path(TRACK_PATH))
        self.assertEqual(c.exception.errno, errno.EIO)
        st = os.stat(d.path(TRACK_PATH))           # used up: the next lookup succeeds
        self.assertGreater(st.st_size, 0)
        points = self.failpoints(d)
        self.assertEqual(points['fuse-lookup'], ('1*return(EIO)', 1))
        self.assertEqual({n for n, (a, _) in points.items() if a}, {'fuse-lookup'})

        d.bus_call('DisarmFailpoint', 's', 'fuse-lookup')
        self.assertEqual(self.failpoints(d)['fuse-lookup'], ('', 0))
        d.bus_call('DisarmFailpoint', 's', 'fuse-lookup')     # not armed: still fine
        with self.assertRaises(FileNotFoundError):
            os.stat(d.path('No Such Artist'))

    def test_failpoints_from_environment(self):
        if not FAILPOINTS_BUILT:
            d = self.daemon([self.origin], start=False, failpoints='fuse-read=return(EIO)')
            rc, out = d.run_to_exit()
            self.assertEqual(rc, 1, out)
            self.assertIn('MUSICFS_FAILPOINTS', out.splitlines()[0])
            return
        d = self.start(failpoints='fuse-read=return(EIO);fuse-readdir=2*return(EAGAIN)')
        points = self.failpoints(d)
        self.assertEqual(points['fuse-read'], ('return(EIO)', 0))
        self.assertEqual(points['fuse-readdir'], ('2*return(EAGAIN)', 0))

        for bad in ('fuse-read=bogus(', 'no-such-point=return(EIO)', 'fuse-read'):
            bad_d = self.daemon([self.origin], start=False, failpoints=bad)
            rc, out = bad_d.run_to_exit()
            self.assertEqual(rc, 1, out)
            lines = out.splitlines()
            self.assertTrue(lines, 'no output')
            self.assertIn('MUSICFS_FAILPOINTS', lines[0])
            self.assertFalse(bad_d.is_mounted())

    # -- the privilege seam

    def test_privileged_methods_refuse_other_users(self):
        setpriv = shutil.which('setpriv')
        if not setpriv:
            self.skipTest('setpriv (util-linux) is not installed')
        # The dbusmock bus only lets its own user connect; this one lets anyone in, so that the
        # daemon (not the bus) is what says no.
        conf = os.path.join(self.tempdir(), 'bus.conf')
        with open(conf, 'w', encoding='utf-8') as f:
            f.write('''<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:tmpdir=/tmp</listen>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
''')
        pid, address = self.start_dbus(conf=conf)
        self.addCleanup(self.stop_dbus, pid)
        d = self.start(bus_address=address)

        script = '''
import dbus, sys
bus = dbus.bus.BusConnection(sys.argv[1])
m = bus.get_object('org.musicfs.Manager', '/org/musicfs/Manager', introspect=False)
for call in (lambda: m.ArmFailpoint('fuse-read', 'return(EIO)', dbus_interface='org.musicfs.Manager'),
             lambda: m.DisarmFailpoint('fuse-read', dbus_interface='org.musicfs.Manager'),
             lambda: m.ListFailpoints(dbus_interface='org.musicfs.Manager')):
    try:
        r = call()
        print('ok', len(r) if r is not None else 0)
    except dbus.exceptions.DBusException as e:
        print(e.get_dbus_name())
'''
        r = subprocess.run([setpriv, '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3',
                            '-c', script, address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.split('\n')
        denied = 'org.freedesktop.DBus.Error.AccessDenied'
        if FAILPOINTS_BUILT:
            self.assertEqual(lines[:3], [denied, denied, 'ok %d' % len(KNOWN_FAILPOINTS)], r.stdout)
            self.assertEqual(self.failpoints(d)['fuse-read'], ('', 0))
        else:
            self.assertEqual(lines[:3], [ERR + 'NotSupported'] * 3, r.stdout)
        # Root, on the same bus, is allowed.
        if FAILPOINTS_BUILT:
            d.bus_call('ArmFailpoint', 'ss', 'fuse-read', 'return(EIO)')
            d.bus_call('DisarmFailpoint', 's', 'fuse-read')


if __name__ == '__main__':
    harness.main()
