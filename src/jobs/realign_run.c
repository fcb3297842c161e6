/* SPDX-License-Identifier: Apache-2.0 */
/* `run` for full weights in one streamed pass (realign_run.h): no patch file, each target
 * module read once from base, aligned and fine-tuned, the fine-tune read once more while the
 * output is written. The arithmetic is realign_full.c's (prepare + apply), value for value and
 * in the same order, so that both give the same bits; tests/test_realign_full.c compares them. */
#define _GNU_SOURCE
#include "../common/params.h"
#include "realign_run.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/testhook.h"
#include "../compute/convert.h"
#include "../compute/kth.h"
#include "../compute/mask.h"
#include "../compute/reference.h"
#include "../compute/selection.h"
#include "../compute/similarity.h"
#include "../io/file.h"
#include "../io/io.h"
#include "../io/journal.h"
#include "../io/sidefiles.h"
#include "../plan/progress.h"
#include "../io/stream.h"
#include "../plan/targets.h"

/* Elements computed at a time: the f32 staging of a chunk stays in the L2 cache. */
#define CH 4096u
/* Chunks between two polls of the read stream (about 50 us of compute): the next module's
 * reads are kept queued while this one is computed. */
#define POLL_CHUNKS 8u
/* Phase B: elements per streamed unit of a patched tensor (a multiple of 64, so that a unit
 * starts on a word of the mask bitmap), and units in flight. */
#define OUT_UNIT (1u << 22)
#define OUT_DEPTH 3u
/* Bytes of the fallback copy buffer (copy_file_range refused). */
#define COPY_BUF (1u << 20)

typedef struct rmod {
    size_t is, ib, it;           /* tensor indexes in src, base, ft */
    const st_tensor *ts, *tb, *tt;
    nlsr_dtype adt, bdt, tdt;
    size_t asz, bsz, tsz;
    uint64_t n, k;
    float thr;
    uint64_t mask_count;
    nlsr_cos_sums sums;
    nlsr_step1_mod s1;           /* step 1's inputs (realign_full.h) */
    int fast;                    /* BF16 aligned and base: the fused kernels (reference.h) */
    int store;                   /* mask and values kept in memory for phase B */
    uint64_t *bits;              /* mask bitmap, ceil(n / 64) words (in the arena) */
    unsigned char *vals;         /* transplanted values in ft's dtype, mask order */
    uint64_t vpos;               /* phase B: values used so far */
    /* Row blocks (the module does not fit the budget whole): elements per block (a multiple
     * of CH; 0: the module is read whole), and pass 2's state between blocks. */
    uint64_t blk;
    uint32_t bucket;
    uint64_t below, nc, got;
} rmod;

typedef struct runner {
    nlsr_ctx *ctx;
    const nlsr_realign_params *p;
    const nlsr_ckpt *base, *src, *ft;
    int is_ref;
    rmod *m;
    size_t nm;
    nlsr_stream *s;              /* the stream being read, polled while computing */
    unsigned poll_tick;
    /* scratch, CH elements each, one allocation */
    float *fa, *fb, *fe, *fs, *tf, *tm, *em, *bm;
    unsigned char *es, *conv;
    uint32_t *idx;
    uint64_t *words;             /* a chunk's mask bitmap */
    unsigned char *scratch;
    size_t scratch_bytes;
    uint64_t *hist, *hist2;
    float *cands;
    uint64_t cand_cap;
    struct lanes *lanes;         /* the second compute thread, NULL if none */
    unsigned char *side;         /* pass 3's second lane: its pairs and values (mask_split) */
    size_t side_bytes;
    double mask_at;              /* pass 3: the first lane's share of a module (mask_split) */
    unsigned char *arena;        /* stored masks and values */
    uint64_t arena_bytes;
    /* In place: the content fingerprints of base and source (XXH64 of their target tensors'
     * bytes in module order, as prepare computes them for the patch header), and the memory
     * left aside for the journal. */
    int hash;
    nlsr_xxh64_state fp_base, fp_src;
    uint64_t reserve;
    /* Row blocks: the plan's flag, its units' largest bytes, what their tables take (charged),
     * the module hashes in flight (in place) and phase B's unit in elements. */
    int rows, rows_lanes;
    uint64_t rows_tables, rows_maxu;
    nlsr_xxh64_state hs_src, hs_base;
    uint64_t out_unit;
} runner;

static const char *shard_path(const nlsr_ckpt *ck, size_t i)
{
    return ck->shards[ck->t[i].shard]->path;
}

static int nonfinite_fail(nlsr_ctx *ctx, const char *file, const char *tensor, uint64_t el,
                          float v, const char *what)
{
    return nlsr_fail(&ctx->err, NLSR_E_VALUE, "%s: tensor '%.200s': element %" PRIu64 " is %g%s",
                     file, tensor, el, (double)v, what);
}

static int poll_stream(runner *R)
{
    if (!R->s || ++R->poll_tick % POLL_CHUNKS) return 0;
    return nlsr_stream_poll(R->s);
}

/* Step 1 and the score for one chunk, as prepare computes them (nlsr_full_step1). */
static int step1(runner *R, const rmod *M, uint64_t first, size_t cnt, const unsigned char *araw,
                 const unsigned char *braw, int validate)
{
    nlsr_step1_buf b = {R->fa, R->fb, R->fe, R->fs, R->es};
    return nlsr_full_step1(R->ctx, &M->s1, first, cnt, araw, braw, validate, &b);
}

/* The scores fs of one chunk (full: also fe, fb and es), the BF16 kernels where they apply.
 * No validation: pass 1 has done it. */
static int scores(runner *R, const rmod *M, uint64_t first, size_t cnt, const unsigned char *a,
                  const unsigned char *b, int full)
{
    if (!M->fast) return step1(R, M, first, cnt, a, b, 0);
    if (full) nlsr_step1_bf16(a, b, (float)R->p->beta, R->fs, R->fe, R->fb, (uint16_t *)(void *)R->es, cnt);
    else nlsr_score_bf16(a, b, (float)R->p->beta, R->fs, cnt);
    return 0;
}

/* Positions j (ascending) with s[j] > thr, into idx; returns how many. The bitmap goes to
 * words (ceil(n / 64) of them). */
static size_t mask_positions(const float *s, size_t n, float thr, uint64_t *words, uint32_t *idx)
{
    nlsr_mask_words(s, n, thr, words);
    return nlsr_mask_indices(words, n, idx);
}

/* Pass 1 over elements [lo, hi) of a module (a, b, t point at element lo), on this thread:
 * validation (naming the first bad value), the score histogram (added to R->hist, which the
 * caller zeroes at the module's start). */
static int pass_hist_serial(runner *R, rmod *M, const unsigned char *a, const unsigned char *b,
                            const unsigned char *t, uint64_t lo, uint64_t hi)
{
    for (uint64_t at = lo; at < hi; at += CH) {
        size_t cnt = (size_t)(hi - at < CH ? hi - at : CH);
        const unsigned char *ac = a + (at - lo) * M->asz, *bc = b + (at - lo) * M->bsz;
        const unsigned char *tc = t + (at - lo) * M->tsz;
        /* The fast kernel only says whether something is not finite; the generic one then
         * finds what and says so. */
        if (!M->fast || nlsr_score_bf16(ac, bc, (float)R->p->beta, R->fs, cnt))
            NLSR_FORWARD(step1(R, M, at, cnt, ac, bc, 1));
        nlsr_kth_hist_add(R->hist, R->fs, cnt);
        if (nlsr_any_nonfinite_raw(M->tdt, tc, cnt)) {
            nlsr_to_f32(M->tdt, tc, R->tf, cnt);
            size_t bad = nlsr_first_nonfinite_f32(R->tf, cnt);
            if (bad < cnt)
                return nonfinite_fail(R->ctx, shard_path(R->ft, M->it), M->tt->name, at + bad,
                                      R->tf[bad], " in finetuned");
        }
        NLSR_FORWARD(poll_stream(R));
    }
    return 0;
}


/* ---- two lanes: passes 1 and 2 of BF16 modules split in halves ------------------------- */

/* The second half runs on a worker thread with its own scratch. The halves' histograms add
 * up to the whole's and each half's candidates go to their own range of the array, so the
 * results are those of one thread. Pass 3 of a whole module too (mask_split): the second
 * lane writes its words of the bitmap in place, and its values and each masked element's f32
 * pair (t - b, e - b) to side buffers, which the first lane appends after its own half (the
 * values copied, the pairs added to the cosine's sums in element order), so that the sums are
 * those of one thread. */
typedef struct lane {
    float *fs;                   /* CH scores */
    uint64_t *hist, *hist2;
    /* pass 3's scratch, CH elements each, over hist2 (the first lane uses the runner's) */
    float *fe, *fb, *em, *bm, *tm;
    uint16_t *es;
    unsigned char *conv;
    uint32_t *idx;
    uint64_t *words;
    /* the job */
    int pass;                    /* 1: histogram, 2: candidates, 3: the fingerprints, 4: a row
                                  * block's fingerprints, 5: pass 3's second half, 6: phase B's
                                  * merge of a kept patch, second half */
    const rmod *M;
    const unsigned char *a, *b, *t; /* element `off` of the module */
    uint64_t off, lo, hi;
    uint32_t bucket;
    float *cands;                /* pass 2 in memory: this lane's range of the array */
    uint64_t cap;
    float *xy;                   /* pass 5: room for cap pairs and (kept) cap values */
    unsigned char *vals;
    int hash;                    /* pass 5: then hash the module (in place: the fingerprints) */
    unsigned char *out;          /* pass 6: elements [lo, hi) merged here from t, using the */
    uint64_t vpos;               /* kept values from this one on; then the values used so far */
    double secs;                 /* pass 5: the lane's seconds */
    /* results */
    int bad;                     /* a value not finite (pass 1), more candidates than cap, or
                                  * (pass 5) more masked elements than cap or a value that the
                                  * fine-tune's dtype cannot hold */
    uint64_t got;
} lane;

struct lanes {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job, done, stop;
    runner *R;
    lane L[2];
    unsigned char *mem;
    size_t mem_bytes;
};

static size_t lane_mem(void)
{
    return (size_t)CH * 4 + 2 * NLSR_KTH_BUCKETS * 8;
}

/* Pass 3's scratch (5 f32 arrays, the bitmap words, positions, converted values of 8 bytes at
 * most, e_s's BF16 bits) lies over hist2, which only pass 2 uses: no memory more. */
_Static_assert((size_t)CH * (5 * 4 + 4 + 8 + 2) + CH / 8 <= NLSR_KTH_BUCKETS * 8,
               "pass 3's scratch fits in a lane's second histogram");

