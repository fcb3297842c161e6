/* SPDX-License-Identifier: Apache-2.0 */
/* Progress of a long job on stderr: a bar with bytes done, rate and ETA, redrawn at most ten
 * times a second, only when stderr is a terminal and the context is not quiet. */
#ifndef NLSR_PLAN_PROGRESS_H
#define NLSR_PLAN_PROGRESS_H

#include <stdint.h>

#include "../common/ctx.h"

typedef struct nlsr_progress {
    int on;
    const char *label;
    uint64_t total, done;
    double t0, last;
    int width;       /* characters drawn last time, to blank them at the end */
} nlsr_progress;

/* Seconds on a monotonic clock. */
double nlsr_now(void);

void nlsr_progress_start(nlsr_progress *p, const nlsr_ctx *ctx, const char *label,
                         uint64_t total);
void nlsr_progress_add(nlsr_progress *p, uint64_t bytes);
/* Clears the bar (the job's own summary, if any, follows on a clean line). */
void nlsr_progress_end(nlsr_progress *p);

/* "1.50 GiB" into buf (binary units). */
const char *nlsr_fmt_bytes(double bytes, char *buf, size_t len);

#endif
