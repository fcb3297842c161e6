/* SPDX-License-Identifier: Apache-2.0 */
/* nlsr_reduce: the parts of a split prepare (nlsr_prepare_part) put back together, and
 * nlsr_patches_verify, with which a requeued task recognises its finished output. Built on the
 * patch file's reader and writer only (patchfile.h), never on its byte layout: each block is
 * read, checked and decoded, then written again through the writer, which encodes a block from
 * its indices and values alone, so the merged file has the bytes one nlsr_prepare writes.
 * docs/SCALE.md says how the parts are cut and checked. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nlsr.h"
#include "../common/ctx.h"
#include "../common/err.h"
#include "../common/json.h"
#include "../io/outpath.h"
#include "../compute/selection.h"
#include "../io/patchfile.h"
#include "realign_full.h"
#include "split.h"

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* The "part" record of a part file; 0 when it is none or malformed (message in e). */
typedef struct part_info {
    uint64_t index, count, total, first, n;
    const cJSON *fp_base, *fp_src; /* arrays of hex strings, one per module */
    const char *src_role;          /* "aligned" or "reference" */
    const cJSON *ft;               /* a run part's "finetuned" record, NULL for prepare's */
} part_info;

static int read_part(nlsr_err *e, const nlsr_pf_reader *r, part_info *pi)
{
    const cJSON *pt = get(r->header, "part"), *fps;
    NLSR_FAIL_IF(strcmp(r->kind, "full") != 0, e, NLSR_E_USAGE,
                 "%s: a LoRA patch file; only full-weight parts are reduced", r->path);
    NLSR_FAIL_IF(!cJSON_IsObject(pt), e, NLSR_E_USAGE,
                 "%s is not a part of a split prepare (no \"part\" record; it was written by "
                 "prepare without --part)", r->path);
    if (!nlsr_json_get_u64(get(pt, "index"), &pi->index) ||
        !nlsr_json_get_u64(get(pt, "count"), &pi->count) ||
        !nlsr_json_get_u64(get(pt, "modules_total"), &pi->total) ||
        !nlsr_json_get_u64(get(pt, "first"), &pi->first) || pi->count == 0 ||
        pi->index >= pi->count || !cJSON_IsObject(fps = get(pt, "module_fingerprints")))
        return nlsr_fail(e, NLSR_E_FORMAT, "%s: malformed \"part\" record", r->path);
    pi->n = r->nmodules;
    pi->ft = get(r->header, "finetuned");
    pi->fp_base = get(fps, "base");
    pi->src_role = get(fps, "aligned") ? "aligned" : "reference";
    pi->fp_src = get(fps, pi->src_role);
    NLSR_FAIL_IF(!cJSON_IsArray(pi->fp_base) || !cJSON_IsArray(pi->fp_src) ||
                     (uint64_t)cJSON_GetArraySize(pi->fp_base) != pi->n ||
                     (uint64_t)cJSON_GetArraySize(pi->fp_src) != pi->n,
                 e, NLSR_E_FORMAT, "%s: the part's module fingerprints do not match its modules",
                 r->path);
    /* The cut every part of a job makes (nlsr_full_prepare): part i holds [M i/N, M (i+1)/N). */
    uint64_t lo = pi->total * pi->index / pi->count, hi = pi->total * (pi->index + 1) / pi->count;
    NLSR_FAIL_IF(pi->first != lo || pi->n != hi - lo, e, NLSR_E_FORMAT,
                 "%s: part %" PRIu64 "/%" PRIu64 " should hold modules %" PRIu64 "..%" PRIu64
                 " of %" PRIu64 ", it holds %" PRIu64 " from %" PRIu64,
                 r->path, pi->index, pi->count, lo, hi, pi->total, pi->n, pi->first);
    return 0;
}

