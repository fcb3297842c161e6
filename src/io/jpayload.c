/* SPDX-License-Identifier: Apache-2.0 */
/* The journal's payload kernels (jpayload.h). Building a range's payload is most of the
 * journal's CPU after zstd: the compare of the old and new elements, the bitmap and the gather
 * of the changed elements' old bytes. On x86-64 the compare runs on SSE2 (part of the base
 * ISA) and the width-2 gather (BF16/F16, most of what is journaled) on SSSE3 where the CPU has
 * it; the plain loops remain for the rest and as the reference the vector paths are tested
 * against (tests/test_jpayload.c). Both give the same bytes. */
#define _GNU_SOURCE
#include "jpayload.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NLSR_NO_SIMD)
#define JP_X86 1
#include <immintrin.h>
#endif

unsigned nlsr_jp_popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (unsigned)((x * 0x0101010101010101ull) >> 56);
}

/* ---- byte planes -------------------------------------------------------------------------- */

/* Sign/exponent bytes are repetitive and mantissa bytes noise; kept apart, zstd compresses the
 * former well (as in the patch file). */
void nlsr_jp_to_planes(const unsigned char *src, unsigned char *dst, size_t len, size_t w)
{
    size_t m = len / w, i = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (w == 2) {
        /* BF16/F16: four elements per 64-bit word, the low and the high bytes gathered with
         * masks and shifts (the byte loop below is several times slower). */
        unsigned char *lo = dst, *hi = dst + m;
        const uint64_t k8 = 0x00FF00FF00FF00FFull, k16 = 0x0000FFFF0000FFFFull;
        for (; i + 4 <= m; i += 4) {
            uint64_t x;
            memcpy(&x, src + 2 * i, 8);
            uint64_t a = x & k8, b = (x >> 8) & k8;
            a = (a | a >> 8) & k16;
            b = (b | b >> 8) & k16;
            uint32_t la = (uint32_t)(a | a >> 16), lb = (uint32_t)(b | b >> 16);
            memcpy(lo + i, &la, 4);
            memcpy(hi + i, &lb, 4);
        }
    }
#endif
    for (; i < m; i++)
        for (size_t b = 0; b < w; b++) dst[b * m + i] = src[i * w + b];
}

void nlsr_jp_from_planes(const unsigned char *src, unsigned char *dst, size_t len, size_t w)
{
    size_t m = len / w;
    for (size_t i = 0; i < m; i++)
        for (size_t b = 0; b < w; b++) dst[i * w + b] = src[b * m + i];
}

/* ---- the sparse payload, plain ------------------------------------------------------------ */

/* Element i of width w differs between a and b. */
static int elem_differs(const unsigned char *a, const unsigned char *b, size_t i, size_t w)
{
    switch (w) {
    case 2: {
        uint16_t x, y;
        memcpy(&x, a + 2 * i, 2);
        memcpy(&y, b + 2 * i, 2);
        return x != y;
    }
    case 4: {
        uint32_t x, y;
        memcpy(&x, a + 4 * i, 4);
        memcpy(&y, b + 4 * i, 4);
        return x != y;
    }
    case 8: {
        uint64_t x, y;
        memcpy(&x, a + 8 * i, 8);
        memcpy(&y, b + 8 * i, 8);
        return x != y;
    }
    }
    return a[i] != b[i];
}

/* Bits 0..n-1: elements i0 .. i0+n-1 differ. */
static uint64_t diff_scalar(const unsigned char *a, const unsigned char *b, size_t i0, size_t n,
                            size_t w)
{
    uint64_t bits = 0;
    for (size_t i = 0; i < n; i++) bits |= (uint64_t)elem_differs(a, b, i0 + i, w) << i;
    return bits;
}

/* Byte j of the k-th changed element at pl[j*c + k], from element k0's on (k0 changed elements
 * lie before element i0), for the bitmap bytes from i0/8 on. */
static void gather_scalar(const unsigned char *orig, const unsigned char *bm, size_t m, size_t w,
                          size_t i0, size_t k, size_t c, unsigned char *pl)
{
    for (; i0 < m; i0 += 8) {
        unsigned bits = bm[i0 / 8];
        while (bits) {
            size_t i = i0 + (size_t)__builtin_ctz(bits);
            bits &= bits - 1;
            if (w == 2) {
                pl[k] = orig[2 * i];
                pl[c + k] = orig[2 * i + 1];
            } else {
                for (size_t b = 0; b < w; b++) pl[b * c + k] = orig[i * w + b];
            }
            k++;
        }
    }
}

/* The bitmap of m elements (bit i%8 of byte i/8) from a per-64-element differ function; the
 * count of set bits. */
static void put_bits(unsigned char *dst, size_t i0, size_t n, uint64_t bits)
{
    for (size_t k = 0; k < (n + 7) / 8; k++) dst[i0 / 8 + k] = (unsigned char)(bits >> (8 * k));
}

size_t nlsr_jp_sparse_scalar(const unsigned char *orig, const unsigned char *neu, size_t len,
                             size_t w, unsigned char *dst)
{
    size_t m = len / w, nb = nlsr_jp_bitmap_bytes(m), c = 0;
    for (size_t i0 = 0; i0 < m; i0 += 64) {
        size_t n = m - i0 < 64 ? m - i0 : 64;
        uint64_t bits = diff_scalar(orig, neu, i0, n, w);
        put_bits(dst, i0, n, bits);
        c += nlsr_jp_popcount64(bits);
    }
    gather_scalar(orig, dst, m, w, 0, 0, c, dst + nb);
    return nb + c * w;
}

/* ---- the sparse payload, vectorized ------------------------------------------------------- */

