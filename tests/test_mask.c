/* SPDX-License-Identifier: Apache-2.0 */
/* The mask kernels (src/compute/mask.h) and the BF16 step-1 kernels (src/compute/reference.h)
 * against trivially correct loops written here, bit for bit:
 *
 *  - nlsr_mask_words: s[j] > thr (strict: ties excluded), every length 0..300 and some large
 *    ones, starts s+1 and s+3 (not vector aligned), thresholds equal to present values, ±0,
 *    ±inf, just below the minimum (full mask), at the maximum (empty mask), denormals,
 *    negative scores and thresholds; bits past n zero, nothing written past ceil(n/64) words;
 *  - nlsr_mask_indices: the set bits of the first n bits, ascending, with garbage bits past n
 *    in the last word ignored, nothing written past the count;
 *  - nlsr_bucket_collect: the scores whose bits >> 16 equal the bucket, in order, present /
 *    absent / dense / sparse / one match at every position, ±0 and denormal buckets, out NULL
 *    (count only), appending at out without touching what is before or after;
 *  - nlsr_bucket_hist_low and nlsr_kth_hist_add: the histograms over scores that come in runs
 *    of one bit pattern or one bucket (taken a block at a time) and spread ones, every length
 *    0..300 and long runs, no entry touched that no score names;
 *  - nlsr_score_bf16 / nlsr_step1_bf16: f32 arithmetic from convert.h's scalar functions (no
 *    FMA: this file is built with -ffp-contract=off), random BF16 over every exponent, betas
 *    0.9, 0, -1, 1e30 and others, NaN / inf at every position of small buffers, overflow of e
 *    in f32 and only in the BF16 rounding, lengths 0..70 and 100000, unaligned a / b;
 *  - nlsr_any_nonfinite_raw: BF16 and F16 (every pattern), F32, F64 (finite doubles that
 *    overflow f32 count, as nlsr_to_f32 + isfinite says), F8, a bad value at every position.
 *
 * Built twice by tests/CMakeLists.txt: against the library (the AVX2 path and load-time
 * clones this CPU picks), and with mask.c and reference.c compiled in with NLSR_NO_CLONES at
 * -O3 (plain C, what other compilers and CPUs run).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/compute/convert.h"
#include "../src/compute/kth.h"
#include "../src/compute/mask.h"
#include "../src/compute/reference.h"
#include "nlsr.h"
#include "test.h"
#include "test_bits.h"


#define SENTINEL32 0xDEADBEEFu
#define SENTINEL64 0xA5A5A5A5A5A5A5A5ull
#define SENTINEL16 0xBEEFu

/* ---- mask words and indices ---------------------------------------------------------------- */

static void plain_mask_words(const float *s, size_t n, float thr, uint64_t *w)
{
    size_t nw = (n + 63) / 64;
    for (size_t i = 0; i < nw; i++) w[i] = 0;
    for (size_t j = 0; j < n; j++)
        if (s[j] > thr) w[j / 64] |= (uint64_t)1 << (j % 64);
}

static size_t plain_mask_indices(const uint64_t *w, size_t n, uint32_t *idx)
{
    size_t m = 0;
    for (size_t j = 0; j < n; j++)
        if (w[j / 64] >> (j % 64) & 1) idx[m++] = (uint32_t)j;
    return m;
}

/* Checks nlsr_mask_indices(w, n) against the plain loop, with no write past the count. */
static int indices_check(const uint64_t *w, size_t n, int *printed, const char *what)
{
    uint32_t *want = xmalloc((n + 1) * 4), *got = xmalloc((n + 2) * 4);
    for (size_t i = 0; i < n + 2; i++) got[i] = SENTINEL32;
    size_t mw = plain_mask_indices(w, n, want);
    size_t mg = nlsr_mask_indices(w, n, got);
    int bad = mg != mw || memcmp(got, want, mw * 4) != 0 || got[mg] != SENTINEL32 ||
              got[n + 1] != SENTINEL32;
    if (bad && (*printed)++ < 8)
        FAILF("mask_indices (%s), n %zu: count %zu, want %zu", what, n, mg, mw);
    free(want);
    free(got);
    return bad;
}

/* Checks nlsr_mask_words(s, n, thr) against the plain loop: the words, zero bits past n,
 * nothing written past ceil(n/64) words; then nlsr_mask_indices on the result, on it with
 * ones past n, and on prefixes of it. Returns the number of failures (the first few printed),
 * *count gets the number of set bits. */
static int mask_check(const float *s, size_t n, float thr, size_t *count, int *printed)
{
    size_t nw = (n + 63) / 64;
    uint64_t *want = xmalloc((nw + 1) * 8), *got = xmalloc((nw + 2) * 8);
    for (size_t i = 0; i < nw + 2; i++) got[i] = SENTINEL64;
    plain_mask_words(s, n, thr, want);
    nlsr_mask_words(s, n, thr, got);
    int bad = 0;
    if (memcmp(got, want, nw * 8) != 0) {
        bad++;
        if ((*printed)++ < 8) {
            size_t i = 0;
            while (got[i] == want[i]) i++;
            FAILF("mask_words n %zu thr %a (s at %p): word %zu is 0x%016llx, want 0x%016llx", n,
                  (double)thr, (const void *)s, i, (unsigned long long)got[i],
                  (unsigned long long)want[i]);
        }
    }
    if (got[nw] != SENTINEL64 || got[nw + 1] != SENTINEL64) {
        bad++;
        if ((*printed)++ < 8) FAILF("mask_words n %zu: wrote past word %zu", n, nw);
    }
    if (n % 64 && got[nw - 1] >> (n % 64) != 0) {
        bad++;
        if ((*printed)++ < 8) FAILF("mask_words n %zu: bits past n set", n);
    }
    size_t c = 0;
    for (size_t i = 0; i < nw; i++) c += (size_t)__builtin_popcountll(got[i]);
    *count = c;

    bad += indices_check(got, n, printed, "from mask_words");
    if (n % 64) {
        got[nw - 1] |= ~(uint64_t)0 << (n % 64); /* garbage past n in the last word */
        bad += indices_check(got, n, printed, "ones past n");
    }
    if (n > 0) bad += indices_check(got, n - 1, printed, "prefix n-1");
    bad += indices_check(got, n / 2, printed, "prefix n/2");
    free(want);
    free(got);
    return bad;
}

/* Score generators: kind 0 a small pool of values (many ties), 1 non-negative over many
 * magnitudes with zeros and denormals, 2 signed with ±0, ±inf, denormals, 3 all equal. */
