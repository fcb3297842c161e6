/* SPDX-License-Identifier: Apache-2.0 */
/* nlsr_run_part: the map of a run-based split job (docs/SCALE.md "One model split by module
 * ranges, with the fine-tune"). Part I of N prepares the modules of its share exactly as
 * prepare --part does (into a staging file beside the output), then computes each of their
 * similarities against the fine-tune with apply's own pass 1 (nlsr_full_similarities: the same
 * arithmetic in the same order, so the doubles are the bits apply computes) and hashes the
 * fine-tune's modules as it reads them. The part file is the staging file's modules copied
 * through the writer (the bytes prepare --part writes) with the header's "finetuned" record
 * added (split_select.c). nlsr_reduce then makes the selection once over every module. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nlsr.h"
#include "../common/ctx.h"
#include "../common/err.h"
#include "../common/log.h"
#include "../common/params.h"
#include "../io/journal.h"
#include "../io/outpath.h"
#include "../io/patchfile.h"
#include "audit.h"
#include "realign_full.h"
#include "report.h"
#include "split.h"

/* The part file: the staging file's header items and modules, and the "finetuned" record. */
static int write_part(nlsr_ctx *ctx, nlsr_pf_reader *pf, const nlsr_ckpt *T,
                      const nlsr_realign_params *p, const nlsr_report *rep,
                      const uint64_t *hash, const char *out_file)
{
    nlsr_err *e = &ctx->err;
    nlsr_split_sel sel;
    NLSR_FAIL_IF(nlsr_split_sel_alloc(&sel, pf->nmodules) < 0, e, -ENOMEM, "out of memory");
    nlsr_xxh64_state fp;
    nlsr_xxh64_init(&fp, 0);
    for (size_t i = 0; i < pf->nmodules; i++) {
        sel.fp[i] = hash[i];
        sel.sim[i] = rep->m[i].similarity;
        nlsr_full_fp_add_module(&fp, hash[i]);
    }
    sel.sp = p->select;
    int rc = 0;
    cJSON *extra = cJSON_CreateObject(), *ft = nlsr_full_source_json(T, &fp);
    static const char *const keys[] = {"params", "sources", "model", "part"};
    for (size_t k = 0; extra && k < sizeof keys / sizeof keys[0]; k++) {
        cJSON *d = nlsr_split_header_dup(cJSON_GetObjectItemCaseSensitive(pf->header, keys[k]));
        if (!d) {
            cJSON_Delete(extra);
            extra = NULL;
        } else {
            cJSON_AddItemToObject(extra, keys[k], d);
        }
    }
    if (!extra || !ft || nlsr_split_sel_json(ft, &sel) < 0) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory building the part's header");
    } else {
        cJSON_AddItemToObject(extra, "finetuned", ft);
        ft = NULL;
    }
    nlsr_split_sel_free(&sel);
    cJSON_Delete(ft);
    nlsr_pf_writer *w = NULL;
    if (rc == 0) rc = nlsr_pf_writer_open(ctx, out_file, "full", &w);
    for (size_t m = 0; m < pf->nmodules && rc == 0; m++)
        rc = nlsr_split_copy_module(w, pf, &pf->modules[m]);
    if (rc == 0) {
        rc = nlsr_pf_writer_commit(w, extra, NULL);
        w = NULL;
    }
    nlsr_pf_writer_abort(w);
    cJSON_Delete(extra);
    return rc;
}

/* 1 when out_file is already this part of this job: complete, every block verifying, the part
 * index/count's, a run part (a prepare part at the path is not one) of this fine-tune's folder
 * and of these selection options. A requeued or repeated map keeps it. */
static int part_done(nlsr_ctx *ctx, const char *out_file, unsigned index, unsigned count,
                     const nlsr_ckpt *T, const nlsr_realign_params *p)
{
    int v = nlsr_patches_verify(ctx, out_file, (int)index, count);
    if (v != 1) return v;
    nlsr_ctx *c = nlsr_ctx_create(); /* a file that is not this part is redone, no error */
    if (!c) return nlsr_fail(&ctx->err, -ENOMEM, "out of memory");
    nlsr_pf_reader *r = NULL;
    int done = 0;
    if (nlsr_pf_open(c, out_file, &r) == 0) {
        const cJSON *ft = cJSON_GetObjectItemCaseSensitive(r->header, "finetuned");
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(ft, "path");
        char *abs = realpath(T->path, NULL);
        nlsr_split_sel s;
        done = cJSON_IsString(path) && abs && strcmp(path->valuestring, abs) == 0 &&
               nlsr_split_sel_read(c, r, &s) == 1;
        if (done) {
            done = !s.has_selection && s.sp.mode == p->select.mode &&
                   s.sp.semantics == p->select.semantics &&
                   s.sp.prune_rate == p->select.prune_rate &&
                   s.sp.epsilon == p->select.epsilon && s.sp.tau == p->select.tau &&
                   s.sp.seed == p->select.seed;
            nlsr_split_sel_free(&s);
        }
        free(abs);
    }
    nlsr_pf_close(r);
    nlsr_ctx_free(c);
    return done;
}

