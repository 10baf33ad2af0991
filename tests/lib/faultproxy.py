# SPDX-License-Identifier: LGPL-2.1-or-later
"""A TCP fault proxy on loopback for the remote-origin tests (issue #5): one listener on
127.0.0.1 in front of one upstream (host, port), with Toxiproxy's faults ("toxics") switched on and
off while a test runs. Standard library only, threads: one accept thread and two pumps per
connection (upstream = client -> server, downstream = server -> client).

Toxics, per direction ('upstream', 'downstream' or 'both'), applied to new and existing connections
from the next chunk of data on:
  latency(ms, jitter)        every chunk waits ms +/- jitter before it is forwarded
  bandwidth(rate)            at most rate KB/s (1 KB = 1000 bytes, as Toxiproxy counts)
  timeout(ms)                nothing is forwarded; the connection is closed after ms (0: never, the
                             data waits until the toxic is removed)
  reset_peer(ms)             ms after the toxic reaches the connection, both peers get a TCP RST
                             (SO_LINGER 0)
  slicer(average_size, size_variation, delay_us)
                             each chunk is cut into pieces of average_size +/- size_variation bytes,
                             sent delay_us apart (TCP_NODELAY), so the peer sees several recv()s
  limit_data(nbytes)         the connection is closed once nbytes went through in that direction
  slow_close(ms)             an EOF is passed on (and the connection closed) ms late
And the proxy as a whole: down(refuse=True) closes every connection and the listener (connects are
refused); down(refuse=False) keeps accepting and closes each connection at once; up() undoes it.

Bounded: every time is capped at MAX_DELAY_MS, connections at MAX_CONNECTIONS (more are accepted and
closed at once), every wait wakes at least every POLL_S to see toxic changes and stop(); stop()
closes everything and joins every thread.
"""

import random
import select
import socket
import struct
import threading
import time

MAX_DELAY_MS = 120000
MAX_CONNECTIONS = 64
POLL_S = 0.02
CHUNK = 32768
DIRECTIONS = ('upstream', 'downstream')


def _directions(direction):
    if direction == 'both':
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError('direction must be upstream, downstream or both, not %r' % (direction,))
    return (direction,)


def _ms(name, v):
    if not isinstance(v, (int, float)) or v < 0 or v > MAX_DELAY_MS:
        raise ValueError('%s must be 0..%d ms, not %r' % (name, MAX_DELAY_MS, v))
    return v