static float pool[16];

static float rnd_score(int kind)
{
    uint32_t r = rnd32();
    switch (kind) {
    case 0: return pool[r & 15u];
    case 1:
        switch (r & 7u) {
        case 0: return 0.0f;
        case 1: return bits_f32(rnd32() & 0x007FFFFFu); /* denormal (or 0) */
        default: return bits_f32((rnd32() & 0x007FFFFFu) | ((r >> 8) % 0xFEu + 1u) << 23);
        }
    case 2:
        switch (r & 15u) {
        case 0: return (r & 16u) ? -0.0f : 0.0f;
        case 1: return bits_f32(rnd32() & 0x807FFFFFu);
        case 2: return (r & 16u) ? -INFINITY : INFINITY;
        case 3: return (r & 16u) ? -FLT_MAX : FLT_MAX;
        default: return ldexpf((float)(int32_t)rnd32() * 0x1p-31f, (int)(r >> 27) - 16);
        }
    default: return pool[0];
    }
}

static void fill_pool(void)
{
    pool[0] = 0.0f;
    pool[1] = -0.0f;
    pool[2] = 0x1p-149f;
    pool[3] = 0x1p-130f;
    for (int i = 4; i < 16; i++) pool[i] = (float)(rnd32() % 1000u) * 0.125f;
}

/* Thresholds for s[0..n): present values (ties), neighbours of them, ±0, ±inf, just below the
 * minimum (full mask: checked), the maximum (empty mask: checked), denormals, negatives. */
static int mask_thresholds(const float *s, size_t n, int *printed)
{
    float th[32];
    size_t k = 0;
    th[k++] = 0.0f;
    th[k++] = -0.0f;
    th[k++] = INFINITY;
    th[k++] = -INFINITY;
    th[k++] = 0x1p-149f;
    th[k++] = 0x1.8p-140f;
    th[k++] = -1.0f;
    th[k++] = 1.0f;
    for (int i = 0; i < 4 && n; i++) {
        float v = s[rnd32() % n];
        th[k++] = v;
        th[k++] = nextafterf(v, -INFINITY);
        th[k++] = nextafterf(v, INFINITY);
    }
    int bad = 0;
    size_t c;
    for (size_t i = 0; i < k; i++) {
        bad += mask_check(s, n, th[i], &c, printed);
        if (isinf(th[i]) && th[i] > 0 && c != 0) {
            bad++;
            if ((*printed)++ < 8) FAILF("thr inf, n %zu: %zu bits set", n, c);
        }
    }
    if (n) {
        float mn = s[0], mx = s[0];
        for (size_t j = 1; j < n; j++) {
            if (s[j] < mn) mn = s[j];
            if (s[j] > mx) mx = s[j];
        }
        if (mn != -INFINITY) {
            bad += mask_check(s, n, nextafterf(mn, -INFINITY), &c, printed);
            if (c != n) {
                bad++;
                if ((*printed)++ < 8) FAILF("thr below min, n %zu: %zu of the bits set", n, c);
            }
        }
        bad += mask_check(s, n, mn, &c, printed);
        bad += mask_check(s, n, mx, &c, printed);
        if (c != 0) {
            bad++;
            if ((*printed)++ < 8) FAILF("thr = max, n %zu: %zu bits set (ties kept?)", n, c);
        }
    }
    return bad;
}

static void test_mask_words_lengths(void)
{
    enum { N = 300 };
    float *buf = xmalloc((N + 4) * 4);
    int bad = 0, printed = 0;
    fill_pool();
    for (int kind = 0; kind < 4; kind++) {
        for (size_t n = 0; n <= N; n++) {
            static const size_t offs[3] = {0, 1, 3};
            for (int o = 0; o < 3; o++) {
                for (size_t j = 0; j < N + 4; j++) buf[j] = rnd_score(kind);
                bad += mask_thresholds(buf + offs[o], n, &printed);
            }
        }
    }
    ASSERT_EQ_I(bad, 0);
    free(buf);
}

static void test_mask_words_large(void)
{
    static const size_t ns[] = {1023, 1024, 1025, 65536 + 63, 100000, 100003};
    size_t nmax = 100003 + 4;
    float *buf = xmalloc(nmax * 4);
    int bad = 0, printed = 0;
    fill_pool();
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (int kind = 0; kind < 3; kind++)
            for (size_t off = 0; off < 4; off += 1 + (off == 1)) { /* 0, 1, 3 */
                for (size_t j = 0; j < nmax; j++) buf[j] = rnd_score(kind);
                bad += mask_thresholds(buf + off, ns[i], &printed);
            }
    ASSERT_EQ_I(bad, 0);
    free(buf);
}

/* Fixed anchors: ties excluded, zeros of both signs, ordering of denormals and negatives. */
static void test_mask_words_anchors(void)
{
    float s[70];
    for (int i = 0; i < 70; i++) s[i] = (float)(i % 7); /* 0..6 repeated */
    uint64_t w[3] = {SENTINEL64, SENTINEL64, SENTINEL64};
    nlsr_mask_words(s, 70, 3.0f, w); /* > 3: i % 7 in {4, 5, 6} */
    uint64_t want0 = 0, want1 = 0;
    for (int i = 0; i < 70; i++)
        if (i % 7 > 3) {
            if (i < 64) want0 |= (uint64_t)1 << i;
            else want1 |= (uint64_t)1 << (i - 64);
        }
    ASSERT_EQ_U(w[0], want0);
    ASSERT_EQ_U(w[1], want1);
    ASSERT_EQ_U(w[2], SENTINEL64);

    float z[9] = {0.0f, -0.0f, 0x1p-149f, -0x1p-149f, 0.0f, -1.0f, 0x1p-126f, INFINITY, -0.0f};
    uint64_t v = SENTINEL64;
    nlsr_mask_words(z, 9, 0.0f, &v);
    ASSERT_EQ_U(v, 0x44u | 0x80u); /* 2, 6, 7 */
    nlsr_mask_words(z, 9, -0.0f, &v);
    ASSERT_EQ_U(v, 0xC4u);
    nlsr_mask_words(z, 9, -0x1p-149f, &v);
    ASSERT_EQ_U(v, 0x1D7u); /* all but 3 and 5 */
    nlsr_mask_words(z, 9, INFINITY, &v);
    ASSERT_EQ_U(v, 0);
    nlsr_mask_words(z, 9, -INFINITY, &v);
    ASSERT_EQ_U(v, 0x1FFu);
    nlsr_mask_words(z, 0, -INFINITY, &v); /* n = 0: nothing written */
    ASSERT_EQ_U(v, 0x1FFu);

    uint32_t idx[10];
    ASSERT_EQ_U(nlsr_mask_indices(&v, 9, idx), 9);
    ASSERT_EQ_U(idx[8], 8);
    uint64_t all = ~(uint64_t)0;
    idx[0] = SENTINEL32;
    ASSERT_EQ_U(nlsr_mask_indices(&all, 0, idx), 0);
    ASSERT_EQ_U(idx[0], SENTINEL32);
    idx[3] = SENTINEL32;
    ASSERT_EQ_U(nlsr_mask_indices(&all, 3, idx), 3);
    ASSERT_EQ_U(idx[2], 2);
    ASSERT_EQ_U(idx[3], SENTINEL32);
}

