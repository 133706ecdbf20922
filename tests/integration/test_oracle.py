"""The ffmpeg CLI as the oracle: if ffmpeg decodes a frame of a file, so do we, and it
is the same picture.

For every video encoder of Debian's ffmpeg that makes a picture, in every container it
fits (with and without the container's index where the muxer can leave it out: a
Matroska/WebM, AVI, ASF or NUT file written to a pipe has no index and no duration, an
MP4/MOV written fragmented has no sample table), a small testsrc2 clip is made here; the
real server (through grpcio) makes an accurate thumbnail mid-GOP and ffmpeg makes its own
frame at the time the server reports. Same picture = PSNR >= 35 dB; where ffmpeg decodes
nothing, we must fail too. Then damaged files (the fuzz test's mutations): wherever we
fail, ffmpeg must fail as well (or the file be one we refuse on purpose: a container
outside the server's whitelist).

The table (encoder x container -> ours / ffmpeg / PSNR) is written to
$TN_BUILD_DIR/oracle-table.md and to the test log.

TN_ORACLE_FUZZ (default 120): damaged files checked.
"""

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import test_fuzz  # noqa: E402  (its deterministic mutations)

W, H = 160, 120
RATE, SECONDS, GOP = 10, 2, 8
AT = 1.35  # between frames, mid-GOP: an accurate seek decodes past a keyframe
MIN_PSNR = 35.0
FUZZ_COUNT = int(os.environ.get("TN_ORACLE_FUZZ", "120"))

# container -> (format, extension, the way to leave the index out or None)
CONTAINERS = {
    "mp4": ("mp4", "mp4", "frag"), "mov": ("mov", "mov", "frag"), "3gp": ("3gp", "3gp", None),
    "mkv": ("matroska", "mkv", "pipe"), "webm": ("webm", "webm", "pipe"),
    "avi": ("avi", "avi", "pipe"), "asf": ("asf", "asf", "pipe"), "nut": ("nut", "nut", "pipe"),
    "flv": ("flv", "flv", None), "mpegts": ("mpegts", "ts", None),
    "mpeg": ("mpeg", "mpg", None), "ogg": ("ogg", "ogv", None), "gif": ("gif", "gif", None),
}

# encoder -> (extra args, containers); the first available of a "|" list is used
ENCODERS = [
    ("mpeg1video", ["-r", "25"], ["mpeg", "mpegts", "avi", "mkv", "mov"]),  # no 10 fps in MPEG-1
    ("mpeg2video", [], ["mpeg", "mpegts", "mkv", "mp4", "avi"]),
    ("mpeg4", [], ["mp4", "mov", "mkv", "avi", "3gp", "mpegts", "asf", "nut"]),
    ("mpeg4", ["-bf", "2"], ["mp4", "mkv", "avi"]),
    ("msmpeg4v2", [], ["avi", "mkv", "asf"]),
    ("msmpeg4", [], ["avi", "mkv", "asf"]),
    ("h263", ["-s", "176x144"], ["3gp", "mov", "avi", "mkv"]),  # QCIF: 12:11 pixels
    ("h263p", [], ["mov", "avi", "mkv"]),
    ("flv", [], ["flv", "avi", "mkv"]),
    ("wmv1", [], ["asf", "avi", "mkv"]),
    ("wmv2", [], ["asf", "avi", "mkv"]),
    ("mjpeg", [], ["avi", "mov", "mkv"]),
    ("cinepak", [], ["avi", "mov", "mkv"]),
    ("msvideo1", [], ["avi", "mkv"]),
    ("libtheora", [], ["ogg", "mkv"]),
    ("libvpx", [], ["webm", "mkv", "ogg"]),
    ("libvpx-vp9", ["-deadline", "realtime", "-cpu-used", "8"], ["webm", "mkv", "mp4"]),
    ("libx264", ["-preset", "ultrafast", "-bf", "2"], ["mp4", "mov", "mkv", "avi", "flv",
                                                         "mpegts", "3gp", "nut"]),
    ("libx265", ["-preset", "ultrafast", "-x265-params", "log-level=error"],
     ["mp4", "mkv", "mpegts", "mov"]),
    ("libsvtav1|libaom-av1", ["-preset", "12", "-cpu-used", "8"], ["mkv", "webm", "mp4"]),
    ("prores_ks", [], ["mov", "mkv"]),
    ("dnxhd", ["-profile:v", "dnxhr_lb", "-s", "256x144"], ["mov", "mkv"]),
    ("ffv1", [], ["mkv", "avi", "nut"]),
    ("huffyuv", [], ["avi", "mkv"]),
    ("qtrle", [], ["mov"]),
    ("png", [], ["mov", "mkv", "avi"]),
    ("gif", [], ["gif"]),
]
# options an encoder needs whatever the container
ENCODER_PIX = {"mjpeg": "yuvj420p", "cinepak": "rgb24", "msvideo1": "rgb555le", "qtrle": "rgb24",
               "png": "rgb24", "gif": "pal8", "prores_ks": "yuv422p10le",
               "dnxhd": "yuv422p", "huffyuv": "yuv422p"}


