/* SPDX-License-Identifier: Apache-2.0 */
/* Full-weight realignment: prepare (steps 1-2 into a patch file) and apply (step 3 into an
 * output checkpoint), both streamed through nlsr_stream with every buffer on the budget. The
 * plan of passes is in realign_full.h; the arithmetic is METHOD.md's, to the bit. */
#define _GNU_SOURCE
#include "../common/params.h"
#include "../common/log.h"
#include "realign_full.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/shape.h"
#include "../common/json.h"
#include "../common/dtype_table.h"
#include "../common/testhook.h"
#include "../compute/convert.h"
#include "../compute/kth.h"
#include "../compute/mask.h"
#include "../compute/reference.h"
#include "../compute/selection.h"
#include "../compute/similarity.h"
#include "../io/file.h"
#include "../io/journal.h"
#include "../io/sidefiles.h"
#include "scorer.h"
#include "../io/stream.h"
#include "../plan/targets.h"
#include "split.h"

#define STREAM_DEPTH 2u
/* Blocks per apply stream batch: a 32nd of the budget's room in units of 160 bytes (the unit
 * and its bookkeeping), between 64 and 4096, so a constant whatever the model (4096: 655 KB,
 * and a 70B model's million blocks restart the read-ahead about 250 times). */
#define APPLY_BATCH_MIN 64u
#define APPLY_BATCH_MAX 4096u
#define NHIST NLSR_KTH_BUCKETS

static const char *shard_path(const nlsr_ckpt *ck, size_t i)
{
    return ck->shards[ck->t[i].shard]->path;
}

