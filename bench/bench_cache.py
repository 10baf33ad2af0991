#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The chunk cache benchmark (issue #4): musicfsd reading through its chunk cache on real FUSE
mounts, measured side by side with the native file system and libfuse's passthrough_ll example in
one run, reported as ratios. See bench/README.md ("Chunk cache") for what each figure means.

  sudo MUSICFS_BUILD_ROOT=$PWD/build-bench /usr/bin/python3 bench/bench_cache.py
  ... --quick          (one round each, 256 MiB file, 500 small files: a smoke run, ~1 min)

Figures: the first read of a fully cached 1 GiB file (page cache dropped) against a native cold read
and passthrough_ll's cold read, beside the chunk files read natively, bare FUSE (libfuse's null
example) and the bound that verifying every chunk sets; the warm re-read against passthrough_ll's; a
cold miss (empty cache, local origin) against native cold; chunking throughput (bench/cdc-speed);
open + first 4 KiB p99 over many small cached files against passthrough_ll; the cache's size while
three times its budget streams through it. Data lives in /var/tmp/musicfs-bench/cache-data/ (kept
for reruns). Needs root (FUSE, drop_caches). Output: a markdown table on stdout and
bench/results/cache-<date>.md (+ .json).
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(SOURCE_ROOT, 'tests', 'lib'))

import harness   # noqa: E402 - after the path is set up; exits 77 without dbus/dbusmock
import dbus      # noqa: E402

TARGET_CACHED_VS_NATIVE = 0.8       # first read of a cached file / native cold
TARGET_CACHED_VS_PLL = 0.9          # ... / passthrough_ll cold
TARGET_WARM_VS_PLL = 0.9            # warm re-read / passthrough_ll warm re-read
TARGET_MISS_VS_NATIVE = 0.5         # cold miss / native cold
TARGET_CDC_REQUIRED = 1e9           # bytes/s per core
TARGET_CDC = 2e9
TARGET_TTFB_P99_VS_PLL = 1.5        # at most
TARGET_BUDGET_RATIO = 1.05          # at most

EXAMPLES = '/usr/share/doc/libfuse3-dev/examples'
PLL_SOURCE = os.path.join(EXAMPLES, 'passthrough_ll.c')
NULL_SOURCE = os.path.join(EXAMPLES, 'null.c')
CLK_TCK = os.sysconf('SC_CLK_TCK')
ARTIST = 'Cache Bench'
BIG_TITLE = 'Bigfile'


class Stop(Exception):
    """SIGTERM/SIGINT/SIGHUP: unwind through every finally, so mounts and daemons go away."""


def _on_signal(signum, frame):
    raise Stop('signal %d' % signum)


def log(msg):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------------
# Helpers.

def drop_caches(what=3):
    """sync, then drop the page cache (1) or the page cache, dentries and inodes (3)."""
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('%d\n' % what)


def resident_pages(paths):
    """Pages of these files in the page cache (fincore, 500 files per call), or None without it."""
    if not shutil.which('fincore') or not paths:
        return None
    paths = list(paths)
    total = 0
    for i in range(0, len(paths), 500):
        try:
            out = subprocess.run(['fincore', '-nb', '-o', 'PAGES'] + paths[i:i + 500], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        total += sum(int(x) for x in out.split())
    return total


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float('nan')
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def cpu_s(pid):
    """utime + stime of every thread of pid, seconds."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rpartition(')')[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def read_file(path, timeout=300, bs=1 << 20, nbytes=None):
    """Reads path once, sequentially, in bs blocks (dd bs=1M, as the anchors did), to its end or for
    its first nbytes. (bytes, s)."""
    t0 = time.perf_counter()
    cmd = ['dd', 'if=' + path, 'of=/dev/null', 'bs=%d' % bs]
    if nbytes:
        cmd += ['iflag=count_bytes', 'count=%d' % nbytes]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stderr
    s = time.perf_counter() - t0
    n = 0
    for line in out.splitlines():
        if 'bytes' in line and 'copied' in line:
            n = int(line.split()[0])
    return n, s


def read_chunk_files(paths, batch=32):
    """Reads every file of paths in turn, opening a batch of them and advising it (WILLNEED) before
    reading it, as musicfsd's prefetch does: what a native program gets from the cache's own layout
    (D7: one file per chunk). Returns (bytes, seconds)."""
    t0 = time.perf_counter()
    total = 0
    for i in range(0, len(paths), batch):
        fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths[i:i + batch]]
        try:
            for fd in fds:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            for fd in fds:
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    total += len(b)
        finally:
            for fd in fds:
                os.close(fd)
    return total, time.perf_counter() - t0


def du(path, *opts):
    """du's total for path in bytes (0 while it does not exist yet; chunk files come and go under
    it, which du reports on stderr and skips)."""
    if not os.path.isdir(path):
        return 0
    out = subprocess.run(['du'] + list(opts) + [path], capture_output=True, text=True, timeout=60).stdout.split()
    return int(out[0]) if out else 0


def tree_bytes(path):
    """(bytes of regular files below path, of which temporaries '.tmp-*'), by st_size; files that
    vanish during the walk (evicted, renamed) are skipped."""
    total = tmp = 0
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        n = e.stat(follow_symlinks=False).st_size
                        total += n
                        if e.name.startswith('.tmp-'):
                            tmp += n
                except OSError:
                    pass
    return total, tmp


def med(v):
    return statistics.median(v) if v else None


def fmt_rate(bps):
    return '–' if bps is None else '%.2f GB/s' % (bps / 1e9)


def fmt_ratio(v):
    return '–' if v is None or v != v else '%.2f×' % v


def verdict(ok):
    if ok is None:
        return 'not measured'
    return '**met**' if ok else '**NOT met**'


# --------------------------------------------------------------------------------------------------
# Data: WAV files (a format the scanner tags instantly) of seeded pseudo-random samples, so no two
# chunks are alike (audio does not deduplicate either).

def wav_header(data_len, tags):
    """RIFF/WAVE header with a LIST/INFO chunk (INAM title, IART artist, IPRD album, IPRT track) and
    the data chunk's header; data_len bytes of samples follow."""
    info = b''
    for key, value in tags:
        v = value.encode() + b'\0'
        if len(v) % 2:
            v += b'\0'
        info += key + struct.pack('<I', len(v)) + v
    lst = b'LIST' + struct.pack('<I', 4 + len(info)) + b'INFO' + info
    fmt = b'fmt ' + struct.pack('<IHHIIHH', 16, 1, 2, 44100, 44100 * 4, 4, 16)
    body = b'WAVE' + fmt + lst + b'data' + struct.pack('<I', data_len)
    return b'RIFF' + struct.pack('<I', len(body) + data_len) + body


