/* SPDX-License-Identifier: Apache-2.0 */
/* PEFT LoRA adapters through the three NLSR steps (METHOD.md): module discovery and the
 * cross-checks between adapters, step 1 (amplification of the aligned adapter; the base is the
 * zero adapter), step 2 (per-factor magnitude masks, or masks from a file in the authors'
 * layout), step 3 (similarity of the masked products through r x r Grams, selection, per-factor
 * transplant) and the adapter writer. The prepared-patches file side lives in lora_patch.c.
 *
 * Adapters are small (r x in and out x r per module), so the reference factors and masks of a
 * whole adapter are held in memory, in one block charged to the budget; tensor data is read
 * through nlsr_stream all the same. */
#define _GNU_SOURCE
#include "../common/params.h"
#include "lora.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/shape.h"
#include "../compute/convert.h"
#include "../compute/kth.h"
#include "../compute/lora_gram.h"
#include "../compute/selection.h"
#include "../io/checkpoint.h"
#include "../io/file.h"
#include "../io/outpath.h"
#include "audit.h"
#include "../io/sidefiles.h"
#include "report.h"
#include "../io/stream.h"
#include "../plan/targets.h"

#define SUFFIX_A ".lora_A.weight"
#define SUFFIX_B ".lora_B.weight"
#define MASK_SUFFIX_A ".lora_A.default"
#define MASK_SUFFIX_B ".lora_B.default"
#define ADAPTER_FILE "adapter_model.safetensors"
#define ADAPTER_CONFIG "adapter_config.json"
#define MAX_LIST 4 /* names quoted in one mismatch message */

static const st_tensor *tensor_of(const nlsr_ckpt *ck, size_t i)
{
    return ck->t[i].t;
}

static const char *file_of(const nlsr_ckpt *ck, size_t i)
{
    return ck->shards[ck->t[i].shard]->path;
}

static int ends_with(const char *s, const char *suf)
{
    size_t L = strlen(s), l = strlen(suf);
    return L >= l && strcmp(s + L - l, suf) == 0;
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

/* ---- modules ----------------------------------------------------------------------------- */

static int copy_targets(nlsr_ctx *ctx, const nlsr_ckpt *ck, lora_prep *P)
{
    P->lora_r = ck->lora_r;
    P->lora_alpha = ck->lora_alpha;
    if (ck->ntargets == 0) return 0;
    P->targets = calloc(ck->ntargets, sizeof *P->targets);
    NLSR_FAIL_IF(!P->targets, &ctx->err, -ENOMEM, "%s: out of memory", ck->path);
    for (size_t i = 0; i < ck->ntargets; i++) {
        P->targets[i] = strdup(ck->targets[i]);
        NLSR_FAIL_IF(!P->targets[i], &ctx->err, -ENOMEM, "%s: out of memory", ck->path);
        P->ntargets++;
    }
    return 0;
}

/* The lora_A name of a factor's partner, for a name ending in one of the two suffixes. */
static int check_partner(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *name, const char *has,
                         const char *wants)
{
    size_t L = strlen(name) - strlen(has);
    char *other = malloc(L + strlen(wants) + 1);
    NLSR_FAIL_IF(!other, &ctx->err, -ENOMEM, "%s: out of memory", ck->path);
    memcpy(other, name, L);
    strcpy(other + L, wants);
    size_t idx;
    int found = nlsr_ckpt_find(ck, other, &idx) == 0;
    int rc = found ? 0
                   : nlsr_fail(&ctx->err, NLSR_E_FORMAT,
                               "%s: LoRA factor '%s' has no partner '%s'", ck->path, name, other);
    free(other);
    return rc;
}

static int cmp_mod(const void *a, const void *b)
{
    return strcmp(((const lora_mod *)a)->prefix, ((const lora_mod *)b)->prefix);
}

int lora_list_modules(nlsr_ctx *ctx, const nlsr_ckpt *ck, const nlsr_realign_params *p,
                      lora_prep *out)
{
    nlsr_err *e = &ctx->err;
    memset(out, 0, sizeof *out);
    NLSR_FAIL_IF(ck->kind != NLSR_CKPT_PEFT, e, NLSR_E_USAGE,
                 "%s: not a PEFT adapter folder (no %s beside %s)", ck->path, ADAPTER_CONFIG,
                 ADAPTER_FILE);
    NLSR_FORWARD(copy_targets(ctx, ck, out));
    out->m = calloc(ck->n ? ck->n : 1, sizeof *out->m);
    NLSR_FAIL_IF(!out->m, e, -ENOMEM, "%s: out of memory", ck->path);
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = tensor_of(ck, i);
        int is_a = ends_with(t->name, SUFFIX_A), is_b = ends_with(t->name, SUFFIX_B);
        if (!is_a && !is_b) continue;
        if (t->ndim != 2) {
            char s[128];
            nlsr_shape_str(t->ndim, t->shape, ",", s, sizeof s);
            return nlsr_fail(e, NLSR_E_FORMAT, "%s: LoRA factor '%s' has shape %s, not 2-D",
                             file_of(ck, i), t->name, s);
        }
        if (is_b) {
            /* Every B needs its A; the A side below finds each A's B. */
            NLSR_FORWARD(check_partner(ctx, ck, t->name, SUFFIX_B, SUFFIX_A));
            continue;
        }
        NLSR_FORWARD(check_partner(ctx, ck, t->name, SUFFIX_A, SUFFIX_B));
        if (!nlsr_is_target(t, p->targets, p->ntargets)) continue;
        lora_mod *m = &out->m[out->n];
        m->prefix = strndup(t->name, strlen(t->name) - strlen(SUFFIX_A));
        NLSR_FAIL_IF(!m->prefix, e, -ENOMEM, "%s: out of memory", ck->path);
        out->n++;
        char *bname = concat(m->prefix, SUFFIX_B);
        NLSR_FAIL_IF(!bname, e, -ENOMEM, "%s: out of memory", ck->path);
        int rc = nlsr_ckpt_find(ck, bname, &m->tb);
        free(bname);
        NLSR_FORWARD(rc);
        m->ta = i;
        const st_tensor *b = tensor_of(ck, m->tb);
        m->da = t->dtype;
        m->db = b->dtype;
        m->r = t->shape[0];
        m->in = t->shape[1];
        m->out = b->shape[0];
        NLSR_FAIL_IF(b->shape[1] != m->r, e, NLSR_E_FORMAT,
                     "%s: module '%s': lora_A has rank %" PRIu64 " but lora_B has %" PRIu64,
                     file_of(ck, i), m->prefix, m->r, b->shape[1]);
        NLSR_FAIL_IF(m->r == 0 || m->in == 0 || m->out == 0, e, NLSR_E_FORMAT,
                     "%s: module '%s' has an empty dimension (r=%" PRIu64 ", in=%" PRIu64
                     ", out=%" PRIu64 ")",
                     file_of(ck, i), m->prefix, m->r, m->in, m->out);
        NLSR_FAIL_IF(!nlsr_dtype_is_writable_float(m->da), e, NLSR_E_DTYPE,
                     "%s: tensor '%s' has dtype %s; LoRA factors must be F32, F16, BF16 or F64",
                     file_of(ck, i), t->name, nlsr_dtype_name(m->da));
        NLSR_FAIL_IF(!nlsr_dtype_is_writable_float(m->db), e, NLSR_E_DTYPE,
                     "%s: tensor '%s' has dtype %s; LoRA factors must be F32, F16, BF16 or F64",
                     file_of(ck, m->tb), b->name, nlsr_dtype_name(m->db));
    }
    /* Module order is the bytewise order of the module names (the prefixes), which is the A
     * tensors' name order unless one prefix extends another with a byte below '.'; the names
     * are what reports and the patches file list, so they decide. */
    qsort(out->m, out->n, sizeof *out->m, cmp_mod);
    /* Nothing to realign is almost certainly a wrong --targets list: say so rather than copy
     * the adapter through unchanged. */
    NLSR_FAIL_IF(out->n == 0, e, NLSR_E_USAGE,
                 "%s: no LoRA module (<module>%s with <module>%s) matches the target names",
                 ck->path, SUFFIX_A, SUFFIX_B);
    return 0;
}

