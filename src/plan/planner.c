/* SPDX-License-Identifier: Apache-2.0 */
/* The planner (planner.h): units, depth, buffers, bytes and ranges of a streaming job. */
#define _GNU_SOURCE
#include "planner.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../io/file.h"
#include "../io/io.h"
#include "../io/io_sink.h"
#include "../io/sidefiles.h"
#include "progress.h"
#include "targets.h"

/* A unit's bytes are capped so that reads of the next units start early and a budget holds
 * several of them; 256 MiB is far past the size where per-unit costs matter. */
#define DEFAULT_MAX_UNIT (256ull << 20)
#define DEFAULT_DEPTH 4u
#define MAX_DEPTH 8u
/* What the stream may add to a run of spans: its window widened to 4096 bytes at each end. */
#define SLACK (2ull * NLSR_IO_ALIGN)
#define SINK_NBUF 4u
#define SINK_MAX_CHUNK (8u << 20)
#define SINK_MIN_CHUNK (64u << 10)

typedef struct ptensor {
    size_t idx[NLSR_PLAN_MAX_CK]; /* index in each checkpoint read */
    size_t li;                    /* index in ck[layout] */
    int target;
    uint64_t rows, row_elems;
    uint64_t row_bytes;           /* one row from every checkpoint read, plus job scratch */
    int nspans;
} ptensor;

static void tensor_rows(const st_tensor *t, uint64_t *rows, uint64_t *row_elems)
{
    if (t->numel == 0) {
        *rows = 0;
        *row_elems = 0;
    } else if (t->ndim == 0) {
        *rows = 1;
        *row_elems = 1;
    } else {
        *rows = t->shape[0];
        *row_elems = t->numel / t->shape[0];
    }
}

static int cmp_begin(const void *a, const void *b, void *arg)
{
    const nlsr_ckpt *ck = arg;
    uint64_t x = ck->t[*(const size_t *)a].t->begin, y = ck->t[*(const size_t *)b].t->begin;
    return x < y ? -1 : x > y;
}

/* Tensors of one shard of ck, in file order. *out malloc'd. */
static int shard_tensors(const nlsr_ckpt *ck, uint32_t shard, size_t **out, size_t *n,
                         nlsr_err *e)
{
    size_t cnt = 0;
    for (size_t i = 0; i < ck->n; i++) cnt += ck->t[i].shard == shard;
    size_t *v = malloc((cnt ? cnt : 1) * sizeof *v);
    NLSR_FAIL_IF(!v, e, -ENOMEM, "planner: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < ck->n; i++)
        if (ck->t[i].shard == shard) v[k++] = i;
    qsort_r(v, cnt, sizeof *v, cmp_begin, (void *)ck);
    *out = v;
    *n = cnt;
    return 0;
}

int nlsr_plan_shard_header(nlsr_ctx *ctx, const nlsr_ckpt *ck, uint32_t shard, char **hdr,
                           size_t *hlen, uint64_t *data_size)
{
    nlsr_err *e = &ctx->err;
    size_t *ord = NULL, n = 0;
    NLSR_FORWARD(shard_tensors(ck, shard, &ord, &n, e));
    st_wtensor *wt = malloc((n ? n : 1) * sizeof *wt);
    if (!wt) {
        free(ord);
        return nlsr_fail(e, -ENOMEM, "planner: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = ck->t[ord[i]].t;
        wt[i] = (st_wtensor){t->name, t->dtype, t->ndim, t->shape};
    }
    const st_header *h = &ck->shards[shard]->h;
    int rc = st_header_serialize(wt, n, h->meta, h->nmeta, hdr, hlen, data_size, e);
    free(wt);
    free(ord);
    return rc;
}

int nlsr_arena_init(nlsr_ctx *ctx, nlsr_arena *a, uint64_t size, const char *what)
{
    memset(a, 0, sizeof *a);
    size = (size + NLSR_IO_ALIGN - 1) & ~(uint64_t)(NLSR_IO_ALIGN - 1);
    NLSR_FORWARD(nlsr_budget_charge(&ctx->budget, size, what, &ctx->err));
    void *m = NULL;
    int rc = posix_memalign(&m, NLSR_IO_ALIGN, size ? (size_t)size : NLSR_IO_ALIGN);
    if (rc) {
        nlsr_budget_release(&ctx->budget, size);
        return nlsr_fail(&ctx->err, -rc, "%s: out of memory for %llu bytes", what,
                         (unsigned long long)size);
    }
    a->base = m;
    a->size = size;
    a->budget = &ctx->budget;
    return 0;
}

void *nlsr_arena_take(nlsr_arena *a, uint64_t bytes)
{
    uint64_t at = (a->used + NLSR_IO_ALIGN - 1) & ~(uint64_t)(NLSR_IO_ALIGN - 1);
    if (!a->base || at > a->size || bytes > a->size - at) return NULL;
    a->used = at + bytes;
    return a->base + at;
}

void nlsr_arena_free(nlsr_arena *a)
{
    if (!a->base) return;
    free(a->base);
    nlsr_budget_release(a->budget, a->size);
    memset(a, 0, sizeof *a);
}

void nlsr_plan_free(nlsr_plan *p)
{
    if (!p) return;
    free(p->units);
    free(p->info);
    free(p->out_size);
    free(p->ranges);
    memset(p, 0, sizeof *p);
}

/* Growable unit list. */
typedef struct ulist {
    nlsr_unit *u;
    nlsr_plan_unit *info;
    size_t n, cap;
} ulist;

static nlsr_unit *ul_add(ulist *l, nlsr_plan_unit info)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        nlsr_unit *u = realloc(l->u, cap * sizeof *u);
        if (!u) return NULL;
        l->u = u;
        nlsr_plan_unit *in = realloc(l->info, cap * sizeof *in);
        if (!in) return NULL;
        l->info = in;
        l->cap = cap;
    }
    memset(&l->u[l->n], 0, sizeof l->u[l->n]);
    l->u[l->n].tag = l->n;
    l->info[l->n] = info;
    return &l->u[l->n++];
}

