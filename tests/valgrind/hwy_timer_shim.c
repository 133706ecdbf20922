/*
 * Test-only LD_PRELOAD shim for running thumbnail_server under valgrind.
 *
 * libavcodec pulls in libjxl, which pulls in libhwy (Highway). libhwy's load-time
 * initializer calls hwy::platform::TimerResolution(), which executes RDTSCP; valgrind
 * 3.19 (Debian 12) does not emulate RDTSCP and kills the process with SIGILL before
 * main() runs. This library defines that one C++ function (by its mangled name, so no
 * C++ compiler is needed) and, preloaded, wins over libhwy's: the timer resolution is
 * only used by Highway's own benchmarking helpers, never by decoding.
 */
#include <stdint.h>

uint64_t tn_hwy_timer_resolution(void) __asm__("_ZN3hwy8platform15TimerResolutionEv");

uint64_t tn_hwy_timer_resolution(void)
{
    return 20; /* ticks: a plausible invariant-TSC resolution */
}
