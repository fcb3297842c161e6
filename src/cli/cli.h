/* SPDX-License-Identifier: Apache-2.0 */
/* Shared helpers of the CLI's subcommands. */
#ifndef NLSR_CLI_H
#define NLSR_CLI_H
#include "nlsr.h"
struct cli_args; /* cli_args.h */
/* Prints the context's error as one line and returns the exit status for rc: 128 + the signal
 * for a job a signal stopped (130 SIGINT, 143 SIGTERM, 129 SIGHUP). */
int cli_fail(nlsr_ctx *ctx, int rc);
/* A context that stops at its next safe point when SIGINT, SIGTERM or SIGHUP arrives (main
 * installs the handlers; the library never does). */
nlsr_ctx *cli_ctx_create(void);
/* The signal that asked the program to stop, 0 if none. */
int cli_stop_signal(void);
/* Prints a one-line usage error and returns 2. */
int cli_usage_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* cmd_slurm.c: split jobs (docs/SCALE.md): `nlsr reduce`, `nlsr sweep`, `nlsr slurm`. */
int cmd_reduce(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_slurm(int argc, char **argv);
/* Parses a task "I/N" (0 <= I < N), or "slurm" (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT),
 * or "k8s" (JOB_COMPLETION_INDEX of the N after the slash: "k8s/N"). Usage error: returns 2. */
int cli_parse_task(const char *opt, const char *v, unsigned *index, unsigned *count);
/* cmd_realign.c: run, prepare, apply (full weights and PEFT adapters). */
int cmd_run(int argc, char **argv);
int cmd_prepare(int argc, char **argv);
int cmd_apply(int argc, char **argv);
/* cmd_amplify.c, cmd_synth.c, cmd_plan.c: the engine commands. */
int cmd_amplify(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_plan(int argc, char **argv);
/* cmd_bench.c: the sweep of jobs, budgets and backends (nlsr_bench). */
int cmd_bench(int argc, char **argv);
/* The parsed options onto a context: budget, backend, quiet, threads. */
void cli_apply_ctx(const struct cli_args *a, nlsr_ctx *ctx);
double cli_now(void);
/* The process's peak resident set (VmHWM) in bytes, 0 if unknown. */
uint64_t cli_peak_rss(void);
/* The end-of-run summary: one JSON object on stdout with --json (bytes read and written,
 * seconds, peak RSS, budget, backend), one line on stderr unless quiet. */
void cli_summary(const char *job, const char *out_dir, nlsr_ctx *ctx, double seconds,
                 const struct cli_args *a);
/* cmd_rollback.c: `nlsr rollback`, and the in-place loop of run/apply --in-place: one job per
 * checkpoint folder, one line each (stdout; stderr with --json, which prints a JSON summary on
 * stdout), exit 0 only if all succeeded (5 for a sweep of several with a failure; else the
 * failure's own status: 1, 3 locked, 4 interrupted journal). */
typedef enum cli_inplace_op { CLI_INPLACE_APPLY, CLI_INPLACE_RUN, CLI_INPLACE_ROLLBACK } cli_inplace_op;
typedef struct cli_inplace {
    cli_inplace_op op;
    const char *command;                /* "run", "apply", "rollback" (the JSON's) */
    const char *base, *aligned, *reference, *patches;
    const char *const *dirs;
    int ndirs;
    nlsr_realign_params p;              /* p.json_stdout must be 0: the summary owns stdout */
    nlsr_inplace_params ip;
    nlsr_rollback_params rp;
    uint64_t mem;
    int have_mem;
    nlsr_io_kind io;
    int quiet, verbose, threads, json;
    double progress_interval; /* negative: the printer's default */
} cli_inplace;
int cli_inplace_main(const cli_inplace *c);
int cmd_rollback(int argc, char **argv);
#endif
