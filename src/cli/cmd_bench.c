/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr bench` (README "Benchmark your machine"): the parsed options (cli_opts.c) into
 * nlsr_bench_params; the library runs the sweep and checks the lists. */
#include <stdio.h>

#include "cli.h"
#include "cli_args.h"
#include "nlsr.h"

int cmd_bench(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_BENCH, argc, argv, &a);
    if (rc == 0 && a.synth.layers && !a.bench.synth)
        rc = cli_usage_error("bench: --layers goes with --synth");
    if (rc != 0) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    nlsr_bench_params bp = a.bench;
    bp.base = a.base;
    bp.aligned = a.aligned;
    bp.finetuned = a.finetuned;
    bp.synth_layers = a.synth.layers;
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    cli_apply_ctx(&a, ctx); /* -q, -v, --progress-interval; the backend and budget are bench's */
    rc = nlsr_bench(ctx, &bp, stdout);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}
