#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Checks the library generator the fuse, resilience and bench suites stand on: the files it makes
are real audio that ffmpeg decodes, carry the tags it meant (also when genlib wrote the FLAC and
ID3v2.3 containers itself), its renderer follows DESIGN.md D2, and bulk output is deterministic."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import genlib  # noqa: E402

if not shutil.which('ffprobe') or not shutil.which('ffmpeg'):
    print('SKIP: ffmpeg/ffprobe not installed')
    sys.exit(77)


def probe(path):
    r = subprocess.run(['ffprobe', '-v', 'error', '-print_format', 'json', '-show_format', '-show_streams',
                        os.fsencode(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    info = json.loads(r.stdout)
    tags = {}
    for src in [info['format']] + info['streams']:
        tags.update({k.lower(): v for k, v in src.get('tags', {}).items()})
    return info, tags


def decodes(path):
    r = subprocess.run(['ffmpeg', '-nostdin', '-v', 'error', '-i', os.fsencode(path), '-f', 'null', '-'],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return r.returncode == 0 and not r.stderr


class RenderTest(unittest.TestCase):

    def r(self, tags, stem='stem', ext='flac', **kw):
        return genlib.render(tags, stem, ext, **kw)

    def test_default_template(self):
        t = {'title': 'Song', 'artist': 'Band', 'album': 'Record', 'year': 1999, 'track': 3}
        self.assertEqual(self.r(t), 'Band/Record (1999)/03 - Song.flac')
        self.assertEqual(self.r(dict(t, albumartist='Leader')), 'Leader/Record (1999)/03 - Song.flac')
        self.assertEqual(self.r(t, compilation=True), 'Various Artists/Record (1999)/03 - Song.flac')
        self.assertEqual(self.r(dict(t, disc=2), multi_disc=True), 'Band/Record (1999)/2-03 - Song.flac')
        self.assertEqual(self.r(dict(t, disc=1)), 'Band/Record (1999)/03 - Song.flac')
        self.assertEqual(self.r(dict(t, year=None)), 'Band/Record/03 - Song.flac')
        self.assertEqual(self.r(dict(t, artist='AC/DC')), 'AC_DC/Record (1999)/03 - Song.flac')
        self.assertEqual(self.r(dict(t, title='  Pad\t')), 'Band/Record (1999)/03 - Pad.flac')
        self.assertEqual(self.r(dict(t, album='..')), 'Band/.. (1999)/03 - Song.flac')
        self.assertEqual(self.r(dict(t, artist='..')), 'Band/Record (1999)/03 - Song.flac'.replace('Band', '_'))
        self.assertEqual(self.r(dict(t, title='Lux Æterna')), 'Band/Record (1999)/03 - Lux Æterna.flac')

    def test_missing_tags(self):
        self.assertEqual(self.r({}, 'my take'), 'Unknown Artist/Unknown Album/my take.flac')
        self.assertEqual(self.r({'title': 'T', 'track': 5}), 'Unknown Artist/Unknown Album/05 - T.flac')
        self.assertEqual(self.r({}, os.fsdecode(b'a\xffb')), 'Unknown Artist/Unknown Album/a_b.flac')

    def test_suffixes(self):
        t = {'title': 'X', 'artist': 'A', 'album': 'B', 'track': 1}
        exp = genlib.expected_paths([{'rel': 'b.flac', 'tags': t}, {'rel': 'a.flac', 'tags': t},
                                     {'rel': 'c.flac', 'tags': t}])
        self.assertEqual(exp, {'A/B/01 - X.flac': 'a.flac', 'A/B/01 - X (2).flac': 'b.flac',
                               'A/B/01 - X (3).flac': 'c.flac'})

    def test_other_template(self):
        t = {'title': 'Song', 'artist': 'Band', 'album': 'Record', 'year': 1999, 'track': 3, 'genre': 'Jazz'}
        self.assertEqual(genlib.render(t, 's', 'mp3', template='{genre}/{artist} - {title}.{ext}'),
                         'Jazz/Band - Song.mp3')


class GenerateTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='genlib-test-')
        self.addCleanup(shutil.rmtree, self.dir)

    def test_sample(self):
        dest = os.path.join(self.dir, 'sample')
        exp = genlib.gen_sample(dest)
        self.assertEqual(genlib.load_expected(dest), exp)
        tracks = genlib.sample_tracks()
        self.assertGreaterEqual(len(tracks), 25)
        self.assertEqual(len(exp), len(tracks))
        self.assertEqual({os.path.splitext(t['rel'])[1][1:] for t in tracks}, set(genlib.FORMATS))
        want_format = {'flac': 'flac', 'mp3': 'mp3', 'ogg': 'ogg', 'opus': 'ogg', 'm4a': 'mov,mp4,m4a,3gp,3g2,mj2',
                       'wav': 'wav'}
        for t in tracks:
            path = os.path.join(dest, t['rel'])
            info, tags = probe(path)
            self.assertEqual(info['format']['format_name'], want_format[t['format']], t['rel'])
            self.assertAlmostEqual(float(info['format']['duration']), t['duration'], delta=0.1)
            for key in ('title', 'artist', 'album'):
                if t['tags'][key]:
                    self.assertEqual(tags.get(key), t['tags'][key], '%s of %s' % (key, t['rel']))
                elif t['format'] != 'wav':
                    self.assertNotIn(key, tags, t['rel'])
            if t['tags']['track']:
                self.assertEqual(int(tags['track'].split('/')[0]), t['tags']['track'], t['rel'])
            if t['tags']['compilation']:
                self.assertEqual(tags.get('compilation'), '1', t['rel'])
            self.assertTrue(decodes(path), t['rel'])
        # The awkward cases are all there.
        self.assertIn('Various Artists/Summer Hits (2010)/03 - Tide.mp3', exp)
        self.assertIn('Marlow Kane/Double Feature (2015)/2-01 - Return.flac', exp)
        self.assertIn('Quiet Static/Nowhere Sessions/01 - Static One.opus', exp)
        self.assertIn('AC_DC/High Voltage (1976)/01 - It\'s a Long Way to the Top.mp3', exp)
        self.assertIn('Unknown Artist/Unknown Album/untitled take.wav', exp)

    def test_bulk(self):
        a = os.path.join(self.dir, 'a')
        b = os.path.join(self.dir, 'b')
        exp = genlib.gen_bulk(a, 60, albums_per_artist=2, tracks_per_album=5, seed=5)
        genlib.gen_bulk(b, 60, albums_per_artist=2, tracks_per_album=5, seed=5)
        self.assertEqual(len(exp), 60)
        tracks = {t['rel']: t for t in genlib.bulk_tracks(60, 2, 5, seed=5)}
        seen_formats = set()
        for vpath, rel in exp.items():
            with open(os.path.join(a, rel), 'rb') as fa, open(os.path.join(b, rel), 'rb') as fb:
                self.assertEqual(fa.read(), fb.read(), 'bulk output is not deterministic: %s' % rel)
            t = tracks[rel]
            seen_formats.add(t['format'])
            if rel.endswith('5.flac') or rel.endswith('1.mp3'):
                path = os.path.join(a, rel)
                info, tags = probe(path)
                self.assertEqual(tags['title'], t['tags']['title'])
                self.assertEqual(tags['artist'], t['tags']['artist'])
                self.assertEqual(tags['album'], t['tags']['album'])
                self.assertEqual(int(tags['track'].split('/')[0]), t['tags']['track'])
                self.assertTrue(decodes(path), rel)
        self.assertEqual(seen_formats, {'flac', 'mp3'})
        other = genlib.bulk_tracks(60, 2, 5, seed=6)
        self.assertNotEqual([t['tags'] for t in other], [tracks[t['rel']]['tags'] for t in other])

    def test_writers(self):
        """FLAC and ID3v2.3 tags written by genlib itself, read back by ffmpeg."""
        flac_tpl, mp3_tpl = genlib.make_templates(self.dir)
        tags = {'title': 'Źródło ☃', 'artist': 'Café', 'album': 'Ünïcode', 'albumartist': 'Some One',
                'year': 2011, 'track': 7, 'track_total': 9, 'disc': 2, 'disc_total': 3, 'genre': 'Noise',
                'composer': 'Cömposer', 'compilation': True}
        for fmt in ('flac', 'mp3'):
            path = os.path.join(self.dir, 'w.' + fmt)
            genlib.write_tagged(path, fmt, tags, flac_tpl, mp3_tpl)
            info, got = probe(path)
            for key in ('title', 'artist', 'album', 'genre', 'composer'):
                self.assertEqual(got.get(key), tags[key], '%s in %s' % (key, fmt))
            self.assertEqual(got.get('album_artist', got.get('albumartist')), 'Some One', fmt)
            self.assertEqual(got.get('compilation'), '1', fmt)
            self.assertTrue(got.get('date', '').startswith('2011'), got)
            self.assertEqual(int(got['track'].split('/')[0]), 7)
            self.assertEqual(int(got['disc'].split('/')[0]), 2)
            self.assertTrue(decodes(path), fmt)
        # Raw, non-UTF-8 comment bytes end up in the file as given.
        raw = flac_tpl.render([(b'TITLE', b'Caf\xe9')])
        blocks, audio = genlib.flac_split(raw)
        self.assertEqual([t for t, _ in blocks], [genlib.FLAC_STREAMINFO, genlib.FLAC_VORBIS_COMMENT])
        self.assertIn(b'TITLE=Caf\xe9', blocks[1][1])
        self.assertEqual(raw[audio:], flac_tpl.audio)

    def test_bad(self):
        dest = os.path.join(self.dir, 'bad')
        info = genlib.gen_bad(dest, big_album_count=120)
        self.assertEqual(genlib.load_bad(dest), info)
        self.assertEqual(os.path.getsize(os.path.join(dest, 'bad/zero-byte.flac')), 0)
        self.assertLess(os.path.getsize(os.path.join(dest, 'bad/truncated.flac')), 42)
        with open(os.path.join(dest, 'bad/garbage.mp3'), 'rb') as f:
            self.assertNotIn(0xff, f.read())
        self.assertTrue(stat.S_ISFIFO(os.lstat(os.path.join(dest, 'skip/fifo.flac')).st_mode))
        self.assertFalse(os.path.exists(os.path.join(dest, 'skip/dangling.mp3')))
        self.assertTrue(os.path.islink(os.path.join(dest, 'skip/dangling.mp3')))
        self.assertTrue(os.path.samefile(os.path.join(dest, 'skip/loop/self'), os.path.join(dest, 'skip')))
        odd = info['odd']
        _, tags = probe(os.path.join(dest, odd['huge_title']))
        self.assertGreaterEqual(len(tags['title']), 1 << 20)
        with open(os.path.join(dest, odd['non_utf8_tags']), 'rb') as f:
            self.assertIn(b'Bj\xf6rk', f.read())
        name = os.fsencode(odd['non_utf8_name'])
        self.assertRaises(UnicodeDecodeError, name.decode, 'utf-8')
        self.assertTrue(os.path.isfile(os.path.join(os.fsencode(dest), name)))
        self.assertEqual(len(os.listdir(os.path.join(dest, info['big_album']['dir']))), 120)


if __name__ == '__main__':
    unittest.main(verbosity=2)
