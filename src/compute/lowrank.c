/* SPDX-License-Identifier: Apache-2.0 */
#include "../common/params.h"
#include "lowrank.h"

#include <cblas.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "selection.h"

/* Rows per chunk where the end of the randomized method converts or rewrites Q and Z in place:
 * small enough that its scratch is negligible, large enough for BLAS to run at speed. */
#define CHUNK_ROWS 256u

enum stage { ST_FORWARD, ST_ADJOINT, ST_COLLECT, ST_DONE, ST_FAILED };

/* The byte size of every buffer the scorer allocates, fixed by the plan. The real allocations
 * take exactly these sizes in the order the plan simulates, so the planned peak is the peak the
 * budget records (tests/test_lowrank.c checks it to the byte). */
typedef struct sizes {
    /* randomized: passes */
    uint64_t q, z, t, tau, lqwork;
    /* randomized: Rayleigh-Ritz at the end */
    uint64_t c, scratch, w, evwork, eviwork, vr, tmp;
    /* exact */
    uint64_t wd, gd, wg, gwork, giwork, a, s, ub, vtb, sddwork, sddiwork, pd;
    /* both: what stays */
    uint64_t u, p;
    lapack_int lq_lwork, ev_lwork, ev_liwork, g_lwork, g_liwork, sdd_lwork;
} sizes;

struct nlsr_lowrank {
    nlsr_budget *b;
    nlsr_err *e;
    size_t out, in;
    const float *G;
    nlsr_lowrank_params p;
    nlsr_lowrank_info info;
    sizes sz;
    int stage, iter, in_pass;
    size_t next_row;
    float *Q, *Z, *T, *tau, *lqwork; /* randomized; T is NULL without G (then T = Z) */
    double *Wd;                      /* exact: W collected in double */
    float *U, *P;                    /* the result: U_r (out x r), P = U_r^T W (r x in) */
    uint64_t u_charged;              /* what U is charged (Q's size if shrinking failed) */
};

/* ---- sizes and the plan ------------------------------------------------------------------ */

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    return a && b > UINT64_MAX / a ? UINT64_MAX : a * b;
}

static uint64_t sat_mul3(uint64_t a, uint64_t b, uint64_t c)
{
    return sat_mul(sat_mul(a, b), c);
}

/* Peak tracking for the plan's replay of the allocation sequence. */
typedef struct memsim {
    uint64_t cur, peak;
} memsim;

static void sim_take(memsim *m, uint64_t bytes)
{
    m->cur = bytes > UINT64_MAX - m->cur ? UINT64_MAX : m->cur + bytes;
    if (m->cur > m->peak) m->peak = m->cur;
}

static void sim_give(memsim *m, uint64_t bytes)
{
    m->cur = bytes > m->cur ? 0 : m->cur - bytes;
}

/* LAPACK's optimal workspace from a query. Float queries are rounded up with a margin because
 * a float cannot hold every integer above 2^24 and a workspace one short is an error. */
static lapack_int lwork_of(double q)
{
    double v = ceil(q * (1.0 + 1e-6)) + 1.0;
    return v > 2147483647.0 ? -1 : (lapack_int)v;
}

static int min_int(lapack_int a, lapack_int b)
{
    return a < b ? a : b;
}

static lapack_int max_li(lapack_int a, lapack_int b)
{
    return a > b ? a : b;
}

/* Workspace for orth_rows on nrows x l: LQ factorization and the explicit orthonormal factor. */
static lapack_int lq_query(size_t l, size_t nrows)
{
    float dummy = 0, q1 = 0, q2 = 0;
    lapack_int m = (lapack_int)l, n = (lapack_int)nrows;
    if (LAPACKE_sgelqf_work(LAPACK_COL_MAJOR, m, n, &dummy, m, &dummy, &q1, -1) != 0) return -1;
    if (LAPACKE_sorglq_work(LAPACK_COL_MAJOR, m, n, m, &dummy, m, &dummy, &q2, -1) != 0) return -1;
    lapack_int a = lwork_of(q1), b = lwork_of(q2);
    return a < 0 || b < 0 ? -1 : max_li(max_li(a, b), m);
}

static int evd_query(size_t n, lapack_int *lwork, lapack_int *liwork)
{
    double dummy = 0, q = 0;
    lapack_int iq = 0, ni = (lapack_int)n;
    if (LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', ni, &dummy, ni, &dummy, &q, -1, &iq, -1)
        != 0)
        return -1;
    *lwork = lwork_of(q);
    *liwork = iq > 0 ? iq : 1;
    return *lwork < 0 ? -1 : 0;
}

static lapack_int sdd_query(size_t m, size_t n)
{
    double dummy = 0, q = 0;
    lapack_int iq = 0;
    lapack_int mi = (lapack_int)m, ni = (lapack_int)n, k = min_int(mi, ni);
    if (LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'S', mi, ni, &dummy, mi, &dummy, &dummy, mi, &dummy,
                            k, &q, -1, &iq) != 0)
        return -1;
    return lwork_of(q);
}

static const char *method_name(int exact)
{
    return exact ? "exact SVD" : "randomized SVD";
}

