/* SPDX-License-Identifier: Apache-2.0 */
/* The public realignment jobs: nlsr_prepare, nlsr_apply, nlsr_run. They open the inputs,
 * validate everything that can be validated from headers before anything is written, send
 * PEFT adapters to the LoRA jobs (lora.h) and full checkpoints to realign_full.c, and own the
 * output's temporary-folder-then-rename life cycle. `run` on full weights is a single pass
 * (realign_run.h) when the budget holds two whole modules, and otherwise prepare into a
 * temporary patch file inside the output's temporary folder followed by apply; both give the
 * bits prepare + apply give (tests/test_realign_full.c compares all three). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/params.h"
#include "../common/testhook.h"
#include "../common/log.h"
#include "../common/ctx.h"
#include "../io/file.h"
#include "../io/hub.h"
#include "../io/journal.h"
#include "../io/lock.h"
#include "../io/patchfile.h"
#include "../io/sidefiles.h"
#include "audit.h"
#include "realign_full.h"
#include "realign_run.h"
#include "report.h"
#include "scorer.h"
#include "split.h"

#if defined(__has_include)
#if __has_include("lora.h")
#include "lora.h"
#define NLSR_HAVE_LORA 1
#endif
#endif

#define RUN_PATCH_NAME ".nlsr-run-patches.nlsrp"

#ifndef NLSR_HAVE_LORA
static int lora_missing(nlsr_ctx *ctx, const char *path)
{
    return nlsr_fail(&ctx->err, NLSR_E_USAGE, "%s: PEFT adapters are not supported by this build",
                     path);
}
#endif

/* The job's inputs as the output checks see them: the checkpoints and patch file given, plus
 * the mask and activations files the parameters name. */
static size_t job_inputs(const nlsr_realign_params *p, const char *a, const char *b,
                         const char *c, const char **v)
{
    size_t n = 0;
    v[n++] = a;
    v[n++] = b;
    v[n++] = c;
    v[n++] = p->mask_path;
    v[n++] = p->scorer.activations;
    return n;
}

/* prepare's patch file, and the report and mask files, against every input. */
static int check_out_file(nlsr_ctx *ctx, const char *out, const nlsr_realign_params *p,
                          const char *a, const char *b, const char *c)
{
    const char *in[5];
    size_t n = job_inputs(p, a, b, c, in);
    return nlsr_outputs_check(ctx, out, NLSR_OUT_FILE, p, in, n);
}

static int check_out_dir(nlsr_ctx *ctx, const char *out, const nlsr_realign_params *p,
                         const char *a, const char *b, const char *c)
{
    const char *in[5];
    size_t n = job_inputs(p, a, b, c, in);
    return nlsr_outputs_check(ctx, out, NLSR_OUT_DIR, p, in, n);
}

/* Shared locks on the input folders (lock.h; a file's own folder): an in-place run or a
 * rollback cannot start on an input while it is read, and one in progress is refused here
 * (NLSR_E_LOCKED) rather than read half patched. fds[i] = -1 where none was taken. */
int nlsr_jobs_lock_inputs(nlsr_ctx *ctx, const char *const *paths, size_t n, int *fds)
{
    for (size_t i = 0; i < n; i++) fds[i] = -1;
    for (size_t i = 0; i < n; i++) {
        if (!paths[i]) continue;
        int d = nlsr_is_dir(paths[i]);
        if (d == 1) {
            /* A hub cache repository folder is read from its snapshot: lock that one. */
            nlsr_hub_kind hub;
            char *snap = NULL;
            int rc = nlsr_hub_resolve(paths[i], ctx->revision[0] ? ctx->revision : NULL, &hub,
                                      &snap, &ctx->err);
            if (rc == 0) rc = nlsr_lock_shared(ctx, snap ? snap : paths[i], &fds[i]);
            free(snap);
            NLSR_FORWARD(rc);
            continue;
        }
        /* A single-file input: its folder is what an in-place run locks. */
        char *dir = d == 0 ? strdup(paths[i]) : NULL;
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash) slash[slash == dir ? 1 : 0] = '\0';
        int rc = dir && nlsr_is_dir(slash ? dir : ".") == 1
                     ? nlsr_lock_shared(ctx, slash ? dir : ".", &fds[i])
                     : 0;
        free(dir);
        NLSR_FORWARD(rc);
    }
    return 0;
}

