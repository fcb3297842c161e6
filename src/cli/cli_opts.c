/* SPDX-License-Identifier: Apache-2.0 */
/* The commands and the CLI's own options, declared once (cli_args.h); the method parameters
 * are the library's table (nlsr_param_info_at). The parser and the help read these. */
#include <stddef.h>
#include <string.h>

#include "cli_args.h"

#define JOBS (K_RUN | K_PREPARE | K_APPLY | K_AMPLIFY | K_PLAN)
#define ENGINE (K_RUN | K_PREPARE | K_APPLY | K_AMPLIFY | K_PLAN | K_SYNTH)
#define ALL (ENGINE | K_INSPECT | K_DUMP | K_REWRITE | K_ROLLBACK | K_BENCH | SPLIT)
#define SPLIT (K_REDUCE | K_SWEEP | K_SLURM)

const cli_command cli_commands[] = {
    {"inspect", K_INSPECT, 0, 1, 1, "PATH [options]", "validate a checkpoint and list its tensors"},
    {"dump", K_DUMP, 0, 2, 2, "PATH TENSOR", "print a tensor's values, one per line"},
    {"rewrite", K_REWRITE, 0, 2, 2, "PATH OUT [options]", "rewrite a checkpoint with nlsr's writer"},
    {"run", K_RUN, NLSR_JOB_RUN, 0, 0,
     "--base B --aligned A|--reference R --finetuned T --out DIR|--in-place [--part I/N] "
     "[options]",
     "realign T: all three steps, streamed (--in-place: into T itself, journaled)"},
    {"prepare", K_PREPARE, NLSR_JOB_PREPARE, 0, 0,
     "--base B --aligned A|--reference R --out FILE.nlsrp [options]",
     "steps 1-2 once per aligned model: the patches"},
    {"apply", K_APPLY, NLSR_JOB_APPLY, 0, -1,
     "--patches FILE --finetuned T --out DIR [--shard I/N | --commit] [options], or --patches "
     "FILE --in-place DIR...",
     "step 3 from prepared patches (--in-place: into each folder, journaled)"},
    {"rollback", K_ROLLBACK, 0, 1, -1, "DIR... [options]",
     "restore the originals from the undo journal"},
    {"amplify", K_AMPLIFY, NLSR_JOB_AMPLIFY, 0, 0, "--base B --aligned A --out DIR [options]",
     "step 1 alone: the safety reference checkpoint"},
    {"plan", K_PLAN, NLSR_JOB_RUN | NLSR_JOB_PREPARE | NLSR_JOB_APPLY | NLSR_JOB_AMPLIFY |
                         NLSR_JOB_PLAN,
     0, 0, "--base B --aligned A [--finetuned T] [any job's options]",
     "print a job's streaming plan (units, bytes, memory, time), or time its reads alone"},
    {"synth", K_SYNTH, 0, 0, 0, "--role base|aligned|finetuned --out DIR [options]",
     "write a synthetic checkpoint"},
    {"reduce", K_REDUCE, 0, 1, -1, "--out FILE.nlsrp [--force] [-q] PART...",
     "check the parts of a split prepare or run (--part I/N) and merge them: one prepare's bytes "
     "(run parts: and the selection, made once)"},
    {"sweep", K_SWEEP, NLSR_JOB_APPLY, 1, -1,
     "--patches FILE --out-root DIR|--in-place [--task I/N] [--status] [options] DIR...",
     "apply to a store, task I of N; verified outputs are skipped (docs/SCALE.md)"},
    {"slurm", K_SLURM, 0, 1, -1,
     "sweep|split --dir DIR [--submit] [options] (sweep: --patches --out-root|--in-place DIR...;"
     " split: --base --aligned|--reference --finetuned --out --parts N [--map run] "
     "[--apply-tasks M])",
     "write (and --submit) the sbatch scripts of a sweep or a split job"},
    {"bench", K_BENCH, 0, 0, 0,
     "--synth PRESET [--layers N] | --base B --aligned A --finetuned T [options]",
     "time jobs across memory budgets and I/O backends, cold, against the disks' own rates"},
};
const size_t cli_ncommands = sizeof cli_commands / sizeof cli_commands[0];