/* The fingerprints take each module's own hash of its source and base bytes, in module order
 * (docs/FORMAT.md "sources"), as prepare's patch header does. */
static void hash_module(runner *R, const rmod *M, const unsigned char *a, const unsigned char *b)
{
    nlsr_xxh64_state h;
    nlsr_xxh64_init(&h, 0);
    nlsr_full_fp_tensor_head(&h, M->ts);
    if (M->n) nlsr_xxh64_update(&h, a, M->n * M->asz);
    nlsr_full_fp_add_module(&R->fp_src, nlsr_xxh64_digest(&h));
    nlsr_xxh64_init(&h, 0);
    nlsr_full_fp_tensor_head(&h, M->tb);
    if (M->n) nlsr_xxh64_update(&h, b, M->n * M->bsz);
    nlsr_full_fp_add_module(&R->fp_base, nlsr_xxh64_digest(&h));
}

/* A module read in row blocks is hashed block by block: hash_begin, hash_block for each in
 * order, hash_end; the same digests as hash_module. */
static void hash_begin(runner *R, const rmod *M)
{
    nlsr_xxh64_init(&R->hs_src, 0);
    nlsr_full_fp_tensor_head(&R->hs_src, M->ts);
    nlsr_xxh64_init(&R->hs_base, 0);
    nlsr_full_fp_tensor_head(&R->hs_base, M->tb);
}

static void hash_block(runner *R, const rmod *M, const unsigned char *a, const unsigned char *b,
                       uint64_t cnt)
{
    if (!cnt) return;
    nlsr_xxh64_update(&R->hs_src, a, cnt * M->asz);
    nlsr_xxh64_update(&R->hs_base, b, cnt * M->bsz);
}

static void hash_end(runner *R)
{
    nlsr_full_fp_add_module(&R->fp_src, nlsr_xxh64_digest(&R->hs_src));
    nlsr_full_fp_add_module(&R->fp_base, nlsr_xxh64_digest(&R->hs_base));
}

static void mask_half(runner *R, lane *L);
static uint64_t merge_kept_range(const rmod *M, uint64_t vpos, uint64_t first, size_t cnt,
                                 const unsigned char *src, unsigned char *out);

static void lane_run(runner *R, lane *L, int main_thread)
{
    const rmod *M = L->M;
    float beta = (float)R->p->beta;
    L->bad = 0;
    L->got = 0;
    if (L->pass == 3) {
        hash_module(R, M, L->a, L->b);
        return;
    }
    if (L->pass == 5) {
        double w0 = nlsr_now();
        mask_half(R, L);
        if (L->hash) hash_module(R, M, L->a, L->b);
        L->secs = nlsr_now() - w0;
        return;
    }
    if (L->pass == 6) {
        L->vpos = merge_kept_range(M, L->vpos, L->lo, (size_t)(L->hi - L->lo), L->t, L->out);
        return;
    }
    if (L->pass == 4) { /* a row block's bytes into the module's hashes */
        hash_block(R, M, L->a, L->b, L->hi - L->lo);
        return;
    }
    if (L->pass == 1) memset(L->hist, 0, NLSR_KTH_BUCKETS * sizeof *L->hist);
    for (uint64_t at = L->lo; at < L->hi; at += CH) {
        size_t cnt = (size_t)(L->hi - at < CH ? L->hi - at : CH);
        uint64_t r = at - L->off;
        uint32_t bad = nlsr_score_bf16(L->a + r * 2, L->b + r * 2, beta, L->fs, cnt);
        if (L->pass == 1) {
            if (bad || nlsr_any_nonfinite_raw(M->tdt, L->t + r * M->tsz, cnt)) {
                L->bad = 1;
                return;
            }
            nlsr_kth_hist_add(L->hist, L->fs, cnt);
        } else if (L->cands) {
            if (L->got + cnt <= L->cap) {
                L->got += nlsr_bucket_collect(L->fs, cnt, L->bucket, L->cands + L->got);
            } else {
                size_t c = nlsr_bucket_collect(L->fs, cnt, L->bucket, NULL);
                if (L->got + c > L->cap) {
                    L->bad = 1;
                    return;
                }
                L->got += nlsr_bucket_collect(L->fs, cnt, L->bucket, L->cands + L->got);
            }
        } else {
            L->got += nlsr_bucket_hist_low(L->fs, cnt, L->bucket, L->hist2);
        }
        /* Only the thread that owns the stream may poll it; the poll's errors surface at the
         * next nlsr_stream_next. */
        if (main_thread) (void)poll_stream(R);
    }
}

static void *lane_worker(void *arg)
{
    struct lanes *W = arg;
    pthread_mutex_lock(&W->mu);
    for (;;) {
        while (!W->job && !W->stop) pthread_cond_wait(&W->cv, &W->mu);
        if (W->stop) break;
        pthread_mutex_unlock(&W->mu);
        lane_run(W->R, &W->L[1], 0);
        pthread_mutex_lock(&W->mu);
        W->job = 0;
        W->done = 1;
        pthread_cond_broadcast(&W->cv);
    }
    pthread_mutex_unlock(&W->mu);
    return NULL;
}

/* Starts the worker; without one (a single CPU, or no thread), everything runs here. */
static void lanes_start(runner *R)
{
    nlsr_ctx *ctx = R->ctx;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 2 || getenv("NLSR_RUN_ONE_THREAD")) return;
    R->mask_at = 0.5;
    struct lanes *W = calloc(1, sizeof *W);
    if (!W) return;
    W->R = R;
    W->mem_bytes = 2 * lane_mem();
    nlsr_err ignored; /* no room: one thread, and nothing to report */
    memset(&ignored, 0, sizeof ignored);
    if (nlsr_budget_alloc(&ctx->budget, W->mem_bytes, "second compute lane", (void **)&W->mem,
                          &ignored) < 0) {
        free(W);
        return;
    }
    for (int i = 0; i < 2; i++) {
        unsigned char *p = W->mem + (size_t)i * lane_mem();
        lane *L = &W->L[i];
        L->fs = (float *)(void *)p;
        L->hist = (uint64_t *)(void *)(p + (size_t)CH * 4);
        L->hist2 = L->hist + NLSR_KTH_BUCKETS;
        float *f = (float *)(void *)L->hist2;
        L->fe = f;
        L->fb = f + CH;
        L->em = f + 2 * CH;
        L->bm = f + 3 * CH;
        L->tm = f + 4 * CH;
        L->words = (uint64_t *)(void *)(f + 5 * CH);
        L->idx = (uint32_t *)(void *)(L->words + CH / 64);
        L->conv = (unsigned char *)(L->idx + CH);
        L->es = (uint16_t *)(void *)(L->conv + (size_t)CH * 8);
    }
    pthread_mutex_init(&W->mu, NULL);
    pthread_cond_init(&W->cv, NULL);
    if (pthread_create(&W->th, NULL, lane_worker, W) != 0) {
        pthread_mutex_destroy(&W->mu);
        pthread_cond_destroy(&W->cv);
        nlsr_budget_free(&ctx->budget, W->mem, W->mem_bytes);
        free(W);
        return;
    }
    R->lanes = W;
}

static void lanes_stop(runner *R)
{
    struct lanes *W = R->lanes;
    if (!W) return;
    pthread_mutex_lock(&W->mu);
    W->stop = 1;
    pthread_cond_broadcast(&W->cv);
    pthread_mutex_unlock(&W->mu);
    pthread_join(W->th, NULL);
    pthread_mutex_destroy(&W->mu);
    pthread_cond_destroy(&W->cv);
    nlsr_budget_free(&R->ctx->budget, W->mem, W->mem_bytes);
    free(W);
    R->lanes = NULL;
}

/* Starts L[1] on the worker. */
static void lanes_post(runner *R)
{
    struct lanes *W = R->lanes;
    pthread_mutex_lock(&W->mu);
    W->done = 0;
    W->job = 1;
    pthread_cond_broadcast(&W->cv);
    pthread_mutex_unlock(&W->mu);
}

static void lanes_wait(runner *R)
{
    struct lanes *W = R->lanes;
    pthread_mutex_lock(&W->mu);
    while (!W->done) pthread_cond_wait(&W->cv, &W->mu);
    pthread_mutex_unlock(&W->mu);
}

/* Runs L[0] here and L[1] on the worker, and waits for both. */
static void lanes_run(runner *R)
{
    lanes_post(R);
    lane_run(R, &R->lanes->L[0], 1);
    lanes_wait(R);
}

/* The halves: the first ends on a chunk boundary. */
static int lanes_usable(const runner *R, const rmod *M, uint64_t lo, uint64_t hi)
{
    /* A row block needs only a chunk per half (its module is large); a module whole, four. */
    return R->lanes && M->fast && hi - lo >= (M->blk ? 2 : 4) * (uint64_t)CH;
}

/* Elements [lo, hi) of M (a, b, t point at element lo) in two halves. */
static void lanes_set(runner *R, int pass, const rmod *M, const unsigned char *a,
                      const unsigned char *b, const unsigned char *t, uint64_t lo, uint64_t hi)
{
    uint64_t h = lo + (hi - lo) / 2 / CH * CH;
    for (int i = 0; i < 2; i++) {
        lane *L = &R->lanes->L[i];
        L->pass = pass;
        L->M = M;
        L->a = a;
        L->b = b;
        L->t = t;
        L->off = lo;
        L->lo = i ? h : lo;
        L->hi = i ? hi : h;
    }
}

/* Pass 1. A value that is not finite makes the pass run again on this thread, which finds the
 * first one and names it. */
static int pass_hist(runner *R, rmod *M, const unsigned char *a, const unsigned char *b,
                     const unsigned char *t, uint64_t lo, uint64_t hi)
{
    if (!lanes_usable(R, M, lo, hi)) return pass_hist_serial(R, M, a, b, t, lo, hi);
    lanes_set(R, 1, M, a, b, t, lo, hi);
    lanes_run(R);
    lane *L = R->lanes->L;
    if (L[0].bad || L[1].bad) {
        NLSR_FORWARD(pass_hist_serial(R, M, a, b, t, lo, hi));
        return nlsr_fail(&R->ctx->err, NLSR_E_VALUE, "tensor '%.200s': a value is not finite",
                         M->ts->name);
    }
    for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++) R->hist[i] += L[0].hist[i] + L[1].hist[i];
    return 0;
}

