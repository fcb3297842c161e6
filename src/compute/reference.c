/* SPDX-License-Identifier: Apache-2.0 */
/* METHOD.md step 1 stored straight into the output dtype: e = a + beta (a - b) per element in
 * f32 (no fused multiply-add), rounded to nearest even into the output. The streaming amplify
 * job runs these on whole units; realign_full.c uses nlsr_full_reference_f32 on f32 staging. */
#define _GNU_SOURCE
#include "reference.h"

#include <math.h>
#include <string.h>

#include "convert.h"
#include "similarity.h"

/* Hot loops: -O3's vectorizer (the build's -O2 uses GCC's very cheap cost model, which leaves
 * these loops scalar) and an AVX2 clone chosen at load time where the CPU has it. No FMA is
 * enabled either way (and -ffp-contract=off holds), so results are the same bits everywhere;
 * tests/test_amplify.c checks them against plain scalar code. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NLSR_NO_CLONES)
#define NLSR_HOT __attribute__((optimize("O3"), target_clones("avx2", "default")))
#else
#define NLSR_HOT
#endif

/* Elements per step of the generic kernel (f32 staging on the stack). */
#define STEP 1024u

static inline float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* nlsr_f32_to_bf16, inlined and branch-free so the compiler can vectorize the loop. Checked
 * against the compute layer's function in tests/test_amplify.c. */
static inline uint16_t rne_bf16(uint32_t u)
{
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t q = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? q : r);
}

/* The common case, BF16 from BF16 into BF16. Returns nonzero if any input is not finite (the
 * caller then finds which). */
NLSR_HOT uint32_t nlsr_reference_bf16(const unsigned char *a, const unsigned char *b, unsigned char *o,
                         size_t n, float beta)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t ha, hb;
        memcpy(&ha, a + 2 * i, 2);
        memcpy(&hb, b + 2 * i, 2);
        uint32_t ua = (uint32_t)ha << 16, ub = (uint32_t)hb << 16;
        bad |= ((ua & 0x7F800000u) == 0x7F800000u) | ((ub & 0x7F800000u) == 0x7F800000u);
        float fa = f32_of(ua), fb = f32_of(ub);
        float d = fa - fb;
        float m = beta * d;
        float e = fa + m;
        uint16_t he = rne_bf16(bits_of(e));
        memcpy(o + 2 * i, &he, 2);
    }
    return bad;
}

/* Any float dtypes in, a writable float dtype out. */
NLSR_HOT uint32_t nlsr_reference_any(nlsr_dtype da, const unsigned char *a, nlsr_dtype db,
                            const unsigned char *b, nlsr_dtype dout, unsigned char *o, size_t n,
                            float beta)
{
    float fa[STEP], fb[STEP];
    size_t sa = nlsr_dtype_size(da), sb = nlsr_dtype_size(db), so = nlsr_dtype_size(dout);
    uint32_t bad = 0;
    for (size_t at = 0; at < n; at += STEP) {
        size_t m = n - at < STEP ? n - at : STEP;
        nlsr_to_f32(da, a + at * sa, fa, m);
        nlsr_to_f32(db, b + at * sb, fb, m);
        for (size_t i = 0; i < m; i++) bad |= !isfinite(fa[i]) | !isfinite(fb[i]);
        nlsr_full_reference_f32(fa, fb, beta, fa, m);
        if (dout == NLSR_DTYPE_BF16) {
            for (size_t i = 0; i < m; i++) {
                uint16_t h = rne_bf16(bits_of(fa[i]));
                memcpy(o + (at + i) * 2, &h, 2);
            }
        } else {
            nlsr_from_f32(dout, fa, o + at * so, m);
        }
    }
    return bad;
}

/* ---- step 1 with the magnitude score, BF16 aligned and base (the common case) ------------- */

static inline int nonfinite_bf16(uint16_t h)
{
    return (h & 0x7F80u) == 0x7F80u;
}

/* One element: b as f32, e_s's BF16 bits; nonzero if a, b or e_s is not finite. */
static inline uint32_t step1_one(const unsigned char *a, const unsigned char *b, float beta,
                                 float *fb_out, uint16_t *he_out)
{
    uint16_t ha, hb;
    memcpy(&ha, a, 2);
    memcpy(&hb, b, 2);
    float fa = f32_of((uint32_t)ha << 16), fb = f32_of((uint32_t)hb << 16);
    float d = fa - fb;
    float m = beta * d;
    float e = fa + m;
    uint16_t he = rne_bf16(bits_of(e));
    *fb_out = fb;
    *he_out = he;
    return (uint32_t)(nonfinite_bf16(ha) | nonfinite_bf16(hb) | nonfinite_bf16(he));
}

NLSR_HOT uint32_t nlsr_score_bf16(const unsigned char *a, const unsigned char *b, float beta,
                                  float *s, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float fb;
        uint16_t he;
        bad |= step1_one(a + 2 * i, b + 2 * i, beta, &fb, &he);
        s[i] = fabsf(f32_of((uint32_t)he << 16) - fb);
    }
    return bad;
}

NLSR_HOT uint32_t nlsr_step1_bf16(const unsigned char *restrict a,
                                  const unsigned char *restrict b, float beta,
                                  float *restrict s, float *restrict fe, float *restrict fbo,
                                  uint16_t *restrict es, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float fb;
        uint16_t he;
        bad |= step1_one(a + 2 * i, b + 2 * i, beta, &fb, &he);
        float fes = f32_of((uint32_t)he << 16);
        s[i] = fabsf(fes - fb);
        fe[i] = fes;
        fbo[i] = fb;
        es[i] = he;
    }
    return bad;
}

NLSR_HOT uint32_t nlsr_any_nonfinite_raw(nlsr_dtype t, const unsigned char *raw, size_t n)
{
    uint32_t bad = 0;
    if (t == NLSR_DTYPE_BF16 || t == NLSR_DTYPE_F16) {
        uint16_t mask = t == NLSR_DTYPE_BF16 ? 0x7F80u : 0x7C00u;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            bad |= (uint32_t)((h & mask) == mask);
        }
        return bad;
    }
    if (t == NLSR_DTYPE_F32) {
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, raw + 4 * i, 4);
            bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
        }
        return bad;
    }
    /* Other float dtypes: through f32 (F64 narrowing may overflow, which counts too). */
    float f[STEP];
    size_t sz = nlsr_dtype_size(t);
    for (size_t at = 0; at < n; at += STEP) {
        size_t m = n - at < STEP ? n - at : STEP;
        nlsr_to_f32(t, raw + at * sz, f, m);
        for (size_t i = 0; i < m; i++) bad |= (uint32_t)!isfinite(f[i]);
    }
    return bad;
}
