/* SPDX-License-Identifier: Apache-2.0 */
/* Exact k-th smallest of non-negative f32 scores (the magnitude rule's threshold).
 *
 * Non-negative IEEE floats order like their bit patterns as unsigned integers, so the threshold
 * can be found by radix selection over the patterns: a 65536-bin histogram of the high 16 bits
 * finds the bucket holding rank k, then the candidates of that one bucket decide the exact
 * value. In memory this is two passes over an array; streamed, the first pass is a histogram
 * over the data as it flows by and the second needs only that bucket's elements. */
#ifndef NLSR_COMPUTE_KTH_H
#define NLSR_COMPUTE_KTH_H

#include <stddef.h>
#include <stdint.h>

#define NLSR_KTH_BUCKETS 65536u

/* The k-th smallest (0-based, ascending) of s[0..n); k < n, s non-negative, not NaN.
 * Reorders s (quickselect on bit patterns). */
float nlsr_kth_inplace(float *s, size_t n, uint64_t k);

/* Streaming form. Pass 1: nlsr_kth_hist_add over every score. Then nlsr_kth_hist_pick gives
 * the bucket (high 16 bits) that holds rank k and how many scores lie below that bucket. Pass 2:
 * the caller collects the scores whose high 16 bits equal the bucket and calls
 * nlsr_kth_inplace(cands, ncands, k - below). Scores in higher buckets are above the threshold
 * (in the mask) and scores in lower buckets are not, whatever the candidates decide. */
void nlsr_kth_hist_add(uint64_t *hist, const float *s, size_t n);
void nlsr_kth_hist_pick(const uint64_t *hist, uint64_t k, uint32_t *bucket, uint64_t *below);
static inline uint32_t nlsr_kth_bucket_of(float f)
{
    union { float f; uint32_t u; } v = {f};
    return v.u >> 16;
}

/* METHOD.md: k = (long)(n * sparsity), computed in double then truncated. */
uint64_t nlsr_mask_k(uint64_t n, double sparsity);

#endif