static int cmp_range(const void *a, const void *b)
{
    const nlsr_plan_range *x = a, *y = b;
    if (x->ck != y->ck) return x->ck < y->ck ? -1 : 1;
    if (x->shard != y->shard) return x->shard < y->shard ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int build_ranges(nlsr_plan *p, nlsr_err *e)
{
    size_t cnt = 0;
    for (size_t i = 0; i < p->nunits; i++) cnt += (size_t)p->units[i].nspans;
    nlsr_plan_range *r = malloc((cnt ? cnt : 1) * sizeof *r);
    NLSR_FAIL_IF(!r, e, -ENOMEM, "planner: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < p->nunits; i++)
        for (int k = 0; k < p->units[i].nspans; k++) {
            const nlsr_span *sp = &p->units[i].span[k];
            uint64_t len = nlsr_span_bytes(sp);
            if (len == 0) continue;
            int c = 0;
            while (c < NLSR_PLAN_MAX_CK && p->job.ck[c] != sp->ck) c++;
            const ck_entry *en = &sp->ck->t[sp->tensor];
            uint64_t off = sp->ck->shards[en->shard]->data_start + en->t->begin +
                           sp->first * nlsr_dtype_size(en->t->dtype);
            r[n++] = (nlsr_plan_range){c, en->shard, off, len};
        }
    qsort(r, n, sizeof *r, cmp_range);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && r[m - 1].ck == r[i].ck && r[m - 1].shard == r[i].shard &&
            r[i].off <= r[m - 1].off + r[m - 1].len) {
            uint64_t end = r[i].off + r[i].len;
            if (end > r[m - 1].off + r[m - 1].len) r[m - 1].len = end - r[m - 1].off;
            continue;
        }
        r[m++] = r[i];
    }
    p->ranges = r;
    p->nranges = m;
    return 0;
}

static void sink_size(uint64_t budget, size_t *chunk, unsigned *nbuf)
{
    /* The writer takes at most a sixteenth of the budget: 4 x 8 MiB from 512 MiB up. */
    size_t c = SINK_MAX_CHUNK;
    while (budget && c > SINK_MIN_CHUNK && (uint64_t)c * SINK_NBUF * 16 > budget) c /= 2;
    *chunk = c;
    *nbuf = SINK_NBUF;
}

/* Bytes of the side files a job copies beside the output's shards: the COPY entries of the
 * layout's folder (src/io/sidefiles.h; none for a single .safetensors file given by path).
 * Weights the job would leave out are not counted: with them the job refuses or drops them. */
static int side_files(nlsr_ctx *ctx, const nlsr_ckpt *L, uint64_t *bytes)
{
    nlsr_sidefiles sf;
    NLSR_FORWARD(nlsr_sidefiles_scan(ctx, L, &sf));
    *bytes = sf.copy_bytes;
    nlsr_sidefiles_free(&sf);
    return 0;
}

