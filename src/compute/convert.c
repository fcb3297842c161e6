/* SPDX-License-Identifier: Apache-2.0 */
#include "convert.h"

#include <math.h>
#include <string.h>

_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE binary32/64 required");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; nlsr supports little-endian hosts only"
#endif

/* Hot loops (the bulk conversions): -O3's vectorizer, which a -O2 build (RelWithDebInfo, the
 * default) does not run on them, and an AVX2 clone chosen at load time where the CPU has it, as in reference.c. The
 * loop bodies are branch-free integer code (plus one exact int -> float conversion and an
 * exact multiplication by a power of two), so every clone gives the scalar functions' bits
 * whatever the rounding mode.
 *
 * F16 additionally has an F16C path (vcvtph2ps / vcvtps2ph, chosen at run time where the CPU
 * has F16C and AVX2), several times faster than the integer loops. Both instructions are exact
 * and ignore MXCSR: vcvtps2ph rounds to nearest even from its immediate (0), ignores FTZ, and
 * DAZ can only zero f32 subnormals, which narrow to a signed zero anyway; vcvtph2ps ignores
 * DAZ. NaN payloads: vcvtps2ph quiets and keeps the top 10 payload bits, as
 * nlsr_f32_to_f16 does; vcvtph2ps quiets signalling NaNs, which nlsr_f16_to_f32 does not, so
 * the widening path puts the scalar function's bits back for every all-ones exponent.
 *
 * tests/test_kernels.c checks every path against the scalar functions (all 65536 halves, and
 * millions of f32 patterns; all 2^32 on request), and is also built with NLSR_NO_F16C (the
 * clones alone) and NLSR_NO_CLONES (plain C). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NLSR_NO_CLONES)
#define NLSR_HOT __attribute__((optimize("O3"), target_clones("avx2", "default")))
#if !defined(NLSR_NO_F16C)
#define NLSR_F16C_PATH 1
#include <immintrin.h>
#endif
#else
#define NLSR_HOT
#endif

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

float nlsr_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

float nlsr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        /* Subnormal: value = man * 2^-24, exact in f32. */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

float nlsr_e4m3_to_f32(uint8_t b)
{
    /* float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN. */
    uint32_t exp = (b >> 3) & 0xFu, man = b & 0x7u;
    float v;
    if (exp == 0xF && man == 0x7) return (b & 0x80) ? -NAN : NAN;
    if (exp == 0) v = (float)man * 0x1p-9f;
    else v = bits_f32(((exp + 120u) << 23) | (man << 20));
    return (b & 0x80) ? -v : v;
}

float nlsr_e5m2_to_f32(uint8_t b)
{
    /* float8_e5m2 is the upper byte of an IEEE half. */
    return nlsr_f16_to_f32((uint16_t)((uint16_t)b << 8));
}

uint16_t nlsr_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7FFFu + lsb;
    return (uint16_t)(u >> 16);
}

uint16_t nlsr_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu)); /* NaN */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to or is infinity */
    if (a < 0x38800000u) {
        /* Result is subnormal or zero: value / 2^-24 rounded to nearest even. Adding 0.5 in
         * f32 magnitude space would double-round, so shift the mantissa by hand. */
        if (a < 0x33000000u) return sign; /* below half the smallest subnormal */
        uint32_t exp = a >> 23;
        uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - exp; /* 14 + (112 - exp + 1) - 1 ... brings man to 2^-24 units */
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xFFFu + lsb;
    return (uint16_t)(sign | (r >> 13));
}

/* ---- bulk kernels: the scalar functions above, restated branch-free ------------------------ */

/* nlsr_bf16_to_f32 over an array: the 16-bit shift. */
NLSR_HOT static void bf16_to_f32_n(const unsigned char *p, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(&dst[i], &u, 4);
    }
}

/* nlsr_f16_to_f32 over an array. Normal numbers rebias the exponent (+112), infinities and
 * NaNs get f32's all-ones exponent with the 10 mantissa bits on top (payload kept, not
 * quieted), zeros and subnormals are man * 2^-24 (the int -> float conversion and the
 * scaling by a power of two are exact, so +0 stays +0 in any rounding mode), then the sign. */
