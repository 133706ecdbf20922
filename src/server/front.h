/*
 * The gRPC front: the only process that calls grpc_init(). Serves
 * thumbnail.v1.Thumbnailer/Generate and /Probe, grpc.health.v1.Health/Check and
 * /Watch, and server reflection (v1, v1alpha); answers other methods
 * UNIMPLEMENTED. Spools uploads to O_TMPFILE files (pull and local mode: see
 * front_int.h), sends jobs on the queue, streams results back.
 *
 * Signals (sent by the master): SIGTERM/SIGINT stop now (cancel calls),
 * SIGQUIT stop accepting (the listeners close and clients get GOAWAY, so new
 * calls go to another front: a reload's new one) and drain in-flight calls for
 * up to cfg->grace_s, SIGUSR1 reopen the log file.
 */
#ifndef TN_FRONT_H
#define TN_FRONT_H

#include <stdint.h>

#include "config.h"

/*
 * The control socket between the master and one front (a SOCK_SEQPACKET
 * socketpair the master makes for each front it spawns) carries struct
 * tn_ipc_ctl messages (ipc.h), sent and received with tn_ipc_send/recv:
 *   front -> master  TN_IPC_CTL_READY    the gRPC server is started and serving
 *   master -> front  TN_IPC_CTL_WORKERS  value = worker slots the generation still
 *                                        has; 0 = none will come back: answer
 *                                        NOT_SERVING and fail calls UNAVAILABLE
 */

/*
 * Run the front until told to stop. queue_fd is the sending end of the job
 * queue, ctl_fd its end of the control socket (-1: none); both are owned by
 * the front from here on. Returns the process exit status:
 * 0 after a clean stop, 1 on a runtime error, 2 if it could not start
 * (e.g. a --listen address could not be bound): the master must not respawn it
 * in a loop.
 */
int tn_front_main(const struct tn_config *cfg, int queue_fd, int ctl_fd);

#endif
