#!/usr/bin/env python3
"""An upload over 2 GiB succeeds and the front's memory stays flat.

The video is h264.mp4 (moov first) followed by one top-level `free` box with a
64-bit size (size field 1, then 'free', then the 8-byte largesize) holding
2.1 GiB of zeros. A sequence of boxes is still a valid MP4; the zeros are made
with truncate(), so the file is sparse and costs no disk time to create, but
all 2.1 GiB still stream through gRPC and into the server's spool file.

Measured and printed: upload throughput (MB/s) and the front's peak RSS
(polled VmRSS every 50 ms, and VmHWM), which must stay under 100 MB.
Skip with TN_SKIP_BIG=1 (runs by default, and in CI).
"""
import os
import shutil
import struct
import threading
import time
import unittest

import harness as h

FREE_BYTES = int(2.1 * (1 << 30))
RSS_LIMIT = 100 * 1000 * 1000


def make_big_mp4(path, src):
    with open(src, "rb") as f:
        head = f.read()
    with open(path, "wb") as f:
        f.write(head)
        f.write(struct.pack(">I4sQ", 1, b"free", 16 + FREE_BYTES))
        f.truncate(len(head) + 16 + FREE_BYTES)  # sparse zeros
    return os.path.getsize(path)


class RssMonitor(threading.Thread):
    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self.stop_evt = threading.Event()

    def run(self):
        while not self.stop_evt.is_set():
            v = h.vm_status(self.pid, "VmRSS")
            if v:
                self.peak = max(self.peak, v)
                self.samples += 1
            time.sleep(self.interval)

    def stop(self):
        self.stop_evt.set()
        self.join()


@unittest.skipIf(os.environ.get("TN_SKIP_BIG") == "1",
                 "TN_SKIP_BIG=1: the >2 GiB upload through the real server is NOT tested")
class BigUpload(h.ServerTestCase):
    workers = 1

    def test_over_2gib(self):
        work = self.tmpdir()
        need = FREE_BYTES + (512 << 20)
        free = shutil.disk_usage(self.server.spool).free
        self.assertGreater(free, need, "the spool dir %s needs %.1f GiB free (has %.1f)"
                           % (self.server.spool, need / (1 << 30), free / (1 << 30)))
        inp = os.path.join(work, "in")
        os.mkdir(inp)
        big = os.path.join(inp, "big.mp4")
        size = make_big_mp4(big, h.video("h264.mp4"))
        self.assertGreater(size, 2 << 30)
        out = os.path.join(work, "out")

        front = self.server.front_pid()
        rss0 = h.vm_status(front, "VmRSS")
        mon = RssMonitor(front)
        mon.start()
        try:
            # --no-pull: a file this big would be pulled (a few MB) by default
            r = h.run_client(["--server", self.server.addr, "--no-pull", inp, out], timeout=800)
        finally:
            mon.stop()
            os.unlink(big)
        hwm = h.vm_status(front, "VmHWM")
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(h.tree_files(out), ["big.png"])
        png = h.png_file(os.path.join(out, "big.png"))
        self.assertEqual((png.width, png.height), (320, 180))
        # the whole file crossed the wire: an upload, not a pull
        self.assertIn("file=\"big.mp4\" in=%d " % size, self.server.log_text())

        mbps = size / r.elapsed / 1e6
        h.log("RESULT big upload: %.2f GiB in %.2f s = %.0f MB/s (client wall time, incl. job)"
              % (size / (1 << 30), r.elapsed, mbps))
        h.log("RESULT front RSS: before %.1f MB, peak polled %.1f MB (%d samples), "
              "VmHWM %.1f MB" % ((rss0 or 0) / 1e6, mon.peak / 1e6, mon.samples,
                                 (hwm or 0) / 1e6))
        self.assertTrue(self.server.proc.poll() is None)
        self.assertEqual(front, self.server.roles()["front"], "the front was restarted")
        if h.sanitized():
            h.log("ASan build: RSS limit not checked (quarantine and shadow memory)")
        else:
            self.assertLess(mon.peak, RSS_LIMIT)
            if hwm:
                self.assertLess(hwm, RSS_LIMIT)
        # The spooled copy is gone once the call is over.
        h.wait_for(lambda: os.listdir(self.server.spool) == [], 10, what="an empty spool dir")


if __name__ == "__main__":
    h.main()
