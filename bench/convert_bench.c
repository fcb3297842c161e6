/* SPDX-License-Identifier: Apache-2.0 */
/* Throughput of the compute layer's bulk kernels against the scalar loops they replaced, on
 * 64M elements (override: first argument, in millions). The "old" loops below are the previous
 * src/compute/convert.c and similarity.c code, copied with their scalar functions so they are
 * inlined exactly as they were in the library (same flags: the target's build type plus
 * -ffp-contract=off). Each kernel runs 5 times; the best time counts. Outputs are compared
 * bit for bit too.
 *
 *   cmake --build <build> --target convert_bench && <build>/tests/convert_bench [Melems]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/compute/convert.h"
#include "../src/compute/similarity.h"
#include "nlsr.h"

/* ---- the previous code ------------------------------------------------------------------- */

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float old_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

static float old_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static uint16_t old_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7FFFu + lsb;
    return (uint16_t)(u >> 16);
}

static uint16_t old_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);
    if (a < 0x38800000u) {
        if (a < 0x33000000u) return sign;
        uint32_t exp = a >> 23;
        uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - exp;
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u;
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xFFFu + lsb;
    return (uint16_t)(sign | (r >> 13));
}

static void old_to_f32(nlsr_dtype t, const void *src, float *dst, size_t n)
{
    const unsigned char *p = src;
    switch (t) {
    case NLSR_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = old_bf16_to_f32(h);
        }
        break;
    case NLSR_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = old_f16_to_f32(h);
        }
        break;
    default: break;
    }
}

static void old_from_f32(nlsr_dtype t, const float *src, void *dst, size_t n)
{
    unsigned char *p = dst;
    switch (t) {
    case NLSR_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = old_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case NLSR_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = old_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    default: break;
    }
}

static size_t old_first_nonfinite_f32(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}

static void old_full_reference_f32(const float *a, const float *b, float beta, float *e,
                                   size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        float g = beta * d;
        e[i] = a[i] + g;
    }
}

static void old_full_score_f32(const float *e, const float *b, float *s, size_t n)
{
    for (size_t i = 0; i < n; i++) s[i] = fabsf(e[i] - b[i]);
}

/* ---- timing -------------------------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t N;
static unsigned char *h16a, *h16b, *h16o;
static float *fa, *fb, *fo;
static volatile size_t sink;

enum {
    K_BF16_TO, K_F16_TO, K_BF16_FROM, K_F16_FROM, K_SCAN, K_REF, K_REF_ALIAS, K_SCORE, K_COUNT
};
static const char *names[K_COUNT] = {"to_f32 BF16", "to_f32 F16", "from_f32 BF16",
                                     "from_f32 F16", "first_nonfinite", "full_reference",
                                     "full_reference e=a", "full_score"};

static void run(int k, int old)
{
    switch (k) {
    case K_BF16_TO:
        (old ? old_to_f32 : nlsr_to_f32)(NLSR_DTYPE_BF16, h16a, fo, N);
        break;
    case K_F16_TO: (old ? old_to_f32 : nlsr_to_f32)(NLSR_DTYPE_F16, h16b, fo, N); break;
    case K_BF16_FROM:
        (old ? old_from_f32 : nlsr_from_f32)(NLSR_DTYPE_BF16, fa, h16o, N);
        break;
    case K_F16_FROM: (old ? old_from_f32 : nlsr_from_f32)(NLSR_DTYPE_F16, fa, h16o, N); break;
    case K_SCAN:
        sink = (old ? old_first_nonfinite_f32 : nlsr_first_nonfinite_f32)(fa, N);
        break;
    case K_REF:
        (old ? old_full_reference_f32 : nlsr_full_reference_f32)(fa, fb, 0.75f, fo, N);
        break;
    case K_SCORE: (old ? old_full_score_f32 : nlsr_full_score_f32)(fa, fb, fo, N); break;
    default: break;
    }
}

static double best_of(int k, int old)
{
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0;
        if (k == K_REF_ALIAS) { /* e == a: in place, the copy not timed */
            memcpy(fo, fa, N * 4);
            t0 = now();
            (old ? old_full_reference_f32 : nlsr_full_reference_f32)(fo, fb, 0.75f, fo, N);
        } else {
            t0 = now();
            run(k, old);
        }
        double t = now() - t0;
        if (t < best) best = t;
    }
    return best;
}

/* Bits of the output buffer (16-bit or f32 kernels), to compare old with new. */
static uint64_t digest(int k)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (k == K_BF16_FROM || k == K_F16_FROM) ? h16o
                                                                     : (const unsigned char *)fo;
    size_t len = (k == K_BF16_FROM || k == K_F16_FROM) ? 2 * N : 4 * N;
    if (k == K_SCAN) return (uint64_t)sink;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = (h ^ v) * 1099511628211ull;
    }
    return h;
}

int main(int argc, char **argv)
{
    N = (size_t)((argc > 1 ? atof(argv[1]) : 64.0) * 1024.0 * 1024.0);
    if (N < 8) N = 8;
    h16a = malloc(2 * N);
    h16b = malloc(2 * N);
    h16o = malloc(2 * N);
    fa = malloc(4 * N);
    fb = malloc(4 * N);
    fo = malloc(4 * N);
    if (!h16a || !h16b || !h16o || !fa || !fb || !fo) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    /* Weight-like data: normal values of magnitude about 1e-3 .. 1e-1 with random signs, as
     * checkpoints hold (the old F16 widening and narrowing branch on the value's class). */
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        float v = ldexpf((float)(uint32_t)(s >> 40) * 0x1p-24f + 0.5f, -(int)((s >> 8) & 7u) - 3);
        if (s & 1u) v = -v;
        fa[i] = v;
        fb[i] = v * 0.97f + 0x1p-12f;
        uint16_t hb = old_f32_to_bf16(v), hh = old_f32_to_f16(v);
        memcpy(h16a + 2 * i, &hb, 2);
        memcpy(h16b + 2 * i, &hh, 2);
    }
    /* Touch the outputs once so page faults are not timed. */
    memset(h16o, 0, 2 * N);
    memset(fo, 0, 4 * N);

    printf("%zu elements (%.2fM)\n", N, (double)N / (1024.0 * 1024.0));
    printf("%-20s %10s %10s %8s %s\n", "kernel", "old ms", "new ms", "ratio", "same bits");
    int all_same = 1;
    for (int k = 0; k < K_COUNT; k++) {
        double to = best_of(k, 1);
        uint64_t d_old = digest(k);
        double tn = best_of(k, 0);
        uint64_t d_new = digest(k);
        all_same &= d_old == d_new;
        printf("%-20s %10.3f %10.3f %7.2fx %s\n", names[k], to * 1e3, tn * 1e3, to / tn,
               d_old == d_new ? "yes" : "NO");
    }
    free(h16a);
    free(h16b);
    free(h16o);
    free(fa);
    free(fb);
    free(fo);
    return all_same ? 0 : 1;
}
