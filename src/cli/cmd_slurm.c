/* SPDX-License-Identifier: Apache-2.0 */
/* Split jobs (docs/SCALE.md): `nlsr reduce` (the parts of a split prepare into one patch file),
 * `nlsr sweep` (a store of fine-tunes cut into tasks, each idempotent: a finished checkpoint
 * that verifies is skipped), and `nlsr slurm` (the sbatch scripts of either as job arrays, and
 * their submission). The tasks take --task I/N, so any driver that hands out indexes (Slurm
 * arrays, GNU parallel, Kubernetes Indexed Jobs) runs them; nlsr has no scheduler of its own. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_output.h"
#include "nlsr.h"

/* The engine options a sweep takes (from the table parser): --mem-budget, --io, -q, --json. */
typedef struct sweep_common {
    uint64_t mem;
    int have_mem;
    nlsr_io_kind io;
    int quiet, json;
} sweep_common;

static void common_apply(const sweep_common *c, nlsr_ctx *ctx)
{
    if (c->have_mem) nlsr_ctx_set_mem_budget(ctx, c->mem);
    nlsr_ctx_set_io(ctx, c->io);
    nlsr_ctx_set_quiet(ctx, c->quiet);
    cli_output_install(ctx, c->quiet ? -1 : 0, -1);
}

int cli_parse_task(const char *opt, const char *v, unsigned *index, unsigned *count)
{
    char *end, *end2;
    errno = 0;
    unsigned long i = strtoul(v, &end, 10);
    unsigned long n = *end == '/' ? strtoul(end + 1, &end2, 10) : 0;
    if (v[0] < '0' || v[0] > '9' || *end != '/' || end[1] < '0' || end[1] > '9' || *end2 ||
        errno || n == 0 || n > 1000000 || i >= n)
        return cli_usage_error("%s takes I/N with 0 <= I < N (task I of N, counted from 0), "
                               "not '%s'", opt, v);
    *index = (unsigned)i;
    *count = (unsigned)n;
    return 0;
}

/* ---- nlsr reduce --------------------------------------------------------------------------- */

int cmd_reduce(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(K_REDUCE, argc, argv, &a);
    if (rc == 0 && (!a.out || a.npos == 0))
        rc = cli_usage_error("reduce needs --out FILE.nlsrp and the part files");
    if (rc) {
        cli_args_free(&a);
        return rc == CLI_DONE ? 0 : rc;
    }
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) {
        cli_args_free(&a);
        return 1;
    }
    nlsr_ctx_set_quiet(ctx, a.quiet);
    cli_output_install(ctx, a.quiet ? -1 : 0, -1);
    size_t n = (size_t)a.npos;
    rc = nlsr_reduce(ctx, a.pos, n, a.out, a.p.force);
    int status = rc < 0 ? cli_fail(ctx, rc) : 0;
    if (rc == 0 && !a.quiet) fprintf(stderr, "nlsr: reduce: %zu parts into %s\n", n, a.out);
    nlsr_ctx_free(ctx);
    cli_args_free(&a);
    return status;
}

/* ---- nlsr sweep ---------------------------------------------------------------------------- */

typedef struct sweep_args {
    const char *patches, *out_root, *summary;
    const char **dirs;
    int ndirs;
    unsigned task, ntasks; /* ntasks 0: every checkpoint */
    int status_only, in_place, json;
    nlsr_realign_params p;
    sweep_common c;
    cli_args args; /* the parsed command line, which the fields above point into */
} sweep_args;

/* The table parser (cli_args.c) onto the sweep's fields. */
static int parse_sweep(int argc, char **argv, sweep_args *a)
{
    memset(a, 0, sizeof *a);
    cli_args *g = &a->args;
    int rc = cli_parse(K_SWEEP, argc, argv, g);
    if (rc) return rc;
    a->patches = g->patches;
    a->out_root = g->split.out_root;
    a->summary = g->split.summary;
    a->dirs = g->pos;
    a->ndirs = g->npos;
    a->task = g->part_index;
    a->ntasks = g->part_count;
    a->status_only = g->split.status;
    a->in_place = g->in_place;
    a->p = g->p;
    a->p.json_stdout = 0; /* --json is the sweep's summary on stdout */
    a->json = a->c.json = g->p.json_stdout;
    a->c.mem = g->mem;
    a->c.have_mem = g->have_mem;
    a->c.io = g->io;
    a->c.quiet = g->quiet;
    if (!a->patches) return cli_usage_error("sweep needs --patches FILE");
    if (!a->out_root == !a->in_place)
        return cli_usage_error("sweep needs exactly one of --out-root DIR (each checkpoint into "
                               "DIR/NAME) and --in-place");
    if (a->ndirs == 0) return cli_usage_error("sweep needs the fine-tuned checkpoint folders");
    return 0;
}

