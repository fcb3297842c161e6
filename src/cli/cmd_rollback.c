/* SPDX-License-Identifier: Apache-2.0 */
/* The in-place front end: `nlsr rollback DIR...`, and the per-checkpoint loop that
 * `nlsr run --in-place` and `nlsr apply --in-place DIR...` (cmd_realign.c) share: one line per
 * checkpoint, an optional JSON summary, and the exit status of a store sweep.
 *
 * Exit statuses (README "In place"): 0 every checkpoint succeeded (realigned, already
 * realigned, rolled back, nothing to do, dry run), 1 failed, 2 usage error, 3 locked by another
 * run (no --wait), 4 an interrupted journal needs `nlsr rollback` first, 5 a sweep over several
 * checkpoints where at least one failed (each failure's line says why). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_output.h"
#include "nlsr.h"

/* A JSON string literal (quotes, backslashes and control characters escaped). */
static void json_str(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

typedef struct item {
    const char *path;
    int status;             /* exit status of this checkpoint alone */
    nlsr_inplace_result r;
    double seconds;
    char *error;            /* malloc'd message, NULL on success */
} item;

static void print_line(FILE *f, const item *it)
{
    const nlsr_inplace_result *r = &it->r;
    if (it->error) {
        fprintf(f, "%s: failed (exit %d): %s\n", it->path, it->status, it->error);
        return;
    }
    const char *pre = r->rolled_back_first ? " after rolling back the previous realignment"
                      : r->stacked         ? " on top of the previous realignment"
                                           : "";
    switch (r->outcome) {
    case NLSR_INPLACE_REALIGNED:
        fprintf(f,
                "%s: realigned%s: %zu of %zu modules patched, %llu bytes written in place "
                "(of %llu in the patched tensors), journal %llu bytes (%.2f s)\n",
                it->path, pre, r->patched, r->modules, (unsigned long long)r->bytes_written,
                (unsigned long long)r->patched_bytes, (unsigned long long)r->journal_bytes,
                it->seconds);
        break;
    case NLSR_INPLACE_ALREADY:
        fprintf(f, "%s: already realigned (%s): nothing to do\n", it->path, r->key);
        break;
    case NLSR_INPLACE_WOULD_REALIGN:
        fprintf(f, "%s: would realign%s: up to %llu bytes in %zu target tensors%s\n", it->path,
                pre, (unsigned long long)r->bytes_written, r->modules,
                r->key[0] ? "" : " (run reads base and aligned first, then skips if already realigned)");
        break;
    case NLSR_INPLACE_WOULD_SKIP:
        fprintf(f, "%s: would skip: already realigned (%s)\n", it->path, r->key);
        break;
    case NLSR_INPLACE_ROLLED_BACK:
        fprintf(f, "%s: rolled back: %llu ranges, %llu bytes restored and verified\n", it->path,
                (unsigned long long)r->ranges, (unsigned long long)r->bytes_written);
        break;
    case NLSR_INPLACE_NOTHING:
        fprintf(f, "%s: no journal: nothing to roll back\n", it->path);
        break;
    case NLSR_INPLACE_DISCARDED:
        fprintf(f, "%s: journal discarded (%llu bytes freed); the realignment stays, without undo\n",
                it->path, (unsigned long long)r->journal_bytes);
        break;
    }
}

static void print_json(const char *command, int dry, const item *v, int n, int status)
{
    int counts[8] = {0}, failed = 0;
    printf("{\n  \"command\": ");
    json_str(stdout, command);
    printf(",\n  \"dry_run\": %s,\n  \"checkpoints\": [", dry ? "true" : "false");
    for (int i = 0; i < n; i++) {
        const item *it = &v[i];
        const nlsr_inplace_result *r = &it->r;
        if (it->error) failed++;
        else if ((unsigned)r->outcome < 8) counts[r->outcome]++;
        printf("%s\n    {\"path\": ", i ? "," : "");
        json_str(stdout, it->path);
        printf(", \"status\": ");
        json_str(stdout, it->error ? "failed" : nlsr_inplace_outcome_name(r->outcome));
        printf(", \"exit\": %d, \"modules\": %zu, \"patched\": %zu, \"bytes_written\": %llu, "
               "\"patched_bytes\": %llu, \"journal_bytes\": %llu, \"ranges\": %llu, "
               "\"rolled_back_first\": %s, \"stacked\": %s, \"key\": ",
               it->status, r->modules, r->patched, (unsigned long long)r->bytes_written,
               (unsigned long long)r->patched_bytes, (unsigned long long)r->journal_bytes,
               (unsigned long long)r->ranges,
               r->rolled_back_first ? "true" : "false", r->stacked ? "true" : "false");
        json_str(stdout, r->key[0] ? r->key : NULL);
        printf(", \"result\": ");
        json_str(stdout, r->result[0] ? r->result : NULL);
        printf(", \"seconds\": %.3f, \"error\": ", it->seconds);
        json_str(stdout, it->error);
        printf("}");
    }
    printf("\n  ],\n  \"summary\": {\"total\": %d, \"failed\": %d", n, failed);
    for (int o = NLSR_INPLACE_REALIGNED; o <= NLSR_INPLACE_DISCARDED; o++) {
        if (!counts[o]) continue;
        printf(", ");
        json_str(stdout, nlsr_inplace_outcome_name((nlsr_inplace_outcome)o));
        printf(": %d", counts[o]);
    }
    printf(", \"exit\": %d}\n}\n", status);
}

static nlsr_ctx *new_ctx(const cli_inplace *c)
{
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return NULL;
    if (c->have_mem) nlsr_ctx_set_mem_budget(ctx, c->mem);
    nlsr_ctx_set_io(ctx, c->io);
    cli_output_install(ctx, c->quiet || c->ndirs > 1 ? -1 : c->verbose ? 1 : 0,
                       c->progress_interval);
    if (c->threads) nlsr_ctx_set_threads(ctx, c->threads);
    return ctx;
}

int cli_inplace_main(const cli_inplace *c)
{
    item *v = calloc((size_t)(c->ndirs ? c->ndirs : 1), sizeof *v);
    if (!v) {
        fprintf(stderr, "nlsr: error: out of memory\n");
        return 1;
    }
    /* With --json, stdout carries the summary alone and the per-checkpoint lines go to stderr. */
    FILE *lines = c->json ? stderr : stdout;
    int failed = 0, last_status = 0, ndone = 0;
    for (int i = 0; i < c->ndirs; i++) {
        item *it = &v[i];
        it->path = c->dirs[i];
        nlsr_ctx *ctx = new_ctx(c);
        if (!ctx) {
            fprintf(stderr, "nlsr: error: out of memory\n");
            free(v);
            return 1;
        }
        double t0 = cli_now();
        int rc;
        if (c->op == CLI_INPLACE_ROLLBACK)
            rc = nlsr_rollback(ctx, it->path, &c->rp, &it->r);
        else if (c->op == CLI_INPLACE_RUN)
            rc = nlsr_run_inplace(ctx, c->base, c->aligned, c->reference, it->path, &c->p, &c->ip,
                                  &it->r);
        else
            rc = nlsr_apply_inplace(ctx, c->patches, it->path, &c->p, &c->ip, &it->r);
        it->seconds = cli_now() - t0;
        if (rc < 0) {
            const char *m = nlsr_ctx_error(ctx);
            it->error = strdup(m && *m ? m : nlsr_strerror(rc));
            it->status = cli_fail(ctx, rc); /* the usual one line on stderr */
            failed++;
            last_status = it->status;
        }
        print_line(lines, it);
        fflush(lines);
        nlsr_ctx_free(ctx);
        ndone = i + 1;
        /* A signal ends a sweep at the checkpoint it interrupted; the rest are not started. */
        if (cli_stop_signal()) break;
    }
    int status = failed == 0 ? 0 : c->ndirs == 1 ? last_status : 5;
    if (cli_stop_signal()) status = 128 + cli_stop_signal();
    if (c->json) print_json(c->command, c->ip.dry_run, v, ndone, status);
    for (int i = 0; i < ndone; i++) free(v[i].error);
    free(v);
    return status;
}

int cmd_rollback(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_ROLLBACK, argc, argv, &a);
    if (rc == 0 && a.npos == 0) rc = cli_usage_error("rollback needs a checkpoint folder");
    if (rc == 0 && a.discard_journal && a.p.force)
        rc = cli_usage_error("rollback takes --force or --discard-journal, not both");
    if (rc == 0) {
        cli_inplace c;
        memset(&c, 0, sizeof c);
        c.op = CLI_INPLACE_ROLLBACK;
        c.command = "rollback";
        c.rp = NLSR_ROLLBACK_PARAMS_DEFAULT;
        c.rp.wait = a.ip.wait;
        c.rp.force = a.p.force;
        c.rp.discard = a.discard_journal;
        c.ip.wait = a.ip.wait;
        c.io = NLSR_IO_AUTO;
        c.json = a.p.json_stdout;
        c.quiet = a.quiet;
        c.verbose = a.verbose;
        c.progress_interval = a.progress_interval;
        c.dirs = a.pos;
        c.ndirs = a.npos;
        rc = cli_inplace_main(&c);
    }
    cli_args_free(&a);
    return rc == CLI_DONE ? 0 : rc;
}
