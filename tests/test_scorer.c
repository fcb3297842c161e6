/* SPDX-License-Identifier: Apache-2.0 */
/* Step 2's scorers in the full-weight pipeline: prepare / run with --scorer lowrank
 * and --scorer wanda.
 *
 *  - lowrank with X = I at full rank is the identity: the patch's masks and values are the
 *    magnitude ones bit for bit on the fixtures, and so is the realigned output; the same under
 *    every memory plan, and with activations when r = out;
 *  - an F32 delta of exact rank 4 (test-built checkpoints, one module on the randomized SVD and
 *    one on the exact one): the rank-4 mask agrees with the magnitude mask on >= 99.99%;
 *  - determinism: the same seed gives the same patch file, whatever the block size and memory
 *    plan; another seed changes only the header's seed and rounding;
 *  - wanda (per row and per matrix) from activation rows (BF16, F32, 3-D) and from Gram
 *    matrices, against an independent computation here;
 *  - activation files with wrong names, missing modules, wrong widths or dtypes, non-finite
 *    values; a budget too small; LoRA adapters: refused by name, nothing written;
 *  - the patch header and the reports record the scorer; the CLI's options and `nlsr plan`.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
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
#include "../src/io/safetensors.h"
#include "../src/jobs/realign_full.h"
#include "nlsr.h"
#include "test.h"
#include "test_cli.h"
#include "test_files.h"

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

static char root[4096];

/* ---- helpers ------------------------------------------------------------------------------ */

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) abort();
    return p;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double gauss(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 1.0) * 0x1p-53;
    double u2 = (double)(rng_next(s) >> 11) * 0x1p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static nlsr_ctx *new_ctx(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    return ctx;
}

static void end_ctx(nlsr_ctx *ctx)
{
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
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




static int no_leftovers(void)
{
    DIR *d = opendir(root);
    int ok = 1;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".nlsr-tmp-")) {
            fprintf(stderr, "  leftover %s\n", de->d_name);
            ok = 0;
        }
    if (d) closedir(d);
    return ok;
}

static cJSON *load_json(const char *path)
{
    size_t n = 0;
    unsigned char *t = read_all(path, &n);
    cJSON *j = t ? cJSON_ParseWithLength((const char *)t, n) : NULL;
    free(t);
    return j;
}

/* A safetensors file from tensors given in f32, stored as `dt` (F32, BF16 or F16). */
typedef struct wt {
    const char *name;
    nlsr_dtype dt;
    int ndim;
    uint64_t shape[3];
    const float *v;
} wt;

static void write_st(const char *path, const wt *t, size_t n, const char *meta_key,
                     const char *meta_val)
{
    st_wtensor *w = xcalloc(n, sizeof *w);
    for (size_t i = 0; i < n; i++) w[i] = (st_wtensor){t[i].name, t[i].dt, t[i].ndim, t[i].shape};
    st_meta meta = {(char *)meta_key, (char *)meta_val};
    st_writer *sw = NULL;
    nlsr_err e = {0, ""};
    if (st_writer_begin(path, w, n, meta_key ? &meta : NULL, meta_key ? 1 : 0, &sw, &e) < 0) {
        fprintf(stderr, "write %s: %s\n", path, e.msg);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t cnt = 1;
        for (int d = 0; d < t[i].ndim; d++) cnt *= t[i].shape[d];
        size_t es = nlsr_dtype_size(t[i].dt);
        unsigned char *buf = xcalloc((size_t)cnt, es);
        nlsr_from_f32(t[i].dt, t[i].v, buf, (size_t)cnt);
        if (st_writer_write(sw, buf, (size_t)cnt * es) < 0) abort();
        free(buf);
    }
    if (st_writer_commit(sw) < 0) abort();
    free(w);
}

/* A tensor's values as f32 (exact for float dtypes up to f32). */
static float *tensor_f32(const nlsr_ckpt *ck, const char *name, uint64_t *numel)
{
    size_t i;
    if (nlsr_ckpt_find(ck, name, &i) != 0) abort();
    nlsr_tensor_info ti;
    nlsr_ckpt_tensor_info(ck, i, &ti);
    double *d = xcalloc((size_t)ti.numel, sizeof *d);
    nlsr_ctx *ctx = nlsr_ctx_create();
    if (nlsr_ckpt_read_f64(ctx, ck, i, 0, ti.numel, d) < 0) abort();
    nlsr_ctx_free(ctx);
    float *f = xcalloc((size_t)ti.numel, sizeof *f);
    for (uint64_t k = 0; k < ti.numel; k++) f[k] = (float)d[k];
    free(d);
    if (numel) *numel = ti.numel;
    return f;
}

/* The masks (0/1 per element) and, per masked element, the stored reference and base bytes of
 * every module of a full patch file. */
typedef struct pmask {
    size_t n;
    char **name;
    uint64_t *numel;
    uint8_t **mask;
    unsigned char **vals; /* per masked element in index order: ref bytes then base bytes */
    size_t *vlen;
    cJSON *params;        /* a copy of the header's params */
} pmask;

static void pmask_free(pmask *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->name[i]);
        free(m->mask[i]);
        free(m->vals[i]);
    }
    free(m->name);
    free(m->numel);
    free(m->mask);
    free(m->vals);
    free(m->vlen);
    cJSON_Delete(m->params);
    memset(m, 0, sizeof *m);
}

