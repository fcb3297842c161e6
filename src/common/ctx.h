/* The context every public call takes: the error buffer and run-wide settings. */
#ifndef NLSR_COMMON_CTX_H
#define NLSR_COMMON_CTX_H

#include "err.h"

struct nlsr_ctx {
    nlsr_err err;
};

#endif
