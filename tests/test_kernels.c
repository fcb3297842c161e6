/* SPDX-License-Identifier: Apache-2.0 */
/* The bulk element kernels of the compute layer against the scalar functions they restate.
 *
 * nlsr_to_f32 / nlsr_from_f32 (BF16, F16) run vectorized, branch-free loops (an AVX2 clone
 * where the CPU has one); nlsr_first_nonfinite_f32 scans in chunks; nlsr_full_reference_f32 and
 * nlsr_full_score_f32 are vectorized. Each must give, bit for bit, what the per-element scalar
 * functions (nlsr_bf16_to_f32, nlsr_f16_to_f32, nlsr_f32_to_bf16, nlsr_f32_to_f16) or plain
 * scalar loops written here give:
 *
 *  - widening: all 65536 patterns of each format, sources at every byte offset 0..3 (odd ones
 *    unaligned for uint16), destinations at several float offsets, every length 0..80 at every
 *    start, no write past the end;
 *  - narrowing: every exponent and sign with random mantissas, and with mantissas cut at every
 *    bit to a tie, just below and just above it (f16's subnormal shifts and the normal ties),
 *    NaNs with many payloads, ±0, ±inf, overflow; NLSR_TEST_EXHAUSTIVE=1 in the environment
 *    adds all 2^32 f32 patterns (minutes);
 *  - first_nonfinite: each kind of NaN / infinity at every position of a buffer spanning
 *    several chunks, with a later one too, none at all, unaligned starts;
 *  - reference / score: random and special values, lengths around the vector widths, and the
 *    aliasing the headers allow (e == a, e == b, s == e, s == b);
 *  - the masked cosine's sums in two steps (pairs, then sums) equal the one-step sums, split
 *    anywhere.
 *
 * Built three times by tests/CMakeLists.txt: against the library (the F16C path and the
 * load-time clones this CPU picks), and with the two kernel files compiled in with
 * NLSR_NO_F16C (the clones' loops on whole arrays) and with NLSR_NO_CLONES at -O3 (plain C).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/compute/convert.h"
#include "../src/compute/similarity.h"
#include "nlsr.h"
#include "test.h"
#include "test_bits.h"


/* ---- widening ------------------------------------------------------------------------------ */

#define SENTINEL 0xDEADBEEFu

/* Converts src16[0..n) (given as values) placed at byte offset soff of a buffer into a float
 * buffer at element offset doff, and compares every output's bits with the scalar function's.
 * Returns the number of mismatches (the first few are printed). */
static int widen_check(nlsr_dtype t, const uint16_t *vals, size_t n, size_t soff, size_t doff,
                       int *printed)
{
    unsigned char *raw = xmalloc(2 * n + 8);
    float *out = xmalloc((n + doff + 1) * 4);
    float sent = bits_f32(SENTINEL);
    memcpy(raw + soff, vals, 2 * n);
    for (size_t i = 0; i < n + doff + 1; i++) out[i] = sent;
    nlsr_to_f32(t, raw + soff, out + doff, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = t == NLSR_DTYPE_BF16 ? nlsr_bf16_to_f32(vals[i]) : nlsr_f16_to_f32(vals[i]);
        if (f32_bits(out[doff + i]) != f32_bits(want)) {
            bad++;
            if ((*printed)++ < 8)
                FAILF("%s 0x%04x (n %zu, src +%zu, dst +%zu, at %zu): got 0x%08x, want 0x%08x",
                      t == NLSR_DTYPE_BF16 ? "bf16" : "f16", (unsigned)vals[i], n, soff, doff,
                      i, (unsigned)f32_bits(out[doff + i]), (unsigned)f32_bits(want));
        }
    }
    for (size_t i = 0; i < doff; i++) bad += f32_bits(out[i]) != SENTINEL;
    if (f32_bits(out[doff + n]) != SENTINEL) {
        bad++;
        if ((*printed)++ < 8) FAILF("write past the end (n %zu, dst +%zu)", n, doff);
    }
    free(raw);
    free(out);
    return bad;
}

