/* SPDX-License-Identifier: Apache-2.0 */
/* nlsr: Neuron-Level Safety Realignment of fine-tuned LLM checkpoints, streamed out of core.
 *
 * The one public header. Every function returns 0 (or a count) on success and a negative code
 * on failure: -errno passed through from the kernel, or one of NLSR_E_* below. The context
 * (nlsr_ctx) keeps the first error's one-line message, naming file, tensor and value:
 * nlsr_ctx_error(). Handles are opaque; every *_free(NULL) is a no-op.
 */
#ifndef NLSR_H
#define NLSR_H

#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version (CHANGELOG.md; CMake's project version is read from these three lines). The
 * SONAME is libnlsr.so.MAJOR: MAJOR goes up with every ABI break (README "Install"). */
#define NLSR_VERSION_MAJOR 0
#define NLSR_VERSION_MINOR 1
#define NLSR_VERSION_PATCH 0
#define NLSR_VERSION "0.1.0"
/* The version of the library actually linked ("MAJOR.MINOR.PATCH"), which may be newer than the
 * header a program was compiled with. */
const char *nlsr_version(void);

/* Own error codes, below every -errno value. */
enum {
    NLSR_E_FORMAT = -5001,   /* malformed safetensors / index / config / patch file */
    NLSR_E_DTYPE = -5002,    /* unknown or unsupported dtype for the operation */
    NLSR_E_MISMATCH = -5003, /* checkpoints disagree (names, shapes, dtypes, adapters) */
    NLSR_E_NOTFOUND = -5004, /* tensor, shard or file missing */
    NLSR_E_BUDGET = -5005,   /* memory budget too small for the smallest unit */
    NLSR_E_USAGE = -5006,    /* invalid argument */
    NLSR_E_VALUE = -5007,    /* non-finite or otherwise invalid tensor value */
    NLSR_E_EXISTS = -5008,   /* output exists (use force) */
    NLSR_E_LOCKED = -5009,   /* another run holds the checkpoint's lock */
    NLSR_E_JOURNAL = -5010,  /* interrupted or damaged journal */
    NLSR_E_CHECKSUM = -5011, /* a stored checksum does not match */
    NLSR_E_CANCELLED = -5012 /* stopped by nlsr_ctx_cancel or the cancel flag (a signal) */
};

/* Static description of a code; the context's message says more. */
const char *nlsr_strerror(int code);

/* Element types of safetensors, in the format's own names (nlsr_dtype_name). */
typedef enum nlsr_dtype {
    NLSR_DTYPE_F64, NLSR_DTYPE_F32, NLSR_DTYPE_F16, NLSR_DTYPE_BF16,
    NLSR_DTYPE_I8, NLSR_DTYPE_U8, NLSR_DTYPE_I16, NLSR_DTYPE_U16,
    NLSR_DTYPE_I32, NLSR_DTYPE_U32, NLSR_DTYPE_I64, NLSR_DTYPE_U64,
    NLSR_DTYPE_BOOL, NLSR_DTYPE_F8_E4M3, NLSR_DTYPE_F8_E5M2,
    NLSR_DTYPE_COUNT
} nlsr_dtype;

const char *nlsr_dtype_name(nlsr_dtype t);
size_t nlsr_dtype_size(nlsr_dtype t);
int nlsr_dtype_is_float(nlsr_dtype t);

/* ---- context ---------------------------------------------------------------------------- */

typedef struct nlsr_ctx nlsr_ctx;

/* NULL on out-of-memory. */
nlsr_ctx *nlsr_ctx_create(void);
void nlsr_ctx_free(nlsr_ctx *ctx);
/* The first error's message since the last clear ("" if none). Owned by ctx. */
const char *nlsr_ctx_error(const nlsr_ctx *ctx);
void nlsr_ctx_clear_error(nlsr_ctx *ctx);
/* Cancellation: a job on ctx stops at its next safe point (between units of its streams, before
 * a journal record, before its output is moved into place), removes its temporary outputs,
 * rolls an in-place realignment back, and returns NLSR_E_CANCELLED. nlsr_ctx_cancel is
 * async-signal-safe (a signal handler may call it; `why`, e.g. the signal number, must be
 * nonzero); a flag set with nlsr_ctx_set_cancel_flag is read the same way (*flag nonzero:
 * cancelled with that value), so one flag can serve several contexts. */
void nlsr_ctx_cancel(nlsr_ctx *ctx, int why);
void nlsr_ctx_set_cancel_flag(nlsr_ctx *ctx, const volatile sig_atomic_t *flag);
/* The nonzero value given to nlsr_ctx_cancel or found in the flag; 0 if not cancelled. */
int nlsr_ctx_cancelled(const nlsr_ctx *ctx);

/* I/O backends for streaming reads and writes (see docs/DESIGN.md). AUTO tries io_uring, then
 * pread, then mmap, and says once per context, in a NLSR_LOG_NOTICE, when it steps down. */
typedef enum nlsr_io_kind { NLSR_IO_AUTO, NLSR_IO_URING, NLSR_IO_PREAD, NLSR_IO_MMAP } nlsr_io_kind;
const char *nlsr_io_kind_name(nlsr_io_kind k);

/* The memory budget a context starts with (1 GiB); the nlsr program's default is auto. */
#define NLSR_DEFAULT_MEM_BUDGET (1ull << 30)
/* Given to nlsr_ctx_set_mem_budget: derive the budget from what the machine can give now
 * (half of MemAvailable or of the cgroup's room, whichever is smaller, between 256 MiB and
 * 64 GiB; README "Memory budget"). */
