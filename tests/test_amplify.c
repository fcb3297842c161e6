/* SPDX-License-Identifier: Apache-2.0 */
/* Step 1 on full checkpoints (nlsr_amplify) against values computed here independently of the
 * library, on the fixtures and on synthetic checkpoints; the same bytes under every backend
 * and budget; the plan's byte counts against what the run reads and writes; refusals and
 * clean failure; the synthetic checkpoints' determinism and role relations. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/io/checkpoint.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "../src/io/safetensors.h"
#include "../src/plan/planner.h"
#include "test.h"

#ifndef NLSR_TEST_DATA
#define NLSR_TEST_DATA "tests/data"
#endif
#define FIX NLSR_TEST_DATA "/hf-tiny-llama"

static char tmpdir[256];

static char *tp(const char *name)
{
    return nlsr_path_join(tmpdir, name);
}

/* ---- an independent reference: plain C, no library code ---------------------------------- */

static float ref_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t ref_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    /* Round to nearest even on the 16 dropped bits, spelled out. */
    uint32_t hi = u >> 16, lo = u & 0xFFFFu;
    if (lo > 0x8000u || (lo == 0x8000u && (hi & 1u))) hi++;
    return (uint16_t)hi;
}

/* IEEE half <-> f32 spelled out with ldexp/nearbyint (clang 14 has no _Float16 on x86-64). */
static float ref_f16_to_f32(uint16_t h)
{
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -24);
    else v = ldexp((double)(1024 + m), e - 25);
    return (float)((h & 0x8000) ? -v : v);
}

static uint16_t ref_f32_to_f16(float f)
{
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (isnan(f)) return (uint16_t)(sign | 0x7E00);
    if (a < 0x1p-14) return (uint16_t)(sign | (uint16_t)nearbyint(a * 0x1p24));
    int e;
    frexp(a, &e);
    int E = e - 1;
    double q = nearbyint(ldexp(a, 10 - E));
    if (q == 2048.0) {
        q = 1024.0;
        E++;
    }
    if (E > 15) return (uint16_t)(sign | 0x7C00);
    return (uint16_t)(sign | ((E + 15) << 10) | ((int)q - 1024));
}

static float ref_load(nlsr_dtype t, const unsigned char *p, uint64_t i)
{
    if (t == NLSR_DTYPE_BF16) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return ref_bf16_to_f32(h);
    }
    if (t == NLSR_DTYPE_F16) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return ref_f16_to_f32(h);
    }
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f;
}

static void ref_store(nlsr_dtype t, unsigned char *p, uint64_t i, float f)
{
    if (t == NLSR_DTYPE_BF16) {
        uint16_t h = ref_f32_to_bf16(f);
        memcpy(p + 2 * i, &h, 2);
    } else if (t == NLSR_DTYPE_F16) {
        uint16_t h = ref_f32_to_f16(f); /* IEEE round to nearest even */
        memcpy(p + 2 * i, &h, 2);
    } else {
        memcpy(p + 4 * i, &f, 4);
    }
}

static int is_target(const char *name, int ndim)
{
    static const char *const t[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                    "gate_proj", "up_proj", "down_proj"};
    size_t L = strlen(name);
    if (ndim != 2 || L < 7 || strcmp(name + L - 7, ".weight") != 0) return 0;
    for (size_t k = 0; k < 7; k++)
        if (strstr(name, t[k])) return 1;
    return 0;
}

static unsigned char *read_tensor(const nlsr_ckpt *ck, size_t i, uint64_t *len)
{
    nlsr_tensor_info in;
    nlsr_ckpt_tensor_info(ck, i, &in);
    unsigned char *b = malloc(in.nbytes ? in.nbytes : 1);
    const st_file *f = ck->shards[ck->t[i].shard];
    nlsr_err e = {0};
    if (nlsr_pread_all(f->fd, b, (size_t)in.nbytes, in.offset, f->path, &e) != 0) {
        free(b);
        return NULL;
    }
    *len = in.nbytes;
    return b;
}

