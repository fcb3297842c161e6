/* SPDX-License-Identifier: Apache-2.0 */
/* The job report: one table of per-module results that both the full-weight and the LoRA jobs
 * fill, rendered as JSON for machines and as a few lines of the log (info) for people. */
#define _GNU_SOURCE
#include "report.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/log.h"
#include "../common/json.h"
#include "../compute/selection.h"
#include "../io/file.h"
#include "../io/outpath.h"
#include "audit.h"
#include "../common/params.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void nlsr_report_init(nlsr_report *r, nlsr_ctx *ctx, const char *job, const char *kind)
{
    memset(r, 0, sizeof *r);
    r->job = job;
    r->kind = kind;
    r->has_selection = 1;
    r->t_start = now_seconds();
    r->read0 = ctx->bytes_read;
    r->written0 = ctx->bytes_written;
}

void nlsr_report_free(nlsr_report *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) free(r->m[i].name);
    free(r->m);
    nlsr_tmp_remove(r->staged); /* a staged report of a job that failed before its commit */
    free(r->staged);
    r->staged = NULL;
    r->m = NULL;
    r->n = r->cap = 0;
    nlsr_sidefiles_free(&r->files);
}

/* "files": what the output folder got from the input folder, by class (sidefiles.h). */
static int add_files(cJSON *root, const nlsr_sidefiles *sf)
{
    static const struct {
        const char *key;
        nlsr_sf_class cls;
    } k[] = {{"weights", NLSR_SF_WEIGHTS},
             {"copied", NLSR_SF_COPY},
             {"dropped", NLSR_SF_OTHER},
             {"skipped", NLSR_SF_SKIP}};
    cJSON *f = cJSON_AddObjectToObject(root, "files");
    if (!f) return -1;
    for (size_t j = 0; j < sizeof k / sizeof k[0]; j++) {
        cJSON *a = cJSON_AddArrayToObject(f, k[j].key);
        if (!a) return -1;
        for (size_t i = 0; i < sf->n; i++) {
            const nlsr_sf_entry *x = &sf->e[i];
            if (x->cls != k[j].cls) continue;
            char nm[4096];
            snprintf(nm, sizeof nm, "%s%s", x->name, x->is_dir ? "/" : "");
            cJSON *str = cJSON_CreateString(nm);
            if (!str) return -1;
            cJSON_AddItemToArray(a, str);
        }
    }
    return 0;
}

int nlsr_report_add(nlsr_report *r, nlsr_ctx *ctx, const char *name, uint64_t numel,
                    uint64_t mask_count, size_t *index)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        nlsr_report_module *m = realloc(r->m, cap * sizeof *m);
        NLSR_FAIL_IF(!m, &ctx->err, -ENOMEM, "out of memory growing the report");
        r->m = m;
        r->cap = cap;
    }
    char *copy = strdup(name);
    NLSR_FAIL_IF(!copy, &ctx->err, -ENOMEM, "out of memory growing the report");
    r->m[r->n] = (nlsr_report_module){copy, NAN, mask_count, numel, NAN, NAN, 0};
    if (index) *index = r->n;
    r->n++;
    return 0;
}

int nlsr_report_select(nlsr_report *r, nlsr_ctx *ctx, const nlsr_select_params *sp)
{
    size_t n = r->n ? r->n : 1;
    double *sim = malloc(n * sizeof *sim), *pr = malloc(n * sizeof *pr),
           *dr = malloc(n * sizeof *dr);
    int *pa = malloc(n * sizeof *pa);
    int rc = 0;
    if (!sim || !pr || !dr || !pa) {
        rc = nlsr_fail(&ctx->err, -ENOMEM, "out of memory selecting modules");
        goto done;
    }
    for (size_t i = 0; i < r->n; i++) sim[i] = r->m[i].similarity;
    rc = nlsr_select_modules(sp, sim, r->n, pr, dr, pa);
    if (rc < 0) {
        nlsr_fail(&ctx->err, rc, "out of memory selecting modules");
        goto done;
    }
    for (size_t i = 0; i < r->n; i++) {
        r->m[i].probability = pr[i];
        r->m[i].draw = dr[i];
        r->m[i].patched = pa[i];
    }
done:
    free(sim);
    free(pr);
    free(dr);
    free(pa);
    return rc;
}