/* The sources' records without what differs between parts (their partial fingerprints). */
static int same_sources(const cJSON *a, const cJSON *b)
{
    cJSON *x = cJSON_Duplicate(a, 1), *y = cJSON_Duplicate(b, 1);
    int same = 0;
    if (x && y) {
        for (cJSON *s = x->child; s; s = s->next) cJSON_DeleteItemFromObject(s, "fingerprint");
        for (cJSON *s = y->child; s; s = s->next) cJSON_DeleteItemFromObject(s, "fingerprint");
        same = cJSON_Compare(x, y, 1);
    }
    cJSON_Delete(x);
    cJSON_Delete(y);
    return same;
}

/* What differs between two run parts' "finetuned" records beyond their modules' own entries:
 * the fine-tune (path, snapshot, tensor count and bytes) or the selection options; NULL when
 * they agree. */
static const char *other_finetune(const cJSON *a, const cJSON *b)
{
    if (!cJSON_Compare(get(a, "select"), get(b, "select"), 1)) return "selection options";
    cJSON *x = cJSON_Duplicate(a, 1), *y = cJSON_Duplicate(b, 1);
    const char *what = "fine-tune (path, snapshot, tensors or bytes)";
    if (x && y) {
        static const char *const own[] = {"fingerprint", "module_fingerprints", "similarities",
                                          "select", "selection"};
        for (size_t k = 0; k < sizeof own / sizeof own[0]; k++) {
            cJSON_DeleteItemFromObjectCaseSensitive(x, own[k]);
            cJSON_DeleteItemFromObjectCaseSensitive(y, own[k]);
        }
        if (cJSON_Compare(x, y, 1)) what = NULL;
    }
    cJSON_Delete(x);
    cJSON_Delete(y);
    return what;
}

/* Numbers that are not integers were written by nlsr_json_number (shortest exact decimal);
 * cJSON's own printing may differ from it, so they are made raw again the same way. */
static int renumber(cJSON *o)
{
    for (cJSON *c = o->child; c; c = c->next) {
        if (cJSON_IsNumber(c) && c->valuedouble != floor(c->valuedouble)) {
            cJSON *n = nlsr_json_number(c->valuedouble);
            /* In an object the replacement needs the key; arrays hold none. */
            int ok = n && (c->string ? cJSON_ReplaceItemInObjectCaseSensitive(o, c->string, n)
                                     : cJSON_ReplaceItemViaPointer(o, c, n));
            if (!ok) {
                cJSON_Delete(n);
                return -1;
            }
            c = n;
        } else if (renumber(c) < 0) {
            return -1;
        }
    }
    return 0;
}

cJSON *nlsr_split_header_dup(const cJSON *item)
{
    cJSON *d = cJSON_Duplicate(item, 1);
    if (d && renumber(d) < 0) {
        cJSON_Delete(d);
        d = NULL;
    }
    return d;
}

static int hex_u64(const cJSON *s, uint64_t *v)
{
    if (!cJSON_IsString(s) || strlen(s->valuestring) != 16) return 0;
    char *end;
    errno = 0;
    *v = strtoull(s->valuestring, &end, 16);
    return *end == '\0' && errno == 0;
}

/* The header items nlsr_full_prepare gives the writer (params, sources, model), from part 0,
 * with the whole model's fingerprints. */
