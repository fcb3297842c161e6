/* SPDX-License-Identifier: Apache-2.0 */
/* The parameters table (nlsr.h "the parameters table"): every method parameter declared once,
 * with its bounds, and the one parser, printer and bound check that all callers share. */
#define _GNU_SOURCE
#include "params.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN NLSR_JOB_RUN
#define PREP NLSR_JOB_PREPARE
#define APPLY NLSR_JOB_APPLY
#define AMP NLSR_JOB_AMPLIFY
#define PLAN NLSR_JOB_PLAN
#define OFF(f) offsetof(nlsr_realign_params, f)

static const char *const select_names[] = {"adaptive", "threshold", "all", "none", NULL};
static const char *const semantics_names[] = {"paper", "authors", NULL};
static const char *const amplify_names[] = {"paper", "authors", NULL};
static const char *const scorer_names[] = {"magnitude", "lowrank", "wanda", NULL};
static const char *const reading_names[] = {"paper", "authors", "direct", NULL};
static const char *const wanda_names[] = {"row", "matrix", NULL};

/* The order is the help's and the report's (params_json writes the JSON keys in it). Defaults
 * are NLSR_REALIGN_PARAMS_DEFAULT's; test_params checks the two agree. */
const nlsr_param nlsr_params_table[] = {
    {{"beta", NLSR_PARAM_DOUBLE, "B", NULL, "0.9", 0, 0, NLSR_BOUND_FINITE, RUN | PREP | AMP | PLAN,
      -1, "amplification of the alignment: e = a + beta (a - b)", OFF(beta)},
     0, "beta", NLSR_PJ_ALL},
    {{"sparsity", NLSR_PARAM_DOUBLE, "S", NULL, "0.8", 0, 1, NLSR_BOUND_MIN | NLSR_BOUND_MAX,
      RUN | PREP | PLAN, -1, "fraction of each module's scores below the mask's threshold",
      OFF(sparsity)},
     0, "sparsity", NLSR_PJ_ALL},
    {{"select", NLSR_PARAM_ENUM, "MODE", select_names, "adaptive", 0, 0, 0, RUN | APPLY, -1,
      "which modules are patched (step 3)", OFF(select.mode)},
     0, "mode", NLSR_PJ_ALL},
    {{"semantics", NLSR_PARAM_ENUM, "S", semantics_names, "paper", 0, 0, 0, RUN | APPLY, -1,
      "paper: least similar modules most likely patched; authors: the reverse", OFF(select.semantics)},
     0, "semantics", NLSR_PJ_ALL},
    {{"prune-rate", NLSR_PARAM_DOUBLE, "P", NULL, "0.5", 0, 0, NLSR_BOUND_FINITE, RUN | APPLY, -1,
      "adaptive selection: mean patch probability", OFF(select.prune_rate)},
     0, "prune_rate", NLSR_PJ_ALL},
    {{"epsilon", NLSR_PARAM_DOUBLE, "E", NULL, "0.2", 0, 0, NLSR_BOUND_FINITE, RUN | APPLY, -1,
      "adaptive selection: spread of the probabilities", OFF(select.epsilon)},
     0, "epsilon", NLSR_PJ_ALL},
    {{"tau", NLSR_PARAM_DOUBLE, "T", NULL, "0.1", 0, 0, NLSR_BOUND_FINITE, RUN | APPLY, -1,
      "threshold selection: patched iff similarity < tau", OFF(select.tau)},
     0, "tau", NLSR_PJ_ALL},
    /* One seed for the run's randomness: the selection's draws and the randomized SVD. */
    {{"seed", NLSR_PARAM_UINT64, "N", NULL, "42", 0, 0, 0, RUN | PREP | APPLY, -1,
      "seed of the selection's draws and of the randomized SVD", OFF(select.seed)},
     OFF(scorer.seed) + 1, "seed", NLSR_PJ_ALL},
    {{"targets", NLSR_PARAM_LIST, "LIST", NULL,
      "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", 0, 0, 0, RUN | PREP | PLAN, -1,
      "comma-separated fragments of the target module names", OFF(targets)},
     0, "targets", NLSR_PJ_ALL},
    {{"amplify", NLSR_PARAM_ENUM, "MODE", amplify_names, "paper", 0, 0, 0, RUN | PREP | AMP, -1,
      "LoRA amplification: paper B_e = (1+beta) B_a; authors p*alpha + p*alpha", OFF(amplify)},
     0, "amplify", NLSR_PJ_LORA},
    {{"alpha", NLSR_PARAM_DOUBLE, "A", NULL, "0.9", 0, 0, NLSR_BOUND_FINITE, RUN | PREP | AMP, -1,
      "LoRA authors' amplification factor", OFF(alpha)},
     0, "alpha", NLSR_PJ_LORA},
    {{"mask", NLSR_PARAM_PATH, "FILE", NULL, "", 0, 0, 0, RUN | PREP, -1,
      "LoRA: the masks from a safetensors file (authors' layout)", OFF(mask_path)},
     0, NULL, 0},
    {{"mask-out", NLSR_PARAM_PATH, "FILE", NULL, "", 0, 0, 0, RUN | PREP, -1,
      "LoRA: also write the masks to a safetensors file", OFF(mask_out_path)},
     0, NULL, 0},
    {{"scorer", NLSR_PARAM_ENUM, "KIND", scorer_names, "magnitude", 0, 0, 0, RUN | PREP | PLAN,
      -1, "step 2's score (docs/LOWRANK.md)", OFF(scorer.kind)},
     0, NULL, NLSR_PJ_FULL},
    {{"rank", NLSR_PARAM_UINT64, "R", NULL, "", 1, (double)(1ull << 40),
      NLSR_BOUND_MIN | NLSR_BOUND_MAX, RUN | PREP | PLAN, NLSR_SCORER_LOWRANK,
      "base rank (instead of --rank-fraction)", OFF(scorer.rank)},
     0, NULL, 0},
    {{"rank-fraction", NLSR_PARAM_DOUBLE, "F", NULL, "1", 0, 1,
      NLSR_BOUND_MIN | NLSR_BOUND_MIN_OPEN | NLSR_BOUND_MAX, RUN | PREP | PLAN, NLSR_SCORER_LOWRANK,
      "base rank as a fraction of min(out, in)", OFF(scorer.rank_fraction)},
     0, NULL, 0},
    {{"rank-reading", NLSR_PARAM_ENUM, "R", reading_names, "paper", 0, 0, 0, RUN | PREP | PLAN,
      NLSR_SCORER_LOWRANK, "how the base rank becomes r (METHOD.md)", OFF(scorer.rank_mode)},
     0, NULL, 0},
    {{"power-iters", NLSR_PARAM_INT, "N", NULL, "2", 0, NLSR_MAX_POWER_ITERS,
      NLSR_BOUND_MIN | NLSR_BOUND_MAX, RUN | PREP | PLAN, NLSR_SCORER_LOWRANK,
      "randomized SVD power iterations", OFF(scorer.power_iters)},
     0, NULL, 0},
    {{"oversample", NLSR_PARAM_UINT64, "N", NULL, "10", 0, (double)(1u << 20),
      NLSR_BOUND_MIN | NLSR_BOUND_MAX, RUN | PREP | PLAN, NLSR_SCORER_LOWRANK,
      "randomized SVD extra range-finder columns", OFF(scorer.oversample)},
     0, NULL, 0},
    {{"exact-svd", NLSR_PARAM_FLAG, NULL, NULL, "false", 0, 0, 0, RUN | PREP | PLAN,
      NLSR_SCORER_LOWRANK, "exact SVD (matrices up to 2^20 elements)", OFF(scorer.exact_svd)},
     0, NULL, 0},
    {{"activations", NLSR_PARAM_PATH, "FILE", NULL, "", 0, 0, 0, RUN | PREP | PLAN, -1,
      "lowrank, wanda: activations per target module (safetensors)", OFF(scorer.activations)},
     0, NULL, 0},
    {{"wanda-select", NLSR_PARAM_ENUM, "MODE", wanda_names, "row", 0, 0, 0, RUN | PREP | PLAN,
      NLSR_SCORER_WANDA, "wanda: a threshold per output row or per matrix",
      OFF(scorer.wanda_select)},
     0, NULL, 0},
};