/* Fills info and sz; replays the allocation sequence of begin, the passes and the end to get
 * the peak. */
static int plan_sizes(size_t out, size_t in, int has_gram, const nlsr_lowrank_params *p,
                      nlsr_lowrank_info *info, sizes *sz, nlsr_err *e)
{
    const uint64_t SF = sizeof(float), SD = sizeof(double), SI = sizeof(lapack_int);
    memset(info, 0, sizeof *info);
    memset(sz, 0, sizeof *sz);
    NLSR_FAIL_IF(out == 0 || in == 0, e, NLSR_E_USAGE, "low-rank scorer: empty %zu x %zu matrix",
                 out, in);
    NLSR_FAIL_IF(out > INT32_MAX || in > INT32_MAX, e, NLSR_E_USAGE,
                 "low-rank scorer: %zu x %zu is beyond 32-bit BLAS dimensions", out, in);
    NLSR_FAIL_IF(p->rank == 0, e, NLSR_E_USAGE, "low-rank scorer: rank 0 keeps nothing");
    NLSR_FAIL_IF(p->power_iters < 0, e, NLSR_E_USAGE,
                 "low-rank scorer: power iterations must be >= 0 (got %d)", p->power_iters);
    size_t m = out < in ? out : in;
    size_t r = p->rank < m ? p->rank : m;
    info->r = r;
    /* X = I: U_r spans the whole range of W. Any G: r = out makes U_r U_r^T = I. */
    if (r == m && (!has_gram || out <= in)) {
        info->identity = 1;
        return 0;
    }
    info->exact = p->method == NLSR_LOWRANK_EXACT ||
                  (p->method == NLSR_LOWRANK_AUTO && sat_mul(out, in) <= NLSR_LOWRANK_EXACT_MAX);
    memsim ms = {0, 0};
    if (info->exact) {
        /* LAPACK indexes with 32-bit integers: the whole matrix must be addressable. */
        NLSR_FAIL_IF(sat_mul(out, in) > INT32_MAX || (has_gram && sat_mul(in, in) > INT32_MAX), e,
                     NLSR_E_USAGE,
                     "exact SVD of a %zu x %zu matrix exceeds LAPACK's 32-bit indices; use the "
                     "randomized method",
                     out, in);
        info->passes = 1;
        sz->wd = sat_mul3(out, in, SD);
        if (has_gram) {
            NLSR_FAIL_IF(evd_query(in, &sz->g_lwork, &sz->g_liwork) < 0, e, NLSR_E_USAGE,
                         "exact SVD: LAPACK workspace query failed for n = %zu", in);
            sz->gd = sat_mul3(in, in, SD);
            sz->wg = sat_mul(in, SD);
            sz->gwork = sat_mul((uint64_t)sz->g_lwork, SD);
            sz->giwork = sat_mul((uint64_t)sz->g_liwork, SI);
            sz->a = sat_mul3(out, in, SD);
            sz->pd = sat_mul3(r, in, SD);
        }
        sz->sdd_lwork = sdd_query(in, out);
        NLSR_FAIL_IF(sz->sdd_lwork < 0, e, NLSR_E_USAGE,
                     "exact SVD: LAPACK workspace query failed for %zu x %zu", out, in);
        sz->s = sat_mul(m, SD);
        sz->ub = sat_mul3(in, m, SD);
        sz->vtb = sat_mul3(m, out, SD);
        sz->sddwork = sat_mul((uint64_t)sz->sdd_lwork, SD);
        sz->sddiwork = sat_mul3(8, m, SI);
        sz->u = sat_mul3(out, r, SF);
        sz->p = sat_mul3(r, in, SF);
        /* begin */
        sim_take(&ms, sz->wd);
        /* end (finish_exact) */
        if (has_gram) {
            sim_take(&ms, sz->gd);
            sim_take(&ms, sz->wg);
            sim_take(&ms, sz->gwork);
            sim_take(&ms, sz->giwork);
            sim_give(&ms, sz->gwork);
            sim_give(&ms, sz->giwork);
            sim_take(&ms, sz->a);
            sim_give(&ms, sz->gd);
            sim_give(&ms, sz->wg);
        }
        sim_take(&ms, sz->s);
        sim_take(&ms, sz->ub);
        sim_take(&ms, sz->vtb);
        sim_take(&ms, sz->sddwork);
        sim_take(&ms, sz->sddiwork);
        sim_give(&ms, sz->sddwork);
        sim_give(&ms, sz->sddiwork);
        sim_give(&ms, sz->a);
        sim_take(&ms, sz->u);
        sim_take(&ms, sz->p);
        sim_take(&ms, sz->pd);
    } else {
        size_t l = p->oversample > m - r ? m : r + p->oversample;
        info->l = l;
        /* With l = min(out, in) the first range is already all of range(W G): iterating
         * cannot improve it. */
        info->power_iters = l == m ? 0 : p->power_iters;
        NLSR_FAIL_IF(info->power_iters > 1000, e, NLSR_E_USAGE,
                     "low-rank scorer: %d power iterations is not a sensible number",
                     info->power_iters);
        info->passes = 2 + 2 * info->power_iters;
        NLSR_FAIL_IF(sat_mul(out, l) > INT32_MAX || sat_mul(in, l) > INT32_MAX, e, NLSR_E_USAGE,
                     "randomized SVD of a %zu x %zu matrix with %zu columns exceeds LAPACK's "
                     "32-bit indices",
                     out, in, l);
        lapack_int w1 = lq_query(l, out), w2 = lq_query(l, in);
        NLSR_FAIL_IF(w1 < 0 || w2 < 0 || evd_query(l, &sz->ev_lwork, &sz->ev_liwork) < 0, e,
                     NLSR_E_USAGE, "randomized SVD: LAPACK workspace query failed (l = %zu)", l);
        sz->lq_lwork = max_li(w1, w2);
        size_t chz = in < CHUNK_ROWS ? in : CHUNK_ROWS, chu = out < CHUNK_ROWS ? out : CHUNK_ROWS;
        sz->q = sat_mul3(out, l, SF);
        sz->z = sat_mul3(in, l, SF);
        sz->t = has_gram ? sat_mul3(in, l, SF) : 0;
        sz->tau = sat_mul(l, SF);
        sz->lqwork = sat_mul((uint64_t)sz->lq_lwork, SF);
        sz->c = sat_mul3(l, l, SD);
        sz->scratch = sat_mul3(2 * chz, l, SD);
        sz->w = sat_mul(l, SD);
        sz->evwork = sat_mul((uint64_t)sz->ev_lwork, SD);
        sz->eviwork = sat_mul((uint64_t)sz->ev_liwork, SI);
        sz->vr = sat_mul3(l, r, SF);
        sz->tmp = sat_mul3(chu, r, SF);
        sz->u = sat_mul3(out, r, SF);
        sz->p = sat_mul3(r, in, SF);
        /* begin */
        sim_take(&ms, sz->q);
        sim_take(&ms, sz->z);
        sim_take(&ms, sz->t);
        sim_take(&ms, sz->tau);
        sim_take(&ms, sz->lqwork);
        /* end (finish_randomized) */
        sim_give(&ms, sz->tau);
        sim_give(&ms, sz->lqwork);
        sim_take(&ms, sz->c);
        sim_take(&ms, sz->scratch);
        sim_give(&ms, sz->scratch);
        sim_take(&ms, sz->w);
        sim_take(&ms, sz->evwork);
        sim_take(&ms, sz->eviwork);
        sim_give(&ms, sz->evwork);
        sim_give(&ms, sz->eviwork);
        sim_take(&ms, sz->vr);
        sim_give(&ms, sz->c);
        sim_give(&ms, sz->w);
        sim_take(&ms, sz->p);
        sim_give(&ms, sz->z);
        sim_give(&ms, sz->t);
        sim_take(&ms, sz->tmp);
    }
    info->peak_bytes = ms.peak;
    info->resident_bytes = sz->u + sz->p;
    return 0;
}

