#!/usr/bin/env python3
"""Limits the README promises, each seen to bite, and the front's hand-written
parser of upload messages fed raw protobuf bytes.

--max-queued-jobs N: with the one worker busy and N uploaded jobs waiting, the
next complete upload is refused at once with RESOURCE_EXHAUSTED naming the flag.
--max-message-bytes: a request message above it is refused (RESOURCE_EXHAUSTED);
one below it goes through; and no response message the server sends is larger
(a 1080p PNG comes in pieces, each measured here).
Raw upload messages (grpcio's generic API, bytes in and out): encodings
protobuf allows but our fast path does not take (non-minimal length varint, an
unknown field, the data field twice: last one wins) must give exactly the
thumbnail of the canonical upload; malformed ones (truncated length, length past
the end, an over-long varint, a wrong wire type, an empty message) end with
INVALID_ARGUMENT, reach no worker, and leave the spool empty and the front alive.
"""
import os
import re
import threading
import time

import harness as h

GENERATE = "/thumbnail.v1.Thumbnailer/Generate"
LONG = dict(times=[0.06 * i for i in range(64)], max_width=7680, upscale=True)


def varint(n, pad=0):
    """Protobuf base-128 varint of n; pad adds that many redundant 0x80 groups
    (non-minimal, still valid)."""
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            break
    out += b"\x00" * pad  # redundant high groups of zero bits
    return bytes(b | 0x80 for b in out[:-1]) + out[-1:]


def data_msg(chunk, pad=0):
    """GenerateRequest{data: chunk}: field 2, wire type 2."""
    return b"\x12" + varint(len(chunk), pad) + chunk


def raw_call(addr, messages, timeout=30, options=()):
    """One Generate call with raw request bytes; returns [response bytes] or raises."""
    with h.channel(addr, options=options) as ch:
        call = ch.stream_stream(GENERATE)  # no serializers: bytes both ways
        return list(call(iter(messages), timeout=timeout))


def thumbs_of(raw_responses):
    return h.collect(h.pb.GenerateResponse.FromString(r) for r in raw_responses)


class MaxQueuedJobs(h.ServerTestCase):
    workers = 1
    metrics = True
    server_extra = ("--max-queued-jobs", "1", "--job-timeout", "120")

    def queue_depth(self):
        _st, _ct, body = self.server.scrape()
        m = re.search(r"^thumbnail_queue_depth (\d+)", body, re.M)
        return int(m.group(1)) if m else None

    def test_queue_full_is_resource_exhausted(self):
        worker = self.server.worker_pids()[0]
        errors = {}

        def run(i):
            try:
                h.generate(self.server.addr, path=h.video("h264.mp4"), file_name="q%d.mp4" % i,
                           timeout=120, **LONG)
            except h.grpc.RpcError as e:
                errors[i] = e.code().name

        t0 = threading.Thread(target=run, args=(0,), daemon=True)
        t0.start()
        self.assertIsNotNone(h.busy_worker([worker], timeout=30), "the worker never got job 0")
        t1 = threading.Thread(target=run, args=(1,), daemon=True)
        t1.start()
        h.wait_for(lambda: self.queue_depth() == 1, 30, what="job 1 waiting in the queue")
        t = time.monotonic()
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.generate(self.server.addr, path=h.video("h264.mp4"), file_name="q2.mp4",
                       timeout=60)
        self.assertLess(time.monotonic() - t, 5, "refused, not queued")
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED", r"--max-queued-jobs")
        # The refusal cost the others nothing (the server's stop ends them).
        self.assertEqual(errors, {})
        self.assertEqual(self.queue_depth(), 1)


class MaxMessageBytes(h.ServerTestCase):
    workers = 1
    LIMIT = 64 * 1024
    server_extra = ("--max-message-bytes", "64K", "--chunk-size", "16K")

    def test_request_over_the_limit_is_refused(self):
        data = h.read_bytes(h.video("h264.mp4"))
        opts = h.pb.GenerateRequest(options=h.pb.Options(file_name="big-msg.mp4",
                                                         size=len(data))).SerializeToString()
        with self.assertRaises(h.grpc.RpcError) as cm:
            raw_call(self.server.addr, [opts, data_msg(data[:self.LIMIT + 1024])])
        self.assertRpcCode(cm.exception, "RESOURCE_EXHAUSTED")
        h.log("over the limit: %s" % cm.exception.details())
        # just under it: fine (60 KiB chunks)
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"), chunk=60 * 1024)
        self.assertEqual(len(thumbs), 1)

    def test_responses_stay_under_the_limit(self):
        data = h.read_bytes(h.video("h264_1080p.mp4"))
        reqs = list(h.generate_requests(data=data, file_name="1080p.mp4", times=[1],
                                        max_width=1920, chunk=32 * 1024))
        raw = raw_call(self.server.addr, [r.SerializeToString() for r in reqs])
        sizes = [len(r) for r in raw]
        thumbs = thumbs_of(raw)
        self.assertEqual(len(thumbs), 1)
        h.png_decode(thumbs[0].data)
        h.log("1080p PNG of %d bytes in %d messages, largest %d"
              % (len(thumbs[0].data), len(raw), max(sizes)))
        self.assertGreater(len(thumbs[0].data), self.LIMIT, "too small to need several messages")
        self.assertLessEqual(max(sizes), self.LIMIT)


