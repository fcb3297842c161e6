/* SPDX-License-Identifier: Apache-2.0 */
/* In-place realignment, the undo journal, rollback, the lock and the state file, on
 * tests/data/hf-tiny-llama:
 *
 *  - in place == --out bit for bit (BF16 default and --select all against expected/ sha256s,
 *    F16, streamed under a small budget, LoRA run and apply); only patched tensors' bytes
 *    change, headers and sizes stay;
 *  - SIGKILL at every fault point of an in-place apply (NLSR_TEST_KILL_AFTER_WRITES, every
 *    other one a torn write), at sampled points of LoRA apply and of run, and at every point
 *    of a rollback: rollback gives the original bytes back, a fresh run then the uninterrupted
 *    result; an interrupted journal makes run/apply refuse;
 *  - a full disk while journaling (tmpfs), read-only files and file systems, a held lock,
 *    damaged journals (truncated, bad checksums, bad preamble, torn slot, garbage tail),
 *    symbolic and hard links: clear errors, nothing lost;
 *  - the state file: the same realignment is a no-op, another is refused unless force (which
 *    rolls back first, or stacks when the journal was discarded), changed files are noticed;
 *  - dry runs write nothing.
 * Mount-based cases run as CTest entries of their own (test_inplace NAME), skipped (exit 77)
 * where mount(2) is not permitted.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/io/checkpoint.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "../src/io/journal.h"
#include "../src/io/patchfile.h" /* nlsr_xxh64 */
#include "../src/jobs/inplace.h"
#include "../src/jobs/realign_full.h"
#include "nlsr.h"
#include "test.h"
#include "test_files.h"
#include "test_sha256.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define FT FX "/finetuned"
#define LORA_FT FX "/lora_finetuned"
/* Bytes per journal record in the kill tests: several records per tensor, many fault points. */
#define KILL_RECORD "16384"

static char root[4096];
static char *patches, *lora_patches, *ref_default, *ref_all, *ref_lora;

/* ---- helpers ------------------------------------------------------------------------------ */

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


static void write_all(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, buf, len) != (ssize_t)len) abort();
    close(fd);
}



/* Only the lock file is left of nlsr's own files: no journal, state or temporary files. */
static int only_lock_left(const char *dir)
{
    int ok = 1;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] == '.' && strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
            strcmp(de->d_name, ".nlsr.lock")) {
            fprintf(stderr, "  left in %s: %s\n", dir, de->d_name);
            ok = 0;
        }
    if (d) closedir(d);
    return ok;
}

static nlsr_ctx *new_ctx(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    return ctx;
}

/* Every job must give back all it charged to the budget. */
static void end_ctx(nlsr_ctx *ctx)
{
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
}

static nlsr_realign_params params(nlsr_select_mode mode, int force)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = mode;
    p.force = force;
    return p;
}

/* apply --in-place with the full patches; *msg gets the error message (may be NULL). */
static int apply_ip(const char *patch, const char *dir, nlsr_select_mode mode, int force,
                    const nlsr_inplace_params *ip, nlsr_inplace_result *res, char *msg,
                    size_t cap)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = params(mode, force);
    nlsr_inplace_result local;
    int rc = nlsr_apply_inplace(ctx, patch, dir, &p, ip, res ? res : &local);
    if (msg) snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    if (rc < 0 && !msg) fprintf(stderr, "  apply in place %s: %s\n", dir, nlsr_ctx_error(ctx));
    end_ctx(ctx);
    return rc;
}

static int rollback(const char *dir, int force, int discard, nlsr_inplace_result *res, char *msg,
                    size_t cap)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_rollback_params rp = {.force = force, .discard = discard};
    nlsr_inplace_result local;
    int rc = nlsr_rollback(ctx, dir, &rp, res ? res : &local);
    if (msg) snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    if (rc < 0 && !msg) fprintf(stderr, "  rollback %s: %s\n", dir, nlsr_ctx_error(ctx));
    end_ctx(ctx);
    return rc;
}

/* run --in-place on the fixture; plan: NLSR_RUN_PLAN ("single", "recompute", "patch-file",
 * "rows", "rows-recompute") or
 * NULL for the job's own choice; budget 0: none. */
static int run_ip(const char *dir, const char *plan, nlsr_select_mode mode, int force,
                  uint64_t budget, nlsr_inplace_result *res, char *msg, size_t cap)
{
    if (plan) setenv("NLSR_RUN_PLAN", plan, 1);
    else unsetenv("NLSR_RUN_PLAN");
    nlsr_ctx *ctx = new_ctx();
    if (budget) nlsr_ctx_set_mem_budget(ctx, budget);
    nlsr_realign_params p = params(mode, force);
    nlsr_inplace_result local;
    int rc = nlsr_run_inplace(ctx, FX "/sft", FX "/aligned", NULL, dir, &p, NULL,
                              res ? res : &local);
    if (msg) snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    if (rc < 0 && !msg) fprintf(stderr, "  run in place %s: %s\n", dir, nlsr_ctx_error(ctx));
    if (budget) ASSERT_TRUE(nlsr_ctx_mem_peak(ctx) <= budget);
    end_ctx(ctx);
    unsetenv("NLSR_RUN_PLAN");
    return rc;
}

static int journal_state(const char *dir)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_journal_info ji;
    int rc = nlsr_journal_inspect(ctx, dir, &ji);
    int s = rc < 0 ? -1 : (int)ji.state;
    nlsr_journal_info_free(&ji);
    nlsr_ctx_free(ctx);
    return s;
}

static cJSON *load_json(const char *path)
{
    size_t n = 0;
    unsigned char *t = read_all(path, &n);
    cJSON *j = t ? cJSON_ParseWithLength((const char *)t, n) : NULL;
    free(t);
    return j;
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

static unsigned char *tensor_bytes(const nlsr_ckpt *ck, size_t i, uint64_t *n)
{
    nlsr_tensor_info ti;
    nlsr_ckpt_tensor_info(ck, i, &ti);
    unsigned char *b = malloc(ti.nbytes ? ti.nbytes : 1);
    nlsr_err e = {0};
    const st_file *f = ck->shards[ck->t[i].shard];
    if (nlsr_pread_all(f->fd, b, ti.nbytes, ti.offset, f->path, &e) < 0) abort();
    *n = ti.nbytes;
    return b;
}

/* The realigned folder against an expected/ file: every target tensor's sha256, and the only
 * tensors whose bytes differ from the fine-tune's are the patched ones; headers, sizes and the
 * bytes between tensors are untouched. */
static void check_expected(const char *dir, const char *exp_path)
{
    cJSON *exp = load_json(exp_path);
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(exp, "modules");
    ASSERT_TRUE(cJSON_IsObject(mods));
    nlsr_ckpt *a = open_ck(FT), *b = open_ck(dir);
    ASSERT_EQ_U(a->n, b->n);
    ASSERT_EQ_U(a->nshards, b->nshards);
    for (size_t k = 0; k < a->nshards && k < b->nshards; k++) {
        ASSERT_EQ_U(a->shards[k]->file_size, b->shards[k]->file_size);
        ASSERT_EQ_U(a->shards[k]->data_start, b->shards[k]->data_start);
        size_t hs = (size_t)a->shards[k]->data_start;
        unsigned char *x = malloc(hs), *y = malloc(hs);
        nlsr_err e = {0};
        if (nlsr_pread_all(a->shards[k]->fd, x, hs, 0, "a", &e) < 0 ||
            nlsr_pread_all(b->shards[k]->fd, y, hs, 0, "b", &e) < 0)
            abort();
        ASSERT_TRUE(memcmp(x, y, hs) == 0);
        free(x);
        free(y);
    }
    int checked = 0;
    for (size_t i = 0; i < a->n && i < b->n; i++) {
        uint64_t na, nb;
        unsigned char *x = tensor_bytes(a, i, &na), *y = tensor_bytes(b, i, &nb);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(mods, a->t[i].t->name);
        int changed = na != nb || memcmp(x, y, na) != 0;
        if (m) {
            char hex[65];
            sha256_hex(y, nb, hex);
            ASSERT_STR_EQ(hex, cJSON_GetObjectItemCaseSensitive(m, "sha256_after")->valuestring);
            if (changed) ASSERT_TRUE(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "patched")));
            checked++;
        } else if (changed) {
            FAILF("tensor %s changed but is no target", a->t[i].t->name);
        }
        free(x);
        free(y);
    }
    ASSERT_EQ_I(checked, cJSON_GetArraySize(mods));
    nlsr_ckpt_free(a);
    nlsr_ckpt_free(b);
    cJSON_Delete(exp);
}

