#!/usr/bin/env python3
"""Hostile clients against the gRPC 1.51 we link (Debian's, without the fixes for
CVE-2023-44487, CVE-2023-33953 and CVE-2023-4785) and against our own use of it.

Each test runs one attack against a real server while a thread makes real Generate
calls with grpcio (a generated H.264 video, one 160 px PNG decoded and checked), and
asserts, with the bound in the test:
  * the front's resident memory stays under a bound, or comes back under it within a
    stated time (or the watchdog replaces the front within a stated time);
  * the legitimate calls all succeed, within a stated latency;
  * no decode worker died (thumbnail_worker_restarts_total stays 0).

Numbers are printed (and appended as JSON lines to $TN_ATTACK_REPORT if set) before
the assertions, so the same file run against another build (TN_BUILD_DIR) gives the
"before" figures; flags that build does not know are left out.
"""
import json
import os
import re
import subprocess
import time
import unittest

import attacks as a
import harness as h

HOST = "127.0.0.1"


def supported_flags():
    out = subprocess.run([h.SERVER_BIN, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+(--[a-z-]+)", out, re.M))


FLAGS = supported_flags()


def flags(*pairs):
    """--flag value pairs, keeping only the flags this build knows."""
    out = []
    for k, v in pairs:
        if k in FLAGS:
            out += [k, v]
    return out


def report(name, **kw):
    kw = {"attack": name, "build": h.BUILD_DIR, **kw}
    h.log("ATTACK " + json.dumps(kw))
    path = os.environ.get("TN_ATTACK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(kw) + "\n")


def restarts(srv):
    text = srv.scrape()[2]
    return sum(int(v) for v in re.findall(r"^thumbnail_worker_restarts_total\{[^}]*\} (\d+)",
                                          text, re.M))


# The tests whose claim is the front's RSS skip in the ASan pass ("ASan build: " is on
# the CI allow-list): ASan's quarantine and shadow memory make that RSS an ASan figure
# (926 MB held after a rapid-reset burst; a memory limit that replaces the front at the
# wrong time). The plain pass of the same suite checks them.
rss_is_asans = unittest.skipIf(h.sanitized(), "ASan build: its quarantine and shadow memory "
                               "make the front's RSS an ASan figure, not ours")


class Attack(unittest.TestCase):
    workers = 2
    extra = ()
    wrapper = ()
    legit_timeout = 20
    legit_retry = False  # a failed legitimate call is a failure (see MemoryWatchdog)

    def restart_legit(self, n=5):
        """Stop the background legitimate calls, make n more under a fresh counter (the
        calls after a recovery), and return the summary of those made before."""
        self.legit.stop()
        during = self.legit.summary()
        self.legit = a.Legit(self.srv.addr, self.video)
        for _ in range(n):
            self.legit.one()
        return during

    def setUp(self):
        self.srv = h.Server(workers=self.workers, metrics=True, extra=list(self.extra),
                            wrapper=list(self.wrapper))
        self.addCleanup(self.srv.cleanup)
        self.video = h.video("h264.mp4")
        self.front0 = self.srv.front_pid()
        self.idle_rss = h.vm_status(self.front0, "VmRSS")
        # one warm-up call: the first call's latency is not the attack's
        a.Legit(self.srv.addr, self.video).one()
        self.legit = a.Legit(self.srv.addr, self.video, timeout=self.legit_timeout,
                             retry=self.legit_retry)
        self.rss = a.RssSampler(self.srv)

    def start(self):
        self.rss.start()
        self.legit.start()
        time.sleep(0.5)

    def finish(self, name, settle, **extra):
        """Let the server settle for `settle` s with the legitimate calls going on, then
        stop measuring and report."""
        time.sleep(settle)
        self.legit.stop()
        self.rss.stop()
        self.rss.sample()
        res = dict(idle_mb=self.idle_rss >> 20, peak_mb=self.rss.peak >> 20,
                   after_mb=self.rss.last >> 20, fronts=len(self.rss.fronts),
                   worker_restarts=restarts(self.srv), **self.legit.summary(), **extra)
        res["failure_samples"] = self.legit.failures[:3]
        report(name, **res)
        return res

    def assert_legit(self, res, max_latency):
        self.assertEqual(res["failures"], 0, res["failure_samples"])
        self.assertGreater(res["calls"], 0)
        self.assertLessEqual(res["max_latency_s"], max_latency,
                             "legitimate calls slower than %g s during the attack" % max_latency)
        self.assertEqual(res["worker_restarts"], 0, "a decode worker died")


class RapidReset(Attack):
    """CVE-2023-44487: HEADERS + RST_STREAM pairs on one connection. gRPC 1.51 builds a
    call for each and keeps it until the server takes it: the peak cannot be bounded
    inside the front (that is the proxy's job, test_attacks_nginx), but the memory must
    come back within seconds instead of staying."""
    PAIRS = 30000
    AFTER_MB = 80       # within SETTLE_S of the burst
    SETTLE_S = 5
    LATENCY_S = 5.0

    @rss_is_asans
    def test_rapid_reset(self):
        self.start()
        sent, secs = a.rapid_reset(HOST, self.srv.port, self.PAIRS)
        res = self.finish("rapid reset (%d pairs)" % self.PAIRS, self.SETTLE_S,
                          attack_bytes=sent, attack_s=round(secs, 2))
        self.assertLess(res["after_mb"], self.AFTER_MB,
                        "front still holds %d MB %d s after the burst" % (res["after_mb"],
                                                                         self.SETTLE_S))
        self.assertEqual(h.health_check(self.srv.addr, timeout=2), "SERVING")
        self.assert_legit(res, self.LATENCY_S)


class Hpack(Attack):
    """CVE-2023-33953: a 12 MB header block of small literal headers (HEADERS +
    CONTINUATION). gRPC parses all of it whatever --max-header-bytes says; without a
    resource quota that held ~160 MB in the front. The 32M quota often keeps the peak
    to 50-100 MB, but not always: at load 20 two runs back to back peaked at 95 and
    159 MB. So the bound asserted is the one that holds every time: well under the
    watchdog's --max-front-memory (512M), and given back once the connection is gone."""
    BLOCK = 12 << 20
    PEAK_MB = 256  # 159-160 MB without the quota, 50-160 with it
    AFTER_MB = 40
    SETTLE_S = 15
    LATENCY_S = 5.0

    @rss_is_asans
    def test_hpack_many_headers(self):
        self.start()
        sent, secs = a.hpack_flood(HOST, self.srv.port, self.BLOCK, "many")
        res = self.finish("HPACK: 12 MB block of small headers", self.SETTLE_S,
                          attack_bytes=sent, attack_s=round(secs, 2))
        self.assertLess(res["peak_mb"], self.PEAK_MB)
        self.assertLess(res["after_mb"], self.AFTER_MB)
        self.assert_legit(res, self.LATENCY_S)


class MemoryWatchdog(Attack):
    """The watchdog's memory check: without the resource quota, the 12 MB HPACK block
    holds ~150 MB in the front for several seconds while gRPC parses it; with
    --max-front-memory 64M and checks every second, two checks in a row see it and the
    front is replaced (cause "memory"), and the old one drains."""
    extra = flags(("--front-check-interval", "1s"), ("--front-check-failures", "2"),
                  ("--max-front-memory", "64M"), ("--front-memory-quota", "0"))
    # A call that reaches the old front as it starts to drain can end CANCELLED
    # (seen 1 in ~55 calls, in the plain and the ASan builds): gRPC 1.51's
    # shutdown fails calls it holds not yet matched to the front's request. The
    # legitimate client retries as thumbnail_client does; at most one retry.
    legit_retry = True

    @rss_is_asans
    def test_front_over_memory_is_replaced(self):
        if "--max-front-memory" not in FLAGS:
            self.fail("this build has no --max-front-memory: no watchdog to test")
        self.start()
        a.hpack_flood(HOST, self.srv.port, 12 << 20, "many")
        t0 = time.monotonic()
        h.wait_for(lambda: re.search(r'front_replacements_total\{cause="memory"\} [1-9]',
                                     self.srv.scrape()[2]), 20, interval=0.5,
                   what="the watchdog to replace the front for its memory")
        replaced = time.monotonic() - t0
        h.wait_for(lambda: not h.pid_alive(self.front0), 40, what="the old front to go")
        res = self.finish("watchdog: front over --max-front-memory", 1,
                          replaced_after_s=round(replaced, 1))
        self.assertRegex(self.srv.log_text(), r"REPLACING FRONT %d .*resident memory"
                         % self.front0)
        self.assertEqual(h.health_check(self.srv.addr), "SERVING")
        self.assert_legit(res, 5.0)
        self.assertLessEqual(res["retries"], 1, self.legit.retries)


class HpackStall(Attack):
    """CVE-2023-33953, the CPU half: one header value spread over CONTINUATION frames.
    gRPC 1.51 re-parses the value from its start at every frame (quadratic): 30 MB kept
    the front busy for 258 s and every other call failed. The front cannot refuse it;
    the watchdog sees health go unanswered and replaces the front (stopping the stuck
    one), so legitimate calls fail for a bounded time only. Bound: replaced within
    REPLACE_S; calls succeed again from then on."""
    BLOCK = 30 << 20
    REPLACE_S = 20
    legit_timeout = 5
    extra = flags(("--front-check-interval", "1s"), ("--front-check-failures", "3"))

    def test_hpack_single_value_stall(self):
        import threading
        self.start()
        t0 = time.monotonic()
        attacker = threading.Thread(target=a.hpack_flood,
                                    args=(HOST, self.srv.port, self.BLOCK, "big"), daemon=True)
        attacker.start()
        # time until health answers from a front other than the stalled one
        recovered = None
        while time.monotonic() - t0 < 60:
            try:
                if h.health_check(self.srv.addr, timeout=1) == "SERVING":
                    f = self.srv.roles()["front"]
                    if f != self.front0 and not h.pid_alive(self.front0):
                        recovered = time.monotonic() - t0
                        break
            except h.grpc.RpcError:
                pass
            time.sleep(0.5)
        # legitimate calls after the recovery, with a fresh counter
        during = self.restart_legit()
        res = self.finish("HPACK: 30 MB single value (CPU stall)", 0,
                          replaced_after_s=recovered and round(recovered, 1),
                          during_calls=during["calls"], during_failures=during["failures"],
                          replacements=re.findall(r'front_replacements_total\{cause="(\w+)"\} '
                                                  r'([1-9]\d*)', self.srv.scrape()[2]))
        self.assertIsNotNone(recovered, "the stalled front was not replaced within 60 s")
        self.assertLess(recovered, self.REPLACE_S)
        self.assert_legit(res, 5.0)


class Emfile(Attack):
    """CVE-2023-4785: under `ulimit -n 256`, more connections than fds; gRPC 1.51 logs
    one 'Failed accept4: Too many open files' and never accepts again. After the
    connections close, health must answer again within RECOVER_S (the watchdog replaces
    the front that stopped accepting)."""
    NOFILE = 256
    CONNS = 320
    RECOVER_S = 20
    legit_timeout = 5
    wrapper = ("prlimit", "--nofile=%d:%d" % (NOFILE, NOFILE))
    extra = flags(("--front-check-interval", "1s"), ("--front-check-failures", "3"))

    def test_emfile(self):
        self.start()
        socks = a.hold_connections(HOST, self.srv.port, self.CONNS)
        time.sleep(2)
        for s in socks:
            s.close()
        t0 = time.monotonic()
        recovered = None
        while time.monotonic() - t0 < 45:
            try:
                if h.health_check(self.srv.addr, timeout=1) == "SERVING":
                    recovered = time.monotonic() - t0
                    break
            except h.grpc.RpcError:
                pass
            time.sleep(0.5)
        # the thread's calls during the stall failed by design; count the ones after
        during = self.restart_legit()
        res = self.finish("EMFILE (%d connections, nofile %d)" % (len(socks), self.NOFILE), 0,
                          health_back_after_s=recovered and round(recovered, 1),
                          during_calls=during["calls"], during_failures=during["failures"],
                          replacements=re.findall(r'front_replacements_total\{cause="(\w+)"\} '
                                                  r'([1-9]\d*)', self.srv.scrape()[2]))
        self.assertIn("Too many open files", self.srv.log_text(),
                      "the attack did not reach the fd limit: it tests nothing")
        self.assertIsNotNone(recovered, "health never answered again (45 s)")
        self.assertLess(recovered, self.RECOVER_S)
        self.assert_legit(res, 5.0)


class GzipBomb(Attack):
    """A 1 MB gzip message that inflates to 1 GiB: gRPC inflated it in full before
    --max-message-bytes applied. Compression is identity-only now: the call ends with
    UNIMPLEMENTED before anything is inflated, and the front stays small."""
    INFLATED = 1 << 30
    PEAK_MB = 64
    LATENCY_S = 3.0

    def test_gzip_bomb(self):
        payload = a.gzip_bomb_payload(self.INFLATED)
        self.start()
        status = a.gzip_bomb(HOST, self.srv.port, payload)
        res = self.finish("gzip bomb (1 MB -> 1 GiB)", 2, bomb_bytes=len(payload),
                          bomb_status=status)
        self.assertEqual(status, str(h.UNIMPLEMENTED))
        self.assertLess(res["peak_mb"], self.PEAK_MB)
        self.assert_legit(res, self.LATENCY_S)

    def test_gzip_client_gets_a_clear_status(self):
        """A well-behaved grpcio client that compresses gets UNIMPLEMENTED naming the
        compression, not a hang or INTERNAL."""
        with h.channel(self.srv.addr, options=[("grpc.default_compression_algorithm", 2)]) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            with self.assertRaises(h.grpc.RpcError) as cm:
                h.collect(stub.Generate(h.generate_requests(path=self.video, times=["50%"]),
                                        timeout=20, compression=h.grpc.Compression.Gzip))
        self.assertEqual(cm.exception.code(), h.grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("gzip", cm.exception.details().lower())
        h.log("gzip client: %s: %s" % (cm.exception.code().name, cm.exception.details()))


if __name__ == "__main__":
    unittest.main()