/* Checks `out` against e = a + beta (a - b) element by element (targets) and byte for byte
 * (everything else), and against the aligned checkpoint's layout (shard of each tensor,
 * offsets, metadata, side files). Returns the number of differences. */
static long check_output(const char *base, const char *aligned, const char *out, double beta)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *b = NULL, *a = NULL, *o = NULL;
    long bad = 0;
    if (nlsr_ckpt_open(ctx, base, &b) || nlsr_ckpt_open(ctx, aligned, &a) ||
        nlsr_ckpt_open(ctx, out, &o)) {
        FAILF("cannot open: %s", nlsr_ctx_error(ctx));
        bad = 1;
        goto done;
    }
    ASSERT_EQ_U(o->n, a->n);
    ASSERT_EQ_U(o->nshards, a->nshards);
    float fb = (float)beta;
    size_t ntarget = 0;
    for (size_t i = 0; i < a->n && i < o->n; i++) {
        const st_tensor *ta = a->t[i].t, *to = o->t[i].t;
        ASSERT_STR_EQ(to->name, ta->name);
        ASSERT_EQ_I(to->dtype, ta->dtype);
        ASSERT_STR_EQ(o->shard_names[o->t[i].shard], a->shard_names[a->t[i].shard]);
        ASSERT_EQ_U(to->begin, ta->begin);
        uint64_t la = 0, lo = 0, lb = 0;
        unsigned char *da = read_tensor(a, i, &la), *dout = read_tensor(o, i, &lo);
        if (!da || !dout || la != lo) {
            bad++;
        } else if (is_target(ta->name, ta->ndim)) {
            ntarget++;
            size_t bi;
            ASSERT_EQ_I(nlsr_ckpt_find(b, ta->name, &bi), 0);
            unsigned char *db = read_tensor(b, bi, &lb);
            unsigned char *want = malloc(la ? la : 1);
            nlsr_dtype tb = b->t[bi].t->dtype;
            for (uint64_t k = 0; k < ta->numel; k++) {
                float x = ref_load(ta->dtype, da, k), y = ref_load(tb, db, k);
                float d = x - y;
                float m = fb * d;
                ref_store(ta->dtype, want, k, x + m);
            }
            if (memcmp(want, dout, (size_t)la) != 0) {
                bad++;
                FAILF("%s: tensor %s differs from a + beta (a - b)", out, ta->name);
            }
            free(want);
            free(db);
        } else if (memcmp(da, dout, (size_t)la) != 0) {
            bad++;
            FAILF("%s: copied tensor %s differs", out, ta->name);
        }
        free(da);
        free(dout);
    }
    ASSERT_TRUE(ntarget > 0);
    for (size_t s = 0; s < a->nshards && s < o->nshards; s++) {
        const st_header *ha = &a->shards[s]->h, *ho = &o->shards[s]->h;
        ASSERT_EQ_U(ho->nmeta, ha->nmeta);
        for (size_t m = 0; m < ha->nmeta && m < ho->nmeta; m++) {
            ASSERT_STR_EQ(ho->meta[m].key, ha->meta[m].key);
            ASSERT_STR_EQ(ho->meta[m].value, ha->meta[m].value);
        }
    }
    /* Side files (index, config) are the aligned folder's. */
    if (nlsr_is_dir(aligned) == 1) {
        const char *side[] = {"config.json", "model.safetensors.index.json",
                              "generation_config.json"};
        for (size_t k = 0; k < 3; k++) {
            char *x = nlsr_path_join(aligned, side[k]), *y = nlsr_path_join(out, side[k]);
            if (nlsr_exists(x)) {
                char *bx = NULL, *by = NULL;
                size_t nx = 0, ny = 0;
                nlsr_err e = {0};
                ASSERT_EQ_I(nlsr_read_small_file(x, 1 << 24, &bx, &nx, &e), 0);
                ASSERT_EQ_I(nlsr_read_small_file(y, 1 << 24, &by, &ny, &e), 0);
                ASSERT_TRUE(bx && by && nx == ny && memcmp(bx, by, nx) == 0);
                free(bx);
                free(by);
            } else {
                ASSERT_TRUE(!nlsr_exists(y));
            }
            free(x);
            free(y);
        }
    }
