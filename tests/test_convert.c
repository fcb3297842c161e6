/* SPDX-License-Identifier: Apache-2.0 */
/* Dtype conversions (src/compute/convert.h) against references written differently here.
 *
 * Widening: every one of the 65536 f16 and bf16 bit patterns and the 256 of each F8 format is
 * decoded by field arithmetic and ldexp in double, and must equal the library's f32 exactly
 * (same value, same sign of zero, NaN kept NaN with its sign and payload).
 *
 * Narrowing: the reference does not touch bits of the input at all. It looks the value up by
 * binary search in the table of all representable f16 / bf16 values, then picks the nearer
 * neighbour by exact double subtraction, ties to the even pattern, and treats the pattern
 * after the largest finite one as 2^16 (f16) or 2^128 (bf16), which is IEEE's overflow rule.
 * It is checked on every representable value, every midpoint between neighbours (the ties),
 * one float either side of those, special values, and a few million random bit patterns.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../src/compute/convert.h"
#include "nlsr.h"
#include "test.h"

static double f16_table[0x7C01], bf16_table[0x7F81]; /* positive patterns up to +inf */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- reference decoders: sign, exponent and mantissa fields, then ldexp ------------------ */

static double ref_f16(uint16_t h)
{
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v;
    if (e == 0x1F) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp(m, -24);         /* 2^-14 * m / 2^10 */
    else v = ldexp(1024 + m, e - 15 - 10);
    return (h & 0x8000) ? -v : v;
}

static double ref_bf16(uint16_t h)
{
    int e = (h >> 7) & 0xFF, m = h & 0x7F;
    double v;
    if (e == 0xFF) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp(m, -133);        /* 2^-126 * m / 2^7 */
    else v = ldexp(128 + m, e - 127 - 7);
    return (h & 0x8000) ? -v : v;
}

static double ref_e4m3(uint8_t b)
{
    /* float8_e4m3fn: bias 7, no infinities, only S.1111.111 is NaN; max 448. */
    int e = (b >> 3) & 0xF, m = b & 0x7;
    double v;
    if (e == 0xF && m == 0x7) v = NAN;
    else if (e == 0) v = ldexp(m, -9);          /* 2^-6 * m / 2^3 */
    else v = ldexp(8 + m, e - 7 - 3);
    return (b & 0x80) ? -v : v;
}

static double ref_e5m2(uint8_t b)
{
    /* float8_e5m2: bias 15, IEEE-style infinities and NaNs; max 57344. */
    int e = (b >> 2) & 0x1F, m = b & 0x3;
    double v;
    if (e == 0x1F) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp(m, -16);         /* 2^-14 * m / 2^2 */
    else v = ldexp(4 + m, e - 15 - 2);
    return (b & 0x80) ? -v : v;
}

/* Same value and same sign (so +0 and -0 differ); any NaN matches NaN of the same sign. */
static int same_value(double want, float got)
{
    if (isnan(want)) return isnan(got) && !signbit(want) == !signbit(got);
    return (double)got == want && !signbit(want) == !signbit(got);
}

static void test_f16_widen_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float got = nlsr_f16_to_f32((uint16_t)h);
        double want = ref_f16((uint16_t)h);
        if (!same_value(want, got) && bad++ < 5)
            FAILF("f16 0x%04x: got %a, want %a", (unsigned)h, (double)got, want);
        /* NaN payloads survive widening: the 10 mantissa bits land on top of f32's 23. */
        if (isnan(want) && ((f32_bits(got) >> 13) & 0x3FF) != (h & 0x3FF) && bad++ < 5)
            FAILF("f16 NaN 0x%04x widened to 0x%08x", (unsigned)h, (unsigned)f32_bits(got));
    }
    ASSERT_EQ_I(bad, 0);
    /* Spot values a reader would recognise. */
    ASSERT_TRUE(nlsr_f16_to_f32(0x3C00) == 1.0f);
    ASSERT_TRUE(nlsr_f16_to_f32(0x7BFF) == 65504.0f);
    ASSERT_TRUE(nlsr_f16_to_f32(0x0001) == 0x1p-24f);
    ASSERT_TRUE(nlsr_f16_to_f32(0x0400) == 0x1p-14f);
    ASSERT_TRUE(nlsr_f16_to_f32(0xC000) == -2.0f);
}

