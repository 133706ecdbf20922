#!/usr/bin/env python3
"""Deadlines and disconnects, through the real server.

(a) a gRPC deadline shorter than the job -> DEADLINE_EXCEEDED, and the server
    side lets go too: the (only) worker stops working, logs the job's end, and
    serves the next call at once; (b) --job-timeout 1 with a long job ->
    DEADLINE_EXCEEDED from the server, with a message; (c) clients that go away
    mid-upload (cancel, or a client process killed) and (d) mid-download (cancel
    after the first response message of a long multi-thumbnail job): no leak
    (the front's fd count returns to its baseline, the spool dir stays empty),
    the worker abandons the job, the server keeps serving.

The long job: 64 time points of the 640x360 clip upscaled to 7680x4320 PNGs,
~30 s of work for one worker (~0.5 s per thumbnail) behind a 380 KB upload, so
the deadline can only expire while a worker is on it."""
import os
import re
import subprocess
import sys
import threading
import time

import harness as h

LONG = dict(times=[0.06 * i for i in range(64)], max_width=7680, upscale=True)
LONG_FILE = "h264.mp4"


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def fds(pid):
    out = []
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, f)))
        except OSError:
            pass
    return sorted(out)


def wait_idle(pid, timeout, window=0.5):
    """Wait until pid (a worker) burns no CPU for `window` seconds; returns the seconds
    it took, or None if pid died (killed and respawned counts as let go, too)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        c0 = h.tree_cpu(pid)
        if c0 is None:
            return None
        time.sleep(window)
        c1 = h.tree_cpu(pid)
        if c1 is None:
            return None
        if c1 - c0 <= 1:
            return time.monotonic() - t0
    raise AssertionError("worker %d still busy %.0f s later" % (pid, timeout))


class Base(h.ServerTestCase):

    def assertServesFast(self, limit=8.0):
        t0 = time.monotonic()
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"), timeout=30)
        el = time.monotonic() - t0
        self.assertEqual(len(thumbs), 1)
        self.assertEqual((thumbs[0].header.width, thumbs[0].header.height), (320, 180))
        h.png_decode(bytes(thumbs[0].data))
        self.assertLess(el, limit, "the next call took %.1f s: the worker was not free" % el)
        return el

    def baseline_fds(self):
        """The front's fd count once it is warm and settled."""
        for _ in range(2):
            self.assertServesFast()
        front = self.server.front_pid()
        time.sleep(0.5)
        return front, fd_count(front)

    def assertNoLeak(self, front, fd0, what):
        try:
            n = h.wait_for(lambda: (lambda n: n if n is not None and n <= fd0
                                    else None)(fd_count(front)), 15, interval=0.2,
                           what="the front's fd count back to %d" % fd0)
        except AssertionError:
            self.fail("%s: front fds %d -> %s: %s" % (what, fd0, fd_count(front), fds(front)))
        try:
            h.wait_for(lambda: os.listdir(self.server.spool) == [], 5, what="an empty spool")
        except AssertionError:
            self.fail("%s: spool not empty: %s" % (what, os.listdir(self.server.spool)))
        self.assertEqual(self.server.front_pid(), front, "%s: the front changed" % what)
        h.log("%s: front fds %d before, %d after; spool empty" % (what, fd0, n))
        return n

    def job_lines(self, file_name):
        """The workers' end-of-job log lines for file_name."""
        return [l for l in self.server.log_text().splitlines()
                if re.search(r" worker\S* \d+: job \d+ %s " % re.escape(file_name), l)]

    def front_lines(self, file_name):
        return [l for l in self.server.log_text().splitlines()
                if re.search(r" front \d+: .*file=\"%s\"" % re.escape(file_name), l)]