/* Pass 2 in two lanes; returns 1 when done here, 0 when the caller must do it on one thread. */
static int pass_cands_lanes(runner *R, rmod *M, const unsigned char *a, const unsigned char *b,
                            uint32_t bucket, int in_mem, uint64_t *got)
{
    if (!lanes_usable(R, M, 0, M->n)) return 0;
    lane *L = R->lanes->L;
    uint64_t c0 = L[0].hist[bucket];
    /* Each lane writes its own range of the array: the ranges must tile it. */
    if (in_mem && c0 + L[1].hist[bucket] != R->hist[bucket]) return 0;
    lanes_set(R, 2, M, a, b, NULL, 0, M->n);
    for (int i = 0; i < 2; i++) {
        L[i].bucket = bucket;
        L[i].cands = in_mem ? R->cands + (i ? c0 : 0) : NULL;
        L[i].cap = in_mem ? L[i].hist[bucket] : 0;
        if (!in_mem) memset(L[i].hist2, 0, NLSR_KTH_BUCKETS * sizeof *L[i].hist2);
    }
    lanes_run(R);
    *got = L[0].got + L[1].got;
    if (L[0].bad || L[1].bad || L[0].got != L[0].cap || L[1].got != L[1].cap) {
        if (in_mem) *got = UINT64_MAX; /* caught by the caller's count check */
    }
    if (!in_mem)
        for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++)
            R->hist2[i] = L[0].hist2[i] + L[1].hist2[i];
    return 1;
}

/* The exact k-th smallest score: the candidates of the bucket holding rank k, selected in
 * memory, or (too many for the budget) a histogram of their low 16 bits. */
static int pass_threshold(runner *R, rmod *M, const unsigned char *a, const unsigned char *b)
{
    nlsr_ctx *ctx = R->ctx;
    uint32_t bucket;
    uint64_t below;
    uint64_t total = 0;
    for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++) total += R->hist[i];
    NLSR_FAIL_IF(total != M->n, &ctx->err, NLSR_E_FORMAT,
                 "tensor '%.200s': %" PRIu64 " scores counted for %" PRIu64 " elements",
                 M->ts->name, total, M->n);
    nlsr_kth_hist_pick(R->hist, M->k, &bucket, &below);
    uint64_t nc = R->hist[bucket];
    int in_mem = nc * sizeof(float) <= nlsr_budget_room(&ctx->budget) / 2;
    if (in_mem && nc > R->cand_cap) {
        nlsr_budget_free(&ctx->budget, R->cands, R->cand_cap * sizeof(float));
        R->cands = NULL;
        R->cand_cap = 0;
        NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, (size_t)nc * sizeof(float),
                                       "threshold candidates", (void **)&R->cands, &ctx->err));
        R->cand_cap = nc;
    }
    if (!in_mem) memset(R->hist2, 0, NLSR_KTH_BUCKETS * sizeof *R->hist2);
    uint64_t got = 0;
    int done = pass_cands_lanes(R, M, a, b, bucket, in_mem, &got);
    for (uint64_t at = 0; at < M->n && !done; at += CH) {
        size_t cnt = (size_t)(M->n - at < CH ? M->n - at : CH);
        NLSR_FORWARD(scores(R, M, at, cnt, a + at * M->asz, b + at * M->bsz, 0));
        if (in_mem) {
            /* Room for a whole chunk past the count: a file changing under us is caught below
             * without writing out of bounds. */
            size_t c = nlsr_bucket_collect(R->fs, cnt, bucket, got + cnt <= nc ? R->cands + got
                                                                               : NULL);
            if (got + cnt > nc) {
                size_t w = 0;
                for (size_t j = 0; j < cnt && got + w < nc; j++)
                    if (nlsr_kth_bucket_of(R->fs[j]) == bucket) R->cands[got + w++] = R->fs[j];
            }
            got += c;
        } else {
            got += nlsr_bucket_hist_low(R->fs, cnt, bucket, R->hist2);
        }
        NLSR_FORWARD(poll_stream(R));
    }
    NLSR_FAIL_IF(got != nc, &ctx->err, NLSR_E_FORMAT,
                 "%s: tensor '%.200s' changed while it was read", R->src->path, M->ts->name);
    if (in_mem) {
        M->thr = nlsr_kth_inplace(R->cands, (size_t)nc, M->k - below);
    } else {
        uint32_t lo;
        uint64_t below2;
        nlsr_kth_hist_pick(R->hist2, M->k - below, &lo, &below2);
        uint32_t bits = bucket << 16 | lo;
        memcpy(&M->thr, &bits, 4);
    }
    return 0;
}

/* A transplant value that the fine-tune's dtype cannot hold (a reference finite in the aligned
 * dtype overflows an F16 fine-tune) fails the job. vals: m values of em[] stored in ft's dtype,
 * elements at + idx[i]. Only a dtype narrower than the source's can overflow. */
static int check_dest(runner *R, const rmod *M, uint64_t at, const unsigned char *vals, size_t m)
{
    if (M->tdt == M->adt || M->tdt == NLSR_DTYPE_F32 || M->tdt == NLSR_DTYPE_F64 ||
        !nlsr_any_nonfinite_raw(M->tdt, vals, m))
        return 0;
    size_t i = 0;
    for (; i + 1 < m; i++) {
        float x;
        nlsr_to_f32(M->tdt, vals + i * M->tsz, &x, 1);
        if (!isfinite(x)) break;
    }
    return nlsr_full_dest_overflow(R->ctx, shard_path(R->ft, M->it), M->tt->name,
                                   at + R->idx[i], R->em[i], M->tdt, M->s1.src_file);
}

/* Pass 3's gather for one chunk (both lanes): the m masked elements at idx, their fine-tune
 * values (raw in conv, as f32 in tm), e_s (em) and b (bm) from the chunk's fe and fb. */
static void gather_masked(const rmod *M, const uint32_t *idx, size_t m, const unsigned char *tc,
                          const float *fe, const float *fb, unsigned char *conv, float *em,
                          float *bm, float *tm)
{
    size_t tsz = M->tsz;
    for (size_t i = 0; i < m; i++) {
        uint32_t j = idx[i];
        memcpy(conv + i * tsz, tc + (size_t)j * tsz, tsz);
        em[i] = fe[j];
        bm[i] = fb[j];
    }
    nlsr_to_f32(M->tdt, conv, tm, m);
}

/* The mask (strictly above the threshold), the masked cosine's sums in element order (as
 * apply accumulates them), and, when stored, the bitmap and the values in ft's dtype. */
static int pass_mask(runner *R, rmod *M, const unsigned char *a, const unsigned char *b,
                     const unsigned char *t, uint64_t lo, uint64_t hi)
{
    /* Row blocks come in element order: the values continue where the last block stopped. */
    unsigned char *vals = M->store ? M->vals + M->mask_count * M->tsz : NULL;
    for (uint64_t at = lo; at < hi; at += CH) {
        size_t cnt = (size_t)(hi - at < CH ? hi - at : CH);
        uint64_t r = at - lo;
        NLSR_FORWARD(scores(R, M, at, cnt, a + r * M->asz, b + r * M->bsz, 1));
        /* The chunk starts on a word of the module's bitmap (CH is a multiple of 64). */
        uint64_t *words = M->store ? M->bits + at / 64 : R->words;
        size_t m = mask_positions(R->fs, cnt, M->thr, words, R->idx);
        const unsigned char *tc = t + r * M->tsz;
        gather_masked(M, R->idx, m, tc, R->fe, R->fb, R->conv, R->em, R->bm, R->tm);
        nlsr_cos_add_masked(&M->sums, R->tm, R->em, R->bm, m);
        if (M->store && m) {
            /* At most n - k scores lie above the k-th smallest: the room reserved. */
            NLSR_FAIL_IF(M->mask_count + m > M->n - M->k, &R->ctx->err, NLSR_E_FORMAT,
                         "tensor '%.200s': more than %" PRIu64 " elements above the threshold",
                         M->ts->name, M->n - M->k);
            nlsr_from_f32(M->tdt, R->em, vals, m);
            NLSR_FORWARD(check_dest(R, M, at, vals, m));
            vals += m * M->tsz;
        } else if (m && M->tdt != M->adt && M->tdt != NLSR_DTYPE_F32) {
            /* Checked here for every module, patched or not, so that the job fails before
             * anything is written and whatever the selection draws (as apply does). */
            nlsr_from_f32(M->tdt, R->em, R->conv, m);
            NLSR_FORWARD(check_dest(R, M, at, R->conv, m));
        }
        M->mask_count += m;
        NLSR_FORWARD(poll_stream(R));
    }
    return 0;
}

/* Pass 3 over the second lane's elements [L->lo, L->hi) of a whole BF16 module (L->a, b, t:
 * its element 0), pass_mask's arithmetic: the bitmap's words in place when kept, the values
 * (kept) and the cosine's pairs to the side buffers. Anything pass_mask would fail on, or more
 * masked elements than the room (a file changed under us), sets L->bad and stops: the caller
 * then runs pass 3 on one thread, which names the first bad element. */
static void mask_half(runner *R, lane *L)
{
    const rmod *M = L->M;
    size_t tsz = M->tsz;
    float beta = (float)R->p->beta;
    int narrow = M->tdt != M->adt && M->tdt != NLSR_DTYPE_F32 && M->tdt != NLSR_DTYPE_F64;
    for (uint64_t at = L->lo; at < L->hi; at += CH) {
        size_t cnt = (size_t)(L->hi - at < CH ? L->hi - at : CH);
        nlsr_step1_bf16(L->a + at * 2, L->b + at * 2, beta, L->fs, L->fe, L->fb, L->es, cnt);
        uint64_t *words = M->store ? M->bits + at / 64 : L->words;
        size_t m = mask_positions(L->fs, cnt, M->thr, words, L->idx);
        if (m > L->cap - L->got) {
            L->bad = 1;
            return;
        }
        const unsigned char *tc = L->t + at * tsz;
        gather_masked(M, L->idx, m, tc, L->fe, L->fb, L->conv, L->em, L->bm, L->tm);
        nlsr_cos_xy(L->tm, L->em, L->bm, L->xy + 2 * L->got, m);
        if (M->store || (m && narrow)) {
            unsigned char *v = M->store ? L->vals + L->got * tsz : L->conv;
            nlsr_from_f32(M->tdt, L->em, v, m);
            if (narrow && nlsr_any_nonfinite_raw(M->tdt, v, m)) {
                L->bad = 1;
                return;
            }
        }
        L->got += m;
    }
}

/* The first lane's share of pass 3 moves within these bounds (mask_split). */
#define MASK_AT_MIN 0.375
#define MASK_AT_MAX 0.625

/* The first element of the second lane's part of pass 3 for share `at`: on a chunk boundary,
 * both parts at least a chunk. */
static uint64_t mask_cut(uint64_t n, double at)
{
    uint64_t h = (uint64_t)((double)n * at) / CH * CH;
    if (h < CH) h = CH;
    if (h > n - CH) h = (n - CH) / CH * CH;
    return h;
}

