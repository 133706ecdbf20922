#include "status.h"

const char *tn_code_name(int code)
{
    switch (code) {
    case TN_OK: return "OK";
    case TN_CANCELLED: return "CANCELLED";
    case TN_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case TN_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case TN_NOT_FOUND: return "NOT_FOUND";
    case TN_ALREADY_EXISTS: return "ALREADY_EXISTS";
    case TN_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case TN_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case TN_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case TN_ABORTED: return "ABORTED";
    case TN_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case TN_UNIMPLEMENTED: return "UNIMPLEMENTED";
    case TN_INTERNAL: return "INTERNAL";
    case TN_UNAVAILABLE: return "UNAVAILABLE";
    case TN_DATA_LOSS: return "DATA_LOSS";
    case TN_UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
    }
}
