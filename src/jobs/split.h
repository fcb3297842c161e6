/* SPDX-License-Identifier: Apache-2.0 */
/* What the split jobs' files share (docs/SCALE.md): split_verify.c, split_apply.c; the
 * input locks of jobs.c. */
#ifndef NLSR_JOBS_SPLIT_H
#define NLSR_JOBS_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"

/* XXH64 (seed 0) of a whole regular file, read without following a final link through a buffer
 * charged to ctx's budget: 1, or 0 on any failure (missing, not a regular file, a read error,
 * no room for 64 KiB). */
int nlsr_file_xxh64(nlsr_ctx *ctx, const char *path, uint64_t *h);

/* Shared locks on the input folders of a job (jobs.c): fds[i] = -1 where none was taken. */
int nlsr_jobs_lock_inputs(nlsr_ctx *ctx, const char *const *paths, size_t n, int *fds);
void nlsr_jobs_unlock_inputs(int *fds, size_t n);

#endif
