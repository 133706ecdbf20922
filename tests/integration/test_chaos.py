#!/usr/bin/env python3
"""Chaos: 500 calls from the real client at concurrency 16 while a random
worker is SIGKILLed every 200 ms. Each call decodes ~90 frames of a small
320x180 clip (one keyframe, thumbnail at 90 %; 96x64 and ~45 frames under
ASan), so the run lasts long enough for dozens of kills, most of them mid-job; on a
machine fast enough to finish before 15 kills, the batch runs again (up to 10 times).
It runs in the ASan+UBSan pass of CI too. Every call must succeed (the client retries
UNAVAILABLE, which is what a worker death mid-job gives), and afterwards the
front must hold no more file descriptors than before (no leaked reply socket,
spool file or memfd), the spool must be empty, and the front's RSS must be back
near its baseline."""
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time

import harness as h

N_FILES = 500
KILL_EVERY = 0.2
# Under ASan a job costs ~5x more: a smaller clip keeps the run near the same
# length (and its kills near the same number) instead of past the CTest timeout.
CLIP = ("testsrc2=size=96x64:rate=25:duration=2" if h.sanitized()
        else "testsrc2=size=320x180:rate=25:duration=4")


def fds(pid):
    return sorted(os.listdir("/proc/%d/fd" % pid), key=int)


def kids(pid):
    """Children of pid, from /proc/PID/task/PID/children: cheap, unlike a /proc scan,
    so the killer keeps its 200 ms pace on a loaded machine."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def spool_fds(pid, spool):
    """Spool files the front holds: O_TMPFILE files have no name, only an fd whose
    link reads '<spool>/#<inode> (deleted)'."""
    n = 0
    for fd in fds(pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith(spool + "/"):
                n += 1
        except OSError:
            pass
    return n


class Chaos(h.unittest.TestCase):
    def test_chaos(self):
        tmp = tempfile.mkdtemp(prefix="tn-chaos-")
        self.addCleanup(shutil.rmtree, tmp, True)
        clip = os.path.join(tmp, "clip.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f",
                        "lavfi", "-i", CLIP, "-c:v",
                        "libx264", "-preset", "ultrafast", "-g", "250", "-pix_fmt", "yuv420p",
                        clip],
                       check=True)
        inp = os.path.join(tmp, "in")
        os.mkdir(inp)
        for i in range(N_FILES):
            os.link(clip, os.path.join(inp, "clip%03d.mp4" % i))
        warm_in = os.path.join(tmp, "warm")
        os.mkdir(warm_in)
        for i in range(32):
            os.link(clip, os.path.join(warm_in, "warm%02d.mp4" % i))

        # A fresh ASan worker's first job is slow (shadow memory, page faults): with 4
        # of them, kills every 200 ms leave almost none past its first job.
        s = h.Server(workers=8 if h.sanitized() else 4)
        self.addCleanup(s.cleanup)
        try:
            self._run(s, tmp, inp, warm_in)
        except BaseException:
            s.dump_log(300)
            raise

    def _run(self, s, tmp, inp, warm_in):
        front = s.front_pid()
        # warm up gRPC's and the allocator's pools before the baseline
        r = h.run_client(["--server", s.addr, "--jobs", "16", warm_in,
                          os.path.join(tmp, "warm-out")])
        self.assertEqual(r.returncode, 0, r)
        time.sleep(0.5)
        fd0 = fds(front)
        rss0 = h.vm_status(front, "VmRSS")

        stop = threading.Event()
        killed = []

        def killer():
            rnd = random.Random(4)
            while not stop.wait(KILL_EVERY):
                ws = [p for p in kids(s.pid) if p != front]
                if ws:
                    p = rnd.choice(ws)
                    try:
                        os.kill(p, 9)
                        killed.append(p)
                    except ProcessLookupError:
                        pass
        t = threading.Thread(target=killer, daemon=True)
        t0 = time.monotonic()
        t.start()
        rounds = retried = 0
        try:
            # The kills come at a fixed pace, the calls as fast as the machine goes: a
            # quiet machine can finish a batch before 15 kills. Then the batch runs
            # again, into a new folder, up to 10 times.
            while True:
                rounds += 1
                out = os.path.join(tmp, "out%d" % rounds)
                r = h.run_client(["--server", s.addr, "--jobs", "16", "--retries", "20",
                                  "--at", "90%", inp, out], timeout=300)
                retried += h.client_retries(r.stdout)
                if r.returncode != 0 or len(killed) >= 15 or rounds == 10:
                    break
                self.assertEqual(len(h.tree_files(out)), N_FILES)
        finally:
            stop.set()
            t.join()
        elapsed = time.monotonic() - t0
        h.log("%d calls in %.1f s (%d round(s)), %d workers killed; client: exit %d, %d retries"
              % (N_FILES * rounds, elapsed, rounds, len(killed), r.returncode, retried))
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(len(h.tree_files(out)), N_FILES)
        self.assertGreaterEqual(len(killed), int(elapsed / KILL_EVERY * 0.5),
                                "the killer did not keep up")
        self.assertGreaterEqual(len(killed), 15, "too short to be chaos: make the clips longer")
        self.assertEqual(s.front_pid(), front, "the front must have survived")
        # The kills hit jobs, and the client's retries are what saved those calls: with 16
        # calls in flight on 4-8 workers nearly every worker killed was busy. A quarter of
        # the kills is the floor (some land on a worker still starting).
        self.assertGreaterEqual(retried, len(killed) // 4,
                                "%d kills but only %d retries: the kills missed the jobs"
                                % (len(killed), retried))

        # quiescence: the same fds as before, nothing in the spool, RSS near baseline
        def settled():
            return len(fds(front)) <= len(fd0) and spool_fds(front, s.spool) == 0
        try:
            h.wait_for(settled, 15, what="the front's fds to return to the baseline")
        finally:
            h.log("front fds: %d before, %d after (%s -> %s); spool files held: %d"
                  % (len(fd0), len(fds(front)), fd0, fds(front), spool_fds(front, s.spool)))
        self.assertEqual(os.listdir(s.spool), [])
        rss1 = h.vm_status(front, "VmRSS")
        h.log("front RSS: %.1f MB before, %.1f MB after" % (rss0 / 1e6, rss1 / 1e6))
        if not h.sanitized():  # ASan's quarantine keeps freed memory resident by design
            self.assertLess(rss1, rss0 + 16e6, "front RSS did not come back near its baseline")
        self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    h.main()
