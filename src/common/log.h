/* SPDX-License-Identifier: Apache-2.0 */
/* The library's only voice: log lines and progress reports go to the callbacks the caller set
 * on the context (nlsr_ctx_set_log, nlsr_ctx_set_progress) and nowhere else; with none set
 * they are dropped. Every layer says things through here, so "the library never prints" is
 * one grep: no fprintf(stderr/stdout) outside src/cli.
 *
 * Progress is counted per phase: a job begins a phase with its planned byte total (from the
 * planner) and which counter moves it: the context's bytes read, its bytes written (the
 * writers count bytes as they hand them over, before a file is complete), or bytes the job
 * adds itself. The streams and writers tick the phase as they count, so a job that reads
 * through a stream reports without code of its own. Reports go out only from the thread that
 * began the phase (the job's), at most every min_interval seconds. */
#ifndef NLSR_COMMON_LOG_H
#define NLSR_COMMON_LOG_H

#include <stdint.h>

#include "ctx.h"

/* Seconds on a monotonic clock. */
double nlsr_now(void);

/* Formats one line and hands it to the log callback; dropped without one, and below WARN
 * when the context is quiet. Multi-line text: one call per line. */
void nlsr_log(nlsr_ctx *ctx, nlsr_log_level level, const char *fmt, ...) NLSR_PRINTF(3, 4);

enum {
    NLSR_PHASE_READ,    /* bytes done = the context's bytes read since the phase began */
    NLSR_PHASE_WRITTEN, /* bytes written (and handed to a writer) since the phase began */
    NLSR_PHASE_OWN      /* bytes the job adds with nlsr_phase_add */
};

/* A public job's entry and exit: names the job its phases report (a static string). Nested
 * entries (run in place prepares, then applies) keep the outer name; returns whether this
 * call named it, which nlsr_job_leave takes back, dropping an open phase. */
int nlsr_job_enter(nlsr_ctx *ctx, const char *job);
void nlsr_job_leave(nlsr_ctx *ctx, int entered);

/* Begins phase `phase` (a static string) of the current job, reports it at 0 and ends any
 * open phase. Units: 0 when the phase does not count them. */
void nlsr_phase_begin(nlsr_ctx *ctx, const char *phase, int counter, uint64_t bytes_total,
                      uint64_t units_total);
/* The counters moved: reports when the interval has passed (cheap otherwise). */
void nlsr_phase_tick(nlsr_ctx *ctx);
/* NLSR_PHASE_OWN: `bytes` more done. */
void nlsr_phase_add(nlsr_ctx *ctx, uint64_t bytes);
/* `n` more units done. */
void nlsr_phase_units(nlsr_ctx *ctx, uint64_t n);
/* The phase completed: one last report with finished = 1 and done = total. */
void nlsr_phase_end(nlsr_ctx *ctx);

#endif
