"""Hostile clients against fairness in our own code, each against a real server
with grpcio as the client: no single client can crash a worker with its
options, hold its slot and its results by not reading, take every call slot
with a trickle of bytes, or block the last worker with silent pull calls.
Plus the small ones: statuses of odd local paths, probe results larger than a
data chunk, and resets that never sent a request (not one log line each).

Stated bounds (checked below): a legitimate call during each attack succeeds
within LEGIT_BOUND_S; a stalled reader's results are unmapped (within
--idle-timeout + 30 s of piling up, 2-4 s measured) and the front's RSS is back
within RSS_BOUND_KB of idle; a trickling stream is ended within its rate
window + 5 s; no worker dies.
"""
import os
import socket
import threading
import time
import unittest

import harness as h
from harness import pb, pb_grpc
from test_overload import SlowUpload, spool_fds
from test_pull import PullCall

LEGIT_BOUND_S = 5.0
RSS_BOUND_KB = 32 << 10  # the front's RSS after an attack, above its idle RSS


def legit_call(addr, timeout=30):
    """One ordinary upload; returns its latency in seconds (raises on failure)."""
    t0 = time.monotonic()
    thumbs = h.generate(addr, timeout=timeout, path=h.video("h264.mp4"), times=["1"])
    if len(thumbs) != 1 or not thumbs[0].data:
        raise AssertionError("legit call: %d thumbnails" % len(thumbs))
    return time.monotonic() - t0


def memfd_maps(pid):
    with open("/proc/%d/maps" % pid) as f:
        return sum(1 for line in f if "memfd:" in line)


def rss_kb(pid):
    return int(h.vm_status(pid, "VmRSS") or 0) >> 10


class Options(h.ServersTestCase):
    def test_sigfpe_options(self):
        """every >= 1e9 x the duration left no point: SIGFPE in the storyboard, OK with
        no thumbnail otherwise. Now the one point at the start, as for any interval
        longer than the video; no worker dies."""
        s = self.server(workers=2)
        before = sorted(s.worker_pids())
        for engine, n in ((dict(storyboard=True, every=1e18), 2), (dict(storyboard=True, every=1e12), 2),
                          (dict(every=1e18), 1), (dict(every=1.7e308), 1)):
            thumbs = h.generate(s.addr, path=h.video("h264.mp4"), engine=engine)
            self.assertEqual(len(thumbs), n, engine)
            self.assertEqual(thumbs[0].header.actual_time, 0.0, engine)
        for engine in (dict(storyboard=True, tile_width=1025), dict(storyboard=True, columns=101),
                       dict(count=65), dict(every=float("inf"))):
            with self.assertRaises(h.grpc.RpcError) as cm:
                h.generate(s.addr, path=h.video("h264.mp4"), engine=engine)
            self.assertEqual(cm.exception.code().name, "INVALID_ARGUMENT", engine)
            field = list(engine)[-1]
            self.assertIn(field, cm.exception.details())
        self.assertLess(legit_call(s.addr), LEGIT_BOUND_S)
        self.assertEqual(sorted(s.worker_pids()), before, "a worker died")
        self.assertNotIn("killed by signal", s.log_text())


class StalledReader(h.ServersTestCase):
    def test_stalled_reader_is_ended_and_its_results_freed(self):
        """Calls that never read their responses: ended after --idle-timeout, their
        slots and mapped results freed; a legitimate call then succeeds."""
        idle = 2
        s = self.server(workers=2, extra=["--idle-timeout", "%ds" % idle,
                                          "--max-concurrent-calls", "4",
                                          "--max-calls-per-peer", "0"])
        front = s.front_pid()
        rss0 = rss_kb(front)
        chans, calls = [], []
        for _ in range(4):  # every slot
            # no BDP probe: the stream's window stays at its initial 64 KiB
            ch = h.channel(s.addr, options=[("grpc.http2.bdp_probe", 0)])
            chans.append(ch)
            stub = pb_grpc.ThumbnailerStub(ch)
            # 8 upscaled 3840-wide PNGs: megabytes each, far past the stream's window
            it = stub.Generate(h.generate_requests(
                path=h.video("h264.mp4"), times=[0.5, 1, 1.5, 2, 2.5, 3, 3.5, 0.2],
                max_width=3840, upscale=True), timeout=120)
            calls.append(it)
        try:
            # results pile up in the front, unread
            h.wait_for(lambda: memfd_maps(front) >= 4, 60, what="results mapped in the front")
            held = memfd_maps(front)
            rss_held = rss_kb(front)
            h.log("stalled: %d results mapped, front RSS %d -> %d kB" % (held, rss0, rss_held))
            t0 = time.monotonic()
            # every stalled call ended (jobs queue behind each other on 2 workers),
            # and nothing of theirs mapped any more
            h.wait_for(lambda: s.log_text().count("reads nothing for") >= len(calls)
                       and memfd_maps(front) == 0, idle + 60, what="stalled calls ended, freed")
            freed_after = time.monotonic() - t0
            h.log("results unmapped %.1f s later" % freed_after)
            lat = legit_call(s.addr)
            h.log("legit call after the stalled readers: %.2f s; front RSS %d kB"
                  % (lat, rss_kb(front)))
            self.assertLess(rss_kb(front), rss0 + RSS_BOUND_KB)
            self.assertLess(lat, LEGIT_BOUND_S)
            self.assertIn("reads nothing for", s.log_text())
            self.assertIn("status=DEADLINE_EXCEEDED", s.log_text())
            for it in calls:  # the client sees why
                with self.assertRaises(h.grpc.RpcError) as cm:
                    for _ in it:
                        pass
                self.assertIn(cm.exception.code().name, ("DEADLINE_EXCEEDED",))
        finally:
            for it in calls:
                it.cancel()
            for ch in chans:
                ch.close()


