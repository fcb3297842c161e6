/* SPDX-License-Identifier: Apache-2.0 */
/* The patch file's directory at scale: its memory, writing and reading, does not grow with
 * the block count (a 405B model has about 1.7 million blocks); an older format version is
 * refused with one line saying what to do; a damaged block table is a checksum error;
 * identical patches keep identical fingerprints. */
#define _GNU_SOURCE
#include <errno.h>
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

int main(void)
{
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