int lora_prep_alloc(nlsr_ctx *ctx, lora_prep *P)
{
    uint64_t nf = 0;
    for (size_t j = 0; j < P->n; j++) nf += P->m[j].r * (P->m[j].in + P->m[j].out);
    /* Floats first so that they stay aligned, then the masks. */
    P->block_bytes = (size_t)(nf * (sizeof(float) + 1));
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, P->block_bytes, "LoRA reference factors and masks",
                                   &P->block, &ctx->err));
    float *f = P->block;
    uint8_t *u = (uint8_t *)(f + nf);
    for (size_t j = 0; j < P->n; j++) {
        lora_mod *m = &P->m[j];
        m->ea = f;
        f += m->r * m->in;
        m->eb = f;
        f += m->r * m->out;
        m->ma = u;
        u += m->r * m->in;
        m->mb = u;
        u += m->r * m->out;
    }
    return 0;
}

void lora_prep_free(nlsr_ctx *ctx, lora_prep *P)
{
    if (P->block) nlsr_budget_free(&ctx->budget, P->block, P->block_bytes);
    for (size_t j = 0; j < P->n; j++) free(P->m[j].prefix);
    free(P->m);
    for (size_t i = 0; i < P->ntargets; i++) free(P->targets[i]);
    free(P->targets);
    memset(P, 0, sizeof *P);
}

/* ---- reading ----------------------------------------------------------------------------- */

/* A stream over every module's (A, B) pair of ck; ta/tb give the tensor indexes, or NULL to
 * take them from P (the modules' own adapter). */
static int open_pairs(nlsr_ctx *ctx, const nlsr_ckpt *ck, const lora_prep *P, const size_t *ta,
                      const size_t *tb, nlsr_stream **s)
{
    nlsr_unit *u = calloc(P->n ? P->n : 1, sizeof *u);
    NLSR_FAIL_IF(!u, &ctx->err, -ENOMEM, "%s: out of memory", ck->path);
    for (size_t j = 0; j < P->n; j++) {
        const lora_mod *m = &P->m[j];
        u[j].nspans = 2;
        u[j].span[0] = (nlsr_span){ck, ta ? ta[j] : m->ta, 0, m->r * m->in};
        u[j].span[1] = (nlsr_span){ck, tb ? tb[j] : m->tb, 0, m->r * m->out};
        u[j].tag = j;
    }
    int rc = nlsr_stream_open(ctx, u, P->n, 2, s);
    free(u);
    return rc;
}

static int check_finite(nlsr_ctx *ctx, const nlsr_ckpt *ck, size_t ti, const float *v,
                        uint64_t n, const char *what)
{
    for (uint64_t k = 0; k < n; k++)
        NLSR_FAIL_IF(!isfinite(v[k]), &ctx->err, NLSR_E_VALUE,
                     "%s: tensor '%s': element %" PRIu64 " is %g%s", file_of(ck, ti),
                     tensor_of(ck, ti)->name, k, (double)v[k], what);
    return 0;
}

