/* SPDX-License-Identifier: Apache-2.0 */
/* apply of one model as an array by output shard (docs/SCALE.md "One model's apply by output
 * shard"): nlsr_apply_shard (task I of N) and nlsr_apply_commit.
 *
 * Every task and the commit derive the same shared folder beside the output,
 * <out>.nlsr-split-<tag>, the tag an XXH64 of the job (the patch file's header, the fine-tune's
 * folder and shard list, --drop-other-weights): the first task makes it (nlsr_shared_dir, with
 * nlsr's marker naming the tag), the others take it. Task I owns the fine-tune's shards
 * [S I/N, S (I+1)/N) in shard-name order. It computes every module's similarity and the
 * selection as apply does (the whole fine-tune's target tensors are read: the selection ranks
 * them all), or, from a patch file holding the selection nlsr reduce made of run --part maps,
 * takes that one and reads only the patched modules of its shards (realign_full.c checks them
 * against the recorded hashes), writes its shards into a temporary folder of its own inside
 * the shared one (.nlsr-task.nlsr-tmp-XXXXXX, owner-marked), then per shard: XXH64 of the
 * bytes written, rename to its final name, and a record ".nlsr-shard.<name>.xxh64" holding
 * that hash. A shard whose record is there and whose file reads back to it is verified and
 * skipped: a requeued task redoes only what is not. Every task also writes the selection it computed
 * (.nlsr-selection.json) or, when one is there, checks that it computed the same one.
 *
 * The commit checks that no task is at work (dead tasks' folders are swept), that every shard
 * is there and verifies and nothing else is, copies the side files (index, config, tokenizer),
 * stages the report (from the stored selection), removes the records and renames the folder
 * onto the output (nlsr_tmp_dir_commit: the --force policy of every job). */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nlsr.h"
#include "../common/ctx.h"
#include "../common/err.h"
#include "../common/log.h"
#include "../common/params.h"
#include "../common/testhook.h"
#include "../io/file.h"
#include "../io/journal.h"
#include "../io/outpath.h"
#include "../io/patchfile.h"
#include "../io/sidefiles.h"
#include "audit.h"
#include "realign_full.h"
#include "report.h"
#include "split.h"

#define SPLIT_INFIX ".nlsr-split-"
#define TASK_DIR ".nlsr-task"
#define TASK_TMP_PREFIX ".nlsr-task" NLSR_TMP_INFIX
#define REC_PREFIX ".nlsr-shard."
#define REC_SUFFIX ".xxh64"
#define SELECTION_NAME ".nlsr-selection.json"

/* What a shard task and the commit both open and check. */
typedef struct split_job {
    nlsr_pf_reader *pf;
    nlsr_ckpt *T;
    nlsr_realign_params used; /* the patch file's parameters over the caller's */
    const char **names;
    char *shared;             /* <out resolved>.nlsr-split-<tag> */
    char tag[17];
    int locks[2];
} split_job;

static void job_free(split_job *J)
{
    nlsr_jobs_unlock_inputs(J->locks, 2);
    free(J->names);
    free(J->shared);
    nlsr_pf_close(J->pf);
    nlsr_ckpt_free(J->T);
}

/* The job's tag: what every task must agree on for their shards to make one output. */
static int job_tag(nlsr_ctx *ctx, split_job *J, const nlsr_realign_params *p)
{
    char *hdr = cJSON_PrintUnformatted(J->pf->header);
    NLSR_FAIL_IF(!hdr, &ctx->err, -ENOMEM, "out of memory");
    nlsr_xxh64_state h;
    nlsr_xxh64_init(&h, 0);
    nlsr_xxh64_update(&h, hdr, strlen(hdr) + 1);
    free(hdr);
    const char *dir = J->T->resolved ? J->T->resolved : J->T->dir;
    char *rdir = dir ? realpath(dir, NULL) : NULL;
    const char *d = rdir ? rdir : (dir ? dir : "");
    nlsr_xxh64_update(&h, d, strlen(d) + 1);
    free(rdir);
    for (size_t k = 0; k < J->T->nshards; k++) {
        uint64_t sz = J->T->shards[k]->file_size;
        nlsr_xxh64_update(&h, J->T->shard_names[k], strlen(J->T->shard_names[k]) + 1);
        nlsr_xxh64_update(&h, &sz, sizeof sz);
    }
    unsigned char drop = (unsigned char)(p->drop_other_weights != 0);
    nlsr_xxh64_update(&h, &drop, 1);
    snprintf(J->tag, sizeof J->tag, "%016" PRIx64, nlsr_xxh64_digest(&h));
    return 0;
}