int nlsr_lowrank_plan(size_t out, size_t in, int has_gram, const nlsr_lowrank_params *p,
                      nlsr_lowrank_info *info, nlsr_err *e)
{
    sizes sz;
    return plan_sizes(out, in, has_gram, p, info, &sz, e);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static int take(nlsr_lowrank *st, void *pp, uint64_t bytes, const char *what)
{
    void **out = pp;
    *out = NULL;
    if (bytes == 0) return 0;
    NLSR_FAIL_IF(bytes > SIZE_MAX, st->e, NLSR_E_BUDGET, "%s: %llu bytes cannot be addressed",
                 what, (unsigned long long)bytes);
    return nlsr_budget_alloc(st->b, (size_t)bytes, what, out, st->e);
}

static void give(nlsr_lowrank *st, void *pp, uint64_t bytes)
{
    void **p = pp;
    if (*p) nlsr_budget_free(st->b, *p, (size_t)bytes);
    *p = NULL;
}

static int fail_stage(nlsr_lowrank *st, int rc)
{
    if (rc < 0) st->stage = ST_FAILED;
    return rc;
}

void nlsr_lowrank_set_threads(int threads)
{
    openblas_set_num_threads(threads < 1 ? 1 : threads);
}

/* The Gaussian test matrix: splitmix64 from the seed, Box-Muller in double, stored as f32 in
 * row-major order. u1 is in (0, 1] so the logarithm is finite. Reproducible for a seed up to
 * the last bit of libm's log/cos/sin, which are correctly rounded or nearly so on glibc. */
static void gaussian_fill(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t i = 0; i < n; i += 2) {
        double u1 = (double)((nlsr_splitmix64_next(&s) >> 11) + 1) * 0x1p-53;
        double u2 = (double)(nlsr_splitmix64_next(&s) >> 11) * 0x1p-53;
        double rad = sqrt(-2.0 * log(u1));
        x[i] = (float)(rad * cos(two_pi * u2));
        if (i + 1 < n) x[i + 1] = (float)(rad * sin(two_pi * u2));
    }
}

/* Replaces the columns of A (nrows x l, row-major, l <= nrows) by an orthonormal basis of
 * their span. Row-major A is column-major A^T, so the LQ factorization A^T = L Q' gives
 * A = Q'^T L^T, and Q'^T (formed in place by orglq) is the orthonormal factor, in the same
 * memory layout as A. LAPACKE's row-major entry points would copy A transposed instead. */
