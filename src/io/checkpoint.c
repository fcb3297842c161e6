/* SPDX-License-Identifier: Apache-2.0 */
/* Opening a checkpoint: which layout it is, its shards, and the cross-checks between index and
 * shards. An index is only a map of where tensors live, so it must agree with the shards
 * exactly; its metadata.total_size is informational and not trusted. */
#define _GNU_SOURCE
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "file.h"
#include "hub.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define ADAPTER_NAME "adapter_model.safetensors"
#define ADAPTER_CONFIG "adapter_config.json"
#define MAX_JSON_FILE (64u << 20)

typedef struct wm_item {
    const char *name, *shard;
} wm_item;

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const ck_entry *)a)->t->name, ((const ck_entry *)b)->t->name);
}

static int cmp_wm(const void *a, const void *b)
{
    return strcmp(((const wm_item *)a)->name, ((const wm_item *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void nlsr_ckpt_free(nlsr_ckpt *ck)
{
    if (!ck) return;
    for (size_t i = 0; i < ck->nshards; i++) {
        st_close(ck->shards[i]);
        free(ck->shard_names[i]);
    }
    free(ck->shards);
    free(ck->shard_names);
    free(ck->t);
    for (size_t i = 0; i < ck->ntargets; i++) free(ck->targets[i]);
    free(ck->targets);
    free(ck->index_name);
    free(ck->dir);
    free(ck->resolved);
    free(ck->path);
    free(ck);
}

/* A hub cache snapshot whose download did not finish links to blobs that are not there yet:
 * say so rather than "no such file". */
static int dangling_link(const nlsr_ckpt *ck, const char *p, nlsr_err *e)
{
    struct stat st;
    if (lstat(p, &st) != 0 || !S_ISLNK(st.st_mode) || stat(p, &st) == 0) return 0;
    char target[512];
    ssize_t n = readlink(p, target, sizeof target - 1);
    target[n > 0 ? n : 0] = '\0';
    return nlsr_fail(e, NLSR_E_NOTFOUND,
                     "%s: %s is a link to %s, which does not exist (an unfinished download?)",
                     ck->path, p, target);
}

static int add_shard(nlsr_ckpt *ck, const char *name, nlsr_err *e)
{
    char *p = nlsr_path_join(ck->dir, name);
    NLSR_FAIL_IF(!p, e, -ENOMEM, "%s: out of memory", ck->path);
    st_file *f = NULL;
    int rc = dangling_link(ck, p, e);
    if (rc == 0) rc = st_open(p, &f, e);
    free(p);
    NLSR_FORWARD(rc);
    ck->shard_names[ck->nshards] = strdup(name);
    if (!ck->shard_names[ck->nshards]) {
        st_close(f);
        return nlsr_fail(e, -ENOMEM, "%s: out of memory", ck->path);
    }
    ck->shards[ck->nshards++] = f;
    return 0;
}

static int alloc_shards(nlsr_ckpt *ck, size_t n, nlsr_err *e)
{
    ck->shards = calloc(n ? n : 1, sizeof *ck->shards);
    ck->shard_names = calloc(n ? n : 1, sizeof *ck->shard_names);
    NLSR_FAIL_IF(!ck->shards || !ck->shard_names, e, -ENOMEM, "%s: out of memory", ck->path);
    return 0;
}

/* Merges the shards' tensors into one name-sorted table, refusing a name in two shards. */
static int build_table(nlsr_ckpt *ck, nlsr_err *e)
{
    size_t n = 0;
    for (size_t s = 0; s < ck->nshards; s++) n += ck->shards[s]->h.ntensors;
    ck->t = calloc(n ? n : 1, sizeof *ck->t);
    NLSR_FAIL_IF(!ck->t, e, -ENOMEM, "%s: out of memory", ck->path);
    for (size_t s = 0; s < ck->nshards; s++)
        for (size_t i = 0; i < ck->shards[s]->h.ntensors; i++)
            ck->t[ck->n++] = (ck_entry){&ck->shards[s]->h.tensors[i], (uint32_t)s};
    qsort(ck->t, ck->n, sizeof *ck->t, cmp_entry);
    for (size_t i = 1; i < ck->n; i++)
        NLSR_FAIL_IF(strcmp(ck->t[i - 1].t->name, ck->t[i].t->name) == 0, e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s' is in both %s and %s", ck->path, ck->t[i].t->name,
                     ck->shard_names[ck->t[i - 1].shard], ck->shard_names[ck->t[i].shard]);
    return 0;
}

static int valid_shard_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int open_sharded(nlsr_ckpt *ck, nlsr_err *e)
{
    int rc = 0;
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    wm_item *wm = NULL;
    char **names = NULL;
    char *ipath = nlsr_path_join(ck->dir, INDEX_NAME);
    NLSR_FAIL_IF(!ipath, e, -ENOMEM, "%s: out of memory", ck->path);
    rc = nlsr_read_small_file(ipath, MAX_JSON_FILE, &text, &len, e);
    if (rc < 0) goto done;
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: not a JSON object", ipath);
        goto done;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: missing or invalid 'weight_map'", ipath);
        goto done;
    }
    size_t nwm = (size_t)cJSON_GetArraySize(map);
    wm = calloc(nwm ? nwm : 1, sizeof *wm);
    names = calloc(nwm ? nwm : 1, sizeof *names);
    if (!wm || !names) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", ipath);
        goto done;
    }
    size_t k = 0;
    for (const cJSON *it = map->child; it; it = it->next, k++) {
        if (!cJSON_IsString(it) || !valid_shard_name(it->valuestring)) {
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: weight_map entry '%.200s' is not a plain shard file name", ipath,
                           it->string);
            goto done;
        }
        wm[k] = (wm_item){it->string, it->valuestring};
        names[k] = it->valuestring;
    }
    qsort(wm, nwm, sizeof *wm, cmp_wm);
    for (size_t i = 1; i < nwm; i++)
        if (strcmp(wm[i - 1].name, wm[i].name) == 0) {
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: weight_map lists '%.200s' twice", ipath,
                           wm[i].name);
            goto done;
        }
    qsort(names, nwm, sizeof *names, cmp_str);
    size_t nuniq = 0;
    for (size_t i = 0; i < nwm; i++)
        if (i == 0 || strcmp(names[i - 1], names[i]) != 0) names[nuniq++] = names[i];
    rc = alloc_shards(ck, nuniq, e);
    for (size_t i = 0; i < nuniq && rc == 0; i++) {
        char *sp = nlsr_path_join(ck->dir, names[i]);
        if (!sp) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", ipath);
            break;
        }
        if (!nlsr_exists(sp))
            rc = nlsr_fail(e, NLSR_E_NOTFOUND, "%s: names shard %s, which does not exist",
                           ipath, names[i]);
        free(sp);
        if (rc == 0) rc = add_shard(ck, names[i], e);
    }
    if (rc == 0) rc = build_table(ck, e);
    if (rc < 0) goto done;
    /* Index and shards must agree both ways. Both lists are name-sorted: one merge walk. */
    size_t a = 0, b = 0;
    while (rc == 0 && (a < nwm || b < ck->n)) {
        int c = a >= nwm ? 1 : b >= ck->n ? -1 : strcmp(wm[a].name, ck->t[b].t->name);
        if (c < 0)
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: lists tensor '%.200s' in %s, which lacks it",
                           ipath, wm[a].name, wm[a].shard);
        else if (c > 0)
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: shard %s holds tensor '%.200s', which the index does not list",
                           ipath, ck->shard_names[ck->t[b].shard], ck->t[b].t->name);
        else if (strcmp(wm[a].shard, ck->shard_names[ck->t[b].shard]) != 0)
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: lists tensor '%.200s' in %s, but it is in %s", ipath,
                           wm[a].name, wm[a].shard, ck->shard_names[ck->t[b].shard]);
        else {
            a++;
            b++;
        }
    }
    if (rc == 0) {
        ck->index_name = strdup(INDEX_NAME);
        if (!ck->index_name) rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", ipath);
    }
