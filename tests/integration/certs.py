"""Test PKI made at test time with the openssl CLI (never committed): a CA, a
server certificate for 127.0.0.1 and localhost, a client certificate, and a
rogue CA with a client certificate of its own. EC P-256 keys: the whole set
takes well under a second."""

import atexit
import os
import random
import shutil
import subprocess
import tempfile


def _run(args, cwd):
    subprocess.run(["openssl"] + args, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ca(d, name):
    _run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
          "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
          "-subj", "/CN=thumbnail test " + name], d)


def _leaf(d, name, ca, eku, san=None):
    _run(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
          "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name], d)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=%s\n" % eku)
        if san:
            f.write("subjectAltName=%s\n" % san)
    _run(["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
          "-set_serial", str(random.randint(1, 1 << 62)), "-days", "2", "-out", name + ".pem",
          "-extfile", name + ".ext"], d)


class Pki:
    """Paths: ca, server_cert/server_key, client_cert/client_key, rogue_ca,
    rogue_cert/rogue_key; read(path) -> bytes."""

    def __init__(self, parent=None):
        self.dir = tempfile.mkdtemp(prefix="tn-pki-", dir=parent)
        atexit.register(shutil.rmtree, self.dir, True)
        d = self.dir
        _ca(d, "ca")
        _ca(d, "rogue")
        _leaf(d, "server", "ca", "serverAuth", "IP:127.0.0.1,DNS:localhost")
        _leaf(d, "client", "ca", "clientAuth")
        _leaf(d, "intruder", "rogue", "clientAuth")
        p = lambda n: os.path.join(d, n)  # noqa: E731
        self.ca, self.rogue_ca = p("ca.pem"), p("rogue.pem")
        self.server_cert, self.server_key = p("server.pem"), p("server.key")
        self.client_cert, self.client_key = p("client.pem"), p("client.key")
        self.rogue_cert, self.rogue_key = p("intruder.pem"), p("intruder.key")

    def path(self, name):
        return os.path.join(self.dir, name)

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def write(self, name, data, mode=0o600):
        path = self.path(name)
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def expired_server_cert(self):
        """The server's key certified until yesterday (the server must refuse it)."""
        _run(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
              "-set_serial", "7", "-days", "-1", "-out", "expired.pem",
              "-extfile", "server.ext"], self.dir)
        return self.path("expired.pem")

    def encrypted_key(self):
        """The server key, encrypted with a passphrase (the server must refuse it)."""
        out = self.path("server-encrypted.key")
        _run(["pkey", "-in", "server.key", "-aes128", "-passout", "pass:secret", "-out", out],
             self.dir)
        return out
