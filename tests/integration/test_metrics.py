#!/usr/bin/env python3
"""--metrics-listen: the Prometheus endpoint, scraped over HTTP with urllib.

Every scrape is parsed strictly here (every line a HELP/TYPE comment or a
sample of a declared family, no duplicate series, histogram buckets in
ascending `le` order with cumulative counts and +Inf == _count) and again by
prometheus_client's own parser (Debian's python3-prometheus-client), an
independent reading of the format. The counts must match what the test did,
exactly: the numbers are differences between a scrape before and one after,
so the health checks of the harness's start-up do not matter.

The worker restart causes are produced for real: SIGKILL of an idle worker is
a crash, SIGSYS is what seccomp's kill action delivers (sandbox), and a worker
stopped with SIGSTOP in the middle of a job overruns its deadline and is
SIGKILLed by the front (timeout)."""
import math
import os
import re
import signal
import threading
import time

import harness as h

# Debian's python3-prometheus-client (scripts/install-deps.sh): the independent parser.
from prometheus_client.parser import text_string_to_metric_families

GENERATE = ('grpc_type="bidi_stream",grpc_service="thumbnail.v1.Thumbnailer",'
            'grpc_method="Generate"')
CHECK = 'grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check"'
SERVER_CHUNK = 1 << 20  # the server's default --chunk-size
CLIENT_CHUNK = 64 * 1024  # harness.generate_requests' default

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)$" % (NAME, LABEL, LABEL))
HELP_RE = re.compile(r"^# HELP (%s) (.*)$" % NAME)
TYPE_RE = re.compile(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % NAME)


def parse_strict(text):
    """{(name, frozenset(labels.items())): value}; raises AssertionError on anything
    that is not valid Prometheus text format 0.0.4 or breaks a histogram's rules."""
    if not text.endswith("\n"):
        raise AssertionError("the exposition does not end with a newline")
    types, helps, samples = {}, {}, {}
    hist = {}  # (family, labels without le) -> [(le, value)], plus _count/_sum
    for n, line in enumerate(text.split("\n")[:-1], 1):
        m = HELP_RE.match(line)
        if m:
            if m.group(1) in helps:
                raise AssertionError("line %d: second HELP for %s" % (n, m.group(1)))
            helps[m.group(1)] = m.group(2)
            continue
        m = TYPE_RE.match(line)
        if m:
            if m.group(1) in types:
                raise AssertionError("line %d: second TYPE for %s" % (n, m.group(1)))
            types[m.group(1)] = m.group(2)
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError("line %d is neither a comment nor a sample: %r" % (n, line))
        name, labels_s, value_s = m.groups()
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels_s or ""))
        value = float(value_s)  # raises on garbage
        family, suffix = name, ""
        for suf in ("_bucket", "_sum", "_count"):
            if name.endswith(suf) and types.get(name[:-len(suf)]) == "histogram":
                family, suffix = name[:-len(suf)], suf
        if family not in types:
            raise AssertionError("line %d: sample of %s before its TYPE line" % (n, family))
        if family not in helps:
            raise AssertionError("line %d: %s has no HELP line" % (n, family))
        if types[family] == "counter" and not family.endswith("_total"):
            raise AssertionError("counter %s does not end in _total" % family)
        if types[family] in ("counter", "histogram") and value < 0:
            raise AssertionError("line %d: negative %s" % (n, types[family]))
        key = (name, frozenset(labels.items()))
        if key in samples:
            raise AssertionError("line %d: duplicate series %r" % (n, line))
        samples[key] = value
        if types[family] == "histogram":
            if not suffix:
                raise AssertionError("line %d: histogram sample without a suffix" % n)
            base = frozenset((k, v) for k, v in labels.items() if k != "le")
            entry = hist.setdefault((family, base), {"buckets": []})
            if suffix == "_bucket":
                if "le" not in labels:
                    raise AssertionError("line %d: bucket without le" % n)
                entry["buckets"].append((float(labels["le"]), value))
            else:
                entry[suffix] = value
    for (family, base), e in hist.items():
        b = e["buckets"]
        what = "%s{%s}" % (family, dict(base))
        if not b or not math.isinf(b[-1][0]):
            raise AssertionError("%s: the last bucket is not +Inf" % what)
        if [le for le, _ in b] != sorted(set(le for le, _ in b)):
            raise AssertionError("%s: le not strictly ascending: %s" % (what, b))
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            raise AssertionError("%s: buckets not cumulative: %s" % (what, b))
        if "_count" not in e or "_sum" not in e:
            raise AssertionError("%s: _count or _sum missing" % what)
        if b[-1][1] != e["_count"]:
            raise AssertionError("%s: +Inf %g != _count %g" % (what, b[-1][1], e["_count"]))
        if e["_sum"] < 0 or (e["_count"] == 0 and e["_sum"] != 0):
            raise AssertionError("%s: _sum %g with _count %g" % (what, e["_sum"], e["_count"]))
    return samples


