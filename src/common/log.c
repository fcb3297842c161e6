/* SPDX-License-Identifier: Apache-2.0 */
/* Log lines and progress reports (log.h). */
#define _GNU_SOURCE
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

double nlsr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *nlsr_log_level_name(nlsr_log_level level)
{
    switch (level) {
    case NLSR_LOG_WARN: return "warning";
    case NLSR_LOG_NOTICE: return "notice";
    case NLSR_LOG_INFO: return "info";
    case NLSR_LOG_DEBUG: return "debug";
    }
    return "?";
}

void nlsr_ctx_set_log(nlsr_ctx *ctx, nlsr_log_fn fn, void *user)
{
    ctx->log_fn = fn;
    ctx->log_user = user;
}

void nlsr_ctx_set_progress(nlsr_ctx *ctx, nlsr_progress_fn fn, void *user, double min_interval)
{
    ctx->progress_fn = fn;
    ctx->progress_user = user;
    ctx->progress_interval = min_interval > 0 ? min_interval : 0;
}

void nlsr_log(nlsr_ctx *ctx, nlsr_log_level level, const char *fmt, ...)
{
    if (!ctx || !ctx->log_fn) return;
    if (ctx->quiet && level != NLSR_LOG_WARN) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One line per call, whatever the message held. */
    for (char *c = line; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
    ctx->log_fn(ctx->log_user, level, line);
}

static uint64_t counter_now(const nlsr_ctx *ctx, int counter)
{
    if (counter == NLSR_PHASE_READ) return ctx->bytes_read;
    if (counter == NLSR_PHASE_WRITTEN) return ctx->bytes_written + ctx->write_pending;
    return 0;
}

static int mine(const nlsr_ctx *ctx)
{
    return ctx->phase.active && pthread_equal(ctx->phase.owner, pthread_self());
}

/* always: the phase's first and last reports, which go out whatever moved. */
static void report(nlsr_ctx *ctx, double now, int finished, int always)
{
    struct nlsr_phase *ph = &ctx->phase;
    nlsr_progress p;
    memset(&p, 0, sizeof p);
    p.job = ph->job;
    p.phase = ph->name;
    p.phase_index = ph->index;
    uint64_t done = ph->counter == NLSR_PHASE_OWN ? ph->own
                                                  : counter_now(ctx, ph->counter) - ph->base;
    /* The plan's total is the truth the user was promised; re-reads and side files may pass
     * it by a little, which a bar should not show as 103%. */
    if (finished || done > ph->bytes_total) done = ph->bytes_total;
    uint64_t units =
        finished || ph->units_done > ph->units_total ? ph->units_total : ph->units_done;
    if (!always && done == ph->said_done && units == ph->said_units) return;
    ph->said_done = done;
    ph->said_units = units;
    p.bytes_done = done;
    p.bytes_total = ph->bytes_total;
    p.units_total = ph->units_total;
    p.units_done = units;
    p.seconds = now - ph->t0;
    p.finished = finished;
    ph->last = now;
    ctx->progress_fn(ctx->progress_user, &p);
}

int nlsr_job_enter(nlsr_ctx *ctx, const char *job)
{
    if (ctx->job_name) return 0;
    ctx->job_name = job;
    memset(&ctx->phase, 0, sizeof ctx->phase);
    return 1;
}

void nlsr_job_leave(nlsr_ctx *ctx, int entered)
{
    if (!entered) return;
    ctx->job_name = NULL;
    memset(&ctx->phase, 0, sizeof ctx->phase);
}

void nlsr_phase_begin(nlsr_ctx *ctx, const char *phase, int counter, uint64_t bytes_total,
                      uint64_t units_total)
{
    if (mine(ctx)) nlsr_phase_end(ctx);
    struct nlsr_phase *ph = &ctx->phase;
    int index = ph->next_index;
    memset(ph, 0, sizeof *ph);
    ph->next_index = index + 1;
    ph->index = index;
    ph->job = ctx->job_name ? ctx->job_name : "job";
    ph->name = phase;
    ph->counter = counter;
    ph->base = counter_now(ctx, counter);
    ph->bytes_total = bytes_total;
    ph->units_total = units_total;
    ph->owner = pthread_self();
    ph->active = 1;
    ph->t0 = nlsr_now();
    if (ctx->progress_fn && !ctx->quiet) report(ctx, ph->t0, 0, 1);
}

void nlsr_phase_tick(nlsr_ctx *ctx)
{
    if (!ctx->progress_fn || ctx->quiet || !mine(ctx)) return;
    double now = nlsr_now();
    if (now - ctx->phase.last < ctx->progress_interval) return;
    report(ctx, now, 0, 0);
}

void nlsr_phase_add(nlsr_ctx *ctx, uint64_t bytes)
{
    if (!mine(ctx)) return;
    ctx->phase.own += bytes;
    nlsr_phase_tick(ctx);
}

void nlsr_phase_units(nlsr_ctx *ctx, uint64_t n)
{
    if (!mine(ctx)) return;
    ctx->phase.units_done += n;
    nlsr_phase_tick(ctx);
}

void nlsr_phase_end(nlsr_ctx *ctx)
{
    if (!mine(ctx)) return;
    if (ctx->progress_fn && !ctx->quiet) report(ctx, nlsr_now(), 1, 1);
    ctx->phase.active = 0;
}
