/* SPDX-License-Identifier: Apache-2.0 */
/* Private to src/io/io_*.c: the request backends' shared state and entry points. */
#ifndef NLSR_IO_IO_IMPL_H
#define NLSR_IO_IO_IMPL_H

#include <liburing.h>
#include <pthread.h>

#include "io.h"

struct nlsr_io {
    nlsr_io_kind kind;
    unsigned qd;
    unsigned inflight;
    /* io_uring */
    struct io_uring ring;
    unsigned queued;      /* SQEs prepared but not yet submitted */
    int fault_einval;     /* test hook: fail the next completion with EINVAL */
    /* pread pool */
    pthread_t *threads;
    unsigned nthreads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    nlsr_io_req *work_head, *work_tail, *done_head, *done_tail;
    int stop;
};

int nlsr_io_uring_open(nlsr_io *io);
void nlsr_io_uring_close(nlsr_io *io);
int nlsr_io_uring_submit(nlsr_io *io, nlsr_io_req *r);
int nlsr_io_uring_wait(nlsr_io *io, nlsr_io_req **done);
int nlsr_io_uring_poll(nlsr_io *io, nlsr_io_req **done);

int nlsr_io_pool_open(nlsr_io *io, unsigned nthreads);
void nlsr_io_pool_close(nlsr_io *io);
int nlsr_io_pool_submit(nlsr_io *io, nlsr_io_req *r);
int nlsr_io_pool_wait(nlsr_io *io, nlsr_io_req **done);
int nlsr_io_pool_poll(nlsr_io *io, nlsr_io_req **done);

#endif
