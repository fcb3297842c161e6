/* SPDX-License-Identifier: Apache-2.0 */
/* The Wanda scorer (METHOD.md step 2, --scorer wanda): score_ij = |delta_ij| * norm_j, with
 * norm_j = sqrt(sum_n X_nj^2) the L2 norm of input column j over the calibration activations
 * X (n x in). The authors' Wanda code keeps the running mean of X_nj^2 instead of the sum; the
 * two differ by a constant factor, which no per-row or per-matrix ranking can see.
 *
 * Selection: per matrix (the magnitude rule's k = (long)(n * sparsity), mask = score > k-th
 * smallest; stream it with kth.h like magnitude scores), or per row as the authors' Wanda code
 * does: within each row, k = (long)(in * sparsity), mask = score > the row's k-th smallest. */
#ifndef NLSR_COMPUTE_WANDA_H
#define NLSR_COMPUTE_WANDA_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

typedef enum nlsr_wanda_select {
    NLSR_WANDA_PER_ROW,    /* the authors' Wanda code: each output row keeps its own top part */
    NLSR_WANDA_PER_MATRIX  /* one threshold for the whole matrix, as the magnitude rule */
} nlsr_wanda_select;

const char *nlsr_wanda_select_name(nlsr_wanda_select s);
/* "row", "matrix"; NLSR_E_USAGE otherwise. */
int nlsr_wanda_select_parse(const char *s, nlsr_wanda_select *out);

/* norms[j] = sqrt(G[j][j]) for the in x in Gram matrix G = X^T X (f32, row-major).
 * NLSR_E_VALUE, naming j, for a negative or non-finite diagonal element. */
int nlsr_wanda_norms_from_gram(const float *G, size_t in, float *norms, nlsr_err *e);

/* From activation rows, in blocks: sumsq (in doubles, zeroed by the caller) += the squares of
 * each column of X (rows x in, f32, row-major), then norms[j] = sqrt(sumsq[j]).
 * NLSR_E_VALUE, naming row and column, for a non-finite activation (rows counted from
 * row0, the block's first row, for the message). */
int nlsr_wanda_sumsq_add(double *sumsq, const float *X, size_t rows, size_t in, uint64_t row0,
                         nlsr_err *e);
void nlsr_wanda_norms_finish(const double *sumsq, size_t in, float *norms);

/* scores = |delta| * norms[column] in f32, for rows x in elements (row-major). */
void nlsr_wanda_scores(const float *delta, size_t rows, size_t in, const float *norms,
                       float *scores);

/* Per-row selection on rows x in scores (non-negative, not NaN): mask[i][j] = 1 iff
 * scores[i][j] > the k-th smallest of row i, k = (long)(in * sparsity); k >= in leaves the row
 * empty. scratch holds in floats. Returns the number of elements set. */
uint64_t nlsr_mask_per_row(const float *scores, size_t rows, size_t in, double sparsity,
                           float *scratch, uint8_t *mask);

/* Per-matrix selection in memory (the magnitude rule on given scores): k = (long)(n *
 * sparsity), mask = scores > k-th smallest. scratch holds n floats. Returns the count set. */
uint64_t nlsr_mask_per_matrix(const float *scores, size_t n, double sparsity, float *scratch,
                              uint8_t *mask);

#endif
