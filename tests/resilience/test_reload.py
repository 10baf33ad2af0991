#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""3.6 (COVERAGE.md): SIGHUP re-reads the configuration file while the mount keeps serving. A new
log_level applies at once; a new template re-renders the tree (the kernel forgets the old names); a
broken file is refused with FILE:LINE in the log and the running configuration stays, mount
untouched; a key that cannot change while running (fuse_threads) is reported as needing a restart;
read_ahead_kb sets the mount's kernel read-ahead (its bdi) at mount and again at a reload.
Each reload is announced RELOADING=1 ... READY=1 (Type=notify-reload)."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rutil  # noqa: E402
from rutil import harness, genlib  # noqa: E402

TEMPLATE_BY = 'by ' + genlib.DEFAULT_TEMPLATE
DEBUG = 'musicfsd: debug:'


def config(log_level='info', template=genlib.DEFAULT_TEMPLATE, extra=''):
    return '[musicfsd]\nlog_level = %s\ntemplate = %s\n%s' % (log_level, template, extra)


class ReloadTest(harness.MusicfsTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lib = harness.sample_library()
        cls.files = rutil.origin_files(cls.lib)

    def write_config(self, d, text):
        tmp = d.config_path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
        os.rename(tmp, d.config_path)

    def reload(self, d):
        """SIGHUP, then waits for the daemon to say it is done (READY=1 after RELOADING=1)."""
        readies = d.notify.count('READY=1')
        reloads = d.notify.count('RELOADING=1')
        d.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: (d._check_running() or True) and d.notify.count('RELOADING=1') > reloads
                           and d.notify.count('READY=1') > readies, 10.0, message='RELOADING=1 then READY=1')

    def assertServes(self, d, prefix=''):
        self.assertTrue(d.is_mounted())
        self.assertEqual(rutil.tree_files(d.mountpoint), {prefix + v for v in self.files})
        for v in sorted(self.files)[::5]:
            self.assertEqual(rutil.read_file(d.path(prefix + v)), rutil.read_file(self.files[v]), v)
        self.assertEqual(int(d.bus_get('TrackCount')), len(self.files))

    def read_ahead_kb(self, d):
        """The kernel's read-ahead of the mount, from its bdi (named after the mount's device)."""
        st = os.stat(d.mountpoint)
        with open('/sys/class/bdi/%d:%d/read_ahead_kb' % (os.major(st.st_dev), os.minor(st.st_dev))) as f:
            return int(f.read())

    def test_reload(self):
        d = self.daemon([self.lib], config_text=config())
        d.wait_tracks(len(self.files))
        rutil.wait_scan_done(d)
        self.assertServes(d)
        self.assertNotIn(DEBUG, d.log())
        # The default read-ahead is set once the workers run, before READY.
        self.assertEqual(self.read_ahead_kb(d), 1024)

        # read_ahead_kb: applies at once, on the mounted file system.
        self.write_config(d, config(extra='read_ahead_kb = 256\n'))
        self.reload(d)
        rutil.wait_log(d, r'read_ahead_kb changed: 1024 -> 256 KiB')
        self.assertEqual(self.read_ahead_kb(d), 256)
        self.assertServes(d)

        # log_level: applies at once.
        self.write_config(d, config('debug'))
        self.reload(d)
        rutil.wait_log(d, r'log_level changed: info -> debug')
        self.assertServes(d)

        # template: the tree is rebuilt and the old names disappear from the kernel's cache too.
        old_names = sorted(self.files)[:3]
        for v in old_names:
            os.stat(d.path(v))      # cached in the kernel with a long entry timeout
        self.write_config(d, config('debug', TEMPLATE_BY))
        self.reload(d)
        harness.wait_until(lambda: rutil.tree_files(d.mountpoint) == {'by ' + v for v in self.files},
                           30.0, 0.1, message='the tree re-rendered with the new template', ignore=(OSError,))
        self.assertServes(d, prefix='by ')
        for v in old_names:
            self.assertFalse(os.path.exists(d.path(v)), 'old name still answers: %s' % v)
        # Debug lines now appear (the rebuild logs one at debug level).
        rutil.wait_log(d, r'^' + DEBUG)

        # A broken file: FILE:LINE in the log, the running configuration stays, the mount is untouched.
        text = config('info', genlib.DEFAULT_TEMPLATE, 'this line is not ini\n')
        bad_line = text.splitlines().index('this line is not ini') + 1
        self.write_config(d, text)
        mark = len(d.log())
        self.reload(d)
        rutil.wait_log(d, r'%s:%d' % (d.config_path.replace('.', r'\.'), bad_line))
        after = d.log()[mark:]
        self.assertIn('keeping the running configuration', after)
        self.assertNotIn('log_level changed', after)
        self.assertNotIn('template changed', after)
        self.assertTrue(d.running())
        self.assertServes(d, prefix='by ')

        # A cold key: logged as needing a restart, nothing else happens.
        self.write_config(d, config('debug', TEMPLATE_BY, 'fuse_threads = 3\n'))
        mark = len(d.log())
        self.reload(d)
        rutil.wait_log(d, r'fuse_threads changed.*needs a restart')
        self.assertNotIn('template changed', d.log()[mark:])
        self.assertServes(d, prefix='by ')

        # Still at debug level from the first reload (the broken one changed nothing): the stop's
        # state change is logged at debug.
        mark = len(d.log())
        self.assertDaemonStops(d)
        self.assertIn(DEBUG, d.log()[mark:])


if __name__ == '__main__':
    harness.main()