static int job_open(nlsr_ctx *ctx, const char *patches, const char *finetuned, const char *out,
                    const nlsr_realign_params *p, const char *what, nlsr_report *rep,
                    split_job *J)
{
    nlsr_err *e = &ctx->err;
    memset(J, 0, sizeof *J);
    J->locks[0] = J->locks[1] = -1;
    NLSR_FORWARD(nlsr_params_validate(p, e));
    NLSR_FAIL_IF(!patches || !finetuned || !out, e, NLSR_E_USAGE,
                 "%s needs a patch file, a fine-tuned model and an output folder", what);
    const char *inputs[2] = {patches, finetuned};
    NLSR_FORWARD(nlsr_jobs_lock_inputs(ctx, inputs, 2, J->locks));
    NLSR_FORWARD(nlsr_pf_open(ctx, patches, &J->pf));
    NLSR_FORWARD(nlsr_ckpt_open(ctx, finetuned, &J->T));
    NLSR_FORWARD(nlsr_journal_check_input(ctx, finetuned));
    NLSR_FAIL_IF(strcmp(J->pf->kind, "lora") == 0, e, NLSR_E_USAGE,
                 "%s: %s holds LoRA patches: an adapter is small, apply it whole (no --shard)",
                 what, patches);
    NLSR_FAIL_IF(nlsr_ckpt_get_kind(J->T) != NLSR_CKPT_FULL, e, NLSR_E_MISMATCH,
                 "patch file %s holds full-weight patches but finetuned %s is a PEFT adapter",
                 patches, finetuned);
    NLSR_FORWARD(nlsr_sidefiles_load(ctx, J->T, p->drop_other_weights, 0, &rep->files));
    J->used = *p;
    NLSR_FORWARD(nlsr_full_patch_params(ctx, J->pf, &J->used, &J->names));
    NLSR_FORWARD(nlsr_full_check_patch(ctx, J->pf, J->T, &J->used));
    /* The output's checks as apply's (inputs, links, what sits there and --force). */
    const char *in[4] = {patches, finetuned, p->mask_path, p->scorer.activations};
    NLSR_FORWARD(nlsr_outputs_check(ctx, out, NLSR_OUT_DIR, p, in, 4));
    NLSR_FORWARD(job_tag(ctx, J, p));
    char *abs = NULL;
    NLSR_FORWARD(nlsr_out_resolve(e, out, &abs));
    size_t L = strlen(abs) + sizeof SPLIT_INFIX + sizeof J->tag;
    J->shared = malloc(L);
    if (J->shared) snprintf(J->shared, L, "%s" SPLIT_INFIX "%s", abs, J->tag);
    free(abs);
    NLSR_FAIL_IF(!J->shared, e, -ENOMEM, "out of memory");
    return 0;
}

static char *rec_path(const char *shared, const char *name)
{
    size_t L = strlen(shared) + strlen(name) + sizeof REC_PREFIX + sizeof REC_SUFFIX + 2;
    char *r = malloc(L);
    if (r) snprintf(r, L, "%s/" REC_PREFIX "%s" REC_SUFFIX, shared, name);
    return r;
}

/* 1 when shard `name` is in the shared folder and reads back to its record's hash. */
static int shard_verified(nlsr_ctx *ctx, const char *shared, const char *name)
{
    char *rp = rec_path(shared, name), *sp = nlsr_path_join(shared, name);
    char txt[64] = "";
    FILE *f = rp ? fopen(rp, "re") : NULL;
    if (f) {
        if (!fgets(txt, sizeof txt, f)) txt[0] = '\0';
        fclose(f);
    }
    uint64_t h = 0;
    char hex[20];
    int ok = f && sp && nlsr_file_xxh64(ctx, sp, &h);
    snprintf(hex, sizeof hex, "%016" PRIx64 "\n", h);
    free(rp);
    free(sp);
    return ok && strcmp(hex, txt) == 0;
}

