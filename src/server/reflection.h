/*
 * Server reflection for grpc.reflection.v1 and v1alpha: answers
 * ServerReflectionRequests from the descriptor set embedded at build time
 * (list_services, file_by_filename, file_containing_symbol).
 */
#ifndef TN_REFLECTION_H
#define TN_REFLECTION_H

#include <stddef.h>

#include <grpc/byte_buffer.h>

struct tn_reflection;

/* Index the embedded descriptor set. NULL (logged) if it is malformed or
 * memory ran out. Read-only afterwards, so any thread may answer. */
struct tn_reflection *tn_reflection_new(void);
/* NULL-safe; sets *r to NULL. */
void tn_reflection_free(struct tn_reflection **r);
/* The ServerReflectionResponse to one serialized request (an error_response
 * for what is unknown or malformed); the caller owns the buffer. */
grpc_byte_buffer *tn_reflection_answer(const struct tn_reflection *r, const unsigned char *req,
                                       size_t len);

#endif
