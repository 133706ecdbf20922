#!/usr/bin/env python3
"""kill -9 of a decode worker during a job: that call ends UNAVAILABLE with a
message that says a worker died, the master respawns the worker (the pool is
back to N), concurrent calls on other workers succeed, and the real client's
retry of UNAVAILABLE turns the failure into a success.

The busy worker is found without any help from the server: idle workers sleep
in recvmsg() and burn no CPU, so the one whose utime+stime grows is running the
job. The slow job is an accurate seek near the end of a 1080p clip whose only
keyframe is at 0 (~250 frames to decode) with full-size PNG output."""
import concurrent.futures
import os
import threading

import harness as h

# ~1-1.5 s of work for one worker: decode all 250 frames of the 1080p clip (one
# keyframe) and encode 20 full-size PNGs.
SLOW = dict(times=[0.52 + 0.5 * i for i in range(19)] + [9.9], max_width=1920)


class WorkerKill(h.ServerTestCase):
    workers = 2
    server_extra = ("--job-timeout", "120")

    def start_slow_call(self, ch):
        stub = h.pb_grpc.ThumbnailerStub(ch)
        box = {}  # stream-stream calls have no future(): run it in a thread

        def run():
            try:
                box["thumbs"] = h.collect(stub.Generate(
                    h.generate_requests(path=h.video("h264_1080p.mp4"), chunk=1 << 20, **SLOW),
                    timeout=120))
            except h.grpc.RpcError as e:
                box["error"] = e
        t = threading.Thread(target=run)
        t.start()
        return t, box

    def test_kill_busy_worker(self):
        before = self.server.worker_pids()
        with h.channel(self.server.addr) as ch:
            t, box = self.start_slow_call(ch)
            victim = h.busy_worker(before)
            if victim is None:
                t.join(120)
                self.fail("no worker ever got busy (result: %s)" % box)
            h.kill_and_wait([victim])
            h.log("killed busy worker %d" % victim)

            # Meanwhile: calls on the surviving worker (and the respawned one) succeed.
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                futs = [ex.submit(h.generate, self.server.addr, path=h.video(n), timeout=60)
                        for n in ("h264.mp4", "vp9.webm", "hevc.mkv", "mpeg4.avi")]
                t.join(120)
                self.assertFalse(t.is_alive(), "the call of the killed worker hangs")
                for f in futs:
                    thumbs = f.result()
                    self.assertEqual(len(thumbs), 1)
                    self.assertEqual((thumbs[0].header.width, thumbs[0].header.height),
                                     (320, 180))

        self.assertIn("error", box, "the call of the killed worker succeeded? %s" % box)
        self.assertRpcCode(box["error"], "UNAVAILABLE", r"(?i)worker")
        h.log("status: UNAVAILABLE %r" % box["error"].details())

        # The pool is back to N, with a new pid instead of the victim.
        after = self.server.wait_roles(2, timeout=15)["workers"]
        self.assertNotIn(victim, after)
        self.assertEqual(len(after), 2)
        self.assertEqual(len(set(after) & set(before)), 1)
        self.assertRegex(self.server.log_text(), r"(?i)worker.*%d.*(killed|signal 9|SIGKILL)"
                         % victim, "the master did not log the worker's death")

        # And everything works with more concurrent calls than workers.
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            futs = [ex.submit(h.generate, self.server.addr, path=h.video("h264.mp4"),
                              times=["10%", "90%"], timeout=60) for _ in range(6)]
            for f in futs:
                self.assertEqual(len(f.result()), 2)

    def test_kill_all_workers_mid_job(self):
        before = self.server.worker_pids()
        with h.channel(self.server.addr) as ch:
            t, box = self.start_slow_call(ch)
            self.assertIsNotNone(h.busy_worker(before))
            h.kill_and_wait(before)
            t.join(120)
        self.assertIn("error", box)
        self.assertRpcCode(box["error"], "UNAVAILABLE", r"(?i)worker")
        after = self.server.wait_roles(2, timeout=15)["workers"]
        self.assertFalse(set(after) & set(before))
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"))
        self.assertEqual(len(thumbs), 1)

    def test_kill_idle_worker(self):
        before = self.server.worker_pids()
        h.kill_and_wait([before[0]])
        after = h.wait_for(lambda: (lambda r: r if before[0] not in r["workers"]
                                    and len(r["workers"]) == 2 else None)(self.server.roles()),
                           15, what="the respawned worker")["workers"]
        self.assertIn(before[1], after)
        thumbs = h.generate(self.server.addr, path=h.video("vp9.webm"))
        self.assertEqual(len(thumbs), 1)

    def test_client_retries_unavailable(self):
        """The batch client retries UNAVAILABLE: killing the worker mid-job costs a
        retry, not a failed file."""
        inp = h.make_input_dir(["h264_1080p.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        before = self.server.worker_pids()
        res = {}

        def run():
            res["r"] = h.run_client(["--server", self.server.addr, "--retries", "2",
                                     "--width", "1920", "--at", "1,2,3,4,5,6,7,8,9,9.9",
                                     inp, out], timeout=240)
        t = threading.Thread(target=run)
        t.start()
        victim = h.busy_worker(before)
        self.assertIsNotNone(victim)
        h.kill_and_wait([victim])
        t.join(240)
        r = res["r"]
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out),
                         sorted("h264_1080p-%d.png" % i for i in range(1, 11)))
        self.assertEqual(h.png_size(os.path.join(out, "h264_1080p-1.png")), (1920, 1080))
        self.assertEqual(h.client_retries(r.stdout), 1, "the kill must have cost one retry: %r" % r)
        after = self.server.wait_roles(2)["workers"]
        self.assertNotIn(victim, after)


if __name__ == "__main__":
    h.main()