/* The selection as JSON: every module's name, sizes, similarity, draw and decision. */
static char *selection_json(const nlsr_report *rep, const char *tag)
{
    cJSON *root = cJSON_CreateObject(), *mods = cJSON_CreateArray();
    if (!root || !mods) {
        cJSON_Delete(root);
        cJSON_Delete(mods);
        return NULL;
    }
    cJSON_AddStringToObject(root, "split", tag);
    cJSON_AddItemToObject(root, "modules", mods);
    for (size_t i = 0; i < rep->n; i++) {
        const nlsr_report_module *m = &rep->m[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        char num[40];
        cJSON_AddStringToObject(o, "name", m->name);
        cJSON_AddNumberToObject(o, "numel", (double)m->numel);
        cJSON_AddNumberToObject(o, "mask_count", (double)m->mask_count);
        /* The doubles as their exact bits' shortest round trip, so the commit's report is the
         * tasks' own. */
        const double v[3] = {m->similarity, m->probability, m->draw};
        const char *k[3] = {"similarity", "probability", "draw"};
        for (int j = 0; j < 3; j++) {
            if (isnan(v[j])) cJSON_AddNullToObject(o, k[j]);
            else {
                snprintf(num, sizeof num, "%a", v[j]);
                cJSON_AddStringToObject(o, k[j], num);
            }
        }
        cJSON_AddBoolToObject(o, "patched", m->patched);
        cJSON_AddItemToArray(mods, o);
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    return txt;
}

static int read_small(const char *path, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "re");
    if (!f) return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (256 << 20))
        rc = -EINVAL;
    char *t = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (rc == 0 && !t) rc = -ENOMEM;
    size_t n = t ? fread(t, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (rc < 0) return rc;
    t[n] = '\0';
    *out = t;
    return 0;
}

/* Writes the selection, or checks that the one another task wrote is this one. */
static int selection_store(nlsr_ctx *ctx, const split_job *J, const nlsr_report *rep)
{
    nlsr_err *e = &ctx->err;
    char *txt = selection_json(rep, J->tag);
    NLSR_FAIL_IF(!txt, e, -ENOMEM, "out of memory");
    char *path = nlsr_path_join(J->shared, SELECTION_NAME), *tmp = NULL, *have = NULL;
    int fd = -1, rc = path ? 0 : nlsr_fail(e, -ENOMEM, "out of memory");
    if (rc == 0 && access(path, F_OK) != 0) {
        rc = nlsr_tmp_file(e, path, &tmp, &fd);
        if (rc == 0) rc = nlsr_pwrite_all(fd, txt, strlen(txt), 0, tmp, e);
        if (rc == 0 && fsync(fd) != 0) rc = nlsr_fail(e, -errno, "%s: fsync failed", tmp);
        if (fd >= 0) close(fd);
        if (rc == 0) rc = nlsr_tmp_file_commit(e, tmp, path, 0);
        if (rc == 0) goto done;
        if (rc != NLSR_E_EXISTS) goto done;
        nlsr_ctx_clear_error(ctx); /* another task wrote it meanwhile: compare */
        rc = 0;
        unlink(tmp);
    }
    if (rc == 0 && read_small(path, &have) != 0)
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: cannot read the stored selection", path);
    if (rc == 0 && strcmp(have, txt) != 0)
        rc = nlsr_fail(e, NLSR_E_MISMATCH,
                       "%s: another task of this job selected other modules: an input or the "
                       "selection options changed while the job ran (remove %s and run every "
                       "task again)",
                       path, J->shared);
done:
    if (tmp && rc < 0) unlink(tmp);
    free(tmp);
    free(have);
    free(path);
    free(txt);
    return rc;
}

/* The stored selection into the commit's report. */
static int selection_load(nlsr_ctx *ctx, const split_job *J, nlsr_report *rep)
{
    nlsr_err *e = &ctx->err;
    char *path = nlsr_path_join(J->shared, SELECTION_NAME), *txt = NULL;
    NLSR_FAIL_IF(!path, e, -ENOMEM, "out of memory");
    int rc = read_small(path, &txt) == 0 ? 0
             : nlsr_fail(e, NLSR_E_NOTFOUND, "%s: missing: no shard task finished", path);
    cJSON *root = txt ? cJSON_Parse(txt) : NULL;
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(root, "modules"), *o;
    if (rc == 0 && (!cJSON_IsArray(mods) || (size_t)cJSON_GetArraySize(mods) != J->pf->nmodules))
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: not a selection of the %zu modules of %s", path,
                       J->pf->nmodules, J->pf->path);
    size_t i = 0;
    cJSON_ArrayForEach(o, mods)
    {
        if (rc < 0) break;
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(o, "name");
        if (!cJSON_IsString(nm) || strcmp(nm->valuestring, J->pf->modules[i].name) != 0) {
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: module %zu is not %s", path, i,
                           J->pf->modules[i].name);
            break;
        }
        const nlsr_pf_tensor *pt = &J->pf->modules[i].t[0];
        size_t idx;
        rc = nlsr_report_add(rep, ctx, nm->valuestring, pt->numel, pt->mask_count, &idx);
        const char *k[3] = {"similarity", "probability", "draw"};
        double *dst[3] = {&rep->m[idx].similarity, &rep->m[idx].probability, &rep->m[idx].draw};
        for (int j = 0; j < 3 && rc == 0; j++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k[j]);
            *dst[j] = cJSON_IsString(v) ? strtod(v->valuestring, NULL) : NAN;
        }
        if (rc == 0) rep->m[idx].patched = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "patched"));
        i++;
    }
    cJSON_Delete(root);
    free(txt);
    free(path);
    return rc;
}