def labelset(s):
    return frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', s))


class Metrics(h.ServerTestCase):
    workers = 2
    metrics = True
    # 3 s per job: plenty for the small clips, and the stopped worker overruns it soon.
    server_extra = ("--job-timeout", "3")

    def scrape(self):
        status, ctype, body = self.server.scrape()
        self.assertEqual(status, 200, body)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        samples = parse_strict(body)
        # the independent parser must read the same series and numbers
        theirs = {}
        for fam in text_string_to_metric_families(body):
            for smp in fam.samples:
                theirs[(smp.name, frozenset(smp.labels.items()))] = smp.value
        self.assertEqual(theirs, samples)
        return samples

    @staticmethod
    def val(samples, name, labels=""):
        return samples.get((name, labelset(labels)), 0.0)

    def delta(self, before, after, name, labels=""):
        return self.val(after, name, labels) - self.val(before, name, labels)

    def wait_gauges_settled(self):
        """Queue depth and spool bytes fall to 0 once every call is destroyed, and a
        call is counted as handled then too (a hair after the client has its
        status); no worker is busy once its job is done."""
        def settled():
            s = self.scrape()
            started = sum(v for (n, _), v in s.items() if n == "grpc_server_started_total")
            handled = sum(v for (n, _), v in s.items() if n == "grpc_server_handled_total")
            ok = (started == handled
                  and self.val(s, "thumbnail_queue_depth") == 0
                  and self.val(s, "thumbnail_spool_bytes") == 0
                  and self.val(s, "thumbnail_workers", 'state="busy"') == 0
                  and self.val(s, "thumbnail_workers", 'state="idle"') == self.workers)
            return s if ok else None
        return h.wait_for(settled, 15, interval=0.1, what="idle gauges")

    def test_build_info_and_start_time(self):
        s = self.scrape()
        version = h.subprocess.run([h.SERVER_BIN, "--version"], capture_output=True, text=True,
                                   check=True).stdout.split()[-1]
        self.assertEqual(self.val(s, "thumbnail_build_info", 'version="%s"' % version), 1)
        started = self.val(s, "thumbnail_start_time_seconds")
        # the master started within this test class's lifetime
        self.assertLessEqual(started, time.time())
        self.assertGreater(started, time.time() - 600)
        with open("/proc/%d/stat" % self.server.pid) as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = int(next(line for line in f if line.startswith("btime")).split()[1])
        self.assertAlmostEqual(started, btime + ticks / os.sysconf("SC_CLK_TCK"), delta=2)

    def test_other_paths(self):
        status, _, body = self.server.scrape("/nope")
        self.assertEqual(status, 404)
        self.assertIn("/metrics", body)
        status, _, body = self.server.scrape("/")
        self.assertEqual(status, 200)

    def test_counts_match_what_was_done(self):
        before = self.wait_gauges_settled()

        # --- three calls that succeed ---------------------------------------
        ok_calls = [dict(path=h.video("h264.mp4")),
                    dict(path=h.video("vp9.webm"), mode=2),  # keyframe
                    dict(path=h.video("hevc.mkv"), times=["10%", "50%"])]
        up_bytes = up_msgs = down_bytes = down_msgs = thumbs = 0
        for kw in ok_calls:
            got = h.generate(self.server.addr, **kw)
            size = os.path.getsize(kw["path"])
            up_bytes += size
            # options, data...; the end message is never read: the size declared in
            # the options completes the upload
            up_msgs += 1 + -(-size // CLIENT_CHUNK)
            for t in got:
                thumbs += 1
                down_bytes += t.header.size
                down_msgs += 1 + -(-t.header.size // SERVER_CHUNK)  # header, data...
            self.assertEqual(len(got), max(1, len(kw.get("times", []))))

        # --- one that fails in the worker: not a video ------------------------
        junk = bytes((i * 7919) % 251 for i in range(50000))
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, data=junk, file_name="junk.mp4")
        self.assertRpcCode(cm.exception, "INVALID_ARGUMENT")
        up_bytes += len(junk)
        up_msgs += 1 + -(-len(junk) // CLIENT_CHUNK)

        # --- one refused by the front: bad options (no upload) ------------------
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, data=b"x" * 10, times=["150%"])
        self.assertRpcCode(cm.exception, "INVALID_ARGUMENT")
        up_msgs += 1  # the options; the rest is never read

        # --- two health checks, one unknown method --------------------------------
        for _ in range(2):
            self.assertEqual(h.health_check(self.server.addr), "SERVING")
        with h.channel(self.server.addr) as ch:
            with self.assertRaises(h.grpc.RpcError) as cm:
                ch.unary_unary("/no.such.Service/Method")(b"", timeout=5)
            self.assertRpcCode(cm.exception, "UNIMPLEMENTED")

        after = self.wait_gauges_settled()
        d = lambda name, labels="": self.delta(before, after, name, labels)  # noqa: E731
        self.assertEqual(d("grpc_server_started_total", GENERATE), 5)
        self.assertEqual(d("grpc_server_handled_total", GENERATE + ',grpc_code="OK"'), 3)
        self.assertEqual(d("grpc_server_handled_total",
                           GENERATE + ',grpc_code="InvalidArgument"'), 2)
        # the front reads no further than the options of the refused call
        self.assertEqual(d("grpc_server_msg_received_total", GENERATE), up_msgs)
        self.assertEqual(d("grpc_server_msg_sent_total", GENERATE), down_msgs)
        self.assertEqual(d("grpc_server_handling_seconds_count", GENERATE), 5)
        self.assertGreater(d("grpc_server_handling_seconds_sum", GENERATE), 0)
        self.assertEqual(d("thumbnail_received_bytes_total"), up_bytes)
        self.assertEqual(d("thumbnail_sent_bytes_total"), down_bytes)
        self.assertEqual(d("grpc_server_started_total", CHECK), 2)
        self.assertEqual(d("grpc_server_handled_total", CHECK + ',grpc_code="OK"'), 2)
        self.assertEqual(d("grpc_server_msg_received_total", CHECK), 2)
        self.assertEqual(d("grpc_server_msg_sent_total", CHECK), 2)
        self.assertEqual(d("thumbnail_unknown_method_calls_total"), 1)
        # one decode per job that reached a worker, by codec and mode
        for labels, n in (('codec="h264",mode="accurate"', 1),
                          ('codec="vp9",mode="keyframe"', 1),
                          ('codec="hevc",mode="accurate"', 1),
                          ('codec="none",mode="accurate"', 1)):
            self.assertEqual(d("thumbnail_decode_seconds_count", labels), n, labels)
            self.assertEqual(d("thumbnail_decode_seconds_bucket", labels + ',le="+Inf"'), n)
        decodes = sum(v for (name, _), v in after.items() if name == "thumbnail_decode_seconds_count")
        self.assertEqual(decodes - sum(v for (name, _), v in before.items()
                                       if name == "thumbnail_decode_seconds_count"), 4)
        # every call that started has been handled
        for m in (GENERATE, CHECK):
            handled = sum(v for (name, ls), v in after.items()
                          if name == "grpc_server_handled_total" and labelset(m) <= ls)
            self.assertEqual(handled, self.val(after, "grpc_server_started_total", m))

    def test_restart_causes_and_survival(self):
        before = self.wait_gauges_settled()
        restarts = lambda s, c: self.val(s, "thumbnail_worker_restarts_total",  # noqa: E731
                                         'cause="%s"' % c)

        # crash: SIGKILL from outside; sandbox: SIGSYS (what seccomp's kill sends)
        w = self.server.worker_pids()
        h.kill_and_wait([w[0]])
        self.server.wait_roles(self.workers)
        w = self.server.worker_pids()
        h.kill_and_wait([w[1]], sig=signal.SIGSYS)
        self.server.wait_roles(self.workers)

        # timeout: a worker frozen mid-job overruns --job-timeout; the front kills it
        w = self.server.worker_pids()
        box = {}

        def slow():
            try:
                h.generate(self.server.addr, path=h.video("h264_1080p.mp4"), timeout=60,
                           times=[0.52 + 0.5 * i for i in range(19)], max_width=1920,
                           chunk=1 << 20)
            except h.grpc.RpcError as e:
                box["error"] = e
        t = threading.Thread(target=slow)
        t.start()
        victim = h.busy_worker(w)
        self.assertIsNotNone(victim, "no worker got busy")
        os.kill(victim, signal.SIGSTOP)
        t.join(60)
        self.assertIn("error", box)
        self.assertRpcCode(box["error"], "DEADLINE_EXCEEDED")
        h.wait_for(lambda: not h.pid_alive(victim), 15, what="the frozen worker to be killed")

        after = self.wait_gauges_settled()
        self.assertEqual(restarts(after, "crash") - restarts(before, "crash"), 1)
        self.assertEqual(restarts(after, "sandbox") - restarts(before, "sandbox"), 1)
        self.assertEqual(restarts(after, "timeout") - restarts(before, "timeout"), 1)
        self.assertEqual(restarts(after, "recycle") - restarts(before, "recycle"), 0)
        self.assertEqual(self.delta(before, after, "grpc_server_handled_total",
                                    GENERATE + ',grpc_code="DeadlineExceeded"'), 1)

        # The counters live in the master's shared region: a new front and a new
        # metrics process carry on from the same numbers.
        started = self.val(after, "grpc_server_started_total", GENERATE)
        h.kill_and_wait([self.server.front_pid()])
        self.server.wait_healthy(30)
        old_metrics = self.server.metrics_pid()
        h.kill_and_wait([old_metrics])
        h.wait_for(lambda: (self.server.metrics_pid() or old_metrics) != old_metrics, 15,
                   what="a new metrics process")
        h.generate(self.server.addr, path=h.video("h264.mp4"))
        ok = GENERATE + ',grpc_code="OK"'
        # handled is counted when the front frees the call, a hair after the
        # client has its status: wait for it, then compare exactly
        final = h.wait_for(lambda: (lambda s: s if self.val(
            s, "grpc_server_handled_total", ok) > self.val(
                after, "grpc_server_handled_total", ok) else None)(self.scrape_retry()),
            15, what="the counters after the respawns")
        self.assertEqual(self.val(final, "grpc_server_started_total", GENERATE), started + 1)
        self.assertEqual(self.val(final, "grpc_server_handled_total", ok),
                         self.val(after, "grpc_server_handled_total", ok) + 1)

    def scrape_retry(self):
        """A scrape, or {} while the metrics process is being respawned."""
        try:
            return self.scrape()
        except OSError:
            time.sleep(0.1)
            return {}


class GracefulStop(h.ServerTestCase):
    """SIGQUIT: the front drains, then the master stops everyone, the metrics
    process included (the harness fails the stop if any process is left)."""
    workers = 1
    metrics = True

    def test_sigquit_stops_the_metrics_process(self):
        srv = type(self).server
        mpid = srv.metrics_pid()
        self.assertIsNotNone(mpid)
        self.assertEqual(srv.scrape()[0], 200)
        type(self).server = None
        try:
            self.assertEqual(srv.stop(sig=signal.SIGQUIT), 0)
            log = srv.log_text()
        finally:
            srv.cleanup()
        self.assertFalse(h.pid_alive(mpid))
        self.assertRegex(log, r"INFO master \d+: metrics %d exited with status 0" % mpid)


class NoMetrics(h.ServerTestCase):
    """Without --metrics-listen there is no metrics process and no listener."""
    workers = 1

    def test_off_by_default(self):
        r = self.server.wait_roles(1)
        self.assertEqual(len(h.children(self.server.pid)), 2, r)  # a worker and the front
        self.assertNotRegex(self.server.log_text(), r"metrics")


class BadAddress(h.ServerTestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        pass

    def test_taken_port_refuses_the_start(self):
        import socket
        import subprocess
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            cp = subprocess.run([h.SERVER_BIN, "--listen", "127.0.0.1:%d" % h.free_port(),
                                 "--metrics-listen", "127.0.0.1:%d" % port],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=30)
        self.assertEqual(cp.returncode, 2, cp)
        self.assertRegex(cp.stderr, r"--metrics-listen '127\.0\.0\.1:%d': cannot listen: "
                         r"Address already in use" % port)


if __name__ == "__main__":
    h.main()
