#!/usr/bin/env python3
"""Pull mode: the server asks for byte ranges instead of receiving an upload.

* Every playable file of the corpus (MP4 with the moov first and last, MKV, WebM,
  AVI) gives byte-identical thumbnails in pull and upload mode, with the real
  client and with an independent grpcio client; files that fail do so with the
  same status and message.
* A >= 1 GiB MP4 with the moov at the end (stream copy of a short clip, so it is
  made in seconds) costs under 2 % of its bytes on the wire.
* Misbehaving clients (grpcio, on purpose): no answer or slow answers ->
  DEADLINE_EXCEEDED (job deadline, or --idle-timeout), never a hang; too many
  bytes, a wrong offset, unsolicited bytes, a half-close with a range
  outstanding -> INVALID_ARGUMENT. Afterwards the front and the workers hold no
  more file descriptors than before and still serve.
* --max-upload-bytes bounds the bytes pulled (RESOURCE_EXHAUSTED), not the file's size.
"""
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import harness as h
from harness import pb, pb_grpc

CORPUS = ["h264.mp4", "hevc.mkv", "vp9.webm", "mpeg4.avi", "rotate90.mp4", "anamorphic.mp4",
          "h264_1080p.mp4"]
BAD = ["random.bin", "truncated.mp4", "audio_only.m4a"]
# Made from h264_1080p.mp4 by stream copy: 16 MB, so seeking needs the index at the end
# (MP4 moov, Matroska cues, AVI idx1) and pull mode must fetch it first.
REMUXED = ["moov_last.mp4", "cues_last.mkv", "index_last.avi"]


def ff(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"] + list(args),
                   check=True)


def moov_at_end(src, dst):
    """A copy of src with the moov after the mdat (ffmpeg's default without +faststart)."""
    ff("-i", src, "-c", "copy", "-an", dst)
    with open(dst, "rb") as f:
        head = f.read(64)
    if b"mdat" not in head or b"moov" in head:
        raise AssertionError("%s: the moov is not at the end" % dst)