void nlsr_report_finish(nlsr_report *r, nlsr_ctx *ctx)
{
    nlsr_report_summary *s = &r->summary;
    s->modules = r->n;
    s->patched = 0;
    s->elements_patched = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->m[i].patched) {
            s->patched++;
            s->elements_patched += r->m[i].mask_count;
        }
    s->bytes_read = ctx->bytes_read - r->read0;
    s->bytes_written = ctx->bytes_written - r->written0;
    s->seconds = now_seconds() - r->t_start;
    struct rusage ru;
    /* ru_maxrss is in kilobytes on Linux. */
    s->peak_rss_bytes = getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_maxrss * 1024u : 0;
    s->budget_peak_bytes = ctx->budget.peak;
    s->budget_bytes = ctx->budget.limit;
    snprintf(s->budget_why, sizeof s->budget_why, "%s", ctx->budget_why);
    nlsr_io_kind used = ctx->io_used == NLSR_IO_AUTO ? NLSR_IO_PREAD : ctx->io_used;
    s->io_backend = nlsr_io_kind_name(used);
}

static const char *mode_name(nlsr_select_mode m)
{
    switch (m) {
    case NLSR_SELECT_ADAPTIVE: return "adaptive";
    case NLSR_SELECT_THRESHOLD: return "threshold";
    case NLSR_SELECT_ALL: return "all";
    case NLSR_SELECT_NONE: return "none";
    }
    return "?";
}

static cJSON *num_or_null(double v)
{
    return nlsr_json_number(v);
}

int nlsr_report_json(const nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p,
                     char **out)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *par = NULL, *mods = NULL, *sum = NULL;
    if (!root || !(par = cJSON_AddObjectToObject(root, "params"))) goto oom;
    cJSON_AddStringToObject(par, "job", r->job);
    cJSON_AddStringToObject(par, "kind", r->kind);
    /* The table's order and keys (src/common/params.h): old reports read the same. */
    if (nlsr_params_add_json(par, p, strcmp(r->kind, "lora") == 0 ? NLSR_PJ_LORA : NLSR_PJ_FULL))
        goto oom;
    if (!(mods = cJSON_AddArrayToObject(root, "modules"))) goto oom;
    for (size_t i = 0; i < r->n; i++) {
        const nlsr_report_module *m = &r->m[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) goto oom;
        cJSON_AddItemToArray(mods, o);
        cJSON_AddStringToObject(o, "name", m->name);
        cJSON_AddItemToObject(o, "similarity", num_or_null(m->similarity));
        cJSON_AddNumberToObject(o, "mask_count", (double)m->mask_count);
        cJSON_AddNumberToObject(o, "numel", (double)m->numel);
        cJSON_AddItemToObject(o, "probability", num_or_null(m->probability));
        cJSON_AddItemToObject(o, "draw", num_or_null(m->draw));
        cJSON_AddBoolToObject(o, "patched", m->patched);
    }
    const nlsr_report_summary *s = &r->summary;
    if (!(sum = cJSON_AddObjectToObject(root, "summary"))) goto oom;
    cJSON_AddNumberToObject(sum, "modules", (double)s->modules);
    cJSON_AddNumberToObject(sum, "patched", (double)s->patched);
    cJSON_AddNumberToObject(sum, "elements_patched", (double)s->elements_patched);
    cJSON_AddNumberToObject(sum, "bytes_read", (double)s->bytes_read);
    cJSON_AddNumberToObject(sum, "bytes_written", (double)s->bytes_written);
    cJSON_AddItemToObject(sum, "seconds", nlsr_json_number(s->seconds));
    cJSON_AddNumberToObject(sum, "peak_rss_bytes", (double)s->peak_rss_bytes);
    cJSON_AddNumberToObject(sum, "budget_peak_bytes", (double)s->budget_peak_bytes);
    cJSON_AddNumberToObject(sum, "mem_budget_bytes", (double)s->budget_bytes);
    cJSON_AddStringToObject(sum, "mem_budget", s->budget_why[0] ? "auto" : "given");
    if (s->budget_why[0]) cJSON_AddStringToObject(sum, "mem_budget_reason", s->budget_why);
    cJSON_AddStringToObject(sum, "io_backend", s->io_backend ? s->io_backend : "pread");
    if (s->module_passes) {
        cJSON_AddNumberToObject(sum, "module_passes", (double)s->module_passes);
        cJSON_AddNumberToObject(sum, "module_disk_passes", (double)s->module_disk_passes);
    }
    if (s->plan) {
        cJSON_AddStringToObject(sum, "plan", s->plan);
        if (strcmp(s->plan, "single pass") == 0 || strcmp(s->plan, NLSR_PLAN_ROWS) == 0) {
            cJSON_AddNumberToObject(sum, "patches_in_memory", (double)s->patches_in_memory);
            cJSON *ph = cJSON_AddObjectToObject(sum, "phase_seconds");
            if (!ph) goto oom;
            cJSON_AddItemToObject(ph, "similarities", nlsr_json_number(s->phase_seconds[0]));
            cJSON_AddItemToObject(ph, "output", nlsr_json_number(s->phase_seconds[1]));
        } else if (s->single_pass_need) {
            cJSON_AddNumberToObject(sum, "single_pass_need_bytes", (double)s->single_pass_need);
        }
    }
    if (s->patch_bytes) {
        cJSON_AddNumberToObject(sum, "patch_bytes", (double)s->patch_bytes);
        cJSON_AddNumberToObject(sum, "model_bytes", (double)s->model_bytes);
        cJSON_AddItemToObject(sum, "patch_fraction",
                              nlsr_json_number(s->model_bytes ? (double)s->patch_bytes /
                                                                    (double)s->model_bytes
                                                              : 0.0));
    }
    cJSON *audit = nlsr_audit_json(ctx); /* NULL when the job keeps no audit */
    if (audit) cJSON_AddItemToObject(root, "audit", audit);
    if (r->files.loaded && add_files(root, &r->files) < 0) goto oom;
    char *txt = cJSON_Print(root);
    if (!txt) goto oom;
    cJSON_Delete(root);
    *out = txt;
    return 0;
