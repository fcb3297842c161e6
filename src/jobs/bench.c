/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
/* `nlsr bench`: the sweep. Each run is a child process (fork, then the library's job function
 * in the child) so that its peak RSS and CPU time are its own (wait4's rusage) and no run
 * inherits another's heap or page cache state; the parent drops the caches of every input and
 * output file before each run, times it from fork to reaping, and reads the job's own report. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/log.h"
#include "../io/file.h"
#include "../plan/progress.h"
#include "bench.h"

static const char *const JOBS[] = {"run", "run-in-place", "prepare", "apply", "amplify"};
enum { J_RUN, J_INPLACE, J_PREPARE, J_APPLY, J_AMPLIFY, J_COUNT };

#define MAX_LIST 16
#define RATE_PROBE (1ull << 30) /* bytes read per file system for its rates */
#define WRITE_PROBE (512ull << 20)

typedef struct list {
    char *buf;
    const char *item[MAX_LIST];
    int n;
} list;

static int split(nlsr_err *e, const char *what, const char *s, list *l)
{
    l->n = 0;
    if (!(l->buf = strdup(s))) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    for (char *save = NULL, *t = strtok_r(l->buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        NLSR_FAIL_IF(l->n == MAX_LIST, e, NLSR_E_USAGE, "bench: %s lists more than %d values", what,
                     MAX_LIST);
        l->item[l->n++] = t;
    }
    NLSR_FAIL_IF(l->n == 0, e, NLSR_E_USAGE, "bench: %s is empty", what);
    return 0;
}

static int parse_io(const char *s, nlsr_io_kind *k)
{
    if (!strcmp(s, "uring") || !strcmp(s, "io_uring")) *k = NLSR_IO_URING;
    else if (!strcmp(s, "pread")) *k = NLSR_IO_PREAD;
    else if (!strcmp(s, "mmap")) *k = NLSR_IO_MMAP;
    else return -1;
    return 0;
}

static const char *io_short(nlsr_io_kind k)
{
    return k == NLSR_IO_URING ? "uring" : k == NLSR_IO_PREAD ? "pread" : k == NLSR_IO_MMAP ? "mmap" : "auto";
}

typedef struct sweep {
    nlsr_ctx *ctx;
    const nlsr_bench_params *bp;
    const char *base, *aligned, *finetuned;
    char *dir;       /* the scratch folder this bench made */
    char *out;       /* dir/out: each run's output (folder or patch file) */
    char *report;    /* dir/report.json */
    char *patches;   /* dir/patches.nlsrp: apply's input */
    char *copy;      /* dir/finetuned-copy: run-in-place's checkpoint */
    bench_result *r;
    size_t cap;
    int drop_failed_said;
} sweep;

static double used_s(const struct timeval *t)
{
    return (double)t->tv_sec + (double)t->tv_usec / 1e6;
}

/* The job in the child. Its result goes back through `fd` as one line. */
static void child_job(sweep *s, int job, uint64_t budget, nlsr_io_kind io, int fd)
{
    nlsr_ctx *c = nlsr_ctx_create();
    if (!c) _exit(1);
    nlsr_ctx_set_mem_budget(c, budget);
    nlsr_ctx_set_io(c, io);
    nlsr_ctx_set_quiet(c, 1);
    nlsr_ctx_set_threads(c, s->ctx->threads);
    if (s->ctx->cancel_flag) nlsr_ctx_set_cancel_flag(c, s->ctx->cancel_flag);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.force = 1;
    p.report_path = s->report;
    int rc;
    switch (job) {
    case J_RUN: rc = nlsr_run(c, s->base, s->aligned, NULL, s->finetuned, s->out, &p); break;
    case J_INPLACE: {
        nlsr_inplace_params ip = NLSR_INPLACE_PARAMS_DEFAULT;
        rc = nlsr_run_inplace(c, s->base, s->aligned, NULL, s->copy, &p, &ip, NULL);
        break;
    }
    case J_PREPARE: rc = nlsr_prepare(c, s->base, s->aligned, NULL, s->out, &p); break;
    case J_APPLY: rc = nlsr_apply(c, s->patches, s->finetuned, s->out, &p); break;
    default: p.report_path = NULL; rc = nlsr_amplify(c, s->base, s->aligned, s->out, &p); break;
    }
    uint64_t rd = 0, wr = 0;
    nlsr_ctx_counters(c, &rd, &wr);
    char line[1400];
    int n = snprintf(line, sizeof line, "%d %llu %llu %s %s\n", rc, (unsigned long long)rd,
                     (unsigned long long)wr, io_short(nlsr_ctx_io_used(c)),
                     rc < 0 ? nlsr_ctx_error(c) : "");
    if (n > 0 && write(fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1)) < 0) {
        /* nothing to do: the parent reports the run as failed */
    }
    nlsr_ctx_free(c);
    _exit(rc < 0 ? 1 : 0);
}

