#!/usr/bin/env python3
"""Local mode: `thumbnail_server --media-root DIR` reads files named by a path
relative to DIR; nothing is uploaded.

* The real client with --local over the same folder gives byte-identical thumbnails to
  upload mode, and sends no video bytes.
* Relative paths and symlinks that stay inside the root work; absolute paths
  (INVALID_ARGUMENT), `..` (PERMISSION_DENIED), symlinks leading outside, to a file or
  through a directory (PERMISSION_DENIED) are refused; a missing file is NOT_FOUND; a
  directory, a FIFO (without hanging) or an empty file is INVALID_ARGUMENT; a server
  without --media-root answers FAILED_PRECONDITION.
"""
import os
import shutil
import tempfile

import harness as h
from harness import pb, pb_grpc

CORPUS = ["h264.mp4", "hevc.mkv", "vp9.webm", "mpeg4.avi", "rotate90.mp4", "anamorphic.mp4"]


def local_generate(addr, rel, half_close=True, timeout=30, **opts):
    """One local-mode call from an independent grpcio client: [Thumb] or raises RpcError."""
    def reqs():
        yield pb.GenerateRequest(options=pb.Options(file_name=os.path.basename(rel),
                                                    local_path=rel, **opts))
        if not half_close:
            ev.wait(timeout)

    import threading
    ev = threading.Event()
    try:
        with h.channel(addr) as ch:
            stub = pb_grpc.ThumbnailerStub(ch)
            return h.collect(stub.Generate(reqs(), timeout=timeout))
    finally:
        ev.set()


class LocalRefusals(h.ServerTestCase):
    workers = 1

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="tn-local-")
        root = cls.root = os.path.join(cls.top, "media")
        outside = os.path.join(cls.top, "outside")
        os.makedirs(os.path.join(root, "sub", "deeper"))
        os.makedirs(outside)
        shutil.copyfile(h.video("h264.mp4"), os.path.join(root, "a.mp4"))
        shutil.copyfile(h.video("hevc.mkv"), os.path.join(root, "sub", "b.mkv"))
        shutil.copyfile(h.video("vp9.webm"), os.path.join(root, "sub", "deeper", "c.webm"))
        shutil.copyfile(h.video("random.bin"), os.path.join(root, "random.bin"))
        shutil.copyfile(h.video("h264.mp4"), os.path.join(outside, "secret.mp4"))
        os.symlink("sub/b.mkv", os.path.join(root, "inside_link.mkv"))
        os.symlink("../outside/secret.mp4", os.path.join(root, "escape.mp4"))
        os.symlink(os.path.join(outside, "secret.mp4"), os.path.join(root, "abs_escape.mp4"))
        os.symlink("../outside", os.path.join(root, "outdir"))
        os.symlink("/proc/self/root/" + outside.lstrip("/") + "/secret.mp4",
                   os.path.join(root, "proc_escape.mp4"))
        os.mkfifo(os.path.join(root, "fifo.mp4"))
        open(os.path.join(root, "empty.mp4"), "wb").close()
        cls.server_extra = ("--media-root", root)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, ignore_errors=True)

    def expect(self, rel, code, msg_re=None):
        with self.assertRaises(h.grpc.RpcError) as cm:
            local_generate(self.server.addr, rel)
        self.assertRpcCode(cm.exception, code, msg_re)

    def test_relative_paths_work(self):
        for rel, name in [("a.mp4", "h264.mp4"), ("sub/b.mkv", "hevc.mkv"),
                          ("./sub//deeper/c.webm", "vp9.webm"), ("inside_link.mkv", "hevc.mkv")]:
            got = local_generate(self.server.addr, rel, times=[h.time_point("50%")])
            want = h.generate(self.server.addr, path=h.video(name), times=["50%"])
            self.assertEqual(bytes(got[0].data), bytes(want[0].data), rel)

    def test_stream_left_open_works(self):
        """A client that does not half-close still gets its thumbnail."""
        got = local_generate(self.server.addr, "a.mp4", half_close=False)
        self.assertEqual(len(got), 1)

    def test_absolute_path(self):
        self.expect(os.path.join(self.root, "a.mp4"), "INVALID_ARGUMENT", "absolute")

    def test_dot_dot(self):
        self.expect("../outside/secret.mp4", "PERMISSION_DENIED", r"\.\.")
        self.expect("sub/../a.mp4", "PERMISSION_DENIED", r"\.\.")
        self.expect("..", "PERMISSION_DENIED")

    def test_escaping_symlinks(self):
        self.expect("escape.mp4", "PERMISSION_DENIED", "outside")
        self.expect("abs_escape.mp4", "PERMISSION_DENIED", "outside")
        self.expect("outdir/secret.mp4", "PERMISSION_DENIED", "outside")
        self.expect("proc_escape.mp4", "PERMISSION_DENIED", "outside")

    def test_missing_file(self):
        self.expect("missing.mp4", "NOT_FOUND", "no such file")
        self.expect("a.mp4/x", "NOT_FOUND")

    def test_not_a_regular_file(self):
        self.expect("sub", "INVALID_ARGUMENT", "not a regular file")
        self.expect(".", "INVALID_ARGUMENT")
        self.expect("fifo.mp4", "INVALID_ARGUMENT", "not a regular file")
        self.expect("empty.mp4", "INVALID_ARGUMENT", "empty")

    def test_not_a_video_same_as_upload(self):
        with self.assertRaises(h.grpc.RpcError) as up:
            h.generate(self.server.addr, path=os.path.join(self.root, "random.bin"))
        with self.assertRaises(h.grpc.RpcError) as loc:
            local_generate(self.server.addr, "random.bin")
        self.assertEqual(loc.exception.code(), up.exception.code())
        self.assertEqual(loc.exception.details(), up.exception.details())

    def test_still_serving(self):
        self.expect("escape.mp4", "PERMISSION_DENIED")
        self.assertEqual(len(local_generate(self.server.addr, "a.mp4")), 1)


