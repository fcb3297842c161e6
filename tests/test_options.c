/* SPDX-License-Identifier: Apache-2.0 */
/* The options of `nlsr run`, `prepare` and `apply`, pinned before the command line is
 * refactored. For every option:
 *
 *  - the program with the option gives the same report (--report FILE and --json, apart from
 *    times, peak memory and the audit's command line) and the same output bytes as nlsr_run /
 *    nlsr_prepare / nlsr_apply called through the public API with the parameter set by hand;
 *  - for a method option, its value here (not the default) changes the outcome against the
 *    run without it (report numbers or output bytes), so a parser that drops the option, or
 *    maps it onto another, fails; for --mem-budget and --io the report's summary shows the
 *    option took effect and the bytes are the default's; options given their default value
 *    (--select adaptive, --semantics paper, --scorer magnitude, --amplify paper) give the
 *    default's bytes. -q, --force and --mask-out are checked on their own.
 *
 * Inputs: tests/data/hf-tiny-llama (sft, aligned, finetuned; lora_align, lora_finetuned), and
 * checkpoints written here where the fixtures cannot show an option: one 8193 x 128 module
 * (over 2^20 elements, so that the low-rank scorer takes its randomized SVD and --power-iters,
 * --oversample, --seed and --exact-svd matter; every fixture module gets the exact SVD), an
 * activations file for the fixture's modules, a LoRA mask file. --threads has no visible
 * effect on any output by design (same bytes with any count); it is checked for equality only.
 * Prepare's outcome is its patch file applied with --select all.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "nlsr.h"
#include "test.h"
#include "test_cli.h"
#include "test_files.h"
#include "test_st.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define SFT FX "/sft"
#define ALIGNED FX "/aligned"
#define FT FX "/finetuned"
#define LA FX "/lora_align"
#define LF FX "/lora_finetuned"

static char root[4096];

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}

/* Files made once: the default patch files, an amplified reference, activations, a LoRA mask
 * at sparsity 0.5, the constructed big module's base / reference / fine-tune. */
static char *patch_full, *patch_lora, *amp_ref, *acts, *lora_mask, *big_b, *big_r, *big_t;

/* ---- the cases ----------------------------------------------------------------------------- */

enum { RUN, PREPARE, APPLY };
enum {
    IN_FULL,        /* --base sft --aligned aligned --finetuned finetuned (apply: patch_full) */
    IN_FULL_REF,    /* --reference aligned: the aligned model taken as the reference itself */
    IN_FULL_AMP,    /* --reference amp_ref: the reference nlsr_amplify wrote */
    IN_LORA,        /* --aligned lora_align --finetuned lora_finetuned (apply: patch_lora) */
    IN_BIG          /* --base big_b --reference big_r --finetuned big_t */
};

typedef struct env {
    uint64_t mem;
    nlsr_io_kind io;
    int threads;
} env;

typedef void (*setter)(nlsr_realign_params *p, env *e);

typedef struct ocase {
    const char *label;
    int cmd, in;
    const char *args[14]; /* "@ACTS", "@MASK", "@MASKOUT", "@AMP" stand for the files above */
    setter set;
    const char *differs;  /* the case whose outcome this one must change */
    const char *summary;  /* ... or whose summary member of this name it must change, with the
                             same output bytes */
    const char *same;     /* the case whose output bytes this one must give */
} ocase;

static const char *targets_qv[] = {"q_proj", "v_proj"};

#define SETTER(fn, body)                                                                          \
    static void fn(nlsr_realign_params *p, env *e)                                                \
    {                                                                                             \
        (void)p;                                                                                  \
        (void)e;                                                                                  \
        body;                                                                                     \
    }
SETTER(s_none, )
SETTER(s_beta, p->beta = 0.5)
SETTER(s_sparsity, p->sparsity = 0.5)
SETTER(s_threshold, p->select.mode = NLSR_SELECT_THRESHOLD)
SETTER(s_threshold_tau, p->select.mode = NLSR_SELECT_THRESHOLD; p->select.tau = 0.5)
SETTER(s_all, p->select.mode = NLSR_SELECT_ALL)
SETTER(s_none_sel, p->select.mode = NLSR_SELECT_NONE)
SETTER(s_authors, p->select.semantics = NLSR_SEMANTICS_AUTHORS)
SETTER(s_prune, p->select.prune_rate = 0.7)
SETTER(s_epsilon, p->select.epsilon = 0.05)
SETTER(s_seed, p->select.seed = 7; p->scorer.seed = 7)
SETTER(s_targets, p->targets = targets_qv; p->ntargets = 2)
SETTER(s_lowrank, p->scorer.kind = NLSR_SCORER_LOWRANK)
SETTER(s_lr_rank, p->scorer.kind = NLSR_SCORER_LOWRANK; p->scorer.rank = 4)
SETTER(s_lr_frac, p->scorer.kind = NLSR_SCORER_LOWRANK; p->scorer.rank_fraction = 0.5)
SETTER(s_lr_authors, p->scorer.kind = NLSR_SCORER_LOWRANK;
       p->scorer.rank_mode = NLSR_RANK_MODE_AUTHORS)