static int same_shape(int na, const uint64_t *a, int nb, const uint64_t *b)
{
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static int is_target(const st_tensor *t, const nlsr_realign_params *p)
{
    return nlsr_is_target(t, p->targets, p->ntargets);
}

/* ---- header-only checks ------------------------------------------------------------------ */

int nlsr_full_check_sources(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                            int is_reference, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    const char *sn = is_reference ? "reference" : "aligned";
    size_t i = 0, j = 0, ntarg = 0;
    while (i < base->n || j < src->n) {
        const st_tensor *tb = i < base->n ? base->t[i].t : NULL;
        const st_tensor *ts = j < src->n ? src->t[j].t : NULL;
        int c = !tb ? 1 : !ts ? -1 : strcmp(tb->name, ts->name);
        if (c < 0) {
            NLSR_FAIL_IF(is_target(tb, p), e, NLSR_E_MISMATCH,
                         "target tensor '%.200s' is in base %s but not in %s %s", tb->name,
                         base->path, sn, src->path);
            i++;
            continue;
        }
        if (c > 0) {
            NLSR_FAIL_IF(is_target(ts, p), e, NLSR_E_MISMATCH,
                         "target tensor '%.200s' is in %s %s but not in base %s", ts->name, sn,
                         src->path, base->path);
            j++;
            continue;
        }
        if (is_target(tb, p) || is_target(ts, p)) {
            char sa[128], sb[128];
            nlsr_shape_str(tb->ndim, tb->shape, ", ", sa, sizeof sa);
            nlsr_shape_str(ts->ndim, ts->shape, ", ", sb, sizeof sb);
            NLSR_FAIL_IF(!same_shape(tb->ndim, tb->shape, ts->ndim, ts->shape), e,
                         NLSR_E_MISMATCH, "tensor '%.200s': shape %s in base %s but %s in %s %s",
                         tb->name, sa, base->path, sb, sn, src->path);
            NLSR_FAIL_IF(!nlsr_dtype_is_float(tb->dtype), e, NLSR_E_DTYPE,
                         "%s: target tensor '%.200s' is %s, not a float dtype",
                         shard_path(base, i), tb->name, nlsr_dtype_name(tb->dtype));
            NLSR_FAIL_IF(is_reference ? !nlsr_dtype_is_float(ts->dtype)
                                      : !nlsr_dtype_is_writable_float(ts->dtype),
                         e, NLSR_E_DTYPE, "%s: target tensor '%.200s' is %s, not %s",
                         shard_path(src, j), ts->name, nlsr_dtype_name(ts->dtype),
                         is_reference ? "a float dtype" : "F32, F16, BF16 or F64");
            ntarg++;
        }
        i++;
        j++;
    }
    NLSR_FAIL_IF(ntarg == 0, e, NLSR_E_NOTFOUND, "%s %s has no target modules (2-D '*.weight' "
                 "tensors named after the targets)", sn, src->path);
    return 0;
}

/* The tensors of the model a fine-tune must match: from a checkpoint or a patch header. */
typedef struct model_tensor {
    const char *name;
    nlsr_dtype dtype;
    int ndim;
    uint64_t shape[NLSR_PF_MAX_NDIM];
} model_tensor;

static int check_against_model(nlsr_ctx *ctx, const model_tensor *m, size_t n, const char *what,
                               const nlsr_ckpt *ft, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    size_t i = 0, j = 0;
    while (i < n || j < ft->n) {
        const st_tensor *t = j < ft->n ? ft->t[j].t : NULL;
        int c = i >= n ? 1 : !t ? -1 : strcmp(m[i].name, t->name);
        NLSR_FAIL_IF(c < 0, e, NLSR_E_MISMATCH,
                     "finetuned %s lacks tensor '%.200s', which %s has", ft->path, m[i].name,
                     what);
        NLSR_FAIL_IF(c > 0, e, NLSR_E_MISMATCH, "finetuned %s has tensor '%.200s', which %s lacks",
                     ft->path, t->name, what);
        char sa[128], sb[128];
        nlsr_shape_str(m[i].ndim, m[i].shape, ", ", sa, sizeof sa);
        nlsr_shape_str(t->ndim, t->shape, ", ", sb, sizeof sb);
        NLSR_FAIL_IF(!same_shape(m[i].ndim, m[i].shape, t->ndim, t->shape), e, NLSR_E_MISMATCH,
                     "tensor '%.200s': shape %s in %s but %s in finetuned %s", t->name, sa, what,
                     sb, ft->path);
        int mf = nlsr_dtype_is_float(m[i].dtype), tf = nlsr_dtype_is_float(t->dtype);
        NLSR_FAIL_IF(mf != tf || (!mf && m[i].dtype != t->dtype), e, NLSR_E_DTYPE,
                     "tensor '%.200s': dtype %s in %s but %s in finetuned %s", t->name,
                     nlsr_dtype_name(m[i].dtype), what, nlsr_dtype_name(t->dtype), ft->path);
        NLSR_FAIL_IF(is_target(t, p) && !nlsr_dtype_is_writable_float(t->dtype), e, NLSR_E_DTYPE,
                     "%s: target tensor '%.200s' is %s, not F32, F16, BF16 or F64",
                     shard_path(ft, j), t->name, nlsr_dtype_name(t->dtype));
        i++;
        j++;
    }
    return 0;
}

int nlsr_full_check_finetuned(nlsr_ctx *ctx, const nlsr_ckpt *src, const nlsr_ckpt *ft,
                              const nlsr_realign_params *p)
{
    model_tensor *m = calloc(src->n ? src->n : 1, sizeof *m);
    NLSR_FAIL_IF(!m, &ctx->err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < src->n; i++) {
        const st_tensor *t = src->t[i].t;
        m[i].name = t->name;
        m[i].dtype = t->dtype;
        m[i].ndim = t->ndim > NLSR_PF_MAX_NDIM ? NLSR_PF_MAX_NDIM : t->ndim;
        memcpy(m[i].shape, t->shape, (size_t)m[i].ndim * sizeof(uint64_t));
    }
    char what[PATH_MAX + 32];
    snprintf(what, sizeof what, "the source model %s", src->path);
    int rc = check_against_model(ctx, m, src->n, what, ft, p);
    free(m);
    return rc;
}

/* "model": {"bytes": N, "tensors": [[name, dtype, [shape]], ...]} of a patch header, sorted. */
static int patch_model(nlsr_ctx *ctx, const nlsr_pf_reader *pf, model_tensor **out, size_t *n,
                       uint64_t *bytes)
{
    nlsr_err *e = &ctx->err;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(pf->header, "model");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(model, "tensors");
    const cJSON *by = cJSON_GetObjectItemCaseSensitive(model, "bytes");
    NLSR_FAIL_IF(!cJSON_IsArray(ts) || !cJSON_IsNumber(by), e, NLSR_E_FORMAT,
                 "%s: header lacks the model's tensor list", pf->path);
    if (bytes) *bytes = (uint64_t)by->valuedouble;
    size_t cnt = (size_t)cJSON_GetArraySize(ts);
    model_tensor *m = calloc(cnt ? cnt : 1, sizeof *m);
    NLSR_FAIL_IF(!m, e, -ENOMEM, "out of memory");
    size_t i = 0;
    for (const cJSON *it = ts->child; it; it = it->next, i++) {
        const cJSON *nm = cJSON_GetArrayItem(it, 0), *dt = cJSON_GetArrayItem(it, 1),
                    *sh = cJSON_GetArrayItem(it, 2);
        int d = cJSON_IsString(dt) ? nlsr_dtype_from_name(dt->valuestring) : -1;
        int ok = cJSON_IsArray(it) && cJSON_IsString(nm) && d >= 0 && cJSON_IsArray(sh) &&
                 cJSON_GetArraySize(sh) <= NLSR_PF_MAX_NDIM &&
                 (i == 0 || strcmp(m[i - 1].name, nm->valuestring) < 0);
        if (ok) {
            m[i].name = nm->valuestring;
            m[i].dtype = (nlsr_dtype)d;
            for (const cJSON *s = sh->child; s && ok; s = s->next) {
                ok = cJSON_IsNumber(s) && s->valuedouble >= 0 && s->valuedouble < 9.007e15 &&
                     s->valuedouble == (double)(uint64_t)s->valuedouble;
                if (ok) m[i].shape[m[i].ndim++] = (uint64_t)s->valuedouble;
            }
        }
        if (!ok) {
            free(m);
            return nlsr_fail(e, NLSR_E_FORMAT, "%s: model tensor %zu in the header is malformed",
                             pf->path, i);
        }
    }
    *out = m;
    *n = cnt;
    return 0;
}

int nlsr_full_check_patch(nlsr_ctx *ctx, const nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                          const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    model_tensor *m = NULL;
    size_t n = 0;
    NLSR_FAIL_IF(strcmp(pf->kind, "full") != 0, e, NLSR_E_MISMATCH,
                 "patch file %s holds LoRA patches, but finetuned %s is a full checkpoint",
                 pf->path, ft->path);
    NLSR_FORWARD(patch_model(ctx, pf, &m, &n, NULL));
    char what[PATH_MAX + 64];
    snprintf(what, sizeof what, "the model of patch file %s", pf->path);
    int rc = check_against_model(ctx, m, n, what, ft, p);
    free(m);
    NLSR_FORWARD(rc);
    /* The targets must be exactly the patch's modules, with shapes as recorded. */
    size_t k = 0;
    for (size_t j = 0; j < ft->n; j++) {
        const st_tensor *t = ft->t[j].t;
        if (!is_target(t, p)) continue;
        NLSR_FAIL_IF(k >= pf->nmodules || strcmp(pf->modules[k].name, t->name) != 0, e,
                     NLSR_E_MISMATCH,
                     "target tensor '%.200s' of finetuned %s has no patch in %s", t->name,
                     ft->path, pf->path);
        const nlsr_pf_tensor *pt = &pf->modules[k].t[0];
        NLSR_FAIL_IF(!same_shape(pt->ndim, pt->shape, t->ndim, t->shape) || !pt->has_base, e,
                     NLSR_E_MISMATCH, "patch for '%.200s' in %s does not fit finetuned %s",
                     t->name, pf->path, ft->path);
        k++;
    }
    NLSR_FAIL_IF(k != pf->nmodules, e, NLSR_E_MISMATCH,
                 "patch file %s patches '%.200s', which is no target tensor of finetuned %s",
                 pf->path, pf->modules[k].name, ft->path);
    return 0;
}

int nlsr_full_patch_params(nlsr_ctx *ctx, const nlsr_pf_reader *pf, nlsr_realign_params *p,
                           const char ***names)
{
    nlsr_err *e = &ctx->err;
    const cJSON *par = cJSON_GetObjectItemCaseSensitive(pf->header, "params");
    const cJSON *beta = cJSON_GetObjectItemCaseSensitive(par, "beta");
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(par, "sparsity");
    const cJSON *tg = cJSON_GetObjectItemCaseSensitive(par, "targets");
    NLSR_FAIL_IF(!cJSON_IsNumber(beta) || !cJSON_IsNumber(sp) || !cJSON_IsArray(tg), e,
                 NLSR_E_FORMAT, "%s: header lacks params (beta, sparsity, targets)", pf->path);
    /* The scorer step 2 used, for the report (absent in files from before scorers: magnitude). */
    nlsr_scorer_params scorer;
    NLSR_FORWARD(nlsr_scorer_params_from_json(cJSON_GetObjectItemCaseSensitive(par, "scorer"),
                                              &scorer, pf->path, e));
    size_t n = (size_t)cJSON_GetArraySize(tg);
    const char **v = calloc(n ? n : 1, sizeof *v);
    NLSR_FAIL_IF(!v, e, -ENOMEM, "out of memory");
    size_t i = 0;
    for (const cJSON *it = tg->child; it; it = it->next) {
        if (!cJSON_IsString(it)) {
            free(v);
            return nlsr_fail(e, NLSR_E_FORMAT, "%s: params.targets holds a non-string", pf->path);
        }
        v[i++] = it->valuestring;
    }
    /* Targets given for apply must be the ones the patches were prepared for. */
    if (p->targets) {
        int same = p->ntargets == n;
        for (size_t k = 0; same && k < n; k++) same = strcmp(p->targets[k], v[k]) == 0;
        if (!same) {
            free(v);
            return nlsr_fail(e, NLSR_E_USAGE,
                             "%s was prepared for other targets; leave --targets out", pf->path);
        }
    }
    /* A recorded selection (nlsr reduce of run --part maps) was made with the options the
     * maps were given: apply takes them from the file, as it takes beta, and refuses others
     * given explicitly (an option left at its default takes the file's). */
    nlsr_select_params rs;
    int rec = nlsr_split_sel_select(ctx, pf, &rs);
    if (rec < 0) {
        free(v);
        return rec;
    }
    if (rec == 1) {
        nlsr_select_params d = NLSR_SELECT_PARAMS_DEFAULT, *g = &p->select;
        int same = (g->mode == rs.mode || g->mode == d.mode) &&
                       (g->semantics == rs.semantics || g->semantics == d.semantics) &&
                       (g->prune_rate == rs.prune_rate || g->prune_rate == d.prune_rate) &&
                       (g->epsilon == rs.epsilon || g->epsilon == d.epsilon) &&
                       (g->tau == rs.tau || g->tau == d.tau) &&
                       (g->seed == rs.seed || g->seed == d.seed);
        if (!same) {
            free(v);
            return nlsr_fail(e, NLSR_E_USAGE,
                             "%s holds the selection nlsr reduce made (seed %" PRIu64 "): leave "
                             "the selection options out (--select, --semantics, --prune-rate, "
                             "--epsilon, --tau, --seed)", pf->path, rs.seed);
        }
        *g = rs;
    }
    p->beta = beta->valuedouble;
    p->sparsity = sp->valuedouble;
    p->scorer = scorer;
    p->targets = v;
    p->ntargets = n;
    char msg[256];
    if (nlsr_params_check(p, msg, sizeof msg) != 0) {
        free(v);
        p->targets = NULL;
        p->ntargets = 0;
        return nlsr_fail(e, NLSR_E_FORMAT, "%s: header params: %s", pf->path, msg);
    }
    *names = v;
    return 0;
}

/* ---- prepare ----------------------------------------------------------------------------- */

typedef struct prep {
    nlsr_ctx *ctx;
    const nlsr_realign_params *p;
    nlsr_full_tuning tune;
    const nlsr_ckpt *base, *src;
    int is_ref;
    uint64_t blk;
    /* per-block scratch, blk elements each */
    float *fa, *fb, *fe, *fs;
    unsigned char *esraw, *refm, *basem;
    uint64_t *idx;
    uint64_t *hist, *hist2;
    size_t scratch_bytes;
    /* Content fingerprints (docs/FORMAT.md "sources"): XXH64 over each module's own XXH64, so
     * that the parts of a split prepare (split_reduce.c) can be combined into the single
     * prepare's value. fpm_* hash the module being read; hm_* keep the module hashes of a part. */
    nlsr_xxh64_state fp_base, fp_src, fpm_base, fpm_src;
    uint64_t *hm_base, *hm_src;
    size_t nhm;
    nlsr_pf_writer *w;
    nlsr_acts *acts;           /* --activations, for the lowrank and wanda scorers */
    uint64_t passes, disk_passes; /* module passes reading base + aligned; of them from disk */
    unsigned part_index, part_count;       /* a part of a split prepare; count 0: whole */
    uint64_t part_total, part_lo, part_hi; /* all modules, and the part's range [lo, hi) */
} prep;

typedef struct pmod {
    size_t ib, is;             /* tensor indexes in base and src */
    const st_tensor *tb, *ts;
    uint64_t n, k;
    nlsr_dtype adt, bdt;
    size_t asz, bsz;
    size_t nunits;
    nlsr_unit *units;
    unsigned char *cache_a, *cache_b; /* whole module, when it fits */
    uint64_t cache_bytes;
    float thr;
    int pass;                  /* 1, 2 or 3 */
    uint32_t bucket;
    uint64_t below;
    float *cands;              /* pass 2 candidates */
    uint64_t ncand, cand_cap;
    uint64_t mask_count;
    nlsr_scorer *sc;           /* lowrank or wanda scorer (scorer.h); NULL: magnitude */
    int feeding;               /* the scorer's SVD passes are not over yet */
} pmod;

/* Module passes. Magnitude: FIRST (validate, hash, cache, histogram), CAND, MASK. With the
 * low-rank SVD: FIRST (validate, hash, cache, feed) and FEED until the SVD is done, then HIST
 * and CAND (which read nothing: the scores come from U_r and P), then MASK. */
enum { PASS_FIRST = 1, PASS_CAND = 2, PASS_MASK = 3, PASS_FEED = 4, PASS_HIST = 5 };

static int nonfinite_fail(nlsr_ctx *ctx, const char *file, const char *tensor, uint64_t el,
                          float v, const char *what)
{
    return nlsr_fail(&ctx->err, NLSR_E_VALUE, "%s: tensor '%.200s': element %" PRIu64 " is %g%s",
                     file, tensor, el, (double)v, what);
}

int nlsr_full_dest_overflow(nlsr_ctx *ctx, const char *ft_file, const char *tensor, uint64_t el,
                            float v, nlsr_dtype dt, const char *source)
{
    return nlsr_fail(&ctx->err, NLSR_E_VALUE,
                     "%s: tensor '%.200s': element %" PRIu64 ": the realigned value %.9g (from "
                     "%s) is not finite in the fine-tune's dtype %s",
                     ft_file, tensor, el, (double)v, source, nlsr_dtype_name(dt));
}

int nlsr_full_step1(nlsr_ctx *ctx, const nlsr_step1_mod *m, uint64_t first, size_t cnt,
                    const unsigned char *araw, const unsigned char *braw, int validate,
                    const nlsr_step1_buf *b)
{
    nlsr_to_f32(m->bdt, braw, b->fb, cnt);
    if (validate) {
        size_t bad = nlsr_first_nonfinite_f32(b->fb, cnt);
        if (bad < cnt)
            return nonfinite_fail(ctx, m->base_file, m->name, first + bad, b->fb[bad], " in base");
    }
    if (m->is_ref) {
        memcpy(b->es, araw, cnt * nlsr_dtype_size(m->adt));
        nlsr_to_f32(m->adt, araw, b->fe, cnt);
        if (validate) {
            size_t bad = nlsr_first_nonfinite_f32(b->fe, cnt);
            if (bad < cnt)
                return nonfinite_fail(ctx, m->src_file, m->name, first + bad, b->fe[bad],
                                      " in the reference");
        }
    } else {
        nlsr_to_f32(m->adt, araw, b->fa, cnt);
        if (validate) {
            size_t bad = nlsr_first_nonfinite_f32(b->fa, cnt);
            if (bad < cnt)
                return nonfinite_fail(ctx, m->src_file, m->name, first + bad, b->fa[bad],
                                      " in aligned");
        }
        nlsr_full_reference_f32(b->fa, b->fb, (float)m->beta, b->fe, cnt);
        /* e is stored in the aligned tensor's dtype (e_s); the score and the transplant use
         * exactly that stored value. */
        nlsr_from_f32(m->adt, b->fe, b->es, cnt);
        nlsr_to_f32(m->adt, b->es, b->fe, cnt);
        if (validate) {
            size_t bad = nlsr_first_nonfinite_f32(b->fe, cnt);
            if (bad < cnt)
                return nlsr_fail(&ctx->err, NLSR_E_VALUE,
                                 "%s: tensor '%.200s': element %" PRIu64
                                 ": the reference a + beta (a - b) = %g overflows %s "
                                 "(a = %g, b = %g, beta = %g)",
                                 m->src_file, m->name, first + bad, (double)b->fe[bad],
                                 nlsr_dtype_name(m->adt), (double)b->fa[bad], (double)b->fb[bad],
                                 m->beta);
        }
    }
    nlsr_full_score_f32(b->fe, b->fb, b->fs, cnt);
    return 0;
}

/* Step 1 and the score for one block of a module being prepared. */
static int compute_block(prep *P, pmod *M, uint64_t first, size_t cnt, const unsigned char *araw,
                         const unsigned char *braw, int validate)
{
    nlsr_step1_mod m = {shard_path(P->base, M->ib), shard_path(P->src, M->is), M->ts->name,
                        M->adt, M->bdt, P->is_ref, P->p->beta};
    nlsr_step1_buf b = {P->fa, P->fb, P->fe, P->fs, P->esraw};
    return nlsr_full_step1(P->ctx, &m, first, cnt, araw, braw, validate, &b);
}

void nlsr_full_fp_tensor_head(nlsr_xxh64_state *h, const st_tensor *t)
{
    unsigned char b[8];
    nlsr_xxh64_update(h, t->name, strlen(t->name) + 1);
    const char *dn = nlsr_dtype_name(t->dtype);
    nlsr_xxh64_update(h, dn, strlen(dn) + 1);
    for (int d = 0; d < t->ndim; d++) {
        for (int i = 0; i < 8; i++) b[i] = (unsigned char)(t->shape[d] >> (8 * i));
        nlsr_xxh64_update(h, b, 8);
    }
}

/* A module's own hash enters the checkpoint's fingerprint as a u64 LE. */
void nlsr_full_fp_add_module(nlsr_xxh64_state *h, uint64_t hm)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hm >> (8 * i));
    nlsr_xxh64_update(h, b, 8);
}

