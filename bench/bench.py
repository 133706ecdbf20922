#!/usr/bin/python3
"""The benchmark driver behind bench/run.sh (see README "Benchmark").

Makes (or takes) a corpus, then measures, interleaved per file so that every
peer sees the same machine noise:
  * per-thumbnail latency of one 320-px PNG at 10 % by mode (keyframe,
    accurate): our warm server (Python grpcio on one open channel, and the
    worker's own job time, in microseconds, from the server log), our client as
    a fresh process per file, ffmpegthumbnailer, the ffmpeg CLI, the engine
    in-process (tn_engine_bench) and the limit (tn_limit);
  * batch wall time for the corpus at the same parallelism settings for every
    tool: thumbnail_client --jobs P against each peer under xargs -P P;
  * thumbnails/s for 1..N workers x client concurrency;
  * upload MB/s against a raw loopback TCP transfer of the same file by socat;
  * the front's peak RSS (VmHWM), warm and for big uploads;
  * cost against clip length and seek position (10/50/90 % of a 10-minute clip);
  * decoder threading (none/slice/frame) and PNG level/filter with tn_limit.

Like for like: every tool makes the same picture (320 px wide, the height by
the aspect ratio; checked on every output), decodes with one thread (our
workers' policy: parallelism comes from processes), and where it lets us set
them, writes the PNG at zlib level 1 with the SUB row filter (our engine's
defaults). ffmpegthumbnailer cannot be told either: it writes libpng's
defaults (level 6, adaptive filter); the report gives what that costs.

Writes report.md and results.json (small text, meant to be committed, with
the run's provenance) into --report-dir, and gnuplot data into --out.
Exit status 1 when any peer (or ours) failed to produce a correct thumbnail.

`bench.py cmd TOOL MODE INPUT OUT [--build DIR --server ADDR]` prints the
exact command line the benchmark runs for TOOL (ffmpeg, ffmpegthumbnailer,
client), so that bench/compare.sh times the same commands.
"""

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)

# The like-for-like settings, applied to every tool that takes them.
WIDTH = 320         # thumbnail width; the height keeps the display aspect ratio
PNG_LEVEL = 1       # zlib level: the engine's default (PNG_LEVEL in src/worker/encode.c)
PNG_FILTER = "sub"  # PNG row filter: the engine's (encode_png in src/worker/encode.c)
THREADS = 1         # decoder threads per thumbnail: the engine's (DECODER_THREADS)
AT = 10             # percent of the duration

FAILURES = []


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def fail(what):
    FAILURES.append(what)
    log("FAILED: " + what)


def run(cmd, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, **kw)


def children_cpu_ms():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1e3


def timed(cmd, shell=False):
    """(wall ms, CPU ms of the process and its children) of one command; (None, None)
    and a recorded failure if it failed. The CPU time is the children's rusage: only
    processes that have been waited for count, so the running server does not."""
    c0 = children_cpu_ms()
    t0 = time.monotonic()
    r = run(cmd, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ms = (time.monotonic() - t0) * 1e3
    cpu = children_cpu_ms() - c0
    if r.returncode != 0:
        fail("%s: exit %d: %s" % (cmd if shell else " ".join(cmd), r.returncode,
                                  r.stderr.decode(errors="replace")[-300:]))
        return None, None
    return ms, cpu


def png_size(data):
    """(width, height) from a PNG's IHDR, or None if data is not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def png_file_size(path):
    try:
        with open(path, "rb") as f:
            return png_size(f.read(24)), os.path.getsize(path)
    except OSError:
        return None, 0


GEOMETRY = {}


def expected_height(path):
    """The thumbnail height for WIDTH: the display aspect ratio (sample aspect ratio
    and a 90-degree rotation applied), as every tool here computes it."""
    if path not in GEOMETRY:
        r = run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                 "stream=width,height,sample_aspect_ratio:stream_side_data=rotation",
                 "-of", "json", path], capture_output=True, text=True, check=True)
        st = json.loads(r.stdout)["streams"][0]
        w, h = st["width"], st["height"]
        sar = st.get("sample_aspect_ratio", "1:1")
        num, den = (int(x) for x in sar.split(":")) if sar and sar != "0:1" else (1, 1)
        dw = w * num / den
        rot = next((abs(int(sd.get("rotation", 0))) for sd in st.get("side_data_list", [])), 0)
        if rot in (90, 270):
            dw, h = h, dw
        if h > dw:
            raise SystemExit("bench: %s is portrait: ffmpegthumbnailer's -s bounds the longer "
                             "side, the others the width; take it out of the corpus" % path)
        if dw < WIDTH:
            raise SystemExit("bench: %s is %d px wide, less than %d: the peers would upscale "
                             "it and we would not; take it out of the corpus" % (path, dw, WIDTH))
        GEOMETRY[path] = WIDTH * h / dw
    return GEOMETRY[path]


def check_size(tool, path, size):
    """The same output check for every tool: a PNG WIDTH wide whose height is the
    aspect ratio's within 2 px (tools round to even differently). True if fine."""
    want = expected_height(path)
    if size is None:
        fail("%s on %s: not a PNG" % (tool, os.path.basename(path)))
        return False
    if size[0] != WIDTH or abs(size[1] - want) > 2:
        fail("%s on %s: %dx%d, want %dx%.0f" % (tool, os.path.basename(path), size[0], size[1],
                                                WIDTH, want))
        return False
    return True


def median(v):
    return statistics.median(v) if v else float("nan")


def p95(v):
    if not v:
        return float("nan")
    s = sorted(v)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def ffprobe_duration(path):
    r = run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
             "default=nw=1:nk=1", path], capture_output=True, text=True, check=True)
    return float(r.stdout.strip())


# --------------------------------------------------------------------------
# Corpus

def ff(*args):
    run(["nice", "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"] + list(args),
        check=True)


def src(w, h, d):
    return "testsrc2=size=%dx%d:rate=25:duration=%d" % (w, h, d)


