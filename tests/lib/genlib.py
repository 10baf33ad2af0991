#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Generates music libraries of real, tagged audio files for the tests, the quick start and the
benchmarks.

  genlib.py sample DEST                  ~28 tracks in six formats made by ffmpeg, with the awkward
                                         cases of DESIGN.md D2, plus DEST/.expected.json
  genlib.py bulk DEST --count N          N small tagged tracks, fast: one FLAC and one MP3 are encoded
                                         once, every copy gets its own tags by rewriting the container
  genlib.py track PATH --title T ...     one file with the given tags
  genlib.py bad DEST                     files that must not hurt the daemon, plus DEST/.bad.json

.expected.json maps every virtual path the default template renders (DESIGN.md D2) to the origin
path it comes from, relative to DEST. Paths that are not valid UTF-8 are stored with Python's
surrogateescape convention (os.fsencode() gives the bytes back).
"""

import argparse
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time

DEFAULT_TEMPLATE = '{albumartist}/{album} ({year})/{disc}{track:02} - {title}.{ext}'
FORMATS = ('flac', 'mp3', 'ogg', 'opus', 'm4a', 'wav')
EXPECTED_NAME = '.expected.json'
BAD_NAME = '.bad.json'
NAME_MAX = 255


# --------------------------------------------------------------------------------------------------
# Rendering virtual paths the way DESIGN.md D2 and daemon/tree/template.h describe them.

_FIELD = re.compile(r'\{([a-z]+)(?::(\d+))?\}')


def sanitize_segment(s):
    """'/', NUL and control characters become '_', invalid UTF-8 bytes (surrogate escapes) become
    '_', white space around is trimmed, '', '.' and '..' become '_'."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '/' or o < 0x20 or o == 0x7f or 0xdc80 <= o <= 0xdcff:
            out.append('_')
        else:
            out.append(ch)
    r = ''.join(out).strip()
    if r in ('', '.', '..'):
        return '_'
    return r


def _tag(tags, key):
    v = tags.get(key)
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode('utf-8', 'replace')
    v = str(v).strip()
    return v or None


def render(tags, stem, ext, multi_disc=False, compilation=False, template=DEFAULT_TEMPLATE):
    """Virtual path (str) of one track. tags: dict with title, artist, album, albumartist, year,
    track, disc (ints or None)."""
    def field(name, width):
        if name == 'albumartist':
            if compilation:
                return 'Various Artists'
            return _tag(tags, 'albumartist') or _tag(tags, 'artist') or 'Unknown Artist'
        if name == 'artist':
            return _tag(tags, 'artist') or 'Unknown Artist'
        if name == 'album':
            return _tag(tags, 'album') or 'Unknown Album'
        if name == 'title':
            return _tag(tags, 'title') or stem
        if name in ('genre', 'composer'):
            return _tag(tags, name) or ''
        if name == 'ext':
            return ext
        if name == 'year':
            y = tags.get('year') or 0
            return str(y) if y else ''
        if name == 'track':
            t = tags.get('track') or 0
            return str(t).zfill(width or 0) if t else ''
        if name == 'disc':
            d = tags.get('disc') or 0
            return '%d-' % d if multi_disc and d else ''
        raise ValueError('unknown field {%s}' % name)

    segments = []
    for seg in template.split('/'):
        leading_empty = True
        pieces = []
        pos = 0
        for m in _FIELD.finditer(seg):
            lit = seg[pos:m.start()]
            if lit:
                # A separator that follows only empty fields at the start of a segment ("{track:02} - "
                # without a track number) goes with them.
                if leading_empty and pieces == [] and pos > 0:
                    lit = lit.lstrip(' -_.')
                if lit:
                    pieces.append(lit)
                    leading_empty = False
            v = field(m.group(1), int(m.group(2)) if m.group(2) else None)
            # Field values are sanitised on their own, so that a '/' in a tag never splits a segment.
            v = ''.join('_' if (c == '/' or ord(c) < 0x20 or ord(c) == 0x7f) else c for c in v)
            if v:
                pieces.append(v)
                leading_empty = False
            pos = m.end()
        tail = seg[pos:]
        if leading_empty and pieces == [] and pos > 0:
            tail = tail.lstrip(' -_.')
        pieces.append(tail)
        text = ''.join(pieces)
        text = re.sub(r'\s*(\(\s*\)|\[\s*\])', '', text)
        segments.append(sanitize_segment(text))
    return '/'.join(segments)


