# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the resilience suite needs on top of tests/lib/harness.py: failpoints over D-Bus, readers in
threads that can be left blocked in the kernel, arrival times of sd_notify messages, waiting for the
end of a scan, libraries shared by the tests of one process, a daemon under a file-descriptor
limit, and the chunk cache: its figures over the bus, its files on disk, libraries of noise that
never dedup, and a daemon without CAP_DAC_OVERRIDE (so file modes bind it). The daemon is driven
only through D-Bus and signals; its log and its notify messages are read, never written."""

import atexit
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import dbus  # noqa: E402
import genlib  # noqa: E402

# errnos a reader may see from a mount whose daemon is gone (killed, or exiting at once).
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV, errno.EIO)


# --------------------------------------------------------------------------------------------------
# Failpoints over D-Bus.

def fp_list(d):
    """{name: (armed actions, fired count)} from ListFailpoints."""
    return {str(n): (str(a), int(f)) for n, a, f in d.bus_call('ListFailpoints', timeout=10)}


def fp_fired(d, name):
    return fp_list(d)[name][1]


def fp_arm(d, name, actions):
    d.bus_call('ArmFailpoint', 'ss', name, actions, timeout=10)


def fp_disarm(d, name):
    d.bus_call('DisarmFailpoint', 's', name, timeout=10)


def wait_fired(d, name, n, timeout=20.0):
    """Waits until failpoint name has fired at least n times; returns the count."""
    last = [None]

    def reached():
        d._check_running()
        last[0] = fp_fired(d, name)
        return last[0] >= n
    try:
        harness.wait_until(reached, timeout, 0.02, ignore=(dbus.DBusException,))
    except harness.WaitTimeout as e:
        raise harness.DaemonFailed('%s: failpoint %s fired %s times, want %d\n%s' % (
            e, name, last[0], n, d.describe())) from None
    return last[0]


# --------------------------------------------------------------------------------------------------
# The daemon's own account of what it did.

# The manager logs these once the tree shows what the scan found (manager.c, worker_scan_one).
_SCAN_END = re.compile(r'^musicfsd: \w+: (?:[a-z_]+: )?(?:Origin \S+: scanned \d+ files|Scan of origin \S+ (?:failed|cancelled))',
                       re.M)


def scans_finished(d):
    """Scans of an origin that ended (done, failed or cancelled) since the daemon's last start."""
    return len(_SCAN_END.findall(d.log()))


def status_lines(d):
    return [line[len('STATUS='):] for line in d.notify.lines() if line.startswith('STATUS=')]


def wait_scan_done(d, n_origins=1, timeout=120.0):
    """Waits until the startup scan of every origin has ended: the daemon logged the end of each, or
    it said "Serving" on NOTIFY_SOCKET after it had said "Scanning"."""
    def done():
        d._check_running()
        if scans_finished(d) >= n_origins:
            return True
        st = status_lines(d)
        return bool(st) and st[-1].startswith('Serving') and any(s.startswith('Scanning') for s in st)
    try:
        harness.wait_until(done, timeout, 0.05)
    except harness.WaitTimeout as e:
        raise harness.DaemonFailed('%s: the scan did not end\n%s' % (e, d.describe())) from None


def log_after(d, marker, which=-1):
    """The part of a daemon log after the first line containing marker ('' if none)."""
    text = d.log(which)
    i = text.find(marker)
    return text[i:] if i >= 0 else ''


def wait_log(d, pattern, timeout=20.0, which=-1, check_running=True):
    """Waits for a regular expression in the daemon's log; returns the match."""
    rx = re.compile(pattern, re.M)

    def found():
        if check_running and which == -1:
            d._check_running()
        return rx.search(d.log(which))
    try:
        return harness.wait_until(found, timeout, 0.05)
    except harness.WaitTimeout as e:
        raise harness.DaemonFailed('%s: no /%s/ in the log\n%s' % (e, pattern, d.describe())) from None