done:
    nlsr_ckpt_free(b);
    nlsr_ckpt_free(a);
    nlsr_ckpt_free(o);
    nlsr_ctx_free(ctx);
    return bad;
}

/* Whole-folder byte comparison of two outputs (same file names). */
static int same_files(const char *x, const char *y)
{
    const char *names[] = {"model.safetensors", "model-00001-of-00003.safetensors",
                           "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                           "config.json", "model.safetensors.index.json"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char *px = nlsr_path_join(x, names[k]), *py = nlsr_path_join(y, names[k]);
        int ex = nlsr_exists(px), ey = nlsr_exists(py);
        int ok = ex == ey;
        if (ok && ex) {
            char *bx = NULL, *by = NULL;
            size_t nx = 0, ny = 0;
            nlsr_err e = {0};
            ok = nlsr_read_small_file(px, 1u << 28, &bx, &nx, &e) == 0 &&
                 nlsr_read_small_file(py, 1u << 28, &by, &ny, &e) == 0 && nx == ny &&
                 memcmp(bx, by, nx) == 0;
            free(bx);
            free(by);
        }
        free(px);
        free(py);
        if (!ok) return 0;
    }
    return 1;
}

static int amplify_with(const char *base, const char *aligned, const char *out,
                        nlsr_io_kind io, uint64_t budget, double beta, uint64_t *rd,
                        uint64_t *wr, char *err, size_t errlen)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ctx_set_io(ctx, io);
    nlsr_ctx_set_mem_budget(ctx, budget);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.beta = beta;
    p.force = 1;
    int rc = nlsr_amplify(ctx, base, aligned, out, &p);
    if (rd || wr) nlsr_ctx_counters(ctx, rd, wr);
    if (err) snprintf(err, errlen, "%s", nlsr_ctx_error(ctx));
    if (rc == 0 && budget) {
        if (nlsr_ctx_mem_peak(ctx) > budget) FAILF("budget peak %llu > %llu",
                                                  (unsigned long long)nlsr_ctx_mem_peak(ctx),
                                                  (unsigned long long)budget);
    }
    nlsr_ctx_free(ctx);
    return rc;
}

static void test_fixture_exact(void)
{
    char *out = tp("amp-fix");
    char err[1024];
    int rc = amplify_with(FIX "/sft", FIX "/aligned", out, NLSR_IO_AUTO, 0, 0.9, NULL, NULL, err,
                          sizeof err);
    ASSERT_EQ_I(rc, 0);
    if (rc) fprintf(stderr, "%s\n", err);
    ASSERT_EQ_I(check_output(FIX "/sft", FIX "/aligned", out, 0.9), 0);
    /* Another beta, and a negative one. */
    ASSERT_EQ_I(amplify_with(FIX "/sft", FIX "/aligned", out, NLSR_IO_AUTO, 0, 2.5, NULL, NULL,
                             NULL, 0), 0);
    ASSERT_EQ_I(check_output(FIX "/sft", FIX "/aligned", out, 2.5), 0);
    ASSERT_EQ_I(amplify_with(FIX "/sft", FIX "/aligned", out, NLSR_IO_AUTO, 0, -0.3, NULL, NULL,
                             NULL, 0), 0);
    ASSERT_EQ_I(check_output(FIX "/sft", FIX "/aligned", out, -0.3), 0);
    free(out);
}

