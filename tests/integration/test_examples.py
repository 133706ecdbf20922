#!/usr/bin/env python3
"""The example clients in other languages, run as a user would against the
real server: examples/python (Debian's grpcio, stubs made at start-up) and
examples/node (@grpc/grpc-js from npm, installed with `npm ci` from the
committed package-lock.json into the build tree). Each uploads one video and
saves one PNG, which must decode to the requested size; a file that is not a
video must make each exit 1 with the server's INVALID_ARGUMENT message."""
import hashlib
import os
import shutil
import subprocess
import sys
import unittest

import harness as h

EX = os.path.join(h.SOURCE_DIR, "examples")


class Examples(h.ServerTestCase):
    workers = 1

    def run_example(self, cmd, out_name, video="h264.mp4", width=160, at="50%", cwd=None):
        d = self.tmpdir()
        out = os.path.join(d, out_name)
        r = subprocess.run(cmd + ["--server", self.server.addr, "--width", str(width),
                                  "--at", at, h.video(video) if video else __file__, out],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=120, cwd=cwd)
        return r, out

    def check_ok(self, r, out):
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        png = h.png_file(out)
        self.assertEqual((png.width, png.height), (160, 90))
        self.assertGreater(h.image_variance(png.rgb_bytes()), 100)  # a picture, not a blank
        self.assertFalse(os.path.exists(out + ".part"))
        self.assertIn("160x90 at 2.0", r.stdout)  # 50 % of the 4 s clip

    def check_not_a_video(self, r, out):
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stderr)
        self.assertFalse(os.path.exists(out))

    def test_python(self):
        cmd = [sys.executable, os.path.join(EX, "python", "thumbnail_example.py")]
        self.check_ok(*self.run_example(cmd, "py.png"))
        self.check_not_a_video(*self.run_example(cmd, "py-bad.png", video=None))

    @unittest.skipUnless(shutil.which("node") and shutil.which("npm"), "node/npm not installed")
    def test_node(self):
        d = os.path.join(h.BUILD_DIR, "example-node")
        src = os.path.join(EX, "node")
        with open(os.path.join(src, "package-lock.json"), "rb") as f:
            lock = f.read()
        want = hashlib.sha256(lock).hexdigest()
        stamp = os.path.join(d, ".lock-sha256")
        have = None
        if os.path.exists(stamp):
            with open(stamp) as f:
                have = f.read()
        if have != want:
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            for f in ("package.json", "package-lock.json"):
                shutil.copy(os.path.join(src, f), d)
            r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=d,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=240)
            self.assertEqual(r.returncode, 0, "npm ci failed:\n" + r.stdout)
            with open(stamp, "w") as f:
                f.write(want)
        shutil.copy(os.path.join(src, "thumbnail_example.js"), d)
        # Run from the build-tree copy (its node_modules), with the repository's proto.
        cmd = ["node", os.path.join(d, "thumbnail_example.js"), "--proto",
               os.path.join(h.SOURCE_DIR, "proto", "thumbnail.proto")]
        self.check_ok(*self.run_example(cmd, "node.png", cwd=d))
        self.check_not_a_video(*self.run_example(cmd, "node-bad.png", video=None, cwd=d))


if __name__ == "__main__":
    h.main()