def name_has_owner(d):
    return bool(d.bus.name_has_owner(harness.BUS_NAME))


def wait_exit(d, timeout):
    """Waits for the daemon to exit by itself; returns (exit code, seconds it took)."""
    t0 = time.monotonic()
    try:
        rc = d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        d.kill9()
        raise harness.DaemonFailed('musicfsd did not exit within %.1f s\n%s' % (timeout, d.describe())) from None
    d.returncode = rc
    return rc, time.monotonic() - t0


# --------------------------------------------------------------------------------------------------
# sd_notify with arrival times.

class NotifyClock:
    """Timestamps the datagrams of a daemon's NotifySocket as they arrive. Only accurate while
    nothing else reads that socket: use poll_for() to wait."""

    def __init__(self, notify):
        self.notify = notify
        self.seen = len(notify.messages)
        self.events = []        # (monotonic time, line)

    def update(self):
        self.notify._drain()
        now = time.monotonic()
        for m in self.notify.messages[self.seen:]:
            for line in m:
                if line:
                    self.events.append((now, line))
        self.seen = len(self.notify.messages)

    def poll_for(self, seconds, stop=None):
        """Collects for seconds (or until stop() is true)."""
        deadline = time.monotonic() + seconds
        while True:
            self.update()
            if stop and stop():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.notify.poll(min(left, 0.02))

    def times(self, line, start=None, end=None):
        return [t for t, l in self.events if l == line and (start is None or t >= start) and (end is None or t < end)]


# --------------------------------------------------------------------------------------------------
# Readers.

class ThreadLoad:
    """Threads running self.run(index) until self.stop is set, as a context manager: started on
    entry, stopped and joined (30 s each at most) on exit. Subclasses set their state, then call
    ThreadLoad.__init__()."""

    def __init__(self, threads):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, index):
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30.0)


class Reader(threading.Thread):
    """Reads a whole file (open, read to EOF, close) in a daemon thread, so that a reader stuck in a
    FUSE request never keeps the test process alive. Records data, errno and timings."""

    def __init__(self, path, chunk=None, hold=None):
        super().__init__(daemon=True)
        self.path = path
        self.chunk = chunk
        self.hold = hold        # an Event: keep the file open until it is set
        self.data = None
        self.error = None       # OSError
        self.started_at = None
        self.finished_at = None
        self.done = threading.Event()

    def run(self):
        self.started_at = time.monotonic()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                parts = []
                while True:
                    b = os.read(fd, self.chunk or (1 << 20))
                    if not b:
                        break
                    parts.append(b)
                self.data = b''.join(parts)
                if self.hold is not None:
                    self.hold.wait()
            finally:
                os.close(fd)
        except OSError as e:
            self.error = e
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    @property
    def seconds(self):
        return self.finished_at - self.started_at

    def wait(self, timeout):
        return self.done.wait(timeout)


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def stat_errno(path):
    """0 if stat() works, else its errno."""
    try:
        os.stat(path)
        return 0
    except OSError as e:
        return e.errno


def listdir_errno(path):
    """0 if the filesystem at path answers and lists it, else the errno. stat() and even a listing
    may be answered from the kernel's caches (attributes, and listings, which the daemon lets the
    kernel keep), but statfs always asks the daemon: a dead mount answers ENOTCONN."""
    try:
        os.statvfs(path)
        os.listdir(path)
        return 0
    except OSError as e:
        return e.errno


def tree_inodes(root):
    """{relative path: (inode, is dir, size of a file)} of everything below root."""
    out = {}
    for p, st in harness.walk_tree(root).items():
        is_dir = (st.st_mode & 0o170000) == 0o040000
        out[p] = (st.st_ino, is_dir, None if is_dir else st.st_size)
    return out


def tree_files(root):
    return {p for p, st in harness.walk_tree(root).items() if (st.st_mode & 0o170000) == 0o100000}


# --------------------------------------------------------------------------------------------------
# Libraries.

