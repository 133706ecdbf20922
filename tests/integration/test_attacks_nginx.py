#!/usr/bin/env python3
"""The deployment answer for untrusted networks: the same attacks as test_attacks.py,
sent to the shipped deploy/nginx/thumbnail.conf (Debian's nginx, run as in
test_nginx.py) in front of one real server. nginx speaks HTTP/2 to the attacker and
hands the server only complete requests, so the server's front must stay small and
legitimate calls (grpcio through nginx, real thumbnails) keep succeeding.
"""
import os
import tempfile
import threading
import time
import shutil
import unittest

import attacks as a
import harness as h
import test_nginx
from test_attacks import HOST, report, restarts

NGINX = test_nginx.NGINX


@unittest.skipUnless(os.access(NGINX, os.X_OK), "nginx is not installed (Debian: nginx-light)")
class ThroughNginx(unittest.TestCase):
    # test_nginx's start-up, with both upstream lines pointing at our one server
    start_nginx = test_nginx.Nginx.start_nginx
    healthy_through_nginx = test_nginx.Nginx.healthy_through_nginx
    stop_nginx = test_nginx.Nginx.stop_nginx
    nginx_log = test_nginx.Nginx.nginx_log
    FRONT_PEAK_MB = 64
    LATENCY_S = 5.0

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tn-nginx-attack-")
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.srv = h.Server(workers=2, metrics=True)
        self.addCleanup(self.srv.cleanup)
        self.servers = [self.srv, self.srv]
        self.port = h.free_port()
        self.addr = "%s:%d" % (HOST, self.port)
        self.nginx = self.start_nginx()
        self.video = h.video("h264.mp4")
        self.front = self.srv.front_pid()
        self.idle = h.vm_status(self.front, "VmRSS")
        a.Legit(self.addr, self.video).one()  # warm-up
        self.legit = a.Legit(self.addr, self.video)
        self.rss = a.RssSampler(self.srv)
        self.rss.start()
        self.legit.start()
        time.sleep(0.5)

    def finish(self, name, settle=3, **extra):
        time.sleep(settle)
        self.legit.stop()
        self.rss.stop()
        res = dict(idle_mb=self.idle >> 20, peak_mb=self.rss.peak >> 20,
                   after_mb=self.rss.last >> 20, worker_restarts=restarts(self.srv),
                   nginx_alive=self.nginx.poll() is None, **self.legit.summary(), **extra)
        res["failure_samples"] = self.legit.failures[:3]
        report("via nginx: " + name, **res)
        self.assertTrue(res["nginx_alive"])
        self.assertLess(res["peak_mb"], self.FRONT_PEAK_MB, "the server's front grew")
        self.assertEqual(res["failures"], 0, res["failure_samples"])
        self.assertLessEqual(res["max_latency_s"], self.LATENCY_S)
        self.assertEqual(res["worker_restarts"], 0)
        self.assertEqual(h.health_check(self.srv.addr), "SERVING")

    def test_rapid_reset(self):
        sent, secs = a.rapid_reset(HOST, self.port, 30000)
        self.finish("rapid reset (30000 pairs)", attack_bytes=sent, attack_s=round(secs, 2))

    def test_hpack_many_headers(self):
        sent, secs = a.hpack_flood(HOST, self.port, 12 << 20, "many")
        self.finish("HPACK: 12 MB block of small headers", attack_bytes=sent,
                    attack_s=round(secs, 2))

    def test_hpack_single_value(self):
        t = threading.Thread(target=a.hpack_flood, args=(HOST, self.port, 30 << 20, "big"),
                             daemon=True)
        t.start()
        t.join(20)
        self.finish("HPACK: 30 MB single value", attack_done=not t.is_alive())

    def test_slowloris(self):
        """200 connections that send the preface and half of a HEADERS frame, then
        nothing: nginx holds them (its worker_connections bound them), the server
        sees none of them: its front stays small and legitimate calls go on. nginx
        1.22 did not close them within client_header_timeout in this test (it waits
        for keepalive_timeout): the server-side bound is --max-streams-per-connection
        and the per-address limit_conn."""
        socks = []
        block = a.request_headers()
        for _ in range(200):
            try:
                s = a.connect(HOST, self.port)
                # a HEADERS frame cut in the middle: its 9-byte header announces
                # the whole block, half of it follows
                s.sendall(a.frame(a.HEADERS, a.END_HEADERS, 1, block)[:9 + len(block) // 2])
                socks.append(s)
            except OSError:
                break
        self.finish("slowloris (%d half-open requests)" % len(socks), settle=5,
                    held=len(socks), server_connections=self.server_connections())
        self.assertLess(self.server_connections(), 20, "the half-open requests reached the server")
        for s in socks:
            s.close()

    def server_connections(self):
        """TCP connections established to the server's port (nginx's upstream ones)."""
        port = "%04X" % self.srv.port
        n = 0
        for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(fn) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[1].endswith(":" + port) and p[3] == "01":
                        n += 1
        return n

if __name__ == "__main__":
    unittest.main()