/* nlsr_mask_indices on random bitmaps of several densities, every n 0..300 and large ones. */
static void test_mask_indices_random(void)
{
    enum { NW = 100003 / 64 + 2 };
    uint64_t *w = xmalloc(NW * 8);
    int bad = 0, printed = 0;
    for (int density = 0; density < 5; density++) {
        for (size_t i = 0; i < NW; i++) {
            uint64_t x = rnd64();
            switch (density) {
            case 0: x = 0; break;
            case 1: x = ~(uint64_t)0; break;
            case 2: x &= rnd64() & rnd64(); break; /* sparse */
            case 3: x |= rnd64(); break;           /* dense */
            default: break;
            }
            w[i] = x;
        }
        for (size_t n = 0; n <= 300; n++) bad += indices_check(w, n, &printed, "random");
        bad += indices_check(w, 100003, &printed, "random large");
        bad += indices_check(w, 100000, &printed, "random large");
    }
    ASSERT_EQ_I(bad, 0);
    free(w);
}

/* ---- bucket collect ------------------------------------------------------------------------ */

static size_t plain_bucket(const float *s, size_t n, uint32_t bucket, float *out)
{
    size_t c = 0;
    for (size_t j = 0; j < n; j++)
        if (f32_bits(s[j]) >> 16 == bucket) {
            if (out) out[c] = s[j];
            c++;
        }
    return c;
}

/* out == NULL gives the count; out at an offset into a buffer gets the scores (bits) in order
 * with what is before and after untouched. */
static int bucket_check(const float *s, size_t n, uint32_t bucket, int *printed)
{
    float *want = xmalloc((n + 1) * 4), *buf = xmalloc((n + 8) * 4);
    for (size_t i = 0; i < n + 8; i++) buf[i] = bits_f32(SENTINEL32);
    size_t cw = plain_bucket(s, n, bucket, want);
    size_t cn = nlsr_bucket_collect(s, n, bucket, NULL);
    size_t cg = nlsr_bucket_collect(s, n, bucket, buf + 5);
    int bad = cn != cw || cg != cw || memcmp(buf + 5, want, cw * 4) != 0;
    for (size_t i = 0; i < 5; i++) bad |= f32_bits(buf[i]) != SENTINEL32;
    for (size_t i = 5 + cw; i < n + 8; i++) bad |= f32_bits(buf[i]) != SENTINEL32;
    if (bad && (*printed)++ < 8)
        FAILF("bucket_collect n %zu bucket 0x%x (s at %p): count %zu / NULL %zu, want %zu", n,
              (unsigned)bucket, (const void *)s, cg, cn, cw);
    free(want);
    free(buf);
    return bad;
}

/* Scores with high halves from a few buckets (random low halves); kind 0 sparse (1/64 in
 * bucket 0x3F80), 1 dense, 2 zeros of both signs and denormals, 3 any non-negative. */
static float rnd_bucket_score(int kind)
{
    uint32_t r = rnd32(), lo = rnd32() & 0xFFFFu;
    switch (kind) {
    case 0: return bits_f32(((r & 63u) ? 0x4000u + (r >> 8 & 7u) : 0x3F80u) << 16 | lo);
    case 1: return bits_f32((0x3F80u + (r & 3u)) << 16 | lo);
    case 2:
        switch (r & 3u) {
        case 0: return 0.0f;
        case 1: return -0.0f;
        case 2: return bits_f32(lo); /* high half 0: denormal or 0 */
        default: return bits_f32((r >> 8 & 0x7Fu) << 16 | lo);
        }
    default: return bits_f32(rnd32() & 0x7FFFFFFFu);
    }
}

static int bucket_buckets(const float *s, size_t n, int *printed)
{
    static const uint32_t fixed[] = {0x0000u, 0x8000u, 0x3F80u, 0x4000u, 0x7FC0u,
                                     0xFFFFu, 0x10000u, 0x3F800000u};
    int bad = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        bad += bucket_check(s, n, fixed[i], printed);
    for (int i = 0; i < 3 && n; i++) bad += bucket_check(s, n, f32_bits(s[rnd32() % n]) >> 16, printed);
    /* An absent bucket. */
    uint32_t absent = 0x1234u;
    for (size_t j = 0; j < n; j++)
        if (f32_bits(s[j]) >> 16 == absent) absent++, j = (size_t)-1;
    if (nlsr_bucket_collect(s, n, absent, NULL) != 0) {
        bad++;
        if ((*printed)++ < 8) FAILF("absent bucket 0x%x counted", (unsigned)absent);
    }
    bad += bucket_check(s, n, absent, printed);
    return bad;
}

static void test_bucket_lengths(void)
{
    enum { N = 300 };
    float *buf = xmalloc((N + 4) * 4);
    int bad = 0, printed = 0;
    for (int kind = 0; kind < 4; kind++)
        for (size_t n = 0; n <= N; n++)
            for (size_t off = 0; off < 4; off += 1 + (off == 1)) {
                for (size_t j = 0; j < N + 4; j++) buf[j] = rnd_bucket_score(kind);
                bad += bucket_buckets(buf + off, n, &printed);
            }
    ASSERT_EQ_I(bad, 0);
    free(buf);
}

