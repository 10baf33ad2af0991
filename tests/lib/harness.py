# SPDX-License-Identifier: LGPL-2.1-or-later
"""The harness every daemon test uses: a private D-Bus (python3-dbusmock 0.28 API), a fake
NOTIFY_SOCKET, the built musicfsd started on temp dirs, waits on conditions (never fixed sleeps) and
cleanup that holds even when a test fails: the daemon is killed, a mount left behind is lazily
unmounted, temp dirs are removed.

Environment:
  MUSICFS_BUILD_ROOT     meson build dir (set by meson test); default <source>/build
  MUSICFS_DAEMON         path of musicfsd, overriding the build dir
  MUSICFS_TEST_WRAPPER   command prefix for the daemon, e.g. "valgrind -q --error-exitcode=99 --"
  MUSICFS_KEEP_TMP=1     keep temp dirs (for post-mortems)
"""

import atexit
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

LIB_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.environ.get('MUSICFS_SOURCE_ROOT') or os.path.dirname(os.path.dirname(LIB_DIR))
BUILD_ROOT = os.environ.get('MUSICFS_BUILD_ROOT') or os.path.join(SOURCE_ROOT, 'build')
DAEMON = os.environ.get('MUSICFS_DAEMON') or os.path.join(BUILD_ROOT, 'daemon', 'musicfsd')

BUS_NAME = 'org.musicfs.Manager'
MANAGER_PATH = '/org/musicfs/Manager'
MANAGER_IFACE = 'org.musicfs.Manager'

EXIT_SKIP = 77

if LIB_DIR not in sys.path:
    sys.path.insert(0, LIB_DIR)


def skip_module(reason):
    """Skips a whole test program the way meson understands: exit status 77."""
    sys.stderr.write('SKIP: %s\n' % reason)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_SKIP)


try:
    import dbus
    import dbusmock
except ImportError as e:  # run with /usr/bin/python3, which has Debian's modules
    skip_module('python3-dbus/python3-dbusmock missing (%s); run with /usr/bin/python3' % e)


