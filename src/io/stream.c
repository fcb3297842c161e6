/* SPDX-License-Identifier: Apache-2.0 */
/* The read stream (stream.h) over the I/O backends.
 *
 * `depth` slots form a ring; unit u lives in slot u % depth. While the caller holds unit u,
 * the reads of units u+1 .. u+depth-1 are in flight, so I/O overlaps compute (depth 2 is
 * double buffering). Each unit's spans are grouped (adjacent spans of one file become one
 * read), each group is read as one window (widened to NLSR_IO_ALIGN for O_DIRECT, the span
 * sliced out of it), and each window is cut into chunks so that several requests are in the
 * kernel at once. Requests are submitted in unit order, at most `qd` at a time.
 *
 * Backends: io_uring (O_DIRECT windows, registered slot buffers), the pread pool (buffered,
 * the kernel's read-ahead helps it), or mmap (a window mapped per group with MADV_WILLNEED
 * when the unit enters the ring, unmapped when the caller moves on). With NLSR_IO_AUTO a
 * backend that cannot be set up, or an io_uring read failing with EINVAL, makes the stream
 * step down to the next one and say so once. */
#define _GNU_SOURCE
#include "../common/log.h"
#include "stream.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "file.h"
#include "io.h"

/* Request size and queue depth: large enough that per-request costs vanish and the device
 * sees several requests at once, small enough that the head of the next unit arrives early.
 * NLSR_IO_CHUNK / NLSR_IO_QD override them for measurements. */
#define DEFAULT_CHUNK (1u << 20)
#define DEFAULT_QD 32u

typedef struct stream_file {
    const st_file *f;
    int dfd;        /* O_DIRECT descriptor, -1 if none (yet, or refused) */
    int direct;     /* nonzero: try O_DIRECT; 0 buffered */
} stream_file;

typedef struct stream_slot {
    size_t unit;
    nlsr_io_req *req;     /* cap entries */
    uint32_t *rfile;      /* file index of each request */
    size_t nreq, cap;
    size_t nsub;          /* requests submitted so far */
    unsigned pending;     /* requests not completed */
    const unsigned char *ptr[NLSR_STREAM_MAX_SPANS];
    nlsr_io_map map[NLSR_STREAM_MAX_SPANS];
} stream_slot;

struct nlsr_stream {
    nlsr_ctx *ctx;
    nlsr_unit *units;
    size_t nunits;
    unsigned depth;
    size_t next_start, next_deliver, sub_unit;
    int held;
    stream_slot *slot;
    stream_file *files;
    size_t nfiles, files_cap;
    nlsr_io_kind asked, kind;
    nlsr_io *io;
    int registered;
    int degrade;        /* step down from io_uring to pread before the next submission */
    int err;            /* first error; the stream is dead after it */
    unsigned qd;
    size_t chunk;
    unsigned char *mem;
    int own_mem;        /* mem allocated here (else the caller's arena) */
    uint64_t slot_bytes, charged;
};

static const unsigned char empty_span[1];

static uint64_t round_up(uint64_t v)
{
    return (v + NLSR_IO_ALIGN - 1) & ~(uint64_t)(NLSR_IO_ALIGN - 1);
}

static uint64_t round_down(uint64_t v)
{
    return v & ~(uint64_t)(NLSR_IO_ALIGN - 1);
}

uint64_t nlsr_span_bytes(const nlsr_span *sp)
{
    return sp->count * nlsr_dtype_size(sp->ck->t[sp->tensor].t->dtype);
}

static const st_file *span_file(const nlsr_span *sp)
{
    return sp->ck->shards[sp->ck->t[sp->tensor].shard];
}

static uint64_t span_off(const nlsr_span *sp)
{
    const ck_entry *en = &sp->ck->t[sp->tensor];
    return sp->ck->shards[en->shard]->data_start + en->t->begin +
           sp->first * nlsr_dtype_size(en->t->dtype);
}

/* A unit's read groups: runs of spans that are adjacent in the same file. */
typedef struct group {
    const st_file *f;
    uint64_t off, len;
    int first_span, nspans;
} group;

