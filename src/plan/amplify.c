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

#include "../common/ctx.h"
#include "../compute/convert.h"
#include "../io/checkpoint.h"
#include "../io/file.h"
#include "../io/io_sink.h"
#include "lora.h"
#include "planner.h"
#include "progress.h"
#include "realign_full.h"

/* Hot loops: -O3's vectorizer (the build's -O2 uses GCC's very cheap cost model, which leaves
 * these loops scalar) and an AVX2 clone chosen at load time where the CPU has it. No FMA is
 * enabled either way (and -ffp-contract=off holds), so results are the same bits everywhere;
 * tests/test_amplify.c checks them against plain scalar code. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NLSR_NO_CLONES)
#define NLSR_HOT __attribute__((optimize("O3"), target_clones("avx2", "default")))
#else
#define NLSR_HOT
#endif

/* Elements per step of the generic kernel (f32 staging on the stack). */
#define STEP 1024u

static inline float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* nlsr_f32_to_bf16, inlined and branch-free so the compiler can vectorize the loop. Checked
 * against the compute layer's function in tests/test_amplify.c. */
static inline uint16_t rne_bf16(uint32_t u)
{
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t q = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? q : r);
}

/* The common case, BF16 from BF16 into BF16. Returns nonzero if any input is not finite (the
 * caller then finds which). */
NLSR_HOT static uint32_t amp_bf16(const unsigned char *a, const unsigned char *b, unsigned char *o,
                         size_t n, float beta)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t ha, hb;
        memcpy(&ha, a + 2 * i, 2);
        memcpy(&hb, b + 2 * i, 2);
        uint32_t ua = (uint32_t)ha << 16, ub = (uint32_t)hb << 16;
        bad |= ((ua & 0x7F800000u) == 0x7F800000u) | ((ub & 0x7F800000u) == 0x7F800000u);
        float fa = f32_of(ua), fb = f32_of(ub);
        float d = fa - fb;
        float m = beta * d;
        float e = fa + m;
        uint16_t he = rne_bf16(bits_of(e));
        memcpy(o + 2 * i, &he, 2);
    }
    return bad;
}

/* Any float dtypes in, a writable float dtype out. */
NLSR_HOT static uint32_t amp_generic(nlsr_dtype da, const unsigned char *a, nlsr_dtype db,
                            const unsigned char *b, nlsr_dtype dout, unsigned char *o, size_t n,
                            float beta)
{
    float fa[STEP], fb[STEP];
    size_t sa = nlsr_dtype_size(da), sb = nlsr_dtype_size(db), so = nlsr_dtype_size(dout);
    uint32_t bad = 0;
    for (size_t at = 0; at < n; at += STEP) {
        size_t m = n - at < STEP ? n - at : STEP;
        nlsr_to_f32(da, a + at * sa, fa, m);
        nlsr_to_f32(db, b + at * sb, fb, m);
        for (size_t i = 0; i < m; i++) {
            bad |= !isfinite(fa[i]) | !isfinite(fb[i]);
            float d = fa[i] - fb[i];
            float mm = beta * d;
            fa[i] = fa[i] + mm;
        }
        if (dout == NLSR_DTYPE_BF16) {
            for (size_t i = 0; i < m; i++) {
                uint16_t h = rne_bf16(bits_of(fa[i]));
                memcpy(o + (at + i) * 2, &h, 2);
            }
        } else {
            nlsr_from_f32(dout, fa, o + at * so, m);
        }
    }
    return bad;
}

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
        uint32_t bad = fast ? amp_bf16(a + at * ea, b + at * eb, o, m, R->beta)
                            : amp_generic(da, a + at * ea, db, b + at * eb, da, o, m, R->beta);
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
    nlsr_progress pr;
    uint64_t total = P->write_bytes;
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) total += P->read_bytes[k];
    nlsr_progress_start(&pr, ctx, "amplify", total);
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
        nlsr_progress_add(&pr, moved);
    }
    if (rc == 0) rc = advance_to(R, (long)R->al->nshards);
    nlsr_progress_end(&pr);
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
    NLSR_FAIL_IF(!isfinite(p->beta), e, NLSR_E_USAGE, "beta must be finite (got %g)", p->beta);
    NLSR_FORWARD(nlsr_full_check_sources(ctx, bk, ak, 0, p));
    nlsr_plan plan;
    NLSR_FORWARD(nlsr_plan_amplify(ctx, bk, ak, p, &plan));
    char *tmp = NULL;
    int rc = nlsr_outdir_begin(ctx, out_dir, p->force, &tmp);
    if (rc == 0) {
        amp_run R = {ctx, &plan, ak, NULL, tmp, -1, (float)p->beta};
        rc = run_plan(&R);
    }
    /* Index, config.json, tokenizer files ...: the aligned folder's, unchanged. */
    if (rc == 0 && nlsr_is_dir(ak->path) == 1)
        rc = nlsr_copy_side_files(ctx, ak->dir, tmp, ak->shard_names, ak->nshards);
    if (rc == 0) rc = nlsr_outdir_commit(ctx, tmp, out_dir, p->force);
    if (rc < 0) nlsr_outdir_abort(tmp);
    free(tmp);
    nlsr_plan_free(&plan);
    return rc;
}

int nlsr_amplify(nlsr_ctx *ctx, const char *base, const char *aligned, const char *out_dir,
                 const nlsr_realign_params *params)
{
    nlsr_err *e = &ctx->err;
    nlsr_realign_params p = params ? *params : NLSR_REALIGN_PARAMS_DEFAULT;
    NLSR_FAIL_IF(!aligned || !out_dir, e, NLSR_E_USAGE, "amplify needs an aligned checkpoint "
                 "and an output folder");
    const char *inputs[2] = {base, aligned};
    NLSR_FORWARD(nlsr_out_check_inputs(ctx, out_dir, inputs, 2));
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
