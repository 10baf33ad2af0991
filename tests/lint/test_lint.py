#!/usr/bin/python3
"""Lint suite: the introspection XML is well-formed, every unit verifies with systemd-analyze."""
import glob
import os
import shutil
import subprocess
import tempfile
import unittest

SRC = os.environ.get("MUSICFS_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MUSICFS_BUILD_ROOT", os.path.join(SRC, "build"))


class Lint(unittest.TestCase):
    def test_xml_well_formed(self):
        files = glob.glob(os.path.join(SRC, "introspection", "*.xml")) + glob.glob(os.path.join(SRC, "policy", "*.conf"))
        self.assertTrue(files, "no XML files found")
        for f in files:
            r = subprocess.run(["xmllint", "--noout", f], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, f"{f}: {r.stderr}")

    def test_introspection_documents_every_member(self):
        import xml.etree.ElementTree as ET
        for f in glob.glob(os.path.join(SRC, "introspection", "*.xml")):
            text = open(f, encoding="utf-8").read()
            root = ET.fromstring(text)
            for iface in root.iter("interface"):
                members = [m for m in iface if m.tag in ("method", "property", "signal")]
                self.assertTrue(members, f"{f}: interface {iface.get('name')} has no members")
                for m in members:
                    # rauc style: a doc comment right before each member
                    self.assertRegex(text, r"<!--[^>]*-->\s*<%s name=\"%s\"" % (m.tag, m.get("name")),
                                     f"{f}: {m.tag} {m.get('name')} has no doc comment")

    @unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze not installed")
    def test_units_verify(self):
        units = glob.glob(os.path.join(SRC, "units", "*.service"))
        self.assertTrue(units, "no units found")
        daemon = os.path.join(BUILD, "daemon", "musicfsd")
        with tempfile.TemporaryDirectory() as tmp:
            for u in units:
                # verify the unit as installed, with ExecStart pointing at the binary we just built
                text = open(u, encoding="utf-8").read().replace("/usr/sbin/musicfsd", daemon)
                dst = os.path.join(tmp, os.path.basename(u))
                with open(dst, "w", encoding="utf-8") as out:
                    out.write(text)
                r = subprocess.run(["systemd-analyze", "verify", dst], capture_output=True, text=True)
                # systemd-analyze also reports on units it pulls in (which may be absent here):
                # only lines about our own file count.
                ours = [l for l in (r.stdout + r.stderr).splitlines() if os.path.basename(u) in l]
                self.assertEqual(ours, [], f"{u}:\n" + "\n".join(ours))


if __name__ == "__main__":
    unittest.main()
