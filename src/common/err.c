/* SPDX-License-Identifier: Apache-2.0 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int nlsr_fail(nlsr_err *e, int code, const char *fmt, ...)
{
    if (e == NULL || e->code != 0) return code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* Messages are single lines: a newline smuggled in through a tensor name would break the
     * one-line-per-error contract of the CLI. */
    for (char *p = e->msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return code;
}

void nlsr_err_clear(nlsr_err *e)
{
    e->code = 0;
    e->msg[0] = '\0';
}

const char *nlsr_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case NLSR_E_FORMAT: return "malformed file";
    case NLSR_E_DTYPE: return "unsupported dtype";
    case NLSR_E_MISMATCH: return "checkpoints disagree";
    case NLSR_E_NOTFOUND: return "not found";
    case NLSR_E_BUDGET: return "memory budget too small";
    case NLSR_E_USAGE: return "invalid argument";
    case NLSR_E_VALUE: return "invalid value in tensor";
    case NLSR_E_EXISTS: return "output exists";
    case NLSR_E_LOCKED: return "checkpoint is locked by another run";
    case NLSR_E_JOURNAL: return "interrupted or damaged journal";
    case NLSR_E_CHECKSUM: return "checksum mismatch";
    case NLSR_E_CANCELLED: return "cancelled";
    default:
        if (code < 0 && code > -4096) return strerror(-code);
        return "unknown error";
    }
}
