/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "ctx.h"

#include "sysmem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

nlsr_ctx *nlsr_ctx_create(void)
{
    nlsr_ctx *ctx = calloc(1, sizeof(nlsr_ctx));
    if (!ctx) return NULL;
    ctx->budget.limit = NLSR_DEFAULT_MEM_BUDGET;
    ctx->io_kind = NLSR_IO_AUTO;
    ctx->io_used = NLSR_IO_AUTO;
    ctx->threads = 1;
    return ctx;
}

static void free_argv(nlsr_ctx *ctx)
{
    for (int i = 0; i < ctx->argc; i++) free(ctx->argv[i]);
    free(ctx->argv);
    ctx->argv = NULL;
    ctx->argc = 0;
}

void nlsr_ctx_free(nlsr_ctx *ctx)
{
    if (!ctx) return;
    if (ctx->audit && ctx->audit_free) ctx->audit_free(ctx->audit);
    free_argv(ctx);
    free(ctx);
}

int nlsr_ctx_set_command_line(nlsr_ctx *ctx, int argc, const char *const *argv)
{
    free_argv(ctx);
    if (argc <= 0 || !argv) return 0;
    char **v = calloc((size_t)argc + 1, sizeof *v);
    if (!v) return -ENOMEM;
    for (int i = 0; i < argc; i++)
        if (!(v[i] = strdup(argv[i] ? argv[i] : ""))) {
            for (int k = 0; k < i; k++) free(v[k]);
            free(v);
            return -ENOMEM;
        }
    ctx->argv = v;
    ctx->argc = argc;
    return 0;
}

const char *nlsr_ctx_error(const nlsr_ctx *ctx)
{
    return ctx->err.msg;
}

void nlsr_ctx_clear_error(nlsr_ctx *ctx)
{
    nlsr_err_clear(&ctx->err);
}

void nlsr_ctx_cancel(nlsr_ctx *ctx, int why)
{
    ctx->cancel = why ? why : 1;
}

void nlsr_ctx_set_cancel_flag(nlsr_ctx *ctx, const volatile sig_atomic_t *flag)
{
    ctx->cancel_flag = flag;
}

int nlsr_ctx_cancelled(const nlsr_ctx *ctx)
{
    if (ctx->cancel) return ctx->cancel;
    return ctx->cancel_flag ? *ctx->cancel_flag : 0;
}

int nlsr_ctx_check_cancel(nlsr_ctx *ctx)
{
    int why = nlsr_ctx_cancelled(ctx);
    if (!why) return 0;
    return nlsr_fail(&ctx->err, NLSR_E_CANCELLED,
                     "stopped at a safe point (signal %d) before anything was committed; temporary files removed", why);
}

void nlsr_ctx_set_mem_budget(nlsr_ctx *ctx, uint64_t bytes)
{
    ctx->budget_why[0] = '\0';
    if (bytes == NLSR_MEM_BUDGET_AUTO) {
        nlsr_sysmem m;
        nlsr_sysmem_read("", &m);
        bytes = nlsr_budget_auto(&m, ctx->budget_why, sizeof ctx->budget_why);
    }
    ctx->budget.limit = bytes;
}

uint64_t nlsr_ctx_mem_budget(const nlsr_ctx *ctx)
{
    return ctx->budget.limit;
}

const char *nlsr_ctx_mem_budget_reason(const nlsr_ctx *ctx)
{
    return ctx->budget_why;
}

int nlsr_parse_mem_budget(const char *s, uint64_t *out)
{
    if (strcmp(s, "auto") == 0) {
        *out = NLSR_MEM_BUDGET_AUTO;
        return 0;
    }
    return nlsr_parse_size(s, out);
}

uint64_t nlsr_ctx_mem_peak(const nlsr_ctx *ctx)
{
    return ctx->budget.peak;
}

void nlsr_ctx_set_io(nlsr_ctx *ctx, nlsr_io_kind kind)
{
    ctx->io_kind = kind;
}

nlsr_io_kind nlsr_ctx_io_used(const nlsr_ctx *ctx)
{
    return ctx->io_used;
}

void nlsr_ctx_set_quiet(nlsr_ctx *ctx, int quiet)
{
    ctx->quiet = quiet;
}

void nlsr_ctx_set_threads(nlsr_ctx *ctx, int threads)
{
    ctx->threads = threads > 0 ? threads : 1;
}

void nlsr_ctx_counters(const nlsr_ctx *ctx, uint64_t *bytes_read, uint64_t *bytes_written)
{
    if (bytes_read) *bytes_read = ctx->bytes_read;
    if (bytes_written) *bytes_written = ctx->bytes_written;
}

const char *nlsr_io_kind_name(nlsr_io_kind k)
{
    switch (k) {
    case NLSR_IO_AUTO: return "auto";
    case NLSR_IO_URING: return "io_uring";
    case NLSR_IO_PREAD: return "pread";
    case NLSR_IO_MMAP: return "mmap";
    }
    return "?";
}

int nlsr_parse_size(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0)) return NLSR_E_USAGE;
    double mul = 1;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1048576.0; end++; break;
    case 'g': case 'G': mul = 1073741824.0; end++; break;
    case 't': case 'T': mul = 1099511627776.0; end++; break;
    default: return NLSR_E_USAGE;
    }
    if (*end == 'i' ) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0') return NLSR_E_USAGE;
    double r = v * mul;
    if (r >= 18446744073709549568.0) return NLSR_E_USAGE;
    *out = (uint64_t)r;
    return 0;
}
