/* SPDX-License-Identifier: Apache-2.0 */
/* Full-weight prepare / apply / run over tests/data/hf-tiny-llama:
 *
 *  - reports and output tensors match expected/full_bf16_all.json and
 *    expected/full_bf16_adaptive_paper_seed42.json (similarity within 1e-9, everything else
 *    exactly, sha256 of every target tensor after the run);
 *  - shard headers, non-target tensors, unpatched targets and side files are unchanged;
 *  - run == prepare + apply, bit for bit, whatever the memory plan (cached or streamed,
 *    candidates or second histogram, block sizes);
 *  - BF16, F16 and F32 fine-tunes, and sparsity 0, against an independent re-implementation
 *    of METHOD.md here (similarities, masks, the adaptive decisions by test_select.h, bytes);
 *  - a reference checkpoint (--reference) gives the same output as --aligned;
 *  - damaged patch files, patch files for another model and each bad input are refused with
 *    the names involved and nothing written;
 *  - the CLI: --json on stdout, exit statuses.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/compute/convert.h"
#include "../src/io/checkpoint.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "../src/io/patchfile.h"
#include "../src/jobs/realign_full.h"
#include "../src/jobs/realign_run.h"
#include "../src/plan/targets.h"
#include "nlsr.h"
#include "test.h"
#include "test_cli.h"
#include "test_files.h"
#include "test_select.h"
#include "test_sha256.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif
#ifndef NLSR_CLI
#error "NLSR_CLI must name the nlsr program"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define SFT FX "/sft"
#define ALIGNED FX "/aligned"
#define FT FX "/finetuned"
#define EXP_ADAPTIVE FX "/expected/full_bf16_adaptive_paper_seed42.json"
#define EXP_ALL FX "/expected/full_bf16_all.json"

static char root[4096];

/* ---- helpers ------------------------------------------------------------------------------ */

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}




/* No "*.nlsr-tmp-*" / "*.nlsr-old-*" leftovers in the work folder. */
static int no_leftovers(void)
{
    DIR *d = opendir(root);
    int ok = 1;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".nlsr-tmp-") || strstr(de->d_name, ".nlsr-old-")) {
            fprintf(stderr, "  leftover %s\n", de->d_name);
            ok = 0;
        }
    if (d) closedir(d);
    return ok;
}

/* Raw bytes of a tensor of an opened checkpoint (malloc'd). */
static unsigned char *tensor_bytes(const nlsr_ckpt *ck, const char *name, nlsr_dtype *dt,
                                   uint64_t *numel)
{
    size_t i;
    if (nlsr_ckpt_find(ck, name, &i) != 0) return NULL;
    nlsr_tensor_info ti;
    nlsr_ckpt_tensor_info(ck, i, &ti);
    unsigned char *b = malloc(ti.nbytes ? ti.nbytes : 1);
    nlsr_err e = {0};
    const st_file *f = ck->shards[ck->t[i].shard];
    if (nlsr_pread_all(f->fd, b, ti.nbytes, ti.offset, f->path, &e) < 0) abort();
    if (dt) *dt = ti.dtype;
    if (numel) *numel = ti.numel;
    return b;
}

static nlsr_ckpt *open_ck(const char *path)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *ck = NULL;
    if (nlsr_ckpt_open(ctx, path, &ck) < 0) {
        fprintf(stderr, "open %s: %s\n", path, nlsr_ctx_error(ctx));
        abort();
    }
    nlsr_ctx_free(ctx);
    return ck;
}

static nlsr_realign_params quiet_params(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    return p;
}

static nlsr_ctx *new_ctx(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    return ctx;
}

/* Every job must give back all it charged to the budget. */
static void end_ctx(nlsr_ctx *ctx)
{
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
}

static cJSON *load_json(const char *path)
{
    size_t n = 0;
    unsigned char *t = read_all(path, &n);
    cJSON *j = t ? cJSON_ParseWithLength((const char *)t, n) : NULL;
    free(t);
    return j;
}

/* ---- expected files ----------------------------------------------------------------------- */

/* The report (modules list) and the output's target tensors against an expected/ file. */
static void check_expected(const char *exp_path, const char *report_path, const char *out_dir)
{
    cJSON *exp = load_json(exp_path), *rep = load_json(report_path);
    ASSERT_TRUE(exp && rep);
    if (!exp || !rep) goto done;
    const cJSON *em = cJSON_GetObjectItemCaseSensitive(exp, "modules");
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(rep, "modules");
    ASSERT_EQ_I(cJSON_GetArraySize(rm), cJSON_GetArraySize(em));
    nlsr_ckpt *out = open_ck(out_dir);
    const cJSON *r = rm ? rm->child : NULL;
    for (const cJSON *x = em ? em->child : NULL; x && r; x = x->next, r = r->next) {
        const char *name = x->string;
        ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(r, "name")->valuestring, name);
        ASSERT_NEAR(cJSON_GetObjectItemCaseSensitive(r, "similarity")->valuedouble,
                    cJSON_GetObjectItemCaseSensitive(x, "similarity")->valuedouble, 1e-9);
        const char *exact[] = {"mask_count", "numel", "probability", "draw"};
        for (int k = 0; k < 4; k++) {
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(r, exact[k]);
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(x, exact[k]);
            if (cJSON_IsNull(b)) {
                ASSERT_TRUE(cJSON_IsNull(a));
            } else if (!cJSON_IsNumber(a) || a->valuedouble != b->valuedouble) {
                FAILF("%s: %s: %.17g != %.17g", name, exact[k], a ? a->valuedouble : NAN,
                      b->valuedouble);
            }
        }
        ASSERT_EQ_I(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "patched")),
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "patched")));
        uint64_t n = 0;
        nlsr_dtype dt;
        unsigned char *b = tensor_bytes(out, name, &dt, &n);
        ASSERT_TRUE(b != NULL);
        if (b) {
            char hex[65];
            sha256_hex(b, n * nlsr_dtype_size(dt), hex);
            ASSERT_STR_EQ(hex, cJSON_GetObjectItemCaseSensitive(x, "sha256_after")->valuestring);
        }
        free(b);
    }
    nlsr_ckpt_free(out);
done:
    cJSON_Delete(exp);
    cJSON_Delete(rep);
}

/* Shard headers, side files, non-target tensors and unpatched targets are the input's. */
static void check_unchanged(const char *ft_dir, const char *out_dir, const char *report_path)
{
    nlsr_ckpt *a = open_ck(ft_dir), *b = open_ck(out_dir);
    cJSON *rep = load_json(report_path);
    ASSERT_EQ_U(a->nshards, b->nshards);
    for (size_t s = 0; s < a->nshards && s < b->nshards; s++) {
        ASSERT_STR_EQ(a->shard_names[s], b->shard_names[s]);
        ASSERT_EQ_U(a->shards[s]->file_size, b->shards[s]->file_size);
        size_t n = (size_t)a->shards[s]->data_start;
        unsigned char *x = malloc(n), *y = malloc(n);
        nlsr_err e = {0};
        nlsr_pread_all(a->shards[s]->fd, x, n, 0, "a", &e);
        nlsr_pread_all(b->shards[s]->fd, y, n, 0, "b", &e);
        ASSERT_TRUE(memcmp(x, y, n) == 0);
        free(x);
        free(y);
    }
    ASSERT_EQ_U(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        const char *name = a->t[i].t->name;
        int patched = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(rep, "modules"))
            if (strcmp(cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring, name) == 0)
                patched = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched"));
        if (patched) continue;
        uint64_t n1 = 0, n2 = 0;
        nlsr_dtype d1, d2;
        unsigned char *x = tensor_bytes(a, name, &d1, &n1), *y = tensor_bytes(b, name, &d2, &n2);
        ASSERT_TRUE(x && y && d1 == d2 && n1 == n2 &&
                    memcmp(x, y, n1 * nlsr_dtype_size(d1)) == 0);
        free(x);
        free(y);
    }
    const char *side[] = {"config.json", "generation_config.json", "model.safetensors.index.json"};
    for (int k = 0; k < 3; k++) {
        char *p1 = NULL, *p2 = NULL;
        if (asprintf(&p1, "%s/%s", ft_dir, side[k]) < 0 ||
            asprintf(&p2, "%s/%s", out_dir, side[k]) < 0)
            abort();
        if (nlsr_exists(p1)) ASSERT_TRUE(files_equal(p1, p2));
        else ASSERT_TRUE(!nlsr_exists(p2));
        free(p1);
        free(p2);
    }
    cJSON_Delete(rep);
    nlsr_ckpt_free(a);
    nlsr_ckpt_free(b);
}

