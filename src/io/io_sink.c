/* SPDX-License-Identifier: Apache-2.0 */
/* The sink (io_sink.h): a ring of chunk buffers written asynchronously in file order, or
 * windows of a shared mapping for the mmap backend. */
#define _GNU_SOURCE
#include "../common/log.h"
#include "io_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
#include "io.h"
#include "outpath.h"
#include "../common/testhook.h"

struct nlsr_sink {
    nlsr_ctx *ctx;
    nlsr_io_kind asked, kind;
    nlsr_io *io;
    size_t chunk;
    unsigned nbuf;
    uint64_t charged;
    unsigned char *mem;     /* nbuf * chunk, NLSR_IO_ALIGN-aligned; NULL for mmap */
    int own_mem;            /* mem allocated here (else the caller's arena) */
    int registered;
    nlsr_io_req *req;       /* one per buffer */
    int *busy;              /* buffer's write in flight */
    unsigned cur;           /* buffer being filled */
    size_t fill;            /* bytes in it */
    /* current file */
    char *final_path, *tmp_path;
    int fd;                 /* buffered descriptor: fallocate, ftruncate, fsync, fallback */
    int dfd;                /* O_DIRECT descriptor, or -1; kept open until the file is closed
                               because pool workers may still hold its number */
    int use_direct;         /* writes go to dfd */
    int degrade;            /* step down from io_uring to pread before the next write */
    uint64_t size;          /* announced size */
    uint64_t pos;           /* file offset of the current buffer (or window) */
    int padded;             /* the last write ran past the end: truncate back */
    nlsr_io_map win;        /* mmap: the current window */
    unsigned char *win_data;
    size_t win_len;
    uint64_t pending;       /* bytes of this file in ctx->write_pending (progress) */
};

static size_t round_align(size_t n)
{
    return (n + NLSR_IO_ALIGN - 1) & ~(size_t)(NLSR_IO_ALIGN - 1);
}

uint64_t nlsr_sink_mem(size_t chunk, unsigned nbuf)
{
    return (uint64_t)round_align(chunk ? chunk : 1) * (nbuf ? nbuf : 1);
}

nlsr_io_kind nlsr_sink_kind(const nlsr_sink *s)
{
    return s->kind;
}

int nlsr_sink_create(nlsr_ctx *ctx, nlsr_io_kind kind, size_t chunk, unsigned nbuf,
                     nlsr_sink **out)
{
    return nlsr_sink_create_in(ctx, kind, chunk, nbuf, NULL, out);
}

int nlsr_sink_create_in(nlsr_ctx *ctx, nlsr_io_kind kind, size_t chunk, unsigned nbuf,
                        void *mem, nlsr_sink **out)
{
    nlsr_err *e = &ctx->err;
    int rc;
    *out = NULL;
    if (nbuf < 2) nbuf = 2;
    chunk = round_align(chunk ? chunk : 1);
    nlsr_sink *s = calloc(1, sizeof *s);
    NLSR_FAIL_IF(!s, e, -ENOMEM, "writer: out of memory");
    s->ctx = ctx;
    s->asked = kind;
    s->chunk = chunk;
    s->nbuf = nbuf;
    s->fd = s->dfd = -1;
    s->req = calloc(nbuf, sizeof *s->req);
    s->busy = calloc(nbuf, sizeof *s->busy);
    if (!s->req || !s->busy) {
        rc = nlsr_fail(e, -ENOMEM, "writer: out of memory");
        goto fail;
    }
    /* NLSR_IO_WRITE=auto|uring|pread|mmap picks the writer's backend apart from the reader's,
     * for measurements. */
    const char *w = getenv("NLSR_IO_WRITE");
    if (w && *w) {
        if (strcmp(w, "auto") == 0) kind = NLSR_IO_AUTO;
        else if (strcmp(w, "uring") == 0) kind = NLSR_IO_URING;
        else if (strcmp(w, "pread") == 0) kind = NLSR_IO_PREAD;
        else if (strcmp(w, "mmap") == 0) kind = NLSR_IO_MMAP;
    }
    s->asked = kind;
    rc = nlsr_io_open(kind, nbuf, "writer", ctx, &s->io, &s->kind, e);
    if (rc < 0) goto fail;
    const char *what = s->kind == NLSR_IO_MMAP ? "writer mapping windows" : "writer buffers";
    uint64_t bytes = nlsr_sink_mem(chunk, nbuf);
    if (mem) {
        NLSR_FAIL_IF(((uintptr_t)mem & (NLSR_IO_ALIGN - 1)) != 0, e, NLSR_E_USAGE,
                     "writer: buffers at %p are not aligned to %u bytes", mem, NLSR_IO_ALIGN);
    } else {
        rc = nlsr_budget_charge(&ctx->budget, bytes, what, e);
        if (rc < 0) goto fail;
        s->charged = bytes;
    }
    if (s->kind != NLSR_IO_MMAP) {
        void *m = mem;
        int prc = m ? 0 : posix_memalign(&m, NLSR_IO_ALIGN, bytes);
        if (prc) {
            rc = nlsr_fail(e, -prc, "writer: out of memory for %llu bytes of buffers",
                           (unsigned long long)bytes);
            goto fail;
        }
        s->mem = m;
        s->own_mem = mem == NULL;
        /* One registered buffer spans the whole ring; where the memlock limit refuses it the
         * writes simply go unregistered. */
        struct iovec iov = {s->mem, (size_t)bytes};
        s->registered = nlsr_io_register(s->io, &iov, 1) == 0;
    }
    *out = s;
    return 0;
fail:
    nlsr_sink_free(s);
    return rc;
}

