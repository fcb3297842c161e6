/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr bench` (README "Benchmark your machine"): the sweep (bench.c), the machine and its
 * disks (bench_sys.c), and what it writes: table, CSV, JSON, SVG (bench_out.c). */
#ifndef NLSR_JOBS_BENCH_H
#define NLSR_JOBS_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include "nlsr.h"
#include "../common/err.h"

/* One run of one job: a row of the table, the CSV and the JSON. */
typedef struct bench_row {
    char job[16];           /* run, run-in-place, prepare, apply, amplify */
    char budget[24];        /* as given: "1G", "auto" */
    uint64_t budget_bytes;  /* 0 for auto */
    char io[8];             /* asked for: uring, pread, mmap */
    char backend[16];       /* used (the job's report, or the context after the job) */
    int rep;
    char cache[16];         /* fadvise, drop_caches or warm */
    int status;             /* 0 ok, else the child's exit status (message in `error`) */
    char error[256];
    double wall_s, user_s, sys_s;
    uint64_t peak_rss;      /* bytes: the child's ru_maxrss */
    char plan[24];          /* the report's plan: "single pass", "patch file", or "" */
    double phase_sim_s, phase_out_s; /* run's phase_seconds; negative when not reported */
    int64_t planned_read, planned_written; /* from nlsr_plan_print; -1 when no plan covers it:
                                              reads the least (each input byte once) */
    int64_t planned_read_max; /* the most: patched modules whose patches the budget cannot
                                 keep are read again (which ones is known only after step 3) */
    uint64_t bytes_read, bytes_written;    /* the job's own counters (its report's summary) */
    double min_io_s;        /* planned (else actual) bytes at the measured rates */
    double ratio;           /* wall_s / min_io_s */
    char *command;          /* the `nlsr` command line doing the same job (malloc'd) */
    double predicted_s;     /* the plan's predicted time with compute (docs/DESIGN.md
                               "Predicted time") at the measured disk rates; 0: none */
    double predicted_ratio; /* wall_s / predicted_s; 0: none */
} bench_row;

/* One file system the bench read from or wrote to, with its rates. */
typedef struct bench_fs {
    char role[64];          /* "base", "aligned", "finetuned", "scratch" (joined by '+') */
    char path[1024];        /* the file measured (reads) or the scratch folder (writes) */
    unsigned long dev;      /* st_dev */
    char fstype[32], source[256], mount[256];
    double direct_bps;      /* O_DIRECT sequential read, the engine's queue depth (0: n/a) */
    double buffered_bps;    /* buffered sequential read after dropping its pages */
    double write_bps;       /* write + fsync (scratch only) */
    uint64_t probe_bytes;
    char direct_note[64];   /* "" or why O_DIRECT was not used */
} bench_fs;

typedef struct bench_machine {
    char cpu[128];
    int cpus;
    uint64_t mem_bytes;
    char kernel[256];
    char io_uring[64];      /* "yes", or "no (errno text)" */
    char load[64];          /* /proc/loadavg at the start */
    int euid;
} bench_machine;

typedef struct bench_result {
    bench_machine m;
    bench_fs fs[8];
    int nfs;
    bench_row *rows;
    size_t nrows;
    const char *base, *aligned, *finetuned, *synth;
    int synth_layers;
    int in_place_copy_excluded; /* run-in-place rows: the fine-tune copy is not timed */
} bench_result;

/* bench_sys.c */
void bench_machine_describe(bench_machine *m);
/* Fills fstype/source/mount of f from /proc/self/mountinfo for `path`. */
void bench_fs_describe(bench_fs *f, const char *path);
/* Rates of the file system holding `file`: O_DIRECT (through the engine's backends, queue
 * depth 16, 1 MiB requests) and buffered reads of up to `max` bytes of it. */
int bench_read_rates(nlsr_ctx *ctx, const char *file, uint64_t max, bench_fs *f);
/* Write + fsync of `bytes` into a temporary file in `dir`. */
int bench_write_rate(nlsr_ctx *ctx, const char *dir, uint64_t bytes, bench_fs *f);
/* Writes back (fsync) and drops the cached pages of every regular file under `path` (a file or
 * a folder, recursively, not crossing file systems; through links when `follow`, as a hub
 * cache snapshot's files are links to its blobs). Returns the files that failed. */
int bench_drop_pages(const char *path, int follow);
/* sync + /proc/sys/vm/drop_caches = 3; 0 or -errno. */
int bench_drop_caches(void);
/* The largest regular file under `path` (a file or folder); malloc'd, NULL if none. */
char *bench_largest_file(const char *path, uint64_t *size);
/* Removes a tree the bench made (no links followed, no other file system entered). */
int bench_remove_tree(const char *path);
/* Copies a checkpoint folder's regular files (flat, as checkpoints are) into `dst` (made). */
int bench_copy_folder(nlsr_ctx *ctx, const char *src, const char *dst);

/* bench_out.c */
void bench_print_table(const bench_result *r, FILE *out);
int bench_write_csv(const bench_result *r, const char *path, nlsr_err *e);
int bench_write_json(const bench_result *r, const char *path, nlsr_err *e);
int bench_write_svg(const bench_result *r, const char *path, nlsr_err *e);

#endif
