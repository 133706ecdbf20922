/*
 * The decode worker's seccomp sandbox: once libav* and the encoders are set
 * up, the worker may only make the system calls its job loop needs (receive a
 * job, pread the video, write images into memfds, send them, allocate memory,
 * run decoder threads). Anything else - open, socket, execve, fork, ptrace...
 * - kills the whole worker process (SIGSYS) before the call runs; the master
 * logs it and respawns the worker, the front answers the call UNAVAILABLE.
 */
#ifndef TN_SANDBOX_H
#define TN_SANDBOX_H

#include <stddef.h>

/*
 * Warm up what the C library and the decoders set up lazily and would need
 * forbidden calls for later (today: one thread started and joined, so that
 * decoder threads find the thread machinery ready). Call after
 * tn_engine_global_init() and before tn_sandbox_install(). Returns 0 or -errno.
 */
int tn_sandbox_warm_up(void);

/*
 * Install the filter on the calling process (every thread: TSYNC), with
 * no_new_privs. Irreversible. On success returns the number of system calls
 * allowed (> 0); on failure returns -errno, writes why into err and leaves
 * the process unfiltered.
 */
int tn_sandbox_install(char *err, size_t errlen);

#endif