#define NLSR_MEM_BUDGET_AUTO UINT64_MAX
/* Memory budget in bytes for every buffer a job allocates (0 = unlimited, NLSR_MEM_BUDGET_AUTO,
 * default NLSR_DEFAULT_MEM_BUDGET). A number is a hard limit. */
void nlsr_ctx_set_mem_budget(nlsr_ctx *ctx, uint64_t bytes);
/* The budget in force (auto resolved to bytes). */
uint64_t nlsr_ctx_mem_budget(const nlsr_ctx *ctx);
/* How an auto budget was derived ("half of MemAvailable 12.4 GiB, below the cgroup limit
 * 20.0 GiB"); "" for a budget given in bytes. */
const char *nlsr_ctx_mem_budget_reason(const nlsr_ctx *ctx);
/* Highest budget use so far, in bytes. */
uint64_t nlsr_ctx_mem_peak(const nlsr_ctx *ctx);
void nlsr_ctx_set_io(nlsr_ctx *ctx, nlsr_io_kind kind);
/* The backend the last job actually used (after any fallback). */
nlsr_io_kind nlsr_ctx_io_used(const nlsr_ctx *ctx);
/* quiet != 0: the log callback receives warnings only, the progress callback nothing. */
void nlsr_ctx_set_quiet(nlsr_ctx *ctx, int quiet);

/* ---- logs and progress (README "Progress and logs") ------------------------------------
 * The library never writes to stdout or stderr on its own: what it has to say goes to the
 * callbacks set here, and with none set it is dropped. Both are called from the thread that
 * runs the job (the one that called nlsr_run ...), never concurrently for one context. */
typedef enum nlsr_log_level {
    NLSR_LOG_WARN,   /* something the user should act on or know went wrong after a success
                        (the report not written after the output was committed, a damaged
                        state file removed, a temporary left alone) */
    NLSR_LOG_NOTICE, /* a step down or a wait the user should see (io_uring unavailable, using
                        pread; waiting for a lock; a stale temporary output removed; weights
                        left out of the output) */
    NLSR_LOG_INFO,   /* the human summary of a finished job, one call per line */
    NLSR_LOG_DEBUG   /* details for -v (test builds' write-point counts) */
} nlsr_log_level;
/* "warning", "notice", "info", "debug". */
const char *nlsr_log_level_name(nlsr_log_level level);
/* `line` is one line without a trailing newline or a "nlsr:" prefix, valid during the call. */
typedef void (*nlsr_log_fn)(void *user, nlsr_log_level level, const char *line);
/* fn NULL: logs are dropped (the default). */
void nlsr_ctx_set_log(nlsr_ctx *ctx, nlsr_log_fn fn, void *user);

/* One progress report of a long job. A job runs one or more phases in order; each phase has a
 * planned byte total (the planner's: e.g. run's single pass reads every target module of the
 * three checkpoints in "similarities", then writes every output shard in "output") and, where
 * the job works in units (modules, journal ranges, shards), a unit total. The last report of
 * a phase has finished = 1 and done = total; a phase cut short by an error or a cancel gets no
 * finished report. */
typedef struct nlsr_progress {
    const char *job;        /* "run", "prepare", "apply", "amplify", "synth", "rollback",
                               "plan-read" */
    const char *phase;      /* the job's phase: run "similarities" / "output" (single pass) or
                               "prepare" / "apply" (through a patch file); prepare "prepare";
                               apply "apply"; in place "journal" ...; README lists them */
    int phase_index;        /* 0-based index of the phase in this job */
    uint64_t bytes_done, bytes_total;  /* bytes read or written in the phase, planned total */
    uint64_t units_done, units_total;  /* 0 / 0 where the phase does not count units */
    double seconds;         /* since the phase began */
    int finished;           /* 1 on the phase's last report */
} nlsr_progress;
typedef void (*nlsr_progress_fn)(void *user, const nlsr_progress *p);
/* Calls fn at most every min_interval seconds per phase (0: at every update), always at a
 * phase's start and end. fn NULL: no progress reports (the default). */
void nlsr_ctx_set_progress(nlsr_ctx *ctx, nlsr_progress_fn fn, void *user, double min_interval);
/* Compute threads (OpenBLAS and kernels); default 1. */
void nlsr_ctx_set_threads(nlsr_ctx *ctx, int threads);
/* The command line that started the job (copied), recorded in reports' audit section
 * (docs: README "The report"). 0 or -ENOMEM. */
int nlsr_ctx_set_command_line(nlsr_ctx *ctx, int argc, const char *const *argv);
/* Bytes read from and written to checkpoint files by jobs so far. */
void nlsr_ctx_counters(const nlsr_ctx *ctx, uint64_t *bytes_read, uint64_t *bytes_written);
/* The revision that Hugging Face hub cache repository folders (models--org--name) given as
 * checkpoints resolve to: a ref name under refs/ or a commit hash (a snapshot folder's name,
 * or a unique prefix of 7+ hex digits). NULL (the default) is refs/main. Every repository
 * folder among a job's inputs must have it; a snapshot folder whose repository has it must be
 * that revision's snapshot; plain folders and files ignore it. A name
 * with '..', '.', empty or leading '/' parts is NLSR_E_USAGE. README "Input layouts". */