SETTER(s_lr_direct, p->scorer.kind = NLSR_SCORER_LOWRANK;
       p->scorer.rank_mode = NLSR_RANK_MODE_DIRECT)
SETTER(s_lr_acts, p->scorer.kind = NLSR_SCORER_LOWRANK; p->scorer.activations = acts)
SETTER(s_wanda, p->scorer.kind = NLSR_SCORER_WANDA; p->scorer.activations = acts)
SETTER(s_wanda_matrix, p->scorer.kind = NLSR_SCORER_WANDA; p->scorer.activations = acts;
       p->scorer.wanda_select = NLSR_WANDA_MODE_MATRIX)
SETTER(s_mem, e->mem = 3700u << 10)
SETTER(s_mmap, e->io = NLSR_IO_MMAP)
SETTER(s_threads, e->threads = 2)
SETTER(s_amp_authors, p->amplify = NLSR_AMPLIFY_AUTHORS)
SETTER(s_alpha, p->amplify = NLSR_AMPLIFY_AUTHORS; p->alpha = 0.5)
SETTER(s_mask, p->mask_path = lora_mask)
/* The big module: rank 8 read directly, every module patched (so masks show in the bytes). */
#define BIG_PREP_ARGS "--scorer", "lowrank", "--rank", "8", "--rank-reading", "direct"
#define BIG_ARGS BIG_PREP_ARGS, "--select", "all"
#define BIG_PREP_SET                                                                              \
    p->scorer.kind = NLSR_SCORER_LOWRANK;                                                         \
    p->scorer.rank = 8;                                                                           \
    p->scorer.rank_mode = NLSR_RANK_MODE_DIRECT
#define BIG_SET                                                                                   \
    BIG_PREP_SET;                                                                                 \
    p->select.mode = NLSR_SELECT_ALL
SETTER(s_big, BIG_SET)
SETTER(s_big_prep, BIG_PREP_SET)
SETTER(s_big_prep_seed, BIG_PREP_SET; p->scorer.seed = 7; p->select.seed = 7)
SETTER(s_big_power, BIG_SET; p->scorer.power_iters = 0)
SETTER(s_big_over, BIG_SET; p->scorer.oversample = 2)
SETTER(s_big_seed, BIG_SET; p->scorer.seed = 7; p->select.seed = 7)
SETTER(s_big_exact, BIG_SET; p->scorer.exact_svd = 1)

