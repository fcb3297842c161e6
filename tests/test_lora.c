/* SPDX-License-Identifier: Apache-2.0 */
/* LoRA adapters through NLSR, against the authors' own outputs in
 * tests/data/hf-tiny-llama/authors/:
 *
 *  - amplify --amplify authors of lora_align is authors/reference/adapter_model.safetensors,
 *    byte for byte; --amplify paper scales B by (1+beta) in f32 and leaves A alone;
 *  - the magnitude mask at sparsity 0.8 on that reference (or on lora_align amplified) is
 *    authors/mask_bottom_0.8.safetensors, byte for byte (keys <prefix>.lora_A/B.default);
 *  - the similarities agree with authors/adaptive_all/result.json (keyed by the lora_A tensor
 *    name) within 1e-8, and --select all / none give authors/adaptive_all/ and adaptive_none/
 *    byte for byte, through run and through prepare + apply, and with --mask FILE;
 *  - adaptive selection: authors semantics gives probabilities from 0.3 (least similar) to 0.7
 *    (most similar) at the defaults, paper semantics the mirrored ones;
 *  - refusals (r, lora_alpha, target_modules, module sets, factor shapes, mask files with a
 *    wrong shape, a missing key, a stray key or a value other than 0/1) name what differs and
 *    write nothing;
 *  - the Gram kernel equals the direct out x in products.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nlsr.h"
#include "test.h"
#include "test_select.h"
#include "../src/compute/lora_gram.h"
#include "../src/io/safetensors.h"
#include "../src/jobs/lora.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define ALIGN FX "/lora_align"
#define FT FX "/lora_finetuned"
#define AUTH FX "/authors"
#define AUTH_MASK AUTH "/mask_bottom_0.8.safetensors"

static char tmp_root[4096];

/* ---- helpers --------------------------------------------------------------------------------- */

static char *tmp_path(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", tmp_root, name) < 0) abort();
    return p;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    *len = (size_t)n;
    return b;
}

