/* SPDX-License-Identifier: Apache-2.0 */
/* Step 1 for full checkpoints (METHOD.md): the safety reference e = a + beta (a - b), streamed.
 *
 * The plan (planner.h) follows the aligned checkpoint shard by shard and tensor by tensor in
 * file order; each target unit holds the same rows of the aligned and the base tensor, every
 * other tensor is copied from the aligned checkpoint unchanged. Results are computed straight
 * into the writer's buffers (no intermediate copy of the output), and the output is written
 * in the aligned checkpoint's own layout: the same shard files, tensor order, metadata, index
 * and side files. Reads of the next units are in flight while a unit is computed and the
 * previous one written (stream depth >= 2, writer ring of 4 buffers).
 *
 * Arithmetic, per element, in f32 with no fused multiply-add (-ffp-contract=off):
 *   d = a - b;  m = (float)beta * d;  e = a + m;  stored in the aligned dtype (RNE). */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/params.h"
#include "../common/log.h"
#include "../common/ctx.h"
#include "../compute/convert.h"
#include "../compute/reference.h"
#include "../io/checkpoint.h"
#include "../io/file.h"
#include "../io/io_sink.h"
#include "../io/sidefiles.h"
#include "lora.h"
#include "../plan/planner.h"
#include "../plan/progress.h"
#include "realign_full.h"


/* After a kernel saw a non-finite input: the first one, named. */
static int report_nonfinite(nlsr_ctx *ctx, const nlsr_span *sa, const unsigned char *a,
                            const nlsr_span *sb, const unsigned char *b, uint64_t at, size_t n)
{
    for (int which = 0; which < 2; which++) {
        const nlsr_span *sp = which ? sb : sa;
        const unsigned char *p = which ? b : a;
        nlsr_dtype t = sp->ck->t[sp->tensor].t->dtype;
        for (size_t i = 0; i < n; i++) {
            float f;
            nlsr_to_f32(t, p + i * nlsr_dtype_size(t), &f, 1);
            if (!isfinite(f))
                return nlsr_fail(&ctx->err, NLSR_E_VALUE,
                                 "%s: tensor '%.200s' element %llu is %g: target tensors must be "
                                 "finite",
                                 sp->ck->shards[sp->ck->t[sp->tensor].shard]->path,
                                 sp->ck->t[sp->tensor].t->name,
                                 (unsigned long long)(sp->first + at + i), (double)f);
        }
    }
    return nlsr_fail(&ctx->err, NLSR_E_VALUE, "non-finite value in a target tensor");
}

typedef struct amp_run {
    nlsr_ctx *ctx;
    const nlsr_plan *plan;
    const nlsr_ckpt *al;
    nlsr_sink *sink;
    const char *dir;
    long cur;              /* output shard open in the sink, -1 none */
    float beta;
} amp_run;

static int open_shard(amp_run *R, uint32_t s)
{
    char *hdr = NULL;
    size_t hlen = 0;
    uint64_t ds = 0;
    NLSR_FORWARD(nlsr_plan_shard_header(R->ctx, R->al, s, &hdr, &hlen, &ds));
    char *path = nlsr_path_join(R->dir, R->al->shard_names[s]);
    int rc = path ? 0 : nlsr_fail(&R->ctx->err, -ENOMEM, "out of memory");
    if (rc == 0) rc = nlsr_sink_begin(R->sink, path, R->plan->out_size[s]);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (rc == 0) rc = nlsr_sink_write(R->sink, len8, 8);
    if (rc == 0) rc = nlsr_sink_write(R->sink, hdr, hlen);
    free(path);
    free(hdr);
    if (rc == 0) R->cur = s;
    return rc;
}

/* Finishes the open shard and every shard before `s` that no unit visits (headers only:
 * shards holding nothing but empty tensors), then opens `s` (unless it is past the end). */
static int advance_to(amp_run *R, long s)
{
    while (R->cur < s) {
        if (R->cur >= 0) NLSR_FORWARD(nlsr_sink_end(R->sink));
        long next = R->cur + 1;
        R->cur = next;
        if (next >= (long)R->al->nshards) break;
        NLSR_FORWARD(open_shard(R, (uint32_t)next));
        if (next == s) break;
    }
    return 0;
}

