/*
 * gRPC byte buffers <-> protobuf-c messages, for the front and the client
 * (not the workers, which never link gRPC).
 */
#ifndef TN_PBBUF_H
#define TN_PBBUF_H

#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <protobuf-c/protobuf-c.h>

/* Serialize m into a new byte buffer; the caller destroys it. */
grpc_byte_buffer *tn_pb_pack(const ProtobufCMessage *m);

/* The whole received message as one slice (protobuf-c wants contiguous
 * input); the caller unrefs it. An empty slice if the buffer is unreadable. */
grpc_slice tn_pb_flatten(grpc_byte_buffer *bb);

#endif