static int write_all(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* 1 if the two files hold the same bytes; prints where they first differ otherwise (unless
 * a difference is what the caller wants: differ()). */
static int same_bytes_(const char *a, const char *b, int verbose)
{
    size_t la = 0, lb = 0;
    unsigned char *x = read_all(a, &la), *y = read_all(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    if (!same && x && y && verbose) {
        size_t i = 0;
        while (i < la && i < lb && x[i] == y[i]) i++;
        fprintf(stderr, "  %s (%zu bytes) and %s (%zu bytes) differ at byte %zu\n", a, la, b, lb,
                i);
    }
    free(x);
    free(y);
    return same;
}

static int same_bytes(const char *a, const char *b)
{
    return same_bytes_(a, b, 1);
}

static int differ(const char *a, const char *b)
{
    return !same_bytes_(a, b, 0);
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* 1 if tmp_root holds nothing whose name contains "nlsr-tmp" (no debris of a refused job). */
static int no_tmp_debris(void)
{
    DIR *d = opendir(tmp_root);
    if (!d) return 0;
    struct dirent *de;
    int clean = 1;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, "nlsr-tmp")) clean = 0;
    closedir(d);
    return clean;
}

static void rm_rf(const char *p)
{
    char *cmd = NULL;
    if (asprintf(&cmd, "rm -rf '%s'", p) < 0) abort();
    if (system(cmd) != 0) fprintf(stderr, "  could not remove %s\n", p);
    free(cmd);
}

static nlsr_ckpt *open_ck(nlsr_ctx *ctx, const char *path)
{
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ckpt_open(ctx, path, &ck);
    if (rc != 0) FAILF("open %s: %s", path, nlsr_ctx_error(ctx));
    return ck;
}

static nlsr_ctx *quiet_ctx(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    if (!ctx) abort();
    nlsr_ctx_set_quiet(ctx, 1);
    return ctx;
}

static cJSON *read_json(const char *path)
{
    size_t n = 0;
    unsigned char *b = read_all(path, &n);
    cJSON *j = b ? cJSON_ParseWithLength((const char *)b, n) : NULL;
    free(b);
    return j;
}

/* The "modules" array of a report, checked to be in bytewise name order. */
static const cJSON *report_modules(const cJSON *rep)
{
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(rep, "modules");
    if (!cJSON_IsArray(mods)) return NULL;
    const char *prev = NULL;
    for (const cJSON *m = mods->child; m; m = m->next) {
        const char *name = cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring;
        if (prev && strcmp(prev, name) >= 0) FAILF("modules out of order: %s, %s", prev, name);
        prev = name;
    }
    return mods;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Copies a PEFT adapter folder, replacing `from` by `to` in its adapter_config.json. */
static char *copy_adapter_edit(const char *src, const char *name, const char *from,
                               const char *to)
{
    char *dir = tmp_path(name), *p = NULL, *q = NULL;
    mkdir(dir, 0755);
    size_t n = 0;
    if (asprintf(&p, "%s/adapter_model.safetensors", src) < 0) abort();
    if (asprintf(&q, "%s/adapter_model.safetensors", dir) < 0) abort();
    unsigned char *b = read_all(p, &n);
    if (!b || write_all(q, b, n) != 0) FAILF("copy %s", p);
    free(b);
    free(p);
    free(q);
    if (asprintf(&p, "%s/adapter_config.json", src) < 0) abort();
    if (asprintf(&q, "%s/adapter_config.json", dir) < 0) abort();
    char *cfg = (char *)read_all(p, &n);
    char *at = cfg ? strstr(cfg, from) : NULL;
    if (!at) FAILF("'%s' not in %s", from, p);
    else {
        char *out = NULL;
        if (asprintf(&out, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from)) < 0) abort();
        if (write_all(q, out, strlen(out)) != 0) FAILF("write %s", q);
        free(out);
    }
    free(cfg);
    free(p);
    free(q);
    return dir;
}

/* Writes an adapter like lora_finetuned but with its tensors filtered/reshaped by `edit`
 * (returning 0 drops a tensor; it may change the rank of the shape), data all zero, and the
 * fine-tuned adapter_config.json. */
static char *synth_adapter(const char *name, int (*edit)(const char *tname, uint64_t *shape))
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *ck = open_ck(ctx, FT);
    char *dir = tmp_path(name), *p = NULL;
    mkdir(dir, 0755);
    size_t n = nlsr_ckpt_tensor_count(ck), k = 0;
    st_wtensor *wt = calloc(n, sizeof *wt);
    uint64_t(*shapes)[2] = calloc(n, sizeof *shapes);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        nlsr_tensor_info ti;
        nlsr_ckpt_tensor_info(ck, i, &ti);
        shapes[k][0] = ti.shape[0];
        shapes[k][1] = ti.shape[1];
        if (!edit(ti.name, shapes[k])) continue;
        wt[k] = (st_wtensor){ti.name, ti.dtype, 2, shapes[k]};
        total += shapes[k][0] * shapes[k][1] * 4;
        k++;
    }
    if (asprintf(&p, "%s/adapter_model.safetensors", dir) < 0) abort();
    nlsr_err e = {0};
    st_writer *w = NULL;
    void *zero = calloc(1, (size_t)total);
    if (st_writer_begin(p, wt, k, NULL, 0, &w, &e) != 0 || st_writer_write(w, zero, total) != 0 ||
        st_writer_commit(w) != 0)
        FAILF("synth %s: %s", name, e.msg);
    free(zero);
    free(p);
    free(shapes);
    free(wt);
    size_t cl = 0;
    unsigned char *cfg = read_all(FT "/adapter_config.json", &cl);
    if (asprintf(&p, "%s/adapter_config.json", dir) < 0) abort();
    if (!cfg || write_all(p, cfg, cl) != 0) FAILF("write %s", p);
    free(cfg);
    free(p);
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    return dir;
}

/* ---- step 1 ---------------------------------------------------------------------------------- */

static void test_amplify_authors_matches_reference(void)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *a = open_ck(ctx, ALIGN);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.amplify = NLSR_AMPLIFY_AUTHORS;
    char *out = tmp_path("ref_authors");
    int rc = a ? nlsr_lora_amplify(ctx, a, out, &p) : -1;
    if (rc != 0) FAILF("amplify: %d %s", rc, nlsr_ctx_error(ctx));
    char *m = NULL, *c = NULL;
    if (asprintf(&m, "%s/adapter_model.safetensors", out) < 0) abort();
    if (asprintf(&c, "%s/adapter_config.json", out) < 0) abort();
    ASSERT_TRUE(same_bytes(m, AUTH "/reference/adapter_model.safetensors"));
    ASSERT_TRUE(same_bytes(c, ALIGN "/adapter_config.json"));
    /* An existing output is refused without force, and replaced with it. */
    rc = nlsr_lora_amplify(ctx, a, out, &p);
    ASSERT_EQ_I(rc, NLSR_E_EXISTS);
    nlsr_ctx_clear_error(ctx);
    p.force = 1;
    ASSERT_EQ_I(nlsr_lora_amplify(ctx, a, out, &p), 0);
    ASSERT_TRUE(same_bytes(m, AUTH "/reference/adapter_model.safetensors"));
    ASSERT_TRUE(no_tmp_debris());
    free(m);
    free(c);
    free(out);
    nlsr_ckpt_free(a);
    nlsr_ctx_free(ctx);
}