/* The aligned side in F16 and F32 (sharded differently from the base), base in BF16. */
static void test_mixed_dtypes(void)
{
    char *out = tp("amp-mixed");
    const char *al[] = {FIX "/finetuned_f16", FIX "/finetuned_f32", FIX "/finetuned"};
    for (size_t k = 0; k < 3; k++) {
        ASSERT_EQ_I(amplify_with(FIX "/sft", al[k], out, NLSR_IO_AUTO, 0, 0.9, NULL, NULL, NULL,
                                 0), 0);
        ASSERT_EQ_I(check_output(FIX "/sft", al[k], out, 0.9), 0);
    }
    /* Base in F32, aligned in BF16. */
    ASSERT_EQ_I(amplify_with(FIX "/finetuned_f32", FIX "/aligned", out, NLSR_IO_AUTO, 0, 0.9,
                             NULL, NULL, NULL, 0), 0);
    ASSERT_EQ_I(check_output(FIX "/finetuned_f32", FIX "/aligned", out, 0.9), 0);
    free(out);
}

/* Every backend and budget gives the same bytes, and the plan's byte counts are what the run
 * reads and writes. */
static void test_backends_budgets(void)
{
    char *ref = tp("amp-ref"), *out = tp("amp-var");
    ASSERT_EQ_I(amplify_with(FIX "/sft", FIX "/finetuned", ref, NLSR_IO_AUTO, 0, 0.9, NULL, NULL,
                             NULL, 0), 0);
    /* io_uring twice: O_DIRECT forced, and as chosen (buffered: the fixtures are cached). */
    nlsr_io_kind kinds[] = {NLSR_IO_URING, NLSR_IO_URING, NLSR_IO_PREAD, NLSR_IO_MMAP};
    uint64_t budgets[] = {0, 1u << 30, 600u << 10, 320u << 10};
    for (size_t k = 0; k < 4; k++)
        for (size_t b = 0; b < 4; b++) {
            if (k == 0) setenv("NLSR_IO_DIRECT", "1", 1);
            else unsetenv("NLSR_IO_DIRECT");
            uint64_t rd = 0, wr = 0;
            char err[1024] = "";
            int rc = amplify_with(FIX "/sft", FIX "/finetuned", out, kinds[k], budgets[b], 0.9,
                                  &rd, &wr, err, sizeof err);
            ASSERT_EQ_I(rc, 0);
            if (rc) fprintf(stderr, "%s budget %llu: %s\n", nlsr_io_kind_name(kinds[k]),
                            (unsigned long long)budgets[b], err);
            if (!same_files(ref, out))
                FAILF("%s, budget %llu: output differs", nlsr_io_kind_name(kinds[k]),
                      (unsigned long long)budgets[b]);
            /* The plan, made with the same budget, counts exactly these bytes. */
            nlsr_ctx *ctx = nlsr_ctx_create();
            nlsr_ctx_set_mem_budget(ctx, budgets[b]);
            nlsr_ckpt *cb = NULL, *ca = NULL;
            ASSERT_EQ_I(nlsr_ckpt_open(ctx, FIX "/sft", &cb), 0);
            ASSERT_EQ_I(nlsr_ckpt_open(ctx, FIX "/finetuned", &ca), 0);
            nlsr_plan plan;
            ASSERT_EQ_I(nlsr_plan_amplify(ctx, cb, ca, NULL, &plan), 0);
            ASSERT_EQ_U(plan.read_bytes[0] + plan.read_bytes[1], rd);
            ASSERT_EQ_U(plan.write_bytes, wr);
            if (budgets[b]) ASSERT_TRUE(plan.peak_mem <= budgets[b]);
            if (budgets[b] == (320u << 10)) ASSERT_TRUE(plan.ntarget_units > plan.ntarget_tensors);
            nlsr_plan_free(&plan);
            nlsr_ckpt_free(cb);
            nlsr_ckpt_free(ca);
            nlsr_ctx_free(ctx);
        }
#ifdef NLSR_TEST_HOOKS /* the step-downs, forced (src/common/testhook.h) */
    /* Fallback paths give the same bytes too. */
    setenv("NLSR_IO_DIRECT", "1", 1);
    setenv("NLSR_IO_FAULT", "uring-einval", 1);
    ASSERT_EQ_I(amplify_with(FIX "/sft", FIX "/finetuned", out, NLSR_IO_AUTO, 0, 0.9, NULL, NULL,
                             NULL, 0), 0);
    ASSERT_TRUE(same_files(ref, out));
    setenv("NLSR_IO_FAULT", "uring-setup", 1);
    ASSERT_EQ_I(amplify_with(FIX "/sft", FIX "/finetuned", out, NLSR_IO_AUTO, 0, 0.9, NULL, NULL,
                             NULL, 0), 0);
    ASSERT_TRUE(same_files(ref, out));
    unsetenv("NLSR_IO_FAULT");
    unsetenv("NLSR_IO_DIRECT");
#endif
    free(ref);
    free(out);
}

