/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr run`, `nlsr prepare`, `nlsr apply`: the parsed options (cli_args.c) onto the public
 * jobs. Options a command cannot honour are usage errors rather than silently ignored (e.g.
 * --beta for apply: the patch file fixes it). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_output.h"
#include "nlsr.h"

static int run_job(unsigned cmd, cli_args *a)
{
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        fprintf(stderr, "nlsr: error: out of memory\n");
        return 1;
    }
    cli_apply_ctx(a, ctx);
    if (a->verbose) cli_print_params(a);
    int rc = nlsr_ctx_set_revision(ctx, a->revision);
    if (rc < 0) {
        int status = cli_fail(ctx, rc);
        nlsr_ctx_free(ctx);
        return status;
    }
    if (cmd == K_RUN && a->part_count)
        /* A requeued or repeated part that finds its finished file leaves it (nlsr_run_part
         * checks that it is this job's run part). */
        rc = nlsr_run_part(ctx, a->base, a->aligned, a->reference, a->finetuned, a->out,
                           &a->p, a->part_index, a->part_count);
    else if (cmd == K_RUN)
        rc = nlsr_run(ctx, a->base, a->aligned, a->reference, a->finetuned, a->out, &a->p);
    else if (cmd == K_PREPARE && a->part_count) {
        /* A requeued or repeated part finds its finished file and leaves it. */
        rc = nlsr_patches_verify(ctx, a->out, (int)a->part_index, a->part_count);
        if (rc == 1) {
            if (!a->quiet)
                fprintf(stderr, "nlsr: %s: part %u/%u is already there and verifies; kept\n",
                        a->out, a->part_index, a->part_count);
            nlsr_ctx_free(ctx);
            return 0;
        }
        if (rc == 0)
            rc = nlsr_prepare_part(ctx, a->base, a->aligned, a->reference, a->out, &a->p,
                                   a->part_index, a->part_count);
    } else if (cmd == K_PREPARE)
        rc = nlsr_prepare(ctx, a->base, a->aligned, a->reference, a->out, &a->p);
    else if (a->part_count)
        rc = nlsr_apply_shard(ctx, a->patches, a->finetuned, a->out, &a->p, a->part_index,
                              a->part_count);
    else if (a->commit)
        rc = nlsr_apply_commit(ctx, a->patches, a->finetuned, a->out, &a->p);
    else
        rc = nlsr_apply(ctx, a->patches, a->finetuned, a->out, &a->p);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ctx_free(ctx);
    return status;
}

/* --in-place: checks of the options, then the per-checkpoint loop of cmd_rollback.c. */
static int inplace_job(unsigned cmd, cli_args *a)
{
    const char *name = a->name;
    if (a->out) return cli_usage_error("%s --in-place writes into the checkpoint: drop --out", name);
    if (a->revision)
        return cli_usage_error("%s --in-place does not take --revision: a hub cache's files are "
                               "shared by its revisions (copy the snapshot first)",
                               name);
    if (a->p.drop_other_weights)
        return cli_usage_error("%s --in-place cannot leave weights out of the checkpoint folder: "
                               "move them out, or write a new folder with --out", name);
    if (a->finetuned) a->pos[a->npos++] = a->finetuned;
    if (a->npos == 0)
        return cli_usage_error("%s --in-place needs the checkpoint folder%s", name,
                               cmd == K_RUN ? " (--finetuned DIR)" : "s (DIR... or --finetuned DIR)");
    if (cmd == K_RUN && a->npos > 1)
        return cli_usage_error("run --in-place takes one checkpoint; sweep a store with prepare "
                               "once and apply --in-place DIR...");
    if (a->p.report_path && a->npos > 1)
        return cli_usage_error("--report takes one checkpoint; --json summarizes a sweep");
    if (a->verbose) cli_print_params(a);
    cli_inplace c;
    memset(&c, 0, sizeof c);
    c.op = cmd == K_RUN ? CLI_INPLACE_RUN : CLI_INPLACE_APPLY;
    c.command = name;
    c.base = a->base;
    c.aligned = a->aligned;
    c.reference = a->reference;
    c.patches = a->patches;
    c.dirs = a->pos;
    c.ndirs = a->npos;
    c.p = a->p;
    c.json = c.p.json_stdout;
    c.p.json_stdout = 0; /* stdout carries the in-place summary */
    c.ip = a->ip;
    c.mem = a->mem;
    c.have_mem = a->have_mem;
    c.io = a->io;
    c.quiet = a->quiet;
    c.verbose = a->verbose;
    c.progress_interval = a->progress_interval;
    c.threads = a->threads;
    return cli_inplace_main(&c);
}

static int inplace_only(const cli_args *a)
{
    if (a->in_place) return 0;
    if (a->ip.wait || a->ip.follow_links || a->ip.dry_run)
        return cli_usage_error("%s: --wait, --follow-links and --dry-run go with --in-place",
                               a->name);
    if (a->npos) return cli_usage_error("%s: unexpected argument '%s'", a->name, a->pos[0]);
    return 0;
}

static int finish(cli_args *a, int rc)
{
    cli_args_free(a);
    return rc == CLI_DONE ? 0 : rc;
}

int cmd_run(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_RUN, argc, argv, &a);
    if (rc == 0) rc = cli_check_scorer(&a);
    if (rc == 0 && (!a.aligned == !a.reference))
        rc = cli_usage_error("run needs exactly one of --aligned and --reference");
    if (rc == 0 && a.part_count && a.in_place)
        rc = cli_usage_error("run --part writes a part file (--out FILE.nlsrp): not with "
                             "--in-place");
    if (rc == 0 && a.in_place) return finish(&a, inplace_job(K_RUN, &a));
    if (rc == 0) rc = inplace_only(&a);
    if (rc == 0 && (!a.finetuned || !a.out))
        rc = cli_usage_error("run needs --finetuned and --out");
    if (rc == 0) rc = run_job(K_RUN, &a);
    return finish(&a, rc);
}

int cmd_prepare(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_PREPARE, argc, argv, &a);
    if (rc == 0) rc = cli_check_scorer(&a);
    if (rc == 0 && (!a.aligned == !a.reference))
        rc = cli_usage_error("prepare needs exactly one of --aligned and --reference");
    if (rc == 0 && !a.out) rc = cli_usage_error("prepare needs --out FILE.nlsrp");
    if (rc == 0 && cli_given(&a, "seed") && a.p.scorer.kind != NLSR_SCORER_LOWRANK)
        rc = cli_usage_error("prepare takes --seed only for --scorer lowrank (the randomized "
                             "SVD); the selection's seed is apply's");
    if (rc == 0) rc = run_job(K_PREPARE, &a);
    return finish(&a, rc);
}

int cmd_apply(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_APPLY, argc, argv, &a);
    if (rc == 0 && (a.part_count || a.commit) && (a.in_place || (a.part_count && a.commit)))
        rc = cli_usage_error("apply: --shard (or --task) and --commit are steps of one split "
                             "apply into --out: one at a time, not with --in-place");
    if (rc == 0 && a.in_place)
        return finish(&a, a.patches ? inplace_job(K_APPLY, &a)
                                    : cli_usage_error("apply --in-place needs --patches FILE"));
    if (rc == 0) rc = inplace_only(&a);
    if (rc == 0 && (!a.patches || !a.finetuned || !a.out))
        rc = cli_usage_error("apply needs --patches, --finetuned and --out");
    if (rc == 0) rc = run_job(K_APPLY, &a);
    return finish(&a, rc);
}
