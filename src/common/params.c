/* SPDX-License-Identifier: Apache-2.0 */
/* The parameters' names and their JSON form (the report, the patch file's header). */
#define _GNU_SOURCE
#include "params.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

const char *nlsr_scorer_kind_name(nlsr_scorer_kind k)
{
    switch (k) {
    case NLSR_SCORER_MAGNITUDE: return "magnitude";
    case NLSR_SCORER_LOWRANK: return "lowrank";
    case NLSR_SCORER_WANDA: return "wanda";
    }
    return "?";
}

const char *nlsr_rank_mode_name(nlsr_rank_mode m)
{
    switch (m) {
    case NLSR_RANK_MODE_PAPER: return "paper";
    case NLSR_RANK_MODE_AUTHORS: return "authors";
    case NLSR_RANK_MODE_DIRECT: return "direct";
    }
    return "?";
}

const char *nlsr_wanda_mode_name(nlsr_wanda_mode m)
{
    return m == NLSR_WANDA_MODE_ROW ? "row" : m == NLSR_WANDA_MODE_MATRIX ? "matrix" : "?";
}

cJSON *nlsr_scorer_params_json(const nlsr_scorer_params *sp)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "name", nlsr_scorer_kind_name(sp->kind));
    if (sp->kind == NLSR_SCORER_LOWRANK) {
        if (sp->rank) {
            cJSON_AddNumberToObject(o, "rank", (double)sp->rank);
            cJSON_AddNullToObject(o, "rank_fraction");
        } else {
            cJSON_AddNullToObject(o, "rank");
            cJSON_AddItemToObject(o, "rank_fraction", nlsr_json_number(sp->rank_fraction));
        }
        cJSON_AddStringToObject(o, "rank_reading", nlsr_rank_mode_name(sp->rank_mode));
        cJSON_AddNumberToObject(o, "power_iters", sp->power_iters);
        cJSON_AddNumberToObject(o, "oversample", (double)sp->oversample);
        cJSON_AddStringToObject(o, "svd", sp->exact_svd ? "exact" : "auto");
        cJSON_AddItemToObject(o, "seed", nlsr_json_u64(sp->seed));
    } else if (sp->kind == NLSR_SCORER_WANDA) {
        cJSON_AddStringToObject(o, "select", nlsr_wanda_mode_name(sp->wanda_select));
    }
    if (sp->kind != NLSR_SCORER_MAGNITUDE) {
        if (sp->activations) {
            char *abs = realpath(sp->activations, NULL);
            cJSON_AddStringToObject(o, "activations", abs ? abs : sp->activations);
            free(abs);
        } else {
            cJSON_AddNullToObject(o, "activations");
        }
    }
    return o;
}