const size_t nlsr_params_table_len = sizeof nlsr_params_table / sizeof nlsr_params_table[0];

size_t nlsr_param_count(void)
{
    return nlsr_params_table_len;
}

const nlsr_param_info *nlsr_param_info_at(size_t i)
{
    return i < nlsr_params_table_len ? &nlsr_params_table[i].pub : NULL;
}

const nlsr_param_info *nlsr_param_find(const char *name)
{
    for (size_t i = 0; name && i < nlsr_params_table_len; i++)
        if (strcmp(nlsr_params_table[i].pub.name, name) == 0) return &nlsr_params_table[i].pub;
    return NULL;
}

static void *field(nlsr_realign_params *p, size_t off)
{
    return (char *)p + off;
}

static const void *cfield(const nlsr_realign_params *p, size_t off)
{
    return (const char *)p + off;
}

static int say(char *err, size_t n, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int say(char *err, size_t n, const char *fmt, ...)
{
    if (err && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return NLSR_E_USAGE;
}

/* "[0, 1]", "(0, 1]", "at least 1", "finite": the range in messages and the help. */
void nlsr_param_range_text(const nlsr_param_info *in, char *buf, size_t n)
{
    unsigned b = in->bounds;
    if ((b & NLSR_BOUND_MIN) && (b & NLSR_BOUND_MAX))
        snprintf(buf, n, "%c%.17g, %.17g]", b & NLSR_BOUND_MIN_OPEN ? '(' : '[', in->min, in->max);
    else if (b & NLSR_BOUND_MIN)
        snprintf(buf, n, "%s %.17g", b & NLSR_BOUND_MIN_OPEN ? "above" : "at least", in->min);
    else if (b & NLSR_BOUND_MAX)
        snprintf(buf, n, "at most %.17g", in->max);
    else if (b & NLSR_BOUND_FINITE)
        snprintf(buf, n, "finite");
    else
        buf[0] = '\0';
}

/* The one bound check: v is the value as a double (integers below 2^53 exactly). */
static int in_bounds(const nlsr_param_info *in, double v)
{
    unsigned b = in->bounds;
    if ((b & (NLSR_BOUND_FINITE | NLSR_BOUND_MIN | NLSR_BOUND_MAX)) && !isfinite(v)) return 0;
    if ((b & NLSR_BOUND_MIN) && ((b & NLSR_BOUND_MIN_OPEN) ? !(v > in->min) : !(v >= in->min)))
        return 0;
    if ((b & NLSR_BOUND_MAX) && !(v <= in->max)) return 0;
    return 1;
}

static int out_of_bounds(const nlsr_param_info *in, const char *text, char *err, size_t n)
{
    char r[96];
    nlsr_param_range_text(in, r, sizeof r);
    if (in->bounds == NLSR_BOUND_FINITE)
        return say(err, n, "%s must be a finite number, got '%s'", in->name, text);
    return say(err, n, "%s must lie in %s, got '%s'", in->name, r, text);
}

/* The value of a numeric field as a double, for the bound check and messages. */
static double numeric(const nlsr_param_info *in, const nlsr_realign_params *p)
{
    const void *f = cfield(p, in->offset);
    switch (in->type) {
    case NLSR_PARAM_DOUBLE: return *(const double *)f;
    case NLSR_PARAM_UINT64: return (double)*(const uint64_t *)f;
    case NLSR_PARAM_INT: return *(const int *)f;
    default: return 0;
    }
}

static int parse_list(nlsr_realign_params *p, const char *v, char *err, size_t n)
{
    size_t cap = 1, len = strlen(v);
    for (const char *c = v; *c; c++) cap += *c == ',';
    char **block = malloc(cap * sizeof(char *) + len + 1);
    if (!block) return say(err, n, "targets: out of memory");
    char *names = (char *)(block + cap);
    memcpy(names, v, len + 1);
    size_t k = 0;
    for (char *save = NULL, *tok = strtok_r(names, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save))
        if (*tok) block[k++] = tok;
    if (k == 0) {
        free(block);
        return say(err, n, "targets needs a comma-separated list of names, got '%s'", v);
    }
    p->targets = (const char *const *)block;
    p->ntargets = k;
    return 0;
}

int nlsr_params_set(nlsr_realign_params *p, const char *name, const char *v, char *err, size_t n)
{
    const nlsr_param *pp = (const nlsr_param *)nlsr_param_find(name);
    if (!pp) return say(err, n, "unknown parameter '%s'", name ? name : "(null)");
    const nlsr_param_info *in = &pp->pub;
    if (!v) return say(err, n, "%s needs a value", in->name);
    void *f = field(p, in->offset);
    char *end = NULL;
    switch (in->type) {
    case NLSR_PARAM_DOUBLE: {
        errno = 0;
        double d = strtod(v, &end);
        if (end == v || *end || errno == ERANGE || !isfinite(d))
            return say(err, n, "%s needs a number, got '%s'", in->name, v);
        if (!in_bounds(in, d)) return out_of_bounds(in, v, err, n);
        *(double *)f = d;
        return 0;
    }
    case NLSR_PARAM_UINT64:
    case NLSR_PARAM_INT: {
        errno = 0;
        unsigned long long u = strtoull(v, &end, 10);
        if (end == v || *end || errno == ERANGE || v[0] == '-' || v[0] == '+' || v[0] == ' ')
            return say(err, n, "%s needs a non-negative integer, got '%s'", in->name, v);
        if (!in_bounds(in, (double)u) || (in->type == NLSR_PARAM_INT && u > INT32_MAX))
            return out_of_bounds(in, v, err, n);
        if (in->type == NLSR_PARAM_INT) *(int *)f = (int)u;
        else *(uint64_t *)f = u;
        if (pp->offset2) *(uint64_t *)field(p, pp->offset2 - 1) = u;
        return 0;
    }
    case NLSR_PARAM_ENUM:
        for (int i = 0; in->values[i]; i++)
            if (strcmp(in->values[i], v) == 0) {
                *(int *)f = i;
                return 0;
            }
        {
            char names[128] = "";
            for (int i = 0; in->values[i]; i++) {
                size_t l = strlen(names);
                snprintf(names + l, sizeof names - l, "%s%s", i ? "|" : "", in->values[i]);
            }
            return say(err, n, "%s takes %s, not '%s'", in->name, names, v);
        }
    case NLSR_PARAM_FLAG:
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0) *(int *)f = 1;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0) *(int *)f = 0;
        else return say(err, n, "%s takes true or false, not '%s'", in->name, v);
        return 0;
    case NLSR_PARAM_PATH:
        if (!*v) return say(err, n, "%s needs a file name, got ''", in->name);
        *(const char **)f = v;
        return 0;
    case NLSR_PARAM_LIST:
        return parse_list(p, v, err, n);
    }
    return say(err, n, "%s: unknown type", in->name);
}

