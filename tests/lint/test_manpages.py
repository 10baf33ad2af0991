#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Lint suite: the man pages format without a warning (man --warnings), and they keep up with the
programs: every command and option musicfsctl --help and musicfsd --help list, and every key the
configuration parser accepts, is documented; the exit statuses of musicfsctl(1) match --help."""
import glob
import os
import re
import shutil
import subprocess
import sys
import unittest

SRC = os.environ.get('MUSICFS_SOURCE_ROOT', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
BUILD = os.environ.get('MUSICFS_BUILD_ROOT', os.path.join(SRC, 'build'))
MAN = os.path.join(SRC, 'man')
PAGES = ('musicfsctl.1', 'musicfsd.8', 'musicfsd.conf.5')

if not shutil.which('man'):
    sys.stderr.write('SKIP: man (man-db) is not installed\n')
    sys.exit(77)


def render(page):
    """The page as text, and what man said on stderr."""
    r = subprocess.run(['man', '--warnings', '-l', os.path.join(MAN, page)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60,
                       env=dict(os.environ, MANWIDTH='80', LC_ALL='C.UTF-8', MAN_KEEP_FORMATTING='',
                                MANPAGER='cat', PAGER='cat'))
    # Overstrike bold/underline (if any) to plain text.
    text = re.sub(r'.\x08', '', r.stdout)
    return r.returncode, text, r.stderr


def help_text(program):
    path = os.path.join(BUILD, *program)
    if not os.access(path, os.X_OK):
        raise unittest.SkipTest('%s is not built' % path)
    r = subprocess.run([path, '--help'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def words(text):
    return ' '.join(text.split())


class ManPages(unittest.TestCase):

    def test_pages_installed_and_clean(self):
        self.assertEqual(sorted(os.path.basename(p) for p in glob.glob(os.path.join(MAN, '*.[1-8]'))),
                         sorted(PAGES))
        for page in PAGES:
            rc, text, err = render(page)
            self.assertEqual((rc, err), (0, ''), page)
            section = page.rsplit('.', 1)[1]
            self.assertTrue(text.lstrip().startswith('%s(%s)' % (page.rsplit('.', 1)[0].upper(), section)),
                            text[:200])
            for heading in ('NAME', 'SYNOPSIS', 'DESCRIPTION', 'SEE ALSO'):
                self.assertRegex(text, r'(?m)^%s$' % heading, '%s lacks %s' % (page, heading))
        with open(os.path.join(MAN, 'meson.build'), encoding='utf-8') as f:
            build = f.read()
        for page in PAGES:
            self.assertIn("'%s'" % page, build)

    def test_musicfsctl_page_matches_help(self):
        helptext = help_text(('client', 'musicfsctl'))
        _, page, _ = render('musicfsctl.1')
        commands = re.findall(r'(?m)^  ([a-z][a-z-]+(?: (?:list|arm|disarm))?)\b', helptext.split('Options:')[0])
        self.assertGreaterEqual(len(commands), 18, commands)
        for cmd in commands:
            self.assertRegex(page, r'(?m)^       %s\b' % re.escape(cmd), 'command %r is not documented' % cmd)
        options = set(re.findall(r'(?<![\w-])(--[a-z][a-z-]+|-[a-z])\b', helptext.split('Options:')[1]))
        self.assertGreaterEqual(len(options), 10, options)
        for opt in options:
            self.assertIn(opt, page, 'option %s is not documented' % opt)

        # The same exit statuses in both, with the same meaning.
        codes = dict(re.findall(r'(\d) ([a-z][^;.]*)', words(helptext.split('Exit status:')[1])))
        self.assertEqual(sorted(codes), ['0', '1', '2', '3', '4'])
        exit_section = words(page.split('\nEXIT STATUS\n')[1].split('\nENVIRONMENT\n')[0])
        for code, key in (('0', 'success'), ('1', 'the daemon reported a failure'), ('2', 'usage error'),
                          ('3', 'the daemon cannot be reached'), ('4', 'not authorized')):
            self.assertRegex(exit_section.lower(), r'\b%s %s' % (code, key))
            self.assertTrue(codes[code].lower().startswith(key), (code, codes[code]))

    def test_musicfsd_page_matches_help(self):
        helptext = help_text(('daemon', 'musicfsd'))
        _, page, _ = render('musicfsd.8')
        options = set(re.findall(r'(?<![\w-])(--[a-z][a-z-]+)\b', helptext))
        self.assertGreaterEqual(len(options), 8, options)
        for opt in options:
            self.assertIn(opt, page, 'option %s is not documented' % opt)
        for signame in re.findall(r'\bSIG[A-Z]+\b', helptext):
            self.assertIn(signame, page)
        for var in re.findall(r'\bMUSICFS_[A-Z_]+\b', helptext):
            self.assertIn(var, page)

    def test_config_page_documents_every_key(self):
        with open(os.path.join(SRC, 'daemon', 'config', 'config.c'), encoding='utf-8') as f:
            source = f.read()
        # The parser lists what it accepts, for its own error messages.
        lists = dict(re.findall(r'static const char (main_keys|origin_keys)\[\]\s*=\s*((?:\s*"[^"]*")+)', source))
        self.assertEqual(sorted(lists), ['main_keys', 'origin_keys'], 'config.c no longer lists its keys')
        keys = [k.strip() for v in lists.values() for k in ''.join(re.findall(r'"([^"]*)"', v)).split(',')]
        self.assertGreaterEqual(len(keys), 10, keys)
        _, page, _ = render('musicfsd.conf.5')
        for key in keys:
            self.assertRegex(page, r'(?m)^       %s=' % re.escape(key), 'key %s is not documented' % key)
        for section in ('[musicfsd]', '[origin "NAME"]'):
            self.assertIn(section, page)


if __name__ == '__main__':
    unittest.main(verbosity=2)
