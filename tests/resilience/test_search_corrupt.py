#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""6.5 (COVERAGE.md): the search index dies. The FTS5 index lives in the catalog (D5) and is
rebuildable from its files table. Garbage written into its shadow table (files_fts_data) while the
daemon was down is found at the next start (the catalog was not closed cleanly since: the FTS5
integrity-check runs, in the background once the library is mounted (D6), not before), logged and
rebuilt, with the catalog kept: browsing serves the whole tree, Search answers what it answered
before. The same damage done while the
daemon runs is met by the next Search, which starts rebuilding the index in the background and
answers Busy until it is done, then right again; browsing never notices, and /.search/ answers from
the rebuilt index."""

import os
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness  # noqa: E402

import dbus  # noqa: E402
import genlib  # noqa: E402

QUERIES = ('lux', 'sigur ros', 'artist:aurora', '"long way"', 'year:2010', 'sta*', 'night OR dusk')
GARBAGE = bytes(range(0x11, 0x11 + 40))
REBUILT = 'search index rebuilt from the catalog'
CHECKED = r'search index checked in [0-9.]+ s: (\w+)'
MOUNTED = 'Mounted %s with '


class SearchCorruptTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)

    def catalog(self, d):
        return os.path.join(d.cache_dir, 'catalog.db')

    def search(self, d, query):
        return [(str(p), float(s)) for p, _, _, _, s in d.bus_call('Search', 'su', query, dbus.UInt32(100))]

    def answers(self, d):
        return {q: self.search(d, q) for q in QUERIES}

    def damage(self, path):
        """Garbage over every leaf block of the index; returns how many blocks it hit."""
        con = sqlite3.connect(path, timeout=10)
        try:
            n = con.execute('UPDATE files_fts_data SET block = ? WHERE id > 10', (GARBAGE,)).rowcount
            con.commit()
        finally:
            con.close()
        self.assertGreater(n, 0, 'no index blocks to damage')
        return n

    def assertIndexBroken(self, path):
        con = sqlite3.connect('file:%s?mode=ro' % path, uri=True, timeout=10)
        try:
            with self.assertRaises(sqlite3.DatabaseError):
                con.execute("SELECT rowid FROM files_fts WHERE files_fts MATCH 'lux'").fetchall()
        finally:
            con.close()

    def assertBrowsing(self, d):
        self.assertEqual(rutil.tree_files(d.mountpoint), set(self.expected))
        for v in sorted(self.expected)[::7]:
            self.assertEqual(rutil.read_file(d.path(v)), rutil.read_file(os.path.join(self.lib, self.expected[v])), v)

    def first_run(self):
        d = self.daemon([self.lib])
        d.wait_tracks(len(self.expected))
        rutil.wait_scan_done(d)
        before = self.answers(d)
        self.assertTrue(all(before[q] for q in QUERIES), before)
        return d, before

    def test_damaged_while_down(self):
        d, before = self.first_run()
        self.assertDaemonStops(d)
        self.damage(self.catalog(d))
        self.assertIndexBroken(self.catalog(d))

        d.start(timeout=10.0)
        checked = rutil.wait_log(d, CHECKED)
        self.assertEqual(checked.group(1), 'damaged')
        log = d.log()
        self.assertIn(REBUILT, log)
        self.assertIn('search index is damaged', log)
        # The check runs after the mount, off the startup path (D6): every word of it comes after
        # the line that says the library is mounted.
        mounted = log.find(MOUNTED % d.mountpoint)
        self.assertGreaterEqual(mounted, 0, log)
        for line in ('search index is damaged', REBUILT, checked.group(0)):
            self.assertGreater(log.find(line), mounted, '%r before the mount:\n%s' % (line, log))
        self.assertNotIn('corrupt-', d.log(), 'the whole catalog was thrown away for a damaged index')
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.expected))
        self.assertBrowsing(d)
        self.assertEqual(self.answers(d), before)
        rutil.wait_scan_done(d)
        self.assertDaemonStops(d)

        # Repaired for good: the next start has nothing to rebuild.
        d.start(timeout=10.0)
        self.assertEqual(self.answers(d), before)
        self.assertNotIn(REBUILT, d.log())
        self.assertDaemonStops(d)
        self.assertNotRegex(d.log(), CHECKED, 'a clean stop leaves nothing to check')

    def test_damaged_while_running(self):
        d, before = self.first_run()
        self.damage(self.catalog(d))
        # Browsing does not read the index at all.
        self.assertBrowsing(d)
        self.assertNotIn(REBUILT, d.log())
        # The first search meets the damage and starts a rebuild in the background: Busy until it
        # is over, then the right answers.
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            self.search(d, 'lux')
        self.assertEqual(c.exception.get_dbus_name(), 'org.musicfs.Error.Busy')
        self.assertIn('being rebuilt', c.exception.get_dbus_message())
        rutil.wait_log(d, REBUILT)
        self.assertEqual(self.answers(d), before)
        self.assertIn('search hit a damaged index', d.log())
        self.assertEqual(d.log().count(REBUILT), 1, 'rebuilt more than once')
        self.assertBrowsing(d)
        # And /.search/ in the mount answers from the rebuilt index too.
        names = os.listdir(d.path('.search', 'lux'))
        self.assertEqual(len(names), len(before['lux']))
        self.assertTrue(d.running())
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
