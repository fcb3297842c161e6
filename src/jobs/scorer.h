/* SPDX-License-Identifier: Apache-2.0 */
/* Step 2's scorers in the full-weight prepare (METHOD.md step 2, docs/LOWRANK.md): the
 * magnitude rule's threshold applied to another score than |e_s - b|.
 *
 *   lowrank  s = |W_hat|, W_hat = U_r U_r^T W with W = e_s - b (f32) and U_r the top-r left
 *            singular vectors of W X^T (X = I without activations): the kernels of
 *            src/compute/lowrank.h, fed by the prepare's stream of base + aligned rows. The
 *            randomized method needs 2 + 2 power_iters passes over W; the exact one 1; the
 *            identity (X = I at full rank) none, and its scores are |W| bit for bit.
 *   wanda    s = |W_ij| * ||X_:j||_2 (src/compute/wanda.h), one threshold per output row (the
 *            authors' Wanda code) or per matrix.
 *
 * realign_full.c drives one nlsr_scorer per target module: begin (loads the module's
 * activations, starts the SVD), the feed passes while passes_left > 0 (every element of W in
 * order, in element ranges of any size: the scorer cuts them into its own fixed row blocks, so
 * the result does not depend on the prepare's block size), then scores for element ranges in
 * order as often as needed (the histogram, candidate and mask passes). After the feed passes the
 * low-rank scores need no input (needs_delta() == 0: they come from U_r and P = U_r^T W held in
 * memory), so the histogram and candidate passes read nothing.
 *
 * The activations file (--activations FILE): a safetensors file (or folder) whose tensors are
 * named after the target modules (the model's tensor names, e.g.
 * "model.layers.0.mlp.down_proj.weight"), one per target module, each either activation rows X
 * at the module's input ([n, in] or [batch, seq, in], any float dtype) or, when the file's
 * __metadata__ has "nlsr.activations": "gram", their Gram matrix G = X^T X ([in, in], F32).
 * Names and widths must match the model exactly (nlsr_acts_open). */
#ifndef NLSR_PLAN_SCORER_H
#define NLSR_PLAN_SCORER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../io/checkpoint.h"
#include "../plan/planner.h"

struct cJSON;

/* The scorer parameters' ranges and combinations: wanda needs activations, magnitude takes
 * none, rank_fraction in (0, 1] when rank is 0, power_iters in [0, 64]. NLSR_E_USAGE. */
int nlsr_scorer_check_params(nlsr_ctx *ctx, const nlsr_scorer_params *sp);

/* ---- the activations file ------------------------------------------------------------------ */

typedef struct nlsr_acts nlsr_acts;

/* Opens and checks an activations file against `model` (the aligned or reference checkpoint)
 * and its target modules (p->targets), from headers only: every target module has exactly one
 * entry of the right width and dtype, and every entry names a target module. NLSR_E_MISMATCH
 * (NLSR_E_DTYPE for a dtype) naming the file, the tensor and both widths otherwise. */
int nlsr_acts_open(nlsr_ctx *ctx, const char *path, const nlsr_ckpt *model,
                   const nlsr_realign_params *p, nlsr_acts **out);
void nlsr_acts_free(nlsr_acts *a);
/* 1 when the file holds Gram matrices, 0 for activation rows. */
int nlsr_acts_is_gram(const nlsr_acts *a);

/* ---- one module ---------------------------------------------------------------------------- */

typedef struct nlsr_scorer nlsr_scorer;

/* Starts the scorer of target module `name` (out x in) under ctx's budget: reads its
 * activations (acts may be NULL for lowrank: X = I), then starts the low-rank state
 * (nlsr_lowrank_begin with r from p's rank, fraction and reading; OpenBLAS threads =
 * ctx->threads). NLSR_E_BUDGET naming the bytes when it does not fit; NLSR_E_VALUE for
 * non-finite activations or a G that is no Gram matrix. */
int nlsr_scorer_begin(nlsr_ctx *ctx, const nlsr_realign_params *p, const nlsr_acts *acts,
                      const char *name, size_t out, size_t in, nlsr_scorer **sc);
/* Releases everything it charged; NULL is a no-op. */
void nlsr_scorer_free(nlsr_scorer *sc);

/* Feed passes still needed (0 for wanda and the low-rank identity). */
int nlsr_scorer_passes_left(const nlsr_scorer *sc);
/* One feed pass: every element of W = e_s - b (f32, row-major) exactly once, in order, in
 * element ranges of any size. Out of order is NLSR_E_USAGE. */