static int unit_groups(const nlsr_unit *u, group *g)
{
    int n = 0;
    for (int k = 0; k < u->nspans; k++) {
        const nlsr_span *sp = &u->span[k];
        uint64_t b = nlsr_span_bytes(sp);
        if (b == 0) continue;
        const st_file *f = span_file(sp);
        uint64_t off = span_off(sp);
        if (n > 0 && g[n - 1].f == f && g[n - 1].off + g[n - 1].len == off &&
            g[n - 1].first_span + g[n - 1].nspans == k) {
            g[n - 1].len += b;
            g[n - 1].nspans++;
            continue;
        }
        g[n++] = (group){f, off, b, k, 1};
    }
    return n;
}

uint64_t nlsr_stream_unit_bytes(const nlsr_unit *u)
{
    group g[NLSR_STREAM_MAX_SPANS];
    int n = unit_groups(u, g);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += round_up(g[i].off + g[i].len) - round_down(g[i].off);
    return total;
}

uint64_t nlsr_stream_mem(const nlsr_unit *units, size_t nunits, unsigned depth)
{
    uint64_t m = 0;
    for (size_t i = 0; i < nunits; i++) {
        uint64_t b = nlsr_stream_unit_bytes(&units[i]);
        if (b > m) m = b;
    }
    if (depth < 1) depth = 1;
    if ((uint64_t)depth > nunits && nunits > 0) depth = (unsigned)nunits;
    return m * depth;
}

nlsr_io_kind nlsr_stream_backend(const nlsr_stream *s)
{
    return s->kind;
}

static size_t env_size(const char *name, size_t def, size_t lo, size_t hi)
{
    const char *v = getenv(name);
    if (!v || !*v) return def;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end == 'k' || *end == 'K') x <<= 10;
    else if (*end == 'm' || *end == 'M') x <<= 20;
    if (x < lo) x = lo;
    if (x > hi) x = hi;
    return (size_t)x;
}

static int file_index(nlsr_stream *s, const st_file *f)
{
    for (size_t i = 0; i < s->nfiles; i++)
        if (s->files[i].f == f) return (int)i;
    return -1;
}

/* The descriptor requests for file i go to now: O_DIRECT with io_uring where the file system
 * takes it, the checkpoint's own buffered descriptor otherwise. */
static int file_fd(nlsr_stream *s, uint32_t i)
{
    stream_file *sf = &s->files[i];
    if (s->kind != NLSR_IO_URING || !sf->direct) return sf->f->fd;
    if (sf->dfd < 0) {
        int fd = nlsr_io_open_direct(sf->f->path, 0);
        if (fd < 0) {
            sf->direct = 0;
            return sf->f->fd;
        }
        sf->dfd = fd;
    }
    return sf->dfd;
}

static int set_err(nlsr_stream *s, int rc)
{
    if (s->err == 0) s->err = rc;
    return rc;
}

/* Lays out unit s->next_start in its slot: windows in the slot buffer and their requests, or
 * mappings for mmap. */
static int start_unit(nlsr_stream *s)
{
    size_t ui = s->next_start;
    const nlsr_unit *u = &s->units[ui];
    stream_slot *sl = &s->slot[ui % s->depth];
    nlsr_err *e = &s->ctx->err;
    sl->unit = ui;
    sl->nreq = sl->nsub = 0;
    sl->pending = 0;
    for (int k = 0; k < NLSR_STREAM_MAX_SPANS; k++) sl->ptr[k] = empty_span;
    group g[NLSR_STREAM_MAX_SPANS];
    int ng = unit_groups(u, g);
    unsigned char *buf = s->mem ? s->mem + (size_t)(ui % s->depth) * s->slot_bytes : NULL;
    uint64_t pos = 0;
    for (int i = 0; i < ng; i++) {
        int fi = file_index(s, g[i].f);
        const unsigned char *base;
        if (s->kind == NLSR_IO_MMAP) {
            NLSR_FORWARD(set_err(s, nlsr_io_map_read(g[i].f->fd, g[i].off, (size_t)g[i].len, 1,
                                                     &sl->map[i], &base, g[i].f->path, e)));
        } else {
            /* Windows are aligned for O_DIRECT whether or not this file gets it, so that a
             * step-down never changes the layout. */
            uint64_t woff = round_down(g[i].off), wend = round_up(g[i].off + g[i].len);
            uint64_t need_end = g[i].off + g[i].len;
            base = buf + pos + (g[i].off - woff);
            for (uint64_t o = woff; o < wend; o += s->chunk) {
                uint64_t len = wend - o < s->chunk ? wend - o : s->chunk;
                if (o >= need_end) break;
                nlsr_io_req *r = &sl->req[sl->nreq];
                *r = (nlsr_io_req){0};
                r->op = NLSR_IO_OP_READ;
                r->buf = buf + pos + (o - woff);
                r->len = (size_t)len;
                r->need = (size_t)(need_end - o < len ? need_end - o : len);
                r->off = o;
                r->buf_index = s->registered ? (int)(ui % s->depth) : -1;
                r->user = sl;
                sl->rfile[sl->nreq] = (uint32_t)fi;
                sl->nreq++;
            }
            pos += wend - woff;
        }
        uint64_t at = 0;
        for (int k = g[i].first_span; k < g[i].first_span + g[i].nspans; k++) {
            sl->ptr[k] = base + at;
            at += nlsr_span_bytes(&u->span[k]);
        }
    }
    sl->pending = (unsigned)sl->nreq;
    s->next_start++;
    return 0;
}

