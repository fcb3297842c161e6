/* SPDX-License-Identifier: Apache-2.0 */
#include "testhook.h"

#ifdef NLSR_TEST_HOOKS
#include <signal.h>
#include <stdlib.h>
#include <string.h>

void nlsr_test_point(const char *name)
{
    static volatile sig_atomic_t done;
    const char *want = getenv("NLSR_TEST_STOP_AT");
    if (done || !want || strcmp(want, name) != 0) return;
    done = 1;
    raise(SIGSTOP);
}
#else
/* An empty translation unit is not ISO C. */
typedef int nlsr_testhook_unused;
#endif
