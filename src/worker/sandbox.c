/*
 * The decode worker's seccomp filter (libseccomp).
 *
 * DESIGN. The worker decodes untrusted files with a large C library, so the
 * filter assumes the decoder may be compromised and allows only what the job
 * loop itself does once it is running. The list was measured, not guessed:
 * `strace -f -c` on a worker while the real client sent the generated clips
 * (H.264, HEVC, VP9, MPEG-4, AV1 via libdav1d, ~90 damaged variants) in all
 * three output formats and both seek modes, with one and with several decoder
 * threads. Everything else kills the process (SCMP_ACT_KILL_PROCESS: the call
 * never runs, and no code of ours runs after it): the master sees SIGSYS,
 * logs it and respawns the worker.
 *
 * What is not on the list, on purpose: open/openat (only the job's fd is ever
 * read), socket/connect, execve, fork (clone without CLONE_THREAD), ptrace,
 * kill of other processes, ioctl, and executable memory (mmap/mprotect with
 * PROT_EXEC: the decoders need no JIT, an exploit would).
 *
 * Setup order matters: the filter goes on after RLIMIT_AS, after libav and
 * the log are set up, and after tn_sandbox_warm_up(), since lazy
 * initialisation in libraries is where surprise open() calls live.
 */
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <iconv.h>
#include <pthread.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "log.h"

/* An AddressSanitizer build (gcc says so one way, clang the other). */
#if defined(__SANITIZE_ADDRESS__)
#define TN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TN_ASAN 1
#endif
#endif

/* Allowed whatever the arguments. Each line says who needs it. */
static const struct allowed {
    int nr;
    const char *name;
} allowed[] = {
/* clang-format off */
#define ALLOW(name) {SCMP_SYS(name), #name}
    /* clang-format on */
    /* the job loop (worker.c, ipc.c) */
    ALLOW(recvmsg),  /* the next job and its two fds, from the queue */
    ALLOW(sendmsg),  /* ACK, RESULT (with its memfd), DONE on the reply socket */
    ALLOW(recvfrom), /* recv(MSG_PEEK): did the front close the reply socket? */
    ALLOW(poll),     /* the same check, between reads and frames (input.c) */
    ALLOW(ppoll),    /* poll() on architectures that have no poll syscall */
    ALLOW(close),    /* the job's fds and each memfd once sent */
    ALLOW(getpid),   /* the ACK carries our pid */
    ALLOW(write),    /* log lines (fd 2 or the log file); images into memfds */
    ALLOW(fstat),    /* the video's size when the job does not say it */
    /* syslog(3) (--daemon without --log-file) on the socket tn_log_set_role()
     * connected before the filter (LOG_NDELAY); should syslogd go away, glibc's
     * reconnect (socket, connect) stays forbidden and kills the worker */
    ALLOW(sendto),
    /* the video: the job's fd, read at offsets by the custom AVIO */
    ALLOW(pread64),
    /* each thumbnail: a sealed memfd (fcntl F_ADD_SEALS below), rewound */
    ALLOW(memfd_create),
    ALLOW(lseek),
    /* time: the vDSO answers without a syscall, unless it is unavailable */
    ALLOW(clock_gettime),
    ALLOW(gettimeofday),
    /* signals: our QUIT/USR1 handlers return through rt_sigreturn; a call
     * they interrupt may be restarted; glibc masks signals around clone */
    ALLOW(rt_sigreturn),
    ALLOW(restart_syscall),
    ALLOW(rt_sigprocmask),
    ALLOW(exit_group), /* the worker's exit (a threaded exit too) */
    ALLOW(exit),       /* a decoder thread's end */
    /* memory: malloc (brk, mmap above M_MMAP_THRESHOLD), frame pools,
     * realloc of big buffers, free() giving pages back, thread stacks and
     * arenas. mmap and mprotect are allowed below, without PROT_EXEC. */
    ALLOW(brk),
    ALLOW(munmap),
    ALLOW(mremap),
    ALLOW(madvise),
    /* decoder threads (frame threads, libdav1d's own): locks, glibc's
     * per-thread registration, CPU count, yielding spin locks */
    ALLOW(futex),
    ALLOW(set_robust_list),
    ALLOW(rseq),
    ALLOW(gettid),
    ALLOW(sched_yield),
    ALLOW(sched_getaffinity),
    /* glibc's qsort() sizes its buffer by the physical memory (sysinfo) */
    ALLOW(sysinfo),
#ifdef TN_ASAN
    /* ASan+UBSan builds only (CI runs the whole suite under them), never a
     * release build: the runtime gives each new thread an alternate signal
     * stack, and a report starts by reading /proc/self/maps (open/openat
     * read-only and ioctl(TCGETS) below). Measured with a planted overflow:
     * the report's first line ("runtime error: ...", which the test harness
     * fails on) is written, then the runtime tries to start llvm-symbolizer
     * (pipe2, fork, execve), which stays forbidden: the worker dies of SIGSYS
     * with its stack unsymbolized. Rerun with --no-sandbox for the whole
     * report (e.g. TN_SERVER_ARGS=--no-sandbox ctest ...). */
    ALLOW(sigaltstack),
    ALLOW(read),
    ALLOW(readlink),
#endif
#undef ALLOW
};

