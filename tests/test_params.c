/* SPDX-License-Identifier: Apache-2.0 */
/* The parameters table (nlsr.h, src/common/params.h): its defaults are the struct's, every
 * bound refuses the value just outside with one line naming the parameter and the value and
 * accepts the bound itself, the check catches fields set directly, params -> JSON -> params
 * gives the same values, and a job's report holds the parameters it was given. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/common/params.h"
#include "nlsr.h"
#include "test.h"

static int one_line(const char *s)
{
    return s[0] && !strchr(s, '\n');
}

/* The table's default text, parsed, is the field NLSR_REALIGN_PARAMS_DEFAULT holds. */
static void test_defaults_agree(void)
{
    ASSERT_TRUE(nlsr_param_count() >= 20);
    for (size_t i = 0; i < nlsr_param_count(); i++) {
        const nlsr_param_info *in = nlsr_param_info_at(i);
        ASSERT_TRUE(in->name && in->help && in->def && in->jobs);
        ASSERT_TRUE(nlsr_param_find(in->name) == in);
        if (!in->def[0] || in->type == NLSR_PARAM_LIST) continue;
        nlsr_realign_params d = NLSR_REALIGN_PARAMS_DEFAULT, p = d;
        char err[256], a[128], b[128];
        ASSERT_EQ_I(nlsr_params_set(&p, in->name, in->def, err, sizeof err), 0);
        for (size_t k = 0; k < nlsr_param_count(); k++) {
            const char *n = nlsr_param_info_at(k)->name;
            ASSERT_EQ_I(nlsr_params_get(&p, n, a, sizeof a), 0);
            ASSERT_EQ_I(nlsr_params_get(&d, n, b, sizeof b), 0);
            if (strcmp(a, b) != 0)
                FAILF("%s: default '%s' is not the struct's (%s: %s, %s)", in->name, in->def, n, a, b);
        }
    }
    ASSERT_TRUE(nlsr_param_info_at(nlsr_param_count()) == NULL);
    ASSERT_TRUE(nlsr_param_find("no-such") == NULL);
}

static void expect_refused(const char *name, const char *v)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT, d = p;
    char err[256] = "";
    if (nlsr_params_set(&p, name, v, err, sizeof err) != NLSR_E_USAGE) {
        FAILF("%s = '%s' accepted", name, v);
        return;
    }
    ASSERT_TRUE(one_line(err));
    ASSERT_CONTAINS(err, name);
    ASSERT_CONTAINS(err, v);
    char a[128], b[128]; /* nothing changed */
    ASSERT_EQ_I(nlsr_params_get(&p, name, a, sizeof a), 0);
    ASSERT_EQ_I(nlsr_params_get(&d, name, b, sizeof b), 0);
    ASSERT_STR_EQ(a, b);
}

static void expect_accepted(const char *name, const char *v, double want)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    char err[256] = "", back[64];
    if (nlsr_params_set(&p, name, v, err, sizeof err) != 0) {
        FAILF("%s = '%s' refused: %s", name, v, err);
        return;
    }
    ASSERT_EQ_I(nlsr_params_get(&p, name, back, sizeof back), 0);
    ASSERT_NEAR(strtod(back, NULL), want, 0);
}

/* Every bounded numeric parameter: the bound accepted, just outside refused. */
static void test_bounds(void)
{
    size_t bounded = 0;
    for (size_t i = 0; i < nlsr_param_count(); i++) {
        const nlsr_param_info *in = nlsr_param_info_at(i);
        char v[64];
        int integer = in->type == NLSR_PARAM_UINT64 || in->type == NLSR_PARAM_INT;
        if (in->bounds & NLSR_BOUND_MIN) {
            bounded++;
            double lo = in->min, below = integer ? lo - 1 : nextafter(lo, -INFINITY);
            snprintf(v, sizeof v, "%.17g", lo);
            if (in->bounds & NLSR_BOUND_MIN_OPEN) {
                expect_refused(in->name, v);
                double just = lo + (in->max - lo) * 1e-9;
                snprintf(v, sizeof v, "%.17g", just);
                expect_accepted(in->name, v, just);
            } else {
                expect_accepted(in->name, v, lo);
                snprintf(v, sizeof v, "%.17g", below);
                expect_refused(in->name, v);
            }
        }
        if (in->bounds & NLSR_BOUND_MAX) {
            bounded++;
            double hi = in->max, above = integer ? hi + 1 : nextafter(hi, INFINITY);
            snprintf(v, sizeof v, "%.17g", hi);
            expect_accepted(in->name, v, hi);
            snprintf(v, sizeof v, "%.17g", above);
            expect_refused(in->name, v);
        }
        if (in->type == NLSR_PARAM_DOUBLE) {
            expect_refused(in->name, "inf");
            expect_refused(in->name, "nan");
            expect_refused(in->name, "0.5x");
        }
        if (integer) {
            expect_refused(in->name, "-1");
            expect_refused(in->name, "1.5");
        }
        if (in->type == NLSR_PARAM_ENUM) {
            for (int k = 0; in->values[k]; k++) {
                nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
                char err[256], back[64];
                ASSERT_EQ_I(nlsr_params_set(&p, in->name, in->values[k], err, sizeof err), 0);
                ASSERT_EQ_I(nlsr_params_get(&p, in->name, back, sizeof back), 0);
                ASSERT_STR_EQ(back, in->values[k]);
            }
            expect_refused(in->name, "bogus");
        }
    }
    ASSERT_TRUE(bounded >= 8); /* sparsity, rank, rank-fraction, power-iters, oversample */
    expect_refused("sparsity", "1.0000001");
    expect_refused("targets", ",,");
    /* The seed is the selection's and the randomized SVD's. */
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    char err[256];
    ASSERT_EQ_I(nlsr_params_set(&p, "seed", "18446744073709551615", err, sizeof err), 0);
    ASSERT_TRUE(p.select.seed == UINT64_MAX && p.scorer.seed == UINT64_MAX);
    ASSERT_EQ_I(nlsr_params_set(&p, "nope", "1", err, sizeof err), NLSR_E_USAGE);
}

