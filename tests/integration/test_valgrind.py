#!/usr/bin/env python3
"""The server under valgrind memcheck: zero errors in the front (and the master).

The master forks the front and the workers without exec, so valgrind, which
follows fork, runs all of them: the whole server starts under memcheck with one
log per process (--log-file=vg.%p.log). The test drives the front through what
it does for a living -- uploads in PNG, JPEG and WebP, a file that is no video,
an upload over --max-upload-bytes, a client that cancels mid-upload, a client
that never half-closes and goes away, health checks, List, a Batch run to its end
and one cancelled mid-way, the real thumbnail_client (uploads, and --local's
Batch) -- then stops the server gracefully (SIGQUIT: the front
drains and exits through its normal shutdown) and reads the front's and the
master's summaries: "ERROR SUMMARY: 0 errors", where definite and indirect
leaks count as errors. The worker's summary is logged, not required: memcheck
runs Debian's libav* there, and this test is about our gRPC front.

Two things are needed to run it at all:
* libhwy (libavcodec -> libjxl -> libhwy) executes RDTSCP at load time, which
  valgrind 3.19 does not emulate (SIGILL before main): the test-only shim
  tests/valgrind/hwy_timer_shim.c is preloaded.
* --no-sandbox: under valgrind the worker's syscalls are valgrind's, which its
  seccomp allowlist rightly does not contain.

No suppressions file: there was nothing to suppress in the front or master.
Skipped in an ASan build (ASan and valgrind cannot share a process) and when
valgrind is not installed."""
import os
import re
import shutil
import signal
import time
import unittest

import harness as h

SHIM = os.path.join(h.BUILD_DIR, "tests", "libtn_hwy_timer_shim.so")


def summary(text):
    """(errors, definitely lost bytes, possibly lost bytes) from one valgrind log."""
    m = re.search(r"ERROR SUMMARY: ([\d,]+) errors", text)
    if not m:
        return None
    lost = {}
    for kind in ("definitely", "indirectly", "possibly"):
        k = re.search(r"%s lost: ([\d,]+) bytes" % kind, text)
        lost[kind] = int(k.group(1).replace(",", "")) if k else 0
    return int(m.group(1).replace(",", "")), lost


