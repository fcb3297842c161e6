/* SPDX-License-Identifier: Apache-2.0 */
/* Step 2's low-rank and Wanda scorers in the full-weight prepare (scorer.h), the activations
 * file they read, their plan and their records. */
#define _GNU_SOURCE
#include "../common/params.h"
#include "scorer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx.h"
#include "../common/shape.h"
#include "../common/json.h"
#include "../compute/convert.h"
#include "../compute/kth.h"
#include "../compute/lowrank.h"
#include "../compute/similarity.h"
#include "../compute/wanda.h"
#include "../plan/progress.h"
#include "report.h"
#include "../io/stream.h"
#include "../plan/targets.h"

/* The scorer's row blocks (feeding and projecting) hold about 2^20 f32 elements (4 MiB):
 * large enough for sgemm to run near its peak, small against any budget. The blocks are a
 * function of the shape only, so the result does not depend on the prepare's block size. */
#define ROW_ELEMS ((size_t)1 << 20)
/* Activation rows are streamed in units of about 2^20 elements. */
#define ACTS_UNIT_ELEMS ((size_t)1 << 20)
#define ACTS_DEPTH 2u
#define ACTS_META_KEY "nlsr.activations"

static nlsr_rank_reading reading_of(nlsr_rank_mode m)
{
    return m == NLSR_RANK_MODE_AUTHORS ? NLSR_RANK_AUTHORS
           : m == NLSR_RANK_MODE_DIRECT ? NLSR_RANK_DIRECT
                                        : NLSR_RANK_PAPER;
}

int nlsr_scorer_check_params(nlsr_ctx *ctx, const nlsr_scorer_params *sp)
{
    nlsr_err *e = &ctx->err;
    switch (sp->kind) {
    case NLSR_SCORER_MAGNITUDE:
        NLSR_FAIL_IF(sp->activations, e, NLSR_E_USAGE,
                     "activations %s: the magnitude scorer takes none (use the lowrank or wanda "
                     "scorer)",
                     sp->activations);
        return 0;
    case NLSR_SCORER_WANDA:
        NLSR_FAIL_IF(!sp->activations, e, NLSR_E_USAGE,
                     "the wanda scorer needs activations (--activations FILE)");
        NLSR_FAIL_IF(sp->wanda_select != NLSR_WANDA_MODE_ROW &&
                         sp->wanda_select != NLSR_WANDA_MODE_MATRIX,
                     e, NLSR_E_USAGE, "unknown wanda selection %d", (int)sp->wanda_select);
        return 0;
    case NLSR_SCORER_LOWRANK:
    {
        /* The bounds of rank, rank_fraction, power_iters and oversample: the table's. */
        nlsr_realign_params tmp = NLSR_REALIGN_PARAMS_DEFAULT;
        tmp.scorer = *sp;
        return nlsr_params_validate(&tmp, e);
    }
    }
    return nlsr_fail(e, NLSR_E_USAGE, "unknown scorer %d", (int)sp->kind);
}

/* ---- the activations file ------------------------------------------------------------------ */

struct nlsr_acts {
    nlsr_ckpt *ck;
    int gram;
};

void nlsr_acts_free(nlsr_acts *a)
{
    if (!a) return;
    nlsr_ckpt_free(a->ck);
    free(a);
}

int nlsr_acts_is_gram(const nlsr_acts *a)
{
    return a->gram;
}

static const char *acts_mode(const nlsr_ckpt *ck)
{
    for (size_t s = 0; s < ck->nshards; s++) {
        const st_header *h = &ck->shards[s]->h;
        for (size_t m = 0; m < h->nmeta; m++)
            if (strcmp(h->meta[m].key, ACTS_META_KEY) == 0) return h->meta[m].value;
    }
    return NULL;
}

/* One entry against its module (out x in). */
static int acts_check_entry(nlsr_ctx *ctx, const nlsr_acts *a, const st_tensor *ta,
                            const st_tensor *tm)
{
    nlsr_err *e = &ctx->err;
    uint64_t out = tm->shape[0], in = tm->shape[1];
    char sh[160];
    nlsr_shape_str(ta->ndim, ta->shape, ", ", sh, sizeof sh);
    if (a->gram) {
        NLSR_FAIL_IF(ta->ndim != 2 || ta->shape[0] != in || ta->shape[1] != in, e,
                     NLSR_E_MISMATCH,
                     "activations %s: Gram matrix '%.200s' has shape %s, but the module is "
                     "%" PRIu64 " x %" PRIu64 ": [%" PRIu64 ", %" PRIu64 "] expected",
                     a->ck->path, ta->name, sh, out, in, in, in);
        NLSR_FAIL_IF(ta->dtype != NLSR_DTYPE_F32, e, NLSR_E_DTYPE,
                     "activations %s: Gram matrix '%.200s' is %s, not F32", a->ck->path,
                     ta->name, nlsr_dtype_name(ta->dtype));
        return 0;
    }
    NLSR_FAIL_IF((ta->ndim != 2 && ta->ndim != 3) || ta->shape[ta->ndim - 1] != in, e,
                 NLSR_E_MISMATCH,
                 "activations %s: '%.200s' has shape %s, but the module is %" PRIu64
                 " x %" PRIu64 ": rows of width %" PRIu64 " expected ([n, %" PRIu64
                 "] or [batch, seq, %" PRIu64 "])",
                 a->ck->path, ta->name, sh, out, in, in, in, in);
    NLSR_FAIL_IF(!nlsr_dtype_is_float(ta->dtype), e, NLSR_E_DTYPE,
                 "activations %s: '%.200s' is %s, not a float dtype", a->ck->path, ta->name,
                 nlsr_dtype_name(ta->dtype));
    NLSR_FAIL_IF(ta->numel == 0, e, NLSR_E_MISMATCH, "activations %s: '%.200s' holds no rows",
                 a->ck->path, ta->name);
    return 0;
}