static int submit_more(nlsr_stream *s);

/* Settles one completion. EINVAL from io_uring: with AUTO the request is done with pread right
 * here and the stream steps down to the pread backend before its next submission; forced to
 * io_uring, an O_DIRECT request is retried buffered. */
static int complete(nlsr_stream *s, nlsr_io_req *r)
{
    stream_slot *sl = r->user;
    size_t ri = (size_t)(r - sl->req);
    stream_file *sf = &s->files[sl->rfile[ri]];
    nlsr_err *e = &s->ctx->err;
    if (r->res == -EINVAL && s->kind == NLSR_IO_URING) {
        if (s->asked == NLSR_IO_AUTO) {
            if (!s->degrade)
                nlsr_io_say_fallback("read stream", NLSR_IO_URING, NLSR_IO_PREAD,
                                     "read failed with EINVAL", s->ctx);
            s->degrade = 1;
            r->fd = sf->f->fd;
            r->res = 0;
            r->done = 0;
            nlsr_io_transfer_sync(r);
        } else if (r->fd != sf->f->fd) {
            nlsr_io_say_fallback("read stream", NLSR_IO_URING, NLSR_IO_URING,
                                 "O_DIRECT read failed with EINVAL; reading buffered",
                                 s->ctx);
            sf->direct = 0;
            r->fd = sf->f->fd;
            return set_err(s, nlsr_io_submit(s->io, r));
        }
    }
    sl->pending--;
    if (r->res < 0)
        return set_err(s, nlsr_fail(e, r->res, "%s: read of %zu bytes at offset %llu failed: %s",
                                    sf->f->path, r->len, (unsigned long long)r->off,
                                    strerror(-r->res)));
    if (r->done < r->need)
        return set_err(s, nlsr_fail(e, NLSR_E_FORMAT,
                                    "%s: unexpected end of file at offset %llu (file shrank?)",
                                    sf->f->path, (unsigned long long)(r->off + r->done)));
    return 0;
}

static int wait_one(nlsr_stream *s)
{
    nlsr_io_req *r;
    int rc = nlsr_io_wait(s->io, &r);
    if (rc < 0)
        return set_err(s, nlsr_fail(&s->ctx->err, rc, "read stream: waiting for %s failed: %s",
                                    nlsr_io_kind_name(s->kind), strerror(-rc)));
    return complete(s, r);
}

/* Carries out a pending step-down once nothing is in flight any more. */
static int degrade_now(nlsr_stream *s)
{
    while (nlsr_io_inflight(s->io) > 0) NLSR_FORWARD(wait_one(s));
    nlsr_io_close(s->io);
    s->io = NULL;
    s->registered = 0;
    s->degrade = 0;
    NLSR_FORWARD(set_err(s, nlsr_io_open(NLSR_IO_PREAD, s->qd, "read stream", s->ctx,
                                         &s->io, &s->kind, &s->ctx->err)));
    s->ctx->io_used = s->kind;
    /* Requests already laid out keep their windows; only registered indexes go. */
    for (unsigned d = 0; d < s->depth; d++)
        for (size_t i = 0; i < s->slot[d].nreq; i++) s->slot[d].req[i].buf_index = -1;
    return 0;
}

