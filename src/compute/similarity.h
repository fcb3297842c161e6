/* SPDX-License-Identifier: Apache-2.0 */
/* Full-weight kernels of METHOD.md steps 1-3, element by element in f32 with double sums:
 * the safety reference e = a + beta (a - b), the score |e_s - b|, and the masked cosine's sums.
 * Built with -ffp-contract=off, so every a*b+c rounds twice as the method prescribes. */
#ifndef NLSR_COMPUTE_SIMILARITY_H
#define NLSR_COMPUTE_SIMILARITY_H

#include <stddef.h>

/* e[i] = a[i] + beta * (a[i] - b[i]), each operation in f32. e may alias a or b. */
void nlsr_full_reference_f32(const float *a, const float *b, float beta, float *e, size_t n);

/* s[i] = |e[i] - b[i]| in f32. s may alias e or b. */
void nlsr_full_score_f32(const float *e, const float *b, float *s, size_t n);

/* Sums of the masked cosine S = cos(M.(t - b), M.(e - b)) over the masked elements only:
 * x = t - b and y = e - b in f32, then dot += x*y, nx += x*x, ny += y*y in double (the f32
 * products are exact in double). nlsr_cosine (selection.h) turns the sums into S. */
typedef struct nlsr_cos_sums {
    double dot, nx, ny;
} nlsr_cos_sums;

void nlsr_cos_add_masked(nlsr_cos_sums *acc, const float *t, const float *e, const float *b,
                         size_t m);

/* The same sums in two steps, for a caller that computes the pairs on one thread and adds
 * them on another: nlsr_cos_xy stores each masked element's f32 pair (x, y) = (t - b, e - b)
 * into xy[2i], xy[2i + 1]; nlsr_cos_add_xy adds m such pairs to acc in order, with the
 * arithmetic of nlsr_cos_add_masked. Masked elements split anywhere and added in order, part
 * by the one and part by the other, give the same bits as nlsr_cos_add_masked over all. */
void nlsr_cos_xy(const float *t, const float *e, const float *b, float *xy, size_t m);
void nlsr_cos_add_xy(nlsr_cos_sums *acc, const float *xy, size_t m);

/* Index of the first element that is NaN or infinite, or n if all are finite. */
size_t nlsr_first_nonfinite_f32(const float *x, size_t n);

#endif