static cJSON *merged_extra(nlsr_err *e, nlsr_pf_reader *const *r, const part_info *pi, size_t n)
{
    nlsr_xxh64_state hb, hs;
    nlsr_xxh64_init(&hb, 0);
    nlsr_xxh64_init(&hs, 0);
    for (size_t i = 0; i < n; i++)
        for (uint64_t m = 0; m < pi[i].n; m++) {
            uint64_t vb, vs;
            if (!hex_u64(cJSON_GetArrayItem(pi[i].fp_base, (int)m), &vb) ||
                !hex_u64(cJSON_GetArrayItem(pi[i].fp_src, (int)m), &vs)) {
                nlsr_fail(e, NLSR_E_FORMAT, "%s: a module fingerprint is not 16 hex digits",
                          r[i]->path);
                return NULL;
            }
            nlsr_full_fp_add_module(&hb, vb);
            nlsr_full_fp_add_module(&hs, vs);
        }
    cJSON *x = cJSON_CreateObject();
    const char *keys[3] = {"params", "sources", "model"};
    for (int k = 0; x && k < 3; k++) {
        cJSON *d = cJSON_Duplicate(get(r[0]->header, keys[k]), 1);
        if (!d || renumber(d) < 0) {
            cJSON_Delete(d);
            cJSON_Delete(x);
            x = NULL;
            break;
        }
        cJSON_AddItemToObject(x, keys[k], d);
    }
    cJSON *src = x ? cJSON_GetObjectItemCaseSensitive(x, "sources") : NULL;
    for (int k = 0; src && k < 2; k++) {
        cJSON *s = cJSON_GetObjectItemCaseSensitive(src, k ? pi[0].src_role : "base");
        char hex[32];
        snprintf(hex, sizeof hex, "xxh64:%016" PRIx64, nlsr_xxh64_digest(k ? &hs : &hb));
        if (!s || !cJSON_ReplaceItemInObjectCaseSensitive(s, "fingerprint", cJSON_CreateString(hex))) {
            cJSON_Delete(x);
            x = NULL;
            break;
        }
    }
    if (!x) nlsr_fail(e, -ENOMEM, "out of memory building the merged header");
    return x;
}

int nlsr_split_copy_module(nlsr_pf_writer *w, nlsr_pf_reader *r, const nlsr_pf_module *m)
{
    NLSR_FORWARD(nlsr_pf_writer_begin_module(w, m->name));
    for (size_t t = 0; t < m->ntensors; t++) {
        const nlsr_pf_tensor *pt = &m->t[t];
        nlsr_pf_tensor_desc d = {pt->name, pt->role,  pt->ref_dtype, pt->has_base,
                                 pt->base_dtype, pt->ndim, pt->shape};
        NLSR_FORWARD(nlsr_pf_writer_begin_tensor(w, &d));
        for (size_t b = 0; b < pt->nblocks; b++) {
            nlsr_pf_view v;
            nlsr_pf_block blk;
            NLSR_FORWARD(nlsr_pf_block_get(r, pt, b, &blk));
            NLSR_FORWARD(nlsr_pf_read_block(r, pt, b, &v));
            NLSR_FORWARD(nlsr_pf_writer_block(w, blk.first, blk.count, v.idx, v.m, v.ref,
                                              v.base));
        }
        NLSR_FORWARD(nlsr_pf_writer_end_tensor(w));
    }
    return nlsr_pf_writer_end_module(w);
}

/* Run parts: every module's similarity and the fine-tune's module hashes gathered in module
 * order, METHOD.md step 3's selection made once over all of them (the code apply runs, with
 * the options the parts were given), and the merged "finetuned" record added to extra. */