/* ---- setup -------------------------------------------------------------------------------- */

static void setup(void)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
    patches = wpath("full.nlsrp");
    lora_patches = wpath("lora.nlsrp");
    ref_default = wpath("ref_default");
    ref_all = wpath("ref_all");
    ref_lora = wpath("ref_lora");
    int rc = nlsr_prepare(ctx, FX "/sft", FX "/aligned", NULL, patches, &p);
    if (rc == 0) rc = nlsr_apply(ctx, patches, FT, ref_default, &p);
    nlsr_realign_params pa = params(NLSR_SELECT_ALL, 0);
    if (rc == 0) rc = nlsr_apply(ctx, patches, FT, ref_all, &pa);
    nlsr_realign_params pl = params(NLSR_SELECT_ALL, 0);
    pl.amplify = NLSR_AMPLIFY_AUTHORS;
    if (rc == 0) rc = nlsr_prepare(ctx, NULL, FX "/lora_align", NULL, lora_patches, &pl);
    if (rc == 0) rc = nlsr_apply(ctx, lora_patches, LORA_FT, ref_lora, &pl);
    if (rc < 0) {
        fprintf(stderr, "setup: %s\n", nlsr_ctx_error(ctx));
        exit(1);
    }
    nlsr_ctx_free(ctx);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_matches_out(void)
{
    char *d = wpath("match");
    nlsr_inplace_result r;
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_REALIGNED);
    ASSERT_EQ_U(r.modules, 21);
    ASSERT_TRUE(r.patched > 0 && r.patched < 21);
    ASSERT_TRUE(folders_equal(d, ref_default));
    check_expected(d, FX "/expected/full_bf16_adaptive_paper_seed42.json");
    /* The journal holds a complete undo record; the state names it. */
    ASSERT_EQ_I(journal_state(d), NLSR_JOURNAL_COMPLETE);
    char *sp = join(d, NLSR_STATE_NAME);
    cJSON *st = load_json(sp);
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(st, "key")->valuestring, r.key);
    ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(st, "result")->valuestring, r.result);
    ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(st, "previous")));
    cJSON_Delete(st);
    free(sp);

    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_U(r.patched, 21);
    ASSERT_TRUE(folders_equal(d, ref_all));
    check_expected(d, FX "/expected/full_bf16_all.json");

    /* Streamed: a budget too small to keep the fine-tune's targets between the passes. */
    copy_dir(FT, d);
    nlsr_ctx *ctx = new_ctx();
    nlsr_ctx_set_mem_budget(ctx, 1536u << 10);
    nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
    ASSERT_EQ_I(nlsr_apply_inplace(ctx, patches, d, &p, NULL, &r), 0);
    if (r.outcome != NLSR_INPLACE_REALIGNED) fprintf(stderr, "  %s\n", nlsr_ctx_error(ctx));
    ASSERT_TRUE(nlsr_ctx_mem_peak(ctx) <= (1536u << 10));
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(d, ref_default));

    /* F16 fine-tune: transplanted values are converted as for --out. */
    char *f16 = wpath("match_f16"), *f16ref = wpath("match_f16_ref");
    copy_dir(FX "/finetuned_f16", f16);
    ctx = new_ctx();
    ASSERT_EQ_I(nlsr_apply(ctx, patches, FX "/finetuned_f16", f16ref, &p), 0);
    end_ctx(ctx);
    ASSERT_EQ_I(apply_ip(patches, f16, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(f16, f16ref));

    /* LoRA: apply and run in place both give --out's adapter. */
    char *l = wpath("match_lora");
    copy_dir(LORA_FT, l);
    ASSERT_EQ_I(apply_ip(lora_patches, l, NLSR_SELECT_ALL, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_U(r.modules, 21);
    ASSERT_EQ_U(r.patched, 21);
    ASSERT_TRUE(folders_equal(l, ref_lora));
    char *lf = join(l, "adapter_model.safetensors");
    ASSERT_TRUE(files_equal(FX "/authors/adaptive_all/adapter_model.safetensors", lf));
    free(lf);
    copy_dir(LORA_FT, l);
    ctx = new_ctx();
    nlsr_realign_params pl = params(NLSR_SELECT_ALL, 0);
    pl.amplify = NLSR_AMPLIFY_AUTHORS;
    ASSERT_EQ_I(nlsr_run_inplace(ctx, NULL, FX "/lora_align", NULL, l, &pl, NULL, &r), 0);
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(l, ref_lora));
    ASSERT_EQ_I(journal_state(l), NLSR_JOURNAL_COMPLETE); /* journal and state stay */
    /* run and prepare + apply have one key: apply after run is a no-op. */
    ASSERT_EQ_I(apply_ip(lora_patches, l, NLSR_SELECT_ALL, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);

    /* run in place on full weights. */
    copy_dir(FT, d);
    ctx = new_ctx();
    ASSERT_EQ_I(nlsr_run_inplace(ctx, FX "/sft", FX "/aligned", NULL, d, &p, NULL, &r), 0);
    end_ctx(ctx);
    ASSERT_TRUE(folders_equal(d, ref_default));
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
    free(l);
    free(f16);
    free(f16ref);
    free(d);
}

static uint64_t rd64(const unsigned char *p);

/* In the realigned folder d, tensor `name`: the file offset of its first element the
 * realignment changed and of the first it left as it was in the same 4 KiB grain. */
static const char *changed_and_same(const char *d, const char *name, uint64_t *changed,
                                    uint64_t *same)
{
    static char file[4096];
    nlsr_ckpt *ck = open_ck(d), *fk = open_ck(FT);
    size_t ti, fi;
    ASSERT_EQ_I(nlsr_ckpt_find(ck, name, &ti), 0);
    ASSERT_EQ_I(nlsr_ckpt_find(fk, name, &fi), 0);
    uint64_t n = 0, n2 = 0;
    unsigned char *now = tensor_bytes(ck, ti, &n), *was = tensor_bytes(fk, fi, &n2);
    ASSERT_TRUE(n == n2 && n > 0);
    nlsr_tensor_info inf;
    nlsr_ckpt_tensor_info(ck, ti, &inf);
    size_t w = nlsr_dtype_size(inf.dtype);
    uint64_t c = UINT64_MAX, u = UINT64_MAX;
    for (uint64_t i = 0; i + w <= n && c == UINT64_MAX; i += w)
        if (memcmp(now + i, was + i, w) != 0) c = i;
    ASSERT_TRUE(c != UINT64_MAX);
    uint64_t g = (inf.offset + c) / NLSR_JOURNAL_GRAIN * NLSR_JOURNAL_GRAIN;
    for (uint64_t i = 0; i + w <= n && u == UINT64_MAX; i += w)
        if (memcmp(now + i, was + i, w) == 0 && (inf.offset + i) / NLSR_JOURNAL_GRAIN *
                                                        NLSR_JOURNAL_GRAIN == g)
            u = i;
    ASSERT_TRUE(u != UINT64_MAX);
    *changed = inf.offset + c;
    *same = inf.offset + u;
    snprintf(file, sizeof file, "%s", inf.file);
    free(now);
    free(was);
    nlsr_ckpt_free(ck);
    nlsr_ckpt_free(fk);
    return file;
}

static void test_state_and_force(void)
{
    char *d = wpath("state");
    char msg[1024];
    nlsr_inplace_result r, r2;
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r2, NULL, 0), 0);
    ASSERT_EQ_I(r2.outcome, NLSR_INPLACE_ALREADY);
    ASSERT_STR_EQ(r2.key, r.key);
    ASSERT_STR_EQ(r2.result, r.result);
    ASSERT_EQ_U(r2.patched, r.patched);
    ASSERT_TRUE(folders_equal(d, ref_default));
    /* Another realignment is refused, and nothing changes. */
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r2, msg, sizeof msg), NLSR_E_EXISTS);
    ASSERT_CONTAINS(msg, "--force");
    ASSERT_TRUE(folders_equal(d, ref_default));
    /* --force rolls the recorded one back first. */
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 1, NULL, &r2, NULL, 0), 0);
    ASSERT_EQ_I(r2.outcome, NLSR_INPLACE_REALIGNED);
    ASSERT_TRUE(r2.rolled_back_first);
    ASSERT_TRUE(folders_equal(d, ref_all));
    /* Changed files: the record no longer describes them. */
    char *sh = join(d, "model-00002-of-00003.safetensors");
    struct timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
    ASSERT_EQ_I(utimensat(AT_FDCWD, sh, ts, 0), 0);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r2, msg, sizeof msg),
                NLSR_E_MISMATCH);
    ASSERT_CONTAINS(msg, "model-00002-of-00003.safetensors was modified");
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 1, NULL, &r2, NULL, 0), 0);
    ASSERT_EQ_I(r2.outcome, NLSR_INPLACE_REALIGNED);
    ASSERT_TRUE(folders_equal(d, ref_all)); /* the transplant is idempotent under --select all */
    ASSERT_EQ_I(rollback(d, 0, 0, &r2, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(d, ref_all));
    ASSERT_TRUE(only_lock_left(d));
    /* A rollback of a finished realignment whose bytes changed since is refused; --force
     * restores the originals of the elements the realignment changed. */
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r2, NULL, 0), 0);
    uint64_t el_changed, el_same;
    const char *file = changed_and_same(d, "model.layers.1.mlp.up_proj.weight", &el_changed,
                                        &el_same);
    int fd = open(file, O_WRONLY);
    ASSERT_EQ_I(pwrite(fd, "\x01\x02", 2, (off_t)el_changed), 2);
    close(fd);
    ASSERT_EQ_I(rollback(d, 0, 0, &r2, msg, sizeof msg), NLSR_E_MISMATCH);
    ASSERT_CONTAINS(msg, "changed after the realignment finished");
    ASSERT_EQ_I(journal_state(d), NLSR_JOURNAL_COMPLETE);
    ASSERT_EQ_I(rollback(d, 1, 0, &r2, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(d, FT));
    /* An element the realignment left as it was, changed since: the journal (version 2) does
     * not hold its original, so even --force refuses, and writes nothing. */
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r2, NULL, 0), 0);
    unsigned char keep[2];
    fd = open(file, O_RDWR);
    ASSERT_EQ_I(pread(fd, keep, 2, (off_t)el_same), 2);
    unsigned char poke[2] = {(unsigned char)(keep[0] ^ 1), keep[1]};
    ASSERT_EQ_I(pwrite(fd, poke, 2, (off_t)el_same), 2);
    char *snap = wpath("state_snap");
    copy_dir(d, snap);
    for (int force = 0; force < 2; force++) {
        ASSERT_EQ_I(rollback(d, force, 0, &r2, msg, sizeof msg), NLSR_E_MISMATCH);
        ASSERT_CONTAINS(msg, force ? "holds only the elements" : "changed after the realignment");
        ASSERT_TRUE(folders_equal(d, snap));
        ASSERT_EQ_I(journal_state(d), NLSR_JOURNAL_COMPLETE);
    }
    ASSERT_EQ_I(pwrite(fd, keep, 2, (off_t)el_same), 2);
    close(fd);
    ASSERT_EQ_I(rollback(d, 0, 0, &r2, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(d, FT));
    free(snap);
    free(sh);
    free(d);
}