class ClientDeadline(Base):
    """(a) One worker, so "the next call is fast" proves that worker was let go."""
    workers = 1
    server_extra = ("--job-timeout", "120")

    def test_deadline_shorter_than_job(self):
        front, fd0 = self.baseline_fds()
        worker = self.server.worker_pids()[0]
        name = "long-a.mp4"
        deadline = 1.0
        t0 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video(LONG_FILE), file_name=name,
                       timeout=deadline, **LONG)
        el = time.monotonic() - t0
        err = cm.exception
        h.log("(a) deadline %.1f s: %s %r after %.2f s" % (deadline, err.code().name,
                                                           err.details(), el))
        self.assertRpcCode(err, "DEADLINE_EXCEEDED")
        self.assertLess(el, deadline + 3, "the call outlived its deadline by %.1f s"
                        % (el - deadline))
        # The job ran on the worker (it was not refused before dispatch), and that worker
        # gave it up by itself, saying why: its end-of-job line says DEADLINE_EXCEEDED,
        # and it is the same process afterwards (not killed and respawned).
        lines = h.wait_for(lambda: self.job_lines(name), 10,
                           what="the worker's end-of-job line for %s" % name)
        self.assertRegex(lines[-1], r" worker\S* %d: job \d+ .*: DEADLINE_EXCEEDED: " % worker)
        idle = wait_idle(worker, 10)
        since = time.monotonic() - t0
        h.log("(a) worker %d %s %.1f s after the call started; log: %s"
              % (worker, "idle" if idle is not None else "gone", since, lines[-1]))
        self.assertIsNotNone(idle, "worker %d died: it was killed, not let go" % worker)
        self.assertLess(since, deadline + 6, "the worker kept working long past the deadline")
        self.assertEqual(self.server.worker_pids(), [worker])
        self.assertNotRegex(self.server.log_text(), r" master \d+: worker\S* %d " % worker)
        self.assertEqual(len(self.server.wait_roles(1)["workers"]), 1)
        el2 = self.assertServesFast()
        h.log("(a) next call served in %.2f s" % el2)
        self.assertNoLeak(front, fd0, "(a)")

    def test_many_short_deadlines(self):
        """Ten in a row, each dispatched to the one worker: none may leave it busy."""
        front, fd0 = self.baseline_fds()
        codes = []
        for i in range(10):
            try:
                h.generate(self.server.addr, path=h.video(LONG_FILE), file_name="long-a%d.mp4" % i,
                           timeout=0.5 + 0.1 * i, **LONG)
                codes.append("OK")
            except h.grpc.RpcError as e:
                codes.append(e.code().name)
        h.log("(a) 10 short deadlines: %s" % codes)
        self.assertEqual(codes, ["DEADLINE_EXCEEDED"] * 10)
        self.assertServesFast()
        self.assertEqual(len(self.server.wait_roles(1)["workers"]), 1)
        self.assertNoLeak(front, fd0, "(a) x10")


class JobTimeout(Base):
    """(b) --job-timeout 1: the server's own deadline."""
    workers = 2
    server_extra = ("--job-timeout", "1")

    def test_job_timeout(self):
        front, fd0 = self.baseline_fds()
        workers = self.server.worker_pids()
        name = "long-b.mp4"
        t0 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video(LONG_FILE), file_name=name, timeout=60,
                       **LONG)
        el = time.monotonic() - t0
        err = cm.exception
        h.log("(b) --job-timeout 1: %s %r after %.2f s" % (err.code().name, err.details(), el))
        self.assertRpcCode(err, "DEADLINE_EXCEEDED")
        # The server's status, not grpcio's "Deadline Exceeded": a message a user can act on.
        self.assertNotEqual(err.details(), "Deadline Exceeded")
        self.assertRegex(err.details() or "", r"[a-z]{3,}.*[a-z]{3,}")
        self.assertLess(el, 1 + 1 + 3, "took %.1f s with a 1 s job timeout" % el)
        self.assertTrue(h.wait_for(lambda: self.front_lines(name), 5,
                                   what="the front's line for %s" % name))
        self.assertRegex(self.front_lines(name)[-1], r"DEADLINE_EXCEEDED")
        for w in workers:
            try:
                wait_idle(w, 10)
            except AssertionError as e:
                self.fail("(b) %s" % e)
        self.assertEqual(len(self.server.wait_roles(2)["workers"]), 2)
        self.assertServesFast()
        self.assertNoLeak(front, fd0, "(b)")


CLIENT_SCRIPT = r"""
import sys, time
sys.path.insert(0, %(dir)r)
import harness as h
def reqs():
    g = h.generate_requests(path=%(path)r, file_name="killed-client.mp4", chunk=1 << 20)
    for i, r in enumerate(g):
        yield r
        if i == 4:
            print("sent", flush=True)
            time.sleep(600)
ch = h.channel(%(addr)r)
for r in h.pb_grpc.ThumbnailerStub(ch).Generate(reqs(), timeout=600):
    pass
"""