int nlsr_scorer_pass_begin(nlsr_scorer *sc);
int nlsr_scorer_feed(nlsr_scorer *sc, uint64_t first, size_t cnt, const float *delta);
int nlsr_scorer_pass_end(nlsr_scorer *sc);
/* When W fitted half the budget left at begin, the scorer keeps it from the first pass: the
 * later passes are then fed from memory (replay, after pass_begin, instead of feeding), so the
 * prepare reads and converts nothing for them. The same row blocks are fed either way: the
 * result does not depend on it. */
int nlsr_scorer_can_replay(const nlsr_scorer *sc);
int nlsr_scorer_replay(nlsr_scorer *sc);

/* 1 if nlsr_scorer_scores needs the delta of the range (wanda, the low-rank identity), 0 if
 * it computes the scores from what it holds (the low-rank projection). */
int nlsr_scorer_needs_delta(const nlsr_scorer *sc);
/* The scores of elements [first, first + cnt) into scores (cnt floats, non-negative, not NaN).
 * Ranges must come in ascending order within one scoring pass for the projection's row-block
 * cache to be computed once per pass (any order is correct, only slower). */
int nlsr_scorer_scores(nlsr_scorer *sc, uint64_t first, size_t cnt, const float *delta,
                       float *scores);

/* wanda with per-row selection: the threshold of every output row instead of one per matrix.
 * row_add takes the scores in element order (the first scoring pass); once every row was added,
 * row_thresholds()[i] is row i's k-th smallest score (k = (long)(in * sparsity)), +inf when
 * k >= in; the mask is score > threshold. NULL for the other scorers. */
int nlsr_scorer_per_row(const nlsr_scorer *sc);
int nlsr_scorer_row_add(nlsr_scorer *sc, uint64_t first, size_t cnt, const float *scores);
const float *nlsr_scorer_row_thresholds(const nlsr_scorer *sc);

/* d = e - b elementwise in f32: the delta W that the low-rank and Wanda scores start from. */
void nlsr_scorer_delta(const float *e, const float *b, float *d, size_t n);

/* ---- plans --------------------------------------------------------------------------------- */

/* What the scorer of one out x in module needs. */
typedef struct nlsr_scorer_need {
    size_t r;                 /* lowrank: the rank after reading and clamping */
    int exact, identity;      /* lowrank: method */
    int svd_passes;           /* lowrank: feed passes over W (0, 1 or 2 + 2 power_iters) */
    int data_passes;          /* passes reading base + aligned when neither the module nor W
                                 is kept in memory (magnitude: 3) */
    int data_passes_w;        /* the same when W is kept after the first SVD pass */
    uint64_t w_bytes;         /* what keeping W takes (it must fit half the budget left) */
    int data_passes_cached;   /* the same when it is (always 1) */
    uint64_t peak_bytes;      /* the scorer's highest budget use (activations included) */
    uint64_t resident_bytes;  /* what it holds during the scoring passes */
    uint64_t acts_bytes;      /* bytes it reads from the activations file */
} nlsr_scorer_need;

/* The need of module (out x in) with acts (NULL: none; else its kind) and `threads`. */
int nlsr_scorer_module_need(const nlsr_realign_params *p, const nlsr_acts *acts,
                            const char *name, size_t out, size_t in, nlsr_scorer_need *need,
                            nlsr_err *e);

/* Before the prepare writes anything: every target module of src gets a valid rank and fits
 * what the budget has left (`reserve` bytes more are kept for the stream buffers).
 * NLSR_E_USAGE / NLSR_E_BUDGET naming the module, shape, rank and bytes. */
int nlsr_scorer_check_modules(nlsr_ctx *ctx, const nlsr_ckpt *src, const nlsr_realign_params *p,
                              const nlsr_acts *acts, uint64_t reserve);

/* `nlsr plan` for a run with a scorer other than magnitude: the plan as nlsr_plan_print_to
 * prints it, followed by (text) or with a "scorer" member holding (JSON) the scorer's rank,
 * method, passes over base + aligned, extra bytes read and memory per module shape. */
int nlsr_scorer_plan_print(nlsr_ctx *ctx, const nlsr_plan *plan, const nlsr_ckpt *src,
                           const nlsr_realign_params *p, double read_bw, double write_bw,
                           const char *bw_source, int json, FILE *out);

#include "../common/params.h"

#endif