void nlsr_jobs_unlock_inputs(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++) nlsr_lock_release(fds[i]);
}

static int open_pair(nlsr_ctx *ctx, const char *base, const char *src, nlsr_ckpt **b,
                     nlsr_ckpt **s)
{
    *b = NULL;
    *s = NULL;
    NLSR_FORWARD(nlsr_ckpt_open(ctx, src, s));
    if (base) NLSR_FORWARD(nlsr_ckpt_open(ctx, base, b));
    return 0;
}

/* part_count 0: the whole; else part part_index of part_count (docs/SCALE.md). */
static int prepare_job(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                       const char *out_file, const nlsr_realign_params *p, unsigned part_index,
                       unsigned part_count)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    NLSR_FAIL_IF(!aligned == !reference, e, NLSR_E_USAGE,
                 "prepare needs exactly one of an aligned model and a reference");
    NLSR_FAIL_IF(!out_file, e, NLSR_E_USAGE, "prepare needs an output file");
    const char *srcp = aligned ? aligned : reference;
    int is_ref = aligned == NULL;
    nlsr_ckpt *B = NULL, *S = NULL;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "prepare", "full");
    rep.has_selection = 0;
    int audit = nlsr_audit_begin(ctx, p);
    const char *inputs[2] = {base, srcp};
    int locks[2];
    int rc = nlsr_jobs_lock_inputs(ctx, inputs, 2, locks);
    if (rc == 0) rc = open_pair(ctx, base, srcp, &B, &S);
    if (rc < 0) goto done;
    nlsr_audit_input_ckpt(ctx, "base", base, B);
    nlsr_audit_input_ckpt(ctx, is_ref ? "reference" : "aligned", srcp, S);
    nlsr_audit_output(ctx, "patches", out_file, 0);
    if (nlsr_ckpt_get_kind(S) == NLSR_CKPT_PEFT) {
        /* LoRA: the base is the zero adapter; a given base is not needed. */
        rc = check_out_file(ctx, out_file, p, base, srcp, NULL);
        if (rc == 0 && part_count)
            rc = nlsr_fail(e, NLSR_E_USAGE, "%s is a PEFT adapter: adapters are prepared whole "
                           "(--part is for full checkpoints)", srcp);
#ifdef NLSR_HAVE_LORA
        if (rc == 0) rc = nlsr_lora_prepare(ctx, S, is_ref, out_file, p);
#else
        if (rc == 0) rc = lora_missing(ctx, srcp);
#endif
        goto done;
    }
    if (!B) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "full checkpoints need the base model (--base)");
        goto done;
    }
    if (nlsr_ckpt_get_kind(B) != NLSR_CKPT_FULL) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "base %s is a PEFT adapter but %s %s is a full checkpoint",
                       base, is_ref ? "reference" : "aligned", srcp);
        goto done;
    }
    rc = nlsr_full_check_sources(ctx, B, S, is_ref, p);
    if (rc == 0) rc = check_out_file(ctx, out_file, p, base, srcp, NULL);
    if (rc == 0) rc = nlsr_full_prepare_part(ctx, B, S, is_ref, out_file, p, NULL, part_index,
                                             part_count, &rep);
    if (rc == 0) rc = nlsr_report_emit(&rep, ctx, p);
done:
    nlsr_jobs_unlock_inputs(locks, 2);
    nlsr_audit_end(ctx, audit);
    nlsr_report_free(&rep);
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(S);
    return rc;
}

int nlsr_prepare(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                 const char *out_file, const nlsr_realign_params *p)
{
    int entered = nlsr_job_enter(ctx, "prepare");
    int rc = prepare_job(ctx, base, aligned, reference, out_file, p, 0, 0);
    nlsr_job_leave(ctx, entered);
    return rc;
}

