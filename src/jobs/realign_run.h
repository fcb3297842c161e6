/* SPDX-License-Identifier: Apache-2.0 */
/* `run` on full weights in a single pass, without a patch file:
 *
 *   phase A  one read stream delivers each target module whole, base + aligned + fine-tuned
 *            together, module order, two modules in the buffers so that the next is read
 *            while this one is computed (the stream is polled between chunks to keep the disk
 *            busy). Per module, from memory: validation and the score histogram, the exact
 *            threshold (the bucket's candidates), then the mask, the masked cosine's sums and
 *            (while the budget allows) the mask bitmap and transplanted values kept in memory.
 *   select   over all similarities (METHOD.md step 3).
 *   phase B  each output shard written once: byte ranges outside patched tensors copied in
 *            the kernel (copy_file_range), patched tensors streamed from the fine-tune and
 *            merged with the kept values, or with values recomputed from base and aligned with
 *            the threshold of phase A for modules whose patches did not fit.
 *
 * Row blocks (NLSR_RUN_ROWS, when the budget does not hold two whole modules): phase A cuts the
 * modules too large for its unit into blocks of rows and makes its three passes over each
 * such module's blocks in turn (each pass a stream of its own; the passes after the first
 * usually read from the page cache), with the same arithmetic in the same element order;
 * phase B's units shrink to the same size. Same bits, memory a few MiB at the least.
 *
 * Bytes read: every target tensor of the three checkpoints once, the fine-tune once more (its
 * patched tensors through the stream, the rest in the kernel), plus base and aligned again for
 * patched modules whose patches did not fit. Written: the output once. Same bits as prepare +
 * apply (realign_full.c), whose arithmetic and summation order it repeats. */
#ifndef NLSR_PLAN_REALIGN_RUN_H
#define NLSR_PLAN_REALIGN_RUN_H

#include "../io/checkpoint.h"
#include "../plan/planner.h"
#include "report.h"
#include "realign_full.h"

/* What `run` will do with the budget left (nlsr_run_plan, planner.h): the single pass, the
 * single pass in row blocks, or prepare + apply, and for the first two their memory and
 * bytes. */
int nlsr_full_run_plan(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                       const nlsr_ckpt *ft, const nlsr_realign_params *p, nlsr_run_plan *out);

/* The same for an in-place run: journal_bytes of the budget stay for the journal (its batch and
 * record buffers), and `written` is the fine-tune's target tensors' bytes (what the patched
 * tensors could be at most). */
int nlsr_full_run_plan_inplace(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                               const nlsr_ckpt *ft, const nlsr_realign_params *p,
                               uint64_t journal_bytes, nlsr_run_plan *out);

/* flags of nlsr_full_run and nlsr_full_pass_begin:
 *   NO_STORE  keep no patches in memory (tests; phase B then recomputes every patched module)
 *   ROWS      the single pass in row blocks: a module whose three tensors do not fit the budget
 *             (an eighth of what scratch leaves) is read in blocks of rows, three times (pass
 *             1: validation and histogram; 2: base and aligned only, the threshold's
 *             candidates; 3: mask, sums, kept values), each block from the page cache when it
 *             still holds it; phase B's units shrink to the same size
 *   SPLIT     (tests) with ROWS: the largest module is cut into two blocks or more */
#define NLSR_RUN_NO_STORE 1
#define NLSR_RUN_ROWS 2
#define NLSR_RUN_SPLIT 4

/* The plan `run` (and `run --in-place`) takes from rp: 1, a single pass with *flags for
 * nlsr_full_run / nlsr_full_pass_begin (whole modules, or row blocks when the budget holds
 * only those); 0, prepare + apply (other scorers); NLSR_E_BUDGET when the budget is below the
 * least any plan takes (the message names it). NLSR_RUN_PLAN (test builds) forces one:
 * patch-file, single, recompute, rows, rows-recompute. */
int nlsr_full_run_choose(nlsr_ctx *ctx, const nlsr_run_plan *rp, const nlsr_realign_params *p,
                         int *flags);

/* Steps 1-3 into out_dir (an existing empty folder, the job's temporary output). Assumes the
 * header checks (nlsr_full_check_sources, nlsr_full_check_finetuned) passed. */
int nlsr_full_run(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src, int is_reference,
                  const nlsr_ckpt *ft, const char *out_dir, const nlsr_realign_params *p,
                  int flags, nlsr_report *rep);

/* In place (src/jobs/inplace.c), in two steps so that the job can decide between them whether
 * this realignment is the one already recorded:
 *
 *   begin         phase A and the selection, as nlsr_full_run; `reserve` bytes of the budget
 *                 stay free (the journal's, and a --force rollback's). Hashes the source and
 *                 base target bytes in module order while it reads them: the fingerprints
 *                 prepare writes into the patch header (sources.*.fingerprint).
 *   fingerprints  those two XXH64s.
 *   inplace       phase B into the fine-tune's own shards through the journal `jn` (file id =
 *                 shard index): per patched tensor, the merged units compared with the bytes
 *                 they replace and only the grains that change journaled and written
 *                 (nlsr_journal_stage_changed); batches fill across tensors. The journal is
 *                 neither flushed nor synced nor completed (nlsr_journal_sync arms the last). *patched_bytes: the patched tensors' size.
 *   end           frees (NULL is a no-op). */
typedef struct nlsr_full_pass nlsr_full_pass;
struct nlsr_journal;
int nlsr_full_pass_begin(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                         int is_reference, const nlsr_ckpt *ft, const nlsr_realign_params *p,
                         int flags, uint64_t reserve, nlsr_report *rep, nlsr_full_pass **out);
void nlsr_full_pass_fingerprints(const nlsr_full_pass *P, uint64_t *base_fp, uint64_t *src_fp);
int nlsr_full_pass_inplace(nlsr_full_pass *P, struct nlsr_journal *jn, nlsr_report *rep,
                           uint64_t *patched_bytes);
void nlsr_full_pass_end(nlsr_full_pass *P);

#endif
