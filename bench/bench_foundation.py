#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The foundation benchmark: musicfsd on real FUSE mounts of generated libraries, measured side by
side with the native file system (and libfuse's passthrough_ll example) in one run, reported as
ratios. See bench/README.md for what each figure means.

  sudo /usr/bin/python3 bench/bench_foundation.py              # 10k and 100k tracks
  sudo /usr/bin/python3 bench/bench_foundation.py --quick      # 10k only
  MUSICFS_BUILD_ROOT=/path/to/build ... --sizes 10000,100000

Libraries are generated once and kept under /var/tmp/musicfs-bench/lib-<N>/ (--lib-dir). The
daemon comes from $MUSICFS_BUILD_ROOT/daemon/musicfsd (default ./build). Needs root (FUSE mounts,
drop_caches). The result table is printed and written to bench/results/<date>.md (+ .json).
"""

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(SOURCE_ROOT, 'tests', 'lib'))

import harness  # noqa: E402 - after the path is set up; exits 77 without dbus/dbusmock
import genlib   # noqa: E402
import dbus     # noqa: E402

TARGET_SCAN_FILES_PER_S = 2000.0
TARGET_RESTART_S = 1.0
TARGET_LS_RATIO = 1.3
TARGET_STAT_P50_RATIO = 1.3
TARGET_STAT_P99_RATIO = 2.0
TARGET_RSS_MB = 100.0

PLL_SOURCE = '/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c'
CLK_TCK = os.sysconf('SC_CLK_TCK')


class Stop(Exception):
    """SIGTERM/SIGINT/SIGHUP: unwind through every finally, so mounts and daemons go away."""


def _on_signal(signum, frame):
    raise Stop('signal %d' % signum)


def log(msg):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------------
# Helpers.

def drop_caches():
    """Writes back dirty pages and drops the page, dentry and inode caches. False if not allowed."""
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
        return True
    except OSError:
        return False


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float('nan')
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def proc_status(pid):
    """{'VmRSS': kB, 'VmHWM': kB} of pid."""
    out = {}
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                k, _, v = line.partition(':')
                if k in ('VmRSS', 'VmHWM', 'Threads'):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def cpu_ticks(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rpartition(')')[2].split()
    return int(fields[11]) + int(fields[12])      # utime + stime, all threads


class SchedSampler:
    """Per-thread scheduler statistics of a process (/proc/PID/task/TID/schedstat: ns on a CPU,
    ns runnable but waiting for one), sampled now and then so that a thread that exits before
    the end still counts with its last values."""

    def __init__(self, pid):
        self.pid = pid
        self.first = self._read()
        self.last = dict(self.first)
        self.t_sample = time.monotonic()

    def _read(self):
        out = {}
        try:
            for tid in os.listdir('/proc/%d/task' % self.pid):
                try:
                    with open('/proc/%d/task/%s/schedstat' % (self.pid, tid)) as f:
                        a, b, _ = f.read().split()
                    out[tid] = (int(a), int(b))
                except (OSError, ValueError):
                    pass
        except OSError:
            pass
        return out

    def sample(self, every=0.25):
        if time.monotonic() - self.t_sample >= every:
            self.last.update(self._read())
            self.t_sample = time.monotonic()

    def result(self):
        """(busiest thread's (cpu s, queued s), whole process cpu s)."""
        self.last.update(self._read())
        deltas = {tid: ((v[0] - self.first.get(tid, (0, 0))[0]) / 1e9, (v[1] - self.first.get(tid, (0, 0))[1]) / 1e9)
                  for tid, v in self.last.items()}
        busiest = max(deltas.values(), default=(0.0, 0.0))
        return busiest, sum(d[0] for d in deltas.values())


def fuse_requests(argv, timeout):
    """{opcode name: count} of the FUSE requests argv sends (perf and the fuse:fuse_request_send
    tracepoint, kernel >= 6.13), or None when that is not available."""
    if not shutil.which('perf'):
        return None
    with tempfile.TemporaryDirectory(prefix='musicfs-bench-perf-') as d:
        data = os.path.join(d, 'perf.data')
        try:
            subprocess.run(['perf', 'record', '-q', '-o', data, '-e', 'fuse:fuse_request_send', '--'] + argv,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout, check=True)
            out = subprocess.run(['perf', 'script', '-i', data], capture_output=True, text=True,
                                 timeout=timeout, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    counts = {}
    for op in re.findall(r'\((FUSE_[A-Z_]+)\)', out):
        counts[op] = counts.get(op, 0) + 1
    return counts or None


def wait_idle(pid, timeout, window=0.5, max_share=0.04):
    """Waits until pid uses less than max_share of one CPU over a window; returns the seconds it
    took, or None on timeout (the process may have died: then returns at once)."""
    start = time.monotonic()
    deadline = start + timeout
    try:
        prev = cpu_ticks(pid)
    except OSError:
        return None
    while time.monotonic() < deadline:
        time.sleep(window)
        try:
            cur = cpu_ticks(pid)
        except OSError:
            return None
        if (cur - prev) / CLK_TCK <= max_share * window:
            return time.monotonic() - start
        prev = cur
    return None


def timed_run(argv, timeout):
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
                   check=True)
    return time.perf_counter() - t0


def fmt_n(v, digits=0):
    if v is None or v != v:
        return '–'
    return '{:,.{}f}'.format(v, digits)


def fmt_ratio(v):
    if v is None or v != v:
        return '–'
    return '%.2f×' % v


def verdict(ok):
    if ok is None:
        return 'not measured'
    return '**met**' if ok else '**NOT met**'


# --------------------------------------------------------------------------------------------------
# Libraries.

def library(lib_dir, count):
    """lib_dir/lib-<count>, generated once (into a temp name, renamed when complete)."""
    path = os.path.join(lib_dir, 'lib-%d' % count)
    if os.path.exists(os.path.join(path, genlib.EXPECTED_NAME)):
        return path
    tmp = path + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    log('generating %d tracks into %s (kept for reruns)' % (count, path))
    t0 = time.monotonic()
    genlib.gen_bulk(tmp, count)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)
    log('generated in %.1f s' % (time.monotonic() - t0))
    return path


def count_files(root):
    n = 0
    for _, _, files in os.walk(root):
        n += sum(1 for f in files if not f.startswith('.'))
    return n


def tree_shape(root):
    """(files, directories) below root; dot files (.expected.json) are not counted."""
    files = dirs = 0
    for _, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        files += sum(1 for f in filenames if not f.startswith('.'))
    return files, dirs


def native_walk(root, read_bytes=0):
    """os.walk + lstat of every file (+ open/read of its first read_bytes). Returns (files, s)."""
    t0 = time.perf_counter()
    n = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith('.'):
                continue
            p = os.path.join(dirpath, name)
            os.lstat(p)
            if read_bytes:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.read(fd, read_bytes)
                finally:
                    os.close(fd)
            n += 1
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# The daemon under measurement.

class Musicfsd:
    """harness.Daemon plus timing: every start is timed from just before exec."""

    def __init__(self, origin, workdir, cache_dir=None):
        os.makedirs(workdir, exist_ok=True)
        self.d = harness.Daemon(origins=[origin], workdir=workdir, cache_dir=cache_dir,
                                mountpoint=os.path.join(workdir, 'mnt'))
        os.makedirs(self.d.mountpoint, exist_ok=True)
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
        self.bus = None

    @property
    def mountpoint(self):
        return self.d.mountpoint

    @property
    def pid(self):
        return self.d.pid

    def start(self):
        """Starts without waiting; returns the monotonic time of the exec."""
        self.bus = None
        t0 = time.monotonic()
        self.d.start(wait_ready=False)
        return t0

    def wait_ready(self, timeout):
        self.d.notify.wait_for('READY=1', timeout, check=self.d._check_alive)
        return time.monotonic()

    def track_count(self):
        if self.bus is None:
            self.bus = dbus.bus.BusConnection(self.d.bus_address)
        obj = self.bus.get_object(harness.BUS_NAME, harness.MANAGER_PATH, introspect=False)
        return int(obj.Get(harness.MANAGER_IFACE, 'TrackCount',
                           dbus_interface='org.freedesktop.DBus.Properties', timeout=2))

    def wait_tracks(self, n, timeout, interval=0.02, sampler=None):
        """Polls TrackCount until it equals n; returns (monotonic time reached or None, last value)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if sampler:
                sampler.sample()
            self.d._check_running()
            try:
                last = self.track_count()
            except dbus.DBusException:
                self.bus = None     # reconnect: the daemon may not own its name yet
            if last == n:
                return time.monotonic(), last
            time.sleep(interval)
        return None, last

    def log_scanned(self):
        """Files counts of the scanner's 'scanned N files' lines in the current log."""
        return [int(x) for x in re.findall(r'scanned (\d+) files', self.d.log())]

    def stop(self, timeout=60):
        t0 = time.monotonic()
        rc = self.d.stop(signal.SIGTERM, timeout)
        if rc != 0:
            raise harness.DaemonFailed('musicfsd exited with %s on SIGTERM\n%s' % (rc, self.d.describe()))
        if harness.is_mounted(self.mountpoint):
            harness.lazy_unmount(self.mountpoint)
            raise harness.DaemonFailed('%s still mounted after musicfsd exited' % self.mountpoint)
        return time.monotonic() - t0

    def cleanup(self):
        if self.bus is not None:
            try:
                self.bus.close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
            self.bus = None
        self.d.cleanup()


class PassthroughLL:
    """libfuse's passthrough_ll example mounted over the origin (ro, cache=always: 86,400 s
    timeouts like musicfsd's defaults, keep_cache and cache_readdir)."""

    def __init__(self, binary, source, mountpoint):
        self.binary, self.source, self.mountpoint = binary, source, mountpoint
        os.makedirs(mountpoint, exist_ok=True)
        self.proc = None

    def start(self, timeout=10):
        self.logf = open(self.mountpoint + '.log', 'wb')
        self.proc = subprocess.Popen([self.binary, '-f', '-o', 'ro,cache=always,source=' + self.source,
                                      self.mountpoint], stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, preexec_fn=harness._pdeathsig)
        harness.wait_until(lambda: harness.is_mounted(self.mountpoint) or self.proc.poll() is not None,
                           timeout, message='passthrough_ll to mount')
        if self.proc.poll() is not None:
            raise RuntimeError('passthrough_ll exited with %s' % self.proc.returncode)

    def cleanup(self):
        harness.terminate(self.proc)
        harness.lazy_unmount(self.mountpoint)
        if self.proc:
            self.logf.close()
        self.proc = None


def build_passthrough_ll(workdir):
    if not os.path.exists(PLL_SOURCE):
        return None, '%s not found (libfuse3-dev examples)' % PLL_SOURCE
    out = os.path.join(workdir, 'passthrough_ll')
    try:
        flags = subprocess.run(['pkg-config', '--cflags', '--libs', 'fuse3'], check=True,
                               capture_output=True, text=True).stdout.split()
        subprocess.run(['gcc', '-O2', '-I', os.path.dirname(PLL_SOURCE), PLL_SOURCE, '-o', out] + flags,
                       check=True, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return None, 'could not build passthrough_ll: %s' % e
    return out, None


# --------------------------------------------------------------------------------------------------
# One library size.

class SizeRun:
    def __init__(self, args, count, lib, workroot, pll_binary, pll_reason):
        self.args = args
        self.n = count
        self.lib = lib
        self.work = os.path.join(workroot, 'n%d' % count)
        os.makedirs(self.work, exist_ok=True)
        self.pll_binary = pll_binary
        self.pll_reason = pll_reason
        self.res = {'tracks': count, 'notes': []}
        self.expected = genlib.load_expected(lib)
        self.artists = sorted({v.split('/', 1)[0] for v in self.expected})
        self.dropped = None

    def note(self, s):
        log(s)
        self.res['notes'].append(s)

    # -- cold scan
    def cold_scan(self):
        rounds = self.args.scan_rounds or (3 if self.n <= 20000 else 1)
        scan_timeout = max(60.0, self.n / 250.0)
        daemon_rates, walk_rates, read_rates, rss = [], [], [], []
        last_daemon = None
        for i in range(rounds):
            # Native references first, each on a dropped page cache.
            self.dropped = drop_caches()
            n, s = native_walk(self.lib)
            walk_rates.append(n / s)
            drop_caches()
            n2, s2 = native_walk(self.lib, read_bytes=16384)
            read_rates.append(n2 / s2)
            if n != self.n:
                self.note('origin holds %d files, expected %d' % (n, self.n))

            if last_daemon:
                last_daemon.stop()
                last_daemon.cleanup()
                last_daemon = None
            workdir = os.path.join(self.work, 'scan%d' % i)
            m = Musicfsd(self.lib, workdir, cache_dir=os.path.join(workdir, 'cache'))
            drop_caches()
            t0 = m.start()
            try:
                t_ready = m.wait_ready(30)
                sampler = SchedSampler(m.pid)
                t_done, last = m.wait_tracks(self.n, scan_timeout, sampler=sampler)
                (thread_cpu, thread_queued), process_cpu = sampler.result()
            except BaseException:
                m.cleanup()
                raise
            if t_done is None:
                m.cleanup()
                self.note('cold scan round %d: TrackCount %s after %.0f s, want %d (timed out)' % (
                    i + 1, last, scan_timeout, self.n))
                if last:
                    daemon_rates.append(last / scan_timeout)
                break
            daemon_rates.append(self.n / (t_done - t0))
            self.res.setdefault('scan_ready_s', []).append(t_ready - t0)
            self.res.setdefault('scan_total_s', []).append(t_done - t0)
            # Where the wall time went after READY: on a CPU, queued for a CPU (the machine is
            # shared), or neither (waiting on I/O, sleeping).
            self.res.setdefault('scan_sched', []).append({
                'wall_s': t_done - t_ready, 'cpu_s': thread_cpu, 'runqueue_s': thread_queued,
                'process_cpu_s': process_cpu})
            log('cold scan round %d: %d tracks in %.2f s (%.0f files/s), READY after %.2f s' % (
                i + 1, self.n, t_done - t0, self.n / (t_done - t0), t_ready - t0))
            idle = wait_idle(m.pid, 60)
            st = proc_status(m.pid)
            rss.append(st)
            if idle is None:
                self.note('daemon still busy 60 s after its scan reached TrackCount')
            last_daemon = m
        self.res['scan_files_per_s'] = daemon_rates
        self.res['native_walk_stat_files_per_s'] = walk_rates
        self.res['native_walk_stat_read_files_per_s'] = read_rates
        self.res['rss_after_scan_kb'] = rss
        self.res['drop_caches'] = self.dropped
        return last_daemon

    # -- restart to mounted
    def restarts(self, m):
        """m: a daemon whose catalog holds the whole library. Returns the last (running) daemon."""
        ready, listed, stops, rescans = [], [], [], []
        want = set(self.artists)
        for i in range(self.args.restarts):
            stops.append(m.stop())
            t0 = m.start()
            t_ready = m.wait_ready(30)
            t_list = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if set(os.listdir(m.mountpoint)) >= want:
                        t_list = time.monotonic()
                        break
                except OSError:
                    pass
                m.d._check_running()
                time.sleep(0.005)
            if t_list is None:
                raise harness.DaemonFailed('mount did not list the %d artists within 30 s\n%s' % (
                    len(want), m.d.describe()))
            ready.append(t_ready - t0)
            listed.append(t_list - t0)
            # The background reconcile runs right after the mount: wait for it, so it costs nothing
            # in the next measurement, and time it (an unchanged rescan).
            t_scan = None
            deadline = time.monotonic() + max(60.0, self.n / 1000.0)
            while time.monotonic() < deadline:
                if m.log_scanned():
                    t_scan = time.monotonic()
                    break
                time.sleep(0.02)
            if t_scan is not None:
                rescans.append((t_scan - t0, t_scan - t_ready))
            if wait_idle(m.pid, 60) is None:
                self.note('daemon still busy 60 s after restart %d' % (i + 1))
            log('restart %d: READY %.3f s, artists listed %.3f s, rescan done %s s' % (
                i + 1, t_ready - t0, t_list - t0, '%.2f' % (t_scan - t0) if t_scan else '?'))
        self.res['restart_ready_s'] = ready
        self.res['restart_listed_s'] = listed
        self.res['stop_s'] = stops
        self.res['rescan_s'] = rescans
        self.res['rss_after_restart_kb'] = proc_status(m.pid)
        if self.args.cold_restart:
            m.stop()
            drop_caches()
            t0 = m.start()
            t_ready = m.wait_ready(30)
            harness.wait_until(lambda: set(os.listdir(m.mountpoint)) >= want, 30, 0.005,
                               ignore=(OSError,))
            self.res['cold_restart_ready_s'] = t_ready - t0
            self.res['cold_restart_listed_s'] = time.monotonic() - t0
            log('restart on dropped caches: READY %.3f s, listed %.3f s' % (
                self.res['cold_restart_ready_s'], self.res['cold_restart_listed_s']))
            wait_idle(m.pid, 60)
        return m

    # -- warm ls -lR
    def ls_lR(self, systems):
        """systems: {name: root}. One warm-up each, then rounds alternating the order."""
        to = max(60.0, self.n / 500.0)
        first = {}
        for name, root in systems.items():
            first[name] = timed_run(['ls', '-lR', root], to)
        times = {name: [] for name in systems}
        names = list(systems)
        for r in range(self.args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(timed_run(['ls', '-lR', systems[name]], to))
        self.res['ls_first_s'] = first
        self.res['ls_s'] = times
        if 'musicfs' in systems:
            self.res['ls_fuse_requests'] = fuse_requests(['ls', '-lR', systems['musicfs']], to)
        # The mount shows the tag layout, the origin its folder layout: different trees holding
        # the same files.
        self.res['ls_shape'] = {name: tree_shape(root) for name, root in systems.items()}
        log('ls -lR medians: ' + ', '.join('%s %.3f s' % (k, statistics.median(v)) for k, v in times.items()))

    # -- warm stat
    def stat_paths(self, mount):
        """(virtual rel paths, origin rel paths) of up to --stat-files random files. Uses the
        .expected.json mapping; falls back to sampling each tree when the mount differs."""
        rng = random.Random(42)
        k = min(self.args.stat_files, len(self.expected))
        virt = rng.sample(sorted(self.expected), k)
        missing = 0
        for v in virt[:2000]:
            if not os.path.exists(os.path.join(mount, v)):
                missing += 1
        if missing <= 20:
            self.res['stat_mapping'] = '.expected.json (same files on both sides)'
            return virt, [self.expected[v] for v in virt]
        self.note('%d of 2000 expected virtual paths missing on the mount: sampling each tree instead'
                  % missing)
        self.res['stat_mapping'] = 'random files of each tree (mount layout differs from .expected.json)'
        mfiles = [os.path.relpath(os.path.join(d, f), mount) for d, _, fs in os.walk(mount) for f in fs]
        return rng.sample(mfiles, min(k, len(mfiles))), [self.expected[v] for v in virt]

    def stat_bench(self, systems, chunk=500):
        """systems: {name: [absolute paths]}, the same files in the same order. A warm-up pass
        each, then rounds that interleave the systems every `chunk` files (rotating which goes
        first), so that they share the machine's noise; per-call latency pooled across rounds."""
        st = os.stat
        clock = time.perf_counter_ns
        for paths in systems.values():
            for p in paths:
                st(p)
        lat = {name: [] for name in systems}
        names = list(systems)
        total = min(len(v) for v in systems.values())
        k = 0
        for _ in range(self.args.stat_rounds):
            for lo in range(0, total, chunk):
                k += 1
                for name in names[k % len(names):] + names[:k % len(names)]:
                    out = lat[name]
                    for p in systems[name][lo:lo + chunk]:
                        t0 = clock()
                        st(p)
                        out.append(clock() - t0)
        res = {}
        for name, v in lat.items():
            v.sort()
            res[name] = {'p50_us': percentile(v, 50) / 1000.0, 'p99_us': percentile(v, 99) / 1000.0,
                         'mean_us': sum(v) / len(v) / 1000.0, 'samples': len(v)}
        self.res['stat'] = res
        log('stat: ' + ', '.join('%s p50 %.2f p99 %.2f µs' % (k, r['p50_us'], r['p99_us'])
                                 for k, r in res.items()))

    def fuse_settings(self, mount):
        try:
            dev = os.stat(mount).st_dev
            with open('/sys/class/bdi/%d:%d/read_ahead_kb' % (os.major(dev), os.minor(dev))) as f:
                self.res['fuse_read_ahead_kb'] = int(f.read())
        except OSError:
            pass
        try:
            with open('/proc/sys/fs/fuse/max_pages_limit') as f:
                self.res['fuse_max_pages_limit'] = int(f.read())
        except OSError:
            pass

    def run(self):
        m = None
        pll = None
        try:
            log('== %d tracks: cold scan' % self.n)
            m = self.cold_scan()
            if m is None:
                return self.res
            log('== %d tracks: restart to mounted' % self.n)
            m = self.restarts(m)
            self.fuse_settings(m.mountpoint)

            systems = {'musicfs': m.mountpoint, 'native': self.lib}
            if self.pll_binary and self.n <= self.args.pll_max:
                pll = PassthroughLL(self.pll_binary, self.lib, os.path.join(self.work, 'pll-mnt'))
                pll.start()
                systems['passthrough_ll'] = pll.mountpoint
            elif self.pll_binary:
                self.res['pll_skipped'] = ('passthrough_ll holds one O_PATH fd per inode: %d inodes exceed '
                                           'RLIMIT_NOFILE %d here' % (self.n, resource.getrlimit(
                                               resource.RLIMIT_NOFILE)[1]))
            else:
                self.res['pll_skipped'] = self.pll_reason

            log('== %d tracks: ls -lR' % self.n)
            self.ls_lR(systems)
            self.res['rss_after_ls_kb'] = proc_status(m.pid)

            log('== %d tracks: stat' % self.n)
            virt, orig = self.stat_paths(m.mountpoint)
            self.res['stat_files'] = len(virt)
            paths = {'musicfs': [os.path.join(m.mountpoint, v) for v in virt],
                     'native': [os.path.join(self.lib, o) for o in orig]}
            if pll:
                paths['passthrough_ll'] = [os.path.join(pll.mountpoint, o) for o in orig]
            self.stat_bench(paths)
            self.res['rss_after_stat_kb'] = proc_status(m.pid)
            self.res['daemon_log_tail'] = m.d.log()[-3000:]
        finally:
            if pll:
                pll.cleanup()
            if m:
                if m.d.running():
                    try:
                        m.stop()
                    except harness.DaemonFailed as e:
                        self.note(str(e).splitlines()[0])
                m.cleanup()
        return self.res


# --------------------------------------------------------------------------------------------------
# Report.

def med(v):
    return statistics.median(v) if v else None


def size_table(r):
    n = r['tracks']
    rows = []

    def row(figure, ours, ref, ratio, target, ok):
        rows.append('| %s | %s | %s | %s | %s | %s |' % (figure, ours, ref, ratio, target, verdict(ok)))

    # Cold scan.
    rates = r.get('scan_files_per_s') or []
    walk = med(r.get('native_walk_stat_files_per_s'))
    readr = med(r.get('native_walk_stat_read_files_per_s'))
    if rates:
        scan = med(rates)
        row('cold scan, files/s (median of %d; page cache dropped: %s)' % (len(rates), 'yes' if r.get('drop_caches') else 'NO'),
            '%s files/s (%s s; min %s, max %s)' % (fmt_n(scan), fmt_n(n / scan, 2), fmt_n(min(rates)), fmt_n(max(rates))),
            'native os.walk+lstat %s files/s; +read 16 KiB %s files/s' % (fmt_n(walk), fmt_n(readr)),
            '%s of walk+stat+read; %s of target' % (fmt_ratio(scan / readr if readr else None),
                                                     fmt_ratio(scan / TARGET_SCAN_FILES_PER_S)),
            '≥ 2,000 files/s', scan >= TARGET_SCAN_FILES_PER_S)
    else:
        row('cold scan, files/s', 'not measured', '', '', '≥ 2,000 files/s', None)

    # Restart.
    if r.get('restart_listed_s'):
        lst, rdy = r['restart_listed_s'], r['restart_ready_s']
        row('restart to mounted, s (median of %d)' % len(lst),
            'READY=1 %.3f s; all %d artists listed %.3f s (max %.3f)' % (med(rdy), 0, med(lst), max(lst)),
            '—', '%s of target' % fmt_ratio(med(lst) / TARGET_RESTART_S),
            '≤ 1 s at 100k', med(lst) <= TARGET_RESTART_S)
    # ls -lR.
    ls = r.get('ls_s') or {}
    if ls:
        ours = med(ls['musicfs'])
        nat = med(ls['native'])
        ratios = [a / b for a, b in zip(ls['musicfs'], ls['native'])]
        ref = 'native %.3f s' % nat
        ratio = '%s (per-round %s–%s)' % (fmt_ratio(med(ratios)), fmt_ratio(min(ratios)), fmt_ratio(max(ratios)))
        if 'passthrough_ll' in ls:
            p = med(ls['passthrough_ll'])
            ref += '; passthrough_ll %.3f s' % p
            ratio += '; vs passthrough_ll %s' % fmt_ratio(ours / p)
        row('warm `ls -lR`, s (median of %d)' % len(ls['musicfs']), '%.3f s' % ours, ref, ratio,
            '≤ 1.3× native', med(ratios) <= TARGET_LS_RATIO)
    # stat.
    st = r.get('stat') or {}
    if st:
        o, nat = st['musicfs'], st['native']
        p50r = o['p50_us'] / nat['p50_us']
        p99r = o['p99_us'] / nat['p99_us']
        ref50 = 'native %.2f µs' % nat['p50_us']
        ref99 = 'native %.2f µs' % nat['p99_us']
        ratio50, ratio99 = fmt_ratio(p50r), fmt_ratio(p99r)
        if 'passthrough_ll' in st:
            p = st['passthrough_ll']
            ref50 += '; passthrough_ll %.2f µs' % p['p50_us']
            ref99 += '; passthrough_ll %.2f µs' % p['p99_us']
            ratio50 += '; vs passthrough_ll %s' % fmt_ratio(o['p50_us'] / p['p50_us'])
            ratio99 += '; vs passthrough_ll %s' % fmt_ratio(o['p99_us'] / p['p99_us'])
        samples = '%d files × %d rounds' % (r.get('stat_files', 0), o['samples'] // max(1, r.get('stat_files', 1)))
        row('warm `stat` p50, µs (%s)' % samples, '%.2f µs' % o['p50_us'], ref50, ratio50, '≤ 1.3× native',
            p50r <= TARGET_STAT_P50_RATIO)
        row('warm `stat` p99, µs', '%.2f µs' % o['p99_us'], ref99, ratio99, '≤ 2× native', p99r <= TARGET_STAT_P99_RATIO)
    # RSS.
    points = [('after scan', (r.get('rss_after_scan_kb') or [{}])[-1]), ('after restart', r.get('rss_after_restart_kb') or {}),
              ('after ls -lR', r.get('rss_after_ls_kb') or {}), ('after stat', r.get('rss_after_stat_kb') or {})]
    points = [(k, v) for k, v in points if v]
    if points:
        peak = max(v.get('VmHWM', 0) for _, v in points) / 1024.0
        rss = max(v.get('VmRSS', 0) for _, v in points) / 1024.0
        ours = '; '.join('%s %.1f MB (peak %.1f)' % (k, v.get('VmRSS', 0) / 1024.0, v.get('VmHWM', 0) / 1024.0)
                         for k, v in points)
        row('daemon RSS, MB (VmRSS, VmHWM)', ours, '—', 'peak %s of target' % fmt_ratio(peak / TARGET_RSS_MB),
            '≤ 100 MB at 100k', peak <= TARGET_RSS_MB and rss <= TARGET_RSS_MB)
    # Fix the artist count in the restart row.
    rows = [x.replace('all 0 artists', 'all %d artists' % r.get('artists', 0)) for x in rows]

    info = []
    if r.get('scan_ready_s'):
        info.append('- first start on an empty catalog: READY=1 after %.3f s (median), the tree fills as the scan runs.'
                    % med(r['scan_ready_s']))
    if r.get('scan_sched'):
        info.append('- cold scan from READY to TrackCount = N, busiest (scanning) thread, per round: ' + '; '.join(
            '%.1f s wall = %.1f s on a CPU + %.1f s queued for a CPU (shared machine) + %.1f s neither (I/O, '
            'sleeps); whole daemon %.1f s CPU' % (
                x['wall_s'], x['cpu_s'], x['runqueue_s'], max(0.0, x['wall_s'] - x['cpu_s'] - x['runqueue_s']),
                x.get('process_cpu_s', 0.0))
            for x in r['scan_sched']) + '.')
    if r.get('rescan_s'):
        rs = med([x[0] for x in r['rescan_s']])
        rr = med([x[1] for x in r['rescan_s']])
        info.append('- unchanged rescan after a restart (to the scanner\'s "scanned N files" log line): %.2f s from '
                    'exec, %.2f s after READY=1: %s files/s (anchor goal ≥ 20,000 files/s).' % (
                        rs, rr, fmt_n(n / rr) if rr > 0 else '–'))
    if r.get('stop_s'):
        info.append('- SIGTERM to exit (mount gone): median %.3f s, max %.3f s.' % (med(r['stop_s']), max(r['stop_s'])))
    if r.get('cold_restart_listed_s') is not None:
        info.append('- restart on dropped page cache: READY=1 %.3f s, artists listed %.3f s.' % (
            r['cold_restart_ready_s'], r['cold_restart_listed_s']))
    if r.get('ls_shape'):
        info.append('- `ls -lR` trees: ' + ', '.join('%s %s files in %s directories' % (k, fmt_n(v[0]), fmt_n(v[1]))
                                                   for k, v in r['ls_shape'].items()) +
                    ' (the mount has the tag layout Artist/Album (Year)/NN - Title.ext, the origin its own '
                    'NNNN/NN/NN.ext folders: the same files, the same depth).')
    if r.get('ls_fuse_requests'):
        info.append('- FUSE requests sent by one warm `ls -lR` of the mount (perf, fuse:fuse_request_send): ' +
                    ', '.join('%s %s' % (k[5:], fmt_n(v)) for k, v in sorted(r['ls_fuse_requests'].items(),
                                                                           key=lambda kv: -kv[1])) + '.')
    if r.get('ls_first_s'):
        info.append('- first `ls -lR` after the mount (kernel dentry/attr caches empty, page cache warm): ' +
                    ', '.join('%s %.3f s' % (k, v) for k, v in r['ls_first_s'].items()) + '.')
    if r.get('stat'):
        info.append('- stat mapping: %s; means: %s.' % (r.get('stat_mapping'), ', '.join(
            '%s %.2f µs' % (k, v['mean_us']) for k, v in r['stat'].items())))
    if r.get('pll_skipped'):
        info.append('- passthrough_ll not run: %s.' % r['pll_skipped'])
    if r.get('fuse_read_ahead_kb') is not None:
        info.append('- FUSE bdi read_ahead_kb %d.' % r['fuse_read_ahead_kb'])
    for s in r.get('notes', []):
        info.append('- note: %s' % s)
    return rows, info


def machine_info(daemon_path):
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
    except OSError:
        pass
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    try:
        with open('/etc/debian_version') as f:
            deb = 'Debian ' + f.read().strip()
    except OSError:
        deb = platform.platform()
    try:
        fusever = subprocess.run(['pkg-config', '--modversion', 'fuse3'], capture_output=True, text=True).stdout.strip()
    except OSError:
        fusever = '?'
    try:
        ver = subprocess.run([daemon_path, '--version'], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        ver = '?'
    build = ''
    introspect = os.path.join(os.path.dirname(os.path.dirname(daemon_path)), 'meson-info', 'intro-buildoptions.json')
    try:
        with open(introspect) as f:
            opts = {o['name']: o['value'] for o in json.load(f)}
        build = 'buildtype=%s, b_sanitize=%s, failpoints=%s' % (opts.get('buildtype'), opts.get('b_sanitize'),
                                                             opts.get('failpoints'))
    except (OSError, ValueError, KeyError):
        pass
    return {'cpu': cpu, 'cpus': os.cpu_count(), 'mem_gib': round(mem, 1), 'kernel': platform.release(),
            'os': deb, 'libfuse': fusever, 'daemon': daemon_path, 'daemon_version': ver, 'build': build,
            'loadavg_start': os.getloadavg()}


def report(results, info, started):
    lines = ['# MusicFS foundation benchmark, %s' % time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started)), '',
             '- machine: %s, %d CPUs, %.1f GiB RAM, kernel %s, %s; libfuse %s' % (
                 info['cpu'], info['cpus'], info['mem_gib'], info['kernel'], info['os'], info['libfuse']),
             '- daemon: %s (%s; %s)' % (info['daemon'], info['daemon_version'], info['build'] or 'build options unknown'),
             '- load average at start %s, at end %s (the machine is shared: compare ratios, not absolutes)' % (
                 ' '.join('%.2f' % x for x in info['loadavg_start']), ' '.join('%.2f' % x for x in os.getloadavg())),
             '- wall time of the run: %.0f s' % (time.monotonic() - info['t0']), '']
    for r in results:
        rows, notes = size_table(r)
        lines += ['## %s tracks' % fmt_n(r['tracks']), '',
                  '| figure | MusicFS | reference (same run) | ratio | target | verdict |',
                  '|---|---|---|---|---|---|'] + rows + [''] + notes + ['']
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', default='10000,100000', help='comma-separated track counts (default 10000,100000)')
    ap.add_argument('--quick', action='store_true', help='10k tracks only')
    ap.add_argument('--lib-dir', default='/var/tmp/musicfs-bench', help='where generated libraries are kept')
    ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'results'), help='directory for <date>.md/.json')
    ap.add_argument('--rounds', type=int, default=5, help='ls -lR rounds per system (default 5)')
    ap.add_argument('--restarts', type=int, default=5, help='restarts to time (default 5)')
    ap.add_argument('--scan-rounds', type=int, default=0, help='cold scans (default 3 up to 20k tracks, else 1)')
    ap.add_argument('--stat-files', type=int, default=20000, help='random files to stat (default 20000)')
    ap.add_argument('--stat-rounds', type=int, default=3, help='timed stat passes per system (default 3)')
    ap.add_argument('--no-passthrough', action='store_true', help='skip libfuse passthrough_ll')
    ap.add_argument('--pll-max', type=int, default=15000,
                    help='largest library to run passthrough_ll on (one fd per inode; default 15000)')
    ap.add_argument('--no-cold-restart', dest='cold_restart', action='store_false',
                    help='skip the extra restart on a dropped page cache')
    ap.add_argument('--keep', action='store_true', help='keep the work dir (catalogs, logs)')
    args = ap.parse_args()

    sizes = [10000] if args.quick else [int(x) for x in args.sizes.split(',') if x.strip()]
    if os.geteuid() != 0:
        sys.exit('bench_foundation.py needs root (FUSE mounts, drop_caches)')
    if not os.access(harness.DAEMON, os.X_OK):
        sys.exit('%s is not built: set MUSICFS_BUILD_ROOT or build ./build' % harness.DAEMON)
    harness.require_fuse()

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)

    started = time.time()
    info = machine_info(harness.DAEMON)
    info['t0'] = time.monotonic()
    os.makedirs(args.lib_dir, exist_ok=True)
    libs = {n: library(args.lib_dir, n) for n in sizes}

    workroot = tempfile.mkdtemp(prefix='run-', dir=args.lib_dir)
    results = []
    try:
        with harness.private_system_bus():
            pll_binary, pll_reason = (None, 'skipped (--no-passthrough)') if args.no_passthrough \
                else build_passthrough_ll(workroot)
            for n in sizes:
                run = SizeRun(args, n, libs[n], workroot, pll_binary, pll_reason)
                run.res['artists'] = len(run.artists)
                try:
                    results.append(run.run())
                except (harness.DaemonFailed, harness.WaitTimeout, subprocess.SubprocessError, OSError, RuntimeError) as e:
                    run.note('aborted: %s' % str(e)[:2000])
                    results.append(run.res)
    except Stop as e:
        log('stopped by %s; cleaning up' % e)
    finally:
        if args.keep:
            log('work dir kept: %s' % workroot)
        else:
            harness.safe_rmtree(workroot)

    if not results:
        return 1
    text = report(results, info, started)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime('%Y-%m-%d-%H%M', time.localtime(started))
    with open(os.path.join(args.out, stamp + '.md'), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    with open(os.path.join(args.out, stamp + '.json'), 'w', encoding='utf-8') as f:
        json.dump({'info': info, 'results': results}, f, indent=1, default=str)
    log('written %s' % os.path.join(args.out, stamp + '.md'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