/* Drops the current file's descriptors and mapping, and its temporary if still there. */
static void close_file(nlsr_sink *s, int remove_tmp)
{
    s->ctx->write_pending -= s->pending;
    s->pending = 0;
    nlsr_io_unmap(&s->win);
    if (s->dfd >= 0) close(s->dfd);
    if (s->fd >= 0) close(s->fd);
    s->fd = s->dfd = -1;
    s->use_direct = 0;
    if (remove_tmp && s->tmp_path) unlink(s->tmp_path);
    free(s->tmp_path);
    free(s->final_path);
    s->tmp_path = s->final_path = NULL;
}

/* Waits for every write in flight; the first failure is returned (after all have landed,
 * since buffers cannot be reused while the kernel may still read them). */
static int drain(nlsr_sink *s);

void nlsr_sink_cancel(nlsr_sink *s)
{
    if (!s) return;
    if (s->io) {
        while (nlsr_io_inflight(s->io) > 0) {
            nlsr_io_req *r;
            if (nlsr_io_wait(s->io, &r) < 0) break;
        }
    }
    for (unsigned i = 0; i < s->nbuf; i++) s->busy[i] = 0;
    s->cur = 0;
    s->fill = 0;
    close_file(s, 1);
}

void nlsr_sink_free(nlsr_sink *s)
{
    if (!s) return;
    nlsr_sink_cancel(s);
    nlsr_io_close(s->io);
    if (s->own_mem) free(s->mem);
    if (s->charged) nlsr_budget_release(&s->ctx->budget, s->charged);
    free(s->req);
    free(s->busy);
    free(s);
}

int nlsr_sink_begin(nlsr_sink *s, const char *final_path, uint64_t size)
{
    nlsr_err *e = &s->ctx->err;
    int rc;
    nlsr_sink_cancel(s);
    s->final_path = strdup(final_path);
    NLSR_FAIL_IF(!s->final_path, e, -ENOMEM, "%s: out of memory", final_path);
    s->size = size;
    s->pos = 0;
    s->fill = 0;
    s->cur = 0;
    s->padded = 0;
    rc = nlsr_tmp_file(e, final_path, &s->tmp_path, &s->fd);
    if (rc < 0) goto fail;
    /* Preallocation keeps the file in few extents and reports a full disk now rather than
     * halfway; file systems without fallocate just skip it. */
    if (size > 0 && fallocate(s->fd, 0, 0, (off_t)size) != 0 && errno != EOPNOTSUPP &&
        errno != ENOSYS) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot reserve %llu bytes: %s", s->tmp_path,
                  (unsigned long long)size, strerror(-rc));
        goto fail;
    }
    if (s->kind == NLSR_IO_MMAP) {
        /* The mapping needs the file at its final size before any window is touched. */
        if (ftruncate(s->fd, (off_t)size) != 0) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: cannot size to %llu bytes: %s", s->tmp_path,
                      (unsigned long long)size, strerror(-rc));
            goto fail;
        }
    } else if (nlsr_io_direct_enabled()) {
        s->dfd = nlsr_io_open_direct(s->tmp_path, 1);
        if (s->dfd < 0) s->dfd = -1;
        s->use_direct = s->dfd >= 0;
    }
    return 0;
fail:
    close_file(s, 1);
    return rc;
}