/* araw / braw are NULL in the passes that read nothing (the scorer's scores need no input). */
static int block_pass(prep *P, pmod *M, uint64_t first, size_t cnt, const unsigned char *araw,
                      const unsigned char *braw)
{
    if (M->pass == PASS_FIRST) {
        nlsr_xxh64_update(&P->fpm_src, araw, cnt * M->asz);
        nlsr_xxh64_update(&P->fpm_base, braw, cnt * M->bsz);
        if (M->cache_a) {
            memcpy(M->cache_a + first * M->asz, araw, cnt * M->asz);
            memcpy(M->cache_b + first * M->bsz, braw, cnt * M->bsz);
        }
        NLSR_FORWARD(compute_block(P, M, first, cnt, araw, braw, 1));
    } else if (araw) {
        NLSR_FORWARD(compute_block(P, M, first, cnt, araw, braw, 0));
    }
    if (M->sc) {
        /* The delta W = e_s - b goes to fa (free after compute_block), the scores to fs. */
        if (araw) nlsr_scorer_delta(P->fe, P->fb, P->fa, cnt);
        if (M->feeding) return nlsr_scorer_feed(M->sc, first, cnt, P->fa);
        NLSR_FORWARD(nlsr_scorer_scores(M->sc, first, cnt, araw ? P->fa : NULL, P->fs));
    }
    if (M->pass == PASS_FIRST || M->pass == PASS_HIST) {
        if (M->sc && nlsr_scorer_per_row(M->sc))
            return nlsr_scorer_row_add(M->sc, first, cnt, P->fs);
        nlsr_kth_hist_add(P->hist, P->fs, cnt);
        return 0;
    }
    if (M->pass == PASS_CAND) {
        if (!M->cands) {
            M->ncand += nlsr_bucket_hist_low(P->fs, cnt, M->bucket, P->hist2);
            return 0;
        }
        /* Past the pass-1 count (a file that changed while it was read) they are only counted:
         * prep_module then fails. */
        size_t c = M->ncand + cnt <= M->cand_cap ? cnt
                                                 : nlsr_bucket_collect(P->fs, cnt, M->bucket, NULL);
        if (M->ncand + c <= M->cand_cap)
            c = nlsr_bucket_collect(P->fs, cnt, M->bucket, M->cands + M->ncand);
        M->ncand += c;
        return 0;
    }
    /* Pass 3: the mask (strictly above the threshold) and the values under it. */
    const float *rthr = M->sc ? nlsr_scorer_row_thresholds(M->sc) : NULL;
    uint64_t in = M->ts->ndim == 2 ? M->ts->shape[1] : 1;
    size_t m = 0;
    for (size_t j = 0; j < cnt; j++) {
        if (!(P->fs[j] > (rthr ? rthr[(first + j) / in] : M->thr))) continue;
        P->idx[m] = first + j;
        memcpy(P->refm + m * M->asz, P->esraw + j * M->asz, M->asz);
        memcpy(P->basem + m * M->bsz, braw + j * M->bsz, M->bsz);
        m++;
    }
    M->mask_count += m;
    return nlsr_pf_writer_block(P->w, first, cnt, P->idx, m, P->refm, P->basem);
}

/* One pass over the module's blocks, from the cache or streamed, or reading nothing when the
 * scorer computes the scores from what it holds. */
static int module_pass(prep *P, pmod *M, int pass)
{
    M->pass = pass;
    if (M->nunits == 0) return 0; /* an empty tensor */
    int nodata = M->sc && !nlsr_scorer_needs_delta(M->sc) &&
                 (pass == PASS_HIST || pass == PASS_CAND);
    if (!nodata) P->passes++;
    if (nodata || (M->cache_a && pass != PASS_FIRST)) {
        for (size_t u = 0; u < M->nunits; u++) {
            uint64_t first = M->units[u].span[0].first;
            size_t cnt = (size_t)M->units[u].span[0].count;
            NLSR_FORWARD(block_pass(P, M, first, cnt, nodata ? NULL : M->cache_a + first * M->asz,
                                    nodata ? NULL : M->cache_b + first * M->bsz));
        }
        return 0;
    }
    P->disk_passes++;
    nlsr_stream *s = NULL;
    NLSR_FORWARD(nlsr_stream_open(P->ctx, M->units, M->nunits, STREAM_DEPTH, &s));
    int rc;
    const nlsr_unit *u;
    const unsigned char *const *data;
    while ((rc = nlsr_stream_next(s, &u, &data)) == 1) {
        rc = block_pass(P, M, u->span[0].first, (size_t)u->span[0].count, data[0], data[1]);
        if (rc < 0) break;
    }
    nlsr_stream_close(s);
    return rc < 0 ? rc : 0;
}

static void pmod_release(prep *P, pmod *M)
{
    nlsr_budget *b = &P->ctx->budget;
    nlsr_budget_free(b, M->cache_a, M->n * M->asz);
    nlsr_budget_free(b, M->cache_b, M->n * M->bsz);
    nlsr_budget_free(b, M->cands, M->cand_cap * sizeof(float));
    nlsr_scorer_free(M->sc);
    M->sc = NULL;
    free(M->units);
    M->cache_a = M->cache_b = NULL;
    M->cands = NULL;
    M->units = NULL;
}

