/* SPDX-License-Identifier: Apache-2.0 */
/* The low-rank (ActSVD) and Wanda scorers, against exact references computed here:
 *
 *  - randomized vs exact: the rank-r subspace of the randomized path agrees with a full SVD
 *    (LAPACKE_dgesdd here, in double) or with a matrix built with known singular vectors, to
 *    1e-4 in the largest principal angle, on matrices with a spectral gap, with and without
 *    activations (G = X^T X built from rows in blocks); the magnitude masks of the two W_hat
 *    agree on >= 99.9% of elements; 600 x 400 and 2048 x 1024;
 *  - X = I at full rank is the identity (no pass) and gives the magnitude mask exactly; an F32
 *    delta of exact rank 4 projected at rank 4 gives the magnitude mask on >= 99.99% of elements;
 *  - determinism for a seed; the budget: refusal one byte below the planned peak, naming it,
 *    and a recorded peak equal to the plan at the limit; protocol and value refusals;
 *  - rank readings (direct, paper, authors); Wanda scores, per-row and per-matrix masks against
 *    sorting; the Gram builder against sums in double.
 * The measured figures are printed on stdout (ctest -V). */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test.h"
#include "../src/common/budget.h"
#include "../src/common/err.h"
#include "../src/compute/lowrank.h"
#include "../src/compute/selection.h"
#include "../src/compute/wanda.h"

#define SPARSITY 0.8

/* ---- helpers ---------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) abort();
    return p;
}

static double gauss(uint64_t *s)
{
    double u1 = (double)((nlsr_splitmix64_next(s) >> 11) + 1) * 0x1p-53;
    double u2 = (double)(nlsr_splitmix64_next(s) >> 11) * 0x1p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void gauss_fill(double *x, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) x[i] = gauss(&s);
}

/* m x k (row-major) with orthonormal columns: QR of a Gaussian matrix. */
static double *orthonormal(size_t m, size_t k, uint64_t seed)
{
    double *a = xcalloc(m * k, sizeof *a), *tau = xcalloc(k, sizeof *tau);
    gauss_fill(a, m * k, seed);
    if (LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)k, a, (lapack_int)k, tau) ||
        LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)k, (lapack_int)k, a,
                       (lapack_int)k, tau))
        abort();
    free(tau);
    return a;
}

/* W = U diag(s) V^T (out x in, f32) with U out x k, V in x k orthonormal: known singular
 * structure. U is returned (caller frees) when u_out != NULL. */
static float *structured(size_t out, size_t in, size_t k, const double *s, uint64_t seed,
                         double **u_out)
{
    double *U = orthonormal(out, k, seed), *V = orthonormal(in, k, seed + 1);
    double *US = xcalloc(out * k, sizeof *US), *W = xcalloc(out * in, sizeof *W);
    for (size_t i = 0; i < out; i++)
        for (size_t c = 0; c < k; c++) US[i * k + c] = U[i * k + c] * s[c];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)out, (blasint)in, (blasint)k,
                1.0, US, (blasint)k, V, (blasint)k, 0.0, W, (blasint)in);
    float *w = xcalloc(out * in, sizeof *w);
    for (size_t i = 0; i < out * in; i++) w[i] = (float)W[i];
    free(US);
    free(W);
    free(V);
    if (u_out) *u_out = U;
    else free(U);
    return w;
}

/* Singular values spaced linearly: top r from 10 down to 5, the rest from `tail` down to
 * tail / 100 — a spectral gap of 5 / tail at r. */
static double *gap_spectrum(size_t k, size_t r, double tail)
{
    double *s = xcalloc(k, sizeof *s);
    for (size_t i = 0; i < k; i++)
        s[i] = i < r ? 10.0 - 5.0 * (double)i / (double)(r > 1 ? r - 1 : 1)
                     : tail * (1.0 - 0.99 * (double)(i - r) / (double)(k - r));
    return s;
}

/* The top-r left singular vectors of A (m x n, row-major, double), by a full SVD. */
static double *exact_left(const double *A, size_t m, size_t n, size_t r)
{
    size_t k = m < n ? m : n;
    double *a = xcalloc(m * n, sizeof *a), *s = xcalloc(k, sizeof *s);
    double *u = xcalloc(m * k, sizeof *u), *vt = xcalloc(k * n, sizeof *vt);
    memcpy(a, A, m * n * sizeof *a);
    if (LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, a, (lapack_int)n, s, u,
                       (lapack_int)k, vt, (lapack_int)n))
        abort();
    double *ur = xcalloc(m * r, sizeof *ur);
    for (size_t i = 0; i < m; i++)
        for (size_t c = 0; c < r; c++) ur[i * r + c] = u[i * k + c];
    free(a);
    free(s);
    free(u);
    free(vt);
    return ur;
}

