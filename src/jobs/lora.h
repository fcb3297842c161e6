/* SPDX-License-Identifier: Apache-2.0 */
/* PEFT LoRA adapters through the three NLSR steps (METHOD.md, LoRA section).
 *
 * For LoRA the base is the zero adapter, so the safety reference needs only the aligned adapter.
 * A module is a <prefix>.lora_A.weight / <prefix>.lora_B.weight pair; its name in reports is the
 * prefix. Masks are per factor (magnitude rule), the similarity is taken on the masked products
 * B A through r x r Gram matrices, and the transplant is per factor. Outputs are PEFT adapter
 * folders (adapter_model.safetensors with the fine-tuned adapter's names, order, dtypes and
 * metadata, adapter_config.json copied). The public jobs (nlsr_amplify, nlsr_prepare,
 * nlsr_apply, nlsr_run) dispatch here when their inputs are PEFT adapters. */
#ifndef NLSR_PLAN_LORA_H
#define NLSR_PLAN_LORA_H

#include "nlsr.h"

/* Step 1: the safety reference adapter from the aligned adapter, per p->amplify (paper:
 * B_e = (1+beta) B_a; authors: every factor p*alpha + p*alpha), into the folder out_dir. */
int nlsr_lora_amplify(nlsr_ctx *ctx, const nlsr_ckpt *aligned, const char *out_dir,
                      const nlsr_realign_params *p);

/* Steps 1-2: the prepared patches file for an aligned adapter (is_reference == 0: amplified
 * first) or an already amplified reference (is_reference != 0). */
int nlsr_lora_prepare(nlsr_ctx *ctx, const nlsr_ckpt *ref_or_aligned, int is_reference,
                      const char *out_file, const nlsr_realign_params *p);

/* Step 3 from a prepared patches file: similarity, selection, per-factor transplant into the
 * adapter folder out_dir. */
int nlsr_lora_apply(nlsr_ctx *ctx, const char *patches, const nlsr_ckpt *finetuned,
                    const char *out_dir, const nlsr_realign_params *p);

/* All three steps in one pass, no patches file. */
int nlsr_lora_run(nlsr_ctx *ctx, const nlsr_ckpt *aligned_or_ref, int is_reference,
                  const nlsr_ckpt *finetuned, const char *out_dir, const nlsr_realign_params *p);

/* Writes the masks an amplify + mask pass would find (or, with is_reference, find on the given
 * reference) as a safetensors file of 0/1 tensors in the authors' layout (keys
 * <prefix>.lora_A.default / <prefix>.lora_B.default), the format --mask reads. */
int nlsr_lora_write_mask(nlsr_ctx *ctx, const nlsr_ckpt *ref_or_aligned, int is_reference,
                         const char *out_file, const nlsr_realign_params *p);

/* ---- shared by src/plan/lora*.c only ------------------------------------------------------ */

#include <stdint.h>

#include "report.h"

/* One LoRA module of an adapter: the pair <prefix>.lora_A.weight (r x in) and
 * <prefix>.lora_B.weight (out x r), with what step 1 and 2 made of it. */
typedef struct lora_mod {
    char *prefix;          /* owned; the module's name in reports */
    size_t ta, tb;         /* tensor indexes of A and B in the adapter the module came from */
    nlsr_dtype da, db;     /* their dtypes */
    uint64_t r, in, out;
    float *ea, *eb;        /* reference values e_s (exact in the source dtype); in the block */
    uint8_t *ma, *mb;      /* masks, 0/1; in the block */
    uint64_t mask_count;   /* set elements of ma and mb together */
} lora_mod;

/* The prepared patches of an adapter held in memory: every module's reference factors and
 * masks, in module order (the A tensors' names sorted bytewise). */
typedef struct lora_prep {
    size_t n;
    lora_mod *m;           /* owned */
    void *block;           /* ea, eb, ma, mb of every module; charged to the budget */
    size_t block_bytes;
    /* adapter_config.json of the source, checked against the fine-tuned adapter's */
    int lora_r;
    double lora_alpha;
    size_t ntargets;
    char **targets;        /* owned */
} lora_prep;

/* The modules of a PEFT adapter (target modules per p->targets), validated: both factors
 * present, 2-D, ranks agreeing, float dtypes, no empty dimension. No block is allocated. */
int lora_list_modules(nlsr_ctx *ctx, const nlsr_ckpt *ck, const nlsr_realign_params *p,
                      lora_prep *out);
/* Charges and carves the block for a listed module set. */
int lora_prep_alloc(nlsr_ctx *ctx, lora_prep *P);
void lora_prep_free(nlsr_ctx *ctx, lora_prep *P);
/* Steps 1-2 from an aligned adapter (amplified per p) or a reference (is_reference): the
 * reference factors and the masks (magnitude rule, or p->mask_path). */
int lora_prep_build(nlsr_ctx *ctx, const nlsr_ckpt *src, int is_reference,
                    const nlsr_realign_params *p, lora_prep *P);
/* Step 3 into out_dir: P's modules (`ref_name` names their source in messages) against the
 * fine-tuned adapter, filling and emitting `rep`, which the caller initialized when the job
 * started (so that its time and byte counts cover the whole job) and frees. */
int lora_realign(nlsr_ctx *ctx, const lora_prep *P, const char *ref_name, const nlsr_ckpt *ft,
                 const char *out_dir, const nlsr_realign_params *p, nlsr_report *rep);
/* The masks of P as a safetensors file in the authors' layout. */
int lora_write_masks(nlsr_ctx *ctx, const lora_prep *P, const char *path, int force);

#endif
