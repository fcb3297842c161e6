/* SPDX-License-Identifier: Apache-2.0 */
/* The io_uring backend: requests become SQEs (fixed-buffer variants when the caller registered
 * its buffers), short transfers are resubmitted for the rest, and a completion is handed back
 * only when its request is finished. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "io_impl.h"

int nlsr_io_uring_open(nlsr_io *io)
{
    /* Twice the queue depth so that resubmitting a short transfer never finds the SQ full. */
    unsigned entries = 2 * io->qd;
    if (entries < 8) entries = 8;
    return io_uring_queue_init(entries, &io->ring, 0);
}

void nlsr_io_uring_close(nlsr_io *io)
{
    /* Requests still in the kernel would write into freed buffers: drain them first. */
    while (io->inflight > 0) {
        nlsr_io_req *r;
        if (nlsr_io_uring_wait(io, &r) < 0) break;
        io->inflight--;
    }
    io_uring_queue_exit(&io->ring);
}

static int prep(nlsr_io *io, nlsr_io_req *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    if (!sqe) {
        int rc = io_uring_submit(&io->ring);
        if (rc < 0) return rc;
        io->queued = 0;
        sqe = io_uring_get_sqe(&io->ring);
        if (!sqe) return -EBUSY;
    }
    unsigned char *p = r->buf + r->done;
    unsigned n = (unsigned)(r->len - r->done);
    uint64_t off = r->off + r->done;
    if (r->op == NLSR_IO_OP_READ) {
        if (r->buf_index >= 0) io_uring_prep_read_fixed(sqe, r->fd, p, n, off, r->buf_index);
        else io_uring_prep_read(sqe, r->fd, p, n, off);
    } else {
        if (r->buf_index >= 0) io_uring_prep_write_fixed(sqe, r->fd, p, n, off, r->buf_index);
        else io_uring_prep_write(sqe, r->fd, p, n, off);
    }
    io_uring_sqe_set_data(sqe, r);
    /* A buffered read of cached data would otherwise be copied inline by io_uring_enter on
     * the caller's thread; punted to io_uring's workers it overlaps the caller's compute. */
    if (r->async) sqe->flags |= IOSQE_ASYNC;
    io->queued++;
    return 0;
}

int nlsr_io_uring_submit(nlsr_io *io, nlsr_io_req *r)
{
    /* One SQE moves at most UINT_MAX bytes; callers cut requests far smaller (chunks). */
    if (r->len > (1u << 30)) return -EINVAL;
    return prep(io, r);
}

/* block: wait for a completion; otherwise take one only if it is there (0 and *done NULL
 * when none is). */
static int uring_reap(nlsr_io *io, nlsr_io_req **done, int block)
{
    *done = NULL;
    for (;;) {
        struct io_uring_cqe *cqe;
        int rc;
        if (io->queued > 0) {
            rc = block ? io_uring_submit_and_wait(&io->ring, 1) : io_uring_submit(&io->ring);
            if (rc >= 0) io->queued = 0;
            else if (rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return rc;
        }
        rc = block ? io_uring_wait_cqe(&io->ring, &cqe) : io_uring_peek_cqe(&io->ring, &cqe);
        if (rc == -EAGAIN && !block) return 0;
        if (rc == -EINTR) continue;
        if (rc < 0) return rc;
        nlsr_io_req *r = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&io->ring, cqe);
        if (io->fault_einval) {
            io->fault_einval = 0;
            res = -EINVAL;
        }
        if (res == -EINTR || res == -EAGAIN) {
            NLSR_FORWARD(prep(io, r));
            continue;
        }
        if (res < 0) {
            r->res = res;
        } else if (res == 0) {
            /* End of file: a read's caller compares done with need; a write cannot stall. */
            if (r->op == NLSR_IO_OP_WRITE) r->res = -EIO;
        } else {
            r->done += (size_t)res;
            int finished = r->done >= r->len || (r->op == NLSR_IO_OP_READ && r->done >= r->need);
            if (!finished) {
                NLSR_FORWARD(prep(io, r));
                continue;
            }
        }
        *done = r;
        return 0;
    }
}

int nlsr_io_uring_wait(nlsr_io *io, nlsr_io_req **done)
{
    return uring_reap(io, done, 1);
}

int nlsr_io_uring_poll(nlsr_io *io, nlsr_io_req **done)
{
    return uring_reap(io, done, 0);
}