/* Fields set directly (library callers) meet the same bounds in nlsr_params_check. */
static void test_check(void)
{
    char err[256];
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), 0);
    p.sparsity = 1.5;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), NLSR_E_USAGE);
    ASSERT_CONTAINS(err, "sparsity");
    ASSERT_CONTAINS(err, "1.5");
    ASSERT_TRUE(one_line(err));
    p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.beta = NAN;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), NLSR_E_USAGE);
    ASSERT_CONTAINS(err, "beta");
    p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.scorer.power_iters = 65;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), NLSR_E_USAGE);
    ASSERT_CONTAINS(err, "power-iters");
    p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = (nlsr_select_mode)9;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), NLSR_E_USAGE);
    ASSERT_CONTAINS(err, "select");
    /* rank 0 means "use the fraction": not out of bounds; then the fraction is checked. */
    p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.scorer.rank_fraction = 0;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), NLSR_E_USAGE);
    ASSERT_CONTAINS(err, "rank-fraction");
    p.scorer.rank = 5;
    ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), 0);
    /* A job refuses them the same way, before touching any file. */
    nlsr_ctx *ctx = nlsr_ctx_create();
    p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.sparsity = -0.25;
    ASSERT_EQ_I(nlsr_run(ctx, "/nonexistent/b", "/nonexistent/a", NULL, "/nonexistent/t",
                         "/nonexistent/o", &p),
                NLSR_E_USAGE);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "sparsity must lie in [0, 1], got '-0.25'");
    nlsr_ctx_free(ctx);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double uni(double lo, double hi)
{
    return lo + (hi - lo) * (double)(next() >> 11) / 9007199254740992.0;
}

static const char *const names[] = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "lm_head"};

/* Random in-bound values for every parameter the report's JSON holds. */
static void random_params(nlsr_realign_params *p, const char **tg)
{
    *p = NLSR_REALIGN_PARAMS_DEFAULT;
    p->beta = uni(-5, 5);
    p->sparsity = next() % 4 ? uni(0, 1) : (double)(next() % 2);
    p->select.mode = (nlsr_select_mode)(next() % 4);
    p->select.semantics = (nlsr_semantics)(next() % 2);
    p->select.prune_rate = uni(0, 1);
    p->select.epsilon = uni(-1, 1);
    p->select.tau = uni(-1, 1);
    p->select.seed = next() % 3 ? next() % 1000 : next(); /* strings above 2^53 */
    p->scorer.seed = p->select.seed;
    p->amplify = (nlsr_amplify_mode)(next() % 2);
    p->alpha = uni(0, 3);
    size_t n = 1 + next() % 6;
    for (size_t i = 0; i < n; i++) tg[i] = names[next() % 6];
    p->targets = tg;
    p->ntargets = n;
    p->scorer.kind = (nlsr_scorer_kind)(next() % 3);
    if (p->scorer.kind == NLSR_SCORER_LOWRANK) {
        if (next() % 2) p->scorer.rank = 1 + next() % 4096;
        else p->scorer.rank_fraction = uni(1e-9, 1);
        p->scorer.rank_mode = (nlsr_rank_mode)(next() % 3);
        p->scorer.power_iters = (int)(next() % 65);
        p->scorer.oversample = next() % ((1u << 20) + 1);
        p->scorer.exact_svd = (int)(next() % 2);
        p->scorer.seed = next();
    } else if (p->scorer.kind == NLSR_SCORER_WANDA) {
        p->scorer.wanda_select = (nlsr_wanda_mode)(next() % 2);
    }
}

