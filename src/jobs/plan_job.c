/* SPDX-License-Identifier: Apache-2.0 */
/* The `nlsr plan` job (nlsr_plan_print, nlsr_plan_read): opens the checkpoints, asks the planner
 * (src/plan/planner.h) for the job's plan, adds run's own plan (realign_run.h) and the scorer's
 * (scorer.h), measures the disk when asked, and prints or returns it. A job, not the planner:
 * the planner never calls up into the jobs. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/ctx.h"
#include "../io/file.h"
#include "../plan/planner.h"
#include "../plan/progress.h"
#include "../plan/targets.h"
#include "../plan/timing.h"
#include "inplace.h"
#include "realign_run.h"
#include "scorer.h"

static char *parent_dir(const char *path)
{
    char *d = strdup(path);
    if (!d) return NULL;
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') d[--n] = '\0';
    char *s = strrchr(d, '/');
    if (!s) {
        free(d);
        return strdup(".");
    }
    if (s == d) s[1] = '\0';
    else *s = '\0';
    return d;
}

/* Opens the inputs and builds the plan of amplify (finetuned NULL) or run. */
static int open_and_plan(nlsr_ctx *ctx, const char *base, const char *aligned,
                         const char *finetuned, const nlsr_realign_params *pp,
                         nlsr_ckpt *ck[NLSR_PLAN_MAX_CK], nlsr_plan *plan)
{
    nlsr_err *e = &ctx->err;
    nlsr_realign_params p = pp ? *pp : NLSR_REALIGN_PARAMS_DEFAULT;
    NLSR_FAIL_IF(!base || !aligned, e, NLSR_E_USAGE, "plan needs --base and --aligned");
    const char *paths[NLSR_PLAN_MAX_CK] = {base, aligned, finetuned};
    int rc = 0;
    for (int k = 0; k < NLSR_PLAN_MAX_CK && rc == 0; k++)
        if (paths[k]) rc = nlsr_ckpt_open(ctx, paths[k], &ck[k]);
    for (int k = 0; k < NLSR_PLAN_MAX_CK && rc == 0; k++)
        if (ck[k] && ck[k]->kind != NLSR_CKPT_FULL)
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s: is a PEFT adapter; plans are for full checkpoints (adapters are "
                           "read whole)",
                           paths[k]);
    if (rc < 0) return rc;
    if (!finetuned) {
        rc = nlsr_plan_amplify(ctx, ck[0], ck[1], &p, plan);
    } else {
        /* The I/O of `run`: base, aligned and fine-tuned rows of every target module streamed
         * together, every other tensor copied from the fine-tuned checkpoint, the output shaped
         * like it. The full-weight job's own passes (a module that does not fit the budget is
         * read again) and its patch file come on top. */
        nlsr_job_desc j = {0};
        j.name = "run";
        for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) j.ck[k] = ck[k];
        j.role[0] = "base";
        j.role[1] = "aligned";
        j.role[2] = "finetuned";
        j.layout = 2;
        j.target_read = 7u;
        j.read_others = 1;
        j.passes = 1;
        j.writes = 1;
        j.targets = p.targets;
        j.ntargets = p.ntargets;
        j.budget = ctx->budget.limit;
        rc = nlsr_plan_build(ctx, &j, plan);
        if (rc == 0 && p.scorer.kind == NLSR_SCORER_MAGNITUDE) {
            rc = nlsr_full_run_plan(ctx, ck[0], ck[1], ck[2], &p, &plan->run);
            plan->has_run = rc == 0;
        }
    }
    return rc;
}

/* The predicted time of run's plan (src/plan/timing.h): the run plan the job itself would make
 * (in place: with the journal's reserve), its modules, the kernels calibrated now, the disk's
 * rates. *have = 0 when there is nothing to predict (amplify, another scorer, no rates). */