/* Moves a written shard from the task's folder into the shared one, then its record. */
static int shard_publish(nlsr_ctx *ctx, const split_job *J, const char *task_dir, const char *name)
{
    nlsr_err *e = &ctx->err;
    char *src = nlsr_path_join(task_dir, name), *dst = nlsr_path_join(J->shared, name);
    char *rp = rec_path(J->shared, name), *tmp = NULL;
    int fd = -1, rc = src && dst && rp ? 0 : nlsr_fail(e, -ENOMEM, "out of memory");
    uint64_t h = 0;
    if (rc == 0 && !nlsr_file_xxh64(ctx, src, &h))
        rc = nlsr_fail(e, -EIO, "%s: cannot read back what was written", src);
    /* A stale record first: the shard under its name is then never paired with an old hash. */
    if (rc == 0) unlink(rp);
    if (rc == 0 && rename(src, dst) != 0)
        rc = nlsr_fail(e, -errno, "%s: rename to %s failed: %s", src, dst, strerror(errno));
    if (rc == 0) rc = nlsr_fsync_dir(J->shared, e);
    char line[20];
    snprintf(line, sizeof line, "%016" PRIx64 "\n", h);
    if (rc == 0) rc = nlsr_tmp_file(e, rp, &tmp, &fd);
    if (rc == 0) rc = nlsr_pwrite_all(fd, line, strlen(line), 0, tmp, e);
    if (rc == 0 && fsync(fd) != 0) rc = nlsr_fail(e, -errno, "%s: fsync failed", tmp);
    if (fd >= 0) close(fd);
    if (rc == 0) rc = nlsr_tmp_file_commit(e, tmp, rp, 1);
    if (tmp && rc < 0) unlink(tmp);
    free(tmp);
    free(src);
    free(dst);
    free(rp);
    return rc;
}