/* After EINVAL on a write. O_DIRECT is the usual cause: that request (and every later one) goes
 * to the buffered descriptor. A buffered io_uring write refused with EINVAL is done with pwrite
 * here and the sink steps down to the pread backend before its next write (stepping down needs
 * every write landed first, which cannot happen in the middle of reaping). Returns 1 when the
 * request was resubmitted, 0 when it was finished synchronously, or an error. */
static int redo_einval(nlsr_sink *s, nlsr_io_req *r)
{
    if (r->fd != s->fd) {
        if (s->use_direct) {
            s->use_direct = 0;
            nlsr_io_say_fallback("writer", s->kind, s->kind,
                                 "O_DIRECT write failed with EINVAL; writing buffered",
                                 s->ctx);
        }
        r->fd = s->fd;
        NLSR_FORWARD(nlsr_io_submit(s->io, r));
        return 1;
    }
    if (s->kind == NLSR_IO_URING && s->asked == NLSR_IO_AUTO) {
        if (!s->degrade)
            nlsr_io_say_fallback("writer", NLSR_IO_URING, NLSR_IO_PREAD,
                                 "write failed with EINVAL", s->ctx);
        s->degrade = 1;
        r->res = 0;
        r->done = 0;
        nlsr_io_transfer_sync(r);
        return 0;
    }
    return 0; /* forced backend: the error stands */
}

/* Takes one completion and settles it: 0 done, or a negative error. */
static int reap_one(nlsr_sink *s)
{
    nlsr_err *e = &s->ctx->err;
    nlsr_io_req *r;
    int rc = nlsr_io_wait(s->io, &r);
    NLSR_FAIL_IF(rc < 0, e, rc, "%s: waiting for writes failed: %s", s->tmp_path, strerror(-rc));
    if (r->res == -EINVAL) {
        rc = redo_einval(s, r);
        if (rc != 0) return rc < 0 ? rc : 0;
    }
    unsigned i = (unsigned)(r - s->req);
    s->busy[i] = 0;
    NLSR_FAIL_IF(r->res < 0, e, r->res, "%s: write of %zu bytes at offset %llu failed: %s",
                 s->tmp_path, r->len, (unsigned long long)r->off, strerror(-r->res));
    NLSR_FAIL_IF(r->done != r->len, e, -EIO, "%s: short write at offset %llu", s->tmp_path,
                 (unsigned long long)r->off);
    return 0;
}

static int drain(nlsr_sink *s)
{
    int first = 0;
    while (s->io && nlsr_io_inflight(s->io) > 0) {
        int rc = reap_one(s);
        if (rc < 0 && first == 0) first = rc;
    }
    return first;
}

/* Carries out a pending step-down from io_uring to pread once every write has landed. */
static int maybe_degrade(nlsr_sink *s)
{
    if (!s->degrade || s->kind != NLSR_IO_URING) return 0;
    NLSR_FORWARD(drain(s));
    nlsr_io_close(s->io);
    s->io = NULL;
    s->registered = 0;
    for (unsigned i = 0; i < s->nbuf; i++) s->busy[i] = 0;
    return nlsr_io_open(NLSR_IO_PREAD, s->nbuf, "writer", s->ctx, &s->io, &s->kind,
                        &s->ctx->err);
}

static int submit_cur(nlsr_sink *s, size_t len)
{
    NLSR_FORWARD(maybe_degrade(s));
    NLSR_FAIL_IF(!s->io, &s->ctx->err, -EIO, "%s: the writer has no backend left", s->tmp_path);
    nlsr_io_req *r = &s->req[s->cur];
    *r = (nlsr_io_req){0};
    r->fd = s->use_direct ? s->dfd : s->fd;
    r->op = NLSR_IO_OP_WRITE;
    r->buf = s->mem + (size_t)s->cur * s->chunk;
    r->len = len;
    r->need = len;
    r->off = s->pos;
    r->buf_index = s->registered ? 0 : -1;
    s->busy[s->cur] = 1;
    int rc = nlsr_io_submit(s->io, r);
    if (rc < 0) {
        s->busy[s->cur] = 0;
        return nlsr_fail(&s->ctx->err, rc, "%s: cannot queue a write: %s", s->tmp_path,
                         strerror(-rc));
    }
    return 0;
}