class PullCall:
    """One pull-mode Generate call from an independent grpcio client.

    answer(range_request) returns the RangeData messages to send (a list), or None to
    send nothing; delay is slept before each answer. close_after_options half-closes
    the request stream right after the options."""

    def __init__(self, addr, path, answer=None, delay=0.0, timeout=30, first=(), **opts):
        self.addr = addr
        self.path = path
        self.size = os.path.getsize(path)
        self.answer = answer or self.honest
        self.delay = delay
        self.timeout = timeout
        self.first = list(first)  # extra messages right after the options
        self.opts = opts
        self.q = queue.Queue()
        self.ranges = []
        self.sent = 0
        self.thumbs = []
        self.error = None

    def honest(self, rr):
        with open(self.path, "rb") as f:
            f.seek(rr.offset)
            data = f.read(rr.length)
        # in pieces of at most 256 KiB: one range may take several messages
        return [pb.RangeData(offset=rr.offset + o, data=data[o:o + (256 << 10)])
                for o in range(0, len(data), 256 << 10)]

    def _requests(self):
        opts = dict(file_name=os.path.basename(self.path), size=self.size, pull=True)
        opts.update(self.opts)
        yield pb.GenerateRequest(options=pb.Options(**opts))
        for m in self.first:
            yield m
        while True:
            m = self.q.get()
            if m is None:
                return
            yield m

    def run(self):
        """[Thumb]; the grpc.RpcError is kept in self.error (and the result is None)."""
        t0 = time.monotonic()
        try:
            with h.channel(self.addr) as ch:
                stub = pb_grpc.ThumbnailerStub(ch)
                for r in stub.Generate(self._requests(), timeout=self.timeout):
                    w = r.WhichOneof("msg")
                    if w == "range_request":
                        rr = r.range_request
                        self.ranges.append((rr.offset, rr.length))
                        if self.thumbs and len(self.thumbs[-1].data) != self.thumbs[-1].header.size:
                            raise AssertionError("range request inside a thumbnail")
                        if self.delay:
                            time.sleep(self.delay)
                        msgs = self.answer(rr)
                        if msgs == "close":
                            self.q.put(None)
                            continue
                        for m in msgs or []:
                            self.sent += len(m.data)
                            self.q.put(pb.GenerateRequest(range_data=m))
                    elif w == "thumbnail":
                        self.thumbs.append(h.Thumb(r.thumbnail))
                    elif w == "data":
                        self.thumbs[-1].data += r.data
                    else:
                        raise AssertionError("empty response message")
            return self.thumbs
        except h.grpc.RpcError as e:
            self.error = e
            return None
        finally:
            self.elapsed = time.monotonic() - t0
            self.q.put(None)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class PullCorpus(h.ServerTestCase):
    workers = 2

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = tempfile.mkdtemp(prefix="tn-pull-")
        cls.input = os.path.join(cls.dir, "in")
        os.mkdir(cls.input)
        for n in CORPUS:
            shutil.copyfile(h.video(n), os.path.join(cls.input, n))
        src = h.video("h264_1080p.mp4")
        moov_at_end(src, os.path.join(cls.input, "moov_last.mp4"))
        ff("-i", src, "-c", "copy", os.path.join(cls.input, "cues_last.mkv"))
        ff("-i", src, "-c", "copy", "-bsf:v", "h264_mp4toannexb",
           os.path.join(cls.input, "index_last.avi"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)
        super().tearDownClass()

    def client(self, out, *extra, at="0,10%,50%,1.5"):
        return h.run_client(["-s", self.server.addr, "--at", at, *extra, self.input, out],
                            check_rc=0)

    def test_corpus_identical_to_upload(self):
        """Real client: --pull and --no-pull give the same bytes for every file and time."""
        up, pull = os.path.join(self.tmpdir(), "up"), os.path.join(self.tmpdir(), "pull")
        ru = self.client(up, "--no-pull")
        rp = self.client(pull, "--pull")
        files = h.tree_files(up)
        self.assertEqual(len(files), 4 * (len(CORPUS) + len(REMUXED)), ru)
        self.assertEqual(files, h.tree_files(pull))
        for f in files:
            self.assertEqual(h.read_bytes(os.path.join(up, f)), h.read_bytes(os.path.join(pull, f)),
                             "%s differs between upload and pull mode" % f)
        for n in CORPUS + REMUXED:
            line = rp.line_for(n)
            self.assertRegex(line or "", r"pull: sent [0-9.]+ [KMG]?i?B of ", rp)
            self.assertNotIn("pull:", ru.line_for(n))
        self.assertRegex(rp.stdout, r"sent for [0-9.]+ MiB of video")
        # never more than the file: no byte is fetched twice
        units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}
        for m in re.finditer(r"pull: sent ([0-9.]+) (B|KiB|MiB) of ([0-9.]+) (B|KiB|MiB)",
                             rp.stdout):
            self.assertLessEqual(float(m.group(1)) * units[m.group(2)],
                                 float(m.group(3)) * units[m.group(4)], m.group(0))

    def test_threshold(self):
        """Without --pull/--no-pull, files of at least --pull-threshold are pulled."""
        out = os.path.join(self.tmpdir(), "out")
        r = self.client(out, "--pull-threshold", "1M", at="10%")
        self.assertIn("pull:", r.line_for("h264_1080p.mp4"))
        self.assertNotIn("pull:", r.line_for("h264.mp4"))

    def test_grpcio_client_identical(self):
        """An independent client answering in 256 KiB pieces gets the upload's bytes."""
        for n in CORPUS + REMUXED:
            path = os.path.join(self.input, n)
            for mode in (pb.SEEK_MODE_ACCURATE, pb.SEEK_MODE_KEYFRAME):
                call = PullCall(self.server.addr, path, times=[h.time_point("50%")], mode=mode)
                got = call.run()
                self.assertIsNone(call.error, "%s: %s" % (n, call.error))
                want = h.generate(self.server.addr, path=path, times=["50%"], mode=mode)
                self.assertEqual(len(got), 1)
                self.assertEqual(bytes(got[0].data), bytes(want[0].data), n)
                self.assertEqual(got[0].header.actual_time, want[0].header.actual_time)
                # no byte asked twice, none past the end
                spans = sorted(call.ranges)
                for (a, la), (b, _) in zip(spans, spans[1:]):
                    self.assertLessEqual(a + la, b, "%s: overlapping ranges %s" % (n, spans))
                self.assertLessEqual(spans[-1][0] + spans[-1][1], call.size)

    def test_same_errors_as_upload(self):
        for n in BAD:
            path = h.video(n)
            call = PullCall(self.server.addr, path)
            call.run()
            with self.assertRaises(h.grpc.RpcError) as cm:
                h.generate(self.server.addr, path=path)
            self.assertIsNotNone(call.error, n)
            self.assertEqual(call.error.code(), cm.exception.code(), n)
            self.assertEqual(call.error.details(), cm.exception.details(), n)

    def test_bad_options(self):
        path = h.video("h264.mp4")
        call = PullCall(self.server.addr, path)
        call.size = 0  # pull mode without a size
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "needs the file's size")
        call = PullCall(self.server.addr, path, first=[pb.GenerateRequest(data=b"x" * 100)])
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "pull")
        call = PullCall(self.server.addr, path, local_path="h264.mp4")
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "together")


