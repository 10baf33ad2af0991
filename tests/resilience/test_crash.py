#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""2.7 (COVERAGE.md): a daemon killed with SIGKILL leaves a dead mount ("Transport endpoint is not
connected"); the next daemon on the same mountpoint and cache removes it and mounts at once, with the
same tree and the same inode numbers (D4). Also a kill in the middle of a first scan (between two
committed batches): the next start mounts what was committed and the scan completes the library.
3.7: the unit's ExecStopPost= command removes the dead mount a SIGKILLed daemon left.
2.2: a fatal signal in any thread is reported before the daemon dies of it: the signal, the thread's
name and a backtrace at crit level; then the default action (core dump, exit by that signal), and
the next start clears the mount as after any crash."""

import errno
import glob
import os
import re
import shlex
import subprocess
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

BULK = 2000


class CrashTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.files = rutil.origin_files(cls.lib)

    def assertStale(self, d):
        self.assertTrue(d.is_mounted(), 'a SIGKILLed daemon should leave its mount behind')
        self.assertEqual(rutil.listdir_errno(d.mountpoint), errno.ENOTCONN)

    def test_kill9_mid_operation(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        before = rutil.tree_inodes(d.mountpoint)
        self.assertEqual({p for p, (_, is_dir, _) in before.items() if not is_dir}, set(self.files))

        # Operations in flight at the moment of death: a read held in the origin, and walkers.
        slow = rutil.smallest(self.files)[0]
        rutil.fp_arm(d, 'origin-read', 'sleep(20000)')
        reader = rutil.Reader(d.path(slow))
        reader.start()
        rutil.wait_fired(d, 'origin-read', 1)
        stop = threading.Event()
        walk_errors = []

        def walker():
            while not stop.is_set():
                try:
                    for p in before:
                        os.stat(d.path(p))
                except OSError as e:
                    walk_errors.append(e.errno)
                    return
        walkers = [threading.Thread(target=walker, daemon=True) for _ in range(3)]
        for w in walkers:
            w.start()

        d.kill9()
        self.assertEqual(d.returncode, -signal.SIGKILL)
        self.assertTrue(reader.wait(10.0), 'a reader stayed blocked on the dead mount')
        self.assertIsNotNone(reader.error)
        self.assertIn(reader.error.errno, rutil.DEAD_MOUNT_ERRNOS)
        stop.set()
        for w in walkers:
            w.join(10.0)
            self.assertFalse(w.is_alive(), 'a walker stayed blocked on the dead mount')
        for e in walk_errors:
            self.assertIn(e, rutil.DEAD_MOUNT_ERRNOS)
        self.assertStale(d)

        # Same mountpoint, same cache: mounts at once, same tree, same inode numbers.
        d.failpoints = None
        t0 = time.monotonic()
        d.start(timeout=10.0)
        self.assertLess(time.monotonic() - t0, 5.0, 'READY took too long after a crash')
        self.assertIn('stale mount', d.log())
        self.assertEqual(rutil.listdir_errno(d.mountpoint), 0)
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        after = rutil.tree_inodes(d.mountpoint)
        self.assertEqual(after, before)
        self.assertEqual(rutil.read_file(d.path(slow)), rutil.read_file(self.files[slow]))
        self.assertEqual(glob.glob(os.path.join(d.cache_dir, 'catalog.db.corrupt-*')), [])
        self.assertDaemonStops(d)

    def assertCrashReport(self, d, sig, thread):
        """thread: the name the report must give, a regular expression."""
        log = d.log()
        name = signal.Signals(sig).name
        m = re.search(r'^musicfsd: crit: Crashed: %s(?: at address 0x[0-9a-f]+ \(code -?\d+\)| sent by pid %d)? in thread %s '
                      r'\(tid \d+\); backtrace:$' % (name, os.getpid(), thread), log, re.M)
        self.assertIsNotNone(m, 'no crash report for %s in thread %s:\n%s' % (name, thread, log[-3000:]))
        report = log[m.end():]
        end = report.find('musicfsd: crit: Raising %s again for a core dump' % name)
        self.assertGreaterEqual(end, 0, 'the report does not end by re-raising the signal')
        # backtrace_symbols_fd(): one "object(symbol+offset) [address]" line a frame, ours among them.
        frames = [line for line in report[:end].splitlines() if line.strip()]
        self.assertGreaterEqual(len(frames), 3, frames)
        self.assertTrue(all(re.search(r'\[0x[0-9a-f]+\]$', f) for f in frames), frames)
        self.assertTrue(any('musicfsd' in f for f in frames), 'no frame of the daemon itself: %s' % frames)

    def restart_after_crash(self, d):
        self.assertStale(d)
        d.failpoints = None
        d.start(timeout=10.0)
        self.assertIn('stale mount', d.log())
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))
        v = rutil.smallest(self.files)[0]
        self.assertEqual(rutil.read_file(d.path(v)), rutil.read_file(self.files[v]))
        self.assertDaemonStops(d)

    def test_crash_report_worker_abort(self):
        # The "panic" failpoint aborts in the FUSE worker serving the read.
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        v = rutil.smallest(self.files)[0]
        rutil.fp_arm(d, 'fuse-read', 'panic')
        with self.assertRaises(OSError) as cm:
            rutil.read_fresh(d.path(v))
        self.assertIn(cm.exception.errno, rutil.DEAD_MOUNT_ERRNOS)
        rc, _ = rutil.wait_exit(d, 30.0)
        self.assertEqual(rc, -signal.SIGABRT, d.describe())
        self.assertCrashReport(d, signal.SIGABRT, 'mfs-fuse')
        self.restart_after_crash(d)

    def test_crash_report_segv(self):
        # A SIGSEGV sent by this test (a fault reaches the same handler and reports its address). A
        # signal sent to the process goes to whichever thread does not block it: the main thread
        # mostly, but any named thread of the daemon may take it.
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        d.proc.send_signal(signal.SIGSEGV)
        rc, _ = rutil.wait_exit(d, 30.0)
        self.assertEqual(rc, -signal.SIGSEGV, d.describe())
        self.assertCrashReport(d, signal.SIGSEGV, r'(?:musicfsd|mfs-[a-z]+)')
        self.restart_after_crash(d)

    def test_unit_stop_post_removes_dead_mount(self):
        # 3.7: when systemd sees the daemon die, the unit's ExecStopPost= lazily unmounts what it left.
        unit = os.path.join(harness.SOURCE_ROOT, 'units', 'musicfsd.service')
        with open(unit, encoding='utf-8') as f:
            posts = [line.split('=', 1)[1].strip() for line in f if line.startswith('ExecStopPost=')]
        self.assertTrue(posts, '%s has no ExecStopPost=' % unit)
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.files))
        d.kill9()
        self.assertStale(d)
        for cmd in posts:
            ignore_failure = cmd.startswith('-')
            argv = shlex.split(cmd.lstrip('-@:+!'))
            argv = [a.replace('${MUSICFS_MOUNTPOINT}', d.mountpoint).replace('$MUSICFS_MOUNTPOINT', d.mountpoint)
                    for a in argv]
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            if not ignore_failure:
                self.assertEqual(r.returncode, 0, '%s: %s' % (argv, r.stdout))
        self.assertFalse(d.is_mounted(), 'ExecStopPost= %r left the dead mount' % posts)
        self.assertEqual(os.listdir(d.mountpoint), [])
        # The same commands are harmless when there is nothing to unmount (a clean stop).
        for cmd in posts:
            if not cmd.startswith('-'):
                argv = [a.replace('${MUSICFS_MOUNTPOINT}', d.mountpoint) for a in shlex.split(cmd.lstrip('@:+!'))]
                self.assertEqual(subprocess.run(argv, capture_output=True, timeout=30).returncode, 0, argv)

    def test_kill9_during_first_scan(self):
        lib = rutil.bulk_library(BULK)
        files = rutil.origin_files(lib)
        self.assertEqual(len(files), BULK)
        # Dies right after the first batch is committed, with the rest of the library unscanned.
        d = self.daemon([lib], start=False, failpoints='scan-batch=1*kill')
        d.start(wait_ready=False)
        rc, _ = rutil.wait_exit(d, 120.0)
        self.assertEqual(rc, -signal.SIGKILL, d.describe())
        self.assertStale(d)

        d.failpoints = None
        t0 = time.monotonic()
        d.start(timeout=10.0)
        self.assertLess(time.monotonic() - t0, 5.0, 'READY took too long after a crash')
        self.assertIn('stale mount', d.log())
        # The committed batch is served from the catalog at once; the scan adds the rest.
        committed = int(d.bus_get('TrackCount'))
        self.assertGreater(committed, 0, 'nothing of the committed batch was kept')
        self.assertLess(committed, BULK, 'the kill came after the whole library was scanned')
        d.wait_tracks(BULK, timeout=300.0)
        rutil.wait_scan_done(d)
        self.assertEqual(rutil.tree_files(d.mountpoint), set(files))
        self.assertEqual(glob.glob(os.path.join(d.cache_dir, 'catalog.db.corrupt-*')), [])
        self.assertNotIn('corrupt', d.log())
        for vpath in sorted(files)[::97]:
            self.assertEqual(rutil.read_file(d.path(vpath)), rutil.read_file(files[vpath]), vpath)
        inodes = rutil.tree_inodes(d.mountpoint)
        self.assertDaemonStops(d)
        # And the scan's result is durable: the same tree comes back from the catalog.
        d.start(timeout=10.0)
        self.assertEqual(int(d.bus_get('TrackCount')), BULK)
        self.assertEqual(rutil.tree_inodes(d.mountpoint), inodes)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