/* A checkpoint's output name: its folder's last component. */
static char *leaf(const char *dir)
{
    char *d = strdup(dir);
    if (!d) return NULL;
    size_t L = strlen(d);
    while (L > 1 && d[L - 1] == '/') d[--L] = '\0';
    const char *s = strrchr(d, '/');
    char *r = strdup(s ? s + 1 : d);
    free(d);
    return r;
}

static char *join(const char *a, const char *b, const char *suffix)
{
    char *r = NULL;
    if (asprintf(&r, "%s/%s%s", a, b, suffix ? suffix : "") < 0) return NULL;
    return r;
}

/* 1 if a temporary output of `name` (a run that did not finish) lies in `root`. */
static int has_tmp(const char *root, const char *name)
{
    DIR *d = opendir(root);
    if (!d) return 0;
    size_t L = strlen(name);
    int found = 0;
    for (struct dirent *de; !found && (de = readdir(d));)
        found = strncmp(de->d_name, name, L) == 0 && strncmp(de->d_name + L, ".nlsr-tmp-", 10) == 0;
    closedir(d);
    return found;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

typedef struct ck_state {
    const char *state; /* done, verified, failed, partial, missing, pending, realigned, already */
    char *error;
} ck_state;

static int write_summary(const sweep_args *a, const ck_state *st, FILE *f)
{
    fprintf(f, "{\"patches\": ");
    json_str(f, a->patches);
    fprintf(f, ", \"out_root\": ");
    if (a->out_root) json_str(f, a->out_root);
    else fputs("null", f);
    if (a->ntasks) fprintf(f, ", \"task\": [%u, %u]", a->task, a->ntasks);
    else fputs(", \"task\": null", f);
    int bad = 0;
    fputs(", \"checkpoints\": [", f);
    for (int i = 0; i < a->ndirs; i++) {
        fprintf(f, "%s\n  {\"finetuned\": ", i ? "," : "");
        json_str(f, a->dirs[i]);
        char *name = leaf(a->dirs[i]);
        char *out = a->out_root && name ? join(a->out_root, name, NULL) : NULL;
        fputs(", \"out\": ", f);
        if (out) json_str(f, out);
        else json_str(f, a->dirs[i]);
        fputs(", \"state\": ", f);
        json_str(f, st[i].state);
        if (st[i].error) {
            fputs(", \"error\": ", f);
            json_str(f, st[i].error);
        }
        fputc('}', f);
        bad += strcmp(st[i].state, "failed") == 0 || strcmp(st[i].state, "partial") == 0 ||
               strcmp(st[i].state, "missing") == 0;
        free(name);
        free(out);
    }
    fputs("]}\n", f);
    return bad;
}

/* One checkpoint of the task: skipped when its output verifies, else applied (replacing only
 * what nlsr wrote: --force's policy, README "Output safety"). */
static int sweep_one(const sweep_args *a, const char *dir, ck_state *st)
{
    nlsr_ctx *ctx = cli_ctx_create();
    if (!ctx) return -1;
    common_apply(&a->c, ctx);
    char *name = leaf(dir);
    char *out = a->out_root && name ? join(a->out_root, name, NULL) : NULL;
    char *report = a->out_root && name ? join(a->out_root, name, ".nlsr-report.json") : NULL;
    int rc = 0;
    if (a->in_place) {
        nlsr_inplace_params ip = NLSR_INPLACE_PARAMS_DEFAULT;
        nlsr_inplace_result res;
        memset(&res, 0, sizeof res);
        rc = nlsr_apply_inplace(ctx, a->patches, dir, &a->p, &ip, &res);
        if (rc == 0) st->state = res.outcome == NLSR_INPLACE_ALREADY ? "already" : "realigned";
    } else if (!out || !report) {
        rc = -ENOMEM;
    } else if (nlsr_output_verify(ctx, out, report) == 1) {
        st->state = "verified";
    } else {
        nlsr_realign_params p = a->p;
        p.report_path = report;
        p.force = 1;
        rc = nlsr_apply(ctx, a->patches, dir, out, &p);
        if (rc == 0) st->state = "done";
    }
    int status = 0;
    if (rc < 0) {
        const char *msg = nlsr_ctx_error(ctx);
        st->state = "failed";
        st->error = strdup(msg && *msg ? msg : nlsr_strerror(rc));
        status = cli_fail(ctx, rc);
    } else if (!a->c.quiet) {
        fprintf(stderr, "nlsr: sweep: %s: %s\n", dir, st->state);
    }
    free(name);
    free(out);
    free(report);
    nlsr_ctx_free(ctx);
    return status;
}

int cmd_sweep(int argc, char **argv)
{
    sweep_args a;
    int rc = parse_sweep(argc, argv, &a);
    ck_state *st = rc ? NULL : calloc((size_t)a.ndirs, sizeof *st);
    if (rc || !st) {
        cli_args_free(&a.args);
        return rc == CLI_DONE ? 0 : rc ? rc : 1;
    }
    /* Outputs are named after the folders: two of one name would overwrite each other. */
    for (int i = 0; i < a.ndirs && a.out_root && rc == 0; i++)
        for (int j = 0; j < i && rc == 0; j++) {
            char *x = leaf(a.dirs[i]), *y = leaf(a.dirs[j]);
            if (x && y && strcmp(x, y) == 0)
                rc = cli_usage_error("sweep: %s and %s would both be written to %s/%s", a.dirs[j],
                                     a.dirs[i], a.out_root, x);
            free(x);
            free(y);
        }
    /* Task I of N takes the checkpoints [n I/N, n (I+1)/N): one each when N = n. */
    size_t n = (size_t)a.ndirs;
    size_t lo = a.ntasks ? n * a.task / a.ntasks : 0, hi = a.ntasks ? n * (a.task + 1) / a.ntasks : n;
    int failed = 0, status = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        st[i].state = "pending";
        if (a.status_only) {
            char *name = leaf(a.dirs[i]);
            char *out = a.out_root && name ? join(a.out_root, name, NULL) : NULL;
            char *rep = a.out_root && name ? join(a.out_root, name, ".nlsr-report.json") : NULL;
            nlsr_ctx *ctx = cli_ctx_create();
            if (a.in_place) st[i].state = "unknown"; /* the folder's state file says */
            else if (ctx && out && rep && nlsr_output_verify(ctx, out, rep) == 1) st[i].state = "done";
            else if (out && (access(out, F_OK) == 0 || has_tmp(a.out_root, name)))
                st[i].state = "partial";
            else st[i].state = "missing";
            nlsr_ctx_free(ctx);
            free(name);
            free(out);
            free(rep);
            continue;
        }
        if (i < lo || i >= hi) continue;
        int s = sweep_one(&a, a.dirs[i], &st[i]);
        if (s) failed++, status = s;
        if (cli_stop_signal()) break; /* the job stopped at its safe point; so does the sweep */
    }
    int bad = 0;
    if (rc == 0 && (a.summary || a.json)) {
        FILE *f = stdout;
        char *tmp = NULL;
        if (a.summary && asprintf(&tmp, "%s.nlsr-tmp-%ld", a.summary, (long)getpid()) > 0)
            f = fopen(tmp, "we");
        if (!f) {
            fprintf(stderr, "nlsr: error: %s: %s\n", tmp, strerror(errno));
            status = 1;
        } else {
            bad = write_summary(&a, st, f);
            if (f != stdout) {
                int bad_close = fclose(f) != 0;
                if (bad_close || rename(tmp, a.summary) != 0) {
                    fprintf(stderr, "nlsr: error: %s: %s\n", a.summary, strerror(errno));
                    unlink(tmp);
                    status = 1;
                }
            }
        }
        free(tmp);
    }
    for (int i = 0; i < a.ndirs; i++) free(st[i].error);
    free(st);
    cli_args_free(&a.args);
    if (rc) return rc;
    if (cli_stop_signal()) return 128 + cli_stop_signal();
    if (a.status_only) return bad ? 5 : status;
    /* As the in-place sweep: several checkpoints with a failure exit 5, one its own status. */
    return failed == 0 ? status : (hi - lo > 1 ? 5 : status);
}