/* Pass 3 split in two lanes, and the fingerprints; returns 1 when done here (the result in
 * *rc), 0 when the caller must do both on one thread. The second part's masked elements are
 * at most those of the second lane's pass-1 histogram (elements [h1, n)) in the threshold's
 * bucket or above, plus the elements the earliest cut gives it before h1, and at most n - k:
 * the side buffers' room, taken from the budget (none left: one thread). The room does not
 * depend on where this module is cut, so neither does the budget's peak. */
static int mask_split(runner *R, rmod *M, const unsigned char *a, const unsigned char *b,
                      const unsigned char *t, int *rc)
{
    nlsr_ctx *ctx = R->ctx;
    if (!lanes_usable(R, M, 0, M->n) || nlsr_test_env("NLSR_RUN_MASK_ONE_THREAD")) return 0;
    lane *L = R->lanes->L;
    uint64_t n = M->n, h1 = n / 2 / CH * CH; /* pass 1's split (lanes_set) */
    uint64_t hmin = mask_cut(n, MASK_AT_MIN), h = mask_cut(n, R->mask_at);
    if (h < hmin) h = hmin;
    uint64_t cap = 0;
    for (uint32_t i = nlsr_kth_bucket_of(M->thr); i < NLSR_KTH_BUCKETS; i++) cap += L[1].hist[i];
    if (hmin < h1) cap += h1 - hmin;
    if (cap > M->n - M->k) cap = M->n - M->k;
    if (cap > n - hmin) cap = n - hmin;
    size_t per = 8 + (M->store ? M->tsz : 0);
    uint64_t bytes = cap * per;
    if (bytes > R->side_bytes) {
        nlsr_budget_free(&ctx->budget, R->side, R->side_bytes);
        R->side = NULL;
        R->side_bytes = 0;
        nlsr_err ignored; /* no room: one thread */
        memset(&ignored, 0, sizeof ignored);
        if (bytes > nlsr_budget_room(&ctx->budget) / 2 ||
            nlsr_budget_alloc(&ctx->budget, (size_t)bytes, "pass 3's second lane",
                              (void **)&R->side, &ignored) < 0)
            return 0;
        R->side_bytes = (size_t)bytes;
    }
    lanes_set(R, 5, M, a, b, t, 0, n);
    L[1].lo = h;
    L[1].cap = cap;
    L[1].xy = (float *)(void *)R->side;
    L[1].vals = R->side + cap * 8;
    L[1].hash = R->hash;
    nlsr_cos_sums sums0 = M->sums;
    uint64_t count0 = M->mask_count;
    lanes_post(R);
    double w0 = nlsr_now();
    *rc = pass_mask(R, M, a, b, t, 0, h);
    double w1 = nlsr_now() - w0;
    lanes_wait(R);
    /* The next module's split where both lanes would have ended together (each lane's seconds
     * per share of the module, smoothed): the first lane also polls the stream, and the
     * second may hash; the split changes no result. */
    double f = (double)h / (double)n, c0s = w1 / f, c1s = L[1].secs / (1 - f);
    if (c0s > 0 && c1s > 0) {
        double at = 0.5 * R->mask_at + 0.5 * (c1s / (c0s + c1s));
        R->mask_at = at < MASK_AT_MIN ? MASK_AT_MIN : at > MASK_AT_MAX ? MASK_AT_MAX : at;
    }
    if (*rc < 0) return 1; /* the first bad element is in the first half */
    if (L[1].bad || (M->store && M->mask_count + L[1].got > M->n - M->k)) {
        M->sums = sums0;
        M->mask_count = count0;
        *rc = pass_mask(R, M, a, b, t, 0, n);
        return 1;
    }
    if (M->store) memcpy(M->vals + M->mask_count * M->tsz, L[1].vals, L[1].got * M->tsz);
    nlsr_cos_add_xy(&M->sums, L[1].xy, L[1].got);
    M->mask_count += L[1].got;
    return 1;
}

static int module_compute(runner *R, rmod *M, const unsigned char *const *data)
{
    const unsigned char *a = data[0], *b = data[1], *t = data[2];
    if (M->n == 0) {
        if (R->hash) hash_module(R, M, a, b);
        return 0;
    }
    memset(R->hist, 0, NLSR_KTH_BUCKETS * sizeof *R->hist);
    NLSR_FORWARD(pass_hist(R, M, a, b, t, 0, M->n));
    if (M->k < M->n) NLSR_FORWARD(pass_threshold(R, M, a, b));
    int rc = 0;
    if (M->k < M->n && mask_split(R, M, a, b, t, &rc)) return rc;
    if (!R->hash || !R->lanes) {
        if (R->hash) hash_module(R, M, a, b);
        /* k >= n: the empty mask, similarity 0, nothing to transplant */
        return M->k < M->n ? pass_mask(R, M, a, b, t, 0, M->n) : 0;
    }
    /* Pass 3 on one thread (the module too small to split, or no room for the side buffers):
     * the second lane hashes the module meanwhile. */
    lane *L = &R->lanes->L[1];
    L->pass = 3;
    L->M = M;
    L->a = a;
    L->b = b;
    lanes_post(R);
    rc = M->k < M->n ? pass_mask(R, M, a, b, t, 0, M->n) : 0;
    lanes_wait(R);
    return rc;
}

/* ---- plan -------------------------------------------------------------------------------- */

/* A module's kept patch: the bitmap, then at most n - k values; rounded up so that the next
 * module's bitmap stays 8-byte aligned in the arena. */
static uint64_t store_bytes(const rmod *M)
{
    return ((M->n + 63) / 64 * 8 + (M->n - M->k) * M->tsz + 63) & ~(uint64_t)63;
}

static int build_modules(runner *R)
{
    nlsr_ctx *ctx = R->ctx;
    size_t n = 0;
    for (size_t j = 0; j < R->src->n; j++) n += nlsr_is_target(R->src->t[j].t, R->p->targets,
                                                               R->p->ntargets);
    R->m = calloc(n ? n : 1, sizeof *R->m);
    NLSR_FAIL_IF(!R->m, &ctx->err, -ENOMEM, "out of memory");
    for (size_t j = 0; j < R->src->n; j++) {
        const st_tensor *ts = R->src->t[j].t;
        if (!nlsr_is_target(ts, R->p->targets, R->p->ntargets)) continue;
        rmod *M = &R->m[R->nm++];
        M->is = j;
        M->ts = ts;
        NLSR_FAIL_IF(nlsr_ckpt_find(R->base, ts->name, &M->ib) != 0, &ctx->err, NLSR_E_MISMATCH,
                     "target tensor '%.200s' is not in base %s", ts->name, R->base->path);
        NLSR_FAIL_IF(nlsr_ckpt_find(R->ft, ts->name, &M->it) != 0, &ctx->err, NLSR_E_MISMATCH,
                     "finetuned %s lacks '%.200s'", R->ft->path, ts->name);
        M->tb = R->base->t[M->ib].t;
        M->tt = R->ft->t[M->it].t;
        M->adt = ts->dtype;
        M->bdt = M->tb->dtype;
        M->tdt = M->tt->dtype;
        M->asz = nlsr_dtype_size(M->adt);
        M->bsz = nlsr_dtype_size(M->bdt);
        M->tsz = nlsr_dtype_size(M->tdt);
        M->n = ts->numel;
        M->k = nlsr_mask_k(M->n, R->p->sparsity);
        M->fast = !R->is_ref && M->adt == NLSR_DTYPE_BF16 && M->bdt == NLSR_DTYPE_BF16;
        M->s1 = (nlsr_step1_mod){shard_path(R->base, M->ib), shard_path(R->src, M->is),
                                 ts->name, M->adt, M->bdt, R->is_ref, R->p->beta};
    }
    return 0;
}

static void phase_a_units(const runner *R, nlsr_unit *u)
{
    for (size_t i = 0; i < R->nm; i++) {
        const rmod *M = &R->m[i];
        u[i].nspans = 3;
        u[i].span[0] = (nlsr_span){R->src, M->is, 0, M->n};
        u[i].span[1] = (nlsr_span){R->base, M->ib, 0, M->n};
        u[i].span[2] = (nlsr_span){R->ft, M->it, 0, M->n};
        u[i].tag = i;
    }
}

/* The runner's modules and phase A's units (*u, malloc'd), before any memory is charged. */
static int runner_init(runner *R, nlsr_ctx *ctx, const nlsr_realign_params *p,
                       const nlsr_ckpt *base, const nlsr_ckpt *src, int is_ref,
                       const nlsr_ckpt *ft, nlsr_unit **u)
{
    memset(R, 0, sizeof *R);
    R->ctx = ctx;
    R->p = p;
    R->base = base;
    R->src = src;
    R->ft = ft;
    R->is_ref = is_ref;
    R->out_unit = OUT_UNIT;
    *u = NULL;
    NLSR_FORWARD(build_modules(R));
    NLSR_FAIL_IF(!(*u = calloc(R->nm ? R->nm : 1, sizeof **u)), &ctx->err, -ENOMEM,
                 "out of memory");
    phase_a_units(R, *u);
    return 0;
}

/* Scratch for CH elements: 8 f32 arrays, e_s and converted values (8 bytes each at most), the
 * mask positions and bitmap, and two histograms. */
static size_t scratch_need(void)
{
    return (size_t)CH * (8 * 4 + 8 + 8 + 4) + CH / 8 + 2 * NLSR_KTH_BUCKETS * 8;
}

static int alloc_scratch(runner *R)
{
    R->scratch_bytes = scratch_need();
    NLSR_FORWARD(nlsr_budget_alloc(&R->ctx->budget, R->scratch_bytes, "run scratch",
                                   (void **)&R->scratch, &R->ctx->err));
    float *f = (float *)(void *)R->scratch;
    R->fa = f;
    R->fb = f + CH;
    R->fe = f + 2 * CH;
    R->fs = f + 3 * CH;
    R->tf = f + 4 * CH;
    R->tm = f + 5 * CH;
    R->em = f + 6 * CH;
    R->bm = f + 7 * CH;
    unsigned char *p = R->scratch + (size_t)CH * 32;
    R->es = p;
    R->conv = p + (size_t)CH * 8;
    R->idx = (uint32_t *)(void *)(p + (size_t)CH * 16);
    R->words = (uint64_t *)(void *)(p + (size_t)CH * 20);
    R->hist = R->words + CH / 64;
    R->hist2 = R->hist + NLSR_KTH_BUCKETS;
    return 0;
}

/* What phase B holds at most: its stream (a patched tensor's units, with base and aligned
 * when recomputed), the output buffer and the copy buffer. */