static int do_run(const char *ft, const char *out, const char *report, nlsr_select_mode mode)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = quiet_params();
    p.select.mode = mode;
    p.report_path = report;
    int rc = nlsr_run(ctx, SFT, ALIGNED, NULL, ft, out, &p);
    if (rc < 0) fprintf(stderr, "run: %s\n", nlsr_ctx_error(ctx));
    end_ctx(ctx);
    return rc;
}

static void test_xxh64_vectors(void)
{
    ASSERT_EQ_U(nlsr_xxh64("", 0, 0), 0xEF46DB3751D8E999ull);
    ASSERT_EQ_U(nlsr_xxh64("a", 1, 0), 0xD24EC4F1A98C6E5Bull);
    ASSERT_EQ_U(nlsr_xxh64("abc", 3, 0), 0x44BC2CF5AD770999ull);
    /* Streaming in odd pieces equals one shot, across the 32-byte stripes. */
    unsigned char buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(i * 7 + 3);
    nlsr_xxh64_state s;
    nlsr_xxh64_init(&s, 5);
    for (size_t off = 0, step = 1; off < 1000; off += step, step = step * 3 % 47 + 1)
        nlsr_xxh64_update(&s, buf + off, off + step > 1000 ? 1000 - off : step);
    ASSERT_EQ_U(nlsr_xxh64_digest(&s), nlsr_xxh64(buf, 1000, 5));
    char hex[65];
    sha256_hex("abc", 3, hex);
    ASSERT_STR_EQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_run_expected(void)
{
    char *out = wpath("run_adaptive"), *rep = wpath("run_adaptive.json");
    ASSERT_EQ_I(do_run(FT, out, rep, NLSR_SELECT_ADAPTIVE), 0);
    check_expected(EXP_ADAPTIVE, rep, out);
    check_unchanged(FT, out, rep);
    char *out2 = wpath("run_all"), *rep2 = wpath("run_all.json");
    ASSERT_EQ_I(do_run(FT, out2, rep2, NLSR_SELECT_ALL), 0);
    check_expected(EXP_ALL, rep2, out2);
    check_unchanged(FT, out2, rep2);
    ASSERT_TRUE(no_leftovers());
    free(out);
    free(rep);
    free(out2);
    free(rep2);
}

static void test_prepare_apply_equals_run(void)
{
    char *patch = wpath("fx.nlsrp"), *out = wpath("pa_adaptive"), *rep = wpath("pa.json");
    char *run_out = wpath("run_adaptive");
    if (!nlsr_exists(run_out)) ASSERT_EQ_I(do_run(FT, run_out, NULL, NLSR_SELECT_ADAPTIVE), 0);
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = quiet_params();
    char *prep_rep = wpath("prep.json");
    p.report_path = prep_rep;
    ASSERT_EQ_I(nlsr_prepare(ctx, SFT, ALIGNED, NULL, patch, &p), 0);
    end_ctx(ctx);
    /* The prepare report: mask counts per module and the patch size fraction. */
    cJSON *pj = load_json(prep_rep);
    const cJSON *sum = cJSON_GetObjectItemCaseSensitive(pj, "summary");
    struct stat st;
    ASSERT_TRUE(stat(patch, &st) == 0);
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "patch_bytes")->valuedouble,
                (uint64_t)st.st_size);
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "model_bytes")->valuedouble, 691008);
    double frac = cJSON_GetObjectItemCaseSensitive(sum, "patch_fraction")->valuedouble;
    ASSERT_TRUE(frac > 0.05 && frac < 0.5);
    printf("patch file: %lld bytes, %.4f of the model's bytes\n", (long long)st.st_size, frac);
    cJSON_Delete(pj);
    ctx = new_ctx();
    p = quiet_params();
    p.report_path = rep;
    ASSERT_EQ_I(nlsr_apply(ctx, patch, FT, out, &p), 0);
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(run_out, out));
    check_expected(EXP_ADAPTIVE, rep, out);
    /* One patch file serves several fine-tunes: apply to the F32 variant works too. */
    char *out32 = wpath("pa_f32");
    ctx = new_ctx();
    p = quiet_params();
    ASSERT_EQ_I(nlsr_apply(ctx, patch, FX "/finetuned_f32", out32, &p), 0);
    end_ctx(ctx);
    free(out32);
    free(prep_rep);
    free(patch);
    free(out);
    free(rep);
    free(run_out);
}

/* The patch file does not depend on the memory plan; block sizes change only its layout and
 * never the output. */
static void test_memory_plans(void)
{
    const nlsr_full_tuning tunes[] = {{0, 0, 0, 0},    {1, 0, 0, 0},    {0, 1, 0, 0},
                                      {1, 1, 0, 0},    {1, 0, 1000, 0}, {0, 1, 4099, 0},
                                      {1, 1, 22272, 0}};
    char *ref_patch = NULL, *ref_out = NULL;
    for (size_t k = 0; k < sizeof tunes / sizeof tunes[0]; k++) {
        char name[64];
        snprintf(name, sizeof name, "plan%zu.nlsrp", k);
        char *patch = wpath(name);
        snprintf(name, sizeof name, "plan%zu", k);
        char *out = wpath(name);
        nlsr_ctx *ctx = new_ctx();
        nlsr_realign_params p = quiet_params();
        nlsr_ckpt *b = open_ck(SFT), *a = open_ck(ALIGNED);
        ASSERT_EQ_I(nlsr_full_check_sources(ctx, b, a, 0, &p), 0);
        ASSERT_EQ_I(nlsr_full_prepare(ctx, b, a, 0, patch, &p, &tunes[k], NULL), 0);
        nlsr_ckpt_free(a);
        nlsr_ckpt_free(b);
        ASSERT_EQ_I(nlsr_apply(ctx, patch, FT, out, &p), 0);
        end_ctx(ctx);
        if (k == 0) {
            ref_patch = patch;
            ref_out = out;
            continue;
        }
        if (tunes[k].block_elems == 0) ASSERT_TRUE(files_equal(ref_patch, patch));
        else ASSERT_TRUE(!files_equal(ref_patch, patch));
        ASSERT_TRUE(folders_equal(ref_out, out));
        free(patch);
        free(out);
    }
    /* apply without keeping the fine-tune from pass 1 (streams the patched tensors again). */
    for (int k = 0; k < 6; k += 4) {
        char name[64];
        snprintf(name, sizeof name, "plan%d.nlsrp", k);
        char *patch = wpath(name);
        snprintf(name, sizeof name, "plan%d_nocache", k);
        char *out = wpath(name);
        nlsr_ctx *ctx = new_ctx();
        nlsr_pf_reader *pf = NULL;
        nlsr_realign_params p = quiet_params();
        const char **names = NULL;
        nlsr_ckpt *ft = open_ck(FT);
        nlsr_full_tuning t = {0, 0, 0, 1};
        nlsr_report rep;
        nlsr_report_init(&rep, ctx, "apply", "full");
        ASSERT_EQ_I(nlsr_pf_open(ctx, patch, &pf), 0);
        ASSERT_EQ_I(nlsr_full_patch_params(ctx, pf, &p, &names), 0);
        ASSERT_EQ_I(nlsr_full_check_patch(ctx, pf, ft, &p), 0);
        ASSERT_EQ_I(mkdir(out, 0755), 0);
        ASSERT_EQ_I(nlsr_full_apply(ctx, pf, ft, out, &p, &t, &rep), 0);
        ASSERT_TRUE(folders_equal(ref_out, out));
        nlsr_report_free(&rep);
        nlsr_pf_close(pf);
        nlsr_ckpt_free(ft);
        free(names);
        end_ctx(ctx);
        free(patch);
        free(out);
    }
    /* A budget too small for the block buffers is refused, and leaves nothing behind. */
    nlsr_ctx *ctx = new_ctx();
    nlsr_ctx_set_mem_budget(ctx, 1u << 20);
    nlsr_realign_params p = quiet_params();
    char *out = wpath("tiny_budget");
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, out, &p), NLSR_E_BUDGET);
    ASSERT_TRUE(!nlsr_exists(out));
    ASSERT_TRUE(no_leftovers());
    end_ctx(ctx);
    free(out);
    free(ref_patch);
    free(ref_out);
}

/* ---- run's plans ---------------------------------------------------------------------------- */

typedef struct run_result {
    int rc;
    char plan[32];
    int kept, modules;
    double bytes_read, budget_peak;
    cJSON *json;
    char msg[1100];
} run_result;