/* plan takes every job's options, so that a job's command line with "plan" for its command
 * prints that job's plan; those that do not change the plan are accepted and ignored. */
const cli_opt cli_opts[] = {
    {"base", 0, "PATH", K_RUN | K_PREPARE | K_AMPLIFY | K_PLAN | K_BENCH | K_SLURM, O_BASE, "the base model"},
    {"aligned", 0, "PATH", K_RUN | K_PREPARE | K_AMPLIFY | K_PLAN | K_BENCH | K_SLURM, O_ALIGNED,
     "the aligned model"},
    {"reference", 0, "PATH", K_RUN | K_PREPARE | K_PLAN | K_SLURM, O_REFERENCE,
     "a safety reference (from amplify) instead of --aligned"},
    {"finetuned", 0, "PATH", K_RUN | K_APPLY | K_PLAN | K_BENCH | K_SLURM, O_FINETUNED, "the fine-tuned model"},
    {"patches", 0, "FILE", K_APPLY | K_PLAN | K_SWEEP | K_SLURM, O_PATCHES, "the prepared patches (prepare --out)"},
    {"out", 0, "PATH", ENGINE | K_REDUCE | K_SLURM, O_OUT, "the output (folder, or prepare's patches file)"},
    {"report", 0, "FILE", K_RUN | K_PREPARE | K_APPLY | K_PLAN, O_REPORT,
     "write the JSON report there"},
    {"json", 0, NULL, ENGINE | K_INSPECT | K_ROLLBACK | K_SWEEP, O_JSON, "JSON on stdout"},
    {"json", 0, "FILE", K_BENCH, O_BENCH_JSON, "write the runs and the machine as JSON there"},
    {"quiet", 'q', NULL, ALL & ~K_SLURM, O_QUIET, "no progress or summary on stderr"},
    {"verbose", 'v', NULL, ALL & ~SPLIT, O_VERBOSE,
     "more on stderr: the effective method parameters, debug lines"},
    {"force", 0, NULL, ENGINE | K_REWRITE | K_ROLLBACK | K_REDUCE, O_FORCE,
     "replace an existing output (rollback: restore bytes changed since)"},
    {"mem-budget", 0, "SIZE", ENGINE | K_SWEEP, O_MEM, "memory budget: auto (half of what the machine can give) or a size, e.g. 512M, 4G; 0 = unlimited (auto)"},
    {"io", 0, "auto|uring|pread|mmap", ENGINE | K_SWEEP, O_IO, "the I/O backend (auto)"},
    {"io", 0, "LIST", K_BENCH, O_BENCH_IO, "I/O backends to time: uring,pread,mmap (uring,pread)"},
    {"threads", 0, "N", JOBS, O_THREADS, "compute threads (1)"},
    {"in-place", 0, NULL, K_RUN | K_APPLY | K_PLAN | K_SWEEP | K_SLURM, O_IN_PLACE,
     "realign the checkpoint folders themselves, journaled"},
    {"wait", 0, NULL, K_RUN | K_APPLY | K_ROLLBACK | K_PLAN, O_WAIT,
     "in place: wait for another run's lock"},
    {"dry-run", 0, NULL, K_RUN | K_APPLY | K_PLAN, O_DRY_RUN, "in place: check, write nothing"},
    {"follow-links", 0, NULL, K_RUN | K_APPLY | K_PLAN, O_FOLLOW,
     "in place: patch files reached through links"},
    {"drop-other-weights", 0, NULL, K_RUN | K_APPLY | K_AMPLIFY | K_REWRITE | K_PLAN, O_DROP_OTHER,
     "leave weights nlsr does not realign out of the output (refused otherwise)"},
    {"revision", 0, "REV", JOBS | K_INSPECT, O_REVISION,
     "hub cache repository folders: a ref or commit (refs/main)"},
    {"config", 0, "FILE", ENGINE | K_ROLLBACK | K_BENCH, O_CONFIG,
     "options from a JSON object (keys: long option names); the command line overrides"},
    {"progress-interval", 0, "SECONDS", ENGINE | K_ROLLBACK | K_BENCH, O_PROGRESS,
     "seconds between progress lines when stderr is no terminal (10)"},
    {"discard-journal", 0, NULL, K_ROLLBACK, O_DISCARD,
     "keep the realignment, delete its journal (no undo after that)"},
    {"bandwidth", 0, "R[,W]", K_PLAN, O_BANDWIDTH,
     "read and write speeds for the time estimate, e.g. 1.5G,800M (measured if absent)"},
    {"no-time", 0, NULL, K_PLAN, O_NO_TIME, "no time estimate"},
    {"measure-read", 0, NULL, K_PLAN, O_MEASURE, "carry out and time the plan's reads alone"},
    {"preset", 0, "tiny|llama-8b|llama-70b", K_SYNTH, O_PRESET, "tensor names and shapes (tiny)"},
    {"layers", 0, "N", K_SYNTH | K_BENCH, O_LAYERS, "layers, 1 to 1000 (the preset's)"},
    {"role", 0, "base|aligned|finetuned", K_SYNTH, O_ROLE, "which of the three checkpoints"},
    {"seed", 0, "N", K_SYNTH, O_SYNTH_SEED, "the three roles of one seed belong together (1)"},
    {"dtype", 0, "bf16|f16|f32", K_SYNTH, O_DTYPE, "element type (bf16)"},
    {"shard-size", 0, "SIZE", K_SYNTH, O_SHARD, "bytes per shard at most (5G)"},
    {"part", 0, "I/N", K_PREPARE, O_PART,
     "prepare part I of N (from 0) of a split job: its share of the modules (docs/SCALE.md)"},
    {"task", 0, "I/N", K_PREPARE, O_PART, "the same as --part"},
    {"part", 0, "I/N", K_RUN, O_PART,
     "run part I of N (from 0) of a split job: prepare's part plus its modules' similarities "
     "against --finetuned, into --out FILE.nlsrp; nlsr reduce then selects once "
     "(docs/SCALE.md)"},
    {"task", 0, "I/N", K_RUN, O_PART, "the same as --part"},
    {"shard", 0, "I/N", K_APPLY, O_PART,
     "apply task I of N (from 0) of a split apply: its share of the output shards, into the "
     "job's shared folder beside --out; --commit ends the job (docs/SCALE.md)"},
    {"task", 0, "I/N", K_APPLY, O_PART, "the same as --shard"},
    {"commit", 0, NULL, K_APPLY, O_COMMIT,
     "end a split apply: check every shard the --shard tasks wrote, add the side files and the "
     "report, put the output in place"},
    {"task", 0, "I/N", K_SWEEP, O_PART,
     "sweep task I of N (from 0): its even share of the folders (docs/SCALE.md)"},
    {"out-root", 0, "DIR", K_SWEEP | K_SLURM, O_OUT_ROOT,
     "sweep: each checkpoint into DIR/NAME, its report DIR/NAME.nlsr-report.json"},
    {"status", 0, NULL, K_SWEEP, O_STATUS,
     "run nothing: each checkpoint's state (done, partial, missing); exit 5 until all are done"},
    {"summary", 0, "FILE", K_SWEEP, O_SUMMARY, "write the checkpoints' states there as JSON"},
    {"dir", 0, "DIR", K_SLURM, O_DIR, "where the scripts, logs (and a split's parts) go"},
    {"submit", 0, NULL, K_SLURM, O_SUBMIT, "submit the scripts (sbatch) and print the job ids"},
    {"concurrency", 0, "K", K_SLURM, O_CONCURRENCY, "array tasks running at once (%K)"},
    {"parts", 0, "N", K_SLURM, O_PARTS, "split: prepare parts (the map array)"},
    {"map", 0, "prepare|run", K_SLURM, O_MAP,
     "split: the map array's tasks: prepare --part (any fine-tune; each apply computes the "
     "selection) or run --part (this fine-tune; the reduce selects once and apply tasks read "
     "only their shards) (prepare)"},
    {"apply-tasks", 0, "M", K_SLURM, O_APPLY_TASKS,
     "split: the apply as M apply --shard tasks and a commit (one apply if absent)"},
    {"mem-budget", 0, "SIZE", K_SLURM, O_MEM,
     "each task's memory budget (1G); Slurm's --mem is it plus 512 MiB"},
    {"cpus", 0, "C", K_SLURM, O_CPUS, "CPUs per task (2)"},
    {"time", 0, "T", K_SLURM, O_TIME, "each job's time limit (sbatch --time)"},
    {"partition", 0, "P", K_SLURM, O_PARTITION, "the Slurm partition"},
    {"account", 0, "A", K_SLURM, O_ACCOUNT, "the Slurm account"},
    {"prepare-opts", 0, "STR", K_SLURM, O_PREPARE_OPTS,
     "split: options added to each map task (prepare, or run with --map run: the selection "
     "options go there)"},
    {"apply-opts", 0, "STR", K_SLURM, O_APPLY_OPTS,
     "options added to the apply (split) or each sweep task, e.g. '--seed 7'"},
    {"nlsr", 0, "PATH", K_SLURM, O_NLSR, "the nlsr the scripts run (this one)"},
    {"synth", 0, "tiny|llama-8b|llama-70b", K_BENCH, O_BENCH_SYNTH,
     "time a synthetic triple of this preset (made in --scratch)"},
    {"scratch", 0, "DIR", K_BENCH, O_SCRATCH,
     "outputs and the synthetic triple, removed at the end (beside --csv/--json/--plot)"},
    {"budgets", 0, "LIST", K_BENCH, O_BUDGETS, "memory budgets to time, e.g. 256M,1G,4G (1G)"},
    {"jobs", 0, "LIST", K_BENCH, O_JOBS,
     "jobs to time: run,run-in-place,prepare,apply,amplify (run)"},
    {"reps", 0, "N", K_BENCH, O_REPS, "runs per combination, 1 to 1000 (1)"},
    {"warm", 0, NULL, K_BENCH, O_WARM, "drop no caches: warm runs"},
    {"drop-caches", 0, NULL, K_BENCH, O_DROP_CACHES,
     "cold through /proc/sys/vm/drop_caches (root), not posix_fadvise"},
    {"csv", 0, "FILE", K_BENCH, O_CSV, "write the runs as CSV there"},
    {"plot", 0, "FILE.svg", K_BENCH, O_PLOT, "plot time and peak RSS against the budget there"},
    {"after-each", 0, "CMD", K_BENCH, O_AFTER_EACH,
     "after each timed run, run CMD (sh -c, untimed) on the same run set up and cold again;"
     " NLSR_BENCH_COMMAND holds the nlsr command line doing that job"},
    {"help", 'h', NULL, ALL, O_HELP, "this help"},
    {"version", 0, NULL, ALL, O_VERSION, "print the version"},
};
const size_t cli_nopts = sizeof cli_opts / sizeof cli_opts[0];

const cli_command *cli_command_of(unsigned bit)
{
    for (size_t i = 0; i < cli_ncommands; i++)
        if (cli_commands[i].bit == bit) return &cli_commands[i];
    return NULL;
}

unsigned cli_command_bit(const char *name)
{
    for (size_t i = 0; name && i < cli_ncommands; i++)
        if (strcmp(cli_commands[i].name, name) == 0) return cli_commands[i].bit;
    return 0;
}
