#!/usr/bin/env python3
"""The engine's issue-3 features through the real server and the real client.

Pixels are checked, not just sizes: SMART skips a black intro where ACCURATE
returns the black frame asked for; all 8 display-matrix orientations put a
red corner where the matrix says; PAD letterboxes in the asked colour and
FILL covers the box; count/every give the right times; cover art is used
when asked; an HDR10 clip comes back within the luminance of its SDR
original and says it was tone-mapped; an interlaced clip shows no combing.
The in-process unit test (test_engine) checks the same at finer grain.
"""
import json
import os
import struct
import tempfile

import harness as h

SMART = 3
FILL, PAD = 2, 3


def luma(rgb):
    n = len(rgb) // 3
    return sum(0.2126 * rgb[i] + 0.7152 * rgb[i + 1] + 0.0722 * rgb[i + 2]
               for i in range(0, 3 * n, 3)) / n


def patched_box(matrix, directory):
    """box.mp4 with its tkhd matrix entries a, b, c, d set (16.16)."""
    data = bytearray(h.read_bytes(h.video("box.mp4")))
    t = data.find(b"tkhd")
    assert t > 0 and data[t + 4] == 0, "box.mp4: no version-0 tkhd"
    for i, v in zip((0, 1, 3, 4), matrix):
        struct.pack_into(">i", data, t + 44 + 4 * i, v * 0x10000)
    path = os.path.join(directory, "orient_%d_%d_%d_%d.mp4" % matrix)
    with open(path, "wb") as f:
        f.write(data)
    return path


