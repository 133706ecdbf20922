/*
 * Canonical status codes. The numbers are gRPC's (they are part of the wire
 * protocol, not of the library), so workers and tests can speak them without
 * including gRPC headers. The front is the one place that turns them into a
 * grpc_status_code: a plain cast, checked by a static assertion there.
 */
#ifndef TN_STATUS_H
#define TN_STATUS_H

enum tn_code {
    TN_OK = 0,
    TN_CANCELLED = 1,
    TN_UNKNOWN = 2,
    TN_INVALID_ARGUMENT = 3,
    TN_DEADLINE_EXCEEDED = 4,
    TN_NOT_FOUND = 5,
    TN_ALREADY_EXISTS = 6,
    TN_PERMISSION_DENIED = 7,
    TN_RESOURCE_EXHAUSTED = 8,
    TN_FAILED_PRECONDITION = 9,
    TN_ABORTED = 10,
    TN_OUT_OF_RANGE = 11,
    TN_UNIMPLEMENTED = 12,
    TN_INTERNAL = 13,
    TN_UNAVAILABLE = 14,
    TN_DATA_LOSS = 15,
    TN_UNAUTHENTICATED = 16,
};

/* "INVALID_ARGUMENT" etc.; a number outside the canonical 0..16 gives "UNKNOWN". */
const char *tn_code_name(int code);

#endif
