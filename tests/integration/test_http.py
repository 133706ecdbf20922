#!/usr/bin/env python3
"""The HTTP gateway (--http-listen), through the real server with curl and Python's
http.client:

* every route: /v1/thumbnail (png, jpg, webp: the same bytes as a gRPC Generate of the
  same options), /v1/storyboard (.vtt whose cues point at the sprite route, and the
  sprite), /v1/probe (the ProbeResponse JSON), /v1/list and /v1/animated (the front's
  answer, or 501 while the front cannot do it yet), the gallery at /, /healthz;
* every error status: 400, 403, 404, 405, 415, 429, 503, 504 with the gRPC message;
* ETag / Last-Modified / If-None-Match / If-Modified-Since -> 304, HEAD, Cache-Control;
* HTTP/1.1 keep-alive: several requests on one connection;
* the front labels the gateway's calls protocol="http" (metrics, access log), and a
  gRPC client that forges the gateway's header is not labelled;
* isolation: a killed gateway is respawned, gRPC serves meanwhile; a front that is
  down is a 503 that the gateway survives; a reload (SIGHUP) fails no request and
  replaces the gateway (a rotated token is refused over HTTP afterwards);
* hostile clients: header and URI caps (431, 414), 64 connections per address, answers
  held for slow readers capped by --max-result-bytes (429);
* --cache-dir: hits served by the gateway itself (the front's bytes, no call), a
  replaced file or a damaged entry never served;
* deploy/nginx/http-gateway.conf: proxy_cache hits and revalidation without a decode;
* signed URLs (good, missing, bad, tampered; the README's openssl one-liner), the
  token (401 without it, /healthz exempt) and TLS.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse

import grpc

import harness as h
from harness import pb, pb_grpc

ROUTE_RE = re.compile(r"^(/v1/storyboard/[^?#]+\.jpg)(\?[^#]*)?#xywh=(\d+),(\d+),(\d+),(\d+)$")


def make_media(top):
    root = os.path.join(top, "media")
    os.makedirs(os.path.join(root, "sub"))
    shutil.copyfile(h.video("h264.mp4"), os.path.join(root, "a.mp4"))
    shutil.copyfile(h.video("hevc.mkv"), os.path.join(root, "sub", "my clip.mkv"))
    shutil.copyfile(h.video("random.bin"), os.path.join(root, "random.mp4"))
    os.makedirs(os.path.join(top, "outside"))
    shutil.copyfile(h.video("h264.mp4"), os.path.join(top, "outside", "secret.mp4"))
    os.symlink("../outside/secret.mp4", os.path.join(root, "escape.mp4"))
    return root


class HttpServer(h.Server):
    """A server with --media-root and --http-listen on a free port."""

    def __init__(self, root, extra=(), scheme="http", **kw):
        self.http_port = h.free_port()
        self.scheme = scheme
        super().__init__(extra=["--media-root", root,
                                "--http-listen", "127.0.0.1:%d" % self.http_port] + list(extra),
                         **kw)
        h.wait_for(lambda: "serving HTTP" in self.log_text(), 15, what="the HTTP gateway")

    def url(self, path):
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.http_port, path)

    def http_pid(self):
        m = re.findall(r" http (\d+): serving HTTP", self.log_text())
        return int(m[-1]) if m else None


def curl(url, *args):
    """(status, {header: value} lower-cased, body bytes) of one curl request."""
    with tempfile.NamedTemporaryFile() as hdr, tempfile.NamedTemporaryFile() as body:
        cmd = ["curl", "-sS", "--path-as-is", "-D", hdr.name, "-o", body.name, "--max-time", "60"]
        subprocess.run(cmd + list(args) + [url], check=True, stdin=subprocess.DEVNULL)
        with open(hdr.name, "rb") as f:
            lines = f.read().decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        with open(body.name, "rb") as f:
            return status, headers, f.read()


def grpc_generate(addr, rel, **opts):
    def reqs():
        yield pb.GenerateRequest(options=pb.Options(file_name=os.path.basename(rel),
                                                    local_path=rel, **opts))
    with h.channel(addr) as ch:
        return h.collect(pb_grpc.ThumbnailerStub(ch).Generate(reqs(), timeout=30))


def grpc_probe(addr, rel):
    def reqs():
        yield pb.GenerateRequest(options=pb.Options(file_name=os.path.basename(rel),
                                                    local_path=rel))
    with h.channel(addr) as ch:
        return pb_grpc.ThumbnailerStub(ch).Probe(reqs(), timeout=30)


def image_size(data):
    """(width, height) of a PNG, baseline JPEG or VP8/VP8L WebP."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i < len(data):
            marker, seg = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2):
                return (int.from_bytes(data[i + 7:i + 9], "big"),
                        int.from_bytes(data[i + 5:i + 7], "big"))
            i += 2 + seg
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        if data[12:16] == b"VP8 ":
            return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                    int.from_bytes(data[28:30], "little") & 0x3FFF)
        if data[12:16] == b"VP8X":
            return (int.from_bytes(data[24:27], "little") + 1,
                    int.from_bytes(data[27:30], "little") + 1)
    raise AssertionError("not an image: %r" % data[:16])


