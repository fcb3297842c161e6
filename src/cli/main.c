/* SPDX-License-Identifier: Apache-2.0 */
#define _POSIX_C_SOURCE 200809L
/* The nlsr command line. It uses the public header only. Exit status: 0 success, 1 failure
 * (bad input, I/O), 2 usage error; in place also 3 locked, 4 interrupted journal (roll back
 * first), 5 a sweep with a failed checkpoint. Every failure prints one line on stderr. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nlsr.h"
#include "cli.h"
#include "cli_args.h"
#include "cli_output.h"

/* The first of SIGINT, SIGTERM, SIGHUP to arrive; every context reads it (cancel flag). */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    if (!stop_signal) stop_signal = sig;
}

/* No SA_RESTART: a wait for a lock (--wait) returns EINTR, and the job sees the flag. A
 * second signal changes nothing: cleanup (removing temporary outputs, rolling an in-place
 * run back) must finish. */
static void install_stop_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &sa, NULL);
}

/* Set by main: the program's whole command line, for reports' audit record. */
static int g_argc;
static char **g_argv;

nlsr_ctx *cli_ctx_create(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    if (ctx && nlsr_ctx_set_command_line(ctx, g_argc, (const char *const *)g_argv) < 0) {
        nlsr_ctx_free(ctx);
        return NULL;
    }
    if (ctx) nlsr_ctx_set_cancel_flag(ctx, &stop_signal);
    /* What the library says goes to stderr (README "Progress and logs"); commands install
     * the printer again once -q is parsed. */
    if (ctx) cli_output_install(ctx, 0, -1);
    /* The program's default budget is what the machine can give; --mem-budget replaces it. */
    if (ctx) nlsr_ctx_set_mem_budget(ctx, NLSR_MEM_BUDGET_AUTO);
    return ctx;
}

int cli_stop_signal(void)
{
    return stop_signal;
}

static const char *signal_name(int sig)
{
    return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : sig == SIGHUP ? "SIGHUP" : "a signal";
}

int cli_fail(nlsr_ctx *ctx, int rc)
{
    const char *msg = nlsr_ctx_error(ctx);
    cli_output_clear(); /* a bar a failed phase left */
    if (rc == NLSR_E_CANCELLED && stop_signal) {
        fprintf(stderr, "nlsr: interrupted by %s: %s\n", signal_name(stop_signal),
                msg && *msg ? msg : "stopped");
        return 128 + stop_signal;
    }
    fprintf(stderr, "nlsr: error: %s\n", msg && *msg ? msg : nlsr_strerror(rc));
    /* In place (README "In place"): a held lock and an interrupted journal get their own
     * statuses, so that cron jobs can tell "try later" and "roll back first" from failures. */
    if (rc == NLSR_E_LOCKED) return 3;
    if (rc == NLSR_E_JOURNAL) return 4;
    return rc == NLSR_E_USAGE ? 2 : 1;
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nlsr: usage error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'nlsr help')\n");
    va_end(ap);
    return 2;
}

static int cmd_inspect(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_INSPECT, argc, argv, &a);
    if (rc == 0 && a.npos < 1) rc = cli_usage_error("inspect needs a PATH");
    if (rc != 0) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    nlsr_ckpt *ck = NULL;
    rc = nlsr_ctx_set_revision(ctx, a.revision);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, a.pos[0], &ck);
    if (rc == 0) rc = nlsr_ckpt_print_inspect(ctx, ck, a.p.json_stdout, stdout);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}

static int cmd_dump(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_DUMP, argc, argv, &a);
    if (rc == 0 && a.npos != 2) rc = cli_usage_error("dump needs PATH and TENSOR");
    if (rc != 0) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    nlsr_ckpt *ck = NULL;
    rc = nlsr_ckpt_open(ctx, a.pos[0], &ck);
    if (rc == 0) rc = nlsr_ckpt_print_dump(ctx, ck, a.pos[1], stdout);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}

static int cmd_rewrite(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_REWRITE, argc, argv, &a);
    if (rc == 0 && a.npos != 2) rc = cli_usage_error("rewrite needs PATH and OUT");
    if (rc != 0) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    int flags = (a.p.force ? NLSR_REWRITE_FORCE : 0) |
                (a.p.drop_other_weights ? NLSR_REWRITE_DROP_OTHER_WEIGHTS : 0);
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    nlsr_ckpt *ck = NULL;
    rc = nlsr_ckpt_open(ctx, a.pos[0], &ck);
    if (rc == 0) rc = nlsr_ckpt_rewrite(ctx, ck, a.pos[1], flags);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}

/* Each subcommand lives in its own cmd_*.c file (declared in cli.h) and is listed here once. */
static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} commands[] = {
    {"inspect", cmd_inspect},
    {"dump", cmd_dump},
    {"rewrite", cmd_rewrite},
    {"run", cmd_run},
    {"prepare", cmd_prepare},
    {"apply", cmd_apply},
    {"rollback", cmd_rollback},
    {"amplify", cmd_amplify},
    {"synth", cmd_synth},
    {"plan", cmd_plan},
    {"reduce", cmd_reduce},
    {"sweep", cmd_sweep},
    {"slurm", cmd_slurm},
    {"bench", cmd_bench},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_help_all(stderr);
        return 2;
    }
    g_argc = argc;
    g_argv = argv;
    const char *cmd = argv[1];
    install_stop_handlers();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        if (argc == 2) {
            cli_help_all(stdout);
            return 0;
        }
        if (argc > 3) return cli_usage_error("help takes one COMMAND");
        if (cli_help_command(argv[2], stdout) != 0)
            return cli_usage_error("unknown command '%s'", argv[2]);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("nlsr %s\n", nlsr_version()); /* the library linked, not the header */
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0) return commands[i].fn(argc - 2, argv + 2);
    return cli_usage_error("unknown command '%s'", cmd);
}