class PullBigFile(h.ServerTestCase):
    """A >= 1 GiB MP4, moov at the end: pull mode moves under 2 % of it."""
    workers = 1

    def test_one_gib_moov_at_end(self):
        d = self.tmpdir()
        clip = os.path.join(d, "clip.mp4")
        # ~4.5 Mbit/s 720p, 10 s: a realistic bitrate, looped by stream copy to > 1 GiB
        ff("-f", "lavfi", "-i", "testsrc2=s=1280x720:r=25:d=10", "-vf", "noise=alls=6:allf=t",
           "-c:v", "libx264", "-crf", "26", "-preset", "ultrafast", "-g", "50",
           "-pix_fmt", "yuv420p", clip)
        loops = (1 << 30) // os.path.getsize(clip) + 1
        inp = os.path.join(d, "in")
        os.mkdir(inp)
        big = os.path.join(inp, "big.mp4")
        ff("-stream_loop", str(loops), "-i", clip, "-c", "copy", big)
        os.unlink(clip)
        size = os.path.getsize(big)
        self.assertGreaterEqual(size, 1 << 30)
        with open(big, "rb") as f:
            f.seek(size - (1 << 20))
            self.assertIn(b"moov", f.read(), "the moov should be at the end")

        out = os.path.join(d, "out")
        r = h.run_client(["-s", self.server.addr, "--at", "10%,50%,90%", inp, out], check_rc=0)
        line = r.line_for("big.mp4")
        self.assertIn("pull:", line, r)  # by default: over the 64M threshold
        # the worker's log gives the exact count
        logs = re.findall(r"big\.mp4: pulled (\d+) of (\d+) bytes in (\d+) requests",
                          self.server.log_text())
        self.assertEqual(len(logs), 1, logs)
        pulled, total, reqs = map(int, logs[0])
        self.assertEqual(total, size)
        h.log("pulled %d of %d bytes (%.3f %%) in %d requests: %s"
              % (pulled, total, 100.0 * pulled / total, reqs, line))
        self.assertLess(pulled, total * 0.02)
        m = re.search(r"in=(\d+) ", [x for x in self.server.log_text().splitlines()
                                     if "file=\"big.mp4\" mode=pull" in x][0])
        self.assertEqual(int(m.group(1)), pulled)

        # the same thumbnails as an independent client pulling the middle one
        call = PullCall(self.server.addr, big, times=[h.time_point("50%")])
        got = call.run()
        self.assertIsNone(call.error)
        self.assertEqual(bytes(got[0].data), h.server_png(os.path.join(out, "big-2.png")))
        self.assertLess(call.sent, size * 0.02)