/* What the job's report says: plan, phases, backend, bytes (its own accounting). */
static void read_report(sweep *s, bench_row *row)
{
    char *txt = NULL;
    size_t len = 0;
    nlsr_err e = {0};
    if (nlsr_read_small_file(s->report, 1u << 30, &txt, &len, &e) < 0) return;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    cJSON *sum = root ? cJSON_GetObjectItem(root, "summary") : NULL;
    cJSON *v;
    if (sum) {
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(sum, "bytes_read"))) row->bytes_read = (uint64_t)v->valuedouble;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(sum, "bytes_written"))) row->bytes_written = (uint64_t)v->valuedouble;
        if (cJSON_IsString(v = cJSON_GetObjectItem(sum, "plan"))) snprintf(row->plan, sizeof row->plan, "%s", v->valuestring);
        if (cJSON_IsString(v = cJSON_GetObjectItem(sum, "io_backend"))) snprintf(row->backend, sizeof row->backend, "%s", v->valuestring);
        cJSON *ph = cJSON_GetObjectItem(sum, "phase_seconds");
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(ph, "similarities"))) row->phase_sim_s = v->valuedouble;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(ph, "output"))) row->phase_out_s = v->valuedouble;
    }
    cJSON_Delete(root);
    unlink(s->report);
}

static void drop_all(sweep *s, bench_row *row)
{
    const nlsr_bench_params *bp = s->bp;
    if (bp->warm) {
        snprintf(row->cache, sizeof row->cache, "warm");
        return;
    }
    if (bp->drop_caches && geteuid() == 0 && bench_drop_caches() == 0) {
        snprintf(row->cache, sizeof row->cache, "drop_caches");
        return;
    }
    if (bp->drop_caches && !s->drop_failed_said) {
        nlsr_log(s->ctx, NLSR_LOG_NOTICE, "bench: cannot write /proc/sys/vm/drop_caches (%s): dropping each "
                        "file's pages with posix_fadvise instead",
                geteuid() == 0 ? "refused" : "not root");
        s->drop_failed_said = 1;
    }
    /* Every input and output file: the inputs, the bench's folder (outputs, the patches, the
     * in-place copy). Clean pages go without root; dirty ones are written back first. */
    int failed = 0;
    const char *paths[4] = {s->base, s->aligned, s->finetuned, s->dir};
    for (int i = 0; i < 4; i++) failed += bench_drop_pages(paths[i], i < 3);
    snprintf(row->cache, sizeof row->cache, failed ? "fadvise-partial" : "fadvise");
}

static double rate_of(const sweep *s, const char *role, int write)
{
    const bench_result *r = s->r;
    for (int i = 0; i < r->nfs; i++)
        if (strstr(r->fs[i].role, role)) {
            double v = write ? r->fs[i].write_bps : r->fs[i].direct_bps > 0 ? r->fs[i].direct_bps
                                                                              : r->fs[i].buffered_bps;
            if (v > 0) return v;
        }
    return 0;
}

static double rate_of(const sweep *s, const char *role, int write);

/* The job's plan at this budget (nlsr_plan_print's JSON; nothing is read but headers): bytes
 * read and written, and for run and run-in-place the predicted seconds at the rates measured
 * for this bench (the kernels are calibrated by the plan itself, here, untimed). Only run,
 * run-in-place (its reads), amplify and prepare (its reads) have one. */
