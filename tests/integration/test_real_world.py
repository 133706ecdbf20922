"""Files from real folders: a Matroska file that cannot seek (no cues, no keyframe flags)
and one without a duration in its header, a 20 s storyboard's tile count and cues, and a
probe of a file whose language tag is not UTF-8. Real server, grpcio, clips made here."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import test_oracle as oracle  # noqa: E402  (psnr, ffmpeg_frame)


def vint(d, i, marker=False):
    b, n = d[i], 1
    while n <= 8 and not b & (0x80 >> (n - 1)):
        n += 1
    v = b if marker else b & (0xff >> n)
    for k in range(1, n):
        v = (v << 8) | d[i + k]
    return v, n


def mkv_strip(d, i=0, end=None):
    """In place: hide the Cues (and the SeekHead's pointer to them) and clear the
    keyframe flag of every SimpleBlock. What is left can only be decoded from the start."""
    end = len(d) if end is None else end
    while i < end:
        eid, n = vint(d, i, True)
        size, m = vint(d, i + n)
        body = i + n + m
        if size == (1 << (7 * m)) - 1:
            size = end - body
        if eid in (0x18538067, 0x1F43B675):  # Segment, Cluster
            mkv_strip(d, body, min(end, body + size))
        elif eid == 0xA3:  # SimpleBlock: track vint, int16 time, flags
            _, k = vint(d, body)
            d[body + k + 2] &= 0x7f
        elif eid == 0x1C53BB6B:  # Cues -> an unknown element
            d[i + 3] = 0x6C
        elif eid == 0x53AB and d[body:body + 4] == b"\x1c\x53\xbb\x6b":  # SeekID of the Cues
            d[body + 3] = 0x6C
        i = body + size


def ff(*args, stdout=None):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
                   + list(args), check=True, stdout=stdout)


class RealWorldTest(h.ServerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = h.tempfile.mkdtemp(prefix="tn-real-")
        src = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3.6", "-c:v", "mpeg4",
               "-g", "1000"]
        a = os.path.join(cls.dir, "a.mkv")
        ff(*src, a)
        with open(os.path.join(cls.dir, "pipe.mkv"), "wb") as f:  # no cues, no duration
            ff(*src, "-f", "matroska", "pipe:1", stdout=f)
        for name, base in (("noseek.mkv", "a.mkv"), ("noseek-nodur.mkv", "pipe.mkv")):
            d = bytearray(h.read_bytes(os.path.join(cls.dir, base)))
            mkv_strip(d)
            with open(os.path.join(cls.dir, name), "wb") as f:
                f.write(d)

    @classmethod
    def tearDownClass(cls):
        h.shutil.rmtree(cls.dir, True)
        super().tearDownClass()

    def same_as_ffmpeg(self, path, t):
        img = h.png_decode(bytes(t.data)).rgb_bytes()
        # ffmpeg -ss finds nothing in a file that cannot seek: ffmpeg decodes from the start
        ref = oracle.ffmpeg_frame(path, t.header.actual_time, t.header.width, t.header.height,
                                  from_start=True)
        self.assertIsNotNone(ref)
        self.assertGreaterEqual(oracle.psnr(img, ref), 35, "t=%.3f" % t.header.actual_time)

    def test_unseekable_file_every_mode(self):
        path = os.path.join(self.dir, "noseek.mkv")
        # ffmpeg decodes it: the rule is that we do too
        self.assertIsNotNone(oracle.ffmpeg_frame(path, 1.0, 160, 120, from_start=True))
        for mode, times, want in ((1, [1.0], 1.0), (1, ["10%"], 0.36), (1, [100], 3.56),
                                  (2, [1.0], 0.0), (3, [0.0], 0.0), (1, [0.0, 2.0, 1.0], None)):
            thumbs = h.generate(self.server.addr, path=path, times=times, mode=mode)
            self.assertEqual(len(thumbs), len(times))
            for t in thumbs:
                if want is not None:
                    self.assertAlmostEqual(t.header.actual_time, want, delta=0.001, msg=(mode, times))
                if mode == 1:
                    self.same_as_ffmpeg(path, t)
            if mode != 2 and times != [0.0]:
                self.assertIn("cannot seek: decoded from the start", thumbs[-1].header.reason)
        # past the end: the last frame, and the reason says so
        t = h.generate(self.server.addr, path=path, times=[100])[0]
        self.assertIn("ends before that time", t.header.reason)

    def test_duration_from_the_packets(self):
        for name in ("pipe.mkv", "noseek-nodur.mkv"):
            path = os.path.join(self.dir, name)
            t = h.generate(self.server.addr, path=path, times=["50%"])[0]
            # 3.6 s from the last packet (no duration in the header): 50 % = 1.8 s
            self.assertAlmostEqual(t.header.requested_time, 1.8, delta=0.05, msg=name)
            self.assertAlmostEqual(t.header.actual_time, 1.8, delta=0.05, msg=name)
            self.same_as_ffmpeg(path, t)
        self.assertIn("from the last packet", self.server.log_text())

    def test_storyboard_of_20_s(self):
        path = os.path.join(self.dir, "20s.mp4")
        ff("-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25:duration=20", "-f", "lavfi", "-i",
           "sine=duration=20", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac",
           "-shortest", path)
        dur = float(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0",
                                    "-show_entries", "stream=duration", "-of", "csv=p=0", path],
                                   stdout=subprocess.PIPE, text=True, check=True).stdout)
        thumbs = h.generate(self.server.addr, path=path, engine={"storyboard": True})
        self.assertEqual([t.header.kind for t in thumbs], [1, 2])
        sprite, vtt = thumbs[0], bytes(thumbs[1].data).decode()
        self.assertIn("20 tiles of 160x90, 10 columns", sprite.header.reason)
        self.assertEqual((sprite.header.width, sprite.header.height), (1600, 180))  # 2 rows
        cues = [c.splitlines() for c in vtt.split("\n\n")[1:]]
        self.assertEqual(len(cues), 20, vtt)

        def secs(s):
            hh, mm, ss = s.split(":")
            return int(hh) * 3600 + int(mm) * 60 + float(ss)
        last_start, last_end = (secs(x) for x in cues[-1][0].split(" --> "))
        self.assertAlmostEqual(last_start, 19.0, delta=0.001)
        self.assertAlmostEqual(last_end, dur, delta=0.001, msg=vtt)
        self.assertTrue(cues[-1][1].endswith("#xywh=1440,90,160,90"), cues[-1])
        # the sprite has no black tile: the last one is a picture
        png = h.png_decode(bytes(sprite.data))
        self.assertGreater(h.image_variance(bytes(png.rgb_bytes()[(90 * 1600 + 1440) * 3:
                                                                 (90 * 1600 + 1600) * 3])), 100)

    def test_default_time_skips_a_black_intro(self):
        path = os.path.join(self.dir, "intro.mp4")
        ff("-f", "lavfi", "-i", "color=black:size=160x120:rate=10:duration=2", "-f", "lavfi", "-i",
           "testsrc2=size=160x120:rate=10:duration=8", "-filter_complex",
           "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-c:v", "libx264", "-preset",
           "ultrafast", "-g", "10", path)
        # no time named: not the black frame at 10 % (1 s), and the reason says why
        t = h.generate(self.server.addr, path=path)[0]
        self.assertIn("no time requested: the frame at 10 % is black", t.header.reason)
        self.assertGreaterEqual(t.header.actual_time, 2.0)
        rgb = h.png_decode(bytes(t.data)).rgb_bytes()
        self.assertGreater(h.image_variance(rgb), 500)
        self.same_as_ffmpeg(path, t)
        # an explicit time stays exact, black or not
        t = h.generate(self.server.addr, path=path, times=["10%"])[0]
        self.assertAlmostEqual(t.header.actual_time, 1.0, delta=0.001)
        self.assertLess(h.image_variance(h.png_decode(bytes(t.data)).rgb_bytes()), 5)
        self.assertNotIn("no time requested", t.header.reason)
        # a video that is not black at 10 %: that frame, exactly
        t = h.generate(self.server.addr, path=os.path.join(self.dir, "a.mkv"))[0]
        self.assertAlmostEqual(t.header.actual_time, 0.36, delta=0.001)
        self.assertEqual(t.header.reason, "no time requested: 10 %")

    def test_probe_invalid_utf8_tag(self):
        path = os.path.join(self.dir, "lang.mkv")
        ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1", "-f", "lavfi", "-i",
           "sine=duration=1", "-c:v", "mpeg4", "-c:a", "mp2", "-metadata:s:a:0", "language=fre",
           path)
        d = bytearray(h.read_bytes(path))
        i = d.find(b"\x22\xb5\x9c\x83fre")  # Matroska Language, 3 bytes
        self.assertGreater(i, 0)
        d[i + 4] = 0xE9
        with open(path, "wb") as f:
            f.write(d)
        with h.channel(self.server.addr) as ch:
            r = h.pb_grpc.ThumbnailerStub(ch).Probe(h.generate_requests(path=path), timeout=60)
        p = json.loads(r.json)
        self.assertEqual(p["audio"][0]["language"], "\ufffdre")
        self.assertEqual(p["video"][0]["codec"], "mpeg4")
        # the typed fields say the same
        self.assertEqual(r.audio[0].language, "\ufffdre")
        self.assertEqual((r.container, r.size, r.cover_art), (p["container"], p["size"], False))
        self.assertAlmostEqual(r.duration, p["duration"], places=3)
        v = r.video[0]
        self.assertEqual((v.codec, v.width, v.height, v.display_width, v.sar, v.main),
                         ("mpeg4", 64, 48, 64, "1:1", True))
        self.assertAlmostEqual(v.frame_rate, 10.0, places=3)
        self.assertEqual((r.audio[0].codec, r.audio[0].index, r.audio[0].sample_rate),
                         ("mp2", p["audio"][0]["index"], p["audio"][0]["sample_rate"]))


if __name__ == "__main__":
    h.main()
