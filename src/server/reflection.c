/*
 * Server reflection (grpc.reflection.v1 and v1alpha share fields and numbers):
 * an index of the FileDescriptorSet embedded at build time, and the answer to
 * one ServerReflectionRequest. The set is read with a few lines of protobuf
 * wire-format parsing, because Debian ships no protobuf-c code for
 * descriptor.proto; each file's bytes are served straight from the set.
 */
#include "reflection.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "grpc/reflection/v1/reflection.pb-c.h"
#include "log.h"
#include "pbbuf.h"

/* Server reflection's index of the embedded descriptor set (built at start-up). */
struct tn_reflection {
    struct refl_file *files;
    int n_files;
    struct refl_symbol *syms;
    int n_syms, cap_syms;
};

/* ------------------------------------------------------------------------ */
/* Server reflection: the embedded FileDescriptorSet                        */

/* Generated at build time (CMakeLists.txt: protoc --descriptor_set_out
 * --include_imports, then a byte array). */
extern const unsigned char tn_descriptor_set[];
extern const size_t tn_descriptor_set_len;

/* What this server registers, in the order list_services reports it. */
static const char *const served_services[] = {
    "thumbnail.v1.Thumbnailer",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
};

/* The set is walked with a few lines of wire-format code instead of protobuf-c:
 * Debian ships no descriptor.pb-c.h, compiling descriptor.proto would add
 * libprotobuf-dev to the build, and only names and byte ranges are needed —
 * each file's serialized FileDescriptorProto is sliced out of the set as is. */
struct wire {
    const unsigned char *p, *end;
};

struct wire_field {
    uint32_t num, type;
    uint64_t v;
    const unsigned char *data; /* length-delimited fields */
    size_t len;
};

