"""Shared helpers for the integration tests.

Each test file starts the real thumbnail_server (built in TN_BUILD_DIR) on a
free TCP port, drives it with the real thumbnail_client and/or with Python's
grpcio (stubs generated from proto/ at import time), and checks the results:
PNGs are decoded here with zlib + struct, no imaging library needed.

Environment (set by CTest, see tests/CMakeLists.txt):
  TN_BUILD_DIR    the CMake build dir (binaries in src/server, src/client)
  TN_TEST_VIDEOS  the generated videos (tests/gen_videos.sh; made here if missing)
  TN_SOURCE_DIR   the repository root (proto/)
"""

import atexit
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import skips as skip_policy  # noqa: E402  (tests/skips.py: what a skip means)

SOURCE_DIR = os.path.abspath(os.environ.get(
    "TN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")))
BUILD_DIR = os.path.abspath(os.environ.get("TN_BUILD_DIR", os.path.join(SOURCE_DIR, "build")))
VIDEOS = os.path.abspath(os.environ.get("TN_TEST_VIDEOS", os.path.join(BUILD_DIR, "test-videos")))
SERVER_BIN = os.path.join(BUILD_DIR, "src", "server", "thumbnail_server")
CLIENT_BIN = os.path.join(BUILD_DIR, "src", "client", "thumbnail_client")
HEALTH_PROTO = "/usr/share/grpc-proto/grpc/health/v1/health.proto"
GRPC_PYTHON_PLUGIN = "/usr/bin/grpc_python_plugin"

# Status codes by name, as the client prints them and grpcio reports them.
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14


def log(msg):
    """Progress lines in the test output (CTest shows them with --output-on-failure/-V)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Test videos

def ensure_videos():
    """Make sure the generated videos exist (CTest's gen_videos fixture normally did it)."""
    if not os.path.exists(os.path.join(VIDEOS, ".done")):
        subprocess.run([os.path.join(SOURCE_DIR, "tests", "gen_videos.sh"), VIDEOS], check=True)
    return VIDEOS


def video(name):
    return os.path.join(ensure_videos(), name)


def make_input_dir(names, parent=None, rename=None):
    """A fresh directory holding copies of the named videos (copies, not hard links:
    the build tree and the temporary directory may be on different file systems).
    rename: optional {source name: name in the dir} (may include subdirectories)."""
    d = tempfile.mkdtemp(prefix="tn-input-", dir=parent)
    for n in names:
        dst = os.path.join(d, (rename or {}).get(n, n))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(video(n), dst)
    return d


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def tree_files(d):
    """Every file under d (relative paths, sorted), hidden ones included."""
    out = []
    for root, _dirs, files in os.walk(d):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), d))
    return sorted(out)


# --------------------------------------------------------------------------
# Python stubs, generated at import time from the repository's proto

_STUBS_DIR = None


def _gen_stubs():
    global _STUBS_DIR
    if _STUBS_DIR:
        return
    d = tempfile.mkdtemp(prefix="tn-stubs-")
    atexit.register(shutil.rmtree, d, True)
    # health.proto is copied to the top level: generated at grpc/health/v1/ it
    # would make a "grpc" package that shadows grpcio itself.
    shutil.copyfile(HEALTH_PROTO, os.path.join(d, "health.proto"))
    shutil.copyfile(os.path.join(SOURCE_DIR, "proto", "thumbnail.proto"),
                    os.path.join(d, "thumbnail.proto"))
    subprocess.run(["protoc", "-I" + d, "--python_out=" + d, "--grpc_python_out=" + d,
                    "--plugin=protoc-gen-grpc_python=" + GRPC_PYTHON_PLUGIN,
                    os.path.join(d, "thumbnail.proto"), os.path.join(d, "health.proto")],
                   check=True)
    sys.path.insert(0, d)
    _STUBS_DIR = d


_gen_stubs()
import grpc  # noqa: E402  (Debian's python3-grpcio)
import health_pb2  # noqa: E402
import health_pb2_grpc  # noqa: E402
import thumbnail_pb2 as pb  # noqa: E402
import thumbnail_pb2_grpc as pb_grpc  # noqa: E402

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]