static int prep_module(prep *P, pmod *M, nlsr_report *rep)
{
    nlsr_ctx *ctx = P->ctx;
    nlsr_err *e = &ctx->err;
    int rc = 0;
    M->n = M->ts->numel;
    M->k = nlsr_mask_k(M->n, P->p->sparsity);
    M->adt = M->ts->dtype;
    M->bdt = M->tb->dtype;
    M->asz = nlsr_dtype_size(M->adt);
    M->bsz = nlsr_dtype_size(M->bdt);
    M->nunits = (size_t)((M->n + P->blk - 1) / P->blk);
    M->units = calloc(M->nunits ? M->nunits : 1, sizeof *M->units);
    NLSR_FAIL_IF(!M->units, e, -ENOMEM, "out of memory");
    for (size_t u = 0; u < M->nunits; u++) {
        uint64_t first = (uint64_t)u * P->blk;
        uint64_t cnt = M->n - first < P->blk ? M->n - first : P->blk;
        M->units[u].nspans = 2;
        M->units[u].span[0] = (nlsr_span){P->src, M->is, first, cnt};
        M->units[u].span[1] = (nlsr_span){P->base, M->ib, first, cnt};
        M->units[u].tag = u;
    }
    /* Step 2's scorer other than magnitude (the empty mask needs none). It takes its memory
     * before the cache is decided. */
    if (P->p->scorer.kind != NLSR_SCORER_MAGNITUDE && M->k < M->n) {
        rc = nlsr_scorer_begin(ctx, P->p, P->acts, M->ts->name, (size_t)M->ts->shape[0],
                               (size_t)M->ts->shape[1], &M->sc);
        if (rc < 0) goto done;
    }
    /* Cache the module's raw bytes when they take at most half of what the budget has left:
     * passes 2 and 3 then read nothing. */
    M->cache_bytes = M->n * (M->asz + M->bsz);
    if (!P->tune.force_stream && M->k < M->n && M->cache_bytes <= nlsr_budget_room(&ctx->budget) / 2) {
        rc = nlsr_budget_alloc(&ctx->budget, M->n * M->asz, "module cache (source)",
                               (void **)&M->cache_a, e);
        if (rc == 0)
            rc = nlsr_budget_alloc(&ctx->budget, M->n * M->bsz, "module cache (base)",
                                   (void **)&M->cache_b, e);
        if (rc < 0) goto done;
    }
    nlsr_xxh64_init(&P->fpm_src, 0);
    nlsr_xxh64_init(&P->fpm_base, 0);
    nlsr_full_fp_tensor_head(&P->fpm_src, M->ts);
    nlsr_full_fp_tensor_head(&P->fpm_base, M->tb);
    memset(P->hist, 0, NHIST * sizeof *P->hist);
    if (M->sc && nlsr_scorer_passes_left(M->sc) > 0) {
        /* The SVD's passes over W (the first one validates, hashes and caches), then the
         * histogram of the projection's scores. */
        M->feeding = 1;
        for (int pass = PASS_FIRST; rc == 0 && nlsr_scorer_passes_left(M->sc) > 0;
             pass = PASS_FEED) {
            rc = nlsr_scorer_pass_begin(M->sc);
            if (rc == 0)
                rc = nlsr_scorer_can_replay(M->sc) ? nlsr_scorer_replay(M->sc)
                                                   : module_pass(P, M, pass);
            if (rc == 0) rc = nlsr_scorer_pass_end(M->sc);
        }
        M->feeding = 0;
        if (rc == 0) rc = module_pass(P, M, PASS_HIST);
    } else {
        rc = module_pass(P, M, PASS_FIRST);
    }
    if (rc < 0) goto done;
    if (M->k >= M->n) {
        M->thr = INFINITY; /* k >= n: the empty mask (no finite score is above +inf) */
    } else if (M->sc && nlsr_scorer_per_row(M->sc)) {
        M->thr = NAN; /* per-row thresholds (wanda): nlsr_scorer_row_thresholds */
    } else {
        nlsr_kth_hist_pick(P->hist, M->k, &M->bucket, &M->below);
        uint64_t nc = P->hist[M->bucket];
        if (!P->tune.force_lowhist && nc * sizeof(float) <= nlsr_budget_room(&ctx->budget) / 2) {
            rc = nlsr_budget_alloc(&ctx->budget, (size_t)(nc ? nc : 1) * sizeof(float),
                                   "threshold candidates", (void **)&M->cands, e);
            if (rc < 0) goto done;
            M->cand_cap = nc ? nc : 1;
        } else {
            memset(P->hist2, 0, NHIST * sizeof *P->hist2);
        }
        rc = module_pass(P, M, PASS_CAND);
        if (rc < 0) goto done;
        if (M->ncand != nc) {
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: tensor '%.200s' changed while it was read",
                           P->src->path, M->ts->name);
            goto done;
        }
        if (M->cands) {
            M->thr = nlsr_kth_inplace(M->cands, (size_t)nc, M->k - M->below);
        } else {
            uint32_t lo;
            uint64_t below2;
            nlsr_kth_hist_pick(P->hist2, M->k - M->below, &lo, &below2);
            uint32_t bits = M->bucket << 16 | lo;
            memcpy(&M->thr, &bits, 4);
        }
    }
    nlsr_pf_tensor_desc d = {M->ts->name, "weight", M->adt, 1, M->bdt, M->ts->ndim, M->ts->shape};
    rc = nlsr_pf_writer_begin_module(P->w, M->ts->name);
    if (rc == 0) rc = nlsr_pf_writer_begin_tensor(P->w, &d);
    if (rc < 0) goto done;
    if (M->k >= M->n) {
        /* Nothing is masked: the blocks are empty and need no data. */
        for (size_t u = 0; u < M->nunits && rc == 0; u++)
            rc = nlsr_pf_writer_block(P->w, M->units[u].span[0].first, M->units[u].span[0].count,
                                      NULL, 0, NULL, P->basem);
    } else {
        rc = module_pass(P, M, PASS_MASK);
    }
    if (rc == 0) rc = nlsr_pf_writer_end_tensor(P->w);
    if (rc == 0) rc = nlsr_pf_writer_end_module(P->w);
    if (rc == 0) {
        uint64_t hs = nlsr_xxh64_digest(&P->fpm_src), hb = nlsr_xxh64_digest(&P->fpm_base);
        nlsr_full_fp_add_module(&P->fp_src, hs);
        nlsr_full_fp_add_module(&P->fp_base, hb);
        if (P->hm_src) {
            P->hm_src[P->nhm] = hs;
            P->hm_base[P->nhm++] = hb;
        }
    }
    if (rc == 0 && rep) rc = nlsr_report_add(rep, ctx, M->ts->name, M->n, M->mask_count, NULL);
done:
    pmod_release(P, M);
    return rc;
}

static void prep_free_scratch(prep *P)
{
    nlsr_budget *b = &P->ctx->budget;
    size_t n = (size_t)P->blk;
    nlsr_budget_free(b, P->fa, n * 4);
    nlsr_budget_free(b, P->fb, n * 4);
    nlsr_budget_free(b, P->fe, n * 4);
    nlsr_budget_free(b, P->fs, n * 4);
    nlsr_budget_free(b, P->esraw, n * 8);
    nlsr_budget_free(b, P->refm, n * 8);
    nlsr_budget_free(b, P->basem, n * 8);
    nlsr_budget_free(b, P->idx, n * 8);
    nlsr_budget_free(b, P->hist, NHIST * 8);
    nlsr_budget_free(b, P->hist2, NHIST * 8);
}

static int prep_alloc_scratch(prep *P)
{
    nlsr_ctx *ctx = P->ctx;
    nlsr_budget *b = &ctx->budget;
    size_t n = (size_t)P->blk;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } a[] = {
        {(void **)&P->fa, n * 4, "prepare scratch"},   {(void **)&P->fb, n * 4, "prepare scratch"},
        {(void **)&P->fe, n * 4, "prepare scratch"},   {(void **)&P->fs, n * 4, "prepare scores"},
        {(void **)&P->esraw, n * 8, "prepare scratch"}, {(void **)&P->refm, n * 8, "patch values"},
        {(void **)&P->basem, n * 8, "patch values"},    {(void **)&P->idx, n * 8, "mask indices"},
        {(void **)&P->hist, NHIST * 8, "score histogram"},
        {(void **)&P->hist2, NHIST * 8, "score histogram"},
    };
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
        NLSR_FORWARD(nlsr_budget_alloc(b, a[i].bytes, a[i].what, a[i].p, &ctx->err));
    return 0;
}

cJSON *nlsr_full_source_json(const nlsr_ckpt *ck, const nlsr_xxh64_state *fp)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    char *abs = realpath(ck->path, NULL);
    cJSON_AddStringToObject(o, "path", abs ? abs : ck->path);
    free(abs);
    if (ck->resolved) {
        /* A hub cache repository folder: which of its revisions was read. */
        char *snap = realpath(ck->resolved, NULL);
        cJSON_AddStringToObject(o, "snapshot", snap ? snap : ck->resolved);
        free(snap);
    }
    uint64_t bytes = 0;
    for (size_t i = 0; i < ck->n; i++) bytes += ck->t[i].t->end - ck->t[i].t->begin;
    cJSON_AddNumberToObject(o, "tensors", (double)ck->n);
    cJSON_AddNumberToObject(o, "bytes", (double)bytes);
    char hex[32];
    snprintf(hex, sizeof hex, "xxh64:%016" PRIx64, nlsr_xxh64_digest(fp));
    cJSON_AddStringToObject(o, "fingerprint", hex);
    return o;
}

/* A part of a split prepare (docs/SCALE.md) says which it is, how many modules the whole model
 * has, where its own begin, and each of its modules' content hashes, for nlsr_reduce. */
static cJSON *part_json(const prep *P, cJSON *x)
{
    cJSON *pt = cJSON_AddObjectToObject(x, "part"), *fps, *hb, *hs;
    if (!pt) return NULL;
    cJSON_AddNumberToObject(pt, "index", (double)P->part_index);
    cJSON_AddNumberToObject(pt, "count", (double)P->part_count);
    cJSON_AddNumberToObject(pt, "modules_total", (double)P->part_total);
    cJSON_AddNumberToObject(pt, "first", (double)P->part_lo);
    if (!(fps = cJSON_AddObjectToObject(pt, "module_fingerprints"))) return NULL;
    if (!(hb = cJSON_AddArrayToObject(fps, "base"))) return NULL;
    if (!(hs = cJSON_AddArrayToObject(fps, P->is_ref ? "reference" : "aligned"))) return NULL;
    for (size_t i = 0; i < P->nhm; i++) {
        char buf[24];
        snprintf(buf, sizeof buf, "%016" PRIx64, P->hm_base[i]);
        cJSON_AddItemToArray(hb, cJSON_CreateString(buf));
        snprintf(buf, sizeof buf, "%016" PRIx64, P->hm_src[i]);
        cJSON_AddItemToArray(hs, cJSON_CreateString(buf));
    }
    return pt;
}