class Slowloris(h.ServersTestCase):
    def test_trickle_streams_on_one_connection(self):
        """40 streams on one connection, 1 byte every 4 s each: the per-peer cap admits
        half, --min-upload-rate ends those; a client on another address keeps succeeding."""
        sock = os.path.join(h.tempfile.mkdtemp(prefix="tn-sl-"), "s.sock")
        s = self.server(workers=2, extra=["--max-concurrent-calls", "40",
                                          "--listen", "unix:" + sock,
                                          "--min-upload-rate", "1K/5s"])
        stop = threading.Event()
        results = []
        lock = threading.Lock()
        ch = h.channel(s.addr)
        stub = pb_grpc.ThumbnailerStub(ch)

        def trickle():
            yield pb.GenerateRequest(options=pb.Options(file_name="slow.mp4", size=1 << 20))
            while not stop.wait(4):
                yield pb.GenerateRequest(data=b"x")

        def attacker():
            t0 = time.monotonic()
            try:
                for _ in stub.Generate(trickle(), timeout=60):
                    pass
                code, details = "OK", ""
            except h.grpc.RpcError as e:
                code, details = e.code().name, e.details() or ""
            with lock:
                results.append((code, details, time.monotonic() - t0))

        threads = [threading.Thread(target=attacker) for _ in range(40)]
        for t in threads:
            t.start()
        lat = []
        try:
            t_end = time.monotonic() + 9
            while time.monotonic() < t_end:  # during the attack, on the unix listener
                lat.append(legit_call("unix:" + sock))
                time.sleep(0.5)
            for t in threads:
                t.join(20)
        finally:
            stop.set()
            ch.close()
        codes = [r[0] for r in results]
        h.log("attack: %s; legit latency max %.2f s over %d calls"
              % ({c: codes.count(c) for c in set(codes)}, max(lat), len(lat)))
        self.assertEqual(len(results), 40)
        refused = [r for r in results if r[0] == "RESOURCE_EXHAUSTED"]
        ended = [r for r in results if r[0] == "DEADLINE_EXCEEDED"]
        self.assertEqual(len(refused), 20, results)  # half of --max-concurrent-calls
        self.assertTrue(all("max-calls-per-peer" in r[1] for r in refused))
        self.assertEqual(len(ended), 20, results)
        self.assertTrue(all("min-upload-rate" in r[1] and r[2] < 5 + 5 for r in ended), ended)
        self.assertLess(max(lat), LEGIT_BOUND_S)


class PullHog(h.ServersTestCase):
    def test_silent_pull_calls_leave_a_worker(self):
        """Three pull calls that never answer a range: they can hold at most N-1 of
        the N workers, each range for --range-timeout; uploads keep going."""
        s = self.server(workers=2, extra=["--range-timeout", "3s"])
        path = h.video("h264.mp4")
        hogs = [PullCall(s.addr, path, answer=lambda rr: None, timeout=60) for _ in range(3)]
        threads = [threading.Thread(target=c.run) for c in hogs]
        for t in threads:
            t.start()
        try:
            time.sleep(1)  # the hogs' jobs are in
            lat = [legit_call(s.addr) for _ in range(3)]
            h.log("legit uploads during the pull hog: %s s" % ", ".join("%.2f" % x for x in lat))
            self.assertLess(max(lat), LEGIT_BOUND_S)
        finally:
            for t in threads:
                t.join(40)
        for c in hogs:
            self.assertIsNotNone(c.error)
            self.assertEqual(c.error.code().name, "DEADLINE_EXCEEDED", c.error.details())
            self.assertIn("range-timeout", c.error.details())


