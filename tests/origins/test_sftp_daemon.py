# SPDX-License-Identifier: LGPL-2.1-or-later
"""musicfsd end to end over SFTP: a generated library (tests/lib/genlib.py) served by a real OpenSSH
sshd on 127.0.0.1 (tests/lib/sftppeer.py), configured as an [origin] of kind sftp in a config file,
mounted through FUSE: the tree is right, every file reads back byte-identical, and the scan fetched
only the tag parser's bytes, not the files."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'lib'))
import harness  # noqa: E402

harness.require_fuse()
import genlib  # noqa: E402
import sftppeer  # noqa: E402

sftppeer.require_sshd(harness.skip_module)

BIG_TAGS = {'title': 'Long Form', 'artist': 'Big File', 'album': 'Megabytes', 'year': 2021, 'track': 1}


class SftpDaemonTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(prefix='musicfs-sftp-lib-')
        cls.lib = os.path.join(cls.root, 'lib')
        shutil.copytree(harness.sample_library(), cls.lib)
        cls.expected = genlib.load_expected(cls.lib)      # {virtual path: rel path}
        # A file of several MiB, which a scan must not fetch whole.
        genlib.encode(os.path.join(cls.lib, 'long', 'form.wav'), 'wav', BIG_TAGS, duration=60, sample_rate=48000)
        cls.expected[genlib.render(BIG_TAGS, 'form', 'wav')] = 'long/form.wav'

    @classmethod
    def tearDownClass(cls):
        harness.safe_rmtree(cls.root)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.peer = sftppeer.SftpPeer()
        self.addCleanup(self.peer.cleanup)
        self.peer.start()
        self.relay = sftppeer.Relay(self.peer.port)     # counts what the server sends
        self.addCleanup(self.relay.close)

    def config(self, mnt, cache, **extra):
        # The daemon reaches the server through the relay: its address is the one known_hosts names.
        kh = os.path.join(self.tempdir(), 'known_hosts')
        with open(self.peer.host_key + '.pub') as f:
            keytype, key = f.read().split()[:2]
        with open(kh, 'w') as f:
            f.write('[127.0.0.1]:%d %s %s\n' % (self.relay.port, keytype, key))
        keys = {
            'kind': 'sftp', 'host': '127.0.0.1', 'port': self.relay.port, 'user': self.peer.user,
            'path': self.lib, 'identity_file': self.peer.client_key, 'known_hosts': kh, 'timeout': 10,
            'pool_size': 3,
        }
        keys.update(extra)
        return ('[musicfsd]\nmountpoint = %s\ncache_dir = %s\n\n[origin "nas"]\n' % (mnt, cache) +
                ''.join('%s = %s\n' % kv for kv in keys.items()))

    def start(self, **extra):
        mnt = os.path.join(self.tempdir(), 'mnt')
        os.makedirs(mnt)
        cache = self.tempdir()
        d = self.daemon(start=False, config_text=self.config(mnt, cache, **extra), mountpoint=mnt, cache_dir='',
                        mountpoint_arg=False)
        d.start()
        return d

    def test_library_over_sftp(self):
        d = self.start()
        d.wait_tracks(len(self.expected), timeout=120)
        scanned = self.relay.bytes_down
        total = sum(os.path.getsize(os.path.join(self.lib, r)) for r in self.expected.values())

        # The scan read the tag parser's bytes (a read-ahead buffer or two per file), not the files.
        print('scan fetched %d bytes of a %d-byte library (%d files)' % (scanned, total, len(self.expected)))
        self.assertLess(scanned, len(self.expected) * 300 * 1024 + (1 << 20))
        self.assertLess(scanned, total // 2)

        tree = harness.walk_tree(d.mountpoint)
        files = {p for p, st in tree.items() if not os.path.stat.S_ISDIR(st.st_mode)}
        dirs = {p for p, st in tree.items() if os.path.stat.S_ISDIR(st.st_mode)}
        self.assertEqual(sorted(set(self.expected) - files), [], 'files missing from the mount')
        self.assertEqual(sorted(files - set(self.expected)), [], 'unexpected files in the mount')
        self.assertEqual(dirs, harness.expected_dirs(self.expected))
        for vpath, rel in self.expected.items():
            origin = os.path.join(self.lib, rel)
            self.assertEqual(os.path.getsize(d.path(vpath)), os.path.getsize(origin), vpath)
            self.assertEqual(harness.file_digest(d.path(vpath)), harness.file_digest(origin), vpath)

        # The origin shows its URL (user, host, port, path: no key) over the bus, and nothing of the
        # key is logged.
        opath = harness.MANAGER_PATH + '/origin/nas'
        self.assertEqual(str(d.bus_get('Url', iface='org.musicfs.Origin', path=opath)),
                         'sftp://%s@127.0.0.1:%d%s' % (self.peer.user, self.relay.port, self.lib))
        self.assertEqual(str(d.bus_get('Kind', iface='org.musicfs.Origin', path=opath)), 'sftp')
        log = d.log()
        with open(self.peer.client_key) as f:
            for line in f:
                if line.strip() and not line.startswith('-----'):
                    self.assertNotIn(line.strip(), log)
        self.assertDaemonStops(d)

    def test_refused_host_key_leaves_the_origin_down(self):
        other = self.peer.other_host_key_line().split()
        kh = os.path.join(self.tempdir(), 'bad_known_hosts')
        with open(kh, 'w') as f:
            f.write('[127.0.0.1]:%d %s %s\n' % (self.relay.port, other[1], other[2]))
        d = self.start(known_hosts=kh)
        d.wait_log('HOST KEY MISMATCH', timeout=60)
        self.assertEqual(os.listdir(d.mountpoint), [])
        self.assertDaemonStops(d)

    def test_add_origin_by_url(self):
        """AddOrigin takes sftp://user@host:port/path and logs in with the daemon user's defaults:
        ~/.ssh/id_* and ~/.ssh/known_hosts (here a HOME of the test's)."""
        home = self.tempdir()
        os.makedirs(os.path.join(home, '.ssh'))
        shutil.copyfile(self.peer.client_key, os.path.join(home, '.ssh', 'id_ed25519'))
        os.chmod(os.path.join(home, '.ssh', 'id_ed25519'), 0o600)
        shutil.copyfile(self.peer.known_hosts, os.path.join(home, '.ssh', 'known_hosts'))
        remote = self.tempdir()
        tags = {'title': 'Over The Wire', 'artist': 'Remote Band', 'album': 'Secure Copy', 'year': 2022, 'track': 3}
        genlib.encode(os.path.join(remote, 'net', 'wire.flac'), 'flac', tags, duration=2)
        vpath = genlib.render(tags, 'wire', 'flac')

        local = harness.sample_library()
        n = len(genlib.load_expected(local))
        d = self.daemon([local], env={'HOME': home, 'SSH_AUTH_SOCK': ''})
        d.wait_tracks(n)

        import dbus
        with self.assertRaises(dbus.exceptions.DBusException) as cm:
            d.bus_call('AddOrigin', 'ssua{sv}', 'pw', 'sftp://me:hunter2@127.0.0.1:%d%s' % (self.peer.port, remote), 10, {})
        self.assertIn('password', str(cm.exception))
        self.assertNotIn('hunter2', str(cm.exception))

        url = 'sftp://%s@127.0.0.1:%d%s' % (self.peer.user, self.peer.port, remote)
        d.bus_call('AddOrigin', 'ssua{sv}', 'net', url, 10, {})
        d.wait_tracks(n + 1, timeout=60)
        with open(d.path(vpath), 'rb') as f, open(os.path.join(remote, 'net', 'wire.flac'), 'rb') as g:
            self.assertEqual(f.read(), g.read())
        opath = harness.MANAGER_PATH + '/origin/net'
        self.assertEqual(str(d.bus_get('Url', iface='org.musicfs.Origin', path=opath)), url)
        self.assertDaemonStops(d)

    def test_bad_sftp_sections_are_refused(self):
        """Each mistake gets a sentence naming it, and nothing is mounted."""
        cases = [
            ({'host': None}, "has no host"),
            ({'path': 'music'}, "is not an absolute path"),
            ({'port': '70000'}, "port = '70000'"),
            ({'agent': 'maybe'}, "agent = 'maybe' is not a boolean"),
            ({'host_key_fingerprint': 'MD5:aa:bb'}, "is not a SHA256 fingerprint"),
            ({'pool_size': '0'}, "pool_size = '0'"),
            ({'identity_file': '/nonexistent/key'}, "identity_file '/nonexistent/key' cannot be read"),
            ({'bucket': 'music'}, "has S3 keys"),
            ({'watch': 'inotify'}, "cannot be watched with inotify"),
            ({'kind': 'local'}, "has SFTP keys"),
            ({'kind': 'ftp'}, "kind = 'ftp' is not an origin kind"),
            ({'colour': 'blue'}, "kind = sftp: host, port"),
        ]
        for change, needle in cases:
            with self.subTest(change=change):
                mnt = os.path.join(self.tempdir(), 'mnt')
                os.makedirs(mnt)
                text = self.config(mnt, self.tempdir(), **change)
                text = '\n'.join(line for line in text.splitlines() if not line.endswith(' = None')) + '\n'
                d = self.daemon(start=False, config_text=text, mountpoint=mnt, cache_dir='', mountpoint_arg=False)
                code, out = d.run_to_exit()
                self.assertEqual(code, 1, out)
                self.assertIn(needle, out)
                self.assertFalse(harness.is_mounted(mnt))


if __name__ == '__main__':
    harness.main()
