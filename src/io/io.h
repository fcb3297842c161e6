/* SPDX-License-Identifier: Apache-2.0 */
/* Asynchronous positioned I/O for the streaming engine: one interface, three backends.
 *
 *   io_uring  (default) one ring per user, queue depth `qd`, registered buffers where the
 *             memlock limit allows, O_DIRECT descriptors opened by the caller where the file
 *             system supports them (nlsr_io_open_direct); buffered otherwise.
 *   pread     a small pool of threads doing pread/pwrite, so that several requests are in the
 *             kernel at once even without io_uring.
 *   mmap      no request queue at all: readers map windows of the file (nlsr_io_map) and hint
 *             the kernel with MADV_WILLNEED; the sink writes through a shared mapping.
 *
 * A request is a plain struct owned by the caller; it must stay put (and its buffer alive)
 * from nlsr_io_submit until nlsr_io_wait hands it back. Backends finish short transfers
 * themselves, so a completed request has either transferred what it had to or carries an
 * error.
 *
 * nlsr_io_open with NLSR_IO_AUTO steps down io_uring -> pread -> mmap when a backend cannot be
 * set up (io_uring_setup gives EPERM or ENOSYS under seccomp, as in Docker's default profile,
 * or ENOMEM under a low memlock limit) and says so once per context in its log. Callers step
 * down the same way when a request fails with EINVAL (nlsr_io_say_fallback).
 *
 * Fault injection for tests: NLSR_IO_FAULT=uring-setup makes io_uring setup fail with ENOSYS,
 * NLSR_IO_FAULT=uring-einval makes the first io_uring completion fail with EINVAL,
 * NLSR_IO_FAULT=pread-setup makes the thread pool fail to start (several: comma-separated); test builds (-DNLSR_TEST_HOOKS=ON) only.
 * NLSR_IO_DIRECT=0 turns O_DIRECT off everywhere, NLSR_IO_DIRECT=1 forces it even for cached files. */
#ifndef NLSR_IO_IO_H
#define NLSR_IO_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "../common/ctx.h"
#include "../common/err.h"

/* O_DIRECT alignment of file offsets, lengths and buffer addresses. 4096 satisfies every
 * logical block size in practice (512 and 4096) and the page size. */
#define NLSR_IO_ALIGN 4096u

enum { NLSR_IO_OP_READ = 0, NLSR_IO_OP_WRITE = 1 };

typedef struct nlsr_io_req {
    int fd;
    int op;              /* NLSR_IO_OP_READ or NLSR_IO_OP_WRITE */
    unsigned char *buf;
    size_t len;          /* bytes to transfer */
    size_t need;         /* reads: bytes that must arrive; an O_DIRECT window may run past the
                            end of the file, so a read stops early once `need` bytes are in */
    uint64_t off;
    int buf_index;       /* registered buffer holding buf (io_uring), or -1 */
    int async;           /* io_uring: always hand to a worker thread (buffered reads of cached
                            data would otherwise be copied on the submitting thread) */
    void *user;          /* the caller's */
    /* set on completion */
    int res;             /* 0, or -errno of the first failure */
    size_t done;         /* bytes transferred */
    /* private to the backend */
    struct nlsr_io_req *next_;
} nlsr_io_req;

typedef struct nlsr_io nlsr_io;

/* Opens a request backend. kind is NLSR_IO_URING or NLSR_IO_PREAD, or NLSR_IO_AUTO to step
 * down on failure; *used says what was obtained. NLSR_IO_MMAP (asked for, or reached by
 * stepping down) leaves *out NULL: the caller maps instead. `what` names the user in the
 * step-down message ("read stream", "writer"). Forced kinds fail instead of stepping down. */
int nlsr_io_open(nlsr_io_kind kind, unsigned qd, const char *what, nlsr_ctx *ctx, nlsr_io **out,
                 nlsr_io_kind *used, nlsr_err *e);
void nlsr_io_close(nlsr_io *io);
nlsr_io_kind nlsr_io_kind_of(const nlsr_io *io);

/* io_uring only: registers buffers for fixed reads/writes (req->buf_index = position in iov).
 * Returns 0, or -errno (e.g. ENOMEM over the memlock limit) and the caller goes on without. */
int nlsr_io_register(nlsr_io *io, const struct iovec *iov, unsigned n);

