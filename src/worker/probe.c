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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavutil/display.h>
#include <libavutil/pixdesc.h>

static void json_str(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (!isfinite(v))
        fputs("null", f);
    else
        fprintf(f, "%.6g", v);
}

static void json_ratio(FILE *f, AVRational r)
{
    if (r.num <= 0 || r.den <= 0) {
        fputs("null", f);
        return;
    }
    av_reduce(&r.num, &r.den, r.num, r.den, 1 << 30);
    fprintf(f, "\"%d:%d\"", r.num, r.den);
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

int tn_probe_json(AVFormatContext *fmt, int video, uint64_t file_size, int max_packets,
                  int (*stop)(void *opaque), void *opaque, char **out, size_t *len)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    int cover = 0;

    if (!f)
        return -ENOMEM;
    for (unsigned i = 0; i < fmt->nb_streams; i++)
        cover |= (fmt->streams[i]->disposition & AV_DISPOSITION_ATTACHED_PIC) != 0;

    fputs("{\"container\":", f);
    json_str(f, fmt->iformat->name);
    fputs(",\"container_long_name\":", f);
    json_str(f, fmt->iformat->long_name);
    fputs(",\"duration\":", f);
    json_num(f, fmt->duration > 0 ? fmt->duration / (double)AV_TIME_BASE : NAN);
    fputs(",\"bit_rate\":", f);
    if (fmt->bit_rate > 0)
        fprintf(f, "%" PRId64, fmt->bit_rate);
    else
        fputs("null", f);
    fprintf(f, ",\"size\":%" PRIu64 ",\"cover_art\":%s", file_size, cover ? "true" : "false");
    fputs(",\"keyframe_interval\":", f);
    json_num(f, video >= 0 ? keyframe_interval(fmt, fmt->streams[video], max_packets, stop, opaque)
                           : NAN);

    for (int pass = 0; pass < 3; pass++) {
        static const char *const names[] = {"video", "audio", "cover_art_streams"};
        int first = 1;
        fprintf(f, ",\"%s\":[", names[pass]);
        for (unsigned i = 0; i < fmt->nb_streams; i++) {
            AVStream *st = fmt->streams[i];
            const AVCodecParameters *par = st->codecpar;
            int pic = (st->disposition & AV_DISPOSITION_ATTACHED_PIC) != 0;
            if ((pass == 0 && (par->codec_type != AVMEDIA_TYPE_VIDEO || pic)) ||
                (pass == 1 && par->codec_type != AVMEDIA_TYPE_AUDIO) || (pass == 2 && !pic))
                continue;
            fprintf(f, "%s{\"index\":%u,\"codec\":", first ? "" : ",", i);
            first = 0;
            json_str(f, avcodec_get_name(par->codec_id));
            if (pass == 2) {
                fprintf(f, ",\"width\":%d,\"height\":%d}", par->width, par->height);
                continue;
            }
            fputs(",\"profile\":", f);
            json_str(f, avcodec_profile_name(par->codec_id, par->profile));
            if (pass == 1) {
                const AVDictionaryEntry *lang = av_dict_get(st->metadata, "language", NULL, 0);
                fprintf(f, ",\"sample_rate\":%d,\"channels\":%d,\"bit_rate\":", par->sample_rate,
                        par->ch_layout.nb_channels);
                if (par->bit_rate > 0)
                    fprintf(f, "%" PRId64, par->bit_rate);
                else
                    fputs("null", f);
                fputs(",\"language\":", f);
                json_str(f, lang ? lang->value : NULL);
                fputc('}', f);
                continue;
            }
            const AVPixFmtDescriptor *d = av_pix_fmt_desc_get((enum AVPixelFormat)par->format);
            fputs(",\"pix_fmt\":", f);
            json_str(f, d ? d->name : NULL);
            fputs(",\"bit_depth\":", f);
            if (d)
                fprintf(f, "%d", d->comp[0].depth);
            else
                fputs("null", f);
            AVRational sar = av_guess_sample_aspect_ratio(fmt, st, NULL);
            if (sar.num <= 0 || sar.den <= 0)
                sar = (AVRational){1, 1};
            AVRational dar =
                av_mul_q(sar, (AVRational){par->width, par->height > 0 ? par->height : 1});
            fprintf(f, ",\"width\":%d,\"height\":%d,\"sar\":", par->width, par->height);
            json_ratio(f, sar);
            fputs(",\"dar\":", f);
            json_ratio(f, dar);
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
            fprintf(f, ",\"display_width\":%.0f,\"display_height\":%.0f", swap ? dh : dw,
                    swap ? dw : dh);
            AVRational fr = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
            fputs(",\"frame_rate\":", f);
            json_num(f, fr.num > 0 && fr.den > 0 ? av_q2d(fr) : NAN);
            fprintf(f, ",\"rotation\":%.0f,\"flipped\":%s", rot, flipped ? "true" : "false");
            fputs(",\"color_primaries\":", f);
            json_str(f, unknown_null(av_color_primaries_name(par->color_primaries)));
            fputs(",\"color_transfer\":", f);
            json_str(f, unknown_null(av_color_transfer_name(par->color_trc)));
            fputs(",\"color_matrix\":", f);
            json_str(f, unknown_null(av_color_space_name(par->color_space)));
            fputs(",\"color_range\":", f);
            json_str(f, unknown_null(av_color_range_name(par->color_range)));
            fputs(",\"hdr\":", f);
            json_str(f, par->color_trc == AVCOL_TRC_SMPTE2084      ? "HDR10"
                        : par->color_trc == AVCOL_TRC_ARIB_STD_B67 ? "HLG"
                                                                   : NULL);
            fputs(",\"interlaced\":", f);
            if (par->field_order == AV_FIELD_UNKNOWN)
                fputs("null", f);
            else
                fputs(par->field_order == AV_FIELD_PROGRESSIVE ? "false" : "true", f);
            fprintf(f, ",\"main\":%s}", (int)i == video ? "true" : "false");
        }
        fputc(']', f);
    }
    fputs("}\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return -ENOMEM;
    }
    *out = buf;
    *len = size;
    return 0;
}