static void test_rollback_discard_stack(void)
{
    char *d = wpath("stack");
    char msg[1024];
    nlsr_inplace_result r;
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ROLLED_BACK);
    ASSERT_TRUE(r.ranges > 0);
    ASSERT_TRUE(folders_equal(d, FT));
    ASSERT_TRUE(only_lock_left(d));
    ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_NOTHING);
    /* Discard: the realignment stays, without undo. */
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(rollback(d, 0, 1, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_DISCARDED);
    ASSERT_EQ_I(journal_state(d), NLSR_JOURNAL_NONE);
    ASSERT_TRUE(folders_equal(d, ref_default));
    ASSERT_EQ_I(rollback(d, 0, 0, &r, msg, sizeof msg), NLSR_E_NOTFOUND);
    ASSERT_CONTAINS(msg, "cannot be undone");
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
    /* Without a journal, --force stacks the new one on top. */
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r, msg, sizeof msg), NLSR_E_EXISTS);
    ASSERT_CONTAINS(msg, "on top");
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 1, NULL, &r, NULL, 0), 0);
    ASSERT_TRUE(r.stacked);
    ASSERT_TRUE(folders_equal(d, ref_all));
    /* Its rollback goes back to the realignment below, which the state records again. */
    ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(d, ref_default));
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
    free(d);
}

static void test_dry_run(void)
{
    char *d = wpath("dry");
    nlsr_inplace_result r;
    nlsr_inplace_params ip = {.dry_run = 1};
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, &ip, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_WOULD_REALIGN);
    ASSERT_EQ_U(r.modules, 21);
    ASSERT_TRUE(r.bytes_written > 0);
    ASSERT_TRUE(folders_equal(d, FT));
    char *lock = join(d, ".nlsr.lock");
    ASSERT_TRUE(!nlsr_exists(lock)); /* a dry run creates nothing, not even the lock file */
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, &ip, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_WOULD_SKIP);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 1, &ip, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_WOULD_REALIGN);
    ASSERT_TRUE(r.rolled_back_first);
    ASSERT_TRUE(folders_equal(d, ref_default)); /* the dry --force rolled nothing back */
    free(lock);
    free(d);
}

/* ---- run --in-place in one pass ------------------------------------------------------------ */

/* The state file's string field k, or "" (a copy in buf). */
static const char *state_str(const char *dir, const char *k, char *buf, size_t cap)
{
    char *sp = join(dir, NLSR_STATE_NAME);
    cJSON *st = load_json(sp);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(st, k);
    snprintf(buf, cap, "%s", cJSON_IsString(v) ? v->valuestring : cJSON_IsNull(v) ? "null" : "");
    cJSON_Delete(st);
    free(sp);
    return buf;
}

/* Every plan of run in place (single pass with patches kept, single pass recomputing them,
 * prepare + apply, the job's own choice with no budget and with a tight one, within which it
 * stays) gives --out's bytes and one key, which apply --in-place with patches of any block size
 * shares. (On this fixture the single pass fits wherever prepare + apply does: the histograms
 * dominate both.) */