def album_key(tags):
    return _tag(tags, 'album') or 'Unknown Album'


def expected_paths(tracks, template=DEFAULT_TEMPLATE):
    """tracks: list of dicts {rel, tags, ext, parsed}. Returns {virtual: rel}, applying the album-level
    rules (multi-disc, compilation) and D3 " (2)" suffixes in rel order."""
    albums = {}
    for t in tracks:
        if not t.get('parsed', True):
            continue
        k = album_key(t['tags'])
        a = albums.setdefault(k, {'discs': set(), 'disc_total': 0, 'compilation': False})
        if t['tags'].get('disc'):
            a['discs'].add(t['tags']['disc'])
        a['disc_total'] = max(a['disc_total'], t['tags'].get('disc_total') or 0)
        a['compilation'] |= bool(t['tags'].get('compilation'))
    out = {}
    for t in sorted(tracks, key=lambda t: t['rel']):
        stem, ext = os.path.splitext(os.path.basename(t['rel']))
        ext = ext[1:].lower()
        if t.get('parsed', True):
            a = albums[album_key(t['tags'])]
            v = render(t['tags'], stem, ext, len(a['discs']) > 1 or a['disc_total'] > 1,
                       a['compilation'], template)
        else:
            v = render({}, stem, ext, False, False, template)
        if v in out:
            base, dot, e = v.rpartition('.')
            n = 2
            while '%s (%d).%s' % (base, n, e) in out:
                n += 1
            v = '%s (%d).%s' % (base, n, e)
        out[v] = t['rel']
    return out


def write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8', errors='surrogateescape') as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=True)
    os.rename(tmp, path)


def load_expected(dest):
    """{virtual path: origin rel_path} written by `sample` or `bulk`."""
    with open(os.path.join(dest, EXPECTED_NAME), encoding='utf-8') as f:
        return json.load(f)


def load_bad(dest):
    with open(os.path.join(dest, BAD_NAME), encoding='utf-8') as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# Encoding with ffmpeg.

_CODEC = {
    'flac': ['-c:a', 'flac'],
    'mp3': ['-c:a', 'libmp3lame', '-id3v2_version', '3', '-write_id3v1', '0'],
    'ogg': ['-c:a', 'libvorbis'],
    'opus': ['-c:a', 'libopus'],
    'm4a': ['-c:a', 'aac'],
    'wav': ['-c:a', 'pcm_s16le'],
}


def _ffmpeg_metadata(tags):
    md = []

    def put(k, v):
        if v is not None and v != '' and v != 0:
            md.extend(['-metadata', '%s=%s' % (k, v)])
    put('title', tags.get('title'))
    put('artist', tags.get('artist'))
    put('album', tags.get('album'))
    put('album_artist', tags.get('albumartist'))
    put('date', tags.get('year'))
    put('genre', tags.get('genre'))
    put('composer', tags.get('composer'))
    if tags.get('track'):
        put('track', '%d/%d' % (tags['track'], tags['track_total']) if tags.get('track_total')
            else tags['track'])
    if tags.get('disc'):
        put('disc', '%d/%d' % (tags['disc'], tags['disc_total']) if tags.get('disc_total')
            else tags['disc'])
    if tags.get('compilation'):
        put('compilation', '1')
    return md


def encode(path, fmt, tags=None, duration=1.0, frequency=440, sample_rate=44100, faststart=False):
    """Encodes a sine tone into path with the given tags (dict as in render())."""
    if fmt not in _CODEC:
        raise ValueError('unknown format %s' % fmt)
    if fmt == 'opus':
        sample_rate = 48000
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cmd = ['ffmpeg', '-nostdin', '-hide_banner', '-loglevel', 'error', '-y',
           '-f', 'lavfi', '-i', 'sine=frequency=%d:sample_rate=%d:duration=%s' % (frequency, sample_rate, duration),
           '-map_metadata', '-1', '-fflags', '+bitexact', '-flags:a', '+bitexact']
    cmd += _CODEC[fmt]
    cmd += _ffmpeg_metadata(tags or {})
    if fmt == 'm4a' and faststart:
        cmd += ['-movflags', '+faststart']
    cmd += ['-f', {'m4a': 'ipod', 'ogg': 'ogg', 'opus': 'opus'}.get(fmt, fmt), os.fsencode(path)]
    subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------------------------------
