/*
 * Probe: the streams of an opened demuxer as JSON. See probe.h.
 *
 * Everything comes from AVCodecParameters, stream side data and the
 * demuxer's index; the keyframe interval, when there is no index (MPEG-TS,
 * some Matroska), from the key flags of the first packets read. No decoder
 * is opened: probing stays cheap and touches no frame data.
 */
#include "probe.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavutil/display.h>
#include <libavutil/pixdesc.h>

#include "json.h"

/* Numbers: null when not finite (JSON has no NaN). */
static json_t *num(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *int_or_null(int64_t v)
{
    return v > 0 ? json_integer(v) : json_null();
}

static json_t *ratio(AVRational r)
{
    char buf[32];
    if (r.num <= 0 || r.den <= 0)
        return json_null();
    av_reduce(&r.num, &r.den, r.num, r.den, 1 << 30);
    snprintf(buf, sizeof(buf), "%d:%d", r.num, r.den);
    return json_string(buf);
}

static const char *unknown_null(const char *s)
{
    return s && strcmp(s, "unknown") && strcmp(s, "unspecified") ? s : NULL;
}

/* Seconds between keyframes of st: from the index, else from packet flags. */
static double keyframe_interval(AVFormatContext *fmt, AVStream *st, int max_packets,
                                int (*stop)(void *), void *opaque)
{
    int n = avformat_index_get_entries_count(st);
    int64_t first = AV_NOPTS_VALUE, last = AV_NOPTS_VALUE;
    int keys = 0;

    for (int i = 0; i < n; i++) {
        const AVIndexEntry *ie = avformat_index_get_entry(st, i);
        if (!(ie->flags & AVINDEX_KEYFRAME))
            continue;
        if (first == AV_NOPTS_VALUE)
            first = ie->timestamp;
        last = ie->timestamp;
        keys++;
    }
    if (keys < 2 && max_packets > 0) {
        AVPacket *pkt = av_packet_alloc();
        keys = 0;
        first = last = AV_NOPTS_VALUE;
        for (int i = 0; pkt && i < max_packets && !stop(opaque); i++) {
            if (av_read_frame(fmt, pkt) < 0)
                break;
            int64_t t = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
            if (pkt->stream_index == st->index && (pkt->flags & AV_PKT_FLAG_KEY) &&
                t != AV_NOPTS_VALUE) {
                if (first == AV_NOPTS_VALUE)
                    first = t;
                last = t;
                keys++;
            }
            av_packet_unref(pkt);
        }
        av_packet_free(&pkt);
    }
    if (keys < 2 || last <= first)
        return NAN;
    return (last - first) * av_q2d(st->time_base) / (keys - 1);
}

/* One video stream's object (see probe.h); NULL when out of memory. */
static json_t *video_stream(AVFormatContext *fmt, AVStream *st, int main)
{
    const AVCodecParameters *par = st->codecpar;
    json_t *o = json_object();
    int bad = !o;

    if (bad)
        return NULL;
    const AVPixFmtDescriptor *d = av_pix_fmt_desc_get((enum AVPixelFormat)par->format);
    bad |= tn_json_set(o, "index", json_integer(st->index));
    bad |= tn_json_set(o, "codec", tn_json_str(avcodec_get_name(par->codec_id), 0));
    bad |= tn_json_set(o, "profile",
                       tn_json_str(avcodec_profile_name(par->codec_id, par->profile), 0));
    bad |= tn_json_set(o, "pix_fmt", tn_json_str(d ? d->name : NULL, 0));
    bad |= tn_json_set(o, "bit_depth", d ? json_integer(d->comp[0].depth) : json_null());
    AVRational sar = av_guess_sample_aspect_ratio(fmt, st, NULL);
    if (sar.num <= 0 || sar.den <= 0)
        sar = (AVRational){1, 1};
    AVRational dar = av_mul_q(sar, (AVRational){par->width, par->height > 0 ? par->height : 1});
    bad |= tn_json_set(o, "width", json_integer(par->width));
    bad |= tn_json_set(o, "height", json_integer(par->height));
    bad |= tn_json_set(o, "sar", ratio(sar));
    bad |= tn_json_set(o, "dar", ratio(dar));
    /* display size: SAR applied, then the display matrix's rotation */
    double dw = par->width * av_q2d(sar), dh = par->height;
    size_t msize = 0;
    const int32_t *m =
        (const int32_t *)av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, &msize);
    double rot = 0;
    int flipped = 0;
    if (m && msize >= 9 * sizeof(int32_t)) {
        /* av_display_rotation_get: counterclockwise; players turn it clockwise */
        rot = -av_display_rotation_get(m);
        flipped = (int64_t)m[0] * m[4] - (int64_t)m[1] * m[3] < 0;
        if (isnan(rot))
            rot = 0;
        rot = fmod(round(rot) + 360, 360);
    }
    int swap = fabs(fmod(rot, 180) - 90) < 1;
    bad |= tn_json_set(o, "display_width", json_integer(llround(swap ? dh : dw)));
    bad |= tn_json_set(o, "display_height", json_integer(llround(swap ? dw : dh)));
    AVRational fr = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
    bad |= tn_json_set(o, "frame_rate", num(fr.num > 0 && fr.den > 0 ? av_q2d(fr) : NAN));
    bad |= tn_json_set(o, "rotation", json_integer(llround(rot)));
    bad |= tn_json_set(o, "flipped", json_boolean(flipped));
    bad |= tn_json_set(o, "color_primaries",
                       tn_json_str(unknown_null(av_color_primaries_name(par->color_primaries)), 0));
    bad |= tn_json_set(o, "color_transfer",
                       tn_json_str(unknown_null(av_color_transfer_name(par->color_trc)), 0));
    bad |= tn_json_set(o, "color_matrix",
                       tn_json_str(unknown_null(av_color_space_name(par->color_space)), 0));
    bad |= tn_json_set(o, "color_range",
                       tn_json_str(unknown_null(av_color_range_name(par->color_range)), 0));
    bad |= tn_json_set(o, "hdr",
                       tn_json_str(par->color_trc == AVCOL_TRC_SMPTE2084      ? "HDR10"
                                   : par->color_trc == AVCOL_TRC_ARIB_STD_B67 ? "HLG"
                                                                              : NULL,
                                   0));
    bad |= tn_json_set(o, "interlaced",
                       par->field_order == AV_FIELD_UNKNOWN
                           ? json_null()
                           : json_boolean(par->field_order != AV_FIELD_PROGRESSIVE));
    bad |= tn_json_set(o, "main", json_boolean(main));
    if (bad)
        json_decref(o);
    return bad ? NULL : o;
}