/* ---- step 1: the reference ---------------------------------------------------------------- */

/* v stored in dtype t and read back: the value the reference file holds (e_s). */
static float stored(nlsr_dtype t, float v)
{
    if (t == NLSR_DTYPE_BF16) return nlsr_bf16_to_f32(nlsr_f32_to_bf16(v));
    if (t == NLSR_DTYPE_F16) return nlsr_f16_to_f32(nlsr_f32_to_f16(v));
    return v; /* F32 is exact; F64 widens f32 exactly */
}

/* METHOD.md step 1 for LoRA, the zero adapter being the base. paper: B_e = (1+beta) B_a with
 * the factor rounded to f32 once and the product in f32. authors: their script's
 * p_e = (p*alpha) + (p*alpha), each operation rounded to the adapter dtype as torch does. */
static void amplify_factor(const nlsr_realign_params *p, int is_b, nlsr_dtype t, float *v,
                           uint64_t n)
{
    if (p->amplify == NLSR_AMPLIFY_PAPER) {
        if (!is_b) return;
        float g = (float)(1.0 + p->beta);
        for (uint64_t k = 0; k < n; k++) v[k] = stored(t, g * v[k]);
        return;
    }
    float al = (float)p->alpha;
    for (uint64_t k = 0; k < n; k++) {
        float q = stored(t, v[k] * al);
        v[k] = stored(t, q + q);
    }
}

static int check_params(nlsr_ctx *ctx, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    /* The low-rank and Wanda scorers act on a module's delta B A and its input activations;
     * per factor they would mean something else (B's input is A X), so adapters keep the
     * magnitude rule or take masks made elsewhere (docs/LOWRANK.md). */
    NLSR_FAIL_IF(p->scorer.kind != NLSR_SCORER_MAGNITUDE || p->scorer.activations, e,
                 NLSR_E_USAGE,
                 "the %s scorer is for full-weight checkpoints; LoRA adapters use the magnitude "
                 "rule or --mask FILE (e.g. masks from the authors' activation-based scorer)",
                 p->scorer.kind == NLSR_SCORER_LOWRANK ? "lowrank"
                 : p->scorer.kind == NLSR_SCORER_WANDA ? "wanda"
                                                       : "magnitude (with activations)");
    return 0;
}

/* Reads every module's factors of src into P's block: e_s (amplified unless is_reference). */
static int load_reference(nlsr_ctx *ctx, const nlsr_ckpt *src, int is_reference,
                          const nlsr_realign_params *p, lora_prep *P)
{
    nlsr_stream *s = NULL;
    NLSR_FORWARD(open_pairs(ctx, src, P, NULL, NULL, &s));
    int rc;
    const nlsr_unit *u;
    const unsigned char *const *data;
    while ((rc = nlsr_stream_next(s, &u, &data)) == 1) {
        lora_mod *m = &P->m[u->tag];
        uint64_t na = m->r * m->in, nb = m->r * m->out;
        nlsr_to_f32(m->da, data[0], m->ea, (size_t)na);
        nlsr_to_f32(m->db, data[1], m->eb, (size_t)nb);
        rc = check_finite(ctx, src, m->ta, m->ea, na, "");
        if (rc == 0) rc = check_finite(ctx, src, m->tb, m->eb, nb, "");
        if (rc == 0 && !is_reference) {
            amplify_factor(p, 0, m->da, m->ea, na);
            amplify_factor(p, 1, m->db, m->eb, nb);
            rc = check_finite(ctx, src, m->ta, m->ea, na, " after amplification");
            if (rc == 0) rc = check_finite(ctx, src, m->tb, m->eb, nb, " after amplification");
        }
        if (rc < 0) break;
    }
    nlsr_stream_close(s);
    return rc < 0 ? rc : 0;
}

/* ---- step 2: masks ------------------------------------------------------------------------ */

/* The magnitude rule on one factor: s = |e|, k = (long)(n * sparsity), thr = k-th smallest,
 * M = s > thr (empty when k >= n). Returns the number of set elements. */
static uint64_t magnitude_mask(const float *v, uint64_t n, double sparsity, float *scratch,
                               uint8_t *m)
{
    uint64_t k = nlsr_mask_k(n, sparsity);
    if (k >= n) {
        memset(m, 0, (size_t)n);
        return 0;
    }
    for (uint64_t i = 0; i < n; i++) scratch[i] = fabsf(v[i]);
    float thr = nlsr_kth_inplace(scratch, (size_t)n, k);
    uint64_t c = 0;
    for (uint64_t i = 0; i < n; i++) {
        m[i] = fabsf(v[i]) > thr;
        c += m[i];
    }
    return c;
}

static int magnitude_masks(nlsr_ctx *ctx, const nlsr_realign_params *p, lora_prep *P)
{
    uint64_t maxn = 0;
    for (size_t j = 0; j < P->n; j++) {
        uint64_t a = P->m[j].r * P->m[j].in, b = P->m[j].r * P->m[j].out;
        if (a > maxn) maxn = a;
        if (b > maxn) maxn = b;
    }
    float *scratch = NULL;
    size_t bytes = (size_t)maxn * sizeof(float);
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, bytes, "LoRA mask scores", (void **)&scratch,
                                   &ctx->err));
    for (size_t j = 0; j < P->n; j++) {
        lora_mod *m = &P->m[j];
        m->mask_count = magnitude_mask(m->ea, m->r * m->in, p->sparsity, scratch, m->ma) +
                        magnitude_mask(m->eb, m->r * m->out, p->sparsity, scratch, m->mb);
    }
    nlsr_budget_free(&ctx->budget, scratch, bytes);
    return 0;
}

