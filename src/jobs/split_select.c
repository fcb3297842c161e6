/* SPDX-License-Identifier: Apache-2.0 */
/* The patch header's "finetuned" record (docs/FORMAT.md): what a `run --part` task learned of
 * the fine-tune for its modules (each module's content hash and similarity, and the selection
 * options it was given), and in a reduced file the selection made once over every module.
 * Written by split_run.c and split_reduce.c, read by apply (realign_full.c) and the reduce.
 * Doubles are C99 hex floats ("%a"): exact, so the reduce and apply see the bits run --part
 * computed. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/params.h"
#include "split.h"

static const char *const SELECT_KEYS[] = {"mode", "semantics", "prune_rate", "epsilon", "tau",
                                          "seed", NULL};

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

void nlsr_split_sel_free(nlsr_split_sel *s)
{
    free(s->fp);
    free(s->sim);
    free(s->prob);
    free(s->draw);
    free(s->patched);
    memset(s, 0, sizeof *s);
}

int nlsr_split_sel_alloc(nlsr_split_sel *s, size_t n)
{
    memset(s, 0, sizeof *s);
    size_t k = n ? n : 1;
    s->n = n;
    s->fp = calloc(k, sizeof *s->fp);
    s->sim = calloc(k, sizeof *s->sim);
    s->prob = calloc(k, sizeof *s->prob);
    s->draw = calloc(k, sizeof *s->draw);
    s->patched = calloc(k, sizeof *s->patched);
    if (s->fp && s->sim && s->prob && s->draw && s->patched) return 0;
    nlsr_split_sel_free(s);
    return -ENOMEM;
}

static int hex_u64(const cJSON *s, uint64_t *v)
{
    if (!cJSON_IsString(s) || strlen(s->valuestring) != 16) return 0;
    char *end;
    errno = 0;
    *v = strtoull(s->valuestring, &end, 16);
    return *end == '\0' && errno == 0;
}

/* A double written as "%a" (or null for NaN, where allow_null). */
static int hex_double(const cJSON *s, double *v, int allow_null)
{
    if (allow_null && cJSON_IsNull(s)) {
        *v = NAN;
        return 1;
    }
    if (!cJSON_IsString(s) || !s->valuestring[0]) return 0;
    char *end;
    *v = strtod(s->valuestring, &end);
    return *end == '\0' && !isnan(*v);
}

static cJSON *hex_double_json(double v)
{
    if (isnan(v)) return cJSON_CreateNull();
    char b[40];
    snprintf(b, sizeof b, "%a", v);
    return cJSON_CreateString(b);
}

int nlsr_split_sel_read(nlsr_ctx *ctx, const nlsr_pf_reader *pf, nlsr_split_sel *s)
{
    nlsr_err *e = &ctx->err;
    memset(s, 0, sizeof *s);
    const cJSON *ft = get(pf->header, "finetuned");
    if (!ft) return 0;
    const cJSON *fps = get(ft, "module_fingerprints"), *sims = get(ft, "similarities"),
                *sel = get(ft, "selection"), *sp = get(ft, "select");
    size_t n = pf->nmodules;
    NLSR_FAIL_IF(!cJSON_IsObject(ft) || !cJSON_IsArray(fps) || !cJSON_IsArray(sims) ||
                     !cJSON_IsObject(sp) || (size_t)cJSON_GetArraySize(fps) != n ||
                     (size_t)cJSON_GetArraySize(sims) != n || (sel && !cJSON_IsObject(sel)),
                 e, NLSR_E_FORMAT,
                 "%s: malformed \"finetuned\" record (it must hold one fingerprint and one "
                 "similarity per module, and the selection options)", pf->path);
    /* The options through the parameters' own reader: bounds as on the command line. "seed"
     * also sets the scorer's seed there, so a scratch copy is read and only select kept. */
    nlsr_realign_params tmp = NLSR_REALIGN_PARAMS_DEFAULT;
    for (const char *const *k = SELECT_KEYS; *k; k++)
        NLSR_FAIL_IF(!get(sp, *k), e, NLSR_E_FORMAT,
                     "%s: the \"finetuned\" record's selection options lack \"%s\"", pf->path, *k);
    NLSR_FORWARD(nlsr_params_from_json(sp, &tmp, pf->path, e));
    NLSR_FAIL_IF(nlsr_split_sel_alloc(s, n) < 0, e, -ENOMEM, "out of memory");
    s->sp = tmp.select;
    const cJSON *pa = sel ? get(sel, "patched") : NULL, *pr = sel ? get(sel, "probability") : NULL,
                *dr = sel ? get(sel, "draw") : NULL;
    if (sel && (!cJSON_IsArray(pa) || !cJSON_IsArray(pr) || !cJSON_IsArray(dr) ||
                (size_t)cJSON_GetArraySize(pa) != n || (size_t)cJSON_GetArraySize(pr) != n ||
                (size_t)cJSON_GetArraySize(dr) != n)) {
        nlsr_split_sel_free(s);
        return nlsr_fail(e, NLSR_E_FORMAT, "%s: malformed \"finetuned\" selection record",
                         pf->path);
    }
    s->has_selection = sel != NULL;
    const cJSON *a = fps->child, *b = sims->child, *c = pa ? pa->child : NULL,
                *d = pr ? pr->child : NULL, *f = dr ? dr->child : NULL;
    for (size_t i = 0; i < n; i++) {
        int ok = hex_u64(a, &s->fp[i]) && hex_double(b, &s->sim[i], 0);
        if (ok && sel)
            ok = cJSON_IsBool(c) && hex_double(d, &s->prob[i], 1) && hex_double(f, &s->draw[i], 1);
        if (!ok) {
            nlsr_split_sel_free(s);
            return nlsr_fail(e, NLSR_E_FORMAT,
                             "%s: module '%.200s': malformed entry in the \"finetuned\" record",
                             pf->path, pf->modules[i].name);
        }
        if (sel) {
            s->patched[i] = cJSON_IsTrue(c);
            c = c->next;
            d = d->next;
            f = f->next;
        }
        a = a->next;
        b = b->next;
    }
    return 1;
}