static void plan_bytes(sweep *s, int job, uint64_t budget, int have_budget, bench_row *row)
{
    row->planned_read = row->planned_read_max = row->planned_written = -1;
    row->predicted_s = 0;
    if (!have_budget || job == J_APPLY) return;
    nlsr_ctx *c = nlsr_ctx_create();
    char *txt = NULL;
    size_t len = 0;
    FILE *m = c ? open_memstream(&txt, &len) : NULL;
    if (!m) {
        nlsr_ctx_free(c);
        return;
    }
    nlsr_ctx_set_mem_budget(c, budget);
    nlsr_ctx_set_quiet(c, 1);
    int amp = job == J_AMPLIFY || job == J_PREPARE;
    double rin = amp ? -1 : rate_of(s, "base", 0), rout = amp ? -1 : rate_of(s, "scratch", 1);
    if (rin <= 0 || rout <= 0) rin = rout = -1;
    /* The runs write a report: the prediction includes its audit's hashing. */
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.report_path = s->report;
    int rc = job == J_INPLACE
                 ? nlsr_plan_print_in_place(c, s->base, s->aligned, s->finetuned, &p, rin, rout,
                                            NULL, 1, m)
                 : nlsr_plan_print(c, s->base, s->aligned, amp ? NULL : s->finetuned, &p, rin,
                                   rout, NULL, 1, m);
    fclose(m);
    cJSON *root = rc == 0 ? cJSON_Parse(txt) : NULL;
    free(txt);
    nlsr_ctx_free(c);
    if (!root) return;
    /* A run that can keep its patches in memory makes one pass (the "run" object's reads);
     * otherwise the patch-file plan at the top. The output is the same checkpoint either way:
     * the top's bytes written count its headers and index too, the "run" object's do not. */
    cJSON *run = cJSON_GetObjectItem(root, "run");
    cJSON *rd = cJSON_GetObjectItem(root, "bytes_read"), *wr = cJSON_GetObjectItem(root, "bytes_written");
    const char *kind = run ? cJSON_GetStringValue(cJSON_GetObjectItem(run, "plan")) : NULL;
    cJSON *rmax = NULL;
    if (kind && (!strcmp(kind, "single pass") || !strcmp(kind, "row blocks"))) {
        rd = cJSON_GetObjectItem(run, "bytes_read");
        rmax = cJSON_GetObjectItem(run, "bytes_read_max");
    }
    if (cJSON_IsNumber(rd)) row->planned_read = row->planned_read_max = (int64_t)rd->valuedouble;
    if (cJSON_IsNumber(rmax)) row->planned_read_max = (int64_t)rmax->valuedouble;
    if (cJSON_IsNumber(wr) && (job == J_RUN || job == J_AMPLIFY)) row->planned_written = (int64_t)wr->valuedouble;
    cJSON *pred = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "prediction"), "seconds");
    if (cJSON_IsNumber(pred) && pred->valuedouble > 0) row->predicted_s = pred->valuedouble;
    cJSON_Delete(root);
}

static void min_io(sweep *s, int job, bench_row *row)
{
    double rin = rate_of(s, job == J_APPLY ? "finetuned" : "base", 0);
    double rout = rate_of(s, "scratch", 1);
    double rd = row->planned_read >= 0 ? (double)row->planned_read : (double)row->bytes_read;
    double wr = row->planned_written >= 0 ? (double)row->planned_written : (double)row->bytes_written;
    row->min_io_s = rin > 0 && rout > 0 ? rd / rin + wr / rout : 0;
    row->ratio = row->min_io_s > 0 && row->status == 0 ? row->wall_s / row->min_io_s : 0;
    row->predicted_ratio = row->predicted_s > 0 && row->status == 0 ? row->wall_s / row->predicted_s : 0;
}

/* One word for sh: as it is when it holds only characters sh takes literally, else in single
 * quotes (a quote inside as '\''). */