/* One `run` with a budget (0: none) and NLSR_RUN_PLAN (NULL: unset); the report loaded. */
static run_result run_plan(const char *plan, uint64_t budget, nlsr_select_mode mode, const char *out)
{
    run_result r = {0};
    char *rep = wpath("plan_report.json");
    unlink(rep);
    if (plan) setenv("NLSR_RUN_PLAN", plan, 1);
    else unsetenv("NLSR_RUN_PLAN");
    nlsr_ctx *ctx = new_ctx();
    if (budget) nlsr_ctx_set_mem_budget(ctx, budget);
    nlsr_realign_params p = quiet_params();
    p.select.mode = mode;
    p.report_path = rep;
    r.rc = nlsr_run(ctx, SFT, ALIGNED, NULL, FT, out, &p);
    /* Whatever the plan, the budget holds (the arena's charged peak, and the report's). */
    if (budget) ASSERT_TRUE(nlsr_ctx_mem_peak(ctx) <= budget);
    snprintf(r.msg, sizeof r.msg, "%s", nlsr_ctx_error(ctx));
    end_ctx(ctx);
    unsetenv("NLSR_RUN_PLAN");
    if (r.rc == 0) {
        r.json = load_json(rep);
        const cJSON *sum = cJSON_GetObjectItemCaseSensitive(r.json, "summary");
        const cJSON *pl = cJSON_GetObjectItemCaseSensitive(sum, "plan");
        const cJSON *kept = cJSON_GetObjectItemCaseSensitive(sum, "patches_in_memory");
        snprintf(r.plan, sizeof r.plan, "%s", cJSON_IsString(pl) ? pl->valuestring : "?");
        r.kept = cJSON_IsNumber(kept) ? (int)kept->valuedouble : -1;
        r.modules = (int)cJSON_GetObjectItemCaseSensitive(sum, "modules")->valuedouble;
        r.bytes_read = cJSON_GetObjectItemCaseSensitive(sum, "bytes_read")->valuedouble;
        r.budget_peak = cJSON_GetObjectItemCaseSensitive(sum, "budget_peak_bytes")->valuedouble;
        if (budget) ASSERT_TRUE(r.budget_peak <= (double)budget);
    }
    free(rep);
    return r;
}

/* Every module's similarity, mask count and decision identical in two reports. */
static int same_modules(const cJSON *a, const cJSON *b)
{
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(a, "modules");
    const cJSON *mb = cJSON_GetObjectItemCaseSensitive(b, "modules");
    if (cJSON_GetArraySize(ma) != cJSON_GetArraySize(mb) || cJSON_GetArraySize(ma) == 0) return 0;
    for (const cJSON *x = ma->child, *y = mb->child; x && y; x = x->next, y = y->next) {
        const char *keys[] = {"similarity", "mask_count", "patched"};
        for (size_t k = 0; k < 3; k++) {
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(x, keys[k]);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(y, keys[k]);
            if (cJSON_IsBool(u) ? cJSON_IsTrue(u) != cJSON_IsTrue(v)
                                : u->valuedouble != v->valuedouble)
                return 0;
        }
    }
    return 1;
}

/* Bytes of the target tensors of a checkpoint, and of all its shard files. */
static void ckpt_bytes(const char *path, const char **patched, size_t npatched, double *targets,
                       double *files, double *patched_bytes)
{
    nlsr_ckpt *ck = open_ck(path);
    *targets = *files = 0;
    if (patched_bytes) *patched_bytes = 0;
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = ck->t[i].t;
        if (!nlsr_is_target(t, NULL, 0)) continue;
        *targets += (double)(t->end - t->begin);
        for (size_t k = 0; k < npatched && patched_bytes; k++)
            if (strcmp(patched[k], t->name) == 0) *patched_bytes += (double)(t->end - t->begin);
    }
    for (size_t k = 0; k < ck->nshards; k++) *files += (double)ck->shards[k]->file_size;
    nlsr_ckpt_free(ck);
}

/* The single pass, with all, some or none of the patches kept in memory, and the patch-file
 * plan give the same bytes and the same report; the single pass reads each target tensor of
 * base and aligned once, and the fine-tune twice at most. */