/* One match at every position (every lane of a 32-block, the tail) among other buckets. */
static void test_bucket_positions(void)
{
    float s[4 + 130];
    int bad = 0, printed = 0;
    for (size_t n = 1; n <= 130; n++)
        for (size_t off = 0; off < 4; off += 1 + (off == 1))
            for (size_t p = 0; p < n; p++) {
                for (size_t j = 0; j < 4 + 130; j++) s[j] = bits_f32(0x40000000u | (rnd32() & 0xFFFFu));
                s[off + p] = bits_f32(0x3F80u << 16 | (uint32_t)p);
                bad += bucket_check(s + off, n, 0x3F80u, &printed);
                size_t c = nlsr_bucket_collect(s + off, n, 0x3F80u, NULL);
                if (c != 1) {
                    bad++;
                    if (printed++ < 8) FAILF("one match at %zu of %zu: count %zu", p, n, c);
                }
            }
    ASSERT_EQ_I(bad, 0);
}

static void test_bucket_large(void)
{
    enum { N = 100003 };
    float *buf = xmalloc((N + 4) * 4);
    int bad = 0, printed = 0;
    for (int kind = 0; kind < 4; kind++)
        for (size_t off = 0; off < 4; off += 1 + (off == 1)) {
            for (size_t j = 0; j < N + 4; j++) buf[j] = rnd_bucket_score(kind);
            bad += bucket_buckets(buf + off, N, &printed);
            bad += bucket_buckets(buf + off, 100000, &printed);
        }
    /* Matches only at the ends and block edges of a large buffer. */
    for (size_t j = 0; j < N; j++) buf[j] = bits_f32(0x40000000u | (uint32_t)(j & 0xFFFFu));
    static const size_t at[] = {0, 31, 32, 63, 99967, 99968, 99999, 100000, 100002};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) buf[at[i]] = bits_f32(0x3F800000u + (uint32_t)i);
    bad += bucket_check(buf, N, 0x3F80u, &printed);
    ASSERT_EQ_U(nlsr_bucket_collect(buf, N, 0x3F80u, NULL), 9);
    ASSERT_EQ_U(nlsr_bucket_collect(buf + 1, N - 1, 0x3F80u, NULL), 8);
    ASSERT_EQ_I(bad, 0);
    free(buf);
}

/* ---- histograms over runs: nlsr_bucket_hist_low, nlsr_kth_hist_add ------------------------- */

/* Scores in runs of 1..80 equal bit patterns (a module that alignment left unchanged scores all
 * zeros; real ones repeat values too) or of one bucket with varied low halves, mixed with
 * spread scores, so that runs start, end and cross every position of the kernels' blocks. */
static void fill_runs(float *s, size_t n, int kind)
{
    size_t j = 0;
    while (j < n) {
        size_t len = 1 + rnd32() % 80;
        uint32_t r = rnd32(), u;
        switch (kind) {
        case 0: u = (r & 1u) ? 0u : 0x3F800000u | (rnd32() & 3u); break; /* zeros and few values */
        case 1: u = 0x3F80u << 16 | (rnd32() & 0xFFFFu); break;           /* one bucket */
        default: u = f32_bits(rnd_bucket_score((int)(r & 3u))); break;
        }
        for (size_t k = 0; k < len && j < n; k++, j++) {
            uint32_t v = u;
            if (kind == 1 && (r & 2u)) v = 0x3F80u << 16 | (rnd32() & 0xFFFFu); /* same bucket */
            if (kind == 2 && (r & 4u) && k % 7 == 3) v = rnd32() & 0x7FFFFFFFu; /* a break */
            s[j] = bits_f32(v);
        }
    }
}

/* got and want start equal; the kernel adds into got, the plain loop into want. Only the entries
 * the scores name are compared and then reset in both, so an entry the kernel touched wrongly
 * stays non-zero in got: hist_leftover finds it at the end. */
static int hist_low_check(const float *s, size_t n, uint32_t bucket, uint64_t *got,
                          uint64_t *want, int *printed)
{
    uint64_t cw = 0;
    for (size_t j = 0; j < n; j++)
        if (f32_bits(s[j]) >> 16 == bucket) want[f32_bits(s[j]) & 0xFFFFu]++, cw++;
    uint64_t cg = nlsr_bucket_hist_low(s, n, bucket, got);
    int bad = cg != cw;
    for (size_t j = 0; j < n; j++) {
        uint32_t lo = f32_bits(s[j]) & 0xFFFFu;
        bad |= got[lo] != want[lo];
    }
    if (bad && (*printed)++ < 8)
        FAILF("bucket_hist_low n %zu bucket 0x%x: count %llu, want %llu", n, (unsigned)bucket,
              (unsigned long long)cg, (unsigned long long)cw);
    for (size_t j = 0; j < n; j++) got[f32_bits(s[j]) & 0xFFFFu] = want[f32_bits(s[j]) & 0xFFFFu] = 0;
    return bad;
}

static int hist_add_check(const float *s, size_t n, uint64_t *got, uint64_t *want, int *printed)
{
    for (size_t j = 0; j < n; j++) want[f32_bits(s[j]) >> 16]++;
    nlsr_kth_hist_add(got, s, n);
    int bad = 0;
    for (size_t j = 0; j < n; j++) bad |= got[f32_bits(s[j]) >> 16] != want[f32_bits(s[j]) >> 16];
    if (bad && (*printed)++ < 8) FAILF("kth_hist_add n %zu: counts differ", n);
    for (size_t j = 0; j < n; j++) got[f32_bits(s[j]) >> 16] = want[f32_bits(s[j]) >> 16] = 0;
    return bad;
}

static int hist_leftover(const uint64_t *got, const char *what)
{
    for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++)
        if (got[i]) {
            FAILF("%s: entry 0x%x = %llu, no score names it", what, (unsigned)i,
                  (unsigned long long)got[i]);
            return 1;
        }
    return 0;
}

