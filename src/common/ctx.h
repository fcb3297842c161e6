/* The context every public call takes: the error buffer, the memory budget, the I/O choice
 * and the run's counters. */
#ifndef NLSR_COMMON_CTX_H
#define NLSR_COMMON_CTX_H

#include "budget.h"
#include "err.h"

struct nlsr_ctx {
    nlsr_err err;
    nlsr_budget budget;     /* limit from nlsr_ctx_set_mem_budget; default 1 GiB */
    nlsr_io_kind io_kind;   /* requested backend */
    nlsr_io_kind io_used;   /* backend actually used by the last stream */
    int quiet;              /* no progress output */
    int threads;            /* compute threads (OpenBLAS) */
    uint64_t bytes_read, bytes_written;
    volatile sig_atomic_t cancel;             /* nlsr_ctx_cancel's value */
    const volatile sig_atomic_t *cancel_flag; /* nlsr_ctx_set_cancel_flag's, may be NULL */
    char revision[256];     /* hub cache repository folders: nlsr_ctx_set_revision ("": main) */
};

/* At a safe point of a job: NLSR_E_CANCELLED (recorded in the context) once the job was asked
 * to stop, else 0. Cleanup paths never call it: they must finish. */
int nlsr_ctx_check_cancel(nlsr_ctx *ctx);

#endif