/* Add one rule; a syscall this architecture does not have (a negative
 * pseudo number, e.g. poll on arm64) is skipped. Returns 1 if added, 0 if
 * skipped, -errno on failure. */
static int add(scmp_filter_ctx ctx, uint32_t action, int nr, unsigned n_args,
               const struct scmp_arg_cmp *args)
{
    if (nr < 0)
        return 0;
    int rc = seccomp_rule_add_array(ctx, action, nr, n_args, args);
    return rc < 0 ? rc : 1;
}

/* Argument `arg` == v. (SCMP_A0(SCMP_CMP_EQ, v) leaves datum_b to the
 * reader: clang's -Wmissing-field-initializers.) */
static struct scmp_arg_cmp eq(unsigned arg, scmp_datum_t v)
{
    struct scmp_arg_cmp c = {.arg = arg, .op = SCMP_CMP_EQ, .datum_a = v, .datum_b = 0};
    return c;
}

static void *warm_up_thread(void *arg)
{
    return arg;
}

/* The character sets libavformat's MPEG-TS demuxer converts DVB service
 * names from (mpegts.c, getstr8), always to UTF-8: its table of first bytes
 * plus "ISO-8859-<n>" for a 0x10 0x00 n prefix (n = 1..15, not 12). glibc
 * loads each converter on first use: the gconv-modules cache and a .so, i.e.
 * openat() and an executable mapping, which the filter forbids (measured:
 * every MPEG-2 TS clip with an SDT killed its worker). Opening them all once
 * here loads them; the descriptors are never closed, which keeps the modules
 * loaded for the process's life, so the demuxer's own iconv_open() finds
 * them in memory. Owned by this file, never freed (one set per worker). */
static const char *const dvb_charsets[] = {
    "ISO6937",     "ISO-8859-1",  "ISO-8859-2",  "ISO-8859-3",  "ISO-8859-4",
    "ISO-8859-5",  "ISO-8859-6",  "ISO-8859-7",  "ISO-8859-8",  "ISO-8859-9",
    "ISO-8859-10", "ISO-8859-11", "ISO-8859-13", "ISO-8859-14", "ISO-8859-15",
    "UCS-2BE",     "KSC_5601",    "GB2312",      "UTF-8",
};
static iconv_t dvb_iconv[sizeof(dvb_charsets) / sizeof(dvb_charsets[0])];

int tn_sandbox_warm_up(void)
{
    pthread_t t;
    /* The first pthread_create maps the thread machinery (stack cache, TLS
     * for a second thread, malloc arenas use it later): let it happen with
     * every syscall still available. */
    int rc = pthread_create(&t, NULL, warm_up_thread, NULL);
    if (rc != 0)
        return -rc;
    rc = pthread_join(t, NULL);
    if (rc != 0)
        return -rc;
    for (size_t i = 0; i < sizeof(dvb_charsets) / sizeof(dvb_charsets[0]); i++) {
        dvb_iconv[i] = iconv_open("UTF-8", dvb_charsets[i]);
        /* A C library without this converter fails the demuxer's call the
         * same way, without opening anything: not an error here. */
        if (dvb_iconv[i] == (iconv_t)-1)
            tn_log_debug("iconv_open(UTF-8, %s): %s", dvb_charsets[i], strerror(errno));
    }
    return 0;
}