# Container editing: FLAC metadata blocks and ID3v2.3 tags written directly, for speed (bulk) and
# for bytes ffmpeg would never write (bad input).

FLAC_STREAMINFO = 0
FLAC_PADDING = 1
FLAC_VORBIS_COMMENT = 4


def flac_split(data):
    """Returns (blocks, audio_offset): blocks is a list of (type, body bytes)."""
    if data[:4] != b'fLaC':
        raise ValueError('not a FLAC file')
    pos = 4
    blocks = []
    while True:
        hdr = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 4], 'big')
        blocks.append((hdr & 0x7f, data[pos + 4:pos + 4 + length]))
        pos += 4 + length
        if hdr & 0x80:
            return blocks, pos


def vorbis_comment_body(comments, vendor=b'musicfs-genlib'):
    """comments: list of (key, value) as str or bytes; bytes are written raw."""
    parts = [struct.pack('<I', len(vendor)), vendor, struct.pack('<I', len(comments))]
    for k, v in comments:
        k = k if isinstance(k, bytes) else k.encode('ascii')
        v = v if isinstance(v, bytes) else str(v).encode('utf-8')
        entry = k + b'=' + v
        parts.append(struct.pack('<I', len(entry)))
        parts.append(entry)
    return b''.join(parts)


def vorbis_comments_from_tags(tags):
    c = []
    for key, name in (('title', 'TITLE'), ('artist', 'ARTIST'), ('album', 'ALBUM'),
                      ('albumartist', 'ALBUMARTIST'), ('genre', 'GENRE'), ('composer', 'COMPOSER')):
        if tags.get(key) not in (None, ''):
            c.append((name, tags[key]))
    if tags.get('year'):
        c.append(('DATE', str(tags['year'])))
    if tags.get('track'):
        c.append(('TRACKNUMBER', str(tags['track'])))
        if tags.get('track_total'):
            c.append(('TRACKTOTAL', str(tags['track_total'])))
    if tags.get('disc'):
        c.append(('DISCNUMBER', str(tags['disc'])))
        if tags.get('disc_total'):
            c.append(('DISCTOTAL', str(tags['disc_total'])))
    if tags.get('compilation'):
        c.append(('COMPILATION', '1'))
    return c


def flac_header(streaminfo, comments, padding=0):
    """The bytes before the audio frames: STREAMINFO kept, a new VORBIS_COMMENT, optional PADDING."""
    blocks = [(FLAC_STREAMINFO, streaminfo), (FLAC_VORBIS_COMMENT, vorbis_comment_body(comments))]
    if padding:
        blocks.append((FLAC_PADDING, bytes(padding)))
    out = [b'fLaC']
    for i, (t, body) in enumerate(blocks):
        if len(body) >= 1 << 24:
            raise ValueError('FLAC metadata block too large')
        last = 0x80 if i == len(blocks) - 1 else 0
        out.append(bytes([last | t]) + len(body).to_bytes(3, 'big'))
        out.append(body)
    return b''.join(out)


class FlacTemplate:
    """One encoded FLAC whose tags are replaced on every copy."""

    def __init__(self, data):
        blocks, audio = flac_split(data)
        self.streaminfo = next(b for t, b in blocks if t == FLAC_STREAMINFO)
        self.audio = data[audio:]

    def render(self, comments, padding=0):
        return flac_header(self.streaminfo, comments, padding) + self.audio


def _synchsafe(n):
    return bytes(((n >> 21) & 0x7f, (n >> 14) & 0x7f, (n >> 7) & 0x7f, n & 0x7f))


def _id3_text(s):
    try:
        return b'\x00' + s.encode('latin-1')
    except UnicodeEncodeError:
        return b'\x01' + s.encode('utf-16')   # with BOM, as ID3v2.3 wants


