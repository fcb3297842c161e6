/* SPDX-License-Identifier: Apache-2.0 */
/* Values the destination cannot hold, over tests/data/hf-tiny-llama:
 *
 *  - an aligned model whose reference a + beta (a - b) is finite in its own BF16 but overflows
 *    an F16 fine-tune: refused by `run` under every plan (single pass, recompute, patch file),
 *    by prepare + apply, by apply and run in place, and through the CLI (exit 1, one line);
 *    the same patches on the BF16 fine-tune still apply (the check is the destination's);
 *  - patch files holding NaN or Inf (written through the format's own writer, so every
 *    checksum holds and the value check is what refuses them), full and LoRA, out and in place;
 *  - LoRA: an F32 aligned adapter whose amplified B overflows an F16 fine-tuned adapter.
 *
 * Every refusal: NLSR_E_VALUE, a message naming the file, the tensor, the element and the
 * value, no output folder, no temporary leftovers, every input byte unchanged (in place: the
 * folder's files byte-identical, only the lock file may be new).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/compute/convert.h"
#include "../src/io/checkpoint.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "../src/io/patchfile.h"
#include "nlsr.h"
#include "test.h"
#include "test_files.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif
#ifndef NLSR_CLI
#error "NLSR_CLI must name the nlsr program"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define SFT FX "/sft"
#define ALIGNED FX "/aligned"
#define FT FX "/finetuned"
#define FT16 FX "/finetuned_f16"
#define LORA_AL FX "/lora_align"
#define LORA_FT FX "/lora_finetuned"

/* The element made large: BF16 0x471C is 39936; 39936 + 0.9 (39936 - b) > 65520. */
#define TQ "model.layers.2.self_attn.k_proj.weight"
#define EL 321u
#define BIG_BF16 0x471Cu

static char root[4096];

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}

static char *join(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0) abort();
    return p;
}

static nlsr_ctx *new_ctx(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    return ctx;
}

static void end_ctx(nlsr_ctx *ctx)
{
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
}

static nlsr_ckpt *open_ck(const char *path)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *ck = NULL;
    if (nlsr_ckpt_open(ctx, path, &ck) < 0) {
        fprintf(stderr, "open %s: %s\n", path, nlsr_ctx_error(ctx));
        abort();
    }
    nlsr_ctx_free(ctx);
    return ck;
}

static unsigned char *tensor_bytes(const nlsr_ckpt *ck, const char *name, nlsr_dtype *dt,
                                   uint64_t *numel)
{
    size_t i;
    if (nlsr_ckpt_find(ck, name, &i) != 0) abort();
    nlsr_tensor_info ti;
    nlsr_ckpt_tensor_info(ck, i, &ti);
    unsigned char *b = malloc(ti.nbytes ? ti.nbytes : 1);
    nlsr_err e = {0};
    const st_file *f = ck->shards[ck->t[i].shard];
    if (nlsr_pread_all(f->fd, b, ti.nbytes, ti.offset, f->path, &e) < 0) abort();
    if (dt) *dt = ti.dtype;
    if (numel) *numel = ti.numel;
    return b;
}

/* No "*.nlsr-tmp-*" / "*.nlsr-old-*" leftovers in the work folder. */
static int no_leftovers(void)
{
    DIR *d = opendir(root);
    int ok = 1;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".nlsr-tmp-") || strstr(de->d_name, ".nlsr-old-")) {
            fprintf(stderr, "  leftover %s\n", de->d_name);
            ok = 0;
        }
    if (d) closedir(d);
    return ok;
}

/* ---- folder snapshots: every entry (dot files too) and its bytes --------------------------- */

typedef struct snap {
    size_t n;
    char *name[64];
    unsigned char *data[64];
    size_t len[64];
} snap;

static void snap_take(const char *dir, snap *s)
{
    memset(s, 0, sizeof *s);
    DIR *d = opendir(dir);
    if (!d) abort();
    struct dirent *de;
    while ((de = readdir(d)) && s->n < 64) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *p = join(dir, de->d_name);
        s->name[s->n] = strdup(de->d_name);
        s->data[s->n] = read_all(p, &s->len[s->n]);
        s->n++;
        free(p);
    }
    closedir(d);
}

static void snap_free(snap *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->name[i]);
        free(s->data[i]);
    }
}

