#!/usr/bin/env python3
"""Standard services of the front: server reflection (v1 and v1alpha) answers
list_services, file_by_filename and file_containing_symbol from the embedded
descriptor set, and NOT_FOUND for what it does not know; Health/Watch sends
SERVING at once, SERVICE_UNKNOWN for an unknown service, NOT_SERVING when a
SIGQUIT starts the drain, and the streams end when the server stops."""
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness as h

from google.protobuf import descriptor_pb2

GRPC_PROTO = "/usr/share/grpc-proto"


def _gen_reflection_stubs():
    """Python stubs for Debian's reflection.proto, v1 and v1alpha. Like harness.py does
    for health.proto, the files are copied to the top level under new names: generated
    at grpc/reflection/... they would make a "grpc" package that shadows grpcio."""
    d = tempfile.mkdtemp(prefix="tn-refl-stubs-")
    for v in ("v1", "v1alpha"):
        shutil.copyfile(os.path.join(GRPC_PROTO, "grpc", "reflection", v, "reflection.proto"),
                        os.path.join(d, "reflection_%s.proto" % v))
    subprocess.run(["protoc", "-I" + d, "--python_out=" + d, "--grpc_python_out=" + d,
                    "--plugin=protoc-gen-grpc_python=" + h.GRPC_PYTHON_PLUGIN,
                    os.path.join(d, "reflection_v1.proto"),
                    os.path.join(d, "reflection_v1alpha.proto")], check=True)
    sys.path.insert(0, d)
    return d


_STUBS = _gen_reflection_stubs()
import reflection_v1_pb2  # noqa: E402
import reflection_v1_pb2_grpc  # noqa: E402
import reflection_v1alpha_pb2  # noqa: E402
import reflection_v1alpha_pb2_grpc  # noqa: E402

VERSIONS = {"v1": (reflection_v1_pb2, reflection_v1_pb2_grpc),
            "v1alpha": (reflection_v1alpha_pb2, reflection_v1alpha_pb2_grpc)}
