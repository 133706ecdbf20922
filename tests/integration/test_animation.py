#!/usr/bin/env python3
"""The animated WebP preview (Options.animation) through the real server.

Clips are made here with the ffmpeg CLI: a moving test pattern with a frame
counter, so that every output frame is a different picture. The WebP is taken
apart two ways: its RIFF chunks (VP8X animation flag, ANIM, one ANMF per
frame with its size and duration) parsed here by hand, and `webpmux -info`
(Debian's webp package) as an independent reader; Pillow decodes the frames
to compare pixels. The first frame must match the ffmpeg CLI's frame at
`start`, the still thumbnail's oracle. Limits and errors, a deadline on a long
span, and the real client's --animated are covered too.
"""
import math
import os
import shutil
import struct
import subprocess
import tempfile
import time
import unittest
from io import BytesIO

import harness as h

from PIL import Image

WEBP = 3
ANIMATION = 3  # ThumbnailKind


def make_clip(path, seconds=8, size="640x360", rate=25, extra=()):
    """testsrc (a frame counter) scrolling sideways, so that every pixel moves from
    frame to frame, as H.264 with a keyframe a second and non-reference B-frames
    (those between ticks are not decoded: the frames shown must not change)."""
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f",
                    "lavfi", "-i", "testsrc=size=%s:rate=%d:duration=%g" % (size, rate, seconds),
                    "-vf", "scroll=h=0.005", "-c:v", "libx264", "-preset", "ultrafast",
                    "-x264-params", "bframes=3:b-pyramid=none", "-g", str(rate), "-pix_fmt",
                    "yuv420p"] + list(extra) + [path], check=True)
    return path