static int submit_more(nlsr_stream *s)
{
    if (s->kind == NLSR_IO_MMAP) return 0;
    if (s->degrade) NLSR_FORWARD(degrade_now(s));
    if (s->sub_unit < s->next_deliver) s->sub_unit = s->next_deliver;
    for (;;) {
        /* Skip units whose reads are all queued, so the cursor never lags behind a slot that
         * has been handed to a later unit. */
        while (s->sub_unit < s->next_start &&
               s->slot[s->sub_unit % s->depth].nsub == s->slot[s->sub_unit % s->depth].nreq)
            s->sub_unit++;
        if (s->sub_unit >= s->next_start || nlsr_io_inflight(s->io) >= s->qd) break;
        stream_slot *sl = &s->slot[s->sub_unit % s->depth];
        nlsr_io_req *r = &sl->req[sl->nsub];
        r->fd = file_fd(s, sl->rfile[sl->nsub]);
        r->async = r->fd == s->files[sl->rfile[sl->nsub]].f->fd;
        int rc = nlsr_io_submit(s->io, r);
        if (rc < 0)
            return set_err(s, nlsr_fail(&s->ctx->err, rc, "read stream: cannot queue a read: %s",
                                        strerror(-rc)));
        sl->nsub++;
    }
    return 0;
}

/* Unmaps the slot's windows; NLSR_E_FORMAT (recorded) when one of them lost its file's end
 * while the caller read it (the SIGBUS guard, io.h). */
static int release_slot(nlsr_stream *s, stream_slot *sl)
{
    int rc = 0;
    for (int k = 0; k < NLSR_STREAM_MAX_SPANS; k++) {
        const char *path = sl->map[k].path;
        if (nlsr_io_unmap(&sl->map[k]) && rc == 0)
            rc = nlsr_fail(&s->ctx->err, NLSR_E_FORMAT,
                           "%s: the file shrank while it was read (truncated by another "
                           "process?)",
                           path ? path : "input");
    }
    return rc;
}

int nlsr_stream_open(nlsr_ctx *ctx, const nlsr_unit *units, size_t nunits, unsigned depth,
                     nlsr_stream **out)
{
    return nlsr_stream_open_in(ctx, units, nunits, depth, NULL, 0, out);
}

