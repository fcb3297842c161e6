/* SPDX-License-Identifier: Apache-2.0 */
/* Which tensors are target modules (METHOD.md): 2-D, name ends in ".weight" and contains one
 * of the target names (default: the authors' seven LoRA targets). */
#ifndef NLSR_PLAN_TARGETS_H
#define NLSR_PLAN_TARGETS_H

#include <stddef.h>

#include "../io/checkpoint.h"

#define NLSR_NTARGET_NAMES 7
extern const char *const nlsr_target_names[NLSR_NTARGET_NAMES];

typedef struct nlsr_target_summary {
    long layers;    /* 1 + the highest N in "layers.N." (0 if none) */
    size_t modules; /* target tensors */
    int present[NLSR_NTARGET_NAMES];
} nlsr_target_summary;

/* 1 if the tensor is a target module for the given name list (NULL = defaults). */
int nlsr_is_target(const st_tensor *t, const char *const *names, size_t nnames);
void nlsr_targets_summarize(const nlsr_ckpt *ck, nlsr_target_summary *out);

#endif