oom:
    cJSON_Delete(root);
    return nlsr_fail(&ctx->err, -ENOMEM, "out of memory building the JSON report");
}

/* The JSON into a fresh temporary file beside `path`, fsynced; *tmp names it. */
static int write_tmp(const nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p,
                     const char *path, char **tmp)
{
    nlsr_err *e = &ctx->err;
    char *txt = NULL;
    NLSR_FORWARD(nlsr_report_json(r, ctx, p, &txt));
    int fd = -1;
    int rc = nlsr_tmp_file(e, path, tmp, &fd);
    if (rc == 0) {
        size_t len = strlen(txt);
        txt[len] = '\n'; /* the terminator becomes the final newline; len + 1 bytes written */
        rc = nlsr_pwrite_all(fd, txt, len + 1, 0, *tmp, e);
        if (rc == 0 && fsync(fd) != 0) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: fsync failed: %s", *tmp, strerror(-rc));
        }
        close(fd);
        if (rc < 0) {
            nlsr_tmp_remove(*tmp);
            free(*tmp);
            *tmp = NULL;
        }
    }
    free(txt);
    return rc;
}

int nlsr_report_write_file(const nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p,
                           const char *path)
{
    char *tmp = NULL;
    NLSR_FORWARD(write_tmp(r, ctx, p, path, &tmp));
    int rc = nlsr_tmp_file_commit(&ctx->err, tmp, path, p->force);
    if (rc < 0) nlsr_tmp_remove(tmp);
    free(tmp);
    return rc;
}

int nlsr_report_stage(nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p)
{
    if (!p->report_path || r->staged) return 0;
    nlsr_report_finish(r, ctx);
    r->finished = 1;
    return write_tmp(r, ctx, p, p->report_path, &r->staged);
}

/* "model.layers.12.mlp.up_proj.weight" -> 12 and the part after "layers.12." (or -1, name). */
static long layer_of(const char *name, const char **rest)
{
    const char *q = strstr(name, "layers.");
    *rest = name;
    if (!q) return -1;
    char *end;
    long v = strtol(q + 7, &end, 10);
    if (end == q + 7 || *end != '.' || v < 0) return -1;
    *rest = end + 1;
    return v;
}