def make_big(path, size, seed):
    """A size-byte WAV whose samples are AES-128-CTR keystream (openssl: fast and seeded)."""
    hdr = wav_header(0, [(b'INAM', BIG_TITLE), (b'IART', ARTIST), (b'IPRD', 'Big'), (b'IPRT', '1')])
    data_len = (size - len(hdr)) // 4 * 4
    hdr = wav_header(data_len, [(b'INAM', BIG_TITLE), (b'IART', ARTIST), (b'IPRD', 'Big'), (b'IPRT', '1')])
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(hdr)
        f.flush()
        key = '%032x' % seed
        zero = subprocess.Popen(['head', '-c', str(data_len), '/dev/zero'], stdout=subprocess.PIPE)
        subprocess.run(['openssl', 'enc', '-aes-128-ctr', '-nosalt', '-K', key, '-iv', '0' * 32],
                       stdin=zero.stdout, stdout=f, check=True)
        zero.stdout.close()
        zero.wait()
    if os.path.getsize(tmp) != len(hdr) + data_len:
        raise RuntimeError('%s: wrote %d bytes, want %d' % (tmp, os.path.getsize(tmp), len(hdr) + data_len))
    os.rename(tmp, path)


def small_title(i):
    return 'Small %05d' % i


def make_small(dirpath, count, size, seed, per_album=20):
    rng = random.Random(seed)
    tmp = dirpath + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for i in range(count):
        tags = [(b'INAM', small_title(i)), (b'IART', ARTIST), (b'IPRD', 'Small %03d' % (i // per_album)),
                (b'IPRT', str(i % per_album + 1))]
        hdr = wav_header(0, tags)
        data_len = (size - len(hdr)) // 4 * 4
        with open(os.path.join(tmp, 's%05d.wav' % i), 'wb') as f:
            f.write(wav_header(data_len, tags))
            f.write(rng.randbytes(data_len))
    os.rename(tmp, dirpath)


def dataset(args):
    """<data-dir>/<big MiB>m-<small count>x<small KiB>k/{big/big.wav, small/}: generated once."""
    root = os.path.join(args.data_dir, '%dm-%dx%dk' % (args.big_mib, args.small_files, args.small_kib))
    big = os.path.join(root, 'big', 'big.wav')
    small = os.path.join(root, 'small')
    os.makedirs(os.path.dirname(big), exist_ok=True)
    if not os.path.exists(big):
        log('generating %s (%d MiB; kept for reruns)' % (big, args.big_mib))
        t0 = time.monotonic()
        make_big(big, args.big_mib << 20, 0x6d75736963)
        log('generated in %.1f s' % (time.monotonic() - t0))
    if not os.path.isdir(small):
        log('generating %d small files of %d KiB in %s' % (args.small_files, args.small_kib, small))
        make_small(small, args.small_files, args.small_kib << 10, 4)
    smalls = sorted(os.path.join(small, f) for f in os.listdir(small) if f.endswith('.wav'))
    return root, big, smalls


# --------------------------------------------------------------------------------------------------
# The systems under measurement.

class Musicfsd:
    """musicfsd on the origin with its own cache dir and a [cache] section."""

    def __init__(self, origin, workdir, cache_conf):
        os.makedirs(workdir, exist_ok=True)
        self.cache_dir = os.path.join(workdir, 'cache')
        os.makedirs(self.cache_dir, exist_ok=True)
        conf = '[cache]\n' + ''.join('%s = %s\n' % kv for kv in cache_conf.items())
        self.d = harness.Daemon(origins=[origin], workdir=workdir, cache_dir=self.cache_dir,
                                mountpoint=os.path.join(workdir, 'mnt'), config_text=conf)
        os.makedirs(self.d.mountpoint, exist_ok=True)
        self.conf = conf

    @property
    def mountpoint(self):
        return self.d.mountpoint

    @property
    def pid(self):
        return self.d.pid

    @property
    def chunks_dir(self):
        """<cache_dir>/cache/chunks (manager.c: the cache lives beside catalog.db)."""
        return os.path.join(self.cache_dir, 'cache', 'chunks')

    def start(self, n_tracks, timeout=120):
        self.d.start(wait_ready=True, timeout=30)
        self.d.wait_tracks(n_tracks, timeout)
        if not os.path.isdir(self.chunks_dir):
            raise RuntimeError('%s does not exist: where does this musicfsd keep its chunks?' % self.chunks_dir)

    def stats(self):
        return {str(k): (float(v) if isinstance(v, dbus.Double) else
                         bool(v) if isinstance(v, dbus.Boolean) else
                         str(v) if isinstance(v, dbus.String) else int(v))
                for k, v in self.d.bus_call('GetCacheStats').items()}

    def wait_fills(self, timeout, want_bytes=None):
        """Until no fill runs or waits (and, with want_bytes, versions' bytes reach it). Returns
        (seconds waited, stats)."""
        t0 = time.monotonic()
        last = {}

        def done():
            last.update(self.stats())
            if last['fills-active'] or last['fills-queued']:
                return False
            return want_bytes is None or last['bytes'] >= want_bytes
        harness.wait_until(done, timeout, 0.05, message='the cache fills to end (last %r)' % last)
        return time.monotonic() - t0, dict(last)

    def clear(self, timeout=60):
        self.d.bus_call('ClearCache', timeout=timeout)
        harness.wait_until(lambda: self.stats()['bytes'] == 0, timeout, 0.05, message='ClearCache to empty the cache')

    def set_read_ahead_kb(self, kb):
        set_read_ahead_kb(self.mountpoint, kb)

    def fuse_settings(self):
        out = {}
        try:
            dev = os.stat(self.mountpoint).st_dev
            with open('/sys/class/bdi/%d:%d/read_ahead_kb' % (os.major(dev), os.minor(dev))) as f:
                out['read_ahead_kb'] = int(f.read())
        except OSError:
            pass
        return out

    def cleanup(self):
        self.d.cleanup()


class LibfuseExample:
    """One of libfuse's examples, mounted in the foreground until cleanup()."""

    def __init__(self, binary, mountpoint, argv, what):
        self.binary, self.mountpoint, self.argv, self.what = binary, mountpoint, argv, what
        self.proc = None
        self.logf = None

    def start(self, timeout=10):
        self.logf = open(self.mountpoint + '.log', 'wb')
        self.proc = subprocess.Popen([self.binary, '-f'] + self.argv + [self.mountpoint], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT, preexec_fn=harness._pdeathsig)
        harness.wait_until(lambda: harness.is_mounted(self.mountpoint) or self.proc.poll() is not None,
                           timeout, message='%s to mount' % self.what)
        if self.proc.poll() is not None:
            raise RuntimeError('%s exited with %s' % (self.what, self.proc.returncode))

    @property
    def pid(self):
        return self.proc.pid

    def cleanup(self):
        harness.terminate(self.proc)
        harness.lazy_unmount(self.mountpoint)
        if self.logf:
            self.logf.close()
            self.logf = None
        self.proc = None


class PassthroughLL(LibfuseExample):
    """libfuse's passthrough_ll example over the origin (ro, cache=always: keep_cache, 86,400 s
    timeouts, like musicfsd's defaults)."""

    def __init__(self, binary, source, mountpoint):
        os.makedirs(mountpoint, exist_ok=True)
        super().__init__(binary, mountpoint, ['-o', 'ro,cache=always,source=' + source], 'passthrough_ll')


class BareFuse(LibfuseExample):
    """libfuse's null example: a FUSE file system whose root is one 4 GiB file of zeros, each READ
    answered by a memset. No storage, no lookups, no hashing: what moving the bytes through FUSE
    costs on this machine, the ceiling of any FUSE file system's cold read (a kernel with
    FUSE_PASSTHROUGH aside, which libfuse 3.14 cannot ask for)."""

    def __init__(self, binary, mountpoint):
        with open(mountpoint, 'ab'):
            pass                      # null mounts on a regular file
        super().__init__(binary, mountpoint, [], 'libfuse null example')


def set_read_ahead_kb(mountpoint, kb):
    """The FUSE connection's readahead (its bdi's read_ahead_kb, which the kernel caps at 128 KiB
    when the connection starts): larger values let the kernel send larger and more READs at once."""
    dev = os.stat(mountpoint).st_dev
    with open('/sys/class/bdi/%d:%d/read_ahead_kb' % (os.major(dev), os.minor(dev)), 'w') as f:
        f.write('%d\n' % kb)


def build_example(workdir, source):
    """Compiles one of libfuse's examples into workdir (never into the tree). (binary, why not)."""
    name = os.path.splitext(os.path.basename(source))[0]
    if not os.path.exists(source):
        return None, '%s not found (libfuse3-dev examples)' % source
    out = os.path.join(workdir, name)
    try:
        flags = subprocess.run(['pkg-config', '--cflags', '--libs', 'fuse3'], check=True,
                               capture_output=True, text=True).stdout.split()
        subprocess.run(['gcc', '-O2', '-I', os.path.dirname(source), source, '-o', out] + flags,
                       check=True, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return None, 'could not build %s: %s' % (name, e)
    return out, None


def find_on_mount(mount, titles, timeout=30):
    """{title: path on the mount} for files whose name ends in '<title>.wav' (the tag layout's
    'NN - Title.wav')."""
    want = set(titles)
    found = {}
    deadline = time.monotonic() + timeout
    while True:
        for dirpath, _, files in os.walk(mount):
            for f in files:
                stem = f[:-4] if f.endswith('.wav') else None
                if stem is None:
                    continue
                for t in (stem, stem.partition(' - ')[2]):
                    if t in want:
                        found[t] = os.path.join(dirpath, f)
        if len(found) == len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    missing = want - set(found)
    if missing:
        raise RuntimeError('%d files not found on %s, e.g. %s' % (len(missing), mount, sorted(missing)[:3]))
    return found


# --------------------------------------------------------------------------------------------------
# The run.

class Run:
    def __init__(self, args, work, origin, big, smalls, pll_binary, pll_reason, null_binary, null_reason):
        self.args = args
        self.work = work
        self.origin = origin
        self.big = big
        self.big_size = os.path.getsize(big)
        self.smalls = smalls
        self.pll_binary, self.pll_reason = pll_binary, pll_reason
        self.null_binary, self.null_reason = null_binary, null_reason
        self.bare = None
        self.res = {'notes': [], 'big_bytes': self.big_size, 'small_files': len(smalls),
                    'small_bytes': os.path.getsize(smalls[0]) if smalls else 0}
        self.t_end = time.monotonic() + args.max_minutes * 60

    def note(self, s):
        log(s)
        self.res['notes'].append(s)

    def time_left(self):
        return self.t_end - time.monotonic()

    # -- chunking throughput
    def cdc(self):
        exe = os.path.join(harness.BUILD_ROOT, 'bench', 'cdc-speed')
        if not os.access(exe, os.X_OK):
            self.note('%s is not built (ninja -C BUILD bench/cdc-speed): chunking not measured' % exe)
            return
        out = subprocess.run([exe, str(self.args.cdc_mib), str(self.args.cdc_rounds)], capture_output=True,
                             text=True, timeout=300, check=True).stdout
        res = {}
        for line in out.splitlines():
            mode, nbytes, wall, cpu, chunks, mean = line.split('\t')
            res[mode] = {'bytes': int(nbytes), 'wall_s': float(wall), 'cpu_s': float(cpu), 'chunks': int(chunks),
                         'mean_chunk': int(mean)}
            log('%s: %.2f GB/s per core (CPU time), %.2f GB/s wall, %s chunks, mean %s B' % (
                mode, int(nbytes) / float(cpu) / 1e9, int(nbytes) / float(wall) / 1e9, chunks, mean))
        self.res['cdc'] = res

    def timed_read(self, name, path, pids, repeat=1, first_bytes=None):
        """Sequential reads of the whole file, or of its first_bytes (the fastest of repeat is kept:
        warm reads are short and the machine is shared); returns the rate, records it with the CPU
        seconds of pids."""
        best = None
        for _ in range(repeat):
            c0 = {k: cpu_s(p) for k, p in pids.items()}
            n, s = read_file(path, nbytes=first_bytes)
            cpu = {k: cpu_s(p) - c0[k] for k, p in pids.items()}
            if n != self.big_size:
                raise RuntimeError('%s: read %d bytes of %d' % (path, n, self.big_size))
            if best is None or s < best['s']:
                best = {'s': s, 'bps': n / s, 'cpu': cpu}
        self.res.setdefault('reads', {}).setdefault(name, []).append(best)
        log('  %-24s %.3f s  %s  cpu %s%s' % (name, best['s'], fmt_rate(best['bps']),
                                             ', '.join('%s %.2f s' % kv for kv in best['cpu'].items()),
                                             ' (best of %d)' % repeat if repeat > 1 else ''))
        return best['bps']

    def check_dropped(self, paths, what):
        pages = resident_pages(paths)
        self.res.setdefault('dropped_check', []).append([what, len(paths), pages])
        if pages:
            self.note('%s: %d pages still in the page cache right after drop_caches' % (what, pages))
        return pages

    # -- big file: cold miss, first read of a cached file, warm re-read
    def main_daemon(self, name):
        """A musicfsd with a fresh cache dir of its own (an empty cache: no chunks, no versions)."""
        conf = {'budget': '%dM' % self.args.main_budget_mib, 'readahead': 0}
        m = Musicfsd(self.origin, os.path.join(self.work, name), conf)
        self.res['config'] = m.conf
        m.start(len(self.smalls) + 1)
        if self.args.fuse_read_ahead_kb:
            m.set_read_ahead_kb(self.args.fuse_read_ahead_kb)
        self.res['fuse'] = m.fuse_settings()
        return m

    def big_file(self, pll):
        """Rounds of: a fresh daemon; cold miss; then cold and warm reads of musicfs (the file now
        cached), native and passthrough_ll. Returns the last round's daemon, still running."""
        pbig = os.path.join(pll.mountpoint, os.path.relpath(self.big, self.origin)) if pll else None
        m = None
        try:
            for r in range(self.args.rounds):
                if r and self.time_left() < 240:
                    self.note('stopping the big-file rounds after %d: the run is near its time limit' % r)
                    break
                log('big file, round %d/%d' % (r + 1, self.args.rounds))
                if m:
                    m.cleanup()
                    harness.safe_rmtree(m.d.workdir)
                    m = None
                m = self.main_daemon('main-%d' % r)
                self.big_round(r, m, pll, pbig)
            return m
        except BaseException:
            if m:
                m.cleanup()
            raise

    def big_round(self, r, m, pll, pbig):
        mbig = find_on_mount(m.mountpoint, [BIG_TITLE])[BIG_TITLE]
        self.res['big_mount_path'] = os.path.relpath(mbig, m.mountpoint)
        pids = {'musicfsd': m.pid}
        if pll:
            pids['passthrough_ll'] = pll.pid
        # Cold miss: empty cache, page cache dropped. The fill streams the whole file behind the
        # reader; it is timed to its end too (what a fill costs).
        drop_caches()
        self.check_dropped([self.big], 'origin file')
        s0 = m.stats()
        t0 = time.monotonic()
        self.timed_read('musicfs cold miss', mbig, pids)
        _, s1 = m.wait_fills(300, want_bytes=self.big_size)
        self.res.setdefault('fill_done_s', []).append(time.monotonic() - t0)
        self.res.setdefault('miss_stats', []).append({k: s1[k] - s0[k] for k in ('hits', 'misses')})
        self.res.setdefault('cached_stats', []).append(s1)
        if s1['bytes'] < self.big_size:
            self.note('after the fill the cache holds %d bytes, less than the file (%d)' % (
                s1['bytes'], self.big_size))
        # Cold reads of the same bytes, each after drop_caches, in a rotating order; each right
        # away read again with its pages in the page cache (the next system's drop_caches would
        # take them away).
        chunk_files = [os.path.join(dp, f) for dp, _, fs in os.walk(m.chunks_dir) for f in fs]
        # In the order the fill wrote them: the file's order, as a reader of the file asks for them.
        chunk_files.sort(key=lambda p: (os.stat(p).st_mtime_ns, p))
        paths = {'native': self.big, 'musicfs': mbig, 'passthrough_ll': pbig}
        order = (['native', 'musicfs', 'chunk files'] + (['passthrough_ll'] if pll else []) +
                 (['bare FUSE'] if self.bare else []))
        k = r % len(order)
        for name in order[k:] + order[:k]:
            drop_caches()
            if name == 'musicfs':
                self.check_dropped(chunk_files, 'chunk files')
                h0 = m.stats()
                self.timed_read('musicfs cached cold', mbig, pids)
                h1 = m.stats()
                self.res.setdefault('cached_read_stats', []).append(
                    {k: h1[k] - h0[k] for k in ('hits', 'misses')})
            elif name == 'chunk files':
                # No FUSE, no verification: the layout's own cost, the floor under the cached read.
                self.check_dropped(chunk_files, 'chunk files')
                n, s = read_chunk_files(chunk_files)
                self.res.setdefault('reads', {}).setdefault('chunk files cold', []).append({'s': s, 'bps': n / s,
                                                                                         'cpu': {}})
                log('  %-24s %.3f s  %s  (%d files, native reads in batches of 32)' % (
                    'chunk files cold', s, fmt_rate(n / s), len(chunk_files)))
                continue
            elif name == 'bare FUSE':
                # The same byte count through FUSE with nothing behind it (a memset per READ), at
                # musicfsd's FUSE readahead: no warm re-read, null keeps no pages.
                set_read_ahead_kb(self.bare.mountpoint, m.fuse_settings().get('read_ahead_kb', 128))
                self.timed_read('bare FUSE cold', self.bare.mountpoint, dict(pids, null=self.bare.pid),
                                first_bytes=self.big_size)
                continue
            else:
                self.check_dropped([self.big], 'origin file')
                self.timed_read(name + ' cold', paths[name], pids)
            self.timed_read(name + ' warm', paths[name], pids, repeat=self.args.warm_repeat)

    # -- a file whose version is recorded but whose chunks are gone (ClearCache; eviction alike)
    def evicted_reread(self, m):
        """Bounded to the first --evicted-mib MiB: this path fetches and stores chunk by chunk."""
        mbig = find_on_mount(m.mountpoint, [BIG_TITLE])[BIG_TITLE]
        n = min(self.args.evicted_mib, self.big_size >> 20)
        log('re-read of the first %d MiB after ClearCache (versions kept, chunks dropped)' % n)
        m.clear()
        st = m.stats()
        drop_caches()
        c0 = cpu_s(m.pid)
        t0 = time.perf_counter()
        subprocess.run(['dd', 'if=' + mbig, 'of=/dev/null', 'bs=1M', 'count=%d' % n], capture_output=True,
                       timeout=600, check=True)
        s = time.perf_counter() - t0
        cpu = cpu_s(m.pid) - c0
        drop_caches()
        t1 = time.perf_counter()
        subprocess.run(['dd', 'if=' + self.big, 'of=/dev/null', 'bs=1M', 'count=%d' % n], capture_output=True,
                       timeout=600, check=True)
        ns = time.perf_counter() - t1
        st1 = m.stats()
        self.res['evicted_reread'] = {'bytes': n << 20, 's': s, 'bps': (n << 20) / s, 'cpu_s': cpu,
                                      'native_cold_bps': (n << 20) / ns, 'versions': st['versions'],
                                      'hits': st1['hits'] - st['hits'], 'misses': st1['misses'] - st['misses'],
                                      'fills_after': st1['fills-active'] + st1['fills-queued']}
        log('  %d MiB in %.2f s: %s (native cold %s), musicfsd CPU %.2f s; versions kept %d' % (
            n, s, fmt_rate((n << 20) / s), fmt_rate((n << 20) / ns), cpu, st['versions']))

    # -- open + first 4 KiB of many small cached files
    def ttfb(self, m, pll):
        titles = [small_title(i) for i in range(len(self.smalls))]
        on_mount = find_on_mount(m.mountpoint, titles)
        paths = {'musicfs': [on_mount[t] for t in titles], 'native': list(self.smalls)}
        if pll:
            paths['passthrough_ll'] = [os.path.join(pll.mountpoint, os.path.relpath(p, self.origin))
                                       for p in self.smalls]
        # Into the cache: read each once through the mount, then wait for the fills.
        t0 = time.monotonic()
        for p in paths['musicfs']:
            with open(p, 'rb') as f:
                while f.read(1 << 20):
                    pass
        _, st = m.wait_fills(300)
        self.res['small_fill_s'] = time.monotonic() - t0
        self.res['small_cached_stats'] = st
        log('small files cached in %.1f s: %d bytes, %d versions' % (self.res['small_fill_s'], st['bytes'],
                                                                     st['versions']))

        def one(p):
            t0 = clock()
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            os.read(fd, 4096)
            os.close(fd)
            return clock() - t0

        clock = time.perf_counter_ns
        names = list(paths)
        total = len(self.smalls)
        # Systems take turns in blocks of files (100 by default), the order rotating, so that each
        # reads its files in their order on disk, as a program walking one mount does. Turns file by
        # file (--ttfb-block 1) spread a stall of the shared disk over all systems alike, but take
        # that order away: passthrough_ll's own p99 went from 424 to 1,012 µs (bench/README.md).
        block = self.args.ttfb_block
        res = {}
        for mode in ('cold', 'warm'):
            lat = {n: [] for n in names}
            h0 = m.stats()
            k = 0
            for r in range(self.args.ttfb_rounds):
                if mode == 'cold':
                    # The page cache only: the kernel keeps its dentries and inodes, so every
                    # system pays an open and a read that reaches its storage, not a lookup.
                    drop_caches(1)
                else:
                    for n in names:           # every page in: a warm-up pass
                        for p in paths[n]:
                            one(p)
                for lo in range(0, total, block):
                    k += 1
                    for n in names[k % len(names):] + names[:k % len(names)]:
                        out = lat[n]
                        for p in paths[n][lo:lo + block]:
                            out.append(one(p))
            h1 = m.stats()
            out = {'musicfs_stats': {x: h1[x] - h0[x] for x in ('hits', 'misses')}}
            for n, v in lat.items():
                v.sort()
                out[n] = {'p50_us': percentile(v, 50) / 1e3, 'p99_us': percentile(v, 99) / 1e3,
                          'mean_us': sum(v) / len(v) / 1e3, 'samples': len(v)}
            res[mode] = out
            log('open+4 KiB %s: ' % mode + ', '.join('%s p50 %.1f p99 %.1f µs' % (n, out[n]['p50_us'], out[n]['p99_us'])
                                                     for n in names) + '; musicfs %r' % out['musicfs_stats'])
        res['block'] = block
        self.res['ttfb'] = res

    # -- the budget while three times it streams through
    def budget(self):
        budget = self.args.budget_mib << 20 if self.args.budget_mib else int(self.big_size / 3.2) // (1 << 20) << 20
        conf = {'budget': '%dM' % (budget >> 20), 'readahead': 0}
        if self.args.maintenance_interval:
            conf['maintenance_interval'] = self.args.maintenance_interval
        m = Musicfsd(self.origin, os.path.join(self.work, 'budget'), conf)
        self.res['budget'] = {'budget': budget, 'config': m.conf, 'streamed': self.big_size}
        try:
            m.start(len(self.smalls) + 1)
            mbig = find_on_mount(m.mountpoint, [BIG_TITLE])[BIG_TITLE]
            drop_caches()
            samples = []
            t0 = time.monotonic()
            dd = subprocess.Popen(['dd', 'if=' + mbig, 'of=/dev/null', 'bs=1M'], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            read_done = None
            settle_until = None
            try:
                while True:
                    now = time.monotonic()
                    st = m.stats()
                    files, tmp = tree_bytes(m.chunks_dir)
                    du_apparent = du(m.chunks_dir, '-sb')
                    du_alloc = du(m.chunks_dir, '-s', '--block-size=1')
                    samples.append({'t': now - t0, 'bytes': st['bytes'], 'files': files, 'tmp': tmp,
                                    'du_apparent': du_apparent,
                                    'du_alloc': du_alloc, 'evicted': st['evicted-bytes'],
                                    'fills': st['fills-active'] + st['fills-queued']})
                    if read_done is None and dd.poll() is not None:
                        read_done = now - t0
                    if read_done is not None and settle_until is None and not samples[-1]['fills']:
                        settle_until = now + self.args.settle
                    if settle_until is not None and now >= settle_until:
                        break
                    if now - t0 > 300:
                        self.note('budget run stopped after 300 s (fills still running)')
                        break
                    time.sleep(max(0.0, self.args.sample_interval - (time.monotonic() - now)))
            finally:
                if dd.poll() is None:
                    dd.kill()
                dd.wait()
            if dd.returncode != 0:
                self.note('dd of the budget run failed: %s' % dd.stderr.read()[-300:])
            st = m.stats()
            b = self.res['budget']
            b.update({'samples': len(samples), 'interval_s': self.args.sample_interval, 'read_s': read_done,
                      'duration_s': samples[-1]['t'] if samples else None,
                      'max_bytes': max(s['bytes'] for s in samples),
                      'max_files': max(s['files'] for s in samples),
                      'max_tmp': max(s['tmp'] for s in samples),
                      'max_du_apparent': max(s['du_apparent'] for s in samples),
                      'max_du_alloc': max(s['du_alloc'] for s in samples),
                      'final_stats': st, 'series': samples})
            log('budget %d MiB: max stats bytes %.3f×, chunk files %.3f× (temporaries up to %d bytes), du -sb %.3f×, '
                'du allocated %.3f×; evicted %d bytes' % (
                    budget >> 20, b['max_bytes'] / budget, b['max_files'] / budget, b['max_tmp'],
                    b['max_du_apparent'] / budget, b['max_du_alloc'] / budget, st['evicted-bytes']))
        finally:
            m.cleanup()

    def run(self):
        m = pll = None
        try:
            log('== chunking throughput (cdc-speed)')
            self.cdc()
            if self.pll_binary:
                pll = PassthroughLL(self.pll_binary, self.origin, os.path.join(self.work, 'pll-mnt'))
                pll.start()
                if self.args.fuse_read_ahead_kb:
                    set_read_ahead_kb(pll.mountpoint, self.args.fuse_read_ahead_kb)
            else:
                self.res['pll_skipped'] = self.pll_reason
            if self.null_binary:
                self.bare = BareFuse(self.null_binary, os.path.join(self.work, 'null-mnt'))
                self.bare.start()
            else:
                self.res['null_skipped'] = self.null_reason
            log('== big file (%d bytes)' % self.big_size)
            m = self.big_file(pll)
            if m and self.args.evicted_mib:
                self.evicted_reread(m)
            log('== open + first 4 KiB of %d small cached files' % len(self.smalls))
            self.ttfb(m, pll)
            self.res['daemon_rss_kb'] = harness_status(m.pid)
            self.res['daemon_log_tail'] = m.d.log()[-3000:]
            m.cleanup()
            m = None
            if pll:
                pll.cleanup()
                pll = None
            if self.bare:
                self.bare.cleanup()
                self.bare = None
            log('== budget: %d bytes through a cache of budget %s' % (self.big_size, self.args.budget_mib or 'file/3.2'))
            self.budget()
        finally:
            if pll:
                pll.cleanup()
            if self.bare:
                self.bare.cleanup()
            if m:
                m.cleanup()
        return self.res


def harness_status(pid):
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


# --------------------------------------------------------------------------------------------------
# Report.

def rates(res, name):
    return [x['bps'] for x in res.get('reads', {}).get(name, [])]


def cpu_of(res, name, who):
    v = [x['cpu'].get(who) for x in res.get('reads', {}).get(name, []) if who in x['cpu']]
    return med(v)


def spread(v):
    """'median (min–max)' of rates."""
    if not v:
        return '–'
    return '%s (%s–%s)' % (fmt_rate(med(v)), fmt_rate(min(v)), fmt_rate(max(v)))


def ge(a, target):
    """a >= target, or None (not measured) when a is missing."""
    return None if a is None else a >= target


def table(r):
    rows = []

    def row(figure, ours, ref, ratio, target, ok):
        rows.append('| %s | %s | %s | %s | %s | %s |' % (figure, ours, ref, ratio, target, verdict(ok)))

    def ratio_stats(a, b):
        """Median, min and max of the per-round ratios a[i] / b[i]."""
        rs = [x / y for x, y in zip(a, b) if y]
        return (med(rs), min(rs), max(rs)) if rs else (None, None, None)

    nat = rates(r, 'native cold')
    pc = rates(r, 'passthrough_ll cold')
    cached = rates(r, 'musicfs cached cold')
    miss = rates(r, 'musicfs cold miss')
    mw = rates(r, 'musicfs warm')
    pw = rates(r, 'passthrough_ll warm')
    nw = rates(r, 'native warm')
    n = len(cached)
    gib = r['big_bytes'] / 2**30

    if cached:
        a, lo, hi = ratio_stats(cached, nat)
        row('first read of a fully cached %.2f GiB file, page cache dropped (median of %d)' % (gib, n),
            spread(cached),
            'native cold %s' % (spread(nat)),
            '%s (per round %s–%s)' % (fmt_ratio(a), fmt_ratio(lo), fmt_ratio(hi)), '≥ 0.8× native cold',
            ge(a, TARGET_CACHED_VS_NATIVE))
        cf = rates(r, 'chunk files cold')
        if cf:
            a, lo, hi = ratio_stats(cached, cf)
            rows.append('| the same, against the cache\'s chunk files read natively (no FUSE, no hashing; the '
                        'files in the order they were written, 32 opened and advised at a time) | %s | chunk '
                        'files cold %s (%s of native cold) | %s (per round %s–%s) | (info: the layout\'s own '
                        'floor) | — |' % (fmt_rate(med(cached)), spread(cf), fmt_ratio(ratio_stats(cf, nat)[0]),
                                         fmt_ratio(a), fmt_ratio(lo), fmt_ratio(hi)))
        bare = rates(r, 'bare FUSE cold')
        if bare:
            a, lo, hi = ratio_stats(cached, bare)
            b, blo, bhi = ratio_stats(bare, nat)
            rows.append('| the same, against FUSE itself: libfuse\'s `null` example (each READ a memset: no storage, '
                        'no hashing), the same byte count at the same FUSE readahead | %s | bare FUSE %s, which is '
                        '%s of native cold (per round %s–%s) | %s (per round %s–%s) | (info: the ceiling of any '
                        'FUSE file system on this machine) | — |' % (
                            fmt_rate(med(cached)), spread(bare), fmt_ratio(b), fmt_ratio(blo), fmt_ratio(bhi),
                            fmt_ratio(a), fmt_ratio(lo), fmt_ratio(hi)))
            # What D7 leaves on this machine at best. CPU: SHA-256 over the bytes (every chunk is
            # verified on read) plus what bare FUSE spends moving them, spread over every core, with
            # no storage read and no reader's copy counted. Storage: the chunk files read natively
            # (one file per chunk), with no FUSE and no hashing. A cached read, even one that
            # overlapped the two perfectly, is no faster than the slower of them.
            sha = (r.get('cdc') or {}).get('sha256')
            null_cpu = cpu_of(r, 'bare FUSE cold', 'null')
            cf = rates(r, 'chunk files cold')
            if sha and null_cpu is not None and nat:
                per_byte = sha['cpu_s'] / sha['bytes'] + null_cpu / r['big_bytes']
                bound = (os.cpu_count() or 1) / per_byte
                both = min(bound, med(cf)) if cf else bound
                rows.append('| the same, against the fastest read that D7 allows here: CPU, SHA-256 of the bytes '
                            '(%.2f s per GiB, cdc-speed) plus bare FUSE\'s CPU (%.2f s per GiB) on all %d cores; '
                            'storage, the chunk files read natively | %s | CPU at most %s; chunk files %s; the '
                            'slower of the two, %s, is %s of native cold | %s | (info: the bound the design sets '
                            'on this machine) | — |' % (
                                sha['cpu_s'] / sha['bytes'] * 2**30, null_cpu / r['big_bytes'] * 2**30,
                                os.cpu_count() or 1, fmt_rate(med(cached)), fmt_rate(bound),
                                fmt_rate(med(cf)) if cf else '–', fmt_rate(both), fmt_ratio(both / med(nat)),
                                fmt_ratio(med(cached) / both)))
        if pc:
            a, lo, hi = ratio_stats(cached, pc)
            row('the same, against passthrough_ll', fmt_rate(med(cached)),
                'passthrough_ll cold %s' % (spread(pc)),
                '%s (per round %s–%s)' % (fmt_ratio(a), fmt_ratio(lo), fmt_ratio(hi)), '≥ 0.9× passthrough_ll',
                ge(a, TARGET_CACHED_VS_PLL))
    if mw and pw:
        a, lo, hi = ratio_stats(mw, pw)
        row('re-read, page cache warm (median of %d)' % len(mw),
            spread(mw),
            'passthrough_ll warm %s; native warm %s' % (spread(pw),
                                                               fmt_rate(med(nw))),
            '%s (per round %s–%s); %s of native warm' % (fmt_ratio(a), fmt_ratio(lo), fmt_ratio(hi),
                                                         fmt_ratio(med(mw) / med(nw) if nw else None)),
            '≥ 0.9× passthrough_ll warm', ge(a, TARGET_WARM_VS_PLL))
    if miss:
        # Each miss round's native reference is the native cold read of the same round.
        a, lo, hi = ratio_stats(miss, nat)
        fills = r.get('fill_done_s') or []
        row('cold miss, empty cache, local origin (median of %d)' % len(miss),
            '%s; whole file in the cache %.1f s after the read began' % (
                spread(miss), med(fills) if fills else float('nan')),
            'native cold %s' % fmt_rate(med(nat)),
            '%s (per round %s–%s)' % (fmt_ratio(a), fmt_ratio(lo), fmt_ratio(hi)), '≥ 0.5× native cold',
            ge(a, TARGET_MISS_VS_NATIVE))
    ev = r.get('evicted_reread')
    if ev:
        rows.append('| re-read after ClearCache (versions kept, chunks gone: as after an eviction), first %d MiB, '
                    'page cache dropped | %s (musicfsd CPU %.2f s) | native cold %s; fresh cold miss above %s | '
                    '%s of native cold; %s of a fresh miss | (a miss: ≥ 0.5× native cold) | %s |' % (
                        ev['bytes'] >> 20, fmt_rate(ev['bps']), ev['cpu_s'], fmt_rate(ev['native_cold_bps']),
                        fmt_rate(med(miss)), fmt_ratio(ev['bps'] / ev['native_cold_bps']),
                        fmt_ratio(ev['bps'] / med(miss) if miss else None),
                        'info: %s' % verdict(ev['bps'] / ev['native_cold_bps'] >= TARGET_MISS_VS_NATIVE)))
    cdc = r.get('cdc') or {}
    if cdc:
        c = cdc['cdc']
        per_core = c['bytes'] / c['cpu_s']
        cs = cdc['cdc+sha256']
        sh = cdc['sha256']
        row('chunking (FastCDC) of %d MiB seeded random, best of N, one core' % (c['bytes'] >> 20),
            '%.2f GB/s per core (CPU time; wall %.2f GB/s); %d chunks, mean %d B' % (
                per_core / 1e9, c['bytes'] / c['wall_s'] / 1e9, c['chunks'], c['mean_chunk']),
            'SHA-256 alone %.2f GB/s; CDC + SHA-256 %.2f GB/s per core (wall %.2f)' % (
                sh['bytes'] / sh['cpu_s'] / 1e9, cs['bytes'] / cs['cpu_s'] / 1e9, cs['bytes'] / cs['wall_s'] / 1e9),
            '%s of the 1 GB/s floor, %s of the 2 GB/s target' % (fmt_ratio(per_core / TARGET_CDC_REQUIRED),
                                                                 fmt_ratio(per_core / TARGET_CDC)),
            '≥ 1 GB/s per core (target 2)', per_core >= TARGET_CDC_REQUIRED)
        rows[-1] = rows[-1].replace('**met**', '**met** (%s)' % ('2 GB/s target met' if per_core >= TARGET_CDC
                                                              else 'floor only; 2 GB/s target not met'))
    tt = r.get('ttfb') or {}
    for mode in ('cold', 'warm'):
        t = tt.get(mode)
        if not t or 'musicfs' not in t:
            continue
        o = t['musicfs']
        ref = 'native p50 %.1f / p99 %.1f µs' % (t['native']['p50_us'], t['native']['p99_us'])
        ratio, ok = '–', None
        if 'passthrough_ll' in t:
            p = t['passthrough_ll']
            ref = 'passthrough_ll p50 %.1f / p99 %.1f µs; ' % (p['p50_us'], p['p99_us']) + ref
            ratio = 'p99 %s, p50 %s of passthrough_ll' % (fmt_ratio(o['p99_us'] / p['p99_us']),
                                                          fmt_ratio(o['p50_us'] / p['p50_us']))
            ok = o['p99_us'] / p['p99_us'] <= TARGET_TTFB_P99_VS_PLL
        what = ('page cache dropped (`drop_caches` 1), dentries kept' if mode == 'cold'
                else 'page cache warm (keep_cache)')
        row('open + first 4 KiB of %d cached files of %d KiB, %s; %d samples each, the systems taking turns '
            'every %d file%s' % (r['small_files'], r['small_bytes'] >> 10, what, o['samples'], tt.get('block', 100),
                                 '' if tt.get('block', 100) == 1 else 's'),
            'p50 %.1f / p99 %.1f µs (misses during it: %d)' % (o['p50_us'], o['p99_us'], t['musicfs_stats']['misses']),
            ref, ratio, '≤ 1.5× passthrough_ll (p99)' if mode == 'cold' else 'info (same target)', ok)
    b = r.get('budget') or {}
    if b.get('samples'):
        bud = b['budget']
        worst = max(b['max_bytes'], b['max_files']) / bud
        row('cache size while %.1f× its budget (%d MiB) streams through, sampled every %.2f s (%d samples)' % (
            b['streamed'] / bud, bud >> 20, b['interval_s'], b['samples']),
            'max GetCacheStats bytes %.3f×; max bytes of the files under chunks/ %.3f× (temporaries of a batch '
            'in flight up to %.1f MiB); `du -sb chunks/` %.3f× (with its 257 directories), allocated blocks %.3f×' % (
                b['max_bytes'] / bud, b['max_files'] / bud, b['max_tmp'] / 2**20, b['max_du_apparent'] / bud,
                b['max_du_alloc'] / bud),
            '— (budget)', '%s of budget (worst of the stats and the files)' % fmt_ratio(worst), '≤ 1.05× budget',
            worst <= TARGET_BUDGET_RATIO)
    return rows


def notes(r):
    out = []
    for name in ('musicfs cached cold', 'musicfs cold miss', 'musicfs warm', 'passthrough_ll cold',
                 'passthrough_ll warm', 'bare FUSE cold'):
        who = ('passthrough_ll' if name.startswith('passthrough_ll') else 'null' if name.startswith('bare')
               else 'musicfsd')
        c = cpu_of(r, name, who)
        if c is not None:
            out.append('- %s: %s CPU %.2f s per GiB read (median).' % (name, who, c / (r['big_bytes'] / 2**30)))
    if r.get('cached_read_stats'):
        out.append('- cache hits/misses counted during each cached read: %s; during each cold miss: %s.' % (
            r['cached_read_stats'], r.get('miss_stats')))
    if r.get('fill_done_s'):
        out.append('- cold miss: the whole file was in the cache %s s after the read began (fill rate %s).' % (
            ', '.join('%.1f' % x for x in r['fill_done_s']),
            ', '.join(fmt_rate(r['big_bytes'] / x) for x in r['fill_done_s'])))
    if r.get('small_fill_s') is not None:
        st = r['small_cached_stats']
        out.append('- small files: read once through the mount and filled in %.1f s; cache %d bytes, %d chunks, '
                   '%d versions.' % (r['small_fill_s'], st['bytes'], st['chunks'], st['versions']))
    b = r.get('budget') or {}
    if b.get('final_stats'):
        st = b['final_stats']
        out.append('- budget run (%s): read took %s s, sampling ran %.1f s; at the end %d bytes in %d chunks, '
                   '%d evictions (%d bytes), %d versions.' % (
                       b['config'].replace('\n', ' ').strip(), '%.1f' % b['read_s'] if b.get('read_s') else '?',
                       b['duration_s'] or 0, st['bytes'], st['chunks'], st['evictions'], st['evicted-bytes'],
                       st['versions']))
    if r.get('dropped_check'):
        dc = r['dropped_check']
        bad = [x for x in dc if x[2]]
        unknown = [x for x in dc if x[2] is None]
        out.append('- page cache checked with fincore right after each drop_caches before a cold read: %d checks, '
                   '%d with pages left, %d not checkable.' % (len(dc), len(bad), len(unknown)))
    if r.get('config'):
        out.append('- main daemon config: %s; FUSE %s.' % (r['config'].replace('\n', ' ').strip(), r.get('fuse')))
    if r.get('daemon_rss_kb'):
        out.append('- musicfsd after the reads: VmRSS %.1f MB, VmHWM %.1f MB, %d threads.' % (
            r['daemon_rss_kb'].get('VmRSS', 0) / 1024, r['daemon_rss_kb'].get('VmHWM', 0) / 1024,
            r['daemon_rss_kb'].get('Threads', 0)))
    if r.get('pll_skipped'):
        out.append('- passthrough_ll not run: %s.' % r['pll_skipped'])
    if r.get('null_skipped'):
        out.append('- bare FUSE (libfuse null) not run: %s.' % r['null_skipped'])
    for s in r.get('notes', []):
        out.append('- note: %s' % s)
    return out


def machine_info(daemon_path):
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), '')
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
            'os': deb, 'libfuse': fusever, 'daemon': daemon_path, 'build': build,
            'loadavg_start': os.getloadavg()}


def report(r, info, started, argv):
    lines = ['# MusicFS chunk cache benchmark, %s' % time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started)), '',
             '- command: `%s`' % ' '.join(argv),
             '- machine: %s, %d CPUs, %.1f GiB RAM, kernel %s, %s; libfuse %s' % (
                 info['cpu'], info['cpus'], info['mem_gib'], info['kernel'], info['os'], info['libfuse']),
             '- daemon: %s (%s)' % (info['daemon'], info['build'] or 'build options unknown'),
             '- load average at start %s, at end %s (the machine is shared: compare ratios, not absolutes)' % (
                 ' '.join('%.2f' % x for x in info['loadavg_start']), ' '.join('%.2f' % x for x in os.getloadavg())),
             '- wall time of the run: %.0f s' % (time.monotonic() - info['t0']), '',
             '| figure | MusicFS | reference (same run) | ratio | target | verdict |',
             '|---|---|---|---|---|---|'] + table(r) + [''] + notes(r) + ['']
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='a smoke run: 256 MiB file, 500 small files, one round')
    ap.add_argument('--data-dir', default='/var/tmp/musicfs-bench/cache-data', help='generated data (kept)')
    ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'results'), help='directory for cache-<date>.md/.json')
    ap.add_argument('--big-mib', type=int, default=1024, help='size of the big file (default 1024 MiB)')
    ap.add_argument('--small-files', type=int, default=2000, help='small files for open + 4 KiB (default 2000)')
    ap.add_argument('--small-kib', type=int, default=128, help='size of each small file (default 128 KiB)')
    ap.add_argument('--rounds', type=int, default=3, help='big-file rounds (default 3)')
    ap.add_argument('--warm-repeat', type=int, default=3, help='warm re-reads per round, the best kept (default 3)')
    ap.add_argument('--evicted-mib', type=int, default=64,
                    help='MiB re-read after ClearCache (versions kept, chunks gone; default 64, 0: skip)')
    ap.add_argument('--fuse-read-ahead-kb', type=int, default=0,
                    help='set read_ahead_kb of both FUSE mounts (musicfsd and passthrough_ll; default: the kernel\'s)')
    ap.add_argument('--ttfb-rounds', type=int, default=3, help='open + 4 KiB rounds per mode (default 3)')
    ap.add_argument('--ttfb-block', type=int, default=100,
                    help='open + 4 KiB: files per system before the next system takes its turn (default 100)')
    ap.add_argument('--cdc-mib', type=int, default=256, help='cdc-speed buffer (default 256 MiB)')
    ap.add_argument('--cdc-rounds', type=int, default=5, help='cdc-speed best-of rounds (default 5)')
    ap.add_argument('--main-budget-mib', type=int, default=8192, help='budget of the main daemon (default 8192)')
    ap.add_argument('--budget-mib', type=int, default=0, help='budget of the budget run (default big file / 3.2)')
    ap.add_argument('--maintenance-interval', type=int, default=0,
                    help='[cache] maintenance_interval of the budget run (default: the daemon\'s own)')
    ap.add_argument('--sample-interval', type=float, default=0.2, help='budget sampling cadence, s (default 0.2)')
    ap.add_argument('--settle', type=float, default=3.0, help='seconds sampled after the fills end (default 3)')
    ap.add_argument('--max-minutes', type=float, default=14.0, help='stop starting new rounds after this')
    ap.add_argument('--no-passthrough', action='store_true', help='skip libfuse passthrough_ll')
    ap.add_argument('--keep', action='store_true', help='keep the work dir (caches, logs)')
    args = ap.parse_args()
    if args.quick:
        args.big_mib, args.small_files, args.rounds, args.ttfb_rounds, args.cdc_rounds = 256, 500, 1, 1, 3

    if os.geteuid() != 0:
        sys.exit('bench_cache.py needs root (FUSE mounts, drop_caches)')
    if not os.access(harness.DAEMON, os.X_OK):
        sys.exit('%s is not built: set MUSICFS_BUILD_ROOT or build ./build' % harness.DAEMON)
    harness.require_fuse()
    try:
        drop_caches()
    except OSError as e:
        sys.exit('cannot drop the page cache (%s): the cold figures would be warm' % e)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)

    started = time.time()
    info = machine_info(harness.DAEMON)
    info['t0'] = time.monotonic()
    os.makedirs(args.data_dir, exist_ok=True)
    origin, big, smalls = dataset(args)

    work = tempfile.mkdtemp(prefix='run-', dir=args.data_dir)
    res = None
    run = None
    try:
        with harness.private_system_bus():
            pll_binary, pll_reason = (None, 'skipped (--no-passthrough)') if args.no_passthrough \
                else build_example(work, PLL_SOURCE)
            null_binary, null_reason = (None, 'skipped (--no-passthrough)') if args.no_passthrough \
                else build_example(work, NULL_SOURCE)
            run = Run(args, work, origin, big, smalls, pll_binary, pll_reason, null_binary, null_reason)
            try:
                res = run.run()
            except (harness.DaemonFailed, harness.WaitTimeout, subprocess.SubprocessError, OSError, RuntimeError,
                    dbus.DBusException) as e:
                run.note('aborted: %s' % str(e)[:2000])
                res = run.res
    except Stop as e:
        log('stopped by %s; cleaning up' % e)
        if run:
            run.note('interrupted (%s): the figures are partial' % e)
        res = run.res if run else None
    finally:
        if args.keep:
            log('work dir kept: %s' % work)
        else:
            harness.safe_rmtree(work)

    if not res:
        return 1
    text = report(res, info, started, ['MUSICFS_BUILD_ROOT=%s' % harness.BUILD_ROOT, '/usr/bin/python3'] + sys.argv)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime('%Y-%m-%d-%H%M', time.localtime(started))
    with open(os.path.join(args.out, 'cache-%s.md' % stamp), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    with open(os.path.join(args.out, 'cache-%s.json' % stamp), 'w', encoding='utf-8') as f:
        json.dump({'info': info, 'results': res}, f, indent=1, default=str)
    log('written %s' % os.path.join(args.out, 'cache-%s.md' % stamp))
    return 0


if __name__ == '__main__':
    sys.exit(main())