class HttpRoutes(h.ServerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="tn-http-")
        cls.root = make_media(cls.top)
        cls.server = HttpServer(cls.root, metrics=True)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, True)

    def get(self, path, *args):
        return curl(self.server.url(path), *args)

    # ---- routes ------------------------------------------------------------
    def test_thumbnail_formats_are_the_grpc_bytes(self):
        for ext, fmt, mime in (("png", pb.IMAGE_FORMAT_PNG, "image/png"),
                               ("jpg", pb.IMAGE_FORMAT_JPEG, "image/jpeg"),
                               ("webp", pb.IMAGE_FORMAT_WEBP, "image/webp")):
            with self.subTest(ext=ext):
                st, hd, body = self.get("/v1/thumbnail/a.mp4.%s?time=1.5&width=200" % ext)
                self.assertEqual(st, 200, body)
                self.assertEqual(hd["content-type"], mime)
                self.assertEqual(int(hd["content-length"]), len(body))
                ref = grpc_generate(self.server.addr, "a.mp4", format=fmt, max_width=200,
                                    times=[pb.TimePoint(seconds=1.5)])
                self.assertEqual(bytes(ref[0].data), body, "HTTP and gRPC differ")
                self.assertEqual(image_size(body)[0], 200)
                self.assertAlmostEqual(float(hd["x-thumbnail-time"]), ref[0].header.actual_time,
                                       places=3)

    def test_thumbnail_parameters(self):
        st, hd, body = self.get("/v1/thumbnail/a.mp4.png?time=50%25&width=120&height=120"
                                "&fit=pad&mode=keyframe")
        self.assertEqual(st, 200, body)
        self.assertEqual(image_size(body), (120, 120))
        st, hd, body = self.get("/v1/thumbnail/a.mp4.jpg?time=75%25&quality=20&width=320")
        self.assertEqual(st, 200, body)
        ref = grpc_generate(self.server.addr, "a.mp4", format=pb.IMAGE_FORMAT_JPEG, quality=20,
                            max_width=320, times=[pb.TimePoint(percent=75)])
        self.assertEqual(bytes(ref[0].data), body)
        # a path with a space, in a folder
        st, hd, body = self.get("/v1/thumbnail/sub/my%20clip.mkv.webp?width=64")
        self.assertEqual(st, 200, body)
        self.assertEqual(image_size(body)[0], 64)

    def test_storyboard_vtt_points_at_the_sprite_route(self):
        st, hd, vtt = self.get("/v1/storyboard/a.mp4.vtt?count=4&width=80&columns=2")
        self.assertEqual(st, 200, vtt)
        self.assertTrue(hd["content-type"].startswith("text/vtt"))
        text = vtt.decode()
        self.assertTrue(text.startswith("WEBVTT"))
        cues = [ROUTE_RE.match(line) for line in text.splitlines() if "#xywh=" in line]
        self.assertEqual(len(cues), 4, text)
        self.assertTrue(all(cues), text)
        sprite_path = cues[0].group(1) + (cues[0].group(2) or "")
        self.assertEqual(sprite_path, "/v1/storyboard/a.mp4.jpg?columns=2&count=4&width=80")
        st, hd, sprite = self.get(sprite_path)
        self.assertEqual(st, 200, sprite)
        self.assertEqual(hd["content-type"], "image/jpeg")
        w, hgt = image_size(sprite)
        for c in cues:
            x, y, cw, ch = (int(c.group(i)) for i in range(3, 7))
            self.assertEqual(cw, 80)
            self.assertLessEqual(x + cw, w)
            self.assertLessEqual(y + ch, hgt)
        # webp sprite on request
        st, _, vtt = self.get("/v1/storyboard/a.mp4.vtt?count=2&format=webp")
        self.assertEqual(st, 200, vtt)
        self.assertIn("/v1/storyboard/a.mp4.webp?count=2#xywh=", vtt.decode())
        st, hd, sprite = self.get("/v1/storyboard/a.mp4.webp?count=2")
        self.assertEqual((st, hd["content-type"]), (200, "image/webp"))

    def test_probe_is_the_probe_json(self):
        st, hd, body = self.get("/v1/probe/sub/my%20clip.mkv")
        self.assertEqual(st, 200, body)
        self.assertEqual(hd["content-type"], "application/json")
        got = json.loads(body)
        ref = json.loads(grpc_probe(self.server.addr, "sub/my clip.mkv").json)
        self.assertEqual(got, ref)
        self.assertEqual(got["video"][0]["codec"], "hevc")

    def test_list_answers_as_the_front_can(self):
        # List is the front's (the gateway never walks folders itself): whatever the
        # front says over gRPC, HTTP says too.
        try:
            with h.channel(self.server.addr) as ch:
                ref = pb_grpc.ThumbnailerStub(ch).List(pb.ListRequest(dir="sub"), timeout=10)
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.UNIMPLEMENTED, e.details())
            ref = None
        st, hd, body = self.get("/v1/list/sub")
        if ref is None:
            self.assertEqual(st, 501, body)
            self.assertIn(b"no List method", body)
            return
        self.assertEqual(st, 200, body)
        got = json.loads(body)
        self.assertEqual([e["path"] for e in got["entries"]], [e.path for e in ref.entries])

    def test_animated_answers_as_the_engine_can(self):
        st, hd, body = self.get("/v1/animated/a.mp4.webp?start=0.5&end=1.5&fps=5&width=96")
        if st == 501:
            self.assertIn(b"animated previews", body)
            return
        self.assertEqual(st, 200, body)
        self.assertEqual(hd["content-type"], "image/webp")
        self.assertEqual(body[:4], b"RIFF")
        self.assertIn(b"ANIM", body[:64])

    def test_gallery_and_health(self):
        st, hd, body = self.get("/")
        if st == 501:  # the gallery's listing is a List call (test_gallery checks the page)
            self.assertIn(b"no List method", body)
        else:
            self.assertEqual(st, 200, body)
            self.assertTrue(hd["content-type"].startswith("text/html"))
            self.assertIn(b'<ul id="grid"', body)
        self.assertEqual(self.get("/static/nope.js")[0], 404)
        st, _, body = self.get("/healthz")
        self.assertEqual((st, body), (200, b"SERVING\n"))

    # ---- errors ------------------------------------------------------------
    def test_error_statuses_carry_the_grpc_message(self):
        cases = [
            ("/v1/thumbnail/missing.mp4.png", 404, "no such file"),
            ("/v1/thumbnail/../outside/secret.mp4.png", 403, "contains \"..\""),
            ("/v1/thumbnail/escape.mp4.png", 403, "outside"),
            ("/v1/thumbnail/random.mp4.png", 415, "not a video"),
            ("/v1/thumbnail/a.mp4.png?width=0", 400, "width=0"),
            ("/v1/thumbnail/a.mp4.png?widht=10", 400, "unknown parameter 'widht'"),
            ("/v1/thumbnail/a.mp4.png?width=10&width=20", 400, "given twice"),
            ("/v1/thumbnail/a.mp4.png?time=120%25", 400, "percentage"),
            ("/v1/thumbnail/a.mp4.png?fit=fill", 400, "FILL"),  # the engine's own check
            ("/v1/thumbnail/a.mp4.gif", 404, "must end in"),
            ("/v1/nothing/a.mp4", 404, "no such route"),
            ("/v1/storyboard/a.mp4.jpg?format=webp", 400, "unknown parameter 'format'"),
        ]
        for path, status, text in cases:
            with self.subTest(path=path):
                st, hd, body = self.get(path)
                self.assertEqual(st, status, body)
                self.assertIn(text.lower(), body.decode().lower())
                self.assertEqual(hd.get("cache-control"), "no-store")
        # the same message as gRPC's for the same request
        with self.assertRaises(grpc.RpcError) as cm:
            grpc_generate(self.server.addr, "missing.mp4")
        self.assertEqual(self.get("/v1/thumbnail/missing.mp4.png")[2].decode().strip(),
                         cm.exception.details())
        st, hd, _ = self.get("/v1/thumbnail/a.mp4.png", "-X", "POST")
        self.assertEqual(st, 405)
        self.assertEqual(hd["allow"], "GET, HEAD")

    # ---- caching -----------------------------------------------------------
    def test_etag_304_and_head(self):
        path = "/v1/thumbnail/a.mp4.png?width=100&time=1"
        st, hd, body = self.get(path)
        self.assertEqual(st, 200)
        etag, lm = hd["etag"], hd["last-modified"]
        self.assertRegex(etag, r'^"[0-9a-f]{32}"$')
        self.assertEqual(hd["cache-control"], "public, max-age=3600")
        mtime = os.stat(os.path.join(self.root, "a.mp4")).st_mtime
        self.assertEqual(lm, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime)))
        st, hd2, body2 = self.get(path, "-H", "If-None-Match: " + etag)
        self.assertEqual((st, body2), (304, b""))
        self.assertEqual(hd2["etag"], etag)
        st, _, _ = self.get(path, "-H", 'If-None-Match: "other", ' + etag)
        self.assertEqual(st, 304)
        st, _, _ = self.get(path, "-H", 'If-None-Match: "other"')
        self.assertEqual(st, 200)
        st, _, _ = self.get(path, "-H", "If-Modified-Since: " + lm)
        self.assertEqual(st, 304)
        st, _, _ = self.get(path, "-H", "If-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT")
        self.assertEqual(st, 200)
        # parameters in another order: the same representation, the same ETag
        self.assertEqual(self.get("/v1/thumbnail/a.mp4.png?time=1&width=100")[1]["etag"], etag)
        self.assertNotEqual(self.get("/v1/thumbnail/a.mp4.png?time=1&width=101")[1]["etag"], etag)
        # HEAD: the same headers, no body
        c = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
        c.request("HEAD", path)
        r = c.getresponse()
        self.assertEqual((r.status, r.getheader("ETag"), int(r.getheader("Content-Length"))),
                         (200, etag, len(body)))
        self.assertEqual(r.read(), b"")
        c.request("GET", "/v1/probe/a.mp4")  # the connection is still in step
        self.assertEqual(c.getresponse().status, 200)
        c.close()
        # the file changes: a new ETag, and the old one no longer matches
        p = os.path.join(self.root, "a.mp4")
        os.utime(p, (mtime + 10, mtime + 10))
        try:
            st, hd3, _ = self.get(path, "-H", "If-None-Match: " + etag)
            self.assertEqual(st, 200)
            self.assertNotEqual(hd3["etag"], etag)
        finally:
            os.utime(p, (mtime, mtime))

    def test_keep_alive(self):
        c = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
        c.connect()
        sock = c.sock
        for path in ("/v1/thumbnail/a.mp4.png?width=32", "/v1/probe/a.mp4",
                     "/v1/thumbnail/missing.mp4.png", "/v1/thumbnail/a.mp4.jpg?width=32"):
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            self.assertIn(r.status, (200, 404))
            self.assertIsNot(r.getheader("Connection"), "close")
            self.assertIs(c.sock, sock, "the connection was not kept alive")
        c.close()

    # ---- the front's view --------------------------------------------------
    def test_front_labels_gateway_calls(self):
        def http_ok():
            _, _, text = self.server.scrape()
            m = re.search(r'grpc_server_handled_total\{[^}]*grpc_method="Generate",'
                          r'protocol="http",grpc_code="OK"\} (\d+)', text)
            return int(m.group(1)) if m else 0

        def grpc_ok():
            _, _, text = self.server.scrape()
            m = re.search(r'grpc_server_handled_total\{[^}]*grpc_method="Generate",'
                          r'grpc_code="OK"\} (\d+)', text)
            return int(m.group(1)) if m else 0
        before = http_ok()
        self.assertEqual(self.get("/v1/thumbnail/a.mp4.png?width=48&time=2")[0], 200)
        h.wait_for(lambda: http_ok() == before + 1, 10, what="protocol=http counted")
        h.wait_for(lambda: re.search(r"Generate peer=http:ipv4:127\.0\.0\.1:\d+ file=\"a\.mp4\"",
                                     self.server.log_text()), 10, what="access line")
        # a gRPC client that sends the header without the secret is an ordinary
        # call: counted without the label (a slow call of an earlier test may
        # still land in the labelled series meanwhile, so that one is not compared)
        plain = grpc_ok()
        grpc_generate_md(self.server.addr, [("tn-gateway", "guess"),
                                            ("tn-gateway-peer", "ipv4:6.6.6.6:1")])
        h.wait_for(lambda: grpc_ok() == plain + 1, 10, what="the call counted as gRPC")
        self.assertNotIn("6.6.6.6", self.server.log_text())

    def test_hostile_client_limits(self):
        # request line and headers are capped (libmicrohttpd answers, nothing reaches
        # the front); connections per client address are capped at 64
        big = "a" * 40000
        self.assertEqual(self.get("/v1/probe/a.mp4", "-H", "X-Big: " + big)[0], 431)
        self.assertEqual(self.get("/v1/probe/a.mp4?x=" + big)[0], 414)
        import socket
        socks = [socket.create_connection(("127.0.0.1", self.server.http_port))
                 for _ in range(70)]
        try:
            time.sleep(0.3)
            for s in socks:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answered = 0
            for s in socks:
                s.settimeout(5)
                try:
                    answered += s.recv(64).startswith(b"HTTP/1.1 200")
                except OSError:
                    pass
            self.assertEqual(answered, 64)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(self.get("/healthz")[0], 200)

    def test_gateway_crash_is_respawned_grpc_unaffected(self):
        pid = self.server.http_pid()
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(h.health_check(self.server.addr), "SERVING")
        h.wait_for(lambda: self.server.http_pid() not in (None, pid), 15,
                   what="a new gateway")
        h.wait_for(lambda: self.get("/healthz")[0] == 200, 15, what="HTTP back")
        self.assertEqual(self.get("/v1/thumbnail/a.mp4.png?width=40")[0], 200)

    def test_reload_keeps_http_serving(self):
        # SIGHUP: a new front publishes the private socket; the gateway's calls move
        # to it without a failed request (the old front's GOAWAY is retried).
        n = len(re.findall(r" front \d+: serving", self.server.log_text()))
        gateway = self.server.http_pid()
        results = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                results.append(self.get("/v1/thumbnail/a.mp4.png?width=%d" %
                                         (40 + len(results) % 50))[0])
        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.3)
            os.kill(self.server.pid, signal.SIGHUP)
            h.wait_for(lambda: "reload: generation" in self.server.log_text() and
                       len(re.findall(r" front \d+: serving", self.server.log_text())) > n,
                       30, what="the new front")
            time.sleep(1.0)
        finally:
            stop.set()
            t.join()
        self.assertGreater(len(results), 5)
        self.assertEqual(set(results), {200}, results)
        # the gateway was replaced too, to take the new configuration
        h.wait_for(lambda: self.server.http_pid() not in (None, gateway), 15,
                   what="a new gateway after the reload")
        # the socket dir stays private
        sock = re.findall(r"listening on (\S+) for the HTTP gateway", self.server.log_text())[-1]
        self.assertEqual(os.stat(os.path.dirname(sock)).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)