static int shard_job(nlsr_ctx *ctx, const char *patches, const char *finetuned, const char *out,
                     const nlsr_realign_params *p0, unsigned index, unsigned count)
{
    nlsr_err *e = &ctx->err;
    /* The report is the commit's: a task's would cover a share of the output only. */
    nlsr_realign_params p = *p0;
    p.report_path = NULL;
    p.json_stdout = 0;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "apply", "full");
    split_job J;
    char *task_dir = NULL;
    unsigned char *mine = NULL;
    int rc = job_open(ctx, patches, finetuned, out, &p, "apply --shard", &rep, &J);
    size_t S = J.T ? J.T->nshards : 0;
    size_t lo = (size_t)((uint64_t)S * index / count), hi = (size_t)((uint64_t)S * (index + 1) / count);
    if (rc == 0 && lo == hi) {
        nlsr_log(ctx, NLSR_LOG_NOTICE, "task %u/%u: %s has %zu shard%s, none is this task's",
                 index, count, finetuned, S, S == 1 ? "" : "s");
        goto done;
    }
    if (rc == 0) rc = nlsr_shared_dir(ctx, J.shared, J.tag, 1, NULL);
    if (rc == 0 && !(mine = calloc(S ? S : 1, 1))) rc = nlsr_fail(e, -ENOMEM, "out of memory");
    size_t todo = 0;
    for (size_t k = lo; k < hi && rc == 0; k++)
        if (!shard_verified(ctx, J.shared, J.T->shard_names[k])) {
            mine[k] = 1;
            todo++;
        }
    if (rc == 0 && todo == 0) {
        nlsr_log(ctx, NLSR_LOG_NOTICE, "task %u/%u: its %zu shard%s in %s verif%s; kept", index,
                 count, hi - lo, hi - lo == 1 ? "" : "s", J.shared, hi - lo == 1 ? "ies" : "y");
        goto done;
    }
    if (rc < 0) goto done;
    /* Its own temporary folder (owner-marked): what a stopped task leaves is never taken for
     * a shard, and a dead one's is swept by the next task or the commit. */
    char *base = nlsr_path_join(J.shared, TASK_DIR);
    rc = base ? nlsr_tmp_dir(ctx, base, &task_dir) : nlsr_fail(e, -ENOMEM, "out of memory");
    free(base);
    if (rc == 0) rc = nlsr_full_apply_shards(ctx, J.pf, J.T, task_dir, &J.used, mine, &rep);
    if (rc == 0) rc = selection_store(ctx, &J, &rep);
    nlsr_test_point("shard"); /* its shards written, none published yet */
    for (size_t k = lo; k < hi && rc == 0; k++) {
        if (!mine[k]) continue;
        rc = nlsr_ctx_check_cancel(ctx);
        if (rc == 0) rc = shard_publish(ctx, &J, task_dir, J.T->shard_names[k]);
    }
    if (rc == 0)
        nlsr_log(ctx, NLSR_LOG_INFO, "task %u/%u: %zu of shards %zu-%zu written into %s", index,
                 count, todo, lo, hi - 1, J.shared);
done:
    nlsr_outdir_abort(task_dir);
    free(task_dir);
    free(mine);
    job_free(&J);
    nlsr_report_free(&rep);
    return rc;
}

/* 1: the name of an entry a task or the commit itself writes into the shared folder. */
static int is_shard(const nlsr_ckpt *T, const char *name)
{
    for (size_t k = 0; k < T->nshards; k++)
        if (strcmp(T->shard_names[k], name) == 0) return 1;
    return 0;
}

/* The shared folder's entries before the commit: refuses a task at work or leftovers of a dead
 * one elsewhere, records or weight files that are no shard of T; removes what an earlier
 * commit attempt copied (side files). */
static int commit_scan(nlsr_ctx *ctx, const split_job *J)
{
    nlsr_err *e = &ctx->err;
    nlsr_tmp_sweep(ctx, J->shared, TASK_TMP_PREFIX);
    DIR *d = opendir(J->shared);
    NLSR_FAIL_IF(!d, e, -errno, "%s: cannot list: %s", J->shared, strerror(errno));
    int rc = 0;
    size_t pl = strlen(REC_PREFIX), sl = strlen(REC_SUFFIX);
    for (struct dirent *de; rc == 0 && (de = readdir(d));) {
        const char *n = de->d_name;
        size_t L = strlen(n);
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strcmp(n, NLSR_MARKER_NAME) == 0 ||
            strcmp(n, SELECTION_NAME) == 0 || is_shard(J->T, n))
            continue;
        if (strncmp(n, TASK_TMP_PREFIX, strlen(TASK_TMP_PREFIX)) == 0) {
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s/%s: a shard task is at work (or was stopped on another host): "
                           "commit when every task has ended (remove it if its task is gone)",
                           J->shared, n);
        } else if (L > pl + sl && strncmp(n, REC_PREFIX, pl) == 0 &&
                   strcmp(n + L - sl, REC_SUFFIX) == 0) {
            char *s = strndup(n + pl, L - pl - sl);
            if (!s) rc = nlsr_fail(e, -ENOMEM, "out of memory");
            else if (!is_shard(J->T, s))
                rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s/%s: a record of a shard %s does not have",
                               J->shared, n, J->T->path);
            free(s);
        } else if (L > 12 && strcmp(n + L - 12, ".safetensors") == 0) {
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s/%s: a weight file that is no shard of %s",
                           J->shared, n, J->T->path);
        } else if (strncmp(n, REC_PREFIX, pl) == 0 || strstr(n, NLSR_TMP_INFIX)) {
            /* a record's or the selection's temporary file: a task at work */
            rc = nlsr_fail(e, NLSR_E_USAGE, "%s/%s: a shard task is at work; commit when every "
                           "task has ended", J->shared, n);
        } else {
            char *path = nlsr_path_join(J->shared, n);
            int r = path ? nlsr_tree_remove(path) : -ENOMEM;
            if (r < 0) rc = nlsr_fail(e, r, "%s: cannot remove what an earlier commit copied: %s",
                                      path ? path : n, strerror(-r));
            free(path);
        }
    }
    closedir(d);
    return rc;
}