class RawUploadMessages(h.ServerTestCase):
    workers = 1

    def options(self, name, size):
        return h.pb.GenerateRequest(options=h.pb.Options(
            file_name=name, size=size, times=[h.time_point(2)])).SerializeToString()

    END = h.pb.GenerateRequest(end=h.pb.End()).SerializeToString()

    def upload(self, name, encode, chunk=48 * 1024):
        data = h.read_bytes(h.video("h264.mp4"))
        msgs = [self.options(name, len(data))]
        msgs += [encode(data[o:o + chunk]) for o in range(0, len(data), chunk)]
        return thumbs_of(raw_call(self.server.addr, msgs + [self.END]))

    def worker_lines_for(self, name):
        return [l for l in self.server.log_text().splitlines()
                if re.search(r" worker\S* \d+: job \d+ %s " % re.escape(name), l)]

    def test_valid_encodings_give_the_same_thumbnail(self):
        ref = self.upload("canonical.mp4", data_msg)
        self.assertEqual(len(ref), 1)
        encodings = {
            # what the fast path takes: it must agree with protobuf-c
            "minimal": data_msg,
            # protobuf allows these; the fast path must leave them to protobuf-c
            "long-varint": lambda c: data_msg(c, pad=2),
            "unknown-field-first": lambda c: b"\x78\x2a" + data_msg(c),
            "unknown-field-last": lambda c: data_msg(c) + b"\x78\x2a",
            "data-twice": lambda c: data_msg(b"\xde\xad" * 100) + data_msg(c),
        }
        for what, enc in encodings.items():
            with self.subTest(encoding=what):
                got = self.upload("enc-%s.mp4" % what, enc)
                self.assertEqual(len(got), 1)
                self.assertEqual(bytes(got[0].data), bytes(ref[0].data),
                                 "%s: not the canonical upload's thumbnail" % what)

    def test_malformed_messages_are_invalid_argument(self):
        data = h.read_bytes(h.video("h264.mp4"))
        front = self.server.front_pid()
        chunk = data[:1000]
        cases = {
            "truncated-length": b"\x12",
            "length-past-end": b"\x12" + varint(len(chunk) + 5) + chunk,
            "length-short": b"\x12" + varint(len(chunk) - 5) + chunk,
            "overlong-varint": b"\x12" + b"\x80" * 10 + b"\x01" + chunk,
            "wrong-wire-type": b"\x10\x05",
            "field-zero": b"\x02\x01x",
            "empty": b"",
            "garbage": b"\xff" * 16,
        }
        for what, msg in cases.items():
            name = "bad-%s.mp4" % what
            with self.subTest(message=what):
                with self.assertRaises(h.grpc.RpcError) as cm:
                    raw_call(self.server.addr, [self.options(name, len(data)), data_msg(chunk),
                                                msg, data_msg(data[1000:]), self.END])
                self.assertRpcCode(cm.exception, "INVALID_ARGUMENT")
                h.log("%s: %s" % (what, cm.exception.details()))
        # none became a job, nothing is left behind, the front is the same process
        h.wait_for(lambda: all(
            re.search(r" front \d+: .*file=\"bad-%s.mp4\"" % w, self.server.log_text())
            for w in cases), 10, what="the front's access lines for every bad call")
        for what in cases:
            self.assertEqual(self.worker_lines_for("bad-%s.mp4" % what), [])
        h.wait_for(lambda: os.listdir(self.server.spool) == [], 5, what="an empty spool")
        self.assertEqual(self.server.front_pid(), front)
        self.assertEqual(len(self.upload("after.mp4", data_msg)), 1)


if __name__ == "__main__":
    h.main()
