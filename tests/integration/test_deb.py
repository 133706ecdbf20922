#!/usr/bin/env python3
"""The Debian package: cpack -G DEB builds it from this build tree; dpkg -i
installs it (dependencies satisfied, binaries, unit, man pages, example
config in place; the unit passes systemd-analyze verify where systemd is
installed); it follows Debian's conventions (a DEP-5 copyright file, a
changelog.Debian.gz whose top entry is the package's version, man pages and
changelog compressed with gzip -9n, the unit enabled by deb-systemd-helper,
lintian without errors or warnings where lintian is installed), and its
config listens on 127.0.0.1 only; the installed /usr/bin/thumbnail_server
started with the installed config (CI has no systemd as PID 1) answers
health checks, names its processes' roles in ps, and makes a real thumbnail
for the installed thumbnail_client; dpkg -r removes everything but the
conffile, dpkg --purge that too and the unit's enable links.

The package is built from the release configuration (TN_TESTING=OFF, no
sanitizer), never from the test tree: the test configures and builds that tree
itself, in $TN_RELEASE_BUILD_DIR (default <build dir>/release-tree; incremental
on a second run), checks that the test-only hooks are not compiled in, smoke-
tests its binaries (--version, a real thumbnail through a server started from
the tree), and only then runs cpack on it.

Needs root and dpkg; skipped with a message otherwise, and when a
thumbnail-server package is already installed (this test must not replace
or remove an operator's install). Label "deb", RUN_SERIAL (it changes the
system's package database)."""
import glob
import gzip
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness as h

PKG = "thumbnail-server"
DOC = "/usr/share/doc/" + PKG
MAN = "/usr/share/man/man1/%s.1.gz"
FILES = ["/usr/bin/thumbnail_server", "/usr/bin/thumbnail_client",
         "/usr/lib/systemd/system/thumbnail_server.service",
         MAN % "thumbnail_server", MAN % "thumbnail_client",
         DOC + "/copyright", DOC + "/changelog.Debian.gz",
         "/etc/thumbnail_server/thumbnail_server.conf"]
CONF = "/etc/thumbnail_server/thumbnail_server.conf"
# What deb-systemd-helper enable (postinst) links, and mask (postrm remove) creates.
ENABLE_LINK = "/etc/systemd/system/multi-user.target.wants/thumbnail_server.service"
MASK_LINK = "/etc/systemd/system/thumbnail_server.service"


def installed():
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PKG], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    return r.returncode == 0 and "ok installed" in r.stdout


def run(cmd, **kw):
    h.log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s" % (" ".join(cmd), r.returncode, r.stdout))
    return r.stdout


def gunzip_n(path):
    """The text of a file compressed the reproducible way (gzip -9n): no file name and
    no time stamp in the header (RFC 1952: FLG bit 3, MTIME bytes 4-7)."""
    with open(path, "rb") as f:
        head = f.read(10)
    if head[:2] != b"\x1f\x8b":
        raise AssertionError(path + " is not gzip'd")
    if head[3] & 0x08 or head[4:8] != b"\0\0\0\0":
        raise AssertionError("%s keeps a name or a time stamp (not gzip -n): %r" % (path, head))
    with gzip.open(path, "rt") as f:
        return f.read()