/* ---- nlsr slurm ---------------------------------------------------------------------------- */

typedef struct slurm_args {
    const char *mode; /* "sweep" or "split" */
    cli_args args;    /* the parsed command line, which the fields point into */
    const char *dir, *nlsr, *partition, *account, *time_limit, *prepare_opts, *apply_opts;
    const char *base, *aligned, *reference, *finetuned, *out, *patches, *out_root;
    const char **dirs;
    int ndirs, in_place, submit;
    unsigned parts, concurrency, cpus;
    unsigned apply_tasks; /* split: 0 = one apply; M = an apply --shard array and a commit */
    int map_run;          /* split: run --part maps (the reduce selects once), not prepare's */
    uint64_t mem_budget;
} slurm_args;

/* Single-quoted for sh: every byte kept, ' as '\''. */
static void shq(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++)
        if (*s == '\'') fputs("'\\''", f);
        else fputc(*s, f);
    fputc('\'', f);
}

/* Paths in scripts are absolute: the tasks may start in another folder. */
static char *absolute(const char *p)
{
    if (p[0] == '/') return strdup(p);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return NULL;
    return join(cwd, p, NULL);
}

/* mkdir -p: the scripts' folder and its missing parents. */
static int mkdirs(const char *path)
{
    char *p = strdup(path);
    if (!p) return -1;
    for (char *c = p + 1; *c; c++)
        if (*c == '/') {
            *c = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                free(p);
                return -1;
            }
            *c = '/';
        }
    int rc = mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

