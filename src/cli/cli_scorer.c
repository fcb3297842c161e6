/* SPDX-License-Identifier: Apache-2.0 */
/* Parsing of the scorer options (cli_scorer.h). */
#define _GNU_SOURCE
#include "cli_scorer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum {
    S_SCORER, S_RANK, S_FRACTION, S_READING, S_POWER, S_OVERSAMPLE, S_EXACT, S_ACTS, S_WANDA,
    S_COUNT
};

static const struct sopt {
    const char *name;
    int has_arg;
} sopts[S_COUNT] = {
    [S_SCORER] = {"--scorer", 1},          [S_RANK] = {"--rank", 1},
    [S_FRACTION] = {"--rank-fraction", 1}, [S_READING] = {"--rank-reading", 1},
    [S_POWER] = {"--power-iters", 1},      [S_OVERSAMPLE] = {"--oversample", 1},
    [S_EXACT] = {"--exact-svd", 0},        [S_ACTS] = {"--activations", 1},
    [S_WANDA] = {"--wanda-select", 1},
};

static int find(const char *name)
{
    for (int i = 0; i < S_COUNT; i++)
        if (strcmp(sopts[i].name, name) == 0) return i;
    return -1;
}

int cli_scorer_is_opt(const char *name, int *has_arg)
{
    int i = find(name);
    if (i < 0) return 0;
    if (has_arg) *has_arg = sopts[i].has_arg;
    return 1;
}

/* A non-negative integer up to max. */
static int parse_uint(const char *opt, const char *v, unsigned long long max,
                      unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end != '\0' || errno == ERANGE || v[0] == '-' || x > max)
        return cli_usage_error("%s needs an integer from 0 to %llu, got '%s'", opt, max, v);
    *out = x;
    return 0;
}

int cli_scorer_set(cli_scorer *c, const char *name, const char *v)
{
    nlsr_scorer_params *sp = c->sp;
    int id = find(name);
    if (id < 0) return cli_usage_error("unknown scorer option '%s'", name);
    c->given |= 1u << id;
    unsigned long long u = 0;
    switch (id) {
    case S_SCORER:
        if (strcmp(v, "magnitude") == 0) sp->kind = NLSR_SCORER_MAGNITUDE;
        else if (strcmp(v, "lowrank") == 0) sp->kind = NLSR_SCORER_LOWRANK;
        else if (strcmp(v, "wanda") == 0) sp->kind = NLSR_SCORER_WANDA;
        else return cli_usage_error("--scorer takes magnitude, lowrank or wanda, not '%s'", v);
        break;
    case S_RANK:
        if (parse_uint(name, v, 1ull << 40, &u)) return 2;
        if (u == 0) return cli_usage_error("--rank needs a positive integer, got '%s'", v);
        sp->rank = u;
        break;
    case S_FRACTION: {
        char *end;
        errno = 0;
        double f = strtod(v, &end);
        if (end == v || *end != '\0' || errno == ERANGE || !(f > 0.0 && f <= 1.0))
            return cli_usage_error("--rank-fraction needs a number in (0, 1], got '%s'", v);
        sp->rank_fraction = f;
        break;
    }
    case S_READING:
        if (strcmp(v, "paper") == 0) sp->rank_mode = NLSR_RANK_MODE_PAPER;
        else if (strcmp(v, "authors") == 0) sp->rank_mode = NLSR_RANK_MODE_AUTHORS;
        else if (strcmp(v, "direct") == 0) sp->rank_mode = NLSR_RANK_MODE_DIRECT;
        else return cli_usage_error("--rank-reading takes paper, authors or direct, not '%s'", v);
        break;
    case S_POWER:
        if (parse_uint(name, v, 64, &u)) return 2;
        sp->power_iters = (int)u;
        break;
    case S_OVERSAMPLE:
        if (parse_uint(name, v, 1u << 20, &u)) return 2;
        sp->oversample = u;
        break;
    case S_EXACT: sp->exact_svd = 1; break;
    case S_ACTS: sp->activations = v; break;
    case S_WANDA:
        if (strcmp(v, "row") == 0) sp->wanda_select = NLSR_WANDA_MODE_ROW;
        else if (strcmp(v, "matrix") == 0) sp->wanda_select = NLSR_WANDA_MODE_MATRIX;
        else return cli_usage_error("--wanda-select takes row or matrix, not '%s'", v);
        break;
    }
    return 0;
}

int cli_scorer_finish(const cli_scorer *c)
{
    const nlsr_scorer_params *sp = c->sp;
    static const int lowrank_only[] = {S_RANK, S_FRACTION, S_READING, S_POWER, S_OVERSAMPLE,
                                       S_EXACT};
    for (size_t i = 0; i < sizeof lowrank_only / sizeof lowrank_only[0]; i++)
        if ((c->given >> lowrank_only[i] & 1u) && sp->kind != NLSR_SCORER_LOWRANK)
            return cli_usage_error("%s is an option of --scorer lowrank",
                                   sopts[lowrank_only[i]].name);
    if ((c->given >> S_WANDA & 1u) && sp->kind != NLSR_SCORER_WANDA)
        return cli_usage_error("--wanda-select is an option of --scorer wanda");
    if ((c->given >> S_RANK & 1u) && (c->given >> S_FRACTION & 1u))
        return cli_usage_error("give --rank or --rank-fraction, not both");
    if (sp->activations && sp->kind == NLSR_SCORER_MAGNITUDE)
        return cli_usage_error("--activations is for --scorer lowrank or wanda");
    if (!sp->activations && sp->kind == NLSR_SCORER_WANDA)
        return cli_usage_error("--scorer wanda needs --activations FILE");
    return 0;
}
