# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers of the bus suite on top of tests/lib/harness.py: a recorder of the daemon's signals that
waits on conditions with deadlines (never fixed sleeps), the D-Bus error assertion, and a raw D-Bus
client that can send what libdbus refuses to (strings that are not UTF-8)."""

import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

import dbus  # noqa: E402
import dbus.mainloop.glib  # noqa: E402
from gi.repository import GLib  # noqa: E402

ERR = 'org.musicfs.Error.'
DBUS_ERR = 'org.freedesktop.DBus.Error.'
PROPS = 'org.freedesktop.DBus.Properties'
OBJECT_MANAGER = 'org.freedesktop.DBus.ObjectManager'
ORIGIN_IFACE = 'org.musicfs.Origin'
ORIGIN_PREFIX = '/org/musicfs/Manager/origin/'


def origin_path(name):
    """sd_bus_path_encode(): every byte but [A-Za-z0-9] becomes _XX."""
    out = []
    for b in name.encode('utf-8'):
        c = chr(b)
        out.append(c if c.isascii() and c.isalnum() else '_%02x' % b)
    return ORIGIN_PREFIX + ''.join(out)


def plain(v):
    """dbus-python values as plain Python values, for comparisons."""
    if isinstance(v, (dbus.Boolean,)):
        return bool(v)
    if isinstance(v, (dbus.String, dbus.ObjectPath)):
        return str(v)
    if isinstance(v, (dbus.Byte, dbus.Int16, dbus.Int32, dbus.Int64, dbus.UInt16, dbus.UInt32, dbus.UInt64)):
        return int(v)
    if isinstance(v, dbus.Double):
        return float(v)
    if isinstance(v, (dbus.Array, list)):
        return [plain(x) for x in v]
    if isinstance(v, (dbus.Struct, tuple)):
        return tuple(plain(x) for x in v)
    if isinstance(v, (dbus.Dictionary, dict)):
        return {plain(k): plain(x) for k, x in v.items()}
    return v


class Recorder:
    """Every signal the daemon sends, on a connection of its own with a GLib main loop. Subscribe
    before the action whose signals you want, then wait_for() a condition on what arrived."""

    def __init__(self, address):
        self.ctx = GLib.MainContext.default()
        self.bus = dbus.bus.BusConnection(address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.signals = []       # (path, interface, member, [args]) in arrival order
        # Not filtered by sender: a signal sent before the daemon owns its name must count too.
        self.bus.add_signal_receiver(self._on_signal, path_keyword='path', interface_keyword='interface',
                                     member_keyword='member')
        # A round trip: the bus has the match rule before we go on.
        self.bus.call_blocking('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus', 'GetId', '', [])

    def _on_signal(self, *args, path=None, interface=None, member=None):
        if not str(path).startswith(harness.MANAGER_PATH):
            return
        self.signals.append((str(path), str(interface), str(member), [plain(a) for a in args]))

    def pump(self):
        while self.ctx.iteration(False):
            pass

    def mark(self):
        """An index into the recording, to look only at what comes after it."""
        self.pump()
        return len(self.signals)

    def select(self, member=None, path=None, interface=None, since=0):
        self.pump()
        return [(p, i, m, a) for p, i, m, a in self.signals[since:]
                if (member is None or m == member) and (path is None or p == path)
                and (interface is None or i == interface)]

    def changes(self, prop, path=harness.MANAGER_PATH, interface=harness.MANAGER_IFACE, since=0):
        """The values prop took in PropertiesChanged of (path, interface), in order."""
        out = []
        for _, _, _, args in self.select('PropertiesChanged', path, PROPS, since):
            if args[0] == interface and prop in args[1]:
                out.append(args[1][prop])
        return out

    def wait_for(self, predicate, timeout=30.0, message=None):
        """Pumps the main loop until predicate() is truthy; returns its value."""
        def check():
            self.pump()
            return predicate()
        return harness.wait_until(check, timeout, 0.01, message=message or 'a signal (got %r)' % self.signals[-20:])

    def wait_change(self, prop, value, path=harness.MANAGER_PATH, interface=harness.MANAGER_IFACE, since=0,
                    timeout=30.0):
        return self.wait_for(lambda: value in self.changes(prop, path, interface, since), timeout,
                             'PropertiesChanged %s=%r on %s (got %r)' % (
                                 prop, value, path, self.changes(prop, path, interface, since)))

    def wait_signal(self, member, args=None, path=None, since=0, timeout=30.0):
        """Waits for a signal member (whose args equal args, when given); returns its args."""
        def found():
            for _, _, _, a in self.select(member, path, None, since):
                if args is None or a == list(args):
                    return a
            return None
        return self.wait_for(found, timeout, '%s%s (got %r)' % (member, '' if args is None else tuple(args),
                                                                 self.select(member, since=since)))

    def call_async(self, method, signature, *args, path=harness.MANAGER_PATH, iface=harness.MANAGER_IFACE):
        """Starts a call; returns a dict whose 'reply' or 'error' is filled when the answer comes."""
        result = {}
        obj = self.bus.get_object(harness.BUS_NAME, path, introspect=False)
        obj.get_dbus_method(method, iface)(*args, signature=signature, timeout=60,
                                           reply_handler=lambda *r: result.setdefault('reply', [plain(x) for x in r]),
                                           error_handler=lambda e: result.setdefault('error', e))
        return result

    def close(self):
        self.bus.close()


# --------------------------------------------------------------------------------------------------
# A raw D-Bus client (little endian, EXTERNAL auth), for messages libdbus will not build.

def _pad(buf, n):
    while len(buf) % n:
        buf.append(0)


def marshal_call(serial, destination, path, interface, member, signature='', body=b''):
    buf = bytearray(b'l\x01\x00\x01') + struct.pack('<II', len(body), serial) + b'\0\0\0\0'
    start = len(buf)
    fields = [(1, 'o', path), (2, 's', interface), (3, 's', member), (6, 's', destination)]
    if signature:
        fields.append((8, 'g', signature))
    for code, sig, value in fields:
        _pad(buf, 8)
        buf += bytes([code, 1]) + sig.encode() + b'\0'
        v = value.encode()
        if sig == 'g':
            buf += bytes([len(v)]) + v + b'\0'
        else:
            _pad(buf, 4)
            buf += struct.pack('<I', len(v)) + v + b'\0'
    struct.pack_into('<I', buf, 12, len(buf) - start)
    _pad(buf, 8)
    return bytes(buf + body)


def marshal_string(b):
    """A D-Bus string of raw bytes (valid UTF-8 or not), as the first item of a body."""
    return struct.pack('<I', len(b)) + b + b'\0'


def _unix_path(address):
    for part in address.split(';'):
        if not part.startswith('unix:'):
            continue
        kv = dict(x.split('=', 1) for x in part[5:].split(',') if '=' in x)
        if 'path' in kv:
            return kv['path']
        if 'abstract' in kv:
            return '\0' + kv['abstract']
    raise ValueError('no unix socket in %s' % address)


def _reply_serials(data):
    """The REPLY_SERIAL of every complete little-endian message in data."""
    out = []
    at = 0
    while len(data) - at >= 16:
        if data[at:at + 1] != b'l':
            break
        body_len, _, fields_len = struct.unpack_from('<III', data, at + 4)
        # Alignment is relative to the start of each message; messages follow each other unpadded.
        header_end = at + 16 + fields_len
        end = header_end + (-(header_end - at) % 8) + body_len
        if end > len(data):
            break
        f = at + 16
        while f < header_end:
            f += -(f - at) % 8
            code, sig_len = data[f], data[f + 1]
            sig = data[f + 2:f + 2 + sig_len]
            f += 2 + sig_len + 1
            if sig in (b'u', b'o', b's'):
                f += -(f - at) % 4
            if sig == b'u':
                if code == 5:
                    out.append(struct.unpack_from('<I', data, f)[0])
                f += 4
            elif sig in (b'o', b's'):
                n = struct.unpack_from('<I', data, f)[0]
                f += 4 + n + 1
            elif sig == b'g':
                f += 1 + data[f] + 1
            else:
                break
        at = end
    return out


def send_raw(address, messages, timeout=10.0):
    """Connects, authenticates, says Hello, sends each marshalled message (give them serials 2, 3,
    ...) and reads until the last one is answered or the bus closes the connection (it does, on a
    message it finds malformed). Returns (answered, closed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(_unix_path(address))
    try:
        s.sendall(b'\0AUTH EXTERNAL ' + str(os.geteuid()).encode().hex().encode() + b'\r\n')
        line = b''
        while not line.endswith(b'\r\n'):
            chunk = s.recv(1)
            if not chunk:
                raise ConnectionError('the bus closed the connection during authentication')
            line += chunk
        if not line.startswith(b'OK '):
            raise ConnectionError('authentication refused: %r' % line)
        s.sendall(b'BEGIN\r\n')
        s.sendall(marshal_call(1, 'org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus', 'Hello'))
        for m in messages:
            s.sendall(m)
        got = b''
        last = len(messages) + 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                return False, True
            if not chunk:
                return False, True
            got += chunk
            if last in _reply_serials(got):
                return True, False
        raise harness.WaitTimeout('no answer to the raw call and no disconnection within %.0f s' % timeout)
    finally:
        s.close()
