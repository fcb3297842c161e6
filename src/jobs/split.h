/* SPDX-License-Identifier: Apache-2.0 */
/* What the split jobs' files share (docs/SCALE.md): split_verify.c, split_apply.c,
 * split_select.c (the patch header's "finetuned" record), split_run.c; the input locks of
 * jobs.c. */
#ifndef NLSR_JOBS_SPLIT_H
#define NLSR_JOBS_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"
#include "../io/patchfile.h"

/* XXH64 (seed 0) of a whole regular file, read without following a final link through a buffer
 * charged to ctx's budget: 1, or 0 on any failure (missing, not a regular file, a read error,
 * no room for 64 KiB). */
int nlsr_file_xxh64(nlsr_ctx *ctx, const char *path, uint64_t *h);

/* Shared locks on the input folders of a job (jobs.c): fds[i] = -1 where none was taken. */
int nlsr_jobs_lock_inputs(nlsr_ctx *ctx, const char *const *paths, size_t n, int *fds);
void nlsr_jobs_unlock_inputs(int *fds, size_t n);

/* The "finetuned" record of a patch header (docs/FORMAT.md): per module of the file the
 * fine-tune's content hash (as sources.*.fingerprint hashes a module) and the similarity
 * apply computes; the selection options run --part was given; in a reduced file also the
 * selection (has_selection: probability and draw, NaN where the mode has none, and patched). */
typedef struct nlsr_split_sel {
    size_t n;
    uint64_t *fp;
    double *sim, *prob, *draw;
    int *patched;
    int has_selection;
    nlsr_select_params sp;
} nlsr_split_sel;

int nlsr_split_sel_alloc(nlsr_split_sel *s, size_t n);
void nlsr_split_sel_free(nlsr_split_sel *s);
/* pf's record: 0 (*s zeroed) when it has none, 1 when read, or NLSR_E_FORMAT naming the file
 * (and the module) when malformed. */
int nlsr_split_sel_read(nlsr_ctx *ctx, const nlsr_pf_reader *pf, nlsr_split_sel *s);
/* The selection options of a file holding a recorded selection: 1 and *sp, or 0 when it holds
 * none. */
int nlsr_split_sel_select(nlsr_ctx *ctx, const nlsr_pf_reader *pf, nlsr_select_params *sp);
/* Adds s's items ("select", "module_fingerprints", "similarities", and "selection" when
 * s->has_selection) to the record object ft. 0 or -ENOMEM. */
int nlsr_split_sel_json(struct cJSON *ft, const nlsr_split_sel *s);

/* A copy of a patch header item whose non-integer numbers are printed as nlsr_json_number
 * prints them (cJSON's own printing may differ), so that a header rebuilt from a read one has
 * the writer's bytes. NULL on out-of-memory. */
struct cJSON *nlsr_split_header_dup(const struct cJSON *item);
/* Copies module m of r into w through the writer (split_reduce.c): each block read, checked,
 * decoded and encoded again, so the result has the bytes one prepare writes. */
int nlsr_split_copy_module(nlsr_pf_writer *w, nlsr_pf_reader *r, const nlsr_pf_module *m);

#endif