static int read_masks(const char *path, pmask *out)
{
    memset(out, 0, sizeof *out);
    nlsr_ctx *ctx = new_ctx();
    nlsr_pf_reader *pf = NULL;
    if (nlsr_pf_open(ctx, path, &pf) < 0) {
        fprintf(stderr, "open %s: %s\n", path, nlsr_ctx_error(ctx));
        nlsr_ctx_free(ctx);
        return -1;
    }
    out->n = pf->nmodules;
    out->name = xcalloc(out->n, sizeof *out->name);
    out->numel = xcalloc(out->n, sizeof *out->numel);
    out->mask = xcalloc(out->n, sizeof *out->mask);
    out->vals = xcalloc(out->n, sizeof *out->vals);
    out->vlen = xcalloc(out->n, sizeof *out->vlen);
    out->params = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(pf->header, "params"), 1);
    for (size_t i = 0; i < pf->nmodules; i++) {
        const nlsr_pf_tensor *t = &pf->modules[i].t[0];
        out->name[i] = strdup(pf->modules[i].name);
        out->numel[i] = t->numel;
        out->mask[i] = xcalloc((size_t)t->numel, 1);
        size_t rs = nlsr_dtype_size(t->ref_dtype);
        size_t bs = t->has_base ? nlsr_dtype_size(t->base_dtype) : 0;
        out->vals[i] = xcalloc((size_t)t->mask_count + 1, rs + bs);
        for (size_t b = 0; b < t->nblocks; b++) {
            nlsr_pf_view v;
            if (nlsr_pf_read_block(pf, t, b, &v) < 0) abort();
            for (size_t j = 0; j < v.m; j++) {
                out->mask[i][v.idx[j]] = 1;
                memcpy(out->vals[i] + out->vlen[i], (const unsigned char *)v.ref + j * rs, rs);
                out->vlen[i] += rs;
                if (bs) {
                    memcpy(out->vals[i] + out->vlen[i], (const unsigned char *)v.base + j * bs, bs);
                    out->vlen[i] += bs;
                }
            }
        }
    }
    nlsr_pf_close(pf);
    end_ctx(ctx);
    return 0;
}

/* Masks and values identical, module by module. */
static int pmask_equal(const pmask *a, const pmask *b)
{
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(a->name[i], b->name[i]) != 0 || a->numel[i] != b->numel[i] ||
            memcmp(a->mask[i], b->mask[i], (size_t)a->numel[i]) != 0 || a->vlen[i] != b->vlen[i] ||
            memcmp(a->vals[i], b->vals[i], a->vlen[i]) != 0) {
            fprintf(stderr, "  module %s differs\n", a->name[i]);
            return 0;
        }
    }
    return 1;
}

static double agreement(const uint8_t *a, const uint8_t *b, uint64_t n)
{
    uint64_t same = 0;
    for (uint64_t i = 0; i < n; i++) same += a[i] == b[i];
    return (double)same / (double)n;
}

static int prepare_with(const char *base, const char *aligned, const char *reference,
                        const char *out, const nlsr_realign_params *p, const char *report,
                        char *err, size_t errlen)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params q = *p;
    q.report_path = report;
    int rc = nlsr_prepare(ctx, base, aligned, reference, out, &q);
    if (err) snprintf(err, errlen, "%s", nlsr_ctx_error(ctx));
    if (rc < 0 && !err) fprintf(stderr, "prepare: %s\n", nlsr_ctx_error(ctx));
    end_ctx(ctx);
    return rc;
}

static nlsr_realign_params lowrank_params(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.scorer.kind = NLSR_SCORER_LOWRANK;
    return p;
}


/* ---- the identity -------------------------------------------------------------------------- */

/* X = I at full rank: no projection, the magnitude masks and values bit for bit, under every
 * memory plan, and the same realigned model. */
