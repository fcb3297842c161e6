/* SPDX-License-Identifier: Apache-2.0 */
/* Mask bitmaps and radix candidates (mask.h): an AVX2 version (8 compares per instruction
 * and a movemask) chosen at run time where the CPU has it, and plain C otherwise; both give
 * the same bits (tests/test_mask.c). */
#include "mask.h"

#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(NLSR_NO_CLONES)
#include <immintrin.h>
#define NLSR_MASK_AVX2 1
#endif

static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void mask_words_c(const float *s, size_t n, float thr, uint64_t *w)
{
    size_t nw = (n + 63) / 64;
    for (size_t i = 0; i < nw; i++) {
        uint64_t v = 0;
        size_t end = n - i * 64 < 64 ? n - i * 64 : 64;
        for (size_t k = 0; k < end; k++) v |= (uint64_t)(s[i * 64 + k] > thr) << k;
        w[i] = v;
    }
}

static size_t bucket_collect_c(const float *s, size_t n, uint32_t bucket, float *out)
{
    size_t c = 0;
    for (size_t j = 0; j < n; j++) {
        if (bits_of(s[j]) >> 16 != bucket) continue;
        if (out) out[c] = s[j];
        c++;
    }
    return c;
}

static uint64_t hist_low_scalar(const float *s, size_t n, uint32_t bucket, uint64_t *h)
{
    uint64_t c = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t u = bits_of(s[j]);
        if (u >> 16 != bucket) continue;
        h[u & 0xffffu]++;
        c++;
    }
    return c;
}

/* Blocks of RUN scores with one bit pattern are one add: a module that alignment left
 * unchanged scores all zeros, and counting them one by one increments the same counter, each
 * increment waiting for the last (a sparse 405B layer's prepare took 1.7x as long). */
#define RUN 32

static uint64_t bucket_hist_low_c(const float *s, size_t n, uint32_t bucket, uint64_t *h)
{
    uint64_t c = 0;
    size_t j = 0;
    for (; j + RUN <= n; j += RUN) {
        uint32_t u = bits_of(s[j]), d = 0;
        for (size_t k = 1; k < RUN; k++) d |= bits_of(s[j + k]) ^ u;
        if (d != 0) {
            c += hist_low_scalar(s + j, RUN, bucket, h);
        } else if (u >> 16 == bucket) {
            h[u & 0xffffu] += RUN;
            c += RUN;
        }
    }
    return c + hist_low_scalar(s + j, n - j, bucket, h);
}

#ifdef NLSR_MASK_AVX2
__attribute__((target("avx2"))) static void mask_words_avx2(const float *s, size_t n, float thr,
                                                           uint64_t *w)
{
    __m256 t = _mm256_set1_ps(thr);
    size_t full = n / 64;
    for (size_t i = 0; i < full; i++) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) {
            __m256 x = _mm256_loadu_ps(s + i * 64 + (size_t)k * 8);
            uint32_t m = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(x, t, _CMP_GT_OQ));
            v |= (uint64_t)m << (8 * k);
        }
        w[i] = v;
    }
    if (full * 64 < n) mask_words_c(s + full * 64, n - full * 64, thr, w + full);
}

/* Of the RUN scores at s: which lie in the bucket (any, all) and whether all have the bit
 * pattern of s[0]. */
__attribute__((target("avx2"))) static void block_avx2(const float *s, __m256i b, int *any,
                                                      int *all, int *same)
{
    __m256i in = _mm256_setzero_si256(), all_in = _mm256_set1_epi32(-1), eq = all_in;
    __m256i first = _mm256_set1_epi32((int)bits_of(s[0]));
    for (int k = 0; k < RUN / 8; k++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(s + (size_t)k * 8));
        __m256i m = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), b);
        in = _mm256_or_si256(in, m);
        all_in = _mm256_and_si256(all_in, m);
        eq = _mm256_and_si256(eq, _mm256_cmpeq_epi32(x, first));
    }
    *any = !_mm256_testz_si256(in, in);
    *all = _mm256_movemask_epi8(all_in) == -1;
    *same = _mm256_movemask_epi8(eq) == -1;
}

__attribute__((target("avx2"))) static size_t bucket_collect_avx2(const float *s, size_t n,
                                                                 uint32_t bucket, float *out)
{
    __m256i b = _mm256_set1_epi32((int)bucket);
    size_t c = 0, j = 0;
    for (; j + RUN <= n; j += RUN) {
        int any, all, same;
        block_avx2(s + j, b, &any, &all, &same);
        if (!any) continue;
        if (all) {
            if (out) memcpy(out + c, s + j, RUN * sizeof *s);
            c += RUN;
            continue;
        }
        c += bucket_collect_c(s + j, RUN, bucket, out ? out + c : NULL);
    }
    return c + bucket_collect_c(s + j, n - j, bucket, out ? out + c : NULL);
}

__attribute__((target("avx2"))) static uint64_t bucket_hist_low_avx2(const float *s, size_t n,
                                                                    uint32_t bucket, uint64_t *h)
{
    __m256i b = _mm256_set1_epi32((int)bucket);
    uint64_t c = 0;
    size_t j = 0;
    for (; j + RUN <= n; j += RUN) {
        int any, all, same;
        block_avx2(s + j, b, &any, &all, &same);
        if (!any) continue;
        if (same) {
            h[bits_of(s[j]) & 0xffffu] += RUN;
            c += RUN;
            continue;
        }
        c += hist_low_scalar(s + j, RUN, bucket, h);
    }
    return c + hist_low_scalar(s + j, n - j, bucket, h);
}

/* libgcc fills the CPU model in a constructor; the test is a load and a bit test. */
static int have_avx2(void)
{
    return __builtin_cpu_supports("avx2");
}
#endif

void nlsr_mask_words(const float *s, size_t n, float thr, uint64_t *w)
{
#ifdef NLSR_MASK_AVX2
    if (have_avx2()) {
        mask_words_avx2(s, n, thr, w);
        return;
    }
#endif
    mask_words_c(s, n, thr, w);
}

size_t nlsr_mask_indices(const uint64_t *w, size_t n, uint32_t *idx)
{
    size_t m = 0, nw = (n + 63) / 64;
    for (size_t i = 0; i < nw; i++) {
        uint64_t v = w[i];
        if (n - i * 64 < 64) v &= ((uint64_t)1 << (n - i * 64)) - 1;
        while (v) {
            idx[m++] = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(v));
            v &= v - 1;
        }
    }
    return m;
}

size_t nlsr_bucket_collect(const float *s, size_t n, uint32_t bucket, float *out)
{
#ifdef NLSR_MASK_AVX2
    if (have_avx2()) return bucket_collect_avx2(s, n, bucket, out);
#endif
    return bucket_collect_c(s, n, bucket, out);
}

uint64_t nlsr_bucket_hist_low(const float *s, size_t n, uint32_t bucket, uint64_t *hist2)
{
#ifdef NLSR_MASK_AVX2
    if (have_avx2()) return bucket_hist_low_avx2(s, n, bucket, hist2);
#endif
    return bucket_hist_low_c(s, n, bucket, hist2);
}
