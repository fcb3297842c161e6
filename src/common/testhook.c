/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "testhook.h"

#ifdef NLSR_TEST_HOOKS
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void nlsr_test_point(const char *name)
{
    static volatile sig_atomic_t done;
    const char *want = getenv("NLSR_TEST_STOP_AT");
    if (done || !want || strcmp(want, name) != 0) return;
    done = 1;
    raise(SIGSTOP);
}

void nlsr_test_trace(const char *op, const char *path, uint64_t off, uint64_t len)
{
    const char *file = getenv("NLSR_TEST_IO_TRACE");
    if (!file || !*file) return;
    /* Opened per line and unbuffered: the order survives a kill, and a test may point the
     * variable elsewhere between jobs. */
    int fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    char line[4200];
    int n = snprintf(line, sizeof line, "%s %s %" PRIu64 " %" PRIu64 "\n", op, path, off, len);
    if (n > 0 && (size_t)n < sizeof line && write(fd, line, (size_t)n) < 0) {
        /* a test reading the trace notices the missing line */
    }
    close(fd);
}
#else
/* An empty translation unit is not ISO C. */
typedef int nlsr_testhook_unused;
#endif