static int same_shape(const st_tensor *a, const st_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

int nlsr_plan_build(nlsr_ctx *ctx, const nlsr_job_desc *job, nlsr_plan *out)
{
    nlsr_err *e = &ctx->err;
    memset(out, 0, sizeof *out);
    out->job = *job;
    const nlsr_ckpt *L = job->ck[job->layout];
    NLSR_FAIL_IF(!L, e, NLSR_E_USAGE, "planner: no layout checkpoint");
    unsigned passes = job->passes ? job->passes : 1;
    int rc = 0;
    ptensor *pt = calloc(L->n ? L->n : 1, sizeof *pt);
    ulist ul = {0};
    NLSR_FAIL_IF(!pt, e, -ENOMEM, "planner: out of memory");
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) out->span_of[k] = -1;
    int nread = 0;
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++)
        if ((job->target_read >> k) & 1u) {
            if (!job->ck[k]) {
                rc = nlsr_fail(e, NLSR_E_USAGE, "planner: checkpoint %d is read but absent", k);
                goto fail;
            }
            out->span_of[k] = nread++;
        }

    /* Per tensor: target or not, where it is in each checkpoint read, what one row costs. */
    uint64_t max_numel = 0, min_unit = 0;
    const char *min_name = "";
    for (size_t i = 0; i < L->n; i++) {
        const st_tensor *t = L->t[i].t;
        ptensor *q = &pt[i];
        q->li = i;
        q->target = nlsr_is_target(t, job->targets, job->ntargets);
        tensor_rows(t, &q->rows, &q->row_elems);
        if (q->target) {
            out->ntarget_tensors++;
            if (t->numel > max_numel) max_numel = t->numel;
            for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) {
                if (!((job->target_read >> k) & 1u)) continue;
                const nlsr_ckpt *c = job->ck[k];
                if (c == L) {
                    q->idx[k] = i;
                } else if (nlsr_ckpt_find(c, t->name, &q->idx[k]) != 0) {
                    rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s: has no tensor '%.200s' (in %s)",
                                   c->path, t->name, L->path);
                    goto fail;
                }
                const st_tensor *ct = c->t[q->idx[k]].t;
                if (!same_shape(ct, t)) {
                    rc = nlsr_fail(e, NLSR_E_MISMATCH,
                                   "tensor '%.200s': shape differs between %s and %s", t->name,
                                   L->path, c->path);
                    goto fail;
                }
                q->row_bytes += q->row_elems * nlsr_dtype_size(ct->dtype);
                q->nspans++;
            }
            q->row_bytes += (uint64_t)(job->scratch_per_elem * (double)q->row_elems + 0.999);
        } else {
            out->nother_tensors++;
            if (!job->read_others) continue;
            q->idx[job->layout] = i;
            q->row_bytes = q->row_elems * nlsr_dtype_size(t->dtype);
            q->nspans = 1;
        }
        uint64_t one = q->rows ? q->row_bytes + (uint64_t)q->nspans * SLACK : 0;
        if (one > min_unit) {
            min_unit = one;
            min_name = t->name;
        }
    }

    /* Budget: what is not units, then units of at most cap bytes, depth of them. */
    if (job->writes) sink_size(job->budget, &out->sink_chunk, &out->sink_nbuf);
    out->sink_mem = job->writes ? nlsr_sink_mem(out->sink_chunk, out->sink_nbuf) : 0;
    out->resident_mem = (uint64_t)(job->resident_per_elem * (double)max_numel + 0.999);
    uint64_t fixed = job->job_fixed + out->sink_mem + out->resident_mem;
    uint64_t max_unit = job->max_unit ? job->max_unit : DEFAULT_MAX_UNIT;
    unsigned want = job->depth ? job->depth : DEFAULT_DEPTH;
    uint64_t cap = max_unit;
    if (job->budget) {
        uint64_t need = fixed + 2 * min_unit;
        if (job->budget < need) {
            char b1[32], b2[32], b3[32];
            rc = nlsr_fail(e, NLSR_E_BUDGET,
                           "memory budget of %s is too small for %s: the smallest unit it can "
                           "make is one row of '%.200s' (%s from %d checkpoint(s)); with double "
                           "buffering and %llu bytes of other buffers it needs at least %s "
                           "(--mem-budget %lluK)",
                           nlsr_fmt_bytes((double)job->budget, b1, sizeof b1), job->name,
                           min_name, nlsr_fmt_bytes((double)min_unit, b2, sizeof b2),
                           nread ? nread : 1, (unsigned long long)fixed,
                           nlsr_fmt_bytes((double)need, b3, sizeof b3),
                           (unsigned long long)((need + 1023) / 1024));
            goto fail;
        }
        uint64_t avail = job->budget - fixed;
        if (avail / want < cap) cap = avail / want;
        if (cap < min_unit) cap = min_unit;
    }
    if (cap < min_unit) cap = min_unit;
    out->unit_cap = cap;

    /* Units, shard by shard of the layout, tensors in file order. */
    for (uint32_t s = 0; s < L->nshards; s++) {
        size_t *ord = NULL, n = 0;
        rc = shard_tensors(L, s, &ord, &n, e);
        if (rc < 0) goto fail;
        nlsr_unit *grp = NULL;     /* open group of small copied tensors */
        uint64_t grp_bytes = 0;
        for (size_t j = 0; j < n && rc == 0; j++) {
            ptensor *q = &pt[ord[j]];
            if (q->rows == 0 || (!q->target && !job->read_others)) continue;
            if (q->target) {
                grp = NULL;
                uint64_t r = (cap - (uint64_t)q->nspans * SLACK) / q->row_bytes;
                if (r < 1) r = 1;
                uint64_t nu = (q->rows + r - 1) / r;
                r = (q->rows + nu - 1) / nu; /* even pieces */
                for (unsigned pass = 0; pass < passes && rc == 0; pass++)
                    for (uint64_t r0 = 0; r0 < q->rows; r0 += r) {
                        uint64_t rows = q->rows - r0 < r ? q->rows - r0 : r;
                        nlsr_unit *u = ul_add(&ul, (nlsr_plan_unit){NLSR_PLAN_TARGET, pass, s,
                                                                    q->li, r0, rows});
                        if (!u) {
                            rc = nlsr_fail(e, -ENOMEM, "planner: out of memory");
                            break;
                        }
                        for (int k = 0; k < NLSR_PLAN_MAX_CK; k++)
                            if (out->span_of[k] >= 0)
                                u->span[out->span_of[k]] =
                                    (nlsr_span){job->ck[k], q->idx[k], r0 * q->row_elems,
                                                rows * q->row_elems};
                        u->nspans = nread;
                        out->ntarget_units++;
                        uint64_t el = rows * q->row_elems;
                        if (el > out->max_unit_elems) out->max_unit_elems = el;
                    }
                continue;
            }
            uint64_t bytes = q->rows * q->row_bytes;
            if (grp && grp->nspans < NLSR_STREAM_MAX_SPANS && grp_bytes + bytes + SLACK <= cap) {
                grp->span[grp->nspans++] = (nlsr_span){L, q->li, 0, q->rows * q->row_elems};
                grp_bytes += bytes;
                continue;
            }
            uint64_t r = bytes + SLACK <= cap ? q->rows : (cap - SLACK) / q->row_bytes;
            if (r < 1) r = 1;
            uint64_t nu = (q->rows + r - 1) / r;
            r = (q->rows + nu - 1) / nu;
            for (uint64_t r0 = 0; r0 < q->rows; r0 += r) {
                uint64_t rows = q->rows - r0 < r ? q->rows - r0 : r;
                nlsr_unit *u =
                    ul_add(&ul, (nlsr_plan_unit){NLSR_PLAN_COPY, 0, s, q->li, r0, rows});
                if (!u) {
                    rc = nlsr_fail(e, -ENOMEM, "planner: out of memory");
                    break;
                }
                u->nspans = 1;
                u->span[0] = (nlsr_span){L, q->li, r0 * q->row_elems, rows * q->row_elems};
                out->ncopy_units++;
                grp = nu == 1 ? u : NULL;
                grp_bytes = rows * q->row_bytes;
            }
        }
        free(ord);
        if (rc < 0) goto fail;
    }
    out->units = ul.u;
    out->info = ul.info;
    out->nunits = ul.n;
    ul.u = NULL;
    ul.info = NULL;

    /* Memory: depth from what is left once the largest unit is known. */
    for (size_t i = 0; i < out->nunits; i++) {
        uint64_t b = nlsr_stream_unit_bytes(&out->units[i]);
        if (b > out->max_unit_bytes) out->max_unit_bytes = b;
    }
    out->scratch_mem = (uint64_t)(job->scratch_per_elem * (double)out->max_unit_elems + 0.999);
    unsigned depth = want;
    if (job->budget && out->max_unit_bytes > 0) {
        uint64_t used = fixed + out->scratch_mem;
        uint64_t left = job->budget > used ? job->budget - used : 0;
        uint64_t d = left / out->max_unit_bytes;
        if (d > MAX_DEPTH) d = MAX_DEPTH;
        if (job->depth && d > job->depth) d = job->depth;
        depth = (unsigned)(d < 2 ? 2 : d);
    }
    out->depth = depth;
    out->stream_mem = nlsr_stream_mem(out->units, out->nunits, depth);
    out->peak_mem = out->stream_mem + out->sink_mem + out->scratch_mem + out->resident_mem +
                    job->job_fixed;

    /* Bytes: reads per checkpoint, and the output files exactly as the writer will make them. */
    for (size_t i = 0; i < out->nunits; i++)
        for (int k = 0; k < out->units[i].nspans; k++) {
            const nlsr_span *sp = &out->units[i].span[k];
            for (int c = 0; c < NLSR_PLAN_MAX_CK; c++)
                if (job->ck[c] == sp->ck) {
                    out->read_bytes[c] += nlsr_span_bytes(sp);
                    break;
                }
        }
    if (job->writes) {
        out->nout = L->nshards;
        out->out_size = calloc(L->nshards ? L->nshards : 1, sizeof *out->out_size);
        if (!out->out_size) {
            rc = nlsr_fail(e, -ENOMEM, "planner: out of memory");
            goto fail;
        }
        for (uint32_t s = 0; s < L->nshards; s++) {
            char *hdr = NULL;
            size_t hlen = 0;
            uint64_t ds = 0;
            rc = nlsr_plan_shard_header(ctx, L, s, &hdr, &hlen, &ds);
            free(hdr);
            if (rc < 0) goto fail;
            out->out_size[s] = 8 + hlen + ds;
            out->write_bytes += out->out_size[s];
        }
        rc = side_files(ctx, L, &out->side_bytes);
        if (rc < 0) goto fail;
        out->write_bytes += out->side_bytes;
    }
    rc = build_ranges(out, e);
    if (rc < 0) goto fail;
    free(pt);
    return 0;