/* dir holds exactly s's files with s's bytes; `allowed_new` (or NULL) may have appeared. */
static int snap_same(const char *dir, const snap *s, const char *allowed_new)
{
    snap now;
    snap_take(dir, &now);
    int ok = 1;
    for (size_t i = 0; i < now.n; i++) {
        size_t j = 0;
        while (j < s->n && strcmp(s->name[j], now.name[i])) j++;
        if (j == s->n) {
            if (allowed_new && !strcmp(now.name[i], allowed_new)) continue;
            fprintf(stderr, "  new in %s: %s\n", dir, now.name[i]);
            ok = 0;
        } else if (now.len[i] != s->len[j] || !now.data[i] || !s->data[j] ||
                   memcmp(now.data[i], s->data[j], s->len[j])) {
            fprintf(stderr, "  changed in %s: %s\n", dir, now.name[i]);
            ok = 0;
        }
    }
    for (size_t j = 0; j < s->n; j++) {
        size_t i = 0;
        while (i < now.n && strcmp(s->name[j], now.name[i])) i++;
        if (i == now.n) {
            fprintf(stderr, "  gone from %s: %s\n", dir, s->name[j]);
            ok = 0;
        }
    }
    snap_free(&now);
    return ok;
}

/* ---- inputs written here ------------------------------------------------------------------ */

typedef void (*edit_fn)(const char *name, nlsr_dtype *dt, unsigned char **raw, uint64_t n);

/* Writes every tensor of the single-file checkpoint in src into dst/<file> (side files
 * copied), each passed through edit (which may change its dtype and bytes). */
static void write_edited(const char *src, const char *dst, const char *file, edit_fn edit)
{
    nlsr_ckpt *ck = open_ck(src);
    copy_dir(src, dst);
    char *path = join(dst, file);
    unlink(path);
    st_wtensor *wt = calloc(ck->n, sizeof *wt);
    unsigned char **raw = calloc(ck->n, sizeof *raw);
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = ck->t[i].t;
        nlsr_dtype dt;
        uint64_t n;
        raw[i] = tensor_bytes(ck, t->name, &dt, &n);
        edit(t->name, &dt, &raw[i], n);
        wt[i] = (st_wtensor){t->name, dt, t->ndim, t->shape};
    }
    nlsr_err e = {0};
    st_writer *w = NULL;
    if (st_writer_begin(path, wt, ck->n, NULL, 0, &w, &e) < 0) abort();
    for (size_t i = 0; i < ck->n; i++) {
        const st_tensor *t = ck->t[i].t;
        if (st_writer_write(w, raw[i], t->numel * nlsr_dtype_size(wt[i].dtype)) < 0) abort();
        free(raw[i]);
    }
    if (st_writer_commit(w) < 0) abort();
    free(raw);
    free(wt);
    free(path);
    nlsr_ckpt_free(ck);
}

static void make_big(const char *name, nlsr_dtype *dt, unsigned char **raw, uint64_t n)
{
    (void)n;
    if (strcmp(name, TQ) != 0) return;
    if (*dt != NLSR_DTYPE_BF16) abort();
    uint16_t h = BIG_BF16;
    memcpy(*raw + EL * 2, &h, 2);
}

/* LoRA: element 7 of the first module's B set to 40000 in the F32 aligned adapter; paper
 * amplification makes it 1.9 x 40000 = 76000, finite in F32, Inf in F16. */
#define LORA_B "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
static void make_big_lora(const char *name, nlsr_dtype *dt, unsigned char **raw, uint64_t n)
{
    (void)n;
    if (strcmp(name, LORA_B) != 0) return;
    if (*dt != NLSR_DTYPE_F32) abort();
    float v = 40000.0f;
    memcpy(*raw + 7 * 4, &v, 4);
}

static void to_f16(const char *name, nlsr_dtype *dt, unsigned char **raw, uint64_t n)
{
    (void)name;
    if (*dt != NLSR_DTYPE_F32) abort();
    float *f = malloc(n * 4 + 4);
    nlsr_to_f32(*dt, *raw, f, n);
    unsigned char *h = malloc(n * 2 + 2);
    nlsr_from_f32(NLSR_DTYPE_F16, f, h, n);
    free(f);
    free(*raw);
    *raw = h;
    *dt = NLSR_DTYPE_F16;
}

