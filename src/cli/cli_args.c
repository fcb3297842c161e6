/* SPDX-License-Identifier: Apache-2.0 */
/* The one command-line parser (cli_args.h): --config FILE first, then the command line over
 * it, each value through the same setter (the library's nlsr_params_set for the method
 * parameters, set_opt below for the CLI's own options). */
#define _GNU_SOURCE
#include "cli_args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Where a value came from, for messages: NULL (the command line) or the config file. */
typedef struct source {
    cli_args *a;
    const char *config;
} source;

static int bad(const source *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static int bad(const source *s, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->config) return cli_usage_error("%s: %s", s->config, msg);
    return cli_usage_error("%s", msg);
}

/* The entry named so for command `cmd`; else any entry of that name (the caller says the
 * command does not take it); else NULL. */
static const cli_opt *find_opt(const char *name, size_t len, char shrt, unsigned cmd)
{
    const cli_opt *other = NULL;
    for (size_t i = 0; i < cli_nopts; i++) {
        const cli_opt *o = &cli_opts[i];
        if (shrt ? o->shrt == shrt : strlen(o->name) == len && strncmp(o->name, name, len) == 0) {
            if (o->cmds & cmd) return o;
            if (!other) other = o;
        }
    }
    return other;
}

static int find_param(const char *name, size_t len)
{
    for (size_t i = 0; i < nlsr_param_count(); i++) {
        const char *n = nlsr_param_info_at(i)->name;
        if (strlen(n) == len && strncmp(n, name, len) == 0) return (int)i;
    }
    return -1;
}

static int flag_value(const source *s, const char *name, const char *v, int *out)
{
    if (!v || strcmp(v, "true") == 0) *out = 1;
    else if (strcmp(v, "false") == 0) *out = 0;
    else return bad(s, "--%s takes true or false, not '%s'", name, v);
    return 0;
}

/* "1.5G" or "1.5G,800M": read and write speeds per second (one value: both). */
static int parse_bandwidth(const char *v, double *rd, double *wr)
{
    char buf[64];
    if (strlen(v) >= sizeof buf) return -1;
    strcpy(buf, v);
    char *comma = strchr(buf, ',');
    if (comma) *comma = '\0';
    uint64_t x = 0, y = 0;
    if (nlsr_parse_size(buf, &x) != 0 || x == 0) return -1;
    y = x;
    if (comma && (nlsr_parse_size(comma + 1, &y) != 0 || y == 0)) return -1;
    *rd = (double)x;
    *wr = (double)y;
    return 0;
}

static int parse_count(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end || errno || n < lo || n > hi) return -1;
    *out = n;
    return 0;
}

static int pick(const char *v, const char *const *names, int *out)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

