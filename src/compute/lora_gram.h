/* SPDX-License-Identifier: Apache-2.0 */
/* Similarity sums of two LoRA deltas without forming them (METHOD.md step 3, LoRA).
 *
 * A LoRA module's delta is P = B A with B out x r and A r x in, so an out x in product would
 * cost out*in memory and out*in*r work per side. The Frobenius inner product needs only r x r
 * Gram matrices:
 *     <B1 A1, B2 A2>_F = tr((B1^T B2)(A2 A1^T))
 * which is O((out + in) r^2) work and 6 r^2 doubles of scratch. Everything is in double (OpenBLAS
 * dgemm on factors converted exactly from f32), as METHOD.md's "sums in double" asks. */
#ifndef NLSR_COMPUTE_LORA_GRAM_H
#define NLSR_COMPUTE_LORA_GRAM_H

#include <stddef.h>

/* Scratch doubles nlsr_lora_gram_sums needs for rank r. */
static inline size_t nlsr_lora_gram_scratch(size_t r)
{
    return 6 * r * r;
}

/* For P1 = B1 A1 and P2 = B2 A2 (row-major; B: out x r, A: r x in; any masks already applied):
 * *dot = <P1, P2>_F, *n1 = ||P1||_F^2, *n2 = ||P2||_F^2. Squared norms that rounding pushed below
 * zero (a product that cancels to nothing) are returned as 0, so the cosine is then 0.
 * scratch holds nlsr_lora_gram_scratch(r) doubles. out, r, in >= 1. */
void nlsr_lora_gram_sums(size_t out, size_t r, size_t in, const double *B1, const double *A1,
                         const double *B2, const double *A2, double *scratch, double *dot,
                         double *n1, double *n2);

/* OpenBLAS's thread count, set explicitly so its threads and the I/O workers do not
 * oversubscribe the cores (STYLE.md). threads < 1 means 1. */
void nlsr_lora_gram_set_threads(int threads);

#endif