static double *to_double(const float *x, size_t n)
{
    double *d = xcalloc(n, sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = (double)x[i];
    return d;
}

/* The largest principal angle between span(Q1) and span(Q2) (m x r each, orthonormal
 * columns): from the SVD of Q1^T Q2 (cosines), and, more accurately for small angles, as
 * arcsin of the largest singular value of Q2 - Q1 (Q1^T Q2). Returns the latter; *from_cos
 * gets the former. */
static double max_angle(const double *Q1, const float *Q2f, size_t m, size_t r, double *from_cos)
{
    double *Q2 = to_double(Q2f, m * r), *M = xcalloc(r * r, sizeof *M);
    /* Re-orthonormalize the f32 basis in double: its rounding (1e-7) would otherwise show up
     * as cosines of 1 - 1e-7, i.e. angles of 5e-4, that say nothing about the subspace. */
    double *tq = xcalloc(r, sizeof *tq);
    if (LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)r, Q2, (lapack_int)r, tq) ||
        LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)r, (lapack_int)r, Q2,
                       (lapack_int)r, tq))
        abort();
    free(tq);
    double *R = xcalloc(m * r, sizeof *R), *sv = xcalloc(r, sizeof *sv);
    double *cpy = xcalloc(r * r, sizeof *cpy), *sup = xcalloc(r, sizeof *sup);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)r, (blasint)r, (blasint)m, 1.0,
                Q1, (blasint)r, Q2, (blasint)r, 0.0, M, (blasint)r);
    memcpy(cpy, M, r * r * sizeof *M);
    if (LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', (lapack_int)r, (lapack_int)r, cpy,
                       (lapack_int)r, sv, NULL, 1, NULL, 1, sup))
        abort();
    double cmin = sv[r - 1] > 1.0 ? 1.0 : sv[r - 1];
    *from_cos = acos(cmin);
    memcpy(R, Q2, m * r * sizeof *R);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)r, (blasint)r,
                -1.0, Q1, (blasint)r, M, (blasint)r, 1.0, R, (blasint)r);
    if (LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', (lapack_int)m, (lapack_int)r, R, (lapack_int)r,
                       sv, NULL, 1, NULL, 1, sup))
        abort();
    double smax = sv[0] > 1.0 ? 1.0 : sv[0];
    free(Q2);
    free(M);
    free(R);
    free(sv);
    free(cpy);
    free(sup);
    return asin(smax);
}

/* W_hat = U (U^T W) in double, stored as f32: the exact reference projection. */
static float *project_ref(const double *U, const float *W, size_t out, size_t in, size_t r)
{
    double *Wd = to_double(W, out * in), *P = xcalloc(r * in, sizeof *P);
    double *H = xcalloc(out * in, sizeof *H);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)r, (blasint)in, (blasint)out,
                1.0, U, (blasint)r, Wd, (blasint)in, 0.0, P, (blasint)in);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)out, (blasint)in, (blasint)r,
                1.0, U, (blasint)r, P, (blasint)in, 0.0, H, (blasint)in);
    float *h = xcalloc(out * in, sizeof *h);
    for (size_t i = 0; i < out * in; i++) h[i] = (float)H[i];
    free(Wd);
    free(P);
    free(H);
    return h;
}

/* The magnitude mask of METHOD.md on |x|. */
static uint8_t *magnitude_mask(const float *x, size_t n)
{
    float *s = xcalloc(n, sizeof *s), *scr = xcalloc(n, sizeof *scr);
    uint8_t *m = xcalloc(n, 1);
    for (size_t i = 0; i < n; i++) s[i] = fabsf(x[i]);
    nlsr_mask_per_matrix(s, n, SPARSITY, scr, m);
    free(s);
    free(scr);
    return m;
}

static double agreement(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += a[i] == b[i];
    return (double)same / (double)n;
}

/* Runs the whole pass protocol over W in blocks of `block` rows; returns the scorer (NULL on
 * error, with rc set). */
static nlsr_lowrank *run_scorer(const float *W, size_t out, size_t in, const float *G,
                                const nlsr_lowrank_params *p, size_t block, nlsr_budget *b,
                                nlsr_err *e, int *rc)
{
    nlsr_lowrank *st = NULL;
    *rc = nlsr_lowrank_begin(out, in, G, p, b, e, &st);
    if (*rc < 0) return NULL;
    int guard = 0;
    while (*rc == 0 && nlsr_lowrank_passes_left(st) > 0 && guard++ < 100) {
        *rc = nlsr_lowrank_pass_begin(st);
        for (size_t r0 = 0; *rc == 0 && r0 < out; r0 += block) {
            size_t r1 = r0 + block < out ? r0 + block : out;
            *rc = nlsr_lowrank_feed(st, r0, r1, W + r0 * in);
        }
        if (*rc == 0) *rc = nlsr_lowrank_pass_end(st);
    }
    if (*rc < 0) {
        nlsr_lowrank_free(st);
        return NULL;
    }
    return st;
}

/* W_hat through score blocks of 100 rows. */
static float *scores_of(const nlsr_lowrank *st, const float *W, size_t out, size_t in)
{
    float *h = xcalloc(out * in, sizeof *h);
    for (size_t r0 = 0; r0 < out; r0 += 100) {
        size_t r1 = r0 + 100 < out ? r0 + 100 : out;
        if (nlsr_lowrank_score_block(st, r0, r1, W + r0 * in, h + r0 * in) < 0) abort();
    }
    return h;
}

static float *gram_of_rows(const float *X, size_t n, size_t in)
{
    float *G = xcalloc(in * in, sizeof *G);
    for (size_t r0 = 0; r0 < n; r0 += 111)
        nlsr_gram_add_rows(G, in, X + r0 * in, n - r0 < 111 ? n - r0 : 111);
    nlsr_gram_finish(G, in);
    return G;
}

