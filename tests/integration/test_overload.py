#!/usr/bin/env python3
"""Overload: --max-concurrent-calls refuses extra calls at once with
RESOURCE_EXHAUSTED naming the flag and frees the slots when calls end;
--idle-timeout ends an upload that stops sending with DEADLINE_EXCEEDED and
releases everything it held; a declared size larger than the spool's free
space is refused with RESOURCE_EXHAUSTED before any data is stored."""
import os
import subprocess
import threading
import time

import harness as h


class SlowUpload:
    """A Generate call that sends its options (declaring the whole file) and the
    first chunk, then pauses until release() (or the call ends)."""

    def __init__(self, addr, data, declared=None, timeout=30, chunk=64 * 1024):
        self.gate = threading.Event()
        self.sent = threading.Event()
        self.ch = h.channel(addr)
        stub = h.pb_grpc.ThumbnailerStub(self.ch)
        self.call = stub.Generate(self._requests(data, declared, chunk), timeout=timeout)

    def _requests(self, data, declared, chunk):
        yield h.pb.GenerateRequest(options=h.pb.Options(
            file_name="slow.mp4", size=declared if declared is not None else len(data)))
        yield h.pb.GenerateRequest(data=data[:chunk])
        self.sent.set()
        while not self.gate.wait(0.1):
            pass
        for off in range(chunk, len(data), chunk):
            yield h.pb.GenerateRequest(data=data[off:off + chunk])

    def result(self):
        """[Thumb] or raises grpc.RpcError."""
        return h.collect(self.call)

    def release(self):
        self.gate.set()

    def close(self):
        self.gate.set()
        self.call.cancel()
        self.ch.close()


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def spool_fds(pid, spool):
    """Files of the spool dir that pid holds open: one per upload the front accepted
    (O_TMPFILE files read as "SPOOL/#inode (deleted)")."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith(spool + "/")
        except OSError:
            pass
    return n


class Overload(h.ServerTestCase):
    workers = 1
    # the global cap alone: every call comes from 127.0.0.1
    server_extra = ("--max-concurrent-calls", "2", "--idle-timeout", "1s",
                    "--max-calls-per-peer", "0")

    def slow(self, **kw):
        s = SlowUpload(self.server.addr, h.read_bytes(h.video("h264.mp4")), **kw)
        self.addCleanup(s.close)
        self.assertTrue(s.sent.wait(10), "the slow upload did not start")
        return s

    def assertStillServing(self, timeout=10):
        def ok():
            try:
                return h.generate(self.server.addr, path=h.video("h264.mp4"), timeout=30)
            except h.grpc.RpcError as e:
                if e.code().name == "RESOURCE_EXHAUSTED":
                    return None  # the slots may be freed a moment after the cancel
                raise
        thumbs = h.wait_for(ok, timeout, interval=0.2, what="a successful call")
        self.assertEqual(len(thumbs), 1)
        h.png_decode(thumbs[0].data)

    # ------------------------------------------------------------------
    def test_max_concurrent_calls(self):
        front = self.server.front_pid()
        a = self.slow()
        b = self.slow()
        # Both must hold their slots before the third call: wait for the front to
        # have opened both spool files (a fixed sleep raced on a loaded machine).
        h.wait_for(lambda: spool_fds(front, self.server.spool) >= 2, 10,
                   what="both slow uploads accepted by the front")
        t0 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264.mp4"), timeout=30)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED", r"--max-concurrent-calls")
        # The two slow ones are unaffected: let one finish, cancel the other.
        a.release()
        self.assertEqual(len(a.result()), 1)
        b.close()
        self.assertStillServing()

    def test_idle_timeout(self):
        self.assertStillServing()  # warm: gRPC's own fds are open
        front = self.server.front_pid()
        base = fd_count(front)
        t0 = time.monotonic()
        s = self.slow()  # client deadline 30 s: any earlier end is the server's
        with self.assertRaises(h.grpc.RpcError) as cm:
            s.result()
        took = time.monotonic() - t0
        self.assertRpcCode(cm.exception, "DEADLINE_EXCEEDED",
                           r"no upload data for 1 s.*--idle-timeout")
        self.assertGreater(took, 0.9)
        self.assertLess(took, 3.5)
        s.close()
        h.wait_for(lambda: fd_count(front) <= base, 5, what="the front's fds back to %d" % base)
        # The slot was freed: two calls at once still fit.
        c = self.slow()
        d = self.slow()
        c.release()
        d.release()
        self.assertEqual(len(c.result()), 1)
        self.assertEqual(len(d.result()), 1)
        self.assertStillServing()

    def test_idle_timeout_before_options(self):
        # A client that opens the stream and sends nothing at all.
        gate = threading.Event()
        self.addCleanup(gate.set)

        def nothing():
            gate.wait(30)
            return
            yield

        with h.channel(self.server.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            t0 = time.monotonic()
            with self.assertRaises(h.grpc.RpcError) as cm:
                list(stub.Generate(nothing(), timeout=30))
            self.assertLess(time.monotonic() - t0, 3.5)
            gate.set()
        self.assertRpcCode(cm.exception, "DEADLINE_EXCEEDED", r"--idle-timeout")
        self.assertStillServing()


class SpoolSpace(h.ServerTestCase):
    """--spool-dir on a 128 MiB tmpfs: 112 MiB of it usable (an eighth is margin)."""

    workers = 1
    server = None
    mnt = None

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.mnt = tempfile.mkdtemp(prefix="tn-spool-tmpfs-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", cls.mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            os.rmdir(cls.mnt)
            cls.mnt = None
            raise h.unittest.SkipTest("cannot mount a tmpfs (needs root): %s" % r.stderr.strip())
        try:
            cls.server = h.Server(workers=cls.workers, extra=("--spool-dir", cls.mnt))
        except BaseException:
            cls._unmount()
            raise

    @classmethod
    def _unmount(cls):
        if cls.mnt:
            subprocess.run(["umount", cls.mnt], check=False)
            os.rmdir(cls.mnt)
            cls.mnt = None

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls._unmount()

    def test_declared_size_over_free_space(self):
        t0 = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, data=b"\0" * 1024, declared_size=120 << 20,
                       send_end=False, timeout=30)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED",
                           r"spool \(--spool-dir\) has 11\d MiB free, the upload needs 120 MiB")
        self.assertEqual(os.listdir(self.mnt), [])
        # A file that fits is served from the same spool.
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"), timeout=30)
        self.assertEqual(len(thumbs), 1)

    def test_small_spool_takes_uploads(self):
        """A 64 MiB spool: the margin scales with it (a fixed 64 MiB margin refused
        every upload)."""
        import tempfile
        mnt = tempfile.mkdtemp(prefix="tn-spool-small-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)  # the class mounted one: so can we
        try:
            s = h.Server(workers=1, extra=("--spool-dir", mnt))
            try:
                thumbs = h.generate(s.addr, path=h.video("h264.mp4"), timeout=30)
                self.assertEqual(len(thumbs), 1)
                with self.assertRaises(h.grpc.RpcError) as cm:
                    h.generate(s.addr, data=b"\0" * 1024, declared_size=60 << 20,
                               send_end=False, timeout=30)
                self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED", r"has 5\d MiB free")
            finally:
                s.stop()
                s.cleanup()
        finally:
            subprocess.run(["umount", mnt], check=False)
            os.rmdir(mnt)


if __name__ == "__main__":
    h.main()