static uint64_t phase_b_need(const runner *R)
{
    uint64_t unit = 0, outb = 0;
    for (size_t i = 0; i < R->nm; i++) {
        const rmod *M = &R->m[i];
        uint64_t c = M->n < R->out_unit ? M->n : R->out_unit;
        uint64_t b = c * (M->asz + M->bsz + M->tsz) + 3 * 2 * NLSR_IO_ALIGN;
        if (b > unit) unit = b;
        if (c * M->tsz > outb) outb = c * M->tsz;
    }
    return unit * OUT_DEPTH + outb + COPY_BUF;
}

/* What phase A holds beside its stream: room for the threshold candidates and the second
 * lane's scratch. */
static uint64_t a_reserve(uint64_t stream_bytes)
{
    return stream_bytes / 16 + 2 * lane_mem();
}

/* Marks the modules whose patches are kept: the first ones (module order) that fit the room
 * left after the larger of the phases' buffers (pa: phase A's); returns their bytes. */
static uint64_t choose_kept(runner *R, uint64_t pa, uint64_t room, int no_store)
{
    uint64_t pb = phase_b_need(R);
    uint64_t reserve = (pa > pb ? pa : pb) + R->reserve;
    uint64_t avail = room > reserve ? room - reserve : 0;
    uint64_t total = 0;
    for (size_t i = 0; i < R->nm && !no_store; i++) {
        rmod *M = &R->m[i];
        if (M->k >= M->n) continue; /* nothing to transplant */
        uint64_t b = store_bytes(M);
        if (total + b > avail) break;
        M->store = 1;
        total += b;
    }
    return total;
}

/* ---- row blocks: modules that do not fit the budget whole -------------------------------- */

/* Blocks per module at most, so that a block's unit table (charged) stays small whatever the
 * module; blocks start on a word of the mask bitmap. */
#define ROWS_MAX_BLOCKS 4096u
#define ROWS_ALIGN 64u
/* A block unit's bytes beyond its elements: each of its three spans widened to 4096-byte
 * boundaries (nlsr_stream_unit_bytes). */
#define ROWS_SLACK (3u * 2u * NLSR_IO_ALIGN)

static uint64_t per_el(const rmod *M)
{
    return M->asz + M->bsz + M->tsz;
}

/* Cuts the modules whose whole unit (u[i]) passes `cap` bytes into blocks of at most `cap`
 * bytes (at least ROWS_ALIGN elements, at most ROWS_MAX_BLOCKS blocks), and phase B's units
 * to the same cap. Returns the largest unit's bytes; R->rows_tables gets the largest block
 * table's charge. */
static uint64_t rows_layout(runner *R, const nlsr_unit *u, uint64_t cap)
{
    uint64_t maxu = 0, pe_max = 1;
    R->rows_tables = 0;
    for (size_t i = 0; i < R->nm; i++) {
        rmod *M = &R->m[i];
        uint64_t wb = nlsr_stream_unit_bytes(&u[i]), pe = per_el(M);
        if (pe > pe_max) pe_max = pe;
        M->blk = 0;
        uint64_t e = cap > ROWS_SLACK ? (cap - ROWS_SLACK) / pe / ROWS_ALIGN * ROWS_ALIGN : 0;
        uint64_t emin = (M->n + ROWS_MAX_BLOCKS - 1) / ROWS_MAX_BLOCKS;
        emin = (emin + ROWS_ALIGN - 1) / ROWS_ALIGN * ROWS_ALIGN;
        if (e < emin) e = emin;
        if (e < ROWS_ALIGN) e = ROWS_ALIGN;
        if (wb <= cap || e >= M->n) {
            if (wb > maxu) maxu = wb;
            continue;
        }
        M->blk = e;
        uint64_t b = e * pe + ROWS_SLACK, nb = (M->n + e - 1) / e;
        if (b > maxu) maxu = b;
        /* The table and the stream's copy of it. */
        uint64_t tb = 2 * nb * sizeof(nlsr_unit);
        if (tb > R->rows_tables) R->rows_tables = tb;
    }
    uint64_t ou = cap > ROWS_SLACK ? (cap - ROWS_SLACK) / pe_max / CH * CH : 0;
    R->out_unit = ou < CH ? CH : ou > OUT_UNIT ? OUT_UNIT : ou;
    R->rows_maxu = maxu;
    return maxu;
}

/* Back to whole modules (the single pass's layout). */
static void rows_reset(runner *R)
{
    for (size_t i = 0; i < R->nm; i++) R->m[i].blk = 0;
    R->out_unit = OUT_UNIT;
    R->rows_tables = R->rows_maxu = 0;
}

/* The budget row blocks take with the layout rows_layout made (maxu: its largest unit);
 * *pa: phase A's part (stream, candidates, unit tables, the second lane when planned). */
static uint64_t rows_need(runner *R, uint64_t maxu, uint64_t *pa)
{
    uint64_t sb = 2 * maxu;
    uint64_t a = sb + sb / 16 + R->rows_tables, b = phase_b_need(R);
    *pa = a;
    return (a > b ? a : b) + scratch_need() + R->reserve;
}

/* Row blocks for this much room (scratch not yet taken): the largest unit an eighth of what
 * scratch and the reserve leave (the rest keeps patches), or the smallest layout when that does
 * not fit. split (tests): the largest module is cut into two blocks or more. Returns the budget it
 * needs; *pa as rows_need, with the second lane when it fits too. */
static uint64_t rows_setup(runner *R, const nlsr_unit *u, uint64_t room, int split, uint64_t *pa)
{
    uint64_t fixed = scratch_need() + R->reserve;
    uint64_t cap = room > fixed ? (room - fixed) / 8 : 0;
    if (split) {
        uint64_t big = 0;
        for (size_t i = 0; i < R->nm; i++)
            if (R->m[i].n * per_el(&R->m[i]) > big) big = R->m[i].n * per_el(&R->m[i]);
        if (cap > ROWS_SLACK + big / 2) cap = ROWS_SLACK + big / 2;
    }
    uint64_t need = rows_need(R, rows_layout(R, u, cap), pa);
    if (need > room) need = rows_need(R, rows_layout(R, u, 0), pa);
    R->rows = 1;
    R->rows_lanes = need + 2 * lane_mem() <= room;
    if (R->rows_lanes) *pa += 2 * lane_mem();
    return need;
}

/* What phase A reads (the progress total): every module once, and a module in row blocks
 * base and aligned twice more (passes 2 and 3) and the fine-tune once more (pass 3). */
static uint64_t phase_a_bytes(const runner *R)
{
    uint64_t t = 0;
    for (size_t i = 0; i < R->nm; i++) {
        const rmod *M = &R->m[i];
        t += M->n * per_el(M);
        if (M->blk && M->k < M->n) t += M->n * (2 * (M->asz + M->bsz) + M->tsz);
    }
    return t;
}

int nlsr_full_run_plan(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                       const nlsr_ckpt *ft, const nlsr_realign_params *p, nlsr_run_plan *out)
{
    return nlsr_full_run_plan_inplace(ctx, base, src, ft, p, 0, out);
}

int nlsr_full_run_plan_inplace(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                               const nlsr_ckpt *ft, const nlsr_realign_params *p,
                               uint64_t journal_bytes, nlsr_run_plan *out)
{
    memset(out, 0, sizeof *out);
    runner R;
    nlsr_unit *u = NULL;
    int rc = runner_init(&R, ctx, p, base, src, 0, ft, &u);
    int inplace = journal_bytes != 0;
    R.reserve = journal_bytes;
    if (rc == 0) {
        int magnitude = p->scorer.kind == NLSR_SCORER_MAGNITUDE && R.nm > 0;
        uint64_t used = ctx->budget.limit ? ctx->budget.used : 0;
        out->modules = R.nm;
        out->stream_bytes = nlsr_stream_mem(u, R.nm, 2);
        out->phase_b_bytes = phase_b_need(&R);
        out->scratch_bytes = scratch_need() + 2 * lane_mem();
        uint64_t a = out->stream_bytes + a_reserve(out->stream_bytes), b = out->phase_b_bytes;
        out->need_bytes = (a > b ? a : b) + scratch_need() + journal_bytes;
        uint64_t room = nlsr_budget_room(&ctx->budget);
        out->single = magnitude && out->need_bytes <= room;
        /* The least budget of row blocks (the smallest layout), then the layout this one
         * takes. */
        uint64_t pa = a;
        if (magnitude) {
            out->rows_min_bytes = used + rows_need(&R, rows_layout(&R, u, 0), &pa);
            rows_reset(&R);
            pa = a;
        }
        if (magnitude && !out->single) {
            uint64_t need = rows_setup(&R, u, room, 0, &pa);
            out->rows = need <= room;
            out->stream_bytes = 2 * R.rows_maxu;
            out->phase_b_bytes = phase_b_need(&R);
            out->rows_need_bytes = need;
            for (size_t i = 0; i < R.nm; i++) out->blocked += R.m[i].blk != 0;
        }
        if (out->single || out->rows) {
            out->kept_bytes = choose_kept(&R, pa, room - scratch_need(), 0);
            for (size_t i = 0; i < R.nm; i++) {
                const rmod *M = &R.m[i];
                out->kept += (size_t)M->store;
                uint64_t ab = M->n * (M->asz + M->bsz);
                out->read_min += ab + M->n * M->tsz;
                /* Row blocks: passes 2 and 3 read the module's blocks again (from the page
                 * cache when it holds them). */
                if (M->blk && M->k < M->n) out->read_min += 2 * ab + M->n * M->tsz;
                /* A patched module whose patch is not kept is read again from base and
                 * aligned. */
                if (!M->store && M->k < M->n) out->reread_max += ab;
                /* In place: the patched tensors are read again and written, at most all. */
                if (inplace) out->written += M->n * M->tsz;
            }
            for (size_t k = 0; k < ft->nshards && !inplace; k++) {
                out->read_min += ft->shards[k]->file_size;
                out->written += ft->shards[k]->file_size;
            }
        }
    }
    free(u);
    free(R.m);
    return rc;
}

/* Keeps the masks and values of the modules choose_kept picks; phase B recomputes the others
 * from base and aligned. */
static int plan_store(runner *R, uint64_t pa, int no_store)
{
    nlsr_ctx *ctx = R->ctx;
    uint64_t total = choose_kept(R, pa, nlsr_budget_room(&ctx->budget), no_store);
    if (total == 0) return 0;
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, (size_t)total, "patches kept in memory",
                                   (void **)&R->arena, &ctx->err));
    R->arena_bytes = total;
    unsigned char *at = R->arena;
    for (size_t i = 0; i < R->nm; i++) {
        rmod *M = &R->m[i];
        if (!M->store) continue;
        size_t words = (size_t)((M->n + 63) / 64);
        M->bits = (uint64_t *)(void *)at;
        memset(M->bits, 0, words * 8);
        M->vals = at + words * 8;
        at += store_bytes(M);
    }
    return 0;
}