def make_corpus(d, quick):
    """Several codecs, resolutions, durations and containers, with the ffmpeg CLI."""
    os.makedirs(d, exist_ok=True)
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    if quick:
        specs = [
            ("h264_360p_8s.mp4", ["-f", "lavfi", "-i", src(640, 360, 8)] + x264 + ["-g", "50"]),
            ("vp9_240p_4s.webm", ["-f", "lavfi", "-i", src(426, 240, 4), "-c:v", "libvpx-vp9",
                                  "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]),
            ("mpeg4_240p_4s.avi", ["-f", "lavfi", "-i", src(426, 240, 4), "-c:v", "mpeg4",
                                   "-q:v", "5"]),
        ]
    else:
        specs = [
            ("h264_1080p_60s.mp4", ["-f", "lavfi", "-i", src(1920, 1080, 60)] + x264 +
             ["-g", "250", "-b:v", "8M", "-minrate", "8M", "-maxrate", "8M", "-bufsize", "16M"]),
            ("h264_720p_30s.mkv", ["-f", "lavfi", "-i", src(1280, 720, 30)] + x264 +
             ["-g", "125", "-b:v", "4M"]),
            ("hevc_720p_20s.mp4", ["-f", "lavfi", "-i", src(1280, 720, 20), "-c:v", "libx265",
                                   "-preset", "ultrafast", "-x265-params", "log-level=error",
                                   "-pix_fmt", "yuv420p", "-tag:v", "hvc1"]),
            ("vp9_480p_20s.webm", ["-f", "lavfi", "-i", src(854, 480, 20), "-c:v", "libvpx-vp9",
                                   "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"]),
            ("mpeg4_480p_20s.avi", ["-f", "lavfi", "-i", src(854, 480, 20), "-c:v", "mpeg4",
                                    "-q:v", "4"]),
            ("h264_360p_120s.mov", ["-f", "lavfi", "-i", src(640, 360, 120)] + x264 +
             ["-g", "250", "-b:v", "800k"]),
        ]
    for name, args in specs:
        out = os.path.join(d, name)
        if not os.path.exists(out):
            log("corpus: making %s" % name)
            ff(*(args + [out + ".tmp." + name.rsplit(".", 1)[1]]))
            os.rename(out + ".tmp." + name.rsplit(".", 1)[1], out)
    return sorted(os.path.join(d, n) for n in os.listdir(d)
                  if not n.startswith(".") and ".tmp." not in n)


def make_long(d, quick):
    """A short encode and the same looped (stream copy) to 10x the length (10 minutes in
    a full run). The GOP is a tenth of the short clip, so 10/50/90 % of either clip are
    exactly keyframes: the comparison isolates length and position from the distance
    to the previous keyframe (a property of the encode, measured elsewhere)."""
    os.makedirs(d, exist_ok=True)
    short = os.path.join(d, "short.mp4")
    long_ = os.path.join(d, "long.mp4")
    secs = 12 if quick else 60
    if not os.path.exists(long_):
        log("long clip: %d s and %d s (looped, stream copy)" % (secs, secs * 10))
        ff("-f", "lavfi", "-i", src(640, 360, secs), "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", "-g", str(secs * 25 // 10), "-keyint_min", str(secs * 25 // 10),
           "-sc_threshold", "0", "-b:v", "1M", short)
        ff("-stream_loop", "9", "-i", short, "-c", "copy", long_ + ".tmp.mp4")
        os.rename(long_ + ".tmp.mp4", long_)
    return short, long_


# --------------------------------------------------------------------------
# Our server

class Server:
    def __init__(self, build, work, workers, extra=()):
        import harness
        self.h = harness
        self.port = harness.free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.log_path = os.path.join(work, "server-%d-%d.log" % (workers, self.port))
        binary = os.path.join(build, "src", "server", "thumbnail_server")
        if harness._is_sanitized(binary):  # ASan's shadow memory cannot live under RLIMIT_AS
            extra = ["--worker-memory", "0"] + list(extra)
        self.proc = subprocess.Popen(
            [binary, "--listen", self.addr,
             "--workers", str(workers), "--spool-dir", work, "--log-file", self.log_path,
             "--job-timeout", "120s"] + list(extra),
            stdin=subprocess.DEVNULL)
        harness.wait_for(lambda: self._healthy(), 20, 0.1, "the server to serve")
        inodes = harness.listening_inodes(self.port)
        self.front = harness.wait_for(
            lambda: next((p for p in harness.children(self.proc.pid)
                          if harness.owns_socket(p, inodes)), None), 10, 0.05, "the front")
        self.log_off = 0
        self.channel = harness.channel(self.addr)
        self.stub = harness.pb_grpc.ThumbnailerStub(self.channel)

    def _healthy(self):
        try:
            return self.h.health_check(self.addr, timeout=1) == "SERVING"
        except Exception:
            return False

    def new_log(self):
        with open(self.log_path) as f:
            f.seek(self.log_off)
            s = f.read()
            self.log_off = f.tell()
        return s

    def job_ms(self, text):
        """The worker's job times (ms, to the microsecond) in the log text:
        "job N name [..]: OK, 1 thumbnails, 5.512 ms"."""
        out = []
        for line in text.splitlines():
            if " job " in line and ": OK, " in line and line.endswith(" ms"):
                out.append(float(line.rsplit(" ", 2)[1]))
        return out

    def front_call_ms(self, text):
        out = []
        for line in text.splitlines():
            if "Generate peer=" in line and " ms=" in line and "status=OK" in line:
                f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv and
                         kv.split("=", 1)[0] in ("in", "ms"))
                out.append((int(f["in"]), float(f["ms"])))
        return out

    def hwm(self):
        return self.h.vm_status(self.front, "VmHWM")

    def generate(self, path, mode, at="10%", out=None):
        """One call on the warm channel: (wall ms, worker ms) or (None, None). The
        picture gets the same size check as every peer's; out[...] = (w, h, bytes)."""
        self.new_log()
        t0 = time.monotonic()
        try:
            thumbs = self.h.collect(self.stub.Generate(self.h.generate_requests(
                path=path, times=[at], max_width=WIDTH, mode=mode, chunk=1 << 20), timeout=300))
        except Exception as e:  # grpc.RpcError
            fail("ours %s %s: %s" % (os.path.basename(path), mode, e))
            return None, None
        ms = (time.monotonic() - t0) * 1e3
        if len(thumbs) != 1 or not check_size("ours (warm call)", path, png_size(thumbs[0].data)):
            if len(thumbs) != 1:
                fail("ours %s: %d thumbnails" % (path, len(thumbs)))
            return None, None
        if out is not None:
            out[os.path.basename(path)] = png_size(thumbs[0].data) + (len(thumbs[0].data),)
        # the worker logs after sending DONE: it may land just after the call ends
        jm = []
        for _ in range(50):
            jm = self.job_ms(self.new_log())
            if jm:
                break
            time.sleep(0.01)
        return ms, (jm[-1] if jm else None)

    def stop(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------
# Peers, one thumbnail each

MODES = ("keyframe", "accurate")
PB_MODE = {"accurate": 1, "keyframe": 2}

# The tools, as the report names them.
CALL = "ours: warm server, one gRPC call (Python client, upload incl.)"
WORKER = "ours: warm worker (its job time)"
CLIENT = "ours: thumbnail_client, fresh process (upload incl.)"
FFMPEG = {"keyframe": "ffmpeg CLI, keyframe (-skip_frame nokey -noaccurate_seek)",
          "accurate": "ffmpeg CLI, accurate (-ss T -i)"}
FT = "ffmpegthumbnailer (libpng defaults: level 6, adaptive filter)"
ENGINE = "engine in-process (tn_engine_bench)"
LIMIT = "limit in-process (tn_limit)"

DURATIONS = {}


def at_seconds(f, pct):
    """pct % of f's duration, for the ffmpeg CLI (the others take a percentage)."""
    if f not in DURATIONS:
        DURATIONS[f] = ffprobe_duration(f)
    return "%.3f" % (DURATIONS[f] * pct / 100)


def ffmpeg_cmd(f, mode, out, pct=AT):
    """The ffmpeg CLI making our thumbnail: one decoder thread (-threads 1 before -i),
    one filter and encoder thread, the same scaler (area, as ours when shrinking) and
    the same PNG (zlib level, SUB prediction). Keyframe mode: only keyframes decoded,
    and the one the seek lands on kept, as ours does."""
    skip = ["-skip_frame", "nokey", "-noaccurate_seek"] if mode == "keyframe" else []
    return (["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-filter_threads", str(THREADS),
             "-threads", str(THREADS)] + skip +
            ["-ss", at_seconds(f, pct), "-i", f, "-frames:v", "1",
             "-vf", "scale=%d:-2:flags=area" % WIDTH, "-threads", str(THREADS),
             "-c:v", "png", "-compression_level", str(PNG_LEVEL), "-pred", PNG_FILTER, out])


def ft_cmd(f, out, pct=AT):
    """ffmpegthumbnailer: a keyframe thumbnailer; its decoder keeps libavcodec's default
    of one thread; it has no PNG options (libpng's defaults)."""
    return ["ffmpegthumbnailer", "-i", f, "-o", out, "-s", str(WIDTH), "-t", "%d%%" % pct]


def client_cmd(client, addr, mode, indir, outdir, jobs=1):
    """Our client as a user runs it: the files uploaded whole (--no-pull)."""
    return [client, "--quiet", "--overwrite", "--no-pull", "--server", addr, "--mode", mode,
            "--at", "%d%%" % AT, "--width", str(WIDTH), "--height", "0", "--jobs", str(jobs),
            indir, outdir]


class Peers:
    def __init__(self, build, work, have_ft):
        self.build = build
        self.work = work
        self.have_ft = have_ft
        self.limit = os.path.join(build, "bench", "tn_limit")
        self.engine = os.path.join(build, "bench", "tn_engine_bench")
        self.client = os.path.join(build, "src", "client", "thumbnail_client")
        self.out = os.path.join(work, "peer-out")
        os.makedirs(self.out, exist_ok=True)
        self.outputs = {}  # tool -> file name -> (w, h, bytes): the last output of each

    def one_cli(self, tool, f, cmd, out):
        """A peer's fresh process: (wall ms, CPU ms) or (None, None)."""
        if os.path.exists(out):
            os.unlink(out)
        ms, cpu = timed(cmd)
        if ms is None:
            return None, None
        size, nbytes = png_file_size(out)
        if not check_size(tool, f, size):
            return None, None
        self.outputs.setdefault(tool, {})[os.path.basename(f)] = size + (nbytes,)
        return ms, cpu

    def ffmpeg(self, f, mode, pct=AT):
        out = os.path.join(self.out, "ff-%s.png" % mode)
        return self.one_cli(FFMPEG[mode], f, ffmpeg_cmd(f, mode, out, pct), out)

    def ft(self, f, pct=AT):
        out = os.path.join(self.out, "ft.png")
        return self.one_cli(FT, f, ft_cmd(f, out, pct), out)

    def client_fresh(self, server, f, mode):
        """Our real client as a fresh process on a directory holding only f."""
        d = os.path.join(self.work, "one-in")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        os.symlink(f, os.path.join(d, os.path.basename(f)))
        o = os.path.join(self.work, "one-out")
        shutil.rmtree(o, ignore_errors=True)
        ms, cpu = timed(client_cmd(self.client, server.addr, mode, d, o))
        if ms is None:
            return None, None
        pngs = os.listdir(o) if os.path.isdir(o) else []
        if len(pngs) != 1:
            fail("client on %s: %d outputs" % (f, len(pngs)))
            return None, None
        size, nbytes = png_file_size(os.path.join(o, pngs[0]))
        if not check_size(CLIENT, f, size):
            return None, None
        self.outputs.setdefault(CLIENT, {})[os.path.basename(f)] = size + (nbytes,)
        return ms, cpu

    def inproc(self, prog, f, mode, at="10%", n=3, extra=()):
        """Median warm ms (iterations 2..n) of tn_limit / tn_engine_bench, and its fields.
        Every iteration's picture gets the size check."""
        tool = os.path.basename(prog)
        r = run([prog, "--mode", mode, "--at", at, "--n", str(n)] + list(extra) + [f],
                capture_output=True, text=True)
        med = [ln for ln in r.stdout.splitlines() if ln.startswith("median ")]
        its = [dict(kv.split("=", 1) for kv in ln.split()) for ln in r.stdout.splitlines()
               if ln.startswith("iter=")]
        if r.returncode != 0 or not med or not its:
            fail("%s %s %s: exit %d %s" % (tool, mode, f, r.returncode,
                                           (r.stdout + r.stderr)[-300:]))
            return None, {}
        for it in its:
            if not check_size(tool, f, (int(it.get("w", 0)), int(it.get("h", 0)))):
                return None, {}
        if at == "%d%%" % AT and not extra:
            self.outputs.setdefault(tool, {})[os.path.basename(f)] = (
                int(its[-1]["w"]), int(its[-1]["h"]), int(its[-1]["bytes"]))
        fields = dict(kv.split("=") for kv in med[0].split()[1:])
        return float(fields["total"]), {k: float(v) for k, v in fields.items()}


# --------------------------------------------------------------------------
# Measurements

def latency(peers, server, corpus, rounds):
    """Per-thumbnail ms by (mode, peer): interleaved per file, A B C D A B C D. CPU ms of
    the fresh processes by the same keys in the second dict."""
    res, cpu = {}, {}

    def add(mode, peer, f, ms, c=None):
        if ms is not None:
            res.setdefault((mode, peer), []).append((os.path.basename(f), ms))
        if c is not None:
            cpu.setdefault((mode, peer), []).append((os.path.basename(f), c))

    warm = peers.outputs.setdefault(CALL, {})
    for r in range(rounds):
        log("latency: round %d/%d" % (r + 1, rounds))
        for f in corpus:
            for mode in MODES:
                wall, job = server.generate(f, PB_MODE[mode], out=warm)
                add(mode, CALL, f, wall)
                add(mode, WORKER, f, job)
                add(mode, CLIENT, f, *peers.client_fresh(server, f, mode))
                add(mode, FFMPEG[mode], f, *peers.ffmpeg(f, mode))
                if mode == "keyframe" and peers.have_ft:
                    add(mode, FT, f, *peers.ft(f))
                eng, fields = peers.inproc(peers.engine, f, mode)
                add(mode, ENGINE, f, eng, fields.get("cpu"))
                lim, fields = peers.inproc(peers.limit, f, mode)
                add(mode, LIMIT, f, lim, fields.get("cpu"))
    return res, cpu


def xargs_batch(cmds, par, work, tag):
    """(wall ms, CPU ms) of running shell command lines with xargs -P par (1: one at a
    time), the same way for every parallelism setting."""
    path = os.path.join(work, "cmds-%s.txt" % tag)
    with open(path, "w") as fh:
        fh.write("\n".join(cmds) + "\n")
    return timed("xargs -d '\\n' -P %d -I CMD sh -c CMD < %s" % (par, shlex.quote(path)),
                 shell=True)


def par_settings(cores):
    """The parallelism settings every tool is run at: 1, the cores, twice the cores."""
    return sorted({1, cores, 2 * cores})


def batch(peers, server, corpus, cores, rounds):
    """Corpus wall ms by (mode, tool, P); for every P in par_settings(), ours as
    thumbnail_client --jobs P (server with <cores> workers) and each peer as
    xargs -P P, interleaved per round. Every output gets the size check."""
    q = lambda c: " ".join(shlex.quote(x) for x in c)  # noqa: E731
    cdir = os.path.dirname(corpus[0])
    res = {}
    outd = os.path.join(peers.work, "batch-out")
    for r in range(rounds):
        log("batch: round %d/%d" % (r + 1, rounds))
        for mode in MODES:
            for par in par_settings(cores):
                confs = [(CLIENT, None, client_cmd(peers.client, server.addr, mode, cdir, outd,
                                                   jobs=par))]
                confs.append((FFMPEG[mode], [q(ffmpeg_cmd(f, mode, os.path.join(outd, "%d.png" % i)))
                                             for i, f in enumerate(corpus)], None))
                if mode == "keyframe" and peers.have_ft:
                    confs.append((FT, [q(ft_cmd(f, os.path.join(outd, "%d.png" % i)))
                                       for i, f in enumerate(corpus)], None))
                for tool, lines, cmd in confs:
                    shutil.rmtree(outd, ignore_errors=True)
                    os.makedirs(outd)
                    ms, _ = timed(cmd) if cmd else xargs_batch(lines, par, peers.work, "b")
                    if ms is None:
                        continue
                    # which output is which file: ours names them after the input
                    ok = len(os.listdir(outd)) == len(corpus)
                    for i, f in enumerate(corpus):
                        if not ok:
                            break
                        name = ("%d.png" % i if lines else
                                next((p for p in os.listdir(outd)
                                      if p.startswith(os.path.splitext(os.path.basename(f))[0])),
                                     ""))
                        ok = check_size("%s batch" % tool, f,
                                        png_file_size(os.path.join(outd, name))[0])
                    if not ok:
                        fail("batch %s %s -P %d: %d outputs for %d files" % (
                            mode, tool, par, len(os.listdir(outd)), len(corpus)))
                        continue
                    res.setdefault((mode, tool, par), []).append(ms)
    return res


def throughput(build, work, corpus, cores, copies, quick):
    """thumbnails/s through the real client for workers 1..N x client --jobs; uploads,
    and ("local:MODE" keys) local mode, where nothing is uploaded: how the workers scale
    when the client and the front do not share the cores with them for the upload."""
    indir = os.path.join(work, "tput-in")
    shutil.rmtree(indir, ignore_errors=True)
    os.makedirs(indir)
    for k in range(copies):
        for f in corpus:
            dst = os.path.join(indir, "%d_%s" % (k, os.path.basename(f)))
            try:  # hard links: local mode refuses symlinks that lead out of --media-root
                os.link(f, dst)
            except OSError:
                shutil.copyfile(f, dst)
    n = copies * len(corpus)
    client = os.path.join(build, "src", "client", "thumbnail_client")
    outd = os.path.join(work, "tput-out")
    res = {}
    workers = sorted({1, cores} | ({2 * cores} if not quick else set()))
    for w in workers:
        srv = Server(build, work, w, ["--media-root", indir])
        try:
            runs = [(mode, jobs, "--no-pull") for mode in MODES for jobs in par_settings(cores)]
            runs += [(mode, 2 * cores, "--local") for mode in MODES]
            for mode, jobs, how in runs:
                key = (mode if how == "--no-pull" else "local:" + mode, w, jobs)
                shutil.rmtree(outd, ignore_errors=True)
                cmd = client_cmd(client, srv.addr, mode, indir, outd, jobs)
                cmd[cmd.index("--no-pull")] = how
                ms, _ = timed(cmd)
                got = len(os.listdir(outd)) if os.path.isdir(outd) else 0
                if ms is not None and got == n:
                    res[key] = n / (ms / 1e3)
                    log("throughput %s workers=%d jobs=%d: %.2f/s" % (key[0], w, jobs,
                                                                      n / (ms / 1e3)))
                elif ms is not None:
                    fail("throughput %s w=%d j=%d: %d of %d" % (key[0], w, jobs, got, n))
        finally:
            srv.stop()
    return res, n


def wait_listening(port, timeout=10):
    """Until something listens on 127.0.0.1:port (read from /proc/net/tcp, so that no
    test connection is spent on a one-connection listener)."""
    want = ":%04X" % port
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                local, st = line.split()[1], line.split()[3]
                if local.endswith(want) and st == "0A":
                    return
        time.sleep(0.01)
    raise RuntimeError("nothing listens on port %d" % port)


def socat_cmds(path, port):
    """The C baseline: socat reading the file and sending it over loopback TCP, and
    socat receiving it into /dev/null; 1 MiB buffers, the chunk our client sends."""
    rx = ["socat", "-u", "-b", str(1 << 20), "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr" % port,
          "GOPEN:/dev/null"]
    tx = ["socat", "-u", "-b", str(1 << 20), "OPEN:%s,rdonly" % path, "TCP:127.0.0.1:%d" % port]
    return rx, tx


def raw_tcp(path, free_port):
    """(MB/s, CPU ms of both ends) of moving the file's bytes over loopback TCP with socat."""
    port = free_port()
    rx_cmd, tx_cmd = socat_cmds(path, port)
    c0 = children_cpu_ms()
    rx = subprocess.Popen(rx_cmd, stdin=subprocess.DEVNULL)
    try:
        wait_listening(port)
        t0 = time.monotonic()
        tx = run(tx_cmd)
        rc = rx.wait(300)
        dt = time.monotonic() - t0
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    if tx.returncode or rc:
        fail("socat loopback transfer of %s: exit %d/%d" % (path, tx.returncode, rc))
        return None, None
    return os.path.getsize(path) / dt / 1e6, children_cpu_ms() - c0


def upload(build, server, path, rounds):
    """Our upload MB/s (front: bytes / (call time - worker job time); and end to end
    through the real client) vs the socat loopback transfer, interleaved."""
    client = os.path.join(build, "src", "client", "thumbnail_client")
    d = os.path.join(os.path.dirname(server.log_path), "up")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    os.symlink(path, os.path.join(d, os.path.basename(path)))
    size = os.path.getsize(path)
    ours, ours_e2e, raw, raw_cpu, front_cpu, client_cpu = [], [], [], [], [], []
    mb = size / 1e6
    for _ in range(rounds):
        mbps, cpu = raw_tcp(path, server.h.free_port)
        if mbps is not None:
            raw.append(mbps)
            raw_cpu.append(cpu / mb)
        server.new_log()
        f0 = server.h.proc_stat(server.front)["cpu"]
        t0 = time.monotonic()
        ms, cpu = timed(client_cmd(client, server.addr, "keyframe", d, os.path.join(d, "out")))
        wall = time.monotonic() - t0
        front_cpu.append((server.h.proc_stat(server.front)["cpu"] - f0) * 10 / mb)
        time.sleep(0.1)
        text = server.new_log()
        calls = server.front_call_ms(text)
        jobs = server.job_ms(text)
        if ms is None or not calls or not jobs:
            fail("upload of %s" % path)
            continue
        client_cpu.append(cpu / mb)
        ours.append(size / ((calls[-1][1] - jobs[-1]) / 1e3) / 1e6)
        ours_e2e.append(size / wall / 1e6)
    shutil.rmtree(d, ignore_errors=True)
    return {"bytes": size, "raw": raw, "ours": ours, "ours_e2e": ours_e2e, "raw_cpu": raw_cpu,
            "front_cpu": front_cpu, "client_cpu": client_cpu,
            "raw_cmd": " ".join(socat_cmds("FILE", 0)[0]).replace(":0,", ":PORT,") + " & " +
            " ".join(socat_cmds("FILE", 0)[1]).replace(":0", ":PORT")}


def rss(build, work, big_gib, n_conc, conc_mib):
    """The front's VmHWM: warm and idle; after one big upload; after n concurrent ones.
    The files are sparse (contents do not matter to the front, which only spools them;
    the worker then rejects them as not a video)."""
    client = os.path.join(build, "src", "client", "thumbnail_client")
    out = {}
    d = os.path.join(work, "rss")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "big"))
    os.makedirs(os.path.join(d, "conc"))
    with open(os.path.join(d, "big", "big.mp4"), "wb") as f:
        f.truncate(int(big_gib * (1 << 30)))
    for i in range(n_conc):
        with open(os.path.join(d, "conc", "c%d.mp4" % i), "wb") as f:
            f.truncate(conc_mib << 20)
    for tag, sub, jobs in (("big", "big", 1), ("conc", "conc", n_conc)):
        srv = Server(build, work, 2, ["--max-upload-bytes", "16G"])
        try:
            out["idle"] = max(out.get("idle", 0), srv.hwm())
            t0 = time.monotonic()
            run([client, "--quiet", "--no-pull", "--server", srv.addr, "--jobs", str(jobs), "--retries", "0",
                 os.path.join(d, sub), os.path.join(d, "out")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dt = time.monotonic() - t0
            want = int(big_gib * (1 << 30)) if tag == "big" else n_conc * (conc_mib << 20)
            # The front writes a call's access line after its status went out: the
            # client may exit before the last lines are there.
            text, nin, deadline = "", 0, time.monotonic() + 5
            while True:
                text += srv.new_log()
                nin = sum(int(kv.split("=")[1]) for ln in text.splitlines()
                          if "Generate peer=" in ln for kv in ln.split() if kv.startswith("in="))
                if nin >= want or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            out[tag] = srv.hwm()
            out[tag + "_bytes_in"] = nin
            out[tag + "_s"] = dt
            if nin != want:
                fail("rss %s: the front received %d of %d bytes" % (tag, nin, want))
        finally:
            srv.stop()
    shutil.rmtree(d, ignore_errors=True)
    return out


def position(peers, server, short, long_, rounds):
    """ms at 10/50/90 % of the short and the 10x longer clip, by mode: ours (worker job
    time and the warm call), the limit and ffmpeg."""
    res = {}
    for r in range(rounds):
        for clip, tag in ((short, "short"), (long_, "long")):
            for pct in (10, 50, 90):
                for mode in MODES:
                    wall, job = server.generate(clip, PB_MODE[mode], "%d%%" % pct)
                    lim = peers.inproc(peers.limit, clip, mode, "%d%%" % pct)[0]
                    ffm = peers.ffmpeg(clip, mode, pct)[0]
                    for peer, v in (("worker", job), ("call", wall), ("limit", lim),
                                    ("ffmpeg", ffm)):
                        if v is not None:
                            res.setdefault((mode, tag, pct, peer), []).append(v)
    return res


def threading_opts(peers, clip, n):
    """tn_limit on clip at 10 %: decoder threading by mode, alone and two at once (both
    cores busy, as with two busy workers: thumbnails/s is what counts there)."""
    res = {}
    for mode in MODES:
        for th in ("none", "slice", "frame"):
            alone, fields = peers.inproc(peers.limit, clip, mode, "10%", n, ["--threads", th])
            procs = [subprocess.Popen([peers.limit, "--mode", mode, "--n", str(n), "--threads",
                                       th, clip], stdout=subprocess.PIPE, text=True)
                     for _ in range(2)]
            meds = []
            for p in procs:
                o, _ = p.communicate()
                m = [ln for ln in o.splitlines() if ln.startswith("median ")]
                if p.returncode == 0 and m:
                    meds.append(float(m[0].split()[1].split("=")[1]))
            res[(mode, th)] = (alone, median(meds) if len(meds) == 2 else None,
                               fields.get("cpu"))
    return res


def png_opts(peers, clip, n):
    res = {}
    for level in (1, 3, 6, 9):
        for filt in ("none", "sub", "paeth", "all"):
            r = run([peers.limit, "--mode", "keyframe", "--n", str(n), "--level", str(level),
                     "--filter", filt, clip], capture_output=True, text=True)
            lines = r.stdout.splitlines()
            med = [ln for ln in lines if ln.startswith("median ")]
            it = [ln for ln in lines if ln.startswith("iter=")]
            if r.returncode or not med or not it:
                fail("tn_limit png %d %s" % (level, filt))
                continue
            f = dict(kv.split("=") for kv in med[0].split()[1:])
            b = dict(kv.split("=") for kv in it[-1].split())
            res[(level, filt)] = (float(f["png"]), int(b["bytes"]))
    # find_stream_info always vs only when the header is not enough
    for probe in (False, True):
        ms, f = peers.inproc(peers.limit, clip, "keyframe", "10%", n,
                             ["--probe"] if probe else [])
        res[("probe", probe)] = (f.get("open"), ms)
    return res


# --------------------------------------------------------------------------
# Report

def fmt(v, unit=""):
    if v is None or v != v:
        return "–"
    if v >= 100:
        return "%.0f%s" % (v, unit)
    if v >= 10:
        return "%.1f%s" % (v, unit)
    return "%.2f%s" % (v, unit)


def ratio(a, b):
    if not a or not b or a != a or b != b:
        return "–"
    return "%.2f×" % (a / b)


def per_file(lat, mode, tool):
    """file name -> median ms of that tool on that file."""
    by = {}
    for name, v in lat.get((mode, tool), []):
        by.setdefault(name, []).append(v)
    return {k: median(v) for k, v in by.items()}


def compare(lat, mode, a, b):
    """(mean over files of a's per-file medians, the same for b, min and max of the
    per-file ratios), over the files both have: a ratio of like with like."""
    fa, fb = per_file(lat, mode, a), per_file(lat, mode, b)
    common = sorted(set(fa) & set(fb))
    if not common:
        return None, None, None, None
    ma = sum(fa[k] for k in common) / len(common)
    mb = sum(fb[k] for k in common) / len(common)
    rs = [fa[k] / fb[k] for k in common if fb[k]]
    return ma, mb, min(rs) if rs else None, max(rs) if rs else None


def report(args, out, info, lat, cpu, outputs, bat, tput, tput_n, up, mem, pos, thr, png):
    L = []
    w = L.append
    cores = info["cores"]
    w("# thumbnail_server benchmark — %s%s" % (info["date"], " (quick)" if args.quick else ""))
    w("")
    w("| provenance | |")
    w("|---|---|")
    w("| command | `%s` |" % info["command"])
    w("| commit | `%s` |" % info["commit"])
    w("| date | %s, %.0f s |" % (info["date"], info["seconds"]))
    w("| host | %d cores, %s; %s |" % (cores, info["cpu"], info["kernel"]))
    w("| load average (1/5/15 min) | %s at start, %s at end |" % (info["load_start"],
                                                                  info["load_end"]))
    w("| tools | %s |" % "; ".join(info["versions"]))
    w("| corpus | %s |" % ", ".join("%s (%.1f MB)" % (os.path.basename(f), s / 1e6)
                                    for f, s in zip(info["corpus"], info["corpus_bytes"])))
    w("| rounds | latency %d, batch %d |" % (args.rounds, args.batch_rounds))
    w("")
    w("Like for like: every tool makes one %d-px-wide PNG at %d %% of each file (height by "
      "the aspect ratio; every output is checked: %d px wide, height within 2 px), decodes "
      "with **%d thread** (our workers' setting; parallelism comes from processes: server "
      "workers, `--jobs`, `xargs -P`), and writes the PNG at **zlib level %d, %s filter** "
      "where it can be told (ours, ffmpeg `-compression_level %d -pred %s`, tn_limit). "
      "ffmpegthumbnailer has no such options (libpng's defaults, level 6 and adaptive "
      "filtering: see the PNG table for its cost). Parallelism settings, the same for "
      "every tool: P = %s (ours `--jobs P` against a server with %d workers; peers "
      "`xargs -P P`). Ours uploads each file whole (`--no-pull`)." % (
          WIDTH, AT, WIDTH, THREADS, PNG_LEVEL, PNG_FILTER.upper(), PNG_LEVEL, PNG_FILTER,
          ", ".join(str(p) for p in par_settings(cores)), cores))
    w("")
    w("## Summary: ours ÷ peer (below 1: ours is faster)")
    w("")
    w("Per-thumbnail ms: the mean over the corpus of each file's median; ratio of those "
      "means, with the range of the per-file ratios.")
    w("")
    w("| mode | ours | peer | ours ms | peer ms | ours ÷ peer | per file |")
    w("|---|---|---|---:|---:|---:|---|")
    for mode in MODES:
        pairs = [(CLIENT, FFMPEG[mode]), (CALL, FFMPEG[mode])]
        if mode == "keyframe":
            pairs += [(CLIENT, FT), (CALL, FT)]
        pairs += [(WORKER, LIMIT), (ENGINE, LIMIT)]
        for a, b in pairs:
            ma, mb, lo, hi = compare(lat, mode, a, b)
            w("| %s | %s | %s | %s | %s | %s | %s |" % (
                mode, a, b, fmt(ma), fmt(mb), ratio(ma, mb),
                "–" if lo is None else "%.2f–%.2f" % (lo, hi)))
        # CPU time does not grow with the host's load: the fairer test of the limit
        ma, mb, lo, hi = compare(cpu, mode, ENGINE, LIMIT)
        w("| %s | %s, CPU ms | %s, CPU ms | %s | %s | %s | %s |" % (
            mode, ENGINE, LIMIT, fmt(ma), fmt(mb), ratio(ma, mb),
            "–" if lo is None else "%.2f–%.2f" % (lo, hi)))
    for mode in MODES:
        for par in par_settings(cores):
            ours = median(bat.get((mode, CLIENT, par), []))
            peers_ = {k[1]: median(v) for k, v in bat.items()
                      if k[0] == mode and k[2] == par and k[1] != CLIENT}
            if not peers_:
                continue
            best = min(peers_, key=peers_.get)
            w("| %s | corpus batch, thumbnail_client --jobs %d | fastest peer at xargs -P %d: "
              "%s | %s | %s | %s | |" % (mode, par, par, best, fmt(ours), fmt(peers_[best]),
                                         ratio(ours, peers_[best])))
    raw = median(up["raw"])
    w("| upload | front, MB/s | raw TCP loopback, socat (C), MB/s | %s | %s | %s (higher is "
      "better) | |" % (fmt(median(up["ours"])), fmt(raw), ratio(median(up["ours"]), raw)))
    w("| upload | thumbnail_client end to end, MB/s | raw TCP loopback, socat (C), MB/s | %s "
      "| %s | %s (higher is better) | |" % (fmt(median(up["ours_e2e"])), fmt(raw),
                                             ratio(median(up["ours_e2e"]), raw)))
    w("")
    p1, p6 = png.get((PNG_LEVEL, PNG_FILTER)), png.get((6, "all"))
    if p1 and p6:
        w("ffmpegthumbnailer's PNG (level 6, adaptive) on a %d-px frame costs %s ms against "
          "%s ms at level %d/%s (tn_limit, PNG table below): %s ms of its time is that "
          "choice." % (WIDTH, fmt(p6[0]), fmt(p1[0]), PNG_LEVEL, PNG_FILTER.upper(),
                       fmt(p6[0] - p1[0])))
        w("")

    w("## Per-thumbnail latency (ms), interleaved per file")
    w("")
    w("CPU ms: user + system time of the process and its threads (fresh processes, "
      "tn_engine_bench, tn_limit): it does not move with the host's load as wall time "
      "does, and CPU ≈ wall on a quiet host shows one thread at work. Our fresh client's "
      "is the client process alone: the server's work is not in it.")
    w("")
    for mode in MODES:
        lim = compare(lat, mode, LIMIT, LIMIT)[0]
        w("### %s" % mode)
        w("")
        w("| tool | median | p95 | n | CPU ms (median) | mean of per-file medians | ÷ limit |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for (m, tool), vals in lat.items():
            if m != mode:
                continue
            v = [x for _, x in vals]
            c = [x for _, x in cpu.get((m, tool), [])]
            mean = compare(lat, mode, tool, tool)[0]
            w("| %s | %s | %s | %d | %s | %s | %s |" % (tool, fmt(median(v)), fmt(p95(v)), len(v),
                                                       fmt(median(c)), fmt(mean),
                                                       ratio(mean, lim)))
        calls = [v for _, v in lat.get((mode, CALL), [])]
        jobs = [v for _, v in lat.get((mode, WORKER), [])]
        if calls and len(calls) == len(jobs):
            d = [c - j for c, j in zip(calls, jobs)]
            w("")
            w("Upload + gRPC + dispatch + IPC, per call (warm call − its worker job): median "
              "%s ms, p95 %s ms." % (fmt(median(d)), fmt(p95(d))))
        w("")
        tools = [t for (m, t) in lat if m == mode]
        w("Per file, median ms (%s):" % mode)
        w("")
        w("| file | " + " | ".join(tools) + " |")
        w("|---|" + "---:|" * len(tools))
        for f in info["corpus"]:
            b = os.path.basename(f)
            w("| %s | " % b + " | ".join(fmt(per_file(lat, mode, t).get(b)) for t in tools) + " |")
        w("")
    w("## Outputs (the last of each tool per file: width×height, bytes)")
    w("")
    tools = sorted(outputs)
    w("| file | " + " | ".join(tools) + " |")
    w("|---|" + "---:|" * len(tools))
    for f in info["corpus"]:
        b = os.path.basename(f)
        w("| %s | " % b + " | ".join(
            "%d×%d, %d" % tuple(outputs[t][b]) if b in outputs[t] else "–" for t in tools) + " |")
    w("")
    w("## Batch wall time for the corpus (ms, median of rounds)")
    w("")
    for mode in MODES:
        tools = []
        for k in bat:
            if k[0] == mode and k[1] not in tools:
                tools.append(k[1])
        w("### %s" % mode)
        w("")
        w("| P | " + " | ".join(tools) + " | ours ÷ fastest peer |")
        w("|---:|" + "---:|" * (len(tools) + 1))
        for par in par_settings(cores):
            vals = {t: median(bat.get((mode, t, par), [])) for t in tools}
            peer = min((v for t, v in vals.items() if t != CLIENT and v == v), default=None)
            w("| %d | " % par + " | ".join(fmt(vals[t]) for t in tools) + " | %s |" % ratio(
                vals.get(CLIENT), peer))
        w("")
    w("## Throughput (thumbnails/s, %d files through thumbnail_client)" % tput_n)
    w("")
    ws = sorted({k[1] for k in tput})
    js = sorted({k[2] for k in tput})
    for mode in list(MODES) + ["local:" + m for m in MODES]:
        w("### %s" % (mode if not mode.startswith("local:") else
                      mode[6:] + ", local mode (--local: nothing uploaded)"))
        w("")
        w("| workers | " + " | ".join("--jobs %d" % j for j in js) + " |")
        w("|---:|" + "---:|" * len(js))
        for wk in ws:
            w("| %d | " % wk + " | ".join(fmt(tput.get((mode, wk, j))) for j in js) + " |")
        w("")
    w("## Upload (MB/s, %s, %d MB)" % (os.path.basename(info["upload_file"]), up["bytes"] / 1e6))
    w("")
    w("CPU ms/MB: CPU time per MB moved (raw: both socat processes; ours: the front, and the "
      "client separately). It does not depend on the host's load; MB/s does. Raw: `%s`." %
      up["raw_cmd"])
    w("")
    w("| path | median MB/s | runs | ÷ raw TCP | CPU ms/MB |")
    w("|---|---:|---:|---:|---:|")
    w("| raw TCP loopback, socat: read the file, send; receive, discard | %s | %d | 1.00× | %s |"
      % (fmt(raw), len(up["raw"]), fmt(median(up["raw_cpu"]))))
    w("| ours: front (bytes / (call − worker job)), spooled to disk | %s | %d | %s | %s |" % (
        fmt(median(up["ours"])), len(up["ours"]), ratio(median(up["ours"]), raw),
        fmt(median(up["front_cpu"]))))
    w("| ours: thumbnail_client end to end, incl. process start and thumbnail | %s | %d | %s "
      "| %s |" % (fmt(median(up["ours_e2e"])), len(up["ours_e2e"]),
                  ratio(median(up["ours_e2e"]), raw), fmt(median(up["client_cpu"]))))
    w("")
    w("## Front peak RSS (VmHWM)")
    w("")
    w("| situation | VmHWM MB | bytes received | time s |")
    w("|---|---:|---:|---:|")
    w("| warm, idle | %s | | |" % fmt(mem["idle"] / 1e6))
    w("| one %.3g GiB upload | %s | %d | %.1f |" % (args.big_gib, fmt(mem["big"] / 1e6),
                                                  mem["big_bytes_in"], mem["big_s"]))
    w("| %d concurrent %d MiB uploads | %s | %d | %.1f |" % (
        args.conc, args.conc_mib, fmt(mem["conc"] / 1e6), mem["conc_bytes_in"], mem["conc_s"]))
    w("| the latency/batch server after its runs | %s | | |" % fmt(info["hwm_main"] / 1e6))
    w("")
    w("## Cost against clip length and seek position (median ms)")
    w("")
    w("Short clip %s s, long clip %s s (the same encode looped, stream copy; %d MB)." % (
        fmt(info["short_dur"]), fmt(info["long_dur"]), info["long_bytes"] / 1e6))
    w("")
    for mode in MODES:
        w("### %s" % mode)
        w("")
        w("| clip | at | warm worker | warm call (incl. upload) | limit | ffmpeg CLI |")
        w("|---|---:|---:|---:|---:|---:|")
        for tag in ("short", "long"):
            for pct in (10, 50, 90):
                w("| %s | %d %% | " % (tag, pct) + " | ".join(
                    fmt(median(pos.get((mode, tag, pct, p), [])))
                    for p in ("worker", "call", "limit", "ffmpeg")) + " |")
        w("")
    w("## Decoder threading (tn_limit, %s at 10 %%, median ms)" % os.path.basename(info["ref"]))
    w("")
    w("Why one thread: CPU ms is what a thumbnail costs a machine whose cores are all busy, "
      "e.g. with every worker decoding.")
    w("")
    w("| mode | threads | alone, wall | two at once, wall each | CPU ms |")
    w("|---|---|---:|---:|---:|")
    for (mode, th), (a, b, c) in thr.items():
        w("| %s | %s | %s | %s | %s |" % (mode, th, fmt(a), fmt(b), fmt(c)))
    w("")
    w("## PNG level and filter (tn_limit keyframe, %d px: encode ms / bytes)" % WIDTH)
    w("")
    w("| level | none | sub | paeth | all |")
    w("|---:|---:|---:|---:|---:|")
    for level in (1, 3, 6, 9):
        w("| %d | " % level + " | ".join(
            "%s / %d" % (fmt(png[(level, f)][0]), png[(level, f)][1]) if (level, f) in png
            else "–" for f in ("none", "sub", "paeth", "all")) + " |")
    w("")
    w("avformat_find_stream_info: only when the header lacks size/pixel format: open %s ms, "
      "total %s ms; always: open %s ms, total %s ms." % (
          fmt(png[("probe", False)][0]), fmt(png[("probe", False)][1]),
          fmt(png[("probe", True)][0]), fmt(png[("probe", True)][1])))
    w("")
    w("## Targets")
    w("")
    tg = []
    kf_w, kf_l = compare(lat, "keyframe", WORKER, LIMIT)[:2]
    tg.append(("Keyframe thumbnail in a warm worker ≤ 1.3× the limit",
               kf_w / kf_l if kf_w and kf_l else None, 1.3,
               "%s ms / %s ms" % (fmt(kf_w), fmt(kf_l))))
    for mode in MODES:
        e, lm = compare(cpu, mode, ENGINE, LIMIT)[:2]
        # CPU time is the load-independent measure, but a few ms of it still vary by
        # ~10 % between runs on a shared host (caches, frequency): beyond that the
        # limit does more work than the engine and is no limit.
        tg.append(("The limit is one: limit ≤ 1.1× the engine in-process, CPU ms, %s" % mode,
                   lm / e if e and lm else None, 1.1, "%s ms / %s ms" % (fmt(lm), fmt(e))))
    for mode in MODES:
        ours = median(bat.get((mode, CLIENT, cores), []))
        peer = min((median(v) for k, v in bat.items()
                    if k[0] == mode and k[2] == cores and k[1] != CLIENT), default=None)
        tg.append(("Corpus batch %s at P = %d ≤ 0.5× the fastest peer" % (mode, cores),
                   ours / peer if ours == ours and peer else None, 0.5,
                   "%s ms / %s ms" % (fmt(ours), fmt(peer))))
    for mode in list(MODES) + ["local:" + m for m in MODES]:
        t1 = max((v for k, v in tput.items() if k[0] == mode and k[1] == 1), default=None)
        t2 = max((v for k, v in tput.items() if k[0] == mode and k[1] == 2), default=None)
        tg.append(("Throughput %s 1 → 2 workers ≥ 1.8×" % mode, t2 / t1 if t1 and t2 else None,
                   -1.8, "%s/s → %s/s (best --jobs each)" % (fmt(t1), fmt(t2))))
    tg.append(("Upload ≥ 60 % of raw loopback TCP (socat)",
               median(up["ours"]) / raw if raw == raw and up["ours"] else None,
               -0.6, "%s / %s MB/s" % (fmt(median(up["ours"])), fmt(raw))))
    tg.append(("Front RSS ≤ 100 MB, %.3g GiB upload" % args.big_gib, mem["big"] / 1e6, 100,
               "MB"))
    tg.append(("Front RSS ≤ 100 MB, %d × %d MiB concurrent" % (args.conc, args.conc_mib),
               mem["conc"] / 1e6, 100, "MB"))
    for mode in MODES:
        vals = [median(pos.get((mode, t, p, "worker"), [])) for t in ("short", "long")
                for p in (10, 50, 90)]
        # These are a few ms each on the short clip: a spread of a few ms is noise, so
        # flat = within 1.5x or within 5 ms of the fastest.
        flat = max(vals) / min(vals) if vals and min(vals) > 0 else None
        spread = max(vals) - min(vals) if vals else None
        tg.append(("Worker cost flat in length and position, %s (max/min ≤ 1.5, or spread "
                   "≤ 5 ms)" % mode, flat, 1.5, "short 10/50/90 %%, long 10/50/90 %%: %s ms" %
                   " / ".join(fmt(v) for v in vals),
                   spread is not None and spread == spread and spread <= 5))
    w("| target | measured | met |")
    w("|---|---:|---|")
    for name, v, lim, detail, *override in tg:
        if override and override[0]:
            met = "yes"
        elif v is None or v != v:
            met = "–"
        elif lim < 0:
            met = "yes" if v >= -lim else "**no**"
        else:
            met = "yes" if v <= lim else "**no**"
        w("| %s | %s (%s) | %s |" % (name, "–" if v is None or v != v else "%.2f" % v,
                                     detail, met))
    w("")
    if FAILURES:
        w("## Failures")
        w("")
        for f in FAILURES:
            w("- " + f.replace("\n", " "))
        w("")
    w("Raw numbers: results.json (beside this file).")
    with open(os.path.join(args.report_dir, "report.md"), "w") as f:
        f.write("\n".join(L) + "\n")

    # gnuplot data: latency (mean of per-file medians) by tool, throughput by workers
    with open(os.path.join(out, "latency.dat"), "w") as f:
        f.write("tool keyframe accurate\n")
        tools = []
        for (m, t) in lat:
            if t not in tools:
                tools.append(t)
        for t in tools:
            kv = compare(lat, "keyframe", t, t)[0]
            av = compare(lat, "accurate", t, t)[0]
            f.write('"%s" %s %s\n' % (t.replace('"', "'"), "NaN" if kv is None else "%.3f" % kv,
                                      "NaN" if av is None else "%.3f" % av))
    with open(os.path.join(out, "throughput.dat"), "w") as f:
        f.write("workers " + " ".join("%s_j%d" % (m, j) for m in MODES for j in js) + "\n")
        for wk in ws:
            f.write("%d %s\n" % (wk, " ".join("%.3f" % tput[(m, wk, j)] if (m, wk, j) in tput
                                              else "NaN" for m in MODES for j in js)))

    def r3(v):  # small text: ms to the microsecond is all the precision there is
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, (list, tuple)):
            return [r3(x) for x in v]
        if isinstance(v, dict):
            return {k: r3(x) for k, x in v.items()}
        return v

    # file names, not this machine's paths: the report is meant to be committed
    info = dict(info, corpus=[os.path.basename(f) for f in info["corpus"]],
                ref=os.path.basename(info["ref"]), upload_file=os.path.basename(info["upload_file"]))
    results = {"info": info, "settings": {"width": WIDTH, "at_percent": AT, "png_level": PNG_LEVEL,
                                          "png_filter": PNG_FILTER, "decoder_threads": THREADS,
                                          "parallelism": par_settings(cores)},
               "failures": FAILURES,
               "latency_ms": {"%s|%s" % k: v for k, v in lat.items()},
               "cpu_ms": {"%s|%s" % k: v for k, v in cpu.items()},
               "outputs": outputs,
               "batch_ms": {"%s|%s|%d" % k: v for k, v in bat.items()},
               "throughput_per_s": {"%s|%d|%d" % k: v for k, v in tput.items()},
               "upload": up, "rss": mem,
               "position_ms": {"%s|%s|%d|%s" % k: v for k, v in pos.items()},
               "threading_ms": {"%s|%s" % k: v for k, v in thr.items()},
               "png": {"%s|%s" % k: v for k, v in png.items()}}
    with open(os.path.join(args.report_dir, "results.json"), "w") as f:
        f.write("{\n" + ",\n".join("%s: %s" % (json.dumps(k), json.dumps(r3(v), ensure_ascii=False,
                                                                           separators=(",", ":")))
                                   for k, v in results.items()) + "\n}\n")


def sanity(lat, bat, tput, up, mem, pos, thr, png, have_ft, cores):
    """Every measurement produced numbers (a peer that made no thumbnail is already a
    failure; this catches a section that silently measured nothing)."""
    need = [(m, t) for m in MODES for t in (CALL, WORKER, CLIENT, FFMPEG[m], ENGINE, LIMIT)]
    if have_ft:
        need.append(("keyframe", FT))
    for k in need:
        if not lat.get(k):
            fail("no latency figures for %s" % (k,))
    for mode in MODES:
        for par in par_settings(cores):
            tools = [CLIENT, FFMPEG[mode]] + ([FT] if mode == "keyframe" and have_ft else [])
            for t in tools:
                if not bat.get((mode, t, par)):
                    fail("no batch figure for %s, %s, P = %d" % (t, mode, par))
        for m in (mode, "local:" + mode):
            if not any(k[0] == m for k in tput):
                fail("no throughput figure, %s" % m)
    if not up["ours"] or not up["raw"]:
        fail("no upload figures")
    for k in ("idle", "big", "conc"):
        if not mem.get(k):
            fail("no RSS figure for %s" % k)
    if not pos or any(v[0] is None or v[2] is None for v in thr.values()) or len(png) < 10:
        fail("no position/threading/PNG figures")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def first_line(cmd):
    try:
        r = run(cmd, capture_output=True, text=True)
        return ((r.stdout or r.stderr).strip().split("\n") or [""])[0]
    except OSError:
        return "%s: not installed" % cmd[0]


def provenance(args):
    """Where the figures come from: the commit (and whether the tree had changes), the
    host, the tools' versions."""
    git = ["git", "-C", SOURCE]

    def git_out(*a):
        try:
            return run(git + list(a), capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on this machine (a clean container): say so below
            return ""
    commit = (git_out("rev-parse", "--short=12", "HEAD")
              or "unknown (not a git checkout, or no git installed)")
    dirty = git_out("status", "--porcelain", "--untracked-files=no")
    subject = git_out("log", "-1", "--format=%s")
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": args.command or " ".join([sys.argv[0]] + sys.argv[1:]),
            "commit": commit + (" with uncommitted changes" if dirty else "") +
            (" (%s)" % subject if subject else ""),
            "cores": os.cpu_count() or 2, "cpu": cpu,
            "kernel": "%s %s" % (platform.system(), platform.release()),
            "load_start": loadavg(),
            "versions": [first_line(["ffmpeg", "-version"]).split(" Copyright")[0],
                         first_line(["ffmpegthumbnailer", "-v"]).replace(" version:", ""),
                         socat_version()]}


def socat_version():
    r = run(["socat", "-V"], capture_output=True, text=True)
    return next((" ".join(ln.split()[:3]) for ln in r.stdout.splitlines()
                 if ln.startswith("socat version")), "socat")


def print_cmd(argv):
    """bench.py cmd TOOL MODE INPUT OUT [--build DIR] [--server ADDR]: the command line
    this benchmark runs, shell-quoted (bench/compare.sh times the same commands)."""
    ap = argparse.ArgumentParser(prog="bench.py cmd")
    ap.add_argument("tool", choices=("ffmpeg", "ffmpegthumbnailer", "client"))
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("input", help="the video (a directory for client)")
    ap.add_argument("out", help="the PNG (a directory for client)")
    ap.add_argument("--build", default=os.path.join(SOURCE, "build"))
    ap.add_argument("--server", default="127.0.0.1:50051")
    a = ap.parse_args(argv)
    if a.tool == "ffmpeg":
        cmd = ffmpeg_cmd(a.input, a.mode, a.out)
    elif a.tool == "ffmpegthumbnailer":
        cmd = ft_cmd(a.input, a.out)
    else:
        cmd = client_cmd(os.path.join(os.path.abspath(a.build), "src", "client",
                                      "thumbnail_client"), a.server, a.mode, a.input, a.out)
    print(" ".join(shlex.quote(x) for x in cmd))
    return 0


def main():
    if sys.argv[1:2] == ["cmd"]:
        return print_cmd(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True, help="gnuplot data and the plot")
    ap.add_argument("--report-dir", help="report.md and results.json (default: --out)")
    ap.add_argument("--command", help="the command line to record in the report")
    ap.add_argument("--corpus", help="take this directory of videos instead of making one")
    ap.add_argument("--work", help="where to make the corpus and scratch files")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--batch-rounds", type=int)
    ap.add_argument("--big-gib", type=float)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--conc-mib", type=int)
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 5)
    args.batch_rounds = args.batch_rounds or (1 if q else 3)
    args.big_gib = args.big_gib or (0.25 if q else 4)
    args.conc_mib = args.conc_mib or (16 if q else 256)
    build = os.path.abspath(args.build)
    os.environ["TN_BUILD_DIR"] = build
    os.environ["TN_SOURCE_DIR"] = SOURCE
    sys.path.insert(0, os.path.join(SOURCE, "tests", "integration"))
    import harness  # noqa: F401  (generates the gRPC stubs)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    args.report_dir = os.path.abspath(args.report_dir or out)
    os.makedirs(args.report_dir, exist_ok=True)
    work = os.path.abspath(args.work or os.path.join(out, "work"))
    os.makedirs(work, exist_ok=True)
    info = provenance(args)
    cores = info["cores"]
    have_ft = shutil.which("ffmpegthumbnailer") is not None
    if not have_ft:
        fail("ffmpegthumbnailer is not installed (apt-get install ffmpegthumbnailer)")
    corpus = ([os.path.join(args.corpus, n) for n in sorted(os.listdir(args.corpus))
               if not n.startswith(".")] if args.corpus
              else make_corpus(os.path.join(work, "corpus"), q))
    corpus = [os.path.abspath(f) for f in corpus]
    for f in corpus:
        expected_height(f)  # refuses a file narrower than WIDTH before anything is measured
    info["corpus"] = corpus
    info["corpus_bytes"] = [os.path.getsize(f) for f in corpus]
    info["ref"] = next((f for f in corpus if "1080p" in f), corpus[0])
    short, long_ = make_long(os.path.join(work, "long"), q)
    info.update(short_dur=ffprobe_duration(short), long_dur=ffprobe_duration(long_),
                long_bytes=os.path.getsize(long_))
    peers = Peers(build, work, have_ft)

    t_all = time.monotonic()
    srv = Server(build, work, cores)
    try:
        # warm-up: one of each, not counted
        for mode in MODES:
            srv.generate(corpus[0], PB_MODE[mode])
        lat, cpu = latency(peers, srv, corpus, args.rounds)
        bat = batch(peers, srv, corpus, cores, args.batch_rounds)
        log("cost against length and position")
        pos = position(peers, srv, short, long_, 1 if q else 3)
        log("upload")
        upfile = long_ if q else max(corpus + [long_], key=os.path.getsize)
        info["upload_file"] = upfile
        up = upload(build, srv, upfile, 2 if q else 5)
        info["hwm_main"] = srv.hwm()
    finally:
        srv.stop()
    log("throughput")
    tput, tput_n = throughput(build, work, corpus, cores, 2 if q else 3, q)
    log("front RSS")
    mem = rss(build, work, args.big_gib, args.conc, args.conc_mib)
    log("threading and PNG options")
    thr = threading_opts(peers, info["ref"], 3 if q else 6)
    png = png_opts(peers, info["ref"], 3 if q else 6)
    sanity(lat, bat, tput, up, mem, pos, thr, png, have_ft, cores)
    info["load_end"] = loadavg()
    info["seconds"] = time.monotonic() - t_all
    report(args, out, info, lat, cpu, peers.outputs, bat, tput, tput_n, up, mem, pos, thr, png)
    log("report: %s (%.0f s)" % (os.path.join(args.report_dir, "report.md"), info["seconds"]))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
