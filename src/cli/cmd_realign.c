/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr run`, `nlsr prepare`, `nlsr apply`: option parsing onto nlsr_realign_params and the
 * public jobs. Options a command cannot honour are usage errors rather than silently ignored
 * (e.g. --beta for apply: the patch file fixes it). */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_output.h"
#include "cli_scorer.h"
#include "nlsr.h"

enum { C_RUN = 1, C_PREPARE = 2, C_APPLY = 4, C_ALL = 7 };

enum opt_id {
    O_BASE, O_ALIGNED, O_REFERENCE, O_FINETUNED, O_PATCHES, O_OUT, O_BETA, O_SPARSITY, O_SELECT,
    O_SEMANTICS, O_PRUNE, O_EPSILON, O_SEED, O_TAU, O_TARGETS, O_REPORT, O_MEM, O_IO, O_JSON,
    O_QUIET, O_FORCE, O_THREADS, O_AMPLIFY, O_ALPHA, O_MASK, O_MASK_OUT, O_SCORER,
    O_IN_PLACE, O_WAIT, O_FOLLOW_LINKS, O_DRY_RUN, O_REVISION, O_DROP_OTHER, O_PART
};

static const struct opt {
    const char *name;
    enum opt_id id;
    int has_arg;
    int cmds;
} opts[] = {
    {"--base", O_BASE, 1, C_RUN | C_PREPARE},
    {"--aligned", O_ALIGNED, 1, C_RUN | C_PREPARE},
    {"--reference", O_REFERENCE, 1, C_RUN | C_PREPARE},
    {"--finetuned", O_FINETUNED, 1, C_RUN | C_APPLY},
    {"--patches", O_PATCHES, 1, C_APPLY},
    {"--out", O_OUT, 1, C_ALL},
    {"--beta", O_BETA, 1, C_RUN | C_PREPARE},
    {"--sparsity", O_SPARSITY, 1, C_RUN | C_PREPARE},
    {"--select", O_SELECT, 1, C_RUN | C_APPLY},
    {"--semantics", O_SEMANTICS, 1, C_RUN | C_APPLY},
    {"--prune-rate", O_PRUNE, 1, C_RUN | C_APPLY},
    {"--epsilon", O_EPSILON, 1, C_RUN | C_APPLY},
    {"--seed", O_SEED, 1, C_ALL},
    {"--tau", O_TAU, 1, C_RUN | C_APPLY},
    {"--targets", O_TARGETS, 1, C_RUN | C_PREPARE},
    {"--report", O_REPORT, 1, C_ALL},
    {"--mem-budget", O_MEM, 1, C_ALL},
    {"--io", O_IO, 1, C_ALL},
    {"--json", O_JSON, 0, C_ALL},
    {"-q", O_QUIET, 0, C_ALL},
    {"--quiet", O_QUIET, 0, C_ALL},
    {"--force", O_FORCE, 0, C_ALL},
    {"--threads", O_THREADS, 1, C_ALL},
    {"--amplify", O_AMPLIFY, 1, C_RUN | C_PREPARE},
    {"--alpha", O_ALPHA, 1, C_RUN | C_PREPARE},
    {"--mask", O_MASK, 1, C_RUN | C_PREPARE},
    {"--mask-out", O_MASK_OUT, 1, C_RUN | C_PREPARE},
    /* Step 2's scorer (cli_scorer.c). */
    {"--scorer", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--rank", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--rank-fraction", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--rank-reading", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--power-iters", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--oversample", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--exact-svd", O_SCORER, 0, C_RUN | C_PREPARE},
    {"--activations", O_SCORER, 1, C_RUN | C_PREPARE},
    {"--wanda-select", O_SCORER, 1, C_RUN | C_PREPARE},
    /* In place (cmd_rollback.c runs the per-checkpoint loop). */
    {"--in-place", O_IN_PLACE, 0, C_RUN | C_APPLY},
    {"--wait", O_WAIT, 0, C_RUN | C_APPLY},
    {"--follow-links", O_FOLLOW_LINKS, 0, C_RUN | C_APPLY},
    {"--dry-run", O_DRY_RUN, 0, C_RUN | C_APPLY},
    /* Hub cache repository folders among the checkpoints (README "Input layouts"). */
    {"--revision", O_REVISION, 1, C_ALL},
    /* The output folder (README "What the output folder holds"). */
    {"--drop-other-weights", O_DROP_OTHER, 0, C_RUN | C_APPLY},
    /* A part of a split prepare (cmd_slurm.c, docs/SCALE.md); --task is the same. */
    {"--part", O_PART, 1, C_PREPARE},
    {"--task", O_PART, 1, C_PREPARE},
};

typedef struct args {
    const char *base, *aligned, *reference, *finetuned, *patches, *out;
    nlsr_realign_params p;
    uint64_t mem;
    int have_mem;
    nlsr_io_kind io;
    int quiet, threads;
    char *targets_buf;  /* the --targets list, split in place */
    const char **targets;
    cli_scorer sc;      /* writes a->p.scorer */
    int seed_given;
    int in_place;
    nlsr_inplace_params ip;
    const char **dirs;  /* apply --in-place DIR...: the positional checkpoint folders */
    int ndirs;
    const char *revision;
    unsigned part_index, part_count; /* prepare --part I/N; count 0: whole */
} args;

static int parse_double(const char *opt, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v))
        return cli_usage_error("%s needs a number, got '%s'", opt, s);
    *out = v;
    return 0;
}

static int parse_targets(args *a, const char *s)
{
    free(a->targets_buf);
    free(a->targets);
    a->targets = NULL;
    a->targets_buf = strdup(s);
    size_t n = 1;
    for (const char *c = s; *c; c++) n += *c == ',';
    a->targets = calloc(n, sizeof *a->targets);
    if (!a->targets_buf || !a->targets) return cli_usage_error("out of memory");
    size_t k = 0;
    for (char *tok = strtok(a->targets_buf, ","); tok; tok = strtok(NULL, ","))
        if (*tok) a->targets[k++] = tok;
    if (k == 0) return cli_usage_error("--targets needs a comma-separated list of names");
    a->p.targets = a->targets;
    a->p.ntargets = k;
    return 0;
}

static int set_opt(args *a, enum opt_id id, const char *opt, const char *v)
{
    nlsr_realign_params *p = &a->p;
    switch (id) {
    case O_BASE: a->base = v; break;
    case O_ALIGNED: a->aligned = v; break;
    case O_REFERENCE: a->reference = v; break;
    case O_FINETUNED: a->finetuned = v; break;
    case O_PATCHES: a->patches = v; break;
    case O_OUT: a->out = v; break;
    case O_BETA: return parse_double(opt, v, &p->beta);
    case O_SPARSITY:
        if (parse_double(opt, v, &p->sparsity)) return 2;
        if (p->sparsity < 0 || p->sparsity > 1)
            return cli_usage_error("--sparsity must lie in [0, 1], got '%s'", v);
        break;
    case O_SELECT:
        if (strcmp(v, "adaptive") == 0) p->select.mode = NLSR_SELECT_ADAPTIVE;
        else if (strcmp(v, "threshold") == 0) p->select.mode = NLSR_SELECT_THRESHOLD;
        else if (strcmp(v, "all") == 0) p->select.mode = NLSR_SELECT_ALL;
        else if (strcmp(v, "none") == 0) p->select.mode = NLSR_SELECT_NONE;
        else return cli_usage_error("--select takes adaptive, threshold, all or none, not '%s'", v);
        break;
    case O_SEMANTICS:
        if (strcmp(v, "paper") == 0) p->select.semantics = NLSR_SEMANTICS_PAPER;
        else if (strcmp(v, "authors") == 0) p->select.semantics = NLSR_SEMANTICS_AUTHORS;
        else return cli_usage_error("--semantics takes paper or authors, not '%s'", v);
        break;
    case O_PRUNE: return parse_double(opt, v, &p->select.prune_rate);
    case O_EPSILON: return parse_double(opt, v, &p->select.epsilon);
    case O_TAU: return parse_double(opt, v, &p->select.tau);
    case O_SEED: {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 0);
        if (end == v || *end != '\0' || errno == ERANGE || v[0] == '-')
            return cli_usage_error("--seed needs a non-negative integer, got '%s'", v);
        /* One seed for the run's randomness: the selection's draws and the randomized SVD. */
        p->select.seed = (uint64_t)s;
        p->scorer.seed = (uint64_t)s;
        a->seed_given = 1;
        break;
    }
    case O_TARGETS: return parse_targets(a, v);
    case O_REPORT: p->report_path = v; break;
    case O_MEM:
        if (nlsr_parse_size(v, &a->mem) != 0)
            return cli_usage_error("--mem-budget needs a size like 512M or 4G, got '%s'", v);
        a->have_mem = 1;
        break;
    case O_IO:
        if (strcmp(v, "auto") == 0) a->io = NLSR_IO_AUTO;
        else if (strcmp(v, "io_uring") == 0 || strcmp(v, "uring") == 0) a->io = NLSR_IO_URING;
        else if (strcmp(v, "pread") == 0) a->io = NLSR_IO_PREAD;
        else if (strcmp(v, "mmap") == 0) a->io = NLSR_IO_MMAP;
        else return cli_usage_error("--io takes auto, io_uring, pread or mmap, not '%s'", v);
        break;
    case O_JSON: p->json_stdout = 1; break;
    case O_QUIET: a->quiet = 1; break;
    case O_FORCE: p->force = 1; break;
    case O_THREADS: {
        char *end;
        long t = strtol(v, &end, 10);
        if (end == v || *end != '\0' || t < 1 || t > 4096)
            return cli_usage_error("--threads needs a positive integer, got '%s'", v);
        a->threads = (int)t;
        break;
    }
    case O_AMPLIFY:
        if (strcmp(v, "paper") == 0) p->amplify = NLSR_AMPLIFY_PAPER;
        else if (strcmp(v, "authors") == 0) p->amplify = NLSR_AMPLIFY_AUTHORS;
        else return cli_usage_error("--amplify takes paper or authors, not '%s'", v);
        break;
    case O_ALPHA: return parse_double(opt, v, &p->alpha);
    case O_MASK: p->mask_path = v; break;
    case O_MASK_OUT: p->mask_out_path = v; break;
    case O_SCORER: return cli_scorer_set(&a->sc, opt, v);
    case O_IN_PLACE: a->in_place = 1; break;
    case O_WAIT: a->ip.wait = 1; break;
    case O_FOLLOW_LINKS: a->ip.follow_links = 1; break;
    case O_DRY_RUN: a->ip.dry_run = 1; break;
    case O_REVISION: a->revision = v; break;
    case O_DROP_OTHER: p->drop_other_weights = 1; break;
    case O_PART:
        if (cli_parse_task(opt, v, &a->part_index, &a->part_count)) return 2;
        break;
    }
    return 0;
}

static int parse_args(int argc, char **argv, int cmd, const char *cname, args *a)
{
    memset(a, 0, sizeof *a);
    a->p = NLSR_REALIGN_PARAMS_DEFAULT;
    a->sc.sp = &a->p.scorer;
    a->io = NLSR_IO_AUTO;
    a->ip = NLSR_INPLACE_PARAMS_DEFAULT;
    if (!(a->dirs = calloc((size_t)argc + 1, sizeof *a->dirs))) return cli_usage_error("out of memory");
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], *val = NULL;
        if (cmd == C_APPLY && (arg[0] != '-' || !arg[1])) {
            a->dirs[a->ndirs++] = arg; /* apply --in-place DIR... (checked by cmd_apply) */
            continue;
        }
        size_t L = strlen(arg);
        const char *eq = strchr(arg, '=');
        if (eq && arg[0] == '-') L = (size_t)(eq - arg);
        const struct opt *o = NULL;
        for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++)
            if (strlen(opts[k].name) == L && strncmp(opts[k].name, arg, L) == 0) o = &opts[k];
        if (!o) return cli_usage_error("%s: unknown option or argument '%s'", cname, arg);
        if (!(o->cmds & cmd))
            return cli_usage_error("%s does not take %s%s", cname, o->name,
                                   cmd == C_APPLY && (o->id == O_BETA || o->id == O_SPARSITY ||
                                                      o->id == O_TARGETS)
                                       ? " (the patch file fixes it)"
                                       : "");
        if (o->has_arg) {
            if (eq && arg[0] == '-') val = eq + 1;
            else if (i + 1 < argc) val = argv[++i];
            else return cli_usage_error("%s needs a value", o->name);
        } else if (eq) {
            return cli_usage_error("%s takes no value", o->name);
        }
        int rc = set_opt(a, o->id, o->name, val);
        if (rc) return rc;
    }
    return cli_scorer_finish(&a->sc);
}

static void args_free(args *a)
{
    free(a->dirs);
    free(a->targets_buf);
    free(a->targets);
}

static int run_job(int cmd, args *a)
{
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        fprintf(stderr, "nlsr: error: out of memory\n");
        return 1;
    }
    if (a->have_mem) nlsr_ctx_set_mem_budget(ctx, a->mem);
    nlsr_ctx_set_io(ctx, a->io);
    cli_output_install(ctx, a->quiet ? -1 : 0, -1);
    if (a->threads) nlsr_ctx_set_threads(ctx, a->threads);
    int rc = nlsr_ctx_set_revision(ctx, a->revision);
    if (rc < 0) {
        int status = cli_fail(ctx, rc);
        nlsr_ctx_free(ctx);
        return status;
    }
    if (cmd == C_RUN)
        rc = nlsr_run(ctx, a->base, a->aligned, a->reference, a->finetuned, a->out, &a->p);
    else if (cmd == C_PREPARE && a->part_count) {
        /* A requeued or repeated part finds its finished file and leaves it. */
        rc = nlsr_patches_verify(ctx, a->out, (int)a->part_index, a->part_count);
        if (rc == 1) {
            if (!a->quiet)
                fprintf(stderr, "nlsr: %s: part %u/%u is already there and verifies; kept\n",
                        a->out, a->part_index, a->part_count);
            nlsr_ctx_free(ctx);
            return 0;
        }
        if (rc == 0)
            rc = nlsr_prepare_part(ctx, a->base, a->aligned, a->reference, a->out, &a->p,
                                   a->part_index, a->part_count);
    } else if (cmd == C_PREPARE)
        rc = nlsr_prepare(ctx, a->base, a->aligned, a->reference, a->out, &a->p);
    else
        rc = nlsr_apply(ctx, a->patches, a->finetuned, a->out, &a->p);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    nlsr_ctx_free(ctx);
    return status;
}

/* --in-place: checks of the options, then the per-checkpoint loop of cmd_rollback.c. */
static int inplace_job(int cmd, args *a)
{
    const char *name = cmd == C_RUN ? "run" : "apply";
    if (a->out) return cli_usage_error("%s --in-place writes into the checkpoint: drop --out", name);
    if (a->revision)
        return cli_usage_error("%s --in-place does not take --revision: a hub cache's files are "
                               "shared by its revisions (copy the snapshot first)",
                               name);
    if (a->p.drop_other_weights)
        return cli_usage_error("%s --in-place cannot leave weights out of the checkpoint folder: "
                               "move them out, or write a new folder with --out", name);
    if (a->finetuned) a->dirs[a->ndirs++] = a->finetuned;
    if (a->ndirs == 0)
        return cli_usage_error("%s --in-place needs the checkpoint folder%s", name,
                               cmd == C_RUN ? " (--finetuned DIR)" : "s (DIR... or --finetuned DIR)");
    if (cmd == C_RUN && a->ndirs > 1)
        return cli_usage_error("run --in-place takes one checkpoint; sweep a store with prepare "
                               "once and apply --in-place DIR...");
    if (a->p.report_path && a->ndirs > 1)
        return cli_usage_error("--report takes one checkpoint; --json summarizes a sweep");
    cli_inplace c;
    memset(&c, 0, sizeof c);
    c.op = cmd == C_RUN ? CLI_INPLACE_RUN : CLI_INPLACE_APPLY;
    c.command = name;
    c.base = a->base;
    c.aligned = a->aligned;
    c.reference = a->reference;
    c.patches = a->patches;
    c.dirs = a->dirs;
    c.ndirs = a->ndirs;
    c.p = a->p;
    c.json = c.p.json_stdout;
    c.p.json_stdout = 0; /* stdout carries the in-place summary */
    c.ip = a->ip;
    c.mem = a->mem;
    c.have_mem = a->have_mem;
    c.io = a->io;
    c.quiet = a->quiet;
    c.threads = a->threads;
    return cli_inplace_main(&c);
}

static int inplace_only(const args *a, const char *name)
{
    if (a->in_place) return 0;
    if (a->ip.wait || a->ip.follow_links || a->ip.dry_run)
        return cli_usage_error("%s: --wait, --follow-links and --dry-run go with --in-place", name);
    if (a->ndirs)
        return cli_usage_error("%s: unknown option or argument '%s'", name, a->dirs[0]);
    return 0;
}

int cmd_run(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, C_RUN, "run", &a);
    if (rc == 0 && (!a.aligned == !a.reference))
        rc = cli_usage_error("run needs exactly one of --aligned and --reference");
    if (rc == 0 && a.in_place) {
        rc = inplace_job(C_RUN, &a);
        args_free(&a);
        return rc;
    }
    if (rc == 0) rc = inplace_only(&a, "run");
    if (rc == 0 && (!a.finetuned || !a.out))
        rc = cli_usage_error("run needs --finetuned and --out");
    if (rc == 0) rc = run_job(C_RUN, &a);
    args_free(&a);
    return rc;
}

int cmd_prepare(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, C_PREPARE, "prepare", &a);
    if (rc == 0 && (!a.aligned == !a.reference))
        rc = cli_usage_error("prepare needs exactly one of --aligned and --reference");
    if (rc == 0 && !a.out) rc = cli_usage_error("prepare needs --out FILE.nlsrp");
    if (rc == 0 && a.seed_given && a.p.scorer.kind != NLSR_SCORER_LOWRANK)
        rc = cli_usage_error("prepare takes --seed only for --scorer lowrank (the randomized "
                             "SVD); the selection's seed is apply's");
    if (rc == 0) rc = run_job(C_PREPARE, &a);
    args_free(&a);
    return rc;
}

int cmd_apply(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, C_APPLY, "apply", &a);
    if (rc == 0 && a.in_place) {
        rc = a.patches ? inplace_job(C_APPLY, &a)
                       : cli_usage_error("apply --in-place needs --patches FILE");
        args_free(&a);
        return rc;
    }
    if (rc == 0) rc = inplace_only(&a, "apply");
    if (rc == 0 && (!a.patches || !a.finetuned || !a.out))
        rc = cli_usage_error("apply needs --patches, --finetuned and --out");
    if (rc == 0) rc = run_job(C_APPLY, &a);
    args_free(&a);
    return rc;
}
