/* Stream implementation: synchronous pread, one unit at a time. The engine issue replaces this
 * with the io_uring / pread-pool / mmap backends and read-ahead behind the same interface. */
#include "stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx.h"
#include "../io/file.h"

struct nlsr_stream {
    nlsr_ctx *ctx;
    nlsr_unit *units;
    size_t nunits, next;
    unsigned char *buf;
    size_t buf_bytes;
    const unsigned char *ptr[NLSR_STREAM_MAX_SPANS];
};

uint64_t nlsr_span_bytes(const nlsr_span *sp)
{
    return sp->count * nlsr_dtype_size(sp->ck->t[sp->tensor].t->dtype);
}

int nlsr_stream_open(nlsr_ctx *ctx, const nlsr_unit *units, size_t nunits, unsigned depth,
                     nlsr_stream **out)
{
    nlsr_err *e = &ctx->err;
    (void)depth;
    uint64_t maxu = 0;
    for (size_t i = 0; i < nunits; i++) {
        uint64_t b = 0;
        for (int k = 0; k < units[i].nspans; k++) {
            const nlsr_span *sp = &units[i].span[k];
            const st_tensor *t = sp->ck->t[sp->tensor].t;
            NLSR_FAIL_IF(sp->first > t->numel || sp->count > t->numel - sp->first, e,
                         NLSR_E_USAGE, "stream: span out of range for tensor '%s'", t->name);
            b += (nlsr_span_bytes(sp) + 63) & ~63ull;
        }
        if (b > maxu) maxu = b;
    }
    nlsr_stream *s = calloc(1, sizeof *s);
    NLSR_FAIL_IF(!s, e, -ENOMEM, "out of memory");
    s->ctx = ctx;
    s->units = malloc((nunits ? nunits : 1) * sizeof *units);
    if (!s->units) {
        free(s);
        return nlsr_fail(e, -ENOMEM, "out of memory");
    }
    memcpy(s->units, units, nunits * sizeof *units);
    s->nunits = nunits;
    s->buf_bytes = (size_t)maxu;
    int rc = nlsr_budget_alloc(&ctx->budget, s->buf_bytes, "stream read buffer",
                               (void **)&s->buf, e);
    if (rc < 0) {
        free(s->units);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int nlsr_stream_next(nlsr_stream *s, const nlsr_unit **unit, const unsigned char *const **data)
{
    if (s->next >= s->nunits) return 0;
    const nlsr_unit *u = &s->units[s->next++];
    size_t off = 0;
    for (int k = 0; k < u->nspans; k++) {
        const nlsr_span *sp = &u->span[k];
        const ck_entry *en = &sp->ck->t[sp->tensor];
        const st_file *f = sp->ck->shards[en->shard];
        size_t es = nlsr_dtype_size(en->t->dtype);
        size_t n = (size_t)nlsr_span_bytes(sp);
        NLSR_FORWARD(nlsr_pread_all(f->fd, s->buf + off, n,
                                    f->data_start + en->t->begin + sp->first * es, f->path,
                                    &s->ctx->err));
        s->ctx->bytes_read += n;
        s->ptr[k] = s->buf + off;
        off += (n + 63) & ~(size_t)63;
    }
    *unit = u;
    *data = s->ptr;
    return 1;
}

void nlsr_stream_close(nlsr_stream *s)
{
    if (!s) return;
    nlsr_budget_free(&s->ctx->budget, s->buf, s->buf_bytes);
    free(s->units);
    free(s);
}