/* Finds the mask tensor `name` for factor (rows x cols) of module m; shape must match. */
static int find_mask(nlsr_ctx *ctx, const nlsr_ckpt *mk, const lora_mod *m, const char *suffix,
                     uint64_t rows, uint64_t cols, size_t *idx)
{
    nlsr_err *e = &ctx->err;
    char *name = concat(m->prefix, suffix);
    NLSR_FAIL_IF(!name, e, -ENOMEM, "%s: out of memory", mk->path);
    int rc = 0;
    if (nlsr_ckpt_find(mk, name, idx) != 0) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s: no mask '%s' for module '%s'", mk->path, name,
                       m->prefix);
    } else {
        const st_tensor *t = tensor_of(mk, *idx);
        if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
            char s[128];
            nlsr_shape_str(t->ndim, t->shape, ",", s, sizeof s);
            rc = nlsr_fail(e, NLSR_E_MISMATCH,
                           "%s: mask '%s' has shape %s but the factor is [%" PRIu64 ",%" PRIu64
                           "]",
                           mk->path, name, s, rows, cols);
        }
    }
    free(name);
    return rc;
}

/* Copies one mask tensor's 0/1 values (any dtype) into m, refusing any other value. */
static uint64_t take_mask(nlsr_ctx *ctx, const nlsr_ckpt *mk, size_t ti,
                          const unsigned char *raw, uint8_t *m, uint64_t n, int *rc)
{
    const st_tensor *t = tensor_of(mk, ti);
    size_t es = nlsr_dtype_size(t->dtype);
    uint64_t c = 0;
    for (uint64_t k = 0; k < n; k++) {
        double v;
        nlsr_to_f64(t->dtype, raw + k * es, &v, 1);
        if (v != 0.0 && v != 1.0) {
            *rc = nlsr_fail(&ctx->err, NLSR_E_VALUE,
                            "%s: mask '%s': element %" PRIu64 " is %g, not 0 or 1", mk->path,
                            t->name, k, v);
            return c;
        }
        m[k] = v == 1.0;
        c += m[k];
    }
    return c;
}

/* --mask FILE: a safetensors file of 0/1 tensors keyed <prefix>.lora_A.default and
 * <prefix>.lora_B.default (the authors' layout), e.g. from their activation-based scorer.
 * Every key must name a LoRA module of the adapter (a stray key means the mask was made for
 * another adapter); every target module needs both of its masks, shaped like its factors. */
static int masks_from_file(nlsr_ctx *ctx, const nlsr_ckpt *src, const char *path, lora_prep *P)
{
    nlsr_err *e = &ctx->err;
    nlsr_ckpt *mk = NULL;
    size_t *ia = NULL, *ib = NULL;
    nlsr_stream *s = NULL;
    int rc = nlsr_ckpt_open(ctx, path, &mk);
    if (rc < 0) return rc;
    for (size_t i = 0; i < mk->n && rc == 0; i++) {
        const char *name = tensor_of(mk, i)->name;
        const char *suf = ends_with(name, MASK_SUFFIX_A)   ? MASK_SUFFIX_A
                          : ends_with(name, MASK_SUFFIX_B) ? MASK_SUFFIX_B
                                                           : NULL;
        if (!suf) {
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: key '%s' is not <module>%s or <module>%s", path, name,
                           MASK_SUFFIX_A, MASK_SUFFIX_B);
            break;
        }
        char *a = strndup(name, strlen(name) - strlen(suf));
        char *an = a ? concat(a, SUFFIX_A) : NULL;
        size_t idx;
        if (!an) rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        else if (nlsr_ckpt_find(src, an, &idx) != 0)
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s: mask '%s' names no LoRA module of %s", path,
                           name, src->path);
        free(an);
        free(a);
    }
    ia = calloc(P->n ? P->n : 1, sizeof *ia);
    ib = calloc(P->n ? P->n : 1, sizeof *ib);
    if (rc == 0 && (!ia || !ib)) rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
    for (size_t j = 0; j < P->n && rc == 0; j++) {
        const lora_mod *m = &P->m[j];
        rc = find_mask(ctx, mk, m, MASK_SUFFIX_A, m->r, m->in, &ia[j]);
        if (rc == 0) rc = find_mask(ctx, mk, m, MASK_SUFFIX_B, m->out, m->r, &ib[j]);
    }
    if (rc == 0) rc = open_pairs(ctx, mk, P, ia, ib, &s);
    const nlsr_unit *u;
    const unsigned char *const *data;
    while (rc == 0 && (rc = nlsr_stream_next(s, &u, &data)) == 1) {
        lora_mod *m = &P->m[u->tag];
        rc = 0;
        m->mask_count = take_mask(ctx, mk, ia[u->tag], data[0], m->ma, m->r * m->in, &rc);
        if (rc == 0)
            m->mask_count += take_mask(ctx, mk, ib[u->tag], data[1], m->mb, m->r * m->out, &rc);
    }
    nlsr_stream_close(s);
    free(ib);
    free(ia);
    nlsr_ckpt_free(mk);
    return rc < 0 ? rc : 0;
}