def id3v23_frame(fid, payload):
    return fid.encode('ascii') + struct.pack('>I', len(payload)) + b'\x00\x00' + payload


def id3v23_tag(tags, padding=256):
    frames = []
    for key, fid in (('title', 'TIT2'), ('artist', 'TPE1'), ('album', 'TALB'),
                     ('albumartist', 'TPE2'), ('genre', 'TCON'), ('composer', 'TCOM')):
        if tags.get(key) not in (None, ''):
            frames.append(id3v23_frame(fid, _id3_text(str(tags[key]))))
    if tags.get('year'):
        frames.append(id3v23_frame('TYER', _id3_text(str(tags['year']))))
    if tags.get('track'):
        t = str(tags['track']) + ('/%d' % tags['track_total'] if tags.get('track_total') else '')
        frames.append(id3v23_frame('TRCK', _id3_text(t)))
    if tags.get('disc'):
        d = str(tags['disc']) + ('/%d' % tags['disc_total'] if tags.get('disc_total') else '')
        frames.append(id3v23_frame('TPOS', _id3_text(d)))
    if tags.get('compilation'):
        # ffmpeg (and so the daemon's tag reader) knows a compilation by TXXX:compilation.
        frames.append(id3v23_frame('TXXX', b'\x00compilation\x001'))
    body = b''.join(frames) + bytes(padding)
    return b'ID3\x03\x00\x00' + _synchsafe(len(body)) + body


def id3_strip(data):
    """The MP3 frames after any ID3v2 tag."""
    if data[:3] != b'ID3':
        return data
    size = 0
    for b in data[6:10]:
        size = (size << 7) | (b & 0x7f)
    end = 10 + size + (10 if data[5] & 0x10 else 0)
    return data[end:]


class Mp3Template:
    def __init__(self, data):
        self.audio = id3_strip(data)

    def render(self, tags):
        return id3v23_tag(tags) + self.audio


def make_templates(workdir, duration=1.0, sample_rate=8000):
    """Encodes the FLAC and MP3 that every bulk copy starts from."""
    flac = os.path.join(workdir, 'template.flac')
    mp3 = os.path.join(workdir, 'template.mp3')
    for path, fmt in ((flac, 'flac'), (mp3, 'mp3')):
        encode(path, fmt, {'title': 'template'}, duration=duration, sample_rate=sample_rate)
    with open(flac, 'rb') as f:
        ft = FlacTemplate(f.read())
    with open(mp3, 'rb') as f:
        mt = Mp3Template(f.read())
    return ft, mt


def write_tagged(path, fmt, tags, flac_tpl, mp3_tpl):
    if fmt == 'flac':
        data = flac_tpl.render(vorbis_comments_from_tags(tags))
    elif fmt == 'mp3':
        data = mp3_tpl.render(tags)
    else:
        raise ValueError('bulk writes flac and mp3 only, not %s' % fmt)
    with open(path, 'wb') as f:
        f.write(data)


# --------------------------------------------------------------------------------------------------
# The sample library.

def _t(rel, fmt, title=None, artist=None, album=None, albumartist=None, year=None, track=None,
       track_total=None, disc=None, disc_total=None, compilation=False, genre=None, composer=None,
       duration=1.0, faststart=False):
    return {'rel': rel, 'format': fmt, 'duration': duration, 'faststart': faststart,
            'tags': {'title': title, 'artist': artist, 'album': album, 'albumartist': albumartist,
                     'year': year, 'track': track, 'track_total': track_total, 'disc': disc,
                     'disc_total': disc_total, 'compilation': compilation, 'genre': genre,
                     'composer': composer}}