static void test_amplify_paper(void)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *a = open_ck(ctx, ALIGN);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT; /* paper, beta 0.9 */
    char *out = tmp_path("ref_paper");
    int rc = a ? nlsr_lora_amplify(ctx, a, out, &p) : -1;
    if (rc != 0) FAILF("amplify: %d %s", rc, nlsr_ctx_error(ctx));
    nlsr_ckpt *e = rc == 0 ? open_ck(ctx, out) : NULL;
    if (e) {
        ASSERT_EQ_I(nlsr_ckpt_get_kind(e), NLSR_CKPT_PEFT);
        ASSERT_EQ_U(nlsr_ckpt_tensor_count(e), nlsr_ckpt_tensor_count(a));
        float g = (float)(1.0 + 0.9);
        size_t bad = 0, checked = 0;
        for (size_t i = 0; i < nlsr_ckpt_tensor_count(a); i++) {
            nlsr_tensor_info ti;
            nlsr_ckpt_tensor_info(a, i, &ti);
            double *x = malloc(ti.numel * sizeof *x), *y = malloc(ti.numel * sizeof *y);
            nlsr_ckpt_read_f64(ctx, a, i, 0, ti.numel, x);
            nlsr_ckpt_read_f64(ctx, e, i, 0, ti.numel, y);
            int is_b = strstr(ti.name, ".lora_B.") != NULL;
            for (uint64_t k = 0; k < ti.numel; k++) {
                float want = is_b ? g * (float)x[k] : (float)x[k];
                bad += (float)y[k] != want;
                checked++;
            }
            free(x);
            free(y);
        }
        ASSERT_EQ_U(bad, 0);
        ASSERT_TRUE(checked > 10000);
    }
    nlsr_ckpt_free(e);
    free(out);
    nlsr_ckpt_free(a);
    nlsr_ctx_free(ctx);
}

/* ---- step 2 ---------------------------------------------------------------------------------- */

static void test_mask_matches_authors(void)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *ref = open_ck(ctx, AUTH "/reference");
    nlsr_ckpt *a = open_ck(ctx, ALIGN);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT; /* sparsity 0.8 */
    char *m1 = tmp_path("mask_ref.safetensors"), *m2 = tmp_path("mask_aligned.safetensors");
    int rc = ref ? nlsr_lora_write_mask(ctx, ref, 1, m1, &p) : -1;
    if (rc != 0) FAILF("mask on reference: %d %s", rc, nlsr_ctx_error(ctx));
    ASSERT_TRUE(same_bytes(m1, AUTH_MASK));
    p.amplify = NLSR_AMPLIFY_AUTHORS;
    rc = a ? nlsr_lora_write_mask(ctx, a, 0, m2, &p) : -1;
    if (rc != 0) FAILF("mask on aligned: %d %s", rc, nlsr_ctx_error(ctx));
    ASSERT_TRUE(same_bytes(m2, AUTH_MASK));
    /* sparsity 1: k = n, every mask empty */
    nlsr_ctx *c2 = quiet_ctx();
    char *m3 = tmp_path("mask_empty.safetensors");
    p.sparsity = 1.0;
    ASSERT_EQ_I(nlsr_lora_write_mask(c2, a, 0, m3, &p), 0);
    nlsr_ckpt *mk = open_ck(c2, m3);
    if (mk) {
        double sum = 0;
        for (size_t i = 0; i < nlsr_ckpt_tensor_count(mk); i++) {
            nlsr_tensor_info ti;
            nlsr_ckpt_tensor_info(mk, i, &ti);
            double *v = malloc(ti.numel * sizeof *v);
            nlsr_ckpt_read_f64(c2, mk, i, 0, ti.numel, v);
            for (uint64_t k = 0; k < ti.numel; k++) sum += v[k];
            free(v);
        }
        ASSERT_TRUE(sum == 0.0);
        ASSERT_EQ_U(nlsr_ckpt_tensor_count(mk), 42);
    }
    nlsr_ckpt_free(mk);
    nlsr_ctx_free(c2);
    free(m3);
    free(m1);
    free(m2);
    nlsr_ckpt_free(ref);
    nlsr_ckpt_free(a);
    nlsr_ctx_free(ctx);
}

/* ---- step 3 ---------------------------------------------------------------------------------- */

/* The similarities of a report against the authors' result.json, whose keys are the modules'
 * lora_A tensor names. */