static void test_refusals(void)
{
    char *out = tp("amp-refuse");
    char err[1024];
    (void)nlsr_tree_remove(out);
    /* Too small a budget names the minimum. */
    ASSERT_EQ_I(amplify_with(FIX "/sft", FIX "/aligned", out, NLSR_IO_AUTO, 50000, 0.9, NULL,
                             NULL, err, sizeof err), NLSR_E_BUDGET);
    ASSERT_CONTAINS(err, "at least");
    ASSERT_TRUE(!nlsr_exists(out));
    /* Shapes that differ. */
    ASSERT_EQ_I(amplify_with(FIX "/lora_align", FIX "/aligned", out, NLSR_IO_AUTO, 0, 0.9, NULL,
                             NULL, err, sizeof err), NLSR_E_MISMATCH);
    /* No base for a full checkpoint. */
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    ASSERT_EQ_I(nlsr_amplify(ctx, NULL, FIX "/aligned", out, NULL), NLSR_E_USAGE);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "--base");
    nlsr_ctx_clear_error(ctx);
    /* An existing output without force. */
    mkdir(out, 0755);
    ASSERT_EQ_I(nlsr_amplify(ctx, FIX "/sft", FIX "/aligned", out, NULL), NLSR_E_EXISTS);
    rmdir(out);
    nlsr_ctx_clear_error(ctx);
    /* Output inside an input. */
    ASSERT_EQ_I(nlsr_amplify(ctx, FIX "/sft", FIX "/aligned", FIX "/aligned/x", NULL),
                NLSR_E_USAGE);
    /* PEFT adapters go to the LoRA job; a LoRA base is refused (the base is the zero
     * adapter). */
    nlsr_ctx_free(ctx);
    ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    char *lo = tp("amp-lora");
    ASSERT_EQ_I(nlsr_amplify(ctx, NULL, FIX "/lora_align", lo, NULL), 0);
    char *am = nlsr_path_join(lo, "adapter_model.safetensors");
    ASSERT_TRUE(nlsr_exists(am));
    free(am);
    nlsr_ctx_clear_error(ctx);
    ASSERT_EQ_I(nlsr_amplify(ctx, FIX "/lora_align", FIX "/lora_align", out, NULL), NLSR_E_USAGE);
    free(lo);
    nlsr_ctx_free(ctx);
    free(out);
}

/* A base whose last target holds a NaN: the run fails naming it, and leaves neither the output
 * nor its temporary folder behind. */
