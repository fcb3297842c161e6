/* SPDX-License-Identifier: Apache-2.0 */
/* The time model of a plan (docs/DESIGN.md "Predicted time"): a plan's phases, each with the
 * bytes it reads and writes and the compute it does, combined as the engine overlaps them, at
 * rates measured on this machine: the disk's (direct sequential read, write + fsync) and the
 * compute kernels' (a short calibration on an in-memory BF16 module, nlsr_timing_calibrate).
 *
 * The arithmetic (nlsr_timing_pipeline, nlsr_timing_run) is pure and tested against
 * hand-computed cases (tests/test_timing.c); only the calibration looks at the clock. */
#ifndef NLSR_PLAN_TIMING_H
#define NLSR_PLAN_TIMING_H

#include <stdint.h>
#include <stdio.h>

#include "../common/ctx.h"
#include "planner.h"

/* Elements per second of each pass kind of `run`'s single pass, BF16 aligned and base (the
 * fused kernels), [0] on one thread, [1] split in two lanes on two threads (0: not measured,
 * one CPU). Bytes per second of XXH64 and of the phase-B merge of a kept patch (bytes of the
 * fine-tune's dtype). */
typedef struct nlsr_kernel_rates {
    double hist[2];     /* pass 1: fused score, histogram, finite check of the fine-tune */
    double cands[2];    /* pass 2: fused score, the k-th bucket's candidates */
    double mask;        /* pass 3 (one thread): reference + score, mask, gather, cosine sums */
    double addxy;       /* run's pass 3 in two lanes: the first lane adding the second's pairs
                           to the sums and copying its values, in elements of the module per
                           second (for all of them; a lane's part takes its share) */
    double xxh_bps;     /* XXH64 of base and aligned bytes (in place: the fingerprints) */
    double merge_bps;   /* phase B from a kept patch: copy + scatter of the values */
    double zstd_bps;    /* in place: the journal's zstd (level 1, 4 MiB records of byte
                           planes, two workers with 2 CPUs) of the bytes it replaces */
    double zstd_ratio;  /* compressed / raw bytes of that */
    int lanes;          /* 2: the engine splits passes 1 and 2 over two threads (>= 2 CPUs) */
    double seconds;     /* what the calibration took */
    uint64_t elems;     /* elements of the calibration module */
} nlsr_kernel_rates;

/* Runs the kernels on a synthetic BF16 module of `elems` elements (0: the default, 4 Mi
 * elements: past the caches, as real modules are), charged to the context's budget (a budget
 * too small for it takes a smaller module). Measures each time; nothing is cached. */
int nlsr_timing_calibrate(nlsr_ctx *ctx, uint64_t elems, nlsr_kernel_rates *out);

/* One target module as the single pass sees it. */
typedef struct nlsr_timing_mod {
    uint64_t n, k;               /* elements; the mask's k (k >= n: nothing to transplant) */
    unsigned asz, bsz, tsz;      /* bytes per element: aligned, base, fine-tune */
    int fast;                    /* BF16 aligned and base: the fused kernels and the lanes */
    int kept;                    /* its patch is kept in memory for phase B */
    int blocked;                 /* row blocks: passes 2 and 3 read it again */
} nlsr_timing_mod;

enum { NLSR_TPH_MAX = 4 };

/* One phase of a plan: seconds = read_s, compute_s and write_s combined as the phase
 * overlaps them (`overlap` says how, for the printout). */
typedef struct nlsr_timing_phase {
    const char *name;
    double read_bytes, write_bytes;
    double read_s, compute_s, write_s, seconds;
    const char *overlap;
} nlsr_timing_phase;

typedef struct nlsr_timing_pred {
    const char *plan;            /* "single pass", "single pass in place", "patch file" */
    int nphases;
    nlsr_timing_phase ph[NLSR_TPH_MAX];
    double seconds;              /* sum of the phases' seconds */
    double read_s, compute_s, write_s; /* sums of the phases' parts (before overlap) */
    double read_bps, write_bps;
    const char *disk_source;     /* "measured", "given", "measured and given" */
    double patched_fraction;     /* expected share of the modules the selection patches */
    nlsr_kernel_rates k;
} nlsr_timing_pred;