static nlsr_lowrank_params params(size_t r, nlsr_lowrank_method m, uint64_t seed)
{
    nlsr_lowrank_params p = NLSR_LOWRANK_PARAMS_DEFAULT;
    p.rank = r;
    p.method = m;
    p.seed = seed;
    return p;
}

/* One acceptance case: the scorer's subspace and mask against the exact ones. U_ref: the
 * exact top-r left singular vectors of W X (out x r, double). */
static void compare_case(const char *name, const float *W, size_t out, size_t in, const float *G,
                         const double *U_ref, size_t r, nlsr_lowrank_method m, double tol_angle,
                         double min_agree)
{
    double t0 = now_s();
    nlsr_budget b = {0, 0, 0};
    nlsr_err e = {0, ""};
    nlsr_lowrank_params p = params(r, m, 42);
    int rc;
    nlsr_lowrank *st = run_scorer(W, out, in, G, &p, 37, &b, &e, &rc);
    ASSERT_EQ_I(rc, 0);
    if (!st) {
        FAILF("%s: %s", name, e.msg);
        return;
    }
    const nlsr_lowrank_info *info = nlsr_lowrank_get_info(st);
    ASSERT_EQ_I(info->exact, m == NLSR_LOWRANK_EXACT);
    double t1 = now_s();
    double by_cos = 0, ang = max_angle(U_ref, nlsr_lowrank_basis(st), out, r, &by_cos);
    float *h = scores_of(st, W, out, in), *href = project_ref(U_ref, W, out, in, r);
    uint8_t *m1 = magnitude_mask(h, out * in), *m2 = magnitude_mask(href, out * in);
    double agree = agreement(m1, m2, out * in);
    printf("%-34s %5zu x %-5zu r %-3zu %-10s passes %d  angle %.3g (acos %.3g)  mask agreement "
           "%.6f  peak %llu B  %.2f s\n",
           name, out, in, r, info->exact ? "exact" : "randomized", info->passes, ang, by_cos,
           agree, (unsigned long long)b.peak, t1 - t0);
    ASSERT_TRUE(ang <= tol_angle);
    ASSERT_TRUE(agree >= min_agree);
    ASSERT_EQ_U(b.peak, info->peak_bytes);
    ASSERT_EQ_U(b.used, info->resident_bytes);
    nlsr_lowrank_free(st);
    ASSERT_EQ_U(b.used, 0);
    free(h);
    free(href);
    free(m1);
    free(m2);
}

/* ---- acceptance ------------------------------------------------------------------------- */

/* 600 x 400 with a gap of 50 after r = 40 and a full-rank tail; reference: dgesdd here. */
static void test_identity_activations_600x400(void)
{
    size_t out = 600, in = 400, r = 40;
    double *s = gap_spectrum(in, r, 0.1);
    float *W = structured(out, in, in, s, 1001, NULL);
    double *Wd = to_double(W, out * in);
    double *U_ref = exact_left(Wd, out, in, r);
    compare_case("X = I, randomized", W, out, in, NULL, U_ref, r, NLSR_LOWRANK_RANDOMIZED, 1e-4,
                 0.999);
    compare_case("X = I, exact", W, out, in, NULL, U_ref, r, NLSR_LOWRANK_EXACT, 1e-6, 0.9999);
    free(s);
    free(W);
    free(Wd);
    free(U_ref);
}

/* Activations: X (n x in rows), G = X^T X built in blocks; the reference is the SVD of W X^T. */
static void test_gram_activations_600x400(void)
{
    size_t out = 600, in = 400, r = 20, n = 1000;
    double *s = gap_spectrum(in, r, 0.05);
    float *W = structured(out, in, in, s, 2002, NULL);
    double *Xd = xcalloc(n * in, sizeof *Xd);
    gauss_fill(Xd, n * in, 77);
    float *X = xcalloc(n * in, sizeof *X);
    for (size_t i = 0; i < n * in; i++) X[i] = (float)Xd[i];
    float *G = gram_of_rows(X, n, in);
    double *Wd = to_double(W, out * in), *Xr = to_double(X, n * in);
    double *A = xcalloc(out * n, sizeof *A);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)out, (blasint)n, (blasint)in,
                1.0, Wd, (blasint)in, Xr, (blasint)in, 0.0, A, (blasint)n);
    double *U_ref = exact_left(A, out, n, r);
    compare_case("G = X^T X, randomized", W, out, in, G, U_ref, r, NLSR_LOWRANK_RANDOMIZED, 1e-4,
                 0.999);
    compare_case("G = X^T X, exact", W, out, in, G, U_ref, r, NLSR_LOWRANK_EXACT, 1e-5, 0.9999);
    free(s);
    free(W);
    free(Xd);
    free(X);
    free(G);
    free(Wd);
    free(Xr);
    free(A);
    free(U_ref);
}

/* 2048 x 1024 of known structure (rank 200, top 64 well separated): the exact subspace is the
 * first 64 generating vectors. AUTO picks the randomized method at this size. */
