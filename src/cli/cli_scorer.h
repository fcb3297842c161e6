/* SPDX-License-Identifier: Apache-2.0 */
/* The step-2 scorer options shared by `nlsr prepare`, `nlsr run` and `nlsr plan`:
 * --scorer magnitude|lowrank|wanda, --rank R, --rank-fraction F, --rank-reading
 * paper|authors|direct, --power-iters N, --oversample N, --exact-svd, --activations FILE,
 * --wanda-select row|matrix. Options a scorer does not use are usage errors. */
#ifndef NLSR_CLI_SCORER_H
#define NLSR_CLI_SCORER_H

#include "nlsr.h"

typedef struct cli_scorer {
    nlsr_scorer_params *sp; /* written by cli_scorer_set */
    unsigned given;         /* bit per option seen */
} cli_scorer;

/* 1 if `name` is a scorer option; *has_arg says whether it takes a value. */
int cli_scorer_is_opt(const char *name, int *has_arg);
/* Applies option `name` with value `v` (NULL for --exact-svd). 0, or the usage exit status. */
int cli_scorer_set(cli_scorer *c, const char *name, const char *v);
/* After all options: the combinations (e.g. --rank only with --scorer lowrank, wanda needs
 * --activations). 0, or the usage exit status. */
int cli_scorer_finish(const cli_scorer *c);

#endif