/* Depth-2 read stream over n units (read_s[i], compute_s[i] seconds each), as the single pass
 * reads whole modules: the read of unit i starts when unit i-1 is read and unit i-2's buffer is
 * free (its compute done); unit i's compute starts when it is read and unit i-1's compute is
 * done. Returns when the last compute ends:
 *   S_i = max(R_{i-1}, C_{i-2}),  R_i = S_i + r_i,  C_i = max(R_i, C_{i-1}) + c_i. */
double nlsr_timing_pipeline(const double *read_s, const double *compute_s, size_t n);

/* Seconds of one module's phase-A compute at these rates (passes 1-3, the fingerprint hash when
 * `hash`, on the lanes the engine would use). */
/* Flags of nlsr_timing_module_compute: the fingerprint hash of base and aligned is taken
 * (prepare, run in place); pass 3 is split between the lanes (run's single pass; prepare keeps
 * it on one thread). */
#define NLSR_TIMING_HASH 1
#define NLSR_TIMING_SPLIT3 2
double nlsr_timing_module_compute(const nlsr_timing_mod *m, const nlsr_kernel_rates *k, int flags);

/* The single pass (run --out, or in place when `inplace`) over these modules:
 *   phase A: nlsr_timing_pipeline of (module bytes / read_bps, module compute);
 *   phase B (out): shards' bytes not in patched modules copied, patched modules read (the
 *     fine-tune's bytes if kept, else all three) overlapping their merge (max), every output
 *     byte written + fsynced at write_bps, half of the shorter of reads and writes hidden:
 *       rd = (ft_bytes - patched_ft) / rbw + max(patched_read / rbw, merge),
 *       w = out_bytes / wbw,  B = max(rd, w) + min(rd, w) / 2;
 *   phase B (in place): patched modules read, overlapping their merge and journaling (max:
 *     XXH64 of the new bytes, zstd of the old ones, the compare and copy), then the new bytes
 *     and the compressed old ones written at write_bps.
 * `audit` (the job writes a report): every byte the streams deliver is hashed (XXH64) on the
 * computing thread, and --out's output is read back and hashed: a phase "report" of
 * max(out_bytes / rbw, out_bytes / xxh).
 * Patched modules are expected, not known (the selection draws them after phase A): each
 * module's cost in phase B is weighted by `patched_fraction`. ft_bytes: the fine-tune's shard
 * bytes; out_bytes: the output's (shards and side files). */
void nlsr_timing_single(const nlsr_timing_mod *m, size_t nm, int inplace, int audit,
                        uint64_t ft_bytes, uint64_t out_bytes, double patched_fraction,
                        const nlsr_kernel_rates *k, double read_bps, double write_bps,
                        nlsr_timing_pred *out);

/* The patch-file plan (prepare + apply), coarsely: prepare reads base and aligned once per
 * module pass and computes as phase A does (a depth-2 pipeline), writing the patches; apply
 * reads the fine-tune and the patches and writes the output. */
void nlsr_timing_patchfile(const nlsr_timing_mod *m, size_t nm, uint64_t ft_bytes,
                           uint64_t out_bytes, const nlsr_kernel_rates *k, double read_bps,
                           double write_bps, nlsr_timing_pred *out);

/* Expected share of the target modules the selection patches: 1 (all, threshold: at most), 0
 * (none), adaptive: the mean of its clamped probabilities over nm modules. */
double nlsr_timing_patched_fraction(const nlsr_realign_params *p, size_t nm);

/* The modules of run's single pass (realign_run.c's order: the aligned checkpoint's targets),
 * with kept marked as the run plan keeps them (the first rp->kept with k < n). *out malloc'd. */
int nlsr_timing_modules(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                        const nlsr_ckpt *ft, const nlsr_realign_params *p, const nlsr_run_plan *rp,
                        nlsr_timing_mod **out, size_t *nm);

/* Text lines, or a "prediction" object added to `o` (a cJSON *). */
void nlsr_timing_print(const nlsr_timing_pred *t, FILE *out);
void nlsr_timing_json(void *o, const nlsr_timing_pred *t);

#endif
