/* The front's fast path for upload data messages (see data_msg.h). */
#include "data_msg.h"

size_t tn_data_msg_header(const unsigned char *p, size_t avail, uint64_t total, uint64_t *n)
{
    if (avail < 2 || p[0] != 0x12)
        return 0;
    *n = 0;
    size_t i = 1;
    for (int shift = 0;; shift += 7) {
        if (i >= avail || shift >= 64)
            return 0;
        *n |= (uint64_t)(p[i] & 0x7f) << shift;
        if (!(p[i++] & 0x80))
            break;
    }
    return *n == total - i ? i : 0;
}
