/* SPDX-License-Identifier: Apache-2.0 */
/* The one command-line parser (docs/DESIGN.md "Parameters and the command line"): a table of
 * the commands, a table of the CLI's own options, and the library's parameters table
 * (nlsr_param_info_at) for the method parameters. Every command takes --opt=value and
 * --opt value, -h/--help, --version, -q and -v; values have one spelling each. */
#ifndef NLSR_CLI_ARGS_H
#define NLSR_CLI_ARGS_H

#include "nlsr.h"

/* The commands, as bits (cli_opt.cmds). */
enum {
    K_INSPECT = 1 << 0, K_DUMP = 1 << 1, K_REWRITE = 1 << 2, K_RUN = 1 << 3,
    K_PREPARE = 1 << 4, K_APPLY = 1 << 5, K_ROLLBACK = 1 << 6, K_AMPLIFY = 1 << 7,
    K_PLAN = 1 << 8, K_SYNTH = 1 << 9, K_BENCH = 1 << 10,
    /* Split jobs (cmd_slurm.c). */
    K_REDUCE = 1 << 11, K_SWEEP = 1 << 12, K_SLURM = 1 << 13
};

/* The CLI's own options (cli_opts.c): ids. */
enum cli_opt_id {
    O_BASE, O_ALIGNED, O_REFERENCE, O_FINETUNED, O_PATCHES, O_OUT, O_REPORT, O_JSON, O_QUIET,
    O_VERBOSE, O_FORCE, O_MEM, O_IO, O_THREADS, O_IN_PLACE, O_WAIT, O_DRY_RUN, O_FOLLOW,
    O_DROP_OTHER, O_REVISION, O_CONFIG, O_PROGRESS, O_DISCARD, O_BANDWIDTH, O_NO_TIME,
    O_MEASURE, O_PRESET, O_LAYERS, O_ROLE, O_SYNTH_SEED, O_DTYPE, O_SHARD, O_HELP, O_VERSION,
    O_PART, O_COMMIT,
    /* sweep, slurm */
    O_OUT_ROOT, O_STATUS, O_SUMMARY, O_DIR, O_SUBMIT, O_CONCURRENCY, O_PARTS, O_APPLY_TASKS,
    O_CPUS, O_TIME, O_PARTITION, O_ACCOUNT, O_PREPARE_OPTS, O_APPLY_OPTS, O_NLSR,
    O_MAP,
    /* bench */
    O_BENCH_SYNTH, O_SCRATCH, O_BUDGETS, O_BENCH_IO, O_JOBS, O_REPS, O_WARM, O_DROP_CACHES,
    O_CSV, O_BENCH_JSON, O_PLOT, O_AFTER_EACH
};

/* One name may have two entries for different commands (bench's --io LIST and --json FILE
 * beside the other commands' --io BACKEND and --json flag): the parser takes the entry of the
 * command at hand. */
typedef struct cli_opt {
    const char *name;    /* long name without "--" (also the config key) */
    char shrt;           /* 'q' for -q, or 0 */
    const char *metavar; /* NULL: a flag */
    unsigned cmds;       /* K_* bits of the commands that take it */
    enum cli_opt_id id;
    const char *help;
} cli_opt;

typedef struct cli_command {
    const char *name;
    unsigned bit;        /* K_* */
    unsigned jobs;       /* NLSR_JOB_* whose method parameters it takes */
    int min_pos, max_pos; /* positional arguments (max -1: any number) */
    const char *synopsis; /* after "nlsr NAME " */
    const char *summary;
} cli_command;

extern const cli_opt cli_opts[];
extern const size_t cli_nopts;
extern const cli_command cli_commands[];
extern const size_t cli_ncommands;
const cli_command *cli_command_of(unsigned bit);

/* Returned by cli_parse after --help or --version: the command exits 0. */
#define CLI_DONE (-1)

typedef struct cli_args {
    unsigned cmd;  /* K_* */
    const char *name;
    /* Inputs and outputs. */
    const char *base, *aligned, *reference, *finetuned, *patches, *out, *revision;
    const char **pos; /* positional arguments (PATH, OUT, DIR...) */
    int npos;
    /* The method parameters (the library's table), and which of them were given. */
    nlsr_realign_params p;
    uint64_t given;   /* bit i: nlsr_param_info_at(i) was given */
    /* Run options. */
    uint64_t mem;
    int have_mem;
    nlsr_io_kind io;
    int quiet, verbose, threads, in_place, discard_journal;
    nlsr_inplace_params ip;
    double progress_interval; /* --progress-interval: seconds between progress lines when
                                 stderr is no terminal; negative (not given): the printer's
                                 default, CLI_PROGRESS_INTERVAL (10) */
    /* plan */
    double read_bw, write_bw;
    int measure_read;
    /* synth */
    nlsr_synth_params synth;
    int have_role;
    /* prepare --part I/N, apply --shard I/N (docs/SCALE.md); part_count 0: the whole */
    unsigned part_index, part_count;
    int commit; /* apply --commit: the split apply's last step */
    /* sweep and slurm (cmd_slurm.c); counts 0 when not given */
    struct {
        const char *out_root, *summary, *dir, *time, *partition, *account, *prepare_opts,
            *apply_opts, *nlsr;
        int status, submit;
        int map_run; /* slurm split --map run: run --part maps (0: prepare --part) */
        unsigned concurrency, parts, apply_tasks, cpus;
    } split;
    /* bench: its lists and output files as given (nlsr_bench checks them); inputs, --layers,
       -q/-v and --progress-interval are the fields above */
    nlsr_bench_params bench;
    char *targets_block; /* owned: the targets list nlsr_params_set made */
    char **owned;        /* the config file's values, which the fields above point into */
    int nowned;
} cli_args;

/* Parses argv (after the command name) for command `cmd` (K_*): the config file first, then
 * the command line over it. 0, CLI_DONE, or a usage exit status (the line printed). */
int cli_parse(unsigned cmd, int argc, char **argv, cli_args *a);
void cli_args_free(cli_args *a);
/* 1 if library parameter `name` was given (command line or config). */
int cli_given(const cli_args *a, const char *name);
/* The scorer options' combinations (e.g. --rank only with --scorer lowrank). 0 or 2. */
int cli_check_scorer(const cli_args *a);
/* -v: the effective method parameters of the command's jobs on stderr, one line each. */
void cli_print_params(const cli_args *a);
/* The memory budget the job runs under (--mem-budget, or the library's default). */
uint64_t cli_budget(const cli_args *a);

/* `nlsr help` (f), `nlsr help CMD` / `nlsr CMD --help`: usage and every option. 0, or 2 for
 * an unknown command. */
void cli_help_all(FILE *f);
int cli_help_command(const char *name, FILE *f);
/* The command's bit for its name, 0 if none. */
unsigned cli_command_bit(const char *name);

#endif
