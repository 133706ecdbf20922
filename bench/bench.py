#!/usr/bin/python3
"""The benchmark driver behind bench/run.sh (see README "Benchmark").

Makes (or takes) a corpus, then measures, interleaved per file so that every
peer sees the same machine noise:
  * per-thumbnail latency of one 320-px PNG at 10 % by mode (keyframe,
    accurate): our warm server (Python grpcio on one open channel, and the
    worker's own job time from the server log), our client as a fresh process
    per file, ffmpegthumbnailer, the ffmpeg CLI (accurate and keyframe-only),
    the engine in-process (tn_engine_bench) and the limit (tn_limit);
  * batch wall time for the corpus: thumbnail_client --jobs N vs each peer
    serially and with xargs -P <cores>;
  * thumbnails/s for 1..N workers x client concurrency;
  * upload MB/s against a raw TCP loopback transfer of the same bytes;
  * the front's peak RSS (VmHWM), warm and for big uploads;
  * cost against clip length and seek position (10/50/90 % of a 10-minute clip);
  * decoder threading (none/slice/frame) and PNG level/filter with tn_limit.
Writes report.md, data files for gnuplot and results.json into --out.
Exit status 1 when any peer (or ours) failed to produce a thumbnail.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)

FAILURES = []


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def fail(what):
    FAILURES.append(what)
    log("FAILED: " + what)


def run(cmd, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, **kw)


def timed(cmd, shell=False):
    """Wall ms of one command; None (and a recorded failure) if it failed."""
    t0 = time.monotonic()
    r = run(cmd, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ms = (time.monotonic() - t0) * 1e3
    if r.returncode != 0:
        fail("%s: exit %d: %s" % (cmd if shell else " ".join(cmd), r.returncode,
                                  r.stderr.decode(errors="replace")[-300:]))
        return None
    return ms


def is_png(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 100
    except OSError:
        return False


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
        """The worker's job times (ms) in the log text: "job N name [..]: OK, 1 thumbnails, X ms"."""
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

    def generate(self, path, mode, at="10%"):
        """One call on the warm channel: (wall ms, worker ms) or (None, None)."""
        self.new_log()
        t0 = time.monotonic()
        try:
            thumbs = self.h.collect(self.stub.Generate(self.h.generate_requests(
                path=path, times=[at], max_width=320, mode=mode, chunk=1 << 20), timeout=300))
        except Exception as e:  # grpc.RpcError
            fail("ours %s %s: %s" % (os.path.basename(path), mode, e))
            return None, None
        ms = (time.monotonic() - t0) * 1e3
        if len(thumbs) != 1 or not thumbs[0].data.startswith(b"\x89PNG"):
            fail("ours %s: no PNG" % path)
            return None, None
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
        self.dur = {}

    def t10(self, f, pct=10):
        if f not in self.dur:
            self.dur[f] = ffprobe_duration(f)
        return "%.3f" % (self.dur[f] * pct / 100)

    def ffmpeg_cmd(self, f, mode, out, pct=10):
        # keyframe only: decode keyframes alone, and keep the one the seek lands on
        skip = ["-skip_frame", "nokey", "-noaccurate_seek"] if mode == "keyframe" else []
        return (["ffmpeg", "-nostdin", "-loglevel", "error", "-y"] + skip +
                ["-ss", self.t10(f, pct), "-i", f, "-frames:v", "1", "-vf", "scale=320:-2", out])

    def ft_cmd(self, f, out, pct=10):
        return ["ffmpegthumbnailer", "-i", f, "-o", out, "-s", "320", "-t", "%d%%" % pct]

    def one_cli(self, cmd, out):
        if os.path.exists(out):
            os.unlink(out)
        ms = timed(cmd)
        if ms is not None and not is_png(out):
            fail("%s produced no PNG" % " ".join(cmd))
            return None
        return ms

    def ffmpeg(self, f, mode, pct=10):
        out = os.path.join(self.out, "ff-%s.png" % mode)
        return self.one_cli(self.ffmpeg_cmd(f, mode, out, pct), out)

    def ft(self, f, pct=10):
        out = os.path.join(self.out, "ft.png")
        return self.one_cli(self.ft_cmd(f, out, pct), out)

    def client_fresh(self, server, f, mode):
        """Our real client as a fresh process on a directory holding only f."""
        d = os.path.join(self.work, "one-in")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        os.symlink(f, os.path.join(d, os.path.basename(f)))
        o = os.path.join(self.work, "one-out")
        shutil.rmtree(o, ignore_errors=True)
        ms = timed([self.client, "--quiet", "--no-pull", "--server", server.addr, "--mode", mode, "--at",
                    "10%", d, o])
        pngs = [p for p in os.listdir(o)] if os.path.isdir(o) else []
        if ms is not None and (len(pngs) != 1 or not is_png(os.path.join(o, pngs[0]))):
            fail("client on %s produced no PNG" % f)
            return None
        return ms

    def inproc(self, prog, f, mode, at="10%", n=3, extra=()):
        """Median warm ms (iterations 2..n) of tn_limit / tn_engine_bench, and its fields."""
        r = run([prog, "--mode", mode, "--at", at, "--n", str(n)] + list(extra) + [f],
                capture_output=True, text=True)
        med = [ln for ln in r.stdout.splitlines() if ln.startswith("median ")]
        if r.returncode != 0 or not med:
            fail("%s %s %s: exit %d %s" % (os.path.basename(prog), mode, f, r.returncode,
                                           (r.stdout + r.stderr)[-300:]))
            return None, {}
        fields = dict(kv.split("=") for kv in med[0].split()[1:])
        return float(fields["total"]), {k: float(v) for k, v in fields.items()}


