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

#endif
