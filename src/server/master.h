/*
 * The master process: never calls grpc_init(), single-threaded. Creates the
 * job queue, forks the workers and then the front, and respawns any of them
 * that dies (backoff; a child that exits 2 at start-up is not respawned in a
 * loop). Signal handlers only set flags; the loop sleeps in ppoll().
 */
#ifndef TN_MASTER_H
#define TN_MASTER_H

#include "config.h"

/* Run until stopped; returns the process exit status. Daemonizing and the
 * pidfile are done by the caller (main.c) before this is called. */
int tn_master_run(const struct tn_config *cfg);

#endif