static void test_run_plans(void)
{
    for (int mi = 0; mi < 2; mi++) {
        nlsr_select_mode mode = mi ? NLSR_SELECT_ALL : NLSR_SELECT_ADAPTIVE;
        char *ref = wpath(mi ? "rp_ref_all" : "rp_ref_adaptive");
        run_result pf = run_plan("patch-file", 0, mode, ref);
        ASSERT_EQ_I(pf.rc, 0);
        ASSERT_STR_EQ(pf.plan, "patch file");
        char *rep = wpath("plan_report.json");
        check_expected(mi ? EXP_ALL : EXP_ADAPTIVE, rep, ref);
        free(rep);
        /* The patched modules, for the byte counts. */
        const char *patched[64];
        size_t np = 0;
        const cJSON *mods = cJSON_GetObjectItemCaseSensitive(pf.json, "modules");
        for (const cJSON *m = mods->child; m && np < 64; m = m->next)
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched")))
                patched[np++] = cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring;
        ASSERT_TRUE(np > 0);
        double bt, bf, at, af, tt, tf, tpatched, apatched, bpatched;
        ckpt_bytes(SFT, patched, np, &bt, &bf, &bpatched);
        ckpt_bytes(ALIGNED, patched, np, &at, &af, &apatched);
        ckpt_bytes(FT, patched, np, &tt, &tf, &tpatched);
        /* Budgets from refused to ample, finely around the least any plan takes (row blocks)
         * and the least the single pass takes whole. */
        uint64_t need, least;
        {
            nlsr_ctx *ctx = new_ctx();
            nlsr_ckpt *cb = open_ck(SFT), *ca = open_ck(ALIGNED), *ct = open_ck(FT);
            nlsr_realign_params pp = quiet_params();
            nlsr_run_plan rp;
            ASSERT_EQ_I(nlsr_full_run_plan(ctx, cb, ca, ct, &pp, &rp), 0);
            need = rp.need_bytes;
            least = rp.rows_min_bytes;
            ASSERT_TRUE(least > 0 && least < need);
            nlsr_ckpt_free(cb);
            nlsr_ckpt_free(ca);
            nlsr_ckpt_free(ct);
            end_ctx(ctx);
        }
        /* The patch-file plan's report says what the single pass would need. */
        const cJSON *spn = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(pf.json, "summary"), "single_pass_need_bytes");
        ASSERT_TRUE(cJSON_IsNumber(spn) && spn->valuedouble == (double)need);
        uint64_t budgets[128];
        size_t nb = 0;
        for (uint64_t b = 256u << 10; b < least && nb < 12; b += 256u << 10) budgets[nb++] = b;
        for (uint64_t b = least - 2; b < least + (256u << 10) && nb < 44; b += 8u << 10)
            budgets[nb++] = b;
        for (uint64_t b = least + (256u << 10); b < need && nb < 60; b += 128u << 10)
            budgets[nb++] = b;
        for (uint64_t b = need - 1; b < need + (640u << 10) && nb < 128; b += 16u << 10)
            budgets[nb++] = b;
        int seen_all = 0, seen_some = 0, seen_patchfile = 0, seen_rows = 0, seen_refused = 0;
        for (size_t bi = 0; bi < nb; bi++) {
            uint64_t budget = budgets[bi];
            char *out = wpath("rp_out");
            run_result r = run_plan(NULL, budget, mode, out);
            if (r.rc == 0) {
                ASSERT_TRUE(folders_equal(ref, out));
                ASSERT_TRUE(same_modules(pf.json, r.json));
                ASSERT_TRUE(budget >= least);
                if (strcmp(r.plan, "single pass") == 0) {
                    ASSERT_TRUE(budget >= need);
                    seen_all += r.kept == r.modules;
                    seen_some += r.kept > 0 && r.kept < r.modules;
                } else if (strcmp(r.plan, "row blocks") == 0) {
                    ASSERT_TRUE(budget < need);
                    seen_rows++;
                } else {
                    ASSERT_STR_EQ(r.plan, "patch file");
                    seen_patchfile++;
                }
            } else {
                /* Refused up front, saying the least budget, and only below it. */
                ASSERT_EQ_I(r.rc, NLSR_E_BUDGET);
                ASSERT_TRUE(budget < least);
                ASSERT_CONTAINS(r.msg, "needs at least");
                ASSERT_TRUE(!nlsr_exists(out));
                seen_refused++;
            }
            cJSON_Delete(r.json);
            (void)nlsr_tree_remove(out);
            free(out);
        }
        ASSERT_TRUE(seen_all > 0 && seen_some > 0 && seen_rows > 0 && seen_refused > 0);
        ASSERT_EQ_I(seen_patchfile, 0); /* row blocks need less than prepare + apply */
        printf("run plans, %s: %d budgets kept every patch, %d some, %d took row blocks, %d "
               "refused\n",
               mi ? "all" : "adaptive", seen_all, seen_some, seen_rows, seen_refused);
        /* Row blocks forced (the largest modules cut in two, the others whole), keeping
         * patches or not. */
        for (int k = 0; k < 2; k++) {
            char *o = wpath("rp_rows");
            run_result rr = run_plan(k ? "rows-recompute" : "rows", 0, mode, o);
            ASSERT_EQ_I(rr.rc, 0);
            ASSERT_STR_EQ(rr.plan, "row blocks");
            ASSERT_EQ_I(rr.kept, k ? 0 : rr.modules);
            ASSERT_TRUE(folders_equal(ref, o));
            ASSERT_TRUE(same_modules(pf.json, rr.json));
            cJSON_Delete(rr.json);
            (void)nlsr_tree_remove(o);
            free(o);
        }
        /* No budget: everything kept; base and aligned targets read once, the fine-tune's
         * targets once in phase A and every byte of its shards once in phase B. */
        char *out = wpath("rp_unlimited");
        run_result r = run_plan(NULL, 0, mode, out);
        ASSERT_EQ_I(r.rc, 0);
        ASSERT_STR_EQ(r.plan, "single pass");
        ASSERT_EQ_I(r.kept, r.modules);
        ASSERT_TRUE(folders_equal(ref, out));
        ASSERT_TRUE(r.bytes_read == bt + at + tt + tf);
        /* What `nlsr plan` says run will do is what it did. */
        {
            nlsr_ctx *ctx = new_ctx();
            nlsr_ckpt *cb = open_ck(SFT), *ca = open_ck(ALIGNED), *ct = open_ck(FT);
            nlsr_realign_params pp = quiet_params();
            nlsr_run_plan rp;
            ASSERT_EQ_I(nlsr_full_run_plan(ctx, cb, ca, ct, &pp, &rp), 0);
            ASSERT_TRUE(rp.single);
            ASSERT_EQ_U(rp.kept, (uint64_t)r.kept);
            ASSERT_TRUE((double)rp.read_min == r.bytes_read);
            ASSERT_TRUE((double)rp.written == tf);
            /* The same through `nlsr plan --json`. */
            FILE *f = tmpfile();
            ASSERT_TRUE(f != NULL);
            ASSERT_EQ_I(nlsr_plan_print(ctx, SFT, ALIGNED, FT, &pp, 1e9, 1e9, NULL, 1, f), 0);
            long len = ftell(f);
            char *txt = calloc(1, (size_t)len + 1);
            rewind(f);
            ASSERT_EQ_U(fread(txt, 1, (size_t)len, f), (uint64_t)len);
            fclose(f);
            cJSON *pj = cJSON_Parse(txt);
            const cJSON *run = cJSON_GetObjectItemCaseSensitive(pj, "run");
            ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(run, "plan")->valuestring,
                          "single pass");
            ASSERT_TRUE(cJSON_GetObjectItemCaseSensitive(run, "bytes_read")->valuedouble ==
                        r.bytes_read);
            cJSON_Delete(pj);
            free(txt);
            /* A budget just under what it needs: row blocks; under theirs, nothing. */
            uint64_t least1 = rp.rows_min_bytes;
            nlsr_ctx_set_mem_budget(ctx, rp.need_bytes - 1);
            ASSERT_EQ_I(nlsr_full_run_plan(ctx, cb, ca, ct, &pp, &rp), 0);
            ASSERT_TRUE(!rp.single && rp.rows);
            nlsr_ctx_set_mem_budget(ctx, least1);
            ASSERT_EQ_I(nlsr_full_run_plan(ctx, cb, ca, ct, &pp, &rp), 0);
            ASSERT_TRUE(!rp.single && rp.rows);
            nlsr_ctx_set_mem_budget(ctx, least1 - 1);
            ASSERT_EQ_I(nlsr_full_run_plan(ctx, cb, ca, ct, &pp, &rp), 0);
            ASSERT_TRUE(!rp.single && !rp.rows);
            nlsr_ckpt_free(cb);
            nlsr_ckpt_free(ca);
            nlsr_ckpt_free(ct);
            end_ctx(ctx);
        }
        cJSON_Delete(r.json);
        (void)nlsr_tree_remove(out);
        /* Nothing kept: the patched modules' base and aligned are read again. */
        r = run_plan("recompute", 0, mode, out);
        ASSERT_EQ_I(r.rc, 0);
        ASSERT_EQ_I(r.kept, 0);
        ASSERT_TRUE(folders_equal(ref, out));
        ASSERT_TRUE(same_modules(pf.json, r.json));
        ASSERT_TRUE(r.bytes_read == bt + at + tt + tf + bpatched + apatched);
        cJSON_Delete(r.json);
        (void)nlsr_tree_remove(out);
        free(out);
        cJSON_Delete(pf.json);
        free(ref);
    }
    ASSERT_TRUE(no_leftovers());
}

/* ---- METHOD.md re-implemented here, element by element, for any fine-tuned dtype ---------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* One module by METHOD.md: the similarity and mask count, and the module's expected bytes in
 * the fine-tuned dtype when patched (*expect, malloc'd; NULL: not wanted). */
static double reimplement_module(nlsr_ckpt *B, nlsr_ckpt *A, nlsr_ckpt *T, const char *name,
                                 double sparsity, int patched, uint64_t *count,
                                 unsigned char **expect)
{
    nlsr_dtype db, da, dt;
    uint64_t n = 0;
    unsigned char *rb = tensor_bytes(B, name, &db, NULL), *ra = tensor_bytes(A, name, &da, NULL),
                  *rt = tensor_bytes(T, name, &dt, &n);
    float *b = malloc(n * 4), *a = malloc(n * 4), *tv = malloc(n * 4), *es = malloc(n * 4),
          *s = malloc(n * 4), *sorted = malloc(n * 4);
    nlsr_to_f32(db, rb, b, n);
    nlsr_to_f32(da, ra, a, n);
    nlsr_to_f32(dt, rt, tv, n);
    unsigned char stored[8];
    for (uint64_t j = 0; j < n; j++) {
        float e = a[j] + 0.9f * (a[j] - b[j]);
        nlsr_from_f32(da, &e, stored, 1);
        nlsr_to_f32(da, stored, &es[j], 1);
        s[j] = fabsf(es[j] - b[j]);
    }
    memcpy(sorted, s, n * 4);
    qsort(sorted, n, 4, cmp_float);
    uint64_t k = (uint64_t)((double)n * sparsity);
    double dot = 0, nx = 0, ny = 0;
    size_t es_t = nlsr_dtype_size(dt);
    if (expect) {
        *expect = malloc(n * es_t);
        memcpy(*expect, rt, n * es_t);
    }
    *count = 0;
    for (uint64_t j = 0; j < n; j++) {
        if (!(k < n && s[j] > sorted[k])) continue;
        (*count)++;
        double x = (double)(tv[j] - b[j]), y = (double)(es[j] - b[j]);
        dot += x * y;
        nx += x * x;
        ny += y * y;
        if (patched && expect) nlsr_from_f32(dt, &es[j], *expect + j * es_t, 1);
    }
    free(b);
    free(a);
    free(tv);
    free(es);
    free(s);
    free(sorted);
    free(rb);
    free(ra);
    free(rt);
    return nx == 0 || ny == 0 ? 0 : dot / (sqrt(nx) * sqrt(ny));
}

/* The output and the report against METHOD.md computed here for every module: similarities,
 * mask counts, and which modules are patched (all, or the adaptive rule with the default
 * prune rate, epsilon and seed by test_select.h), then every target tensor's bytes. */