/* Copies the patch file src to dst through the format's writer (so every checksum is the
 * writer's own), with value k of block 0 of tensor `tensor` replaced by bits (ref values, or
 * base values when base_side; UINT32_MAX: unchanged). Returns the element index of that value. */
static uint64_t poison_patch(const char *src, const char *dst, const char *tensor, size_t k,
                             uint32_t bits, int base_side)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_pf_reader *r = NULL;
    nlsr_pf_writer *w = NULL;
    if (nlsr_pf_open(ctx, src, &r) < 0) abort();
    unlink(dst);
    if (nlsr_pf_writer_open(ctx, dst, r->kind, &w) < 0) abort();
    uint64_t el = UINT64_MAX;
    for (size_t i = 0; i < r->nmodules; i++) {
        const nlsr_pf_module *m = &r->modules[i];
        if (nlsr_pf_writer_begin_module(w, m->name) < 0) abort();
        for (size_t j = 0; j < m->ntensors; j++) {
            const nlsr_pf_tensor *t = &m->t[j];
            nlsr_pf_tensor_desc d = {t->name,      t->role, t->ref_dtype, t->has_base,
                                     t->base_dtype, t->ndim, t->shape};
            if (nlsr_pf_writer_begin_tensor(w, &d) < 0) abort();
            for (size_t b = 0; b < t->nblocks; b++) {
                nlsr_pf_view v;
                if (nlsr_pf_read_block(r, t, b, &v) < 0) abort();
                size_t rs = nlsr_dtype_size(t->ref_dtype), bs = nlsr_dtype_size(t->base_dtype);
                unsigned char *ref = malloc(v.m * rs + 1), *base = malloc(v.m * bs + 1);
                memcpy(ref, v.ref, v.m * rs);
                if (v.base) memcpy(base, v.base, v.m * bs);
                if (b == 0 && !strcmp(t->name, tensor)) {
                    if (k >= v.m) abort();
                    unsigned char *p = base_side ? base + k * bs : ref + k * rs;
                    size_t sz = base_side ? bs : rs;
                    if (bits == UINT32_MAX) {
                        /* a plain copy */
                    } else if (sz == 2) {
                        uint16_t h = (uint16_t)bits;
                        memcpy(p, &h, 2);
                    } else {
                        memcpy(p, &bits, 4);
                    }
                    el = v.idx[k];
                }
                nlsr_pf_block blk;
                if (nlsr_pf_block_get(r, t, b, &blk) < 0) abort();
                if (nlsr_pf_writer_block(w, blk.first, blk.count, v.idx, v.m, ref,
                                         v.base ? base : NULL) < 0)
                    abort();
                free(ref);
                free(base);
            }
            if (nlsr_pf_writer_end_tensor(w) < 0) abort();
        }
        if (nlsr_pf_writer_end_module(w) < 0) abort();
    }
    /* The header's own items (sources, params, model, lora ...) travel unchanged. */
    cJSON *extra = cJSON_CreateObject();
    for (const cJSON *it = r->header->child; it; it = it->next) {
        if (!strcmp(it->string, "format") || !strcmp(it->string, "version") ||
            !strcmp(it->string, "kind") || !strcmp(it->string, "modules"))
            continue;
        cJSON_AddItemToObject(extra, it->string, cJSON_Duplicate(it, 1));
    }
    if (nlsr_pf_writer_commit(w, extra, NULL) < 0) abort();
    cJSON_Delete(extra);
    nlsr_pf_close(r);
    end_ctx(ctx);
    if (el == UINT64_MAX) abort();
    return el;
}

/* ---- jobs --------------------------------------------------------------------------------- */

enum { RUN, PREPARE, APPLY, APPLY_IP, RUN_IP };

static int job(int kind, const char *base, const char *aligned, const char *ft,
               const char *patches, const char *out, nlsr_select_mode mode, char *msg,
               size_t cap)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = mode;
    nlsr_inplace_params ip = NLSR_INPLACE_PARAMS_DEFAULT;
    int rc = kind == RUN       ? nlsr_run(ctx, base, aligned, NULL, ft, out, &p)
             : kind == PREPARE ? nlsr_prepare(ctx, base, aligned, NULL, out, &p)
             : kind == APPLY   ? nlsr_apply(ctx, patches, ft, out, &p)
             : kind == APPLY_IP
                 ? nlsr_apply_inplace(ctx, patches, ft, &p, &ip, NULL)
                 : nlsr_run_inplace(ctx, base, aligned, NULL, ft, &p, &ip, NULL);
    snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    end_ctx(ctx);
    return rc;
}