int lora_prep_build(nlsr_ctx *ctx, const nlsr_ckpt *src, int is_reference,
                    const nlsr_realign_params *p, lora_prep *P)
{
    memset(P, 0, sizeof *P); /* the caller frees P whatever happens */
    NLSR_FORWARD(check_params(ctx, p));
    NLSR_FORWARD(lora_list_modules(ctx, src, p, P));
    NLSR_FORWARD(lora_prep_alloc(ctx, P));
    NLSR_FORWARD(load_reference(ctx, src, is_reference, p, P));
    if (p->mask_path) return masks_from_file(ctx, src, p->mask_path, P);
    return magnitude_masks(ctx, p, P);
}

/* ---- output --------------------------------------------------------------------------------- */

/* What the writer does with one tensor of the layout adapter: vals NULL copies the bytes;
 * otherwise vals[k] (stored in the tensor's dtype) replaces element k where mask is NULL or
 * mask[k] is set, and every other byte is copied. */
typedef struct lora_action {
    const float *vals;
    const uint8_t *mask;
} lora_action;

static int cmp_begin(const void *a, const void *b, void *arg)
{
    const nlsr_ckpt *ck = arg;
    const st_tensor *x = ck->t[*(const size_t *)a].t, *y = ck->t[*(const size_t *)b].t;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Writes adapter_model.safetensors into dir with the layout adapter's tensor names, data
 * order, dtypes, shapes and metadata (so an untouched adapter comes out byte-identical), the
 * bytes per act[]. */
static int write_model(nlsr_ctx *ctx, const nlsr_ckpt *ck, const lora_action *act,
                       const char *dir)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(ck->nshards != 1, e, NLSR_E_FORMAT, "%s: a PEFT adapter has one file, not %zu",
                 ck->path, ck->nshards);
    int rc = 0;
    size_t n = ck->n;
    size_t *ord = calloc(n ? n : 1, sizeof *ord);
    st_wtensor *wt = calloc(n ? n : 1, sizeof *wt);
    nlsr_unit *u = calloc(n ? n : 1, sizeof *u);
    char *path = nlsr_path_join(dir, ADAPTER_FILE);
    unsigned char *buf = NULL;
    size_t buf_bytes = 0;
    st_writer *w = NULL;
    nlsr_stream *s = NULL;
    if (!ord || !wt || !u || !path) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", ck->path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) ord[i] = i;
    qsort_r(ord, n, sizeof *ord, cmp_begin, (void *)ck);
    for (size_t k = 0; k < n; k++) {
        const st_tensor *t = tensor_of(ck, ord[k]);
        wt[k] = (st_wtensor){t->name, t->dtype, t->ndim, t->shape};
        u[k].nspans = 1;
        u[k].span[0] = (nlsr_span){ck, ord[k], 0, t->numel};
        u[k].tag = ord[k];
        if (act[ord[k]].vals && t->end - t->begin > buf_bytes) buf_bytes = t->end - t->begin;
    }
    rc = nlsr_budget_alloc(&ctx->budget, buf_bytes, "LoRA output tensor", (void **)&buf, e);
    if (rc == 0) rc = nlsr_stream_open(ctx, u, n, 2, &s);
    const st_file *sh = ck->shards[0];
    if (rc == 0) rc = st_writer_begin(path, wt, n, sh->h.meta, sh->h.nmeta, &w, e);
    const nlsr_unit *un;
    const unsigned char *const *data;
    while (rc == 0 && (rc = nlsr_stream_next(s, &un, &data)) == 1) {
        const st_tensor *t = tensor_of(ck, un->tag);
        const lora_action *a = &act[un->tag];
        size_t nb = (size_t)(t->end - t->begin), es = nlsr_dtype_size(t->dtype);
        const unsigned char *src = data[0];
        if (a->vals) {
            memcpy(buf, src, nb);
            for (uint64_t k = 0; k < t->numel; k++)
                if (!a->mask || a->mask[k]) nlsr_from_f32(t->dtype, &a->vals[k], buf + k * es, 1);
            src = buf;
        }
        rc = st_writer_write(w, src, nb);
        if (rc == 0) ctx->bytes_written += nb;
    }
    if (rc == 0) {
        rc = st_writer_commit(w);
        w = NULL;
    }
done:
    st_writer_abort(w);
    nlsr_stream_close(s);
    nlsr_budget_free(&ctx->budget, buf, buf_bytes);
    free(path);
    free(u);
    free(wt);
    free(ord);
    return rc < 0 ? rc : 0;
}

/* The output adapter folder, built in a temporary folder beside out_dir and moved into place
 * when complete: adapter_model.safetensors per act[] and the layout adapter's side files
 * (adapter_config.json, README.md, tokenizer files ...) as src/io/sidefiles.h says; the report
 * (rep, may be NULL) is staged before the move. */
static int write_adapter(nlsr_ctx *ctx, const nlsr_ckpt *ck, const lora_action *act,
                         const char *out_dir, const nlsr_realign_params *p, nlsr_sidefiles *sf,
                         nlsr_report *rep)
{
    char *tmp = NULL;
    int rc = nlsr_out_check(ctx, out_dir, NLSR_OUT_DIR, p->force, NULL, 0, NULL);
    if (rc == 0) rc = nlsr_tmp_dir(ctx, out_dir, &tmp);
    if (rc == 0) nlsr_audit_output_at(ctx, out_dir, tmp);
    if (rc == 0) rc = write_model(ctx, ck, act, tmp);
    if (rc == 0) rc = nlsr_sidefiles_copy(ctx, ck, tmp, p->drop_other_weights, sf);
    if (rc == 0 && rep) rc = nlsr_report_stage(rep, ctx, p);
    if (rc == 0) rc = nlsr_tmp_dir_commit(ctx, tmp, out_dir, p->force);
    if (rc < 0) nlsr_tmp_remove(tmp);
    free(tmp);
    return rc;
}

