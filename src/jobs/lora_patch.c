/* SPDX-License-Identifier: Apache-2.0 */
/* LoRA prepare and apply through the prepared-patches file (src/io/patchfile.h, kind "lora").
 *
 * A LoRA module is stored as two tensors, role "lora_A" then "lora_B", named like the factors
 * (<prefix>.lora_A.weight, <prefix>.lora_B.weight), each with its mask and the reference
 * values under it in the reference adapter's dtype. That is all step 3 needs: the similarity
 * takes the masked factors only, and the transplant writes only masked elements. The header
 * also carries the source adapter's r, lora_alpha and target_modules ("lora"), so that apply
 * can refuse a fine-tuned adapter of another shape without the aligned adapter at hand. */
#define _GNU_SOURCE
#include "lora.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../compute/convert.h"
#include "../io/checkpoint.h"
#include "../io/file.h"
#include "../io/patchfile.h"
#include "report.h"

#define SUFFIX_A ".lora_A.weight"
#define SUFFIX_B ".lora_B.weight"

/* ---- prepare --------------------------------------------------------------------------------- */

static cJSON *header_extra(const lora_prep *P, const nlsr_ckpt *src, int is_reference,
                           const nlsr_realign_params *p)
{
    cJSON *x = cJSON_CreateObject(), *o, *tm;
    if (!x) return NULL;
    if (!(o = cJSON_AddObjectToObject(x, "sources"))) goto oom;
    if (!cJSON_AddStringToObject(o, is_reference ? "reference" : "aligned", src->path)) goto oom;
    if (!(o = cJSON_AddObjectToObject(x, "params"))) goto oom;
    cJSON_AddNumberToObject(o, "beta", p->beta);
    cJSON_AddNumberToObject(o, "sparsity", p->sparsity);
    cJSON_AddStringToObject(o, "amplify", is_reference                         ? "none"
                                          : p->amplify == NLSR_AMPLIFY_PAPER ? "paper"
                                                                              : "authors");
    cJSON_AddNumberToObject(o, "alpha", p->alpha);
    if (p->mask_path) cJSON_AddStringToObject(o, "mask", p->mask_path);
    else cJSON_AddStringToObject(o, "mask", "magnitude");
    /* The target names decide which LoRA pairs are modules; apply lists the fine-tuned
     * adapter's modules with the same names (null: the defaults). */
    if (!p->targets) {
        cJSON_AddNullToObject(o, "targets");
    } else {
        if (!(tm = cJSON_AddArrayToObject(o, "targets"))) goto oom;
        for (size_t i = 0; i < p->ntargets; i++) {
            cJSON *s = cJSON_CreateString(p->targets[i]);
            if (!s) goto oom;
            cJSON_AddItemToArray(tm, s);
        }
    }
    if (!(o = cJSON_AddObjectToObject(x, "lora"))) goto oom;
    cJSON_AddNumberToObject(o, "r", P->lora_r);
    cJSON_AddNumberToObject(o, "lora_alpha", P->lora_alpha);
    if (!(tm = cJSON_AddArrayToObject(o, "target_modules"))) goto oom;
    for (size_t i = 0; i < P->ntargets; i++) {
        cJSON *s = cJSON_CreateString(P->targets[i]);
        if (!s) goto oom;
        cJSON_AddItemToArray(tm, s);
    }
    return x;
oom:
    cJSON_Delete(x);
    return NULL;
}

/* One factor's tensor record: blocks of at most NLSR_PF_MAX_BLOCK_ELEMS elements, each with the
 * masked indices and the reference values stored in the factor's dtype. */
static int write_factor(nlsr_pf_writer *w, const char *name, const char *role, nlsr_dtype dt,
                        uint64_t rows, uint64_t cols, const float *v, const uint8_t *m,
                        uint64_t *idx, unsigned char *ref, uint64_t block)
{
    uint64_t shape[2] = {rows, cols}, n = rows * cols;
    nlsr_pf_tensor_desc d = {name, role, dt, 0, dt, 2, shape};
    NLSR_FORWARD(nlsr_pf_writer_begin_tensor(w, &d));
    size_t es = nlsr_dtype_size(dt);
    for (uint64_t first = 0; first < n; first += block) {
        uint64_t count = n - first < block ? n - first : block;
        size_t k = 0;
        for (uint64_t i = first; i < first + count; i++) {
            if (!m[i]) continue;
            idx[k] = i;
            nlsr_from_f32(dt, &v[i], ref + k * es, 1);
            k++;
        }
        NLSR_FORWARD(nlsr_pf_writer_block(w, first, count, idx, k, ref, NULL));
    }
    return nlsr_pf_writer_end_tensor(w);
}