static void test_run_plans(void)
{
    static const struct {
        const char *plan;
        uint64_t budget;
        int patch_file;
    } plans[] = {{"single", 0, 0},         {"recompute", 0, 0}, {"patch-file", 0, 1},
                 {"rows", 0, 0},           {"rows-recompute", 0, 0}, {NULL, 0, 0},
                 {NULL, 4608u << 10, 0},   {NULL, 3u << 20, 0}};
    char *d = wpath("plans");
    char key[32] = "", buf[64];
    for (size_t i = 0; i < sizeof plans / sizeof plans[0]; i++) {
        nlsr_inplace_result r;
        copy_dir(FT, d);
        ASSERT_EQ_I(run_ip(d, plans[i].plan, NLSR_SELECT_ADAPTIVE, 0, plans[i].budget, &r, NULL,
                           0),
                    0);
        ASSERT_EQ_I(r.outcome, NLSR_INPLACE_REALIGNED);
        ASSERT_TRUE(folders_equal(d, ref_default));
        check_expected(d, FX "/expected/full_bf16_adaptive_paper_seed42.json");
        ASSERT_TRUE(r.patched > 0 && r.patched_bytes > 0 && r.bytes_written > 0);
        ASSERT_TRUE(r.bytes_written <= r.patched_bytes);
        /* Which path ran: only prepare + apply records a patch file. */
        ASSERT_EQ_I(strcmp(state_str(d, "patch_fingerprint", buf, sizeof buf), "null") != 0,
                    plans[i].patch_file);
        if (!key[0]) snprintf(key, sizeof key, "%s", r.key);
        ASSERT_STR_EQ(r.key, key);
        ASSERT_STR_EQ(state_str(d, "key", buf, sizeof buf), key);
        /* The same realignment again, by run or by apply: nothing to do. */
        ASSERT_EQ_I(run_ip(d, plans[i].plan, NLSR_SELECT_ADAPTIVE, 0, plans[i].budget, &r, NULL,
                           0),
                    0);
        ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
        ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
        ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
        ASSERT_TRUE(folders_equal(d, ref_default));
    }
    /* Small budgets: each either realigns (the single pass whole or in row blocks, within the
     * budget: run_ip checks the peak) or is refused up front saying the least budget, the
     * folder untouched. */
    int ran = 0, refused = 0;
    for (uint64_t b = 1u << 20; b <= (6u << 20); b += 192u << 10) {
        nlsr_inplace_result r;
        char msg[1100];
        copy_dir(FT, d);
        int rc = run_ip(d, NULL, NLSR_SELECT_ADAPTIVE, 0, b, &r, msg, sizeof msg);
        if (rc == 0) {
            ASSERT_EQ_I(r.outcome, NLSR_INPLACE_REALIGNED);
            ASSERT_TRUE(folders_equal(d, ref_default));
            ASSERT_STR_EQ(r.key, key);
            ran++;
        } else {
            ASSERT_EQ_I(rc, NLSR_E_BUDGET);
            ASSERT_CONTAINS(msg, "needs at least");
            ASSERT_TRUE(folders_equal(d, FT));
            ASSERT_TRUE(ran == 0); /* only below the least budget */
            refused++;
        }
    }
    ASSERT_TRUE(ran > 0 && refused > 0);
    /* --select all in one pass. */
    nlsr_inplace_result r;
    copy_dir(FT, d);
    ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ALL, 0, 0, &r, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(d, ref_all));
    ASSERT_TRUE(strcmp(r.key, key) != 0);
    /* Patches prepared with another block size: the same key, so run after apply is a no-op. */
    char *pf4 = wpath("blocks4096.nlsrp");
    nlsr_ctx *ctx = new_ctx();
    nlsr_ckpt *B = open_ck(FX "/sft"), *S = open_ck(FX "/aligned");
    nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
    nlsr_full_tuning tune = {0, 0, 4096, 0};
    ASSERT_EQ_I(nlsr_full_prepare(ctx, B, S, 0, pf4, &p, &tune, NULL), 0);
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(S);
    end_ctx(ctx);
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(pf4, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_REALIGNED);
    ASSERT_STR_EQ(r.key, key);
    ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, &r, NULL, 0), 0);
    ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
    /* A changed file is noticed as before. */
    char *f = join(d, "model-00001-of-00003.safetensors");
    struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 0}};
    ASSERT_EQ_I(utimensat(AT_FDCWD, f, ts, 0), 0);
    char msg[1024];
    ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, &r, msg, sizeof msg),
                NLSR_E_MISMATCH);
    ASSERT_CONTAINS(msg, "was modified");
    free(f);
    free(pf4);
    free(d);
}

/* A state written by the old key scheme (the patch file's fingerprint): run's single pass
 * cannot compare it and says what to do; apply with the patches recognises it and moves the
 * record to the new key; --force realigns anyway. */
static void test_old_key_state(void)
{
    char *d = wpath("oldkey"), *sp = join(d, NLSR_STATE_NAME);
    nlsr_inplace_result r;
    char msg[1024];
    nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
    nlsr_ctx *ctx = new_ctx();
    nlsr_pf_reader *pf = NULL;
    ASSERT_EQ_I(nlsr_pf_open(ctx, patches, &pf), 0);
    char v1[32];
    snprintf(v1, sizeof v1, "xxh64:%016llx",
             (unsigned long long)nlsr_inplace_key(nlsr_patch_fingerprint(pf), &p.select));
    nlsr_pf_close(pf);
    end_ctx(ctx);
    for (int force = 0; force < 2; force++) {
        copy_dir(FT, d);
        ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
        char newkey[32];
        snprintf(newkey, sizeof newkey, "%s", r.key);
        /* What nlsr before key scheme 2 wrote: the patch key, no key_scheme, no sources. */
        cJSON *st = load_json(sp);
        cJSON_ReplaceItemInObjectCaseSensitive(st, "key", cJSON_CreateString(v1));
        cJSON_DeleteItemFromObjectCaseSensitive(st, "key_scheme");
        cJSON_DeleteItemFromObjectCaseSensitive(st, "sources");
        char *txt = cJSON_Print(st);
        write_all(sp, txt, strlen(txt));
        cJSON_free(txt);
        cJSON_Delete(st);
        if (force) {
            ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 1, 0, &r, NULL, 0), 0);
            ASSERT_EQ_I(r.outcome, NLSR_INPLACE_REALIGNED);
            ASSERT_TRUE(r.rolled_back_first);
            ASSERT_TRUE(folders_equal(d, ref_default));
            ASSERT_STR_EQ(r.key, newkey);
            continue;
        }
        ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, &r, msg, sizeof msg),
                    NLSR_E_EXISTS);
        ASSERT_CONTAINS(msg, "older nlsr");
        ASSERT_CONTAINS(msg, "nlsr apply --in-place");
        ASSERT_CONTAINS(msg, "nlsr rollback");
        ASSERT_TRUE(folders_equal(d, ref_default));
        ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, NULL, 0), 0);
        ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
        char buf[64];
        ASSERT_STR_EQ(state_str(d, "key", buf, sizeof buf), newkey);
        ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, &r, NULL, 0), 0);
        ASSERT_EQ_I(r.outcome, NLSR_INPLACE_ALREADY);
        /* The migrated record still undoes the realignment. */
        ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
        ASSERT_TRUE(folders_equal(d, FT));
    }
    free(sp);
    free(d);
}

/* Only what changes is written: a fine-tune whose first half of one patched tensor already
 * holds the realigned bytes gets those grains neither journaled nor rewritten, by apply and
 * by the single pass, and still ends up as --out's result. */
