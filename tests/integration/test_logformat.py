#!/usr/bin/env python3
"""--log-format and the access log, and syslog for a daemon without --log-file.

* json: every line of the log file parses with json.loads and carries ts,
  level, role, pid and msg; the access line of each Generate call carries
  method, peer, file, bytes_in, bytes_out, thumbnails, duration_ms, status and
  message with the values of that call.
* text (the default): one access line per call with the same fields.
* syslog: a daemon started without --log-file logs through syslog(3), which
  writes to /dev/log. The test runs the server in a private mount namespace
  (unshare -m) whose /dev holds a datagram socket of the test's own at
  /dev/log, so it reads exactly what the server sent: facility daemon, ident
  thumbnail_server[pid], the access line. Needs root (mount); skipped otherwise.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import harness as h

ACCESS_FIELDS = {"method", "peer", "file", "bytes_in", "bytes_out", "thumbnails",
                 "duration_ms", "status", "message"}


class JsonFormat(h.ServerTestCase):
    workers = 1
    # debug: every kind of line, and the access lines of health checks, in JSON
    server_extra = ("--log-format", "json", "--log-level", "debug")

    def test_every_line_is_json_and_access_lines_carry_the_call(self):
        path = h.video("h264.mp4")
        thumbs = h.generate(self.server.addr, path=path, times=["10%", "50%"])
        with self.assertRaises(h.grpc.RpcError):
            # quotes, a backslash and a newline in the name: the line must still parse
            h.generate(self.server.addr, data=b"\0" * 5000, file_name='we"ird\\name\n.mp4')
        with self.assertRaises(h.grpc.RpcError):
            # quotes, backslashes and non-ASCII, as long as a name may be
            h.generate(self.server.addr, data=b"\0" * 5000, file_name='"\\\u00e9' * 1500)
        srv = type(self).server
        srv.stop()  # every process has written its last line
        type(self).server = None
        try:
            with open(srv.log_path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        finally:
            srv.cleanup()
        self.assertGreater(len(lines), 5)
        objs = []
        for line in lines:
            o = json.loads(line)  # raises on any line that is not JSON
            self.assertLessEqual(len(line.encode()) + 1, 4096, line[:200])
            self.assertTrue({"ts", "level", "role", "pid", "msg"} <= set(o), line)
            self.assertRegex(o["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIn(o["level"], ("error", "warn", "info", "debug"))
            self.assertIsInstance(o["pid"], int)
            objs.append(o)
        roles = {o["role"] for o in objs}
        self.assertTrue({"master", "front", "worker#0"} <= roles, roles)
        access = [o for o in objs if o.get("type") == "access"
                  and o["method"] == "thumbnail.v1.Thumbnailer/Generate"]
        self.assertEqual(len(access), 3, access)
        checks = [o for o in objs if o.get("type") == "access"
                  and o["method"] == "grpc.health.v1.Health/Check"]
        self.assertTrue(checks, "no access line for the harness's health checks")
        for c in checks:
            self.assertEqual((c["level"], c["status"], c["bytes_in"]), ("debug", "OK", 0))
            self.assertRegex(c["peer"], r"^ipv4:127\.0\.0\.1:\d+$")
        self.assertTrue(any(o["level"] == "debug" and o.get("type") != "access" for o in objs))
        # the front cuts a long name; what is left comes through whole and UTF-8
        cut = [o for o in access if '?\\\u00e9' * 20 in o["file"]]
        self.assertEqual(len(cut), 1, [o["file"][:40] for o in access])
        self.assertTrue(ACCESS_FIELDS <= set(cut[0]), cut[0])
        ok, bad = [o for o in access if o is not cut[0]]
        self.assertTrue(ACCESS_FIELDS <= set(ok), ok)
        self.assertEqual(ok["role"], "front")
        self.assertEqual(ok["method"], "thumbnail.v1.Thumbnailer/Generate")
        self.assertRegex(ok["peer"], r"^ipv4:127\.0\.0\.1:\d+$")
        self.assertEqual(ok["file"], "h264.mp4")
        self.assertEqual(ok["bytes_in"], os.path.getsize(path))
        self.assertEqual(ok["bytes_out"], sum(t.header.size for t in thumbs))
        self.assertEqual(ok["thumbnails"], 2)
        self.assertGreater(ok["duration_ms"], 0)
        self.assertEqual((ok["status"], ok["message"]), ("OK", ""))
        self.assertEqual(bad["status"], "INVALID_ARGUMENT")
        self.assertRegex(bad["message"], r"not a video")
        self.assertEqual(bad["bytes_in"], 5000)
        self.assertEqual((bad["bytes_out"], bad["thumbnails"]), (0, 0))
        # the front turns quotes and control characters into '?'; the rest is escaped
        self.assertEqual(bad["file"], "we?ird\\name?.mp4")


class TextFormat(h.ServerTestCase):
    workers = 1

    def test_access_line(self):
        path = h.video("vp9.webm")
        thumbs = h.generate(self.server.addr, path=path)
        line = h.wait_for(lambda: re.search(r"^\S+ INFO front \d+: Generate .*$",
                                            self.server.log_text(), re.M), 10,
                          what="the access line").group(0)
        self.assertRegex(line, r'peer=ipv4:127\.0\.0\.1:\d+ file="vp9\.webm" in=%d out=%d '
                         r'thumbnails=1 ms=[\d.]+ status=OK$'
                         % (os.path.getsize(path), thumbs[0].header.size))
        # health checks are logged at debug only: none at the default info level
        self.assertNotRegex(self.server.log_text(), r"Check peer=")

    def test_unknown_method_line(self):
        with h.channel(self.server.addr) as ch:
            with self.assertRaises(h.grpc.RpcError):
                ch.unary_unary("/no.such.Service/Do")(b"", timeout=5)
        line = h.wait_for(lambda: re.search(r"^\S+ INFO front \d+: no\.such\.Service/Do .*$",
                                            self.server.log_text(), re.M), 10,
                          what="the access line").group(0)
        self.assertRegex(line, r'Service/Do peer=ipv4:127\.0\.0\.1:\d+ file="" in=0 out=0 '
                         r'thumbnails=0 ms=[\d.]+ status=UNIMPLEMENTED message=method /no\.such\.Service/Do '
                         r'is not implemented by this server$')


class Syslog(h.ServerTestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        pass

    def setUp(self):
        if os.geteuid() != 0 or not shutil.which("unshare"):
            self.skipTest("needs root and unshare(1) for a private /dev/log")

    def test_daemon_without_log_file_logs_to_syslog(self):
        tmp = tempfile.mkdtemp(prefix="tn-syslog-")
        self.addCleanup(shutil.rmtree, tmp, True)
        dev = os.path.join(tmp, "dev")
        os.mkdir(dev)
        nodes = ("null", "zero", "random", "urandom")
        for n in nodes:
            open(os.path.join(dev, n), "w").close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(os.path.join(dev, "log"))
        sock.settimeout(0.2)
        spool = os.path.join(tmp, "spool")
        os.mkdir(spool)
        pidfile = os.path.join(tmp, "pid")
        port = h.free_port()
        addr = "127.0.0.1:%d" % port
        server = [h.SERVER_BIN, "--daemon", "--pidfile", pidfile, "--listen", addr,
                  "--workers", "1", "--spool-dir", spool] + h.server_default_args()
        # A /dev of our own (its device nodes bound from the real one, plus our
        # socket as /dev/log), seen only by the server's processes.
        script = ("set -e; for n in %s; do mount --bind /dev/$n %s/$n; done; "
                  "mount --rbind %s /dev; exec \"$@\"" % (" ".join(nodes), dev, dev))
        cp = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                             "sh"] + server, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=60)
        if cp.returncode != 0 and "unshare" in cp.stderr and not os.path.exists(pidfile):
            self.skipTest("no private mount namespace here: %s" % cp.stderr.strip())
        self.assertEqual(cp.returncode, 0, cp)
        with open(pidfile) as f:
            pid = int(f.read())

        def stop():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            h.wait_for(lambda: not h.pid_alive(pid), 20, what="the daemon to exit")
        self.addCleanup(stop)

        msgs = []

        def drain():
            while True:
                try:
                    msgs.append(sock.recv(65536).decode("utf-8", "replace"))
                except socket.timeout:
                    return
        def serving():
            try:
                return h.health_check(addr) == "SERVING"
            except h.grpc.RpcError:
                return False
        h.wait_for(serving, 30, interval=0.2, what="the daemon to serve")
        thumbs = h.generate(addr, path=h.video("h264.mp4"))
        deadline = time.monotonic() + 10
        access = None
        while access is None and time.monotonic() < deadline:
            drain()
            access = next((m for m in msgs if " Generate peer=" in m), None)
        self.assertIsNotNone(access, "no access line in syslog: %s" % msgs)
        # <30> = facility daemon (3) * 8 + severity info (6); ident[pid]: then our text
        self.assertRegex(access, r'^<30>.*thumbnail_server\[\d+\]: INFO front: Generate '
                         r'peer=ipv4:127\.0\.0\.1:\d+ file="h264\.mp4" in=%d out=%d '
                         r'thumbnails=1 ms=[\d.]+ status=OK$'
                         % (os.path.getsize(h.video("h264.mp4")), thumbs[0].header.size))
        front_pid = int(re.search(r"\[(\d+)\]", access).group(1))
        self.assertNotEqual(front_pid, pid)
        self.assertTrue(any(re.search(r"thumbnail_server\[%d\]: INFO master: thumbnail_server "
                                      r"\S+ starting" % pid, m) for m in msgs), msgs)
        stop()
        drain()
        self.assertTrue(any("INFO master: master exiting with status 0" in m for m in msgs),
                        msgs[-5:])


if __name__ == "__main__":
    h.main()
