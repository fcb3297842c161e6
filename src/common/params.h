/* SPDX-License-Identifier: Apache-2.0 */
/* The realignment parameters: the table every parameter is declared in (param_table.c; the
 * public part is nlsr_param_info in nlsr.h), their names and JSON form, shared by the report,
 * the patch file's header and the command line (one spelling everywhere). */
#ifndef NLSR_COMMON_PARAMS_H
#define NLSR_COMMON_PARAMS_H

#include "err.h"

struct cJSON;

/* The randomized SVD's power iterations at most (--power-iters). */
#define NLSR_MAX_POWER_ITERS 64

/* Where a parameter goes in the report's "params" object (nlsr_params_add_json). */
#define NLSR_PJ_FULL 1u /* full-weight reports only */
#define NLSR_PJ_LORA 2u /* PEFT adapter reports only */
#define NLSR_PJ_ALL 3u

typedef struct nlsr_param {
    nlsr_param_info pub;
    size_t offset2;   /* 1 + the offset of a second field set to the same value; 0 if none */
    const char *json; /* key in the report's "params" (NULL: not there, or "scorer"/"targets"
                         written by the entry itself) */
    unsigned pj;      /* NLSR_PJ_*: which reports hold it */
} nlsr_param;

extern const nlsr_param nlsr_params_table[];
extern const size_t nlsr_params_table_len;

/* nlsr_params_check into the error buffer: the one bound check the jobs call first. */
int nlsr_params_validate(const nlsr_realign_params *p, nlsr_err *e);
/* Checks one numeric value against parameter `name`'s bounds (for code below the jobs that
 * takes a value alone). 0 or NLSR_E_USAGE with the table's message. */
int nlsr_param_check_value(const char *name, double v, nlsr_err *e);
/* The range of a bounded parameter as text: "[0, 1]", "(0, 1]", "finite"; "" if unbounded. */
void nlsr_param_range_text(const nlsr_param_info *in, char *buf, size_t n);

/* Adds the parameters to a report's "params" object in the table's order (the report's
 * layout): beta, sparsity, mode, semantics, prune_rate, epsilon, tau, seed, then for `pj`
 * NLSR_PJ_LORA amplify and alpha, for NLSR_PJ_FULL the scorer object, then targets (the
 * defaults written out). 0 or -ENOMEM. */
int nlsr_params_add_json(struct cJSON *obj, const nlsr_realign_params *p, unsigned pj);
/* The parameters named by their report keys (NULL-terminated), in that order: the patch
 * header's and the plan's subsets. 0, or -ENOMEM (or an unknown key). */
int nlsr_params_add_json_keys(struct cJSON *obj, const nlsr_realign_params *p,
                              const char *const *keys);
/* Reads such an object back: every key present is parsed and bound-checked as on the command
 * line (absent keys leave p as it is). A "targets" array becomes a malloc'd block as
 * nlsr_params_set makes (the caller frees p->targets if it changed). NLSR_E_FORMAT naming
 * `file` and the key when malformed or out of bounds. */
int nlsr_params_from_json(const struct cJSON *obj, nlsr_realign_params *p, const char *file,
                          nlsr_err *e);

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
