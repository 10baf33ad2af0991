# SPDX-License-Identifier: LGPL-2.1-or-later
"""The fault proxy (faultproxy.py) in front of a small loopback server proves each fault's effect:
byte-exact passthrough, latency and bandwidth as lower bounds on the time taken, down refusing,
timeout holding the data, reset_peer's ECONNRESET, slicer's several recv()s of the same bytes,
limit_data's early close, slow_close's late EOF, and stop() closing everything. Times are measured
on the monotonic clock, and only their lower bounds are asserted (a busy machine is only slower)."""

import os
import socket
import socketserver
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultproxy  # noqa: E402

IO_TIMEOUT = 10.0


def pattern(n):
    return bytes((i * 131 + 7) & 0xFF for i in range(n))


class Handler(socketserver.BaseRequestHandler):
    """"ECHO\\n": echoes until EOF. "BLOB n\\n": sends n pattern bytes, then closes."""

    def handle(self):
        try:
            self.serve(self.request)
        except (ConnectionResetError, BrokenPipeError):
            pass                        # reset_peer and down() do that on purpose

    def serve(self, s):
        line = b''
        while not line.endswith(b'\n'):
            b = s.recv(1)
            if not b:
                return
            line += b
        cmd = line.split()
        if cmd[0] == b'ECHO':
            while True:
                data = s.recv(65536)
                if not data:
                    break
                s.sendall(data)
        elif cmd[0] == b'BLOB':
            s.sendall(pattern(int(cmd[1])))


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def recv_until_eof(s):
    """All bytes until EOF, and the number of recv() calls that returned data."""
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b''.join(chunks), len(chunks)
        chunks.append(b)


def recv_exact(s, n):
    buf = b''
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise EOFError('EOF after %d of %d bytes' % (len(buf), n))
        buf += b
    return buf


class FaultProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(('127.0.0.1', 0), Handler)
        cls.server_thread = threading.Thread(target=cls.server.serve_forever, kwargs={'poll_interval': 0.05},
                                             daemon=True)
        cls.server_thread.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()
        cls.server_thread.join(5)

    def setUp(self):
        self.proxy = faultproxy.FaultProxy(*self.server.server_address).start()
        self.addCleanup(self.proxy.stop)

    def connect(self, command):
        s = socket.create_connection(self.proxy.address, timeout=IO_TIMEOUT)
        self.addCleanup(s.close)
        s.sendall(command)
        return s

    def echo_rtt(self, s, payload=b'ping'):
        t0 = time.monotonic()
        s.sendall(payload)
        self.assertEqual(recv_exact(s, len(payload)), payload)
        return time.monotonic() - t0

    def test_passthrough(self):
        data = pattern(300000)
        s = self.connect(b'ECHO\n')
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        self.assertEqual(recv_exact(s, len(data)), data)
        sender.join(IO_TIMEOUT)
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(recv_until_eof(s)[0], b'')
        blob, _ = recv_until_eof(self.connect(b'BLOB 123457\n'))
        self.assertEqual(blob, pattern(123457))

    def test_latency(self):
        s = self.connect(b'ECHO\n')
        self.echo_rtt(s)
        # Switched on under an open connection; each direction adds its own.
        self.proxy.latency(150, direction='both')
        rtt = self.echo_rtt(s)
        self.assertGreaterEqual(rtt, 0.300, 'latency 150 ms each way, round trip %.3f s' % rtt)
        self.proxy.latency(200, jitter=50, direction='downstream')
        self.proxy.clear('latency', 'upstream')
        rtt = self.echo_rtt(s)
        self.assertGreaterEqual(rtt, 0.150)
        self.proxy.clear()
        self.assertLess(self.echo_rtt(s), 0.150)

    def test_bandwidth(self):
        self.proxy.bandwidth(100)       # KB/s: 60000 bytes take >= 0.6 s
        t0 = time.monotonic()
        blob, _ = recv_until_eof(self.connect(b'BLOB 60000\n'))
        took = time.monotonic() - t0
        self.assertEqual(blob, pattern(60000))
        self.assertGreaterEqual(took, 0.6, '60000 bytes at 100 KB/s in %.3f s' % took)

    def test_down_refuses(self):
        s = self.connect(b'ECHO\n')
        self.echo_rtt(s)
        self.proxy.down()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(self.proxy.address, timeout=IO_TIMEOUT)
        # The open connection is closed too.
        try:
            self.assertEqual(recv_until_eof(s)[0], b'')
        except ConnectionResetError:
            pass
        self.assertEqual(self.proxy.connections(), 0)

        self.proxy.up()
        self.echo_rtt(self.connect(b'ECHO\n'))

        self.proxy.down(refuse=False)   # accepts, then closes
        s = socket.create_connection(self.proxy.address, timeout=IO_TIMEOUT)
        self.addCleanup(s.close)
        try:
            self.assertEqual(s.recv(10), b'')
        except ConnectionResetError:
            pass

    def test_timeout_blackholes(self):
        s = self.connect(b'ECHO\n')
        self.echo_rtt(s)
        self.proxy.timeout(0)
        s.sendall(b'held')
        s.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            s.recv(10)
        # Removing the toxic lets the held bytes through.
        self.proxy.clear('timeout')
        s.settimeout(IO_TIMEOUT)
        self.assertEqual(recv_exact(s, 4), b'held')

        self.proxy.timeout(300, direction='both')
        t0 = time.monotonic()
        s2 = self.connect(b'BLOB 1000\n')
        data, _ = recv_until_eof(s2)
        took = time.monotonic() - t0
        self.assertEqual(data, b'')
        self.assertGreaterEqual(took, 0.3)

    def test_reset_peer(self):
        s = self.connect(b'ECHO\n')
        self.echo_rtt(s)
        t0 = time.monotonic()
        self.proxy.reset_peer(100)
        with self.assertRaises(ConnectionResetError):
            while True:
                if not s.recv(10):
                    self.fail('EOF instead of a reset')
        self.assertGreaterEqual(time.monotonic() - t0, 0.1)

    def test_slicer(self):
        self.proxy.slicer(average_size=10, size_variation=5, delay_us=5000)
        data, n_recv = recv_until_eof(self.connect(b'BLOB 400\n'))
        self.assertEqual(data, pattern(400))
        # 400 bytes in 5..15-byte slices 5 ms apart cannot come in one or two recv()s.
        self.assertGreaterEqual(n_recv, 5)

    def test_limit_data(self):
        self.proxy.limit_data(1000)
        data, _ = recv_until_eof(self.connect(b'BLOB 50000\n'))
        self.assertEqual(data, pattern(1000))

    def test_slow_close(self):
        self.proxy.slow_close(400)
        s = self.connect(b'BLOB 10\n')
        self.assertEqual(recv_exact(s, 10), pattern(10))
        t0 = time.monotonic()
        self.assertEqual(s.recv(10), b'')
        # The server closed right after sending; the EOF came 400 ms after it, less what the
        # first recv waited.
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)

    def test_stop_closes_everything(self):
        s = self.connect(b'ECHO\n')
        self.echo_rtt(s)
        self.proxy.timeout(0)           # a pump waiting in a toxic still stops
        self.proxy.stop()
        try:
            self.assertEqual(recv_until_eof(s)[0], b'')
        except ConnectionResetError:
            pass
        self.assertEqual(self.proxy.connections(), 0)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(self.proxy.address, timeout=IO_TIMEOUT)
        self.assertFalse(any(t.name.startswith('faultproxy') for t in threading.enumerate()))

    def test_bounds(self):
        with self.assertRaises(ValueError):
            self.proxy.latency(faultproxy.MAX_DELAY_MS + 1)
        with self.assertRaises(ValueError):
            self.proxy.bandwidth(0)
        with self.assertRaises(ValueError):
            self.proxy.slicer(average_size=4, size_variation=4)
        with self.assertRaises(ValueError):
            self.proxy.timeout(5, direction='sideways')
        # Connections beyond the cap are accepted and closed at once.
        open_ = [self.connect(b'ECHO\n') for _ in range(faultproxy.MAX_CONNECTIONS)]
        for s in open_[:3]:
            self.echo_rtt(s)
        extra = socket.create_connection(self.proxy.address, timeout=IO_TIMEOUT)
        self.addCleanup(extra.close)
        try:
            self.assertEqual(extra.recv(10), b'')
        except ConnectionResetError:
            pass


if __name__ == '__main__':
    unittest.main(verbosity=2)