static int select_once(nlsr_ctx *ctx, nlsr_pf_reader *const *r, size_t n, cJSON *extra)
{
    nlsr_err *e = &ctx->err;
    size_t total = 0;
    for (size_t k = 0; k < n; k++) total += r[k]->nmodules;
    nlsr_split_sel all, one;
    NLSR_FAIL_IF(nlsr_split_sel_alloc(&all, total) < 0, e, -ENOMEM, "out of memory");
    int rc = 0;
    size_t at = 0;
    nlsr_xxh64_state fp;
    nlsr_xxh64_init(&fp, 0);
    for (size_t k = 0; k < n && rc == 0; k++) {
        rc = nlsr_split_sel_read(ctx, r[k], &one);
        if (rc == 0) rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: no \"finetuned\" record", r[k]->path);
        if (rc < 0) break;
        rc = 0;
        if (one.has_selection)
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: a part that holds a selection (only a reduce "
                           "makes one)", r[k]->path);
        all.sp = one.sp;
        for (size_t m = 0; m < one.n && rc == 0; m++, at++) {
            all.fp[at] = one.fp[m];
            all.sim[at] = one.sim[m];
            nlsr_full_fp_add_module(&fp, one.fp[m]);
        }
        nlsr_split_sel_free(&one);
    }
    if (rc == 0 && nlsr_select_modules(&all.sp, all.sim, total, all.prob, all.draw,
                                       all.patched) < 0)
        rc = nlsr_fail(e, -ENOMEM, "out of memory selecting modules");
    all.has_selection = 1;
    cJSON *ft = NULL;
    if (rc == 0) {
        ft = cJSON_Duplicate(get(r[0]->header, "finetuned"), 1);
        static const char *const own[] = {"fingerprint", "module_fingerprints", "similarities",
                                          "select", "selection"};
        for (size_t k = 0; ft && k < sizeof own / sizeof own[0]; k++)
            cJSON_DeleteItemFromObjectCaseSensitive(ft, own[k]);
        char hex[32];
        snprintf(hex, sizeof hex, "xxh64:%016" PRIx64, nlsr_xxh64_digest(&fp));
        if (!ft || !cJSON_AddStringToObject(ft, "fingerprint", hex) ||
            nlsr_split_sel_json(ft, &all) < 0 || renumber(ft) < 0) {
            cJSON_Delete(ft);
            rc = nlsr_fail(e, -ENOMEM, "out of memory building the merged header");
        } else {
            cJSON_AddItemToObject(extra, "finetuned", ft);
        }
    }
    nlsr_split_sel_free(&all);
    return rc;
}