static const ocase cases[] = {
    /* run on full weights */
    {"run", RUN, IN_FULL, {NULL}, s_none, NULL, NULL, NULL},
    {"run --beta", RUN, IN_FULL, {"--beta", "0.5"}, s_beta, "run", NULL, NULL},
    {"run --sparsity", RUN, IN_FULL, {"--sparsity", "0.5"}, s_sparsity, "run", NULL, NULL},
    {"run --select threshold", RUN, IN_FULL, {"--select", "threshold"}, s_threshold, "run", NULL,
     NULL},
    {"run --tau", RUN, IN_FULL, {"--select", "threshold", "--tau", "0.5"}, s_threshold_tau,
     "run --select threshold", NULL, NULL},
    {"run --select all", RUN, IN_FULL, {"--select", "all"}, s_all, "run", NULL, NULL},
    {"run --select none", RUN, IN_FULL, {"--select", "none"}, s_none_sel, "run", NULL, NULL},
    {"run --select adaptive", RUN, IN_FULL, {"--select", "adaptive"}, s_none, NULL, NULL, "run"},
    {"run --semantics authors", RUN, IN_FULL, {"--semantics", "authors"}, s_authors, "run", NULL,
     NULL},
    {"run --semantics paper", RUN, IN_FULL, {"--semantics", "paper"}, s_none, NULL, NULL, "run"},
    {"run --prune-rate", RUN, IN_FULL, {"--prune-rate", "0.7"}, s_prune, "run", NULL, NULL},
    {"run --epsilon", RUN, IN_FULL, {"--epsilon", "0.05"}, s_epsilon, "run", NULL, NULL},
    {"run --seed", RUN, IN_FULL, {"--seed", "7"}, s_seed, "run", NULL, NULL},
    {"run --targets", RUN, IN_FULL, {"--targets", "q_proj,v_proj"}, s_targets, "run", NULL, NULL},
    {"run --scorer magnitude", RUN, IN_FULL, {"--scorer", "magnitude"}, s_none, NULL, NULL,
     "run"},
    {"run --scorer lowrank", RUN, IN_FULL, {"--scorer", "lowrank"}, s_lowrank, "run", NULL, NULL},
    {"run --rank", RUN, IN_FULL, {"--scorer", "lowrank", "--rank", "4"}, s_lr_rank,
     "run --scorer lowrank", NULL, NULL},
    {"run --rank-fraction", RUN, IN_FULL, {"--scorer", "lowrank", "--rank-fraction", "0.5"},
     s_lr_frac, "run --scorer lowrank", NULL, NULL},
    {"run --rank-reading authors", RUN, IN_FULL,
     {"--scorer", "lowrank", "--rank-reading", "authors"}, s_lr_authors, "run --scorer lowrank",
     NULL, NULL},
    {"run --rank-reading direct", RUN, IN_FULL, {"--scorer", "lowrank", "--rank-reading", "direct"},
     s_lr_direct, "run --scorer lowrank", NULL, NULL},
    {"run --activations (lowrank)", RUN, IN_FULL, {"--scorer", "lowrank", "--activations", "@ACTS"},
     s_lr_acts, "run --scorer lowrank", NULL, NULL},
    {"run --scorer wanda", RUN, IN_FULL, {"--scorer", "wanda", "--activations", "@ACTS"}, s_wanda,
     "run", NULL, NULL},
    {"run --wanda-select matrix", RUN, IN_FULL,
     {"--scorer", "wanda", "--activations", "@ACTS", "--wanda-select", "matrix"}, s_wanda_matrix,
     "run --scorer wanda", NULL, NULL},
    {"run --mem-budget", RUN, IN_FULL, {"--mem-budget", "3700K"}, s_mem, "run",
     "patches_in_memory", "run"},
    {"run --io mmap", RUN, IN_FULL, {"--io", "mmap"}, s_mmap, "run", "io_backend", "run"},
    {"run --threads", RUN, IN_FULL, {"--threads", "2"}, s_threads, NULL, NULL, "run"},
    {"run --reference (aligned)", RUN, IN_FULL_REF, {NULL}, s_none, "run", NULL, NULL},
    {"run --reference (amplified)", RUN, IN_FULL_AMP, {NULL}, s_none, NULL, NULL, "run"},
    /* prepare on full weights (outcome: the patches applied with --select all) */
    {"prepare", PREPARE, IN_FULL, {NULL}, s_none, NULL, NULL, NULL},
    {"prepare --beta", PREPARE, IN_FULL, {"--beta", "0.5"}, s_beta, "prepare", NULL, NULL},
    {"prepare --sparsity", PREPARE, IN_FULL, {"--sparsity", "0.5"}, s_sparsity, "prepare", NULL,
     NULL},
    {"prepare --targets", PREPARE, IN_FULL, {"--targets", "q_proj,v_proj"}, s_targets, "prepare",
     NULL, NULL},
    {"prepare --scorer lowrank", PREPARE, IN_FULL, {"--scorer", "lowrank"}, s_lowrank, "prepare",
     NULL, NULL},
    {"prepare --reference (aligned)", PREPARE, IN_FULL_REF, {NULL}, s_none, "prepare", NULL, NULL},
    {"prepare --io mmap", PREPARE, IN_FULL, {"--io", "mmap"}, s_mmap, "prepare", "io_backend",
     "prepare"},
    /* apply on full weights, from the default patch file */
    {"apply", APPLY, IN_FULL, {NULL}, s_none, NULL, NULL, "run"},
    {"apply --select threshold", APPLY, IN_FULL, {"--select", "threshold"}, s_threshold, "apply",
     NULL, NULL},
    {"apply --tau", APPLY, IN_FULL, {"--select", "threshold", "--tau", "0.5"}, s_threshold_tau,
     "apply --select threshold", NULL, NULL},
    {"apply --select all", APPLY, IN_FULL, {"--select", "all"}, s_all, "apply", NULL, NULL},
    {"apply --select none", APPLY, IN_FULL, {"--select", "none"}, s_none_sel, "apply", NULL, NULL},
    {"apply --semantics authors", APPLY, IN_FULL, {"--semantics", "authors"}, s_authors, "apply",
     NULL, NULL},
    {"apply --prune-rate", APPLY, IN_FULL, {"--prune-rate", "0.7"}, s_prune, "apply", NULL, NULL},
    {"apply --epsilon", APPLY, IN_FULL, {"--epsilon", "0.05"}, s_epsilon, "apply", NULL, NULL},
    {"apply --seed", APPLY, IN_FULL, {"--seed", "7"}, s_seed, "apply", NULL, NULL},
    {"apply --mem-budget", APPLY, IN_FULL, {"--mem-budget", "3700K"}, s_mem, NULL, NULL, "apply"},
    {"apply --io mmap", APPLY, IN_FULL, {"--io", "mmap"}, s_mmap, "apply", "io_backend", "apply"},
    /* PEFT LoRA adapters */
    {"lora run", RUN, IN_LORA, {NULL}, s_none, NULL, NULL, NULL},
    {"lora run --beta", RUN, IN_LORA, {"--beta", "0.5"}, s_beta, "lora run", NULL, NULL},
    {"lora run --sparsity", RUN, IN_LORA, {"--sparsity", "0.5"}, s_sparsity, "lora run", NULL,
     NULL},
    {"lora run --seed", RUN, IN_LORA, {"--seed", "7"}, s_seed, "lora run", NULL, NULL},
    {"lora run --amplify authors", RUN, IN_LORA, {"--amplify", "authors"}, s_amp_authors,
     "lora run", NULL, NULL},
    {"lora run --amplify paper", RUN, IN_LORA, {"--amplify", "paper"}, s_none, NULL, NULL,
     "lora run"},
    {"lora run --alpha", RUN, IN_LORA, {"--amplify", "authors", "--alpha", "0.5"}, s_alpha,
     "lora run --amplify authors", NULL, NULL},
    {"lora run --mask", RUN, IN_LORA, {"--mask", "@MASK"}, s_mask, "lora run", NULL, NULL},
    {"lora run --mask-out", RUN, IN_LORA, {"--mask-out", "@MASKOUT"}, s_none, NULL, NULL,
     "lora run"},
    {"lora prepare", PREPARE, IN_LORA, {NULL}, s_none, NULL, NULL, NULL},
    {"lora prepare --amplify authors", PREPARE, IN_LORA, {"--amplify", "authors"}, s_amp_authors,
     "lora prepare", NULL, NULL},
    {"lora prepare --mask-out", PREPARE, IN_LORA, {"--mask-out", "@MASKOUT"}, s_none, NULL, NULL,
     "lora prepare"},
    {"lora apply", APPLY, IN_LORA, {NULL}, s_none, NULL, NULL, "lora run"},
    {"lora apply --semantics authors", APPLY, IN_LORA, {"--semantics", "authors"}, s_authors,
     "lora apply", NULL, NULL},
    /* the randomized SVD's options on the constructed big module */
    {"big run", RUN, IN_BIG, {BIG_ARGS}, s_big, NULL, NULL, NULL},
    {"big run --power-iters", RUN, IN_BIG, {BIG_ARGS, "--power-iters", "0"}, s_big_power,
     "big run", NULL, NULL},
    {"big run --oversample", RUN, IN_BIG, {BIG_ARGS, "--oversample", "2"}, s_big_over, "big run",
     NULL, NULL},
    {"big run --seed", RUN, IN_BIG, {BIG_ARGS, "--seed", "7"}, s_big_seed, "big run", NULL, NULL},
    {"big run --exact-svd", RUN, IN_BIG, {BIG_ARGS, "--exact-svd"}, s_big_exact, "big run", NULL,
     NULL},
    {"big prepare", PREPARE, IN_BIG, {BIG_PREP_ARGS}, s_big_prep, NULL, NULL, NULL},
    {"big prepare --seed", PREPARE, IN_BIG, {BIG_PREP_ARGS, "--seed", "7"}, s_big_prep_seed,
     "big prepare",
     NULL, NULL},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* What a case gave through the API: its output (prepare: the patches applied) and report. */
typedef struct outcome {
    char *out;
    cJSON *report;
} outcome;
static outcome outcomes[NCASES];

/* ---- helpers -------------------------------------------------------------------------------- */

static cJSON *load_json(const char *path)
{
    size_t n = 0;
    unsigned char *t = read_all(path, &n);
    cJSON *j = t ? cJSON_ParseWithLength((const char *)t, n) : NULL;
    free(t);
    return j;
}

/* What differs between two runs of one job whatever the parameters: times, peak memory, an
 * auto budget's bytes, and the audit's command line (the library's caller has none). */
static void strip_times(cJSON *j)
{
    cJSON *sum = cJSON_GetObjectItemCaseSensitive(j, "summary");
    cJSON_DeleteItemFromObjectCaseSensitive(sum, "seconds");
    cJSON_DeleteItemFromObjectCaseSensitive(sum, "peak_rss_bytes");
    cJSON_DeleteItemFromObjectCaseSensitive(sum, "phase_seconds");
    /* An auto budget is half of MemAvailable at the moment it is set: the bytes and the
     * reason's figures move between two runs ("auto" or "given" stays). */
    cJSON *mb = cJSON_GetObjectItemCaseSensitive(sum, "mem_budget");
    if (cJSON_IsString(mb) && strcmp(mb->valuestring, "auto") == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive(sum, "mem_budget_bytes");
        cJSON_DeleteItemFromObjectCaseSensitive(sum, "mem_budget_reason");
    }
    cJSON *audit = cJSON_GetObjectItemCaseSensitive(j, "audit");
    cJSON_DeleteItemFromObjectCaseSensitive(audit, "command_line");
    cJSON_DeleteItemFromObjectCaseSensitive(audit, "started_utc");
    cJSON_DeleteItemFromObjectCaseSensitive(audit, "finished_utc");
    cJSON_DeleteItemFromObjectCaseSensitive(audit, "output_hash_seconds");
}

static int same_json(const cJSON *a, const cJSON *b)
{
    return a && b && cJSON_Compare(a, b, 1);
}

static void dump_diff(const char *what, const cJSON *a, const cJSON *b)
{
    char *x = a ? cJSON_PrintUnformatted(a) : NULL, *y = b ? cJSON_PrintUnformatted(b) : NULL;
    fprintf(stderr, "  %s:\n    program: %.600s\n    library: %.600s\n", what, x ? x : "(none)",
            y ? y : "(none)");
    free(x);
    free(y);
}

static int find_case(const char *label)
{
    for (size_t i = 0; i < NCASES; i++)
        if (strcmp(cases[i].label, label) == 0) return (int)i;
    return -1;
}

static nlsr_ctx *ctx_for(const env *e)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    /* The program's default budget is auto; the library's counterpart asks for it. */
    nlsr_ctx_set_mem_budget(ctx, e->mem ? e->mem : NLSR_MEM_BUDGET_AUTO);
    nlsr_ctx_set_io(ctx, e->io);
    if (e->threads) nlsr_ctx_set_threads(ctx, e->threads);
    return ctx;
}

