#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The remote read-path benchmark (issue #5): time to first byte of an uncached file and streaming
of an uncached file through musicfsd's S3 and SFTP origins, side by side in one run with the peers'
own clients (curl's ranged GET, OpenSSH's sftp) and with sshfs and rclone mount --vfs-cache-mode
full on the same peers, at 0 ms and 20 ms round-trip time. Reported as deltas and ratios. See
bench/README.md, "Remote origins: reads".

  sudo MUSICFS_BUILD_ROOT=$PWD/build-rel /usr/bin/python3 bench/bench_remote_read.py [--rounds 8]

Peers: s3rver (tests/lib/s3peer.py) and sshd (tests/lib/sftppeer.py) on 127.0.0.1, each behind a
delaying relay in a child process (every chunk is held for half the RTT in each direction,
pipelined, so it adds latency and as little else as Python allows; faultproxy's latency toxic holds each 32 KiB chunk in turn,
which caps a stream at 32 KiB per delay and would measure that cap, not latency). Everything it
starts (daemon, bus, peers, relays, mounts) is stopped at exit, on errors and on signals.
"""

import argparse
import json
import os
import platform
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

import harness  # noqa: E402 - exits 77 without dbus/dbusmock
import genlib   # noqa: E402
import s3peer   # noqa: E402
import sftppeer  # noqa: E402

TARGET_TTFB_DELTA_MS = 10.0
TARGET_STREAM_RATIO = 0.8
BUCKET = 'music'
SAMPLE_RATE = 48000                 # genlib's wav: 16-bit mono, 96,000 bytes per second
TTFB_READ = 4096


class Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise Stop('signal %d' % signum)


def log(msg):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


def p50(v):
    return statistics.median(v) if v else float('nan')


def fmt_ms(v):
    return '–' if v is None or v != v else '%.1f' % v


# --------------------------------------------------------------------------------------------------
# A minimal SFTP v3 client over OpenSSH's `ssh -s sftp`: the peer's own first byte on an established
# session (OPEN + READ, two round trips), the same work musicfsd's pooled session does on a miss.

class RawSftp:
    def __init__(self, port, user, key, known_hosts, timeout=30):
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            ['ssh', '-F', '/dev/null', '-p', str(port), '-i', key, '-o', 'IdentitiesOnly=yes',
             '-o', 'BatchMode=yes', '-o', 'UserKnownHostsFile=' + known_hosts,
             '-o', 'StrictHostKeyChecking=yes', '-s', '%s@127.0.0.1' % user, 'sftp'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.id = 0
        self._send(1, struct.pack('>I', 3))             # SSH_FXP_INIT v3
        t, _ = self._recv()
        if t != 2:
            raise RuntimeError('sftp: no VERSION (%d)' % t)
        self.session_s = time.perf_counter() - self.t_spawn

    def _send(self, t, payload):
        self.proc.stdin.write(struct.pack('>IB', len(payload) + 1, t) + payload)
        self.proc.stdin.flush()

    def _read(self, n):
        b = b''
        while len(b) < n:
            c = self.proc.stdout.read(n - len(b))
            if not c:
                raise RuntimeError('sftp: EOF from ssh')
            b += c
        return b

    def _recv(self):
        n, t = struct.unpack('>IB', self._read(5))
        return t, self._read(n - 1)

    @staticmethod
    def _str(s):
        return struct.pack('>I', len(s)) + s

    def first_bytes(self, path, n=TTFB_READ):
        """Seconds from OPEN to the DATA of the first n bytes; closes the handle afterwards."""
        self.id += 1
        t0 = time.perf_counter()
        self._send(3, struct.pack('>I', self.id) + self._str(path.encode()) + struct.pack('>II', 1, 0))
        t, body = self._recv()
        if t != 102:
            raise RuntimeError('sftp OPEN %s: reply %d' % (path, t))
        (hl,) = struct.unpack('>I', body[4:8])
        handle = body[8:8 + hl]
        self.id += 1
        self._send(5, struct.pack('>I', self.id) + self._str(handle) + struct.pack('>QI', 0, n))
        t, body = self._recv()
        dt = time.perf_counter() - t0
        if t != 103:
            raise RuntimeError('sftp READ %s: reply %d' % (path, t))
        self.id += 1
        self._send(4, struct.pack('>I', self.id) + self._str(handle))
        self._recv()
        return dt

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------------
# The delaying relay runs in a child process: in ours, its threads would hold the GIL while this one
# wakes up from a timed read (up to sys.getswitchinterval(), 5 ms), and the reverse.

RELAY_CHILD = r"""
import select, socket, sys, threading, time
from collections import deque
delay = [0.0]
down = [0]              # bytes the server sent, all connections
lsock = socket.socket()
lsock.bind(('127.0.0.1', 0))
lsock.listen(64)
target = int(sys.argv[1])