static void human_size(uint64_t b, char *buf, size_t cap);

/* "  budget auto: 11.0 GiB (half of MemAvailable ...)" or "  budget 512 MiB (given)", no
 * newline: the plan follows on the same line. */
static void print_budget(const nlsr_report_summary *s, FILE *f)
{
    char bb[32];
    if (!s->budget_bytes) {
        fprintf(f, "  budget: none");
        return;
    }
    human_size(s->budget_bytes, bb, sizeof bb);
    if (s->budget_why[0]) fprintf(f, "  budget auto: %s (%s)", bb, s->budget_why);
    else fprintf(f, "  budget %s (given)", bb);
}

static void human_size(uint64_t b, char *buf, size_t cap)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int k = 0;
    while (v >= 1024.0 && k < 4) {
        v /= 1024.0;
        k++;
    }
    snprintf(buf, cap, k ? "%.1f %s" : "%.0f %s", v, u[k]);
}

static void print_reason(const nlsr_report_module *m, const nlsr_realign_params *p, FILE *f)
{
    switch (p->select.mode) {
    case NLSR_SELECT_ADAPTIVE:
        fprintf(f, "S=%.4f p=%.3f draw=%.3f", m->similarity, m->probability, m->draw);
        break;
    case NLSR_SELECT_THRESHOLD:
        fprintf(f, "S=%.4f %s tau %g", m->similarity, m->patched ? "<" : ">=", p->select.tau);
        break;
    default:
        if (!isnan(m->similarity)) fprintf(f, "S=%.4f", m->similarity);
        break;
    }
}

void nlsr_report_print_human(const nlsr_report *r, const nlsr_realign_params *p, FILE *f)
{
    const nlsr_report_summary *s = &r->summary;
    char rb[32], wb[32], mb[32];
    human_size(s->bytes_read, rb, sizeof rb);
    human_size(s->bytes_written, wb, sizeof wb);
    human_size(s->peak_rss_bytes, mb, sizeof mb);
    if (!r->has_selection) {
        uint64_t masked = 0, numel = 0;
        for (size_t i = 0; i < r->n; i++) {
            masked += r->m[i].mask_count;
            numel += r->m[i].numel;
        }
        fprintf(f, "nlsr %s: %zu target modules, %" PRIu64 " of %" PRIu64
                   " elements safety-critical (sparsity %g, beta %g)\n",
                r->job, r->n, masked, numel, p->sparsity, p->beta);
        if (strcmp(r->kind, "full") == 0 && p->scorer.kind != NLSR_SCORER_MAGNITUDE)
            fprintf(f, "  scorer %s: %" PRIu64 " passes over the modules, %" PRIu64
                       " of them from disk\n",
                    nlsr_scorer_kind_name(p->scorer.kind), s->module_passes,
                    s->module_disk_passes);
        if (s->patch_bytes) {
            char pb[32];
            human_size(s->patch_bytes, pb, sizeof pb);
            fprintf(f, "  patch file: %s, %.2f%% of the model's %" PRIu64 " bytes\n", pb,
                    s->model_bytes ? 100.0 * (double)s->patch_bytes / (double)s->model_bytes
                                   : 0.0,
                    s->model_bytes);
        }
        print_budget(s, f);
        fputc('\n', f);
        fprintf(f, "  read %s, wrote %s in %.2f s, peak RSS %s, io %s\n", rb, wb, s->seconds, mb,
                s->io_backend ? s->io_backend : "pread");
        return;
    }
    fprintf(f, "nlsr %s: patched %zu of %zu target modules (%" PRIu64 " elements), select %s",
            r->job, s->patched, s->modules, s->elements_patched, mode_name(p->select.mode));
    if (p->select.mode == NLSR_SELECT_ADAPTIVE)
        fprintf(f, ", %s semantics, seed %" PRIu64 ": patched iff draw < p",
                p->select.semantics == NLSR_SEMANTICS_PAPER ? "paper" : "authors",
                p->select.seed);
    else if (p->select.mode == NLSR_SELECT_THRESHOLD)
        fprintf(f, ": patched iff S < %g", p->select.tau);
    fputc('\n', f);
    /* One line per layer, layers ascending (module order sorts "10" before "2"); modules
     * outside numbered layers last. */
    long maxl = -1;
    for (size_t i = 0; i < r->n; i++) {
        const char *rest;
        long l = layer_of(r->m[i].name, &rest);
        if (l > maxl) maxl = l;
    }
    for (long l = 0; l <= maxl + 1; l++) {
        long want = l <= maxl ? l : -1;
        size_t total = 0, patched = 0;
        for (size_t i = 0; i < r->n; i++) {
            const char *rest;
            if (layer_of(r->m[i].name, &rest) != want) continue;
            total++;
            patched += r->m[i].patched != 0;
        }
        if (total == 0) continue;
        if (want >= 0) fprintf(f, "  layer %ld: %zu/%zu patched", want, patched, total);
        else fprintf(f, "  other: %zu/%zu patched", patched, total);
        const char *sep = ": ";
        for (size_t i = 0; i < r->n; i++) {
            const char *rest;
            if (layer_of(r->m[i].name, &rest) != want || !r->m[i].patched) continue;
            fprintf(f, "%s%s (", sep, rest);
            print_reason(&r->m[i], p, f);
            fputc(')', f);
            sep = ", ";
        }
        fputc('\n', f);
    }
    print_budget(s, f);
    if (s->plan && strcmp(s->plan, "single pass") == 0)
        fprintf(f, "; plan: single pass (the budget holds two whole modules), %zu of %zu "
                   "modules' patches kept in memory\n",
                s->patches_in_memory, s->modules);
    else if (s->plan && strcmp(s->plan, NLSR_PLAN_ROWS) == 0)
        fprintf(f, "; plan: single pass in row blocks (the budget holds less than two whole "
                   "modules), %zu of %zu modules' patches kept in memory\n",
                s->patches_in_memory, s->modules);
    else if (s->plan && s->single_pass_need) {
        char nb[32];
        human_size(s->single_pass_need, nb, sizeof nb);
        fprintf(f, "; plan: prepare + apply through a temporary patch file; a single pass (faster) "
                   "needs --mem-budget %s or more\n", nb);
    } else if (s->plan) {
        fprintf(f, "; plan: prepare + apply through a temporary patch file\n");
    } else {
        fputc('\n', f);
    }
    fprintf(f, "  read %s, wrote %s in %.2f s, peak RSS %s, io %s\n", rb, wb, s->seconds, mb,
            s->io_backend ? s->io_backend : "pread");
}