static void test_nonfinite_clean_failure(void)
{
    char *bad = tp("bad-base"), *out = tp("amp-nan");
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ckpt *ck = NULL;
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, FIX "/aligned", &ck), 0);
    (void)nlsr_tree_remove(bad);
    ASSERT_EQ_I(nlsr_ckpt_rewrite(ctx, ck, bad, 1), 0);
    size_t idx = 0;
    ASSERT_EQ_I(nlsr_ckpt_find(ck, "model.layers.2.self_attn.v_proj.weight", &idx), 0);
    nlsr_tensor_info in;
    nlsr_ckpt_tensor_info(ck, idx, &in);
    nlsr_ckpt_free(ck);
    char *file = nlsr_path_join(bad, "model.safetensors");
    int fd = open(file, O_WRONLY);
    uint16_t nan = 0x7FC1;
    ASSERT_EQ_I(pwrite(fd, &nan, 2, (off_t)(in.offset + 2 * 77)), 2);
    close(fd);
    (void)nlsr_tree_remove(out);
    ASSERT_EQ_I(nlsr_amplify(ctx, bad, FIX "/aligned", out, NULL), NLSR_E_VALUE);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "model.layers.2.self_attn.v_proj.weight");
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "element 77");
    ASSERT_TRUE(!nlsr_exists(out));
    char tmpname[512];
    snprintf(tmpname, sizeof tmpname, "%s.nlsr-tmp-%ld", out, (long)getpid());
    ASSERT_TRUE(!nlsr_exists(tmpname));
    nlsr_ctx_free(ctx);
    free(file);
    free(bad);
    free(out);
}

/* ---- synthetic checkpoints ---------------------------------------------------------------- */

static int synth(const char *out, nlsr_synth_role role, uint64_t seed, nlsr_dtype dt,
                 uint64_t shard, int layers, uint64_t budget, nlsr_io_kind io)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ctx_set_mem_budget(ctx, budget);
    nlsr_ctx_set_io(ctx, io);
    nlsr_synth_params p = NLSR_SYNTH_PARAMS_DEFAULT;
    p.role = role;
    p.seed = seed;
    p.dtype = dt;
    p.shard_size = shard;
    p.layers = layers;
    p.force = 1;
    int rc = nlsr_synth(ctx, &p, out);
    if (rc) fprintf(stderr, "synth: %s\n", nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    return rc;
}

/* cos(x - b, y - b) over one tensor, in double. */
static double delta_cos(const nlsr_ckpt *b, const nlsr_ckpt *x, const nlsr_ckpt *y,
                        const char *name)
{
    size_t ib, ix, iy;
    if (nlsr_ckpt_find(b, name, &ib) || nlsr_ckpt_find(x, name, &ix) ||
        nlsr_ckpt_find(y, name, &iy))
        return NAN;
    uint64_t n;
    unsigned char *db = read_tensor(b, ib, &n), *dx = read_tensor(x, ix, &n),
                  *dy = read_tensor(y, iy, &n);
    double sxy = 0, sxx = 0, syy = 0;
    uint64_t ne = b->t[ib].t->numel;
    for (uint64_t k = 0; k < ne; k++) {
        double vb = ref_load(NLSR_DTYPE_BF16, db, k);
        double u = ref_load(NLSR_DTYPE_BF16, dx, k) - vb, v = ref_load(NLSR_DTYPE_BF16, dy, k) - vb;
        sxy += u * v;
        sxx += u * u;
        syy += v * v;
    }
    free(db);
    free(dx);
    free(dy);
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : 0;
}