/* One of the CLI's own options. v is NULL for a flag on the command line. */
static int set_opt(const source *s, const cli_opt *o, const char *v)
{
    cli_args *a = s->a;
    const char *n = o->name;
    long l = 0;
    int k = 0;
    switch (o->id) {
    case O_BASE: a->base = v; break;
    case O_ALIGNED: a->aligned = v; break;
    case O_REFERENCE: a->reference = v; break;
    case O_FINETUNED: a->finetuned = v; break;
    case O_PATCHES: a->patches = v; break;
    case O_OUT: a->out = v; break;
    case O_REVISION: a->revision = v; break;
    case O_REPORT: a->p.report_path = v; break;
    case O_JSON: return flag_value(s, n, v, &a->p.json_stdout);
    case O_QUIET: return flag_value(s, n, v, &a->quiet);
    case O_VERBOSE: return flag_value(s, n, v, &a->verbose);
    case O_FORCE: return flag_value(s, n, v, &a->p.force);
    case O_IN_PLACE: return flag_value(s, n, v, &a->in_place);
    case O_COMMIT: return flag_value(s, n, v, &a->commit);
    case O_OUT_ROOT: a->split.out_root = v; break;
    case O_SUMMARY: a->split.summary = v; break;
    case O_DIR: a->split.dir = v; break;
    case O_TIME: a->split.time = v; break;
    case O_PARTITION: a->split.partition = v; break;
    case O_ACCOUNT: a->split.account = v; break;
    case O_PREPARE_OPTS: a->split.prepare_opts = v; break;
    case O_APPLY_OPTS: a->split.apply_opts = v; break;
    case O_NLSR: a->split.nlsr = v; break;
    case O_MAP:
        if (strcmp(v, "run") != 0 && strcmp(v, "prepare") != 0)
            return bad(s, "--%s takes prepare or run, not '%s'", n, v);
        a->split.map_run = strcmp(v, "run") == 0;
        break;
    case O_STATUS: return flag_value(s, n, v, &a->split.status);
    case O_SUBMIT: return flag_value(s, n, v, &a->split.submit);
    case O_CONCURRENCY:
    case O_PARTS:
    case O_APPLY_TASKS:
    case O_CPUS: {
        unsigned *dst = o->id == O_CONCURRENCY ? &a->split.concurrency
                        : o->id == O_PARTS     ? &a->split.parts
                        : o->id == O_APPLY_TASKS ? &a->split.apply_tasks
                                                 : &a->split.cpus;
        if (v[0] < '0' || v[0] > '9' || parse_count(v, 1, 1000000, &l) != 0)
            return bad(s, "--%s needs a whole number of at least 1, not '%s'", n, v);
        *dst = (unsigned)l;
        break;
    }
    case O_WAIT: return flag_value(s, n, v, &a->ip.wait);
    case O_DRY_RUN: return flag_value(s, n, v, &a->ip.dry_run);
    case O_FOLLOW: return flag_value(s, n, v, &a->ip.follow_links);
    case O_DROP_OTHER: return flag_value(s, n, v, &a->p.drop_other_weights);
    case O_DISCARD: return flag_value(s, n, v, &a->discard_journal);
    case O_MEASURE: return flag_value(s, n, v, &a->measure_read);
    case O_NO_TIME:
        if (flag_value(s, n, v, &k)) return 2;
        if (k) a->read_bw = a->write_bw = -1;
        break;
    case O_MEM:
        if (nlsr_parse_mem_budget(v, &a->mem) != 0)
            return bad(s, "--%s needs auto or a size such as 512M, 1.5G or 4G, not '%s'", n, v);
        a->have_mem = 1;
        break;
    case O_IO: {
        static const char *const kinds[] = {"auto", "uring", "pread", "mmap", NULL};
        /* io_uring: the kernel's name, accepted as an alias. */
        if (strcmp(v, "io_uring") == 0) k = NLSR_IO_URING;
        else if (pick(v, kinds, &k) != 0)
            return bad(s, "--%s takes auto|uring|pread|mmap, not '%s'", n, v);
        a->io = (nlsr_io_kind)k;
        break;
    }
    case O_THREADS:
        if (parse_count(v, 1, 4096, &l) != 0)
            return bad(s, "--%s needs a count from 1 to 4096, not '%s'", n, v);
        a->threads = (int)l;
        break;
    case O_PROGRESS: {
        char *end;
        errno = 0;
        double d = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(d) || d < 0)
            return bad(s, "--%s needs a number of seconds (0 or more), not '%s'", n, v);
        a->progress_interval = d;
        break;
    }
    case O_BANDWIDTH:
        if (parse_bandwidth(v, &a->read_bw, &a->write_bw) != 0)
            return bad(s, "--%s needs READ[,WRITE] speeds per second such as 1.5G,800M, not '%s'",
                       n, v);
        break;
    case O_PRESET: {
        static const char *const presets[] = {"tiny", "llama-8b", "llama-70b", NULL};
        if (pick(v, presets, &k) != 0)
            return bad(s, "--%s takes tiny|llama-8b|llama-70b, not '%s'", n, v);
        a->synth.preset = presets[k];
        break;
    }
    case O_LAYERS:
        if (parse_count(v, 1, 1000, &l) != 0)
            return bad(s, "--%s needs a count from 1 to 1000, not '%s'", n, v);
        a->synth.layers = (int)l;
        break;
    case O_ROLE: {
        static const char *const roles[] = {"base", "aligned", "finetuned", NULL};
        if (pick(v, roles, &k) != 0)
            return bad(s, "--%s takes base|aligned|finetuned, not '%s'", n, v);
        a->synth.role = (nlsr_synth_role)k;
        a->have_role = 1;
        break;
    }
    case O_SYNTH_SEED: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(v, &end, 10);
        if (end == v || *end || errno || v[0] == '-')
            return bad(s, "--%s needs a non-negative integer, not '%s'", n, v);
        a->synth.seed = u;
        break;
    }
    case O_DTYPE: {
        static const char *const names[] = {"bf16", "f16", "f32", NULL};
        static const nlsr_dtype types[] = {NLSR_DTYPE_BF16, NLSR_DTYPE_F16, NLSR_DTYPE_F32};
        if (pick(v, names, &k) != 0) return bad(s, "--%s takes bf16|f16|f32, not '%s'", n, v);
        a->synth.dtype = types[k];
        break;
    }
    case O_SHARD:
        if (nlsr_parse_size(v, &a->synth.shard_size) != 0 || a->synth.shard_size == 0)
            return bad(s, "--%s needs a size such as 5G, not '%s'", n, v);
        break;
    case O_PART: {
        char opt[64];
        snprintf(opt, sizeof opt, "--%s", o->name);
        if (cli_parse_task(opt, v, &a->part_index, &a->part_count)) return 2;
        break;
    }
    /* bench: the lists and the preset are checked by nlsr_bench, with its own messages. */
    case O_BENCH_SYNTH: a->bench.synth = v; break;
    case O_SCRATCH: a->bench.scratch = v; break;
    case O_BUDGETS: a->bench.budgets = v; break;
    case O_BENCH_IO: a->bench.ios = v; break;
    case O_JOBS: a->bench.jobs = v; break;
    case O_CSV: a->bench.csv = v; break;
    case O_BENCH_JSON: a->bench.json = v; break;
    case O_PLOT: a->bench.plot = v; break;
    case O_AFTER_EACH: a->bench.after_each = v; break;
    case O_WARM: return flag_value(s, n, v, &a->bench.warm);
    case O_DROP_CACHES: return flag_value(s, n, v, &a->bench.drop_caches);
    case O_REPS:
        if (parse_count(v, 1, 1000, &l) != 0)
            return bad(s, "--%s needs a count from 1 to 1000, not '%s'", n, v);
        a->bench.reps = (int)l;
        break;
    case O_CONFIG: /* read before the command line (cli_parse) */
    case O_HELP:
    case O_VERSION: break;
    }
    return 0;
}