static int write_patches(nlsr_ctx *ctx, const lora_prep *P, const nlsr_ckpt *src,
                         int is_reference, const nlsr_realign_params *p, const char *out_file,
                         uint64_t *file_bytes)
{
    nlsr_err *e = &ctx->err;
    uint64_t maxn = 1;
    for (size_t j = 0; j < P->n; j++) {
        uint64_t a = P->m[j].r * P->m[j].in, b = P->m[j].r * P->m[j].out;
        if (a > maxn) maxn = a;
        if (b > maxn) maxn = b;
    }
    uint64_t block = maxn < NLSR_PF_MAX_BLOCK_ELEMS ? maxn : NLSR_PF_MAX_BLOCK_ELEMS;
    size_t bytes = (size_t)block * (sizeof(uint64_t) + 8);
    void *scratch = NULL;
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, bytes, "LoRA patch block", &scratch, e));
    uint64_t *idx = scratch;
    unsigned char *ref = (unsigned char *)(idx + block);
    nlsr_pf_writer *w = NULL;
    cJSON *extra = NULL;
    char *na = NULL, *nb = NULL;
    int rc = nlsr_pf_writer_open(ctx, out_file, "lora", &w);
    for (size_t j = 0; j < P->n && rc == 0; j++) {
        const lora_mod *m = &P->m[j];
        free(na);
        free(nb);
        na = malloc(strlen(m->prefix) + sizeof SUFFIX_A);
        nb = malloc(strlen(m->prefix) + sizeof SUFFIX_B);
        if (!na || !nb) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", out_file);
            break;
        }
        strcat(strcpy(na, m->prefix), SUFFIX_A);
        strcat(strcpy(nb, m->prefix), SUFFIX_B);
        rc = nlsr_pf_writer_begin_module(w, m->prefix);
        if (rc == 0)
            rc = write_factor(w, na, "lora_A", m->da, m->r, m->in, m->ea, m->ma, idx, ref, block);
        if (rc == 0)
            rc = write_factor(w, nb, "lora_B", m->db, m->out, m->r, m->eb, m->mb, idx, ref,
                              block);
        if (rc == 0) rc = nlsr_pf_writer_end_module(w);
    }
    if (rc == 0 && !(extra = header_extra(P, src, is_reference, p)))
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory building the header", out_file);
    if (rc == 0) {
        rc = nlsr_pf_writer_commit(w, extra, file_bytes);
        w = NULL;
    }
    nlsr_pf_writer_abort(w);
    cJSON_Delete(extra);
    free(na);
    free(nb);
    nlsr_budget_free(&ctx->budget, scratch, bytes);
    return rc;
}

int nlsr_lora_prepare(nlsr_ctx *ctx, const nlsr_ckpt *ref_or_aligned, int is_reference,
                      const char *out_file, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(!p->force && nlsr_exists(out_file), e, NLSR_E_EXISTS,
                 "%s: exists (use --force to replace it)", out_file);
    NLSR_FAIL_IF(p->mask_out_path && !p->force && nlsr_exists(p->mask_out_path), e,
                 NLSR_E_EXISTS, "%s: exists (use --force to replace it)", p->mask_out_path);
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "prepare", "lora");
    rep.has_selection = 0;
    lora_prep P;
    uint64_t file_bytes = 0;
    int rc = lora_prep_build(ctx, ref_or_aligned, is_reference, p, &P);
    for (size_t j = 0; j < P.n && rc == 0; j++) {
        const lora_mod *m = &P.m[j];
        rc = nlsr_report_add(&rep, ctx, m->prefix, m->r * (m->in + m->out), m->mask_count, NULL);
    }
    /* The masks (--mask-out) first, taken back if the patches file cannot be written. */
    int wrote_masks = 0;
    if (rc == 0 && p->mask_out_path) {
        rc = lora_write_masks(ctx, &P, p->mask_out_path, p->force);
        wrote_masks = rc == 0;
    }
    if (rc == 0) rc = write_patches(ctx, &P, ref_or_aligned, is_reference, p, out_file, &file_bytes);
    if (rc < 0 && wrote_masks) unlink(p->mask_out_path);
    if (rc == 0) {
        rep.summary.patch_bytes = file_bytes;
        const st_file *f = ref_or_aligned->shards[0];
        rep.summary.model_bytes = f->file_size;
        rc = nlsr_report_emit(&rep, ctx, p);
    }
    nlsr_report_free(&rep);
    lora_prep_free(ctx, &P);
    return rc;
}

/* ---- apply ---------------------------------------------------------------------------------- */

