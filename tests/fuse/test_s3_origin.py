#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""An S3 origin end to end (issue #5): the genlib sample library uploaded under a prefix of a bucket
on a real s3rver (tests/lib/s3peer.py), musicfsd configured with kind = s3 mounts it; the tree is the
one the tags say, every file reads back byte-identical through FUSE and the chunk cache, objects
outside the prefix stay out, and the secrets (from a credentials file, or from the config file,
which then draws a warning when others may read it) appear neither in the log nor on the bus.
Config mistakes in an s3 section are refused with FILE:LINE. Exits 77 without node or s3rver."""

import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402
import s3peer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bus'))
import buslib  # noqa: E402

BUCKET = 'music'
PREFIX = 'library/'
SECRET = 'sEcReT-key-0f-the-test-4711'
TOKEN = 'SeSsIoN-token-0f-the-test-4242'
BIG_TAGS = {'title': 'Long Remote', 'artist': 'Far Away', 'album': 'Bucket', 'year': 2020, 'track': 1}


class S3OriginTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.peer = s3peer.S3Peer()
        reason = cls.peer.unavailable_reason()
        if reason:
            harness.skip_module(reason)
        cls.peer.start()
        cls.lib = harness.sample_library()
        cls.expected = genlib.load_expected(cls.lib)
        cls.peer.create_bucket(BUCKET)
        cls.keys = []
        for dirpath, _, files in os.walk(cls.lib):
            for name in files:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, cls.lib)
                # The generator's bookkeeping, and the entries a local walk must skip (FIFO,
                # dangling symlinks), are no objects.
                if name in (genlib.EXPECTED_NAME, genlib.BAD_NAME) or not os.path.isfile(path):
                    continue
                with open(path, 'rb') as f:
                    cls.peer.put(BUCKET, PREFIX + rel, f.read())
                cls.keys.append(rel)
        # A long track: its scan must read the tags, not the file (the origin logs each GET at debug).
        cls.big_dir = tempfile.mkdtemp(prefix='musicfs-s3big-')
        big = os.path.join(cls.big_dir, 'big.wav')
        genlib.encode(big, 'wav', BIG_TAGS, duration=120, sample_rate=48000)
        cls.big_size = os.path.getsize(big)
        with open(big, 'rb') as f:
            cls.big_data = f.read()
        cls.peer.put(BUCKET, PREFIX + 'long/big.wav', cls.big_data)
        cls.expected = dict(cls.expected)
        cls.expected[genlib.render(BIG_TAGS, 'big', 'wav')] = None
        cls.keys.append('long/big.wav')
        # Beside the prefix: must not show up.
        first = os.path.join(cls.lib, next(r for _, r in sorted(cls.expected.items()) if r))
        with open(first, 'rb') as f:
            cls.peer.put(BUCKET, 'library-old/stray.flac', f.read())
            cls.peer.put(BUCKET, 'stray.flac', f.read())

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.big_dir)
        cls.peer.cleanup()
        super().tearDownClass()

    def s3_config(self, workdir, section_extra, main_extra=''):
        return ('[musicfsd]\nlog_level = debug\n%s\n'
                '[origin "cloud"]\nkind = s3\nendpoint = %s\nbucket = %s\nprefix = %s\n%s'
                % (main_extra, self.peer.endpoint, BUCKET, PREFIX, section_extra))

    def start_s3_daemon(self, section_extra, env=None):
        workdir = self.tempdir()
        d = self.daemon(start=False, workdir=workdir, config_text=self.s3_config(workdir, section_extra),
                        env=env or {'AWS_ACCESS_KEY_ID': '', 'AWS_SECRET_ACCESS_KEY': '', 'AWS_SESSION_TOKEN': ''})
        return d

    def assertNoSecrets(self, d):
        log = d.all_logs()
        for s in (SECRET, TOKEN):
            self.assertNotIn(s, log)
        seen = [repr(buslib.plain(d.bus_get_all()))]
        props = buslib.plain(d.bus_get_all(iface=buslib.ORIGIN_IFACE, path=buslib.origin_path('cloud')))
        seen.append(repr(props))
        for s in (SECRET, TOKEN):
            for text in seen:
                self.assertNotIn(s, text)
        self.assertEqual(props['Kind'], 's3')
        self.assertTrue(props['Url'].startswith('s3://%s/%s?endpoint=%s' % (BUCKET, PREFIX.rstrip('/'),
                                                                            self.peer.endpoint)), props['Url'])
        return props

    def assertScanReadTagsOnly(self, d):
        """The scan fetched a small part of the long track: its tags, through the read-ahead window."""
        ranges = re.findall(r'S3 origin cloud: GET long/big\.wav bytes (\d+)-(\d+)', d.log())
        self.assertTrue(ranges, 'no GET of the long track logged')
        fetched = sum(int(b) - int(a) + 1 for a, b in ranges)
        self.assertGreater(self.big_size, 8 << 20)
        self.assertLessEqual(fetched, 1 << 20, '%d GETs, %d of %d bytes' % (len(ranges), fetched, self.big_size))

    def test_mount_from_credentials_file(self):
        creds = os.path.join(self.tempdir(), 'credentials')
        with open(creds, 'w') as f:
            f.write('[default]\naws_access_key_id = NOBODY\naws_secret_access_key = nothing\n\n'
                    '[musicfs]\naws_access_key_id = %s\naws_secret_access_key = %s\naws_session_token = %s\n'
                    % (s3peer.ACCESS_KEY_ID, SECRET, TOKEN))
        os.chmod(creds, 0o600)
        d = self.start_s3_daemon('credentials_file = %s\nprofile = musicfs\n' % creds)
        d.start()
        d.wait_tracks(len(self.expected))

        # The tree: exactly the expected files, and the directories above them.
        tree = harness.walk_tree(d.mountpoint)
        files = {p for p, st in tree.items() if not os.path.stat.S_ISDIR(st.st_mode)}
        dirs = {p for p, st in tree.items() if os.path.stat.S_ISDIR(st.st_mode)}
        self.assertEqual(sorted(files - set(self.expected)), [], 'unexpected files in the mount')
        self.assertEqual(sorted(set(self.expected) - files), [], 'files missing from the mount')
        self.assertEqual(dirs, harness.expected_dirs(self.expected))
        # Byte-identical through FUSE, twice (the second time from the chunk cache).
        self.assertScanReadTagsOnly(d)
        for _ in range(2):
            for vpath, rel in sorted(self.expected.items()):
                src = os.path.join(self.lib, rel) if rel else os.path.join(self.big_dir, 'big.wav')
                self.assertEqual(harness.file_digest(d.path(vpath)), harness.file_digest(src), vpath)
                self.assertEqual(os.stat(d.path(vpath)).st_size, os.path.getsize(src))
        self.assertNotIn('stray', repr(sorted(tree)))
        self.assertNoSecrets(d)
        self.assertNotIn('readable by every user', d.all_logs())
        self.assertDaemonStops(d)

    def test_secret_in_config_file_warns(self):
        d = self.start_s3_daemon('access_key_id = %s\nsecret_access_key = %s\n' % (s3peer.ACCESS_KEY_ID, SECRET))
        os.chmod(d.config_path, 0o644)
        d.start()
        d.wait_tracks(len(self.expected))
        self.assertIn('readable by every user', d.log())
        self.assertNoSecrets(d)
        self.assertDaemonStops(d)

    def test_credentials_from_environment(self):
        d = self.start_s3_daemon('', env={'AWS_ACCESS_KEY_ID': s3peer.ACCESS_KEY_ID, 'AWS_SECRET_ACCESS_KEY': SECRET,
                                          'AWS_SESSION_TOKEN': TOKEN})
        d.start()
        d.wait_tracks(len(self.expected))
        self.assertNotIn('requests go unsigned', d.log())
        vpath, rel = next((v, r) for v, r in sorted(self.expected.items()) if r)
        self.assertEqual(harness.file_digest(d.path(vpath)), harness.file_digest(os.path.join(self.lib, rel)))
        self.assertNoSecrets(d)
        self.assertDaemonStops(d)

    def test_wrong_key_is_refused(self):
        # s3rver knows one account: another key id gets 403, the scan fails and nothing shows up.
        d = self.start_s3_daemon('', env={'AWS_ACCESS_KEY_ID': 'NOT-AN-ACCOUNT', 'AWS_SECRET_ACCESS_KEY': SECRET})
        d.start()
        d.wait_log(r'access denied \(InvalidAccessKeyId\)')
        self.assertEqual(int(d.bus_get('TrackCount')), 0)
        self.assertEqual(os.listdir(d.mountpoint), [])
        self.assertNoSecrets(d)
        self.assertDaemonStops(d)

    def test_add_origin_over_the_bus(self):
        import dbus
        d = self.start_s3_daemon('', env={'AWS_ACCESS_KEY_ID': s3peer.ACCESS_KEY_ID, 'AWS_SECRET_ACCESS_KEY': SECRET})
        d.start()
        d.wait_tracks(len(self.expected))
        url = 's3://%s/%s?endpoint=%s&region=us-east-1&timeout=20' % (BUCKET, PREFIX.rstrip('/'), self.peer.endpoint)
        path = d.bus_call('AddOrigin', 'ssua{sv}', 'cloud2', url, 30, {})
        self.assertEqual(str(path), buslib.origin_path('cloud2'))
        props = buslib.plain(d.bus_get_all(iface=buslib.ORIGIN_IFACE, path=path))
        self.assertEqual(props['Kind'], 's3')
        self.assertEqual(props['Url'], url.replace('&timeout=20', ''))
        # Its scan sees every file (the same bytes as cloud's: replicas, so the track count stays).
        d.wait_log(r'Origin cloud2: scanned %d files' % len(self.keys))
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.expected))
        # Credentials in a URL, unknown parameters and bad buckets are refused, the value not echoed.
        for bad, needle in (('s3://%s/x?secret_access_key=%s' % (BUCKET, SECRET), 'credentials never go in a URL'),
                            ('s3://%s/x?endpoint=%s&access_key_id=AKID' % (BUCKET, self.peer.endpoint), 'access_key_id'),
                            ('s3://x/y', 'bucket'),
                            ('s3://%s/a/../b' % BUCKET, 'prefix'),
                            ('s3://%s?endpoint=ftp://h' % BUCKET, 'endpoint')):
            with self.assertRaises(dbus.DBusException) as cm:
                d.bus_call('AddOrigin', 'ssua{sv}', 'cloud3', bad, 30, {})
            self.assertEqual(cm.exception.get_dbus_name(), 'org.musicfs.Error.InvalidArgs', bad)
            self.assertIn(needle, cm.exception.get_dbus_message())
            self.assertNotIn(SECRET, cm.exception.get_dbus_message())
        self.assertNoSecrets(d)
        self.assertDaemonStops(d)

    def test_config_mistakes(self):
        for extra, line, needle in (('path_style = maybe\n', 9, 'path_style'),
                                    ('timeout = 0\n', 9, 'timeout'),
                                    ('endpoint = ftp://x\n', 9, 'endpoint'),
                                    ('bucket = x\n', 9, 'bucket'),
                                    ('credentials_file = relative\n', 9, 'credentials_file')):
            workdir = self.tempdir()
            d = self.daemon(start=False, workdir=workdir, config_text=self.s3_config(workdir, extra))
            code, out = d.run_to_exit()
            self.assertEqual(code, 1, out)
            self.assertIn('%s:%d:' % (d.config_path, line), out)
            self.assertIn(needle, out)
            self.assertFalse(harness.is_mounted(d.mountpoint))
        # Whole-section checks: no bucket; an access key without its secret; a missing credentials file.
        for text, needle in (('[origin "cloud"]\nkind = s3\nendpoint = http://127.0.0.1:1\n', 'no bucket'),
                             ('[origin "cloud"]\nkind = s3\nbucket = music\naccess_key_id = A\n', 'secret_access_key'),
                             ('[origin "cloud"]\nkind = s3\nbucket = music\ncredentials_file = /nonexistent/c\n',
                              '/nonexistent/c'),
                             ('[origin "cloud"]\nkind = local\npath = /tmp\nbucket = music\n', 'kind = s3'),
                             ('[origin "cloud"]\nkind = s3\nbucket = music\nwatch = inotify\n', 'watch = inotify'),
                             ('[origin "cloud"]\nkind = s3\nbucket = music\npath = /tmp\n', 'has a path')):
            d = self.daemon(start=False, config_text=text)
            code, out = d.run_to_exit()
            self.assertEqual(code, 1, out)
            self.assertIn(needle, out)


if __name__ == '__main__':
    harness.main()