_libs = {}


def _tmp(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    atexit.register(harness.safe_rmtree, d)
    return d


def bulk_library(count):
    """A genlib bulk library of count tracks, made once per process (read-only). Returns its dir."""
    key = ('bulk', count)
    if key not in _libs:
        d = os.path.join(_tmp('musicfs-bulk-'), 'lib')
        genlib.gen_bulk(d, count)
        _libs[key] = d
    return _libs[key]


def library_copy(src, testcase):
    """A private, writable copy of a library (removed after the test). Returns its dir."""
    d = os.path.join(testcase.tempdir('musicfs-lib-'), 'lib')
    shutil.copytree(src, d, symlinks=True)
    return d


def origin_files(lib):
    """{virtual path: absolute origin path} of a generated library."""
    return {v: os.path.join(lib, r) for v, r in genlib.load_expected(lib).items()}


def smallest(files, n=1, exclude=()):
    """The n virtual paths whose origin files are smallest (so one FUSE read covers each)."""
    cand = sorted((os.path.getsize(o), v) for v, o in files.items() if v not in exclude)
    return [v for _, v in cand[:n]]


# --------------------------------------------------------------------------------------------------
# A daemon under resource limits.

class LimitedDaemon(harness.Daemon):
    """A Daemon started through prlimit(1) with RLIMIT_NOFILE=nofile (prlimit execs it, so the PID is
    the daemon's)."""

    def __init__(self, *args, nofile=64, **kwargs):
        super().__init__(*args, **kwargs)
        self.nofile = nofile

    def argv(self):
        return [shutil.which('prlimit') or 'prlimit', '--nofile=%d:%d' % (self.nofile, self.nofile), '--'] + super().argv()


def limited_daemon(testcase, origins, nofile, start=True, **kwargs):
    d = LimitedDaemon(origins=origins, nofile=nofile, **kwargs)
    testcase.addCleanup(d.cleanup)
    testcase.daemons.append(d)
    if start:
        d.start()
    return d


def fd_count(pid):
    return len(os.listdir('/proc/%d/fd' % pid))



# --------------------------------------------------------------------------------------------------
# The chunk cache (D7-D9, D11): its figures over the bus, its files on disk, libraries of noise.

def cache_config(budget='64M', maintenance_interval=1, readahead=0, extra=''):
    """The text of a musicfsd.conf with a [cache] section (maintenance every second by default, so a
    fault or a recovery is noticed at once)."""
    return '[cache]\nbudget = %s\nreadahead = %d\nmaintenance_interval = %d\n%s' % (
        budget, readahead, maintenance_interval, extra)


def _py(v):
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, (dbus.Double, float)):
        return float(v)
    if isinstance(v, (dbus.String, str)):
        return str(v)
    return int(v)


def cache_stats(d):
    """GetCacheStats as a dict of plain Python values."""
    return {str(k): _py(v) for k, v in d.bus_call('GetCacheStats', timeout=10).items()}


def verify_cache(d, repair=False, timeout=300):
    """VerifyCache(repair) as a dict: checked, bad, missing, orphans, repaired."""
    return {str(k): _py(v) for k, v in d.bus_call('VerifyCache', 'b', repair, timeout=timeout).items()}


def wait_stats(d, predicate, timeout=30.0, message='cache stats'):
    """Waits until predicate(GetCacheStats) is true; returns those stats."""
    last = [None]

    def ok():
        d._check_running()
        last[0] = cache_stats(d)
        return last[0] if predicate(last[0]) else None
    try:
        return harness.wait_until(ok, timeout, 0.05, ignore=(dbus.DBusException,))
    except harness.WaitTimeout as e:
        raise harness.DaemonFailed('%s: %s; last stats %r\n%s' % (e, message, last[0], d.describe())) from None


def wait_fills_idle(d, timeout=60.0):
    return wait_stats(d, lambda s: s['fills-active'] == 0 and s['fills-queued'] == 0, timeout,
                      'fills still running')