static void check_against_reimplementation(const char *ft_dir, const char *out_dir,
                                           const char *report_path, nlsr_select_mode mode,
                                           double sparsity)
{
    nlsr_ckpt *B = open_ck(SFT), *A = open_ck(ALIGNED), *T = open_ck(ft_dir),
              *O = open_ck(out_dir);
    cJSON *rep = load_json(report_path);
    enum { MAXM = 64 };
    const char *names[MAXM];
    double sim[MAXM], prob[MAXM], draw[MAXM];
    int patched[MAXM];
    uint64_t count[MAXM];
    size_t nmod = 0;
    for (size_t i = 0; i < A->n && nmod < MAXM; i++) {
        const st_tensor *t = A->t[i].t;
        if (!nlsr_is_target(t, NULL, 0)) continue;
        names[nmod] = t->name;
        sim[nmod] = reimplement_module(B, A, T, t->name, sparsity, 0, &count[nmod], NULL);
        nmod++;
    }
    ASSERT_EQ_U(nmod, 21);
    if (mode == NLSR_SELECT_ALL) {
        for (size_t i = 0; i < nmod; i++) patched[i] = 1;
    } else {
        ASSERT_EQ_I(mode, NLSR_SELECT_ADAPTIVE);
        ref_select(sim, nmod, 0, 0.5, 0.2, 42, prob, draw, patched);
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(rep, "modules")->child;
    size_t npatched = 0;
    for (size_t i = 0; i < nmod; i++, m = m ? m->next : NULL) {
        ASSERT_TRUE(m != NULL);
        if (!m) break;
        ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(m, "name")->valuestring, names[i]);
        ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(m, "mask_count")->valuedouble, count[i]);
        ASSERT_TRUE(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(m, "similarity")));
        ASSERT_NEAR(cJSON_GetObjectItemCaseSensitive(m, "similarity")->valuedouble, sim[i], 1e-12);
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched")) != patched[i])
            FAILF("%s: patched should be %d", names[i], patched[i]);
        if (mode == NLSR_SELECT_ADAPTIVE) {
            ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(m, "probability")->valuedouble, prob[i]);
            ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(m, "draw")->valuedouble, draw[i]);
        }
        npatched += patched[i] != 0;
        uint64_t c = 0, n = 0;
        unsigned char *expect = NULL;
        nlsr_dtype dout;
        (void)reimplement_module(B, A, T, names[i], sparsity, patched[i], &c, &expect);
        unsigned char *ro = tensor_bytes(O, names[i], &dout, &n);
        nlsr_dtype dt;
        free(tensor_bytes(T, names[i], &dt, NULL));
        ASSERT_EQ_I(dout, dt);
        if (memcmp(expect, ro, n * nlsr_dtype_size(dt)) != 0)
            FAILF("%s: output bytes differ", names[i]);
        free(expect);
        free(ro);
    }
    /* Both decisions occur, or the check of the bytes proves little. */
    ASSERT_TRUE(npatched > 0);
    if (mode == NLSR_SELECT_ADAPTIVE) ASSERT_TRUE(npatched < nmod);
    cJSON_Delete(rep);
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(A);
    nlsr_ckpt_free(T);
    nlsr_ckpt_free(O);
}

static void test_dtype_variants(void)
{
    const char *fts[] = {FT, FX "/finetuned_f16", FX "/finetuned_f32"};
    const char *tags[] = {"bf16", "f16", "f32"};
    for (int v = 0; v < 3; v++)
        for (int all = 0; all < 2; all++) {
            char name[64];
            snprintf(name, sizeof name, "var_%s_%d", tags[v], all);
            char *out = wpath(name);
            snprintf(name, sizeof name, "var_%s_%d.json", tags[v], all);
            char *rep = wpath(name);
            ASSERT_EQ_I(do_run(fts[v], out, rep, all ? NLSR_SELECT_ALL : NLSR_SELECT_ADAPTIVE),
                        0);
            check_against_reimplementation(fts[v], out, rep,
                                           all ? NLSR_SELECT_ALL : NLSR_SELECT_ADAPTIVE, 0.8);
            check_unchanged(fts[v], out, rep);
            free(out);
            free(rep);
        }
}

/* ---- variants of the fixture checkpoints, written here --------------------------------------- */

typedef struct variant {
    const char *drop;     /* leave this tensor out */
    const char *reshape;  /* swap the two dimensions of this 2-D tensor */
    const char *retype;   /* relabel this 2-byte tensor as I16 */
    const char *poke;     /* set one element of this tensor to poke_bits (2- or 4-byte) */
    uint64_t poke_el;
    uint32_t poke_bits;
} variant;

/* Writes `src` as one model.safetensors (plus config.json) in dst, changed per v. */
static void write_variant(const char *src, const char *dst, const variant *v,
                          void (*edit)(const char *name, nlsr_dtype dt, unsigned char *raw,
                                       uint64_t n, void *u),
                          void *u)
{
    nlsr_ckpt *ck = open_ck(src);
    mkdir(dst, 0755);
    st_wtensor *wt = calloc(ck->n, sizeof *wt);
    uint64_t (*shapes)[2] = calloc(ck->n, sizeof *shapes);
    size_t k = 0;
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = ck->t[i].t;
        if (v && v->drop && strcmp(v->drop, t->name) == 0) continue;
        wt[k] = (st_wtensor){t->name, t->dtype, t->ndim, t->shape};
        if (v && v->reshape && strcmp(v->reshape, t->name) == 0) {
            shapes[k][0] = t->shape[1];
            shapes[k][1] = t->shape[0];
            wt[k].shape = shapes[k];
        }
        if (v && v->retype && strcmp(v->retype, t->name) == 0) wt[k].dtype = NLSR_DTYPE_I16;
        k++;
    }
    char *file = NULL;
    if (asprintf(&file, "%s/model.safetensors", dst) < 0) abort();
    nlsr_err e = {0};
    st_writer *w = NULL;
    if (st_writer_begin(file, wt, k, NULL, 0, &w, &e) < 0) abort();
    for (size_t i = 0; i < k; i++) {
        nlsr_dtype dt;
        uint64_t n;
        unsigned char *b = tensor_bytes(ck, wt[i].name, &dt, &n);
        size_t es = nlsr_dtype_size(dt);
        if (v && v->poke && strcmp(v->poke, wt[i].name) == 0) {
            if (es == 2) {
                uint16_t x = (uint16_t)v->poke_bits;
                memcpy(b + v->poke_el * 2, &x, 2);
            } else {
                memcpy(b + v->poke_el * 4, &v->poke_bits, 4);
            }
        }
        if (edit) edit(wt[i].name, dt, b, n, u);
        if (st_writer_write(w, b, n * es) < 0) abort();
        free(b);
    }
    if (st_writer_commit(w) < 0) abort();
    char *cfg_src = NULL, *cfg_dst = NULL;
    if (asprintf(&cfg_src, "%s/config.json", src) < 0 ||
        asprintf(&cfg_dst, "%s/config.json", dst) < 0)
        abort();
    if (nlsr_exists(cfg_src) && !nlsr_exists(cfg_dst)) nlsr_copy_file(cfg_src, cfg_dst, &e);
    free(cfg_src);
    free(cfg_dst);
    free(file);
    free(wt);
    free(shapes);
    nlsr_ckpt_free(ck);
}

/* Turns aligned target tensors into the reference e_s = a + beta (a - b) (step 1). */
static void make_reference(const char *name, nlsr_dtype dt, unsigned char *raw, uint64_t n,
                           void *u)
{
    nlsr_ckpt *base = u;
    st_tensor probe = {0};
    probe.name = (char *)name;
    probe.ndim = 2;
    if (!nlsr_is_target(&probe, NULL, 0)) return;
    nlsr_dtype db;
    unsigned char *rb = tensor_bytes(base, name, &db, NULL);
    for (uint64_t j = 0; j < n; j++) {
        float a, b;
        nlsr_to_f32(dt, raw + j * 2, &a, 1);
        nlsr_to_f32(db, rb + j * 2, &b, 1);
        float e = a + 0.9f * (a - b);
        nlsr_from_f32(dt, &e, raw + j * 2, 1);
    }
    free(rb);
}

static void test_reference_mode(void)
{
    char *refdir = wpath("reference"), *out = wpath("ref_out"), *rep = wpath("ref_out.json");
    nlsr_ckpt *base = open_ck(SFT);
    write_variant(ALIGNED, refdir, NULL, make_reference, base);
    nlsr_ckpt_free(base);
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = quiet_params();
    p.report_path = rep;
    ASSERT_EQ_I(nlsr_run(ctx, SFT, NULL, refdir, FT, out, &p), 0);
    end_ctx(ctx);
    char *run_out = wpath("run_adaptive");
    ASSERT_TRUE(folders_equal(run_out, out));
    check_expected(EXP_ADAPTIVE, rep, out);
    free(run_out);
    free(refdir);
    free(out);
    free(rep);
}

/* ---- refusals ----------------------------------------------------------------------------- */