int tn_sandbox_install(char *err, size_t errlen)
{
    scmp_filter_ctx ctx = NULL;
    int n = 0, rc = 0;
    const char *what = "";

    ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx) {
        rc = -ENOMEM;
        what = "seccomp_init";
        goto out;
    }
    /* A syscall made through another ABI (i386 int 0x80 on x86_64): kill.
     * The native architecture is in the filter from seccomp_init. */
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) < 0 ||
        (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1)) < 0 ||
        (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) < 0) {
        what = "seccomp_attr_set";
        goto out;
    }

    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
        if ((rc = add(ctx, SCMP_ACT_ALLOW, allowed[i].nr, 0, NULL)) < 0) {
            what = allowed[i].name;
            goto out;
        }
        n += rc;
    }

    /* Memory, never executable: a decoder needs no new code at run time. */
    const struct scmp_arg_cmp no_exec = SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0);
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1, &no_exec)) < 0 ||
        (n += rc, rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1, &no_exec)) < 0) {
        what = "mmap/mprotect";
        goto out;
    }
    n += rc;

    /* fcntl: reading and clearing O_NONBLOCK on the reply socket, sealing
     * a memfd. Not F_DUPFD, F_SETOWN, leases... */
    static const int fcntl_cmds[] = {F_GETFL, F_SETFL, F_ADD_SEALS};
    for (size_t i = 0; i < sizeof(fcntl_cmds) / sizeof(fcntl_cmds[0]); i++) {
        const struct scmp_arg_cmp cmd = eq(1, (scmp_datum_t)fcntl_cmds[i]);
        if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1, &cmd)) < 0) {
            what = "fcntl";
            goto out;
        }
    }
    n++;

    /* fstat() is newfstatat(fd, "", AT_EMPTY_PATH) in glibc. The path is a
     * pointer seccomp cannot read, so a rogue caller could stat a path: it
     * learns metadata, opens nothing. */
    const struct scmp_arg_cmp empty_path =
        SCMP_A3(SCMP_CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH);
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(newfstatat), 1, &empty_path)) < 0) {
        what = "newfstatat";
        goto out;
    }
    n += rc;

    /* Threads yes, processes no: clone must carry CLONE_THREAD. clone3
     * passes its flags in memory, out of seccomp's sight: it fails with
     * ENOSYS, and glibc then falls back to clone. */
    const struct scmp_arg_cmp thread = SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD);
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1, &thread)) < 0 ||
        (n += rc, rc = add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0, NULL)) < 0) {
        what = "clone";
        goto out;
    }

    /* Decoder threads name themselves ("av:h264:df", dav1d's too): PR_SET_NAME,
     * no other prctl (e.g. not PR_SET_DUMPABLE, PR_SET_SECCOMP...). */
    const struct scmp_arg_cmp set_name = eq(0, PR_SET_NAME);
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1, &set_name)) < 0) {
        what = "prctl";
        goto out;
    }
    n += rc;

#ifdef TN_ASAN
    /* The runtime's internal_open() is the raw open syscall where there is one. */
    const struct scmp_arg_cmp rdonly_at = SCMP_A2(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_RDONLY);
    const struct scmp_arg_cmp rdonly = SCMP_A1(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_RDONLY);
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(openat), 1, &rdonly_at)) < 0 ||
        (n += rc, rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(open), 1, &rdonly)) < 0) {
        what = "open";
        goto out;
    }
    n += rc;
    /* isatty(2), to decide whether the report is in colour */
    const struct scmp_arg_cmp tcgets = eq(1, TCGETS);
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1, &tcgets)) < 0) {
        what = "ioctl";
        goto out;
    }
    n += rc;
#endif

    /* abort() and raise() signal their own thread: tgkill on our own
     * process only, so an assert in a library still dumps as SIGABRT. */
    const struct scmp_arg_cmp self = eq(0, (scmp_datum_t)getpid());
    if ((rc = add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1, &self)) < 0) {
        what = "tgkill";
        goto out;
    }
    n += rc;

    if ((rc = seccomp_load(ctx)) < 0) {
        what = "seccomp_load";
        goto out;
    }
    rc = n;

out:
    if (rc < 0)
        snprintf(err, errlen, "cannot install the seccomp filter (%s): %s", what, strerror(-rc));
    seccomp_release(ctx);
    return rc;
}
