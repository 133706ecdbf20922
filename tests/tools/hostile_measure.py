#!/usr/bin/python3
"""Measure four hostile clients against one build, with flags both old and new
builds accept, for a before/after table: the front's peak RSS, legitimate-call
latency and failures during each attack, worker deaths.

    TN_BUILD_DIR=build TN_TEST_VIDEOS=build/test-videos TN_SOURCE_DIR=. \\
        /usr/bin/python3 tests/tools/hostile_measure.py

Legitimate calls go through a unix: listener, so that a per-address cap on the
attacker (127.0.0.1) does not touch them, as it would not touch other hosts.
"""
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness as h  # noqa: E402
from harness import pb, pb_grpc  # noqa: E402
from test_pull import PullCall  # noqa: E402


def rss_kb(pid):
    return int(h.vm_status(pid, "VmRSS") or 0) >> 10


class Legit:
    """Ordinary uploads in a loop on the unix listener until stop(): latencies, failures."""

    def __init__(self, addr):
        self.addr, self.lat, self.fail = addr, [], []
        self.done = threading.Event()
        self.t = threading.Thread(target=self.loop)
        self.t.start()

    def loop(self):
        while not self.done.is_set():
            t0 = time.monotonic()
            try:
                h.generate(self.addr, timeout=60, path=h.video("h264.mp4"), times=["1"])
                self.lat.append(time.monotonic() - t0)
            except h.grpc.RpcError as e:
                self.fail.append(e.code().name)
                time.sleep(0.2)
            time.sleep(0.2)

    def stop(self):
        self.done.set()
        self.t.join(90)
        lat = sorted(self.lat)
        return ("legit ok=%d failed=%d%s p50=%.2fs max=%.2fs"
                % (len(lat), len(self.fail),
                   " (%s)" % ",".join(sorted(set(self.fail))) if self.fail else "",
                   lat[len(lat) // 2] if lat else float("nan"), lat[-1] if lat else float("nan")))


def server(extra):
    d = tempfile.mkdtemp(prefix="tn-measure-")
    sock = os.path.join(d, "s.sock")
    s = h.Server(workers=2, extra=["--listen", "unix:" + sock] + extra)
    return s, "unix:" + sock


def watch_rss(s, stop, peak):
    front = s.front_pid()
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], rss_kb(front))
        except (OSError, TypeError, ValueError):
            pass
        time.sleep(0.1)


def run(name, extra, attack, seconds):
    if sys.argv[1:] and attack.__name__ not in sys.argv[1:]:  # e.g. "sigfpe pull_hog"
        return
    s, legit_addr = server(extra)
    try:
        rss0 = rss_kb(s.front_pid())
        stop, peak = threading.Event(), [rss0]
        w = threading.Thread(target=watch_rss, args=(s, stop, peak))
        w.start()
        att = attack(s)
        time.sleep(0.5)
        legit = Legit(legit_addr)
        time.sleep(seconds)
        line = legit.stop()
        att_res = att() if att else ""
        stop.set()
        w.join()
        rss_end = rss_kb(s.front_pid())
        # crashes, not recycling (--max-jobs-per-worker replaces workers too)
        dead = s.log_text().count("killed by signal")
        print("%-15s front RSS %d -> peak %d -> end %d MB; %s; workers died %d; %s"
              % (name, rss0 >> 10, peak[0] >> 10, rss_end >> 10, line, dead, att_res), flush=True)
    finally:
        s.stop(check=False)
        s.cleanup()


def stalled_reader(s):
    chans, calls = [], []
    for _ in range(6):
        ch = h.channel(s.addr, options=[("grpc.http2.bdp_probe", 0)])
        chans.append(ch)
        calls.append(pb_grpc.ThumbnailerStub(ch).Generate(h.generate_requests(
            path=h.video("h264.mp4"), times=[0.5, 1, 1.5, 2, 2.5, 3, 3.5, 0.2],
            max_width=3840, upscale=True), timeout=300))

    def end():
        maps = size = 0
        with open("/proc/%d/maps" % s.front_pid()) as f:
            for line in f:
                if "memfd:" in line:
                    a, b = line.split()[0].split("-")
                    maps += 1
                    size += int(b, 16) - int(a, 16)
        for c in calls:
            c.cancel()
        for ch in chans:
            ch.close()
        return "results held at the end: %d (%.0f MB)" % (maps, size / 1e6)
    return end


def slowloris(s):
    stop = threading.Event()
    codes = []
    ch = h.channel(s.addr)
    stub = pb_grpc.ThumbnailerStub(ch)

    def trickle():
        yield pb.GenerateRequest(options=pb.Options(file_name="slow.mp4", size=1 << 20))
        while not stop.wait(4):
            yield pb.GenerateRequest(data=b"x")

    def one():
        try:
            for _ in stub.Generate(trickle(), timeout=120):
                pass
            codes.append("OK")
        except h.grpc.RpcError as e:
            codes.append(e.code().name)
    ts = [threading.Thread(target=one) for _ in range(40)]
    for t in ts:
        t.start()

    def end():
        alive = 40 - len(codes)
        stop.set()
        ch.close()
        for t in ts:
            t.join(10)
        return "attack streams still open at the end %d" % alive
    return end


def sigfpe(s):
    stop = threading.Event()
    n = [0]

    def loop():
        while not stop.is_set():
            try:
                h.generate(s.addr, timeout=30, path=h.video("h264.mp4"),
                           engine=dict(storyboard=True, every=1e18))
            except h.grpc.RpcError:
                pass
            n[0] += 1
    ts = [threading.Thread(target=loop) for _ in range(2)]
    for t in ts:
        t.start()

    def end():
        stop.set()
        for t in ts:
            t.join(60)
        return "attack calls %d" % n[0]
    return end


def pull_hog(s):
    hogs = [PullCall(s.addr, h.video("h264.mp4"), answer=lambda rr: None, timeout=120)
            for _ in range(2)]
    ts = [threading.Thread(target=c.run) for c in hogs]
    for t in ts:
        t.start()

    def end():
        for t in ts:
            t.join(120)
        return "hogs ended %s" % ",".join(c.error.code().name if c.error else "OK" for c in hogs)
    return end


if __name__ == "__main__":
    print("build %s" % h.BUILD_DIR, flush=True)
    run("stalled reader", ["--idle-timeout", "3s"], stalled_reader, 12)
    run("slowloris", ["--max-concurrent-calls", "40"], slowloris, 20)
    run("SIGFPE options", [], sigfpe, 10)
    run("pull hog", [], pull_hog, 10)