static void test_identity_fixtures(void)
{
    char *mag = wpath("id_mag.nlsrp"), *lr = wpath("id_lr.nlsrp");
    char *rmag = wpath("id_mag.json"), *rlr = wpath("id_lr.json");
    nlsr_realign_params pm = NLSR_REALIGN_PARAMS_DEFAULT, pl = lowrank_params();
    pl.scorer.rank_mode = NLSR_RANK_MODE_DIRECT; /* rank fraction 1: r = min(out, in) */
    ASSERT_EQ_I(prepare_with(SFT, ALIGNED, NULL, mag, &pm, rmag, NULL, 0), 0);
    ASSERT_EQ_I(prepare_with(SFT, ALIGNED, NULL, lr, &pl, rlr, NULL, 0), 0);
    pmask a, b;
    ASSERT_EQ_I(read_masks(mag, &a), 0);
    ASSERT_EQ_I(read_masks(lr, &b), 0);
    ASSERT_EQ_U(a.n, 21);
    ASSERT_TRUE(pmask_equal(&a, &b));
    /* The header records each scorer. */
    const cJSON *sa = cJSON_GetObjectItemCaseSensitive(a.params, "scorer");
    const cJSON *sb = cJSON_GetObjectItemCaseSensitive(b.params, "scorer");
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(sa, "name")->valuestring, "magnitude");
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(sb, "name")->valuestring, "lowrank");
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(sb, "rank_reading")->valuestring, "direct");
    ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(sb, "rank")));
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sb, "rank_fraction")->valuedouble, 1);
    /* No SVD pass: the same passes as magnitude. */
    cJSON *ja = load_json(rmag), *jb = load_json(rlr);
    const cJSON *suma = cJSON_GetObjectItemCaseSensitive(ja, "summary");
    const cJSON *sumb = cJSON_GetObjectItemCaseSensitive(jb, "summary");
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(suma, "module_passes")->valuedouble,
                cJSON_GetObjectItemCaseSensitive(sumb, "module_passes")->valuedouble);
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(
                      cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(jb, "params"), "scorer"),
                      "name")
                      ->valuestring,
                  "lowrank");
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    pmask_free(&b);
    /* Streamed, second histogram, small blocks: still the magnitude masks. */
    const nlsr_full_tuning tunes[] = {{1, 0, 0, 0}, {1, 1, 1000, 0}, {0, 1, 4099, 0}};
    for (size_t k = 0; k < sizeof tunes / sizeof tunes[0]; k++) {
        char name[64];
        snprintf(name, sizeof name, "id_lr_t%zu.nlsrp", k);
        char *pt = wpath(name);
        nlsr_ctx *ctx = new_ctx();
        nlsr_ckpt *cb = open_ck(SFT), *ca = open_ck(ALIGNED);
        ASSERT_EQ_I(nlsr_full_check_sources(ctx, cb, ca, 0, &pl), 0);
        ASSERT_EQ_I(nlsr_full_prepare(ctx, cb, ca, 0, pt, &pl, &tunes[k], NULL), 0);
        nlsr_ckpt_free(cb);
        nlsr_ckpt_free(ca);
        end_ctx(ctx);
        ASSERT_EQ_I(read_masks(pt, &b), 0);
        ASSERT_TRUE(pmask_equal(&a, &b));
        pmask_free(&b);
        free(pt);
    }
    /* The realigned model is the magnitude one; apply's report names the patch's scorer. */
    char *om = wpath("id_out_mag"), *ol = wpath("id_out_lr"), *rap = wpath("id_apply.json");
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    ASSERT_EQ_I(nlsr_apply(ctx, mag, FT, om, &p), 0);
    p.report_path = rap;
    ASSERT_EQ_I(nlsr_apply(ctx, lr, FT, ol, &p), 0);
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(om, ol));
    cJSON *jap = load_json(rap);
    const cJSON *sap = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(jap, "params"), "scorer");
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(sap, "name")->valuestring, "lowrank");
    cJSON_Delete(jap);
    /* run --scorer lowrank (identity) == the magnitude run. */
    char *orun = wpath("id_run_lr");
    ctx = new_ctx();
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, orun, &pl), 0);
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(om, orun));
    pmask_free(&a);
    free(orun);
    free(om);
    free(ol);
    free(rap);
    free(mag);
    free(lr);
    free(rmag);
    free(rlr);
}

/* ---- an F32 delta of exact rank 4 --------------------------------------------------------- */

#define R4_BIG_OUT 1100u /* 1100 x 1000 > 2^20 elements: the randomized SVD */
#define R4_BIG_IN 1000u
#define R4_SMALL_OUT 300u /* the exact SVD */
#define R4_SMALL_IN 200u

/* A product of (out x 4) and (4 x in) Gaussian factors, accumulated in f32. */
static float *rank4(size_t out, size_t in, uint64_t seed)
{
    uint64_t s = seed;
    float *a = xcalloc(out * 4, sizeof *a), *b = xcalloc(4 * in, sizeof *b);
    for (size_t i = 0; i < out * 4; i++) a[i] = (float)gauss(&s);
    for (size_t i = 0; i < 4 * in; i++) b[i] = (float)gauss(&s);
    float *w = xcalloc(out * in, sizeof *w);
    for (size_t i = 0; i < out; i++)
        for (size_t j = 0; j < in; j++) {
            float acc = 0.0f;
            for (size_t c = 0; c < 4; c++) acc += a[i * 4 + c] * b[c * in + j];
            w[i * in + j] = acc;
        }
    free(a);
    free(b);
    return w;
}

static char *r4_base, *r4_ref;