/* The value the message must name: e_s = a + beta (a - b) in f32, stored as BF16 (the aligned
 * dtype), computed here from the inputs' bits, a = BIG_BF16 at element el of tensor. */
static double es_at(const char *tensor, uint64_t el)
{
    nlsr_ckpt *b = open_ck(SFT);
    nlsr_dtype dt;
    unsigned char *rb = tensor_bytes(b, tensor, &dt, NULL);
    float fb, fa;
    uint16_t ha = BIG_BF16;
    nlsr_to_f32(dt, rb + el * nlsr_dtype_size(dt), &fb, 1);
    nlsr_to_f32(NLSR_DTYPE_BF16, &ha, &fa, 1);
    float d = fa - fb, m = 0.9f * d, e = fa + m;
    uint16_t he = nlsr_f32_to_bf16(e);
    float es = nlsr_bf16_to_f32(he);
    free(rb);
    nlsr_ckpt_free(b);
    /* The premise: finite in BF16, Inf in F16. */
    ASSERT_TRUE(isfinite(es) && isinf(nlsr_f16_to_f32(nlsr_f32_to_f16(es))));
    return es;
}

static double expected_es(void)
{
    return es_at(TQ, EL);
}

static void expect_value_msg(const char *msg, const char *file, const char *tensor,
                             uint64_t el, const char *value)
{
    char buf[64];
    snprintf(buf, sizeof buf, "element %llu", (unsigned long long)el);
    ASSERT_CONTAINS(msg, file);
    ASSERT_CONTAINS(msg, tensor);
    ASSERT_CONTAINS(msg, buf);
    ASSERT_CONTAINS(msg, value);
    ASSERT_TRUE(!strchr(msg, '\n'));
}

static char *big, *fxp, *bigp;

/* The shard of checkpoint dir holding tensor. */
static char *shard_of_tensor(const char *dir, const char *tensor)
{
    nlsr_ckpt *ck = open_ck(dir);
    size_t i;
    if (nlsr_ckpt_find(ck, tensor, &i) != 0) abort();
    char *p = strdup(ck->shards[ck->t[i].shard]->path);
    nlsr_ckpt_free(ck);
    return p;
}

static char *shard_of(const char *dir)
{
    return shard_of_tensor(dir, TQ);
}

static snap s_big, s_ft16, s_sft;

static void check_inputs(void)
{
    ASSERT_TRUE(snap_same(big, &s_big, NULL));
    ASSERT_TRUE(snap_same(FT16, &s_ft16, NULL));
    ASSERT_TRUE(snap_same(SFT, &s_sft, NULL));
    ASSERT_TRUE(no_leftovers());
}

static void setup(void)
{
    big = wpath("aligned_big");
    write_edited(ALIGNED, big, "model.safetensors", make_big);
    fxp = wpath("fx.nlsrp");
    bigp = wpath("big.nlsrp");
    char msg[1100];
    if (job(PREPARE, SFT, ALIGNED, NULL, NULL, fxp, NLSR_SELECT_ADAPTIVE, msg, sizeof msg) ||
        job(PREPARE, SFT, big, NULL, NULL, bigp, NLSR_SELECT_ADAPTIVE, msg, sizeof msg)) {
        fprintf(stderr, "prepare: %s\n", msg);
        abort();
    }
    snap_take(big, &s_big);
    snap_take(FT16, &s_ft16);
    snap_take(SFT, &s_sft);
}