fail:
    free(ul.u);
    free(ul.info);
    free(pt);
    nlsr_plan_free(out);
    return rc;
}

int nlsr_plan_amplify(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *aligned,
                      const nlsr_realign_params *p, nlsr_plan *out)
{
    nlsr_job_desc j = {0};
    j.name = "amplify";
    j.ck[0] = base;
    j.ck[1] = aligned;
    j.role[0] = "base";
    j.role[1] = "aligned";
    j.layout = 1;
    j.target_read = 3u;
    j.read_others = 1;
    j.passes = 1;
    j.writes = 1;
    j.targets = p ? p->targets : NULL;
    j.ntargets = p ? p->ntargets : 0;
    j.budget = ctx->budget.limit;
    return nlsr_plan_build(ctx, &j, out);
}

/* ---- measuring the disks ------------------------------------------------------------------ */

#define PROBE_READ (256ull << 20)
#define PROBE_WRITE (128ull << 20)
#define PROBE_CHUNK (1u << 20)
#define PROBE_QD 16u

static int probe_read(nlsr_ctx *ctx, const nlsr_ckpt *ck, double *bw)
{
    nlsr_err *e = &ctx->err;
    const st_file *big = NULL;
    for (size_t s = 0; s < ck->nshards; s++)
        if (!big || ck->shards[s]->file_size > big->file_size) big = ck->shards[s];
    uint64_t total = big ? big->file_size & ~(uint64_t)(NLSR_IO_ALIGN - 1) : 0;
    if (total > PROBE_READ) total = PROBE_READ;
    *bw = 0;
    if (total < (4u << 20)) return 0; /* too small to say anything */
    nlsr_io *io = NULL;
    nlsr_io_kind used;
    NLSR_FORWARD(nlsr_io_open(ctx->io_kind == NLSR_IO_MMAP ? NLSR_IO_PREAD : ctx->io_kind,
                              PROBE_QD, "read probe", ctx, &io, &used, e));
    if (!io) return 0;
    int rc = nlsr_budget_charge(&ctx->budget, (uint64_t)PROBE_QD * PROBE_CHUNK, "read probe", e);
    if (rc < 0) {
        nlsr_io_close(io);
        return rc;
    }
    void *mem = NULL;
    int fd = nlsr_io_direct_enabled() ? nlsr_io_open_direct(big->path, 0) : -1;
    int rfd = fd >= 0 ? fd : big->fd;
    if (posix_memalign(&mem, NLSR_IO_ALIGN, (size_t)PROBE_QD * PROBE_CHUNK) != 0) {
        rc = nlsr_fail(e, -ENOMEM, "read probe: out of memory");
        goto done;
    }
    nlsr_io_req req[PROBE_QD];
    double t0 = nlsr_now();
    uint64_t next = 0, got = 0;
    unsigned busy = 0;
    for (unsigned i = 0; i < PROBE_QD && next < total; i++, next += PROBE_CHUNK, busy++) {
        req[i] = (nlsr_io_req){0};
        req[i] = (nlsr_io_req){.fd = rfd, .op = NLSR_IO_OP_READ,
                               .buf = (unsigned char *)mem + (size_t)i * PROBE_CHUNK,
                               .len = PROBE_CHUNK, .need = PROBE_CHUNK, .off = next,
                               .buf_index = -1};
        if ((rc = nlsr_io_submit(io, &req[i])) < 0) goto done;
    }
    while (busy > 0) {
        nlsr_io_req *r;
        if ((rc = nlsr_io_wait(io, &r)) < 0) goto done;
        busy--;
        if (r->res < 0) {
            rc = nlsr_fail(e, r->res, "%s: read probe failed: %s", big->path, strerror(-r->res));
            goto done;
        }
        got += r->done;
        if (next < total) {
            r->off = next;
            next += PROBE_CHUNK;
            if ((rc = nlsr_io_submit(io, r)) < 0) goto done;
            busy++;
        }
    }
    double dt = nlsr_now() - t0;
    *bw = dt > 0 ? (double)got / dt : 0;
done:
    nlsr_io_close(io);
    free(mem);
    if (fd >= 0) close(fd);
    nlsr_budget_release(&ctx->budget, (uint64_t)PROBE_QD * PROBE_CHUNK);
    return rc;
}

