#include "ctx.h"

#include <stdlib.h>

nlsr_ctx *nlsr_ctx_create(void)
{
    return calloc(1, sizeof(nlsr_ctx));
}

void nlsr_ctx_free(nlsr_ctx *ctx)
{
    free(ctx);
}

const char *nlsr_ctx_error(const nlsr_ctx *ctx)
{
    return ctx->err.msg;
}

void nlsr_ctx_clear_error(nlsr_ctx *ctx)
{
    nlsr_err_clear(&ctx->err);
}
