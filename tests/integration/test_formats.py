#!/usr/bin/env python3
"""Output formats: JPEG (libjpeg-turbo) and WebP (libwebp) besides PNG.

Through the real server (grpcio) and the real client: the bytes carry the
right magic, decode (with ffmpeg, independently of our encoders) to the size
the header announces and to nearly the PNG's pixels; quality changes the size;
lossless WebP is exactly the PNG; bad quality / PNG levels are refused; the
client names its outputs .jpg / .webp and skips existing ones.
"""
import os
import subprocess
import tempfile

import harness as h

JPEG = h.pb.IMAGE_FORMAT_JPEG
WEBP = h.pb.IMAGE_FORMAT_WEBP
PNG = h.pb.IMAGE_FORMAT_PNG
EXT = {JPEG: ".jpg", WEBP: ".webp", PNG: ".png"}

def decode(data, ext):
    """(width, height, rgb24 bytes) decoded by ffmpeg, not by our encoders."""
    with tempfile.NamedTemporaryFile(suffix=ext) as f:
        f.write(data)
        f.flush()
        wh = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                             "stream=width,height", "-of", "csv=p=0", f.name], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.strip().split(",")
        rgb = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i",
                              f.name, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24",
                              "-"], check=True, stdout=subprocess.PIPE).stdout
    w, hh = int(wh[0]), int(wh[1])
    if len(rgb) != w * hh * 3:
        raise AssertionError("decoded %d bytes for %dx%d" % (len(rgb), w, hh))
    return w, hh, rgb


def check_magic(test, data, fmt):
    if fmt == JPEG:
        test.assertEqual(bytes(data[:3]), b"\xff\xd8\xff", "not a JPEG")
        test.assertEqual(bytes(data[-2:]), b"\xff\xd9", "JPEG without its EOI marker")
    elif fmt == WEBP:
        test.assertEqual(bytes(data[:4]), b"RIFF", "not a RIFF file")
        test.assertEqual(bytes(data[8:12]), b"WEBP", "not a WebP file")
        test.assertEqual(int.from_bytes(data[4:8], "little") + 8, len(data), "RIFF size")
    else:
        test.assertEqual(bytes(data[:8]), b"\x89PNG\r\n\x1a\n", "not a PNG")