def cmdline_title(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().rstrip(b"\0").decode()


@unittest.skipUnless(os.geteuid() == 0, "not root: dpkg -i needs root (CI runs as root)")
@unittest.skipUnless(shutil.which("dpkg") and shutil.which("cpack"), "needs dpkg and cpack")
class DebPackage(unittest.TestCase):
    def setUp(self):
        if installed():
            self.skipTest("a %s package is already installed; not touching it" % PKG)
        self.tmp = tempfile.mkdtemp(prefix="tn-deb-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.addCleanup(self.purge)  # whatever happens, leave the machine as it was

    def purge(self):
        if installed() or subprocess.run(["dpkg-query", "-W", PKG], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL).returncode == 0:
            subprocess.run(["dpkg", "--purge", PKG], stdout=subprocess.DEVNULL)

    def release_tree(self):
        """Configure and build the release tree; returns its directory."""
        rel = os.environ.get("TN_RELEASE_BUILD_DIR") or os.path.join(h.BUILD_DIR, "release-tree")
        t0 = time.monotonic()
        run(["cmake", "-S", h.SOURCE_DIR, "-B", rel, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
             "-DTN_TESTING=OFF", "-DTN_SANITIZE=OFF", "-DTN_FUZZ=OFF"])
        run(["cmake", "--build", rel, "-j2"])
        h.log("release tree %s built in %.1f s" % (rel, time.monotonic() - t0))
        with open(os.path.join(rel, "CMakeCache.txt")) as f:
            cache = f.read()
        self.assertIn("TN_TESTING:BOOL=OFF", cache)
        server = os.path.join(rel, "src", "server", "thumbnail_server")
        client = os.path.join(rel, "src", "client", "thumbnail_client")
        for b in (server, client):
            blob = h.read_bytes(b)
            self.assertNotIn(b"tn-test-sandbox-violation", blob, b + ": test hooks compiled in")
            self.assertNotIn(b"libasan.so", blob, b + ": sanitized")
            self.assertRegex(run([b, "--version"]), r"\d+\.\d+")
        return rel, server, client

    def smoke(self, server, client):
        """The release tree's own server and client make a real thumbnail."""
        srv = h.Server(workers=1, binary=server)
        self.addCleanup(srv.cleanup)
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmp)
        out = os.path.join(self.tmp, "smoke-out")
        r = subprocess.run([client, "--server", srv.addr, inp, out], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(h.png_size(os.path.join(out, "h264.png")), (320, 180))
        self.assertEqual(srv.stop(), 0)

    def build_deb(self):
        rel, server, client = self.release_tree()
        self.smoke(server, client)
        t0 = time.monotonic()
        run(["cpack", "-G", "DEB", "-B", self.tmp, "--config",
             os.path.join(rel, "CPackConfig.cmake")])
        debs = glob.glob(os.path.join(self.tmp, PKG + "_*.deb"))
        self.assertEqual(len(debs), 1, os.listdir(self.tmp))
        h.log("cpack: %.1f s, %d bytes" % (time.monotonic() - t0, os.path.getsize(debs[0])))
        return debs[0]

    def lintian(self, deb):
        if not shutil.which("lintian"):
            h.log("NOTE: lintian is not installed: the package's lintian check did not run")
            return
        r = subprocess.run(["lintian", "--pedantic", deb], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        h.log("lintian:\n" + r.stdout)
        self.assertEqual(re.findall(r"^[EW]: .*", r.stdout, re.M), [], r.stdout)
        self.assertEqual(r.returncode, 0, r.stdout)

    def check_conventions(self, version):
        """What Debian policy asks of the installed files."""
        with open(DOC + "/copyright") as f:
            copyright = f.read()
        self.assertTrue(copyright.startswith(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"))
        self.assertRegex(copyright, r"(?m)^Files: \*\nCopyright: .+\nLicense: Apache-2.0$")
        self.assertIn("/usr/share/common-licenses/Apache-2.0", copyright)
        changelog = gunzip_n(DOC + "/changelog.Debian.gz")
        self.assertTrue(changelog.startswith("%s (%s) " % (PKG, version)), changelog)
        self.assertRegex(changelog, r"\n -- .+ <.+>  \w{3}, \d\d \w{3} \d{4} [0-9:]{8} [+-]\d{4}\n")
        for prog in ("thumbnail_server", "thumbnail_client"):
            page = gunzip_n(MAN % prog)
            self.assertFalse(os.path.exists("/usr/share/man/man1/%s.1" % prog))
            # The header names the program and its version, nothing more: that is the
            # page's footer, which man lays out in a fixed width.
            self.assertRegex(page, r'(?m)^\.TH %s "1" "[A-Z][a-z]+ \d{4}" "%s %s" "User Commands"$'
                             % (prog.upper(), prog, re.escape(version.rsplit("-", 1)[0])))
            if shutil.which("man"):
                text = run(["man", "-P", "cat", prog], env=dict(os.environ, MANWIDTH="80"))
                footer = text.rstrip("\n").rsplit("\n", 1)[-1]
                self.assertRegex(footer, r"^%s \d+\.\d+\.\d+ +[A-Z][a-z]+ \d{4} +%s\(1\)$"
                                 % (prog, prog.upper()))
        # The packaged config serves this machine only; the network is a deliberate edit.
        with open(CONF) as f:
            listen = re.findall(r"^listen\s*=\s*(\S+)", f.read(), re.M)
        self.assertEqual(listen, ["127.0.0.1:50051"])
        # postinst enabled the unit the Debian way (even with no systemd running).
        self.assertTrue(os.path.exists(ENABLE_LINK), ENABLE_LINK + ": unit not enabled")
        self.assertEqual(os.path.basename(os.readlink(ENABLE_LINK)), "thumbnail_server.service")

    def test_install_start_health_uninstall(self):
        deb = self.build_deb()
        info = run(["dpkg-deb", "-I", deb])
        self.assertRegex(info, r"Depends:.*libgrpc", "dpkg-shlibdeps found no dependencies")
        self.assertIn("Package: " + PKG, info)
        version = re.search(r"(?m)^ Version: (\S+)$", info).group(1)
        self.assertIn("-", version)  # a Debian revision: changelog.Debian, not changelog
        self.lintian(deb)

        run(["dpkg", "-i", deb])
        self.assertTrue(installed())
        for f in FILES:
            self.assertTrue(os.path.isfile(f), f + " not installed")
        self.check_conventions(version)
        with open(FILES[2]) as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/bin/thumbnail_server --config " + CONF, unit)
        self.assertIn("Type=notify", unit)
        if shutil.which("systemd-analyze"):
            run(["systemd-analyze", "verify", FILES[2]])
        if shutil.which("man"):
            self.assertIn("--config", run(["man", "-P", "cat", "thumbnail_server"],
                                          env=dict(os.environ, MANWIDTH="100")))

        # Start the installed server with the installed config, as the unit does (a free
        # port instead of the config's 50051: the machine may be serving on that one).
        port = h.free_port()
        addr = "127.0.0.1:%d" % port
        with open(os.path.join(self.tmp, "server.log"), "w") as err:
            proc = subprocess.Popen(["/usr/bin/thumbnail_server", "--config", CONF, "--listen",
                                     addr, "--workers", "1"] + h.server_default_args(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        h._LIVE_GROUPS.add(proc.pid)
        try:
            deadline = time.monotonic() + 30
            while True:
                r = subprocess.run(["/usr/bin/thumbnail_client", "--health", "--server", addr],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if r.returncode == 0:
                    break
                self.assertIsNone(proc.poll(), "installed server exited")
                self.assertLess(time.monotonic(), deadline, "not healthy: " + r.stdout)
                time.sleep(0.2)
            self.assertEqual(cmdline_title(proc.pid), "thumbnail_server: master")
            inp = h.make_input_dir(["h264.mp4"], parent=self.tmp)
            out = os.path.join(self.tmp, "out")
            r = subprocess.run(["/usr/bin/thumbnail_client", "--server", addr, inp, out],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout)
            self.assertEqual(h.png_size(os.path.join(out, "h264.png")), (320, 180))
        finally:
            os.kill(proc.pid, signal.SIGQUIT)  # the unit's KillSignal: drain, then exit 0
            rc = proc.wait(30)
            h._LIVE_GROUPS.discard(proc.pid)
        with open(os.path.join(self.tmp, "server.log")) as f:
            self.assertEqual(rc, 0, f.read())

        run(["dpkg", "-r", PKG])
        self.assertFalse(installed())
        for f in FILES[:-1]:
            self.assertFalse(os.path.exists(f), f + " left after dpkg -r")
        self.assertTrue(os.path.exists(CONF), "dpkg -r must keep the conffile")
        self.assertFalse(os.path.exists(DOC), DOC + " left after dpkg -r")
        run(["dpkg", "--purge", PKG])
        self.assertFalse(os.path.exists(CONF), CONF + " left after dpkg --purge")
        self.assertFalse(os.path.exists(os.path.dirname(CONF)))
        for link in (ENABLE_LINK, MASK_LINK):
            self.assertFalse(os.path.lexists(link), link + " left after dpkg --purge")


if __name__ == "__main__":
    h.main()