static int wire_varint(struct wire *w, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (w->p >= w->end)
            return -1;
        unsigned char b = *w->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* The next field: 1, 0 at the end, -1 if malformed (groups are not expected). */
static int wire_next(struct wire *w, struct wire_field *fl)
{
    uint64_t key;
    if (w->p >= w->end)
        return 0;
    if (wire_varint(w, &key) < 0)
        return -1;
    fl->num = (uint32_t)(key >> 3);
    fl->type = (uint32_t)(key & 7);
    fl->data = NULL;
    fl->len = 0;
    switch (fl->type) {
    case 0: return wire_varint(w, &fl->v) < 0 ? -1 : 1;
    case 1:
        if (w->end - w->p < 8)
            return -1;
        w->p += 8;
        return 1;
    case 5:
        if (w->end - w->p < 4)
            return -1;
        w->p += 4;
        return 1;
    case 2:
        if (wire_varint(w, &fl->v) < 0 || fl->v > (uint64_t)(w->end - w->p))
            return -1;
        fl->data = w->p;
        fl->len = (size_t)fl->v;
        w->p += fl->len;
        return 1;
    default: return -1;
    }
}

/* Field 1 (`name` in every descriptor message) as a malloc'd string; NULL if absent. */
static char *wire_name(const unsigned char *p, size_t len)
{
    struct wire w = {p, p + len};
    struct wire_field fl;
    int rc;
    while ((rc = wire_next(&w, &fl)) > 0)
        if (fl.num == 1 && fl.type == 2)
            return strndup((const char *)fl.data, fl.len);
    return NULL;
}

#define REFL_MAX_DEPS 16
#define REFL_MAX_DEPTH 32

struct refl_file {
    const unsigned char *bytes; /* serialized FileDescriptorProto, inside the set */
    size_t len;
    char *name;
    int n_deps;
    int deps[REFL_MAX_DEPS];        /* indexes into files; -1 = not in the set */
    char *dep_names[REFL_MAX_DEPS]; /* until resolved */
};

struct refl_symbol {
    char *name; /* fully qualified, no leading dot */
    int file;
    bool is_message;
};

/* Record scope.name; returns the full name (owned by the index) or NULL. */
static const char *refl_add(struct tn_reflection *ix, const char *scope, const unsigned char *p,
                            size_t len, int file, bool is_message)
{
    char *name = wire_name(p, len);
    if (!name)
        return NULL;
    if (ix->n_syms == ix->cap_syms) {
        int cap = ix->cap_syms ? ix->cap_syms * 2 : 128;
        struct refl_symbol *v = realloc(ix->syms, (size_t)cap * sizeof(*v));
        if (!v) {
            free(name);
            return NULL;
        }
        ix->syms = v;
        ix->cap_syms = cap;
    }
    char *full = name;
    if (scope && *scope) {
        size_t n = strlen(scope) + strlen(name) + 2;
        full = malloc(n);
        if (full)
            snprintf(full, n, "%s.%s", scope, name);
        free(name);
        if (!full)
            return NULL;
    }
    ix->syms[ix->n_syms++] = (struct refl_symbol){full, file, is_message};
    return full;
}

/* An EnumDescriptorProto: the enum, and its values, which protobuf scopes
 * beside the enum (pkg.VALUE), not inside it. */
static int refl_add_enum(struct tn_reflection *ix, const char *scope, const unsigned char *p,
                         size_t len, int file)
{
    if (!refl_add(ix, scope, p, len, file, false))
        return -1;
    struct wire w = {p, p + len};
    struct wire_field fl;
    int rc;
    while ((rc = wire_next(&w, &fl)) > 0)
        if (fl.num == 2 && fl.type == 2 && !refl_add(ix, scope, fl.data, fl.len, file, false))
            return -1;
    return rc;
}

/* A DescriptorProto: the message, its fields, oneofs, extensions, nested types and enums. */
static int refl_add_message(struct tn_reflection *ix, const char *scope, const unsigned char *p,
                            size_t len, int file, int depth)
{
    const char *full = refl_add(ix, scope, p, len, file, true);
    if (!full || depth > REFL_MAX_DEPTH)
        return -1;
    struct wire w = {p, p + len};
    struct wire_field fl;
    int rc;
    while ((rc = wire_next(&w, &fl)) > 0) {
        if (fl.type != 2)
            continue;
        int r = 0;
        if (fl.num == 2 || fl.num == 6 || fl.num == 8) /* field, extension, oneof_decl */
            r = refl_add(ix, full, fl.data, fl.len, file, false) ? 0 : -1;
        else if (fl.num == 3)
            r = refl_add_message(ix, full, fl.data, fl.len, file, depth + 1);
        else if (fl.num == 4)
            r = refl_add_enum(ix, full, fl.data, fl.len, file);
        if (r < 0)
            return -1;
    }
    return rc;
}

/* A FileDescriptorProto: record it and every symbol it defines. */
static int refl_add_file(struct tn_reflection *ix, const unsigned char *p, size_t len)
{
    int idx = ix->n_files;
    struct refl_file *rf = &ix->files[idx];
    memset(rf, 0, sizeof(*rf));
    rf->bytes = p;
    rf->len = len;
    ix->n_files++;
    char *pkg = NULL;
    struct wire w = {p, p + len};
    struct wire_field fl;
    int rc;
    while ((rc = wire_next(&w, &fl)) > 0) {
        if (fl.type != 2)
            continue;
        if (fl.num == 1 && !rf->name)
            rf->name = strndup((const char *)fl.data, fl.len);
        else if (fl.num == 2 && !pkg)
            pkg = strndup((const char *)fl.data, fl.len);
        else if (fl.num == 3 && rf->n_deps < REFL_MAX_DEPS)
            rf->dep_names[rf->n_deps++] = strndup((const char *)fl.data, fl.len);
        else if (fl.num == 3)
            rc = -1;
    }
    if (rc < 0 || !rf->name) {
        free(pkg);
        return -1;
    }
    /* Second pass, now that the package (the scope) is known. */
    w = (struct wire){p, p + len};
    while (rc == 0 && wire_next(&w, &fl) > 0) {
        if (fl.type != 2)
            continue;
        if (fl.num == 4)
            rc = refl_add_message(ix, pkg, fl.data, fl.len, idx, 0);
        else if (fl.num == 5)
            rc = refl_add_enum(ix, pkg, fl.data, fl.len, idx);
        else if (fl.num == 7)
            rc = refl_add(ix, pkg, fl.data, fl.len, idx, false) ? 0 : -1;
        else if (fl.num == 6) { /* ServiceDescriptorProto: the service and its methods */
            const char *svc = refl_add(ix, pkg, fl.data, fl.len, idx, false);
            struct wire ws = {fl.data, fl.data + fl.len};
            struct wire_field m;
            while (svc && wire_next(&ws, &m) > 0)
                if (m.num == 2 && m.type == 2 && !refl_add(ix, svc, m.data, m.len, idx, false))
                    svc = NULL;
            rc = svc ? 0 : -1;
        }
    }
    free(pkg);
    return rc;
}

static void refl_free(struct tn_reflection *ix)
{
    for (int i = 0; i < ix->n_files; i++) {
        free(ix->files[i].name);
        for (int d = 0; d < ix->files[i].n_deps; d++)
            free(ix->files[i].dep_names[d]);
    }
    for (int i = 0; i < ix->n_syms; i++)
        free(ix->syms[i].name);
    free(ix->files);
    free(ix->syms);
    memset(ix, 0, sizeof(*ix));
}

static int refl_find_file(const struct tn_reflection *ix, const char *name)
{
    for (int i = 0; i < ix->n_files; i++)
        if (strcmp(ix->files[i].name, name) == 0)
            return i;
    return -1;
}

static const struct refl_symbol *refl_find_symbol(const struct tn_reflection *ix, const char *name)
{
    if (name[0] == '.')
        name++;
    for (int i = 0; i < ix->n_syms; i++)
        if (strcmp(ix->syms[i].name, name) == 0)
            return &ix->syms[i];
    return NULL;
}

/* Index the embedded set. Returns 0, or -1 (logged) if it is malformed. */
static int refl_init(struct tn_reflection *ix)
{
    struct wire w = {tn_descriptor_set, tn_descriptor_set + tn_descriptor_set_len};
    struct wire_field fl;
    int rc, n = 0;
    memset(ix, 0, sizeof(*ix));
    while ((rc = wire_next(&w, &fl)) > 0)
        n += fl.num == 1 && fl.type == 2;
    ix->files = calloc((size_t)(n ? n : 1), sizeof(*ix->files));
    if (rc < 0 || !ix->files)
        goto bad;
    w = (struct wire){tn_descriptor_set, tn_descriptor_set + tn_descriptor_set_len};
    while (wire_next(&w, &fl) > 0)
        if (fl.num == 1 && fl.type == 2 && refl_add_file(ix, fl.data, fl.len) < 0)
            goto bad;
    for (int i = 0; i < ix->n_files; i++) {
        struct refl_file *rf = &ix->files[i];
        for (int d = 0; d < rf->n_deps; d++)
            rf->deps[d] = refl_find_file(ix, rf->dep_names[d]);
    }
    tn_log_debug("reflection: %d files, %d symbols", ix->n_files, ix->n_syms);
    return 0;
bad:
    tn_log_error("the embedded descriptor set is malformed: a build problem");
    refl_free(ix);
    return -1;
}

/* Append file i and, depth first, the files it imports (each once). */
static void refl_collect(const struct tn_reflection *ix, int i, bool *seen,
                         ProtobufCBinaryData *out, size_t *n)
{
    if (i < 0 || seen[i])
        return;
    seen[i] = true;
    out[*n].data = (uint8_t *)ix->files[i].bytes; /* packed, never written */
    out[*n].len = ix->files[i].len;
    (*n)++;
    for (int d = 0; d < ix->files[i].n_deps; d++)
        refl_collect(ix, ix->files[i].deps[d], seen, out, n);
}

/* The ServerReflectionResponse to one request (v1 and v1alpha: same wire format). */
grpc_byte_buffer *tn_reflection_answer(const struct tn_reflection *ix, const unsigned char *p,
                                       size_t len)
{
    Grpc__Reflection__V1__ServerReflectionRequest *req =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, len, p);
    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse err = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fdr =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse lsr =
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse enr =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    enum { N_SERVED = sizeof(served_services) / sizeof(served_services[0]) };
    Grpc__Reflection__V1__ServiceResponse svc[N_SERVED];
    Grpc__Reflection__V1__ServiceResponse *svcp[N_SERVED];
    ProtobufCBinaryData *files = calloc((size_t)ix->n_files + 1, sizeof(*files));
    bool *seen = calloc((size_t)ix->n_files + 1, sizeof(*seen));
    char msg[400];
    int file = -1;

    err.error_code = GRPC_STATUS_NOT_FOUND;
    err.error_message = msg;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp.error_response = &err;
    snprintf(msg, sizeof(msg), "not found");
    if (!req || !files || !seen) {
        err.error_code = req ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INVALID_ARGUMENT;
        snprintf(msg, sizeof(msg), "%s",
                 req ? "the server is out of memory" : "malformed ServerReflectionRequest");
        goto pack;
    }
    resp.valid_host = req->host;
    resp.original_request = req;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        for (size_t i = 0; i < N_SERVED; i++) {
            grpc__reflection__v1__service_response__init(&svc[i]);
            svc[i].name = (char *)served_services[i];
            svcp[i] = &svc[i];
        }
        lsr.n_service = N_SERVED;
        lsr.service = svcp;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &lsr;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        file = refl_find_file(ix, req->file_by_filename);
        if (file < 0)
            snprintf(msg, sizeof(msg), "file \"%.300s\" not found", req->file_by_filename);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL: {
        const struct refl_symbol *sym = refl_find_symbol(ix, req->file_containing_symbol);
        file = sym ? sym->file : -1;
        if (file < 0)
            snprintf(msg, sizeof(msg), "symbol \"%.300s\" not found", req->file_containing_symbol);
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        snprintf(msg, sizeof(msg), "extension not found: this server's protos define none");
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
        const struct refl_symbol *sym = refl_find_symbol(ix, req->all_extension_numbers_of_type);
        if (!sym || !sym->is_message) {
            snprintf(msg, sizeof(msg), "message type \"%.300s\" not found",
                     req->all_extension_numbers_of_type);
            break;
        }
        enr.base_type_name = sym->name; /* no extensions: an empty list */
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
        resp.all_extension_numbers_response = &enr;
        break;
    }
    default:
        err.error_code = GRPC_STATUS_UNIMPLEMENTED;
        snprintf(msg, sizeof(msg), "unknown reflection request (field %d)",
                 (int)req->message_request_case);
        break;
    }
    if (file >= 0) {
        size_t n = 0;
        refl_collect(ix, file, seen, files, &n);
        fdr.n_file_descriptor_proto = n;
        fdr.file_descriptor_proto = files;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        resp.file_descriptor_response = &fdr;
    }
pack:;
    grpc_byte_buffer *bb = tn_pb_pack(&resp.base);
    if (req)
        grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    free(files);
    free(seen);
    return bb;
}

struct tn_reflection *tn_reflection_new(void)
{
    struct tn_reflection *r = calloc(1, sizeof(*r));
    if (!r || refl_init(r) < 0) {
        free(r);
        return NULL;
    }
    return r;
}

void tn_reflection_free(struct tn_reflection **r)
{
    if (!*r)
        return;
    refl_free(*r);
    free(*r);
    *r = NULL;
}
