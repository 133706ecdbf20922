/*
 * The proto's Options as a job's options (common/job_opts.h): one
 * translation, used by the front for every call and by the HTTP gateway to
 * compute the result cache's key of a request as the front would.
 */
#ifndef TN_OPTIONS_MSG_H
#define TN_OPTIONS_MSG_H

#include <stdbool.h>
#include <stddef.h>

#include "job_opts.h"
#include "thumbnail.pb-c.h"

/* Fill j from o (probe: a Probe call), defaults applied, and check it.
 * Returns TN_OK, or INVALID_ARGUMENT with err saying why. */
int tn_options_to_job(const Thumbnail__V1__Options *o, bool probe, struct tn_job_opts *j, char *err,
                      size_t errlen);

#endif