/* run under every plan, and prepare + apply: refused, nothing written. */
static void test_full_overflow(void)
{
    char val[64], msg[1100];
    snprintf(val, sizeof val, "%.9g", expected_es());
    char *out = wpath("out"), *ft_file = shard_of(FT16);
    const char *plans[] = {"single", "recompute", "patch-file"};
    for (int i = 0; i < 3; i++)
        for (int all = 0; all < 2; all++) {
            setenv("NLSR_RUN_PLAN", plans[i], 1);
            int rc = job(RUN, SFT, big, FT16, NULL, out,
                         all ? NLSR_SELECT_ALL : NLSR_SELECT_NONE, msg, sizeof msg);
            unsetenv("NLSR_RUN_PLAN");
            if (rc != NLSR_E_VALUE) FAILF("plan %s: rc %d: %s", plans[i], rc, msg);
            expect_value_msg(msg, ft_file, TQ, EL, val);
            ASSERT_CONTAINS(msg, big);
            ASSERT_CONTAINS(msg, "F16");
            ASSERT_TRUE(!nlsr_exists(out));
            check_inputs();
        }
    ASSERT_EQ_I(job(APPLY, NULL, NULL, FT16, bigp, out, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, ft_file, TQ, EL, val);
    ASSERT_CONTAINS(msg, bigp);
    ASSERT_TRUE(!nlsr_exists(out));
    check_inputs();
    /* The same patches on the BF16 fine-tune: e_s fits, and is what lands there. */
    ASSERT_EQ_I(job(APPLY, NULL, NULL, FT, bigp, out, NLSR_SELECT_ALL, msg, sizeof msg), 0);
    nlsr_ckpt *o = open_ck(out);
    nlsr_dtype dt;
    unsigned char *raw = tensor_bytes(o, TQ, &dt, NULL);
    float got;
    nlsr_to_f32(dt, raw + EL * 2, &got, 1);
    ASSERT_NEAR(got, expected_es(), 0);
    free(raw);
    nlsr_ckpt_free(o);
    (void)nlsr_tree_remove(out);
    free(ft_file);
    free(out);
}

/* In place, apply and run: refused before anything is written; the folder's files unchanged. */
static void test_inplace_overflow(void)
{
    char val[64], msg[1100];
    snprintf(val, sizeof val, "%.9g", expected_es());
    char *ip = wpath("ip_f16");
    copy_dir(FT16, ip);
    snap before;
    snap_take(ip, &before);
    char *ft_file = shard_of(ip);
    ASSERT_EQ_I(job(APPLY_IP, NULL, NULL, ip, bigp, NULL, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, ft_file, TQ, EL, val);
    ASSERT_TRUE(snap_same(ip, &before, ".nlsr.lock"));
    ASSERT_EQ_I(job(RUN_IP, SFT, big, ip, NULL, NULL, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, ft_file, TQ, EL, val);
    ASSERT_TRUE(snap_same(ip, &before, ".nlsr.lock"));
    check_inputs();
    snap_free(&before);
    free(ft_file);
    free(ip);
}

/* An MLP module (22272 elements) is masked in two lanes by run's single pass, the second from
 * element 8192 (realign_run.c mask_split): a value the F16 fine-tune cannot hold there is named
 * as one thread names it, and with one in each half the first is named; out and in place. */
#define MLP "model.layers.1.mlp.up_proj.weight"
static const uint64_t *mlp_els;

static void make_big_mlp(const char *name, nlsr_dtype *dt, unsigned char **raw, uint64_t n)
{
    if (strcmp(name, MLP) != 0) return;
    if (*dt != NLSR_DTYPE_BF16 || n <= 20000) abort();
    uint16_t h = BIG_BF16;
    for (int i = 0; i < 2; i++)
        if (mlp_els[i] != UINT64_MAX) memcpy(*raw + mlp_els[i] * 2, &h, 2);
}

static void test_lanes_overflow(void)
{
    static const uint64_t els[][2] = {{20000, UINT64_MAX}, {300, 20000}, {12000, 21000}};
    char *al = wpath("aligned_big_mlp"), *out = wpath("out_mlp"), *ip = wpath("ip_mlp");
    char *ft_file = shard_of_tensor(FT16, MLP), msg[1100], msg2[1100], val[64];
    for (size_t v = 0; v < sizeof els / sizeof els[0]; v++) {
        mlp_els = els[v];
        (void)nlsr_tree_remove(al);
        write_edited(ALIGNED, al, "model.safetensors", make_big_mlp);
        snprintf(val, sizeof val, "%.9g", es_at(MLP, els[v][0]));
        for (int one = 0; one < 2; one++) {
            if (one) setenv("NLSR_RUN_ONE_THREAD", "1", 1);
            int rc = job(RUN, SFT, al, FT16, NULL, out, NLSR_SELECT_ALL, one ? msg2 : msg,
                         sizeof msg);
            unsetenv("NLSR_RUN_ONE_THREAD");
            ASSERT_EQ_I(rc, NLSR_E_VALUE);
            ASSERT_TRUE(!nlsr_exists(out));
        }
        expect_value_msg(msg, ft_file, MLP, els[v][0], val);
        ASSERT_STR_EQ(msg, msg2);
        copy_dir(FT16, ip);
        snap before;
        snap_take(ip, &before);
        char *ip_file = shard_of_tensor(ip, MLP);
        ASSERT_EQ_I(job(RUN_IP, SFT, al, ip, NULL, NULL, NLSR_SELECT_ALL, msg, sizeof msg),
                    NLSR_E_VALUE);
        expect_value_msg(msg, ip_file, MLP, els[v][0], val);
        ASSERT_TRUE(snap_same(ip, &before, ".nlsr.lock"));
        snap_free(&before);
        free(ip_file);
        (void)nlsr_tree_remove(ip);
        check_inputs();
    }
    (void)nlsr_tree_remove(al);
    free(ft_file);
    free(al);
    free(out);
    free(ip);
}

/* NaN and Inf in a patch file whose checksums hold: refused by apply, out and in place. */
static void test_poisoned_patch(void)
{
    struct {
        uint32_t bits;
        int base_side;
        const char *value;
    } cases[] = {{0x7FC0, 0, "nan"}, {0xFF80, 0, "-inf"}, {0x7F80, 1, "inf"}};
    char *bad = wpath("poisoned.nlsrp"), *out = wpath("out"), *ip = wpath("ip_bf16");
    copy_dir(FT, ip);
    snap before;
    snap_take(ip, &before);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint64_t el = poison_patch(fxp, bad, TQ, 3, cases[c].bits, cases[c].base_side);
        char msg[1100];
        ASSERT_EQ_I(job(APPLY, NULL, NULL, FT, bad, out, NLSR_SELECT_ALL, msg, sizeof msg),
                    NLSR_E_VALUE);
        expect_value_msg(msg, bad, TQ, el, cases[c].value);
        ASSERT_CONTAINS(msg, "patch file");
        ASSERT_TRUE(!nlsr_exists(out));
        ASSERT_EQ_I(job(APPLY_IP, NULL, NULL, ip, bad, NULL, NLSR_SELECT_ALL, msg, sizeof msg),
                    NLSR_E_VALUE);
        expect_value_msg(msg, bad, TQ, el, cases[c].value);
        ASSERT_TRUE(snap_same(ip, &before, ".nlsr.lock"));
        ASSERT_TRUE(no_leftovers());
    }
    /* The rewrite itself is sound: an unpoisoned copy applies to the same bytes. */
    poison_patch(fxp, bad, TQ, 3, UINT32_MAX, 0);
    char msg[1100], *out2 = wpath("out2");
    ASSERT_EQ_I(job(APPLY, NULL, NULL, FT, bad, out, NLSR_SELECT_ALL, msg, sizeof msg), 0);
    ASSERT_EQ_I(job(APPLY, NULL, NULL, FT, fxp, out2, NLSR_SELECT_ALL, msg, sizeof msg), 0);
    ASSERT_TRUE(folders_equal(out, out2));
    (void)nlsr_tree_remove(out);
    (void)nlsr_tree_remove(out2);
    free(out2);
    snap_free(&before);
    free(ip);
    free(bad);
    free(out);
}

/* LoRA: an F16 fine-tuned adapter, the amplified F32 reference overflowing it. */
static void test_lora(void)
{
    char *al = wpath("lora_al_big"), *ft = wpath("lora_ft_f16"), *out = wpath("out");
    char *lp = wpath("lora_big.nlsrp"), *lok = wpath("lora.nlsrp"), *bad = wpath("lora_bad.nlsrp");
    write_edited(LORA_AL, al, "adapter_model.safetensors", make_big_lora);
    write_edited(LORA_FT, ft, "adapter_model.safetensors", to_f16);
    char *ft_file = join(ft, "adapter_model.safetensors");
    snap sa, sf;
    snap_take(al, &sa);
    snap_take(ft, &sf);
    char msg[1100];
    /* The F16 adapter realigns from the unchanged aligned adapter. */
    ASSERT_EQ_I(job(RUN, NULL, LORA_AL, ft, NULL, out, NLSR_SELECT_ALL, msg, sizeof msg), 0);
    (void)nlsr_tree_remove(out);
    ASSERT_EQ_I(job(RUN, NULL, al, ft, NULL, out, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, ft_file, LORA_B, 7, "realigned value 7");
    ASSERT_CONTAINS(msg, "F16");
    ASSERT_TRUE(!nlsr_exists(out));
    ASSERT_EQ_I(job(PREPARE, NULL, al, NULL, NULL, lp, NLSR_SELECT_ALL, msg, sizeof msg), 0);
    ASSERT_EQ_I(job(APPLY, NULL, NULL, ft, lp, out, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, ft_file, LORA_B, 7, "realigned value 7");
    ASSERT_TRUE(!nlsr_exists(out));
    ASSERT_EQ_I(job(APPLY_IP, NULL, NULL, ft, lp, NULL, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, ft_file, LORA_B, 7, "realigned value 7");
    ASSERT_TRUE(snap_same(ft, &sf, ".nlsr.lock"));
    /* A LoRA patch file with NaN (F32 values). */
    ASSERT_EQ_I(job(PREPARE, NULL, LORA_AL, NULL, NULL, lok, NLSR_SELECT_ALL, msg, sizeof msg), 0);
    uint64_t el = poison_patch(lok, bad, LORA_B, 2, 0x7FC00000u, 0);
    ASSERT_EQ_I(job(APPLY, NULL, NULL, ft, bad, out, NLSR_SELECT_ALL, msg, sizeof msg),
                NLSR_E_VALUE);
    expect_value_msg(msg, bad, LORA_B, el, "nan");
    ASSERT_TRUE(!nlsr_exists(out));
    ASSERT_TRUE(snap_same(al, &sa, NULL));
    ASSERT_TRUE(snap_same(ft, &sf, ".nlsr.lock"));
    ASSERT_TRUE(no_leftovers());
    snap_free(&sa);
    snap_free(&sf);
    free(ft_file);
    free(al);
    free(ft);
    free(out);
    free(lp);
    free(lok);
    free(bad);
}

/* The program: exit 1, one line on stderr naming the tensor and the value, nothing on stdout. */
static void test_cli(void)
{
    char *out = wpath("out"), *err = wpath("cli.err"), *cmd = NULL;
    if (asprintf(&cmd, "'%s' run --base '%s' --aligned '%s' --finetuned '%s' --out '%s' "
                       ">'%s.out' 2>'%s'",
                 NLSR_CLI, SFT, big, FT16, out, err, err) < 0)
        abort();
    int st = system(cmd);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    size_t n = 0;
    char *text = (char *)read_all(err, &n);
    ASSERT_TRUE(text != NULL);
    if (text) {
        char *t = realloc(text, n + 1);
        text = t;
        text[n] = '\0';
        char val[64];
        snprintf(val, sizeof val, "%.9g", expected_es());
        ASSERT_TRUE(n > 0 && text[n - 1] == '\n' && strchr(text, '\n') == text + n - 1);
        ASSERT_CONTAINS(text, TQ);
        ASSERT_CONTAINS(text, val);
    }
    char *so = NULL;
    if (asprintf(&so, "%s.out", err) < 0) abort();
    size_t no = 1;
    free(read_all(so, &no));
    ASSERT_EQ_U(no, 0);
    ASSERT_TRUE(!nlsr_exists(out));
    check_inputs();
    free(so);
    free(text);
    free(cmd);
    free(err);
    free(out);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/nlsr-test-overflow-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    setup();
    RUN_TEST(test_full_overflow);
    RUN_TEST(test_inplace_overflow);
    RUN_TEST(test_lanes_overflow);
    RUN_TEST(test_poisoned_patch);
    RUN_TEST(test_lora);
    RUN_TEST(test_cli);
    snap_free(&s_big);
    snap_free(&s_ft16);
    snap_free(&s_sft);
    free(big);
    free(fxp);
    free(bigp);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