/* The "lora" header object: r, lora_alpha and target_modules of the source adapter. */
static int read_lora_header(nlsr_ctx *ctx, const nlsr_pf_reader *r, lora_prep *P)
{
    nlsr_err *e = &ctx->err;
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(r->header, "lora");
    const cJSON *rr = cJSON_GetObjectItemCaseSensitive(o, "r");
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    NLSR_FAIL_IF(!cJSON_IsObject(o) || !cJSON_IsNumber(rr) || !cJSON_IsNumber(al) ||
                     !cJSON_IsArray(tm),
                 e, NLSR_E_FORMAT,
                 "%s: the header's 'lora' object (r, lora_alpha, target_modules) is missing or "
                 "invalid",
                 r->path);
    NLSR_FAIL_IF(rr->valuedouble < 1 || rr->valuedouble > 1e6 ||
                     rr->valuedouble != (double)(int)rr->valuedouble,
                 e, NLSR_E_FORMAT, "%s: lora.r is %g, not a positive integer", r->path,
                 rr->valuedouble);
    P->lora_r = (int)rr->valuedouble;
    P->lora_alpha = al->valuedouble;
    size_t n = (size_t)cJSON_GetArraySize(tm);
    P->targets = calloc(n ? n : 1, sizeof *P->targets);
    NLSR_FAIL_IF(!P->targets, e, -ENOMEM, "%s: out of memory", r->path);
    for (const cJSON *it = tm->child; it; it = it->next) {
        NLSR_FAIL_IF(!cJSON_IsString(it), e, NLSR_E_FORMAT,
                     "%s: lora.target_modules holds a non-string", r->path);
        P->targets[P->ntargets] = strdup(it->valuestring);
        NLSR_FAIL_IF(!P->targets[P->ntargets], e, -ENOMEM, "%s: out of memory", r->path);
        P->ntargets++;
    }
    return 0;
}

static int ends_with(const char *s, const char *prefix, const char *suf)
{
    size_t lp = strlen(prefix), ls = strlen(suf);
    return strlen(s) == lp + ls && strncmp(s, prefix, lp) == 0 && strcmp(s + lp, suf) == 0;
}

/* The module records of the file, checked to be LoRA factor pairs. */
static int list_pf_modules(nlsr_ctx *ctx, const nlsr_pf_reader *r, lora_prep *P)
{
    nlsr_err *e = &ctx->err;
    P->m = calloc(r->nmodules ? r->nmodules : 1, sizeof *P->m);
    NLSR_FAIL_IF(!P->m, e, -ENOMEM, "%s: out of memory", r->path);
    for (size_t j = 0; j < r->nmodules; j++) {
        const nlsr_pf_module *pm = &r->modules[j];
        lora_mod *m = &P->m[P->n];
        NLSR_FAIL_IF(pm->ntensors != 2 || strcmp(pm->t[0].role, "lora_A") != 0 ||
                         strcmp(pm->t[1].role, "lora_B") != 0,
                     e, NLSR_E_FORMAT, "%s: module '%s' is not a lora_A, lora_B pair", r->path,
                     pm->name);
        const nlsr_pf_tensor *A = &pm->t[0], *B = &pm->t[1];
        NLSR_FAIL_IF(!ends_with(A->name, pm->name, SUFFIX_A) ||
                         !ends_with(B->name, pm->name, SUFFIX_B),
                     e, NLSR_E_FORMAT, "%s: module '%s' holds tensors '%s' and '%s'", r->path,
                     pm->name, A->name, B->name);
        NLSR_FAIL_IF(A->ndim != 2 || B->ndim != 2 || A->shape[0] != B->shape[1] ||
                         A->shape[0] == 0 || A->shape[1] == 0 || B->shape[0] == 0,
                     e, NLSR_E_FORMAT, "%s: module '%s': factor shapes do not form a LoRA pair",
                     r->path, pm->name);
        NLSR_FAIL_IF(!nlsr_dtype_is_writable_float(A->ref_dtype) ||
                         !nlsr_dtype_is_writable_float(B->ref_dtype),
                     e, NLSR_E_DTYPE, "%s: module '%s': reference dtypes %s/%s are not float",
                     r->path, pm->name, nlsr_dtype_name(A->ref_dtype),
                     nlsr_dtype_name(B->ref_dtype));
        m->prefix = strdup(pm->name);
        NLSR_FAIL_IF(!m->prefix, e, -ENOMEM, "%s: out of memory", r->path);
        P->n++;
        m->ta = m->tb = (size_t)-1; /* no adapter behind a patches file */
        m->da = A->ref_dtype;
        m->db = B->ref_dtype;
        m->r = A->shape[0];
        m->in = A->shape[1];
        m->out = B->shape[0];
    }
    return 0;
}