/* The human summary goes to the log at info level, one line per call: a program shows it
 * the way it shows the rest of the log (README "Progress and logs"). */
static void report_log_human(const nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p)
{
    if (!ctx->log_fn || ctx->quiet) return;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return;
    nlsr_report_print_human(r, p, f);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return;
    }
    for (char *line = buf, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        nlsr_log(ctx, NLSR_LOG_INFO, "%s", line);
        if (!nl) break;
    }
    free(buf);
}

int nlsr_report_emit(nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p)
{
    if (!r->finished) nlsr_report_finish(r, ctx);
    if (p->report_path) {
        /* After the commit: the job is done, so a report that cannot be put in place is a
         * warning naming where it is, never a failed job. */
        int rc = r->staged ? 0 : write_tmp(r, ctx, p, p->report_path, &r->staged);
        if (rc == 0) rc = nlsr_tmp_file_commit(&ctx->err, r->staged, p->report_path, p->force);
        if (rc < 0) {
            nlsr_log(ctx, NLSR_LOG_WARN,
                     "the job finished and its output is in place, but the report was not "
                     "written: %s%s%s",
                     nlsr_ctx_error(ctx), r->staged ? "; it is in " : "",
                     r->staged ? r->staged : "");
            nlsr_ctx_clear_error(ctx);
        } else {
            free(r->staged);
            r->staged = NULL;
        }
        if (rc < 0) {
            free(r->staged); /* kept on disk for the user: the message names it */
            r->staged = NULL;
        }
    }
    if (p->json_stdout) {
        char *txt = NULL;
        NLSR_FORWARD(nlsr_report_json(r, ctx, p, &txt));
        fprintf(stdout, "%s\n", txt);
        fflush(stdout);
        free(txt);
    }
    if (!ctx->no_summary) report_log_human(r, ctx, p);
    return 0;
}