static void test_changed_grains(void)
{
    char *d = wpath("grains");
    nlsr_inplace_result full, r;
    copy_dir(FT, d);
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &full, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(d, ref_all));
    ASSERT_TRUE(full.bytes_written <= full.patched_bytes);
    /* The largest target tensor, and its first half's whole grains. */
    nlsr_ckpt *ck = open_ck(FT), *rk = open_ck(ref_all);
    size_t best = 0;
    uint64_t bn = 0;
    for (size_t i = 0; i < ck->n; i++) {
        uint64_t n = ck->t[i].t->end - ck->t[i].t->begin;
        if (strstr(ck->t[i].t->name, "proj") && n > bn) {
            bn = n;
            best = i;
        }
    }
    const st_file *f = ck->shards[ck->t[best].shard];
    uint64_t b0 = f->data_start + ck->t[best].t->begin, b1 = b0 + bn / 2;
    uint64_t g0 = (b0 + NLSR_JOURNAL_GRAIN - 1) / NLSR_JOURNAL_GRAIN * NLSR_JOURNAL_GRAIN;
    uint64_t g1 = b1 / NLSR_JOURNAL_GRAIN * NLSR_JOURNAL_GRAIN;
    ASSERT_TRUE(g1 > g0);
    size_t ri;
    ASSERT_EQ_I(nlsr_ckpt_find(rk, ck->t[best].t->name, &ri), 0);
    unsigned char *half = malloc((size_t)(b1 - b0));
    nlsr_err e = {0};
    const st_file *rf = rk->shards[rk->t[ri].shard];
    ASSERT_EQ_I(nlsr_pread_all(rf->fd, half, (size_t)(b1 - b0), rf->data_start + rk->t[ri].t->begin,
                               rf->path, &e),
                0);
    char *name = strrchr(f->path, '/') + 1;
    for (int run = 0; run < 2; run++) {
        copy_dir(FT, d);
        char *target = join(d, name);
        int fd = open(target, O_WRONLY);
        ASSERT_TRUE(fd >= 0 && pwrite(fd, half, (size_t)(b1 - b0), (off_t)b0) == (ssize_t)(b1 - b0));
        close(fd);
        free(target);
        if (run) ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ALL, 0, 0, &r, NULL, 0), 0);
        else ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, &r, NULL, 0), 0);
        ASSERT_TRUE(folders_equal(d, ref_all));
        ASSERT_EQ_U(r.patched_bytes, full.patched_bytes);
        if (r.bytes_written > full.bytes_written - (g1 - g0))
            FAILF("%s wrote %llu bytes; at most %llu expected (%llu unchanged)",
                  run ? "run" : "apply", (unsigned long long)r.bytes_written,
                  (unsigned long long)(full.bytes_written - (g1 - g0)),
                  (unsigned long long)(g1 - g0));
        ASSERT_TRUE(r.journal_bytes < full.journal_bytes);
        /* The journal restores the pre-realignment bytes, the planted half included. */
        ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
    }
    free(half);
    nlsr_ckpt_free(ck);
    nlsr_ckpt_free(rk);
    free(d);
}

/* Journals of version 1 (whole grains' original bytes, written by nlsr before version 2) still
 * roll back; version 2 holds only the changed elements and is smaller; another version is
 * refused with a message saying what to do. */
static void test_journal_versions(void)
{
    char *d = wpath("versions"), *jp = join(d, NLSR_JOURNAL_NAME);
    nlsr_inplace_result r1, r2;
    char msg[1024];
    size_t len = 0;
    for (int v = 1; v <= 2; v++) {
        copy_dir(FT, d);
        if (v == 1) setenv("NLSR_TEST_JOURNAL_VERSION", "1", 1);
        int rc = run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, v == 1 ? &r1 : &r2, NULL, 0);
        unsetenv("NLSR_TEST_JOURNAL_VERSION");
        ASSERT_EQ_I(rc, 0);
        ASSERT_TRUE(folders_equal(d, ref_default));
        unsigned char *j = read_all(jp, &len);
        ASSERT_TRUE(j && len > 4096);
        ASSERT_EQ_U(rd64(j + 8) & 0xffffffffu, (uint64_t)v);
        free(j);
        nlsr_inplace_result rr;
        ASSERT_EQ_I(rollback(d, 0, 0, &rr, NULL, 0), 0);
        ASSERT_TRUE(folders_equal(d, FT));
        ASSERT_TRUE(only_lock_left(d));
    }
    ASSERT_EQ_U(r2.bytes_written, r1.bytes_written);
    ASSERT_STR_EQ(r2.result, r1.result);
    if (!(r2.journal_bytes < r1.journal_bytes))
        FAILF("journal version 2 took %llu bytes, version 1 %llu",
              (unsigned long long)r2.journal_bytes, (unsigned long long)r1.journal_bytes);
    /* Version 3, with a valid preamble checksum: refused, nothing written. */
    copy_dir(FT, d);
    ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, &r2, NULL, 0), 0);
    unsigned char *j = read_all(jp, &len);
    ASSERT_TRUE(j != NULL);
    j[8] = 3;
    uint64_t h = nlsr_xxh64(j, 56, 0);
    for (int i = 0; i < 8; i++) j[56 + i] = (unsigned char)(h >> (8 * i));
    write_all(jp, j, len);
    nlsr_inplace_result rr;
    ASSERT_EQ_I(rollback(d, 0, 0, &rr, msg, sizeof msg), NLSR_E_JOURNAL);
    ASSERT_CONTAINS(msg, "journal version 3 is not supported");
    ASSERT_CONTAINS(msg, "roll it back with the nlsr that wrote it");
    ASSERT_TRUE(folders_equal(d, ref_default));
    free(j);
    free(jp);
    free(d);
}

/* ---- SIGKILL at fault points ------------------------------------------------------------ */

/* K_FORCE: apply (adaptive) --force over a folder realigned with --select all, so the kill also
 * lands in the rollback of the previous realignment that --force does first. */
typedef enum {
    K_APPLY, K_LORA, K_RUN, K_ROLLBACK, K_FORCE, K_RUN_RECOMPUTE, K_RUN_PF, K_RUN_FORCE,
    K_RUN_ROWS, K_RUN_ROWS_RECOMPUTE
} kjob;

static int do_job(kjob k, const char *dir)
{
    nlsr_ctx *ctx = new_ctx();
    nlsr_inplace_result r;
    nlsr_realign_params p = params(k == K_LORA ? NLSR_SELECT_ALL : NLSR_SELECT_ADAPTIVE,
                                   k == K_FORCE || k == K_RUN_FORCE);
    p.amplify = NLSR_AMPLIFY_AUTHORS;
    int rc;
    if (k == K_APPLY || k == K_FORCE) rc = nlsr_apply_inplace(ctx, patches, dir, &p, NULL, &r);
    else if (k == K_LORA) rc = nlsr_apply_inplace(ctx, lora_patches, dir, &p, NULL, &r);
    else if (k == K_RUN || k == K_RUN_RECOMPUTE || k == K_RUN_PF || k == K_RUN_FORCE ||
             k == K_RUN_ROWS || k == K_RUN_ROWS_RECOMPUTE) {
        /* the single pass (whole or in row blocks), with patches kept or recomputed, and
         * prepare + apply */
        setenv("NLSR_RUN_PLAN",
               k == K_RUN_PF             ? "patch-file"
               : k == K_RUN_RECOMPUTE    ? "recompute"
               : k == K_RUN_ROWS         ? "rows"
               : k == K_RUN_ROWS_RECOMPUTE ? "rows-recompute"
                                         : "single",
               1);
        rc = nlsr_run_inplace(ctx, FX "/sft", FX "/aligned", NULL, dir, &p, NULL, &r);
        unsetenv("NLSR_RUN_PLAN");
    } else rc = nlsr_rollback(ctx, dir, NULL, &r);
    if (rc < 0) fprintf(stderr, "  job %d on %s: %s\n", (int)k, dir, nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    return rc;
}

static void set_env(uint64_t kill_at, int torn)
{
    char v[32];
    snprintf(v, sizeof v, "%llu", (unsigned long long)kill_at);
    setenv("NLSR_TEST_KILL_AFTER_WRITES", v, 1);
    setenv("NLSR_TEST_KILL_TORN", torn ? "1" : "0", 1);
    setenv("NLSR_TEST_JOURNAL_RECORD", KILL_RECORD, 1);
}

static void clear_env(void)
{
    unsetenv("NLSR_TEST_KILL_AFTER_WRITES");
    unsetenv("NLSR_TEST_KILL_TORN");
    unsetenv("NLSR_TEST_JOURNAL_RECORD");
}

/* Fault points of a whole job (run in this process, not killed). */
static uint64_t count_points(kjob k, const char *dir)
{
    set_env(UINT64_MAX / 2, 0);
    int rc = do_job(k, dir);
    uint64_t n = nlsr_fault_count();
    clear_env();
    ASSERT_EQ_I(rc, 0);
    return n;
}

/* The job in a child with the kill switch at `at`: 1 if SIGKILL ended it, 0 if it finished. */
static int killed_job(kjob k, const char *dir, uint64_t at, int torn)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        set_env(at, torn);
        int rc = do_job(k, dir);
        _exit(rc < 0 ? 3 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) return 1;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
    FAILF("job %d killed at %llu: status %d", (int)k, (unsigned long long)at, st);
    return -1;
}

