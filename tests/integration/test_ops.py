#!/usr/bin/env python3
"""Running the server as a service: --config FILE drives a real server (its
listen address, workers and log file come from the file, flags override it,
a bad line stops the start with FILE:LINE and exit 2); the shipped example
deploy/thumbnail_server.conf parses and documents every flag of --help; and
the systemd readiness notification (Type=notify) arrives on $NOTIFY_SOCKET
only once the server answers health checks with SERVING; `cmake --install
--prefix` lays out binaries, unit, man pages and config, with the unit's
paths following the prefix, and the installed unit passes systemd-analyze
verify; `ps` shows each process's role (/proc/PID/cmdline and comm), across a
reload, and also when argv[] is too short for the title and the environment
has to make room."""
import gzip
import shutil
import os
import re
import signal
import socket
import subprocess
import time
import unittest

import harness as h

EXAMPLE_CONF = os.path.join(h.SOURCE_DIR, "deploy", "thumbnail_server.conf")


class ConfigFile(h.ServerTestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        pass  # each test starts its own server

    def start(self, conf_text, extra=(), env=None):
        d = self.tmpdir()
        conf = os.path.join(d, "server.conf")
        with open(conf, "w") as f:
            f.write(conf_text.format(dir=d))
        cmd = [h.SERVER_BIN, "--config", conf] + h.server_default_args() + list(extra)
        e = dict(os.environ)
        e.pop("NUM_WORKERS", None)
        e.update(env or {})
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=e, start_new_session=True, text=True)
        h._LIVE_GROUPS.add(p.pid)
        self.addCleanup(self.stop, p)
        return p, d

    def stop(self, p):
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in (p.stdout, p.stderr):
            if f:
                if not f.closed:  # what the server printed: sanitizer reports fail the run
                    h.note_sanitizer_output(f.read(), "server %s" % " ".join(p.args[:3]))
                f.close()
        h._LIVE_GROUPS.discard(p.pid)

    def wait_serving(self, p, addr, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                self.fail("server exited with %d: %s" % (p.returncode, p.communicate()))
            try:
                if h.health_check(addr, timeout=1.0) == "SERVING":
                    return
            except h.grpc.RpcError:
                pass
            time.sleep(0.1)
        self.fail("server on %s not SERVING after %d s" % (addr, timeout))

    def test_server_runs_from_config_file(self):
        port = h.free_port()
        p, d = self.start("# from a file\n"
                          "listen = 127.0.0.1:%d   # the only address\n"
                          "workers = 1\n"
                          "spool-dir = {dir}\n"
                          "log-file = \"{dir}/server log.txt\"\n"
                          "log-level = debug\n" % port)
        addr = "127.0.0.1:%d" % port
        self.wait_serving(p, addr)
        thumbs = h.generate(addr, path=h.video("h264.mp4"), max_width=160)
        self.assertEqual((thumbs[0].header.width, thumbs[0].header.height), (160, 90))
        with open(os.path.join(d, "server log.txt")) as f:
            text = f.read()
        self.assertIn("listening on %s" % addr, text)
        self.assertEqual(len(re.findall(r"spawned worker#", text)), 1, text)
        self.assertRegex(text, r" DEBUG ")  # log-level = debug took effect

    def test_flags_override_file(self):
        file_port, flag_port = h.free_port(), h.free_port()
        p, d = self.start("listen = 127.0.0.1:%d\nworkers = 1\nspool-dir = {dir}\n" % file_port,
                          extra=["--listen", "127.0.0.1:%d" % flag_port])
        self.wait_serving(p, "127.0.0.1:%d" % flag_port)
        with self.assertRaises(h.grpc.RpcError):
            h.health_check("127.0.0.1:%d" % file_port, timeout=1.0)

    def test_bad_line_is_exit_2_with_file_and_line(self):
        p, d = self.start("workers = 1\n\nmax-upload-bytes = lots\n")
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 2, err)
        conf = os.path.join(d, "server.conf")
        self.assertIn("%s:3: --max-upload-bytes 'lots'" % conf, err)
        p, d = self.start("wokrers = 1\n")
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 2, err)
        self.assertIn("server.conf:1: unknown key 'wokrers'", err)

    def test_example_config_documents_every_flag(self):
        """Every --help flag (but help, version, config) appears as a key in the example,
        and the example, taken as is, is a valid configuration."""
        out = subprocess.run([h.SERVER_BIN, "--help"], stdout=subprocess.PIPE, text=True,
                             check=True).stdout
        flags = set(re.findall(r"^\s+(?:-\w, )?--([a-z][a-z0-9-]*)", out, re.M))
        flags -= {"help", "version", "config"}
        self.assertGreater(len(flags), 10, out)
        with open(EXAMPLE_CONF) as f:
            text = f.read()
        keys = set(re.findall(r"^#?([a-z][a-z0-9-]*) = ", text, re.M))
        self.assertEqual(flags - keys, set(), "flags missing from deploy/thumbnail_server.conf")
        self.assertEqual(keys - flags, set(), "keys in the example that are not flags")
        # Taken as is (listen on a free port instead of 50051): it starts and serves.
        port = h.free_port()
        p, d = self.start(text.replace("{", "{{").replace("}", "}}"),
                          extra=["--listen", "127.0.0.1:%d" % port, "--workers", "1"])
        self.wait_serving(p, "127.0.0.1:%d" % port)


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read()