def grpc_generate_md(addr, md):
    def reqs():
        yield pb.GenerateRequest(options=pb.Options(file_name="a.mp4", local_path="a.mp4",
                                                    max_width=40))
    with h.channel(addr) as ch:
        return h.collect(pb_grpc.ThumbnailerStub(ch).Generate(reqs(), timeout=30, metadata=md))


class HttpLimits(h.ServerTestCase):
    """429, 503 and 504 come from the front's own limits and state."""

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="tn-http-")
        cls.root = make_media(cls.top)
        shutil.copyfile(h.video("h264_1080p.mp4"), os.path.join(cls.root, "big.mp4"))
        cls.server = HttpServer(cls.root, workers=1,
                                extra=["--max-concurrent-calls", "1", "--job-timeout", "20ms"])

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, True)

    def test_429_when_the_front_is_busy(self):
        # One gRPC upload held open takes the only call slot.
        release = threading.Event()

        def reqs():
            yield pb.GenerateRequest(options=pb.Options(file_name="x.mp4", size=1000))
            release.wait(30)

        def hold():
            try:
                with h.channel(self.server.addr) as ch:
                    list(pb_grpc.ThumbnailerStub(ch).Generate(reqs(), timeout=30))
            except grpc.RpcError:
                pass
        t = threading.Thread(target=hold)
        t.start()
        try:
            h.wait_for(lambda: b"1 calls in progress" in
                       curl(self.server.url("/v1/thumbnail/a.mp4.png?width=30"))[2], 10,
                       what="a busy front")
            st, hd, body = curl(self.server.url("/v1/thumbnail/a.mp4.png"))
            self.assertEqual(st, 429, body)
            self.assertIn(b"--max-concurrent-calls", body)
        finally:
            release.set()
            t.join()

    def test_504_past_the_job_deadline(self):
        st, _, body = curl(self.server.url("/v1/storyboard/big.mp4.jpg?count=200"))
        self.assertEqual(st, 504, body)
        self.assertIn(b"deadline exceeded", body)

    def test_503_while_the_front_is_down(self):
        master = self.server.pid
        os.kill(master, signal.SIGSTOP)  # no respawn meanwhile
        try:
            front = [int(p) for p in re.findall(r" front (\d+): serving", self.server.log_text())][-1]
            os.kill(front, signal.SIGKILL)
            h.wait_for(lambda: not h.pid_alive(front) or
                       (h.proc_stat(front) or {}).get("state") == "Z", 10, what="front dead")
            st, _, body = curl(self.server.url("/v1/thumbnail/a.mp4.png"))
            self.assertEqual(st, 503, body)
            self.assertEqual(curl(self.server.url("/healthz"))[0], 503)
        finally:
            os.kill(master, signal.SIGCONT)
        h.wait_for(lambda: curl(self.server.url("/v1/thumbnail/a.mp4.png?width=32"))[0] == 200,
                   30, what="HTTP back with the new front")


