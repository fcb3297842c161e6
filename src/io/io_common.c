/* SPDX-License-Identifier: Apache-2.0 */
/* The backend-independent half of nlsr_io: choosing a backend, stepping down when one cannot
 * run here, and the once-per-context notices that say so. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/testhook.h"
#include "io_impl.h"
#include "../common/log.h"

#ifndef __NR_cachestat
#define __NR_cachestat 451 /* the same number on every architecture */
#endif

/* Worker threads of the pread backend. Requests are I/O-bound, so a few more threads than the
 * two cores keep several reads in the kernel at once. */
#define POOL_THREADS 4u

const char *nlsr_io_fault(void)
{
    const char *f = nlsr_test_env("NLSR_IO_FAULT");
    return f ? f : "";
}

int nlsr_io_direct_enabled(void)
{
    const char *d = getenv("NLSR_IO_DIRECT");
    if (d && strcmp(d, "0") == 0) return 0;
    if (d && strcmp(d, "1") == 0) return 2;
    return 1;
}

int nlsr_io_open_direct(const char *path, int write)
{
    int fd = open(path, (write ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

double nlsr_io_cached_fraction(int fd, uint64_t off, uint64_t len)
{
    struct {
        uint64_t off, len;
    } range = {off, len};
    struct {
        uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
    } cs;
    if (len == 0) return 1.0;
    if (syscall(__NR_cachestat, fd, &range, &cs, 0) != 0) return -1.0;
    long ps = sysconf(_SC_PAGESIZE);
    double pages = (double)((len + (uint64_t)ps - 1) / (uint64_t)ps);
    double f = (double)cs.nr_cache / pages;
    return f > 1.0 ? 1.0 : f;
}

/* One notice per (from, to) pair and context: a run over hundreds of shards steps down once,
 * not once per file. The context's job thread is the only one that steps down. */
void nlsr_io_say_fallback(const char *what, nlsr_io_kind from, nlsr_io_kind to, const char *why,
                          nlsr_ctx *ctx)
{
    if (!ctx || (unsigned)from > 3u || (unsigned)to > 3u) return;
    unsigned bit = 1u << (4u * (unsigned)from + (unsigned)to);
    if (ctx->said_fallback & bit) return;
    ctx->said_fallback |= bit;
    if (from == to) nlsr_log(ctx, NLSR_LOG_NOTICE, "%s: %s", what, why);
    else
        nlsr_log(ctx, NLSR_LOG_NOTICE, "%s: %s %s; using %s", what, nlsr_io_kind_name(from),
                 why, nlsr_io_kind_name(to));
}

static int try_open(nlsr_io *io, nlsr_io_kind kind)
{
    io->kind = kind;
    if (kind == NLSR_IO_URING) {
        if (strstr(nlsr_io_fault(), "uring-setup")) return -ENOSYS;
        int rc = nlsr_io_uring_open(io);
        if (rc == 0 && strstr(nlsr_io_fault(), "uring-einval")) io->fault_einval = 1;
        return rc;
    }
    if (strstr(nlsr_io_fault(), "pread-setup")) return -EAGAIN;
    return nlsr_io_pool_open(io, POOL_THREADS);
}

int nlsr_io_open(nlsr_io_kind kind, unsigned qd, const char *what, nlsr_ctx *ctx, nlsr_io **out,
                 nlsr_io_kind *used, nlsr_err *e)
{
    *out = NULL;
    *used = kind;
    if (kind == NLSR_IO_MMAP) return 0;
    nlsr_io *io = calloc(1, sizeof *io);
    NLSR_FAIL_IF(!io, e, -ENOMEM, "%s: out of memory", what);
    io->qd = qd ? qd : 1;
    nlsr_io_kind order[2] = {NLSR_IO_URING, NLSR_IO_PREAD};
    int first = kind == NLSR_IO_PREAD ? 1 : 0;
    int last = kind == NLSR_IO_AUTO ? 1 : first;
    int rc = 0;
    for (int k = first; k <= last; k++) {
        rc = try_open(io, order[k]);
        if (rc == 0) {
            *out = io;
            *used = order[k];
            return 0;
        }
        if (kind != NLSR_IO_AUTO) break;
        char why[160];
        snprintf(why, sizeof why, "unavailable (%s: %s)",
                 order[k] == NLSR_IO_URING ? "io_uring_setup" : "starting threads",
                 strerror(-rc));
        nlsr_io_say_fallback(what, order[k], k == 0 ? NLSR_IO_PREAD : NLSR_IO_MMAP, why, ctx);
    }
    free(io);
    if (kind == NLSR_IO_AUTO) {
        *used = NLSR_IO_MMAP;
        return 0;
    }
    return nlsr_fail(e, rc, "%s: cannot use the %s backend (forced with --io): %s", what,
                     nlsr_io_kind_name(kind), strerror(-rc));
}

void nlsr_io_close(nlsr_io *io)
{
    if (!io) return;
    if (io->kind == NLSR_IO_URING) nlsr_io_uring_close(io);
    else nlsr_io_pool_close(io);
    free(io);
}

nlsr_io_kind nlsr_io_kind_of(const nlsr_io *io)
{
    return io ? io->kind : NLSR_IO_MMAP;
}

int nlsr_io_register(nlsr_io *io, const struct iovec *iov, unsigned n)
{
    if (io->kind != NLSR_IO_URING || n == 0) return -EOPNOTSUPP;
    return io_uring_register_buffers(&io->ring, iov, n);
}

int nlsr_io_submit(nlsr_io *io, nlsr_io_req *r)
{
    r->res = 0;
    r->done = 0;
    r->next_ = NULL;
    int rc = io->kind == NLSR_IO_URING ? nlsr_io_uring_submit(io, r) : nlsr_io_pool_submit(io, r);
    if (rc == 0) io->inflight++;
    return rc;
}

int nlsr_io_wait(nlsr_io *io, nlsr_io_req **done)
{
    *done = NULL;
    if (io->inflight == 0) return -EINVAL;
    int rc = io->kind == NLSR_IO_URING ? nlsr_io_uring_wait(io, done) : nlsr_io_pool_wait(io, done);
    if (rc == 0) io->inflight--;
    return rc;
}

int nlsr_io_poll(nlsr_io *io, nlsr_io_req **done)
{
    *done = NULL;
    if (io->inflight == 0) return 0;
    int rc = io->kind == NLSR_IO_URING ? nlsr_io_uring_poll(io, done) : nlsr_io_pool_poll(io, done);
    if (rc < 0) return rc;
    if (*done) {
        io->inflight--;
        return 1;
    }
    return 0;
}

unsigned nlsr_io_inflight(const nlsr_io *io)
{
    return io ? io->inflight : 0;
}

void nlsr_io_transfer_sync(nlsr_io_req *r)
{
    while (r->done < r->len) {
        ssize_t n;
        if (r->op == NLSR_IO_OP_READ)
            n = pread(r->fd, r->buf + r->done, r->len - r->done, (off_t)(r->off + r->done));
        else
            n = pwrite(r->fd, r->buf + r->done, r->len - r->done, (off_t)(r->off + r->done));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            r->res = -errno;
            return;
        }
        if (n == 0) { /* end of file: a read's caller compares done with need */
            if (r->op == NLSR_IO_OP_WRITE) r->res = -EIO;
            break;
        }
        r->done += (size_t)n;
        if (r->op == NLSR_IO_OP_READ && r->done >= r->need) break;
    }
}