class PullMisbehaving(h.ServerTestCase):
    """Clients that answer wrongly, slowly or not at all."""
    workers = 2
    server_extra = ("--job-timeout", "3", "--idle-timeout", "60")

    def setUp(self):
        self.path = h.video("h264_1080p.mp4")  # needs several ranges
        # warm, once: every worker has served a pull call, so the fd baseline is steady
        if not getattr(type(self), "warm", False):
            for _ in range(2 * self.workers):
                call = PullCall(self.server.addr, self.path)
                self.assertIsNotNone(call.run(), call.error)
            type(self).warm = True
        # the baseline once the warm-up's connections are gone: the same counts twice, 0.3 s apart
        pids = [self.server.front_pid()] + self.server.worker_pids()
        prev = {}

        def steady():
            nonlocal prev
            now = {p: fd_count(p) for p in pids}
            same, prev = now == prev, now
            return same
        h.wait_for(steady, 10, interval=0.3, what="steady fd counts")
        self.fds = prev

    def tearDown(self):
        # nothing leaked: the front and every worker are back to their fd counts, and serve
        try:
            # at most the baseline: a connection of an earlier call may close meanwhile
            h.wait_for(lambda: all(fd_count(p) <= n for p, n in self.fds.items()), 10,
                       what="fd counts back to %s" % self.fds)
        except AssertionError:
            now = {p: fd_count(p) for p in self.fds}
            links = {p: sorted(os.readlink("/proc/%d/fd/%s" % (p, fd))
                               for fd in os.listdir("/proc/%d/fd" % p))
                     for p in self.fds if now[p] > self.fds[p]}
            raise AssertionError("fds before %s, now %s: %s" % (self.fds, now, links))
        call = PullCall(self.server.addr, self.path)
        self.assertIsNotNone(call.run(), call.error)

    def test_no_answer_is_deadline_exceeded(self):
        call = PullCall(self.server.addr, self.path, answer=lambda rr: None, timeout=30)
        call.run()
        self.assertRpcCode(call.error, "DEADLINE_EXCEEDED", "waited for the client")
        self.assertLess(call.elapsed, 3 + 2.5, "ended by the 3 s job deadline")

    def test_slow_answers_are_deadline_exceeded(self):
        call = PullCall(self.server.addr, self.path, delay=1.2, timeout=30)
        call.run()
        self.assertRpcCode(call.error, "DEADLINE_EXCEEDED")
        self.assertLess(call.elapsed, 3 + 2.5)

    def test_too_many_bytes_is_invalid_argument(self):
        def more(rr):
            with open(self.path, "rb") as f:
                f.seek(rr.offset)
                return [pb.RangeData(offset=rr.offset, data=f.read(rr.length + 1))]
        call = PullCall(self.server.addr, self.path, answer=more)
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "does not answer the request")

    def test_wrong_offset_is_invalid_argument(self):
        def shifted(rr):
            return [pb.RangeData(offset=rr.offset + 1, data=b"\0" * rr.length)]
        call = PullCall(self.server.addr, self.path, answer=shifted)
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "offset")

    def test_empty_range_data_is_invalid_argument(self):
        call = PullCall(self.server.addr, self.path,
                        answer=lambda rr: [pb.RangeData(offset=rr.offset)])
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "0 bytes")

    def test_unsolicited_bytes_are_invalid_argument(self):
        call = PullCall(self.server.addr, self.path,
                        first=[pb.GenerateRequest(range_data=pb.RangeData(offset=12345,
                                                                          data=b"x"))])
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "range")

    def test_half_close_with_a_range_outstanding(self):
        call = PullCall(self.server.addr, self.path, answer=lambda rr: "close")
        call.run()
        self.assertRpcCode(call.error, "INVALID_ARGUMENT", "keep it open")
        self.assertLess(call.elapsed, 3)

    def test_short_answer_then_silence(self):
        """Half the bytes, then nothing: the job deadline ends it."""
        def half(rr):
            with open(self.path, "rb") as f:
                f.seek(rr.offset)
                return [pb.RangeData(offset=rr.offset, data=f.read(rr.length // 2))]
        call = PullCall(self.server.addr, self.path, answer=half)
        call.run()
        self.assertRpcCode(call.error, "DEADLINE_EXCEEDED", "waited for the client")

    def test_client_cancel_mid_pull(self):
        """A client that goes away while a range is outstanding: the worker is freed."""
        class GoAway(Exception):
            pass

        def go_away(rr):
            raise GoAway()  # leaves the channel's `with`: the call is cancelled
        call = PullCall(self.server.addr, self.path, answer=go_away)
        with self.assertRaises(GoAway):
            call.run()
        # tearDown: fds back, and a new call is served by a free worker


class PullIdleTimeout(h.ServerTestCase):
    """--idle-timeout applies to an unanswered range request, not to decode time."""
    workers = 1
    server_extra = ("--job-timeout", "30", "--idle-timeout", "1")

    def test_unanswered_range_ends_at_idle_timeout(self):
        call = PullCall(self.server.addr, h.video("h264.mp4"), answer=lambda rr: None)
        call.run()
        self.assertRpcCode(call.error, "DEADLINE_EXCEEDED", "idle-timeout")
        self.assertLess(call.elapsed, 5)

    def test_slow_decode_is_not_idle(self):
        """Answers that come in time keep the call alive past --idle-timeout in total."""
        call = PullCall(self.server.addr, h.video("h264_1080p.mp4"), delay=0.5)
        self.assertIsNotNone(call.run(), call.error)
        self.assertGreater(call.elapsed, 1.0)


class PullLimit(h.ServerTestCase):
    """--max-upload-bytes bounds the bytes pulled, not the size of the file."""
    workers = 1
    server_extra = ("--max-upload-bytes", "1M")

    def test_big_file_small_pull_is_fine(self):
        # 16 MB declared, over the 1M limit; keyframe at 0 needs one 256 KiB block
        call = PullCall(self.server.addr, h.video("h264_1080p.mp4"), times=[h.time_point(0)],
                        mode=pb.SEEK_MODE_KEYFRAME)
        self.assertIsNotNone(call.run(), call.error)
        self.assertLessEqual(call.sent, 1 << 20)

    def test_pulling_more_is_resource_exhausted(self):
        call = PullCall(self.server.addr, h.video("h264_1080p.mp4"),
                        times=[h.time_point("90%")])
        call.run()
        self.assertRpcCode(call.error, "RESOURCE_EXHAUSTED", "max-upload-bytes")
        self.assertLessEqual(call.sent, 1 << 20)

    def test_upload_is_still_refused(self):
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264_1080p.mp4"))
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED", "max-upload-bytes")


if __name__ == "__main__":
    h.main()
