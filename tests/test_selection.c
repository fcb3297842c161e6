/* SPDX-License-Identifier: Apache-2.0 */
/* The selection rule of METHOD.md step 3 on checkpoints built here, where every similarity,
 * probability and draw is known in advance:
 *
 *  - a module whose masked fine-tuning delta is zero (a frozen layer; full weights and a LoRA
 *    adapter whose B is zero) has similarity exactly 0 in the report, a number and not null,
 *    and threshold mode patches it; a module the alignment did not change has an empty mask;
 *  - tied similarities: the rank order is "similarity descending, ties in module order", so
 *    among tied modules the earlier one counts as the more similar (paper semantics: the
 *    less likely patched);
 *  - a draw exactly equal to its probability is not patched (`u < p`): seeds whose first
 *    draw is exactly 0.5 or 0 are found by inverting splitmix64;
 *  - probabilities are clamped to [0, 1] (prune rates and epsilons beyond the range);
 *  - every probability, draw and decision against test_select.h's independent rule, and every
 *    similarity against a cosine computed here.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "nlsr.h"
#include "test.h"
#include "test_files.h"
#include "test_select.h"
#include "test_st.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"

static char root[4096];

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}

static cJSON *load_json(const char *path)
{
    size_t n = 0;
    unsigned char *t = read_all(path, &n);
    cJSON *j = t ? cJSON_ParseWithLength((const char *)t, n) : NULL;
    free(t);
    return j;
}

/* ---- the constructed checkpoints --------------------------------------------------------- */

/* NM modules model.layers.L.self_attn.q_proj.weight (L < 10, so name order is layer order), F32
 * [4, 5]. Base 0; aligned a_j = (j+1)/8, so e = 1.9 a and, at sparsity 0.8 (k = 16), the mask
 * is elements 17, 18, 19. The fine-tune per module: */
#define NM 7
#define NE 20
enum {
    T_TIED,     /* t = e + (1, -2, 0.5) on the mask: the tied modules share it */
    T_CLOSE,    /* t = e: the most similar */
    T_FROZEN,   /* t = b: masked delta zero */
    T_FAR,      /* t = -e on the mask: similarity -1, the least similar */
    T_UNALIGNED /* aligned = base for this module: empty mask */
};
static const int kinds[NM] = {T_TIED, T_CLOSE, T_TIED, T_FROZEN, T_TIED, T_FAR, T_UNALIGNED};
static char *sb, *sa, *st;     /* base, aligned, fine-tune folders */
static float ev[NM][NE], tv[NM][NE]; /* e (f32, as step 1 computes it) and t per module */

static void module_name(int m, char *buf, size_t cap)
{
    snprintf(buf, cap, "model.layers.%d.self_attn.q_proj.weight", m);
}

static void make_models(void)
{
    static float zero[NE], av[NM][NE];
    static char names[NM][64];
    tst_tensor b[NM], a[NM], t[NM];
    const float tie[3] = {1.0f, -2.0f, 0.5f};
    for (int m = 0; m < NM; m++) {
        module_name(m, names[m], sizeof names[m]);
        for (int j = 0; j < NE; j++) {
            av[m][j] = kinds[m] == T_UNALIGNED ? 0.0f : (float)(j + 1) / 8.0f;
            ev[m][j] = av[m][j] + 0.9f * (av[m][j] - 0.0f);
            tv[m][j] = kinds[m] == T_FROZEN ? 0.0f : kinds[m] == T_UNALIGNED ? 0.25f : ev[m][j];
            if (j >= 17 && kinds[m] == T_TIED) tv[m][j] = ev[m][j] + tie[j - 17];
            if (j >= 17 && kinds[m] == T_FAR) tv[m][j] = -ev[m][j];
        }
        b[m] = (tst_tensor){names[m], NLSR_DTYPE_F32, 2, {4, 5, 0}, zero};
        a[m] = (tst_tensor){names[m], NLSR_DTYPE_F32, 2, {4, 5, 0}, av[m]};
        t[m] = (tst_tensor){names[m], NLSR_DTYPE_F32, 2, {4, 5, 0}, tv[m]};
    }
    tst_write_dir(sb, b, NM);
    tst_write_dir(sa, a, NM);
    tst_write_dir(st, t, NM);
}