static int refuse_existing(nlsr_ctx *ctx, const char *path, int force)
{
    NLSR_FAIL_IF(path && !force && nlsr_exists(path), &ctx->err, NLSR_E_EXISTS,
                 "%s: exists (use --force to replace it)", path);
    return 0;
}

typedef struct mask_entry {
    char *name;
    const uint8_t *m;
    uint64_t shape[2];
} mask_entry;

static int cmp_mask_entry(const void *a, const void *b)
{
    return strcmp(((const mask_entry *)a)->name, ((const mask_entry *)b)->name);
}

int lora_write_masks(nlsr_ctx *ctx, const lora_prep *P, const char *path, int force)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(refuse_existing(ctx, path, force));
    int rc = 0;
    size_t n = 2 * P->n;
    mask_entry *me = calloc(n ? n : 1, sizeof *me);
    st_wtensor *wt = calloc(n ? n : 1, sizeof *wt);
    st_writer *w = NULL;
    if (!me || !wt) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t j = 0; j < P->n; j++) {
        const lora_mod *m = &P->m[j];
        me[2 * j] = (mask_entry){concat(m->prefix, MASK_SUFFIX_A), m->ma, {m->r, m->in}};
        me[2 * j + 1] = (mask_entry){concat(m->prefix, MASK_SUFFIX_B), m->mb, {m->out, m->r}};
        if (!me[2 * j].name || !me[2 * j + 1].name) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
            goto done;
        }
    }
    /* The reference writer (safetensors' serialize) lays out tensors of one dtype by name, and
     * the authors' file has no __metadata__: the same bytes follow. */
    qsort(me, n, sizeof *me, cmp_mask_entry);
    for (size_t k = 0; k < n; k++) wt[k] = (st_wtensor){me[k].name, NLSR_DTYPE_U8, 2, me[k].shape};
    rc = st_writer_begin(path, wt, n, NULL, 0, &w, e);
    for (size_t k = 0; k < n && rc == 0; k++) {
        size_t nb = (size_t)(me[k].shape[0] * me[k].shape[1]);
        rc = st_writer_write(w, me[k].m, nb);
        if (rc == 0) ctx->bytes_written += nb;
    }
    if (rc == 0) {
        rc = st_writer_commit(w);
        w = NULL;
    }
done:
    st_writer_abort(w);
    if (me)
        for (size_t k = 0; k < n; k++) free(me[k].name);
    free(me);
    free(wt);
    return rc;
}

/* ---- step 3 ------------------------------------------------------------------------------- */

static int in_list(char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0) return 1;
    return 0;
}

/* Appends up to MAX_LIST names of a that b lacks to buf; returns how many there are. */
static size_t list_missing(char *const *a, size_t na, char *const *b, size_t nb, char *buf,
                           size_t cap)
{
    size_t c = 0, k = strlen(buf);
    for (size_t i = 0; i < na; i++) {
        if (in_list(b, nb, a[i])) continue;
        if (c < MAX_LIST && k < cap)
            k += (size_t)snprintf(buf + k, cap - k, "%s%s", c ? ", " : "", a[i]);
        c++;
    }
    if (c > MAX_LIST && k < cap) snprintf(buf + k, cap - k, " and %zu more", c - MAX_LIST);
    return c;
}

/* The fine-tuned adapter must be the same adapter shape as the reference: same r, lora_alpha,
 * target modules, LoRA modules and factor shapes. A module only one side has is refused rather
 * than left alone: it means the two adapters were not trained with the same configuration (or
 * are the wrong pair), and a partly realigned adapter would look complete in the report.
 * ta/tb receive, per module of P, the indexes of its A and B in ft. */
static int check_pair(nlsr_ctx *ctx, const lora_prep *P, const char *ref_name,
                      const nlsr_ckpt *ft, const lora_prep *T, size_t *ta, size_t *tb)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(P->lora_r != T->lora_r, e, NLSR_E_MISMATCH,
                 "LoRA rank differs: %s has r=%d, %s has r=%d", ref_name, P->lora_r, ft->path,
                 T->lora_r);
    NLSR_FAIL_IF(P->lora_alpha != T->lora_alpha, e, NLSR_E_MISMATCH,
                 "lora_alpha differs: %s has %g, %s has %g", ref_name, P->lora_alpha, ft->path,
                 T->lora_alpha);
    char only_ref[512] = "", only_ft[512] = "";
    size_t c1 = list_missing(P->targets, P->ntargets, T->targets, T->ntargets, only_ref,
                             sizeof only_ref);
    size_t c2 = list_missing(T->targets, T->ntargets, P->targets, P->ntargets, only_ft,
                             sizeof only_ft);
    NLSR_FAIL_IF(c1 || c2, e, NLSR_E_MISMATCH,
                 "target_modules differ: only %s has [%s], only %s has [%s]", ref_name,
                 only_ref, ft->path, only_ft);
    /* Both module lists are in bytewise name order: one merge walk finds the differences. */
    size_t a = 0, b = 0;
    while (a < P->n || b < T->n) {
        int c = a >= P->n ? 1 : b >= T->n ? -1 : strcmp(P->m[a].prefix, T->m[b].prefix);
        NLSR_FAIL_IF(c < 0, e, NLSR_E_MISMATCH,
                     "LoRA module '%s' is in %s but not in %s (%zu modules vs %zu)",
                     P->m[a].prefix, ref_name, ft->path, P->n, T->n);
        NLSR_FAIL_IF(c > 0, e, NLSR_E_MISMATCH,
                     "LoRA module '%s' is in %s but not in %s (%zu modules vs %zu)",
                     T->m[b].prefix, ft->path, ref_name, T->n, P->n);
        const lora_mod *x = &P->m[a], *y = &T->m[b];
        NLSR_FAIL_IF(x->r != y->r || x->in != y->in || x->out != y->out, e, NLSR_E_MISMATCH,
                     "LoRA module '%s': %s has A [%" PRIu64 ",%" PRIu64 "] B [%" PRIu64
                     ",%" PRIu64 "], %s has A [%" PRIu64 ",%" PRIu64 "] B [%" PRIu64
                     ",%" PRIu64 "]",
                     x->prefix, ref_name, x->r, x->in, x->out, x->r, ft->path, y->r, y->in,
                     y->out, y->r);
        ta[a] = y->ta;
        tb[a] = y->tb;
        a++;
        b++;
    }
    return 0;
}

