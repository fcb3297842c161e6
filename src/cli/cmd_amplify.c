/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr amplify`, and the option handling and run summaries the engine commands (amplify,
 * synth, plan) share. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cli_output.h"
#include "nlsr.h"

int cli_common_opt(int argc, char **argv, int *i, cli_common *c)
{
    const char *o = argv[*i];
    if (strcmp(o, "-q") == 0 || strcmp(o, "--quiet") == 0) {
        c->quiet = 1;
        return 1;
    }
    if (strcmp(o, "--json") == 0) {
        c->json = 1;
        return 1;
    }
    int mem = strcmp(o, "--mem-budget") == 0, io = strcmp(o, "--io") == 0;
    if (!mem && !io) return 0;
    if (*i + 1 >= argc) return cli_usage_error("%s needs a value", o);
    const char *v = argv[++*i];
    if (mem) {
        if (nlsr_parse_size(v, &c->mem) != 0)
            return cli_usage_error("--mem-budget needs a size such as 512M, 1.5G or 4G, not '%s'",
                                   v);
        c->have_mem = 1;
        return 1;
    }
    if (strcmp(v, "auto") == 0) c->io = NLSR_IO_AUTO;
    else if (strcmp(v, "uring") == 0 || strcmp(v, "io_uring") == 0) c->io = NLSR_IO_URING;
    else if (strcmp(v, "pread") == 0) c->io = NLSR_IO_PREAD;
    else if (strcmp(v, "mmap") == 0) c->io = NLSR_IO_MMAP;
    else return cli_usage_error("--io takes auto, uring, pread or mmap, not '%s'", v);
    return 1;
}

void cli_common_apply(const cli_common *c, nlsr_ctx *ctx)
{
    if (c->have_mem) nlsr_ctx_set_mem_budget(ctx, c->mem);
    nlsr_ctx_set_io(ctx, c->io);
    cli_output_install(ctx, c->quiet ? -1 : 0, -1);
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t cli_peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024u;
}

void cli_summary(const char *job, const char *out_dir, nlsr_ctx *ctx, double seconds,
                 uint64_t budget, const cli_common *c)
{
    uint64_t rd = 0, wr = 0;
    nlsr_ctx_counters(ctx, &rd, &wr);
    uint64_t rss = cli_peak_rss();
    const char *io = nlsr_io_kind_name(nlsr_ctx_io_used(ctx));
    if (c->json) {
        printf("{\"job\": \"%s\", \"out\": \"", job);
        for (const char *p = out_dir ? out_dir : ""; *p; p++) {
            if (*p == '"' || *p == '\\') putchar('\\');
            if ((unsigned char)*p >= 0x20) putchar(*p);
        }
        printf("\", \"seconds\": %.3f, \"bytes_read\": %llu, \"bytes_written\": %llu, "
               "\"read_bytes_per_s\": %.0f, \"peak_rss_bytes\": %llu, \"mem_budget_bytes\": %llu, "
               "\"budget_peak_bytes\": %llu, \"io_backend\": \"%s\", \"backend\": \"%s\"}\n",
               seconds, (unsigned long long)rd, (unsigned long long)wr,
               seconds > 0 ? (double)rd / seconds : 0.0, (unsigned long long)rss,
               (unsigned long long)budget, (unsigned long long)nlsr_ctx_mem_peak(ctx), io, io);
        fflush(stdout);
    }
    if (!c->quiet)
        fprintf(stderr,
                "nlsr: %s: read %.1f MiB, wrote %.1f MiB in %.2f s (%.0f MiB/s read); peak RSS "
                "%.1f MiB, buffers %.1f MiB of a %.0f MiB budget; %s\n",
                job, (double)rd / 1048576.0, (double)wr / 1048576.0, seconds,
                seconds > 0 ? (double)rd / 1048576.0 / seconds : 0.0, (double)rss / 1048576.0,
                (double)nlsr_ctx_mem_peak(ctx) / 1048576.0, (double)budget / 1048576.0, io);
}

int cmd_amplify(int argc, char **argv)
{
    const char *base = NULL, *aligned = NULL, *out = NULL, *revision = NULL;
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
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
        if (strcmp(o, "--drop-other-weights") == 0) {
            p.drop_other_weights = 1;
            continue;
        }
        int known = strcmp(o, "--base") == 0 || strcmp(o, "--aligned") == 0 ||
                    strcmp(o, "--out") == 0 || strcmp(o, "--beta") == 0 ||
                    strcmp(o, "--amplify") == 0 || strcmp(o, "--alpha") == 0 ||
                    strcmp(o, "--revision") == 0;
        if (!known) return cli_usage_error("amplify: unknown option or argument '%s'", o);
        if (i + 1 >= argc) return cli_usage_error("%s needs a value", o);
        const char *v = argv[++i];
        if (strcmp(o, "--base") == 0) base = v;
        else if (strcmp(o, "--revision") == 0) revision = v;
        else if (strcmp(o, "--aligned") == 0) aligned = v;
        else if (strcmp(o, "--out") == 0) out = v;
        else if (strcmp(o, "--amplify") == 0) {
            if (strcmp(v, "paper") == 0) p.amplify = NLSR_AMPLIFY_PAPER;
            else if (strcmp(v, "authors") == 0) p.amplify = NLSR_AMPLIFY_AUTHORS;
            else return cli_usage_error("--amplify takes paper or authors, not '%s'", v);
        } else {
            char *end;
            errno = 0;
            double d = strtod(v, &end);
            if (end == v || *end || errno == ERANGE || !isfinite(d))
                return cli_usage_error("%s needs a number, not '%s'", o, v);
            if (strcmp(o, "--beta") == 0) p.beta = d;
            else p.alpha = d;
        }
    }
    if (!aligned || !out) return cli_usage_error("amplify needs --aligned A and --out DIR "
                                                 "(and --base B for full checkpoints)");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    cli_common_apply(&c, ctx);
    double t0 = cli_now();
    int rc = nlsr_ctx_set_revision(ctx, revision);
    if (rc == 0) rc = nlsr_amplify(ctx, base, aligned, out, &p);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    if (rc == 0) cli_summary("amplify", out, ctx, cli_now() - t0, c.have_mem ? c.mem : 1ull << 30, &c);
    nlsr_ctx_free(ctx);
    return status;
}