def title(pid):
    """The process title: /proc/PID/cmdline, which must hold nothing after it but NULs
    (no leftover of the original arguments)."""
    raw = cmdline(pid)
    text = raw.rstrip(b"\0")
    if b"\0" in text:
        raise AssertionError("pid %d: more than a title in its cmdline: %r" % (pid, raw))
    return text.decode()


def comm(pid):
    with open("/proc/%d/comm" % pid) as f:
        return f.read().rstrip("\n")


class ProcessTitles(h.ServersTestCase):
    def titles(self, pid):
        """{title: comm} of pid's live children; None while one is coming or going."""
        try:
            return {title(k): comm(k) for k in h.children(pid)}
        except FileNotFoundError:
            return None

    def serving(self, addr):
        def ok():
            try:
                return h.health_check(addr, timeout=1.0) == "SERVING"
            except h.grpc.RpcError:
                return False
        h.wait_for(ok, 15, what="SERVING on " + addr)

    def test_every_role_in_ps(self):
        srv = self.server(workers=2, metrics=True)
        self.assertEqual(title(srv.pid), "thumbnail_server: master")
        # The master keeps the program's name as comm (the pidfile check compares it).
        self.assertEqual(comm(srv.pid), "thumbnail_serve")
        want = {"thumbnail_server: front (gen 1)": "tn: front",
                "thumbnail_server: worker 0 (gen 1)": "tn: worker 0",
                "thumbnail_server: worker 1 (gen 1)": "tn: worker 1",
                "thumbnail_server: metrics": "tn: metrics"}
        h.wait_for(lambda: self.titles(srv.pid) == want, 15,
                   what="titles %s (got %s)" % (want, self.titles(srv.pid)))
        self.assertEqual(title(srv.front_pid()), "thumbnail_server: front (gen 1)")
        self.assertEqual(title(srv.metrics_pid()), "thumbnail_server: metrics")
        # A reload: the new generation's processes say so; the metrics process stays.
        os.kill(srv.pid, signal.SIGHUP)
        want = {"thumbnail_server: front (gen 2)": "tn: front",
                "thumbnail_server: worker 0 (gen 2)": "tn: worker 0",
                "thumbnail_server: worker 1 (gen 2)": "tn: worker 1",
                "thumbnail_server: metrics": "tn: metrics"}
        h.wait_for(lambda: self.titles(srv.pid) == want, 30, what="titles after a reload")
        self.assertEqual(title(srv.pid), "thumbnail_server: master")
        self.serving(srv.addr)

    def test_short_argv_takes_room_from_the_environment(self):
        """argv[] here ("ts --listen 127.0.0.1:PORT") is shorter than a worker's title:
        the title runs on into the environment's memory, and the server still reads its
        environment (NUM_WORKERS=1 takes effect)."""
        if h.server_default_args():
            # "ASan build: " is on the CI allow-list: the plain pass runs this test
            self.skipTest("%sthis build's servers need %s, which makes argv[] long enough for "
                          "every title" % ("ASan build: " if h.sanitized() else "",
                                           " ".join(h.server_default_args())))
        port = h.free_port()
        args = ["ts", "--listen", "127.0.0.1:%d" % port]
        self.assertLess(len("\0".join(args)) + 1, len("thumbnail_server: worker 0 (gen 1)"))
        d = h.tempfile.mkdtemp(prefix="tn-title-")
        self.addCleanup(h.shutil.rmtree, d, True)
        env = {"NUM_WORKERS": "1", "TMPDIR": d, "PATH": "/usr/bin:/bin"}
        with open(os.path.join(d, "server.log"), "w") as err:
            p = subprocess.Popen(args, executable=h.SERVER_BIN, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        h._LIVE_GROUPS.add(p.pid)
        try:
            want = {"thumbnail_server: front (gen 1)", "thumbnail_server: worker 0 (gen 1)"}
            h.wait_for(lambda: p.poll() is not None or set(self.titles(p.pid) or ()) == want,
                       15, what="titles %s (got %s)" % (want, self.titles(p.pid)))
            self.assertIsNone(p.poll(), "server exited")
            self.assertEqual(title(p.pid), "thumbnail_server: master")
            self.serving("127.0.0.1:%d" % port)
        finally:
            os.kill(p.pid, signal.SIGTERM)
            rc = p.wait(30)
            h._LIVE_GROUPS.discard(p.pid)
        with open(os.path.join(d, "server.log")) as f:
            self.assertEqual(rc, 0, f.read())


class SystemdNotify(unittest.TestCase):
    def test_ready_only_when_serving(self):
        """Like systemd: a datagram socket in $NOTIFY_SOCKET. READY=1 must come, and when it
        does the server must already answer SERVING (systemctl start returns then)."""
        d = h.tempfile.mkdtemp(prefix="tn-notify-")
        self.addCleanup(h.shutil.rmtree, d, True)
        sock_path = os.path.join(d, "notify.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.bind(sock_path)
        srv = h.Server(workers=1, env={"NOTIFY_SOCKET": sock_path}, start=False)
        self.addCleanup(srv.cleanup)
        port = h.free_port()
        srv.port = port
        cmd = [h.SERVER_BIN, "--listen", srv.addr, "--workers", "1", "--spool-dir", srv.spool,
               "--log-file", srv.log_path] + h.server_default_args()
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        srv.out = open(os.path.join(srv.tmp, "server.out"), "ab")
        srv.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=srv.out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        h._LIVE_GROUPS.add(srv.proc.pid)
        s.settimeout(30)
        msg = s.recv(4096).decode()
        self.assertIn("READY=1", msg.split("\n"))
        self.assertIn("STATUS=serving on %s" % srv.addr, msg)
        # At READY=1 the server already serves: no retry loop here.
        self.assertEqual(h.health_check(srv.addr, timeout=5.0), "SERVING")
        self.assertEqual(srv.stop(), 0)


class Install(unittest.TestCase):
    def test_cmake_install_layout_and_unit(self):
        d = h.tempfile.mkdtemp(prefix="tn-install-")
        self.addCleanup(h.shutil.rmtree, d, True)
        prefix = os.path.join(d, "usr")
        r = subprocess.run(["cmake", "--install", h.BUILD_DIR, "--prefix", prefix],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        unit = os.path.join(prefix, "lib", "systemd", "system", "thumbnail_server.service")
        conf = os.path.join(prefix, "etc", "thumbnail_server", "thumbnail_server.conf")
        for f in ("bin/thumbnail_server", "bin/thumbnail_client",
                  "share/man/man1/thumbnail_server.1.gz", "share/man/man1/thumbnail_client.1.gz",
                  "share/doc/thumbnail-server/copyright",
                  "share/doc/thumbnail-server/changelog.Debian.gz"):
            self.assertTrue(os.path.isfile(os.path.join(prefix, f)), f)
        with open(unit) as f:
            text = f.read()
        self.assertIn("ExecStart=%s/bin/thumbnail_server --config %s\n" % (prefix, conf), text)
        with open(conf) as f, open(EXAMPLE_CONF) as g:
            self.assertEqual(f.read(), g.read())
        # The man page is the --help of this build, plus doc/thumbnail_server.h2m.
        with gzip.open(os.path.join(prefix, "share/man/man1/thumbnail_server.1.gz"), "rt") as f:
            man = f.read()
        self.assertIn("config", man)
        self.assertIn("CONFIGURATION FILE", man)
        # Each page's footer (the .TH source field) is the program and its version alone.
        version = subprocess.run([h.SERVER_BIN, "--version"], stdout=subprocess.PIPE, text=True,
                                 check=True).stdout.split()[1]
        for prog in ("thumbnail_server", "thumbnail_client"):
            with gzip.open(os.path.join(prefix, "share/man/man1/%s.1.gz" % prog), "rt") as f:
                self.assertRegex(f.read(), r'(?m)^\.TH %s "1" "[^"]+" "%s %s" "User Commands"$'
                                 % (prog.upper(), prog, re.escape(version)))
        if shutil.which("systemd-analyze"):
            r = subprocess.run(["systemd-analyze", "verify", unit], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, MANPATH=os.path.join(prefix, "share", "man")))
            self.assertEqual(r.returncode, 0, r.stdout)
            self.assertEqual(r.stdout.strip(), "", r.stdout)


if __name__ == "__main__":
    h.main()