int nlsr_params_get(const nlsr_realign_params *p, const char *name, char *buf, size_t len)
{
    const nlsr_param_info *in = nlsr_param_find(name);
    if (!in) return NLSR_E_USAGE;
    const void *f = cfield(p, in->offset);
    int w = 0;
    switch (in->type) {
    case NLSR_PARAM_DOUBLE: {
        /* The shortest text that reads back as the same double (0.9, not 0.90000000000000002). */
        double d = *(const double *)f;
        for (int prec = 15; prec <= 17; prec++) {
            w = snprintf(buf, len, "%.*g", prec, d);
            if (w < 0 || (size_t)w >= len || strtod(buf, NULL) == d) break;
        }
        break;
    }
    case NLSR_PARAM_UINT64: w = snprintf(buf, len, "%" PRIu64, *(const uint64_t *)f); break;
    case NLSR_PARAM_INT: w = snprintf(buf, len, "%d", *(const int *)f); break;
    case NLSR_PARAM_FLAG: w = snprintf(buf, len, "%s", *(const int *)f ? "true" : "false"); break;
    case NLSR_PARAM_ENUM: {
        int i = *(const int *)f, k = 0;
        while (in->values[k] && k < i) k++;
        w = snprintf(buf, len, "%s", k == i && in->values[k] ? in->values[k] : "?");
        break;
    }
    case NLSR_PARAM_PATH: {
        const char *s = *(const char *const *)f;
        w = snprintf(buf, len, "%s", s ? s : "");
        break;
    }
    case NLSR_PARAM_LIST: {
        if (!p->targets) {
            w = snprintf(buf, len, "%s", in->def);
            break;
        }
        size_t used = 0;
        if (len) buf[0] = '\0';
        for (size_t i = 0; i < p->ntargets; i++) {
            int k = snprintf(buf + (used < len ? used : len), used < len ? len - used : 0,
                             "%s%s", i ? "," : "", p->targets[i]);
            used += (size_t)k;
        }
        w = (int)used;
        break;
    }
    }
    return w < 0 || (size_t)w >= len ? -ENOSPC : 0;
}