static int orth_rows(nlsr_lowrank *st, float *A, size_t nrows)
{
    lapack_int m = (lapack_int)st->info.l, n = (lapack_int)nrows;
    lapack_int info = LAPACKE_sgelqf_work(LAPACK_COL_MAJOR, m, n, A, m, st->tau, st->lqwork,
                                          st->sz.lq_lwork);
    if (info == 0)
        info = LAPACKE_sorglq_work(LAPACK_COL_MAJOR, m, n, m, A, m, st->tau, st->lqwork,
                                   st->sz.lq_lwork);
    NLSR_FAIL_IF(info != 0, st->e, NLSR_E_VALUE,
                 "randomized SVD: LAPACK LQ factorization of %zu x %zu failed (info %d)", nrows,
                 st->info.l, (int)info);
    return 0;
}

/* T = G Z (in x l): the activations' weight on the next forward product. */
static void apply_gram(nlsr_lowrank *st)
{
    blasint n = (blasint)st->in, l = (blasint)st->info.l;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, l, n, 1.0f, st->G, n, st->Z, l,
                0.0f, st->T, l);
}

int nlsr_gram_check(const float *G, size_t in, nlsr_err *e)
{
    for (size_t i = 0; i < in; i++) {
        float d = G[i * in + i];
        NLSR_FAIL_IF(!(d >= 0.0f) || !isfinite(d), e, NLSR_E_VALUE,
                     "activation Gram matrix: diagonal element %zu is %g (must be finite and "
                     ">= 0)",
                     i, (double)d);
    }
    /* Tiles, so that reading G[j][i] beside G[i][j] does not miss the cache on every element
     * of an 8192 x 8192 matrix. */
    const size_t TB = 64;
    for (size_t i0 = 0; i0 < in; i0 += TB)
        for (size_t j0 = i0; j0 < in; j0 += TB)
            for (size_t i = i0; i < i0 + TB && i < in; i++)
                for (size_t j = j0 > i + 1 ? j0 : i + 1; j < j0 + TB && j < in; j++) {
                    double a = G[i * in + j], b = G[j * in + i];
                    NLSR_FAIL_IF(!isfinite(a) || !isfinite(b), e, NLSR_E_VALUE,
                                 "activation Gram matrix: element (%zu, %zu) is not finite", i,
                                 j);
                    /* A Gram matrix is symmetric up to the rounding of whoever summed it
                     * (|a - b| <= 1e-4 sqrt(G_ii G_jj), compared squared); anything further
                     * off is not X^T X (a transposed or foreign tensor). */
                    double d = a - b;
                    NLSR_FAIL_IF(d * d > 1e-8 * (double)G[i * in + i] * (double)G[j * in + j] &&
                                     d != 0.0,
                                 e, NLSR_E_VALUE,
                                 "activation Gram matrix is not symmetric: (%zu, %zu) = %g, "
                                 "(%zu, %zu) = %g",
                                 i, j, a, j, i, b);
                }
    return 0;
}

/* ---- begin / free ------------------------------------------------------------------------ */

int nlsr_lowrank_begin(size_t out, size_t in, const float *G, const nlsr_lowrank_params *p,
                       nlsr_budget *b, nlsr_err *e, nlsr_lowrank **stp)
{
    *stp = NULL;
    nlsr_lowrank_info info;
    sizes sz;
    NLSR_FORWARD(plan_sizes(out, in, G != NULL, p, &info, &sz, e));
    if (G) NLSR_FORWARD(nlsr_gram_check(G, in, e));
    uint64_t room = nlsr_budget_room(b);
    NLSR_FAIL_IF(info.peak_bytes > room, e, NLSR_E_BUDGET,
                 "memory budget of %llu bytes too small: the low-rank scorer (%s) of a %zu x %zu "
                 "delta at rank %zu needs at least %llu bytes (%llu in use)",
                 (unsigned long long)b->limit, method_name(info.exact), out, in, info.r,
                 (unsigned long long)info.peak_bytes, (unsigned long long)b->used);
    nlsr_lowrank *st = calloc(1, sizeof *st);
    NLSR_FAIL_IF(!st, e, -ENOMEM, "out of memory for the low-rank scorer's state");
    st->b = b;
    st->e = e;
    st->out = out;
    st->in = in;
    st->G = G;
    st->p = *p;
    st->info = info;
    st->sz = sz;
    nlsr_lowrank_set_threads(p->threads);
    int rc = 0;
    if (info.identity) {
        st->stage = ST_DONE;
    } else if (info.exact) {
        st->stage = ST_COLLECT;
        rc = take(st, &st->Wd, sz.wd, "exact SVD: copy of W");
    } else {
        st->stage = ST_FORWARD;
        rc = take(st, &st->Q, sz.q, "randomized SVD: range basis Q (out x l)");
        if (rc == 0) rc = take(st, &st->Z, sz.z, "randomized SVD: W^T Q (in x l)");
        if (rc == 0 && G) rc = take(st, &st->T, sz.t, "randomized SVD: G W^T Q (in x l)");
        if (rc == 0) rc = take(st, &st->tau, sz.tau, "randomized SVD: LQ scalars");
        if (rc == 0) rc = take(st, &st->lqwork, sz.lqwork, "randomized SVD: LQ workspace");
        if (rc == 0) {
            /* Omega lives in Z's storage: with G the first forward product uses G Omega. */
            gaussian_fill(st->Z, in * info.l, p->seed);
            if (G) apply_gram(st);
        }
    }
    if (rc < 0) {
        nlsr_lowrank_free(st);
        return rc;
    }
    *stp = st;
    return 0;
}