static int predict(nlsr_ctx *ctx, nlsr_ckpt *const ck[NLSR_PLAN_MAX_CK], const nlsr_plan *plan,
                   const nlsr_realign_params *p, int in_place, double rbw, double wbw,
                   const char *src, nlsr_timing_pred *t, int *have)
{
    *have = 0;
    if (!ck[2] || !plan->has_run || rbw <= 0 || wbw <= 0) return 0;
    nlsr_run_plan rp = plan->run;
    if (in_place)
        NLSR_FORWARD(nlsr_full_run_plan_inplace(ctx, ck[0], ck[1], ck[2], p,
                                                nlsr_inplace_single_reserve(ctx), &rp));
    nlsr_timing_mod *m = NULL;
    size_t nm = 0;
    NLSR_FORWARD(nlsr_timing_modules(ctx, ck[0], ck[1], ck[2], p, rp.single || rp.rows ? &rp : NULL, &m, &nm));
    nlsr_kernel_rates k;
    int rc = nlsr_timing_calibrate(ctx, 0, &k);
    if (rc == 0) {
        uint64_t ft_bytes = 0;
        for (size_t s = 0; s < ck[2]->nshards; s++) ft_bytes += ck[2]->shards[s]->file_size;
        if (rp.single || rp.rows)
            nlsr_timing_single(m, nm, in_place, p->report_path != NULL, ft_bytes,
                               plan->write_bytes,
                               nlsr_timing_patched_fraction(p, nm), &k, rbw, wbw, t);
        else
            nlsr_timing_patchfile(m, nm, ft_bytes, plan->write_bytes, &k, rbw, wbw, t);
        t->disk_source = src;
        *have = 1;
    }
    free(m);
    return rc;
}

/* The planner's printout with the prediction: after its text, or inside its JSON object. */
static int print_with_prediction(const nlsr_plan *plan, double rbw, double wbw, const char *src,
                                 const nlsr_timing_pred *t, int json, FILE *out)
{
    if (!json) {
        int rc = nlsr_plan_print_to(plan, rbw, wbw, src, 0, out);
        if (rc == 0) nlsr_timing_print(t, out);
        return rc;
    }
    cJSON *o = nlsr_plan_json(plan, rbw, wbw, src);
    if (!o) return -ENOMEM;
    nlsr_timing_json(o, t);
    return nlsr_plan_print_json(o, out);
}

static int plan_print(nlsr_ctx *ctx, const char *base, const char *aligned, const char *finetuned,
                      const nlsr_realign_params *params, int in_place, double read_bw,
                      double write_bw, const char *probe_dir, int json, FILE *out)
{
    nlsr_err *e = &ctx->err;
    nlsr_realign_params p = params ? *params : NLSR_REALIGN_PARAMS_DEFAULT;
    nlsr_ckpt *ck[NLSR_PLAN_MAX_CK] = {NULL, NULL, NULL};
    nlsr_plan plan;
    memset(&plan, 0, sizeof plan);
    char *pdir = NULL;
    int rc = open_and_plan(ctx, base, aligned, finetuned, &p, ck, &plan);
    if (rc < 0) goto done;
    const char *src = "given";
    double *rp = read_bw == 0 ? &read_bw : NULL, *wp = write_bw == 0 ? &write_bw : NULL;
    if (rp || wp) {
        /* Beside the aligned model, unless that is in a hub cache, which nlsr never writes
         * into: then the current folder. */
        if (!probe_dir)
            probe_dir = pdir = ck[1]->hub ? strdup(".") : parent_dir(ck[1]->dir);
        rc = pdir || probe_dir ? nlsr_plan_probe(ctx, ck[1], probe_dir, rp, wp)
                               : nlsr_fail(e, -ENOMEM, "out of memory");
        if (rc < 0) goto done;
        src = rp && wp ? "measured" : "measured and given";
    }
    if (read_bw < 0) read_bw = 0;
    if (write_bw < 0) write_bw = 0;
    /* A run's plan with the lowrank or wanda scorer also shows the scorer's passes and memory. */
    nlsr_timing_pred pred;
    int have = 0;
    if (finetuned && p.scorer.kind == NLSR_SCORER_MAGNITUDE)
        rc = predict(ctx, ck, &plan, &p, in_place, read_bw, write_bw, src, &pred, &have);
    if (rc < 0) goto done;
    if (finetuned && p.scorer.kind != NLSR_SCORER_MAGNITUDE)
        rc = nlsr_scorer_plan_print(ctx, &plan, ck[1], &p, read_bw, write_bw, src, json, out);
    else if (have)
        rc = print_with_prediction(&plan, read_bw, write_bw, src, &pred, json, out);
    else
        rc = nlsr_plan_print_to(&plan, read_bw, write_bw, src, json, out);
    if (rc < 0) nlsr_fail(e, rc, "plan: cannot print: %s", strerror(-rc));
    /* --mem-budget auto (the program's default): where the budget above came from. */
    else if (!json && ctx->budget_why[0])
        fprintf(out, "budget auto: %s\n", ctx->budget_why);

done:
    free(pdir);
    nlsr_plan_free(&plan);
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) nlsr_ckpt_free(ck[k]);
    return rc;
}