/* base: zeros (F32); reference: base + the rank-4 deltas, so e_s - b is exactly rank 4. */
static void make_rank4(void)
{
    r4_base = wpath("r4_base.safetensors");
    r4_ref = wpath("r4_ref.safetensors");
    float *zb = xcalloc(R4_BIG_OUT * R4_BIG_IN, sizeof *zb);
    float *db = rank4(R4_BIG_OUT, R4_BIG_IN, 101), *ds = rank4(R4_SMALL_OUT, R4_SMALL_IN, 202);
    float norm[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    wt base[] = {
        {"model.layers.0.input_layernorm.weight", NLSR_DTYPE_F32, 1, {8}, norm},
        {"model.layers.0.mlp.up_proj.weight", NLSR_DTYPE_F32, 2, {R4_BIG_OUT, R4_BIG_IN}, zb},
        {"model.layers.0.self_attn.q_proj.weight", NLSR_DTYPE_F32, 2, {R4_SMALL_OUT, R4_SMALL_IN},
         zb},
    };
    wt ref[] = {
        {"model.layers.0.input_layernorm.weight", NLSR_DTYPE_F32, 1, {8}, norm},
        {"model.layers.0.mlp.up_proj.weight", NLSR_DTYPE_F32, 2, {R4_BIG_OUT, R4_BIG_IN}, db},
        {"model.layers.0.self_attn.q_proj.weight", NLSR_DTYPE_F32, 2, {R4_SMALL_OUT, R4_SMALL_IN},
         ds},
    };
    write_st(r4_base, base, 3, NULL, NULL);
    write_st(r4_ref, ref, 3, NULL, NULL);
    free(zb);
    free(db);
    free(ds);
}

static void test_rank4(void)
{
    char *mag = wpath("r4_mag.nlsrp"), *lr = wpath("r4_lr.nlsrp"), *rep = wpath("r4_lr.json");
    nlsr_realign_params pm = NLSR_REALIGN_PARAMS_DEFAULT, pl = lowrank_params();
    pl.scorer.rank = 4;
    pl.scorer.rank_mode = NLSR_RANK_MODE_DIRECT;
    ASSERT_EQ_I(prepare_with(r4_base, NULL, r4_ref, mag, &pm, NULL, NULL, 0), 0);
    ASSERT_EQ_I(prepare_with(r4_base, NULL, r4_ref, lr, &pl, rep, NULL, 0), 0);
    pmask a, b;
    ASSERT_EQ_I(read_masks(mag, &a), 0);
    ASSERT_EQ_I(read_masks(lr, &b), 0);
    ASSERT_EQ_U(a.n, 2);
    for (size_t i = 0; i < a.n && i < b.n; i++) {
        double ag = agreement(a.mask[i], b.mask[i], a.numel[i]);
        printf("rank-4 F32 delta %-40s %7llu elements: mask agreement with magnitude %.6f\n",
               a.name[i], (unsigned long long)a.numel[i], ag);
        ASSERT_TRUE(ag >= 0.9999);
    }
    /* Passes over base + aligned: the randomized module's 6 SVD passes are fed from the W kept
     * in memory after the first, then the mask pass; the exact one 1 + 1. Both modules are
     * cached after their first pass, so each is read once from disk. */
    cJSON *j = load_json(rep);
    const cJSON *sum = cJSON_GetObjectItemCaseSensitive(j, "summary");
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "module_passes")->valuedouble, 2 + 2);
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "module_disk_passes")->valuedouble, 2);
    cJSON_Delete(j);
    /* A budget that keeps neither W nor the module (12 MiB): every SVD pass streams base and
     * aligned again (7 + 1 passes from disk), and the patch is the same. */
    char *lr2 = wpath("r4_lr_stream.nlsrp"), *rep2 = wpath("r4_lr_stream.json");
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params q = pl;
    q.report_path = rep2;
    nlsr_ctx_set_mem_budget(ctx, 12u << 20);
    ASSERT_EQ_I(nlsr_prepare(ctx, r4_base, NULL, r4_ref, lr2, &q), 0);
    end_ctx(ctx);
    ASSERT_TRUE(files_equal(lr, lr2));
    j = load_json(rep2);
    sum = cJSON_GetObjectItemCaseSensitive(j, "summary");
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sum, "module_disk_passes")->valuedouble, 7 + 1);
    cJSON_Delete(j);
    pmask_free(&a);
    pmask_free(&b);
    free(lr2);
    free(rep2);
    free(mag);
    free(lr);
    free(rep);
}

/* The same seed gives the same file whatever the block size and memory plan; another seed
 * changes the header's seed and at most rounding in the masks. */
static void test_determinism(void)
{
    nlsr_realign_params pl = lowrank_params();
    pl.scorer.rank = 16; /* the paper reading: r = 16 * 0.2 = 3 */
    char *a = wpath("det_a.nlsrp"), *b = wpath("det_b.nlsrp"), *c = wpath("det_c.nlsrp");
    ASSERT_EQ_I(prepare_with(r4_base, NULL, r4_ref, a, &pl, NULL, NULL, 0), 0);
    ASSERT_EQ_I(prepare_with(r4_base, NULL, r4_ref, b, &pl, NULL, NULL, 0), 0);
    ASSERT_TRUE(files_equal(a, b));
    pmask ma, mb;
    ASSERT_EQ_I(read_masks(a, &ma), 0);
    const nlsr_full_tuning tunes[] = {{1, 0, 0, 0}, {1, 1, 777, 0}, {0, 0, 100000, 0}};
    for (size_t k = 0; k < sizeof tunes / sizeof tunes[0]; k++) {
        nlsr_ctx *ctx = new_ctx();
        nlsr_ckpt *cb = open_ck(r4_base), *cr = open_ck(r4_ref);
        unlink(c);
        ASSERT_EQ_I(nlsr_full_check_sources(ctx, cb, cr, 1, &pl), 0);
        ASSERT_EQ_I(nlsr_full_prepare(ctx, cb, cr, 1, c, &pl, &tunes[k], NULL), 0);
        nlsr_ckpt_free(cb);
        nlsr_ckpt_free(cr);
        end_ctx(ctx);
        ASSERT_EQ_I(read_masks(c, &mb), 0);
        ASSERT_TRUE(pmask_equal(&ma, &mb));
        pmask_free(&mb);
    }
    pl.scorer.seed = 7;
    unlink(c);
    ASSERT_EQ_I(prepare_with(r4_base, NULL, r4_ref, c, &pl, NULL, NULL, 0), 0);
    ASSERT_TRUE(!files_equal(a, c));
    ASSERT_EQ_I(read_masks(c, &mb), 0);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(mb.params, "scorer");
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sc, "seed")->valuedouble, 7);
    for (size_t i = 0; i < ma.n; i++) {
        double ag = agreement(ma.mask[i], mb.mask[i], ma.numel[i]);
        printf("seed 42 vs seed 7, r = 3, %-40s mask agreement %.6f\n", ma.name[i], ag);
        ASSERT_TRUE(ag >= 0.999);
    }
    pmask_free(&ma);
    pmask_free(&mb);
    free(a);
    free(b);
    free(c);
}

/* ---- wanda -------------------------------------------------------------------------------- */

static char *fx_ref;                  /* the fixture's safety reference (nlsr_amplify) */
static char *acts_rows, *acts_gram;   /* activation files for the fixture */

typedef struct fxmod {
    const char *name;
    size_t out, in;
    float *x;                          /* activation rows as stored (f32 values), n x in */
    size_t n;
} fxmod;

static fxmod fxm[32];
static size_t nfxm;