void nlsr_lowrank_free(nlsr_lowrank *st)
{
    if (!st) return;
    give(st, &st->Q, st->sz.q);
    give(st, &st->Z, st->sz.z);
    give(st, &st->T, st->sz.t);
    give(st, &st->tau, st->sz.tau);
    give(st, &st->lqwork, st->sz.lqwork);
    give(st, &st->Wd, st->sz.wd);
    give(st, &st->U, st->u_charged);
    give(st, &st->P, st->sz.p);
    free(st);
}

const nlsr_lowrank_info *nlsr_lowrank_get_info(const nlsr_lowrank *st)
{
    return &st->info;
}

int nlsr_lowrank_is_identity(const nlsr_lowrank *st)
{
    return st->info.identity;
}

int nlsr_lowrank_passes_left(const nlsr_lowrank *st)
{
    switch (st->stage) {
    case ST_COLLECT: return 1;
    case ST_FORWARD: return 2 + 2 * (st->info.power_iters - st->iter);
    case ST_ADJOINT: return 1 + 2 * (st->info.power_iters - st->iter);
    default: return 0;
    }
}

const float *nlsr_lowrank_basis(const nlsr_lowrank *st)
{
    return st->stage == ST_DONE ? st->U : NULL;
}

const float *nlsr_lowrank_coeffs(const nlsr_lowrank *st)
{
    return st->stage == ST_DONE ? st->P : NULL;
}

/* ---- passes ------------------------------------------------------------------------------ */

int nlsr_lowrank_pass_begin(nlsr_lowrank *st)
{
    NLSR_FAIL_IF(st->stage == ST_FAILED, st->e, NLSR_E_USAGE,
                 "low-rank scorer: pass after an error");
    NLSR_FAIL_IF(st->stage == ST_DONE, st->e, NLSR_E_USAGE, "low-rank scorer: no pass is left");
    NLSR_FAIL_IF(st->in_pass, st->e, NLSR_E_USAGE, "low-rank scorer: pass already begun");
    st->in_pass = 1;
    st->next_row = 0;
    /* The adjoint product is a sum over all row blocks. */
    if (st->stage == ST_ADJOINT) memset(st->Z, 0, (size_t)st->sz.z);
    return 0;
}

int nlsr_lowrank_feed(nlsr_lowrank *st, size_t r0, size_t r1, const float *w)
{
    NLSR_FAIL_IF(!st->in_pass || st->stage == ST_FAILED, st->e, NLSR_E_USAGE,
                 "low-rank scorer: feed outside a pass");
    NLSR_FAIL_IF(r0 != st->next_row || r1 <= r0 || r1 > st->out || !w, st->e, NLSR_E_USAGE,
                 "low-rank scorer: rows [%zu, %zu) fed where row %zu of %zu was expected", r0, r1,
                 st->next_row, st->out);
    size_t in = st->in, rows = r1 - r0;
    for (size_t i = 0; i < rows * in; i++)
        if (!isfinite(w[i]))
            return fail_stage(st, nlsr_fail(st->e, NLSR_E_VALUE,
                                            "low-rank scorer: W[%zu][%zu] is %g", r0 + i / in,
                                            i % in, (double)w[i]));
    blasint br = (blasint)rows, bi = (blasint)in, l = (blasint)st->info.l;
    switch (st->stage) {
    case ST_FORWARD: {
        const float *T = st->T ? st->T : st->Z;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, br, l, bi, 1.0f, w, bi, T, l, 0.0f,
                    st->Q + r0 * st->info.l, l);
        break;
    }
    case ST_ADJOINT:
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bi, l, br, 1.0f, w, bi,
                    st->Q + r0 * st->info.l, l, 1.0f, st->Z, l);
        break;
    case ST_COLLECT:
        for (size_t i = 0; i < rows * in; i++) st->Wd[r0 * in + i] = (double)w[i];
        break;
    default: break;
    }
    st->next_row = r1;
    return 0;
}

/* The end of the randomized method: Rayleigh-Ritz on Q. With Z = W^T Q from the last pass,
 * Q^T W G W^T Q = Z^T G Z (l x l), formed in double from the f32 Z and G Z and solved with
 * dsyevd; its top-r eigenvectors V_r give U_r = Q V_r and P = U_r^T W = V_r^T Z^T, so no pass
 * is needed for the projection. */