static int probe_write(nlsr_ctx *ctx, const char *dir, double *bw)
{
    nlsr_sink *s = NULL;
    *bw = 0;
    NLSR_FORWARD(nlsr_sink_create(ctx, ctx->io_kind, SINK_MAX_CHUNK, SINK_NBUF, &s));
    char name[64];
    snprintf(name, sizeof name, ".nlsr-probe-%ld", (long)getpid());
    char *path = nlsr_path_join(dir, name);
    int rc = 0;
    if (!path) {
        rc = nlsr_fail(&ctx->err, -ENOMEM, "write probe: out of memory");
        goto done;
    }
    uint64_t before = ctx->bytes_written;
    double t0 = nlsr_now();
    rc = nlsr_sink_begin(s, path, PROBE_WRITE);
    for (uint64_t at = 0; rc == 0 && at < PROBE_WRITE;) {
        unsigned char *p;
        size_t avail;
        rc = nlsr_sink_reserve(s, &p, &avail);
        if (rc < 0) break;
        if (avail > PROBE_WRITE - at) avail = (size_t)(PROBE_WRITE - at);
        memset(p, 0x5a, avail);
        rc = nlsr_sink_commit(s, avail);
        at += avail;
    }
    if (rc == 0) rc = nlsr_sink_end(s);
    double dt = nlsr_now() - t0;
    if (rc == 0) *bw = dt > 0 ? (double)PROBE_WRITE / dt : 0;
    unlink(path);
    ctx->bytes_written = before;
done:
    free(path);
    nlsr_sink_free(s);
    return rc;
}