class Formats(h.ServerTestCase):
    workers = 2

    def one(self, name="h264.mp4", **kw):
        kw.setdefault("times", [2])
        thumbs = h.generate(self.server.addr, path=h.video(name), timeout=60, **kw)
        self.assertEqual(len(thumbs), 1)
        return thumbs[0]

    def png_pixels(self, name, **kw):
        t = self.one(name, fmt=PNG, **kw)
        p = h.png_decode(t.data)
        return p.width, p.height, p.rgb_bytes()

    # ------------------------------------------------------------------
    def test_lossy_formats_decode_close_to_png(self):
        for name, size in (("h264.mp4", (320, 180)), ("rotate90.mp4", (320, 569)),
                           ("vp9.webm", (320, 180))):
            pw, ph, ref = self.png_pixels(name)
            self.assertEqual((pw, ph), size)
            for fmt in (JPEG, WEBP):
                with self.subTest(file=name, fmt=fmt):
                    t = self.one(name, fmt=fmt)
                    self.assertEqual(t.header.format, fmt)
                    self.assertEqual((t.header.width, t.header.height), size)
                    self.assertEqual(t.header.size, len(t.data))
                    check_magic(self, t.data, fmt)
                    w, hh, rgb = decode(t.data, EXT[fmt])
                    self.assertEqual((w, hh), size)
                    diff = h.mean_abs_diff(rgb, ref)
                    h.log("%s %s: %d bytes, mean abs diff vs PNG %.2f" %
                          (name, EXT[fmt], len(t.data), diff))
                    self.assertLess(diff, 6.0, "decoded image too far from the PNG")
                    self.assertGreater(h.image_variance(rgb), 100, "blank image")

    def test_png_default_and_level(self):
        t = self.one()  # format unspecified = PNG
        self.assertEqual(t.header.format, PNG)
        check_magic(self, t.data, PNG)
        fast = self.one(fmt=PNG, png_level=1)
        best = self.one(fmt=PNG, png_level=9)
        self.assertEqual(h.png_decode(fast.data).rgb_bytes(), h.png_decode(best.data).rgb_bytes())
        self.assertLess(len(best.data), len(fast.data))

    def test_quality_changes_size(self):
        for fmt in (JPEG, WEBP):
            with self.subTest(fmt=fmt):
                lo = self.one(fmt=fmt, quality=30)
                hi = self.one(fmt=fmt, quality=95)
                h.log("%s: q30 %d bytes, q95 %d bytes" % (EXT[fmt], len(lo.data), len(hi.data)))
                self.assertLess(len(lo.data), len(hi.data))
                check_magic(self, lo.data, fmt)
                self.assertEqual(decode(lo.data, EXT[fmt])[:2], (320, 180))

    def test_lossless_webp_equals_png(self):
        for name in ("h264.mp4", "rotate90.mp4"):
            with self.subTest(file=name):
                pw, ph, ref = self.png_pixels(name)
                t = self.one(name, fmt=WEBP, lossless=True)
                check_magic(self, t.data, WEBP)
                self.assertEqual(bytes(t.data[12:16]), b"VP8L", "not a lossless bitstream")
                w, hh, rgb = decode(t.data, ".webp")
                self.assertEqual((w, hh), (pw, ph))
                self.assertTrue(rgb == ref, "lossless WebP pixels differ from the PNG's")

    def test_bad_quality_and_level(self):
        for kw in (dict(fmt=JPEG, quality=150), dict(fmt=WEBP, quality=101),
                   dict(fmt=PNG, png_level=10)):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                with self.assertRaises(h.grpc.RpcError) as cm:
                    self.one(**kw)
                self.assertRpcCode(cm.exception, "INVALID_ARGUMENT", r"(quality|level).*\d")
        self.assertEqual(self.one(fmt=JPEG).header.format, JPEG)  # still serving

    # ------------------------------------------------------------------
    def client(self, *args, **kw):
        return h.run_client(["--server", self.server.addr] + list(args), **kw)

    def test_client_formats(self):
        inp = h.make_input_dir(["h264.mp4", "vp9.webm"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--format", "jpeg", "--quality", "70", inp, out, check_rc=0)
        self.assertEqual(h.tree_files(out), ["h264.jpg", "vp9.jpg"], r)
        for f in h.tree_files(out):
            data = h.read_bytes(os.path.join(out, f))
            check_magic(self, data, JPEG)
            self.assertEqual(decode(data, ".jpg")[:2], (320, 180))
        # the .jpg outputs are up to date: skipped; a PNG run is not confused by them
        r = self.client("--format", "jpeg", "--quality", "70", inp, out, check_rc=0)
        self.assertIn("skip", r.line_for("h264.mp4") or "", r)
        r = self.client("--format", "webp", "--at", "1", "--at", "50%", inp, out, check_rc=0)
        r = self.client("--format", "webp", "--at", "1", "--at", "50%", inp, out, check_rc=0)
        self.assertIn("skip", r.line_for("vp9.webm") or "", r)
        # other options (lossless) make them again: outputs are skipped only when up to date
        r = self.client("--format", "webp", "--lossless", "--at", "1", "--at", "50%", inp, out,
                        check_rc=0)
        self.assertRegex(r.line_for("vp9.webm") or "", r"^ok ", r)
        r = self.client("--png-level", "9", inp, out, check_rc=0)
        # WebP outputs keep the record of how they were made in a hidden sidecar
        files = [f for f in h.tree_files(out) if not f.endswith(".thumbmeta")]
        self.assertEqual(files,
                         ["h264-1.webp", "h264-2.webp", "h264.jpg", "h264.png",
                          "vp9-1.webp", "vp9-2.webp", "vp9.jpg", "vp9.png"], r)
        for f in files:
            data = h.read_bytes(os.path.join(out, f))
            check_magic(self, data, {"jpg": JPEG, "webp": WEBP, "png": PNG}[f.split(".")[-1]])

    def test_client_usage_errors(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        for args in (["--format", "gif"], ["--quality", "0", "--format", "jpeg"],
                     ["--quality", "101", "--format", "webp"], ["--lossless"],
                     ["--format", "jpeg", "--lossless"], ["--quality", "50"],
                     ["--png-level", "10"], ["--format", "webp", "--png-level", "3"]):
            with self.subTest(args=args):
                r = self.client(*(args + [inp, out]), check_rc=2)
                self.assertIn("--help", r.stderr, r)
        self.assertFalse(os.path.exists(out))
        r = h.run_client(["--help"], check_rc=0)
        for flag in ("--format", "--quality", "--lossless", "--png-level"):
            self.assertIn(flag, r.stdout)


if __name__ == "__main__":
    h.main()