static int finish_randomized(nlsr_lowrank *st)
{
    const sizes *sz = &st->sz;
    size_t in = st->in, out = st->out, l = st->info.l, r = st->info.r;
    blasint bl = (blasint)l, br = (blasint)r, bi = (blasint)in;
    double *C = NULL, *scr = NULL, *w = NULL, *evw = NULL;
    lapack_int *eviw = NULL;
    float *vr = NULL, *tmp = NULL;
    int rc = 0;
    give(st, &st->tau, sz->tau);
    give(st, &st->lqwork, sz->lqwork);
    if (st->G) apply_gram(st);
    const float *T = st->T ? st->T : st->Z;
    rc = take(st, &C, sz->c, "randomized SVD: projected matrix (l x l)");
    if (rc == 0) rc = take(st, &scr, sz->scratch, "randomized SVD: double rows");
    if (rc < 0) goto done;
    memset(C, 0, (size_t)sz->c);
    size_t ch = in < CHUNK_ROWS ? in : CHUNK_ROWS;
    for (size_t c0 = 0; c0 < in; c0 += ch) {
        size_t n = in - c0 < ch ? in - c0 : ch;
        double *zc = scr, *tc = scr + ch * l;
        for (size_t i = 0; i < n * l; i++) {
            zc[i] = (double)st->Z[c0 * l + i];
            tc[i] = (double)T[c0 * l + i];
        }
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bl, bl, (blasint)n, 1.0, zc, bl, tc,
                    bl, 1.0, C, bl);
    }
    give(st, &scr, sz->scratch);
    rc = take(st, &w, sz->w, "randomized SVD: eigenvalues");
    if (rc == 0) rc = take(st, &evw, sz->evwork, "randomized SVD: eigensolver workspace");
    if (rc == 0) rc = take(st, &eviw, sz->eviwork, "randomized SVD: eigensolver indices");
    if (rc < 0) goto done;
    lapack_int info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', bl, C, bl, w, evw,
                                          sz->ev_lwork, eviw, sz->ev_liwork);
    give(st, &evw, sz->evwork);
    give(st, &eviw, sz->eviwork);
    if (info != 0) {
        rc = nlsr_fail(st->e, NLSR_E_VALUE,
                       "randomized SVD: LAPACK dsyevd failed on the %zu x %zu projection (info "
                       "%d)",
                       l, l, (int)info);
        goto done;
    }
    rc = take(st, &vr, sz->vr, "randomized SVD: top eigenvectors (l x r)");
    if (rc < 0) goto done;
    /* dsyevd orders eigenvalues ascending, eigenvector j in column j (column-major). */
    for (size_t i = 0; i < l; i++)
        for (size_t c = 0; c < r; c++) vr[i * r + c] = (float)C[i + (l - 1 - c) * l];
    give(st, &C, sz->c);
    give(st, &w, sz->w);
    rc = take(st, &st->P, sz->p, "low-rank scorer: U_r^T W (r x in)");
    if (rc < 0) goto done;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, br, bi, bl, 1.0f, vr, br, st->Z, bl, 0.0f,
                st->P, bi);
    give(st, &st->Z, sz->z);
    give(st, &st->T, sz->t);
    rc = take(st, &tmp, sz->tmp, "randomized SVD: basis rows");
    if (rc < 0) goto done;
    /* U_r = Q V_r is written over Q: rows [a, b) of U (stride r) land in Q's storage below
     * b * l, on rows of Q already consumed, so U needs no second out x l buffer. */
    size_t chu = out < CHUNK_ROWS ? out : CHUNK_ROWS;
    for (size_t a = 0; a < out; a += chu) {
        size_t n = out - a < chu ? out - a : chu;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, br, bl, 1.0f,
                    st->Q + a * l, bl, vr, br, 0.0f, tmp, br);
        memcpy(st->Q + a * r, tmp, n * r * sizeof(float));
    }
    give(st, &tmp, sz->tmp);
    give(st, &vr, sz->vr);
    float *u = realloc(st->Q, (size_t)sz->u);
    st->U = u ? u : st->Q;
    st->u_charged = u ? sz->u : sz->q;
    if (u) nlsr_budget_release(st->b, sz->q - sz->u);
    st->Q = NULL;
done:
    give(st, &C, sz->c);
    give(st, &scr, sz->scratch);
    give(st, &w, sz->w);
    give(st, &evw, sz->evwork);
    give(st, &eviw, sz->eviwork);
    give(st, &vr, sz->vr);
    give(st, &tmp, sz->tmp);
    return rc;
}

/* The exact method, all in double. Row-major W (out x in) is column-major W^T (in x out), whose
 * SVD W^T = U' S V'^T gives W = V' S U'^T: dgesdd's VT' buffer (k x out column-major) read
 * row-major is V' = the left singular vectors of W (out x k), and its U' buffer read row-major
 * is the right singular vectors transposed (k x in). With G, the same on A = W L, where
 * L = V_G D_G^{1/2} (L L^T = G) from dsyevd: A A^T = W G W^T. */