def _rst_close(sock):
    """Closes sock with a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _close_listener(sock):
    # shutdown() takes the socket out of LISTEN at once, even while the accept thread's select()
    # still holds it (a bare close() would leave it accepting until that select returns).
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Connection:
    def __init__(self, proxy, client, server):
        self.proxy = proxy
        self.sockets = {'upstream': (client, server), 'downstream': (server, client)}
        self.client, self.server = client, server
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.eof = set()                # directions whose source ended
        self.sent = {d: 0 for d in DIRECTIONS}
        self.since = {}                 # (direction, toxic) -> monotonic time the toxic reached us
        self.threads = []

    def start(self):
        for d in DIRECTIONS:
            t = threading.Thread(target=self._pump, args=(d,), name='faultproxy-%s' % d, daemon=True)
            self.threads.append(t)
            t.start()

    def close(self, reset=False):
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for s in (self.client, self.server):
            if reset:
                _rst_close(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.proxy._forget(self)

    def join(self, timeout):
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def _sleep(self, seconds):
        """Sleeps up to seconds; False when the connection closed meanwhile."""
        return not self.closed.wait(max(0.0, seconds))

    def _toxic_age(self, direction, name, toxics):
        """Seconds since the toxic name reached this connection in direction (None: not armed)."""
        key = (direction, name)
        if name not in toxics:
            self.since.pop(key, None)
            return None
        return time.monotonic() - self.since.setdefault(key, time.monotonic())

    def _send(self, dst, data):
        try:
            dst.sendall(data)
            return True
        except OSError:
            self.close(reset=True)
            return False

    def _forward(self, direction, dst, data, toxics):
        lat = toxics.get('latency')
        if lat:
            delay = lat['ms'] + random.uniform(-lat['jitter'], lat['jitter'])
            if not self._sleep(delay / 1000.0):
                return False

        lim = toxics.get('limit_data')
        last = False
        if lim:
            room = lim['bytes'] - self.sent[direction]
            if len(data) >= room:
                data, last = data[:max(room, 0)], True

        pieces = [data]
        sl = toxics.get('slicer')
        if sl and data:
            pieces, i = [], 0
            while i < len(data):
                n = max(1, sl['average_size'] + random.randint(-sl['size_variation'], sl['size_variation']))
                pieces.append(data[i:i + n])
                i += n

        bw = toxics.get('bandwidth')
        for k, piece in enumerate(pieces):
            if sl and k > 0 and not self._sleep(sl['delay_us'] / 1e6):
                return False
            if bw:
                # At most a tenth of a second's worth at a time, each followed by its share of time.
                step = max(1, bw['rate'] * 100)
                for i in range(0, len(piece), step):
                    part = piece[i:i + step]
                    if not self._send(dst, part):
                        return False
                    self._account(direction, len(part))
                    if not self._sleep(len(part) / (bw['rate'] * 1000.0)):
                        return False
            else:
                if not self._send(dst, piece):
                    return False
                self._account(direction, len(piece))

        if last:
            self.close()
            return False
        return True

    def _account(self, direction, n):
        self.sent[direction] += n
        with self.proxy._lock:
            self.proxy.forwarded[direction] += n

    def _pump(self, direction):
        src, dst = self.sockets[direction]
        pending = b''                   # read, not yet forwarded: the toxics are looked at again first
        while not self.closed.is_set():
            toxics = self.proxy._toxics_for(direction)

            age = self._toxic_age(direction, 'reset_peer', toxics)
            if age is not None and age * 1000 >= toxics['reset_peer']['ms']:
                self.close(reset=True)
                return

            age = self._toxic_age(direction, 'timeout', toxics)
            if age is not None:
                ms = toxics['timeout']['ms']
                if ms and age * 1000 >= ms:
                    self.close()
                    return
                self._sleep(POLL_S)      # hold the data in the kernel's buffers
                continue

            if pending:
                data, pending = pending, b''
                if not self._forward(direction, dst, data, toxics):
                    return
                continue

            try:
                ready, _, _ = select.select([src], [], [], POLL_S)
            except (OSError, ValueError):
                self.close()
                return
            if not ready:
                continue
            try:
                data = src.recv(CHUNK)
            except ConnectionResetError:
                self.close(reset=True)
                return
            except OSError:
                self.close()
                return

            if data:
                pending = data
                continue

            sc = toxics.get('slow_close')
            if sc and not self._sleep(sc['ms'] / 1000.0):
                return
            with self.lock:
                self.eof.add(direction)
                both = len(self.eof) == 2
            if both:
                self.close()
            else:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            return


class FaultProxy:
    """with FaultProxy(host, port) as p: connect to p.address; p.latency(200) ... p.clear()"""

    def __init__(self, upstream_host, upstream_port, listen_host='127.0.0.1', listen_port=0):
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.port = listen_port
        self._lock = threading.Lock()
        self._toxics = {d: {} for d in DIRECTIONS}
        self._conns = set()
        self._listener = None
        self._mode = 'up'               # 'up', 'refuse' or 'close'
        self._stopping = threading.Event()
        self._thread = None
        self.accepted = 0               # connections accepted in all
        self.peak = 0                   # the most connections open at once (reset_counters() resets)
        self.forwarded = {d: 0 for d in DIRECTIONS}     # bytes passed on, per direction

    # ---------------------------------------------------------------------------- lifetime

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.listen_host, self.port))
        s.listen(MAX_CONNECTIONS)
        self.port = s.getsockname()[1]
        return s

    def start(self):
        self._listener = self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name='faultproxy-accept', daemon=True)
        self._thread.start()
        return self

    @property
    def address(self):
        return (self.listen_host, self.port)

    def stop(self):
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        with self._lock:
            conns = list(self._conns)
            listener, self._listener = self._listener, None
        if listener:
            _close_listener(listener)
        for c in conns:
            c.close()
        for c in conns:
            c.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def connections(self):
        with self._lock:
            return len(self._conns)

    def reset_counters(self):
        """Starts accepted, peak and forwarded afresh (peak from the connections open now)."""
        with self._lock:
            self.accepted = 0
            self.peak = len(self._conns)
            self.forwarded = {d: 0 for d in DIRECTIONS}

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self):
        while not self._stopping.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stopping.wait(POLL_S)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], POLL_S)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue                # closed under us by down()
            self.accepted += 1
            with self._lock:
                refuse = self._mode != 'up' or len(self._conns) >= MAX_CONNECTIONS
            if refuse:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _rst_close(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client, server)
            with self._lock:
                self._conns.add(conn)
                self.peak = max(self.peak, len(self._conns))
            conn.start()

    # ---------------------------------------------------------------------------- faults

    def _set(self, name, direction, params):
        with self._lock:
            for d in _directions(direction):
                self._toxics[d][name] = params

    def _toxics_for(self, direction):
        with self._lock:
            return dict(self._toxics[direction])

    def clear(self, name=None, direction='both'):
        """Removes toxic name (every toxic when None) from direction."""
        with self._lock:
            for d in _directions(direction):
                if name is None:
                    self._toxics[d].clear()
                else:
                    self._toxics[d].pop(name, None)

    def latency(self, ms, jitter=0, direction='downstream'):
        self._set('latency', direction, {'ms': _ms('latency', ms), 'jitter': _ms('jitter', jitter)})

    def bandwidth(self, rate, direction='downstream'):
        if not isinstance(rate, int) or rate < 1 or rate > 10 ** 7:
            raise ValueError('rate must be 1..10^7 KB/s, not %r' % (rate,))
        self._set('bandwidth', direction, {'rate': rate})

    def timeout(self, ms=0, direction='downstream'):
        self._set('timeout', direction, {'ms': _ms('timeout', ms)})

    def reset_peer(self, ms=0, direction='downstream'):
        self._set('reset_peer', direction, {'ms': _ms('reset_peer', ms)})

    def slicer(self, average_size=8, size_variation=4, delay_us=10000, direction='downstream'):
        if average_size < 1 or size_variation < 0 or size_variation >= average_size:
            raise ValueError('slicer needs average_size >= 1 and 0 <= size_variation < average_size')
        _ms('slicer delay', delay_us / 1000.0)
        self._set('slicer', direction, {'average_size': average_size, 'size_variation': size_variation,
                                        'delay_us': delay_us})

    def limit_data(self, nbytes, direction='downstream'):
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError('limit_data needs a byte count >= 0, not %r' % (nbytes,))
        self._set('limit_data', direction, {'bytes': nbytes})

    def slow_close(self, ms, direction='downstream'):
        self._set('slow_close', direction, {'ms': _ms('slow_close', ms)})

    def down(self, refuse=True):
        """Closes every connection; refuse: closes the listener too (ECONNREFUSED), else new
        connections are accepted and closed at once."""
        with self._lock:
            self._mode = 'refuse' if refuse else 'close'
            conns = list(self._conns)
            listener = self._listener if refuse else None
            if refuse:
                self._listener = None
        if listener:
            _close_listener(listener)
        for c in conns:
            c.close()

    def up(self):
        with self._lock:
            self._mode = 'up'
            if self._listener is None and not self._stopping.is_set():
                self._listener = self._listen()
