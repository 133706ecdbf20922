#!/usr/bin/env python3
"""Process lifecycle: SIGTERM/SIGINT stop everything (INT at once, TERM after
draining: see test_reload.py for TERM under load); --daemon detaches and
writes a pidfile naming the master; SIGQUIT lets an in-flight call finish and
then stops; kill -9 of the front is repaired by the master; an unusable
--listen address is a clean start-up failure, not a respawn loop; SIGUSR1
reopens the log file."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import harness as h

# ~1-1.5 s of work for one worker: decode all 250 frames of the 1080p clip (one
# keyframe) and encode 20 full-size PNGs.
SLOW = dict(times=[0.52 + 0.5 * i for i in range(19)] + [9.9], max_width=1920)


def read_pid(path):
    with open(path) as f:
        return int(f.read().strip())


class Lifecycle(h.ServersTestCase):
    # ------------------------------------------------------------------
    def _stop_with(self, sig):
        tmp = tempfile.mkdtemp(prefix="tn-pid-")
        self.addCleanup(shutil.rmtree, tmp, True)
        pidfile = os.path.join(tmp, "server.pid")
        s = self.server(workers=2, extra=["--pidfile", pidfile])
        self.assertEqual(read_pid(pidfile), s.pid)
        roles = s.wait_roles(2)
        everyone = [s.pid, roles["front"]] + roles["workers"]
        t0 = time.monotonic()
        rc = s.stop(sig=sig, timeout=15)  # also checks that no process of the group is left
        h.log("signal %d: stopped in %.2f s" % (sig, time.monotonic() - t0))
        self.assertEqual(rc, 0)
        self.assertFalse([p for p in everyone if h.pid_alive(p)])
        self.assertFalse(os.path.exists(pidfile), "pidfile not removed")
        with self.assertRaises(h.grpc.RpcError):
            h.health_check(s.addr, timeout=1)

    def test_sigterm(self):
        self._stop_with(signal.SIGTERM)

    def test_sigint(self):
        self._stop_with(signal.SIGINT)

    def test_sigint_with_call_in_flight(self):
        """Fast stop does not wait for jobs: the call fails, everything exits. (SIGTERM
        drains instead: test_reload.py.)"""
        s = self.server(workers=1)
        workers = s.worker_pids()
        box = {}

        def call():
            try:
                box["r"] = h.generate(s.addr, path=h.video("h264_1080p.mp4"), timeout=60,
                                      **SLOW)
            except h.grpc.RpcError as e:
                box["e"] = e
        t = threading.Thread(target=call)
        t.start()
        self.assertIsNotNone(h.busy_worker(workers))
        rc = s.stop(sig=signal.SIGINT, timeout=15)
        t.join(60)
        self.assertEqual(rc, 0)
        self.assertIn("e", box, "the call was not ended by SIGINT")

    def test_daemon_and_sigquit_drain(self):
        tmp = tempfile.mkdtemp(prefix="tn-daemon-")
        self.addCleanup(shutil.rmtree, tmp, True)
        pidfile = os.path.join(tmp, "server.pid")
        logfile = os.path.join(tmp, "server.log")
        spool = os.path.join(tmp, "spool")
        os.mkdir(spool)
        port = h.free_port()
        addr = "127.0.0.1:%d" % port
        t0 = time.monotonic()
        cp = subprocess.run([h.SERVER_BIN, "--daemon", "--pidfile", pidfile, "--log-file",
                             logfile, "--listen", addr, "--workers", "2", "--spool-dir", spool]
                            + h.server_default_args(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=30, text=True)
        self.assertEqual(cp.returncode, 0, "--daemon: the launcher should exit 0: %s" % cp.stdout)
        h.wait_for(lambda: os.path.exists(pidfile), 10, what="the pidfile")
        master = read_pid(pidfile)
        h._LIVE_GROUPS.add(master)  # killed at exit if the test dies half-way
        try:
            st = h.proc_stat(master)
            self.assertIsNotNone(st, "pidfile names %d, which is not running" % master)
            self.assertNotEqual(os.getsid(master), os.getsid(0), "daemon did not setsid()")
            h.wait_for(lambda: self._healthy(addr), 20, what="the daemon to serve")
            h.log("daemon up in %.2f s" % (time.monotonic() - t0))
            kids = h.children(master)
            self.assertEqual(len(kids), 3, "master %d should have 2 workers + front, has %s"
                             % (master, kids))

            r = h.run_client(["--server", addr, "--health"])
            self.assertEqual(r.returncode, 0, r)
            inp = h.make_input_dir(["h264.mp4"])
            self.addCleanup(shutil.rmtree, inp, True)
            out = os.path.join(tmp, "out")
            r = h.run_client(["--server", addr, inp, out])
            self.assertEqual(r.returncode, 0, r)

            # SIGQUIT with a call in flight: the call completes, then the server exits.
            box = {}

            def call():
                try:
                    box["r"] = h.generate(addr, path=h.video("h264_1080p.mp4"), timeout=60,
                                          **SLOW)
                except h.grpc.RpcError as e:
                    box["e"] = e
            t = threading.Thread(target=call)
            t.start()
            workers = [k for k in kids if (h.proc_stat(k) or {"threads": 99})["threads"] == 1]
            self.assertIsNotNone(h.busy_worker(workers or kids), "the job never started")
            os.kill(master, signal.SIGQUIT)
            t.join(60)
            self.assertNotIn("e", box, "in-flight call failed on SIGQUIT: %s" % box.get("e"))
            self.assertEqual(len(box["r"]), len(SLOW["times"]))
            self.assertEqual((box["r"][0].header.width, box["r"][0].header.height), (1920, 1080))
            h.wait_for(lambda: not h.pid_alive(master), 30, what="the daemon to exit")
            h.wait_for(lambda: not [k for k in kids if h.pid_alive(k)], 10,
                       what="the daemon's children to exit")
            self.assertFalse(os.path.exists(pidfile), "pidfile not removed")
            self.assertFalse(self._healthy(addr))
        except BaseException:
            with open(logfile, errors="replace") as f:
                h.log("---- daemon log ----\n" + f.read())
            raise
        finally:
            for p in [master] + h.children(master):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            h._LIVE_GROUPS.discard(master)

    def _healthy(self, addr):
        try:
            return h.health_check(addr, timeout=1) == "SERVING"
        except h.grpc.RpcError:
            return False

    def test_sigquit_idle(self):
        s = self.server(workers=1)
        t0 = time.monotonic()
        self.assertEqual(s.stop(sig=signal.SIGQUIT, timeout=15), 0)
        self.assertLess(time.monotonic() - t0, 10, "an idle drain should be quick")

    def test_front_killed(self):
        s = self.server(workers=2)
        roles = s.wait_roles(2)
        old_front = roles["front"]
        t0 = time.monotonic()
        h.kill_and_wait([old_front])
        h.wait_for(lambda: self._healthy(s.addr), 10, what="the respawned front to serve")
        h.log("front respawned and serving in %.2f s" % (time.monotonic() - t0))
        new = s.wait_roles(2)
        self.assertNotEqual(new["front"], old_front)
        self.assertFalse(h.pid_alive(old_front))
        thumbs = h.generate(s.addr, path=h.video("h264.mp4"))
        self.assertEqual(len(thumbs), 1)
        r = h.run_client(["--server", s.addr, "--health"])
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(s.stop(), 0)

    def start_failing(self, listen, tmp):
        """A server on listen that must stop by itself: (exit status, its log)."""
        out = open(os.path.join(tmp, "out"), "wb")  # sanitizer reports land here
        self.addCleanup(out.close)
        p = subprocess.Popen([h.SERVER_BIN, "--listen", listen, "--workers", "1",
                              "--log-file", os.path.join(tmp, "log")] + h.server_default_args(),
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        h._LIVE_GROUPS.add(p.pid)
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            with open(os.path.join(tmp, "log"), errors="replace") as f:
                h.log(f.read()[-4000:])
            self.fail("server on %s still running after 30 s" % listen)
        h.wait_for(lambda: not h.pids_in_group(p.pid), 5, what="no processes left")
        h._LIVE_GROUPS.discard(p.pid)
        with open(os.path.join(tmp, "out"), errors="replace") as f:
            h.note_sanitizer_output(f.read(), "server on %s" % listen)
        with open(os.path.join(tmp, "log"), errors="replace") as f:
            return rc, f.read()

    def test_listen_address_in_use(self):
        """Someone listens on the port already: the master refuses to start, exit 1
        (README: Reload), not a respawn loop."""
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        tmp = tempfile.mkdtemp(prefix="tn-busy-")
        self.addCleanup(shutil.rmtree, tmp, True)
        try:
            rc, text = self.start_failing("127.0.0.1:%d" % port, tmp)
        finally:
            blocker.close()
        self.assertEqual(rc, 1, text)
        self.assertIn("address in use", text)

    def test_front_cannot_bind(self):
        """The front cannot bind (a unix: path in a missing directory, which the master's
        start-up check leaves to the front): the front exits 2 and the server stops with
        exit 1 (README: Respawn), after one front, not a respawn loop."""
        tmp = tempfile.mkdtemp(prefix="tn-nobind-")
        self.addCleanup(shutil.rmtree, tmp, True)
        rc, text = self.start_failing("unix:%s/no/such/dir/sock" % tmp, tmp)
        self.assertEqual(rc, 1, text)
        self.assertIn("cannot listen on unix:%s/no/such/dir/sock" % tmp, text)
        self.assertEqual(len(re.findall(r"front \d+ exited with status 2", text)), 1, text)

    def test_sigusr1_reopens_log(self):
        s = self.server(workers=1)
        rotated = s.log_path + ".1"
        os.rename(s.log_path, rotated)
        os.kill(s.pid, signal.SIGUSR1)
        h.wait_for(lambda: os.path.exists(s.log_path), 5, what="a new log file")
        h.generate(s.addr, path=h.video("h264.mp4"))
        # Every process writes to the new file from now on; with a job done, the
        # new file must have grown (at least the master's reopen line).
        h.wait_for(lambda: os.path.getsize(s.log_path) > 0, 5, what="lines in the new log")
        self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    h.main()
