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

/* Bytes a budget of `limit` (0 = unlimited) has left with `used` taken: UINT64_MAX when
 * unlimited. The one "room" rule of every cache decision. */
static inline uint64_t nlsr_budget_room_of(uint64_t limit, uint64_t used)
{
    return limit == 0 ? UINT64_MAX : limit > used ? limit - used : 0;
}
static inline uint64_t nlsr_budget_room(const nlsr_budget *b)
{
    return nlsr_budget_room_of(b->limit, b->used);
}

/* Charges `bytes` for `what`; NLSR_E_BUDGET (with a message naming what and how much) if the
 * limit would be passed. */
int nlsr_budget_charge(nlsr_budget *b, uint64_t bytes, const char *what, nlsr_err *e);
void nlsr_budget_release(nlsr_budget *b, uint64_t bytes);
/* malloc + charge in one step; *out NULL on failure. `what` names the buffer in messages. */
int nlsr_budget_alloc(nlsr_budget *b, size_t bytes, const char *what, void **out, nlsr_err *e);
void nlsr_budget_free(nlsr_budget *b, void *p, size_t bytes);

#endif