/* A method parameter (the library's table). */
static int set_param(const source *s, int i, const char *v)
{
    cli_args *a = s->a;
    const nlsr_param_info *in = nlsr_param_info_at((size_t)i);
    const char *const *old = a->p.targets;
    char err[256];
    if (!v && in->type == NLSR_PARAM_FLAG) v = "true";
    if (nlsr_params_set(&a->p, in->name, v, err, sizeof err) != 0) {
        if (s->config) return cli_usage_error("%s: %s", s->config, err);
        return cli_usage_error("--%s", err);
    }
    if (a->p.targets != old) {
        free(a->targets_block); /* the list it replaces */
        a->targets_block = (char *)a->p.targets;
    }
    a->given |= 1ull << i;
    return 0;
}

/* Looks `name` (len bytes; or the short option shrt) up for this command: *co one of the
 * CLI's options, or *pi the index of a method parameter. 0, or the usage exit status. */
static int lookup(const source *s, const char *name, size_t len, char shrt, const cli_opt **co,
                  int *pi)
{
    const cli_args *a = s->a;
    const cli_command *cmd = cli_command_of(a->cmd);
    *co = find_opt(name, len, shrt, a->cmd);
    *pi = -1;
    if (*co && ((*co)->cmds & a->cmd)) return 0;
    int i = shrt ? -1 : find_param(name, len);
    if (i >= 0 && (nlsr_param_info_at((size_t)i)->jobs & cmd->jobs)) {
        *co = NULL;
        *pi = i;
        return 0;
    }
    char what[128];
    if (shrt) snprintf(what, sizeof what, "-%c", shrt);
    else snprintf(what, sizeof what, "--%.*s", (int)(len < 100 ? len : 100), name);
    if (*co || i >= 0) {
        int fixed = a->cmd == K_APPLY && i >= 0 &&
                    nlsr_param_info_at((size_t)i)->jobs & (NLSR_JOB_PREPARE);
        if (s->config)
            return cli_usage_error("%s: %s does not take \"%s\"%s", s->config, cmd->name,
                                   what + 2, fixed ? " (the patch file fixes it)" : "");
        return cli_usage_error("%s does not take %s%s", cmd->name, what,
                               fixed ? " (the patch file fixes it)" : "");
    }
    if (s->config)
        return cli_usage_error("%s: unknown key \"%s\" (keys are %s's long option names)",
                               s->config, what + 2, cmd->name);
    return cli_usage_error("%s: unknown option '%s'", cmd->name, what);
}