/* The similarity METHOD.md defines, computed here: cosine of the masked deltas (mask: score
 * strictly above the k-th smallest), sums in double in element order, 0 for a zero norm. */
static double expected_sim(int m, int *mask_count)
{
    float s[NE], sorted[NE];
    for (int j = 0; j < NE; j++) sorted[j] = s[j] = fabsf(ev[m][j] - 0.0f);
    for (int i = 1; i < NE; i++)
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            float x = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = x;
        }
    long k = (long)((double)NE * 0.8);
    double dot = 0, nx = 0, ny = 0;
    *mask_count = 0;
    for (int j = 0; j < NE; j++) {
        if (!(s[j] > sorted[k])) continue;
        (*mask_count)++;
        double x = (double)(tv[m][j] - 0.0f), y = (double)(ev[m][j] - 0.0f);
        dot += x * y;
        nx += x * x;
        ny += y * y;
    }
    return nx == 0 || ny == 0 ? 0.0 : dot / (sqrt(nx) * sqrt(ny));
}

/* ---- splitmix64 inverted ------------------------------------------------------------------- */

static uint64_t inv_odd(uint64_t c)
{
    uint64_t x = c; /* Newton: each step doubles the correct low bits (3 -> 96) */
    for (int i = 0; i < 5; i++) x *= 2 - c * x;
    return x;
}

static uint64_t unxorshift(uint64_t z, int s)
{
    uint64_t x = z;
    for (int i = 0; i < 64 / s + 1; i++) x = z ^ (x >> s);
    return x;
}

/* The seed whose first splitmix64 output is x. */
static uint64_t seed_for_first(uint64_t x)
{
    uint64_t z = unxorshift(x, 31);
    z *= inv_odd(0x94D049BB133111EBull);
    z = unxorshift(z, 27);
    z *= inv_odd(0xBF58476D1CE4E5B9ull);
    z = unxorshift(z, 30);
    return z - 0x9E3779B97F4A7C15ull;
}

/* ---- running ----------------------------------------------------------------------------- */

typedef struct mod {
    int is_num_sim, mask_count, patched, has_p;
    double sim, p, draw;
} mod;

/* nlsr_run over the constructed models with p; the report's modules into out[NM]. */
static int run_sel(const nlsr_realign_params *p0, const char *tag, mod *out)
{
    nlsr_realign_params p = *p0;
    char *o = wpath(tag), *rep = NULL;
    if (asprintf(&rep, "%s.json", o) < 0) abort();
    p.report_path = rep;
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    int rc = nlsr_run(ctx, sb, sa, NULL, st, o, &p);
    if (rc != 0) FAILF("%s: %s", tag, nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    cJSON *j = rc == 0 ? load_json(rep) : NULL;
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "modules");
    int n = 0;
    for (const cJSON *m = ms ? ms->child : NULL; m && n < NM; m = m->next, n++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "similarity");
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(m, "probability");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(m, "draw");
        char name[64];
        module_name(n, name, sizeof name);
        ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring, name);
        out[n].is_num_sim = cJSON_IsNumber(s);
        out[n].sim = cJSON_IsNumber(s) ? s->valuedouble : NAN;
        out[n].mask_count = (int)cJSON_GetObjectItemCaseSensitive(m, "mask_count")->valuedouble;
        out[n].patched = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched"));
        out[n].has_p = cJSON_IsNumber(pr) && cJSON_IsNumber(d);
        out[n].p = cJSON_IsNumber(pr) ? pr->valuedouble : NAN;
        out[n].draw = cJSON_IsNumber(d) ? d->valuedouble : NAN;
    }
    if (n != NM) FAILF("%s: %d modules in the report, not %d", tag, n, NM);
    cJSON_Delete(j);
    (void)nlsr_tree_remove(o);
    free(o);
    free(rep);
    return n == NM ? 0 : -1;
}