static int tried_points = 0;

/* The folder a kill loop starts from: a copy of src (for K_FORCE, realigned with all). */
static void start(kjob k, const char *src, const char *d)
{
    copy_dir(src, d);
    if (k == K_FORCE || k == K_RUN_FORCE)
        ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ALL, 0, NULL, NULL, NULL, 0), 0);
}

/* Kills job k at every `step`-th point; after each, the interrupted folder refuses run/apply,
 * rollback restores the original, and a fresh job gives the uninterrupted result. */
static void kill_loop(kjob k, const char *src, const char *ref, const char *name, uint64_t step)
{
    char *d = wpath(name);
    start(k, src, d);
    uint64_t total = count_points(k, d);
    ASSERT_TRUE(folders_equal(d, ref));
    int tried = 0;
    for (uint64_t at = 1; at <= total; at += step) {
        start(k, src, d);
        int torn = (at & 1) == 0;
        if (killed_job(k, d, at, torn) != 1) {
            FAILF("%s: not killed at point %llu of %llu", name, (unsigned long long)at,
                  (unsigned long long)total);
            break;
        }
        tried++;
        int js = journal_state(d);
        nlsr_inplace_result r;
        char msg[1024];
        if (js == NLSR_JOURNAL_COMPLETE) {
            /* killed after the end: realigned and recorded (K_FORCE: maybe still the
             * previous realignment, before its rollback began) */
            ASSERT_TRUE(folders_equal(d, ref) ||
                        ((k == K_FORCE || k == K_RUN_FORCE) && folders_equal(d, ref_all)));
        } else if (js != NLSR_JOURNAL_NONE) {
            const char *pp = k == K_LORA ? lora_patches : patches;
            int rc = apply_ip(pp, d, k == K_LORA ? NLSR_SELECT_ALL : NLSR_SELECT_ADAPTIVE, 0,
                              NULL, &r, msg, sizeof msg);
            if (rc != NLSR_E_JOURNAL) {
                FAILF("%s point %llu: apply on an interrupted journal (%s) gave %d: %s", name,
                      (unsigned long long)at, nlsr_journal_state_name(js), rc, msg);
            }
        }
        if (rollback(d, 0, 0, &r, NULL, 0) != 0 || !folders_equal(d, src) || !only_lock_left(d)) {
            FAILF("%s: rollback after a kill at point %llu of %llu (%s) did not restore the "
                  "original", name, (unsigned long long)at, (unsigned long long)total,
                  torn ? "torn" : "clean");
            break;
        }
        if (do_job(k, d) != 0 || !folders_equal(d, ref)) {
            FAILF("%s: a fresh run after point %llu does not match the uninterrupted one", name,
                  (unsigned long long)at);
            break;
        }
    }
    printf("  %s: %d of %llu fault points killed, rolled back and rerun\n", name, tried,
           (unsigned long long)total);
    tried_points += tried;
    free(d);
}

static void test_kill_apply(void)
{
    kill_loop(K_APPLY, FT, ref_default, "kill_apply", 1);
}

static void test_kill_lora_and_run(void)
{
    kill_loop(K_LORA, LORA_FT, ref_lora, "kill_lora", 3);
    kill_loop(K_RUN, FT, ref_default, "kill_run_single", 1);
    kill_loop(K_RUN_RECOMPUTE, FT, ref_default, "kill_run_recompute", 3);
    kill_loop(K_RUN_ROWS, FT, ref_default, "kill_run_rows", 1);
    kill_loop(K_RUN_ROWS_RECOMPUTE, FT, ref_default, "kill_run_rows_recompute", 3);
    kill_loop(K_RUN_PF, FT, ref_default, "kill_run_patch_file", 7);
    kill_loop(K_FORCE, FT, ref_default, "kill_force", 2);
    kill_loop(K_RUN_FORCE, FT, ref_default, "kill_run_force", 3);
}

/* A rollback killed at each of its own points, then run again. */
static void test_kill_rollback(void)
{
    char *d = wpath("kill_rb");
    copy_dir(FT, d);
    uint64_t total = count_points(K_APPLY, d);
    uint64_t mid = total * 2 / 3;
    int tried = 0, done = 0;
    for (uint64_t at = 1; !done && at < 10000; at++) {
        copy_dir(FT, d);
        ASSERT_EQ_I(killed_job(K_APPLY, d, mid, 0), 1);
        int k = killed_job(K_ROLLBACK, d, at, (at & 1) == 0);
        if (k < 0) break;
        done = k == 0;
        tried += k;
        nlsr_inplace_result r;
        if (rollback(d, 0, 0, &r, NULL, 0) != 0 || !folders_equal(d, FT) || !only_lock_left(d)) {
            FAILF("rollback killed at its point %llu: a second rollback did not restore",
                  (unsigned long long)at);
            break;
        }
    }
    ASSERT_TRUE(done);
    printf("  rollback: %d fault points killed, rolled back again\n", tried);
    tried_points += tried;
    free(d);
}

/* ---- damaged journals --------------------------------------------------------------------- */

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* An interrupted journal (killed halfway through an apply): its bytes, and the armed end and
 * the offset of the newest slot read from the layout of docs/JOURNAL.md. */
static unsigned char *interrupted(const char *d, size_t *len, uint64_t *armed_end, uint64_t *slot)
{
    copy_dir(FT, d);
    uint64_t total = count_points(K_APPLY, d);
    copy_dir(FT, d);
    ASSERT_EQ_I(killed_job(K_APPLY, d, total / 2, 0), 1);
    char *jp = join(d, NLSR_JOURNAL_NAME);
    unsigned char *j = read_all(jp, len);
    free(jp);
    if (!j) abort();
    uint64_t sa = rd64(j + 512 + 8), sb = rd64(j + 1024 + 8);
    *slot = sa > sb ? 512 : 1024;
    *armed_end = rd64(j + *slot + 32);
    return j;
}

/* Damages the journal with `fn`, expects rollback to refuse with `code` (message containing
 * `needle`) and change nothing, then puts the journal back and rolls back. */
static void damaged(const char *d, const unsigned char *j, size_t len, size_t keep,
                    size_t flip, int code, const char *needle)
{
    char *jp = join(d, NLSR_JOURNAL_NAME), *snap = wpath("damaged_snap");
    copy_dir(d, snap);
    unsigned char *bad = malloc(len);
    memcpy(bad, j, len);
    if (flip < len) bad[flip] ^= 0x5a;
    write_all(jp, bad, keep);
    char msg[1024];
    nlsr_inplace_result r;
    int rc = rollback(d, 0, 0, &r, msg, sizeof msg);
    ASSERT_EQ_I(rc, code);
    if (code) {
        ASSERT_CONTAINS(msg, needle);
        ASSERT_TRUE(folders_equal(d, snap)); /* nothing written */
        size_t n2 = 0;
        unsigned char *now = read_all(jp, &n2);
        ASSERT_TRUE(now && n2 == keep && memcmp(now, bad, keep) == 0); /* journal kept */
        free(now);
        /* run/apply refuse too */
        ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                    NLSR_E_JOURNAL);
        write_all(jp, j, len);
        ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
    }
    ASSERT_TRUE(folders_equal(d, FT));
    free(bad);
    free(jp);
    free(snap);
}