def wait_passthrough(d, on, reason=None, timeout=30.0):
    """Waits until the cache's passthrough is on (with that reason, if given) or off."""
    def want(s):
        if not on:
            return not s['passthrough'] and s['passthrough-reason'] == 'none'
        return s['passthrough'] and (reason is None or s['passthrough-reason'] == reason)
    return wait_stats(d, want, timeout, 'passthrough %s (%s)' % ('on' if on else 'off', reason or 'any reason'))


def wait_state(d, state, timeout=30.0):
    last = [None]

    def ok():
        d._check_running()
        last[0] = str(d.bus_get('State'))
        return last[0] == state
    try:
        harness.wait_until(ok, timeout, 0.05, ignore=(dbus.DBusException,))
    except harness.WaitTimeout as e:
        raise harness.DaemonFailed('%s: State is %r, want %r\n%s' % (e, last[0], state, d.describe())) from None


def read_fresh(path, offset=0, size=None):
    """Reads a file (or a range) past the kernel's page cache (the mount keeps it), so the daemon
    answers every byte."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if size is None:
            size = os.fstat(fd).st_size - offset
        parts = []
        while size > 0:
            b = os.pread(fd, min(size, 1 << 20), offset)
            if not b:
                break
            parts.append(b)
            offset += len(b)
            size -= len(b)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return b''.join(parts)
    finally:
        os.close(fd)


_origin_bytes = {}


def origin_bytes(path):
    """The bytes of an origin file (read once; the tests never change them)."""
    if path not in _origin_bytes:
        _origin_bytes[path] = read_file(path)
    return _origin_bytes[path]


def write_noise_wavs(root, sizes, seed, prefix='noise'):
    """WAV files of random noise (every chunk unique, so nothing dedups) of the given sizes in root.
    Untagged, so each renders as Unknown Artist/Unknown Album/<stem>.wav.
    Returns {virtual path: origin path}."""
    import random
    import wave
    os.makedirs(root, exist_ok=True)
    rng = random.Random(seed)
    files = {}
    for i, size in enumerate(sizes):
        stem = '%s-%02d' % (prefix, i + 1)
        path = os.path.join(root, stem + '.wav')
        w = wave.open(path, 'wb')
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(rng.randbytes(max(4, (size - 44) // 4 * 4)))
        w.close()
        files[genlib.render({}, stem, 'wav')] = path
    return files


def noise_library(testcase, sizes, seed=1, prefix='noise'):
    """write_noise_wavs() into a private library of the test. Returns (dir, {virtual path: origin path})."""
    d = os.path.join(testcase.tempdir('musicfs-noise-'), 'lib')
    return d, write_noise_wavs(d, sizes, seed, prefix)


def chunks_dir(d):
    return os.path.join(d.cache_dir, 'cache', 'chunks')


def index_path(d):
    return os.path.join(d.cache_dir, 'cache', 'index.mdb')


_HEX64 = re.compile(r'^[0-9a-f]{64}$')


def chunk_files(d):
    """{sha256 hex: path} of every chunk file in the store (names of 64 hex digits in chunks/xx/)."""
    out = {}
    top = chunks_dir(d)
    if not os.path.isdir(top):
        return out
    for sub in sorted(os.listdir(top)):
        p = os.path.join(top, sub)
        if len(sub) != 2 or not os.path.isdir(p):
            continue
        for n in os.listdir(p):
            if _HEX64.match(n):
                out[n] = os.path.join(p, n)
    return out


def foreign_files(d):
    """Files in the store that are not chunk files (temporaries and the like)."""
    out = []
    top = chunks_dir(d)
    for dirpath, _, filenames in os.walk(top):
        for n in filenames:
            if n.startswith('.probe-') and dirpath == top:
                continue        # the health probe's file, there for a moment every interval
            if not (_HEX64.match(n) and len(os.path.basename(dirpath)) == 2 and os.path.dirname(dirpath) == top):
                out.append(os.path.join(dirpath, n))
    return out


def chunk_bytes_on_disk(d):
    return sum(os.path.getsize(p) for p in chunk_files(d).values())


def bad_chunk_files(d):
    """Chunk files whose bytes do not hash to their name: a chunk must never be visible half written."""
    import hashlib
    bad = []
    for name, p in chunk_files(d).items():
        with open(p, 'rb') as f:
            if hashlib.sha256(f.read()).hexdigest() != name:
                bad.append(p)
    return bad


def check_all_bytes(testcase, d, files, names=None):
    """Reads every file (or those named) past the page cache and compares with the origin."""
    for v in sorted(names or files):
        try:
            data = read_fresh(d.path(v))
        except OSError as e:
            if not d.running():
                d.proc.wait()
                raise harness.DaemonFailed('reading %s: %s: musicfsd died (%s)\n%s' % (
                    v, e, harness._describe_rc(d.proc.returncode), d.describe())) from None
            raise
        testcase.assertEqual(len(data), os.path.getsize(files[v]), '%s: wrong length' % v)
        testcase.assertTrue(data == origin_bytes(files[v]), '%s: wrong bytes served' % v)


def wait_cached(testcase, d, files, names=None, timeout=120.0):
    """Reads the files until a whole pass is answered from the cache alone (no miss), checking every
    byte each time; bounded by timeout. Returns the stats after that pass."""
    deadline = time.monotonic() + timeout
    while True:
        wait_fills_idle(d, max(1.0, deadline - time.monotonic()))
        before = cache_stats(d)
        check_all_bytes(testcase, d, files, names)
        after = cache_stats(d)
        if after['misses'] == before['misses'] and after['hits'] > before['hits']:
            return after
        if time.monotonic() > deadline:
            raise harness.DaemonFailed('the files never came wholly from the cache (misses %d -> %d)\n%s' % (
                before['misses'], after['misses'], d.describe()))


def assert_consistent(testcase, d):
    """The index and the store agree: VerifyCache finds nothing wrong, the byte and chunk totals are
    those of the chunk files on disk, every chunk file hashes to its name, no temporary is left; the
    cache is in use (no passthrough) and the daemon ready."""
    v = verify_cache(d)
    on_disk = chunk_files(d)
    testcase.assertEqual((v['bad'], v['missing'], v['orphans']), (0, 0, 0), 'VerifyCache: %r' % v)
    testcase.assertEqual(v['checked'], len(on_disk), 'VerifyCache checked %r, %d chunk files' % (v, len(on_disk)))
    s = cache_stats(d)
    testcase.assertEqual(s['chunks'], len(on_disk), 'chunks in the stats vs on disk')
    testcase.assertEqual(s['bytes'], chunk_bytes_on_disk(d), 'bytes in the stats vs on disk')
    testcase.assertEqual(bad_chunk_files(d), [])
    testcase.assertEqual(foreign_files(d), [])
    testcase.assertEqual((s['passthrough'], s['passthrough-reason']), (False, 'none'), s)
    testcase.assertEqual(str(d.bus_get('State')), 'ready')
    testcase.assertTrue(d.running())
    return s


class CapDroppedDaemon(harness.Daemon):
    """A Daemon run as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv(1) execs it,
    so the PID is the daemon's): file modes bind it like any user, so chmod makes real EACCES."""

    def argv(self):
        return [shutil.which('setpriv') or 'setpriv', '--bounding-set=-dac_override,-dac_read_search', '--'] + \
            super().argv()


def cap_dropped_daemon(testcase, origins, start=True, **kwargs):
    if not shutil.which('setpriv'):
        testcase.skipTest('setpriv is not installed')
    d = CapDroppedDaemon(origins=origins, **kwargs)
    testcase.addCleanup(d.cleanup)
    testcase.daemons.append(d)
    if start:
        d.start()
    return d