/* The table parser (cli_args.c) onto the slurm fields; the job kind is the first argument,
 * a sweep's folders the others. */
static int parse_slurm(int argc, char **argv, slurm_args *a)
{
    memset(a, 0, sizeof *a);
    cli_args *g = &a->args;
    int rc = cli_parse(K_SLURM, argc, argv, g);
    if (rc) return rc;
    if (g->npos < 1 || (strcmp(g->pos[0], "sweep") && strcmp(g->pos[0], "split")))
        return cli_usage_error("slurm needs a job kind: 'slurm sweep' or 'slurm split'");
    a->mode = g->pos[0];
    a->dirs = g->pos + 1;
    a->ndirs = g->npos - 1;
    a->dir = g->split.dir;
    a->nlsr = g->split.nlsr;
    a->partition = g->split.partition;
    a->account = g->split.account;
    a->time_limit = g->split.time;
    a->prepare_opts = g->split.prepare_opts;
    a->apply_opts = g->split.apply_opts;
    a->base = g->base;
    a->aligned = g->aligned;
    a->reference = g->reference;
    a->finetuned = g->finetuned;
    a->out = g->out;
    a->patches = g->patches;
    a->out_root = g->split.out_root;
    a->in_place = g->in_place;
    a->submit = g->split.submit;
    a->parts = g->split.parts;
    a->apply_tasks = g->split.apply_tasks;
    a->map_run = g->split.map_run;
    a->concurrency = g->split.concurrency;
    a->cpus = g->split.cpus ? g->split.cpus : 2;
    a->mem_budget = g->have_mem ? g->mem : 1ull << 30;
    /* The scripts' --mem is the budget plus 512 MiB: it needs a size. */
    if (g->have_mem && g->mem == NLSR_MEM_BUDGET_AUTO)
        return cli_usage_error("slurm: --mem-budget needs a size such as 512M or 4G (each "
                               "task's Slurm --mem is derived from it)");
    if (!a->dir) return cli_usage_error("slurm needs --dir DIR (where the scripts go)");
    if (strcmp(a->mode, "sweep") == 0) {
        if (!a->patches || a->ndirs == 0 || !a->out_root == !a->in_place)
            return cli_usage_error("slurm sweep needs --patches FILE, --out-root DIR or --in-place, "
                                   "and the fine-tuned folders");
        if (a->apply_tasks || a->map_run)
            return cli_usage_error("slurm sweep: --apply-tasks is split's, and so is --map (a "
                                   "sweep's tasks are its fine-tunes)");
    } else {
        if (!a->base || !a->aligned == !a->reference || !a->finetuned || !a->out || !a->parts)
            return cli_usage_error("slurm split needs --base, --aligned or --reference, "
                                   "--finetuned, --out and --parts N");
        if (a->ndirs) return cli_usage_error("slurm split: unexpected argument '%s'", a->dirs[0]);
    }
    return 0;
}