typedef struct job {
    int kind; /* 0 run, 1 prepare, 2 apply */
    const char *base, *aligned, *ft, *patches, *out;
    int force;
} job;

static int do_job(const job *j, char *msg, size_t cap)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = quiet_params();
    p.force = j->force;
    int rc = j->kind == 0   ? nlsr_run(ctx, j->base, j->aligned, NULL, j->ft, j->out, &p)
             : j->kind == 1 ? nlsr_prepare(ctx, j->base, j->aligned, NULL, j->out, &p)
                            : nlsr_apply(ctx, j->patches, j->ft, j->out, &p);
    snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    end_ctx(ctx);
    return rc;
}

/* The job fails with `code`, its message names `needle`, and `out` was not created. */
static void expect_refused(const job *j, int code, const char *needle)
{
    char msg[1100];
    int existed = nlsr_exists(j->out);
    int rc = do_job(j, msg, sizeof msg);
    if (rc != code) FAILF("expected %s, got %d: %s", nlsr_strerror(code), rc, msg);
    if (needle) ASSERT_CONTAINS(msg, needle);
    if (!existed) ASSERT_TRUE(!nlsr_exists(j->out));
    ASSERT_TRUE(no_leftovers());
}

static void test_damaged_patch(void)
{
    char *patch = wpath("fx.nlsrp");
    if (!nlsr_exists(patch)) {
        job j = {1, SFT, ALIGNED, NULL, NULL, patch, 0};
        char msg[1100];
        ASSERT_EQ_I(do_job(&j, msg, sizeof msg), 0);
    }
    size_t n = 0;
    unsigned char *orig = read_all(patch, &n);
    ASSERT_TRUE(orig && n > 100);
    if (!orig) return;
    char *bad = wpath("damaged.nlsrp"), *out = wpath("damaged_out");
    /* Every byte of the preamble and trailer, and 300 bytes spread over the rest. */
    size_t pos[400], np = 0;
    for (size_t i = 0; i < 16; i++) pos[np++] = i;
    for (size_t i = n - 32; i < n; i++) pos[np++] = i;
    for (size_t i = 0; i < 300; i++) pos[np++] = 16 + (i * (n - 48)) / 300;
    int checksum = 0;
    for (size_t k = 0; k < np; k++) {
        orig[pos[k]] ^= 0x10;
        int fd = open(bad, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ASSERT_TRUE(fd >= 0 && write(fd, orig, n) == (ssize_t)n);
        close(fd);
        orig[pos[k]] ^= 0x10;
        job j = {2, NULL, NULL, FT, bad, out, 0};
        char msg[1100];
        int rc = do_job(&j, msg, sizeof msg);
        if (rc != NLSR_E_CHECKSUM && rc != NLSR_E_FORMAT)
            FAILF("byte %zu flipped: rc %d (%s)", pos[k], rc, msg);
        else ASSERT_CONTAINS(msg, bad);
        checksum += rc == NLSR_E_CHECKSUM;
        ASSERT_TRUE(!nlsr_exists(out));
    }
    ASSERT_TRUE(checksum > 250);
    /* Truncated. */
    int fd = open(bad, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_TRUE(fd >= 0 && write(fd, orig, n - 1) == (ssize_t)(n - 1));
    close(fd);
    job j = {2, NULL, NULL, FT, bad, out, 0};
    char msg[1100];
    ASSERT_TRUE(do_job(&j, msg, sizeof msg) < 0);
    ASSERT_TRUE(!nlsr_exists(out));
    ASSERT_TRUE(no_leftovers());
    free(orig);
    free(bad);
    free(out);
    free(patch);
}

/* A small model of another shape: one q_proj [8, 8] F32 and a norm. */
static void write_small_model(const char *dir, float scale)
{
    mkdir(dir, 0755);
    static const uint64_t sq[2] = {8, 8}, sn[1] = {8};
    st_wtensor wt[2] = {{"model.layers.0.self_attn.q_proj.weight", NLSR_DTYPE_F32, 2, sq},
                        {"model.norm.weight", NLSR_DTYPE_F32, 1, sn}};
    char *file = NULL;
    if (asprintf(&file, "%s/model.safetensors", dir) < 0) abort();
    nlsr_err e = {0};
    st_writer *w = NULL;
    if (st_writer_begin(file, wt, 2, NULL, 0, &w, &e) < 0) abort();
    float v[64];
    for (int i = 0; i < 64; i++) v[i] = scale * (float)((i * 37) % 17 - 8) / 8.0f;
    st_writer_write(w, v, sizeof v);
    st_writer_write(w, v, 8 * sizeof(float));
    if (st_writer_commit(w) < 0) abort();
    free(file);
}

static void test_other_model(void)
{
    char *sb = wpath("small_base"), *sa = wpath("small_aligned"), *sp = wpath("small.nlsrp"),
         *out = wpath("other_out"), *fxp = wpath("fx.nlsrp");
    write_small_model(sb, 1.0f);
    write_small_model(sa, 1.5f);
    char msg[1100];
    job prep = {1, sb, sa, NULL, NULL, sp, 0};
    ASSERT_EQ_I(do_job(&prep, msg, sizeof msg), 0);
    /* The small model's patches on the fixture's fine-tune, and the other way round. */
    job a1 = {2, NULL, NULL, FT, sp, out, 0};
    expect_refused(&a1, NLSR_E_MISMATCH, sp);
    if (!nlsr_exists(fxp)) {
        job j = {1, SFT, ALIGNED, NULL, NULL, fxp, 0};
        ASSERT_EQ_I(do_job(&j, msg, sizeof msg), 0);
    }
    job a2 = {2, NULL, NULL, sa, fxp, out, 0};
    expect_refused(&a2, NLSR_E_MISMATCH, fxp);
    /* run with checkpoints of different models. */
    job r1 = {0, SFT, ALIGNED, sa, NULL, out, 0};
    expect_refused(&r1, NLSR_E_MISMATCH, sa);
    job r2 = {0, sb, ALIGNED, FT, NULL, out, 0};
    expect_refused(&r2, NLSR_E_MISMATCH, sb);
    /* A fine-tune whose one tensor has swapped dimensions. */
    char *ftv = wpath("ft_reshaped");
    variant v = {0};
    v.reshape = "model.layers.1.mlp.up_proj.weight";
    write_variant(FT, ftv, &v, NULL, NULL);
    job a3 = {2, NULL, NULL, ftv, fxp, out, 0};
    expect_refused(&a3, NLSR_E_MISMATCH, "model.layers.1.mlp.up_proj.weight");
    free(ftv);
    free(sb);
    free(sa);
    free(sp);
    free(out);
    free(fxp);
}

static void test_bad_inputs(void)
{
    char *out = wpath("bad_out"), *fxp = wpath("fx.nlsrp"), msg[1100];
    if (!nlsr_exists(fxp)) {
        job j = {1, SFT, ALIGNED, NULL, NULL, fxp, 0};
        ASSERT_EQ_I(do_job(&j, msg, sizeof msg), 0);
    }
    const char *tq = "model.layers.2.self_attn.k_proj.weight";
    struct {
        const char *tag;
        const char *which; /* "ft", "aligned", "base" */
        variant v;
        int code;
    } cases[] = {
        {"ft_missing", "ft", {.drop = "model.layers.2.self_attn.k_proj.weight"}, NLSR_E_MISMATCH},
        {"ft_shape", "ft", {.reshape = "model.layers.2.self_attn.k_proj.weight"}, NLSR_E_MISMATCH},
        {"ft_dtype", "ft", {.retype = "model.layers.2.self_attn.k_proj.weight"}, NLSR_E_DTYPE},
        {"ft_nan", "ft", {.poke = "model.layers.2.self_attn.k_proj.weight", .poke_el = 777,
                          .poke_bits = 0x7FC0}, NLSR_E_VALUE},
        {"al_inf", "aligned", {.poke = "model.layers.2.self_attn.k_proj.weight", .poke_el = 777,
                               .poke_bits = 0xFF80}, NLSR_E_VALUE},
        {"al_missing", "aligned", {.drop = "model.layers.2.self_attn.k_proj.weight"},
         NLSR_E_MISMATCH},
        {"base_missing", "base", {.drop = "model.layers.2.self_attn.k_proj.weight"},
         NLSR_E_MISMATCH},
        {"base_nan", "base", {.poke = "model.layers.2.self_attn.k_proj.weight", .poke_el = 5,
                              .poke_bits = 0x7FC1}, NLSR_E_VALUE},
        {"base_dtype", "base", {.retype = "model.layers.2.self_attn.k_proj.weight"},
         NLSR_E_DTYPE},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char *dir = wpath(cases[c].tag);
        const char *src = strcmp(cases[c].which, "ft") == 0        ? FT
                          : strcmp(cases[c].which, "aligned") == 0 ? ALIGNED
                                                                   : SFT;
        write_variant(src, dir, &cases[c].v, NULL, NULL);
        const char *b = strcmp(cases[c].which, "base") == 0 ? dir : SFT;
        const char *a = strcmp(cases[c].which, "aligned") == 0 ? dir : ALIGNED;
        const char *t = strcmp(cases[c].which, "ft") == 0 ? dir : FT;
        job r = {0, b, a, t, NULL, out, 0};
        expect_refused(&r, cases[c].code, tq);
        if (strcmp(cases[c].which, "ft") == 0) {
            job ap = {2, NULL, NULL, t, fxp, out, 0};
            expect_refused(&ap, cases[c].code, tq);
        } else {
            char *pp = wpath("bad.nlsrp");
            job pr = {1, b, a, NULL, NULL, pp, 0};
            expect_refused(&pr, cases[c].code, tq);
            ASSERT_TRUE(!nlsr_exists(pp));
            free(pp);
        }
        free(dir);
    }
    /* Non-finite messages name the element. */
    char *dir = wpath("ft_nan");
    job r = {0, SFT, ALIGNED, dir, NULL, out, 0};
    do_job(&r, msg, sizeof msg);
    ASSERT_CONTAINS(msg, "element 777");
    free(dir);

    /* Outputs on inputs, and existing outputs. */
    char *copy = wpath("ft_copy");
    write_variant(FT, copy, NULL, NULL, NULL);
    char *inside = NULL;
    if (asprintf(&inside, "%s/realigned", copy) < 0) abort();
    job o1 = {0, SFT, ALIGNED, copy, NULL, copy, 1};
    expect_refused(&o1, NLSR_E_USAGE, copy);
    job o2 = {0, SFT, ALIGNED, copy, NULL, inside, 0};
    expect_refused(&o2, NLSR_E_USAGE, copy);
    job o3 = {0, SFT, ALIGNED, copy, NULL, root, 1}; /* the input inside the output */
    expect_refused(&o3, NLSR_E_USAGE, copy);
    job o4 = {2, NULL, NULL, copy, fxp, copy, 1};
    expect_refused(&o4, NLSR_E_USAGE, copy);
    char *fxp_out = NULL;
    if (asprintf(&fxp_out, "%s/model.safetensors", copy) < 0) abort();
    job o5 = {1, SFT, copy, NULL, NULL, fxp_out, 1}; /* the patch over an input's shard */
    expect_refused(&o5, NLSR_E_USAGE, NULL);
    ASSERT_TRUE(nlsr_exists(fxp_out));
    nlsr_ckpt *still = open_ck(copy); /* the input survived every attempt */
    nlsr_ckpt_free(still);
    /* An existing output: refused without force, replaced with it. */
    mkdir(out, 0755);
    job e1 = {0, SFT, ALIGNED, FT, NULL, out, 0};
    expect_refused(&e1, NLSR_E_EXISTS, out);
    job e2 = {0, SFT, ALIGNED, FT, NULL, out, 1};
    ASSERT_EQ_I(do_job(&e2, msg, sizeof msg), 0);
    char *run_out = wpath("run_adaptive");
    ASSERT_TRUE(folders_equal(run_out, out));
    job e3 = {1, SFT, ALIGNED, NULL, NULL, fxp, 0};
    expect_refused(&e3, NLSR_E_EXISTS, fxp);
    ASSERT_TRUE(no_leftovers());
    free(run_out);
    free(fxp_out);
    free(inside);
    free(copy);
    free(out);
    free(fxp);
}

static void test_sparsity_edges(void)
{
    /* sparsity 1: k = n, empty masks, nothing changes even with --select all. */
    char *out = wpath("sp1"), *rep = wpath("sp1.json");
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = quiet_params();
    p.sparsity = 1.0;
    p.select.mode = NLSR_SELECT_ALL;
    p.report_path = rep;
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, out, &p), 0);
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(FT, out));
    cJSON *j = load_json(rep);
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(j, "modules")) {
        ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(m, "mask_count")->valuedouble, 0);
        /* Empty masks: similarity 0, a number (cJSON reads null as 0 too). */
        const cJSON *sim = cJSON_GetObjectItemCaseSensitive(m, "similarity");
        ASSERT_TRUE(cJSON_IsNumber(sim));
        ASSERT_EQ_D(sim->valuedouble, 0);
    }
    cJSON_Delete(j);
    /* sparsity 0: k = 0, every score above the smallest is masked; streamed the same, and the
     * output is METHOD.md's. */
    char *out0 = wpath("sp0"), *p0 = wpath("sp0.nlsrp"), *p0s = wpath("sp0s.nlsrp");
    ctx = new_ctx();
    p = quiet_params();
    p.sparsity = 0.0;
    ASSERT_EQ_I(nlsr_prepare(ctx, SFT, ALIGNED, NULL, p0, &p), 0);
    nlsr_ckpt *b = open_ck(SFT), *a = open_ck(ALIGNED);
    nlsr_full_tuning t = {1, 1, 0, 0};
    ASSERT_EQ_I(nlsr_full_prepare(ctx, b, a, 0, p0s, &p, &t, NULL), 0);
    ASSERT_TRUE(files_equal(p0, p0s));
    nlsr_ckpt_free(a);
    nlsr_ckpt_free(b);
    char *rep0 = wpath("sp0.json");
    p.report_path = rep0;
    ASSERT_EQ_I(nlsr_apply(ctx, p0, FT, out0, &p), 0);
    end_ctx(ctx);
    /* The realigned bytes, masks, similarities and decisions at sparsity 0, as computed here. */
    check_against_reimplementation(FT, out0, rep0, NLSR_SELECT_ADAPTIVE, 0.0);
    free(rep0);
    free(out);
    free(rep);
    free(out0);
    free(p0);
    free(p0s);
}