/* The plan's memory for a job: row blocks (flags & NLSR_RUN_ROWS) laid out, scratch taken, the
 * kept patches chosen and allocated. u: runner_init's units. */
static int runner_setup(runner *R, const nlsr_unit *u, int flags)
{
    uint64_t pa = 0;
    if (flags & NLSR_RUN_ROWS) {
        uint64_t room = nlsr_budget_room(&R->ctx->budget);
        uint64_t need = rows_setup(R, u, room, (flags & NLSR_RUN_SPLIT) != 0, &pa);
        if (need > room) {
            char a[32], b[32];
            return nlsr_fail(&R->ctx->err, NLSR_E_BUDGET,
                             "memory budget too small: run in row blocks needs %s more, %s left",
                             nlsr_fmt_bytes((double)need, a, sizeof a),
                             nlsr_fmt_bytes((double)room, b, sizeof b));
        }
    } else {
        uint64_t sb = nlsr_stream_mem(u, R->nm, 2);
        pa = sb + a_reserve(sb);
    }
    NLSR_FORWARD(alloc_scratch(R));
    return plan_store(R, pa, (flags & NLSR_RUN_NO_STORE) != 0);
}

/* ---- phase A: every module once ------------------------------------------------------- */

/* Pass 2 of a module in row blocks: the bucket holding rank k, then, block by block, a
 * histogram of the low 16 bits of its candidates' scores (no candidate array: the blocks
 * bound memory, and both ways find the same exact k-th smallest), then the threshold. */
static int cands_begin(runner *R, rmod *M)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++) total += R->hist[i];
    NLSR_FAIL_IF(total != M->n, &R->ctx->err, NLSR_E_FORMAT,
                 "tensor '%.200s': %" PRIu64 " scores counted for %" PRIu64 " elements",
                 M->ts->name, total, M->n);
    nlsr_kth_hist_pick(R->hist, M->k, &M->bucket, &M->below);
    M->nc = R->hist[M->bucket];
    M->got = 0;
    memset(R->hist2, 0, NLSR_KTH_BUCKETS * sizeof *R->hist2);
    return 0;
}

static int cands_block(runner *R, rmod *M, const unsigned char *a, const unsigned char *b,
                       uint64_t lo, uint64_t hi)
{
    if (lanes_usable(R, M, lo, hi)) {
        lane *L = R->lanes->L;
        lanes_set(R, 2, M, a, b, NULL, lo, hi);
        for (int i = 0; i < 2; i++) {
            L[i].bucket = M->bucket;
            L[i].cands = NULL;
            L[i].cap = 0;
            memset(L[i].hist2, 0, NLSR_KTH_BUCKETS * sizeof *L[i].hist2);
        }
        lanes_run(R);
        for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++)
            R->hist2[i] += L[0].hist2[i] + L[1].hist2[i];
        M->got += L[0].got + L[1].got;
        return 0;
    }
    for (uint64_t at = lo; at < hi; at += CH) {
        size_t cnt = (size_t)(hi - at < CH ? hi - at : CH);
        NLSR_FORWARD(scores(R, M, at, cnt, a + (at - lo) * M->asz, b + (at - lo) * M->bsz, 0));
        M->got += nlsr_bucket_hist_low(R->fs, cnt, M->bucket, R->hist2);
        NLSR_FORWARD(poll_stream(R));
    }
    return 0;
}

static int cands_end(runner *R, rmod *M)
{
    NLSR_FAIL_IF(M->got != M->nc, &R->ctx->err, NLSR_E_FORMAT,
                 "%s: tensor '%.200s' changed while it was read", R->src->path, M->ts->name);
    uint32_t lo;
    uint64_t below2;
    nlsr_kth_hist_pick(R->hist2, M->k - M->below, &lo, &below2);
    uint32_t bits = M->bucket << 16 | lo;
    memcpy(&M->thr, &bits, 4);
    return 0;
}

/* One row block [lo, lo + cnt) of pass 1 (validation, histogram), 2 (candidates) or 3 (mask,
 * sums, kept values) of module M. In place, the block's base and aligned bytes are hashed in
 * the module's last pass (on the second lane while pass 3 runs, when there is one). */
static int block_compute(runner *R, rmod *M, int pass, uint64_t lo, uint64_t cnt,
                         const unsigned char *const *d)
{
    const unsigned char *a = d[0], *b = d[1], *t = pass == 2 ? NULL : d[2];
    uint64_t hi = lo + cnt;
    int hash_here = R->hash && pass == (M->k < M->n ? 3 : 1);
    int rc = 0;
    if (lo == 0 && hash_here) hash_begin(R, M);
    if (pass == 1) {
        if (lo == 0) memset(R->hist, 0, NLSR_KTH_BUCKETS * sizeof *R->hist);
        rc = pass_hist(R, M, a, b, t, lo, hi);
        if (rc == 0 && hash_here) hash_block(R, M, a, b, cnt);
    } else if (pass == 2) {
        if (lo == 0) rc = cands_begin(R, M);
        if (rc == 0) rc = cands_block(R, M, a, b, lo, hi);
        if (rc == 0 && hi == M->n) rc = cands_end(R, M);
    } else if (hash_here && R->lanes) {
        lane *L = &R->lanes->L[1];
        L->pass = 4;
        L->M = M;
        L->a = a;
        L->b = b;
        L->lo = lo;
        L->hi = hi;
        lanes_post(R);
        rc = pass_mask(R, M, a, b, t, lo, hi);
        lanes_wait(R);
    } else {
        if (hash_here) hash_block(R, M, a, b, cnt);
        rc = pass_mask(R, M, a, b, t, lo, hi);
    }
    if (rc == 0 && hash_here && hi == M->n) hash_end(R);
    return rc;
}

/* A module in row blocks: one stream per pass over its blocks (passes 2 and 3 only when
 * something is masked), the blocks' table charged to the budget. */
static int module_rows(runner *R, size_t i)
{
    nlsr_ctx *ctx = R->ctx;
    rmod *M = &R->m[i];
    size_t nb = (size_t)((M->n + M->blk - 1) / M->blk);
    nlsr_unit *bu = NULL;
    /* The table and the stream's copy of it (nlsr_stream_open copies the units). */
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, 2 * nb * sizeof *bu, "row-block units",
                                   (void **)&bu, &ctx->err));
    int rc = 0;
    for (int pass = 1; pass <= 3 && rc == 0; pass++) {
        if (pass > 1 && M->k >= M->n) break; /* the empty mask: similarity 0 */
        for (size_t k = 0; k < nb; k++) {
            uint64_t first = (uint64_t)k * M->blk;
            uint64_t cnt = M->n - first < M->blk ? M->n - first : M->blk;
            memset(&bu[k], 0, sizeof bu[k]);
            bu[k].nspans = pass == 2 ? 2 : 3;
            bu[k].span[0] = (nlsr_span){R->src, M->is, first, cnt};
            bu[k].span[1] = (nlsr_span){R->base, M->ib, first, cnt};
            if (pass != 2) bu[k].span[2] = (nlsr_span){R->ft, M->it, first, cnt};
            bu[k].tag = i;
        }
        rc = nlsr_stream_open(ctx, bu, nb, 2, &R->s);
        const nlsr_unit *un;
        const unsigned char *const *data;
        while (rc == 0 && (rc = nlsr_stream_next(R->s, &un, &data)) == 1)
            rc = block_compute(R, M, pass, un->span[0].first, un->span[0].count, data);
        nlsr_stream_close(R->s);
        R->s = NULL;
    }
    nlsr_budget_free(&ctx->budget, bu, 2 * nb * sizeof *bu);
    return rc < 0 ? rc : 0;
}

/* Whole modules u[0 .. n) through one stream. */
static int modules_whole(runner *R, const nlsr_unit *u, size_t n)
{
    nlsr_ctx *ctx = R->ctx;
    int rc = nlsr_stream_open(ctx, u, n, 2, &R->s);
    NLSR_FORWARD(rc);
    if (!R->lanes && (!R->rows || R->rows_lanes)) lanes_start(R);
    const nlsr_unit *un;
    const unsigned char *const *data;
    while ((rc = nlsr_stream_next(R->s, &un, &data)) == 1) {
        rc = module_compute(R, &R->m[un->tag], data);
        if (rc < 0) break;
        nlsr_phase_units(ctx, 1);
    }
    nlsr_stream_close(R->s);
    R->s = NULL;
    return rc < 0 ? rc : 0;
}

/* u: the units runner_init made (the stream copies them). Consecutive whole modules share a
 * stream; a module in row blocks has its own streams. */
static int phase_a(runner *R, const nlsr_unit *u, nlsr_report *rep)
{
    nlsr_ctx *ctx = R->ctx;
    int rc = 0;
    if (R->rows && R->rows_lanes) lanes_start(R);
    for (size_t i = 0; i < R->nm && rc == 0;) {
        size_t j = i;
        while (j < R->nm && !R->m[j].blk) j++;
        if (j > i) {
            rc = modules_whole(R, u + i, j - i);
            i = j;
        } else {
            rc = module_rows(R, i++);
            if (rc == 0) nlsr_phase_units(ctx, 1);
        }
        if (R->rows) {
            /* The next module's stream gets the room the candidates and pass 3's side buffers
             * took. */
            nlsr_budget_free(&ctx->budget, R->cands, R->cand_cap * sizeof(float));
            R->cands = NULL;
            R->cand_cap = 0;
            nlsr_budget_free(&ctx->budget, R->side, R->side_bytes);
            R->side = NULL;
            R->side_bytes = 0;
        }
    }
    lanes_stop(R);
    nlsr_budget_free(&ctx->budget, R->side, R->side_bytes);
    R->side = NULL;
    R->side_bytes = 0;
    for (size_t i = 0; i < R->nm && rc == 0; i++) {
        rmod *M = &R->m[i];
        size_t idx;
        rc = nlsr_report_add(rep, ctx, M->ts->name, M->n, M->mask_count, &idx);
        if (rc == 0) rep->m[idx].similarity = nlsr_cosine(M->sums.dot, M->sums.nx, M->sums.ny);
    }
    return rc < 0 ? rc : 0;
}

/* ---- phase B: the output checkpoint ----------------------------------------------------- */

/* The kept values of elements [first, first + cnt) that are masked into out, in mask order
 * from value vpos on (first a multiple of 64: a word of the bitmap); returns the values used
 * so far. */