/* Activation rows for every target module of the fixture (BF16 for the MLP, F32 for attention,
 * one of them 3-D), and their Gram matrices in another file. */
static void make_fixture_acts(void)
{
    fx_ref = wpath("fx_reference");
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    ASSERT_EQ_I(nlsr_amplify(ctx, SFT, ALIGNED, fx_ref, &p), 0);
    end_ctx(ctx);
    acts_rows = wpath("acts_rows.safetensors");
    acts_gram = wpath("acts_gram.safetensors");
    nlsr_ckpt *ck = open_ck(ALIGNED);
    wt rows[32], gram[32];
    float *gv[32];
    uint64_t s = 99;
    nfxm = 0;
    for (size_t i = 0; i < ck->n; i++) {
        nlsr_tensor_info ti;
        nlsr_ckpt_tensor_info(ck, i, &ti);
        if (ti.ndim != 2 || !strstr(ti.name, "proj")) continue;
        fxmod *m = &fxm[nfxm];
        m->name = strdup(ti.name);
        m->out = (size_t)ti.shape[0];
        m->in = (size_t)ti.shape[1];
        m->n = 24;
        int mlp = strstr(ti.name, ".mlp.") != NULL;
        m->x = xcalloc(m->n * m->in, sizeof *m->x);
        /* Columns of different scales, so that the norms matter. */
        for (size_t r = 0; r < m->n; r++)
            for (size_t c = 0; c < m->in; c++) {
                float v = (float)(gauss(&s) * (0.1 + (double)(c % 7)));
                m->x[r * m->in + c] = mlp ? nlsr_bf16_to_f32(nlsr_f32_to_bf16(v)) : v;
            }
        rows[nfxm] = (wt){m->name, mlp ? NLSR_DTYPE_BF16 : NLSR_DTYPE_F32, 2, {m->n, m->in, 0},
                          m->x};
        if (nfxm == 0) rows[nfxm] = (wt){m->name, NLSR_DTYPE_BF16, 3, {2, m->n / 2, m->in}, m->x};
        gv[nfxm] = xcalloc(m->in * m->in, sizeof(float));
        for (size_t a = 0; a < m->in; a++)
            for (size_t b = 0; b < m->in; b++) {
                double acc = 0;
                for (size_t r = 0; r < m->n; r++)
                    acc += (double)m->x[r * m->in + a] * (double)m->x[r * m->in + b];
                gv[nfxm][a * m->in + b] = (float)acc;
            }
        gram[nfxm] = (wt){m->name, NLSR_DTYPE_F32, 2, {m->in, m->in, 0}, gv[nfxm]};
        nfxm++;
    }
    nlsr_ckpt_free(ck);
    ASSERT_EQ_U(nfxm, 21);
    write_st(acts_rows, rows, nfxm, NULL, NULL);
    write_st(acts_gram, gram, nfxm, "nlsr.activations", "gram");
    for (size_t i = 0; i < nfxm; i++) free(gv[i]);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* The k-th smallest (0-based) of n scores by sorting a copy. */
static float kth_sorted(const float *s, size_t n, uint64_t k)
{
    float *c = xcalloc(n, sizeof *c);
    memcpy(c, s, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_float);
    float t = c[k];
    free(c);
    return t;
}

/* Wanda's mask of module m computed here: delta from the reference and base values, the norms
 * from the rows (sums of squares in double, in row order) or from G's diagonal. */
static uint8_t *wanda_expected(const fxmod *m, int from_gram, int per_row, double sparsity)
{
    nlsr_ckpt *cr = open_ck(fx_ref), *cb = open_ck(SFT);
    uint64_t n = 0;
    float *e = tensor_f32(cr, m->name, &n), *b = tensor_f32(cb, m->name, NULL);
    nlsr_ckpt_free(cr);
    nlsr_ckpt_free(cb);
    float *norm = xcalloc(m->in, sizeof *norm);
    for (size_t c = 0; c < m->in; c++) {
        double acc = 0;
        if (from_gram) {
            for (size_t r = 0; r < m->n; r++)
                acc += (double)m->x[r * m->in + c] * (double)m->x[r * m->in + c];
            acc = (double)(float)acc; /* what the Gram file holds */
        } else {
            for (size_t r = 0; r < m->n; r++) {
                double v = (double)m->x[r * m->in + c];
                acc += v * v;
            }
        }
        norm[c] = (float)sqrt(acc);
    }
    float *s = xcalloc((size_t)n, sizeof *s);
    for (uint64_t i = 0; i < n; i++) {
        float d = e[i] - b[i];
        s[i] = fabsf(d) * norm[i % m->in];
    }
    uint8_t *mask = xcalloc((size_t)n, 1);
    if (per_row) {
        uint64_t k = (uint64_t)((double)m->in * sparsity);
        for (size_t r = 0; r < m->out; r++) {
            float thr = kth_sorted(s + r * m->in, m->in, k);
            for (size_t c = 0; c < m->in; c++) mask[r * m->in + c] = s[r * m->in + c] > thr;
        }
    } else {
        uint64_t k = (uint64_t)((double)n * sparsity);
        float thr = kth_sorted(s, (size_t)n, k);
        for (uint64_t i = 0; i < n; i++) mask[i] = s[i] > thr;
    }
    free(e);
    free(b);
    free(norm);
    free(s);
    return mask;
}

static void test_wanda(void)
{
    const struct {
        int gram;
        nlsr_wanda_mode sel;
        const char *file;
    } cases[] = {
        {0, NLSR_WANDA_MODE_ROW, "wanda_rows_row.nlsrp"},
        {0, NLSR_WANDA_MODE_MATRIX, "wanda_rows_matrix.nlsrp"},
        {1, NLSR_WANDA_MODE_ROW, "wanda_gram_row.nlsrp"},
        {1, NLSR_WANDA_MODE_MATRIX, "wanda_gram_matrix.nlsrp"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
        p.scorer.kind = NLSR_SCORER_WANDA;
        p.scorer.activations = cases[c].gram ? acts_gram : acts_rows;
        p.scorer.wanda_select = cases[c].sel;
        char *out = wpath(cases[c].file);
        ASSERT_EQ_I(prepare_with(SFT, NULL, fx_ref, out, &p, NULL, NULL, 0), 0);
        pmask pm;
        ASSERT_EQ_I(read_masks(out, &pm), 0);
        ASSERT_EQ_U(pm.n, nfxm);
        size_t bad = 0;
        uint64_t total = 0;
        for (size_t i = 0; i < pm.n && i < nfxm; i++) {
            ASSERT_STR_EQ(pm.name[i], fxm[i].name);
            uint8_t *exp = wanda_expected(&fxm[i], cases[c].gram,
                                          cases[c].sel == NLSR_WANDA_MODE_ROW, 0.8);
            if (memcmp(exp, pm.mask[i], (size_t)pm.numel[i]) != 0) {
                bad++;
                fprintf(stderr, "  wanda case %zu: %s differs\n", c, pm.name[i]);
            }
            for (uint64_t k = 0; k < pm.numel[i]; k++) total += pm.mask[i][k];
            free(exp);
        }
        ASSERT_EQ_U(bad, 0);
        printf("wanda, %s, %s selection: %llu elements masked, all %zu modules as computed here\n",
               cases[c].gram ? "Gram file" : "activation rows",
               cases[c].sel == NLSR_WANDA_MODE_ROW ? "row" : "matrix", (unsigned long long)total,
               nfxm);
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(pm.params, "scorer");
        ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(sc, "name")->valuestring, "wanda");
        ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(sc, "select")->valuestring,
                      cases[c].sel == NLSR_WANDA_MODE_ROW ? "row" : "matrix");
        ASSERT_TRUE(strstr(cJSON_GetObjectItemCaseSensitive(sc, "activations")->valuestring,
                           cases[c].gram ? "acts_gram" : "acts_rows") != NULL);
        pmask_free(&pm);
        free(out);
    }
}

