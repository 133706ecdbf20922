#!/usr/bin/env python3
"""Worker recycling (--max-jobs-per-worker) and crash-loop protection.

Recycling: a worker exits after its share of jobs and the master replaces it at
once; no call fails because of it.

Crash loop: workers that cannot start are respawned with backoff, and after 5
start-up failures within 60 s their slot is given up. With no worker left the
front answers health NOT_SERVING and Generate UNAVAILABLE with a message (no
hang); a reload (SIGHUP) once the cause is fixed brings workers back. The
start-up failure is a real one: the master's RLIMIT_AS hard limit is lowered
(prlimit) below the config file's worker-memory, so a new worker's setrlimit()
fails; the fix is an operator's: a worker-memory below that limit in the file,
then HUP (no CAP_SYS_RESOURCE needed, so it runs as root in a container too)."""
import os
import resource
import shutil
import signal
import tempfile
import time

import harness as h

SMALL = "h264.mp4"


class Recycle(h.ServersTestCase):
    def test_recycle_sequential(self):
        s = self.server(workers=1, extra=["--max-jobs-per-worker", "3"])
        first = s.worker_pids()
        for i in range(7):
            thumbs = h.generate(s.addr, path=h.video(SMALL))
            self.assertEqual(len(thumbs), 1, "call %d" % i)
        h.wait_for(lambda: s.log_text().count("recycled (--max-jobs-per-worker 3)") >= 2, 10,
                   what="two recycle lines")
        # a worker logs its job after sending the result: wait for the third one's line
        workers = h.wait_for(lambda: len(s.log_pids("worker")) >= 3 and s.log_pids("worker"),
                             10, what="3 workers in the log (one per 3 jobs)")
        h.log("worker pids over 7 jobs: %s" % workers)
        self.assertNotIn(first[0], s.worker_pids())
        self.assertEqual(s.stop(), 0)

    def test_recycle_under_concurrent_load(self):
        """The real client, 4 jobs at a time over 24 files, 2 workers that go after
        ~4 jobs each: every file succeeds, with no retry needed."""
        s = self.server(workers=2, extra=["--max-jobs-per-worker", "4"])
        inp = h.make_input_dir([SMALL])
        self.addCleanup(shutil.rmtree, inp, True)
        for i in range(23):
            os.link(os.path.join(inp, SMALL), os.path.join(inp, "copy%02d.mp4" % i))
        out = tempfile.mkdtemp(prefix="tn-out-")
        self.addCleanup(shutil.rmtree, out, True)
        r = h.run_client(["--server", s.addr, "--jobs", "4", "--retries", "0", inp, out])
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(len(h.tree_files(out)), 24)
        n = s.log_text().count("recycled (--max-jobs-per-worker 4)")
        h.log("24 jobs, %d recycles" % n)
        self.assertGreaterEqual(n, 4)
        self.assertEqual(s.stop(), 0)

    @h.unittest.skipIf(h.sanitized(), "ASan build: its workers cannot run under an RLIMIT_AS")
    def test_crash_loop_gives_up_and_reload_recovers(self):
        conf = os.path.join(tempfile.mkdtemp(prefix="tn-conf-"), "server.conf")
        self.addCleanup(shutil.rmtree, os.path.dirname(conf), True)
        with open(conf, "w") as f:
            f.write("worker-memory = 1G\n")
        s = self.server(workers=2, extra=["--config", conf])
        self.assertEqual(len(h.generate(s.addr, path=h.video(SMALL))), 1)
        workers = s.worker_pids()
        limit = 768 << 20  # above what the master maps, below worker-memory 1G
        resource.prlimit(s.pid, resource.RLIMIT_AS, (limit, limit))
        t0 = time.monotonic()
        h.kill_and_wait(workers)
        h.wait_for(lambda: h.health_check(s.addr) == "NOT_SERVING", 30,
                   what="health NOT_SERVING")
        h.log("NOT_SERVING %.1f s after the workers died" % (time.monotonic() - t0))
        text = s.log_text()
        self.assertIn("giving this worker slot up", text)
        self.assertIn("NO DECODE WORKER LEFT", text)
        self.assertEqual(text.count("setrlimit(RLIMIT_AS"), 12, "6 attempts per slot")
        self.assertEqual(len(h.children(s.pid)), 1, "only the front should be left")
        # a call fails at once with a message, it does not hang
        t1 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(s.addr, path=h.video(SMALL), timeout=30)
        self.assertEqual(cm.exception.code(), h.grpc.StatusCode.UNAVAILABLE)
        self.assertIn("no decode worker", cm.exception.details())
        self.assertLess(time.monotonic() - t1, 5)
        r = h.run_client(["--server", s.addr, "--health"])
        self.assertEqual(r.returncode, 1, r)  # README: --health exits 1 when not SERVING
        # fixed: worker-memory below the hard limit, and a reload starts new workers
        with open(conf, "w") as f:
            f.write("worker-memory = 512M\n")
        old_front = h.children(s.pid)[0]  # the front is the only child left
        os.kill(s.pid, signal.SIGHUP)
        h.wait_for(lambda: h.health_check(s.addr) == "SERVING", 30, what="SERVING again")
        # The old front, whose workers are gone, shares the port until it has drained:
        # a call that reaches it meanwhile is refused. Wait for it to go.
        h.wait_for(lambda: not h.pid_alive(old_front), 30, what="the old front to exit")
        self.assertEqual(len(h.generate(s.addr, path=h.video(SMALL))), 1)
        self.assertEqual(s.stop(), 0)

if __name__ == "__main__":
    h.main()