int nlsr_ctx_set_revision(nlsr_ctx *ctx, const char *revision);
/* Parses "512M", "1.5G", "4G", "1048576" (binary units) into bytes; NLSR_E_USAGE if invalid. */
int nlsr_parse_size(const char *s, uint64_t *out);
/* --mem-budget's value: "auto" (NLSR_MEM_BUDGET_AUTO) or a size as nlsr_parse_size reads it. */
int nlsr_parse_mem_budget(const char *s, uint64_t *out);

/* ---- realignment parameters (METHOD.md) -------------------------------------------------- */

typedef enum nlsr_select_mode {
    NLSR_SELECT_ADAPTIVE,  /* probability from the similarity rank, one splitmix64 draw each */
    NLSR_SELECT_THRESHOLD, /* patched iff similarity < tau */
    NLSR_SELECT_ALL,
    NLSR_SELECT_NONE
} nlsr_select_mode;

typedef enum nlsr_semantics {
    NLSR_SEMANTICS_PAPER,   /* least similar modules most likely patched (default) */
    NLSR_SEMANTICS_AUTHORS  /* the authors' code: most similar most likely patched */
} nlsr_semantics;

typedef struct nlsr_select_params {
    nlsr_select_mode mode;
    nlsr_semantics semantics;
    double prune_rate; /* 0.5 */
    double epsilon;    /* 0.2 */
    double tau;        /* 0.1 */
    uint64_t seed;     /* 42 */
} nlsr_select_params;

/* The defaults, by field name (a field added or moved never shifts the others), as a compound
 * literal for C callers and as an init function for every language: each *_init(p) sets *p
 * to its *_DEFAULT. */
#define NLSR_SELECT_PARAMS_DEFAULT                                                                \
    ((nlsr_select_params){.mode = NLSR_SELECT_ADAPTIVE, .semantics = NLSR_SEMANTICS_PAPER,       \
                          .prune_rate = 0.5, .epsilon = 0.2, .tau = 0.1, .seed = 42u})
void nlsr_select_params_init(nlsr_select_params *p);

/* The three steps' parameters. Full weights and PEFT adapters share them; LoRA-only fields are
 * ignored for full checkpoints. */
typedef enum nlsr_amplify_mode {
    NLSR_AMPLIFY_PAPER,   /* LoRA: B_e = (1+beta) B_a, A_e = A_a */
    NLSR_AMPLIFY_AUTHORS  /* LoRA: every factor p*alpha + p*alpha (the authors' script) */
} nlsr_amplify_mode;

/* Step 2's scorer (METHOD.md step 2, docs/LOWRANK.md): which score the magnitude rule's
 * threshold (k = (long)(n * sparsity), mask = score > k-th smallest) is applied to. Full-weight
 * checkpoints only: LoRA adapters take the magnitude rule or --mask FILE. */
typedef enum nlsr_scorer_kind {
    NLSR_SCORER_MAGNITUDE, /* s = |e_s - b|: data-free, the default */
    NLSR_SCORER_LOWRANK,   /* s = |W_hat|, W_hat = U_r U_r^T W, U_r the top-r left singular
                              vectors of W X^T (ActSVD; X = I without activations) */
    NLSR_SCORER_WANDA      /* s = |W_ij| * ||X_:j||_2 (needs activations) */
} nlsr_scorer_kind;

/* How the low-rank scorer's base rank (rank, or rank_fraction * min(out, in)) becomes r.
 * METHOD.md: the paper and the authors' code disagree. */
typedef enum nlsr_rank_mode {
    NLSR_RANK_MODE_PAPER,   /* r = base * (1 - sparsity), to the nearest integer (paper's r*) */
    NLSR_RANK_MODE_AUTHORS, /* r = int(base * sparsity), truncated (the authors' code) */
    NLSR_RANK_MODE_DIRECT   /* r = base, to the nearest integer */
} nlsr_rank_mode;

typedef enum nlsr_wanda_mode {
    NLSR_WANDA_MODE_ROW,   /* each output row keeps its own top part (the authors' Wanda code) */
    NLSR_WANDA_MODE_MATRIX /* one threshold per matrix, as the magnitude rule */
} nlsr_wanda_mode;

typedef struct nlsr_scorer_params {
    nlsr_scorer_kind kind;        /* MAGNITUDE */
    uint64_t rank;                /* lowrank: base rank (--rank); 0 = use rank_fraction */
    double rank_fraction;         /* 1.0: base = rank_fraction * min(out, in), in (0, 1] */
    nlsr_rank_mode rank_mode;     /* PAPER: with the defaults r = 0.2 min(out, in) */
    int power_iters;              /* 2: randomized SVD power iterations (>= 0) */
    uint64_t oversample;          /* 10: extra range-finder columns */
    int exact_svd;                /* 0: exact SVD only for matrices up to 2^20 elements */
    uint64_t seed;                /* 42: the randomized SVD's Gaussian test matrix */
    const char *activations;      /* safetensors file of activations per target module (docs/
                                     LOWRANK.md); NULL: X = I (lowrank only) */
    nlsr_wanda_mode wanda_select; /* ROW */
} nlsr_scorer_params;

#define NLSR_SCORER_PARAMS_DEFAULT                                                                \
    ((nlsr_scorer_params){.kind = NLSR_SCORER_MAGNITUDE, .rank = 0, .rank_fraction = 1.0,        \
                          .rank_mode = NLSR_RANK_MODE_PAPER, .power_iters = 2, .oversample = 10u, \
                          .exact_svd = 0, .seed = 42u, .activations = NULL,                       \
                          .wanda_select = NLSR_WANDA_MODE_ROW})
