/* SPDX-License-Identifier: Apache-2.0 */
#include "similarity.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Hot loops: -O3's vectorizer and an AVX2 clone chosen at load time, as in reference.c. No FMA
 * is enabled (and -ffp-contract=off holds), each element is computed on its own with the same
 * f32 operations in the same order, so every clone gives the same bits as plain scalar code. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NLSR_NO_CLONES)
#define NLSR_HOT __attribute__((optimize("O3"), target_clones("avx2", "default")))
#else
#define NLSR_HOT
#endif

NLSR_HOT void nlsr_full_reference_f32(const float *a, const float *b, float beta, float *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        float g = beta * d;
        e[i] = a[i] + g;
    }
}

NLSR_HOT void nlsr_full_score_f32(const float *e, const float *b, float *s, size_t n)
{
    for (size_t i = 0; i < n; i++) s[i] = fabsf(e[i] - b[i]);
}

/* One masked element's terms, in the order both accumulators must share for equal bits. */
static inline void cos_step(double *dot, double *nx, double *ny, double x, double y)
{
    *dot += x * y;
    *nx += x * x;
    *ny += y * y;
}

void nlsr_cos_add_masked(nlsr_cos_sums *acc, const float *t, const float *e, const float *b,
                         size_t m)
{
    double dot = acc->dot, nx = acc->nx, ny = acc->ny;
    for (size_t i = 0; i < m; i++)
        cos_step(&dot, &nx, &ny, (double)(t[i] - b[i]), (double)(e[i] - b[i]));
    acc->dot = dot;
    acc->nx = nx;
    acc->ny = ny;
}

NLSR_HOT void nlsr_cos_xy(const float *t, const float *e, const float *b, float *xy, size_t m)
{
    for (size_t i = 0; i < m; i++) {
        xy[2 * i] = t[i] - b[i];
        xy[2 * i + 1] = e[i] - b[i];
    }
}

void nlsr_cos_add_xy(nlsr_cos_sums *acc, const float *xy, size_t m)
{
    double dot = acc->dot, nx = acc->nx, ny = acc->ny;
    for (size_t i = 0; i < m; i++)
        cos_step(&dot, &nx, &ny, (double)xy[2 * i], (double)xy[2 * i + 1]);
    acc->dot = dot;
    acc->nx = nx;
    acc->ny = ny;
}

/* Elements per chunk of the first-nonfinite scan. */
#define SCAN_CHUNK 256u

/* Each chunk is first tested with an OR over all its elements of "all-ones exponent" (NaN or
 * infinity), a loop with no early exit that vectorizes; only a chunk that has one is scanned
 * again element by element for the first. */
NLSR_HOT size_t nlsr_first_nonfinite_f32(const float *x, size_t n)
{
    for (size_t at = 0; at < n; at += SCAN_CHUNK) {
        size_t m = n - at < SCAN_CHUNK ? n - at : SCAN_CHUNK;
        const float *c = x + at;
        uint32_t bad = 0;
        for (size_t i = 0; i < m; i++) {
            uint32_t u;
            memcpy(&u, &c[i], 4);
            bad |= (u & 0x7F800000u) == 0x7F800000u;
        }
        if (!bad) continue;
        for (size_t i = 0; i < m; i++)
            if (!isfinite(c[i])) return at + i;
    }
    return n;
}
