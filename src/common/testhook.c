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
#include <time.h>
#include <unistd.h>

/* Whether one of the stop signals is pending for the whole process (/proc/self/status
 * ShdPnd, a hex mask: bit n-1 is signal n); unreadable counts as not pending. */
static int stop_signal_pending(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    if (!f) return 0;
    char line[256];
    unsigned long long mask = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "ShdPnd: %llx", &mask) == 1) break;
    fclose(f);
    unsigned long long stop = 1ull << (SIGINT - 1) | 1ull << (SIGTERM - 1) | 1ull << (SIGHUP - 1);
    return (mask & stop) != 0;
}

void nlsr_test_point(const char *name)
{
    static volatile sig_atomic_t done;
    const char *want = getenv("NLSR_TEST_STOP_AT");
    if (done || !want || strcmp(want, name) != 0) return;
    done = 1;
    raise(SIGSTOP);
    /* A test sends its signal while the process is stopped, then SIGCONT. The signal waits for
     * the whole process, and on SIGCONT any thread may take it (an OpenBLAS thread, a lane):
     * its handler then sets the cancel flag beside this thread, which would otherwise go on
     * and could pass its next check first (seen once in CI: a stopped rewrite committed and
     * exited 0). Wait until no thread has it left to take (at most 2 s), then 20 ms for the
     * handler that took it. */
    struct timespec tick = {0, 1000000}, settle = {0, 20000000};
    for (int i = 0; i < 2000 && stop_signal_pending(); i++) nanosleep(&tick, NULL);
    nanosleep(&settle, NULL);
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