/* The job through the library; 0 or the error code (message on stderr). */
static int api_job(const ocase *c, const nlsr_realign_params *p, const env *e, const char *out)
{
    nlsr_ctx *ctx = ctx_for(e);
    int rc = -1;
    const char *b = SFT, *a = ALIGNED, *r = NULL, *t = FT, *patches = patch_full;
    if (c->in == IN_FULL_REF || c->in == IN_FULL_AMP) {
        a = NULL;
        r = c->in == IN_FULL_REF ? ALIGNED : amp_ref;
    } else if (c->in == IN_LORA) {
        b = NULL;
        a = LA;
        t = LF;
        patches = patch_lora;
    } else if (c->in == IN_BIG) {
        b = big_b;
        a = NULL;
        r = big_r;
        t = big_t;
    }
    if (c->cmd == RUN) rc = nlsr_run(ctx, b, a, r, t, out, p);
    else if (c->cmd == PREPARE) rc = nlsr_prepare(ctx, b, a, r, out, p);
    else rc = nlsr_apply(ctx, patches, t, out, p);
    if (rc < 0) fprintf(stderr, "  %s: %s\n", c->label, nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    return rc;
}

/* The program's arguments for a case, writing into out / report. */
static int cli_args(const ocase *c, const char *out, const char *report, const char *mask_out,
                    const char **argv)
{
    int n = 0;
    argv[n++] = c->cmd == RUN ? "run" : c->cmd == PREPARE ? "prepare" : "apply";
    if (c->cmd == APPLY) {
        argv[n++] = "--patches";
        argv[n++] = c->in == IN_LORA ? patch_lora : patch_full;
    } else if (c->in == IN_LORA) {
        argv[n++] = "--aligned";
        argv[n++] = LA;
    } else {
        argv[n++] = "--base";
        argv[n++] = c->in == IN_BIG ? big_b : SFT;
        argv[n++] = c->in == IN_FULL ? "--aligned" : "--reference";
        argv[n++] = c->in == IN_FULL      ? ALIGNED
                    : c->in == IN_FULL_REF ? ALIGNED
                    : c->in == IN_FULL_AMP ? amp_ref
                                           : big_r;
    }
    if (c->cmd != PREPARE) {
        argv[n++] = "--finetuned";
        argv[n++] = c->in == IN_LORA ? LF : c->in == IN_BIG ? big_t : FT;
    }
    argv[n++] = "--out";
    argv[n++] = out;
    argv[n++] = "--report";
    argv[n++] = report;
    argv[n++] = "--json";
    argv[n++] = "-q";
    for (int i = 0; i < 14 && c->args[i]; i++) {
        const char *a = c->args[i];
        argv[n++] = strcmp(a, "@ACTS") == 0      ? acts
                    : strcmp(a, "@MASK") == 0    ? lora_mask
                    : strcmp(a, "@MASKOUT") == 0 ? mask_out
                                                 : a;
    }
    argv[n] = NULL;
    return n;
}

/* Two outputs (folders or files) hold the same bytes; says nothing (folders_equal names what
 * differs, which is expected here as often as not). */
static int outputs_equal(const char *a, const char *b)
{
    struct stat st;
    if (stat(a, &st) != 0) return 0;
    if (!S_ISDIR(st.st_mode)) return files_equal(a, b);
    int eq = 1, na = 0, nb = 0;
    DIR *d = opendir(a);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        na++;
        char *pa = NULL, *pb = NULL;
        if (asprintf(&pa, "%s/%s", a, de->d_name) < 0 || asprintf(&pb, "%s/%s", b, de->d_name) < 0)
            abort();
        eq &= files_equal(pa, pb);
        free(pa);
        free(pb);
    }
    if (d) closedir(d);
    if (!(d = opendir(b))) return 0;
    while ((de = readdir(d)))
        nb += de->d_name[0] != '.';
    closedir(d);
    return eq && na == nb;
}