static void widen_exhaustive(nlsr_dtype t)
{
    uint16_t *all = xmalloc(65536 * 2), *shuf = xmalloc(65536 * 2);
    for (uint32_t h = 0; h < 65536; h++) all[h] = (uint16_t)h;
    /* The same patterns in a scrambled order, so neighbours in a vector differ in kind. */
    memcpy(shuf, all, 65536 * 2);
    for (uint32_t i = 65535; i > 0; i--) {
        uint32_t j = rnd32() % (i + 1);
        uint16_t tmp = shuf[i];
        shuf[i] = shuf[j];
        shuf[j] = tmp;
    }
    int bad = 0, printed = 0;
    for (size_t soff = 0; soff < 4; soff++) {
        bad += widen_check(t, all, 65536, soff, soff, &printed);
        bad += widen_check(t, shuf, 65536, soff, 3 - soff, &printed);
        bad += widen_check(t, all + 1, 65535, soff, 1, &printed); /* odd length */
    }
    /* Every short length at many starts: the vector loops' prologues and tails. */
    for (size_t n = 0; n <= 80; n++)
        for (size_t start = 0; start + n <= 65536; start += 4099)
            bad += widen_check(t, shuf + start, n, (n + start) & 1, n & 3, &printed);
    ASSERT_EQ_I(bad, 0);
    free(all);
    free(shuf);
}

static void test_widen_bf16_exhaustive(void)
{
    widen_exhaustive(NLSR_DTYPE_BF16);
}

static void test_widen_f16_exhaustive(void)
{
    widen_exhaustive(NLSR_DTYPE_F16);
    /* Anchors independent of the scalar function: payloads are kept, signalling NaNs are not
     * quieted, subnormals are exact, the signs of zero survive. */
    const uint16_t h[6] = {0x7C01, 0xFE00, 0x0001, 0x8000, 0x03FF, 0x7C00};
    const uint32_t w[6] = {0x7F802000u, 0xFFC00000u, 0x33800000u, 0x80000000u, 0x387FC000u,
                           0x7F800000u};
    unsigned char raw[1 + sizeof h];
    float out[6];
    memcpy(raw + 1, h, sizeof h);
    nlsr_to_f32(NLSR_DTYPE_F16, raw + 1, out, 6);
    for (int i = 0; i < 6; i++) ASSERT_EQ_U(f32_bits(out[i]), w[i]);
}

static void test_widen_f32(void)
{
    /* F32 is a copy of every bit, NaN payloads and unaligned sources included. */
    uint32_t vals[7] = {0x7F800001u, 0xFFC01234u, 0x80000000u, 0x00000001u,
                        0x3F800000u, 0x7F7FFFFFu, 0xFF800000u};
    unsigned char raw[1 + sizeof vals];
    float out[7];
    memcpy(raw + 1, vals, sizeof vals);
    nlsr_to_f32(NLSR_DTYPE_F32, raw + 1, out, 7);
    ASSERT_TRUE(memcmp(out, vals, sizeof vals) == 0);
}

/* ---- narrowing ----------------------------------------------------------------------------- */

/* The test's input set: n f32 bit patterns. */
typedef struct patset {
    uint32_t *u;
    size_t n, cap;
} patset;

static void pat_add(patset *s, uint32_t u)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1u << 20;
        s->u = realloc(s->u, s->cap * 4);
        if (!s->u) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    s->u[s->n++] = u;
}