static int finish_exact(nlsr_lowrank *st)
{
    const sizes *sz = &st->sz;
    size_t in = st->in, out = st->out, r = st->info.r, k = out < in ? out : in;
    blasint bi = (blasint)in, bo = (blasint)out, br = (blasint)r, bk = (blasint)k;
    double *gd = NULL, *wg = NULL, *gw = NULL, *A = NULL, *s = NULL, *ub = NULL, *vtb = NULL;
    double *sw = NULL, *pd = NULL;
    lapack_int *giw = NULL, *siw = NULL;
    lapack_int info = 0;
    int rc = 0;
    if (st->G) {
        rc = take(st, &gd, sz->gd, "exact SVD: Gram matrix in double");
        if (rc == 0) rc = take(st, &wg, sz->wg, "exact SVD: Gram eigenvalues");
        if (rc == 0) rc = take(st, &gw, sz->gwork, "exact SVD: eigensolver workspace");
        if (rc == 0) rc = take(st, &giw, sz->giwork, "exact SVD: eigensolver indices");
        if (rc < 0) goto done;
        for (size_t i = 0; i < in * in; i++) gd[i] = (double)st->G[i];
        info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', bi, gd, bi, wg, gw, sz->g_lwork,
                                   giw, sz->g_liwork);
        give(st, &gw, sz->gwork);
        give(st, &giw, sz->giwork);
        if (info != 0) {
            rc = nlsr_fail(st->e, NLSR_E_VALUE,
                           "exact SVD: LAPACK dsyevd failed on the %zu x %zu Gram matrix (info "
                           "%d)",
                           in, in, (int)info);
            goto done;
        }
        rc = take(st, &A, sz->a, "exact SVD: W G^(1/2)");
        if (rc < 0) goto done;
        /* gd holds V_G column-major, i.e. V_G^T row-major: A = W V_G, then scale columns. */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bo, bi, bi, 1.0, st->Wd, bi, gd, bi,
                    0.0, A, bi);
        for (size_t j = 0; j < in; j++) wg[j] = wg[j] > 0.0 ? sqrt(wg[j]) : 0.0;
        for (size_t o = 0; o < out; o++)
            for (size_t j = 0; j < in; j++) A[o * in + j] *= wg[j];
        give(st, &gd, sz->gd);
        give(st, &wg, sz->wg);
    }
    double *M = A ? A : st->Wd; /* without G, W itself is decomposed (and destroyed) */
    rc = take(st, &s, sz->s, "exact SVD: singular values");
    if (rc == 0) rc = take(st, &ub, sz->ub, "exact SVD: right singular vectors");
    if (rc == 0) rc = take(st, &vtb, sz->vtb, "exact SVD: left singular vectors");
    if (rc == 0) rc = take(st, &sw, sz->sddwork, "exact SVD: dgesdd workspace");
    if (rc == 0) rc = take(st, &siw, sz->sddiwork, "exact SVD: dgesdd indices");
    if (rc < 0) goto done;
    info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'S', bi, bo, M, bi, s, ub, bi, vtb, bk, sw,
                               sz->sdd_lwork, siw);
    give(st, &sw, sz->sddwork);
    give(st, &siw, sz->sddiwork);
    give(st, &A, sz->a);
    if (info != 0) {
        rc = nlsr_fail(st->e, NLSR_E_VALUE,
                       "exact SVD: LAPACK dgesdd failed on %zu x %zu (info %d)", out, in,
                       (int)info);
        goto done;
    }
    rc = take(st, &st->U, sz->u, "low-rank scorer: basis U_r (out x r)");
    if (rc == 0) rc = take(st, &st->P, sz->p, "low-rank scorer: U_r^T W (r x in)");
    if (rc == 0 && st->G) rc = take(st, &pd, sz->pd, "exact SVD: U_r^T W in double");
    if (rc < 0) goto done;
    st->u_charged = sz->u;
    for (size_t i = 0; i < out; i++)
        for (size_t c = 0; c < r; c++) st->U[i * r + c] = (float)vtb[i * k + c];
    if (st->G) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, br, bi, bo, 1.0, vtb, bk, st->Wd, bi,
                    0.0, pd, bi);
        for (size_t i = 0; i < r * in; i++) st->P[i] = (float)pd[i];
    } else {
        /* U_r^T W = S_r V_r^T. */
        for (size_t c = 0; c < r; c++)
            for (size_t j = 0; j < in; j++) st->P[c * in + j] = (float)(s[c] * ub[c * in + j]);
    }
done:
    give(st, &pd, sz->pd);
    give(st, &gd, sz->gd);
    give(st, &wg, sz->wg);
    give(st, &gw, sz->gwork);
    give(st, &giw, sz->giwork);
    give(st, &A, sz->a);
    give(st, &s, sz->s);
    give(st, &ub, sz->ub);
    give(st, &vtb, sz->vtb);
    give(st, &sw, sz->sddwork);
    give(st, &siw, sz->sddiwork);
    give(st, &st->Wd, sz->wd);
    return rc;
}