/* Prepare's outcome: its patches applied to the input's fine-tune with --select all. */
static char *applied(const ocase *c, const char *patch)
{
    char *out = NULL;
    if (asprintf(&out, "%s.applied", patch) < 0) abort();
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = NLSR_SELECT_ALL;
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    const char *t = c->in == IN_LORA ? LF : c->in == IN_BIG ? big_t : FT;
    if (nlsr_apply(ctx, patch, t, out, &p) != 0)
        FAILF("%s: applying the patches: %s", c->label, nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    return out;
}

/* ---- the files made once ----------------------------------------------------------------- */

/* Activation rows [8, in] (F32) for every target module of the fixture, columns of different
 * scales so that the scorers see them. */
static void make_acts(void)
{
    acts = wpath("acts.safetensors");
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *ck = NULL;
    if (nlsr_ckpt_open(ctx, ALIGNED, &ck) != 0) abort();
    tst_tensor t[32];
    float *v[32];
    size_t n = 0;
    uint64_t s = 5;
    for (size_t i = 0; i < nlsr_ckpt_tensor_count(ck) && n < 32; i++) {
        nlsr_tensor_info ti;
        nlsr_ckpt_tensor_info(ck, i, &ti);
        if (ti.ndim != 2 || !strstr(ti.name, "proj")) continue;
        size_t in = (size_t)ti.shape[1];
        v[n] = malloc(8 * in * sizeof(float));
        for (size_t k = 0; k < 8 * in; k++)
            v[n][k] = (float)(tst_gauss(&s) * (0.1 + (double)(k % in % 5)));
        t[n] = (tst_tensor){strdup(ti.name), NLSR_DTYPE_F32, 2, {8, in, 0}, v[n]};
        n++;
    }
    ASSERT_EQ_U(n, 21);
    tst_write(acts, t, n, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        free((char *)t[i].name);
        free(v[i]);
    }
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
}

/* One up_proj of 8193 x 128 (over 2^20 elements: the randomized SVD) and a small q_proj:
 * base zero, reference and fine-tune Gaussian (full rank, so that the top-8 subspace is not
 * separated from the rest and every randomized-SVD setting finds a different one). */
static void make_big(void)
{
    big_b = wpath("big_base");
    big_r = wpath("big_ref");
    big_t = wpath("big_ft");
    const uint64_t O = 8193, I = 128;
    float *z = calloc(O * I, sizeof *z), *r = malloc(O * I * sizeof *r),
          *t = malloc(O * I * sizeof *t);
    uint64_t s = 11;
    for (uint64_t i = 0; i < O * I; i++) r[i] = (float)tst_gauss(&s);
    for (uint64_t i = 0; i < O * I; i++) t[i] = 0.5f * r[i] + (float)tst_gauss(&s);
    const char *up = "model.layers.0.mlp.up_proj.weight";
    const char *q = "model.layers.0.self_attn.q_proj.weight";
    const nlsr_dtype F = NLSR_DTYPE_F32;
    tst_tensor b[2] = {{up, F, 2, {O, I, 0}, z}, {q, F, 2, {16, 16, 0}, z}};
    tst_tensor rr[2] = {{up, F, 2, {O, I, 0}, r}, {q, F, 2, {16, 16, 0}, r}};
    tst_tensor tt[2] = {{up, F, 2, {O, I, 0}, t}, {q, F, 2, {16, 16, 0}, t}};
    tst_write_dir(big_b, b, 2);
    tst_write_dir(big_r, rr, 2);
    tst_write_dir(big_t, tt, 2);
    free(z);
    free(r);
    free(t);
}

static void setup(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    patch_full = wpath("default.nlsrp");
    patch_lora = wpath("default_lora.nlsrp");
    amp_ref = wpath("amplified");
    lora_mask = wpath("lora_mask_0.5.safetensors");
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    int rc = nlsr_prepare(ctx, SFT, ALIGNED, NULL, patch_full, &p);
    if (rc == 0) rc = nlsr_prepare(ctx, NULL, LA, NULL, patch_lora, &p);
    if (rc == 0) rc = nlsr_amplify(ctx, SFT, ALIGNED, amp_ref, &p);
    /* Masks of another sparsity, for --mask. */
    char *unused = wpath("mask_source.nlsrp");
    p.sparsity = 0.5;
    p.mask_out_path = lora_mask;
    if (rc == 0) rc = nlsr_prepare(ctx, NULL, LA, NULL, unused, &p);
    if (rc != 0) {
        fprintf(stderr, "setup: %s\n", nlsr_ctx_error(ctx));
        abort();
    }
    free(unused);
    nlsr_ctx_free(ctx);
    make_acts();
    make_big();
}

/* ---- the tests ------------------------------------------------------------------------------ */

/* One case: the program, then the library into the same paths (so that the reports, which
 * name no output, and the outputs compare whole); the program's files are kept as *.cli. */
static void run_case(size_t i)
{
    const ocase *c = &cases[i];
    char name[64];
    snprintf(name, sizeof name, "case%02zu", i);
    char *out = wpath(name), *cli_out = NULL, *rep = NULL, *cli_rep = NULL, *mo = NULL,
         *cli_mo = NULL;
    if (asprintf(&cli_out, "%s.cli", out) < 0 || asprintf(&rep, "%s.json", out) < 0 ||
        asprintf(&cli_rep, "%s.cli.json", out) < 0 || asprintf(&mo, "%s.mask", out) < 0 ||
        asprintf(&cli_mo, "%s.cli.mask", out) < 0)
        abort();
    const char *argv[48];
    cli_args(c, out, rep, mo, argv);
    cli_result r = cli_run(argv);
    if (r.status != 0) FAILF("%s: the program exited %d: %s", c->label, r.status, r.err);
    if (rename(out, cli_out) != 0 || rename(rep, cli_rep) != 0) FAILF("%s: no output", c->label);
    if (nlsr_exists(mo) && rename(mo, cli_mo) != 0) abort();
    cJSON *stdout_json = cJSON_Parse(r.out), *cli_json = load_json(cli_rep);
    cli_result_free(&r);
    /* The library, with the parameters set by hand. */
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    env e = {0, NLSR_IO_AUTO, 0};
    c->set(&p, &e);
    p.report_path = rep;
    int has_mask_out = 0;
    for (int k = 0; k < 14 && c->args[k]; k++) has_mask_out |= strcmp(c->args[k], "@MASKOUT") == 0;
    if (has_mask_out) p.mask_out_path = mo;
    ASSERT_EQ_I(api_job(c, &p, &e, out), 0);
    cJSON *api_json = load_json(rep);
    strip_times(stdout_json);
    strip_times(cli_json);
    strip_times(api_json);
    if (!same_json(cli_json, api_json)) {
        FAILF("%s: --report differs from the library's report", c->label);
        dump_diff("report", cli_json, api_json);
    }
    if (!same_json(stdout_json, cli_json)) {
        FAILF("%s: --json differs from --report", c->label);
        dump_diff("--json vs --report", stdout_json, cli_json);
    }
    if (!outputs_equal(cli_out, out)) FAILF("%s: the program's output differs", c->label);
    if (has_mask_out) {
        ASSERT_TRUE(nlsr_exists(mo));
        if (!files_equal(cli_mo, mo)) FAILF("%s: --mask-out files differ", c->label);
    }
    outcomes[i].out = c->cmd == PREPARE ? applied(c, out) : strdup(out);
    outcomes[i].report = api_json;
    cJSON_Delete(stdout_json);
    cJSON_Delete(cli_json);
    free(out);
    free(cli_out);
    free(rep);
    free(cli_rep);
    free(mo);
    free(cli_mo);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Every case: the program == the library. */
static void test_program_equals_library(void)
{
    for (size_t i = 0; i < NCASES; i++) {
        int before = test_cur_failed_;
        test_cur_failed_ = 0;
        double t0 = now_s();
        run_case(i);
        /* NLSR_TEST_TIMES=1: each case's time, and below how each option changed the outcome. */
        if (getenv("NLSR_TEST_TIMES"))
            fprintf(stderr, "%6.3f s %s\n", now_s() - t0, cases[i].label);
        if (test_cur_failed_) fprintf(stderr, "  in case \"%s\"\n", cases[i].label);
        test_cur_failed_ |= before;
    }
}

/* Each method option's value changes the outcome; --mem-budget and --io show in the summary
 * with the default's bytes; options at their default values give the default's bytes. */
static void test_options_matter(void)
{
    for (size_t i = 0; i < NCASES; i++) {
        const ocase *c = &cases[i];
        const outcome *o = &outcomes[i];
        if (!o->out || !o->report) {
            FAILF("%s: no outcome", c->label);
            continue;
        }
        if (c->same) {
            int k = find_case(c->same);
            ASSERT_TRUE(k >= 0);
            if (k >= 0 && !outputs_equal(outcomes[k].out, o->out))
                FAILF("%s: output differs from \"%s\"'s", c->label, c->same);
        }
        if (!c->differs) continue;
        int k = find_case(c->differs);
        ASSERT_TRUE(k >= 0 && outcomes[k].report);
        if (k < 0 || !outcomes[k].report) continue;
        const cJSON *base = outcomes[k].report;
        if (c->summary) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(o->report, "summary"), c->summary);
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(base, "summary"), c->summary);
            if (!x || !y || cJSON_Compare(x, y, 1))
                FAILF("%s: summary.%s is the same as \"%s\"'s", c->label, c->summary, c->differs);
            continue;
        }
        int same_modules = same_json(cJSON_GetObjectItemCaseSensitive(o->report, "modules"),
                                     cJSON_GetObjectItemCaseSensitive(base, "modules"));
        int same_bytes = outputs_equal(outcomes[k].out, o->out);
        if (getenv("NLSR_TEST_TIMES"))
            fprintf(stderr, "%-32s vs %-28s modules %s, bytes %s\n", c->label, c->differs,
                    same_modules ? "same" : "differ", same_bytes ? "same" : "differ");
        if (same_modules && same_bytes)
            FAILF("%s: the same modules and output as \"%s\": the option changes nothing here",
                  c->label, c->differs);
    }
}

