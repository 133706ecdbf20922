#!/usr/bin/env python3
"""Exit statuses the README promises that no other test pins down exactly.

thumbnail_client: 130 when interrupted (SIGINT mid-batch: the files in flight
end, no new one starts, the summary says "interrupted"); --health 1 for a
server that answers but is not SERVING is in test_recycle, 2 for an unreachable
one and for usage errors in test_e2e. thumbnail_server: 2 for a bad
configuration (a file error, with FILE:LINE), 1 for a front that cannot bind
(test_lifecycle), 0 after a stop by signal (every Server.stop())."""
import os
import signal
import subprocess
import tempfile

import harness as h


class ClientInterrupted(h.ServersTestCase):
    def test_sigint_mid_batch_exits_130(self):
        s = self.server(workers=1)
        inp = h.make_input_dir([])
        for i in range(40):
            os.link(h.video("h264_1080p.mp4"), os.path.join(inp, "v%02d.mp4" % i))
        out = tempfile.mkdtemp(prefix="tn-out-")
        env = dict(os.environ)
        env.pop("THUMBNAIL_SERVER", None)
        p = subprocess.Popen([h.CLIENT_BIN, "--server", s.addr, "--jobs", "1", "--width", "1920",
                              "--at", "1,3,5,7,9", inp, out], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            # interrupt once the first file is done: the batch is well under way
            h.wait_for(lambda: any(f.startswith("v00") for f in os.listdir(out)), 60,
                       what="the first file's thumbnails")
            p.send_signal(signal.SIGINT)
            stdout, stderr = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 130, stdout + stderr)
        self.assertIn("interrupted:", stdout)
        done = {f.split("-")[0] for f in os.listdir(out)}
        self.assertLess(len(done), 40, "the whole batch ran: the interrupt was ignored")


class ServerBadConfig(h.ServersTestCase):
    def test_bad_config_file_exits_2(self):
        d = tempfile.mkdtemp(prefix="tn-conf-")
        conf = os.path.join(d, "bad.conf")
        with open(conf, "w") as f:
            f.write("workers = 2\nno-such-key = 1\n")
        cp = subprocess.run([h.SERVER_BIN, "--config", conf], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=30)
        h.note_sanitizer_output(cp.stdout, "server --config bad.conf")
        self.assertEqual(cp.returncode, 2, cp.stdout)
        self.assertIn("%s:2:" % conf, cp.stdout)


if __name__ == "__main__":
    h.main()