static void check_similarities(const char *report)
{
    cJSON *rep = read_json(report), *res = read_json(AUTH "/adaptive_all/result.json");
    const cJSON *mods = rep ? report_modules(rep) : NULL;
    const cJSON *sims = res ? cJSON_GetObjectItemCaseSensitive(res, "similarities") : NULL;
    if (!mods || !sims) {
        FAILF("cannot read %s or result.json", report);
    } else {
        ASSERT_EQ_I(cJSON_GetArraySize(mods), cJSON_GetArraySize(sims));
        double worst = 0;
        for (const cJSON *m = mods->child; m; m = m->next) {
            const char *name = cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring;
            char *key = NULL;
            if (asprintf(&key, "%s.lora_A.weight", name) < 0) abort();
            const cJSON *want = cJSON_GetObjectItemCaseSensitive(sims, key);
            if (!cJSON_IsNumber(want)) FAILF("result.json has no '%s'", key);
            else {
                double d = fabs(num(m, "similarity") - want->valuedouble);
                if (d > worst) worst = d;
                ASSERT_NEAR(num(m, "similarity"), want->valuedouble, 1e-8);
            }
            free(key);
        }
        ASSERT_TRUE(worst > 0); /* theirs are f32: equal to the bit would be suspicious */
    }
    cJSON_Delete(rep);
    cJSON_Delete(res);
}

static void run_select(const char *src, int is_reference, nlsr_amplify_mode amp,
                       nlsr_select_mode mode, const char *mask, const char *outname,
                       const char *want_dir, int check_sims)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *r = open_ck(ctx, src), *t = open_ck(ctx, FT);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.amplify = amp;
    p.select.mode = mode;
    p.mask_path = mask;
    if (mask) p.sparsity = 0.5; /* ignored: the file's masks decide */
    char *out = tmp_path(outname), *rp = NULL, *mf = NULL, *wf = NULL;
    if (asprintf(&rp, "%s.json", out) < 0) abort();
    p.report_path = rp;
    int rc = r && t ? nlsr_lora_run(ctx, r, is_reference, t, out, &p) : -1;
    if (rc != 0) FAILF("run %s: %d %s", outname, rc, nlsr_ctx_error(ctx));
    if (asprintf(&mf, "%s/adapter_model.safetensors", out) < 0) abort();
    if (asprintf(&wf, "%s/adapter_model.safetensors", want_dir) < 0) abort();
    ASSERT_TRUE(same_bytes(mf, wf));
    free(mf);
    if (asprintf(&mf, "%s/adapter_config.json", out) < 0) abort();
    ASSERT_TRUE(same_bytes(mf, FT "/adapter_config.json"));
    if (check_sims) check_similarities(rp);
    cJSON *rep = read_json(rp);
    const cJSON *mods = rep ? report_modules(rep) : NULL;
    size_t patched = 0, n = 0;
    for (const cJSON *m = mods ? mods->child : NULL; m; m = m->next, n++) {
        patched += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched"));
        ASSERT_TRUE(num(m, "numel") > num(m, "mask_count"));
        ASSERT_TRUE(num(m, "mask_count") > 0);
    }
    ASSERT_EQ_U(n, 21);
    ASSERT_EQ_U(patched, mode == NLSR_SELECT_ALL ? 21 : 0);
    cJSON_Delete(rep);
    free(mf);
    free(wf);
    free(rp);
    free(out);
    nlsr_ckpt_free(r);
    nlsr_ckpt_free(t);
    nlsr_ctx_free(ctx);
}

static void test_run_all_from_reference(void)
{
    run_select(AUTH "/reference", 1, NLSR_AMPLIFY_PAPER, NLSR_SELECT_ALL, NULL, "all_ref",
               AUTH "/adaptive_all", 1);
}

static void test_run_all_from_aligned(void)
{
    run_select(ALIGN, 0, NLSR_AMPLIFY_AUTHORS, NLSR_SELECT_ALL, NULL, "all_aligned",
               AUTH "/adaptive_all", 1);
}

static void test_run_none(void)
{
    run_select(AUTH "/reference", 1, NLSR_AMPLIFY_PAPER, NLSR_SELECT_NONE, NULL, "none_ref",
               AUTH "/adaptive_none", 1);
}

static void test_run_with_mask_file(void)
{
    run_select(AUTH "/reference", 1, NLSR_AMPLIFY_PAPER, NLSR_SELECT_ALL, AUTH_MASK,
               "all_maskfile", AUTH "/adaptive_all", 1);
}