static int config_entry(void *arg, const char *key, const char *value)
{
    const source *s = arg;
    const cli_opt *o;
    int i;
    size_t len = strlen(key);
    if (len == 0 || strcmp(key, "config") == 0 || strcmp(key, "help") == 0 ||
        strcmp(key, "version") == 0)
        return cli_usage_error("%s: unknown key \"%s\"", s->config, key);
    int rc = lookup(s, key, len, 0, &o, &i);
    if (rc) return rc;
    /* Paths keep pointing at the value: keep a copy as long as the arguments. */
    cli_args *a = s->a;
    char **more = realloc(a->owned, (size_t)(a->nowned + 1) * sizeof *more);
    char *copy = strdup(value);
    if (more) a->owned = more;
    if (!more || !copy) {
        free(copy);
        return cli_usage_error("out of memory");
    }
    a->owned[a->nowned++] = copy;
    return o ? set_opt(s, o, copy) : set_param(s, i, copy);
}

static int read_config(cli_args *a, const char *path)
{
    source s = {a, path};
    nlsr_ctx *ctx = nlsr_ctx_create();
    if (!ctx) return cli_usage_error("out of memory");
    int rc = nlsr_config_read(ctx, path, config_entry, &s);
    if (rc < 0) rc = cli_fail(ctx, rc);
    nlsr_ctx_free(ctx);
    return rc;
}

/* The --config value on the command line, if any (the last one). */
static const char *config_path(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (strncmp(argv[i], "--config=", 9) == 0) path = argv[i] + 9;
        else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) path = argv[++i];
    }
    return path;
}