class LocalRefusalsWithoutOpenat2(LocalRefusals):
    """The same refusals through the fallback for kernels without openat2 (forced by
    TN_NO_OPENAT2): a component walk that follows no symlink at all."""

    @classmethod
    def setUpClass(cls):
        orig = h.Server.__init__

        def with_env(self, *a, **kw):
            kw["env"] = {"TN_NO_OPENAT2": "1"}
            orig(self, *a, **kw)
        h.Server.__init__ = with_env
        try:
            super().setUpClass()
        finally:
            h.Server.__init__ = orig

    def test_relative_paths_work(self):
        for rel, name in [("a.mp4", "h264.mp4"), ("./sub//deeper/c.webm", "vp9.webm")]:
            got = local_generate(self.server.addr, rel, times=[h.time_point("50%")])
            want = h.generate(self.server.addr, path=h.video(name), times=["50%"])
            self.assertEqual(bytes(got[0].data), bytes(want[0].data), rel)
        # stricter than openat2: no symlink is followed, even one that stays inside
        self.expect("inside_link.mkv", "PERMISSION_DENIED")


class LocalClient(h.ServerTestCase):
    """The real client: --local over the server's --media-root."""
    workers = 2

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="tn-local-")
        for n in CORPUS:
            shutil.copyfile(h.video(n), os.path.join(cls.root, n))
        os.mkdir(os.path.join(cls.root, "nested"))
        shutil.copyfile(h.video("h264_1080p.mp4"), os.path.join(cls.root, "nested", "big.mp4"))
        cls.server_extra = ("--media-root", cls.root)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_same_as_upload(self):
        up, loc = os.path.join(self.tmpdir(), "up"), os.path.join(self.tmpdir(), "local")
        args = ["-s", self.server.addr, "--at", "10%,50%"]
        ru = h.run_client(args + ["--no-pull", self.root, up], check_rc=0)
        rl = h.run_client(args + ["--local", self.root, loc], check_rc=0)
        files = h.tree_files(up)
        self.assertEqual(len(files), 2 * (len(CORPUS) + 1), ru)
        self.assertEqual(files, h.tree_files(loc))
        for f in files:
            self.assertEqual(h.read_bytes(os.path.join(up, f)), h.read_bytes(os.path.join(loc, f)),
                             f)
        self.assertIn("local: sent 0 B of", rl.line_for("nested/big.mp4"))
        self.assertRegex(rl.stdout, r"; 0 B sent for [0-9.]+ MiB of video")

    def test_client_paths_outside_the_root(self):
        """An INPUT_DIR that is not the server's root: the server finds nothing there."""
        other = self.tmpdir()
        shutil.copyfile(h.video("h264.mp4"), os.path.join(other, "only_here.mp4"))
        r = h.run_client(["-s", self.server.addr, "--local", other, os.path.join(other, "o")],
                         check_rc=1)
        self.assertRegex(r.line_for("only_here.mp4"), r"FAIL .*NOT_FOUND")


class LocalOff(h.ServerTestCase):
    workers = 1

    def test_without_media_root(self):
        with self.assertRaises(h.grpc.RpcError) as cm:
            local_generate(self.server.addr, "a.mp4")
        self.assertRpcCode(cm.exception, "FAILED_PRECONDITION", "--media-root")

    def test_local_and_pull_flags_conflict(self):
        r = h.run_client(["-s", self.server.addr, "--local", "--pull", self.tmpdir()], check_rc=2)
        self.assertIn("cannot be used together", r.stderr)


if __name__ == "__main__":
    h.main()
