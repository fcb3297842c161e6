/* SPDX-License-Identifier: Apache-2.0 */
#include "selection.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

uint64_t nlsr_splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct rank_item {
    double s;
    size_t i;
} rank_item;

/* Similarity descending, ties in module order. NaN cannot occur: cosines of finite sums. */
static int cmp_rank(const void *a, const void *b)
{
    const rank_item *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int nlsr_select_modules(const nlsr_select_params *p, const double *sim, size_t n,
                        double *probability, double *draw, int *patched)
{
    switch (p->mode) {
    case NLSR_SELECT_ALL:
    case NLSR_SELECT_NONE:
        for (size_t i = 0; i < n; i++) {
            probability[i] = p->mode == NLSR_SELECT_ALL ? 1.0 : 0.0;
            draw[i] = NAN;
            patched[i] = p->mode == NLSR_SELECT_ALL;
        }
        return 0;
    case NLSR_SELECT_THRESHOLD:
        for (size_t i = 0; i < n; i++) {
            probability[i] = NAN;
            draw[i] = NAN;
            patched[i] = sim[i] < p->tau;
        }
        return 0;
    case NLSR_SELECT_ADAPTIVE: break;
    }
    rank_item *r = malloc((n ? n : 1) * sizeof *r);
    if (!r) return -ENOMEM;
    for (size_t i = 0; i < n; i++) r[i] = (rank_item){sim[i], i};
    qsort(r, n, sizeof *r, cmp_rank);
    for (size_t pos = 0; pos < n; pos++) {
        double norm = n == 1 ? 0.5 : (double)(n - 1 - pos) / (double)(n - 1);
        if (p->semantics == NLSR_SEMANTICS_PAPER) norm = 1.0 - norm;
        double pr = (p->prune_rate - p->epsilon) + 2.0 * p->epsilon * norm;
        probability[r[pos].i] = pr < 0.0 ? 0.0 : pr > 1.0 ? 1.0 : pr;
    }
    free(r);
    uint64_t state = p->seed;
    for (size_t i = 0; i < n; i++) {
        double u = (double)(nlsr_splitmix64_next(&state) >> 11) * 0x1p-53;
        draw[i] = u;
        patched[i] = u < probability[i];
    }
    return 0;
}

double nlsr_cosine(double dot, double nx, double ny)
{
    if (nx == 0.0 || ny == 0.0) return 0.0;
    return dot / (sqrt(nx) * sqrt(ny));
}