int nlsr_stream_open_in(nlsr_ctx *ctx, const nlsr_unit *units, size_t nunits, unsigned depth,
                        void *mem, size_t mem_len, nlsr_stream **out)
{
    nlsr_err *e = &ctx->err;
    int rc;
    *out = NULL;
    size_t chunk = env_size("NLSR_IO_CHUNK", DEFAULT_CHUNK, NLSR_IO_ALIGN, 1u << 30);
    chunk = (size_t)round_up(chunk);
    uint64_t maxu = 0;
    size_t maxreq = 0;
    for (size_t i = 0; i < nunits; i++) {
        NLSR_FAIL_IF(units[i].nspans < 0 || units[i].nspans > NLSR_STREAM_MAX_SPANS, e,
                     NLSR_E_USAGE, "read stream: unit %zu has %d spans (at most %d)", i,
                     units[i].nspans, NLSR_STREAM_MAX_SPANS);
        for (int k = 0; k < units[i].nspans; k++) {
            const nlsr_span *sp = &units[i].span[k];
            NLSR_FAIL_IF(!sp->ck || sp->tensor >= sp->ck->n, e, NLSR_E_USAGE,
                         "read stream: unit %zu names no tensor", i);
            const st_tensor *t = sp->ck->t[sp->tensor].t;
            NLSR_FAIL_IF(sp->first > t->numel || sp->count > t->numel - sp->first, e,
                         NLSR_E_USAGE,
                         "read stream: elements [%llu, +%llu) out of range for tensor '%s' "
                         "(%llu elements)",
                         (unsigned long long)sp->first, (unsigned long long)sp->count, t->name,
                         (unsigned long long)t->numel);
        }
        uint64_t b = nlsr_stream_unit_bytes(&units[i]);
        if (b > maxu) maxu = b;
        group g[NLSR_STREAM_MAX_SPANS];
        int ng = unit_groups(&units[i], g);
        size_t nr = 0;
        for (int k = 0; k < ng; k++)
            nr += (size_t)((round_up(g[k].off + g[k].len) - round_down(g[k].off) + chunk - 1) /
                           chunk);
        if (nr > maxreq) maxreq = nr;
    }
    if (depth < 1) depth = 1;
    if (nunits > 0 && depth > nunits) depth = (unsigned)nunits;
    if (nunits == 0) depth = 1;

    nlsr_stream *s = calloc(1, sizeof *s);
    NLSR_FAIL_IF(!s, e, -ENOMEM, "read stream: out of memory");
    s->ctx = ctx;
    s->depth = depth;
    s->nunits = nunits;
    s->chunk = chunk;
    s->qd = (unsigned)env_size("NLSR_IO_QD", DEFAULT_QD, 1, 4096);
    s->asked = ctx->io_kind;
    s->slot_bytes = maxu;
    s->units = malloc((nunits ? nunits : 1) * sizeof *units);
    s->slot = calloc(depth, sizeof *s->slot);
    if (!s->units || !s->slot) {
        rc = nlsr_fail(e, -ENOMEM, "read stream: out of memory");
        goto fail;
    }
    if (nunits) memcpy(s->units, units, nunits * sizeof *units);
    int direct = nlsr_io_direct_enabled();
    for (size_t i = 0; i < nunits; i++)
        for (int k = 0; k < units[i].nspans; k++) {
            const st_file *f = span_file(&units[i].span[k]);
            if (file_index(s, f) >= 0) continue;
            if (s->nfiles == s->files_cap) {
                size_t cap = s->files_cap ? 2 * s->files_cap : 16;
                stream_file *nf = realloc(s->files, cap * sizeof *nf);
                if (!nf) {
                    rc = nlsr_fail(e, -ENOMEM, "read stream: out of memory");
                    goto fail;
                }
                s->files = nf;
                s->files_cap = cap;
            }
            /* Warm files are read buffered: O_DIRECT would fetch from the disk what the page
             * cache already holds. */
            int d = direct;
            if (d == 1 &&
                nlsr_io_cached_fraction(f->fd, f->data_start, f->file_size - f->data_start) >= 0.5)
                d = 0;
            s->files[s->nfiles++] = (stream_file){f, -1, d};
        }
    for (unsigned d = 0; d < depth; d++) {
        s->slot[d].cap = maxreq;
        s->slot[d].req = calloc(maxreq ? maxreq : 1, sizeof *s->slot[d].req);
        s->slot[d].rfile = calloc(maxreq ? maxreq : 1, sizeof *s->slot[d].rfile);
        if (!s->slot[d].req || !s->slot[d].rfile) {
            rc = nlsr_fail(e, -ENOMEM, "read stream: out of memory");
            goto fail;
        }
    }
    rc = nlsr_io_open(s->asked, s->qd, "read stream", ctx, &s->io, &s->kind, e);
    if (rc < 0) goto fail;
    ctx->io_used = s->kind;
    uint64_t total = s->slot_bytes * depth;
    if (mem) {
        /* The caller's arena, charged there. */
        if (mem_len < total || ((uintptr_t)mem & (NLSR_IO_ALIGN - 1)) != 0) {
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "read stream: %zu bytes at %p given, %llu aligned to %u needed",
                           mem_len, mem, (unsigned long long)total, NLSR_IO_ALIGN);
            goto fail;
        }
    } else {
        rc = nlsr_budget_charge(&ctx->budget, total,
                                s->kind == NLSR_IO_MMAP ? "read stream windows"
                                                        : "read stream buffers",
                                e);
        if (rc < 0) goto fail;
        s->charged = total;
    }
    if (s->kind != NLSR_IO_MMAP && total > 0) {
        void *m = mem;
        int prc = m ? 0 : posix_memalign(&m, NLSR_IO_ALIGN, (size_t)total);
        if (prc) {
            rc = nlsr_fail(e, -prc, "read stream: out of memory for %llu bytes of buffers",
                           (unsigned long long)total);
            goto fail;
        }
        s->mem = m;
        s->own_mem = mem == NULL;
        /* Registered buffers spare the kernel pinning pages on every O_DIRECT read. Where the
         * memlock limit refuses (or a slot passes io_uring's 1 GiB per buffer) reads go
         * unregistered. */
        if (s->kind == NLSR_IO_URING && s->slot_bytes <= (1u << 30)) {
            struct iovec iov[64];
            if (depth <= 64) {
                for (unsigned d = 0; d < depth; d++)
                    iov[d] = (struct iovec){s->mem + (size_t)d * s->slot_bytes,
                                            (size_t)s->slot_bytes};
                s->registered = nlsr_io_register(s->io, iov, depth) == 0;
            }
        }
    }
    *out = s;
    return 0;
