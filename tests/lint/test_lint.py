#!/usr/bin/python3
"""Lint suite: the XML we ship is well-formed and valid against its DTD where the DTD is installed
(introspection, the bus policy, the polkit actions), the polkit action ids are the ones api/bus-api.h
names, every systemd unit (system and user) verifies with systemd-analyze, and the D-Bus activation
files name the bus name and the units they should."""
import configparser
import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

SRC = os.environ.get("MUSICFS_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MUSICFS_BUILD_ROOT", os.path.join(SRC, "build"))
DAEMON = os.path.join(BUILD, "daemon", "musicfsd")

BUS_NAME = "org.musicfs.Manager"
# Where Debian puts the DTDs (libdbus-1-dev and polkitd); validation is skipped without them.
BUSCONFIG_DTDS = ["/usr/share/xml/dbus-1/busconfig.dtd"]
POLKIT_DTDS = ["/usr/share/polkit-1/policyconfig-1.dtd"]

SYSTEM_UNITS = sorted(glob.glob(os.path.join(SRC, "units", "*.service")))
USER_UNITS = sorted(glob.glob(os.path.join(SRC, "units", "user", "*.service")))


def is_activation_file(path):
    with open(path, encoding="utf-8") as f:
        return "[D-BUS Service]" in f.read()


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_activation_file(path):
    p = configparser.ConfigParser(interpolation=None, strict=True)
    p.optionxform = str
    p.read(path, encoding="utf-8")
    return p["D-BUS Service"]


def first_existing(paths):
    return next((p for p in paths if os.path.exists(p)), None)


def xmllint(path, dtd=None):
    argv = ["xmllint", "--noout", "--nonet"]
    if dtd:
        argv += ["--dtdvalid", dtd]
    return subprocess.run(argv + [path], capture_output=True, text=True)


@unittest.skipUnless(shutil.which("xmllint"), "xmllint (libxml2-utils) not installed")
class XmlLint(unittest.TestCase):
    def test_xml_well_formed(self):
        files = (glob.glob(os.path.join(SRC, "introspection", "*.xml")) + glob.glob(os.path.join(SRC, "policy", "*.conf"))
                 + glob.glob(os.path.join(SRC, "policy", "*.policy")))
        self.assertTrue(files, "no XML files found")
        for f in files:
            r = xmllint(f)
            self.assertEqual(r.returncode, 0, f"{f}: {r.stderr}")

    def test_bus_policy(self):
        files = glob.glob(os.path.join(SRC, "policy", "*.conf"))
        self.assertTrue(files, "no bus policy found")
        dtd = first_existing(BUSCONFIG_DTDS)
        for f in files:
            with open(f, encoding="utf-8") as fh:
                self.assertIn('<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"', fh.read())
            if dtd:
                r = xmllint(f, dtd)
                self.assertEqual(r.returncode, 0, f"{f}: {r.stderr}")
            root = ET.parse(f).getroot()
            self.assertEqual(root.tag, "busconfig")
            # Only root may own the name; nobody else is allowed to own anything here.
            owners = [(p.get("user"), p.get("context"), a.get("own")) for p in root.iter("policy")
                      for a in p.findall("allow") if a.get("own") is not None]
            self.assertEqual(owners, [("root", None, BUS_NAME)], f)
            # The default context reaches the daemon only through named interfaces.
            for p in root.iter("policy"):
                if p.get("context") == "default":
                    for a in p.findall("allow"):
                        self.assertEqual(a.get("send_destination"), BUS_NAME, ET.tostring(a))
                        self.assertTrue(a.get("send_interface"), "default policy without send_interface: %s" % ET.tostring(a))
        if not dtd:
            print("busconfig.dtd not installed: bus policy checked for well-formedness and content only")

    def test_polkit_policy(self):
        files = glob.glob(os.path.join(SRC, "policy", "*.policy"))
        self.assertTrue(files, "no polkit policy found")
        dtd = first_existing(POLKIT_DTDS)
        with open(os.path.join(SRC, "api", "bus-api.h"), encoding="utf-8") as fh:
            header_ids = set(re.findall(r'#define\s+MUSICFS_POLKIT_ACTION_\w+\s+"([^"]+)"', fh.read()))
        self.assertTrue(header_ids, "api/bus-api.h names no MUSICFS_POLKIT_ACTION_*")
        ids = set()
        for f in files:
            if dtd:
                r = xmllint(f, dtd)
                self.assertEqual(r.returncode, 0, f"{f}: {r.stderr}")
            for action in ET.parse(f).getroot().iter("action"):
                ids.add(action.get("id"))
                self.assertTrue(action.findtext("description"), action.get("id"))
                self.assertTrue(action.findtext("message"), action.get("id"))
                defaults = {d.tag: d.text for d in action.find("defaults")}
                # Never without authentication, never for inactive or remote sessions.
                self.assertEqual(defaults.get("allow_any"), "no", action.get("id"))
                self.assertEqual(defaults.get("allow_inactive"), "no", action.get("id"))
                self.assertIn(defaults.get("allow_active"), ("auth_admin", "auth_admin_keep"), action.get("id"))
        self.assertEqual(ids, header_ids, "polkit actions and MUSICFS_POLKIT_ACTION_* differ")
        if not dtd:
            print("policyconfig-1.dtd not installed: polkit policy checked for well-formedness and content only")

    def test_introspection_documents_every_member(self):
        for f in glob.glob(os.path.join(SRC, "introspection", "*.xml")):
            text = read_text(f)
            root = ET.fromstring(text)
            for iface in root.iter("interface"):
                members = [m for m in iface if m.tag in ("method", "property", "signal")]
                self.assertTrue(members, f"{f}: interface {iface.get('name')} has no members")
                for m in members:
                    # rauc style: a doc comment right before each member
                    self.assertRegex(text, r"<!--[^>]*-->\s*<%s name=\"%s\"" % (m.tag, m.get("name")),
                                     f"{f}: {m.tag} {m.get('name')} has no doc comment")


@unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze not installed")
class UnitsVerify(unittest.TestCase):
    """systemd-analyze verify of every unit as installed, with ExecStart pointing at the binary we just
    built, and the Documentation= man pages looked up in man/ of this tree."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="musicfs-lint-")
        cls.manpath = os.path.join(cls.tmp, "man")
        for page in glob.glob(os.path.join(SRC, "man", "*.[1-8]")):
            section = os.path.join(cls.manpath, "man" + page.rsplit(".", 1)[1])
            os.makedirs(section, exist_ok=True)
            os.symlink(os.path.abspath(page), os.path.join(section, os.path.basename(page)))
        cls.runtime = os.path.join(cls.tmp, "runtime")     # the user manager wants XDG_RUNTIME_DIR
        os.makedirs(cls.runtime, mode=0o700)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def verify(self, unit, user):
        text = read_text(unit)
        self.assertIn("/usr/sbin/musicfsd", text, unit)
        text = text.replace("/usr/sbin/musicfsd", DAEMON)
        d = tempfile.mkdtemp(dir=self.tmp)
        dst = os.path.join(d, os.path.basename(unit))
        with open(dst, "w", encoding="utf-8") as out:
            out.write(text)
        env = dict(os.environ, XDG_RUNTIME_DIR=self.runtime)
        man = ["--man=no"]
        if os.path.isdir(self.manpath):
            env["MANPATH"] = self.manpath
            man = []
        r = subprocess.run(["systemd-analyze"] + (["--user"] if user else []) + man + ["verify", dst],
                           capture_output=True, text=True, env=env)
        # systemd-analyze also reports on units it pulls in (which may be absent here): only lines
        # about our own file count.
        ours = [l for l in (r.stdout + r.stderr).splitlines() if os.path.basename(unit) in l]
        self.assertEqual(ours, [], f"{unit}:\n" + "\n".join(ours))
        return r

    def test_system_units(self):
        units = [u for u in SYSTEM_UNITS if not is_activation_file(u)]
        self.assertTrue(units, "no units found")
        for u in units:
            self.verify(u, user=False)

    def test_user_units(self):
        units = [u for u in USER_UNITS if not is_activation_file(u)]
        self.assertTrue(units, "no user units found")
        for u in units:
            self.verify(u, user=True)

    def test_verify_can_fail(self):
        """The filter above would hide everything if systemd-analyze spoke of another file name."""
        unit = next(u for u in SYSTEM_UNITS if not is_activation_file(u))
        broken = os.path.join(self.tmp, os.path.basename(unit))
        with open(unit, encoding="utf-8") as f, open(broken, "w", encoding="utf-8") as out:
            out.write(f.read().replace("Type=notify", "Type=bogus"))
        with self.assertRaises(AssertionError):
            self.verify(broken, user=False)

    def test_no_mount_namespace(self):
        # These would put the mount in a namespace of its own, invisible outside the service.
        forbidden = re.compile(r"^(ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|PrivateMounts|MountFlags|"
                               r"ReadWritePaths|ReadOnlyPaths|InaccessiblePaths|TemporaryFileSystem|BindPaths|"
                               r"BindReadOnlyPaths|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|"
                               r"ProtectControlGroups|ProtectProc|ProcSubset|RootDirectory|RootImage)=", re.M)
        for u in SYSTEM_UNITS + USER_UNITS:
            if not is_activation_file(u):
                with open(u, encoding="utf-8") as f:
                    self.assertIsNone(forbidden.search(f.read()), u)

    def test_system_unit_limits_and_crash_cleanup(self):
        # Original design 5.8 (resource limits), 2.7/3.7 (a killed daemon's mount is detached),
        # 3.1 (watchdog), 2.10 (notify).
        unit = next(u for u in SYSTEM_UNITS if u.endswith("musicfsd.service"))
        with open(unit, encoding="utf-8") as f:
            text = f.read()
        for line in ("Type=notify", "WatchdogSec=30s", "Restart=on-failure", "LimitNOFILE=65536",
                     "MemoryHigh=2G", "MemoryMax=4G", "TasksMax=4096", "OOMScoreAdjust=200",
                     "IOSchedulingClass=best-effort", "IOSchedulingPriority=4",
                     "ExecStopPost=-/usr/bin/fusermount3 -u -z ${MUSICFS_MOUNTPOINT}"):
            self.assertRegex(text, r"(?m)^" + re.escape(line) + r"$", f"{unit}: missing {line}")

    def test_user_unit_keeps_setuid_fusermount_usable(self):
        # Without root, libfuse mounts through the setuid fusermount3: NoNewPrivileges= would break it.
        for u in USER_UNITS:
            if not is_activation_file(u):
                with open(u, encoding="utf-8") as f:
                    self.assertNotRegex(f.read(), r"(?m)^(NoNewPrivileges=yes|RestrictSUIDSGID=yes)", u)


class ActivationFiles(unittest.TestCase):
    def test_system_activation_goes_through_systemd(self):
        f = os.path.join(SRC, "units", "org.musicfs.Manager.service")
        s = read_activation_file(f)
        self.assertEqual(s["Name"], BUS_NAME)
        self.assertEqual(s["Exec"], "/bin/false")
        self.assertEqual(s["User"], "root")
        self.assertEqual(s["SystemdService"], "musicfsd.service")
        self.assertTrue(os.path.exists(os.path.join(SRC, "units", s["SystemdService"])))

    def test_session_activation(self):
        f = os.path.join(SRC, "units", "user", "org.musicfs.Manager.service")
        s = read_activation_file(f)
        self.assertEqual(s["Name"], BUS_NAME)
        self.assertNotIn("User", s)
        self.assertIn("/usr/sbin/musicfsd --user", s["Exec"])
        self.assertEqual(s["SystemdService"], "musicfsd.service")
        self.assertTrue(os.path.exists(os.path.join(SRC, "units", "user", s["SystemdService"])))
        with open(os.path.join(SRC, "units", "user", s["SystemdService"]), encoding="utf-8") as fh:
            self.assertRegex(fh.read(), r"(?m)^ExecStart=/usr/sbin/musicfsd --user ")
        # The bus runs Exec= through its own parser: the shell must get one argument.
        if shutil.which("sh"):
            r = subprocess.run(["sh", "-n", "-c", s["Exec"].split("-c ", 1)[1].strip("'")], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