/* lowrank with activations: with r = out (full rank of W X^T at out <= in) the projection is
 * the identity and gives the magnitude masks; from rows and from G alike; deterministic. */
static void test_lowrank_activations(void)
{
    char *mag = wpath("la_mag.nlsrp");
    nlsr_realign_params pm = NLSR_REALIGN_PARAMS_DEFAULT;
    ASSERT_EQ_I(prepare_with(SFT, NULL, fx_ref, mag, &pm, NULL, NULL, 0), 0);
    pmask a;
    ASSERT_EQ_I(read_masks(mag, &a), 0);
    const char *files[2] = {acts_rows, acts_gram};
    pmask b[2];
    for (int f = 0; f < 2; f++) {
        nlsr_realign_params p = lowrank_params();
        p.scorer.rank_mode = NLSR_RANK_MODE_DIRECT;
        p.scorer.activations = files[f];
        char name[64];
        snprintf(name, sizeof name, "la_%d.nlsrp", f);
        char *out = wpath(name);
        ASSERT_EQ_I(prepare_with(SFT, NULL, fx_ref, out, &p, NULL, NULL, 0), 0);
        ASSERT_EQ_I(read_masks(out, &b[f]), 0);
        size_t same = 0, ident = 0;
        for (size_t i = 0; i < a.n && i < b[f].n; i++) {
            if (fxm[i].out > fxm[i].in) continue;
            ident++;
            same += memcmp(a.mask[i], b[f].mask[i], (size_t)a.numel[i]) == 0;
        }
        ASSERT_EQ_U(ident, 15);
        ASSERT_EQ_U(same, ident);
        /* Again: the same file. */
        char *out2 = wpath("la_again.nlsrp");
        unlink(out2);
        ASSERT_EQ_I(prepare_with(SFT, NULL, fx_ref, out2, &p, NULL, NULL, 0), 0);
        ASSERT_TRUE(files_equal(out, out2));
        free(out2);
        free(out);
    }
    /* Rows and G describe the same activations: the projected modules agree closely. */
    for (size_t i = 0; i < a.n; i++) {
        if (fxm[i].out <= fxm[i].in) continue;
        ASSERT_TRUE(agreement(b[0].mask[i], b[1].mask[i], a.numel[i]) >= 0.999);
    }
    pmask_free(&b[0]);
    pmask_free(&b[1]);
    pmask_free(&a);
    free(mag);
}

/* ---- refusals ----------------------------------------------------------------------------- */

/* prepare and run both refuse, naming `needle`, and write nothing. */
static void expect_refused(const nlsr_realign_params *p, const char *ref, int code,
                           const char *needle, uint64_t budget)
{
    char *out = wpath("refused.nlsrp"), *dir = wpath("refused_run");
    const char *src = ref ? ref : ALIGNED;
    nlsr_ctx *ctx = new_ctx();
    if (budget) nlsr_ctx_set_mem_budget(ctx, budget);
    int rc = nlsr_prepare(ctx, SFT, ref ? NULL : src, ref ? src : NULL, out, p);
    ASSERT_EQ_I(rc, code);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), needle);
    end_ctx(ctx);
    ASSERT_TRUE(!nlsr_exists(out));
    ctx = new_ctx();
    if (budget) nlsr_ctx_set_mem_budget(ctx, budget);
    rc = nlsr_run(ctx, SFT, ref ? NULL : src, ref ? src : NULL, FT, dir, p);
    ASSERT_EQ_I(rc, code);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), needle);
    end_ctx(ctx);
    ASSERT_TRUE(!nlsr_exists(dir));
    ASSERT_TRUE(no_leftovers());
    free(out);
    free(dir);
}

