/* SPDX-License-Identifier: Apache-2.0 */
/* The undo journal's payload kernels (src/io/jpayload.h): the vectorized sparse payload (SSE2
 * compares, the SSSE3 width-2 gather) must give the plain element loops' bytes for every
 * width, length and density, at unaligned addresses, without writing past the room the header
 * promises; a payload restores the original bytes; and a small case computed by hand. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/io/jpayload.h"
#include "test.h"
#include "test_bits.h"

#define GUARD 64u

/* Element i of a changed with probability num/den, one random byte of it flipped (so that a
 * change in any byte of an element must be seen). */
static void make_pair(unsigned char *o, unsigned char *n, size_t m, size_t w, unsigned num,
                      unsigned den)
{
    for (size_t i = 0; i < m * w; i++) o[i] = (unsigned char)rnd32();
    memcpy(n, o, m * w);
    for (size_t i = 0; i < m; i++)
        if (rnd32() % den < num) n[i * w + rnd32() % w] ^= (unsigned char)(1 + rnd32() % 255);
}

static void test_sparse_matches_scalar(void)
{
    static const size_t widths[] = {1, 2, 4, 8};
    static const unsigned dens[][2] = {{0, 1}, {1, 100}, {1, 5}, {1, 2}, {19, 20}, {1, 1}};
    size_t lens[300];
    size_t nl = 0;
    for (size_t m = 0; m < 200; m++) lens[nl++] = m;
    static const size_t big[] = {255, 256, 257, 1023, 4096, 4099, 65537, 262147, 1048589};
    for (size_t k = 0; k < sizeof big / sizeof *big; k++) lens[nl++] = big[k];
    size_t maxm = 1048589, cap = 8 * maxm + 16;
    unsigned char *o = malloc(cap), *n = malloc(cap);
    unsigned char *dv = malloc(cap + cap / 8 + GUARD), *ds = malloc(cap + cap / 8 + GUARD);
    ASSERT_TRUE(o && n && dv && ds);
    int bad = 0, printed = 0;
    for (size_t wi = 0; wi < 4; wi++)
        for (size_t li = 0; li < nl; li++)
            for (size_t di = 0; di < sizeof dens / sizeof *dens; di++) {
                size_t w = widths[wi], m = lens[li], len = m * w;
                if (m > 5000 && di % 2) continue; /* the large lengths at three densities */
                /* Odd addresses: the loads must not assume alignment. */
                unsigned char *po = o + (li & 1), *pn = n + 3 * (li & 1);
                make_pair(po, pn, m, w, dens[di][0], dens[di][1]);
                size_t room = nlsr_jp_bitmap_bytes(m) + len;
                memset(dv, 0xA5, room + GUARD);
                memset(ds, 0x5A, room + GUARD);
                size_t lv = nlsr_jp_sparse(po, pn, len, w, dv);
                size_t ls = nlsr_jp_sparse_scalar(po, pn, len, w, ds);
                int wrong = lv != ls || memcmp(dv, ds, ls) != 0 || lv > room;
                for (size_t g = room; g < room + GUARD; g++) wrong |= dv[g] != 0xA5;
                if (wrong && printed++ < 8)
                    FAILF("width %zu, %zu elements, density %u/%u: %zu bytes vs plain %zu",
                          w, m, dens[di][0], dens[di][1], lv, ls);
                bad += wrong;
            }
    ASSERT_EQ_I(bad, 0);
    free(o);
    free(n);
    free(dv);
    free(ds);
}

/* The payload and the new bytes give back the original ones; a damaged length is refused. */
static void test_restore(void)
{
    static const size_t widths[] = {1, 2, 4, 8};
    size_t m = 70001;
    unsigned char *o = malloc(8 * m), *n = malloc(8 * m), *p = malloc(9 * m + 16),
                  *r = malloc(8 * m);
    ASSERT_TRUE(o && n && p && r);
    for (size_t wi = 0; wi < 4; wi++) {
        size_t w = widths[wi], len = m * w;
        make_pair(o, n, m, w, 1, 5);
        size_t pl = nlsr_jp_sparse(o, n, len, w, p);
        ASSERT_EQ_I(nlsr_jp_sparse_restore(p, pl, n, len, w, r), 0);
        ASSERT_TRUE(memcmp(r, o, len) == 0);
        ASSERT_EQ_I(nlsr_jp_sparse_restore(p, pl - 1, n, len, w, r), 1);
    }
    free(o);
    free(n);
    free(p);
    free(r);
}

/* Worked by hand from the layout: bitmap, then the changed elements' low bytes, then their high
 * bytes. */
static void test_by_hand(void)
{
    /* Width 1: elements 1 and 3 of 4 change. */
    const unsigned char o1[] = {1, 2, 3, 4}, n1[] = {1, 9, 3, 8};
    unsigned char d[32];
    ASSERT_EQ_U(nlsr_jp_sparse(o1, n1, 4, 1, d), 3);
    ASSERT_EQ_U(d[0], 0x0A);
    ASSERT_EQ_U(d[1], 2);
    ASSERT_EQ_U(d[2], 4);
    /* Width 2 (little-endian 0x1100, 0x2201, 0x3302): elements 1 and 2 change, one in its low
     * byte and one in its high byte. */
    const unsigned char o2[] = {0x00, 0x11, 0x01, 0x22, 0x02, 0x33};
    const unsigned char n2[] = {0x00, 0x11, 0x07, 0x22, 0x02, 0x34};
    ASSERT_EQ_U(nlsr_jp_sparse(o2, n2, 6, 2, d), 5);
    const unsigned char want[] = {0x06, 0x01, 0x02, 0x22, 0x33};
    ASSERT_TRUE(memcmp(d, want, 5) == 0);
    /* Nothing changes: the bitmap alone, all zero. */
    ASSERT_EQ_U(nlsr_jp_sparse(o2, o2, 6, 2, d), 1);
    ASSERT_EQ_U(d[0], 0);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    test_rng_seed(0x5DEECE66Dull);
    RUN_TEST(test_by_hand);
    RUN_TEST(test_sparse_matches_scalar);
    RUN_TEST(test_restore);
    return test_finish();
}