int nlsr_acts_open(nlsr_ctx *ctx, const char *path, const nlsr_ckpt *model,
                   const nlsr_realign_params *p, nlsr_acts **out)
{
    nlsr_err *e = &ctx->err;
    *out = NULL;
    nlsr_acts *a = calloc(1, sizeof *a);
    NLSR_FAIL_IF(!a, e, -ENOMEM, "out of memory");
    int rc = nlsr_ckpt_open(ctx, path, &a->ck);
    if (rc == 0 && a->ck->kind != NLSR_CKPT_FULL)
        rc = nlsr_fail(e, NLSR_E_FORMAT, "activations %s: is a PEFT adapter, not activations",
                       path);
    const char *mode = rc == 0 ? acts_mode(a->ck) : NULL;
    if (mode && strcmp(mode, "gram") == 0) a->gram = 1;
    else if (mode && strcmp(mode, "rows") != 0)
        rc = nlsr_fail(e, NLSR_E_FORMAT,
                       "activations %s: __metadata__ \"%s\" is '%.100s', not 'rows' or 'gram'",
                       path, ACTS_META_KEY, mode);
    /* Both lists are sorted bytewise: walk them together. */
    size_t i = 0, j = 0;
    while (rc == 0 && (i < model->n || j < a->ck->n)) {
        const st_tensor *tm = i < model->n ? model->t[i].t : NULL;
        if (tm && !nlsr_is_target(tm, p->targets, p->ntargets)) {
            i++;
            continue;
        }
        const st_tensor *ta = j < a->ck->n ? a->ck->t[j].t : NULL;
        int c = !tm ? 1 : !ta ? -1 : strcmp(tm->name, ta->name);
        if (c < 0)
            rc = nlsr_fail(e, NLSR_E_MISMATCH,
                           "activations %s: no entry for target module '%.200s' of %s", path,
                           tm->name, model->path);
        else if (c > 0)
            rc = nlsr_fail(e, NLSR_E_MISMATCH,
                           "activations %s: '%.200s' is no target module of %s (made for "
                           "another model?)",
                           path, ta->name, model->path);
        else
            rc = acts_check_entry(ctx, a, ta, tm);
        i++;
        j++;
    }
    if (rc < 0) {
        nlsr_acts_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

/* ---- one module ---------------------------------------------------------------------------- */

struct nlsr_scorer {
    nlsr_ctx *ctx;
    char *name;
    nlsr_scorer_kind kind;
    size_t out, in;
    double sparsity;
    /* lowrank */
    nlsr_lowrank *lr;
    nlsr_err lerr;          /* the kernel's messages, re-issued with the module's name */
    int identity;
    float *G;
    uint64_t g_bytes;
    float *rows;            /* R rows: the feed block, then the projection block */
    uint64_t rows_bytes;
    size_t R;
    uint64_t next;          /* feed: next element expected */
    int in_pass;
    size_t sc_r0, sc_r1;    /* rows whose scores `rows` holds; sc_r1 == 0: none */
    float *wc;              /* W itself (out x in), kept from the first pass when it fits:
                               the later SVD passes then read and convert nothing */
    uint64_t wc_bytes;
    int passes_done;
    float *all;             /* every score (out x in), when it fits: the projection is then
                               computed once, not in every scoring pass */
    uint64_t all_bytes;
    size_t all_rows;        /* rows of `all` computed so far */
    /* wanda */
    float *norms;
    uint64_t norms_bytes;
    int per_row;
    float *thr, *acc;       /* per-row thresholds; the row being collected */
    uint64_t thr_bytes, acc_bytes;
    uint64_t row_next;
};

static size_t row_block(size_t out, size_t in)
{
    size_t R = ROW_ELEMS / in;
    if (R < 1) R = 1;
    return R > out ? out : R;
}

static size_t acts_unit_rows(size_t in)
{
    size_t r = ACTS_UNIT_ELEMS / in;
    return r < 1 ? 1 : r;
}

static int lowrank_params(const nlsr_realign_params *p, int threads, size_t out, size_t in,
                          nlsr_lowrank_params *lp, nlsr_err *e)
{
    const nlsr_scorer_params *sp = &p->scorer;
    *lp = NLSR_LOWRANK_PARAMS_DEFAULT;
    size_t r = 0;
    NLSR_FORWARD(nlsr_lowrank_rank(sp->rank, sp->rank_fraction, out, in, p->sparsity,
                                   reading_of(sp->rank_mode), &r, e));
    lp->rank = r;
    lp->oversample = (size_t)sp->oversample;
    lp->power_iters = sp->power_iters;
    lp->seed = sp->seed;
    lp->method = sp->exact_svd ? NLSR_LOWRANK_EXACT : NLSR_LOWRANK_AUTO;
    lp->threads = threads;
    return 0;
}

/* The kernel's message (in sc->lerr) with the module named. */
static int lr_fail(nlsr_scorer *sc, int rc)
{
    return nlsr_fail(&sc->ctx->err, rc, "tensor '%.200s' (%zu x %zu), low-rank scorer: %s",
                     sc->name, sc->out, sc->in, sc->lerr.msg);
}

static void take_back(nlsr_scorer *sc, void *pp, uint64_t bytes)
{
    void **p = pp;
    nlsr_budget_free(&sc->ctx->budget, *p, (size_t)bytes);
    *p = NULL;
}

void nlsr_scorer_free(nlsr_scorer *sc)
{
    if (!sc) return;
    nlsr_lowrank_free(sc->lr);
    take_back(sc, &sc->G, sc->g_bytes);
    take_back(sc, &sc->rows, sc->rows_bytes);
    take_back(sc, &sc->all, sc->all_bytes);
    take_back(sc, &sc->wc, sc->wc_bytes);
    take_back(sc, &sc->norms, sc->norms_bytes);
    take_back(sc, &sc->thr, sc->thr_bytes);
    take_back(sc, &sc->acc, sc->acc_bytes);
    free(sc->name);
    free(sc);
}

/* The module's activations: G (lowrank) or the column norms (wanda), streamed from the file. */
static int load_acts(nlsr_scorer *sc, const nlsr_acts *a)
{
    nlsr_ctx *ctx = sc->ctx;
    nlsr_err *e = &ctx->err;
    nlsr_budget *b = &ctx->budget;
    size_t ti = 0;
    NLSR_FAIL_IF(nlsr_ckpt_find(a->ck, sc->name, &ti) != 0, e, NLSR_E_MISMATCH,
                 "activations %s: no entry for target module '%.200s'", a->ck->path, sc->name);
    const st_tensor *t = a->ck->t[ti].t;
    size_t in = sc->in;
    uint64_t nrows = t->numel / in;
    int want_gram = sc->kind == NLSR_SCORER_LOWRANK;
    size_t ur = acts_unit_rows(in);
    /* Wanda from a Gram file reads only the diagonal: one element per unit. */
    int diag = a->gram && !want_gram;
    uint64_t nunits = diag ? in : (nrows + ur - 1) / ur;
    double *sumsq = NULL;
    float *x = NULL;
    nlsr_unit *units = NULL;
    nlsr_stream *s = NULL;
    uint64_t x_bytes = (uint64_t)ur * in * sizeof(float), sumsq_bytes = (uint64_t)in * 8;
    int rc = 0;
    if (want_gram) {
        sc->g_bytes = (uint64_t)in * in * sizeof(float);
        rc = nlsr_budget_alloc(b, (size_t)sc->g_bytes, "activation Gram matrix G (in x in, f32)",
                               (void **)&sc->G, e);
        if (rc == 0 && !a->gram) memset(sc->G, 0, (size_t)sc->g_bytes);
    } else {
        sc->norms_bytes = (uint64_t)in * sizeof(float);
        rc = nlsr_budget_alloc(b, (size_t)sc->norms_bytes, "Wanda column norms",
                               (void **)&sc->norms, e);
        if (rc == 0 && !a->gram)
            rc = nlsr_budget_alloc(b, (size_t)sumsq_bytes, "Wanda sums of squares",
                                   (void **)&sumsq, e);
        if (rc == 0 && !a->gram) memset(sumsq, 0, (size_t)sumsq_bytes);
    }
    if (rc == 0 && !a->gram)
        rc = nlsr_budget_alloc(b, (size_t)x_bytes, "activation rows (f32)", (void **)&x, e);
    if (rc == 0 && !(units = calloc(nunits ? nunits : 1, sizeof *units)))
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
    for (uint64_t u = 0; rc == 0 && u < nunits; u++) {
        uint64_t r0 = u * ur, rows = nrows - r0 < ur ? nrows - r0 : ur;
        units[u].nspans = 1;
        units[u].span[0] = diag ? (nlsr_span){a->ck, ti, u * in + u, 1}
                                : (nlsr_span){a->ck, ti, r0 * in, rows * in};
        units[u].tag = u;
    }
    if (rc == 0) rc = nlsr_stream_open(ctx, units, (size_t)nunits, ACTS_DEPTH, &s);
    const nlsr_unit *u;
    const unsigned char *const *data;
    while (rc == 0 && (rc = nlsr_stream_next(s, &u, &data)) == 1) {
        rc = 0;
        uint64_t row0 = u->span[0].first / in;
        size_t rows = (size_t)(u->span[0].count / in);
        if (diag) {
            float d;
            uint64_t j = u->tag;
            nlsr_to_f32(t->dtype, data[0], &d, 1);
            if (!(d >= 0.0f) || !isfinite(d))
                rc = nlsr_fail(e, NLSR_E_VALUE,
                               "activations %s: Gram matrix '%.200s': diagonal element %" PRIu64
                               " is %g (must be finite and >= 0)",
                               a->ck->path, t->name, j, (double)d);
            else
                sc->norms[j] = (float)sqrt((double)d);
        } else if (a->gram) {
            nlsr_to_f32(t->dtype, data[0], sc->G + row0 * in, rows * in);
        } else {
            nlsr_to_f32(t->dtype, data[0], x, rows * in);
            size_t bad = nlsr_first_nonfinite_f32(x, rows * in);
            if (bad < rows * in)
                rc = nlsr_fail(e, NLSR_E_VALUE,
                               "activations %s: '%.200s': X[%" PRIu64 "][%zu] is %g", a->ck->path,
                               t->name, row0 + bad / in, bad % in, (double)x[bad]);
            else if (want_gram)
                nlsr_gram_add_rows(sc->G, in, x, rows);
            else
                rc = nlsr_wanda_sumsq_add(sumsq, x, rows, in, row0, e);
        }
    }
    nlsr_stream_close(s);
    if (rc == 0 && !a->gram) {
        if (want_gram) nlsr_gram_finish(sc->G, in);
        else nlsr_wanda_norms_finish(sumsq, in, sc->norms);
    }
    if (rc == 0 && !want_gram) {
        size_t bad = nlsr_first_nonfinite_f32(sc->norms, in);
        if (bad < in)
            rc = nlsr_fail(e, NLSR_E_VALUE,
                           "activations %s: '%.200s': column %zu has norm %g (its sum of squares "
                           "overflows)",
                           a->ck->path, t->name, bad, (double)sc->norms[bad]);
    }
    if (rc == 0 && want_gram) {
        nlsr_err ge = {0, ""};
        if (nlsr_gram_check(sc->G, in, &ge) < 0)
            rc = nlsr_fail(e, NLSR_E_VALUE, "activations %s: '%.200s': %s", a->ck->path, t->name,
                           ge.msg);
    }
    free(units);
    nlsr_budget_free(b, x, (size_t)x_bytes);
    nlsr_budget_free(b, sumsq, (size_t)sumsq_bytes);
    return rc < 0 ? rc : 0;
}

int nlsr_scorer_begin(nlsr_ctx *ctx, const nlsr_realign_params *p, const nlsr_acts *acts,
                      const char *name, size_t out, size_t in, nlsr_scorer **scp)
{
    nlsr_err *e = &ctx->err;
    *scp = NULL;
    NLSR_FAIL_IF(p->scorer.kind != NLSR_SCORER_LOWRANK && p->scorer.kind != NLSR_SCORER_WANDA, e,
                 NLSR_E_USAGE, "no scorer object for the %s scorer",
                 nlsr_scorer_kind_name(p->scorer.kind));
    NLSR_FAIL_IF(out == 0 || in == 0, e, NLSR_E_USAGE, "tensor '%.200s' is empty", name);
    NLSR_FAIL_IF(p->scorer.kind == NLSR_SCORER_WANDA && !acts, e, NLSR_E_USAGE,
                 "the wanda scorer needs activations (--activations FILE)");
    nlsr_scorer *sc = calloc(1, sizeof *sc);
    NLSR_FAIL_IF(!sc, e, -ENOMEM, "out of memory");
    sc->ctx = ctx;
    sc->kind = p->scorer.kind;
    sc->out = out;
    sc->in = in;
    sc->sparsity = p->sparsity;
    int rc = (sc->name = strdup(name)) ? 0 : nlsr_fail(e, -ENOMEM, "out of memory");
    if (rc == 0 && acts) rc = load_acts(sc, acts);
    if (rc == 0 && sc->kind == NLSR_SCORER_LOWRANK) {
        nlsr_lowrank_params lp;
        rc = lowrank_params(p, ctx->threads, out, in, &lp, &sc->lerr);
        if (rc == 0) rc = nlsr_lowrank_begin(out, in, sc->G, &lp, &ctx->budget, &sc->lerr, &sc->lr);
        if (rc < 0) rc = lr_fail(sc, rc);
        if (rc == 0) {
            sc->identity = nlsr_lowrank_is_identity(sc->lr);
            if (nlsr_lowrank_passes_left(sc->lr) == 0) take_back(sc, &sc->G, sc->g_bytes);
        }
        if (rc == 0 && !sc->identity) {
            sc->R = row_block(out, in);
            sc->rows_bytes = (uint64_t)sc->R * in * sizeof(float);
            rc = nlsr_budget_alloc(&ctx->budget, (size_t)sc->rows_bytes,
                                   "low-rank scorer row block", (void **)&sc->rows, e);
        }
        /* Keep W for the SVD passes after the first when it takes at most half of what the
         * budget has left (the rule of the prepare's module cache, which comes after). */
        if (rc == 0 && nlsr_lowrank_passes_left(sc->lr) > 1) {
            uint64_t room = nlsr_budget_room(&ctx->budget);
            uint64_t bytes = (uint64_t)out * in * sizeof(float);
            nlsr_err ignored = {0, ""}; /* without it the passes read the checkpoints again */
            if (bytes <= room / 2 && bytes <= SIZE_MAX / 2 &&
                nlsr_budget_alloc(&ctx->budget, (size_t)bytes, "low-rank scorer: W",
                                  (void **)&sc->wc, &ignored) == 0)
                sc->wc_bytes = bytes;
        }
    }
    if (rc == 0 && sc->kind == NLSR_SCORER_WANDA &&
        p->scorer.wanda_select == NLSR_WANDA_MODE_ROW) {
        sc->per_row = 1;
        sc->thr_bytes = (uint64_t)out * sizeof(float);
        sc->acc_bytes = (uint64_t)in * sizeof(float);
        rc = nlsr_budget_alloc(&ctx->budget, (size_t)sc->thr_bytes, "Wanda row thresholds",
                               (void **)&sc->thr, e);
        if (rc == 0)
            rc = nlsr_budget_alloc(&ctx->budget, (size_t)sc->acc_bytes, "Wanda row scores",
                                   (void **)&sc->acc, e);
    }
    if (rc < 0) {
        nlsr_scorer_free(sc);
        return rc;
    }
    *scp = sc;
    return 0;
}

int nlsr_scorer_passes_left(const nlsr_scorer *sc)
{
    return sc->lr ? nlsr_lowrank_passes_left(sc->lr) : 0;
}

int nlsr_scorer_pass_begin(nlsr_scorer *sc)
{
    NLSR_FAIL_IF(!sc->lr || sc->in_pass, &sc->ctx->err, NLSR_E_USAGE,
                 "tensor '%.200s': scorer pass out of place", sc->name);
    int rc = nlsr_lowrank_pass_begin(sc->lr);
    if (rc < 0) return lr_fail(sc, rc);
    sc->next = 0;
    sc->in_pass = 1;
    sc->sc_r1 = 0;
    return 0;
}

int nlsr_scorer_feed(nlsr_scorer *sc, uint64_t first, size_t cnt, const float *delta)
{
    size_t in = sc->in, out = sc->out;
    uint64_t total = (uint64_t)out * in;
    NLSR_FAIL_IF(!sc->in_pass || first != sc->next || cnt > total - first, &sc->ctx->err,
                 NLSR_E_USAGE,
                 "tensor '%.200s': scorer fed elements [%" PRIu64 ", +%zu) where %" PRIu64
                 " was expected",
                 sc->name, first, cnt, sc->next);
    while (cnt > 0) {
        size_t b0 = (size_t)(first / in) / sc->R * sc->R;
        size_t b1 = b0 + sc->R < out ? b0 + sc->R : out;
        uint64_t pos = first - (uint64_t)b0 * in, room = (uint64_t)(b1 - b0) * in - pos;
        size_t take = (uint64_t)cnt < room ? cnt : (size_t)room;
        memcpy(sc->rows + pos, delta, take * sizeof(float));
        if (sc->wc && sc->passes_done == 0)
            memcpy(sc->wc + (uint64_t)b0 * in + pos, delta, take * sizeof(float));
        first += take;
        delta += take;
        cnt -= take;
        if (first == (uint64_t)b1 * in) {
            int rc = nlsr_lowrank_feed(sc->lr, b0, b1, sc->rows);
            if (rc < 0) return lr_fail(sc, rc);
        }
    }
    sc->next = first;
    return 0;
}

int nlsr_scorer_pass_end(nlsr_scorer *sc)
{
    NLSR_FAIL_IF(!sc->in_pass || sc->next != (uint64_t)sc->out * sc->in, &sc->ctx->err,
                 NLSR_E_USAGE, "tensor '%.200s': scorer pass ended at element %" PRIu64,
                 sc->name, sc->next);
    sc->in_pass = 0;
    sc->passes_done++;
    int rc = nlsr_lowrank_pass_end(sc->lr);
    if (rc < 0) return lr_fail(sc, rc);
    if (nlsr_lowrank_passes_left(sc->lr) > 0) return 0;
    /* G is borrowed by the kernel until its last pass; W is no longer needed. */
    take_back(sc, &sc->G, sc->g_bytes);
    take_back(sc, &sc->wc, sc->wc_bytes);
    /* The histogram, candidate and mask passes each need every score: keep them when they
     * take at most half of what the budget has left (as the prepare's module cache), so the
     * projection is computed once. */
    uint64_t room = nlsr_budget_room(&sc->ctx->budget);
    uint64_t bytes = (uint64_t)sc->out * sc->in * sizeof(float);
    nlsr_err ignored = {0, ""}; /* without the buffer the scores are recomputed per pass */
    if (!sc->identity && bytes <= room / 2 && bytes <= SIZE_MAX / 2 &&
        nlsr_budget_alloc(&sc->ctx->budget, (size_t)bytes, "low-rank scores",
                          (void **)&sc->all, &ignored) == 0)
        sc->all_bytes = bytes;
    return 0;
}

int nlsr_scorer_can_replay(const nlsr_scorer *sc)
{
    return sc->wc && sc->passes_done > 0 && sc->in_pass && sc->next == 0;
}

int nlsr_scorer_replay(nlsr_scorer *sc)
{
    NLSR_FAIL_IF(!nlsr_scorer_can_replay(sc), &sc->ctx->err, NLSR_E_USAGE,
                 "tensor '%.200s': no kept W to feed", sc->name);
    size_t in = sc->in, out = sc->out;
    /* The same row blocks as nlsr_scorer_feed: the same sums, the same result. */
    for (size_t b0 = 0; b0 < out; b0 += sc->R) {
        size_t b1 = b0 + sc->R < out ? b0 + sc->R : out;
        int rc = nlsr_lowrank_feed(sc->lr, b0, b1, sc->wc + (uint64_t)b0 * in);
        if (rc < 0) return lr_fail(sc, rc);
    }
    sc->next = (uint64_t)out * in;
    return 0;
}

int nlsr_scorer_needs_delta(const nlsr_scorer *sc)
{
    return sc->kind == NLSR_SCORER_WANDA || sc->identity;
}

int nlsr_scorer_scores(nlsr_scorer *sc, uint64_t first, size_t cnt, const float *delta,
                       float *scores)
{
    nlsr_err *e = &sc->ctx->err;
    size_t in = sc->in, out = sc->out;
    NLSR_FAIL_IF(first > (uint64_t)out * in || cnt > (uint64_t)out * in - first, e, NLSR_E_USAGE,
                 "tensor '%.200s': scores asked for elements outside the tensor", sc->name);
    if (nlsr_scorer_needs_delta(sc)) {
        NLSR_FAIL_IF(!delta, e, NLSR_E_USAGE, "tensor '%.200s': the %s scores need the delta",
                     sc->name, nlsr_scorer_kind_name(sc->kind));
        if (sc->identity) {
            /* X = I at full rank: W_hat = W, so the scores are |W| (the magnitude scores). */
            for (size_t i = 0; i < cnt; i++) scores[i] = fabsf(delta[i]);
            return 0;
        }
        while (cnt > 0) {
            size_t col = (size_t)(first % in), take = in - col < cnt ? in - col : cnt;
            nlsr_wanda_scores(delta, 1, take, sc->norms + col, scores);
            first += take;
            delta += take;
            scores += take;
            cnt -= take;
        }
        return 0;
    }
    NLSR_FAIL_IF(nlsr_lowrank_passes_left(sc->lr) > 0 || sc->in_pass, e, NLSR_E_USAGE,
                 "tensor '%.200s': scores asked before the low-rank passes ended", sc->name);
    while (cnt > 0) {
        size_t row = (size_t)(first / in);
        int held = sc->all ? row < sc->all_rows
                           : sc->sc_r1 > 0 && row >= sc->sc_r0 && row < sc->sc_r1;
        if (!held) {
            /* The row block holding `row` (blocks of R rows from row 0, whatever is asked). */
            size_t b0 = row / sc->R * sc->R, b1 = b0 + sc->R < out ? b0 + sc->R : out;
            if (sc->all && b0 != sc->all_rows) b0 = sc->all_rows; /* asked out of order */
            if (sc->all) b1 = b0 + sc->R < out ? b0 + sc->R : out;
            float *dst = sc->all ? sc->all + (uint64_t)b0 * in : sc->rows;
            int rc = nlsr_lowrank_score_block(sc->lr, b0, b1, NULL, dst);
            if (rc < 0) return lr_fail(sc, rc);
            size_t n = (b1 - b0) * in;
            for (size_t i = 0; i < n; i++)
                if (isnan(dst[i]))
                    return nlsr_fail(e, NLSR_E_VALUE,
                                     "tensor '%.200s': the low-rank projection is NaN at "
                                     "element [%zu][%zu]",
                                     sc->name, b0 + i / in, i % in);
            if (sc->all) {
                sc->all_rows = b1;
                continue;
            }
            sc->sc_r0 = b0;
            sc->sc_r1 = b1;
        }
        const float *src = sc->all ? sc->all : sc->rows;
        uint64_t base = sc->all ? 0 : (uint64_t)sc->sc_r0 * in;
        uint64_t end = sc->all ? (uint64_t)sc->all_rows * in : (uint64_t)sc->sc_r1 * in;
        uint64_t pos = first - base, room = end - first;
        size_t take = (uint64_t)cnt < room ? cnt : (size_t)room;
        memcpy(scores, src + pos, take * sizeof(float));
        first += take;
        scores += take;
        cnt -= take;
    }
    return 0;
}

int nlsr_scorer_per_row(const nlsr_scorer *sc)
{
    return sc->per_row;
}

int nlsr_scorer_row_add(nlsr_scorer *sc, uint64_t first, size_t cnt, const float *scores)
{
    size_t in = sc->in;
    NLSR_FAIL_IF(!sc->per_row || first != sc->row_next ||
                     cnt > (uint64_t)sc->out * in - first,
                 &sc->ctx->err, NLSR_E_USAGE,
                 "tensor '%.200s': row scores [%" PRIu64 ", +%zu) out of order", sc->name, first,
                 cnt);
    uint64_t k = nlsr_mask_k(in, sc->sparsity);
    while (cnt > 0) {
        size_t col = (size_t)(first % in), take = in - col < cnt ? in - col : cnt;
        memcpy(sc->acc + col, scores, take * sizeof(float));
        first += take;
        scores += take;
        cnt -= take;
        if (col + take == in) {
            /* The row is complete: its k-th smallest (ties stay out: mask = score > thr). */
            size_t row = (size_t)(first / in) - 1;
            sc->thr[row] = k >= in ? INFINITY : nlsr_kth_inplace(sc->acc, in, k);
        }
    }
    sc->row_next = first;
    return 0;
}

const float *nlsr_scorer_row_thresholds(const nlsr_scorer *sc)
{
    return sc->per_row ? sc->thr : NULL;
}

void nlsr_scorer_delta(const float *e, const float *b, float *d, size_t n)
{
    for (size_t i = 0; i < n; i++) d[i] = e[i] - b[i];
}

/* ---- plans --------------------------------------------------------------------------------- */

int nlsr_scorer_module_need(const nlsr_realign_params *p, const nlsr_acts *acts,
                            const char *name, size_t out, size_t in, nlsr_scorer_need *need,
                            nlsr_err *e)
{
    memset(need, 0, sizeof *need);
    need->data_passes = 3;
    need->data_passes_w = 3;
    need->data_passes_cached = 1;
    uint64_t n = (uint64_t)out * in;
    if (p->scorer.kind == NLSR_SCORER_MAGNITUDE) return 0;
    if (n == 0 || nlsr_mask_k(n, p->sparsity) >= n) {
        need->data_passes = need->data_passes_w = 1; /* the empty mask: nothing is scored */
        return 0;
    }
    /* Reading the activations: the f32 rows block (rows) and the stream's buffers. */
    uint64_t act_tmp = 0;
    if (acts) {
        size_t ti = 0;
        NLSR_FAIL_IF(nlsr_ckpt_find(acts->ck, name, &ti) != 0, e, NLSR_E_MISMATCH,
                     "activations %s: no entry for target module '%.200s'", acts->ck->path, name);
        const st_tensor *t = acts->ck->t[ti].t;
        uint64_t ur = acts_unit_rows(in);
        need->acts_bytes = acts->gram && p->scorer.kind == NLSR_SCORER_WANDA
                               ? (uint64_t)in * sizeof(float) /* the diagonal */
                               : t->end - t->begin;
        act_tmp = ACTS_DEPTH * (ur * in * nlsr_dtype_size(t->dtype) + 3 * 4096) +
                  (acts->gram ? 0 : ur * in * sizeof(float));
    }
    if (p->scorer.kind == NLSR_SCORER_LOWRANK) {
        nlsr_lowrank_params lp;
        nlsr_lowrank_info info;
        NLSR_FORWARD(lowrank_params(p, 1, out, in, &lp, e));
        NLSR_FORWARD(nlsr_lowrank_plan(out, in, acts != NULL, &lp, &info, e));
        uint64_t g = acts ? (uint64_t)in * in * sizeof(float) : 0;
        uint64_t rows = info.identity ? 0 : (uint64_t)row_block(out, in) * in * sizeof(float);
        uint64_t run = g + info.peak_bytes + rows, load = g + act_tmp;
        need->r = info.r;
        need->exact = info.exact;
        need->identity = info.identity;
        need->svd_passes = info.passes;
        need->data_passes = info.identity ? 3 : info.passes + 1;
        need->data_passes_w = info.passes > 1 ? 2 : need->data_passes;
        need->w_bytes = info.passes > 1 ? n * sizeof(float) : 0;
        need->peak_bytes = run > load ? run : load;
        need->resident_bytes = info.resident_bytes + rows + (info.passes == 0 ? g : 0);
        return 0;
    }
    int row = p->scorer.wanda_select == NLSR_WANDA_MODE_ROW;
    uint64_t norms = (uint64_t)in * sizeof(float);
    uint64_t sel = row ? (uint64_t)out * sizeof(float) + (uint64_t)in * sizeof(float) : 0;
    uint64_t load = (acts && !acts->gram ? (uint64_t)in * 8 : 0) + act_tmp;
    need->data_passes = need->data_passes_w = row ? 2 : 3;
    need->peak_bytes = norms + sel + load; /* sel is allocated after the load: an upper bound */
    need->resident_bytes = norms + sel;
    return 0;
}

int nlsr_scorer_check_modules(nlsr_ctx *ctx, const nlsr_ckpt *src, const nlsr_realign_params *p,
                              const nlsr_acts *acts, uint64_t reserve)
{
    nlsr_err *e = &ctx->err;
    uint64_t room = nlsr_budget_room(&ctx->budget);
    for (size_t i = 0; i < src->n; i++) {
        const st_tensor *t = src->t[i].t;
        if (!nlsr_is_target(t, p->targets, p->ntargets)) continue;
        size_t out = (size_t)t->shape[0], in = (size_t)t->shape[1];
        nlsr_scorer_need need;
        nlsr_err le = {0, ""};
        int rc = nlsr_scorer_module_need(p, acts, t->name, out, in, &need, &le);
        if (rc < 0) return nlsr_fail(e, rc, "tensor '%.200s': %s", t->name, le.msg);
        char rk[48] = "";
        if (need.r) snprintf(rk, sizeof rk, " at rank %zu", need.r);
        NLSR_FAIL_IF(need.peak_bytes > room || reserve > room - need.peak_bytes, e,
                     NLSR_E_BUDGET,
                     "memory budget of %" PRIu64 " bytes too small: the %s scorer of '%.200s' "
                     "(%zu x %zu%s) needs %" PRIu64 " bytes, and the prepare's stream %" PRIu64
                     " more, with %" PRIu64 " in use",
                     ctx->budget.limit, nlsr_scorer_kind_name(p->scorer.kind), t->name, out, in, rk,
                     need.peak_bytes, reserve, ctx->budget.used);
    }
    return 0;
}

/* Per distinct module shape. */
typedef struct shape_row {
    size_t out, in, count;
    nlsr_scorer_need need;
    int passes;                 /* expected under the budget: W kept when it fits */
} shape_row;

/* What the prepare holds beside the scorer: its per-block scratch and histograms (4 MiB at the
 * default block size) and the stream's buffers. */
#define PREP_FIXED_BYTES (5ull << 20)

/* Passes over base + aligned expected for a module under `budget` (0: unlimited) when the
 * module itself is not cached: W is kept when it fits half of what is left. */
static int expected_passes(const nlsr_scorer_need *n, uint64_t budget)
{
    if (!n->w_bytes) return n->data_passes;
    uint64_t used = PREP_FIXED_BYTES + n->peak_bytes;
    uint64_t room = nlsr_budget_room_of(budget, used);
    return n->w_bytes <= room / 2 ? n->data_passes_w : n->data_passes;
}

static cJSON *plan_json(const nlsr_realign_params *p, const shape_row *g, size_t ng,
                        uint64_t rd, uint64_t rd_mag, uint64_t acts_rd, uint64_t peak,
                        int passes_max, uint64_t budget)
{
    cJSON *o = cJSON_CreateObject(), *mods;
    if (!o) return NULL;
    cJSON_AddItemToObject(o, "params", nlsr_scorer_params_json(&p->scorer));
    static const char *const keys[] = {"sparsity", NULL};
    if (nlsr_params_add_json_keys(o, p, keys) != 0) goto oom;
    if (!(mods = cJSON_AddArrayToObject(o, "modules"))) goto oom;
    for (size_t i = 0; i < ng; i++) {
        cJSON *m = cJSON_CreateObject(), *sh = cJSON_CreateArray();
        if (!m || !sh) {
            cJSON_Delete(m);
            cJSON_Delete(sh);
            goto oom;
        }
        cJSON_AddItemToArray(mods, m);
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)g[i].out));
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)g[i].in));
        cJSON_AddItemToObject(m, "shape", sh);
        cJSON_AddNumberToObject(m, "count", (double)g[i].count);
        const nlsr_scorer_need *n = &g[i].need;
        if (p->scorer.kind == NLSR_SCORER_LOWRANK) {
            cJSON_AddNumberToObject(m, "rank", (double)n->r);
            cJSON_AddStringToObject(m, "method", n->identity ? "identity"
                                                 : n->exact  ? "exact"
                                                             : "randomized");
            cJSON_AddNumberToObject(m, "svd_passes", n->svd_passes);
        }
        cJSON_AddNumberToObject(m, "passes", g[i].passes);
        cJSON_AddNumberToObject(m, "passes_without_w", n->data_passes);
        cJSON_AddNumberToObject(m, "passes_cached", n->data_passes_cached);
        cJSON_AddNumberToObject(m, "w_bytes", (double)n->w_bytes);
        cJSON_AddNumberToObject(m, "peak_bytes", (double)n->peak_bytes);
        cJSON_AddNumberToObject(m, "resident_bytes", (double)n->resident_bytes);
        cJSON_AddNumberToObject(m, "activation_bytes", (double)n->acts_bytes);
    }
    cJSON_AddNumberToObject(o, "passes_max", passes_max);
    cJSON_AddNumberToObject(o, "read_bytes", (double)rd);
    cJSON_AddNumberToObject(o, "magnitude_read_bytes", (double)rd_mag);
    cJSON_AddNumberToObject(o, "extra_read_bytes", (double)rd - (double)rd_mag);
    cJSON_AddNumberToObject(o, "activation_read_bytes", (double)acts_rd);
    cJSON_AddNumberToObject(o, "peak_bytes", (double)peak);
    cJSON_AddBoolToObject(o, "fits_budget", budget == 0 || peak <= budget);
    return o;