class HttpHeldAnswers(h.ServerTestCase):
    """Answers that slow clients have not read count against --max-result-bytes in the
    gateway: while one 5 MB sprite waits for a client that does not read, a new answer
    gets 429; once that client is gone, answers flow again."""

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="tn-http-")
        cls.root = make_media(cls.top)
        cls.server = HttpServer(cls.root, extra=["--max-result-bytes", "1",
                                                 "--max-pixels", "100000000"])

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, True)

    def test_slow_reader_holds_the_cap(self):
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.server.http_port))
        try:
            s.sendall(b"GET /v1/storyboard/a.mp4.jpg?count=400&width=640&columns=20 HTTP/1.1\r\n"
                      b"Host: x\r\n\r\n")
            s.settimeout(60)
            head = s.recv(200)  # the headers, and a little of the 5 MB body
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            st, _, body = curl(self.server.url("/v1/thumbnail/a.mp4.png?width=50"))
            self.assertEqual(st, 429, body)
            self.assertIn(b"--max-result-bytes", body)
        finally:
            s.close()
        h.wait_for(lambda: curl(self.server.url("/v1/thumbnail/a.mp4.png?width=51"))[0] == 200,
                   15, what="answers after the slow client left")


class HttpCache(h.ServerTestCase):
    """With --cache-dir the gateway serves the front's stored results itself: the same
    bytes, no call to the front, no decode; a changed file or a damaged entry is not
    served from the cache."""

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="tn-http-")
        cls.root = make_media(cls.top)
        cls.cache = os.path.join(cls.top, "cache")
        cls.server = HttpServer(cls.root, metrics=True, extra=["--cache-dir", cls.cache])

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, True)

    def front_calls(self):
        """The front's Generate calls from the gateway for a.mp4 (this test's file: the
        other test's last access line may still be on its way)."""
        return len(re.findall(r'Generate peer=http:\S+ file="a\.mp4"', self.server.log_text()))

    def test_hits_are_served_by_the_gateway(self):
        path = "/v1/thumbnail/a.mp4.jpg?time=2&width=144"
        c0 = self.front_calls()
        st, hd, first = curl(self.server.url(path))
        self.assertEqual(st, 200)
        self.assertNotIn("x-cache", hd)
        h.wait_for(lambda: self.front_calls() >= c0 + 1, 10, what="the front's access line")
        calls = self.front_calls()
        for _ in range(3):
            st, hd2, again = curl(self.server.url(path))
            self.assertEqual((st, hd2.get("x-cache"), again), (200, "HIT", first))
            self.assertEqual(hd2["etag"], hd["etag"])
            self.assertEqual(hd2["content-type"], "image/jpeg")
        time.sleep(0.3)
        self.assertEqual(self.front_calls(), calls, "a hit reached the front")
        text = self.server.scrape()[2]
        self.assertRegex(text, r'thumbnail_cache_lookups_total\{result="hit"\} [3-9]')
        # storyboards: the VTT from the cache is rewritten as the front's was
        st, _, vtt = curl(self.server.url("/v1/storyboard/a.mp4.vtt?count=3"))
        st2, hd3, vtt2 = curl(self.server.url("/v1/storyboard/a.mp4.vtt?count=3"))
        self.assertEqual((st, st2, hd3.get("x-cache"), vtt2), (200, 200, "HIT", vtt))
        self.assertIn(b"/v1/storyboard/a.mp4.jpg?count=3#xywh=", vtt)
        # animated previews: a hit too, and another span is another entry
        anim = "/v1/animated/a.mp4.webp?start=0.5&end=1.5&fps=5&width=96"
        st, hd, p1 = curl(self.server.url(anim))
        self.assertEqual((st, hd.get("x-cache")), (200, None))
        st, hd, p2 = curl(self.server.url(anim))
        self.assertEqual((st, hd.get("x-cache"), p2), (200, "HIT", p1))
        st, hd, p3 = curl(self.server.url(anim.replace("end=1.5", "end=2")))
        self.assertEqual((st, hd.get("x-cache")), (200, None))
        self.assertNotEqual(p3, p1)
        # the front saw the misses only: the storyboard, the two spans
        h.wait_for(lambda: self.front_calls() >= calls + 3, 10, what="the misses' access lines")
        time.sleep(0.3)
        self.assertEqual(self.front_calls(), calls + 3, "a hit reached the front")

    def test_changed_file_and_damaged_entry_are_not_served(self):
        src = os.path.join(self.root, "b.mp4")
        shutil.copyfile(h.video("h264.mp4"), src)
        path = "/v1/thumbnail/b.mp4.png?time=1&width=100"
        st, _, first = curl(self.server.url(path))
        self.assertEqual(curl(self.server.url(path))[1].get("x-cache"), "HIT")
        # another video under the same name: a new identity, a new picture
        shutil.copyfile(h.video("vp9.webm"), src)
        st, hd, other = curl(self.server.url(path))
        self.assertEqual(st, 200)
        self.assertNotIn("x-cache", hd)
        self.assertNotEqual(other, first)
        # flip a byte in every entry: never served, the front answers (and rewrites it)
        for p in [p for p in glob_entries(self.cache)]:
            with open(p, "r+b") as f:
                f.seek(10)
                b = f.read(1)
                f.seek(10)
                f.write(bytes([b[0] ^ 0xFF]))
        st, hd, again = curl(self.server.url(path))
        self.assertEqual((st, again), (200, other))
        self.assertNotIn("x-cache", hd)


