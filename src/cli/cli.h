/* Shared helpers of the CLI's subcommands. */
#ifndef NLSR_CLI_H
#define NLSR_CLI_H
#include "nlsr.h"
/* Prints the context's error as one line and returns the exit status for rc. */
int cli_fail(nlsr_ctx *ctx, int rc);
/* Prints a one-line usage error and returns 2. */
int cli_usage_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
#endif
