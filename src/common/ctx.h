/* SPDX-License-Identifier: Apache-2.0 */
/* The context every public call takes: the error buffer, the memory budget, the I/O choice
 * and the run's counters. */
#ifndef NLSR_COMMON_CTX_H
#define NLSR_COMMON_CTX_H

#include <pthread.h>

#include "budget.h"
#include "err.h"

/* The progress phase a job is in (log.h). */
struct nlsr_phase {
    int active;
    const char *job, *name;
    int index, next_index;  /* this phase's number in the job; the next one's */
    int counter;            /* NLSR_PHASE_READ / WRITTEN / OWN */
    uint64_t base;          /* the counter when the phase began */
    uint64_t own;           /* NLSR_PHASE_OWN: bytes the job added */
    uint64_t bytes_total, units_total, units_done;
    double t0, last;        /* began; last report */
    uint64_t said_done, said_units; /* what the last report said: a tick that moved nothing
                                       reports nothing */
    pthread_t owner;        /* reports go out only from this thread */
};

struct nlsr_ctx {
    nlsr_err err;
    nlsr_budget budget;     /* limit from nlsr_ctx_set_mem_budget; NLSR_DEFAULT_MEM_BUDGET */
    char budget_why[224];   /* how an auto budget was derived; "" for an explicit one */
    nlsr_io_kind io_kind;   /* requested backend */
    nlsr_io_kind io_used;   /* backend actually used by the last stream */
    int quiet;              /* warnings only, no progress (nlsr_ctx_set_quiet) */
    nlsr_log_fn log_fn;     /* nlsr_ctx_set_log; NULL: dropped */
    void *log_user;
    nlsr_progress_fn progress_fn; /* nlsr_ctx_set_progress; NULL: none */
    void *progress_user;
    double progress_interval;
    struct nlsr_phase phase;
    const char *job_name;   /* the public job running (nlsr_job_enter), NULL between jobs */
    int no_summary;         /* a job inside another: the outer one prints the summary */
    uint64_t write_pending; /* bytes handed to a writer whose file is not complete yet (they
                               join bytes_written when it is): progress within a shard */
    unsigned said_fallback; /* bit 4*from+to: the I/O step-down from -> to was logged */
    int threads;            /* compute threads (OpenBLAS) */
    uint64_t bytes_read, bytes_written;
    volatile sig_atomic_t cancel;             /* nlsr_ctx_cancel's value */
    const volatile sig_atomic_t *cancel_flag; /* nlsr_ctx_set_cancel_flag's, may be NULL */
    char revision[256];     /* hub cache repository folders: nlsr_ctx_set_revision ("": main) */
    /* The program's command line (nlsr_ctx_set_command_line), copied, for reports. */
    int argc;
    char **argv;
    /* The running job's audit record (src/plan/audit.h): fingerprints of the bytes read and
     * written. NULL when no report is wanted. audit_free releases it with the context. */
    struct nlsr_audit *audit;
    void (*audit_free)(struct nlsr_audit *a);
    /* Readers outside the streams (the patch file's blocks, src/io) hand the bytes they read
     * to this hook, so that the audit fingerprints them without reading them again. */
    void (*read_tap)(struct nlsr_ctx *ctx, int fd, uint64_t off, const void *data, size_t len);
};

/* At a safe point of a job: NLSR_E_CANCELLED (recorded in the context) once the job was asked
 * to stop, else 0. Cleanup paths never call it: they must finish. */
int nlsr_ctx_check_cancel(nlsr_ctx *ctx);

#endif
