/*
 * Pull mode in a worker: the engine's reads become range requests.
 *
 * The job's video fd is the front's spool file, empty at first. A read of
 * bytes the worker does not have yet sends TN_IPC_READ {offset, length} on the
 * reply socket and waits for TN_IPC_READ_REPLY: the front asked the client for
 * those bytes and wrote them into the spool file, where we pread them. The
 * spool file is therefore the cache of every block fetched so far (libav seeks
 * back and forth: nothing is fetched twice), held by the front's page cache
 * and bounded by the front's limit on the bytes a call may pull.
 *
 * The read-ahead starts at TN_PULL_BLOCK_MIN and doubles while the reads are
 * sequential (a demuxer scanning packets), up to TN_PULL_BLOCK_MAX; a jump
 * (a seek to an index, to a moov at the end) starts small again.
 */
#ifndef TN_PULL_H
#define TN_PULL_H

#include <stdint.h>

#define TN_PULL_BLOCK_MIN (256u << 10)
#define TN_PULL_BLOCK_MAX (1u << 20)

struct tn_pull;

/*
 * A reader for one pull job: the video is `size` bytes; fd is the job's spool
 * file (read with pread, never closed here); sock is the job's reply socket
 * (never closed here); deadline_ms as in tn_ipc_job (0 = none). Returns 0 and
 * *out, or -ENOMEM.
 */
int tn_pull_new(struct tn_pull **out, int fd, int sock, uint64_t size, uint64_t job_id,
                int64_t deadline_ms);

/*
 * A tn_engine_read_fn (opaque = the struct tn_pull): bytes [pos, pos + len),
 * fetched from the front first if missing. Returns the count (> 0), 0 at the
 * end of the file, -TN_DEADLINE_EXCEEDED if the bytes did not come before the
 * deadline, -TN_CANCELLED if the front closed the socket (abandon the job), or
 * -TN_INTERNAL if the front answered something else than what was asked.
 */
int tn_pull_read(void *opaque, uint8_t *buf, int len, int64_t pos);

/* Bytes fetched and requests made so far, for the log. */
void tn_pull_stats(const struct tn_pull *p, uint64_t *bytes, uint64_t *requests);

/* Free the reader; NULL-safe; sets *p to NULL. */
void tn_pull_free(struct tn_pull **p);

#endif
