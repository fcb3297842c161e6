/* SPDX-License-Identifier: Apache-2.0 */
/* Error reporting shared by every layer: negative codes plus a per-context message buffer.
 * The first error recorded wins, because later failures are usually consequences of it. */
#ifndef NLSR_COMMON_ERR_H
#define NLSR_COMMON_ERR_H

#include <stddef.h>
#include "nlsr.h"

typedef struct nlsr_err {
    int code;           /* 0 while no error has been recorded */
    char msg[1024];     /* one line, no trailing newline */
} nlsr_err;

#if defined(__GNUC__)
#define NLSR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define NLSR_PRINTF(a, b)
#endif

/* Records `code` and a formatted message unless an error is already recorded; returns code
 * so that callers can write `return nlsr_fail(e, NLSR_E_FORMAT, "...")`. */
int nlsr_fail(nlsr_err *e, int code, const char *fmt, ...) NLSR_PRINTF(3, 4);
void nlsr_err_clear(nlsr_err *e);

/* Check-and-forward helpers: each check stays one line (zstd's RETURN_ERROR_IF). */
#define NLSR_FAIL_IF(cond, e, code, ...)                                                          \
    do {                                                                                          \
        if (cond) return nlsr_fail((e), (code), __VA_ARGS__);                                     \
    } while (0)
#define NLSR_FORWARD(expr)                                                                        \
    do {                                                                                          \
        int nlsr_rc_ = (expr);                                                                    \
        if (nlsr_rc_ < 0) return nlsr_rc_;                                                        \
    } while (0)

#endif
