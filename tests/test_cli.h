/* SPDX-License-Identifier: Apache-2.0 */
/* Runs the nlsr program (NLSR_CLI) from a test and captures what it prints: the one runner the
 * tests that drive the program share. Include after test.h, with _GNU_SOURCE defined. */
#ifndef NLSR_TEST_CLI_H
#define NLSR_TEST_CLI_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef NLSR_CLI
#error "NLSR_CLI must name the nlsr program"
#endif

typedef struct cli_result {
    int status; /* the exit status; -1 if it did not exit (killed) or could not run */
    char *out;  /* stdout and stderr, NUL-terminated, never NULL */
    char *err;
} cli_result;

static inline void cli_result_free(cli_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

/* The whole content of an anonymous file, from its start, NUL-terminated. */
static inline char *cli_drain_(int fd)
{
    struct stat st;
    size_t n = fstat(fd, &st) == 0 ? (size_t)st.st_size : 0;
    char *buf = malloc(n + 1);
    if (!buf) abort();
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    buf[got] = '\0';
    return buf;
}

/* Runs NLSR_CLI with args (NULL-terminated, without the program's name), stdin from
 * /dev/null, stdout and stderr captured. A program killed by a signal fails the test. */
static inline cli_result cli_run(const char *const *args)
{
    cli_result r = {-1, NULL, NULL};
    const char *argv[96];
    int argc = 0;
    argv[argc++] = NLSR_CLI;
    for (int i = 0; args[i]; i++) {
        if (argc == 95) {
            FAILF("cli_run: too many arguments");
            break;
        }
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    int ofd = memfd_create("nlsr-test-stdout", MFD_CLOEXEC);
    int efd = memfd_create("nlsr-test-stderr", MFD_CLOEXEC);
    if (ofd < 0 || efd < 0) abort();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(ofd, 1) < 0 || dup2(efd, 2) < 0) _exit(126);
        execv(NLSR_CLI, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) {
        FAILF("cannot run %s: %s", NLSR_CLI, strerror(errno));
    } else if (!WIFEXITED(st)) {
        FAILF("%s %s: killed by signal %d", NLSR_CLI, args[0] ? args[0] : "", WTERMSIG(st));
    } else {
        r.status = WEXITSTATUS(st);
    }
    r.out = cli_drain_(ofd);
    r.err = cli_drain_(efd);
    close(ofd);
    close(efd);
    return r;
}

/* cli_run for callers that want the status and, if out is not NULL, stdout (malloc'd). */
static inline int cli(const char *const *args, char **out)
{
    cli_result r = cli_run(args);
    if (out) {
        *out = r.out;
        r.out = NULL;
    }
    cli_result_free(&r);
    return r.status;
}

#endif