static cJSON *header_extra(const prep *P, uint64_t *model_bytes)
{
    const nlsr_realign_params *p = P->p;
    cJSON *x = cJSON_CreateObject(), *par, *src, *model, *ts;
    if (!x || !(par = cJSON_AddObjectToObject(x, "params"))) goto oom;
    static const char *const keys[] = {"beta", "sparsity", "targets", NULL};
    if (nlsr_params_add_json_keys(par, p, keys) != 0) goto oom;
    cJSON_AddNumberToObject(par, "block_elems", (double)P->blk);
    cJSON *scp = nlsr_scorer_params_json(&p->scorer);
    if (!scp) goto oom;
    cJSON_AddItemToObject(par, "scorer", scp);
    if (!(src = cJSON_AddObjectToObject(x, "sources"))) goto oom;
    cJSON *b = nlsr_full_source_json(P->base, &P->fp_base),
          *s = nlsr_full_source_json(P->src, &P->fp_src);
    if (!b || !s) {
        cJSON_Delete(b);
        cJSON_Delete(s);
        goto oom;
    }
    cJSON_AddItemToObject(src, "base", b);
    cJSON_AddItemToObject(src, P->is_ref ? "reference" : "aligned", s);
    if (!(model = cJSON_AddObjectToObject(x, "model"))) goto oom;
    uint64_t bytes = 0;
    for (size_t i = 0; i < P->src->n; i++) bytes += P->src->t[i].t->end - P->src->t[i].t->begin;
    cJSON_AddNumberToObject(model, "bytes", (double)bytes);
    *model_bytes = bytes;
    if (!(ts = cJSON_AddArrayToObject(model, "tensors"))) goto oom;
    for (size_t i = 0; i < P->src->n; i++) {
        const st_tensor *t = P->src->t[i].t;
        cJSON *a = cJSON_CreateArray(), *sh = cJSON_CreateArray();
        if (!a || !sh) {
            cJSON_Delete(a);
            cJSON_Delete(sh);
            goto oom;
        }
        cJSON_AddItemToArray(ts, a);
        cJSON_AddItemToArray(a, cJSON_CreateString(t->name));
        cJSON_AddItemToArray(a, cJSON_CreateString(nlsr_dtype_name(t->dtype)));
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddItemToArray(a, sh);
    }
    if (P->part_count && !part_json(P, x)) goto oom;
    return x;
oom:
    cJSON_Delete(x);
    return NULL;
}

int nlsr_full_prepare(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                      int is_reference, const char *out_file, const nlsr_realign_params *p,
                      const nlsr_full_tuning *tune, nlsr_report *rep)
{
    return nlsr_full_prepare_part(ctx, base, src, is_reference, out_file, p, tune, 0, 0, rep);
}

int nlsr_full_prepare_part(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                           int is_reference, const char *out_file, const nlsr_realign_params *p,
                           const nlsr_full_tuning *tune, unsigned part_index,
                           unsigned part_count, nlsr_report *rep)
{
    nlsr_err *e = &ctx->err;
    int rc = 0;
    prep P;
    memset(&P, 0, sizeof P);
    P.ctx = ctx;
    P.p = p;
    if (tune) P.tune = *tune;
    P.base = base;
    P.src = src;
    P.is_ref = is_reference;
    P.part_index = part_index;
    P.part_count = part_count;
    P.blk = P.tune.block_elems ? P.tune.block_elems : NLSR_FULL_BLOCK_ELEMS;
    NLSR_FAIL_IF(P.blk > NLSR_PF_MAX_BLOCK_ELEMS, e, NLSR_E_USAGE, "block of %" PRIu64
                 " elements is too large", P.blk);
    NLSR_FORWARD(nlsr_params_validate(p, e));
    nlsr_xxh64_init(&P.fp_base, 0);
    nlsr_xxh64_init(&P.fp_src, 0);
    cJSON *extra = NULL;
    rc = prep_alloc_scratch(&P);
    /* The scorer's parameters, its activations file (names and widths against the model) and
     * every module's rank and memory are checked before anything is written. */
    if (rc == 0) rc = nlsr_scorer_check_params(ctx, &p->scorer);
    if (rc == 0 && p->scorer.kind != NLSR_SCORER_MAGNITUDE) {
        if (p->scorer.activations)
            rc = nlsr_acts_open(ctx, p->scorer.activations, src, p, &P.acts);
        if (rc == 0)
            rc = nlsr_scorer_check_modules(ctx, src, p, P.acts,
                                           STREAM_DEPTH * (P.blk * 16 + 4 * 4096));
    }
    /* A part (part_count > 0) prepares the modules [lo, hi) of the module order, cut
     * evenly by count: the same cut for every part of a job, whatever machine runs it. */
    for (size_t j = 0; j < src->n; j++) P.part_total += is_target(src->t[j].t, p) != 0;
    P.part_hi = P.part_total;
    if (rc == 0 && P.part_count) {
        /* Not NLSR_FAIL_IF: the scratch is allocated and freed below. */
        if (P.part_index >= P.part_count)
            rc = nlsr_fail(e, NLSR_E_USAGE, "part %u of %u does not exist (parts count from 0)",
                           P.part_index, P.part_count);
        else if (P.part_count > P.part_total)
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%u parts for %" PRIu64 " modules: at most one part per module",
                           P.part_count, P.part_total);
    }
    if (rc == 0 && P.part_count) {
        P.part_lo = P.part_total * P.part_index / P.part_count;
        P.part_hi = P.part_total * (P.part_index + 1) / P.part_count;
        size_t nh = (size_t)(P.part_hi - P.part_lo);
        P.hm_base = calloc(nh ? nh : 1, sizeof *P.hm_base);
        P.hm_src = calloc(nh ? nh : 1, sizeof *P.hm_src);
        if (!P.hm_base || !P.hm_src) rc = nlsr_fail(e, -ENOMEM, "out of memory");
    }
    if (rc == 0) rc = nlsr_pf_writer_open(ctx, out_file, "full", &P.w);
    /* Progress: each module of base and source once (the scorer's further passes and the
     * re-reads of modules too large to cache are not counted twice). */
    uint64_t prep_bytes = 0, prep_units = 0, pm = 0;
    for (size_t j = 0; j < src->n; j++) {
        size_t ib;
        if (!is_target(src->t[j].t, p)) continue;
        pm++; /* a part counts its own modules only */
        if (pm - 1 < P.part_lo || pm - 1 >= P.part_hi ||
            nlsr_ckpt_find(base, src->t[j].t->name, &ib) != 0)
            continue;
        prep_bytes += (src->t[j].t->end - src->t[j].t->begin) +
                      (base->t[ib].t->end - base->t[ib].t->begin);
        prep_units++;
    }
    if (rc == 0) nlsr_phase_begin(ctx, "prepare", NLSR_PHASE_OWN, prep_bytes, prep_units);
    /* Module order: the source's target names, sorted; check_sources made sure base has each. */
    uint64_t mi = 0;
    for (size_t j = 0; j < src->n && rc == 0; j++) {
        if (!is_target(src->t[j].t, p)) continue;
        if (mi < P.part_lo || mi >= P.part_hi) {
            mi++;
            continue;
        }
        mi++;
        pmod M;
        memset(&M, 0, sizeof M);
        M.is = j;
        M.ts = src->t[j].t;
        if (nlsr_ckpt_find(base, M.ts->name, &M.ib) != 0) {
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "target tensor '%.200s' is not in base %s",
                           M.ts->name, base->path);
            break;
        }
        M.tb = base->t[M.ib].t;
        rc = prep_module(&P, &M, rep);
        nlsr_phase_add(ctx, (M.ts->end - M.ts->begin) + (M.tb->end - M.tb->begin));
        nlsr_phase_units(ctx, 1);
        /* A stop point between modules (tests/test_slurm.sh signals a split task there). */
        if (rc == 0) nlsr_test_point("module");
    }
    uint64_t model_bytes = 0, file_bytes = 0;
    if (rc == 0 && !(extra = header_extra(&P, &model_bytes)))
        rc = nlsr_fail(e, -ENOMEM, "out of memory building the patch header");
    if (rc == 0) {
        rc = nlsr_pf_writer_commit(P.w, extra, &file_bytes);
        P.w = NULL;
    }
    if (rc == 0) nlsr_phase_end(ctx);
    if (rc == 0 && rep) {
        rep->summary.patch_bytes = file_bytes;
        rep->summary.model_bytes = model_bytes;
        rep->summary.module_passes = P.passes;
        rep->summary.module_disk_passes = P.disk_passes;
    }
    cJSON_Delete(extra);
    nlsr_pf_writer_abort(P.w);
    nlsr_acts_free(P.acts);
    prep_free_scratch(&P);
    free(P.hm_base);
    free(P.hm_src);
    return rc;
}

/* ---- apply ------------------------------------------------------------------------------- */

typedef struct apply_ctx {
    nlsr_ctx *ctx;
    nlsr_pf_reader *pf;
    const nlsr_ckpt *ft;
    size_t *ti;           /* ft tensor index per module */
    uint64_t blk;         /* largest block */
    float *tf, *tm, *em, *bm;
    unsigned char *outraw, *conv;
    /* One batch of stream units (A->batch blocks) and each unit's module and block: the
     * job streams the patch's blocks batch by batch, so its memory does not grow with the
     * block count (a unit per block of a 70B model was 300 MB). */
    nlsr_unit *units;
    size_t *umod, *ublk;
    size_t batch;
    /* The fine-tuned target tensors as read in pass 1, when they fit half the budget left:
     * pass 2 then reads nothing. Otherwise pass 2 streams the patched tensors again. */
    unsigned char *cache;
    uint64_t cache_bytes;
    uint64_t *cache_off;  /* per module */
    /* pass 2 */
    int *fds;
    char **dst;
    /* In place (nlsr_full_apply_journal): writes go through the undo journal, whose file ids
     * are the shard indexes; jn_mod is the module of the batch being staged. */
    nlsr_journal *jn;
    size_t jn_mod;
    int drop; /* p->drop_other_weights */
    /* One task of a split apply (docs/SCALE.md): only the shards k with write_shard[k] are
     * written, and no side file (the commit copies them). NULL: every shard. */
    const unsigned char *write_shard;
    /* run --part (nlsr_full_similarities): each module's fine-tune content hash, computed in
     * the similarity pass over the bytes it reads; NULL otherwise. */
    uint64_t *ft_hash;
    nlsr_xxh64_state fth;  /* the module being hashed (ft_hash, or the recorded check) */
    /* A recorded selection (the patch header's "finetuned" record, docs/SCALE.md): the
     * similarity pass is replaced by the check of the modules to be written against the
     * fine-tune hashes it holds. */
    const nlsr_split_sel *rec;
} apply_ctx;