static void test_large_2048x1024(void)
{
    size_t out = 2048, in = 1024, k = 200, r = 64;
    double *s = gap_spectrum(k, r, 0.1), *U = NULL;
    float *W = structured(out, in, k, s, 3003, &U);
    double *U_ref = xcalloc(out * r, sizeof *U_ref);
    for (size_t i = 0; i < out; i++)
        for (size_t c = 0; c < r; c++) U_ref[i * r + c] = U[i * k + c];
    compare_case("known structure, randomized", W, out, in, NULL, U_ref, r, NLSR_LOWRANK_AUTO,
                 1e-4, 0.999);
    free(s);
    free(U);
    free(W);
    free(U_ref);
}

/* X = I at full rank: the identity, no pass, the magnitude mask exactly. With G the identity
 * needs r = out (U_r U_r^T = I); r = in < out with G is a real projection. */
static void test_identity_full_rank(void)
{
    size_t out = 600, in = 400, n = out * in;
    double *wd = xcalloc(n, sizeof *wd);
    gauss_fill(wd, n, 5);
    float *W = xcalloc(n, sizeof *W);
    for (size_t i = 0; i < n; i++) W[i] = (float)wd[i];
    nlsr_budget b = {0, 0, 0};
    nlsr_err e = {0, ""};
    nlsr_lowrank_params p = params(in, NLSR_LOWRANK_AUTO, 42);
    nlsr_lowrank *st = NULL;
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, NULL, &p, &b, &e, &st), 0);
    ASSERT_TRUE(nlsr_lowrank_is_identity(st));
    ASSERT_EQ_I(nlsr_lowrank_passes_left(st), 0);
    ASSERT_EQ_U(b.peak, 0);
    float *h = scores_of(st, W, out, in);
    uint8_t *m1 = magnitude_mask(h, n), *m2 = magnitude_mask(W, n);
    ASSERT_TRUE(memcmp(m1, m2, n) == 0);
    printf("identity (X = I, r = min)           600 x 400   mask agreement %.6f (exact)\n",
           agreement(m1, m2, n));
    float tmp[400];
    ASSERT_EQ_I(nlsr_lowrank_project_block(st, 0, 1, NULL, tmp), NLSR_E_USAGE);
    nlsr_lowrank_free(st);
    /* r beyond min(out, in) clamps to the identity too. */
    p.rank = 100000;
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, NULL, &p, &b, &e, &st), 0);
    ASSERT_TRUE(nlsr_lowrank_is_identity(st));
    nlsr_lowrank_free(st);
    /* With activations: r = in < out is not the identity; r = out <= in is. */
    float *G = xcalloc(in * in, sizeof *G);
    for (size_t i = 0; i < in; i++) G[i * in + i] = 1.0f;
    p.rank = in;
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, G, &p, &b, &e, &st), 0);
    ASSERT_TRUE(!nlsr_lowrank_is_identity(st));
    ASSERT_EQ_I(nlsr_lowrank_passes_left(st), 1);
    nlsr_lowrank_free(st);
    float *Gs = xcalloc(out * out, sizeof *Gs);
    for (size_t i = 0; i < out; i++) Gs[i * out + i] = 2.0f;
    p.rank = in;
    ASSERT_EQ_I(nlsr_lowrank_begin(in, out, Gs, &p, &b, &e, &st), 0);
    ASSERT_TRUE(nlsr_lowrank_is_identity(st));
    nlsr_lowrank_free(st);
    ASSERT_EQ_U(b.used, 0);
    free(wd);
    free(W);
    free(h);
    free(m1);
    free(m2);
    free(G);
    free(Gs);
}

/* An F32 delta of exact rank 4 (a product of 600 x 4 and 4 x 400 factors in f32): the rank-4
 * projection reproduces it up to rounding, so its mask is the magnitude mask on >= 99.99%. */
static void test_rank4_delta(void)
{
    size_t out = 600, in = 400, n = out * in;
    double *a = xcalloc(out * 4, sizeof *a), *bb = xcalloc(4 * in, sizeof *bb);
    gauss_fill(a, out * 4, 11);
    gauss_fill(bb, 4 * in, 12);
    float *W = xcalloc(n, sizeof *W);
    for (size_t i = 0; i < out; i++)
        for (size_t j = 0; j < in; j++) {
            float acc = 0.0f;
            for (size_t c = 0; c < 4; c++) acc += (float)a[i * 4 + c] * (float)bb[c * in + j];
            W[i * in + j] = acc;
        }
    uint8_t *mref = magnitude_mask(W, n);
    const nlsr_lowrank_method ms[2] = {NLSR_LOWRANK_AUTO, NLSR_LOWRANK_RANDOMIZED};
    for (int t = 0; t < 2; t++) {
        nlsr_budget b = {0, 0, 0};
        nlsr_err e = {0, ""};
        nlsr_lowrank_params p = params(4, ms[t], 42);
        int rc;
        nlsr_lowrank *st = run_scorer(W, out, in, NULL, &p, 64, &b, &e, &rc);
        ASSERT_EQ_I(rc, 0);
        if (!st) {
            FAILF("%s", e.msg);
            continue;
        }
        float *h = scores_of(st, W, out, in);
        uint8_t *m = magnitude_mask(h, n);
        double agree = agreement(m, mref, n);
        double maxerr = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)h[i] - fabs((double)W[i]));
            if (d > maxerr) maxerr = d;
        }
        printf("rank-4 delta, rank 4, %-10s     600 x 400   mask agreement %.6f  max |W_hat| "
               "error %.3g\n",
               nlsr_lowrank_get_info(st)->exact ? "exact" : "randomized", agree, maxerr);
        ASSERT_TRUE(agree >= 0.9999);
        nlsr_lowrank_free(st);
        free(h);
        free(m);
    }
    free(a);
    free(bb);
    free(W);
    free(mref);
}

