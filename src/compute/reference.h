/* SPDX-License-Identifier: Apache-2.0 */
/* The safety reference (METHOD.md step 1) computed from raw inputs into raw outputs. */
#ifndef NLSR_COMPUTE_REFERENCE_H
#define NLSR_COMPUTE_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

#include "nlsr.h"

/* BF16 a and b into BF16 o, n elements. Returns nonzero if any input is not finite (the caller
 * then finds which). Vectorized; the same bits as the scalar formula. */
uint32_t nlsr_reference_bf16(const unsigned char *a, const unsigned char *b, unsigned char *o,
                             size_t n, float beta);
/* Any float dtypes in (da, db), a writable float dtype out (dout); same return. */
uint32_t nlsr_reference_any(nlsr_dtype da, const unsigned char *a, nlsr_dtype db,
                            const unsigned char *b, nlsr_dtype dout, unsigned char *o, size_t n,
                            float beta);

/* METHOD.md steps 1-2 for BF16 aligned a and base b, per element exactly as the generic path
 * (f32 arithmetic, e_s rounded to BF16): s = |e_s - b|. Returns nonzero if any a, b or e_s is
 * not finite (the caller then finds which with the generic path). */
uint32_t nlsr_score_bf16(const unsigned char *a, const unsigned char *b, float beta, float *s,
                         size_t n);
/* The same, also giving e_s as f32 (fe) and BF16 bits (es), and b as f32 (fb); the outputs
 * must not overlap the inputs or each other. */
uint32_t nlsr_step1_bf16(const unsigned char *restrict a, const unsigned char *restrict b,
                         float beta, float *restrict s, float *restrict fe, float *restrict fb,
                         uint16_t *restrict es, size_t n);
/* Nonzero if any of n raw values of float dtype t is NaN or infinite (as f32 for F64). */
uint32_t nlsr_any_nonfinite_raw(nlsr_dtype t, const unsigned char *raw, size_t n);

#endif
