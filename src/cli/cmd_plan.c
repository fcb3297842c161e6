/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr plan`: what a run would read, write, hold in memory and take, without running it; with
 * --measure-read, the plan's reads alone, carried out and timed. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_scorer.h"
#include "nlsr.h"

/* "1.5G" or "1.5G,800M": read and write speeds per second (one value: both). */
static int parse_bandwidth(const char *v, double *rd, double *wr)
{
    char buf[64];
    if (strlen(v) >= sizeof buf) return -1;
    strcpy(buf, v);
    char *comma = strchr(buf, ',');
    if (comma) *comma = '\0';
    uint64_t a = 0, b = 0;
    if (nlsr_parse_size(buf, &a) != 0 || a == 0) return -1;
    b = a;
    if (comma && (nlsr_parse_size(comma + 1, &b) != 0 || b == 0)) return -1;
    *rd = (double)a;
    *wr = (double)b;
    return 0;
}

int cmd_plan(int argc, char **argv)
{
    const char *base = NULL, *aligned = NULL, *finetuned = NULL, *out = NULL, *revision = NULL;
    double rbw = 0, wbw = 0;
    int measure = 0;
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    cli_common c = {0};
    cli_scorer sc = {&p.scorer, 0};
    int has_arg = 0;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        int r = cli_common_opt(argc, argv, &i, &c);
        if (r == 1) continue;
        if (r != 0) return r;
        /* Step 2's scorer and the sparsity its rank depends on: the plan shows its passes. */
        if (cli_scorer_is_opt(o, &has_arg)) {
            if (has_arg && i + 1 >= argc) return cli_usage_error("%s needs a value", o);
            r = cli_scorer_set(&sc, o, has_arg ? argv[++i] : NULL);
            if (r) return r;
            continue;
        }
        if (strcmp(o, "--sparsity") == 0) {
            char *end;
            if (i + 1 >= argc) return cli_usage_error("%s needs a value", o);
            const char *v = argv[++i];
            p.sparsity = strtod(v, &end);
            if (end == v || *end != '\0' || !(p.sparsity >= 0 && p.sparsity <= 1))
                return cli_usage_error("--sparsity must lie in [0, 1], got '%s'", v);
            continue;
        }
        if (strcmp(o, "--no-time") == 0) {
            rbw = wbw = -1;
            continue;
        }
        if (strcmp(o, "--measure-read") == 0) {
            measure = 1;
            continue;
        }
        int known = strcmp(o, "--base") == 0 || strcmp(o, "--aligned") == 0 ||
                    strcmp(o, "--finetuned") == 0 || strcmp(o, "--bandwidth") == 0 ||
                    strcmp(o, "--out") == 0 || strcmp(o, "--revision") == 0;
        if (!known) return cli_usage_error("plan: unknown option or argument '%s'", o);
        if (i + 1 >= argc) return cli_usage_error("%s needs a value", o);
        const char *v = argv[++i];
        if (strcmp(o, "--base") == 0) base = v;
        else if (strcmp(o, "--aligned") == 0) aligned = v;
        else if (strcmp(o, "--finetuned") == 0) finetuned = v;
        else if (strcmp(o, "--out") == 0) out = v;
        else if (strcmp(o, "--revision") == 0) revision = v;
        else if (parse_bandwidth(v, &rbw, &wbw) != 0)
            return cli_usage_error("--bandwidth needs READ[,WRITE] speeds per second such as "
                                   "1.5G,800M, not '%s'", v);
    }
    if (!base || !aligned) return cli_usage_error("plan needs --base B and --aligned A");
    int r = cli_scorer_finish(&sc);
    if (r) return r;
    if (p.scorer.kind != NLSR_SCORER_MAGNITUDE && !finetuned)
        return cli_usage_error("--scorer applies to the plan of a run: give --finetuned T");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    cli_common_apply(&c, ctx);
    if (nlsr_ctx_set_revision(ctx, revision) < 0) {
        int status = cli_fail(ctx, NLSR_E_USAGE);
        nlsr_ctx_free(ctx);
        return status;
    }
    if (measure) {
        /* Only the plan's reads, timed: the read side alone against `cat` and the like. */
        double t0 = cli_now();
        int rc = nlsr_plan_read(ctx, base, aligned, finetuned, &p);
        int status = rc < 0 ? cli_fail(ctx, rc) : 0;
        if (rc == 0)
            cli_summary("read", "", ctx, cli_now() - t0, c.have_mem ? c.mem : 1ull << 30, &c);
        nlsr_ctx_free(ctx);
        return status;
    }
    /* The probe writes beside where the output would go: --out's folder, if given. */
    char *probe = NULL;
    if (out) {
        probe = strdup(out);
        char *s = probe ? strrchr(probe, '/') : NULL;
        if (s && s != probe) *s = '\0';
        else if (probe) strcpy(probe, s ? "/" : ".");
    }
    int rc = nlsr_plan_print(ctx, base, aligned, finetuned, &p, rbw, wbw, probe, c.json, stdout);
    free(probe);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ctx_free(ctx);
    return status;
}