/* The #SBATCH lines every script shares. Memory per task: the budget every job holds to
 * (nlsr's buffers never pass it: docs/DESIGN.md "Memory"), plus the program, libraries and the
 * writer's queue outside it. */
static void sbatch_head(FILE *f, const slurm_args *a, const char *name, const char *logs,
                        int array)
{
    uint64_t mem_mib = (a->mem_budget >> 20) + 512;
    fprintf(f, "#!/bin/bash\n");
    fprintf(f, "#SBATCH --job-name=nlsr-%s\n", name);
    fprintf(f, "#SBATCH --output=%s/%s-%s.out\n", logs, name, array ? "%A_%a" : "%j");
    fprintf(f, "#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=%u\n", a->cpus);
    fprintf(f, "#SBATCH --mem=%lluM\n", (unsigned long long)mem_mib);
    /* A preempted or failed node requeues the task; the task finds what it finished. */
    fprintf(f, "#SBATCH --requeue\n#SBATCH --open-mode=append\n");
    if (a->time_limit) fprintf(f, "#SBATCH --time=%s\n", a->time_limit);
    if (a->partition) fprintf(f, "#SBATCH --partition=%s\n", a->partition);
    if (a->account) fprintf(f, "#SBATCH --account=%s\n", a->account);
}

static void array_line(FILE *f, const slurm_args *a, unsigned n)
{
    fprintf(f, "#SBATCH --array=0-%u", n - 1);
    if (a->concurrency) fprintf(f, "%%%u", a->concurrency);
    fputc('\n', f);
}

static FILE *open_script(const char *dir, const char *name, char **path)
{
    *path = join(dir, name, NULL);
    if (!*path) return NULL;
    FILE *f = fopen(*path, "we");
    if (!f) fprintf(stderr, "nlsr: error: %s: %s\n", *path, strerror(errno));
    return f;
}

static int close_script(FILE *f, const char *path)
{
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "nlsr: error: %s: write failed\n", path);
        return 1;
    }
    chmod(path, 0755);
    return 0;
}

static void mem_opt(FILE *f, const slurm_args *a)
{
    fprintf(f, " --mem-budget %lluM", (unsigned long long)(a->mem_budget >> 20));
}

