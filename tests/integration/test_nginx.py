#!/usr/bin/env python3
"""Scale-out behind nginx: the shipped deploy/nginx/thumbnail.conf (ports
rewritten to free ones) runs in Debian's nginx, as a foreground process with
its pid, logs and temp files in a temporary directory, in front of two real
servers. Calls from the real client through nginx land on both servers (each
server's log names the files it served); with one server killed, every call
still succeeds (nginx skips the refused connection; the client retries
UNAVAILABLE)."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness as h

CONF = os.path.join(h.SOURCE_DIR, "deploy", "nginx", "thumbnail.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def served_files(srv):
    """Files named in the server's per-call log lines, with status OK."""
    return re.findall(r'Generate peer=\S+ file="([^"]*)".* status=OK', srv.log_text())


@unittest.skipUnless(os.access(NGINX, os.X_OK), "nginx is not installed (Debian: nginx-light)")
class Nginx(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tn-nginx-")
        os.chmod(self.tmp, 0o755)  # nginx's workers may run as nobody
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.servers = [h.Server(workers=1), h.Server(workers=1)]
        for s in self.servers:
            self.addCleanup(s.cleanup)
        self.port = h.free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.nginx = self.start_nginx()

    def start_nginx(self):
        with open(CONF) as f:
            site = f.read()
        # The shipped file, with our ports: each rewrite must hit exactly once.
        for old, new in ((r"server 127\.0\.0\.1:50051 ", "server %s " % self.servers[0].addr),
                         (r"server 127\.0\.0\.1:50052 ", "server %s " % self.servers[1].addr),
                         (r"listen 50050 http2;", "listen %s http2;" % self.addr)):
            site, n = re.subn(old, new, site)
            self.assertEqual(n, 1, "%r not found once in %s" % (old, CONF))
        with open(os.path.join(self.tmp, "thumbnail.conf"), "w") as f:
            f.write(site)
        main = """
daemon off;
master_process on;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {t}/access.log;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    include {t}/thumbnail.conf;
}}
""".format(t=self.tmp)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(main)
        cmd = [NGINX, "-p", self.tmp, "-c", conf, "-e", os.path.join(self.tmp, "error.log")]
        r = subprocess.run(cmd + ["-t"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        self.assertEqual(r.returncode, 0, "nginx -t:\n" + r.stdout)
        with open(os.path.join(self.tmp, "nginx.out"), "w") as err:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True)
        h._LIVE_GROUPS.add(p.pid)
        self.addCleanup(self.stop_nginx, p)
        h.wait_for(lambda: self.healthy_through_nginx(p), 20, what="nginx proxying health")
        return p

    def healthy_through_nginx(self, p):
        if p.poll() is not None:
            raise AssertionError("nginx exited %d: %s" % (p.returncode, self.nginx_log()))
        try:
            return h.health_check(self.addr, timeout=1.0) == "SERVING"
        except h.grpc.RpcError:
            return False

    def stop_nginx(self, p):
        if p.poll() is None:
            os.kill(p.pid, signal.SIGQUIT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        h._LIVE_GROUPS.discard(p.pid)

    def nginx_log(self):
        try:
            with open(os.path.join(self.tmp, "error.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def run_batch(self, prefix, n):
        names = ["h264.mp4"] * n
        inp = h.make_input_dir([], parent=self.tmp)
        for i in range(n):
            shutil.copyfile(h.video(names[i]), os.path.join(inp, "%s%d.mp4" % (prefix, i)))
        out = os.path.join(self.tmp, "out-" + prefix)
        r = h.run_client(["--server", self.addr, "--jobs", "2", "--width", "160", inp, out],
                         timeout=120)
        self.assertEqual(r.returncode, 0, r)
        for i in range(n):
            self.assertEqual(h.png_size(os.path.join(out, "%s%d.png" % (prefix, i))), (160, 90))
        return ["%s%d.mp4" % (prefix, i) for i in range(n)]

    def test_calls_land_on_both_and_survive_a_dead_server(self):
        r = h.run_client(["--health", "--server", self.addr])
        self.assertEqual(r.returncode, 0, r)

        files = self.run_batch("a", 6)
        a, b = (served_files(s) for s in self.servers)
        h.log("through nginx: server 1 served %d, server 2 served %d" % (len(a), len(b)))
        self.assertEqual(sorted(a + b), sorted(files), "every call served exactly once")
        self.assertTrue(a and b, "calls did not land on both servers: %s / %s" % (a, b))

        # Kill server 1 outright (master, front and workers): its port now refuses.
        dead = self.servers[0]
        os.killpg(dead.pid, signal.SIGKILL)
        dead.stop(check=False)
        before = len(served_files(self.servers[1]))
        files = self.run_batch("b", 6)
        after = served_files(self.servers[1])
        self.assertEqual(sorted(after[before:]), sorted(files), "server 2 served them all")
        self.assertRegex(self.nginx_log(), r"connect\(\) failed \(111: Connection refused\)",
                         "nginx never tried the dead server: the failover was not exercised")


if __name__ == "__main__":
    h.main()
