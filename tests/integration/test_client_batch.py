#!/usr/bin/env python3
"""The batch client on folders as people have them, through the real server.

Interrupts (^C through a real pty, SIGTERM) stop at once in every transfer mode,
cancel the calls, print the summary and leave no temporary file; a later run
removes those a killed client left. Output names never collide (a.mp4 and a.avi
keep their extensions; --name templates). Files that are plainly not video are
skipped, not failed; --include/--exclude. A re-run skips only outputs made from
the same source with the same options (the record in the PNG/JPEG, or a sidecar).
--json, -i/-o (and -o - to stdout), --probe on directories, connection errors
reported at once with their reason, the default box bounding the longer side.
"""
import fcntl
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import time
import unittest

import harness as h

# An interrupted client must be gone this soon after the signal (the issue: "< 1-2 s").
PROMPT = 2.0


def png_chunks(path):
    data = h.read_bytes(path)
    pos, out = 8, []
    while pos + 8 <= len(data):
        n, t = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((t, data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def hidden_temp_files(d):
    return [f for f in h.tree_files(d) if re.search(r"(^|/)\.[^/]*\.tmp\.\d+$", f)]


class PtyClient:
    """The real client with a pty as its controlling terminal (stdin, stdout, stderr):
    writing ^C to the master is a real keyboard interrupt (the line discipline sends
    SIGINT to the foreground process group)."""

    def __init__(self, args):
        self.master, slave = os.openpty()

        def ctty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        env = dict(os.environ)
        env.pop("THUMBNAIL_SERVER", None)
        env.pop("NUM_JOBS", None)
        self.proc = subprocess.Popen([h.CLIENT_BIN] + list(args), stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True, preexec_fn=ctty,
                                     env=env)
        os.close(slave)
        self.buf = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                b = os.read(self.master, 65536)
            except OSError:
                return
            if not b:
                return
            self.buf += b

    def text(self):
        return self.buf.decode(errors="replace")

    def wait_output(self, pattern, timeout=30):
        h.wait_for(lambda: re.search(pattern, self.text()) or self.proc.poll() is not None,
                   timeout, what="client output matching %r" % pattern)
        if self.proc.poll() is not None:
            raise AssertionError("client exited (%s) before printing %r:\n%s"
                                 % (self.proc.returncode, pattern, self.text()))

    def interrupt(self, sig=None):
        """^C through the terminal, or a signal; returns (exit status, seconds to exit)."""
        t0 = time.monotonic()
        if sig is None:
            os.write(self.master, b"\x03")
        else:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("client still running 20 s after the interrupt:\n" + self.text())
        elapsed = time.monotonic() - t0
        self.reader.join(5)
        os.close(self.master)
        return rc, elapsed


class Interrupts(h.ServersTestCase):
    def setUp(self):
        super().setUp()
        self.root = h.make_input_dir(["h264.mp4", "vp9.webm", "hevc.mkv", "mpeg4.avi"])
        self.addCleanup(shutil.rmtree, self.root, True)
        self.srv = self.server(workers=1, extra=["--media-root", self.root])
        self.out = os.path.join(self.root + "-out", "thumbs")
        self.addCleanup(shutil.rmtree, self.root + "-out", True)

    def stopped_workers(self):
        """SIGSTOP the workers: every call waits for its result until SIGCONT."""
        pids = self.srv.worker_pids()
        for p in pids:
            os.kill(p, signal.SIGSTOP)

        def resume():
            for p in pids:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.addCleanup(resume)

    def check_interrupted(self, c, rc, elapsed, sig=signal.SIGINT):
        h.log("%s: exit %d %.2f s after the signal" % (" ".join(c.proc.args[3:-2]), rc, elapsed))
        self.assertEqual(rc, 128 + sig, c.text())
        self.assertLess(elapsed, PROMPT, "slow to stop after the signal:\n" + c.text())
        self.assertRegex(c.text(), r"interrupted: \d+ ok, \d+ failed", "no summary")
        if os.path.isdir(self.out):
            self.assertEqual(hidden_temp_files(self.out), [], "temporary files left")

    def test_interrupt_waiting_for_results(self):
        """The calls are in flight (the worker is stopped): ^C through the terminal in
        every transfer mode, with one job and several."""
        self.stopped_workers()
        for mode in (["--no-pull"], ["--pull"], ["--local"]):
            for jobs in ("1", "3"):
                with self.subTest(mode=mode, jobs=jobs):
                    shutil.rmtree(self.root + "-out", True)
                    c = PtyClient(["-s", self.srv.addr, "--jobs", jobs] + mode +
                                  [self.root, self.out])
                    time.sleep(1.5)  # connected, requests sent, waiting
                    self.assertIsNone(c.proc.poll(), c.text())
                    rc, elapsed = c.interrupt()
                    self.check_interrupted(c, rc, elapsed)
                    self.assertEqual(h.tree_files(self.out) if os.path.isdir(self.out) else [],
                                     [])

    def test_sigterm(self):
        self.stopped_workers()
        for mode in (["--no-pull"], ["--local"]):
            with self.subTest(mode=mode):
                c = PtyClient(["-s", self.srv.addr, "--jobs", "2"] + mode + [self.root, self.out])
                time.sleep(1.5)
                rc, elapsed = c.interrupt(signal.SIGTERM)
                self.check_interrupted(c, rc, elapsed, signal.SIGTERM)

    def test_interrupt_mid_upload(self):
        """A big upload in progress (the bytes are moving) stops at once."""
        big = os.path.join(self.root, "zz-big.mp4")
        with open(big, "wb") as f:
            f.write(h.read_bytes(h.video("h264_1080p.mp4")))
            f.truncate(1536 << 20)  # sparse: 1.5 GiB that cost no disk
        c = PtyClient(["-s", self.srv.addr, "--jobs", "1", "--no-pull", "--chunk-size", "64K",
                       "--include", "zz-*", self.root, self.out])
        c.wait_output(r"[1-9][0-9.]* MiB sent")
        rc, elapsed = c.interrupt()
        self.check_interrupted(c, rc, elapsed)
        self.assertRegex(c.text(), r"FAIL zz-big.mp4: interrupted")

    def test_interrupt_at_random_moments(self):
        """The race that hung the client: ^C at any moment of a batch of uploads."""
        inp = h.make_input_dir([])
        self.addCleanup(shutil.rmtree, inp, True)
        for i in range(12):
            shutil.copyfile(h.video("h264_1080p.mp4"), os.path.join(inp, "v%02d.mp4" % i))
        rnd = random.Random(12)
        for k in range(16):
            shutil.rmtree(self.root + "-out", True)
            c = PtyClient(["-s", self.srv.addr, "--jobs", "1", "--no-pull", inp, self.out])
            time.sleep(rnd.uniform(0.2, 1.2))
            if c.proc.poll() is not None:
                continue  # all done already: nothing to interrupt
            rc, elapsed = c.interrupt()
            if rc == 0 and "done: 12 ok, 0 failed" in c.text():
                continue  # it finished between the poll and the ^C: nothing was interrupted
            self.check_interrupted(c, rc, elapsed)

    def test_timeout_bounds_every_wait(self):
        """A server that never answers (its worker is stopped): each call ends at the
        client's own --timeout, in every mode, as DEADLINE_EXCEEDED."""
        self.stopped_workers()
        inp = h.make_input_dir(["h264.mp4"], parent=self.root)
        for mode in (["--no-pull"], ["--pull"]):
            with self.subTest(mode=mode):
                r = h.run_client(["-s", self.srv.addr, "--timeout", "2", "--retries", "0"] +
                                 mode + [inp, self.out], timeout=60)
                h.log("%s --timeout 2: exit %d after %.2f s" % (mode[0], r.returncode, r.elapsed))
                self.assertEqual(r.returncode, 1, r)
                self.assertRegex(r.line_for("h264.mp4") or "", r"FAIL .*DEADLINE_EXCEEDED", r)
                self.assertLess(r.elapsed, 2 + PROMPT, r)
                self.assertEqual(hidden_temp_files(self.out) if os.path.isdir(self.out) else [],
                                 [])

    def test_stale_temp_files_are_removed(self):
        """A killed client leaves .NAME.png.tmp.PID: the next run removes those whose PID
        is gone, and only those."""
        dead = subprocess.Popen(["true"])
        dead.wait()
        os.makedirs(os.path.join(self.out, "sub"))
        stale = [".h264.png.tmp.%d" % dead.pid, "sub/.x.png.tmp.%d" % dead.pid]
        alive = ".vp9.png.tmp.%d" % os.getpid()  # a client still writing (us, here)
        for f in stale + [alive]:
            with open(os.path.join(self.out, f), "wb") as fh:
                fh.write(b"partial")
        r = h.run_client(["-s", self.srv.addr, self.root, self.out], check_rc=0)
        files = h.tree_files(self.out)
        for f in stale:
            self.assertNotIn(f, files, r)
        self.assertIn(alive, files)
        self.assertIn("h264.png", files)


class Folders(h.ServerTestCase):
    workers = 2

    def client(self, *args, **kw):
        return h.run_client(["--server", self.server.addr] + list(args), **kw)

    def test_collisions_keep_the_extension(self):
        inp = self.tmpdir()
        for n in ("movie-hello.mp4", "movie-hello.avi", "movie-hello.mkv", "other.webm"):
            src = {"mp4": "h264.mp4", "avi": "mpeg4.avi", "mkv": "hevc.mkv",
                   "webm": "vp9.webm"}[n.rsplit(".", 1)[1]]
            shutil.copyfile(h.video(src), os.path.join(inp, n))
        with open(os.path.join(inp, "other.srt"), "w") as f:  # skipped: takes no name
            f.write("1\n00:00:01,000 --> 00:00:02,000\nhello\n")
        out = os.path.join(self.tmpdir(), "out")
        r = self.client(inp, out, check_rc=0)
        self.assertEqual(h.tree_files(out), ["movie-hello.avi.png", "movie-hello.mkv.png",
                                             "movie-hello.mp4.png", "other.png"], r)
        for f in h.tree_files(out):
            h.png_file(os.path.join(out, f))
        self.assertRegex(r.stdout, r"done: 4 ok, 0 failed, 1 skipped")

    def test_name_template(self):
        inp = self.tmpdir()
        os.makedirs(os.path.join(inp, "a"))
        shutil.copyfile(h.video("h264.mp4"), os.path.join(inp, "a", "clip.mp4"))
        out = os.path.join(self.tmpdir(), "out")
        self.client("--name", "{path}-{ext}-{time}", "--at", "1s", "--at", "1m30s", inp, out,
                    check_rc=0)
        self.assertEqual(h.tree_files(out), ["a/clip-mp4-1s.png", "a/clip-mp4-90s.png"])
        out = os.path.join(self.tmpdir(), "out")
        self.client("--name", "flat/{stem}_{index}", "--count", "2", inp, out, check_rc=0)
        self.assertEqual(h.tree_files(out), ["flat/clip_1.png", "flat/clip_2.png"])
        # a template that makes two inputs one name: the second fails, the first is made
        os.makedirs(os.path.join(inp, "b"))
        shutil.copyfile(h.video("vp9.webm"), os.path.join(inp, "b", "clip.webm"))
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--name", "{stem}", inp, out, check_rc=1)
        self.assertIn("would also be the output of a/clip.mp4", r.line_for("b/clip.webm"), r)
        self.assertEqual(h.tree_files(out), ["clip.png"])
        for bad in ("../x", "/abs/{stem}", "{nope}", "{stem"):
            self.client("--name", bad, inp, out, check_rc=2)
        self.client("--name", "{time}", "--count", "3", inp, out, check_rc=2)

    def test_not_video_is_skipped(self):
        inp = self.tmpdir()
        v = h.video("h264.mp4")
        shutil.copyfile(v, os.path.join(inp, "film.mp4"))
        shutil.copyfile(v, os.path.join(inp, "really-a-video.jpg"))  # content wins
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", v, "-frames:v", "1",
                        os.path.join(inp, "photo.jpg")], check=True)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", v, "-frames:v", "1",
                        os.path.join(inp, "still.png")], check=True)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", v, "-t", "1", "-vf",
                        "scale=160:-2,fps=5", os.path.join(inp, "anim.gif")], check=True)
        for n, text in (("film.srt", "1\n00:00:01,000 --> 00:00:02,000\nhi\n"),
                        ("film.nfo", "Film (2026)\n\xe9t\xe9\n"), ("meta.json", '{"a": 1}\n')):
            with open(os.path.join(inp, n), "w", encoding="latin-1") as f:
                f.write(text)
        out = os.path.join(self.tmpdir(), "out")
        r = self.client(inp, out, check_rc=0)
        for n in ("film.srt", "film.nfo", "meta.json", "photo.jpg", "still.png"):
            self.assertRegex(r.line_for(n) or "", r"^skip %s: not a video" % re.escape(n), r)
        for n in ("film.mp4", "really-a-video.jpg", "anim.gif"):
            self.assertRegex(r.line_for(n) or "", r"^ok ", r)
        self.assertIn("done: 3 ok, 0 failed, 5 skipped", r.stdout)
        self.assertEqual(h.tree_files(out), ["anim.png", "film.png", "really-a-video.png"])

        # --exclude skips, --include sends only its matches (even a photo: the server judges)
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--exclude", "*.GIF", "--exclude", "really-*", inp, out, check_rc=0)
        self.assertIn("excluded by --exclude '*.GIF'", r.line_for("anim.gif"), r)
        self.assertEqual(h.tree_files(out), ["film.png"])
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--include", "*.jpg", "--include", "*.mp4", inp, out)
        self.assertRegex(r.line_for("photo.jpg") or "", r"^(ok|FAIL) ", r)  # sent
        self.assertIn("not matched by --include", r.line_for("anim.gif"), r)
        self.assertRegex(r.line_for("film.mp4") or "", r"^ok ", r)

    def test_rerun_skips_only_up_to_date_outputs(self):
        inp = h.make_input_dir(["h264.mp4", "vp9.webm"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        self.client(inp, out, check_rc=0)
        png = os.path.join(out, "h264.png")
        chunks = dict(png_chunks(png))
        self.assertIn(b"tEXt", chunks)
        self.assertTrue(chunks[b"tEXt"].startswith(b"thumbnail_client\0v1 "), chunks[b"tEXt"])
        h.png_file(png)  # still a valid PNG, CRCs and all
        st = os.stat(png)

        r = self.client(inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^skip h264.mp4: up to date")
        self.assertEqual(os.stat(png).st_ino, st.st_ino, "rewritten though up to date")

        # the source changed (same size, new mtime): made again; the other is not
        src = os.path.join(inp, "h264.mp4")
        os.utime(src, (time.time() + 5, time.time() + 5))
        r = self.client(inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^ok ")
        self.assertRegex(r.line_for("vp9.webm"), r"^skip ")
        self.assertNotEqual(os.stat(png).st_ino, st.st_ino)

        # other options: made again, with them
        r = self.client("--width", "160", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^ok ")
        self.assertEqual(h.png_size(png), (160, 90))
        r = self.client("--width", "160", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^skip ")

        # an output we did not make (no record) is made again
        shutil.copyfile(h.video("h264.mp4"), png)
        r = self.client("--width", "160", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^ok ")
        h.png_file(png)

        # JPEG: the record in a COM segment; WebP: a hidden sidecar
        self.client("--format", "jpeg", inp, out, check_rc=0)
        jpg = h.read_bytes(os.path.join(out, "h264.jpg"))
        self.assertEqual(jpg[:4], b"\xff\xd8\xff\xfe")
        self.assertIn(b"thumbnail_client: v1 ", jpg[:400])
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", os.path.join(out, "h264.jpg"),
                        "-f", "null", "-"], check=True)
        r = self.client("--format", "jpeg", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^skip ")
        self.client("--format", "webp", inp, out, check_rc=0)
        self.assertIn(".h264.webp.thumbmeta", h.tree_files(out))
        r = self.client("--format", "webp", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^skip ")
        r = self.client("--format", "webp", "--quality", "40", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^ok ")

    def test_json(self):
        inp = h.make_input_dir(["h264.mp4", "random.bin"], parent=self.tmpdir())
        odd = os.path.join(os.fsencode(inp), b"caf\xe9 \"quoted\"\n.mp4")  # not UTF-8
        shutil.copyfile(h.video("vp9.webm"), odd)
        with open(os.path.join(inp, "notes.txt"), "w") as f:
            f.write("hello\n")
        out = os.path.join(self.tmpdir(), "out")
        cmd = [h.CLIENT_BIN, "--server", self.server.addr, "--json", "--at", "1", inp, out]
        cp = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(cp.returncode, 1, cp)
        lines = cp.stdout.decode("utf-8").splitlines()  # strict: valid UTF-8
        objs = [json.loads(l) for l in lines]
        self.assertEqual(len(objs), 5, lines)
        files = {os.path.basename(o["input"]): o for o in objs[:-1]}
        ok = files["h264.mp4"]
        self.assertEqual(ok["status"], "ok")
        self.assertEqual(len(ok["outputs"]), 1)
        o = ok["outputs"][0]
        self.assertEqual(o["path"], os.path.join(out, "h264.png"))
        self.assertEqual((o["width"], o["height"]), (320, 180))
        self.assertAlmostEqual(o["time"], 1.0, delta=0.05)
        self.assertEqual(o["bytes"], os.path.getsize(o["path"]) - len(b"tEXt") - 8 -
                         len(dict(png_chunks(o["path"]))[b"tEXt"]))
        self.assertEqual(ok["bytes_sent"], os.path.getsize(h.video("h264.mp4")))
        self.assertGreater(ok["ms"], 0)
        self.assertEqual(files["random.bin"]["status"], "failed")
        self.assertEqual(files["random.bin"]["code"], "INVALID_ARGUMENT")
        self.assertTrue(files["random.bin"]["reason"])
        self.assertEqual(files["notes.txt"]["status"], "skipped")
        self.assertIn("not a video", files["notes.txt"]["reason"])
        weird = [o for n, o in files.items() if n.startswith("caf")]
        self.assertEqual(len(weird), 1, files.keys())
        self.assertEqual(weird[0]["status"], "ok")
        self.assertIn("\ufffd", weird[0]["input"])
        s = objs[-1]["summary"]
        self.assertEqual((s["ok"], s["failed"], s["skipped"]), (2, 1, 1))
        self.assertFalse(s["interrupted"])
        self.assertIn(b"done: 2 ok, 1 failed, 1 skipped", cp.stderr)  # people: stderr

    def test_one_file(self):
        v = h.video("rotate90.mp4")
        d = self.tmpdir()
        r = self.client("-i", v, "-o", os.path.join(d, "x.png"), check_rc=0)
        self.assertEqual(h.png_size(os.path.join(d, "x.png")), (180, 320), r)
        self.client("-i", v, "-o", os.path.join(d, "x.jpg"), check_rc=0)
        self.assertEqual(h.read_bytes(os.path.join(d, "x.jpg"))[:2], b"\xff\xd8")
        self.client("-i", v, "-o", os.path.join(d, "x.jpg"), "--format", "png", check_rc=2)
        self.client("-i", v, check_rc=2)
        self.client("-i", v, "-o", "-", "--count", "2", check_rc=2)
        # -o -: the PNG, whole, and nothing else on stdout
        cp = subprocess.run([h.CLIENT_BIN, "--server", self.server.addr, "-i", v, "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        png = h.png_decode(cp.stdout)
        self.assertEqual((png.width, png.height), (180, 320))
        self.assertIn(b"ok   rotate90.mp4 -> -", cp.stderr)
        # a failure writes nothing to stdout
        cp = subprocess.run([h.CLIENT_BIN, "--server", self.server.addr, "-i",
                             h.video("random.bin"), "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((cp.returncode, cp.stdout), (1, b""), cp.stderr)
        self.assertEqual(sorted(os.listdir(d)), ["x.jpg", "x.png"])

    def test_default_box_bounds_the_longer_side(self):
        inp = h.make_input_dir(["rotate90.mp4", "h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        self.client(inp, out, check_rc=0)
        self.assertEqual(h.png_size(os.path.join(out, "rotate90.png")), (180, 320))
        self.assertEqual(h.png_size(os.path.join(out, "h264.png")), (320, 180))
        out = os.path.join(self.tmpdir(), "out")
        self.client("--width", "320", inp, out, check_rc=0)  # an explicit width is a width
        w, hh = h.png_size(os.path.join(out, "rotate90.png"))
        self.assertEqual(w, 320)

    def test_at_durations(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        outs = []
        for at in ("2", "2s", "2000ms", "0:02", "0m2s"):
            out = os.path.join(self.tmpdir(), "out")
            r = self.client("--at", at, inp, out, check_rc=0)
            self.assertIn("t=2.00s", r.line_for("h264.mp4"), r)
            outs.append(h.png_file(os.path.join(out, "h264.png")).rows)
        self.assertTrue(all(o == outs[0] for o in outs))
        self.client("--at", "1m30x", inp, self.tmpdir(), check_rc=2)

    def test_probe_files_and_directories(self):
        inp = h.make_input_dir(["h264.mp4", "vp9.webm"], parent=self.tmpdir())
        with open(os.path.join(inp, "notes.txt"), "w") as f:
            f.write("not a video\n")
        r = self.client("--probe", inp, h.video("hevc.mkv"), check_rc=0)
        objs = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual([o["file"] for o in objs],
                         [os.path.join(inp, "h264.mp4"), os.path.join(inp, "vp9.webm"),
                          h.video("hevc.mkv")])
        self.assertEqual(objs[2]["video"][0]["codec"], "hevc")

    def test_storyboard_line(self):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        out = os.path.join(self.tmpdir(), "out")
        r = self.client("--storyboard", "--count", "12", "--columns", "5", inp, out, check_rc=0)
        line = r.line_for("h264.mp4")
        self.assertRegex(line, r"h264\.sprite\.png \(\d+x\d+, 12 tiles of \d+x\d+ in 5 x 3", r)
        self.assertRegex(line, r"h264\.vtt \(WebVTT, 12 cues\)", r)
        with open(os.path.join(out, "h264.vtt")) as f:
            self.assertEqual(f.read().count("-->"), 12)
        # the WebVTT is left as the server made it, and is as fresh as its sprite
        r = self.client("--storyboard", "--count", "12", "--columns", "5", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^skip ", r)
        os.unlink(os.path.join(out, "h264.vtt"))
        r = self.client("--storyboard", "--count", "12", "--columns", "5", inp, out, check_rc=0)
        self.assertRegex(r.line_for("h264.mp4"), r"^ok ", r)
        self.assertEqual(h.tree_files(out), ["h264.sprite.png", "h264.vtt"])


class WhatIsSent(unittest.TestCase):
    """The request the client builds, seen by a recording grpcio server: with no time
    named the client sends no time and no mode (the server picks a representative
    frame); a named time is exact (ACCURATE); the default box is 320 x 320."""

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="tn-test-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def options_sent(self, *args):
        from concurrent import futures
        seen = []

        class Recorder(h.pb_grpc.ThumbnailerServicer):
            def Generate(self, request_iterator, context):
                seen.append(next(request_iterator).options)
                context.abort(h.grpc.StatusCode.INVALID_ARGUMENT, "recorded")

        srv = h.grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        h.pb_grpc.add_ThumbnailerServicer_to_server(Recorder(), srv)
        port = srv.add_insecure_port("127.0.0.1:0")
        srv.start()
        try:
            inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
            h.run_client(["-s", "127.0.0.1:%d" % port] + list(args) +
                         [inp, os.path.join(self.tmpdir(), "out")], check_rc=1)
        finally:
            srv.stop(0)
        self.assertEqual(len(seen), 1)
        return seen[0]

    def test_defaults(self):
        o = self.options_sent()
        self.assertEqual(len(o.times), 0)
        self.assertEqual((o.count, o.every), (0, 0))
        self.assertEqual(o.mode, h.pb.SEEK_MODE_UNSPECIFIED)
        self.assertEqual((o.max_width, o.max_height), (320, 320))
        o = self.options_sent("--at", "1m30s")
        self.assertEqual([t.seconds for t in o.times], [90.0])
        self.assertEqual(o.mode, h.pb.SEEK_MODE_ACCURATE)
        self.assertEqual(self.options_sent("--count", "3").mode, h.pb.SEEK_MODE_ACCURATE)
        self.assertEqual(self.options_sent("--mode", "smart").mode, h.pb.SEEK_MODE_SMART)
        o = self.options_sent("--height", "200")
        self.assertEqual((o.max_width, o.max_height), (0, 200))


class Connection(h.ServerTestCase):
    workers = 1

    def fast_failure(self, server, pattern):
        inp = h.make_input_dir(["h264.mp4"], parent=self.tmpdir())
        r = h.run_client(["--server", server, inp, os.path.join(self.tmpdir(), "out")],
                         timeout=60)
        self.assertEqual(r.returncode, 2, r)
        self.assertRegex(r.stderr, pattern, r)
        self.assertLess(r.elapsed, 2.0, "not reported at once: %r" % r)
        h.log("%s: %.2f s: %s" % (server, r.elapsed, r.stderr.strip()))

    def test_errors_say_what_happened(self):
        self.fast_failure("127.0.0.1:%d" % h.free_port(), r"[Cc]onnection refused")
        self.fast_failure("dns:///127.0.0.1:%d" % h.free_port(), r"[Cc]onnection refused")
        self.fast_failure("no-such-host.invalid:50051", r"cannot resolve 'no-such-host.invalid'")
        self.fast_failure("unix:%s/none.sock" % self.tmpdir(), r"No such file or directory")

    def test_addresses_refused_up_front(self):
        for bad, why in (("320", r"bare number.*--width"), ("localhost", r"no port"),
                         ("http://localhost:50051", r"not a URL"), ("[::1]", r"no port")):
            r = h.run_client(["-s", bad, self.tmpdir()], check_rc=2)
            self.assertRegex(r.stderr, why, r)
        r = h.run_client([self.tmpdir()], env={"THUMBNAIL_SERVER": "8080"}, check_rc=2)
        self.assertIn("THUMBNAIL_SERVER", r.stderr)
        # accepted forms still work
        for good in (self.server.addr, "dns:///" + self.server.addr):
            h.run_client(["-s", good, "--health"], check_rc=0)

    def test_help(self):
        r = h.run_client(["--help"], check_rc=0)
        self.assertEqual(len(re.findall(r"^\s+--mode ", r.stdout, re.M)), 1, r.stdout)
        tail = r.stdout.rstrip().splitlines()[-8:]
        self.assertTrue(any(l.startswith("Exit status") for l in tail), tail)
        self.assertIn("130", r.stdout.split("Exit status")[1])
        self.assertIn("143", r.stdout.split("Exit status")[1])
        self.assertIn("Examples:", r.stdout)
        for flag in ("--name", "--include", "--exclude", "--json", "--input", "--output"):
            self.assertIn(flag, r.stdout)


if __name__ == "__main__":
    h.main()