# --------------------------------------------------------------------------
# Measurements

def latency(peers, server, corpus, rounds):
    """Per-thumbnail ms by (mode, peer): interleaved per file, A B C D A B C D."""
    res = {}

    def add(mode, peer, f, ms):
        if ms is not None:
            res.setdefault((mode, peer), []).append((os.path.basename(f), ms))

    for r in range(rounds):
        log("latency: round %d/%d" % (r + 1, rounds))
        for f in corpus:
            for mode in MODES:
                wall, job = server.generate(f, PB_MODE[mode])
                add(mode, "ours: warm server, gRPC call (Python client)", f, wall)
                add(mode, "ours: warm worker (job time)", f, job)
                add(mode, "ours: thumbnail_client, fresh process", f,
                    peers.client_fresh(server, f, mode))
                add(mode, "ffmpeg -ss T -i" + (" -skip_frame nokey -noaccurate_seek" if mode == "keyframe"
                                               else ""), f, peers.ffmpeg(f, mode))
                if mode == "keyframe" and peers.have_ft:
                    add(mode, "ffmpegthumbnailer -s 320 -t 10%", f, peers.ft(f))
                add(mode, "engine in-process (tn_engine_bench)", f,
                    peers.inproc(peers.engine, f, mode)[0])
                add(mode, "limit (tn_limit)", f, peers.inproc(peers.limit, f, mode)[0])
    return res


def xargs_batch(cmds, par, work, tag):
    """Wall ms of running shell command lines serially (par=1) or with xargs -P par."""
    path = os.path.join(work, "cmds-%s.txt" % tag)
    with open(path, "w") as fh:
        fh.write("\n".join(cmds) + "\n")
    if par == 1:
        return timed("sh -e %s" % path, shell=True)
    return timed("xargs -d '\\n' -P %d -I CMD sh -c CMD < %s" % (par, path), shell=True)