void nlsr_scorer_params_init(nlsr_scorer_params *p);

/* The method's parameters (beta ... alpha, mask_path, scorer) and the job's output policy
 * (force, report_path, json_stdout, mask_out_path, drop_other_weights) share this struct: the
 * policy fields stay where they are rather than in a nested struct because moving them would
 * break the ABI of libnlsr.so.0 and every caller's source for no change in meaning. Which is
 * which: the patch file and the report's "params" record the method's fields only. */
typedef struct nlsr_realign_params {
    double beta;                  /* 0.9: e = a + beta (a - b) */
    double sparsity;              /* 0.8: k = (long)(n * sparsity), mask = score > k-th */
    nlsr_select_params select;
    const char *const *targets;   /* target name fragments; NULL = the seven defaults */
    size_t ntargets;
    nlsr_amplify_mode amplify;    /* LoRA only */
    double alpha;                 /* LoRA authors' amplification factor, 0.9 */
    const char *mask_path;        /* LoRA: masks from a safetensors file (authors' layout) */
    int force;                    /* policy: replace an existing output */
    const char *report_path;      /* policy: write the JSON report here (NULL = none) */
    int json_stdout;              /* policy: print the JSON report on stdout (the product the
                                     caller asked for, not a log) */
    const char *mask_out_path;    /* policy, LoRA prepare/run: also write the masks there, as a
                                     safetensors file in the authors' layout (NULL = none) */
    nlsr_scorer_params scorer;    /* step 2's scorer (full weights); magnitude by default */
    int drop_other_weights;       /* policy: leave out of the output folder the weights nlsr does not
                                     realign (consolidated.safetensors, *.bin, original/ ...),
                                     which are refused otherwise (README "What the output
                                     folder holds"); in place they are refused always */
} nlsr_realign_params;

#define NLSR_REALIGN_PARAMS_DEFAULT                                                               \
    ((nlsr_realign_params){.beta = 0.9, .sparsity = 0.8, .select = NLSR_SELECT_PARAMS_DEFAULT,   \
                           .targets = NULL, .ntargets = 0, .amplify = NLSR_AMPLIFY_PAPER,         \
                           .alpha = 0.9, .mask_path = NULL, .force = 0, .report_path = NULL,      \
                           .json_stdout = 0, .mask_out_path = NULL,                               \
                           .scorer = NLSR_SCORER_PARAMS_DEFAULT, .drop_other_weights = 0})
void nlsr_realign_params_init(nlsr_realign_params *p);

/* ---- the parameters table (docs/DESIGN.md "Parameters and the command line") ------------ */
/* Every method parameter of nlsr_realign_params (with its select and scorer parts) is declared
 * once in a table: its name (the command line's long option without "--", the key of a config
 * file and of the report's "params"), type, default, bounds, help and the jobs that take it.
 * Parsing, validation, the report's JSON and the CLI's help all come from it. */
typedef enum nlsr_param_type {
    NLSR_PARAM_DOUBLE, NLSR_PARAM_UINT64, NLSR_PARAM_INT,
    NLSR_PARAM_ENUM,   /* one of `values`; the field holds its index */
    NLSR_PARAM_FLAG,   /* int 0/1: "true"/"false" ("1"/"0"); an option without a value */
    NLSR_PARAM_PATH,   /* const char *, the caller's string */
    NLSR_PARAM_LIST    /* comma-separated names: targets (const char *const *, size_t) */
} nlsr_param_type;

/* Jobs, as bits (nlsr_param_info.jobs). */
#define NLSR_JOB_RUN 1u
#define NLSR_JOB_PREPARE 2u
#define NLSR_JOB_APPLY 4u
#define NLSR_JOB_AMPLIFY 8u
#define NLSR_JOB_PLAN 16u

/* Bounds (nlsr_param_info.bounds): which of min, max apply; MIN_OPEN: min itself excluded. */
#define NLSR_BOUND_MIN 1u
#define NLSR_BOUND_MAX 2u
#define NLSR_BOUND_MIN_OPEN 4u
#define NLSR_BOUND_FINITE 8u

typedef struct nlsr_param_info {
    const char *name;           /* "sparsity" */
    nlsr_param_type type;
    const char *metavar;        /* "S" in "--sparsity S"; NULL for flags */
    const char *const *values;  /* ENUM: the names, NULL-terminated, in the enum's order */
    const char *def;            /* the default, as text */
    double min, max;            /* the bounds `bounds` names */
    unsigned bounds;
    unsigned jobs;              /* NLSR_JOB_* bits of the jobs that use it */
    int scorer;                 /* -1, or the nlsr_scorer_kind this option belongs to */
    const char *help;           /* one line */
    size_t offset;              /* of the field in nlsr_realign_params */
} nlsr_param_info;

size_t nlsr_param_count(void);
/* Entry i (i < nlsr_param_count()), or NULL. */
const nlsr_param_info *nlsr_param_info_at(size_t i);
/* The entry named `name`, or NULL. */
const nlsr_param_info *nlsr_param_find(const char *name);
/* Parses `value` for parameter `name` into p and checks its bounds. PATH values point at
 * `value`, which must outlive p; a LIST becomes one malloc'd block (the pointers, then the
 * names) that p->targets points to and the caller frees with free((void *)p->targets).
 * 0, or NLSR_E_USAGE with one line in err naming the parameter and the value ("sparsity must
 * lie in [0, 1], got '1.5'"). */
int nlsr_params_set(nlsr_realign_params *p, const char *name, const char *value, char *err,
                    size_t errlen);