static void test_prepare_apply(void)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *a = open_ck(ctx, ALIGN), *t = open_ck(ctx, FT);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.amplify = NLSR_AMPLIFY_AUTHORS;
    char *pf = tmp_path("lora.nlsrp"), *mo = tmp_path("prep_mask.safetensors");
    char *rp = tmp_path("prepare.json");
    p.mask_out_path = mo;
    p.report_path = rp;
    int rc = a ? nlsr_lora_prepare(ctx, a, 0, pf, &p) : -1;
    if (rc != 0) FAILF("prepare: %d %s", rc, nlsr_ctx_error(ctx));
    ASSERT_TRUE(same_bytes(mo, AUTH_MASK));
    cJSON *rep = read_json(rp);
    const cJSON *sum = rep ? cJSON_GetObjectItemCaseSensitive(rep, "summary") : NULL;
    ASSERT_TRUE(num(sum, "patch_bytes") > 0);
    ASSERT_EQ_D(num(sum, "modules"), 21);
    cJSON_Delete(rep);
    /* apply: all and none */
    nlsr_realign_params q = NLSR_REALIGN_PARAMS_DEFAULT;
    const struct {
        nlsr_select_mode mode;
        const char *out, *want;
    } cases[] = {{NLSR_SELECT_ALL, "apply_all", AUTH "/adaptive_all/adapter_model.safetensors"},
                 {NLSR_SELECT_NONE, "apply_none",
                  AUTH "/adaptive_none/adapter_model.safetensors"}};
    for (size_t i = 0; i < 2 && rc == 0; i++) {
        q.select.mode = cases[i].mode;
        char *out = tmp_path(cases[i].out), *mf = NULL, *rj = NULL;
        if (asprintf(&rj, "%s.json", out) < 0) abort();
        q.report_path = rj;
        rc = t ? nlsr_lora_apply(ctx, pf, t, out, &q) : -1;
        if (rc != 0) FAILF("apply: %d %s", rc, nlsr_ctx_error(ctx));
        if (asprintf(&mf, "%s/adapter_model.safetensors", out) < 0) abort();
        ASSERT_TRUE(same_bytes(mf, cases[i].want));
        check_similarities(rj);
        free(rj);
        free(mf);
        free(out);
    }
    /* apply refuses --mask: the patches file holds its masks */
    nlsr_ctx *c2 = quiet_ctx();
    q.mask_path = AUTH_MASK;
    char *out = tmp_path("apply_mask");
    ASSERT_EQ_I(nlsr_lora_apply(c2, pf, t, out, &q), NLSR_E_USAGE);
    ASSERT_TRUE(!exists(out));
    free(out);
    nlsr_ctx_free(c2);
    free(rp);
    free(mo);
    free(pf);
    nlsr_ckpt_free(a);
    nlsr_ckpt_free(t);
    nlsr_ctx_free(ctx);
}

/* prepare with --targets q_proj records them: apply (given the defaults) realigns the same three
 * modules as run with --targets q_proj, byte for byte. */
static void test_prepare_apply_targets(void)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *r = open_ck(ctx, AUTH "/reference"), *t = open_ck(ctx, FT);
    static const char *const q[] = {"q_proj"};
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.targets = q;
    p.ntargets = 1;
    p.select.mode = NLSR_SELECT_ALL;
    char *pf = tmp_path("q.nlsrp"), *o1 = tmp_path("q_run"), *o2 = tmp_path("q_apply");
    char *rj = tmp_path("q_apply.json");
    ASSERT_EQ_I(r && t ? nlsr_lora_run(ctx, r, 1, t, o1, &p) : -1, 0);
    ASSERT_EQ_I(r ? nlsr_lora_prepare(ctx, r, 1, pf, &p) : -1, 0);
    nlsr_realign_params d = NLSR_REALIGN_PARAMS_DEFAULT;
    d.select.mode = NLSR_SELECT_ALL;
    d.report_path = rj;
    int rc = t ? nlsr_lora_apply(ctx, pf, t, o2, &d) : -1;
    if (rc != 0) FAILF("apply: %d %s", rc, nlsr_ctx_error(ctx));
    char *f1 = NULL, *f2 = NULL;
    if (asprintf(&f1, "%s/adapter_model.safetensors", o1) < 0) abort();
    if (asprintf(&f2, "%s/adapter_model.safetensors", o2) < 0) abort();
    ASSERT_TRUE(same_bytes(f1, f2));
    ASSERT_TRUE(differ(f1, FT "/adapter_model.safetensors"));
    cJSON *rep = read_json(rj);
    const cJSON *mods = rep ? report_modules(rep) : NULL;
    ASSERT_EQ_I(mods ? cJSON_GetArraySize(mods) : -1, 3);
    for (const cJSON *m = mods ? mods->child : NULL; m; m = m->next)
        ASSERT_CONTAINS(cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring, "q_proj");
    cJSON_Delete(rep);
    free(f1);
    free(f2);
    free(rj);
    free(pf);
    free(o1);
    free(o2);
    nlsr_ckpt_free(r);
    nlsr_ckpt_free(t);
    nlsr_ctx_free(ctx);
}

/* Adaptive selection: per module p = clamp(0.3 + 0.4 * norm); authors semantics: the most
 * similar module 0.7, the least 0.3; paper semantics: 1 - that. */
