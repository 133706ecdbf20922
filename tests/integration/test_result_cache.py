#!/usr/bin/env python3
"""The result cache (--cache-dir, --cache-size) through the real server and grpcio.

* A second identical Generate (local mode and upload) is a hit: the cache's hit
  counter moves, the workers' decode count does not, and the thumbnails (headers
  and bytes) are identical to the first call's. Equivalent options hit too.
* Changed options, a touched file and a replaced file are misses; an upload of the
  same bytes under another name hits, other bytes miss; a storyboard's VTT names
  its sprite after the file, so another name misses there.
* A Probe is cached like a Generate.
* A corrupted or truncated entry on disk is a miss that still answers the right
  picture, and is replaced.
* --cache-size: entries are evicted least recently used first, the directory
  stays under the cap.
* Entries survive a server restart.
* Latency: hit vs miss on a 1080p local file, median of N (printed).
"""
import glob
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import harness as h
from harness import pb, pb_grpc


def metric(text, name, labels=None):
    """The sum of the samples of `name` whose labels contain `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        if labels and not all('%s="%s"' % kv in (m.group(2) or "") for kv in labels.items()):
            continue
        total += float(m.group(3))
        found = True
    if not found:
        raise AssertionError("no metric %s %s" % (name, labels or ""))
    return total


def local_generate(addr, rel, timeout=60, channel=None, **opts):
    """One local-mode Generate: [Thumb]. channel: reuse it (else a new one per call)."""
    reqs = [pb.GenerateRequest(options=pb.Options(file_name=os.path.basename(rel),
                                                  local_path=rel, **opts))]
    if channel is not None:
        return h.collect(pb_grpc.ThumbnailerStub(channel).Generate(iter(reqs), timeout=timeout))
    with h.channel(addr) as ch:
        return h.collect(pb_grpc.ThumbnailerStub(ch).Generate(iter(reqs), timeout=timeout))


def local_probe(addr, rel, timeout=60):
    reqs = [pb.GenerateRequest(options=pb.Options(file_name=os.path.basename(rel),
                                                  local_path=rel))]
    with h.channel(addr) as ch:
        return pb_grpc.ThumbnailerStub(ch).Probe(iter(reqs), timeout=timeout)


def summary(thumbs):
    """Everything a client sees of a result stream."""
    return [(t.header.index, t.header.requested_time, t.header.actual_time, t.header.width,
             t.header.height, t.header.format, t.header.size, t.header.kind, t.header.reason,
             bytes(t.data)) for t in thumbs]


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
                   + list(args), check=True)


def entries(cache_dir):
    return [p for p in glob.glob(os.path.join(cache_dir, "??", "*"))
            if not os.path.basename(p).startswith(".")]


class CacheTest(h.ServersTestCase):

    def setUp(self):
        super().setUp()
        self.top = tempfile.mkdtemp(prefix="tn-cache-")
        self.addCleanup(shutil.rmtree, self.top, True)
        self.root = os.path.join(self.top, "media")
        self.cache = os.path.join(self.top, "cache")
        os.makedirs(self.root)
        shutil.copyfile(h.video("h264.mp4"), os.path.join(self.root, "a.mp4"))

    def start(self, *extra):
        return self.server(workers=2, metrics=True,
                           extra=["--media-root", self.root, "--cache-dir", self.cache]
                           + list(extra))

    def counts(self, srv):
        t = srv.scrape()[2]
        return {"hit": metric(t, "thumbnail_cache_lookups_total", {"result": "hit"}),
                "miss": metric(t, "thumbnail_cache_lookups_total", {"result": "miss"}),
                "damaged": metric(t, "thumbnail_cache_damaged_total"),
                "stores": metric(t, "thumbnail_cache_stores_total"),
                "evictions": metric(t, "thumbnail_cache_evictions_total"),
                "bytes": metric(t, "thumbnail_cache_bytes"),
                "entries": metric(t, "thumbnail_cache_entries"),
                "decodes": metric(t, "thumbnail_decode_seconds_count")
                if "thumbnail_decode_seconds_count" in t else 0.0}

    def expect(self, srv, before, **delta):
        """The counters moved by exactly delta (others named in delta only)."""
        now = self.counts(srv)
        got = {k: now[k] - before[k] for k in delta}
        self.assertEqual(got, delta, "counter deltas")
        return now

    # ------------------------------------------------------------------
    def test_local_hits_and_misses(self):
        srv = self.start()
        opts = dict(times=[h.time_point("10%"), h.time_point("60%")], max_width=200)
        c0 = self.counts(srv)
        first = local_generate(srv.addr, "a.mp4", **opts)
        self.assertEqual(len(first), 2)
        c1 = self.expect(srv, c0, hit=0, miss=1, stores=1, decodes=1)
        self.assertEqual(len(entries(self.cache)), 1)

        again = local_generate(srv.addr, "a.mp4", **opts)
        c2 = self.expect(srv, c1, hit=1, miss=0, stores=0, decodes=0)
        self.assertEqual(summary(again), summary(first))
        self.assertEqual(h.png_decode(again[0].data).width, 200)

        # the same request spelt with the defaults explicitly: the same key
        same = local_generate(srv.addr, "a.mp4", format=1, mode=1, fit=1, quality=80, **opts)
        c3 = self.expect(srv, c2, hit=1, miss=0, decodes=0)
        self.assertEqual(summary(same), summary(first))

        # other options: a miss, and another picture
        wider = local_generate(srv.addr, "a.mp4", times=opts["times"], max_width=240)
        c4 = self.expect(srv, c3, hit=0, miss=1, stores=1, decodes=1)
        self.assertEqual(wider[0].header.width, 240)

        # a touched file (new mtime): a miss
        path = os.path.join(self.root, "a.mp4")
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000000000))
        touched = local_generate(srv.addr, "a.mp4", **opts)
        c5 = self.expect(srv, c4, hit=0, miss=1, stores=1, decodes=1)
        self.assertEqual(summary(touched), summary(first))  # same bytes, decoded again

        # a replaced file (another video renamed over it): a miss with its picture
        tmp = os.path.join(self.root, ".new.mp4")
        shutil.copyfile(h.video("vp9.webm"), tmp)
        os.rename(tmp, path)
        replaced = local_generate(srv.addr, "a.mp4", **opts)
        self.expect(srv, c5, hit=0, miss=1, stores=1, decodes=1)
        self.assertNotEqual(bytes(replaced[0].data), bytes(first[0].data))
        self.assertEqual(len(entries(self.cache)), 4)

    def test_probe_is_cached(self):
        srv = self.start()
        c0 = self.counts(srv)
        p1 = local_probe(srv.addr, "a.mp4")
        c1 = self.expect(srv, c0, hit=0, miss=1, stores=1, decodes=1)
        p2 = local_probe(srv.addr, "a.mp4")
        self.expect(srv, c1, hit=1, miss=0, decodes=0)
        self.assertEqual(p1.SerializeToString(), p2.SerializeToString())
        self.assertTrue(p2.json)

    def test_upload_same_bytes_other_name(self):
        srv = self.start()
        c0 = self.counts(srv)
        a = h.generate(srv.addr, path=h.video("h264.mp4"), file_name="first.mp4", times=["25%"])
        c1 = self.expect(srv, c0, hit=0, miss=1, stores=1, decodes=1)
        b = h.generate(srv.addr, path=h.video("h264.mp4"), file_name="renamed.bin",
                       times=["25%"], chunk=10000)  # other message boundaries, same bytes
        c2 = self.expect(srv, c1, hit=1, miss=0, decodes=0)
        self.assertEqual(summary(a), summary(b))
        # one byte more: other content, a miss
        data = h.read_bytes(h.video("h264.mp4")) + b"\0"
        h.generate(srv.addr, data=data, file_name="first.mp4", times=["25%"])
        c3 = self.expect(srv, c2, hit=0, miss=1, decodes=1)
        # and the same content in local mode is keyed by the file, not its bytes
        local_generate(srv.addr, "a.mp4", times=[h.time_point("25%")])
        self.expect(srv, c3, hit=0, miss=1, decodes=1)

    def test_storyboard_names_its_sprite(self):
        srv = self.start()
        sb = {"storyboard": True, "count": 4}
        a = h.generate(srv.addr, path=h.video("h264.mp4"), file_name="clip.mp4", engine=sb)
        c1 = self.counts(srv)
        b = h.generate(srv.addr, path=h.video("h264.mp4"), file_name="clip.mkv", engine=sb)
        c2 = self.expect(srv, c1, hit=1, miss=0, decodes=0)  # same stem: same VTT
        self.assertEqual(summary(a), summary(b))
        other = h.generate(srv.addr, path=h.video("h264.mp4"), file_name="other.mp4", engine=sb)
        self.expect(srv, c2, hit=0, miss=1, decodes=1)
        vtt = [bytes(t.data) for t in other if t.header.kind == 2]
        self.assertEqual(len(vtt), 1)
        self.assertIn(b"other.sprite.png", vtt[0])
        self.assertNotIn(b"clip", vtt[0])

    def test_damaged_entries_are_misses(self):
        srv = self.start()
        opts = dict(times=[h.time_point("30%")], max_width=160)
        good = summary(local_generate(srv.addr, "a.mp4", **opts))
        [entry] = entries(self.cache)
        size = os.path.getsize(entry)

        def flip(at):
            with open(entry, "r+b") as f:
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ 0x10]))

        for damage in (lambda: flip(size // 3),                 # inside the image
                       lambda: flip(size - 100),                # in the records / trailer
                       lambda: os.truncate(entry, size - 1),    # cut short
                       lambda: os.truncate(entry, size // 2)):
            damage()
            c0 = self.counts(srv)
            got = summary(local_generate(srv.addr, "a.mp4", **opts))
            self.expect(srv, c0, hit=0, miss=1, damaged=1, stores=1, decodes=1)
            self.assertEqual(got, good)  # the right picture, decoded again
            self.assertEqual(os.path.getsize(entry), size)  # and the entry rewritten
            c1 = self.counts(srv)
            self.assertEqual(summary(local_generate(srv.addr, "a.mp4", **opts)), good)
            self.expect(srv, c1, hit=1, decodes=0)
        self.assertIn("is damaged", srv.log_text())

    def test_size_cap_evicts_lru(self):
        # entries of ~90 KB (a 640-wide PNG of noise) under a 1 MiB cap
        noise = os.path.join(self.root, "noise.mp4")
        ffmpeg("-f", "lavfi", "-i", "nullsrc=s=640x360:d=4:r=10,geq=random(1)*255:128:128",
               "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", noise)
        cap = 1 << 20
        srv = self.start("--cache-size", "1M")

        def gen(i):
            return local_generate(srv.addr, "noise.mp4", times=[h.time_point(0.1 + i * 0.3)],
                                  max_width=640)

        gen(0)
        one = os.path.getsize(entries(self.cache)[0])
        self.assertGreater(one, 40000, "entries too small to test the cap in a few calls")
        fits = cap // one
        gen(1)
        for i in range(2, fits + 3):
            gen(0)  # 0 is used all the time: it must survive
            gen(i)
        c = self.counts(srv)
        self.assertGreater(c["evictions"], 0)
        total = sum(os.path.getsize(p) for p in entries(self.cache))
        self.assertLessEqual(total, cap)
        self.assertEqual(c["bytes"], total)
        self.assertEqual(c["entries"], len(entries(self.cache)))
        # the least recently used (1) is gone, the busy one (0) and the newest are there
        c0 = self.counts(srv)
        gen(0)
        gen(fits + 2)
        c1 = self.expect(srv, c0, hit=2, miss=0)
        gen(1)
        self.expect(srv, c1, hit=0, miss=1)

    def test_entries_survive_a_restart(self):
        srv = self.start()
        opts = dict(times=[h.time_point("40%")], max_width=120)
        first = summary(local_generate(srv.addr, "a.mp4", **opts))
        srv.stop(check=True)
        srv2 = self.start()
        c0 = self.counts(srv2)
        self.assertEqual(c0["entries"], 1)
        again = summary(local_generate(srv2.addr, "a.mp4", **opts))
        self.expect(srv2, c0, hit=1, miss=0, decodes=0)
        self.assertEqual(again, first)

    def test_latency_1080p(self):
        shutil.copyfile(h.video("h264_1080p.mp4"), os.path.join(self.root, "hd.mp4"))
        srv = self.start()
        n = int(os.environ.get("TN_CACHE_BENCH_N", "15"))
        ch = h.channel(srv.addr)  # one connection: the calls, not the handshakes, are timed
        self.addCleanup(ch.close)
        local_generate(srv.addr, "hd.mp4", times=[h.time_point(0.5)], channel=ch)  # warm up
        miss, hit = [], []
        for i in range(n):
            t = h.time_point(1 + i * 0.2)  # a new time: a miss, then the same: a hit
            t0 = time.perf_counter()
            a = local_generate(srv.addr, "hd.mp4", times=[t], channel=ch)
            miss.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = local_generate(srv.addr, "hd.mp4", times=[t], channel=ch)
            hit.append(time.perf_counter() - t0)
            self.assertEqual(summary(a), summary(b))
        c = self.counts(srv)
        self.assertEqual(c["hit"], n)
        m, k = statistics.median(miss), statistics.median(hit)
        # the front's own time per call (access log, from accepting the call to its
        # end), in call order: the warm-up, then miss, hit, miss, hit...
        front = [float(x) for x in re.findall(r'file="hd.mp4" .* ms=([0-9.]+) status=OK',
                                              srv.log_text())]
        self.assertEqual(len(front), 1 + 2 * n)
        fm, fk = statistics.median(front[1::2]), statistics.median(front[2::2])
        h.log("1080p local, 320-wide PNG, median of %d: grpcio client: miss %.1f ms, hit %.1f ms"
              " (%.0fx); front: miss %.1f ms, hit %.2f ms" % (n, m * 1e3, k * 1e3, m / k, fm, fk))
        self.assertLess(k, m)
        self.assertLess(fk * 10, fm)


if __name__ == "__main__":
    h.main()