def sample_tracks():
    """The sample library: origin paths deliberately unlike the tag layout."""
    al = dict(artist='Aurora Lane', album='First Light', albumartist='Aurora Lane', year=2001,
              track_total=4, disc=1, disc_total=1, genre='Ambient')
    mk = dict(artist='Marlow Kane', album='Double Feature', year=2015, track_total=2, disc_total=2)
    return [
        # A plain FLAC album; track 4 has a guest artist but the album artist keeps it together; the
        # album says "disc 1/1", which must not render a "1-" prefix.
        _t('Music/Aurora Lane/First Light/01 Dawn.flac', 'flac', 'Dawn', track=1, duration=2, **al),
        _t('Music/Aurora Lane/First Light/02 Noon.flac', 'flac', 'Noon', track=2, **al),
        _t('Music/Aurora Lane/First Light/03 Dusk.flac', 'flac', 'Dusk', track=3, duration=3, **al),
        _t('Music/Aurora Lane/First Light/04 Night.flac', 'flac', 'Night', track=4,
           **dict(al, artist='Aurora Lane feat. Guest')),
        # MP3 with ID3v2.3, no album artist.
        _t('Music/Aurora Lane/2004 - Second Wind/track01.mp3', 'mp3', 'Gale', 'Aurora Lane',
           'Second Wind', year=2004, track=1, track_total=2, duration=2),
        _t('Music/Aurora Lane/2004 - Second Wind/track02.mp3', 'mp3', 'Breeze', 'Aurora Lane',
           'Second Wind', year=2004, track=2, track_total=2),
        # Unicode everywhere, Ogg Vorbis (its tags live in the stream, not the container).
        _t('imports/ogg/sigur_ros/a.ogg', 'ogg', 'Svefn-g-englar', 'Sigur Rós', 'Ágætis byrjun',
           year=1999, track=1, duration=2),
        _t('imports/ogg/sigur_ros/b.ogg', 'ogg', 'Starálfur', 'Sigur Rós', 'Ágætis byrjun',
           year=1999, track=2),
        # Opus with Unicode title and album.
        _t('classical/ligeti/lux.opus', 'opus', 'Lux Æterna', 'György Ligeti', 'Lux Æterna',
           year=1968, track=1, composer='György Ligeti', duration=2),
        _t('classical/ligeti/atmospheres.opus', 'opus', 'Atmosphères', 'György Ligeti', 'Lux Æterna',
           year=1968, track=2, composer='György Ligeti'),
        # A '/' in the artist becomes '_'.
        _t('rock/acdc/hv1.mp3', 'mp3', "It's a Long Way to the Top", 'AC/DC', 'High Voltage',
           year=1976, track=1, genre='Rock'),
        _t('rock/acdc/hv2.mp3', 'mp3', 'T.N.T.', 'AC/DC', 'High Voltage', year=1976, track=2,
           genre='Rock', duration=2),
        # A compilation: different track artists, album artist missing or "Various Artists", formats
        # mixed. All rendered under "Various Artists".
        _t('compilations/summer 2010/cd/01-beach.flac', 'flac', 'Sand', 'Beach Unit', 'Summer Hits',
           year=2010, track=1, compilation=True),
        _t('compilations/summer 2010/cd/02-sunny.m4a', 'm4a', 'Heat', 'Sunny Delay', 'Summer Hits',
           year=2010, track=2, compilation=True, faststart=True),
        _t('compilations/summer 2010/cd/03-wave.mp3', 'mp3', 'Tide', 'Wave Theory', 'Summer Hits',
           albumartist='Various Artists', year=2010, track=3, compilation=True),
        # Two discs: "1-01", "1-02", "2-01", "2-02".
        _t('Music/Marlow Kane/Double Feature/CD1/01.flac', 'flac', 'Opening', track=1, disc=1, **mk),
        _t('Music/Marlow Kane/Double Feature/CD1/02.flac', 'flac', 'Chase', track=2, disc=1, **mk),
        _t('Music/Marlow Kane/Double Feature/CD2/01.flac', 'flac', 'Return', track=1, disc=2, **mk),
        _t('Music/Marlow Kane/Double Feature/CD2/02.flac', 'flac', 'Credits', track=2, disc=2,
           duration=2, **mk),
        # No year: no " ()".
        _t('opus/quiet static/nowhere 1.opus', 'opus', 'Static One', 'Quiet Static',
           'Nowhere Sessions', track=1),
        _t('opus/quiet static/nowhere 2.opus', 'opus', 'Static Two', 'Quiet Static',
           'Nowhere Sessions', track=2, duration=2),
        # M4A, one with the moov atom first and one with it at the end (ffmpeg's default); a title
        # with white space around it.
        _t('itunes/Neon Harbor/Night Drive/01 Night Drive.m4a', 'm4a', 'Night Drive', 'Neon Harbor',
           'Night Drive', year=2019, track=1, faststart=True, duration=2),
        _t('itunes/Neon Harbor/Night Drive/02 Spaces.m4a', 'm4a', '  Spaces Around  ', 'Neon Harbor',
           'Night Drive', year=2019, track=2),
        # WAV with RIFF INFO tags.
        _t('field/rec-2020-04.wav', 'wav', 'Birdsong', 'Field Recorder', 'Field Notes', year=2020,
           track=1),
        # Missing tags.
        _t('loose/untitled take.wav', 'wav'),
        _t('loose/mystery.flac', 'flac'),
        _t('loose/only-title.mp3', 'mp3', 'Only A Title', track=5),
        _t('loose/deep/er/lonely.ogg', 'ogg', 'Lonely', 'Solo Act', track=1),
    ]