static void build_patterns(patset *s)
{
    static const uint32_t specials[] = {
        0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
        0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0xFFFFFFFFu, 0x7FA00000u, 0x7F802000u,
        0x7F801FFFu, 0x7FBFE000u, 0x7F8000FFu, 0x7FC0FFFFu, 0x00000001u, 0x007FFFFFu,
        0x00800000u, 0x7F7FFFFFu, 0x7F7F8000u, 0x7F7F7FFFu, 0x477FE000u, 0x477FEFFFu,
        0x477FF000u, 0x477FF001u, 0x47800000u, 0x38800000u, 0x387FFFFFu, 0x387FF000u,
        0x33000000u, 0x33000001u, 0x32FFFFFFu, 0x33800000u, 0x33C00000u, 0x3F808000u,
        0x3F818000u, 0x3F801000u, 0x3F803000u,
    };
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        pat_add(s, specials[i]);
        pat_add(s, specials[i] ^ 0x80000000u);
    }
    /* Every sign and exponent (NaN / inf exponent included: payloads) ... */
    for (uint32_t se = 0; se < 512; se++) {
        uint32_t hi = se << 23;
        /* ... with random mantissas ... */
        for (int k = 0; k < 8192; k++) pat_add(s, hi | (rnd32() & 0x7FFFFFu));
        /* ... and mantissas cut to a tie at every bit (the rounding point of f16's normal
         * numbers, of each of its subnormal shifts, of bf16), one below and one above. */
        for (uint32_t b = 1; b <= 23; b++) {
            uint32_t low = (1u << b) - 1u, tie = 1u << (b - 1);
            for (int k = 0; k < 32; k++) {
                uint32_t m = (rnd32() & 0x7FFFFFu & ~low) | tie;
                pat_add(s, hi | m);
                pat_add(s, hi | (m - 1u));
                pat_add(s, hi | ((m + 1u) & 0x7FFFFFu));
            }
        }
        /* Smallest and largest mantissas. */
        for (uint32_t m = 0; m < 16; m++) {
            pat_add(s, hi | m);
            pat_add(s, hi | (0x7FFFFFu - m));
        }
    }
    /* Every f16 value and bf16 value widened, and their midpoints with neighbours. */
    for (uint32_t h = 0; h < 65536; h++) {
        pat_add(s, f32_bits(nlsr_f16_to_f32((uint16_t)h)));
        pat_add(s, (uint32_t)h << 16);
        pat_add(s, ((uint32_t)h << 16) | 0x8000u);
        if ((h & 0x7FFF) < 0x7C00) pat_add(s, f32_bits(nlsr_f16_to_f32((uint16_t)h)) + 0x1000u);
    }
}

/* Narrows s->u[0..n) into a 16-bit buffer at byte offset doff, compares with the scalar
 * function per element; the bytes before and after must stay untouched. */
static int narrow_check(nlsr_dtype t, const uint32_t *u, size_t n, size_t soff, size_t doff,
                        int *printed)
{
    float *src = xmalloc((n + soff) * 4);
    unsigned char *raw = xmalloc(2 * n + doff + 2);
    memcpy(src + soff, u, n * 4);
    memset(raw, 0xA5, 2 * n + doff + 2);
    nlsr_from_f32(t, src + soff, raw + doff, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float f = bits_f32(u[i]);
        uint16_t want = t == NLSR_DTYPE_BF16 ? nlsr_f32_to_bf16(f) : nlsr_f32_to_f16(f), got;
        memcpy(&got, raw + doff + 2 * i, 2);
        if (got != want) {
            bad++;
            if ((*printed)++ < 8)
                FAILF("%s from 0x%08x (n %zu, dst +%zu, at %zu): got 0x%04x, want 0x%04x",
                      t == NLSR_DTYPE_BF16 ? "bf16" : "f16", (unsigned)u[i], n, doff, i,
                      (unsigned)got, (unsigned)want);
        }
    }
    for (size_t i = 0; i < doff; i++) bad += raw[i] != 0xA5;
    if (raw[doff + 2 * n] != 0xA5 || raw[doff + 2 * n + 1] != 0xA5) {
        bad++;
        if ((*printed)++ < 8) FAILF("write past the end (n %zu, dst +%zu)", n, doff);
    }
    free(src);
    free(raw);
    return bad;
}

static void narrow_all(nlsr_dtype t)
{
    patset s = {0};
    build_patterns(&s);
    ASSERT_TRUE(s.n > 5000000);
    /* And scrambled, so one vector mixes NaNs, overflows, subnormals and normals. */
    uint32_t *shuf = xmalloc(s.n * 4);
    memcpy(shuf, s.u, s.n * 4);
    for (size_t i = s.n - 1; i > 0; i--) {
        size_t j = (((size_t)rnd32() << 32) | rnd32()) % (i + 1);
        uint32_t tmp = shuf[i];
        shuf[i] = shuf[j];
        shuf[j] = tmp;
    }
    int bad = 0, printed = 0;
    bad += narrow_check(t, s.u, s.n, 0, 0, &printed);
    bad += narrow_check(t, shuf, s.n - 1, 1, 1, &printed); /* odd length, odd address */
    for (size_t n = 0; n <= 80; n++)
        for (size_t start = 0; start + n <= s.n; start += 500009)
            bad += narrow_check(t, shuf + start, n, n & 3, (n + start) & 3, &printed);
    ASSERT_EQ_I(bad, 0);
    free(shuf);
    free(s.u);
}

