#!/usr/bin/env python3
"""Errors: bad inputs give INVALID_ARGUMENT with a message and leave nothing
behind; limits give RESOURCE_EXHAUSTED; unknown methods UNIMPLEMENTED at once;
an upload that ends without reaching its declared size (or without an end
marker) is discarded and never becomes a job. The server keeps serving."""
import os
import re
import time
import uuid

import harness as h

BAD = ["random.bin", "empty.mp4", "truncated.mp4", "audio_only.m4a"]


class Errors(h.ServerTestCase):
    workers = 2

    def client(self, *args, **kw):
        return h.run_client(["--server", self.server.addr] + list(args), **kw)

    def assertStillServing(self):
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"))
        self.assertEqual(len(thumbs), 1)
        self.assertEqual((thumbs[0].header.width, thumbs[0].header.height), (320, 180))
        h.png_decode(thumbs[0].data)

    def assertSpoolEmpty(self):
        # Spooled uploads are O_TMPFILE (never named) or unlinked: nothing may remain.
        try:
            h.wait_for(lambda: os.listdir(self.server.spool) == [], 5, what="an empty spool")
        except AssertionError:
            self.fail("files left in the spool dir: %s" % os.listdir(self.server.spool))

    def worker_lines(self):
        return [l for l in self.server.log_text().splitlines()
                if re.match(r"\S+ [A-Z]+ worker", l)]

    def wait_access_line(self, name):
        """The front logs a call's access line when it is done with the call: after it,
        no job can come of the call any more."""
        return h.wait_for(lambda: [l for l in self.server.log_text().splitlines()
                                   if re.search(r" front \d+: .*file=\"%s\"" % re.escape(name),
                                                l)],
                          10, what="the front's access line for %s" % name)

    def worker_cpu(self):
        return sum((h.proc_stat(p) or {"cpu": 0})["cpu"] for p in self.server.worker_pids())

    # ------------------------------------------------------------------
    def test_bad_files_with_client(self):
        for n in BAD:
            with self.subTest(file=n):
                inp = h.make_input_dir([n], parent=self.tmpdir())
                out = os.path.join(self.tmpdir(), "out")
                r = self.client(inp, out)
                self.assertEqual(r.returncode, 1, r)
                line = r.line_for(n)
                self.assertIsNotNone(line, "no line for %s: %r" % (n, r))
                self.assertIn("INVALID_ARGUMENT", line, r)
                # Some words beyond the status name: a reason a user can act on.
                rest = line.replace("INVALID_ARGUMENT", "").replace(n, "")
                self.assertRegex(rest, r"[a-z]{3,}.*[a-z]{3,}", "no message in %r" % line)
                files = h.tree_files(out) if os.path.isdir(out) else []
                self.assertEqual(files, [], "output (or temp files) left for a failed file")
        self.assertSpoolEmpty()
        self.assertStillServing()

    def test_bad_files_mixed_with_good(self):
        inp = h.make_input_dir(BAD + ["h264.mp4", "vp9.webm"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--jobs", "4", inp, out)
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(h.tree_files(out), ["h264.png", "vp9.png"])

    def test_bad_files_with_grpcio(self):
        for n in BAD:
            with self.subTest(file=n):
                t0 = time.monotonic()
                with self.assertRaises(h.grpc.RpcError) as cm:
                    h.generate(self.server.addr, path=h.video(n), timeout=30)
                self.assertRpcCode(cm.exception, "INVALID_ARGUMENT", r"\w{3,}")
                h.log("%s -> INVALID_ARGUMENT in %.0f ms: %s"
                      % (n, (time.monotonic() - t0) * 1000, cm.exception.details()))
        self.assertStillServing()

    def test_bad_options(self):
        vid = h.video("h264.mp4")
        cases = [
            dict(times=["150%"]),
            dict(times=[-1]),
            dict(fmt=99),
            dict(mode=99),
            dict(times=[1] * 1000),              # more time points than the server allows
        ]
        for kw in cases:
            with self.subTest(**{k: str(v)[:20] for k, v in kw.items()}):
                with self.assertRaises(h.grpc.RpcError) as cm:
                    h.generate(self.server.addr, path=vid, timeout=30, **kw)
                self.assertRpcCode(cm.exception, "INVALID_ARGUMENT", r"\w{3,}")
        self.assertStillServing()

    def test_protocol_violations(self):
        """Streams that are not options-then-data: INVALID_ARGUMENT, no hang."""
        data = h.read_bytes(h.video("h264.mp4"))

        def no_options():
            yield h.pb.GenerateRequest(data=data[:1000])
            yield h.pb.GenerateRequest(end=h.pb.End())

        def two_options():
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name="a.mp4"))
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name="a.mp4"))

        def empty_message():
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name="a.mp4"))
            yield h.pb.GenerateRequest()

        def more_than_declared():
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name="a.mp4", size=100))
            yield h.pb.GenerateRequest(data=data[:1000])
            yield h.pb.GenerateRequest(end=h.pb.End())

        with h.channel(self.server.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            for gen in (no_options, two_options, empty_message, more_than_declared):
                with self.subTest(case=gen.__name__):
                    with self.assertRaises(h.grpc.RpcError) as cm:
                        h.collect(stub.Generate(gen(), timeout=10))
                    self.assertRpcCode(cm.exception, "INVALID_ARGUMENT")
        self.assertStillServing()

    def test_unknown_methods(self):
        with h.channel(self.server.addr) as ch:
            for method in ("/foo.Bar/Baz", "/thumbnail.v1.Thumbnailer/Nope",
                           "/grpc.health.v1.Health/Nope"):
                with self.subTest(method=method):
                    t0 = time.monotonic()
                    with self.assertRaises(h.grpc.RpcError) as cm:
                        ch.unary_unary(method)(b"", timeout=5)
                    elapsed = time.monotonic() - t0
                    self.assertRpcCode(cm.exception, "UNIMPLEMENTED")
                    self.assertLess(elapsed, 2.0, "UNIMPLEMENTED took %.1f s" % elapsed)
            # A streaming call to an unknown method, with requests: same.
            t0 = time.monotonic()
            with self.assertRaises(h.grpc.RpcError) as cm:
                list(ch.stream_stream("/foo.Bar/Stream")(iter([b"x"] * 3), timeout=5))
            self.assertRpcCode(cm.exception, "UNIMPLEMENTED")
            self.assertLess(time.monotonic() - t0, 2.0)
        self.assertStillServing()

    def _no_job_for(self, name, requests):
        """Run a broken upload; assert it fails and that no worker ever saw it."""
        cpu0 = self.worker_cpu()
        lines0 = len(self.worker_lines())
        with h.channel(self.server.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            with self.assertRaises(h.grpc.RpcError) as cm:
                h.collect(stub.Generate(requests, timeout=10))
        self.assertIn(cm.exception.code().name, ("INVALID_ARGUMENT", "CANCELLED"),
                      "got %s: %s" % (cm.exception.code().name, cm.exception.details()))
        self.wait_access_line(name)
        new_worker_lines = self.worker_lines()[lines0:]
        self.assertFalse([l for l in new_worker_lines if name in l],
                         "a worker ran the discarded upload: %s" % new_worker_lines)
        # Idle workers block in recvmsg(): they burn no CPU unless a job arrives.
        self.assertLessEqual(self.worker_cpu() - cpu0, 1, "workers used CPU: a job ran?")
        return cm.exception

    def test_upload_ends_early(self):
        """Options declare the full size, part of the data is sent, then the stream is
        closed without an end marker: a cancelled upload, discarded."""
        data = h.read_bytes(h.video("h264.mp4"))
        # Positive control: a good upload with a unique name shows up in the worker log
        # (if the workers log file names at all).
        good = "control-%s.mp4" % uuid.uuid4().hex[:8]
        h.generate(self.server.addr, data=data, file_name=good)
        # Positive control: a job that did run shows up in the workers' log (it is logged
        # after the result is sent: wait for it), so the absence below means something.
        h.wait_for(lambda: any(good in l for l in self.worker_lines()), 10,
                   what="the workers' line for the control upload %s" % good)

        name = "early-%s.mp4" % uuid.uuid4().hex[:8]

        def early():
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name=name, size=len(data)))
            for off in range(0, len(data) // 2, 65536):
                yield h.pb.GenerateRequest(data=data[off:off + 65536])
        self._no_job_for(name, early())

        # Size unknown (0) and no end marker: also never complete.
        name2 = "noend-%s.mp4" % uuid.uuid4().hex[:8]

        def no_end():
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name=name2, size=0))
            for off in range(0, len(data), 65536):
                yield h.pb.GenerateRequest(data=data[off:off + 65536])
        self._no_job_for(name2, no_end())
        self.assertSpoolEmpty()
        self.assertStillServing()

    def test_client_cancel_mid_upload(self):
        data = h.read_bytes(h.video("h264_1080p.mp4"))
        name = "cancel-%s.mp4" % uuid.uuid4().hex[:8]
        lines0 = len(self.worker_lines())
        with h.channel(self.server.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            sent = [0]

            def reqs():
                yield h.pb.GenerateRequest(options=h.pb.Options(file_name=name, size=len(data)))
                for off in range(0, len(data), 65536):
                    sent[0] += 1
                    yield h.pb.GenerateRequest(data=data[off:off + 65536])
                    if sent[0] == 20:
                        time.sleep(0.2)
                        call.cancel()
                        return
            call = stub.Generate(reqs(), timeout=10)
            with self.assertRaises(h.grpc.RpcError) as cm:
                list(call)
            self.assertEqual(cm.exception.code().name, "CANCELLED")
        self.wait_access_line(name)
        self.assertFalse([l for l in self.worker_lines()[lines0:] if name in l])
        self.assertSpoolEmpty()
        self.assertStillServing()


class UploadLimit(h.ServerTestCase):
    workers = 1
    server_extra = ("--max-upload-bytes", "1M")

    def test_declared_too_large(self):
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264_1080p.mp4"), timeout=30)
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED", r"\w{3,}")

    def test_undeclared_too_large(self):
        t0 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264_1080p.mp4"), declare_size=False,
                       timeout=30)
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED", r"\w{3,}")
        h.log("undeclared 16 MB upload over a 1 MiB limit stopped in %.2f s"
              % (time.monotonic() - t0))

    def test_client_reports_it(self):
        inp = h.make_input_dir(["h264_1080p.mp4", "h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = h.run_client(["--server", self.server.addr, inp, out])
        self.assertEqual(r.returncode, 1, r)
        line = r.line_for("h264_1080p.mp4")
        self.assertIsNotNone(line, r)
        self.assertIn("RESOURCE_EXHAUSTED", line)
        self.assertEqual(h.tree_files(out), ["h264.png"])  # 380 KB: under the limit

    def test_under_limit_still_works(self):
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"))
        self.assertEqual(len(thumbs), 1)


if __name__ == "__main__":
    h.main()