/* Same seed and blocks: the same bits. Another seed or another blocking: the same subspace. */
static void test_determinism(void)
{
    size_t out = 600, in = 400, r = 30, n = out * in;
    double *s = gap_spectrum(in, r, 0.2);
    float *W = structured(out, in, in, s, 4004, NULL);
    float *h[4];
    const float *U[4];
    nlsr_lowrank *st[4];
    const uint64_t seeds[4] = {7, 7, 8, 7};
    const size_t blocks[4] = {50, 50, 50, 128};
    nlsr_budget b = {0, 0, 0};
    nlsr_err e = {0, ""};
    for (int t = 0; t < 4; t++) {
        nlsr_lowrank_params p = params(r, NLSR_LOWRANK_RANDOMIZED, seeds[t]);
        int rc;
        st[t] = run_scorer(W, out, in, NULL, &p, blocks[t], &b, &e, &rc);
        ASSERT_EQ_I(rc, 0);
        if (!st[t]) abort();
        h[t] = scores_of(st[t], W, out, in);
        U[t] = nlsr_lowrank_basis(st[t]);
    }
    ASSERT_TRUE(memcmp(h[0], h[1], n * sizeof(float)) == 0);
    ASSERT_TRUE(memcmp(U[0], U[1], out * r * sizeof(float)) == 0);
    double *U0 = to_double(U[0], out * r), c;
    double a2 = max_angle(U0, U[2], out, r, &c), a3 = max_angle(U0, U[3], out, r, &c);
    printf("determinism: seed 7 twice identical; seed 8 angle %.3g; blocks 128 vs 50 angle %.3g\n",
           a2, a3);
    ASSERT_TRUE(a2 <= 1e-5);
    ASSERT_TRUE(a3 <= 1e-5);
    for (int t = 0; t < 4; t++) {
        nlsr_lowrank_free(st[t]);
        free(h[t]);
    }
    ASSERT_EQ_U(b.used, 0);
    free(U0);
    free(s);
    free(W);
}

/* The plan's peak is the minimum: one byte less is refused before any allocation with a message
 * naming it; at exactly the peak the run goes through and the budget records that peak. */
static void test_budget(void)
{
    size_t out = 300, in = 200, r = 10, n = 400;
    double *s = gap_spectrum(in, r, 0.1), *xd = xcalloc(n * in, sizeof *xd);
    float *W = structured(out, in, in, s, 5005, NULL), *X = xcalloc(n * in, sizeof *X);
    gauss_fill(xd, n * in, 99);
    for (size_t i = 0; i < n * in; i++) X[i] = (float)xd[i];
    float *G = gram_of_rows(X, n, in);
    for (int t = 0; t < 4; t++) {
        const float *g = t & 1 ? G : NULL;
        nlsr_lowrank_params p =
            params(r, t & 2 ? NLSR_LOWRANK_EXACT : NLSR_LOWRANK_RANDOMIZED, 42);
        nlsr_lowrank_info info;
        nlsr_err e = {0, ""};
        ASSERT_EQ_I(nlsr_lowrank_plan(out, in, g != NULL, &p, &info, &e), 0);
        uint64_t used0 = 1000; /* something else already holds budget */
        nlsr_budget b = {used0 + info.peak_bytes - 1, used0, used0};
        nlsr_lowrank *st = NULL;
        ASSERT_EQ_I(nlsr_lowrank_begin(out, in, g, &p, &b, &e, &st), NLSR_E_BUDGET);
        ASSERT_TRUE(st == NULL);
        ASSERT_EQ_U(b.used, used0);
        char need[64];
        snprintf(need, sizeof need, "needs at least %llu bytes",
                 (unsigned long long)info.peak_bytes);
        ASSERT_CONTAINS(e.msg, need);
        if (t == 0) printf("budget refusal: %s\n", e.msg);
        nlsr_err_clear(&e);
        b.limit = used0 + info.peak_bytes;
        int rc;
        st = run_scorer(W, out, in, g, &p, 64, &b, &e, &rc);
        ASSERT_EQ_I(rc, 0);
        if (!st) FAILF("%s", e.msg);
        ASSERT_EQ_U(b.peak, used0 + info.peak_bytes);
        ASSERT_EQ_U(b.used, used0 + info.resident_bytes);
        nlsr_lowrank_free(st);
        ASSERT_EQ_U(b.used, used0);
    }
    /* Planned memory of the largest case (Llama-70B's MLP, 28672 x 8192) at rank 1638. */
    nlsr_lowrank_params p = params(1638, NLSR_LOWRANK_AUTO, 42);
    nlsr_lowrank_info info;
    nlsr_err e = {0, ""};
    ASSERT_EQ_I(nlsr_lowrank_plan(28672, 8192, 1, &p, &info, &e), 0);
    printf("plan 28672 x 8192 r 1638 with G: %s, l %zu, %d passes, peak %.1f MiB, resident "
           "%.1f MiB\n",
           info.exact ? "exact" : "randomized", info.l, info.passes,
           (double)info.peak_bytes / 1048576.0, (double)info.resident_bytes / 1048576.0);
    ASSERT_TRUE(!info.exact && info.passes == 6);
    ASSERT_TRUE(info.peak_bytes < ((uint64_t)1 << 30));
    /* The exact method at that size fits LAPACK's indices but not a default 1 GiB budget. */
    p.method = NLSR_LOWRANK_EXACT;
    ASSERT_EQ_I(nlsr_lowrank_plan(28672, 8192, 0, &p, &info, &e), 0);
    printf("plan 28672 x 8192 r 1638, --exact-svd: peak %.1f MiB\n",
           (double)info.peak_bytes / 1048576.0);
    ASSERT_TRUE(info.exact && info.peak_bytes > ((uint64_t)1 << 30));
    /* Beyond 2^31 elements the exact method is refused: LAPACK's indices are 32-bit. */
    ASSERT_EQ_I(nlsr_lowrank_plan(65536, 65536, 0, &p, &info, &e), NLSR_E_USAGE);
    ASSERT_CONTAINS(e.msg, "32-bit");
    free(s);
    free(xd);
    free(W);
    free(X);
    free(G);
}