static void sh_word(FILE *f, const char *w)
{
    if (*w && strspn(w, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./:=,+@%") == strlen(w)) {
        fputs(w, f);
        return;
    }
    fputc('\'', f);
    for (; *w; w++) {
        if (*w == '\'') fputs("'\\''", f);
        else fputc(*w, f);
    }
    fputc('\'', f);
}

/* The `nlsr` command line that does what the child does through the library: the same inputs,
 * output, report, budget, backend, threads and the method's defaults (child_job), so that the
 * same run can be timed another way. Its paths are the scratch folder's. NULL: out of memory. */
static char *job_command(const sweep *s, int job, const bench_row *row)
{
    static const char *const CMD[J_COUNT] = {"run", "run", "prepare", "apply", "amplify"};
    char *txt = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&txt, &len);
    if (!f) return NULL;
    fprintf(f, "nlsr %s", CMD[job]);
#define ARG(name, value)               \
    do {                               \
        fputs(" --" name " ", f);      \
        sh_word(f, value);             \
    } while (0)
    if (job == J_APPLY) {
        ARG("patches", s->patches);
    } else {
        ARG("base", s->base);
        ARG("aligned", s->aligned);
    }
    if (job == J_RUN || job == J_APPLY) ARG("finetuned", s->finetuned);
    if (job == J_INPLACE) {
        ARG("finetuned", s->copy);
        fputs(" --in-place", f);
    } else {
        ARG("out", s->out);
    }
    ARG("mem-budget", row->budget);
    ARG("io", row->io);
    if (job != J_AMPLIFY) ARG("report", s->report); /* amplify's child writes none */
#undef ARG
    if (s->ctx->threads != 1) fprintf(f, " --threads %d", s->ctx->threads);
    fputs(" --force -q", f);
    if (fclose(f) != 0) {
        free(txt);
        return NULL;
    }
    return txt;
}

/* Untimed setup before a run: the previous output goes; run-in-place gets a fresh copy of the
 * fine-tune, written back to disk before its pages are dropped. */
static int setup_run(sweep *s, int job)
{
    bench_remove_tree(s->out);
    unlink(s->report);
    if (job == J_INPLACE) {
        bench_remove_tree(s->copy);
        NLSR_FORWARD(bench_copy_folder(s->ctx, s->finetuned, s->copy));
    }
    return 0;
}

/* --after-each: the caller's command on the run just timed, set up and cold again the same
 * way, with the run in its environment. Untimed; a failure stops the bench. */
