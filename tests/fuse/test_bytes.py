#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every byte read through the mount is the origin's byte: whole files, odd offsets and sizes, reads
past the end, mmap, sendfile, cp, and many readers at once."""

import mmap
import os
import random
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402

BIG_TAGS = {'title': 'Long Form', 'artist': 'Big File', 'album': 'Megabytes', 'year': 2021, 'track': 1}


class BytesTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)
        # A file of several MiB, so that reads span many FUSE requests (128 KiB each at most).
        cls.big_dir = tempfile.mkdtemp(prefix='musicfs-big-')
        big = os.path.join(cls.big_dir, 'long', 'form.wav')
        genlib.encode(big, 'wav', BIG_TAGS, duration=60, sample_rate=48000)
        cls.files = {v: os.path.join(cls.lib, r) for v, r in cls.expected.items()}
        cls.big_vpath = genlib.render(BIG_TAGS, 'form', 'wav')
        cls.files[cls.big_vpath] = big

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.big_dir)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.d = self.daemon([self.lib, self.big_dir])
        self.d.wait_tracks(len(self.files))

    def origin_bytes(self, vpath):
        with open(self.files[vpath], 'rb') as f:
            return f.read()

    def test_whole_files(self):
        self.assertGreater(os.path.getsize(self.files[self.big_vpath]), 4 << 20)
        for vpath, origin in self.files.items():
            self.assertEqual(harness.file_digest(self.d.path(vpath)), harness.file_digest(origin), vpath)
            # Small and odd buffer sizes through the page cache as well.
            with open(self.d.path(vpath), 'rb', buffering=0) as f:
                chunks = []
                while True:
                    b = f.read(4093)
                    if not b:
                        break
                    chunks.append(b)
            self.assertEqual(b''.join(chunks), self.origin_bytes(vpath), vpath)

    def test_odd_offsets_and_sizes(self):
        rng = random.Random(7)
        sizes = [0, 1, 2, 7, 511, 4095, 4096, 4097, 65535, 65537, 131072, 131075, 1 << 20, (1 << 20) + 3]
        for vpath in [self.big_vpath] + sorted(self.files)[:8]:
            data = self.origin_bytes(vpath)
            fd = os.open(self.d.path(vpath), os.O_RDONLY)
            try:
                offsets = [0, 1, len(data) - 1, len(data), len(data) + 1, len(data) + 100000]
                offsets += [rng.randrange(0, len(data)) for _ in range(20)]
                for off in offsets:
                    for size in sizes:
                        got = os.pread(fd, size, off)
                        self.assertEqual(got, data[off:off + size], '%s: pread(%d, %d)' % (vpath, size, off))
                # Sequential reads after a seek into the middle.
                os.lseek(fd, 12345, os.SEEK_SET)
                self.assertEqual(os.read(fd, 100000), data[12345:12345 + 100000])
                self.assertEqual(os.lseek(fd, 0, os.SEEK_END), len(data))
            finally:
                os.close(fd)

    def test_mmap(self):
        for vpath in (self.big_vpath, sorted(self.files)[0]):
            data = self.origin_bytes(vpath)
            with open(self.d.path(vpath), 'rb') as f:
                with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                    self.assertEqual(len(m), len(data))
                    self.assertEqual(m[len(data) // 2:len(data) // 2 + 4096], data[len(data) // 2:len(data) // 2 + 4096])
                    self.assertEqual(m[:], data, vpath)

    def test_sendfile_and_cp(self):
        out = self.tempdir()
        for vpath in (self.big_vpath, sorted(self.files)[1]):
            data = self.origin_bytes(vpath)
            dst = os.path.join(out, 'sendfile.out')
            with open(self.d.path(vpath), 'rb') as src, open(dst, 'wb') as o:
                sent = 0
                while sent < len(data):
                    n = os.sendfile(o.fileno(), src.fileno(), sent, 1 << 20)
                    self.assertGreater(n, 0)
                    sent += n
            with open(dst, 'rb') as f:
                self.assertEqual(f.read(), data, 'sendfile of %s' % vpath)
            cp = os.path.join(out, 'cp.out')
            subprocess.run(['cp', self.d.path(vpath), cp], check=True)
            with open(cp, 'rb') as f:
                self.assertEqual(f.read(), data, 'cp of %s' % vpath)
            # cat uses splice/copy_file_range where it can; dd uses plain reads of odd sizes.
            r = subprocess.run(['cat', self.d.path(vpath)], stdout=subprocess.PIPE, check=True)
            self.assertEqual(r.stdout, data, 'cat of %s' % vpath)
            r = subprocess.run(['dd', 'if=' + self.d.path(vpath), 'bs=3001', 'status=none'],
                               stdout=subprocess.PIPE, check=True)
            self.assertEqual(r.stdout, data, 'dd of %s' % vpath)

    def test_concurrent_readers(self):
        paths = sorted(self.files)
        contents = {v: self.origin_bytes(v) for v in paths}
        errors = []

        def reader(seed):
            rng = random.Random(seed)
            try:
                for _ in range(150):
                    vpath = self.big_vpath if rng.random() < 0.3 else rng.choice(paths)
                    data = contents[vpath]
                    with open(self.d.path(vpath), 'rb', buffering=0) as f:
                        if rng.random() < 0.2:
                            if f.read() != data:
                                errors.append('whole read of %s differs' % vpath)
                            continue
                        for _ in range(5):
                            off = rng.randrange(0, len(data))
                            size = rng.choice([1, 100, 4096, 70000, 300000])
                            if os.pread(f.fileno(), size, off) != data[off:off + size]:
                                errors.append('pread(%d, %d) of %s differs' % (size, off, vpath))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append('reader %d: %r' % (seed, e))
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertTrue(self.d.running())
        self.assertDaemonStops(self.d)


if __name__ == '__main__':
    harness.main()