static inline __attribute__((always_inline)) uint64_t merge_kept(const rmod *M, uint64_t vpos,
                                                                 uint64_t first, size_t cnt,
                                                                 unsigned char *out, size_t tsz)
{
    uint64_t w0 = first / 64, w1 = (first + cnt + 63) / 64;
    const unsigned char *v = M->vals + vpos * tsz;
    for (uint64_t w = w0; w < w1; w++) {
        uint64_t bits = M->bits[w];
        while (bits) {
            uint64_t el = w * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            memcpy(out + (el - first) * tsz, v, tsz);
            v += tsz;
        }
    }
    return (uint64_t)(v - M->vals) / tsz;
}

/* out = the fine-tune's elements [first, first + cnt) (src) with the kept values over the
 * masked ones; returns the values used so far. A constant element size per call, so that
 * each value's copy is a move, not a call (the common BF16/F16 case was most of the merge). */
static uint64_t merge_kept_range(const rmod *M, uint64_t vpos, uint64_t first, size_t cnt,
                                 const unsigned char *src, unsigned char *out)
{
    memcpy(out, src, cnt * M->tsz);
    switch (M->tsz) {
    case 2: return merge_kept(M, vpos, first, cnt, out, 2);
    case 4: return merge_kept(M, vpos, first, cnt, out, 4);
    default: return merge_kept(M, vpos, first, cnt, out, M->tsz);
    }
}

/* A kept patch's unit in two halves when the second lane runs (phase B's main thread merges
 * the first while the lane merges the second): the second half's first value is found by
 * counting the first half's mask bits. Same bytes as one thread. From 16384 elements (phase B's
 * units are 4 Mi elements; the tests' MLP modules, 22272, are split too). */
#define MERGE_SPLIT_MIN (1u << 14)

/* t' = M ? e_s : t for one unit of a patched module, into out (cnt elements of ft's dtype). */
static int merge_unit(runner *R, rmod *M, uint64_t first, size_t cnt, const unsigned char *const *d,
                      unsigned char *out)
{
    size_t tsz = M->tsz;
    if (M->store && R->lanes && cnt >= MERGE_SPLIT_MIN) {
        assert(first % 64 == 0);
        size_t h = cnt / 2 / 64 * 64;
        uint64_t vh = M->vpos;
        for (uint64_t w = first / 64; w < (first + h) / 64; w++)
            vh += (uint64_t)__builtin_popcountll(M->bits[w]);
        lane *L = &R->lanes->L[1];
        L->pass = 6;
        L->M = M;
        L->lo = first + h;
        L->hi = first + cnt;
        L->t = d[0] + h * tsz;
        L->out = out + h * tsz;
        L->vpos = vh;
        lanes_post(R);
        (void)merge_kept_range(M, M->vpos, first, h, d[0], out);
        lanes_wait(R);
        M->vpos = L->vpos;
        return 0;
    }
    if (M->store) {
        M->vpos = merge_kept_range(M, M->vpos, first, cnt, d[0], out);
        return 0;
    }
    /* Recomputed from base and aligned with the threshold phase A found. */
    memcpy(out, d[2], cnt * tsz);
    for (size_t at = 0; at < cnt; at += CH) {
        size_t c = cnt - at < CH ? cnt - at : CH;
        NLSR_FORWARD(scores(R, M, first + at, c, d[0] + at * M->asz, d[1] + at * M->bsz, 1));
        size_t m = mask_positions(R->fs, c, M->thr, R->words, R->idx);
        for (size_t i = 0; i < m; i++) R->em[i] = R->fe[R->idx[i]];
        nlsr_from_f32(M->tdt, R->em, R->conv, m);
        NLSR_FORWARD(check_dest(R, M, first + at, R->conv, m)); /* phase A checked the same */
        for (size_t i = 0; i < m; i++)
            memcpy(out + (at + R->idx[i]) * tsz, R->conv + i * tsz, tsz);
    }
    return 0;
}

static int cmp_begin(const void *x, const void *y, const void *ctx)
{
    const runner *R = ctx;
    const rmod *a = &R->m[*(const size_t *)x], *b = &R->m[*(const size_t *)y];
    uint32_t sa = R->ft->t[a->it].shard, sb = R->ft->t[b->it].shard;
    if (sa != sb) return sa < sb ? -1 : 1;
    return a->tt->begin < b->tt->begin ? -1 : a->tt->begin > b->tt->begin;
}

/* The patched modules (by shard, then by position in the shard: *order, *np of them) and
 * phase B's stream units over them (*u, *nu): a kept patch needs the fine-tune's bytes, a
 * recomputed one base and aligned too. *maxel: the largest unit's bytes in ft's dtype. */
