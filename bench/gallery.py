#!/usr/bin/env python3
"""Cold gallery: how long until every thumbnail of a 100-video folder is on screen,
against the time the workers need to make the same thumbnails.

  bench/gallery.py [--files 100] [--workers 2] [--rounds 3] [--size 1920x1080]
                   [--seconds 20] [--build DIR] [--keep-screenshot PATH]

Corpus: --files clips made with the ffmpeg CLI (4 distinct test patterns, H.264
with a keyframe every 10 s as cameras and encoders often do, so the thumbnail at
10 % costs a real decode; copied, so each file is its own inode).
Per round, interleaved, each on a fresh server (no --cache-dir: nothing warm but
the OS page cache, the same for both):

  gallery    headless Chromium opens GET / with a viewport tall enough for every
             tile; the time is the last thumbnail's responseEnd (Resource Timing),
             from the navigation's start, so it includes the page itself.
  workers    the same thumbnails (JPEG at 10 %, a 320x180 box) as gRPC Generate
             calls in local mode, 2x--workers in flight so that no worker waits:
             the wall time the workers need to make them.

The ratio the target is stated in (<= 1.2) is the gallery's time over the
workers' time in the same run: the sum of the per-job times the workers log
("job N ...: OK, 1 thumbnails, X ms"), divided by --workers; the same load on
the machine weighs on both. Printed beside it: the gRPC wall time, and the same
GETs without a browser (GET /, then every <img> over 6 keep-alive connections,
as Chromium does over HTTP/1.1) on another fresh server, which separates the
server's HTTP path from the browser's own CPU on a small machine. Needs a build
with --http-listen, chromium and python3-websocket (scripts/install-deps.sh --tests).
"""

import argparse
import concurrent.futures
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

TILE = (320, 180)  # the box gallery.c asks for


def make_corpus(d, files, size, seconds):
    """files clips in d: 4 distinct encodes, copied."""
    patterns = ["testsrc2", "smptehdbars", "testsrc", "rgbtestsrc"]
    srcs = []
    for i, p in enumerate(patterns[:min(4, files)]):
        out = os.path.join(d, ".src%d.mp4" % i)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "%s=size=%s:rate=25:duration=%d" % (p, size, seconds),
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                        "-g", "250", out], check=True, stdin=subprocess.DEVNULL)
        srcs.append(out)
    media = os.path.join(d, "media")
    os.mkdir(media)
    names = []
    for i in range(files):
        n = "clip %03d.mp4" % i
        shutil.copyfile(srcs[i % len(srcs)], os.path.join(media, n))
        names.append(n)
    return media, names