int nlsr_scorer_params_from_json(const cJSON *o, nlsr_scorer_params *sp, const char *file,
                                 nlsr_err *e)
{
    *sp = NLSR_SCORER_PARAMS_DEFAULT;
    if (!o) return 0;
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(o, "name");
    int ok = cJSON_IsObject(o) && cJSON_IsString(nm);
    if (ok && strcmp(nm->valuestring, "magnitude") == 0) return 0;
    if (ok && strcmp(nm->valuestring, "lowrank") == 0) sp->kind = NLSR_SCORER_LOWRANK;
    else if (ok && strcmp(nm->valuestring, "wanda") == 0) sp->kind = NLSR_SCORER_WANDA;
    else ok = 0;
    const cJSON *ac = ok ? cJSON_GetObjectItemCaseSensitive(o, "activations") : NULL;
    if (ok && ac && !cJSON_IsNull(ac)) {
        ok = cJSON_IsString(ac);
        if (ok) sp->activations = ac->valuestring;
    }
    if (ok && sp->kind == NLSR_SCORER_WANDA) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "select");
        ok = cJSON_IsString(s);
        if (ok && strcmp(s->valuestring, "row") == 0) sp->wanda_select = NLSR_WANDA_MODE_ROW;
        else if (ok && strcmp(s->valuestring, "matrix") == 0)
            sp->wanda_select = NLSR_WANDA_MODE_MATRIX;
        else ok = 0;
    } else if (ok) {
        const cJSON *rk = cJSON_GetObjectItemCaseSensitive(o, "rank");
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(o, "rank_fraction");
        const cJSON *rr = cJSON_GetObjectItemCaseSensitive(o, "rank_reading");
        const cJSON *pi = cJSON_GetObjectItemCaseSensitive(o, "power_iters");
        const cJSON *ov = cJSON_GetObjectItemCaseSensitive(o, "oversample");
        const cJSON *sv = cJSON_GetObjectItemCaseSensitive(o, "svd");
        const cJSON *sd = cJSON_GetObjectItemCaseSensitive(o, "seed");
        uint64_t u = 0;
        if (ok && rk && !cJSON_IsNull(rk)) ok = nlsr_json_get_u64(rk, &sp->rank);
        if (ok && fr && !cJSON_IsNull(fr)) {
            ok = cJSON_IsNumber(fr);
            if (ok) sp->rank_fraction = fr->valuedouble;
        }
        if (ok && rr) {
            ok = cJSON_IsString(rr);
            if (ok && strcmp(rr->valuestring, "paper") == 0) sp->rank_mode = NLSR_RANK_MODE_PAPER;
            else if (ok && strcmp(rr->valuestring, "authors") == 0)
                sp->rank_mode = NLSR_RANK_MODE_AUTHORS;
            else if (ok && strcmp(rr->valuestring, "direct") == 0)
                sp->rank_mode = NLSR_RANK_MODE_DIRECT;
            else ok = 0;
        }
        if (ok && pi) {
            ok = nlsr_json_get_u64(pi, &u) && u <= NLSR_MAX_POWER_ITERS;
            sp->power_iters = (int)u;
        }
        if (ok && ov) ok = nlsr_json_get_u64(ov, &sp->oversample);
        if (ok && sv) {
            ok = cJSON_IsString(sv) && (strcmp(sv->valuestring, "auto") == 0 ||
                                        strcmp(sv->valuestring, "exact") == 0);
            sp->exact_svd = ok && strcmp(sv->valuestring, "exact") == 0;
        }
        if (ok && sd) ok = nlsr_json_get_u64(sd, &sp->seed);
    }
    NLSR_FAIL_IF(!ok, e, NLSR_E_FORMAT, "%s: params.scorer in the header is malformed", file);
    return 0;
}

/* The key and JSON value of one entry (NULL value: not in JSON, or out of memory). */
static cJSON *param_json(const nlsr_param *pp, const nlsr_realign_params *p, const char **key)
{
    const nlsr_param_info *in = &pp->pub;
    const void *f = (const char *)p + in->offset;
    *key = pp->json;
    if (in->offset == offsetof(nlsr_realign_params, scorer.kind)) {
        *key = "scorer";
        return nlsr_scorer_params_json(&p->scorer);
    }
    switch (in->type) {
    case NLSR_PARAM_DOUBLE: return nlsr_json_number(*(const double *)f);
    case NLSR_PARAM_UINT64: return nlsr_json_u64(*(const uint64_t *)f);
    case NLSR_PARAM_ENUM: return cJSON_CreateString(in->values[*(const int *)f]);
    case NLSR_PARAM_LIST: break;
    default: return NULL;
    }
    cJSON *v = cJSON_CreateArray();
    if (!v) return NULL;
    if (p->targets) {
        for (size_t k = 0; k < p->ntargets; k++)
            cJSON_AddItemToArray(v, cJSON_CreateString(p->targets[k]));
        return v;
    }
    /* The defaults, written out: the default text is the list. */
    for (const char *s = in->def; *s;) {
        const char *c = strchr(s, ',');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)l, s);
        cJSON_AddItemToArray(v, cJSON_CreateString(name));
        s += l + (c != NULL);
    }
    return v;
}

int nlsr_params_add_json(cJSON *obj, const nlsr_realign_params *p, unsigned pj)
{
    for (size_t i = 0; i < nlsr_params_table_len; i++) {
        const nlsr_param *pp = &nlsr_params_table[i];
        if (!(pp->pj & pj)) continue;
        const char *key;
        cJSON *v = param_json(pp, p, &key);
        if (!key) {
            cJSON_Delete(v);
            continue;
        }
        if (!v) return -ENOMEM;
        cJSON_AddItemToObject(obj, key, v);
    }
    return 0;
}

int nlsr_params_add_json_keys(cJSON *obj, const nlsr_realign_params *p, const char *const *keys)
{
    for (; *keys; keys++) {
        const nlsr_param *pp = NULL;
        const char *key = NULL;
        for (size_t i = 0; !pp && i < nlsr_params_table_len; i++) {
            const char *k = nlsr_params_table[i].json;
            if (nlsr_params_table[i].pub.offset == offsetof(nlsr_realign_params, scorer.kind))
                k = "scorer";
            if (k && strcmp(k, *keys) == 0) pp = &nlsr_params_table[i];
        }
        cJSON *v = pp ? param_json(pp, p, &key) : NULL;
        if (!v) return -ENOMEM;
        cJSON_AddItemToObject(obj, key, v);
    }
    return 0;
}

int nlsr_params_from_json(const cJSON *obj, nlsr_realign_params *p, const char *file, nlsr_err *e)
{
    NLSR_FAIL_IF(!cJSON_IsObject(obj), e, NLSR_E_FORMAT, "%s: params is not an object", file);
    for (size_t i = 0; i < nlsr_params_table_len; i++) {
        const nlsr_param *pp = &nlsr_params_table[i];
        const nlsr_param_info *in = &pp->pub;
        int is_scorer = in->offset == offsetof(nlsr_realign_params, scorer.kind);
        const char *key = is_scorer ? "scorer" : in->type == NLSR_PARAM_LIST ? "targets" : pp->json;
        const cJSON *v = key ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
        if (!v) continue;
        if (is_scorer) {
            uint64_t seed = p->scorer.seed;
            NLSR_FORWARD(nlsr_scorer_params_from_json(v, &p->scorer, file, e));
            /* Only lowrank's object holds its seed; the others share the run's. */
            if (!cJSON_GetObjectItemCaseSensitive(v, "seed")) p->scorer.seed = seed;
            continue;
        }
        char text[4096], msg[256];
        uint64_t u = 0;
        int ok = 1;
        if (in->type == NLSR_PARAM_LIST) {
            size_t used = 0;
            text[0] = '\0';
            ok = cJSON_IsArray(v);
            for (const cJSON *it = ok ? v->child : NULL; ok && it; it = it->next) {
                ok = cJSON_IsString(it) && !strchr(it->valuestring, ',');
                int w = ok ? snprintf(text + used, sizeof text - used, "%s%s", used ? "," : "",
                                      it->valuestring)
                           : 0;
                ok = ok && w >= 0 && (size_t)w < sizeof text - used;
                used += ok ? (size_t)w : 0;
            }
        } else if (in->type == NLSR_PARAM_UINT64) {
            ok = nlsr_json_get_u64(v, &u);
            snprintf(text, sizeof text, "%" PRIu64, u);
        } else if (in->type == NLSR_PARAM_DOUBLE && cJSON_IsNumber(v)) {
            snprintf(text, sizeof text, "%.17g", v->valuedouble);
        } else if (in->type == NLSR_PARAM_ENUM && cJSON_IsString(v)) {
            snprintf(text, sizeof text, "%s", v->valuestring);
        } else {
            ok = 0;
        }
        NLSR_FAIL_IF(!ok, e, NLSR_E_FORMAT, "%s: params.%s is malformed", file, key);
        NLSR_FAIL_IF(nlsr_params_set(p, in->name, text, msg, sizeof msg) != 0, e, NLSR_E_FORMAT,
                     "%s: params.%s: %s", file, key, msg);
    }
    return 0;
}
