#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Restart to mounted at a million tracks (DESIGN.md D6: "mounts from the catalog in well under a
second at any library size"): musicfsd started on a catalog it closed cleanly, so that it mounts
from the tree snapshot its stop wrote, side by side in one run with the same daemon made to build
the tree from the catalog rows (the snapshot removed before the start: what every start did
before snapshots). Rounds interleave the two, the order rotating. Each start is timed from exec to
READY=1 (the mount is up and served), with the daemon's RSS at READY; each stop is timed to the
exit (it writes the snapshot). Every start waits for its rescan to end (so a stop never cuts one
short, and the catalog stays the same), which takes most of a round at 1M.

  meson setup build-rel -Dbuildtype=release -Dtests=false && ninja -C build-rel
  sudo MUSICFS_BUILD_ROOT=$PWD/build-rel /usr/bin/python3 bench/bench_restart.py [--rows 1000000]

The data is bench_search_daemon.py's (/var/tmp/musicfs-bench/search-daemon-<N>/: 1M placeholder
files and a catalog whose rows match them, generated once). Output: a markdown table on stdout and
bench/results/restart-<date>.md (+ .json).
"""

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import bench_search_daemon as bsd  # noqa: E402
import bench_foundation as bf  # noqa: E402 - sets up the paths to tests/lib
from bench_foundation import harness, log  # noqa: E402

MOUNTED = re.compile(r'Mounted \S+ with (\d+) tracks from the catalog( \(its tree snapshot\))? in (\d+) ms '
                     r'\((\d+) ms CPU\)')
MODES = ('snapshot', 'catalog')


def one_start(lib, cache, workdir, rows, mode, timeout):
    snapshot = os.path.join(cache, 'tree.snapshot')
    if mode == 'catalog' and os.path.exists(snapshot):
        os.unlink(snapshot)
    elif mode == 'snapshot' and not os.path.exists(snapshot):
        raise RuntimeError('no tree snapshot before a start from one: did the last stop write it?')
    served = bsd.Served(lib, cache, workdir, rows)
    try:
        served.start(timeout)
        m = MOUNTED.search(served.m.d.log())
        if not m or int(m.group(1)) != rows or bool(m.group(2)) != (mode == 'snapshot'):
            raise RuntimeError('%s start: the daemon did not mount as expected: %s' % (
                mode, m.group(0) if m else served.m.d.describe(20)))
        served.res['mounted_ms'], served.res['mounted_cpu_ms'] = int(m.group(3)), int(m.group(4))
        served.stop()
        served.res['snapshot_bytes'] = os.path.getsize(snapshot) if os.path.exists(snapshot) else 0
        return served.res
    finally:
        served.cleanup()


def med(v):
    return statistics.median(v) if v else float('nan')


def report(res, out_dir):
    lines = ['# MusicFS restart to mounted at %d tracks, %s' % (res['rows'], res['date']), '',
             '- daemon: %s' % res['daemon_path'],
             '- load average before %s, after %s' % (' '.join('%.2f' % x for x in res['load_before']),
                                                     ' '.join('%.2f' % x for x in res['load_after'])),
             '- %d rounds, the two starts of a round in rotating order' % res['rounds'], '',
             '| start | exec to READY=1 (median; per start) | the daemon\'s own figure: mount in (CPU) | '
             'RSS at READY (peak) | stop, with the snapshot written | snapshot file |',
             '|---|---|---|---|---|---|']
    for mode in MODES:
        rs = res['starts'][mode]
        if not rs:
            continue
        lines.append('| %s | **%.2f s** (%s) | %d ms (%d ms) | %.0f MiB (%.0f) | %.2f s | %.0f MiB |' % (
            'from the tree snapshot' if mode == 'snapshot' else 'tree built from the catalog rows',
            med([r['ready_s'] for r in rs]), ', '.join('%.2f' % r['ready_s'] for r in rs),
            med([r['mounted_ms'] for r in rs]), med([r['mounted_cpu_ms'] for r in rs]),
            med([r['ready_status'].get('VmRSS', 0) for r in rs]) / 1024,
            med([r['ready_status'].get('VmHWM', 0) for r in rs]) / 1024,
            med([r['stop_s'] for r in rs]), med([r['snapshot_bytes'] for r in rs]) / 2**20))
    s, c = res['starts']['snapshot'], res['starts']['catalog']
    if s and c:
        lines += ['', 'READY from the snapshot / READY building from the catalog: %.2f× (target: well under 1 s '
                  'at any size: %s)' % (med([r['ready_s'] for r in s]) / med([r['ready_s'] for r in c]),
                                        'met' if med([r['ready_s'] for r in s]) < 1.0 else 'NOT met')]
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, 'restart-%s' % time.strftime('%Y-%m-%d-%H%M'))
    with open(stem + '.md', 'w') as f:
        f.write(text)
    with open(stem + '.json', 'w') as f:
        json.dump(res, f, indent=1, default=str)
    log('written %s.md' % stem)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rows', type=int, default=1000000)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--data-dir', default='/var/tmp/musicfs-bench')
    ap.add_argument('--out', default=os.path.join(BENCH_DIR, 'results'))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('needs root (FUSE mounts)')
    driver = os.path.join(harness.BUILD_ROOT, 'bench', 'search-bench')
    for exe in (harness.DAEMON, driver):
        if not os.access(exe, os.X_OK):
            sys.exit('%s is not built: set MUSICFS_BUILD_ROOT' % exe)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, bf._on_signal)

    root = os.path.join(args.data_dir, 'search-daemon-%d' % args.rows)
    lib, cache, _ = bsd.make_data(root, args.rows, driver, False)
    timeout = max(120.0, args.rows / 5000.0)
    res = {'rows': args.rows, 'rounds': args.rounds, 'date': time.strftime('%Y-%m-%d %H:%M %Z'),
           'daemon_path': harness.DAEMON, 'load_before': os.getloadavg(), 'starts': {m: [] for m in MODES}}
    work = tempfile.mkdtemp(prefix='restart-', dir=args.data_dir)
    try:
        with harness.private_system_bus():
            # Unmeasured: a start that leaves a clean catalog and a snapshot whatever came before
            # (a fresh catalog, another build of the daemon, an unclean stop).
            log('priming start on %d tracks' % args.rows)
            one_start(lib, cache, os.path.join(work, 'prime'), args.rows, 'catalog', timeout)
            for r in range(args.rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    st = one_start(lib, cache, os.path.join(work, '%s-%d' % (mode, r)), args.rows, mode, timeout)
                    res['starts'][mode].append(st)
                    log('round %d %-8s READY %.2f s (daemon: %d ms, %d ms CPU), RSS %d MiB, stop %.2f s' % (
                        r + 1, mode, st['ready_s'], st['mounted_ms'], st['mounted_cpu_ms'],
                        st['ready_status'].get('VmRSS', 0) // 1024, st['stop_s']))
    except bf.Stop as e:
        log('stopped by %s' % e)
    finally:
        harness.safe_rmtree(work)
    res['load_after'] = os.getloadavg()
    report(res, args.out)


if __name__ == '__main__':
    main()