int nlsr_plan_probe(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *write_dir, double *read_bw,
                    double *write_bw)
{
    if (read_bw) NLSR_FORWARD(probe_read(ctx, ck, read_bw));
    if (write_bw) NLSR_FORWARD(probe_write(ctx, write_dir, write_bw));
    return 0;
}

/* ---- printing ----------------------------------------------------------------------------- */

static const char *role_of(const nlsr_plan *p, int k)
{
    return p->job.role[k] ? p->job.role[k] : "input";
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Seconds the plan takes at these speeds. Reads and writes are taken one after the other:
 * both go to the same disk in the common case, and the sum is what the bench finds. */
static double plan_seconds(const nlsr_plan *p, double rbw, double wbw)
{
    uint64_t rd = 0;
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) rd += p->read_bytes[k];
    double t = 0;
    if (rbw > 0) t += (double)rd / rbw;
    if (wbw > 0) t += (double)p->write_bytes / wbw;
    return t;
}

/* What `run` itself will do with this budget (the units above are the engine's generic
 * streaming of a run). */
static void print_run_plan(const nlsr_run_plan *rp, double rbw, double wbw, FILE *out)
{
    char a[32], b[32], c[32], d[32];
    if (!rp->single && !rp->rows) {
        if (rp->rows_min_bytes)
            fprintf(out,
                    "run: the budget is too small: run needs at least %s (the single pass in row "
                    "blocks; two whole modules of the three checkpoints take %s)\n",
                    nlsr_fmt_bytes((double)rp->rows_min_bytes, a, sizeof a),
                    nlsr_fmt_bytes((double)rp->need_bytes, b, sizeof b));
        else
            fprintf(out,
                    "run: prepare + apply through a temporary patch file: the single pass needs a "
                    "budget of %s (two whole modules of the three checkpoints)\n",
                    nlsr_fmt_bytes((double)rp->need_bytes, a, sizeof a));
        return;
    }
    if (rp->rows) {
        fprintf(out,
                "run: single pass in row blocks (the single pass whole needs %s); %zu of %zu "
                "modules in blocks, buffers %s + %s scratch; patches of %zu modules kept in "
                "memory (%s)\n",
                nlsr_fmt_bytes((double)rp->need_bytes, d, sizeof d), rp->blocked, rp->modules,
                nlsr_fmt_bytes((double)rp->stream_bytes, a, sizeof a),
                nlsr_fmt_bytes((double)rp->scratch_bytes, b, sizeof b), rp->kept,
                nlsr_fmt_bytes((double)rp->kept_bytes, c, sizeof c));
    } else {
        fprintf(out,
                "run: single pass; buffers %s (two whole modules of the three checkpoints) + %s "
                "scratch; patches of %zu of %zu modules kept in memory (%s)\n",
                nlsr_fmt_bytes((double)rp->stream_bytes, a, sizeof a),
                nlsr_fmt_bytes((double)rp->scratch_bytes, b, sizeof b), rp->kept, rp->modules,
                nlsr_fmt_bytes((double)rp->kept_bytes, c, sizeof c));
    }
    fprintf(out, "  reads %s", nlsr_fmt_bytes((double)rp->read_min, a, sizeof a));
    if (rp->reread_max)
        fprintf(out, " to %s (patched modules whose patches are not kept are read again)",
                nlsr_fmt_bytes((double)(rp->read_min + rp->reread_max), b, sizeof b));
    fprintf(out, ", writes %s", nlsr_fmt_bytes((double)rp->written, d, sizeof d));
    if (rbw > 0 && wbw > 0)
        fprintf(out, "; about %.1f s at these speeds",
                (double)rp->read_min / rbw + (double)rp->written / wbw);
    fputc('\n', out);
}

static void run_plan_json(cJSON *o, const nlsr_run_plan *rp)
{
    cJSON *r = cJSON_AddObjectToObject(o, "run");
    if (!r) return;
    cJSON_AddStringToObject(r, "plan", rp->single ? "single pass"
                                       : rp->rows ? "row blocks"
                                       : rp->rows_min_bytes ? "none" : "patch file");
    cJSON_AddNumberToObject(r, "need_bytes", (double)rp->need_bytes);
    if (rp->rows_min_bytes) cJSON_AddNumberToObject(r, "min_bytes", (double)rp->rows_min_bytes);
    if (!rp->single && !rp->rows) return;
    if (rp->rows) {
        cJSON_AddNumberToObject(r, "rows_need_bytes", (double)rp->rows_need_bytes);
        cJSON_AddNumberToObject(r, "modules_in_blocks", (double)rp->blocked);
    }
    cJSON_AddNumberToObject(r, "modules", (double)rp->modules);
    cJSON_AddNumberToObject(r, "patches_in_memory", (double)rp->kept);
    cJSON_AddNumberToObject(r, "stream_bytes", (double)rp->stream_bytes);
    cJSON_AddNumberToObject(r, "scratch_bytes", (double)rp->scratch_bytes);
    cJSON_AddNumberToObject(r, "kept_bytes", (double)rp->kept_bytes);
    cJSON_AddNumberToObject(r, "bytes_read", (double)rp->read_min);
    cJSON_AddNumberToObject(r, "bytes_read_max", (double)(rp->read_min + rp->reread_max));
    cJSON_AddNumberToObject(r, "bytes_written", (double)rp->written);
}

