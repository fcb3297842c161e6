/* SPDX-License-Identifier: Apache-2.0 */
#include "budget.h"

#include <errno.h>
#include <stdlib.h>

int nlsr_budget_charge(nlsr_budget *b, uint64_t bytes, const char *what, nlsr_err *e)
{
    if (b->limit && (bytes > b->limit || b->used > b->limit - bytes))
        return nlsr_fail(e, NLSR_E_BUDGET,
                         "memory budget of %llu bytes exceeded: %s needs %llu bytes with %llu "
                         "already in use",
                         (unsigned long long)b->limit, what, (unsigned long long)bytes,
                         (unsigned long long)b->used);
    b->used += bytes;
    if (b->used > b->peak) b->peak = b->used;
    return 0;
}

void nlsr_budget_release(nlsr_budget *b, uint64_t bytes)
{
    b->used = bytes > b->used ? 0 : b->used - bytes;
}

int nlsr_budget_alloc(nlsr_budget *b, size_t bytes, const char *what, void **out, nlsr_err *e)
{
    *out = NULL;
    NLSR_FORWARD(nlsr_budget_charge(b, bytes, what, e));
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        nlsr_budget_release(b, bytes);
        return nlsr_fail(e, -ENOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    }
    *out = p;
    return 0;
}

void nlsr_budget_free(nlsr_budget *b, void *p, size_t bytes)
{
    if (!p) return;
    free(p);
    nlsr_budget_release(b, bytes);
}
