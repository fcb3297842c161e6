/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "../common/log.h"
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"

/* The pid an in-place holder wrote into DIR/.nlsr.lock, for messages only (0 if unknown). */
static long read_holder(const char *dir)
{
    char *path = nlsr_path_join(dir, NLSR_LOCK_NAME);
    if (!path) return 0;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    free(path);
    if (fd < 0) return 0;
    char buf[32];
    struct stat st;
    ssize_t n = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? pread(fd, buf, sizeof buf - 1, 0) : -1;
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

/* The folder itself, opened for flock: no file is needed, so the lock works on folders nlsr
 * has never written to, and readers create nothing. */
static int open_dir(nlsr_ctx *ctx, const char *dir, int *fd)
{
    *fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    NLSR_FAIL_IF(*fd < 0, &ctx->err, -errno, "%s: cannot open the folder to lock it: %s", dir,
                 strerror(errno));
    return 0;
}

/* flock that gives up on a signal when the context was cancelled (the CLI's SIGINT/SIGTERM),
 * and retries other interruptions. */
static int flock_wait(nlsr_ctx *ctx, int fd, int op)
{
    while (flock(fd, op) != 0) {
        if (errno != EINTR) return -errno;
        if (nlsr_ctx_cancelled(ctx)) return NLSR_E_CANCELLED;
    }
    return 0;
}

int nlsr_lock_acquire(nlsr_ctx *ctx, const char *dir, int wait, int *fd_out)
{
    nlsr_err *e = &ctx->err;
    *fd_out = -1;
    int fd;
    NLSR_FORWARD(open_dir(ctx, dir, &fd));
    int rc = flock_wait(ctx, fd, LOCK_EX | LOCK_NB);
    if (rc == -EWOULDBLOCK) {
        long holder = read_holder(dir);
        char who[64] = "a reader or an in-place run";
        if (holder > 0) snprintf(who, sizeof who, "pid %ld, or a reader", holder);
        if (!wait) {
            rc = nlsr_fail(e, NLSR_E_LOCKED,
                           "%s is locked by another nlsr run (%s) working on this checkpoint; "
                           "try again when it is done, or pass --wait",
                           dir, who);
        } else {
            nlsr_log(ctx, NLSR_LOG_NOTICE, "%s is locked by another nlsr run (%s); waiting", dir,
                     who);
            rc = flock_wait(ctx, fd, LOCK_EX);
            if (rc == NLSR_E_CANCELLED)
                nlsr_fail(e, rc, "%s: interrupted while waiting for its lock", dir);
        }
    }
    if (rc < 0 && rc != NLSR_E_LOCKED && rc != NLSR_E_CANCELLED)
        nlsr_fail(e, rc, "%s: flock failed: %s", dir, strerror(-rc));
    if (rc < 0) {
        close(fd);
        return rc;
    }
    /* The holder's pid, for the message of a run that finds the folder locked. Best effort,
     * never through a link and never blocking on a FIFO planted there. */
    char *path = nlsr_path_join(dir, NLSR_LOCK_NAME);
    int pf = path ? open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644) : -1;
    struct stat st;
    if (pf >= 0 && fstat(pf, &st) == 0 && S_ISREG(st.st_mode)) {
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (ftruncate(pf, 0) == 0 && pwrite(pf, pid, (size_t)n, 0) < 0) {
            /* best effort */
        }
    }
    if (pf >= 0) close(pf);
    free(path);
    *fd_out = fd;
    return 0;
}

int nlsr_lock_shared(nlsr_ctx *ctx, const char *dir, int *fd_out)
{
    nlsr_err *e = &ctx->err;
    *fd_out = -1;
    int fd;
    NLSR_FORWARD(open_dir(ctx, dir, &fd));
    int rc = flock_wait(ctx, fd, LOCK_SH | LOCK_NB);
    if (rc == -EWOULDBLOCK)
        rc = nlsr_fail(e, NLSR_E_LOCKED,
                       "%s is being realigned in place or rolled back by another nlsr run "
                       "(pid %ld); read it when that is done",
                       dir, read_holder(dir));
    else if (rc < 0)
        rc = nlsr_fail(e, rc, "%s: flock failed: %s", dir, strerror(-rc));
    if (rc < 0) close(fd);
    else *fd_out = fd;
    return rc;
}

int nlsr_lock_probe(nlsr_ctx *ctx, const char *dir, long *holder)
{
    *holder = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return nlsr_fail(&ctx->err, -errno, "%s: cannot open the folder: %s", dir,
                                 strerror(errno));
    int held = 0;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        held = errno == EWOULDBLOCK;
        if (held) *holder = read_holder(dir);
    }
    close(fd); /* drops our lock if we got it */
    return held;
}

void nlsr_lock_release(int fd)
{
    if (fd < 0) return;
    flock(fd, LOCK_UN);
    close(fd);
}
