/* SPDX-License-Identifier: Apache-2.0 */
/* The planner: how a streaming job cuts its checkpoints into work units that fit the memory
 * budget, in what order it reads them, and what that costs.
 *
 * Input: up to three checkpoints (ck[0] base, ck[1] aligned, ck[2] fine-tuned by convention;
 * NULL where absent), which of them the target modules are read from, how many passes over the
 * targets the job makes, the job's own memory per element, and the budget. One checkpoint is
 * the layout: the output (if any) has its shards, tensors, order and metadata, and units follow
 * it shard by shard, tensor by tensor in file-offset order, so every file is read and written
 * front to back.
 *
 * Output: units (stream.h) with, per unit, the tensor and row range; for target modules one
 * span per checkpoint read (the same rows; the tensor may sit in a differently numbered shard
 * and have another dtype in each checkpoint), for other tensors spans of the layout checkpoint
 * only (several small neighbours share a unit, so they are read in one request). Tensors larger
 * than a unit are split by rows (elements for 1-D). The stream depth, the writer's buffers,
 * the bytes read per checkpoint and written, the coalesced byte ranges read from each shard
 * (in file order) and the peak memory complete the plan. A budget that cannot hold the smallest
 * unit the planner can make (one row) with double buffering is refused, naming that minimum.
 *
 * Memory model (everything charged to the budget): depth x largest unit (stream buffers,
 * windows widened to 4096 bytes for O_DIRECT) + writer buffers + job scratch per element of
 * the largest unit + job memory per element of the largest target tensor + job fixed bytes. */
#ifndef NLSR_PLAN_PLANNER_H
#define NLSR_PLAN_PLANNER_H

#include <stdio.h>

#include "../common/budget.h"
#include "../io/stream.h"

#define NLSR_PLAN_MAX_CK 3

typedef struct nlsr_job_desc {
    const char *name;                        /* "amplify" ... for messages and the printout */
    const nlsr_ckpt *ck[NLSR_PLAN_MAX_CK];   /* inputs; NULL where absent */
    const char *role[NLSR_PLAN_MAX_CK];      /* "base", "aligned", "finetuned" */
    int layout;                              /* index of the checkpoint the order follows */
    unsigned target_read;                    /* bit k: target units read ck[k] */
    int read_others;                         /* 1: other tensors are read from ck[layout] */
    unsigned passes;                         /* passes over the target tensors (>= 1) */
    int writes;                              /* 1: an output shaped like ck[layout] is written */
    double scratch_per_elem;                 /* job bytes per element of a unit */
    double resident_per_elem;                /* job bytes per element of a whole target tensor */
    uint64_t job_fixed;                      /* other job buffers */
    const char *const *targets;              /* target names (NULL: the seven defaults) */
    size_t ntargets;
    uint64_t budget;                         /* bytes; 0 = unlimited */
    unsigned depth;                          /* stream depth wanted; 0 = the planner's choice */
    uint64_t max_unit;                       /* cap on a unit's bytes; 0 = the default */
} nlsr_job_desc;

enum { NLSR_PLAN_TARGET = 0, NLSR_PLAN_COPY = 1 };

typedef struct nlsr_plan_unit {
    int kind;           /* NLSR_PLAN_TARGET or NLSR_PLAN_COPY */
    unsigned pass;      /* 0-based pass over the targets (0 for copies) */
    uint32_t shard;     /* shard of ck[layout] the unit belongs to (its output file) */
    size_t tensor;      /* first tensor, index in ck[layout] */
    uint64_t row0, rows;/* target: row range; copy: rows of the first span's tensor */
} nlsr_plan_unit;

typedef struct nlsr_plan_range {
    int ck;
    uint32_t shard;
    uint64_t off, len;  /* absolute file offsets */
} nlsr_plan_range;

/* What `run` on full weights will do with the budget (src/jobs/realign_run.c fills it): the
 * single pass, the single pass in row blocks, or prepare + apply (other scorers; for the
 * magnitude rule a budget under rows_min_bytes is refused), and for the single pass its memory
 * and bytes. `nlsr plan --finetuned` prints it after the streaming plan. */
