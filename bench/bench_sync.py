#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The sync benchmark (issue #6): musicfsd's unchanged rescan rate side by side with a native walk of
the same tree in the same run, and the time from a change in a local origin to its being visible in
the mount. See bench/README.md ("Sync") for what each figure means.

  sudo MUSICFS_BUILD_ROOT=$PWD/build-rel /usr/bin/python3 bench/bench_sync.py               # 10k and 100k
  sudo MUSICFS_BUILD_ROOT=$PWD/build-rel /usr/bin/python3 bench/bench_sync.py --sizes 10000

Libraries are bench_foundation.py's (/var/tmp/musicfs-bench/lib-<N>/, generated once). The changes
are made under <lib>/zz-bench-sync/, which is removed at the end, so the library stays what its
.expected.json says. Needs root (FUSE) and Debian's /usr/bin/python3 (dbus, dbusmock).
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import bench_foundation as bf  # noqa: E402 - sets up the paths to tests/lib
from bench_foundation import harness, genlib, log  # noqa: E402

TARGET_RESCAN_FILES_PER_S = 20000.0
TARGET_VISIBLE_S = 2.0
CHANGE_DIR = 'zz-bench-sync'


def median(v):
    return statistics.median(v) if v else None


def native_find(root):
    """find(1) stat()ing every file for what the scanner compares: size and mtime. Returns seconds."""
    t0 = time.perf_counter()
    subprocess.run(['find', root, '-type', 'f', '-printf', '%s %T@ %p\\n'], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def scanned_lines(d):
    return re.findall(r'Origin \S+: scanned (\d+) files.* (\d+) tags read', d.log())


def timed_rescan(m, n, timeout):
    """Rescan over D-Bus; seconds until the scanner logged the end of that scan."""
    before = len(scanned_lines(m.d))
    t0 = time.perf_counter()
    m.d.bus_call('Rescan', 's', '')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = scanned_lines(m.d)
        if len(lines) > before:
            t = time.perf_counter() - t0
            files, read = map(int, lines[-1])
            if files != n or read != 0:
                raise RuntimeError('the rescan saw %d files and read %d tags, want %d and 0' % (files, read, n))
            return t
        time.sleep(0.002)
    raise RuntimeError('the rescan did not end within %.0f s' % timeout)


def wait_visible(path, exists, timeout=30.0):
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) == exists:
            return time.perf_counter() - t0
        time.sleep(0.002)
    return None