cJSON *nlsr_plan_json(const nlsr_plan *p, double rbw, double wbw, const char *src)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const nlsr_job_desc *j = &p->job;
    cJSON_AddStringToObject(o, "job", j->name);
    cJSON *ins = cJSON_AddArrayToObject(o, "inputs");
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) {
        if (!j->ck[k]) continue;
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "role", role_of(p, k));
        cJSON_AddStringToObject(c, "path", j->ck[k]->path);
        cJSON_AddNumberToObject(c, "shards", (double)j->ck[k]->nshards);
        cJSON_AddNumberToObject(c, "bytes", (double)p->read_bytes[k]);
        cJSON_AddBoolToObject(c, "layout", k == j->layout);
        cJSON_AddItemToArray(ins, c);
    }
    uint64_t rd = 0;
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) rd += p->read_bytes[k];
    cJSON_AddNumberToObject(o, "bytes_read", (double)rd);
    cJSON_AddNumberToObject(o, "bytes_written", (double)p->write_bytes);
    cJSON_AddNumberToObject(o, "files_written", (double)(j->writes ? p->nout : 0));
    cJSON_AddNumberToObject(o, "passes", (double)(j->passes ? j->passes : 1));
    cJSON_AddNumberToObject(o, "units", (double)p->nunits);
    cJSON_AddNumberToObject(o, "target_units", (double)p->ntarget_units);
    cJSON_AddNumberToObject(o, "copy_units", (double)p->ncopy_units);
    cJSON_AddNumberToObject(o, "target_tensors", (double)p->ntarget_tensors);
    cJSON_AddNumberToObject(o, "other_tensors", (double)p->nother_tensors);
    cJSON_AddNumberToObject(o, "depth", p->depth);
    cJSON_AddNumberToObject(o, "largest_unit_bytes", (double)p->max_unit_bytes);
    cJSON *m = cJSON_AddObjectToObject(o, "memory");
    cJSON_AddNumberToObject(m, "budget", (double)j->budget);
    cJSON_AddNumberToObject(m, "peak", (double)p->peak_mem);
    cJSON_AddNumberToObject(m, "read_buffers", (double)p->stream_mem);
    cJSON_AddNumberToObject(m, "write_buffers", (double)p->sink_mem);
    cJSON_AddNumberToObject(m, "job", (double)(p->scratch_mem + p->resident_mem + j->job_fixed));
    cJSON *t = cJSON_AddObjectToObject(o, "time");
    cJSON_AddNumberToObject(t, "read_bandwidth", rbw);
    cJSON_AddNumberToObject(t, "write_bandwidth", wbw);
    cJSON_AddStringToObject(t, "bandwidth_source", src ? src : "none");
    cJSON_AddNumberToObject(t, "seconds", plan_seconds(p, rbw, wbw));
    cJSON *us = cJSON_AddArrayToObject(o, "unit_list");
    for (size_t i = 0; i < p->nunits; i++) {
        const nlsr_plan_unit *in = &p->info[i];
        const nlsr_unit *u = &p->units[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "kind", in->kind == NLSR_PLAN_TARGET ? "target" : "copy");
        cJSON_AddNumberToObject(x, "pass", in->pass);
        const nlsr_ckpt *L = j->ck[j->layout];
        cJSON *names = cJSON_AddArrayToObject(x, "tensors");
        for (int k = 0; k < u->nspans; k++) {
            if (in->kind == NLSR_PLAN_TARGET && k > 0) break;
            cJSON_AddItemToArray(names, cJSON_CreateString(u->span[k].ck->t[u->span[k].tensor].t->name));
        }
        cJSON_AddStringToObject(x, "shard", L->shard_names[in->shard]);
        cJSON_AddNumberToObject(x, "row0", (double)in->row0);
        cJSON_AddNumberToObject(x, "rows", (double)in->rows);
        uint64_t b = 0;
        for (int k = 0; k < u->nspans; k++) b += nlsr_span_bytes(&u->span[k]);
        cJSON_AddNumberToObject(x, "bytes", (double)b);
        cJSON_AddItemToArray(us, x);
    }
    cJSON *rs = cJSON_AddArrayToObject(o, "read_ranges");
    for (size_t i = 0; i < p->nranges; i++) {
        const nlsr_plan_range *r = &p->ranges[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "input", role_of(p, r->ck));
        cJSON_AddStringToObject(x, "file", j->ck[r->ck]->shard_names[r->shard]);
        cJSON_AddNumberToObject(x, "offset", (double)r->off);
        cJSON_AddNumberToObject(x, "length", (double)r->len);
        cJSON_AddItemToArray(rs, x);
    }
    if (p->has_run) run_plan_json(o, &p->run);
    return o;
}

