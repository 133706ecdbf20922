/*
 * libFuzzer target for the front's parsing of upload messages.
 *
 * DESIGN. The front takes a data message (GenerateRequest with the data field
 * alone) on a hand-written fast path, tn_data_msg_header(), and leaves every
 * other message to protobuf-c. The input is one raw request message. The
 * oracle is protobuf-c itself: whenever the fast path accepts a message,
 * protobuf-c must decode the same bytes as a data message with exactly the
 * payload the fast path would spool, and the header it found must end where the
 * payload starts. The fast path is also run the way the zero-copy spooling
 * calls it, on an 11-byte prefix of the message, and must answer the same.
 * A message the fast path declines is fine (protobuf-c handles it); every
 * message is decoded by protobuf-c under ASan, as the front does.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data_msg.h"
#include "thumbnail.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t n = 0, n_prefix = 0;
    size_t i = tn_data_msg_header(data, size, size, &n);
    size_t i_prefix = tn_data_msg_header(data, size < 11 ? size : 11, size, &n_prefix);
    if (i != i_prefix || (i && n != n_prefix))
        abort(); /* the spooling path and the flat path disagree */

    Thumbnail__V1__GenerateRequest *req = thumbnail__v1__generate_request__unpack(NULL, size, data);
    if (i) {
        if (i + n != size)
            abort();
        if (!req || req->msg_case != THUMBNAIL__V1__GENERATE_REQUEST__MSG_DATA ||
            req->data.len != n || (n && memcmp(req->data.data, data + i, n) != 0))
            abort(); /* the fast path spools what protobuf-c does not see as the data */
    }
    if (req)
        thumbnail__v1__generate_request__free_unpacked(req, NULL);
    return 0;
}