/* Every masked value of e (a factor's reference, f32) as ft's tensor ti stores it must be
 * finite: a reference finite in its own dtype can overflow a narrower fine-tune (F16). Checked
 * for every module before anything is written, patched or not. */
static int check_dest(nlsr_ctx *ctx, const nlsr_ckpt *ft, size_t ti, const float *e,
                      const uint8_t *mask, uint64_t n, const char *source)
{
    const st_tensor *t = tensor_of(ft, ti);
    if (t->dtype == NLSR_DTYPE_F32 || t->dtype == NLSR_DTYPE_F64) return 0;
    for (uint64_t k = 0; k < n; k++)
        NLSR_FAIL_IF(mask[k] && !isfinite(stored(t->dtype, e[k])), &ctx->err, NLSR_E_VALUE,
                     "%s: tensor '%s': element %" PRIu64 ": the realigned value %.9g (from %s) "
                     "is not finite in the fine-tune's dtype %s",
                     file_of(ft, ti), t->name, k, (double)e[k], source,
                     nlsr_dtype_name(t->dtype));
    return 0;
}

/* Similarity of every module (METHOD.md step 3, LoRA):
 * cos((B_t.M_B)(A_t.M_A), (B_e.M_B)(A_e.M_A)) in double through the r x r Grams. */
static int similarities(nlsr_ctx *ctx, const lora_prep *P, const char *ref_name,
                        const nlsr_ckpt *ft, const size_t *ta, const size_t *tb,
                        nlsr_report *rep)
{
    uint64_t maxf = 0, maxr = 0;
    for (size_t j = 0; j < P->n; j++) {
        const lora_mod *m = &P->m[j];
        if (m->r * (m->in + m->out) > maxf) maxf = m->r * (m->in + m->out);
        if (m->r > maxr) maxr = m->r;
    }
    size_t bytes = (size_t)(maxf * sizeof(float) + 2 * maxf * sizeof(double) +
                            nlsr_lora_gram_scratch((size_t)maxr) * sizeof(double));
    void *scratch = NULL;
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, bytes, "LoRA similarity scratch", &scratch,
                                   &ctx->err));
    double *d = scratch; /* doubles first, so that everything stays aligned */
    double *gram = d + 2 * maxf;
    float *tf = (float *)(gram + nlsr_lora_gram_scratch((size_t)maxr));
    nlsr_lora_gram_set_threads(ctx->threads);
    nlsr_stream *s = NULL;
    int rc = open_pairs(ctx, ft, P, ta, tb, &s);
    const nlsr_unit *u;
    const unsigned char *const *data;
    while (rc == 0 && (rc = nlsr_stream_next(s, &u, &data)) == 1) {
        const lora_mod *m = &P->m[u->tag];
        uint64_t na = m->r * m->in, nb = m->r * m->out;
        const st_tensor *xa = tensor_of(ft, ta[u->tag]), *xb = tensor_of(ft, tb[u->tag]);
        nlsr_to_f32(xa->dtype, data[0], tf, (size_t)na);
        nlsr_to_f32(xb->dtype, data[1], tf + na, (size_t)nb);
        rc = check_finite(ctx, ft, ta[u->tag], tf, na, "");
        if (rc == 0) rc = check_finite(ctx, ft, tb[u->tag], tf + na, nb, "");
        if (rc == 0) rc = check_dest(ctx, ft, ta[u->tag], m->ea, m->ma, na, ref_name);
        if (rc == 0) rc = check_dest(ctx, ft, tb[u->tag], m->eb, m->mb, nb, ref_name);
        if (rc < 0) break;
        /* Masked factors in double: t then e, each A then B. */
        double *tA = d, *tB = d + na, *eA = d + na + nb, *eB = eA + na;
        for (uint64_t k = 0; k < na; k++) {
            tA[k] = m->ma[k] ? (double)tf[k] : 0.0;
            eA[k] = m->ma[k] ? (double)m->ea[k] : 0.0;
        }
        for (uint64_t k = 0; k < nb; k++) {
            tB[k] = m->mb[k] ? (double)tf[na + k] : 0.0;
            eB[k] = m->mb[k] ? (double)m->eb[k] : 0.0;
        }
        double dot, n1, n2;
        nlsr_lora_gram_sums((size_t)m->out, (size_t)m->r, (size_t)m->in, tB, tA, eB, eA, gram,
                            &dot, &n1, &n2);
        size_t idx;
        rc = nlsr_report_add(rep, ctx, m->prefix, na + nb, m->mask_count, &idx);
        if (rc == 0) rep->m[idx].similarity = nlsr_cosine(dot, n1, n2);
    }
    nlsr_stream_close(s);
    nlsr_budget_free(&ctx->budget, scratch, bytes);
    return rc < 0 ? rc : 0;
}

