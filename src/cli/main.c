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
#include "cli_output.h"

static void usage(FILE *f)
{
    fputs("usage: nlsr COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  inspect PATH [--json] [--revision REV]\n"
          "                                 validate a checkpoint and list its tensors\n"
          "  dump PATH TENSOR               print a tensor's values, one per line\n"
          "  rewrite PATH OUT [--force] [--drop-other-weights]\n"
          "                                 rewrite a checkpoint with nlsr's writer\n"
          "  run --base B --aligned A|--reference R --finetuned T --out DIR [options]\n"
          "                                 realign T: all three steps, streamed\n"
          "  prepare --base B --aligned A|--reference R --out FILE.nlsrp [options]\n"
          "                                 steps 1-2 once per aligned model: the patches\n"
          "  apply --patches FILE --finetuned T --out DIR [options]\n"
          "                                 step 3 from prepared patches\n"
          "  run ... --finetuned DIR --in-place, apply --patches FILE --in-place DIR...\n"
          "        [--wait] [--follow-links] [--dry-run] [--force] [--json]\n"
          "                                 realign checkpoint folders in place, journaled\n"
          "  rollback DIR... [--wait] [--force | --discard-journal] [--json]\n"
          "                                 restore the originals from the undo journal\n"
          "      options: --beta 0.9 --sparsity 0.8 --select adaptive|threshold|all|none\n"
          "               --semantics paper|authors --prune-rate 0.5 --epsilon 0.2 --seed 42\n"
          "               --tau 0.1 --targets LIST --report FILE --json -q --force\n"
          "               --drop-other-weights (run, apply: leave weights nlsr does not\n"
          "               realign out of the output; they are refused otherwise)\n"
          "               --mem-budget SIZE --io auto|io_uring|pread|mmap --threads N\n"
          "               --revision REV (hub cache repository folders; also amplify, plan)\n"
          "      step 2 scorer (run, prepare; docs/LOWRANK.md): --scorer magnitude|lowrank|wanda\n"
          "               --rank R | --rank-fraction 1 --rank-reading paper|authors|direct\n"
          "               --power-iters 2 --oversample 10 --exact-svd --activations FILE\n"
          "               --wanda-select row|matrix\n"
          "  prepare ... --part I/N --out PART.nlsrp\n"
          "                                 one part of a split prepare (modules cut in N)\n"
          "  reduce --out FILE.nlsrp [--force] PART...\n"
          "                                 check the parts and merge them (= one prepare)\n"
          "  sweep --patches FILE --out-root DIR|--in-place [--task I/N] [--status]\n"
          "        [--summary FILE] [--json] [selection options] DIR...\n"
          "                                 apply to a store, task I of N; verified outputs\n"
          "                                 are skipped\n"
          "  slurm sweep|split --dir DIR [--submit] [--concurrency K] [--parts N]\n"
          "        [--mem-budget SIZE] [--cpus C] [--time T] [--partition P] [--account A]\n"
          "        [--prepare-opts STR] [--apply-opts STR] [--nlsr PATH] (job options)\n"
          "                                 sbatch scripts of a sweep or a split job\n"
          "  amplify --base B --aligned A --out DIR [--beta 0.9] [--force]\n"
          "          [--drop-other-weights]\n"
          "                                 step 1 alone: the safety reference checkpoint\n"
          "  plan --base B --aligned A [--finetuned T] [--bandwidth R[,W]] [--json]\n"
          "       [--sparsity S] [scorer options, with --finetuned] [--no-time]\n"
          "       [--measure-read]\n"
          "                                 print the streaming plan (units, bytes, memory, time),\n"
          "                                 or only carry out and time its reads\n"
          "  synth --preset tiny|llama-8b|llama-70b --role base|aligned|finetuned --out DIR\n"
          "        [--layers N] [--seed S] [--dtype bf16|f16|f32] [--shard-size 5G]\n"
          "                                 write a synthetic checkpoint\n"
          "      engine options: --mem-budget SIZE (default 1G) --io auto|uring|pread|mmap\n"
          "                      -q --json\n"
          "  version                        print the version\n"
          "\n"
          "PATH is a safetensors file, a folder with model.safetensors or shards and\n"
          "model.safetensors.index.json, a PEFT adapter folder, or a Hugging Face hub cache\n"
          "snapshot (models--org--name/snapshots/COMMIT) or repository folder\n"
          "(models--org--name: refs/main, or --revision REF|COMMIT).\n",
          f);
}

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
    const char *path = NULL, *revision = NULL;
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--revision") == 0) {
            if (i + 1 >= argc) return cli_usage_error("--revision needs a value");
            revision = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("unknown option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else return cli_usage_error("unexpected argument '%s'", argv[i]);
    }
    if (!path) return cli_usage_error("inspect needs a PATH");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ctx_set_revision(ctx, revision);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, path, &ck);
    if (rc == 0) rc = nlsr_ckpt_print_inspect(ctx, ck, json, stdout);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    return status;
}

static int cmd_dump(int argc, char **argv)
{
    if (argc != 2) return cli_usage_error("dump needs PATH and TENSOR");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ckpt_open(ctx, argv[0], &ck);
    if (rc == 0) rc = nlsr_ckpt_print_dump(ctx, ck, argv[1], stdout);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    return status;
}

static int cmd_rewrite(int argc, char **argv)
{
    const char *pos[2] = {0};
    int npos = 0, flags = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--force") == 0) flags |= NLSR_REWRITE_FORCE;
        else if (strcmp(argv[i], "--drop-other-weights") == 0)
            flags |= NLSR_REWRITE_DROP_OTHER_WEIGHTS;
        else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("unknown option '%s'", argv[i]);
        else if (npos < 2) pos[npos++] = argv[i];
        else return cli_usage_error("unexpected argument '%s'", argv[i]);
    }
    if (npos != 2) return cli_usage_error("rewrite needs PATH and OUT");
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return 1;
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ckpt_open(ctx, pos[0], &ck);
    if (rc == 0) rc = nlsr_ckpt_rewrite(ctx, ck, pos[1], flags);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
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
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    g_argc = argc;
    g_argv = argv;
    const char *cmd = argv[1];
    install_stop_handlers();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
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