static void test_semantics(void)
{
    double pa[64] = {0}, pp[64] = {0}, sim[64] = {0};
    size_t n = 0;
    for (int sem = 0; sem < 2; sem++) {
        nlsr_ctx *ctx = quiet_ctx();
        nlsr_ckpt *r = open_ck(ctx, AUTH "/reference"), *t = open_ck(ctx, FT);
        nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
        p.select.semantics = sem ? NLSR_SEMANTICS_AUTHORS : NLSR_SEMANTICS_PAPER;
        char *out = tmp_path(sem ? "adaptive_authors" : "adaptive_paper"), *rp = NULL;
        if (asprintf(&rp, "%s.json", out) < 0) abort();
        p.report_path = rp;
        int rc = r && t ? nlsr_lora_run(ctx, r, 1, t, out, &p) : -1;
        if (rc != 0) FAILF("run: %d %s", rc, nlsr_ctx_error(ctx));
        cJSON *rep = read_json(rp);
        const cJSON *mods = rep ? report_modules(rep) : NULL;
        n = 0;
        double draw[64];
        int patched[64];
        for (const cJSON *m = mods ? mods->child : NULL; m && n < 64; m = m->next, n++) {
            (sem ? pa : pp)[n] = num(m, "probability");
            sim[n] = num(m, "similarity");
            draw[n] = num(m, "draw");
            patched[n] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched"));
        }
        ASSERT_EQ_U(n, 21);
        /* Probabilities from the similarities' ranks, splitmix64 draws of seed 42 and the
         * decisions, by test_select.h's independent rule (the similarities themselves are
         * checked against the authors' result.json by check_similarities). */
        double xp[64], xd[64];
        int xpa[64];
        ref_select(sim, n, sem, 0.5, 0.2, 42, xp, xd, xpa);
        for (size_t i = 0; i < n; i++) {
            ASSERT_EQ_D((sem ? pa : pp)[i], xp[i]);
            ASSERT_EQ_D(draw[i], xd[i]);
            ASSERT_EQ_I(patched[i], xpa[i]);
        }
        cJSON_Delete(rep);
        free(rp);
        free(out);
        nlsr_ckpt_free(r);
        nlsr_ckpt_free(t);
        nlsr_ctx_free(ctx);
    }
    size_t hi = 0, lo = 0;
    double mn = 1, mx = 0;
    for (size_t i = 0; i < n; i++) {
        if (sim[i] > sim[hi]) hi = i;
        if (sim[i] < sim[lo]) lo = i;
        if (pa[i] < mn) mn = pa[i];
        if (pa[i] > mx) mx = pa[i];
        ASSERT_NEAR(pa[i] + pp[i], 1.0, 1e-12);
    }
    ASSERT_NEAR(mn, 0.3, 1e-12);
    ASSERT_NEAR(mx, 0.7, 1e-12);
    ASSERT_NEAR(pa[hi], 0.7, 1e-12);
    ASSERT_NEAR(pa[lo], 0.3, 1e-12);
    ASSERT_NEAR(pp[hi], 0.3, 1e-12);
    ASSERT_NEAR(pp[lo], 0.7, 1e-12);
}

/* ---- refusals -------------------------------------------------------------------------------- */

/* Runs the reference against `ft_dir` (with `mask` if given) and expects `code` with a message
 * holding `needle`, and no output. */
static void expect_refusal(const char *ft_dir, const char *mask, int code, const char *needle)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *r = open_ck(ctx, AUTH "/reference"), *t = open_ck(ctx, ft_dir);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.mask_path = mask;
    char *out = tmp_path("refused"), *rp = tmp_path("refused.json"),
         *mo = tmp_path("refused_mask.safetensors");
    p.report_path = rp;
    p.mask_out_path = mo;
    int rc = r && t ? nlsr_lora_run(ctx, r, 1, t, out, &p) : -1;
    ASSERT_EQ_I(rc, code);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), needle);
    ASSERT_TRUE(!exists(out));
    ASSERT_TRUE(!exists(rp));
    ASSERT_TRUE(!exists(mo));
    ASSERT_TRUE(no_tmp_debris());
    /* prepare refuses a bad mask file the same way, writing nothing */
    if (mask && r) {
        nlsr_ctx *c2 = quiet_ctx();
        char *pf = tmp_path("refused.nlsrp");
        ASSERT_EQ_I(nlsr_lora_prepare(c2, r, 1, pf, &p), code);
        ASSERT_TRUE(!exists(pf));
        ASSERT_TRUE(!exists(mo));
        ASSERT_TRUE(no_tmp_debris());
        free(pf);
        nlsr_ctx_free(c2);
    }
    free(out);
    free(rp);
    free(mo);
    nlsr_ckpt_free(r);
    nlsr_ckpt_free(t);
    nlsr_ctx_free(ctx);
}

static void test_refuse_rank(void)
{
    char *d = copy_adapter_edit(FT, "ft_r8", "\"r\": 4,", "\"r\": 8,");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "r=4");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "r=8");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "ft_r8");
    rm_rf(d);
    free(d);
}