def channel(addr, credentials=None, options=()):
    """A plaintext channel, or a TLS one with grpc.ssl_channel_credentials(...)."""
    opts = CHANNEL_OPTIONS + list(options)
    if credentials is not None:
        return grpc.secure_channel(addr, credentials, options=opts)
    return grpc.insecure_channel(addr, options=opts)


def health_check(addr, timeout=2.0, service="", credentials=None):
    """The health status name ("SERVING", ...) or raises grpc.RpcError."""
    with channel(addr, credentials) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def time_point(t):
    """'10%' -> percent, 12.5 / '12.5' -> seconds."""
    if isinstance(t, str) and t.endswith("%"):
        return pb.TimePoint(percent=float(t[:-1]))
    return pb.TimePoint(seconds=float(t))


def generate_requests(path=None, data=None, file_name=None, times=(), max_width=0,
                      max_height=0, upscale=False, mode=0, chunk=64 * 1024, declare_size=True,
                      declared_size=None, send_end=True, fmt=0, on_chunk=None, quality=0,
                      lossless=False, png_level=0, engine=None):
    """The request stream of one Generate call: options, data chunks, end marker."""
    if data is None:
        size = os.path.getsize(path)
    else:
        size = len(data)
    opts = pb.Options(file_name=file_name or os.path.basename(path or "upload.bin"),
                      size=(declared_size if declared_size is not None
                            else (size if declare_size else 0)),
                      times=[time_point(t) for t in times], max_width=max_width,
                      max_height=max_height, upscale=upscale, format=fmt, mode=mode)
    # set only when asked for: the tests of older protos keep working
    if quality:
        opts.quality = quality
    if lossless:
        opts.lossless = lossless
    if png_level:
        opts.png_level = png_level
    for k, v in (engine or {}).items():  # engine options: fit, count, every, cover_art...
        setattr(opts, k, v)
    yield pb.GenerateRequest(options=opts)
    if data is not None:
        for off in range(0, len(data), chunk):
            yield pb.GenerateRequest(data=data[off:off + chunk])
            if on_chunk:
                on_chunk()
    else:
        with open(path, "rb") as f:
            while True:
                b = f.read(chunk)
                if not b:
                    break
                yield pb.GenerateRequest(data=b)
                if on_chunk:
                    on_chunk()
    if send_end:
        yield pb.GenerateRequest(end=pb.End())


class Thumb:
    def __init__(self, header):
        self.header = header
        self.data = bytearray()


def collect(responses):
    """Reassemble a Generate response stream: [Thumb(header, data)], checking the framing."""
    thumbs = []
    for r in responses:
        which = r.WhichOneof("msg")
        if which == "thumbnail":
            if thumbs and len(thumbs[-1].data) != thumbs[-1].header.size:
                raise AssertionError("header before the previous thumbnail was complete")
            thumbs.append(Thumb(r.thumbnail))
        elif which == "data":
            if not thumbs:
                raise AssertionError("data before any thumbnail header")
            thumbs[-1].data += r.data
            if len(thumbs[-1].data) > thumbs[-1].header.size:
                raise AssertionError("more data than the header's size")
        else:
            raise AssertionError("empty response message")
    if thumbs and len(thumbs[-1].data) != thumbs[-1].header.size:
        raise AssertionError("stream ended inside a thumbnail")
    return thumbs


def generate(addr, timeout=60, metadata=None, **kw):
    """One Generate call; returns [Thumb] or raises grpc.RpcError."""
    with channel(addr) as ch:
        stub = pb_grpc.ThumbnailerStub(ch)
        return collect(stub.Generate(generate_requests(**kw), timeout=timeout, metadata=metadata))


# --------------------------------------------------------------------------
# PNG: enough of a decoder to check the images (8/16-bit, all colour types)

class PngError(Exception):
    pass


class Png:
    def __init__(self, width, height, depth, color_type, channels, rows):
        self.width, self.height, self.depth = width, height, depth
        self.color_type, self.channels = color_type, channels
        self.rows = rows  # list of bytes (unfiltered), or None when interlaced

    def pixel(self, x, y):
        """Tuple of channel values (8-bit images)."""
        c = self.channels
        return tuple(self.rows[y][x * c:(x + 1) * c])

    def rgb_bytes(self):
        """Flattened 8-bit RGB, for comparisons (gray and alpha handled)."""
        if self.depth != 8:
            raise PngError("rgb_bytes: only 8-bit images")
        out = bytearray()
        for row in self.rows:
            if self.channels == 3:
                out += row
            elif self.channels == 4:
                for i in range(0, len(row), 4):
                    out += row[i:i + 3]
            elif self.channels == 1:
                for v in row:
                    out += bytes((v, v, v))
            else:
                for i in range(0, len(row), 2):
                    out += bytes((row[i],) * 3)
        return bytes(out)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb_, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb_ and pa <= pc:
        return a
    return b if pb_ <= pc else c


