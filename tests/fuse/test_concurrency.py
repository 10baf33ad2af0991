#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Eight threads stat, list and read the mount at random: on a steady tree, while the first scan
fills an empty catalog, and while a restarted daemon reconciles a changed origin in the background
(DESIGN.md D6). Every answer must be right or, for a name that is moving, ENOENT; the daemon never
dies and ends with exactly the expected tree."""

import errno
import os
import random
import shutil
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402

THREADS = 8


class Readers:
    """THREADS threads doing random stat/readdir/read against a mount.

    stable: {vpath: origin file} whose answers must be exact the whole time.
    final: {vpath: origin file} of the tree at the end; names listed that are in it are read and
    checked too (they may still vanish with ENOENT while the tree changes, if strict is False)."""

    def __init__(self, mountpoint, stable, final, strict, ops=300, seed=0):
        self.mnt = mountpoint
        self.stable = stable
        self.final = final
        self.stable_list = sorted(stable)
        self.final_list = sorted(final)
        self.strict = strict
        self.ops = ops
        self.seed = seed
        self.errors = []
        self.done_ops = 0
        self.enoent = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.dirs = {}
        for p in list(stable) + list(final):
            d = os.path.dirname(p)
            self.dirs.setdefault(d, set()).add(os.path.basename(p))
        for d in harness.expected_dirs(list(stable) + list(final)):
            parent = os.path.dirname(d)
            self.dirs.setdefault(parent, set()).add(os.path.basename(d))
        self.dirs.setdefault('', set())
        self.contents = {}
        self.threads = []

    def data(self, origin):
        with self.lock:
            if origin not in self.contents:
                with open(origin, 'rb') as f:
                    self.contents[origin] = f.read()
            return self.contents[origin]

    def fail(self, msg):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)

    def one(self, rng):
        op = rng.random()
        if op < 0.3:
            d = rng.choice(sorted(self.dirs))
            try:
                names = set(os.listdir(os.path.join(self.mnt, d)))
            except FileNotFoundError:
                if self.strict or d == '':
                    self.fail('listdir(%r): ENOENT' % d)
                self.enoent += 1
                return
            want_stable = {os.path.basename(p) for p in self.stable if os.path.dirname(p) == d}
            if not want_stable <= names:
                self.fail('listdir(%r) lacks %s' % (d, sorted(want_stable - names)))
            if self.strict and names != self.dirs.get(d, set()):
                self.fail('listdir(%r) = %s, want %s' % (d, sorted(names), sorted(self.dirs[d])))
            return
        use_final = self.final and (not self.stable or (not self.strict and rng.random() < 0.3))
        pool = self.final if use_final else self.stable
        if not pool:
            return
        vpath = rng.choice(self.final_list if use_final else self.stable_list)
        origin = pool[vpath]
        must_exist = vpath in self.stable
        path = os.path.join(self.mnt, vpath)
        try:
            if op < 0.6:
                st = os.stat(path)
                ost = os.stat(origin)
                if (st.st_size, st.st_mtime_ns) != (ost.st_size, ost.st_mtime_ns):
                    self.fail('stat(%r): size/mtime %s, origin %s' % (
                        vpath, (st.st_size, st.st_mtime_ns), (ost.st_size, ost.st_mtime_ns)))
            else:
                data = self.data(origin)
                with open(path, 'rb', buffering=0) as f:
                    off = rng.randrange(0, len(data))
                    size = rng.choice([1, 4096, 65536, 200000])
                    got = os.pread(f.fileno(), size, off)
                    if got != data[off:off + size]:
                        self.fail('pread(%r, %d, %d) differs from %s' % (vpath, size, off, origin))
        except FileNotFoundError:
            if must_exist:
                self.fail('%r: ENOENT' % vpath)
            self.enoent += 1
        except OSError as e:
            self.fail('%r: %s' % (vpath, errno.errorcode.get(e.errno, e.errno)))

    def run(self, i):
        rng = random.Random(self.seed * 1000 + i)
        n = 0
        try:
            # At least self.ops operations, and on until join() while the tree is changing.
            while n < self.ops or not self.stop.is_set():
                self.one(rng)
                n += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.fail('thread %d: %r' % (i, e))
        with self.lock:
            self.done_ops += n

    def start(self):
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(THREADS)]
        for t in self.threads:
            t.start()
        return self

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.errors


def origin_map(lib, expected):
    return {v: os.path.join(lib, r) for v, r in expected.items()}


class ConcurrencyTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sample = harness.sample_library()
        cls.sample_expected = genlib.load_expected(cls.sample)

    def make_library(self, bulk=1500):
        """A copy of the sample plus bulk tracks in bulk/; returns (dir, tracks for expected_paths)."""
        lib = os.path.join(self.tempdir(), 'lib')
        shutil.copytree(self.sample, lib)
        tracks = [{'rel': t['rel'], 'tags': t['tags']} for t in genlib.sample_tracks()]
        tracks += genlib.gen_bulk(lib, bulk, prefix='bulk/', write_expected=False, seed=3)
        return lib, tracks

    def test_steady_tree(self):
        d = self.daemon([self.sample])
        d.wait_tracks(len(self.sample_expected))
        files = origin_map(self.sample, self.sample_expected)
        r = Readers(d.mountpoint, files, files, strict=True, ops=300).start()
        self.assertEqual(r.join(), [])
        self.assertEqual(r.done_ops, THREADS * 300)
        self.assertTrue(d.running())
        self.assertDaemonStops(d)

    def test_readers_during_first_scan(self):
        lib, tracks = self.make_library()
        expected = genlib.expected_paths(tracks)
        d = self.daemon([lib])
        # The first scan of an empty catalog fills the tree while we read it; nothing is stable yet.
        r = Readers(d.mountpoint, {}, origin_map(lib, expected), strict=False, ops=200, seed=1).start()
        try:
            d.wait_tracks(len(expected), timeout=300)
        finally:
            errors = r.join()
        self.assertEqual(errors, [])
        tree = harness.walk_tree(d.mountpoint)
        self.assertEqual({p for p, st in tree.items() if not os.path.stat.S_ISDIR(st.st_mode)}, set(expected))
        files = origin_map(lib, expected)
        r = Readers(d.mountpoint, files, files, strict=True, ops=200, seed=2).start()
        self.assertEqual(r.join(), [])
        self.assertDaemonStops(d)

    def test_changes_reconciled_after_restart(self):
        lib, tracks = self.make_library()
        old = genlib.expected_paths(tracks)
        d = self.daemon([lib])
        d.wait_tracks(len(old), timeout=300)

        d.stop()
        # While it is down: two files added, one removed, one retagged in place.
        by_rel = {t['rel']: t for t in tracks}
        removed = 'bulk/0001/02/03.mp3' if 'bulk/0001/02/03.mp3' in by_rel else tracks[-1]['rel']
        os.unlink(os.path.join(lib, removed))
        del by_rel[removed]
        for i, fmt in enumerate(('flac', 'ogg')):
            rel = 'added/new-%d.%s' % (i, fmt)
            tags = {'title': 'Newcomer %d' % i, 'artist': 'Late Arrival', 'album': 'Fresh', 'year': 2024,
                    'track': i + 1}
            genlib.encode(os.path.join(lib, rel), fmt, tags)
            by_rel[rel] = {'rel': rel, 'tags': tags}
        changed = 'rock/acdc/hv2.mp3'
        tags = dict(by_rel[changed]['tags'], title='T.N.T. (Live)', track=3)
        genlib.encode(os.path.join(lib, changed), 'mp3', tags, duration=2.5)
        st = os.stat(os.path.join(lib, changed))
        os.utime(os.path.join(lib, changed), ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        by_rel[changed] = {'rel': changed, 'tags': tags}
        new = genlib.expected_paths(list(by_rel.values()))

        stable = {v: os.path.join(lib, r) for v, r in new.items() if old.get(v) == r and r != changed}
        self.assertGreater(len(stable), 1000)
        d.start()
        r = Readers(d.mountpoint, stable, origin_map(lib, new), strict=False, ops=300, seed=4).start()
        try:
            def converged():
                try:
                    files = {p for p, st in harness.walk_tree(d.mountpoint).items()
                             if not os.path.stat.S_ISDIR(st.st_mode)}
                except FileNotFoundError:
                    return False        # the rescan published a new tree between a listing and its lstat
                return files == set(new)
            harness.wait_until(converged, 120, 0.2, message='the tree to show the changed origin')
        finally:
            errors = r.join()
        self.assertEqual(errors, [])
        self.assertGreater(r.done_ops, 0)
        files = origin_map(lib, new)
        r = Readers(d.mountpoint, files, files, strict=True, ops=150, seed=5).start()
        self.assertEqual(r.join(), [])
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