static int run_part_job(nlsr_ctx *ctx, const char *base, const char *aligned,
                        const char *reference, const char *finetuned, const char *out_file,
                        const nlsr_realign_params *p, unsigned index, unsigned count)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    NLSR_FAIL_IF(!aligned == !reference, e, NLSR_E_USAGE,
                 "run --part needs exactly one of an aligned model and a reference");
    NLSR_FAIL_IF(!base || !finetuned || !out_file, e, NLSR_E_USAGE,
                 "run --part needs the base, the fine-tuned model and an output file");
    const char *srcp = aligned ? aligned : reference;
    int is_ref = aligned == NULL;
    nlsr_ckpt *B = NULL, *S = NULL, *T = NULL;
    nlsr_pf_reader *pf = NULL;
    char *stage = NULL;
    uint64_t *hash = NULL;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "run", "full");
    rep.has_selection = 0; /* a part's report: similarities, no selection (the reduce's) */
    int audit = nlsr_audit_begin(ctx, p);
    const char *inputs[3] = {base, srcp, finetuned};
    int locks[3];
    int rc = nlsr_jobs_lock_inputs(ctx, inputs, 3, locks);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, base, &B);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, srcp, &S);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, finetuned, &T);
    if (rc == 0) rc = nlsr_journal_check_input(ctx, finetuned);
    if (rc < 0) goto done;
    nlsr_audit_input_ckpt(ctx, "base", base, B);
    nlsr_audit_input_ckpt(ctx, is_ref ? "reference" : "aligned", srcp, S);
    nlsr_audit_input_ckpt(ctx, "finetuned", finetuned, T);
    nlsr_audit_output(ctx, "patches", out_file, 0);
    const char *kinds[3] = {base, srcp, finetuned};
    const nlsr_ckpt *ck[3] = {B, S, T};
    for (int i = 0; i < 3 && rc == 0; i++)
        if (nlsr_ckpt_get_kind(ck[i]) != NLSR_CKPT_FULL)
            rc = nlsr_fail(e, NLSR_E_USAGE, "%s is a PEFT adapter: run --part is for full "
                           "checkpoints (an adapter is small: run it whole)", kinds[i]);
    if (rc == 0) rc = nlsr_full_check_sources(ctx, B, S, is_ref, p);
    if (rc == 0) rc = nlsr_full_check_finetuned(ctx, S, T, p);
    int kept = rc == 0 ? part_done(ctx, out_file, index, count, T, p) : 0;
    if (kept < 0) rc = kept;
    if (kept == 1) {
        nlsr_log(ctx, NLSR_LOG_NOTICE, "%s: part %u/%u is already there and verifies; kept",
                 out_file, index, count);
        goto done;
    }
    const char *in[5] = {base, srcp, finetuned, p->scorer.activations, p->mask_path};
    if (rc == 0) rc = nlsr_outputs_check(ctx, out_file, NLSR_OUT_FILE, p, in, 5);
    /* The staging file: prepare --part's own file, under a temporary name beside the output
     * (never taken for a part), removed in every case. */
    int fd = -1;
    if (rc == 0) rc = nlsr_tmp_file(e, out_file, &stage, &fd);
    if (fd >= 0) close(fd);
    if (rc == 0)
        rc = nlsr_full_prepare_part(ctx, B, S, is_ref, stage, p, NULL, index, count, NULL);
    if (rc == 0) rc = nlsr_pf_open(ctx, stage, &pf);
    if (rc == 0 && !(hash = calloc(pf->nmodules ? pf->nmodules : 1, sizeof *hash)))
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
    if (rc == 0) rc = nlsr_full_similarities(ctx, pf, T, p, &rep, hash);
    if (rc == 0) rc = write_part(ctx, pf, T, p, &rep, hash, out_file);
    if (rc == 0) rc = nlsr_report_emit(&rep, ctx, p);
done:
    nlsr_pf_close(pf);
    if (stage) unlink(stage);
    free(stage);
    free(hash);
    nlsr_jobs_unlock_inputs(locks, 3);
    nlsr_audit_end(ctx, audit);
    nlsr_report_free(&rep);
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(S);
    nlsr_ckpt_free(T);
    return rc;
}

int nlsr_run_part(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                  const char *finetuned, const char *out_file, const nlsr_realign_params *p,
                  unsigned index, unsigned count)
{
    NLSR_FAIL_IF(count == 0 || index >= count, &ctx->err, NLSR_E_USAGE,
                 "part %u of %u does not exist (parts count from 0)", index, count);
    int entered = nlsr_job_enter(ctx, "run");
    int rc = run_part_job(ctx, base, aligned, reference, finetuned, out_file, p, index, count);
    nlsr_job_leave(ctx, entered);
    return rc;
}