/* The report's adaptive numbers are the independent rule's, exactly. */
static void check_adaptive(const nlsr_realign_params *p, const mod *m, const char *tag)
{
    double sim[NM], pr[NM], dr[NM];
    int pa[NM];
    for (int i = 0; i < NM; i++) sim[i] = m[i].sim;
    ref_select(sim, NM, p->select.semantics == NLSR_SEMANTICS_AUTHORS, p->select.prune_rate,
               p->select.epsilon, p->select.seed, pr, dr, pa);
    for (int i = 0; i < NM; i++) {
        ASSERT_TRUE(m[i].has_p);
        if (!(m[i].p == pr[i] && m[i].draw == dr[i] && m[i].patched == pa[i]))
            FAILF("%s: module %d: p %.17g draw %.17g patched %d, expected %.17g %.17g %d", tag, i,
                  m[i].p, m[i].draw, m[i].patched, pr[i], dr[i], pa[i]);
        ASSERT_TRUE(m[i].p >= 0.0 && m[i].p <= 1.0);
    }
}

/* ---- the tests ------------------------------------------------------------------------------ */

/* Similarities as computed here; the frozen module's exactly 0 (a number, not null). */
static void test_similarities(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    mod m[NM];
    if (run_sel(&p, "sims", m) != 0) return;
    for (int i = 0; i < NM; i++) {
        int count = 0;
        double s = expected_sim(i, &count);
        ASSERT_TRUE(m[i].is_num_sim);
        ASSERT_EQ_I(m[i].mask_count, count);
        ASSERT_EQ_D(m[i].sim, s);
    }
    ASSERT_EQ_I(m[0].mask_count, 3);
    ASSERT_EQ_D(m[3].sim, 0.0); /* frozen */
    ASSERT_TRUE(!signbit(m[3].sim));
    ASSERT_EQ_I(m[6].mask_count, 0); /* not aligned: nothing to transplant */
    ASSERT_EQ_D(m[6].sim, 0.0);
    ASSERT_NEAR(m[1].sim, 1.0, 1e-15);
    ASSERT_NEAR(m[5].sim, -1.0, 1e-15);
    ASSERT_EQ_D(m[0].sim, m[2].sim); /* tied, bit for bit */
    ASSERT_EQ_D(m[0].sim, m[4].sim);
    ASSERT_TRUE(m[0].sim > 0.0 && m[0].sim < m[1].sim - 1e-3);
    check_adaptive(&p, m, "default");
}

/* Threshold mode patches the frozen module (0 < tau) and the far one, not the others; its
 * probabilities and draws are null. The frozen module's output is e under its mask. */
static void test_threshold_frozen(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = NLSR_SELECT_THRESHOLD;
    char *o = wpath("thr"), *rep = wpath("thr.json");
    p.report_path = rep;
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    ASSERT_EQ_I(nlsr_run(ctx, sb, sa, NULL, st, o, &p), 0);
    nlsr_ctx_free(ctx);
    cJSON *j = load_json(rep);
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "modules");
    int i = 0;
    for (const cJSON *m = ms ? ms->child : NULL; m; m = m->next, i++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "similarity");
        ASSERT_TRUE(cJSON_IsNumber(s));
        ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(m, "probability")));
        ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(m, "draw")));
        int want = kinds[i] == T_FROZEN || kinds[i] == T_FAR || kinds[i] == T_UNALIGNED;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched")) != want)
            FAILF("module %d (similarity %.17g): patched should be %d", i, s->valuedouble, want);
    }
    ASSERT_EQ_I(i, NM);
    /* The frozen module's bytes: its values with e on the mask (elements 17-19). */
    nlsr_ckpt *ck = NULL;
    ctx = nlsr_ctx_create();
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, o, &ck), 0);
    char name[64];
    module_name(3, name, sizeof name);
    size_t idx = 0;
    double got[NE];
    if (ck && nlsr_ckpt_find(ck, name, &idx) == 0 &&
        nlsr_ckpt_read_f64(ctx, ck, idx, 0, NE, got) == 0) {
        for (int e = 0; e < NE; e++)
            if (got[e] != (double)(e >= 17 ? ev[3][e] : tv[3][e]))
                FAILF("frozen module element %d: %.9g", e, got[e]);
    } else {
        FAILF("cannot read %s from the output", name);
    }
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    cJSON_Delete(j);
    free(o);
    free(rep);
}

/* Tied modules 0, 2, 4: "ties in module order" places 0 before 2 before 4 (as more similar).
 * Paper semantics gives them rising probabilities, authors semantics falling ones. */
