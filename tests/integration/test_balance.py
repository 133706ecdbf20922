#!/usr/bin/env python3
"""Client-side balancing: thumbnail_client with several --server flags (or a
dns:/// target) spreads its calls round-robin over every server that is up.

Two real servers; each one's access log (one "Generate ... status=OK" line
per call) says which calls it served. A server that is down from the start
is skipped, one killed in the middle of a batch costs no file (its in-flight
calls fail UNAVAILABLE and are retried on the other), and balancing works
over TLS too when the servers share one certificate name. With --local over
several servers, the files go as Generate calls (not one Batch call), spread too."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import certs
import harness as h
from harness import grpc

OK_LINE = re.compile(r"INFO front \d+: Generate peer=\S+ file=\"[^\"]*\" .*status=OK$", re.M)
# Several accurate time points per file: enough work that a batch lasts a few seconds.
TIMES = "0.5,1,1.5,2,2.5,3"
N_TIMES = len(TIMES.split(","))


def served(server):
    return len(OK_LINE.findall(server.log_text()))


def settle(counted, total):
    """Wait until the servers' access logs hold `total` more OK lines than at
    `counted` ([(server, count before)]): a front writes a call's line after the
    status has gone out, so the client can exit before the last line is there."""
    h.wait_for(lambda: sum(served(s) - n for s, n in counted) >= total, 10,
               what="%d access lines" % total)


def dead_addr():
    """An address with nothing listening (connection refused at once)."""
    return "127.0.0.1:%d" % h.free_port()


class Balance(h.ServerTestCase):
    workers = 1

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.b = h.Server(workers=1)
        cls.extra_servers = [cls.b]

    @classmethod
    def tearDownClass(cls):
        try:
            cls.b.stop()
        finally:
            cls.b.cleanup()
            super().tearDownClass()

    def batch(self, servers, n=8, extra=(), check_rc=0):
        inp = h.make_input_dir([])
        for i in range(n):
            shutil.copyfile(h.video("h264.mp4"), os.path.join(inp, "v%02d.mp4" % i))
        self.addCleanup(shutil.rmtree, inp, True)
        out = self.tmpdir()
        args = []
        for s in servers:
            args += ["--server", s]
        r = h.run_client(args + ["--jobs", "2", "--connect-timeout", "5"] + list(extra) +
                         [inp, out], check_rc=check_rc, timeout=120)
        return r, out

    def test_spread_over_both(self):
        a0, b0 = served(self.server), served(self.b)
        r, out = self.batch([self.server.addr, self.b.addr], n=8)
        self.assertEqual(len(h.tree_files(out)), 8, r)
        settle([(self.server, a0), (self.b, b0)], 8)
        a, b = served(self.server) - a0, served(self.b) - b0
        h.log("8 files: server A served %d, server B %d" % (a, b))
        self.assertEqual(a + b, 8, r)
        # Round robin alternates; the first calls may all go to the server whose
        # connection came up first, so demand a share, not a perfect half.
        self.assertGreaterEqual(a, 2, "server A served %d of 8" % a)
        self.assertGreaterEqual(b, 2, "server B served %d of 8" % b)

    def test_host_names_are_resolved(self):
        """localhost and 127.0.0.1 name the same address family: one ipv4: target."""
        b0 = served(self.b)
        self.batch([self.server.addr, "localhost:%d" % self.b.port], n=4)
        self.assertGreater(served(self.b) - b0, 0)

    def test_one_server_down_from_the_start(self):
        a0 = served(self.server)
        r, out = self.batch([dead_addr(), self.server.addr], n=6)
        self.assertEqual(len(h.tree_files(out)), 6, r)
        settle([(self.server, a0)], 6)
        self.assertEqual(served(self.server) - a0, 6)

    def test_all_servers_down(self):
        r, _ = self.batch([dead_addr(), dead_addr()], n=1, extra=["--connect-timeout", "1"],
                          check_rc=2)
        self.assertIn("cannot reach any of the 2 servers", r.stderr)

    def test_dns_target(self):
        """A dns:/// target is resolved by gRPC (localhost: 127.0.0.1 and maybe ::1,
        where nobody listens: round_robin uses the address that answers)."""
        a0 = served(self.server)
        self.batch(["dns:///localhost:%d" % self.server.port], n=3)
        settle([(self.server, a0)], 3)
        self.assertEqual(served(self.server) - a0, 3)

    def test_health_checks_each_server(self):
        r = h.run_client(["--health", "--server", self.server.addr, "--server", self.b.addr],
                         check_rc=0)
        self.assertIn("%s: SERVING" % self.server.addr, r.stdout)
        self.assertIn("%s: SERVING" % self.b.addr, r.stdout)
        down = dead_addr()
        r = h.run_client(["--health", "--connect-timeout", "1", "--server", self.server.addr,
                          "--server", down], check_rc=2)
        self.assertIn("%s: SERVING" % self.server.addr, r.stdout)
        self.assertIn("cannot reach server at %s" % down, r.stderr)

    def test_usage_errors(self):
        cases = [(["unix:/tmp/x.sock"], "a unix:, dns: or other URI target goes alone"),
                 (["dns:///localhost:1"], "goes alone"),
                 (["no-such-host.invalid:1"], "cannot resolve 'no-such-host.invalid'"),
                 (["127.0.0.1"], "no port: expected HOST:PORT"),  # refused up front
                 (["[::1]:%d" % self.b.port], "one address family")]
        for other, msg in cases:
            with self.subTest(other=other):
                r, _ = self.batch([self.server.addr] + other, n=1, check_rc=2)
                self.assertIn(msg, r.stderr)


class LocalSpread(unittest.TestCase):
    """--local with two servers sharing one --media-root: a Batch call would go to
    one server alone, so the files go as Generate calls, spread over both."""

    def test_local_folder_spread_over_both(self):
        root = h.make_input_dir([])
        self.addCleanup(shutil.rmtree, root, True)
        for i in range(8):
            shutil.copyfile(h.video("h264.mp4"), os.path.join(root, "v%02d.mp4" % i))
        servers = [h.Server(workers=1, extra=["--media-root", root]) for _ in range(2)]
        for s in servers:
            self.addCleanup(s.cleanup)
            self.addCleanup(s.stop)
        out = tempfile.mkdtemp(prefix="tn-test-")
        self.addCleanup(shutil.rmtree, out, True)
        before = [(s, served(s)) for s in servers]
        r = h.run_client(["--server", servers[0].addr, "--server", servers[1].addr, "--local",
                          "--at", TIMES, root, out], timeout=120)
        self.assertEqual(len(h.tree_files(out)), 8 * N_TIMES, r)
        settle(before, 8)
        counts = [served(s) - n for s, n in before]
        h.log("8 files, --local: server A served %d Generate calls, server B %d" % tuple(counts))
        for s in servers:
            self.assertNotIn(" Batch ", s.log_text())
        self.assertGreaterEqual(min(counts), 2, counts)


class KillOneMidBatch(unittest.TestCase):
    def test_kill_one_mid_batch(self):
        a, b = h.Server(workers=1), h.Server(workers=1)
        try:
            n = 24
            inp = h.make_input_dir([])
            for i in range(n):
                shutil.copyfile(h.video("h264.mp4"), os.path.join(inp, "v%02d.mp4" % i))
            out = tempfile.mkdtemp(prefix="tn-out-")
            env = dict(os.environ)
            env.pop("THUMBNAIL_SERVER", None)
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [h.CLIENT_BIN, "--server", a.addr, "--server", b.addr, "--jobs", "2",
                 "--at", TIMES, "--retries", "3", inp, out],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env)
            h.wait_for(lambda: served(b) >= 1, 60, what="server B's first call")
            # kill B while it works on a call, so that one call must be retried on A
            self.assertIsNotNone(h.busy_worker(b.worker_pids(), timeout=30),
                                 "B got no second call to kill it in")
            self.assertIsNone(proc.poll(), "the batch ended before B could be killed: "
                              "make it longer")
            os.killpg(b.pid, signal.SIGKILL)  # master, front and workers at once
            b.proc.wait()
            killed_at = time.monotonic() - t0
            stdout, stderr = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, stdout + stderr)
            self.assertIn("%d ok, 0 failed" % n, stdout)
            self.assertEqual(len(h.tree_files(out)), n * N_TIMES)
            # A writes each call's access line after its status has gone out: wait for
            # them. B was SIGKILLed mid-batch, so its count may miss the one call whose
            # status had gone out before its line was written (or count one whose status
            # never reached the client, which was then retried on A): one call either way.
            h.wait_for(lambda: served(a) + served(b) >= n - 1, 10, what="A's access lines")
            served_a, served_b = served(a), served(b)
            retried = h.client_retries(stdout)
            h.log("B killed after %.2f s; A served %d calls, B %d before dying; %d files "
                  "retried" % (killed_at, served_a, served_b, retried))
            self.assertLessEqual(abs(served_a + served_b - n), 1,
                                 "the servers' access lines and the client's count disagree")
            self.assertGreater(served_a, served_b)
            self.assertGreaterEqual(retried, 1, "B died mid-call: that call is retried on A")
            shutil.rmtree(inp, True)
            shutil.rmtree(out, True)
        except Exception:
            a.dump_log()
            b.dump_log()
            raise
        finally:
            a.stop(check=False)
            a.cleanup()
            b.stop(check=False)
            b.cleanup()


class BalanceTls(unittest.TestCase):
    """Two TLS servers with the same certificate (127.0.0.1 and localhost)."""

    @classmethod
    def setUpClass(cls):
        cls.pki = certs.Pki()
        creds = grpc.ssl_channel_credentials(cls.pki.read(cls.pki.ca))
        tls = ["--tls-cert", cls.pki.server_cert, "--tls-key", cls.pki.server_key]
        cls.a = h.Server(workers=1, extra=tls, credentials=creds)
        cls.b = h.Server(workers=1, extra=tls, credentials=creds)

    @classmethod
    def tearDownClass(cls):
        for s in (cls.a, cls.b):
            s.stop()
            s.cleanup()

    def run_batch(self, servers, extra=(), check_rc=0, n=4):
        inp = h.make_input_dir([])
        for i in range(n):
            shutil.copyfile(h.video("h264.mp4"), os.path.join(inp, "v%02d.mp4" % i))
        out = tempfile.mkdtemp(prefix="tn-out-")
        args = ["--ca", self.pki.ca, "--jobs", "2", "--connect-timeout", "5"]
        for s in servers:
            args += ["--server", s]
        try:
            return h.run_client(args + list(extra) + [inp, out], check_rc=check_rc)
        finally:
            shutil.rmtree(inp, True)
            shutil.rmtree(out, True)

    def test_same_host(self):
        a0, b0 = served(self.a), served(self.b)
        self.run_batch([self.a.addr, self.b.addr], n=6)
        self.assertGreater(served(self.a) - a0, 0)
        self.assertGreater(served(self.b) - b0, 0)

    def test_different_hosts_need_a_server_name(self):
        servers = [self.a.addr, "localhost:%d" % self.b.port]
        r = self.run_batch(servers, check_rc=2)
        self.assertIn("give --tls-server-name", r.stderr)
        b0 = served(self.b)
        self.run_batch(servers, extra=["--tls-server-name", "localhost"])
        self.assertGreater(served(self.b) - b0, 0)


if __name__ == "__main__":
    h.main()