static void test_bf16_widen_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float got = nlsr_bf16_to_f32((uint16_t)h);
        double want = ref_bf16((uint16_t)h);
        if (!same_value(want, got) && bad++ < 5)
            FAILF("bf16 0x%04x: got %a, want %a", (unsigned)h, (double)got, want);
        /* bf16 is the top half of an f32: widening keeps every bit, NaNs included. */
        if (f32_bits(got) != h << 16 && bad++ < 5)
            FAILF("bf16 0x%04x widened to 0x%08x", (unsigned)h, (unsigned)f32_bits(got));
    }
    ASSERT_EQ_I(bad, 0);
}

static void test_f8_widen_exhaustive(void)
{
    int bad = 0;
    for (uint32_t b = 0; b <= 0xFF; b++) {
        float g4 = nlsr_e4m3_to_f32((uint8_t)b), g5 = nlsr_e5m2_to_f32((uint8_t)b);
        double w4 = ref_e4m3((uint8_t)b), w5 = ref_e5m2((uint8_t)b);
        if (!same_value(w4, g4) && bad++ < 5)
            FAILF("e4m3 0x%02x: got %a, want %a", (unsigned)b, (double)g4, w4);
        if (!same_value(w5, g5) && bad++ < 5)
            FAILF("e5m2 0x%02x: got %a, want %a", (unsigned)b, (double)g5, w5);
    }
    ASSERT_EQ_I(bad, 0);
    ASSERT_TRUE(nlsr_e4m3_to_f32(0x7E) == 448.0f);
    ASSERT_TRUE(isinf(nlsr_e4m3_to_f32(0x78)) == 0); /* e4m3fn has no infinity */
    ASSERT_TRUE(nlsr_e5m2_to_f32(0x7B) == 57344.0f);
    ASSERT_TRUE(isinf(nlsr_e5m2_to_f32(0x7C)));
}

/* ---- reference narrowing ------------------------------------------------------------------ */

/* Nearest pattern to |x| among table[0..top] (table[top] is the virtual "next after the
 * largest finite" value standing in for infinity), ties to the even pattern. */
static uint16_t ref_nearest(const double *table, uint16_t top, double ax)
{
    if (isinf(ax)) return top;
    uint32_t lo = 0, hi = top; /* invariant: table[lo] <= ax, and ax < table[hi] or hi==top */
    if (ax >= table[top]) return top;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (table[mid] <= ax) lo = mid;
        else hi = mid;
    }
    double dlo = ax - table[lo], dhi = table[hi] - ax;
    if (dlo < dhi) return (uint16_t)lo;
    if (dhi < dlo) return (uint16_t)hi;
    return (uint16_t)((lo & 1u) ? hi : lo);
}

static void build_tables(void)
{
    for (uint32_t h = 0; h < 0x7C00; h++) f16_table[h] = ref_f16((uint16_t)h);
    f16_table[0x7C00] = 65536.0; /* 2^16: values from 65520 (the midpoint) up overflow */
    for (uint32_t h = 0; h < 0x7F80; h++) bf16_table[h] = ref_bf16((uint16_t)h);
    bf16_table[0x7F80] = ldexp(1.0, 128);
}

static uint16_t ref_to_f16(float f)
{
    uint16_t s = signbit(f) ? 0x8000 : 0;
    return (uint16_t)(s | ref_nearest(f16_table, 0x7C00, fabs((double)f)));
}