class SmallOnes(h.ServersTestCase):
    def test_local_paths_statuses(self):
        """A socket file and an over-long name are INVALID_ARGUMENT (not a retried
        UNAVAILABLE); "a.mp4/" is NOT_FOUND with openat2 and in the fallback walk."""
        root = h.tempfile.mkdtemp(prefix="tn-root-")
        self.addCleanup(h.shutil.rmtree, root, True)
        h.shutil.copy(h.video("h264.mp4"), os.path.join(root, "a.mp4"))
        sk = socket.socket(socket.AF_UNIX)
        sk.bind(os.path.join(root, "sock"))
        self.addCleanup(sk.close)
        for env in ({}, {"TN_NO_OPENAT2": "1"}):
            s = self.server(workers=1, extra=["--media-root", root], env=env)
            for path, code in (("sock", "INVALID_ARGUMENT"), ("x" * 300, "INVALID_ARGUMENT"),
                               ("a.mp4/", "NOT_FOUND"), ("a.mp4", "OK")):
                req = pb.GenerateRequest(options=pb.Options(local_path=path))
                with h.channel(s.addr) as ch:
                    stub = pb_grpc.ThumbnailerStub(ch)
                    try:
                        list(stub.Generate(iter([req]), timeout=20))
                        got = "OK"
                    except h.grpc.RpcError as e:
                        got = e.code().name
                self.assertEqual(got, code, (path[:20], env))

    def test_probe_larger_than_a_chunk(self):
        """A probe result over --chunk-size + 1 KiB used to fail RESOURCE_EXHAUSTED
        (logged OK); the limit is --max-message-bytes now, and over it the status
        and the access line agree."""
        d = h.tempfile.mkdtemp(prefix="tn-probe-")
        self.addCleanup(h.shutil.rmtree, d, True)
        many = os.path.join(d, "many_streams.mkv")  # 30 audio streams: a long stream list
        h.subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                          "testsrc=d=1:s=64x64:r=10", "-f", "lavfi", "-i", "sine=d=1"]
                         + ["-map", "1:a"] * 30 + ["-map", "0:v", "-c:v", "libx264", "-c:a", "aac",
                                                   "-t", "1", many], check=True)
        s = self.server(workers=1, extra=["--chunk-size", "1K"])
        with h.channel(s.addr) as ch:
            r = pb_grpc.ThumbnailerStub(ch).Probe(h.generate_requests(path=many), timeout=20)
        h.log("probe JSON: %d bytes" % len(r.json))
        self.assertGreater(len(r.json), 1024 + 1024, "the probe JSON is too small to test")
        s2 = self.server(workers=1, extra=["--chunk-size", "1K", "--max-message-bytes", "3K"])
        with self.assertRaises(h.grpc.RpcError) as cm:
            with h.channel(s2.addr) as ch:
                pb_grpc.ThumbnailerStub(ch).Probe(h.generate_requests(path=many, chunk=1024),
                                                  timeout=60)
        self.assertEqual(cm.exception.code().name, "RESOURCE_EXHAUSTED")
        self.assertIn("max-message-bytes", cm.exception.details())
        h.wait_for(lambda: "Probe" in s2.log_text() and "status=RESOURCE_EXHAUSTED"
                   in s2.log_text(), 5, what="the access line")

    def test_spool_gauge_after_pull_calls(self):
        """thumbnail_spool_bytes after a pull call: the ranges it stored were never
        added but were subtracted at its end, so later uploads read low (0)."""
        s = self.server(workers=1, metrics=True, extra=["--idle-timeout", "30s"])
        call = PullCall(s.addr, h.video("h264.mp4"))
        self.assertIsNotNone(call.run(), call.error)
        self.assertGreater(call.sent, 128 << 10)

        def gauge():
            _, _, body = s.scrape()
            for line in body.splitlines():
                if line.startswith("thumbnail_spool_bytes "):
                    return int(float(line.split()[1]))
            raise AssertionError("no thumbnail_spool_bytes")
        h.wait_for(lambda: gauge() == 0, 5, what="the gauge back to 0")
        up = SlowUpload(s.addr, h.read_bytes(h.video("h264.mp4")))
        self.addCleanup(up.close)
        self.assertTrue(up.sent.wait(10))
        h.wait_for(lambda: spool_fds(s.front_pid(), s.spool) >= 1, 10, what="the upload spooled")
        got = h.wait_for(lambda: gauge() or None, 5, what="a gauge above 0")
        self.assertEqual(got, 64 << 10)  # SlowUpload's first chunk

    def test_resets_are_summed_up(self):
        """Calls reset before sending anything: one summary line, not a line each."""
        s = self.server(workers=1)
        n = 200
        with h.channel(s.addr) as ch:
            stub = pb_grpc.ThumbnailerStub(ch)
            never = threading.Event()

            def nothing():
                never.wait()
                return
                yield

            calls = [stub.Generate(nothing(), timeout=30) for _ in range(n)]
            time.sleep(1)
            for c in calls:
                c.cancel()
            never.set()
        time.sleep(2.5)
        text = s.log_text()
        lines = text.count("thumbnail.v1.Thumbnailer/Generate") + text.count(" Generate peer=")
        h.log("%d access lines for %d resets" % (lines, n))
        self.assertLess(lines, 5)
        self.assertRegex(text, r"\d+ call\(s\) ended before sending a request")
        self.assertLess(legit_call(s.addr), LEGIT_BOUND_S)


if __name__ == "__main__":
    h.main()
