/*
 * The front's fast path for upload data: recognising a GenerateRequest that
 * holds the data field alone without protobuf-c, so its bytes can go from
 * gRPC's slices to the spool file without a copy. Pure (no I/O, no state):
 * tests/fuzz/fuzz_front.c checks it against protobuf-c's decoding.
 */
#ifndef TN_DATA_MSG_H
#define TN_DATA_MSG_H

#include <stddef.h>
#include <stdint.h>

/*
 * A GenerateRequest made of the data field (2) alone: tag 0x12, a varint
 * length n, then n bytes. p[0..avail) is the start of the message, total its
 * whole length. Returns the header's length (the bytes start after it) with
 * *n set, or 0 when the message is anything else (then protobuf-c decodes it).
 */
size_t tn_data_msg_header(const unsigned char *p, size_t avail, uint64_t total, uint64_t *n);

#endif