static int same_params(const nlsr_realign_params *a, const nlsr_realign_params *b, int lora)
{
    const nlsr_select_params *s = &a->select, *t = &b->select;
    int ok = a->beta == b->beta && a->sparsity == b->sparsity && s->mode == t->mode &&
             s->semantics == t->semantics && s->prune_rate == t->prune_rate &&
             s->epsilon == t->epsilon && s->tau == t->tau && s->seed == t->seed &&
             a->ntargets == b->ntargets;
    for (size_t i = 0; ok && i < a->ntargets; i++) ok = strcmp(a->targets[i], b->targets[i]) == 0;
    if (lora) return ok && a->amplify == b->amplify && a->alpha == b->alpha;
    const nlsr_scorer_params *x = &a->scorer, *y = &b->scorer;
    return ok && x->kind == y->kind && x->rank == y->rank && x->rank_fraction == y->rank_fraction &&
           x->rank_mode == y->rank_mode && x->power_iters == y->power_iters &&
           x->oversample == y->oversample && x->exact_svd == y->exact_svd && x->seed == y->seed &&
           x->activations == y->activations && x->wanda_select == y->wanda_select;
}

/* params -> the report's JSON -> text -> params: the same values, for random ones. */
static void test_json_round_trip(void)
{
    for (int it = 0; it < 300; it++) {
        const char *tg[6];
        nlsr_realign_params p, q = NLSR_REALIGN_PARAMS_DEFAULT;
        random_params(&p, tg);
        char err[256];
        ASSERT_EQ_I(nlsr_params_check(&p, err, sizeof err), 0);
        int lora = it % 2;
        cJSON *o = cJSON_CreateObject();
        ASSERT_EQ_I(nlsr_params_add_json(o, &p, lora ? NLSR_PJ_LORA : NLSR_PJ_FULL), 0);
        char *txt = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        cJSON *back = cJSON_Parse(txt);
        nlsr_err e = {0, ""};
        ASSERT_EQ_I(nlsr_params_from_json(back, &q, "round-trip", &e), 0);
        if (!same_params(&p, &q, lora)) FAILF("round trip %d differs: %s", it, txt);
        free((void *)q.targets);
        cJSON_Delete(back);
        free(txt);
        if (test_cur_failed_) return;
    }
    /* Out-of-bounds values in a file are refused, naming the file and the key. */
    cJSON *bad = cJSON_Parse("{\"sparsity\": 2}");
    nlsr_realign_params q = NLSR_REALIGN_PARAMS_DEFAULT;
    nlsr_err e = {0, ""};
    ASSERT_EQ_I(nlsr_params_from_json(bad, &q, "f.json", &e), NLSR_E_FORMAT);
    ASSERT_CONTAINS(e.msg, "f.json");
    ASSERT_CONTAINS(e.msg, "sparsity");
    cJSON_Delete(bad);
}

/* A job's report holds the parameters it ran with, as nlsr_params_set took them. */
static void test_report_params(void)
{
    const char *d = NLSR_TEST_DATA "/hf-tiny-llama";
    char tmp[] = "/tmp/nlsr-test-params-XXXXXX";
    ASSERT_TRUE(mkdtemp(tmp) != NULL);
    char out[512], rep[512], base[512], al[512], ft[512], cmd[600];
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(rep, sizeof rep, "%s/report.json", tmp);
    snprintf(base, sizeof base, "%s/sft", d);
    snprintf(al, sizeof al, "%s/aligned", d);
    snprintf(ft, sizeof ft, "%s/finetuned", d);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    static const char *const set[][2] = {{"sparsity", "0.35"}, {"beta", "1.25"},
                                         {"select", "threshold"}, {"tau", "0.75"},
                                         {"seed", "7"}, {"targets", "q_proj,v_proj"}};
    char err[256];
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        ASSERT_EQ_I(nlsr_params_set(&p, set[i][0], set[i][1], err, sizeof err), 0);
    p.report_path = rep;
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    int rc = nlsr_run(ctx, base, al, NULL, ft, out, &p);
    if (rc != 0) FAILF("run: %s", nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    FILE *f = fopen(rep, "r");
    ASSERT_TRUE(f != NULL);
    char *txt = calloc(1, 1 << 20);
    size_t n = f ? fread(txt, 1, (1 << 20) - 1, f) : 0;
    if (f) fclose(f);
    ASSERT_TRUE(n > 0);
    cJSON *root = cJSON_Parse(txt);
    nlsr_realign_params q = NLSR_REALIGN_PARAMS_DEFAULT;
    nlsr_err e = {0, ""};
    ASSERT_EQ_I(nlsr_params_from_json(cJSON_GetObjectItemCaseSensitive(root, "params"), &q, rep, &e), 0);
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++) {
        char a[256], b[256];
        ASSERT_EQ_I(nlsr_params_get(&q, set[i][0], a, sizeof a), 0);
        ASSERT_EQ_I(nlsr_params_get(&p, set[i][0], b, sizeof b), 0);
        ASSERT_STR_EQ(a, b);
    }
    ASSERT_NEAR(q.sparsity, 0.35, 0);
    free((void *)q.targets);
    free((void *)p.targets);
    cJSON_Delete(root);
    free(txt);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) FAILF("cannot remove %s", tmp);
}

int main(void)
{
    RUN_TEST(test_defaults_agree);
    RUN_TEST(test_bounds);
    RUN_TEST(test_check);
    RUN_TEST(test_json_round_trip);
    RUN_TEST(test_report_params);
    return test_finish();
}