def riff_frames(data):
    """(canvas w, h, loop count, [(x, y, w, h, duration ms)]) from the RIFF chunks."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", "not a WebP file"
    assert struct.unpack("<I", data[4:8])[0] + 8 == len(data), "RIFF size does not match"
    pos, canvas, loop, frames, flags = 12, None, None, [], None
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if tag == b"VP8X":
            flags = body[0]
            canvas = (1 + int.from_bytes(body[4:7], "little"),
                      1 + int.from_bytes(body[7:10], "little"))
        elif tag == b"ANIM":
            loop = struct.unpack("<H", body[4:6])[0]
        elif tag == b"ANMF":
            x, y = 2 * int.from_bytes(body[0:3], "little"), 2 * int.from_bytes(body[3:6], "little")
            w, hh = 1 + int.from_bytes(body[6:9], "little"), 1 + int.from_bytes(body[9:12], "little")
            frames.append((x, y, w, hh, int.from_bytes(body[12:15], "little")))
        pos += 8 + size + (size & 1)
    assert flags is not None and flags & 0x02, "VP8X has no animation flag"
    return canvas[0], canvas[1], loop, frames


def pil_frames(data):
    """Every frame of the animation as full-canvas RGB bytes (Pillow composes them)."""
    im = Image.open(BytesIO(data))
    out = []
    for i in range(im.n_frames):
        im.seek(i)
        out.append(im.convert("RGB").tobytes())
    return im.size, out


def with_animation(requests, animation):
    """harness.generate_requests()'s stream with Options.animation set (a message
    field: setattr cannot assign it)."""
    first = next(requests)
    first.options.animation.CopyFrom(animation)
    yield first
    yield from requests


def generate_animation(addr, animation, timeout=60, **kw):
    """One Generate call asking for an animation; [Thumb] or raises grpc.RpcError."""
    with h.channel(addr) as ch:
        stub = h.pb_grpc.ThumbnailerStub(ch)
        return h.collect(stub.Generate(with_animation(h.generate_requests(**kw), animation),
                                       timeout=timeout))


def anim_opts(start=None, end=None, fps=0.0):
    a = h.pb.Animation(fps=fps)
    if start is not None:
        a.start.CopyFrom(h.time_point(start))
    if end is not None:
        a.end.CopyFrom(h.time_point(end))
    return a


class Animation(h.ServerTestCase):
    workers = 2

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tn_anim_")
        cls.clip = make_clip(os.path.join(cls.dir, "moving.mp4"))
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def anim(self, path=None, timeout=60, start=None, end=None, fps=0.0, **engine):
        # generate_requests()'s own parameters; the rest are engine options
        kw = {k: engine.pop(k) for k in ("times", "max_width", "max_height", "upscale",
                                         "quality", "lossless") if k in engine}
        kw["fmt"], kw["mode"] = engine.pop("format", 0), engine.pop("mode", 0)
        return generate_animation(self.server.addr, anim_opts(start, end, fps),
                                  path=path or self.clip, timeout=timeout, engine=engine, **kw)

    def assert_invalid(self, needle, **kw):
        with self.assertRaises(h.grpc.RpcError) as cm:
            self.anim(**kw)
        self.assertEqual(cm.exception.code(), h.grpc.StatusCode.INVALID_ARGUMENT,
                         cm.exception.details())
        self.assertIn(needle, cm.exception.details())
        return cm.exception.details()

    # ------------------------------------------------------------------
    def test_preview_is_animated_with_span_times_fps_frames(self):
        types = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                                "frame=pict_type", "-of", "csv=p=0", self.clip], check=True,
                               stdout=subprocess.PIPE, text=True).stdout.split()
        self.assertGreater(types.count("B"), 50, "the clip has no B-frames to leave out")
        t0 = time.monotonic()
        thumbs = self.anim(start=2, end=5, fps=10)
        h.log("3 s at 10 fps: %.0f ms" % ((time.monotonic() - t0) * 1000))
        self.assertEqual(len(thumbs), 1)
        th = thumbs[0].header
        data = bytes(thumbs[0].data)
        self.assertEqual(th.kind, ANIMATION)
        self.assertEqual(th.format, WEBP)
        self.assertEqual((th.width, th.height), (320, 180))  # the default box: 320 longer side
        self.assertEqual(th.index, 0)
        self.assertAlmostEqual(th.requested_time, 2.0)
        self.assertAlmostEqual(th.actual_time, 2.0, places=3)  # 2 s is a frame time at 25 fps
        self.assertIn("30 frames at 10 fps", th.reason)

        w, hh, loop, frames = riff_frames(data)
        self.assertEqual((w, hh), (320, 180))
        self.assertEqual(loop, 0, "a preview loops forever")
        self.assertEqual(len(frames), 30)
        self.assertEqual(sum(f[4] for f in frames), 3000, "durations add up to the span")
        for f in frames:
            self.assertTrue(99 <= f[4] <= 101, f)

        # an independent reader agrees
        with tempfile.NamedTemporaryFile(suffix=".webp") as tf:
            tf.write(data)
            tf.flush()
            info = subprocess.run(["webpmux", "-info", tf.name], check=True,
                                  stdout=subprocess.PIPE, text=True).stdout
        self.assertIn("Canvas size: 320 x 180", info)
        self.assertIn("Features present: animation", info)
        self.assertIn("Number of frames: 30", info)

        size, pics = pil_frames(data)
        self.assertEqual(size, (320, 180))
        self.assertEqual(len(pics), 30)
        # every frame is a new picture (the frame counter moves): none repeats
        for a, b in zip(pics, pics[1:]):
            self.assertGreater(h.mean_abs_diff(a[::7], b[::7]), 3.0)
        # and each is the frame shown at its tick (the latest at or before
        # start + i / fps, 25 fps source): closer to ffmpeg's picture of that
        # frame than to the frame before it or after it
        for i in (1, 5, 14, 29):
            shown = math.floor((2.0 + i / 10) * 25 + 1e-6) / 25
            ref = h.ffmpeg_reference_rgb(self.clip, shown, 320, 180)
            self.assertLess(h.mean_abs_diff(pics[i], ref), 8.0, "frame %d vs %.2f s" % (i, shown))
            for other in (shown - 0.04, shown + 0.04):
                near = h.ffmpeg_reference_rgb(self.clip, other, 320, 180)
                # where the two candidates differ (the moving parts), ours is ffmpeg's
                moving = [k for k in range(len(ref)) if abs(ref[k] - near[k]) > 40]
                self.assertGreater(len(moving), 100)
                d = sum(abs(pics[i][k] - ref[k]) for k in moving) / len(moving)
                dn = sum(abs(pics[i][k] - near[k]) for k in moving) / len(moving)
                h.log("frame %d: %.1f from ffmpeg's %.2f s, %.1f from its %.2f s"
                      % (i, d, shown, dn, other))
                self.assertLess(d, dn / 2, "frame %d is not the picture at %.2f s (%.1f vs %.1f)"
                                % (i, shown, d, dn))

        # the first frame is the still thumbnail's frame at start: the ffmpeg CLI's
        ref = h.ffmpeg_reference_rgb(self.clip, 2.0, 320, 180)
        d = h.mean_abs_diff(pics[0][::13], ref[::13])
        h.log("first frame vs ffmpeg at 2 s: mean abs diff %.2f" % d)
        self.assertLess(d, 6.0)
        # and frame 10 is the one at 3 s (start + 10 / fps), not one next to it
        ref3 = h.ffmpeg_reference_rgb(self.clip, 3.0, 320, 180)
        ref3b = h.ffmpeg_reference_rgb(self.clip, 3.04, 320, 180)
        d3 = h.mean_abs_diff(pics[10][::13], ref3[::13])
        self.assertLess(d3, 6.0)
        self.assertLess(d3, h.mean_abs_diff(pics[10][::13], ref3b[::13]))

    def test_first_frame_is_the_still_thumbnail(self):
        """Geometry as thumbnails have it: a display matrix that turns the video a
        quarter (rotate90.mp4) and an anamorphic SAR give the still's size and
        picture."""
        for name in ("rotate90.mp4", "anamorphic.mp4"):
            path = h.video(name)
            still = h.generate(self.server.addr, path=path, times=[1], max_width=320,
                               max_height=320, mode=1)[0]
            anim = self.anim(path=path, start=1, end=2, fps=5, max_width=320, max_height=320)[0]
            self.assertEqual((anim.header.width, anim.header.height),
                             (still.header.width, still.header.height), name)
            self.assertAlmostEqual(anim.header.actual_time, still.header.actual_time, places=3)
            png = h.png_decode(bytes(still.data))
            _, pics = pil_frames(bytes(anim.data))
            d = h.mean_abs_diff(pics[0][::5], png.rgb_bytes()[::5])
            h.log("%s: %dx%d, first frame vs the still PNG: %.2f"
                  % (name, anim.header.width, anim.header.height, d))
            self.assertLess(d, 6.0, name)

    def test_defaults_fps_and_span(self):
        th = self.anim(start=1)[0]  # no end: 3 s; no fps: 10
        _, _, _, frames = riff_frames(bytes(th.data))
        self.assertEqual(len(frames), 30)
        self.assertIn("30 frames at 10 fps", th.header.reason)

    def test_box_fps_quality_and_percent_times(self):
        small = self.anim(start="25%", end="50%", fps=5, max_width=160, quality=30)[0]
        big = self.anim(start="25%", end="50%", fps=5, max_width=160, quality=95)[0]
        self.assertEqual((small.header.width, small.header.height), (160, 90))
        self.assertAlmostEqual(small.header.actual_time, 2.0, places=3)  # 25 % of 8 s
        _, _, _, frames = riff_frames(bytes(small.data))
        self.assertEqual(len(frames), 10)  # 2 s at 5 fps
        self.assertLess(len(small.data), len(big.data), "quality is applied")
        for f in frames:
            self.assertEqual(f[4], 200)
        # lossless: VP8L frames, and the first is ffmpeg's picture at 25 % (2 s)
        # within scaling differences only
        ll = self.anim(start="25%", end="50%", fps=5, max_width=160, lossless=True)[0]
        data = bytes(ll.data)
        self.assertIn(b"VP8L", data)
        self.assertNotIn(b"VP8 ", data)
        self.assertEqual(len(riff_frames(data)[3]), 10)
        _, pics = pil_frames(data)
        ref = h.ffmpeg_reference_rgb(self.clip, 2.0, 160, 90)
        self.assertLess(h.mean_abs_diff(pics[0], ref), 3.0)

    def test_slow_source_repeats_frames(self):
        """A 5 fps video at 10 fps: every picture is shown for two ticks, which
        libwebp merges into one frame of twice the duration."""
        clip = os.path.join(self.dir, "slow.mp4")
        make_clip(clip, seconds=6, size="320x180", rate=5)
        th = self.anim(path=clip, start=1, end=3, fps=10)[0]
        self.assertIn("20 frames at 10 fps", th.header.reason)
        _, _, _, frames = riff_frames(bytes(th.data))
        self.assertEqual([f[4] for f in frames], [200] * 10)
        _, pics = pil_frames(bytes(th.data))
        for i, pic in enumerate(pics):
            ref = h.ffmpeg_reference_rgb(clip, 1 + 0.2 * i, 320, 180)
            self.assertLess(h.mean_abs_diff(pic[::7], ref[::7]), 8.0, i)

    def test_file_that_cannot_seek(self):
        """An AVI written to a pipe has no index: decoded forward from the start,
        and the reason says so."""
        avi = os.path.join(self.dir, "noindex.avi")
        with open(avi, "wb") as f:
            subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i",
                            self.clip, "-c:v", "mpeg4", "-q:v", "3", "-f", "avi", "-"],
                           check=True, stdout=f)
        th = self.anim(path=avi, start=3, end=4, fps=10)[0]
        self.assertIn("10 frames at 10 fps", th.header.reason)
        self.assertIn("cannot seek", th.header.reason)
        self.assertAlmostEqual(th.header.actual_time, 3.0, places=2)
        _, pics = pil_frames(bytes(th.data))
        self.assertEqual(len(pics), 10)
        ref = h.ffmpeg_reference_rgb(self.clip, 3.0, 320, 180)  # the same pictures, from the MP4
        self.assertLess(h.mean_abs_diff(pics[0][::7], ref[::7]), 8.0)

    def test_past_the_end_stops_at_the_last_frame(self):
        th = self.anim(start=7, end=10, fps=10)[0]  # the clip is 8 s
        _, _, _, frames = riff_frames(bytes(th.data))
        self.assertEqual(len(frames), 10, th.header.reason)
        self.assertIn("10 frames at 10 fps (30 asked): the video ends", th.header.reason)
        # a start past the end: its last frame alone, said so
        # (libwebp writes a one-frame animation as a still WebP)
        th = self.anim(start=20, fps=10)[0]
        size, pics = pil_frames(bytes(th.data))
        self.assertEqual((size, len(pics)), ((320, 180), 1))
        self.assertEqual(th.header.kind, ANIMATION)
        self.assertIn("1 frame at 10 fps (30 asked): the video ends", th.header.reason)
        self.assertAlmostEqual(th.header.actual_time, 7.96, places=2)
        ref = h.ffmpeg_reference_rgb(self.clip, 7.96, 320, 180)
        self.assertLess(h.mean_abs_diff(pics[0][::13], ref[::13]), 6.0)

    def test_option_errors(self):
        self.assert_invalid("not with times", times=[1])
        self.assert_invalid("not with times", count=3)
        self.assert_invalid("not with times", every=1.0)
        self.assert_invalid("not with times", storyboard=True)
        self.assert_invalid("leave format unspecified or WEBP", format=1)
        self.assert_invalid("leave mode unspecified or ACCURATE", mode=2)
        self.assert_invalid("end 2 s is not after start 3 s", start=3, end=2)
        self.assert_invalid("end 3 s is not after start 3 s", start=3, end=3)
        self.assert_invalid("is too long: at most 10 s", start=0, end=11)
        self.assert_invalid("animation.fps 31: use 0.1..30", fps=31)
        self.assert_invalid("animation.fps -1", fps=-1)
        self.assert_invalid("animation.start: -1 s", start=-1)
        self.assert_invalid("animation.end: 120% is not within", end="120%")
        self.assert_invalid("end 10% is not after start 20%", start="20%", end="10%")
        # a span given in percent is checked once the duration is known
        self.assert_invalid("is too long", start="0%", end="100%", fps=10, path=self.long_clip())

    def long_clip(self):
        p = os.path.join(self.dir, "long.mp4")
        if not os.path.exists(p):
            make_clip(p, seconds=20, size="320x180")
        return p

    def test_too_many_frames(self):
        # 10 s at 30 fps is the most: 300 frames; within the span limit but over
        # the frame limit nothing is possible, so check the arithmetic's edge
        th = self.anim(path=self.long_clip(), start=0, end=10, fps=30, max_width=64)[0]
        _, _, _, frames = riff_frames(bytes(th.data))
        # the source is 25 fps: a 30 fps preview repeats frames, which libwebp
        # merges into the previous frame's duration; the span is still 10 s
        self.assertEqual(sum(f[4] for f in frames), 10000)
        self.assertIn("300 frames at 30 fps", th.header.reason)

    def test_still_and_audio_inputs(self):
        still = os.path.join(self.dir, "still.mp4")
        if not os.path.exists(still):
            subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                            "-f", "lavfi", "-i", "testsrc=size=320x180:rate=25", "-frames:v",
                            "1", "-c:v", "libx264", still], check=True)
        self.assert_invalid("a single frame (a still image)", path=still)
        self.assert_invalid("no video stream", path=h.video("audio_only.m4a"))

    def test_deadline_on_a_long_span(self):
        clip = os.path.join(self.dir, "big.mp4")
        make_clip(clip, seconds=12, size="1920x1080", extra=["-g", "250"])
        t0 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            self.anim(path=clip, start=1, end=11, fps=30, max_width=1920, timeout=1.0)
        took = time.monotonic() - t0
        self.assertEqual(cm.exception.code(), h.grpc.StatusCode.DEADLINE_EXCEEDED,
                         cm.exception.details())
        self.assertLess(took, 3.0, "the deadline was not respected")
        # the server is fine afterwards
        self.assertEqual(len(self.anim(start=0, end=1)), 1)

    # the claim is a worker's RSS under RLIMIT_AS: the plain pass holds it
    @unittest.skipIf(h.sanitized(), "ASan build: its shadow memory and quarantine make a "
                     "worker's RSS meaningless, and its workers run without RLIMIT_AS")
    def test_memory_is_bounded_by_frames_held_not_span(self):
        """The longest preview of a 1080p clip (10 s at 30 fps, 250 source frames of
        3 MB decoded): a worker that held the decoded frames would need ~750 MB;
        one that encodes them as they come stays near an idle worker's size."""
        srv = h.Server(workers=1, extra=["--worker-memory", "768M"])
        try:
            pid = srv.worker_pids()[0]
            base = h.vm_status(pid, "VmRSS")
            th = generate_animation(srv.addr, anim_opts(0, 10, 30), path=h.video("h264_1080p.mp4"),
                                    max_width=160, timeout=120)[0]
            peak = h.vm_status(pid, "VmHWM")
            h.log("worker RSS %.0f MB idle, %.0f MB peak over the preview (%s)"
                  % (base / 2**20, peak / 2**20, th.header.reason))
            self.assertIn("300 frames at 30 fps", th.header.reason)
            self.assertEqual(srv.worker_pids(), [pid], "the worker was replaced")
            self.assertLess(peak - base, 200 * 2**20)
        finally:
            srv.stop()
            srv.cleanup()

    def test_client_animated(self):
        inp = h.make_input_dir([], parent=self.dir)
        shutil.copyfile(self.clip, os.path.join(inp, "moving.mp4"))
        out = os.path.join(self.dir, "client_out")
        r = h.run_client(["--server", self.server.addr, "--animated", "1-3", "--fps", "5", inp,
                          out], check_rc=0)
        path = os.path.join(out, "moving.webp")
        self.assertTrue(os.path.exists(path), r)
        w, hh, _, frames = riff_frames(h.read_bytes(path))
        self.assertEqual((w, hh, len(frames)), (320, 180, 10))
        # one file with -o, default span and fps
        one = os.path.join(self.dir, "one.webp")
        h.run_client(["--server", self.server.addr, "--animated", "2", "-i", self.clip, "-o",
                      one], check_rc=0)
        self.assertEqual(len(riff_frames(h.read_bytes(one))[3]), 30)
        # the record of how it was made: the same span is up to date, another is remade
        r = h.run_client(["--server", self.server.addr, "--animated", "1-3", "--fps", "5", inp,
                          out], check_rc=0)
        self.assertIn("up to date", r.output)
        r = h.run_client(["--server", self.server.addr, "--animated", "1-2", "--fps", "5", inp,
                          out], check_rc=0)
        self.assertNotIn("up to date", r.output)
        self.assertEqual(len(riff_frames(h.read_bytes(path))[3]), 5)
        # usage errors before any call, saying what is wrong
        for bad, why in ((["--animated", "3-2"], "end 2 s is not after start 3 s"),
                         (["--animated", "0-12"], "at most 10 s"),
                         (["--animated", "1", "--count", "3"], "not with --at, --count"),
                         (["--animated", "1", "--format", "png"], "--format webp"),
                         (["--animated", "1", "--mode", "keyframe"], "no --mode keyframe"),
                         (["--fps", "5"], "--fps needs --animated"),
                         (["--animated", "1", "--fps", "40"], "0.1..30"),
                         (["--animated", "x-y"], "expected START or START-END")):
            r = h.run_client(["--server", self.server.addr] + bad + [inp, out + "2"])
            self.assertEqual(r.returncode, 2, (bad, r))
            self.assertIn(why, r.stderr, bad)
        self.assertFalse(os.path.exists(out + "2"))
        r = h.run_client(["--help"], check_rc=0)
        for flag in ("--animated START[-END]", "--fps N"):
            self.assertIn(flag, r.stdout)


if __name__ == "__main__":
    h.main()
