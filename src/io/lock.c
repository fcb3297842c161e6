#define _GNU_SOURCE
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "file.h"

static long read_holder(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

static int lock_path(nlsr_ctx *ctx, const char *dir, char **path)
{
    *path = nlsr_path_join(dir, NLSR_LOCK_NAME);
    NLSR_FAIL_IF(!*path, &ctx->err, -ENOMEM, "out of memory");
    return 0;
}

int nlsr_lock_acquire(nlsr_ctx *ctx, const char *dir, int wait, int *fd_out)
{
    nlsr_err *e = &ctx->err;
    *fd_out = -1;
    char *path;
    NLSR_FORWARD(lock_path(ctx, dir, &path));
    int rc = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot open the lock file: %s", path, strerror(-rc));
        goto done;
    }
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: flock failed: %s", path, strerror(-rc));
            goto done;
        }
        long holder = read_holder(fd);
        if (!wait) {
            rc = nlsr_fail(e, NLSR_E_LOCKED,
                           "%s is locked by another nlsr run (pid %ld) working on this checkpoint; "
                           "try again when it is done, or pass --wait",
                           dir, holder);
            goto done;
        }
        if (!ctx->quiet)
            fprintf(stderr, "nlsr: %s is locked by another nlsr run (pid %ld); waiting\n", dir,
                    holder);
        while (flock(fd, LOCK_EX) != 0) {
            if (errno == EINTR) continue;
            rc = -errno;
            nlsr_fail(e, rc, "%s: flock failed: %s", path, strerror(-rc));
            goto done;
        }
        break;
    }
    /* The pid only serves the message of a run that finds the lock taken. */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) < 0) {
        /* best effort */
    }
done:
    if (rc < 0 && fd >= 0) close(fd);
    else *fd_out = fd;
    free(path);
    return rc;
}

int nlsr_lock_shared(nlsr_ctx *ctx, const char *dir, int *fd_out)
{
    nlsr_err *e = &ctx->err;
    *fd_out = -1;
    char *path;
    NLSR_FORWARD(lock_path(ctx, dir, &path));
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno != ENOENT)
            rc = nlsr_fail(e, -errno, "%s: cannot open the lock file: %s", path, strerror(errno));
        free(path);
        return rc;
    }
    while (flock(fd, LOCK_SH | LOCK_NB) != 0) {
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK)
            rc = nlsr_fail(e, -errno, "%s: flock failed: %s", path, strerror(errno));
        else
            rc = nlsr_fail(e, NLSR_E_LOCKED,
                           "%s is being realigned in place or rolled back by another nlsr run "
                           "(pid %ld); read it when that is done",
                           dir, read_holder(fd));
        break;
    }
    if (rc < 0) close(fd);
    else *fd_out = fd;
    free(path);
    return rc;
}

int nlsr_lock_probe(nlsr_ctx *ctx, const char *dir, long *holder)
{
    *holder = 0;
    char *path;
    NLSR_FORWARD(lock_path(ctx, dir, &path));
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    free(path);
    if (fd < 0) return 0;
    int held = 0;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        held = errno == EWOULDBLOCK;
        if (held) *holder = read_holder(fd);
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