/* Writes an activations file like acts_rows with one change: entry `skip` left out, an extra
 * entry `extra`, entry `widen` one column wider, entry `nan_at` holding a NaN, or entry
 * `as_gram` written with metadata `meta`. */
static char *bad_acts(const char *file, long skip, const char *extra, long widen, long nan_at,
                      const char *meta)
{
    char *path = wpath(file);
    wt t[40];
    size_t n = 0;
    float *keep[40];
    size_t nk = 0;
    for (size_t i = 0; i < nfxm; i++) {
        if ((long)i == skip) continue;
        const fxmod *m = &fxm[i];
        size_t in = m->in + ((long)i == widen ? 1 : 0);
        float *x = xcalloc(m->n * in, sizeof *x);
        for (size_t r = 0; r < m->n; r++)
            for (size_t c = 0; c < in; c++) x[r * in + c] = c < m->in ? m->x[r * m->in + c] : 1.0f;
        if ((long)i == nan_at) x[5 * in + 3] = NAN;
        keep[nk++] = x;
        t[n++] = (wt){m->name, NLSR_DTYPE_F32, 2, {m->n, in, 0}, x};
    }
    if (extra) {
        float *x = xcalloc(4 * 96, sizeof *x);
        keep[nk++] = x;
        t[n++] = (wt){extra, NLSR_DTYPE_F32, 2, {4, 96, 0}, x};
    }
    write_st(path, t, n, meta ? "nlsr.activations" : NULL, meta);
    for (size_t i = 0; i < nk; i++) free(keep[i]);
    return path;
}

static void test_refusals(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.scorer.kind = NLSR_SCORER_WANDA;
    /* A stray name (made for another model). */
    char *f = bad_acts("bad_extra.safetensors", -1, "model.layers.7.mlp.up_proj.weight", -1, -1,
                       NULL);
    p.scorer.activations = f;
    expect_refused(&p, NULL, NLSR_E_MISMATCH, "'model.layers.7.mlp.up_proj.weight' is no target "
                   "module", 0);
    free(f);
    /* A module without activations. */
    f = bad_acts("bad_missing.safetensors", 4, NULL, -1, -1, NULL);
    p.scorer.activations = f;
    char needle[256];
    snprintf(needle, sizeof needle, "no entry for target module '%s'", fxm[4].name);
    expect_refused(&p, NULL, NLSR_E_MISMATCH, needle, 0);
    free(f);
    /* A wrong width, for lowrank too. */
    f = bad_acts("bad_width.safetensors", -1, NULL, 2, -1, NULL);
    p.scorer.activations = f;
    snprintf(needle, sizeof needle, "'%s' has shape [24, %zu]", fxm[2].name, fxm[2].in + 1);
    expect_refused(&p, NULL, NLSR_E_MISMATCH, needle, 0);
    nlsr_realign_params pl = lowrank_params();
    pl.scorer.activations = f;
    expect_refused(&pl, NULL, NLSR_E_MISMATCH, needle, 0);
    free(f);
    /* Rows declared as Gram matrices: wrong shapes. */
    f = bad_acts("bad_gram.safetensors", -1, NULL, -1, -1, "gram");
    pl.scorer.activations = f;
    expect_refused(&pl, NULL, NLSR_E_MISMATCH, "Gram matrix", 0);
    free(f);
    f = bad_acts("bad_meta.safetensors", -1, NULL, -1, -1, "grams");
    pl.scorer.activations = f;
    expect_refused(&pl, NULL, NLSR_E_FORMAT, "'grams', not 'rows' or 'gram'", 0);
    free(f);
    /* A NaN in the activations, found while streaming: still nothing written. */
    f = bad_acts("bad_nan.safetensors", -1, NULL, -1, 6, NULL);
    p.scorer.activations = f;
    snprintf(needle, sizeof needle, "'%s': X[5][3] is nan", fxm[6].name);
    expect_refused(&p, NULL, NLSR_E_VALUE, needle, 0);
    pl.scorer.activations = f;
    expect_refused(&pl, NULL, NLSR_E_VALUE, needle, 0);
    free(f);
    /* No such file. */
    p.scorer.activations = "/nonexistent/acts.safetensors";
    expect_refused(&p, NULL, NLSR_E_NOTFOUND, "/nonexistent/acts.safetensors", 0);
    /* wanda without activations, magnitude with them. */
    p.scorer.activations = NULL;
    expect_refused(&p, NULL, NLSR_E_USAGE, "needs activations", 0);
    nlsr_realign_params pmag = NLSR_REALIGN_PARAMS_DEFAULT;
    pmag.scorer.activations = acts_rows;
    expect_refused(&pmag, NULL, NLSR_E_USAGE, "magnitude scorer takes none", 0);
    /* A rank the reading turns into 0. */
    pl = lowrank_params();
    pl.scorer.rank = 2;
    pl.scorer.rank_mode = NLSR_RANK_MODE_PAPER; /* 2 * 0.2 = 0.4 -> 0 */
    expect_refused(&pl, NULL, NLSR_E_USAGE, "gives r = 0", 0);
    /* A budget too small for the scorer (the exact SVD of a 1100 x 1000 delta): refused up
     * front, naming the module, nothing written. */
    pl = lowrank_params();
    pl.scorer.exact_svd = 1;
    char *bout = wpath("budget.nlsrp");
    nlsr_ctx *bctx = new_ctx();
    nlsr_ctx_set_mem_budget(bctx, 12u << 20);
    ASSERT_EQ_I(nlsr_prepare(bctx, r4_base, NULL, r4_ref, bout, &pl), NLSR_E_BUDGET);
    ASSERT_CONTAINS(nlsr_ctx_error(bctx),
                    "lowrank scorer of 'model.layers.0.mlp.up_proj.weight' (1100 x 1000 at rank");
    end_ctx(bctx);
    ASSERT_TRUE(!nlsr_exists(bout) && no_leftovers());
    free(bout);
    /* LoRA adapters keep the magnitude rule. */
    pl = lowrank_params();
    nlsr_ctx *ctx = new_ctx();
    char *out = wpath("lora_refused.nlsrp");
    ASSERT_EQ_I(nlsr_prepare(ctx, NULL, FX "/lora_align", NULL, out, &pl), NLSR_E_USAGE);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "lowrank scorer is for full-weight checkpoints");
    end_ctx(ctx);
    ASSERT_TRUE(!nlsr_exists(out));
    free(out);
}

