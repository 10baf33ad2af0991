# SPDX-License-Identifier: LGPL-2.1-or-later
"""The S3 test peer: s3rver (npm, tests/peers/) on 127.0.0.1, a free port and a temp directory.

    with S3Peer() as s3:                 # or S3Peer.start_or_skip() in a test module
        s3.create_bucket('music')
        s3.put('music', 'a/b.flac', data)
        s3.endpoint                      # 'http://127.0.0.1:PORT'

s3rver takes unsigned requests, so the helper uploads with plain urllib and needs no signing of its
own; the daemon signs its requests (SigV4) with s3rver's account, S3RVER / S3RVER.

Run as a script ("s3peer.py serve") it starts a peer, prints its port on one line and stops it when
its stdin closes: the C unit tests use it that way. Exit status 77 when the peer cannot start here.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

LIB_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.environ.get('MUSICFS_SOURCE_ROOT') or os.path.dirname(os.path.dirname(LIB_DIR))
S3RVER = os.path.join(SOURCE_ROOT, 'tests', 'peers', 'node_modules', 's3rver', 'bin', 's3rver.js')

ACCESS_KEY_ID = 'S3RVER'
SECRET_ACCESS_KEY = 'S3RVER'
EXIT_SKIP = 77


class PeerUnavailable(Exception):
    pass


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def quote_key(key):
    return urllib.parse.quote(key, safe='/~')


class S3Peer:
    def __init__(self):
        self.proc = None
        self.dir = None
        self.port = None
        self.log_path = None

    @property
    def endpoint(self):
        return 'http://127.0.0.1:%d' % self.port

    def unavailable_reason(self):
        node = shutil.which('node')
        if not node:
            return 'node is not installed (scripts/install-deps.sh installs nodejs)'
        if not os.path.exists(S3RVER):
            return 's3rver is not installed: run npm ci --prefix tests/peers'
        return None

    def start(self, timeout=20.0):
        reason = self.unavailable_reason()
        if reason:
            raise PeerUnavailable(reason)
        self.dir = tempfile.mkdtemp(prefix='musicfs-s3rver-')
        self.log_path = os.path.join(self.dir, 's3rver.log')
        data = os.path.join(self.dir, 'data')
        os.mkdir(data)
        # A port picked here may be taken by the time s3rver binds it; try a few.
        for _ in range(5):
            self.port = _free_port()
            with open(self.log_path, 'ab') as log:
                # s3rver 3.7.1 (the last release) makes its continuation tokens with DES, which
                # Node 17+ (OpenSSL 3) has only in the legacy provider.
                self.proc = subprocess.Popen(['node', '--openssl-legacy-provider', S3RVER, '-d', data, '-a', '127.0.0.1', '-p', str(self.port),
                                              '--no-vhost-buckets'],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._answers():
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop()
                raise PeerUnavailable('s3rver did not answer within %.0f s' % timeout)
        self.stop()
        raise PeerUnavailable('s3rver exited at start: %s' % self.log_tail())

    def _answers(self):
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=0.5):
                pass
        except OSError:
            return False
        try:
            self.request('GET', '/')
        except (urllib.error.URLError, OSError):
            return False
        return True

    def log_tail(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read()[-2000:].decode('utf-8', 'replace')
        except OSError:
            return ''

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        if self.dir and not os.environ.get('MUSICFS_KEEP_TMP'):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- requests
    def request(self, method, path, data=None, timeout=30):
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={'x-amz-content-sha256': 'UNSIGNED-PAYLOAD'})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def create_bucket(self, bucket):
        self.request('PUT', '/' + bucket)

    def put(self, bucket, key, data):
        self.request('PUT', '/%s/%s' % (bucket, quote_key(key)), data=data)

    def delete(self, bucket, key):
        self.request('DELETE', '/%s/%s' % (bucket, quote_key(key)))

    def get(self, bucket, key):
        return self.request('GET', '/%s/%s' % (bucket, quote_key(key)))

    def upload_tree(self, bucket, root, prefix=''):
        """Uploads every file under root as prefix + its relative path; returns the keys."""
        keys = []
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                key = prefix + os.path.relpath(path, root)
                with open(path, 'rb') as f:
                    self.put(bucket, key, f.read())
                keys.append(key)
        return keys


def main(argv):
    if len(argv) != 2 or argv[1] != 'serve':
        sys.stderr.write('usage: s3peer.py serve\n')
        return 2
    peer = S3Peer()
    try:
        peer.start()
    except PeerUnavailable as e:
        sys.stderr.write('SKIP: %s\n' % e)
        return EXIT_SKIP
    try:
        sys.stdout.write('%d\n' % peer.port)
        sys.stdout.flush()
        sys.stdin.read()        # until the test closes our stdin (or dies)
    finally:
        peer.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
