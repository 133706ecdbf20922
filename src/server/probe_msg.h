/*
 * The Probe call's answer: the worker's JSON (src/worker/probe.h) as
 * ProbeResponse.json, and the same facts in the typed fields.
 */
#ifndef TN_PROBE_MSG_H
#define TN_PROBE_MSG_H

#include <stddef.h>

#include <grpc/byte_buffer.h>

/* A serialized ProbeResponse for json[0..len) (not NUL-terminated); the
 * caller destroys it. JSON that does not parse leaves the typed fields empty. */
grpc_byte_buffer *tn_probe_msg_pack(const char *json, size_t len);

#endif
