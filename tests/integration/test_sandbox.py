#!/usr/bin/env python3
"""The workers' seccomp sandbox (src/worker/sandbox.c), seen from outside.

* On by default: every worker's /proc/<pid>/status says "Seccomp: 2" (filter
  mode) and the log says "sandbox on: N syscalls allowed"; the front and the
  master are not filtered.
* Decoding works under it: every codec clip in PNG, JPEG and WebP, accurate
  and keyframe, plus an MPEG-TS whose service name the demuxer converts with
  iconv (glibc loads converters lazily with openat(): the sandbox warms them up;
  without that this clip killed its worker).
* A violation (TN_TESTING builds: a job for a file named
  "tn-test-sandbox-violation" makes the worker create a socket mid-job, as an
  exploited decoder calling home would): the call ends UNAVAILABLE with a
  message naming the worker, the master logs "killed by the sandbox (SIGSYS",
  the pool is back to N sandboxed workers and the next call succeeds. (That
  open() is refused too is shown by the MPEG-TS clip above, which killed its
  worker before the iconv warm-up; ASan builds allow read-only opens for the
  sanitizer's reports, hence a socket here.)
* --no-sandbox: Seccomp 0, no "sandbox on" line, and the same job succeeds.
* SIGUSR1 (log reopen): a sandboxed worker cannot open the new log file, so it
  is replaced; the replacement logs into the new file, still sandboxed.
* The other fences around the decoder: RLIMIT_AS of 1 GiB by default, an idle
  worker holding only stdio, the log and the job queue, and an HLS playlist or
  a concat list naming a real video refused as INVALID_ARGUMENT.
"""
import os
import re
import signal
import subprocess
import unittest

import harness as h

VIOLATION_NAME = "tn-test-sandbox-violation"
CODEC_CLIPS = ["h264.mp4", "hevc.mkv", "vp9.webm", "mpeg4.avi", "rotate90.mp4"]
FORMATS = {"PNG": 0, "JPEG": 1, "WEBP": 2}