int tn_probe_json(AVFormatContext *fmt, int video, uint64_t file_size, int max_packets,
                  int (*stop)(void *opaque), void *opaque, char **out, size_t *len)
{
    json_t *root = json_object(), *lists[3];
    static const char *const names[] = {"video", "audio", "cover_art_streams"};
    int cover = 0, bad = !root;

    if (bad)
        return -ENOMEM;
    for (unsigned i = 0; i < fmt->nb_streams; i++)
        cover |= (fmt->streams[i]->disposition & AV_DISPOSITION_ATTACHED_PIC) != 0;
    /* container and tag strings come from the file: tn_json_str makes them UTF-8 */
    bad |= tn_json_set(root, "container", tn_json_str(fmt->iformat->name, 0));
    bad |= tn_json_set(root, "container_long_name", tn_json_str(fmt->iformat->long_name, 0));
    bad |= tn_json_set(root, "duration",
                       num(fmt->duration > 0 ? fmt->duration / (double)AV_TIME_BASE : NAN));
    bad |= tn_json_set(root, "bit_rate", int_or_null(fmt->bit_rate));
    bad |= tn_json_set(root, "size", json_integer((json_int_t)file_size));
    bad |= tn_json_set(root, "cover_art", json_boolean(cover));
    bad |= tn_json_set(
        root, "keyframe_interval",
        num(video >= 0 ? keyframe_interval(fmt, fmt->streams[video], max_packets, stop, opaque)
                       : NAN));
    for (int pass = 0; pass < 3; pass++) {
        lists[pass] = json_array();
        bad |= tn_json_set(root, names[pass], lists[pass]);
    }
    for (unsigned i = 0; i < fmt->nb_streams && !bad; i++) {
        AVStream *st = fmt->streams[i];
        const AVCodecParameters *par = st->codecpar;
        int pic = (st->disposition & AV_DISPOSITION_ATTACHED_PIC) != 0;
        json_t *o = NULL;
        if (pic) {
            if ((o = json_object())) {
                bad |= tn_json_set(o, "index", json_integer(i));
                bad |= tn_json_set(o, "codec", tn_json_str(avcodec_get_name(par->codec_id), 0));
                bad |= tn_json_set(o, "width", json_integer(par->width));
                bad |= tn_json_set(o, "height", json_integer(par->height));
            }
            bad |= json_array_append_new(lists[2], o) != 0;
        } else if (par->codec_type == AVMEDIA_TYPE_VIDEO) {
            bad |= json_array_append_new(lists[0], video_stream(fmt, st, (int)i == video)) != 0;
        } else if (par->codec_type == AVMEDIA_TYPE_AUDIO) {
            const AVDictionaryEntry *lang = av_dict_get(st->metadata, "language", NULL, 0);
            if ((o = json_object())) {
                bad |= tn_json_set(o, "index", json_integer(i));
                bad |= tn_json_set(o, "codec", tn_json_str(avcodec_get_name(par->codec_id), 0));
                bad |=
                    tn_json_set(o, "profile",
                                tn_json_str(avcodec_profile_name(par->codec_id, par->profile), 0));
                bad |= tn_json_set(o, "sample_rate", json_integer(par->sample_rate));
                bad |= tn_json_set(o, "channels", json_integer(par->ch_layout.nb_channels));
                bad |= tn_json_set(o, "bit_rate", int_or_null(par->bit_rate));
                bad |= tn_json_set(o, "language", tn_json_str(lang ? lang->value : NULL, 256));
            }
            bad |= json_array_append_new(lists[1], o) != 0;
        }
    }
    char *text = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(root);
    if (!text)
        return -ENOMEM;
    /* one line, newline-terminated, in malloc'd memory of our own */
    size_t n = strlen(text);
    char *buf = malloc(n + 2);
    if (buf) {
        memcpy(buf, text, n);
        memcpy(buf + n, "\n", 2);
    }
    free(text);
    if (!buf)
        return -ENOMEM;
    *out = buf;
    *len = n + 1;
    return 0;
}