/* -q / --quiet: nothing on stderr; without it, the human summary. */
static void test_quiet(void)
{
    char *out = wpath("quiet_out");
    for (int q = 0; q < 3; q++) {
        const char *args[] = {"apply", "--patches", patch_full, "--finetuned", FT, "--out", out,
                              q == 1 ? "-q" : q == 2 ? "--quiet" : "--force", "--force", NULL};
        cli_result r = cli_run(args);
        ASSERT_EQ_I(r.status, 0);
        if (q == 0) ASSERT_TRUE(r.err[0] != '\0');
        else ASSERT_STR_EQ(r.err, "");
        cli_result_free(&r);
    }
    free(out);
}

/* --force: an existing output is refused without it (exit 1, left alone) and replaced with it,
 * as the library's force does. */
static void test_force(void)
{
    char *out = wpath("force_out"), *marker = NULL;
    if (asprintf(&marker, "%s/.nlsr-output", out) < 0) abort();
    int k = find_case("apply");
    const char *args[] = {"apply", "--patches", patch_full, "--finetuned", FT, "--out", out, "-q",
                          NULL, NULL};
    ASSERT_EQ_I(mkdir(out, 0755), 0);
    cli_result r = cli_run(args);
    ASSERT_EQ_I(r.status, 1);
    ASSERT_CONTAINS(r.err, out);
    cli_result_free(&r);
    ASSERT_TRUE(!nlsr_exists(marker));
    args[8] = "--force";
    r = cli_run(args);
    ASSERT_EQ_I(r.status, 0);
    cli_result_free(&r);
    ASSERT_TRUE(k >= 0 && outcomes[k].out && folders_equal(outcomes[k].out, out));
    free(marker);
    free(out);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    snprintf(root, sizeof root, "/tmp/nlsr-test-options-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    setup();
    RUN_TEST(test_program_equals_library);
    RUN_TEST(test_options_matter);
    RUN_TEST(test_quiet);
    RUN_TEST(test_force);
    for (size_t i = 0; i < NCASES; i++) {
        free(outcomes[i].out);
        cJSON_Delete(outcomes[i].report);
    }
    free(patch_full);
    free(patch_lora);
    free(amp_ref);
    free(acts);
    free(lora_mask);
    free(big_b);
    free(big_r);
    free(big_t);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
