# SPDX-License-Identifier: LGPL-2.1-or-later
"""The SFTP origin (daemon/origin/origin-sftp.c) against a real OpenSSH sshd on 127.0.0.1
(tests/lib/sftppeer.py), driven through tests/origins/sftp-tool, which holds one origin (and its
session pool) across commands: exact bytes, walk, host key policy, key auth, a server that dies,
hangs or restarts, and round trips counted through a latency proxy."""

import errno
import hashlib
import os
import random
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402
import sftppeer  # noqa: E402

TOOL = os.path.join(harness.BUILD_ROOT, 'tests', 'origins', 'sftp-tool')

sftppeer.require_sshd(harness.skip_module)
if not os.access(TOOL, os.X_OK):
    harness.skip_module('%s is not built' % TOOL)


class Tool:
    """One sftp-tool process: one origin, commands in, answers out."""

    def __init__(self, peer, root, port=None, known_hosts=None, identity=None, fingerprint=None, timeout=5,
                 pool=None, keepalive=None):
        args = [TOOL, '--host', '127.0.0.1', '--port', str(port or peer.port), '--path', root,
                '--identity', identity or peer.client_key, '--known-hosts', known_hosts or peer.known_hosts,
                '--timeout', str(timeout)]
        if fingerprint:
            args += ['--fingerprint', fingerprint]
        if pool:
            args += ['--pool', str(pool)]
        if keepalive:
            args += ['--keepalive', str(keepalive)]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        for s in self.proc.stdout:
            self.lines.put(s)
        self.lines.put('')

    def line(self, timeout=60):
        try:
            s = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError('sftp-tool gave no answer within %d s' % timeout) from None
        if not s:
            raise AssertionError('sftp-tool exited: %s' % self.log())
        return s.split()

    def cmd(self, *words, timeout=60):
        self.proc.stdin.write(' '.join(str(w) for w in words) + '\n')
        self.proc.stdin.flush()
        return self.line(timeout)

    def stat(self, rel):
        a = self.cmd('stat', rel)
        return (int(a[1]), int(a[2])) if a[0] == 'ok' else -int(a[1])

    def open(self, rel):
        a = self.cmd('open', rel)
        assert a[0] == 'ok', (rel, a, self.log())
        return int(a[1])

    def pread(self, fid, off, size, out):
        """(bytes or -errno, seconds)"""
        a = self.cmd('pread', fid, off, size, out)
        if a[0] != 'ok':
            return -int(a[1]), int(a[2]) / 1e6
        with open(out, 'rb') as f:
            data = f.read()
        assert len(data) == int(a[1])
        return data, int(a[2]) / 1e6

    def walk(self, rel=''):
        self.proc.stdin.write('walk %s\n' % rel)
        self.proc.stdin.flush()
        files, skipped = {}, {}
        while True:
            a = self.line()
            if a[0] == 'file':
                files[a[1]] = int(a[2])
            elif a[0] == 'skip':
                skipped[a[1]] = int(a[2])
            elif a[0] == 'ok':
                return files, skipped, int(a[1])
            else:
                return -int(a[1]), skipped, None

    def check(self, timeout=60):
        a = self.cmd('check', timeout=timeout)
        return 0 if a[0] == 'ok' else -int(a[1])

    def log(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors='replace')

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log = self.log()
        self.stderr.close()
        self.proc.stdout.close()
        return log