fail:
    nlsr_stream_close(s);
    return rc;
}

int nlsr_stream_next(nlsr_stream *s, const nlsr_unit **unit, const unsigned char *const **data)
{
    if (s->err) return s->err;
    /* Between units is every job's safe point: the job's error path removes what it wrote. */
    NLSR_FORWARD(set_err(s, nlsr_ctx_check_cancel(s->ctx)));
    if (s->held) {
        s->held = 0;
        NLSR_FORWARD(set_err(s, release_slot(s, &s->slot[(s->next_deliver - 1) % s->depth])));
    }
    if (s->next_deliver >= s->nunits) return 0;
    while (s->next_start < s->nunits && s->next_start < s->next_deliver + s->depth)
        NLSR_FORWARD(start_unit(s));
    NLSR_FORWARD(submit_more(s));
    stream_slot *sl = &s->slot[s->next_deliver % s->depth];
    while (sl->pending > 0) {
        NLSR_FORWARD(wait_one(s));
        NLSR_FORWARD(submit_more(s));
    }
    if (s->kind == NLSR_IO_MMAP)
        for (int k = 0; k < NLSR_STREAM_MAX_SPANS; k++)
            NLSR_FORWARD(set_err(s, nlsr_io_map_populate(&sl->map[k], &s->ctx->err)));
    const nlsr_unit *u = &s->units[s->next_deliver];
    for (int k = 0; k < u->nspans; k++) s->ctx->bytes_read += nlsr_span_bytes(&u->span[k]);
    nlsr_phase_tick(s->ctx); /* the job's phase, if it counts reads */
    if (s->ctx->read_tap) /* the report's fingerprints, from the bytes as delivered */
        for (int k = 0; k < u->nspans; k++) {
            const nlsr_span *sp = &u->span[k];
            const st_file *f = span_file(sp);
            uint64_t off = ck_tensor_offset(sp->ck, sp->tensor) +
                           sp->first * nlsr_dtype_size(sp->ck->t[sp->tensor].t->dtype);
            s->ctx->read_tap(s->ctx, f->fd, off, sl->ptr[k], (size_t)nlsr_span_bytes(sp));
        }
    s->next_deliver++;
    s->held = 1;
    *unit = u;
    *data = sl->ptr;
    return 1;
}

int nlsr_stream_poll(nlsr_stream *s)
{
    if (s->err) return s->err;
    if (s->kind == NLSR_IO_MMAP || !s->io) return 0;
    for (;;) {
        nlsr_io_req *r;
        int rc = nlsr_io_poll(s->io, &r);
        if (rc < 0)
            return set_err(s, nlsr_fail(&s->ctx->err, rc, "read stream: polling %s failed: %s",
                                        nlsr_io_kind_name(s->kind), strerror(-rc)));
        if (rc == 0) break;
        NLSR_FORWARD(complete(s, r));
    }
    return submit_more(s);
}

void nlsr_stream_close(nlsr_stream *s)
{
    if (!s) return;
    /* The kernel may still be writing into the buffers: the backend drains before they go. */
    nlsr_io_close(s->io);
    if (s->slot)
        for (unsigned d = 0; d < s->depth; d++) {
            (void)release_slot(s, &s->slot[d]);
            free(s->slot[d].req);
            free(s->slot[d].rfile);
        }
    for (size_t i = 0; i < s->nfiles; i++)
        if (s->files[i].dfd >= 0) close(s->files[i].dfd);
    if (s->own_mem) free(s->mem);
    if (s->charged) nlsr_budget_release(&s->ctx->budget, s->charged);
    free(s->files);
    free(s->slot);
    free(s->units);
    free(s);
}
