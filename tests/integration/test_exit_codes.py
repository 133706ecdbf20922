#!/usr/bin/env python3
"""Exit statuses the README promises that no other test pins down exactly.

thumbnail_server: 2 for a bad configuration (a file error, with FILE:LINE); 1
for a front that cannot bind is in test_lifecycle, 0 after a stop by signal in
every Server.stop(). thumbnail_client: --health 1 for a server that answers but
is not SERVING is in test_recycle, 2 for an unreachable one and for usage
errors in test_e2e. (130 after SIGINT has no test yet: the client can hang on
it, see the report of this change.)"""
import os
import subprocess
import tempfile

import harness as h


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