oom:
    cJSON_Delete(o);
    return NULL;
}

static void plan_text(const nlsr_realign_params *p, const shape_row *g, size_t ng, uint64_t rd,
                      uint64_t rd_mag, uint64_t acts_rd, uint64_t peak, int passes_max,
                      uint64_t budget, double rbw, FILE *out)
{
    const nlsr_scorer_params *sp = &p->scorer;
    char a[32], b[32], c[32];
    fprintf(out, "\nscorer: %s", nlsr_scorer_kind_name(sp->kind));
    if (sp->kind == NLSR_SCORER_LOWRANK) {
        if (sp->rank) fprintf(out, ", rank %" PRIu64, sp->rank);
        else fprintf(out, ", rank fraction %g of min(out, in)", sp->rank_fraction);
        fprintf(out, ", %s reading at sparsity %g, %s SVD (%d power iterations, oversample %" PRIu64
                     ", seed %" PRIu64 "), %s\n",
                nlsr_rank_mode_name(sp->rank_mode), p->sparsity,
                sp->exact_svd ? "exact" : "randomized (exact up to 2^20 elements)",
                sp->power_iters, sp->oversample, sp->seed,
                sp->activations ? sp->activations : "X = I (no activations)");
    } else {
        fprintf(out, ", %s selection, activations %s\n", nlsr_wanda_mode_name(sp->wanda_select),
                sp->activations);
    }
    fprintf(out, "  per module shape: passes over base + aligned when the module is streamed (1 "
                 "when it fits half the budget left), scorer memory peak / held while scoring\n");
    for (size_t i = 0; i < ng; i++) {
        const nlsr_scorer_need *n = &g[i].need;
        fprintf(out, "    %zu x %zu (x%zu):", g[i].out, g[i].in, g[i].count);
        if (sp->kind == NLSR_SCORER_LOWRANK)
            fprintf(out, " r %zu, %s, %d SVD pass%s,", n->r,
                    n->identity ? "identity" : n->exact ? "exact" : "randomized", n->svd_passes,
                    n->svd_passes == 1 ? "" : "es");
        fprintf(out, " %d pass%s", g[i].passes, g[i].passes == 1 ? "" : "es");
        if (n->w_bytes)
            fprintf(out, " (%d without keeping W, %s)", n->data_passes,
                    nlsr_fmt_bytes((double)n->w_bytes, c, sizeof c));
        fprintf(out, ", magnitude 3; %s / %s", nlsr_fmt_bytes((double)n->peak_bytes, a, sizeof a),
                nlsr_fmt_bytes((double)n->resident_bytes, b, sizeof b));
        if (n->acts_bytes)
            fprintf(out, ", activations %s", nlsr_fmt_bytes((double)n->acts_bytes, c, sizeof c));
        fputc('\n', out);
    }
    fprintf(out, "  reads of the target modules (streamed): %s with %s vs %s with magnitude (at "
                 "most %d passes per module vs 3)",
            nlsr_fmt_bytes((double)rd, a, sizeof a), nlsr_scorer_kind_name(sp->kind),
            nlsr_fmt_bytes((double)rd_mag, b, sizeof b), passes_max);
    if (rbw > 0)
        fprintf(out, ", %+.1f s at the read speed", ((double)rd - (double)rd_mag) / rbw);
    fputc('\n', out);
    if (acts_rd)
        fprintf(out, "  activations read: %s\n", nlsr_fmt_bytes((double)acts_rd, a, sizeof a));
    fprintf(out, "  memory: the scorer needs up to %s (largest module) on top of the prepare's "
                 "buffers, and keeps W and the scores (4 bytes per element each) when they fit "
                 "half the budget left; budget %s: %s\n",
            nlsr_fmt_bytes((double)peak, a, sizeof a),
            budget ? nlsr_fmt_bytes((double)budget, b, sizeof b) : "unlimited",
            budget == 0 || peak <= budget ? "fits" : "does not fit");
}

