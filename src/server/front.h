/*
 * The gRPC front: the only process that calls grpc_init(). Serves
 * thumbnail.v1.Thumbnailer/Generate and grpc.health.v1.Health/Check, spools
 * uploads to O_TMPFILE files, sends jobs on the queue, streams results back.
 *
 * Signals (sent by the master): SIGTERM/SIGINT stop now (cancel calls),
 * SIGQUIT stop accepting and drain in-flight calls for up to cfg->grace_s,
 * SIGUSR1 reopen the log file.
 */
#ifndef TN_FRONT_H
#define TN_FRONT_H

#include "config.h"

/*
 * Run the front until told to stop. queue_fd is the sending end of the job
 * queue, owned by the front from here on. Returns the process exit status:
 * 0 after a clean stop, 1 on a runtime error, 2 if it could not start
 * (e.g. a --listen address could not be bound): the master must not respawn it
 * in a loop.
 */
int tn_front_main(const struct tn_config *cfg, int queue_fd);

#endif