def glob_entries(cache_dir):
    import glob
    return [p for p in glob.glob(os.path.join(cache_dir, "??", "*"))
            if not os.path.basename(p).startswith(".")]


class HttpBehindNginx(h.ServerTestCase):
    """The shipped deploy/nginx/http-gateway.conf (ports and cache path rewritten):
    a repeated request is a nginx cache HIT that never reaches the gateway, and an
    expired entry is revalidated with If-None-Match (a 304 from the gateway)."""

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="tn-http-")
        cls.root = make_media(cls.top)
        cls.server = HttpServer(cls.root)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, True)

    def setUp(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            self.skipTest("nginx is not installed")
        t = self.tmp = tempfile.mkdtemp(prefix="tn-nginx-")
        os.chmod(t, 0o755)
        self.addCleanup(shutil.rmtree, t, True)
        self.port = h.free_port()
        with open(os.path.join(h.SOURCE_DIR, "deploy", "nginx", "http-gateway.conf")) as f:
            site = f.read()
        for old, new in (("/var/cache/nginx/thumbnail", t + "/cache"),
                         ("server 127.0.0.1:8080;", "server 127.0.0.1:%d;" % self.server.http_port),
                         ("listen 8081;", "listen 127.0.0.1:%d;" % self.port)):
            self.assertEqual(site.count(old), 1, old)
            site = site.replace(old, new)
        # a short max-age so that the revalidation can be seen
        site = site.replace("proxy_cache_revalidate on;",
                            "proxy_cache_revalidate on;\n        proxy_cache_valid 200 1s;\n"
                            "        proxy_ignore_headers Cache-Control;")
        with open(os.path.join(t, "site.conf"), "w") as f:
            f.write(site)
        conf = os.path.join(t, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""daemon off; worker_processes 1; pid {t}/nginx.pid;
error_log {t}/error.log info; events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {t}/cb; proxy_temp_path {t}/px;
fastcgi_temp_path {t}/fc; uwsgi_temp_path {t}/uw; scgi_temp_path {t}/sc;
include {t}/site.conf; }}
""".format(t=t))
        p = subprocess.Popen([nginx, "-p", t, "-c", conf], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        h._LIVE_GROUPS.add(p.pid)

        def stop():
            os.kill(p.pid, signal.SIGQUIT)
            p.wait(10)
            h._LIVE_GROUPS.discard(p.pid)
        self.addCleanup(stop)

        def up():
            try:
                return self.get("/healthz")[0] == 200
            except subprocess.CalledProcessError:  # not listening yet
                return False
        h.wait_for(up, 15, what="nginx up")

    def get(self, path, *args):
        return curl("http://127.0.0.1:%d%s" % (self.port, path), *args)

    def gateway_calls(self):
        return len(re.findall(r"Generate peer=http:", self.server.log_text()))

    def test_proxy_cache_hits_and_revalidates(self):
        path = "/v1/thumbnail/a.mp4.png?time=2&width=88"
        st, hd, body = self.get(path)
        self.assertEqual((st, hd["x-cache-status"]), (200, "MISS"))
        h.wait_for(lambda: self.gateway_calls() == 1, 10, what="one call")
        st, hd, again = self.get(path)
        self.assertEqual((st, hd["x-cache-status"], again), (200, "HIT", body))
        time.sleep(2.5)  # past proxy_cache_valid (1 s, whole seconds): If-None-Match
        st, hd, again = self.get(path)
        # proxy_cache_background_update: the stale copy now, revalidated behind it
        self.assertIn(hd["x-cache-status"], ("STALE", "UPDATING", "REVALIDATED"))
        self.assertEqual((st, again), (200, body))
        h.wait_for(lambda: self.get(path)[1]["x-cache-status"] == "HIT", 10,
                   what="the revalidated copy")
        time.sleep(0.3)
        self.assertEqual(self.gateway_calls(), 1, "the revalidation decoded again")


KEY = "0123456789abcdef-test-signing-key"
TOKEN = "http-test-token-42"


class HttpSignedAuthTls(h.ServerTestCase):
    @classmethod
    def setUpClass(cls):
        from certs import Pki
        cls.top = tempfile.mkdtemp(prefix="tn-http-")
        cls.root = make_media(cls.top)
        cls.pki = Pki(cls.top)
        cls.key = os.path.join(cls.top, "sign.key")
        with open(cls.key, "w") as f:
            f.write(KEY + "\n")
        tok = os.path.join(cls.top, "token")
        with open(tok, "w") as f:
            f.write(TOKEN + "\n")
        cls.server = HttpServer(
            cls.root, scheme="https",
            extra=["--url-signing-key", cls.key, "--auth-token-file", tok,
                   "--tls-cert", cls.pki.path("server.pem"),
                   "--tls-key", cls.pki.path("server.key")],
            credentials=grpc.ssl_channel_credentials(
                root_certificates=open(cls.pki.path("ca.pem"), "rb").read()))

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.top, True)

    def get(self, path, *args, token=TOKEN):
        extra = ["--cacert", self.pki.path("ca.pem")]
        if token:
            extra += ["-H", "Authorization: Bearer " + token]
        return curl(self.server.url(path), *(extra + list(args)))

    def sign(self, canonical):
        """The README's one-liner."""
        out = subprocess.run(["sh", "-c", "printf '%s' \"$1\" | openssl dgst -sha256 -hmac "
                              "\"$(cat \"$2\")\" | sed 's/.*= //'", "sh", canonical, self.key],
                             check=True, capture_output=True, text=True).stdout.strip()
        self.assertRegex(out, r"^[0-9a-f]{64}$")
        return out

    def test_signed_urls(self):
        canonical = "/v1/thumbnail/a.mp4.png?time=10%25&width=160"
        sig = self.sign(canonical)
        st, hd, body = self.get("/v1/thumbnail/a.mp4.png?width=160&time=10%25&sig=" + sig)
        self.assertEqual(st, 200, body)
        self.assertEqual(hd["cache-control"], "public, max-age=31536000, immutable")
        self.assertEqual(image_size(body)[0], 160)
        st, _, body = self.get("/v1/thumbnail/a.mp4.png?width=160&time=10%25")
        self.assertEqual(st, 403)
        self.assertIn(b"needs signed URLs", body)
        st, _, body = self.get("/v1/thumbnail/a.mp4.png?width=161&time=10%25&sig=" + sig)
        self.assertEqual(st, 403)
        self.assertIn(b"not valid", body)
        st, _, _ = self.get("/v1/thumbnail/a.mp4.png?width=160&time=10%25&sig=" + "0" * 64)
        self.assertEqual(st, 403)
        # a path that needs encoding: the canonical form encodes it
        sig = self.sign("/v1/probe/sub/my%20clip.mkv")
        self.assertEqual(self.get("/v1/probe/sub/my%20clip.mkv?sig=" + sig)[0], 200)

    def test_signed_storyboard_sprite_urls_are_signed(self):
        sig = self.sign("/v1/storyboard/a.mp4.vtt?count=2")
        st, _, vtt = self.get("/v1/storyboard/a.mp4.vtt?count=2&sig=" + sig)
        self.assertEqual(st, 200, vtt)
        url = [line for line in vtt.decode().splitlines() if "#xywh=" in line][0].split("#")[0]
        self.assertRegex(url, r"^/v1/storyboard/a\.mp4\.jpg\?count=2&sig=[0-9a-f]{64}$")
        st, hd, _ = self.get(url)
        self.assertEqual((st, hd["content-type"]), (200, "image/jpeg"))

    def test_token(self):
        sig = self.sign("/v1/probe/a.mp4")
        st, hd, body = self.get("/v1/probe/a.mp4?sig=" + sig, token=None)
        self.assertEqual(st, 401, body)
        self.assertEqual(hd["www-authenticate"], "Bearer")
        st, _, body = self.get("/v1/probe/a.mp4?sig=" + sig, token="wrong")
        self.assertEqual(st, 401)
        self.assertIn(b"not accepted", body)
        self.assertEqual(self.get("/v1/probe/a.mp4?sig=" + sig)[0], 200)
        # health needs neither token nor signature, as for gRPC
        self.assertEqual(self.get("/healthz", token=None)[0], 200)

    def test_token_reload(self):
        # a new token file and SIGHUP: the old token is refused over HTTP too (the
        # gateway is replaced with the new configuration), the new one works
        tok = os.path.join(self.top, "token")
        sig = self.sign("/v1/probe/a.mp4")
        with open(tok, "w") as f:
            f.write("rotated-token-0001\n")
        try:
            os.kill(self.server.pid, signal.SIGHUP)
            h.wait_for(lambda: self.status("/v1/probe/a.mp4?sig=" + sig) == 401, 30,
                       what="the old token refused")
            self.assertEqual(self.get("/v1/probe/a.mp4?sig=" + sig,
                                      token="rotated-token-0001")[0], 200)
        finally:
            with open(tok, "w") as f:
                f.write(TOKEN + "\n")
            os.kill(self.server.pid, signal.SIGHUP)
            h.wait_for(lambda: self.status("/v1/probe/a.mp4?sig=" + sig) == 200, 30,
                       what="the first token back")

    def status(self, path):
        """The status, or None if the connection failed (a gateway being replaced
        closes its idle keep-alive connections)."""
        try:
            return self.get(path)[0]
        except subprocess.CalledProcessError:
            return None

    def test_plaintext_is_refused_on_a_tls_port(self):
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://127.0.0.1:%d/healthz" % self.server.http_port],
                           capture_output=True, text=True)
        self.assertNotEqual(r.stdout, "200")


class HttpConfig(h.ServerTestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        pass

    def test_http_listen_needs_media_root(self):
        r = subprocess.run([h.SERVER_BIN, "--http-listen", "127.0.0.1:%d" % h.free_port()],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--http-listen serves the files under --media-root", r.stderr)

    def test_signing_key_needs_http(self):
        r = subprocess.run([h.SERVER_BIN, "--url-signing-key", "/etc/hostname"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("needs --http-listen", r.stderr)

    def test_taken_port_refuses_the_start(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        d = tempfile.mkdtemp()
        try:
            r = subprocess.run([h.SERVER_BIN, "--media-root", d, "--http-listen",
                                "127.0.0.1:%d" % s.getsockname()[1]],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--http-listen", r.stderr)
        finally:
            s.close()
            os.rmdir(d)


if __name__ == "__main__":
    h.main()