/* Fills one factor's reference values and mask from its blocks (zeros elsewhere). */
static int load_factor(nlsr_pf_reader *r, const nlsr_pf_tensor *t, float *v, uint8_t *m,
                       uint64_t *count)
{
    nlsr_err *e = &r->ctx->err;
    size_t es = nlsr_dtype_size(t->ref_dtype);
    memset(v, 0, (size_t)t->numel * sizeof *v);
    memset(m, 0, (size_t)t->numel);
    for (size_t b = 0; b < t->nblocks; b++) {
        nlsr_pf_view vw;
        NLSR_FORWARD(nlsr_pf_read_block(r, t, b, &vw));
        const unsigned char *ref = vw.ref;
        for (size_t k = 0; k < vw.m; k++) {
            nlsr_to_f32(t->ref_dtype, ref + k * es, &v[vw.idx[k]], 1);
            /* Checksums prove the bytes are what the writer wrote, not that they are finite. */
            NLSR_FAIL_IF(!isfinite(v[vw.idx[k]]), e, NLSR_E_VALUE,
                         "%s: tensor '%s': element %" PRIu64
                         " is %g (a reference value in the patch file)",
                         r->path, t->name, vw.idx[k], (double)v[vw.idx[k]]);
            m[vw.idx[k]] = 1;
        }
        *count += vw.m;
    }
    return 0;
}

static int prep_from_patches(nlsr_ctx *ctx, nlsr_pf_reader *r, lora_prep *P)
{
    NLSR_FAIL_IF(strcmp(r->kind, "lora") != 0, &ctx->err, NLSR_E_MISMATCH,
                 "%s: holds %s-weight patches, but the fine-tuned checkpoint is a LoRA adapter",
                 r->path, r->kind);
    NLSR_FORWARD(read_lora_header(ctx, r, P));
    NLSR_FORWARD(list_pf_modules(ctx, r, P));
    NLSR_FORWARD(lora_prep_alloc(ctx, P));
    for (size_t j = 0; j < P->n; j++) {
        lora_mod *m = &P->m[j];
        const nlsr_pf_module *pm = &r->modules[j];
        NLSR_FORWARD(load_factor(r, &pm->t[0], m->ea, m->ma, &m->mask_count));
        NLSR_FORWARD(load_factor(r, &pm->t[1], m->eb, m->mb, &m->mask_count));
    }
    return 0;
}

/* The target names prepare used (params.targets), so that apply finds the same modules in the
 * fine-tuned adapter whatever targets it was given itself. *names and its strings are
 * malloc'd (free with free_names); NULL for the defaults. */
static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int patch_targets(nlsr_ctx *ctx, const nlsr_pf_reader *r, char ***names, size_t *n)
{
    const cJSON *par = cJSON_GetObjectItemCaseSensitive(r->header, "params");
    const cJSON *tg = cJSON_GetObjectItemCaseSensitive(par, "targets");
    *names = NULL;
    *n = 0;
    if (!tg || cJSON_IsNull(tg)) return 0;
    NLSR_FAIL_IF(!cJSON_IsArray(tg), &ctx->err, NLSR_E_FORMAT,
                 "%s: params.targets is neither null nor an array", r->path);
    size_t k = (size_t)cJSON_GetArraySize(tg);
    *names = calloc(k ? k : 1, sizeof **names);
    NLSR_FAIL_IF(!*names, &ctx->err, -ENOMEM, "%s: out of memory", r->path);
    for (const cJSON *it = tg->child; it; it = it->next) {
        NLSR_FAIL_IF(!cJSON_IsString(it), &ctx->err, NLSR_E_FORMAT,
                     "%s: params.targets holds a non-string", r->path);
        (*names)[*n] = strdup(it->valuestring);
        NLSR_FAIL_IF(!(*names)[*n], &ctx->err, -ENOMEM, "%s: out of memory", r->path);
        (*n)++;
    }
    return 0;
}

int nlsr_lora_apply(nlsr_ctx *ctx, const char *patches, const nlsr_ckpt *finetuned,
                    const char *out_dir, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(p->mask_path, e, NLSR_E_USAGE,
                 "--mask %s: masks are chosen by prepare or run; %s already holds its masks",
                 p->mask_path, patches);
    NLSR_FAIL_IF(!p->force && nlsr_exists(out_dir), e, NLSR_E_EXISTS,
                 "%s: exists (use --force to replace it)", out_dir);
    lora_prep P;
    memset(&P, 0, sizeof P);
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "apply", "lora");
    nlsr_pf_reader *r = NULL;
    char **names = NULL;
    size_t nnames = 0;
    nlsr_realign_params q = *p;
    int rc = nlsr_pf_open(ctx, patches, &r);
    if (rc == 0) rc = prep_from_patches(ctx, r, &P);
    if (rc == 0) rc = patch_targets(ctx, r, &names, &nnames);
    q.targets = (const char *const *)names;
    q.ntargets = nnames;
    nlsr_pf_close(r); /* its scratch is charged to the budget: release it before step 3 */
    if (rc == 0) rc = lora_realign(ctx, &P, patches, finetuned, out_dir, &q, &rep);
    nlsr_report_free(&rep);
    free_names(names, nnames);
    lora_prep_free(ctx, &P);
    return rc;
}