def gen_sample(dest, jobs=None):
    dest = os.path.abspath(dest)
    os.makedirs(dest, exist_ok=True)
    tracks = sample_tracks()
    freq = 220
    procs = []
    jobs = jobs or max(2, os.cpu_count() or 2)
    for t in tracks:
        freq += 37
        path = os.path.join(dest, t['rel'])
        # ffmpeg in parallel: about 4x faster than one after another even on 2 cores.
        while len(procs) >= jobs:
            procs.pop(0).join()
        procs.append(_Job(encode, path, t['format'], t['tags'], t['duration'], freq,
                          faststart=t['faststart']))
    for p in procs:
        p.join()
    expected = expected_paths([{'rel': t['rel'], 'tags': t['tags']} for t in tracks])
    write_json(os.path.join(dest, EXPECTED_NAME), expected)
    return expected


class _Job:
    """encode() in a thread: ffmpeg does the work, Python only waits."""

    def __init__(self, fn, *args, **kwargs):
        import threading
        self.error = None

        def run():
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised in join()
                self.error = e
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self):
        self.thread.join()
        if self.error:
            raise self.error


# --------------------------------------------------------------------------------------------------
# Bulk libraries.

_WORDS = ('amber blue cedar delta echo fable glass harbor iris jade kite lumen mosaic north opal '
          'prism quartz river solace tundra umbra velvet willow xenon yonder zephyr ædel øst ñandú '
          'café über źródło'.split())


def _name(rng, n):
    return ' '.join(rng.choice(_WORDS).capitalize() for _ in range(n))