int cli_parse(unsigned cmd, int argc, char **argv, cli_args *a)
{
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->name = cli_command_of(cmd)->name;
    a->p = NLSR_REALIGN_PARAMS_DEFAULT;
    a->io = NLSR_IO_AUTO;
    a->ip = NLSR_INPLACE_PARAMS_DEFAULT;
    a->synth = NLSR_SYNTH_PARAMS_DEFAULT;
    a->bench = NLSR_BENCH_PARAMS_DEFAULT;
    a->progress_interval = -1; /* the printer's default (10 s) */
    if (!(a->pos = calloc((size_t)argc + 2, sizeof *a->pos))) return cli_usage_error("out of memory");
    source s = {a, NULL};
    /* The command line overrides the config file: the file is read first. --help wins over
     * a broken config file. */
    int help = 0;
    for (int i = 0; i < argc && strcmp(argv[i], "--"); i++)
        help |= strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
    const char *cfg = help ? NULL : config_path(argc, argv);
    if (cfg && find_opt("config", 6, 0, cmd)->cmds & cmd) {
        int rc = read_config(a, cfg);
        if (rc) return rc;
    }
    int only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (only_pos || arg[0] != '-' || arg[1] == '\0') {
            a->pos[a->npos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_pos = 1;
            continue;
        }
        const char *name = arg + 1, *eq = NULL, *v = NULL;
        char shrt = 0;
        size_t len;
        if (arg[1] == '-') {
            name = arg + 2;
            eq = strchr(name, '=');
            len = eq ? (size_t)(eq - name) : strlen(name);
        } else {
            if (arg[2]) return cli_usage_error("%s: unknown option '%s'", a->name, arg);
            shrt = arg[1];
            len = 1;
        }
        const cli_opt *o;
        int pi;
        int rc = lookup(&s, name, len, shrt, &o, &pi);
        if (rc) return rc;
        if (o && o->id == O_HELP) {
            cli_help_command(a->name, stdout);
            return CLI_DONE;
        }
        if (o && o->id == O_VERSION) {
            printf("nlsr %s\n", nlsr_version());
            return CLI_DONE;
        }
        int takes = o ? o->metavar != NULL : nlsr_param_info_at((size_t)pi)->type != NLSR_PARAM_FLAG;
        const char *shown = o ? o->name : nlsr_param_info_at((size_t)pi)->name;
        if (takes) {
            if (eq) v = eq + 1;
            else if (i + 1 < argc) v = argv[++i];
            else return cli_usage_error("--%s needs a value", shown);
        } else if (eq) {
            return cli_usage_error("--%s takes no value", shown);
        }
        rc = o ? set_opt(&s, o, v) : set_param(&s, pi, v);
        if (rc) return rc;
    }
    const cli_command *c = cli_command_of(cmd);
    if (a->npos > c->max_pos && c->max_pos >= 0)
        return cli_usage_error("%s: unexpected argument '%s'", a->name, a->pos[c->max_pos]);
    return 0;
}

void cli_args_free(cli_args *a)
{
    for (int i = 0; i < a->nowned; i++) free(a->owned[i]);
    free(a->owned);
    a->owned = NULL;
    a->nowned = 0;
    free(a->pos);
    free(a->targets_block);
    a->pos = NULL;
    a->targets_block = NULL;
}

int cli_given(const cli_args *a, const char *name)
{
    for (size_t i = 0; i < nlsr_param_count(); i++)
        if (strcmp(nlsr_param_info_at(i)->name, name) == 0) return (a->given >> i) & 1u;
    return 0;
}

int cli_check_scorer(const cli_args *a)
{
    const nlsr_scorer_params *sp = &a->p.scorer;
    const nlsr_param_info *kind = nlsr_param_find("scorer");
    for (size_t i = 0; i < nlsr_param_count(); i++) {
        const nlsr_param_info *in = nlsr_param_info_at(i);
        if (((a->given >> i) & 1u) && in->scorer >= 0 && in->scorer != (int)sp->kind)
            return cli_usage_error("--%s is an option of --scorer %s", in->name,
                                   kind->values[in->scorer]);
    }
    if (cli_given(a, "rank") && cli_given(a, "rank-fraction"))
        return cli_usage_error("give --rank or --rank-fraction, not both");
    if (sp->activations && sp->kind == NLSR_SCORER_MAGNITUDE)
        return cli_usage_error("--activations is for --scorer lowrank or wanda");
    if (!sp->activations && sp->kind == NLSR_SCORER_WANDA)
        return cli_usage_error("--scorer wanda needs --activations FILE");
    return 0;
}

void cli_print_params(const cli_args *a)
{
    const cli_command *c = cli_command_of(a->cmd);
    for (size_t i = 0; i < nlsr_param_count(); i++) {
        const nlsr_param_info *in = nlsr_param_info_at(i);
        char v[1024];
        if (!(in->jobs & c->jobs) || nlsr_params_get(&a->p, in->name, v, sizeof v) != 0) continue;
        if (in->scorer >= 0 && in->scorer != (int)a->p.scorer.kind) continue;
        fprintf(stderr, "nlsr: %s %s = %s%s\n", a->name, in->name, v[0] ? v : "(none)",
                (a->given >> i) & 1u ? "" : " (default)");
    }
}

uint64_t cli_budget(const cli_args *a)
{
    return a->have_mem ? a->mem : NLSR_DEFAULT_MEM_BUDGET;
}
