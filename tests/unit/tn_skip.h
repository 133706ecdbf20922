/* Skipping a cmocka test with a reason: tests/unit/run_cmocka.py reads the
 * "SKIP: test: reason" line, reports it, and applies tests/skips.py (a skip is
 * CTest's "Skipped", and under CI=true fails unless its reason is allowed). */
#ifndef TN_TEST_SKIP_H
#define TN_TEST_SKIP_H

#include <stdio.h>

#define TN_SKIP(reason)                                                                            \
    do {                                                                                           \
        printf("SKIP: %s: %s\n", __func__, (reason));                                              \
        fflush(stdout);                                                                            \
        skip();                                                                                    \
    } while (0)

#endif