def pump(src, dst, count):
    # One thread per direction: every chunk is due delay[0] after it arrived, sent in order.
    q, eof = deque(), False
    try:
        while True:
            timeout = max(0.0, q[0][0] - time.monotonic()) if q else None
            if not eof and select.select([src], [], [], timeout)[0]:
                data = src.recv(1 << 20)
                if count:
                    down[0] += len(data)
                q.append((time.monotonic() + delay[0], data))
                eof = not data
            elif eof and q:
                time.sleep(max(0.0, q[0][0] - time.monotonic()))
            now = time.monotonic()
            while q and q[0][0] <= now:
                data = q.popleft()[1]
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def accept():
    while True:
        c, _ = lsock.accept()
        u = socket.create_connection(('127.0.0.1', target))
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(c, u, False), daemon=True).start()
        threading.Thread(target=pump, args=(u, c, True), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
sys.stdout.write('%d\n' % lsock.getsockname()[1])
sys.stdout.flush()
for line in sys.stdin:
    if line.strip() == 'bytes':
        sys.stdout.write('%d\n' % down[0])
    else:
        delay[0] = float(line)
        sys.stdout.write('ok\n')
    sys.stdout.flush()
"""


class RelayProc:
    """A TCP relay to 127.0.0.1:target in a child process; set_delay(s) holds every chunk s in each
    direction (pipelined: chunks in flight overlap), so the round trip grows by 2 s."""

    def __init__(self, target):
        self.proc = subprocess.Popen([sys.executable, '-c', RELAY_CHILD, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=harness._pdeathsig)
        self.port = int(self.proc.stdout.readline())

    def set_delay(self, seconds):
        self.proc.stdin.write('%r\n' % seconds)
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != 'ok':
            raise RuntimeError('relay did not take the delay')

    def bytes_down(self):
        """Bytes the server sent through the relay so far."""
        self.proc.stdin.write('bytes\n')
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------------
# Reference mounts.

class Mount:
    """A FUSE mount by another program (sshfs, rclone) run in the foreground."""

    def __init__(self, name, argv, mountpoint, env=None, logpath=None):
        self.name, self.argv, self.mountpoint = name, argv, mountpoint
        self.env = env
        self.logpath = logpath or mountpoint + '.log'
        self.proc = None

    def start(self, timeout=30):
        os.makedirs(self.mountpoint, exist_ok=True)
        self.logf = open(self.logpath, 'wb')
        env = dict(os.environ)
        env.update(self.env or {})
        env.pop('AWS_CA_BUNDLE', None)     # rclone 1.60 fails on any custom CA bundle, even for http://
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env, preexec_fn=harness._pdeathsig)
        harness.wait_until(lambda: harness.is_mounted(self.mountpoint) or self.proc.poll() is not None,
                           timeout, message='%s to mount' % self.name)
        if self.proc.poll() is not None:
            with open(self.logpath, errors='replace') as f:
                raise RuntimeError('%s exited with %s: %s' % (self.name, self.proc.returncode, f.read()[-600:]))
        return self

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            subprocess.run(['fusermount3', '-u', self.mountpoint], stderr=subprocess.DEVNULL, timeout=10)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        harness.lazy_unmount(self.mountpoint)
        if self.proc:
            self.logf.close()
        self.proc = None


def timed_open_read(path, n=TTFB_READ):
    os.stat(path)                   # the lookup is not part of the first byte
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, n)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    if len(data) != n:
        raise RuntimeError('%s: short read %d' % (path, len(data)))
    return dt


def curl_first_byte(url):
    """(s to the first byte in a fresh curl, s to the first byte after the connection is up)."""
    out = subprocess.run(['curl', '-s', '-o', '/dev/null', '-r', '0-%d' % (TTFB_READ - 1), '-H',
                          'x-amz-content-sha256: UNSIGNED-PAYLOAD', '-w',
                          '%{http_code} %{time_connect} %{time_starttransfer}', url],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    if out[0] != '206':
        raise RuntimeError('curl %s: HTTP %s' % (url, out[0]))
    return float(out[2]), float(out[2]) - float(out[1])


def timed_cat(path, timeout):
    t0 = time.perf_counter()
    subprocess.run(['cat', path], stdout=subprocess.DEVNULL, timeout=timeout, check=True)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.res = {'ttfb': {}, 'stream': {}, 'stream_wire': {}, 'notes': [], 'session_ms': {}}
        self.cleanups = []
        self.mounts = {}

    def note(self, s):
        log(s)
        self.res['notes'].append(s)

    def add(self, table, key, value):
        self.res[table].setdefault(key, []).append(value)

    # -- setup
    def make_files(self):
        args = self.args
        self.sftp_root = os.path.join(self.work, 'sftp-lib')
        self.s3_src = os.path.join(self.work, 's3-lib')
        self.ttfb_files = {'s3': [], 'sftp': []}     # (origin path / key, virtual path)
        freq = 200
        t0 = time.monotonic()
        for origin, root in (('s3', self.s3_src), ('sftp', self.sftp_root)):
            for i in range(2 * args.rounds):
                freq += 7   # distinct audio: the chunk cache is content-addressed
                tags = {'title': 'T%02d' % i, 'artist': 'Bench %s' % origin, 'album': 'TTFB %s %02d' % (origin, i),
                        'year': 2020, 'track': 1}
                rel = 'ttfb/f%02d.wav' % i
                genlib.encode(os.path.join(root, rel), 'wav', tags, duration=args.ttfb_seconds,
                              frequency=freq, sample_rate=SAMPLE_RATE)
                self.ttfb_files[origin].append((rel, genlib.render(tags, 'f%02d' % i, 'wav')))
        self.stream_files = []
        for r in range(args.stream_rounds):
            freq += 7
            tags = {'title': 'S%d' % r, 'artist': 'Bench stream', 'album': 'Stream %d' % r, 'year': 2020, 'track': 1}
            rel = 'stream/s%d.wav' % r
            genlib.encode(os.path.join(self.sftp_root, rel), 'wav', tags, duration=args.stream_mib * 1048576 / 96000,
                          frequency=freq, sample_rate=SAMPLE_RATE)
            self.stream_files.append((rel, genlib.render(tags, 's%d' % r, 'wav')))
        self.stream_size = os.path.getsize(os.path.join(self.sftp_root, self.stream_files[0][0]))
        self.ttfb_size = os.path.getsize(os.path.join(self.sftp_root, self.ttfb_files['sftp'][0][0]))
        self.ntracks = sum(len(v) for v in self.ttfb_files.values()) + len(self.stream_files)
        log('generated %d files in %.1f s (TTFB files %d bytes, stream files %d bytes)'
            % (self.ntracks, time.monotonic() - t0, self.ttfb_size, self.stream_size))

    def start_peers(self):
        os.makedirs(os.path.join(self.work, 'sshd'))
        self.sftp = sftppeer.SftpPeer(os.path.join(self.work, 'sshd'))
        self.cleanups.append(self.sftp.cleanup)
        self.sftp.start()
        self.relay_sftp = RelayProc(self.sftp.port)
        self.cleanups.append(self.relay_sftp.close)
        self.kh_relay = os.path.join(self.work, 'known_hosts_relay')
        with open(self.sftp.host_key + '.pub') as f:
            keytype, key = f.read().split()[:2]
        with open(self.kh_relay, 'w') as f:
            f.write('[127.0.0.1]:%d %s %s\n' % (self.relay_sftp.port, keytype, key))

        self.s3 = s3peer.S3Peer()
        reason = self.s3.unavailable_reason()
        if reason:
            self.note('S3 skipped: %s' % reason)
            self.s3 = None
            return
        self.s3.start()
        self.cleanups.append(self.s3.cleanup)
        self.s3.create_bucket(BUCKET)
        for rel, _ in self.ttfb_files['s3']:
            with open(os.path.join(self.s3_src, rel), 'rb') as f:
                self.s3.put(BUCKET, rel, f.read())
        self.relay_s3 = RelayProc(self.s3.port)
        self.cleanups.append(self.relay_s3.close)

    def set_rtt(self, ms):
        for r in (self.relay_sftp, getattr(self, 'relay_s3', None)):
            if r:
                r.set_delay(ms / 2000.0)

    def start_musicfsd(self):
        mnt = os.path.join(self.work, 'mnt-musicfs')
        cache = os.path.join(self.work, 'cache-musicfs')
        os.makedirs(mnt)
        os.makedirs(cache)
        conf = ('[musicfsd]\nmountpoint = %s\ncache_dir = %s\nlog_level = %s\n\n[cache]\nreadahead = 0\n\n'
                '[origin "nas"]\nkind = sftp\nhost = 127.0.0.1\nport = %d\nuser = %s\npath = %s\n'
                'identity_file = %s\nhost_key_fingerprint = %s\n'
                % (mnt, cache, self.args.log_level, self.relay_sftp.port, self.sftp.user, self.sftp_root, self.sftp.client_key,
                   self.sftp.fingerprint))
        if self.s3:
            conf += ('\n[origin "cloud"]\nkind = s3\nendpoint = http://127.0.0.1:%d\nbucket = %s\n'
                     % (self.relay_s3.port, BUCKET))
        workdir = os.path.join(self.work, 'musicfsd')
        os.makedirs(workdir)
        d = harness.Daemon(workdir=workdir, config_text=conf, mountpoint=mnt, cache_dir='', mountpoint_arg=False,
                           env={'AWS_ACCESS_KEY_ID': s3peer.ACCESS_KEY_ID,
                                'AWS_SECRET_ACCESS_KEY': s3peer.SECRET_ACCESS_KEY, 'AWS_SESSION_TOKEN': ''})
        self.cleanups.append(d.cleanup)
        t0 = time.monotonic()
        d.start(timeout=60)
        want = self.ntracks if self.s3 else len(self.ttfb_files['sftp']) + len(self.stream_files)
        d.wait_tracks(want, timeout=180)
        log('musicfsd: %d tracks in %.1f s' % (want, time.monotonic() - t0))
        self.daemon = d
        self.mounts['musicfs'] = mnt

    def start_refs(self):
        # sshfs through the same relay.
        if shutil.which('sshfs'):
            m = Mount('sshfs', ['sshfs', '-f', '-o', 'ro,port=%d,IdentityFile=%s,UserKnownHostsFile=%s,'
                                'StrictHostKeyChecking=yes,BatchMode=yes,IdentitiesOnly=yes'
                                % (self.relay_sftp.port, self.sftp.client_key, self.kh_relay),
                                '%s@127.0.0.1:%s' % (self.sftp.user, self.sftp_root),
                                os.path.join(self.work, 'mnt-sshfs')], os.path.join(self.work, 'mnt-sshfs'))
            try:
                m.start()
                self.cleanups.append(m.cleanup)
                self.mounts['sshfs'] = m.mountpoint
            except (RuntimeError, harness.WaitTimeout, OSError) as e:
                m.cleanup()
                self.note('sshfs skipped: %s' % e)
        else:
            self.note('sshfs skipped: not installed (apt-get install sshfs)')
        # rclone mount --vfs-cache-mode full, one per peer.
        if not shutil.which('rclone'):
            self.note('rclone skipped: not installed (apt-get install rclone)')
            return
        env = {'RCLONE_CONFIG_BSFTP_TYPE': 'sftp', 'RCLONE_CONFIG_BSFTP_HOST': '127.0.0.1',
               'RCLONE_CONFIG_BSFTP_PORT': str(self.relay_sftp.port), 'RCLONE_CONFIG_BSFTP_USER': self.sftp.user,
               'RCLONE_CONFIG_BSFTP_KEY_FILE': self.sftp.client_key,
               'RCLONE_CONFIG_BSFTP_KNOWN_HOSTS_FILE': self.kh_relay, 'RCLONE_CONFIG': '/dev/null'}
        remotes = [('rclone-sftp', 'bsftp:' + self.sftp_root)]
        if self.s3:
            env.update({'RCLONE_CONFIG_BS3_TYPE': 's3', 'RCLONE_CONFIG_BS3_PROVIDER': 'Other',
                        'RCLONE_CONFIG_BS3_ENDPOINT': 'http://127.0.0.1:%d' % self.relay_s3.port,
                        'RCLONE_CONFIG_BS3_ACCESS_KEY_ID': s3peer.ACCESS_KEY_ID,
                        'RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY': s3peer.SECRET_ACCESS_KEY,
                        'RCLONE_CONFIG_BS3_FORCE_PATH_STYLE': 'true'})
            remotes.append(('rclone-s3', 'bs3:' + BUCKET))
        for name, remote in remotes:
            mnt = os.path.join(self.work, 'mnt-' + name)
            m = Mount(name, ['rclone', 'mount', remote, mnt, '--vfs-cache-mode', 'full', '--read-only',
                             '--cache-dir', os.path.join(self.work, 'cache-' + name), '--dir-cache-time', '1h',
                             '--log-level', 'NOTICE'], mnt, env=env)
            try:
                m.start()
                self.cleanups.append(m.cleanup)
                self.mounts[name] = mnt
                self.rclone_version = subprocess.run(['rclone', 'version'], capture_output=True,
                                                     text=True).stdout.splitlines()[0]
            except (RuntimeError, harness.WaitTimeout, OSError) as e:
                m.cleanup()
                self.note('%s skipped: %s' % (name, e))

    # -- measurements
    def ttfb(self):
        rounds = self.args.rounds
        for li, rtt in enumerate((0, 20)):
            self.set_rtt(rtt)
            raw = RawSftp(self.relay_sftp.port, self.sftp.user, self.sftp.client_key, self.kh_relay)
            try:
                self.res['session_ms']['ssh+sftp session @%d' % rtt] = raw.session_s * 1000
                raw.first_bytes(os.path.join(self.sftp_root, self.ttfb_files['sftp'][0][0]))     # warm-up
                # Mounts: list their directories first so lookups are not in the figure.
                for r in range(rounds):
                    i = li * rounds + r
                    for origin in ('sftp', 's3'):
                        if origin == 's3' and not self.s3:
                            continue
                        rel, vpath = self.ttfb_files[origin][i]
                        systems = [('musicfs', os.path.join(self.mounts['musicfs'], vpath))]
                        if origin == 'sftp' and 'sshfs' in self.mounts:
                            systems.append(('sshfs', os.path.join(self.mounts['sshfs'], rel)))
                        if 'rclone-' + origin in self.mounts:
                            systems.append(('rclone', os.path.join(self.mounts['rclone-' + origin], rel)))
                        k = r % (len(systems) + 1)       # rotate the order so no one is always first
                        order = (['ref'] + systems)[k:] + (['ref'] + systems)[:k]
                        for s in order:
                            if s == 'ref':
                                if origin == 'sftp':
                                    self.add('ttfb', 'sftp/%d/ref' % rtt,
                                             raw.first_bytes(os.path.join(self.sftp_root, rel)) * 1000)
                                else:
                                    fresh, est = curl_first_byte('http://127.0.0.1:%d/%s/%s'
                                                                 % (self.relay_s3.port, BUCKET, rel))
                                    self.add('ttfb', 's3/%d/ref' % rtt, est * 1000)
                                    self.add('ttfb', 's3/%d/ref-fresh' % rtt, fresh * 1000)
                            else:
                                name, path = s
                                self.add('ttfb', '%s/%d/%s' % (origin, rtt, name), timed_open_read(path) * 1000)
                                if name == 'musicfs':
                                    self.wait_fills_idle()
            finally:
                raw.close()
            log('TTFB at %d ms RTT: %s' % (rtt, ', '.join('%s %.1f' % (k, p50(v)) for k, v in
                                                          sorted(self.res['ttfb'].items()) if '/%d/' % rtt in k)))

    def stream(self):
        self.set_rtt(self.args.stream_rtt)
        batch = os.path.join(self.work, 'sftp-batch')
        sink = os.path.join('/dev/shm', 'musicfs-bench-sftp-%d' % os.getpid())
        self.cleanups.append(lambda: os.path.exists(sink) and os.unlink(sink))
        timeout = self.args.stream_timeout
        for r, (rel, vpath) in enumerate(self.stream_files):
            systems = [('musicfs', os.path.join(self.mounts['musicfs'], vpath)), ('sftp', None)]
            for name in ('sshfs', 'rclone-sftp'):
                if name in self.mounts:
                    systems.append((name, os.path.join(self.mounts[name], rel)))
            if r % 2:
                systems.reverse()
            if r == 0:
                systems.append(('sftp-direct', None))     # the ceiling: no relay, no added latency
            for name, path in systems:
                b0 = self.relay_sftp.bytes_down()
                try:
                    if name in ('sftp', 'sftp-direct'):
                        direct = name == 'sftp-direct'
                        with open(batch, 'w') as f:
                            f.write('get %s %s\n' % (os.path.join(self.sftp_root, rel), sink))
                        t0 = time.perf_counter()
                        subprocess.run(['sftp', '-F', '/dev/null', '-q', '-b', batch,
                                        '-P', str(self.sftp.port if direct else self.relay_sftp.port),
                                        '-i', self.sftp.client_key, '-o', 'IdentitiesOnly=yes',
                                        '-o', 'UserKnownHostsFile=' + (self.sftp.known_hosts if direct else self.kh_relay),
                                        '-o', 'StrictHostKeyChecking=yes',
                                        '%s@127.0.0.1' % self.sftp.user], stdout=subprocess.DEVNULL,
                                       timeout=timeout, check=True)
                        dt = time.perf_counter() - t0
                        if os.path.getsize(sink) != self.stream_size:
                            raise RuntimeError('sftp fetched %d bytes' % os.path.getsize(sink))
                        os.unlink(sink)
                    else:
                        dt = timed_cat(path, timeout)
                        if name == 'musicfs':
                            self.wait_fills_idle()
                except subprocess.TimeoutExpired:
                    self.note('stream %s round %d: not done in %d s' % (name, r, timeout))
                    dt = float('inf')
                self.add('stream', name, self.stream_size / dt / 1e6)
                if name != 'sftp-direct':
                    self.add('stream_wire', name, (self.relay_sftp.bytes_down() - b0) / self.stream_size)
                log('stream %s: %.2f s, %.1f MB/s' % (name, dt, self.stream_size / dt / 1e6))

    def wait_fills_idle(self, timeout=60):
        """Waits until musicfsd's fills (the rest of a file streamed in behind a miss) are done, so
        they do not share the link and the CPUs with the next measurement."""
        def idle():
            st = self.daemon.bus_call('GetCacheStats')
            return int(st['fills-active']) == 0 and int(st['fills-queued']) == 0
        harness.wait_until(idle, timeout, 0.01, message='musicfsd fills to finish')

    def cache_stats(self):
        try:
            st = self.daemon.bus_call('GetCacheStats')
            self.res['cache_stats'] = {str(k): (int(v) if isinstance(v, (int,)) else str(v)) for k, v in st.items()}
        except Exception as e:  # noqa: BLE001 - only informative
            self.res['cache_stats'] = str(e)[:200]

    def cleanup(self):
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                log('cleanup: %s' % e)
        self.cleanups = []


def report(res, info):
    out = ['# musicfs remote read path, %s' % info['date'], '',
           'Machine: %s; load %s at start. musicfsd: %s. %s. Rounds: %d per RTT (TTFB), %d (stream).'
           % (info['machine'], info['load'], info['daemon'], info.get('rclone', 'rclone: –'),
              info['rounds'], info['stream_rounds']), '']
    t = res['ttfb']
    out += ['## Time to first byte (open + read 4 KiB of an uncached %d-byte file), p50 ms' % info['ttfb_size'], '',
            '| origin | RTT | peer itself | musicfs | delta (target ≤ +%.0f ms) | verdict | sshfs | rclone full | musicfs p90 |'
            % TARGET_TTFB_DELTA_MS, '|---|---|---|---|---|---|---|---|---|']
    for origin in ('s3', 'sftp'):
        for rtt in (0, 20):
            ref = t.get('%s/%d/ref' % (origin, rtt))
            mfs = t.get('%s/%d/musicfs' % (origin, rtt))
            if not ref or not mfs:
                continue
            delta = p50(mfs) - p50(ref)
            refname = ('curl ranged GET, connection up: %s (fresh curl %s)'
                       % (fmt_ms(p50(ref)), fmt_ms(p50(t.get('%s/%d/ref-fresh' % (origin, rtt), [])))))\
                if origin == 's3' else 'OpenSSH sftp OPEN+READ: %s' % fmt_ms(p50(ref))
            srt = sorted(mfs)
            out.append('| %s | %d ms | %s | %s | %+.1f ms | %s | %s | %s | %s |' % (
                origin, rtt, refname, fmt_ms(p50(mfs)), delta,
                '**met**' if delta <= TARGET_TTFB_DELTA_MS else '**NOT met**',
                fmt_ms(p50(t.get('%s/%d/sshfs' % (origin, rtt), []))),
                fmt_ms(p50(t.get('%s/%d/rclone' % (origin, rtt), []))),
                fmt_ms(srt[min(len(srt) - 1, int(0.9 * len(srt)))])))
    s = res['stream']
    out += ['', '## Streaming an uncached %d-byte file over SFTP at %d ms RTT (cat > /dev/null), MB/s'
            % (info['stream_size'], info['stream_rtt']), '',
            '| system | runs MB/s | median | × sftp (target musicfs ≥ %.1f×) | bytes on the wire / file size |'
            % TARGET_STREAM_RATIO, '|---|---|---|---|---|']
    ref = p50(s.get('sftp', []))
    for name in ('sftp', 'musicfs', 'sshfs', 'rclone-sftp', 'sftp-direct'):
        if name in s:
            ratio = p50(s[name]) / ref if ref == ref and ref else float('nan')
            v = ''
            if name == 'musicfs':
                v = ' **met**' if ratio >= TARGET_STREAM_RATIO else ' **NOT met**'
            wire = res['stream_wire'].get(name)
            out.append('| %s | %s | %.1f | %.2f×%s | %s |' % (name, ', '.join('%.1f' % x for x in s[name]),
                                                               p50(s[name]), ratio, v,
                                                               ', '.join('%.2f' % x for x in wire) if wire else '–'))
    out += ['', 'Raw TTFB samples (ms): ' + json.dumps({k: [round(x, 2) for x in v] for k, v in sorted(t.items())}),
            '', 'Sessions: ' + json.dumps({k: round(v, 1) for k, v in res['session_ms'].items()})]
    if res.get('cache_stats'):
        out += ['', 'musicfsd cache stats after the run: %s' % json.dumps(res['cache_stats'])]
    for n in res['notes']:
        out.append('- note: %s' % n)
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rounds', type=int, default=8, help='TTFB samples per system and RTT')
    ap.add_argument('--ttfb-seconds', type=float, default=30.0, help='length of each TTFB file (96 kB/s)')
    ap.add_argument('--stream-mib', type=int, default=96)
    ap.add_argument('--stream-rounds', type=int, default=2)
    ap.add_argument('--stream-rtt', type=int, default=20)
    ap.add_argument('--stream-timeout', type=int, default=90)
    ap.add_argument('--work-dir', default='/var/tmp/musicfs-bench')
    ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'results'))
    ap.add_argument('--keep', action='store_true')
    ap.add_argument('--log-level', default='info', help="musicfsd's log_level")
    args = ap.parse_args()

    if not os.access(harness.DAEMON, os.X_OK):
        sys.exit('%s is not built: set MUSICFS_BUILD_ROOT' % harness.DAEMON)
    harness.require_fuse()
    sftppeer.require_sshd(harness.skip_module)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)

    os.makedirs(args.work_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix='remote-read-', dir=args.work_dir)
    os.chmod(work, 0o755)
    started = time.time()
    info = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started)),
            'machine': '%s, %d CPUs, kernel %s' % (platform.machine(), os.cpu_count(), platform.release()),
            'load': '%.2f' % os.getloadavg()[0], 'daemon': harness.DAEMON, 'rounds': args.rounds,
            'stream_rounds': args.stream_rounds, 'stream_rtt': args.stream_rtt}
    b = Bench(args, work)
    ok = False
    try:
        with harness.private_system_bus():
            b.make_files()
            info['ttfb_size'], info['stream_size'] = b.ttfb_size, b.stream_size
            b.start_peers()
            b.start_musicfsd()
            b.start_refs()
            info['rclone'] = getattr(b, 'rclone_version', 'rclone: not run')
            b.ttfb()
            b.stream()
            b.cache_stats()
            ok = True
    except Stop as e:
        log('stopped by %s' % e)
    except (harness.DaemonFailed, harness.WaitTimeout, subprocess.SubprocessError, OSError, RuntimeError) as e:
        b.note('aborted: %s' % str(e)[:3000])
    finally:
        b.cleanup()
        if args.keep:
            log('work dir kept: %s' % work)
        else:
            harness.safe_rmtree(work)
    info['seconds'] = round(time.time() - started, 1)
    text = report(b.res, info) + '\n\nRun time: %.0f s.' % info['seconds']
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime('%Y-%m-%d-%H%M', time.gmtime(started))
    with open(os.path.join(args.out, 'remote-read-%s.md' % stamp), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    with open(os.path.join(args.out, 'remote-read-%s.json' % stamp), 'w', encoding='utf-8') as f:
        json.dump({'info': info, 'results': b.res}, f, indent=1, default=str)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