/* The value of `name` in p as text that nlsr_params_set reads back (lists comma-joined).
 * 0, or NLSR_E_USAGE (unknown name), -ENOSPC (buf too small). */
int nlsr_params_get(const nlsr_realign_params *p, const char *name, char *buf, size_t len);
/* Checks every bound of the table on p (the jobs call it first). 0 or NLSR_E_USAGE + err. */
int nlsr_params_check(const nlsr_realign_params *p, char *err, size_t errlen);
/* Reads a config file: one JSON object whose keys are long option names (without "--") and
 * whose values are strings, numbers, booleans or arrays of strings. Calls fn once per key, in
 * file order, with the value as command-line text (numbers exactly, arrays comma-joined,
 * booleans "true"/"false"); a nonzero return from fn stops and is returned. The file must be a
 * regular file (a FIFO or device is refused without blocking). NLSR_E_FORMAT naming the file
 * when it is no such object; the message is in ctx. */
typedef int (*nlsr_config_fn)(void *arg, const char *key, const char *value);
int nlsr_config_read(nlsr_ctx *ctx, const char *path, nlsr_config_fn fn, void *arg);

/* ---- checkpoints ------------------------------------------------------------------------ */

typedef enum nlsr_ckpt_kind {
    NLSR_CKPT_FULL,  /* model.safetensors, shards + index, or a single .safetensors file */
    NLSR_CKPT_PEFT   /* adapter_model.safetensors + adapter_config.json */
} nlsr_ckpt_kind;

typedef struct nlsr_ckpt nlsr_ckpt;

typedef struct nlsr_tensor_info {
    const char *name;      /* owned by the checkpoint */
    nlsr_dtype dtype;
    int ndim;              /* 0..8 */
    const uint64_t *shape; /* ndim entries, owned by the checkpoint */
    uint64_t numel;
    const char *file;      /* path of the shard holding it */
    uint64_t offset;       /* absolute byte offset of the data in that file */
    uint64_t nbytes;
} nlsr_tensor_info;

/* Opens and validates a checkpoint: a folder (model.safetensors, sharded with
 * model.safetensors.index.json, or a PEFT adapter), or one .safetensors file; a Hugging Face hub
 * cache snapshot folder (read through its links) or repository folder (resolved to the
 * context's revision, nlsr_ctx_set_revision). Every header is validated before anything else
 * is done; no tensor data is read, nothing is written. Other formats (PyTorch pickles, GGUF,
 * ...) are refused by name, with how to convert them. */
int nlsr_ckpt_open(nlsr_ctx *ctx, const char *path, nlsr_ckpt **out);
void nlsr_ckpt_free(nlsr_ckpt *ck);

nlsr_ckpt_kind nlsr_ckpt_get_kind(const nlsr_ckpt *ck);
/* The path as given (messages name it). */
const char *nlsr_ckpt_path(const nlsr_ckpt *ck);
/* The folder or file actually read: for a hub cache repository folder, its snapshot folder
 * (PATH/snapshots/<commit>); otherwise the path as given. */
const char *nlsr_ckpt_resolved_path(const nlsr_ckpt *ck);
/* Tensors are numbered in bytewise name order (C strcmp), the module order of METHOD.md. */
size_t nlsr_ckpt_tensor_count(const nlsr_ckpt *ck);
size_t nlsr_ckpt_shard_count(const nlsr_ckpt *ck);
void nlsr_ckpt_tensor_info(const nlsr_ckpt *ck, size_t i, nlsr_tensor_info *info);
/* Index of the named tensor, or NLSR_E_NOTFOUND. O(log n). */
int nlsr_ckpt_find(const nlsr_ckpt *ck, const char *name, size_t *index);
/* PEFT only: r, lora_alpha and the target module list of adapter_config.json (-1 / NULL for a
 * full checkpoint). */
int nlsr_ckpt_lora_r(const nlsr_ckpt *ck);
double nlsr_ckpt_lora_alpha(const nlsr_ckpt *ck);

/* Reads `count` elements starting at element `first` of tensor i, converted to double
 * (floats exactly, integers exactly up to 2^53, booleans 0/1). */
int nlsr_ckpt_read_f64(nlsr_ctx *ctx, const nlsr_ckpt *ck, size_t i, uint64_t first,
                       uint64_t count, double *out);

/* `nlsr inspect`: human listing, or one JSON object when json != 0. */
int nlsr_ckpt_print_inspect(nlsr_ctx *ctx, const nlsr_ckpt *ck, int json, FILE *out);
/* `nlsr dump`: one value per line, floats as %.9g of the f32 value, integers exactly,
 * booleans as 0/1. Streams in bounded chunks. */
int nlsr_ckpt_print_dump(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *tensor, FILE *out);

/* Rewrites a checkpoint with nlsr's own writer (same tensors, values, metadata, shard layout,
 * index and side files) into `out_dir`, which must not exist unless flags has
 * NLSR_REWRITE_FORCE. Other weights beside the checkpoint's are refused unless flags has
 * NLSR_REWRITE_DROP_OTHER_WEIGHTS. Used to prove the writer round-trips real files. */
#define NLSR_REWRITE_FORCE 1
#define NLSR_REWRITE_DROP_OTHER_WEIGHTS 2
int nlsr_ckpt_rewrite(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *out_dir, int flags);

