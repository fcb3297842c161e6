/* SPDX-License-Identifier: Apache-2.0 */
/* Full-weight realignment (METHOD.md steps 1-3 on safetensors checkpoints), streamed:
 *
 *   prepare: base + aligned (or a prebuilt reference) -> patch file. Per target module, in
 *            module order: pass 1 streams base and aligned rows, checks finiteness, hashes the
 *            bytes (content fingerprints) and builds the 65536-bin histogram of the scores'
 *            high 16 bits; pass 2 decides the exact k-th smallest score inside the bucket that
 *            holds rank k (its candidates through nlsr_kth_inplace, or a second histogram of
 *            the low 16 bits when the candidates do not fit the budget); pass 3 emits the mask
 *            and the values under it into the patch file. A module whose raw bytes fit the
 *            budget is cached after pass 1, so passes 2 and 3 read nothing.
 *   apply:   patch file + fine-tuned -> output checkpoint. Pass 1 streams the fine-tuned
 *            target tensors beside the patch blocks (finiteness, masked cosine); selection;
 *            pass 2 copies every shard cheaply and rewrites the patched tensors' bytes in the
 *            copies (so every header byte and every other tensor stays identical). The
 *            fine-tune is read once when its target tensors fit half the budget left (kept
 *            from pass 1); otherwise pass 2 streams the patched tensors a second time. Base
 *            and aligned are never read by apply.
 *
 * The public jobs (jobs.c) open the checkpoints, dispatch PEFT inputs to the LoRA jobs and
 * handle the output folder with the nlsr_outdir_* helpers below, which the LoRA jobs may use
 * too. */
#ifndef NLSR_PLAN_REALIGN_FULL_H
#define NLSR_PLAN_REALIGN_FULL_H

#include <stddef.h>
#include <stdint.h>

#include "../io/checkpoint.h"
#include "../io/outpath.h"
#include "../io/patchfile.h"
#include "report.h"

/* Elements per patch block (and per streamed unit) unless tuned: bounds every per-block buffer
 * at a few MiB whatever the matrix size. */
#define NLSR_FULL_BLOCK_ELEMS 65536u

/* Knobs for tests; NULL means the defaults (all zero). The patch file is the same whatever the
 * knobs, except for block_elems, which changes only its block layout. */
typedef struct nlsr_full_tuning {
    int force_stream;     /* never cache a module in memory: passes 2 and 3 re-read */
    int force_lowhist;    /* decide the threshold bucket by its low-16-bit histogram */
    uint64_t block_elems; /* 0 = NLSR_FULL_BLOCK_ELEMS */
    int apply_no_cache;   /* apply: stream the patched tensors again in pass 2 */
} nlsr_full_tuning;

/* Adds a module's content hash to a checkpoint's fingerprint (docs/FORMAT.md "sources"). */
void nlsr_full_fp_add_module(nlsr_xxh64_state *h, uint64_t hm);

/* Step 1 and the score for `cnt` elements starting at element `first` of a module (prepare's
 * arithmetic, which run repeats): fb = base as f32, es = e_s in the source dtype, fe = e_s as
 * f32, fs = |e_s - b| (fa is scratch). With validate, every input and e_s must be finite: the
 * first that is not is named (file, tensor, element, value). */
typedef struct nlsr_step1_mod {
    const char *base_file, *src_file; /* the shards holding the tensor, for messages */
    const char *name;                 /* the tensor */
    nlsr_dtype adt, bdt;              /* source (aligned or reference) and base dtypes */
    int is_ref;                       /* the source is a prebuilt reference (e_s = a) */
    double beta;
} nlsr_step1_mod;
typedef struct nlsr_step1_buf {
    float *fa, *fb, *fe, *fs;
    unsigned char *es;
} nlsr_step1_buf;
int nlsr_full_step1(nlsr_ctx *ctx, const nlsr_step1_mod *m, uint64_t first, size_t cnt,
                    const unsigned char *araw, const unsigned char *braw, int validate,
                    const nlsr_step1_buf *b);
/* Fails with NLSR_E_VALUE: element el of `tensor` would be written as v, which the fine-tune's
 * dtype dt cannot hold (overflow to Inf); source names where v came from (the aligned or
 * reference shard, or the patch file). One message for every plan. */
int nlsr_full_dest_overflow(nlsr_ctx *ctx, const char *ft_file, const char *tensor, uint64_t el,
                            float v, nlsr_dtype dt, const char *source);

/* The content fingerprints of the patch header's sources (sources.*.fingerprint): one XXH64
 * per checkpoint over, per target module in module order, the u64 LE of the module's own XXH64
 * of this head (name, dtype name, each dimension as u64 LE) and then the tensor's raw bytes
 * (nlsr_full_fp_add_module), so that split parts combine. The in-place single pass computes
 * the same while it reads (realign_run.h), which is how its key agrees with apply's. */
void nlsr_full_fp_tensor_head(nlsr_xxh64_state *h, const st_tensor *t);

/* Header-only checks before anything is read or written: base and source (aligned or
 * reference) have the same target tensors (per p->targets) with the same shapes, float dtypes
 * (the aligned one writable as F32/F16/BF16/F64). Messages name both checkpoints and the tensor. */
