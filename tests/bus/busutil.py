# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers of the authorization, activation and bus-restart tests (tests/bus): a private bus that
admits every user, calls made by an unprivileged process (uid 65534), a polkit mock that can be
started and stopped, and bus configurations of our own. The daemon harness is tests/lib/harness.py."""

import json
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

import dbus  # noqa: E402

NOBODY = 65534
ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'
POLKIT_NAME = 'org.freedesktop.PolicyKit1'
POLKIT_PATH = '/org/freedesktop/PolicyKit1/Authority'
POLKIT_IFACE = 'org.freedesktop.PolicyKit1.Authority'

ACTION_MOUNT = 'org.musicfs.manager.mount'
ACTION_ORIGINS = 'org.musicfs.manager.origins'
ACTION_CACHE = 'org.musicfs.manager.cache'
ACTION_FAILPOINTS = 'org.musicfs.manager.failpoints'
ACTION_RELOAD = 'org.musicfs.manager.reload'
ALL_ACTIONS = [ACTION_MOUNT, ACTION_ORIGINS, ACTION_CACHE, ACTION_FAILPOINTS, ACTION_RELOAD]

BUSCONFIG_DOCTYPE = '''<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">'''

# dbusmock's own bus only lets its user connect. This one lets anyone in and allows everything, so
# that what refuses a call is the daemon (polkit), not the bus. test_policy.py tests the real policy.
OPEN_BUS_CONF = BUSCONFIG_DOCTYPE + '''
<busconfig>
  <type>%(type)s</type>
  <listen>%(listen)s</listen>
  %(servicedir)s
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
'''


def require_setpriv():
    path = shutil.which('setpriv')
    if not path:
        harness.skip_module('setpriv (util-linux) is not installed: cannot call as another user')
    return path


def write_bus_conf(directory, bus_type='system', listen='unix:tmpdir=/tmp', servicedir=None, name='bus.conf'):
    path = os.path.join(directory, name)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(OPEN_BUS_CONF % {
            'type': bus_type, 'listen': listen,
            'servicedir': '<servicedir>%s</servicedir>' % servicedir if servicedir else ''})
    return path


def start_bus(conf, env=None):
    """Starts a dbus-daemon with the given config file; returns (pid, address). The caller stops it
    (dbusmock.DBusTestCase.stop_dbus)."""
    out = subprocess.check_output(['dbus-daemon', '--fork', '--print-address=1', '--print-pid=1',
                                   '--config-file=' + conf], text=True, env=env).split()
    if len(out) != 2:
        raise AssertionError('unexpected dbus-daemon output %r' % out)
    return (int(out[1]), out[0]) if out[1].isdigit() else (int(out[0]), out[1])


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:    # a zombie of ours counts as gone
        with open('/proc/%d/stat' % pid, encoding='utf-8') as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
        return True


# --------------------------------------------------------------------------------------------------
# Calls made by another user. GDBus (python3-gi) rather than python-dbus: it can set the
# ALLOW_INTERACTIVE_AUTHORIZATION flag and gives the remote error name.

_CALLER = r'''
import json, sys
from gi.repository import Gio, GLib
address, calls = sys.argv[1], json.loads(sys.argv[2])
conn = Gio.DBusConnection.new_for_address_sync(
    address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
    None, None)
def arg(a):
    # {"__variant__": [signature, value]} stands for a GLib.Variant (a 'v' argument)
    if isinstance(a, dict) and '__variant__' in a:
        return GLib.Variant(a['__variant__'][0], arg(a['__variant__'][1]))
    return a
results = []
for c in calls:
    flags = Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION if c['interactive'] else Gio.DBusCallFlags.NONE
    params = GLib.Variant(c['signature'], tuple(arg(a) for a in c['args'])) if c['signature'] else None
    try:
        reply = conn.call_sync(c['dest'], c['path'], c['interface'], c['method'], params, None, flags,
                               c['timeout_ms'], None)
        results.append({'ok': reply.unpack() if reply is not None else None})
    except GLib.Error as e:
        name = Gio.DBusError.get_remote_error(e)
        message = e.message
        if name and message.startswith('GDBus.Error:' + name + ': '):
            message = message[len('GDBus.Error:' + name + ': '):]
        results.append({'error': name or 'local:' + str(e.code), 'message': message})
print(json.dumps({'unique_name': conn.get_unique_name(), 'results': results}))
'''


def call(method, signature='', args=(), interface=harness.MANAGER_IFACE, path=harness.MANAGER_PATH,
         dest=harness.BUS_NAME, interactive=False, timeout=30):
    """One call for as_user(): a dict the child understands."""
    return {'method': method, 'signature': signature, 'args': list(args), 'interface': interface,
            'path': path, 'dest': dest, 'interactive': interactive, 'timeout_ms': int(timeout * 1000)}


def variant(signature, value):
    """A 'v' argument for call()."""
    return {'__variant__': [signature, value]}


def get_property(name, interface=harness.MANAGER_IFACE, path=harness.MANAGER_PATH):
    return call('Get', '(ss)', (interface, name), interface='org.freedesktop.DBus.Properties', path=path)


def as_user_start(address, calls, uid=NOBODY):
    """Starts the calls in a child running as uid (and its group, no supplementary groups);
    returns the Popen. as_user_finish() collects the answers."""
    argv = [require_setpriv(), '--reuid=%d' % uid, '--regid=%d' % uid, '--clear-groups',
            '/usr/bin/python3', '-c', _CALLER, address, json.dumps(calls)]
    env = {'PATH': '/usr/bin:/bin', 'HOME': '/nonexistent', 'LANG': 'C.UTF-8'}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd='/')


def as_user_finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError('caller exited with %d:\n%s' % (proc.returncode, err))
    return json.loads(out)


def as_user(address, calls, uid=NOBODY, timeout=120):
    """Makes the calls as uid, in order, on one connection. Returns (unique name, [result]) where a
    result is {'ok': value} or {'error': name, 'message': text}."""
    r = as_user_finish(as_user_start(address, calls, uid), timeout)
    return r['unique_name'], r['results']


def as_nobody(address, *calls):
    """The results of the calls, made by uid 65534."""
    return as_user(address, list(calls))[1]


# --------------------------------------------------------------------------------------------------
# polkit on the bus.

class PolkitMock:
    """dbusmock's polkitd template on the bus of DBUS_SYSTEM_BUS_ADDRESS, or a mock with a scripted
    CheckAuthorization (script=python code setting `ret`, as dbusmock's AddMethod runs it)."""

    def __init__(self, testcase, script=None):
        self.testcase = testcase
        self.bus = dbus.bus.BusConnection(os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
        if script is None:
            self.proc, self.obj = testcase.spawn_server_template('polkitd', {}, stdout=subprocess.DEVNULL)
        else:
            self.proc = testcase.spawn_server(POLKIT_NAME, POLKIT_PATH, POLKIT_IFACE, system_bus=True,
                                              stdout=subprocess.DEVNULL)
            self.obj = self.bus.get_object(POLKIT_NAME, POLKIT_PATH)
            self.obj.AddMethod(POLKIT_IFACE, 'CheckAuthorization', '(sa{sv})sa{ss}us', '(bba{ss})', script,
                               dbus_interface='org.freedesktop.DBus.Mock')

    def set_allowed(self, actions):
        self.obj.SetAllowed(dbus.Array(actions, signature='s'), dbus_interface='org.freedesktop.DBus.Mock')

    def method_calls(self, name='CheckAuthorization'):
        return self.obj.GetMethodCalls(name, dbus_interface='org.freedesktop.DBus.Mock')

    def wait_hanging(self, caller, timeout=30):
        """Waits until the caller's query hangs in the mock (SimulateHang); fails at once, with the
        caller's output, if the caller gave up first."""
        def hanging():
            if caller.poll() is not None:
                out, err = caller.communicate()
                raise AssertionError('the caller ended before polkit was asked (%d): %s %s' % (
                    caller.returncode, out, err))
            return self.obj.HaveHangingCalls(dbus_interface='org.freedesktop.DBus.Mock')
        harness.wait_until(hanging, timeout, message='the query to reach polkit')

    def stop(self):
        """Stops the mock and waits until its name has left the bus."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        harness.wait_until(lambda: not self.bus.name_has_owner(POLKIT_NAME), 10,
                           message='%s to leave the bus' % POLKIT_NAME)
        self.bus.close()


def wait_name_owner(bus, name, timeout=30.0, check=None):
    """Waits until name has an owner on bus; returns the owner's unique name."""
    def owned():
        if check:
            check()
        try:
            return str(bus.get_name_owner(name))
        except dbus.exceptions.DBusException:
            return None
    return harness.wait_until(owned, timeout, 0.05, message='%s on the bus' % name)


def connection_pid(bus, name):
    return int(bus.call_blocking('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
                                 'GetConnectionUnixProcessID', 's', [name]))


def terminate_pid(pid, timeout=15.0):
    """SIGTERM to a process that is not our child, then SIGKILL if it does not go. True when it went
    on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    try:
        harness.wait_until(lambda: process_gone(pid), timeout, 0.05, message='pid %d to exit' % pid)
        return True
    except harness.WaitTimeout:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return False


class BusDaemon:
    """A dbus-daemon of ours in the foreground (a child, so it can be killed and started again at the
    same address). Services it activates inherit its stderr: the log file."""

    def __init__(self, conf, log_path, env=None):
        self.conf = conf
        self.log_path = log_path
        self.env = env
        self.proc = None
        self.address = None

    def start(self):
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(['dbus-daemon', '--nofork', '--print-address=1',
                                          '--config-file=' + self.conf],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                         env=self.env, preexec_fn=harness._pdeathsig)
        line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.wait(10)
            raise AssertionError('dbus-daemon (%s) did not start: exit %s\n%s' % (
                self.conf, self.proc.returncode, self.log()))
        self.address = line.decode()
        return self.address

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''