class Run:
    def __init__(self, args, n, lib, work):
        self.args, self.n, self.lib, self.work = args, n, lib, work
        self.res = {'tracks': n}
        os.makedirs(work, exist_ok=True)
        self.tpl = genlib.make_templates(work)

    def write(self, rel, tags):
        path = os.path.join(self.lib, CHANGE_DIR, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.part'
        genlib.write_tagged(tmp, 'flac', tags, *self.tpl)
        os.rename(tmp, path)        # the way copies and tag editors land a file: whole
        return genlib.render(tags, os.path.splitext(os.path.basename(rel))[0], 'flac')

    def go(self):
        m = bf.Musicfsd(self.lib, os.path.join(self.work, 'd'))
        try:
            m.start()
            m.wait_ready(60)
            t, last = m.wait_tracks(self.n, max(60.0, self.n / 250.0))
            if t is None:
                raise RuntimeError('the first scan stopped at %s of %d tracks' % (last, self.n))
            harness.wait_until(lambda: len(scanned_lines(m.d)) >= 1, 60, message='the first scan to end')
            self.rescans(m)
            self.latency(m)
        finally:
            m.cleanup()
            harness.safe_rmtree(os.path.join(self.lib, CHANGE_DIR))

    def rescans(self, m):
        rounds = self.args.rounds
        daemon, find, walk = [], [], []
        native_find(self.lib)       # warm, like the daemon after its first scan
        for i in range(rounds):
            daemon.append(timed_rescan(m, self.n, max(60.0, self.n / 1000.0)))
            find.append(native_find(self.lib))
            walk.append(bf.native_walk(self.lib)[1])
        self.res['rescan_s'] = daemon
        self.res['find_s'] = find
        self.res['walk_s'] = walk
        self.res['rescan_files_per_s'] = self.n / median(daemon)
        self.res['find_files_per_s'] = self.n / median(find)
        self.res['walk_files_per_s'] = self.n / median(walk)
        log('%d: unchanged rescan %.0f files/s, find -printf %.0f files/s, os.walk+lstat %.0f files/s' % (
            self.n, self.res['rescan_files_per_s'], self.res['find_files_per_s'], self.res['walk_files_per_s']))

    def latency(self, m):
        added, moved, removed = [], [], []
        for i in range(self.args.changes):
            t = {'title': 'Sync %d' % i, 'artist': 'Bench Sync %d' % i, 'album': 'Latency', 'year': 2020, 'track': 1}
            rel = 'r%02d/01.flac' % i
            v = self.write(rel, t)
            added.append(wait_visible(m.d.path(v), True))
            # New tags over the old file: the file moves in the tree.
            t2 = dict(t, album='Latency Moved')
            v2 = self.write(rel, t2)
            moved.append(wait_visible(m.d.path(v2), True))
            os.unlink(os.path.join(self.lib, CHANGE_DIR, rel))
            removed.append(wait_visible(m.d.path(v2), False))
            time.sleep(0.05)
        for name, v in (('added', added), ('moved', moved), ('removed', removed)):
            if any(x is None for x in v):
                raise RuntimeError('a change (%s) did not show within 30 s' % name)
            self.res['visible_%s_s' % name] = v
        log('%d: change visible after (median/max) add %.2f/%.2f s, tag change %.2f/%.2f s, delete %.2f/%.2f s' % (
            self.n, median(added), max(added), median(moved), max(moved), median(removed), max(removed)))


def report(results, out_dir):
    lines = ['# musicfsd sync benchmark, %s' % time.strftime('%Y-%m-%d %H:%M'), '',
             '| tracks | unchanged rescan | native `find -printf` | native os.walk+lstat | rescan vs find | '
             'target ≥ %d files/s | add → visible (median / max) | tag change → visible | delete → visible | '
             'target ≤ %.0f s |' % (TARGET_RESCAN_FILES_PER_S, TARGET_VISIBLE_S),
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in results:
        worst = max(max(r['visible_added_s']), max(r['visible_moved_s']), max(r['visible_removed_s']))
        lines.append('| %d | %.0f files/s (%.2f s) | %.0f files/s | %.0f files/s | %.2f× | %s | %.2f / %.2f s | '
                     '%.2f / %.2f s | %.2f / %.2f s | %s |' % (
                         r['tracks'], r['rescan_files_per_s'], median(r['rescan_s']), r['find_files_per_s'],
                         r['walk_files_per_s'], r['rescan_files_per_s'] / r['find_files_per_s'],
                         bf.verdict(r['rescan_files_per_s'] >= TARGET_RESCAN_FILES_PER_S),
                         median(r['visible_added_s']), max(r['visible_added_s']),
                         median(r['visible_moved_s']), max(r['visible_moved_s']),
                         median(r['visible_removed_s']), max(r['visible_removed_s']),
                         bf.verdict(worst <= TARGET_VISIBLE_S)))
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, 'sync-' + time.strftime('%Y%m%d-%H%M%S'))
    with open(stem + '.md', 'w') as f:
        f.write(text)
    with open(stem + '.json', 'w') as f:
        json.dump(results, f, indent=1)
    log('written to %s.md' % stem)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', default='10000,100000')
    p.add_argument('--rounds', type=int, default=3, help='unchanged rescans (and native walks) per size')
    p.add_argument('--changes', type=int, default=10, help='add/change/delete rounds per size')
    p.add_argument('--lib-dir', default='/var/tmp/musicfs-bench')
    p.add_argument('--out', default=os.path.join(BENCH_DIR, 'results'))
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit('needs root (FUSE mounts)')
    if not os.access(harness.DAEMON, os.X_OK):
        sys.exit('%s is not built: set MUSICFS_BUILD_ROOT' % harness.DAEMON)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, bf._on_signal)

    sizes = [int(x) for x in args.sizes.split(',')]
    os.makedirs(args.lib_dir, exist_ok=True)
    libs = {n: bf.library(args.lib_dir, n) for n in sizes}
    work = tempfile.mkdtemp(prefix='sync-', dir=args.lib_dir)
    results = []
    try:
        with harness.private_system_bus():
            for n in sizes:
                r = Run(args, n, libs[n], os.path.join(work, str(n)))
                r.go()
                results.append(r.res)
    except bf.Stop as e:
        log('stopped: %s' % e)
    finally:
        harness.safe_rmtree(work)
    if results:
        report(results, args.out)


if __name__ == '__main__':
    main()
