/*
 * sd_notify() wrappers; see notify.h. libsystemd's sd_notify() reads
 * $NOTIFY_SOCKET itself and returns 0 when it is unset, so nothing here needs
 * to know whether systemd started us.
 */
#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

#ifdef TN_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static void send_state(const char *state)
{
#ifdef TN_HAVE_SYSTEMD
    int rc = sd_notify(0, state);
    if (rc < 0)
        tn_log_warn("sd_notify(\"%.40s\") failed: %s", state, strerror(-rc));
#else
    (void)state;
#endif
}

void tn_notify_ready(const char *status_fmt, ...)
{
    char status[256], msg[300];
    va_list ap;
    va_start(ap, status_fmt);
    vsnprintf(status, sizeof(status), status_fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
    send_state(msg);
}