def available_encoders():
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    return {line.split()[1] for line in out.splitlines()
            if line.startswith(" V") and len(line.split()) > 1}


def psnr(a, b):
    if len(a) != len(b) or not a:
        return -1.0
    mse = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def ffmpeg_frame(path, t, w, hgt, from_start=False, flags="area"):
    """ffmpeg's frame at t (the first at or after it) as RGB24 at w x hgt, or None.
    from_start: decode from the start and select by time instead of -ss (for files
    ffmpeg itself cannot seek in)."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    vf = "scale=%d:%d:flags=%s" % (w, hgt, flags)
    if from_start:
        vf = "select=gte(t\\,%.6f),%s" % (max(0.0, t - 0.0005), vf)
    elif t is not None:
        cmd += ["-ss", "%.6f" % max(0.0, t - 0.0005)]
    cmd += ["-i", path, "-frames:v", "1", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    cp = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    return cp.stdout if cp.returncode == 0 and len(cp.stdout) == w * hgt * 3 else None


def ffmpeg_decodes_any(path):
    """Whether the ffmpeg CLI decodes any frame of the file (from the start)."""
    cp = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path,
                         "-map", "0:v:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                         "rgb24", "-"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                        timeout=60)
    return len(cp.stdout) > 0


def ffprobe_format(path):
    cp = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=format_name", "-of",
                         "default=nw=1:nk=1", path], stdout=subprocess.PIPE, text=True,
                        stderr=subprocess.DEVNULL, timeout=60)
    return cp.stdout.strip()


WHITELIST = set("mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,mpegvideo,ogg,asf,"
                "mxf,nut,ivf,gif,h264,hevc,m4v,obu,dv,yuv4mpegpipe".split(","))


class OracleTest(h.ServerTestCase):
    def ours(self, path, times=(AT,)):
        """(thumbnail header, RGB bytes) or (None, 'CODE: message')."""
        try:
            t = h.generate(self.server.addr, path=path, times=times, max_width=0, timeout=60)[0]
        except h.grpc.RpcError as e:
            return None, "%s: %s" % (e.code().name, e.details())
        png = h.png_decode(bytes(t.data))
        return t.header, png.rgb_bytes()

    def make_clip(self, d, enc, extra, cont, noidx):
        fmt, ext, how = CONTAINERS[cont]
        path = os.path.join(d, "%s-%s%s.%s" % (enc, cont, "-noidx" if noidx else "", ext))
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
               "-i", "testsrc2=size=%dx%d:rate=%d:duration=%d" % (W, H, RATE, SECONDS),
               "-c:v", enc, "-g", str(GOP)] + extra
        if enc in ENCODER_PIX:
            cmd += ["-pix_fmt", ENCODER_PIX[enc]]
        if enc == "gif":
            cmd += ["-vf", "split[a][b];[a]palettegen[p];[b][p]paletteuse"]
        if noidx and how == "frag":
            cmd += ["-movflags", "frag_keyframe+empty_moov"]
        if noidx and how == "pipe":
            cmd += ["-f", fmt, "pipe:1"]
            with open(path, "wb") as f:
                cp = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, timeout=120)
        else:
            cmd += ["-f", fmt, path]
            cp = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                timeout=120)
        if cp.returncode != 0 or not os.path.exists(path) or os.path.getsize(path) == 0:
            return None, (cp.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return path, ""

    def test_1_encoders_by_containers(self):
        d = self.tmpdir()
        have = available_encoders()
        rows, bad, made = [], [], 0
        t0 = time.monotonic()
        for encs, extra, conts in ENCODERS:
            enc = next((e for e in encs.split("|") if e in have), None)
            label = enc or encs
            if extra and enc == "mpeg4":
                label = "mpeg4 (B-frames)"
            if enc is None:
                rows.append((label, "-", "-", "encoder not in this ffmpeg", "", ""))
                continue
            if "|" in encs:  # keep only the options of the encoder found
                extra = {"libsvtav1": ["-preset", "12"],
                         "libaom-av1": ["-cpu-used", "8", "-row-mt", "1"]}.get(enc, [])
            for cont in conts:
                for noidx in ((False, True) if CONTAINERS[cont][2] else (False,)):
                    variant = cont + (" (no index)" if noidx else "")
                    path, why = self.make_clip(d, enc, extra, cont, noidx)
                    if path is None:
                        rows.append((label, variant, "-", "ffmpeg cannot make it: " + why[:60],
                                     "", ""))
                        continue
                    made += 1
                    hdr, img = self.ours(path)
                    if hdr is None:
                        ref = ffmpeg_frame(path, AT, W, H)
                        ff = "frame" if ref is not None else "no frame"
                        ok = ref is None
                        rows.append((label, variant, img[:70], ff, "", "ok" if ok else "FAIL"))
                        if not ok:
                            bad.append("%s in %s: we fail (%s), ffmpeg decodes" % (
                                label, variant, img))
                        continue
                    # the engine scales up (a 12:11 SAR) with bicubic, down with area
                    sw, sh = (int(v) for v in (extra[extra.index("-s") + 1] if "-s" in extra
                                               else "%dx%d" % (W, H)).split("x"))
                    flags = "bicubic" if hdr.width > sw or hdr.height > sh else "area"
                    # ffmpeg's frame at our time, decoded from the start: `ffmpeg -ss` has
                    # seeking troubles of its own (MPEG-PS, AVI without an index)
                    ref = ffmpeg_frame(path, hdr.actual_time, hdr.width, hdr.height,
                                       from_start=True, flags=flags)
                    p = psnr(img, ref) if ref is not None else -1
                    ok = p >= MIN_PSNR
                    rows.append((label, variant, "t=%.3f %dx%d%s" % (
                        hdr.actual_time, hdr.width, hdr.height,
                        (" (%s)" % hdr.reason) if hdr.reason else ""),
                        "frame" if ref is not None else "no frame",
                        "%.1f" % p if ref is not None else "", "ok" if ok else "FAIL"))
                    if not ok:
                        bad.append("%s in %s: PSNR %.1f dB at t=%.3f (asked %.2f)" % (
                            label, variant, p, hdr.actual_time, AT))
                    os.unlink(path)
        wall = time.monotonic() - t0
        table = ["| encoder | container | ours | ffmpeg | PSNR dB | verdict |",
                 "|---|---|---|---|---|---|"]
        table += ["| %s |" % " | ".join(r) for r in rows]
        text = ("Oracle: accurate thumbnail at %.2f s of a %dx%d %d fps %d s testsrc2 clip "
                "(GOP %d) vs ffmpeg's frame at the time we report, decoded from the start "
                "(PSNR dB; >= %.0f passes); %d clips in %.0f s\n\n%s\n"
                % (AT, W, H, RATE, SECONDS, GOP, MIN_PSNR, made, wall, "\n".join(table)))
        with open(os.path.join(h.BUILD_DIR, "oracle-table.md"), "w") as f:
            f.write(text)
        h.log(text)
        self.assertGreaterEqual(made, 60, "too few clips made: is ffmpeg complete?")
        self.assertEqual(bad, [], "\n".join(bad))

    def test_2_damaged_files(self):
        sources = {n: h.read_bytes(h.video(n)) for n in test_fuzz.SOURCES}
        corpus = test_fuzz.make_corpus(test_fuzz.SEED, FUZZ_COUNT, sources)
        d = self.tmpdir()
        counts, bad = {}, []
        for name, data, desc, _kw in corpus:
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            hdr, img = self.ours(path, times=())
            if hdr is not None:
                counts["ours ok"] = counts.get("ours ok", 0) + 1
            elif not img.startswith("INVALID_ARGUMENT"):
                counts["ours " + img.split(":")[0]] = counts.get("ours " + img.split(":")[0], 0) + 1
            elif not ffmpeg_decodes_any(path):
                counts["both fail"] = counts.get("both fail", 0) + 1
            elif not set(ffprobe_format(path).split(",")) & WHITELIST:
                counts["refused container"] = counts.get("refused container", 0) + 1
            else:
                counts["ours fail, ffmpeg decodes"] = counts.get(
                    "ours fail, ffmpeg decodes", 0) + 1
                bad.append("%s (%s): %s" % (name, desc, img))
                keep = os.path.join(h.BUILD_DIR, "oracle-failures")
                os.makedirs(keep, exist_ok=True)
                shutil.copyfile(path, os.path.join(keep, name))
            os.unlink(path)
        summary = "Damaged files (fuzz mutations, seed %d): %d files: %s" % (
            test_fuzz.SEED, len(corpus), ", ".join("%s %d" % kv for kv in sorted(counts.items())))
        with open(os.path.join(h.BUILD_DIR, "oracle-table.md"), "a") as f:
            f.write("\n%s\n" % summary)
        h.log(summary)
        self.assertGreater(counts.get("ours ok", 0), 0)
        self.assertEqual(bad, [], "we fail where ffmpeg decodes a frame (kept in "
                         "build/oracle-failures):\n" + "\n".join(bad))


if __name__ == "__main__":
    h.main()
