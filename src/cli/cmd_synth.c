/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr synth`: synthetic checkpoints for tests and benchmarks. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nlsr.h"

int cmd_synth(int argc, char **argv)
{
    nlsr_synth_params p = NLSR_SYNTH_PARAMS_DEFAULT;
    const char *out = NULL;
    int have_role = 0;
    cli_common c = {0};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        int r = cli_common_opt(argc, argv, &i, &c);
        if (r == 1) continue;
        if (r != 0) return r;
        if (strcmp(o, "--force") == 0) {
            p.force = 1;
            continue;
        }
        int known = strcmp(o, "--preset") == 0 || strcmp(o, "--layers") == 0 ||
                    strcmp(o, "--role") == 0 || strcmp(o, "--seed") == 0 ||
                    strcmp(o, "--dtype") == 0 || strcmp(o, "--shard-size") == 0 ||
                    strcmp(o, "--out") == 0;
        if (!known) return cli_usage_error("synth: unknown option or argument '%s'", o);
        if (i + 1 >= argc) return cli_usage_error("%s needs a value", o);
        const char *v = argv[++i];
        char *end;
        if (strcmp(o, "--preset") == 0) {
            if (strcmp(v, "tiny") && strcmp(v, "llama-8b") && strcmp(v, "llama-70b"))
                return cli_usage_error("--preset takes tiny, llama-8b or llama-70b, not '%s'", v);
            p.preset = v;
        } else if (strcmp(o, "--layers") == 0) {
            errno = 0;
            long n = strtol(v, &end, 10);
            if (end == v || *end || errno || n < 1 || n > 1000)
                return cli_usage_error("--layers needs a count from 1 to 1000, not '%s'", v);
            p.layers = (int)n;
        } else if (strcmp(o, "--role") == 0) {
            if (strcmp(v, "base") == 0) p.role = NLSR_SYNTH_BASE;
            else if (strcmp(v, "aligned") == 0) p.role = NLSR_SYNTH_ALIGNED;
            else if (strcmp(v, "finetuned") == 0) p.role = NLSR_SYNTH_FINETUNED;
            else return cli_usage_error("--role takes base, aligned or finetuned, not '%s'", v);
            have_role = 1;
        } else if (strcmp(o, "--seed") == 0) {
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (end == v || *end || errno || v[0] == '-')
                return cli_usage_error("--seed needs a non-negative integer, not '%s'", v);
            p.seed = s;
        } else if (strcmp(o, "--dtype") == 0) {
            if (strcmp(v, "bf16") == 0) p.dtype = NLSR_DTYPE_BF16;
            else if (strcmp(v, "f16") == 0) p.dtype = NLSR_DTYPE_F16;
            else if (strcmp(v, "f32") == 0) p.dtype = NLSR_DTYPE_F32;
            else return cli_usage_error("--dtype takes bf16, f16 or f32, not '%s'", v);
        } else if (strcmp(o, "--shard-size") == 0) {
            if (nlsr_parse_size(v, &p.shard_size) != 0 || p.shard_size == 0)
                return cli_usage_error("--shard-size needs a size such as 5G, not '%s'", v);
        } else {
            out = v;
        }
    }
    if (!out || !have_role)
        return cli_usage_error("synth needs --role base|aligned|finetuned and --out DIR");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    cli_common_apply(&c, ctx);
    double t0 = cli_now();
    int rc = nlsr_synth(ctx, &p, out);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    if (rc == 0) cli_summary("synth", out, ctx, cli_now() - t0, c.have_mem ? c.mem : 1ull << 30, &c);
    nlsr_ctx_free(ctx);
    return status;
}
