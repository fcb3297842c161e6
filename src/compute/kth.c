/* SPDX-License-Identifier: Apache-2.0 */
#include "kth.h"

#include <string.h>

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float nlsr_kth_inplace(float *s, size_t n, uint64_t k)
{
    /* Hoare-style quickselect on the bit patterns, median-of-three pivots; iterative so that
     * adversarial inputs cost time, never stack. */
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t a = bits(s[lo]), b = bits(s[mid]), c = bits(s[hi]);
        uint32_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        size_t i = lo, j = hi;
        for (;;) {
            while (bits(s[i]) < pivot) i++;
            while (bits(s[j]) > pivot) j--;
            if (i >= j) break;
            float t = s[i];
            s[i] = s[j];
            s[j] = t;
            i++;
            j--;
        }
        /* Now s[lo..j] <= pivot <= s[j+1..hi]. */
        if (k <= j) hi = j;
        else lo = j + 1;
    }
    return s[k];
}

/* Scores in runs of one bucket (a module that alignment left unchanged scores all zeros)
 * would increment one counter again and again, each increment waiting for the last: a block of
 * RUN scores in one bucket is one add. The test over the block vectorizes; spread scores pay
 * it and count as before. */
#define RUN 32

void nlsr_kth_hist_add(uint64_t *hist, const float *s, size_t n)
{
    size_t i = 0;
    for (; i + RUN <= n; i += RUN) {
        uint32_t b = bits(s[i]) >> 16, d = 0;
        for (size_t k = 1; k < RUN; k++) d |= (bits(s[i + k]) >> 16) ^ b;
        if (d == 0) {
            hist[b] += RUN;
            continue;
        }
        for (size_t k = 0; k < RUN; k++) hist[bits(s[i + k]) >> 16]++;
    }
    for (; i < n; i++) hist[bits(s[i]) >> 16]++;
}

void nlsr_kth_hist_pick(const uint64_t *hist, uint64_t k, uint32_t *bucket, uint64_t *below)
{
    uint64_t acc = 0;
    for (uint32_t b = 0; b < NLSR_KTH_BUCKETS; b++) {
        if (acc + hist[b] > k) {
            *bucket = b;
            *below = acc;
            return;
        }
        acc += hist[b];
    }
    *bucket = NLSR_KTH_BUCKETS - 1;
    *below = acc;
}

uint64_t nlsr_mask_k(uint64_t n, double sparsity)
{
    double v = (double)n * sparsity;
    if (!(v > 0)) return 0;
    if (v >= 18446744073709549568.0) return UINT64_MAX;
    return (uint64_t)v;
}