NLSR_HOT static void f16_to_f32_n(const unsigned char *p, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
        uint32_t em = (uint32_t)h & 0x7FFFu;
        uint32_t ex = em & 0x7C00u;
        uint32_t norm = (em << 13) + 0x38000000u;
        uint32_t special = (em << 13) | 0x7F800000u;
        float fsub = (float)(int32_t)(em & 0x3FFu) * 0x1p-24f;
        uint32_t sub;
        memcpy(&sub, &fsub, 4);
        /* Selected with masks: a conditional would be sunk into a branch around the float
         * operations, which the vectorizer does not if-convert. */
        uint32_t is_special = 0u - (uint32_t)(ex == 0x7C00u);
        uint32_t is_sub = 0u - (uint32_t)(ex == 0);
        uint32_t o = (special & is_special) | (norm & ~is_special);
        o = ((sub & is_sub) | (o & ~is_sub)) | sign;
        memcpy(&dst[i], &o, 4);
    }
}

/* nlsr_f32_to_bf16 over an array (reference.c's rne_bf16): round to nearest even by adding
 * 0x7FFF plus the kept lsb; NaNs are truncated and quieted instead. */
NLSR_HOT static void f32_to_bf16_n(const float *src, unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        uint32_t q = (u >> 16) | 0x40u;
        uint16_t h = (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? q : r);
        memcpy(p + 2 * i, &h, 2);
    }
}

/* nlsr_f32_to_f16 over an array. Every case is computed and the right one selected:
 *  - NaN: quieted, the top 10 mantissa bits kept;
 *  - |x| >= 0x477FF000 (65520, the overflow tie, and up): infinity;
 *  - normal results: rebias 127 -> 15, round to nearest even by adding 0xFFF plus the kept lsb
 *    (a carry into the exponent field is the right result; below 0x477FF000 it stays at or
 *    under 0x7BFF);
 *  - subnormal results, |x| < 2^-14: the 24-bit significand shifted right by 126 - exp into
 *    units of 2^-24, rounding to nearest even the same way (rem > half adds one, a tie adds
 *    the kept lsb). Below 2^-25 (exp < 102, f32 zeros and subnormals included) the significand
 *    is taken as 0, so the result is 0 as the scalar function's early return gives; the shift
 *    is clamped to 24 so that lanes whose result is not selected shift by a defined amount. */
NLSR_HOT static void f32_to_f16_n(const float *src, unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        uint32_t sign = (u >> 16) & 0x8000u;
        uint32_t a = u & 0x7FFFFFFFu;
        uint32_t nan = 0x7E00u | ((a >> 13) & 0x3FFu);
        uint32_t r = a - 0x38000000u;
        uint32_t nrm = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
        uint32_t ex = a >> 23;
        uint32_t sh = 126u - ex; /* >= 14 where used (a < 0x38800000 means ex <= 112) */
        sh = sh > 24u ? 24u : sh;
        uint32_t man = ex < 102u ? 0u : (a & 0x7FFFFFu) | 0x800000u;
        uint32_t sub = (man + ((1u << sh) >> 1) - 1u + ((man >> sh) & 1u)) >> sh;
        uint32_t o = a < 0x38800000u ? sub : nrm;
        o = a >= 0x477FF000u ? 0x7C00u : o;
        o = a > 0x7F800000u ? nan : o;
        uint16_t h = (uint16_t)(sign | o);
        memcpy(p + 2 * i, &h, 2);
    }
}

#ifdef NLSR_F16C_PATH
/* 1 if the CPU has F16C and AVX2 (asked once; a relaxed atomic, as threads may race here). */
static int cpu_has_f16c(void)
{
    static int state; /* 0 not asked yet, 1 no, 2 yes */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (!s) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") ? 2 : 1;
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s == 2;
}

/* 1 if the byte ranges [a, a + na) and [b, b + nb) do not overlap. The F16C loops read and
 * write 8 elements at a time, so they run only on disjoint buffers; overlapping ones keep the
 * element-by-element loops' behaviour (those loops check overlap themselves). */
static int disjoint(const void *a, size_t na, const void *b, size_t nb)
{
    uintptr_t ua = (uintptr_t)a, ub = (uintptr_t)b;
    return ua + na <= ub || ub + nb <= ua;
}

/* nlsr_f16_to_f32 on the first multiple of 8 elements; returns how many it converted. */
__attribute__((target("avx2,f16c"))) static size_t f16_to_f32_f16c(const unsigned char *p,
                                                                   float *dst, size_t n)
{
    const __m256i exp16 = _mm256_set1_epi32(0x7C00), mag16 = _mm256_set1_epi32(0x7FFF);
    const __m256i sign16 = _mm256_set1_epi32(0x8000), exp32 = _mm256_set1_epi32(0x7F800000);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i));
        __m256 f = _mm256_cvtph_ps(h);
        __m256i w = _mm256_cvtepu16_epi32(h);
        /* Infinities and NaNs as nlsr_f16_to_f32 builds them (payload on top, not quieted). */
        __m256i special = _mm256_or_si256(
            _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, mag16), 13), exp32),
            _mm256_slli_epi32(_mm256_and_si256(w, sign16), 16));
        __m256i is_special = _mm256_cmpeq_epi32(_mm256_and_si256(w, exp16), exp16);
        f = _mm256_blendv_ps(f, _mm256_castsi256_ps(special), _mm256_castsi256_ps(is_special));
        _mm256_storeu_ps(dst + i, f);
    }
    return i;
}

