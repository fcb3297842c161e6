/* SPDX-License-Identifier: Apache-2.0 */
/* The low-rank (ActSVD) scorer of METHOD.md step 2, as a state machine of passes over row
 * blocks, so that a caller streaming a 28672 x 8192 delta from disk never holds it whole.
 *
 * For a delta W (out x in, f32, row-major) and calibration activations X at the module's input
 * (n x in, given as their Gram matrix G = X^T X, in x in; or none: X = I), the scorer computes
 *     W_hat = U_r U_r^T W,    U_r = the top-r left singular vectors of W X,
 * and the caller applies the magnitude rule to |W_hat|. The left singular vectors of W X are the
 * eigenvectors of W G W^T, so G is all that is needed of X.
 *
 * Two methods (docs/LOWRANK.md has the derivation, the passes and the memory):
 *  - randomized: a range finder with power iterations, l = r + oversample columns:
 *        pass 1          Y = W T0          (T0 = G Omega, or Omega; Omega in x l Gaussian)
 *        pass 2i, 2i+1   Z = W^T Q, T = G orth(Z);  Y = W T      (i = 1..power_iters)
 *        last pass       Z = W^T Q, then Rayleigh-Ritz on Q^T W G W^T Q = Z^T G Z (l x l)
 *    with Q = orth(Y) after every forward pass. 2 + 2 power_iters passes; U_r (out x r) and
 *    P = U_r^T W (r x in) stay in memory, so the projection of any row block afterwards,
 *    W_hat[r0:r1] = U_r[r0:r1] P, needs no more reading.
 *  - exact: one pass collects W in double, then a full SVD through LAPACKE (dgesdd; with G, of
 *    W G^{1/2} where G^{1/2} comes from dsyevd). For small matrices and --exact-svd.
 * When X = I and r = min(out, in) (or r >= out with any G) the projection is the identity:
 * no pass is needed and nlsr_lowrank_is_identity() says so, so callers can score W itself.
 *
 * Pass protocol (every pass sees every row once, in ascending order, in blocks of any size):
 *     nlsr_lowrank_begin(...)
 *     while (nlsr_lowrank_passes_left(st) > 0) {
 *         nlsr_lowrank_pass_begin(st);
 *         for each block [r0, r1) in order: nlsr_lowrank_feed(st, r0, r1, W + r0 * in);
 *         nlsr_lowrank_pass_end(st);
 *     }
 *     for any blocks: nlsr_lowrank_score_block(st, r0, r1, W block or NULL, scores);
 *     nlsr_lowrank_free(st);
 * Every pass must feed the same W (the same values, bit for bit); in-order feeding fixes the
 * summation order, so the result is a function of (W, G, params) for a given OpenBLAS build
 * and thread count.
 *
 * Memory: everything is charged to the caller's budget where it is allocated; begin refuses
 * (NLSR_E_BUDGET, naming the minimum) when the peak would not fit, before allocating anything.
 * nlsr_lowrank_plan() gives the same numbers without starting. */
#ifndef NLSR_COMPUTE_LOWRANK_H
#define NLSR_COMPUTE_LOWRANK_H

#include <stddef.h>
#include <stdint.h>

#include "../common/budget.h"
#include "../common/err.h"

/* ---- the rank ---------------------------------------------------------------------------- */

/* How --rank / --rank-fraction map to r (docs/LOWRANK.md). METHOD.md: the authors' code takes
 * r = int(rank * sparsity), the paper r = rank * (1 - sparsity). */
typedef enum nlsr_rank_reading {
    NLSR_RANK_DIRECT,  /* r = rank (nearest integer for a fraction) */
    NLSR_RANK_PAPER,   /* r = rank * (1 - sparsity), to the nearest integer */
    NLSR_RANK_AUTHORS  /* r = (long)(rank * sparsity), truncated as Python's int() */
} nlsr_rank_reading;

const char *nlsr_rank_reading_name(nlsr_rank_reading m);
/* "direct", "paper", "authors"; NLSR_E_USAGE otherwise. */
int nlsr_rank_reading_parse(const char *s, nlsr_rank_reading *out);

/* The rank r for an out x in module. rank > 0: --rank R (fraction ignored); rank == 0: the
 * rank is fraction * min(out, in) (0 < fraction <= 1), not rounded before the reading applies.
 * The result is clamped to min(out, in). NLSR_E_USAGE (naming the inputs) when the reading
 * gives r = 0, or for a fraction or sparsity outside its range. */
int nlsr_lowrank_rank(uint64_t rank, double fraction, size_t out, size_t in, double sparsity,
                      nlsr_rank_reading reading, size_t *r, nlsr_err *e);

/* ---- the scorer -------------------------------------------------------------------------- */

typedef enum nlsr_lowrank_method {
    NLSR_LOWRANK_AUTO,       /* exact when out * in <= NLSR_LOWRANK_EXACT_MAX, else randomized */
    NLSR_LOWRANK_EXACT,      /* full SVD in double (--exact-svd) */
    NLSR_LOWRANK_RANDOMIZED  /* randomized range finder, whatever the size */
} nlsr_lowrank_method;

/* AUTO's limit: 2^20 elements, 8 MiB as doubles; the exact SVD then costs well under a second. */
#define NLSR_LOWRANK_EXACT_MAX ((uint64_t)1 << 20)

