/* SPDX-License-Identifier: Apache-2.0 */
/* The report of a realignment job (prepare, apply, run; full weights or LoRA): per-module
 * results in METHOD.md's module order, the parameters and a summary, written as JSON (--report
 * FILE, --json on stdout: the product the caller asked for) and as a short human summary,
 * which goes to the context's log at info level, one line per call.
 *
 * JSON shape (numbers as doubles; probability/draw null where the selection mode has none):
 *   {"params": {"beta","sparsity","mode","semantics","prune_rate","epsilon","tau","seed",
 *               "targets", ...},
 *    "modules": [{"name","similarity","mask_count","numel","probability","draw","patched"}, ...],
 *    "summary": {"modules","patched","elements_patched","bytes_read","bytes_written","seconds",
 *                "peak_rss_bytes","io_backend", "patch_bytes"?, "model_bytes"?,
 *                "patch_fraction"?, "plan"?, "patches_in_memory"?, "phase_seconds"?,
 *                "single_pass_need_bytes"?},
 *    "audit"?: {...},   (audit.h: version, command line, times, host, inputs, outputs, XXH64s)
 *    "files"?: {"weights", "copied", "dropped", "skipped"}}   (jobs that write a folder: names
 *               relative to the input folder, src/io/sidefiles.h; folders end in '/')
 *
 * Usage (both the full-weight and the LoRA jobs):
 *   nlsr_report r;
 *   nlsr_report_init(&r, "run", "full", params);        // starts the clock
 *   for each module in module order: nlsr_report_add(&r, ctx, name, numel, mask_count, &i);
 *   ... fill r.m[i].similarity, then nlsr_report_set_selection(&r, ctx) or set the fields ...
 *   nlsr_report_emit(&r, ctx, params);                  // summary, JSON file/stdout, log lines
 *   nlsr_report_free(&r);
 */
#ifndef NLSR_PLAN_REPORT_H
#define NLSR_PLAN_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nlsr.h"
#include "../io/sidefiles.h"

typedef struct nlsr_report_module {
    char *name;            /* owned (copied by nlsr_report_add) */
    double similarity;     /* cosine of METHOD.md step 3; NAN until computed (prepare) */
    uint64_t mask_count;   /* elements under the mask (LoRA: both factors together) */
    uint64_t numel;        /* elements of the module (LoRA: both factors together) */
    double probability;    /* NAN where the mode has none (JSON null) */
    double draw;           /* NAN where the mode has none (JSON null) */
    int patched;           /* 1 if the transplant was applied to this module */
} nlsr_report_module;

typedef struct nlsr_report_summary {
    size_t modules, patched;
    uint64_t elements_patched;      /* sum of mask_count over patched modules */
    uint64_t bytes_read, bytes_written;
    double seconds;
    uint64_t peak_rss_bytes;        /* getrusage(RUSAGE_SELF) maximum resident set */
    uint64_t budget_peak_bytes;     /* highest memory-budget use (nlsr_ctx_mem_peak) */
    uint64_t budget_bytes;          /* the budget in force (nlsr_ctx_mem_budget), 0 = none */
    char budget_why[224];           /* how --mem-budget auto derived it; "" if given */
    const char *io_backend;         /* nlsr_io_kind_name of the backend used */
    uint64_t patch_bytes;           /* size of the patch file, 0 if none (not printed) */
    uint64_t model_bytes;           /* bytes of the model the patch file describes */
    uint64_t module_passes;         /* full prepare: passes over target modules reading base +
                                       aligned (from disk or the module cache), 0 if none */
    uint64_t module_disk_passes;    /* of them, streamed from disk */
    const char *plan;               /* run: "single pass", "row blocks" (NLSR_PLAN_ROWS) or
                                       "patch file" (static), NULL else */
    size_t patches_in_memory;       /* run, single pass: modules whose patches stayed in memory
                                       (the others are recomputed while the output is written) */
    uint64_t single_pass_need;      /* run, magnitude rule: the budget the single pass needs
                                       (the hint when the patch-file plan ran), 0 if none */
    double phase_seconds[2];        /* run, single pass: similarities (reading every module), then
                                       the output (selection, copies, transplants) */
} nlsr_report_summary;

typedef struct nlsr_report {
    const char *job;                /* "prepare", "apply", "run" (static string) */
    const char *kind;               /* "full" or "lora" (static string) */
    int has_selection;              /* 0 for prepare: no similarity or selection fields */
    size_t n, cap;
    nlsr_report_module *m;          /* owned, module order */
    nlsr_report_summary summary;
    double t_start;                 /* monotonic seconds at init */
    char *staged;                   /* nlsr_report_stage's temporary file, renamed by emit */
    int finished;                   /* summary filled (stage fills it before the commit) */
    uint64_t read0, written0;       /* ctx counters at init: the summary counts this job only */
    nlsr_sidefiles files;           /* the input folder's entries, when the job writes a folder
                                       (files.loaded); owned */
} nlsr_report;

/* Starts an empty report and its clock. `job` and `kind` must be static strings. */
void nlsr_report_init(nlsr_report *r, nlsr_ctx *ctx, const char *job, const char *kind);
/* Appends a module (similarity, probability and draw NAN, not patched); *index its position.
 * Modules must be added in module order. -ENOMEM on failure, recorded in ctx. */
int nlsr_report_add(nlsr_report *r, nlsr_ctx *ctx, const char *name, uint64_t numel,
                    uint64_t mask_count, size_t *index);
/* Runs nlsr_select_modules over the modules' similarities and stores probability, draw and
 * patched in each module. */
int nlsr_report_select(nlsr_report *r, nlsr_ctx *ctx, const nlsr_select_params *sp);
/* Fills the summary from the modules and the context (counters since init, time, RSS). */
void nlsr_report_finish(nlsr_report *r, nlsr_ctx *ctx);
/* The JSON text (malloc'd, NUL-terminated, pretty-printed) of a finished report. */
int nlsr_report_json(const nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p,
                     char **out);
/* Writes the report file's JSON (p->report_path) to a temporary file beside it. Jobs call it
 * before their output commits, so that a report that cannot be written fails the job with
 * nothing committed; nlsr_report_emit then only renames it. No-op without a report path. */
int nlsr_report_stage(nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p);
/* Writes the JSON to `path` (replaced atomically: temporary file, then rename). */
int nlsr_report_write_file(const nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p,
                           const char *path);
/* The short human summary: which layers were patched and why, totals. */
void nlsr_report_print_human(const nlsr_report *r, const nlsr_realign_params *p, FILE *f);
/* nlsr_report_finish, then p->report_path (if any), JSON on stdout if p->json_stdout, and the
 * human summary to the log (NLSR_LOG_INFO) unless a job inside another (ctx->no_summary). */
int nlsr_report_emit(nlsr_report *r, nlsr_ctx *ctx, const nlsr_realign_params *p);
void nlsr_report_free(nlsr_report *r);


/* The report's name of the single pass in row blocks (summary.plan, `nlsr plan`). */
#define NLSR_PLAN_ROWS "row blocks"

#endif
