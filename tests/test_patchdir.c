/* SPDX-License-Identifier: Apache-2.0 */
/* The patch file's directory at scale: its memory, writing and reading, does not grow with
 * the block count (a 405B model has about 1.7 million blocks); an older format version is
 * refused with one line saying what to do; a damaged block table is a checksum error;
 * identical patches keep identical fingerprints. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/io/outpath.h"
#include "../src/io/patchfile.h"
#include "../src/jobs/inplace.h"
#include "test.h"

static char root[64];

#define NMOD 8
#define ROWS 256u
#define COLS 1024u
#define NUMEL (ROWS * COLS)

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}

/* The value stored for the masked element of block b of module i: distinct per block, so a
 * block read back from the wrong table record is caught. */
static uint16_t val(size_t i, uint64_t b) { return (uint16_t)(0x3c00u + (i * 977u + b) % 1024u); }

/* NMOD modules of the same shape in blocks of `blk` elements, each block with one masked
 * element (its first + (b mod blk)). Returns the writer's budget peak. */
static uint64_t write_patch(const char *path, uint64_t blk, uint64_t salt)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_pf_writer *w = NULL;
    if (nlsr_pf_writer_open(ctx, path, "full", &w) < 0) abort();
    const uint64_t shape[2] = {ROWS, COLS};
    for (size_t i = 0; i < NMOD; i++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%zu.mlp.down_proj.weight", i);
        nlsr_pf_tensor_desc d = {name, "weight", NLSR_DTYPE_BF16, 1, NLSR_DTYPE_BF16, 2, shape};
        if (nlsr_pf_writer_begin_module(w, name) < 0 || nlsr_pf_writer_begin_tensor(w, &d) < 0)
            abort();
        for (uint64_t b = 0; b * blk < NUMEL; b++) {
            uint64_t idx = b * blk + (b + salt) % blk;
            uint16_t ref = val(i, b), base = (uint16_t)(ref ^ 1u);
            if (nlsr_pf_writer_block(w, b * blk, blk, &idx, 1, &ref, &base) < 0) abort();
        }
        if (nlsr_pf_writer_end_tensor(w) < 0 || nlsr_pf_writer_end_module(w) < 0) abort();
    }
    cJSON *extra = cJSON_CreateObject();
    cJSON_AddObjectToObject(extra, "params");
    if (nlsr_pf_writer_commit(w, extra, NULL) < 0) {
        fprintf(stderr, "%s\n", nlsr_ctx_error(ctx));
        abort();
    }
    cJSON_Delete(extra);
    uint64_t peak = ctx->budget.peak;
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
    return peak;
}

/* Opens the file, reads every block through the directory and checks it; returns the budget
 * peak. */
static uint64_t read_patch(const char *path, uint64_t blk, uint64_t salt)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_pf_reader *r = NULL;
    if (nlsr_pf_open(ctx, path, &r) < 0) {
        FAILF("%s", nlsr_ctx_error(ctx));
        nlsr_ctx_free(ctx);
        return 0;
    }
    ASSERT_EQ_U(r->nmodules, NMOD);
    ASSERT_EQ_U(r->nrecords, NMOD * (NUMEL / blk));
    size_t bad = 0;
    for (size_t i = 0; i < r->nmodules; i++) {
        const nlsr_pf_tensor *t = &r->modules[i].t[0];
        ASSERT_EQ_U(t->nblocks, NUMEL / blk);
        ASSERT_EQ_U(t->mask_count, NUMEL / blk);
        for (size_t b = 0; b < t->nblocks; b++) {
            nlsr_pf_block k;
            nlsr_pf_view v;
            if (nlsr_pf_block_get(r, t, b, &k) < 0 || nlsr_pf_read_block(r, t, b, &v) < 0) {
                FAILF("%s", nlsr_ctx_error(ctx));
                break;
            }
            uint16_t ref, base;
            memcpy(&ref, v.ref, 2);
            memcpy(&base, v.base, 2);
            bad += k.first != b * blk || k.count != blk || v.m != 1 ||
                   v.idx[0] != b * blk + (b + salt) % blk || ref != val(i, b) ||
                   base != (uint16_t)(val(i, b) ^ 1u);
        }
    }
    ASSERT_EQ_U(bad, 0);
    uint64_t peak = ctx->budget.peak;
    nlsr_pf_close(r);
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
    return peak;
}

/* 1x and 16x the blocks over the same modules: the writer's and the reader's budget peaks
 * are equal within a few KiB (the header's digits), where a per-block directory held in
 * memory would grow by about 56 bytes x 15 x 2048 blocks = 1.7 MB (version 1's JSON tree:
 * about 30 MB). */
