/* SPDX-License-Identifier: Apache-2.0 */
/* Module selection (METHOD.md step 3): which modules get the reference's neurons. */
#ifndef NLSR_COMPUTE_SELECTION_H
#define NLSR_COMPUTE_SELECTION_H

#include <stddef.h>
#include <stdint.h>

#include "nlsr.h"

/* splitmix64 next(): advances *state and returns the next output. */
uint64_t nlsr_splitmix64_next(uint64_t *state);

/* For n modules in module order with similarities sim[i]: probability[i] and draw[i] (NAN
 * where the mode has none) and patched[i]. Scratch-free apart from an n-element index array
 * allocated internally; returns 0 or -ENOMEM. */
int nlsr_select_modules(const nlsr_select_params *p, const double *sim, size_t n,
                        double *probability, double *draw, int *patched);

/* Cosine from accumulated sums, 0 when either norm is 0 (METHOD.md). */
double nlsr_cosine(double dot, double nx, double ny);

#endif
