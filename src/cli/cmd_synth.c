/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr synth`: synthetic checkpoints for tests and benchmarks. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "nlsr.h"

int cmd_synth(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_SYNTH, argc, argv, &a);
    if (rc == 0 && (!a.out || !a.have_role))
        rc = cli_usage_error("synth needs --role base|aligned|finetuned and --out DIR");
    if (rc != 0) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    a.synth.force = a.p.force;
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    cli_apply_ctx(&a, ctx);
    double t0 = cli_now();
    rc = nlsr_synth(ctx, &a.synth, a.out);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    if (rc == 0) cli_summary("synth", a.out, ctx, cli_now() - t0, &a);
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}