static int after_each(sweep *s, int job, const bench_row *row)
{
    nlsr_err *e = &s->ctx->err;
    if (!s->bp->after_each) return 0;
    NLSR_FORWARD(setup_run(s, job));
    bench_row cold;
    memset(&cold, 0, sizeof cold);
    drop_all(s, &cold);
    char rep[16], wall[32];
    snprintf(rep, sizeof rep, "%d", row->rep);
    snprintf(wall, sizeof wall, "%.6f", row->wall_s);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return nlsr_fail(e, -errno, "bench: fork: %s", strerror(errno));
    if (pid == 0) {
        if (setenv("NLSR_BENCH_COMMAND", row->command ? row->command : "", 1) ||
            setenv("NLSR_BENCH_JOB", row->job, 1) || setenv("NLSR_BENCH_BUDGET", row->budget, 1) ||
            setenv("NLSR_BENCH_IO", row->io, 1) || setenv("NLSR_BENCH_REP", rep, 1) ||
            setenv("NLSR_BENCH_CACHE", cold.cache, 1) || setenv("NLSR_BENCH_WALL_S", wall, 1))
            _exit(126);
        execl("/bin/sh", "sh", "-c", s->bp->after_each, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    NLSR_FAIL_IF(!WIFEXITED(st) || WEXITSTATUS(st) != 0, e, NLSR_E_USAGE,
                 "bench: --after-each command %s %d after %s %s %s rep %d",
                 WIFSIGNALED(st) ? "ended by signal" : "exited with status",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), row->job, row->budget, row->io, row->rep);
    return 0;
}

static int one_run(sweep *s, int job, const char *budget_s, uint64_t budget, int have_budget,
                   nlsr_io_kind io, int rep)
{
    nlsr_err *e = &s->ctx->err;
    if (s->r->nrows == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        bench_row *n = realloc(s->r->rows, cap * sizeof *n);
        if (!n) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
        s->r->rows = n;
        s->cap = cap;
    }
    bench_row *row = &s->r->rows[s->r->nrows];
    memset(row, 0, sizeof *row);
    snprintf(row->job, sizeof row->job, "%s", JOBS[job]);
    snprintf(row->budget, sizeof row->budget, "%s", budget_s);
    row->budget_bytes = have_budget ? budget : 0;
    snprintf(row->io, sizeof row->io, "%s", io_short(io));
    row->rep = rep;
    row->phase_sim_s = row->phase_out_s = -1;
    plan_bytes(s, job, budget, have_budget, row);

    if (!(row->command = job_command(s, job, row))) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    s->r->nrows++; /* the row owns its command from here, whatever happens */
    nlsr_log(s->ctx, NLSR_LOG_DEBUG, "bench: %s %s %s rep %d is: %s", row->job, row->budget, row->io,
             rep, row->command);
    NLSR_FORWARD(setup_run(s, job));
    drop_all(s, row);

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) return nlsr_fail(e, -errno, "bench: pipe: %s", strerror(errno));
    fflush(NULL);
    double t0 = nlsr_now();
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return nlsr_fail(e, -errno, "bench: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(pfd[0]);
        child_job(s, job, have_budget ? budget : 0, io, pfd[1]);
    }
    close(pfd[1]);
    char line[1400];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(pfd[0], line + got, sizeof line - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
        if (got == sizeof line - 1) break;
    }
    line[got] = '\0';
    close(pfd[0]);
    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(pid, &st, 0, &ru) < 0 && errno == EINTR) {}
    row->wall_s = nlsr_now() - t0;
    row->user_s = used_s(&ru.ru_utime);
    row->sys_s = used_s(&ru.ru_stime);
    row->peak_rss = (uint64_t)ru.ru_maxrss * 1024u; /* kilobytes on Linux */

    int rc = 0;
    unsigned long long rd = 0, wr = 0;
    char used[16] = "";
    int off = 0;
    if (sscanf(line, "%d %llu %llu %15s %n", &rc, &rd, &wr, used, &off) >= 4) {
        row->bytes_read = rd;
        row->bytes_written = wr;
        snprintf(row->backend, sizeof row->backend, "%s", used);
        if (rc < 0) {
            snprintf(row->error, sizeof row->error, "%s", line + off);
            row->error[strcspn(row->error, "\n")] = '\0';
        }
    } else {
        snprintf(row->error, sizeof row->error, "the job's process ended without a result (%s %d)",
                 WIFSIGNALED(st) ? "signal" : "status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    row->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (row->status == 0 && row->error[0]) row->status = 1;
    if (row->status == 0) read_report(s, row);
    if (!strcmp(row->backend, "io_uring")) snprintf(row->backend, sizeof row->backend, "uring");
    if (row->status) row->backend[0] = '\0'; /* a job that failed early chose none */
    min_io(s, job, row);
    nlsr_log(s->ctx, NLSR_LOG_INFO, "bench: %-12s %-6s %-5s rep %d  %8.2f s  %s", row->job, row->budget,
                row->io, rep, row->wall_s, row->status ? row->error : row->cache);
    return after_each(s, job, row);
}

/* The result files' folders must take them: a sweep of an hour should not end in "cannot
 * create". Nothing is created here. */
static int check_outputs(nlsr_err *e, const nlsr_bench_params *bp)
{
    const char *outs[3] = {bp->csv, bp->json, bp->plot};
    for (int i = 0; i < 3; i++) {
        if (!outs[i]) continue;
        const char *slash = strrchr(outs[i], '/');
        char *dir = slash ? strndup(outs[i], (size_t)(slash - outs[i])) : strdup(".");
        if (!dir) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
        int ok = access(*dir ? dir : "/", W_OK | X_OK) == 0;
        int err = errno;
        free(dir);
        NLSR_FAIL_IF(!ok, e, NLSR_E_USAGE, "%s: cannot write there: %s", outs[i], strerror(err));
        for (int j = 0; j < i; j++)
            NLSR_FAIL_IF(outs[j] && !strcmp(outs[j], outs[i]), e, NLSR_E_USAGE,
                         "bench: %s is given for two outputs", outs[i]);
    }
    return 0;
}

/* The scratch folder: a fresh one, made here and removed at the end, inside --scratch or
 * beside the first output file. */
static int make_scratch(sweep *s)
{
    const nlsr_bench_params *bp = s->bp;
    nlsr_err *e = &s->ctx->err;
    const char *where = bp->scratch;
    char *owned = NULL;
    if (!where) {
        const char *first = bp->csv ? bp->csv : bp->json ? bp->json : bp->plot;
        if (first && strrchr(first, '/')) {
            owned = strndup(first, (size_t)(strrchr(first, '/') - first));
            where = owned && *owned ? owned : "/";
        } else {
            where = ".";
        }
    }
    char *tmpl = nlsr_path_join(where, "nlsr-bench-XXXXXX");
    free(owned);
    if (!tmpl) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    if (!mkdtemp(tmpl)) {
        int rc = nlsr_fail(e, -errno, "%s: cannot make the scratch folder: %s", tmpl, strerror(errno));
        free(tmpl);
        return rc;
    }
    s->dir = tmpl;
    s->out = nlsr_path_join(tmpl, "out");
    s->report = nlsr_path_join(tmpl, "report.json");
    s->patches = nlsr_path_join(tmpl, "patches.nlsrp");
    s->copy = nlsr_path_join(tmpl, "finetuned-copy");
    if (!s->out || !s->report || !s->patches || !s->copy) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    return 0;
}

static int synth_triple(sweep *s, char *paths[3])
{
    const nlsr_synth_role roles[3] = {NLSR_SYNTH_BASE, NLSR_SYNTH_ALIGNED, NLSR_SYNTH_FINETUNED};
    const char *names[3] = {"base", "aligned", "finetuned"};
    for (int k = 0; k < 3; k++) {
        if (!(paths[k] = nlsr_path_join(s->dir, names[k])))
            return nlsr_fail(&s->ctx->err, -ENOMEM, "bench: out of memory");
        nlsr_synth_params sp = NLSR_SYNTH_PARAMS_DEFAULT;
        sp.preset = s->bp->synth;
        sp.layers = s->bp->synth_layers;
        sp.role = roles[k];
        nlsr_log(s->ctx, NLSR_LOG_INFO, "bench: making the synthetic %s %s", sp.preset, names[k]);
        NLSR_FORWARD(nlsr_synth(s->ctx, &sp, paths[k]));
    }
    return 0;
}

/* The physical reference: each input's file system once (read rates from its largest file),
 * the scratch folder's write rate. */
static int measure_disks(sweep *s)
{
    bench_result *r = s->r;
    const char *in[3] = {s->base, s->aligned, s->finetuned};
    const char *roles[3] = {"base", "aligned", "finetuned"};
    for (int k = 0; k < 3; k++) {
        bench_fs tmp;
        memset(&tmp, 0, sizeof tmp);
        bench_fs_describe(&tmp, in[k]);
        int found = -1;
        for (int i = 0; i < r->nfs; i++)
            if (r->fs[i].dev == tmp.dev) found = i;
        if (found >= 0) {
            size_t l = strlen(r->fs[found].role);
            snprintf(r->fs[found].role + l, sizeof r->fs[found].role - l, "+%s", roles[k]);
            continue;
        }
        uint64_t size = 0;
        char *big = bench_largest_file(in[k], &size);
        if (!big) return nlsr_fail(&s->ctx->err, NLSR_E_NOTFOUND, "%s: no file to measure", in[k]);
        snprintf(tmp.role, sizeof tmp.role, "%s", roles[k]);
        int rc = bench_read_rates(s->ctx, big, RATE_PROBE, &tmp);
        free(big);
        NLSR_FORWARD(rc);
        r->fs[r->nfs++] = tmp;
    }
    bench_fs w;
    memset(&w, 0, sizeof w);
    bench_fs_describe(&w, s->dir);
    snprintf(w.role, sizeof w.role, "scratch");
    snprintf(w.path, sizeof w.path, "%s", s->dir);
    w.probe_bytes = WRITE_PROBE;
    NLSR_FORWARD(bench_write_rate(s->ctx, s->dir, WRITE_PROBE, &w));
    /* The scratch folder's reads, where it is another file system (apply's patches). */
    for (int i = 0; i < r->nfs; i++)
        if (r->fs[i].dev == w.dev) {
            w.direct_bps = r->fs[i].direct_bps;
            w.buffered_bps = r->fs[i].buffered_bps;
        }
    r->fs[r->nfs++] = w;
    return 0;
}

/* Every value checked before anything is made or run. */
static int validate(sweep *s, list *jobs, list *budgets, list *ios)
{
    nlsr_ctx *ctx = s->ctx;
    int jk[MAX_LIST];
    uint64_t bb[MAX_LIST];
    nlsr_io_kind ik[MAX_LIST];
    for (int j = 0; j < jobs->n; j++) {
        jk[j] = -1;
        for (int k = 0; k < J_COUNT; k++)
            if (!strcmp(jobs->item[j], JOBS[k])) jk[j] = k;
        NLSR_FAIL_IF(jk[j] < 0, &ctx->err, NLSR_E_USAGE,
                     "bench: --jobs takes run, run-in-place, prepare, apply, amplify, not '%s'", jobs->item[j]);
    }
    for (int b = 0; b < budgets->n; b++) {
        /* "auto" is whatever the library's size parser makes of it: a library without an
         * automatic budget refuses it here, before anything runs. */
        NLSR_FAIL_IF(nlsr_parse_mem_budget(budgets->item[b], &bb[b]) != 0, &ctx->err, NLSR_E_USAGE,
                     "bench: --budgets: '%s' is not a size%s", budgets->item[b],
                     strcmp(budgets->item[b], "auto") ? "" : " this library knows (no automatic budget in this version)");
    }
    for (int i = 0; i < ios->n; i++)
        NLSR_FAIL_IF(parse_io(ios->item[i], &ik[i]) != 0, &ctx->err, NLSR_E_USAGE,
                     "bench: --io takes uring, pread, mmap, not '%s'", ios->item[i]);
    return 0;
}

static int run_sweep(sweep *s, list *jobs, list *budgets, list *ios, int reps)
{
    nlsr_ctx *ctx = s->ctx;
    int need_patches = 0;
    for (int j = 0; j < jobs->n; j++) need_patches |= !strcmp(jobs->item[j], "apply");
    if (need_patches) {
        /* apply's input, made once and untimed. */
        nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
        p.force = 1;
        nlsr_ctx *c = nlsr_ctx_create();
        if (!c) return nlsr_fail(&ctx->err, -ENOMEM, "bench: out of memory");
        nlsr_ctx_set_quiet(c, 1);
        int rc = nlsr_prepare(c, s->base, s->aligned, NULL, s->patches, &p);
        if (rc < 0) nlsr_fail(&ctx->err, rc, "bench: making apply's patches: %s", nlsr_ctx_error(c));
        nlsr_ctx_free(c);
        NLSR_FORWARD(rc);
    }
    for (int j = 0; j < jobs->n; j++) {
        int job = 0;
        for (int k = 0; k < J_COUNT; k++)
            if (!strcmp(jobs->item[j], JOBS[k])) job = k;
        if (job == J_INPLACE) s->r->in_place_copy_excluded = 1;
        for (int b = 0; b < budgets->n; b++) {
            uint64_t bytes = 0;
            /* "auto" is NLSR_MEM_BUDGET_AUTO: the child resolves it as the program would. */
            nlsr_parse_mem_budget(budgets->item[b], &bytes);
            int have = 1;
            for (int i = 0; i < ios->n; i++) {
                nlsr_io_kind io = NLSR_IO_URING;
                parse_io(ios->item[i], &io);
                for (int rep = 1; rep <= reps; rep++) {
                    NLSR_FORWARD(nlsr_ctx_check_cancel(ctx));
                    NLSR_FORWARD(one_run(s, job, budgets->item[b], bytes, have, io, rep));
                }
            }
        }
    }
    return 0;
}

int nlsr_bench(nlsr_ctx *ctx, const nlsr_bench_params *bp, FILE *out)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(!bp, e, NLSR_E_USAGE, "bench: no parameters");
    int synth = bp->synth != NULL;
    NLSR_FAIL_IF(synth && (bp->base || bp->aligned || bp->finetuned), e, NLSR_E_USAGE,
                 "bench: give either --synth or --base/--aligned/--finetuned, not both");
    NLSR_FAIL_IF(!synth && (!bp->base || !bp->aligned || !bp->finetuned), e, NLSR_E_USAGE,
                 "bench: needs --base, --aligned and --finetuned, or --synth PRESET");
    NLSR_FAIL_IF(synth && strcmp(bp->synth, "tiny") && strcmp(bp->synth, "llama-8b") &&
                     strcmp(bp->synth, "llama-70b"),
                 e, NLSR_E_USAGE, "bench: --synth takes tiny, llama-8b or llama-70b, not '%s'", bp->synth);
    NLSR_FAIL_IF(bp->reps < 0 || bp->reps > 1000, e, NLSR_E_USAGE, "bench: --reps %d is out of range", bp->reps);
    NLSR_FAIL_IF(bp->warm && bp->drop_caches, e, NLSR_E_USAGE, "bench: --warm and --drop-caches exclude each other");
    list jobs = {0}, budgets = {0}, ios = {0};
    bench_result res;
    memset(&res, 0, sizeof res);
    sweep s;
    memset(&s, 0, sizeof s);
    s.ctx = ctx;
    s.bp = bp;
    s.r = &res;
    char *syn[3] = {NULL, NULL, NULL};
    int reps = bp->reps ? bp->reps : 1;
    int rc = split(e, "--jobs", bp->jobs ? bp->jobs : "run", &jobs);
    if (rc == 0) rc = split(e, "--budgets", bp->budgets ? bp->budgets : "1G", &budgets);
    if (rc == 0) rc = split(e, "--io", bp->ios ? bp->ios : "uring,pread", &ios);
    if (rc == 0) rc = validate(&s, &jobs, &budgets, &ios);
    if (rc == 0) rc = check_outputs(e, bp);
    if (rc == 0) rc = make_scratch(&s);
    if (rc == 0 && synth) rc = synth_triple(&s, syn);
    if (rc == 0) {
        s.base = synth ? syn[0] : bp->base;
        s.aligned = synth ? syn[1] : bp->aligned;
        s.finetuned = synth ? syn[2] : bp->finetuned;
        res.base = s.base;
        res.aligned = s.aligned;
        res.finetuned = s.finetuned;
        res.synth = bp->synth;
        res.synth_layers = bp->synth_layers;
        bench_machine_describe(&res.m);
        nlsr_log(ctx, NLSR_LOG_INFO, "bench: measuring the disks");
        rc = measure_disks(&s);
    }
    if (rc == 0) rc = run_sweep(&s, &jobs, &budgets, &ios, reps);
    if (rc == 0) bench_print_table(&res, out);
    if (rc == 0 && bp->csv) rc = bench_write_csv(&res, bp->csv, e);
    if (rc == 0 && bp->json) rc = bench_write_json(&res, bp->json, e);
    if (rc == 0 && bp->plot) rc = bench_write_svg(&res, bp->plot, e);
    if (s.dir) bench_remove_tree(s.dir);
    for (int k = 0; k < 3; k++) free(syn[k]);
    free(s.dir);
    free(s.out);
    free(s.report);
    free(s.patches);
    free(s.copy);
    for (size_t i = 0; i < res.nrows; i++) free(res.rows[i].command);
    free(res.rows);
    free(jobs.buf);
    free(budgets.buf);
    free(ios.buf);
    return rc;
}