int nlsr_plan_print(nlsr_ctx *ctx, const char *base, const char *aligned, const char *finetuned,
                    const nlsr_realign_params *params, double read_bw, double write_bw,
                    const char *probe_dir, int json, FILE *out)
{
    return plan_print(ctx, base, aligned, finetuned, params, 0, read_bw, write_bw, probe_dir, json,
                      out);
}

int nlsr_plan_print_in_place(nlsr_ctx *ctx, const char *base, const char *aligned,
                             const char *finetuned, const nlsr_realign_params *params,
                             double read_bw, double write_bw, const char *probe_dir, int json,
                             FILE *out)
{
    return plan_print(ctx, base, aligned, finetuned, params, finetuned != NULL, read_bw, write_bw,
                      probe_dir, json, out);
}

static int plan_read_job(nlsr_ctx *ctx, const char *base, const char *aligned, const char *finetuned,
                   const nlsr_realign_params *params)
{
    nlsr_ckpt *ck[NLSR_PLAN_MAX_CK] = {NULL, NULL, NULL};
    nlsr_plan plan;
    memset(&plan, 0, sizeof plan);
    nlsr_stream *st = NULL;
    int rc = open_and_plan(ctx, base, aligned, finetuned, params, ck, &plan);
    if (rc == 0) rc = nlsr_stream_open(ctx, plan.units, plan.nunits, plan.depth, &st);
    uint64_t total = 0;
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) total += plan.read_bytes[k];
    if (rc == 0) nlsr_phase_begin(ctx, "read", NLSR_PHASE_READ, total, plan.nunits);
    const nlsr_unit *u;
    const unsigned char *const *data;
    volatile unsigned sink = 0;
    while (rc == 0 && (rc = nlsr_stream_next(st, &u, &data)) == 1) {
        rc = 0;
        /* Touch every page, as a job would: with mmap nothing is read otherwise. */
        unsigned acc = 0;
        for (int k = 0; k < u->nspans; k++) {
            uint64_t n = nlsr_span_bytes(&u->span[k]);
            for (uint64_t i = 0; i < n; i += 4096) acc += data[k][i];
        }
        sink += acc;
        nlsr_phase_units(ctx, 1);
    }
    (void)sink; /* read once so the touches cannot be optimized away */
    if (rc == 0) nlsr_phase_end(ctx);
    if (st) ctx->io_used = nlsr_stream_backend(st);
    nlsr_stream_close(st);
    nlsr_plan_free(&plan);
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) nlsr_ckpt_free(ck[k]);
    return rc;
}

int nlsr_plan_read(nlsr_ctx *ctx, const char *base, const char *aligned, const char *finetuned,
                   const nlsr_realign_params *params)
{
    int entered = nlsr_job_enter(ctx, "plan-read");
    int rc = plan_read_job(ctx, base, aligned, finetuned, params);
    nlsr_job_leave(ctx, entered);
    return rc;
}
