/* SPDX-License-Identifier: Apache-2.0 */
/* METHOD.md step 3's adaptive selection written out again for the tests, independently of
 * src/compute/selection.c (no sort: each module's place is counted), so that a report's
 * probabilities, draws and decisions are checked against the spec rather than against
 * themselves. */
#ifndef NLSR_TEST_SELECT_H
#define NLSR_TEST_SELECT_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64 next() as METHOD.md states it. */
static inline uint64_t ref_splitmix64(uint64_t *s)
{
    *s += 0x9E3779B97F4A7C15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The i-th draw (0-based) of a seed: u = (next() >> 11) * 2^-53. */
static inline double ref_draw(uint64_t seed, size_t i)
{
    uint64_t s = seed, x = 0;
    for (size_t k = 0; k <= i; k++) x = ref_splitmix64(&s);
    return (double)(x >> 11) * 0x1p-53;
}

/* Adaptive selection of n modules with similarities sim (module order): place pos of module i
 * in "similarity descending, ties in module order", norm = (N-1-pos)/(N-1) (0.5 for N = 1),
 * 1 - norm for the paper's semantics, p = clamp((prune - eps) + 2*eps*norm, 0, 1), one draw
 * per module in module order, patched iff draw < p. */
static inline void ref_select(const double *sim, size_t n, int authors, double prune, double eps,
                              uint64_t seed, double *prob, double *draw, int *patched)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        size_t pos = 0;
        for (size_t j = 0; j < n; j++) pos += sim[j] > sim[i] || (sim[j] == sim[i] && j < i);
        double norm = n == 1 ? 0.5 : (double)(n - 1 - pos) / (double)(n - 1);
        if (!authors) norm = 1.0 - norm;
        double p = (prune - eps) + 2.0 * eps * norm;
        prob[i] = p < 0.0 ? 0.0 : p > 1.0 ? 1.0 : p;
        draw[i] = (double)(ref_splitmix64(&s) >> 11) * 0x1p-53;
        patched[i] = draw[i] < prob[i];
    }
}

#endif