static void test_dir_memory_constant(void)
{
    char *a = wpath("x1.nlsrp"), *b = wpath("x16.nlsrp");
    uint64_t wa = write_patch(a, 16384, 0), wb = write_patch(b, 1024, 0);
    uint64_t ra = read_patch(a, 16384, 0), rb = read_patch(b, 1024, 0);
    fprintf(stderr, "  budget peak: write %llu / %llu, read %llu / %llu bytes (%u / %u blocks)\n",
            (unsigned long long)wa, (unsigned long long)wb, (unsigned long long)ra,
            (unsigned long long)rb, NMOD * (NUMEL / 16384), NMOD * (NUMEL / 1024));
    ASSERT_TRUE(wa > 0 && ra > 0);
    ASSERT_TRUE(wb <= wa + 4096 && wa <= wb + 4096);
    ASSERT_TRUE(rb <= ra + 4096 && ra <= rb + 4096);
    /* ... and bounded in absolute terms: table chunks, block buffers and the header. */
    ASSERT_TRUE(rb < 512u * 1024u);
    free(a);
    free(b);
}

static char *open_error(const char *path, int *rc)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_pf_reader *r = NULL;
    *rc = nlsr_pf_open(ctx, path, &r);
    char *msg = strdup(nlsr_ctx_error(ctx));
    nlsr_pf_close(r);
    nlsr_ctx_free(ctx);
    return msg;
}

static void poke(const char *path, uint64_t off, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, p, n, (off_t)off) != (ssize_t)n) abort();
    close(fd);
}

static void test_old_version(void)
{
    char *p = wpath("old.nlsrp");
    write_patch(p, 16384, 0);
    const unsigned char v1[4] = {1, 0, 0, 0};
    poke(p, 8, v1, 4);
    int rc = 0;
    char *msg = open_error(p, &rc);
    ASSERT_EQ_I(rc, NLSR_E_FORMAT);
    ASSERT_CONTAINS(msg, p);
    ASSERT_CONTAINS(msg, "version 1 is from an older nlsr: prepare it again");
    ASSERT_TRUE(strchr(msg, '\n') == NULL);
    free(msg);
    free(p);
}

static void test_table_damage(void)
{
    char *p = wpath("damaged.nlsrp");
    write_patch(p, 1024, 0);
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_pf_reader *r = NULL;
    if (nlsr_pf_open(ctx, p, &r) < 0) abort();
    uint64_t at = r->table_off + 56 * 100 + 16; /* record 100's mask_count */
    nlsr_pf_close(r);
    nlsr_ctx_free(ctx);
    unsigned char one = 0x7f;
    poke(p, at, &one, 1);
    int rc = 0;
    char *msg = open_error(p, &rc);
    ASSERT_EQ_I(rc, NLSR_E_CHECKSUM);
    ASSERT_CONTAINS(msg, "block table checksum mismatch");
    free(msg);
    free(p);
}

static uint64_t fingerprint(const char *path)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_pf_reader *r = NULL;
    if (nlsr_pf_open(ctx, path, &r) < 0) abort();
    uint64_t fp = nlsr_patch_fingerprint(r);
    nlsr_pf_close(r);
    nlsr_ctx_free(ctx);
    return fp;
}

static void test_fingerprint(void)
{
    char *a = wpath("fa.nlsrp"), *b = wpath("fb.nlsrp"), *c = wpath("fc.nlsrp");
    write_patch(a, 1024, 0);
    write_patch(b, 1024, 0);
    write_patch(c, 1024, 1); /* one masked index moved in every block */
    ASSERT_TRUE(fingerprint(a) == fingerprint(b));
    ASSERT_TRUE(fingerprint(a) != fingerprint(c));
    free(a);
    free(b);
    free(c);
}

/* ---- scale mode: test_patchdir --scale llama-70b|llama-405b DIR --------------------------
 * The patch directory of a whole model (every target module of every layer in 65,536-element
 * blocks, one masked element each: 1.04 million blocks at 70B, 6.1 million at 405B) written
 * and read back, with the process's peak RSS (VmHWM, reset between the phases) and the
 * budget's peak: the directory's memory at full scale in a minute, without the checkpoints.
 * bench/memscale.sh runs it. */

