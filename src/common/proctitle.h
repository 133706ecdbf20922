/*
 * What `ps` and `top` show for each process of the server: its role.
 *
 * DESIGN. As nginx and PostgreSQL do on Linux: the process title is the memory
 * that held argv[] (and environ, when it follows argv[] directly), which
 * /proc/PID/cmdline reads. tn_proctitle_init() moves argv[]'s strings and the
 * environment to the heap, so nothing points into that memory any more, and
 * tn_proctitle_set() overwrites it. The kernel's comm (top, pgrep, the 15
 * characters in /proc/PID/stat) is set separately, with prctl(PR_SET_NAME).
 */
#ifndef TN_PROCTITLE_H
#define TN_PROCTITLE_H

/*
 * Call first in main(), before anything keeps a pointer into argv[] or the
 * environment (getopt's optarg, getenv's results): afterwards argv[i],
 * environ and program_invocation_name point to heap copies, owned by this
 * module for the life of the process. Single-threaded callers only.
 */
void tn_proctitle_init(int argc, char **argv);

/*
 * Show fmt... as this process's command line (truncated to the room argv[]
 * and the environment had, padded with NULs), and comm as its kernel name
 * (truncated to 15 bytes; NULL keeps the current one). Without a prior
 * tn_proctitle_init() only comm changes. Single-threaded callers only: call
 * it before a thread is started, e.g. right after fork().
 */
__attribute__((format(printf, 2, 3))) void tn_proctitle_set(const char *comm, const char *fmt, ...);

#endif