int nlsr_full_check_sources(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                            int is_reference, const nlsr_realign_params *p);
/* Header-only checks of a fine-tuned checkpoint against the source model: the same tensor
 * names and shapes, float where the source is float, targets in a writable float dtype. */
int nlsr_full_check_finetuned(nlsr_ctx *ctx, const nlsr_ckpt *src, const nlsr_ckpt *ft,
                              const nlsr_realign_params *p);
/* The same check against the model a patch file was prepared for. */
int nlsr_full_check_patch(nlsr_ctx *ctx, const nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                          const nlsr_realign_params *p);

/* Steps 1-2 into `out_file` (written under a temporary name, renamed when complete). Assumes
 * nlsr_full_check_sources passed. rep (may be NULL) gets one module per target with its mask
 * count, and the patch and model sizes in its summary. */
int nlsr_full_prepare(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                      int is_reference, const char *out_file, const nlsr_realign_params *p,
                      const nlsr_full_tuning *tune, nlsr_report *rep);
/* Part part_index of part_count of that (docs/SCALE.md): the modules [M i/N, M (i+1)/N) of the
 * M target modules, and a "part" record in the header for nlsr_reduce. part_count 0: whole. */
int nlsr_full_prepare_part(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                           int is_reference, const char *out_file, const nlsr_realign_params *p,
                           const nlsr_full_tuning *tune, unsigned part_index,
                           unsigned part_count, nlsr_report *rep);

/* The parameters a full patch file was prepared with (beta, sparsity, targets) copied over *p;
 * the target strings point into pf's header. *names must be freed (free()). */
int nlsr_full_patch_params(nlsr_ctx *ctx, const nlsr_pf_reader *pf, nlsr_realign_params *p,
                           const char ***names);

/* run --part (split_run.c): every module's similarity of pf against ft into rep (apply's pass
 * 1, the same arithmetic in the same order) and each module's content hash of ft in
 * ft_hash[module] (as sources.*.fingerprint hashes a module); no selection, nothing written. */
int nlsr_full_similarities(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                           const nlsr_realign_params *p, nlsr_report *rep, uint64_t *ft_hash);

/* A checkpoint as the patch header's sources record it: path (and snapshot), tensors, bytes,
 * and the fingerprint fp holds. NULL on out-of-memory. */
cJSON *nlsr_full_source_json(const nlsr_ckpt *ck, const nlsr_xxh64_state *fp);

/* Step 3 into `out_dir`, an existing empty folder (the job's temporary output). Assumes
 * nlsr_full_check_patch passed. rep gets every module with similarity and selection. */
int nlsr_full_apply(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft, const char *out_dir,
                    const nlsr_realign_params *p, const nlsr_full_tuning *tune,
                    nlsr_report *rep);

/* One task of a split apply (docs/SCALE.md): the same similarities and selection (every
 * module's: the whole fine-tune's target tensors are read), but only the shards k with
 * write_shard[k] are written into out_dir, and no side file. */
int nlsr_full_apply_shards(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                           const char *out_dir, const nlsr_realign_params *p,
                           const unsigned char *write_shard, nlsr_report *rep);

/* Step 3 in place: the same as nlsr_full_apply, but the patched tensors' bytes are overwritten
 * in ft's own shards through the undo journal `jn` (src/io/journal.h), in which the caller has
 * registered ft's shards in shard order (file id = shard index). Only the bytes of patched
 * tensors are written; the journal is flushed but not synced or completed (the caller does
 * both, see src/plan/inplace.c). */
struct nlsr_journal;
int nlsr_full_apply_journal(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *ft,
                            struct nlsr_journal *jn, const nlsr_realign_params *p,
                            const nlsr_full_tuning *tune, nlsr_report *rep);

/* ---- output folders (shared with the LoRA jobs) ------------------------------------------ */

/* The checks before a job writes: `out` (kind FILE or DIR; NULL for none), and p's report and
 * mask file, each against the inputs (nlsr_out_check, outpath.h) and against one another.
 * p may be NULL (no report, no mask, no force). */
int nlsr_outputs_check(nlsr_ctx *ctx, const char *out, nlsr_out_kind kind,
                       const nlsr_realign_params *p, const char *const *inputs, size_t ninputs);
/* Checks what sits at `out_dir` (outpath.h's --force policy), then creates the temporary
 * folder "<out_dir>.nlsr-tmp-XXXXXX" beside it, marked as nlsr's (*tmp_dir, malloc'd). */
int nlsr_outdir_begin(nlsr_ctx *ctx, const char *out_dir, int force, char **tmp_dir);
/* fsyncs tmp_dir and moves it to out_dir (replacing an existing one only if force, and only
 * one nlsr wrote or an empty one). */
int nlsr_outdir_commit(nlsr_ctx *ctx, const char *tmp_dir, const char *out_dir, int force);
/* Removes the temporary folder without following links (best effort); NULL is a no-op. */
void nlsr_outdir_abort(const char *tmp_dir);

#endif