int nlsr_prepare_part(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                      const char *out_file, const nlsr_realign_params *p, unsigned index,
                      unsigned count)
{
    NLSR_FAIL_IF(count == 0 || index >= count, &ctx->err, NLSR_E_USAGE,
                 "part %u of %u does not exist (parts count from 0)", index, count);
    int entered = nlsr_job_enter(ctx, "prepare");
    int rc = prepare_job(ctx, base, aligned, reference, out_file, p, index, count);
    nlsr_job_leave(ctx, entered);
    return rc;
}

/* Step 3 of a full patch file into out_dir; shared by apply and run. `rep` gets the modules. */
static int apply_full(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *T, const char *tmp,
                      const nlsr_realign_params *p, nlsr_report *rep, nlsr_realign_params *used,
                      const char ***names)
{
    *used = *p;
    NLSR_FORWARD(nlsr_full_patch_params(ctx, pf, used, names));
    NLSR_FORWARD(nlsr_full_check_patch(ctx, pf, T, used));
    return nlsr_full_apply(ctx, pf, T, tmp, used, NULL, rep);
}

static int apply_job(nlsr_ctx *ctx, const char *patches, const char *finetuned, const char *out_dir,
               const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    NLSR_FAIL_IF(!patches || !finetuned || !out_dir, e, NLSR_E_USAGE,
                 "apply needs a patch file, a fine-tuned model and an output folder");
    nlsr_pf_reader *pf = NULL;
    nlsr_ckpt *T = NULL;
    char *tmp = NULL;
    const char **names = NULL;
    nlsr_realign_params used = *p;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "apply", "full");
    int audit = nlsr_audit_begin(ctx, p);
    const char *inputs[2] = {patches, finetuned};
    int locks[2];
    int rc = nlsr_jobs_lock_inputs(ctx, inputs, 2, locks);
    if (rc == 0) rc = nlsr_pf_open(ctx, patches, &pf);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, finetuned, &T);
    if (rc == 0) rc = nlsr_journal_check_input(ctx, finetuned);
    /* What the output folder will hold beside the weights (src/io/sidefiles.h). */
    if (rc == 0) rc = nlsr_sidefiles_load(ctx, T, p->drop_other_weights, 0, &rep.files);
    if (rc < 0) goto done;
    nlsr_audit_input_file(ctx, "patches", patches);
    nlsr_audit_input_ckpt(ctx, "finetuned", finetuned, T);
    nlsr_audit_output(ctx, "out", out_dir, 0);
    if (strcmp(pf->kind, "lora") == 0) {
        nlsr_pf_close(pf);
        pf = NULL;
        rc = check_out_dir(ctx, out_dir, p, patches, finetuned, NULL);
#ifdef NLSR_HAVE_LORA
        if (rc == 0) rc = nlsr_lora_apply(ctx, patches, T, out_dir, p);
#else
        if (rc == 0) rc = lora_missing(ctx, patches);
#endif
        goto done;
    }
    if (nlsr_ckpt_get_kind(T) != NLSR_CKPT_FULL) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH,
                       "patch file %s holds full-weight patches but finetuned %s is a PEFT adapter",
                       patches, finetuned);
        goto done;
    }
    used = *p;
    rc = nlsr_full_patch_params(ctx, pf, &used, &names);
    if (rc == 0) rc = nlsr_full_check_patch(ctx, pf, T, &used);
    if (rc == 0) rc = check_out_dir(ctx, out_dir, p, patches, finetuned, NULL);
    if (rc == 0) rc = nlsr_outdir_begin(ctx, out_dir, p->force, &tmp);
    if (rc == 0) nlsr_audit_output_at(ctx, out_dir, tmp);
    if (rc == 0) rc = nlsr_full_apply(ctx, pf, T, tmp, &used, NULL, &rep);
    if (rc == 0) rc = nlsr_report_stage(&rep, ctx, &used);
    if (rc == 0) rc = nlsr_outdir_commit(ctx, tmp, out_dir, p->force);
    if (rc == 0) {
        free(tmp);
        tmp = NULL;
        rc = nlsr_report_emit(&rep, ctx, &used);
    }