def png_decode(data):
    """Parse and fully decode a PNG (CRCs checked); raises PngError if invalid."""
    data = bytes(data)
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise PngError("not a PNG signature")
    pos, ihdr, idat, seen_end = 8, None, bytearray(), False
    while pos + 12 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise PngError("truncated chunk %r" % ctype)
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + body) & 0xffffffff != crc:
            raise PngError("bad CRC in chunk %r" % ctype)
        if ctype == b"IHDR":
            ihdr = body
        elif ctype == b"IDAT":
            idat += body
        elif ctype == b"IEND":
            seen_end = True
            break
        pos += 12 + length
    if ihdr is None or len(ihdr) != 13:
        raise PngError("no IHDR")
    if not seen_end:
        raise PngError("no IEND")
    w, h, depth, color_type, _comp, _filt, interlace = struct.unpack(">IIBBBBB", ihdr)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type)
    if channels is None or w == 0 or h == 0:
        raise PngError("bad IHDR")
    try:
        raw = zlib.decompress(bytes(idat))
    except zlib.error as e:
        raise PngError("bad IDAT: %s" % e)
    if interlace:
        return Png(w, h, depth, color_type, channels, None)
    bits = channels * depth
    stride = (w * bits + 7) // 8
    bpp = max(1, bits // 8)
    if len(raw) != h * (stride + 1):
        raise PngError("IDAT holds %d bytes, expected %d" % (len(raw), h * (stride + 1)))
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 0:
            pass
        elif f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xff
        elif f == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xff
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xff
        elif f == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up_left = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 0xff
        else:
            raise PngError("bad filter type %d in row %d" % (f, y))
        rows.append(bytes(line))
        prev = line
    return Png(w, h, depth, color_type, channels, rows)


def png_file(path):
    with open(path, "rb") as f:
        return png_decode(f.read())


def server_png(path):
    """The bytes the server sent for a PNG that thumbnail_client wrote: the file minus
    the client's record of how it was made (a tEXt chunk "thumbnail_client" before IEND)."""
    data = read_bytes(path)
    pos = 8
    while pos + 12 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if ctype == b"tEXt" and data[pos + 8:pos + 8 + 17] == b"thumbnail_client\0":
            return data[:pos] + data[pos + 12 + length:]
        pos += 12 + length
    return data


def png_size(path):
    """(width, height) from the IHDR only."""
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise PngError("%s: not a PNG" % path)
    return struct.unpack(">II", head[16:24])


def mean_abs_diff(a, b):
    if len(a) != len(b):
        raise ValueError("sizes differ: %d vs %d" % (len(a), len(b)))
    return sum(abs(x - y) for x, y in zip(a, b)) / max(1, len(a))


def ffmpeg_reference_rgb(path, t, width, height, extra_vf=None, autorotate=True):
    """ffmpeg's own frame at time t scaled to width x height, as RGB24 bytes."""
    vf = "scale=%d:%d:flags=area" % (width, height)
    if extra_vf:
        vf = extra_vf + "," + vf
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    if not autorotate:
        cmd.append("-noautorotate")
    cmd += ["-ss", "%.6f" % t, "-i", path, "-frames:v", "1", "-vf", vf, "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-"]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout


def duration(path):
    """Container duration in seconds (ffprobe)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                          "default=nw=1:nk=1", path], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return float(out.strip())


def image_variance(rgb):
    """A blank (single-colour) image has ~0; a test pattern has a lot."""
    n = len(rgb)
    m = sum(rgb) / n
    return sum((v - m) ** 2 for v in rgb[::7]) / len(rgb[::7])


# --------------------------------------------------------------------------
# Processes

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid):
    """(comm, state, ppid, pgid, utime+stime ticks, num_threads) or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] = state (field 3); fields 4 ppid, 5 pgrp, 14 utime, 15 stime, 20 num_threads
    return {"comm": comm, "state": rest[0], "ppid": int(rest[1]), "pgid": int(rest[2]),
            "cpu": int(rest[11]) + int(rest[12]), "threads": int(rest[17])}


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid):
    """Live (non-zombie) direct children of pid that have a role: not the master's
    short-lived front checker (comm "tn: check"), nor a child that has not taken
    its role yet (it still has its parent's comm, for the microseconds after fork)."""
    parent = proc_stat(pid)
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st["ppid"] == pid and st["state"] != "Z" and st["comm"] != "tn: check" \
                and not (parent and st["comm"] == parent["comm"]):
            out.append(p)
    return sorted(out)