/* ---- jobs -------------------------------------------------------------------------------- */
/* Each job validates every input (names, shapes, dtypes, finiteness of target tensors) before it
 * writes anything, writes its output under a temporary name and renames it into place when
 * complete. Paths are checkpoint folders or files as for nlsr_ckpt_open. */

/* Step 1: the safety reference e = a + beta (a - b), written as a checkpoint shaped like
 * `aligned` (base may be NULL for PEFT adapters: the zero adapter). */
int nlsr_amplify(nlsr_ctx *ctx, const char *base, const char *aligned, const char *out_dir,
                 const nlsr_realign_params *p);

/* Steps 1-2 once per aligned model: the prepared patches file (docs/FORMAT.md). Exactly one of
 * aligned / reference is non-NULL. */
int nlsr_prepare(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                 const char *out_file, const nlsr_realign_params *p);

/* ---- split jobs (docs/SCALE.md): one model cut into parts, a store cut into tasks ----------- */
/* One part of nlsr_prepare: the modules [M*index/count, M*(index+1)/count) of the M target
 * modules in module order, with what nlsr_reduce needs to put the parts together. */
int nlsr_prepare_part(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                      const char *out_file, const nlsr_realign_params *p, unsigned index,
                      unsigned count);
/* One part of a run-based split job: the part nlsr_prepare_part writes, plus, for each of its
 * modules, the similarity nlsr_apply computes against `finetuned` (the same double) and the
 * fine-tune's module content hash, and the selection options of p (docs/SCALE.md). nlsr_reduce
 * of such parts makes the selection once; nlsr_apply (whole, --shard, --commit, in place) then
 * uses it after checking the fine-tune's modules it reads against those hashes. A complete part
 * of this job already at out_file (blocks verifying, the same fine-tune folder and selection
 * options) is kept: a requeued map does nothing twice. */
int nlsr_run_part(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                  const char *finetuned, const char *out_file, const nlsr_realign_params *p,
                  unsigned index, unsigned count);
/* Checks that the part files cover every module exactly once, with one set of parameters and
 * the same inputs, and merges them into out_file: the bytes nlsr_prepare writes. Parts of
 * nlsr_run_part (all of one kind, one fine-tune and selection options) also get every module's
 * similarity and the selection made once over all of them, recorded in out_file's header.
 * force: an existing regular file at out_file is replaced. */
int nlsr_reduce(nlsr_ctx *ctx, const char *const *parts, size_t nparts, const char *out_file,
                int force);
/* 1 if `path` is a complete patch file whose every block verifies (and, with part_index >= 0,
 * the part part_index of part_count), 0 if not: nothing there, or damaged or another job's, which
 * the caller then redoes. Negative only for errors other than the file's own. */
int nlsr_patches_verify(nlsr_ctx *ctx, const char *path, int part_index, unsigned part_count);
/* 1 if out_dir is a committed nlsr output folder whose weight files read back to the XXH64
 * fingerprints `report` (the job's --report) recorded for them, and holds no other weight
 * file; 0 if not (the task is redone). */
int nlsr_output_verify(nlsr_ctx *ctx, const char *out_dir, const char *report);
/* Task index of count of nlsr_apply split by output shard: the fine-tune's shards
 * [S*index/count, S*(index+1)/count) (S shards in name order; none when count > S) written into
 * the job's shared folder beside out_dir, "<out_dir>.nlsr-split-<tag>" (made by the first
 * task). Every task computes all similarities and the selection (it reads every target tensor
 * of the fine-tune), unless the patch file holds a selection recorded by nlsr_reduce of
 * nlsr_run_part maps: then it reads only the patched modules of its shards, checked against the
 * recorded hashes. A shard already there that verifies (XXH64) is skipped. Writes no report
 * (the commit's). A full-weight patch file only. */
int nlsr_apply_shard(nlsr_ctx *ctx, const char *patches, const char *finetuned,
                     const char *out_dir, const nlsr_realign_params *p, unsigned index,
                     unsigned count);
/* The commit of those tasks: every shard there and verifying and nothing foreign, then the side
 * files and the report, and the shared folder renamed onto out_dir (p->force as for
 * nlsr_apply). The same arguments as the tasks'. The folder is then nlsr_apply's output. */
int nlsr_apply_commit(nlsr_ctx *ctx, const char *patches, const char *finetuned,
                      const char *out_dir, const nlsr_realign_params *p);

/* Step 3 from a prepared patches file: similarity, selection, transplant into out_dir. */
int nlsr_apply(nlsr_ctx *ctx, const char *patches, const char *finetuned, const char *out_dir,
               const nlsr_realign_params *p);

/* All three steps. Exactly one of aligned / reference is non-NULL. */
int nlsr_run(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
             const char *finetuned, const char *out_dir, const nlsr_realign_params *p);

/* ---- in place (README "In place", docs/JOURNAL.md) ----------------------------------------- */
/* Realigns a checkpoint folder (full weights or a PEFT adapter) in place: only the bytes of the
 * patched tensors change; headers, other tensors and file sizes stay as they are. Before a range
 * is overwritten its original bytes are in the folder's undo journal (.nlsr-journal), durable,
 * so a kill, power cut or full disk at any moment leaves the folder either as it was or
 * realigned, recoverably (nlsr_rollback). A lock (.nlsr.lock, flock) keeps two runs apart, and
 * a state file (.nlsr-state.json) records what was applied: the same realignment again does
 * nothing; another one is refused unless p->force, which rolls the recorded one back first
 * (or, when its journal was discarded, applies the new one on top). A failure after the first
 * write rolls back before returning. Outputs are bit-identical to nlsr_apply / nlsr_run into a
 * folder. Codes: NLSR_E_LOCKED (locked, no wait), NLSR_E_JOURNAL (an interrupted journal:
 * roll back first; nlsr_apply and nlsr_run into another folder refuse such a fine-tune too). */