done:
    nlsr_jobs_unlock_inputs(locks, 2);
    nlsr_audit_end(ctx, audit);
    nlsr_outdir_abort(tmp);
    free(tmp);
    free(names);
    nlsr_report_free(&rep);
    nlsr_pf_close(pf);
    nlsr_ckpt_free(T);
    return rc;
}

int nlsr_apply(nlsr_ctx *ctx, const char *patches, const char *finetuned, const char *out_dir,
               const nlsr_realign_params *p)
{
    int entered = nlsr_job_enter(ctx, "apply");
    int rc = apply_job(ctx, patches, finetuned, out_dir, p);
    nlsr_job_leave(ctx, entered);
    return rc;
}

static int run_job(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
             const char *finetuned, const char *out_dir, const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    NLSR_FAIL_IF(!aligned == !reference, e, NLSR_E_USAGE,
                 "run needs exactly one of an aligned model and a reference");
    NLSR_FAIL_IF(!finetuned || !out_dir, e, NLSR_E_USAGE,
                 "run needs a fine-tuned model and an output folder");
    const char *srcp = aligned ? aligned : reference;
    int is_ref = aligned == NULL;
    nlsr_ckpt *B = NULL, *S = NULL, *T = NULL;
    nlsr_pf_reader *pf = NULL;
    char *tmp = NULL, *patch = NULL;
    const char **names = NULL;
    nlsr_realign_params used = *p;
    nlsr_report rep, prep_rep;
    nlsr_report_init(&rep, ctx, "run", "full");
    nlsr_report_init(&prep_rep, ctx, "prepare", "full");
    int audit = nlsr_audit_begin(ctx, p);
    const char *inputs[3] = {base, srcp, finetuned};
    int locks[3];
    int rc = nlsr_jobs_lock_inputs(ctx, inputs, 3, locks);
    if (rc == 0) rc = open_pair(ctx, base, srcp, &B, &S);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, finetuned, &T);
    if (rc == 0) rc = nlsr_journal_check_input(ctx, finetuned);
    /* What the output folder will hold beside the weights (src/io/sidefiles.h). */
    if (rc == 0) rc = nlsr_sidefiles_load(ctx, T, p->drop_other_weights, 0, &rep.files);
    if (rc < 0) goto done;
    nlsr_audit_input_ckpt(ctx, "base", base, B);
    nlsr_audit_input_ckpt(ctx, is_ref ? "reference" : "aligned", srcp, S);
    nlsr_audit_input_ckpt(ctx, "finetuned", finetuned, T);
    nlsr_audit_output(ctx, "out", out_dir, 0);
    int s_peft = nlsr_ckpt_get_kind(S) == NLSR_CKPT_PEFT;
    if (s_peft != (nlsr_ckpt_get_kind(T) == NLSR_CKPT_PEFT)) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s %s is %s but finetuned %s is %s",
                       is_ref ? "reference" : "aligned", srcp,
                       s_peft ? "a PEFT adapter" : "a full checkpoint", finetuned,
                       s_peft ? "a full checkpoint" : "a PEFT adapter");
        goto done;
    }
    if (s_peft) {
        rc = check_out_dir(ctx, out_dir, p, base, srcp, finetuned);
#ifdef NLSR_HAVE_LORA
        if (rc == 0) rc = nlsr_lora_run(ctx, S, is_ref, T, out_dir, p);
#else
        if (rc == 0) rc = lora_missing(ctx, srcp);
#endif
        goto done;
    }
    if (!B) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "full checkpoints need the base model (--base)");
        goto done;
    }
    if (nlsr_ckpt_get_kind(B) != NLSR_CKPT_FULL) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "base %s is a PEFT adapter but finetuned %s is not",
                       base, finetuned);
        goto done;
    }
    /* Everything a header can tell is checked before the temporary folder exists. */
    rc = nlsr_full_check_sources(ctx, B, S, is_ref, p);
    if (rc == 0) rc = nlsr_full_check_finetuned(ctx, S, T, p);
    if (rc == 0) rc = check_out_dir(ctx, out_dir, p, base, srcp, finetuned);
    if (rc == 0) rc = nlsr_outdir_begin(ctx, out_dir, p->force, &tmp);
    if (rc == 0) nlsr_audit_output_at(ctx, out_dir, tmp);
    if (rc == 0) rc = nlsr_scorer_check_params(ctx, &p->scorer);
    if (rc < 0) goto done;
    /* The single pass when the budget holds two whole modules, in row blocks when it holds
     * less; prepare + apply through a temporary patch file for other scorers
     * (nlsr_full_run_choose; NLSR_RUN_PLAN forces one in test builds). */
    nlsr_run_plan rp;
    int flags = 0;
    rc = nlsr_full_run_plan(ctx, B, S, T, p, &rp);
    int single = rc == 0 ? nlsr_full_run_choose(ctx, &rp, p, &flags) : rc;
    if (single < 0) rc = single;
    if (rc < 0) goto done;
    /* What the single pass would need, for the summary's hint (magnitude rule only). */
    if (p->scorer.kind == NLSR_SCORER_MAGNITUDE) rep.summary.single_pass_need = rp.need_bytes;
    if (single && p->scorer.kind == NLSR_SCORER_MAGNITUDE) {
        rc = nlsr_full_run(ctx, B, S, is_ref, T, tmp, p, flags, &rep);
        if (rc == 0) rc = nlsr_report_stage(&rep, ctx, p);
        if (rc == 0) rc = nlsr_outdir_commit(ctx, tmp, out_dir, p->force);
        if (rc == 0) {
            free(tmp);
            tmp = NULL;
            rc = nlsr_report_emit(&rep, ctx, p);
        }
        goto done;
    }
    if (!(patch = nlsr_path_join(tmp, RUN_PATCH_NAME)))
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
    if (rc == 0) rc = nlsr_full_prepare(ctx, B, S, is_ref, patch, p, NULL, &prep_rep);
    if (rc == 0) rc = nlsr_pf_open(ctx, patch, &pf);
    if (rc == 0) rc = apply_full(ctx, pf, T, tmp, p, &rep, &used, &names);
    /* The patch file goes before the rename; pf stays open because `used` points into its
     * header (the targets) until the report is out. */
    if (patch) unlink(patch);
    if (rc == 0) {
        rep.summary.patch_bytes = prep_rep.summary.patch_bytes;
        rep.summary.module_passes = prep_rep.summary.module_passes;
        rep.summary.module_disk_passes = prep_rep.summary.module_disk_passes;
        rep.summary.model_bytes = prep_rep.summary.model_bytes;
        rep.summary.plan = "patch file";
        rc = nlsr_report_stage(&rep, ctx, &used);
    }
    if (rc == 0) rc = nlsr_outdir_commit(ctx, tmp, out_dir, p->force);
    if (rc == 0) {
        free(tmp);
        tmp = NULL;
        rc = nlsr_report_emit(&rep, ctx, &used);
    }
done:
    nlsr_jobs_unlock_inputs(locks, 3);
    nlsr_audit_end(ctx, audit);
    nlsr_outdir_abort(tmp);
    free(tmp);
    free(patch);
    free(names);
    nlsr_report_free(&rep);
    nlsr_report_free(&prep_rep);
    nlsr_pf_close(pf);
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(S);
    nlsr_ckpt_free(T);
    return rc;
}

int nlsr_run(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
             const char *finetuned, const char *out_dir, const nlsr_realign_params *p)
{
    int entered = nlsr_job_enter(ctx, "run");
    int rc = run_job(ctx, base, aligned, reference, finetuned, out_dir, p);
    nlsr_job_leave(ctx, entered);
    return rc;
}