static int out_plan(runner *R, const nlsr_report *rep, size_t **order_out, size_t *np_out,
                    nlsr_unit **u_out, size_t *nu_out, uint64_t *maxel)
{
    nlsr_err *e = &R->ctx->err;
    size_t np = 0;
    *u_out = NULL;
    *maxel = 1;
    size_t *order = malloc((R->nm ? R->nm : 1) * sizeof *order);
    NLSR_FAIL_IF(!order, e, -ENOMEM, "out of memory");
    for (size_t i = 0; i < R->nm; i++)
        if (rep->m[i].patched && R->m[i].n > 0 && R->m[i].k < R->m[i].n) order[np++] = i;
    /* Insertion sort: a few hundred modules at most, and the order needs the shard table. */
    for (size_t i = 1; i < np; i++)
        for (size_t j = i; j > 0 && cmp_begin(&order[j - 1], &order[j], R) > 0; j--) {
            size_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    size_t nu = 0;
    for (size_t i = 0; i < np; i++)
        nu += (size_t)((R->m[order[i]].n + R->out_unit - 1) / R->out_unit);
    nlsr_unit *u = calloc(nu ? nu : 1, sizeof *u);
    if (!u) {
        free(order);
        return nlsr_fail(e, -ENOMEM, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < np; i++) {
        const rmod *M = &R->m[order[i]];
        for (uint64_t first = 0; first < M->n; first += R->out_unit, k++) {
            uint64_t cnt = M->n - first < R->out_unit ? M->n - first : R->out_unit;
            if (cnt * M->tsz > *maxel) *maxel = cnt * M->tsz;
            if (M->store) {
                u[k].nspans = 1;
                u[k].span[0] = (nlsr_span){R->ft, M->it, first, cnt};
            } else {
                u[k].nspans = 3;
                u[k].span[0] = (nlsr_span){R->src, M->is, first, cnt};
                u[k].span[1] = (nlsr_span){R->base, M->ib, first, cnt};
                u[k].span[2] = (nlsr_span){R->ft, M->it, first, cnt};
            }
            u[k].tag = order[i];
        }
    }
    *order_out = order;
    *np_out = np;
    *u_out = u;
    *nu_out = nu;
    return 0;
}

static int phase_b(runner *R, nlsr_report *rep, const char *out_dir)
{
    nlsr_ctx *ctx = R->ctx;
    nlsr_err *e = &ctx->err;
    const nlsr_ckpt *ft = R->ft;
    size_t np = 0, nu = 0;
    size_t *order = NULL;
    nlsr_unit *u = NULL;
    unsigned char *outbuf = NULL, *copybuf = NULL;
    char *dst = NULL;
    int out = -1;
    nlsr_stream *s = NULL;
    uint64_t maxel = 1;
    int rc = out_plan(R, rep, &order, &np, &u, &nu, &maxel);
    if (rc < 0) return rc;
    rc = nlsr_budget_alloc(&ctx->budget, (size_t)maxel, "output buffer", (void **)&outbuf, e);
    if (rc == 0) rc = nlsr_budget_alloc(&ctx->budget, COPY_BUF, "copy buffer", (void **)&copybuf, e);
    if (rc == 0 && nu) rc = nlsr_stream_open(ctx, u, nu, OUT_DEPTH, &s);
    if (rc == 0 && nu) lanes_start(R); /* merges in two halves (merge_unit) where it can */
    size_t next = 0; /* next patched module in `order` */
    for (size_t sh = 0; sh < ft->nshards && rc == 0; sh++) {
        const st_file *f = ft->shards[sh];
        if (!(dst = nlsr_path_join(out_dir, ft->shard_names[sh]))) {
            rc = nlsr_fail(e, -ENOMEM, "out of memory");
            break;
        }
        out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (out < 0) {
            rc = nlsr_fail(e, -errno, "%s: cannot create: %s", dst, strerror(errno));
            break;
        }
        uint64_t cursor = 0;
        while (rc == 0 && next < np && ft->t[R->m[order[next]].it].shard == sh) {
            rmod *M = &R->m[order[next]];
            uint64_t start = f->data_start + M->tt->begin, end = f->data_start + M->tt->end;
            rc = nlsr_copy_range(f->fd, out, cursor, start - cursor, copybuf, COPY_BUF, f->path,
                                 dst, e);
            ctx->bytes_read += start - cursor;
            ctx->bytes_written += start - cursor;
            nlsr_phase_tick(ctx);
            M->vpos = 0;
            for (uint64_t first = 0; rc == 0 && first < M->n; first += R->out_unit) {
                const nlsr_unit *un;
                const unsigned char *const *data;
                rc = nlsr_stream_next(s, &un, &data);
                if (rc == 0) rc = nlsr_fail(e, NLSR_E_FORMAT, "output stream ended early");
                if (rc < 0) break;
                size_t cnt = (size_t)un->span[0].count;
                rc = merge_unit(R, M, first, cnt, data, outbuf);
                if (rc == 0)
                    rc = nlsr_pwrite_all(out, outbuf, cnt * M->tsz, start + first * M->tsz, dst,
                                         e);
                ctx->bytes_written += cnt * M->tsz;
                nlsr_phase_tick(ctx);
            }
            cursor = end;
            next++;
        }
        if (rc == 0) {
            rc = nlsr_copy_range(f->fd, out, cursor, f->file_size - cursor, copybuf, COPY_BUF,
                                 f->path, dst, e);
            ctx->bytes_read += f->file_size - cursor;
            ctx->bytes_written += f->file_size - cursor;
        }
        nlsr_phase_units(ctx, 1);
        if (rc == 0 && fsync(out) != 0)
            rc = nlsr_fail(e, -errno, "%s: fsync failed: %s", dst, strerror(errno));
        if (rc == 0) {
            nlsr_test_point("shard");
            rc = nlsr_ctx_check_cancel(ctx); /* a safe point between shards */
        }
        close(out);
        out = -1;
        free(dst);
        dst = NULL;
    }
    /* Side files (index, config, tokenizer ...) as the policy says (src/io/sidefiles.h). */
    if (rc == 0)
        rc = nlsr_sidefiles_copy(ctx, ft, out_dir, R->p->drop_other_weights, &rep->files);
    if (out >= 0) close(out);
    free(dst);
    lanes_stop(R);
    nlsr_stream_close(s);
    nlsr_budget_free(&ctx->budget, outbuf, (size_t)maxel);
    nlsr_budget_free(&ctx->budget, copybuf, COPY_BUF);
    free(u);
    free(order);
    return rc;
}

/* ---- phase B in place: only the patched elements, through the journal ------------------ */

/* Each patched tensor's units are merged as for the output, compared with the bytes they
 * replace, and the grains that change are journaled and written (nlsr_journal_stage_changed).
 * Batches fill across tensors (the journal arms one when its buffer is full; the caller's sync
 * arms the last): fewer fsyncs than one batch per tensor. The journal's file ids are ft's
 * shard indexes. */
static int phase_b_inplace(runner *R, nlsr_report *rep, nlsr_journal *jn, uint64_t *patched)
{
    nlsr_ctx *ctx = R->ctx;
    const nlsr_ckpt *ft = R->ft;
    size_t np = 0, nu = 0;
    size_t *order = NULL;
    nlsr_unit *u = NULL;
    unsigned char *outbuf = NULL;
    nlsr_stream *s = NULL;
    uint64_t maxel = 1;
    *patched = 0;
    int rc = out_plan(R, rep, &order, &np, &u, &nu, &maxel);
    if (rc < 0) return rc;
    rc = nlsr_budget_alloc(&ctx->budget, (size_t)maxel, "output buffer", (void **)&outbuf,
                           &ctx->err);
    if (rc == 0 && nu) rc = nlsr_stream_open(ctx, u, nu, OUT_DEPTH, &s);
    if (rc == 0 && nu) lanes_start(R); /* merges in two halves (merge_unit) where it can */
    /* Progress: the patched tensors' bytes merged and handed to the journal (what reaches the
     * disk is less: only the elements that change, and their journal records). */
    uint64_t total = 0;
    for (size_t i = 0; i < np; i++) total += R->m[order[i]].tt->end - R->m[order[i]].tt->begin;
    if (rc == 0) nlsr_phase_begin(ctx, "output", NLSR_PHASE_OWN, total, np);
    for (size_t i = 0; i < np && rc == 0; i++) {
        rmod *M = &R->m[order[i]];
        uint32_t sh = ft->t[M->it].shard;
        uint64_t start = ft->shards[sh]->data_start + M->tt->begin;
        M->vpos = 0;
        for (uint64_t first = 0; rc == 0 && first < M->n; first += R->out_unit) {
            const nlsr_unit *un;
            const unsigned char *const *data;
            rc = nlsr_stream_next(s, &un, &data);
            if (rc == 0) rc = nlsr_fail(&ctx->err, NLSR_E_FORMAT, "output stream ended early");
            if (rc < 0) break;
            size_t cnt = (size_t)un->span[0].count;
            rc = merge_unit(R, M, first, cnt, data, outbuf);
            const unsigned char *orig = M->store ? data[0] : data[2];
            if (rc == 0)
                rc = nlsr_journal_stage_changed(jn, sh, start + first * M->tsz, orig, outbuf,
                                                cnt * M->tsz, M->tsz);
            if (rc == 0) nlsr_phase_add(ctx, cnt * M->tsz);
        }
        *patched += M->tt->end - M->tt->begin;
        if (rc == 0) nlsr_phase_units(ctx, 1);
    }
    if (rc == 0) nlsr_phase_end(ctx);
    lanes_stop(R);
    nlsr_stream_close(s);
    nlsr_budget_free(&ctx->budget, outbuf, (size_t)maxel);
    free(u);
    free(order);
    return rc;
}

struct nlsr_full_pass {
    runner R;
    double seconds_a;
};

void nlsr_full_pass_end(nlsr_full_pass *P)
{
    if (!P) return;
    nlsr_ctx *ctx = P->R.ctx;
    nlsr_budget_free(&ctx->budget, P->R.cands, P->R.cand_cap * sizeof(float));
    nlsr_budget_free(&ctx->budget, P->R.arena, (size_t)P->R.arena_bytes);
    nlsr_budget_free(&ctx->budget, P->R.scratch, P->R.scratch_bytes);
    free(P->R.m);
    free(P);
}

int nlsr_full_pass_begin(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                         int is_reference, const nlsr_ckpt *ft, const nlsr_realign_params *p,
                         int flags, uint64_t reserve, nlsr_report *rep, nlsr_full_pass **out)
{
    nlsr_err *e = &ctx->err;
    *out = NULL;
    NLSR_FAIL_IF(!(p->sparsity >= 0.0 && p->sparsity <= 1.0) || !isfinite(p->beta), e,
                 NLSR_E_USAGE, "sparsity must lie in [0, 1] and beta be finite");
    nlsr_full_pass *P = calloc(1, sizeof *P);
    NLSR_FAIL_IF(!P, e, -ENOMEM, "out of memory");
    runner *R = &P->R;
    nlsr_unit *u = NULL;
    int rc = runner_init(R, ctx, p, base, src, is_reference, ft, &u);
    R->hash = 1;
    R->reserve = reserve;
    nlsr_xxh64_init(&R->fp_base, 0);
    nlsr_xxh64_init(&R->fp_src, 0);
    if (rc == 0) rc = runner_setup(R, u, flags);
    double t0 = nlsr_now();
    if (rc == 0) {
        /* The same phase as run --out's: on a 405B model it lasts hours. */
        nlsr_phase_begin(ctx, "similarities", NLSR_PHASE_READ, phase_a_bytes(R), R->nm);
        rc = phase_a(R, u, rep);
        if (rc == 0) nlsr_phase_end(ctx);
    }
    P->seconds_a = nlsr_now() - t0;
    free(u);
    nlsr_budget_free(&ctx->budget, R->cands, R->cand_cap * sizeof(float));
    R->cands = NULL;
    R->cand_cap = 0;
    if (rc == 0) rc = nlsr_report_select(rep, ctx, &p->select);
    if (rc < 0) {
        nlsr_full_pass_end(P);
        return rc;
    }
    *out = P;
    return 0;
}

void nlsr_full_pass_fingerprints(const nlsr_full_pass *P, uint64_t *base_fp, uint64_t *src_fp)
{
    *base_fp = nlsr_xxh64_digest(&P->R.fp_base);
    *src_fp = nlsr_xxh64_digest(&P->R.fp_src);
}

int nlsr_full_pass_inplace(nlsr_full_pass *P, struct nlsr_journal *jn, nlsr_report *rep,
                           uint64_t *patched_bytes)
{
    double t1 = nlsr_now();
    int rc = phase_b_inplace(&P->R, rep, jn, patched_bytes);
    if (rc == 0) {
        size_t kept = 0;
        for (size_t i = 0; i < P->R.nm; i++) kept += (size_t)P->R.m[i].store;
        rep->summary.plan = P->R.rows ? NLSR_PLAN_ROWS : "single pass";
        rep->summary.patches_in_memory = kept;
        rep->summary.phase_seconds[0] = P->seconds_a;
        rep->summary.phase_seconds[1] = nlsr_now() - t1;
    }
    return rc;
}

int nlsr_full_run(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src, int is_reference,
                  const nlsr_ckpt *ft, const char *out_dir, const nlsr_realign_params *p,
                  int flags, nlsr_report *rep)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    runner R;
    nlsr_unit *u = NULL;
    int rc = runner_init(&R, ctx, p, base, src, is_reference, ft, &u);
    if (rc == 0) rc = runner_setup(&R, u, flags);
    double t0 = nlsr_now();
    if (rc == 0) {
        /* Phase A reads every target module of the three checkpoints once (row blocks: some
         * more than once). */
        nlsr_phase_begin(ctx, "similarities", NLSR_PHASE_READ, phase_a_bytes(&R), R.nm);
        rc = phase_a(&R, u, rep);
        if (rc == 0) nlsr_phase_end(ctx);
    }
    double t1 = nlsr_now();
    free(u);
    nlsr_budget_free(&ctx->budget, R.cands, R.cand_cap * sizeof(float));
    R.cands = NULL;
    if (rc == 0) rc = nlsr_report_select(rep, ctx, &p->select);
    if (rc == 0) {
        /* Phase B writes every output shard (the side files are not counted). */
        uint64_t b_bytes = 0;
        for (size_t k = 0; k < ft->nshards; k++) b_bytes += ft->shards[k]->file_size;
        nlsr_phase_begin(ctx, "output", NLSR_PHASE_WRITTEN, b_bytes, ft->nshards);
        rc = phase_b(&R, rep, out_dir);
        if (rc == 0) nlsr_phase_end(ctx);
    }
    double t2 = nlsr_now();
    if (rc == 0) {
        size_t kept = 0;
        for (size_t i = 0; i < R.nm; i++) kept += (size_t)R.m[i].store;
        rep->summary.plan = R.rows ? NLSR_PLAN_ROWS : "single pass";
        rep->summary.patches_in_memory = kept;
        rep->summary.phase_seconds[0] = t1 - t0;
        rep->summary.phase_seconds[1] = t2 - t1;
    }
    nlsr_budget_free(&ctx->budget, R.arena, (size_t)R.arena_bytes);
    nlsr_budget_free(&ctx->budget, R.scratch, R.scratch_bytes);
    free(R.m);
    return rc;
}

int nlsr_full_run_choose(nlsr_ctx *ctx, const nlsr_run_plan *rp, const nlsr_realign_params *p,
                         int *flags)
{
    const char *force = nlsr_test_env("NLSR_RUN_PLAN");
    *flags = 0;
    if (p->scorer.kind != NLSR_SCORER_MAGNITUDE || rp->modules == 0) return 0;
    if (force) {
        if (strcmp(force, "patch-file") == 0) return 0;
        if (strcmp(force, "recompute") == 0) *flags = NLSR_RUN_NO_STORE;
        if (strcmp(force, "rows") == 0) *flags = NLSR_RUN_ROWS | NLSR_RUN_SPLIT;
        if (strcmp(force, "rows-recompute") == 0)
            *flags = NLSR_RUN_ROWS | NLSR_RUN_SPLIT | NLSR_RUN_NO_STORE;
        if (*flags || strcmp(force, "single") == 0) return 1;
    }
    if (rp->single) return 1;
    if (rp->rows) {
        *flags = NLSR_RUN_ROWS;
        return 1;
    }
    /* Row blocks take the least memory of all plans (prepare's scratch alone is larger): a
     * budget below theirs is refused before anything is read or written. */
    char a[32], b[32];
    return nlsr_fail(&ctx->err, NLSR_E_BUDGET,
                     "memory budget %s is too small for run: it needs at least %s (--mem-budget)",
                     nlsr_fmt_bytes((double)ctx->budget.limit, a, sizeof a),
                     nlsr_fmt_bytes((double)rp->rows_min_bytes, b, sizeof b));
}
