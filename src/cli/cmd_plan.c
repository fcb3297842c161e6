/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr plan`: what a run would read, write, hold in memory and take, without running it; with
 * --measure-read, the plan's reads alone, carried out and timed. It takes every job's options
 * (cli_opts.c), so that a job's command line with `plan` for its command prints its plan. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "nlsr.h"

static int plan_main(cli_args *a)
{
    int r = cli_check_scorer(a);
    if (r) return r;
    if (!a->base || !a->aligned) return cli_usage_error("plan needs --base B and --aligned A");
    if (a->p.scorer.kind != NLSR_SCORER_MAGNITUDE && !a->finetuned)
        return cli_usage_error("--scorer applies to the plan of a run: give --finetuned T");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    cli_apply_ctx(a, ctx);
    if (a->verbose) cli_print_params(a);
    if (nlsr_ctx_set_revision(ctx, a->revision) < 0) {
        int status = cli_fail(ctx, NLSR_E_USAGE);
        nlsr_ctx_free(ctx);
        return status;
    }
    nlsr_realign_params p = a->p;
    p.json_stdout = 0;
    if (a->measure_read) {
        /* Only the plan's reads, timed: the read side alone against `cat` and the like. */
        double t0 = cli_now();
        int rc = nlsr_plan_read(ctx, a->base, a->aligned, a->finetuned, &p);
        int status = rc < 0 ? cli_fail(ctx, rc) : 0;
        if (rc == 0) cli_summary("read", "", ctx, cli_now() - t0, a);
        nlsr_ctx_free(ctx);
        return status;
    }
    /* The probe writes beside where the output would go: --out's folder, if given. */
    char *probe = NULL;
    if (a->out) {
        probe = strdup(a->out);
        char *s = probe ? strrchr(probe, '/') : NULL;
        if (s && s != probe) *s = '\0';
        else if (probe) strcpy(probe, s ? "/" : ".");
    }
    int rc = a->in_place && a->finetuned
                 ? nlsr_plan_print_in_place(ctx, a->base, a->aligned, a->finetuned, &p,
                                            a->read_bw, a->write_bw, probe, a->p.json_stdout,
                                            stdout)
                 : nlsr_plan_print(ctx, a->base, a->aligned, a->finetuned, &p, a->read_bw,
                                   a->write_bw, probe, a->p.json_stdout, stdout);
    free(probe);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ctx_free(ctx);
    return status;
}

int cmd_plan(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_PLAN, argc, argv, &a);
    if (rc == 0) rc = plan_main(&a);
    cli_args_free(&a);
    return rc == CLI_DONE ? 0 : rc;
}
