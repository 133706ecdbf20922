#!/usr/bin/env python3
"""An independent client: Python's grpcio from Debian, with stubs generated
from proto/thumbnail.proto at test time, completes Generate calls (options,
64 KiB data chunks, end marker -> header + data reassembled into valid PNGs)
and a grpc.health.v1 check."""
import time

import harness as h


class PythonClient(h.ServerTestCase):
    workers = 2
    # Small response chunks, so a thumbnail arrives in several data messages.
    server_extra = ("--chunk-size", "16K")

    def test_generate(self):
        thumbs = h.generate(self.server.addr, path=h.video("h264.mp4"), chunk=64 * 1024)
        self.assertEqual(len(thumbs), 1)
        t = thumbs[0]
        hd = t.header
        self.assertEqual(hd.index, 0)
        self.assertEqual((hd.width, hd.height), (320, 180))
        self.assertIn(hd.format, (h.pb.IMAGE_FORMAT_PNG, h.pb.IMAGE_FORMAT_UNSPECIFIED))
        self.assertEqual(hd.size, len(t.data))
        # Default time point: 10 % of 4 s.
        self.assertAlmostEqual(hd.requested_time, 0.4, delta=0.05)
        self.assertGreaterEqual(hd.actual_time, hd.requested_time - 1e-3)
        self.assertLess(hd.actual_time, hd.requested_time + 0.1)
        png = h.png_decode(t.data)
        self.assertEqual((png.width, png.height), (320, 180))
        self.assertGreater(h.image_variance(png.rgb_bytes()), 100)

    def test_generate_several_points_and_chunking(self):
        """Headers come in index order with their own data; a thumbnail larger than the
        server's --chunk-size (16K) spans several data messages."""
        data_msgs = []

        def counting(responses):
            for r in responses:
                if r.WhichOneof("msg") == "data":
                    data_msgs.append(len(r.data))
                yield r

        with h.channel(self.server.addr) as ch:
            stub = h.pb_grpc.ThumbnailerStub(ch)
            reqs = h.generate_requests(path=h.video("hevc.mkv"), times=[0.5, "50%", 100],
                                       max_width=640, chunk=64 * 1024)
            thumbs = h.collect(counting(stub.Generate(reqs, timeout=60)))
        self.assertEqual([t.header.index for t in thumbs], [0, 1, 2])
        self.assertAlmostEqual(thumbs[0].header.requested_time, 0.5, delta=1e-6)
        self.assertAlmostEqual(thumbs[1].header.requested_time, 1.5, delta=0.05)  # 50 % of 3 s
        # Past the end: clamped to the last frame, and the header says which.
        self.assertLess(thumbs[2].header.actual_time, 3.0 + 1e-6)
        self.assertGreater(thumbs[2].header.actual_time, 2.5)
        for t in thumbs:
            png = h.png_decode(t.data)
            self.assertEqual((png.width, png.height), (640, 360))
        self.assertTrue(all(n <= 16 * 1024 for n in data_msgs), max(data_msgs))
        self.assertGreater(len(data_msgs), len(thumbs), "no thumbnail was split")

    def test_generate_without_declared_size(self):
        """size = 0: the end marker alone terminates the upload."""
        thumbs = h.generate(self.server.addr, path=h.video("vp9.webm"), declare_size=False,
                            times=["1"], mode=h.pb.SEEK_MODE_KEYFRAME)
        self.assertEqual(len(thumbs), 1)
        h.png_decode(thumbs[0].data)

    def test_generate_declared_size_without_end(self):
        """size declared: the upload is complete when size bytes arrived, end is optional."""
        thumbs = h.generate(self.server.addr, path=h.video("mpeg4.avi"), send_end=False)
        self.assertEqual(len(thumbs), 1)
        self.assertEqual((thumbs[0].header.width, thumbs[0].header.height), (320, 180))

    def test_big_messages(self):
        """4 MiB data messages (more than gRPC's default 4 MiB receive limit once
        serialized) are accepted: the server sets its limit explicitly."""
        thumbs = h.generate(self.server.addr, path=h.video("h264_1080p.mp4"),
                            chunk=4 * 1024 * 1024, times=["5%"])
        self.assertEqual((thumbs[0].header.width, thumbs[0].header.height), (320, 180))

    def test_health(self):
        self.assertEqual(h.health_check(self.server.addr), "SERVING")
        t0 = time.monotonic()
        for _ in range(20):
            self.assertEqual(h.health_check(self.server.addr), "SERVING")
        h.log("20 health checks in %.0f ms" % ((time.monotonic() - t0) * 1000))

    def test_health_unknown_service(self):
        with self.assertRaises(h.grpc.RpcError) as cm:
            h.health_check(self.server.addr, service="no.such.Service")
        self.assertRpcCode(cm.exception, "NOT_FOUND")


if __name__ == "__main__":
    h.main()