static int map_window(nlsr_sink *s)
{
    nlsr_io_unmap(&s->win);
    uint64_t left = s->size - s->pos;
    size_t w = (size_t)s->chunk * s->nbuf;
    s->win_len = left < w ? (size_t)left : w;
    NLSR_FAIL_IF(s->win_len == 0, &s->ctx->err, NLSR_E_USAGE,
                 "%s: more data than the announced %llu bytes", s->final_path,
                 (unsigned long long)s->size);
    return nlsr_io_map_write(s->fd, s->pos, s->win_len, &s->win, &s->win_data, s->tmp_path,
                             &s->ctx->err);
}

int nlsr_sink_reserve(nlsr_sink *s, unsigned char **p, size_t *avail)
{
    if (s->kind == NLSR_IO_MMAP) {
        if (!s->win.addr || s->fill == s->win_len) {
            if (s->win.addr) {
                /* Start writeback of the finished window now, so dirty pages do not pile up
                 * until the final fsync. */
                (void)sync_file_range(s->fd, (off_t)s->pos, (off_t)s->win_len,
                                      SYNC_FILE_RANGE_WRITE);
                s->pos += s->win_len;
                s->fill = 0;
            }
            NLSR_FORWARD(map_window(s));
        }
        *p = s->win_data + s->fill;
        *avail = s->win_len - s->fill;
        return 0;
    }
    while (s->busy[s->cur]) NLSR_FORWARD(reap_one(s));
    *p = s->mem + (size_t)s->cur * s->chunk + s->fill;
    *avail = s->chunk - s->fill;
    return 0;
}

int nlsr_sink_commit(nlsr_sink *s, size_t n)
{
    s->fill += n;
    /* Progress within a file: the bytes count as written once the writer has them. */
    s->pending += n;
    s->ctx->write_pending += n;
    nlsr_phase_tick(s->ctx);
    if (s->kind == NLSR_IO_MMAP) return 0;
    if (s->fill < s->chunk) return 0;
    NLSR_FAIL_IF(s->pos + s->chunk > s->size, &s->ctx->err, NLSR_E_USAGE,
                 "%s: more data than the announced %llu bytes", s->final_path,
                 (unsigned long long)s->size);
    NLSR_FORWARD(submit_cur(s, s->chunk));
    s->pos += s->chunk;
    s->cur = (s->cur + 1) % s->nbuf;
    s->fill = 0;
    return 0;
}

int nlsr_sink_write(nlsr_sink *s, const void *src, size_t len)
{
    const unsigned char *q = src;
    while (len > 0) {
        unsigned char *p;
        size_t avail;
        NLSR_FORWARD(nlsr_sink_reserve(s, &p, &avail));
        size_t n = len < avail ? len : avail;
        memcpy(p, q, n);
        NLSR_FORWARD(nlsr_sink_commit(s, n));
        q += n;
        len -= n;
    }
    return 0;
}

int nlsr_sink_end(nlsr_sink *s)
{
    nlsr_err *e = &s->ctx->err;
    int rc = 0;
    uint64_t total = s->pos + s->fill;
    if (total != s->size) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "%s: %llu bytes written, %llu announced", s->final_path,
                       (unsigned long long)total, (unsigned long long)s->size);
        goto fail;
    }
    if (s->kind == NLSR_IO_MMAP) {
        nlsr_io_unmap(&s->win);
    } else {
        if (s->fill > 0) {
            size_t len = s->fill;
            if (s->use_direct) {
                /* O_DIRECT writes whole blocks: pad the last one and cut the file back below. */
                len = round_align(s->fill);
                memset(s->mem + (size_t)s->cur * s->chunk + s->fill, 0, len - s->fill);
                s->padded = len != s->fill;
            }
            rc = submit_cur(s, len);
            if (rc < 0) goto fail;
        }
        rc = drain(s);
        if (rc < 0) goto fail;
        if (s->padded && ftruncate(s->fd, (off_t)total) != 0) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: cannot truncate to %llu bytes: %s", s->tmp_path,
                      (unsigned long long)total, strerror(-rc));
            goto fail;
        }
    }
    if (fsync(s->fd) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: fsync failed: %s", s->tmp_path, strerror(-rc));
        goto fail;
    }
    /* Renamed into place (and the folder fsynced); only a regular file is ever replaced. */
    rc = nlsr_tmp_file_commit(e, s->tmp_path, s->final_path, 1);
    if (rc < 0) goto fail;
    nlsr_test_point("shard");
    s->ctx->write_pending -= s->pending;
    s->pending = 0;
    s->ctx->bytes_written += total;
    s->fill = 0;
    s->cur = 0;
    close_file(s, 0);
    return 0;
fail:
    nlsr_sink_cancel(s);
    return rc;
}
