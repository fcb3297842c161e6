/* SPDX-License-Identifier: Apache-2.0 */
/* In-place realignment and rollback (the public nlsr_apply_inplace, nlsr_run_inplace and
 * nlsr_rollback): the folder's lock, its undo journal (src/io/journal.h) and its state file.
 *
 * The folder holds, besides the checkpoint:
 *   .nlsr.lock         flock(2) target; stays (see src/io/lock.h)
 *   .nlsr-journal      the undo journal of the last realignment (docs/JOURNAL.md)
 *   .nlsr-state.json   what was applied: {"format": "nlsr-state", "version": 1, "tool",
 *                      "job", "kind", "key", "patch_fingerprint", "patch_params", "select",
 *                      "journal" (16 hex digits or null), "result", "modules", "patched",
 *                      "bytes_written", "ranges", "files": [{"name", "size", "mtime_ns"}],
 *                      "time", "previous" (the state this one was stacked on, or null)}
 *
 * Order of an in-place job, after every header check: lock; refuse an unfinished journal;
 * compare the key with the state (same: nothing to do; other: refuse, or with force roll back
 * or stack); open every shard for writing (refusing links and read-only files); realign with
 * each batch journaled before it is written; fsync the data; write the state (naming the
 * journal); mark the journal complete. Rollback marks the journal, restores, reverts the state
 * if it names this journal, and deletes the journal: every step can be repeated after a crash.
 */
#ifndef NLSR_PLAN_INPLACE_H
#define NLSR_PLAN_INPLACE_H

#include <stdint.h>

#include "../io/patchfile.h"
#include "../common/ctx.h"

#define NLSR_STATE_NAME ".nlsr-state.json"
#define NLSR_STATE_VERSION 1

/* XXH64 (seed 0) identifying the content of a patch file: its kind, its params object (as
 * cJSON prints it unformatted) and, per module and tensor, the names, role and every block's
 * element range, mask count, decompressed size and checksum. Paths and timestamps are left out,
 * so the patches `run` prepares and the same patches from `prepare` agree. */
uint64_t nlsr_patch_fingerprint(const nlsr_pf_reader *pf);

/* The identity of a realignment: XXH64 over "nlsr-inplace-v1", the patch fingerprint and the
 * selection parameters (mode, semantics, prune_rate, epsilon, tau, seed). */
uint64_t nlsr_inplace_key(uint64_t patch_fp, const nlsr_select_params *sp);
/* Key scheme 2 (states record "key_scheme": 2), for full weights: XXH64 over the text
 * "nlsr-inplace-v2", "full", the base's and source's content fingerprints (XXH64 of their
 * target tensors' bytes in module order: what prepare writes into the patch header and what
 * the single pass hashes while it reads), the source's role, beta and sparsity (%.17g), the
 * target names sorted, the scorer ("magnitude"; another scorer adds the patch fingerprint,
 * since its scores depend on more than base and aligned) and the selection parameters. No
 * patch file is needed, and patches prepared with any block size give the same key. LoRA keeps
 * nlsr_inplace_key (its patch file is small and always written). docs/JOURNAL.md. */
typedef struct nlsr_inplace_ident {
    uint64_t base_fp, src_fp;
    int is_ref;
    double beta, sparsity;
    const char *const *targets; /* NULL: the default names */
    size_t ntargets;
    int scorer_magnitude;
    uint64_t patch_fp;          /* other scorers only */
} nlsr_inplace_ident;
uint64_t nlsr_inplace_key_full(const nlsr_inplace_ident *id, const nlsr_select_params *sp);

/* Memory run --in-place's single pass sets aside for the journal's buffers (an eighth of the
 * budget, within bounds): its run plan is nlsr_full_run_plan_inplace with this reserve. */
uint64_t nlsr_inplace_single_reserve(const nlsr_ctx *ctx);

#endif