/* Runs sbatch --parsable [--dependency=...] script; the job id in id. */
static int sbatch(const char *script, const char *dep, char *id, size_t cap)
{
    int pfd[2];
    if (pipe(pfd) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        char depopt[256];
        if (dep) {
            snprintf(depopt, sizeof depopt, "--dependency=%s", dep);
            execlp("sbatch", "sbatch", "--parsable", depopt, script, (char *)NULL);
        } else {
            execlp("sbatch", "sbatch", "--parsable", script, (char *)NULL);
        }
        fprintf(stderr, "nlsr: error: cannot run sbatch: %s\n", strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    size_t n = 0;
    for (ssize_t r; n + 1 < cap && (r = read(pfd[0], id + n, cap - 1 - n)) != 0;) {
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        n += (size_t)r;
    }
    id[n] = '\0';
    close(pfd[0]);
    int ws;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {}
    id[strcspn(id, ";\n")] = '\0'; /* "id;cluster" on multi-cluster setups */
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 || !id[0]) {
        fprintf(stderr, "nlsr: error: sbatch %s failed\n", script);
        return -1;
    }
    return 0;
}

int cmd_slurm(int argc, char **argv)
{
    slurm_args a;
    int rc = parse_slurm(argc, argv, &a);
    if (rc) {
        cli_args_free(&a.args);
        return rc == CLI_DONE ? 0 : rc;
    }
    char exe[PATH_MAX];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0) exe[el] = '\0';
    else snprintf(exe, sizeof exe, "nlsr");
    char *nlsr = absolute(a.nlsr ? a.nlsr : exe);
    char *dir = absolute(a.dir);
    char *logs = dir ? join(dir, "logs", NULL) : NULL;
    int status = 0;
    if (!nlsr || !dir || !logs) {
        status = 1;
        goto done;
    }
    if (mkdirs(dir) != 0 || (mkdir(logs, 0755) != 0 && errno != EEXIST)) {
        fprintf(stderr, "nlsr: error: %s: %s\n", dir, strerror(errno));
        status = 1;
        goto done;
    }
    /* Scripts in order; each after the previous one succeeded (afterok), or, for a sweep's
     * summary, after it ended whatever the outcome (afterany). */
    const char *scripts[4] = {0};
    const char *deps[4] = {0};
    int nscripts = 0;
    char *path = NULL;
    FILE *f;
    if (strcmp(a.mode, "sweep") == 0) {
        char **abs = calloc((size_t)a.ndirs, sizeof *abs);
        char *patches = absolute(a.patches), *root = a.out_root ? absolute(a.out_root) : NULL;
        for (int i = 0; abs && i < a.ndirs; i++) abs[i] = absolute(a.dirs[i]);
        const char *kinds[2] = {"sweep.sbatch", "summary.sbatch"};
        for (int k = 0; k < 2 && status == 0; k++) {
            if (!(f = open_script(dir, kinds[k], &path))) {
                status = 1;
                break;
            }
            sbatch_head(f, &a, k ? "sweep-summary" : "sweep", logs, k == 0);
            if (k == 0) array_line(f, &a, (unsigned)a.ndirs);
            fprintf(f, "set -u\n");
            fprintf(f, "exec ");
            shq(f, nlsr);
            fprintf(f, " sweep --patches ");
            shq(f, patches);
            if (root) {
                fprintf(f, " --out-root ");
                shq(f, root);
            } else {
                fprintf(f, " --in-place");
            }
            if (k == 0) {
                mem_opt(f, &a);
                fprintf(f, " --task \"$SLURM_ARRAY_TASK_ID/%d\"", a.ndirs);
            } else {
                fprintf(f, " --status --summary ");
                char *sum = join(root ? root : dir, "sweep-summary.json", NULL);
                shq(f, sum ? sum : "sweep-summary.json");
                free(sum);
            }
            if (a.apply_opts) fprintf(f, " %s", a.apply_opts);
            for (int i = 0; i < a.ndirs; i++) {
                fprintf(f, " \\\n    ");
                shq(f, abs && abs[i] ? abs[i] : a.dirs[i]);
            }
            fputc('\n', f);
            status = close_script(f, path);
            free(path);
        }
        for (int i = 0; abs && i < a.ndirs; i++) free(abs[i]);
        free(abs);
        free(patches);
        free(root);
        scripts[0] = "sweep.sbatch";
        scripts[1] = "summary.sbatch";
        deps[1] = "afterany";
        nscripts = 2;
    } else {
        char *base = absolute(a.base), *src = absolute(a.aligned ? a.aligned : a.reference);
        char *ft = absolute(a.finetuned), *out = absolute(a.out);
        char *parts = join(dir, "parts", NULL), *patches = join(dir, "patches.nlsrp", NULL);
        const char *srcopt = a.aligned ? "--aligned" : "--reference";
        if (!base || !src || !ft || !out || !parts || !patches) status = 1;
        /* Map: one part of the prepare per task, or of the run (--map run: with the fine-tune,
         * its modules' similarities, so that the reduce selects once). */
        const char *map = a.map_run ? "run" : "prepare";
        char mapname[32];
        snprintf(mapname, sizeof mapname, "%s.sbatch", map);
        if (status == 0 && (f = open_script(dir, mapname, &path))) {
            sbatch_head(f, &a, map, logs, 1);
            array_line(f, &a, a.parts);
            fprintf(f, "set -u\nexec ");
            shq(f, nlsr);
            fprintf(f, " %s --base ", map);
            shq(f, base);
            fprintf(f, " %s ", srcopt);
            shq(f, src);
            if (a.map_run) {
                fprintf(f, " --finetuned ");
                shq(f, ft);
            }
            mem_opt(f, &a);
            fprintf(f, " --part \"$SLURM_ARRAY_TASK_ID/%u\" --out ", a.parts);
            shq(f, parts);
            fprintf(f, "/part-\"$SLURM_ARRAY_TASK_ID\".nlsrp");
            if (a.prepare_opts) fprintf(f, " %s", a.prepare_opts);
            fputc('\n', f);
            status = close_script(f, path);
            free(path);
        } else status = 1;
        /* Reduce: every part checked and merged into the one patch file. */
        if (status == 0 && (f = open_script(dir, "reduce.sbatch", &path))) {
            sbatch_head(f, &a, "reduce", logs, 0);
            /* A requeued attempt replaces what an earlier one committed (the same bytes); a
             * first one never replaces a file that was there before the job. */
            fprintf(f, "set -u\nexec ");
            shq(f, nlsr);
            fprintf(f, " reduce ${SLURM_RESTART_COUNT:+--force} --out ");
            shq(f, patches);
            for (unsigned i = 0; i < a.parts; i++) {
                fprintf(f, " \\\n    ");
                shq(f, parts);
                fprintf(f, "/part-%u.nlsrp", i);
            }
            fputc('\n', f);
            status = close_script(f, path);
            free(path);
        } else if (status == 0) status = 1;
        /* Apply: step 3 once the selection has every module's similarity; with
         * --apply-tasks M an array by output shard (apply --shard), then its commit. */
        for (int k = 0; k < (a.apply_tasks ? 2 : 1) && status == 0; k++) {
            const char *name = k ? "commit.sbatch" : "apply.sbatch";
            if (!(f = open_script(dir, name, &path))) {
                status = 1;
                break;
            }
            sbatch_head(f, &a, k ? "commit" : "apply", logs, k == 0 && a.apply_tasks);
            if (k == 0 && a.apply_tasks) array_line(f, &a, a.apply_tasks);
            fprintf(f, "set -u\nexec ");
            shq(f, nlsr);
            fprintf(f, " apply ${SLURM_RESTART_COUNT:+--force} --patches ");
            shq(f, patches);
            fprintf(f, " --finetuned ");
            shq(f, ft);
            mem_opt(f, &a);
            fprintf(f, " --out ");
            shq(f, out);
            if (k == 0 && a.apply_tasks)
                fprintf(f, " --shard \"$SLURM_ARRAY_TASK_ID/%u\"", a.apply_tasks);
            if (k == 1) fprintf(f, " --commit");
            if (a.apply_opts) fprintf(f, " %s", a.apply_opts);
            fputc('\n', f);
            status = close_script(f, path);
            free(path);
        }
        if (status == 0 && mkdir(parts, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "nlsr: error: %s: %s\n", parts, strerror(errno));
            status = 1;
        }
        free(base);
        free(src);
        free(ft);
        free(out);
        free(parts);
        free(patches);
        scripts[0] = a.map_run ? "run.sbatch" : "prepare.sbatch";
        scripts[1] = "reduce.sbatch";
        scripts[2] = "apply.sbatch";
        scripts[3] = "commit.sbatch";
        deps[1] = deps[2] = deps[3] = "afterok";
        nscripts = a.apply_tasks ? 4 : 3;
    }
    if (status) goto done;
    /* submit.sh: the same chain by hand (sbatch --parsable, each after the previous). */
    if (!(f = open_script(dir, "submit.sh", &path))) {
        status = 1;
        goto done;
    }
    fprintf(f, "#!/bin/sh\n# Submits the job's scripts in order; prints the job ids.\nset -eu\n"
               "cd \"$(dirname \"$0\")\"\n");
    for (int i = 0; i < nscripts; i++) {
        if (deps[i]) fprintf(f, "j%d=$(sbatch --parsable --dependency=%s:\"${j%d%%%%;*}\" %s)\n",
                             i, deps[i], i - 1, scripts[i]);
        else fprintf(f, "j%d=$(sbatch --parsable %s)\n", i, scripts[i]);
        fprintf(f, "echo \"%s ${j%d%%%%;*}\"\n", scripts[i], i);
    }
    status = close_script(f, path);
    free(path);
    if (status) goto done;
    if (!a.submit) {
        printf("%s/submit.sh\n", dir);
        goto done;
    }
    char prev[128] = "";
    for (int i = 0; i < nscripts; i++) {
        char *s = join(dir, scripts[i], NULL), dep[192], id[128];
        if (deps[i]) snprintf(dep, sizeof dep, "%s:%s", deps[i], prev);
        if (!s || sbatch(s, deps[i] ? dep : NULL, id, sizeof id) != 0) {
            free(s);
            status = 1;
            break;
        }
        printf("%s %s\n", scripts[i], id);
        fflush(stdout);
        snprintf(prev, sizeof prev, "%s", id);
        free(s);
    }
done:
    free(nlsr);
    free(dir);
    free(logs);
    cli_args_free(&a.args);
    return status;
}