/* Fills A->units with the next blocks, at most A->batch, of the modules `only` selects
 * (all when NULL), from module *mi block *bi on; *n is 0 after the last. */
static int apply_batch(apply_ctx *A, const int *only, size_t *mi, size_t *bi, size_t *n)
{
    nlsr_pf_reader *pf = A->pf;
    size_t k = 0;
    while (*mi < pf->nmodules && k < A->batch) {
        const nlsr_pf_tensor *t = &pf->modules[*mi].t[0];
        if ((only && !only[*mi]) || *bi >= t->nblocks) {
            (*mi)++;
            *bi = 0;
            continue;
        }
        nlsr_pf_block blk;
        NLSR_FORWARD(nlsr_pf_block_get(pf, t, *bi, &blk));
        memset(&A->units[k], 0, sizeof A->units[k]);
        A->units[k].nspans = 1;
        A->units[k].span[0] = (nlsr_span){A->ft, A->ti[*mi], blk.first, blk.count};
        A->units[k].tag = k;
        A->umod[k] = *mi;
        A->ublk[k] = *bi;
        k++;
        (*bi)++;
    }
    *n = k;
    return 0;
}

typedef int (*apply_fn)(apply_ctx *A, size_t mi, size_t bi, const unsigned char *raw, void *arg);

/* Streams the fine-tuned blocks of the selected modules to fn, in module and block order, one
 * batch of units at a time (a stream per batch: the read-ahead restarts every A->batch
 * blocks). */
static int apply_stream(apply_ctx *A, const int *only, apply_fn fn, void *arg)
{
    size_t mi = 0, bi = 0, n = 0;
    int rc = 0;
    for (;;) {
        rc = apply_batch(A, only, &mi, &bi, &n);
        if (rc < 0 || n == 0) break;
        nlsr_stream *s = NULL;
        rc = nlsr_stream_open(A->ctx, A->units, n, STREAM_DEPTH, &s);
        const nlsr_unit *u;
        const unsigned char *const *data;
        while (rc == 0 && (rc = nlsr_stream_next(s, &u, &data)) == 1)
            rc = fn(A, A->umod[u->tag], A->ublk[u->tag], data[0], arg);
        nlsr_stream_close(s);
        if (rc < 0) break;
    }
    return rc;
}

/* The patch file's values (checksums prove they are what prepare wrote, not that they are
 * finite: a file written by another tool, or by prepare from a reference holding Inf), then
 * every transplant value as the fine-tune's dtype stores it: a reference finite in the
 * aligned dtype may overflow a narrower destination (an F16 fine-tune, |e_s| >= 65520).
 * Checked for every module in this first pass, patched or not, so that the job fails before
 * any byte is written (in place: before the journal starts), whatever the selection draws. */
static int check_patch_values(apply_ctx *A, size_t mi, const nlsr_pf_tensor *pt,
                              const nlsr_pf_view *v, const st_tensor *t)
{
    const char *pfile = A->pf->path;
    size_t bad = nlsr_first_nonfinite_f32(A->em, v->m);
    if (bad < v->m)
        return nonfinite_fail(A->ctx, pfile, pt->name, v->idx[bad], A->em[bad],
                              " (a reference value in the patch file)");
    bad = nlsr_first_nonfinite_f32(A->bm, v->m);
    if (bad < v->m)
        return nonfinite_fail(A->ctx, pfile, pt->name, v->idx[bad], A->bm[bad],
                              " (a base value in the patch file)");
    if (t->dtype == NLSR_DTYPE_F32 || t->dtype == pt->ref_dtype) return 0; /* exact */
    nlsr_from_f32(t->dtype, A->em, A->conv, v->m);
    if (!nlsr_any_nonfinite_raw(t->dtype, A->conv, v->m)) return 0;
    size_t tsz = nlsr_dtype_size(t->dtype);
    for (bad = 0; bad < v->m; bad++) {
        float x;
        nlsr_to_f32(t->dtype, A->conv + bad * tsz, &x, 1);
        if (!isfinite(x)) break;
    }
    /* run's patch file is a temporary one: the checkpoint it was prepared from says more. */
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(A->pf->header, "sources");
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(src, "aligned");
    if (!from) from = cJSON_GetObjectItemCaseSensitive(src, "reference");
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(from, "path");
    char where[1200];
    if (cJSON_IsString(fp))
        snprintf(where, sizeof where, "%.500s, prepared from %.500s", pfile, fp->valuestring);
    else snprintf(where, sizeof where, "%.500s", pfile);
    return nlsr_full_dest_overflow(A->ctx, shard_path(A->ft, A->ti[mi]), t->name, v->idx[bad],
                                   A->em[bad], t->dtype, where);
}

/* Pass 1 for one block: every fine-tuned value finite, the masked cosine's sums. */
static int similarity_block(apply_ctx *A, size_t mi, size_t bi, const unsigned char *raw,
                            nlsr_cos_sums *sums)
{
    nlsr_pf_reader *pf = A->pf;
    const nlsr_pf_tensor *pt = &pf->modules[mi].t[0];
    const st_tensor *t = A->ft->t[A->ti[mi]].t;
    nlsr_pf_block blk;
    NLSR_FORWARD(nlsr_pf_block_get(pf, pt, bi, &blk));
    uint64_t first = blk.first;
    size_t cnt = (size_t)blk.count;
    nlsr_to_f32(t->dtype, raw, A->tf, cnt);
    size_t bad = nlsr_first_nonfinite_f32(A->tf, cnt);
    if (bad < cnt)
        return nonfinite_fail(A->ctx, shard_path(A->ft, A->ti[mi]), t->name, first + bad,
                              A->tf[bad], " in finetuned");
    if (A->ft_hash) {
        if (bi == 0) {
            nlsr_xxh64_init(&A->fth, 0);
            nlsr_full_fp_tensor_head(&A->fth, t);
        }
        nlsr_xxh64_update(&A->fth, raw, cnt * nlsr_dtype_size(t->dtype));
        if (bi + 1 == pt->nblocks) A->ft_hash[mi] = nlsr_xxh64_digest(&A->fth);
    }
    nlsr_pf_view v;
    NLSR_FORWARD(nlsr_pf_read_block(pf, pt, bi, &v));
    for (size_t j = 0; j < v.m; j++) A->tm[j] = A->tf[v.idx[j] - first];
    nlsr_to_f32(pt->ref_dtype, v.ref, A->em, v.m);
    nlsr_to_f32(pt->base_dtype, v.base, A->bm, v.m);
    NLSR_FORWARD(check_patch_values(A, mi, pt, &v, t));
    nlsr_cos_add_masked(sums, A->tm, A->em, A->bm, v.m);
    if (A->cache) {
        size_t tsz = nlsr_dtype_size(t->dtype);
        memcpy(A->cache + A->cache_off[mi] + first * tsz, raw, cnt * tsz);
    }
    return 0;
}

static int similarity_fn(apply_ctx *A, size_t mi, size_t bi, const unsigned char *raw, void *arg)
{
    nlsr_cos_sums *sums = arg;
    NLSR_FORWARD(similarity_block(A, mi, bi, raw, &sums[mi]));
    if (bi + 1 == A->pf->modules[mi].t[0].nblocks) nlsr_phase_units(A->ctx, 1);
    return 0;
}

static int apply_similarity(apply_ctx *A, nlsr_report *rep)
{
    nlsr_ctx *ctx = A->ctx;
    nlsr_pf_reader *pf = A->pf;
    nlsr_cos_sums *sums = calloc(pf->nmodules ? pf->nmodules : 1, sizeof *sums);
    NLSR_FAIL_IF(!sums, &ctx->err, -ENOMEM, "out of memory");
    /* Progress: the fine-tune's target modules and the patch file's blocks, each read once. */
    uint64_t sim_bytes = 0;
    for (size_t i = 0; i < pf->nmodules; i++) {
        const nlsr_pf_tensor *pt = &pf->modules[i].t[0];
        sim_bytes += A->ft->t[A->ti[i]].t->end - A->ft->t[A->ti[i]].t->begin + pt->csize_total;
    }
    nlsr_phase_begin(ctx, "similarities", NLSR_PHASE_READ, sim_bytes, pf->nmodules);
    int rc = apply_stream(A, NULL, similarity_fn, sums);
    if (rc == 0) nlsr_phase_end(ctx);
    for (size_t i = 0; i < pf->nmodules && rc == 0; i++) {
        const nlsr_pf_tensor *pt = &pf->modules[i].t[0];
        size_t idx;
        rc = nlsr_report_add(rep, ctx, pf->modules[i].name, pt->numel, pt->mask_count, &idx);
        if (rc == 0) rep->m[idx].similarity = nlsr_cosine(sums[i].dot, sums[i].nx, sums[i].ny);
    }
    free(sums);
    return rc;
}

/* A module's content hash when it has no block (an empty tensor): its head alone. */
static uint64_t empty_module_hash(const st_tensor *t)
{
    nlsr_xxh64_state h;
    nlsr_xxh64_init(&h, 0);
    nlsr_full_fp_tensor_head(&h, t);
    return nlsr_xxh64_digest(&h);
}

static int recorded_mismatch(apply_ctx *A, size_t mi, uint64_t got)
{
    return nlsr_fail(&A->ctx->err, NLSR_E_MISMATCH,
                     "finetuned %s: module '%.200s' is not the one whose similarity %s records "
                     "(content hash %016" PRIx64 ", recorded %016" PRIx64 "): the selection was "
                     "made for another fine-tune (run its run --part tasks and reduce again)",
                     A->ft->path, A->pf->modules[mi].name, A->pf->path, got, A->rec->fp[mi]);
}