typedef struct nlsr_run_plan {
    int single;              /* 1: the single pass fits (and the scorer is magnitude) */
    size_t modules, kept;    /* target modules; of them, patches kept in memory */
    uint64_t stream_bytes;   /* phase A: two whole modules of the three checkpoints */
    uint64_t phase_b_bytes;  /* phase B: its stream, output and copy buffers */
    uint64_t scratch_bytes;  /* per-chunk scratch and the second compute lane */
    uint64_t need_bytes;     /* the least budget the single pass takes */
    uint64_t kept_bytes;     /* memory of the kept patches */
    uint64_t read_min;       /* bytes read: every target once + the fine-tune's shards again */
    uint64_t reread_max;     /* at most this more: patched modules whose patch was not kept */
    uint64_t written;        /* the output's shards */
    /* Row blocks (the magnitude rule): whether they fit (when the single pass does not),
     * the budget they take with this one's layout, the least budget they ever take (the
     * budget a run needs at all), and modules cut into blocks. With `rows`, the fields above
     * describe the row-block layout. */
    int rows;
    uint64_t rows_need_bytes, rows_min_bytes;
    size_t blocked;
} nlsr_run_plan;
typedef struct nlsr_plan {
    nlsr_job_desc job;
    size_t nunits;
    nlsr_unit *units;          /* unit i has tag i */
    nlsr_plan_unit *info;      /* parallel to units */
    int span_of[NLSR_PLAN_MAX_CK]; /* target units: span index of ck[k], -1 if not read */
    size_t ntarget_tensors, nother_tensors;
    size_t ntarget_units, ncopy_units;
    unsigned depth;
    uint64_t unit_cap;         /* the cap units were cut to */
    uint64_t max_unit_bytes;   /* largest unit's stream bytes */
    uint64_t max_unit_elems;   /* largest target unit's elements (job scratch) */
    size_t sink_chunk;
    unsigned sink_nbuf;
    uint64_t stream_mem, sink_mem, scratch_mem, resident_mem, peak_mem;
    uint64_t read_bytes[NLSR_PLAN_MAX_CK];
    uint64_t write_bytes;      /* output files: shards (headers included) and side files */
    uint64_t side_bytes;       /* of which side files (index, config ...), copied as they are */
    size_t nout;
    uint64_t *out_size;        /* per shard of ck[layout]: the output file's exact size */
    size_t nranges;
    nlsr_plan_range *ranges;   /* coalesced, by checkpoint, shard, offset */
    int has_run;               /* run's own plan (below) was made: a run with the magnitude rule */
    nlsr_run_plan run;
} nlsr_plan;

/* One job's buffers in one block, charged to the budget once: the stream's ring, the
 * writer's ring and the job's own memory are carved from it, so the memory a job holds is a
 * single number the plan predicts. */
typedef struct nlsr_arena {
    unsigned char *base;
    uint64_t size, used;
    nlsr_budget *budget;
} nlsr_arena;

/* Allocates and charges `size` bytes (4096-byte aligned); `what` names it in messages. */
int nlsr_arena_init(nlsr_ctx *ctx, nlsr_arena *a, uint64_t size, const char *what);
/* The next `bytes` at a 4096-byte boundary, or NULL if the arena is exhausted. */
void *nlsr_arena_take(nlsr_arena *a, uint64_t bytes);
/* Frees and releases the charge; a zeroed arena is a no-op. */
void nlsr_arena_free(nlsr_arena *a);

/* Builds the plan. Target tensors of ck[layout] must exist with the same shape in every
 * checkpoint read for targets (NLSR_E_MISMATCH otherwise). NLSR_E_BUDGET names the smallest
 * budget that would do. */
int nlsr_plan_build(nlsr_ctx *ctx, const nlsr_job_desc *job, nlsr_plan *out);
void nlsr_plan_free(nlsr_plan *p);

/* The header the output's shard s gets (tensors of ck[layout]'s shard in file order, its
 * metadata): bytes (malloc'd, without the 8-byte length) and data size. */
int nlsr_plan_shard_header(nlsr_ctx *ctx, const nlsr_ckpt *ck, uint32_t shard, char **hdr,
                           size_t *hlen, uint64_t *data_size);

/* Read and write speeds in bytes/s, measured with short O_DIRECT probes: up to 256 MiB read
 * from the largest shard of `ck` and 128 MiB written (and fsynced) to a temporary file in
 * `write_dir`. Either pointer may be NULL to skip that probe. */
int nlsr_plan_probe(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *write_dir, double *read_bw,
                    double *write_bw);

/* Prints the plan: human text, or one JSON object. Bandwidths in bytes/s (0: no estimate);
 * `measured` says where they came from. */
int nlsr_plan_print_to(const nlsr_plan *p, double read_bw, double write_bw, const char *bw_source,
                       int json, FILE *out);

/* The JSON object nlsr_plan_print_to prints (NULL: out of memory), for a job that adds its own
 * members before printing it with nlsr_plan_print_json, which prints and frees it (a NULL
 * object: -ENOMEM). */
struct cJSON;
struct cJSON *nlsr_plan_json(const nlsr_plan *p, double read_bw, double write_bw,
                             const char *bw_source);
int nlsr_plan_print_json(struct cJSON *o, FILE *out);

/* The plan of `nlsr amplify` (layout aligned, targets from base and aligned, one pass). */
int nlsr_plan_amplify(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *aligned,
                      const nlsr_realign_params *p, nlsr_plan *out);

#endif