static void test_refusals(void)
{
    size_t out = 50, in = 40;
    float *W = xcalloc(out * in, sizeof *W);
    double *wd = xcalloc(out * in, sizeof *wd);
    gauss_fill(wd, out * in, 3);
    for (size_t i = 0; i < out * in; i++) W[i] = (float)wd[i];
    nlsr_budget b = {0, 0, 0};
    nlsr_err e = {0, ""};
    nlsr_lowrank_params p = params(5, NLSR_LOWRANK_RANDOMIZED, 1);
    nlsr_lowrank *st = NULL;
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, NULL, &p, &b, &e, &st), 0);
    ASSERT_EQ_I(nlsr_lowrank_feed(st, 0, 10, W), NLSR_E_USAGE); /* outside a pass */
    ASSERT_EQ_I(nlsr_lowrank_pass_begin(st), 0);
    ASSERT_EQ_I(nlsr_lowrank_pass_begin(st), NLSR_E_USAGE);
    ASSERT_EQ_I(nlsr_lowrank_feed(st, 10, 20, W), NLSR_E_USAGE); /* not from row 0 */
    ASSERT_EQ_I(nlsr_lowrank_feed(st, 0, 10, W), 0);
    ASSERT_EQ_I(nlsr_lowrank_pass_end(st), NLSR_E_USAGE); /* rows 10.. missing */
    float tmp[40];
    ASSERT_EQ_I(nlsr_lowrank_project_block(st, 0, 1, NULL, tmp), NLSR_E_USAGE);
    W[13 * in + 7] = NAN;
    nlsr_err_clear(&e);
    ASSERT_EQ_I(nlsr_lowrank_feed(st, 10, 20, W + 10 * in), NLSR_E_VALUE);
    ASSERT_CONTAINS(e.msg, "W[13][7]");
    ASSERT_EQ_I(nlsr_lowrank_pass_begin(st), NLSR_E_USAGE); /* failed: only free remains */
    nlsr_lowrank_free(st);
    ASSERT_EQ_U(b.used, 0);
    /* Rank 0, and a Gram matrix that is not one. */
    nlsr_err_clear(&e);
    p.rank = 0;
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, NULL, &p, &b, &e, &st), NLSR_E_USAGE);
    p.rank = 5;
    float *G = xcalloc(in * in, sizeof *G);
    for (size_t i = 0; i < in; i++) G[i * in + i] = 1.0f;
    G[2 * in + 3] = 0.5f;
    nlsr_err_clear(&e);
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, G, &p, &b, &e, &st), NLSR_E_VALUE);
    ASSERT_CONTAINS(e.msg, "not symmetric");
    G[2 * in + 3] = 0.0f;
    G[4 * in + 4] = -1.0f;
    nlsr_err_clear(&e);
    ASSERT_EQ_I(nlsr_lowrank_begin(out, in, G, &p, &b, &e, &st), NLSR_E_VALUE);
    ASSERT_CONTAINS(e.msg, "diagonal element 4");
    ASSERT_EQ_U(b.used, 0);
    free(W);
    free(wd);
    free(G);
}

/* Degenerate shapes (a single row or column, l = min(out, in)) through both methods, with and
 * without G: same W_hat to f32 rounding. */