/* nlsr_f32_to_f16 on the first multiple of 8 elements; returns how many it converted. */
__attribute__((target("avx2,f16c"))) static size_t f32_to_f16_f16c(const float *src,
                                                                   unsigned char *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(src + i);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); /* imm 0: RNE, not MXCSR */
        _mm_storeu_si128((__m128i *)(void *)(p + 2 * i), h);
    }
    return i;
}
#endif

void nlsr_to_f32(nlsr_dtype t, const void *src, float *dst, size_t n)
{
    const unsigned char *p = src;
    switch (t) {
    case NLSR_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case NLSR_DTYPE_BF16: bf16_to_f32_n(p, dst, n); break;
    case NLSR_DTYPE_F16: {
        size_t done = 0;
#ifdef NLSR_F16C_PATH
        if (n >= 8 && cpu_has_f16c() && disjoint(p, 2 * n, dst, 4 * n))
            done = f16_to_f32_f16c(p, dst, n);
#endif
        f16_to_f32_n(p + 2 * done, dst + done, n - done);
        break;
    }
    case NLSR_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case NLSR_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = nlsr_e4m3_to_f32(p[i]);
        break;
    case NLSR_DTYPE_F8_E5M2:
        for (size_t i = 0; i < n; i++) dst[i] = nlsr_e5m2_to_f32(p[i]);
        break;
    default:
        for (size_t i = 0; i < n; i++) dst[i] = NAN;
        break;
    }
}

void nlsr_from_f32(nlsr_dtype t, const float *src, void *dst, size_t n)
{
    unsigned char *p = dst;
    switch (t) {
    case NLSR_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case NLSR_DTYPE_BF16: f32_to_bf16_n(src, p, n); break;
    case NLSR_DTYPE_F16: {
        size_t done = 0;
#ifdef NLSR_F16C_PATH
        if (n >= 8 && cpu_has_f16c() && disjoint(src, 4 * n, p, 2 * n))
            done = f32_to_f16_f16c(src, p, n);
#endif
        f32_to_f16_n(src + done, p + 2 * done, n - done);
        break;
    }
    case NLSR_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d = (double)src[i];
            memcpy(p + 8 * i, &d, 8);
        }
        break;
    default: break;
    }
}

int nlsr_dtype_is_writable_float(nlsr_dtype t)
{
    return t == NLSR_DTYPE_F32 || t == NLSR_DTYPE_BF16 || t == NLSR_DTYPE_F16 ||
           t == NLSR_DTYPE_F64;
}

void nlsr_to_f64(nlsr_dtype t, const void *src, double *dst, size_t n)
{
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *q = p + i * nlsr_dtype_size(t);
        switch (t) {
        case NLSR_DTYPE_F64: memcpy(&dst[i], q, 8); break;
        case NLSR_DTYPE_I8: dst[i] = (double)(int8_t)q[0]; break;
        case NLSR_DTYPE_U8: dst[i] = (double)q[0]; break;
        case NLSR_DTYPE_BOOL: dst[i] = q[0] ? 1.0 : 0.0; break;
        case NLSR_DTYPE_I16: { int16_t v; memcpy(&v, q, 2); dst[i] = (double)v; break; }
        case NLSR_DTYPE_U16: { uint16_t v; memcpy(&v, q, 2); dst[i] = (double)v; break; }
        case NLSR_DTYPE_I32: { int32_t v; memcpy(&v, q, 4); dst[i] = (double)v; break; }
        case NLSR_DTYPE_U32: { uint32_t v; memcpy(&v, q, 4); dst[i] = (double)v; break; }
        case NLSR_DTYPE_I64: { int64_t v; memcpy(&v, q, 8); dst[i] = (double)v; break; }
        case NLSR_DTYPE_U64: { uint64_t v; memcpy(&v, q, 8); dst[i] = (double)v; break; }
        default: {
            float f;
            nlsr_to_f32(t, q, &f, 1);
            dst[i] = (double)f;
            break;
        }
        }
    }
}
