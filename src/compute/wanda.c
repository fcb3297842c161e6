/* SPDX-License-Identifier: Apache-2.0 */
#include "wanda.h"

#include <math.h>
#include <string.h>

#include "kth.h"

const char *nlsr_wanda_select_name(nlsr_wanda_select s)
{
    return s == NLSR_WANDA_PER_ROW ? "row" : "matrix";
}

int nlsr_wanda_select_parse(const char *s, nlsr_wanda_select *out)
{
    if (s && strcmp(s, "row") == 0) *out = NLSR_WANDA_PER_ROW;
    else if (s && strcmp(s, "matrix") == 0) *out = NLSR_WANDA_PER_MATRIX;
    else return NLSR_E_USAGE;
    return 0;
}

int nlsr_wanda_norms_from_gram(const float *G, size_t in, float *norms, nlsr_err *e)
{
    for (size_t j = 0; j < in; j++) {
        float d = G[j * in + j];
        NLSR_FAIL_IF(!(d >= 0.0f) || !isfinite(d), e, NLSR_E_VALUE,
                     "activation Gram matrix: diagonal element %zu is %g (must be finite and "
                     ">= 0)",
                     j, (double)d);
        norms[j] = (float)sqrt((double)d);
    }
    return 0;
}

int nlsr_wanda_sumsq_add(double *sumsq, const float *X, size_t rows, size_t in, uint64_t row0,
                         nlsr_err *e)
{
    for (size_t i = 0; i < rows; i++) {
        const float *x = X + i * in;
        for (size_t j = 0; j < in; j++) {
            NLSR_FAIL_IF(!isfinite(x[j]), e, NLSR_E_VALUE, "activations: X[%llu][%zu] is %g",
                         (unsigned long long)(row0 + i), j, (double)x[j]);
            double v = (double)x[j];
            sumsq[j] += v * v;
        }
    }
    return 0;
}

void nlsr_wanda_norms_finish(const double *sumsq, size_t in, float *norms)
{
    for (size_t j = 0; j < in; j++) norms[j] = (float)sqrt(sumsq[j]);
}

void nlsr_wanda_scores(const float *delta, size_t rows, size_t in, const float *norms,
                       float *scores)
{
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < in; j++) scores[i * in + j] = fabsf(delta[i * in + j]) * norms[j];
}

uint64_t nlsr_mask_per_matrix(const float *scores, size_t n, double sparsity, float *scratch,
                              uint8_t *mask)
{
    uint64_t k = nlsr_mask_k(n, sparsity), c = 0;
    if (k >= n) {
        memset(mask, 0, n);
        return 0;
    }
    memcpy(scratch, scores, n * sizeof(float));
    float thr = nlsr_kth_inplace(scratch, n, k);
    for (size_t i = 0; i < n; i++) {
        mask[i] = scores[i] > thr;
        c += mask[i];
    }
    return c;
}

uint64_t nlsr_mask_per_row(const float *scores, size_t rows, size_t in, double sparsity,
                           float *scratch, uint8_t *mask)
{
    uint64_t c = 0;
    for (size_t i = 0; i < rows; i++)
        c += nlsr_mask_per_matrix(scores + i * in, in, sparsity, scratch, mask + i * in);
    return c;
}
