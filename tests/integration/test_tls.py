#!/usr/bin/env python3
"""Transport security and call authentication, end to end.

A CA, server and client certificates and a rogue CA are made with openssl at
test time (certs.py). The real server runs with --tls-cert/--tls-key (TLS),
then with --tls-client-ca and --auth-token-file (mTLS + token); the real
client and Python's grpcio must complete calls with the right material, and
be refused - at the handshake or with UNAUTHENTICATED - without it. Bad TLS
or token files must stop the server (exit 2) before it forks anything."""
import os
import re
import shutil
import subprocess
import time
import unittest

import certs
import harness as h
from harness import grpc

TOKEN = "s3cr3t-Token_for-tests.42"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
# ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
LIST_SERVICES = b"\x3a\x00"


def tls_creds(pki, ca=None, cert=None, key=None):
    return grpc.ssl_channel_credentials(
        root_certificates=pki.read(ca or pki.ca),
        private_key=pki.read(key) if key else None,
        certificate_chain=pki.read(cert) if cert else None)


def check_png_outputs(test, out_dir, names):
    for n in names:
        png = h.png_file(os.path.join(out_dir, os.path.splitext(n)[0] + ".png"))
        test.assertEqual((png.width, png.height), (320, 180))


class Tls(h.ServerTestCase):
    """TLS on TCP; a unix: listener on the same server stays plaintext."""

    @classmethod
    def setUpClass(cls):
        cls.pki = certs.Pki()
        cls.sock = os.path.join(cls.pki.dir, "tn.sock")
        cls.server = h.Server(workers=1, credentials=tls_creds(cls.pki), extra=[
            "--tls-cert", cls.pki.server_cert, "--tls-key", cls.pki.server_key,
            "--listen", "unix:" + cls.sock])

    def client(self, *args, check_rc=None, env=None):
        inp = h.make_input_dir(["h264.mp4", "vp9.webm"])
        self.addCleanup(shutil.rmtree, inp, True)
        out = self.tmpdir()
        r = h.run_client(list(args) + ["--connect-timeout", "3", inp, out], env=env,
                         check_rc=check_rc, timeout=120)
        return r, out

    def test_client_round_trip(self):
        r, out = self.client("--server", self.server.addr, "--ca", self.pki.ca, check_rc=0)
        self.assertIn("2 ok", r.stdout)
        check_png_outputs(self, out, ["h264.mp4", "vp9.webm"])
        self.assertRegex(self.server.log_text(),
                         r"listening on 127\.0\.0\.1:\d+ \(TLS\)")

    def test_client_by_host_name(self):
        """The certificate names localhost too: the name in --server is what is verified."""
        self.client("--server", "localhost:%d" % self.server.port, "--ca", self.pki.ca,
                    check_rc=0)

    def test_python_round_trip(self):
        with h.channel(self.server.addr, tls_creds(self.pki)) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            thumbs = h.collect(stub.Generate(h.generate_requests(path=h.video("h264.mp4")),
                                             timeout=60))
        self.assertEqual(len(thumbs), 1)
        png = h.png_decode(thumbs[0].data)
        self.assertEqual((png.width, png.height), (320, 180))

    def test_health_over_tls(self):
        r = h.run_client(["--health", "--server", self.server.addr, "--ca", self.pki.ca],
                         check_rc=0)
        self.assertIn("SERVING", r.stdout)

    def test_system_roots(self):
        """--tls without --ca verifies against the default roots: gRPC reads them from
        GRPC_DEFAULT_SSL_ROOTS_FILE_PATH first, so point that at our CA; without it the
        system's roots do not know our CA and the connection is refused."""
        self.client("--server", self.server.addr, "--tls",
                    env={"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": self.pki.ca}, check_rc=0)
        r, _ = self.client("--server", self.server.addr, "--tls", check_rc=2)
        self.assertIn("cannot reach", r.stderr)

    def test_plaintext_client_refused(self):
        r, out = self.client("--server", self.server.addr, check_rc=2)
        self.assertIn("cannot reach server", r.stderr)
        self.assertEqual(h.tree_files(out), [])
        with self.assertRaises(grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264.mp4"), timeout=5)
        self.assertRpcCode(cm.exception, "UNAVAILABLE")

    def test_untrusted_server_refused(self):
        """A client that trusts another CA must not talk to this server."""
        r, out = self.client("--server", self.server.addr, "--ca", self.pki.rogue_ca,
                             check_rc=2)
        self.assertIn("check --ca", r.stderr)
        self.assertEqual(h.tree_files(out), [])
        with self.assertRaises(grpc.RpcError) as cm:
            with h.channel(self.server.addr, tls_creds(self.pki, ca=self.pki.rogue_ca)) as ch:
                h.pb_grpc.ThumbnailerStub(ch).Generate(
                    h.generate_requests(path=h.video("h264.mp4")), timeout=5).next()
        self.assertRpcCode(cm.exception, "UNAVAILABLE")

    def test_server_name_override(self):
        """--tls-server-name replaces the host as the name to verify: a name the
        certificate carries works, another one is refused."""
        self.client("--server", self.server.addr, "--ca", self.pki.ca,
                    "--tls-server-name", "localhost", check_rc=0)
        self.client("--server", self.server.addr, "--ca", self.pki.ca,
                    "--tls-server-name", "elsewhere.example", check_rc=2)

    def test_unix_listener_stays_plaintext(self):
        self.client("--server", "unix:" + self.sock, check_rc=0)


class TlsUnix(h.ServerTestCase):
    """--tls-unix: the unix: listener speaks TLS too (gRPC's authority for a unix:
    target is "localhost", which the certificate names)."""

    @classmethod
    def setUpClass(cls):
        cls.pki = certs.Pki()
        cls.sock = os.path.join(cls.pki.dir, "tn.sock")
        cls.server = h.Server(workers=1, credentials=tls_creds(cls.pki), extra=[
            "--tls-cert", cls.pki.server_cert, "--tls-key", cls.pki.server_key,
            "--listen", "unix:" + cls.sock, "--tls-unix"])

    def test_unix_listener_with_tls(self):
        inp = h.make_input_dir(["h264.mp4"])
        self.addCleanup(shutil.rmtree, inp, True)
        out = self.tmpdir()
        h.run_client(["--server", "unix:" + self.sock, "--ca", self.pki.ca, inp, out],
                     check_rc=0)
        check_png_outputs(self, out, ["h264.mp4"])
        r = h.run_client(["--server", "unix:" + self.sock, "--connect-timeout", "2", inp,
                          self.tmpdir()], check_rc=2)
        self.assertIn("cannot reach", r.stderr)
        self.assertIn("listening on unix:%s (TLS)" % self.sock, self.server.log_text())


class MtlsAndToken(h.ServerTestCase):
    """--tls-client-ca (client certificates required) and --auth-token-file."""

    @classmethod
    def setUpClass(cls):
        cls.pki = certs.Pki()
        cls.token_file = cls.pki.write("token", TOKEN + "\n")
        cls.good = tls_creds(cls.pki, cert=cls.pki.client_cert, key=cls.pki.client_key)
        cls.server = h.Server(workers=1, credentials=cls.good, extra=[
            "--tls-cert", cls.pki.server_cert, "--tls-key", cls.pki.server_key,
            "--tls-client-ca", cls.pki.ca, "--auth-token-file", cls.token_file])

    def client(self, *args, check_rc=None, env=None):
        inp = h.make_input_dir(["h264.mp4"])
        self.addCleanup(shutil.rmtree, inp, True)
        out = self.tmpdir()
        r = h.run_client(["--server", self.server.addr, "--connect-timeout", "3"] +
                         list(args) + [inp, out], env=env, check_rc=check_rc, timeout=120)
        return r, out

    def generate(self, creds, metadata=None, **kw):
        with h.channel(self.server.addr, creds) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            reqs = kw.pop("requests", None) or h.generate_requests(path=h.video("h264.mp4"))
            return h.collect(stub.Generate(reqs, timeout=30, metadata=metadata))

    def test_client_round_trip(self):
        r, out = self.client("--ca", self.pki.ca, "--cert", self.pki.client_cert,
                             "--key", self.pki.client_key, "--auth-token-file",
                             self.token_file, check_rc=0)
        check_png_outputs(self, out, ["h264.mp4"])
        self.assertNotIn("warning", r.stderr)

    def test_client_token_from_environment(self):
        self.client("--ca", self.pki.ca, "--cert", self.pki.client_cert,
                    "--key", self.pki.client_key,
                    env={"THUMBNAIL_TOKEN_FILE": self.token_file}, check_rc=0)

    def test_client_without_certificate_refused(self):
        r, out = self.client("--ca", self.pki.ca, "--auth-token-file", self.token_file,
                             check_rc=2)
        self.assertIn("cannot reach", r.stderr)
        self.assertEqual(h.tree_files(out), [])

    def test_wrong_client_certificate_refused(self):
        """A certificate from another CA: the handshake fails, for our client and grpcio."""
        r, out = self.client("--ca", self.pki.ca, "--cert", self.pki.rogue_cert,
                             "--key", self.pki.rogue_key, "--auth-token-file",
                             self.token_file, check_rc=2)
        self.assertIn("cannot reach", r.stderr)
        self.assertEqual(h.tree_files(out), [])
        rogue = tls_creds(self.pki, cert=self.pki.rogue_cert, key=self.pki.rogue_key)
        with self.assertRaises(grpc.RpcError) as cm:
            self.generate(rogue, metadata=[("authorization", "Bearer " + TOKEN)])
        self.assertRpcCode(cm.exception, "UNAVAILABLE")
        with self.assertRaises(grpc.RpcError) as cm:
            h.health_check(self.server.addr, credentials=rogue)
        self.assertRpcCode(cm.exception, "UNAVAILABLE")
        # The operator sees why in the server's log (gRPC's diagnostics are routed there).
        self.assertRegex(self.server.log_text(),
                         r"WARN front \d+: grpc: Handshake failed.*certificate verify failed")

    def test_python_with_token(self):
        thumbs = self.generate(self.good, metadata=[("authorization", "Bearer " + TOKEN)])
        self.assertEqual(len(thumbs), 1)
        h.png_decode(thumbs[0].data)
        # The scheme is case-insensitive (RFC 7235); the token is not.
        self.generate(self.good, metadata=[("authorization", "bearer " + TOKEN)])

    def test_missing_or_wrong_token_refused(self):
        cases = [(None, "requires a token"),
                 ([("authorization", "Bearer " + TOKEN[:-1])], "not accepted"),
                 ([("authorization", "Bearer " + TOKEN + "x")], "not accepted"),
                 ([("authorization", "Bearer " + TOKEN.upper())], "not accepted"),
                 ([("authorization", TOKEN)], "not accepted"),
                 ([("authorization", "Basic " + TOKEN)], "not accepted"),
                 ([("x-token", TOKEN)], "requires a token")]
        for md, msg in cases:
            with self.subTest(metadata=md):
                with self.assertRaises(grpc.RpcError) as cm:
                    self.generate(self.good, metadata=md)
                self.assertRpcCode(cm.exception, "UNAUTHENTICATED", msg)
        wrong = self.pki.write("wrong-token", "not-the-token\n")
        r, out = self.client("--ca", self.pki.ca, "--cert", self.pki.client_cert,
                             "--key", self.pki.client_key, "--auth-token-file", wrong,
                             check_rc=1)
        self.assertRegex(r.line_for("h264.mp4"), r"^FAIL h264\.mp4: UNAUTHENTICATED: ")
        self.assertEqual(h.tree_files(out), [])
        self.assertNotIn(TOKEN, self.server.log_text())
        self.assertNotIn("not-the-token", self.server.log_text())

    def test_client_stops_after_unauthenticated(self):
        """A refused token would fail every file: the client starts no more and says why."""
        inp = h.make_input_dir(["h264.mp4", "vp9.webm", "hevc.mkv", "mpeg4.avi", "rotate90.mp4"])
        self.addCleanup(shutil.rmtree, inp, True)
        wrong = self.pki.write("wrong-token-2", "nope\n")
        r = h.run_client(["--server", self.server.addr, "--ca", self.pki.ca, "--cert",
                          self.pki.client_cert, "--key", self.pki.client_key,
                          "--auth-token-file", wrong, "--jobs", "1", inp, self.tmpdir()],
                         check_rc=1)
        self.assertEqual(len(re.findall(r"^FAIL .*UNAUTHENTICATED", r.stdout, re.M)), 1, r)
        self.assertIn("0 ok, 1 failed, 0 skipped, 4 not started", r.stdout)
        self.assertIn("4 files not started: check --auth-token-file", r.stderr)

    def test_refused_before_any_upload_byte(self):
        """The token is checked before the first message is read: a 64 MiB upload with
        a wrong token ends at once, the client gets no further than the flow-control
        window, and the access log shows nothing received."""
        sent = [0]
        chunk = b"\0" * (1 << 20)

        def reqs():
            yield h.pb.GenerateRequest(options=h.pb.Options(file_name="big.bin", size=64 << 20))
            for _ in range(64):
                sent[0] += len(chunk)
                yield h.pb.GenerateRequest(data=chunk)
            yield h.pb.GenerateRequest(end=h.pb.End())

        refused = 'file="" in=0 out=0 thumbnails=0 '
        before = self.server.log_text().count(refused)
        t0 = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            self.generate(self.good, metadata=[("authorization", "Bearer wrong")],
                          requests=reqs())
        self.assertRpcCode(cm.exception, "UNAUTHENTICATED")
        self.assertLess(time.monotonic() - t0, 10)
        self.assertLess(sent[0], 16 << 20, "the client could push %d bytes" % sent[0])
        h.wait_for(lambda: self.server.log_text().count(refused) > before, 5,
                   what="the refused call in the access log, with in=0")

    def test_health_needs_no_token(self):
        self.assertEqual(h.health_check(self.server.addr, credentials=self.good), "SERVING")
        r = h.run_client(["--health", "--server", self.server.addr, "--ca", self.pki.ca,
                          "--cert", self.pki.client_cert, "--key", self.pki.client_key],
                         check_rc=0)
        self.assertIn("SERVING", r.stdout)

    def test_reflection_and_unknown_methods_need_the_token(self):
        with h.channel(self.server.addr, self.good) as ch:
            refl = ch.stream_stream(REFLECTION_V1)
            with self.assertRaises(grpc.RpcError) as cm:
                list(refl(iter([LIST_SERVICES]), timeout=10))
            self.assertRpcCode(cm.exception, "UNAUTHENTICATED")
            md = [("authorization", "Bearer " + TOKEN)]
            answers = list(refl(iter([LIST_SERVICES]), timeout=10, metadata=md))
            self.assertEqual(len(answers), 1)
            self.assertIn(b"thumbnail.v1.Thumbnailer", answers[0])

            nope = ch.unary_unary("/thumbnail.v1.Thumbnailer/NoSuchMethod")
            with self.assertRaises(grpc.RpcError) as cm:
                nope(b"", timeout=10)
            self.assertRpcCode(cm.exception, "UNAUTHENTICATED")
            with self.assertRaises(grpc.RpcError) as cm:
                nope(b"", timeout=10, metadata=md)
            self.assertRpcCode(cm.exception, "UNIMPLEMENTED")


def memory_contains(pid, needles):
    """Which of needles (bytes) occur in pid's anonymous readable memory (heap, stack,
    anonymous maps up to 1 GiB each; file-backed maps hold no secrets of ours)."""
    found = set()
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            if parts[1][0] != "r" or (path and path not in ("[heap]", "[stack]")):
                continue
            if hi - lo > (1 << 30):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            found.update(n for n in needles if n in data)
    return found


class SecretsInMemory(h.ServerTestCase):
    """The decode workers parse untrusted input: a worker taken over by a malicious
    video must find neither the TLS private key nor the token in its memory. The
    master keeps the key (to start a new front), which shows the scan finds it."""

    @classmethod
    def setUpClass(cls):
        cls.pki = certs.Pki()
        cls.token_file = cls.pki.write("token", TOKEN + "\n")
        creds = tls_creds(cls.pki, cert=cls.pki.client_cert, key=cls.pki.client_key)
        cls.server = h.Server(workers=2, credentials=creds, extra=[
            "--tls-cert", cls.pki.server_cert, "--tls-key", cls.pki.server_key,
            "--tls-client-ca", cls.pki.ca, "--auth-token-file", cls.token_file])

    def test_workers_hold_no_secrets(self):
        if h.sanitized():
            self.skipTest("ASan build: it reserves terabytes of anonymous memory, too slow to scan")
        key_lines = self.pki.read(self.pki.server_key).splitlines()
        key = key_lines[2]  # a base64 line of the key material (line 1 is a common prefix)
        token = TOKEN.encode()
        roles = self.server.wait_roles()
        self.assertIn(key, memory_contains(self.server.pid, [key]),
                      "the scan does not find the key in the master: it proves nothing")
        for pid in roles["workers"]:
            self.assertEqual(memory_contains(pid, [key, token]), set(),
                             "worker %d holds a secret" % pid)
        for pid in [self.server.pid, roles["front"]]:
            self.assertNotIn(token, memory_contains(pid, [token]),
                             "process %d holds the token itself, not only its digest" % pid)


class BadFiles(unittest.TestCase):
    """Every mistake in the security flags stops the server at start-up: exit 2, a
    message naming the flag, and no process forked."""

    @classmethod
    def setUpClass(cls):
        cls.pki = certs.Pki()

    def start(self, *args):
        spool = os.path.join(self.pki.dir, "spool")
        os.makedirs(spool, exist_ok=True)
        cp = subprocess.run([h.SERVER_BIN, "--listen", "127.0.0.1:%d" % h.free_port(),
                             "--workers", "1", "--spool-dir", spool] + list(args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=30)
        return cp

    def assertRefused(self, args, msg_re):
        cp = self.start(*args)
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertRegex(cp.stderr, msg_re)
        self.assertNotIn("spawned", cp.stderr)

    def test_bad_files(self):
        p = self.pki
        empty = p.write("empty-token", "\n\n")
        spaced = p.write("spaced-token", "two words\n")
        cases = [
            (["--tls-cert", p.server_cert], r"--tls-cert needs --tls-key"),
            (["--tls-key", p.server_key], r"--tls-key needs --tls-cert"),
            (["--tls-cert", p.path("nope.pem"), "--tls-key", p.server_key],
             r"--tls-cert '.*nope\.pem': cannot open: No such file"),
            (["--tls-cert", p.server_key, "--tls-key", p.server_key],
             r"--tls-cert .*no PEM certificate"),
            (["--tls-cert", p.server_cert, "--tls-key", p.server_cert],
             r"--tls-key .*no usable PEM private key"),
            (["--tls-cert", p.server_cert, "--tls-key", p.client_key],
             r"--tls-key .* does not match the certificate"),
            (["--tls-cert", p.expired_server_cert(), "--tls-key", p.server_key],
             r"--tls-cert .*the certificate has expired"),
            (["--tls-cert", p.server_cert, "--tls-key", p.encrypted_key()],
             r"--tls-key .*encrypted key is not supported"),
            (["--tls-cert", p.server_cert, "--tls-key", p.server_key,
              "--tls-client-ca", p.server_key], r"--tls-client-ca .*no PEM certificate"),
            (["--tls-client-ca", p.ca], r"--tls-client-ca needs --tls-cert"),
            (["--tls-unix"], r"--tls-unix needs --tls-cert"),
            (["--tls-cert", p.server_cert, "--tls-key", p.server_key, "--tls-cert", p.dir],
             r"not a regular file"),
            (["--auth-token-file", empty], r"--auth-token-file .*empty"),
            (["--auth-token-file", spaced], r"--auth-token-file .*one word"),
            (["--auth-token-file", p.path("missing")], r"--auth-token-file .*cannot open"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                self.assertRefused(args, msg)

    def test_tls_with_only_unix_listeners(self):
        sock = self.pki.path("only.sock")
        cp = subprocess.run([h.SERVER_BIN, "--listen", "unix:" + sock, "--tls-cert",
                             self.pki.server_cert, "--tls-key", self.pki.server_key],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=30)
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("add --tls-unix", cp.stderr)

    def test_client_usage_errors(self):
        p = self.pki
        empty = p.write("empty-token2", "")
        cases = [
            (["--cert", p.client_cert], "--cert needs --key"),
            (["--key", p.client_key], "--key needs --cert"),
            (["--ca", p.path("nope.pem")], "--ca '"),
            (["--ca", p.client_key], "no PEM CERTIFICATE"),
            (["--cert", p.client_cert, "--key", p.client_cert], "no PEM PRIVATE KEY"),
            (["--auth-token-file", empty], "empty"),
            (["--tls-server-name", "localhost"], "--tls-server-name needs --tls"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                r = h.run_client(args + ["--server", "127.0.0.1:1", h.VIDEOS, p.dir])
                self.assertEqual(r.returncode, 2, r)
                self.assertIn(msg, r.stderr)
        r = h.run_client(["--server", "127.0.0.1:1", h.VIDEOS, p.dir],
                         env={"THUMBNAIL_TOKEN_FILE": p.path("missing")})
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("THUMBNAIL_TOKEN_FILE '", r.stderr)


if __name__ == "__main__":
    h.main()