int lora_realign(nlsr_ctx *ctx, const lora_prep *P, const char *ref_name, const nlsr_ckpt *ft,
                 const char *out_dir, const nlsr_realign_params *p, nlsr_report *rep)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(refuse_existing(ctx, out_dir, p->force));
    /* What the output folder will hold beside the adapter (src/io/sidefiles.h). */
    if (!rep->files.loaded)
        NLSR_FORWARD(nlsr_sidefiles_load(ctx, ft, p->drop_other_weights, 0, &rep->files));
    lora_prep T;
    size_t *ta = NULL, *tb = NULL;
    lora_action *act = NULL;
    rep->has_selection = 1;
    int rc = lora_list_modules(ctx, ft, p, &T);
    ta = calloc(P->n ? P->n : 1, sizeof *ta);
    tb = calloc(P->n ? P->n : 1, sizeof *tb);
    act = calloc(ft->n ? ft->n : 1, sizeof *act);
    if (rc == 0 && (!ta || !tb || !act)) rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", ft->path);
    if (rc == 0) rc = check_pair(ctx, P, ref_name, ft, &T, ta, tb);
    if (rc == 0) rc = similarities(ctx, P, ref_name, ft, ta, tb, rep);
    if (rc == 0) rc = nlsr_report_select(rep, ctx, &p->select);
    if (rc < 0) goto done;
    /* Per-factor transplant: A_t' = M_A ? A_e : A_t, B_t' = M_B ? B_e : B_t. */
    for (size_t j = 0; j < P->n; j++) {
        if (!rep->m[j].patched) continue;
        act[ta[j]] = (lora_action){P->m[j].ea, P->m[j].ma};
        act[tb[j]] = (lora_action){P->m[j].eb, P->m[j].mb};
    }
    /* Everything is validated by now. The masks (--mask-out) go first, so that the report
     * counts their bytes, and are taken back if the adapter cannot be written. */
    int wrote_masks = 0;
    if (p->mask_out_path) {
        rc = lora_write_masks(ctx, P, p->mask_out_path, p->force);
        wrote_masks = rc == 0;
    }
    if (rc == 0) rc = write_adapter(ctx, ft, act, out_dir, p, &rep->files, rep);
    if (rc < 0 && wrote_masks) unlink(p->mask_out_path);
    if (rc == 0) rc = nlsr_report_emit(rep, ctx, p);
done:
    lora_prep_free(ctx, &T);
    free(act);
    free(tb);
    free(ta);
    return rc;
}

/* ---- public LoRA jobs (prepare and apply: lora_patch.c) ------------------------------------- */

int nlsr_lora_amplify(nlsr_ctx *ctx, const nlsr_ckpt *aligned, const char *out_dir,
                      const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(refuse_existing(ctx, out_dir, p->force));
    NLSR_FORWARD(check_params(ctx, p));
    nlsr_sidefiles sf;
    NLSR_FORWARD(nlsr_sidefiles_load(ctx, aligned, p->drop_other_weights, 0, &sf));
    lora_prep P;
    lora_action *act = NULL;
    int rc = lora_list_modules(ctx, aligned, p, &P);
    if (rc == 0) rc = lora_prep_alloc(ctx, &P);
    if (rc == 0) rc = load_reference(ctx, aligned, 0, p, &P);
    if (rc == 0 && !(act = calloc(aligned->n ? aligned->n : 1, sizeof *act)))
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", aligned->path);
    if (rc == 0) {
        for (size_t j = 0; j < P.n; j++) {
            /* paper mode leaves A as it is: copy its bytes rather than round-trip them. */
            if (p->amplify != NLSR_AMPLIFY_PAPER) act[P.m[j].ta] = (lora_action){P.m[j].ea, NULL};
            act[P.m[j].tb] = (lora_action){P.m[j].eb, NULL};
        }
        rc = write_adapter(ctx, aligned, act, out_dir, p, &sf, NULL);
    }
    nlsr_sidefiles_free(&sf);
    free(act);
    lora_prep_free(ctx, &P);
    return rc;
}

int nlsr_lora_run(nlsr_ctx *ctx, const nlsr_ckpt *aligned_or_ref, int is_reference,
                  const nlsr_ckpt *finetuned, const char *out_dir, const nlsr_realign_params *p)
{
    NLSR_FORWARD(refuse_existing(ctx, out_dir, p->force));
    NLSR_FORWARD(refuse_existing(ctx, p->mask_out_path, p->force));
    lora_prep P;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "run", "lora");
    int rc = lora_prep_build(ctx, aligned_or_ref, is_reference, p, &P);
    if (rc == 0) rc = lora_realign(ctx, &P, aligned_or_ref->path, finetuned, out_dir, p, &rep);
    nlsr_report_free(&rep);
    lora_prep_free(ctx, &P);
    return rc;
}

int nlsr_lora_write_mask(nlsr_ctx *ctx, const nlsr_ckpt *ref_or_aligned, int is_reference,
                         const char *out_file, const nlsr_realign_params *p)
{
    NLSR_FORWARD(refuse_existing(ctx, out_file, p->force));
    lora_prep P;
    int rc = lora_prep_build(ctx, ref_or_aligned, is_reference, p, &P);
    if (rc == 0) rc = lora_write_masks(ctx, &P, out_file, p->force);
    lora_prep_free(ctx, &P);
    return rc;
}
