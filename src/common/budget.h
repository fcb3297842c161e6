/* SPDX-License-Identifier: Apache-2.0 */
/* The memory budget: every large buffer is charged here where it is allocated, so peak memory
 * is a number the run can report and the planner can promise. */
#ifndef NLSR_COMMON_BUDGET_H
#define NLSR_COMMON_BUDGET_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct nlsr_budget {
    uint64_t limit; /* bytes; 0 = unlimited */
    uint64_t used, peak;
} nlsr_budget;

/* Charges `bytes` for `what`; NLSR_E_BUDGET (with a message naming what and how much) if the
 * limit would be passed. */
int nlsr_budget_charge(nlsr_budget *b, uint64_t bytes, const char *what, nlsr_err *e);
void nlsr_budget_release(nlsr_budget *b, uint64_t bytes);
/* malloc + charge in one step; *out NULL on failure. `what` names the buffer in messages. */
int nlsr_budget_alloc(nlsr_budget *b, size_t bytes, const char *what, void **out, nlsr_err *e);
void nlsr_budget_free(nlsr_budget *b, void *p, size_t bytes);

#endif