/* With a recorded selection, pass 1 reads only the modules this job writes: each is hashed as
 * run --part hashed it and must match the record before anything is written (in place: before
 * the journal starts). The fine-tune's values were checked by run --part on these very bytes
 * (the hash says so); the patch values are checked again as the similarity pass checks them
 * (checksums prove bytes, not finite values), for the modules written only. */
static int recorded_fn(apply_ctx *A, size_t mi, size_t bi, const unsigned char *raw, void *arg)
{
    (void)arg;
    const nlsr_pf_tensor *pt = &A->pf->modules[mi].t[0];
    const st_tensor *t = A->ft->t[A->ti[mi]].t;
    nlsr_pf_block blk;
    NLSR_FORWARD(nlsr_pf_block_get(A->pf, pt, bi, &blk));
    size_t tsz = nlsr_dtype_size(t->dtype);
    if (bi == 0) {
        nlsr_xxh64_init(&A->fth, 0);
        nlsr_full_fp_tensor_head(&A->fth, t);
    }
    nlsr_xxh64_update(&A->fth, raw, (size_t)blk.count * tsz);
    nlsr_pf_view v;
    NLSR_FORWARD(nlsr_pf_read_block(A->pf, pt, bi, &v));
    nlsr_to_f32(pt->ref_dtype, v.ref, A->em, v.m);
    nlsr_to_f32(pt->base_dtype, v.base, A->bm, v.m);
    NLSR_FORWARD(check_patch_values(A, mi, pt, &v, t));
    if (A->cache)
        memcpy(A->cache + A->cache_off[mi] + blk.first * tsz, raw, (size_t)blk.count * tsz);
    if (bi + 1 == pt->nblocks) {
        uint64_t got = nlsr_xxh64_digest(&A->fth);
        if (got != A->rec->fp[mi]) return recorded_mismatch(A, mi, got);
        nlsr_phase_units(A->ctx, 1);
    }
    return 0;
}

static int apply_recorded(apply_ctx *A, const int *need, nlsr_report *rep)
{
    nlsr_ctx *ctx = A->ctx;
    nlsr_pf_reader *pf = A->pf;
    int rc = 0;
    for (size_t i = 0; i < pf->nmodules && rc == 0; i++) {
        const nlsr_pf_tensor *pt = &pf->modules[i].t[0];
        size_t idx;
        rc = nlsr_report_add(rep, ctx, pf->modules[i].name, pt->numel, pt->mask_count, &idx);
        if (rc < 0) break;
        rep->m[idx].similarity = A->rec->sim[i];
        rep->m[idx].probability = A->rec->prob[i];
        rep->m[idx].draw = A->rec->draw[i];
        rep->m[idx].patched = A->rec->patched[i];
        uint64_t h;
        if (need[i] && pt->nblocks == 0 &&
            (h = empty_module_hash(A->ft->t[A->ti[i]].t)) != A->rec->fp[i])
            rc = recorded_mismatch(A, i, h);
    }
    uint64_t bytes = 0, units = 0;
    for (size_t i = 0; i < pf->nmodules; i++)
        if (need[i]) {
            bytes += A->ft->t[A->ti[i]].t->end - A->ft->t[A->ti[i]].t->begin;
            units++;
        }
    if (rc < 0) return rc;
    nlsr_phase_begin(ctx, "fine-tune check", NLSR_PHASE_READ, bytes, units);
    rc = apply_stream(A, need, recorded_fn, NULL);
    if (rc == 0) nlsr_phase_end(ctx);
    return rc;
}

/* Pass 2 for one block of a patched module: t' = M ? e_s : t, with e_s converted to the
 * fine-tuned tensor's dtype, written over the block's bytes in the shard's copy. */
static int write_block(apply_ctx *A, size_t mi, size_t bi, const unsigned char *raw, void *arg)
{
    (void)arg;
    nlsr_ctx *ctx = A->ctx;
    nlsr_pf_reader *pf = A->pf;
    const nlsr_ckpt *ft = A->ft;
    const nlsr_pf_tensor *pt = &pf->modules[mi].t[0];
    size_t ti = A->ti[mi];
    const st_tensor *t = ft->t[ti].t;
    uint32_t sh = ft->t[ti].shard;
    nlsr_pf_block blk;
    NLSR_FORWARD(nlsr_pf_block_get(pf, pt, bi, &blk));
    uint64_t first = blk.first;
    size_t cnt = (size_t)blk.count, tsz = nlsr_dtype_size(t->dtype);
    nlsr_pf_view v;
    NLSR_FORWARD(nlsr_pf_read_block(pf, pt, bi, &v));
    memcpy(A->outraw, raw, cnt * tsz);
    nlsr_to_f32(pt->ref_dtype, v.ref, A->em, v.m);
    nlsr_from_f32(t->dtype, A->em, A->conv, v.m);
    for (size_t j = 0; j < v.m; j++)
        memcpy(A->outraw + (v.idx[j] - first) * tsz, A->conv + j * tsz, tsz);
    uint64_t off = ft->shards[sh]->data_start + t->begin + first * tsz;
    if (A->jn) {
        /* In place: raw is the range's current content; the grains that change are journaled
         * before they are overwritten, the others left alone; one batch (one fsync pair) per
         * tensor. The journal counts the bytes. */
        if (A->jn_mod != mi) {
            NLSR_FORWARD(nlsr_journal_flush(A->jn));
            A->jn_mod = mi;
        }
        NLSR_FORWARD(nlsr_journal_stage_changed(A->jn, sh, off, raw, A->outraw, cnt * tsz, tsz));
    } else {
        NLSR_FORWARD(nlsr_pwrite_all(A->fds[sh], A->outraw, cnt * tsz, off, A->dst[sh],
                                     &ctx->err));
        ctx->bytes_written += cnt * tsz;
    }
    if (bi + 1 == pt->nblocks) nlsr_phase_units(ctx, 1);
    else nlsr_phase_tick(ctx);
    return 0;
}

/* Pass 2: the output checkpoint. Every shard is copied (reflink where the file system can);
 * in the copies of shards that hold patched tensors, those tensors' bytes are rewritten in
 * place, so headers, metadata, tensor order and every other byte stay the fine-tune's own. */
static int apply_write(apply_ctx *A, nlsr_report *rep, const char *out_dir)
{
    nlsr_ctx *ctx = A->ctx;
    nlsr_err *e = &ctx->err;
    nlsr_pf_reader *pf = A->pf;
    const nlsr_ckpt *ft = A->ft;
    int rc = 0;
    int *only = calloc(pf->nmodules ? pf->nmodules : 1, sizeof *only);
    A->fds = malloc((ft->nshards ? ft->nshards : 1) * sizeof *A->fds);
    A->dst = calloc(ft->nshards ? ft->nshards : 1, sizeof *A->dst);
    if (!only || !A->fds || !A->dst) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < ft->nshards; k++) A->fds[k] = -1;
    for (size_t i = 0; i < pf->nmodules; i++)
        only[i] = rep->m[i].patched && (!A->write_shard || A->write_shard[ft->t[A->ti[i]].shard]);
    /* Progress: the shards copied (into a folder) and the patched modules' bytes written over
     * them, or in place their journal copies and the bytes written over them. */
    uint64_t out_bytes = 0, npatched = 0;
    for (size_t k = 0; k < ft->nshards && !A->jn; k++)
        if (!A->write_shard || A->write_shard[k]) out_bytes += ft->shards[k]->file_size;
    for (size_t i = 0; i < pf->nmodules; i++)
        if (only[i]) {
            npatched++;
            out_bytes += (A->jn ? 2 : 1) * (ft->t[A->ti[i]].t->end - ft->t[A->ti[i]].t->begin);
        }
    nlsr_phase_begin(ctx, "output", NLSR_PHASE_WRITTEN, out_bytes, npatched);
    /* In place there is no copy: the journal holds the shards open for writing. */
    for (size_t k = 0; k < ft->nshards && rc == 0 && !A->jn; k++) {
        if (A->write_shard && !A->write_shard[k]) continue;
        if (!(A->dst[k] = nlsr_path_join(out_dir, ft->shard_names[k]))) {
            rc = nlsr_fail(e, -ENOMEM, "out of memory");
            break;
        }
        rc = nlsr_copy_file(ft->shards[k]->path, A->dst[k], e);
        if (rc == 0) {
            /* The kernel reads the shard to copy it (unless it can reflink). */
            ctx->bytes_read += ft->shards[k]->file_size;
            ctx->bytes_written += ft->shards[k]->file_size;
            nlsr_phase_tick(ctx);
        }
    }
    for (size_t i = 0; i < pf->nmodules && rc == 0 && !A->jn; i++) {
        uint32_t sh = ft->t[A->ti[i]].shard;
        if (!only[i] || A->fds[sh] >= 0) continue;
        A->fds[sh] = open(A->dst[sh], O_WRONLY | O_CLOEXEC);
        if (A->fds[sh] < 0)
            rc = nlsr_fail(e, -errno, "%s: cannot open for writing: %s", A->dst[sh],
                           strerror(errno));
    }
    if (rc == 0 && A->cache) {
        for (size_t i = 0; i < pf->nmodules && rc == 0; i++) {
            if (!only[i]) continue;
            const nlsr_pf_tensor *pt = &pf->modules[i].t[0];
            size_t tsz = nlsr_dtype_size(ft->t[A->ti[i]].t->dtype);
            for (size_t b = 0; b < pt->nblocks && rc == 0; b++) {
                nlsr_pf_block blk;
                rc = nlsr_pf_block_get(pf, pt, b, &blk);
                if (rc == 0)
                    rc = write_block(A, i, b, A->cache + A->cache_off[i] + blk.first * tsz, NULL);
            }
        }
    } else if (rc == 0) {
        rc = apply_stream(A, only, write_block, NULL);
    }
    if (rc == 0 && A->jn) rc = nlsr_journal_flush(A->jn);
    for (size_t k = 0; k < ft->nshards; k++) {
        if (A->fds[k] < 0) continue;
        if (rc == 0 && fsync(A->fds[k]) != 0)
            rc = nlsr_fail(e, -errno, "%s: fsync failed: %s", A->dst[k], strerror(errno));
        close(A->fds[k]);
    }
    /* Side files (index, config, tokenizer ...) as the policy says (src/io/sidefiles.h). */
    if (rc == 0 && !A->jn && !A->write_shard)
        rc = nlsr_sidefiles_copy(ctx, ft, out_dir, A->drop, &rep->files);
    if (rc == 0) nlsr_phase_end(ctx);
