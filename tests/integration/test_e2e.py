#!/usr/bin/env python3
"""End to end: the real server and the real batch client on generated videos.

Every codec/container gives a decodable PNG with the expected size; the 90°
display matrix and the anamorphic SAR are honoured (checked against ffmpeg's
own rendering of the same frame); several time points, no-overwrite, the
bounding box flags, environment variables, and more concurrent calls than
workers.
"""
import os
import re
import shutil

import harness as h

CODECS = ["h264.mp4", "hevc.mkv", "vp9.webm", "mpeg4.avi", "rotate90.mp4", "anamorphic.mp4"]
# Default box: the longer side at most 320, aspect kept, no upscaling.
EXPECTED = {
    "h264.mp4": (320, 180),
    "hevc.mkv": (320, 180),
    "vp9.webm": (320, 180),
    "mpeg4.avi": (320, 180),
    "rotate90.mp4": (180, 320),   # displayed 360x640: portrait, the height is the longer side
    "anamorphic.mp4": (320, 180),  # stored 480x360, SAR 4:3 -> displayed 640x360
}


def png_name(name, suffix=""):
    return os.path.splitext(name)[0] + suffix + ".png"


class E2E(h.ServerTestCase):
    workers = 2

    def client(self, *args, env=None, **kw):
        args = list(args)
        if not any(a.startswith("--server") for a in args) and not (env and "THUMBNAIL_SERVER" in env):
            args = ["--server", self.server.addr] + args
        return h.run_client(args, env=env, **kw)

    def assertSize(self, path, expected, tol=1):
        w, hgt = h.png_size(path)
        ok = abs(w - expected[0]) <= tol and abs(hgt - expected[1]) <= tol
        self.assertTrue(ok, "%s is %dx%d, expected %dx%d (±%d)"
                        % (os.path.basename(path), w, hgt, expected[0], expected[1], tol))

    def assertOkLines(self, r, names):
        for n in names:
            line = r.line_for(n)
            self.assertIsNotNone(line, "no line for %s in the client output:\n%r" % (n, r))
            self.assertRegex(line.lower(), r"\bok\b", "line for %s: %r" % (n, line))

    # ------------------------------------------------------------------
    def test_codecs_and_geometry(self):
        inp = h.make_input_dir(CODECS, parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client(inp, out)
        self.assertEqual(r.returncode, 0, r)
        self.assertOkLines(r, CODECS)
        self.assertEqual(h.tree_files(out), sorted(png_name(n) for n in CODECS),
                         "unexpected files (temp files left?)")
        for n in CODECS:
            p = os.path.join(out, png_name(n))
            png = h.png_file(p)  # full decode: CRCs, zlib, filters
            self.assertEqual(png.depth, 8, n)
            self.assertSize(p, EXPECTED[n])
            self.assertGreater(h.image_variance(png.rgb_bytes()), 100, "%s looks blank" % n)
        h.log("client: %s" % r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "")

    def test_matches_ffmpeg_frame(self):
        """The pixels, not only the size: compare with ffmpeg's rendering of the same frame
        (at the time the client reports: with no --at the server picks one near 10 % of the
        duration). Rotation must go the right way (ffmpeg's autorotate is the reference)."""
        names = ["h264.mp4", "rotate90.mp4", "anamorphic.mp4"]
        inp = h.make_input_dir(names, parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client(inp, out)
        self.assertEqual(r.returncode, 0, r)
        for n in names:
            png = h.png_file(os.path.join(out, png_name(n)))
            ours = png.rgb_bytes()
            t = float(re.search(r"t=([0-9.]+)s", r.line_for(n)).group(1))
            self.assertLess(abs(t - 0.1 * h.duration(h.video(n))), 0.1 * h.duration(h.video(n)),
                            "%s: %g s is not near 10 %%" % (n, t))
            ref = h.ffmpeg_reference_rgb(h.video(n), t, png.width, png.height)
            d_ref = h.mean_abs_diff(ours, ref)
            h.log("%s: mean abs diff vs ffmpeg's frame at %.2f s = %.2f" % (n, t, d_ref))
            self.assertLess(d_ref, 6, "%s differs from ffmpeg's frame at %.2f s" % (n, t))
            if n == "rotate90.mp4":
                # The same frame rotated the other way (the OpenCV mistake): the right
                # rotation plus 180°, whatever sign convention the matrix uses.
                wrong = h.ffmpeg_reference_rgb(h.video(n), t, png.width, png.height,
                                               extra_vf="hflip,vflip")
                d_wrong = h.mean_abs_diff(ours, wrong)
                h.log("%s: mean abs diff vs wrong rotation = %.2f" % (n, d_wrong))
                self.assertLess(d_ref * 2, d_wrong, "rotated the wrong way?")

    def test_several_times(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--at", "1", "--at", "50%", inp, out)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out), ["h264-1.png", "h264-2.png"])
        a = h.png_file(os.path.join(out, "h264-1.png"))
        b = h.png_file(os.path.join(out, "h264-2.png"))
        self.assertEqual((a.width, a.height), (320, 180))
        self.assertEqual((b.width, b.height), (320, 180))
        self.assertNotEqual(a.rows, b.rows, "1 s and 50 % (2 s) gave the same image")
        # 1 s and 2 s match ffmpeg's frames at those times, not each other.
        for png, t in ((a, 1.0), (b, 2.0)):
            ref = h.ffmpeg_reference_rgb(h.video("h264.mp4"), t, 320, 180)
            self.assertLess(h.mean_abs_diff(png.rgb_bytes(), ref), 6, "frame at %g s" % t)

    def test_no_overwrite_then_overwrite(self):
        names = ["h264.mp4", "vp9.webm"]
        inp = h.make_input_dir(names, parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client(inp, out)
        self.assertEqual(r.returncode, 0, r)
        before = {f: os.stat(os.path.join(out, f)) for f in h.tree_files(out)}
        self.assertEqual(len(before), 2)
        contents = {f: h.read_bytes(os.path.join(out, f)) for f in before}

        r = self.client(inp, out)
        self.assertEqual(r.returncode, 0, "existing outputs must be skipped, not failed: %r" % r)
        after = {f: os.stat(os.path.join(out, f)) for f in h.tree_files(out)}
        self.assertEqual(sorted(after), sorted(before))
        for f in before:
            self.assertEqual((after[f].st_ino, after[f].st_mtime_ns),
                             (before[f].st_ino, before[f].st_mtime_ns), "%s was rewritten" % f)
            self.assertEqual(h.read_bytes(os.path.join(out, f)), contents[f])

        r = self.client("--overwrite", "--width", "160", inp, out)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out), sorted(before))
        for f in before:
            self.assertEqual(h.png_size(os.path.join(out, f)), (160, 90), f)

    def test_box_flags(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        cases = [
            (["--width", "100"], (100, 56)),          # 56.25
            (["--height", "90"], (160, 90)),
            (["--width", "200", "--height", "50"], (89, 50)),  # height bound: 88.9
            (["--width", "1280"], (640, 360)),        # no upscaling by default
            (["--width", "1280", "--upscale"], (1280, 720)),
        ]
        for args, expected in cases:
            out = os.path.join(self.tmpdir(), "out")
            r = self.client(*args, inp, out)
            self.assertEqual(r.returncode, 0, "%s: %r" % (args, r))
            p = os.path.join(out, "h264.png")
            w, hgt = h.png_size(p)
            self.assertTrue(abs(w - expected[0]) <= 1 and abs(hgt - expected[1]) <= 1,
                            "%s gave %dx%d, expected %dx%d" % (args, w, hgt, *expected))

    def test_keyframe_mode(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--mode", "keyframe", "--at", "3", inp, out)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.png_size(os.path.join(out, "h264.png")), (320, 180))

    def test_more_calls_than_workers(self):
        """12 files, 8 client jobs, 2 workers: everything queues and succeeds;
        subdirectories are mirrored; hidden files are skipped."""
        base = ["h264.mp4", "hevc.mkv", "vp9.webm", "mpeg4.avi"]
        inp = self.tmpdir()
        expected = []
        for i in range(3):
            for n in base:
                rel = os.path.join("set%d" % i, "clip%d_%s" % (i, n))
                os.makedirs(os.path.join(inp, os.path.dirname(rel)), exist_ok=True)
                shutil.copyfile(h.video(n), os.path.join(inp, rel))
                expected.append(png_name(rel))
        shutil.copyfile(h.video("h264.mp4"), os.path.join(inp, ".hidden.mp4"))
        os.makedirs(os.path.join(inp, ".git"))
        shutil.copyfile(h.video("h264.mp4"), os.path.join(inp, ".git", "x.mp4"))
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--jobs", "8", inp, out)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out), sorted(expected))
        for f in expected:
            self.assertEqual(h.png_size(os.path.join(out, f)), (320, 180), f)
        h.log("12 files, --jobs 8, 2 workers: %.2f s" % r.elapsed)

    def test_env_variables(self):
        inp = h.make_input_dir(["vp9.webm", "h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = h.run_client([inp, out], env={"THUMBNAIL_SERVER": self.server.addr, "NUM_JOBS": "3"})
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out), ["h264.png", "vp9.png"])

    def test_health_and_usage(self):
        r = self.client("--health")
        self.assertEqual(r.returncode, 0, r)
        r = h.run_client(["--help"])
        self.assertEqual(r.returncode, 0, r)
        for flag in ("--server", "--jobs", "--at", "--width", "--height", "--overwrite",
                     "--health", "--retries", "--chunk-size"):
            self.assertIn(flag, r.output, "--help does not mention %s" % flag)
        r = h.run_client(["--no-such-flag"])
        self.assertEqual(r.returncode, 2, r)
        r = h.run_client(["--at", "101%", self.tmpdir(), self.tmpdir()])
        self.assertEqual(r.returncode, 2, r)

    def test_unreachable_server(self):
        dead = "127.0.0.1:%d" % h.free_port()
        r = h.run_client(["--server", dead, "--health", "--connect-timeout", "2"], timeout=60)
        self.assertEqual(r.returncode, 2, "--health on an unreachable server: %r" % r)
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = h.run_client(["--server", dead, "--retries", "0", "--connect-timeout", "2", inp, out],
                         timeout=60)
        self.assertEqual(r.returncode, 2, "unreachable server must exit 2: %r" % r)
        self.assertFalse(os.path.exists(os.path.join(out, "h264.png")))

    def test_server_version_flag(self):
        import subprocess
        cp = subprocess.run([h.SERVER_BIN, "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=10)
        self.assertEqual(cp.returncode, 0, cp.stdout)
        self.assertRegex(cp.stdout, r"\d+\.\d+")
        cp = subprocess.run([h.SERVER_BIN, "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=10)
        self.assertEqual(cp.returncode, 0, cp.stdout)
        for flag in ("--listen", "--workers", "--spool-dir", "--max-upload-bytes",
                     "--max-message-bytes", "--chunk-size", "--daemon", "--pidfile",
                     "--log-file", "--log-level", "--version"):
            self.assertIn(flag, cp.stdout, "server --help does not mention %s" % flag)
        cp = subprocess.run([h.SERVER_BIN, "--workers", "zero"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=10)
        self.assertEqual(cp.returncode, 2, cp.stdout)


if __name__ == "__main__":
    h.main()
