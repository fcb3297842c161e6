/* `nlsr plan`: what a run would read, write, hold in memory and take, without running it. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
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
    const char *base = NULL, *aligned = NULL, *finetuned = NULL, *out = NULL;
    double rbw = 0, wbw = 0;
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    cli_common c = {0};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        int r = cli_common_opt(argc, argv, &i, &c);
        if (r == 1) continue;
        if (r != 0) return r;
        if (strcmp(o, "--no-time") == 0) {
            rbw = wbw = -1;
            continue;
        }
        int known = strcmp(o, "--base") == 0 || strcmp(o, "--aligned") == 0 ||
                    strcmp(o, "--finetuned") == 0 || strcmp(o, "--bandwidth") == 0 ||
                    strcmp(o, "--out") == 0;
        if (!known) return cli_usage_error("plan: unknown option or argument '%s'", o);
        if (i + 1 >= argc) return cli_usage_error("%s needs a value", o);
        const char *v = argv[++i];
        if (strcmp(o, "--base") == 0) base = v;
        else if (strcmp(o, "--aligned") == 0) aligned = v;
        else if (strcmp(o, "--finetuned") == 0) finetuned = v;
        else if (strcmp(o, "--out") == 0) out = v;
        else if (parse_bandwidth(v, &rbw, &wbw) != 0)
            return cli_usage_error("--bandwidth needs READ[,WRITE] speeds per second such as "
                                   "1.5G,800M, not '%s'", v);
    }
    if (!base || !aligned) return cli_usage_error("plan needs --base B and --aligned A");
    nlsr_ctx *ctx = nlsr_ctx_create();
    if (!ctx) return 1;
    cli_common_apply(&c, ctx);
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
