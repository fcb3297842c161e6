/* SPDX-License-Identifier: Apache-2.0 */
/* The magnitude rule's mask over a chunk of scores, as bitmaps: the work of the mask pass of a
 * streamed module (src/plan/realign_run.c), vectorized where the CPU allows. Bit j of the map is
 * element j: w[j / 64] >> (j % 64) & 1. */
#ifndef NLSR_COMPUTE_MASK_H
#define NLSR_COMPUTE_MASK_H

#include <stddef.h>
#include <stdint.h>

/* w[0 .. ceil(n/64)) = the bitmap of s[j] > thr (strict; scores are never NaN), bits past n
 * zero. */
void nlsr_mask_words(const float *s, size_t n, float thr, uint64_t *w);
/* The positions of the set bits of the first n bits of w, ascending, into idx; returns their
 * count. */
size_t nlsr_mask_indices(const uint64_t *w, size_t n, uint32_t *idx);
/* The scores of s whose high 16 bits equal `bucket` (the radix selection's candidates), in
 * order, appended to out (when out is not NULL); returns how many there are. */
size_t nlsr_bucket_collect(const float *s, size_t n, uint32_t bucket, float *out);
/* The radix selection's second level when the candidates are too many to keep: for each score
 * of s whose high 16 bits equal `bucket`, hist2[its low 16 bits] += 1; returns how many there
 * are. */
uint64_t nlsr_bucket_hist_low(const float *s, size_t n, uint32_t bucket, uint64_t *hist2);

#endif