static void test_refuse_alpha(void)
{
    char *d = copy_adapter_edit(FT, "ft_alpha16", "\"lora_alpha\": 8,", "\"lora_alpha\": 16,");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "lora_alpha differs");
    rm_rf(d);
    free(d);
}

static void test_refuse_targets(void)
{
    char *d = copy_adapter_edit(FT, "ft_targets", "\"down_proj\",\n    \"v_proj\"",
                                "\"down_proj\"");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "target_modules differ");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "[v_proj]");
    rm_rf(d);
    free(d);
}

static int drop_layer1_q(const char *name, uint64_t *shape)
{
    (void)shape;
    return strstr(name, "layers.1.self_attn.q_proj.") == NULL;
}

static int rank2_layer2_up(const char *name, uint64_t *shape)
{
    if (strstr(name, "layers.2.mlp.up_proj.lora_A")) shape[0] = 2;
    if (strstr(name, "layers.2.mlp.up_proj.lora_B")) shape[1] = 2;
    return 1;
}

static void test_refuse_modules(void)
{
    char *d = synth_adapter("ft_missing", drop_layer1_q);
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "base_model.model.model.layers.1.self_attn.q_proj");
    rm_rf(d);
    free(d);
    d = synth_adapter("ft_rank2", rank2_layer2_up);
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "layers.2.mlp.up_proj");
    expect_refusal(d, NULL, NLSR_E_MISMATCH, "has A [2,96] B [232,2]");
    rm_rf(d);
    free(d);
}

/* A mask file made from the authors' one by `edit` on the named tensor. */
typedef void (*mask_edit)(st_wtensor *wt, uint64_t *shape, unsigned char *data, int *drop);

static char *mask_variant(const char *name, const char *target, mask_edit edit,
                          const char *extra_key)
{
    nlsr_err e = {0};
    st_file *f = NULL;
    if (st_open(AUTH_MASK, &f, &e) != 0) {
        FAILF("open mask: %s", e.msg);
        return NULL;
    }
    size_t n = f->h.ntensors, k = 0;
    st_wtensor *wt = calloc(n + 1, sizeof *wt);
    uint64_t(*shapes)[2] = calloc(n + 1, sizeof *shapes);
    size_t dlen = (size_t)(f->file_size - f->data_start);
    unsigned char *data = malloc(dlen + 64), *outd = malloc(dlen + 64);
    size_t olen = 0;
    if (pread(f->fd, data, dlen, (off_t)f->data_start) != (ssize_t)dlen) FAILF("read mask");
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = &f->h.tensors[i];
        shapes[k][0] = t->shape[0];
        shapes[k][1] = t->shape[1];
        wt[k] = (st_wtensor){t->name, t->dtype, 2, shapes[k]};
        unsigned char *src = data + t->begin;
        int drop = 0;
        if (strcmp(t->name, target) == 0) edit(&wt[k], shapes[k], src, &drop);
        if (drop) continue;
        memcpy(outd + olen, src, (size_t)(shapes[k][0] * shapes[k][1]));
        olen += (size_t)(shapes[k][0] * shapes[k][1]);
        k++;
    }
    if (extra_key) {
        shapes[k][0] = shapes[k][1] = 1;
        wt[k] = (st_wtensor){extra_key, NLSR_DTYPE_U8, 2, shapes[k]};
        k++;
        outd[olen++] = 1;
    }
    char *path = tmp_path(name);
    st_writer *w = NULL;
    if (st_writer_begin(path, wt, k, NULL, 0, &w, &e) != 0 || st_writer_write(w, outd, olen) != 0 ||
        st_writer_commit(w) != 0)
        FAILF("write %s: %s", name, e.msg);
    free(outd);
    free(data);
    free(shapes);
    free(wt);
    st_close(f);
    return path;
}

static void transpose(st_wtensor *wt, uint64_t *shape, unsigned char *data, int *drop)
{
    (void)wt, (void)data, (void)drop;
    uint64_t t = shape[0];
    shape[0] = shape[1];
    shape[1] = t;
}

static void set_two(st_wtensor *wt, uint64_t *shape, unsigned char *data, int *drop)
{
    (void)wt, (void)shape, (void)drop;
    data[5] = 2;
}

static void keep(st_wtensor *wt, uint64_t *shape, unsigned char *data, int *drop)
{
    (void)wt, (void)shape, (void)data, (void)drop;
}

static void drop_it(st_wtensor *wt, uint64_t *shape, unsigned char *data, int *drop)
{
    (void)wt, (void)shape, (void)data;
    *drop = 1;
}

#define MASK_KEY "base_model.model.model.layers.1.mlp.gate_proj.lora_B.default"