static int do_target(amp_run *R, const nlsr_unit *u, const unsigned char *const *data)
{
    const nlsr_plan *P = R->plan;
    const nlsr_span *sa = &u->span[P->span_of[1]], *sb = &u->span[P->span_of[0]];
    const unsigned char *a = data[P->span_of[1]], *b = data[P->span_of[0]];
    nlsr_dtype da = sa->ck->t[sa->tensor].t->dtype, db = sb->ck->t[sb->tensor].t->dtype;
    size_t ea = nlsr_dtype_size(da), eb = nlsr_dtype_size(db);
    int fast = da == NLSR_DTYPE_BF16 && db == NLSR_DTYPE_BF16;
    uint64_t n = sa->count;
    for (uint64_t at = 0; at < n;) {
        unsigned char *o;
        size_t avail;
        NLSR_FORWARD(nlsr_sink_reserve(R->sink, &o, &avail));
        size_t m = avail / ea;
        unsigned char one[8];
        int straddle = m == 0; /* an element across two writer buffers: stage it */
        if (straddle) {
            m = 1;
            o = one;
        }
        if (m > n - at) m = (size_t)(n - at);
        uint32_t bad = fast ? nlsr_reference_bf16(a + at * ea, b + at * eb, o, m, R->beta)
                            : nlsr_reference_any(da, a + at * ea, db, b + at * eb, da, o, m, R->beta);
        if (bad) return report_nonfinite(R->ctx, sa, a + at * ea, sb, b + at * eb, at, m);
        if (straddle) NLSR_FORWARD(nlsr_sink_write(R->sink, one, ea));
        else NLSR_FORWARD(nlsr_sink_commit(R->sink, m * ea));
        at += m;
    }
    return 0;
}

static int run_plan(amp_run *R)
{
    nlsr_ctx *ctx = R->ctx;
    const nlsr_plan *P = R->plan;
    nlsr_stream *st = NULL;
    /* One arena for the writer's and the stream's rings, charged once. */
    nlsr_arena ar;
    int rc = nlsr_arena_init(ctx, &ar, P->sink_mem + P->stream_mem, "amplify buffers");
    void *wmem = rc == 0 ? nlsr_arena_take(&ar, P->sink_mem) : NULL;
    void *rmem = rc == 0 ? nlsr_arena_take(&ar, P->stream_mem) : NULL;
    if (rc == 0)
        rc = nlsr_sink_create_in(ctx, ctx->io_kind, P->sink_chunk, P->sink_nbuf, wmem, &R->sink);
    if (rc == 0)
        rc = nlsr_stream_open_in(ctx, P->units, P->nunits, P->depth, rmem, (size_t)P->stream_mem,
                                 &st);
    /* Bytes read and written together: the plan knows both. */
    uint64_t total = P->write_bytes;
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) total += P->read_bytes[k];
    if (rc == 0) nlsr_phase_begin(ctx, "amplify", NLSR_PHASE_OWN, total, P->nunits);
    const nlsr_unit *u;
    const unsigned char *const *data;
    while (rc == 0 && (rc = nlsr_stream_next(st, &u, &data)) == 1) {
        rc = 0;
        const nlsr_plan_unit *in = &P->info[u->tag];
        rc = advance_to(R, in->shard);
        if (rc < 0) break;
        uint64_t moved = 0;
        if (in->kind == NLSR_PLAN_TARGET) {
            rc = do_target(R, u, data);
            const nlsr_span *sa = &u->span[P->span_of[1]];
            moved = nlsr_span_bytes(sa) * 2 + nlsr_span_bytes(&u->span[P->span_of[0]]);
        } else {
            for (int k = 0; k < u->nspans && rc == 0; k++) {
                uint64_t nb = nlsr_span_bytes(&u->span[k]);
                rc = nlsr_sink_write(R->sink, data[k], (size_t)nb);
                moved += 2 * nb;
            }
        }
        nlsr_phase_add(ctx, moved);
        nlsr_phase_units(ctx, 1);
    }
    if (rc == 0) rc = advance_to(R, (long)R->al->nshards);
    if (rc == 0) nlsr_phase_end(ctx);
    if (st) ctx->io_used = nlsr_stream_backend(st);
    nlsr_stream_close(st);
    nlsr_sink_free(R->sink);
    R->sink = NULL;
    nlsr_arena_free(&ar);
    return rc;
}