static void test_hist_runs(void)
{
    enum { N = 300, BIG = 100003 };
    float *buf = xmalloc((BIG + 4) * 4);
    uint64_t *got = calloc(NLSR_KTH_BUCKETS, 8), *want = calloc(NLSR_KTH_BUCKETS, 8);
    uint64_t *kgot = calloc(NLSR_KTH_BUCKETS, 8), *kwant = calloc(NLSR_KTH_BUCKETS, 8);
    ASSERT_TRUE(got && want && kgot && kwant);
    int bad = 0, printed = 0;
    for (int kind = 0; kind < 3; kind++)
        for (size_t n = 0; n <= N; n++)
            for (size_t off = 0; off < 4; off += 1 + (off == 1)) {
                fill_runs(buf, N + 4, kind);
                static const uint32_t fixed[] = {0x0000u, 0x3F80u, 0x3F81u, 0x8000u};
                for (size_t i = 0; i < 4; i++)
                    bad += hist_low_check(buf + off, n, fixed[i], got, want, &printed);
                if (n) bad += hist_low_check(buf + off, n, f32_bits(buf[off + rnd32() % n]) >> 16,
                                             got, want, &printed);
                bad += hist_add_check(buf + off, n, kgot, kwant, &printed);
            }
    /* Long runs: a whole buffer of zeros, one of a single value in the bucket, then runs. */
    for (int k = 0; k < 4; k++) {
        for (size_t j = 0; j < BIG + 4; j++) buf[j] = k == 0 ? 0.0f : bits_f32(0x3F800001u);
        if (k >= 2) fill_runs(buf, BIG + 4, k - 2);
        for (size_t off = 0; off < 2; off++) {
            bad += hist_low_check(buf + off, BIG, 0x0000u, got, want, &printed);
            bad += hist_low_check(buf + off, BIG, 0x3F80u, got, want, &printed);
            bad += hist_add_check(buf + off, BIG, kgot, kwant, &printed);
        }
    }
    bad += hist_leftover(got, "bucket_hist_low") + hist_leftover(kgot, "kth_hist_add");
    bad += hist_leftover(want, "plain hist_low") + hist_leftover(kwant, "plain hist_add");
    ASSERT_EQ_I(bad, 0);
    free(buf);
    free(got);
    free(want);
    free(kgot);
    free(kwant);
}

/* ---- step 1 on BF16 ------------------------------------------------------------------------ */

static int bf16_nonfinite(uint16_t h)
{
    return (h & 0x7F80u) == 0x7F80u;
}

/* The generic path, element by element from convert.h's scalar functions. */
static int plain_step1(const uint16_t *a, const uint16_t *b, float beta, float *s, float *fe,
                       float *fb, uint16_t *es, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float fa = nlsr_bf16_to_f32(a[i]), fbv = nlsr_bf16_to_f32(b[i]);
        float d = fa - fbv;
        float m = beta * d;
        float e = fa + m;
        uint16_t h = nlsr_f32_to_bf16(e);
        float f = nlsr_bf16_to_f32(h);
        s[i] = fabsf(f - fbv);
        fe[i] = f;
        fb[i] = fbv;
        es[i] = h;
        bad |= bf16_nonfinite(a[i]) | bf16_nonfinite(b[i]) | bf16_nonfinite(h);
    }
    return bad;
}

/* Finite BF16 over every exponent, with ±0, denormals and the extremes. */
static uint16_t rnd_bf16_finite(void)
{
    uint32_t r = rnd32();
    switch (r & 15u) {
    case 0: return (r & 16u) ? 0x8000u : 0x0000u;
    case 1: return (uint16_t)((r >> 8) & 0x807Fu); /* denormal */
    case 2: return (r & 16u) ? 0xFF7Fu : 0x7F7Fu;
    case 3: return (uint16_t)(((r >> 8) & 0x8000u) | 0x0080u);
    default: {
        uint32_t e = (r >> 8) % 0xFEu + 1u; /* 1..254 */
        return (uint16_t)(((r >> 20) & 0x8000u) | e << 7 | ((r >> 24) & 0x7Fu));
    }
    }
}

/* NaNs (quiet, signalling, both signs, payloads) and infinities. */
static uint16_t rnd_bf16_bad(void)
{
    static const uint16_t v[] = {0x7F80u, 0xFF80u, 0x7FC0u, 0xFFC0u, 0x7F81u, 0xFFFFu, 0x7FFFu, 0x7FA5u};
    uint32_t r = rnd32();
    return (r & 8u) ? v[r & 7u] : (uint16_t)(0x7F81u | (r >> 16 & 0x807Fu));
}

/* Copies the values to a byte buffer at an offset (little-endian host). */
static unsigned char *place16(unsigned char *buf, size_t off, const uint16_t *v, size_t n)
{
    memcpy(buf + off, v, n * 2);
    return buf + off;
}

/* Runs both kernels on a[0..n), b[0..n) placed at byte offsets oa, ob, outputs at float offset
 * oo, and compares every output's bits, the flag, and that nothing is written past n. */
static int step1_check(const uint16_t *a, const uint16_t *b, float beta, size_t n, size_t oa,
                       size_t ob, size_t oo, int *printed, int *flag)
{
    float *ws = xmalloc((n + 1) * 4), *wfe = xmalloc((n + 1) * 4), *wfb = xmalloc((n + 1) * 4);
    uint16_t *wes = xmalloc((n + 1) * 2);
    unsigned char *ra = xmalloc(2 * n + 8), *rb = xmalloc(2 * n + 8);
    float *s = xmalloc((n + 4) * 4), *s2 = xmalloc((n + 4) * 4), *fe = xmalloc((n + 4) * 4);
    float *fb = xmalloc((n + 4) * 4);
    uint16_t *es = xmalloc((n + 4) * 2);
    for (size_t i = 0; i < n + 4; i++) {
        s[i] = s2[i] = fe[i] = fb[i] = bits_f32(SENTINEL32);
        es[i] = SENTINEL16;
    }
    int want = plain_step1(a, b, beta, ws, wfe, wfb, wes, n);
    const unsigned char *pa = place16(ra, oa, a, n), *pb = place16(rb, ob, b, n);
    uint32_t g1 = nlsr_score_bf16(pa, pb, beta, s + oo, n);
    uint32_t g2 = nlsr_step1_bf16(pa, pb, beta, s2 + oo, fe + oo, fb + oo, es + oo, n);
    int bad = 0;
    const char *what = NULL;
    if ((g1 != 0) != want) bad++, what = "score_bf16 flag";
    else if (memcmp(s + oo, ws, n * 4) != 0) bad++, what = "score_bf16 s";
    else if ((g2 != 0) != want) bad++, what = "step1_bf16 flag";
    else if (memcmp(s2 + oo, ws, n * 4) != 0) bad++, what = "step1_bf16 s";
    else if (memcmp(fe + oo, wfe, n * 4) != 0) bad++, what = "step1_bf16 fe";
    else if (memcmp(fb + oo, wfb, n * 4) != 0) bad++, what = "step1_bf16 fb";
    else if (memcmp(es + oo, wes, n * 2) != 0) bad++, what = "step1_bf16 es";
    for (size_t i = 0; i < n + 4; i++) {
        if (i >= oo && i < oo + n) continue;
        if (f32_bits(s[i]) != SENTINEL32 || f32_bits(s2[i]) != SENTINEL32 ||
            f32_bits(fe[i]) != SENTINEL32 || f32_bits(fb[i]) != SENTINEL32 ||
            es[i] != SENTINEL16) {
            bad++, what = "write outside the outputs";
            break;
        }
    }
    if (bad && (*printed)++ < 8) {
        FAILF("%s: beta %a n %zu offsets a %zu b %zu out %zu (flag %u/%u, want %d)", what,
              (double)beta, n, oa, ob, oo, (unsigned)g1, (unsigned)g2, want);
        for (size_t i = 0; i < n; i++)
            if (f32_bits(s[oo + i]) != f32_bits(ws[i]) || f32_bits(s2[oo + i]) != f32_bits(ws[i]) ||
                es[oo + i] != wes[i]) {
                fprintf(stderr, "  first at %zu: a 0x%04x b 0x%04x: s 0x%08x / 0x%08x es 0x%04x, "
                                "want s 0x%08x es 0x%04x\n",
                        i, (unsigned)a[i], (unsigned)b[i], (unsigned)f32_bits(s[oo + i]),
                        (unsigned)f32_bits(s2[oo + i]), (unsigned)es[oo + i],
                        (unsigned)f32_bits(ws[i]), (unsigned)wes[i]);
                break;
            }
    }
    if (flag) *flag = want;
    free(ws);
    free(wfe);
    free(wfb);
    free(wes);
    free(ra);
    free(rb);
    free(s);
    free(s2);
    free(fe);
    free(fb);
    free(es);
    return bad;
}