static void test_narrow_bf16(void)
{
    narrow_all(NLSR_DTYPE_BF16);
}

static void test_narrow_f16(void)
{
    narrow_all(NLSR_DTYPE_F16);
    /* Anchors independent of the scalar function. */
    const uint32_t in[8] = {0x7F800001u, 0x477FF000u, 0x477FEFFFu, 0x33000000u,
                            0x33000001u, 0x33C00000u, 0x387FF000u, 0x80000001u};
    const uint16_t w[8] = {0x7E00, 0x7C00, 0x7BFF, 0x0000, 0x0001, 0x0002, 0x0400, 0x8000};
    unsigned char raw[1 + 16];
    float src[8];
    memcpy(src, in, sizeof in);
    nlsr_from_f32(NLSR_DTYPE_F16, src, raw + 1, 8);
    for (int i = 0; i < 8; i++) {
        uint16_t v;
        memcpy(&v, raw + 1 + 2 * i, 2);
        ASSERT_EQ_U(v, w[i]);
    }
}

/* Narrowing in place (dst == src) reads each float before its bytes are overwritten, as the
 * element-by-element loop always did; the kernels must keep that. */
static void test_narrow_in_place(void)
{
    enum { N = 1001 };
    float *buf = xmalloc(N * 4);
    uint32_t *u = xmalloc(N * 4);
    int bad = 0;
    for (int f = 0; f < 2; f++) {
        nlsr_dtype t = f ? NLSR_DTYPE_F16 : NLSR_DTYPE_BF16;
        for (size_t i = 0; i < N; i++) {
            u[i] = (i & 3) ? rnd32() : (rnd32() & 0x807FFFFFu) | (0x60u + (uint32_t)(i & 0x3F)) << 23;
            buf[i] = bits_f32(u[i]);
        }
        nlsr_from_f32(t, buf, buf, N);
        for (size_t i = 0; i < N; i++) {
            float v = bits_f32(u[i]);
            uint16_t want = f ? nlsr_f32_to_f16(v) : nlsr_f32_to_bf16(v), got;
            memcpy(&got, (unsigned char *)buf + 2 * i, 2);
            if (got != want && bad++ < 4)
                FAILF("%s in place at %zu: got 0x%04x, want 0x%04x", f ? "f16" : "bf16", i,
                      (unsigned)got, (unsigned)want);
        }
    }
    ASSERT_EQ_I(bad, 0);
    free(buf);
    free(u);
}

/* Opt-in: every f32 pattern, in blocks, both formats (NLSR_TEST_EXHAUSTIVE=1). */
static void test_narrow_exhaustive_optin(void)
{
    const char *e = getenv("NLSR_TEST_EXHAUSTIVE");
    if (!e || strcmp(e, "1") != 0) return;
    enum { BLK = 1 << 20 };
    float *src = xmalloc(BLK * 4);
    uint16_t *ob = xmalloc(BLK * 2), *oh = xmalloc(BLK * 2);
    long bad = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += BLK) {
        for (uint32_t i = 0; i < BLK; i++) {
            uint32_t u = (uint32_t)(base + i);
            memcpy(&src[i], &u, 4);
        }
        nlsr_from_f32(NLSR_DTYPE_BF16, src, ob, BLK);
        nlsr_from_f32(NLSR_DTYPE_F16, src, oh, BLK);
        for (uint32_t i = 0; i < BLK; i++) {
            uint16_t wb = nlsr_f32_to_bf16(src[i]), wh = nlsr_f32_to_f16(src[i]);
            if ((ob[i] != wb || oh[i] != wh) && bad++ < 8)
                FAILF("0x%08x: bf16 0x%04x want 0x%04x, f16 0x%04x want 0x%04x",
                      (unsigned)(base + i), ob[i], wb, oh[i], wh);
        }
    }
    ASSERT_EQ_I(bad, 0);
    printf("exhaustive narrowing: all 2^32 f32 patterns checked\n");
    free(src);
    free(ob);
    free(oh);
}

/* ---- first_nonfinite ----------------------------------------------------------------------- */

