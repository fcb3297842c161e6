/* SPDX-License-Identifier: Apache-2.0 */
#define _POSIX_C_SOURCE 200809L
/* `nlsr bench` (README "Benchmark your machine"): options into nlsr_bench_params; the library
 * runs the sweep. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nlsr.h"
#include "cli.h"
#include "cli_output.h"

static const char BENCH_USAGE[] =
    "usage: nlsr bench --synth tiny|llama-8b|llama-70b [--layers N]\n"
    "                  | --base B --aligned A --finetuned T\n"
    "       [--budgets 1G[,4G,...]] [--io uring,pread[,mmap]]\n"
    "       [--jobs run[,run-in-place,prepare,apply,amplify]] [--reps N] [--warm | --drop-caches]\n"
    "       [--scratch DIR] [--csv FILE] [--json FILE] [--plot FILE.svg] [-q]\n"
    "time jobs on this machine across memory budgets and I/O backends, each run cold in a\n"
    "child process, against the disks' own rates measured in the same run (nlsr(1))\n";

int cmd_bench(int argc, char **argv)
{
    nlsr_bench_params bp = NLSR_BENCH_PARAMS_DEFAULT;
    int quiet = 0;
    static const char *const valued[] = {"--base", "--aligned", "--finetuned", "--synth",
                                         "--layers", "--scratch", "--budgets", "--io", "--jobs",
                                         "--reps", "--csv", "--json", "--plot"};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            fputs(BENCH_USAGE, stdout);
            return 0;
        }
        if (!strcmp(o, "--warm")) { bp.warm = 1; continue; }
        if (!strcmp(o, "--drop-caches")) { bp.drop_caches = 1; continue; }
        if (!strcmp(o, "-q") || !strcmp(o, "--quiet")) { quiet = 1; continue; }
        int known = 0;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++) known |= !strcmp(o, valued[k]);
        if (!known) return cli_usage_error("bench: unknown option or argument '%s'", o);
        if (i + 1 >= argc) return cli_usage_error("%s needs a value", o);
        const char *v = argv[++i];
        char *end;
        if (!strcmp(o, "--base")) bp.base = v;
        else if (!strcmp(o, "--aligned")) bp.aligned = v;
        else if (!strcmp(o, "--finetuned")) bp.finetuned = v;
        else if (!strcmp(o, "--synth")) bp.synth = v;
        else if (!strcmp(o, "--scratch")) bp.scratch = v;
        else if (!strcmp(o, "--budgets")) bp.budgets = v;
        else if (!strcmp(o, "--io")) bp.ios = v;
        else if (!strcmp(o, "--jobs")) bp.jobs = v;
        else if (!strcmp(o, "--csv")) bp.csv = v;
        else if (!strcmp(o, "--json")) bp.json = v;
        else if (!strcmp(o, "--plot")) bp.plot = v;
        else {
            errno = 0;
            long n = strtol(v, &end, 10);
            if (end == v || *end || errno || n < 1 || n > 1000)
                return cli_usage_error("%s needs a count from 1 to 1000, not '%s'", o, v);
            if (!strcmp(o, "--layers")) bp.synth_layers = (int)n;
            else bp.reps = (int)n;
        }
    }
    if (bp.synth_layers && !bp.synth) return cli_usage_error("bench: --layers goes with --synth");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    cli_output_install(ctx, quiet ? -1 : 0, -1);
    int rc = nlsr_bench(ctx, &bp, stdout);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ctx_free(ctx);
    return status;
}