static void test_tiny_shapes(void)
{
    const size_t shapes[][3] = {{5, 1, 1}, {1, 6, 1}, {7, 5, 2}, {5, 7, 4}, {9, 3, 2}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        size_t out = shapes[t][0], in = shapes[t][1], r = shapes[t][2], n = 11;
        double *wd = xcalloc(out * in, sizeof *wd), *xd = xcalloc(n * in, sizeof *xd);
        gauss_fill(wd, out * in, 100 + t);
        gauss_fill(xd, n * in, 200 + t);
        float *W = xcalloc(out * in, sizeof *W), *X = xcalloc(n * in, sizeof *X);
        for (size_t i = 0; i < out * in; i++) W[i] = (float)wd[i];
        for (size_t i = 0; i < n * in; i++) X[i] = (float)xd[i];
        float *G = gram_of_rows(X, n, in);
        for (int g = 0; g < 2; g++) {
            float *h[2];
            for (int m = 0; m < 2; m++) {
                nlsr_budget b = {0, 0, 0};
                nlsr_err e = {0, ""};
                nlsr_lowrank_params p =
                    params(r, m ? NLSR_LOWRANK_RANDOMIZED : NLSR_LOWRANK_EXACT, 42);
                int rc;
                nlsr_lowrank *st = run_scorer(W, out, in, g ? G : NULL, &p, 2, &b, &e, &rc);
                ASSERT_EQ_I(rc, 0);
                if (!st) abort();
                h[m] = scores_of(st, W, out, in);
                nlsr_lowrank_free(st);
                ASSERT_EQ_U(b.used, 0);
            }
            for (size_t i = 0; i < out * in; i++) ASSERT_NEAR(h[0][i], h[1][i], 1e-4);
            free(h[0]);
            free(h[1]);
        }
        free(wd);
        free(xd);
        free(W);
        free(X);
        free(G);
    }
}

/* ---- rank readings, Wanda, Gram -------------------------------------------------------- */