def require_fuse():
    """Exit 77 unless we can mount FUSE file systems here (root and an openable /dev/fuse)."""
    if os.geteuid() != 0:
        skip_module('FUSE mounts need root here (euid %d)' % os.geteuid())
    try:
        fd = os.open('/dev/fuse', os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        skip_module('/dev/fuse cannot be opened: %s' % e.strerror)
    os.close(fd)
    if not shutil.which('fusermount3') and not shutil.which('umount'):
        skip_module('neither fusermount3 nor umount found')


def require_program(name):
    path = shutil.which(name)
    if not path:
        skip_module('%s is not installed' % name)
    return path


# --------------------------------------------------------------------------------------------------
# Waiting.

class WaitTimeout(AssertionError):
    pass


def wait_until(predicate, timeout=10.0, interval=0.02, message=None, ignore=()):
    """Polls predicate() until it returns something truthy and returns that; raises WaitTimeout
    after timeout seconds. Exceptions of the types in ignore count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except ignore as e:
            last_exc = e
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, '__name__', 'condition')
            if last_exc is not None:
                what += ' (last error: %s)' % last_exc
            raise WaitTimeout('timed out after %.1f s waiting for %s' % (timeout, what))
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Mounts.

def _unescape_mountinfo(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out = bytearray()
    b = s.encode('utf-8', 'surrogateescape')
    i = 0
    while i < len(b):
        if b[i] == 0x5c and i + 3 < len(b) and all(0x30 <= c <= 0x37 for c in b[i + 1:i + 4]):
            out.append(int(b[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(b[i])
            i += 1
    return os.fsdecode(bytes(out))


def mounts():
    """[(mount point, fs type, source)] from /proc/self/mountinfo."""
    res = []
    with open('/proc/self/mountinfo', encoding='utf-8', errors='surrogateescape') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields = left.split(' ')
            rfields = right.split(' ')
            res.append((_unescape_mountinfo(fields[4]), rfields[0], _unescape_mountinfo(rfields[1])))
    return res


def is_mounted(path, fstype_prefix=None):
    path = os.path.abspath(path)
    for mp, fstype, _ in mounts():
        if mp == path and (fstype_prefix is None or fstype.startswith(fstype_prefix)):
            return True
    return False


def terminate(proc, timeout=10.0):
    """SIGTERM a child that still runs, SIGKILL it after timeout seconds; reaps it either way."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lazy_unmount(path):
    """Detaches path if something is mounted there; True when it is gone afterwards."""
    if not is_mounted(path):
        return True
    for cmd in (['fusermount3', '-u', '-z', path], ['umount', '-l', path]):
        if shutil.which(cmd[0]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not is_mounted(path):
                return True
    return not is_mounted(path)


# --------------------------------------------------------------------------------------------------
# sd_notify.

class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET. Like systemd it reads every
    message as soon as it arrives (on a thread): a full socket queue would block the daemon's
    sd_notify() calls, and its event loop with them."""

    def __init__(self, directory):
        import threading
        self.path = os.path.join(directory, 'notify.sock')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []      # each a list of "KEY=value" lines, in arrival order
        self.arrival = []       # time.monotonic() of each message
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._reader, name='notify-socket', daemon=True)
        self._thread.start()

    def _reader(self):
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._cond:
                self.messages.append(data.decode('utf-8', 'replace').split('\n'))
                self.arrival.append(now)
                self._cond.notify_all()

    def _drain(self):
        """Nothing to do: the reader thread takes messages as they come (kept for callers)."""

    def poll(self, timeout):
        """Waits up to timeout seconds for a new message."""
        with self._cond:
            n = len(self.messages)
            self._cond.wait_for(lambda: len(self.messages) > n, max(0.0, timeout))

    def events(self):
        """[(monotonic arrival time, line)] of every message line."""
        with self._cond:
            return [(t, line) for t, m in zip(self.arrival, self.messages) for line in m if line]

    def lines(self):
        with self._cond:
            return [line for m in self.messages for line in m if line]

    def seen(self, text):
        return text in self.lines()

    def count(self, text):
        return self.lines().count(text)

    def wait_for(self, text, timeout=10.0, check=None):
        """Waits for a message line equal to text (e.g. "READY=1", or a prefix ending in '=' such
        as "STATUS=" to match any value) and returns the line. check() is called between waits and
        may raise (e.g. when the daemon died)."""
        deadline = time.monotonic() + timeout

        def found():
            for line in self.lines():
                if line == text or (text.endswith('=') and line.startswith(text)):
                    return line
            return None
        while True:
            line = found()
            if line:
                return line
            if check:
                check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout('no %r on NOTIFY_SOCKET after %.1f s (got %r)' % (text, timeout, self.lines()))
            with self._cond:
                self._cond.wait(min(left, 0.1))

    def clear(self):
        with self._cond:
            self.messages = []
            self.arrival = []

    def close(self):
        self._closed = True
        self._thread.join()
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------------
# The daemon.

class DaemonFailed(AssertionError):
    pass


def _pdeathsig():
    # The daemon dies with the test process, so that a crashed test leaves no daemon behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


_live_daemons = set()


@atexit.register
def _cleanup_leftovers():
    for d in list(_live_daemons):
        d.cleanup()


class Daemon:
    """One musicfsd. Its files live in a temp work dir: mnt/ (mountpoint), cache/, musicfsd.conf,
    notify.sock, daemon-N.log (one per start)."""

    def __init__(self, origins=(), mountpoint=None, cache_dir=None, extra_args=(), env=None,
                 config_text=None, user_bus=False, bus_address=None, failpoints=None, workdir=None,
                 mountpoint_arg=True):
        self.workdir = workdir or tempfile.mkdtemp(prefix='musicfs-test-')
        self._own_workdir = workdir is None
        self.origins = [os.path.abspath(o) for o in origins]
        self.mountpoint = mountpoint if mountpoint is not None else os.path.join(self.workdir, 'mnt')
        if mountpoint is None:
            os.makedirs(self.mountpoint, exist_ok=True)
        self.cache_dir = cache_dir if cache_dir is not None else os.path.join(self.workdir, 'cache')
        if cache_dir is None:
            os.makedirs(self.cache_dir, exist_ok=True)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.user_bus = user_bus
        self.bus_address = bus_address or os.environ.get(
            'DBUS_SESSION_BUS_ADDRESS' if user_bus else 'DBUS_SYSTEM_BUS_ADDRESS')
        self.failpoints = failpoints
        # False: the mountpoint comes from the config file, not the command line.
        self.mountpoint_arg = mountpoint_arg
        self.config_path = None
        if config_text is not None:
            self.config_path = os.path.join(self.workdir, 'musicfsd.conf')
            with open(self.config_path, 'w', encoding='utf-8') as f:
                f.write(config_text)
        self.proc = None
        self.notify = None
        self.log_path = None
        self.logs = []
        self._saved_logs = {}
        self.returncode = None
        self._bus = None
        _live_daemons.add(self)

    # -- command line
    def argv(self):
        wrapper = shlex.split(os.environ.get('MUSICFS_TEST_WRAPPER', ''))
        args = wrapper + [DAEMON]
        if self.config_path:
            args += ['--config', self.config_path]
        for o in self.origins:
            args += ['--origin', o]
        if self.cache_dir:
            args += ['--cache-dir', self.cache_dir]
        if self.user_bus:
            args.append('--user')
        args += self.extra_args
        if self.mountpoint and self.mountpoint_arg:
            args.append(self.mountpoint)
        return args

    def environment(self):
        env = dict(os.environ)
        if self.notify:
            env['NOTIFY_SOCKET'] = self.notify.path
        if self.bus_address:
            env['DBUS_SESSION_BUS_ADDRESS' if self.user_bus else 'DBUS_SYSTEM_BUS_ADDRESS'] = self.bus_address
        if self.failpoints is not None:
            env['MUSICFS_FAILPOINTS'] = self.failpoints
        env.update(self.env)
        return env

    # -- lifecycle
    def start(self, wait_ready=True, timeout=30.0):
        if self.proc and self.proc.poll() is None:
            raise RuntimeError('daemon already running')
        if not os.access(DAEMON, os.X_OK):
            raise DaemonFailed('%s is not built (set MUSICFS_BUILD_ROOT)' % DAEMON)
        if self.notify:
            self.notify.close()
        self.notify = NotifySocket(self.workdir)
        self._bus = None
        self.returncode = None
        self.log_path = os.path.join(self.workdir, 'daemon-%d.log' % (len(self.logs) + 1))
        self.logs.append(self.log_path)
        with open(self.log_path, 'wb') as logf:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=self.environment(),
                                         preexec_fn=_pdeathsig)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _check_alive(self):
        rc = self.proc.poll()
        if rc is not None:
            self.returncode = rc
            raise DaemonFailed('musicfsd exited with %s before it was ready\n%s' % (
                _describe_rc(rc), self.describe()))

    def wait_ready(self, timeout=30.0):
        try:
            self.notify.wait_for('READY=1', timeout, check=self._check_alive)
        except WaitTimeout as e:
            raise DaemonFailed('%s\n%s' % (e, self.describe())) from None
        if self.mountpoint and not is_mounted(self.mountpoint):
            raise DaemonFailed('READY=1 sent but %s is not mounted\n%s' % (self.mountpoint, self.describe()))

    def run_to_exit(self, timeout=30.0):
        """Starts the daemon without waiting for readiness and waits for it to exit.
        Returns (exit code, output)."""
        self.start(wait_ready=False)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise DaemonFailed('musicfsd did not exit within %.0f s\n%s' % (timeout, self.describe()))
        self.returncode = rc
        return rc, self.log()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends sig and waits for the exit; returns the exit code (negative: killed by a signal).
        Raises DaemonFailed (after SIGKILL) if it does not exit in time."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise DaemonFailed('musicfsd did not exit within %.0f s of signal %d\n%s' % (
                    timeout, sig, self.describe())) from None
        self.returncode = self.proc.returncode
        return self.returncode

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            self.returncode = self.proc.returncode
        return self.returncode

    def restart(self, wait_ready=True, timeout=30.0):
        rc = self.stop()
        if rc != 0:
            raise DaemonFailed('musicfsd exited with %s on SIGTERM\n%s' % (_describe_rc(rc), self.describe()))
        return self.start(wait_ready, timeout)

    def cleanup(self):
        """Never raises: kill, unmount, remove temp dirs."""
        try:
            terminate(self.proc)
        except OSError:
            pass
        if self.mountpoint:
            lazy_unmount(self.mountpoint)
        if self.notify:
            self.notify.close()
            self.notify = None
        if self._bus is not None:
            try:
                self._bus.close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
            self._bus = None
        if self._own_workdir and not os.environ.get('MUSICFS_KEEP_TMP'):
            # The logs outlive the work dir, for the report of a failed test.
            self._saved_logs = {p: self._read_log(p) for p in self.logs}
            safe_rmtree(self.workdir)
        _live_daemons.discard(self)

    # -- output
    def _read_log(self, path):
        try:
            with open(path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return self._saved_logs.get(path, '')

    def log(self, which=-1):
        """The output of the current (or the which-th) run."""
        if not self.logs:
            return ''
        return self._read_log(self.logs[which])

    def all_logs(self):
        return ''.join(self.log(i) for i in range(len(self.logs)))

    def describe(self, tail=200):
        lines = self.log().splitlines() if self.logs else []
        cmd = ' '.join(shlex.quote(a) for a in self.argv())
        return 'command: %s\nlog %s (last %d lines):\n%s' % (
            cmd, self.log_path, min(tail, len(lines)), '\n'.join(lines[-tail:]))

    # -- D-Bus
    @property
    def bus(self):
        if self._bus is None:
            if not self.bus_address:
                raise RuntimeError('no bus address: start a private bus first')
            self._bus = dbus.bus.BusConnection(self.bus_address)
        return self._bus

    def manager(self):
        return self.bus.get_object(BUS_NAME, MANAGER_PATH, introspect=False)

    def bus_get(self, prop, iface=MANAGER_IFACE, path=MANAGER_PATH):
        obj = self.bus.get_object(BUS_NAME, path, introspect=False)
        return obj.Get(iface, prop, dbus_interface='org.freedesktop.DBus.Properties', timeout=10)

    def bus_get_all(self, iface=MANAGER_IFACE, path=MANAGER_PATH):
        obj = self.bus.get_object(BUS_NAME, path, introspect=False)
        return obj.GetAll(iface, dbus_interface='org.freedesktop.DBus.Properties', timeout=10)

    def bus_call(self, method, signature='', *args, iface=MANAGER_IFACE, path=MANAGER_PATH, timeout=30):
        obj = self.bus.get_object(BUS_NAME, path, introspect=False)
        return obj.get_dbus_method(method, iface)(*args, signature=signature, timeout=timeout)

    def wait_tracks(self, n, timeout=60.0):
        """Waits until the TrackCount property equals n."""
        last = [None]

        def reached():
            self._check_running()
            last[0] = int(self.bus_get('TrackCount'))
            return last[0] == n
        try:
            wait_until(reached, timeout, 0.05, ignore=(dbus.DBusException,))
        except WaitTimeout as e:
            raise DaemonFailed('%s: TrackCount is %s, want %d\n%s' % (e, last[0], n, self.describe())) from None

    # The daemon says when a scan of an origin is over in its log (manager.c, info level, once the
    # tree shows what it found) and with the ScanFinished signal.
    SCAN_DONE = r'Origin \S+: scanned \d+ files|Scan of origin \S+ (?:failed|cancelled)'

    def wait_log(self, pattern, timeout=30.0, count=1):
        """Waits until the current run's log has count lines matching the regex pattern; returns
        the matching lines."""
        import re
        rx = re.compile(pattern)

        def matched():
            lines = [line for line in self.log().splitlines() if rx.search(line)]
            if len(lines) >= count:
                return lines
            if not self.running():
                raise DaemonFailed('musicfsd died waiting for /%s/ in its log\n%s' % (pattern, self.describe()))
            return None
        try:
            return wait_until(matched, timeout, 0.05, message='/%s/ in the log' % pattern)
        except WaitTimeout as e:
            raise DaemonFailed('%s\n%s' % (e, self.describe())) from None

    def wait_scan_done(self, n_origins=None, timeout=120.0):
        """Waits until every origin (or n_origins of them) finished its scan in this run."""
        return self.wait_log(self.SCAN_DONE, timeout, n_origins or max(1, len(self.origins)))

    def _check_running(self):
        if not self.running():
            raise DaemonFailed('musicfsd died (%s)\n%s' % (_describe_rc(self.proc.poll()), self.describe()))

    # -- the mounted tree
    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def is_mounted(self):
        return is_mounted(self.mountpoint)

    def wait_unmounted(self, timeout=10.0):
        wait_until(lambda: not self.is_mounted(), timeout, message='%s to be unmounted' % self.mountpoint)


def _describe_rc(rc):
    if rc is None:
        return 'no exit'
    if rc < 0:
        try:
            return 'signal %s' % signal.Signals(-rc).name
        except ValueError:
            return 'signal %d' % -rc
    return 'status %d' % rc


def safe_rmtree(path):
    """rmtree that never descends into a mount (a stale FUSE mount would hang or fail it)."""
    if not os.path.lexists(path):
        return
    for mp, _, _ in mounts():
        if mp == path or mp.startswith(path.rstrip('/') + '/'):
            lazy_unmount(mp)
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# A small disk of its own: a tmpfs, for disk-full and read-only faults.

class Tmpfs:
    """A tmpfs of size bytes mounted on a new temp dir (root only). remount() flips it read-only and
    back; usage() is what statvfs (and df) say. unmount() is idempotent and never raises."""

    def __init__(self, size, prefix='musicfs-tmpfs-', path=None):
        self._own_dir = path is None
        self.path = tempfile.mkdtemp(prefix=prefix) if path is None else path
        self.size = size
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%d,mode=0755' % size, 'tmpfs', self.path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            if self._own_dir:
                os.rmdir(self.path)
            raise OSError('mount -t tmpfs failed: %s' % r.stdout.decode('utf-8', 'replace').strip())

    def remount(self, read_only):
        """True when done; False when the kernel refused (going read-only fails with EBUSY while a file
        on it is open for writing)."""
        r = subprocess.run(['mount', '-o', 'remount,%s' % ('ro' if read_only else 'rw'), self.path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return r.returncode == 0

    def usage(self):
        """(used bytes, total bytes, used percent as df shows it)."""
        st = os.statvfs(self.path)
        total = st.f_blocks * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return used, total, 100.0 * used / total if total else 0.0

    def unmount(self):
        if self.path is None:
            return
        if is_mounted(self.path):
            subprocess.run(['umount', '-l', self.path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not is_mounted(self.path):
            if self._own_dir:
                shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


# --------------------------------------------------------------------------------------------------
# Libraries shared between the tests of one process.

_sample_cache = {}


def sample_library():
    """The genlib sample library, generated once per test process (read-only: copy it to change it).
    Returns its directory."""
    import genlib
    if 'sample' not in _sample_cache:
        d = tempfile.mkdtemp(prefix='musicfs-sample-')
        atexit.register(safe_rmtree, d)
        genlib.gen_sample(os.path.join(d, 'lib'))
        _sample_cache['sample'] = os.path.join(d, 'lib')
    return _sample_cache['sample']


def expected_dirs(paths):
    """Every directory (relative) above the given relative file paths."""
    dirs = set()
    for p in paths:
        d = os.path.dirname(p)
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    return dirs


def walk_tree(root):
    """{relative path: os.stat_result} of everything below root (files and dirs, not root)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def file_digest(path, chunk=1 << 20):
    import hashlib
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


@contextlib.contextmanager
def private_system_bus():
    """A dbus-daemon of our own as the system bus (DBUS_SYSTEM_BUS_ADDRESS) while the block runs:
    what the benches start their daemons on. At the end, whatever happens, the daemons still running
    are stopped first, then the bus, and its address is unset."""
    dbusmock.DBusTestCase.start_system_bus()
    try:
        yield
    finally:
        for d in list(_live_daemons):
            d.cleanup()
        pid = dbusmock.DBusTestCase.system_bus_pid
        if pid:
            dbusmock.DBusTestCase.stop_dbus(pid)
            dbusmock.DBusTestCase.system_bus_pid = None
        os.environ.pop('DBUS_SYSTEM_BUS_ADDRESS', None)


# --------------------------------------------------------------------------------------------------

class MusicfsTestCase(dbusmock.DBusTestCase):
    """Base class: a private system bus per test class, daemons and temp dirs per test, all cleaned
    up whatever happens; on failure the daemon logs are printed."""

    # True: also start a private session bus, for Daemon(user_bus=True).
    with_session_bus = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_system_bus()
        cls.system_bus = cls.get_dbus(system_bus=True)
        if cls.with_session_bus:
            cls.start_session_bus()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.system_bus.close()
        except Exception:  # noqa: BLE001
            pass
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.daemons = []
        # Registered first, so it runs last: the logs are still there.
        self.addCleanup(self._dump_logs_on_failure)

    def _failed(self):
        # Inside a cleanup, _outcome.success describes the cleanup itself; the result object already
        # holds the test's failures (Python >= 3.11 adds them as they happen).
        result = getattr(getattr(self, '_outcome', None), 'result', None)
        if result is None:
            return False
        return any(t is self for t, _ in list(result.failures) + list(result.errors))

    def _dump_logs_on_failure(self):
        if not self._failed():
            return
        for d in self.daemons:
            for i, p in enumerate(d.logs):
                sys.stderr.write('\n===== %s: musicfsd log %d (%s) =====\ncommand: %s\n%s\n' % (
                    self.id(), i + 1, p, ' '.join(shlex.quote(a) for a in d.argv()), d.log(i)))

    def tempdir(self, prefix='musicfs-test-'):
        d = tempfile.mkdtemp(prefix=prefix)
        if not os.environ.get('MUSICFS_KEEP_TMP'):
            self.addCleanup(safe_rmtree, d)
        return d

    def tmpfs(self, size, path=None):
        """A Tmpfs of size bytes (on path, an existing directory, if given), unmounted after the test
        (after the daemons started later stop)."""
        if os.geteuid() != 0:
            self.skipTest('mounting a tmpfs needs root')
        t = Tmpfs(size, path=path)
        self.addCleanup(t.unmount)
        return t

    def daemon(self, origins=(), start=True, **kwargs):
        """A Daemon cleaned up after the test; started (and READY) unless start=False."""
        d = Daemon(origins=origins, **kwargs)
        self.addCleanup(d.cleanup)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def assertDaemonStops(self, d, sig=signal.SIGTERM, timeout=10.0):
        rc = d.stop(sig, timeout)
        self.assertEqual(rc, 0, 'musicfsd exited with %s\n%s' % (_describe_rc(rc), d.describe()))
        self.assertFalse(d.is_mounted(), '%s still mounted after exit' % d.mountpoint)


def main():
    """Entry point of a test program (after require_fuse() and friends, which exit 77)."""
    unittest.main(verbosity=2)
