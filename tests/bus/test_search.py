#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Search(query, limit) against the built daemon on the genlib sample library (real FLAC, MP3, Ogg,
Opus, M4A and WAV files tagged by ffmpeg, with diacritics): results carry the virtual path of a
file that exists in the mount, the tags, and a score, best first; the query language end to end;
InvalidArgs with the parser's reason; limits; musicfsctl search as a table and as JSON; and the
index following a rescan that changes tags."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import buslib  # noqa: E402
import harness  # noqa: E402

harness.require_fuse()
import dbus  # noqa: E402
import genlib  # noqa: E402

ERR = buslib.ERR
CTL = os.environ.get('MUSICFS_CTL') or os.path.join(harness.BUILD_ROOT, 'client', 'musicfsctl')


def ctl(*args):
    r = subprocess.run([CTL] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, cwd='/')
    return r.returncode, r.stdout.decode('utf-8', 'replace'), r.stderr.decode('utf-8', 'replace')


class SearchTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)       # {virtual path: origin rel path}
        # The tags each virtual file was made with, to check results against.
        cls.tags = {}
        by_rel = {t['rel']: t['tags'] for t in genlib.sample_tracks()}
        for vpath, rel in cls.expected.items():
            cls.tags[vpath] = by_rel[rel]

    def started(self, lib=None):
        d = self.daemon([lib or self.lib])
        d.wait_tracks(len(self.expected))
        return d

    def search(self, d, query, limit=100):
        return [(str(p), str(ar), str(al), str(t), float(s))
                for p, ar, al, t, s in d.bus_call('Search', 'su', query, dbus.UInt32(limit))]

    def titles(self, d, query, limit=100):
        return sorted(r[3] for r in self.search(d, query, limit))

    def want(self, predicate):
        return sorted((t['title'] or '').strip() for t in self.tags.values() if predicate(t))

    def assertDBusError(self, name, fn, *args):
        with self.assertRaises(dbus.exceptions.DBusException) as c:
            fn(*args)
        self.assertEqual(c.exception.get_dbus_name(), name, str(c.exception))
        msg = c.exception.get_dbus_message()
        self.assertTrue(msg.endswith('.'), msg)
        self.assertLess(len(msg), 1000, 'the error repeats a huge argument')
        return msg

    def test_results_are_files_of_the_mount(self):
        d = self.started()
        res = self.search(d, 'lux')
        self.assertEqual(sorted(r[3] for r in res), ['Atmosphères', 'Lux Æterna'])
        for path, artist, album, title, score in res:
            self.assertIn(path, self.expected, 'a virtual path of the tree')
            self.assertFalse(path.startswith('/'), path)
            self.assertEqual(artist, 'György Ligeti')
            self.assertEqual(album, 'Lux Æterna')
            self.assertGreater(score, 0)
            # The path leads to the file's bytes in the mount.
            with open(d.path(path), 'rb') as f, open(os.path.join(self.lib, self.expected[path]), 'rb') as g:
                self.assertEqual(f.read(), g.read())
        # Best first; the title match ranks above the album-only one.
        self.assertEqual(res[0][3], 'Lux Æterna')
        self.assertGreaterEqual(res[0][4], res[1][4])
        self.assertDaemonStops(d)

    def test_query_language(self):
        d = self.started()
        # Diacritics-insensitive, both ways.
        self.assertEqual(self.titles(d, 'gyorgy'), self.want(lambda t: t['artist'] == 'György Ligeti'))
        self.assertEqual(self.titles(d, 'sigur ros'), ['Starálfur', 'Svefn-g-englar'])
        self.assertEqual(self.titles(d, 'agaetis'), [])     # "æ" is a letter of its own, not "ae"
        self.assertEqual(self.titles(d, 'atmospheres'), ['Atmosphères'])
        self.assertEqual(self.titles(d, 'STARALFUR'), ['Starálfur'])
        # Fields: artist matches the album artist too; album, title, genre, composer.
        self.assertEqual(self.titles(d, 'artist:aurora'),
                         self.want(lambda t: 'Aurora' in (t['artist'] or '') + (t['albumartist'] or '')))
        self.assertEqual(self.titles(d, 'title:night'), ['Night', 'Night Drive'])
        self.assertEqual(self.titles(d, 'album:night'), ['Night Drive', 'Spaces Around'])
        self.assertEqual(self.titles(d, 'genre:rock'), ["It's a Long Way to the Top", 'T.N.T.'])
        self.assertEqual(self.titles(d, 'composer:ligeti'), ['Atmosphères', 'Lux Æterna'])
        # Phrases, prefixes, years, operators.
        self.assertEqual(self.titles(d, '"long way"'), ["It's a Long Way to the Top"])
        self.assertEqual(self.titles(d, '"way long"'), [])
        self.assertEqual(self.titles(d, 'sta*'), ['Starálfur', 'Static One', 'Static Two'])
        self.assertEqual(self.titles(d, 'year:1999'), ['Starálfur', 'Svefn-g-englar'])
        self.assertEqual(self.titles(d, 'year:1960..1980'), self.want(lambda t: t['year'] and 1960 <= t['year'] <= 1980))
        self.assertEqual(self.titles(d, 'aurora year:2004..'), ['Breeze', 'Gale'])
        self.assertEqual(self.titles(d, 'night OR dusk'), ['Dusk', 'Night', 'Night Drive', 'Spaces Around'])
        self.assertEqual(self.titles(d, 'night NOT drive'), ['Night'])
        self.assertEqual(self.titles(d, 'ac/dc'), ["It's a Long Way to the Top", 'T.N.T.'])
        self.assertEqual(self.titles(d, 'nothing-like-this'), [])
        self.assertDaemonStops(d)

    def test_bad_queries_and_limits(self):
        d = self.started()
        for query, reason in (('', 'empty'), ('   ', 'empty'), ('colour:red', 'Unknown field "colour"'),
                              ('say "hi', 'never closed'), ('NOT rock', 'NOT needs a word before'),
                              ('rock OR', 'OR needs a word after'), ('(rock', 'never closed'),
                              ('year:1989..1980', 'backwards'), ('x' * 1025, 'longer than 1024'),
                              (' '.join(['w'] * 33), 'more than 32'), ('a OR year:1999', 'ANDed')):
            msg = self.assertDBusError(ERR + 'InvalidArgs', self.search, d, query)
            self.assertIn(reason, msg, query)
        for limit in (0, 10001, 0xffffffff):
            msg = self.assertDBusError(ERR + 'InvalidArgs', self.search, d, 'rock', limit)
            self.assertIn('out of range', msg)
        # Limits bound the answer; every limit in range works.
        everything = self.search(d, 'year:1..9999', 10000)
        self.assertEqual(len(everything), len([t for t in self.tags.values() if t['year']]))
        self.assertEqual(len(self.search(d, 'year:1..9999', 1)), 1)
        self.assertEqual(len(self.search(d, 'aurora', 3)), 3)
        # After all of that the daemon answers the next call.
        self.assertTrue(d.running())
        self.assertEqual(self.titles(d, 'dusk'), ['Dusk'])
        self.assertDaemonStops(d)

    def test_musicfsctl_search(self):
        d = self.started()
        rc, out, err = ctl('search', 'ligeti')
        self.assertEqual((rc, err), (0, ''), out)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ['ARTIST', 'ALBUM', 'TITLE', 'PATH'])
        self.assertEqual(len(lines), 3, out)
        self.assertIn('Lux Æterna', out)
        rc, out, err = ctl('search', '--json', '--limit', '1', 'composer:ligeti')
        self.assertEqual((rc, err), (0, ''))
        res = json.loads(out)
        self.assertEqual(len(res), 1)
        self.assertEqual(set(res[0]), {'path', 'artist', 'album', 'title', 'score'})
        self.assertIn(res[0]['path'], self.expected)
        rc, out, err = ctl('search', 'colour:red')
        self.assertEqual(rc, 1)
        self.assertIn('Unknown field "colour"', err)
        self.assertEqual(err.count('\n'), 1, err)
        rc, out, err = ctl('search', 'zzzz-nothing')
        self.assertEqual((rc, out), (0, 'No tracks match.\n'))
        self.assertDaemonStops(d)

    def test_surfaces_agree(self):
        """Search over D-Bus, musicfsctl search --json and /.search/<query>/ give the same ranked
        answer, in the same order, for the whole query language. A bulk library next to the sample
        makes queries with hundreds of hits, so the answer is cut at the limit in the middle of
        equal scores: the order of ties has to be the same on every surface too. And a limit past
        the number of candidates the catalog scores does not reorder the top."""
        work = self.tempdir()
        bulk = os.path.join(work, 'bulk')
        templates = genlib.make_templates(work)
        n_bulk = 2100   # more than the candidates a ranked search scores (CATALOG_SEARCH_CAP_DEFAULT)
        paths = set(self.expected) | set(genlib.gen_bulk(bulk, n_bulk, templates=templates))
        d = self.daemon([self.lib, bulk])
        d.wait_tracks(len(paths))
        d.wait_scan_done()
        limit = 200     # /.search/ answers FS_SEARCH_RESULTS_MAX (fs-search.h): ask the others the same

        def from_bus(query, n=limit):
            return self.search(d, query, n)

        def from_ctl(query, *options):
            rc, out, err = ctl('search', '--json', *options, query)
            self.assertEqual((rc, err), (0, ''), query)
            return [r['path'] for r in json.loads(out)]

        def from_mount(query):
            names = os.listdir(d.path('.search', query))
            ranks = sorted((int(n.split(' - ', 1)[0]), n) for n in names)
            self.assertEqual([r for r, _ in ranks], list(range(1, len(names) + 1)), query)
            targets = [os.readlink(d.path('.search', query, n)) for _, n in ranks]
            self.assertTrue(all(t.startswith('../../') for t in targets), targets)
            return [t[len('../../'):] for t in targets]

        queries = (
            # bare words, diacritics folded both ways
            'lux', 'aurora', 'gyorgy', 'sigur ros', 'cafe', 'uber', 'zrodło', 'ñandú', 'STARALFUR',
            # fields, phrases, prefixes
            'artist:aurora', 'title:night', 'album:night', 'genre:rock', 'composer:ligeti',
            '"long way"', 'title:"track 1"', 'sta*', 've*', 'artist:qu*',
            # years: alone (no score at all: every hit ties), a range, with words
            'year:1999', 'year:1960..1980', 'year:2004..', 'aurora year:2004..', 'track year:1970..1975',
            # operators
            'night OR dusk', 'amber OR jade', 'night NOT drive', 'track NOT amber', '(amber OR jade) NOT velvet',
            # hundreds of hits: cut at the limit among equal scores
            'track', 'track 1', 'amber',
        )
        tied = cut = 0
        for q in queries:
            res = from_bus(q)
            bus = [r[0] for r in res]
            scores = [r[4] for r in res]
            self.assertTrue(bus, 'no hits for %s: the query tests nothing' % q)
            self.assertEqual(scores, sorted(scores, reverse=True), q)
            self.assertEqual(len(set(bus)), len(bus), q)
            self.assertLessEqual(set(bus), paths, q)
            self.assertEqual(from_ctl(q, '--limit', str(limit)), bus, 'musicfsctl: %s' % q)
            self.assertEqual(from_mount(q), bus, '/.search: %s' % q)
            # A smaller limit is the start of the same answer (musicfsctl's default, 50, and 7).
            self.assertEqual(from_ctl(q), bus[:50], 'musicfsctl default limit: %s' % q)
            self.assertEqual([r[0] for r in from_bus(q, 7)], bus[:7], 'limit 7: %s' % q)
            tied += any(a == b for a, b in zip(scores, scores[1:]))
            cut += len(bus) == limit and scores[-1] == scores[-2]
        # The queries did what they are here for: they found things, tied and were cut among ties.
        self.assertGreater(tied, 5)
        self.assertGreaterEqual(cut, 2)

        # "track" is in every bulk title. Three files that come later (row ids above every scored
        # candidate) with it three times in theirs would outscore all the others, were they scored:
        # a limit of 10000 must still begin with what 200 and /.search/ answer, and put them after.
        os.makedirs(os.path.join(bulk, 'zz'))
        for i in range(3):
            genlib.write_tagged(os.path.join(bulk, 'zz', '%d.flac' % i), 'flac',
                                {'title': 'Track Track Track %d' % i, 'artist': 'Late Comer', 'album': 'Later',
                                 'track': i + 1}, *templates)
        d.bus_call('Rescan', 's', '')
        d.wait_tracks(len(paths) + 3)
        top = [r[0] for r in from_bus('track')]
        everything = from_bus('track', 10000)
        self.assertEqual([r[0] for r in everything][:limit], top)
        self.assertEqual(from_ctl('track', '--limit', '10000')[:limit], top)
        self.assertEqual(from_mount('track'), top)
        self.assertEqual(len(everything), n_bulk + 3)
        late = [i for i, r in enumerate(everything) if r[1] == 'Late Comer']
        self.assertEqual(len(late), 3)
        self.assertGreater(min(late), limit)
        scores = [r[4] for r in everything]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertDaemonStops(d)

    def test_index_follows_rescan(self):
        """Tags changed on the origin reach the index with the rescan that reads them."""
        work = self.tempdir()
        lib = os.path.join(work, 'lib')
        shutil.copytree(self.lib, lib)
        d = self.started(lib)
        self.assertEqual(self.titles(d, 'birdsong'), ['Birdsong'])
        rel = self.expected[next(v for v, t in self.tags.items() if t['title'] == 'Birdsong')]
        genlib.encode(os.path.join(lib, rel), 'wav', dict(self.tags[next(v for v, t in self.tags.items()
                                                                       if t['title'] == 'Birdsong')],
                                                          title='Nightingale'))
        d.bus_call('Rescan', 's', '')
        harness.wait_until(lambda: self.titles(d, 'nightingale') == ['Nightingale'], 30,
                           message='the new title in the index')
        self.assertEqual(self.titles(d, 'birdsong'), [])
        path = self.search(d, 'nightingale')[0][0]
        self.assertTrue(os.path.exists(d.path(path)), path)
        self.assertDaemonStops(d)


if __name__ == '__main__':
    harness.main()