/* Queues a request. At most `qd` requests may be outstanding; the caller keeps count. */
int nlsr_io_submit(nlsr_io *io, nlsr_io_req *r);
/* Waits for one completion (submitting whatever is queued first) and returns it in *done.
 * The return value is a failure of the backend itself; the request's own result is in
 * (*done)->res. */
int nlsr_io_wait(nlsr_io *io, nlsr_io_req **done);
/* The same without waiting: 1 and *done when a request has completed, 0 (and *done NULL) when
 * none has yet, or a backend failure. Lets a caller busy with compute keep the queue full. */
int nlsr_io_poll(nlsr_io *io, nlsr_io_req **done);
unsigned nlsr_io_inflight(const nlsr_io *io);
/* Does a request synchronously with pread/pwrite (EINTR, short transfers and `need` handled
 * as the backends do); sets r->res and r->done. The pool's workers run this; callers use it to
 * finish a request a backend refused. */
void nlsr_io_transfer_sync(nlsr_io_req *r);

/* Says once per context and kind of event, in a NLSR_LOG_NOTICE of ctx's log, that `what`
 * steps down from one backend to another and why. */
void nlsr_io_say_fallback(const char *what, nlsr_io_kind from, nlsr_io_kind to, const char *why,
                          nlsr_ctx *ctx);

/* O_DIRECT policy: 0 never (NLSR_IO_DIRECT=0), 2 always (NLSR_IO_DIRECT=1, even for files
 * already in the page cache), 1 otherwise (files mostly cached are read buffered). */
int nlsr_io_direct_enabled(void);
/* Opens path with O_DIRECT for reading (write = 0) or for writing an existing file
 * (write = 1). Returns the descriptor, or -errno (-EINVAL where the file system refuses
 * O_DIRECT, as tmpfs does). */
int nlsr_io_open_direct(const char *path, int write);
/* Fraction (0..1) of bytes [off, off+len) of fd in the page cache, from cachestat(2) (Linux
 * 6.5+); -1 where the kernel cannot say. A file mostly cached is better read buffered: O_DIRECT
 * would go to the disk for data already in memory. */
double nlsr_io_cached_fraction(int fd, uint64_t off, uint64_t len);
/* Test hook: the value of NLSR_IO_FAULT ("" if unset or not a test build). */
const char *nlsr_io_fault(void);

/* ---- mmap windows ----------------------------------------------------------------------- */

typedef struct nlsr_io_map {
    void *addr;       /* page-aligned start of the mapping, NULL when none */
    size_t len;
    const char *path; /* the file's (the caller's string), for messages */
    int guard;        /* read windows: the SIGBUS guard's slot, -1 if none */
} nlsr_io_map;

/* Maps bytes [off, off+len) of fd read-only (len > 0) and sets *data to the byte at off. With
 * willneed, asks the kernel to start reading the range now (MADV_WILLNEED), so the read
 * proceeds while the caller computes on earlier windows.
 * A file truncated by someone else while mapped would kill the process with SIGBUS; read
 * windows are guarded instead: a SIGBUS inside one maps a zero page over the missing page and
 * marks the window, and nlsr_io_unmap reports it, so the job fails with a message before it
 * commits anything (the zeros it computed on are thrown away with its temporary output). */
int nlsr_io_map_read(int fd, uint64_t off, size_t len, int willneed, nlsr_io_map *m,
                     const unsigned char **data, const char *path, nlsr_err *e);
/* Maps the whole window into the page tables now (MADV_POPULATE_READ, Linux 5.14+), waiting
 * for data still being read: one call instead of a page fault every few pages when the caller
 * walks it. NLSR_E_FORMAT when the file no longer covers the window (truncated); other
 * failures are ignored (a hint). */
int nlsr_io_map_populate(const nlsr_io_map *m, nlsr_err *e);
/* Maps bytes [off, off+len) of fd read-write and shared; off must be page-aligned. */
int nlsr_io_map_write(int fd, uint64_t off, size_t len, nlsr_io_map *m, unsigned char **data,
                      const char *path, nlsr_err *e);
/* Drops the window: its pages leave the process's resident set (the data stays in the page
 * cache, and for a shared writable window the dirty pages are written back by the kernel).
 * NULL addr is a no-op. Returns 1 if the guard caught a SIGBUS in the window (the file shrank
 * under it: the bytes read from it are not the file's), else 0. */
int nlsr_io_unmap(nlsr_io_map *m);

#endif