static void test_ties(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    for (int sem = 0; sem < 2; sem++) {
        p.select.semantics = sem ? NLSR_SEMANTICS_AUTHORS : NLSR_SEMANTICS_PAPER;
        mod m[NM];
        if (run_sel(&p, sem ? "ties_authors" : "ties_paper", m) != 0) return;
        /* Places by similarity: 1 (1.0), tied 0, 2, 4, then 3 and 6 (both 0: module order),
         * 5 (-1). N = 7, so norm = (6 - pos) / 6; paper: pos / 6. */
        const int place[NM] = {1, 0, 2, 4, 3, 6, 5};
        for (int i = 0; i < NM; i++) {
            double norm = (double)(NM - 1 - place[i]) / (double)(NM - 1);
            if (!sem) norm = 1.0 - norm;
            double want = (0.5 - 0.2) + 2.0 * 0.2 * norm;
            if (m[i].p != want)
                FAILF("%s: module %d: p %.17g, expected %.17g (place %d)",
                      sem ? "authors" : "paper", i, m[i].p, want, place[i]);
        }
        if (sem) ASSERT_TRUE(m[0].p > m[2].p && m[2].p > m[4].p);
        else ASSERT_TRUE(m[0].p < m[2].p && m[2].p < m[4].p);
        check_adaptive(&p, m, sem ? "ties, authors" : "ties, paper");
    }
}

/* A first draw of exactly 0.5 with p = 0.5 (prune rate 0.5, epsilon 0) is not patched; one
 * just below 0.5 is. A first draw of exactly 0 with p = 0 is not patched either. */
static void test_draw_equal_p(void)
{
    uint64_t half = seed_for_first(1ull << 63);            /* u = 2^52 * 2^-53 = 0.5 */
    uint64_t below = seed_for_first(((1ull << 52) - 1) << 11); /* u = 0.5 - 2^-53 */
    uint64_t zero = seed_for_first(0);                      /* u = 0 */
    ASSERT_EQ_D(ref_draw(half, 0), 0.5);
    ASSERT_EQ_D(ref_draw(below, 0), 0.5 - 0x1p-53);
    ASSERT_EQ_D(ref_draw(zero, 0), 0.0);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.prune_rate = 0.5;
    p.select.epsilon = 0.0;
    mod m[NM];
    p.select.seed = half;
    if (run_sel(&p, "draw_half", m) != 0) return;
    ASSERT_EQ_D(m[0].draw, 0.5);
    ASSERT_EQ_D(m[0].p, 0.5);
    ASSERT_EQ_I(m[0].patched, 0);
    check_adaptive(&p, m, "draw 0.5");
    p.select.seed = below;
    if (run_sel(&p, "draw_below", m) != 0) return;
    ASSERT_EQ_D(m[0].draw, 0.5 - 0x1p-53);
    ASSERT_EQ_I(m[0].patched, 1);
    check_adaptive(&p, m, "draw below 0.5");
    p.select.seed = zero;
    p.select.prune_rate = 0.0;
    if (run_sel(&p, "draw_zero", m) != 0) return;
    ASSERT_EQ_D(m[0].draw, 0.0);
    ASSERT_EQ_D(m[0].p, 0.0);
    ASSERT_EQ_I(m[0].patched, 0);
    check_adaptive(&p, m, "draw 0");
}

/* Probabilities beyond [0, 1] are clamped: a prune rate of 1.5 patches everything with p = 1,
 * -0.5 nothing with p = 0; epsilon 2 around 0.5 clamps both ends. */