typedef struct nlsr_inplace_params {
    int wait;         /* wait for another run's lock instead of failing with NLSR_E_LOCKED */
    int follow_links; /* patch files reached through symbolic or hard links (a shared store) */
    int dry_run;      /* check headers, lock, journal and state; write nothing */
} nlsr_inplace_params;

#define NLSR_INPLACE_PARAMS_DEFAULT                                                               \
    ((nlsr_inplace_params){.wait = 0, .follow_links = 0, .dry_run = 0})
void nlsr_inplace_params_init(nlsr_inplace_params *p);

typedef enum nlsr_inplace_outcome {
    NLSR_INPLACE_REALIGNED,     /* patched and recorded */
    NLSR_INPLACE_ALREADY,       /* the same realignment is recorded: nothing done */
    NLSR_INPLACE_WOULD_REALIGN, /* dry run */
    NLSR_INPLACE_WOULD_SKIP,    /* dry run: already realigned */
    NLSR_INPLACE_ROLLED_BACK,   /* nlsr_rollback: originals restored */
    NLSR_INPLACE_NOTHING,       /* nlsr_rollback: no journal, nothing to do */
    NLSR_INPLACE_DISCARDED      /* nlsr_rollback discard: journal deleted, realignment kept */
} nlsr_inplace_outcome;

/* "realigned", "already", "would-realign", "would-skip", "rolled-back", "nothing",
 * "discarded". */
const char *nlsr_inplace_outcome_name(nlsr_inplace_outcome o);

typedef struct nlsr_inplace_result {
    nlsr_inplace_outcome outcome;
    size_t modules, patched;  /* target modules and patched ones (0 for dry runs of run) */
    uint64_t bytes_written;   /* checkpoint bytes overwritten (rollback: restored); dry run:
                                 the target tensors' bytes, an upper bound */
    uint64_t journal_bytes;   /* bytes of journal written */
    uint64_t ranges;          /* journal records written (rollback: restored) */
    int rolled_back_first;    /* force: the previous realignment was rolled back first */
    int stacked;              /* force without a journal: applied on top of the previous one */
    char key[32];             /* "xxh64:" + 16 hex digits: patches + selection parameters */
    char result[32];          /* "xxh64:" + 16 hex digits: the bytes written (docs/JOURNAL.md) */
    uint64_t patched_bytes;   /* the patched tensors' bytes: bytes_written is at most this (only
                                 the 4 KiB grains that change are written) */
} nlsr_inplace_result;

/* nlsr_apply into the checkpoint folder `dir` itself. res may be NULL. */
int nlsr_apply_inplace(nlsr_ctx *ctx, const char *patches, const char *dir,
                       const nlsr_realign_params *p, const nlsr_inplace_params *ip,
                       nlsr_inplace_result *res);
/* nlsr_run into `dir` itself. On full weights with the magnitude rule and a budget that holds
 * the single pass (nlsr_plan says so), one streamed pass: every target module of the three
 * checkpoints read once, then only the changed bytes of the patched tensors written behind the
 * journal; no patch file. Otherwise the patches are prepared into a temporary file in dir (so
 * the folder needs room for it and the journal), then applied in place. */
int nlsr_run_inplace(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                     const char *dir, const nlsr_realign_params *p,
                     const nlsr_inplace_params *ip, nlsr_inplace_result *res);

typedef struct nlsr_rollback_params {
    int wait;    /* wait for another run's lock */
    int force;   /* restore a finished realignment even where its bytes changed since */
    int discard; /* keep a finished realignment and delete its journal (no undo after that) */
} nlsr_rollback_params;

#define NLSR_ROLLBACK_PARAMS_DEFAULT                                                              \
    ((nlsr_rollback_params){.wait = 0, .force = 0, .discard = 0})
void nlsr_rollback_params_init(nlsr_rollback_params *p);

/* Restores dir's original bytes from its journal (after a crash, or to undo a finished
 * realignment), verifies them against the journal's checksums, updates the state file and
 * deletes the journal. Without a journal: NLSR_INPLACE_NOTHING (NLSR_E_NOTFOUND when the state
 * file records a realignment whose journal was discarded). A damaged journal is refused with
 * NLSR_E_CHECKSUM / NLSR_E_JOURNAL and nothing is written. */
int nlsr_rollback(nlsr_ctx *ctx, const char *dir, const nlsr_rollback_params *rp,
                  nlsr_inplace_result *res);

/* ---- engine: plans and synthetic checkpoints ------------------------------------------- */

/* `nlsr plan`: the plan of `nlsr amplify` (finetuned NULL) or of `nlsr run` (finetuned given),
 * printed without reading tensor data: units (tensor, rows), passes, bytes read per checkpoint
 * and written, the byte ranges read from each shard, peak memory (the context's budget), and
 * the time at read_bw / write_bw bytes per second; 0 measures them with short O_DIRECT probes
 * (reading an input, writing a temporary file in probe_dir, or beside `aligned` when NULL);
 * a negative value skips the estimate. With both rates, a run's plan (magnitude rule) also
 * carries its predicted time with compute ("predicted:" lines; the JSON's "prediction"
 * object): its phases' reads, compute and writes overlapped as the engine overlaps them, at
 * those rates and at kernel rates calibrated on the spot (docs/DESIGN.md "Predicted time").
 * json != 0: one JSON object. */