static void test_first_nonfinite(void)
{
    enum { N = 3 * 256 + 77 };
    static const uint32_t finite[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x7F7FFFFFu,
                                      0xFF7FFFFFu, 0x3F800000u, 0x007FFFFFu, 0x7F000000u};
    static const uint32_t nonfinite[] = {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
                                         0x7F800001u, 0xFFFFFFFFu, 0x7FFFFFFFu};
    float *buf = xmalloc((N + 1) * 4);
    int bad = 0;
    for (size_t off = 0; off < 2; off++) {
        float *x = buf + off;
        for (size_t i = 0; i < N; i++) x[i] = bits_f32(finite[i % 8] ^ (rnd32() & 0x7Fu));
        if (nlsr_first_nonfinite_f32(x, N) != N) bad++;
        for (size_t k = 0; k < sizeof nonfinite / sizeof nonfinite[0]; k++) {
            for (size_t p = 0; p < N; p++) {
                float keep = x[p];
                x[p] = bits_f32(nonfinite[k]);
                size_t got = nlsr_first_nonfinite_f32(x, N);
                if (got != p && bad++ < 8) FAILF("0x%08x at %zu: found at %zu",
                                                 (unsigned)nonfinite[k], p, got);
                /* A length that stops before it does not see it. */
                got = nlsr_first_nonfinite_f32(x, p);
                if (got != p && bad++ < 8) FAILF("n = %zu: found at %zu", p, got);
                /* A second one later (same chunk or a later one) does not hide the first. */
                size_t q = p + 1 + (p * 7) % 300;
                if (q < N) {
                    float keep2 = x[q];
                    x[q] = bits_f32(nonfinite[(k + 1) % 7]);
                    got = nlsr_first_nonfinite_f32(x, N);
                    if (got != p && bad++ < 8) FAILF("two, first at %zu: found %zu", p, got);
                    /* Starting after the first finds the second. */
                    got = nlsr_first_nonfinite_f32(x + p + 1, N - p - 1);
                    if (got != q - p - 1 && bad++ < 8)
                        FAILF("from %zu: found %zu, want %zu", p + 1, got, q - p - 1);
                    x[q] = keep2;
                }
                x[p] = keep;
            }
        }
    }
    ASSERT_EQ_I(bad, 0);
    ASSERT_EQ_U(nlsr_first_nonfinite_f32(buf, 0), 0);
    free(buf);
}

/* ---- reference and score ------------------------------------------------------------------- */

/* Plain scalar versions (this file is built with -ffp-contract=off too). */
static void plain_reference(const float *a, const float *b, float beta, float *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        float g = beta * d;
        e[i] = a[i] + g;
    }
}

static void plain_score(const float *e, const float *b, float *s, size_t n)
{
    for (size_t i = 0; i < n; i++) s[i] = fabsf(e[i] - b[i]);
}

static float rnd_value(void)
{
    uint32_t r = rnd32();
    switch (r & 15u) {
    case 0: return bits_f32(rnd32()); /* any pattern: NaNs, infinities, subnormals */
    case 1: return bits_f32(rnd32() & 0x807FFFFFu); /* subnormal */
    case 2: return (r & 16u) ? -0.0f : 0.0f;
    case 3: return (r & 16u) ? FLT_MAX : -FLT_MAX;
    default: return ldexpf((float)(int32_t)rnd32() * 0x1p-31f, (int)(r >> 28) - 8);
    }
}

