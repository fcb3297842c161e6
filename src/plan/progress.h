/* SPDX-License-Identifier: Apache-2.0 */
/* Byte counts for people (plans, summaries). Progress itself is reported through the context's
 * callback (src/common/log.h); this header also brings nlsr_now. */
#ifndef NLSR_PLAN_PROGRESS_H
#define NLSR_PLAN_PROGRESS_H

#include <stddef.h>

#include "../common/log.h"

/* "1.50 GiB" into buf (binary units). */
const char *nlsr_fmt_bytes(double bytes, char *buf, size_t len);

#endif