static uint16_t ref_to_bf16(float f)
{
    uint16_t s = signbit(f) ? 0x8000 : 0;
    return (uint16_t)(s | ref_nearest(bf16_table, 0x7F80, fabs((double)f)));
}

static int n_checked = 0, n_bad = 0;

static void check_narrow(float f)
{
    n_checked++;
    uint16_t h = nlsr_f32_to_f16(f), b = nlsr_f32_to_bf16(f);
    if (isnan(f)) {
        /* NaN stays NaN (never becomes infinity by losing its payload) and keeps its sign. */
        int ok16 = (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0 && !(h & 0x8000) == !signbit(f);
        int okb = (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0 && !(b & 0x8000) == !signbit(f);
        if ((!ok16 || !okb) && n_bad++ < 10)
            FAILF("NaN 0x%08x -> f16 0x%04x, bf16 0x%04x", (unsigned)f32_bits(f), h, b);
        return;
    }
    uint16_t wh = ref_to_f16(f), wb = ref_to_bf16(f);
    if (h != wh && n_bad++ < 10)
        FAILF("f32 %a (0x%08x) -> f16 0x%04x, want 0x%04x", (double)f, (unsigned)f32_bits(f),
              h, wh);
    if (b != wb && n_bad++ < 10)
        FAILF("f32 %a (0x%08x) -> bf16 0x%04x, want 0x%04x", (double)f, (unsigned)f32_bits(f),
              b, wb);
}

static void check_both_signs(float f)
{
    check_narrow(f);
    check_narrow(-f);
}

static void test_narrow_edges(void)
{
    n_checked = n_bad = 0;
    static const uint32_t specials[] = {
        0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, /* ±0, ±inf */
        0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u, /* NaNs; payload only in low bits */
        0x7FFFFFFFu, 0x7FA00000u, 0x7F8000FFu, 0xFFFFFFFFu,
        0x00000001u, 0x80000001u, 0x007FFFFFu, 0x00800000u, /* f32 subnormals, FLT_MIN */
        0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F7F8000u, 0x7F7F7FFFu, /* FLT_MAX; bf16 overflow tie */
        0x7F7F0000u, 0x3F808000u, 0x3F818000u, 0x3F800001u, /* bf16 ties: to even down/up */
    };
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
        check_narrow(bits_f32(specials[i]));
    static const float vals[] = {
        1.0f, 65504.0f, 65519.0f, 65519.996f, 65520.0f, 65536.0f, 1e10f, FLT_MAX,
        0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f, 0x1.8p-24f, 0x1.4p-24f, 0x1p-14f,
        0x1.ffcp-15f, 0x1.ff8p-15f, 0x1.002p0f, 0x1.006p0f, 0x1.001p0f, 3.140625f, 0.1f,
        FLT_MIN, FLT_TRUE_MIN, 0x1p-133f, 0x1p-134f, 0x1.8p-134f, 0x1p-149f,
    };
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) check_both_signs(vals[i]);

    /* Exact expectations, independent of the reference, for the rules that matter most. */
    ASSERT_EQ_U(nlsr_f32_to_f16(65519.0f), 0x7BFF);     /* below the midpoint: max finite */
    ASSERT_EQ_U(nlsr_f32_to_f16(65520.0f), 0x7C00);     /* the midpoint ties to even: inf */
    ASSERT_EQ_U(nlsr_f32_to_f16(0x1p-25f), 0x0000);     /* half the smallest subnormal: 0 */
    ASSERT_EQ_U(nlsr_f32_to_f16(0x1.8p-24f), 0x0002);   /* 1.5 units: tie to even, up */
    ASSERT_EQ_U(nlsr_f32_to_f16(0x1.004p0f), 0x3C01);   /* above the tie: up */
    ASSERT_EQ_U(nlsr_f32_to_f16(0x1.002p0f), 0x3C00);   /* tie, 0x3C00 even: down */
    ASSERT_EQ_U(nlsr_f32_to_f16(0x1.006p0f), 0x3C02);   /* tie, 0x3C01 odd: up */
    ASSERT_EQ_U(nlsr_f32_to_f16(-0.0f), 0x8000);
    ASSERT_EQ_U(nlsr_f32_to_bf16(-0.0f), 0x8000);
    ASSERT_EQ_U(nlsr_f32_to_bf16(bits_f32(0x3F808000u)), 0x3F80); /* tie, even: down */
    ASSERT_EQ_U(nlsr_f32_to_bf16(bits_f32(0x3F818000u)), 0x3F82); /* tie, odd: up */
    ASSERT_EQ_U(nlsr_f32_to_bf16(bits_f32(0x7F7F8000u)), 0x7F80); /* overflow tie: inf */
    ASSERT_EQ_U(nlsr_f32_to_bf16(bits_f32(0x7F7F7FFFu)), 0x7F7F);
    ASSERT_EQ_I(n_bad, 0);
}

/* Every representable value, the midpoints between neighbours (the ties) and one float
 * either side of each. */
static void test_narrow_all_values_and_ties(void)
{
    n_checked = n_bad = 0;
    for (uint32_t h = 0; h < 0x7C00; h++) {
        float v = (float)f16_table[h];
        /* Exact in f32 (12 significant bits); after 65504 it is 65520, the overflow tie. */
        float mid = (float)((f16_table[h] + f16_table[h + 1]) / 2);
        check_both_signs(v);
        check_both_signs(nextafterf(v, INFINITY));
        check_both_signs(nextafterf(v, 0.0f));
        check_both_signs(mid);
        check_both_signs(nextafterf(mid, 0.0f));
        check_both_signs(nextafterf(mid, INFINITY));
        /* Round trip: narrowing a widened value gives the pattern back. */
        if (nlsr_f32_to_f16(nlsr_f16_to_f32((uint16_t)h)) != h && n_bad++ < 10)
            FAILF("f16 0x%04x does not round-trip", (unsigned)h);
    }
    for (uint32_t h = 0; h < 0x7F80; h++) {
        double hi = bf16_table[h + 1];
        float v = (float)bf16_table[h];
        float mid = (float)((bf16_table[h] + hi) / 2); /* exact: 9 bits, below FLT_MAX */
        check_both_signs(v);
        check_both_signs(nextafterf(v, INFINITY));
        check_both_signs(nextafterf(v, 0.0f));
        check_both_signs(mid);
        check_both_signs(nextafterf(mid, 0.0f));
        check_both_signs(nextafterf(mid, INFINITY));
        if (nlsr_f32_to_bf16(nlsr_bf16_to_f32((uint16_t)h)) != h && n_bad++ < 10)
            FAILF("bf16 0x%04x does not round-trip", (unsigned)h);
    }
    ASSERT_EQ_I(n_bad, 0);
    ASSERT_TRUE(n_checked > 700000);
}

static void test_narrow_random(void)
{
    n_checked = n_bad = 0;
    uint64_t s = 0x9E3779B97F4A7C15ull; /* xorshift64*, fixed seed: reproducible */
    for (int i = 0; i < 3000000; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint32_t u = (uint32_t)((s * 0x2545F4914F6CDD1Dull) >> 32);
        check_narrow(bits_f32(u));
        /* And the same mantissa in 2^-31 .. 2^32, around f16's range, where f16 rounds. */
        check_narrow(bits_f32((u & 0x807FFFFFu) | ((0x60u + ((u >> 23) & 0x3Fu)) << 23)));
    }
    ASSERT_EQ_I(n_bad, 0);
}

/* ---- bulk conversions ------------------------------------------------------------------- */

static void test_bulk(void)
{
    /* Sources at odd addresses: src may be unaligned. */
    unsigned char raw[1 + 8 * 4];
    double out[4];
    float outf[4];

    const int8_t i8[4] = {-128, -1, 0, 127};
    memcpy(raw + 1, i8, sizeof i8);
    nlsr_to_f64(NLSR_DTYPE_I8, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == -128 && out[1] == -1 && out[2] == 0 && out[3] == 127);

    const uint8_t u8[4] = {0, 1, 254, 255};
    memcpy(raw + 1, u8, sizeof u8);
    nlsr_to_f64(NLSR_DTYPE_U8, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == 0 && out[1] == 1 && out[2] == 254 && out[3] == 255);

    const uint8_t bl[4] = {0, 1, 2, 255};
    memcpy(raw + 1, bl, sizeof bl);
    nlsr_to_f64(NLSR_DTYPE_BOOL, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == 0 && out[1] == 1 && out[2] == 1 && out[3] == 1);

    const int16_t i16[4] = {-32768, -7, 7, 32767};
    memcpy(raw + 1, i16, sizeof i16);
    nlsr_to_f64(NLSR_DTYPE_I16, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == -32768 && out[1] == -7 && out[2] == 7 && out[3] == 32767);

    const uint16_t u16[4] = {0, 1, 32768, 65535};
    memcpy(raw + 1, u16, sizeof u16);
    nlsr_to_f64(NLSR_DTYPE_U16, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == 0 && out[1] == 1 && out[2] == 32768 && out[3] == 65535);

    const int32_t i32[4] = {INT32_MIN, -5, 5, INT32_MAX};
    memcpy(raw + 1, i32, sizeof i32);
    nlsr_to_f64(NLSR_DTYPE_I32, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == -2147483648.0 && out[1] == -5 && out[3] == 2147483647.0);

    const uint32_t u32[4] = {0, 1, 0x80000000u, UINT32_MAX};
    memcpy(raw + 1, u32, sizeof u32);
    nlsr_to_f64(NLSR_DTYPE_U32, raw + 1, out, 4);
    ASSERT_TRUE(out[2] == 2147483648.0 && out[3] == 4294967295.0);

    const int64_t i64[4] = {-(1ll << 53), -1, 1, (1ll << 53) - 1};
    memcpy(raw + 1, i64, sizeof i64);
    nlsr_to_f64(NLSR_DTYPE_I64, raw + 1, out, 4);
    ASSERT_TRUE(out[0] == -9007199254740992.0 && out[1] == -1 && out[3] == 9007199254740991.0);

    const uint64_t u64[4] = {0, 1, 1ull << 53, (1ull << 53) - 1};
    memcpy(raw + 1, u64, sizeof u64);
    nlsr_to_f64(NLSR_DTYPE_U64, raw + 1, out, 4);
    ASSERT_TRUE(out[2] == 9007199254740992.0 && out[3] == 9007199254740991.0);

    /* F64 keeps every bit through to_f64, and narrows to f32 rounding to nearest even. */
    const double f64[4] = {0.1, -0.0, 1.0 + 0x1p-24, 1.0 + 0x1p-24 + 0x1p-50};
    memcpy(raw + 1, f64, sizeof f64);
    nlsr_to_f64(NLSR_DTYPE_F64, raw + 1, out, 4);
    ASSERT_TRUE(memcmp(out, f64, sizeof f64) == 0);
    nlsr_to_f32(NLSR_DTYPE_F64, raw + 1, outf, 4);
    ASSERT_TRUE(outf[0] == 0.1f && signbit(outf[1]) && outf[1] == 0.0f);
    ASSERT_TRUE(outf[2] == 1.0f && outf[3] == 1.0f + 0x1p-23f);

    /* The half and F8 formats go through the scalar functions, to f32 and to f64 alike. */
    const uint16_t bf[4] = {0x3F80, 0xC040, 0x0001, 0x7FC1};
    memcpy(raw + 1, bf, sizeof bf);
    nlsr_to_f32(NLSR_DTYPE_BF16, raw + 1, outf, 4);
    nlsr_to_f64(NLSR_DTYPE_BF16, raw + 1, out, 4);
    for (int i = 0; i < 4; i++) {
        ASSERT_TRUE(same_value(ref_bf16(bf[i]), outf[i]));
        ASSERT_TRUE(same_value(ref_bf16(bf[i]), (float)out[i]));
    }
    const uint16_t hf[4] = {0x3C00, 0xFBFF, 0x8001, 0x7C00};
    memcpy(raw + 1, hf, sizeof hf);
    nlsr_to_f32(NLSR_DTYPE_F16, raw + 1, outf, 4);
    nlsr_to_f64(NLSR_DTYPE_F16, raw + 1, out, 4);
    for (int i = 0; i < 4; i++) {
        ASSERT_TRUE(same_value(ref_f16(hf[i]), outf[i]));
        ASSERT_TRUE(same_value(ref_f16(hf[i]), (float)out[i]));
    }
    const uint8_t f8[4] = {0x00, 0x38, 0xC0, 0x7E};
    memcpy(raw + 1, f8, sizeof f8);
    nlsr_to_f32(NLSR_DTYPE_F8_E4M3, raw + 1, outf, 4);
    for (int i = 0; i < 4; i++) ASSERT_TRUE(same_value(ref_e4m3(f8[i]), outf[i]));
    nlsr_to_f32(NLSR_DTYPE_F8_E5M2, raw + 1, outf, 4);
    for (int i = 0; i < 4; i++) ASSERT_TRUE(same_value(ref_e5m2(f8[i]), outf[i]));

    /* Writing back: the same rounding as the scalar functions, to unaligned destinations. */
    const float src[4] = {1.0f + 0x1p-8f, -65520.0f, 0x1p-25f, 3.0f};
    nlsr_from_f32(NLSR_DTYPE_BF16, src, raw + 1, 4);
    for (int i = 0; i < 4; i++) {
        uint16_t v;
        memcpy(&v, raw + 1 + 2 * i, 2);
        ASSERT_EQ_U(v, ref_to_bf16(src[i]));
    }
    nlsr_from_f32(NLSR_DTYPE_F16, src, raw + 1, 4);
    for (int i = 0; i < 4; i++) {
        uint16_t v;
        memcpy(&v, raw + 1 + 2 * i, 2);
        ASSERT_EQ_U(v, ref_to_f16(src[i]));
    }
    nlsr_from_f32(NLSR_DTYPE_F64, src, raw + 1, 4);
    for (int i = 0; i < 4; i++) {
        double v;
        memcpy(&v, raw + 1 + 8 * i, 8);
        ASSERT_TRUE(v == (double)src[i]);
    }
    nlsr_from_f32(NLSR_DTYPE_F32, src, raw + 1, 4);
    ASSERT_TRUE(memcmp(raw + 1, src, sizeof src) == 0);

    ASSERT_TRUE(nlsr_dtype_is_writable_float(NLSR_DTYPE_F32));
    ASSERT_TRUE(nlsr_dtype_is_writable_float(NLSR_DTYPE_BF16));
    ASSERT_TRUE(nlsr_dtype_is_writable_float(NLSR_DTYPE_F16));
    ASSERT_TRUE(nlsr_dtype_is_writable_float(NLSR_DTYPE_F64));
    ASSERT_TRUE(!nlsr_dtype_is_writable_float(NLSR_DTYPE_F8_E4M3));
    ASSERT_TRUE(!nlsr_dtype_is_writable_float(NLSR_DTYPE_I32));
}

int main(void)
{
    build_tables();
    RUN_TEST(test_f16_widen_exhaustive);
    RUN_TEST(test_bf16_widen_exhaustive);
    RUN_TEST(test_f8_widen_exhaustive);
    RUN_TEST(test_narrow_edges);
    RUN_TEST(test_narrow_all_values_and_ties);
    RUN_TEST(test_narrow_random);
    RUN_TEST(test_bulk);
    return test_finish();
}
