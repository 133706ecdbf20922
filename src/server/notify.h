/*
 * Service-manager readiness (systemd Type=notify): tell the manager that the
 * server is serving. The front calls it once its listening sockets are bound
 * and the gRPC server started, so "systemctl start" returns when a client can
 * connect; the unit says NotifyAccess=all because the front, not the master
 * (the unit's main pid), is the process that knows. A no-op outside systemd
 * (no $NOTIFY_SOCKET) and in builds without libsystemd.
 */
#ifndef TN_NOTIFY_H
#define TN_NOTIFY_H

/*
 * Send READY=1 with a STATUS= line built from the printf-style format. Errors
 * are logged (warn), never fatal: a server that cannot tell the manager is
 * still a working server. Safe to call again (a respawned or reloaded front).
 */
__attribute__((format(printf, 1, 2))) void tn_notify_ready(const char *status_fmt, ...);

#endif
