/* SPDX-License-Identifier: Apache-2.0 */
#include "lora_gram.h"

#include <cblas.h>

/* tr(G H) for r x r row-major G, H: sum over i, j of G[i][j] H[j][i], in a fixed order so the
 * result does not depend on the BLAS build. */
static double trace_of_product(const double *G, const double *H, size_t r)
{
    double s = 0.0;
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < r; j++) s += G[i * r + j] * H[j * r + i];
    return s;
}

/* X^T Y for X, Y rows x r (row-major): the r x r Gram of two B factors. */
static void gram_cols(const double *X, const double *Y, size_t rows, size_t r, double *G)
{
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)r, (blasint)r, (blasint)rows,
                1.0, X, (blasint)r, Y, (blasint)r, 0.0, G, (blasint)r);
}

/* X Y^T for X, Y r x cols (row-major): the r x r Gram of two A factors. */
static void gram_rows(const double *X, const double *Y, size_t r, size_t cols, double *G)
{
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)r, (blasint)r, (blasint)cols,
                1.0, X, (blasint)cols, Y, (blasint)cols, 0.0, G, (blasint)r);
}

void nlsr_lora_gram_sums(size_t out, size_t r, size_t in, const double *B1, const double *A1,
                         const double *B2, const double *A2, double *scratch, double *dot,
                         double *n1, double *n2)
{
    size_t rr = r * r;
    double *b12 = scratch, *a21 = scratch + rr;
    double *b11 = scratch + 2 * rr, *a11 = scratch + 3 * rr;
    double *b22 = scratch + 4 * rr, *a22 = scratch + 5 * rr;
    gram_cols(B1, B2, out, r, b12);
    gram_rows(A2, A1, r, in, a21);
    gram_cols(B1, B1, out, r, b11);
    gram_rows(A1, A1, r, in, a11);
    gram_cols(B2, B2, out, r, b22);
    gram_rows(A2, A2, r, in, a22);
    *dot = trace_of_product(b12, a21, r);
    double x = trace_of_product(b11, a11, r), y = trace_of_product(b22, a22, r);
    *n1 = x > 0.0 ? x : 0.0;
    *n2 = y > 0.0 ? y : 0.0;
}

void nlsr_lora_gram_set_threads(int threads)
{
    openblas_set_num_threads(threads < 1 ? 1 : threads);
}