done:
    free(names);
    free(wm);
    cJSON_Delete(root);
    free(text);
    free(ipath);
    return rc;
}

static int read_adapter_config(nlsr_ckpt *ck, nlsr_err *e)
{
    int rc = 0;
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    char *cpath = nlsr_path_join(ck->dir, ADAPTER_CONFIG);
    NLSR_FAIL_IF(!cpath, e, -ENOMEM, "%s: out of memory", ck->path);
    rc = nlsr_read_small_file(cpath, MAX_JSON_FILE, &text, &len, e);
    if (rc < 0) goto done;
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: not a JSON object", cpath);
        goto done;
    }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 1e6 ||
        r->valuedouble != (double)(int)r->valuedouble) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: 'r' is missing or not a positive integer", cpath);
        goto done;
    }
    ck->lora_r = (int)r->valuedouble;
    ck->lora_alpha = cJSON_IsNumber(alpha) ? alpha->valuedouble : (double)ck->lora_r;
    if (cJSON_IsArray(tm)) {
        size_t n = (size_t)cJSON_GetArraySize(tm);
        ck->targets = calloc(n ? n : 1, sizeof *ck->targets);
        if (!ck->targets) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", cpath);
            goto done;
        }
        for (const cJSON *it = tm->child; it; it = it->next) {
            if (!cJSON_IsString(it)) {
                rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: target_modules holds a non-string",
                               cpath);
                goto done;
            }
            if (!(ck->targets[ck->ntargets] = strdup(it->valuestring))) {
                rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", cpath);
                goto done;
            }
            ck->ntargets++;
        }
    } else if (cJSON_IsString(tm)) {
        ck->targets = calloc(1, sizeof *ck->targets);
        if (!ck->targets || !(ck->targets[0] = strdup(tm->valuestring))) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", cpath);
            goto done;
        }
        ck->ntargets = 1;
    }
done:
    cJSON_Delete(root);
    free(text);
    free(cpath);
    return rc;
}

static int set_dir_and_single(nlsr_ckpt *ck, const char *file_name, nlsr_err *e)
{
    NLSR_FORWARD(alloc_shards(ck, 1, e));
    NLSR_FORWARD(add_shard(ck, file_name, e));
    return build_table(ck, e);
}

/* "a, b, c" of the folder's entries that other tools' weight formats use, for the hint below:
 * which kind dominates (2 transformers' pytorch_model*.bin or its index, 1 adapter_model.bin,
 * 0 other pickles) and one file to name in the example. */
static int foreign_weights(const char *dir, char *names, size_t cap, char *first, size_t fcap)
{
    static const char *const ext[] = {".bin", ".pt", ".pth", ".bin.index.json"};
    int kind = -1;
    size_t k = 0;
    int n = 0;
    names[0] = first[0] = '\0';
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        size_t L = strlen(nm);
        int hit = 0;
        for (size_t i = 0; i < sizeof ext / sizeof ext[0] && !hit; i++) {
            size_t E = strlen(ext[i]);
            hit = L > E && strcmp(nm + L - E, ext[i]) == 0 && nm[0] != '.';
        }
        if (!hit) continue;
        int kd = strncmp(nm, "pytorch_model", 13) == 0 ? 2
                 : strcmp(nm, "adapter_model.bin") == 0 ? 1
                                                         : 0;
        if (kd > kind) {
            kind = kd;
            snprintf(first, fcap, "%s", nm);
        }
        if (k + L + 8 < cap)
            k += (size_t)snprintf(names + k, cap - k, "%s%s", n ? ", " : "", nm);
        else if (k + 6 < cap && !strstr(names, "..."))
            k += (size_t)snprintf(names + k, cap - k, ", ...");
        n++;
    }
    closedir(d);
    return kind;
}

/* A folder with no safetensors checkpoint: name what it holds when that is another format's
 * weights (a PyTorch pickle checkpoint is the usual case) and how to convert it. */
static int no_checkpoint(const char *shown, const char *dir, nlsr_err *e)
{
    char names[240], first[260];
    int kind = foreign_weights(dir, names, sizeof names, first, sizeof first);
    if (kind == 2)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: holds PyTorch pickle weights (%s), not safetensors; convert them "
                         "first, e.g. `python -c \"from transformers import "
                         "AutoModelForCausalLM as M; "
                         "M.from_pretrained('%s').save_pretrained('converted')\"` (writes "
                         "converted/model*.safetensors)",
                         shown, names, dir);
    if (kind >= 0)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: holds PyTorch pickle weights (%s), not safetensors; convert them "
                         "first, e.g. `python -c \"import torch; from safetensors.torch import "
                         "save_file; save_file(torch.load('%s/%s'), '%s')\"`%s",
                         shown, names, dir, first, kind == 1 ? ADAPTER_NAME : SINGLE_NAME,
                         kind == 1 ? " beside a copy of " ADAPTER_CONFIG : "");
    return nlsr_fail(e, NLSR_E_NOTFOUND, "%s: no %s, %s or %s in this folder", shown, SINGLE_NAME,
                     INDEX_NAME, ADAPTER_NAME);
}

int nlsr_ckpt_open(nlsr_ctx *ctx, const char *path, nlsr_ckpt **out)
{
    nlsr_err *e = &ctx->err;
    int rc = 0;
    nlsr_ckpt *ck = calloc(1, sizeof *ck);
    NLSR_FAIL_IF(!ck, e, -ENOMEM, "%s: out of memory", path);
    ck->lora_r = -1;
    ck->lora_alpha = -1;
    ck->path = strdup(path);
    if (!ck->path) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    nlsr_hub_kind hub = NLSR_HUB_NONE;
    rc = nlsr_hub_resolve(path, ctx->revision[0] ? ctx->revision : NULL, &hub, &ck->resolved, e);
    if (rc < 0) goto fail;
    ck->hub = (int)hub;
    /* `where` is what is read; messages keep naming the path as given. */
    const char *where = ck->resolved ? ck->resolved : path;
    int isdir = nlsr_is_dir(where);
    if (isdir < 0) {
        rc = nlsr_fail(e, isdir, "%s: cannot stat: %s", path, strerror(-isdir));
        goto fail;
    }
    if (!isdir) {
        if (!nlsr_exists(path)) {
            rc = nlsr_fail(e, NLSR_E_NOTFOUND, "%s: no such file or folder", path);
            goto fail;
        }
        const char *slash = strrchr(path, '/');
        ck->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        if (!ck->dir) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        ck->kind = NLSR_CKPT_FULL;
        rc = set_dir_and_single(ck, slash ? slash + 1 : path, e);
        if (rc < 0) goto fail;
        *out = ck;
        return 0;
    }
    ck->dir = strdup(where);
    if (!ck->dir) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    char *p_cfg = nlsr_path_join(where, ADAPTER_CONFIG);
    char *p_ad = nlsr_path_join(where, ADAPTER_NAME);
    char *p_idx = nlsr_path_join(where, INDEX_NAME);
    char *p_one = nlsr_path_join(where, SINGLE_NAME);
    int has_cfg = p_cfg && nlsr_exists(p_cfg), has_ad = p_ad && nlsr_exists(p_ad);
    int has_idx = p_idx && nlsr_exists(p_idx), has_one = p_one && nlsr_exists(p_one);
    int oom = !p_cfg || !p_ad || !p_idx || !p_one;
    free(p_cfg);
    free(p_ad);
    free(p_idx);
    free(p_one);
    if (oom) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (has_ad) {
        if (!has_cfg) {
            rc = nlsr_fail(e, NLSR_E_NOTFOUND, "%s: has %s but no %s", path, ADAPTER_NAME,
                           ADAPTER_CONFIG);
            goto fail;
        }
        ck->kind = NLSR_CKPT_PEFT;
        rc = read_adapter_config(ck, e);
        if (rc == 0) rc = set_dir_and_single(ck, ADAPTER_NAME, e);
    } else if (has_idx) {
        ck->kind = NLSR_CKPT_FULL;
        rc = open_sharded(ck, e);
    } else if (has_one) {
        ck->kind = NLSR_CKPT_FULL;
        rc = set_dir_and_single(ck, SINGLE_NAME, e);
    } else {
        rc = no_checkpoint(path, where, e);
    }
    if (rc < 0) goto fail;
    *out = ck;
    return 0;
fail:
    nlsr_ckpt_free(ck);
    return rc;
}

nlsr_ckpt_kind nlsr_ckpt_get_kind(const nlsr_ckpt *ck) { return ck->kind; }
const char *nlsr_ckpt_path(const nlsr_ckpt *ck) { return ck->path; }
const char *nlsr_ckpt_resolved_path(const nlsr_ckpt *ck)
{
    return ck->resolved ? ck->resolved : ck->path;
}
size_t nlsr_ckpt_tensor_count(const nlsr_ckpt *ck) { return ck->n; }
size_t nlsr_ckpt_shard_count(const nlsr_ckpt *ck) { return ck->nshards; }
int nlsr_ckpt_lora_r(const nlsr_ckpt *ck) { return ck->lora_r; }
double nlsr_ckpt_lora_alpha(const nlsr_ckpt *ck) { return ck->lora_alpha; }

uint64_t ck_tensor_offset(const nlsr_ckpt *ck, size_t i)
{
    return ck->shards[ck->t[i].shard]->data_start + ck->t[i].t->begin;
}

void nlsr_ckpt_tensor_info(const nlsr_ckpt *ck, size_t i, nlsr_tensor_info *info)
{
    const st_tensor *t = ck->t[i].t;
    info->name = t->name;
    info->dtype = t->dtype;
    info->ndim = t->ndim;
    info->shape = t->shape;
    info->numel = t->numel;
    info->file = ck->shards[ck->t[i].shard]->path;
    info->offset = ck_tensor_offset(ck, i);
    info->nbytes = t->end - t->begin;
}

int nlsr_ckpt_find(const nlsr_ckpt *ck, const char *name, size_t *index)
{
    size_t lo = 0, hi = ck->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->t[mid].t->name, name);
        if (c == 0) {
            *index = mid;
            return 0;
        }
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NLSR_E_NOTFOUND;
}