static const float betas[] = {0.9f, 0.0f, -1.0f, 1e30f, 0.5f, 1.0f, 2.3f, -0.0f, 0x1p-140f};
#define NBETAS (sizeof betas / sizeof betas[0])

static void test_step1_lengths(void)
{
    enum { N = 70 };
    uint16_t a[N], b[N];
    int bad = 0, printed = 0, flag, flags = 0;
    for (size_t k = 0; k < NBETAS; k++)
        for (size_t n = 0; n <= N; n++)
            for (int rep = 0; rep < 4; rep++) {
                for (size_t i = 0; i < N; i++) {
                    a[i] = rnd_bf16_finite();
                    /* b near a half the time: small differences, exact cancellations. */
                    b[i] = (rnd32() & 1u) ? rnd_bf16_finite()
                                          : (uint16_t)(a[i] + (rnd32() % 5u) - 2u);
                    if (bf16_nonfinite(b[i])) b[i] = a[i];
                }
                bad += step1_check(a, b, betas[k], n, (size_t)rep & 3u, (size_t)(rep * 3 + 1) & 3u,
                                   (size_t)rep & 1u, &printed, &flag);
                flags += flag;
            }
    /* Finite inputs: the flag only from e overflowing (beta 1e30), and it did. */
    ASSERT_TRUE(flags > 0);
    ASSERT_EQ_I(bad, 0);
}

static void test_step1_large(void)
{
    enum { N = 100000 };
    uint16_t *a = xmalloc(N * 2), *b = xmalloc(N * 2);
    int bad = 0, printed = 0, flag;
    for (size_t k = 0; k < NBETAS; k++) {
        for (size_t i = 0; i < N; i++) {
            a[i] = rnd_bf16_finite();
            b[i] = (rnd32() & 1u) ? rnd_bf16_finite() : (uint16_t)(a[i] ^ (rnd32() & 3u));
            if (bf16_nonfinite(b[i])) b[i] = a[i];
        }
        bad += step1_check(a, b, betas[k], N, 0, 0, 0, &printed, &flag);
        bad += step1_check(a, b, betas[k], N, 1, 3, 1, &printed, &flag);
        /* Moderate magnitudes: no overflow, so no flag, at any beta here. */
        for (size_t i = 0; i < N; i++) {
            a[i] = (uint16_t)((a[i] & 0x807Fu) | (0x30u + (a[i] >> 7 & 0x1Fu)) << 7);
            b[i] = (uint16_t)((b[i] & 0x807Fu) | (0x30u + (b[i] >> 7 & 0x1Fu)) << 7);
        }
        bad += step1_check(a, b, betas[k], N, 3, 1, 1, &printed, &flag);
        ASSERT_EQ_I(flag, 0);
    }
    ASSERT_EQ_I(bad, 0);
    free(a);
    free(b);
}

/* A NaN or infinity in a, in b, or both, at every position of small buffers: flag set, and
 * the other outputs still the generic path's bits. */
static void test_step1_nonfinite_positions(void)
{
    enum { N = 40 };
    uint16_t a[N], b[N];
    int bad = 0, printed = 0, flag;
    for (size_t n = 1; n <= N; n++)
        for (size_t p = 0; p < n; p++)
            for (int where = 0; where < 3; where++) {
                float beta = betas[(n + p) % 3]; /* 0.9, 0, -1 */
                for (size_t i = 0; i < N; i++) {
                    a[i] = (uint16_t)((rnd32() & 0x807Fu) | (0x70u + (rnd32() & 0x1Fu)) << 7);
                    b[i] = (uint16_t)((rnd32() & 0x807Fu) | (0x70u + (rnd32() & 0x1Fu)) << 7);
                }
                if (where != 1) a[p] = rnd_bf16_bad();
                if (where != 0) b[p] = rnd_bf16_bad();
                bad += step1_check(a, b, beta, n, p & 3u, (p >> 2) & 3u, p & 1u, &printed, &flag);
                if (!flag) bad++; /* the reference itself must see it */
            }
    ASSERT_EQ_I(bad, 0);
}