def batch(peers, server, corpus, cores, rounds):
    """Corpus wall ms by (mode, configuration); configurations interleaved per round."""
    import shlex
    q = lambda c: " ".join(shlex.quote(x) for x in c)  # noqa: E731
    cdir = os.path.dirname(corpus[0])
    res = {}
    outd = os.path.join(peers.work, "batch-out")
    for r in range(rounds):
        log("batch: round %d/%d" % (r + 1, rounds))
        for mode in MODES:
            confs = []
            for jobs in sorted({1, cores, 2 * cores}):
                confs.append(("ours: thumbnail_client --jobs %d" % jobs, None,
                              [peers.client, "--quiet", "--overwrite", "--server", server.addr,
                               "--mode", mode, "--at", "10%", "--jobs", str(jobs), cdir, outd]))
            ffc = [q(peers.ffmpeg_cmd(f, mode, os.path.join(outd, "ff%d.png" % i)))
                   for i, f in enumerate(corpus)]
            name = "ffmpeg -ss T -i" + (" -skip_frame nokey -noaccurate_seek" if mode == "keyframe" else "")
            confs.append((name + ", serial", (ffc, 1), None))
            confs.append((name + ", xargs -P %d" % cores, (ffc, cores), None))
            if mode == "keyframe" and peers.have_ft:
                ftc = [q(peers.ft_cmd(f, os.path.join(outd, "ft%d.png" % i)))
                       for i, f in enumerate(corpus)]
                confs.append(("ffmpegthumbnailer, serial", (ftc, 1), None))
                confs.append(("ffmpegthumbnailer, xargs -P %d" % cores, (ftc, cores), None))
            for name, xa, cmd in confs:
                shutil.rmtree(outd, ignore_errors=True)
                os.makedirs(outd)
                ms = timed(cmd) if cmd else xargs_batch(xa[0], xa[1], peers.work, "b")
                n = len([p for p in os.listdir(outd) if is_png(os.path.join(outd, p))])
                if ms is not None and n != len(corpus):
                    fail("batch %s %s: %d PNGs for %d files" % (mode, name, n, len(corpus)))
                    ms = None
                if ms is not None:
                    res.setdefault((mode, name), []).append(ms)
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
            runs = [(mode, jobs, "--no-pull") for mode in MODES
                    for jobs in sorted({1, cores, 2 * cores})]
            runs += [(mode, 2 * cores, "--local") for mode in MODES]
            for mode, jobs, how in runs:
                key = (mode if how == "--no-pull" else "local:" + mode, w, jobs)
                shutil.rmtree(outd, ignore_errors=True)
                ms = timed([client, "--quiet", how, "--server", srv.addr, "--mode", mode,
                            "--at", "10%", "--jobs", str(jobs), indir, outd])
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