/* ---- the program -------------------------------------------------------------------------- */

static void test_cli(void)
{
    char *out = wpath("cli_lr.nlsrp"), *mag = wpath("id_mag.nlsrp"), *txt = NULL;
    const char *ok[] = {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "-q",
                        "--scorer", "lowrank", "--rank-fraction", "1", "--rank-reading",
                        "direct", "--power-iters", "3", "--oversample", "5", "--seed", "9",
                        "--threads", "2", NULL};
    ASSERT_EQ_I(cli(ok, NULL), 0);
    pmask a, b;
    ASSERT_EQ_I(read_masks(mag, &a), 0);
    ASSERT_EQ_I(read_masks(out, &b), 0);
    ASSERT_TRUE(pmask_equal(&a, &b));
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(b.params, "scorer");
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sc, "power_iters")->valuedouble, 3);
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sc, "oversample")->valuedouble, 5);
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(sc, "seed")->valuedouble, 9);
    pmask_free(&a);
    pmask_free(&b);
    /* Usage errors: options of another scorer, both rank forms, wanda without activations,
     * --seed on a magnitude prepare, unknown names. */
    const char *bad[][16] = {
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--rank", "4", NULL},
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--scorer", "lowrank",
         "--rank", "4", "--rank-fraction", "0.5", NULL},
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--scorer", "wanda", NULL},
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--wanda-select", "row",
         NULL},
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--seed", "3", NULL},
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--scorer", "svd", NULL},
        {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out, "--scorer", "lowrank",
         "--rank-reading", "nearest", NULL},
        {"apply", "--patches", out, "--finetuned", FT, "--out", out, "--scorer", "lowrank",
         NULL},
        {"plan", "--base", SFT, "--aligned", ALIGNED, "--scorer", "lowrank", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = cli(bad[i], NULL);
        if (st != 2) FAILF("usage case %zu: exit status %d, not 2", i, st);
    }
    /* A refused activations file: exit 1, nothing written. */
    char *out2 = wpath("cli_refused.nlsrp");
    const char *refused[] = {"prepare", "--base", SFT, "--aligned", ALIGNED, "--out", out2, "-q",
                             "--scorer", "wanda", "--activations", r4_ref, NULL};
    ASSERT_EQ_I(cli(refused, NULL), 1);
    ASSERT_TRUE(!nlsr_exists(out2));
    /* nlsr plan shows the scorer's passes and memory. */
    const char *plan[] = {"plan", "--base", SFT, "--aligned", ALIGNED, "--finetuned", FT,
                          "--no-time", "--json", "--scorer", "lowrank", NULL};
    ASSERT_EQ_I(cli(plan, &txt), 0);
    cJSON *j = cJSON_Parse(txt);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "scorer");
    ASSERT_TRUE(cJSON_IsObject(s));
    ASSERT_EQ_D(cJSON_GetObjectItemCaseSensitive(s, "passes_max")->valuedouble, 2);
    ASSERT_TRUE(cJSON_GetObjectItemCaseSensitive(s, "peak_bytes")->valuedouble > 0);
    ASSERT_TRUE(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "bytes_read")));
    cJSON_Delete(j);
    free(txt);
    const char *plan2[] = {"plan", "--base", r4_base, "--aligned", r4_ref, "--finetuned", r4_ref,
                           "--no-time", "--scorer", "lowrank", "--rank", "64", NULL};
    ASSERT_EQ_I(cli(plan2, &txt), 0);
    ASSERT_CONTAINS(txt, "1100 x 1000 (x1): r 13, randomized, 6 SVD passes, 2 passes (7 "
                         "without keeping W");
    ASSERT_CONTAINS(txt, "300 x 200 (x1): r 13, exact, 1 SVD pass, 2 passes");
    free(txt);
    free(out2);
    free(out);
    free(mag);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/nlsr-test-scorer-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    make_rank4();
    make_fixture_acts();
    RUN_TEST(test_identity_fixtures);
    RUN_TEST(test_rank4);
    RUN_TEST(test_determinism);
    RUN_TEST(test_wanda);
    RUN_TEST(test_lowrank_activations);
    RUN_TEST(test_refusals);
    RUN_TEST(test_cli);
    for (size_t i = 0; i < nfxm; i++) {
        free((char *)fxm[i].name);
        free(fxm[i].x);
    }
    free(r4_base);
    free(r4_ref);
    free(fx_ref);
    free(acts_rows);
    free(acts_gram);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