int nlsr_split_sel_select(nlsr_ctx *ctx, const nlsr_pf_reader *pf, nlsr_select_params *sp)
{
    const cJSON *ft = get(pf->header, "finetuned");
    if (!ft || !get(ft, "selection")) return 0;
    nlsr_realign_params tmp = NLSR_REALIGN_PARAMS_DEFAULT;
    NLSR_FORWARD(nlsr_params_from_json(get(ft, "select"), &tmp, pf->path, &ctx->err));
    *sp = tmp.select;
    return 1;
}

int nlsr_split_sel_json(cJSON *ft, const nlsr_split_sel *s)
{
    nlsr_realign_params tmp = NLSR_REALIGN_PARAMS_DEFAULT;
    tmp.select = s->sp;
    cJSON *sp = cJSON_AddObjectToObject(ft, "select"), *fps, *sims;
    if (!sp || nlsr_params_add_json_keys(sp, &tmp, SELECT_KEYS) != 0) return -ENOMEM;
    if (!(fps = cJSON_AddArrayToObject(ft, "module_fingerprints")) ||
        !(sims = cJSON_AddArrayToObject(ft, "similarities")))
        return -ENOMEM;
    for (size_t i = 0; i < s->n; i++) {
        char b[24];
        snprintf(b, sizeof b, "%016" PRIx64, s->fp[i]);
        cJSON *x = cJSON_CreateString(b), *y = hex_double_json(s->sim[i]);
        if (!x || !y) {
            cJSON_Delete(x);
            cJSON_Delete(y);
            return -ENOMEM;
        }
        cJSON_AddItemToArray(fps, x);
        cJSON_AddItemToArray(sims, y);
    }
    if (!s->has_selection) return 0;
    cJSON *sel = cJSON_AddObjectToObject(ft, "selection"), *pa, *pr, *dr;
    if (!sel || !(pa = cJSON_AddArrayToObject(sel, "patched")) ||
        !(pr = cJSON_AddArrayToObject(sel, "probability")) ||
        !(dr = cJSON_AddArrayToObject(sel, "draw")))
        return -ENOMEM;
    for (size_t i = 0; i < s->n; i++) {
        cJSON *x = cJSON_CreateBool(s->patched[i]), *y = hex_double_json(s->prob[i]),
              *z = hex_double_json(s->draw[i]);
        if (!x || !y || !z) {
            cJSON_Delete(x);
            cJSON_Delete(y);
            cJSON_Delete(z);
            return -ENOMEM;
        }
        cJSON_AddItemToArray(pa, x);
        cJSON_AddItemToArray(pr, y);
        cJSON_AddItemToArray(dr, z);
    }
    return 0;
}