def raw_tcp_mbps(path, chunk=1 << 20):
    """MB/s of sending the file's bytes over a loopback TCP socket (read + send, recv
    + discard), the same bytes our client uploads."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    got = [0]

    def recv():
        c, _ = ls.accept()
        buf = bytearray(chunk)
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            got[0] += k
        c.close()

    t = threading.Thread(target=recv)
    t.start()
    s = socket.create_connection(ls.getsockname())
    t0 = time.monotonic()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            s.sendall(b)
    s.shutdown(socket.SHUT_WR)
    t.join()
    dt = time.monotonic() - t0
    s.close()
    ls.close()
    return got[0] / dt / 1e6


def upload(build, server, path, rounds):
    """Our upload MB/s (front: bytes / (call time - worker job time); and end to end
    through the real client) vs raw loopback TCP, interleaved."""
    client = os.path.join(build, "src", "client", "thumbnail_client")
    d = os.path.join(os.path.dirname(server.log_path), "up")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    os.symlink(path, os.path.join(d, os.path.basename(path)))
    size = os.path.getsize(path)
    ours, ours_e2e, raw, raw_cpu, front_cpu, client_cpu = [], [], [], [], [], []
    mb = size / 1e6
    for _ in range(rounds):
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        raw.append(raw_tcp_mbps(path))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        raw_cpu.append((ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) * 1e3 / mb)
        server.new_log()
        f0 = server.h.proc_stat(server.front)["cpu"]
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        ms = timed([client, "--quiet", "--no-pull", "--overwrite", "--server", server.addr, "--mode",
                    "keyframe", "--at", "0", d, os.path.join(d, "out")])
        wall = time.monotonic() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu.append((c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime) * 1e3 / mb)
        front_cpu.append((server.h.proc_stat(server.front)["cpu"] - f0) * 10 / mb)
        time.sleep(0.1)
        text = server.new_log()
        calls = server.front_call_ms(text)
        jobs = server.job_ms(text)
        if ms is None or not calls or not jobs:
            fail("upload of %s" % path)
            continue
        ours.append(size / ((calls[-1][1] - jobs[-1]) / 1e3) / 1e6)
        ours_e2e.append(size / wall / 1e6)
    shutil.rmtree(d, ignore_errors=True)
    return {"bytes": size, "raw": raw, "ours": ours, "ours_e2e": ours_e2e, "raw_cpu": raw_cpu,
            "front_cpu": front_cpu, "client_cpu": client_cpu}


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
            text = srv.new_log()
            nin = sum(int(kv.split("=")[1]) for ln in text.splitlines() if "Generate peer=" in ln
                      for kv in ln.split() if kv.startswith("in="))
            out[tag] = srv.hwm()
            out[tag + "_bytes_in"] = nin
            out[tag + "_s"] = dt
            want = int(big_gib * (1 << 30)) if tag == "big" else n_conc * (conc_mib << 20)
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
                    ffm = peers.ffmpeg(clip, mode, pct)
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
    return "%.1f%s" % (v, unit)


def ratio(a, b):
    if not a or not b or a != a or b != b:
        return "–"
    return "%.2f×" % (a / b)


def report(args, out, info, lat, bat, tput, tput_n, up, mem, pos, thr, png):
    L = []
    w = L.append
    w("# thumbnail_server benchmark — %s%s" % (info["date"], " (quick)" if args.quick else ""))
    w("")
    w("Host: %d cores, load average at start %s, at end %s; %s; corpus: %d files (%s)." % (
        info["cores"], info["load_start"], info["load_end"], info["ffmpeg"],
        len(info["corpus"]), ", ".join(os.path.basename(f) for f in info["corpus"])))
    w("Every thumbnail: one 320-px-wide PNG at 10 %% of the clip unless stated. Ratios: "
      "ours / peer (lower is better for us). Rounds: latency %d, batch %d." % (
          args.rounds, args.batch_rounds))
    w("")
    w("## Per-thumbnail latency (ms), interleaved per file")
    w("")
    for mode in MODES:
        lim = median([v for _, v in lat.get((mode, "limit (tn_limit)"), [])])
        worker = median([v for _, v in lat.get((mode, "ours: warm worker (job time)"), [])])
        w("### %s" % mode)
        w("")
        w("| peer | median | p95 | n | ÷ limit | warm worker ÷ peer |")
        w("|---|---:|---:|---:|---:|---:|")
        for (m, peer), vals in lat.items():
            if m != mode:
                continue
            v = [x for _, x in vals]
            w("| %s | %s | %s | %d | %s | %s |" % (peer, fmt(median(v)), fmt(p95(v)), len(v),
                                                  ratio(median(v), lim),
                                                  ratio(worker, median(v))))
        calls = [v for _, v in lat.get((mode, "ours: warm server, gRPC call (Python client)"), [])]
        jobs = [v for _, v in lat.get((mode, "ours: warm worker (job time)"), [])]
        if calls and len(calls) == len(jobs):
            d = [c - j for c, j in zip(calls, jobs)]
            w("")
            w("Upload + gRPC + dispatch + IPC, per call (warm call − its worker job): median "
              "%s ms, p95 %s ms." % (fmt(median(d)), fmt(p95(d))))
        w("")
        ref = [f for f in info["corpus"] if "1080p" in f] or info["corpus"][:1]
        ref = os.path.basename(ref[0])
        w("Per file, median ms (%s):" % mode)
        w("")
        peers_ = [p for (m, p) in lat if m == mode]
        w("| file | " + " | ".join(peers_) + " |")
        w("|---|" + "---:|" * len(peers_))
        for f in info["corpus"]:
            b = os.path.basename(f)
            w("| %s | " % b + " | ".join(
                fmt(median([x for n, x in lat[(mode, p)] if n == b])) for p in peers_) + " |")
        w("")
    w("## Batch wall time for the corpus (ms, median of rounds)")
    w("")
    for mode in MODES:
        confs = {k[1]: median(v) for k, v in bat.items() if k[0] == mode}
        peer_best = min((v for k, v in confs.items() if not k.startswith("ours")), default=None)
        best_name = next((k for k, v in confs.items() if v == peer_best), "")
        w("### %s (fastest peer: %s)" % (mode, best_name))
        w("")
        w("| configuration | wall ms | thumbnails/s | ÷ fastest peer |")
        w("|---|---:|---:|---:|")
        for k, v in confs.items():
            w("| %s | %s | %.1f | %s |" % (k, fmt(v), len(info["corpus"]) / (v / 1e3),
                                           ratio(v, peer_best)))
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
    w("CPU ms/MB: CPU time per MB moved (raw: both ends; ours: the front, and the client "
      "separately). It does not depend on the host's load; MB/s does.")
    w("")
    w("| path | median MB/s | runs | ÷ raw TCP | CPU ms/MB |")
    w("|---|---:|---:|---:|---:|")
    raw = median(up["raw"])
    w("| raw TCP loopback (read file, send; recv, discard) | %s | %d | 1.00× | %.2f |" % (
        fmt(raw), len(up["raw"]), median(up["raw_cpu"])))
    w("| ours: front (bytes / (call − worker job)), spooled to disk | %s | %d | %s | %.2f |" % (
        fmt(median(up["ours"])), len(up["ours"]), ratio(median(up["ours"]), raw),
        median(up["front_cpu"])))
    w("| ours: thumbnail_client end to end, incl. process start and thumbnail | %s | %d | %s "
      "| %.2f |" % (fmt(median(up["ours_e2e"])), len(up["ours_e2e"]),
                    ratio(median(up["ours_e2e"]), raw), median(up["client_cpu"])))
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
    w("CPU ms is the process's CPU time per thumbnail (all threads): what it costs a "
      "machine whose cores are all busy, e.g. with every worker decoding; it does not "
      "depend on what else runs on the host, the wall times do.")
    w("")
    w("| mode | threads | alone, wall | two at once, wall each | CPU ms |")
    w("|---|---|---:|---:|---:|")
    for (mode, th), (a, b, c) in thr.items():
        w("| %s | %s | %s | %s | %s |" % (mode, th, fmt(a), fmt(b), fmt(c)))
    w("")
    w("## PNG level and filter (tn_limit keyframe, encode ms / bytes)")
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
    kf_w = median([v for _, v in lat.get(("keyframe", "ours: warm worker (job time)"), [])])
    kf_l = median([v for _, v in lat.get(("keyframe", "limit (tn_limit)"), [])])
    tg = []
    tg.append(("Keyframe thumbnail in a warm worker ≤ 1.3× the limit", kf_w / kf_l if kf_l else None,
               1.3, "%s ms / %s ms" % (fmt(kf_w), fmt(kf_l))))
    for mode in MODES:
        confs = {k[1]: median(v) for k, v in bat.items() if k[0] == mode}
        ours = min((v for k, v in confs.items() if k.startswith("ours")), default=None)
        peer = min((v for k, v in confs.items() if not k.startswith("ours")), default=None)
        tg.append(("Corpus batch %s ≤ 0.5× the fastest peer" % mode,
                   ours / peer if ours and peer else None, 0.5,
                   "%s ms / %s ms" % (fmt(ours), fmt(peer))))
    for mode in list(MODES) + ["local:" + m for m in MODES]:
        t1 = max((v for k, v in tput.items() if k[0] == mode and k[1] == 1), default=None)
        t2 = max((v for k, v in tput.items() if k[0] == mode and k[1] == 2), default=None)
        tg.append(("Throughput %s 1 → 2 workers ≥ 1.8×" % mode, t2 / t1 if t1 and t2 else None,
                   -1.8, "%s/s → %s/s (best --jobs each)" % (fmt(t1), fmt(t2))))
    tg.append(("Upload ≥ 60 % of raw loopback TCP", median(up["ours"]) / raw if raw else None,
               -0.6, "%s / %s MB/s" % (fmt(median(up["ours"])), fmt(raw))))
    tg.append(("Front RSS ≤ 100 MB, %.3g GiB upload" % args.big_gib, mem["big"] / 1e6, 100,
               "MB"))
    tg.append(("Front RSS ≤ 100 MB, %d × %d MiB concurrent" % (args.conc, args.conc_mib),
               mem["conc"] / 1e6, 100, "MB"))
    for mode in MODES:
        vals = [median(pos.get((mode, t, p, "worker"), [])) for t in ("short", "long")
                for p in (10, 50, 90)]
        # The worker logs whole ms and these are a few ms each: a spread of a few ms is
        # resolution and noise, so flat = within 1.5x or within 5 ms of the fastest.
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
        elif v is None:
            met = "–"
        elif lim < 0:
            met = "yes" if v >= -lim else "**no**"
        else:
            met = "yes" if v <= lim else "**no**"
        w("| %s | %s (%s) | %s |" % (name, "–" if v is None else "%.2f" % v, detail, met))
    w("")
    if FAILURES:
        w("## Failures")
        w("")
        for f in FAILURES:
            w("- " + f.replace("\n", " "))
        w("")
    w("Plot: plot.png. Raw numbers: results.json.")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(L) + "\n")

    # gnuplot data: latency medians by peer, throughput by workers
    with open(os.path.join(out, "latency.dat"), "w") as f:
        f.write("peer keyframe accurate\n")
        peers_ = []
        for (m, p) in lat:
            if p not in peers_:
                peers_.append(p)
        for p in peers_:
            kv = median([v for _, v in lat.get(("keyframe", p), [])])
            av = median([v for _, v in lat.get(("accurate", p), [])])
            f.write('"%s" %s %s\n' % (p.replace('"', "'"), "NaN" if kv != kv else "%.2f" % kv,
                                      "NaN" if av != av else "%.2f" % av))
    with open(os.path.join(out, "throughput.dat"), "w") as f:
        f.write("workers " + " ".join("%s_j%d" % (m, j) for m in MODES for j in js) + "\n")
        for wk in ws:
            f.write("%d %s\n" % (wk, " ".join("%.3f" % tput[(m, wk, j)] if (m, wk, j) in tput
                                              else "NaN" for m in MODES for j in js)))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"info": info, "failures": FAILURES,
                   "latency": {"%s|%s" % k: v for k, v in lat.items()},
                   "batch": {"%s|%s" % k: v for k, v in bat.items()},
                   "throughput": {"%s|%d|%d" % k: v for k, v in tput.items()},
                   "upload": up, "rss": mem,
                   "position": {"%s|%s|%d|%s" % k: v for k, v in pos.items()},
                   "threading": {"%s|%s" % k: v for k, v in thr.items()},
                   "png": {"%s|%s" % k: v for k, v in png.items()}}, f, indent=1)


def sanity(lat, bat, tput, up, mem, pos, thr, png, have_ft):
    """Every measurement produced numbers (a peer that made no thumbnail is already a
    failure; this catches a section that silently measured nothing)."""
    need = [("keyframe", "ours: warm worker (job time)"), ("accurate", "ours: warm worker (job time)"),
            ("keyframe", "limit (tn_limit)"), ("accurate", "limit (tn_limit)"),
            ("keyframe", "ours: thumbnail_client, fresh process")]
    if have_ft:
        need.append(("keyframe", "ffmpegthumbnailer -s 320 -t 10%"))
    for k in need:
        if not lat.get(k):
            fail("no latency figures for %s" % (k,))
    for mode in MODES:
        if not any(k[0] == mode and k[1].startswith("ours") for k in bat):
            fail("no batch figure for ours, %s" % mode)
        if not any(k[0] == mode and not k[1].startswith("ours") for k in bat):
            fail("no batch figure for a peer, %s" % mode)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
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
    work = os.path.abspath(args.work or os.path.join(out, "work"))
    os.makedirs(work, exist_ok=True)
    cores = os.cpu_count() or 2
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": cores,
            "load_start": loadavg(),
            "ffmpeg": run(["ffmpeg", "-version"], capture_output=True,
                          text=True).stdout.split("\n")[0]}
    have_ft = shutil.which("ffmpegthumbnailer") is not None
    if not have_ft:
        fail("ffmpegthumbnailer is not installed (apt-get install ffmpegthumbnailer)")
    corpus = ([os.path.join(args.corpus, n) for n in sorted(os.listdir(args.corpus))
               if not n.startswith(".")] if args.corpus
              else make_corpus(os.path.join(work, "corpus"), q))
    corpus = [os.path.abspath(f) for f in corpus]
    info["corpus"] = corpus
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
        lat = latency(peers, srv, corpus, args.rounds)
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
    sanity(lat, bat, tput, up, mem, pos, thr, png, have_ft)
    info["load_end"] = loadavg()
    info["seconds"] = time.monotonic() - t_all
    report(args, out, info, lat, bat, tput, tput_n, up, mem, pos, thr, png)
    log("report: %s (%.0f s)" % (os.path.join(out, "report.md"), info["seconds"]))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
