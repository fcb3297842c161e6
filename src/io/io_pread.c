/* SPDX-License-Identifier: Apache-2.0 */
/* The pread backend: a few worker threads take requests from a queue and do plain
 * pread/pwrite loops, so that reads of the next units are in the kernel while the caller
 * computes, without io_uring. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>

#include "io_impl.h"

static void *worker(void *arg)
{
    nlsr_io *io = arg;
    pthread_mutex_lock(&io->mu);
    for (;;) {
        while (!io->work_head && !io->stop) pthread_cond_wait(&io->cv_work, &io->mu);
        if (!io->work_head) break; /* stop, and nothing left to do */
        nlsr_io_req *r = io->work_head;
        io->work_head = r->next_;
        if (!io->work_head) io->work_tail = NULL;
        pthread_mutex_unlock(&io->mu);
        nlsr_io_transfer_sync(r);
        pthread_mutex_lock(&io->mu);
        r->next_ = NULL;
        if (io->done_tail) io->done_tail->next_ = r;
        else io->done_head = r;
        io->done_tail = r;
        pthread_cond_signal(&io->cv_done);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

int nlsr_io_pool_open(nlsr_io *io, unsigned nthreads)
{
    int rc = pthread_mutex_init(&io->mu, NULL);
    if (rc) return -rc;
    pthread_cond_init(&io->cv_work, NULL);
    pthread_cond_init(&io->cv_done, NULL);
    io->threads = calloc(nthreads, sizeof *io->threads);
    if (!io->threads) {
        rc = ENOMEM;
        goto fail;
    }
    /* Workers block every signal, so that the caller's handlers (Ctrl-C) run on its thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < nthreads; i++) {
        pthread_attr_t at;
        pthread_attr_init(&at);
        /* They only loop over pread; 256 KiB leaves room for sanitizer builds. */
        pthread_attr_setstacksize(&at, 256u << 10);
        rc = pthread_create(&io->threads[i], &at, worker, io);
        pthread_attr_destroy(&at);
        if (rc) break;
        io->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) goto fail;
    return 0;
fail:
    nlsr_io_pool_close(io);
    return -rc;
}

void nlsr_io_pool_close(nlsr_io *io)
{
    pthread_mutex_lock(&io->mu);
    io->stop = 1;
    pthread_cond_broadcast(&io->cv_work);
    pthread_mutex_unlock(&io->mu);
    for (unsigned i = 0; i < io->nthreads; i++) pthread_join(io->threads[i], NULL);
    free(io->threads);
    io->threads = NULL;
    io->nthreads = 0;
    pthread_cond_destroy(&io->cv_work);
    pthread_cond_destroy(&io->cv_done);
    pthread_mutex_destroy(&io->mu);
}

int nlsr_io_pool_submit(nlsr_io *io, nlsr_io_req *r)
{
    pthread_mutex_lock(&io->mu);
    if (io->work_tail) io->work_tail->next_ = r;
    else io->work_head = r;
    io->work_tail = r;
    pthread_cond_signal(&io->cv_work);
    pthread_mutex_unlock(&io->mu);
    return 0;
}

int nlsr_io_pool_wait(nlsr_io *io, nlsr_io_req **done)
{
    pthread_mutex_lock(&io->mu);
    while (!io->done_head) pthread_cond_wait(&io->cv_done, &io->mu);
    nlsr_io_req *r = io->done_head;
    io->done_head = r->next_;
    if (!io->done_head) io->done_tail = NULL;
    pthread_mutex_unlock(&io->mu);
    *done = r;
    return 0;
}

int nlsr_io_pool_poll(nlsr_io *io, nlsr_io_req **done)
{
    pthread_mutex_lock(&io->mu);
    nlsr_io_req *r = io->done_head;
    if (r) {
        io->done_head = r->next_;
        if (!io->done_head) io->done_tail = NULL;
    }
    pthread_mutex_unlock(&io->mu);
    *done = r;
    return 0;
}