typedef struct nlsr_lowrank_params {
    size_t rank;                 /* r >= 1 (nlsr_lowrank_rank); more than min(out, in) clamps */
    size_t oversample;           /* 10: extra range-finder columns, l = r + oversample */
    int power_iters;             /* 2 (--power-iters); 0 or more */
    uint64_t seed;               /* 42: splitmix64 state for the Gaussian test matrix */
    nlsr_lowrank_method method;  /* AUTO */
    int threads;                 /* OpenBLAS threads, set at begin (< 1 means 1) */
} nlsr_lowrank_params;

#define NLSR_LOWRANK_PARAMS_DEFAULT                                                               \
    ((nlsr_lowrank_params){.rank = 0, .oversample = 10, .power_iters = 2, .seed = 42u,            \
                           .method = NLSR_LOWRANK_AUTO, .threads = 1})

/* What a scorer for given shapes will do and need. */
typedef struct nlsr_lowrank_info {
    size_t r;             /* rank after clamping to min(out, in) */
    size_t l;             /* range-finder columns (randomized), min(r + oversample, min(out, in)) */
    int power_iters;      /* as used: 0 when l = min(out, in) (the range is then exact) */
    int exact;            /* 1: exact method */
    int identity;         /* 1: W_hat = W, no pass */
    int passes;           /* passes over W: 0 (identity), 1 (exact), 2 + 2 power_iters */
    uint64_t peak_bytes;  /* highest budget use over the scorer's life, G not included */
    uint64_t resident_bytes; /* held after the last pass: U_r and P = U_r^T W */
} nlsr_lowrank_info;

/* Plans without allocating (LAPACK workspace queries only). NLSR_E_USAGE for empty shapes,
 * r == 0, or shapes beyond LAPACK's 32-bit indices (the exact method needs out * in < 2^31). */
int nlsr_lowrank_plan(size_t out, size_t in, int has_gram, const nlsr_lowrank_params *p,
                      nlsr_lowrank_info *info, nlsr_err *e);

typedef struct nlsr_lowrank nlsr_lowrank;

/* Starts a scorer for an out x in delta. G: the in x in Gram matrix of the activations
 * (symmetric, f32, row-major, finite, non-negative diagonal; NLSR_E_VALUE otherwise) or NULL
 * for X = I. G is borrowed, not copied: it must stay valid until the last pass_end. b and e are
 * borrowed for the scorer's life. NLSR_E_BUDGET, before any allocation, when the planned peak
 * does not fit in what the budget has left; the message names the bytes needed. */
int nlsr_lowrank_begin(size_t out, size_t in, const float *G, const nlsr_lowrank_params *p,
                       nlsr_budget *b, nlsr_err *e, nlsr_lowrank **st);
/* Releases everything charged. NULL is a no-op. */
void nlsr_lowrank_free(nlsr_lowrank *st);

const nlsr_lowrank_info *nlsr_lowrank_get_info(const nlsr_lowrank *st);
int nlsr_lowrank_is_identity(const nlsr_lowrank *st);
/* Passes still to feed; 0 once the basis is ready (at once for the identity). */
int nlsr_lowrank_passes_left(const nlsr_lowrank *st);

/* One pass: pass_begin, then feed rows [r0, r1) of W (w: (r1 - r0) x in, row-major) with
 * r0 equal to the previous block's r1 (0 first), then pass_end once row out is reached.
 * Protocol violations are NLSR_E_USAGE; a non-finite element of W is NLSR_E_VALUE naming its
 * row and column; a LAPACK failure NLSR_E_VALUE. After an error the scorer can only be freed. */
int nlsr_lowrank_pass_begin(nlsr_lowrank *st);
int nlsr_lowrank_feed(nlsr_lowrank *st, size_t r0, size_t r1, const float *w);
int nlsr_lowrank_pass_end(nlsr_lowrank *st);

/* After the last pass: W_hat rows [r0, r1) into out ((r1 - r0) x in), any blocks, any order.
 * For the identity, w (those rows of W) is required and copied; otherwise w is ignored and may
 * be NULL. score_block writes |W_hat| instead, the magnitude rule's scores. */
int nlsr_lowrank_project_block(const nlsr_lowrank *st, size_t r0, size_t r1, const float *w,
                               float *out);
int nlsr_lowrank_score_block(const nlsr_lowrank *st, size_t r0, size_t r1, const float *w,
                             float *scores);

/* The basis U_r (out x r, row-major, orthonormal columns, descending singular values) and
 * P = U_r^T W (r x in); NULL for the identity or before the last pass. Owned by st. */
const float *nlsr_lowrank_basis(const nlsr_lowrank *st);
const float *nlsr_lowrank_coeffs(const nlsr_lowrank *st);

/* ---- activations to Gram ----------------------------------------------------------------- */

/* G += X^T X for `rows` activation rows X (rows x in, f32, row-major), in f32 through ssyrk.
 * Only the upper triangle is updated (G[i][j], i <= j); nlsr_gram_finish mirrors it. The
 * caller zeroes G (in x in floats, charged by the caller) first and converts other dtypes with
 * nlsr_to_f32 block by block. */
void nlsr_gram_add_rows(float *G, size_t in, const float *X, size_t rows);
void nlsr_gram_finish(float *G, size_t in);
/* What begin checks of G (O(in^2), about 0.1 s at in = 8192): every element finite, the
 * diagonal >= 0, and G[i][j] within 1e-4 sqrt(G[i][i] G[j][j]) of G[j][i]. NLSR_E_VALUE naming
 * the element otherwise. */
int nlsr_gram_check(const float *G, size_t in, nlsr_err *e);

/* OpenBLAS's thread count, which is process-wide (threads < 1 means 1). */
void nlsr_lowrank_set_threads(int threads);

#endif