static void test_damaged_journal(void)
{
    char *d = wpath("damaged");
    size_t len;
    uint64_t end, slot;
    unsigned char *j = interrupted(d, &len, &end, &slot);
    ASSERT_TRUE(end > 4096 && end <= len);
    /* A job reading the half-patched folder into another one refuses it too. */
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
    char *o = wpath("damaged_out");
    ASSERT_EQ_I(nlsr_apply(ctx, patches, d, o, &p), NLSR_E_JOURNAL);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "half patched");
    ASSERT_TRUE(!nlsr_exists(o));
    end_ctx(ctx);
    free(o);
    /* truncated inside the armed records */
    damaged(d, j, len, (size_t)end - 1, len, NLSR_E_CHECKSUM, "ends");
    free(j);
    j = interrupted(d, &len, &end, &slot);
    damaged(d, j, len, 5000, len, NLSR_E_CHECKSUM, "damaged");
    free(j);
    /* a flipped payload byte, a flipped header byte of the first record */
    j = interrupted(d, &len, &end, &slot);
    size_t name0 = (size_t)(j[4096 + 12] | j[4096 + 13] << 8);
    damaged(d, j, len, len, 4096 + 96 + name0 + 7, NLSR_E_CHECKSUM, "fails its checksum");
    free(j);
    j = interrupted(d, &len, &end, &slot);
    damaged(d, j, len, len, 4096 + 40, NLSR_E_CHECKSUM, "header fails its checksum");
    free(j);
    /* a damaged preamble */
    j = interrupted(d, &len, &end, &slot);
    damaged(d, j, len, len, 3, NLSR_E_CHECKSUM, "preamble is damaged");
    free(j);
    /* the newest slot torn: the older one arms fewer records, but every intact record is
     * restored all the same */
    j = interrupted(d, &len, &end, &slot);
    damaged(d, j, len, len, (size_t)slot + 20, 0, NULL);
    free(j);
    /* a garbage tail past the armed records: the trace of a crash during an append */
    j = interrupted(d, &len, &end, &slot);
    unsigned char *g = malloc(len + 300);
    memcpy(g, j, len);
    for (int i = 0; i < 300; i++) g[len + (size_t)i] = (unsigned char)(i * 37 + 11);
    damaged(d, g, len + 300, len + 300, len + 300, 0, NULL);
    /* the tail cut anywhere past the armed end */
    if (len > end) damaged(d, j, len, (size_t)end + (len - (size_t)end) / 2, len, 0, NULL);
    free(g);
    free(j);
    /* a journal torn at its creation (header block incomplete): nothing had changed */
    copy_dir(FT, d);
    char *jp = join(d, NLSR_JOURNAL_NAME);
    unsigned char zero[2048] = {0};
    write_all(jp, zero, sizeof zero);
    nlsr_inplace_result r;
    char msg[1024];
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                NLSR_E_JOURNAL);
    ASSERT_CONTAINS(msg, "nlsr rollback");
    ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0);
    ASSERT_TRUE(only_lock_left(d));
    ASSERT_TRUE(folders_equal(d, FT));
    free(jp);
    free(d);
}

/* ---- environment faults ------------------------------------------------------------------- */

static uint64_t pages(uint64_t n)
{
    return (n + 4095) / 4096 * 4096;
}

static int mount_errno; /* why the last mount_tmpfs failed */

/* Mounts a tmpfs of `bytes` at dir; 0 if mounting is not permitted here (mount_errno). */
static int mount_tmpfs(const char *dir, uint64_t bytes)
{
    mkdir(dir, 0755);
    char opt[64];
    snprintf(opt, sizeof opt, "size=%llu", (unsigned long long)bytes);
    if (mount("tmpfs", dir, "tmpfs", 0, opt) != 0) {
        mount_errno = errno;
        return 0;
    }
    return 1;
}

static void test_full_disk(void)
{
    char *mnt = wpath("disk");
    uint64_t fx = 0;
    DIR *dd = opendir(FT);
    struct dirent *de;
    while (dd && (de = readdir(dd))) {
        char *p = join(FT, de->d_name);
        struct stat st;
        if (de->d_name[0] != '.' && stat(p, &st) == 0) fx += pages((uint64_t)st.st_size);
        free(p);
    }
    if (dd) closedir(dd);
    /* Room for the lock file, the journal's header and about half its records, not the whole
     * journal (its size measured on a copy); then room for the lock file alone. */
    char *probe = wpath("disk_probe");
    copy_dir(FT, probe);
    nlsr_inplace_result pr;
    ASSERT_EQ_I(apply_ip(patches, probe, NLSR_SELECT_ADAPTIVE, 0, NULL, &pr, NULL, 0), 0);
    free(probe);
    ASSERT_TRUE(pr.journal_bytes > 3 * 4096);
    uint64_t spare[2] = {pages(4096 + (pr.journal_bytes - 4096) / 2), 1 * 4096};
    for (int i = 0; i < 2; i++) {
        if (!mount_tmpfs(mnt, fx + 4096 + spare[i])) {
            free(mnt);
            TEST_SKIP("mount(2) not permitted: %s", strerror(mount_errno));
        }
        char *d = join(mnt, "ft");
        copy_dir(FT, d);
        nlsr_inplace_result r;
        char msg[1024];
        int rc = apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg);
        ASSERT_EQ_I(rc, -ENOSPC);
        ASSERT_CONTAINS(msg, "No space left on device");
        if (i == 0) ASSERT_CONTAINS(msg, "rolled back from the journal and is unchanged");
        ASSERT_TRUE(folders_equal(d, FT));
        ASSERT_TRUE(only_lock_left(d));
        free(d);
        umount(mnt);
    }
    free(mnt);
}

/* The journal's data writer (a thread that writes each armed batch while the next is staged)
 * failing as an I/O error would, at the first batch and at a later one: the job fails with the
 * write's message, and the checkpoint is rolled back from the journal, unchanged. */
static void test_writer_failure(void)
{
#ifndef NLSR_TEST_HOOKS
    TEST_SKIP("failing the data writer needs a build with -DNLSR_TEST_HOOKS=ON");
#endif
    char *d = wpath("writer_fail");
    static const char *const at[] = {"1", "3"};
    setenv("NLSR_TEST_JOURNAL_RECORD", "16384", 1); /* small batches: several of them */
    for (size_t i = 0; i < 2; i++) {
        copy_dir(FT, d);
        setenv("NLSR_TEST_JOURNAL_WRITER_FAIL", at[i], 1);
        nlsr_inplace_result r;
        char msg[1024];
        int rc = run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 0, 0, &r, msg, sizeof msg);
        unsetenv("NLSR_TEST_JOURNAL_WRITER_FAIL");
        ASSERT_EQ_I(rc, -EIO);
        ASSERT_CONTAINS(msg, ".safetensors: write of ");
        ASSERT_CONTAINS(msg, "Input/output error");
        ASSERT_CONTAINS(msg, "rolled back from the journal and is unchanged");
        ASSERT_TRUE(folders_equal(d, FT));
        ASSERT_TRUE(only_lock_left(d));
    }
    unsetenv("NLSR_TEST_JOURNAL_RECORD");
    free(d);
}

static void test_read_only(void)
{
    char *d = wpath("ro");
    copy_dir(FT, d);
    char *sh = join(d, "model-00003-of-00003.safetensors");
    chmod(sh, 0444);
    nlsr_inplace_result r;
    char msg[1024];
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg), -EACCES);
    ASSERT_CONTAINS(msg, "read-only (mode 0444)");
    ASSERT_TRUE(folders_equal(d, FT));
    ASSERT_TRUE(only_lock_left(d));
    chmod(sh, 0644);
    free(sh);
    free(d);
}