int nlsr_plan_print(nlsr_ctx *ctx, const char *base, const char *aligned, const char *finetuned,
                    const nlsr_realign_params *p, double read_bw, double write_bw,
                    const char *probe_dir, int json, FILE *out);

/* The same for `nlsr run --in-place` on finetuned: its single pass reads as run's does but
 * writes only the patched tensors' changed bytes, twice (journal, then the checkpoint), and
 * sets memory aside for the journal; the predicted time follows that plan. */
int nlsr_plan_print_in_place(nlsr_ctx *ctx, const char *base, const char *aligned,
                             const char *finetuned, const nlsr_realign_params *p, double read_bw,
                             double write_bw, const char *probe_dir, int json, FILE *out);

/* Carries out only the reads of that plan (every unit through the context's backend, every
 * page touched, nothing computed or written), to measure the read side alone; the bytes and
 * backend are in the context's counters as after a job. */
int nlsr_plan_read(nlsr_ctx *ctx, const char *base, const char *aligned, const char *finetuned,
                   const nlsr_realign_params *p);

typedef enum nlsr_synth_role {
    NLSR_SYNTH_BASE,      /* W0 */
    NLSR_SYNTH_ALIGNED,   /* W0 + a rank-4 alignment delta on every target module */
    NLSR_SYNTH_FINETUNED  /* aligned + a rank-8 task delta, with 90% of the alignment delta
                             removed in layers L where L % 3 != 1 (the "safety-broken" ones) */
} nlsr_synth_role;

typedef struct nlsr_synth_params {
    const char *preset;   /* "tiny", "llama-8b", "llama-70b" */
    int layers;           /* 0: the preset's own count */
    nlsr_synth_role role;
    uint64_t seed;        /* the three roles of one seed are related as above */
    nlsr_dtype dtype;     /* BF16, F16 or F32 */
    uint64_t shard_size;  /* bytes per shard at most (a larger tensor gets a shard alone) */
    int force;            /* replace an existing output */
} nlsr_synth_params;

#define NLSR_SYNTH_PARAMS_DEFAULT                                                                 \
    ((nlsr_synth_params){.preset = "tiny", .layers = 0, .role = NLSR_SYNTH_BASE, .seed = 1u,      \
                         .dtype = NLSR_DTYPE_BF16, .shard_size = 5ull << 30, .force = 0})
void nlsr_synth_params_init(nlsr_synth_params *p);

/* Writes a synthetic Hugging Face checkpoint folder (config.json, shards, index) with the
 * preset's real tensor names and shapes, deterministic for a seed, streaming within the
 * context's memory budget. */
int nlsr_synth(nlsr_ctx *ctx, const nlsr_synth_params *p, const char *out_dir);

/* ---- bench (README "Benchmark your machine") ------------------------------------------- */

/* `nlsr bench`: times jobs on the caller's own machine and models, sweeping memory budgets,
 * I/O backends and jobs, each run in a child process (its own peak RSS and CPU time, from
 * wait4), cold by default (posix_fadvise DONTNEED on every input and output file before each
 * run; drop_caches when root and asked), beside the physical reference of the same session
 * (O_DIRECT and buffered sequential read rates of each input's file system, the write rate
 * with fsync of the scratch folder's) and each job's minimal I/O time from its plan. Lists are
 * comma-separated strings; NULL takes the default given. */
typedef struct nlsr_bench_params {
    const char *base, *aligned, *finetuned; /* the job's own inputs, or NULL with synth */
    const char *synth;       /* "tiny", "llama-8b", "llama-70b": a synthetic triple made in
                                the scratch folder (NULL: use base/aligned/finetuned) */
    int synth_layers;        /* 0: the preset's own count */
    const char *scratch;     /* folder for outputs (and the synthetic triple): made, and
                                removed at the end; NULL: a temporary folder beside the first
                                of csv/json/plot, else in the current folder */
    const char *budgets;     /* "1G" (sizes as nlsr_parse_size; "auto" where it parses) */
    const char *ios;         /* "uring,pread" (uring|io_uring, pread, mmap) */
    const char *jobs;        /* "run" (run, run-in-place, prepare, apply, amplify) */
    int reps;                /* runs per combination, 0 = 1 */
    int warm;                /* no cache dropping: warm runs */
    int drop_caches;         /* write 3 to /proc/sys/vm/drop_caches (root) instead of fadvise */
    const char *csv, *json, *plot; /* output files (NULL: none): rows, rows + machine, SVG */
    const char *after_each;  /* NULL, or a shell command run (sh -c, untimed) after each timed
                                run, on that run's setup made again and cold the same way, with
                                NLSR_BENCH_COMMAND (the `nlsr` command line doing the same job),
                                NLSR_BENCH_JOB, _BUDGET, _IO, _REP, _CACHE, _WALL_S in its
                                environment: to time the same runs another way, interleaved */
} nlsr_bench_params;

#define NLSR_BENCH_PARAMS_DEFAULT                                                                 \
    ((nlsr_bench_params){NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL, NULL, 1, 0, 0, NULL,       \
                         NULL, NULL, NULL})

/* Runs the sweep and prints the table on `out` (one INFO line per run to the log callback). A failed run is a row with its status and message, not a failure of the bench;
 * invalid parameters are NLSR_E_USAGE. */
int nlsr_bench(nlsr_ctx *ctx, const nlsr_bench_params *bp, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
