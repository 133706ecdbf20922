"""The ffmpeg CLI as the oracle: if ffmpeg decodes a frame of a file, so do we, and it
is the same picture.

For every video encoder of Debian's ffmpeg that makes a picture, in every container it
fits (with and without the container's index where the muxer can leave it out: a
Matroska/WebM, AVI, ASF or NUT file written to a pipe has no index and no duration, an
MP4/MOV written fragmented has no sample table), a small testsrc2 clip is made here; the
real server (through grpcio) makes an accurate thumbnail mid-GOP and ffmpeg, decoding from
the start, gives the frame at the time the server reports (on its timeline, or frame
number time x rate: the clips are constant-rate). Same picture = PSNR >= 35 dB; where ffmpeg decodes nothing, we
must fail too. Then damaged files (the fuzz test's mutations): wherever we
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
    ("mpeg1video", [], ["mpeg", "mpegts", "avi", "mkv", "mov"]),
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
# MPEG-1 has no 10 fps: its clip is made at 25 fps
CLIP_RATE = {"mpeg1video": 25}
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


def ffmpeg_frame(path, t, w, hgt, from_start=False, flags="area", index=None):
    """ffmpeg's frame at t (the first at or after it) as RGB24 at w x hgt, or None.
    from_start: decode from the start and select by time instead of -ss (for files
    ffmpeg itself cannot seek in). index: decode from the start and take frame number
    `index` (0 = the first), whatever timestamps ffmpeg gives it."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    vf = "scale=%d:%d:flags=%s" % (w, hgt, flags)
    if index is not None:
        vf = "select=eq(n\\,%d),%s" % (index, vf)
    elif from_start:
        vf = "select=gte(t\\,%.6f),%s" % (max(0.0, t - 0.0005), vf)
    elif t is not None:
        cmd += ["-ss", "%.6f" % max(0.0, t - 0.0005)]
    # passthrough: no frame dropped or doubled to make the output constant-rate
    cmd += ["-i", path, "-frames:v", "1", "-vf", vf, "-fps_mode", "passthrough", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-"]
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
               "-i", "testsrc2=size=%dx%d:rate=%d:duration=%d" % (W, H, CLIP_RATE.get(enc, RATE),
                                                                  SECONDS),
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
                    # ffmpeg decodes from the start (`ffmpeg -ss` has seeking troubles of
                    # its own: MPEG-PS, AVI without an index) and gives the frame at our
                    # time on its timeline; the clip being constant-rate, frame number
                    # round(t * rate) is that frame too. Where ffmpeg's timestamps are
                    # guesses (AVI has none: an MPEG-1 AVI's second frame is at 0.08 s
                    # for ffmpeg, B-frames in AVI) the two can differ: either will do.
                    n = round(hdr.actual_time * CLIP_RATE.get(enc, RATE))
                    by_n = ffmpeg_frame(path, None, hdr.width, hdr.height, flags=flags, index=n)
                    by_t = ffmpeg_frame(path, hdr.actual_time, hdr.width, hdr.height,
                                        from_start=True, flags=flags)
                    ps = [psnr(img, r) for r in (by_t, by_n) if r is not None]
                    ref = by_t if by_t is not None else by_n
                    p = max(ps) if ps else -1
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
                "(GOP %d) vs ffmpeg's frame at the time we report (decoded from the start, "
                "the frame at that time or frame number time x rate; PSNR dB, >= %.0f "
                "passes); %d clips in %.0f s\n\n%s\n"
                % (AT, W, H, RATE, SECONDS, GOP, MIN_PSNR, made, wall, "\n".join(table)))
        with open(os.path.join(h.BUILD_DIR, "oracle-table.md"), "w") as f:
            f.write(text)
        h.log(text)
        self.assertGreaterEqual(made, 60, "too few clips made: is ffmpeg complete?")
        self.assertEqual(bad, [], "\n".join(bad))

    def test_3_edge_files(self):
        """Timestamps and structures real folders have: no timestamps (elementary streams),
        non-monotonic ones (two TS files back to back), late and shifted starts, an edit
        list that starts mid-GOP, open GOPs, variable frame rate, video after the audio, a
        single keyframe. The reference is ffmpeg's frame at our time on its own timeline
        (decoded from the start, selected by time)."""
        d = self.tmpdir()
        src = ["-f", "lavfi", "-i", "testsrc2=size=%dx%d:rate=%d:duration=3" % (W, H, RATE)]
        aud = ["-f", "lavfi", "-i", "sine=duration=3"]
        x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(GOP)]
        base = os.path.join(d, "base.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y"] + src + x264 + ["-bf", "2", base],
                       check=True)
        ts = os.path.join(d, "base.ts")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", base, "-c", "copy",
                        ts], check=True)
        cases = [
            ("h264 elementary stream (no timestamps)", "es.h264", src + x264 + ["-f", "h264"]),
            ("MPEG-4 elementary stream", "es.m4v", src + ["-c:v", "mpeg4", "-g", str(GOP), "-f", "m4v"]),
            ("HEVC elementary stream", "es.hevc", src + ["-c:v", "libx265", "-preset", "ultrafast",
                                                          "-x265-params", "log-level=error",
                                                          "-f", "hevc"]),
            ("late start (TS at 10 s)", "late.ts", src + x264 + ["-output_ts_offset", "10"]),
            ("late start (MKV at 5 s)", "late.mkv", src + x264 + ["-output_ts_offset", "5"]),
            ("edit list from mid-GOP", "cut.mp4", ["-ss", "0.55", "-i", base, "-c", "copy"]),
            ("open GOP (MKV)", "opengop.mkv", src + x264 + ["-bf", "2", "-x264-params", "open-gop=1"]),
            ("open GOP (TS)", "opengop.ts", src + x264 + ["-bf", "2", "-x264-params", "open-gop=1"]),
            ("VFR (MKV)", "vfr.mkv", src + x264 + [
                "-vf", "setpts='if(lt(N,10),N*0.05,0.5+(N-10)*0.15)/TB'", "-fps_mode", "vfr"]),
            ("VFR (MP4)", "vfr.mp4", src + x264 + [
                "-vf", "setpts='if(lt(N,10),N*0.05,0.5+(N-10)*0.15)/TB'", "-fps_mode", "vfr"]),
            ("video 0.7 s after the audio (MP4)", "late-video.mp4",
             ["-itsoffset", "0.7"] + src + aud + x264 + ["-c:a", "aac", "-map", "0:v", "-map", "1:a"]),
            ("video 0.7 s after the audio (MKV)", "late-video.mkv",
             ["-itsoffset", "0.7"] + src + aud + x264 + ["-c:a", "aac", "-map", "0:v", "-map", "1:a"]),
            ("single keyframe, no cues (MKV)", "onekey.mkv",
             src + ["-c:v", "mpeg4", "-g", "1000", "-f", "matroska"]),
            ("non-monotonic timestamps (two TS back to back)", "twice.ts", None),
        ]
        rows, bad = [], []
        for label, name, args in cases:
            path = os.path.join(d, name)
            if args is None:  # the timestamps start again half-way
                with open(path, "wb") as f:
                    f.write(h.read_bytes(ts) * 2)
            elif subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y"] + args + [path],
                                stderr=subprocess.PIPE).returncode != 0:
                rows.append((label, "-", "ffmpeg cannot make it", "", ""))
                continue
            for at in (0.0, AT, 2.55):
                hdr, img = self.ours(path, times=(at,))
                if hdr is None:
                    ff = ffmpeg_decodes_any(path)
                    rows.append((label, "%.2f: %s" % (at, img[:60]), "frame" if ff else "no frame",
                                 "", "FAIL" if ff else "ok"))
                    if ff:
                        bad.append("%s at %.2f: we fail (%s), ffmpeg decodes" % (label, at, img))
                    continue
                ref = ffmpeg_frame(path, hdr.actual_time, hdr.width, hdr.height, from_start=True)
                p = psnr(img, ref) if ref is not None else -1
                rows.append((label, "%.2f -> t=%.3f%s" % (at, hdr.actual_time, (
                    " (%s)" % hdr.reason) if hdr.reason else ""),
                    "frame" if ref is not None else "no frame",
                    "%.1f" % p if ref is not None else "", "ok" if p >= MIN_PSNR else "FAIL"))
                if p < MIN_PSNR:
                    bad.append("%s: at %.2f we give t=%.3f, PSNR %.1f" % (label, at,
                                                                        hdr.actual_time, p))
        table = ["| file | asked -> ours | ffmpeg | PSNR dB | verdict |", "|---|---|---|---|---|"]
        table += ["| %s |" % " | ".join(r) for r in rows]
        text = "\nEdge files (accurate, ffmpeg's frame at our time on its timeline):\n\n%s\n" % (
            "\n".join(table))
        with open(os.path.join(h.BUILD_DIR, "oracle-table.md"), "a") as f:
            f.write(text)
        h.log(text)
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
