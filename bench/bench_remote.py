#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The remote scan benchmark (issue #5): how fast musicfsd's first scan of an SFTP and of an S3 origin
runs (files/s), side by side in one run with what a person would do without it: sshfs, and rclone
mount, walked and read as a tag reader reads (the first 16 KiB of every audio file), single-threaded
and with 16 threads, plus `rclone lsl` (a listing alone, no reads). See bench/README.md,
"Remote origins: scans".

  sudo MUSICFS_BUILD_ROOT=$PWD/build-rel /usr/bin/python3 bench/bench_remote.py [--files 600] [--rounds 3]

Peers: sshd (tests/lib/sftppeer.py) behind --rtt ms of round-trip time, and s3rver
(tests/lib/s3peer.py) on loopback with no added latency. The latency comes from sftppeer.Relay by
default (each chunk held rtt/2 in each direction, pipelined) or tests/lib/faultproxy.py's latency
toxic (--proxy faultproxy: rtt/2 each way, but one chunk after the other per connection). The host
key is pinned with host_key_fingerprint: the relay's port is in no known_hosts. A scan is timed from
the daemon's exec until TrackCount equals the library's size (polled every 20 ms), each round on a
fresh cache dir, as bench_foundation.py times the local cold scan. A reference that is not installed
(sshfs, rclone) is skipped with a note. Everything started is stopped at exit, on errors and on
signals. Output: a markdown table on stdout and bench/results/remote-scan-<date>.md (+ .json).
"""

import argparse
import concurrent.futures
import json
import os
import platform
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

import harness     # noqa: E402 - exits 77 without dbus/dbusmock
import faultproxy  # noqa: E402
import genlib      # noqa: E402
import s3peer      # noqa: E402
import sftppeer    # noqa: E402

TARGET_SFTP = 200.0     # files/s at 20 ms RTT
TARGET_S3 = 500.0       # files/s
HEADER_BYTES = 16384    # what the reference reads of each file (bench_foundation.py's native reference)
REF_THREADS = 16
BUCKET = 'music'
AUDIO = ('.flac', '.mp3')


class Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise Stop('signal %d' % signum)


def log(msg):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


def median(v):
    return statistics.median(v) if v else None


def read_header(path):
    with open(path, 'rb') as f:
        f.read(HEADER_BYTES)


def walk_read(root, threads):
    """Walks root and reads the first 16 KiB of every audio file; returns (files, seconds)."""
    t0 = time.monotonic()
    paths = []
    def failed(e):
        raise e
    for dirpath, _, names in os.walk(root, onerror=failed):
        here = [os.path.join(dirpath, n) for n in names if n.lower().endswith(AUDIO)]
        if threads == 1:        # as a single-threaded scanner goes: each directory's files as it lists them
            for p in here:
                read_header(p)
        paths += here
    if threads > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            list(ex.map(read_header, paths))
    return len(paths), time.monotonic() - t0


class Mount:
    """A FUSE client (sshfs, rclone mount) in the foreground, as a child; unmounted at cleanup."""

    def __init__(self, argv, mountpoint, env=None):
        self.argv, self.mountpoint = argv, mountpoint
        self.env = dict(os.environ, **(env or {}))
        # The AWS SDK in rclone fails on any AWS_CA_BUNDLE ("unsupported transport"); the peer is http.
        self.env.pop('AWS_CA_BUNDLE', None)
        self.proc = None

    def start(self, timeout=30.0):
        os.makedirs(self.mountpoint, exist_ok=True)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError('%s exited with %d: %s' % (self.argv[0], self.proc.returncode,
                                                              self.proc.stderr.read().decode(errors='replace')[-500:]))
            if time.monotonic() > deadline:
                raise RuntimeError('%s did not mount in %.0f s' % (self.argv[0], timeout))
            time.sleep(0.05)

    def cleanup(self):
        if os.path.ismount(self.mountpoint):
            subprocess.run(['umount', '-l', self.mountpoint], capture_output=True, timeout=30)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix='musicfs-bench-remote-', dir='/var/tmp')
        self.cleanups = []
        self.res = {'figures': {}, 'notes': [], 'args': vars(args)}

    def note(self, s):
        log(s)
        self.res['notes'].append(s)

    def add(self, key, files, seconds):
        self.res['figures'].setdefault(key, []).append(files / seconds)
        log('%s: %d files in %.2f s, %.0f files/s' % (key, files, seconds, files / seconds))

    def cleanup(self):
        for f in reversed(self.cleanups):
            try:
                f()
            except Exception as e:  # noqa: BLE001 - the rest must still be cleaned up
                log('cleanup: %s' % e)
        self.cleanups = []
        shutil.rmtree(self.work, ignore_errors=True)

    # -- setup
    def setup(self):
        self.lib = os.path.join(self.work, 'lib')
        t0 = time.monotonic()
        genlib.gen_bulk(self.lib, self.args.files)
        self.n = sum(1 for _, _, names in os.walk(self.lib) for n in names if n.lower().endswith(AUDIO))
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(self.lib) for n in names
                   if n.lower().endswith(AUDIO))
        log('generated %d files (%.0f KiB on average) in %.1f s' % (self.n, size / self.n / 1024, time.monotonic() - t0))
        self.res['files'] = self.n
        self.res['mean_file_bytes'] = size / self.n

        os.makedirs(os.path.join(self.work, 'sshd'))
        self.sftp = sftppeer.SftpPeer(os.path.join(self.work, 'sshd'))
        self.cleanups.append(self.sftp.cleanup)
        self.sftp.start()
        half = self.args.rtt / 2.0
        if self.args.proxy == 'faultproxy':
            p = faultproxy.FaultProxy('127.0.0.1', self.sftp.port).start()
            self.cleanups.append(p.stop)
            if half > 0:
                p.latency(half, direction='both')
            self.sftp_port = p.port
        else:
            r = sftppeer.Relay(self.sftp.port, half / 1000.0)
            self.cleanups.append(r.close)
            self.sftp_port = r.port
        self.known_hosts = os.path.join(self.work, 'known_hosts_proxy')
        with open(self.sftp.host_key + '.pub') as f:
            keytype, key = f.read().split()[:2]
        with open(self.known_hosts, 'w') as f:
            f.write('[127.0.0.1]:%d %s %s\n' % (self.sftp_port, keytype, key))

        self.s3 = s3peer.S3Peer()
        reason = self.s3.unavailable_reason()
        if reason:
            self.note('S3 skipped: %s' % reason)
            self.s3 = None
            return
        self.s3.start()
        self.cleanups.append(self.s3.cleanup)
        self.s3.create_bucket(BUCKET)
        t0 = time.monotonic()
        for d, _, names in os.walk(self.lib):
            for n in names:
                if n.lower().endswith(AUDIO):
                    p = os.path.join(d, n)
                    with open(p, 'rb') as f:
                        self.s3.put(BUCKET, os.path.relpath(p, self.lib), f.read())
        log('uploaded %d files to s3rver in %.1f s' % (self.n, time.monotonic() - t0))

    # -- musicfsd
    def musicfsd_scan(self, key, origin_conf, env=None):
        run = os.path.join(self.work, 'run-%s-%d' % (key.replace('/', '-'), len(self.res['figures'].get(key, []))))
        mnt, cache = os.path.join(run, 'mnt'), os.path.join(run, 'cache')
        os.makedirs(mnt)
        os.makedirs(cache)
        conf = '[musicfsd]\nmountpoint = %s\ncache_dir = %s\n\n%s' % (mnt, cache, origin_conf)
        d = harness.Daemon(workdir=run, config_text=conf, mountpoint=mnt, cache_dir='', mountpoint_arg=False,
                           env=env)
        try:
            t0 = time.monotonic()
            d.start(wait_ready=False)
            d.wait_tracks(self.n, timeout=self.args.timeout)
            self.add(key, self.n, time.monotonic() - t0)
            d.wait_log(harness.Daemon.SCAN_DONE, timeout=60)
            d.stop()
        finally:
            d.cleanup()
            shutil.rmtree(run, ignore_errors=True)

    def sftp_conf(self, pool):
        return ('[origin "nas"]\nkind = sftp\nhost = 127.0.0.1\nport = %d\nuser = %s\npath = %s\nidentity_file = %s\n'
                'host_key_fingerprint = %s\n%s'
                % (self.sftp_port, self.sftp.user, self.lib, self.sftp.client_key, self.sftp.fingerprint,
                   'pool_size = %d\n' % pool if pool else ''))

    def s3_conf(self):
        return '[origin "cloud"]\nkind = s3\nendpoint = %s\nbucket = %s\n' % (self.s3.endpoint, BUCKET)

    def s3_env(self):
        return {'AWS_ACCESS_KEY_ID': s3peer.ACCESS_KEY_ID, 'AWS_SECRET_ACCESS_KEY': s3peer.SECRET_ACCESS_KEY,
                'AWS_SESSION_TOKEN': ''}

    # -- references
    def mounted_walk(self, key, argv, mountpoint, env=None):
        for threads in (1, REF_THREADS):
            m = Mount(argv, mountpoint, env)
            try:
                m.start()
            except (RuntimeError, OSError) as e:
                m.cleanup()
                self.note('%s skipped: %s' % (key, e))
                return
            try:
                try:
                    n, secs = walk_read(mountpoint, threads)
                except OSError as e:
                    return self.note('%s skipped: %s' % (key, e))
                if n != self.n:
                    return self.note('%s skipped: it saw %d files, not %d' % (key, n, self.n))
                self.add('%s/%dt' % (key, threads), n, secs)
            finally:
                m.cleanup()

    def sshfs(self):
        if not shutil.which('sshfs'):
            return self.note('sshfs skipped: not installed (apt-get install sshfs)')
        mnt = os.path.join(self.work, 'mnt-sshfs')
        self.mounted_walk('sftp/sshfs', ['sshfs', '-f', '-o', 'ro,port=%d,IdentityFile=%s,UserKnownHostsFile=%s,'
                                         'StrictHostKeyChecking=yes,BatchMode=yes,IdentitiesOnly=yes'
                                         % (self.sftp_port, self.sftp.client_key, self.known_hosts),
                                         '%s@127.0.0.1:%s' % (self.sftp.user, self.lib), mnt], mnt)

    def rclone_env(self):
        return {'RCLONE_CONFIG': '/dev/null', 'RCLONE_CONFIG_BS3_TYPE': 's3', 'RCLONE_CONFIG_BS3_PROVIDER': 'Other',
                'RCLONE_CONFIG_BS3_ENDPOINT': self.s3.endpoint,
                'RCLONE_CONFIG_BS3_ACCESS_KEY_ID': s3peer.ACCESS_KEY_ID,
                'RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY': s3peer.SECRET_ACCESS_KEY,
                'RCLONE_CONFIG_BS3_FORCE_PATH_STYLE': 'true'}

    def rclone(self):
        if not shutil.which('rclone'):
            return self.note('rclone skipped: not installed (apt-get install rclone)')
        env = dict(os.environ, **self.rclone_env())
        env.pop('AWS_CA_BUNDLE', None)
        t0 = time.monotonic()
        out = subprocess.run(['rclone', 'lsl', 'bs3:' + BUCKET], env=env, capture_output=True, text=True, timeout=300)
        secs = time.monotonic() - t0
        n = sum(1 for line in out.stdout.splitlines() if line.lower().endswith(AUDIO))
        if out.returncode != 0 or n != self.n:
            self.note('rclone lsl skipped: exit %d, %d files: %s' % (out.returncode, n, out.stderr[-300:]))
        else:
            self.add('s3/rclone-lsl', n, secs)
        mnt = os.path.join(self.work, 'mnt-rclone')
        self.mounted_walk('s3/rclone-mount', ['rclone', 'mount', 'bs3:' + BUCKET, mnt, '--read-only',
                                              '--vfs-cache-mode', 'off', '--log-level', 'ERROR'], mnt,
                          self.rclone_env())

    def s3_raw(self):
        """The peer's own ceiling: one ListObjectsV2, then a HEAD and a ranged GET of the first
        16 KiB of every key (what the S3 origin sends per file), from REF_THREADS threads."""
        import re
        import urllib.request
        t0 = time.monotonic()
        with urllib.request.urlopen('%s/%s?list-type=2' % (self.s3.endpoint, BUCKET), timeout=60) as r:
            keys = [k for k in re.findall(r'<Key>([^<]*)</Key>', r.read().decode()) if k.lower().endswith(AUDIO)]

        def one(key):
            url = '%s/%s/%s' % (self.s3.endpoint, BUCKET, s3peer.quote_key(key))
            with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=60) as r:
                r.read()
            with urllib.request.urlopen(urllib.request.Request(url, headers={'Range': 'bytes=0-%d' % (HEADER_BYTES - 1)}),
                                        timeout=60) as r:
                r.read()
        with concurrent.futures.ThreadPoolExecutor(REF_THREADS) as ex:
            list(ex.map(one, keys))
        if len(keys) != self.n:
            return self.note('s3 raw reference skipped: listed %d keys, not %d' % (len(keys), self.n))
        self.add('s3/raw-http/%dt' % REF_THREADS, len(keys), time.monotonic() - t0)

    # -- the run
    def run(self):
        self.setup()
        for r in range(self.args.rounds):
            log('round %d of %d' % (r + 1, self.args.rounds))
            self.musicfsd_scan('sftp/musicfs', self.sftp_conf(0))
            if self.args.pool:
                self.musicfsd_scan('sftp/musicfs-pool%d' % self.args.pool, self.sftp_conf(self.args.pool))
            self.sshfs()
            if self.s3:
                self.musicfsd_scan('s3/musicfs', self.s3_conf(), self.s3_env())
                self.s3_raw()
                self.rclone()

    def report(self):
        f = {k: median(v) for k, v in self.res['figures'].items()}
        self.res['medians'] = f
        rtt = self.args.rtt
        lines = ['Remote scans, %d files (%.0f KiB each on average), %d rounds, median files/s; SFTP at %g ms RTT '
                 '(%s), S3 on loopback. %s, %s.' % (self.n, self.res['mean_file_bytes'] / 1024, self.args.rounds, rtt,
                                                    self.args.proxy, platform.node(), time.strftime('%Y-%m-%d %H:%M UTC',
                                                                                                   time.gmtime())),
                 '', '| figure | musicfsd | reference | musicfsd / reference | target | verdict |',
                 '| --- | --- | --- | --- | --- | --- |']

        def fmt(v):
            return '–' if v is None else '{:,.0f}'.format(v)

        def row(name, ours, refs, target):
            best = None
            for label, key in refs:
                v = f.get(key)
                if v is not None:
                    ratio = '%.2f×' % (ours / v) if ours else '–'
                    lines.append('| %s | %s files/s | %s: %s files/s | %s | %s | %s |' % (
                        name, fmt(ours), label, fmt(v), ratio, '≥ %s files/s' % fmt(target) if target else '—',
                        ('**met**' if ours and ours >= target else '**not met**') if target and best is None else ''))
                    best = v
            if best is None:
                lines.append('| %s | %s files/s | – | – | %s | %s |' % (
                    name, fmt(ours), '≥ %s files/s' % fmt(target) if target else '—',
                    ('**met**' if ours and ours >= target else '**not met**') if target else ''))

        target_sftp = TARGET_SFTP if rtt == 20 else None
        row('SFTP scan, default pool_size', f.get('sftp/musicfs'),
            [('sshfs walk + read 16 KiB, 1 thread', 'sftp/sshfs/1t'),
             ('sshfs walk + read 16 KiB, %d threads' % REF_THREADS, 'sftp/sshfs/%dt' % REF_THREADS)], target_sftp)
        if self.args.pool:
            row('SFTP scan, pool_size = %d' % self.args.pool, f.get('sftp/musicfs-pool%d' % self.args.pool),
                [('sshfs, %d threads' % REF_THREADS, 'sftp/sshfs/%dt' % REF_THREADS)], target_sftp)
        if self.s3:
            row('S3 scan', f.get('s3/musicfs'),
                [('HTTP list + HEAD + ranged GET of 16 KiB per key, %d threads (the peer\'s ceiling)' % REF_THREADS,
                  's3/raw-http/%dt' % REF_THREADS),
                 ('rclone mount walk + read 16 KiB, 1 thread', 's3/rclone-mount/1t'),
                 ('rclone mount walk + read 16 KiB, %d threads' % REF_THREADS, 's3/rclone-mount/%dt' % REF_THREADS),
                 ('`rclone lsl` (listing only)', 's3/rclone-lsl')], TARGET_S3)
        lines.append('')
        for n in self.res['notes']:
            lines.append('- ' + n)
        text = '\n'.join(lines) + '\n'
        print(text)
        os.makedirs(os.path.join(BENCH_DIR, 'results'), exist_ok=True)
        stem = os.path.join(BENCH_DIR, 'results', 'remote-scan-%s' % time.strftime('%Y%m%d-%H%M%S'))
        with open(stem + '.md', 'w') as out:
            out.write(text)
        with open(stem + '.json', 'w') as out:
            json.dump(self.res, out, indent=1, sort_keys=True)
        log('wrote %s.md and .json' % stem)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--files', type=int, default=600)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--rtt', type=float, default=20.0, help='SFTP round-trip time added, ms')
    ap.add_argument('--proxy', choices=('relay', 'faultproxy'), default='relay')
    ap.add_argument('--pool', type=int, default=16, help='also scan with this SFTP pool_size (0: not)')
    ap.add_argument('--timeout', type=float, default=600.0, help='per scan, s')
    args = ap.parse_args()
    if os.geteuid() != 0:
        print('bench_remote.py needs root (FUSE mounts, sshd)', file=sys.stderr)
        return 77
    sftppeer.require_sshd(lambda reason: (print(reason, file=sys.stderr), sys.exit(77)))
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)

    if not os.access(harness.DAEMON, os.X_OK):
        sys.exit('%s is not built: set MUSICFS_BUILD_ROOT' % harness.DAEMON)
    harness.require_fuse()
    b = Bench(args)
    try:
        with harness.private_system_bus():
            b.run()
            b.report()
    except Stop as e:
        log('stopped by %s' % e)
        return 1
    finally:
        b.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