int nlsr_plan_print_json(cJSON *o, FILE *out)
{
    char *txt = o ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!txt) return -ENOMEM;
    fprintf(out, "%s\n", txt);
    free(txt);
    return 0;
}

int nlsr_plan_print_to(const nlsr_plan *p, double rbw, double wbw, const char *src, int json,
                       FILE *out)
{
    if (json) return nlsr_plan_print_json(nlsr_plan_json(p, rbw, wbw, src), out);
    const nlsr_job_desc *j = &p->job;
    char a[32], b[32], c[32], d[32], f[32];
    fprintf(out, "plan: %s\n", j->name);
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++)
        if (j->ck[k])
            fprintf(out, "  %-10s %s (%zu shard%s)%s\n", role_of(p, k), j->ck[k]->path,
                    j->ck[k]->nshards, j->ck[k]->nshards == 1 ? "" : "s",
                    k == j->layout ? ", output layout" : "");
    fprintf(out, "memory: budget %s, peak %s = read buffers %u x %s + writer %u x %s + job %s\n",
            j->budget ? nlsr_fmt_bytes((double)j->budget, a, sizeof a) : "unlimited",
            nlsr_fmt_bytes((double)p->peak_mem, b, sizeof b), p->depth,
            nlsr_fmt_bytes((double)(p->depth ? p->stream_mem / p->depth : 0), c, sizeof c),
            j->writes ? p->sink_nbuf : 0,
            nlsr_fmt_bytes((double)p->sink_chunk * (j->writes ? 1 : 0), d, sizeof d),
            nlsr_fmt_bytes((double)(p->scratch_mem + p->resident_mem + j->job_fixed), f,
                           sizeof f));
    fprintf(out,
            "units: %zu in %u pass%s (%zu target modules in %zu units, %zu other tensors in %zu "
            "units); largest unit %s; %u units in flight\n",
            p->nunits, j->passes ? j->passes : 1, (j->passes ? j->passes : 1) == 1 ? "" : "es",
            p->ntarget_tensors, p->ntarget_units, p->nother_tensors, p->ncopy_units,
            nlsr_fmt_bytes((double)p->max_unit_bytes, a, sizeof a), p->depth);
    fprintf(out, "reads:\n");
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) {
        if (!j->ck[k]) continue;
        size_t nr = 0;
        for (size_t i = 0; i < p->nranges; i++) nr += p->ranges[i].ck == k;
        fprintf(out, "  %-10s %s (%llu bytes) in %zu range%s\n", role_of(p, k),
                nlsr_fmt_bytes((double)p->read_bytes[k], a, sizeof a),
                (unsigned long long)p->read_bytes[k], nr, nr == 1 ? "" : "s");
    }
    fprintf(out, "writes: %s (%llu bytes) in %zu file%s\n",
            nlsr_fmt_bytes((double)p->write_bytes, a, sizeof a),
            (unsigned long long)p->write_bytes, j->writes ? p->nout : 0,
            j->writes && p->nout == 1 ? "" : "s");
    if (rbw > 0 || wbw > 0)
        fprintf(out, "time: about %.1f s at read %s/s and write %s/s (%s)\n",
                plan_seconds(p, rbw, wbw), nlsr_fmt_bytes(rbw, a, sizeof a),
                nlsr_fmt_bytes(wbw, b, sizeof b), src ? src : "given");
    if (p->has_run) print_run_plan(&p->run, rbw, wbw, out);
    fprintf(out, "\nunits (rows of the output's tensor):\n");
    const nlsr_ckpt *L = j->ck[j->layout];
    for (size_t i = 0; i < p->nunits; i++) {
        const nlsr_plan_unit *in = &p->info[i];
        const nlsr_unit *u = &p->units[i];
        uint64_t bytes = 0;
        for (int k = 0; k < u->nspans; k++) bytes += nlsr_span_bytes(&u->span[k]);
        const st_tensor *t = L->t[in->tensor].t;
        char more[24] = "";
        if (in->kind == NLSR_PLAN_COPY && u->nspans > 1)
            snprintf(more, sizeof more, " (+%d more)", u->nspans - 1);
        fprintf(out, "  %5zu %-6s %s%s rows %llu-%llu of %llu, %s%s\n", i,
                in->kind == NLSR_PLAN_TARGET ? "target" : "copy", t->name, more,
                (unsigned long long)in->row0, (unsigned long long)(in->row0 + in->rows - 1),
                (unsigned long long)(t->ndim ? t->shape[0] : 1),
                nlsr_fmt_bytes((double)bytes, a, sizeof a),
                in->pass ? " (pass 2+)" : "");
    }
    fprintf(out, "\nread ranges (file offsets, coalesced, in file order):\n");
    for (size_t i = 0; i < p->nranges; i++) {
        const nlsr_plan_range *r = &p->ranges[i];
        fprintf(out, "  %-10s %s [%llu, %llu) %s\n", role_of(p, r->ck),
                base_name(j->ck[r->ck]->shard_names[r->shard]), (unsigned long long)r->off,
                (unsigned long long)(r->off + r->len), nlsr_fmt_bytes((double)r->len, a, sizeof a));
    }
    return 0;
}

/* ---- the public `nlsr plan` ------------------------------------------------------------- */
