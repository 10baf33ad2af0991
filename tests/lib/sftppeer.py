# SPDX-License-Identifier: LGPL-2.1-or-later
"""The SFTP test peer: Debian's OpenSSH sshd on 127.0.0.1, on a free port, with a generated host key
and a generated client key, in a temp dir of its own. It serves the whole file system over
internal-sftp; tests point the origin's path at a directory of theirs.

    with SftpPeer() as peer:
        peer.port, peer.client_key, peer.known_hosts, peer.fingerprint
        peer.stop(); peer.start()      # a "restart": same port, same keys

A peer that cannot start here (no sshd, no root for /run/sshd) makes require_sshd() skip (exit 77).
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

SSHD = '/usr/sbin/sshd'
SSH_KEYGEN = shutil.which('ssh-keygen') or '/usr/bin/ssh-keygen'


def require_sshd(skip):
    """Calls skip(reason) unless an sshd peer can run here."""
    if not os.access(SSHD, os.X_OK):
        skip('%s is missing (install openssh-server; scripts/install-deps.sh does)' % SSHD)
    if not os.access(SSH_KEYGEN, os.X_OK):
        skip('ssh-keygen is missing (install openssh-client)')
    try:
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)    # sshd's privilege separation dir
    except OSError as e:
        skip('cannot create /run/sshd: %s' % e.strerror)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def keygen(path, kind='ed25519'):
    subprocess.run([SSH_KEYGEN, '-q', '-t', kind, '-N', '', '-C', 'musicfs-test', '-f', path],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return path


def fingerprint(pub_path):
    """"SHA256:<base64>" of a public key file, as ssh-keygen -l prints it."""
    out = subprocess.run([SSH_KEYGEN, '-l', '-E', 'sha256', '-f', pub_path], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


class SftpPeer:
    def __init__(self, workdir=None):
        self.dir = workdir or tempfile.mkdtemp(prefix='musicfs-sshd-')
        self._own_dir = workdir is None
        self.port = free_port()
        self.host_key = keygen(os.path.join(self.dir, 'host_ed25519'))
        self.client_key = keygen(os.path.join(self.dir, 'client_ed25519'))
        import pwd
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.authorized_keys = os.path.join(self.dir, 'authorized_keys')
        shutil.copyfile(self.client_key + '.pub', self.authorized_keys)
        self.known_hosts = os.path.join(self.dir, 'known_hosts')
        with open(self.host_key + '.pub') as f:
            keytype, key = f.read().split()[:2]
        with open(self.known_hosts, 'w') as f:
            f.write('[127.0.0.1]:%d %s %s\n' % (self.port, keytype, key))
        self.fingerprint = fingerprint(self.host_key + '.pub')
        self.config = os.path.join(self.dir, 'sshd_config')
        self.log_path = os.path.join(self.dir, 'sshd.log')
        with open(self.config, 'w') as f:
            f.write('\n'.join([
                'ListenAddress 127.0.0.1',
                'Port %d' % self.port,
                'HostKey %s' % self.host_key,
                'AuthorizedKeysFile %s' % self.authorized_keys,
                'PasswordAuthentication no',
                'KbdInteractiveAuthentication no',
                'PubkeyAuthentication yes',
                'PermitRootLogin prohibit-password',
                'UsePAM no',
                'StrictModes no',
                'PidFile %s' % os.path.join(self.dir, 'sshd.pid'),
                'Subsystem sftp internal-sftp',
                'MaxStartups 100',
                'MaxSessions 100',
                'LogLevel VERBOSE',
                '']))
        self.proc = None
        self._log = None

    def other_host_key_line(self):
        """A known_hosts line for this peer's address with some other key: a man in the middle."""
        other = keygen(os.path.join(self.dir, 'other_%d' % time.monotonic_ns()))
        with open(other + '.pub') as f:
            keytype, key = f.read().split()[:2]
        return '[127.0.0.1]:%d %s %s\n' % (self.port, keytype, key)

    def start(self, timeout=10.0):
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen([SSHD, '-D', '-e', '-f', self.config], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError('sshd exited with %d:\n%s' % (self.proc.returncode, self.log()))
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(4).startswith(b'SSH-'):
                        return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError('sshd did not answer on port %d:\n%s' % (self.port, self.log()))
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM):
        """Stops the listener and every connection it spawned (they are its process group's)."""
        if self.proc and self.proc.poll() is None:
            # Children serving connections outlive a killed listener unless killed too.
            for pid in self._children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def _children(self):
        """Every descendant of the listener."""
        out = []
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                kids = []
            out += kids
            todo += kids
        return out

    def log(self):
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()[-4000:]
        except OSError:
            return ''

    def cleanup(self):
        self.stop()
        if self._own_dir and not os.environ.get('MUSICFS_KEEP_TMP'):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class Relay:
    """A loopback TCP relay to target_port that holds every chunk for delay seconds in each
    direction (a WAN's latency, so round trips can be counted by time) and counts the bytes the
    server sent (bytes_down). A test helper of the SFTP tests, not a fault proxy."""

    def __init__(self, target_port, delay=0.0):
        self.delay = delay
        self.bytes_down = 0
        self._lock = threading.Lock()
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(('127.0.0.1', self.target))
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns += [c, u]
            self._pump(c, u, False)
            self._pump(u, c, True)

    def _pump(self, src, dst, down):
        q = []
        cv = threading.Condition()

        def reader():
            while True:
                try:
                    data = src.recv(1 << 16)
                except OSError:
                    data = b''
                if down:
                    with self._lock:
                        self.bytes_down += len(data)
                with cv:
                    q.append((time.monotonic() + self.delay, data))
                    cv.notify()
                if not data:
                    return

        def writer():
            while True:
                with cv:
                    while not q:
                        cv.wait()
                    due, data = q.pop(0)
                time.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()

    def close(self):
        self.stopping = True
        self.sock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass
