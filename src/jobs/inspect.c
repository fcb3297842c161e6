/* SPDX-License-Identifier: Apache-2.0 */
/* `inspect`, `dump` and the writer round trip: whole-checkpoint views built from the I/O layer
 * (headers, reads) and the compute layer (conversions). */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/shape.h"
#include "../compute/convert.h"
#include "../io/checkpoint.h"
#include "../io/file.h"
#include "../io/outpath.h"
#include "../io/sidefiles.h"
#include "../plan/targets.h"

#define DUMP_CHUNK 65536u

int nlsr_ckpt_read_f64(nlsr_ctx *ctx, const nlsr_ckpt *ck, size_t i, uint64_t first,
                       uint64_t count, double *out)
{
    nlsr_err *e = &ctx->err;
    const ck_entry *en = &ck->t[i];
    const st_file *f = ck->shards[en->shard];
    size_t es = nlsr_dtype_size(en->t->dtype);
    NLSR_FAIL_IF(first > en->t->numel || count > en->t->numel - first, e, NLSR_E_USAGE,
                 "%s: tensor '%s': elements [%" PRIu64 ", +%" PRIu64 ") out of range", f->path,
                 en->t->name, first, count);
    unsigned char *buf = malloc(DUMP_CHUNK * 8);
    NLSR_FAIL_IF(!buf, e, -ENOMEM, "out of memory");
    int rc = 0;
    for (uint64_t done = 0; done < count && rc == 0;) {
        uint64_t n = count - done < DUMP_CHUNK ? count - done : DUMP_CHUNK;
        rc = nlsr_pread_all(f->fd, buf, (size_t)(n * es),
                            f->data_start + en->t->begin + (first + done) * es, f->path, e);
        if (rc == 0) nlsr_to_f64(en->t->dtype, buf, out + done, (size_t)n);
        done += n;
    }
    free(buf);
    return rc;
}

int nlsr_ckpt_print_dump(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *tensor, FILE *out)
{
    nlsr_err *e = &ctx->err;
    size_t idx;
    NLSR_FAIL_IF(nlsr_ckpt_find(ck, tensor, &idx) != 0, e, NLSR_E_NOTFOUND,
                 "%s: no tensor named '%.200s'", ck->path, tensor);
    const st_tensor *t = ck->t[idx].t;
    double *vals = malloc(DUMP_CHUNK * sizeof *vals);
    NLSR_FAIL_IF(!vals, e, -ENOMEM, "out of memory");
    int rc = 0;
    int isfloat = nlsr_dtype_is_float(t->dtype);
    for (uint64_t done = 0; done < t->numel && rc == 0;) {
        uint64_t n = t->numel - done < DUMP_CHUNK ? t->numel - done : DUMP_CHUNK;
        rc = nlsr_ckpt_read_f64(ctx, ck, idx, done, n, vals);
        for (uint64_t k = 0; k < n && rc == 0; k++) {
            if (isfloat) {
                fprintf(out, "%.9g\n", (double)(float)vals[k]);
            } else if (t->dtype == NLSR_DTYPE_I64 || t->dtype == NLSR_DTYPE_U64) {
                /* 64-bit integers do not fit a double exactly: print them from the bytes. */
                unsigned char raw[8];
                const st_file *f = ck->shards[ck->t[idx].shard];
                rc = nlsr_pread_all(f->fd, raw, 8, f->data_start + t->begin + (done + k) * 8,
                                    f->path, e);
                if (rc < 0) break;
                if (t->dtype == NLSR_DTYPE_I64) {
                    int64_t v;
                    memcpy(&v, raw, 8);
                    fprintf(out, "%" PRId64 "\n", v);
                } else {
                    uint64_t v;
                    memcpy(&v, raw, 8);
                    fprintf(out, "%" PRIu64 "\n", v);
                }
            } else {
                fprintf(out, "%.0f\n", vals[k]);
            }
        }
        done += n;
    }
    free(vals);
    return rc;
}

int nlsr_ckpt_print_inspect(nlsr_ctx *ctx, const nlsr_ckpt *ck, int json, FILE *out)
{
    nlsr_err *e = &ctx->err;
    uint64_t params = 0, bytes = 0;
    for (size_t i = 0; i < ck->n; i++) {
        params += ck->t[i].t->numel;
        bytes += ck->t[i].t->end - ck->t[i].t->begin;
    }
    nlsr_target_summary sum;
    nlsr_targets_summarize(ck, &sum);
    const char *kind = ck->kind == NLSR_CKPT_PEFT ? "peft" : "full";
    if (!json) {
        for (size_t i = 0; i < ck->n; i++) {
            const st_tensor *t = ck->t[i].t;
            char shp[256];
            nlsr_shape_str(t->ndim, t->shape, ", ", shp, sizeof shp);
            fprintf(out, "%-60s %-8s %-20s %s @%" PRIu64 " %" PRIu64 " bytes\n", t->name,
                    nlsr_dtype_name(t->dtype), shp, ck->shard_names[ck->t[i].shard],
                    ck_tensor_offset(ck, i), t->end - t->begin);
        }
        fprintf(out, "kind: %s\n", ck->kind == NLSR_CKPT_PEFT ? "PEFT adapter" : "full");
        if (ck->resolved) fprintf(out, "snapshot: %s\n", ck->resolved);
        fprintf(out, "tensors: %zu  parameters: %" PRIu64 "  bytes: %" PRIu64 "  shards: %zu\n",
                ck->n, params, bytes, ck->nshards);
        fprintf(out, "layers: %ld  target modules: %zu (", sum.layers, sum.modules);
        for (int k = 0; k < NLSR_NTARGET_NAMES; k++)
            if (sum.present[k]) fprintf(out, " %s", nlsr_target_names[k]);
        fprintf(out, " )\n");
        if (ck->kind == NLSR_CKPT_PEFT)
            fprintf(out, "lora: r=%d alpha=%g\n", ck->lora_r, ck->lora_alpha);
        return 0;
    }
    int rc = 0;
    cJSON *root = cJSON_CreateObject(), *arr = NULL, *tot = NULL, *tm = NULL;
    if (!root) goto oom;
    cJSON_AddStringToObject(root, "kind", kind);
    cJSON_AddStringToObject(root, "path", ck->path);
    cJSON_AddStringToObject(root, "resolved", nlsr_ckpt_resolved_path(ck));
    if (!(arr = cJSON_AddArrayToObject(root, "tensors"))) goto oom;
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = ck->t[i].t;
        cJSON *o = cJSON_CreateObject(), *s;
        if (!o) goto oom;
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "name", t->name);
        cJSON_AddStringToObject(o, "dtype", nlsr_dtype_name(t->dtype));
        if (!(s = cJSON_AddArrayToObject(o, "shape"))) goto oom;
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(s, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddStringToObject(o, "file", ck->shards[ck->t[i].shard]->path);
        cJSON_AddNumberToObject(o, "offset", (double)ck_tensor_offset(ck, i));
        cJSON_AddNumberToObject(o, "nbytes", (double)(t->end - t->begin));
    }
    if (!(tot = cJSON_AddObjectToObject(root, "totals"))) goto oom;
    cJSON_AddNumberToObject(tot, "tensors", (double)ck->n);
    cJSON_AddNumberToObject(tot, "parameters", (double)params);
    cJSON_AddNumberToObject(tot, "bytes", (double)bytes);
    cJSON_AddNumberToObject(tot, "shards", (double)ck->nshards);
    cJSON_AddNumberToObject(tot, "layers", (double)sum.layers);
    cJSON_AddNumberToObject(tot, "target_tensors", (double)sum.modules);
    if (!(tm = cJSON_AddArrayToObject(tot, "target_modules"))) goto oom;
    for (int k = 0; k < NLSR_NTARGET_NAMES; k++)
        if (sum.present[k]) cJSON_AddItemToArray(tm, cJSON_CreateString(nlsr_target_names[k]));
    if (ck->kind == NLSR_CKPT_PEFT) {
        cJSON *l = cJSON_AddObjectToObject(root, "lora");
        if (!l) goto oom;
        cJSON_AddNumberToObject(l, "r", ck->lora_r);
        cJSON_AddNumberToObject(l, "lora_alpha", ck->lora_alpha);
    }
    char *txt = cJSON_PrintUnformatted(root);
    if (!txt) goto oom;
    fprintf(out, "%s\n", txt);
    free(txt);
    cJSON_Delete(root);
    return rc;
oom:
    cJSON_Delete(root);
    return nlsr_fail(e, -ENOMEM, "out of memory building the inspect JSON");
}

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int rewrite_shard(const st_file *f, const char *dst, nlsr_err *e)
{
    int rc = 0;
    size_t n = f->h.ntensors;
    const st_tensor **ord = calloc(n ? n : 1, sizeof *ord);
    st_wtensor *wt = calloc(n ? n : 1, sizeof *wt);
    unsigned char *buf = malloc(1u << 20);
    st_writer *w = NULL;
    if (!ord || !wt || !buf) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) ord[i] = &f->h.tensors[i];
    /* Keep the source's data order so the rewritten file tiles the same way. */
    qsort(ord, n, sizeof *ord, cmp_begin);
    for (size_t i = 0; i < n; i++)
        wt[i] = (st_wtensor){ord[i]->name, ord[i]->dtype, ord[i]->ndim, ord[i]->shape};
    rc = st_writer_begin(dst, wt, n, f->h.meta, f->h.nmeta, &w, e);
    if (rc < 0) goto done;
    uint64_t size = f->file_size - f->data_start;
    for (uint64_t off = 0; off < size && rc == 0;) {
        size_t m = size - off < (1u << 20) ? (size_t)(size - off) : (1u << 20);
        rc = nlsr_pread_all(f->fd, buf, m, f->data_start + off, f->path, e);
        if (rc == 0) rc = st_writer_write(w, buf, m);
        off += m;
    }
    if (rc == 0) {
        rc = st_writer_commit(w);
        w = NULL;
    }
done:
    st_writer_abort(w);
    free(buf);
    free(wt);
    free(ord);
    return rc;
}

int nlsr_ckpt_rewrite(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *out_dir, int flags)
{
    nlsr_err *e = &ctx->err;
    int force = (flags & NLSR_REWRITE_FORCE) != 0;
    int drop = (flags & NLSR_REWRITE_DROP_OTHER_WEIGHTS) != 0;
    const char *in[1] = {ck->path};
    NLSR_FORWARD(nlsr_out_check(ctx, out_dir, NLSR_OUT_DIR, force, in, 1, NULL));
    /* What the output folder will hold beside the shards, checked before anything is written
     * (src/io/sidefiles.h): the same policy as the realignment jobs. */
    nlsr_sidefiles sf;
    NLSR_FORWARD(nlsr_sidefiles_load(ctx, ck, drop, 0, &sf));
    /* Built in a temporary folder and moved into place when complete, so a failure half-way
     * leaves no folder that looks like a finished checkpoint. */
    char *tmp = NULL;
    int trc = nlsr_tmp_dir(ctx, out_dir, &tmp);
    if (trc < 0) {
        nlsr_sidefiles_free(&sf);
        return trc;
    }
    int rc = 0;
    for (size_t s = 0; s < ck->nshards && rc == 0; s++) {
        char *dst = nlsr_path_join(tmp, ck->shard_names[s]);
        if (!dst) rc = nlsr_fail(e, -ENOMEM, "out of memory");
        else rc = rewrite_shard(ck->shards[s], dst, e);
        free(dst);
    }
    /* Side files (index, config.json, adapter_config.json, tokenizer ...) are copied as they
     * are, when the checkpoint is a folder: a lone .safetensors file's neighbours are not part
     * of it. */
    if (rc == 0) rc = nlsr_sidefiles_copy(ctx, ck, tmp, drop, &sf);
    nlsr_sidefiles_free(&sf);
    if (rc == 0) rc = nlsr_tmp_dir_commit(ctx, tmp, out_dir, force);
    if (rc < 0) nlsr_tmp_remove(tmp);
    free(tmp);
    return rc;
}