/* Anchors independent of the reference code. */
static void test_step1_anchors(void)
{
    uint16_t a[3], b[3];
    float s[3], fe[3], fb[3];
    uint16_t es[3];
    /* 1.0 vs 0.5, beta 0.9: e = 1 + 0.45 = 1.45 -> bf16 0x3FBA (1.453125), s = 0.953125. */
    a[0] = 0x3F80u, b[0] = 0x3F00u;
    ASSERT_EQ_U(nlsr_score_bf16((const unsigned char *)a, (const unsigned char *)b, 0.9f, s, 1), 0);
    ASSERT_EQ_U(f32_bits(s[0]), f32_bits(0.953125f));
    ASSERT_EQ_U(nlsr_step1_bf16((const unsigned char *)a, (const unsigned char *)b, 0.9f, s, fe,
                                fb, es, 1), 0);
    ASSERT_EQ_U(es[0], 0x3FBAu);
    ASSERT_EQ_U(f32_bits(fe[0]), f32_bits(1.453125f));
    ASSERT_EQ_U(f32_bits(fb[0]), f32_bits(0.5f));
    /* e overflowing f32: a = 2^33, b = 0, beta 1e30. */
    a[0] = 0x5000u, b[0] = 0x0000u;
    ASSERT_TRUE(nlsr_score_bf16((const unsigned char *)a, (const unsigned char *)b, 1e30f, s, 1) != 0);
    ASSERT_TRUE(nlsr_step1_bf16((const unsigned char *)a, (const unsigned char *)b, 1e30f, s, fe,
                                fb, es, 1) != 0);
    ASSERT_EQ_U(es[0], 0x7F80u);
    /* e finite in f32 but past BF16's largest finite: only the rounding overflows. a = 0x7F7F,
     * b = 0x7F7E (one BF16 ulp, 2^120, below): beta 0.75 -> e = a + 1.5 * 2^119 (> half ulp),
     * beta 0.5 -> e = a + 2^119 (a tie, rounded to even: up to inf), beta 0.25 -> stays. */
    a[0] = 0x7F7Fu, b[0] = 0x7F7Eu;
    static const float bs[3] = {0.75f, 0.5f, 0.25f};
    static const uint16_t we[3] = {0x7F80u, 0x7F80u, 0x7F7Fu};
    for (int i = 0; i < 3; i++) {
        uint32_t f1 = nlsr_score_bf16((const unsigned char *)a, (const unsigned char *)b, bs[i], s, 1);
        uint32_t f2 = nlsr_step1_bf16((const unsigned char *)a, (const unsigned char *)b, bs[i], s,
                                      fe, fb, es, 1);
        ASSERT_EQ_U(es[0], we[i]);
        ASSERT_EQ_U(f1 != 0, i < 2);
        ASSERT_EQ_U(f2 != 0, i < 2);
    }
    /* -0 vs +0: s = +0. */
    a[0] = 0x8000u, b[0] = 0x0000u;
    ASSERT_EQ_U(nlsr_score_bf16((const unsigned char *)a, (const unsigned char *)b, -1.0f, s, 1), 0);
    ASSERT_EQ_U(f32_bits(s[0]), 0);
    /* n = 0: flag 0, nothing written. */
    s[0] = bits_f32(SENTINEL32);
    ASSERT_EQ_U(nlsr_score_bf16((const unsigned char *)a, (const unsigned char *)b, 0.9f, s, 0), 0);
    ASSERT_EQ_U(f32_bits(s[0]), SENTINEL32);
}

/* ---- any non-finite raw -------------------------------------------------------------------- */

static int plain_any_nonfinite(nlsr_dtype t, const unsigned char *raw, size_t n)
{
    size_t sz = nlsr_dtype_size(t);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float f;
        nlsr_to_f32(t, raw + i * sz, &f, 1);
        bad |= !isfinite(f);
    }
    return bad;
}

static void put_value(nlsr_dtype t, unsigned char *p, uint64_t v)
{
    memcpy(p, &v, nlsr_dtype_size(t)); /* little-endian host: the low bytes */
}

/* Finite values of the dtype's bit patterns (random over the exponents), and non-finite ones:
 * for F64 also finite doubles beyond f32's range. */
static uint64_t rnd_good(nlsr_dtype t)
{
    uint32_t r = rnd32();
    switch (t) {
    case NLSR_DTYPE_BF16: return rnd_bf16_finite();
    case NLSR_DTYPE_F16: {
        uint32_t h = r & 0xFFFFu;
        return (h & 0x7C00u) == 0x7C00u ? h & 0x83FFu : h;
    }
    case NLSR_DTYPE_F32: {
        uint32_t u = rnd32();
        return (u & 0x7F800000u) == 0x7F800000u ? u & 0x807FFFFFu : u;
    }
    case NLSR_DTYPE_F64: {
        double d = ldexp((double)(int32_t)r, (int)(rnd32() % 200u) - 130); /* < 2^127 */
        uint64_t u;
        memcpy(&u, &d, 8);
        return u;
    }
    case NLSR_DTYPE_F8_E4M3: return (r & 0x7Fu) == 0x7Fu ? 0x7Eu : r & 0xFFu;
    default: return (r & 0x7Cu) == 0x7Cu ? r & 0x83u : r & 0xFFu; /* E5M2 */
    }
}

static uint64_t rnd_bad(nlsr_dtype t)
{
    uint32_t r = rnd32();
    switch (t) {
    case NLSR_DTYPE_BF16: return rnd_bf16_bad();
    case NLSR_DTYPE_F16: return 0x7C00u | (r & 0x83FFu);
    case NLSR_DTYPE_F32: return 0x7F800000u | (r & 0x807FFFFFu);
    case NLSR_DTYPE_F64: {
        static const double v[] = {INFINITY, -INFINITY, NAN, -NAN, DBL_MAX, -DBL_MAX, 1e39,
                                   -1e300, 3.4028235677973366e38, -3.4028235677973366e38};
        double d = v[r % (sizeof v / sizeof v[0])];
        uint64_t u;
        memcpy(&u, &d, 8);
        return u;
    }
    case NLSR_DTYPE_F8_E4M3: return 0x7Fu | (r & 0x80u);
    default: return 0x7Cu | (r & 0x83u); /* E5M2 */
    }
}

static const nlsr_dtype raw_types[] = {NLSR_DTYPE_BF16, NLSR_DTYPE_F16, NLSR_DTYPE_F32,
                                       NLSR_DTYPE_F64, NLSR_DTYPE_F8_E4M3, NLSR_DTYPE_F8_E5M2};
#define NRAW (sizeof raw_types / sizeof raw_types[0])