static void test_rank_readings(void)
{
    nlsr_err e = {0, ""};
    size_t r = 0;
    ASSERT_EQ_I(nlsr_lowrank_rank(100, 0, 600, 400, 0.8, NLSR_RANK_DIRECT, &r, &e), 0);
    ASSERT_EQ_U(r, 100);
    ASSERT_EQ_I(nlsr_lowrank_rank(100, 0, 600, 400, 0.8, NLSR_RANK_PAPER, &r, &e), 0);
    ASSERT_EQ_U(r, 20); /* 100 * (1 - 0.8) is 19.999999999999996 in binary */
    ASSERT_EQ_I(nlsr_lowrank_rank(100, 0, 600, 400, 0.8, NLSR_RANK_AUTHORS, &r, &e), 0);
    ASSERT_EQ_U(r, 80);
    /* A fraction of min(out, in) = 400. */
    ASSERT_EQ_I(nlsr_lowrank_rank(0, 0.25, 600, 400, 0.8, NLSR_RANK_DIRECT, &r, &e), 0);
    ASSERT_EQ_U(r, 100);
    ASSERT_EQ_I(nlsr_lowrank_rank(0, 0.25, 600, 400, 0.8, NLSR_RANK_PAPER, &r, &e), 0);
    ASSERT_EQ_U(r, 20);
    ASSERT_EQ_I(nlsr_lowrank_rank(0, 0.25, 600, 400, 0.8, NLSR_RANK_AUTHORS, &r, &e), 0);
    ASSERT_EQ_U(r, 80);
    /* Truncation (authors) against nearest (paper): 3 * 0.8 = 2.4, 3 * 0.2 = 0.6. */
    ASSERT_EQ_I(nlsr_lowrank_rank(3, 0, 600, 400, 0.8, NLSR_RANK_AUTHORS, &r, &e), 0);
    ASSERT_EQ_U(r, 2);
    ASSERT_EQ_I(nlsr_lowrank_rank(3, 0, 600, 400, 0.8, NLSR_RANK_PAPER, &r, &e), 0);
    ASSERT_EQ_U(r, 1);
    ASSERT_EQ_I(nlsr_lowrank_rank(5000, 0, 600, 400, 0.5, NLSR_RANK_DIRECT, &r, &e), 0);
    ASSERT_EQ_U(r, 400);
    ASSERT_EQ_I(nlsr_lowrank_rank(2, 0, 600, 400, 0.8, NLSR_RANK_PAPER, &r, &e), NLSR_E_USAGE);
    ASSERT_CONTAINS(e.msg, "gives r = 0");
    nlsr_err_clear(&e);
    ASSERT_EQ_I(nlsr_lowrank_rank(0, 1.5, 600, 400, 0.8, NLSR_RANK_DIRECT, &r, &e), NLSR_E_USAGE);
    nlsr_rank_reading m;
    ASSERT_EQ_I(nlsr_rank_reading_parse("authors", &m), 0);
    ASSERT_EQ_I(m, NLSR_RANK_AUTHORS);
    ASSERT_STR_EQ(nlsr_rank_reading_name(NLSR_RANK_PAPER), "paper");
    ASSERT_EQ_I(nlsr_rank_reading_parse("Paper", &m), NLSR_E_USAGE);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static void test_wanda(void)
{
    size_t rows = 50, in = 30, n = 200;
    double *dd = xcalloc(rows * in, sizeof *dd), *xd = xcalloc(n * in, sizeof *xd);
    gauss_fill(dd, rows * in, 21);
    gauss_fill(xd, n * in, 22);
    float *delta = xcalloc(rows * in, sizeof *delta), *X = xcalloc(n * in, sizeof *X);
    for (size_t i = 0; i < rows * in; i++) delta[i] = (float)dd[i];
    for (size_t i = 0; i < n * in; i++) X[i] = (float)(xd[i] * (1.0 + (double)(i % in)));
    nlsr_err e = {0, ""};
    double *sumsq = xcalloc(in, sizeof *sumsq);
    for (size_t r0 = 0; r0 < n; r0 += 64)
        ASSERT_EQ_I(nlsr_wanda_sumsq_add(sumsq, X + r0 * in, n - r0 < 64 ? n - r0 : 64, in, r0, &e),
                    0);
    float *norms = xcalloc(in, sizeof *norms), *ng = xcalloc(in, sizeof *ng);
    nlsr_wanda_norms_finish(sumsq, in, norms);
    float *G = gram_of_rows(X, n, in);
    ASSERT_EQ_I(nlsr_wanda_norms_from_gram(G, in, ng, &e), 0);
    for (size_t j = 0; j < in; j++) ASSERT_NEAR(ng[j], norms[j], 1e-5 * norms[j]);
    /* Per-row and per-matrix masks against sorting. */
    float *sc = xcalloc(rows * in, sizeof *sc), *scr = xcalloc(rows * in, sizeof *scr);
    nlsr_wanda_scores(delta, rows, in, norms, sc);
    ASSERT_TRUE(sc[5 * in + 7] == fabsf(delta[5 * in + 7]) * norms[7]);
    /* Ties: row 3 constant, so per-row selection (strict >) leaves it empty. */
    for (size_t j = 0; j < in; j++) sc[3 * in + j] = 0.5f;
    uint8_t *m = xcalloc(rows * in, 1);
    uint64_t cnt = nlsr_mask_per_row(sc, rows, in, SPARSITY, scr, m), want = 0;
    size_t k = (size_t)((double)in * SPARSITY), bad = 0;
    for (size_t i = 0; i < rows; i++) {
        memcpy(scr, sc + i * in, in * sizeof(float));
        qsort(scr, in, sizeof(float), cmp_float);
        for (size_t j = 0; j < in; j++) {
            int w = sc[i * in + j] > scr[k];
            want += (uint64_t)w;
            bad += m[i * in + j] != w;
        }
    }
    ASSERT_EQ_U(bad, 0);
    ASSERT_EQ_U(cnt, want);
    ASSERT_EQ_U(cnt, (rows - 1) * (in - k - 1)); /* distinct scores above the k-th; row 3 none */
    for (size_t j = 0; j < in; j++) ASSERT_EQ_I(m[3 * in + j], 0);
    cnt = nlsr_mask_per_matrix(sc, rows * in, SPARSITY, scr, m);
    memcpy(scr, sc, rows * in * sizeof(float));
    qsort(scr, rows * in, sizeof(float), cmp_float);
    float thr = scr[(size_t)((double)(rows * in) * SPARSITY)];
    bad = 0;
    for (size_t i = 0; i < rows * in; i++) bad += m[i] != (sc[i] > thr);
    ASSERT_EQ_U(bad, 0);
    ASSERT_TRUE(cnt > 0);
    /* Refusals name the place. */
    G[4 * in + 4] = NAN;
    ASSERT_EQ_I(nlsr_wanda_norms_from_gram(G, in, ng, &e), NLSR_E_VALUE);
    ASSERT_CONTAINS(e.msg, "diagonal element 4");
    nlsr_err_clear(&e);
    X[2 * in + 5] = INFINITY;
    ASSERT_EQ_I(nlsr_wanda_sumsq_add(sumsq, X, 10, in, 100, &e), NLSR_E_VALUE);
    ASSERT_CONTAINS(e.msg, "X[102][5]");
    nlsr_wanda_select sel;
    ASSERT_EQ_I(nlsr_wanda_select_parse("row", &sel), 0);
    ASSERT_EQ_I(sel, NLSR_WANDA_PER_ROW);
    ASSERT_STR_EQ(nlsr_wanda_select_name(NLSR_WANDA_PER_MATRIX), "matrix");
    free(dd);
    free(xd);
    free(delta);
    free(X);
    free(sumsq);
    free(norms);
    free(ng);
    free(G);
    free(sc);
    free(scr);
    free(m);
}

static void test_gram_builder(void)
{
    size_t n = 333, in = 57;
    double *xd = xcalloc(n * in, sizeof *xd);
    gauss_fill(xd, n * in, 31);
    float *X = xcalloc(n * in, sizeof *X);
    for (size_t i = 0; i < n * in; i++) X[i] = (float)xd[i];
    float *G = gram_of_rows(X, n, in);
    double worst = 0;
    for (size_t i = 0; i < in; i++)
        for (size_t j = 0; j < in; j++) {
            double s = 0;
            for (size_t t = 0; t < n; t++) s += (double)X[t * in + i] * (double)X[t * in + j];
            double err = fabs(s - (double)G[i * in + j]) / (double)n;
            if (err > worst) worst = err;
            ASSERT_TRUE(G[i * in + j] == G[j * in + i]);
        }
    ASSERT_TRUE(worst < 1e-5);
    free(xd);
    free(X);
    free(G);
}

int main(void)
{
    double t0 = now_s();
    nlsr_lowrank_set_threads(1);
    RUN_TEST(test_rank_readings);
    RUN_TEST(test_wanda);
    RUN_TEST(test_gram_builder);
    RUN_TEST(test_refusals);
    RUN_TEST(test_tiny_shapes);
    RUN_TEST(test_identity_full_rank);
    RUN_TEST(test_rank4_delta);
    RUN_TEST(test_identity_activations_600x400);
    RUN_TEST(test_gram_activations_600x400);
    RUN_TEST(test_large_2048x1024);
    RUN_TEST(test_determinism);
    RUN_TEST(test_budget);
    printf("total %.2f s\n", now_s() - t0);
    return test_finish();
}