class Disconnects(Base):
    """(c) mid-upload and (d) mid-download. One worker: a job it did not drop would
    keep it busy for ~30 s and show."""
    workers = 1
    server_extra = ("--job-timeout", "120")

    def start_call(self, ch, requests, first_message=None):
        """Run a Generate call in a thread; returns (call, thread, box)."""
        call = h.pb_grpc.ThumbnailerStub(ch).Generate(requests, timeout=120)
        box = {"messages": 0}

        def run():
            try:
                for _r in call:
                    box["messages"] += 1
                    if first_message is not None:
                        first_message.set()
                box["done"] = "OK"
            except h.grpc.RpcError as e:
                box["done"] = e.code().name
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return call, t, box

    def worker_job_count(self):
        return len([l for l in self.server.log_text().splitlines()
                    if re.search(r" worker\S* \d+: job \d+ ", l)])

    def test_cancel_mid_upload(self):
        front, fd0 = self.baseline_fds()
        jobs0 = self.worker_job_count()
        worker = self.server.worker_pids()[0]
        big = h.video("h264_1080p.mp4")
        n = 8
        with h.channel(self.server.addr) as ch:
            calls = []
            for i in range(n):
                reached = threading.Event()
                hold = threading.Event()

                def reqs(reached=reached, hold=hold, i=i):
                    g = h.generate_requests(path=big, file_name="cancel-up-%d.mp4" % i,
                                            chunk=1 << 20)
                    for k, r in enumerate(g):
                        yield r
                        if k == 4:  # options + 4 MiB of 16 MiB
                            reached.set()
                            hold.wait(30)
                            return
                call, t, box = self.start_call(ch, reqs())
                self.assertTrue(reached.wait(20), "the upload never started")
                calls.append((call, t, box, hold))
            time.sleep(0.5)  # let the front take the bytes in
            self.assertGreater(fd_count(front), fd0, "the front holds nothing for 8 uploads?")
            h.log("(c) 8 uploads in progress: front fds %d (baseline %d)"
                  % (fd_count(front), fd0))
            for call, t, box, hold in calls:
                call.cancel()
                hold.set()
            for call, t, box, hold in calls:
                t.join(10)
                self.assertFalse(t.is_alive())
                self.assertEqual(box["done"], "CANCELLED")
        # A cancelled upload never becomes a job: once the front has logged the end of
        # every one of those calls (its access line), no worker has seen any of them.
        for i in range(n):
            h.wait_for(lambda i=i: self.front_lines("cancel-up-%d.mp4" % i), 10,
                       what="the front's access line for cancel-up-%d.mp4" % i)
        self.assertEqual(self.worker_job_count(), jobs0, "a cancelled upload reached a worker")
        self.assertEqual(self.server.worker_pids(), [worker])
        self.assertNoLeak(front, fd0, "(c) cancel x%d" % n)
        self.assertServesFast()

    def test_client_killed_mid_upload(self):
        """The client process dies (TCP connection closed, no RST_STREAM)."""
        front, fd0 = self.baseline_fds()
        jobs0 = self.worker_job_count()
        procs = []
        for _ in range(4):
            script = CLIENT_SCRIPT % dict(dir=os.path.dirname(os.path.abspath(h.__file__)),
                                          path=h.video("h264_1080p.mp4"), addr=self.server.addr)
            p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            procs.append(p)
        try:
            for p in procs:
                line = p.stdout.readline()
                self.assertEqual(line.strip(), "sent", p.stderr.read() if p.poll() else "")
            time.sleep(0.5)
            self.assertGreater(fd_count(front), fd0)
        finally:
            for p in procs:
                p.kill()
                p.wait()
                p.stdout.close()
                p.stderr.close()
        h.wait_for(lambda: len(self.front_lines("killed-client.mp4")) >= 4, 10,
                   what="the front's access lines for the 4 killed clients' calls")
        self.assertEqual(self.worker_job_count(), jobs0, "a dropped upload reached a worker")
        self.assertNoLeak(front, fd0, "(c) killed clients x4")
        self.assertServesFast()

    def test_cancel_mid_download(self):
        front, fd0 = self.baseline_fds()
        worker = self.server.worker_pids()[0]
        n = 3
        with h.channel(self.server.addr) as ch:
            for i in range(n):
                name = "cancel-down-%d.mp4" % i
                first = threading.Event()
                t0 = time.monotonic()
                call, t, box = self.start_call(
                    ch, h.generate_requests(path=h.video(LONG_FILE), file_name=name, **LONG),
                    first_message=first)
                self.assertTrue(first.wait(30), "no response message (%s)" % box)
                call.cancel()
                t.join(10)
                self.assertFalse(t.is_alive())
                self.assertEqual(box["done"], "CANCELLED")
                self.assertLess(box["messages"], 10, "the call was nearly done already")
                # The worker drops the rest of the ~30 s job.
                idle = wait_idle(worker, 10)
                h.log("(d) %s: cancelled after %d message(s), %.2f s; worker %s %.1f s later"
                      % (name, box["messages"], time.monotonic() - t0,
                         "idle" if idle is not None else "gone",
                         time.monotonic() - t0))
                line = h.wait_for(lambda: self.job_lines(name), 10,
                                  what="the worker's end of job %s" % name)[-1]
                h.log("(d) " + line)
                self.assertRegex(line, r"CANCELLED")
                self.assertEqual(self.server.worker_pids(), [worker],
                                 "the worker was replaced rather than let go")
                self.assertServesFast()
        self.assertNoLeak(front, fd0, "(d) cancel x%d" % n)


if __name__ == "__main__":
    h.main()