static void test_reference_score(void)
{
    enum { N = 4099 };
    float *a = xmalloc(N * 4), *b = xmalloc(N * 4), *e = xmalloc((N + 1) * 4);
    float *w = xmalloc(N * 4), *c = xmalloc(N * 4), *s = xmalloc((N + 1) * 4);
    static const float betas[] = {0.5f, 1.0f, 2.3f, -1.0f, 0.0f, 1e30f, 0x1p-140f};
    int bad = 0, printed = 0;
    for (size_t k = 0; k < sizeof betas / sizeof betas[0]; k++) {
        for (size_t i = 0; i < N; i++) {
            a[i] = rnd_value();
            b[i] = rnd_value();
        }
        for (size_t n = 0; n <= N; n += n < 80 ? 1 : 1001) {
            size_t off = n & 1; /* an odd float offset, not aligned for vectors */
            size_t m = n - (n ? off : 0);
            int before = bad;
            const float *pa = a + off, *pb = b + off;
            plain_reference(pa, pb, betas[k], w, m);
            e[m] = bits_f32(SENTINEL);
            nlsr_full_reference_f32(pa, pb, betas[k], e, m);
            bad += memcmp(e, w, m * 4) != 0 || f32_bits(e[m]) != SENTINEL;
            /* e aliasing a, then b. */
            memcpy(c, pa, m * 4);
            nlsr_full_reference_f32(c, pb, betas[k], c, m);
            bad += memcmp(c, w, m * 4) != 0;
            memcpy(c, pb, m * 4);
            nlsr_full_reference_f32(pa, c, betas[k], c, m);
            bad += memcmp(c, w, m * 4) != 0;

            plain_score(w, pb, c, m);
            s[m] = bits_f32(SENTINEL);
            nlsr_full_score_f32(w, pb, s, m);
            bad += memcmp(s, c, m * 4) != 0 || f32_bits(s[m]) != SENTINEL;
            memcpy(s, w, m * 4);
            nlsr_full_score_f32(s, pb, s, m); /* s aliasing e */
            bad += memcmp(s, c, m * 4) != 0;
            memcpy(s, pb, m * 4);
            nlsr_full_score_f32(w, s, s, m); /* s aliasing b */
            bad += memcmp(s, c, m * 4) != 0;
            if (bad != before && printed++ < 8)
                FAILF("beta %a, n %zu: differs from plain scalar code", (double)betas[k], m);
        }
    }
    ASSERT_EQ_I(bad, 0);
    free(a);
    free(b);
    free(e);
    free(w);
    free(c);
    free(s);
}

/* The masked cosine's sums in two steps (nlsr_cos_xy's f32 pairs, then nlsr_cos_add_xy), the
 * elements split at any point and the second part's pairs added to the first part's sums (as
 * run's second lane hands them over), give nlsr_cos_add_masked's bits over all of them. */
static void test_cos_pairs(void)
{
    enum { M = 777 };
    float *t = xmalloc(M * 4), *e = xmalloc(M * 4), *b = xmalloc(M * 4), *xy = xmalloc(2 * M * 4);
    int bad = 0;
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < M; i++) {
            /* finite values of mixed scales, so that the order of the sums shows */
            t[i] = ldexpf((float)(int32_t)rnd32() * 0x1p-31f, (int)(rnd32() % 24) - 12);
            e[i] = ldexpf((float)(int32_t)rnd32() * 0x1p-31f, (int)(rnd32() % 24) - 12);
            b[i] = ldexpf((float)(int32_t)rnd32() * 0x1p-31f, (int)(rnd32() % 24) - 12);
        }
        nlsr_cos_sums start = {round * 0.1, round * 0.3, round * 0.7}, whole = start;
        nlsr_cos_add_masked(&whole, t, e, b, M);
        for (size_t cut = 0; cut <= M; cut++) {
            nlsr_cos_sums s = start;
            nlsr_cos_add_masked(&s, t, e, b, cut);
            nlsr_cos_xy(t + cut, e + cut, b + cut, xy, M - cut);
            nlsr_cos_add_xy(&s, xy, M - cut);
            bad += memcmp(&s, &whole, sizeof s) != 0;
        }
        /* All pairs at once, and the pairs are the f32 differences. */
        nlsr_cos_sums s = start;
        nlsr_cos_xy(t, e, b, xy, M);
        nlsr_cos_add_xy(&s, xy, M);
        bad += memcmp(&s, &whole, sizeof s) != 0;
        for (size_t i = 0; i < M; i++) {
            float x = t[i] - b[i], y = e[i] - b[i];
            bad += f32_bits(xy[2 * i]) != f32_bits(x) || f32_bits(xy[2 * i + 1]) != f32_bits(y);
        }
    }
    ASSERT_EQ_I(bad, 0);
    free(t);
    free(e);
    free(b);
    free(xy);
}

int main(void)
{
    test_rng_seed(0x9E3779B97F4A7C15ull);
    RUN_TEST(test_widen_bf16_exhaustive);
    RUN_TEST(test_widen_f16_exhaustive);
    RUN_TEST(test_widen_f32);
    RUN_TEST(test_narrow_bf16);
    RUN_TEST(test_narrow_f16);
    RUN_TEST(test_narrow_in_place);
    RUN_TEST(test_narrow_exhaustive_optin);
    RUN_TEST(test_first_nonfinite);
    RUN_TEST(test_reference_score);
    RUN_TEST(test_cos_pairs);
    return test_finish();
}