@unittest.skipIf(h.sanitized(), "ASan build: valgrind cannot run an ASan binary")
@unittest.skipUnless(shutil.which("valgrind"), "valgrind is not installed")
class Valgrind(h.ServerTestCase):
    workers = 1

    @classmethod
    def setUpClass(cls):
        cls.vgdir = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                 "tn-valgrind-%d" % os.getpid())
        shutil.rmtree(cls.vgdir, ignore_errors=True)
        os.makedirs(cls.vgdir)
        cls.media = os.path.join(cls.vgdir, "media")
        os.makedirs(os.path.join(cls.media, "sub"))
        for i in range(6):
            shutil.copyfile(h.video("h264.mp4"), os.path.join(cls.media, "sub", "m%d.mp4" % i))
        shutil.copyfile(h.video("random.bin"), os.path.join(cls.media, "random.bin"))
        wrapper = ["valgrind", "--tool=memcheck", "--log-file=%s/vg.%%p.log" % cls.vgdir,
                   "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                   "--track-fds=no", "--num-callers=30"]
        cls.server = h.Server(workers=cls.workers, start=False, wrapper=wrapper,
                              env={"LD_PRELOAD": SHIM},
                              extra=["--no-sandbox", "--max-upload-bytes", "2M",
                                     "--idle-timeout", "3s", "--grace", "20s",
                                     "--media-root", cls.media])
        t0 = time.monotonic()
        cls.server.start(timeout=120)
        h.log("server healthy under valgrind after %.1f s" % (time.monotonic() - t0))

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            cls.server.cleanup()
        shutil.rmtree(cls.vgdir, ignore_errors=True)

    def test_front_has_no_memcheck_errors(self):
        srv = self.server
        roles = srv.wait_roles(timeout=60)
        front, master = roles["front"], srv.pid
        t0 = time.monotonic()

        # What the front does for a living.
        thumbs = h.generate(srv.addr, path=h.video("h264.mp4"), times=["10%", 2.5], timeout=120)
        self.assertEqual(len(thumbs), 2)
        h.png_decode(bytes(thumbs[0].data))
        for fmt in (1, 2):
            thumbs = h.generate(srv.addr, path=h.video("vp9.webm"), fmt=fmt, timeout=120)
            self.assertEqual(len(thumbs), 1)
            self.assertGreater(thumbs[0].header.size, 100)
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(srv.addr, path=h.video("random.bin"), timeout=120)
        self.assertRpcCode(cm.exception, "INVALID_ARGUMENT")
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(srv.addr, path=h.video("h264_1080p.mp4"), declare_size=False, timeout=120)
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED")
        # A client that cancels mid-upload.
        data = h.read_bytes(h.video("h264.mp4"))
        self.assertGreater(len(data), 4 * 65536)
        with h.channel(srv.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)

            def reqs():
                yield h.pb.GenerateRequest(options=h.pb.Options(file_name="c.mp4",
                                                                size=len(data)))
                # part of the file only: all of it would start the job and might finish it
                for off in range(0, 3 * 65536, 65536):
                    yield h.pb.GenerateRequest(data=data[off:off + 65536])
                time.sleep(0.5)
                call.cancel()
            call = stub.Generate(reqs(), timeout=120)
            with self.assertRaises(h.grpc.RpcError) as cm:
                list(call)
            self.assertEqual(cm.exception.code().name, "CANCELLED")
        # A client that stalls mid-upload (the --idle-timeout path).
        with h.channel(srv.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)

            def stalled():
                yield h.pb.GenerateRequest(options=h.pb.Options(file_name="s.mp4",
                                                                size=len(data)))
                yield h.pb.GenerateRequest(data=data[:65536])
                time.sleep(8)  # > --idle-timeout 3s
                yield h.pb.GenerateRequest(data=data[65536:])
            with self.assertRaises(h.grpc.RpcError) as cm:
                list(stub.Generate(stalled(), timeout=120))
            self.assertRpcCode(cm.exception, "DEADLINE_EXCEEDED")
        # Then the real client.
        self.assertEqual(h.health_check(srv.addr, timeout=30), "SERVING")
        inp = h.make_input_dir(["h264.mp4", "mpeg4.avi"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = h.run_client(["--server", srv.addr, "--timeout", "120", inp, out], timeout=300)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out), ["h264.png", "mpeg4.png"])
        # Library mode: List, a Batch to its end, a Batch cancelled after its first file.
        with h.channel(srv.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            r = stub.List(h.pb.ListRequest(recursive=True), timeout=120)
            self.assertEqual([e.path for e in r.entries],
                             ["random.bin", "sub"] + ["sub/m%d.mp4" % i for i in range(6)])
            events = list(stub.Batch(h.pb.BatchRequest(dir="", recursive=True), timeout=120))
            self.assertEqual(events[-1].summary.files, 7)
            self.assertEqual(events[-1].summary.failed, 1)
            call = stub.Batch(h.pb.BatchRequest(dir="sub"), timeout=120)
            for ev in call:
                if ev.WhichOneof("event") == "done":
                    call.cancel()
                    break
        r = h.run_client(["--server", srv.addr, "--timeout", "120", "--local",
                          "--exclude", "random.bin", self.media, out], timeout=300)
        self.assertEqual(r.returncode, 0, r)
        h.log("calls under valgrind took %.1f s" % (time.monotonic() - t0))

        # Graceful stop: the front drains and exits normally, then the master.
        rc = srv.stop(sig=signal.SIGQUIT, timeout=120)
        self.assertEqual(rc, 0)
        logs = {}
        for name in os.listdir(self.vgdir):
            m = re.match(r"vg\.(\d+)\.log$", name)
            if m:
                with open(os.path.join(self.vgdir, name), errors="replace") as f:
                    logs[int(m.group(1))] = f.read()
        for pid, text in sorted(logs.items()):
            role = "front" if pid == front else "master" if pid == master else "worker"
            h.log("valgrind %s %d: %s" % (role, pid, summary(text)))
        for pid, role in ((front, "front"), (master, "master")):
            self.assertIn(pid, logs, "no valgrind log for the %s %d" % (role, pid))
            s = summary(logs[pid])
            self.assertIsNotNone(s, "the %s's valgrind log has no summary:\n%s"
                                 % (role, logs[pid][-3000:]))
            if s[0] != 0:
                h.log(logs[pid][-20000:])
            self.assertEqual(s[0], 0, "memcheck errors in the %s (log above)" % role)
            self.assertEqual(s[1]["definitely"] + s[1]["indirectly"], 0)


if __name__ == "__main__":
    h.main()