static uint64_t vm_hwm(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %" SCNu64, &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

static void reset_hwm(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static int scale(const char *preset, const char *dir)
{
    int is405 = strcmp(preset, "llama-405b") == 0;
    uint64_t H = is405 ? 16384 : 8192, I = is405 ? 53248 : 28672, q = is405 ? 16384 : 8192,
             kv = 1024, layers = is405 ? 126 : 80, blk = 65536;
    static const char *const names[7] = {"mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                                         "self_attn.k_proj", "self_attn.o_proj",
                                         "self_attn.q_proj", "self_attn.v_proj"};
    const uint64_t shapes[7][2] = {{H, I}, {I, H}, {I, H}, {kv, H}, {H, q}, {q, H}, {kv, H}};
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-dir.nlsrp", dir, preset);
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_mem_budget(ctx, 512ull << 20);
    reset_hwm();
    nlsr_pf_writer *w = NULL;
    if (nlsr_pf_writer_open(ctx, path, "full", &w) < 0) goto fail;
    /* Module order is bytewise: layer names sort as strings ("10" before "2"). */
    char (*mods)[96] = calloc(layers * 7, sizeof *mods);
    size_t *shp = calloc(layers * 7, sizeof *shp);
    for (uint64_t L = 0; L < layers; L++)
        for (int k = 0; k < 7; k++) {
            snprintf(mods[L * 7 + k], 96, "model.layers.%" PRIu64 ".%s.weight", L, names[k]);
            shp[L * 7 + k] = (size_t)k;
        }
    for (size_t i = 0; i < layers * 7; i++) /* insertion sort by name, carrying the shape */
        for (size_t j = i; j > 0 && strcmp(mods[j - 1], mods[j]) > 0; j--) {
            char t[96];
            memcpy(t, mods[j], 96);
            memcpy(mods[j], mods[j - 1], 96);
            memcpy(mods[j - 1], t, 96);
            size_t u = shp[j];
            shp[j] = shp[j - 1];
            shp[j - 1] = u;
        }
    uint64_t nblocks = 0;
    for (size_t i = 0; i < layers * 7; i++) {
        const uint64_t *sh = shapes[shp[i]];
        nlsr_pf_tensor_desc d = {mods[i], "weight", NLSR_DTYPE_BF16, 1, NLSR_DTYPE_BF16, 2, sh};
        if (nlsr_pf_writer_begin_module(w, mods[i]) < 0 || nlsr_pf_writer_begin_tensor(w, &d) < 0)
            goto fail;
        uint64_t n = sh[0] * sh[1];
        for (uint64_t f = 0; f < n; f += blk, nblocks++) {
            uint64_t c = n - f < blk ? n - f : blk, idx = f + c / 2;
            uint16_t ref = 0x3c00, base = 0x3c01;
            if (nlsr_pf_writer_block(w, f, c, &idx, 1, &ref, &base) < 0) goto fail;
        }
        if (nlsr_pf_writer_end_tensor(w) < 0 || nlsr_pf_writer_end_module(w) < 0) goto fail;
    }
    free(mods);
    free(shp);
    cJSON *extra = cJSON_CreateObject();
    cJSON_AddObjectToObject(extra, "params");
    uint64_t bytes = 0;
    int rc = nlsr_pf_writer_commit(w, extra, &bytes);
    w = NULL;
    cJSON_Delete(extra);
    if (rc < 0) goto fail;
    printf("%s: %" PRIu64 " blocks, patch file %" PRIu64 " bytes\n", preset, nblocks, bytes);
    printf("write: peak RSS %.1f MiB, budget peak %.2f MiB\n", (double)vm_hwm() / 1048576.0,
           (double)ctx->budget.peak / 1048576.0);
    nlsr_ctx_free(ctx);
    ctx = nlsr_ctx_create();
    nlsr_ctx_set_mem_budget(ctx, 512ull << 20);
    reset_hwm();
    nlsr_pf_reader *r = NULL;
    if (nlsr_pf_open(ctx, path, &r) < 0) goto fail;
    uint64_t seen = 0, masked = 0;
    for (size_t i = 0; i < r->nmodules; i++) {
        const nlsr_pf_tensor *t = &r->modules[i].t[0];
        for (size_t b = 0; b < t->nblocks; b++, seen++) {
            nlsr_pf_view v;
            if (nlsr_pf_read_block(r, t, b, &v) < 0) {
                nlsr_pf_close(r);
                goto fail;
            }
            masked += v.m;
        }
    }
    printf("read (open, every block): peak RSS %.1f MiB, budget peak %.2f MiB, %" PRIu64
           " blocks, %" PRIu64 " masked\n",
           (double)vm_hwm() / 1048576.0, (double)ctx->budget.peak / 1048576.0, seen, masked);
    nlsr_pf_close(r);
    nlsr_ctx_free(ctx);
    unlink(path);
    return seen == nblocks && masked == nblocks ? 0 : 1;
fail:
    fprintf(stderr, "%s\n", nlsr_ctx_error(ctx));
    nlsr_pf_writer_abort(w);
    nlsr_ctx_free(ctx);
    unlink(path);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--scale") == 0) return scale(argv[2], argv[3]);
    snprintf(root, sizeof root, "/tmp/nlsr-test-patchdir-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_dir_memory_constant);
    RUN_TEST(test_old_version);
    RUN_TEST(test_table_damage);
    RUN_TEST(test_fingerprint);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