/* ---- the program -------------------------------------------------------------------------- */


static void test_cli(void)
{
    char *out = wpath("cli_out"), *patch = wpath("cli.nlsrp"), *out2 = wpath("cli_out2"), *txt;
    const char *run[] = {"run", "--base", SFT, "--aligned", ALIGNED, "--finetuned", FT,
                         "--out", out, "--json", "-q", "--select=all", NULL};
    ASSERT_EQ_I(cli(run, &txt), 0);
    cJSON *j = cJSON_Parse(txt);
    ASSERT_TRUE(j != NULL);
    const cJSON *sum = cJSON_GetObjectItemCaseSensitive(j, "summary");
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "modules")->valuedouble, 21);
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "patched")->valuedouble, 21);
    ASSERT_TRUE(cJSON_GetObjectItemCaseSensitive(sum, "bytes_read")->valuedouble > 0);
    ASSERT_TRUE(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(sum, "io_backend")));
    const cJSON *m0 = cJSON_GetObjectItemCaseSensitive(j, "modules")->child;
    ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(m0, "draw")));
    cJSON_Delete(j);
    free(txt);
    const char *prep[] = {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", patch, "-q",
                          NULL};
    ASSERT_EQ_I(cli(prep, NULL), 0);
    const char *app[] = {"apply", "--patches", patch, "--finetuned", FT, "--out", out2,
                         "--select", "all", "-q", NULL};
    ASSERT_EQ_I(cli(app, NULL), 0);
    ASSERT_TRUE(folders_equal(out, out2));
    /* Every I/O backend gives the same output. */
    const char *ios[] = {"pread", "mmap", "io_uring"};
    for (int k = 0; k < 3; k++) {
        char *o = wpath(ios[k]);
        const char *r[] = {"run", "--base", SFT, "--aligned", ALIGNED, "--finetuned", FT,
                           "--out", o, "--select", "all", "-q", "--io", ios[k], NULL};
        ASSERT_EQ_I(cli(r, NULL), 0);
        ASSERT_TRUE(folders_equal(out, o));
        free(o);
    }
    /* A reference written by `nlsr amplify` stands in for the aligned model. */
    char *ref = wpath("amplified"), *out3 = wpath("cli_out3");
    const char *amp[] = {"amplify", "--base", SFT, "--aligned", ALIGNED, "--out", ref, "-q",
                         NULL};
    ASSERT_EQ_I(cli(amp, NULL), 0);
    const char *rr[] = {"run", "--base", SFT, "--reference", ref, "--finetuned", FT, "--out",
                        out3, "--select", "all", "-q", NULL};
    ASSERT_EQ_I(cli(rr, NULL), 0);
    ASSERT_TRUE(folders_equal(out, out3));
    free(ref);
    free(out3);
    /* Usage errors exit 2; refused inputs exit 1. */
    const char *u1[] = {"apply", "--patches", patch, "--finetuned", FT, "--out", out2,
                        "--beta", "0.5", NULL};
    ASSERT_EQ_I(cli(u1, NULL), 2);
    const char *u2[] = {"run", "--base", SFT, "--finetuned", FT, "--out", out2, NULL};
    ASSERT_EQ_I(cli(u2, NULL), 2);
    const char *u3[] = {"run", "--base", SFT, "--aligned", ALIGNED, "--finetuned", FT, "--out",
                        out2, "--select", "some", NULL};
    ASSERT_EQ_I(cli(u3, NULL), 2);
    const char *b1[] = {"apply", "--patches", patch, "--finetuned", FT, "--out", out2, NULL};
    ASSERT_EQ_I(cli(b1, NULL), 1); /* exists */
    const char *b2[] = {"apply", "--patches", FX "/aligned/model.safetensors", "--finetuned", FT,
                        "--out", out, "--force", NULL};
    ASSERT_EQ_I(cli(b2, NULL), 1); /* not a patch file */
    free(out);
    free(out2);
    free(patch);
}