SERVICES = {"thumbnail.v1.Thumbnailer", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
NOT_FOUND = 5
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


def reflect(addr, requests, version="v1", timeout=10):
    """Send the requests (kwargs of ServerReflectionRequest) on one stream; the responses."""
    pb2, pb2_grpc = VERSIONS[version]
    with h.channel(addr) as ch:
        stub = pb2_grpc.ServerReflectionStub(ch)
        reqs = [pb2.ServerReflectionRequest(host="localhost", **r) for r in requests]
        return list(stub.ServerReflectionInfo(iter(reqs), timeout=timeout))


def files_of(resp):
    """The FileDescriptorProtos of a file_descriptor_response, by name."""
    out = {}
    for b in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(b)
        out[fd.name] = fd
    return out


class Watcher:
    """A Health/Watch stream read by a thread into a queue (None = stream ended)."""

    def __init__(self, addr, service=""):
        self.ch = h.channel(addr)
        stub = h.health_pb2_grpc.HealthStub(self.ch)
        self.call = stub.Watch(h.health_pb2.HealthCheckRequest(service=service), timeout=60)
        self.q = queue.Queue()
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            for r in self.call:
                self.q.put(r.status)
        except h.grpc.RpcError as e:
            self.error = e
        self.q.put(None)

    def next(self, timeout=10):
        return self.q.get(timeout=timeout)

    def close(self):
        self.call.cancel()
        self.t.join(10)
        self.ch.close()


class Reflection(h.ServerTestCase):
    workers = 1

    def test_list_services_v1_and_v1alpha(self):
        for v in VERSIONS:
            (r,) = reflect(self.server.addr, [dict(list_services="")], version=v)
            self.assertEqual(r.WhichOneof("message_response"), "list_services_response", v)
            names = {s.name for s in r.list_services_response.service}
            self.assertEqual(names, SERVICES, v)
            self.assertEqual(r.original_request.WhichOneof("message_request"), "list_services")

    def test_file_containing_service(self):
        for v in VERSIONS:
            (r,) = reflect(self.server.addr,
                           [dict(file_containing_symbol="thumbnail.v1.Thumbnailer")], version=v)
            files = files_of(r)
            self.assertIn("thumbnail.proto", files, v)
            fd = files["thumbnail.proto"]
            self.assertEqual(fd.package, "thumbnail.v1")
            (svc,) = [s for s in fd.service if s.name == "Thumbnailer"]
            (m,) = [m for m in svc.method if m.name == "Generate"]
            self.assertTrue(m.client_streaming)
            self.assertTrue(m.server_streaming)
            self.assertEqual(m.input_type, ".thumbnail.v1.GenerateRequest")

    def test_file_containing_method_message_enum(self):
        cases = {"thumbnail.v1.Thumbnailer.Generate": "thumbnail.proto",
                 "thumbnail.v1.GenerateRequest": "thumbnail.proto",
                 ".thumbnail.v1.Options": "thumbnail.proto",
                 "grpc.health.v1.HealthCheckResponse.ServingStatus": "grpc/health/v1/health.proto",
                 "grpc.health.v1.Health.Watch": "grpc/health/v1/health.proto",
                 "grpc.reflection.v1alpha.ServerReflectionRequest":
                     "grpc/reflection/v1alpha/reflection.proto",
                 "grpc.reflection.v1.ServerReflection": "grpc/reflection/v1/reflection.proto"}
        resps = reflect(self.server.addr,
                        [dict(file_containing_symbol=s) for s in cases])  # one stream
        self.assertEqual(len(resps), len(cases))
        for (sym, want), r in zip(cases.items(), resps):
            self.assertEqual(r.original_request.file_containing_symbol, sym)
            self.assertIn(want, files_of(r), sym)
            # The defining file comes first, its imports after it.
            fd = descriptor_pb2.FileDescriptorProto()
            fd.ParseFromString(r.file_descriptor_response.file_descriptor_proto[0])
            self.assertEqual(fd.name, want, sym)

    def test_file_by_filename(self):
        (r,) = reflect(self.server.addr, [dict(file_by_filename="grpc/health/v1/health.proto")],
                       version="v1alpha")
        fd = files_of(r)["grpc/health/v1/health.proto"]
        self.assertEqual(fd.package, "grpc.health.v1")
        self.assertEqual({s.name for s in fd.service}, {"Health"})
        self.assertEqual({m.name for m in fd.service[0].method}, {"Check", "Watch"})

    def test_not_found(self):
        resps = reflect(self.server.addr, [dict(file_containing_symbol="no.such.Symbol"),
                                           dict(file_by_filename="nope.proto"),
                                           dict(list_services="")])
        for r in resps[:2]:
            self.assertEqual(r.WhichOneof("message_response"), "error_response")
            self.assertEqual(r.error_response.error_code, NOT_FOUND)
        # The stream goes on after an error.
        self.assertEqual(resps[2].WhichOneof("message_response"), "list_services_response")

    def test_health_check_unchanged(self):
        self.assertEqual(h.health_check(self.server.addr), "SERVING")
        self.assertEqual(h.health_check(self.server.addr, service="thumbnail.v1.Thumbnailer"),
                         "SERVING")
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.health_check(self.server.addr, service="nope")
        self.assertRpcCode(cm.exception, "NOT_FOUND")

    def test_watch_serving_and_unknown(self):
        w = Watcher(self.server.addr)
        u = Watcher(self.server.addr, service="no.such.Service")
        try:
            self.assertEqual(w.next(), SERVING)
            self.assertEqual(u.next(), SERVICE_UNKNOWN)
            # Both streams stay open.
            time.sleep(0.5)
            self.assertTrue(w.q.empty() and u.q.empty())
        finally:
            w.close()
            u.close()
        # Cancelled watches are gone, the server still answers.
        self.assertEqual(h.health_check(self.server.addr), "SERVING")


class WatchDrain(h.ServerTestCase):
    workers = 1
    server_extra = ("--grace", "30s")

    def test_sigquit_sends_not_serving_and_ends_streams(self):
        srv = self.server
        w = Watcher(srv.addr)
        self.assertEqual(w.next(), SERVING)
        # A reflection stream that stays open (no half-close) must not hold up the stop.
        reqs = queue.Queue()
        reqs.put(reflection_v1_pb2.ServerReflectionRequest(list_services=""))
        ch = h.channel(srv.addr)
        refl = reflection_v1_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter(reqs.get, None), timeout=60)
        self.assertEqual(next(refl).WhichOneof("message_response"), "list_services_response")

        t0 = time.monotonic()
        os.kill(srv.pid, signal.SIGQUIT)
        self.assertEqual(w.next(), NOT_SERVING)
        self.assertIsNone(w.next(), "the watch stream should end at shutdown")
        with self.assertRaises(h.grpc.RpcError):
            next(refl)
        rc = srv.proc.wait(20)
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 10, "streams held the shutdown up")
        reqs.put(None)
        w.close()
        ch.close()


class StreamCap(h.ServerTestCase):
    workers = 1
    server_extra = ("--max-concurrent-calls", "2")

    def test_streams_are_capped(self):
        ws = [Watcher(self.server.addr) for _ in range(2)]
        try:
            for w in ws:
                self.assertEqual(w.next(), SERVING)
            extra = Watcher(self.server.addr)
            self.assertIsNone(extra.next())
            self.assertRpcCode(extra.error, "RESOURCE_EXHAUSTED")
            extra.close()
        finally:
            for w in ws:
                w.close()
        # The cancelled watchers released their places.
        h.wait_for(lambda: self._watch_ok(), 10, what="a watch to be accepted again")

    def _watch_ok(self):
        w = Watcher(self.server.addr)
        try:
            return w.next() == SERVING
        finally:
            w.close()

if __name__ == "__main__":
    h.main()