/* A bad value at every position of small buffers (and two, and none), unaligned. */
static void test_nonfinite_positions(void)
{
    enum { N = 40 };
    unsigned char buf[8 * N + 8];
    int bad = 0;
    for (size_t k = 0; k < NRAW; k++) {
        nlsr_dtype t = raw_types[k];
        size_t sz = nlsr_dtype_size(t);
        for (size_t n = 0; n <= N; n++)
            for (size_t off = 0; off < 4; off += 1 + (off == 1)) {
                unsigned char *p = buf + off;
                for (size_t i = 0; i < n; i++) put_value(t, p + i * sz, rnd_good(t));
                int want = plain_any_nonfinite(t, p, n);
                uint32_t got = nlsr_any_nonfinite_raw(t, p, n);
                if (want || got) {
                    bad++;
                    FAILF("%s n %zu all finite: got %u, reference %d", nlsr_dtype_name(t), n,
                          (unsigned)got, want);
                }
                for (size_t q = 0; q < n; q++) {
                    unsigned char save[8];
                    memcpy(save, p + q * sz, sz);
                    put_value(t, p + q * sz, rnd_bad(t));
                    want = plain_any_nonfinite(t, p, n);
                    got = nlsr_any_nonfinite_raw(t, p, n);
                    if (!want || !got) {
                        bad++;
                        if (bad < 8)
                            FAILF("%s n %zu bad at %zu: got %u, reference %d", nlsr_dtype_name(t),
                                  n, q, (unsigned)got, want);
                    }
                    if (q + 1 < n) { /* and a second one later */
                        put_value(t, p + (n - 1) * sz, rnd_bad(t));
                        if (!nlsr_any_nonfinite_raw(t, p, n)) bad++;
                        put_value(t, p + (n - 1) * sz, rnd_good(t));
                    }
                    memcpy(p + q * sz, save, sz);
                }
            }
    }
    ASSERT_EQ_I(bad, 0);
}

/* Every BF16 and F16 pattern, and many F32 / F64 / F8 ones, alone in a buffer of finite
 * values: the flag is nlsr_to_f32 + isfinite's answer. */
static void test_nonfinite_patterns(void)
{
    unsigned char buf[8 * 5 + 3];
    int bad = 0;
    for (size_t k = 0; k < NRAW; k++) {
        nlsr_dtype t = raw_types[k];
        size_t sz = nlsr_dtype_size(t);
        size_t count = sz <= 2 ? (sz == 1 ? 256u : 65536u) : 200000u;
        for (size_t v = 0; v < count; v++) {
            unsigned char *p = buf + (v % 3);
            for (size_t i = 0; i < 5; i++) put_value(t, p + i * sz, rnd_good(t));
            uint64_t x;
            if (sz <= 2) {
                x = v;
            } else if (t == NLSR_DTYPE_F32) {
                x = (rnd32() & 0x807FFFFFu) | (uint32_t)(v % 256u) << 23;
            } else {
                /* Exponents around f32's range and the extremes, random mantissas. */
                uint64_t e = (v & 1) ? 1023u - 160u + v % 330u : (uint64_t)(v % 2048u);
                x = (rnd64() & 0x800FFFFFFFFFFFFFull) | e << 52;
            }
            size_t at = v % 5;
            put_value(t, p + at * sz, x);
            int want = plain_any_nonfinite(t, p, 5);
            uint32_t got = nlsr_any_nonfinite_raw(t, p, 5);
            if (want != (got != 0)) {
                bad++;
                if (bad < 8)
                    FAILF("%s pattern 0x%llx at %zu: got %u, reference %d", nlsr_dtype_name(t),
                          (unsigned long long)x, at, (unsigned)got, want);
            }
        }
    }
    ASSERT_EQ_I(bad, 0);
}

/* F64 anchors: the narrowing's overflow counts, its underflow does not; chunk edges. */
static void test_nonfinite_f64(void)
{
    static const struct {
        double d;
        int bad;
    } cases[] = {
        {1e39, 1},
        {-1e39, 1},
        {DBL_MAX, 1},
        {3.4028235677973366e38, 1},  /* FLT_MAX + half an ulp: the tie rounds to inf */
        {3.4028235677973362e38, 0},  /* just below: FLT_MAX */
        {(double)FLT_MAX, 0},
        {-(double)FLT_MAX, 0},
        {1e-300, 0},                 /* underflows to 0: finite */
        {-1e-50, 0},
        {INFINITY, 1},
        {NAN, 1},
        {0.0, 0},
    };
    double d[3];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        d[0] = 1.0, d[1] = cases[i].d, d[2] = -2.0;
        uint32_t got = nlsr_any_nonfinite_raw(NLSR_DTYPE_F64, (const unsigned char *)d, 3);
        if ((got != 0) != cases[i].bad) FAILF("F64 %.17g: got %u", cases[i].d, (unsigned)got);
        if (plain_any_nonfinite(NLSR_DTYPE_F64, (const unsigned char *)d, 3) != cases[i].bad)
            FAILF("F64 %.17g: nlsr_to_f32 + isfinite disagrees with the anchor", cases[i].d);
    }
    /* Large buffers (several of the kernel's steps), a bad value at chunk edges. */
    enum { N = 5000 };
    unsigned char *buf = xmalloc(8 * N + 3);
    static const size_t at[] = {0, 1023, 1024, 1025, 2047, 2048, 3071, 4095, 4999};
    for (size_t k = 0; k < NRAW; k++) {
        nlsr_dtype t = raw_types[k];
        size_t sz = nlsr_dtype_size(t);
        unsigned char *p = buf + 3;
        for (size_t i = 0; i < N; i++) put_value(t, p + i * sz, rnd_good(t));
        ASSERT_EQ_U(nlsr_any_nonfinite_raw(t, p, N), 0);
        for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
            unsigned char save[8];
            memcpy(save, p + at[i] * sz, sz);
            put_value(t, p + at[i] * sz, rnd_bad(t));
            if (!nlsr_any_nonfinite_raw(t, p, N))
                FAILF("%s: bad value at %zu of %d missed", nlsr_dtype_name(t), at[i], N);
            /* and not counted when outside the first n */
            if (nlsr_any_nonfinite_raw(t, p, at[i]))
                FAILF("%s: value at %zu counted with n %zu", nlsr_dtype_name(t), at[i], at[i]);
            memcpy(p + at[i] * sz, save, sz);
        }
    }
    free(buf);
}

int main(void)
{
    test_rng_seed(0x2545F4914F6CDD1Dull);
    RUN_TEST(test_mask_words_anchors);
    RUN_TEST(test_mask_words_lengths);
    RUN_TEST(test_mask_words_large);
    RUN_TEST(test_mask_indices_random);
    RUN_TEST(test_bucket_lengths);
    RUN_TEST(test_bucket_positions);
    RUN_TEST(test_bucket_large);
    RUN_TEST(test_hist_runs);
    RUN_TEST(test_step1_anchors);
    RUN_TEST(test_step1_lengths);
    RUN_TEST(test_step1_large);
    RUN_TEST(test_step1_nonfinite_positions);
    RUN_TEST(test_nonfinite_positions);
    RUN_TEST(test_nonfinite_patterns);
    RUN_TEST(test_nonfinite_f64);
    return test_finish();
}
