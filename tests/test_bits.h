/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers of the kernel tests (test_kernels.c, test_mask.c): float bit views, a reproducible
 * generator, an allocation that cannot fail silently. */
#ifndef NLSR_TEST_BITS_H
#define NLSR_TEST_BITS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* xorshift64*; each test program seeds it once (test_rng_seed) so its sequence is fixed. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static inline void test_rng_seed(uint64_t s)
{
    rng_state = s;
}

static inline uint32_t rnd32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static inline uint64_t rnd64(void)
{
    uint64_t hi = rnd32();
    return hi << 32 | rnd32();
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

#endif