/* ---- run's second compute thread ------------------------------------------------------------ */

static void synth_role(const char *out, nlsr_synth_role role)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_synth_params sp = NLSR_SYNTH_PARAMS_DEFAULT;
    sp.role = role;
    sp.seed = 3;
    sp.shard_size = 300000; /* three shards; a layer's tensors in two of them */
    sp.force = 1;
    ASSERT_EQ_I(nlsr_synth(ctx, &sp, out), 0);
    end_ctx(ctx);
}

/* `run` over (b, a, t) into out with NLSR_RUN_PLAN = plan (NULL: unset) and, if one_thread,
 * NLSR_RUN_ONE_THREAD; the report into *rep (caller frees), the error into msg. */
static int run_env(const char *b, const char *a, const char *t, const char *out, const char *plan,
                   int one_thread, cJSON **rep, char *msg, size_t cap)
{
    char *rp = wpath("lanes_report.json");
    unlink(rp);
    if (plan) setenv("NLSR_RUN_PLAN", plan, 1);
    if (one_thread) setenv("NLSR_RUN_ONE_THREAD", "1", 1);
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = quiet_params();
    p.select.mode = NLSR_SELECT_ADAPTIVE;
    p.report_path = rp;
    int rc = nlsr_run(ctx, b, a, NULL, t, out, &p);
    snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    end_ctx(ctx);
    unsetenv("NLSR_RUN_PLAN");
    unsetenv("NLSR_RUN_ONE_THREAD");
    if (rep) *rep = rc == 0 ? load_json(rp) : NULL;
    free(rp);
    return rc;
}

/* Modules of 22272 elements (the tiny preset's MLP) are computed in two halves by two threads
 * (passes 1, 2 and 3, and phase B's merge of a kept patch); the attention modules (9216) by one. Every plan gives the patch-file plan's bytes and report,
 * and a value that is not finite in the second half is named as one thread names it. */
static void test_run_lanes(void)
{
    char *b = wpath("ln_base"), *a = wpath("ln_aligned"), *t = wpath("ln_ft");
    synth_role(b, NLSR_SYNTH_BASE);
    synth_role(a, NLSR_SYNTH_ALIGNED);
    synth_role(t, NLSR_SYNTH_FINETUNED);
    char msg[1100], msg2[1100];
    char *ref = wpath("ln_ref"), *out = wpath("ln_out");
    cJSON *rj = NULL, *oj = NULL;
    ASSERT_EQ_I(run_env(b, a, t, ref, "patch-file", 0, &rj, msg, sizeof msg), 0);
    struct {
        const char *plan;
        int one_thread;
    } v[] = {{NULL, 0},   {NULL, 1},           {"recompute", 0},     {"recompute", 1},
             {"rows", 0}, {"rows", 1}, {"rows-recompute", 0}, {"rows-recompute", 1}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        ASSERT_EQ_I(run_env(b, a, t, out, v[i].plan, v[i].one_thread, &oj, msg, sizeof msg), 0);
        ASSERT_TRUE(folders_equal(ref, out));
        ASSERT_TRUE(rj && oj && same_modules(rj, oj));
        const cJSON *pl = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(oj, "summary"), "plan");
        int rows = v[i].plan && strncmp(v[i].plan, "rows", 4) == 0;
        ASSERT_TRUE(cJSON_IsString(pl) &&
                    strcmp(pl->valuestring, rows ? "row blocks" : "single pass") == 0);
        cJSON_Delete(oj);
        oj = NULL;
        (void)nlsr_tree_remove(out);
    }
    /* Pass 3 on one thread while passes 1 and 2 take two (what run does when pass 3's side
     * buffers find no room in the budget): the same bytes and report. */
    setenv("NLSR_RUN_MASK_ONE_THREAD", "1", 1);
    ASSERT_EQ_I(run_env(b, a, t, out, NULL, 0, &oj, msg, sizeof msg), 0);
    unsetenv("NLSR_RUN_MASK_ONE_THREAD");
    ASSERT_TRUE(folders_equal(ref, out));
    ASSERT_TRUE(rj && oj && same_modules(rj, oj));
    cJSON_Delete(oj);
    oj = NULL;
    (void)nlsr_tree_remove(out);
    /* The patched modules must include a two-lane one, or this test proves little. */
    int lanes_patched = 0;
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(rj, "modules");
    for (const cJSON *m = mods ? mods->child : NULL; m; m = m->next)
        lanes_patched += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched")) &&
                         cJSON_GetObjectItemCaseSensitive(m, "numel")->valuedouble >= 16384;
    ASSERT_TRUE(lanes_patched > 0);
    cJSON_Delete(rj);
    /* A NaN or an infinity at element 20000 (the second half) of an MLP module. */
    const char *tn = "model.layers.1.mlp.up_proj.weight";
    const char *which[] = {"base", "aligned", "ft"};
    for (int w = 0; w < 3; w++) {
        char *bad = wpath("ln_bad");
        variant vv = {0};
        vv.poke = tn;
        vv.poke_el = 20000;
        vv.poke_bits = w == 1 ? 0xFF80u : 0x7FC0u;
        write_variant(w == 0 ? b : w == 1 ? a : t, bad, &vv, NULL, NULL);
        const char *bb = w == 0 ? bad : b, *aa = w == 1 ? bad : a, *tt = w == 2 ? bad : t;
        ASSERT_EQ_I(run_env(bb, aa, tt, out, NULL, 0, NULL, msg, sizeof msg), NLSR_E_VALUE);
        ASSERT_CONTAINS(msg, tn);
        ASSERT_CONTAINS(msg, "element 20000 ");
        ASSERT_CONTAINS(msg, which[w] == which[2] ? "in finetuned" : which[w]);
        ASSERT_EQ_I(run_env(bb, aa, tt, out, NULL, 1, NULL, msg2, sizeof msg2), NLSR_E_VALUE);
        ASSERT_STR_EQ(msg, msg2);
        /* In row blocks (the element in the module's second block), one and two threads. */
        for (int one = 0; one < 2; one++) {
            ASSERT_EQ_I(run_env(bb, aa, tt, out, "rows", one, NULL, msg2, sizeof msg2),
                        NLSR_E_VALUE);
            ASSERT_STR_EQ(msg, msg2);
        }
        ASSERT_TRUE(!nlsr_exists(out));
        (void)nlsr_tree_remove(bad);
        free(bad);
    }
    ASSERT_TRUE(no_leftovers());
    free(b);
    free(a);
    free(t);
    free(ref);
    free(out);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/nlsr-test-realign-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_xxh64_vectors);
    RUN_TEST(test_run_expected);
    RUN_TEST(test_prepare_apply_equals_run);
    RUN_TEST(test_memory_plans);
    RUN_HOOK_TEST(test_run_plans);
    RUN_HOOK_TEST(test_run_lanes);
    RUN_TEST(test_dtype_variants);
    RUN_TEST(test_reference_mode);
    RUN_TEST(test_damaged_patch);
    RUN_TEST(test_other_model);
    RUN_TEST(test_bad_inputs);
    RUN_TEST(test_sparsity_edges);
    RUN_TEST(test_cli);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