static int commit_job(nlsr_ctx *ctx, const char *patches, const char *finetuned, const char *out,
                      const nlsr_realign_params *p)
{
    nlsr_err *e = &ctx->err;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, "apply", "full");
    int audit = nlsr_audit_begin(ctx, p);
    split_job J;
    int rc = job_open(ctx, patches, finetuned, out, p, "apply --commit", &rep, &J);
    if (rc == 0) rc = nlsr_shared_dir(ctx, J.shared, J.tag, 0, NULL);
    if (rc == 0) rc = commit_scan(ctx, &J);
    if (rc < 0) goto done;
    /* Every shard there and verifying: the missing ones named (at most 8). */
    size_t missing = 0;
    char list[600] = "";
    for (size_t k = 0; k < J.T->nshards; k++) {
        if (shard_verified(ctx, J.shared, J.T->shard_names[k])) continue;
        if (missing++ < 8) {
            size_t L = strlen(list);
            snprintf(list + L, sizeof list - L, "%s%s", L ? ", " : "", J.T->shard_names[k]);
        }
    }
    if (missing) {
        rc = nlsr_fail(e, NLSR_E_NOTFOUND,
                       "%s: %zu of %zu shards missing or not verifying (%s%s): run their "
                       "apply --shard tasks again, then commit",
                       J.shared, missing, J.T->nshards, list, missing > 8 ? ", ..." : "");
        goto done;
    }
    nlsr_audit_input_file(ctx, "patches", patches);
    nlsr_audit_input_ckpt(ctx, "finetuned", finetuned, J.T);
    nlsr_audit_output(ctx, "out", out, 0);
    nlsr_audit_output_at(ctx, out, J.shared);
    rc = selection_load(ctx, &J, &rep);
    if (rc == 0) rc = nlsr_sidefiles_copy(ctx, J.T, J.shared, p->drop_other_weights, &rep.files);
    if (rc == 0) rc = nlsr_report_stage(&rep, ctx, &J.used);
    /* The records and the selection go last, just before the rename: a commit stopped before
     * here finds them again. */
    for (size_t k = 0; k < J.T->nshards && rc == 0; k++) {
        char *rp = rec_path(J.shared, J.T->shard_names[k]);
        if (!rp || unlink(rp) != 0) rc = nlsr_fail(e, rp ? -errno : -ENOMEM,
                                                   "%s: cannot remove", rp ? rp : "record");
        free(rp);
    }
    char *sp = rc == 0 ? nlsr_path_join(J.shared, SELECTION_NAME) : NULL;
    if (sp) unlink(sp);
    free(sp);
    if (rc == 0) rc = nlsr_outdir_commit(ctx, J.shared, out, p->force);
    if (rc == 0) rc = nlsr_report_emit(&rep, ctx, &J.used);
done:
    nlsr_audit_end(ctx, audit);
    job_free(&J);
    nlsr_report_free(&rep);
    return rc;
}

int nlsr_apply_shard(nlsr_ctx *ctx, const char *patches, const char *finetuned,
                     const char *out_dir, const nlsr_realign_params *p, unsigned index,
                     unsigned count)
{
    NLSR_FAIL_IF(count == 0 || index >= count, &ctx->err, NLSR_E_USAGE,
                 "shard task %u of %u does not exist (tasks count from 0)", index, count);
    int entered = nlsr_job_enter(ctx, "apply");
    int rc = shard_job(ctx, patches, finetuned, out_dir, p, index, count);
    nlsr_job_leave(ctx, entered);
    return rc;
}

int nlsr_apply_commit(nlsr_ctx *ctx, const char *patches, const char *finetuned,
                      const char *out_dir, const nlsr_realign_params *p)
{
    int entered = nlsr_job_enter(ctx, "apply");
    int rc = commit_job(ctx, patches, finetuned, out_dir, p);
    nlsr_job_leave(ctx, entered);
    return rc;
}