static void test_synth(void)
{
    char *b = tp("syn-base"), *a = tp("syn-al"), *f = tp("syn-ft"), *a2 = tp("syn-al2"),
         *o = tp("syn-out");
    /* Sharded (about 3 shards), through different backends and budgets: same bytes. */
    ASSERT_EQ_I(synth(b, NLSR_SYNTH_BASE, 7, NLSR_DTYPE_BF16, 300000, 0, 0, NLSR_IO_AUTO), 0);
    ASSERT_EQ_I(synth(a, NLSR_SYNTH_ALIGNED, 7, NLSR_DTYPE_BF16, 300000, 0, 0, NLSR_IO_AUTO), 0);
    ASSERT_EQ_I(synth(f, NLSR_SYNTH_FINETUNED, 7, NLSR_DTYPE_BF16, 300000, 0, 0, NLSR_IO_AUTO), 0);
    ASSERT_EQ_I(synth(a2, NLSR_SYNTH_ALIGNED, 7, NLSR_DTYPE_BF16, 300000, 0, 1u << 20,
                      NLSR_IO_MMAP), 0);
    ASSERT_TRUE(same_files(a, a2));
    ASSERT_EQ_I(synth(a2, NLSR_SYNTH_ALIGNED, 7, NLSR_DTYPE_BF16, 300000, 0, 0, NLSR_IO_PREAD), 0);
    ASSERT_TRUE(same_files(a, a2));
    ASSERT_EQ_I(synth(a2, NLSR_SYNTH_ALIGNED, 8, NLSR_DTYPE_BF16, 300000, 0, 0, NLSR_IO_AUTO), 0);
    ASSERT_TRUE(!same_files(a, a2)); /* another seed */
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *cb = NULL, *ca = NULL, *cf = NULL;
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, b, &cb), 0);
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, a, &ca), 0);
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, f, &cf), 0);
    if (cb && ca && cf) {
        ASSERT_EQ_U(cb->nshards, 3);
        ASSERT_EQ_U(cb->n, 30); /* tiny: 3 layers x 9 + embed, norm, lm_head */
        size_t i;
        ASSERT_EQ_I(nlsr_ckpt_find(cb, "model.layers.2.mlp.down_proj.weight", &i), 0);
        ASSERT_EQ_U(cb->t[i].t->shape[0], 96);
        ASSERT_EQ_U(cb->t[i].t->shape[1], 232);
        /* Non-targets equal across roles; targets differ. */
        uint64_t n1, n2;
        ASSERT_EQ_I(nlsr_ckpt_find(cb, "model.norm.weight", &i), 0);
        unsigned char *x = read_tensor(cb, i, &n1), *y = read_tensor(cf, i, &n2);
        ASSERT_TRUE(n1 == n2 && memcmp(x, y, (size_t)n1) == 0);
        free(x);
        free(y);
        /* The fine-tune keeps the alignment in layer 1 and mostly undoes it in 0 and 2. */
        const char *mods[] = {"self_attn.q_proj", "mlp.down_proj"};
        for (int m = 0; m < 2; m++)
            for (int L = 0; L < 3; L++) {
                char nm[128];
                snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", L, mods[m]);
                double c = delta_cos(cb, ca, cf, nm);
                if (L == 1) ASSERT_TRUE(c > 0.55);
                else ASSERT_TRUE(c < 0.3);
            }
    }
    nlsr_ckpt_free(cb);
    nlsr_ckpt_free(ca);
    nlsr_ckpt_free(cf);
    nlsr_ctx_free(ctx);
    /* Amplify over the synthetic pair (sharded, index): exact, and as planned. */
    uint64_t rd = 0, wr = 0;
    ASSERT_EQ_I(amplify_with(b, a, o, NLSR_IO_AUTO, 400u << 10, 0.9, &rd, &wr, NULL, 0), 0);
    ASSERT_EQ_I(check_output(b, a, o, 0.9), 0);
    /* F16 and F32 outputs. */
    ASSERT_EQ_I(synth(a2, NLSR_SYNTH_ALIGNED, 7, NLSR_DTYPE_F16, 0, 1, 0, NLSR_IO_AUTO), 0);
    ASSERT_EQ_I(synth(f, NLSR_SYNTH_BASE, 7, NLSR_DTYPE_F32, 0, 1, 0, NLSR_IO_AUTO), 0);
    ASSERT_EQ_I(amplify_with(f, a2, o, NLSR_IO_AUTO, 0, 0.9, NULL, NULL, NULL, 0), 0);
    ASSERT_EQ_I(check_output(f, a2, o, 0.9), 0);
    free(b);
    free(a);
    free(f);
    free(a2);
    free(o);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nlsr-test-amplify-%ld", (long)getpid());
    mkdir(tmpdir, 0755);
    RUN_TEST(test_fixture_exact);
    RUN_TEST(test_mixed_dtypes);
    RUN_TEST(test_backends_budgets);
    RUN_TEST(test_refusals);
    RUN_TEST(test_nonfinite_clean_failure);
    RUN_TEST(test_synth);
    (void)nlsr_tree_remove(tmpdir);
    return test_finish();
}