def bulk_tracks(count, albums_per_artist=5, tracks_per_album=10, seed=1, formats=('flac', 'mp3'),
                one_album=None, prefix=''):
    """Describes count tracks (no I/O). one_album=(artist, album): all in one album."""
    rng = random.Random(seed)
    out = []
    artist_names = {}
    for i in range(count):
        if one_album:
            artist, album = one_album
            track, album_idx, artist_idx = i + 1, 0, 0
            fmt = formats[0]
            rel = '%s%05d.%s' % (prefix, i, fmt)
            year = 2000
        else:
            per_artist = albums_per_artist * tracks_per_album
            artist_idx, r = divmod(i, per_artist)
            album_idx, t = divmod(r, tracks_per_album)
            track = t + 1
            if artist_idx not in artist_names:
                artist_names[artist_idx] = '%s %d' % (_name(rng, 2), artist_idx)
            artist = artist_names[artist_idx]
            # Album names are unique across the library, so albums never merge by name.
            album = '%s %d-%d' % (_name(random.Random(seed * 7919 + i // tracks_per_album), 2),
                                  artist_idx, album_idx)
            fmt = formats[(artist_idx * albums_per_artist + album_idx) % len(formats)]
            rel = '%s%04d/%02d/%02d.%s' % (prefix, artist_idx, album_idx, track, fmt)
            year = 1960 + (artist_idx * 7 + album_idx) % 60
        tags = {'title': 'Track %d %s' % (track, _name(rng, 1)), 'artist': artist, 'album': album,
                'year': year, 'track': track}
        out.append({'rel': rel, 'format': fmt, 'tags': tags})
    return out


def gen_bulk(dest, count, albums_per_artist=5, tracks_per_album=10, seed=1, formats=('flac', 'mp3'),
             one_album=None, prefix='', write_expected=True, templates=None, quiet=True):
    dest = os.path.abspath(dest)
    os.makedirs(dest, exist_ok=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='genlib-') as work:
        flac_tpl, mp3_tpl = templates or make_templates(work)
        tracks = bulk_tracks(count, albums_per_artist, tracks_per_album, seed, formats, one_album, prefix)
        made = set()
        for t in tracks:
            path = os.path.join(dest, t['rel'])
            d = os.path.dirname(path)
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)
            write_tagged(path, t['format'], t['tags'], flac_tpl, mp3_tpl)
    expected = None
    if write_expected:
        expected = expected_paths(tracks)
        write_json(os.path.join(dest, EXPECTED_NAME), expected)
    if not quiet:
        print('wrote %d tracks to %s in %.1f s' % (count, dest, time.monotonic() - start))
    return expected if expected is not None else tracks


# --------------------------------------------------------------------------------------------------
# Bad input.

BIG_ALBUM = ('Bulk Artist', 'Ten Thousand')


def gen_bad(dest, big_album_count=10000, seed=1):
    """Every kind of bad input at once. Writes DEST/.bad.json:
      unparsed   files that are listed under "Unknown Artist/Unknown Album/<stem>.<ext>" and logged once
      skipped    entries the walk skips, logged once each (FIFO, dangling symlink, symlink loop)
      not_regular  the skipped entries that are neither files nor directories (the FIFO)
      odd        good files with awkward content: {non_utf8_tags, huge_title, non_utf8_name}: rel
      big_album  {dir, count, artist, album}
    Paths that are not valid UTF-8 use surrogateescape."""
    dest = os.path.abspath(dest)
    os.makedirs(dest, exist_ok=True)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix='genlib-') as work:
        flac_tpl, mp3_tpl = make_templates(work)

        def put(rel, data):
            p = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, 'wb') as f:
                f.write(data)

        good_flac = flac_tpl.render(vorbis_comments_from_tags({'title': 'x'}))
        put('bad/zero-byte.flac', b'')
        # Cut inside STREAMINFO: nothing of the stream can be understood.
        put('bad/truncated.flac', good_flac[:20])
        # Garbage without 0xFF bytes, so that no MPEG frame sync can be found by luck.
        put('bad/garbage.mp3', bytes(rng.randrange(0, 255) for _ in range(64 * 1024)))

        # Tag bytes that are not UTF-8 (Latin-1 "Café", "Björk"), written raw.
        put('odd/latin1-tags.flac', flac_tpl.render([
            (b'TITLE', b'Caf\xe9 Cr\xe8me'), (b'ARTIST', b'Bj\xf6rk Latin1'),
            (b'ALBUM', b'Hom\xe9genic Bytes'), (b'TRACKNUMBER', b'1')]))
        # A 1 MiB title.
        put('odd/huge-title.flac', flac_tpl.render([
            ('TITLE', 'H' * (1 << 20)), ('ARTIST', 'Huge Tags'), ('ALBUM', 'Megabyte'),
            ('TRACKNUMBER', '1')]))
        # A file name that is not UTF-8, with artist and album but no title (the stem is the title).
        name = os.fsdecode(b'odd/na\xefve-\xff\xfe.flac')
        p = os.fsencode(os.path.join(dest, name))
        with open(p, 'wb') as f:
            f.write(flac_tpl.render([('ARTIST', 'Byte Names'), ('ALBUM', 'Raw Bytes')]))

        # Entries the walk must skip: a FIFO, a dangling symlink, a symlink loop.
        os.makedirs(os.path.join(dest, 'skip'), exist_ok=True)
        fifo = os.path.join(dest, 'skip/fifo.flac')
        if not os.path.exists(fifo):
            os.mkfifo(fifo)
        for link, target in (('skip/dangling.mp3', 'does-not-exist.mp3'), ('skip/loop/self', '..')):
            lp = os.path.join(dest, link)
            os.makedirs(os.path.dirname(lp), exist_ok=True)
            if not os.path.lexists(lp):
                os.symlink(target, lp)

        if big_album_count:
            gen_bulk(os.path.join(dest, 'big-album'), big_album_count, one_album=BIG_ALBUM, seed=seed,
                     formats=('flac',), write_expected=False, templates=(flac_tpl, mp3_tpl))

    info = {
        'unparsed': ['bad/zero-byte.flac', 'bad/truncated.flac', 'bad/garbage.mp3'],
        'skipped': ['skip/fifo.flac', 'skip/dangling.mp3', 'skip/loop/self'],
        'not_regular': ['skip/fifo.flac'],
        'odd': {'non_utf8_tags': 'odd/latin1-tags.flac', 'huge_title': 'odd/huge-title.flac',
                'non_utf8_name': name},
        'big_album': {'dir': 'big-album', 'count': big_album_count, 'artist': BIG_ALBUM[0],
                      'album': BIG_ALBUM[1]},
    }
    write_json(os.path.join(dest, BAD_NAME), info)
    return info