static void test_clamp(void)
{
    const double cases[][2] = {{1.5, 0.2}, {-0.5, 0.2}, {0.5, 2.0}, {0.5, -2.0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
        p.select.prune_rate = cases[c][0];
        p.select.epsilon = cases[c][1];
        for (int sem = 0; sem < 2; sem++) {
            p.select.semantics = sem ? NLSR_SEMANTICS_AUTHORS : NLSR_SEMANTICS_PAPER;
            char tag[64];
            snprintf(tag, sizeof tag, "clamp_%zu_%d", c, sem);
            mod m[NM];
            if (run_sel(&p, tag, m) != 0) return;
            check_adaptive(&p, m, tag);
            int zeros = 0, ones = 0;
            for (int i = 0; i < NM; i++) {
                zeros += m[i].p == 0.0;
                ones += m[i].p == 1.0;
                if (m[i].p == 1.0) ASSERT_EQ_I(m[i].patched, 1);
                if (m[i].p == 0.0) ASSERT_EQ_I(m[i].patched, 0);
            }
            if (c == 0) ASSERT_EQ_I(ones, NM);
            if (c == 1) ASSERT_EQ_I(zeros, NM);
            if (c >= 2) ASSERT_TRUE(zeros >= 2 && ones >= 2);
        }
    }
}

/* A LoRA fine-tune whose one module was frozen (lora_B all zero, as PEFT initializes it):
 * similarity exactly 0, and threshold mode patches it. */
static void test_lora_frozen(void)
{
    const char *frozen = "base_model.model.model.layers.1.self_attn.v_proj";
    char *dir = wpath("lora_frozen"), *file = NULL, *cfg = NULL;
    if (asprintf(&file, "%s/adapter_model.safetensors", dir) < 0 ||
        asprintf(&cfg, "%s/adapter_config.json", dir) < 0)
        abort();
    mkdir(dir, 0755);
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ckpt *ck = NULL;
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, FX "/lora_finetuned", &ck), 0);
    if (!ck) return;
    size_t n = nlsr_ckpt_tensor_count(ck);
    tst_tensor *t = calloc(n, sizeof *t);
    float **v = calloc(n, sizeof *v);
    int zeroed = 0;
    for (size_t i = 0; i < n; i++) {
        nlsr_tensor_info ti;
        nlsr_ckpt_tensor_info(ck, i, &ti);
        ASSERT_EQ_I(ti.dtype, NLSR_DTYPE_F32);
        double *d = malloc(ti.numel * sizeof *d);
        v[i] = malloc(ti.numel * sizeof *v[i]);
        ASSERT_EQ_I(nlsr_ckpt_read_f64(ctx, ck, i, 0, ti.numel, d), 0);
        int z = strncmp(ti.name, frozen, strlen(frozen)) == 0 && strstr(ti.name, ".lora_B.");
        zeroed += z;
        for (uint64_t k = 0; k < ti.numel; k++) v[i][k] = z ? 0.0f : (float)d[k];
        free(d);
        uint64_t cols = ti.ndim > 1 ? ti.shape[1] : 0;
        t[i] = (tst_tensor){ti.name, ti.dtype, ti.ndim, {ti.shape[0], cols, 0}, v[i]};
    }
    ASSERT_EQ_I(zeroed, 1);
    tst_write(file, t, n, "format", "pt");
    nlsr_err e = {0, ""};
    ASSERT_EQ_I(nlsr_copy_file(FX "/lora_finetuned/adapter_config.json", cfg, &e), 0);
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
    free(t);
    nlsr_ckpt_free(ck);
    char *o = wpath("lora_frozen_out"), *rep = wpath("lora_frozen.json");
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = NLSR_SELECT_THRESHOLD;
    p.report_path = rep;
    ASSERT_EQ_I(nlsr_run(ctx, NULL, FX "/lora_align", NULL, dir, o, &p), 0);
    nlsr_ctx_free(ctx);
    cJSON *j = load_json(rep);
    int found = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(j, "modules")) {
        if (strcmp(cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring, frozen) != 0) continue;
        found = 1;
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(m, "similarity");
        ASSERT_TRUE(cJSON_IsNumber(s));
        if (cJSON_IsNumber(s)) {
            ASSERT_EQ_D(s->valuedouble, 0.0);
            ASSERT_TRUE(!signbit(s->valuedouble));
        }
        ASSERT_TRUE(cJSON_GetObjectItemCaseSensitive(m, "mask_count")->valuedouble > 0);
        ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched")));
    }
    ASSERT_TRUE(found);
    cJSON_Delete(j);
    free(o);
    free(rep);
    free(file);
    free(cfg);
    free(dir);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    snprintf(root, sizeof root, "/tmp/nlsr-test-selection-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    sb = wpath("base");
    sa = wpath("aligned");
    st = wpath("finetuned");
    make_models();
    RUN_TEST(test_similarities);
    RUN_TEST(test_threshold_frozen);
    RUN_TEST(test_ties);
    RUN_TEST(test_draw_equal_p);
    RUN_TEST(test_clamp);
    RUN_TEST(test_lora_frozen);
    free(sb);
    free(sa);
    free(st);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