/* A read-only file system (a tmpfs remounted read-only). */
static void test_read_only_fs(void)
{
    char *mnt = wpath("rofs");
    if (!mount_tmpfs(mnt, 4u << 20)) {
        free(mnt);
        TEST_SKIP("mount(2) not permitted: %s", strerror(mount_errno));
    }
    char *m = join(mnt, "ft");
    copy_dir(FT, m);
    nlsr_inplace_result r;
    char msg[1024];
    int ro = mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL) == 0;
    int why = errno;
    if (ro) {
        ASSERT_EQ_I(apply_ip(patches, m, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                    -EROFS);
        ASSERT_CONTAINS(msg, "Read-only file system");
        ASSERT_TRUE(folders_equal(m, FT));
        nlsr_inplace_params ip = {.dry_run = 1};
        ASSERT_EQ_I(apply_ip(patches, m, NLSR_SELECT_ADAPTIVE, 0, &ip, &r, msg, sizeof msg),
                    -EROFS); /* the dry run finds it too */
    }
    free(m);
    umount(mnt);
    free(mnt);
    if (!ro) TEST_SKIP("remounting read-only not permitted: %s", strerror(why));
}

static void test_lock(void)
{
    char *d = wpath("lock");
    copy_dir(FT, d);
    /* Another process's lock: the folder itself, as every nlsr run (or flock(1)) takes it. */
    char *lp = join(d, ".nlsr.lock");
    int fd = open(d, O_RDONLY | O_DIRECTORY);
    ASSERT_EQ_I(flock(fd, LOCK_EX), 0);
    nlsr_inplace_result r;
    char msg[1024];
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                NLSR_E_LOCKED);
    ASSERT_CONTAINS(msg, "locked by another nlsr run");
    nlsr_inplace_params dry = {.dry_run = 1};
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, &dry, &r, msg, sizeof msg),
                NLSR_E_LOCKED);
    ASSERT_EQ_I(rollback(d, 0, 0, &r, msg, sizeof msg), NLSR_E_LOCKED);
    ASSERT_TRUE(folders_equal(d, FT));
    /* Jobs that only read the folder (--out) refuse it while it is changed in place, instead of
     * reading half-patched tensors; they write nothing. */
    {
        char *out = wpath("lock_out");
        nlsr_ctx *ctx = new_ctx();
        nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
        ASSERT_EQ_I(nlsr_apply(ctx, patches, d, out, &p), NLSR_E_LOCKED);
        ASSERT_CONTAINS(nlsr_ctx_error(ctx), "being realigned in place");
        ASSERT_CONTAINS(nlsr_ctx_error(ctx), d);
        end_ctx(ctx);
        ASSERT_TRUE(!nlsr_exists(out));
        /* A reader's shared lock keeps an in-place run out in turn. */
        flock(fd, LOCK_UN);
        int rfd = open(d, O_RDONLY | O_DIRECTORY);
        ASSERT_EQ_I(flock(rfd, LOCK_SH), 0);
        ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                    NLSR_E_LOCKED);
        ASSERT_TRUE(folders_equal(d, FT));
        /* Two readers share it. */
        ctx = new_ctx();
        ASSERT_EQ_I(nlsr_apply(ctx, patches, d, out, &p), 0);
        end_ctx(ctx);
        ASSERT_TRUE(folders_equal(out, ref_default));
        close(rfd);
        (void)nlsr_tree_remove(out);
        ASSERT_EQ_I(flock(fd, LOCK_EX), 0);
        free(out);
    }
    /* A folder never realigned in place has no lock file, and a reader creates none. */
    {
        char *src = wpath("lock_plain"), *out = wpath("lock_plain_out");
        copy_dir(FT, src);
        nlsr_ctx *ctx = new_ctx();
        nlsr_realign_params p = params(NLSR_SELECT_ADAPTIVE, 0);
        ASSERT_EQ_I(nlsr_apply(ctx, patches, src, out, &p), 0);
        end_ctx(ctx);
        char *plp = join(src, ".nlsr.lock");
        ASSERT_TRUE(!nlsr_exists(plp));
        ASSERT_TRUE(folders_equal(src, FT));
        (void)nlsr_tree_remove(out);
        (void)nlsr_tree_remove(src);
        free(plp);
        free(src);
        free(out);
    }
    /* --wait: the holder lets go after a while */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        usleep(300000);
        _exit(0); /* exiting drops the inherited lock's last holder... */
    }
    close(fd); /* ...once this process's descriptor is closed too */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nlsr_inplace_params wait = {.wait = 1};
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, &wait, &r, NULL, 0), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    ASSERT_TRUE(dt > 0.15);
    ASSERT_TRUE(folders_equal(d, ref_default));
    waitpid(pid, NULL, 0);
    free(lp);
    free(d);
}

static void test_links(void)
{
    char *blobs = wpath("blobs"), *d = wpath("snap");
    copy_dir(FT, blobs);
    (void)nlsr_tree_remove(d);
    mkdir(d, 0755);
    DIR *dd = opendir(FT);
    struct dirent *de;
    while (dd && (de = readdir(dd))) {
        if (de->d_name[0] == '.') continue;
        char *s = join(blobs, de->d_name), *t = join(d, de->d_name);
        ASSERT_EQ_I(symlink(s, t), 0);
        free(s);
        free(t);
    }
    if (dd) closedir(dd);
    nlsr_inplace_result r;
    char msg[1024];
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "symbolic link");
    ASSERT_CONTAINS(msg, "--follow-links");
    ASSERT_TRUE(folders_equal(blobs, FT));
    ASSERT_EQ_I(journal_state(d), NLSR_JOURNAL_NONE);
    nlsr_inplace_params follow = {.follow_links = 1};
    ASSERT_EQ_I(apply_ip(patches, d, NLSR_SELECT_ADAPTIVE, 0, &follow, &r, NULL, 0), 0);
    ASSERT_TRUE(folders_equal(blobs, ref_default));
    ASSERT_EQ_I(rollback(d, 0, 0, &r, NULL, 0), 0); /* follows the links it was written through */
    ASSERT_TRUE(folders_equal(blobs, FT));
    /* hard links share bytes the same way */
    char *h = wpath("hard");
    copy_dir(FT, h);
    char *a = join(h, "model-00001-of-00003.safetensors"), *b = wpath("hard_other");
    unlink(b);
    ASSERT_EQ_I(link(a, b), 0);
    ASSERT_EQ_I(apply_ip(patches, h, NLSR_SELECT_ADAPTIVE, 0, NULL, &r, msg, sizeof msg),
                NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "hard links");
    ASSERT_TRUE(folders_equal(h, FT));
    free(a);
    free(b);
    free(h);
    free(blobs);
    free(d);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    /* A memory file system where there is one: the kill loops fsync a few thousand times, and
     * a SIGKILL tests the order of the writes, not the disk's durability. */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                       : getenv("TMPDIR")              ? getenv("TMPDIR")
                                                       : "/tmp";
    snprintf(root, sizeof root, "%s/nlsr-test-inplace-XXXXXX", base);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    clear_env();
    setup();
    RUN_TEST(test_matches_out);
    RUN_TEST(test_state_and_force);
    RUN_TEST(test_rollback_discard_stack);
    RUN_TEST(test_dry_run);
    RUN_TEST(test_run_plans);
    RUN_TEST(test_old_key_state);
    RUN_TEST(test_changed_grains);
    RUN_HOOK_TEST(test_journal_versions);
    RUN_HOOK_TEST(test_kill_apply);
    RUN_HOOK_TEST(test_kill_lora_and_run);
    RUN_HOOK_TEST(test_kill_rollback);
    RUN_HOOK_TEST(test_damaged_journal);
    RUN_TEST(test_writer_failure);
    RUN_TEST(test_read_only);
    /* mount(2) may not be permitted here: CTest entries of their own, skipped (77) there. */
    RUN_TEST_ALONE(test_full_disk);
    RUN_TEST_ALONE(test_read_only_fs);
    RUN_TEST(test_lock);
    RUN_TEST(test_links);
    printf("fault points tried: %d\n", tried_points);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "outputs kept in %s\n", root);
    free(patches);
    free(lora_patches);
    free(ref_default);
    free(ref_all);
    free(ref_lora);
    return rc;
}