int nlsr_reduce(nlsr_ctx *ctx, const char *const *parts, size_t nparts, const char *out_file,
                int force)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(nparts == 0, e, NLSR_E_USAGE, "reduce needs the part files");
    NLSR_FAIL_IF(!out_file, e, NLSR_E_USAGE, "reduce needs an output file (--out)");
    int rc = nlsr_out_check(ctx, out_file, NLSR_OUT_FILE, force, parts, nparts, NULL);
    if (rc < 0) return rc;
    nlsr_pf_reader **r = calloc(nparts, sizeof *r);
    part_info *pi = calloc(nparts, sizeof *pi);
    nlsr_pf_reader **byidx = NULL;
    part_info *pbyidx = NULL;
    nlsr_pf_writer *w = NULL;
    cJSON *extra = NULL;
    if (!r || !pi) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nparts && rc == 0; i++) {
        rc = nlsr_pf_open(ctx, parts[i], &r[i]);
        if (rc == 0) rc = read_part(e, r[i], &pi[i]);
    }
    if (rc < 0) goto done;
    /* One job: the same part count, parameters, inputs and model everywhere. */
    for (size_t i = 1; i < nparts; i++) {
        const char *what = pi[i].count != pi[0].count || pi[i].total != pi[0].total ? "part count"
                           : !cJSON_Compare(get(r[i]->header, "params"),
                                            get(r[0]->header, "params"), 1)
                               ? "parameters"
                           : !same_sources(get(r[i]->header, "sources"),
                                           get(r[0]->header, "sources"))
                               ? "inputs (sources)"
                           : !cJSON_Compare(get(r[i]->header, "model"),
                                            get(r[0]->header, "model"), 1)
                               ? "model"
                               : NULL;
        if (what) {
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s and %s are parts of different jobs: they differ "
                           "in their %s", parts[0], parts[i], what);
            goto done;
        }
        if (!pi[i].ft != !pi[0].ft) {
            size_t rp = pi[i].ft ? i : 0, pp = pi[i].ft ? 0 : i;
            rc = nlsr_fail(e, NLSR_E_MISMATCH,
                           "%s is a part of run --part (it holds a fine-tune's similarities) but "
                           "%s a part of prepare --part: a job's parts are all of one kind",
                           parts[rp], parts[pp]);
            goto done;
        }
        if (pi[0].ft && (what = other_finetune(pi[0].ft, pi[i].ft))) {
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s and %s are parts of different jobs: they differ "
                           "in their %s", parts[0], parts[i], what);
            goto done;
        }
    }
    /* Every part exactly once (all parts have one count, checked above). */
    size_t count = (size_t)pi[0].count;
    if (!(byidx = calloc(count, sizeof *byidx)) || !(pbyidx = calloc(count, sizeof *pbyidx))) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nparts; i++) {
        size_t k = (size_t)pi[i].index;
        if (byidx[k]) {
            rc = nlsr_fail(e, NLSR_E_USAGE, "part %zu/%zu is given twice: %s and %s", k, count,
                           byidx[k]->path, parts[i]);
            goto done;
        }
        byidx[k] = r[i];
        pbyidx[k] = pi[i];
    }
    if (count != nparts) {
        char miss[512] = "";
        size_t len = 0;
        for (size_t k = 0; k < count && len + 24 < sizeof miss; k++)
            if (!byidx[k])
                len += (size_t)snprintf(miss + len, sizeof miss - len, "%s%zu", len ? ", " : "", k);
        rc = nlsr_fail(e, NLSR_E_USAGE, "the job has %zu parts and %zu were given (missing part%s %s)",
                       count, nparts, strchr(miss, ',') ? "s" : "", miss);
        goto done;
    }
    /* Modules in order across the parts, none twice (the directory of each is in order). */
    const char *prev = NULL;
    for (size_t k = 0; k < nparts; k++)
        for (size_t m = 0; m < byidx[k]->nmodules; m++) {
            const char *nm = byidx[k]->modules[m].name;
            if (prev && strcmp(prev, nm) >= 0) {
                rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: module '%.200s' is out of order or "
                               "already in an earlier part", byidx[k]->path, nm);
                goto done;
            }
            prev = nm;
        }
    if (!(extra = merged_extra(e, byidx, pbyidx, nparts))) {
        rc = e->code ? e->code : -ENOMEM;
        goto done;
    }
    if (pbyidx[0].ft) rc = select_once(ctx, byidx, nparts, extra);
    if (rc == 0) rc = nlsr_pf_writer_open(ctx, out_file, "full", &w);
    for (size_t k = 0; k < nparts && rc == 0; k++)
        for (size_t m = 0; m < byidx[k]->nmodules && rc == 0; m++)
            rc = nlsr_split_copy_module(w, byidx[k], &byidx[k]->modules[m]);
    if (rc == 0) {
        rc = nlsr_pf_writer_commit(w, extra, NULL);
        w = NULL;
    }
done:
    nlsr_pf_writer_abort(w);
    cJSON_Delete(extra);
    for (size_t i = 0; r && i < nparts; i++) nlsr_pf_close(r[i]);
    free(r);
    free(pi);
    free(byidx);
    free(pbyidx);
    return rc;
}

int nlsr_patches_verify(nlsr_ctx *ctx, const char *path, int part_index, unsigned part_count)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : nlsr_fail(&ctx->err, -errno,
                                                                     "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return 0;
    nlsr_ctx *c = nlsr_ctx_create(); /* a damaged file is a redo, not this job's error */
    if (!c) return nlsr_fail(&ctx->err, -ENOMEM, "out of memory");
    nlsr_pf_reader *r = NULL;
    int ok = nlsr_pf_open(c, path, &r) == 0;
    if (ok && part_index >= 0) {
        part_info pi;
        ok = read_part(&c->err, r, &pi) == 0 && pi.index == (uint64_t)part_index &&
             pi.count == part_count;
    }
    for (size_t m = 0; ok && m < r->nmodules; m++)
        for (size_t t = 0; ok && t < r->modules[m].ntensors; t++)
            for (size_t b = 0; ok && b < r->modules[m].t[t].nblocks; b++) {
                nlsr_pf_view v;
                ok = nlsr_pf_read_block(r, &r->modules[m].t[t], b, &v) == 0;
            }
    nlsr_pf_close(r);
    nlsr_ctx_free(c);
    return ok;
}