class EngineFeatures(h.ServerTestCase):
    workers = 2

    def gen(self, name=None, path=None, **kw):
        return h.generate(self.server.addr, path=path or h.video(name), timeout=60, **kw)

    def client(self, *args, **kw):
        return h.run_client(["--server", self.server.addr] + list(args), **kw)

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="tn_engine_")
        self.addCleanup(lambda: os.system("rm -rf '%s'" % d))
        return d

    # ------------------------------------------------------------------
    def test_smart_skips_black_intro_through_the_client(self):
        inp = h.make_input_dir(["blackintro.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--at", "10%", "--mode", "smart", inp, out, check_rc=0)
        self.assertIn("skipped 1 black frame", r.stdout, r)
        self.assertIn("t=5.00s", r.stdout, r)
        png = h.png_file(os.path.join(out, "blackintro.png"))
        self.assertGreater(luma(png.rgb_bytes()), 40)
        # ACCURATE returns what was asked for: the black frame at 1 s
        t = self.gen("blackintro.mp4", times=["10%"])[0]
        self.assertAlmostEqual(t.header.actual_time, 1.0, places=3)
        self.assertLess(luma(h.png_decode(t.data).rgb_bytes()), 20)

    def test_eight_orientations(self):
        d = self.tmpdir()
        corners = ((2, 2), (317, 2), (2, 237), (317, 237))
        for m in ((1, 0, 0, 1), (-1, 0, 0, 1), (1, 0, 0, -1), (-1, 0, 0, -1),
                  (0, 1, -1, 0), (0, -1, 1, 0), (0, 1, 1, 0), (0, -1, -1, 0)):
            a, b, c, dd = m
            # libavutil/display.h: (x, y) -> (a x + c y, b x + d y); the red
            # corner is at (-1, -1) from the centre
            dx, dy = -a - c, -b - dd
            want = (dx > 0) + 2 * (dy > 0)
            transposed = a == 0
            t = self.gen(path=patched_box(m, d), times=[0], max_width=0, max_height=0)[0]
            png = h.png_decode(t.data)
            self.assertEqual((png.width, png.height), (240, 320) if transposed else (320, 240), m)
            cs = [(x * png.width // 320, y * png.height // 240) for x, y in corners]
            if transposed:
                cs = [(2, 2), (237, 2), (2, 317), (237, 317)]
            red = [i for i, (x, y) in enumerate(cs)
                   if png.pixel(x, y)[0] > 180 and png.pixel(x, y)[2] < 80]
            self.assertEqual(red, [want], "matrix %s" % (m,))

    def test_pad_and_fill(self):
        t = self.gen("h264.mp4", times=[1], max_width=200, max_height=200,
                     engine=dict(fit=PAD, pad_color=0x00FF00))[0]
        png = h.png_decode(t.data)
        self.assertEqual((png.width, png.height, t.header.width, t.header.height),
                         (200, 200, 200, 200))
        for x, y in ((100, 2), (100, 197), (0, 0)):  # 200x113 centred: 43 rows above
            r, g, b = png.pixel(x, y)[:3]
            self.assertTrue(r < 40 and g > 215 and b < 40, (x, y, r, g, b))
        t = self.gen("h264.mp4", times=[1], max_width=200, max_height=200,
                     engine=dict(fit=FILL))[0]
        png = h.png_decode(t.data)
        self.assertEqual((png.width, png.height), (200, 200))
        # no border: the top and bottom rows are picture, not padding
        self.assertGreater(h.image_variance(png.rgb_bytes()), 100)
        r = self.client("--fit", "pad", "--width", "64", "in", "out", check_rc=2)
        self.assertIn("needs --width and --height", r.stderr)
        with self.assertRaises(h.grpc.RpcError) as e:
            self.gen("h264.mp4", times=[1], max_width=200, engine=dict(fit=FILL))
        self.assertEqual(e.exception.code(), h.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("needs a box", e.exception.details())

    def test_count_and_every(self):
        thumbs = self.gen("h264.mp4", engine=dict(count=4))  # 4 s: 0.5, 1.5, 2.5, 3.5
        self.assertEqual([t.header.index for t in thumbs], [0, 1, 2, 3])
        for i, t in enumerate(thumbs):
            self.assertAlmostEqual(t.header.requested_time, i + 0.5, places=3)
            self.assertAlmostEqual(t.header.actual_time, i + 0.5, delta=0.041)
        thumbs = self.gen("h264.mp4", engine=dict(every=1.5))  # 25 fps: the frames at 0, 1.52, 3
        self.assertEqual([round(t.header.requested_time, 3) for t in thumbs], [0, 1.5, 3.0])
        for t in thumbs:
            self.assertTrue(0 <= t.header.actual_time - t.header.requested_time < 0.041, t.header)
        with self.assertRaises(h.grpc.RpcError) as e:
            self.gen("h264.mp4", engine=dict(every=0.01))
        self.assertEqual(e.exception.code(), h.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("at most 64", e.exception.details())
        # the client: one output per thumbnail
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        self.client("--count", "3", inp, out, check_rc=0)
        self.assertEqual(h.tree_files(out), ["h264-1.png", "h264-2.png", "h264-3.png"])
        out2 = os.path.join(self.tmpdir(), "out2")
        r = self.client("--every", "2", inp, out2, check_rc=0)
        self.assertEqual(h.tree_files(out2), ["h264-1.png", "h264-2.png"], r)

    def test_cover_art(self):
        inp = h.make_input_dir(["cover.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--cover-art", inp, out, check_rc=0)
        self.assertIn("cover art", r.stdout, r)
        png = h.png_file(os.path.join(out, "cover.png"))
        self.assertEqual((png.width, png.height), (200, 200))
        r, g, b = png.pixel(100, 100)[:3]
        self.assertTrue(r > 245 and g < 10 and b < 10, (r, g, b))
        t = self.gen("cover.mp4", times=[1])[0]  # not asked: the video
        self.assertEqual((t.header.width, t.header.height), (320, 180))

    def test_hdr10_is_tone_mapped(self):
        t = self.gen("hdr10.mkv", times=[0.5])[0]
        self.assertIn("tone-mapped", t.header.reason)
        ref = self.gen("sdr_bars.mp4", times=[0.5])[0]
        y, want = luma(h.png_decode(t.data).rgb_bytes()), luma(h.png_decode(ref.data).rgb_bytes())
        self.assertLess(abs(y / want - 1), 0.10, "HDR10 mean luma %.1f, SDR %.1f" % (y, want))
        self.assertLess(h.mean_abs_diff(h.png_decode(t.data).rgb_bytes(),
                                        h.png_decode(ref.data).rgb_bytes()), 12)

    def test_interlaced_has_no_combing(self):
        t = self.gen("interlaced.mp4", times=[0.4], max_width=0, max_height=0)[0]
        self.assertIn("deinterlaced", t.header.reason)
        png = h.png_decode(t.data)
        g = png.rgb_bytes()[1::3]
        w = png.width
        teeth = 0
        for y in range(1, png.height - 1):
            for x in range(w):
                p, u, d = g[y * w + x], g[(y - 1) * w + x], g[(y + 1) * w + x]
                if (p - u > 60 and p - d > 60) or (u - p > 60 and d - p > 60):
                    teeth += 1
        self.assertLess(teeth, 20)

    def test_client_storyboard(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--storyboard", "--every", "0.5", "--tile-width", "64", "--columns", "3",
                        inp, out, check_rc=0)
        self.assertEqual(h.tree_files(out), ["h264.sprite.png", "h264.vtt"], r)
        sprite = h.png_file(os.path.join(out, "h264.sprite.png"))
        self.assertEqual((sprite.width, sprite.height), (3 * 64, 3 * 36))  # 8 tiles of 64x36
        with open(os.path.join(out, "h264.vtt")) as f:
            vtt = f.read()
        self.assertTrue(vtt.startswith("WEBVTT\n"), vtt)
        cues = [c.splitlines() for c in vtt.split("\n\n")[1:]]
        self.assertEqual(len(cues), 8, vtt)
        for i, (times, target) in enumerate(cues):
            a, b = times.split(" --> ")
            self.assertEqual(a, "00:00:%06.3f" % (i * 0.5))
            self.assertEqual(b, "00:00:%06.3f" % ((i + 1) * 0.5))
            name, xywh = target.split("#xywh=")
            self.assertEqual(name, "h264.sprite.png")
            self.assertEqual([int(v) for v in xywh.split(",")], [i % 3 * 64, i // 3 * 36, 64, 36])
            # the tile is the keyframe at or before its time: 0 s before 2 s, then 2 s
            t = self.gen("h264.mp4", times=[i * 0.5], max_width=64, mode=2)[0]
            tile = h.png_decode(t.data)
            x0, y0 = i % 3 * 64, i // 3 * 36
            diff = sum(abs(sprite.pixel(x0 + x, y0 + y)[1] - tile.pixel(x, y)[1])
                       for y in range(0, 36, 3) for x in range(0, 64, 3)) / (12 * 22)
            self.assertLess(diff, 2, "tile %d" % i)
        # the unused cells of the last row are black
        self.assertEqual(sprite.pixel(2 * 64 + 30, 2 * 36 + 18)[:3], (0, 0, 0))

    def test_client_usage_errors(self):
        for args, text in ((["--fit", "cover"], "expected fit, fill or pad"),
                           (["--pad-color", "12345g"], "RRGGBB"),
                           (["--count", "65"], "at most 64"),
                           (["--count", "2", "--every", "1"], "one of --at, --count and --every"),
                           (["--storyboard", "--at", "1"], "not --at"),
                           (["--tile-width", "2000"], "1..1024"),
                           (["--mode", "best"], "accurate, keyframe or smart")):
            r = self.client(*(args + ["in", "out"]), check_rc=2)
            self.assertIn(text, r.stderr, args)
        r = h.run_client(["--help"], check_rc=0)
        for flag in ("--fit", "--pad-color", "--count", "--every", "--cover-art", "--probe",
                     "--storyboard", "--tile-width", "--columns", "smart"):
            self.assertIn(flag, r.stdout)

    def probe(self, name):
        with h.channel(self.server.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            r = stub.Probe(h.generate_requests(path=h.video(name)), timeout=60)
        return json.loads(r.json)

    def test_probe_fields(self):
        p = self.probe("h264.mp4")  # 640x360 25 fps, -g 50, AAC
        self.assertEqual(p["container"], "mov,mp4,m4a,3gp,3g2,mj2")
        self.assertAlmostEqual(p["duration"], 4.0, delta=0.05)
        self.assertGreater(p["bit_rate"], 0)
        self.assertEqual(p["size"], os.path.getsize(h.video("h264.mp4")))
        v = p["video"][0]
        for k, want in (("codec", "h264"), ("pix_fmt", "yuv420p"), ("bit_depth", 8),
                        ("width", 640), ("height", 360), ("sar", "1:1"), ("dar", "16:9"),
                        ("frame_rate", 25), ("rotation", 0), ("hdr", None), ("main", True)):
            self.assertEqual(v[k], want, k)
        self.assertAlmostEqual(p["keyframe_interval"], 2.0, delta=0.01)
        self.assertEqual([a["codec"] for a in p["audio"]], ["aac"])
        self.assertFalse(p["cover_art"])

        v = self.probe("rotate90.mp4")["video"][0]
        self.assertIn(v["rotation"], (90, 270))
        self.assertEqual((v["display_width"], v["display_height"]), (360, 640))
        v = self.probe("anamorphic.mp4")["video"][0]
        self.assertEqual((v["sar"], v["dar"], v["display_width"]), ("4:3", "16:9", 640))
        v = self.probe("hdr10.mkv")["video"][0]
        self.assertEqual((v["hdr"], v["bit_depth"], v["color_primaries"], v["color_transfer"],
                          v["color_matrix"], v["color_range"]),
                         ("HDR10", 10, "bt2020", "smpte2084", "bt2020nc", "tv"))
        self.assertTrue(self.probe("interlaced.mp4")["video"][0]["interlaced"])
        p = self.probe("cover.mp4")
        self.assertTrue(p["cover_art"])
        self.assertEqual(p["cover_art_streams"][0]["codec"], "png")
        self.assertEqual(self.probe("vp9.webm")["video"][0]["codec"], "vp9")
        self.assertEqual(self.probe("hevc.mkv")["video"][0]["codec"], "hevc")
        with self.assertRaises(h.grpc.RpcError) as e:
            self.probe("random.bin")
        self.assertEqual(e.exception.code(), h.grpc.StatusCode.INVALID_ARGUMENT)

    def test_client_probe(self):
        r = self.client("--probe", h.video("hdr10.mkv"), h.video("h264.mp4"), check_rc=0)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r)
        first = json.loads(lines[0])
        self.assertEqual(first.pop("file"), h.video("hdr10.mkv"))  # each line names its file
        self.assertEqual(first, self.probe("hdr10.mkv"))
        self.assertEqual(json.loads(lines[1])["video"][0]["codec"], "h264")
        r = self.client("--probe", h.video("random.bin"), check_rc=1)
        self.assertIn("not a video file", r.stderr)
        self.client("--probe", check_rc=2)


if __name__ == "__main__":
    h.main()