def pids_in_group(pgid):
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st["pgid"] == pgid and st["state"] != "Z":
            out.append(p)
    return sorted(out)


def pid_alive(pid):
    st = proc_stat(pid)
    return st is not None and st["state"] != "Z"


def vm_status(pid, key):
    """VmRSS / VmHWM etc. in bytes, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def listening_inodes(port):
    """Socket inodes listening on TCP port (IPv4 and IPv6)."""
    inodes = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            pass
    return inodes


def owns_socket(pid, inodes):
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    except OSError:
        pass
    return False


def wait_for(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def tree_cpu(pid):
    """CPU ticks of pid and all its live descendants (a worker's decode threads count in
    its own stat; descendants are included in case a job ever runs in a subprocess)."""
    stats = {p: proc_stat(p) for p in all_pids()}
    if not stats.get(pid):
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats[p]["cpu"]
        todo += [c for c, st in stats.items() if st and st["ppid"] == p]
    return total


def busy_worker(pids, timeout=15, ticks=2):
    """The first of pids whose CPU time grows by `ticks` (10 ms each): idle workers
    sleep in recvmsg() and burn none, so that is the one running a job. None on timeout."""
    base = {p: tree_cpu(p) or 0 for p in pids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p, c0 in base.items():
            c = tree_cpu(p)
            if c is not None and c - c0 >= ticks:
                return p
        time.sleep(0.02)
    return None


def kill_and_wait(pids, sig=signal.SIGKILL, timeout=15):
    """Signal pids and wait until each is gone (reaped or a zombie): a SIGKILLed process
    can take a while to exit (e.g. unmapping ASan's shadow memory) and must not be
    counted as a live worker meanwhile."""
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    wait_for(lambda: not [p for p in pids if pid_alive(p)], timeout,
             what="pids %s to exit" % list(pids))


_LIVE_GROUPS = set()
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)[^\n]*|runtime error:[^\n]*")
# Sanitizer reports found in the output of any server of this run (every Server is
# scanned when cleaned up or at the end, however it was stopped; other processes a
# test starts by hand go through note_sanitizer_output()). main() fails on any.
_SANITIZER_FOUND = []
_ALL_SERVERS = []


def note_sanitizer_output(text, what):
    """Record a sanitizer report in text (the output of a process a test started)."""
    m = SANITIZER_RE.search(text or "")
    if m:
        _SANITIZER_FOUND.append("%s: %s" % (what, m.group(0)))
    return m


@atexit.register
def _kill_leftovers():
    for pgid in list(_LIVE_GROUPS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _is_sanitized(path):
    """Built with -fsanitize=address? (ASan needs terabytes of address space.)"""
    try:
        with open(path, "rb") as f:
            return b"libasan.so" in f.read()
    except OSError:
        return False


def sanitized():
    return _is_sanitized(SERVER_BIN)


# In a sanitized build every process the tests start (servers, daemons, clients, by
# Server or by hand) writes its sanitizer reports to files here instead of stderr
# (log_path), so none is lost to a /dev/null or an unread pipe: Server.stop() and
# main() read them.
SANITIZER_LOG_DIR = None
# (A script a test runs that imports this module inherits its parent's log_path: the
# parent reads those reports.)
if sanitized() and "log_path=" not in os.environ.get("ASAN_OPTIONS", ""):
    SANITIZER_LOG_DIR = tempfile.mkdtemp(prefix="tn-sanitizer-")
    atexit.register(lambda: os.path.isdir(SANITIZER_LOG_DIR) and not os.listdir(
        SANITIZER_LOG_DIR) and os.rmdir(SANITIZER_LOG_DIR))
    for _var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        _prev = os.environ.get(_var, "")
        os.environ[_var] = ((_prev + ":") if _prev else "") + "log_path=" + os.path.join(
            SANITIZER_LOG_DIR, _var.split("_")[0].lower())


def sanitizer_log_text():
    """Everything the sanitizers wrote to SANITIZER_LOG_DIR so far ("" if none)."""
    text = ""
    if SANITIZER_LOG_DIR:
        for fn in sorted(os.listdir(SANITIZER_LOG_DIR)):
            try:
                with open(os.path.join(SANITIZER_LOG_DIR, fn), errors="replace") as f:
                    text += "==> %s <==\n%s" % (fn, f.read())
            except OSError:
                pass
    return text


def server_default_args():
    """Flags added to every server the tests start: $TN_SERVER_ARGS (space-separated),
    and --worker-memory 0 for an ASan build, whose shadow memory cannot live under the
    workers' RLIMIT_AS."""
    args = os.environ.get("TN_SERVER_ARGS", "").split()
    if sanitized():
        args += ["--worker-memory", "0"]
    return args


class Server:
    """The real thumbnail_server on 127.0.0.1:<free port>, in its own process group."""

    def __init__(self, workers=2, extra=(), env=None, start=True, metrics=False,
                 credentials=None, wrapper=(), binary=None):
        self.workers = workers
        self.metrics = metrics  # --metrics-listen on a free port (self.metrics_port)
        self.metrics_port = None
        self.credentials = credentials  # a TLS server: how the health check connects
        self.extra = list(extra)
        self.env = env
        self.wrapper = list(wrapper)  # a command the server runs under, e.g. valgrind
        self.binary = binary or SERVER_BIN  # another build's server (test_deb's release tree)
        self.tmp = tempfile.mkdtemp(prefix="tn-server-")
        self.spool = os.path.join(self.tmp, "spool")
        os.mkdir(self.spool)
        self.log_path = os.path.join(self.tmp, "server.log")
        self.proc = None
        self.port = None
        self.scanned = False
        _ALL_SERVERS.append(self)
        if start:
            self.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=30):
        if not os.access(self.binary, os.X_OK):
            raise AssertionError("%s is not built (TN_BUILD_DIR=%s)" % (self.binary, BUILD_DIR))
        last = None
        for _attempt in range(3):  # a free port can be taken by someone else meanwhile
            self.port = free_port()
            cmd = self.wrapper + [self.binary, "--listen", self.addr, "--workers", str(self.workers),
                   "--spool-dir", self.spool, "--log-file", self.log_path]
            if self.metrics:
                self.metrics_port = free_port()
                cmd += ["--metrics-listen", "127.0.0.1:%d" % self.metrics_port]
            cmd += server_default_args() + self.extra
            env = dict(os.environ)
            env.pop("NUM_WORKERS", None)
            env.update(self.env or {})
            self.out = open(os.path.join(self.tmp, "server.out"), "ab")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.out,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
            _LIVE_GROUPS.add(self.proc.pid)
            try:
                self.wait_healthy(timeout)
                return self
            except AssertionError as e:
                last = e
                if self.proc.poll() is None:
                    raise
                _LIVE_GROUPS.discard(self.proc.pid)
        self.dump_log()
        raise last

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited with %s before becoming healthy"
                                     % self.proc.returncode)
            try:
                if health_check(self.addr, timeout=1.0,
                                credentials=self.credentials) == "SERVING":
                    return
            except grpc.RpcError as e:
                err = e
            time.sleep(0.1)
        raise AssertionError("server not healthy after %.0f s (last error: %s)" % (timeout, err))

    def log_text(self):
        text = ""
        for fn in (self.log_path, os.path.join(self.tmp, "server.out")):
            try:
                with open(fn, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def dump_log(self, lines=200):
        text = self.log_text().splitlines()
        log("---- server log (%s), last %d lines ----" % (self.log_path, lines))
        for line in text[-lines:]:
            log("  " + line)
        log("---- end of server log ----")

    # --- process tree ---------------------------------------------------
    def roles(self):
        """{'front': pid or None, 'workers': [pids]} from the master's children: the front
        is the child that owns the listening socket."""
        inodes = listening_inodes(self.port)
        kids = children(self.pid)
        if self.metrics_port:  # the metrics process is neither front nor worker
            m_inodes = listening_inodes(self.metrics_port)
            kids = [k for k in kids if not owns_socket(k, m_inodes)]
        front = None
        for k in kids:
            if inodes and owns_socket(k, inodes):
                front = k
        if front is None and kids:
            # Not listening yet (respawning): the child with gRPC's threads.
            threads = {k: (proc_stat(k) or {"threads": 0})["threads"] for k in kids}
            best = max(kids, key=lambda k: threads[k])
            if threads[best] > 1 and list(threads.values()).count(threads[best]) == 1:
                front = best
        return {"front": front, "workers": [k for k in kids if k != front]}

    def wait_roles(self, workers=None, timeout=15):
        n = self.workers if workers is None else workers

        def ok():
            r = self.roles()
            return r if r["front"] and len(r["workers"]) == n else None
        return wait_for(ok, timeout, what="a front and %d workers" % n)

    def worker_pids(self):
        return self.wait_roles()["workers"]

    def front_pid(self):
        return self.wait_roles()["front"]

    def log_pids(self, role_prefix):
        """pids seen in log lines of processes whose role starts with role_prefix
        ("worker", "front"): 'TIMESTAMP LEVEL role pid: text'."""
        pids = []
        for m in re.finditer(r"^\S+ [A-Z]+ (%s\S*) (\d+):" % re.escape(role_prefix),
                             self.log_text(), re.M):
            p = int(m.group(2))
            if p not in pids:
                pids.append(p)
        return pids

    def metrics_pid(self):
        """The child serving --metrics-listen (it holds the master's listening socket)."""
        inodes = listening_inodes(self.metrics_port)
        for k in children(self.pid):
            if owns_socket(k, inodes):
                return k
        return None

    def scrape(self, path="/metrics", timeout=5):
        """GET http://127.0.0.1:<metrics port><path>: (status, content type, body text)."""
        import urllib.error
        import urllib.request
        url = "http://127.0.0.1:%d%s" % (self.metrics_port, path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.headers.get("Content-Type"), r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read().decode("utf-8")

    # --- stopping -------------------------------------------------------
    def stop(self, sig=signal.SIGINT, timeout=20, check=True):
        """Signal the master, wait, and make sure no process of the server is left.
        Returns the master's exit status. Default SIGINT: the fast stop (SIGTERM
        drains in-flight calls for up to --grace)."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
            self.dump_log()
            if check:
                raise AssertionError("server did not exit within %d s of signal %d"
                                     % (timeout, sig))
            rc = None
        try:
            left = wait_for(lambda: not pids_in_group(pgid), 5, what="the server's children")
        except AssertionError:
            left = pids_in_group(pgid)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            if check:
                self.dump_log()
                raise AssertionError("processes left after the master exited: %s" % left)
        _LIVE_GROUPS.discard(pgid)
        self.out.close()
        if check:
            self.check_sanitizer_reports()
        return rc

    def check_sanitizer_reports(self):
        """ASan/UBSan/LSan write to stderr (server.out); a child that died of it was
        respawned, so the tests may have passed anyway: fail here."""
        m = SANITIZER_RE.search(self.log_text() + sanitizer_log_text())
        if m:
            self.dump_log(400)
            log(sanitizer_log_text()[-20000:])
            raise AssertionError("sanitizer report in the server output: %s" % m.group(0))

    def scan_sanitizer_output(self):
        """Record any sanitizer report (once), whether or not stop() checked it."""
        if not self.scanned:
            self.scanned = True
            if note_sanitizer_output(self.log_text(), "server %s" % self.tmp):
                self.dump_log(400)

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.stop(check=False)
        self.scan_sanitizer_output()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# The real client

class ClientResult:
    def __init__(self, cp, elapsed):
        self.returncode = cp.returncode
        self.stdout = cp.stdout
        self.stderr = cp.stderr
        self.output = cp.stdout + cp.stderr
        self.elapsed = elapsed

    def __repr__(self):
        return ("exit %d after %.2f s\n--- stdout ---\n%s--- stderr ---\n%s"
                % (self.returncode, self.elapsed, self.stdout, self.stderr))

    def line_for(self, name):
        """The client's result line for a file (the first line mentioning it)."""
        for line in self.output.splitlines():
            if name in line:
                return line
        return None


def client_retries(output):
    """Retries the client made, summed over its result lines ("ok   a.mp4 -> ... ms,
    2 retries)")."""
    return sum(int(n) for n in re.findall(r"^ok .*, (\d+) retr(?:y|ies)\b", output, re.M))


def run_client(args, env=None, timeout=300, check_rc=None):
    if not os.access(CLIENT_BIN, os.X_OK):
        raise AssertionError("%s is not built (TN_BUILD_DIR=%s)" % (CLIENT_BIN, BUILD_DIR))
    e = dict(os.environ)
    for k in ("THUMBNAIL_SERVER", "NUM_JOBS"):
        e.pop(k, None)
    e.update(env or {})
    t0 = time.monotonic()
    cp = subprocess.run([CLIENT_BIN] + list(args), stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, timeout=timeout,
                        text=True, errors="replace")
    r = ClientResult(cp, time.monotonic() - t0)
    if check_rc is not None and r.returncode != check_rc:
        raise AssertionError("client %s: expected exit %d, got %r" % (args, check_rc, r))
    return r


# --------------------------------------------------------------------------
# unittest glue

class ServersTestCase(unittest.TestCase):
    """Tests that start their own servers (self.server(...)): after each test every one
    is stopped and its files removed; when the test failed, its log is printed first
    (before the removal, so the log is still there to print)."""

    def setUp(self):
        self.servers = []

    def server(self, **kw):
        s = Server(**kw)
        self.servers.append(s)
        return s

    def run(self, result=None):
        before = (len(result.failures) + len(result.errors)) if result is not None else 0
        r = None
        try:
            r = super().run(result)
        finally:
            res = result if result is not None else r
            failed = res is not None and len(res.failures) + len(res.errors) > before
            for s in getattr(self, "servers", []):
                if failed:
                    s.dump_log()
                s.cleanup()
        return r


class ServerTestCase(unittest.TestCase):
    """One server per test class (start_server() in setUpClass); its log is dumped
    whenever a test fails."""

    server = None
    workers = 2
    server_extra = ()
    metrics = False

    @classmethod
    def setUpClass(cls):
        cls.server = Server(workers=cls.workers, extra=cls.server_extra, metrics=cls.metrics)

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            srv, cls.server = cls.server, None
            try:
                srv.stop()
            finally:
                srv.cleanup()

    def run(self, result=None):
        before = (len(result.failures) + len(result.errors)) if result is not None else 0
        r = super().run(result)
        res = result if result is not None else r
        if res is not None and len(res.failures) + len(res.errors) > before:
            for srv in self._servers_to_dump():
                srv.dump_log()
        return r

    def _servers_to_dump(self):
        out = [s for s in getattr(self, "extra_servers", []) if s is not None]
        if type(self).server is not None:
            out.insert(0, type(self).server)
        return out

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="tn-test-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def assertRpcCode(self, err, code_name, msg_re=None):
        self.assertIsInstance(err, grpc.RpcError)
        self.assertEqual(err.code().name, code_name,
                         "status %s (%r), expected %s" % (err.code().name, err.details(),
                                                          code_name))
        if msg_re:
            self.assertRegex(err.details() or "", msg_re)


def main():
    """unittest.main() with verbose output. Exit status: 1 on a failure, 77 (skipped, for
    CTest) when a test was skipped, 0 otherwise; under CI=true a skip not on the
    allow-list fails (tests/skips.py)."""
    ensure_videos()
    prog = unittest.main(verbosity=2, exit=False)
    r = prog.result
    for srv in _ALL_SERVERS:  # those never cleaned up, e.g. stopped with check=False
        if os.path.isdir(srv.tmp):
            srv.scan_sanitizer_output()
    failed = not r.wasSuccessful()
    if note_sanitizer_output(sanitizer_log_text(), "sanitizer logs in %s" % SANITIZER_LOG_DIR):
        log(sanitizer_log_text()[-20000:])
    elif SANITIZER_LOG_DIR:
        shutil.rmtree(SANITIZER_LOG_DIR, ignore_errors=True)
    if _SANITIZER_FOUND:
        log("FAILED: sanitizer report(s) in the output of a process this test started:")
        for line in _SANITIZER_FOUND:
            log("  " + line)
        failed = True
    skips = [(t.id(), reason) for t, reason in r.skipped]
    sys.exit(skip_policy.verdict(skips, failed))