static int amplify_full(nlsr_ctx *ctx, const nlsr_ckpt *bk, const nlsr_ckpt *ak,
                        const char *out_dir, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    NLSR_FORWARD(nlsr_full_check_sources(ctx, bk, ak, 0, p));
    /* What the output folder will hold beside the weights (src/io/sidefiles.h). */
    nlsr_sidefiles sf;
    NLSR_FORWARD(nlsr_sidefiles_load(ctx, ak, p->drop_other_weights, 0, &sf));
    nlsr_plan plan;
    int rc = nlsr_plan_amplify(ctx, bk, ak, p, &plan);
    if (rc < 0) {
        nlsr_sidefiles_free(&sf);
        return rc;
    }
    char *tmp = NULL;
    rc = nlsr_outdir_begin(ctx, out_dir, p->force, &tmp);
    if (rc == 0) {
        amp_run R = {ctx, &plan, ak, NULL, tmp, -1, (float)p->beta};
        rc = run_plan(&R);
    }
    /* Index, config.json, tokenizer files ...: the aligned folder's, unchanged. */
    if (rc == 0) rc = nlsr_sidefiles_copy(ctx, ak, tmp, p->drop_other_weights, &sf);
    if (rc == 0) rc = nlsr_outdir_commit(ctx, tmp, out_dir, p->force);
    if (rc < 0) nlsr_outdir_abort(tmp);
    free(tmp);
    nlsr_plan_free(&plan);
    nlsr_sidefiles_free(&sf);
    return rc;
}

static int amplify_job(nlsr_ctx *ctx, const char *base, const char *aligned, const char *out_dir,
                 const nlsr_realign_params *params)
{
    nlsr_err *e = &ctx->err;
    nlsr_realign_params p = params ? *params : NLSR_REALIGN_PARAMS_DEFAULT;
    NLSR_FAIL_IF(!aligned || !out_dir, e, NLSR_E_USAGE, "amplify needs an aligned checkpoint "
                 "and an output folder");
    const char *inputs[2] = {base, aligned};
    NLSR_FORWARD(nlsr_outputs_check(ctx, out_dir, NLSR_OUT_DIR, &p, inputs, 2));
    nlsr_ckpt *ak = NULL, *bk = NULL;
    int rc = nlsr_ckpt_open(ctx, aligned, &ak);
    if (rc == 0 && base) rc = nlsr_ckpt_open(ctx, base, &bk);
    if (rc < 0) goto done;
    if (ak->kind == NLSR_CKPT_PEFT) {
        /* LoRA: the base is the zero adapter (METHOD.md), so only the aligned adapter counts. */
        if (bk && bk->kind == NLSR_CKPT_PEFT) {
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s: a LoRA safety reference is built from the aligned adapter alone "
                           "(the base is the zero adapter); leave --base out",
                           base);
            goto done;
        }
        rc = nlsr_lora_amplify(ctx, ak, out_dir, &p);
        goto done;
    }
    if (!bk) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "%s: amplifying a full checkpoint needs --base", aligned);
        goto done;
    }
    if (bk->kind != NLSR_CKPT_FULL) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s is a PEFT adapter but %s is a full checkpoint",
                       base, aligned);
        goto done;
    }
    rc = amplify_full(ctx, bk, ak, out_dir, &p);
done:
    nlsr_ckpt_free(bk);
    nlsr_ckpt_free(ak);
    return rc;
}

int nlsr_amplify(nlsr_ctx *ctx, const char *base, const char *aligned, const char *out_dir,
                 const nlsr_realign_params *params)
{
    int entered = nlsr_job_enter(ctx, "amplify");
    int rc = amplify_job(ctx, base, aligned, out_dir, params);
    nlsr_job_leave(ctx, entered);
    return rc;
}