class SftpOriginTest(unittest.TestCase):
    def setUp(self):
        self.peer = sftppeer.SftpPeer()
        self.peer.start()
        self.root = tempfile.mkdtemp(prefix='musicfs-sftp-root-')
        self.out = tempfile.mkdtemp(prefix='musicfs-sftp-out-')
        self.tools = []
        self.rng = random.Random(5)
        with open(self.peer.client_key) as f:
            self.secret_lines = [l.strip() for l in f if l.strip() and not l.startswith('-----')]

    def tearDown(self):
        for t in self.tools:
            log = t.close()
            # The private key never reaches a log line.
            for secret in self.secret_lines:
                self.assertNotIn(secret, log)
        self.peer.cleanup()
        harness.safe_rmtree(self.root)
        harness.safe_rmtree(self.out)

    def tool(self, **kw):
        t = Tool(self.peer, self.root, **kw)
        self.tools.append(t)
        return t

    def write(self, rel, data):
        p = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'wb') as f:
            f.write(data)
        return data

    def outpath(self):
        return os.path.join(self.out, 'o%d' % self.rng.randrange(1 << 30))

    # -- bytes

    def test_stat_and_exact_bytes_at_random_offsets(self):
        data = self.write('album/big.flac', os.urandom(3 * 1024 * 1024 + 12345))
        small = self.write('small.mp3', os.urandom(777))
        t = self.tool()
        st = os.stat(os.path.join(self.root, 'album/big.flac'))
        self.assertEqual(t.stat('album/big.flac'), (len(data), int(st.st_mtime) * 10**9))
        self.assertEqual(t.stat('small.mp3')[0], 777)
        self.assertEqual(t.stat('nope.flac'), -errno.ENOENT)
        self.assertEqual(t.stat('album'), -errno.EISDIR)

        fid = t.open('album/big.flac')
        for i in range(150):
            kind = i % 3
            if kind == 0:       # the tag parser: small reads
                size = self.rng.randrange(1, 4096)
            elif kind == 1:     # the cache: chunks
                size = self.rng.randrange(16384, 300000)
            else:
                size = self.rng.randrange(1, 2 * 1024 * 1024)
            off = self.rng.randrange(0, len(data) + 10)
            got, _ = t.pread(fid, off, size, self.outpath())
            self.assertEqual(got, data[off:off + size], 'read of %d at %d: got %s; %s' % (size, off, len(got) if isinstance(got, bytes) else got, t.log()[-1500:]))
        # Sequential reads in odd sizes, crossing read-ahead buffers and the end.
        off = 0
        while off < len(data):
            size = self.rng.randrange(1000, 200000)
            got, _ = t.pread(fid, off, size, self.outpath())
            self.assertEqual(got, data[off:off + size])
            off += size
        got, _ = t.pread(fid, len(data), 100, self.outpath())
        self.assertEqual(got, b'')
        f2 = t.open('small.mp3')
        self.assertEqual(t.pread(f2, 0, 4096, self.outpath())[0], small)
        self.assertEqual(t.pread(f2, 700, 4096, self.outpath())[0], small[700:])
        t.cmd('close', fid)
        t.cmd('close', f2)
        self.assertEqual(t.check(), 0)

    def test_large_sequential_read_throughput(self):
        data = self.write('long.wav', os.urandom(32 * 1024 * 1024))
        t = self.tool()
        fid = t.open('long.wav')
        h = hashlib.sha256()
        start = time.monotonic()
        for off in range(0, len(data), 1 << 20):
            got, _ = t.pread(fid, off, 1 << 20, self.outpath())
            self.assertEqual(len(got), 1 << 20)
            h.update(got)
        elapsed = time.monotonic() - start
        self.assertEqual(h.hexdigest(), hashlib.sha256(data).hexdigest())
        # A sanity figure for the log, not an assertion: loopback speed depends on the machine.
        print('sequential 1 MiB reads over SFTP: %.1f MiB/s' % (32 / elapsed))

    def test_round_trips_are_pipelined(self):
        """Through a 25 ms each way relay (50 ms round trip): a 1 MiB read must not cost one round
        trip per 32 KiB request (32 round trips, 1.6 s), and the tag parser's small reads cost one
        round trip for a read-ahead buffer, not one each."""
        data = self.write('a.flac', os.urandom(4 * 1024 * 1024))
        proxy = sftppeer.Relay(self.peer.port, delay=0.025)
        try:
            empty = os.path.join(self.out, 'empty_known_hosts')
            open(empty, 'w').close()    # the relay's port is not in known_hosts: pin the key
            t = self.tool(port=proxy.port, timeout=30, known_hosts=empty, fingerprint=self.peer.fingerprint)
            fid = t.open('a.flac')
            got, _ = t.pread(fid, 0, 100, self.outpath())     # opens the remote handle
            self.assertEqual(got, data[:100])
            got, secs = t.pread(fid, 2 * 1024 * 1024, 1 << 20, self.outpath())
            self.assertEqual(got, data[2 << 20:3 << 20])
            print('1 MiB read at 50 ms RTT: %.0f ms (%.1f round trips)' % (secs * 1000, secs / 0.05))
            self.assertLess(secs, 12 * 0.05, '1 MiB read took %.2f s: not pipelined' % secs)
            total = 0.0
            for off in range(1000, 60000, 1000):   # 59 small header reads
                got, secs = t.pread(fid, off, 200, self.outpath())
                self.assertEqual(got, data[off:off + 200])
                total += secs
            print('59 small reads at 50 ms RTT: %.0f ms' % (total * 1000))
            self.assertLess(total, 4 * 0.05, 'small reads are not served from the read-ahead buffer')
        finally:
            proxy.close()

    # -- walk

    def test_walk_nested_tree_and_symlink_loop(self):
        want = {}
        for rel in ['a/1.flac', 'a/b/2.flac', 'a/b/c/3.mp3', 'd/4.ogg', 'top.opus', 'a/b/c/d/e/f/deep.m4a']:
            want[rel] = len(self.write(rel, os.urandom(self.rng.randrange(1, 5000))))
        os.symlink('../..', os.path.join(self.root, 'a/b/loop'))          # leads back to the root
        os.symlink('../top.opus', os.path.join(self.root, 'd/link.opus'))  # a symlink to a file
        want['d/link.opus'] = want['top.opus']
        os.symlink('missing.flac', os.path.join(self.root, 'd/dangling.flac'))
        os.makedirs(os.path.join(self.root, 'empty'))
        os.symlink(os.path.join(self.root, 'a/b'), os.path.join(self.root, 'alias'))  # a second way in
        for rel in ['a/b/2.flac', 'a/b/c/3.mp3', 'a/b/c/d/e/f/deep.m4a']:
            want['alias/' + rel[len('a/b/'):]] = want[rel]
        t = self.tool()
        files, skipped, ret = t.walk()
        self.assertEqual(files, want)
        self.assertEqual(skipped, {})
        self.assertEqual(ret, 0)
        log = t.log()
        self.assertIn('a directory loop', log)
        files, _, ret = t.walk('a/b')
        # From a/b, loop leads out to the root, which is not an ancestor here: it is walked, up to
        # the point where it comes back to a/b (by a/b itself, or alias).
        self.assertEqual(set(files), {'a/b/2.flac', 'a/b/c/3.mp3', 'a/b/c/d/e/f/deep.m4a', 'a/b/loop/top.opus',
                                      'a/b/loop/a/1.flac', 'a/b/loop/d/4.ogg', 'a/b/loop/d/link.opus'})
        self.assertEqual(t.walk('no/such/dir')[0], -errno.ENOENT, t.log())

    # -- host keys and keys

    def test_host_key_mismatch_is_refused(self):
        kh = os.path.join(self.out, 'known_hosts')
        with open(kh, 'w') as f:
            f.write(self.peer.other_host_key_line())
        t = self.tool(known_hosts=kh)
        self.assertEqual(t.check(), -errno.EPERM)
        self.assertEqual(t.stat('x'), -errno.EPERM)
        self.assertIn('HOST KEY MISMATCH', t.log())

    def test_absent_host_key_is_refused(self):
        kh = os.path.join(self.out, 'known_hosts')
        with open(kh, 'w') as f:
            f.write('[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n')
        t = self.tool(known_hosts=kh)
        self.assertEqual(t.check(), -errno.EPERM)
        self.assertIn('is not in', t.log())
        # A known_hosts file that does not exist at all is the same: nothing vouches for the host.
        t2 = self.tool(known_hosts=os.path.join(self.out, 'missing'))
        self.assertEqual(t2.check(), -errno.EPERM)

    def test_pinned_fingerprint(self):
        empty = os.path.join(self.out, 'empty_known_hosts')
        open(empty, 'w').close()
        self.write('x.flac', b'abc')
        t = self.tool(known_hosts=empty, fingerprint=self.peer.fingerprint)
        self.assertEqual(t.check(), 0)
        self.assertEqual(t.stat('x.flac')[0], 3)
        other = sftppeer.fingerprint(sftppeer.keygen(os.path.join(self.out, 'k')) + '.pub')
        t2 = self.tool(known_hosts=empty, fingerprint=other)
        self.assertEqual(t2.check(), -errno.EPERM)
        self.assertIn('not the pinned', t2.log())
        # A pin does not override a known_hosts entry that contradicts the server... nor does a
        # right pin with a matching known_hosts line hurt.
        t3 = self.tool(fingerprint=self.peer.fingerprint)
        self.assertEqual(t3.check(), 0)

    def test_wrong_client_key_is_refused(self):
        other = sftppeer.keygen(os.path.join(self.out, 'stranger'))
        t = self.tool(identity=other)
        self.assertEqual(t.check(), -errno.EACCES)
        self.assertIn('refused every key', t.log())

    # -- the server failing

    def test_server_killed_then_restarted(self):
        data = self.write('song.flac', os.urandom(2 * 1024 * 1024))
        t = self.tool(timeout=5)
        fid = t.open('song.flac')
        self.assertEqual(t.pread(fid, 0, 1000, self.outpath())[0], data[:1000])

        self.peer.stop(signal.SIGKILL)
        start = time.monotonic()
        got, _ = t.pread(fid, 1 << 20, 1000, self.outpath())   # past the read-ahead buffer
        elapsed = time.monotonic() - start
        self.assertEqual(got, -errno.EIO)
        self.assertLess(elapsed, 5 + 1, 'the failure took %.1f s, past the 5 s timeout' % elapsed)
        self.assertEqual(t.check(), -errno.EIO)

        self.peer.start()   # same port, same keys
        got, _ = t.pread(fid, 1 << 20, 1000, self.outpath())
        self.assertEqual(got, data[1 << 20:(1 << 20) + 1000])
        self.assertEqual(t.stat('song.flac')[0], len(data))
        self.assertEqual(t.check(), 0)

    def test_hung_server_times_out(self):
        data = self.write('song.flac', os.urandom(1 << 20))
        t = self.tool(timeout=3)
        fid = t.open('song.flac')
        self.assertEqual(t.pread(fid, 0, 10, self.outpath())[0], data[:10])
        # Freeze the server and every connection process: packets are accepted, never answered.
        pids = [self.peer.proc.pid] + self.peer._children()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            got, _ = t.pread(fid, 500000, 1000, self.outpath())
            elapsed = time.monotonic() - start
            self.assertEqual(got, -errno.EIO)
            self.assertLess(elapsed, 3 + 1, 'took %.1f s, past the 3 s timeout' % elapsed)
            self.assertGreater(elapsed, 2)
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        # Once the server answers again, so does the origin.
        got, _ = t.pread(fid, 500000, 1000, self.outpath())
        self.assertEqual(got, data[500000:501000])

    def test_idle_session_silently_dropped(self):
        """A connection that died without a word while idle (a NAT forgot it, a server froze) is
        not waited on: after two keepalive intervals of idleness a session is replaced."""
        data = self.write('song.flac', os.urandom(1 << 20))
        t = self.tool(timeout=10, keepalive=1)
        fid = t.open('song.flac')
        self.assertEqual(t.pread(fid, 0, 10, self.outpath())[0], data[:10])
        # Freeze the processes serving the open connection; the listener still accepts new ones.
        frozen = self.peer._children()
        self.assertTrue(frozen)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(2.5)     # the idleness under test, not a wait for a condition
            start = time.monotonic()
            got, _ = t.pread(fid, 600000, 1000, self.outpath())
            elapsed = time.monotonic() - start
            self.assertEqual(got, data[600000:601000])
            self.assertLess(elapsed, 3, 'a read waited %.1f s on a dead session' % elapsed)
        finally:
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def test_pool_serves_concurrent_files(self):
        blobs = {('f%d.flac' % i): self.write('f%d.flac' % i, os.urandom(300000 + i)) for i in range(12)}
        t = self.tool(pool=2)
        fids = {rel: t.open(rel) for rel in blobs}
        for rnd in range(3):
            for rel, fid in fids.items():
                off = self.rng.randrange(0, len(blobs[rel]))
                self.assertEqual(t.pread(fid, off, 50000, self.outpath())[0], blobs[rel][off:off + 50000])
        for fid in fids.values():
            t.cmd('close', fid)
        self.assertEqual(t.check(), 0)


if __name__ == '__main__':
    unittest.main(verbosity=2)