int nlsr_params_check(const nlsr_realign_params *p, char *err, size_t n)
{
    for (size_t i = 0; i < nlsr_params_table_len; i++) {
        const nlsr_param_info *in = &nlsr_params_table[i].pub;
        if (in->type == NLSR_PARAM_ENUM) {
            int v = *(const int *)cfield(p, in->offset), k = 0;
            while (in->values[k]) k++;
            if (v < 0 || v >= k) return say(err, n, "%s: unknown value %d", in->name, v);
            continue;
        }
        if (in->type != NLSR_PARAM_DOUBLE && in->type != NLSR_PARAM_UINT64 &&
            in->type != NLSR_PARAM_INT)
            continue;
        /* The rank fraction is only read when no rank is given (nlsr_scorer_params). */
        if (in->offset == OFF(scorer.rank) && p->scorer.rank == 0) continue;
        if (in->offset == OFF(scorer.rank_fraction) && p->scorer.rank != 0) continue;
        double v = numeric(in, p);
        if (!in_bounds(in, v)) {
            char t[40];
            snprintf(t, sizeof t, "%.17g", v);
            return out_of_bounds(in, t, err, n);
        }
    }
    if (p->targets && p->ntargets == 0) return say(err, n, "targets: an empty list");
    return 0;
}

int nlsr_params_validate(const nlsr_realign_params *p, nlsr_err *e)
{
    char msg[256];
    int rc = nlsr_params_check(p, msg, sizeof msg);
    return rc ? nlsr_fail(e, rc, "%s", msg) : 0;
}

int nlsr_param_check_value(const char *name, double v, nlsr_err *e)
{
    const nlsr_param_info *in = nlsr_param_find(name);
    if (!in || in_bounds(in, v)) return 0;
    char t[40], msg[256];
    snprintf(t, sizeof t, "%.17g", v);
    return nlsr_fail(e, out_of_bounds(in, t, msg, sizeof msg), "%s", msg);
}