def start(h, media, workers):
    port = h.free_port()
    srv = h.Server(workers=workers, extra=["--media-root", media,
                                           "--http-listen", "127.0.0.1:%d" % port])
    base = "http://127.0.0.1:%d" % port

    def status():
        try:
            return urllib.request.urlopen(base + "/", timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    h.wait_for(lambda: status() is not None, 30, what="the HTTP gateway")
    st = status()
    if st != 200:
        stop(srv)
        sys.exit("bench/gallery.py: GET / answered %s (501: the front has no List method yet)"
                 % st)
    return srv, base


def stop(srv):
    try:
        srv.stop()
    finally:
        srv.cleanup()


def gallery_round(cdp, chromium, base, files, screenshot=None):
    # 8 columns at 1920 px; the height leaves room for every row
    rows = (files + 7) // 8
    b = cdp.Browser(chromium, width=1920, height=200 + rows * 230)
    try:
        b.navigate(base + "/", timeout=300)
        r = b.js(r"""(async () => {
          const imgs = [...document.images];
          const onScreen = (i) => { const r = i.getBoundingClientRect();
            return r.bottom > 0 && r.top < innerHeight; };
          while (!imgs.every((i) => i.complete))
            await new Promise((r) => setTimeout(r, 20));
          const res = performance.getEntriesByType('resource')
            .filter((e) => e.name.includes('/v1/thumbnail/'));
          return {imgs: imgs.length, shown: imgs.filter(onScreen).length,
                  decoded: imgs.filter((i) => i.naturalWidth > 0).length,
                  fetched: res.length,
                  last: Math.max(...res.map((e) => e.responseEnd)),
                  first: Math.min(...res.map((e) => e.startTime))};
        })()""", timeout=600)
        if screenshot:
            b.screenshot(screenshot)
        return r
    finally:
        b.close()


def http_round(base, files):
    """The page and its thumbnails as a browser fetches them, without the browser: GET /,
    then every <img> over 6 keep-alive connections (a browser's HTTP/1.1 limit per host).
    Seconds from the page's request to the last image's last byte."""
    import html.parser
    import http.client
    import queue
    import threading

    class Imgs(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

    host = urllib.parse.urlsplit(base).netloc
    t0 = time.monotonic()
    c = http.client.HTTPConnection(host, timeout=300)
    c.request("GET", "/")
    page = c.getresponse().read().decode()
    p = Imgs()
    p.feed(page)
    assert len(p.srcs) == files, len(p.srcs)
    todo = queue.Queue()
    for src in p.srcs:
        todo.put(src)
    bad = []

    def fetcher(conn):
        while True:
            try:
                src = todo.get_nowait()
            except queue.Empty:
                return
            conn.request("GET", src)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or body[:3] != b"\xff\xd8\xff":
                bad.append((src, r.status))

    conns = [c] + [http.client.HTTPConnection(host, timeout=300) for _ in range(5)]
    threads = [threading.Thread(target=fetcher, args=(k,)) for k in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    for k in conns:
        k.close()
    assert not bad, bad[:3]
    return elapsed


def workers_round(h, srv, names, workers):
    ch = h.channel(srv.addr)  # one channel: the reference pays no connection set-ups
    stub = h.pb_grpc.ThumbnailerStub(ch)
    h.health_check(srv.addr)

    def one(n):
        # as gallery.c's tiles: JPEG at 10 %, in a 320x180 box
        opts = h.pb.Options(local_path=n, times=[h.time_point("10%")], max_width=TILE[0],
                            max_height=TILE[1], format=h.pb.IMAGE_FORMAT_JPEG)
        thumbs = h.collect(stub.Generate(iter([h.pb.GenerateRequest(options=opts)]),
                                         timeout=300))
        assert thumbs and thumbs[0].data[:3] == b"\xff\xd8\xff", n

    try:
        one(names[0])  # the channel connected; not timed, and done again below
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2 * workers) as ex:
            list(ex.map(one, names))
        return time.monotonic() - t0
    finally:
        ch.close()


def worker_job_ms(srv):
    """The workers' own time per job, from their log lines ("worker#N PID: job ID name
    [times]: OK, 1 thumbnails, 12.345 ms"): (sum of ms, number of jobs)."""
    total, n = 0.0, 0
    for line in srv.log_text().splitlines():
        m = re.search(r" worker#\d+ \d+: job \d+ .*: OK, \d+ thumbnails, ([0-9.]+) ms$", line)
        if m:
            total += float(m.group(1))
            n += 1
    return total, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--keep-screenshot", help="save the last round's page as this PNG")
    a = ap.parse_args()
    os.environ["TN_BUILD_DIR"] = os.path.abspath(a.build)
    os.environ.setdefault("TN_SOURCE_DIR", ROOT)
    import harness as h
    import browser as cdp

    chromium = cdp.find_chromium()
    if not chromium:
        sys.exit("bench/gallery.py: chromium is not installed (Debian: apt-get install chromium)")
    work = tempfile.mkdtemp(prefix="tn-bench-gallery-")
    try:
        print("corpus: %d x %s, %d s, H.264 ..." % (a.files, a.size, a.seconds), flush=True)
        media, names = make_corpus(work, a.files, a.size, a.seconds)
        print("load average before: %s" % " ".join(open("/proc/loadavg").read().split()[:3]))
        rows = []
        for r in range(a.rounds):
            srv, base = start(h, media, a.workers)
            try:
                g = gallery_round(cdp, chromium, base, a.files,
                                  a.keep_screenshot if r == a.rounds - 1 else None)
                ms, n = worker_job_ms(srv)
            finally:
                stop(srv)
            if g["decoded"] != a.files or g["shown"] != a.files:
                sys.exit("round %d: %d of %d thumbnails decoded, %d on screen"
                         % (r, g["decoded"], a.files, g["shown"]))
            srv, base = start(h, media, a.workers)
            try:
                hs = http_round(base, a.files)
            finally:
                stop(srv)
            srv, _ = start(h, media, a.workers)
            try:
                w = workers_round(h, srv, names, a.workers)
            finally:
                stop(srv)
            if n != a.files:
                sys.exit("round %d: %d worker jobs logged for %d thumbnails" % (r, n, a.files))
            gs, busy = g["last"] / 1000.0, ms / 1000.0 / a.workers
            rows.append((gs, busy, w, hs))
            print("round %d: gallery %.3f s (first thumbnail request at %.0f ms); the same "
                  "run's worker time %.3f s (sum of %d jobs / %d workers), ratio %.2f; "
                  "gRPC local-mode wall time %.3f s, ratio %.2f; the same GETs without a "
                  "browser %.3f s, %.2f x gRPC"
                  % (r, gs, g["first"], busy, n, a.workers, gs / busy, w, gs / w, hs, hs / w),
                  flush=True)
        med = statistics.median
        ratio = med(g / b for g, b, _, _ in rows)
        print("median of %d rounds: gallery %.3f s, worker time %.3f s, ratio %.2f (target "
              "<= 1.20); gRPC wall %.3f s, gallery / gRPC %.2f; GETs without a browser "
              "%.3f s, / gRPC %.2f"
              % (len(rows), med(r[0] for r in rows), med(r[1] for r in rows), ratio,
                 med(r[2] for r in rows), med(r[0] / r[2] for r in rows),
                 med(r[3] for r in rows), med(r[3] / r[2] for r in rows)))
        return 0 if ratio <= 1.2 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
