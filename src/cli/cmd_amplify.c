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
#include "cli_args.h"
#include "cli_output.h"
#include "nlsr.h"

void cli_apply_ctx(const cli_args *a, nlsr_ctx *ctx)
{
    if (a->have_mem) nlsr_ctx_set_mem_budget(ctx, a->mem);
    nlsr_ctx_set_io(ctx, a->io);
    /* What the library says goes through the printer (cli_output.c). */
    cli_output_install(ctx, a->quiet ? -1 : a->verbose ? 1 : 0, a->progress_interval);
    if (a->threads) nlsr_ctx_set_threads(ctx, a->threads);
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
                 const cli_args *a)
{
    uint64_t budget = nlsr_ctx_mem_budget(ctx); /* auto resolved */
    uint64_t rd = 0, wr = 0;
    nlsr_ctx_counters(ctx, &rd, &wr);
    uint64_t rss = cli_peak_rss();
    const char *io = nlsr_io_kind_name(nlsr_ctx_io_used(ctx));
    if (a->p.json_stdout) {
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
    if (!a->quiet)
        fprintf(stderr,
                "nlsr: %s: read %.1f MiB, wrote %.1f MiB in %.2f s (%.0f MiB/s read); peak RSS "
                "%.1f MiB, buffers %.1f MiB of a %.0f MiB budget; %s\n",
                job, (double)rd / 1048576.0, (double)wr / 1048576.0, seconds,
                seconds > 0 ? (double)rd / 1048576.0 / seconds : 0.0, (double)rss / 1048576.0,
                (double)nlsr_ctx_mem_peak(ctx) / 1048576.0, (double)budget / 1048576.0, io);
}

int cmd_amplify(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_AMPLIFY, argc, argv, &a);
    if (rc == 0 && (!a.aligned || !a.out))
        rc = cli_usage_error("amplify needs --aligned A and --out DIR (and --base B for full "
                             "checkpoints)");
    if (rc != 0) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    cli_apply_ctx(&a, ctx);
    if (a.verbose) cli_print_params(&a);
    double t0 = cli_now();
    /* The summary owns stdout: the job itself prints no JSON. */
    nlsr_realign_params p = a.p;
    p.json_stdout = 0;
    rc = nlsr_ctx_set_revision(ctx, a.revision);
    if (rc == 0) rc = nlsr_amplify(ctx, a.base, a.aligned, a.out, &p);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    if (rc == 0) cli_summary("amplify", a.out, ctx, cli_now() - t0, &a);
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}