int nlsr_scorer_plan_print(nlsr_ctx *ctx, const nlsr_plan *plan, const nlsr_ckpt *src,
                           const nlsr_realign_params *p, double read_bw, double write_bw,
                           const char *bw_source, int json, FILE *out)
{
    nlsr_err *e = &ctx->err;
    const nlsr_ckpt *base = plan->job.ck[0];
    nlsr_acts *acts = NULL;
    shape_row *g = NULL;
    size_t ng = 0;
    uint64_t rd = 0, rd_mag = 0, acts_rd = 0, peak = 0;
    int passes_max = 0;
    cJSON *root = NULL;
    int rc = nlsr_params_validate(p, e);
    if (rc == 0) rc = nlsr_scorer_check_params(ctx, &p->scorer);
    if (rc == 0 && p->scorer.activations)
        rc = nlsr_acts_open(ctx, p->scorer.activations, src, p, &acts);
    if (rc == 0 && !(g = calloc(src->n ? src->n : 1, sizeof *g)))
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < src->n; i++) {
        const st_tensor *t = src->t[i].t;
        if (!nlsr_is_target(t, p->targets, p->ntargets)) continue;
        size_t o = (size_t)t->shape[0], in = (size_t)t->shape[1], bi = 0;
        uint64_t bytes = t->end - t->begin;
        if (base && nlsr_ckpt_find(base, t->name, &bi) == 0)
            bytes += base->t[bi].t->end - base->t[bi].t->begin;
        nlsr_scorer_need n;
        nlsr_err le = {0, ""};
        rc = nlsr_scorer_module_need(p, acts, t->name, o, in, &n, &le);
        if (rc < 0) {
            rc = nlsr_fail(e, rc, "tensor '%.200s': %s", t->name, le.msg);
            break;
        }
        int passes = expected_passes(&n, plan->job.budget);
        rd += bytes * (uint64_t)passes;
        rd_mag += bytes * (nlsr_mask_k((uint64_t)o * in, p->sparsity) >= (uint64_t)o * in ? 1 : 3);
        acts_rd += n.acts_bytes;
        if (n.peak_bytes > peak) peak = n.peak_bytes;
        if (passes > passes_max) passes_max = passes;
        size_t k = 0;
        while (k < ng && !(g[k].out == o && g[k].in == in)) k++;
        if (k == ng) {
            g[ng].out = o;
            g[ng].in = in;
            g[ng].need = n;
            g[ng].passes = passes;
            ng++;
        }
        g[k].count++;
        g[k].need.acts_bytes = n.acts_bytes > g[k].need.acts_bytes ? n.acts_bytes
                                                                   : g[k].need.acts_bytes;
    }
    uint64_t budget = plan->job.budget;
    if (rc == 0 && !json) {
        rc = nlsr_plan_print_to(plan, read_bw, write_bw, bw_source, 0, out);
        if (rc == 0)
            plan_text(p, g, ng, rd, rd_mag, acts_rd, peak, passes_max, budget, read_bw, out);
    } else if (rc == 0) {
        /* The plan's own JSON object gets a "scorer" member. */
        cJSON *sj = NULL;
        if (!(root = nlsr_plan_json(plan, read_bw, write_bw, bw_source)) ||
            !(sj = plan_json(p, g, ng, rd, rd_mag, acts_rd, peak, passes_max, budget)))
            rc = nlsr_fail(e, -ENOMEM, "plan: out of memory");
        if (rc == 0) {
            cJSON_AddItemToObject(root, "scorer", sj);
            rc = nlsr_plan_print_json(root, out);
            root = NULL; /* printed and freed */
            if (rc < 0) rc = nlsr_fail(e, rc, "plan: out of memory");
        }
    }
    cJSON_Delete(root);
    free(g);
    nlsr_acts_free(acts);
    return rc;
}