static void test_refuse_mask_files(void)
{
    char *m = mask_variant("mask_transposed.safetensors", MASK_KEY, transpose, NULL);
    expect_refusal(FT, m, NLSR_E_MISMATCH, MASK_KEY "' has shape [4,232]");
    free(m);
    m = mask_variant("mask_two.safetensors", MASK_KEY, set_two, NULL);
    expect_refusal(FT, m, NLSR_E_VALUE, "element 5 is 2, not 0 or 1");
    free(m);
    m = mask_variant("mask_missing.safetensors", MASK_KEY, drop_it, NULL);
    expect_refusal(FT, m, NLSR_E_MISMATCH, "no mask '" MASK_KEY "'");
    free(m);
    m = mask_variant("mask_stray.safetensors", MASK_KEY, keep,
                     "base_model.model.model.layers.7.mlp.up_proj.lora_A.default");
    expect_refusal(FT, m, NLSR_E_MISMATCH, "layers.7.mlp.up_proj.lora_A.default' names no LoRA");
    free(m);
}

static void test_refuse_full_checkpoint(void)
{
    nlsr_ctx *ctx = quiet_ctx();
    nlsr_ckpt *r = open_ck(ctx, AUTH "/reference"), *t = open_ck(ctx, FX "/finetuned_f32");
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    char *out = tmp_path("refused_full");
    ASSERT_EQ_I(nlsr_lora_run(ctx, r, 1, t, out, &p), NLSR_E_USAGE);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "not a PEFT adapter");
    ASSERT_TRUE(!exists(out));
    free(out);
    nlsr_ckpt_free(r);
    nlsr_ckpt_free(t);
    nlsr_ctx_free(ctx);
}

/* ---- kernel ---------------------------------------------------------------------------------- */

static void test_gram_kernel(void)
{
    enum { OUT = 37, R = 5, IN = 29 };
    static double B1[OUT * R], A1[R * IN], B2[OUT * R], A2[R * IN], P1[OUT * IN], P2[OUT * IN];
    uint64_t s = 12345;
    double *all[4] = {B1, A1, B2, A2};
    size_t len[4] = {OUT * R, R * IN, OUT * R, R * IN};
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; i < len[k]; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            all[k][i] = (double)(int64_t)(s >> 11) / 0x1p52 * (i % 7 == 0 ? 0.0 : 1.0);
        }
    for (int i = 0; i < OUT; i++)
        for (int j = 0; j < IN; j++) {
            double x = 0, y = 0;
            for (int q = 0; q < R; q++) {
                x += B1[i * R + q] * A1[q * IN + j];
                y += B2[i * R + q] * A2[q * IN + j];
            }
            P1[i * IN + j] = x;
            P2[i * IN + j] = y;
        }
    double dot = 0, n1 = 0, n2 = 0;
    for (int i = 0; i < OUT * IN; i++) {
        dot += P1[i] * P2[i];
        n1 += P1[i] * P1[i];
        n2 += P2[i] * P2[i];
    }
    double scratch[6 * R * R], gd, g1, g2;
    ASSERT_EQ_U(nlsr_lora_gram_scratch(R), 6 * R * R);
    nlsr_lora_gram_sums(OUT, R, IN, B1, A1, B2, A2, scratch, &gd, &g1, &g2);
    ASSERT_NEAR(gd, dot, 1e-10 * n1);
    ASSERT_NEAR(g1, n1, 1e-12 * n1);
    ASSERT_NEAR(g2, n2, 1e-12 * n2);
    /* A zero factor: the cosine is 0, norms exactly 0 */
    static double Z[R * IN];
    nlsr_lora_gram_sums(OUT, R, IN, B1, A1, B2, Z, scratch, &gd, &g1, &g2);
    ASSERT_TRUE(gd == 0.0 && g2 == 0.0 && g1 > 0);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/nlsr-test-lora-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_gram_kernel);
    RUN_TEST(test_amplify_authors_matches_reference);
    RUN_TEST(test_amplify_paper);
    RUN_TEST(test_mask_matches_authors);
    RUN_TEST(test_run_all_from_reference);
    RUN_TEST(test_run_all_from_aligned);
    RUN_TEST(test_run_none);
    RUN_TEST(test_run_with_mask_file);
    RUN_TEST(test_prepare_apply);
    RUN_TEST(test_prepare_apply_targets);
    RUN_TEST(test_semantics);
    RUN_TEST(test_refuse_rank);
    RUN_TEST(test_refuse_alpha);
    RUN_TEST(test_refuse_targets);
    RUN_TEST(test_refuse_modules);
    RUN_TEST(test_refuse_mask_files);
    RUN_TEST(test_refuse_full_checkpoint);
    int rc = test_finish();
    if (rc == 0) rm_rf(tmp_root);
    else fprintf(stderr, "outputs kept in %s\n", tmp_root);
    return rc;
}
