#!/usr/bin/python3
"""Minimal thumbnail_server client in Python: upload one video, save one thumbnail.

    python3 thumbnail_example.py [--server HOST:PORT] [--at 10%|12.5] [--width 320] VIDEO OUT.png

Uses Debian's packages only: python3-grpcio and python3-protobuf, plus protoc
(protobuf-compiler) and grpc_python_plugin (protobuf-compiler-grpc) to make
the stubs from proto/thumbnail.proto at start-up, into a temporary directory.
Exit status: 0 saved, 1 the call failed (the gRPC status is printed), 2 usage.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO = os.path.join(HERE, "..", "..", "proto", "thumbnail.proto")
CHUNK = 1 << 20  # upload message size: any size works; 1 MiB is a good trade-off


def load_stubs(proto):
    """Generate thumbnail_pb2 / thumbnail_pb2_grpc from the .proto and import them."""
    out = tempfile.mkdtemp(prefix="thumbnail-stubs-")
    try:
        shutil.copy(proto, os.path.join(out, "thumbnail.proto"))
        subprocess.run(["protoc", "-I" + out, "--python_out=" + out, "--grpc_python_out=" + out,
                        "--plugin=protoc-gen-grpc_python=" + shutil.which("grpc_python_plugin"),
                        os.path.join(out, "thumbnail.proto")], check=True)
        sys.path.insert(0, out)
        import thumbnail_pb2
        import thumbnail_pb2_grpc
        return thumbnail_pb2, thumbnail_pb2_grpc
    finally:
        shutil.rmtree(out, ignore_errors=True)  # already imported


def requests(pb, path, at, width):
    """The request stream: Options, the file in data chunks, End."""
    point = (pb.TimePoint(percent=float(at[:-1])) if at.endswith("%")
             else pb.TimePoint(seconds=float(at)))
    yield pb.GenerateRequest(options=pb.Options(
        file_name=os.path.basename(path), size=os.path.getsize(path), times=[point],
        max_width=width, format=pb.IMAGE_FORMAT_PNG))
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            yield pb.GenerateRequest(data=data)
    yield pb.GenerateRequest(end=pb.End())


def main():
    ap = argparse.ArgumentParser(description="Upload VIDEO to thumbnail_server, save OUT.png")
    ap.add_argument("--server", default=os.environ.get("THUMBNAIL_SERVER", "localhost:50051"))
    ap.add_argument("--at", default="10%", help="seconds (12.5) or percent (10%%)")
    ap.add_argument("--width", type=int, default=320, help="max width, 0 = original")
    ap.add_argument("--proto", default=DEFAULT_PROTO, help="path to thumbnail.proto")
    ap.add_argument("video")
    ap.add_argument("out")
    args = ap.parse_args()

    pb, pb_grpc = load_stubs(args.proto)
    import grpc  # Debian: python3-grpcio

    # Responses carry at most the server's --chunk-size (1 MiB) of image each;
    # allow more anyway, so a server with a bigger chunk size works too.
    opts = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]
    header, image = None, bytearray()
    try:
        with grpc.insecure_channel(args.server, options=opts) as ch:
            stub = pb_grpc.ThumbnailerStub(ch)
            for r in stub.Generate(requests(pb, args.video, args.at, args.width), timeout=300):
                if r.WhichOneof("msg") == "thumbnail":
                    header = r.thumbnail
                else:
                    image += r.data
    except grpc.RpcError as e:
        print("%s: %s: %s" % (args.video, e.code().name, e.details()), file=sys.stderr)
        return 1
    if header is None or len(image) != header.size:
        print("%s: incomplete reply" % args.video, file=sys.stderr)
        return 1
    tmp = args.out + ".part"
    with open(tmp, "wb") as f:
        f.write(image)
    os.replace(tmp, args.out)
    print("%s: %dx%d at %.3f s -> %s (%d bytes)" % (args.video, header.width, header.height,
                                                    header.actual_time, args.out, len(image)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