int nlsr_lowrank_pass_end(nlsr_lowrank *st)
{
    NLSR_FAIL_IF(!st->in_pass || st->stage == ST_FAILED, st->e, NLSR_E_USAGE,
                 "low-rank scorer: pass_end outside a pass");
    NLSR_FAIL_IF(st->next_row != st->out, st->e, NLSR_E_USAGE,
                 "low-rank scorer: pass ended at row %zu of %zu", st->next_row, st->out);
    st->in_pass = 0;
    int rc = 0;
    switch (st->stage) {
    case ST_FORWARD:
        rc = orth_rows(st, st->Q, st->out);
        st->stage = ST_ADJOINT;
        break;
    case ST_ADJOINT:
        if (st->iter < st->info.power_iters) {
            /* Orthonormalizing Z keeps the iterates' scale bounded; G orth(Z) spans what G Z
             * spans. */
            rc = orth_rows(st, st->Z, st->in);
            if (rc == 0 && st->G) apply_gram(st);
            st->iter++;
            st->stage = ST_FORWARD;
        } else {
            rc = finish_randomized(st);
            st->stage = ST_DONE;
        }
        break;
    case ST_COLLECT:
        rc = finish_exact(st);
        st->stage = ST_DONE;
        break;
    default: break;
    }
    return fail_stage(st, rc);
}

/* ---- projection -------------------------------------------------------------------------- */

int nlsr_lowrank_project_block(const nlsr_lowrank *st, size_t r0, size_t r1, const float *w,
                               float *out)
{
    NLSR_FAIL_IF(st->stage != ST_DONE, st->e, NLSR_E_USAGE,
                 "low-rank scorer: projection before the last pass");
    NLSR_FAIL_IF(r1 <= r0 || r1 > st->out || !out, st->e, NLSR_E_USAGE,
                 "low-rank scorer: rows [%zu, %zu) outside [0, %zu)", r0, r1, st->out);
    size_t rows = r1 - r0, in = st->in, r = st->info.r;
    if (st->info.identity) {
        NLSR_FAIL_IF(!w, st->e, NLSR_E_USAGE,
                     "low-rank scorer: the identity projection needs the rows of W");
        memmove(out, w, rows * in * sizeof(float));
        return 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)rows, (blasint)in,
                (blasint)r, 1.0f, st->U + r0 * r, (blasint)r, st->P, (blasint)in, 0.0f, out,
                (blasint)in);
    return 0;
}

int nlsr_lowrank_score_block(const nlsr_lowrank *st, size_t r0, size_t r1, const float *w,
                             float *scores)
{
    NLSR_FORWARD(nlsr_lowrank_project_block(st, r0, r1, w, scores));
    size_t n = (r1 - r0) * st->in;
    for (size_t i = 0; i < n; i++) scores[i] = fabsf(scores[i]);
    return 0;
}

/* ---- rank readings ----------------------------------------------------------------------- */

const char *nlsr_rank_reading_name(nlsr_rank_reading m)
{
    switch (m) {
    case NLSR_RANK_DIRECT: return "direct";
    case NLSR_RANK_PAPER: return "paper";
    case NLSR_RANK_AUTHORS: return "authors";
    }
    return "?";
}

int nlsr_rank_reading_parse(const char *s, nlsr_rank_reading *out)
{
    static const nlsr_rank_reading all[] = {NLSR_RANK_DIRECT, NLSR_RANK_PAPER, NLSR_RANK_AUTHORS};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (s && strcmp(s, nlsr_rank_reading_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return NLSR_E_USAGE;
}

int nlsr_lowrank_rank(uint64_t rank, double fraction, size_t out, size_t in, double sparsity,
                      nlsr_rank_reading reading, size_t *r, nlsr_err *e)
{
    size_t m = out < in ? out : in;
    *r = 0;
    /* The bounds are the parameters table's (the jobs check them first; this guards direct
     * callers). */
    NLSR_FORWARD(nlsr_param_check_value("sparsity", sparsity, e));
    if (rank == 0) NLSR_FORWARD(nlsr_param_check_value("rank-fraction", fraction, e));
    double base = rank > 0 ? (double)rank : fraction * (double)m, v = 0.0;
    switch (reading) {
    case NLSR_RANK_DIRECT: v = floor(base + 0.5); break;
    /* Nearest, not truncated: 1 - 0.8 is 0.19999999999999996 in binary, and truncation would
     * turn rank 100 at sparsity 0.8 into 19. */
    case NLSR_RANK_PAPER: v = floor(base * (1.0 - sparsity) + 0.5); break;
    /* The authors' int(rank * sparsity): Python's int() truncates. */
    case NLSR_RANK_AUTHORS: v = floor(base * sparsity); break;
    }
    NLSR_FAIL_IF(!(v >= 1.0), e, NLSR_E_USAGE,
                 "rank reading '%s' gives r = 0 for rank %g at sparsity %g (module %zu x %zu)",
                 nlsr_rank_reading_name(reading), base, sparsity, out, in);
    *r = v >= (double)m ? m : (size_t)v;
    return 0;
}

/* ---- activations ------------------------------------------------------------------------- */

void nlsr_gram_add_rows(float *G, size_t in, const float *X, size_t rows)
{
    if (rows == 0) return;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)in, (blasint)rows, 1.0f, X,
                (blasint)in, 1.0f, G, (blasint)in);
}

void nlsr_gram_finish(float *G, size_t in)
{
    for (size_t i = 0; i < in; i++)
        for (size_t j = i + 1; j < in; j++) G[j * in + i] = G[i * in + j];
}
