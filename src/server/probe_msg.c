/* ProbeResponse from the probe JSON. See probe_msg.h. */
#include "probe_msg.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "pbbuf.h"
#include "thumbnail.pb-c.h"

/* Strings point into the parsed JSON (alive until the message is packed);
 * missing and null ones are "", numbers 0. */
static char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return (char *)(s ? s : "");
}

static double num(json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

static unsigned u32(json_t *o, const char *key)
{
    double v = num(o, key);
    return v > 0 && v < 4294967296.0 ? (unsigned)v : 0;
}

static int flag(json_t *o, const char *key)
{
    return json_is_true(json_object_get(o, key));
}

grpc_byte_buffer *tn_probe_msg_pack(const char *json, size_t len)
{
    Thumbnail__V1__ProbeResponse pr = THUMBNAIL__V1__PROBE_RESPONSE__INIT;
    Thumbnail__V1__ProbeVideo *videos = NULL, **vp = NULL;
    Thumbnail__V1__ProbeAudio *audios = NULL, **ap = NULL;
    grpc_byte_buffer *bb = NULL;
    char *text = strndup(json, len);
    json_t *root = text ? json_loadb(json, len, 0, NULL) : NULL;

    pr.json = text ? text : ""; /* out of memory: an empty answer rather than none */
    if (json_is_object(root)) {
        json_t *v = json_object_get(root, "video"), *a = json_object_get(root, "audio");
        size_t nv = json_array_size(v), na = json_array_size(a);
        pr.container = str(root, "container");
        pr.duration = num(root, "duration");
        pr.bit_rate = (int64_t)num(root, "bit_rate");
        pr.size = (uint64_t)num(root, "size");
        pr.cover_art = flag(root, "cover_art");
        pr.keyframe_interval = num(root, "keyframe_interval");
        if ((nv && (!(videos = calloc(nv, sizeof(*videos))) || !(vp = calloc(nv, sizeof(*vp))))) ||
            (na && (!(audios = calloc(na, sizeof(*audios))) || !(ap = calloc(na, sizeof(*ap))))))
            nv = na = 0; /* out of memory: the JSON alone */
        for (size_t i = 0; i < nv; i++) {
            json_t *o = json_array_get(v, i);
            Thumbnail__V1__ProbeVideo *x = &videos[i];
            thumbnail__v1__probe_video__init(x);
            x->index = u32(o, "index");
            x->codec = str(o, "codec");
            x->profile = str(o, "profile");
            x->pix_fmt = str(o, "pix_fmt");
            x->bit_depth = u32(o, "bit_depth");
            x->width = u32(o, "width");
            x->height = u32(o, "height");
            x->sar = str(o, "sar");
            x->dar = str(o, "dar");
            x->display_width = u32(o, "display_width");
            x->display_height = u32(o, "display_height");
            x->frame_rate = num(o, "frame_rate");
            x->rotation = u32(o, "rotation");
            x->flipped = flag(o, "flipped");
            x->hdr = str(o, "hdr");
            x->interlaced = flag(o, "interlaced");
            x->main = flag(o, "main");
            vp[i] = x;
        }
        for (size_t i = 0; i < na; i++) {
            json_t *o = json_array_get(a, i);
            Thumbnail__V1__ProbeAudio *x = &audios[i];
            thumbnail__v1__probe_audio__init(x);
            x->index = u32(o, "index");
            x->codec = str(o, "codec");
            x->profile = str(o, "profile");
            x->sample_rate = u32(o, "sample_rate");
            x->channels = u32(o, "channels");
            x->bit_rate = (int64_t)num(o, "bit_rate");
            x->language = str(o, "language");
            ap[i] = x;
        }
        pr.n_video = nv;
        pr.video = vp;
        pr.n_audio = na;
        pr.audio = ap;
    }
    bb = tn_pb_pack(&pr.base);
    free(vp);
    free(videos);
    free(ap);
    free(audios);
    json_decref(root);
    free(text);
    return bb;
}