#ifdef JP_X86
static inline __m128i ld(const unsigned char *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* Bits 0..63: which of the 64 elements of width w (1, 2 or 4) at a and b differ. SSE2: the
 * compares of 16 elements packed (signed saturation keeps 0 and -1) to one byte each. */
static uint64_t diff64_sse2(const unsigned char *a, const unsigned char *b, size_t w)
{
    uint64_t bits = 0;
    for (unsigned g = 0; g < 4; g++) {
        const unsigned char *x = a + g * 16 * w, *y = b + g * 16 * w;
        __m128i p;
        if (w == 1) {
            p = _mm_cmpeq_epi8(ld(x), ld(y));
        } else if (w == 2) {
            p = _mm_packs_epi16(_mm_cmpeq_epi16(ld(x), ld(y)),
                                _mm_cmpeq_epi16(ld(x + 16), ld(y + 16)));
        } else {
            __m128i e0 = _mm_packs_epi32(_mm_cmpeq_epi32(ld(x), ld(y)),
                                         _mm_cmpeq_epi32(ld(x + 16), ld(y + 16)));
            __m128i e1 = _mm_packs_epi32(_mm_cmpeq_epi32(ld(x + 32), ld(y + 32)),
                                         _mm_cmpeq_epi32(ld(x + 48), ld(y + 48)));
            p = _mm_packs_epi16(e0, e1);
        }
        unsigned eq = (unsigned)_mm_movemask_epi8(p);
        bits |= (uint64_t)(~eq & 0xFFFFu) << (16 * g);
    }
    return bits;
}

/* For each bitmap byte (8 elements of width 2): the shuffle that puts the changed elements'
 * low bytes first in the low half and their high bytes first in the high half, and its count
 * of set bits. */
static unsigned char g2_shuf[256][16], g2_count[256];
static pthread_once_t g2_once = PTHREAD_ONCE_INIT;
static int g2_have;

static void g2_init(void)
{
    for (unsigned mask = 0; mask < 256; mask++) {
        unsigned t = 0;
        memset(g2_shuf[mask], 0x80, 16);
        for (unsigned p = 0; p < 8; p++)
            if (mask >> p & 1) {
                g2_shuf[mask][t] = (unsigned char)(2 * p);
                g2_shuf[mask][8 + t] = (unsigned char)(2 * p + 1);
                t++;
            }
        g2_count[mask] = (unsigned char)t;
    }
    g2_have = __builtin_cpu_supports("ssse3");
}

/* The width-2 gather for the bitmap bytes from q on while 8 more low bytes still fit below the
 * high plane (each step stores 8 bytes to each plane, of which the first count are kept and
 * the rest overwritten by the next step); returns the elements gathered, *q advanced. */
__attribute__((target("ssse3"))) static size_t gather2_ssse3(const unsigned char *orig,
                                                              const unsigned char *bm,
                                                              size_t full, size_t c,
                                                              unsigned char *pl, size_t *q)
{
    size_t k = 0, i = *q;
    for (; i < full && k + 8 <= c; i++) {
        unsigned mask = bm[i];
        if (!mask) continue;
        __m128i v = _mm_shuffle_epi8(ld(orig + 16 * i),
                                     _mm_loadu_si128((const __m128i *)(const void *)g2_shuf[mask]));
        _mm_storel_epi64((__m128i *)(void *)(pl + k), v);
        _mm_storel_epi64((__m128i *)(void *)(pl + c + k), _mm_srli_si128(v, 8));
        k += g2_count[mask];
    }
    *q = i;
    return k;
}
#endif

size_t nlsr_jp_sparse(const unsigned char *orig, const unsigned char *neu, size_t len, size_t w,
                      unsigned char *dst)
{
#ifdef JP_X86
    size_t m = len / w, nb = nlsr_jp_bitmap_bytes(m), c = 0;
    for (size_t i0 = 0; i0 < m; i0 += 64) {
        size_t n = m - i0 < 64 ? m - i0 : 64;
        uint64_t bits = n == 64 && w <= 4 ? diff64_sse2(orig + i0 * w, neu + i0 * w, w)
                                          : diff_scalar(orig, neu, i0, n, w);
        put_bits(dst, i0, n, bits);
        c += nlsr_jp_popcount64(bits);
    }
    size_t q = 0, k = 0;
    if (w == 2) {
        pthread_once(&g2_once, g2_init);
        /* Whole bitmap bytes only: the 16-byte load of the last, partial one would pass the
         * end of orig. */
        if (g2_have) k = gather2_ssse3(orig, dst, m / 8, c, dst + nb, &q);
    }
    gather_scalar(orig, dst, m, w, q * 8, k, c, dst + nb);
    return nb + c * w;
#else
    return nlsr_jp_sparse_scalar(orig, neu, len, w, dst);
#endif
}

int nlsr_jp_sparse_restore(const unsigned char *pay, size_t plen, const unsigned char *cur,
                           size_t len, size_t w, unsigned char *out)
{
    size_t m = len / w, nb = nlsr_jp_bitmap_bytes(m), c = 0;
    if (plen < nb) return 1;
    for (size_t k = 0; k < nb; k++) c += nlsr_jp_popcount64(pay[k]);
    /* Bits past the last element are zero in a payload the writer made. */
    if (m % 8 && (pay[nb - 1] >> (m % 8))) return 1;
    if (plen != nb + c * w) return 1;
    memcpy(out, cur, len);
    const unsigned char *pl = pay + nb;
    size_t k = 0;
    for (size_t i0 = 0; i0 < m; i0 += 8) {
        unsigned bits = pay[i0 / 8];
        while (bits) {
            size_t i = i0 + (size_t)__builtin_ctz(bits);
            bits &= bits - 1;
            for (size_t b = 0; b < w; b++) out[i * w + b] = pl[b * c + k];
            k++;
        }
    }
    return 0;
}
