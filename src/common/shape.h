/* SPDX-License-Identifier: Apache-2.0 */
/* A tensor shape as text for messages: "[4096, 11008]". */
#ifndef NLSR_COMMON_SHAPE_H
#define NLSR_COMMON_SHAPE_H

#include <stddef.h>
#include <stdint.h>

/* Writes "[d0<sep>d1...]" into buf (truncated to cap, always terminated when cap > 0). */
void nlsr_shape_str(int ndim, const uint64_t *shape, const char *sep, char *buf, size_t cap);

#endif
