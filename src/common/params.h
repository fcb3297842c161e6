/* SPDX-License-Identifier: Apache-2.0 */
/* The realignment parameters' names and JSON form, shared by the report and the patch file's
 * header (one spelling everywhere). */
#ifndef NLSR_COMMON_PARAMS_H
#define NLSR_COMMON_PARAMS_H

#include "err.h"

struct cJSON;

/* The randomized SVD's power iterations at most (--power-iters). */
#define NLSR_MAX_POWER_ITERS 64

/* "magnitude", "lowrank", "wanda"; "paper", "authors", "direct"; "row", "matrix". */
const char *nlsr_scorer_kind_name(nlsr_scorer_kind k);
const char *nlsr_rank_mode_name(nlsr_rank_mode m);
const char *nlsr_wanda_mode_name(nlsr_wanda_mode m);

/* The scorer's parameters as a JSON object for the patch header and the report:
 * {"name": "magnitude"}, or for lowrank {"name", "rank" (null when a fraction is used),
 * "rank_fraction" (null when a rank is given), "rank_reading", "power_iters", "oversample",
 * "svd" ("auto" or "exact"), "seed", "activations" (absolute path or null)}, for wanda {"name",
 * "select", "activations"}. NULL on out-of-memory. */
struct cJSON *nlsr_scorer_params_json(const nlsr_scorer_params *sp);
/* Reads such an object back (NULL: magnitude, for files written before scorers existed).
 * Strings point into o. NLSR_E_FORMAT naming `file` when malformed. */
int nlsr_scorer_params_from_json(const struct cJSON *o, nlsr_scorer_params *sp,
                                 const char *file, nlsr_err *e);

#endif