def seccomp_mode(pid):
    """0 = none, 1 = strict, 2 = filter (proc(5)); None if pid is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def testing_hooks_built():
    """Was the server built with -DTN_TESTING=ON (the violation hook)?"""
    try:
        with open(os.path.join(h.BUILD_DIR, "CMakeCache.txt")) as f:
            return re.search(r"^TN_TESTING:BOOL=(ON|1|TRUE|YES)$", f.read(), re.M | re.I) is not None
    except OSError:
        return False


def make_mpegts(path):
    """A 1 s MPEG-2 TS with a service name in its SDT, as broadcast captures have."""
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=320x240:rate=25:duration=1", "-c:v", "mpeg2video",
                    "-metadata", "service_name=tn test", "-metadata", "service_provider=tn",
                    "-f", "mpegts", path], check=True)


class Sandbox(h.ServerTestCase):
    workers = 2

    def sandbox_lines(self):
        return re.findall(r"worker#\d+ (\d+): sandbox on: (\d+) syscalls allowed",
                          self.server.log_text())

    def assertPoolSandboxed(self):
        workers = self.server.wait_roles()["workers"]
        self.assertEqual(len(workers), self.workers)
        # A worker installs its filter once set up: a just-respawned one may not be there yet.
        h.wait_for(lambda: all(seccomp_mode(p) == 2 for p in workers), 10,
                   what="Seccomp: 2 in the status of workers %s (now %s)"
                   % (workers, [seccomp_mode(p) for p in workers]))
        logged = {int(p) for p, _n in self.sandbox_lines()}
        h.wait_for(lambda: set(workers) <= {int(p) for p, _n in self.sandbox_lines()}, 10,
                   what="'sandbox on' lines of workers %s (seen: %s)" % (workers, logged))
        return workers

    def test_1_on_by_default(self):
        self.assertPoolSandboxed()
        roles = self.server.wait_roles()
        self.assertEqual(seccomp_mode(roles["front"]), 0)
        self.assertEqual(seccomp_mode(self.server.pid), 0)
        counts = {int(n) for _p, n in self.sandbox_lines()}
        self.assertEqual(len(counts), 1, counts)
        n = counts.pop()
        h.log("sandbox on: %d syscalls allowed" % n)
        self.assertGreater(n, 15)
        self.assertLess(n, 60, "that is no longer a minimal allowlist")

    def test_2_decodes_under_sandbox(self):
        before = self.assertPoolSandboxed()
        ts = os.path.join(self.tmpdir(), "broadcast.ts")
        make_mpegts(ts)
        clips = [h.video(n) for n in CODEC_CLIPS] + [ts]
        calls = 0
        for path in clips:
            for fmt_name, fmt in FORMATS.items():
                for mode in (0, 1):
                    with self.subTest(clip=os.path.basename(path), fmt=fmt_name, mode=mode):
                        thumbs = h.generate(self.server.addr, path=path, times=["10%", "90%"],
                                            fmt=fmt, mode=mode, timeout=60)
                        calls += 1
                        self.assertEqual(len(thumbs), 2)
                        for t in thumbs:
                            self.assertEqual(t.header.size, len(t.data))
                            self.assertGreater(len(t.data), 100)
                        if fmt == 0:
                            h.png_decode(bytes(thumbs[0].data))
        h.log("%d calls under the sandbox" % calls)
        # No worker died on the way: same pids, no death in the log.
        self.assertEqual(sorted(self.server.wait_roles()["workers"]), sorted(before))
        self.assertNotRegex(self.server.log_text(), r"killed by the sandbox")

    @unittest.skipUnless(testing_hooks_built(),
                         "the server was built without -DTN_TESTING=ON (no violation hook)")
    def test_3_violation_kills_the_worker_only(self):
        before = self.assertPoolSandboxed()
        front = self.server.wait_roles()["front"]
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264.mp4"), file_name=VIOLATION_NAME,
                       timeout=60)
        self.assertRpcCode(cm.exception, "UNAVAILABLE", r"(?i)worker.*died")
        h.log("violation -> UNAVAILABLE: %s" % cm.exception.details())
        self.assertIn("test hook: job", self.server.log_text(),
                      "the hook did not run: not a TN_TESTING build?")
        # The front may answer before the master has reaped the worker.
        m = h.wait_for(lambda: re.search(r" master \d+: (worker#\d+) (\d+) killed by the sandbox "
                                         r"\(SIGSYS[^\n]*", self.server.log_text()), 10,
                       what="the master's line about the sandbox kill")
        victim = int(m.group(2))
        self.assertIn(victim, before)
        h.log("master: %s" % m.group(0).strip())
        # The pool is whole again, sandboxed, with a new pid for the victim; the front lived.
        after = h.wait_for(lambda: (lambda r: r if victim not in r["workers"]
                                    and len(r["workers"]) == self.workers else None)(
                                        self.server.roles()), 15, what="the respawned worker")
        self.assertEqual(after["front"], front)
        self.assertPoolSandboxed()
        # And it serves.
        for _ in range(3):
            thumbs = h.generate(self.server.addr, path=h.video("vp9.webm"), timeout=60)
            self.assertEqual(len(thumbs), 1)

    def test_4_log_reopen_replaces_workers(self):
        before = self.assertPoolSandboxed()
        rotated = self.server.log_path + ".1"
        os.rename(self.server.log_path, rotated)
        os.kill(self.server.pid, signal.SIGUSR1)
        # Idle sandboxed workers leave at once; the master respawns them.
        after = h.wait_for(lambda: (lambda r: r if not set(r["workers"]) & set(before)
                                    and len(r["workers"]) == self.workers else None)(
                                        self.server.roles()), 15, what="replaced workers")
        self.assertPoolSandboxed()
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"), file_name="after-usr1.mp4",
                            timeout=60)
        self.assertEqual(len(thumbs), 1)

        def new_log():
            with open(self.server.log_path, errors="replace") as f:
                return f.read()
        # The job's own line (written after the reply) comes from a new worker, into the new file.
        job_line = r"worker#\d+ (%s): job \d+ after-usr1\.mp4" % "|".join(
            str(p) for p in after["workers"])
        h.wait_for(lambda: re.search(job_line, new_log()), 10, what="the job's line in the new log")
        new = new_log()
        self.assertRegex(new, r"sandbox on: \d+ syscalls allowed")
        self.assertNotIn("killed by the sandbox", new)

    def test_5_limits_around_the_decoder(self):
        """The other fences: RLIMIT_AS per worker, only the job's fd read (no
        playlist or concat list may name another file), a worker holding no other files."""
        workers = self.assertPoolSandboxed()
        if "--worker-memory" not in h.server_default_args():  # ASan builds turn it off
            for p in workers:
                with open("/proc/%d/limits" % p) as f:
                    line = [l for l in f if l.startswith("Max address space")][0]
                self.assertEqual(line.split()[3:5], ["1073741824", "1073741824"], line)
        # Idle, a worker holds stdin/stdout/stderr, the log file and the job queue: nothing else.
        # A worker may still be closing the last job's reply socket after the client got its
        # answer (DONE is sent first): wait for it to be idle, then check.
        def fd_table(p):
            return {int(fd): os.readlink("/proc/%d/fd/%s" % (p, fd))
                    for fd in os.listdir("/proc/%d/fd" % p)}
        for p in workers:
            try:
                h.wait_for(lambda: len(fd_table(p)) <= 5, 5, what="worker %d idle" % p)
            except AssertionError:
                pass  # the assertions below say what it holds
            fds = fd_table(p)
            others = {fd: t for fd, t in fds.items()
                      if fd > 2 and t != self.server.log_path and not t.startswith("socket:")}
            self.assertEqual(others, {}, "worker %d holds %s" % (p, fds))
            self.assertEqual(len([t for t in fds.values() if t.startswith("socket:")]), 1, fds)
        # Formats that name other files are refused by name, before anything is opened: the
        # named file is a real video, so opening it would have produced a thumbnail.
        target = h.video("h264.mp4")
        lists = {
            "list.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nfile://%s\n"
                         "#EXT-X-ENDLIST\n" % target,
            "list.ffconcat": "ffconcat version 1.0\nfile '%s'\n" % target,
            "list.m3u8.mp4": "#EXTM3U\n#EXTINF:4,\n%s\n" % target,
        }
        for name, text in lists.items():
            with self.subTest(name=name):
                with self.assertRaises(h.grpc.RpcError) as cm:
                    h.generate(self.server.addr, data=text.encode(), file_name=name, timeout=60)
                self.assertRpcCode(cm.exception, "INVALID_ARGUMENT",
                                   r"not accepted|not a video")
                h.log("%s -> %s" % (name, cm.exception.details()))
        self.assertEqual(sorted(self.server.wait_roles()["workers"]), sorted(workers))


class NoSandbox(h.ServerTestCase):
    workers = 1
    server_extra = ("--no-sandbox",)

    def test_off(self):
        workers = self.server.wait_roles()["workers"]
        self.assertEqual([seccomp_mode(p) for p in workers], [0])
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"), timeout=60)
        self.assertEqual(len(thumbs), 1)
        if testing_hooks_built():
            # Unfiltered, the hook's socket() is harmless and the job completes.
            thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"),
                                file_name=VIOLATION_NAME, timeout=60)
            self.assertEqual(len(thumbs), 1)
            self.assertIn("test hook: job", self.server.log_text())
        self.assertNotIn("sandbox on", self.server.log_text())
        self.assertEqual(self.server.wait_roles()["workers"], workers)


if __name__ == "__main__":
    h.main()