done:
    if (A->dst)
        for (size_t k = 0; k < ft->nshards; k++) free(A->dst[k]);
    free(A->dst);
    free(A->fds);
    A->dst = NULL;
    A->fds = NULL;
    free(only);
    return rc;
}

/* Step 3 into out_dir (jn NULL) or in place through the journal jn (out_dir NULL). */
static int apply_to(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft, const char *out_dir,
                    nlsr_journal *jn, const nlsr_realign_params *p, const nlsr_full_tuning *tune,
                    const unsigned char *write_shard, nlsr_report *rep, uint64_t *ft_hash)
{
    nlsr_err *e = &ctx->err;
    nlsr_budget *b = &ctx->budget;
    int rc = 0;
    apply_ctx A;
    memset(&A, 0, sizeof A);
    A.ctx = ctx;
    A.pf = pf;
    A.ft = ft;
    A.jn = jn;
    A.jn_mod = SIZE_MAX;
    A.drop = p->drop_other_weights;
    A.write_shard = write_shard;
    A.ft_hash = ft_hash;
    /* A selection recorded by nlsr reduce (run --part maps) is used as it is: only the modules
     * this job writes are read (run --part computes no selection: ft_hash). */
    nlsr_split_sel sel;
    memset(&sel, 0, sizeof sel);
    if (!ft_hash) {
        rc = nlsr_split_sel_read(ctx, pf, &sel);
        if (rc < 0) return rc;
        if (rc == 1 && !sel.has_selection) nlsr_split_sel_free(&sel);
        if (sel.has_selection) A.rec = &sel;
        rc = 0;
    }
    A.ti = calloc(pf->nmodules ? pf->nmodules : 1, sizeof *A.ti);
    A.cache_off = calloc(pf->nmodules ? pf->nmodules : 1, sizeof *A.cache_off);
    int *need = calloc(pf->nmodules ? pf->nmodules : 1, sizeof *need);
    if (!A.ti || !A.cache_off || !need) {
        free(A.ti);
        free(A.cache_off);
        free(need);
        nlsr_split_sel_free(&sel);
        return nlsr_fail(e, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < pf->nmodules && rc == 0; i++) {
        if (nlsr_ckpt_find(ft, pf->modules[i].name, &A.ti[i]) != 0) {
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "finetuned %s lacks '%.200s' of %s", ft->path,
                           pf->modules[i].name, pf->path);
            break;
        }
        const nlsr_pf_tensor *t = &pf->modules[i].t[0];
        if (t->max_count > A.blk) A.blk = t->max_count;
        /* With a recorded selection only the modules written are read and cached. */
        need[i] = !A.rec || (sel.patched[i] &&
                             (!write_shard || write_shard[ft->t[A.ti[i]].shard]));
        if (!need[i]) continue;
        A.cache_off[i] = A.cache_bytes;
        A.cache_bytes += ft->t[A.ti[i]].t->end - ft->t[A.ti[i]].t->begin;
    }
    size_t n = (size_t)(A.blk ? A.blk : 1);
    uint64_t per_unit = sizeof(nlsr_unit) + 2 * sizeof(size_t), room = nlsr_budget_room(&ctx->budget) / 32;
    A.batch = room / per_unit > APPLY_BATCH_MAX   ? APPLY_BATCH_MAX
              : room / per_unit < APPLY_BATCH_MIN ? APPLY_BATCH_MIN
                                                  : (size_t)(room / per_unit);
    struct {
        void **p;
        size_t bytes;
    } a[] = {{(void **)&A.tf, n * 4},
             {(void **)&A.tm, n * 4},
             {(void **)&A.em, n * 4},
             {(void **)&A.bm, n * 4},
             {(void **)&A.outraw, n * 8},
             {(void **)&A.conv, n * 8},
             {(void **)&A.units, A.batch * sizeof(nlsr_unit)},
             {(void **)&A.umod, A.batch * sizeof(size_t)},
             {(void **)&A.ublk, A.batch * sizeof(size_t)}};
    for (size_t i = 0; i < sizeof a / sizeof a[0] && rc == 0; i++)
        rc = nlsr_budget_alloc(b, a[i].bytes, "apply scratch", a[i].p, e);
    /* The stream and the patch reader need a few block buffers beside the cache. */
    int may_cache = !(tune && tune->apply_no_cache) && !ft_hash;
    if (rc == 0 && may_cache && A.cache_bytes <= nlsr_budget_room(&ctx->budget) / 2)
        rc = nlsr_budget_alloc(b, (size_t)(A.cache_bytes ? A.cache_bytes : 1),
                               "fine-tuned target cache", (void **)&A.cache, e);
    if (A.rec) {
        if (rc == 0) rc = apply_recorded(&A, need, rep);
    } else {
        if (rc == 0) rc = apply_similarity(&A, rep);
        for (size_t i = 0; ft_hash && rc == 0 && i < pf->nmodules; i++)
            if (pf->modules[i].t[0].nblocks == 0)
                ft_hash[i] = empty_module_hash(ft->t[A.ti[i]].t);
        if (rc == 0 && !ft_hash) rc = nlsr_report_select(rep, ctx, &p->select);
    }
    if (rc == 0 && !ft_hash) rc = apply_write(&A, rep, out_dir);
    if (A.cache) nlsr_budget_free(b, A.cache, (size_t)(A.cache_bytes ? A.cache_bytes : 1));
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
        nlsr_budget_free(b, *a[i].p, a[i].bytes);
    free(A.ti);
    free(A.cache_off);
    free(need);
    nlsr_split_sel_free(&sel);
    return rc;
}

int nlsr_full_similarities(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                           const nlsr_realign_params *p, nlsr_report *rep, uint64_t *ft_hash)
{
    return apply_to(ctx, pf, ft, NULL, NULL, p, NULL, NULL, rep, ft_hash);
}

int nlsr_full_apply(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft, const char *out_dir,
                    const nlsr_realign_params *p, const nlsr_full_tuning *tune,
                    nlsr_report *rep)
{
    return apply_to(ctx, pf, ft, out_dir, NULL, p, tune, NULL, rep, NULL);
}

int nlsr_full_apply_shards(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                           const char *out_dir, const nlsr_realign_params *p,
                           const unsigned char *write_shard, nlsr_report *rep)
{
    return apply_to(ctx, pf, ft, out_dir, NULL, p, NULL, write_shard, rep, NULL);
}

int nlsr_full_apply_journal(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                            nlsr_journal *jn, const nlsr_realign_params *p,
                            const nlsr_full_tuning *tune, nlsr_report *rep)
{
    return apply_to(ctx, pf, ft, NULL, jn, p, tune, NULL, rep, NULL);
}

/* ---- output folders ---------------------------------------------------------------------- */

int nlsr_outputs_check(nlsr_ctx *ctx, const char *out, nlsr_out_kind kind,
                       const nlsr_realign_params *p, const char *const *inputs, size_t ninputs)
{
    nlsr_err *e = &ctx->err;
    int force = p ? p->force : 0;
    const char *extra[2] = {p ? p->report_path : NULL, p ? p->mask_out_path : NULL};
    const char *what[2] = {"report", "mask file"};
    char *ro[3] = {NULL, NULL, NULL};
    int rc = out ? nlsr_out_check(ctx, out, kind, force, inputs, ninputs, &ro[0]) : 0;
    for (int i = 0; i < 2 && rc == 0; i++)
        if (extra[i]) rc = nlsr_out_check(ctx, extra[i], NLSR_OUT_FILE, force, inputs, ninputs,
                                          &ro[i + 1]);
    /* The outputs must not land on one another either: a report inside the output folder would
     * be there before the folder is committed. */
    for (int i = 1; i < 3 && rc == 0; i++)
        for (int j = 0; j < i && rc == 0; j++) {
            if (!ro[i] || !ro[j]) continue;
            size_t L = strlen(ro[j]);
            if (strcmp(ro[i], ro[j]) == 0 || (strncmp(ro[i], ro[j], L) == 0 && ro[i][L] == '/'))
                rc = nlsr_fail(e, NLSR_E_USAGE, "%s %s is on the output %s: name it outside",
                               what[i - 1], extra[i - 1], j == 0 ? out : extra[j - 1]);
        }
    for (int i = 0; i < 3; i++) free(ro[i]);
    return rc;
}

int nlsr_outdir_begin(nlsr_ctx *ctx, const char *out_dir, int force, char **tmp_dir)
{
    *tmp_dir = NULL;
    /* The policy on what sits at out_dir (outpath.h), for jobs that check no inputs. */
    NLSR_FORWARD(nlsr_out_check(ctx, out_dir, NLSR_OUT_DIR, force, NULL, 0, NULL));
    return nlsr_tmp_dir(ctx, out_dir, tmp_dir);
}

int nlsr_outdir_commit(nlsr_ctx *ctx, const char *tmp_dir, const char *out_dir, int force)
{
    return nlsr_tmp_dir_commit(ctx, tmp_dir, out_dir, force);
}

void nlsr_outdir_abort(const char *tmp_dir)
{
    nlsr_tmp_remove(tmp_dir);
}