# --------------------------------------------------------------------------------------------------

def _tags_from_args(a):
    return {'title': a.title, 'artist': a.artist, 'album': a.album, 'albumartist': a.albumartist,
            'year': a.year, 'track': a.track, 'track_total': a.track_total, 'disc': a.disc,
            'disc_total': a.disc_total, 'compilation': a.compilation, 'genre': a.genre,
            'composer': a.composer}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)

    s = sub.add_parser('sample', help='small real library in every format, with .expected.json')
    s.add_argument('dest')

    b = sub.add_parser('bulk', help='N small tagged FLAC/MP3 tracks, fast')
    b.add_argument('dest')
    b.add_argument('--count', type=int, required=True)
    b.add_argument('--albums-per-artist', type=int, default=5)
    b.add_argument('--tracks-per-album', type=int, default=10)
    b.add_argument('--seed', type=int, default=1)
    b.add_argument('--formats', default='flac,mp3', help='comma-separated, of flac and mp3')
    b.add_argument('--one-album', nargs=2, metavar=('ARTIST', 'ALBUM'))
    b.add_argument('--no-expected', action='store_true', help='skip writing .expected.json')

    t = sub.add_parser('track', help='one file with the given tags')
    t.add_argument('path')
    t.add_argument('--format', choices=FORMATS, help='default: from the extension')
    for opt in ('title', 'artist', 'album', 'albumartist', 'genre', 'composer'):
        t.add_argument('--' + opt)
    for opt in ('year', 'track', 'track-total', 'disc', 'disc-total'):
        t.add_argument('--' + opt, type=int)
    t.add_argument('--compilation', action='store_true')
    t.add_argument('--duration', type=float, default=1.0)
    t.add_argument('--frequency', type=int, default=440)

    d = sub.add_parser('bad', help='bad input files, with .bad.json')
    d.add_argument('dest')
    d.add_argument('--big-album-count', type=int, default=10000)

    a = ap.parse_args(argv)
    if a.cmd == 'sample':
        exp = gen_sample(a.dest)
        print('wrote %d tracks to %s' % (len(exp), a.dest))
    elif a.cmd == 'bulk':
        fmts = tuple(a.formats.split(','))
        if any(f not in ('flac', 'mp3') for f in fmts):
            ap.error('--formats takes flac and mp3')
        gen_bulk(a.dest, a.count, a.albums_per_artist, a.tracks_per_album, a.seed, fmts,
                 tuple(a.one_album) if a.one_album else None, write_expected=not a.no_expected,
                 quiet=False)
    elif a.cmd == 'track':
        fmt = a.format or os.path.splitext(a.path)[1][1:].lower()
        if fmt not in FORMATS:
            ap.error('unknown format %r; use --format' % fmt)
        encode(a.path, fmt, _tags_from_args(a), a.duration, a.frequency)
    elif a.cmd == 'bad':
        info = gen_bad(a.dest, a.big_album_count)
        print('wrote bad input to %s (%d unparseable, %d skipped, %d-track album)' % (
            a.dest, len(info['unparsed']), len(info['skipped']), info['big_album']['count']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
